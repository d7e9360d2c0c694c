//! Parsing of the `mock_*` scripting keys carried in a request's `metadata`.
//!
//! Tests script scenarios through `metadata` because the gateway forwards the
//! body but not custom headers. Unknown `mock_*` keys and malformed values are
//! rejected with a 400 naming the key, so a typo in a test fails loudly instead
//! of silently running the default scenario. The key reference lives in the
//! parent module's documentation.

use serde_json::{Map, Value};

use super::render::{Framing, Status, Usage};

/// Largest accepted `mock_deltas`; keeps a typo from allocating gigabytes.
const MAX_DELTAS: usize = 10_000_000;
/// Largest accepted `mock_delta_bytes`.
const MAX_DELTA_BYTES: usize = 1 << 20;
/// Largest accepted `mock_delay_ms` / `mock_ttfb_ms` (10 minutes).
const MAX_DELAY_MS: u64 = 600_000;

/// How `usage` should be reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum UsageSpec {
    /// Deterministic formula (see the module documentation).
    #[default]
    Formula,
    /// `mock_usage = "none"`: `usage: null`.
    Null,
    /// `mock_usage = "input,cached,output,reasoning"`.
    Exact(Usage),
}

/// A scripted scenario. `Default` is the plain successful response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Script {
    pub(crate) usage: UsageSpec,
    pub(crate) status: Status,
    pub(crate) tier: Option<String>,
    pub(crate) http_status: Option<u16>,
    pub(crate) error_code: Option<String>,
    pub(crate) error_type: Option<String>,
    pub(crate) retry_after: Option<String>,
    pub(crate) fail_times: Option<u32>,
    pub(crate) fail_key: String,
    pub(crate) deltas: usize,
    pub(crate) delta_bytes: usize,
    pub(crate) chunk_bytes: Option<usize>,
    pub(crate) delay_ms: u64,
    pub(crate) ttfb_ms: u64,
    pub(crate) cut_after: Option<usize>,
    pub(crate) garbage: bool,
    pub(crate) error_event: bool,
    pub(crate) framing: Framing,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            usage: UsageSpec::Formula,
            status: Status::Completed,
            tier: None,
            http_status: None,
            error_code: None,
            error_type: None,
            retry_after: None,
            fail_times: None,
            fail_key: String::new(),
            deltas: 3,
            delta_bytes: 8,
            chunk_bytes: None,
            delay_ms: 0,
            ttfb_ms: 0,
            cut_after: None,
            garbage: false,
            error_event: false,
            framing: Framing::default(),
        }
    }
}

/// A rejected scripting key: `key` becomes the error's `param`
/// (`metadata.<key>`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ScriptError {
    pub(crate) key: String,
    pub(crate) message: String,
}

fn bad(key: &str, expected: &str, got: &str) -> ScriptError {
    ScriptError {
        key: key.to_owned(),
        message: format!(
            "Invalid mock scripting value for metadata.{key}: expected {expected}, got {got:?}."
        ),
    }
}

fn num<T: std::str::FromStr + PartialOrd>(
    key: &str,
    v: &str,
    min: T,
    max: T,
    expected: &str,
) -> Result<T, ScriptError> {
    match v.trim().parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(bad(key, expected, v)),
    }
}

fn flag(key: &str, v: &str) -> Result<bool, ScriptError> {
    match v {
        "1" | "true" => Ok(true),
        "0" | "false" | "" => Ok(false),
        _ => Err(bad(key, "\"1\" or \"0\"", v)),
    }
}

fn usage(key: &str, v: &str) -> Result<UsageSpec, ScriptError> {
    if v.trim() == "none" {
        return Ok(UsageSpec::Null);
    }
    let mut parts = [0u64; 4];
    let mut n = 0;
    for p in v.split(',') {
        if n == 4 {
            return Err(bad(key, "\"input,cached,output,reasoning\" or \"none\"", v));
        }
        parts[n] = p
            .trim()
            .parse()
            .map_err(|_| bad(key, "\"input,cached,output,reasoning\" or \"none\"", v))?;
        n += 1;
    }
    if n != 4 {
        return Err(bad(key, "\"input,cached,output,reasoning\" or \"none\"", v));
    }
    Ok(UsageSpec::Exact(Usage {
        input: parts[0],
        cached: parts[1],
        output: parts[2],
        reasoning: parts[3],
    }))
}

impl Script {
    /// Reads the scripting keys out of `metadata`; keys not starting with
    /// `mock_` are ignored (they are ordinary metadata and are echoed).
    pub(crate) fn from_metadata(meta: Option<&Map<String, Value>>) -> Result<Script, ScriptError> {
        let mut s = Script::default();
        let Some(meta) = meta else {
            return Ok(s);
        };
        for (key, value) in meta {
            if !key.starts_with("mock_") {
                continue;
            }
            let Some(v) = value.as_str() else {
                return Err(bad(
                    key,
                    "a string (metadata values are strings)",
                    &value.to_string(),
                ));
            };
            let k = key.as_str();
            match k {
                "mock_usage" => s.usage = usage(k, v)?,
                "mock_status" => {
                    s.status = match v {
                        "completed" => Status::Completed,
                        "incomplete" => Status::Incomplete,
                        "failed" => Status::Failed,
                        _ => return Err(bad(k, "completed|incomplete|failed", v)),
                    }
                }
                "mock_tier" => s.tier = Some(v.to_owned()),
                "mock_http_status" => {
                    s.http_status = Some(num(k, v, 400, 599, "an HTTP status 400..=599")?)
                }
                "mock_error_code" => s.error_code = Some(v.to_owned()),
                "mock_error_type" => s.error_type = Some(v.to_owned()),
                "mock_retry_after" => s.retry_after = Some(v.to_owned()),
                "mock_fail_times" => s.fail_times = Some(num(k, v, 0, u32::MAX, "a count")?),
                "mock_fail_key" => s.fail_key = v.to_owned(),
                "mock_deltas" => s.deltas = num(k, v, 0, MAX_DELTAS, "0..=10000000")?,
                "mock_delta_bytes" => s.delta_bytes = num(k, v, 1, MAX_DELTA_BYTES, "1..=1048576")?,
                "mock_chunk_bytes" => {
                    s.chunk_bytes = Some(num(k, v, 1, usize::MAX, "a size >= 1")?)
                }
                "mock_delay_ms" => s.delay_ms = num(k, v, 0, MAX_DELAY_MS, "0..=600000")?,
                "mock_ttfb_ms" => s.ttfb_ms = num(k, v, 0, MAX_DELAY_MS, "0..=600000")?,
                "mock_cut_after" => s.cut_after = Some(num(k, v, 0, usize::MAX, "an event count")?),
                "mock_garbage" => s.garbage = flag(k, v)?,
                "mock_error_event" => s.error_event = flag(k, v)?,
                "mock_no_event_lines" => s.framing.event_lines = !flag(k, v)?,
                "mock_line_ending" => {
                    s.framing.le = match v {
                        "lf" => b"\n",
                        "crlf" => b"\r\n",
                        "cr" => b"\r",
                        _ => return Err(bad(k, "lf|crlf|cr", v)),
                    }
                }
                _ => {
                    return Err(ScriptError {
                        key: key.clone(),
                        message: format!("Unknown mock scripting key metadata.{key}."),
                    })
                }
            }
        }
        Ok(s)
    }

    /// HTTP status of a scripted failure (`mock_http_status`, default 500).
    pub(crate) fn failure_status(&self) -> u16 {
        self.http_status.unwrap_or(500)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Script, ScriptError> {
        Script::from_metadata(v.as_object())
    }

    #[test]
    fn defaults_without_metadata() {
        assert_eq!(Script::from_metadata(None).unwrap(), Script::default());
        assert_eq!(parse(json!({"user": "x"})).unwrap(), Script::default());
    }

    #[test]
    fn parses_every_key() {
        let s = parse(json!({
            "mock_usage": "100,20,50,10", "mock_status": "incomplete", "mock_tier": "flex",
            "mock_http_status": "429", "mock_error_code": "c", "mock_error_type": "t",
            "mock_retry_after": "2", "mock_fail_times": "2", "mock_fail_key": "k",
            "mock_deltas": "10", "mock_delta_bytes": "100", "mock_chunk_bytes": "7",
            "mock_delay_ms": "5", "mock_ttfb_ms": "6", "mock_cut_after": "4",
            "mock_garbage": "1", "mock_error_event": "1", "mock_line_ending": "crlf",
            "mock_no_event_lines": "1"
        }))
        .unwrap();
        assert_eq!(
            s.usage,
            UsageSpec::Exact(Usage {
                input: 100,
                cached: 20,
                output: 50,
                reasoning: 10
            })
        );
        assert_eq!(s.status, Status::Incomplete);
        assert_eq!(s.tier.as_deref(), Some("flex"));
        assert_eq!(s.http_status, Some(429));
        assert_eq!(s.fail_times, Some(2));
        assert_eq!((s.deltas, s.delta_bytes, s.chunk_bytes), (10, 100, Some(7)));
        assert_eq!((s.delay_ms, s.ttfb_ms, s.cut_after), (5, 6, Some(4)));
        assert!(s.garbage && s.error_event && !s.framing.event_lines);
        assert_eq!(s.framing.le, b"\r\n");
        assert_eq!(
            parse(json!({"mock_usage": "none"})).unwrap().usage,
            UsageSpec::Null
        );
    }

    #[test]
    fn rejects_typos_and_bad_values() {
        assert_eq!(
            parse(json!({"mock_delta": "3"})).unwrap_err().key,
            "mock_delta"
        );
        assert_eq!(
            parse(json!({"mock_usage": "1,2,3"})).unwrap_err().key,
            "mock_usage"
        );
        assert_eq!(
            parse(json!({"mock_usage": "1,2,3,4,5"})).unwrap_err().key,
            "mock_usage"
        );
        assert_eq!(
            parse(json!({"mock_http_status": "200"})).unwrap_err().key,
            "mock_http_status"
        );
        assert_eq!(
            parse(json!({"mock_status": "done"})).unwrap_err().key,
            "mock_status"
        );
        assert_eq!(
            parse(json!({"mock_deltas": 3})).unwrap_err().key,
            "mock_deltas"
        );
        assert_eq!(
            parse(json!({"mock_line_ending": "lfcr"})).unwrap_err().key,
            "mock_line_ending"
        );
    }
}
