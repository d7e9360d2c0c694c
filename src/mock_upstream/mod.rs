//! Simulated OpenAI Responses API upstream ("mock upstream") for Tollgate's
//! integration tests, demo and benchmarks.
//!
//! This module owns the whole fake backend: routing, auth check, request
//! recording, response/stream generation, the scripting keys below and the
//! in-memory response store. It speaks the wire format of
//! `responses-wire-facts.md` (§2–§5, §7) closely enough for the stock
//! openai-python 1.102.0 SDK, including `client.responses.stream(...)` and
//! `get_final_response()`, and it is built to stay out of a benchmark's way:
//! responses are rendered straight to bytes from a small per-request plan,
//! streams are generated lazily, the store is sharded, and request recording
//! can be switched off ([`MockUpstream::without_recording`]).
//!
//! # Routes
//! For each prefix `P` in `""`, `/v1`, `/openai/v1`, `/openai` (OpenAI,
//! bare host, Azure v1 and Azure legacy `?api-version=` base URLs):
//!
//! | Route | Answer |
//! |---|---|
//! | `POST P/responses` | create (JSON or SSE when `"stream":true`) |
//! | `GET P/responses` with `Upgrade: websocket` | WebSocket mode (`ws` module): each `response.create` message is a streaming create, recorded with method `WS`; events come back as text messages, refusals as `{"type":"error","status","error"}` |
//! | `GET P/responses/{id}` | stored response; `?stream=true[&starting_after=N]` replays its events (always starting with `response.created`, then sequence numbers > N) |
//! | `DELETE P/responses/{id}` | `{"id","object":"response","deleted":true}`, 404 if unknown |
//! | `POST P/responses/{id}/cancel` | background responses become `cancelled` (idempotent, usage kept); others 400; unknown 404 |
//! | `GET P/responses/{id}/input_items` | `{"object":"list","data","first_id","last_id","has_more"}` (`limit`, `order`, `after`) |
//! | `POST P/responses/input_tokens` | `{"object":"response.input_tokens","input_tokens":N}` |
//! | `POST P/responses/compact` | `response.compaction` object with usage; 400 `unknown_parameter` if the body has `stream` |
//! | `GET /__mock/requests` | recorded requests as JSON: `[{"method","path","headers":[[name,value]…],"body":"<utf-8>"}]` |
//! | `GET /__mock/health` | `{"status":"ok"}` |
//!
//! Every API route requires `Authorization: Bearer <non-empty>` or
//! `api-key: <non-empty>` (401 `invalid_api_key` otherwise). Responses carry
//! `x-request-id: req_<hex>`, `openai-processing-ms`, `openai-version` and the
//! six `x-ratelimit-*` headers; errors use the `{"error":{message,type,param,code}}`
//! envelope.
//!
//! # Default behaviour of `POST /responses`
//! * `model` is required (400, param `model`); it is echoed with the suffix
//!   `-2025-08-07` unless it already ends in a `-YYYY-MM-DD` date.
//! * Output: a `reasoning` item when the request has `reasoning` or the model
//!   starts with `o` or `gpt-5` (with summary text only if
//!   `reasoning.summary` is set), then an assistant `message` with one
//!   `output_text`. Text is cut from a fixed pool (mostly ASCII plus a few
//!   multi-byte characters, never needing JSON escapes).
//! * Usage (deterministic, for hand-computed costs):
//!   `input_tokens = 10 + L/4` (integer division), where `L` is the byte length
//!   of the *compact* JSON serialization of `input` as serde_json writes it
//!   (a string input counts its two quotes: `"hello"` → L = 7 → 11 tokens;
//!   absent input → L = 0); `cached_tokens = 0`;
//!   `reasoning_tokens = 64` if a reasoning item is produced, else 0;
//!   `output_tokens = 20 + 5·deltas + reasoning_tokens`;
//!   `total_tokens = input_tokens + output_tokens`.
//! * `service_tier`: `response.created`/`in_progress` show the requested tier
//!   (or `"auto"`); the final object shows the tier that "served": absent,
//!   `auto`, `default` → `default`; `flex` → `flex`; `priority`, `fast` →
//!   `priority`; anything else as given.
//! * `previous_response_id` must name a stored response, else 400
//!   `previous_response_not_found` (so `store:false` responses can't be chained).
//! * `store` (default true): the response is kept (newest 10,000) for
//!   retrieve/replay/delete/cancel/input_items. The stored state is the final
//!   one even if the stream was cut, like a real upstream that finished the
//!   work after the client went away.
//! * `background:true`: JSON answers `status:"queued"` (usage null) and a later
//!   GET shows the finished response; streams send `response.created`
//!   (queued) → `response.queued` → `response.in_progress` → …
//! * Streams follow wire-facts §3.5: `event:` + `data:` lines, blank line,
//!   sequence numbers from 0, deltas with `"logprobs":[]` and `obfuscation`,
//!   no `[DONE]`, terminal event with the full response and usage.
//!
//! # Scripting keys (`metadata`, all values strings)
//! Unknown `mock_*` keys and malformed values get a 400 with
//! `param: "metadata.<key>"`, so typos fail loudly. Other metadata is echoed.
//!
//! | Key | Effect |
//! |---|---|
//! | `mock_usage` | `"input,cached,output,reasoning"` → usage exactly (total = input + output); `"none"` → `usage: null` |
//! | `mock_status` | `completed` (default) \| `incomplete` (`incomplete_details.reason = "max_output_tokens"`, message status `incomplete`) \| `failed` (`error.code = "server_error"`, usage still present unless `mock_usage = "none"`). Sets the JSON status and the terminal event (`response.completed` / `.incomplete` / `.failed`) |
//! | `mock_tier` | `service_tier` of the final response (overrides the mapping above) |
//! | `mock_http_status` | answer at once with this status (400–599) and an error envelope, no stream. Defaults per status, e.g. 429 → type `requests`, code `rate_limit_exceeded`; 500 → `server_error`; 503 → `service_unavailable` |
//! | `mock_error_code`, `mock_error_type` | override the envelope's `code` / `type` |
//! | `mock_retry_after` | adds a `retry-after` header with this value to the error |
//! | `mock_fail_times` | `"N"`: the first N requests with the same `mock_fail_key` (default `""`) fail with `mock_http_status` (default 500); later ones succeed. Without it, `mock_http_status` fails every request |
//! | `mock_fail_key` | counter key for `mock_fail_times` (make it unique per test) |
//! | `mock_deltas` | number of `response.output_text.delta` events (default 3, max 10,000,000) |
//! | `mock_delta_bytes` | bytes of text per delta (default 8, 1–1 MiB; rounded down to a character boundary, never empty) |
//! | `mock_chunk_bytes` | cut the SSE byte stream into body chunks of at most N bytes, across event boundaries (default: one chunk per event). With `mock_delay_ms` each event is flushed completely before the pause |
//! | `mock_delay_ms` | pause between consecutive events |
//! | `mock_ttfb_ms` | pause before the response headers (also before scripted errors) |
//! | `mock_cut_after` | stream: send N events, then abort the connection (chunked body ends with an error, no terminal chunk). JSON: send half the body, then abort |
//! | `mock_garbage` | `"1"`: the first `output_text.delta` (or `content_part.added` with 0 deltas) gets a second `data:` line that is not JSON, and a stray `: comment` line precedes the terminal event |
//! | `mock_error_event` | `"1"`: the stream ends with `{"type":"error","code":"server_error","message":…,"param":null,"sequence_number":N}` instead of the terminal response event (the stored response keeps `mock_status`) |
//! | `mock_line_ending` | `lf` (default) \| `crlf` \| `cr` for every SSE line |
//! | `mock_no_event_lines` | `"1"`: data-only events (no `event:` lines) |
//!
//! Replays (`GET …?stream=true`) always use clean transport: LF, event lines,
//! no delays, chunking, cuts or garbage, and the stored terminal event.
//! `input_tokens` and `compact` honour `mock_usage`, `mock_http_status`,
//! `mock_fail_*` and `mock_ttfb_ms` when the body carries `metadata`;
//! compaction usage defaults to the input formula with `output_tokens = 32`.

mod conversations;
pub mod org;
mod render;
mod script;
mod store;
mod stream;
mod ws;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Method, StatusCode, Uri};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use render::{
    json_len, push_json, Plan, Snapshot, Status, Usage, DATE_SUFFIX, DEFAULT_REASONING_TOKENS,
};
use script::{Script, UsageSpec};
use store::Store;
use stream::{EventStream, Transport, TruncatedBody};

/// Largest request body accepted (axum's default of 2 MiB is too small for
/// benchmark inputs with big prompts).
const BODY_LIMIT: usize = 256 << 20;

/// One request as received by the mock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// Path including the query string.
    pub path: String,
    /// Header names are lowercase, in arrival order; values lossily UTF-8.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl RecordedRequest {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

struct Shared {
    recording: bool,
    count: AtomicUsize,
    requests: Mutex<Vec<RecordedRequest>>,
    store: Store,
    conversations: conversations::Conversations,
    /// What was served, for the organization Usage and Costs APIs.
    org: org::Organization,
    fail_counters: Mutex<HashMap<String, u32>>,
    /// Per-process random seed and counter behind request ids and the random
    /// part of response ids (a counter through a bijective mixer is unique and
    /// needs neither a lock nor a syscall, unlike `Uuid::now_v7`).
    seed: u64,
    counter: AtomicU64,
}

/// The mock upstream. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct MockUpstream {
    inner: Arc<Shared>,
}

impl Default for MockUpstream {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("recording", &self.inner.recording)
            .field("requests", &self.request_count())
            .finish()
    }
}

/// splitmix64: a bijection on u64 with good mixing.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl MockUpstream {
    /// A mock that records every request it receives.
    pub fn new() -> Self {
        Self::build(true)
    }

    /// A mock that only counts requests (for benchmarks: no per-request lock
    /// or copy of headers and body).
    pub fn without_recording() -> Self {
        Self::build(false)
    }

    fn build(recording: bool) -> Self {
        // One uuid from the OS-seeded generator seeds the id counter.
        let seed = uuid::Uuid::now_v7().as_u64_pair().1;
        MockUpstream {
            inner: Arc::new(Shared {
                recording,
                count: AtomicUsize::new(0),
                requests: Mutex::new(Vec::new()),
                store: Store::new(),
                conversations: conversations::Conversations::default(),
                org: org::Organization::default(),
                fail_counters: Mutex::new(HashMap::new()),
                seed,
                counter: AtomicU64::new(0),
            }),
        }
    }

    /// The axum router with every route (see the module docs).
    pub fn router(&self) -> Router {
        let mut r = Router::new();
        for p in ["", "/v1", "/openai/v1", "/openai"] {
            r = r
                .route(&format!("{p}/responses"), post(create).get(ws::connect))
                .route(&format!("{p}/responses/input_tokens"), post(input_tokens))
                .route(&format!("{p}/responses/compact"), post(compact))
                .route(
                    &format!("{p}/responses/{{id}}"),
                    get(retrieve).delete(delete),
                )
                .route(&format!("{p}/responses/{{id}}/cancel"), post(cancel))
                .route(
                    &format!("{p}/responses/{{id}}/input_items"),
                    get(input_items),
                );
            r = conversations::routes(r, p);
        }
        for p in ["", "/v1"] {
            r = r
                .route(
                    &format!("{p}/organization/usage/completions"),
                    get(org::usage_completions),
                )
                .route(&format!("{p}/organization/costs"), get(org::costs))
                .route(&format!("{p}/organization/projects"), get(org::projects))
                .route(
                    &format!("{p}/organization/projects/{{project_id}}/api_keys"),
                    get(org::project_keys),
                );
        }
        r.route("/__mock/requests", get(mock_requests))
            .route(
                "/__mock/health",
                get(|| async { axum::Json(json!({"status": "ok"})) }),
            )
            .fallback(fallback)
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(self.clone())
    }

    /// Serves the router on `listener` until the task is dropped. Sets
    /// `TCP_NODELAY` on accepted sockets so small SSE events aren't held back
    /// by Nagle's algorithm.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        use axum::serve::ListenerExt;
        let app = self.router();
        let listener = listener.tap_io(|tcp| {
            // Best effort: without NODELAY the mock is slower, not wrong.
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await
    }

    /// Requests received so far, in arrival order (empty without recording).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The simulated organization: what was served, its Usage and Costs
    /// APIs, and the injections tests and the demo make.
    pub fn org(&self) -> &org::Organization {
        &self.inner.org
    }

    /// Number of API requests received (counted even without recording;
    /// `/__mock/*` is not counted).
    pub fn request_count(&self) -> usize {
        self.inner.count.load(Ordering::Relaxed)
    }

    fn next_random(&self) -> u64 {
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        mix(n ^ self.inner.seed)
    }

    fn request_id(&self) -> HeaderValue {
        let a = self.next_random();
        let b = mix(a);
        HeaderValue::from_str(&format!("req_{a:016x}{b:016x}"))
            .unwrap_or(HeaderValue::from_static("req_0"))
    }

    /// A fresh v7 uuid; its 80 random bits come from the lock-free counter.
    fn new_uuid(&self, millis: u64) -> uuid::Uuid {
        let r = self.next_random();
        let r2 = mix(r).to_le_bytes();
        let mut rand = [0u8; 10];
        rand[..8].copy_from_slice(&r.to_le_bytes());
        rand[8..].copy_from_slice(&r2[..2]);
        uuid::Builder::from_unix_timestamp_millis(millis, &rand).into_uuid()
    }

    /// Counts, records and authenticates a request.
    fn intake(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<(), Reject> {
        self.inner.count.fetch_add(1, Ordering::Relaxed);
        if self.inner.recording {
            let rec = RecordedRequest {
                method: method.as_str().to_owned(),
                path: uri
                    .path_and_query()
                    .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned()),
                headers: headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_owned(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                body: body.clone(),
            };
            self.inner
                .requests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(rec);
        }
        if authorized(headers) {
            Ok(())
        } else {
            Err(Reject::from(self.error(
                StatusCode::UNAUTHORIZED,
                ErrorBody {
                    message: "Incorrect API key provided. You must provide a non-empty key as `Authorization: Bearer <key>` or `api-key: <key>`.".into(),
                    kind: "invalid_request_error".into(),
                    param: None,
                    code: Some("invalid_api_key".into()),
                },
                None,
            )))
        }
    }

    fn headers(&self, content_type: &'static str, started: Instant) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(12);
        h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(HeaderName::from_static("x-request-id"), self.request_id());
        h.insert(
            HeaderName::from_static("openai-processing-ms"),
            HeaderValue::from(started.elapsed().as_millis() as u64),
        );
        h.insert(
            HeaderName::from_static("openai-version"),
            HeaderValue::from_static("2020-10-01"),
        );
        for (k, v) in RATE_LIMIT_HEADERS {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    fn json_response(&self, status: StatusCode, body: Vec<u8>, started: Instant) -> Response {
        with_parts(
            status,
            self.headers("application/json", started),
            Body::from(body),
        )
    }

    fn error(&self, status: StatusCode, e: ErrorBody, retry_after: Option<&str>) -> Response {
        let mut h = self.headers("application/json", Instant::now());
        if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(v).ok()) {
            h.insert(RETRY_AFTER, v);
        }
        let mut body = Vec::with_capacity(256);
        push_json(&mut body, &json!({"error": e.to_json()}));
        with_parts(status, h, Body::from(body))
    }

    fn bad_request(&self, message: String, param: Option<&str>, code: Option<&str>) -> Response {
        self.error(
            StatusCode::BAD_REQUEST,
            ErrorBody {
                message,
                kind: "invalid_request_error".into(),
                param: param.map(str::to_owned),
                code: code.map(str::to_owned),
            },
            None,
        )
    }

    fn not_found(&self, id: &str) -> Response {
        self.error(
            StatusCode::NOT_FOUND,
            ErrorBody {
                message: format!("Response with id '{id}' not found."),
                kind: "invalid_request_error".into(),
                param: None,
                code: None,
            },
            None,
        )
    }

    /// Applies `mock_ttfb_ms` and decides a scripted HTTP failure.
    async fn scripted_failure(&self, s: &Script) -> Option<Response> {
        if s.ttfb_ms > 0 {
            tokio::time::sleep(Duration::from_millis(s.ttfb_ms)).await;
        }
        let fail = match s.fail_times {
            Some(n) => {
                let mut counters = self
                    .inner
                    .fail_counters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let seen = counters.entry(s.fail_key.clone()).or_insert(0);
                if *seen < n {
                    *seen += 1;
                    true
                } else {
                    false
                }
            }
            None => s.http_status.is_some(),
        };
        if !fail {
            return None;
        }
        let code = s.failure_status();
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut e = default_error(code);
        if let Some(c) = &s.error_code {
            e.code = Some(c.clone());
        }
        if let Some(t) = &s.error_type {
            e.kind = t.clone();
        }
        Some(self.error(status, e, s.retry_after.as_deref()))
    }

    fn check_previous(&self, prev: Option<&str>) -> Result<(), Reject> {
        match prev {
            Some(id) if self.inner.store.get(id).is_none() => Err(Reject::from(self.bad_request(
                format!("Previous response with id '{id}' not found."),
                Some("previous_response_id"),
                Some("previous_response_not_found"),
            ))),
            _ => Ok(()),
        }
    }
}

/// Assembles a response directly; the `(status, headers, body)` tuple route
/// would re-insert every header into a second map.
fn with_parts(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

const RATE_LIMIT_HEADERS: [(&str, &str); 6] = [
    ("x-ratelimit-limit-requests", "10000"),
    ("x-ratelimit-remaining-requests", "9999"),
    ("x-ratelimit-limit-tokens", "30000000"),
    ("x-ratelimit-remaining-tokens", "29999000"),
    ("x-ratelimit-reset-requests", "6ms"),
    ("x-ratelimit-reset-tokens", "2ms"),
];

fn authorized(headers: &HeaderMap) -> bool {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .is_some_and(|k| !k.trim().is_empty());
    bearer
        || headers
            .get("api-key")
            .is_some_and(|v| !v.as_bytes().iter().all(u8::is_ascii_whitespace))
}

/// The OpenAI error envelope's inner object.
struct ErrorBody {
    message: String,
    kind: String,
    param: Option<String>,
    code: Option<String>,
}

impl ErrorBody {
    fn to_json(&self) -> Value {
        json!({"message": self.message, "type": self.kind, "param": self.param, "code": self.code})
    }
}

/// Realistic defaults for a scripted `mock_http_status`.
fn default_error(status: u16) -> ErrorBody {
    let (message, kind, code): (&str, &str, Option<&str>) = match status {
        400 => ("Mock-scripted invalid request.", "invalid_request_error", None),
        401 => ("Incorrect API key provided.", "invalid_request_error", Some("invalid_api_key")),
        403 => ("You are not allowed to access this resource.", "invalid_request_error", None),
        404 => (
            "The model does not exist or you do not have access to it.",
            "invalid_request_error",
            Some("model_not_found"),
        ),
        408 => ("Request timed out.", "timeout", Some("timeout")),
        409 => ("The request conflicted with another request.", "invalid_request_error", Some("conflict")),
        429 => (
            "Rate limit reached for requests in organization org-mock on requests per min (RPM): Limit 10000, Used 10000, Requested 1. Please try again in 6ms.",
            "requests",
            Some("rate_limit_exceeded"),
        ),
        500 => (
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            Some("server_error"),
        ),
        502 => ("Bad gateway.", "server_error", Some("bad_gateway")),
        503 => (
            "The engine is currently overloaded, please try again later.",
            "server_error",
            Some("service_unavailable"),
        ),
        504 => ("Gateway timeout.", "server_error", Some("timeout")),
        s if s < 500 => ("Mock-scripted client error.", "invalid_request_error", None),
        _ => ("Mock-scripted server error.", "server_error", Some("server_error")),
    };
    ErrorBody {
        message: message.to_owned(),
        kind: kind.to_owned(),
        param: None,
        code: code.map(str::to_owned),
    }
}

/// An early answer (an error) from a handler step. Boxed because `Response`
/// is large and travels through every `?`.
struct Reject(Box<Response>);

impl From<Response> for Reject {
    fn from(r: Response) -> Self {
        Reject(Box::new(r))
    }
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        *self.0
    }
}

type Handled = Result<Response, Reject>;

/// The fields of a create request the mock reads or echoes; everything else
/// is ignored, like unknown fields in a lenient upstream.
#[derive(Deserialize, Default)]
struct CreateRequest {
    model: Option<String>,
    input: Option<Value>,
    stream: Option<bool>,
    store: Option<bool>,
    background: Option<bool>,
    service_tier: Option<String>,
    reasoning: Option<Value>,
    metadata: Option<Map<String, Value>>,
    previous_response_id: Option<String>,
    instructions: Option<Value>,
    max_output_tokens: Option<Value>,
    max_tool_calls: Option<Value>,
    parallel_tool_calls: Option<Value>,
    prompt_cache_key: Option<Value>,
    safety_identifier: Option<Value>,
    temperature: Option<Value>,
    text: Option<Value>,
    tool_choice: Option<Value>,
    tools: Option<Value>,
    top_logprobs: Option<Value>,
    top_p: Option<Value>,
    truncation: Option<Value>,
    user: Option<Value>,
}

fn parse_body<T: for<'de> Deserialize<'de>>(m: &MockUpstream, body: &Bytes) -> Result<T, Reject> {
    serde_json::from_slice(body).map_err(|e| {
        Reject::from(m.bad_request(
            format!("We could not parse the JSON body of your request. (HINT: {e})"),
            None,
            None,
        ))
    })
}

fn require_model<'a>(m: &MockUpstream, model: Option<&'a str>) -> Result<&'a str, Reject> {
    match model {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(Reject::from(m.bad_request(
            "Missing required parameter: 'model'.".into(),
            Some("model"),
            Some("missing_required_parameter"),
        ))),
    }
}

fn script_of(m: &MockUpstream, meta: Option<&Map<String, Value>>) -> Result<Script, Reject> {
    Script::from_metadata(meta).map_err(|e| {
        Reject::from(m.bad_request(e.message, Some(&format!("metadata.{}", e.key)), None))
    })
}

/// The model as the backend names what served it.
fn dated(model: &str) -> String {
    if has_date_suffix(model) {
        model.to_owned()
    } else {
        format!("{model}{DATE_SUFFIX}")
    }
}

/// Whether `model` already ends in `-YYYY-MM-DD`.
fn has_date_suffix(model: &str) -> bool {
    let b = model.as_bytes();
    if b.len() < 11 {
        return false;
    }
    let tail = &b[b.len() - 11..];
    tail.iter().enumerate().all(|(i, c)| match i {
        0 | 5 | 8 => *c == b'-',
        _ => c.is_ascii_digit(),
    })
}

fn served_tier(requested: Option<&str>) -> &str {
    match requested {
        None | Some("auto") | Some("default") => "default",
        Some("flex") => "flex",
        Some("priority") | Some("fast") => "priority",
        Some(other) => other,
    }
}

fn default_input_tokens(input: Option<&Value>) -> u64 {
    10 + input.map_or(0, json_len) as u64 / 4
}

fn push_field(buf: &mut Vec<u8>, name: &str, v: Option<&Value>, default: &str) {
    buf.extend_from_slice(b",\"");
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"\":");
    match v {
        Some(v) => push_json(buf, v),
        None => buf.extend_from_slice(default.as_bytes()),
    }
}

/// Builds the plan of a create request (everything but transport scripting).
fn build_plan(m: &MockUpstream, req: CreateRequest, model: &str, s: &Script) -> Plan {
    let t = now();
    let uuid = m.new_uuid(t.as_millis() as u64);
    let hex = uuid.simple().to_string();
    let is_reasoning_model = model.starts_with('o') || model.starts_with("gpt-5");
    let reasoning = if req.reasoning.is_some() || is_reasoning_model {
        let summary = req
            .reasoning
            .as_ref()
            .and_then(|r| r.get("summary"))
            .is_some_and(Value::is_string);
        Some(summary)
    } else {
        None
    };
    let usage = match s.usage {
        UsageSpec::Null => None,
        UsageSpec::Exact(u) => Some(u),
        UsageSpec::Formula => {
            let r = if reasoning.is_some() {
                DEFAULT_REASONING_TOKENS
            } else {
                0
            };
            Some(Usage {
                input: default_input_tokens(req.input.as_ref()),
                cached: 0,
                output: 20 + 5 * s.deltas as u64 + r,
                reasoning: r,
            })
        }
    };

    let mut model_field = Vec::with_capacity(model.len() + 24);
    model_field.extend_from_slice(b"\"model\":");
    if has_date_suffix(model) {
        push_json(&mut model_field, model);
    } else {
        push_json(&mut model_field, &format!("{model}{DATE_SUFFIX}"));
    }

    let mut requested_tier = Vec::with_capacity(16);
    push_json(
        &mut requested_tier,
        req.service_tier.as_deref().unwrap_or("auto"),
    );
    let mut final_tier = Vec::with_capacity(16);
    let served = s
        .tier
        .as_deref()
        .unwrap_or_else(|| served_tier(req.service_tier.as_deref()));
    push_json(&mut final_tier, served);

    let background = req.background == Some(true);
    let store = req.store != Some(false);
    let reasoning_echo = match &req.reasoning {
        Some(Value::Object(r)) => json!({
            "effort": r.get("effort").cloned().unwrap_or_else(|| json!("medium")),
            "summary": r.get("summary").cloned().unwrap_or(Value::Null),
        }),
        Some(other) => other.clone(),
        None if is_reasoning_model => json!({"effort": "medium", "summary": null}),
        None => json!({"effort": null, "summary": null}),
    };

    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(if background {
        b",\"background\":true"
    } else {
        b",\"background\":false"
    });
    push_field(&mut head, "instructions", req.instructions.as_ref(), "null");
    push_field(
        &mut head,
        "max_output_tokens",
        req.max_output_tokens.as_ref(),
        "null",
    );
    push_field(
        &mut head,
        "max_tool_calls",
        req.max_tool_calls.as_ref(),
        "null",
    );
    push_field(
        &mut head,
        "parallel_tool_calls",
        req.parallel_tool_calls.as_ref(),
        "true",
    );
    head.extend_from_slice(b",\"previous_response_id\":");
    push_json(&mut head, &req.previous_response_id);
    push_field(
        &mut head,
        "prompt_cache_key",
        req.prompt_cache_key.as_ref(),
        "null",
    );
    push_field(&mut head, "reasoning", Some(&reasoning_echo), "null");
    push_field(
        &mut head,
        "safety_identifier",
        req.safety_identifier.as_ref(),
        "null",
    );
    head.extend_from_slice(if store {
        b",\"store\":true"
    } else {
        b",\"store\":false"
    });
    push_field(&mut head, "temperature", req.temperature.as_ref(), "1.0");
    push_field(
        &mut head,
        "text",
        req.text.as_ref(),
        "{\"format\":{\"type\":\"text\"},\"verbosity\":\"medium\"}",
    );
    push_field(
        &mut head,
        "tool_choice",
        req.tool_choice.as_ref(),
        "\"auto\"",
    );
    push_field(&mut head, "tools", req.tools.as_ref(), "[]");
    push_field(&mut head, "top_logprobs", req.top_logprobs.as_ref(), "0");
    push_field(&mut head, "top_p", req.top_p.as_ref(), "1.0");
    push_field(
        &mut head,
        "truncation",
        req.truncation.as_ref(),
        "\"disabled\"",
    );
    push_field(&mut head, "user", req.user.as_ref(), "null");
    head.extend_from_slice(b",\"metadata\":");
    match &req.metadata {
        Some(meta) => push_json(&mut head, meta),
        None => head.extend_from_slice(b"{}"),
    }

    Plan {
        key: uuid.as_u128(),
        id: format!("resp_{hex}"),
        hex,
        created_at: t.as_secs(),
        model_field,
        head,
        requested_tier,
        final_tier,
        reasoning,
        deltas: s.deltas,
        delta_bytes: s.delta_bytes,
        status: s.status,
        usage,
        background,
        input: req.input.unwrap_or(Value::Null),
    }
}

fn sse_response(m: &MockUpstream, stream: EventStream, started: Instant) -> Response {
    let mut h = m.headers("text/event-stream; charset=utf-8", started);
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    with_parts(StatusCode::OK, h, Body::from_stream(stream))
}

async fn create(
    State(m): State<MockUpstream>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Handled {
    let started = Instant::now();
    m.intake(&method, &uri, &headers, &body)?;
    let req: CreateRequest = parse_body(&m, &body)?;
    let model = require_model(&m, req.model.as_deref())?.to_owned();
    let script = script_of(&m, req.metadata.as_ref())?;
    if let Some(r) = m.scripted_failure(&script).await {
        return Ok(r);
    }
    m.check_previous(req.previous_response_id.as_deref())?;
    let stream = req.stream == Some(true);
    let store = req.store != Some(false);
    let tier = script
        .tier
        .clone()
        .unwrap_or_else(|| served_tier(req.service_tier.as_deref()).to_owned());
    let plan = Arc::new(build_plan(&m, req, &model, &script));
    m.inner
        .org
        .record(&headers, &dated(&model), &tier, plan.usage);
    if store {
        m.inner.store.insert(Arc::clone(&plan));
    }

    if stream {
        let t = Transport {
            framing: script.framing,
            delay: (script.delay_ms > 0).then(|| Duration::from_millis(script.delay_ms)),
            chunk_bytes: script.chunk_bytes,
            cut_after: script.cut_after,
            garbage: script.garbage,
            error_event: script.error_event,
            starting_after: None,
        };
        return Ok(sse_response(&m, EventStream::new(plan, t), started));
    }

    let snap = if plan.background {
        Snapshot::Queued
    } else {
        Snapshot::Final
    };
    let json = render::response_json(&plan, snap);
    if script.cut_after.is_some() {
        let json_half = json.len() / 2;
        let half = Bytes::from(json).slice(..json_half);
        let body = Body::from_stream(TruncatedBody::new(half));
        return Ok(with_parts(
            StatusCode::OK,
            m.headers("application/json", started),
            body,
        ));
    }
    Ok(m.json_response(StatusCode::OK, json, started))
}

/// Minimal query-string reader (the mock only needs a few flat keys).
fn query_param<'a>(uri: &'a Uri, key: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

async fn retrieve(
    State(m): State<MockUpstream>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Handled {
    let started = Instant::now();
    m.intake(&method, &uri, &headers, &body)?;
    let Some(plan) = m.inner.store.get(&id) else {
        return Ok(m.not_found(&id));
    };
    if matches!(query_param(&uri, "stream"), Some("true") | Some("1")) {
        let starting_after = match query_param(&uri, "starting_after") {
            None | Some("") => None,
            Some(v) => match v.parse::<usize>() {
                Ok(n) => Some(n),
                Err(_) => {
                    return Ok(m.bad_request(
                        format!("Invalid value for 'starting_after': {v:?}."),
                        Some("starting_after"),
                        Some("invalid_value"),
                    ))
                }
            },
        };
        let t = Transport {
            starting_after,
            ..Transport::default()
        };
        return Ok(sse_response(&m, EventStream::new(plan, t), started));
    }
    Ok(m.json_response(
        StatusCode::OK,
        render::response_json(&plan, Snapshot::Final),
        started,
    ))
}

async fn delete(
    State(m): State<MockUpstream>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Handled {
    let started = Instant::now();
    m.intake(&method, &uri, &headers, &body)?;
    if !m.inner.store.remove(&id) {
        return Ok(m.not_found(&id));
    }
    let mut out = Vec::with_capacity(96);
    push_json(
        &mut out,
        &json!({"id": id, "object": "response", "deleted": true}),
    );
    Ok(m.json_response(StatusCode::OK, out, started))
}

async fn cancel(
    State(m): State<MockUpstream>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Handled {
    let started = Instant::now();
    m.intake(&method, &uri, &headers, &body)?;
    let Some(plan) = m.inner.store.get(&id) else {
        return Ok(m.not_found(&id));
    };
    if !plan.background {
        return Ok(m.bad_request(
            "Only responses created with background=true can be cancelled.".into(),
            None,
            None,
        ));
    }
    // Idempotent: a second cancel returns the same cancelled object.
    let plan = if plan.status == Status::Cancelled {
        plan
    } else {
        let mut p = (*plan).clone();
        p.status = Status::Cancelled;
        let p = Arc::new(p);
        m.inner.store.replace(Arc::clone(&p));
        p
    };
    Ok(m.json_response(
        StatusCode::OK,
        render::response_json(&plan, Snapshot::Final),
        started,
    ))
}

/// The request `input` as stored input items (ids are derived from the
/// response id so repeated listings agree).
fn input_item_list(plan: &Plan) -> Vec<Value> {
    let message = |idx: usize, role: &str, content: Value| {
        json!({"id": format!("msg_{}_{idx}", plan.hex), "type": "message", "role": role,
               "status": "completed", "content": content})
    };
    let text_part = |role: &str, text: &Value| {
        let kind = if role == "assistant" {
            "output_text"
        } else {
            "input_text"
        };
        json!([{"type": kind, "text": text}])
    };
    match &plan.input {
        Value::String(_) => vec![message(0, "user", text_part("user", &plan.input))],
        Value::Array(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let obj = item.as_object()?;
                let mut obj = obj.clone();
                if !obj.contains_key("type") && obj.contains_key("role") {
                    obj.insert("type".into(), json!("message"));
                }
                if let (Some(role), Some(c @ Value::String(_))) = (
                    obj.get("role").and_then(Value::as_str).map(str::to_owned),
                    obj.get("content").cloned(),
                ) {
                    obj.insert("content".into(), text_part(&role, &c));
                }
                obj.entry("id")
                    .or_insert_with(|| json!(format!("msg_{}_{i}", plan.hex)));
                Some(Value::Object(obj))
            })
            .collect(),
        _ => Vec::new(),
    }
}

async fn input_items(
    State(m): State<MockUpstream>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Handled {
    let started = Instant::now();
    m.intake(&method, &uri, &headers, &body)?;
    let Some(plan) = m.inner.store.get(&id) else {
        return Ok(m.not_found(&id));
    };
    let mut items = input_item_list(&plan);
    if query_param(&uri, "order") != Some("asc") {
        items.reverse();
    }
    if let Some(after) = query_param(&uri, "after") {
        if let Some(pos) = items
            .iter()
            .position(|i| i.get("id").and_then(Value::as_str) == Some(after))
        {
            items.drain(..=pos);
        }
    }
    let limit = query_param(&uri, "limit")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, 100);
    let has_more = items.len() > limit;
    items.truncate(limit);
    let first = items
        .first()
        .and_then(|i| i.get("id"))
        .cloned()
        .unwrap_or(Value::Null);
    let last = items
        .last()
        .and_then(|i| i.get("id"))
        .cloned()
        .unwrap_or(Value::Null);
    let mut out = Vec::with_capacity(256);
    push_json(
        &mut out,
        &json!({"object": "list", "data": items, "first_id": first, "last_id": last, "has_more": has_more}),
    );
    Ok(m.json_response(StatusCode::OK, out, started))
}

/// Body of `input_tokens` and `compact` requests.
#[derive(Deserialize)]
struct AuxRequest {
    model: Option<String>,
    input: Option<Value>,
    metadata: Option<Map<String, Value>>,
    previous_response_id: Option<String>,
    stream: Option<Value>,
}

async fn input_tokens(
    State(m): State<MockUpstream>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Handled {
    let started = Instant::now();
    m.intake(&method, &uri, &headers, &body)?;
    let req: AuxRequest = parse_body(&m, &body)?;
    let script = script_of(&m, req.metadata.as_ref())?;
    if let Some(r) = m.scripted_failure(&script).await {
        return Ok(r);
    }
    m.check_previous(req.previous_response_id.as_deref())?;
    let n = match script.usage {
        UsageSpec::Exact(u) => u.input,
        _ => default_input_tokens(req.input.as_ref()),
    };
    let mut out = Vec::with_capacity(64);
    push_json(
        &mut out,
        &json!({"object": "response.input_tokens", "input_tokens": n}),
    );
    Ok(m.json_response(StatusCode::OK, out, started))
}

async fn compact(
    State(m): State<MockUpstream>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Handled {
    let started = Instant::now();
    m.intake(&method, &uri, &headers, &body)?;
    // `stream` must be rejected even when null, so look for the key itself.
    let has_stream =
        serde_json::from_slice::<Map<String, Value>>(&body).is_ok_and(|o| o.contains_key("stream"));
    let req: AuxRequest = parse_body(&m, &body)?;
    if has_stream || req.stream.is_some() {
        return Ok(m.bad_request(
            "Unknown parameter: 'stream'.".into(),
            Some("stream"),
            Some("unknown_parameter"),
        ));
    }
    require_model(&m, req.model.as_deref())?;
    let script = script_of(&m, req.metadata.as_ref())?;
    if let Some(r) = m.scripted_failure(&script).await {
        return Ok(r);
    }
    m.check_previous(req.previous_response_id.as_deref())?;
    let t = now();
    let hex = m.new_uuid(t.as_millis() as u64).simple().to_string();
    let served = match script.usage {
        UsageSpec::Exact(u) => Some(u),
        UsageSpec::Null => None,
        UsageSpec::Formula => Some(Usage {
            input: default_input_tokens(req.input.as_ref()),
            cached: 0,
            output: 32,
            reasoning: 0,
        }),
    };
    if let Some(model) = req.model.as_deref() {
        m.inner
            .org
            .record(&headers, &dated(model), "default", served);
    }
    let usage = match script.usage {
        UsageSpec::Exact(u) => json!({
            "input_tokens": u.input, "input_tokens_details": {"cached_tokens": u.cached},
            "output_tokens": u.output, "output_tokens_details": {"reasoning_tokens": u.reasoning},
            "total_tokens": u.input.saturating_add(u.output)}),
        UsageSpec::Null => Value::Null,
        UsageSpec::Formula => {
            let input = default_input_tokens(req.input.as_ref());
            json!({
                "input_tokens": input, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 32, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input + 32})
        }
    };
    // Compaction keeps the user messages and replaces the rest with one
    // opaque item, like the real endpoint.
    let holder = Plan {
        key: 0,
        id: String::new(),
        hex: hex.clone(),
        created_at: 0,
        model_field: Vec::new(),
        head: Vec::new(),
        requested_tier: Vec::new(),
        final_tier: Vec::new(),
        reasoning: None,
        deltas: 0,
        delta_bytes: 1,
        status: Status::Completed,
        usage: None,
        background: false,
        input: req.input.unwrap_or(Value::Null),
    };
    let mut output: Vec<Value> = input_item_list(&holder)
        .into_iter()
        .filter(|i| i.get("role").and_then(Value::as_str) == Some("user"))
        .collect();
    output.push(json!({"id": format!("cmp_{hex}_0"), "type": "compaction",
                       "encrypted_content": format!("gAAAAB{hex}mockcompaction")}));
    let mut out = Vec::with_capacity(512);
    push_json(
        &mut out,
        &json!({"id": format!("cmp_{hex}"), "object": "response.compaction", "created_at": t.as_secs(),
                "output": output, "usage": usage}),
    );
    Ok(m.json_response(StatusCode::OK, out, started))
}

async fn mock_requests(State(m): State<MockUpstream>) -> Response {
    let list: Vec<Value> = m
        .requests()
        .iter()
        .map(|r| {
            json!({"method": r.method, "path": r.path, "headers": r.headers,
                   "body": String::from_utf8_lossy(&r.body)})
        })
        .collect();
    let mut out = Vec::with_capacity(256 * list.len() + 2);
    push_json(&mut out, &list);
    m.json_response(StatusCode::OK, out, Instant::now())
}

async fn fallback(
    State(m): State<MockUpstream>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Counted and recorded so a misrouted gateway request shows up in tests.
    let _ = m.intake(&method, &uri, &headers, &body);
    m.error(
        StatusCode::NOT_FOUND,
        ErrorBody {
            message: format!("Invalid URL ({method} {})", uri.path()),
            kind: "invalid_request_error".into(),
            param: None,
            code: None,
        },
        None,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn date_suffix_detection() {
        assert!(has_date_suffix("gpt-5-2025-08-07"));
        assert!(!has_date_suffix("gpt-5"));
        assert!(!has_date_suffix("gpt-5-mini"));
        assert!(!has_date_suffix("x-2025-08-0a"));
    }

    #[test]
    fn tier_mapping() {
        assert_eq!(served_tier(None), "default");
        assert_eq!(served_tier(Some("auto")), "default");
        assert_eq!(served_tier(Some("default")), "default");
        assert_eq!(served_tier(Some("flex")), "flex");
        assert_eq!(served_tier(Some("fast")), "priority");
        assert_eq!(served_tier(Some("priority")), "priority");
        assert_eq!(served_tier(Some("scale")), "scale");
    }

    #[test]
    fn uuids_are_v7_and_unique() {
        let m = MockUpstream::without_recording();
        let a = m.new_uuid(1_755_500_000_000);
        let b = m.new_uuid(1_755_500_000_000);
        assert_ne!(a, b);
        assert_eq!(a.get_version_num(), 7);
    }

    #[test]
    fn input_tokens_formula() {
        assert_eq!(default_input_tokens(None), 10);
        assert_eq!(default_input_tokens(Some(&json!("hello"))), 11);
        let arr = json!([{"role": "user", "content": "hello world"}]);
        // [{"content":"hello world","role":"user"}] = 41 bytes
        assert_eq!(default_input_tokens(Some(&arr)), 10 + 41 / 4);
    }

    #[test]
    fn auth_rules() {
        let mut h = HeaderMap::new();
        assert!(!authorized(&h));
        h.insert("authorization", HeaderValue::from_static("Bearer "));
        assert!(!authorized(&h));
        h.insert("authorization", HeaderValue::from_static("Bearer sk-x"));
        assert!(authorized(&h));
        let mut h = HeaderMap::new();
        h.insert("api-key", HeaderValue::from_static("k"));
        assert!(authorized(&h));
    }
}
