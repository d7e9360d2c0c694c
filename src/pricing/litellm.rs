//! Import of a price file in LiteLLM's `model_prices_and_context_window.json`
//! format (`tollgate prices import FILE`, `POST /admin/prices/import`): an
//! object of model id → entry, turned into [`PriceSheet`]s plus a report of
//! what was left out and why.
//!
//! It owns the leniency rules for that format. Lenient about what it does not
//! bill (`max_tokens`, `supports_*`, `litellm_provider`, batch, audio, image,
//! search prices, ...: ignored, with the price-like ones listed in a note) and
//! strict about what it does: a price field it bills with a bad value skips
//! the whole entry with the reason, because importing a model with one rate
//! silently missing would bill it wrongly. It must never read a number
//! through a float (LiteLLM writes `1.25e-06`; every rate is read from its
//! JSON text by [`parse_decimal`]) and never write anywhere: storing the
//! result is the caller's job.
//!
//! Which entries are imported: `mode` `"chat"`, `"responses"` or absent (the
//! Responses API serves text models; image, audio, embedding, realtime and
//! completion-only modes are skipped) with `input_cost_per_token` and
//! `output_cost_per_token`. `sample_spec` (LiteLLM's schema example) is
//! skipped. A tier or long-context variant without its own input and output
//! rate is dropped and noted (see `sheet`'s variant rule); e.g. LiteLLM's
//! `gpt-5-nano` has `input_cost_per_token_priority` but no output priority
//! rate, so the model imports without a priority price and priority
//! responses stay unpriced rather than being billed at a guess.
//!
//! Model ids are kept as written, with one exception: `openai/<id>` becomes
//! `<id>`, because on OpenAI's own price list the prefix names the same
//! model, and public ids carry no provider. If the file also has `<id>`
//! itself, that entry wins and the prefixed one is skipped. Other prefixes
//! (`azure/`, `azure/eu/`, `openrouter/...`) stay: they are different price
//! lists (regional uplifts, resellers), and stripping them would let them
//! overwrite the OpenAI price of the public id. A model id that occurs more
//! than once is ambiguous (parsers disagree on which copy wins) and every
//! copy is skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::pricing::sheet::{
    parse_decimal, parse_field_name, ModelLimits, OnIncomplete, PriceSheet, RawFields,
    SheetBuilder, DEFAULT_CURRENCY, LIMIT_FIELDS,
};

/// What an import produced. Both lists keep the file's order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    pub imported: Vec<ImportedModel>,
    pub skipped: Vec<SkippedModel>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportedModel {
    /// The id prices are looked up by (the public id without `turing/`).
    pub model: String,
    pub sheet: PriceSheet,
    /// What was left out of this model's sheet and why (dropped variants,
    /// ignored price fields). Empty when the entry was taken whole.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedModel {
    /// The key as written in the file.
    pub model: String,
    pub reason: String,
}

/// The file as a whole could not be read; single entries never cause this.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("not a LiteLLM price file: {0}")]
    Json(#[from] serde_json::Error),
}

const OPENAI_PREFIX: &str = "openai/";

/// Parses a LiteLLM price file. See the module doc for what is imported.
pub fn parse_litellm(json: &str) -> Result<ImportReport, ImportError> {
    let TopLevel(entries) = serde_json::from_str(json)?;
    let keys: BTreeSet<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    let ids: Vec<Result<&str, String>> = entries.iter().map(|(k, _)| model_id(k, &keys)).collect();
    let mut occurrences: BTreeMap<&str, usize> = BTreeMap::new();
    for id in ids.iter().flatten() {
        *occurrences.entry(id).or_default() += 1;
    }

    let mut report = ImportReport::default();
    for ((key, raw), id) in entries.iter().zip(&ids) {
        let outcome = id.clone().and_then(|id| {
            if occurrences.get(id).copied().unwrap_or(0) > 1 {
                return Err(format!(
                    "model id `{id}` occurs more than once in the file; which copy \
                     is meant is ambiguous, so none is imported"
                ));
            }
            import_entry(raw).map(|(sheet, notes)| ImportedModel {
                model: id.to_owned(),
                sheet,
                notes,
            })
        });
        match outcome {
            Ok(model) => report.imported.push(model),
            Err(reason) => report.skipped.push(SkippedModel {
                model: key.clone(),
                reason,
            }),
        }
    }
    Ok(report)
}

/// The id a key is imported under, or why it is not a model.
fn model_id<'k>(key: &'k str, keys: &BTreeSet<&str>) -> Result<&'k str, String> {
    if key == "sample_spec" {
        return Err("LiteLLM's schema example, not a model".to_owned());
    }
    let id = match key.strip_prefix(OPENAI_PREFIX) {
        Some(rest) if keys.contains(rest) => {
            return Err(format!(
                "same model as `{rest}` once the provider prefix `{OPENAI_PREFIX}` is \
                 dropped; the `{rest}` entry is used"
            ))
        }
        Some(rest) => rest,
        None => key,
    };
    if id.is_empty() || id.trim() != id {
        return Err("model id is empty or has surrounding whitespace".to_owned());
    }
    Ok(id)
}

/// One entry → its sheet and notes, or the reason it is skipped.
fn import_entry(raw: &RawValue) -> Result<(PriceSheet, Vec<String>), String> {
    let RawFields(fields) = serde_json::from_str(raw.get())
        .map_err(|e| format!("entry is not a JSON object with distinct keys: {e}"))?;

    if let Some((_, mode)) = fields.iter().find(|(k, _)| k == "mode") {
        let mode: String =
            serde_json::from_str(mode.get()).map_err(|_| "`mode` is not a string".to_owned())?;
        if !matches!(mode.as_str(), "chat" | "responses") {
            let shown: String = mode.chars().take(40).collect();
            return Err(format!("mode {shown:?} is not served by the Responses API"));
        }
    }

    let mut builder = SheetBuilder::default();
    let mut limits = ModelLimits::default();
    let mut ignored = Vec::new();
    for (name, value) in &fields {
        if LIMIT_FIELDS.contains(&name.as_str()) {
            // A limit LiteLLM gets wrong (null, a float) is left out, not fatal.
            if let Ok(value) = parse_decimal(value, name) {
                let _ = limits.set(name, value);
            }
            continue;
        }
        match parse_field_name(name) {
            Some((field, variant)) => {
                let rate = parse_decimal(value, name).map_err(|e| e.to_string())?;
                builder
                    .set(name, field, variant, rate)
                    .map_err(|e| e.to_string())?;
            }
            // Price-like keys the formula has no dimension for are worth a
            // note: a reader of the report should see e.g. that
            // `cache_creation_input_token_cost` is not billed.
            None if name.contains("cost") => ignored.push(name.as_str()),
            None => {}
        }
    }
    let (sheet, mut notes) = builder
        .build(DEFAULT_CURRENCY.to_owned(), OnIncomplete::Drop)
        .map_err(|e| e.to_string())?;
    let sheet = sheet.with_limits(limits);
    if !ignored.is_empty() {
        notes.push(format!(
            "ignored price fields the Responses cost formula does not bill: {}",
            ignored.join(", ")
        ));
    }
    Ok((sheet, notes))
}

/// The file's top level, in order and with duplicate keys kept (they are
/// reported per model instead of failing the whole file).
struct TopLevel(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopLevel;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of model id → price entry")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    out.push((key, map.next_value::<Box<RawValue>>()?));
                }
                Ok(TopLevel(out))
            }
        }
        deserializer.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::pricing::cost::cost;
    use crate::pricing::sheet::Variant;
    use crate::usage::Usage;
    use rust_decimal::Decimal;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    fn imported<'a>(r: &'a ImportReport, model: &str) -> &'a ImportedModel {
        r.imported
            .iter()
            .find(|m| m.model == model)
            .unwrap_or_else(|| panic!("{model} not imported: {:?}", r.skipped))
    }

    fn skip_reason<'a>(r: &'a ImportReport, key: &str) -> &'a str {
        &r.skipped
            .iter()
            .find(|s| s.model == key)
            .unwrap_or_else(|| panic!("{key} not skipped"))
            .reason
    }

    /// Entries copied from the LiteLLM sample (trimmed of `supports_*`),
    /// plus hand-made broken ones.
    const SAMPLE: &str = r#"{
      "sample_spec": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0, "mode": "one of: chat, embedding, completion, image_generation, audio_transcription, audio_speech, image_generation, moderation, rerank, search"},
      "gpt-5": {"cache_read_input_token_cost": 1.25e-07, "cache_read_input_token_cost_flex": 6.25e-08, "cache_read_input_token_cost_priority": 2.5e-07, "input_cost_per_token": 1.25e-06, "input_cost_per_token_flex": 6.25e-07, "input_cost_per_token_priority": 2.5e-06, "litellm_provider": "openai", "max_input_tokens": 272000, "max_output_tokens": 128000, "max_tokens": 128000, "mode": "chat", "output_cost_per_token": 1e-05, "output_cost_per_token_flex": 5e-06, "output_cost_per_token_priority": 2e-05, "supported_endpoints": ["/v1/chat/completions", "/v1/batch", "/v1/responses"], "supports_reasoning": true},
      "gpt-5-nano": {"cache_read_input_token_cost": 5e-09, "cache_read_input_token_cost_flex": 2.5e-09, "input_cost_per_token": 5e-08, "input_cost_per_token_flex": 2.5e-08, "input_cost_per_token_priority": 2.5e-06, "litellm_provider": "openai", "mode": "chat", "output_cost_per_token": 4e-07, "output_cost_per_token_flex": 2e-07},
      "gpt-5.4-pro": {"cache_read_input_token_cost": 3e-06, "cache_read_input_token_cost_above_272k_tokens": 6e-06, "input_cost_per_token": 3e-05, "input_cost_per_token_above_272k_tokens": 6e-05, "input_cost_per_token_batches": 1.5e-05, "input_cost_per_token_flex": 1.5e-05, "litellm_provider": "openai", "mode": "responses", "output_cost_per_token": 0.00018, "output_cost_per_token_above_272k_tokens": 0.00027, "output_cost_per_token_batches": 9e-05, "output_cost_per_token_flex": 9e-05, "regional_processing_uplift_multiplier_eu": 1.1},
      "gemini-2.5-pro": {"input_cost_per_token": 1.25e-06, "input_cost_per_token_above_200k_tokens": 2.5e-06, "input_cost_per_token_above_200k_tokens_priority": 4.5e-06, "output_cost_per_token": 1e-05, "output_cost_per_token_above_200k_tokens": 1.5e-05, "output_cost_per_reasoning_token": 1e-05, "litellm_provider": "vertex_ai-language-models"},
      "gpt-image-1": {"input_cost_per_image": 0.042, "litellm_provider": "openai", "mode": "image_generation"},
      "text-embedding-3-small": {"input_cost_per_token": 2e-08, "output_cost_per_token": 0.0, "mode": "embedding"},
      "no-output-price": {"input_cost_per_token": 1e-06, "mode": "chat"},
      "bad-string": {"input_cost_per_token": "1e-06x", "output_cost_per_token": 1e-06},
      "bad-negative": {"input_cost_per_token": 1e-06, "output_cost_per_token": -1e-06},
      "bad-null": {"input_cost_per_token": 1e-06, "output_cost_per_token": 1e-06, "cache_read_input_token_cost": null},
      "bad-precision": {"input_cost_per_token": 0.0002833333333333333, "output_cost_per_token": 1e-06},
      "bad-mode": {"input_cost_per_token": 1e-06, "output_cost_per_token": 1e-06, "mode": 3},
      "not-an-object": 5,
      "dup-key-inside": {"input_cost_per_token": 1e-06, "input_cost_per_token": 2e-06, "output_cost_per_token": 1e-06},
      "openai/gpt-5": {"input_cost_per_token": 9e-06, "output_cost_per_token": 9e-06},
      "openai/o3": {"input_cost_per_token": 2e-06, "output_cost_per_token": 8e-06},
      "azure/gpt-5": {"input_cost_per_token": 1.375e-06, "output_cost_per_token": 1.1e-05, "litellm_provider": "azure"},
      "twice": {"input_cost_per_token": 1e-06, "output_cost_per_token": 1e-06},
      "twice": {"input_cost_per_token": 2e-06, "output_cost_per_token": 2e-06},
      "no-mode": {"input_cost_per_token": "0.000001", "output_cost_per_token": "0.000002"}
    }"#;

    #[test]
    fn imports_text_models_exactly() {
        let r = parse_litellm(SAMPLE).unwrap();
        let gpt5 = imported(&r, "gpt-5");
        assert!(gpt5.notes.is_empty(), "{:?}", gpt5.notes);
        let s = &gpt5.sheet;
        assert_eq!(s.base().input(), dec("0.00000125"));
        assert_eq!(s.base().input().to_string(), "0.00000125");
        assert_eq!(s.base().cache_read(), Some(dec("0.000000125")));
        assert_eq!(s.base().output(), dec("0.00001"));
        assert_eq!(s.flex().unwrap().cache_read(), Some(dec("0.0000000625")));
        assert_eq!(s.priority().unwrap().output(), dec("0.00002"));
        assert_eq!(s.currency(), "usd");

        let pro = imported(&r, "gpt-5.4-pro");
        assert_eq!(pro.sheet.priority(), None);
        assert_eq!(pro.sheet.flex().unwrap().cache_read(), None);
        assert_eq!(
            pro.sheet.rates(Variant::AboveK(272)).unwrap().output(),
            dec("0.00027")
        );
        assert_eq!(
            pro.notes,
            [
                "ignored price fields the Responses cost formula does not bill: \
              input_cost_per_token_batches, output_cost_per_token_batches"
            ]
        );

        // Not an OpenAI model, but a text model with prices: imported. The
        // compound long-context-priority key has no rule and is noted.
        let gemini = imported(&r, "gemini-2.5-pro");
        assert_eq!(gemini.sheet.base().reasoning(), Some(dec("0.00001")));
        assert_eq!(gemini.sheet.long_context()[0].above_k(), 200);
        assert!(gemini.notes[0].contains("input_cost_per_token_above_200k_tokens_priority"));

        assert_eq!(
            imported(&r, "no-mode").sheet.base().output(),
            dec("0.000002")
        );
        assert_eq!(
            imported(&r, "azure/gpt-5").sheet.base().input(),
            dec("0.000001375")
        );
        assert_eq!(imported(&r, "o3").sheet.base().output(), dec("0.000008"));
    }

    #[test]
    fn incomplete_variant_is_dropped_and_said() {
        let r = parse_litellm(SAMPLE).unwrap();
        let nano = imported(&r, "gpt-5-nano");
        assert_eq!(nano.sheet.priority(), None);
        assert_eq!(nano.sheet.flex().unwrap().input(), dec("0.000000025"));
        assert_eq!(
            nano.notes,
            [
                "dropped the priority variant: a priority price needs its own input and \
              output rate, and output_cost_per_token_priority is missing"
            ]
        );
        // And so a priority response on gpt-5-nano stays unpriced.
        let u = Usage {
            input_tokens: 10,
            output_tokens: 10,
            total_tokens: 20,
            ..Usage::default()
        };
        assert_eq!(
            cost(&nano.sheet, &u, Some("priority"))
                .unwrap_err()
                .reason(),
            "no_price_for_tier:priority"
        );
    }

    #[test]
    fn skips_say_why() {
        let r = parse_litellm(SAMPLE).unwrap();
        let cases = [
            ("sample_spec", "schema example"),
            ("gpt-image-1", "mode \"image_generation\" is not served"),
            ("text-embedding-3-small", "mode \"embedding\""),
            ("no-output-price", "output_cost_per_token: required"),
            (
                "bad-string",
                "input_cost_per_token: \"1e-06x\" is not a decimal number",
            ),
            (
                "bad-negative",
                "output_cost_per_token: must not be negative",
            ),
            (
                "bad-null",
                "cache_read_input_token_cost: must be a number or a decimal string, not null",
            ),
            ("bad-precision", "more than 16 decimal places"),
            ("bad-mode", "`mode` is not a string"),
            ("not-an-object", "not a JSON object"),
            ("dup-key-inside", "duplicate field `input_cost_per_token`"),
            ("openai/gpt-5", "same model as `gpt-5`"),
            ("twice", "occurs more than once"),
        ];
        for (key, why) in cases {
            let reason = skip_reason(&r, key);
            assert!(reason.contains(why), "{key}: {reason}");
        }
        // Both copies of the duplicated id are refused.
        assert_eq!(r.skipped.iter().filter(|s| s.model == "twice").count(), 2);
        assert_eq!(r.skipped.len(), cases.len() + 1);
        assert_eq!(r.imported.len(), 7);
        // Nothing imported twice under one id.
        let ids: BTreeSet<&str> = r.imported.iter().map(|m| m.model.as_str()).collect();
        assert_eq!(ids.len(), r.imported.len());
        // gpt-5 came from its own entry, not from openai/gpt-5.
        assert_eq!(
            imported(&r, "gpt-5").sheet.base().input(),
            dec("0.00000125")
        );
    }

    #[test]
    fn whole_file_errors() {
        assert!(parse_litellm("[]").is_err());
        assert!(parse_litellm("{\"a\": ").is_err());
        assert!(parse_litellm("").is_err());
        let empty = parse_litellm("{}").unwrap();
        assert!(empty.imported.is_empty() && empty.skipped.is_empty());
    }

    #[test]
    fn report_serializes_with_decimal_strings() {
        let r = parse_litellm(
            r#"{"m": {"input_cost_per_token": 1.25e-06, "output_cost_per_token": 1e-05}}"#,
        )
        .unwrap();
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"imported":[{"model":"m","sheet":{"currency":"usd","input_cost_per_token":"0.00000125","output_cost_per_token":"0.00001"}}],"skipped":[]}"#
        );
    }

    // In the main crate: include_str!("../../config/prices.json").
    const BUNDLED: &str = include_str!("../../config/prices.json");

    #[test]
    fn bundled_prices_load_whole_and_exact() {
        let r = parse_litellm(BUNDLED).unwrap();
        assert!(r.skipped.is_empty(), "{:?}", r.skipped);
        for m in &r.imported {
            assert!(m.notes.is_empty(), "{}: {:?}", m.model, m.notes);
        }
        let ids: Vec<&str> = r.imported.iter().map(|m| m.model.as_str()).collect();
        assert_eq!(
            ids,
            [
                "gpt-5",
                "gpt-5-mini",
                "gpt-5-nano",
                "gpt-5.1",
                "gpt-5.2",
                "gpt-5.4",
                "gpt-5.4-mini",
                "gpt-5.4-nano",
                "gpt-5.5",
                "gpt-5.4-pro",
                "gpt-5.5-pro",
                "o3",
                "o4-mini",
                "gpt-4.1"
            ]
        );
        let sheet = |id: &str| &imported(&r, id).sheet;

        // gpt-5.5: 5 / 0.50 / 30 per 1M; flex half; priority double;
        // above 272K: 10 / 1 / 45.
        let s = sheet("gpt-5.5");
        assert_eq!(s.base().input().to_string(), "0.000005");
        assert_eq!(s.base().cache_read(), Some(dec("0.0000005")));
        assert_eq!(s.base().output(), dec("0.00003"));
        assert_eq!(s.flex().unwrap().input(), dec("0.0000025"));
        assert_eq!(s.priority().unwrap().output(), dec("0.00006"));
        let lc = s.rates(Variant::AboveK(272)).unwrap();
        assert_eq!(lc.input(), dec("0.00001"));
        assert_eq!(lc.cache_read(), Some(dec("0.000001")));
        assert_eq!(lc.output(), dec("0.000045"));

        // gpt-5.4: 2.50 / 0.25 / 15; flex cached is 0.13 (as listed, not 0.125);
        // above 272K: 5 / 0.50 / 22.50.
        let s = sheet("gpt-5.4");
        assert_eq!(s.flex().unwrap().cache_read(), Some(dec("0.00000013")));
        let lc = s.rates(Variant::AboveK(272)).unwrap();
        assert_eq!(lc.input(), dec("0.000005"));
        assert_eq!(lc.cache_read(), Some(dec("0.0000005")));
        assert_eq!(lc.output(), dec("0.0000225"));

        // Smallest rates survive exactly: gpt-5-nano flex cached 0.0025 / 1M.
        assert_eq!(
            sheet("gpt-5-nano").flex().unwrap().cache_read(),
            Some(dec("0.0000000025"))
        );
        assert_eq!(
            sheet("o4-mini").flex().unwrap().cache_read(),
            Some(dec("0.0000001375"))
        );
        assert_eq!(
            sheet("gpt-5-mini").priority().unwrap().output(),
            dec("0.0000036")
        );

        // Tiers §8 lists as n/a have no price (such responses stay unpriced).
        assert!(sheet("gpt-5-nano").priority().is_none());
        assert!(sheet("gpt-5.4-nano").priority().is_none());
        assert!(sheet("gpt-5.1").flex().is_none());
        assert!(sheet("gpt-5.2").flex().is_none());
        assert!(sheet("gpt-4.1").flex().is_none());
        assert!(sheet("gpt-5.5-pro").priority().is_none());
        assert!(sheet("gpt-5.5-pro").flex().unwrap().cache_read().is_none());
        // Long context only where §8 gives it.
        assert!(sheet("gpt-5").long_context().is_empty());
        assert!(sheet("gpt-4.1").long_context().is_empty());

        // One priced request end to end: gpt-5.4 at 300,000 input (50,000
        // cached) and 2,000 output, default tier, so long context applies:
        // 250000 * 0.000005 + 50000 * 0.0000005 + 2000 * 0.0000225
        // = 1.25 + 0.025 + 0.045
        let u = Usage {
            input_tokens: 300_000,
            cached_tokens: 50_000,
            output_tokens: 2_000,
            reasoning_tokens: 1_500,
            total_tokens: 302_000,
        };
        assert_eq!(cost(sheet("gpt-5.4"), &u, None).unwrap(), dec("1.32"));
    }
}
