//! Hostile report and admin input over real sockets: values PostgreSQL
//! cannot take are 400/422 naming the parameter (never 500); records pages
//! stay small whatever old rows hold; CSV exports that never read cannot
//! starve the ledger writer, the admin API, readiness or other reports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use common::{gpt55_price, TestGateway, ADMIN_TOKEN};

/// Stored straight into the ledger, as rows written before the door was
/// bounded may be: `n` rows of `tenant`, each with an `end_user` of
/// `user_chars` characters.
async fn old_rows(pool: &PgPool, tenant: &str, n: i64, user_chars: i32) {
    sqlx::query(
        "INSERT INTO usage_ledger (request_id, tenant_id, api_key_id, endpoint, model, stream, \
         status, usage_source, end_user, started_at, finished_at) \
         SELECT 'old_' || $1 || '_' || g, $1, 'k_old', 'responses.create', 'gpt-5.5', false, \
         'completed', 'reported', repeat('u', $3), now() - g * interval '1 ms', now() \
         FROM generate_series(1, $2) AS g",
    )
    .bind(tenant)
    .bind(n)
    .bind(user_chars)
    .execute(pool)
    .await
    .unwrap();
}

async fn get(gw: &TestGateway, token: &str, path: &str) -> (u16, Value) {
    let response = gw
        .http
        .get(gw.url(path))
        .bearer_auth(token)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn param(body: &Value) -> &str {
    body["error"]["param"].as_str().unwrap_or("")
}

#[sqlx::test(migrations = "./migrations")]
async fn hostile_report_parameters_are_400_naming_the_param(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    let key = gw.key("acme").await;
    let far = "page_".to_owned() + "YjotOTk5OTk5OTk5OTk5OTk5"; // b:-99999999999999
    let huge_cursor = "OTIyMzM3MjAzNjg1NDc3NTgwNzox"; // i64::MAX micros : 1
    let cases: Vec<(&str, String, &str)> = vec![
        ("/v1/usage/records", "models=a%00b".into(), "models"),
        ("/v1/usage/records", "api_key_ids=%00".into(), "api_key_ids"),
        (
            "/v1/usage/records",
            "statuses=completed%00".into(),
            "statuses",
        ),
        ("/v1/usage/records", format!("after={huge_cursor}"), "after"),
        (
            "/v1/usage/records",
            "start_time=-62135596800".into(),
            "start_time",
        ),
        (
            "/v1/usage/records",
            "end_time=300000-01-01T00:00:00Z".into(),
            "end_time",
        ),
        (
            "/v1/usage/records",
            format!("models={}", "m,".repeat(101)),
            "models",
        ),
        (
            "/v1/usage/records",
            format!("models={}", "m".repeat(5000)),
            "models",
        ),
        ("/v1/usage", "start_time=0&models=%00".into(), "models"),
        (
            "/v1/usage",
            "start_time=0&group_by=model%00".into(),
            "group_by",
        ),
        ("/v1/usage", "start_time=-1".into(), "start_time"),
        (
            "/v1/usage",
            "start_time=0&end_time=9999999999999".into(),
            "end_time",
        ),
        (
            "/v1/usage",
            format!("start_time=0&end_time=86400&page={far}"),
            "page",
        ),
    ];
    for (path, query, expected) in &cases {
        let (status, body) = get(&gw, &key, &format!("{path}?{query}")).await;
        assert_eq!(
            (status, param(&body)),
            (400, *expected),
            "{path}?{query}: {body}"
        );
    }
    for (path, query) in [
        ("/admin/usage/records", "tenants=ac%00me"),
        ("/admin/usage", "start_time=0&tenants=%00"),
        ("/admin/usage/records", "format=csv&tenants=%00"),
    ] {
        let (status, body) = get(&gw, ADMIN_TOKEN, &format!("{path}?{query}")).await;
        assert_eq!(
            (status, param(&body)),
            (400, "tenants"),
            "{path}?{query}: {body}"
        );
    }
    gw.shutdown().await;
}

#[sqlx::test(migrations = "./migrations")]
async fn nul_in_admin_model_names_and_ids_is_refused_not_500(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    let cases: Vec<(Method, &str, Option<Value>, u16, &str)> = vec![
        (
            Method::PUT,
            "/admin/prices/gpt%00x",
            Some(gpt55_price()),
            422,
            "model",
        ),
        (Method::GET, "/admin/prices/gpt%00x", None, 400, "model"),
        (Method::DELETE, "/admin/prices/gpt%00x", None, 400, "model"),
        (Method::GET, "/admin/keys?tenant=a%00", None, 400, "tenant"),
        (Method::DELETE, "/admin/keys/a%00b", None, 400, "id"),
        (
            Method::POST,
            "/admin/keys",
            Some(json!({"tenant": "acme", "name": "a\u{0}b"})),
            422,
            "name",
        ),
        (
            Method::POST,
            "/admin/reprice",
            Some(json!({"start_time": 0, "end_time": 10, "models": ["a\u{0}"]})),
            422,
            "models",
        ),
        (
            Method::POST,
            "/admin/prices/import",
            Some(json!({"gpt-x\u{0}": {"input_cost_per_token": 0.000001,
                "output_cost_per_token": 0.000002, "litellm_provider": "openai",
                "mode": "chat"}})),
            422,
            "body",
        ),
    ];
    for (method, path, body, status, expected) in cases {
        let (got, answer) = gw.admin(method.clone(), path, body).await;
        assert_eq!(
            (got, param(&answer)),
            (status, expected),
            "{method} {path}: {answer}"
        );
    }
    gw.shutdown().await;
}

#[sqlx::test(migrations = "./migrations")]
async fn records_pages_cut_long_text_and_say_so(pool: PgPool) {
    let gw = TestGateway::start(pool.clone()).await;
    old_rows(&pool, "acme", 10, 3_000_000).await;
    let (status, body) = get(&gw, ADMIN_TOKEN, "/admin/usage/records?limit=10").await;
    assert_eq!(status, 200);
    let text = serde_json::to_string(&body).unwrap();
    assert!(
        text.len() < 200_000,
        "a page of 10 rows is {} bytes",
        text.len()
    );
    for row in body["data"].as_array().unwrap() {
        assert_eq!(row["end_user"].as_str().unwrap().chars().count(), 1_024);
        assert_eq!(row["truncated_fields"], json!(["end_user"]));
    }
    // The export carries the value whole.
    let csv = gw
        .http
        .get(gw.url("/admin/usage/records?format=csv&tenants=acme"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(csv.contains(&"u".repeat(3_000_000)));
    gw.shutdown().await;
}

/// Sends an export request and never reads the answer.
async fn stuck_export(gw: &TestGateway, key: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let request = format!(
        "GET /v1/usage/records?format=csv HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp
}

#[sqlx::test(migrations = "./migrations")]
async fn never_reading_exports_starve_neither_ledger_nor_admin_nor_reports(pool: PgPool) {
    let gw = TestGateway::start_with(pool.clone(), |config| {
        config.database.exports_per_tenant = 20;
        config.database.exports_max_connections = 2;
        config.database.reports_max_connections = 2;
        config.database.ledger_max_connections = 2;
        config.database.export_stall_secs = 3;
        config.database_max_connections = 4;
    })
    .await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    // ~40 MB of CSV: far more than the socket buffers hold.
    old_rows(&pool, "hog", 4_000, 10_000).await;
    let hog = gw.key("hog").await;
    let other = gw.key("other").await;
    let mut stuck = Vec::new();
    for _ in 0..20 {
        stuck.push(stuck_export(&gw, &hog).await);
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let (status, body) = gw.admin(Method::GET, "/admin/keys", None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&gw, &other, "/v1/usage/records").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(
        &gw,
        &other,
        "/v1/usage?start_time=0&bucket_width=1d&limit=31&end_time=2592000",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let ready = gw.http.get(gw.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    for _ in 0..5 {
        let response = gw
            .create(&other, json!({"model": "turing/gpt-5.5", "input": "hi"}))
            .await;
        assert_eq!(response.status().as_u16(), 200);
    }
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM usage_ledger WHERE tenant_id = 'other'")
            .fetch_one(&pool)
            .await
            .unwrap_or(0);
    let mut stored = stored;
    for _ in 0..100 {
        if stored >= 5 {
            break;
        }
        gw.state.ledger.flush().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        stored = sqlx::query_scalar("SELECT count(*) FROM usage_ledger WHERE tenant_id = 'other'")
            .fetch_one(&pool)
            .await
            .unwrap();
    }
    assert_eq!(stored, 5, "rows of other tenants reach the database");
    assert_eq!(gw.state.ledger.stats().spooled.load(Ordering::Relaxed), 0);

    // The stalled exports are cut and give their connections back: an export
    // that reads now gets every row of its tenant.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let response = gw
        .http
        .get(gw.url("/v1/usage/records?format=csv"))
        .bearer_auth(&other)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let csv = response.text().await.unwrap();
    assert_eq!(csv.lines().count(), 1 + 5, "{csv}");
    drop(stuck);
    gw.shutdown().await;
}

#[sqlx::test(migrations = "./migrations")]
async fn a_tenants_third_concurrent_export_is_429_with_retry_after(pool: PgPool) {
    let gw = TestGateway::start(pool.clone()).await;
    old_rows(&pool, "hog", 4_000, 10_000).await;
    let hog = gw.key("hog").await;
    let _a = stuck_export(&gw, &hog).await;
    let _b = stuck_export(&gw, &hog).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let response = gw
        .http
        .get(gw.url("/v1/usage/records?format=csv"))
        .bearer_auth(&hog)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert!(response.headers().get("retry-after").is_some());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    // Another tenant is not held back by it.
    let other = gw.key("other").await;
    let (status, _) = get(&gw, &other, "/v1/usage/records?format=csv").await;
    assert_eq!(status, 200);
    gw.shutdown().await;
}
