//! Builds the shared state and the router, and runs the server with its
//! shutdown sequence.
//!
//! Layer order, outermost first (each layer sees what the ones below it do):
//! 1. `CatchPanicLayer` — a panicking handler becomes a 500 envelope (its
//!    `Meter` still records the request while unwinding);
//! 2. `SetSensitiveRequestHeadersLayer(authorization, api-key)` — keys never
//!    reach logs;
//! 3. `TraceLayer` — one span per request;
//! 4. routes. Authentication happens inside each handler, *after* which every
//!    request is metered; body limits are enforced by the proxy itself so that
//!    a 413 is metered too (axum's default 2 MiB limit is disabled).
//!
//! Shutdown, in order: stop accepting → wait for in-flight requests up to the
//! drain deadline → cut the rest (their meters record them) → wait for drain
//! tasks → stop background loops → let the ledger writer write everything
//! (to the spool if the database is gone) → exit.

use std::future::{Future, IntoFuture};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::error::ApiError;
use crate::ledger::{spawn_writer, spool::Spool, LedgerHandle};
use crate::pricing::notify::{self, Reloaded};
use crate::pricing::PriceBook;
use crate::proxy::route::Routes;
use crate::{admin, proxy, reports};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub struct AppState {
    pub config: Arc<Config>,
    pub pool: PgPool,
    pub auth: Authenticator,
    pub prices: PriceBook,
    pub ledger: LedgerHandle,
    pub routes: Routes,
    /// Work that must finish before exit (drains of abandoned streams).
    pub tasks: TaskTracker,
    /// Stops background loops at shutdown.
    pub shutdown: CancellationToken,
}

/// What `build_state` starts besides the state itself.
pub struct Background {
    pub writer: JoinHandle<()>,
}

pub async fn connect(config: &Config) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        // Fail fast when the database is gone; callers fall back or answer 503.
        .acquire_timeout(Duration::from_secs(2))
        .connect(&config.database_url)
        .await
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
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
    let (ledger, writer) = spawn_writer(pool.clone(), spool, config.ledger.batching());
    let state = Arc::new(AppState {
        auth: Authenticator::new(pool.clone()),
        prices,
        ledger,
        routes,
        tasks: TaskTracker::new(),
        shutdown: CancellationToken::new(),
        config: Arc::new(config),
        pool,
    });
    spawn_price_reloader(&state);
    crate::reconcile::spawn(&state);
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
        .spawn(notify::follow_price_changes(pool, stop, move |trigger| {
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
        }));
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

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.body_limit_bytes;
    let mut client = Router::new();
    for prefix in ["/v1", "/api/v1"] {
        client = client
            .route(&format!("{prefix}/responses"), post(proxy::create_response))
            .route(
                &format!("{prefix}/responses/compact"),
                post(proxy::compact_response),
            )
            .route(
                &format!("{prefix}/responses/input_tokens"),
                post(proxy::count_input_tokens),
            )
            .route(
                &format!("{prefix}/responses/{{id}}"),
                get(proxy::retrieve_response).delete(proxy::delete_response),
            )
            .route(
                &format!("{prefix}/responses/{{id}}/cancel"),
                post(proxy::cancel_response),
            )
            .route(
                &format!("{prefix}/responses/{{id}}/input_items"),
                get(proxy::list_input_items),
            )
            .route(&format!("{prefix}/models"), get(proxy::list_models))
            .route(&format!("{prefix}/usage"), get(reports::tenant_usage))
            .route(
                &format!("{prefix}/usage/records"),
                get(reports::tenant_records),
            );
    }
    let admin = Router::new()
        .route("/admin/keys", post(admin::create_key).get(admin::list_keys))
        .route("/admin/keys/{id}", axum::routing::delete(admin::revoke_key))
        .route("/admin/prices", get(admin::list_prices))
        .route("/admin/prices/import", post(admin::import_prices))
        .route(
            "/admin/prices/{*model}",
            put(admin::put_price)
                .get(admin::price_history)
                .delete(admin::retire_price),
        )
        .route("/admin/reprice", post(admin::reprice))
        .route("/admin/usage", get(reports::admin_usage))
        .route("/admin/usage/records", get(reports::admin_records))
        .layer(DefaultBodyLimit::max(limit));
    Router::new()
        .merge(client)
        .merge(admin)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_endpoint))
        .fallback(not_found)
        .layer(DefaultBodyLimit::disable())
        .layer(TraceLayer::new_for_http())
        .layer(SetSensitiveRequestHeadersLayer::new([
            http::header::AUTHORIZATION,
            HeaderName::from_static("api-key"),
        ]))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("handler panicked").into_response()
        }))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("Unknown endpoint.")
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let stats = state.ledger.stats();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let database =
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&state.pool)
            .await;
    let expected = MIGRATOR.iter().count() as i64;
    let (ready, db_status) = match database {
        Ok(applied) if applied >= expected => (true, "ok".to_owned()),
        Ok(applied) => (false, format!("{applied} of {expected} migrations applied")),
        Err(err) => (false, format!("unreachable: {err}")),
    };
    let ready = ready && !state.shutdown.is_cancelled();
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "database": db_status,
        "ledger": {
            "queued_rows": load(&stats.queued),
            "spooled_rows": load(&stats.spooled),
            "written_rows": load(&stats.written),
        },
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

fn metrics_handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .as_ref()
}

async fn metrics_endpoint(State(state): State<Arc<AppState>>) -> Response {
    let stats = state.ledger.stats();
    let load =
        |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed) as f64;
    metrics::gauge!("tollgate_ledger_queued_rows").set(load(&stats.queued));
    metrics::gauge!("tollgate_ledger_spooled_rows").set(load(&stats.spooled));
    metrics::gauge!("tollgate_ledger_written_rows").set(load(&stats.written));
    metrics::gauge!("tollgate_ledger_write_errors").set(load(&stats.write_errors));
    match metrics_handle() {
        Some(handle) => (
            [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => ApiError::internal("metrics recorder unavailable").into_response(),
    }
}

/// Serves until `shutdown` resolves, then runs the shutdown sequence.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    background: Background,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    metrics_handle();
    let drain_deadline = state.config.drain_deadline();
    let stop = CancellationToken::new();
    let app = router(state.clone());
    // Nagle would hold back small SSE frames.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(stop.clone().cancelled_owned());
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

    // Boxed (not stack-pinned) so it can really be dropped below.
    let mut server = Box::pin(server.into_future());
    tokio::select! {
        result = &mut server => result?,
        () = async { stop.cancelled().await; tokio::time::sleep(drain_deadline).await } => {
            tracing::warn!("drain deadline reached; cutting the remaining requests");
        }
    }
    // Dropping the server future drops open connections: their bodies'
    // meters record them now, without spawning drains.
    state.tasks.close();
    drop(server);
    if tokio::time::timeout(drain_deadline, state.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("drain tasks outlived the deadline");
    }
    state.ledger.close();
    if let Err(err) = background.writer.await {
        tracing::error!(error = %err, "ledger writer failed");
    }
    Ok(())
}
