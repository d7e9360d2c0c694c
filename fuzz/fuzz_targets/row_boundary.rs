//! Fuzz the row boundary: any upstream reply, parsed as a Response object,
//! turned into the ledger row the meter would record
//! (`metering::build_row`: `bill` + `ledger::boundary::seal`).
//!
//! The whole input is the upstream's JSON body, so seeds are Response
//! objects (see `fuzz/corpus/row_boundary/`).
//!
//! Asserted, for every input the usage extractor accepts:
//! 1. nothing panics;
//! 2. the row is storable: no NUL in any text, every text within its
//!    bound, every token count in `0..=MAX_TOKENS`, the cost (if any)
//!    within `max_cost()`;
//! 3. `invalid` usage is never priced and says why in `anomaly`;
//! 4. sealing the row again changes nothing.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tollgate::auth::Principal;
use tollgate::ledger::boundary::{self, MAX_ANOMALY_CHARS, MAX_MODEL_CHARS, MAX_TOKENS};
use tollgate::metering::{build_row, Outcome, RequestContext};
use tollgate::usage::ResponseSummary;

fuzz_target!(|data: &[u8]| {
    let Ok(summary) = ResponseSummary::from_response_json(data) else {
        return;
    };
    let principal = Principal {
        tenant: Arc::from("acme"),
        key_id: Arc::from("key_fuzz"),
    };
    let ctx = RequestContext::new(principal, "responses.create");
    let row = build_row(ctx, Outcome::from_summary(summary, 200), chrono::Utc::now());

    let texts = [
        Some(&row.request_id),
        row.response_id.as_ref(),
        row.model.as_ref(),
        row.upstream_model.as_ref(),
        row.service_tier.as_ref(),
        row.unpriced_reason.as_ref(),
        row.error_code.as_ref(),
        row.end_user.as_ref(),
        row.anomaly.as_ref(),
    ];
    for text in texts.into_iter().flatten() {
        assert!(!text.contains('\0'), "NUL reached the row: {text:?}");
        assert!(text.chars().count() <= MAX_ANOMALY_CHARS.max(MAX_MODEL_CHARS));
    }
    for count in [
        row.input_tokens,
        row.cached_tokens,
        row.output_tokens,
        row.reasoning_tokens,
        row.total_tokens,
    ] {
        assert!((0..=MAX_TOKENS).contains(&count), "token count {count} reached the row");
    }
    if let Some(cost) = row.cost {
        assert!(cost.abs() <= boundary::max_cost());
    }
    if row.usage_source == "invalid" {
        assert_eq!(row.cost, None);
        assert!(row.anomaly.as_deref().is_some_and(|a| a.starts_with("usage_invalid")));
    }
    let mut again = row.clone();
    boundary::seal(&mut again);
    assert_eq!(again, row);
});
