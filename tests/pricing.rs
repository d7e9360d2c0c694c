//! The price table end to end, through the proxy and the admin API: tiers
//! from the final response, long context, versions (changes, future dates,
//! retirement), reprice, the audit trail, LiteLLM import exactness and the
//! listener's reload after a reconnect. Every expected cost is computed by
//! hand in the comment above its assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{gpt55_price, TestGateway, ADMIN_TOKEN};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use sqlx::PgPool;
use tollgate::config::AdminTokenConfig;
use tollgate::config::Secret;
use tollgate::ledger::LedgerRow;
use tollgate::pricing::sheet::{parse_decimal, parse_field_name, RateField, Variant};

fn dec(s: &str) -> Option<Decimal> {
    Some(s.parse().unwrap())
}

/// gpt-5.5 with every tier: base 5 / 0.50 / 30 per 1M tokens, flex half,
/// priority double (CONTRACT §8 list prices).
fn tiered_price() -> Value {
    json!({
        "input_cost_per_token": "0.000005",
        "cache_read_input_token_cost": "0.0000005",
        "output_cost_per_token": "0.00003",
        "input_cost_per_token_flex": "0.0000025",
        "cache_read_input_token_cost_flex": "0.00000025",
        "output_cost_per_token_flex": "0.000015",
        "input_cost_per_token_priority": "0.00001",
        "cache_read_input_token_cost_priority": "0.000001",
        "output_cost_per_token_priority": "0.00006",
    })
}

/// Sends one create request, reads the whole body, returns the status and
/// Tollgate's request id.
async fn send(gw: &TestGateway, key: &str, body: Value) -> (u16, String) {
    let response = gw.create(key, body).await;
    let status = response.status().as_u16();
    let id = response
        .headers()
        .get("x-tollgate-request-id")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    response.bytes().await.unwrap();
    (status, id)
}

async fn row(gw: &TestGateway, request_id: &str) -> LedgerRow {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        gw.state.ledger.flush().await;
        let found: Option<LedgerRow> = sqlx::query_as(&format!(
            "SELECT {} FROM usage_ledger WHERE request_id = $1",
            tollgate::ledger::COLUMNS
        ))
        .bind(request_id)
        .fetch_optional(&gw.pool)
        .await
        .unwrap();
        if let Some(found) = found {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no row for {request_id}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn put_price(gw: &TestGateway, model: &str, price: Value) -> Value {
    let (status, body) = gw
        .admin(Method::PUT, &format!("/admin/prices/{model}"), Some(price))
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

fn id_of(version: &Value) -> Option<i64> {
    version["id"].as_i64()
}

#[sqlx::test]
async fn tiers_are_priced_from_the_final_service_tier(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    let version = put_price(&gw, "gpt-5.5", tiered_price()).await;
    let key = gw.key("acme").await;
    let usage = "1000,200,500,100";

    // Requested flex, served flex; streamed, so the tier comes from the
    // terminal event. 800*0.0000025 + 200*0.00000025 + 400*0.000015 +
    // 100*0.000015 (no reasoning rate: falls back to the flex output rate)
    // = 0.002 + 0.00005 + 0.006 + 0.0015 = 0.00955
    let (_, flex) = send(
        &gw,
        &key,
        json!({"model": "gpt-5.5", "input": "x", "service_tier": "flex", "stream": true,
               "metadata": {"mock_usage": usage}}),
    )
    .await;
    // Requested default, but the response says priority: the response wins.
    // 800*0.00001 + 200*0.000001 + 500*0.00006 = 0.008 + 0.0002 + 0.03 = 0.0382
    let (_, priority) = send(
        &gw,
        &key,
        json!({"model": "gpt-5.5", "input": "x", "service_tier": "default",
               "metadata": {"mock_usage": usage, "mock_tier": "priority"}}),
    )
    .await;
    // "fast" is billed as priority.
    let (_, fast) = send(
        &gw,
        &key,
        json!({"model": "gpt-5.5", "input": "x", "service_tier": "priority",
               "metadata": {"mock_usage": usage, "mock_tier": "fast"}}),
    )
    .await;
    // Requested priority, served default: base rates.
    // 800*0.000005 + 200*0.0000005 + 500*0.00003 = 0.004 + 0.0001 + 0.015 = 0.0191
    let (_, downgraded) = send(
        &gw,
        &key,
        json!({"model": "gpt-5.5", "input": "x", "service_tier": "priority",
               "metadata": {"mock_usage": usage, "mock_tier": "default"}}),
    )
    .await;
    // A tier there is no rule for stays unpriced.
    let (_, scale) = send(
        &gw,
        &key,
        json!({"model": "gpt-5.5", "input": "x",
               "metadata": {"mock_usage": usage, "mock_tier": "scale"}}),
    )
    .await;

    for (request_id, tier, cost) in [
        (&flex, "flex", "0.00955"),
        (&priority, "priority", "0.0382"),
        (&fast, "fast", "0.0382"),
        (&downgraded, "default", "0.0191"),
    ] {
        let row = row(&gw, request_id).await;
        assert_eq!(row.service_tier.as_deref(), Some(tier));
        assert_eq!(row.cost, dec(cost), "{tier}");
        assert_eq!(row.price_id, id_of(&version), "{tier}");
        assert_eq!(row.unpriced_reason, None);
        assert_eq!(row.currency, "usd");
    }
    let row = row(&gw, &scale).await;
    assert_eq!(row.cost, None);
    assert_eq!(row.price_id, None);
    assert_eq!(
        row.unpriced_reason.as_deref(),
        Some("no_price_for_tier:scale")
    );
}

#[sqlx::test]
async fn long_context_rates_apply_strictly_above_the_threshold(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    let mut price = tiered_price();
    price["input_cost_per_token_above_272k_tokens"] = json!("0.00001");
    price["cache_read_input_token_cost_above_272k_tokens"] = json!("0.000001");
    price["output_cost_per_token_above_272k_tokens"] = json!("0.000045");
    let version = put_price(&gw, "gpt-5.5", price).await;
    let key = gw.key("acme").await;

    let cases = [
        // At the threshold: base. 272000*0.000005 + 1000*0.00003 = 1.36 + 0.03
        ("272000,0,1000,0", None, "1.39"),
        // One above: the whole request at the long-context rates.
        // 272001*0.00001 + 1000*0.000045 = 2.72001 + 0.045
        ("272001,0,1000,0", None, "2.76501"),
        // Cached tokens too: (272001-1)*0.00001 + 1*0.000001 + 1000*0.000045
        // = 2.72 + 0.000001 + 0.045
        ("272001,1,1000,0", None, "2.765001"),
        // Long context is a default-tier rule: flex keeps its own rates.
        // 272001*0.0000025 + 1000*0.000015 = 0.6800025 + 0.015
        ("272001,0,1000,0", Some("flex"), "0.6950025"),
    ];
    for (usage, tier, cost) in cases {
        let mut body = json!({"model": "gpt-5.5", "input": "x", "metadata": {"mock_usage": usage}});
        if let Some(tier) = tier {
            body["service_tier"] = json!(tier);
        }
        let (status, request_id) = send(&gw, &key, body).await;
        assert_eq!(status, 200);
        let row = row(&gw, &request_id).await;
        assert_eq!(row.cost, dec(cost), "{usage} {tier:?}");
        assert_eq!(row.price_id, id_of(&version));
    }
}

#[sqlx::test]
async fn each_row_keeps_the_price_version_it_started_with(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    let v1 = put_price(&gw, "gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let body =
        json!({"model": "turing/gpt-5.5", "input": "x", "metadata": {"mock_usage": "100,0,10,0"}});
    let (_, first) = send(&gw, &key, body.clone()).await;
    // A new version in another currency, in force at once.
    let v2 = put_price(
        &gw,
        "gpt-5.5",
        json!({"input_cost_per_token": "0.000004", "output_cost_per_token": "0.00002",
               "currency": "eur"}),
    )
    .await;
    assert_ne!(id_of(&v1), id_of(&v2));
    let (_, second) = send(&gw, &key, body).await;

    // 100*0.000005 + 10*0.00003 = 0.0005 + 0.0003
    let first = row(&gw, &first).await;
    assert_eq!(
        (first.price_id, first.cost, first.currency.as_str()),
        (id_of(&v1), dec("0.0008"), "usd")
    );
    // 100*0.000004 + 10*0.00002 = 0.0004 + 0.0002
    let second = row(&gw, &second).await;
    assert_eq!(
        (second.price_id, second.cost, second.currency.as_str()),
        (id_of(&v2), dec("0.0006"), "eur")
    );
    // The records endpoint shows each row's currency and cost.
    let records: Value = gw
        .http
        .get(gw.url("/v1/usage/records"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let shown: Vec<(String, String, i64)> = records["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["cost"].as_str().unwrap().to_owned(),
                r["currency"].as_str().unwrap().to_owned(),
                r["price_id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("0.0006".to_owned(), "eur".to_owned(), id_of(&v2).unwrap()),
            ("0.0008".to_owned(), "usd".to_owned(), id_of(&v1).unwrap()),
        ]
    );
}

#[sqlx::test]
async fn a_future_dated_price_is_not_used_before_its_time(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    let v1 = put_price(&gw, "gpt-5.5", gpt55_price()).await;
    let takes_effect = Utc::now() + chrono::Duration::milliseconds(1500);
    let v2 = put_price(
        &gw,
        "gpt-5.5",
        json!({"input_cost_per_token": "0.00001", "output_cost_per_token": "0.00006",
               "effective_from": takes_effect.to_rfc3339()}),
    )
    .await;
    let key = gw.key("acme").await;
    let body = json!({"model": "gpt-5.5", "input": "x", "metadata": {"mock_usage": "100,0,10,0"}});
    let (_, before) = send(&gw, &key, body.clone()).await;
    let (_, current) = gw.admin(Method::GET, "/admin/prices/gpt-5.5", None).await;
    assert_eq!(current["current"]["id"], v1["id"]);

    let wait = (takes_effect - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(50)).await;
    let (_, after) = send(&gw, &key, body).await;

    // 100*0.000005 + 10*0.00003
    let before = row(&gw, &before).await;
    assert!(before.started_at < takes_effect);
    assert_eq!((before.price_id, before.cost), (id_of(&v1), dec("0.0008")));
    // 100*0.00001 + 10*0.00006 = 0.001 + 0.0006
    let after = row(&gw, &after).await;
    assert!(after.started_at >= takes_effect);
    assert_eq!((after.price_id, after.cost), (id_of(&v2), dec("0.0016")));
}

#[sqlx::test]
async fn retiring_a_price_refuses_new_requests_without_forwarding(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    let key = gw.key("acme").await;
    let body = json!({"model": "gpt-5.5", "input": "x", "metadata": {"mock_usage": "10,0,10,0"}});

    // Never priced: nothing to retire.
    let (status, error) = gw
        .admin(Method::DELETE, "/admin/prices/gpt-5.5", None)
        .await;
    assert_eq!(status, 404, "{error}");

    put_price(&gw, "gpt-5.5", gpt55_price()).await;
    assert_eq!(send(&gw, &key, body.clone()).await.0, 200);
    assert_eq!(gw.mock.request_count(), 1);

    let (status, retired) = gw
        .admin(Method::DELETE, "/admin/prices/turing/gpt-5.5", None)
        .await;
    assert_eq!(status, 200, "{retired}");
    assert_eq!(retired["retired"], true);
    assert_eq!(retired["model"], "gpt-5.5");
    assert_eq!(retired["created_by"], "admin");
    assert!(retired.get("input_cost_per_token").is_none());

    let response = gw.create(&key, body.clone()).await;
    assert_eq!(response.status(), 404);
    let request_id = response.headers()["x-tollgate-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "model_not_found");
    assert_eq!(gw.mock.request_count(), 1, "nothing forwarded");
    let refused = row(&gw, &request_id).await;
    assert_eq!(refused.status, "rejected");
    assert_eq!(refused.error_code.as_deref(), Some("model_not_found"));

    // The retirement is in the history, with who and when; it is no
    // current price.
    let (_, history) = gw.admin(Method::GET, "/admin/prices/gpt-5.5", None).await;
    assert!(history["current"].is_null(), "{history}");
    let versions = history["history"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[1]["retired"], true);
    assert_eq!(versions[1]["created_by"], "admin");
    assert!(versions[1]["created_at"].is_string());
    let (_, listed) = gw.admin(Method::GET, "/admin/prices", None).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 0);

    // Retiring again changes nothing.
    let (status, again) = gw
        .admin(Method::DELETE, "/admin/prices/gpt-5.5", None)
        .await;
    assert_eq!((status, &again["id"]), (200, &retired["id"]));
    let (_, history) = gw.admin(Method::GET, "/admin/prices/gpt-5.5", None).await;
    assert_eq!(history["history"].as_array().unwrap().len(), 2);

    // A new price brings the model back.
    put_price(&gw, "gpt-5.5", gpt55_price()).await;
    assert_eq!(send(&gw, &key, body).await.0, 200);
    assert_eq!(gw.mock.request_count(), 2);
}

async fn reprice(gw: &TestGateway, body: Value) -> (u16, Value) {
    gw.admin(Method::POST, "/admin/reprice", Some(body)).await
}

#[sqlx::test]
async fn reprice_prices_unpriced_rows_and_never_touches_priced_ones(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    let v1 = put_price(&gw, "gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let usage = "1000,200,500,100";
    let (_, plain) = send(
        &gw,
        &key,
        json!({"model": "gpt-5.5", "input": "x", "metadata": {"mock_usage": usage}}),
    )
    .await;
    let (_, flex) = send(
        &gw,
        &key,
        json!({"model": "gpt-5.5", "input": "x", "service_tier": "flex",
               "metadata": {"mock_usage": usage}}),
    )
    .await;
    let (_, priority) = send(
        &gw,
        &key,
        json!({"model": "gpt-5.5", "input": "x", "service_tier": "priority",
               "metadata": {"mock_usage": usage}}),
    )
    .await;
    let (_, no_usage) = send(
        &gw,
        &key,
        json!({"model": "gpt-5.5", "input": "x", "metadata": {"mock_usage": "none"}}),
    )
    .await;
    // 800*0.000005 + 200*0.0000005 + 500*0.00003 = 0.004 + 0.0001 + 0.015
    let plain_before = row(&gw, &plain).await;
    assert_eq!(plain_before.cost, dec("0.0191"));
    let flex_before = row(&gw, &flex).await;
    assert_eq!(
        flex_before.unpriced_reason.as_deref(),
        Some("no_price_for_tier:flex")
    );
    row(&gw, &priority).await;
    row(&gw, &no_usage).await;

    let range = json!({
        "start_time": (plain_before.started_at - chrono::Duration::minutes(1)).to_rfc3339(),
        "end_time": (Utc::now() + chrono::Duration::minutes(1)).timestamp(),
    });
    // Nothing to price yet: the tier still has no price.
    let (status, report) = reprice(&gw, range.clone()).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        (
            &report["priced"],
            &report["cost_added"],
            &report["still_unpriced"]
        ),
        (&json!(0), &json!("0"), &json!(2))
    );

    // The correction: v1 plus flex rates, backdated to v1's own time (of two
    // versions with one effective_from the newer wins).
    let mut corrected = gw55_with_flex();
    corrected["effective_from"] = v1["effective_from"].clone();
    let v2 = put_price(&gw, "gpt-5.5", corrected).await;

    // Other models only: nothing.
    let mut other = range.clone();
    other["models"] = json!(["turing/gpt-5"]);
    let (_, report) = reprice(&gw, other).await;
    assert_eq!(report["priced"], 0);

    // 800*0.0000025 + 200*0.00000025 + 500*0.000015 = 0.002 + 0.00005 + 0.0075
    let mut mine = range.clone();
    mine["models"] = json!(["turing/gpt-5.5"]);
    let (status, report) = reprice(&gw, mine).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        (
            &report["priced"],
            &report["cost_added"],
            &report["still_unpriced"]
        ),
        (&json!(1), &json!("0.00955"), &json!(1))
    );
    let flex_after = row(&gw, &flex).await;
    assert_eq!(flex_after.cost, dec("0.00955"));
    assert_eq!(flex_after.price_id, id_of(&v2));
    assert_eq!(flex_after.unpriced_reason, None);
    assert_eq!(flex_after.currency, "usd");
    // Already priced: untouched although v2 is now "in force" at its start.
    assert_eq!(row(&gw, &plain).await, plain_before);
    assert_eq!(plain_before.price_id, id_of(&v1));
    // Still no priority price: still unpriced, same reason.
    let priority_after = row(&gw, &priority).await;
    assert_eq!(priority_after.cost, None);
    assert_eq!(
        priority_after.unpriced_reason.as_deref(),
        Some("no_price_for_tier:priority")
    );
    // No usage: nothing to price, never touched.
    let no_usage_after = row(&gw, &no_usage).await;
    assert_eq!(no_usage_after.cost, None);
    assert_eq!(
        no_usage_after.unpriced_reason.as_deref(),
        Some("usage_missing")
    );

    // Idempotent.
    let (_, again) = reprice(&gw, range.clone()).await;
    assert_eq!(
        (&again["priced"], &again["cost_added"]),
        (&json!(0), &json!("0"))
    );
    assert_eq!(row(&gw, &flex).await, flex_after);

    // Bad input names the field and changes nothing.
    for (body, field) in [
        (json!({"end_time": 1}), "start_time"),
        (json!({"start_time": 1}), "end_time"),
        (
            json!({"start_time": "yesterday", "end_time": 2}),
            "start_time",
        ),
        (json!({"start_time": 5, "end_time": 5}), "end_time"),
        (
            json!({"start_time": 1, "end_time": 2, "models": []}),
            "models",
        ),
        (
            json!({"start_time": 1, "end_time": 2, "models": "gpt-5.5"}),
            "models",
        ),
        (
            json!({"start_time": 1, "end_time": 2, "tenants": ["acme"]}),
            "tenants",
        ),
    ] {
        let (status, error) = reprice(&gw, body.clone()).await;
        assert_eq!(status, 422, "{body} -> {error}");
        assert_eq!(error["error"]["param"], field, "{body} -> {error}");
    }
}

fn gw55_with_flex() -> Value {
    let mut price = gpt55_price();
    price["input_cost_per_token_flex"] = json!("0.0000025");
    price["cache_read_input_token_cost_flex"] = json!("0.00000025");
    price["output_cost_per_token_flex"] = json!("0.000015");
    price
}

#[sqlx::test]
async fn the_history_records_which_token_made_each_change(pool: PgPool) {
    let gw = TestGateway::start_with(pool, |config| {
        config.admin_tokens = vec![AdminTokenConfig {
            label: "finance".into(),
            token: Secret::new("finance-token"),
        }];
    })
    .await;
    let as_finance = |method: Method, path: &str| {
        gw.http
            .request(method, gw.url(path))
            .bearer_auth("finance-token")
    };
    let response = as_finance(Method::PUT, "/admin/prices/gpt-5.5")
        .json(&gpt55_price())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let response = as_finance(Method::POST, "/admin/prices/import")
        .body(r#"{"o3": {"input_cost_per_token": 2e-06, "output_cost_per_token": 8e-06}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The main token is recorded as "admin".
    let (status, _) = gw
        .admin(Method::DELETE, "/admin/prices/gpt-5.5", None)
        .await;
    assert_eq!(status, 200);
    let response = as_finance(Method::GET, "/admin/prices/gpt-5.5")
        .send()
        .await
        .unwrap();
    let history: Value = response.json().await.unwrap();
    let who: Vec<(&str, bool)> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let when: DateTime<Utc> = v["created_at"].as_str().unwrap().parse().unwrap();
            assert!(when <= Utc::now());
            (
                v["created_by"].as_str().unwrap(),
                v["retired"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(who, [("finance", false), ("admin", true)]);
    let (_, o3) = gw.admin(Method::GET, "/admin/prices/o3", None).await;
    assert_eq!(o3["current"]["created_by"], "finance");

    // A wrong token is still refused; the main token still works.
    let response = gw
        .http
        .get(gw.url("/admin/prices"))
        .bearer_auth("finance-token-x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = gw
        .http
        .get(gw.url("/admin/prices"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

const SAMPLE_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/litellm-model-prices.sample.json"
);

/// Every OpenAI text model of the LiteLLM sample is imported, and each price
/// field of each one equals the number written in the file, digit for digit:
/// the expected value is read from the file's raw JSON text, not through a
/// float. A tier or long-context variant the file gives only partly (no own
/// input or output rate) must be absent, not half-imported.
#[sqlx::test]
async fn importing_the_litellm_sample_keeps_every_openai_price_exact(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    let text = std::fs::read_to_string(SAMPLE_FILE).unwrap();
    let response = gw
        .http
        .post(gw.url("/admin/prices/import"))
        .bearer_auth(ADMIN_TOKEN)
        .body(text.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();

    let entries: BTreeMap<String, BTreeMap<String, Box<RawValue>>> =
        serde_json::from_str(&text).unwrap();
    let mut checked_models = 0;
    let mut checked_fields = 0;
    for (key, entry) in &entries {
        let provider: Option<String> = entry
            .get("litellm_provider")
            .and_then(|raw| serde_json::from_str(raw.get()).ok());
        if provider.as_deref() != Some("openai") {
            continue;
        }
        let mode: Option<String> = entry
            .get("mode")
            .and_then(|raw| serde_json::from_str(raw.get()).ok());
        let served = matches!(mode.as_deref(), None | Some("chat" | "responses"));
        let has_rates = entry.contains_key("input_cost_per_token")
            && entry.contains_key("output_cost_per_token");
        let model = key.strip_prefix("openai/").unwrap_or(key);
        if key.starts_with("openai/") && entries.contains_key(model) {
            continue; // the unprefixed entry is the one imported
        }
        if !(served && has_rates) {
            let skipped = report["skipped"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["model"] == key.as_str());
            assert!(skipped, "{key} should be reported as skipped: {report}");
            continue;
        }

        // The file's price fields, exactly, grouped by variant.
        let mut expected: BTreeMap<String, Decimal> = BTreeMap::new();
        let mut by_variant: BTreeMap<Variant, Vec<RateField>> = BTreeMap::new();
        for (name, raw) in entry {
            if let Some((field, variant)) = parse_field_name(name) {
                expected.insert(name.clone(), parse_decimal(raw, name).unwrap());
                by_variant.entry(variant).or_default().push(field);
            }
        }
        // Variants without their own input and output rate are dropped.
        for (variant, fields) in &by_variant {
            if !(fields.contains(&RateField::Input) && fields.contains(&RateField::Output)) {
                for field in fields {
                    expected.remove(&tollgate::pricing::sheet::field_name(*field, *variant));
                }
            }
        }

        let (status, stored) = gw
            .admin(Method::GET, &format!("/admin/prices/{model}"), None)
            .await;
        assert_eq!(status, 200, "{key} was not imported: {report}");
        let current = stored["current"].as_object().unwrap();
        let mut got: BTreeMap<String, Decimal> = BTreeMap::new();
        for (name, value) in current {
            if parse_field_name(name).is_some() {
                let raw = RawValue::from_string(value.to_string()).unwrap();
                let exact = parse_decimal(&raw, name).unwrap();
                // The API writes the same digits the file had, normalised.
                assert_eq!(value.as_str().unwrap(), exact.to_string(), "{key}.{name}");
                got.insert(name.clone(), exact);
            }
        }
        assert_eq!(got, expected, "{key}");
        for (name, value) in &expected {
            assert_eq!(
                value.to_string(),
                current[name].as_str().unwrap(),
                "{key}.{name}"
            );
        }
        assert_eq!(current["currency"], "usd");
        checked_models += 1;
        checked_fields += expected.len();
    }
    assert!(
        checked_models >= 40,
        "only {checked_models} OpenAI models checked"
    );
    assert!(checked_fields >= 3 * checked_models);
    eprintln!("checked {checked_fields} price fields of {checked_models} OpenAI models");
}

/// A change that no notification announced (written while this replica's
/// listener was disconnected) is picked up by the full reload that follows
/// the listener's reconnect, long before the periodic reload would run.
#[sqlx::test]
async fn the_listener_reloads_everything_after_a_reconnect(pool: PgPool) {
    let gw = TestGateway::start_with(pool.clone(), |config| {
        config.prices.reload_interval_secs = 3600;
    })
    .await;
    let v1 = put_price(&gw, "gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let body = json!({"model": "gpt-5.5", "input": "x", "metadata": {"mock_usage": "10,0,10,0"}});

    // Wait for the listener's connection, then write a version behind its
    // back: a plain INSERT, no NOTIFY.
    let listener_pid = async {
        loop {
            let pid: Option<i32> = sqlx::query_scalar(
                "SELECT pid FROM pg_stat_activity
                 WHERE datname = current_database() AND query ILIKE 'LISTEN%tollgate_prices%'",
            )
            .fetch_optional(&pool)
            .await
            .unwrap();
            if let Some(pid) = pid {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let pid = tokio::time::timeout(Duration::from_secs(10), listener_pid)
        .await
        .expect("the gateway listens for price changes");
    let silent: i64 = sqlx::query_scalar(
        "INSERT INTO model_prices (model, effective_from, input_cost_per_token,
            output_cost_per_token, created_by)
         VALUES ('gpt-5.5', now(), 0.000001, 0.000002, 'test') RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let (_, request_id) = send(&gw, &key, body.clone()).await;
    assert_eq!(
        row(&gw, &request_id).await.price_id,
        id_of(&v1),
        "unannounced change is not seen yet"
    );

    // Cut the listener's connection.
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(killed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, request_id) = send(&gw, &key, body.clone()).await;
        if row(&gw, &request_id).await.price_id == Some(silent) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reconnect did not reload the prices"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
