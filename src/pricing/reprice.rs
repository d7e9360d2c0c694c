//! `POST /admin/reprice`: prices ledger rows that were left unpriced, with
//! the version in force at each row's start as the table stands now.
//!
//! Only rows with `cost IS NULL` and usage (`usage_source` `reported` or
//! `recovered`) are read, and only those are written: a row that has a cost
//! is never touched, so a backdated price cannot change what was billed.
//! The cost comes from [`cost::cost`] in Rust (exact decimals, the row's
//! served `service_tier`), never from SQL arithmetic. Rows that still cannot
//! be priced keep `cost` null, with `unpriced_reason` updated when the reason
//! changed.
//!
//! Work is done in batches of [`BATCH`] rows, one transaction each, walking
//! `(started_at, id)` upwards. Each batch locks its rows with `FOR UPDATE
//! SKIP LOCKED`, and the update re-checks `cost IS NULL`, so two reprices
//! running at once price each row once and report only what they changed.
//! Running it again finds nothing new to price: it is idempotent.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;

use super::{cost, load_versions, PriceTable};
use crate::usage::Usage;

/// Rows per transaction: small enough to hold locks briefly, large enough
/// that round trips do not dominate.
pub const BATCH: i64 = 500;

/// What a reprice did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RepriceReport {
    /// Rows that got a cost.
    pub priced: u64,
    /// The sum of the costs they got (exact; rows of every currency).
    pub cost_added: Decimal,
    /// Unpriced rows with usage in the range that still have no price.
    pub still_unpriced: u64,
}

#[derive(sqlx::FromRow)]
struct Candidate {
    id: i64,
    model: Option<String>,
    service_tier: Option<String>,
    started_at: DateTime<Utc>,
    input_tokens: i64,
    cached_tokens: i64,
    output_tokens: i64,
    reasoning_tokens: i64,
    total_tokens: i64,
    unpriced_reason: Option<String>,
    currency: String,
}

/// The new state of one row.
struct Change {
    id: i64,
    cost: Option<Decimal>,
    price_id: Option<i64>,
    reason: Option<String>,
    currency: String,
}

/// Reprices the unpriced rows with `start <= started_at < end`, of `models`
/// (public ids) when given.
pub async fn reprice(
    pool: &PgPool,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    models: Option<&[String]>,
) -> Result<RepriceReport, sqlx::Error> {
    // Read from the database rather than a replica's cache, so a price just
    // written through another replica is certainly seen.
    let table = PriceTable::from_versions(load_versions(pool).await?);
    let mut report = RepriceReport::default();
    // Keyset position; identity ids start at 1, so (start, 0) skips nothing.
    let mut after: (DateTime<Utc>, i64) = (start, 0);
    loop {
        let mut tx = pool.begin().await?;
        let candidates: Vec<Candidate> = sqlx::query_as(
            "SELECT id, model, service_tier, started_at, input_tokens, cached_tokens,
                    output_tokens, reasoning_tokens, total_tokens, unpriced_reason, currency
             FROM usage_ledger
             WHERE cost IS NULL
               AND usage_source IN ('reported', 'recovered')
               AND (started_at, id) > ($1, $2) AND started_at < $3
               AND ($4::text[] IS NULL OR model = ANY($4))
             ORDER BY started_at, id
             LIMIT $5
             FOR UPDATE SKIP LOCKED",
        )
        .bind(after.0)
        .bind(after.1)
        .bind(end)
        .bind(models)
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = candidates.last() else {
            tx.commit().await?;
            break;
        };
        after = (last.started_at, last.id);
        let full_batch = candidates.len() as i64 == BATCH;

        let mut changes = Vec::new();
        for row in &candidates {
            let change = price_row(&table, row);
            if change.cost.is_none() {
                report.still_unpriced += 1;
                if change.reason == row.unpriced_reason && change.currency == row.currency {
                    continue;
                }
            }
            changes.push(change);
        }
        let (priced, added) = apply(&mut tx, &changes).await?;
        tx.commit().await?;
        report.priced += priced;
        report.cost_added = report
            .cost_added
            .checked_add(added)
            .ok_or_else(sum_overflow)?;
        if !full_batch {
            break;
        }
    }
    report.cost_added = report.cost_added.normalize();
    Ok(report)
}

/// The row priced with the version in force at its start.
fn price_row(table: &PriceTable, row: &Candidate) -> Change {
    let unpriced = |reason: String, currency: String| Change {
        id: row.id,
        cost: None,
        price_id: None,
        reason: Some(reason),
        currency,
    };
    let version = row
        .model
        .as_deref()
        .and_then(|model| table.lookup(model, row.started_at));
    let Some(version) = version else {
        return unpriced("no_price".to_owned(), row.currency.clone());
    };
    let Some(sheet) = &version.sheet else {
        return unpriced("no_price".to_owned(), row.currency.clone());
    };
    let usage = Usage {
        input_tokens: row.input_tokens,
        cached_tokens: row.cached_tokens,
        output_tokens: row.output_tokens,
        reasoning_tokens: row.reasoning_tokens,
        total_tokens: row.total_tokens,
    };
    match cost::cost(sheet, &usage, row.service_tier.as_deref()) {
        Ok(value) => Change {
            id: row.id,
            cost: Some(value),
            price_id: Some(version.id),
            reason: None,
            currency: version.currency.clone(),
        },
        Err(why) => unpriced(why.reason(), version.currency.clone()),
    }
}

/// Writes a batch in one statement; returns how many rows got a cost and
/// the sum of what they got, as the database confirms it.
async fn apply(
    tx: &mut sqlx::PgConnection,
    changes: &[Change],
) -> Result<(u64, Decimal), sqlx::Error> {
    if changes.is_empty() {
        return Ok((0, Decimal::ZERO));
    }
    let ids: Vec<i64> = changes.iter().map(|c| c.id).collect();
    let costs: Vec<Option<Decimal>> = changes.iter().map(|c| c.cost).collect();
    let price_ids: Vec<Option<i64>> = changes.iter().map(|c| c.price_id).collect();
    let reasons: Vec<Option<String>> = changes.iter().map(|c| c.reason.clone()).collect();
    let currencies: Vec<String> = changes.iter().map(|c| c.currency.clone()).collect();
    let written: Vec<Option<Decimal>> = sqlx::query_scalar(
        "UPDATE usage_ledger AS u
         SET cost = v.cost, price_id = v.price_id, unpriced_reason = v.reason,
             currency = v.currency
         FROM UNNEST($1::int8[], $2::numeric[], $3::int8[], $4::text[], $5::text[])
              AS v(id, cost, price_id, reason, currency)
         WHERE u.id = v.id AND u.cost IS NULL
         RETURNING u.cost",
    )
    .bind(ids)
    .bind(costs)
    .bind(price_ids)
    .bind(reasons)
    .bind(currencies)
    .fetch_all(&mut *tx)
    .await?;
    let mut priced = 0;
    let mut added = Decimal::ZERO;
    for cost in written.into_iter().flatten() {
        priced += 1;
        added = added.checked_add(cost).ok_or_else(sum_overflow)?;
    }
    Ok((priced, added))
}

/// Unreachable in practice (a cost column holds at most 10^12); an error
/// rather than a panic all the same.
fn sum_overflow() -> sqlx::Error {
    sqlx::Error::Protocol("the repriced total does not fit an exact decimal".to_owned())
}
