//! The admin API and the records endpoint: token rules, key lifecycle,
//! price versions and validation, tenant isolation and pagination.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{gpt55_price, TestGateway, ADMIN_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

#[sqlx::test]
async fn admin_api_requires_the_token_and_is_off_without_one(pool: PgPool) {
    let gw = TestGateway::start(pool.clone()).await;
    let wrong = gw
        .http
        .get(gw.url("/admin/keys"))
        .bearer_auth(format!("{ADMIN_TOKEN}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        wrong.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_api_key"
    );
    // A client key is not an admin token.
    let key = gw.key("acme").await;
    let as_client = gw
        .http
        .get(gw.url("/admin/prices"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(as_client.status(), 401);
    gw.shutdown().await;

    let off = TestGateway::start_with(pool, |c| c.admin_token = Default::default()).await;
    let refused = off
        .http
        .get(off.url("/admin/keys"))
        .bearer_auth("")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
}

#[sqlx::test]
async fn keys_are_created_listed_and_revoked_without_secrets_leaking(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    let (status, created) = gw
        .admin(
            Method::POST,
            "/admin/keys",
            Some(json!({"tenant": "acme", "name": "ci"})),
        )
        .await;
    assert_eq!(status, 201);
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("sk-tg-"));
    assert_eq!(created["tenant"], "acme");
    let stored: Vec<u8> = sqlx::query_scalar("SELECT key_hash FROM api_keys")
        .fetch_one(&gw.pool)
        .await
        .unwrap();
    assert_eq!(stored.len(), 32, "only the SHA-256 is stored");

    let (_, list) = gw.admin(Method::GET, "/admin/keys?tenant=acme", None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert!(
        !list.to_string().contains(key),
        "listing never shows the secret"
    );

    let (status, _) = gw
        .admin(
            Method::POST,
            "/admin/keys",
            Some(json!({"tenant": "bad tenant!"})),
        )
        .await;
    assert_eq!(status, 422);
    let (status, _) = gw
        .admin(Method::DELETE, "/admin/keys/nosuchkey", None)
        .await;
    assert_eq!(status, 404);
    let id = created["id"].as_str().unwrap();
    let (status, revoked) = gw
        .admin(Method::DELETE, &format!("/admin/keys/{id}"), None)
        .await;
    assert_eq!(status, 200);
    assert!(revoked["revoked_at"].is_string());
}

#[sqlx::test]
async fn prices_are_versioned_exact_and_validated(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    // JSON numbers in exponent form are read exactly, never through a float.
    let (status, v1) = gw
        .admin(
            Method::PUT,
            "/admin/prices/turing/gpt-5",
            Some(
                serde_json::from_str(
                    r#"{"input_cost_per_token": 1.25e-06, "output_cost_per_token": "0.00001"}"#,
                )
                .unwrap(),
            ),
        )
        .await;
    assert_eq!(status, 201, "{v1}");
    assert_eq!(v1["model"], "gpt-5");
    assert_eq!(v1["input_cost_per_token"], "0.00000125");
    gw.set_price(
        "gpt-5",
        json!({"input_cost_per_token": "0.000002", "output_cost_per_token": "0.00001"}),
    )
    .await;

    let (_, history) = gw.admin(Method::GET, "/admin/prices/gpt-5", None).await;
    assert_eq!(
        history["history"].as_array().unwrap().len(),
        2,
        "nothing overwritten"
    );
    assert_eq!(history["current"]["input_cost_per_token"], "0.000002");
    let (_, current) = gw.admin(Method::GET, "/admin/prices", None).await;
    assert_eq!(current["data"].as_array().unwrap().len(), 1);

    for (body, field) in [
        (
            json!({"input_cost_per_token": "-1", "output_cost_per_token": "0"}),
            "input_cost_per_token",
        ),
        (
            json!({"input_cost_per_token": "abc", "output_cost_per_token": "0"}),
            "input_cost_per_token",
        ),
        (
            json!({"input_cost_per_token": "NaN", "output_cost_per_token": "0"}),
            "input_cost_per_token",
        ),
        (
            json!({"input_cost_per_token": "0.1", "output_cost_per_token": "0", "bogus": 1}),
            "bogus",
        ),
        (
            json!({"output_cost_per_token": "0"}),
            "input_cost_per_token",
        ),
        (
            json!({"input_cost_per_token": "0.1", "output_cost_per_token": "0", "effective_from": "tomorrow"}),
            "effective_from",
        ),
    ] {
        let (status, error) = gw
            .admin(Method::PUT, "/admin/prices/gpt-5", Some(body.clone()))
            .await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(error["error"]["param"], field, "{body} -> {error}");
    }
    let (_, history) = gw.admin(Method::GET, "/admin/prices/gpt-5", None).await;
    assert_eq!(
        history["history"].as_array().unwrap().len(),
        2,
        "bad input changed nothing"
    );
}

#[sqlx::test]
async fn future_prices_wait_for_their_time_and_import_is_idempotent(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    let bundled =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/prices.json"))
            .unwrap();
    let response = gw
        .http
        .post(gw.url("/admin/prices/import"))
        .bearer_auth(ADMIN_TOKEN)
        .body(bundled.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    let imported = report["imported"].as_array().unwrap().len();
    assert!(imported >= 10, "{report}");
    let again: Value = gw
        .http
        .post(gw.url("/admin/prices/import"))
        .bearer_auth(ADMIN_TOKEN)
        .body(bundled)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["imported"].as_array().unwrap().len(), 0);
    assert_eq!(again["unchanged"], imported);

    gw.set_price(
        "gpt-5.5",
        json!({"input_cost_per_token": "1", "output_cost_per_token": "1", "effective_from": "2999-01-01T00:00:00Z"}),
    )
    .await;
    let (_, current) = gw.admin(Method::GET, "/admin/prices/gpt-5.5", None).await;
    assert_eq!(
        current["current"]["input_cost_per_token"], "0.000005",
        "a future price is not in force yet"
    );
}

#[sqlx::test]
async fn records_are_tenant_scoped_newest_first_and_paged(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let acme = gw.key("acme").await;
    let globex = gw.key("globex").await;
    for (key, n) in [(&acme, 5), (&globex, 2)] {
        for _ in 0..n {
            let response = gw
                .create(key, json!({"model": "gpt-5.5", "input": "x", "metadata": {"mock_usage": "10,0,10,0"}}))
                .await;
            response.bytes().await.unwrap();
        }
    }
    gw.rows(7).await;

    let page = |key: String, query: String| {
        let gw = &gw;
        async move {
            let response = gw
                .http
                .get(gw.url(&format!("/v1/usage/records{query}")))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let (status, first) = page(acme.clone(), "?limit=2".into()).await;
    assert_eq!(status, 200);
    assert_eq!(first["object"], "list");
    assert_eq!(first["has_more"], true);
    let mut seen: Vec<String> = Vec::new();
    let mut body = first;
    loop {
        for row in body["data"].as_array().unwrap() {
            assert_eq!(row["tenant"], "acme");
            assert_eq!(row["cost"], "0.00035");
            seen.push(row["request_id"].as_str().unwrap().to_owned());
        }
        let Some(cursor) = body["next_cursor"].as_str() else {
            break;
        };
        body = page(acme.clone(), format!("?limit=2&after={cursor}"))
            .await
            .1;
    }
    assert_eq!(seen.len(), 5);
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!(unique.len(), 5, "no row twice across pages");

    // No parameter widens a tenant's view.
    let (status, _) = page(globex.clone(), "?tenants=acme".into()).await;
    assert_eq!(status, 400);
    let acme_key_id = acme.split('-').nth(2).unwrap();
    let (_, other) = page(globex.clone(), format!("?api_key_ids={acme_key_id}")).await;
    assert_eq!(other["data"].as_array().unwrap().len(), 0);
    let (_, own) = page(globex, String::new()).await;
    assert_eq!(own["data"].as_array().unwrap().len(), 2);
    let (status, error) = page(acme.clone(), "?after=garbage".into()).await;
    assert_eq!(
        (status, error["error"]["param"].as_str()),
        (400, Some("after"))
    );

    // Admins see everyone and can filter by tenant.
    let (_, all) = gw
        .admin(Method::GET, "/admin/usage/records?tenants=globex", None)
        .await;
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
}

#[sqlx::test]
async fn health_ready_and_metrics(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    let health = gw.http.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready: Value = gw
        .http
        .get(gw.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["ledger"]["spooled_rows"], 0);
    let metrics = gw
        .http
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("tollgate_ledger_rows_queued"));
    let unknown = gw.http.get(gw.url("/v1/nothing")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        unknown.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );
}
