//! Wire-level tests of the mock upstream: a real `serve` on 127.0.0.1:0 driven
//! with reqwest, checking what a gateway (and the OpenAI SDK) would see.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tollgate::mock_upstream::MockUpstream;

async fn start_with(mock: MockUpstream) -> (MockUpstream, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(mock.clone().serve(listener));
    (mock, base)
}

async fn start() -> (MockUpstream, String) {
    start_with(MockUpstream::new()).await
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn post(base: &str, path: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{base}{path}"))
        .bearer_auth("sk-test")
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn get(base: &str, path: &str) -> reqwest::Response {
    client()
        .get(format!("{base}{path}"))
        .bearer_auth("sk-test")
        .send()
        .await
        .unwrap()
}

/// One parsed SSE event: the `event:` name (if any) and the joined data.
#[derive(Debug)]
struct Sse {
    event: Option<String>,
    data: String,
}

impl Sse {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("bad json {e}: {}", self.data))
    }
    fn kind(&self) -> String {
        self.json()["type"].as_str().unwrap().to_owned()
    }
}

/// Minimal SSE parser accepting LF, CRLF and CR line endings.
fn parse_sse(text: &str) -> Vec<Sse> {
    let normalized = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut out = Vec::new();
    for block in normalized.split("\n\n") {
        let mut event = None;
        let mut data: Vec<&str> = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event: ") {
                event = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push(v);
            }
        }
        if !data.is_empty() {
            out.push(Sse {
                event,
                data: data.join("\n"),
            });
        }
    }
    out
}

async fn stream_events(
    base: &str,
    mut body: Value,
) -> (reqwest::header::HeaderMap, String, Vec<Sse>) {
    body["stream"] = json!(true);
    let resp = post(base, "/v1/responses", body).await;
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let events = parse_sse(&text);
    (headers, text, events)
}

fn meta(pairs: &[(&str, &str)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect(),
    )
}

#[tokio::test]
async fn json_create_has_full_shape_usage_and_headers() {
    let (mock, base) = start().await;
    let resp = post(
        &base,
        "/v1/responses",
        json!({"model": "gpt-4.1", "input": "hello", "metadata": {"k": "v"}, "tools": [{"type": "function", "name": "f", "parameters": {}, "strict": true}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["content-type"], "application/json");
    assert!(h["x-request-id"].to_str().unwrap().starts_with("req_"));
    assert_eq!(h["openai-version"], "2020-10-01");
    assert!(h.contains_key("openai-processing-ms"));
    for k in [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
    ] {
        assert!(h.contains_key(k), "{k}");
    }
    let v: Value = resp.json().await.unwrap();
    for k in [
        "id",
        "object",
        "created_at",
        "status",
        "completed_at",
        "background",
        "error",
        "incomplete_details",
        "instructions",
        "max_output_tokens",
        "model",
        "output",
        "parallel_tool_calls",
        "previous_response_id",
        "reasoning",
        "service_tier",
        "store",
        "temperature",
        "text",
        "tool_choice",
        "tools",
        "top_p",
        "truncation",
        "usage",
        "user",
        "metadata",
    ] {
        assert!(v.get(k).is_some(), "missing {k}");
    }
    let id = v["id"].as_str().unwrap();
    assert!(id.starts_with("resp_") && id.len() == 37);
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["model"], "gpt-4.1-2025-08-07");
    assert_eq!(v["service_tier"], "default");
    assert_eq!(v["metadata"], json!({"k": "v"}));
    assert_eq!(v["tools"][0]["name"], "f");
    assert_eq!(
        v["output"].as_array().unwrap().len(),
        1,
        "no reasoning item for gpt-4.1"
    );
    assert_eq!(v["output"][0]["type"], "message");
    assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
    // "hello" → 7 JSON bytes → 10 + 1; 3 deltas → 20 + 15.
    assert_eq!(
        v["usage"],
        json!({"input_tokens": 11, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 35,
               "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 46})
    );
    assert_eq!(mock.request_count(), 1);
}

#[tokio::test]
async fn every_prefix_is_routed() {
    let (_mock, base) = start().await;
    for p in ["", "/v1", "/openai/v1", "/openai"] {
        let v: Value = post(
            &base,
            &format!("{p}/responses?api-version=2025-03-01-preview"),
            json!({"model": "m", "input": "x"}),
        )
        .await
        .json()
        .await
        .unwrap();
        let id = v["id"].as_str().unwrap().to_owned();
        let got: Value = get(&base, &format!("{p}/responses/{id}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(got["id"], id.as_str(), "prefix {p:?}");
    }
    let resp = get(&base, "/v2/responses").await;
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn stream_follows_the_reference_event_order() {
    let (_mock, base) = start().await;
    let (h, text, events) = stream_events(
        &base,
        json!({"model": "gpt-5", "input": "A square's diagonal is 10 cm. Area?",
               "reasoning": {"effort": "medium", "summary": "auto"}}),
    )
    .await;
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert!(!text.contains("[DONE]"));
    assert!(text.ends_with("\n\n"));
    let kinds: Vec<String> = events.iter().map(Sse::kind).collect();
    let expected = [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ];
    assert_eq!(kinds, expected);
    let mut text_acc = String::new();
    for (i, e) in events.iter().enumerate() {
        let v = e.json();
        assert_eq!(
            v["sequence_number"], i,
            "sequence numbers start at 0 and increase by 1"
        );
        assert_eq!(
            e.event.as_deref(),
            v["type"].as_str(),
            "event: line matches type"
        );
        if v["type"] == "response.output_text.delta" {
            assert_eq!(v["logprobs"], json!([]));
            assert!(v["obfuscation"].is_string());
            assert_eq!(v["output_index"], 1);
            text_acc.push_str(v["delta"].as_str().unwrap());
        }
    }
    let created = events[0].json();
    assert_eq!(created["response"]["service_tier"], "auto");
    assert!(created["response"]["usage"].is_null());
    assert_eq!(created["response"]["status"], "in_progress");
    let done = events.last().unwrap().json();
    let r = &done["response"];
    assert_eq!(r["status"], "completed");
    assert_eq!(r["service_tier"], "default");
    assert_eq!(r["output"][0]["type"], "reasoning");
    assert!(r["output"][0]["summary"][0]["text"]
        .as_str()
        .unwrap()
        .contains("Planning"));
    assert_eq!(r["output"][1]["content"][0]["text"], text_acc.as_str());
    // input JSON is 38 bytes → 10 + 9; output 20 + 15 + 64 reasoning.
    assert_eq!(r["usage"]["input_tokens"], 19);
    assert_eq!(r["usage"]["output_tokens"], 99);
    assert_eq!(r["usage"]["output_tokens_details"]["reasoning_tokens"], 64);
    assert_eq!(r["usage"]["total_tokens"], 118);
}

#[tokio::test]
async fn reasoning_model_without_summary_has_empty_reasoning_item() {
    let (_mock, base) = start().await;
    let (_, _, events) = stream_events(&base, json!({"model": "o4-mini", "input": "x"})).await;
    let kinds: Vec<String> = events.iter().map(Sse::kind).collect();
    assert_eq!(
        &kinds[2..5],
        [
            "response.output_item.added",
            "response.output_item.done",
            "response.output_item.added"
        ]
    );
    assert!(!kinds.iter().any(|k| k.contains("reasoning_summary")));
    let r = &events.last().unwrap().json()["response"];
    assert_eq!(r["output"][0]["summary"], json!([]));
    assert_eq!(r["reasoning"], json!({"effort": "medium", "summary": null}));
}

#[tokio::test]
async fn background_stream_and_json() {
    let (_mock, base) = start().await;
    let (_, _, events) = stream_events(
        &base,
        json!({"model": "gpt-4.1", "input": "x", "background": true}),
    )
    .await;
    let kinds: Vec<String> = events.iter().map(Sse::kind).collect();
    assert_eq!(
        &kinds[..3],
        [
            "response.created",
            "response.queued",
            "response.in_progress"
        ]
    );
    assert_eq!(events[0].json()["response"]["status"], "queued");
    let v: Value = post(
        &base,
        "/v1/responses",
        json!({"model": "gpt-4.1", "input": "x", "background": true}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["status"], "queued");
    assert!(v["usage"].is_null());
    let id = v["id"].as_str().unwrap();
    let got: Value = get(&base, &format!("/v1/responses/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["status"], "completed");
    assert_eq!(got["usage"]["total_tokens"], 45);
}

#[tokio::test]
async fn mock_usage_exact_and_none() {
    let (_mock, base) = start().await;
    let v: Value = post(&base, "/v1/responses", json!({"model": "gpt-5", "input": "x", "metadata": meta(&[("mock_usage", "1000,400,300,120")])}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["usage"],
        json!({"input_tokens": 1000, "input_tokens_details": {"cached_tokens": 400}, "output_tokens": 300,
               "output_tokens_details": {"reasoning_tokens": 120}, "total_tokens": 1300})
    );
    let (_, _, events) = stream_events(
        &base,
        json!({"model": "m", "input": "x", "metadata": meta(&[("mock_usage", "none")])}),
    )
    .await;
    assert!(events.last().unwrap().json()["response"]["usage"].is_null());
}

#[tokio::test]
async fn mock_status_incomplete_and_failed() {
    let (_mock, base) = start().await;
    let v: Value = post(
        &base,
        "/v1/responses",
        json!({"model": "m", "input": "x", "metadata": meta(&[("mock_status", "incomplete")])}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["status"], "incomplete");
    assert_eq!(
        v["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    assert!(v["usage"]["total_tokens"].is_u64());
    let (_, _, events) = stream_events(
        &base,
        json!({"model": "m", "input": "x", "metadata": meta(&[("mock_status", "incomplete")])}),
    )
    .await;
    assert_eq!(events.last().unwrap().kind(), "response.incomplete");

    let (_, _, events) = stream_events(
        &base,
        json!({"model": "m", "input": "x", "metadata": meta(&[("mock_status", "failed")])}),
    )
    .await;
    let last = events.last().unwrap().json();
    assert_eq!(last["type"], "response.failed");
    assert_eq!(last["response"]["status"], "failed");
    assert_eq!(last["response"]["error"]["code"], "server_error");
    assert_eq!(last["response"]["usage"]["total_tokens"], 45);
    let (_, _, events) = stream_events(
        &base,
        json!({"model": "m", "input": "x", "metadata": meta(&[("mock_status", "failed"), ("mock_usage", "none")])}),
    )
    .await;
    assert!(events.last().unwrap().json()["response"]["usage"].is_null());
}

#[tokio::test]
async fn service_tier_mapping_and_mock_tier() {
    let (_mock, base) = start().await;
    for (requested, served) in [
        (None, "default"),
        (Some("auto"), "default"),
        (Some("flex"), "flex"),
        (Some("fast"), "priority"),
        (Some("priority"), "priority"),
    ] {
        let mut body = json!({"model": "m", "input": "x"});
        if let Some(t) = requested {
            body["service_tier"] = json!(t);
        }
        let (_, _, events) = stream_events(&base, body).await;
        assert_eq!(
            events[0].json()["response"]["service_tier"],
            requested.unwrap_or("auto")
        );
        assert_eq!(
            events.last().unwrap().json()["response"]["service_tier"],
            served
        );
    }
    let v: Value = post(&base, "/v1/responses", json!({"model": "m", "input": "x", "service_tier": "auto", "metadata": meta(&[("mock_tier", "flex")])}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["service_tier"], "flex");
}

#[tokio::test]
async fn mock_http_status_returns_error_envelopes() {
    let (_mock, base) = start().await;
    let resp = post(
        &base,
        "/v1/responses",
        json!({"model": "m", "input": "x", "stream": true, "metadata": meta(&[("mock_http_status", "429"), ("mock_retry_after", "2")])}),
    )
    .await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "2");
    assert!(resp.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_"));
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(v["error"]["type"], "requests");
    assert!(v["error"]["param"].is_null());

    let resp = post(
        &base,
        "/v1/responses",
        json!({"model": "m", "input": "x", "metadata": meta(&[("mock_http_status", "500")])}),
    )
    .await;
    assert_eq!(resp.status(), 500);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "server_error");

    let resp = post(
        &base,
        "/v1/responses",
        json!({"model": "m", "input": "x", "metadata": meta(&[("mock_http_status", "429"), ("mock_error_code", "insufficient_quota"), ("mock_error_type", "insufficient_quota")])}),
    )
    .await;
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "insufficient_quota");
    assert_eq!(v["error"]["type"], "insufficient_quota");
}

#[tokio::test]
async fn mock_fail_times_fails_first_n_per_key() {
    let (_mock, base) = start().await;
    let body = |key: &str| json!({"model": "m", "input": "x", "metadata": meta(&[("mock_fail_times", "2"), ("mock_fail_key", key), ("mock_http_status", "503")])});
    assert_eq!(post(&base, "/v1/responses", body("a")).await.status(), 503);
    assert_eq!(post(&base, "/v1/responses", body("b")).await.status(), 503);
    assert_eq!(post(&base, "/v1/responses", body("a")).await.status(), 503);
    assert_eq!(post(&base, "/v1/responses", body("a")).await.status(), 200);
    assert_eq!(post(&base, "/v1/responses", body("a")).await.status(), 200);
    assert_eq!(post(&base, "/v1/responses", body("b")).await.status(), 503);
    assert_eq!(post(&base, "/v1/responses", body("b")).await.status(), 200);
    // Default failure status is 500.
    let r = post(&base, "/v1/responses", json!({"model": "m", "input": "x", "metadata": meta(&[("mock_fail_times", "1"), ("mock_fail_key", "c")])})).await;
    assert_eq!(r.status(), 500);
}

#[tokio::test]
async fn mock_deltas_and_delta_bytes_make_large_streams() {
    let (_mock, base) = start().await;
    let (_, _, events) = stream_events(
        &base,
        json!({"model": "gpt-4.1", "input": "x", "metadata": meta(&[("mock_deltas", "2000"), ("mock_delta_bytes", "100")])}),
    )
    .await;
    let deltas: Vec<Value> = events
        .iter()
        .map(Sse::json)
        .filter(|v| v["type"] == "response.output_text.delta")
        .collect();
    assert_eq!(deltas.len(), 2000);
    let mut total = 0;
    for d in &deltas {
        let n = d["delta"].as_str().unwrap().len();
        assert!((98..=102).contains(&n), "{n}");
        total += n;
    }
    let last = events.last().unwrap().json();
    assert_eq!(
        last["response"]["output"][0]["content"][0]["text"]
            .as_str()
            .unwrap()
            .len(),
        total
    );
    assert_eq!(last["response"]["usage"]["output_tokens"], 20 + 5 * 2000);
    let (_, _, events) = stream_events(
        &base,
        json!({"model": "gpt-4.1", "input": "x", "metadata": meta(&[("mock_deltas", "0")])}),
    )
    .await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind() == "response.output_text.delta")
            .count(),
        0
    );
    assert_eq!(events.last().unwrap().kind(), "response.completed");
}

#[tokio::test]
async fn mock_chunk_bytes_splits_across_event_boundaries() {
    let (_mock, base) = start().await;
    let resp = post(&base, "/v1/responses", json!({"model": "gpt-5", "input": "x", "stream": true, "reasoning": {"summary": "auto"}, "metadata": meta(&[("mock_chunk_bytes", "7")])})).await;
    let mut body = resp.bytes_stream();
    let mut all = Vec::new();
    let mut chunks = 0;
    while let Some(c) = body.next().await {
        let c = c.unwrap();
        assert!(c.len() <= 7, "chunk of {} bytes", c.len());
        chunks += 1;
        all.extend_from_slice(&c);
    }
    let text = String::from_utf8(all).unwrap();
    assert!(chunks > text.len() / 7);
    let events = parse_sse(&text);
    assert_eq!(events.last().unwrap().kind(), "response.completed");
    assert_eq!(events.len(), 18);
}

#[tokio::test]
async fn mock_delay_and_ttfb() {
    let (_mock, base) = start().await;
    let t0 = Instant::now();
    let resp = post(&base, "/v1/responses", json!({"model": "m", "input": "x", "stream": true, "metadata": meta(&[("mock_ttfb_ms", "150")])})).await;
    assert!(t0.elapsed() >= Duration::from_millis(150));
    resp.text().await.unwrap();

    let t0 = Instant::now();
    let resp = post(&base, "/v1/responses", json!({"model": "m", "input": "x", "stream": true, "metadata": meta(&[("mock_delay_ms", "20")])})).await;
    let headers_at = t0.elapsed();
    let text = resp.text().await.unwrap();
    let n = parse_sse(&text).len();
    assert_eq!(n, 11);
    // n events → n-1 pauses of 20 ms.
    assert!(t0.elapsed() >= Duration::from_millis(20 * (n as u64 - 1)));
    assert!(headers_at < Duration::from_millis(100));
}

#[tokio::test]
async fn mock_cut_after_truncates_but_stores_the_response() {
    let (_mock, base) = start().await;
    for cut in [0usize, 1, 2, 5] {
        let resp = post(&base, "/v1/responses", json!({"model": "m", "input": "x", "stream": true, "metadata": meta(&[("mock_cut_after", &cut.to_string())])})).await;
        assert_eq!(resp.status(), 200);
        let mut body = resp.bytes_stream();
        let mut got = Vec::new();
        let mut error = false;
        while let Some(c) = body.next().await {
            match c {
                Ok(c) => got.extend_from_slice(&c),
                Err(_) => {
                    error = true;
                    break;
                }
            }
        }
        assert!(error, "cut {cut}: the client must see an incomplete body");
        assert_eq!(
            parse_sse(&String::from_utf8(got).unwrap()).len(),
            cut,
            "every event before the cut arrives"
        );
    }
    let resp = post(&base, "/v1/responses", json!({"model": "m", "input": "x", "stream": true, "metadata": meta(&[("mock_cut_after", "5"), ("mock_chunk_bytes", "100")])})).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut got = Vec::new();
    let mut error = false;
    while let Some(c) = body.next().await {
        match c {
            Ok(c) => got.extend_from_slice(&c),
            Err(_) => {
                error = true;
                break;
            }
        }
    }
    assert!(
        error,
        "the client must see an incomplete body, not a clean end"
    );
    let events = parse_sse(&String::from_utf8(got).unwrap());
    assert_eq!(events.len(), 5);
    let id = events[0].json()["response"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Usage is recoverable with GET, as the gateway's fallback would do.
    let v: Value = get(&base, &format!("/v1/responses/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "completed");
    assert_eq!(v["usage"]["total_tokens"], 45);

    // JSON: half a body, then an error.
    let resp = post(
        &base,
        "/v1/responses",
        json!({"model": "m", "input": "x", "metadata": meta(&[("mock_cut_after", "1")])}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut got = 0;
    let mut error = false;
    while let Some(c) = body.next().await {
        match c {
            Ok(c) => got += c.len(),
            Err(_) => error = true,
        }
    }
    assert!(
        error && got > 100,
        "half the JSON arrives, then the connection drops"
    );
}

#[tokio::test]
async fn mock_garbage_injects_non_json_and_comment() {
    let (_mock, base) = start().await;
    let resp = post(&base, "/v1/responses", json!({"model": "m", "input": "x", "stream": true, "metadata": meta(&[("mock_garbage", "1")])})).await;
    let text = resp.text().await.unwrap();
    assert!(text.contains("\ndata: <<mock garbage: this line is not JSON>>\n\n"));
    assert!(text.contains("\n: mock stray comment\nevent: response.completed\n"));
    // The garbage sits in the first text delta, right after its JSON line.
    let blocks: Vec<&str> = text.split("\n\n").collect();
    let bad = blocks
        .iter()
        .find(|b| b.contains("<<mock garbage"))
        .unwrap();
    assert!(bad.starts_with("event: response.output_text.delta\n"));
    let kinds: Vec<String> = parse_sse(&text)
        .iter()
        .filter_map(|e| {
            e.data
                .lines()
                .next()
                .and_then(|l| serde_json::from_str::<Value>(l).ok())
        })
        .map(|v| v["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds.last().unwrap(), "response.completed");
}

#[tokio::test]
async fn mock_error_event_replaces_terminal() {
    let (_mock, base) = start().await;
    let (_, _, events) = stream_events(
        &base,
        json!({"model": "m", "input": "x", "metadata": meta(&[("mock_error_event", "1")])}),
    )
    .await;
    let last = events.last().unwrap().json();
    assert_eq!(last["type"], "error");
    assert_eq!(last["code"], "server_error");
    assert!(last["param"].is_null());
    assert!(last["message"].is_string());
    assert_eq!(last["sequence_number"], events.len() - 1);
    assert!(!events.iter().any(|e| e.kind() == "response.completed"));
}

#[tokio::test]
async fn line_endings_and_data_only_events() {
    let (_mock, base) = start().await;
    let (_, text, events) = stream_events(
        &base,
        json!({"model": "m", "input": "x", "metadata": meta(&[("mock_line_ending", "crlf")])}),
    )
    .await;
    assert!(text.starts_with("event: response.created\r\ndata: {"));
    assert!(text.ends_with("}\r\n\r\n"));
    assert_eq!(events.len(), 11);
    let (_, text, events) = stream_events(
        &base,
        json!({"model": "m", "input": "x", "metadata": meta(&[("mock_line_ending", "cr")])}),
    )
    .await;
    assert!(!text.contains('\n'));
    assert!(text.ends_with("}\r\r"));
    assert_eq!(events.len(), 11);
    let (_, text, events) = stream_events(
        &base,
        json!({"model": "m", "input": "x", "metadata": meta(&[("mock_no_event_lines", "1")])}),
    )
    .await;
    assert!(!text.contains("event:"));
    assert!(text.starts_with("data: {\"type\":\"response.created\""));
    assert_eq!(events.len(), 11);
    assert!(events.iter().all(|e| e.event.is_none()));
}

#[tokio::test]
async fn retrieve_and_replay_with_starting_after() {
    let (_mock, base) = start().await;
    let (_, original, events) = stream_events(&base, json!({"model": "gpt-5", "input": "x"})).await;
    let id = events[0].json()["response"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let total = events.len();

    let v: Value = get(&base, &format!("/v1/responses/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v, events.last().unwrap().json()["response"]);

    let full = get(&base, &format!("/v1/responses/{id}?stream=true")).await;
    assert!(full.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(
        full.text().await.unwrap(),
        original,
        "replay is byte-identical"
    );

    let resp = get(
        &base,
        &format!("/v1/responses/{id}?stream=true&starting_after=6"),
    )
    .await;
    let replay = parse_sse(&resp.text().await.unwrap());
    assert_eq!(replay[0].kind(), "response.created");
    assert_eq!(replay[0].json()["sequence_number"], 0);
    let seqs: Vec<u64> = replay[1..]
        .iter()
        .map(|e| e.json()["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (7..total as u64).collect::<Vec<_>>());

    let resp = get(
        &base,
        &format!("/v1/responses/{id}?stream=true&starting_after=x"),
    )
    .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(get(&base, "/v1/responses/resp_nope").await.status(), 404);
}

#[tokio::test]
async fn store_false_and_previous_response_id() {
    let (_mock, base) = start().await;
    let v: Value = post(
        &base,
        "/v1/responses",
        json!({"model": "m", "input": "x", "store": false}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["store"], false);
    let id = v["id"].as_str().unwrap();
    assert_eq!(
        get(&base, &format!("/v1/responses/{id}")).await.status(),
        404
    );
    let resp = post(
        &base,
        "/v1/responses",
        json!({"model": "m", "input": "y", "previous_response_id": id}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["code"], "previous_response_not_found");
    assert_eq!(e["error"]["param"], "previous_response_id");

    let first: Value = post(&base, "/v1/responses", json!({"model": "m", "input": "x"}))
        .await
        .json()
        .await
        .unwrap();
    let second: Value = post(
        &base,
        "/v1/responses",
        json!({"model": "m", "input": "y", "previous_response_id": first["id"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(second["previous_response_id"], first["id"]);
}

#[tokio::test]
async fn delete_then_404() {
    let (_mock, base) = start().await;
    let v: Value = post(&base, "/v1/responses", json!({"model": "m", "input": "x"}))
        .await
        .json()
        .await
        .unwrap();
    let id = v["id"].as_str().unwrap();
    let resp = client()
        .delete(format!("{base}/v1/responses/{id}"))
        .bearer_auth("k")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let d: Value = resp.json().await.unwrap();
    assert_eq!(d, json!({"id": id, "object": "response", "deleted": true}));
    let resp = client()
        .delete(format!("{base}/v1/responses/{id}"))
        .bearer_auth("k")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert_eq!(
        get(&base, &format!("/v1/responses/{id}")).await.status(),
        404
    );
}

#[tokio::test]
async fn cancel_background_only() {
    let (_mock, base) = start().await;
    let bg: Value = post(
        &base,
        "/v1/responses",
        json!({"model": "m", "input": "x", "background": true}),
    )
    .await
    .json()
    .await
    .unwrap();
    let id = bg["id"].as_str().unwrap();
    for _ in 0..2 {
        let v: Value = post(&base, &format!("/v1/responses/{id}/cancel"), json!({}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(v["status"], "cancelled");
    }
    let v: Value = get(&base, &format!("/v1/responses/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "cancelled");
    let fg: Value = post(&base, "/v1/responses", json!({"model": "m", "input": "x"}))
        .await
        .json()
        .await
        .unwrap();
    let id = fg["id"].as_str().unwrap();
    assert_eq!(
        post(&base, &format!("/v1/responses/{id}/cancel"), json!({}))
            .await
            .status(),
        400
    );
    assert_eq!(
        post(
            &base,
            "/v1/responses/resp_00000000000000000000000000000000/cancel",
            json!({})
        )
        .await
        .status(),
        404
    );
}

#[tokio::test]
async fn input_items_lists_the_input() {
    let (_mock, base) = start().await;
    let v: Value = post(
        &base,
        "/v1/responses",
        json!({"model": "m", "input": [
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "two"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "three"}]}
        ]}),
    )
    .await
    .json()
    .await
    .unwrap();
    let id = v["id"].as_str().unwrap();
    let l: Value = get(&base, &format!("/v1/responses/{id}/input_items"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(l["object"], "list");
    assert_eq!(l["has_more"], false);
    let data = l["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(
        data[0]["content"][0]["text"], "three",
        "default order is desc"
    );
    assert_eq!(
        data[2]["content"][0],
        json!({"type": "input_text", "text": "one"})
    );
    assert_eq!(data[1]["content"][0]["type"], "output_text");
    assert_eq!(l["first_id"], data[0]["id"]);
    assert_eq!(l["last_id"], data[2]["id"]);
    let l: Value = get(
        &base,
        &format!("/v1/responses/{id}/input_items?order=asc&limit=2"),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(l["data"].as_array().unwrap().len(), 2);
    assert_eq!(l["data"][0]["content"][0]["text"], "one");
    assert_eq!(l["has_more"], true);
    let after = l["last_id"].as_str().unwrap();
    let l: Value = get(
        &base,
        &format!("/v1/responses/{id}/input_items?order=asc&after={after}"),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(l["data"].as_array().unwrap().len(), 1);
    assert_eq!(l["data"][0]["content"][0]["text"], "three");
}

#[tokio::test]
async fn input_tokens_endpoint() {
    let (_mock, base) = start().await;
    let v: Value = post(
        &base,
        "/v1/responses/input_tokens",
        json!({"model": "m", "input": "hello"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        v,
        json!({"object": "response.input_tokens", "input_tokens": 11})
    );
    let v: Value = post(
        &base,
        "/openai/v1/responses/input_tokens",
        json!({"model": "m", "input": "x", "metadata": meta(&[("mock_usage", "77,0,0,0")])}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["input_tokens"], 77);
}

#[tokio::test]
async fn compact_endpoint() {
    let (_mock, base) = start().await;
    let resp = post(&base, "/v1/responses/compact", json!({"model": "gpt-5", "input": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "response.compaction");
    assert!(v["id"].is_string() && v["created_at"].is_u64());
    let out = v["output"].as_array().unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0]["role"], "user");
    assert_eq!(out[1]["type"], "compaction");
    assert!(out[1]["encrypted_content"].is_string());
    // [{"content":"hi","role":"user"},{"content":"yo","role":"assistant"}] = 68 bytes → 10 + 17
    assert_eq!(v["usage"]["input_tokens"], 27);
    assert_eq!(v["usage"]["output_tokens"], 32);
    assert_eq!(v["usage"]["total_tokens"], 59);

    for stream in [json!(true), json!(false), Value::Null] {
        let resp = post(
            &base,
            "/v1/responses/compact",
            json!({"model": "gpt-5", "input": "x", "stream": stream}),
        )
        .await;
        assert_eq!(resp.status(), 400);
        let e: Value = resp.json().await.unwrap();
        assert_eq!(
            e["error"],
            json!({"message": "Unknown parameter: 'stream'.", "type": "invalid_request_error", "param": "stream", "code": "unknown_parameter"})
        );
    }
    assert_eq!(
        post(&base, "/v1/responses/compact", json!({"input": "x"}))
            .await
            .status(),
        400
    );
}

#[tokio::test]
async fn auth_is_required() {
    let (mock, base) = start().await;
    let body = json!({"model": "m", "input": "x"});
    let resp = client()
        .post(format!("{base}/v1/responses"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("x-request-id"));
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["code"], "invalid_api_key");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    let resp = client()
        .post(format!("{base}/v1/responses"))
        .header("authorization", "Bearer ")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = client()
        .post(format!("{base}/v1/responses"))
        .header("authorization", "Basic abc")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = client()
        .post(format!(
            "{base}/openai/responses?api-version=2025-04-01-preview"
        ))
        .header("api-key", "azure-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        client()
            .get(format!("{base}/v1/responses/resp_x"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // Rejected requests are still recorded, so tests can see what was sent.
    assert_eq!(mock.request_count(), 5);
    assert_eq!(mock.requests()[3].header("api-key"), Some("azure-key"));
}

#[tokio::test]
async fn validation_errors() {
    let (_mock, base) = start().await;
    let resp = post(&base, "/v1/responses", json!({"input": "x"})).await;
    assert_eq!(resp.status(), 400);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["param"], "model");
    let resp = post(
        &base,
        "/v1/responses",
        json!({"model": "m", "metadata": meta(&[("mock_delta", "5")])}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["param"], "metadata.mock_delta");
    let resp = client()
        .post(format!("{base}/v1/responses"))
        .bearer_auth("k")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn recording_and_out_of_process_view() {
    let (mock, base) = start().await;
    client()
        .post(format!("{base}/v1/responses?x=1"))
        .bearer_auth("sk-abc")
        .header("x-custom", "yes")
        .body(r#"{"model":"m","input":"é"}"#)
        .send()
        .await
        .unwrap();
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/v1/responses?x=1");
    assert_eq!(reqs[0].header("Authorization"), Some("Bearer sk-abc"));
    assert_eq!(reqs[0].header("x-custom"), Some("yes"));
    assert_eq!(&reqs[0].body[..], r#"{"model":"m","input":"é"}"#.as_bytes());
    let l: Value = client()
        .get(format!("{base}/__mock/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(l[0]["body"], r#"{"model":"m","input":"é"}"#);
    assert_eq!(l[0]["path"], "/v1/responses?x=1");
    assert!(l[0]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h == &json!(["x-custom", "yes"])));
    let h: Value = client()
        .get(format!("{base}/__mock/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(mock.request_count(), 1, "/__mock routes are not counted");

    let (quiet, base) = start_with(MockUpstream::without_recording()).await;
    post(&base, "/v1/responses", json!({"model": "m", "input": "x"})).await;
    assert_eq!(quiet.request_count(), 1);
    assert!(quiet.requests().is_empty());
}

#[tokio::test]
async fn concurrent_streams_are_independent() {
    let (_mock, base) = start_with(MockUpstream::without_recording()).await;
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let base = base.clone();
            tokio::spawn(async move {
                let (_, _, events) = stream_events(&base, json!({"model": "m", "input": "x", "metadata": meta(&[("mock_deltas", &i.to_string())])})).await;
                assert_eq!(events.len(), 8 + i);
                events.last().unwrap().json()["response"]["id"].as_str().unwrap().to_owned()
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 32);
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_text(socket: &mut Socket) -> Value {
    use tokio_tungstenite::tungstenite::Message;
    loop {
        if let Message::Text(text) = socket.next().await.unwrap().unwrap() {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

#[tokio::test]
async fn websocket_mode_streams_each_create_and_answers_refusals_with_error_events() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let (mock, base) = start().await;
    let url = base.replace("http://", "ws://") + "/v1/responses";
    // No credential: refused before the upgrade.
    let refused = tokio_tungstenite::connect_async(url.as_str()).await;
    assert!(
        matches!(&refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 401)
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", "Bearer sk-test".parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let send = |body: Value| Message::Text(body.to_string().into());
    for usage in ["10,0,20,0", "11,0,21,0"] {
        socket
            .send(send(
                json!({"type": "response.create", "model": "gpt-5.4", "input": "hi",
                                "metadata": {"mock_usage": usage}}),
            ))
            .await
            .unwrap();
        let mut kinds = Vec::new();
        let last = loop {
            let event = next_text(&mut socket).await;
            kinds.push(event["type"].as_str().unwrap().to_owned());
            if event["type"] == "response.completed" {
                break event;
            }
        };
        assert_eq!(kinds[0], "response.created");
        assert_eq!(
            last["response"]["usage"]["input_tokens"],
            usage[..2].parse::<u64>().unwrap()
        );
    }
    socket
        .send(send(json!({"type": "response.create", "model": "m", "metadata": {"mock_http_status": "429"}})))
        .await
        .unwrap();
    let error = next_text(&mut socket).await;
    assert_eq!(
        (&error["type"], &error["status"], &error["error"]["code"]),
        (&json!("error"), &json!(429), &json!("rate_limit_exceeded"))
    );
    socket
        .send(send(json!({"type": "response.steer"})))
        .await
        .unwrap();
    let error = next_text(&mut socket).await;
    assert_eq!(
        (&error["status"], &error["error"]["param"]),
        (&json!(400), &json!("type"))
    );
    let recorded = mock.requests();
    assert_eq!(recorded.len(), 3, "the steer message is no create");
    assert!(recorded.iter().all(|r| r.method == "WS"));
    assert_eq!(recorded[0].json().unwrap()["stream"], true);
}
