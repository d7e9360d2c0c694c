//! Byte-level rendering of mock Responses API objects and SSE events.
//!
//! Everything a response needs is captured once in a [`Plan`] when the request
//! arrives; the JSON object, each stream event and every later replay are then
//! rendered from it deterministically (same ids, same text, same obfuscation),
//! so the store keeps only the small plan instead of megabytes of event bytes.
//! JSON is written straight into byte buffers from pre-serialized fragments
//! because serde_json `Value` trees would cost an allocation per field per
//! event, and benchmarks push hundreds of thousands of delta events.

use std::io::Write;

use serde::Serialize;
use serde_json::Value;

/// Suffix the mock appends to an undated request model, as OpenAI does when
/// it echoes the snapshot that served the request (`gpt-5` → `gpt-5-2025-08-07`).
pub(crate) const DATE_SUFFIX: &str = "-2025-08-07";

/// Reasoning tokens attributed to a response that carries a reasoning item
/// (unless `mock_usage` overrides the usage).
pub(crate) const DEFAULT_REASONING_TOKENS: u64 = 64;

/// Text the deltas are cut from. Mostly ASCII with a few multi-byte characters
/// so that `mock_chunk_bytes` splits land inside UTF-8 sequences too. It holds
/// no `"`, `\` or control characters, so it is valid JSON string content as is.
const POOL: &str = "Tollgate mock upstream says hello \u{2014} the quick brown fox jumps over the lazy dog, caf\u{e9} \u{2713} ";

/// Reasoning summary, pre-escaped for JSON and split into the two deltas the
/// stream sends (the SDK concatenates deltas itself, the `done` events carry
/// the whole text).
const SUMMARY_PART_1: &str = "**Planning the reply**\\n\\n";
const SUMMARY_PART_2: &str = "A square with diagonal d has area d\u{b2}/2; answer briefly.";

/// Padding strings for the `obfuscation` field; picked by sequence number so
/// replays are byte-identical to the original stream.
const OBFUSCATION: [&str; 16] = [
    "mvkAadO", "q1Zx", "Xk2", "b7pQ", "Zr0fT9", "aa", "P3qLmN8w", "tY", "HgW4e", "0uJv2Kx", "n",
    "LqR7", "s9DdF", "wE1", "VbC6yU0o", "kM",
];

/// Terminal state of a response as stored and as reported by its terminal event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Completed,
    Incomplete,
    Failed,
    Cancelled,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Completed => "completed",
            Status::Incomplete => "incomplete",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// The lifecycle event that ends a stream in this state. There is no
    /// `response.cancelled` event in the API, and a cancelled response stops
    /// early, so replays of one end in `response.incomplete`.
    fn terminal_event(self) -> &'static str {
        match self {
            Status::Completed => "response.completed",
            Status::Incomplete | Status::Cancelled => "response.incomplete",
            Status::Failed => "response.failed",
        }
    }
}

/// Token usage exactly as it appears in the `usage` object; `output` already
/// includes `reasoning` and `cached` is a subset of `input`, like the real API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) input: u64,
    pub(crate) cached: u64,
    pub(crate) output: u64,
    pub(crate) reasoning: u64,
}

/// Everything needed to render one response, its stream and its replays.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// The uuid behind the id; store key.
    pub(crate) key: u128,
    /// `resp_<32 hex>`.
    pub(crate) id: String,
    /// The 32 hex digits, reused to derive item ids.
    pub(crate) hex: String,
    pub(crate) created_at: u64,
    /// Fragment: `"model":…` without a leading comma.
    pub(crate) model_field: Vec<u8>,
    /// Fragment of fields identical in every snapshot, starting with a comma.
    pub(crate) head: Vec<u8>,
    /// JSON string of the tier shown before the terminal event (`"auto"` …).
    pub(crate) requested_tier: Vec<u8>,
    /// JSON string of the tier that "served" the request.
    pub(crate) final_tier: Vec<u8>,
    /// `Some(has_summary)` when the output starts with a reasoning item.
    pub(crate) reasoning: Option<bool>,
    pub(crate) deltas: usize,
    pub(crate) delta_bytes: usize,
    pub(crate) status: Status,
    pub(crate) usage: Option<Usage>,
    pub(crate) background: bool,
    /// The request's `input`, kept for `GET …/input_items`.
    pub(crate) input: Value,
}

/// Which state of the response object to render.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Snapshot {
    Queued,
    InProgress,
    Final,
}

/// One event of the stream, in the order of wire-facts §3.5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ev {
    Created,
    Queued,
    InProgress,
    RsAdded,
    RsPartAdded,
    RsDelta(u8),
    RsTextDone,
    RsPartDone,
    RsDone,
    MsgAdded,
    PartAdded,
    Delta(usize),
    TextDone,
    PartDone,
    MsgDone,
    Terminal,
    Error,
}

/// How events are framed on the wire (`mock_line_ending`, `mock_no_event_lines`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Framing {
    pub(crate) event_lines: bool,
    pub(crate) le: &'static [u8],
}

impl Default for Framing {
    fn default() -> Self {
        Framing {
            event_lines: true,
            le: b"\n",
        }
    }
}

/// Extra noise injected into a single event (`mock_garbage`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Noise {
    /// A second, non-JSON `data:` line inside the event.
    pub(crate) garbage_data: bool,
    /// A `:` comment line in front of the event.
    pub(crate) comment: bool,
}

/// The fixed order of events before the deltas; at most 12 of them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Prefix {
    evs: [Ev; 12],
    len: usize,
}

impl Prefix {
    pub(crate) fn new(plan: &Plan) -> Self {
        let mut evs = [Ev::Created; 12];
        let mut len = 0;
        let mut push = |e: Ev| {
            evs[len] = e;
            len += 1;
        };
        push(Ev::Created);
        if plan.background {
            push(Ev::Queued);
        }
        push(Ev::InProgress);
        if let Some(summary) = plan.reasoning {
            push(Ev::RsAdded);
            if summary {
                push(Ev::RsPartAdded);
                push(Ev::RsDelta(0));
                push(Ev::RsDelta(1));
                push(Ev::RsTextDone);
                push(Ev::RsPartDone);
            }
            push(Ev::RsDone);
        }
        push(Ev::MsgAdded);
        push(Ev::PartAdded);
        Prefix { evs, len }
    }

    /// Total number of events of a stream of `plan` (terminal included).
    pub(crate) fn total(&self, plan: &Plan) -> usize {
        self.len + plan.deltas + 4
    }

    /// The event at `idx` (which is also its sequence number); `end` is the
    /// last event (`Terminal` or `Error`).
    pub(crate) fn event_at(&self, plan: &Plan, idx: usize, end: Ev) -> Ev {
        if idx < self.len {
            return self.evs[idx];
        }
        let i = idx - self.len;
        if i < plan.deltas {
            return Ev::Delta(i);
        }
        match i - plan.deltas {
            0 => Ev::TextDone,
            1 => Ev::PartDone,
            2 => Ev::MsgDone,
            _ => end,
        }
    }
}

/// Appends `v` as compact JSON. Writing to a `Vec` cannot fail and the values
/// are plain JSON, so an error is impossible; `null` keeps the output valid anyway.
pub(crate) fn push_json<T: Serialize + ?Sized>(buf: &mut Vec<u8>, v: &T) {
    let mark = buf.len();
    if serde_json::to_writer(&mut *buf, v).is_err() {
        buf.truncate(mark);
        buf.extend_from_slice(b"null");
    }
}

pub(crate) fn push_u64(buf: &mut Vec<u8>, n: u64) {
    // `write!` into a Vec is infallible.
    let _ = write!(buf, "{n}");
}

/// Byte length of the compact JSON serialization of `v` (usage formula),
/// computed without materialising the string.
pub(crate) fn json_len(v: &Value) -> usize {
    struct Counter(usize);
    impl Write for Counter {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Counter(0);
    match serde_json::to_writer(&mut c, v) {
        Ok(()) => c.0,
        Err(_) => 0,
    }
}

/// Start of delta `i` in the endless cyclic repetition of the pool. Deltas
/// are consecutive slices of that text, so their concatenation reads
/// naturally and equals the final text. With `bytes >= 4` (wider than any pool
/// character) a delta is `bytes` long, rounded to character boundaries and
/// never empty; narrower deltas carry exactly one character each.
fn delta_start(i: u64, bytes: u64) -> u64 {
    let len = POOL.len() as u64;
    if bytes >= 4 {
        let a = i.saturating_mul(bytes);
        let mut p = (a % len) as usize;
        while !POOL.is_char_boundary(p) {
            p += 1;
        }
        a - a % len + p as u64
    } else {
        let chars = POOL.chars().count() as u64;
        let k = (i % chars) as usize;
        let off = POOL.char_indices().nth(k).map_or(0, |(o, _)| o);
        (i / chars) * len + off as u64
    }
}

/// Appends bytes `[from, to)` of the cyclic pool.
fn push_cyclic(buf: &mut Vec<u8>, from: u64, to: u64) {
    let pool = POOL.as_bytes();
    let len = pool.len() as u64;
    let mut pos = (from % len) as usize;
    let mut remaining = to.saturating_sub(from) as usize;
    buf.reserve(remaining);
    while remaining > 0 {
        let n = (pool.len() - pos).min(remaining);
        buf.extend_from_slice(&pool[pos..pos + n]);
        remaining -= n;
        pos = 0;
    }
}

fn push_delta_text(buf: &mut Vec<u8>, i: usize, bytes: usize) {
    let (i, b) = (i as u64, bytes as u64);
    push_cyclic(buf, delta_start(i, b), delta_start(i + 1, b));
}

/// The whole message text: the concatenation of all deltas.
fn push_full_text(buf: &mut Vec<u8>, plan: &Plan) {
    push_cyclic(
        buf,
        0,
        delta_start(plan.deltas as u64, plan.delta_bytes as u64),
    );
}

/// Upper bound of the message text length, for buffer pre-sizing.
fn text_capacity(plan: &Plan) -> usize {
    plan.deltas.saturating_mul(plan.delta_bytes + 4)
}

fn push_summary_part(buf: &mut Vec<u8>, text: &str) {
    buf.extend_from_slice(b"{\"type\":\"summary_text\",\"text\":\"");
    buf.extend_from_slice(text.as_bytes());
    buf.extend_from_slice(b"\"}");
}

fn push_full_summary(buf: &mut Vec<u8>) {
    buf.extend_from_slice(b"{\"type\":\"summary_text\",\"text\":\"");
    buf.extend_from_slice(SUMMARY_PART_1.as_bytes());
    buf.extend_from_slice(SUMMARY_PART_2.as_bytes());
    buf.extend_from_slice(b"\"}");
}

fn push_reasoning_item(buf: &mut Vec<u8>, plan: &Plan, done: bool) {
    buf.extend_from_slice(b"{\"id\":\"rs_");
    buf.extend_from_slice(plan.hex.as_bytes());
    buf.extend_from_slice(b"\",\"type\":\"reasoning\",\"summary\":[");
    if done && plan.reasoning == Some(true) {
        push_full_summary(buf);
    }
    buf.extend_from_slice(b"]}");
}

fn message_status(plan: &Plan) -> &'static [u8] {
    if plan.status == Status::Completed {
        b"completed"
    } else {
        b"incomplete"
    }
}

fn push_output_text_part(buf: &mut Vec<u8>, plan: &Plan, with_text: bool) {
    buf.extend_from_slice(
        b"{\"type\":\"output_text\",\"annotations\":[],\"logprobs\":[],\"text\":\"",
    );
    if with_text {
        push_full_text(buf, plan);
    }
    buf.extend_from_slice(b"\"}");
}

fn push_message_item(buf: &mut Vec<u8>, plan: &Plan, done: bool) {
    buf.extend_from_slice(b"{\"id\":\"msg_");
    buf.extend_from_slice(plan.hex.as_bytes());
    buf.extend_from_slice(b"\",\"type\":\"message\",\"status\":\"");
    if done {
        buf.extend_from_slice(message_status(plan));
        buf.extend_from_slice(b"\",\"content\":[");
        push_output_text_part(buf, plan, true);
        buf.extend_from_slice(b"]");
    } else {
        buf.extend_from_slice(b"in_progress\",\"content\":[]");
    }
    buf.extend_from_slice(b",\"role\":\"assistant\"}");
}

fn push_usage(buf: &mut Vec<u8>, usage: Option<Usage>) {
    let Some(u) = usage else {
        buf.extend_from_slice(b"null");
        return;
    };
    buf.extend_from_slice(b"{\"input_tokens\":");
    push_u64(buf, u.input);
    buf.extend_from_slice(b",\"input_tokens_details\":{\"cached_tokens\":");
    push_u64(buf, u.cached);
    buf.extend_from_slice(b"},\"output_tokens\":");
    push_u64(buf, u.output);
    buf.extend_from_slice(b",\"output_tokens_details\":{\"reasoning_tokens\":");
    push_u64(buf, u.reasoning);
    buf.extend_from_slice(b"},\"total_tokens\":");
    push_u64(buf, u.input.saturating_add(u.output));
    buf.extend_from_slice(b"}");
}

/// Appends the response object in the given state.
pub(crate) fn push_response(buf: &mut Vec<u8>, plan: &Plan, snap: Snapshot) {
    let is_final = snap == Snapshot::Final;
    buf.extend_from_slice(b"{\"id\":\"");
    buf.extend_from_slice(plan.id.as_bytes());
    buf.extend_from_slice(b"\",\"object\":\"response\",\"created_at\":");
    push_u64(buf, plan.created_at);
    buf.extend_from_slice(b",\"status\":\"");
    buf.extend_from_slice(match snap {
        Snapshot::Queued => b"queued".as_slice(),
        Snapshot::InProgress => b"in_progress".as_slice(),
        Snapshot::Final => plan.status.as_str().as_bytes(),
    });
    buf.extend_from_slice(b"\",\"completed_at\":");
    if is_final && plan.status == Status::Completed {
        push_u64(buf, plan.created_at);
    } else {
        buf.extend_from_slice(b"null");
    }
    buf.extend_from_slice(b",\"error\":");
    if is_final && plan.status == Status::Failed {
        buf.extend_from_slice(
            b"{\"code\":\"server_error\",\"message\":\"The model failed to generate a response.\"}",
        );
    } else {
        buf.extend_from_slice(b"null");
    }
    buf.extend_from_slice(b",\"incomplete_details\":");
    if is_final && plan.status == Status::Incomplete {
        buf.extend_from_slice(b"{\"reason\":\"max_output_tokens\"}");
    } else {
        buf.extend_from_slice(b"null");
    }
    buf.push(b',');
    buf.extend_from_slice(&plan.model_field);
    buf.extend_from_slice(b",\"output\":[");
    if is_final {
        if plan.reasoning.is_some() {
            push_reasoning_item(buf, plan, true);
            buf.push(b',');
        }
        push_message_item(buf, plan, true);
    }
    buf.extend_from_slice(b"],\"service_tier\":");
    buf.extend_from_slice(if is_final {
        &plan.final_tier
    } else {
        &plan.requested_tier
    });
    buf.extend_from_slice(b",\"usage\":");
    push_usage(buf, if is_final { plan.usage } else { None });
    buf.extend_from_slice(&plan.head);
    buf.push(b'}');
}

/// The response object as a standalone JSON body.
pub(crate) fn response_json(plan: &Plan, snap: Snapshot) -> Vec<u8> {
    let cap = 1024
        + plan.head.len()
        + if snap == Snapshot::Final {
            text_capacity(plan)
        } else {
            0
        };
    let mut buf = Vec::with_capacity(cap);
    push_response(&mut buf, plan, snap);
    buf
}

fn event_type(plan: &Plan, ev: Ev) -> &'static str {
    match ev {
        Ev::Created => "response.created",
        Ev::Queued => "response.queued",
        Ev::InProgress => "response.in_progress",
        Ev::RsAdded | Ev::MsgAdded => "response.output_item.added",
        Ev::RsPartAdded => "response.reasoning_summary_part.added",
        Ev::RsDelta(_) => "response.reasoning_summary_text.delta",
        Ev::RsTextDone => "response.reasoning_summary_text.done",
        Ev::RsPartDone => "response.reasoning_summary_part.done",
        Ev::RsDone | Ev::MsgDone => "response.output_item.done",
        Ev::PartAdded => "response.content_part.added",
        Ev::Delta(_) => "response.output_text.delta",
        Ev::TextDone => "response.output_text.done",
        Ev::PartDone => "response.content_part.done",
        Ev::Terminal => plan.status.terminal_event(),
        Ev::Error => "error",
    }
}

fn push_obfuscation(buf: &mut Vec<u8>, seq: usize) {
    buf.extend_from_slice(b",\"obfuscation\":\"");
    buf.extend_from_slice(OBFUSCATION[seq % OBFUSCATION.len()].as_bytes());
    buf.push(b'"');
}

/// `"item_id":"rs_…","output_index":0,"summary_index":0`
fn push_rs_ids(buf: &mut Vec<u8>, plan: &Plan) {
    buf.extend_from_slice(b",\"item_id\":\"rs_");
    buf.extend_from_slice(plan.hex.as_bytes());
    buf.extend_from_slice(b"\",\"output_index\":0,\"summary_index\":0");
}

/// `"item_id":"msg_…","output_index":N,"content_index":0`
fn push_msg_ids(buf: &mut Vec<u8>, plan: &Plan) {
    buf.extend_from_slice(b",\"item_id\":\"msg_");
    buf.extend_from_slice(plan.hex.as_bytes());
    buf.extend_from_slice(if plan.reasoning.is_some() {
        b"\",\"output_index\":1,\"content_index\":0".as_slice()
    } else {
        b"\",\"output_index\":0,\"content_index\":0".as_slice()
    });
}

fn msg_output_index(plan: &Plan) -> &'static [u8] {
    if plan.reasoning.is_some() {
        b",\"output_index\":1"
    } else {
        b",\"output_index\":0"
    }
}

/// Appends the JSON payload (the `data:` value) of event `ev` with sequence `seq`.
fn push_event_json(buf: &mut Vec<u8>, plan: &Plan, ev: Ev, seq: usize) {
    buf.extend_from_slice(b"{\"type\":\"");
    buf.extend_from_slice(event_type(plan, ev).as_bytes());
    buf.extend_from_slice(b"\",\"sequence_number\":");
    push_u64(buf, seq as u64);
    match ev {
        Ev::Created => {
            buf.extend_from_slice(b",\"response\":");
            let snap = if plan.background {
                Snapshot::Queued
            } else {
                Snapshot::InProgress
            };
            push_response(buf, plan, snap);
        }
        Ev::Queued => {
            buf.extend_from_slice(b",\"response\":");
            push_response(buf, plan, Snapshot::Queued);
        }
        Ev::InProgress => {
            buf.extend_from_slice(b",\"response\":");
            push_response(buf, plan, Snapshot::InProgress);
        }
        Ev::Terminal => {
            buf.extend_from_slice(b",\"response\":");
            push_response(buf, plan, Snapshot::Final);
        }
        Ev::RsAdded | Ev::RsDone => {
            buf.extend_from_slice(b",\"output_index\":0,\"item\":");
            push_reasoning_item(buf, plan, ev == Ev::RsDone);
        }
        Ev::RsPartAdded => {
            push_rs_ids(buf, plan);
            buf.extend_from_slice(b",\"part\":");
            push_summary_part(buf, "");
        }
        Ev::RsDelta(n) => {
            push_rs_ids(buf, plan);
            buf.extend_from_slice(b",\"delta\":\"");
            buf.extend_from_slice(
                if n == 0 {
                    SUMMARY_PART_1
                } else {
                    SUMMARY_PART_2
                }
                .as_bytes(),
            );
            buf.push(b'"');
            push_obfuscation(buf, seq);
        }
        Ev::RsTextDone => {
            push_rs_ids(buf, plan);
            buf.extend_from_slice(b",\"text\":\"");
            buf.extend_from_slice(SUMMARY_PART_1.as_bytes());
            buf.extend_from_slice(SUMMARY_PART_2.as_bytes());
            buf.push(b'"');
        }
        Ev::RsPartDone => {
            push_rs_ids(buf, plan);
            buf.extend_from_slice(b",\"part\":");
            push_full_summary(buf);
        }
        Ev::MsgAdded | Ev::MsgDone => {
            buf.extend_from_slice(msg_output_index(plan));
            buf.extend_from_slice(b",\"item\":");
            push_message_item(buf, plan, ev == Ev::MsgDone);
        }
        Ev::PartAdded | Ev::PartDone => {
            push_msg_ids(buf, plan);
            buf.extend_from_slice(b",\"part\":");
            push_output_text_part(buf, plan, ev == Ev::PartDone);
        }
        Ev::Delta(i) => {
            push_msg_ids(buf, plan);
            buf.extend_from_slice(b",\"delta\":\"");
            push_delta_text(buf, i, plan.delta_bytes);
            buf.extend_from_slice(b"\",\"logprobs\":[]");
            push_obfuscation(buf, seq);
        }
        Ev::TextDone => {
            push_msg_ids(buf, plan);
            buf.extend_from_slice(b",\"text\":\"");
            push_full_text(buf, plan);
            buf.extend_from_slice(b"\",\"logprobs\":[]");
        }
        Ev::Error => {
            buf.extend_from_slice(
                b",\"code\":\"server_error\",\"message\":\"The server had an error while processing your request. Sorry about that!\",\"param\":null",
            );
        }
    }
    buf.push(b'}');
}

/// Renders one complete SSE event (lines plus the terminating blank line).
pub(crate) fn render_event(
    plan: &Plan,
    ev: Ev,
    seq: usize,
    framing: Framing,
    noise: Noise,
) -> Vec<u8> {
    let big = matches!(
        ev,
        Ev::TextDone
            | Ev::PartDone
            | Ev::MsgDone
            | Ev::Terminal
            | Ev::Created
            | Ev::InProgress
            | Ev::Queued
    );
    let cap = if big {
        1024 + plan.head.len() + text_capacity(plan)
    } else {
        320 + plan.delta_bytes
    };
    let mut buf = Vec::with_capacity(cap);
    let le = framing.le;
    if noise.comment {
        buf.extend_from_slice(b": mock stray comment");
        buf.extend_from_slice(le);
    }
    if framing.event_lines {
        buf.extend_from_slice(b"event: ");
        buf.extend_from_slice(event_type(plan, ev).as_bytes());
        buf.extend_from_slice(le);
    }
    buf.extend_from_slice(b"data: ");
    push_event_json(&mut buf, plan, ev, seq);
    buf.extend_from_slice(le);
    if noise.garbage_data {
        buf.extend_from_slice(b"data: <<mock garbage: this line is not JSON>>");
        buf.extend_from_slice(le);
    }
    buf.extend_from_slice(le);
    buf
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn plan(reasoning: Option<bool>, deltas: usize, delta_bytes: usize, status: Status) -> Plan {
        Plan {
            key: 1,
            id: "resp_0123".into(),
            hex: "0123".into(),
            created_at: 1_755_500_000,
            model_field: b"\"model\":\"gpt-5-2025-08-07\"".to_vec(),
            head: b",\"store\":true,\"metadata\":{}".to_vec(),
            requested_tier: b"\"auto\"".to_vec(),
            final_tier: b"\"default\"".to_vec(),
            reasoning,
            deltas,
            delta_bytes,
            status,
            usage: Some(Usage {
                input: 11,
                cached: 0,
                output: 35,
                reasoning: 0,
            }),
            background: false,
            input: Value::String("hi".into()),
        }
    }

    #[test]
    fn delta_text_respects_size_and_char_boundaries() {
        for bytes in [1, 2, 3, 8, 50, 200, 1000] {
            for i in 0..40 {
                let mut buf = Vec::new();
                push_delta_text(&mut buf, i, bytes);
                let s = std::str::from_utf8(&buf).expect("utf8");
                assert!(!s.is_empty());
                if bytes >= 4 {
                    // Rounding both ends to character boundaries moves each by < 3 bytes.
                    assert!(
                        buf.len() + 2 >= bytes && buf.len() <= bytes + 2,
                        "{bytes} {i} {}",
                        buf.len()
                    );
                } else {
                    assert_eq!(s.chars().count(), 1);
                }
            }
        }
    }

    #[test]
    fn every_event_payload_is_json_with_type_and_sequence() {
        for (reasoning, status) in [
            (None, Status::Completed),
            (Some(false), Status::Incomplete),
            (Some(true), Status::Failed),
        ] {
            let p = plan(reasoning, 5, 8, status);
            let prefix = Prefix::new(&p);
            let total = prefix.total(&p);
            for idx in 0..total {
                let ev = prefix.event_at(&p, idx, Ev::Terminal);
                let bytes = render_event(&p, ev, idx, Framing::default(), Noise::default());
                let s = std::str::from_utf8(&bytes).unwrap();
                assert!(s.ends_with("\n\n"));
                let data = s.lines().nth(1).unwrap().strip_prefix("data: ").unwrap();
                let v: Value = serde_json::from_str(data).unwrap();
                assert_eq!(v["sequence_number"], idx);
                assert_eq!(
                    s.lines().next().unwrap(),
                    format!("event: {}", v["type"].as_str().unwrap())
                );
            }
        }
    }

    #[test]
    fn final_text_is_the_concatenation_of_deltas() {
        for (n, b) in [(7, 5), (300, 1), (50, 3), (40, 333)] {
            let p = plan(None, n, b, Status::Completed);
            let mut deltas = Vec::new();
            for i in 0..n {
                push_delta_text(&mut deltas, i, b);
            }
            let v: Value = serde_json::from_slice(&response_json(&p, Snapshot::Final)).unwrap();
            assert_eq!(
                v["output"][0]["content"][0]["text"]
                    .as_str()
                    .unwrap()
                    .as_bytes(),
                &deltas[..]
            );
        }
        let p = plan(None, 7, 5, Status::Completed);
        let v: Value = serde_json::from_slice(&response_json(&p, Snapshot::Final)).unwrap();
        assert_eq!(v["usage"]["total_tokens"], 46);
        assert_eq!(v["completed_at"], 1_755_500_000);
    }

    #[test]
    fn snapshots_hide_usage_and_output() {
        let p = plan(Some(true), 2, 8, Status::Completed);
        let v: Value = serde_json::from_slice(&response_json(&p, Snapshot::InProgress)).unwrap();
        assert_eq!(v["status"], "in_progress");
        assert!(v["usage"].is_null());
        assert_eq!(v["output"], serde_json::json!([]));
        assert_eq!(v["service_tier"], "auto");
    }

    #[test]
    fn json_len_counts_compact_serialization() {
        assert_eq!(json_len(&Value::String("hello".into())), 7);
        assert_eq!(json_len(&serde_json::json!([{"a": 1}])), 9);
    }
}
