//! The row boundary and the writer's quarantine: hostile values from an
//! upstream or from code never stop billing. Every request is one row; a
//! value the database would refuse is stored changed and flagged, usage
//! that cannot be true is `invalid`; a row the database refuses anyway is
//! isolated by bisecting its batch and quarantined with the reason, while
//! every other row is stored — live, from the spool, and in the
//! reconciler. Real PostgreSQL, real sockets, a hostile upstream of the
//! test's own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};

use axum::routing::{get, post};
use common::{gpt55_price, TestGateway, ADMIN_TOKEN};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::PgPool;
use tollgate::ledger::spool::Spool;
use tollgate::ledger::{spawn_writer, Batching, LedgerRow};

/// An upstream that answers every create (and every retrieve) with the body
/// the test put in `reply`.
async fn hostile_upstream(reply: Arc<Mutex<Value>>) -> String {
    let create = reply.clone();
    let app = axum::Router::new()
        .route(
            "/v1/responses",
            post(move || {
                let reply = create.lock().unwrap().clone();
                async move { axum::Json(reply) }
            }),
        )
        .route(
            "/v1/responses/{id}",
            get(move || {
                let reply = reply.lock().unwrap().clone();
                async move { axum::Json(reply) }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1")
}

fn response(usage: Value, service_tier: &str, model: &str) -> Value {
    json!({"id": "resp_hostile1", "object": "response", "status": "completed",
           "model": model, "service_tier": service_tier, "output": [], "usage": usage})
}

fn usage(input: i64, cached: i64, output: i64, reasoning: i64) -> Value {
    json!({"input_tokens": input, "input_tokens_details": {"cached_tokens": cached},
           "output_tokens": output, "output_tokens_details": {"reasoning_tokens": reasoning},
           "total_tokens": input.saturating_add(output)})
}

async fn gateway_before(pool: PgPool, reply: Arc<Mutex<Value>>) -> TestGateway {
    let url = hostile_upstream(reply).await;
    let gw = TestGateway::start_with(pool, |config| config.upstreams[0].url = url).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    gw
}

/// status, usage_source, cost, service_tier, anomaly.
type SettledRow = (
    String,
    String,
    Option<Decimal>,
    Option<String>,
    Option<String>,
);

/// `tollgate_ledger_rows_quarantined_total` is process-wide and two tests
/// here quarantine rows, so the tests of this file run one at a time: the
/// counter read by one is that test's own.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

async fn quarantined(pool: &PgPool) -> Vec<(String, Option<String>)> {
    sqlx::query_as("SELECT request_id, sqlstate FROM ledger_quarantine ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn hostile_upstream_values_are_stored_flagged_and_never_block(pool: PgPool) {
    let _serial = one_at_a_time().await;
    let reply = Arc::new(Mutex::new(Value::Null));
    let gw = gateway_before(pool.clone(), reply.clone()).await;
    let key = gw.key("acme").await;
    let long_model = "m".repeat(3_000);
    // (what the upstream says, expected usage_source, expected anomaly part)
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            response(usage(-100, 0, 5, 0), "default", "gpt-5.5"),
            "invalid",
            "negative_token_count",
        ),
        (
            response(
                usage(9_000_000_000_000_000_000, 0, 5, 0),
                "default",
                "gpt-5.5",
            ),
            "invalid",
            "token_count_out_of_range",
        ),
        (
            response(usage(10, 20, 5, 0), "default", "gpt-5.5"),
            "invalid",
            "cached_exceeds_input",
        ),
        (
            response(usage(10, 0, 5, 9), "default", "gpt-5.5"),
            "invalid",
            "reasoning_exceeds_output",
        ),
        (
            response(json!({}), "default", "gpt-5.5"),
            "invalid",
            "usage_without_counts",
        ),
        (
            response(usage(10, 0, 5, 0), "pri\u{0}ority", "gpt-5.5"),
            "reported",
            "service_tier: NUL replaced",
        ),
        (
            response(usage(10, 0, 5, 0), "default", &long_model),
            "reported",
            "upstream_model: 3000 characters cut to 256",
        ),
        (
            response(usage(10, 2, 5, 1), "default", "gpt-5.5"),
            "reported",
            "",
        ),
    ];
    let mut request_ids = Vec::new();
    for (body, _, _) in &cases {
        *reply.lock().unwrap() = body.clone();
        let r = gw
            .create(&key, json!({"model": "turing/gpt-5.5", "input": "hi"}))
            .await;
        assert_eq!(r.status(), 200, "the client sees the upstream's answer");
        request_ids.push(
            r.headers()["x-tollgate-request-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    let rows = gw.rows(cases.len()).await;
    assert_eq!(rows.len(), cases.len(), "one row per request, none lost");
    assert!(
        quarantined(&pool).await.is_empty(),
        "the boundary left nothing for the database to refuse"
    );
    for ((_, source, anomaly), id) in cases.iter().zip(&request_ids) {
        let row = rows.iter().find(|r| &r.request_id == id).unwrap();
        assert_eq!(row.usage_source, *source, "{anomaly}");
        if *source == "invalid" {
            assert_eq!(row.cost, None);
            assert_eq!(row.unpriced_reason.as_deref(), Some("usage_invalid"));
            assert_eq!((row.input_tokens, row.output_tokens), (0, 0));
            assert_eq!(row.status, "completed", "the response did complete");
        }
        match *anomaly {
            "" => assert_eq!(row.anomaly, None),
            part => assert!(
                row.anomaly.as_deref().unwrap_or("").contains(part),
                "{:?}",
                row.anomaly
            ),
        }
    }
    // What was reported is kept, to the digit.
    let negative = rows
        .iter()
        .find(|r| r.request_id == request_ids[0])
        .unwrap();
    assert!(negative
        .anomaly
        .as_deref()
        .unwrap()
        .contains("input_tokens=-100"));
    let tier = rows
        .iter()
        .find(|r| r.request_id == request_ids[5])
        .unwrap();
    assert_eq!(tier.service_tier.as_deref(), Some("pri\u{FFFD}ority"));
    let clean = rows
        .iter()
        .find(|r| r.request_id == request_ids[7])
        .unwrap();
    assert!(clean.cost.is_some());
    assert_eq!(
        gw.state
            .ledger
            .stats()
            .spooled
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    gw.shutdown().await;
}

/// Rows built by hand (not through the meter) reach the writer with values
/// the database refuses: NUL text, an index row too large, a negative count,
/// a cost beyond NUMERIC(28,16).
fn poisoned(template: &LedgerRow, n: usize) -> (Vec<LedgerRow>, Vec<String>) {
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    for i in 0..n {
        let mut row = template.clone();
        row.id = None;
        row.request_id = format!("req_batch_{i:04}");
        match i {
            13 => row.end_user = Some("a\u{0}b".into()),
            // Incompressible (a run of one letter would compress under
            // the btree's 2,704-byte row limit).
            29 => {
                row.model = Some(
                    (0..400)
                        .map(|k| {
                            format!(
                                "{:08x}",
                                (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32
                            )
                        })
                        .collect(),
                )
            }
            57 => row.input_tokens = -100,
            71 => row.cost = Some(Decimal::from(9_000_000_000_000_000_000_i64)),
            _ => {}
        }
        if [13, 29, 57, 71].contains(&i) {
            bad.push(row.request_id.clone());
        }
        rows.push(row);
    }
    (rows, bad)
}

async fn template_row(gw: &TestGateway) -> LedgerRow {
    let key = gw.key("acme").await;
    let r = gw
        .create(&key, json!({"model": "turing/gpt-5.5", "input": "hi", "metadata": {"mock_usage": "10,0,5,0"}}))
        .await;
    assert_eq!(r.status(), 200);
    gw.rows(1).await.remove(0)
}

async fn stored_ids(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT request_id FROM usage_ledger WHERE request_id LIKE 'req_batch_%' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn a_refused_row_is_isolated_and_quarantined_and_the_rest_is_stored(pool: PgPool) {
    let _serial = one_at_a_time().await;
    let gw = TestGateway::start(pool.clone()).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let template = template_row(&gw).await;
    let (rows, bad) = poisoned(&template, 100);
    for row in rows {
        gw.state.ledger.record(row);
    }
    gw.state.ledger.flush().await;

    let stored = stored_ids(&pool).await;
    assert_eq!(
        stored.len(),
        96,
        "every row but the four refused ones is stored"
    );
    let quarantine = quarantined(&pool).await;
    let mut ids: Vec<String> = quarantine.iter().map(|(id, _)| id.clone()).collect();
    ids.sort();
    assert_eq!(ids, bad);
    assert!(
        quarantine.iter().all(|(_, state)| state.is_some()),
        "{quarantine:?}"
    );
    let stats = gw.state.ledger.stats();
    assert_eq!(
        stats.quarantined.load(std::sync::atomic::Ordering::Relaxed),
        4
    );
    assert_eq!(
        stats.spooled.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "no spooling: the database is up"
    );

    // The writer goes on: the next request is stored as usual.
    let key = gw.key("acme").await;
    let r = gw
        .create(&key, json!({"model": "turing/gpt-5.5", "input": "again"}))
        .await;
    assert_eq!(r.status(), 200);
    gw.rows(2).await;

    // Visible: the admin endpoint, /readyz and /metrics.
    let (status, listed) = gw
        .admin(reqwest::Method::GET, "/admin/ledger/quarantine", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(listed["total"], 4);
    let nul_row = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["request_id"] == "req_batch_0013")
        .unwrap();
    assert!(
        nul_row["raw_row"].as_str().unwrap().contains("a\\u0000b"),
        "the raw value is kept"
    );
    let ready: Value = gw
        .http
        .get(gw.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ledger"]["quarantined_rows"], 4);
    assert_eq!(ready["status"], "ready");
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
        metrics
            .lines()
            .any(|l| l == "tollgate_ledger_rows_quarantined_total 4"),
        "{metrics}"
    );
    let unauthorized = gw
        .http
        .get(gw.url("/admin/ledger/quarantine"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    let _ = ADMIN_TOKEN;
    gw.shutdown().await;
}

#[sqlx::test]
async fn a_refused_row_in_the_spool_never_blocks_replay(pool: PgPool) {
    let _serial = one_at_a_time().await;
    let gw = TestGateway::start(pool.clone()).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let template = template_row(&gw).await;
    gw.shutdown().await;

    // A spool left behind by an earlier process, with refused rows inside.
    let dir = tempfile::tempdir().unwrap();
    let (rows, bad) = poisoned(&template, 100);
    let mut spool = Spool::open(dir.path()).unwrap();
    spool.append(&rows[..50]).unwrap();
    spool.append(&rows[50..]).unwrap();
    drop(spool);

    let (ledger, writer) = spawn_writer(
        pool.clone(),
        Spool::open(dir.path()).unwrap(),
        Batching::immediate(100),
    );
    let mut replayed = false;
    for _ in 0..100 {
        if stored_ids(&pool).await.len() == 96 && quarantined(&pool).await.len() == 4 {
            replayed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        replayed,
        "stored {} quarantined {}",
        stored_ids(&pool).await.len(),
        quarantined(&pool).await.len()
    );
    let mut ids: Vec<String> = quarantined(&pool)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    assert_eq!(ids, bad);
    ledger.close();
    writer.await.unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
            .count(),
        0,
        "the spool is empty once replayed"
    );
}

#[sqlx::test]
async fn the_reconciler_settles_impossible_usage_as_invalid_and_goes_on(pool: PgPool) {
    let _serial = one_at_a_time().await;
    let reply = Arc::new(Mutex::new(Value::Null));
    let gw = gateway_before(pool.clone(), reply.clone()).await;
    let key = gw.key("acme").await;
    // Two background responses; the upstream then reports impossible usage
    // for every retrieval.
    *reply.lock().unwrap() = json!({"id": "resp_hostile1", "object": "response", "status": "queued",
                                     "model": "gpt-5.5", "output": [], "usage": null});
    for _ in 0..2 {
        let r = gw
            .create(
                &key,
                json!({"model": "turing/gpt-5.5", "input": "hi", "background": true}),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    gw.rows(2).await;
    *reply.lock().unwrap() = response(
        usage(-5, 0, 9_000_000_000_000, 0),
        "pri\u{0}ority",
        "gpt-5.5",
    );
    let settled = tollgate::background::settle_pending(&gw.state)
        .await
        .unwrap();
    assert_eq!(settled, 2, "both settled, none blocked");
    let rows: Vec<SettledRow> = sqlx::query_as(
        "SELECT status, usage_source, cost, service_tier, anomaly FROM usage_ledger ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for (status, source, cost, tier, anomaly) in rows {
        assert_eq!(
            (status.as_str(), source.as_str(), cost),
            ("completed", "invalid", None)
        );
        assert_eq!(tier.as_deref(), Some("pri\u{FFFD}ority"));
        assert!(anomaly.unwrap().contains("negative_token_count"));
    }
    gw.shutdown().await;
}
