//! Hostile and careless requests (issue 11, request path): text values the
//! ledger cannot store, fallback overrides that try to skip the checks,
//! conversations, a DELETE that would escape a background bill, drains that
//! would outlive shutdown or never end, and an upstream error body far larger
//! than memory should hold. Real gateway, real PostgreSQL, real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/hostile.rs"]
mod hostile;

use std::time::Duration;

use serde_json::{json, Value};
use sqlx::PgPool;

use common::{gpt55_price, TestGateway};
use hostile::{Behaviour, Hostile};
use tollgate::ledger::LedgerRow;

const MODEL: &str = "turing/gpt-5.5";

async fn gateway(pool: PgPool) -> TestGateway {
    let gw = TestGateway::start_with(pool, |c| {
        c.mcp_allowed_hosts
            .insert("acme".into(), vec!["mcp.allowed.example".into()]);
    })
    .await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    gw
}

/// Sends a raw body (so escapes stay exactly as written); returns status and JSON.
async fn post_raw(gw: &TestGateway, key: &str, body: String) -> (u16, Value) {
    let response = gw
        .http
        .post(gw.url("/v1/responses"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn error_of(body: &Value) -> (&str, &str, &str) {
    let e = &body["error"];
    (
        e["type"].as_str().unwrap_or(""),
        e["code"].as_str().unwrap_or(""),
        e["param"].as_str().unwrap_or(""),
    )
}

/// Every request in the test has its row, and the writer is not blocked:
/// `n` rows reach the database.
async fn exactly(gw: &TestGateway, n: usize) -> Vec<LedgerRow> {
    let rows = gw.rows(n).await;
    assert_eq!(rows.len(), n, "one row per request");
    rows
}

#[sqlx::test(migrator = "tollgate::state::MIGRATOR")]
async fn text_values_the_ledger_cannot_store_are_refused_at_the_door(pool: PgPool) {
    let gw = gateway(pool).await;
    let key = gw.key("acme").await;
    let long = |n: usize| "u".repeat(n);
    let cases: Vec<(String, &str)> = vec![
        (
            format!(r#"{{"model":"{MODEL}","user":"a\u0000b"}}"#),
            "user",
        ),
        (
            format!(r#"{{"model":"{MODEL}","safety_identifier":"a\u0001"}}"#),
            "safety_identifier",
        ),
        (format!(r#"{{"model":"{MODEL}","user":"\ud800"}}"#), "user"),
        (
            format!(r#"{{"model":"{MODEL}","user":"{}"}}"#, long(1_000_000)),
            "user",
        ),
        (r#"{"model":"turing/x\u0000"}"#.to_owned(), "model"),
        (format!(r#"{{"model":"{}"}}"#, long(3_000)), "model"),
        (
            format!(r#"{{"model":"{MODEL}","previous_response_id":"resp_\u0000"}}"#),
            "previous_response_id",
        ),
        (
            format!(r#"{{"model":"{MODEL}","conversation":{{"id":"conv\u0000"}}}}"#),
            "conversation.id",
        ),
        (
            format!(r#"{{"model":"{MODEL}","turing_options":{{"fallbacks":["turing/y\u0000"]}}}}"#),
            "turing_options.fallbacks[0]",
        ),
        (
            format!(
                r#"{{"model":"{MODEL}","turing_options":{{"fallbacks":{{"model":"{}"}}}}}}"#,
                long(300)
            ),
            "turing_options.fallbacks.model",
        ),
    ];
    for (body, param) in &cases {
        let (status, answer) = post_raw(&gw, &key, body.clone()).await;
        assert_eq!(status, 400, "{param}: {answer}");
        assert_eq!(
            error_of(&answer),
            ("invalid_request_error", "invalid_value", *param),
            "{answer}"
        );
    }
    // A path id the database cannot hold is an unknown id, not a 500.
    let response = gw
        .http
        .get(gw.url("/v1/responses/resp_%00x"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    // The ledger still takes rows: a good request after the bad ones is stored.
    let ok = gw
        .create(&key, json!({"model": MODEL, "input": "hi", "user": "fine"}))
        .await;
    assert_eq!(ok.status(), 200);
    let rows = exactly(&gw, cases.len() + 2).await;
    for row in &rows[..cases.len()] {
        assert_eq!(row.status, "rejected");
        assert_eq!(row.http_status, Some(400));
        // What the refused row records is itself storable and bounded.
        for value in [&row.model, &row.end_user].into_iter().flatten() {
            assert!(
                !value.contains('\0') && value.chars().count() <= 512,
                "{value:.40}"
            );
        }
    }
    assert_eq!(rows.last().unwrap().status, "completed");
    assert_eq!(rows.last().unwrap().end_user.as_deref(), Some("fine"));
    assert_eq!(
        gw.mock.request_count(),
        1,
        "only the good request went upstream"
    );
}

#[sqlx::test(migrator = "tollgate::state::MIGRATOR")]
async fn every_fallback_candidate_passes_the_checks_of_the_request(pool: PgPool) {
    let gw = gateway(pool).await;
    let key = gw.key("acme").await;
    let other = gw.key("globex").await;
    let theirs = gw
        .create(&other, json!({"model": MODEL, "input": "secret"}))
        .await;
    assert_eq!(theirs.status(), 200);
    let their_id = theirs.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The first attempt would fail, so the fallback would be sent.
    let failing = json!({"mock_http_status": "429", "mock_fail_times": "1", "mock_fail_key": "fb"});
    let with = |fallbacks: Value| json!({"model": MODEL, "input": "hi", "metadata": failing, "turing_options": {"fallbacks": fallbacks}});
    let unknown = gw
        .create(
            &key,
            with(json!({"model": MODEL, "previous_response_id": "resp_nope"})),
        )
        .await;
    let foreign = gw
        .create(
            &key,
            with(json!({"model": MODEL, "previous_response_id": their_id})),
        )
        .await;
    assert_eq!(
        (unknown.status().as_u16(), foreign.status().as_u16()),
        (404, 404)
    );
    let (unknown, foreign): (Value, Value) =
        (unknown.json().await.unwrap(), foreign.json().await.unwrap());
    assert_eq!(error_of(&unknown), error_of(&foreign));
    assert_eq!(
        error_of(&foreign),
        (
            "invalid_request_error",
            "previous_response_not_found",
            "turing_options.fallbacks.previous_response_id"
        )
    );
    let cases = [
        (
            // Offered only, it would be dropped (tests/compat.rs); forced, refused.
            json!([MODEL, {"model": MODEL, "tools": [{"type": "function", "name": "f"}, {"type": "web_search"}], "tool_choice": {"type": "web_search"}}]),
            400,
            "unsupported_tool",
            "turing_options.fallbacks[1].tools[1].type",
        ),
        (
            json!([{"model": MODEL, "tools": [{"type": "mcp", "server_label": "x", "server_url": "https://evil.example/sse"}]}, MODEL]),
            400,
            "mcp_server_not_allowed",
            "turing_options.fallbacks[0].tools[0].server_url",
        ),
        (
            json!([{"model": MODEL, "user": "a\u{0}b"}, MODEL]),
            400,
            "invalid_value",
            "turing_options.fallbacks[0].user",
        ),
        (
            json!({"model": MODEL, "conversation": "conv_1"}),
            404,
            "not_found",
            "turing_options.fallbacks.conversation",
        ),
    ];
    for (fallbacks, status, code, param) in cases {
        let response = gw.create(&key, with(fallbacks)).await;
        assert_eq!(response.status().as_u16(), status);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            error_of(&body),
            ("invalid_request_error", code, param),
            "{body}"
        );
    }
    // Stateful + an override to store:false is refused like the request would be.
    let response = gw
        .create(
            &key,
            json!({"model": MODEL, "tags": ["stateful"], "turing_options": {"fallbacks": {"model": MODEL, "store": false}}}),
        )
        .await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        error_of(&body).2,
        "turing_options.fallbacks.store",
        "{body}"
    );
    assert_eq!(
        gw.mock.request_count(),
        1,
        "no refused body reached the upstream"
    );
    // A valid override is used once the first attempt fails.
    let served = gw
        .create(&key, with(json!({"model": MODEL, "user": "fallback-user"})))
        .await;
    assert_eq!(served.status(), 200);
    let rows = exactly(&gw, 9).await;
    assert!(rows[1..8].iter().all(|r| r.status == "rejected"));
    let last = &rows[8];
    assert_eq!(last.status, "completed");
    assert_eq!(last.fallback_from.as_deref(), Some("gpt-5.5"));
    assert_eq!(last.end_user.as_deref(), Some("fallback-user"));
    assert_eq!(gw.mock.request_count(), 3);
}

#[sqlx::test(migrator = "tollgate::state::MIGRATOR")]
async fn a_conversation_not_created_here_answers_like_an_unknown_id(pool: PgPool) {
    let gw = gateway(pool).await;
    let key = gw.key("acme").await;
    for conversation in [json!("conv_123"), json!({"id": "conv_123"})] {
        let response = gw
            .create(
                &key,
                json!({"model": MODEL, "input": "hi", "conversation": conversation}),
            )
            .await;
        assert_eq!(response.status(), 404);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            error_of(&body),
            ("invalid_request_error", "not_found", "conversation")
        );
    }
    exactly(&gw, 2).await;
    assert_eq!(gw.mock.request_count(), 0);
}

#[sqlx::test(migrator = "tollgate::state::MIGRATOR")]
async fn deleting_a_finished_background_response_at_once_still_bills_it(pool: PgPool) {
    let gw = TestGateway::start_with(pool, |c| c.background_poll_secs = 3_600).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    for _ in 0..10 {
        let created: Value = gw
            .create(
                &key,
                json!({"model": MODEL, "input": "hi", "background": true}),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(created["status"], "queued");
        let id = created["id"].as_str().unwrap();
        let url = gw.url(&format!("/v1/responses/{id}"));
        let retrieved: Value = gw
            .http
            .get(&url)
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(retrieved["status"], "completed");
        let deleted = gw.http.delete(&url).bearer_auth(&key).send().await.unwrap();
        assert_eq!(deleted.status(), 200);
    }
    let rows = exactly(&gw, 30).await;
    let creates: Vec<&LedgerRow> = rows
        .iter()
        .filter(|r| r.endpoint == "responses.create")
        .collect();
    assert_eq!(creates.len(), 10);
    for row in creates {
        assert_eq!(row.status, "completed", "{row:?}");
        assert!(
            row.cost.is_some_and(|c| c > rust_decimal::Decimal::ZERO),
            "{row:?}"
        );
    }
}

/// The row of a drain cut by shutdown, read straight from the database.
async fn rows_after_shutdown(pool: &PgPool) -> Vec<LedgerRow> {
    sqlx::query_as(&format!(
        "SELECT {} FROM usage_ledger ORDER BY id",
        tollgate::ledger::COLUMNS
    ))
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Opens a stream, reads its first bytes and leaves.
async fn leave_stream(gw: &TestGateway, key: &str, timeout: u32) {
    let mut response = gw
        .create(
            key,
            json!({"model": MODEL, "input": "hi", "stream": true, "turing_options": {"timeout": timeout}}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("response.created"));
    drop(response);
}

#[sqlx::test(migrator = "tollgate::state::MIGRATOR")]
async fn a_drain_that_outlives_the_shutdown_deadline_still_has_its_row(pool: PgPool) {
    let slow = Hostile::start(Behaviour::SlowStream {
        every: Duration::from_millis(200),
    })
    .await;
    let gw = TestGateway::start_with(pool.clone(), |c| {
        c.drain_deadline_secs = 1;
        c.upstreams[0].url = slow.url();
    })
    .await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    leave_stream(&gw, &key, 300).await;
    gw.shutdown().await;
    let rows = rows_after_shutdown(&pool).await;
    assert_eq!(rows.len(), 1, "the cut drain recorded its row");
    let row = &rows[0];
    assert_eq!(row.status, "interrupted");
    assert_eq!(row.error_code.as_deref(), Some("shutdown_drain_cut"));
    assert_eq!(row.usage_source, "missing");
    assert_eq!(row.response_id.as_deref(), Some("resp_hostile"));
    assert!(row.client_disconnected);
}

#[sqlx::test(migrator = "tollgate::state::MIGRATOR")]
async fn an_upstream_sending_comments_forever_is_bounded_by_the_request_timeout(pool: PgPool) {
    let comments = Hostile::start(Behaviour::CommentsForever {
        every: Duration::from_millis(100),
    })
    .await;
    let gw = TestGateway::start_with(pool, |c| c.upstreams[0].url = comments.url()).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    // The client leaves: the drain ends at the request's timeout.
    leave_stream(&gw, &key, 1).await;
    let rows = exactly(&gw, 1).await;
    assert_eq!(rows[0].status, "interrupted");
    assert_eq!(rows[0].error_code.as_deref(), Some("drain_timeout"));
    // The client stays: comments do not keep the stream alive past it.
    let response = gw
        .create(
            &key,
            json!({"model": MODEL, "input": "hi", "stream": true, "turing_options": {"timeout": 1}}),
        )
        .await;
    let read = tokio::time::timeout(Duration::from_secs(60), response.bytes()).await;
    assert!(
        read.expect("the stream ended").is_err(),
        "cut, not completed"
    );
    let rows = exactly(&gw, 2).await;
    assert_eq!(rows[1].status, "interrupted");
    assert_eq!(rows[1].error_code.as_deref(), Some("upstream_timeout"));
}

/// This process's resident memory in KiB (gateway, client and upstream
/// together: an upper bound on what the gateway holds).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[sqlx::test(migrator = "tollgate::state::MIGRATOR")]
async fn a_600_mb_upstream_error_body_is_not_read_into_memory(pool: PgPool) {
    const HUGE: u64 = 600 * 1024 * 1024;
    let rss_before = rss_kib();
    let huge = Hostile::start(Behaviour::ErrorBody {
        status: 500,
        bytes: HUGE,
    })
    .await;
    let gw = TestGateway::start_with(pool, |c| c.upstreams[0].url = huge.url()).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let mut response = gw
        .create(&key, json!({"model": MODEL, "input": "hi"}))
        .await;
    assert_eq!(response.status(), 500);
    let first = response.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(br#"{"error":{"type":"server_error""#));
    // The client reads no further: the gateway holds a bounded prefix and
    // backpressure stops the upstream.
    let mut seen = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen = huge.written();
    }
    let rss_growth = rss_kib().saturating_sub(rss_before);
    eprintln!(
        "bytes read by the gateway from a {HUGE}-byte error body: {seen}; process RSS growth: {rss_growth} KiB"
    );
    assert!(seen < 32 * 1024 * 1024, "read {seen} bytes of {HUGE}");
    drop(response);
    let rows = exactly(&gw, 1).await;
    assert_eq!(rows[0].status, "upstream_error");
    assert_eq!(rows[0].http_status, Some(500));
    assert_eq!(rows[0].cost, Some(rust_decimal::Decimal::ZERO));
}

#[sqlx::test(migrator = "tollgate::state::MIGRATOR")]
async fn an_error_body_longer_than_what_is_parsed_is_forwarded_whole(pool: PgPool) {
    const LONG: u64 = 3 * 1024 * 1024 + 17;
    let long = Hostile::start(Behaviour::ErrorBody {
        status: 503,
        bytes: LONG,
    })
    .await;
    let gw = TestGateway::start_with(pool, |c| c.upstreams[0].url = long.url()).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let response = gw
        .create(
            &key,
            json!({"model": MODEL, "input": "hi", "turing_options": {"max_retries": 1}}),
        )
        .await;
    assert_eq!(response.status(), 503);
    let body = response.bytes().await.unwrap();
    assert_eq!(body.len() as u64, LONG);
    assert!(body.ends_with(br#"x"}}"#));
    let rows = exactly(&gw, 1).await;
    assert_eq!(rows[0].status, "upstream_error");
    assert_eq!(rows[0].attempts, 2);
    assert_eq!(long.requests.load(std::sync::atomic::Ordering::SeqCst), 2);
}
