//! The cost of one request (CONTRACT §4): picks the rates the served tier and
//! the input length call for, then applies
//!
//! ```text
//! cost = (input - cached)      * input_rate
//!      + cached                * cache_read_rate   (falls back to input_rate)
//!      + (output - reasoning)  * output_rate
//!      + reasoning             * reasoning_rate    (falls back to output_rate)
//! ```
//!
//! in exact integer arithmetic. It owns the tier rules and the reasons a row
//! is left unpriced. It must never bill a request at a rate other than the
//! one its served tier names (a tier without its own price is
//! [`Unpriced::NoTierPrice`], not a guess), never round, never use a float,
//! and never allocate on the success path (it runs once per request).

use rust_decimal::Decimal;

use crate::pricing::sheet::{PriceSheet, Rates, Variant};
use crate::usage::Usage;

/// Why a request has no cost. Stored in the ledger as [`Unpriced::reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unpriced {
    /// The served tier is unknown (`scale`, `ultrafast`, ...) or the model's
    /// sheet has no price of its own for it. Holds the tier as served.
    #[error("no price for service tier {0:?}")]
    NoTierPrice(String),
    /// `Usage::check` refused the counts; holds its reason.
    #[error("inconsistent usage: {0}")]
    InconsistentUsage(&'static str),
    /// The exact cost does not fit a decimal (about 7.9e28 units of the
    /// smallest scale); only absurd token counts get here.
    #[error("cost does not fit an exact decimal")]
    Overflow,
}

impl Unpriced {
    /// A stable, machine-readable reason for the ledger's `unpriced_reason`
    /// column: `no_price_for_tier:<tier>`, `inconsistent_usage:<reason>` or
    /// `cost_overflow`.
    pub fn reason(&self) -> String {
        match self {
            Unpriced::NoTierPrice(tier) => {
                // The tier comes from the upstream's response body; keep the
                // column to a short, plain token whatever it sent.
                let tier: String = tier
                    .chars()
                    .take(32)
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                            c
                        } else {
                            '?'
                        }
                    })
                    .collect();
                format!("no_price_for_tier:{tier}")
            }
            Unpriced::InconsistentUsage(why) => format!("inconsistent_usage:{why}"),
            Unpriced::Overflow => "cost_overflow".to_owned(),
        }
    }
}

/// The price tier a request is billed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PriceTier {
    Default,
    Flex,
    Priority,
}

impl PriceTier {
    pub const fn as_str(self) -> &'static str {
        match self {
            PriceTier::Default => "default",
            PriceTier::Flex => "flex",
            PriceTier::Priority => "priority",
        }
    }
}

/// Maps the response's final `service_tier` to a price tier; `None` for a
/// tier there is no rule for. Absent, `default` and `auto` are the base
/// price; `fast` is billed as `priority` because OpenAI serves and reports it
/// as priority processing. Matching is exact (no case folding): an unexpected
/// spelling is left unpriced rather than guessed.
pub fn price_tier(served_tier: Option<&str>) -> Option<PriceTier> {
    match served_tier {
        None | Some("default" | "auto") => Some(PriceTier::Default),
        Some("flex") => Some(PriceTier::Flex),
        Some("priority" | "fast") => Some(PriceTier::Priority),
        Some(_) => None,
    }
}

/// The rates a request is billed at, and which variant they are.
///
/// Long-context variants apply on the default tier only (CONTRACT §4): the
/// one with the largest `N` such that `input_tokens > N * 1000`, for the
/// whole request.
pub fn select_rates<'a>(
    sheet: &'a PriceSheet,
    usage: &Usage,
    served_tier: Option<&str>,
) -> Result<(Variant, &'a Rates), Unpriced> {
    let unpriced = || Unpriced::NoTierPrice(served_tier.unwrap_or("default").to_owned());
    match price_tier(served_tier).ok_or_else(unpriced)? {
        PriceTier::Default => Ok(match sheet.long_context_for(usage.input_tokens) {
            Some(lc) => (Variant::AboveK(lc.above_k()), lc.rates()),
            None => (Variant::Base, sheet.base()),
        }),
        PriceTier::Flex => sheet
            .flex()
            .map(|r| (Variant::Flex, r))
            .ok_or_else(unpriced),
        PriceTier::Priority => sheet
            .priority()
            .map(|r| (Variant::Priority, r))
            .ok_or_else(unpriced),
    }
}

/// The exact cost of one request, in the sheet's currency, normalised (no
/// trailing zeros; never more than 16 decimal places, as rates have at most
/// 16 and token counts are integers).
pub fn cost(
    sheet: &PriceSheet,
    usage: &Usage,
    served_tier: Option<&str>,
) -> Result<Decimal, Unpriced> {
    usage.check().map_err(Unpriced::InconsistentUsage)?;
    let (_, rates) = select_rates(sheet, usage, served_tier)?;
    exact_cost(rates, usage).ok_or(Unpriced::Overflow)
}

/// 10^0 ..= 10^28, the whole range of a `Decimal` scale.
const POW10: [i128; 29] = {
    let mut table = [1i128; 29];
    let mut i = 1;
    while i < table.len() {
        table[i] = table[i - 1] * 10;
        i += 1;
    }
    table
};

/// The formula on integer mantissas brought to one scale. `Decimal`'s own
/// `checked_mul` would quietly round a product that needs more than 96 bits;
/// i128 with checked operations is exact or `None`, and allocation-free.
/// Counts must already have passed `Usage::check` (so the differences are
/// non-negative and cannot overflow).
fn exact_cost(rates: &Rates, usage: &Usage) -> Option<Decimal> {
    let terms = [
        (usage.input_tokens - usage.cached_tokens, rates.input()),
        (usage.cached_tokens, rates.cache_read_or_input()),
        (usage.output_tokens - usage.reasoning_tokens, rates.output()),
        (usage.reasoning_tokens, rates.reasoning_or_output()),
    ];
    let scale = terms
        .iter()
        .map(|(_, rate)| rate.scale())
        .max()
        .unwrap_or(0);
    let mut sum: i128 = 0;
    for (tokens, rate) in terms {
        let widen = POW10.get(scale.checked_sub(rate.scale())? as usize)?;
        let rate = rate.mantissa().checked_mul(*widen)?;
        sum = sum.checked_add(rate.checked_mul(i128::from(tokens))?)?;
    }
    let mut scale = scale;
    loop {
        match Decimal::try_from_i128_with_scale(sum, scale) {
            Ok(d) => return Some(d.normalize()),
            // Too wide for 96 bits at this scale: shedding trailing zeros
            // keeps it exact; anything else would be rounding.
            Err(_) if scale > 0 && sum % 10 == 0 => {
                sum /= 10;
                scale -= 1;
            }
            Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::pricing::sheet::{field_name, RateField, RawFields};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    fn sheet(json: &str) -> PriceSheet {
        let fields: RawFields = serde_json::from_str(json).unwrap();
        PriceSheet::parse_strict(&fields.0).unwrap()
    }

    fn usage(input: i64, cached: i64, output: i64, reasoning: i64) -> Usage {
        Usage {
            input_tokens: input,
            cached_tokens: cached,
            output_tokens: output,
            reasoning_tokens: reasoning,
            total_tokens: input + output,
        }
    }

    /// gpt-5.5 list prices (wire facts §8), with a 272K long-context variant.
    const GPT_5_5: &str = r#"{
        "input_cost_per_token": 5e-06, "cache_read_input_token_cost": 5e-07,
        "output_cost_per_token": 3e-05,
        "input_cost_per_token_flex": 2.5e-06, "cache_read_input_token_cost_flex": 2.5e-07,
        "output_cost_per_token_flex": 1.5e-05,
        "input_cost_per_token_priority": 1e-05, "cache_read_input_token_cost_priority": 1e-06,
        "output_cost_per_token_priority": 6e-05,
        "input_cost_per_token_above_272k_tokens": 1e-05,
        "cache_read_input_token_cost_above_272k_tokens": 1e-06,
        "output_cost_per_token_above_272k_tokens": 4.5e-05 }"#;

    /// gpt-5.2: priority but no flex price.
    const GPT_5_2: &str = r#"{
        "input_cost_per_token": 1.75e-06, "cache_read_input_token_cost": 1.75e-07,
        "output_cost_per_token": 1.4e-05,
        "input_cost_per_token_priority": 3.5e-06, "cache_read_input_token_cost_priority": 3.5e-07,
        "output_cost_per_token_priority": 2.8e-05 }"#;

    #[test]
    fn plain() {
        // 1000 * 0.000005 + 500 * 0.00003 = 0.005 + 0.015
        let c = cost(&sheet(GPT_5_5), &usage(1000, 0, 500, 0), None).unwrap();
        assert_eq!(c, dec("0.02"));
        assert_eq!(c.to_string(), "0.02");
        // "default" and "auto" are the same price as no tier at all.
        for tier in ["default", "auto"] {
            assert_eq!(
                cost(&sheet(GPT_5_5), &usage(1000, 0, 500, 0), Some(tier)).unwrap(),
                dec("0.02")
            );
        }
    }

    #[test]
    fn cached() {
        // 800 * 0.000005 + 200 * 0.0000005 + 100 * 0.00003
        // = 0.004 + 0.0001 + 0.003
        let c = cost(&sheet(GPT_5_5), &usage(1000, 200, 100, 0), Some("default")).unwrap();
        assert_eq!(c, dec("0.0071"));
    }

    #[test]
    fn cached_without_cache_price_falls_back_to_input() {
        let s = sheet(r#"{"input_cost_per_token": 0.000002, "output_cost_per_token": 0.000008}"#);
        // 1000 * 0.000002 (cached or not) + 10 * 0.000008 = 0.002 + 0.00008
        assert_eq!(
            cost(&s, &usage(1000, 600, 10, 0), None).unwrap(),
            dec("0.00208")
        );
    }

    #[test]
    fn reasoning_without_reasoning_price_is_output() {
        // Reasoning is part of output: 23 in, 412 out (384 reasoning), the
        // recorded stream of wire facts §3.5, at gpt-5.5 prices:
        // 23 * 0.000005 + 412 * 0.00003 = 0.000115 + 0.01236
        let c = cost(&sheet(GPT_5_5), &usage(23, 0, 412, 384), Some("default")).unwrap();
        assert_eq!(c, dec("0.012475"));
    }

    #[test]
    fn reasoning_with_its_own_price() {
        let s = sheet(
            r#"{"input_cost_per_token": "0.000001", "output_cost_per_token": "0.000004",
                "output_cost_per_reasoning_token": "0.0000035"}"#,
        );
        // 100 * 0.000001 + (1000 - 600) * 0.000004 + 600 * 0.0000035
        // = 0.0001 + 0.0016 + 0.0021
        assert_eq!(
            cost(&s, &usage(100, 0, 1000, 600), None).unwrap(),
            dec("0.0038")
        );
    }

    #[test]
    fn flex() {
        // 2000 - 1000 uncached * 0.0000025 + 1000 * 0.00000025 + 300 * 0.000015
        // = 0.0025 + 0.00025 + 0.0045
        let c = cost(&sheet(GPT_5_5), &usage(2000, 1000, 300, 100), Some("flex")).unwrap();
        assert_eq!(c, dec("0.00725"));
    }

    #[test]
    fn priority_and_fast_bill_at_priority() {
        // 900 * 0.00001 + 100 * 0.000001 + 50 * 0.00006 = 0.009 + 0.0001 + 0.003
        for tier in ["priority", "fast"] {
            let c = cost(&sheet(GPT_5_5), &usage(1000, 100, 50, 0), Some(tier)).unwrap();
            assert_eq!(c, dec("0.0121"), "{tier}");
        }
    }

    #[test]
    fn tier_without_price_is_unpriced() {
        let u = usage(1000, 0, 10, 0);
        let e = cost(&sheet(GPT_5_2), &u, Some("flex")).unwrap_err();
        assert_eq!(e, Unpriced::NoTierPrice("flex".to_owned()));
        assert_eq!(e.reason(), "no_price_for_tier:flex");
        // gpt-5.2 has priority: 1000 * 0.0000035 + 10 * 0.000028
        assert_eq!(
            cost(&sheet(GPT_5_2), &u, Some("priority")).unwrap(),
            dec("0.00378")
        );

        let base_only = sheet(r#"{"input_cost_per_token": 1, "output_cost_per_token": 1}"#);
        assert_eq!(
            cost(&base_only, &u, Some("fast")).unwrap_err().reason(),
            "no_price_for_tier:fast"
        );
        for tier in ["scale", "ultrafast", "Default", "PRIORITY", ""] {
            let e = cost(&sheet(GPT_5_5), &u, Some(tier)).unwrap_err();
            assert_eq!(e, Unpriced::NoTierPrice(tier.to_owned()));
        }
        assert_eq!(
            Unpriced::NoTierPrice("we ird/\"tier\"".to_owned()).reason(),
            "no_price_for_tier:we?ird??tier?"
        );
    }

    #[test]
    fn long_context_threshold_is_strictly_above() {
        let s = sheet(GPT_5_5);
        // Exactly 272,000 input tokens is not above 272K: base rates.
        // 272000 * 0.000005 + 1000 * 0.00003 = 1.36 + 0.03
        assert_eq!(
            cost(&s, &usage(272_000, 0, 1000, 0), None).unwrap(),
            dec("1.39")
        );
        // One more token switches the WHOLE request to the long-context rates:
        // (272001 - 1) * 0.00001 + 1 * 0.000001 + 1000 * 0.000045
        // = 2.72 + 0.000001 + 0.045
        assert_eq!(
            cost(&s, &usage(272_001, 1, 1000, 0), Some("default")).unwrap(),
            dec("2.765001")
        );
        assert_eq!(
            select_rates(&s, &usage(272_001, 0, 0, 0), Some("auto"))
                .unwrap()
                .0,
            Variant::AboveK(272)
        );
    }

    #[test]
    fn long_context_is_default_tier_only() {
        let s = sheet(GPT_5_5);
        // Flex above 272K stays on flex rates: 300000 * 0.0000025 + 0
        assert_eq!(
            cost(&s, &usage(300_000, 0, 0, 0), Some("flex")).unwrap(),
            dec("0.75")
        );
        // Priority above 272K stays on priority rates: 300000 * 0.00001
        assert_eq!(
            cost(&s, &usage(300_000, 0, 0, 0), Some("priority")).unwrap(),
            dec("3")
        );
    }

    #[test]
    fn largest_exceeded_threshold_wins() {
        let s = sheet(
            r#"{"input_cost_per_token": 1, "output_cost_per_token": 0,
                "input_cost_per_token_above_128k_tokens": 2, "output_cost_per_token_above_128k_tokens": 0,
                "input_cost_per_token_above_200k_tokens": 3, "output_cost_per_token_above_200k_tokens": 0}"#,
        );
        assert_eq!(
            cost(&s, &usage(128_000, 0, 0, 0), None).unwrap(),
            dec("128000")
        );
        assert_eq!(
            cost(&s, &usage(128_001, 0, 0, 0), None).unwrap(),
            dec("256002")
        );
        assert_eq!(
            cost(&s, &usage(200_000, 0, 0, 0), None).unwrap(),
            dec("400000")
        );
        assert_eq!(
            cost(&s, &usage(200_001, 0, 0, 0), None).unwrap(),
            dec("600003")
        );
    }

    #[test]
    fn inconsistent_usage_is_unpriced() {
        let s = sheet(GPT_5_5);
        let cases = [
            (
                usage(10, 11, 0, 0),
                "inconsistent_usage:cached_exceeds_input",
            ),
            (
                usage(0, 0, 5, 6),
                "inconsistent_usage:reasoning_exceeds_output",
            ),
            (
                usage(-1, 0, 0, 0),
                "inconsistent_usage:negative_token_count",
            ),
        ];
        for (u, reason) in cases {
            assert_eq!(cost(&s, &u, None).unwrap_err().reason(), reason);
        }
    }

    #[test]
    fn zero_usage_costs_zero() {
        let c = cost(&sheet(GPT_5_5), &Usage::default(), None).unwrap();
        assert_eq!(c, Decimal::ZERO);
        assert_eq!(c.to_string(), "0");
    }

    #[test]
    fn overflow_is_reported_not_rounded() {
        let s = sheet(
            r#"{"input_cost_per_token": "99999999.9999999999999999", "output_cost_per_token": 1e-16}"#,
        );
        let e = cost(&s, &usage(i64::MAX, 0, 0, 0), None).unwrap_err();
        assert_eq!(e.reason(), "cost_overflow");
        // Large but representable: 10^12 tokens at the largest rate is exact
        // (the product has 12 trailing zeros to shed):
        // 99999999.9999999999999999 * 10^12 = 99999999999999999999.9999
        assert_eq!(
            cost(&s, &usage(1_000_000_000_000, 0, 0, 0), None).unwrap(),
            dec("99999999999999999999.9999")
        );
        // Past 28 significant digits nothing exact is left: refused.
        let e = cost(&s, &usage(1_000_000_000_000, 0, 1, 0), None);
        assert_eq!(e.map_err(|e| e.reason()), Err("cost_overflow".to_owned()));
    }

    #[test]
    fn contract_section_6_example() {
        // CONTRACT §6 shows gpt-5.5 with 3 requests, 1500 input (200 cached),
        // 900 output (600 reasoning) and cost 0.0334. At default-tier prices
        // those totals cost 0.0336 (1300 * 0.000005 + 200 * 0.0000005 +
        // 900 * 0.00003 = 0.0065 + 0.0001 + 0.027); the example is
        // consistent when one of the three was served on flex:
        let s = sheet(GPT_5_5);
        let requests = [
            // 800 * 0.000005 + 200 * 0.0000005 + 600 * 0.00003 = 0.0221
            (usage(1000, 200, 600, 400), Some("default"), "0.0221"),
            // 480 * 0.000005 + 290 * 0.00003 = 0.0024 + 0.0087 = 0.0111
            (usage(480, 0, 290, 200), None, "0.0111"),
            // 20 * 0.0000025 + 10 * 0.000015 = 0.00005 + 0.00015 = 0.0002
            (usage(20, 0, 10, 0), Some("flex"), "0.0002"),
        ];
        let mut total = Decimal::ZERO;
        let mut sums = Usage::default();
        for (u, tier, expect) in requests {
            let c = cost(&s, &u, tier).unwrap();
            assert_eq!(c, dec(expect));
            total += c;
            sums.input_tokens += u.input_tokens;
            sums.cached_tokens += u.cached_tokens;
            sums.output_tokens += u.output_tokens;
            sums.reasoning_tokens += u.reasoning_tokens;
        }
        assert_eq!((sums.input_tokens, sums.cached_tokens), (1500, 200));
        assert_eq!((sums.output_tokens, sums.reasoning_tokens), (900, 600));
        assert_eq!(total.to_string(), "0.0334");
        let all_default = usage(1500, 200, 900, 600);
        assert_eq!(cost(&s, &all_default, None).unwrap(), dec("0.0336"));
    }

    #[test]
    fn price_tier_names() {
        assert_eq!(price_tier(None).map(PriceTier::as_str), Some("default"));
        assert_eq!(
            price_tier(Some("fast")).map(PriceTier::as_str),
            Some("priority")
        );
        assert_eq!(
            price_tier(Some("flex")).map(PriceTier::as_str),
            Some("flex")
        );
        assert_eq!(price_tier(Some("scale")), None);
    }

    // ---- properties ----

    /// Rates below 10 per token with up to 16 places: any mix of them times
    /// the generated counts stays exactly representable (so `Overflow` is
    /// never the expected answer here).
    fn arb_rate() -> impl Strategy<Value = Decimal> {
        (0i64..1_000_000_000, 8u32..=16).prop_map(|(m, s)| Decimal::new(m, s))
    }

    /// Consistent usage: cached <= input, reasoning <= output.
    fn arb_usage() -> impl Strategy<Value = Usage> {
        (0i64..2_000_000_000, 0i64..2_000_000_000).prop_flat_map(|(input, output)| {
            (0..=input, 0..=output)
                .prop_map(move |(cached, reasoning)| usage(input, cached, output, reasoning))
        })
    }

    type Four = (Decimal, Option<Decimal>, Decimal, Option<Decimal>);

    fn arb_four() -> impl Strategy<Value = Four> {
        (
            arb_rate(),
            proptest::option::of(arb_rate()),
            arb_rate(),
            proptest::option::of(arb_rate()),
        )
    }

    fn put(out: &mut BTreeMap<String, Decimal>, v: Variant, (i, c, o, r): Four) {
        out.insert(field_name(RateField::Input, v), i);
        out.insert(field_name(RateField::Output, v), o);
        if let Some(c) = c {
            out.insert(field_name(RateField::CacheRead, v), c);
        }
        if let Some(r) = r {
            out.insert(field_name(RateField::Reasoning, v), r);
        }
    }

    fn base_only(four: Four) -> PriceSheet {
        let mut f = BTreeMap::new();
        put(&mut f, Variant::Base, four);
        PriceSheet::from_fields(&f, None).unwrap()
    }

    /// The contract's formula in plain `Decimal` arithmetic, as an oracle
    /// (exact for the generated ranges: no product needs more than 96 bits).
    fn plain_formula((i, c, o, r): Four, u: &Usage) -> Decimal {
        Decimal::from(u.input_tokens - u.cached_tokens) * i
            + Decimal::from(u.cached_tokens) * c.unwrap_or(i)
            + Decimal::from(u.output_tokens - u.reasoning_tokens) * o
            + Decimal::from(u.reasoning_tokens) * r.unwrap_or(o)
    }

    proptest! {
        #[test]
        fn cost_is_never_negative(
            base in arb_four(), flex in arb_four(), prio in arb_four(), long in arb_four(),
            k in 1u32..2000, u in arb_usage(),
            tier in proptest::sample::select(vec![None, Some("default"), Some("auto"), Some("flex"), Some("priority"), Some("fast"), Some("scale")]),
        ) {
            let mut f = BTreeMap::new();
            put(&mut f, Variant::Base, base);
            put(&mut f, Variant::Flex, flex);
            put(&mut f, Variant::Priority, prio);
            put(&mut f, Variant::AboveK(k), long);
            let s = PriceSheet::from_fields(&f, None).unwrap();
            match cost(&s, &u, tier) {
                Ok(c) => prop_assert!(c >= Decimal::ZERO),
                Err(e) => prop_assert_eq!(e, Unpriced::NoTierPrice("scale".to_owned())),
            }
        }

        #[test]
        fn equals_plain_formula_when_no_variant_applies(
            base in arb_four(), flex in arb_four(), long in arb_four(), u in arb_usage(),
            tier in proptest::sample::select(vec![None, Some("default"), Some("auto")]),
        ) {
            let mut f = BTreeMap::new();
            put(&mut f, Variant::Base, base);
            put(&mut f, Variant::Flex, flex);
            // A threshold the generated input never exceeds.
            put(&mut f, Variant::AboveK(2_000_000), long);
            let s = PriceSheet::from_fields(&f, None).unwrap();
            prop_assert_eq!(cost(&s, &u, tier).unwrap(), plain_formula(base, &u));
            prop_assert_eq!(cost(&s, &u, Some("flex")).unwrap(), plain_formula(flex, &u));
        }

        #[test]
        fn long_context_equals_plain_formula_of_its_rates(
            base in arb_four(), long in arb_four(), k in 1u32..2000, u in arb_usage(),
        ) {
            let mut f = BTreeMap::new();
            put(&mut f, Variant::Base, base);
            put(&mut f, Variant::AboveK(k), long);
            let s = PriceSheet::from_fields(&f, None).unwrap();
            let expect = if u.input_tokens > i64::from(k) * 1000 { long } else { base };
            prop_assert_eq!(cost(&s, &u, None).unwrap(), plain_formula(expect, &u));
        }

        #[test]
        fn reasoning_fallback_equals_output_price(
            (i, c, o, _) in arb_four(), u in arb_usage(),
        ) {
            let without = base_only((i, c, o, None));
            let explicit = base_only((i, c, o, Some(o)));
            prop_assert_eq!(cost(&without, &u, None).unwrap(), cost(&explicit, &u, None).unwrap());
        }

        #[test]
        fn cache_fallback_equals_input_price(
            (i, _, o, r) in arb_four(), u in arb_usage(),
        ) {
            let without = base_only((i, None, o, r));
            let explicit = base_only((i, Some(i), o, r));
            prop_assert_eq!(cost(&without, &u, None).unwrap(), cost(&explicit, &u, None).unwrap());
        }

        #[test]
        fn splitting_output_into_reasoning_does_not_change_cost_at_equal_prices(
            (i, c, o, _) in arb_four(), same in any::<bool>(), u in arb_usage(),
            per_mille in 0i64..=1000,
        ) {
            let s = base_only((i, c, o, if same { Some(o) } else { None }));
            let moved = Usage { reasoning_tokens: u.output_tokens / 1000 * per_mille, ..u };
            prop_assert_eq!(cost(&s, &u, None).unwrap(), cost(&s, &moved, None).unwrap());
        }
    }
}
