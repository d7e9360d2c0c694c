//! The upper bound of a request's cost and tokens, reserved against budgets
//! and `tokens_per_minute` before it is forwarded.
//!
//! A hard budget is a promise, so for it the bound must be true for
//! anything a client can send:
//! - **input the body carries**: its length in bytes (every tokenizer the
//!   Responses models use emits at most one token per byte of text);
//! - **input it only points at**: a `previous_response_id` carries that
//!   response's recorded input + output tokens (its whole context); an image
//!   costs at most the model's `max_tokens_per_image`; anything else it
//!   cannot measure (a `conversation`, whose items other calls and
//!   concurrent responses add to; files; item references; encrypted
//!   reasoning; prompt templates; unknown item types; a previous response
//!   whose usage is not known) is bounded by the model's context window,
//!   `max_input_tokens`, which is also a cap on any single model call's
//!   input;
//! - **model calls**: one, or `max_tool_calls + 1` when MCP tools let the
//!   upstream call the model again after each tool result (each call bills
//!   its input again);
//! - **output**: the request's `max_output_tokens`, else the model's.
//!
//! All at the highest rate of every variant of every model the request may
//! be served by (fallbacks with their own effective bodies). Where a part
//! has no bound (the model has no `max_input_tokens` or
//! `max_output_tokens`, MCP without `max_tool_calls`) the estimate says so
//! ([`Estimate::unbounded`]) and a hard budget refuses the request; soft
//! budgets and rate limits then use the body-bytes estimate of before.
//!
//! It reads prices and the body; it never touches the database.

use std::sync::Arc;

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::pricing::{PriceSheet, PriceVersion};

/// Output bound of the body-bytes estimate for a request without
/// `max_output_tokens` whose model has none either.
pub const DEFAULT_MAX_OUTPUT_TOKENS: i64 = 32_768;
/// Bytes a deployment's model name may add to a candidate's body.
const MODEL_NAME_SLACK: i64 = 256;

/// What a request cannot be bounded by, for the refusal's `param`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unbounded {
    pub param: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Estimate {
    /// Upper bound of the cost; zero when a candidate model has no price
    /// (its row will be unpriced and count nothing against budgets).
    pub cost: Decimal,
    /// Upper bound of input + output tokens.
    pub tokens: i64,
    /// Set when some part has no true bound: `cost` and `tokens` are then
    /// the body-bytes estimate, good for soft budgets and rates only.
    pub unbounded: Option<Unbounded>,
}

/// What a candidate's body carries over from earlier state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Carried {
    #[default]
    Nothing,
    /// A previous response with this recorded context (input + output).
    Tokens(i64),
    /// State Tollgate cannot measure (named by the parameter).
    Unknown(&'static str),
}

/// One model the request may be served by, with its effective body.
pub struct Candidate<'a> {
    pub body: &'a [u8],
    pub price: Option<Arc<PriceVersion>>,
    pub carried: Carried,
    /// The parameter path of this candidate (`turing_options.fallbacks[0]`),
    /// empty for the request itself.
    pub param: &'a str,
}

impl Estimate {
    pub const ZERO: Self = Self {
        cost: Decimal::ZERO,
        tokens: 0,
        unbounded: None,
    };

    /// The largest estimate of any candidate.
    pub fn of_candidates(candidates: &[Candidate<'_>]) -> Self {
        let mut worst = Self::ZERO;
        for candidate in candidates {
            let e = Self::of_candidate(candidate);
            worst = Self {
                cost: worst.cost.max(e.cost),
                tokens: worst.tokens.max(e.tokens),
                unbounded: worst.unbounded.or(e.unbounded),
            };
        }
        worst
    }

    fn of_candidate(candidate: &Candidate<'_>) -> Self {
        let body = Body::scan(candidate.body, candidate.param);
        let sheet = candidate.price.as_ref().and_then(|p| p.sheet.as_ref());
        match bound(&body, candidate.carried, sheet, candidate.param) {
            Ok((input, output)) => Self::priced(sheet, input, output, None),
            Err(why) => {
                let output = body
                    .max_output_tokens
                    .or_else(|| sheet.and_then(|s| s.limits().max_output_tokens))
                    .unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS);
                Self::priced(sheet, body.bytes, output, Some(why))
            }
        }
    }

    fn priced(
        sheet: Option<&PriceSheet>,
        input: i64,
        output: i64,
        unbounded: Option<Unbounded>,
    ) -> Self {
        let cost = sheet.map_or(Decimal::ZERO, |sheet| {
            let (input_rate, output_rate) = highest_rates(sheet);
            Decimal::from(input)
                .checked_mul(input_rate)
                .and_then(|i| {
                    Decimal::from(output)
                        .checked_mul(output_rate)
                        .and_then(|o| i.checked_add(o))
                })
                .unwrap_or(Decimal::MAX)
        });
        Self {
            cost,
            tokens: input.saturating_add(output),
            unbounded,
        }
    }

    /// The body-bytes estimate of `body` served by any of `prices` (no
    /// hidden input): for callers without candidates.
    pub fn of_request(body: &[u8], prices: &[Option<Arc<PriceVersion>>]) -> Self {
        let candidates: Vec<Candidate<'_>> = prices
            .iter()
            .map(|price| Candidate {
                body,
                price: price.clone(),
                carried: Carried::Nothing,
                param: "",
            })
            .collect();
        Self::of_candidates(&candidates)
    }
}

/// The true bound of one candidate: (input tokens over every model call,
/// output tokens), or what has none.
fn bound(
    body: &Body,
    carried: Carried,
    sheet: Option<&PriceSheet>,
    param: &str,
) -> Result<(i64, i64), Unbounded> {
    let limits = sheet.map(PriceSheet::limits).unwrap_or_default();
    let window = limits.max_input_tokens;
    let needs_window = |what: &str, reason: &str| match window {
        Some(w) => Ok(w),
        None => Err(Unbounded {
            param: join(param, what),
            reason: format!("{reason}, and the model has no max_input_tokens"),
        }),
    };
    let mut input = body.bytes.saturating_add(MODEL_NAME_SLACK);
    match carried {
        Carried::Nothing => {}
        Carried::Tokens(tokens) => input = input.saturating_add(tokens),
        Carried::Unknown(what) => {
            input = needs_window(what, &format!("what `{what}` carries is not known"))?;
        }
    }
    if let Some(what) = &body.unmeasured {
        input = needs_window(what, "this input refers to content the body does not carry")?;
    }
    if body.images > 0 {
        let per_image = match limits.max_tokens_per_image {
            Some(per) => per,
            None => needs_window(
                "input",
                "an image's tokens are bounded by the model's max_tokens_per_image",
            )?,
        };
        input = input.saturating_add(per_image.saturating_mul(body.images));
    }
    if let Some(window) = window {
        input = input.min(window);
    }
    let calls = match (body.mcp, body.max_tool_calls) {
        (false, _) => 1,
        (true, Some(n)) => {
            // Every call after a tool result reads that result too: only the
            // window bounds it.
            input = needs_window("tools", "MCP tool results are read by the model")?;
            n.saturating_add(1)
        }
        (true, None) => {
            return Err(Unbounded {
                param: join(param, "max_tool_calls"),
                reason: "MCP tools let the upstream call the model again after every tool result; \
                         set max_tool_calls"
                    .to_owned(),
            })
        }
    };
    let output = match body.max_output_tokens.or(limits.max_output_tokens) {
        Some(output) => output,
        None => {
            return Err(Unbounded {
                param: join(param, "max_output_tokens"),
                reason: "the request sets no max_output_tokens and the model has none".to_owned(),
            })
        }
    };
    Ok((input.saturating_mul(calls), output))
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// What the estimate reads of a body.
#[derive(Debug, Default, PartialEq, Eq)]
struct Body {
    bytes: i64,
    max_output_tokens: Option<i64>,
    max_tool_calls: Option<i64>,
    mcp: bool,
    images: i64,
    /// The first part whose size the body does not tell (its `param`).
    unmeasured: Option<String>,
}

#[derive(Deserialize)]
struct Shape<'a> {
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(default)]
    max_output_tokens: Option<Value>,
    #[serde(default)]
    max_tool_calls: Option<Value>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
}

/// Content part types that are text carried in the body.
const TEXT_PARTS: [&str; 5] = [
    "input_text",
    "output_text",
    "refusal",
    "summary_text",
    "text",
];
/// Item types whose content is all in the body (text, call arguments,
/// tool output given as text).
const TEXT_ITEMS: [&str; 12] = [
    "message",
    "function_call",
    "function_call_output",
    "custom_tool_call",
    "custom_tool_call_output",
    "local_shell_call",
    "local_shell_call_output",
    "shell_call",
    "shell_call_output",
    "apply_patch_call",
    "apply_patch_call_output",
    "mcp_approval_response",
];

impl Body {
    fn scan(body: &[u8], param: &str) -> Self {
        let mut out = Self {
            bytes: i64::try_from(body.len()).unwrap_or(i64::MAX),
            ..Self::default()
        };
        let Ok(shape) = serde_json::from_slice::<Shape<'_>>(body) else {
            // Not an object the upstream would take: count it as unknown.
            out.unmeasured = Some(join(param, "input"));
            return out;
        };
        let count = |v: Option<Value>| v.and_then(|v| v.as_i64()).filter(|n| *n >= 0);
        out.max_output_tokens = count(shape.max_output_tokens);
        out.max_tool_calls = count(shape.max_tool_calls);
        if shape.prompt.is_some_and(|p| p.get() != "null") {
            out.unmeasured = Some(join(param, "prompt"));
        }
        if let Some(tools) = shape
            .tools
            .and_then(|t| serde_json::from_str::<Vec<Value>>(t.get()).ok())
        {
            out.mcp = tools
                .iter()
                .any(|t| t.get("type").and_then(Value::as_str) == Some("mcp"));
        }
        if let Some(Value::Array(items)) = shape
            .input
            .and_then(|i| serde_json::from_str::<Value>(i.get()).ok())
        {
            for (i, item) in items.iter().enumerate() {
                out.item(item, &join(param, &format!("input[{i}]")));
            }
        }
        out
    }

    fn unknown(&mut self, param: String) {
        if self.unmeasured.is_none() {
            self.unmeasured = Some(param);
        }
    }

    fn item(&mut self, item: &Value, param: &str) {
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .or_else(|| item.get("role").map(|_| "message"));
        match kind {
            Some("reasoning") => {
                if item.get("encrypted_content").is_some_and(|c| !c.is_null()) {
                    self.unknown(format!("{param}.encrypted_content"));
                }
            }
            Some(kind) if TEXT_ITEMS.contains(&kind) => {
                for field in ["content", "output"] {
                    if let Some(Value::Array(parts)) = item.get(field) {
                        for (j, part) in parts.iter().enumerate() {
                            self.part(part, &format!("{param}.{field}[{j}]"));
                        }
                    }
                }
            }
            _ => self.unknown(param.to_owned()),
        }
    }

    fn part(&mut self, part: &Value, param: &str) {
        match part.get("type").and_then(Value::as_str) {
            Some("input_image") => self.images += 1,
            Some(kind) if TEXT_PARTS.contains(&kind) => {}
            _ => self.unknown(param.to_owned()),
        }
    }
}

/// The highest input-side and output-side rate the sheet can charge.
fn highest_rates(sheet: &PriceSheet) -> (Decimal, Decimal) {
    let variants = [Some(sheet.base()), sheet.flex(), sheet.priority()]
        .into_iter()
        .flatten()
        .chain(sheet.long_context().iter().map(|lc| lc.rates()));
    let mut input = Decimal::ZERO;
    let mut output = Decimal::ZERO;
    for rates in variants {
        input = input.max(rates.input()).max(rates.cache_read_or_input());
        output = output.max(rates.output()).max(rates.reasoning_or_output());
    }
    (input, output)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::pricing::sheet::ModelLimits;

    fn sheet(limits: ModelLimits) -> PriceSheet {
        let fields = serde_json::json!({
            "input_cost_per_token": "0.000005", "output_cost_per_token": "0.00003",
        });
        let raw: Vec<(String, Box<RawValue>)> = fields
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), RawValue::from_string(v.to_string()).unwrap()))
            .collect();
        PriceSheet::parse_strict(&raw).unwrap().with_limits(limits)
    }

    fn window(input: i64, output: i64) -> ModelLimits {
        ModelLimits {
            max_input_tokens: Some(input),
            max_output_tokens: Some(output),
            max_tokens_per_image: None,
        }
    }

    fn bound_of(
        body: &str,
        carried: Carried,
        limits: ModelLimits,
    ) -> Result<(i64, i64), Unbounded> {
        bound(
            &Body::scan(body.as_bytes(), ""),
            carried,
            Some(&sheet(limits)),
            "",
        )
    }

    #[test]
    fn the_body_and_what_it_carries_over() {
        let body = r#"{"model":"m","input":"hi","max_output_tokens":16}"#;
        let bytes = body.len() as i64 + MODEL_NAME_SLACK;
        assert_eq!(
            bound_of(body, Carried::Nothing, window(1_000_000, 100)),
            Ok((bytes, 16))
        );
        assert_eq!(
            bound_of(body, Carried::Tokens(200_016), window(1_000_000, 100)),
            Ok((bytes + 200_016, 16))
        );
        // Never more than the context window per model call.
        assert_eq!(
            bound_of(body, Carried::Tokens(5_000_000), window(272_000, 100)),
            Ok((272_000, 16))
        );
        // A conversation is bounded by the window alone.
        assert_eq!(
            bound_of(body, Carried::Unknown("conversation"), window(272_000, 100)),
            Ok((272_000, 16))
        );
        let none = ModelLimits::default();
        let err = bound_of(body, Carried::Unknown("conversation"), none).unwrap_err();
        assert_eq!(err.param, "conversation");
    }

    #[test]
    fn output_comes_from_the_request_or_the_model() {
        let body = r#"{"model":"m","input":"hi"}"#;
        assert_eq!(
            bound_of(body, Carried::Nothing, window(1000, 128))
                .unwrap()
                .1,
            128
        );
        let limits = ModelLimits {
            max_input_tokens: Some(1000),
            ..ModelLimits::default()
        };
        assert_eq!(
            bound_of(body, Carried::Nothing, limits).unwrap_err().param,
            "max_output_tokens"
        );
    }

    #[test]
    fn parts_the_body_does_not_carry() {
        let file = r#"{"input":[{"role":"user","content":[{"type":"input_file","file_id":"f"}]}],"max_output_tokens":1}"#;
        assert_eq!(
            bound_of(file, Carried::Nothing, window(5000, 10)),
            Ok((5000, 1))
        );
        let err = bound_of(
            file,
            Carried::Nothing,
            ModelLimits {
                max_output_tokens: Some(1),
                ..ModelLimits::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.param, "input[0].content[0]");
        let image = r#"{"input":[{"role":"user","content":[{"type":"input_image","image_url":"https://x/y.png"},{"type":"input_image","image_url":"https://x/z.png"}]}],"max_output_tokens":1}"#;
        let with_images = ModelLimits {
            max_tokens_per_image: Some(1500),
            ..window(1_000_000, 10)
        };
        let bytes = image.len() as i64 + MODEL_NAME_SLACK;
        assert_eq!(
            bound_of(image, Carried::Nothing, with_images),
            Ok((bytes + 3000, 1))
        );
        assert_eq!(
            bound_of(image, Carried::Nothing, window(4000, 10)),
            Ok((4000, 1))
        );
        let encrypted = r#"{"input":[{"type":"reasoning","summary":[],"encrypted_content":"gAAA"}],"max_output_tokens":1}"#;
        assert_eq!(
            bound_of(encrypted, Carried::Nothing, window(7000, 10)),
            Ok((7000, 1))
        );
        let text = r#"{"input":[{"type":"function_call_output","call_id":"c","output":"42"},{"role":"user","content":"hi"}],"max_output_tokens":1}"#;
        assert_eq!(
            bound_of(text, Carried::Nothing, window(1_000_000, 10))
                .unwrap()
                .0,
            text.len() as i64 + MODEL_NAME_SLACK
        );
    }

    #[test]
    fn mcp_multiplies_model_calls() {
        let body = r#"{"input":"x","tools":[{"type":"mcp","server_label":"s","server_url":"https://m"}],"max_output_tokens":10,"max_tool_calls":3}"#;
        assert_eq!(
            bound_of(body, Carried::Nothing, window(1000, 10)),
            Ok((4000, 10))
        );
        let open = r#"{"input":"x","tools":[{"type":"mcp","server_label":"s","server_url":"https://m"}],"max_output_tokens":10}"#;
        assert_eq!(
            bound_of(open, Carried::Nothing, window(1000, 10))
                .unwrap_err()
                .param,
            "max_tool_calls"
        );
    }

    #[test]
    fn unbounded_candidates_fall_back_to_the_body_bytes_estimate() {
        let body = br#"{"input": "hi"}"#;
        let e = Estimate::of_request(body, &[None]);
        assert_eq!(e.tokens, 15 + DEFAULT_MAX_OUTPUT_TOKENS);
        assert_eq!(e.cost, Decimal::ZERO);
        assert_eq!(e.unbounded.unwrap().param, "max_output_tokens");
        let bounded = Estimate::of_request(br#"{"max_output_tokens": 7}"#, &[None]);
        assert_eq!(bounded.tokens, 24 + MODEL_NAME_SLACK + 7);
        assert!(bounded.unbounded.is_none());
    }
}
