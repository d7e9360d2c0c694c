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
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::{Instant, Sleep};
use tokio_util::task::TaskTracker;

use crate::config::DisconnectPolicy;
use crate::ledger::RequestStatus;
use crate::metering::{Meter, Outcome};
use crate::sse::{SseScanner, TerminalKind};
use crate::usage::{error_code_from_body, JsonBodyCollector};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A non-streaming body larger than this is forwarded but not read for usage.
const JSON_COLLECT_LIMIT: usize = 64 * 1024 * 1024;

pub enum Observer {
    Json(JsonBodyCollector),
    Sse(Box<SseScanner>),
}

impl Observer {
    pub fn json() -> Self {
        Self::Json(JsonBodyCollector::new(JSON_COLLECT_LIMIT))
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
}

#[derive(Debug)]
struct IdleTimeout;

impl std::fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the upstream went silent for longer than the request timeout")
    }
}

impl std::error::Error for IdleTimeout {}

pub struct MeteredBody {
    inner: Option<reqwest::Body>,
    observer: Observer,
    meter: Option<Meter>,
    http_status: u16,
    first_byte_at: Option<DateTime<Utc>>,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    policy: DisconnectPolicy,
    tasks: TaskTracker,
    client_gone: bool,
}

impl MeteredBody {
    pub fn new(
        inner: reqwest::Body,
        observer: Observer,
        meter: Meter,
        http_status: u16,
        idle: Duration,
        policy: DisconnectPolicy,
        tasks: TaskTracker,
    ) -> Self {
        Self {
            inner: Some(inner),
            observer,
            meter: Some(meter),
            http_status,
            first_byte_at: None,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            policy,
            tasks,
            client_gone: false,
        }
    }

    fn finish(&mut self, end: End) {
        let Some(meter) = self.meter.take() else {
            return;
        };
        self.inner = None;
        let mut outcome = self.outcome(end);
        outcome.first_byte_at = self.first_byte_at;
        outcome.client_disconnected = self.client_gone || end == End::ClientGone;
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
                    this.timer.as_mut().reset(Instant::now() + this.idle);
                }
                if this.inner.as_ref().is_some_and(Body::is_end_stream) {
                    this.finish(End::Complete);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                this.finish(End::UpstreamError);
                Poll::Ready(Some(Err(Box::new(err))))
            }
            Poll::Ready(None) => {
                this.finish(End::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.finish(End::Timeout);
                    Poll::Ready(Some(Err(Box::new(IdleTimeout))))
                }
                Poll::Pending => Poll::Pending,
            },
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
        let drain = self.policy == DisconnectPolicy::Drain
            && tokio::runtime::Handle::try_current().is_ok()
            && !self.tasks.is_closed();
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
            idle: self.idle,
            timer: Box::pin(tokio::time::sleep(self.idle)),
            policy: DisconnectPolicy::Abort,
            tasks: self.tasks.clone(),
            client_gone: true,
        };
        self.tasks.spawn(async move {
            while let Some(frame) = rest.frame().await {
                if frame.is_err() {
                    break;
                }
            }
        });
    }
}
