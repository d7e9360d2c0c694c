//! Spend control (CONTRACT §8) through a real gateway on the real database:
//! hard and soft budgets under concurrency, requests per minute, concurrent
//! streams, the status `GET /v1/key` shows, and strict admin bodies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::str::FromStr;
use std::time::{Duration, Instant};

use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::PgPool;

use common::{gpt55_price, TestGateway};

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// 100 input + 100 output tokens at gpt55_price: 0.0005 + 0.003.
const COST: &str = "0.0035";

/// A body of more bytes than its 100 input tokens (as a real prompt has),
/// so the estimate bounds the cost.
fn known_cost_body() -> Value {
    json!({"model": "gpt-5.5", "input": "x".repeat(200), "max_output_tokens": 100,
           "metadata": {"mock_usage": "100,0,100,0"}})
}

async fn key_id(gw: &TestGateway, key: &str) -> String {
    let (status, body) = get_key(gw, key).await;
    assert_eq!(status, 200, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

async fn get_key(gw: &TestGateway, key: &str) -> (u16, Value) {
    let r = gw
        .http
        .get(gw.url("/v1/key"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn put_limits(gw: &TestGateway, path: &str, body: Value) -> Value {
    let (status, answer) = gw.admin(Method::PUT, path, Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

/// Fires `n` requests at once; returns the status of each.
async fn burst(gw: &TestGateway, key: &str, n: usize, body: Value) -> Vec<reqwest::Response> {
    let sends = (0..n).map(|_| gw.create(key, body.clone()));
    futures_util::future::join_all(sends).await
}

async fn ledger_sum(pool: &PgPool, key_id: &str) -> Decimal {
    sqlx::query_scalar("SELECT coalesce(sum(cost), 0) FROM usage_ledger WHERE api_key_id = $1")
        .bind(key_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn settled(gw: &TestGateway, rows: usize) {
    gw.rows(rows).await;
    common::limits_settled(&gw.pool).await;
}

#[sqlx::test]
async fn hard_budget_is_never_exceeded_under_50_concurrent_requests(pool: PgPool) {
    let gw = TestGateway::start(pool.clone()).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let id = key_id(&gw, &key).await;
    // Exactly ten requests' actual cost.
    let amount = dec(COST) * Decimal::from(10);
    put_limits(
        &gw,
        &format!("/admin/limits/keys/{id}"),
        json!({"budget": {"amount": amount.to_string(), "period": "month", "mode": "hard"}}),
    )
    .await;

    let mut admitted = 0;
    let mut refused = 0;
    // Waves: each sees the settled spend of the ones before.
    for _ in 0..5 {
        for r in burst(&gw, &key, 50, known_cost_body()).await {
            match r.status().as_u16() {
                200 => admitted += 1,
                429 => {
                    assert_eq!(r.headers()["x-should-retry"], "false");
                    let body: Value = r.json().await.unwrap();
                    assert_eq!(body["error"]["type"], "insufficient_quota");
                    assert_eq!(body["error"]["code"], "insufficient_quota");
                    refused += 1;
                }
                other => panic!("unexpected {other}"),
            }
        }
        settled(&gw, admitted + refused).await;
    }
    let spent = ledger_sum(&pool, &id).await;
    println!("hard budget {amount}: admitted {admitted} of 250 (at most 10 fit), spent {spent}");
    assert!(spent <= amount, "spent {spent} > {amount}");
    assert!((1..=10).contains(&admitted));
    let rejected: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM usage_ledger WHERE status = 'rejected' AND error_code = 'insufficient_quota'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rejected, refused as i64);

    let (_, status) = get_key(&gw, &key).await;
    let budget = &status["limits"]["key"]["budget"];
    assert_eq!(dec(budget["spent"].as_str().unwrap()), spent);
    assert_eq!(dec(budget["reserved"].as_str().unwrap()), Decimal::ZERO);
    assert_eq!(dec(budget["remaining"].as_str().unwrap()), amount - spent);
    assert_eq!(budget["overrun"], "0");
    gw.shutdown().await;
}

#[sqlx::test]
async fn soft_budget_overshoots_by_at_most_what_was_in_flight(pool: PgPool) {
    let gw = TestGateway::start(pool.clone()).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let id = key_id(&gw, &key).await;
    let amount = dec("0.01");
    put_limits(
        &gw,
        "/admin/limits/tenants/acme",
        json!({"budget": {"amount": "0.01", "period": "day", "mode": "soft"}}),
    )
    .await;
    let responses = burst(&gw, &key, 50, known_cost_body()).await;
    let admitted = responses.iter().filter(|r| r.status() == 200).count();
    settled(&gw, 50).await;
    let spent = ledger_sum(&pool, &id).await;
    let overshoot = (spent - amount).max(Decimal::ZERO);
    // In flight at the last admission: what had been reserved before it
    // (< amount) plus itself; each actual ≤ its estimate here.
    let bound = dec(COST) * Decimal::from(admitted as i64);
    println!("soft budget {amount}: admitted {admitted} of 50, spent {spent}, overshoot {overshoot} (in-flight bound {bound})");
    assert!(admitted >= 1);
    assert!(spent <= bound);
    // One more is refused now: the spend reached the amount or is close.
    let (_, status) = get_key(&gw, &key).await;
    assert_eq!(
        dec(status["limits"]["tenant"]["budget"]["spent"]
            .as_str()
            .unwrap()),
        spent
    );
    gw.shutdown().await;
}

#[sqlx::test]
async fn requests_per_minute_admits_exactly_n_in_a_burst(pool: PgPool) {
    let gw = TestGateway::start(pool.clone()).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let id = key_id(&gw, &key).await;
    // 5/min refills one request per 12 s: the burst ends well before.
    put_limits(
        &gw,
        &format!("/admin/limits/keys/{id}"),
        json!({"rate": {"requests_per_minute": 5}}),
    )
    .await;
    let responses = burst(&gw, &key, 30, known_cost_body()).await;
    let mut admitted = 0;
    for r in responses {
        if r.status() == 200 {
            admitted += 1;
            assert_eq!(r.headers()["x-ratelimit-limit-requests"], "5");
            assert!(r.headers().get("x-ratelimit-remaining-requests").is_some());
        } else {
            assert_eq!(r.status(), 429);
            let retry: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=12).contains(&retry), "retry-after {retry}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        }
    }
    println!("rpm 5: admitted {admitted} of 30");
    assert_eq!(admitted, 5);
    settled(&gw, 30).await;
    let rejected: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM usage_ledger WHERE status = 'rejected' AND error_code = 'rate_limit_exceeded'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rejected, 25);
    gw.shutdown().await;
}

#[sqlx::test]
async fn concurrent_streams_never_exceed_the_limit(pool: PgPool) {
    let gw = TestGateway::start(pool.clone()).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    put_limits(
        &gw,
        "/admin/limits/tenants/acme",
        json!({"rate": {"concurrent_requests": 3}}),
    )
    .await;
    let slow = json!({"model": "gpt-5.5", "input": "x", "stream": true,
        "metadata": {"mock_usage": "10,0,10,0", "mock_deltas": "10", "mock_delay_ms": "60"}});
    let start = Instant::now();
    // 40 attempts spread over ~2 s, each stream lasting ~0.6 s.
    let attempts = (0..40).map(|i| {
        let gw = &gw;
        let key = key.clone();
        let slow = slow.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(50 * i)).await;
            let r = gw.create(&key, slow).await;
            if r.status() != 200 {
                assert_eq!(r.status(), 429);
                return None;
            }
            let opened = start.elapsed();
            r.text().await.unwrap();
            Some((opened, start.elapsed()))
        }
    });
    let spans: Vec<_> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .flatten()
        .collect();
    // Most streams open at any instant (client view: admitted until read to the end).
    let most = spans
        .iter()
        .map(|(opened, _)| {
            spans
                .iter()
                .filter(|(o, c)| o <= opened && opened < c)
                .count()
        })
        .max()
        .unwrap();
    println!(
        "concurrency 3: {} of 40 admitted, at most {most} open at once",
        spans.len()
    );
    assert!(most <= 3, "{most} streams open at once");
    assert!(spans.len() > 3, "slots are released when streams end");
    gw.shutdown().await;
}

#[sqlx::test]
async fn key_status_spent_equals_the_ledger_also_after_a_reprice(pool: PgPool) {
    let gw = TestGateway::start(pool.clone()).await;
    // With the model's limits, requests without max_output_tokens are
    // bounded too (a hard budget refuses them otherwise).
    let mut price = gpt55_price();
    price["max_input_tokens"] = json!(272000);
    price["max_output_tokens"] = json!(128000);
    gw.set_price("gpt-5.5", price.clone()).await;
    let key = gw.key("acme").await;
    let id = key_id(&gw, &key).await;
    put_limits(
        &gw,
        &format!("/admin/limits/keys/{id}"),
        json!({"budget": {"amount": "100", "period": "total", "mode": "hard"},
               "rate": {"requests_per_minute": 100, "tokens_per_minute": 1000000}}),
    )
    .await;
    for usage in ["1000,200,500,100", "7,0,3,0", "123,45,67,8"] {
        let r = gw
            .create(
                &key,
                json!({"model": "gpt-5.5", "input": "x",
            "metadata": {"mock_usage": usage}}),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    // Unpriced tier: the row has no cost until a reprice.
    let r = gw
        .create(
            &key,
            json!({"model": "gpt-5.5", "input": "x", "service_tier": "flex",
        "metadata": {"mock_usage": "1000,0,1000,0"}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    settled(&gw, 4).await;
    let (_, status) = get_key(&gw, &key).await;
    let before = dec(status["limits"]["key"]["budget"]["spent"].as_str().unwrap());
    assert_eq!(before, ledger_sum(&pool, &id).await);
    assert!(status["limits"]["tenant"].is_null());
    assert_eq!(
        status["limits"]["key"]["rate"]["requests_per_minute"]["limit"],
        100
    );

    let first: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT min(started_at) FROM usage_ledger")
            .fetch_one(&pool)
            .await
            .unwrap();
    let mut flex = price;
    flex["input_cost_per_token_flex"] = json!("0.0000025");
    flex["output_cost_per_token_flex"] = json!("0.000015");
    // Backdated to the first version's own time: of two, the newer wins.
    let v1: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT max(effective_from) FROM model_prices")
            .fetch_one(&pool)
            .await
            .unwrap();
    flex["effective_from"] = json!(v1.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
    gw.set_price("gpt-5.5", flex).await;
    let (code, report) = gw
        .admin(
            Method::POST,
            "/admin/reprice",
            Some(json!({
        "start_time": (first - chrono::Duration::minutes(1)).to_rfc3339(),
        "end_time": (chrono::Utc::now() + chrono::Duration::minutes(1)).timestamp()})),
        )
        .await;
    assert_eq!(code, 200, "{report}");
    let (_, status) = get_key(&gw, &key).await;
    let after = dec(status["limits"]["key"]["budget"]["spent"].as_str().unwrap());
    let ledger = ledger_sum(&pool, &id).await;
    println!("GET /v1/key spent before reprice {before}, after {after}, ledger {ledger}");
    assert_eq!(after, ledger);
    assert_eq!(after - before, dec("0.0175"));
    gw.shutdown().await;
}

#[sqlx::test]
async fn bad_limit_bodies_are_422_naming_the_field_and_change_nothing(pool: PgPool) {
    let gw = TestGateway::start(pool.clone()).await;
    let key = gw.key("acme").await;
    let id = key_id(&gw, &key).await;
    let good = json!({"budget": {"amount": "5.00", "period": "week", "mode": "soft"},
                      "rate": {"requests_per_minute": 60}});
    let before = put_limits(&gw, "/admin/limits/tenants/acme", good).await;
    assert_eq!(before["budget"]["amount"], "5");
    let cases = [
        (json!({"budget": {"amount": -1}}), "budget.amount"),
        (json!({"budget": {"amount": "-1"}}), "budget.amount"),
        (json!({"budget": {"amount": 5.5}}), "budget.amount"),
        (
            json!({"budget": {"amount": "5", "period": "year"}}),
            "budget.period",
        ),
        (json!({"budget": {"amount": "5", "cap": "1"}}), "budget.cap"),
        (
            json!({"rate": {"requests_per_minute": 1.5}}),
            "rate.requests_per_minute",
        ),
        (
            json!({"rate": {"tokens_per_minute": "100"}}),
            "rate.tokens_per_minute",
        ),
        (json!({"rate": {"rpm": 1}}), "rate.rpm"),
        (json!({"colour": "red"}), "colour"),
    ];
    for (body, param) in cases {
        let (status, answer) = gw
            .admin(
                Method::PUT,
                "/admin/limits/tenants/acme",
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 422, "{body} → {answer}");
        assert_eq!(answer["error"]["param"], param, "{body}");
        let (status, _) = gw
            .admin(Method::PUT, &format!("/admin/limits/keys/{id}"), Some(body))
            .await;
        assert_eq!(status, 422);
    }
    let (status, answer) = gw
        .admin(Method::PUT, "/admin/limits/tenants/nobody", Some(json!({})))
        .await;
    assert_eq!(
        (status, answer["error"]["param"].as_str()),
        (422, Some("tenant"))
    );
    let (status, _) = gw
        .admin(
            Method::PUT,
            "/admin/limits/keys/key_unknown",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 404);
    let (_, after) = gw
        .admin(Method::GET, "/admin/limits/tenants/acme", None)
        .await;
    assert_eq!(after["budget"], before["budget"]);
    assert_eq!(after["rate"]["requests_per_minute"]["limit"], 60);
    let (status, _) = gw
        .admin(Method::GET, &format!("/admin/limits/keys/{id}"), None)
        .await;
    assert_eq!(status, 404, "no key limits were created");
    let (status, list) = gw.admin(Method::GET, "/admin/limits", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let (status, _) = gw
        .admin(Method::DELETE, "/admin/limits/tenants/acme", None)
        .await;
    assert_eq!(status, 204);
    gw.shutdown().await;
}

#[sqlx::test]
async fn an_actual_above_the_estimate_is_recorded_as_overrun(pool: PgPool) {
    let gw = TestGateway::start(pool.clone()).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let id = key_id(&gw, &key).await;
    put_limits(
        &gw,
        &format!("/admin/limits/keys/{id}"),
        json!({"budget": {"amount": "1", "period": "day", "mode": "hard"}}),
    )
    .await;
    // The upstream reports 10,000 input tokens for a body of ~100 bytes and
    // nothing it points at: more than it could have served. The bound
    // cannot see that; the excess is recorded, never hidden.
    let body = json!({"model": "gpt-5.5", "input": "x", "max_output_tokens": 10,
                      "metadata": {"mock_usage": "10000,0,10,0"}});
    assert_eq!(gw.create(&key, body.clone()).await.status(), 200);
    settled(&gw, 1).await;
    let (estimate, actual, overrun): (Decimal, Decimal, Decimal) =
        sqlx::query_as("SELECT estimate, actual, overrun FROM limit_overruns")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(actual, dec("0.0503"));
    assert_eq!(overrun, actual - estimate);
    let (_, status) = get_key(&gw, &key).await;
    let budget = &status["limits"]["key"]["budget"];
    assert_eq!(dec(budget["overrun"].as_str().unwrap()), overrun);
    assert_eq!(dec(budget["spent"].as_str().unwrap()), actual);
    gw.shutdown().await;
}

#[sqlx::test]
async fn tokens_per_minute_is_given_back_what_the_estimate_held_beyond_the_actual(pool: PgPool) {
    let gw = TestGateway::start(pool.clone()).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let id = key_id(&gw, &key).await;
    put_limits(
        &gw,
        &format!("/admin/limits/keys/{id}"),
        json!({"rate": {"tokens_per_minute": 600}}),
    )
    .await;
    // Estimate: ~100 body bytes + 1000 output tokens, more than the whole
    // allowance: taken from the full bucket, which goes below zero.
    let body = json!({"model": "gpt-5.5", "input": "x", "max_output_tokens": 1000,
                      "metadata": {"mock_usage": "100,0,100,0"}});
    let r = gw.create(&key, body.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-remaining-tokens"], "0");
    // Right away the bucket is empty: a second request waits.
    let second = gw.create(&key, body).await;
    assert_eq!(second.status(), 429);
    settled(&gw, 2).await;
    // Settled with 200 actual tokens: the ~1,170 the estimate held beyond
    // them come back (to this replica's slice, or to the bucket when the
    // slice hands them back), so a request of ~390 estimated tokens is
    // admitted now; without the refund the bucket, at about -770, would
    // refuse it for more than a minute.
    let smaller = json!({"model": "gpt-5.5", "input": "x", "max_output_tokens": 10,
                         "metadata": {"mock_usage": "100,0,100,0"}});
    let third = gw.create(&key, smaller).await;
    let status = third.status();
    assert_eq!(
        status,
        200,
        "the refund is usable at once: {}",
        third.text().await.unwrap()
    );
    gw.shutdown().await;
}

/// A stream longer than the lease lifetime keeps its slot: the replica
/// serving it renews its slice while the stream is open (here a 3 s
/// lifetime, synced every 200 ms, and a 6 s stream).
#[sqlx::test]
async fn a_stream_longer_than_the_lease_lifetime_keeps_its_slot(pool: PgPool) {
    let gw = TestGateway::start_with(pool.clone(), |c| {
        c.limits.lease_ttl_secs = 3;
        c.limits.lease_sync_ms = 200;
    })
    .await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    put_limits(
        &gw,
        "/admin/limits/tenants/acme",
        json!({"rate": {"concurrent_requests": 1}}),
    )
    .await;
    let long = json!({"model": "gpt-5.5", "input": "x", "stream": true,
        "metadata": {"mock_usage": "10,0,10,0", "mock_deltas": "30", "mock_delay_ms": "200"}});
    let stream = gw.create(&key, long).await;
    assert_eq!(stream.status(), 200);
    let reading = tokio::spawn(async move { stream.text().await.unwrap() });

    // Twice the lifetime in: without renewal the hold would have lapsed.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(!reading.is_finished(), "the stream should still be open");
    let second = gw.create(&key, known_cost_body()).await;
    assert_eq!(second.status(), 429, "the open stream still holds the slot");
    let (_, status) = get_key(&gw, &key).await;
    assert_eq!(
        status["limits"]["tenant"]["rate"]["concurrent_requests"]["remaining"],
        0
    );

    assert!(reading.await.unwrap().contains("response.completed"));
    settled(&gw, 2).await;
    let third = gw.create(&key, known_cost_body()).await;
    assert_eq!(
        third.status(),
        200,
        "the slot comes back with the stream's row"
    );
    gw.shutdown().await;
}

fn ledger_row(
    i: usize,
    tenant: &str,
    key: &str,
    started_at: chrono::DateTime<chrono::Utc>,
    cost: Option<Decimal>,
) -> tollgate::ledger::LedgerRow {
    tollgate::ledger::LedgerRow {
        id: None,
        request_id: format!("req_spend_{i:06}"),
        response_id: None,
        tenant: tenant.to_owned(),
        api_key_id: key.to_owned(),
        endpoint: "responses".to_owned(),
        model: Some("gpt-5.5".to_owned()),
        upstream: Some("default".to_owned()),
        upstream_model: Some("gpt-5.5".to_owned()),
        stream: false,
        status: "completed".to_owned(),
        usage_source: "reported".to_owned(),
        input_tokens: 1,
        cached_tokens: 0,
        output_tokens: 1,
        reasoning_tokens: 0,
        total_tokens: 2,
        service_tier: None,
        price_id: None,
        cost,
        unpriced_reason: cost.is_none().then(|| "no_price".to_owned()),
        currency: "usd".to_owned(),
        http_status: Some(200),
        error_code: None,
        attempts: 1,
        fallback_from: None,
        end_user: None,
        dropped_tools: None,
        client_request_id: None,
        client_disconnected: false,
        mcp_calls: 0,
        started_at,
        first_byte_at: None,
        finished_at: started_at,
        anomaly: None,
    }
}

/// The per-day spend budgets read (`limit_spend`, kept by the database from
/// every ledger statement) equals the ledger's own sums after inserts that
/// straddle UTC midnight, a reprice-like UPDATE, and a DELETE.
#[sqlx::test]
async fn the_spend_budgets_read_equals_the_ledger_through_every_change(pool: PgPool) {
    let midnight = chrono::Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let rows: Vec<_> = (0..300)
        .map(|i| {
            let at = midnight + chrono::Duration::seconds(i as i64 * 37 - 5_000);
            let cost = (i % 7 != 0).then(|| Decimal::new(i as i64 * 1_234_567 + 1, 10));
            let tenant = ["acme", "globex"][i % 2];
            let key = ["key_a", "key_b", "key_c"][i % 3];
            ledger_row(i, tenant, key, at, cost)
        })
        .collect();
    for batch in rows.chunks(64) {
        tollgate::ledger::quarantine::insert_isolating(&pool, batch)
            .await
            .unwrap();
    }
    let diff = || async {
        let (only_rollup, only_ledger): (i64, i64) = sqlx::query_as(
            "WITH ledger AS (
                SELECT kind, id, day, sum(cost) AS spent FROM (
                    SELECT 'tenant' AS kind, tenant_id AS id, (started_at AT TIME ZONE 'UTC')::date AS day, cost FROM usage_ledger
                    UNION ALL
                    SELECT 'key', api_key_id, (started_at AT TIME ZONE 'UTC')::date, cost FROM usage_ledger) d
                WHERE cost IS NOT NULL GROUP BY kind, id, day),
             rollup AS (SELECT scope_kind AS kind, scope_id AS id, day, spent FROM limit_spend WHERE spent <> 0)
             SELECT (SELECT count(*) FROM (SELECT * FROM rollup EXCEPT SELECT * FROM ledger) a),
                    (SELECT count(*) FROM (SELECT * FROM ledger EXCEPT SELECT * FROM rollup) b)",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (only_rollup, only_ledger)
    };
    assert_eq!(diff().await, (0, 0), "after inserts");
    let days: i64 = sqlx::query_scalar("SELECT count(DISTINCT day) FROM limit_spend")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(days, 2, "the rows straddle UTC midnight");

    // A reprice: unpriced rows get a cost, priced ones change.
    sqlx::query("UPDATE usage_ledger SET cost = coalesce(cost * 3, 0.0000000007) WHERE id % 4 = 0")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(diff().await, (0, 0), "after an update");
    sqlx::query("DELETE FROM usage_ledger WHERE id % 5 = 0")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(diff().await, (0, 0), "after a delete");
}

/// A dead replica's slice (granted, never renewed) holds until it expires,
/// then its slot and budget are free again.
#[sqlx::test]
async fn a_dead_replicas_slice_lapses_and_frees_what_it_held(pool: PgPool) {
    let gw = TestGateway::start(pool.clone()).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    put_limits(
        &gw,
        "/admin/limits/tenants/acme",
        json!({"budget": {"amount": "1.00"}, "rate": {"concurrent_requests": 1}}),
    )
    .await;
    // What another replica left when it died: its slice, holding the one
    // slot and a quarter of the budget for an open request, lapsing in 2 s.
    sqlx::query(
        "INSERT INTO limit_leases (scope_kind, scope_id, holder, budget, slots, committed, open_requests, expires_at)
         VALUES ('tenant', 'acme', 'dead-replica', 0.25, 1, 0.25, 1, now() + interval '2 seconds')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let refused = gw.create(&key, known_cost_body()).await;
    assert_eq!(
        refused.status(),
        429,
        "the dead replica's slice holds the slot"
    );
    let (_, status) = get_key(&gw, &key).await;
    let reserved = dec(status["limits"]["tenant"]["budget"]["reserved"]
        .as_str()
        .unwrap());
    assert!(reserved >= dec("0.25"), "{status}");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, status) = get_key(&gw, &key).await;
        if status["limits"]["tenant"]["budget"]["reserved"] == "0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lapsed slice still counts: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(gw.create(&key, known_cost_body()).await.status(), 200);
    settled(&gw, 2).await;
    let leftover: i64 =
        sqlx::query_scalar("SELECT count(*) FROM limit_leases WHERE holder = 'dead-replica'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(leftover, 0, "the lapsed slice is gone once a sync saw it");
    gw.shutdown().await;
}
