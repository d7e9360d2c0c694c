//! What one client connection is doing, as the edge sees it: the record the
//! connection's watchdog (timeouts), the accept loop (shedding at the cap)
//! and the handlers that outlive a request (the WebSocket bridge) share.
//! Written with atomics on each read and each request (O(1), no lock); read
//! by the watchdog and, only at the connection cap, by the shedding scan.
//!
//! Never does: close a socket itself. It only asks, through
//! [`Activity::close`], and whoever serves the connection ends it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// What a connection is doing, in the order connections are shed at the cap
/// (first [`State::HeadPending`], oldest first; never [`State::Active`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    /// No request head finished on it yet (a fresh connection, silent or
    /// half-sent), or the next request's head is still arriving.
    HeadPending,
    /// A keep-alive connection between requests.
    Idle,
    /// An upgraded WebSocket with no response under way.
    WebSocketIdle,
    /// A request (or a WebSocket response) under way.
    Active,
}

impl State {
    /// The `reason` label of `tollgate_connections_shed_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::HeadPending => "head_pending",
            Self::Idle => "idle_keep_alive",
            Self::WebSocketIdle => "websocket_idle",
            Self::Active => "active",
        }
    }
}

/// One process-wide clock origin, so that times of different connections
/// compare.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since [`epoch`].
pub fn now() -> Duration {
    epoch().elapsed()
}

/// The shared record of one connection.
#[derive(Debug)]
pub struct Activity {
    /// Requests whose response has not been written out yet.
    in_flight: AtomicUsize,
    /// Bytes arrived since the connection last became idle: a head is coming.
    reading_head: AtomicBool,
    /// A request head has been finished on it at least once.
    served: AtomicBool,
    /// Upgraded to a WebSocket.
    websocket: AtomicBool,
    /// When the current state began, in ms since [`epoch`].
    since_ms: AtomicU64,
    /// When the connection was accepted.
    opened: Duration,
    closing: CancellationToken,
}

impl Default for Activity {
    fn default() -> Self {
        let opened = now();
        Self {
            in_flight: AtomicUsize::new(0),
            reading_head: AtomicBool::new(false),
            served: AtomicBool::new(false),
            websocket: AtomicBool::new(false),
            since_ms: AtomicU64::new(millis(opened)),
            opened,
            closing: CancellationToken::new(),
        }
    }
}

fn millis(at: Duration) -> u64 {
    u64::try_from(at.as_millis()).unwrap_or(u64::MAX)
}

impl Activity {
    /// Bytes arrived from the client.
    pub fn on_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && !self.websocket.load(Ordering::Relaxed)
            && !self.reading_head.swap(true, Ordering::AcqRel)
        {
            self.since_ms.store(millis(now()), Ordering::Release);
        }
    }

    /// A request head is complete (or a WebSocket response starts): the
    /// connection is active until the guard drops.
    pub fn begin_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.reading_head.store(false, Ordering::Release);
        self.served.store(true, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// The connection now carries a WebSocket (its idle time restarts).
    pub fn upgraded(&self) {
        self.websocket.store(true, Ordering::Release);
        self.since_ms.store(millis(now()), Ordering::Release);
    }

    /// Bytes of a request head have arrived (it is not finished).
    pub fn head_arriving(&self) -> bool {
        self.reading_head.load(Ordering::Acquire)
    }

    pub fn is_websocket(&self) -> bool {
        self.websocket.load(Ordering::Acquire)
    }

    /// What the connection is doing, and since when (since [`epoch`]).
    pub fn state(&self) -> (State, Duration) {
        let since = Duration::from_millis(self.since_ms.load(Ordering::Acquire));
        let state = if self.in_flight.load(Ordering::Acquire) > 0 {
            State::Active
        } else if self.websocket.load(Ordering::Acquire) {
            State::WebSocketIdle
        } else if self.reading_head.load(Ordering::Acquire) || !self.served.load(Ordering::Relaxed)
        {
            State::HeadPending
        } else {
            State::Idle
        };
        (state, since)
    }

    /// When the connection was accepted (since [`epoch`]).
    pub fn opened(&self) -> Duration {
        self.opened
    }

    /// Asks whoever serves the connection to end it.
    pub fn close(&self) {
        self.closing.cancel();
    }

    pub fn is_closing(&self) -> bool {
        self.closing.is_cancelled()
    }

    /// Resolves once [`Self::close`] has been called.
    pub async fn closed(&self) {
        self.closing.cancelled().await;
    }
}

/// Held while a request is under way (until its response body is written
/// out or dropped).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity.since_ms.store(millis(now()), Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_the_connection() {
        let activity = Arc::new(Activity::default());
        assert_eq!(activity.state().0, State::HeadPending);
        activity.on_read();
        assert_eq!(activity.state().0, State::HeadPending);
        let request = activity.begin_request();
        assert_eq!(activity.state().0, State::Active);
        // Reads during a request (its body) do not start a head.
        activity.on_read();
        drop(request);
        assert_eq!(activity.state().0, State::Idle);
        activity.on_read();
        assert_eq!(activity.state().0, State::HeadPending);
        let upgrade = activity.begin_request();
        activity.upgraded();
        drop(upgrade);
        assert_eq!(activity.state().0, State::WebSocketIdle);
        activity.on_read();
        assert_eq!(activity.state().0, State::WebSocketIdle);
        let response = activity.begin_request();
        assert_eq!(activity.state().0, State::Active);
        drop(response);
        assert_eq!(activity.state().0, State::WebSocketIdle);
        assert!(State::HeadPending < State::Idle && State::Idle < State::WebSocketIdle);
    }
}
