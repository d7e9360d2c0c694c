//! The shared state every handler receives: configuration, the database
//! pool, the authenticator, the price book, the ledger handle, the routes,
//! the tracked task set and the shutdown token.
//!
//! It sits below the handlers and imports nothing above it: it knows no
//! router, no handler and no background loop (those are started by
//! [`crate::server`]).

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::ledger::LedgerHandle;
use crate::pricing::PriceBook;
use crate::proxy::route::Routes;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub struct AppState {
    pub config: Arc<Config>,
    pub pool: PgPool,
    pub auth: Authenticator,
    pub prices: PriceBook,
    pub ledger: LedgerHandle,
    /// Which scopes have limits (spend control; see [`crate::limits`]).
    pub limits: crate::limits::Limits,
    pub routes: Routes,
    /// Work that must finish before exit (drains of abandoned streams).
    pub tasks: TaskTracker,
    /// Stops background loops at shutdown.
    pub shutdown: CancellationToken,
    /// Fires when shutdown's drain deadline has passed: drains still reading
    /// an upstream record what they know and end (`proxy::tap`).
    pub drain_cut: CancellationToken,
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
