//! Fuzz the non-streaming usage extraction in `tollgate::usage`.
//!
//! The whole input is the body (no header), so seeds are plain JSON files.
//!
//! Asserted:
//! 1. `ResponseSummary::from_response_json` and `error_code_from_body` never
//!    panic; when a summary parses, `Usage::check` does not panic either;
//! 2. `JsonBodyCollector` fed the body in pieces (piece size 1..=16, taken
//!    from the first byte) never panics, for a small limit (64), a limit of
//!    exactly the body length, and one byte less, and keeps its contract:
//!    `bytes()` is the first `min(limit, len)` bytes, `overflowed()` is
//!    `len > limit`, and `summary()` is `None` after an overflow, else the
//!    same as `from_response_json` on the whole body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::usage::{error_code_from_body, JsonBodyCollector, ResponseSummary};

const SMALL_LIMIT: usize = 64;

fn check_summary(s: &ResponseSummary) {
    if let Some(usage) = s.usage {
        let _ = usage.check();
    }
}

fuzz_target!(|data: &[u8]| {
    let direct = ResponseSummary::from_response_json(data).ok();
    if let Some(s) = &direct {
        check_summary(s);
    }
    let _ = error_code_from_body(data);

    let piece = data.first().map_or(1, |b| usize::from(b % 16) + 1);
    for limit in [SMALL_LIMIT, data.len(), data.len().saturating_sub(1)] {
        let mut c = JsonBodyCollector::new(limit);
        for p in data.chunks(piece) {
            c.feed(p);
        }
        let overflow = data.len() > limit;
        assert_eq!(c.overflowed(), overflow, "limit {limit}, len {}", data.len());
        assert_eq!(c.bytes(), &data[..data.len().min(limit)], "limit {limit}");
        let summary = c.summary();
        if let Some(s) = &summary {
            check_summary(s);
        }
        if overflow {
            assert_eq!(summary, None, "summary of an overflowed body");
        } else {
            assert_eq!(summary, direct, "collector summary differs from direct parse");
        }
    }
});
