//! Billing export under faults, against the sink stand-ins: 5xx, timeouts
//! after the sink stored the events, a batch refused for one bad event, a
//! sink down for 10,000 rows, and a real `tollgate serve` killed with
//! SIGKILL between the sink's answer and the cursor's advance. After each:
//! every final row once after the sink's dedupe, and the exported cost
//! equal to the ledger's to the last digit. Each prints its line of the
//! fault table (`FAULT | ...`, run with `--nocapture`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/billing_sinks.rs"]
mod billing_sinks;
mod common;
#[path = "common/webhook.rs"]
mod webhook;

use std::time::Duration;

use billing_sinks::*;
use serde_json::json;
use sqlx::PgPool;

async fn check(pool: &PgPool, sinks: &BillingSinks, sink: &str, fault: &str) -> Book {
    let ledger = ledger_final(pool, &["acme"]).await;
    let book = sinks.book(sink);
    fault_line(fault, sink, &book, ledger.0, ledger.1);
    assert_eq!(book.unique.len() as i64, ledger.0, "{sink}: every row");
    assert_eq!(book.after_dedupe(), 0, "{sink}: a request held twice");
    if sink == "stripe" {
        assert_eq!(book.value_sum(), ledger.2, "stripe: tokens");
    } else {
        assert_eq!(
            book.cost_sum(sink),
            ledger.1,
            "{sink}: cost to the last digit"
        );
    }
    book
}

#[sqlx::test]
async fn server_errors_are_retried_until_each_row_is_taken_once(pool: PgPool) {
    let sinks = BillingSinks::start(SIGNING_SECRET).await;
    map_tenant(&pool, "acme").await;
    for sink in ["openmeter", "lago", "stripe", "webhook"] {
        register(&pool, sink).await;
    }
    insert_rows(&pool, "acme", "a", 500).await;
    for sink in ["openmeter", "lago", "stripe", "webhook"] {
        sinks.set_faults(
            sink,
            Faults {
                fail_next: 3,
                ..Faults::default()
            },
        );
    }
    for sink in ["openmeter", "lago", "stripe", "webhook"] {
        let mut job = sinks.job(sink, |c| c.batch_size = 200);
        let errors = drive(&pool, &mut job, 100).await;
        assert!(
            !errors.is_empty() && errors.iter().all(|e| e.contains("HTTP 500")),
            "{errors:?}"
        );
        check(&pool, &sinks, sink, "5xx x3").await;
    }
}

#[sqlx::test]
async fn a_timeout_after_the_sink_stored_the_batch_is_deduplicated(pool: PgPool) {
    let sinks = BillingSinks::start(SIGNING_SECRET).await;
    map_tenant(&pool, "acme").await;
    for sink in ["openmeter", "lago", "stripe", "webhook"] {
        register(&pool, sink).await;
    }
    insert_rows(&pool, "acme", "a", 300).await;
    for sink in ["openmeter", "lago", "stripe", "webhook"] {
        sinks.set_faults(
            sink,
            Faults {
                delay_after_store: Some(Duration::from_millis(2_500)),
                delay_count: 2,
                ..Faults::default()
            },
        );
        let mut job = sinks.job(sink, |c| {
            c.batch_size = 100;
            c.request_timeout_secs = 1;
        });
        let errors = drive(&pool, &mut job, 100).await;
        assert!(errors.iter().any(|e| e.contains("timed out")), "{errors:?}");
        let book = check(&pool, &sinks, sink, "timeout after store x2").await;
        assert!(book.duplicates > 0, "{sink}: the resend reached the sink");
    }
}

#[sqlx::test]
async fn an_openmeter_batch_refused_for_one_event_quarantines_only_that_event(pool: PgPool) {
    let sinks = BillingSinks::start(SIGNING_SECRET).await;
    map_tenant(&pool, "acme").await;
    register(&pool, "openmeter").await;
    let bad = insert_rows_around_a_refused_one(&pool, "acme", 40, 40).await;
    let mut job = sinks.job("openmeter", |_| {});
    assert!(drive(&pool, &mut job, 10).await.is_empty());
    let book = check(&pool, &sinks, "openmeter", "400 for one event of 81").await;
    assert!(!book.per_request().contains_key(&bad));
    let status = tollgate::export::api::statuses(&pool, &Default::default())
        .await
        .unwrap();
    assert_eq!((status[0].refused, status[0].sent), (1, 80));
    assert!(status[0].listed[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("model is not billable"));
}

#[sqlx::test]
async fn a_sink_down_for_10000_rows_catches_up_in_order(pool: PgPool) {
    let sinks = BillingSinks::start(SIGNING_SECRET).await;
    map_tenant(&pool, "acme").await;
    for sink in ["openmeter", "lago", "stripe", "webhook"] {
        register(&pool, sink).await;
        sinks.set_faults(
            sink,
            Faults {
                down: true,
                ..Faults::default()
            },
        );
    }
    for chunk in 0..10 {
        insert_rows(&pool, "acme", &format!("d{chunk}"), 1_000).await;
    }
    for sink in ["openmeter", "lago", "stripe", "webhook"] {
        let mut job = sinks.job(sink, |c| c.concurrency = 16);
        let errors = drive(&pool, &mut job, 3).await;
        assert_eq!(errors.len(), 3, "{sink}: down");
        let status = tollgate::export::api::statuses(&pool, &Default::default())
            .await
            .unwrap();
        let s = status.iter().find(|s| s.sink == sink).unwrap();
        assert_eq!(s.lag_rows, 10_000);
        assert!(s.last_error.as_deref().unwrap().contains("503"));
        sinks.set_faults(sink, Faults::default());
        let started = std::time::Instant::now();
        assert!(drive(&pool, &mut job, 1_000).await.is_empty());
        eprintln!("CATCHUP | {sink} | 10000 rows in {:?}", started.elapsed());
        let book = check(&pool, &sinks, sink, "down for 10,000 rows").await;
        if sink != "stripe" {
            // In ledger order (Stripe sends concurrently, one event each).
            let ids: Vec<i64> = book
                .order
                .iter()
                .map(|k| book.unique[k].to_string())
                .map(|e| serde_json::from_str::<serde_json::Value>(&e).unwrap())
                .map(|e| {
                    e["data"]["ledger_id"]
                        .as_i64()
                        .or_else(|| e["properties"]["ledger_id"].as_i64())
                        .unwrap_or(0)
                })
                .collect();
            if sink != "lago" {
                assert!(ids.windows(2).all(|w| w[0] < w[1]), "{sink}: out of order");
            }
        }
        let status = tollgate::export::api::statuses(&pool, &Default::default())
            .await
            .unwrap();
        assert_eq!(status.iter().find(|s| s.sink == sink).unwrap().lag_rows, 0);
    }
}

/// A real `tollgate serve`, SIGKILLed while the sink holds its answer to a
/// batch it already stored, then started again.
#[sqlx::test]
async fn a_gateway_killed_between_send_and_acknowledgement_resends_and_the_sink_dedupes(
    pool: PgPool,
) {
    let sinks = BillingSinks::start(SIGNING_SECRET).await;
    map_tenant(&pool, "acme").await;
    let config = format!(
        "[alerts]\nsigning_secret = \"{SIGNING_SECRET}\"\n\
         [exports.openmeter]\nurl = \"{}\"\napi_key = \"env:OM_TEST_KEY\"\nidle_ms = 100\n\
         [exports.webhook]\nurl = \"{}\"\nidle_ms = 100\n",
        sinks.base,
        sinks.webhook_url()
    );
    let env = [("OM_TEST_KEY", API_KEY)];
    for sink in ["openmeter", "webhook"] {
        sinks.set_faults(
            sink,
            Faults {
                delay_after_store: Some(Duration::from_secs(20)),
                delay_count: 1,
                ..Faults::default()
            },
        );
    }
    let gateway = common::GatewayProcess::start_with_env(&pool, &config, &env).await;
    for i in 0..20 {
        let r = gateway
            .http
            .post(format!("{}/v1/responses", gateway.base))
            .bearer_auth(&gateway.key)
            .json(&json!({"model": "gpt-5.5", "input": format!("hello {i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Every row stored first (a SIGKILL loses rows the writer still holds;
    // that is the ledger's matter, not the export's).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_ledger")
            .fetch_one(&pool)
            .await
            .unwrap();
        if rows == 20 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{rows} rows stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while sinks.book("openmeter").received == 0 || sinks.book("webhook").received == 0 {
        assert!(tokio::time::Instant::now() < deadline, "nothing sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored_before_kill = sinks.book("openmeter").received;
    gateway.signal("KILL");
    gateway.wait().await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_ledger")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 20);
    let gateway = common::GatewayProcess::start_with_env(&pool, &config, &env).await;
    for sink in ["openmeter", "webhook"] {
        sinks.until_unique(sink, 20, Duration::from_secs(30)).await;
        // Acknowledged and recorded by the restarted gateway (the sink may
        // have held all 20 before the kill).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let status = tollgate::export::api::statuses(&pool, &Default::default())
                .await
                .unwrap();
            let s = status.iter().find(|s| s.sink == sink).unwrap();
            if s.sent == 20 && s.lag_rows == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{sink}: not acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let book = check(&pool, &sinks, sink, "SIGKILL between send and ack").await;
        assert!(
            book.duplicates > 0,
            "{sink}: the unacknowledged batch was sent again"
        );
    }
    assert!(stored_before_kill > 0);
    drop(gateway);
}
