//! Starts and stops a gateway: builds the [`AppState`], starts its
//! background loops (ledger writer, price listener and reloader, background
//! response settlement, budget alert detection and delivery, the provider
//! fetch), binds the listening socket and runs the shutdown
//! sequence.
//!
//! Connections are accepted by our own loop ([`accept`]) and served one task
//! each ([`conn`]) so that every connection is bounded: header, body and
//! idle timeouts, and a cap on open connections that refuses politely.
//!
//! Shutdown, in order: stop accepting → wait for in-flight requests up to the
//! drain deadline → cut the rest (their meters record them) → wait for drain
//! tasks → stop background loops → let the ledger writer write everything
//! (to the spool if the database is gone) → exit.

mod accept;
mod conn;
mod registry;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::ledger::{spawn_watched_writer, spool::Spool};
use crate::notify::{self, Reloaded};
use crate::pricing::PriceBook;
use crate::proxy::route::Routes;
use crate::state::{AppState, TenantSlots};

/// What `build_state` starts besides the state itself.
pub struct Background {
    pub writer: JoinHandle<()>,
}

pub async fn build_state(
    config: Config,
    pool: PgPool,
) -> anyhow::Result<(Arc<AppState>, Background)> {
    config.require_upstream()?;
    let routes = Routes::new(&config)?;
    let prices = PriceBook::load(&pool).await?;
    let spool = Spool::open(&config.ledger.spool_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot open spool dir {}: {e}",
            config.ledger.spool_dir.display()
        )
    })?;
    let side = crate::state::side_pools(&pool, &config.database);
    // The writer's own connections: no report or export can take them.
    let alerts = Arc::<crate::limits::alerts::Alerts>::default();
    let (ledger, writer) =
        spawn_watched_writer(side.ledger, spool, config.ledger.batching(), alerts.clone());
    let state = Arc::new(AppState {
        auth: Authenticator::new(pool.clone()),
        reports_pool: side.reports,
        exports_pool: side.exports,
        exports: TenantSlots::new(config.database.exports_per_tenant as usize),
        prices,
        ledger,
        limits: Arc::new(crate::limits::Limits::new(config.limits.leases())),
        alerts,
        routes,
        tasks: TaskTracker::new(),
        shutdown: CancellationToken::new(),
        drain_cut: CancellationToken::new(),
        config: Arc::new(config),
        pool,
    });
    spawn_price_reloader(&state);
    state
        .limits
        .spawn(&state.tasks, &state.pool, &state.shutdown);
    crate::background::spawn(&state);
    crate::limits::alerts::spawn(
        &state.tasks,
        &state.pool,
        &state.alerts,
        &state.config.alerts,
        &state.shutdown,
    );
    crate::reconcile::spawn(&state);
    crate::ledger::upkeep::spawn(
        &state.tasks,
        crate::jobs::JobContext {
            pool: state.pool.clone(),
            stop: state.shutdown.clone(),
        },
        &state.config.ledger,
    );
    crate::export::spawn(&state);
    spawn_price_listener(&state);
    Ok((state, Background { writer }))
}

/// Reloads the price table when any replica announces a change (within
/// milliseconds of its commit), and after every listener (re)connect.
fn spawn_price_listener(state: &Arc<AppState>) {
    let weak = Arc::downgrade(state);
    let pool = state.pool.clone();
    let stop = state.shutdown.clone();
    state
        .tasks
        .spawn(notify::follow(
            pool,
            crate::pricing::NOTIFY_CHANNEL,
            stop,
            move |trigger| {
            let weak = weak.clone();
            async move {
                let Some(state) = weak.upgrade() else {
                    return Reloaded::Stop;
                };
                match state.prices.reload(&state.pool).await {
                    Ok(()) => Reloaded::Done,
                    Err(err) => {
                        tracing::warn!(error = %err, ?trigger, "price reload failed; resynchronising");
                        Reloaded::Failed
                    }
                }
            }
            },
        ));
}

/// Periodic full reload: the safety net behind the listener.
fn spawn_price_reloader(state: &Arc<AppState>) {
    let every = Duration::from_secs(state.config.prices.reload_interval_secs);
    let weak = Arc::downgrade(state);
    let stop = state.shutdown.clone();
    state.tasks.spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let Some(state) = weak.upgrade() else { return };
            if let Err(err) = state.prices.reload(&state.pool).await {
                tracing::warn!(error = %err, "price reload failed; keeping the prices in memory");
            }
        }
    });
}

/// Pending connections the kernel queues before `accept` (capped by
/// `net.core.somaxconn`). tokio's default of 1,024 overflowed when thousands
/// of streams opened at once: the dropped handshakes came back as resets.
const LISTEN_BACKLOG: u32 = 8_192;

/// Binds `addr` (`host:port`) with a listen backlog sized for bursts of new
/// connections.
pub async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for candidate in tokio::net::lookup_host(addr).await? {
        let socket = if candidate.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(candidate) {
            Ok(()) => return socket.listen(LISTEN_BACKLOG),
            Err(err) => last_error = Some(err),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("{addr} resolves to no address"),
        )
    }))
}

/// How long cut drains get to record their rows before the writer closes.
const DRAIN_CUT_GRACE: Duration = Duration::from_secs(2);

/// Serves until `shutdown` resolves, then runs the shutdown sequence.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    background: Background,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::telemetry::metrics::handle();
    crate::telemetry::traces::install_from_env();
    let drain_deadline = state.config.drain_deadline();
    let stop = CancellationToken::new();
    let signal = {
        let stop = stop.clone();
        let state = state.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; draining in-flight requests");
            state.shutdown.cancel();
            stop.cancel();
        }
    };
    #[allow(clippy::disallowed_methods)] // awaited implicitly: it only flips tokens
    tokio::spawn(signal);

    let mut connections = JoinSet::new();
    let edge = accept::Edge::new(&state, crate::http::router(state.clone()), stop.clone());
    edge.accept_until_stopped(listener, &mut connections).await;
    // The listener is closed; idle connections close now, busy ones after
    // their request.
    let drained = tokio::time::timeout(drain_deadline, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("drain deadline reached; cutting the remaining requests");
    }
    // Dropping the connections drops their requests: their bodies' meters
    // record them now, without spawning drains.
    state.tasks.close();
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    if tokio::time::timeout(drain_deadline, state.tasks.wait())
        .await
        .is_err()
    {
        // Each drain records its row (flagged `shutdown_drain_cut`) as it
        // ends; the writer is still open to take it.
        tracing::warn!("drain tasks outlived the deadline; cutting them");
        state.drain_cut.cancel();
        if tokio::time::timeout(DRAIN_CUT_GRACE, state.tasks.wait())
            .await
            .is_err()
        {
            tracing::error!("drain tasks did not end after the cut");
        }
    }
    state.ledger.close();
    if let Err(err) = background.writer.await {
        tracing::error!(error = %err, "ledger writer failed");
    }
    // Every row is stored or spooled: slices with nothing open go back now
    // rather than lapsing (those covering spooled rows lapse).
    state.limits.release_idle(&state.pool).await;
    // The rows' spans were queued as they were recorded; export the rest.
    let _ = tokio::task::spawn_blocking(crate::telemetry::traces::shutdown).await;
    Ok(())
}

/// SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
