//! The ledger's months: `usage_ledger` is partitioned by calendar month
//! (UTC) on `started_at` (migration 0018), with a default partition for a
//! row no month covers.
//!
//! Owns: preparing an unpartitioned ledger for the upgrade without blocking
//! writers ([`prepare_upgrade`], run before the migrations), creating
//! months ahead and moving rows out of the default partition, the months
//! past retention (the legacy partition's included), and the list of months
//! with their rows, bytes and state. The `ledger.months` job that drives it
//! all is [`super::upkeep`]. Never deletes a
//! ledger row from a month, and never changes a rollup: rows moved between
//! partitions and months detached address the partitions, not the parent
//! whose triggers keep the rollups.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Datelike, Months, NaiveDate, TimeZone, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// Months created ahead of the current one.
pub const MONTHS_AHEAD: u32 = 3;
/// The job's name: its claim, `job_status` row and metrics label.
pub const JOB_NAME: &str = "ledger.months";

/// A calendar month in UTC, by its first day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month(NaiveDate);

impl Month {
    pub fn of(time: DateTime<Utc>) -> Self {
        Self(NaiveDate::from_ymd_opt(time.year(), time.month(), 1).unwrap_or(NaiveDate::MIN))
    }

    pub fn from_first_day(day: NaiveDate) -> Option<Self> {
        (day.day() == 1).then_some(Self(day))
    }

    /// `YYYY-MM`.
    pub fn parse(text: &str) -> Option<Self> {
        let (year, month) = text.split_once('-')?;
        if year.len() != 4 || month.len() != 2 {
            return None;
        }
        NaiveDate::from_ymd_opt(year.parse().ok()?, month.parse().ok()?, 1).map(Self)
    }

    pub fn first_day(self) -> NaiveDate {
        self.0
    }

    pub fn plus(self, months: i32) -> Self {
        let shifted = if months >= 0 {
            self.0.checked_add_months(Months::new(months as u32))
        } else {
            self.0
                .checked_sub_months(Months::new(months.unsigned_abs()))
        };
        Self(shifted.unwrap_or(self.0))
    }

    pub fn start(self) -> DateTime<Utc> {
        Utc.from_utc_datetime(&self.0.and_time(chrono::NaiveTime::MIN))
    }

    pub fn end(self) -> DateTime<Utc> {
        self.plus(1).start()
    }

    /// `usage_ledger_YYYY_MM`.
    pub fn partition(self) -> String {
        format!("usage_ledger_{}", self.0.format("%Y_%m"))
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.format("%Y-%m"))
    }
}

/// Rows in the default partition when last counted (`/metrics`).
static DEFAULT_ROWS: AtomicI64 = AtomicI64::new(0);

/// Rows no month covers: they wait in `usage_ledger_default` until the job
/// creates their month.
pub async fn default_rows(pool: &PgPool) -> Result<i64, sqlx::Error> {
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_ledger_default")
        .fetch_one(pool)
        .await?;
    DEFAULT_ROWS.store(rows, Ordering::Relaxed);
    Ok(rows)
}

/// The last count of [`default_rows`].
pub fn last_default_rows() -> i64 {
    DEFAULT_ROWS.load(Ordering::Relaxed)
}

/// Creates this month and [`MONTHS_AHEAD`] more, and the month of every row
/// waiting in the default partition (unless archived), moving those rows in.
/// Returns the rows moved. Idempotent; replicas racing are serialized by the
/// job's claim and by the database (a created month is seen and skipped).
pub async fn ensure_months(pool: &PgPool, now: DateTime<Utc>) -> Result<i64, sqlx::Error> {
    let current = Month::of(now);
    let mut wanted: Vec<Month> = (0..=MONTHS_AHEAD as i32).map(|i| current.plus(i)).collect();
    let waiting: Vec<NaiveDate> = sqlx::query_scalar(
        "SELECT DISTINCT date_trunc('month', started_at AT TIME ZONE 'UTC')::date
         FROM usage_ledger_default
         WHERE date_trunc('month', started_at AT TIME ZONE 'UTC')::date
               NOT IN (SELECT month FROM ledger_archives WHERE state = 'archived')",
    )
    .fetch_all(pool)
    .await?;
    wanted.extend(waiting.into_iter().filter_map(Month::from_first_day));
    wanted.sort();
    wanted.dedup();
    let mut moved = 0;
    for month in wanted {
        if month_exists(pool, month).await? {
            continue;
        }
        moved += create_month(pool, month).await?;
    }
    Ok(moved)
}

/// Creates every month from `from` to `to`, both included (loading
/// history, the benchmark). Returns the rows moved from the default
/// partition.
pub async fn create_range(pool: &PgPool, from: Month, to: Month) -> Result<i64, sqlx::Error> {
    let (mut month, mut moved) = (from, 0);
    while month <= to {
        if !month_exists(pool, month).await? {
            moved += create_month(pool, month).await?;
        }
        month = month.plus(1);
    }
    Ok(moved)
}

async fn month_exists(pool: &PgPool, month: Month) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(month.partition())
        .fetch_one(pool)
        .await
}

/// One month, in a transaction that waits at most a second for its locks
/// (a long report must not make writers queue behind it).
async fn create_month(pool: &PgPool, month: Month) -> Result<i64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL lock_timeout = '1s'")
        .execute(&mut *tx)
        .await?;
    let moved: Option<i64> = sqlx::query_scalar("SELECT ledger_create_month($1)")
        .bind(month.first_day())
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    if let Some(moved) = moved {
        tracing::info!(%month, moved, "ledger month created");
    }
    Ok(moved.unwrap_or(0))
}

/// What `GET /admin/ledger/partitions` and `tollgate ledger partitions` show
/// of one partition.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PartitionInfo {
    /// `YYYY-MM`; null for the default partition and the legacy one.
    pub month: Option<String>,
    /// The partition's table; null for an archived month.
    pub table: Option<String>,
    /// `live`, `archived`, `default` or `legacy` (the table an upgraded
    /// ledger kept for every row before its first month).
    pub state: String,
    /// The range's bounds (RFC 3339; `from` null: unbounded).
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Exact, from the rollups for months (kept forever); counted for the
    /// default partition; from the manifest for an archived month.
    pub rows: i64,
    /// Table plus indexes on disk; 0 when archived.
    pub bytes: i64,
    /// The archive's manifest, for an archived (or restored) month.
    #[schema(value_type = Option<Object>)]
    pub archive: Option<serde_json::Value>,
    /// When the closed partition's indexes were rebuilt full
    /// ([`super::indexes::compact_next`]); null until then.
    pub compacted_at: Option<DateTime<Utc>>,
}

/// Every partition and every archived month, oldest first, default last.
pub async fn partitions(pool: &PgPool) -> Result<Vec<PartitionInfo>, sqlx::Error> {
    let live: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid), pg_total_relation_size(c.oid)
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'usage_ledger'::regclass",
    )
    .fetch_all(pool)
    .await?;
    let archives: Vec<(NaiveDate, String, serde_json::Value)> =
        sqlx::query_as("SELECT month, state, manifest FROM ledger_archives")
            .fetch_all(pool)
            .await?;
    let compacted: std::collections::HashMap<String, DateTime<Utc>> =
        sqlx::query_as("SELECT partition, compacted_at FROM ledger_compactions")
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    let mut out = Vec::new();
    for (table, bound, bytes) in live {
        let compacted_at = compacted.get(&table).copied();
        let info = match table.as_str() {
            "usage_ledger_default" => PartitionInfo {
                month: None,
                table: Some(table),
                state: "default".into(),
                from: None,
                to: None,
                rows: default_rows(pool).await?,
                bytes,
                archive: None,
                compacted_at: None,
            },
            "usage_ledger_legacy" => {
                let to = legacy_bound(&bound);
                PartitionInfo {
                    month: None,
                    table: Some(table),
                    state: "legacy".into(),
                    from: None,
                    to,
                    rows: rollup_rows(pool, None, to).await?,
                    compacted_at,
                    bytes,
                    archive: None,
                }
            }
            _ => {
                let Some(month) = table
                    .strip_prefix("usage_ledger_")
                    .and_then(|m| Month::parse(&m.replacen('_', "-", 1)))
                else {
                    continue;
                };
                let archive = archives
                    .iter()
                    .find(|(m, _, _)| *m == month.first_day())
                    .map(|(_, _, manifest)| manifest.clone());
                PartitionInfo {
                    month: Some(month.to_string()),
                    table: Some(table),
                    state: "live".into(),
                    from: Some(month.start()),
                    to: Some(month.end()),
                    rows: rollup_rows(pool, Some(month.start()), Some(month.end())).await?,
                    compacted_at,
                    bytes,
                    archive,
                }
            }
        };
        out.push(info);
    }
    for (day, state, manifest) in archives {
        let Some(month) = Month::from_first_day(day) else {
            continue;
        };
        if state != "archived" {
            continue;
        }
        out.push(PartitionInfo {
            month: Some(month.to_string()),
            table: None,
            state: "archived".into(),
            from: Some(month.start()),
            to: Some(month.end()),
            rows: manifest.get("rows").and_then(|r| r.as_i64()).unwrap_or(0),
            bytes: 0,
            archive: Some(manifest),
            compacted_at: None,
        });
    }
    out.sort_by_key(|p| (p.state == "default", p.from.is_some(), p.from));
    Ok(out)
}

/// `FOR VALUES FROM (MINVALUE) TO ('2027-01-01 00:00:00+00')` → its end.
pub(super) fn legacy_bound(bound: &str) -> Option<DateTime<Utc>> {
    let to = bound.split("TO ('").nth(1)?.split('\'').next()?;
    DateTime::parse_from_str(&format!("{to}00"), "%Y-%m-%d %H:%M:%S%z")
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Rows in `[from, to)` by the daily fleet rollup (exact, kept forever).
async fn rollup_rows(
    pool: &PgPool,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT coalesce(sum(requests), 0)::bigint FROM usage_rollup_daily_fleet
         WHERE ($1::timestamptz IS NULL OR bucket >= $1) AND ($2::timestamptz IS NULL OR bucket < $2)",
    )
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await
}

/// The end of the legacy partition of an upgraded ledger (everything before
/// it lives there), while it exists.
pub async fn legacy_end(pool: &PgPool) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let bound: Option<String> = sqlx::query_scalar(
        "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i
         JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'usage_ledger'::regclass AND c.relname = 'usage_ledger_legacy'",
    )
    .fetch_optional(pool)
    .await?;
    Ok(bound.as_deref().and_then(legacy_bound))
}

/// The months the legacy partition holds rows of, oldest first (from the
/// daily fleet rollup: exact, and no scan of the legacy table).
pub async fn legacy_months(pool: &PgPool) -> Result<Vec<Month>, sqlx::Error> {
    let Some(end) = legacy_end(pool).await? else {
        return Ok(Vec::new());
    };
    let days: Vec<NaiveDate> = sqlx::query_scalar(
        "SELECT DISTINCT date_trunc('month', bucket AT TIME ZONE 'UTC')::date
         FROM usage_rollup_daily_fleet WHERE bucket < $1 AND requests > 0 ORDER BY 1",
    )
    .bind(end)
    .fetch_all(pool)
    .await?;
    Ok(days.into_iter().filter_map(Month::from_first_day).collect())
}

/// Legacy months retention archives: none until the legacy partition's
/// last month is past retention (its rows leave together, by one `DROP`),
/// then each month without an archive, oldest first; once each has one
/// (`pending`: written and verified, rows still in the table), the newest
/// again, whose archive ends by dropping the table.
async fn legacy_past_retention(
    pool: &PgPool,
    oldest_kept: Month,
) -> Result<Vec<Month>, sqlx::Error> {
    match legacy_end(pool).await? {
        Some(end) if end <= oldest_kept.start() => {}
        _ => return Ok(Vec::new()),
    }
    let held = legacy_months(pool).await?;
    let archived: Vec<NaiveDate> = sqlx::query_scalar("SELECT month FROM ledger_archives")
        .fetch_all(pool)
        .await?;
    let missing: Vec<Month> = held
        .iter()
        .copied()
        .filter(|m| !archived.contains(&m.first_day()))
        .collect();
    Ok(if missing.is_empty() {
        held.last().copied().into_iter().collect()
    } else {
        missing
    })
}

/// Months before `oldest_kept` still in the database (the legacy
/// partition's first, see [`legacy_past_retention`], then months with a
/// partition): what retention archives, oldest first.
pub async fn months_past_retention(
    pool: &PgPool,
    oldest_kept: Month,
) -> Result<Vec<Month>, sqlx::Error> {
    let legacy = legacy_past_retention(pool, oldest_kept).await?;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'usage_ledger'::regclass AND c.relname ~ '^usage_ledger_[0-9]{4}_[0-9]{2}$'
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    Ok(legacy
        .into_iter()
        .chain(
            names
                .iter()
                .filter_map(|n| Month::parse(&n["usage_ledger_".len()..].replacen('_', "-", 1)))
                .filter(|m| *m < oldest_kept),
        )
        .collect())
}

/// Before the migrations: when migration 0018 is still to run over an
/// unpartitioned ledger that holds rows, does its slow parts without
/// blocking writers, so the migration itself only swaps catalog entries
/// (see `migrations/0018_ledger_months.sql`): a CHECK bounding `started_at`
/// added `NOT VALID` and validated (a scan under a lock that lets writes
/// through), and the two unique indexes the partitioned table needs built
/// `CONCURRENTLY` then made constraints. Each step is idempotent, so an
/// interrupted preparation resumes.
pub async fn prepare_upgrade(pool: &PgPool) -> Result<(), sqlx::Error> {
    if !upgrade_due(pool, 18, "r").await? {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let bound = upgrade_bound(Utc::now());
    let name = format!(
        "usage_ledger_upgrade_bound_{}",
        bound.first_day().format("%Y%m")
    );
    let existing: Option<String> = sqlx::query_scalar(
        "SELECT conname::text FROM pg_constraint WHERE conrelid = 'usage_ledger'::regclass
           AND conname ~ '^usage_ledger_upgrade_bound_[0-9]{6}$'",
    )
    .fetch_optional(pool)
    .await?;
    let name = match existing {
        Some(existing) => existing,
        None => {
            briefly(
                pool,
                &format!(
                    "ALTER TABLE usage_ledger ADD CONSTRAINT {name} CHECK (started_at < '{}') NOT VALID",
                    bound.start().to_rfc3339()
                ),
            )
            .await?;
            name
        }
    };
    sqlx::query(&format!(
        "ALTER TABLE usage_ledger VALIDATE CONSTRAINT {name}"
    ))
    .execute(pool)
    .await?;
    concurrent_unique(
        pool,
        "usage_ledger_request_started_key",
        "request_id, started_at",
    )
    .await?;
    concurrent_unique(pool, "usage_ledger_id_started_key", "id, started_at").await?;
    let constraint: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'usage_ledger'::regclass
           AND conname = 'usage_ledger_request_started_key')",
    )
    .fetch_one(pool)
    .await?;
    if !constraint {
        briefly(pool, "ALTER TABLE usage_ledger ADD CONSTRAINT usage_ledger_request_started_key UNIQUE USING INDEX usage_ledger_request_started_key").await?;
    }
    let wide_key: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = 'usage_ledger'::regclass
           AND indisprimary AND indnatts = 2)",
    )
    .fetch_one(pool)
    .await?;
    if !wide_key {
        briefly(pool, "ALTER TABLE usage_ledger DROP CONSTRAINT usage_ledger_pkey, ADD CONSTRAINT usage_ledger_pkey PRIMARY KEY USING INDEX usage_ledger_id_started_key").await?;
    }
    tracing::info!(
        secs = started.elapsed().as_secs_f64(),
        %bound,
        "ledger prepared for monthly partitions"
    );
    Ok(())
}

/// The first month the upgraded ledger keeps in its own partition: next
/// month, or the one after when next month starts within two days (rows of
/// requests running across the boundary must still fit the old table).
pub fn upgrade_bound(now: DateTime<Utc>) -> Month {
    let next = Month::of(now).plus(1);
    if next.start() - now < chrono::Duration::days(2) {
        next.plus(1)
    } else {
        next
    }
}

/// A catalog-only change under a lock writers wait for: a second at most,
/// retried, so a long reader never makes the writers queue behind it.
async fn briefly(pool: &PgPool, statement: &str) -> Result<(), sqlx::Error> {
    begin_locked(pool, statement, 30).await?.commit().await
}

/// A transaction that has run `statement` (one that takes a lock), the
/// lock waited for a second at a time: a waiting exclusive lock makes
/// every later query of the table queue behind it, so it gives way and
/// tries again (200 ms later, up to `attempts` more times) while something
/// else holds the table, or when PostgreSQL broke a deadlock by aborting
/// it.
pub(super) async fn begin_locked(
    pool: &PgPool,
    statement: &str,
    attempts: u32,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut attempt = 0;
    loop {
        let mut tx = pool.begin().await?;
        sqlx::query("SET LOCAL lock_timeout = '1s'")
            .execute(&mut *tx)
            .await?;
        match sqlx::query(statement).execute(&mut *tx).await {
            Ok(_) => return Ok(tx),
            // 55P03: lock_timeout. 40P01: a deadlock, this side chosen to
            // give way (a `REINDEX … CONCURRENTLY` of the table waits for
            // this very transaction while holding what it asks for).
            Err(sqlx::Error::Database(db))
                if matches!(db.code().as_deref(), Some("55P03" | "40P01"))
                    && attempt < attempts =>
            {
                attempt += 1;
                drop(tx);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// `statement` (a `CREATE … INDEX CONCURRENTLY name …`), unless a valid
/// index `name` exists; an invalid one (an interrupted build) is dropped
/// first.
pub(super) async fn build_concurrently(
    pool: &PgPool,
    name: &str,
    statement: &str,
) -> Result<(), sqlx::Error> {
    let valid: Option<bool> = sqlx::query_scalar(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE c.relname = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?;
    match valid {
        Some(true) => return Ok(()),
        Some(false) => {
            sqlx::query(&format!("DROP INDEX CONCURRENTLY \"{name}\""))
                .execute(pool)
                .await?;
        }
        None => {}
    }
    sqlx::query(statement).execute(pool).await?;
    Ok(())
}

/// A unique index on the old table built without blocking writes.
async fn concurrent_unique(pool: &PgPool, name: &str, columns: &str) -> Result<(), sqlx::Error> {
    let statement = format!("CREATE UNIQUE INDEX CONCURRENTLY {name} ON usage_ledger ({columns})");
    build_concurrently(pool, name, &statement).await
}

/// Whether migration `version` still has to run over a ledger that holds
/// rows, `usage_ledger` being of `relkind` (`r` a table, `p` partitioned):
/// when its slow part is to be done ahead. False on a fresh database
/// (neither table yet; the query naming the migrations table runs only once
/// it exists).
pub(super) async fn upgrade_due(
    pool: &PgPool,
    version: i64,
    relkind: &str,
) -> Result<bool, sqlx::Error> {
    let exists: bool = sqlx::query_scalar(
        "SELECT to_regclass('_sqlx_migrations') IS NOT NULL
            AND EXISTS (SELECT 1 FROM pg_class WHERE oid = to_regclass('usage_ledger')
                        AND relkind::text = $1)",
    )
    .bind(relkind)
    .fetch_one(pool)
    .await?;
    if !exists {
        return Ok(false);
    }
    let done: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = $1)")
            .bind(version)
            .fetch_one(pool)
            .await?;
    if done {
        return Ok(false);
    }
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM usage_ledger)")
        .fetch_one(pool)
        .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn months_parse_and_name_their_partition() {
        let m = Month::parse("2027-01").expect("month");
        assert_eq!(m.partition(), "usage_ledger_2027_01");
        assert_eq!(m.plus(-1).to_string(), "2026-12");
        assert_eq!(m.end().to_rfc3339(), "2027-02-01T00:00:00+00:00");
        assert!(Month::parse("2027-13").is_none());
        assert!(Month::parse("27-01").is_none());
    }

    #[test]
    fn the_upgrade_bound_leaves_room_for_running_requests() {
        let mid = Utc.with_ymd_and_hms(2026, 12, 7, 5, 0, 0).unwrap();
        assert_eq!(upgrade_bound(mid).to_string(), "2027-01");
        let late = Utc.with_ymd_and_hms(2026, 12, 31, 5, 0, 0).unwrap();
        assert_eq!(upgrade_bound(late).to_string(), "2027-02");
    }

    #[test]
    fn the_legacy_bound_is_read_from_the_catalog() {
        let to = legacy_bound("FOR VALUES FROM (MINVALUE) TO ('2027-01-01 00:00:00+00')");
        assert_eq!(
            to.map(|t| t.to_rfc3339()).as_deref(),
            Some("2027-01-01T00:00:00+00:00")
        );
    }
}
