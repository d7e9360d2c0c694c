//! Validating and rewriting a client's `POST /responses` body.
//!
//! The body is parsed once, into its top-level members with each value kept
//! as the exact bytes the client sent (`RawValue`). Platform fields
//! (`turing_options`, `tags`) are taken out, the model prefix is stripped, and
//! the body is re-assembled from the untouched raw values: numbers, unicode
//! escapes and unknown fields reach the upstream as the client wrote them.
//! Duplicate top-level keys are refused, so what we price is always what the
//! upstream reads.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::UnsupportedTools;
use crate::error::ApiError;
pub use crate::proxy::validate::McpServer;
use crate::proxy::validate::{self, check_body, BodyFacts};

const MAX_TIMEOUT_SECS: f64 = 300.0;
const DEFAULT_STREAM_TIMEOUT: Duration = Duration::from_secs(90);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

/// The top-level members of a JSON object, in order, values untouched.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for MembersVisitor<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some((Key(key), value)) = map.next_entry::<Key<'a>, &'a RawValue>()? {
                    members.push((key, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor(std::marker::PhantomData))
    }
}

/// One entry of `turing_options.fallbacks`.
#[derive(Debug, Clone)]
pub enum Fallback {
    /// Another public model (prefix stripped), same request fields.
    Model(String),
    /// Another model with some request fields replaced.
    Override {
        model: String,
        fields: Vec<(String, Box<RawValue>)>,
    },
    /// A chain built from the model catalogue.
    Auto,
}

/// `turing_options`, validated (platform.md).
#[derive(Debug, Clone, Default)]
pub struct TuringOptions {
    pub timeout: Option<Duration>,
    pub max_retries: u32,
    pub fallbacks: Vec<Fallback>,
}

/// A create request ready to forward.
#[derive(Debug)]
pub struct CreateRequest {
    /// The public model id without prefix: the price key.
    pub model: String,
    pub stream: bool,
    pub options: TuringOptions,
    /// What the checks learned from the request's own body.
    pub facts: BodyFacts,
    pub tags: Vec<String>,
    /// Runs upstream after the create call returns; billed when it finishes.
    pub background: bool,
    /// Offered tools left out of the forwarded body (`tools` module).
    pub dropped_tools: Vec<super::tools::Dropped>,
    /// The tenant's policy for unsupported tools, applied to every
    /// fallback's effective body as to the request's.
    policy: UnsupportedTools,
    /// What goes to the upstream when it knows the model by its public id.
    pub body: Bytes,
    /// The client's body, kept for deployments and fallbacks that need
    /// another model name or replaced fields.
    original: Bytes,
}

impl CreateRequest {
    /// The body for an upstream that knows the model as `upstream_model`,
    /// with `overrides` replacing (or adding) top-level fields; the offered
    /// tools of that effective body planned as [`check_body`] plans them.
    pub fn body_for(
        &self,
        upstream_model: &str,
        overrides: &[(String, Box<RawValue>)],
    ) -> Result<Bytes, ApiError> {
        if upstream_model == self.model && overrides.is_empty() {
            return Ok(self.body.clone());
        }
        let members: Members =
            serde_json::from_slice(&self.original).map_err(ApiError::internal)?;
        let get = effective(&members, overrides);
        let planned = match get("tools") {
            Some(raw) if raw.get() != "null" => {
                super::tools::plan(raw, get("tool_choice"))?.overrides
            }
            _ => Vec::new(),
        };
        let mut all = planned;
        all.extend(
            overrides
                .iter()
                .filter(|(k, _)| !all.iter().any(|(o, _)| o == k))
                .cloned()
                .collect::<Vec<_>>(),
        );
        assemble(&members.0, upstream_model, &all).map_err(ApiError::internal)
    }

    /// The checks of [`check_body`] on the body a fallback with `overrides`
    /// would send: the request's fields, replaced by the override's, under
    /// the request's tool policy. An error names the fallback
    /// (`param_prefix`, e.g. `turing_options.fallbacks[0]`) before the field.
    pub fn fallback_facts(
        &self,
        overrides: &[(String, Box<RawValue>)],
        param_prefix: &str,
    ) -> Result<BodyFacts, ApiError> {
        if overrides.is_empty() {
            return Ok(self.facts.clone());
        }
        let members: Members =
            serde_json::from_slice(&self.original).map_err(ApiError::internal)?;
        let get = effective(&members, overrides);
        check_body(&get, &self.tags, self.policy)
            .map_err(|e| validate::in_fallback(e, param_prefix))
    }

    /// The request's deadline for the upstream (platform.md defaults).
    pub fn timeout(&self) -> Duration {
        self.options.timeout.unwrap_or(if self.stream {
            DEFAULT_STREAM_TIMEOUT
        } else {
            DEFAULT_TIMEOUT
        })
    }
}

/// What a refused request still tells the ledger.
#[derive(Debug, Default, Clone)]
pub struct Partial {
    pub model: Option<String>,
    pub stream: bool,
    pub end_user: Option<String>,
}

pub struct Rejection {
    pub error: ApiError,
    pub partial: Partial,
}

/// A top-level field of the effective body: the override's, else the
/// request's own.
fn effective<'a>(
    members: &'a Members<'a>,
    overrides: &'a [(String, Box<RawValue>)],
) -> impl Fn(&str) -> Option<&'a RawValue> {
    move |name: &str| {
        overrides
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| &**v)
            .or_else(|| members.0.iter().find(|(k, _)| k == name).map(|(_, v)| *v))
    }
}

/// Parses, validates and rewrites; `model_prefix` is stripped from `model`;
/// `policy` is the tenant's for unsupported tools (it also applies to every
/// fallback's effective body).
pub fn parse_create(
    body: &Bytes,
    model_prefix: &str,
    policy: UnsupportedTools,
) -> Result<CreateRequest, Rejection> {
    let mut partial = Partial::default();
    let reject = |error: ApiError, partial: &Partial| Rejection {
        error,
        partial: partial.clone(),
    };
    let members: Members = serde_json::from_slice(body).map_err(|e| {
        let error = if e.classify() == serde_json::error::Category::Data {
            ApiError::invalid_request("The request body must be a JSON object.")
                .with_code("invalid_json")
        } else {
            ApiError::invalid_json(e)
        };
        reject(error, &partial)
    })?;
    let members = members.0;

    for (i, (key, _)) in members.iter().enumerate() {
        if members[..i].iter().any(|(other, _)| other == key) {
            return Err(reject(
                ApiError::invalid_request(format!(
                    "Duplicate parameter: '{key}' appears more than once."
                ))
                .with_code("duplicate_parameter")
                .with_param(key.as_ref()),
                &partial,
            ));
        }
    }
    let get = |name: &str| members.iter().find(|(k, _)| k == name).map(|(_, v)| *v);

    // Ledger context first, so a refusal still records who asked for what.
    if let Some(raw) = get("stream") {
        partial.stream = serde_json::from_str::<Option<bool>>(raw.get())
            .map_err(|_| {
                reject(
                    ApiError::invalid_value("stream", "'stream' must be a boolean."),
                    &partial,
                )
            })?
            .unwrap_or(false);
    }
    let model_raw =
        get("model").ok_or_else(|| reject(ApiError::missing_parameter("model"), &partial))?;
    let model = validate::model(model_raw, "model").map_err(|e| reject(e, &partial))?;
    let public = model
        .strip_prefix(model_prefix)
        .unwrap_or(&model)
        .to_owned();
    partial.model = Some(public.clone());
    partial.end_user = validate::end_user(&get).map_err(|e| reject(e, &partial))?;

    let tags = match get("tags") {
        Some(raw) => serde_json::from_str::<Option<Vec<String>>>(raw.get())
            .map_err(|_| {
                reject(
                    ApiError::invalid_value("tags", "'tags' must be an array of strings."),
                    &partial,
                )
            })?
            .unwrap_or_default(),
        None => Vec::new(),
    };
    // Offered but unsupported tools are dropped (or the request refused when
    // it cannot work without them, or by the policy) by the checks.
    let facts = check_body(&get, &tags, policy).map_err(|e| reject(e, &partial))?;
    let background = get("background")
        .map(|raw| serde_json::from_str::<Option<bool>>(raw.get()))
        .transpose()
        .map_err(|_| {
            reject(
                ApiError::invalid_value("background", "'background' must be a boolean."),
                &partial,
            )
        })?
        .flatten()
        .unwrap_or(false);
    let options = match get("turing_options") {
        Some(raw) => parse_turing_options(raw, model_prefix).map_err(|e| reject(e, &partial))?,
        None => TuringOptions::default(),
    };

    let out = assemble(&members, &public, &facts.tools.overrides)
        .map_err(|e| reject(ApiError::internal(e), &partial))?;
    let dropped_tools = facts.tools.dropped.clone();
    Ok(CreateRequest {
        model: public,
        stream: partial.stream,
        options,
        facts,
        tags,
        background,
        dropped_tools,
        policy,
        body: out,
        original: body.clone(),
    })
}

/// Re-assembles a body from the client's members: platform fields dropped,
/// `model` set, `overrides` replacing or adding fields, every other value the
/// client's own bytes.
fn assemble(
    members: &[(Cow<'_, str>, &RawValue)],
    model: &str,
    overrides: &[(String, Box<RawValue>)],
) -> Result<Bytes, serde_json::Error> {
    let size = members
        .iter()
        .map(|(k, v)| k.len() + v.get().len() + 4)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size + 64);
    out.push(b'{');
    let mut first = true;
    let mut put = |out: &mut Vec<u8>, key: &str, value: &[u8]| -> Result<(), serde_json::Error> {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        // Keys re-encoded by serde are equal to the client's as JSON strings.
        serde_json::to_writer(&mut *out, key)?;
        out.push(b':');
        out.extend_from_slice(value);
        Ok(())
    };
    let model_json = serde_json::to_vec(model)?;
    for (key, value) in members {
        if key == "turing_options" || key == "tags" {
            continue;
        }
        if key == "model" {
            put(&mut out, key, &model_json)?;
        } else if let Some((_, replaced)) = overrides.iter().find(|(k, _)| k == key) {
            put(&mut out, key, replaced.get().as_bytes())?;
        } else {
            put(&mut out, key, value.get().as_bytes())?;
        }
    }
    for (key, value) in overrides {
        if !members.iter().any(|(k, _)| k == key) {
            put(&mut out, key, value.get().as_bytes())?;
        }
    }
    out.push(b'}');
    Ok(Bytes::from(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTuringOptions<'a> {
    #[serde(borrow)]
    timeout: Option<&'a RawValue>,
    #[serde(borrow)]
    max_retries: Option<&'a RawValue>,
    #[serde(borrow)]
    fallbacks: Option<&'a RawValue>,
}

fn parse_turing_options(raw: &RawValue, model_prefix: &str) -> Result<TuringOptions, ApiError> {
    let options: RawTuringOptions = serde_json::from_str(raw.get()).map_err(|e| {
        let message = e.to_string();
        let param = message
            .split('`')
            .nth(1)
            .filter(|_| message.starts_with("unknown field"))
            .map_or_else(
                || "turing_options".to_owned(),
                |f| format!("turing_options.{f}"),
            );
        ApiError::invalid_value(
            param,
            "'turing_options' must be an object with 'timeout', 'max_retries' and 'fallbacks'.",
        )
    })?;
    let mut parsed = TuringOptions::default();
    if let Some(raw) = options.timeout {
        // Seconds, not money: a float is the right type here.
        let seconds = serde_json::from_str::<f64>(raw.get())
            .ok()
            .filter(|s| (0.0..=MAX_TIMEOUT_SECS).contains(s))
            .ok_or_else(|| {
                ApiError::invalid_value(
                    "turing_options.timeout",
                    "'turing_options.timeout' must be a number of seconds from 0 to 300.",
                )
            })?;
        // 0 asks for no limit of the caller's own: the platform maximum applies.
        let seconds = if seconds == 0.0 {
            MAX_TIMEOUT_SECS
        } else {
            seconds
        };
        parsed.timeout = Some(Duration::from_secs_f64(seconds));
    }
    if let Some(raw) = options.max_retries {
        parsed.max_retries = serde_json::from_str::<u32>(raw.get())
            .ok()
            .filter(|n| *n <= 3)
            .ok_or_else(|| {
                ApiError::invalid_value(
                    "turing_options.max_retries",
                    "'turing_options.max_retries' must be an integer from 0 to 3.",
                )
            })?;
    }
    if let Some(raw) = options.fallbacks {
        parsed.fallbacks = parse_fallbacks(raw, model_prefix)?;
    }
    Ok(parsed)
}

/// Request fields a fallback may not replace: they decide the shape of the
/// answer the client is already waiting for, or belong to the platform.
const NOT_OVERRIDABLE: [&str; 4] = ["stream", "turing_options", "tags", "background"];

fn parse_fallbacks(raw: &RawValue, model_prefix: &str) -> Result<Vec<Fallback>, ApiError> {
    const PARAM: &str = "turing_options.fallbacks";
    let strip = |m: &str| m.strip_prefix(model_prefix).unwrap_or(m).to_owned();
    let one = |raw: &RawValue, param: &str| -> Result<Fallback, ApiError> {
        if raw.get().trim_start().starts_with('"') {
            return validate::model(raw, param).map(|model| Fallback::Model(strip(&model)));
        }
        let Ok(members) = serde_json::from_str::<Members>(raw.get()) else {
            return Err(ApiError::invalid_value(
                param,
                "A fallback is a model id or an object with 'model' and fields to override.",
            ));
        };
        let mut model = None;
        let mut fields = Vec::new();
        for (key, value) in members.0 {
            if key == "model" {
                model = Some(validate::model(value, &format!("{param}.model"))?);
            } else if NOT_OVERRIDABLE.contains(&key.as_ref()) {
                return Err(ApiError::invalid_value(
                    format!("{param}.{key}"),
                    format!("A fallback cannot override '{key}'."),
                ));
            } else {
                fields.push((key.into_owned(), value.to_owned()));
            }
        }
        let model = model.ok_or_else(|| ApiError::missing_parameter(&format!("{param}.model")))?;
        Ok(Fallback::Override {
            model: strip(&model),
            fields,
        })
    };
    if raw.get() == "null" {
        return Ok(Vec::new());
    }
    if serde_json::from_str::<String>(raw.get()).is_ok_and(|s| s == "auto") {
        return Ok(vec![Fallback::Auto]);
    }
    if let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(raw.get()) {
        if items.is_empty() || items.len() > 5 {
            return Err(ApiError::invalid_value(
                PARAM,
                "Give between 1 and 5 fallbacks.",
            ));
        }
        return items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let param = format!("{PARAM}[{i}]");
                if item.get().trim() == "\"auto\"" {
                    return Err(ApiError::invalid_value(
                        param,
                        "'auto' stands alone, not in a list.",
                    ));
                }
                one(item, &param)
            })
            .collect();
    }
    one(raw, PARAM).map(|f| vec![f])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(body: &str) -> Result<CreateRequest, ApiError> {
        parse_create(
            &Bytes::copy_from_slice(body.as_bytes()),
            "turing/",
            UnsupportedTools::Drop,
        )
        .map_err(|r| r.error)
    }

    #[test]
    fn platform_fields_are_stripped_and_everything_else_is_byte_exact() {
        let body = r#"{"model":"turing/gpt-5.5","input":"caf\u00e9 ☕","temperature":1.00000000000000000001,
            "turing_options":{"timeout":30,"max_retries":2},"tags":["stateful"],"x_unknown":{"a":[1,2e5]},"stream":true}"#;
        let req = parse(body).unwrap();
        assert_eq!(req.model, "gpt-5.5");
        assert!(req.stream);
        assert_eq!(req.options.timeout, Some(Duration::from_secs(30)));
        assert_eq!(req.options.max_retries, 2);
        let out = std::str::from_utf8(&req.body).unwrap();
        assert_eq!(
            out,
            r#"{"model":"gpt-5.5","input":"caf\u00e9 ☕","temperature":1.00000000000000000001,"x_unknown":{"a":[1,2e5]},"stream":true}"#
        );
    }

    #[test]
    fn bad_bodies_are_refused_with_the_parameter_named() {
        assert_eq!(
            parse("{nope").unwrap_err().code.as_deref(),
            Some("invalid_json")
        );
        assert_eq!(
            parse("[1]").unwrap_err().code.as_deref(),
            Some("invalid_json")
        );
        let err = parse(r#"{"input":"hi"}"#).unwrap_err();
        assert_eq!(
            (err.param.as_deref(), err.code.as_deref()),
            (Some("model"), Some("missing_required_parameter"))
        );
        assert_eq!(
            parse(r#"{"model":5}"#).unwrap_err().param.as_deref(),
            Some("model")
        );
        assert_eq!(
            parse(r#"{"model":"a","stream":"yes"}"#)
                .unwrap_err()
                .param
                .as_deref(),
            Some("stream")
        );
        let err = parse(r#"{"model":"a","model":"b"}"#).unwrap_err();
        assert_eq!(err.code.as_deref(), Some("duplicate_parameter"));
    }

    #[test]
    fn unsupported_builtin_tools_are_dropped_unless_forced() {
        for kind in [
            "code_interpreter",
            "file_search",
            "web_search",
            "web_search_preview",
            "web_search_2025_08_26",
            "web_search_preview_2025_03_11",
        ] {
            let body = format!(
                r#"{{"model":"m","tools":[{{"type":"function","name":"f"}},{{"type":"{kind}"}}]}}"#
            );
            // Offered, not needed: dropped from the forwarded body.
            let req = parse(&body).unwrap();
            assert_eq!(req.dropped_tools[0].index, 1, "{kind}");
            assert_eq!(
                std::str::from_utf8(&req.body).unwrap(),
                r#"{"model":"m","tools":[{"type":"function","name":"f"}]}"#
            );
            assert_eq!(
                std::str::from_utf8(&req.body_for("other", &[]).unwrap()).unwrap(),
                r#"{"model":"other","tools":[{"type":"function","name":"f"}]}"#
            );
            // Forced: refused, naming its index.
            let forced = format!(
                r#"{{"model":"m","tool_choice":{{"type":"{kind}"}},"tools":[{{"type":"function","name":"f"}},{{"type":"{kind}"}}]}}"#
            );
            let err = parse(&forced).unwrap_err();
            assert_eq!(err.code.as_deref(), Some("unsupported_tool"), "{kind}");
            assert_eq!(err.param.as_deref(), Some("tools[1].type"), "{kind}");
        }
        assert!(parse(r#"{"model":"m","tools":[{"type":"mcp","server_label":"x"},{"type":"web_search_like_tool"}]}"#).is_ok());
    }

    #[test]
    fn turing_options_are_validated_with_their_path() {
        let param = |body: &str| parse(body).unwrap_err().param;
        assert_eq!(
            param(r#"{"model":"m","turing_options":{"timeout":301}}"#).as_deref(),
            Some("turing_options.timeout")
        );
        assert_eq!(
            param(r#"{"model":"m","turing_options":{"timeout":"5"}}"#).as_deref(),
            Some("turing_options.timeout")
        );
        assert_eq!(
            param(r#"{"model":"m","turing_options":{"max_retries":4}}"#).as_deref(),
            Some("turing_options.max_retries")
        );
        assert_eq!(
            param(r#"{"model":"m","turing_options":{"retries":1}}"#).as_deref(),
            Some("turing_options.retries")
        );
        assert_eq!(
            param(r#"{"model":"m","turing_options":5}"#).as_deref(),
            Some("turing_options")
        );
        let req = parse(r#"{"model":"m","stream":true,"turing_options":{"timeout":0}}"#).unwrap();
        assert_eq!(req.timeout(), Duration::from_secs(300));
        assert_eq!(
            parse(r#"{"model":"m","stream":true}"#).unwrap().timeout(),
            Duration::from_secs(90)
        );
        assert_eq!(
            parse(r#"{"model":"m"}"#).unwrap().timeout(),
            Duration::from_secs(120)
        );
    }

    #[test]
    fn fallbacks_parse_in_every_form_and_errors_name_the_path() {
        let options = |fallbacks: &str| {
            parse(&format!(
                r#"{{"model":"m","turing_options":{{"fallbacks":{fallbacks}}}}}"#
            ))
            .map(|r| r.options.fallbacks)
        };
        assert!(
            matches!(options(r#""turing/gpt-5""#).unwrap()[..], [Fallback::Model(ref m)] if m == "gpt-5")
        );
        assert!(matches!(
            options(r#""auto""#).unwrap()[..],
            [Fallback::Auto]
        ));
        let chain = options(r#"["a", {"model":"turing/b","temperature":0.2}]"#).unwrap();
        match &chain[1] {
            Fallback::Override { model, fields } => {
                assert_eq!(model, "b");
                assert_eq!(fields[0].0, "temperature");
                assert_eq!(fields[0].1.get(), "0.2");
            }
            other => panic!("{other:?}"),
        }
        let param = |f: &str| options(f).unwrap_err().param;
        assert_eq!(
            param(r#"["a", {"temperature":1}]"#).as_deref(),
            Some("turing_options.fallbacks[1].model")
        );
        assert_eq!(
            param(r#"["a", {"model":""}]"#).as_deref(),
            Some("turing_options.fallbacks[1].model")
        );
        assert_eq!(
            param(r#"{"model":"b","stream":true}"#).as_deref(),
            Some("turing_options.fallbacks.stream")
        );
        assert_eq!(
            param(r#"["auto"]"#).as_deref(),
            Some("turing_options.fallbacks[0]")
        );
        assert_eq!(param("5").as_deref(), Some("turing_options.fallbacks"));
        assert_eq!(param("[]").as_deref(), Some("turing_options.fallbacks"));
    }

    #[test]
    fn bodies_for_deployments_and_overrides_keep_the_clients_bytes() {
        let req = parse(
            r#"{"model":"turing/gpt-5.5","input":"caf\u00e9","temperature":1.0,"tags":["x"]}"#,
        )
        .unwrap();
        let fields = vec![
            (
                "temperature".to_owned(),
                RawValue::from_string("0.5".into()).unwrap(),
            ),
            (
                "top_p".to_owned(),
                RawValue::from_string("0.9".into()).unwrap(),
            ),
        ];
        let body = req.body_for("gpt-55-prod", &fields).unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"model":"gpt-55-prod","input":"caf\u00e9","temperature":0.5,"top_p":0.9}"#
        );
        assert_eq!(req.body_for("gpt-5.5", &[]).unwrap(), req.body);
    }

    #[test]
    fn stateful_requires_storage_and_mcp_hosts_are_collected() {
        let err = parse(r#"{"model":"m","tags":["stateful"],"store":false}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("store"));
        assert!(parse(r#"{"model":"m","tags":["stateful"]}"#).is_ok());
        let req = parse(r#"{"model":"m","previous_response_id":"resp_1","tools":[{"type":"function","name":"f"},{"type":"mcp","server_label":"x","server_url":"https://MCP.example.com/sse"}]}"#).unwrap();
        assert_eq!(req.facts.previous_response_id.as_deref(), Some("resp_1"));
        assert_eq!(
            req.facts.mcp_servers,
            vec![McpServer {
                index: 1,
                host: "mcp.example.com".into()
            }]
        );
        let err = parse(
            r#"{"model":"m","tools":[{"type":"mcp","server_label":"x","server_url":"not a url"}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("tools[0].server_url"));
    }

    #[test]
    fn refusals_keep_ledger_context() {
        let rejection = parse_create(
            &Bytes::from_static(
                br#"{"model":"turing/gpt-5","stream":true,"user":"u1","tools":[{"type":"file_search"}],"tool_choice":"required"}"#,
            ),
            "turing/",
            UnsupportedTools::Drop,
        )
        .err()
        .unwrap();
        assert_eq!(rejection.partial.model.as_deref(), Some("gpt-5"));
        assert!(rejection.partial.stream);
        assert_eq!(rejection.partial.end_user.as_deref(), Some("u1"));
    }

    fn storable(value: &str, max: usize) -> bool {
        !value.chars().any(char::is_control) && value.chars().count() <= max
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// Bodies built from hostile pieces: whatever is accepted or left on
        /// a refused row is storable, and every fallback's checks name it.
        #[test]
        fn whatever_passes_or_is_recorded_is_storable(
            model in r#"(turing/)?[a-z\\u0000\x01é]{0,300}"#,
            user in r#"[a-z\\u0000\\ud800]{0,600}"#,
            override_field in proptest::sample::select(vec!["user", "tools", "previous_response_id", "conversation", "store", "stream"]),
            override_value in proptest::sample::select(vec![r#""a\u0000""#, r#"[{"type":"web_search"}]"#, r#"{"id":"c"}"#, "false", "5", r#""ok""#]),
        ) {
            let body = format!(
                r#"{{"model":"{model}","user":"{user}","tags":["stateful"],"turing_options":{{"fallbacks":[{{"model":"m","{override_field}":{override_value}}}]}}}}"#
            );
            match parse_create(&Bytes::from(body), "turing/", UnsupportedTools::Drop) {
                Err(rejection) => {
                    proptest::prop_assert!(rejection.error.status.is_client_error());
                    if let Some(m) = &rejection.partial.model {
                        proptest::prop_assert!(storable(m, validate::MAX_MODEL_CHARS));
                    }
                    if let Some(u) = &rejection.partial.end_user {
                        proptest::prop_assert!(storable(u, validate::MAX_END_USER_CHARS));
                    }
                }
                Ok(request) => {
                    proptest::prop_assert!(storable(&request.model, validate::MAX_MODEL_CHARS));
                    for fallback in &request.options.fallbacks {
                        if let Fallback::Override { fields, .. } = fallback {
                            match request.fallback_facts(fields, "fb") {
                                Ok(facts) => {
                                    if let Some(u) = &facts.end_user {
                                        proptest::prop_assert!(storable(u, validate::MAX_END_USER_CHARS));
                                    }
                                }
                                Err(err) => proptest::prop_assert!(
                                    err.param.as_deref().is_some_and(|p| p.starts_with("fb"))
                                ),
                            }
                        }
                    }
                }
            }
        }
    }
}
