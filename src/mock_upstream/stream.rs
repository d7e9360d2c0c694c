//! The SSE body: a hand-written `Stream` that renders one event per poll.
//!
//! Events are rendered lazily from the shared [`Plan`] (nothing is buffered
//! up front, so a million-delta stream costs one event of memory), and the
//! common case — no delay, no chunking — returns `Ready` without touching the
//! timer or any async state machine. Transport scripting (`mock_delay_ms`,
//! `mock_chunk_bytes`, `mock_cut_after`, `mock_garbage`, framing) is applied
//! here; replays (`starting_after`) use the same type with a clean script.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::time::Sleep;

use super::render::{render_event, Ev, Framing, Noise, Plan, Prefix};

/// Transport options of one stream.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Transport {
    pub(crate) framing: Framing,
    pub(crate) delay: Option<Duration>,
    pub(crate) chunk_bytes: Option<usize>,
    pub(crate) cut_after: Option<usize>,
    pub(crate) garbage: bool,
    pub(crate) error_event: bool,
    /// Replay: after `response.created`, skip to sequence numbers > N.
    pub(crate) starting_after: Option<usize>,
}

pub(crate) struct EventStream {
    plan: Arc<Plan>,
    prefix: Prefix,
    end: Ev,
    total: usize,
    next: usize,
    emitted: usize,
    /// Index of the event that carries the non-JSON `data:` line, if any.
    garbage_at: Option<usize>,
    t: Transport,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Pieces of already-rendered bytes waiting to go out (chunking).
    queue: VecDeque<Bytes>,
    /// Tail shorter than `chunk_bytes`, joined with the next event.
    carry: Vec<u8>,
    /// Set once the pre-abort grace pause has been scheduled.
    abort_armed: bool,
    finished: bool,
}

/// Pause before aborting a cut body. hyper discards bytes still in its write
/// buffer when a body errors, so the stream first goes idle long enough for
/// hyper to flush what was already produced; otherwise the client would lose
/// events sent before the cut.
const ABORT_GRACE: Duration = Duration::from_millis(10);

fn cut_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "mock_cut_after: connection cut by the mock upstream",
    )
}

impl EventStream {
    pub(crate) fn new(plan: Arc<Plan>, t: Transport) -> Self {
        let prefix = Prefix::new(&plan);
        let total = prefix.total(&plan);
        // The garbage line goes into the first text delta (or the content
        // part announcement when there are none): a non-lifecycle event.
        let first_delta = total - plan.deltas - 4;
        let garbage_at = t.garbage.then(|| {
            if plan.deltas > 0 {
                first_delta
            } else {
                first_delta - 1
            }
        });
        EventStream {
            plan,
            prefix,
            end: if t.error_event {
                Ev::Error
            } else {
                Ev::Terminal
            },
            total,
            next: 0,
            emitted: 0,
            garbage_at,
            t,
            sleep: None,
            queue: VecDeque::new(),
            carry: Vec::new(),
            abort_armed: false,
            finished: false,
        }
    }

    fn flush_carry(&mut self) {
        if !self.carry.is_empty() {
            self.queue
                .push_back(Bytes::from(std::mem::take(&mut self.carry)));
        }
    }

    /// Splits `event` (preceded by the carried tail) into `n`-byte pieces.
    fn enqueue_chunked(&mut self, event: Vec<u8>, n: usize) {
        let joined = if self.carry.is_empty() {
            event
        } else {
            let mut c = std::mem::take(&mut self.carry);
            c.extend_from_slice(&event);
            c
        };
        let b = Bytes::from(joined);
        let mut off = 0;
        while b.len() - off >= n {
            self.queue.push_back(b.slice(off..off + n));
            off += n;
        }
        if off < b.len() {
            // With a delay the event must be complete before the pause, so
            // the tail goes out now; otherwise it rides with the next event.
            if self.t.delay.is_some() {
                self.queue.push_back(b.slice(off..));
            } else {
                self.carry.extend_from_slice(&b[off..]);
            }
        }
    }
}

impl Stream for EventStream {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(b) = this.queue.pop_front() {
                return Poll::Ready(Some(Ok(b)));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            if let Some(sleep) = this.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.sleep = None;
            }
            if this.t.cut_after == Some(this.emitted) {
                if !this.carry.is_empty() {
                    this.flush_carry();
                    continue;
                }
                if !this.abort_armed {
                    this.abort_armed = true;
                    this.sleep = Some(Box::pin(tokio::time::sleep(ABORT_GRACE)));
                    continue;
                }
                this.finished = true;
                // An error makes hyper drop the connection without the final
                // zero-length chunk, so the client sees a truncated body.
                return Poll::Ready(Some(Err(cut_error())));
            }
            if this.next >= this.total {
                this.flush_carry();
                this.finished = true;
                continue;
            }
            let idx = this.next;
            let ev = this.prefix.event_at(&this.plan, idx, this.end);
            let noise = Noise {
                garbage_data: this.garbage_at == Some(idx),
                comment: this.t.garbage && (ev == Ev::Terminal || ev == Ev::Error),
            };
            let bytes = render_event(&this.plan, ev, idx, this.t.framing, noise);
            this.emitted += 1;
            this.next += 1;
            if let Some(after) = this.t.starting_after {
                if this.next <= after {
                    this.next = after + 1;
                }
            }
            if let Some(d) = this.t.delay {
                if this.next < this.total {
                    this.sleep = Some(Box::pin(tokio::time::sleep(d)));
                }
            }
            match this.t.chunk_bytes {
                None => return Poll::Ready(Some(Ok(Bytes::from(bytes)))),
                Some(n) => this.enqueue_chunked(bytes, n),
            }
        }
    }
}

/// A body that sends `first`, pauses, then fails: a JSON response cut in
/// the middle (`mock_cut_after` on a non-stream request).
pub(crate) struct TruncatedBody {
    first: Option<Bytes>,
    sleep: Option<Pin<Box<Sleep>>>,
    finished: bool,
}

impl TruncatedBody {
    pub(crate) fn new(first: Bytes) -> Self {
        TruncatedBody {
            first: Some(first),
            sleep: None,
            finished: false,
        }
    }
}

impl Stream for TruncatedBody {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        if let Some(first) = this.first.take() {
            this.sleep = Some(Box::pin(tokio::time::sleep(ABORT_GRACE)));
            return Poll::Ready(Some(Ok(first)));
        }
        if let Some(sleep) = this.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        this.finished = true;
        Poll::Ready(Some(Err(cut_error())))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::super::render::{Status, Usage};
    use super::*;
    use futures_util::StreamExt;

    fn plan(deltas: usize) -> Arc<Plan> {
        Arc::new(Plan {
            key: 7,
            id: "resp_07".into(),
            hex: "07".into(),
            created_at: 1,
            model_field: b"\"model\":\"m\"".to_vec(),
            head: b",\"metadata\":{}".to_vec(),
            requested_tier: b"\"auto\"".to_vec(),
            final_tier: b"\"default\"".to_vec(),
            reasoning: Some(true),
            deltas,
            delta_bytes: 8,
            status: Status::Completed,
            usage: Some(Usage {
                input: 1,
                cached: 0,
                output: 2,
                reasoning: 0,
            }),
            background: false,
            input: serde_json::Value::Null,
        })
    }

    async fn collect(s: EventStream) -> (Vec<Bytes>, bool) {
        let items: Vec<_> = s.collect().await;
        let errored = items.iter().any(|r| r.is_err());
        (items.into_iter().filter_map(Result::ok).collect(), errored)
    }

    #[tokio::test]
    async fn chunking_preserves_bytes_and_bounds_pieces() {
        let (whole, _) = collect(EventStream::new(plan(20), Transport::default())).await;
        let t = Transport {
            chunk_bytes: Some(5),
            ..Transport::default()
        };
        let (pieces, err) = collect(EventStream::new(plan(20), t)).await;
        assert!(!err);
        assert!(pieces.iter().all(|p| p.len() <= 5 && !p.is_empty()));
        assert_eq!(pieces.concat(), whole.concat());
    }

    #[tokio::test]
    async fn cut_after_ends_with_error() {
        let t = Transport {
            cut_after: Some(4),
            ..Transport::default()
        };
        let (events, err) = collect(EventStream::new(plan(3), t)).await;
        assert!(err);
        assert_eq!(events.len(), 4);
    }

    #[tokio::test]
    async fn replay_keeps_created_then_skips() {
        let t = Transport {
            starting_after: Some(10),
            ..Transport::default()
        };
        let (events, _) = collect(EventStream::new(plan(3), t)).await;
        let full = Prefix::new(&plan(3)).total(&plan(3));
        assert_eq!(events.len(), 1 + (full - 11));
        assert!(events[0].starts_with(b"event: response.created\n"));
        assert!(std::str::from_utf8(&events[1])
            .unwrap()
            .contains("\"sequence_number\":11,"));
    }
}
