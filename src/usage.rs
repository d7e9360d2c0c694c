//! Token usage and a billing summary extracted from OpenAI Responses API JSON.
//!
//! Owns: turning a Response object (POST /responses, GET /responses/{id}, the
//! `response` member of a lifecycle SSE event, or a /responses/compact body)
//! into a [`ResponseSummary`]; reading the code out of an OpenAI error
//! envelope; collecting a bounded non-streaming body.
//!
//! Must never: read token counts through `f64` (billing needs exact integers),
//! copy more than the caller's limit, materialise fields it does not need
//! (everything else is skipped with `IgnoredAny`), or panic on any input.
//!
//! Token-count policy: a token value that is not a JSON integer in `i64`
//! range (a float such as `1.0`, a string, `1e3`) makes the parse fail, since
//! billing must not guess. Negative integers are accepted here and reported
//! by [`Usage::check`], so the caller can log the upstream's numbers verbatim
//! before rejecting them. Missing `input_tokens`/`output_tokens`/details read
//! as 0; a missing `total_tokens` reads as `input_tokens + output_tokens`.

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::marker::PhantomData;

/// Token counts as the upstream reported them.
///
/// `cached_tokens` is a subset of `input_tokens` and `reasoning_tokens` a
/// subset of `output_tokens` (wire facts §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Usage {
    pub input_tokens: i64,
    pub cached_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    pub total_tokens: i64,
}

impl Usage {
    /// Err(reason) when the numbers contradict the API's semantics: negative
    /// counts, `cached_tokens > input_tokens`, `reasoning_tokens >
    /// output_tokens`. A `total_tokens` mismatch is not an error: it is kept
    /// as reported because the bill is computed from the parts.
    pub fn check(&self) -> Result<(), &'static str> {
        // Stable snake_case reasons: they end up in the ledger's unpriced_reason.
        if self.input_tokens < 0
            || self.cached_tokens < 0
            || self.output_tokens < 0
            || self.reasoning_tokens < 0
            || self.total_tokens < 0
        {
            return Err("negative_token_count");
        }
        if self.cached_tokens > self.input_tokens {
            return Err("cached_exceeds_input");
        }
        if self.reasoning_tokens > self.output_tokens {
            return Err("reasoning_exceeds_output");
        }
        Ok(())
    }
}

/// What metering needs from a Response object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseSummary {
    pub id: Option<String>,
    pub status: Option<String>,
    pub model: Option<String>,
    pub service_tier: Option<String>,
    pub usage: Option<Usage>,
    /// `response.error.code` when present.
    pub error_code: Option<String>,
    /// Number of output items with `"type":"mcp_call"`.
    pub mcp_calls: u32,
    /// Set when the response carried a `usage` object that reports no
    /// counts at all (`usage: {}`): not a zero to bill, an invalid report.
    pub usage_problem: Option<&'static str>,
}

impl ResponseSummary {
    /// Parse a Response object (the JSON body of POST /responses, GET
    /// /responses/{id}, or the `response` member of a lifecycle event). Also
    /// works for a /responses/compact body (object `response.compaction`,
    /// which carries usage). The top level must be a JSON object. `usage:
    /// null` gives `usage: None`. See the module docs for the token policy.
    pub fn from_response_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

impl<'de> Deserialize<'de> for ResponseSummary {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let MapOnly(raw) = MapOnly::<RawResponse>::deserialize(d)?;
        Ok(raw.into_summary())
    }
}

/// Collects a non-streaming body (up to `limit` bytes; beyond that it stops
/// copying and remembers it overflowed) so the summary can be read at end of
/// body.
#[derive(Debug, Clone)]
pub struct JsonBodyCollector {
    buf: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl JsonBodyCollector {
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            limit,
            overflowed: false,
        }
    }

    /// Copies as much of `chunk` as still fits under the limit.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.overflowed {
            return;
        }
        let room = self.limit.saturating_sub(self.buf.len());
        if chunk.len() > room {
            self.overflowed = true;
            // Keep the prefix that fits so `bytes()` still shows what the body
            // started with (useful for logging), but never more than `limit`.
            self.buf
                .extend_from_slice(chunk.get(..room).unwrap_or_default());
            return;
        }
        self.buf.extend_from_slice(chunk);
    }

    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// The collected bytes: the whole body, or its first `limit` bytes after
    /// an overflow.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// None when the body overflowed (a truncated body cannot be trusted) or
    /// is not a Response object.
    pub fn summary(&self) -> Option<ResponseSummary> {
        if self.overflowed {
            return None;
        }
        ResponseSummary::from_response_json(&self.buf).ok()
    }
}

/// Error code from an OpenAI error envelope body
/// `{"error":{"message","type","param","code"}}`: `code` if it is a string,
/// else `type` if that is a string; None if the body is not an envelope
/// (e.g. Turing's `{"code":1004,...}` shape).
pub fn error_code_from_body(bytes: &[u8]) -> Option<String> {
    let MapOnly(env) = serde_json::from_slice::<MapOnly<ErrorEnvelope>>(bytes).ok()?;
    let fields = env.error?.0?;
    match fields.code {
        Some(Scalar::Str(code)) => Some(code),
        _ => fields.ty.and_then(Scalar::into_str),
    }
}

// ---------------------------------------------------------------------------
// Lenient building blocks, shared with `crate::sse`.
//
// The upstream is not under our control and newer API versions add fields and
// change shapes; a surprising type in a field we only report (model, error
// code, output item) must not cost us the usage numbers, so those fields are
// read leniently. Token counts stay strict.

/// A value where only string (or integer) content matters; anything else is
/// skipped and remembered as `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scalar {
    Str(String),
    Int(String),
    Other,
}

impl Scalar {
    /// String or integer content as text.
    pub(crate) fn into_text(self) -> Option<String> {
        match self {
            Scalar::Str(s) | Scalar::Int(s) => Some(s),
            Scalar::Other => None,
        }
    }

    pub(crate) fn into_str(self) -> Option<String> {
        match self {
            Scalar::Str(s) => Some(s),
            Scalar::Int(_) | Scalar::Other => None,
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::Str(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }

    fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        Scalar::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar, A::Error> {
        drain_seq(seq)?;
        Ok(Scalar::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Scalar, A::Error> {
        drain_map(map)?;
        Ok(Scalar::Other)
    }
}

fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Deserializes `T` only from a JSON object. A derived struct would also
/// accept an array positionally, which would turn `[1,2,3]` into token counts.
pub(crate) struct MapOnly<T>(pub(crate) T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MapOnly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(MapOnlyVisitor(PhantomData))
    }
}

struct MapOnlyVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for MapOnlyVisitor<T> {
    type Value = MapOnly<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map)).map(MapOnly)
    }
}

/// An `error` member: `Some` fields when it is an object, `None` for any
/// other shape (string, number, ...), which must not fail the whole parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LooseError(pub(crate) Option<ErrorFields>);

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct ErrorFields {
    #[serde(default)]
    pub(crate) code: Option<Scalar>,
    #[serde(rename = "type", default)]
    pub(crate) ty: Option<Scalar>,
}

impl LooseError {
    /// `code` (string or integer), else `type`.
    pub(crate) fn code_or_type(self) -> Option<String> {
        let fields = self.0?;
        fields
            .code
            .and_then(Scalar::into_text)
            .or_else(|| fields.ty.and_then(Scalar::into_str))
    }

    pub(crate) fn is_object(&self) -> bool {
        self.0.is_some()
    }
}

impl<'de> Deserialize<'de> for LooseError {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LooseErrorVisitor)
    }
}

struct LooseErrorVisitor;

impl<'de> Visitor<'de> for LooseErrorVisitor {
    type Value = LooseError;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<LooseError, A::Error> {
        ErrorFields::deserialize(MapAccessDeserializer::new(map)).map(|f| LooseError(Some(f)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<LooseError, A::Error> {
        drain_seq(seq)?;
        Ok(LooseError(None))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<LooseError, E> {
        Ok(LooseError(None))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<LooseError, E> {
        Ok(LooseError(None))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<LooseError, E> {
        Ok(LooseError(None))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<LooseError, E> {
        Ok(LooseError(None))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<LooseError, E> {
        Ok(LooseError(None))
    }

    fn visit_unit<E: de::Error>(self) -> Result<LooseError, E> {
        Ok(LooseError(None))
    }

    fn visit_none<E: de::Error>(self) -> Result<LooseError, E> {
        Ok(LooseError(None))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<LooseError, D::Error> {
        LooseError::deserialize(d)
    }
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    #[serde(default)]
    error: Option<LooseError>,
}

#[derive(Deserialize)]
struct RawResponse {
    #[serde(default)]
    id: Option<Scalar>,
    #[serde(default)]
    status: Option<Scalar>,
    #[serde(default)]
    model: Option<Scalar>,
    #[serde(default)]
    service_tier: Option<Scalar>,
    #[serde(default)]
    usage: Option<MapOnly<RawUsage>>,
    #[serde(default)]
    error: Option<LooseError>,
    #[serde(default)]
    output: Option<McpCount>,
}

impl RawResponse {
    fn into_summary(self) -> ResponseSummary {
        ResponseSummary {
            id: self.id.and_then(Scalar::into_text),
            status: self.status.and_then(Scalar::into_str),
            model: self.model.and_then(Scalar::into_str),
            service_tier: self.service_tier.and_then(Scalar::into_str),
            usage: self
                .usage
                .as_ref()
                .filter(|MapOnly(u)| u.has_counts())
                .map(|MapOnly(u)| u.to_usage()),
            usage_problem: self
                .usage
                .as_ref()
                .filter(|MapOnly(u)| !u.has_counts())
                .map(|_| "usage_without_counts"),
            error_code: self.error.and_then(LooseError::code_or_type),
            mcp_calls: self.output.map_or(0, |c| c.0),
        }
    }
}

// Token fields are plain `i64`: serde's i64 impl rejects floats and strings,
// so a count can never be rounded through f64.
#[derive(Deserialize)]
struct RawUsage {
    #[serde(default)]
    input_tokens: Option<i64>,
    #[serde(default)]
    input_tokens_details: Option<MapOnly<InputDetails>>,
    #[serde(default)]
    output_tokens: Option<i64>,
    #[serde(default)]
    output_tokens_details: Option<MapOnly<OutputDetails>>,
    #[serde(default)]
    total_tokens: Option<i64>,
}

#[derive(Deserialize)]
struct InputDetails {
    #[serde(default)]
    cached_tokens: Option<i64>,
}

#[derive(Deserialize)]
struct OutputDetails {
    #[serde(default)]
    reasoning_tokens: Option<i64>,
}

impl RawUsage {
    /// An upstream that reports usage reports at least one of the totals.
    fn has_counts(&self) -> bool {
        self.input_tokens.is_some() || self.output_tokens.is_some()
    }

    fn to_usage(&self) -> Usage {
        let input_tokens = self.input_tokens.unwrap_or(0);
        let output_tokens = self.output_tokens.unwrap_or(0);
        Usage {
            input_tokens,
            cached_tokens: self
                .input_tokens_details
                .as_ref()
                .and_then(|MapOnly(d)| d.cached_tokens)
                .unwrap_or(0),
            output_tokens,
            reasoning_tokens: self
                .output_tokens_details
                .as_ref()
                .and_then(|MapOnly(d)| d.reasoning_tokens)
                .unwrap_or(0),
            // Saturating: absurd upstream values must not overflow-panic in
            // debug builds; check() does not look at the total anyway.
            total_tokens: self
                .total_tokens
                .unwrap_or_else(|| input_tokens.saturating_add(output_tokens)),
        }
    }
}

/// Counts `mcp_call` items in `output` without materialising the items (the
/// output array can be megabytes of text and reasoning).
struct McpCount(u32);

impl<'de> Deserialize<'de> for McpCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(McpCountVisitor)
    }
}

struct McpCountVisitor;

impl<'de> Visitor<'de> for McpCountVisitor {
    type Value = McpCount;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an output array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<McpCount, A::Error> {
        let mut n = 0u32;
        while let Some(ItemIsMcp(is_mcp)) = seq.next_element()? {
            if is_mcp {
                n = n.saturating_add(1);
            }
        }
        Ok(McpCount(n))
    }

    // Any other shape counts nothing rather than failing the usage parse.
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<McpCount, A::Error> {
        drain_map(map)?;
        Ok(McpCount(0))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<McpCount, E> {
        Ok(McpCount(0))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<McpCount, E> {
        Ok(McpCount(0))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<McpCount, E> {
        Ok(McpCount(0))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<McpCount, E> {
        Ok(McpCount(0))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<McpCount, E> {
        Ok(McpCount(0))
    }

    fn visit_unit<E: de::Error>(self) -> Result<McpCount, E> {
        Ok(McpCount(0))
    }
}

struct ItemIsMcp(bool);

impl<'de> Deserialize<'de> for ItemIsMcp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ItemVisitor)
    }
}

struct ItemVisitor;

#[derive(Deserialize)]
struct ItemFields {
    #[serde(rename = "type", default)]
    ty: Option<TypeIsMcp>,
}

impl<'de> Visitor<'de> for ItemVisitor {
    type Value = ItemIsMcp;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an output item")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ItemIsMcp, A::Error> {
        let fields = ItemFields::deserialize(MapAccessDeserializer::new(map))?;
        Ok(ItemIsMcp(matches!(fields.ty, Some(TypeIsMcp(true)))))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<ItemIsMcp, A::Error> {
        drain_seq(seq)?;
        Ok(ItemIsMcp(false))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<ItemIsMcp, E> {
        Ok(ItemIsMcp(false))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<ItemIsMcp, E> {
        Ok(ItemIsMcp(false))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<ItemIsMcp, E> {
        Ok(ItemIsMcp(false))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<ItemIsMcp, E> {
        Ok(ItemIsMcp(false))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<ItemIsMcp, E> {
        Ok(ItemIsMcp(false))
    }

    fn visit_unit<E: de::Error>(self) -> Result<ItemIsMcp, E> {
        Ok(ItemIsMcp(false))
    }
}

/// Compares an item's `type` with "mcp_call" in place, so counting allocates
/// nothing per item.
struct TypeIsMcp(bool);

impl<'de> Deserialize<'de> for TypeIsMcp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TypeIsMcpVisitor)
    }
}

struct TypeIsMcpVisitor;

impl<'de> Visitor<'de> for TypeIsMcpVisitor {
    type Value = TypeIsMcp;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an item type")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<TypeIsMcp, E> {
        Ok(TypeIsMcp(v == "mcp_call"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<TypeIsMcp, A::Error> {
        drain_seq(seq)?;
        Ok(TypeIsMcp(false))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TypeIsMcp, A::Error> {
        drain_map(map)?;
        Ok(TypeIsMcp(false))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<TypeIsMcp, E> {
        Ok(TypeIsMcp(false))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<TypeIsMcp, E> {
        Ok(TypeIsMcp(false))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<TypeIsMcp, E> {
        Ok(TypeIsMcp(false))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<TypeIsMcp, E> {
        Ok(TypeIsMcp(false))
    }

    fn visit_unit<E: de::Error>(self) -> Result<TypeIsMcp, E> {
        Ok(TypeIsMcp(false))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const FULL: &str = r#"{"id":"resp_1","object":"response","created_at":1755500000,"status":"completed",
        "error":null,"incomplete_details":null,"model":"gpt-5-2025-08-07",
        "output":[{"id":"rs_1","type":"reasoning","summary":[{"type":"summary_text","text":"x"}]},
                  {"id":"mcp_1","type":"mcp_call","server_label":"s","name":"n","arguments":"{\"type\":\"mcp_call\"}","output":"o","error":null},
                  {"id":"msg_1","type":"message","content":[{"type":"output_text","text":"mcp_call","annotations":[]}]},
                  {"id":"mcp_2","type":"mcp_call"}],
        "service_tier":"default","temperature":1.0,"top_p":1.0,"tools":[{"type":"mcp","server_label":"s"}],
        "usage":{"input_tokens":23,"input_tokens_details":{"cached_tokens":7,"cache_write_tokens":0},
                 "output_tokens":412,"output_tokens_details":{"reasoning_tokens":384},"total_tokens":435},
        "metadata":{"k":"v"}}"#;

    fn usage_body(usage: &str) -> String {
        format!(r#"{{"id":"resp_u","object":"response","status":"completed","usage":{usage}}}"#)
    }

    #[test]
    fn full_response() {
        let s = ResponseSummary::from_response_json(FULL.as_bytes()).unwrap();
        assert_eq!(s.id.as_deref(), Some("resp_1"));
        assert_eq!(s.status.as_deref(), Some("completed"));
        assert_eq!(s.model.as_deref(), Some("gpt-5-2025-08-07"));
        assert_eq!(s.service_tier.as_deref(), Some("default"));
        assert_eq!(s.error_code, None);
        assert_eq!(s.mcp_calls, 2);
        assert_eq!(
            s.usage,
            Some(Usage {
                input_tokens: 23,
                cached_tokens: 7,
                output_tokens: 412,
                reasoning_tokens: 384,
                total_tokens: 435
            })
        );
        assert_eq!(s.usage.unwrap().check(), Ok(()));
    }

    #[test]
    fn missing_details_read_as_zero() {
        let b = usage_body(r#"{"input_tokens":10,"output_tokens":5,"total_tokens":15}"#);
        let u = ResponseSummary::from_response_json(b.as_bytes())
            .unwrap()
            .usage
            .unwrap();
        assert_eq!(
            u,
            Usage {
                input_tokens: 10,
                cached_tokens: 0,
                output_tokens: 5,
                reasoning_tokens: 0,
                total_tokens: 15
            }
        );
        // Null details and details without the inner key also read as 0.
        let b = usage_body(
            r#"{"input_tokens":10,"input_tokens_details":null,"output_tokens":5,"output_tokens_details":{},"total_tokens":15}"#,
        );
        let u2 = ResponseSummary::from_response_json(b.as_bytes())
            .unwrap()
            .usage
            .unwrap();
        assert_eq!(u2, u);
    }

    #[test]
    fn missing_total_is_input_plus_output() {
        let b = usage_body(r#"{"input_tokens":10,"output_tokens":5}"#);
        let u = ResponseSummary::from_response_json(b.as_bytes())
            .unwrap()
            .usage
            .unwrap();
        assert_eq!(u.total_tokens, 15);
    }

    #[test]
    fn reported_total_kept_even_if_inconsistent() {
        let b = usage_body(r#"{"input_tokens":10,"output_tokens":5,"total_tokens":99}"#);
        let u = ResponseSummary::from_response_json(b.as_bytes())
            .unwrap()
            .usage
            .unwrap();
        assert_eq!(u.total_tokens, 99);
        assert_eq!(u.check(), Ok(()));
    }

    #[test]
    fn usage_null_or_absent_is_none() {
        let s = ResponseSummary::from_response_json(usage_body("null").as_bytes()).unwrap();
        assert_eq!(s.usage, None);
        assert_eq!(s.id.as_deref(), Some("resp_u"));
        let s = ResponseSummary::from_response_json(br#"{"id":"r"}"#).unwrap();
        assert_eq!(s.usage, None);
    }

    #[test]
    fn token_values_never_go_through_f64() {
        for bad in [
            r#"{"input_tokens":1.0,"output_tokens":5}"#,
            r#"{"input_tokens":1e3,"output_tokens":5}"#,
            r#"{"input_tokens":"10","output_tokens":5}"#,
            r#"{"input_tokens":10,"output_tokens":5,"total_tokens":9223372036854775808}"#,
            r#"{"input_tokens":10,"input_tokens_details":{"cached_tokens":0.5},"output_tokens":5}"#,
            r#"[10,5,15]"#,
        ] {
            let b = usage_body(bad);
            assert!(
                ResponseSummary::from_response_json(b.as_bytes()).is_err(),
                "{bad}"
            );
        }
        // Exact large integers survive (f64 would round this one).
        let b = usage_body(r#"{"input_tokens":9007199254740993,"output_tokens":0}"#);
        let u = ResponseSummary::from_response_json(b.as_bytes())
            .unwrap()
            .usage
            .unwrap();
        assert_eq!(u.input_tokens, 9_007_199_254_740_993);
    }

    #[test]
    fn negative_parses_but_check_rejects() {
        let b = usage_body(r#"{"input_tokens":-1,"output_tokens":5,"total_tokens":4}"#);
        let u = ResponseSummary::from_response_json(b.as_bytes())
            .unwrap()
            .usage
            .unwrap();
        assert_eq!(u.input_tokens, -1);
        assert_eq!(u.check(), Err("negative_token_count"));
    }

    #[test]
    fn check_rejections() {
        let ok = Usage {
            input_tokens: 10,
            cached_tokens: 10,
            output_tokens: 5,
            reasoning_tokens: 5,
            total_tokens: 15,
        };
        assert_eq!(ok.check(), Ok(()));
        assert_eq!(Usage::default().check(), Ok(()));
        let cases = [
            (
                Usage {
                    cached_tokens: 11,
                    ..ok
                },
                "cached_exceeds_input",
            ),
            (
                Usage {
                    reasoning_tokens: 6,
                    ..ok
                },
                "reasoning_exceeds_output",
            ),
            (
                Usage {
                    cached_tokens: -1,
                    ..ok
                },
                "negative_token_count",
            ),
            (
                Usage {
                    output_tokens: -1,
                    reasoning_tokens: 0,
                    ..ok
                },
                "negative_token_count",
            ),
            (
                Usage {
                    reasoning_tokens: -1,
                    ..ok
                },
                "negative_token_count",
            ),
            (
                Usage {
                    total_tokens: -1,
                    ..ok
                },
                "negative_token_count",
            ),
        ];
        for (u, why) in cases {
            assert_eq!(u.check(), Err(why), "{u:?}");
        }
    }

    #[test]
    fn compaction_body() {
        let b = br#"{"id":"cmp_1","object":"response.compaction","created_at":1,
            "output":[{"type":"message","role":"user","content":[{"type":"input_text","text":"hi"}]},
                      {"type":"compaction","encrypted_content":"gAAAA..."}],
            "usage":{"input_tokens":1200,"input_tokens_details":{"cached_tokens":1024},
                     "output_tokens":300,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":1500}}"#;
        let s = ResponseSummary::from_response_json(b).unwrap();
        assert_eq!(s.id.as_deref(), Some("cmp_1"));
        assert_eq!(s.status, None);
        assert_eq!(s.mcp_calls, 0);
        let u = s.usage.unwrap();
        assert_eq!((u.input_tokens, u.cached_tokens), (1200, 1024));
        assert_eq!((u.output_tokens, u.total_tokens), (300, 1500));
    }

    #[test]
    fn response_error_code() {
        let b = br#"{"id":"r","status":"failed","error":{"code":"server_error","message":"The model failed to generate a response."},"usage":null}"#;
        let s = ResponseSummary::from_response_json(b).unwrap();
        assert_eq!(s.error_code.as_deref(), Some("server_error"));
        assert_eq!(s.status.as_deref(), Some("failed"));
        // An odd error shape must not cost us the rest of the summary.
        let b = br#"{"id":"r","error":"boom","output":"weird","model":7,"usage":{"input_tokens":1,"output_tokens":2}}"#;
        let s = ResponseSummary::from_response_json(b).unwrap();
        assert_eq!(s.error_code, None);
        assert_eq!(s.model, None);
        assert_eq!(s.usage.unwrap().total_tokens, 3);
    }

    #[test]
    fn non_object_bodies_are_errors() {
        for b in [
            &b"[]"[..],
            b"null",
            b"42",
            b"\"x\"",
            b"",
            b"{",
            b"[\"resp\",null]",
        ] {
            assert!(ResponseSummary::from_response_json(b).is_err(), "{b:?}");
        }
    }

    #[test]
    fn error_envelope_codes() {
        let cases: [(&[u8], Option<&str>); 9] = [
            (
                br#"{"error":{"message":"Unknown parameter: 'x'.","type":"invalid_request_error","param":"x","code":"unknown_parameter"}}"#,
                Some("unknown_parameter"),
            ),
            (
                br#"{"error":{"message":"m","type":"invalid_request_error","param":null,"code":null}}"#,
                Some("invalid_request_error"),
            ),
            (
                br#"{"error":{"message":"m","type":"tokens","code":429}}"#,
                Some("tokens"),
            ),
            (
                br#"{"message":"quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}"#,
                None,
            ),
            (
                br#"{"code":1004,"message":"VALIDATION_ERROR","data":{},"trace_id":"tur_x"}"#,
                None,
            ),
            (br#"{"error":"boom"}"#, None),
            (br#"{"error":{"message":"m"}}"#, None),
            (b"not json", None),
            (b"[{\"error\":{\"code\":\"x\"}}]", None),
        ];
        for (body, want) in cases {
            assert_eq!(
                error_code_from_body(body).as_deref(),
                want,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn collector_within_limit() {
        let mut c = JsonBodyCollector::new(FULL.len());
        for piece in FULL.as_bytes().chunks(7) {
            c.feed(piece);
        }
        assert!(!c.overflowed());
        assert_eq!(c.bytes(), FULL.as_bytes());
        assert_eq!(c.summary().unwrap().usage.unwrap().output_tokens, 412);
    }

    #[test]
    fn collector_overflow() {
        let mut c = JsonBodyCollector::new(FULL.len() - 1);
        for piece in FULL.as_bytes().chunks(7) {
            c.feed(piece);
        }
        assert!(c.overflowed());
        assert_eq!(c.bytes().len(), FULL.len() - 1);
        assert_eq!(c.bytes(), &FULL.as_bytes()[..FULL.len() - 1]);
        assert_eq!(c.summary(), None);
        // Further input is not copied.
        c.feed(b"more");
        assert_eq!(c.bytes().len(), FULL.len() - 1);
    }

    #[test]
    fn collector_garbage_has_no_summary() {
        let mut c = JsonBodyCollector::new(1024);
        c.feed(b"<html>bad gateway</html>");
        assert!(!c.overflowed());
        assert_eq!(c.summary(), None);
    }
}
