//! Passive push scanner over an OpenAI Responses SSE stream.
//!
//! Owns: SSE framing (WHATWG rules as the OpenAI SDK applies them) over bytes
//! that other code forwards to the client, and picking out the lifecycle
//! events (`response.created`, `response.queued`, `response.in_progress`,
//! `response.completed`, `response.incomplete`, `response.failed`, `error`)
//! whose `response` object carries the id and the usage we bill.
//!
//! Must never: alter, hold back or re-frame the forwarded bytes (it only sees
//! copies); rescan bytes it has already seen; copy or JSON-parse the data of
//! events that cannot matter for billing; hold more than `max_event_bytes` of
//! one event's data; fail or panic on any input.
//!
//! Policy decisions:
//! - The event type is the `event:` line when present (the last one in the
//!   event wins, an empty one counts as absent), else the JSON `"type"`.
//!   Without `event:`, the scanner first reads `{"type":"..."` from the start
//!   of the data (OpenAI always puts `type` first); only when that prefix
//!   does not settle it does it memmem for the quoted lifecycle names and then
//!   parse to confirm. A data JSON without `type` but with a top-level
//!   `"error"` object counts as an `error` event, because the SDK raises
//!   `APIError` on it.
//! - Only events still needed are parsed: the first `response.created`, the
//!   first terminal, and `queued`/`in_progress` only while no id is known.
//!   `terminal()` is the first terminal whose JSON parsed; later ones are
//!   skipped without parsing (and so are not counted as malformed).
//! - `malformed_events` counts needed lifecycle events whose JSON did not
//!   parse, that lacked their `response` object, or whose data the scanner
//!   had already discarded (an `event:` line naming a lifecycle type after
//!   data lines of an event it had classified as uninteresting).
//! - `oversized_events` counts needed lifecycle events over the limit, and
//!   events without `event:` over the limit whose type could not be read
//!   from the data prefix (they might have been lifecycle events).
//! - `finish` dispatches an event that lacked its blank line, and first ends
//!   an unterminated last line; WHATWG would drop it, but we bill what the
//!   upstream reported. Input fed after `finish` is ignored.

use crate::usage::{LooseError, MapOnly, ResponseSummary, Scalar};
use memchr::{memchr2, memmem};
use serde::Deserialize;

/// Default cap on one event's data (the joined `data:` lines).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// The data buffer keeps its allocation between events up to this size;
/// beyond it, the memory of one big `response.created` is returned.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Longest lifecycle name, `response.in_progress`.
const LONGEST_LIFECYCLE: usize = 20;

/// `event:` values longer than this cannot be lifecycle names, so only this
/// much is kept.
const EVENT_NAME_CAP: usize = 32;

/// How much leading data the type sniffer may look at before giving up.
const SNIFF_WINDOW: usize = 256;

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TerminalKind {
    Completed,
    Incomplete,
    Failed,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminal {
    pub kind: TerminalKind,
    /// From the event's `response` object; for an `error` event, a default
    /// summary whose `error_code` is the event's top-level `code`, else the
    /// nested `error.code`, else `error.type`.
    pub summary: ResponseSummary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Queued,
    Created,
    InProgress,
    Terminal(TerminalKind),
}

fn lifecycle_kind(name: &[u8]) -> Option<Kind> {
    Some(match name {
        b"response.created" => Kind::Created,
        b"response.queued" => Kind::Queued,
        b"response.in_progress" => Kind::InProgress,
        b"response.completed" => Kind::Terminal(TerminalKind::Completed),
        b"response.incomplete" => Kind::Terminal(TerminalKind::Incomplete),
        b"response.failed" => Kind::Terminal(TerminalKind::Failed),
        b"error" => Kind::Terminal(TerminalKind::Error),
        _ => return None,
    })
}

/// Where we are inside the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// No byte of the line seen yet; a terminator here is a blank line.
    Start,
    /// Inside the field name (kept in `name`).
    Name,
    /// The rest of the line does not matter (comment, id, retry, unknown).
    Skip,
    /// Value of an `event` field.
    Event,
    /// Value of a `data` field.
    Data,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventName {
    Absent,
    Lifecycle(Kind),
    Other,
}

/// What the start of the data says about the JSON `"type"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sniff {
    /// Consistent so far with `{"type":"`, need more bytes.
    Pending,
    /// The prefix does not settle it; decide at dispatch.
    Unknown,
    Lifecycle(Kind),
    Other,
}

/// Push scanner: feed it every chunk of the upstream SSE body.
#[derive(Debug)]
pub struct SseScanner {
    max_event_bytes: usize,

    // Framing state.
    line: Line,
    name: [u8; 5],
    name_len: usize,
    /// The next value byte is the first; a single leading space is dropped.
    value_start: bool,
    /// The previous chunk ended with CR; an LF starting this one belongs to it.
    skip_lf: bool,
    bom_seen: usize,
    bom_done: bool,
    finished: bool,

    // Current event.
    event_name: EventName,
    event_buf: [u8; EVENT_NAME_CAP],
    event_len: usize,
    event_overflow: bool,
    has_data: bool,
    /// Whether data bytes of this event are being copied into `data_buf`.
    buffering: bool,
    data_buf: Vec<u8>,
    oversized: bool,
    data_dropped: bool,
    sniff: Sniff,
    /// The first data bytes while `sniff` is pending, kept apart from
    /// `data_buf` so classification never depends on the limit or on
    /// whether the event is being buffered.
    sniff_buf: [u8; SNIFF_WINDOW],
    sniff_len: usize,

    // Outcome.
    created: Option<ResponseSummary>,
    early_id: Option<String>,
    terminal: Option<Terminal>,
    events_seen: u64,
    malformed_events: u32,
    oversized_events: u32,
}

impl Default for SseScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl SseScanner {
    pub fn new() -> Self {
        Self::with_limit(DEFAULT_MAX_EVENT_BYTES)
    }

    /// `max_event_bytes` caps one event's joined data.
    pub fn with_limit(max_event_bytes: usize) -> Self {
        Self {
            max_event_bytes,
            line: Line::Start,
            name: [0; 5],
            name_len: 0,
            value_start: false,
            skip_lf: false,
            bom_seen: 0,
            bom_done: false,
            finished: false,
            event_name: EventName::Absent,
            event_buf: [0; EVENT_NAME_CAP],
            event_len: 0,
            event_overflow: false,
            has_data: false,
            buffering: true,
            data_buf: Vec::new(),
            oversized: false,
            data_dropped: false,
            sniff: Sniff::Pending,
            sniff_buf: [0; SNIFF_WINDOW],
            sniff_len: 0,
            created: None,
            early_id: None,
            terminal: None,
            events_seen: 0,
            malformed_events: 0,
            oversized_events: 0,
        }
    }

    /// The response id: from `response.created`, else from the terminal
    /// event's response, else from `response.queued`/`in_progress`.
    pub fn response_id(&self) -> Option<&str> {
        self.created
            .as_ref()
            .and_then(|s| s.id.as_deref())
            .or_else(|| self.terminal.as_ref().and_then(|t| t.summary.id.as_deref()))
            .or(self.early_id.as_deref())
    }

    pub fn created(&self) -> Option<&ResponseSummary> {
        self.created.as_ref()
    }

    pub fn terminal(&self) -> Option<&Terminal> {
        self.terminal.as_ref()
    }

    /// Dispatched events (those with at least one `data` line), of any type.
    pub fn events_seen(&self) -> u64 {
        self.events_seen
    }

    pub fn malformed_events(&self) -> u32 {
        self.malformed_events
    }

    pub fn oversized_events(&self) -> u32 {
        self.oversized_events
    }

    /// Scan the next chunk. Never fails: bad framing or JSON only shows up in
    /// the counters.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.finished {
            return;
        }
        let mut rest = chunk;
        if self.skip_lf {
            match rest.split_first() {
                None => return,
                Some((&b'\n', tail)) => rest = tail,
                Some(_) => {}
            }
            self.skip_lf = false;
        }
        if !self.bom_done {
            rest = self.eat_bom(rest);
        }
        while let Some((&b, tail)) = rest.split_first() {
            match self.line {
                Line::Start | Line::Name => {
                    // Field names are at most 5 interesting bytes, so a byte
                    // loop is cheaper here than a memchr call.
                    rest = tail;
                    match b {
                        b'\n' => self.end_line(),
                        b'\r' => {
                            self.end_line();
                            rest = self.after_cr(rest);
                        }
                        b':' => self.begin_value(),
                        _ => self.push_name(b),
                    }
                }
                Line::Skip | Line::Event | Line::Data => match memchr2(b'\n', b'\r', rest) {
                    Some(pos) => {
                        let (value, term) = rest.split_at(pos);
                        self.value(value);
                        let is_cr = term.first() == Some(&b'\r');
                        rest = term.get(1..).unwrap_or_default();
                        self.end_line();
                        if is_cr {
                            rest = self.after_cr(rest);
                        }
                    }
                    None => {
                        self.value(rest);
                        rest = &[];
                    }
                },
            }
        }
    }

    /// End of input: end an unterminated last line and dispatch a pending
    /// event that lacked its blank line.
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        if self.line != Line::Start {
            self.end_line();
        }
        self.dispatch();
        self.finished = true;
    }

    /// Consumes a leading UTF-8 BOM, possibly split across chunks.
    fn eat_bom<'a>(&mut self, mut rest: &'a [u8]) -> &'a [u8] {
        while let Some((&b, tail)) = rest.split_first() {
            if BOM.get(self.bom_seen) == Some(&b) {
                self.bom_seen += 1;
                rest = tail;
                if self.bom_seen == BOM.len() {
                    self.bom_done = true;
                    return rest;
                }
            } else {
                self.bom_done = true;
                if self.bom_seen > 0 {
                    // A partial BOM is ordinary line content; no field name
                    // we care about starts with 0xEF, so the line is ignored.
                    self.line = Line::Skip;
                }
                return rest;
            }
        }
        rest
    }

    fn after_cr<'a>(&mut self, rest: &'a [u8]) -> &'a [u8] {
        match rest.split_first() {
            Some((&b'\n', tail)) => tail,
            Some(_) => rest,
            None => {
                self.skip_lf = true;
                rest
            }
        }
    }

    fn push_name(&mut self, b: u8) {
        match self.name.get_mut(self.name_len) {
            Some(slot) => {
                *slot = b;
                self.name_len += 1;
                self.line = Line::Name;
            }
            // Longer than "event": not a field we read.
            None => self.line = Line::Skip,
        }
    }

    fn field_name(&self) -> &[u8] {
        self.name.get(..self.name_len).unwrap_or_default()
    }

    fn begin_value(&mut self) {
        self.value_start = true;
        self.line = match self.field_name() {
            b"data" => {
                self.start_data_line();
                Line::Data
            }
            b"event" => {
                self.event_len = 0;
                self.event_overflow = false;
                Line::Event
            }
            // Includes the empty name, i.e. a `:` comment line.
            _ => Line::Skip,
        };
    }

    fn end_line(&mut self) {
        match self.line {
            Line::Start => self.dispatch(),
            // A line without a colon is a field with an empty value.
            Line::Name => match self.field_name() {
                b"data" => self.start_data_line(),
                b"event" => {
                    self.event_len = 0;
                    self.event_overflow = false;
                    self.set_event_name();
                }
                _ => {}
            },
            Line::Event => self.set_event_name(),
            Line::Data | Line::Skip => {}
        }
        self.line = Line::Start;
        self.name_len = 0;
        self.value_start = false;
    }

    fn value(&mut self, bytes: &[u8]) {
        let mut v = bytes;
        if self.value_start {
            match v.split_first() {
                None => return,
                Some((&b' ', tail)) => v = tail,
                Some(_) => {}
            }
            self.value_start = false;
        }
        match self.line {
            Line::Event => self.push_event(v),
            Line::Data => self.data_value(v),
            Line::Start | Line::Name | Line::Skip => {}
        }
    }

    fn push_event(&mut self, v: &[u8]) {
        if self.event_overflow || v.is_empty() {
            return;
        }
        let end = self.event_len.saturating_add(v.len());
        match self.event_buf.get_mut(self.event_len..end) {
            Some(dst) => {
                dst.copy_from_slice(v);
                self.event_len = end;
            }
            None => self.event_overflow = true,
        }
    }

    fn set_event_name(&mut self) {
        let buf = self.event_buf;
        let name = buf.get(..self.event_len).unwrap_or_default();
        self.event_name = if self.event_overflow {
            EventName::Other
        } else if name.is_empty() {
            EventName::Absent
        } else {
            lifecycle_kind(name).map_or(EventName::Other, EventName::Lifecycle)
        };
        self.update_buffering();
    }

    fn wants(&self, kind: Kind) -> bool {
        match kind {
            Kind::Created => self.created.is_none(),
            Kind::Queued | Kind::InProgress => self.created.is_none() && self.early_id.is_none(),
            Kind::Terminal(_) => self.terminal.is_none(),
        }
    }

    fn update_buffering(&mut self) {
        let want = if self.created.is_some() && self.terminal.is_some() {
            false
        } else {
            match self.event_name {
                EventName::Lifecycle(k) => self.wants(k),
                EventName::Other => false,
                EventName::Absent => match self.sniff {
                    Sniff::Pending | Sniff::Unknown => true,
                    Sniff::Lifecycle(k) => self.wants(k),
                    Sniff::Other => false,
                },
            }
        };
        if self.buffering && !want {
            if self.has_data {
                self.data_dropped = true;
            }
            // What was discarded no longer counts as over the limit; how
            // much got copied before the type was known depends on chunking.
            self.oversized = false;
            self.data_buf.clear();
        }
        self.buffering = want;
    }

    fn start_data_line(&mut self) {
        if self.has_data {
            // Joined data lines are separated by LF (the spec appends LF to
            // every line and strips the final one).
            self.data_value(b"\n");
        } else if !self.buffering {
            self.data_dropped = true;
        }
        self.has_data = true;
    }

    fn data_value(&mut self, v: &[u8]) {
        if v.is_empty() {
            return;
        }
        if self.sniff == Sniff::Pending {
            self.sniff_data(v);
        }
        if !self.buffering {
            self.data_dropped = true;
            return;
        }
        if self.oversized {
            return;
        }
        let room = self.max_event_bytes.saturating_sub(self.data_buf.len());
        if v.len() > room {
            self.oversized = true;
            self.data_buf = Vec::new();
            return;
        }
        self.data_buf.extend_from_slice(v);
    }

    /// Feeds the data prefix to the type sniffer.
    fn sniff_data(&mut self, v: &[u8]) {
        if self.event_name != EventName::Absent {
            // The sniffer must see the data from its first byte; data that
            // arrives under an `event:` name would leave a gap, so give up and
            // let a full parse decide if the name is later cleared.
            self.set_sniff(Sniff::Unknown);
            return;
        }
        // Fast path: classify straight from the chunk so that an
        // uninteresting data-only event is never copied.
        let mut s = if self.sniff_len == 0 {
            sniff(v)
        } else {
            Sniff::Pending
        };
        if s == Sniff::Pending {
            let end = SNIFF_WINDOW.min(self.sniff_len.saturating_add(v.len()));
            let take = end.saturating_sub(self.sniff_len);
            if let (Some(dst), Some(src)) =
                (self.sniff_buf.get_mut(self.sniff_len..end), v.get(..take))
            {
                dst.copy_from_slice(src);
                self.sniff_len = end;
            }
            s = sniff(self.sniff_buf.get(..self.sniff_len).unwrap_or_default());
        }
        self.set_sniff(s);
    }

    fn set_sniff(&mut self, s: Sniff) {
        if s != Sniff::Pending {
            self.sniff = s;
            self.update_buffering();
        }
    }

    fn dispatch(&mut self) {
        if self.has_data {
            self.events_seen = self.events_seen.saturating_add(1);
            match self.event_name {
                EventName::Lifecycle(k) => self.handle(k),
                EventName::Other => {}
                EventName::Absent => match self.sniff {
                    Sniff::Lifecycle(k) => self.handle(k),
                    Sniff::Other => {}
                    Sniff::Pending | Sniff::Unknown => self.handle_unclassified(),
                },
            }
        }
        self.reset_event();
    }

    fn handle(&mut self, kind: Kind) {
        if !self.wants(kind) {
            return;
        }
        // Discarded data wins over the limit: whether the limit was reached
        // before the data was discarded depends on chunking.
        if self.data_dropped {
            self.malformed_events = self.malformed_events.saturating_add(1);
            return;
        }
        if self.oversized {
            self.oversized_events = self.oversized_events.saturating_add(1);
            return;
        }
        match parse_envelope(&self.data_buf) {
            Some(env) => self.apply(kind, env),
            None => self.malformed_events = self.malformed_events.saturating_add(1),
        }
    }

    /// A data-only event whose prefix did not reveal its type.
    fn handle_unclassified(&mut self) {
        if self.data_dropped {
            return;
        }
        if self.oversized {
            self.oversized_events = self.oversized_events.saturating_add(1);
            return;
        }
        if !might_be_lifecycle(&self.data_buf) {
            return;
        }
        let Some(env) = parse_envelope(&self.data_buf) else {
            self.malformed_events = self.malformed_events.saturating_add(1);
            return;
        };
        let kind = match &env.ty {
            Some(Scalar::Str(t)) => lifecycle_kind(t.as_bytes()),
            None if env.error.as_ref().is_some_and(LooseError::is_object) => {
                Some(Kind::Terminal(TerminalKind::Error))
            }
            _ => None,
        };
        if let Some(kind) = kind {
            if self.wants(kind) {
                self.apply(kind, env);
            }
        }
    }

    fn apply(&mut self, kind: Kind, env: EventEnvelope) {
        match kind {
            Kind::Terminal(TerminalKind::Error) => {
                let error_code = env
                    .code
                    .and_then(Scalar::into_text)
                    .or_else(|| env.error.and_then(LooseError::code_or_type));
                self.terminal = Some(Terminal {
                    kind: TerminalKind::Error,
                    summary: ResponseSummary {
                        error_code,
                        ..ResponseSummary::default()
                    },
                });
            }
            _ => {
                let Some(summary) = env.response else {
                    // The event exists to carry the response object.
                    self.malformed_events = self.malformed_events.saturating_add(1);
                    return;
                };
                match kind {
                    Kind::Created => self.created = Some(summary),
                    Kind::Queued | Kind::InProgress => self.early_id = summary.id,
                    Kind::Terminal(kind) => self.terminal = Some(Terminal { kind, summary }),
                }
            }
        }
    }

    fn reset_event(&mut self) {
        self.event_name = EventName::Absent;
        self.event_len = 0;
        self.event_overflow = false;
        self.has_data = false;
        self.oversized = false;
        self.data_dropped = false;
        self.sniff = Sniff::Pending;
        self.sniff_len = 0;
        if self.data_buf.capacity() > KEEP_CAPACITY {
            self.data_buf = Vec::new();
        } else {
            self.data_buf.clear();
        }
        self.buffering = true;
        self.update_buffering();
    }
}

#[derive(Deserialize)]
struct EventEnvelope {
    #[serde(rename = "type", default)]
    ty: Option<Scalar>,
    #[serde(default)]
    response: Option<ResponseSummary>,
    #[serde(default)]
    code: Option<Scalar>,
    #[serde(default)]
    error: Option<LooseError>,
}

fn parse_envelope(data: &[u8]) -> Option<EventEnvelope> {
    serde_json::from_slice::<MapOnly<EventEnvelope>>(data)
        .ok()
        .map(|MapOnly(e)| e)
}

/// Cheap filter before a full parse: a lifecycle event's data must contain
/// its type as a complete JSON string token (an escaped occurrence inside
/// text, `\"response.completed\"`, does not match because of the backslash),
/// or an `"error"` key.
fn might_be_lifecycle(data: &[u8]) -> bool {
    if memmem::find(data, b"\"error\"").is_some() {
        return true;
    }
    memmem::find_iter(data, b"\"response.").any(|at| {
        let tail = data.get(at + 1..).unwrap_or_default();
        [
            &b"response.created\""[..],
            b"response.completed\"",
            b"response.incomplete\"",
            b"response.failed\"",
            b"response.queued\"",
            b"response.in_progress\"",
        ]
        .iter()
        .any(|name| tail.starts_with(name))
    })
}

fn is_json_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

enum Step {
    Matched,
    Pending,
    Unknown,
}

/// Skips JSON whitespace, then expects `lit`.
fn expect(buf: &[u8], pos: &mut usize, lit: &[u8]) -> Step {
    while buf.get(*pos).is_some_and(|&b| is_json_ws(b)) {
        *pos += 1;
    }
    let rest = buf.get(*pos..).unwrap_or_default();
    if rest.starts_with(lit) {
        *pos += lit.len();
        Step::Matched
    } else if rest.len() < lit.len() && lit.starts_with(rest) {
        Step::Pending
    } else {
        Step::Unknown
    }
}

/// Reads the type from a data prefix of the form `{"type":"<name>"`, which is
/// how OpenAI serialises every event.
///
/// Only the first `SNIFF_WINDOW` bytes count, so the answer for a prefix
/// never changes as more bytes arrive (which keeps it chunking-invariant).
fn sniff(buf: &[u8]) -> Sniff {
    let pending = if buf.len() >= SNIFF_WINDOW {
        Sniff::Unknown
    } else {
        Sniff::Pending
    };
    let buf = buf.get(..SNIFF_WINDOW).unwrap_or(buf);
    let mut pos = 0;
    for lit in [&b"{"[..], b"\"type\"", b":", b"\""] {
        match expect(buf, &mut pos, lit) {
            Step::Matched => {}
            Step::Pending => return pending,
            Step::Unknown => return Sniff::Unknown,
        }
    }
    let rest = buf.get(pos..).unwrap_or_default();
    // With no quote or backslash in the first LONGEST_LIFECYCLE + 1 bytes,
    // the decoded name is longer than any lifecycle name.
    let window = rest.get(..LONGEST_LIFECYCLE + 1).unwrap_or(rest);
    match memchr2(b'"', b'\\', window) {
        Some(end) if window.get(end) == Some(&b'"') => {
            let name = window.get(..end).unwrap_or_default();
            lifecycle_kind(name).map_or(Sniff::Other, Sniff::Lifecycle)
        }
        // An escape in the name: let the JSON parser decide.
        Some(_) => Sniff::Unknown,
        None if window.len() > LONGEST_LIFECYCLE => Sniff::Other,
        None => pending,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::usage::Usage;
    use proptest::prelude::*;

    const ID: &str = "resp_68a1c0f2e4b08190a1";

    fn created_response() -> String {
        format!(
            r#"{{"id":"{ID}","object":"response","created_at":1755500000,"status":"in_progress","background":false,"error":null,"incomplete_details":null,"instructions":null,"max_output_tokens":null,"max_tool_calls":null,"model":"gpt-5-2025-08-07","output":[],"parallel_tool_calls":true,"previous_response_id":null,"prompt_cache_key":null,"reasoning":{{"effort":"medium","summary":"auto"}},"safety_identifier":null,"service_tier":"auto","store":true,"temperature":1.0,"text":{{"format":{{"type":"text"}},"verbosity":"medium"}},"tool_choice":"auto","tools":[],"top_logprobs":0,"top_p":1.0,"truncation":"disabled","usage":null,"user":null,"metadata":{{}}}}"#
        )
    }

    const USAGE_JSON: &str = r#"{"input_tokens":23,"input_tokens_details":{"cached_tokens":0},"output_tokens":412,"output_tokens_details":{"reasoning_tokens":384},"total_tokens":435}"#;

    const USAGE: Usage = Usage {
        input_tokens: 23,
        cached_tokens: 0,
        output_tokens: 412,
        reasoning_tokens: 384,
        total_tokens: 435,
    };

    fn final_response(status: &str, usage: &str, error: &str) -> String {
        format!(
            r#"{{"id":"{ID}","object":"response","created_at":1755500000,"status":"{status}","completed_at":1755500006,"background":false,"error":{error},"incomplete_details":null,"model":"gpt-5-2025-08-07","output":[{{"id":"rs_68a1c0f3a1","type":"reasoning","summary":[{{"type":"summary_text","text":"**Computing square area**\n\nDiagonal d gives area d²/2."}}]}},{{"id":"msg_68a1c0f7b2","type":"message","status":"completed","content":[{{"type":"output_text","annotations":[],"logprobs":[],"text":"Area = 10²/2 = 50 cm²."}}],"role":"assistant"}}],"parallel_tool_calls":true,"reasoning":{{"effort":"medium","summary":"auto"}},"service_tier":"default","store":true,"tool_choice":"auto","tools":[],"truncation":"disabled","usage":{usage},"user":null,"metadata":{{}},"temperature":1.0,"top_p":1.0,"instructions":null,"max_output_tokens":null,"previous_response_id":null}}"#
        )
    }

    /// (event type, data JSON) of the wire-facts §3.5 stream, up to but not
    /// including the terminal event.
    fn body_events() -> Vec<(String, String)> {
        let created = created_response();
        let in_progress = created.clone();
        let ev = |t: &str, rest: &str| -> (String, String) {
            (t.to_string(), format!(r#"{{"type":"{t}",{rest}}}"#))
        };
        vec![
            ev(
                "response.created",
                &format!(r#""sequence_number":0,"response":{created}"#),
            ),
            ev(
                "response.in_progress",
                &format!(r#""sequence_number":1,"response":{in_progress}"#),
            ),
            ev(
                "response.output_item.added",
                r#""sequence_number":2,"output_index":0,"item":{"id":"rs_68a1c0f3a1","type":"reasoning","summary":[]}"#,
            ),
            ev(
                "response.reasoning_summary_part.added",
                r#""sequence_number":3,"item_id":"rs_68a1c0f3a1","output_index":0,"summary_index":0,"part":{"type":"summary_text","text":""}"#,
            ),
            ev(
                "response.reasoning_summary_text.delta",
                r#""sequence_number":4,"item_id":"rs_68a1c0f3a1","output_index":0,"summary_index":0,"delta":"**Computing square area**\n\nDiagonal d gives area d²/2.","obfuscation":"q1Zx""#,
            ),
            ev(
                "response.reasoning_summary_text.done",
                r#""sequence_number":5,"item_id":"rs_68a1c0f3a1","output_index":0,"summary_index":0,"text":"**Computing square area**\n\nDiagonal d gives area d²/2.""#,
            ),
            ev(
                "response.reasoning_summary_part.done",
                r#""sequence_number":6,"item_id":"rs_68a1c0f3a1","output_index":0,"summary_index":0,"part":{"type":"summary_text","text":"**Computing square area**\n\nDiagonal d gives area d²/2."}"#,
            ),
            ev(
                "response.output_item.done",
                r#""sequence_number":7,"output_index":0,"item":{"id":"rs_68a1c0f3a1","type":"reasoning","summary":[{"type":"summary_text","text":"**Computing square area**\n\nDiagonal d gives area d²/2."}]}"#,
            ),
            ev(
                "response.output_item.added",
                r#""sequence_number":8,"output_index":1,"item":{"id":"msg_68a1c0f7b2","type":"message","status":"in_progress","content":[],"role":"assistant"}"#,
            ),
            ev(
                "response.content_part.added",
                r#""sequence_number":9,"item_id":"msg_68a1c0f7b2","output_index":1,"content_index":0,"part":{"type":"output_text","annotations":[],"logprobs":[],"text":""}"#,
            ),
            ev(
                "response.output_text.delta",
                r#""sequence_number":10,"item_id":"msg_68a1c0f7b2","output_index":1,"content_index":0,"delta":"Area = 10²/2","logprobs":[],"obfuscation":"Xk2""#,
            ),
            ev(
                "response.output_text.delta",
                r#""sequence_number":11,"item_id":"msg_68a1c0f7b2","output_index":1,"content_index":0,"delta":" = 50 cm².","logprobs":[],"obfuscation":"b7pQ""#,
            ),
            ev(
                "response.output_text.done",
                r#""sequence_number":12,"item_id":"msg_68a1c0f7b2","output_index":1,"content_index":0,"text":"Area = 10²/2 = 50 cm².","logprobs":[]"#,
            ),
            ev(
                "response.content_part.done",
                r#""sequence_number":13,"item_id":"msg_68a1c0f7b2","output_index":1,"content_index":0,"part":{"type":"output_text","annotations":[],"logprobs":[],"text":"Area = 10²/2 = 50 cm²."}"#,
            ),
            ev(
                "response.output_item.done",
                r#""sequence_number":14,"output_index":1,"item":{"id":"msg_68a1c0f7b2","type":"message","status":"completed","content":[{"type":"output_text","annotations":[],"logprobs":[],"text":"Area = 10²/2 = 50 cm²."}],"role":"assistant"}"#,
            ),
        ]
    }

    fn terminal_event(kind: &str, status: &str, usage: &str, error: &str) -> (String, String) {
        let resp = final_response(status, usage, error);
        (
            kind.to_string(),
            format!(r#"{{"type":"{kind}","sequence_number":15,"response":{resp}}}"#),
        )
    }

    fn completed_events() -> Vec<(String, String)> {
        let mut v = body_events();
        v.push(terminal_event(
            "response.completed",
            "completed",
            USAGE_JSON,
            "null",
        ));
        v
    }

    /// Renders events with the given line terminator, with or without
    /// `event:` lines.
    fn render(events: &[(String, String)], eol: &str, event_lines: bool) -> Vec<u8> {
        let mut out = String::new();
        for (t, data) in events {
            if event_lines {
                out.push_str(&format!("event: {t}{eol}"));
            }
            out.push_str(&format!("data: {data}{eol}{eol}"));
        }
        out.into_bytes()
    }

    fn scan(bytes: &[u8]) -> SseScanner {
        let mut s = SseScanner::new();
        s.feed(bytes);
        s.finish();
        s
    }

    #[derive(Debug, PartialEq)]
    struct Outcome {
        id: Option<String>,
        created: Option<ResponseSummary>,
        terminal: Option<Terminal>,
        events: u64,
        malformed: u32,
        oversized: u32,
    }

    fn outcome(s: &SseScanner) -> Outcome {
        Outcome {
            id: s.response_id().map(str::to_owned),
            created: s.created().cloned(),
            terminal: s.terminal().cloned(),
            events: s.events_seen(),
            malformed: s.malformed_events(),
            oversized: s.oversized_events(),
        }
    }

    fn scan_split(bytes: &[u8], cuts: &[usize], limit: usize) -> Outcome {
        let mut s = SseScanner::with_limit(limit);
        let mut last = 0;
        for &c in cuts {
            s.feed(&bytes[last..c]);
            last = c;
        }
        s.feed(&bytes[last..]);
        s.finish();
        outcome(&s)
    }

    fn assert_completed(s: &SseScanner, events: u64) {
        assert_eq!(s.response_id(), Some(ID));
        let created = s.created().expect("created");
        assert_eq!(created.status.as_deref(), Some("in_progress"));
        assert_eq!(created.service_tier.as_deref(), Some("auto"));
        assert_eq!(created.usage, None);
        let t = s.terminal().expect("terminal");
        assert_eq!(t.kind, TerminalKind::Completed);
        assert_eq!(t.summary.id.as_deref(), Some(ID));
        assert_eq!(t.summary.status.as_deref(), Some("completed"));
        assert_eq!(t.summary.model.as_deref(), Some("gpt-5-2025-08-07"));
        assert_eq!(t.summary.service_tier.as_deref(), Some("default"));
        assert_eq!(t.summary.usage, Some(USAGE));
        assert_eq!(t.summary.error_code, None);
        assert_eq!(t.summary.mcp_calls, 0);
        assert_eq!(s.events_seen(), events);
        assert_eq!(s.malformed_events(), 0);
        assert_eq!(s.oversized_events(), 0);
    }

    #[test]
    fn realistic_stream_lf() {
        let s = scan(&render(&completed_events(), "\n", true));
        assert_completed(&s, 16);
        // Non-lifecycle data was never copied: the buffer only ever held the
        // created and completed events, and the big one was released.
        assert!(s.data_buf.capacity() <= KEEP_CAPACITY);
    }

    #[test]
    fn realistic_stream_crlf_and_cr() {
        for eol in ["\r\n", "\r"] {
            let s = scan(&render(&completed_events(), eol, true));
            assert_completed(&s, 16);
        }
    }

    #[test]
    fn data_only_stream() {
        for eol in ["\n", "\r\n", "\r"] {
            let s = scan(&render(&completed_events(), eol, false));
            assert_completed(&s, 16);
        }
    }

    #[test]
    fn skipped_events_are_not_copied() {
        // Only uninteresting events: with or without event: lines, none of
        // their data may reach the buffer.
        let body = body_events()[2..].to_vec();
        for event_lines in [true, false] {
            let mut s = SseScanner::new();
            s.feed(&render(&body, "\n", event_lines));
            assert_eq!(s.data_buf.capacity(), 0, "event_lines={event_lines}");
            assert_eq!(s.events_seen(), 13);
        }
    }

    #[test]
    fn comments_and_ignored_fields_interleaved() {
        let mut out = String::from(": keep-alive\n\n:\n");
        for (t, data) in completed_events() {
            out.push_str(&format!(
                ": comment before {t}\nid: 7\nevent:{t}\n:inside\nretry: 10\nunknown-field: x\ndata:{data}\n\n: trailing\n\n"
            ));
        }
        let s = scan(out.as_bytes());
        assert_completed(&s, 16);
    }

    #[test]
    fn multi_line_data_is_joined_with_lf() {
        // Splitting the JSON at structural points: the LF joins are JSON
        // whitespace, so the joined data must parse. Also put `event:` after
        // the data lines.
        let mut out = String::new();
        for (t, data) in completed_events() {
            let split = data.replacen(",\"", ",\ndata: \"", 3);
            out.push_str(&format!("data: {split}\nevent: {t}\n\n"));
        }
        let s = scan(out.as_bytes());
        assert_completed(&s, 16);
        // Data-only multi-line too.
        let mut out = String::new();
        for (_, data) in completed_events() {
            let split = data.replacen(',', ",\ndata:", 4);
            out.push_str(&format!("data:{split}\n\n"));
        }
        let s = scan(out.as_bytes());
        assert_completed(&s, 16);
    }

    #[test]
    fn multi_line_join_is_exact() {
        // Inspect the joined buffer directly: LF between lines, an empty
        // `data` line contributes an empty line, one leading space stripped.
        let mut s = SseScanner::new();
        s.feed(b"event: error\ndata: a\ndata\ndata:\r\ndata:  b\rdata:c");
        s.feed(b"\n");
        assert_eq!(s.data_buf, b"a\n\n\n b\nc");
        let data = "event: error\ndata: {\"type\":\"error\",\"code\":\ndata:  \"ab\"}\n\n";
        let s = scan(data.as_bytes());
        assert_eq!(
            s.terminal().unwrap().summary.error_code.as_deref(),
            Some("ab")
        );
    }

    #[test]
    fn bom_is_ignored_only_at_start() {
        let mut bytes = BOM.to_vec();
        bytes.extend_from_slice(&render(&completed_events(), "\n", true));
        let s = scan(&bytes);
        assert_completed(&s, 16);
        // BOM split across chunks.
        let mut s = SseScanner::new();
        s.feed(&bytes[..1]);
        s.feed(&bytes[1..2]);
        s.feed(&bytes[2..5]);
        s.feed(&bytes[5..]);
        s.finish();
        assert_completed(&s, 16);
        // Without stripping, the first line would be "\u{feff}event", an
        // unknown field: the created event would have no event: line but
        // would still be found from its JSON type. Make the BOM matter by
        // using a data-first line.
        let mut bytes = BOM.to_vec();
        bytes.extend_from_slice(&render(&completed_events(), "\n", false));
        let s = scan(&bytes);
        assert_completed(&s, 16);
        // A BOM that is not at the very start is line content.
        let mut bytes = b"\n".to_vec();
        bytes.extend_from_slice(&BOM);
        bytes.extend_from_slice(&render(&completed_events()[..1], "\n", false));
        let s = scan(&bytes);
        assert_eq!(s.created(), None);
        // A partial BOM followed by other bytes: that line is ignored, the
        // rest is scanned.
        let mut bytes = vec![0xEF, 0xBB, b'x', b'\n'];
        bytes.extend_from_slice(&render(&completed_events(), "\n", true));
        let s = scan(&bytes);
        assert_completed(&s, 16);
    }

    #[test]
    fn cut_before_terminal() {
        let mut events = completed_events();
        events.pop();
        let bytes = render(&events, "\n", true);
        let s = scan(&bytes);
        assert_eq!(s.response_id(), Some(ID));
        assert!(s.created().is_some());
        assert_eq!(s.terminal(), None);
        assert_eq!(s.events_seen(), 15);
        // Cut in the middle of the completed event's data line: it cannot
        // parse, so it is malformed but the id is still known.
        let full = render(&completed_events(), "\n", true);
        let cut = &full[..full.len() - 40];
        let s = scan(cut);
        assert_eq!(s.response_id(), Some(ID));
        assert_eq!(s.terminal(), None);
        assert_eq!(s.malformed_events(), 1);
    }

    #[test]
    fn terminal_without_final_blank_line_is_dispatched_by_finish() {
        let full = render(&completed_events(), "\n", true);
        for trim in [1, 2] {
            let bytes = &full[..full.len() - trim];
            let mut s = SseScanner::new();
            s.feed(bytes);
            assert_eq!(s.terminal(), None, "not before finish");
            s.finish();
            assert_completed(&s, 16);
            // finish is idempotent and later input is ignored.
            s.finish();
            s.feed(b"\n\nevent: error\ndata: {\"type\":\"error\"}\n\n");
            assert_completed(&s, 16);
        }
    }

    #[test]
    fn error_event() {
        let mut events = body_events()[..3].to_vec();
        events.push((
            "error".into(),
            r#"{"type":"error","code":"ERR_SOMETHING","message":"Something went wrong","param":null,"sequence_number":3}"#.into(),
        ));
        for event_lines in [true, false] {
            let s = scan(&render(&events, "\n", event_lines));
            let t = s.terminal().unwrap();
            assert_eq!(t.kind, TerminalKind::Error);
            assert_eq!(t.summary.error_code.as_deref(), Some("ERR_SOMETHING"));
            assert_eq!(t.summary.usage, None);
            assert_eq!(s.response_id(), Some(ID));
        }
        // Nested error object, and the SDK's "top-level error key" shape.
        for data in [
            r#"{"type":"error","error":{"type":"server_error","code":"overloaded","message":"m"}}"#,
            r#"{"error":{"message":"m","type":"invalid_request_error","code":"overloaded"}}"#,
        ] {
            let s = scan(format!("data: {data}\n\n").as_bytes());
            let t = s.terminal().unwrap();
            assert_eq!(t.kind, TerminalKind::Error);
            assert_eq!(t.summary.error_code.as_deref(), Some("overloaded"));
        }
        let s = scan(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"server_error\",\"code\":null}}\n\n");
        assert_eq!(
            s.terminal().unwrap().summary.error_code.as_deref(),
            Some("server_error")
        );
    }

    #[test]
    fn incomplete_and_failed_with_usage() {
        let small = r#"{"input_tokens":23,"output_tokens":16,"output_tokens_details":{"reasoning_tokens":16},"total_tokens":39}"#;
        for (t, status, error, kind, usage) in [
            (
                "response.incomplete",
                "incomplete",
                "null",
                TerminalKind::Incomplete,
                small,
            ),
            (
                "response.failed",
                "failed",
                r#"{"code":"server_error","message":"The model failed to generate a response."}"#,
                TerminalKind::Failed,
                small,
            ),
            (
                "response.failed",
                "failed",
                r#"{"code":"server_error","message":"x"}"#,
                TerminalKind::Failed,
                "null",
            ),
        ] {
            let mut events = body_events();
            events.push(terminal_event(t, status, usage, error));
            for event_lines in [true, false] {
                let s = scan(&render(&events, "\r\n", event_lines));
                let term = s.terminal().unwrap();
                assert_eq!(term.kind, kind);
                assert_eq!(term.summary.status.as_deref(), Some(status));
                if usage == "null" {
                    assert_eq!(term.summary.usage, None);
                } else {
                    assert_eq!(
                        term.summary.usage,
                        Some(Usage {
                            input_tokens: 23,
                            cached_tokens: 0,
                            output_tokens: 16,
                            reasoning_tokens: 16,
                            total_tokens: 39
                        })
                    );
                }
                let want_code = (kind == TerminalKind::Failed).then_some("server_error");
                assert_eq!(term.summary.error_code.as_deref(), want_code);
                assert_eq!(s.malformed_events(), 0);
            }
        }
    }

    #[test]
    fn text_mentioning_completed_is_not_terminal() {
        let tricky = [
            // As event: + typed delta.
            r#"{"type":"response.output_text.delta","sequence_number":10,"item_id":"m","output_index":1,"content_index":0,"delta":"response.completed \"type\":\"response.completed\" {\"type\":\"response.completed\",\"response\":{\"usage\":{}}}"}"#,
            // type not first, so the prefix sniff cannot decide.
            r#"{"sequence_number":10,"delta":"\"type\":\"response.completed\", \"error\"","type":"response.output_text.delta"}"#,
            // A value that is exactly a lifecycle name passes the memmem
            // filter; the parse must still reject it.
            r#"{"delta":"response.completed","note":"error","type":"response.output_text.delta"}"#,
        ];
        let mut events = body_events();
        for d in tricky {
            events.insert(11, ("response.output_text.delta".into(), d.into()));
        }
        for event_lines in [true, false] {
            for eol in ["\n", "\r"] {
                let s = scan(&render(&events, eol, event_lines));
                assert_eq!(s.terminal(), None, "event_lines={event_lines}");
                assert_eq!(s.malformed_events(), 0);
                assert_eq!(s.response_id(), Some(ID));
                assert_eq!(s.events_seen(), 18);
            }
        }
        // And a real terminal after them is still found.
        events.push(terminal_event(
            "response.completed",
            "completed",
            USAGE_JSON,
            "null",
        ));
        for event_lines in [true, false] {
            let s = scan(&render(&events, "\n", event_lines));
            assert_eq!(s.terminal().unwrap().summary.usage, Some(USAGE));
        }
    }

    #[test]
    fn event_line_decides_over_json_type() {
        // A delta event: line whose JSON claims response.completed is skipped.
        let (_, data) = terminal_event("response.completed", "completed", USAGE_JSON, "null");
        let s = scan(format!("event: response.output_text.delta\ndata: {data}\n\n").as_bytes());
        assert_eq!(s.terminal(), None);
        // An empty event: line counts as absent, so the JSON type decides.
        let s = scan(format!("event:\ndata: {data}\n\n").as_bytes());
        assert_eq!(s.terminal().unwrap().kind, TerminalKind::Completed);
    }

    #[test]
    fn oversized_event() {
        let events = completed_events();
        let created_len = events[0].1.len();
        let completed_len = events.last().unwrap().1.len();
        assert!(completed_len > created_len);
        // Limit between the two: created is kept, completed is oversized.
        for event_lines in [true, false] {
            let mut s = SseScanner::with_limit(created_len + 10);
            s.feed(&render(&events, "\n", event_lines));
            s.finish();
            assert_eq!(s.response_id(), Some(ID));
            assert_eq!(s.terminal(), None);
            assert_eq!(s.oversized_events(), 1, "event_lines={event_lines}");
            assert_eq!(s.malformed_events(), 0);
            assert_eq!(s.events_seen(), 16);
            assert!(s.data_buf.capacity() <= created_len + 10 + 64);
        }
        // Scanning continues after an oversized event: a later (smaller)
        // terminal is still taken.
        let mut s = SseScanner::with_limit(created_len + 10);
        let mut bytes = render(&events, "\n", true);
        bytes.extend_from_slice(b"event: error\ndata: {\"type\":\"error\",\"code\":\"after\"}\n\n");
        s.feed(&bytes);
        s.finish();
        assert_eq!(s.oversized_events(), 1);
        assert_eq!(
            s.terminal().unwrap().summary.error_code.as_deref(),
            Some("after")
        );
        // A big non-lifecycle data-only event is not counted.
        let big = format!(
            "data: {{\"type\":\"response.image_generation_call.partial_image\",\"partial_image_b64\":\"{}\"}}\n\n",
            "A".repeat(10_000)
        );
        let mut s = SseScanner::with_limit(1000);
        s.feed(big.as_bytes());
        s.finish();
        assert_eq!(s.oversized_events(), 0);
        assert_eq!(s.events_seen(), 1);
    }

    #[test]
    fn malformed_terminal_counted() {
        let mut events = body_events();
        events.push((
            "response.completed".into(),
            r#"{"type":"response.completed","response":{"id":"resp_x","usage":{"input_tokens":1.5}}}"#
                .into(),
        ));
        events.push((
            "response.completed".into(),
            r#"{"type":"response.completed","response":{"id":"resp_x""#.into(),
        ));
        events.push((
            "response.completed".into(),
            r#"{"type":"response.completed","sequence_number":9}"#.into(),
        ));
        for event_lines in [true, false] {
            let s = scan(&render(&events, "\n", event_lines));
            assert_eq!(s.terminal(), None);
            assert_eq!(s.malformed_events(), 3, "event_lines={event_lines}");
            assert_eq!(s.response_id(), Some(ID));
        }
        // A later good terminal is still accepted after malformed ones.
        events.push(terminal_event(
            "response.completed",
            "completed",
            USAGE_JSON,
            "null",
        ));
        let s = scan(&render(&events, "\n", true));
        assert_eq!(s.terminal().unwrap().summary.usage, Some(USAGE));
        assert_eq!(s.malformed_events(), 3);
    }

    #[test]
    fn only_first_terminal_counts() {
        let mut events = completed_events();
        events.push(terminal_event("response.failed", "failed", "null", "null"));
        events.push(("error".into(), r#"{"type":"error","code":"x"}"#.into()));
        events.push(("response.completed".into(), "{not json".into()));
        let s = scan(&render(&events, "\n", true));
        assert_completed(&s, 19);
    }

    #[test]
    fn queued_or_in_progress_give_id_without_created() {
        let events = body_events();
        let bytes = render(&events[1..], "\n", true);
        let s = scan(&bytes);
        assert_eq!(s.created(), None);
        assert_eq!(s.response_id(), Some(ID));
        let queued = "data: {\"type\":\"response.queued\",\"response\":{\"id\":\"resp_q\",\"status\":\"queued\"}}\n\n";
        let s = scan(queued.as_bytes());
        assert_eq!(s.response_id(), Some("resp_q"));
    }

    #[test]
    fn event_without_data_is_not_dispatched() {
        let s = scan(b"event: response.completed\n\nevent: x\n\n\n\n");
        assert_eq!(s.events_seen(), 0);
        assert_eq!(s.malformed_events(), 0);
        // A bare `data` line (no colon) is an event with empty data.
        let s = scan(b"data\n\n");
        assert_eq!(s.events_seen(), 1);
        let s = scan(b"event: error\ndata\n\n");
        assert_eq!(s.malformed_events(), 1);
    }

    #[test]
    fn space_stripping() {
        // Exactly one leading space is stripped; "data:  x" keeps one.
        let s = scan(b"event:  error\ndata: {\"type\":\"error\",\"code\":\"c\"}\n\n");
        // The event type is " error" (one space kept): not lifecycle, but the
        // data-only path is not used because event: was given.
        assert_eq!(s.terminal(), None);
        let s = scan(b"event:error\ndata:{\"type\":\"error\",\"code\":\"c\"}\n\n");
        assert_eq!(
            s.terminal().unwrap().summary.error_code.as_deref(),
            Some("c")
        );
    }

    #[test]
    fn single_byte_feeding_matches() {
        for eol in ["\n", "\r\n", "\r"] {
            for event_lines in [true, false] {
                let bytes = render(&completed_events(), eol, event_lines);
                let mut s = SseScanner::new();
                for b in &bytes {
                    s.feed(std::slice::from_ref(b));
                }
                s.feed(&[]);
                s.finish();
                assert_completed(&s, 16);
            }
        }
    }

    #[test]
    fn sniff_cases() {
        assert_eq!(sniff(b""), Sniff::Pending);
        assert_eq!(sniff(b" {"), Sniff::Pending);
        assert_eq!(sniff(b"{\"ty"), Sniff::Pending);
        assert_eq!(sniff(b"{\"type\" : \"resp"), Sniff::Pending);
        assert_eq!(
            sniff(b"{\"type\":\"response.completed\""),
            Sniff::Lifecycle(Kind::Terminal(TerminalKind::Completed))
        );
        assert_eq!(
            sniff(b"{\n\"type\":\n\"error\","),
            Sniff::Lifecycle(Kind::Terminal(TerminalKind::Error))
        );
        assert_eq!(
            sniff(b"{\"type\":\"response.output_text.delta\""),
            Sniff::Other
        );
        assert_eq!(sniff(b"{\"type\":\"response.output_text.d"), Sniff::Other);
        assert_eq!(
            sniff(b"{\"type\":\"response.c\\u006fmpleted\""),
            Sniff::Unknown
        );
        assert_eq!(
            sniff(b"{\"delta\":\"x\",\"type\":\"error\"}"),
            Sniff::Unknown
        );
        assert_eq!(sniff(b"[DONE]"), Sniff::Unknown);
        assert_eq!(sniff(&[b' '; SNIFF_WINDOW]), Sniff::Unknown);
    }

    fn recorded_streams() -> Vec<Vec<u8>> {
        let mut with_extras = BOM.to_vec();
        with_extras.extend_from_slice(b": hello\r\n\r\n");
        for (t, data) in completed_events() {
            let split = data.replacen(",\"", ",\r\ndata:\"", 2);
            with_extras.extend_from_slice(
                format!("id: 1\r\nevent:{t}\r\ndata:{split}\r\n\r\n").as_bytes(),
            );
        }
        let mut errored = body_events()[..4].to_vec();
        errored.push(("error".into(), r#"{"type":"error","code":"E"}"#.into()));
        let mut cut = render(&completed_events(), "\n", true);
        cut.truncate(cut.len() - 300);
        vec![
            render(&completed_events(), "\n", true),
            render(&completed_events(), "\r\n", true),
            render(&completed_events(), "\r", true),
            render(&completed_events(), "\n", false),
            render(&completed_events(), "\r", false),
            with_extras,
            render(&errored, "\r\n", false),
            cut,
        ]
    }

    fn cuts_for(len: usize, idx: &[prop::sample::Index]) -> Vec<usize> {
        let mut cuts: Vec<usize> = idx.iter().map(|i| i.index(len + 1)).collect();
        cuts.sort_unstable();
        cuts
    }

    proptest! {
        #[test]
        fn split_invariance_on_recorded_streams(
            which in 0usize..8,
            idx in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
            small_limit in any::<bool>(),
        ) {
            let streams = recorded_streams();
            let bytes = &streams[which];
            // A limit that makes the completed event oversized exercises the
            // overflow path under splits too.
            let limit = if small_limit { 1500 } else { DEFAULT_MAX_EVENT_BYTES };
            let whole = scan_split(bytes, &[], limit);
            let split = scan_split(bytes, &cuts_for(bytes.len(), &idx), limit);
            prop_assert_eq!(&split, &whole);
            // Sanity: the unsplit outcome is the expected one.
            if which < 6 && !small_limit {
                prop_assert_eq!(whole.id.as_deref(), Some(ID));
                prop_assert_eq!(
                    whole.terminal.as_ref().map(|t| t.summary.usage),
                    Some(Some(USAGE))
                );
            }
        }

        #[test]
        fn split_invariance_on_sse_like_noise(
            parts in prop::collection::vec(
                prop::sample::select(vec![
                    "event: response.completed", "event: error", "event:response.created",
                    "event: response.output_text.delta", "event:", "event", "data", "data:",
                    "data: ", "data: {\"type\":\"error\",\"code\":\"x\"}",
                    "data: {\"type\":\"response.created\",\"response\":{\"id\":\"r1\"}}",
                    "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"r2\",\"usage\":{\"input_tokens\":3,\"output_tokens\":4}}}",
                    "data: {\"type\":\"response.output_text.delta\",\"delta\":\"\\\"response.completed\\\"\"}",
                    "data: {\"delta\":\"response.failed\",\"type\":\"x\"}",
                    "data: {\"type\":", "data: \"response.failed\"}", "data: {\"error\":{\"code\":\"q\"}}",
                    ": c", "id: 4", "\u{feff}", "\n", "\r", "\r\n", "\n\n", "x", "{", "}",
                ]),
                0..40,
            ),
            idx in prop::collection::vec(any::<prop::sample::Index>(), 0..16),
            limit in prop::sample::select(vec![8usize, 40, 1 << 20]),
        ) {
            let bytes = parts.concat().into_bytes();
            let whole = scan_split(&bytes, &[], limit);
            let split = scan_split(&bytes, &cuts_for(bytes.len(), &idx), limit);
            prop_assert_eq!(split, whole);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_split_invariant(
            bytes in prop::collection::vec(any::<u8>(), 0..512),
            idx in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
            limit in 0usize..64,
        ) {
            let whole = scan_split(&bytes, &[], limit);
            let split = scan_split(&bytes, &cuts_for(bytes.len(), &idx), limit);
            prop_assert_eq!(split, whole);
            let _ = scan_split(&bytes, &[], DEFAULT_MAX_EVENT_BYTES);
        }
    }

    /// Naive whole-buffer reference: spec-literal line splitting and
    /// `serde_json::Value` for the type, with the same "which events are
    /// needed" rules as the scanner.
    fn reference(bytes: &[u8], limit: usize) -> Outcome {
        let bytes = bytes.strip_prefix(&BOM[..]).unwrap_or(bytes);
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let mut cur = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\n' => lines.push(std::mem::take(&mut cur)),
                b'\r' => {
                    lines.push(std::mem::take(&mut cur));
                    if bytes.get(i + 1) == Some(&b'\n') {
                        i += 1;
                    }
                }
                b => cur.push(b),
            }
            i += 1;
        }
        if !cur.is_empty() {
            lines.push(cur);
        }
        lines.push(Vec::new()); // finish() dispatches the pending event

        let mut out = Outcome {
            id: None,
            created: None,
            terminal: None,
            events: 0,
            malformed: 0,
            oversized: 0,
        };
        let mut early_id: Option<String> = None;
        let mut event_type: Vec<u8> = Vec::new();
        let mut data: Option<Vec<u8>> = None;
        for line in lines {
            if line.is_empty() {
                let (ty, d) = (std::mem::take(&mut event_type), data.take());
                let Some(d) = d else { continue };
                out.events += 1;
                let json: Option<serde_json::Value> = serde_json::from_slice(&d).ok();
                let ty: Vec<u8> = if !ty.is_empty() {
                    ty
                } else {
                    match json.as_ref() {
                        Some(v) => match v.get("type") {
                            Some(serde_json::Value::String(t)) => t.clone().into_bytes(),
                            None if v.get("error").is_some_and(|e| e.is_object()) => {
                                b"error".to_vec()
                            }
                            _ => Vec::new(),
                        },
                        None => Vec::new(),
                    }
                };
                let Some(kind) = lifecycle_kind(&ty) else {
                    continue;
                };
                let wanted = match kind {
                    Kind::Created => out.created.is_none(),
                    Kind::Queued | Kind::InProgress => out.created.is_none() && early_id.is_none(),
                    Kind::Terminal(_) => out.terminal.is_none(),
                };
                if !wanted {
                    continue;
                }
                if d.len() > limit {
                    out.oversized += 1;
                    continue;
                }
                let Some(v) = json.filter(|v| v.is_object()) else {
                    out.malformed += 1;
                    continue;
                };
                let text = |v: Option<&serde_json::Value>| match v {
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(serde_json::Value::Number(n)) if !n.is_f64() => Some(n.to_string()),
                    _ => None,
                };
                if kind == Kind::Terminal(TerminalKind::Error) {
                    let err = v.get("error");
                    let code = text(v.get("code"))
                        .or_else(|| text(err.and_then(|e| e.get("code"))))
                        .or_else(|| match err.and_then(|e| e.get("type")) {
                            Some(serde_json::Value::String(s)) => Some(s.clone()),
                            _ => None,
                        });
                    out.terminal = Some(Terminal {
                        kind: TerminalKind::Error,
                        summary: ResponseSummary {
                            error_code: code,
                            ..ResponseSummary::default()
                        },
                    });
                    continue;
                }
                let summary = match v.get("response") {
                    Some(r) if r.is_object() => match ResponseSummary::deserialize(r.clone()) {
                        Ok(s) => s,
                        Err(_) => {
                            out.malformed += 1;
                            continue;
                        }
                    },
                    _ => {
                        out.malformed += 1;
                        continue;
                    }
                };
                match kind {
                    Kind::Created => out.created = Some(summary),
                    Kind::Queued | Kind::InProgress => early_id = summary.id,
                    Kind::Terminal(k) => out.terminal = Some(Terminal { kind: k, summary }),
                }
            } else if line[0] == b':' {
            } else {
                let (name, value) = match memchr::memchr(b':', &line) {
                    Some(p) => {
                        let v = &line[p + 1..];
                        (&line[..p], v.strip_prefix(b" ").unwrap_or(v))
                    }
                    None => (&line[..], &b""[..]),
                };
                match name {
                    b"event" => event_type = value.to_vec(),
                    b"data" => match data.as_mut() {
                        Some(d) => {
                            d.push(b'\n');
                            d.extend_from_slice(value);
                        }
                        None => data = Some(value.to_vec()),
                    },
                    _ => {}
                }
            }
        }
        out.id = out
            .created
            .as_ref()
            .and_then(|s| s.id.clone())
            .or_else(|| out.terminal.as_ref().and_then(|t| t.summary.id.clone()))
            .or(early_id);
        out
    }

    /// (type for an `event:` line, data, may be sent without `event:`).
    fn differential_payloads() -> Vec<(&'static str, String, bool)> {
        let long_text = "lorem ipsum ".repeat(80);
        vec![
            ("response.created", r#"{"type":"response.created","response":{"id":"r_c","status":"in_progress","usage":null}}"#.into(), true),
            ("response.in_progress", r#"{"type":"response.in_progress","response":{"id":"r_p","status":"in_progress"}}"#.into(), true),
            ("response.queued", r#"{"type":"response.queued", "response" : {"id":"r_q"}}"#.into(), true),
            ("response.completed", format!(r#"{{"type":"response.completed","response":{{"id":"r_c","status":"completed","service_tier":"default","output":[{{"type":"mcp_call"}},{{"type":"message","content":[{{"type":"output_text","text":"{long_text}"}}]}}],"usage":{USAGE_JSON}}}}}"#), true),
            ("response.incomplete", r#"{"type":"response.incomplete","response":{"id":"r_i","status":"incomplete","usage":{"input_tokens":5,"output_tokens":16}}}"#.into(), true),
            ("response.failed", r#"{"type":"response.failed","response":{"id":"r_f","status":"failed","error":{"code":"server_error","message":"m"},"usage":null}}"#.into(), true),
            ("error", r#"{"type":"error","code":"E1","message":"m","param":null}"#.into(), true),
            ("error", r#"{"type":"error","error":{"type":"server_error","code":null}}"#.into(), true),
            ("error", r#"{"error":{"message":"m","type":"t","code":42}}"#.into(), true),
            ("response.output_text.delta", r#"{"type":"response.output_text.delta","delta":"say \"type\":\"response.completed\", \"error\" and response.failed"}"#.into(), true),
            ("response.output_text.delta", r#"{"delta":"response.completed","note":"error","type":"response.output_text.delta"}"#.into(), true),
            ("response.output_text.delta", r#"{"sequence_number":3,"type":"response.failed","response":{"id":"r_late","usage":{"input_tokens":1,"output_tokens":1}}}"#.into(), true),
            ("response.output_item.added", r#"{"type":"response.output_item.added","item":{"type":"mcp_call","error":null}}"#.into(), true),
            ("response.completed", r#"{"type":"response.completed","response":{"id":"r_bad","usage":{"input_tokens":1.5}}}"#.into(), true),
            ("response.completed", r#"{"type":"response.completed","response":{"id":"r_cut""#.into(), false),
            ("response.created", r#"{"type":"response.created","sequence_number":0}"#.into(), true),
            ("message", "[DONE]".into(), false),
        ]
    }

    fn render_differential(
        plan: &[(usize, u8, usize, usize, bool)],
        bom: bool,
        drop_last_blank: bool,
    ) -> Vec<u8> {
        let payloads = differential_payloads();
        let eols = ["\n", "\r\n", "\r"];
        let mut out = Vec::new();
        if bom {
            out.extend_from_slice(&BOM);
        }
        for &(p, mode, eol, splits, comment) in plan {
            let (ty, data, data_only_ok) = &payloads[p % payloads.len()];
            let eol = eols[eol % 3];
            let mode = if *data_only_ok { mode % 3 } else { 1 };
            if comment {
                out.extend_from_slice(format!(": ping{eol}id: 9{eol}").as_bytes());
            }
            match mode {
                1 => out.extend_from_slice(format!("event: {ty}{eol}").as_bytes()),
                2 => out
                    .extend_from_slice(format!("event:response.output_text.delta{eol}").as_bytes()),
                _ => {}
            }
            let split = data.replacen(",\"", &format!(",{eol}data:\""), splits);
            out.extend_from_slice(format!("data: {split}{eol}{eol}").as_bytes());
        }
        if drop_last_blank {
            // Remove the final blank line (and maybe the line's own end).
            let cut = if out.ends_with(b"\r\n\r\n") { 2 } else { 1 };
            out.truncate(out.len().saturating_sub(cut));
        }
        out
    }

    proptest! {
        #[test]
        fn differential_against_reference(
            plan in prop::collection::vec((0usize..64, 0u8..3, 0usize..3, 0usize..4, any::<bool>()), 0..12),
            bom in any::<bool>(),
            drop_last_blank in any::<bool>(),
            limit in prop::sample::select(vec![600usize, DEFAULT_MAX_EVENT_BYTES]),
            idx in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let bytes = render_differential(&plan, bom, drop_last_blank);
            let want = reference(&bytes, limit);
            let got = scan_split(&bytes, &cuts_for(bytes.len(), &idx), limit);
            prop_assert_eq!(got, want, "{}", String::from_utf8_lossy(&bytes));
        }
    }
}
