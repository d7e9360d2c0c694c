//! The ledger's indexes on disk: keeping them as small as their work needs.
//!
//! Owns: building the lean indexes of migration 0020 on every partition
//! without blocking writers before that migration runs ([`prepare_lean`]),
//! and compacting a closed month's indexes once ([`compact_next`], a step of
//! the `ledger.months` job). Indexes filled in time order by many tenants
//! and keys at once split their pages 50/50 and stay half full; a month that
//! can no longer grow is rebuilt full with `REINDEX … CONCURRENTLY`, which
//! neither blocks writes nor changes a row. Never touches the current month,
//! and never adds, drops or changes a ledger row.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::months::{self, Month};

/// The migration that swaps in the lean indexes.
const LEAN_MIGRATION: i64 = 20;

/// The indexes migration 0020 puts on the parent, as built on a partition:
/// (suffix of the partition's index name, `USING … (columns)`).
const LEAN_INDEXES: [(&str, &str); 3] = [
    ("time_idx", "USING btree (started_at, id)"),
    ("model_idx", "USING btree (model)"),
    ("response_idx", "USING hash (response_id)"),
];

/// A month is closed (its indexes worth rebuilding) this long after it
/// ends: rows of requests running across the boundary, and spool replays
/// after a short outage, have landed by then.
pub const CLOSED_AFTER: Duration = Duration::from_secs(2 * 24 * 3_600);

/// Before migration 0020, over a ledger that holds rows: its three new
/// indexes built `CONCURRENTLY` on every partition (a build that failed
/// before, left invalid, is dropped and built again), so the migration's
/// `CREATE INDEX` on the parent attaches them instead of building under a
/// lock that stops writers. A no-op on a fresh or empty ledger and once
/// the migration has run.
pub async fn prepare_lean(pool: &PgPool) -> Result<(), sqlx::Error> {
    if !months::upgrade_due(pool, LEAN_MIGRATION, "p").await? {
        return Ok(());
    }
    let started = Instant::now();
    let partitions: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'usage_ledger'::regclass ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    for partition in &partitions {
        for (suffix, definition) in LEAN_INDEXES {
            let name = format!("{partition}_{suffix}");
            let statement = format!(
                "CREATE INDEX CONCURRENTLY {} ON {} {definition}",
                ident(&name),
                ident(partition)
            );
            months::build_concurrently(pool, &name, &statement).await?;
        }
    }
    tracing::info!(
        secs = started.elapsed().as_secs_f64(),
        partitions = partitions.len(),
        "lean ledger indexes built ahead of migration 0020"
    );
    Ok(())
}

/// A closed partition whose indexes were rebuilt.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Compaction {
    pub partition: String,
    pub bytes_before: i64,
    pub bytes_after: i64,
    pub seconds: f64,
}

/// Rebuilds the indexes of the oldest closed partition not yet compacted
/// (a month that ended at least [`CLOSED_AFTER`] before `now`, or the
/// legacy partition of an upgraded ledger) with `REINDEX TABLE
/// CONCURRENTLY`, and records it in `ledger_compactions`. Returns what it
/// did and whether more closed partitions wait; `None` when none is due.
pub async fn compact_next(
    pool: &PgPool,
    now: DateTime<Utc>,
) -> Result<(Option<Compaction>, bool), sqlx::Error> {
    // Two rebuilds of one table deadlock; the job's claim keeps replicas
    // apart, this keeps any other caller (a benchmark, a test) apart too.
    let mut conn = pool.acquire().await?;
    let claimed: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(COMPACTION_LOCK)
        .fetch_one(&mut *conn)
        .await?;
    if !claimed {
        return Ok((None, false));
    }
    let result = compact_oldest_due(&mut conn, now).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(COMPACTION_LOCK)
        .execute(&mut *conn)
        .await;
    let done = result?;
    unlocked?;
    Ok(done)
}

/// The session lock [`compact_next`] holds while it rebuilds.
const COMPACTION_LOCK: i64 = 0x746f_6c6c_6978; // "tollix"

async fn compact_oldest_due(
    conn: &mut sqlx::PgConnection,
    now: DateTime<Utc>,
) -> Result<(Option<Compaction>, bool), sqlx::Error> {
    let due = closed_uncompacted(&mut *conn, now).await?;
    let Some(partition) = due.first() else {
        return Ok((None, false));
    };
    let started = Instant::now();
    let bytes_before = index_bytes(&mut *conn, partition).await?;
    sqlx::query(&format!("REINDEX TABLE CONCURRENTLY {}", ident(partition)))
        .execute(&mut *conn)
        .await?;
    let bytes_after = index_bytes(&mut *conn, partition).await?;
    let done = Compaction {
        partition: partition.clone(),
        bytes_before,
        bytes_after,
        seconds: started.elapsed().as_secs_f64(),
    };
    sqlx::query(
        "INSERT INTO ledger_compactions (partition, bytes_before, bytes_after, seconds)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (partition) DO UPDATE SET bytes_before = EXCLUDED.bytes_before,
            bytes_after = EXCLUDED.bytes_after, seconds = EXCLUDED.seconds,
            compacted_at = clock_timestamp()",
    )
    .bind(&done.partition)
    .bind(done.bytes_before)
    .bind(done.bytes_after)
    .bind(done.seconds)
    .execute(&mut *conn)
    .await?;
    tracing::info!(
        partition = %done.partition,
        bytes_before = done.bytes_before,
        bytes_after = done.bytes_after,
        secs = done.seconds,
        "closed ledger partition's indexes compacted"
    );
    Ok((Some(done), due.len() > 1))
}

/// How many closed partitions wait for [`compact_next`].
pub async fn due(pool: &PgPool, now: DateTime<Utc>) -> Result<usize, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    Ok(closed_uncompacted(&mut conn, now).await?.len())
}

/// Closed partitions not yet compacted, oldest first.
async fn closed_uncompacted(
    conn: &mut sqlx::PgConnection,
    now: DateTime<Utc>,
) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid)
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'usage_ledger'::regclass
           AND NOT EXISTS (SELECT 1 FROM ledger_compactions k WHERE k.partition = c.relname)",
    )
    .fetch_all(conn)
    .await?;
    let closed_before = now - chrono::Duration::from_std(CLOSED_AFTER).unwrap_or_default();
    let mut due: Vec<(DateTime<Utc>, String)> = rows
        .into_iter()
        .filter_map(|(table, bound)| {
            let end = if table == "usage_ledger_legacy" {
                months::legacy_bound(&bound)?
            } else {
                let month = table
                    .strip_prefix("usage_ledger_")
                    .and_then(|m| Month::parse(&m.replacen('_', "-", 1)))?;
                month.end()
            };
            (end <= closed_before).then_some((end, table))
        })
        .collect();
    due.sort();
    Ok(due.into_iter().map(|(_, table)| table).collect())
}

/// Bytes of a table's indexes.
async fn index_bytes(conn: &mut sqlx::PgConnection, table: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_indexes_size(to_regclass($1))")
        .bind(ident(table))
        .fetch_one(conn)
        .await
}

/// A name quoted as an SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident("usage_ledger_2026_01"), "\"usage_ledger_2026_01\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }
}
