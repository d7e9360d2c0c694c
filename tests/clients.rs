//! The compatibility suite: real, pinned clients with their default settings
//! (only base URL, key and model configured) through a real `tollgate serve`
//! process in front of the project's simulated upstream.
//!
//! Each client runs the same calls twice: (a) directly against a simulated
//! upstream and (b) through Tollgate. What the client got (output text, ids'
//! shapes, event type sequences, usage) must be the same once ids, times and
//! obfuscation padding are normalised, and the ledger must have exactly one
//! row per request with the usage the upstream reported and its exact cost at
//! the price this file sets.
//!
//! | client | pin | calls |
//! |---|---|---|
//! | openai-python | [`OPENAI_PYTHON`] (newest 3.x) | create JSON and stream, the stream helper, retrieve, `responses.connect()` (WebSocket) |
//! | openai-node | [`OPENAI_NODE`] (`tests/clients/package-lock.json`) | create JSON and stream, `ResponsesWS` (WebSocket) |
//! | OpenAI Agents SDK | [`AGENTS`] | `Runner.run`, `Runner.run_streamed`, the default client from `OPENAI_BASE_URL`, `turing/` names, the WebSocket transport |
//! | Codex CLI | [`CODEX`] (`tests/clients/package-lock.json`) | `codex exec` and `codex exec resume` with a custom provider |
//!
//! openai-python 1.102.0 is driven by `tests/sdk_python.rs`. Python venvs
//! are built under `target/` on first use (`common/python.rs`); the npm
//! packages come from `npm ci` in `tests/clients`. `scripts/test` (the
//! README's test command) installs all of it; a missing prerequisite fails
//! the test, naming what is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/python.rs"]
mod python;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::GatewayProcess;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::PgPool;
use tollgate::ledger::LedgerRow;
use tollgate::mock_upstream::{MockUpstream, RecordedRequest};

/// openai-python: the newest 3.x release (`pip index versions openai`).
const OPENAI_PYTHON: &str = "3.57.0";
/// `realtime` brings `websockets`, which `responses.connect()` needs.
const OPENAI_PYTHON_PINS: &[&str] = &["openai[realtime]==3.57.0"];
/// openai-agents, with the openai-python it runs on.
const AGENTS: &str = "0.24.0";
const AGENTS_PINS: &[&str] = &["openai-agents==0.24.0", "openai==3.57.0"];
/// As pinned in `tests/clients/package.json`.
const OPENAI_NODE: &str = "7.55.0";
const CODEX: &str = "0.169.0";

/// The model every client asks for (`turing/gpt-5.4` through Tollgate).
const MODEL: &str = "gpt-5.4";
/// Its price in this file, USD per token: awkward decimals, a cached and a
/// reasoning rate of their own.
const PRICE: [(&str, &str); 4] = [
    ("input_cost_per_token", "0.0000025"),
    ("cache_read_input_token_cost", "0.00000025"),
    ("output_cost_per_token", "0.000015"),
    ("output_cost_per_reasoning_token", "0.0000175"),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn clients_dir() -> PathBuf {
    root().join("tests/clients")
}

/// Fails the test when a prerequisite is missing (never a silent skip).
fn require(test: &str, missing: Option<String>) {
    if let Some(reason) = missing {
        panic!("{test} cannot run: {reason} (scripts/test installs it)");
    }
}

fn python_missing() -> Option<String> {
    let found = std::process::Command::new("python3")
        .args(["-c", "import venv"])
        .output()
        .is_ok_and(|o| o.status.success());
    (!found).then(|| "python3 with the venv module is missing".to_owned())
}

/// Node, and `package` installed by `npm ci` in `tests/clients`.
fn node_missing(package: &str) -> Option<String> {
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("node is missing".into());
    }
    let installed = clients_dir().join("node_modules").join(package);
    (!installed.join("package.json").exists()).then(|| {
        format!(
            "{} is missing (npm ci in tests/clients)",
            installed.display()
        )
    })
}

/// The gateway process on the test's database with [`MODEL`] priced, its
/// recording upstream, and a second simulated upstream for direct runs.
struct Suite {
    pool: PgPool,
    gateway: GatewayProcess,
    direct: MockUpstream,
    direct_base: String,
}

impl Suite {
    async fn start(pool: PgPool) -> Self {
        let sheet = tollgate::pricing::PriceSheet::from_fields(
            &PRICE
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.parse().unwrap()))
                .collect(),
            None,
        )
        .unwrap();
        let effective = chrono::Utc::now() - chrono::Duration::seconds(5);
        tollgate::pricing::insert_version(&pool, MODEL, Some(&sheet), effective, "test")
            .await
            .unwrap();
        let gateway = GatewayProcess::start_recording(&pool, "", &[]).await;
        let direct = MockUpstream::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let direct_base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(direct.clone().serve(listener));
        Self {
            pool,
            gateway,
            direct,
            direct_base,
        }
    }

    /// The client settings of a direct run: the upstream, any key, the
    /// upstream's model name.
    fn direct_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CLIENT_BASE_URL", format!("{}/v1", self.direct_base)),
            ("CLIENT_API_KEY", "sk-direct".into()),
            ("CLIENT_MODEL", MODEL.into()),
        ]
    }

    /// Through Tollgate: its URL, the tenant key, the platform's model name;
    /// and a model it does not know, for what only it answers.
    fn through_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CLIENT_BASE_URL", format!("{}/v1", self.gateway.base)),
            ("CLIENT_API_KEY", self.gateway.key.clone()),
            ("CLIENT_MODEL", format!("turing/{MODEL}")),
            ("CLIENT_UNKNOWN_MODEL", "turing/gpt-unknown".into()),
        ]
    }

    /// Every ledger row, oldest first, once `n` are stored; then, after a
    /// pause, that no more arrive.
    async fn rows(&self, n: usize) -> Vec<LedgerRow> {
        let read = || async {
            sqlx::query_as::<_, LedgerRow>(&format!(
                "SELECT {} FROM usage_ledger ORDER BY id",
                tollgate::ledger::COLUMNS
            ))
            .fetch_all(&self.pool)
            .await
            .unwrap()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while read().await.len() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rows = read().await;
        assert_eq!(rows.len(), n, "exactly {n} ledger rows: {rows:#?}");
        let mut ids: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n, "request ids are unique");
        rows
    }
}

/// Runs `program args…` in `dir` with `env` (no ambient OpenAI settings);
/// its standard output as JSON. A failure fails the test with its stderr.
async fn run_json(
    program: &Path,
    args: &[&str],
    dir: &Path,
    env: &[(&'static str, String)],
) -> Value {
    let output = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new(program)
            .args(args)
            .current_dir(dir)
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_BASE_URL")
            .env_remove("OPENAI_ORG_ID")
            .env_remove("OPENAI_PROJECT_ID")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{} {args:?} took over 180 s", program.display()))
    .unwrap();
    assert!(
        output.status.success(),
        "{} {args:?} failed ({}):\n{}",
        program.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{} {args:?} printed no JSON ({e}):\n{}",
            program.display(),
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// Ids, times and padding that legitimately differ between two runs, made
/// comparable: `resp_0192…` becomes `resp_<hex32>` (the shape stays
/// checked), uuids `<uuid>`, `created_at`/`completed_at` numbers `<time>`,
/// `obfuscation` strings `<obfuscation>`.
fn normalise(value: &mut Value) {
    match value {
        Value::String(s) => {
            if let Some(shape) = id_shape(s) {
                *s = shape;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise),
        Value::Object(members) => {
            for (key, v) in members.iter_mut() {
                match key.as_str() {
                    "created_at" | "completed_at" if v.is_number() => *v = json!("<time>"),
                    "obfuscation" if v.is_string() => *v = json!("<obfuscation>"),
                    _ => normalise(v),
                }
            }
        }
        _ => {}
    }
}

fn id_shape(s: &str) -> Option<String> {
    let hex = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit());
    let uuid = |t: &str| {
        let parts: Vec<&str> = t.split('-').collect();
        let lengths: Vec<usize> = parts.iter().map(|p| p.len()).collect();
        lengths == [8, 4, 4, 4, 12] && parts.iter().all(|p| hex(p))
    };
    if uuid(s) {
        return Some("<uuid>".to_owned());
    }
    let (prefix, rest) = s.split_once('_')?;
    if !["resp", "msg", "rs", "fc", "req", "cmp"].contains(&prefix) {
        return None;
    }
    if rest.len() >= 16 && hex(rest) {
        Some(format!("{prefix}_<hex{}>", rest.len()))
    } else {
        uuid(rest).then(|| format!("{prefix}_<uuid>"))
    }
}

/// The first place where `a` and `b` differ, as a JSON path.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys()) {
                let (p, q) = (x.get(key), y.get(key));
                match (p, q) {
                    (Some(p), Some(q)) => {
                        if let Some(d) = first_difference(p, q, &format!("{path}.{key}")) {
                            return Some(d);
                        }
                    }
                    _ => return Some(format!("{path}.{key}: {p:?} vs {q:?}")),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                if let Some(d) = first_difference(p, q, &format!("{path}[{i}]")) {
                    return Some(d);
                }
            }
            (x.len() != y.len()).then(|| format!("{path}: {} vs {} items", x.len(), y.len()))
        }
        _ => (a != b).then(|| format!("{path}: {a} vs {b}")),
    }
}

/// Direct and through runs saw the same thing; returns the through run's
/// `gateway_only` part (what only Tollgate answers), which is left out.
fn assert_same(client: &str, mut direct: Value, mut through: Value) -> Value {
    let gateway_only = through
        .as_object_mut()
        .and_then(|o| o.remove("gateway_only"))
        .unwrap_or(Value::Null);
    assert!(direct.get("gateway_only").is_none());
    normalise(&mut direct);
    normalise(&mut through);
    if let Some(difference) = first_difference(&direct, &through, client) {
        panic!("{client}: direct and through Tollgate differ at {difference}");
    }
    gateway_only
}

/// What the simulated upstream reports for a create it received:
/// `(input, cached, output, reasoning)` (its `mock_usage` metadata, else its
/// documented formula, `src/mock_upstream/mod.rs`).
fn upstream_usage(body: &Value) -> [i64; 4] {
    let metadata = &body["metadata"];
    if let Some(usage) = metadata["mock_usage"].as_str() {
        let n: Vec<i64> = usage.split(',').map(|n| n.parse().unwrap()).collect();
        return [n[0], n[1], n[2], n[3]];
    }
    let input = match body.get("input") {
        Some(v) if !v.is_null() => 10 + serde_json::to_vec(v).unwrap().len() as i64 / 4,
        _ => 10,
    };
    let model = body["model"].as_str().unwrap_or_default();
    let reasoning = if body.get("reasoning").is_some_and(|r| !r.is_null())
        || model.starts_with('o')
        || model.starts_with("gpt-5")
    {
        64
    } else {
        0
    };
    let deltas: i64 = metadata["mock_deltas"]
        .as_str()
        .map_or(3, |d| d.parse().unwrap());
    [input, 0, 20 + 5 * deltas + reasoning, reasoning]
}

/// The cost of `usage` at [`PRICE`], by hand (README "What is billed").
fn cost(usage: [i64; 4]) -> Decimal {
    let rate = |i: usize| PRICE[i].1.parse::<Decimal>().unwrap();
    let [input, cached, output, reasoning] = usage.map(Decimal::from);
    (input - cached) * rate(0)
        + cached * rate(1)
        + (output - reasoning) * rate(2)
        + reasoning * rate(3)
}

fn usage_of(row: &LedgerRow) -> [i64; 4] {
    [
        row.input_tokens,
        row.cached_tokens,
        row.output_tokens,
        row.reasoning_tokens,
    ]
}

/// Every row of a request Tollgate sent upstream matches that request, in
/// order: its endpoint, the upstream's usage and the exact cost (creates),
/// cost 0 (retrievals, upstream errors). Returns the completed creates.
fn check_forwarded<'a>(rows: &'a [LedgerRow], sent: &[RecordedRequest]) -> Vec<&'a LedgerRow> {
    let forwarded: Vec<&LedgerRow> = rows.iter().filter(|r| r.upstream.is_some()).collect();
    assert_eq!(
        forwarded.len(),
        sent.len(),
        "one row per request that reached the upstream"
    );
    let mut creates = Vec::new();
    for (row, request) in forwarded.into_iter().zip(sent) {
        let what = format!(
            "{} {} → row {}",
            request.method, request.path, row.request_id
        );
        assert_eq!(row.tenant, "acme", "{what}");
        if request.method == "GET" {
            assert_eq!(row.endpoint, "responses.retrieve", "{what}");
            let id = request.path.rsplit('/').next().unwrap();
            assert_eq!(row.response_id.as_deref(), Some(id), "{what}");
            assert_eq!(row.cost, Some(Decimal::ZERO), "{what}");
            continue;
        }
        assert_eq!(request.method, "POST", "{what}");
        assert_eq!(request.path, "/v1/responses", "{what}");
        let body = request.json().unwrap();
        assert_eq!(row.endpoint, "responses.create", "{what}");
        assert_eq!(row.model.as_deref(), Some(MODEL), "{what}");
        assert_eq!(row.stream, body["stream"] == json!(true), "{what}");
        if row.status == "upstream_error" {
            assert_eq!(usage_of(row), [0; 4], "{what}");
            assert_eq!(row.cost, Some(Decimal::ZERO), "{what}");
            continue;
        }
        assert_eq!(row.status, "completed", "{what}");
        assert_eq!(row.usage_source, "reported", "{what}");
        let usage = upstream_usage(&body);
        assert_eq!(usage_of(row), usage, "{what}");
        assert_eq!(row.total_tokens, usage[0] + usage[2], "{what}");
        assert_eq!(row.cost, Some(cost(usage)), "{what}: exact cost");
        // The upstream sees the client's correlation id, else the row's own.
        let id = row.client_request_id.as_deref().unwrap_or(&row.request_id);
        assert_eq!(request.header("x-client-request-id"), Some(id), "{what}");
        creates.push(row);
    }
    creates
}

/// The usages a client reported, as `[[input, cached, output, reasoning]]`.
fn reported(seen: &Value) -> Vec<[i64; 4]> {
    seen["usages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            let n: Vec<i64> = u
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_i64().unwrap())
                .collect();
            [n[0], n[1], n[2], n[3]]
        })
        .collect()
}

/// Tollgate's own refusals of the unknown model: rejected rows, cost 0.
fn check_rejected(rows: &[LedgerRow], expected: usize) {
    let rejected: Vec<&LedgerRow> = rows.iter().filter(|r| r.upstream.is_none()).collect();
    assert_eq!(rejected.len(), expected);
    for row in rejected {
        assert_eq!(row.status, "rejected");
        assert_eq!(row.error_code.as_deref(), Some("model_not_found"));
        assert_eq!(row.cost, Some(Decimal::ZERO));
    }
}

/// The error event an SDK parsed for the unknown model over the socket.
fn check_socket_refusal(event: &Value) {
    assert_eq!(event["type"], "error", "{event}");
    assert_eq!(event["status"], 404, "{event}");
    assert_eq!(event["error"]["type"], "invalid_request_error", "{event}");
    assert_eq!(event["error"]["code"], "model_not_found", "{event}");
    assert_eq!(event["error"]["param"], "model", "{event}");
    assert!(event["error"]["message"].is_string(), "{event}");
}

/// The error event for a parameter the upstream refuses (relayed as is).
fn check_socket_error(event: &Value) {
    assert_eq!(event["type"], "error", "{event}");
    assert_eq!(event["status"], 400, "{event}");
    assert_eq!(event["error"]["type"], "invalid_request_error", "{event}");
    assert_eq!(event["error"]["param"], "metadata.mock_bogus", "{event}");
}

#[sqlx::test]
async fn openai_python_3(pool: PgPool) {
    require("openai_python_3", python_missing());
    let bin = tokio::task::spawn_blocking(|| python::venv("py-openai-3", OPENAI_PYTHON_PINS))
        .await
        .unwrap();
    let suite = Suite::start(pool).await;
    let script = clients_dir().join("openai_python.py");
    let script = script.to_str().unwrap();
    let python = bin.join("python");
    let version = ("CLIENT_EXPECT_VERSION", OPENAI_PYTHON.to_owned());
    let mut env = suite.direct_env();
    env.push(version.clone());
    let direct = run_json(&python, &[script], &root(), &env).await;
    let mut env = suite.through_env();
    env.push(version);
    let through = run_json(&python, &[script], &root(), &env).await;

    assert_eq!(
        through["create"]["output_text"],
        direct["create"]["output_text"]
    );
    assert!(through["create"]["output_text"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));
    assert_eq!(through["socket_error"]["class"], "ResponseWsError");
    check_socket_error(&through["socket_error"]["event"]);
    let gateway_only = assert_same("openai-python", direct.clone(), through.clone());
    let id = through["create"]["response"]["id"].as_str().unwrap();
    assert_eq!(id_shape(id).as_deref(), Some("resp_<hex32>"), "{id}");
    check_socket_refusal(&gateway_only["socket_unknown_model"]);
    assert_eq!(
        gateway_only["http_unknown_model"],
        json!({"status": 404, "code": "model_not_found", "param": "model", "type": "invalid_request_error"})
    );

    // JSON, stream, helper, retrieve; 4 socket responses and 1 socket error
    // upstream; 2 refusals of the unknown model.
    let rows = suite.rows(11).await;
    let sent = suite.gateway.mock.requests();
    let creates = check_forwarded(&rows, &sent);
    assert_eq!(
        creates.iter().map(|r| usage_of(r)).collect::<Vec<_>>(),
        reported(&through),
        "the rows bill what the SDK was told"
    );
    // The four responses on one socket: four streaming rows.
    assert!(creates[3..].iter().all(|r| r.stream));
    assert_eq!(creates.len(), 7);
    check_rejected(&rows, 2);
    // Both runs made the same upstream requests (the refusals aside).
    assert_eq!(suite.direct.requests().len(), sent.len());
}

#[sqlx::test]
async fn openai_node(pool: PgPool) {
    require("openai_node", node_missing("openai"));
    let suite = Suite::start(pool).await;
    let script = clients_dir().join("openai_node.mjs");
    let script = script.to_str().unwrap();
    let node = PathBuf::from("node");
    let version = ("CLIENT_EXPECT_VERSION", OPENAI_NODE.to_owned());
    let mut env = suite.direct_env();
    env.push(version.clone());
    let direct = run_json(&node, &[script], &clients_dir(), &env).await;
    let mut env = suite.through_env();
    env.push(version);
    let through = run_json(&node, &[script], &clients_dir(), &env).await;

    check_socket_error(&through["socket_error"]["event"]);
    let raised = &through["socket_error"]["raised"];
    assert_eq!(raised[0]["name"], "WebSocketError", "{raised}");
    assert_eq!(raised[0]["error"], through["socket_error"]["event"]);
    let gateway_only = assert_same("openai-node", direct, through.clone());
    let id = through["create"]["response"]["id"].as_str().unwrap();
    assert_eq!(id_shape(id).as_deref(), Some("resp_<hex32>"), "{id}");
    check_socket_refusal(&gateway_only["socket_unknown_model"]);
    assert_eq!(
        gateway_only["http_unknown_model"],
        json!({"status": 404, "code": "model_not_found", "param": "model", "type": "invalid_request_error"})
    );

    // JSON, stream; 4 socket responses and 1 socket error upstream; 2
    // refusals of the unknown model.
    let rows = suite.rows(9).await;
    let sent = suite.gateway.mock.requests();
    let creates = check_forwarded(&rows, &sent);
    assert_eq!(
        creates.iter().map(|r| usage_of(r)).collect::<Vec<_>>(),
        reported(&through)
    );
    assert!(!creates[0].stream && creates[1..].iter().all(|r| r.stream));
    check_rejected(&rows, 2);
    assert_eq!(suite.direct.requests().len(), sent.len());
}

#[sqlx::test]
async fn openai_agents_sdk(pool: PgPool) {
    require("openai_agents_sdk", python_missing());
    let bin = tokio::task::spawn_blocking(|| python::venv("py-agents", AGENTS_PINS))
        .await
        .unwrap();
    let suite = Suite::start(pool).await;
    let script = clients_dir().join("agents_sdk.py");
    let script = script.to_str().unwrap();
    let python = bin.join("python");
    let run = |mut env: Vec<(&'static str, String)>| {
        // The SDK's own default client reads the same settings from the
        // standard variables; tracing export stays off (no internet).
        let base = env[0].1.clone();
        let key = env[1].1.clone();
        env.retain(|(k, _)| *k != "CLIENT_UNKNOWN_MODEL");
        env.extend([
            ("OPENAI_BASE_URL", base),
            ("OPENAI_API_KEY", key),
            ("CLIENT_BARE_MODEL", MODEL.to_owned()),
            ("CLIENT_EXPECT_VERSION", AGENTS.to_owned()),
            ("OPENAI_AGENTS_DISABLE_TRACING", "1".to_owned()),
        ]);
        let python = python.clone();
        async move { run_json(&python, &[script], &root(), &env).await }
    };
    let direct = run(suite.direct_env()).await;
    let through = run(suite.through_env()).await;
    assert_eq!(through["prefix_refused"], "Unknown prefix: turing");
    assert_eq!(
        through["run"]["final_output"],
        direct["run"]["final_output"]
    );
    assert_same("openai-agents", direct, through.clone());

    let rows = suite.rows(5).await;
    let sent = suite.gateway.mock.requests();
    let creates = check_forwarded(&rows, &sent);
    assert_eq!(
        creates.iter().map(|r| usage_of(r)).collect::<Vec<_>>(),
        reported(&through)
    );
    // run, run_streamed, default client, model_id prefix, WebSocket streamed.
    let streams: Vec<bool> = creates.iter().map(|r| r.stream).collect();
    assert_eq!(streams, [false, true, false, false, true]);
    for (i, name) in [
        "run",
        "run_streamed",
        "run_default_client",
        "run_model_id_prefix",
        "run_streamed_websocket",
    ]
    .iter()
    .enumerate()
    {
        let usage = &through[name]["usage"];
        assert_eq!(usage["requests"], 1, "{name}");
        assert_eq!(usage["input"], creates[i].input_tokens, "{name}");
        assert_eq!(usage["output"], creates[i].output_tokens, "{name}");
        assert_eq!(
            through[name]["response_ids"][0].as_str(),
            creates[i].response_id.as_deref(),
            "{name}"
        );
    }
    assert_eq!(suite.direct.requests().len(), sent.len());
}

/// `codex exec` then `codex exec resume --last` with `CODEX_HOME` (emptied
/// first) holding only a custom provider at `base`: the JSONL events of
/// both, and how many requests `upstream` had seen after each.
async fn codex_session(
    base: &str,
    key: &str,
    home: &Path,
    work: &Path,
    upstream: &MockUpstream,
) -> (Value, Vec<usize>) {
    for entry in std::fs::read_dir(home).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            std::fs::remove_dir_all(path).unwrap();
        } else {
            std::fs::remove_file(path).unwrap();
        }
    }
    std::fs::write(
        home.join("config.toml"),
        format!(
            "model = \"{MODEL}\"\nmodel_provider = \"tollgate\"\n\n\
             [model_providers.tollgate]\nname = \"Tollgate\"\nbase_url = \"{base}/v1\"\n\
             env_key = \"TOLLGATE_API_KEY\"\nwire_api = \"responses\"\n"
        ),
    )
    .unwrap();
    let codex = clients_dir().join("node_modules/.bin/codex");
    let mut turns = Vec::new();
    let mut requests = Vec::new();
    for args in [
        &["exec", "--json", "--skip-git-repo-check", "Say hello."][..],
        &[
            "exec",
            "--json",
            "--skip-git-repo-check",
            "resume",
            "--last",
            "Once more.",
        ],
    ] {
        let output = tokio::time::timeout(
            Duration::from_secs(180),
            tokio::process::Command::new(&codex)
                .args(args)
                .current_dir(work)
                .env("CODEX_HOME", home)
                .env("HOME", home)
                .env("TOLLGATE_API_KEY", key)
                .env_remove("OPENAI_API_KEY")
                .env_remove("OPENAI_BASE_URL")
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("codex took over 180 s")
        .unwrap();
        assert!(
            output.status.success(),
            "codex {args:?} failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let events: Vec<Value> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        turns.push(Value::Array(events));
        requests.push(upstream.request_count());
    }
    (Value::Array(turns), requests)
}

/// The cumulative usage codex reports at the end of each `exec`.
fn codex_turn_usage(turn: &Value) -> [i64; 4] {
    let done = turn
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "turn.completed")
        .unwrap_or_else(|| panic!("no turn.completed in {turn}"));
    let u = &done["usage"];
    let n = |k: &str| u[k].as_i64().unwrap();
    [
        n("input_tokens"),
        n("cached_input_tokens"),
        n("output_tokens"),
        n("reasoning_output_tokens"),
    ]
}

#[sqlx::test]
async fn codex_cli(pool: PgPool) {
    let native = if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        "@openai/codex-linux-x64"
    } else {
        "@openai/codex"
    };
    require(
        "codex_cli",
        node_missing("@openai/codex").or_else(|| node_missing(native)),
    );
    let codex = clients_dir().join("node_modules/.bin/codex");
    let version = std::process::Command::new(&codex)
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("codex-cli {CODEX}")
    );
    let suite = Suite::start(pool).await;
    // The same directories for both runs: codex puts their paths in the
    // prompt, and the simulated usage counts the prompt's bytes. Its home
    // under target/ (codex declines to set up its helpers under /tmp), the
    // working directory outside any git repository.
    let home = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let (direct, direct_requests) = codex_session(
        &suite.direct_base,
        "sk-direct",
        home.path(),
        work.path(),
        &suite.direct,
    )
    .await;
    let (through, through_requests) = codex_session(
        &suite.gateway.base,
        &suite.gateway.key,
        home.path(),
        work.path(),
        &suite.gateway.mock,
    )
    .await;
    assert_eq!(direct_requests, through_requests, "requests per exec");
    let thread = through[0][0]["thread_id"].as_str().unwrap().to_owned();
    assert_eq!(through[0][0]["type"], "thread.started");
    assert_same("codex", direct.clone(), through.clone());

    // Codex made the same requests both ways, all of them model requests
    // (no GET /v1/models or other endpoint for a custom provider).
    let straight = suite.direct.requests();
    let sent = suite.gateway.mock.requests();
    assert!(!straight.is_empty());
    assert!(straight
        .iter()
        .all(|r| r.method == "POST" && r.path == "/v1/responses"));
    assert_eq!(straight.len(), sent.len(), "requests codex made");
    let rows = suite.rows(sent.len()).await;
    let creates = check_forwarded(&rows, &sent);
    assert_eq!(creates.len(), rows.len());
    for (original, forwarded) in straight.iter().zip(&sent) {
        let (mut original, mut forwarded) = (original.json().unwrap(), forwarded.json().unwrap());
        assert_eq!(original["stream"], true, "codex streams");
        // Codex offers web_search by default; the platform drops it, the
        // rest goes upstream as codex sent it (ids aside, as two sessions).
        let tools = original["tools"].as_array_mut().unwrap();
        let offered = tools.len();
        tools.retain(|t| t["type"] != "web_search");
        assert_eq!(tools.len(), offered - 1, "codex offered web_search");
        // Ids and times inside one JSON string: present, not compared.
        for body in [&mut original, &mut forwarded] {
            let metadata = body.as_object_mut().unwrap().remove("client_metadata");
            assert!(metadata.is_some_and(|m| m.is_object()));
            normalise(body);
        }
        if let Some(difference) = first_difference(&original, &forwarded, "body") {
            panic!("the forwarded body differs from codex's own beyond web_search: {difference}");
        }
    }
    for row in &rows {
        assert_eq!(row.dropped_tools.as_deref(), Some("web_search"));
        assert_eq!(row.client_request_id.as_deref(), Some(thread.as_str()));
    }
    // Codex's usage per exec is the thread's running total: the sum of the
    // rows of its requests so far.
    for ((turn, direct_turn), seen) in through
        .as_array()
        .unwrap()
        .iter()
        .zip(direct.as_array().unwrap())
        .zip(&through_requests)
    {
        let mut total = [0_i64; 4];
        for row in &rows[..*seen] {
            for (t, u) in total.iter_mut().zip(usage_of(row)) {
                *t += u;
            }
        }
        assert_eq!(codex_turn_usage(turn), total);
        assert_eq!(codex_turn_usage(direct_turn), total);
    }

    // The records API says the same as the rows.
    let records: Value = suite
        .gateway
        .http
        .get(format!("{}/v1/usage/records", suite.gateway.base))
        .bearer_auth(&suite.gateway.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let data = records["data"].as_array().unwrap();
    assert_eq!(data.len(), rows.len());
    assert!(data
        .iter()
        .all(|r| r["dropped_tools"] == "web_search" && r["client_request_id"] == thread.as_str()));

    // Codex does not show response headers: the request it sent, replayed
    // as it was, gets the dropped-tools header.
    let first = &straight[0];
    let mut replay = suite
        .gateway
        .http
        .post(format!("{}/v1/responses", suite.gateway.base))
        .bearer_auth(&suite.gateway.key)
        .body(first.body.clone());
    for (name, value) in &first.headers {
        if ["content-type", "accept", "user-agent", "originator"].contains(&name.as_str()) {
            replay = replay.header(name, value);
        }
    }
    let response = replay.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-tollgate-dropped-tools"], "web_search");
    let body = response.text().await.unwrap();
    assert!(body.contains("response.completed"));
    let rows = suite.rows(sent.len() + 1).await;
    assert_eq!(
        rows.last().unwrap().dropped_tools.as_deref(),
        Some("web_search")
    );
}
