//! The SSE scanner alone, in bytes per second, on a realistic Responses
//! stream: what `tollgate serve` runs over every streamed byte it forwards.
//!
//! Run: `cargo bench --bench sse`. The stream has the shape the OpenAI API
//! (and `tollgate mock-upstream`) sends: `response.created`,
//! `response.in_progress`, item and content-part events, `DELTAS` text
//! deltas of about 16 bytes with `logprobs` and `obfuscation`, the `.done`
//! events and a `response.completed` carrying the whole response and usage.
//! It is fed in network-sized chunks (one event per chunk, as the upstream
//! writes it, and in fixed 16 KiB reads), and the scanner must find the
//! terminal usage each time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use tollgate::sse::SseScanner;

const DELTAS: usize = 2_000;
const ID: &str = "01a212d5b7737658899806ef8c60a594";
const WORDS: [&str; 8] = [
    "Tollgate mock up",
    "stream says hell",
    "o — the quick ",
    "brown fox jumps ",
    "over the lazy do",
    "g; pack my box w",
    "ith five dozen l",
    "iquor jugs. Zeph",
];
const OBFUSCATION: [&str; 4] = ["P3qLmN8w", "tY", "HgW4e", "q9"];

fn response(status: &str, output: &str, usage: &str) -> String {
    format!(
        r#"{{"id":"resp_{ID}","object":"response","created_at":1795612325,"status":"{status}","completed_at":null,"error":null,"incomplete_details":null,"model":"gpt-5.4-mini-2025-08-07","output":[{output}],"service_tier":"auto","usage":{usage},"background":false,"instructions":null,"max_output_tokens":null,"max_tool_calls":null,"parallel_tool_calls":true,"previous_response_id":null,"prompt_cache_key":null,"reasoning":{{"effort":"medium","summary":null}},"safety_identifier":null,"store":true,"temperature":1.0,"text":{{"format":{{"type":"text"}},"verbosity":"medium"}},"tool_choice":"auto","tools":[],"top_logprobs":0,"top_p":1.0,"truncation":"disabled","user":null,"metadata":{{}}}}"#
    )
}

/// The stream as a list of events (each ends with its blank line).
fn events() -> Vec<String> {
    let mut events = Vec::new();
    let mut seq = 0;
    let mut push = |name: &str, data: String| {
        events.push(format!("event: {name}\ndata: {data}\n\n"));
    };
    let mut next = || {
        seq += 1;
        seq - 1
    };
    for name in ["response.created", "response.in_progress"] {
        let data = format!(
            r#"{{"type":"{name}","sequence_number":{},"response":{}}}"#,
            next(),
            response("in_progress", "", "null")
        );
        push(name, data);
    }
    push(
        "response.output_item.added",
        format!(
            r#"{{"type":"response.output_item.added","sequence_number":{},"output_index":0,"item":{{"id":"msg_{ID}","type":"message","status":"in_progress","content":[],"role":"assistant"}}}}"#,
            next()
        ),
    );
    push(
        "response.content_part.added",
        format!(
            r#"{{"type":"response.content_part.added","sequence_number":{},"item_id":"msg_{ID}","output_index":0,"content_index":0,"part":{{"type":"output_text","annotations":[],"logprobs":[],"text":""}}}}"#,
            next()
        ),
    );
    let mut text = String::new();
    for i in 0..DELTAS {
        let delta = WORDS[i % WORDS.len()];
        text.push_str(delta);
        push(
            "response.output_text.delta",
            format!(
                r#"{{"type":"response.output_text.delta","sequence_number":{},"item_id":"msg_{ID}","output_index":0,"content_index":0,"delta":"{delta}","logprobs":[],"obfuscation":"{}"}}"#,
                next(),
                OBFUSCATION[i % OBFUSCATION.len()]
            ),
        );
    }
    push(
        "response.output_text.done",
        format!(
            r#"{{"type":"response.output_text.done","sequence_number":{},"item_id":"msg_{ID}","output_index":0,"content_index":0,"text":"{text}","logprobs":[]}}"#,
            next()
        ),
    );
    let item = format!(
        r#"{{"id":"msg_{ID}","type":"message","status":"completed","content":[{{"type":"output_text","annotations":[],"logprobs":[],"text":"{text}"}}],"role":"assistant"}}"#
    );
    push(
        "response.output_item.done",
        format!(
            r#"{{"type":"response.output_item.done","sequence_number":{},"output_index":0,"item":{item}}}"#,
            next()
        ),
    );
    let mut usage = String::new();
    let _ = write!(
        usage,
        r#"{{"input_tokens":100,"input_tokens_details":{{"cached_tokens":0}},"output_tokens":{},"output_tokens_details":{{"reasoning_tokens":0}},"total_tokens":{}}}"#,
        20 + 5 * DELTAS,
        120 + 5 * DELTAS
    );
    push(
        "response.completed",
        format!(
            r#"{{"type":"response.completed","sequence_number":{},"response":{}}}"#,
            next(),
            response("completed", &item, &usage)
        ),
    );
    events
}

fn scan(chunks: &[&[u8]]) -> u64 {
    let mut scanner = SseScanner::new();
    for chunk in chunks {
        scanner.feed(black_box(chunk));
    }
    scanner.finish();
    assert!(scanner.terminal().is_some());
    scanner.events_seen()
}

fn bench(c: &mut Criterion) {
    let events = events();
    let stream: Vec<u8> = events.concat().into_bytes();
    let per_event: Vec<&[u8]> = events.iter().map(|e| e.as_bytes()).collect();
    let reads: Vec<&[u8]> = stream.chunks(16 * 1024).collect();
    assert_eq!(scan(&per_event), events.len() as u64);

    let mut group = c.benchmark_group("sse_scanner");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function(format!("event_chunks/{}B", stream.len()), |b| {
        b.iter(|| scan(&per_event))
    });
    group.bench_function(format!("16KiB_reads/{}B", stream.len()), |b| {
        b.iter(|| scan(&reads))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
