//! The shared state every handler receives: configuration, the database
//! pools (main, reports, exports; the ledger writer's own is built here
//! too), the per-tenant export slots, the authenticator, the price book, the ledger handle, the routes,
//! the tracked task set and the shutdown token.
//!
//! It sits below the handlers and imports nothing above it: it knows no
//! router, no handler and no background loop (those are started by
//! [`crate::server`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::{Config, DatabaseConfig};
use crate::ledger::LedgerHandle;
use crate::pricing::PriceBook;
use crate::proxy::route::Routes;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub struct AppState {
    pub config: Arc<Config>,
    /// Authentication, proxying, the admin API, readiness.
    pub pool: PgPool,
    /// JSON records pages and usage reports (`statement_timeout` set).
    pub reports_pool: PgPool,
    /// CSV exports: a stuck export can hold only these connections.
    pub exports_pool: PgPool,
    /// Concurrent CSV exports per tenant.
    pub exports: TenantSlots,
    pub auth: Authenticator,
    pub prices: PriceBook,
    pub ledger: LedgerHandle,
    /// Limit settings and this replica's slices (spend control; see
    /// [`crate::limits`]).
    pub limits: Arc<crate::limits::Limits>,
    /// Which scopes have budget alerts, and what waits for a check (shared
    /// with the ledger writer; see [`crate::limits::alerts`]).
    pub alerts: Arc<crate::limits::alerts::Alerts>,
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
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect(&config.database_url)
        .await
}

/// Fail fast when a pool is exhausted or the database gone: callers fall
/// back (the ledger spools) or answer 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// The pools besides the main one.
pub struct SidePools {
    pub ledger: PgPool,
    pub reports: PgPool,
    pub exports: PgPool,
}

/// Builds the side pools from the main pool's connect options (so they reach
/// the same database, a test's own included). They connect lazily.
pub fn side_pools(main: &PgPool, db: &DatabaseConfig) -> SidePools {
    let base: PgConnectOptions = (*main.connect_options()).clone();
    let pool = |max: u32, options: PgConnectOptions| {
        PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options)
    };
    let timeout = |secs: u64| {
        base.clone().options([(
            "statement_timeout",
            format!("{}", secs.saturating_mul(1_000)),
        )])
    };
    SidePools {
        ledger: pool(db.ledger_max_connections, base.clone()),
        reports: pool(
            db.reports_max_connections,
            timeout(db.report_statement_timeout_secs),
        ),
        exports: pool(db.exports_max_connections, timeout(db.export_max_secs)),
    }
}

/// Counts what each tenant holds of something limited (CSV exports); a
/// [`Slot`] gives its place back when dropped.
pub struct TenantSlots {
    per_tenant: usize,
    held: Arc<Mutex<HashMap<String, usize>>>,
}

pub struct Slot {
    tenant: String,
    held: Arc<Mutex<HashMap<String, usize>>>,
}

impl TenantSlots {
    pub fn new(per_tenant: usize) -> Self {
        Self {
            per_tenant,
            held: Arc::default(),
        }
    }

    /// A slot for `tenant`, or `None` when it already holds `per_tenant`.
    pub fn try_take(&self, tenant: &str) -> Option<Slot> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(tenant.to_owned()).or_insert(0);
        if *count >= self.per_tenant {
            return None;
        }
        *count += 1;
        Some(Slot {
            tenant: tenant.to_owned(),
            held: self.held.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.tenant);
            }
        }
    }
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    // Migrations 0018 (the ledger by month) and 0020 (leaner indexes) have
    // slow parts that run first, without blocking writers (each a no-op
    // once done or on a fresh database); 0020's need 0018's partitions.
    crate::ledger::months::prepare_upgrade(pool)
        .await
        .map_err(sqlx::migrate::MigrateError::Execute)?;
    migrate_up_to(pool, 19).await?;
    crate::ledger::indexes::prepare_lean(pool)
        .await
        .map_err(sqlx::migrate::MigrateError::Execute)?;
    MIGRATOR.run(pool).await
}

/// The migrations up to `version` only (a database already past it is
/// left as it is).
async fn migrate_up_to(pool: &PgPool, version: i64) -> Result<(), sqlx::migrate::MigrateError> {
    let mut first = sqlx::migrate!("./migrations");
    first.ignore_missing = true;
    first.migrations = std::borrow::Cow::Owned(
        MIGRATOR
            .iter()
            .filter(|m| m.version <= version)
            .cloned()
            .collect(),
    );
    first.run(pool).await
}

/// Creates the database when it does not exist yet, then migrates it.
pub async fn connect_and_migrate(config: &Config) -> anyhow::Result<sqlx::PgPool> {
    let url = &config.database_url;
    if !sqlx::Postgres::database_exists(url)
        .await
        .with_context(|| format!("cannot reach the database at {}", redact_url(url)))?
    {
        sqlx::Postgres::create_database(url)
            .await
            .with_context(|| format!("cannot create the database {}", redact_url(url)))?;
    }
    let pool = connect(config)
        .await
        .with_context(|| format!("cannot connect to {}", redact_url(url)))?;
    migrate(&pool).await.context("migration failed")?;
    Ok(pool)
}

/// The database URL with its password replaced by `***`, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
