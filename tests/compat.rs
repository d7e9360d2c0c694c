//! Requests shaped the way real clients send them: the Codex CLI's default
//! tool list (it always offers `web_search`), the SDKs' headers. The pinned
//! client programs themselves are driven by `tests/clients.rs`; a fallback's
//! own tools meet the same policy as the request's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{gpt55_price, sse_events, TestGateway};
use serde_json::{json, Value};
use sqlx::PgPool;
use tollgate::config::UnsupportedTools;

/// `(dropped_tools, client_request_id)` of every row, oldest first.
async fn client_fields(gw: &TestGateway, n: usize) -> Vec<(Option<String>, Option<String>)> {
    assert_eq!(gw.rows(n).await.len(), n, "exactly {n} rows");
    sqlx::query_as("SELECT dropped_tools, client_request_id FROM usage_ledger ORDER BY id")
        .fetch_all(&gw.pool)
        .await
        .unwrap()
}

/// The tool list Codex offers by default: its own function tools plus
/// the hosted `web_search`.
fn codex_like(stream: bool) -> Value {
    json!({
        "model": "turing/gpt-5.5",
        "instructions": "You are Codex.",
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "tools": [
            {"type": "function", "name": "shell", "parameters": {"type": "object", "properties": {}}, "strict": false},
            {"type": "web_search"}
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": false,
        "store": false,
        "stream": stream,
    })
}

#[sqlx::test]
async fn an_offered_web_search_is_dropped_named_and_recorded(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("codex").await;

    for stream in [false, true] {
        let response = gw.create(&key, codex_like(stream)).await;
        assert_eq!(response.status(), 200, "stream={stream}");
        assert_eq!(response.headers()["x-tollgate-dropped-tools"], "web_search");
        let text = response.text().await.unwrap();
        if stream {
            let events = sse_events(&text);
            assert_eq!(events.last().unwrap().0, "response.completed");
        } else {
            let body: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(body["status"], "completed");
        }
    }
    let sent = gw.mock.requests();
    assert_eq!(sent.len(), 2);
    for request in &sent {
        let body = request.json().unwrap();
        assert_eq!(
            body["tools"],
            json!([{"type": "function", "name": "shell", "parameters": {"type": "object", "properties": {}}, "strict": false}])
        );
        assert_eq!(body["tool_choice"], "auto");
    }
    let rows = gw.rows(2).await;
    assert!(rows
        .iter()
        .all(|r| r.status == "completed" && r.cost.is_some()));
    let fields = client_fields(&gw, 2).await;
    assert!(fields
        .iter()
        .all(|(dropped, _)| dropped.as_deref() == Some("web_search")));
}

#[sqlx::test]
async fn a_request_that_needs_the_tool_or_a_refusing_tenant_gets_400(pool: PgPool) {
    let gw = TestGateway::start_with(pool, |c| {
        c.tools
            .tenants
            .insert("strict".into(), UnsupportedTools::Refuse);
    })
    .await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let strict = gw.key("strict").await;
    let relaxed = gw.key("relaxed").await;

    let forced = json!({"model": "turing/gpt-5.5", "input": "x",
        "tools": [{"type": "web_search_preview_2025_03_11"}], "tool_choice": "required"});
    let cases = [
        (&relaxed, forced, "tools[0].type"),
        (&strict, codex_like(false), "tools[1].type"),
    ];
    for (key, body, param) in &cases {
        let response = gw.create(key, body.clone()).await;
        assert_eq!(response.status(), 400);
        assert!(response.headers().get("x-tollgate-dropped-tools").is_none());
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "unsupported_tool");
        assert_eq!(error["error"]["param"], *param);
    }
    assert_eq!(gw.mock.request_count(), 0);
    let rows = gw.rows(2).await;
    assert!(rows
        .iter()
        .all(|r| r.status == "rejected" && r.error_code.as_deref() == Some("unsupported_tool")));
}

#[sqlx::test]
async fn client_headers_pass_an_allowlist_and_the_correlation_id_is_recorded(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let body = json!({"model": "turing/gpt-5.5", "input": "x"});
    let send = |id: &'static str| {
        gw.http
            .post(gw.url("/v1/responses"))
            .bearer_auth(&key)
            .header("x-client-request-id", id)
            .header("user-agent", "OpenAI/Python 3.51.0")
            .header("x-stainless-lang", "python")
            .header("openai-organization", "org-someone-else")
            .header("openai-project", "proj-someone-else")
            .header("cookie", "session=secret")
            .json(&body)
            .send()
    };
    assert_eq!(send("trace-42").await.unwrap().status(), 200);
    assert_eq!(send("bad\tid").await.unwrap().status(), 200);

    let sent = gw.mock.requests();
    assert_eq!(sent[0].header("x-client-request-id"), Some("trace-42"));
    assert_eq!(sent[0].header("user-agent"), Some("OpenAI/Python 3.51.0"));
    assert_eq!(sent[0].header("x-stainless-lang"), Some("python"));
    for request in &sent {
        for never in ["openai-organization", "openai-project", "cookie"] {
            assert_eq!(request.header(never), None, "{never}");
        }
        assert_ne!(
            request.header("authorization"),
            Some(&*format!("Bearer {key}"))
        );
    }
    let rows = gw.rows(2).await;
    // An unusable client id is replaced upstream by the gateway's own.
    assert_eq!(
        sent[1].header("x-client-request-id"),
        Some(rows[1].request_id.as_str())
    );
    let fields = client_fields(&gw, 2).await;
    assert_eq!(fields[0], (None, Some("trace-42".to_owned())));
    assert_eq!(fields[1], (None, None));
}

/// A fallback whose override replaces `tools` goes through the same tool
/// policy as the request itself (`proxy::validate::check_body` serves both):
/// offered unsupported tools are dropped and named, a forced one or a
/// refusing tenant gets the 400, naming the fallback.
#[sqlx::test]
async fn a_fallbacks_own_tools_meet_the_same_drop_or_refuse_policy(pool: PgPool) {
    let gw = TestGateway::start_with(pool, |c| {
        c.tools
            .tenants
            .insert("strict".into(), UnsupportedTools::Refuse);
    })
    .await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let relaxed = gw.key("relaxed").await;
    let strict = gw.key("strict").await;
    let function =
        |name: &str| json!({"type": "function", "name": name, "parameters": {}, "strict": false});
    // The request itself fails upstream, so its fallback is what is served.
    let with_fallback = |fallback: Value| {
        json!({"model": "turing/gpt-5.5", "input": "hi", "tools": [function("g")],
               "metadata": {"mock_http_status": "503"},
               "turing_options": {"fallbacks": [fallback]}})
    };
    let offering = json!({"model": "turing/gpt-5.5", "metadata": {},
        "tools": [function("f"), {"type": "web_search"}, {"type": "image_generation"}]});

    let response = gw.create(&relaxed, with_fallback(offering.clone())).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-tollgate-dropped-tools"],
        "web_search,image_generation"
    );
    response.bytes().await.unwrap();
    // A fallback without its own tools inherits the request's, dropped alike.
    let mut inherited = with_fallback(json!({"model": "turing/gpt-5.5", "metadata": {}}));
    inherited["tools"] = json!([function("g"), {"type": "web_search_preview"}]);
    let response = gw.create(&relaxed, inherited).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-tollgate-dropped-tools"],
        "web_search_preview"
    );
    response.bytes().await.unwrap();

    let sent: Vec<Value> = gw
        .mock
        .requests()
        .iter()
        .map(|r| r.json().unwrap())
        .collect();
    assert_eq!(sent.len(), 4, "each request: the failing one, its fallback");
    assert_eq!(sent[1]["tools"], json!([function("f")]));
    assert_eq!(sent[3]["tools"], json!([function("g")]));
    let rows = gw.rows(2).await;
    assert!(rows
        .iter()
        .all(|r| r.status == "completed" && r.fallback_from.as_deref() == Some("gpt-5.5")));
    let fields = client_fields(&gw, 2).await;
    assert_eq!(fields[0].0.as_deref(), Some("web_search,image_generation"));
    assert_eq!(fields[1].0.as_deref(), Some("web_search_preview"));

    // Refused before anything is sent, naming the fallback's field.
    let mut forced = offering.clone();
    forced["tool_choice"] = json!({"type": "web_search"});
    let cases = [
        (
            &strict,
            with_fallback(offering),
            "turing_options.fallbacks.tools[1].type",
        ),
        (
            &relaxed,
            with_fallback(forced),
            "turing_options.fallbacks.tools[1].type",
        ),
    ];
    for (key, body, param) in cases {
        let response = gw.create(key, body).await;
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "unsupported_tool", "{error}");
        assert_eq!(error["error"]["param"], param, "{error}");
    }
    assert_eq!(gw.mock.request_count(), 4, "no refused body went upstream");
    let rows = gw.rows(4).await;
    assert!(rows[2..].iter().all(|r| r.status == "rejected"));
}
