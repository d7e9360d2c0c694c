//! Rows the database refused: found by bisecting their batch, kept apart
//! with the database's reason, so that one row can never stop the others.
//!
//! Owns the difference between "the database is away" (the batch waits in
//! the spool and is retried) and "the database refuses this row" (SQLSTATE
//! classes 22 data exception, 23 integrity violation, 54 program limit, or a
//! value the driver cannot encode): the refused row alone goes to
//! `ledger_quarantine` with the reason and the row as JSON text; every other
//! row of the batch is stored. Never drops a row: if the quarantine insert
//! fails too, the error is returned and the batch is spooled and retried.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::insert::insert_rows;
use super::LedgerRow;

/// What one isolating insert did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub written: u64,
    pub quarantined: u64,
}

/// Whether the database refused the rows themselves (as opposed to being
/// unreachable, overloaded or shutting down).
pub fn is_refusal(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| matches!(code.get(..2), Some("22" | "23" | "54"))),
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

/// Inserts `rows`; a batch the database refuses is split in halves until
/// each refused row stands alone and is quarantined. `Err` only when the
/// database is unavailable (then nothing can be said about which rows are
/// stored; re-inserting them all is harmless: `ON CONFLICT DO NOTHING`).
pub async fn insert_isolating(pool: &PgPool, rows: &[LedgerRow]) -> Result<Stored, sqlx::Error> {
    let mut stored = Stored::default();
    let mut pending = vec![(0, rows.len())];
    while let Some((from, to)) = pending.pop() {
        if from == to {
            continue;
        }
        match insert_rows(pool, &rows[from..to]).await {
            Ok(()) => stored.written += (to - from) as u64,
            Err(err) if is_refusal(&err) && to - from == 1 => {
                quarantine(pool, &rows[from], &err).await?;
                tracing::error!(request_id = %rows[from].request_id, error = %err,
                    "ledger row refused by the database; quarantined");
                stored.quarantined += 1;
            }
            Err(err) if is_refusal(&err) => {
                let middle = from + (to - from) / 2;
                pending.push((middle, to));
                pending.push((from, middle));
            }
            Err(err) => return Err(err),
        }
    }
    Ok(stored)
}

async fn quarantine(pool: &PgPool, row: &LedgerRow, err: &sqlx::Error) -> Result<(), sqlx::Error> {
    let sqlstate = match err {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    };
    // serde_json writes NUL as the escape `\u0000`: the text holds no NUL.
    let raw = serde_json::to_string(row).unwrap_or_else(|e| format!("unserializable row: {e}"));
    sqlx::query(
        "INSERT INTO ledger_quarantine (request_id, sqlstate, reason, raw_row)
         VALUES ($1, $2, $3, $4) ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(row.request_id.replace('\0', "\u{FFFD}"))
    .bind(sqlstate)
    .bind(err.to_string().replace('\0', "\u{FFFD}"))
    .bind(raw)
    .execute(pool)
    .await?;
    // Its spend is unknown to the ledger: spend control keeps its hold
    // (`[limits] max_hold_secs`), so it keeps counting.
    Ok(())
}

/// One quarantined row, as `GET /admin/ledger/quarantine` shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct QuarantinedRow {
    pub id: i64,
    pub request_id: String,
    /// The database's SQLSTATE, e.g. `23514` (check violation).
    pub sqlstate: Option<String>,
    /// The database's message.
    pub reason: String,
    /// The refused row as JSON text, exactly as the gateway built it.
    pub raw_row: String,
    pub quarantined_at: DateTime<Utc>,
}

/// Newest first; at most `limit`.
pub async fn list(pool: &PgPool, limit: i64) -> Result<Vec<QuarantinedRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, request_id, sqlstate, reason, raw_row, quarantined_at FROM ledger_quarantine
         ORDER BY quarantined_at DESC, id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM ledger_quarantine")
        .fetch_one(pool)
        .await
}
