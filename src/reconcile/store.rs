//! The SQL of the provider's side: store one page of buckets so that the
//! same answer twice changes nothing (groups upserted only when a number
//! differs, groups a bucket no longer has deleted), record when each day was
//! fetched, keep discovered keys, and read it all back for the report.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use sqlx::{PgPool, Postgres, Transaction};

use super::client::{Bucket, CostResult, UsageResult, Width};

/// One usage group of one bucket, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct UsageKey {
    model: Option<String>,
    api_key_id: Option<String>,
    project_id: Option<String>,
    service_tier: Option<String>,
    batch: Option<bool>,
}

fn bucket_time(unix: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(unix, 0).unwrap_or_default()
}

/// Stores a page of usage buckets in one transaction; how many rows it
/// inserted, changed or deleted.
pub async fn store_usage(
    pool: &PgPool,
    width: Width,
    buckets: &[Bucket<UsageResult>],
) -> Result<u64, sqlx::Error> {
    let mut starts = Vec::new();
    let mut models = Vec::new();
    let mut keys = Vec::new();
    let mut projects = Vec::new();
    let mut tiers = Vec::new();
    let mut batches = Vec::new();
    let mut counts: [Vec<i64>; 4] = Default::default();
    for bucket in buckets {
        // A group named twice in one bucket is summed (one row per key).
        let mut groups: HashMap<UsageKey, [i64; 4]> = HashMap::new();
        for r in &bucket.results {
            let key = UsageKey {
                model: r.model.clone(),
                api_key_id: r.api_key_id.clone(),
                project_id: r.project_id.clone(),
                service_tier: r.service_tier.clone(),
                batch: r.batch,
            };
            let sums = groups.entry(key).or_default();
            for (sum, v) in sums.iter_mut().zip([
                r.num_model_requests,
                r.input_tokens,
                r.input_cached_tokens,
                r.output_tokens,
            ]) {
                *sum = sum.saturating_add(v);
            }
        }
        for (key, sums) in groups {
            starts.push(bucket_time(bucket.start_time));
            models.push(key.model);
            keys.push(key.api_key_id);
            projects.push(key.project_id);
            tiers.push(key.service_tier);
            batches.push(key.batch);
            for (column, v) in counts.iter_mut().zip(sums) {
                column.push(v);
            }
        }
    }
    let bucket_starts: Vec<DateTime<Utc>> =
        buckets.iter().map(|b| bucket_time(b.start_time)).collect();
    let mut tx = pool.begin().await?;
    let upserted = sqlx::query(
        "INSERT INTO provider_usage AS p (bucket_width, bucket_start, model, api_key_id,
             project_id, service_tier, batch, num_model_requests, input_tokens,
             input_cached_tokens, output_tokens)
         SELECT $1, u.* FROM unnest($2::timestamptz[], $3::text[], $4::text[], $5::text[],
             $6::text[], $7::bool[], $8::int8[], $9::int8[], $10::int8[], $11::int8[]) AS u
         ORDER BY 1, 2, 3, 4, 5, 6
         ON CONFLICT ON CONSTRAINT provider_usage_key DO UPDATE SET
             num_model_requests = EXCLUDED.num_model_requests,
             input_tokens = EXCLUDED.input_tokens,
             input_cached_tokens = EXCLUDED.input_cached_tokens,
             output_tokens = EXCLUDED.output_tokens,
             changed_at = clock_timestamp(), revisions = p.revisions + 1
         WHERE (p.num_model_requests, p.input_tokens, p.input_cached_tokens, p.output_tokens)
             IS DISTINCT FROM (EXCLUDED.num_model_requests, EXCLUDED.input_tokens,
                               EXCLUDED.input_cached_tokens, EXCLUDED.output_tokens)",
    )
    .bind(width.as_str())
    .bind(&starts)
    .bind(&models)
    .bind(&keys)
    .bind(&projects)
    .bind(&tiers)
    .bind(&batches)
    .bind(&counts[0])
    .bind(&counts[1])
    .bind(&counts[2])
    .bind(&counts[3])
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let deleted = delete_vanished_usage(
        &mut tx,
        width,
        &bucket_starts,
        &starts,
        &models,
        &keys,
        &projects,
        &tiers,
        &batches,
    )
    .await?;
    tx.commit().await?;
    Ok(upserted + deleted)
}

type StoredKey = (
    DateTime<Utc>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<bool>,
);

/// Deletes the groups the page's buckets no longer have. The stored keys
/// are read and compared here (a hash set), because `IS NOT DISTINCT FROM`
/// cannot be hashed and an anti-join on it is quadratic; what vanished is
/// usually nothing.
#[allow(clippy::too_many_arguments)]
async fn delete_vanished_usage(
    tx: &mut Transaction<'_, Postgres>,
    width: Width,
    bucket_starts: &[DateTime<Utc>],
    starts: &[DateTime<Utc>],
    models: &[Option<String>],
    keys: &[Option<String>],
    projects: &[Option<String>],
    tiers: &[Option<String>],
    batches: &[Option<bool>],
) -> Result<u64, sqlx::Error> {
    let fetched: std::collections::HashSet<StoredKey> = (0..starts.len())
        .map(|i| {
            (
                starts[i],
                models[i].clone(),
                keys[i].clone(),
                projects[i].clone(),
                tiers[i].clone(),
                batches[i],
            )
        })
        .collect();
    let stored: Vec<StoredKey> = sqlx::query_as(
        "SELECT bucket_start, model, api_key_id, project_id, service_tier, batch
         FROM provider_usage WHERE bucket_width = $1 AND bucket_start = ANY($2::timestamptz[])",
    )
    .bind(width.as_str())
    .bind(bucket_starts)
    .fetch_all(&mut **tx)
    .await?;
    let mut deleted = 0;
    for (start, model, key, project, tier, batch) in stored {
        let stored_key = (start, model, key, project, tier, batch);
        if fetched.contains(&stored_key) {
            continue;
        }
        let (start, model, key, project, tier, batch) = stored_key;
        deleted += sqlx::query(
            "DELETE FROM provider_usage
             WHERE bucket_width = $1 AND bucket_start = $2 AND model IS NOT DISTINCT FROM $3
               AND api_key_id IS NOT DISTINCT FROM $4 AND project_id IS NOT DISTINCT FROM $5
               AND service_tier IS NOT DISTINCT FROM $6 AND batch IS NOT DISTINCT FROM $7",
        )
        .bind(width.as_str())
        .bind(start)
        .bind(model)
        .bind(key)
        .bind(project)
        .bind(tier)
        .bind(batch)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    }
    Ok(deleted)
}

/// Stores a page of cost buckets in one transaction; rows changed.
pub async fn store_costs(
    pool: &PgPool,
    buckets: &[Bucket<CostResult>],
) -> Result<u64, sqlx::Error> {
    type CostKey = (i64, Option<String>, Option<String>, String);
    let mut groups: HashMap<CostKey, Decimal> = HashMap::new();
    for bucket in buckets {
        for r in &bucket.results {
            let key = (
                bucket.start_time,
                r.line_item.clone(),
                r.project_id.clone(),
                r.currency.clone(),
            );
            *groups.entry(key).or_default() += r.amount;
        }
    }
    let mut starts = Vec::new();
    let mut items = Vec::new();
    let mut projects = Vec::new();
    let mut currencies = Vec::new();
    let mut amounts = Vec::new();
    for ((start, item, project, currency), amount) in groups {
        starts.push(bucket_time(start));
        items.push(item);
        projects.push(project);
        currencies.push(currency);
        amounts.push(amount);
    }
    let bucket_starts: Vec<DateTime<Utc>> =
        buckets.iter().map(|b| bucket_time(b.start_time)).collect();
    let mut tx = pool.begin().await?;
    let upserted = sqlx::query(
        "INSERT INTO provider_costs AS p (bucket_start, line_item, project_id, currency, amount)
         SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::numeric[])
         ORDER BY 1, 2, 3, 4
         ON CONFLICT ON CONSTRAINT provider_costs_key DO UPDATE SET
             amount = EXCLUDED.amount, changed_at = clock_timestamp(), revisions = p.revisions + 1
         WHERE p.amount <> EXCLUDED.amount",
    )
    .bind(&starts)
    .bind(&items)
    .bind(&projects)
    .bind(&currencies)
    .bind(&amounts)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let deleted = sqlx::query(
        "DELETE FROM provider_costs p
         WHERE p.bucket_start = ANY($1::timestamptz[])
           AND NOT EXISTS (
             SELECT 1 FROM unnest($2::timestamptz[], $3::text[], $4::text[], $5::text[])
                 AS k(s, i, pr, c)
             WHERE k.s = p.bucket_start AND k.i IS NOT DISTINCT FROM p.line_item
               AND k.pr IS NOT DISTINCT FROM p.project_id AND k.c = p.currency)",
    )
    .bind(&bucket_starts)
    .bind(&starts)
    .bind(&items)
    .bind(&projects)
    .bind(&currencies)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(upserted + deleted)
}

/// The provider's answers for these days, from `source`, reflect its state
/// at `fetched_at` or later. A usage source also keeps each day's totals
/// (so the report compares a day's hourly and daily sums without reading
/// every hourly row).
pub async fn mark_fetched(
    pool: &PgPool,
    source: &str,
    days: &[NaiveDate],
    fetched_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let width = match source {
        "usage_1d" => Some("1d"),
        "usage_1h" => Some("1h"),
        _ => None,
    };
    sqlx::query(
        "INSERT INTO provider_fetches (day, source, fetched_at, requests, input_tokens,
             cached_tokens, output_tokens)
         SELECT d, $2, $3, coalesce(t.r, 0), coalesce(t.i, 0), coalesce(t.c, 0), coalesce(t.o, 0)
         FROM unnest($1::date[]) AS d
         LEFT JOIN (
             SELECT (bucket_start AT TIME ZONE 'UTC')::date AS day, sum(num_model_requests) AS r,
                    sum(input_tokens) AS i, sum(input_cached_tokens) AS c, sum(output_tokens) AS o
             FROM provider_usage
             WHERE bucket_width = $4 AND bucket_start >= $5::date AND bucket_start < $6::date + 1
             GROUP BY 1) AS t ON t.day = d
         ORDER BY d
         ON CONFLICT (day, source) DO UPDATE SET fetched_at = EXCLUDED.fetched_at,
             requests = EXCLUDED.requests, input_tokens = EXCLUDED.input_tokens,
             cached_tokens = EXCLUDED.cached_tokens, output_tokens = EXCLUDED.output_tokens",
    )
    .bind(days)
    .bind(source)
    .bind(fetched_at)
    .bind(width)
    .bind(days.iter().min())
    .bind(days.iter().max())
    .execute(pool)
    .await?;
    Ok(())
}

/// Per day of the range: the earliest of its sources' last fetches, when
/// every source has one.
pub async fn fetched_days(
    pool: &PgPool,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<HashMap<NaiveDate, DateTime<Utc>>, sqlx::Error> {
    let rows: Vec<(NaiveDate, DateTime<Utc>)> = sqlx::query_as(
        "SELECT day, min(fetched_at) FROM provider_fetches
         WHERE day BETWEEN $1 AND $2
         GROUP BY day HAVING count(*) = 3",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// The last time any day was fetched.
pub async fn last_fetch(pool: &PgPool) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT max(fetched_at) FROM provider_fetches")
        .fetch_one(pool)
        .await
}

/// Days whose hourly buckets did not add up to their daily bucket when
/// last fetched.
pub async fn hourly_disagreements(
    pool: &PgPool,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<NaiveDate>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT d.day FROM provider_fetches d
         JOIN provider_fetches h ON h.day = d.day AND h.source = 'usage_1h'
         WHERE d.source = 'usage_1d' AND d.day BETWEEN $1 AND $2
           AND (d.requests, d.input_tokens, d.cached_tokens, d.output_tokens)
               IS DISTINCT FROM (h.requests, h.input_tokens, h.cached_tokens, h.output_tokens)",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
}

/// One daily usage group as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredUsage {
    pub day: NaiveDate,
    pub model: Option<String>,
    pub api_key_id: Option<String>,
    pub project_id: Option<String>,
    pub service_tier: Option<String>,
    pub batch: Option<bool>,
    pub requests: i64,
    pub input_tokens: i64,
    pub cached_tokens: i64,
    pub output_tokens: i64,
}

pub async fn daily_usage(
    pool: &PgPool,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<StoredUsage>, sqlx::Error> {
    sqlx::query_as(
        "SELECT (bucket_start AT TIME ZONE 'UTC')::date AS day, model, api_key_id, project_id,
                service_tier, batch, num_model_requests AS requests, input_tokens,
                input_cached_tokens AS cached_tokens, output_tokens
         FROM provider_usage
         WHERE bucket_width = '1d' AND bucket_start >= $1::date AND bucket_start < $2::date + 1",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredCost {
    pub day: NaiveDate,
    pub line_item: Option<String>,
    pub project_id: Option<String>,
    pub amount: Decimal,
}

/// Daily costs in USD (the ledger's currency).
pub async fn daily_costs(
    pool: &PgPool,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<StoredCost>, sqlx::Error> {
    sqlx::query_as(
        "SELECT (bucket_start AT TIME ZONE 'UTC')::date AS day, line_item, project_id, amount
         FROM provider_costs
         WHERE currency = 'usd' AND bucket_start >= $1::date AND bucket_start < $2::date + 1",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
}

/// The ledger's side at its finest grain.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LedgerDaily {
    pub day: NaiveDate,
    pub upstream: String,
    pub model: Option<String>,
    pub service_tier: Option<String>,
    pub requests: i64,
    pub input_tokens: i64,
    pub cached_tokens: i64,
    pub output_tokens: i64,
    pub cost: Decimal,
    pub unpriced_requests: i64,
}

/// The rollup's USD rows of these upstreams (zero rows left by deletes are
/// skipped).
pub async fn ledger_daily(
    pool: &PgPool,
    from: NaiveDate,
    to: NaiveDate,
    upstreams: &[String],
) -> Result<Vec<LedgerDaily>, sqlx::Error> {
    sqlx::query_as(
        "SELECT day, upstream, model, service_tier, requests, input_tokens, cached_tokens,
                output_tokens, cost, unpriced_requests
         FROM ledger_upstream_daily
         WHERE day BETWEEN $1 AND $2 AND upstream = ANY($3) AND currency = 'usd'
           AND requests <> 0",
    )
    .bind(from)
    .bind(to)
    .bind(upstreams)
    .fetch_all(pool)
    .await
}

/// Keys found through the Projects API, by upstream.
pub async fn discovered_keys(
    pool: &PgPool,
) -> Result<Vec<(String, String, Option<String>)>, sqlx::Error> {
    sqlx::query_as("SELECT upstream, api_key_id, project_id FROM provider_keys ORDER BY upstream")
        .fetch_all(pool)
        .await
}

pub async fn save_discovered(
    tx: &mut Transaction<'_, Postgres>,
    upstream: &str,
    api_key_id: &str,
    project_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO provider_keys (upstream, api_key_id, project_id) VALUES ($1, $2, $3)
         ON CONFLICT (upstream) DO UPDATE SET api_key_id = EXCLUDED.api_key_id,
             project_id = EXCLUDED.project_id, discovered_at = clock_timestamp()
         WHERE (provider_keys.api_key_id, provider_keys.project_id)
             IS DISTINCT FROM (EXCLUDED.api_key_id, EXCLUDED.project_id)",
    )
    .bind(upstream)
    .bind(api_key_id)
    .bind(project_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
