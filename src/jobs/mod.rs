//! Background jobs: one shape for the work that runs beside the request path,
//! on every replica, against one database (partition upkeep, archiving,
//! provider fetches, export delivery).
//!
//! A job is a [`Job`]: a name, an idle interval and a `step`. [`spawn`] runs
//! it for the life of the process; every round:
//! 1. **claim**: `pg_try_advisory_lock` on a connection of the job's own (not the
//!    pool's: claims must never starve the steps), held for the step, so
//!    one replica at a time does the job and a dead replica's claim ends with
//!    its connection (no lease to expire, no second coordinator);
//! 2. **step**: one bounded piece of work; the job keeps its real cursor in
//!    its own table, advanced in the transaction that records the work, and
//!    reports a [`Progress`] (more to do? a cursor and lag to show);
//! 3. **record** the outcome in `job_status` (last run, last success, last
//!    error, failures in a row, cursor, lag), which `GET /admin/jobs`, the
//!    metrics and each job's own status endpoint read;
//! 4. **wait**: not at all when the step says there is more, `every` when
//!    idle (or until the job's wake signal), a capped, jittered exponential
//!    backoff after a failure.
//!
//! A paused job (`job_status.paused`, set by [`set_paused`]) is skipped by
//! every replica. Shutdown stops the loop between steps and lets the step in
//! flight finish; a long step watches [`JobContext::stop`] and returns at
//! its next checkpoint. The same [`run_once`] serves the command line
//! (`tollgate ledger archive`, `reconcile fetch`, ...), so a command and the
//! gateway never do the same job at once.
//!
//! It owns `job_status` and the claim; it knows nothing of what any job does.

pub mod api;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a job's step needs from its surroundings.
#[derive(Clone)]
pub struct JobContext {
    pub pool: PgPool,
    /// Fires at shutdown: a long step returns at its next checkpoint.
    pub stop: CancellationToken,
}

/// One step's report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Run the next step at once (a backlog is being worked off).
    pub more: bool,
    /// Where the job stands, for people (its real cursor is its own).
    pub cursor: Option<String>,
    /// Work known to be waiting, in rows (or items) and in seconds of age.
    pub lag_rows: Option<i64>,
    pub lag_seconds: Option<f64>,
}

impl Progress {
    /// Nothing left to do this round.
    pub fn idle() -> Self {
        Self::default()
    }

    /// More work is waiting: step again at once.
    pub fn more() -> Self {
        Self {
            more: true,
            ..Self::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Anything else a step can fail on (an HTTP peer, a file), said for
    /// `last_error`: never a credential or a full URL with a secret.
    #[error("{0}")]
    Failed(String),
}

impl JobError {
    pub fn failed(reason: impl std::fmt::Display) -> Self {
        Self::Failed(reason.to_string())
    }
}

/// A background job. `step` does one bounded piece of work and must be safe
/// to repeat after a crash at any point (its effects are idempotent or
/// recorded with its cursor in one transaction).
pub trait Job: Send + 'static {
    /// The claim key and the `job_status` row; also the metrics label, so
    /// it comes from a bounded set (`ledger.partitions`, `export.lago`).
    fn name(&self) -> String;
    /// The wait after an idle step.
    fn every(&self) -> Duration;
    /// Wakes the job before `every` has passed (new rows to export, say).
    fn wake(&self) -> Option<Arc<Notify>> {
        None
    }
    fn step(&mut self, ctx: &JobContext)
        -> impl Future<Output = Result<Progress, JobError>> + Send;
}

/// The outcome of one claimed round.
#[derive(Debug, Clone, PartialEq)]
pub enum Round {
    Ran(Progress),
    /// Another replica (or command) holds the claim.
    Busy,
    Paused,
}

/// The first wait after a failure, doubled per failure in a row up to
/// [`BACKOFF_MAX`], with ±20 % jitter so replicas do not retry in step.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// `last_error` is cut to this many characters.
const MAX_ERROR: usize = 512;

/// This process's name in `job_status.holder`: the host and the pid.
pub fn replica_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        format!("{host}:{}", std::process::id())
    })
}

/// Runs `job` on this replica until `ctx.stop` fires.
pub fn spawn<J: Job>(tasks: &TaskTracker, ctx: JobContext, mut job: J) {
    tasks.spawn(async move {
        let claims = claims_pool(&ctx.pool);
        let name = job.name();
        let wake = job.wake();
        let mut failures: u32 = 0;
        loop {
            if ctx.stop.is_cancelled() {
                return;
            }
            let wait = match run_claimed(&ctx, &claims, &mut job).await {
                Ok(Round::Ran(progress)) if progress.more => {
                    failures = 0;
                    Duration::ZERO
                }
                Ok(_) => {
                    failures = 0;
                    job.every()
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(job = %name, error = %err, failures, "job step failed; backing off");
                    backoff(failures)
                }
            };
            if wait.is_zero() {
                // Yield between steps of a backlog so a busy job cannot
                // starve its runtime thread.
                tokio::task::yield_now().await;
                continue;
            }
            let woken = async {
                match &wake {
                    Some(notify) if failures == 0 => notify.notified().await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                () = ctx.stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = woken => {}
            }
        }
    });
}

/// The wait after the `failures`-th failure in a row.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let wait = BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_MAX);
    let jitter = rand::random_range(0.8..1.2);
    wait.mul_f64(jitter)
}

/// Claims `job`, runs one step, records the outcome and releases the claim.
pub async fn run_once<J: Job>(ctx: &JobContext, job: &mut J) -> Result<Round, JobError> {
    run_claimed(ctx, &claims_pool(&ctx.pool), job).await
}

/// How long a job waits for its claim's own connection.
const CLAIM_ACQUIRE: Duration = Duration::from_secs(5);
/// A claim connection idle this long (a job stepping less often) is closed.
const CLAIM_IDLE: Duration = Duration::from_secs(120);

/// One connection of its own for a job's claim, beside `pool`. The claim is
/// held while the step works through `pool`; were it taken from `pool`,
/// jobs holding claims could take every connection and wait forever for one
/// more to do their step (seen with a 5-connection pool and three jobs).
fn claims_pool(pool: &PgPool) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(CLAIM_ACQUIRE)
        .idle_timeout(Some(CLAIM_IDLE))
        .connect_lazy_with((*pool.connect_options()).clone())
}

async fn run_claimed<J: Job>(
    ctx: &JobContext,
    claims: &PgPool,
    job: &mut J,
) -> Result<Round, JobError> {
    let name = job.name();
    let Some(claim) = Claim::take(claims, &name).await? else {
        return Ok(Round::Busy);
    };
    if is_paused(&ctx.pool, &name).await? {
        claim.release().await;
        return Ok(Round::Paused);
    }
    let result = job.step(ctx).await;
    let recorded = record(&ctx.pool, &name, &result).await;
    claim.release().await;
    let lag = result
        .as_ref()
        .ok()
        .map(|p| crate::telemetry::metrics::JobLag {
            rows: p.lag_rows,
            seconds: p.lag_seconds,
        });
    crate::telemetry::metrics::record_job_step(&name, lag);
    if let Err(err) = recorded {
        tracing::warn!(job = %name, error = %err, "job status not recorded");
    }
    result.map(Round::Ran)
}

/// A held advisory lock. Released explicitly; a claim dropped without
/// release (a panic, a cancelled step) closes its connection instead of
/// returning it to the pool, which ends the lock with it.
struct Claim {
    conn: Option<PoolConnection<Postgres>>,
    key: i64,
}

impl Claim {
    async fn take(pool: &PgPool, name: &str) -> Result<Option<Self>, sqlx::Error> {
        let mut conn = pool.acquire().await?;
        let key = lock_key(name);
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        Ok(taken.then_some(Self {
            conn: Some(conn),
            key,
        }))
    }

    async fn release(mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let unlocked = sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1)")
            .bind(self.key)
            .fetch_one(&mut *conn)
            .await;
        if !matches!(unlocked, Ok(true)) {
            // Not sure the lock is gone: end the session that holds it.
            drop(conn.detach());
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

/// A job's advisory lock key: 64 bits of its name's hash, in a namespace of
/// Tollgate's own.
fn lock_key(name: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("tollgate.job:{name}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

async fn is_paused(pool: &PgPool, name: &str) -> Result<bool, sqlx::Error> {
    let paused: Option<bool> = sqlx::query_scalar("SELECT paused FROM job_status WHERE job = $1")
        .bind(name)
        .fetch_optional(pool)
        .await?;
    Ok(paused.unwrap_or(false))
}

async fn record(
    pool: &PgPool,
    name: &str,
    result: &Result<Progress, JobError>,
) -> Result<(), sqlx::Error> {
    match result {
        Ok(progress) => {
            sqlx::query(
                "INSERT INTO job_status AS s (job, holder, last_run_at, last_success_at, runs,
                         cursor, lag_rows, lag_seconds)
                 VALUES ($1, $2, now(), now(), 1, $3, $4, $5)
                 ON CONFLICT (job) DO UPDATE SET
                     holder = EXCLUDED.holder, last_run_at = now(), last_success_at = now(),
                     runs = s.runs + 1, failures_in_a_row = 0,
                     cursor = COALESCE(EXCLUDED.cursor, s.cursor),
                     lag_rows = EXCLUDED.lag_rows, lag_seconds = EXCLUDED.lag_seconds",
            )
            .bind(name)
            .bind(replica_id())
            .bind(&progress.cursor)
            .bind(progress.lag_rows)
            .bind(progress.lag_seconds)
            .execute(pool)
            .await?;
        }
        Err(err) => {
            let reason: String = err.to_string().chars().take(MAX_ERROR).collect();
            sqlx::query(
                "INSERT INTO job_status AS s (job, holder, last_run_at, runs, last_error,
                         last_error_at, failures_in_a_row)
                 VALUES ($1, $2, now(), 1, $3, now(), 1)
                 ON CONFLICT (job) DO UPDATE SET
                     holder = EXCLUDED.holder, last_run_at = now(), runs = s.runs + 1,
                     last_error = EXCLUDED.last_error, last_error_at = now(),
                     failures_in_a_row = s.failures_in_a_row + 1",
            )
            .bind(name)
            .bind(replica_id())
            .bind(reason)
            .execute(pool)
            .await?;
        }
    }
    Ok(())
}

/// Pauses or resumes a job on every replica (from its next round).
pub async fn set_paused(pool: &PgPool, name: &str, paused: bool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO job_status (job, paused) VALUES ($1, $2)
         ON CONFLICT (job) DO UPDATE SET paused = EXCLUDED.paused",
    )
    .bind(name)
    .bind(paused)
    .execute(pool)
    .await?;
    Ok(())
}

/// One job's recorded state.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct JobStatus {
    pub job: String,
    pub paused: bool,
    /// The replica (host:pid) that ran the last step.
    pub holder: Option<String>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    /// The last failure, kept after a later success.
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub failures_in_a_row: i32,
    pub runs: i64,
    pub cursor: Option<String>,
    pub lag_rows: Option<i64>,
    pub lag_seconds: Option<f64>,
}

const STATUS_COLUMNS: &str = "job, paused, holder, last_run_at, last_success_at, last_error,
     last_error_at, failures_in_a_row, runs, cursor, lag_rows, lag_seconds";

/// Every job that ever ran or was paused, by name.
pub async fn statuses(pool: &PgPool) -> Result<Vec<JobStatus>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {STATUS_COLUMNS} FROM job_status ORDER BY job"
    ))
    .fetch_all(pool)
    .await
}

/// One job's status; `None` before its first round.
pub async fn status(pool: &PgPool, name: &str) -> Result<Option<JobStatus>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {STATUS_COLUMNS} FROM job_status WHERE job = $1"
    ))
    .bind(name)
    .fetch_optional(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        for failures in 1..40 {
            let wait = backoff(failures);
            let nominal = BACKOFF_BASE
                .saturating_mul(1 << failures.saturating_sub(1).min(16))
                .min(BACKOFF_MAX);
            assert!(wait >= nominal.mul_f64(0.8) && wait <= nominal.mul_f64(1.2));
        }
        assert!(backoff(100) <= BACKOFF_MAX.mul_f64(1.2));
    }

    #[test]
    fn lock_keys_differ_by_name() {
        assert_ne!(lock_key("export.lago"), lock_key("export.stripe"));
        assert_eq!(lock_key("export.lago"), lock_key("export.lago"));
    }
}
