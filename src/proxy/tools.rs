//! Which of a client's offered tools reach the upstream.
//!
//! The platform does not serve built-in tools it does not offer or cannot
//! bill (see [`UNSUPPORTED_TOOLS`]). Clients such as the Codex CLI offer some
//! of them on every request, so by default an offered tool is *dropped* from
//! the forwarded body and named back to the client (a response header and the
//! ledger row). A request is refused only when it cannot work without the
//! tool: `tool_choice` forces it, or nothing usable is left while
//! `tool_choice` is `"required"`. A tenant may ask for the strict behaviour
//! (`[tools] unsupported = "refuse"`).
//!
//! Pure functions on the client's raw JSON: the kept tools are the client's
//! own bytes. This module never reads configuration or the database.

use std::borrow::Cow;

use axum::response::Response;
use http::HeaderValue;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::UnsupportedTools;
use crate::error::ApiError;

/// The response header naming the tools left out of the forwarded request.
pub const DROPPED_TOOLS_HEADER: &str = "x-tollgate-dropped-tools";

/// Built-in tools the platform does not serve, each also matched with a
/// dated suffix (`web_search_preview_2025_03_11`):
/// - `code_interpreter`, `file_search`, `web_search`, `web_search_preview`:
///   not offered by the platform (platform.md);
/// - `image_generation`: image tokens are reported apart from text usage and
///   the price table has no rate for them;
/// - `computer_use`, `computer_use_preview`: hosted tool with no price.
///
/// Client-executed tools (`function`, `custom`, `local_shell`, `shell`,
/// `apply_patch`) and `mcp` are billed as ordinary tokens and kept.
pub const UNSUPPORTED_TOOLS: [&str; 7] = [
    "code_interpreter",
    "file_search",
    "web_search",
    "web_search_preview",
    "image_generation",
    "computer_use",
    "computer_use_preview",
];

/// One tool left out of the forwarded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// Its index in the client's `tools` array.
    pub index: usize,
    pub kind: String,
}

/// The outcome of [`plan`].
#[derive(Debug, Clone, Default)]
pub struct ToolPlan {
    /// Replacements for `tools` / `tool_choice` when something was dropped;
    /// empty when the client's body goes out unchanged.
    pub overrides: Vec<(String, Box<RawValue>)>,
    pub dropped: Vec<Dropped>,
}

impl ToolPlan {
    /// `web_search,code_interpreter`: the header value and ledger text.
    pub fn dropped_list(&self) -> Option<String> {
        dropped_list(&self.dropped)
    }
}

/// Most distinct tool types [`dropped_list`] names: the header and the row
/// stay small whatever a client offers.
const MAX_LISTED: usize = 16;

/// `web_search,code_interpreter` (each type once, in the client's order,
/// at most [`MAX_LISTED`] then `...`), or `None` when nothing was dropped.
pub fn dropped_list(dropped: &[Dropped]) -> Option<String> {
    if dropped.is_empty() {
        return None;
    }
    let mut kinds: Vec<&str> = Vec::new();
    for d in dropped {
        if !kinds.contains(&d.kind.as_str()) {
            kinds.push(&d.kind);
        }
    }
    if kinds.len() > MAX_LISTED {
        kinds.truncate(MAX_LISTED);
        kinds.push("...");
    }
    Some(kinds.join(","))
}

/// The tenant's policy applied to what [`plan`] dropped: under `refuse` the
/// first dropped tool is a 400.
pub fn enforce(policy: UnsupportedTools, dropped: &[Dropped]) -> Result<(), ApiError> {
    match (policy, dropped.first()) {
        (UnsupportedTools::Refuse, Some(first)) => Err(refusal(Some(first.index), &first.kind)),
        _ => Ok(()),
    }
}

/// Names the dropped tools on the client's response.
pub fn with_dropped_header(mut response: Response, dropped: &[Dropped]) -> Response {
    if let Some(value) = dropped_list(dropped).and_then(|v| HeaderValue::from_str(&v).ok()) {
        response.headers_mut().insert(DROPPED_TOOLS_HEADER, value);
    }
    response
}

#[derive(Deserialize)]
struct Typed<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct AllowedTools<'a> {
    #[serde(borrow, default)]
    mode: Option<Cow<'a, str>>,
    #[serde(borrow)]
    tools: Vec<&'a RawValue>,
}

/// `web_search`, `web_search_2025_08_26`, `web_search_preview_2025_03_11` …
pub fn unsupported_tool(kind: &str) -> Option<&'static str> {
    UNSUPPORTED_TOOLS.iter().copied().find(|base| {
        kind == *base
            || kind
                .strip_prefix(base)
                .and_then(|rest| rest.strip_prefix('_'))
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
    })
}

/// The 400 for a tool the request cannot do without.
pub fn refusal(index: Option<usize>, kind: &str) -> ApiError {
    let base = unsupported_tool(kind).unwrap_or("this tool");
    let param = index.map_or_else(|| "tool_choice".to_owned(), |i| format!("tools[{i}].type"));
    ApiError::invalid_request(format!(
        "The built-in tool '{kind}' is not supported on this platform ({base} is unavailable). \
         Use a custom 'function' tool or an 'mcp' connector instead."
    ))
    .with_code("unsupported_tool")
    .with_param(param)
}

/// Decides which tools go upstream. `tools` is the client's raw array;
/// malformed entries are left for the caller's own validation (they are
/// kept, never dropped).
pub fn plan(tools: &RawValue, tool_choice: Option<&RawValue>) -> Result<ToolPlan, ApiError> {
    let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(tools.get()) else {
        // Not an array: the caller's check names the error.
        return Ok(ToolPlan::default());
    };
    let mut kept = Vec::with_capacity(items.len());
    let mut dropped = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match kind_of(item) {
            Some(kind) if unsupported_tool(&kind).is_some() => {
                dropped.push(Dropped { index, kind })
            }
            _ => kept.push(*item),
        }
    }
    let choice = tool_choice.filter(|raw| raw.get().trim() != "null");
    let new_choice = match choice {
        Some(raw) => check_choice(raw, &items, kept.is_empty())?,
        None => None,
    };
    if dropped.is_empty() {
        return Ok(ToolPlan::default());
    }
    let mut overrides = vec![("tools".to_owned(), join_array(&kept)?)];
    if let Some(choice) = new_choice {
        overrides.push(("tool_choice".to_owned(), choice));
    }
    Ok(ToolPlan { overrides, dropped })
}

fn kind_of(raw: &RawValue) -> Option<String> {
    serde_json::from_str::<Typed>(raw.get())
        .ok()
        .and_then(|t| t.kind)
        .map(Cow::into_owned)
}

fn index_of(items: &[&RawValue], kind: &str) -> Option<usize> {
    items
        .iter()
        .position(|item| kind_of(item).as_deref() == Some(kind))
}

/// Refuses a `tool_choice` that needs an unsupported tool; returns a
/// rewritten `allowed_tools` choice when some of its entries are dropped.
fn check_choice(
    raw: &RawValue,
    items: &[&RawValue],
    none_left: bool,
) -> Result<Option<Box<RawValue>>, ApiError> {
    if let Ok(mode) = serde_json::from_str::<String>(raw.get()) {
        if mode == "required" && none_left {
            let first = items.iter().find_map(|item| kind_of(item));
            return Err(refusal(
                first.as_ref().map(|_| 0),
                first.as_deref().unwrap_or("unknown"),
            ));
        }
        return Ok(None);
    }
    let Some(kind) = kind_of(raw) else {
        return Ok(None);
    };
    if unsupported_tool(&kind).is_some() {
        return Err(refusal(index_of(items, &kind), &kind));
    }
    if kind != "allowed_tools" {
        return Ok(None);
    }
    let Ok(allowed) = serde_json::from_str::<AllowedTools>(raw.get()) else {
        return Ok(None);
    };
    let (usable, unusable): (Vec<&RawValue>, Vec<&RawValue>) = allowed
        .tools
        .iter()
        .partition(|t| kind_of(t).is_none_or(|k| unsupported_tool(&k).is_none()));
    if unusable.is_empty() {
        return Ok(None);
    }
    if usable.is_empty() {
        if allowed.mode.as_deref() == Some("required") {
            let kind = kind_of(unusable[0]).unwrap_or_default();
            return Err(refusal(index_of(items, &kind), &kind));
        }
        // Nothing the model may call is left: that is `"none"`.
        return RawValue::from_string("\"none\"".to_owned())
            .map(Some)
            .map_err(ApiError::internal);
    }
    replace_member(raw, "tools", &join_array(&usable)?).map(Some)
}

fn join_array(items: &[&RawValue]) -> Result<Box<RawValue>, ApiError> {
    let mut out = String::with_capacity(items.iter().map(|i| i.get().len() + 1).sum::<usize>() + 2);
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item.get());
    }
    out.push(']');
    RawValue::from_string(out).map_err(ApiError::internal)
}

/// The object `raw` with member `key` replaced, other members byte-exact.
fn replace_member(raw: &RawValue, key: &str, value: &RawValue) -> Result<Box<RawValue>, ApiError> {
    let members: Vec<(Cow<'_, str>, &RawValue)> =
        serde_json::from_str::<indexmap_free::Members>(raw.get())
            .map_err(ApiError::internal)?
            .0;
    let mut out = String::from("{");
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(k.as_ref()).map_err(ApiError::internal)?);
        out.push(':');
        out.push_str(if k == key { value.get() } else { v.get() });
    }
    out.push('}');
    RawValue::from_string(out).map_err(ApiError::internal)
}

/// An object's members in order without a map type that would reorder them.
pub(crate) mod indexmap_free {
    use std::borrow::Cow;

    use serde::de::{Deserializer, MapAccess, Visitor};
    use serde::Deserialize;
    use serde_json::value::RawValue;

    #[derive(Deserialize)]
    struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

    pub struct Members<'a>(pub Vec<(Cow<'a, str>, &'a RawValue)>);

    impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct V<'a>(std::marker::PhantomData<&'a ()>);
            impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
                type Value = Members<'a>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    let mut out = Vec::new();
                    while let Some((Key(k), v)) = map.next_entry::<Key<'a>, &'a RawValue>()? {
                        out.push((k, v));
                    }
                    Ok(Members(out))
                }
            }
            deserializer.deserialize_map(V(std::marker::PhantomData))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    fn run(tools: &str, choice: Option<&str>) -> Result<ToolPlan, ApiError> {
        let choice = choice.map(raw);
        plan(&raw(tools), choice.as_deref())
    }

    fn override_of<'a>(plan: &'a ToolPlan, key: &str) -> Option<&'a str> {
        plan.overrides
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.get())
    }

    #[test]
    fn supported_tools_leave_the_body_alone() {
        let plan = run(
            r#"[{"type":"function","name":"f"},{"type":"mcp","server_url":"https://x"}]"#,
            Some(r#""required""#),
        )
        .unwrap();
        assert!(plan.overrides.is_empty());
        assert!(plan.dropped.is_empty());
        assert_eq!(plan.dropped_list(), None);
    }

    #[test]
    fn offered_unsupported_tools_are_dropped_keeping_the_clients_bytes() {
        let tools = r#"[{"type":"web_search"}, {"type":"function","name":"f","x":1.50e0,"s":"\u00e9"},{"type":"code_interpreter","container":{"type":"auto"}}]"#;
        let plan = run(tools, Some(r#""auto""#)).unwrap();
        assert_eq!(
            override_of(&plan, "tools"),
            Some(r#"[{"type":"function","name":"f","x":1.50e0,"s":"\u00e9"}]"#)
        );
        assert_eq!(override_of(&plan, "tool_choice"), None);
        assert_eq!(
            plan.dropped_list().as_deref(),
            Some("web_search,code_interpreter")
        );
        assert_eq!(plan.dropped[1].index, 2);
    }

    #[test]
    fn the_dropped_list_names_each_type_once_and_stays_bounded() {
        let dropped = |kinds: &[String]| -> Vec<Dropped> {
            kinds
                .iter()
                .enumerate()
                .map(|(index, kind)| Dropped {
                    index,
                    kind: kind.clone(),
                })
                .collect()
        };
        let repeated = vec!["web_search".to_owned(); 5000];
        assert_eq!(
            dropped_list(&dropped(&repeated)).as_deref(),
            Some("web_search")
        );
        let many: Vec<String> = (0..100).map(|i| format!("web_search_{i}")).collect();
        let listed = dropped_list(&dropped(&many)).unwrap();
        assert_eq!(listed.split(',').count(), MAX_LISTED + 1);
        assert!(listed.ends_with(",..."));
    }

    #[test]
    fn every_unsupported_kind_and_dated_variant_is_dropped() {
        for kind in UNSUPPORTED_TOOLS.iter().map(|k| (*k).to_owned()).chain([
            "web_search_preview_2025_03_11".into(),
            "web_search_2025_08_26".into(),
        ]) {
            let plan = run(&format!(r#"[{{"type":"{kind}"}}]"#), None).unwrap();
            assert_eq!(override_of(&plan, "tools"), Some("[]"), "{kind}");
            assert_eq!(plan.dropped_list().as_deref(), Some(kind.as_str()));
        }
        // Not a dated variant: kept (the upstream judges it).
        assert!(run(r#"[{"type":"web_searcher"}]"#, None)
            .unwrap()
            .dropped
            .is_empty());
        assert!(run(r#"[{"type":"web_search_fast"}]"#, None)
            .unwrap()
            .dropped
            .is_empty());
    }

    #[test]
    fn a_forced_unsupported_tool_is_refused() {
        let err = match run(
            r#"[{"type":"function","name":"f"},{"type":"file_search"}]"#,
            Some(r#"{"type":"file_search"}"#),
        ) {
            Err(err) => err,
            Ok(_) => panic!("forced file_search must be refused"),
        };
        assert_eq!(err.code.as_deref(), Some("unsupported_tool"));
        assert_eq!(err.param.as_deref(), Some("tools[1].type"));
        assert_eq!(err.status, http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn required_with_only_unsupported_tools_is_refused() {
        let err = run(r#"[{"type":"web_search_preview"}]"#, Some(r#""required""#))
            .err()
            .unwrap();
        assert_eq!(err.code.as_deref(), Some("unsupported_tool"));
        assert_eq!(err.param.as_deref(), Some("tools[0].type"));
        // Another usable tool: `required` still has something to call.
        let plan = run(
            r#"[{"type":"web_search_preview"},{"type":"function","name":"f"}]"#,
            Some(r#""required""#),
        )
        .unwrap();
        assert_eq!(plan.dropped_list().as_deref(), Some("web_search_preview"));
    }

    #[test]
    fn allowed_tools_lose_their_dropped_entries() {
        let plan = run(
            r#"[{"type":"web_search"},{"type":"function","name":"f"}]"#,
            Some(
                r#"{"type":"allowed_tools","mode":"auto","tools":[{"type":"web_search"},{"type":"function","name":"f"}]}"#,
            ),
        )
        .unwrap();
        assert_eq!(
            override_of(&plan, "tool_choice"),
            Some(
                r#"{"type":"allowed_tools","mode":"auto","tools":[{"type":"function","name":"f"}]}"#
            )
        );
        let err = run(
            r#"[{"type":"web_search"},{"type":"function","name":"f"}]"#,
            Some(r#"{"type":"allowed_tools","mode":"required","tools":[{"type":"web_search"}]}"#),
        )
        .err()
        .unwrap();
        assert_eq!(err.param.as_deref(), Some("tools[0].type"));
        let plan = run(
            r#"[{"type":"web_search"},{"type":"function","name":"f"}]"#,
            Some(r#"{"type":"allowed_tools","mode":"auto","tools":[{"type":"web_search"}]}"#),
        )
        .unwrap();
        assert_eq!(override_of(&plan, "tool_choice"), Some(r#""none""#));
    }

    #[test]
    fn the_refuse_policy_turns_a_drop_into_a_400() {
        let plan = run(
            r#"[{"type":"function","name":"f"},{"type":"web_search"}]"#,
            None,
        )
        .unwrap();
        assert!(enforce(UnsupportedTools::Drop, &plan.dropped).is_ok());
        let err = enforce(UnsupportedTools::Refuse, &plan.dropped).unwrap_err();
        assert_eq!(err.code.as_deref(), Some("unsupported_tool"));
        assert_eq!(err.param.as_deref(), Some("tools[1].type"));
        assert!(enforce(UnsupportedTools::Refuse, &[]).is_ok());
    }

    #[test]
    fn malformed_tools_are_left_to_validation() {
        assert!(run(r#"{"type":"web_search"}"#, None)
            .unwrap()
            .overrides
            .is_empty());
        assert!(run(r#"[{"name":"no type"}]"#, None)
            .unwrap()
            .dropped
            .is_empty());
    }
}
