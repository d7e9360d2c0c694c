//! Billing export (CONTRACT §13) against stand-ins of OpenMeter, Lago,
//! Stripe and a signed webhook built from their published schemas, on the
//! real database: each final row once (after the sink's dedupe) with the
//! exact cost, the cursor safe against transactions committing out of id
//! order, rows waiting visibly (no mapping, unpriced) and going out once
//! they can, Lago's batch cap, Stripe's window, refusals quarantined, and
//! the admin API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/billing_sinks.rs"]
mod billing_sinks;
mod common;
#[path = "common/webhook.rs"]
mod webhook;

use std::collections::BTreeSet;

use billing_sinks::*;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

fn assert_exact(sinks: &BillingSinks, sink: &str, ledger: (i64, rust_decimal::Decimal, i64)) {
    let book = sinks.book(sink);
    assert_eq!(book.unique.len() as i64, ledger.0, "{sink}: rows");
    assert_eq!(book.after_dedupe(), 0, "{sink}: a request billed twice");
    if sink == "stripe" {
        assert_eq!(book.value_sum(), ledger.2, "stripe: token sum");
    } else {
        assert_eq!(book.cost_sum(sink), ledger.1, "{sink}: cost sum");
    }
}

#[sqlx::test]
async fn every_final_row_reaches_openmeter_and_the_webhook_once_with_the_exact_cost(pool: PgPool) {
    let sinks = BillingSinks::start(SIGNING_SECRET).await;
    register(&pool, "openmeter").await;
    register(&pool, "webhook").await;
    map_tenant(&pool, "acme").await;
    map_tenant(&pool, "beta").await;
    insert_rows(&pool, "acme", "a", 700).await;
    insert_rows(&pool, "beta", "b", 534).await;
    let mut om = sinks.job("openmeter", |c| c.batch_size = 200);
    let mut hook = sinks.job("webhook", |_| {});
    assert!(drive(&pool, &mut om, 50).await.is_empty());
    assert!(drive(&pool, &mut hook, 50).await.is_empty());
    let ledger = ledger_final(&pool, &["acme", "beta"]).await;
    assert_eq!(ledger.0, 1234);
    assert_exact(&sinks, "openmeter", ledger);
    assert_exact(&sinks, "webhook", ledger);
    let om_book = sinks.book("openmeter");
    assert_eq!(om_book.duplicates, 0);
    assert_eq!(om_book.largest_batch, 200);
    assert_eq!(
        sinks.book("webhook").unauthorized,
        0,
        "every webhook batch is signed"
    );
    // The event: the mapped subject, every count, the exact cost.
    let (id, cost): (String, rust_decimal::Decimal) = sqlx::query_as(
        "SELECT request_id, cost FROM usage_ledger WHERE tenant_id = 'beta' ORDER BY id LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let event = &om_book.unique[&format!("tollgate/{id}")];
    assert_eq!(event["subject"], "subj-beta");
    assert_eq!(event["type"], "tollgate.usage");
    assert_eq!(event["data"]["cost"], cost.normalize().to_string());
    for field in [
        "input_tokens",
        "cached_tokens",
        "output_tokens",
        "reasoning_tokens",
        "total_tokens",
    ] {
        assert!(event["data"][field].is_i64(), "{field}");
    }
    assert_eq!(
        sinks.book("webhook").unique[&format!("tollgate/{id}")]["subject"],
        "beta"
    );
    // Nothing new: a further step sends nothing.
    assert!(drive(&pool, &mut om, 5).await.is_empty());
    assert_eq!(sinks.book("openmeter").received, 1234);
}

/// Ids are taken before commit: a transaction holding a smaller id that
/// commits after a larger one was exported must still be exported.
#[sqlx::test]
async fn a_row_committed_late_with_a_smaller_id_is_still_exported(pool: PgPool) {
    let sinks = BillingSinks::start(SIGNING_SECRET).await;
    register(&pool, "webhook").await;
    let mut late = pool.begin().await.unwrap();
    let early_id: i64 = sqlx::query_scalar(
        "INSERT INTO usage_ledger (request_id, tenant_id, api_key_id, endpoint, stream, status,
             usage_source, cost, started_at, finished_at)
         VALUES ('req_late', 'zeta', 'kz', 'responses.create', false, 'completed', 'reported',
             0.1234567890123456, now() - interval '3 days', now()) RETURNING id",
    )
    .fetch_one(&mut *late)
    .await
    .unwrap();
    insert_rows(&pool, "acme", "x", 5).await;
    let later_id: i64 = sqlx::query_scalar("SELECT max(id) FROM usage_ledger")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(early_id < later_id);
    let mut job = sinks.job("webhook", |_| {});
    assert!(drive(&pool, &mut job, 10).await.is_empty());
    // Held behind the open transaction: nothing skipped, nothing sent out of turn.
    assert!(!sinks.book("webhook").per_request().contains_key("req_late"));
    late.commit().await.unwrap();
    assert!(drive(&pool, &mut job, 10).await.is_empty());
    let book = sinks.book("webhook");
    assert!(
        book.per_request().contains_key("req_late"),
        "the late row was skipped"
    );
    assert_exact(
        &sinks,
        "webhook",
        ledger_final(&pool, &["acme", "zeta"]).await,
    );
}

#[sqlx::test]
async fn a_tenant_without_a_mapping_waits_visibly_then_goes_out_in_order(pool: PgPool) {
    let sinks = BillingSinks::start(SIGNING_SECRET).await;
    register(&pool, "openmeter").await;
    map_tenant(&pool, "acme").await;
    insert_rows(&pool, "acme", "a", 30).await;
    let beta = insert_rows(&pool, "beta", "b", 40).await;
    insert_rows(&pool, "acme", "c", 30).await;
    let mut job = sinks.job("openmeter", |c| c.batch_size = 25);
    assert!(drive(&pool, &mut job, 50).await.is_empty());
    assert_eq!(sinks.book("openmeter").unique.len(), 60);
    let status = tollgate::export::api::statuses(&pool, &Default::default())
        .await
        .unwrap();
    let om = status.iter().find(|s| s.sink == "openmeter").unwrap();
    assert_eq!(om.waiting_for_mapping, 40);
    assert_eq!(om.lag_rows, 0, "waiting rows do not hold the cursor");
    assert!(om
        .listed
        .iter()
        .all(|l| l.state == "waiting_for_mapping" && l.tenant == "beta"));
    map_tenant(&pool, "beta").await;
    assert!(drive(&pool, &mut job, 50).await.is_empty());
    let book = sinks.book("openmeter");
    assert_exact(
        &sinks,
        "openmeter",
        ledger_final(&pool, &["acme", "beta"]).await,
    );
    let sent_beta: Vec<String> = book
        .order
        .iter()
        .filter_map(|k| k.strip_prefix("tollgate/"))
        .filter(|id| id.starts_with("req_b_"))
        .map(str::to_owned)
        .collect();
    assert_eq!(sent_beta, beta, "in ledger order");
    assert_eq!(
        book.unique[&format!("tollgate/{}", beta[0])]["subject"],
        "subj-beta"
    );
    let status = tollgate::export::api::statuses(&pool, &Default::default())
        .await
        .unwrap();
    assert_eq!(status[0].waiting_for_mapping, 0);
    assert_eq!(status[0].sent, 100);
}

#[sqlx::test]
async fn unpriced_and_queued_rows_wait_until_settled(pool: PgPool) {
    let sinks = BillingSinks::start(SIGNING_SECRET).await;
    register(&pool, "webhook").await;
    insert_rows(&pool, "acme", "p", 10).await;
    let unpriced = insert_rows_with(
        &pool,
        "acme",
        "u",
        5,
        "gpt-5.5",
        false,
        chrono::Duration::minutes(1),
    )
    .await;
    sqlx::query(
        "INSERT INTO usage_ledger (request_id, tenant_id, api_key_id, endpoint, stream, status,
             usage_source, unpriced_reason, started_at, finished_at)
         VALUES ('req_bg', 'acme', 'k', 'responses.create', false, 'queued', 'missing',
             'background_pending', now(), now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut job = sinks.job("webhook", |_| {});
    assert!(drive(&pool, &mut job, 10).await.is_empty());
    assert_eq!(sinks.book("webhook").unique.len(), 10);
    let status = tollgate::export::api::statuses(&pool, &Default::default())
        .await
        .unwrap();
    assert_eq!(status[0].unpriced, 6);
    let reasons: BTreeSet<_> = status[0]
        .listed
        .iter()
        .filter_map(|l| l.reason.clone())
        .collect();
    assert_eq!(
        reasons,
        BTreeSet::from(["background_pending".to_owned(), "no_price".to_owned()])
    );
    // A reprice and a background settlement: the ledger update queues them.
    sqlx::query("UPDATE usage_ledger SET cost = 0.0000000000000001, unpriced_reason = NULL WHERE request_id = ANY($1)")
        .bind(&unpriced)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE usage_ledger SET status = 'completed', cost = 1.5, unpriced_reason = NULL WHERE request_id = 'req_bg'")
        .execute(&pool)
        .await
        .unwrap();
    assert!(drive(&pool, &mut job, 10).await.is_empty());
    assert_exact(&sinks, "webhook", ledger_final(&pool, &["acme"]).await);
    assert_eq!(sinks.book("webhook").duplicates, 0);
    // A cost changed outside Tollgate after export is listed, not resent.
    sqlx::query("UPDATE usage_ledger SET cost = 2 WHERE request_id = 'req_bg'")
        .execute(&pool)
        .await
        .unwrap();
    assert!(drive(&pool, &mut job, 10).await.is_empty());
    assert_eq!(sinks.book("webhook").received, 16);
    let status = tollgate::export::api::statuses(&pool, &Default::default())
        .await
        .unwrap();
    assert_eq!(status[0].changed_after_export, 1);
}

#[sqlx::test]
async fn lago_gets_batches_of_at_most_100_and_a_refused_event_is_quarantined(pool: PgPool) {
    let sinks = BillingSinks::start(SIGNING_SECRET).await;
    register(&pool, "lago").await;
    map_tenant(&pool, "acme").await;
    let bad = insert_rows_around_a_refused_one(&pool, "acme", 150, 99).await;
    let mut job = sinks.job("lago", |_| {});
    assert!(drive(&pool, &mut job, 20).await.is_empty());
    let book = sinks.book("lago");
    assert!(book.largest_batch <= 100);
    assert_exact(&sinks, "lago", ledger_final(&pool, &["acme"]).await);
    assert!(!book.per_request().contains_key(&bad));
    let status = tollgate::export::api::statuses(&pool, &Default::default())
        .await
        .unwrap();
    assert_eq!(status[0].refused, 1);
    assert_eq!(status[0].listed[0].request_id, bad);
    assert!(status[0].listed[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("422"));
    let e = book.unique.values().next().unwrap();
    assert_eq!(e["code"], "llm_usage");
    assert_eq!(e["external_subscription_id"], "sub-acme");
    fault_line(
        "validation refusal (422)",
        "lago",
        &book,
        249,
        ledger_final(&pool, &["acme"]).await.1,
    );
    // A replay: Lago answers value_already_exist; each is an acknowledgement.
    let from = chrono::Utc::now() - chrono::Duration::hours(1);
    tollgate::export::outbox::replay(&pool, "lago", from)
        .await
        .unwrap();
    assert!(drive(&pool, &mut job, 200).await.is_empty());
    let book = sinks.book("lago");
    assert!(book.duplicates >= 249, "{}", book.duplicates);
    assert_exact(&sinks, "lago", ledger_final(&pool, &["acme"]).await);
    fault_line(
        "replay --from",
        "lago",
        &book,
        249,
        ledger_final(&pool, &["acme"]).await.1,
    );
}

#[sqlx::test]
async fn stripe_gets_form_events_inside_its_window_and_waits_out_429(pool: PgPool) {
    let sinks = BillingSinks::start(SIGNING_SECRET).await;
    register(&pool, "stripe").await;
    map_tenant(&pool, "acme").await;
    let old = insert_rows_with(
        &pool,
        "acme",
        "old",
        3,
        "gpt-5.5",
        true,
        chrono::Duration::days(40),
    )
    .await;
    insert_rows(&pool, "acme", "a", 60).await;
    sinks.set_faults(
        "stripe",
        Faults {
            rate_limit_next: 2,
            ..Faults::default()
        },
    );
    let mut job = sinks.job("stripe", |c| c.concurrency = 4);
    assert!(drive(&pool, &mut job, 20).await.is_empty());
    let book = sinks.book("stripe");
    assert_eq!(book.unique.len(), 60);
    assert_eq!(book.after_dedupe(), 0);
    let tokens: i64 = sqlx::query_scalar(
        "SELECT sum(total_tokens)::int8 FROM usage_ledger WHERE request_id LIKE 'req_a_%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(book.value_sum(), tokens);
    let e = book.unique.values().next().unwrap();
    assert_eq!(e["event_name"], "llm_tokens");
    assert_eq!(e["payload[stripe_customer_id]"], "cus_acme");
    let status = tollgate::export::api::statuses(&pool, &Default::default())
        .await
        .unwrap();
    assert_eq!(status[0].outside_window, 3);
    assert!(status[0].listed.iter().all(|l| old.contains(&l.request_id)));
}

#[sqlx::test]
async fn the_admin_api_sets_billing_ids_and_controls_each_sink(pool: PgPool) {
    let sinks = BillingSinks::start(SIGNING_SECRET).await;
    let om = sinks.config("openmeter");
    let hook = sinks.config("webhook");
    let gw = common::TestGateway::start_with(pool.clone(), |c| {
        c.alerts.signing_secret = tollgate::config::Secret::new(SIGNING_SECRET);
        c.exports.openmeter = Some(om);
        c.exports.webhook = Some(hook);
    })
    .await;
    let (status, body) = gw.admin(Method::GET, "/admin/tenants/acme", None).await;
    assert_eq!(status, 404, "{body}");
    // A NUL in the path is refused before the database sees it, both ways.
    for method in [Method::GET, Method::PUT] {
        let body = (method == Method::PUT).then(|| json!({"billing": {"openmeter_subject": "x"}}));
        let (status, body) = gw.admin(method, "/admin/tenants/ac%00me", body).await;
        assert_eq!(
            (status, body["error"]["param"].as_str()),
            (422, Some("tenant")),
            "{body}"
        );
    }
    let (status, body) = gw
        .admin(
            Method::PUT,
            "/admin/tenants/acme",
            Some(json!({"billing": {"openmeter_subject": "cust-acme"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["billing"]["openmeter_subject"], "cust-acme");
    assert_eq!(body["billing"]["stripe_customer_id"], Value::Null);
    let (status, _) = gw
        .admin(
            Method::PUT,
            "/admin/tenants/acme",
            Some(json!({"billing": {"stripe_id": "x"}})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, body) = gw
        .admin(
            Method::PUT,
            "/admin/tenants/acme",
            Some(json!({"billing": {"lago_external_subscription_id": ""}})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (422, Some("billing.lago_external_subscription_id"))
    );
    // Real requests through the gateway reach both sinks.
    gw.set_price("gpt-5.5", common::gpt55_price()).await;
    let key = gw.key("acme").await;
    for _ in 0..5 {
        let r = gw
            .create(&key, json!({"model": "gpt-5.5", "input": "hi"}))
            .await;
        assert_eq!(r.status(), 200);
    }
    sinks
        .until_unique("openmeter", 5, std::time::Duration::from_secs(20))
        .await;
    sinks
        .until_unique("webhook", 5, std::time::Duration::from_secs(20))
        .await;
    let (status, body) = gw.admin(Method::GET, "/admin/exports", None).await;
    assert_eq!(status, 200, "{body}");
    let text = body.to_string();
    assert!(
        !text.contains(API_KEY) && !text.contains(&sinks.base),
        "no credential or URL in status"
    );
    let om = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sink"] == "openmeter")
        .unwrap();
    assert_eq!(om["configured"], true);
    assert_eq!(om["sent"], 5);
    // Pause: rows queue; resume: they go out.
    let (status, body) = gw
        .admin(Method::POST, "/admin/exports/openmeter/pause", None)
        .await;
    assert_eq!((status, body["paused"].as_bool()), (200, Some(true)));
    let r = gw
        .create(&key, json!({"model": "gpt-5.5", "input": "again"}))
        .await;
    assert_eq!(r.status(), 200);
    sinks
        .until_unique("webhook", 6, std::time::Duration::from_secs(20))
        .await;
    assert_eq!(sinks.book("openmeter").unique.len(), 5);
    let (status, _) = gw
        .admin(Method::POST, "/admin/exports/openmeter/resume", None)
        .await;
    assert_eq!(status, 200);
    sinks
        .until_unique("openmeter", 6, std::time::Duration::from_secs(20))
        .await;
    // Replay: sent again, deduplicated by the sink.
    let (status, body) = gw
        .admin(
            Method::POST,
            "/admin/exports/webhook/replay",
            Some(json!({"from": 0})),
        )
        .await;
    assert_eq!((status, body["queued"].as_u64()), (200, Some(6)), "{body}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while sinks.book("webhook").duplicates < 6 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(sinks.book("webhook").after_dedupe(), 0);
    let (status, _) = gw
        .admin(Method::POST, "/admin/exports/nosuch/pause", None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = gw
        .admin(
            Method::POST,
            "/admin/exports/webhook/replay",
            Some(json!({"from": "yesterday"})),
        )
        .await;
    assert_eq!(status, 422);
    let metrics = gw
        .http
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("tollgate_export_events_total"), "metrics");
    gw.shutdown().await;
}

fn tollgate(pool_db: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:5432/{pool_db}"),
        )
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[sqlx::test]
async fn the_command_line_shows_pauses_resumes_and_replays_a_sink(pool: PgPool) {
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let sinks = BillingSinks::start(SIGNING_SECRET).await;
    register(&pool, "webhook").await;
    insert_rows(&pool, "acme", "a", 7).await;
    let mut job = sinks.job("webhook", |_| {});
    assert!(drive(&pool, &mut job, 5).await.is_empty());
    let (ok, out, err) = tollgate(&db, &["exports", "status"]);
    assert!(ok, "{err}");
    assert!(out.contains("webhook") && out.contains("sent 7"), "{out}");
    let (ok, out, _) = tollgate(&db, &["exports", "pause", "webhook"]);
    assert!(ok && out.contains("paused"), "{out}");
    insert_rows(&pool, "acme", "b", 3).await;
    let ctx = ctx(&pool);
    assert_eq!(
        tollgate::jobs::run_once(&ctx, &mut job).await.unwrap(),
        tollgate::jobs::Round::Paused
    );
    let (ok, out, _) = tollgate(&db, &["exports", "status", "--json"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["data"][0]["paused"], true);
    assert_eq!(v["data"][0]["lag_rows"], 3);
    assert!(tollgate(&db, &["exports", "resume", "webhook"]).0);
    assert!(drive(&pool, &mut job, 5).await.is_empty());
    assert_eq!(sinks.book("webhook").unique.len(), 10);
    let (ok, out, err) = tollgate(&db, &["exports", "replay", "webhook", "--from", "0"]);
    assert!(ok && out.contains("10 ledger rows"), "{out}{err}");
    assert!(drive(&pool, &mut job, 5).await.is_empty());
    let book = sinks.book("webhook");
    assert_eq!((book.duplicates, book.after_dedupe()), (10, 0));
    let (ok, _, err) = tollgate(&db, &["exports", "pause", "nosuch"]);
    assert!(!ok && err.contains("no sink"), "{err}");
}
