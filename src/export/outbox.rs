//! The outbox and the per-sink cursors: every SQL statement of the export.
//!
//! # Why a cursor of (txid, seq) below a horizon
//! Ledger ids (and the outbox's own `seq`) are taken before commit, and the
//! ledger writers of several replicas commit out of order, so "everything
//! after the last id I exported" skips a row whose transaction commits
//! after a larger id was already read. Every outbox entry therefore carries
//! the id of the transaction that wrote its ledger row (`txid`, from the
//! trigger of migration 0019), and a sink reads entries in `(txid, seq)`
//! order only below a [`horizon`]: the oldest transaction id still running
//! *in this database* (`pg_stat_activity.backend_xid`), or the next id to be
//! assigned when none runs. It is read in a statement of its own before
//! the entries are read: every transaction below it had ended by then, so
//! all it wrote is visible to the later read and no entry can appear below
//! the cursor afterwards. (`pg_snapshot_xmin` would also be safe, but it
//! counts transactions of every database in the cluster: one idle-in-
//! transaction session elsewhere would stall the export.) A transaction
//! left open in this database holds the horizon: export waits, visibly as
//! lag; it never skips. The role must see other sessions' `backend_xid`
//! (the gateway's own role, or `pg_read_all_stats`).
//!
//! A sink's cursor moves only in the transaction that records what the sink
//! acknowledged ([`record`]). The rows a sink cannot take yet wait in
//! `export_items` with their state (`unpriced`, `waiting_for_mapping`, ...)
//! instead of holding the cursor.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{PgPool, Postgres, Transaction};

use super::event::{ExportRow, COLUMNS};

/// A position in the outbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub txid: i64,
    pub seq: i64,
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.txid, self.seq)
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Entry {
    pub txid: i64,
    pub seq: i64,
    pub request_id: String,
    pub started_at: DateTime<Utc>,
}

impl Entry {
    pub fn cursor(&self) -> Cursor {
        Cursor {
            txid: self.txid,
            seq: self.seq,
        }
    }
}

/// Transaction ids below this have all ended (see the module doc). A
/// 32-bit `backend_xid` is widened with the epoch of the snapshot's xmax.
pub async fn horizon(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "WITH s AS (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8 AS xmax),
              w AS (SELECT s.xmax, (s.xmax & ~4294967295::int8) + a.backend_xid::text::int8 AS x
                    FROM s, pg_stat_activity a
                    WHERE a.datname = current_database() AND a.backend_xid IS NOT NULL)
         SELECT least((SELECT xmax FROM s),
                      (SELECT min(CASE WHEN x > xmax THEN x - 4294967296 ELSE x END) FROM w))",
    )
    .fetch_one(pool)
    .await
}

/// Registers `sink` (idempotent). A new sink starts at the end of what is
/// already in the outbox below the horizon: it exports from now on
/// (`replay --from` sends the past).
pub async fn register(pool: &PgPool, sink: &str) -> Result<(), sqlx::Error> {
    let below = horizon(pool).await?;
    sqlx::query(
        "INSERT INTO export_sinks (sink, cursor_txid, cursor_seq)
         SELECT $1, coalesce(max(txid), 0), coalesce(max(seq), 0) FROM (
             SELECT txid, seq FROM export_outbox
             WHERE txid < $2 ORDER BY txid DESC, seq DESC LIMIT 1) AS last
         ON CONFLICT (sink) DO NOTHING",
    )
    .bind(sink)
    .bind(below)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn cursor(pool: &PgPool, sink: &str) -> Result<Option<Cursor>, sqlx::Error> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT cursor_txid, cursor_seq FROM export_sinks WHERE sink = $1")
            .bind(sink)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(txid, seq)| Cursor { txid, seq }))
}

/// The next entries after `cursor` whose transactions have all ended.
pub async fn next(
    pool: &PgPool,
    sink: &str,
    cursor: Cursor,
    limit: i64,
) -> Result<Vec<Entry>, sqlx::Error> {
    let below = horizon(pool).await?;
    sqlx::query_as(
        "SELECT txid, seq, request_id, started_at FROM export_outbox
         WHERE (txid, seq) > ($1, $2)
           AND txid < $5
           AND (only_sink IS NULL OR only_sink = $3)
         ORDER BY txid, seq LIMIT $4",
    )
    .bind(cursor.txid)
    .bind(cursor.seq)
    .bind(sink)
    .bind(limit)
    .bind(below)
    .fetch_all(pool)
    .await
}

/// Entries after the cursor (committed or not yet below the horizon), up to
/// `cap`, and the age of the oldest.
pub async fn lag(
    pool: &PgPool,
    sink: &str,
    cursor: Cursor,
    cap: i64,
) -> Result<(i64, Option<f64>), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8 FROM (
             SELECT created_at FROM export_outbox
             WHERE (txid, seq) > ($1, $2) AND (only_sink IS NULL OR only_sink = $3)
             ORDER BY txid, seq LIMIT $4) AS o",
    )
    .bind(cursor.txid)
    .bind(cursor.seq)
    .bind(sink)
    .bind(cap)
    .fetch_one(pool)
    .await
}

/// The ledger rows of `entries`, by request_id. Read by request_id within
/// the entries' start times (so a partitioned ledger reads few months).
pub async fn ledger_rows(
    pool: &PgPool,
    entries: &[(String, DateTime<Utc>)],
) -> Result<HashMap<String, ExportRow>, sqlx::Error> {
    let (Some(from), Some(to)) = (
        entries.iter().map(|e| e.1).min(),
        entries.iter().map(|e| e.1).max(),
    ) else {
        return Ok(HashMap::new());
    };
    let ids: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    let rows: Vec<ExportRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM usage_ledger
         WHERE request_id = ANY($1) AND started_at BETWEEN $2 AND $3"
    ))
    .bind(&ids)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.request_id.clone(), r))
        .collect())
}

/// What a sink already holds of a row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Item {
    pub request_id: String,
    pub state: String,
    pub cost: Option<Decimal>,
}

pub async fn items(
    pool: &PgPool,
    sink: &str,
    request_ids: &[&str],
) -> Result<HashMap<String, Item>, sqlx::Error> {
    let items: Vec<Item> = sqlx::query_as(
        "SELECT request_id, state, cost FROM export_items
         WHERE sink = $1 AND request_id = ANY($2)",
    )
    .bind(sink)
    .bind(request_ids)
    .fetch_all(pool)
    .await?;
    Ok(items
        .into_iter()
        .map(|i| (i.request_id.clone(), i))
        .collect())
}

/// Rows waiting for a mapping whose tenant now has one, oldest first.
pub async fn released(
    pool: &PgPool,
    sink: &str,
    column: &str,
    limit: i64,
) -> Result<Vec<(String, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT i.request_id, i.started_at FROM export_items i
         JOIN tenant_billing t ON t.tenant_id = i.tenant_id AND t.{column} IS NOT NULL
         WHERE i.sink = $1 AND i.state = 'waiting_for_mapping'
         ORDER BY i.ledger_id LIMIT $2"
    ))
    .bind(sink)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Every tenant's id in the billing systems.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    sqlx::FromRow,
    utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct Billing {
    pub openmeter_subject: Option<String>,
    pub lago_external_subscription_id: Option<String>,
    pub stripe_customer_id: Option<String>,
}

impl Billing {
    /// The tenant's id for `sink` (the webhook's is the tenant id itself).
    pub fn customer(&self, sink: &str) -> Option<&str> {
        match sink {
            "openmeter" => self.openmeter_subject.as_deref(),
            "lago" => self.lago_external_subscription_id.as_deref(),
            "stripe" => self.stripe_customer_id.as_deref(),
            _ => None,
        }
    }
}

/// The `tenant_billing` column of `sink` (`None` for the webhook).
pub fn mapping_column(sink: &str) -> Option<&'static str> {
    match sink {
        "openmeter" => Some("openmeter_subject"),
        "lago" => Some("lago_external_subscription_id"),
        "stripe" => Some("stripe_customer_id"),
        _ => None,
    }
}

pub async fn mappings(
    pool: &PgPool,
    tenants: &[&str],
) -> Result<HashMap<String, Billing>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        tenant_id: String,
        #[sqlx(flatten)]
        billing: Billing,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT tenant_id, openmeter_subject, lago_external_subscription_id, stripe_customer_id
         FROM tenant_billing WHERE tenant_id = ANY($1)",
    )
    .bind(tenants)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.tenant_id, r.billing)).collect())
}

/// A row's new state for a sink.
#[derive(Debug, Clone)]
pub struct ItemUpdate {
    pub request_id: String,
    pub ledger_id: i64,
    pub tenant_id: String,
    pub started_at: DateTime<Utc>,
    pub state: &'static str,
    pub reason: Option<String>,
    pub cost: Option<Decimal>,
}

/// Records `updates` and, when given, moves the cursor: one transaction.
pub async fn record(
    pool: &PgPool,
    sink: &str,
    updates: &[ItemUpdate],
    advance: Option<Cursor>,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    upsert(&mut tx, sink, updates).await?;
    if let Some(to) = advance {
        sqlx::query(
            "UPDATE export_sinks SET cursor_txid = $2, cursor_seq = $3, advanced_at = now()
             WHERE sink = $1 AND (cursor_txid, cursor_seq) < ($2, $3)",
        )
        .bind(sink)
        .bind(to.txid)
        .bind(to.seq)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

async fn upsert(
    tx: &mut Transaction<'_, Postgres>,
    sink: &str,
    updates: &[ItemUpdate],
) -> Result<(), sqlx::Error> {
    if updates.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&ItemUpdate) -> String| updates.iter().map(f).collect::<Vec<_>>();
    let ledger_ids: Vec<i64> = updates.iter().map(|u| u.ledger_id).collect();
    let started: Vec<DateTime<Utc>> = updates.iter().map(|u| u.started_at).collect();
    let reasons: Vec<Option<String>> = updates.iter().map(|u| u.reason.clone()).collect();
    let costs: Vec<Option<Decimal>> = updates.iter().map(|u| u.cost).collect();
    sqlx::query(
        "INSERT INTO export_items AS i (sink, request_id, ledger_id, tenant_id, started_at,
                 state, reason, cost)
         SELECT $1, * FROM unnest($2::text[], $3::int8[], $4::text[], $5::timestamptz[],
                 $6::text[], $7::text[], $8::numeric[])
         ON CONFLICT (sink, request_id) DO UPDATE SET
             state = EXCLUDED.state, reason = EXCLUDED.reason,
             cost = coalesce(EXCLUDED.cost, i.cost), updated_at = now()",
    )
    .bind(sink)
    .bind(col(|u| u.request_id.clone()))
    .bind(ledger_ids)
    .bind(col(|u| u.tenant_id.clone()))
    .bind(started)
    .bind(col(|u| u.state.to_owned()))
    .bind(reasons)
    .bind(costs)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Drops the outbox entries every registered sink has passed.
pub async fn prune(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM export_outbox WHERE (txid, seq) <= (
             SELECT cursor_txid, cursor_seq FROM export_sinks
             ORDER BY cursor_txid, cursor_seq LIMIT 1)",
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Sends `sink` every ledger row that started at or after `from` again (the
/// sink deduplicates what it already holds); returns how many were queued.
pub async fn replay(pool: &PgPool, sink: &str, from: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM export_items WHERE sink = $1 AND started_at >= $2")
        .bind(sink)
        .bind(from)
        .execute(&mut *tx)
        .await?;
    let queued = sqlx::query(
        "INSERT INTO export_outbox (request_id, ledger_id, started_at, only_sink)
         SELECT request_id, id, started_at, $1 FROM usage_ledger
         WHERE started_at >= $2 ORDER BY id",
    )
    .bind(sink)
    .bind(from)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(queued.rows_affected())
}

/// Counts of one sink's rows by state.
pub async fn counts(pool: &PgPool, sink: &str) -> Result<HashMap<String, i64>, sqlx::Error> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM export_items WHERE sink = $1 GROUP BY state")
            .bind(sink)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// A row a sink has not taken, for the operator.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Listed {
    pub request_id: String,
    pub tenant: String,
    pub state: String,
    pub reason: Option<String>,
    pub started_at: DateTime<Utc>,
}

pub async fn listed(pool: &PgPool, sink: &str, limit: i64) -> Result<Vec<Listed>, sqlx::Error> {
    sqlx::query_as(
        "SELECT request_id, tenant_id AS tenant, state, reason, started_at FROM export_items
         WHERE sink = $1 AND state <> 'sent' ORDER BY ledger_id LIMIT $2",
    )
    .bind(sink)
    .bind(limit)
    .fetch_all(pool)
    .await
}
