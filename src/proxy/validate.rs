//! The checks every body bound for the upstream passes: the client's own
//! request and each fallback candidate's effective body (the request with the
//! fallback's overrides applied) go through [`check_body`], so the two can
//! never drift apart.
//!
//! Here: tool policy (unsupported built-in tools dropped or refused by the
//! tenant's `[tools] unsupported` policy, through `proxy::tools`; MCP server
//! URLs), the stateful rule, and the text values that reach a ledger row or a database
//! query (`model`, `user`, `safety_identifier`, `previous_response_id`,
//! `conversation`), decoded from the raw JSON and bounded. Nothing here does
//! I/O: ownership and the per-tenant MCP allowlist are checked by
//! `proxy::admit` on what this module extracts.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::UnsupportedTools;
use crate::error::ApiError;
use crate::proxy::tools::{self, ToolPlan};

/// Longest model id accepted (request `model` and fallback models), in
/// characters. Real ids are under 64; the ledger indexes this column.
pub const MAX_MODEL_CHARS: usize = 256;
/// Longest `user` / `safety_identifier`, in characters. OpenAI documents 64
/// for `safety_identifier` and enforces its own bound upstream; this one keeps
/// the ledger's `end_user` column small whatever the upstream accepts.
pub const MAX_END_USER_CHARS: usize = 512;
/// Longest `previous_response_id` / `conversation` id, in characters.
pub const MAX_ID_CHARS: usize = 256;

/// An MCP tool's server host, for the per-tenant allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServer {
    pub index: usize,
    pub host: String,
}

/// What a checked body says that later steps need.
#[derive(Debug, Clone, Default)]
pub struct BodyFacts {
    pub end_user: Option<String>,
    pub previous_response_id: Option<String>,
    pub conversation: Option<String>,
    pub mcp_servers: Vec<McpServer>,
    /// Which offered tools this body sends upstream: the replacements for
    /// `tools` / `tool_choice` and what was dropped (empty when nothing was).
    pub tools: ToolPlan,
}

/// A text value as the ledger will store it: decoded (so `\u0000` escapes
/// are seen), no control characters, at most `max` characters.
pub fn text(raw: &RawValue, param: &str, max: usize) -> Result<String, ApiError> {
    let value = serde_json::from_str::<String>(raw.get()).map_err(|_| {
        ApiError::invalid_value(param, format!("'{param}' must be a string of valid text."))
    })?;
    check_text(&value, param, max)?;
    Ok(value)
}

/// The rules of [`text`] on an already decoded string.
pub fn check_text(value: &str, param: &str, max: usize) -> Result<(), ApiError> {
    if value.chars().any(char::is_control) {
        return Err(ApiError::invalid_value(
            param,
            format!("'{param}' must not contain control characters (such as NUL)."),
        ));
    }
    if value.chars().count() > max {
        return Err(ApiError::invalid_value(
            param,
            format!("'{param}' is longer than {max} characters."),
        ));
    }
    Ok(())
}

/// A model id: non-empty text within [`MAX_MODEL_CHARS`].
pub fn model(raw: &RawValue, param: &str) -> Result<String, ApiError> {
    let value = serde_json::from_str::<String>(raw.get())
        .ok()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            ApiError::invalid_value(param, format!("'{param}' must be a non-empty string."))
        })?;
    check_text(&value, param, MAX_MODEL_CHARS)?;
    Ok(value)
}

/// `safety_identifier` (preferred) or `user`: the end user the row records.
pub fn end_user<'a>(
    get: &dyn Fn(&str) -> Option<&'a RawValue>,
) -> Result<Option<String>, ApiError> {
    let mut found = None;
    for field in ["safety_identifier", "user"] {
        if let Some(raw) = get(field).filter(|raw| raw.get() != "null") {
            let value = text(raw, field, MAX_END_USER_CHARS)?;
            found = found.or(Some(value));
        }
    }
    Ok(found)
}

/// Every check on one effective body. `get` reads a top-level field; `tags`
/// are the request's (a fallback cannot change them); `policy` is the
/// tenant's for unsupported tools. Offered unsupported tools are planned
/// first ([`tools::plan`]: dropped, or refused when the body needs them, or
/// refused under the `refuse` policy), and the other checks see the body as
/// it will be forwarded.
pub fn check_body<'a>(
    get: &dyn Fn(&str) -> Option<&'a RawValue>,
    tags: &[String],
    policy: UnsupportedTools,
) -> Result<BodyFacts, ApiError> {
    let end_user = end_user(get)?;
    let plan = match get("tools") {
        Some(raw) if raw.get() != "null" => tools::plan(raw, get("tool_choice"))?,
        _ => ToolPlan::default(),
    };
    tools::enforce(policy, &plan.dropped)?;
    // The client's own array, so errors name the client's indices; the
    // dropped entries are not sent and not checked.
    let dropped: Vec<usize> = plan.dropped.iter().map(|d| d.index).collect();
    let mcp_servers = match get("tools") {
        Some(raw) if raw.get() != "null" => check_tools(raw, &dropped)?,
        _ => Vec::new(),
    };
    // Stateful reasoning lives in the upstream's stored response: a request
    // that asks for it cannot also ask not to be stored.
    if tags.iter().any(|t| t == "stateful")
        && get("store").is_some_and(|raw| raw.get().trim() == "false")
    {
        return Err(ApiError::invalid_value(
            "store",
            "'tags: [\"stateful\"]' keeps reasoning state in the stored response; it cannot be combined with 'store: false'.",
        ));
    }
    let previous_response_id = match get("previous_response_id") {
        Some(raw) if raw.get() != "null" => Some(text(raw, "previous_response_id", MAX_ID_CHARS)?),
        _ => None,
    };
    let conversation = match get("conversation") {
        Some(raw) if raw.get() != "null" => Some(conversation_id(raw)?),
        _ => None,
    };
    Ok(BodyFacts {
        end_user,
        previous_response_id,
        conversation,
        mcp_servers,
        tools: plan,
    })
}

/// `conversation` is an id string or an object `{"id": ...}`.
fn conversation_id(raw: &RawValue) -> Result<String, ApiError> {
    #[derive(Deserialize)]
    struct ById<'a> {
        #[serde(borrow)]
        id: &'a RawValue,
    }
    if raw.get().trim_start().starts_with('{') {
        let object: ById = serde_json::from_str(raw.get()).map_err(|_| {
            ApiError::invalid_value(
                "conversation.id",
                "'conversation' must be an id or an object with an 'id'.",
            )
        })?;
        return text(object.id, "conversation.id", MAX_ID_CHARS);
    }
    text(raw, "conversation", MAX_ID_CHARS)
}

#[derive(Deserialize)]
struct ToolType<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    server_url: Option<Cow<'a, str>>,
}

/// Every tool but the `skip`ped (dropped) ones has a `type`; MCP servers'
/// hosts are collected for the allowlist.
fn check_tools(raw: &RawValue, skip: &[usize]) -> Result<Vec<McpServer>, ApiError> {
    let tools: Vec<ToolType> = serde_json::from_str(raw.get()).map_err(|_| {
        ApiError::invalid_value("tools", "'tools' must be an array of tool objects.")
    })?;
    let mut servers = Vec::new();
    for (i, tool) in tools.iter().enumerate().filter(|(i, _)| !skip.contains(i)) {
        let Some(kind) = tool.kind.as_deref() else {
            return Err(ApiError::missing_parameter(&format!("tools[{i}].type")));
        };
        if kind == "mcp" {
            if let Some(url) = tool.server_url.as_deref() {
                let host = reqwest::Url::parse(url)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
                    .ok_or_else(|| {
                        ApiError::invalid_value(
                            format!("tools[{i}].server_url"),
                            "'server_url' must be an absolute URL.",
                        )
                    })?;
                servers.push(McpServer { index: i, host });
            }
        }
    }
    Ok(servers)
}

/// Renames an error found in a fallback's effective body so it names the
/// fallback: `tools[1].type` → `turing_options.fallbacks[0].tools[1].type`.
/// The request alone passed, so the fallback's body is what failed.
pub fn in_fallback(mut err: ApiError, prefix: &str) -> ApiError {
    err.param = Some(match err.param.take() {
        Some(p) => format!("{prefix}.{p}"),
        None => prefix.to_owned(),
    });
    err
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn text_is_decoded_before_it_is_checked() {
        assert!(text(&raw(r#""a\u0000b""#), "user", 10).is_err());
        assert!(text(&raw(r#""a\u001fb""#), "user", 10).is_err());
        assert!(text(&raw(r#""\ud800""#), "user", 10).is_err());
        assert_eq!(text(&raw(r#""caf\u00e9""#), "user", 4).unwrap(), "café");
        assert!(text(&raw(r#""café!""#), "user", 4).is_err());
        assert!(model(&raw(r#""""#), "model").is_err());
        let long = format!("\"{}\"", "m".repeat(MAX_MODEL_CHARS + 1));
        assert_eq!(
            model(&raw(&long), "model").unwrap_err().param.as_deref(),
            Some("model")
        );
    }

    #[test]
    fn conversations_are_ids_or_objects_with_an_id() {
        let get_conv = |v: &'static str| {
            let value: &'static RawValue = Box::leak(raw(v));
            let get = move |k: &str| -> Option<&'static RawValue> {
                (k == "conversation").then_some(value)
            };
            check_body(&get, &[], UnsupportedTools::Drop).map(|f| f.conversation)
        };
        assert_eq!(get_conv(r#""conv_1""#).unwrap().as_deref(), Some("conv_1"));
        assert_eq!(
            get_conv(r#"{"id":"conv_2"}"#).unwrap().as_deref(),
            Some("conv_2")
        );
        assert_eq!(
            get_conv(r#"{"id":"c\u0000"}"#)
                .unwrap_err()
                .param
                .as_deref(),
            Some("conversation.id")
        );
        assert_eq!(get_conv("null").unwrap(), None);
        assert_eq!(
            get_conv("5").unwrap_err().param.as_deref(),
            Some("conversation")
        );
    }

    #[test]
    fn fallback_errors_name_the_fallback() {
        let err = in_fallback(
            ApiError::invalid_value("tools[1].type", "x"),
            "turing_options.fallbacks[0]",
        );
        assert_eq!(
            err.param.as_deref(),
            Some("turing_options.fallbacks[0].tools[1].type")
        );
    }
}
