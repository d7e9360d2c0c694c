//! The upper estimate of a request's cost and tokens, reserved against hard
//! budgets and `tokens_per_minute` before it is forwarded.
//!
//! Input tokens are bounded by the body's length in bytes: every tokenizer
//! the Responses models use emits at most one token per byte of text. That
//! bound does not hold for what the body only points at (images, files,
//! `previous_response_id` state, tool results fetched upstream); such a
//! request can cost more than its estimate, and the excess is recorded as an
//! overrun. Output tokens are bounded by the request's `max_output_tokens`,
//! or [`DEFAULT_MAX_OUTPUT_TOKENS`] when it sets none. Both are priced at the
//! highest rate of every variant (tier, long context, cached, reasoning) of
//! every model the request may be served by (fallbacks included). It reads
//! prices; it never touches the database.

use std::sync::Arc;

use rust_decimal::Decimal;
use serde::Deserialize;

use crate::pricing::{PriceSheet, PriceVersion};

/// Output bound for a request without `max_output_tokens` (the price sheet
/// carries no per-model maximum).
pub const DEFAULT_MAX_OUTPUT_TOKENS: i64 = 32_768;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Estimate {
    /// Upper bound of the cost; zero when a candidate model has no price
    /// (its row will be unpriced and count nothing against budgets).
    pub cost: Decimal,
    /// Upper bound of input + output tokens.
    pub tokens: i64,
}

impl Estimate {
    pub const ZERO: Self = Self {
        cost: Decimal::ZERO,
        tokens: 0,
    };

    /// The estimate of `body` served by any of `prices`.
    pub fn of_request(body: &[u8], prices: &[Option<Arc<PriceVersion>>]) -> Self {
        let input = i64::try_from(body.len()).unwrap_or(i64::MAX);
        let output = max_output_tokens(body).unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS);
        let mut cost = Decimal::ZERO;
        for sheet in prices.iter().flatten().filter_map(|p| p.sheet.as_ref()) {
            let (input_rate, output_rate) = highest_rates(sheet);
            let candidate = Decimal::from(input)
                .checked_mul(input_rate)
                .and_then(|i| {
                    Decimal::from(output)
                        .checked_mul(output_rate)
                        .map(|o| (i, o))
                })
                .and_then(|(i, o)| i.checked_add(o))
                .unwrap_or(Decimal::MAX);
            cost = cost.max(candidate);
        }
        Self {
            cost,
            tokens: input.saturating_add(output),
        }
    }
}

#[derive(Deserialize)]
struct OutputBound {
    max_output_tokens: Option<serde_json::Value>,
}

/// The request's own output bound, when it is a non-negative integer.
fn max_output_tokens(body: &[u8]) -> Option<i64> {
    let bound: OutputBound = serde_json::from_slice(body).ok()?;
    bound.max_output_tokens?.as_i64().filter(|n| *n >= 0)
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

    #[test]
    fn output_bound_comes_from_the_body_or_the_default() {
        assert_eq!(max_output_tokens(br#"{"max_output_tokens": 7}"#), Some(7));
        assert_eq!(max_output_tokens(br#"{"model": "x"}"#), None);
        assert_eq!(max_output_tokens(br#"{"max_output_tokens": -1}"#), None);
        let e = Estimate::of_request(br#"{"max_output_tokens": 7}"#, &[None]);
        assert_eq!(e.tokens, 24 + 7);
        assert_eq!(e.cost, Decimal::ZERO);
    }
}
