//! Budget threshold alerts (CONTRACT §8) through real gateways on the real
//! database, delivered over real sockets to a receiver that checks each
//! signature and fails the first attempts: each threshold once per period,
//! retried until accepted, the same id and bytes on every attempt, exact
//! decimals, two thresholds crossed by one request, a crossing made by a
//! reprice, strict bodies, and two `tollgate serve` processes delivering
//! each event once between them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/webhook.rs"]
mod webhook;

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::PgPool;

use common::{gpt55_price, GatewayProcess, TestGateway};
use tollgate::config::Secret;
use tollgate::limits::budget::Period;
use webhook::Receiver;

const SECRET: &str = "alerts-test-signing-secret";

/// 100 input + 100 output tokens at gpt55_price: 0.0005 + 0.003.
const COST: &str = "0.0035";

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn usage_body(usage: &str) -> Value {
    json!({"model": "gpt-5.5", "input": "x".repeat(200), "max_output_tokens": 100,
           "metadata": {"mock_usage": usage}})
}

async fn alerting_gateway(pool: PgPool) -> TestGateway {
    TestGateway::start_with(pool, |c| {
        c.alerts.signing_secret = Secret::new(SECRET);
        c.alerts.retry_base_ms = 100;
    })
    .await
}

async fn key_id(gw: &TestGateway, key: &str) -> String {
    let r = gw
        .http
        .get(gw.url("/v1/key"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

async fn put(gw: &TestGateway, path: &str, body: Value) -> Value {
    let (status, answer) = gw.admin(Method::PUT, path, Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

async fn events(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM alert_events")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits until the outbox holds `n` events.
async fn until_events(pool: &PgPool, n: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while events(pool).await < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} alert events recorded",
            events(pool).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until no event is pending: the receiver's answer is recorded
/// just after it arrives.
async fn until_recorded_delivered(gw: &TestGateway) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, pending) = gw
            .admin(Method::GET, "/admin/alerts?delivered=false", None)
            .await;
        if pending["data"] == json!([]) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still pending: {pending}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One request through the gateway, its row stored.
async fn spend(gw: &TestGateway, key: &str, usage: &str, rows: usize) {
    let r = gw.create(key, usage_body(usage)).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    gw.rows(rows).await;
}

fn period_start(period: Period) -> String {
    period
        .start(Utc::now())
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The accepted events, ordered by threshold.
fn accepted_events(receiver: &Receiver) -> Vec<Value> {
    let mut events: Vec<Value> = receiver
        .accepted()
        .into_values()
        .map(|attempts| attempts[0].event.clone())
        .collect();
    events.sort_by_key(|e| dec(e["data"]["threshold"].as_str().unwrap()));
    events
}

#[sqlx::test]
async fn each_threshold_is_delivered_once_signed_and_retried_until_accepted(pool: PgPool) {
    let gw = alerting_gateway(pool.clone()).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let id = key_id(&gw, &key).await;
    let receiver = Receiver::start(SECRET, 2).await;
    let amount = dec(COST) * Decimal::from(10);
    let limits = json!({
        "budget": {"amount": amount.to_string(), "period": "month", "mode": "soft"},
        "alerts": {"thresholds": ["1.0", "0.5", "0.8", "0.50"], "webhook_url": receiver.url}});
    let answer = put(&gw, &format!("/admin/limits/keys/{id}"), limits.clone()).await;
    assert_eq!(answer["alerts"]["thresholds"], json!(["0.5", "0.8", "1"]));
    assert_eq!(answer["alerts"]["webhook_url"], receiver.url);

    // Key holders see the thresholds, never the URL.
    let r = gw
        .http
        .get(gw.url("/v1/key"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let status: Value = r.json().await.unwrap();
    let shown = &status["limits"]["key"]["alerts"];
    assert_eq!(shown["thresholds"], json!(["0.5", "0.8", "1"]));
    assert!(shown.get("webhook_url").is_none(), "{shown}");
    assert!(!status.to_string().contains(&receiver.url));

    // Ten requests of 0.0035 each: 0.5 is reached by the 5th exactly, 0.8
    // by the 8th, 1.0 by the 10th. Each crossing is awaited before the next
    // request, so each event's `spent` is known to the last digit.
    let mut expected = Vec::new();
    for n in 1..=10usize {
        spend(&gw, &key, "100,0,100,0", n).await;
        if [5, 8, 10].contains(&n) {
            expected.push(dec(COST) * Decimal::from(n as u64));
            until_events(&pool, expected.len() as i64).await;
        }
    }
    receiver.until_accepted(3, Duration::from_secs(30)).await;

    let by_id = receiver.by_id();
    assert_eq!(by_id.len(), 3, "one id per threshold");
    for (event_id, attempts) in &by_id {
        let statuses: Vec<u16> = attempts.iter().map(|a| a.status).collect();
        assert_eq!(
            statuses,
            [500, 500, 200],
            "{event_id}: retried until accepted, once"
        );
        for a in attempts {
            assert!(a.signature_valid, "{event_id}: signature");
            assert_eq!(a.content_type, "application/cloudevents+json");
            assert_eq!(a.body, attempts[0].body, "the same bytes on every attempt");
        }
    }
    let delivered = accepted_events(&receiver);
    let month = period_start(Period::Month);
    for ((event, threshold), spent) in delivered.iter().zip(["0.5", "0.8", "1"]).zip(&expected) {
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["type"], "tollgate.budget.threshold_crossed");
        assert_eq!(event["source"], "tollgate");
        assert_eq!(event["datacontenttype"], "application/json");
        assert_eq!(event["subject"], format!("keys/{id}"));
        assert!(event["id"].as_str().unwrap().starts_with("evt_"));
        DateTime::parse_from_rfc3339(event["time"].as_str().unwrap()).unwrap();
        let data = &event["data"];
        assert_eq!(data["scope"], "key");
        assert_eq!(data["tenant"], "acme");
        assert_eq!(data["key_id"], id);
        assert_eq!(data["threshold"], threshold);
        assert_eq!(data["amount"], "0.035");
        assert_eq!(data["spent"], spent.normalize().to_string());
        assert_eq!(data["period"], "month");
        assert_eq!(data["period_start"], month);
    }
    println!(
        "delivered {:?}",
        delivered
            .iter()
            .map(|e| (&e["data"]["threshold"], &e["data"]["spent"]))
            .collect::<Vec<_>>()
    );

    // The admin list: newest first, delivered after three attempts.
    until_recorded_delivered(&gw).await;
    let (code, list) = gw.admin(Method::GET, "/admin/alerts", None).await;
    assert_eq!(code, 200, "{list}");
    let data = list["data"].as_array().unwrap();
    let thresholds: Vec<&str> = data
        .iter()
        .map(|e| e["threshold"].as_str().unwrap())
        .collect();
    assert_eq!(thresholds, ["1", "0.8", "0.5"]);
    for e in data {
        assert!(by_id.contains_key(e["id"].as_str().unwrap()));
        assert_eq!(e["attempts"], 3);
        assert!(e["delivered_at"].is_string(), "{e}");
        assert_eq!(e["last_error"], "HTTP 500");
        assert!(e["next_attempt_at"].is_null());
        assert_eq!(
            (&e["scope"], &e["tenant"], &e["key_id"]),
            (&json!("key"), &json!("acme"), &json!(id))
        );
    }
    assert_eq!(list["has_more"], false);
    let (_, pending) = gw
        .admin(Method::GET, "/admin/alerts?delivered=false", None)
        .await;
    assert_eq!(pending["data"], json!([]));
    let (_, other) = gw
        .admin(Method::GET, "/admin/alerts?tenant=globex", None)
        .await;
    assert_eq!(other["data"], json!([]));
    let (_, one) = gw
        .admin(
            Method::GET,
            "/admin/alerts?limit=1&tenant=acme&delivered=true",
            None,
        )
        .await;
    assert_eq!(
        (one["data"].as_array().unwrap().len(), &one["has_more"]),
        (1, &json!(true))
    );
    let (code, bad) = gw.admin(Method::GET, "/admin/alerts?limit=0", None).await;
    assert_eq!((code, &bad["error"]["param"]), (400, &json!("limit")));

    // Setting the same alerts again, and spending past every threshold,
    // sends nothing new: each threshold is sent once per period.
    put(&gw, &format!("/admin/limits/keys/{id}"), limits).await;
    let r = gw.create(&key, usage_body("100,0,100,0")).await;
    assert_eq!(r.status(), 429, "the soft budget is used up");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(events(&pool).await, 3);
    assert_eq!(receiver.attempts().len(), 9);

    let metrics = gw
        .http
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "tollgate_alerts_delivered_total",
        "tollgate_alerts_delivery_failures_total",
        "tollgate_alerts_recorded_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    gw.shutdown().await;
}

#[sqlx::test]
async fn one_request_crossing_two_thresholds_sends_both_and_a_reprice_crosses_too(pool: PgPool) {
    let gw = alerting_gateway(pool.clone()).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let receiver = Receiver::start(SECRET, 0).await;
    let limits = json!({"budget": {"amount": "1", "period": "day", "mode": "soft"},
               "alerts": {"thresholds": ["0.5", "0.8", "1.5"], "webhook_url": receiver.url}});
    put(&gw, "/admin/limits/tenants/acme", limits.clone()).await;

    // 30,000 output tokens at 0.00003: 0.9, past 0.5 and 0.8 at once.
    spend(&gw, &key, "0,0,30000,0", 1).await;
    receiver.until_accepted(2, Duration::from_secs(15)).await;
    let both = accepted_events(&receiver);
    let day = period_start(Period::Day);
    for (event, threshold) in both.iter().zip(["0.5", "0.8"]) {
        let data = &event["data"];
        assert_eq!(data["threshold"], threshold);
        assert_eq!(data["spent"], "0.9");
        assert_eq!(data["amount"], "1");
        assert_eq!(data["scope"], "tenant");
        assert_eq!(data["tenant"], "acme");
        assert!(data["key_id"].is_null());
        assert_eq!(data["period_start"], day);
        assert_eq!(event["subject"], "tenants/acme");
    }
    assert_ne!(both[0]["id"], both[1]["id"]);

    // An unpriced flex response costs nothing until a reprice prices it:
    // 20,000 output tokens at 0.00003 → 0.6, spent 1.5, the last threshold.
    let r = gw
        .create(
            &key,
            json!({"model": "gpt-5.5", "input": "x", "service_tier": "flex",
                   "metadata": {"mock_usage": "0,0,20000,0"}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    gw.rows(2).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(events(&pool).await, 2, "an unpriced row crosses nothing");
    let mut flex = gpt55_price();
    flex["output_cost_per_token_flex"] = json!("0.00003");
    flex["input_cost_per_token_flex"] = json!("0.000005");
    let v1: DateTime<Utc> = sqlx::query_scalar("SELECT max(effective_from) FROM model_prices")
        .fetch_one(&pool)
        .await
        .unwrap();
    flex["effective_from"] = json!(v1.to_rfc3339_opts(SecondsFormat::AutoSi, true));
    gw.set_price("gpt-5.5", flex).await;
    let (code, report) = gw
        .admin(
            Method::POST,
            "/admin/reprice",
            Some(
                json!({"start_time": (Utc::now() - chrono::Duration::hours(1)).timestamp(),
                        "end_time": (Utc::now() + chrono::Duration::minutes(1)).timestamp()}),
            ),
        )
        .await;
    assert_eq!((code, &report["priced"]), (200, &json!(1)), "{report}");
    receiver.until_accepted(3, Duration::from_secs(15)).await;
    let all = accepted_events(&receiver);
    assert_eq!(all[2]["data"]["threshold"], "1.5");
    assert_eq!(all[2]["data"]["spent"], "1.5");

    // Once per period: events of an earlier period do not stop this one's.
    // (Pretend the ones sent were yesterday's; the next check, which setting
    // the alerts again makes at once, sends today's again under new ids.)
    sqlx::query("UPDATE alert_events SET period_start = period_start - interval '1 day'")
        .execute(&pool)
        .await
        .unwrap();
    put(&gw, "/admin/limits/tenants/acme", limits).await;
    receiver.until_accepted(6, Duration::from_secs(15)).await;
    let (_, list) = gw
        .admin(Method::GET, "/admin/alerts?tenant=acme", None)
        .await;
    let starts: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["period_start"].as_str().unwrap())
        .collect();
    assert_eq!(starts.len(), 6);
    let today = Period::Day.start(Utc::now()).unwrap();
    let today_events = starts
        .iter()
        .filter(|s| DateTime::parse_from_rfc3339(s).unwrap() == today)
        .count();
    assert_eq!(today_events, 3);
    gw.shutdown().await;
}

#[sqlx::test]
async fn bad_alert_bodies_are_422_naming_the_field_and_change_nothing(pool: PgPool) {
    let gw = alerting_gateway(pool.clone()).await;
    let key = gw.key("acme").await;
    let id = key_id(&gw, &key).await;
    let good = json!({"budget": {"amount": "5"},
                      "alerts": {"thresholds": ["0.9"], "webhook_url": "https://hooks.example/a"}});
    let before = put(&gw, "/admin/limits/tenants/acme", good).await;
    let budget = json!({"amount": "5"});
    let url = "https://hooks.example/b";
    let eleven = ["0.5"; 11];
    let cases = [
        (
            json!({"budget": budget, "alerts": {"thresholds": [0.5], "webhook_url": url}}),
            "alerts.thresholds[0]",
        ),
        (
            json!({"budget": budget, "alerts": {"thresholds": ["0.5", "half"], "webhook_url": url}}),
            "alerts.thresholds[1]",
        ),
        (
            json!({"budget": budget, "alerts": {"thresholds": ["0.5", "0"], "webhook_url": url}}),
            "alerts.thresholds[1]",
        ),
        (
            json!({"budget": budget, "alerts": {"thresholds": ["11"], "webhook_url": url}}),
            "alerts.thresholds[0]",
        ),
        (
            json!({"budget": budget, "alerts": {"thresholds": [], "webhook_url": url}}),
            "alerts.thresholds",
        ),
        (
            json!({"budget": budget, "alerts": {"thresholds": eleven, "webhook_url": url}}),
            "alerts.thresholds",
        ),
        (
            json!({"budget": budget, "alerts": {"thresholds": ["0.5"], "webhook_url": "ftp://hooks.example/"}}),
            "alerts.webhook_url",
        ),
        (
            json!({"budget": budget, "alerts": {"thresholds": ["0.5"], "webhook_url": "not a url"}}),
            "alerts.webhook_url",
        ),
        (
            json!({"budget": budget, "alerts": {"thresholds": ["0.5"]}}),
            "alerts.webhook_url",
        ),
        (
            json!({"budget": budget, "alerts": {"thresholds": ["0.5"], "webhook_url": url, "retries": 3}}),
            "alerts.retries",
        ),
        (json!({"budget": budget, "alerts": []}), "alerts"),
        (
            json!({"alerts": {"thresholds": ["0.5"], "webhook_url": url}}),
            "alerts",
        ),
    ];
    for (body, param) in cases {
        for path in [
            "/admin/limits/tenants/acme".to_owned(),
            format!("/admin/limits/keys/{id}"),
        ] {
            let (status, answer) = gw.admin(Method::PUT, &path, Some(body.clone())).await;
            assert_eq!(status, 422, "{body} → {answer}");
            assert_eq!(answer["error"]["param"], param, "{body}");
        }
    }
    let (_, after) = gw
        .admin(Method::GET, "/admin/limits/tenants/acme", None)
        .await;
    assert_eq!(after["alerts"], before["alerts"]);
    assert_eq!(after["alerts"]["webhook_url"], "https://hooks.example/a");
    let (status, _) = gw
        .admin(Method::GET, &format!("/admin/limits/keys/{id}"), None)
        .await;
    assert_eq!(status, 404, "no key limits were created");
    let (_, list) = gw.admin(Method::GET, "/admin/limits", None).await;
    assert_eq!(list["data"][0]["alerts"]["thresholds"], json!(["0.9"]));
    gw.shutdown().await;

    // A gateway that cannot sign refuses to store alerts at all.
    let unsigned = TestGateway::start(pool.clone()).await;
    let (status, answer) = unsigned
        .admin(
            Method::PUT,
            &format!("/admin/limits/keys/{id}"),
            Some(json!({"budget": {"amount": "5"},
                        "alerts": {"thresholds": ["0.5"], "webhook_url": url}})),
        )
        .await;
    assert_eq!(
        (status, &answer["error"]["param"]),
        (422, &json!("alerts")),
        "{answer}"
    );
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("signing secret"));
    let (status, _) = unsigned
        .admin(Method::GET, &format!("/admin/limits/keys/{id}"), None)
        .await;
    assert_eq!(status, 404);
    unsigned.shutdown().await;
}

const ADMIN: &str = "alerts-replicas-admin";

async fn reservations_released(pool: &PgPool) {
    common::limits_settled(pool).await;
}

#[sqlx::test]
async fn two_replicas_deliver_each_threshold_once_between_them(pool: PgPool) {
    let receiver = Receiver::start(SECRET, 2).await;
    let env = [
        ("TOLLGATE_ADMIN_TOKEN", ADMIN),
        ("TOLLGATE_ALERTS_SECRET", SECRET),
    ];
    let config = "[alerts]\nretry_base_ms = 100\n";
    let replicas = [
        GatewayProcess::start_with_env(&pool, config, &env).await,
        GatewayProcess::start_with_env(&pool, config, &env).await,
    ];
    let amount = dec(COST) * Decimal::from(10);
    let r = replicas[0]
        .http
        .put(format!("{}/admin/limits/tenants/acme", replicas[0].base))
        .bearer_auth(ADMIN)
        .json(&json!({"budget": {"amount": amount.to_string(), "period": "month", "mode": "soft"},
                      "alerts": {"thresholds": ["0.5", "0.8", "1.0"], "webhook_url": receiver.url}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Every replica's set of alerting scopes is at most a second old.
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    // Ten requests alternating between the replicas, two at a time.
    for pair in 0..5 {
        let sends = replicas.iter().map(|gw| async move {
            gw.http
                .post(format!("{}/v1/responses", gw.base))
                .bearer_auth(&gw.key)
                .json(&usage_body("100,0,100,0"))
                .send()
                .await
                .unwrap()
                .status()
        });
        for status in futures_util::future::join_all(sends).await {
            assert_eq!(status, 200, "pair {pair}");
        }
        // A stored row and its reservation overlap for a moment (which can
        // only refuse): let the pair settle before the next.
        reservations_released(&pool).await;
    }
    receiver.until_accepted(3, Duration::from_secs(30)).await;
    // Room for a double delivery to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let by_id = receiver.by_id();
    assert_eq!(by_id.len(), 3, "one event per threshold: {by_id:#?}");
    for (event_id, attempts) in &by_id {
        let statuses: Vec<u16> = attempts.iter().map(|a| a.status).collect();
        assert_eq!(statuses, [500, 500, 200], "{event_id}: delivered once");
        assert!(attempts.iter().all(|a| a.signature_valid));
    }
    let events = accepted_events(&receiver);
    for (event, threshold) in events.iter().zip(["0.5", "0.8", "1"]) {
        let data = &event["data"];
        assert_eq!(data["threshold"], threshold);
        assert!(
            dec(data["spent"].as_str().unwrap()) >= dec(threshold) * amount,
            "{event}"
        );
        assert_eq!(data["scope"], "tenant");
    }
    let list: Value = replicas[1]
        .http
        .get(format!("{}/admin/alerts", replicas[1].base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = list["data"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter()
            .all(|e| e["attempts"] == 3 && e["delivered_at"].is_string()),
        "{list}"
    );
}
