//! One client connection: HTTP/1.1 served by hyper (upgrades kept, so a
//! WebSocket can take the socket over), with the bounds of `[server]`:
//!
//! * a watchdog closes the connection when, with no request under way, a
//!   request head has been arriving for longer than the header timeout (a
//!   half-sent header), or nothing at all has arrived for longer than the
//!   idle timeout (a parked keep-alive). hyper's own header timer is off: it
//!   starts while the connection is idle too, so it cannot tell the two apart.
//!   While the open connections are at 90 % of the cap or more, a head gets
//!   [`PRESSED_HEAD_TIME`] at most;
//! * a connection the cap sheds ([`super::registry`]) is closed at once (or,
//!   should a request have begun meanwhile, after it);
//! * an upgraded WebSocket is watched on while its own task serves it: with
//!   no response under way for `websocket_idle_timeout_secs`, or past
//!   `websocket_max_lifetime_secs` once its response ends, the bridge is
//!   asked to close it;
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

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
use tokio_util::sync::{CancellationToken, DropGuard};
use tower::ServiceExt;

use super::registry::{Registered, Registry};
use crate::config::ServerConfig;
use crate::connection::{self, Activity, State};
use crate::error::{ApiError, ErrorSource};

/// The timeouts of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header: Duration,
    pub body: Duration,
    pub idle: Duration,
    pub websocket_idle: Duration,
    pub websocket_lifetime: Duration,
}

impl Limits {
    pub fn new(config: &ServerConfig) -> Self {
        Self {
            header: Duration::from_secs(config.header_read_timeout_secs),
            body: Duration::from_secs(config.body_read_timeout_secs),
            idle: Duration::from_secs(config.idle_timeout_secs),
            websocket_idle: Duration::from_secs(config.websocket_idle_timeout_secs),
            websocket_lifetime: Duration::from_secs(config.websocket_max_lifetime_secs),
        }
    }
}

/// How long a request head may take (from the connection's first byte, or
/// from its accept if it sends nothing) while open connections are at 90 %
/// of the cap or more.
pub const PRESSED_HEAD_TIME: Duration = Duration::from_secs(1);

/// Resolves when the connection has outstayed the timeout of its state (an
/// upgraded WebSocket also its lifetime, once no response is under way).
async fn watchdog(activity: &Activity, limits: Limits, registry: &Registry) {
    loop {
        let (state, since) = activity.state();
        let limit = match state {
            State::Active => None,
            State::HeadPending if registry.pressed() => {
                Some(head_limit(activity, limits).min(PRESSED_HEAD_TIME))
            }
            State::HeadPending => Some(head_limit(activity, limits)),
            State::Idle => Some(limits.idle),
            State::WebSocketIdle => Some(limits.websocket_idle),
        };
        let mut deadline = limit.map(|limit| since + limit);
        if state != State::Active && activity.is_websocket() {
            let end = activity.opened() + limits.websocket_lifetime;
            deadline = Some(deadline.map_or(end, |d| d.min(end)));
        }
        let now = connection::now();
        let mut wait = match deadline {
            Some(deadline) if deadline <= now => return,
            Some(deadline) => deadline - now,
            // A request is under way; look again when the shorter of the
            // timeouts could first run out after it ends.
            None => limits.header.min(limits.idle).min(limits.websocket_idle),
        };
        if state == State::HeadPending {
            // Notice soon when the connections come near the cap.
            wait = wait.min(PRESSED_HEAD_TIME);
        }
        tokio::time::sleep(wait).await;
    }
}

/// A head under way gets the header timeout; a connection that sent nothing
/// yet, the idle timeout.
fn head_limit(activity: &Activity, limits: Limits) -> Duration {
    if activity.head_arriving() {
        limits.header
    } else {
        limits.idle
    }
}

/// The socket, noting every read for the watchdog, and holding the
/// connection's place under the cap for as long as the socket lives (an
/// upgraded WebSocket included).
struct Watched {
    io: TcpStream,
    activity: Arc<Activity>,
    _place: Place,
    /// Tells the connection's task that the socket is gone (an upgraded
    /// WebSocket's ends in another task).
    _gone: DropGuard,
}

/// A connection's place: its permit under the cap and its entry in the
/// registry, held for as long as the socket lives.
pub struct Place {
    pub _permit: OwnedSemaphorePermit,
    pub _registered: Registered,
    pub activity: Arc<Activity>,
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

/// Serves `tcp` until the client closes it, a timeout closes it, the cap
/// sheds it, or `stop` asks for a graceful end (the request under way
/// finishes, then it closes). An upgraded WebSocket is watched on until it
/// ends. Dropping this future drops the connection and its requests.
pub async fn serve(
    tcp: TcpStream,
    place: Place,
    registry: Arc<Registry>,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
) {
    let activity = place.activity.clone();
    let gone = CancellationToken::new();
    let io = TokioIo::new(Watched {
        io: tcp,
        activity: activity.clone(),
        _place: place,
        _gone: gone.clone().drop_guard(),
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
    let graceful = tokio::select! {
        result = conn.as_mut() => {
            log_end(result);
            false
        }
        () = watchdog(&activity, limits, &registry) => {
            tracing::debug!("closing a connection past its header or idle timeout");
            return;
        }
        // Shed at the cap: only a connection with no request under way is
        // asked, but one may have begun since.
        () = activity.closed() => activity.state().0 == State::Active,
        () = stop.cancelled() => true,
    };
    if graceful {
        conn.as_mut().graceful_shutdown();
        tokio::select! {
            result = conn.as_mut() => log_end(result),
            () = watchdog(&activity, limits, &registry) => {}
        }
    }
    if activity.is_websocket() {
        watch_websocket(&activity, limits, &registry, &stop, &gone).await;
    }
}

/// Bounds an upgraded WebSocket (served by its own task): closed once idle
/// too long or past its lifetime, or at shutdown once no response is under
/// way. Returns when the socket is gone.
async fn watch_websocket(
    activity: &Activity,
    limits: Limits,
    registry: &Registry,
    stop: &CancellationToken,
    gone: &CancellationToken,
) {
    let bounded = async {
        tokio::select! {
            () = watchdog(activity, limits, registry) => {}
            () = stop.cancelled() => {
                while activity.state().0 == State::Active {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        activity.close();
        // The bridge answers with a close frame; a peer that never reads it
        // is cut when the bridge gives up on it.
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = gone.cancelled() => {}
        () = bounded => {}
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
    let mut request = request;
    if request.headers().contains_key(header::UPGRADE) {
        // A WebSocket bridge reports its responses and idles here.
        request.extensions_mut().insert(activity.clone());
    }
    let request = request.map(|body| {
        Body::new(TimedBody {
            inner: body,
            due: tokio::time::Instant::now() + body_timeout,
            deadline: None,
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
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        activity.upgraded();
    }
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

/// A request body that fails once its deadline passes before its end. The
/// timer is set only when the body is not there yet: one that arrived with
/// its head (the common case) costs no timer.
struct TimedBody {
    inner: Incoming,
    due: tokio::time::Instant,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
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
        let due = this.due;
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if deadline.as_mut().poll(cx).is_ready() {
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
