//! One client connection: HTTP/1.1 served by hyper (upgrades kept, so a
//! WebSocket can take the socket over), with the bounds of `[server]`:
//!
//! * a watchdog closes the connection when, with no request under way, a
//!   request head has been arriving for longer than the header timeout (a
//!   half-sent header), or nothing at all has arrived for longer than the
//!   idle timeout (a parked keep-alive). hyper's own header timer is off: it
//!   starts while the connection is idle too, so it cannot tell the two apart;
//! * a request body still arriving `body_read_timeout_secs` after its
//!   headers is cut: the handler's read fails (its meter records it), and
//!   the client gets 408 with `connection: close`;
//! * [`refuse`] answers a connection over the cap with a short 503.
//!
//! Never does: route, authenticate or meter (the router below does).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::ServerConfig;
use crate::error::{ApiError, ErrorSource};

/// The timeouts of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header: Duration,
    pub body: Duration,
    pub idle: Duration,
}

impl Limits {
    pub fn new(config: &ServerConfig) -> Self {
        Self {
            header: Duration::from_secs(config.header_read_timeout_secs),
            body: Duration::from_secs(config.body_read_timeout_secs),
            idle: Duration::from_secs(config.idle_timeout_secs),
        }
    }
}

/// What the watchdog knows of a connection.
struct Activity {
    epoch: Instant,
    /// Requests whose response has not been written out yet.
    in_flight: AtomicUsize,
    /// Bytes arrived since the connection last became idle: a head is coming.
    reading_head: AtomicBool,
    /// When the current phase (idle, or reading a head) began, in ms since
    /// `epoch`.
    since_ms: AtomicU64,
}

enum Phase {
    Busy,
    Idle(Duration),
    ReadingHead(Duration),
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            reading_head: AtomicBool::new(false),
            since_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn on_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && !self.reading_head.swap(true, Ordering::AcqRel)
        {
            self.since_ms.store(self.now_ms(), Ordering::Release);
        }
    }

    fn begin_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.reading_head.store(false, Ordering::Release);
        InFlight(self.clone())
    }

    fn phase(&self) -> Phase {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Phase::Busy;
        }
        let since = Duration::from_millis(self.since_ms.load(Ordering::Acquire));
        if self.reading_head.load(Ordering::Acquire) {
            Phase::ReadingHead(since)
        } else {
            Phase::Idle(since)
        }
    }
}

/// Held by a request until its response body is written out (or dropped).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity
                .since_ms
                .store(activity.now_ms(), Ordering::Release);
        }
    }
}

/// Resolves when the connection has outstayed the timeout of its phase.
async fn watchdog(activity: &Activity, limits: Limits) {
    loop {
        let deadline = match activity.phase() {
            Phase::Busy => None,
            Phase::Idle(since) => Some(since + limits.idle),
            Phase::ReadingHead(since) => Some(since + limits.header),
        };
        let now = activity.epoch.elapsed();
        let wait = match deadline {
            Some(deadline) if deadline <= now => return,
            Some(deadline) => deadline - now,
            // A request is under way; look again when the shorter of the two
            // timeouts could first run out after it ends.
            None => limits.header.min(limits.idle),
        };
        tokio::time::sleep(wait).await;
    }
}

/// The socket, noting every read for the watchdog, and holding the
/// connection's place under the cap for as long as the socket lives (an
/// upgraded WebSocket included).
struct Watched {
    io: TcpStream,
    activity: Arc<Activity>,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Serves `tcp` until the client closes it, a timeout closes it, or `stop`
/// asks for a graceful end (the request under way finishes, then it closes).
/// Dropping this future drops the connection and its requests.
pub async fn serve(
    tcp: TcpStream,
    permit: OwnedSemaphorePermit,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        io: tcp,
        activity: activity.clone(),
        _permit: permit,
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: Request<Incoming>| {
            handle(router.clone(), activity.clone(), limits.body, request)
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => log_end(result),
        () = watchdog(&activity, limits) => tracing::debug!("closing a connection past its header or idle timeout"),
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                result = conn.as_mut() => log_end(result),
                () = watchdog(&activity, limits) => {}
            }
        }
    }
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(err) = result {
        tracing::debug!(error = %err, "client connection ended with an error");
    }
}

async fn handle(
    router: Router,
    activity: Arc<Activity>,
    body_timeout: Duration,
    request: Request<Incoming>,
) -> Result<Response, Infallible> {
    let in_flight = activity.begin_request();
    let timed_out = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        Body::new(TimedBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(body_timeout)),
            timed_out: timed_out.clone(),
        })
    });
    let response = match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let response = if timed_out.load(Ordering::Acquire) {
        body_timeout_response(body_timeout)
    } else {
        response
    };
    // The request counts as under way until its body is written out: a long
    // stream is not an idle connection.
    Ok(response.map(|body| {
        Body::new(body.map_frame(move |frame| {
            let _ = &in_flight;
            frame
        }))
    }))
}

fn body_timeout_response(limit: Duration) -> Response {
    let error = ApiError {
        status: StatusCode::REQUEST_TIMEOUT,
        kind: "invalid_request_error",
        code: Some("request_timeout".into()),
        param: None,
        message: format!(
            "The request body did not arrive within {} seconds of its headers.",
            limit.as_secs()
        ),
        source: ErrorSource::Client,
        retry_after: None,
    };
    let mut response = error.into_response();
    // The rest of the body is unread: the connection cannot carry another
    // request.
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A request body that fails once its deadline passes before its end.
struct TimedBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timed_out: Arc<AtomicBool>,
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.timed_out.store(true, Ordering::Release);
            return Poll::Ready(Some(Err("request body read timeout".into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Longest a refusal may take: it must not become a way to hold a socket.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// Answers a connection over the cap: one 503 envelope with `retry-after`,
/// then close. The request head is read first (an HTTP client treats an
/// answer before its request as a broken connection), and what follows is
/// read and discarded for a moment so that closing does not reset the
/// connection before the client reads the answer. A peer that sends nothing
/// is closed without an answer once [`REFUSAL_TIME`] is up.
pub async fn refuse(mut tcp: TcpStream) {
    let body =
        ApiError::service_unavailable("The gateway is at its connection limit; retry shortly.")
            .to_json();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let exchange = async {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while memchr::memmem::find(&seen, b"\r\n\r\n").is_none() && seen.len() < 16 * 1024 {
            match tcp.read(&mut buf).await? {
                0 => break,
                n => seen.extend_from_slice(&buf[..n]),
            }
        }
        tcp.write_all(head.as_bytes()).await?;
        tcp.write_all(&body).await?;
        tcp.shutdown().await?;
        let mut read = 0usize;
        while read < 64 * 1024 {
            match tcp.read(&mut buf).await? {
                0 => break,
                n => read += n,
            }
        }
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(REFUSAL_TIME, exchange).await;
}
