//! The row boundary: the last check before a value reaches SQL.
//!
//! Owns the bounds of every value a ledger row can carry and what happens
//! to a value outside them. Request values are refused at the door (400,
//! `proxy::request`); what still arrives malformed here comes from an
//! upstream (a NUL inside `service_tier`, a 3,000-character model name, an
//! absurd response id) or from code: it is stored changed (NUL → U+FFFD,
//! cut to its bound at a character boundary) and the row says so in
//! `anomaly`, so nothing is hidden and nothing the database would refuse is
//! sent. Usage numbers outside what the API can report make the row
//! `usage_source: invalid` (see [`usage_problem`]).
//!
//! Never drops a row, never guesses a number.

use rust_decimal::Decimal;

use super::LedgerRow;
use crate::usage::Usage;

/// The most tokens one count of one request may carry. The largest context
/// windows are a few million tokens; this leaves three orders of magnitude
/// and keeps every cost far inside NUMERIC(28,16).
pub const MAX_TOKENS: i64 = 1_000_000_000;

/// The largest cost one row may carry (USD); beyond it the usage is invalid.
/// NUMERIC(28,16) holds up to 10^12.
pub fn max_cost() -> Decimal {
    Decimal::from(1_000_000_000_i64)
}

/// Character bounds of the row's text fields.
pub const MAX_MODEL_CHARS: usize = 256;
pub const MAX_ID_CHARS: usize = 256;
pub const MAX_SERVICE_TIER_CHARS: usize = 64;
pub const MAX_CODE_CHARS: usize = 128;
pub const MAX_END_USER_CHARS: usize = 512;
pub const MAX_REASON_CHARS: usize = 256;
/// `anomaly` itself: it quotes what it found, so it is bounded too.
pub const MAX_ANOMALY_CHARS: usize = 2_048;

/// Why `usage` cannot be true, if it cannot: negative counts, parts larger
/// than their totals, counts beyond [`MAX_TOKENS`].
pub fn usage_problem(usage: &Usage) -> Option<&'static str> {
    if let Err(reason) = usage.check() {
        return Some(reason);
    }
    let counts = [
        usage.input_tokens,
        usage.cached_tokens,
        usage.output_tokens,
        usage.reasoning_tokens,
        usage.total_tokens,
    ];
    counts
        .iter()
        .any(|&count| count > MAX_TOKENS)
        .then_some("token_count_out_of_range")
}

/// How an invalid usage is described in `anomaly`: every number as the
/// upstream reported it.
pub fn describe_invalid_usage(reason: &str, usage: &Usage) -> String {
    format!(
        "usage_invalid: {reason}; reported input_tokens={} cached_tokens={} output_tokens={} reasoning_tokens={} total_tokens={}",
        usage.input_tokens,
        usage.cached_tokens,
        usage.output_tokens,
        usage.reasoning_tokens,
        usage.total_tokens
    )
}

/// Brings every text value of `row` inside its bound and records in
/// `anomaly` what had to change. Idempotent.
pub fn seal(row: &mut LedgerRow) {
    let mut notes = Vec::new();
    let required: [(&'static str, &mut String, usize); 5] = [
        ("request_id", &mut row.request_id, MAX_ID_CHARS),
        ("endpoint", &mut row.endpoint, MAX_CODE_CHARS),
        ("status", &mut row.status, MAX_CODE_CHARS),
        ("usage_source", &mut row.usage_source, MAX_CODE_CHARS),
        ("currency", &mut row.currency, MAX_CODE_CHARS),
    ];
    for (field, value, max) in required {
        if let Some(note) = bound_text(value, max) {
            notes.push(format!("{field}: {note}"));
        }
    }
    let optional: [(&'static str, &mut Option<String>, usize); 9] = [
        ("response_id", &mut row.response_id, MAX_ID_CHARS),
        ("model", &mut row.model, MAX_MODEL_CHARS),
        ("upstream", &mut row.upstream, MAX_MODEL_CHARS),
        ("upstream_model", &mut row.upstream_model, MAX_MODEL_CHARS),
        (
            "service_tier",
            &mut row.service_tier,
            MAX_SERVICE_TIER_CHARS,
        ),
        (
            "unpriced_reason",
            &mut row.unpriced_reason,
            MAX_REASON_CHARS,
        ),
        ("error_code", &mut row.error_code, MAX_CODE_CHARS),
        ("fallback_from", &mut row.fallback_from, MAX_MODEL_CHARS),
        ("end_user", &mut row.end_user, MAX_END_USER_CHARS),
    ];
    for (field, value, max) in optional {
        bound_optional(field, value, max, &mut notes);
    }
    note_anomalies(&mut row.anomaly, notes);
}

/// Bounds one optional value; what changed goes to `notes`.
pub fn bound_optional(
    field: &str,
    value: &mut Option<String>,
    max: usize,
    notes: &mut Vec<String>,
) {
    if let Some(text) = value.as_mut() {
        if let Some(note) = bound_text(text, max) {
            notes.push(format!("{field}: {note}"));
        }
    }
}

/// Appends `notes` to `anomaly`, itself kept within its bound.
pub fn note_anomalies(anomaly: &mut Option<String>, notes: Vec<String>) {
    if !notes.is_empty() {
        let found = notes.join("; ");
        *anomaly = Some(match anomaly.take() {
            Some(earlier) => format!("{earlier}; {found}"),
            None => found,
        });
    }
    if let Some(text) = anomaly.as_mut() {
        bound_text(text, MAX_ANOMALY_CHARS);
    }
}

/// NUL → U+FFFD, then cut to `max` characters; what was done, if anything.
/// (Rust strings are valid UTF-8, so NUL is the one character PostgreSQL's
/// `text` refuses.)
fn bound_text(value: &mut String, max: usize) -> Option<String> {
    let mut notes = Vec::new();
    if value.contains('\0') {
        *value = value.replace('\0', "\u{FFFD}");
        notes.push("NUL replaced by U+FFFD".to_owned());
    }
    let chars = value.chars().count();
    if chars > max {
        let cut = value
            .char_indices()
            .nth(max)
            .map_or(value.len(), |(i, _)| i);
        value.truncate(cut);
        notes.push(format!("{chars} characters cut to {max}"));
    }
    (!notes.is_empty()).then(|| notes.join(", "))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::ledger::sample_row;

    #[test]
    fn nul_and_length_are_bounded_and_said() {
        let mut row = sample_row("req_1");
        row.service_tier = Some("pri\0rity".into());
        row.upstream_model = Some("é".repeat(3_000));
        seal(&mut row);
        assert_eq!(row.service_tier.as_deref(), Some("pri\u{FFFD}rity"));
        assert_eq!(
            row.upstream_model.as_ref().unwrap().chars().count(),
            MAX_MODEL_CHARS
        );
        let anomaly = row.anomaly.clone().unwrap();
        assert!(
            anomaly.contains("service_tier: NUL replaced by U+FFFD"),
            "{anomaly}"
        );
        assert!(
            anomaly.contains("upstream_model: 3000 characters cut to 256"),
            "{anomaly}"
        );
        let sealed = row.clone();
        seal(&mut row);
        assert_eq!(row, sealed, "sealing twice changes nothing");
    }

    #[test]
    fn a_clean_row_is_untouched() {
        let mut row = sample_row("req_2");
        let before = row.clone();
        seal(&mut row);
        assert_eq!(row, before);
    }

    #[test]
    fn impossible_usage_is_named() {
        let usage = |i, c, o, r| Usage {
            input_tokens: i,
            cached_tokens: c,
            output_tokens: o,
            reasoning_tokens: r,
            total_tokens: i.saturating_add(o),
        };
        assert_eq!(usage_problem(&usage(10, 2, 5, 1)), None);
        assert_eq!(
            usage_problem(&usage(-100, 0, 5, 0)),
            Some("negative_token_count")
        );
        assert_eq!(
            usage_problem(&usage(10, 20, 5, 0)),
            Some("cached_exceeds_input")
        );
        assert_eq!(
            usage_problem(&usage(10, 0, 5, 6)),
            Some("reasoning_exceeds_output")
        );
        assert_eq!(
            usage_problem(&usage(9_000_000_000_000_000_000, 0, 5, 0)),
            Some("token_count_out_of_range")
        );
    }
}
