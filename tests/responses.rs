//! `POST /v1/responses` end to end: forwarding, usage capture, exact cost,
//! and one ledger row per authenticated request whatever happens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{gpt55_price, sse_events, TestGateway, UPSTREAM_KEY};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::PgPool;

fn dec(s: &str) -> Option<Decimal> {
    Some(s.parse().unwrap())
}

#[sqlx::test]
async fn json_response_is_forwarded_and_billed_exactly(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;

    let response = gw
        .create(
            &key,
            json!({"model": "turing/gpt-5.5", "input": "Hello", "safety_identifier": "user-7",
                   "metadata": {"mock_usage": "1200,200,900,600"}}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert!(headers["x-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_"));
    assert!(headers.contains_key("openai-processing-ms"));
    assert!(headers.contains_key("x-ratelimit-remaining-requests"));
    let request_id = headers["x-tollgate-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "response");
    assert_eq!(body["usage"]["input_tokens"], 1200);

    let rows = gw.rows(1).await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.request_id, request_id);
    assert_eq!(row.response_id.as_deref(), body["id"].as_str());
    assert_eq!(row.tenant, "acme");
    assert_eq!(row.endpoint, "responses.create");
    assert_eq!(row.model.as_deref(), Some("gpt-5.5"));
    assert_eq!(row.upstream.as_deref(), Some("mock"));
    assert_eq!(row.upstream_model.as_deref(), Some("gpt-5.5-2025-08-07"));
    assert_eq!(row.status, "completed");
    assert_eq!(row.usage_source, "reported");
    assert_eq!(
        (
            row.input_tokens,
            row.cached_tokens,
            row.output_tokens,
            row.reasoning_tokens,
            row.total_tokens
        ),
        (1200, 200, 900, 600, 2100)
    );
    assert_eq!(row.service_tier.as_deref(), Some("default"));
    assert_eq!(row.end_user.as_deref(), Some("user-7"));
    // (1200-200)*0.000005 + 200*0.0000005 + (900-600)*0.00003 + 600*0.00003
    // = 0.005 + 0.0001 + 0.009 + 0.018 (no reasoning price: falls back to output)
    assert_eq!(row.cost, dec("0.0321"));
    assert!(row.price_id.is_some());
    assert_eq!(row.http_status, Some(200));
    assert_eq!(row.attempts, 1);
    assert!(!row.stream);
}

#[sqlx::test]
async fn upstream_gets_the_rewritten_body_and_its_own_credential(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let body = r#"{"model":"turing/gpt-5.5","input":"caf\u00e9 ☕","temperature":0.70000000000000000001,"tags":["stateful"],"turing_options":{"timeout":30},"x_future_field":{"n":1e400}}"#;
    let response = gw
        .http
        .post(gw.url("/api/v1/responses"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    // The mock rejects the unknown 1e400 only if it parsed it as a float; it
    // answers 200 here because serde_json reads it as a number it ignores.
    let _ = response.bytes().await.unwrap();
    let received = gw.mock.requests().pop().unwrap();
    assert_eq!(
        std::str::from_utf8(&received.body).unwrap(),
        r#"{"model":"gpt-5.5","input":"caf\u00e9 ☕","temperature":0.70000000000000000001,"x_future_field":{"n":1e400}}"#
    );
    assert_eq!(
        received.header("authorization"),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );
    assert!(
        !received.headers.iter().any(|(_, v)| v.contains(&key)),
        "the client's key must never reach the upstream"
    );
}

#[sqlx::test]
async fn stream_is_forwarded_and_terminal_usage_is_billed(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let response = gw
        .create(
            &key,
            json!({"model": "gpt-5.5", "input": "Hi", "stream": true,
                   "metadata": {"mock_usage": "100,0,50,10", "mock_chunk_bytes": "7"}}),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = response.text().await.unwrap();
    let events = sse_events(&text);
    assert_eq!(events.first().unwrap().0, "response.created");
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "response.completed");
    for (i, (_, data)) in events.iter().enumerate() {
        assert_eq!(
            data["sequence_number"], i,
            "sequence numbers pass through untouched"
        );
    }

    let rows = gw.rows(1).await;
    let row = &rows[0];
    assert!(row.stream);
    assert_eq!(row.status, "completed");
    assert_eq!(row.response_id.as_deref(), data["response"]["id"].as_str());
    assert_eq!(
        (row.input_tokens, row.output_tokens, row.reasoning_tokens),
        (100, 50, 10)
    );
    // 100*0.000005 + 40*0.00003 + 10*0.00003 = 0.0005 + 0.0012 + 0.0003
    assert_eq!(row.cost, dec("0.002"));
    assert!(row.first_byte_at.is_some());
}

#[sqlx::test]
async fn incomplete_and_failed_responses_with_usage_are_billed(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    for (status, stream) in [
        ("incomplete", true),
        ("failed", true),
        ("incomplete", false),
    ] {
        let response = gw
            .create(
                &key,
                json!({"model": "gpt-5.5", "input": "x", "stream": stream,
                       "metadata": {"mock_usage": "10,0,20,0", "mock_status": status}}),
            )
            .await;
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    let rows = gw.rows(3).await;
    let statuses: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["incomplete", "failed", "incomplete"]);
    for row in &rows {
        // 10*0.000005 + 20*0.00003
        assert_eq!(row.cost, dec("0.00065"), "{row:?}");
        assert_eq!(row.usage_source, "reported");
    }
    assert_eq!(rows[1].error_code.as_deref(), Some("server_error"));
}

#[sqlx::test]
async fn upstream_http_errors_pass_through_and_are_recorded(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let response = gw
        .create(
            &key,
            json!({"model": "gpt-5.5", "input": "x", "stream": true,
                   "metadata": {"mock_http_status": "429", "mock_retry_after": "1"}}),
        )
        .await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    let rows = gw.rows(1).await;
    assert_eq!(rows[0].status, "upstream_error");
    assert_eq!(rows[0].http_status, Some(429));
    assert_eq!(rows[0].error_code.as_deref(), Some("rate_limit_exceeded"));
    assert_eq!(rows[0].cost, Some(Decimal::ZERO));
    assert_eq!(rows[0].usage_source, "missing");
}

#[sqlx::test]
async fn retries_are_used_only_when_asked_and_leave_one_row(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let response = gw
        .create(
            &key,
            json!({"model": "gpt-5.5", "input": "x", "turing_options": {"max_retries": 2},
                   "metadata": {"mock_fail_times": "1", "mock_fail_key": "retry-once",
                                "mock_http_status": "503", "mock_usage": "10,0,10,0"}}),
        )
        .await;
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    let rows = gw.rows(1).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].attempts, 2);
    assert_eq!(rows[0].status, "completed");
    assert_eq!(gw.mock.request_count(), 2);
}

#[sqlx::test]
async fn refusals_answer_openai_errors_and_are_recorded(pool: PgPool) {
    let gw = TestGateway::start_with(pool, |c| c.body_limit_bytes = 64 * 1024).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;

    let send_raw = |body: String| {
        gw.http
            .post(gw.url("/v1/responses"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: Vec<(String, u16, &str, Option<&str>)> = vec![
        ("{not json".into(), 400, "invalid_json", None),
        (r#"{"input":"x"}"#.into(), 400, "missing_required_parameter", Some("model")),
        (
            r#"{"model":"gpt-5.5","tool_choice":{"type":"web_search_preview"},"tools":[{"type":"function","name":"f"},{"type":"web_search_preview"}]}"#.into(),
            400,
            "unsupported_tool",
            Some("tools[1].type"),
        ),
        (
            r#"{"model":"gpt-5.5","turing_options":{"timeout":999}}"#.into(),
            400,
            "invalid_value",
            Some("turing_options.timeout"),
        ),
        (r#"{"model":"turing/no-such-model","input":"x"}"#.into(), 404, "model_not_found", Some("model")),
        (format!(r#"{{"model":"gpt-5.5","input":"{}"}}"#, "a".repeat(70 * 1024)), 413, "request_too_large", None),
    ];
    for (body, status, code, param) in &cases {
        let response = send_raw(body.clone()).await.unwrap();
        assert_eq!(response.status().as_u16(), *status, "{code}");
        assert_eq!(response.headers()["x-should-retry"], "false");
        assert!(response.headers().contains_key("x-tollgate-request-id"));
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], *code);
        assert_eq!(error["error"]["param"].as_str(), *param);
        assert!(error["error"]["message"].as_str().unwrap().len() > 10);
    }
    assert_eq!(
        gw.mock.request_count(),
        0,
        "nothing refused reaches the upstream"
    );
    let rows = gw.rows(cases.len()).await;
    assert_eq!(rows.len(), cases.len());
    for (row, (_, status, code, _)) in rows.iter().zip(&cases) {
        assert_eq!(row.status, "rejected");
        assert_eq!(row.http_status, Some(i32::from(*status)));
        assert_eq!(row.error_code.as_deref(), Some(*code));
        assert_eq!(row.cost, Some(Decimal::ZERO));
    }
    assert_eq!(rows[4].model.as_deref(), Some("no-such-model"));
}

#[sqlx::test]
async fn unauthenticated_requests_get_401_and_no_row(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let body = json!({"model": "gpt-5.5", "input": "x"});
    for auth in [
        None,
        Some("Bearer sk-tg-nope"),
        Some(&*format!("Bearer {key}x")),
    ] {
        let mut request = gw.http.post(gw.url("/v1/responses")).json(&body);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "invalid_api_key");
    }
    // A revoked key stops working at once on this replica.
    let id = key.split('-').nth(2).unwrap();
    let (status, _) = gw
        .admin(reqwest::Method::DELETE, &format!("/admin/keys/{id}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(gw.create(&key, body).await.status(), 401);
    assert!(gw.rows(0).await.is_empty());
    assert_eq!(gw.mock.request_count(), 0);
}

#[sqlx::test]
async fn cut_stream_is_recorded_without_inventing_usage(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    // store: false — the upstream keeps nothing, so nothing can be recovered.
    let response = gw
        .create(
            &key,
            json!({"model": "gpt-5.5", "input": "x", "stream": true, "store": false,
                   "metadata": {"mock_cut_after": "4", "mock_delay_ms": "10"}}),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert!(
        response.bytes().await.is_err(),
        "the client sees the cut too"
    );
    let rows = gw.rows(1).await;
    let row = &rows[0];
    assert_eq!(row.status, "interrupted");
    assert_eq!(row.usage_source, "missing");
    assert_eq!((row.input_tokens, row.output_tokens), (0, 0));
    assert_eq!(row.cost, None);
    assert_eq!(row.unpriced_reason.as_deref(), Some("usage_missing"));
    assert!(
        row.response_id.is_some(),
        "the id from response.created is kept"
    );
    assert_eq!(row.error_code.as_deref(), Some("upstream_stream_error"));
}

#[sqlx::test]
async fn cut_stream_usage_is_recovered_from_the_upstream(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let response = gw
        .create(
            &key,
            json!({"model": "gpt-5.5", "input": "x", "stream": true,
                   "metadata": {"mock_cut_after": "4", "mock_delay_ms": "10", "mock_usage": "20,0,30,0"}}),
        )
        .await;
    assert!(response.bytes().await.is_err());
    let rows = gw.rows(1).await;
    let row = &rows[0];
    assert_eq!(row.status, "completed");
    assert_eq!(row.usage_source, "recovered");
    assert_eq!((row.input_tokens, row.output_tokens), (20, 30));
    // 20*0.000005 + 30*0.00003
    assert_eq!(row.cost, dec("0.001"));
    assert_eq!(
        row.error_code.as_deref(),
        Some("upstream_stream_error"),
        "the cut stays flagged"
    );
    let retrieved = gw
        .mock
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains(row.response_id.as_deref().unwrap()))
        .count();
    assert_eq!(retrieved, 1);
}

#[sqlx::test]
async fn client_leaving_mid_stream_still_gets_the_real_usage_recorded(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let mut response = gw
        .create(
            &key,
            json!({"model": "gpt-5.5", "input": "x", "stream": true,
                   "metadata": {"mock_usage": "30,0,40,0", "mock_delay_ms": "30", "mock_deltas": "10"}}),
        )
        .await;
    let first = response.chunk().await.unwrap().unwrap();
    assert!(std::str::from_utf8(&first)
        .unwrap()
        .contains("response.created"));
    drop(response);

    let rows = gw.rows(1).await;
    let row = &rows[0];
    assert_eq!(row.status, "completed");
    assert!(row.client_disconnected);
    assert_eq!((row.input_tokens, row.output_tokens), (30, 40));
    // 30*0.000005 + 40*0.00003
    assert_eq!(row.cost, dec("0.00135"));
}

#[sqlx::test]
async fn unpriced_tier_is_left_unpriced_not_billed_at_another_rate(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let response = gw
        .create(
            &key,
            json!({"model": "gpt-5.5", "input": "x", "service_tier": "flex",
                   "metadata": {"mock_usage": "10,0,10,0"}}),
        )
        .await;
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    let rows = gw.rows(1).await;
    assert_eq!(rows[0].service_tier.as_deref(), Some("flex"));
    assert_eq!(rows[0].cost, None);
    assert_eq!(
        rows[0].unpriced_reason.as_deref(),
        Some("no_price_for_tier:flex")
    );
}

#[sqlx::test]
async fn shutdown_flushes_every_row(pool: PgPool) {
    let gw = TestGateway::start(pool.clone()).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let mut handles = Vec::new();
    for _ in 0..20 {
        let request = gw
            .http
            .post(gw.url("/v1/responses"))
            .bearer_auth(&key)
            .json(&json!({"model": "gpt-5.5", "input": "x", "stream": true,
                    "metadata": {"mock_usage": "1,0,1,0", "mock_delay_ms": "5"}}));
        handles.push(tokio::spawn(
            async move { request.send().await?.bytes().await },
        ));
    }
    for handle in handles {
        handle.await.unwrap().unwrap();
    }
    gw.shutdown().await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_ledger")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 20);
}
