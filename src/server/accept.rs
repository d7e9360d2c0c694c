//! The accept loop: takes connections off the listener until shutdown, one
//! task each, under a cap on open connections.
//!
//! At the cap, room is made first ([`Registry::shed_one`]): the oldest
//! connection that has not finished a request head is closed, else the oldest
//! idle keep-alive, else the oldest idle WebSocket, and the newcomer waits
//! (up to [`SHED_WAIT`]) for the place it frees. Only when every connection
//! has a request under way is a newcomer refused.
//!
//! Refused, a connection is still accepted, answered with a short 503
//! (`retry-after: 1`) and closed ([`conn::refuse`]), rather than left in the
//! kernel's backlog: a client learns at once that it should come back, and
//! the descriptors it holds are ours for at most a second. Refusals under
//! way are capped too; past that a connection is closed at once. The cap is
//! lowered at start to fit the open-files limit (which is first raised to its
//! hard limit), so a flood of idle sockets runs into the cap, never into
//! `EMFILE` with every other request failing.
//!
//! Never does: read requests (that is [`conn`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::conn::{self, Limits, Place};
use super::registry::Registry;
use crate::connection::Activity;
use crate::state::AppState;

/// Refusals being written at once, at most.
const REFUSALS_IN_FLIGHT: usize = 256;

/// Newcomers waiting for the place of a connection shed for them, at most.
const WAITING_FOR_SHED: usize = 1_024;

/// How long a newcomer waits for the place of the connection shed for it
/// before it is refused.
const SHED_WAIT: Duration = Duration::from_secs(1);

/// Descriptors kept out of the connection cap: database pools, the spool,
/// the upstream connections of the requests under way, logs.
const RESERVED_DESCRIPTORS: u64 = 512;

pub struct Edge {
    router: Router,
    limits: Limits,
    stop: CancellationToken,
    open: Arc<Semaphore>,
    registry: Arc<Registry>,
    refusing: Arc<Semaphore>,
    waiting: Arc<Semaphore>,
}

impl Edge {
    pub fn new(state: &AppState, router: Router, stop: CancellationToken) -> Self {
        let cap = connection_cap(state.config.server.max_connections);
        Self {
            router,
            limits: Limits::new(&state.config.server),
            stop,
            open: Arc::new(Semaphore::new(cap)),
            registry: Registry::new(cap),
            refusing: Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT)),
            waiting: Arc::new(Semaphore::new(WAITING_FOR_SHED)),
        }
    }

    /// Accepts until `stop` is cancelled; each connection (or refusal) is a
    /// task of `connections`. Returns with the listener closed.
    pub async fn accept_until_stopped(&self, listener: TcpListener, connections: &mut JoinSet<()>) {
        loop {
            let accepted = tokio::select! {
                () = self.stop.cancelled() => return,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((tcp, _peer)) => self.admit(tcp, connections),
                Err(err) => accept_failed(err).await,
            }
        }
    }

    fn admit(&self, tcp: tokio::net::TcpStream, connections: &mut JoinSet<()>) {
        // Nagle would hold back small SSE frames.
        let _ = tcp.set_nodelay(true);
        if let Ok(permit) = self.open.clone().try_acquire_owned() {
            connections.spawn(self.server().serve(tcp, permit));
            return;
        }
        if let Some(waiting) = self.make_room() {
            let open = self.open.clone();
            let serve = self.server();
            connections.spawn(async move {
                match tokio::time::timeout(SHED_WAIT, open.acquire_owned()).await {
                    Ok(Ok(permit)) => {
                        drop(waiting);
                        serve.serve(tcp, permit).await;
                    }
                    _ => {
                        metrics::counter!("tollgate_connections_refused_total").increment(1);
                        conn::refuse(tcp).await;
                    }
                }
            });
            return;
        }
        metrics::counter!("tollgate_connections_refused_total").increment(1);
        match self.refusing.clone().try_acquire_owned() {
            Ok(permit) => {
                connections.spawn(async move {
                    conn::refuse(tcp).await;
                    drop(permit);
                });
            }
            Err(_) => drop(tcp),
        }
    }

    /// Sheds one connection for a newcomer; its place in the queue for the
    /// freed permit, or `None` when nothing can be shed (or too many wait).
    fn make_room(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let waiting = self.waiting.clone().try_acquire_owned().ok()?;
        let shed = self.registry.shed_one()?;
        metrics::counter!("tollgate_connections_shed_total", "reason" => shed.label()).increment(1);
        Some(waiting)
    }

    fn server(&self) -> Server {
        Server {
            registry: self.registry.clone(),
            router: self.router.clone(),
            limits: self.limits,
            stop: self.stop.clone(),
        }
    }
}

/// What serving one connection needs.
struct Server {
    registry: Arc<Registry>,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
}

impl Server {
    /// Registers the connection (it takes its place) and serves it.
    async fn serve(self, tcp: tokio::net::TcpStream, permit: tokio::sync::OwnedSemaphorePermit) {
        let activity = Arc::new(Activity::default());
        let place = Place {
            _permit: permit,
            _registered: self.registry.register(activity.clone()),
            activity,
        };
        conn::serve(
            tcp,
            place,
            self.registry,
            self.router,
            self.limits,
            self.stop,
        )
        .await;
    }
}

/// Out of descriptors (or another transient failure): back off briefly
/// instead of spinning; connections that close free descriptors.
async fn accept_failed(err: std::io::Error) {
    tracing::warn!(error = %err, "accept failed; backing off");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// `max_connections`, lowered to what the open-files limit leaves after the
/// reserve. Raises the soft limit to the hard limit first.
fn connection_cap(max_connections: usize) -> usize {
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => soft,
        Err(err) => {
            tracing::warn!(error = %err, "cannot raise the open-files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1_024, |(soft, _)| soft)
        }
    };
    let fits =
        usize::try_from(soft.saturating_sub(RESERVED_DESCRIPTORS).max(16)).unwrap_or(usize::MAX);
    if fits < max_connections {
        tracing::warn!(
            max_connections,
            open_files_limit = soft,
            cap = fits,
            "max_connections lowered to fit the open-files limit"
        );
    }
    max_connections.min(fits)
}
