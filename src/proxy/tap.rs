//! The response body wrapper: forwards the upstream's frames untouched while
//! an observer watches them, and ends the request's [`Meter`] exactly once.
//!
//! Every data frame is passed on as the same `Bytes` (a refcount, no copy)
//! the moment it arrives; the observer (SSE scanner or JSON collector) sees it
//! on the way. The end is detected on `Ready(None)`, on `is_end_stream()`
//! after a frame (hyper may stop polling there), on an upstream error, on the
//! idle timeout, and on `Drop` — the client went away. Then, by policy, the
//! rest of the upstream body is drained in a tracked task so the usage the
//! backend bills still reaches the ledger. Nothing here touches the database.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::DisconnectPolicy;
use crate::ledger::RequestStatus;
use crate::metering::{Meter, Outcome};
use crate::proxy::upstream::Upstream;
use crate::sse::{SseScanner, TerminalKind};
use crate::usage::{error_code_from_body, JsonBodyCollector};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The upstream's response body, whatever produced it (the network, or a
/// body already read to decide on a retry).
pub type UpstreamBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A non-streaming body larger than this is forwarded but not read for usage.
const JSON_COLLECT_LIMIT: usize = 64 * 1024 * 1024;
/// What is kept of an upstream error body to read its `error.code`: the
/// whole body is forwarded, only this much is parsed.
pub const ERROR_BODY_PARSE_LIMIT: usize = 1024 * 1024;

pub enum Observer {
    Json(JsonBodyCollector),
    Sse(Box<SseScanner>),
}

impl Observer {
    pub fn json() -> Self {
        Self::Json(JsonBodyCollector::new(JSON_COLLECT_LIMIT))
    }

    /// For an error answer: only its `error.code` is wanted.
    pub fn error_body() -> Self {
        Self::Json(JsonBodyCollector::new(ERROR_BODY_PARSE_LIMIT))
    }

    pub fn sse() -> Self {
        Self::Sse(Box::default())
    }

    fn feed(&mut self, chunk: &[u8]) {
        match self {
            Self::Json(collector) => collector.feed(chunk),
            Self::Sse(scanner) => scanner.feed(chunk),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Complete,
    UpstreamError,
    Timeout,
    ClientGone,
    /// The client had left and the drain reached the request's timeout.
    DrainTimeout,
    /// Shutdown's drain deadline passed while the drain was still reading.
    ShutdownCut,
}

#[derive(Debug)]
struct IdleTimeout;

impl std::fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the upstream went silent for longer than the request timeout")
    }
}

impl std::error::Error for IdleTimeout {}

/// How a metered body behaves around its end.
#[derive(Clone)]
pub struct TapSettings {
    /// Longest silence from the upstream before the body is cut.
    pub idle: Duration,
    pub policy: DisconnectPolicy,
    /// Where drains and recoveries run, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Asked for the final response when a stream ends without one.
    pub recovery: Option<Arc<Upstream>>,
    /// Longest a drain (or recovery) may run after the client left: the
    /// request's timeout. Silence or SSE comments cannot stretch it.
    pub drain_for: Duration,
    /// Fires when shutdown's drain deadline has passed: every drain and
    /// recovery records what it knows at once.
    pub cut: CancellationToken,
}

pub struct MeteredBody {
    inner: Option<UpstreamBody>,
    observer: Observer,
    meter: Option<Meter>,
    http_status: u16,
    first_byte_at: Option<DateTime<Utc>>,
    /// When the upstream's silence runs out: moved on by every frame that is
    /// progress. The timer is set only when the body has to wait, and moved
    /// only when it fires early: a body that arrives whole (a non-streaming
    /// answer) never touches the timer wheel, a stream touches it about once
    /// per wait rather than once per frame.
    due: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    settings: TapSettings,
    client_gone: bool,
}

impl MeteredBody {
    pub fn new(
        inner: UpstreamBody,
        observer: Observer,
        meter: Meter,
        http_status: u16,
        settings: TapSettings,
    ) -> Self {
        Self {
            inner: Some(inner),
            observer,
            meter: Some(meter),
            http_status,
            first_byte_at: None,
            due: Instant::now() + settings.idle,
            timer: None,
            settings,
            client_gone: false,
        }
    }

    /// Polls the silence timer (set, or moved to `due`, as needed); true
    /// once `due` has passed.
    fn silence_ran_out(&mut self, cx: &mut Context<'_>) -> bool {
        let due = self.due;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if Instant::now() >= due {
                return true;
            }
            // Fired for an earlier deadline: progress came since.
            timer.as_mut().reset(due);
        }
    }

    fn can_spawn(&self) -> bool {
        !self.settings.tasks.is_closed() && tokio::runtime::Handle::try_current().is_ok()
    }

    fn finish(&mut self, end: End) {
        let Some(meter) = self.meter.take() else {
            return;
        };
        self.inner = None;
        let mut outcome = self.outcome(end);
        outcome.first_byte_at = self.first_byte_at;
        outcome.client_disconnected = self.client_gone || end == End::ClientGone;
        // The exchange ended without usage but we know the response (a cut
        // stream, an `error` event): the upstream may still hold its usage.
        let usage_missing = outcome.summary.as_ref().is_none_or(|s| s.usage.is_none());
        // Background responses (`Queued`) are settled by `background` instead.
        // A drain cut at its bound records at once: recovering would
        // stretch the bound it was cut for.
        let recoverable = !matches!(
            outcome.status,
            RequestStatus::UpstreamError | RequestStatus::Queued
        ) && !matches!(end, End::DrainTimeout | End::ShutdownCut);
        if usage_missing && recoverable && self.can_spawn() {
            if let (Some(id), Some(upstream)) =
                (outcome.response_id.clone(), self.settings.recovery.clone())
            {
                let within = self.settings.idle.min(self.settings.drain_for);
                let cut = self.settings.cut.clone();
                self.settings.tasks.spawn(async move {
                    let recovered = tokio::select! {
                        summary = upstream.recover(&id, within) => summary,
                        () = cut.cancelled() => None,
                    };
                    let outcome = match recovered {
                        Some(summary) => outcome.recovered(summary),
                        None => outcome,
                    };
                    meter.finish(outcome);
                });
                return;
            }
        }
        meter.finish(outcome);
    }

    fn outcome(&mut self, end: End) -> Outcome {
        let interrupted = |code: &str| {
            let mut outcome = Outcome::new(RequestStatus::Interrupted);
            outcome.error_code = Some(code.to_owned());
            outcome
        };
        let cut_code = match end {
            End::Complete => "stream_ended_without_terminal_event",
            End::UpstreamError => "upstream_stream_error",
            End::Timeout => "upstream_timeout",
            End::ClientGone => "client_disconnected",
            End::DrainTimeout => "drain_timeout",
            End::ShutdownCut => "shutdown_drain_cut",
        };
        let status = self.http_status;
        match &mut self.observer {
            _ if !(200..300).contains(&status) => {
                let mut outcome = Outcome::new(RequestStatus::UpstreamError);
                outcome.http_status = Some(status);
                outcome.error_code = match &self.observer {
                    Observer::Json(c) => error_code_from_body(c.bytes()),
                    Observer::Sse(_) => None,
                };
                outcome
            }
            Observer::Json(collector) => {
                match (end, collector.summary()) {
                    (End::Complete, Some(summary)) => Outcome::from_summary(summary, status),
                    (End::Complete, None) => {
                        let mut outcome = interrupted("unreadable_response_body");
                        outcome.http_status = Some(status);
                        outcome
                    }
                    // A cut JSON body cannot be trusted even if it parsed.
                    (_, _) => interrupted(cut_code),
                }
            }
            Observer::Sse(scanner) => {
                scanner.finish();
                let response_id = scanner.response_id().map(str::to_owned);
                match scanner.terminal() {
                    Some(terminal) => {
                        let mut outcome = Outcome::from_summary(terminal.summary.clone(), status);
                        match terminal.kind {
                            TerminalKind::Completed => outcome.status = RequestStatus::Completed,
                            TerminalKind::Incomplete => outcome.status = RequestStatus::Incomplete,
                            TerminalKind::Failed | TerminalKind::Error => {
                                outcome.status = RequestStatus::Failed;
                            }
                        }
                        outcome.response_id = outcome.response_id.or(response_id);
                        outcome
                    }
                    None => {
                        let mut outcome = interrupted(cut_code);
                        outcome.http_status = Some(status);
                        outcome.response_id = response_id;
                        outcome
                    }
                }
            }
        }
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.first_byte_at.get_or_insert_with(Utc::now);
                    this.observer.feed(data);
                    // Keep-alive comments prove the connection, not progress:
                    // an upstream sending only those still times out.
                    let keep_alive =
                        matches!(this.observer, Observer::Sse(_)) && comments_only(data);
                    if !keep_alive {
                        this.due = Instant::now() + this.settings.idle;
                    }
                }
                if this.inner.as_ref().is_some_and(Body::is_end_stream) {
                    this.finish(End::Complete);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                this.finish(End::UpstreamError);
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(None) => {
                this.finish(End::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.silence_ran_out(cx) {
                    this.finish(End::Timeout);
                    return Poll::Ready(Some(Err(Box::new(IdleTimeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        if self.meter.is_none() {
            return;
        }
        // An error answer carries no usage: nothing to drain for.
        let drain = self.settings.policy == DisconnectPolicy::Drain
            && (200..300).contains(&self.http_status)
            && self.can_spawn();
        if !drain {
            self.finish(End::ClientGone);
            return;
        }
        // The client left mid-body: read the rest of the upstream (bounded by
        // the idle timeout) so the terminal usage still reaches the ledger.
        let mut rest = MeteredBody {
            inner: self.inner.take(),
            observer: std::mem::replace(&mut self.observer, Observer::json()),
            meter: self.meter.take(),
            http_status: self.http_status,
            first_byte_at: self.first_byte_at,
            // The drain's overall bound (below) is its deadline; the idle
            // timer starts past it so the two do not race to end it.
            due: Instant::now() + self.settings.drain_for + self.settings.idle,
            timer: None,
            settings: TapSettings {
                policy: DisconnectPolicy::Abort,
                ..self.settings.clone()
            },
            client_gone: true,
        };
        let bound = self.settings.drain_for;
        let cut = self.settings.cut.clone();
        self.settings.tasks.spawn(async move {
            let cut_by = tokio::select! {
                () = async {
                    while let Some(frame) = rest.frame().await {
                        if frame.is_err() {
                            break;
                        }
                    }
                } => None,
                () = tokio::time::sleep(bound) => Some(End::DrainTimeout),
                () = cut.cancelled() => Some(End::ShutdownCut),
            };
            if let Some(end) = cut_by {
                rest.finish(end);
            }
        });
    }
}

/// True when every complete line of `chunk` is an SSE comment (`:` …) or
/// blank. A chunk that starts mid-line counts as progress unless it is
/// comment-shaped too; misjudging one chunk only delays the idle reset.
fn comments_only(chunk: &[u8]) -> bool {
    chunk
        .split(|b| *b == b'\n' || *b == b'\r')
        .all(|line| line.is_empty() || line.first() == Some(&b':'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::auth::Principal;
    use crate::ledger::{CapturedRows, LedgerHandle, LedgerRow};
    use crate::metering::RequestContext;
    use proptest::prelude::*;

    fn recorded_stream(line_end: &str) -> Vec<u8> {
        let events = [
            ("response.created", r#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","object":"response","status":"in_progress","model":"gpt-5.5-2025-08-07","usage":null}}"#.to_owned()),
            ("response.output_text.delta", r#"{"type":"response.output_text.delta","sequence_number":1,"delta":"caf\u00e9 ☕ response.completed","logprobs":[]}"#.to_owned()),
            ("response.output_text.delta", r#"{"type":"response.output_text.delta","sequence_number":2,"delta":" more","logprobs":[]}"#.to_owned()),
            ("response.completed", r#"{"type":"response.completed","sequence_number":3,"response":{"id":"resp_1","object":"response","status":"completed","model":"gpt-5.5-2025-08-07","service_tier":"default","output":[],"usage":{"input_tokens":1200,"input_tokens_details":{"cached_tokens":200},"output_tokens":900,"output_tokens_details":{"reasoning_tokens":600},"total_tokens":2100}}}"#.to_owned()),
        ];
        let mut out = String::new();
        for (event, data) in events {
            out.push_str(&format!(
                "event: {event}{line_end}data: {data}{line_end}{line_end}"
            ));
        }
        out.into_bytes()
    }

    /// Runs `chunks` through a MeteredBody; returns what the client got and the row.
    fn run(chunks: Vec<Vec<u8>>) -> (Vec<u8>, LedgerRow) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (ledger, mut rows): (LedgerHandle, CapturedRows) = LedgerHandle::capture();
            let principal = Principal {
                tenant: "t".into(),
                key_id: "k".into(),
            };
            let meter = Meter::new(RequestContext::new(principal, "responses.create"), ledger);
            let stream = futures_util::stream::iter(
                chunks
                    .into_iter()
                    .map(|c| Ok::<_, BoxError>(Frame::data(Bytes::from(c)))),
            );
            let body = MeteredBody::new(
                http_body_util::StreamBody::new(stream).boxed(),
                Observer::sse(),
                meter,
                200,
                TapSettings {
                    idle: Duration::from_secs(5),
                    policy: DisconnectPolicy::Drain,
                    tasks: TaskTracker::new(),
                    recovery: None,
                    drain_for: Duration::from_secs(5),
                    cut: CancellationToken::new(),
                },
            );
            let forwarded = body.collect().await.unwrap().to_bytes().to_vec();
            let mut recorded = rows.drain();
            assert_eq!(recorded.len(), 1, "exactly one row");
            (forwarded, recorded.remove(0))
        })
    }

    fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.sort_unstable();
        points.dedup();
        let mut chunks = Vec::new();
        let mut start = 0;
        for point in points.into_iter().chain([bytes.len()]) {
            chunks.push(bytes[start..point].to_vec());
            start = point;
        }
        chunks
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_split_forwards_the_same_bytes_and_captures_the_same_usage(
            cuts in proptest::collection::vec(any::<usize>(), 0..40),
            line_end in prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
        ) {
            let stream = recorded_stream(line_end);
            let (whole_bytes, whole_row) = run(vec![stream.clone()]);
            let (split_bytes, split_row) = run(split(&stream, &cuts));
            prop_assert_eq!(&whole_bytes, &stream);
            prop_assert_eq!(&split_bytes, &stream);
            prop_assert_eq!(whole_row.status.as_str(), "completed");
            prop_assert_eq!((split_row.input_tokens, split_row.cached_tokens, split_row.output_tokens, split_row.reasoning_tokens),
                            (1200, 200, 900, 600));
            prop_assert_eq!(&split_row.response_id, &whole_row.response_id);
            prop_assert_eq!(&split_row.status, &whole_row.status);
            prop_assert_eq!(split_row.total_tokens, whole_row.total_tokens);
        }
    }

    #[test]
    fn a_stream_without_terminal_event_is_interrupted_with_its_id() {
        let stream = recorded_stream("\n");
        let cut = stream.len() - 200;
        let (bytes, row) = run(vec![stream[..cut].to_vec()]);
        assert_eq!(bytes, &stream[..cut]);
        assert_eq!(row.status, "interrupted");
        assert_eq!(row.usage_source, "missing");
        assert_eq!(row.response_id.as_deref(), Some("resp_1"));
        assert_eq!(
            row.error_code.as_deref(),
            Some("stream_ended_without_terminal_event")
        );
    }

    #[test]
    fn only_comment_chunks_count_as_keep_alive() {
        assert!(comments_only(b": keep-alive\n\n"));
        assert!(comments_only(b"\r\n:x\r\n"));
        assert!(!comments_only(
            b": ping\n\nevent: response.output_text.delta\n"
        ));
        assert!(!comments_only(b"data: {}\n\n"));
    }
}
