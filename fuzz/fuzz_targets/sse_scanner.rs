//! Fuzz `tollgate::sse::SseScanner`: arbitrary bytes fed in arbitrary chunks
//! must never panic, and the outcome must not depend on how the stream was
//! chunked.
//!
//! Input layout (so that seeds stay readable SSE after one header byte):
//!
//! - byte 0, bits 0..=2: event-data limit, an index into `LIMITS`;
//! - byte 0, bits 3..=7: `n`, the number of chunk-length bytes that follow
//!   (0..=30); `n == 31` means "feed the stream one byte at a time" and no
//!   length bytes follow;
//! - the next `n` bytes: lengths (0..=255) of the first `n` chunks, clamped
//!   to what is left; the remainder of the stream is fed as the last chunk;
//! - the rest: the SSE stream.
//!
//! Asserted:
//! 1. no panic in `feed`/`finish`, whatever the bytes and the chunking;
//! 2. the outcome (response id, created summary, terminal kind + summary,
//!    events_seen, malformed_events, oversized_events) equals the outcome of
//!    feeding the same stream in one chunk with the same limit;
//! 3. input fed after `finish` (and a second `finish`) changes nothing;
//! 4. `Usage::check` on any summary the scanner produced does not panic.

#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use tollgate::sse::{SseScanner, Terminal, DEFAULT_MAX_EVENT_BYTES};
use tollgate::usage::ResponseSummary;

/// Limits small enough to hit the oversized paths with short inputs, plus the
/// production default.
const LIMITS: [usize; 8] = [DEFAULT_MAX_EVENT_BYTES, 0, 1, 8, 40, 256, 600, 4096];

const BYTEWISE: usize = 31;

#[derive(Debug, PartialEq)]
struct Outcome {
    response_id: Option<String>,
    created: Option<ResponseSummary>,
    terminal: Option<Terminal>,
    events_seen: u64,
    malformed_events: u32,
    oversized_events: u32,
}

fn outcome(s: &SseScanner) -> Outcome {
    Outcome {
        response_id: s.response_id().map(str::to_owned),
        created: s.created().cloned(),
        terminal: s.terminal().cloned(),
        events_seen: s.events_seen(),
        malformed_events: s.malformed_events(),
        oversized_events: s.oversized_events(),
    }
}

fn check_usage(o: &Outcome) {
    for summary in o
        .created
        .iter()
        .chain(o.terminal.as_ref().map(|t| &t.summary))
    {
        if let Some(usage) = summary.usage {
            let _ = usage.check();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let header: u8 = u.arbitrary().unwrap_or(0);
    let limit = LIMITS[usize::from(header & 0b111)];
    let n = usize::from(header >> 3);
    let lens: &[u8] = if n == BYTEWISE {
        &[]
    } else {
        u.bytes(n.min(u.len())).unwrap_or(&[])
    };
    let stream = u.take_rest();

    // Reference: the whole stream in one chunk.
    let mut whole = SseScanner::with_limit(limit);
    whole.feed(stream);
    whole.finish();
    let want = outcome(&whole);

    // The same stream, chunked.
    let mut split = SseScanner::with_limit(limit);
    if n == BYTEWISE {
        for b in stream.chunks(1) {
            split.feed(b);
        }
    } else {
        let mut rest = stream;
        for &len in lens {
            let (chunk, tail) = rest.split_at(usize::from(len).min(rest.len()));
            split.feed(chunk);
            rest = tail;
        }
        split.feed(rest);
    }
    split.finish();
    let got = outcome(&split);

    assert_eq!(
        got,
        want,
        "chunked outcome differs from one-chunk outcome (limit {limit}, header {header:#04x}, lens {lens:?}); stream: {:?}",
        String::from_utf8_lossy(stream)
    );

    // Input after finish() is ignored, and finish() is idempotent.
    split.feed(b"\n\nevent: error\ndata: {\"type\":\"error\",\"code\":\"late\"}\n\n");
    split.feed(stream);
    split.finish();
    assert_eq!(outcome(&split), want, "input after finish() changed the outcome");

    check_usage(&want);
});
