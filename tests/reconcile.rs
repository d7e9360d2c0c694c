//! Reconciliation with the provider (CONTRACT §12) through a real gateway on
//! the real database, against the simulated upstream's organization Usage,
//! Costs and Projects APIs over real sockets.
//!
//! Traffic goes through the gateway (real ledger rows, real provider
//! counts), then both sides are moved into the past together (the ledger's
//! `started_at` and the simulated provider's counts), so closed days can be
//! judged. Each kind of disagreement is injected on a day of its own: a lost
//! ledger row, a stale price, traffic around the gateway, a day not closed,
//! a provider revision; the test asserts the one line that shows each (day,
//! model, key, status, the differences in requests, tokens and money) and
//! that nothing else is flagged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/webhook.rs"]
mod webhook;

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::PgPool;

use common::{gpt55_price, TestGateway, UPSTREAM_KEY};
use tollgate::config::{Config, Secret};
use tollgate::mock_upstream::org::{Counts, Served};
use tollgate::pricing::PriceSheet;
use tollgate::reconcile::fetch::Fetched;

const ADMIN_KEY: &str = "sk-admin-test-organization-key";
const PROJECT: &str = "proj_tollgate";
const SECRET: &str = "reconcile-test-signing-secret";

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn sheet(price: &Value) -> PriceSheet {
    let fields = price
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), dec(v.as_str().unwrap())))
        .collect();
    PriceSheet::from_fields(&fields, None).unwrap()
}

/// The `tollgate_reconciliation_*` gauges are process-wide and every
/// gateway's fetch rewrites them, so the tests of this file run one at a
/// time: a gauge read after a fetch is that fetch's.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

fn reconciling(c: &mut Config) {
    c.reconcile.url = c.upstreams[0].url.clone();
    c.reconcile.admin_key = Secret::new(ADMIN_KEY);
}

async fn gateway(pool: PgPool, adjust: impl FnOnce(&mut Config)) -> TestGateway {
    let gw = TestGateway::start_with(pool, |c| {
        reconciling(c);
        adjust(c);
    })
    .await;
    gw.mock.org().register_key(UPSTREAM_KEY, PROJECT);
    // The gateway's own first round runs at start; let it finish before the
    // test moves data through time under it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tollgate::jobs::status(&gw.pool, tollgate::reconcile::JOB_NAME)
        .await
        .unwrap()
        .is_none_or(|s| s.runs == 0)
    {
        assert!(tokio::time::Instant::now() < deadline, "no scheduled round");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw
}

/// The same price on both sides: Tollgate's table and the provider's.
async fn price_both(gw: &TestGateway, model: &str, price: Value) {
    gw.set_price(model, price.clone()).await;
    gw.mock.org().set_price(model, sheet(&price));
}

/// `n` requests of `model` with this usage (`input,cached,output,reasoning`).
async fn traffic(gw: &TestGateway, key: &str, model: &str, usage: &str, n: usize) {
    for _ in 0..n {
        let body = json!({"model": model, "input": "hello", "metadata": {"mock_usage": usage}});
        let r = gw.create(key, body).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
}

async fn ledger_rows(gw: &TestGateway) -> i64 {
    gw.state.ledger.flush().await;
    sqlx::query_scalar("SELECT count(*) FROM usage_ledger")
        .fetch_one(&gw.pool)
        .await
        .unwrap()
}

/// Moves every ledger row and everything the provider counted `days` days
/// into the past (the rollup follows the ledger through its triggers).
async fn age(gw: &TestGateway, days: i64) {
    gw.state.ledger.flush().await;
    sqlx::query(
        "UPDATE usage_ledger SET started_at = started_at - make_interval(days => $1::int),
             first_byte_at = first_byte_at - make_interval(days => $1::int),
             finished_at = finished_at - make_interval(days => $1::int)",
    )
    .bind(days as i32)
    .execute(&gw.pool)
    .await
    .unwrap();
    gw.mock.org().shift_days(days);
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

fn day(offset: i64) -> NaiveDate {
    today() - chrono::Duration::days(offset)
}

/// Runs the fetch job once for these days (as `tollgate reconcile fetch`
/// does), waiting while the gateway's own scheduled round holds the claim.
async fn fetch(gw: &TestGateway, from: NaiveDate, to: NaiveDate) -> Fetched {
    let mut job = tollgate::reconcile::FetchJob::new(
        gw.state.config.clone(),
        Some(gw.state.alerts.clone()),
        Some((from, to)),
    )
    .unwrap();
    let ctx = tollgate::jobs::JobContext {
        pool: gw.pool.clone(),
        stop: tokio_util::sync::CancellationToken::new(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tollgate::jobs::run_once(&ctx, &mut job).await.unwrap() {
            tollgate::jobs::Round::Ran(_) => return job.last.unwrap(),
            _ => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "fetch never claimed"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn report(gw: &TestGateway, from: NaiveDate, to: NaiveDate, group_by: &str) -> Value {
    let start = from.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp();
    let end = (to + chrono::Duration::days(1))
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp();
    let (status, body) = gw
        .admin(
            Method::GET,
            &format!("/admin/reconciliation?start_time={start}&end_time={end}&group_by={group_by}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Lines by (day, model).
fn by_day_model(report: &Value) -> HashMap<(String, String), Value> {
    report["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                (
                    l["day"].as_str().unwrap().to_owned(),
                    l["model"].as_str().unwrap_or("").to_owned(),
                ),
                l.clone(),
            )
        })
        .collect()
}

fn show(line: &Value) -> String {
    let d = &line["difference"];
    format!(
        "{} {:<13} key={:<20} {:<13} Δrequests={} Δinput={} Δcached={} Δoutput={} Δcost={}",
        line["day"].as_str().unwrap(),
        line["model"].as_str().unwrap_or("-"),
        line["upstream_key"].as_str().unwrap_or("-"),
        line["status"].as_str().unwrap(),
        d["requests"],
        d["input_tokens"],
        d["cached_tokens"],
        d["output_tokens"],
        d["cost"]
    )
}

/// The priced usage of the tests' traffic (`input,cached,output,reasoning`).
const MINI_USAGE: &str = "1200,200,300,100";
const BIG_USAGE: &str = "1000000,0,200000,0";
const USAGE: &str = "1000,100,500,64";

async fn set_prices(gw: &TestGateway) {
    price_both(gw, "gpt-5.5", gpt55_price()).await;
    price_both(
        gw,
        "gpt-5.4-mini",
        json!({"input_cost_per_token": "0.00000025", "cache_read_input_token_cost": "0.000000025",
               "output_cost_per_token": "0.000002"}),
    )
    .await;
    // The stale price: Tollgate still has last week's, the provider bills more.
    gw.set_price(
        "gpt-5.2",
        json!({"input_cost_per_token": "0.0000017", "output_cost_per_token": "0.0000133"}),
    )
    .await;
    gw.mock.org().set_price(
        "gpt-5.2",
        sheet(&json!({"input_cost_per_token": "0.00000175", "output_cost_per_token": "0.000014"})),
    );
}

#[sqlx::test]
async fn every_disagreement_shows_on_its_own_line_and_nothing_else_is_flagged(pool: PgPool) {
    let _serial = one_at_a_time().await;
    let gw = gateway(pool, |_| {}).await;
    set_prices(&gw).await;
    let key = gw.key("acme").await;

    // Oldest first; each `age` moves everything so far one day back.
    traffic(&gw, &key, "gpt-5.5", USAGE, 3).await; // ends on day -5: match
    age(&gw, 1).await;
    traffic(&gw, &key, "gpt-5.4-mini", MINI_USAGE, 3).await; // day -4: a row is lost
    age(&gw, 1).await;
    traffic(&gw, &key, "gpt-5.2", BIG_USAGE, 2).await; // day -3: stale price
    age(&gw, 1).await;
    traffic(&gw, &key, "gpt-5.5", USAGE, 2).await; // day -2: revised later
    age(&gw, 2).await;
    traffic(&gw, &key, "turing/gpt-5.5", USAGE, 1).await; // today: not closed
    assert_eq!(ledger_rows(&gw).await, 11);

    // Traffic around the gateway: another key of Tollgate's project, day -3.
    let intruder = gw.mock.org().register_key("sk-someone-else-9999", PROJECT);
    gw.mock.org().add_usage(&Served {
        at: day(3).and_hms_opt(12, 0, 0).unwrap().and_utc(),
        model: "gpt-5.5-2025-08-07",
        api_key_id: &intruder,
        project_id: PROJECT,
        service_tier: "default",
        batch: false,
        counts: Counts {
            requests: 4,
            input: 4000,
            cached: 0,
            output: 2000,
        },
        reasoning: 0,
    });
    // A lost ledger row: one of day -4's rows never made it.
    let lost: (i64, i64, i64, Decimal) = sqlx::query_as(
        "DELETE FROM usage_ledger WHERE id = (SELECT min(id) FROM usage_ledger WHERE model = 'gpt-5.4-mini')
         RETURNING input_tokens, cached_tokens, output_tokens, cost",
    )
    .fetch_one(&gw.pool)
    .await
    .unwrap();

    // Before any fetch of days -6..-3 (the gateway's own scheduled round
    // covers the recent days only): every line pending, the provider null.
    let before = report(&gw, day(6), day(3), "model").await;
    assert_eq!(before["data"].as_array().unwrap().len(), 3, "{before}");
    for line in before["data"].as_array().unwrap() {
        assert_eq!(line["status"], "pending", "{line}");
        assert!(
            line["provider"].is_null(),
            "no data yet is never zero: {line}"
        );
    }

    let first = fetch(&gw, day(6), today()).await;
    assert!(
        first.pages >= 3 && first.usage_rows_changed > 0,
        "{first:?}"
    );
    let again = fetch(&gw, day(6), today()).await;
    assert_eq!(
        (again.usage_rows_changed, again.cost_rows_changed),
        (0, 0),
        "a second fetch changes nothing: {again:?}"
    );

    let body = report(&gw, day(6), today(), "model").await;
    let lines = by_day_model(&body);
    for line in lines.values() {
        println!("{}", show(line));
    }
    let line = |offset: i64, model: &str| {
        lines
            .get(&(day(offset).to_string(), model.to_owned()))
            .unwrap_or_else(|| panic!("no line for day -{offset} {model}: {body}"))
            .clone()
    };
    // The match: both sides equal to the last digit.
    let matched = line(5, "gpt-5.5");
    assert_eq!(matched["status"], "match");
    assert_eq!(matched["ledger"]["requests"], 3);
    assert_eq!(matched["ledger"]["cost"], matched["provider"]["cost"]);

    // The lost row: the provider has exactly that row more.
    let lost_line = line(4, "gpt-5.4-mini");
    assert_eq!(lost_line["status"], "drift");
    let d = &lost_line["difference"];
    assert_eq!(
        (
            d["requests"].clone(),
            d["input_tokens"].clone(),
            d["cached_tokens"].clone(),
            d["output_tokens"].clone()
        ),
        (json!(-1), json!(-lost.0), json!(-lost.1), json!(-lost.2))
    );
    assert_eq!(dec(d["cost"].as_str().unwrap()), -lost.3);

    // The stale price: tokens agree, money does not.
    let stale = line(3, "gpt-5.2");
    assert_eq!(stale["status"], "drift");
    let d = &stale["difference"];
    assert_eq!(
        (
            d["requests"].clone(),
            d["input_tokens"].clone(),
            d["output_tokens"].clone()
        ),
        (json!(0), json!(0), json!(0))
    );
    // 2 × (1,000,000 × 0.00000005 + 200,000 × 0.0000007) less for Tollgate.
    assert_eq!(dec(d["cost"].as_str().unwrap()), dec("-0.38"));

    // Around the gateway: usage no ledger row accounts for.
    let around = line(3, "gpt-5.5");
    assert_eq!(around["status"], "provider_only");
    assert_eq!(around["provider"]["requests"], 4);
    assert_eq!(around["ledger"]["requests"], 0);
    assert_eq!(around["difference"]["requests"], -4);

    // Day -2 agrees before the revision.
    assert_eq!(line(2, "gpt-5.5")["status"], "match");

    // Today is not closed: pending, whatever the numbers say.
    let open = line(0, "gpt-5.5");
    assert_eq!(open["status"], "pending");
    assert_eq!(open["ledger"]["requests"], 1);

    // Nothing else: exactly these six lines.
    assert_eq!(lines.len(), 6, "{body}");

    // A provider revision of day -2 (late-counted usage), picked up by the
    // next fetch of the recent days.
    gw.mock.org().add_usage(&Served {
        at: day(2).and_hms_opt(23, 0, 0).unwrap().and_utc(),
        model: "gpt-5.5-2025-08-07",
        api_key_id: &tollgate::mock_upstream::org::api_key_id(UPSTREAM_KEY),
        project_id: PROJECT,
        service_tier: "default",
        batch: false,
        counts: Counts {
            requests: 1,
            input: 500,
            cached: 0,
            output: 200,
        },
        reasoning: 0,
    });
    let revised = fetch(&gw, day(2), today()).await;
    assert!(
        revised.usage_rows_changed >= 2 && revised.cost_rows_changed >= 1,
        "{revised:?}"
    );
    let body = report(&gw, day(6), today(), "model").await;
    let lines = by_day_model(&body);
    let r = &lines[&(day(2).to_string(), "gpt-5.5".to_owned())];
    println!("after the revision: {}", show(r));
    assert_eq!(r["status"], "drift");
    let d = &r["difference"];
    assert_eq!(
        (
            d["requests"].clone(),
            d["input_tokens"].clone(),
            d["output_tokens"].clone()
        ),
        (json!(-1), json!(-500), json!(-200))
    );
    // 500 × 0.000005 + 200 × 0.00003 at the provider's price.
    assert_eq!(dec(d["cost"].as_str().unwrap()), dec("-0.0085"));
    // Lost row, stale price, around the gateway, the revision: nothing else.
    let flagged = lines
        .values()
        .filter(|l| l["status"] != "match" && l["status"] != "pending")
        .count();
    assert_eq!(flagged, 4, "{body}");
    gw.shutdown().await;
}

#[sqlx::test]
async fn lines_by_upstream_key_name_the_key_and_discovery_finds_it(pool: PgPool) {
    let _serial = one_at_a_time().await;
    let gw = gateway(pool, |_| {}).await;
    set_prices(&gw).await;
    let key = gw.key("acme").await;
    traffic(&gw, &key, "gpt-5.5", USAGE, 2).await;
    age(&gw, 2).await;
    let intruder = gw.mock.org().register_key("sk-someone-else-9999", PROJECT);
    gw.mock.org().add_usage(&Served {
        at: day(2).and_hms_opt(1, 0, 0).unwrap().and_utc(),
        model: "gpt-5.5-2025-08-07",
        api_key_id: &intruder,
        project_id: PROJECT,
        service_tier: "flex",
        batch: false,
        counts: Counts {
            requests: 1,
            input: 10,
            cached: 0,
            output: 10,
        },
        reasoning: 0,
    });
    fetch(&gw, day(3), today()).await;
    // The upstream's key was found by its redacted value.
    let discovered: (String, String) =
        sqlx::query_as("SELECT upstream, api_key_id FROM provider_keys")
            .fetch_one(&gw.pool)
            .await
            .unwrap();
    let ours = tollgate::mock_upstream::org::api_key_id(UPSTREAM_KEY);
    assert_eq!(discovered, ("mock".to_owned(), ours.clone()));

    let body = report(&gw, day(3), today(), "model,upstream_key,service_tier").await;
    let data = body["data"].as_array().unwrap();
    for line in data {
        println!("{}", show(line));
    }
    assert_eq!(data.len(), 2, "{body}");
    let mine = data.iter().find(|l| l["upstream_key"] == "mock").unwrap();
    assert_eq!(mine["status"], "match");
    assert_eq!(mine["api_key_id"], ours.as_str());
    assert_eq!(mine["service_tier"], "default");
    // Costs are not split by key: no provider cost on these lines.
    assert!(mine["provider"]["cost"].is_null());
    let theirs = data
        .iter()
        .find(|l| l["upstream_key"] == intruder.as_str())
        .unwrap();
    assert_eq!(theirs["status"], "provider_only");
    assert_eq!(theirs["service_tier"], "flex");
    assert_eq!(theirs["api_key_id"], intruder.as_str());
    gw.shutdown().await;
}

#[sqlx::test]
async fn a_lagging_provider_keeps_a_closed_day_pending_until_it_settles(pool: PgPool) {
    let _serial = one_at_a_time().await;
    // Fetched right after its end, a day is still within the provider's
    // delay: pending, not drift, even though the provider has not counted
    // everything yet.
    let gw = gateway(pool, |c| c.reconcile.settle_hours = 47).await;
    set_prices(&gw).await;
    let key = gw.key("acme").await;
    traffic(&gw, &key, "gpt-5.5", USAGE, 2).await;
    age(&gw, 1).await;
    fetch(&gw, day(2), today()).await;
    let body = report(&gw, day(2), today(), "model").await;
    let line = &by_day_model(&body)[&(day(1).to_string(), "gpt-5.5".to_owned())];
    assert_eq!(line["status"], "pending");
    assert_eq!(line["provider"]["requests"], 2);
    gw.shutdown().await;
}

#[sqlx::test]
async fn drift_is_alerted_once_per_day_and_line_signed(pool: PgPool) {
    let _serial = one_at_a_time().await;
    let receiver = webhook::Receiver::start(SECRET, 0).await;
    let url = receiver.url.clone();
    let gw = gateway(pool, move |c| {
        c.alerts.signing_secret = Secret::new(SECRET);
        c.alerts.retry_base_ms = 100;
        c.reconcile.alert_webhook_url = Some(url);
    })
    .await;
    // A stale price of a model no other test uses.
    gw.set_price(
        "gpt-5.1",
        json!({"input_cost_per_token": "0.0000017", "output_cost_per_token": "0.0000133"}),
    )
    .await;
    gw.mock.org().set_price(
        "gpt-5.1",
        sheet(&json!({"input_cost_per_token": "0.00000175", "output_cost_per_token": "0.000014"})),
    );
    let key = gw.key("acme").await;
    traffic(&gw, &key, "gpt-5.1", BIG_USAGE, 1).await;
    age(&gw, 2).await;
    fetch(&gw, day(3), today()).await;
    receiver.until_accepted(1, Duration::from_secs(10)).await;
    // Fetched again: the same drift is not alerted again.
    fetch(&gw, day(3), today()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    let attempt = &accepted.values().next().unwrap()[0];
    assert!(attempt.signature_valid);
    let event = &attempt.event;
    assert_eq!(event["type"], "tollgate.reconciliation.drift");
    assert_eq!(
        event["subject"],
        format!("reconciliation/{}/model=gpt-5.1", day(2))
    );
    assert_eq!(event["data"]["status"], "drift");
    assert_eq!(event["data"]["difference"]["cost"], "-0.19");
    let (_, alerts) = gw.admin(Method::GET, "/admin/alerts", None).await;
    assert_eq!(alerts["data"][0]["type"], "tollgate.reconciliation.drift");
    assert!(alerts["data"][0]["tenant"].is_null());
    let metrics = gw
        .http
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tollgate_reconciliation_drift_lines{model=\"gpt-5.1\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tollgate_reconciliation_last_success_timestamp_seconds"));
    gw.shutdown().await;
}

#[sqlx::test]
async fn the_command_line_fetches_and_prints_the_same_table(pool: PgPool) {
    let _serial = one_at_a_time().await;
    let gw = gateway(pool, |_| {}).await;
    set_prices(&gw).await;
    let key = gw.key("acme").await;
    traffic(&gw, &key, "gpt-5.4-mini", MINI_USAGE, 2).await;
    age(&gw, 2).await;
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&gw.pool)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            "[[upstreams]]\nname = \"mock\"\nurl = \"{url}\"\nkey = \"{UPSTREAM_KEY}\"\n\n[reconcile]\nurl = \"{url}\"\n",
            url = gw.state.config.upstreams[0].url
        ),
    )
    .unwrap();
    // Asynchronous: the simulated provider answers on this test's runtime.
    let run = |args: &[&str], admin_key: Option<&str>| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
        command
            .args(["--config"])
            .arg(&config)
            .args(args)
            .env(
                "DATABASE_URL",
                format!("postgres://postgres@127.0.0.1:5432/{database}"),
            )
            .env("RUST_LOG", "error")
            .env_remove("TOLLGATE_OPENAI_ADMIN_KEY");
        if let Some(k) = admin_key {
            command.env("TOLLGATE_OPENAI_ADMIN_KEY", k);
        }
        command.output()
    };
    let (from, to) = (day(3).to_string(), today().to_string());
    let off = run(&["reconcile", "fetch", "--from", &from, "--to", &to], None)
        .await
        .unwrap();
    assert!(!off.status.success());
    assert!(String::from_utf8_lossy(&off.stderr).contains("TOLLGATE_OPENAI_ADMIN_KEY"));
    let fetched = run(
        &["reconcile", "fetch", "--from", &from, "--to", &to],
        Some(ADMIN_KEY),
    )
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&fetched.stdout);
    assert!(
        fetched.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    assert!(out.contains("fetched 4 days"), "{out}");
    assert!(
        !out.contains(ADMIN_KEY) && !String::from_utf8_lossy(&fetched.stderr).contains(ADMIN_KEY)
    );
    let shown = run(&["reconcile", "show", "--from", &from, "--to", &to], None)
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&shown.stdout).into_owned();
    println!("{table}");
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let body = report(&gw, day(3), today(), "model").await;
    let line = &body["data"][0];
    assert_eq!(line["status"], "match");
    let row = table
        .lines()
        .find(|l| l.starts_with(&day(2).to_string()))
        .unwrap();
    for cell in [
        "gpt-5.4-mini",
        "match",
        &line["ledger"]["input_tokens"].to_string(),
        line["ledger"]["cost"].as_str().unwrap(),
    ] {
        assert!(row.contains(cell), "{cell} not in {row}");
    }
    gw.shutdown().await;
}
