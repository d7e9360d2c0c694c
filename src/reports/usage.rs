//! `GET /v1/usage` and `GET /admin/usage`: usage and cost per UTC time
//! bucket, optionally grouped (CONTRACT §6, shaped like OpenAI's
//! organization Usage API).
//!
//! A page's time range is cut into segments, each summed from the cheapest
//! source that holds it exactly (migration `0002_reports.sql`):
//!
//! * whole UTC days, for 1d buckets: `usage_rollup_daily_fleet` when the
//!   query neither filters nor groups by tenant or key, else
//!   `usage_rollup_daily`;
//! * whole UTC hours, for 1h and 1d buckets: `usage_rollup_hourly`;
//! * the rest (the edges of an unaligned range, every 1m bucket, and every
//!   query grouped by `end_user`, which no rollup keeps): the ledger rows.
//!
//! The rollups are kept equal to the ledger by triggers in the writing
//! transaction, and the segments are disjoint and summed in one statement
//! (one snapshot), so a report equals the sum of its ledger rows exactly.
//! Results are split by currency as well as by the requested fields: costs
//! in different currencies are never added together.
//!
//! Never does: read another tenant's rows on the client endpoint (the tenant
//! filter comes from the key), or splice request text into SQL (values are
//! bound; column names come from [`GroupBy::column`]).

use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{PgPool, Postgres, QueryBuilder, Row};

use super::params::{encode_page, BucketWidth, GroupBy, UsageQuery};

/// Where a segment's sums come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Ledger,
    Hourly,
    Daily,
    DailyFleet,
}

impl Source {
    fn table(self) -> &'static str {
        match self {
            Self::Ledger => "usage_ledger",
            Self::Hourly => "usage_rollup_hourly",
            Self::Daily => "usage_rollup_daily",
            Self::DailyFleet => "usage_rollup_daily_fleet",
        }
    }

    /// The rollup's own bucket length; `None` for the ledger.
    fn grain(self) -> Option<i64> {
        match self {
            Self::Ledger => None,
            Self::Hourly => Some(3_600),
            Self::Daily | Self::DailyFleet => Some(86_400),
        }
    }
}

/// `[from, to)` in unix seconds, summed from `source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub source: Source,
    pub from: i64,
    pub to: i64,
}

/// The rollups a query may read, coarsest first. A rollup serves a bucket
/// width only if its grain divides it, and only if it keeps every field the
/// query groups or filters by.
fn rollups(query: &UsageQuery) -> Vec<Source> {
    if query.group_by.contains(&GroupBy::EndUser) {
        return Vec::new();
    }
    let fleet_wide = query.tenants.is_empty()
        && query.api_key_ids.is_empty()
        && !query.group_by.contains(&GroupBy::Tenant)
        && !query.group_by.contains(&GroupBy::ApiKeyId);
    match query.bucket_width {
        BucketWidth::Minute => Vec::new(),
        BucketWidth::Hour => vec![Source::Hourly],
        BucketWidth::Day if fleet_wide => vec![Source::DailyFleet, Source::Hourly],
        BucketWidth::Day => vec![Source::Daily, Source::Hourly],
    }
}

/// Cuts `[from, to)` into the whole grains of the first source, and the
/// remainders at both ends into the next sources' grains, down to ledger
/// rows. The segments are disjoint and cover the range exactly.
pub fn plan(from: i64, to: i64, sources: &[Source]) -> Vec<Segment> {
    let mut segments = Vec::new();
    cut(from, to, sources, &mut segments);
    segments
}

fn cut(from: i64, to: i64, sources: &[Source], out: &mut Vec<Segment>) {
    if from >= to {
        return;
    }
    let Some((&source, finer)) = sources.split_first() else {
        out.push(Segment {
            source: Source::Ledger,
            from,
            to,
        });
        return;
    };
    let grain = source.grain().unwrap_or(1);
    let whole_from = from + (grain - from.rem_euclid(grain)) % grain;
    let whole_to = to - to.rem_euclid(grain);
    if whole_from >= whole_to {
        cut(from, to, finer, out);
        return;
    }
    cut(from, whole_from, finer, out);
    out.push(Segment {
        source,
        from: whole_from,
        to: whole_to,
    });
    cut(whole_to, to, finer, out);
}

/// One page of the report, as the API returns it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsagePage {
    pub object: &'static str,
    pub data: Vec<UsageBucket>,
    pub has_more: bool,
    pub next_page: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageBucket {
    pub object: &'static str,
    pub start_time: i64,
    pub end_time: i64,
    pub results: Vec<UsageResult>,
}

/// Group fields not grouped by are null, as in OpenAI's API; `tenant`
/// appears on the admin endpoint only.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageResult {
    pub object: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<Option<String>>,
    pub api_key_id: Option<String>,
    pub model: Option<String>,
    pub service_tier: Option<String>,
    pub status: Option<String>,
    pub end_user: Option<String>,
    pub num_model_requests: i64,
    pub input_tokens: i64,
    pub input_cached_tokens: i64,
    pub input_uncached_tokens: i64,
    pub output_tokens: i64,
    pub output_reasoning_tokens: i64,
    pub cost: Cost,
    pub unpriced_requests: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Cost {
    /// Exact decimal string, shortest form: the sum of the priced rows.
    pub value: String,
    pub currency: String,
}

/// The report page `query` asks for. `admin` adds the `tenant` field.
pub async fn usage_page(
    pool: &PgPool,
    query: &UsageQuery,
    admin: bool,
) -> Result<UsagePage, sqlx::Error> {
    let width = query.bucket_width;
    let step = width.seconds();
    let first = query.page.unwrap_or_else(|| width.floor(query.start_time));
    // Bucket starts of this page; `first < end_time` holds (parse checks it).
    let starts: Vec<i64> = (0..query.limit as i64)
        .map(|i| first + i * step)
        .take_while(|start| *start < query.end_time)
        .collect();
    let after_last = first + starts.len() as i64 * step;
    let has_more = after_last < query.end_time;
    let from = query.start_time.max(first);
    let to = query.end_time.min(after_last);

    let mut data: Vec<UsageBucket> = starts
        .iter()
        .map(|&start| UsageBucket {
            object: "bucket",
            // The first and last buckets are clipped to the range asked for.
            start_time: start.max(query.start_time),
            end_time: (start + step).min(query.end_time),
            results: Vec::new(),
        })
        .collect();
    for (bucket, result) in fetch(pool, query, from, to, admin).await? {
        let index = usize::try_from((bucket - first) / step).unwrap_or(usize::MAX);
        if let Some(slot) = data.get_mut(index) {
            slot.results.push(result);
        }
    }
    Ok(UsagePage {
        object: "page",
        data,
        has_more,
        next_page: has_more.then(|| encode_page(after_last)),
    })
}

/// Bucket start (unix seconds) and result, ordered by bucket then group.
async fn fetch(
    pool: &PgPool,
    query: &UsageQuery,
    from: i64,
    to: i64,
    admin: bool,
) -> Result<Vec<(i64, UsageResult)>, sqlx::Error> {
    let segments = plan(from, to, &rollups(query));
    let mut sql = report_sql(query, &segments)?;
    // Unnamed statement: planned for these very bounds and filters. A cached
    // generic plan cannot know that one range holds an hour of one tenant
    // and the next a month of the fleet.
    let rows = sql.build().persistent(false).fetch_all(pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let group = |field: GroupBy| -> Result<Option<String>, sqlx::Error> {
            if query.group_by.contains(&field) {
                row.try_get(field.name())
            } else {
                Ok(None)
            }
        };
        let bucket: DateTime<Utc> = row.try_get("bucket")?;
        let input: i64 = row.try_get("input_tokens")?;
        let cached: i64 = row.try_get("cached_tokens")?;
        let cost: Decimal = row.try_get("cost")?;
        let result = UsageResult {
            object: "usage.result",
            tenant: if admin {
                Some(group(GroupBy::Tenant)?)
            } else {
                None
            },
            api_key_id: group(GroupBy::ApiKeyId)?,
            model: group(GroupBy::Model)?,
            service_tier: group(GroupBy::ServiceTier)?,
            status: group(GroupBy::Status)?,
            end_user: group(GroupBy::EndUser)?,
            num_model_requests: row.try_get("requests")?,
            input_tokens: input,
            input_cached_tokens: cached,
            input_uncached_tokens: input - cached,
            output_tokens: row.try_get("output_tokens")?,
            output_reasoning_tokens: row.try_get("reasoning_tokens")?,
            cost: Cost {
                value: cost.normalize().to_string(),
                currency: row.try_get("currency")?,
            },
            unpriced_requests: row.try_get("unpriced_requests")?,
        };
        out.push((bucket.timestamp(), result));
    }
    Ok(out)
}

fn time(seconds: i64) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::from_timestamp(seconds, 0)
        .ok_or_else(|| sqlx::Error::Protocol(format!("time {seconds} out of range")))
}

/// The sums per segment, added up per bucket, group and currency in one
/// statement.
pub fn report_sql(
    query: &UsageQuery,
    segments: &[Segment],
) -> Result<QueryBuilder<'static, Postgres>, sqlx::Error> {
    let width = TimeDelta::seconds(query.bucket_width.seconds());
    let mut sql = QueryBuilder::new("SELECT bucket");
    for field in &query.group_by {
        sql.push(", ").push(field.name());
    }
    sql.push(
        ", currency, sum(requests)::int8 AS requests, sum(input_tokens)::int8 AS input_tokens, \
         sum(cached_tokens)::int8 AS cached_tokens, sum(output_tokens)::int8 AS output_tokens, \
         sum(reasoning_tokens)::int8 AS reasoning_tokens, sum(cost) AS cost, \
         sum(unpriced_requests)::int8 AS unpriced_requests FROM (",
    );
    for (i, segment) in segments.iter().enumerate() {
        if i > 0 {
            sql.push(" UNION ALL ");
        }
        push_segment(&mut sql, query, segment, width)?;
    }
    sql.push(") AS segments GROUP BY bucket");
    for field in &query.group_by {
        sql.push(", ").push(field.name());
    }
    // Groups whose rows were all deleted or moved leave zero rows behind in
    // the rollups; a ledger sum would not list them.
    sql.push(", currency HAVING sum(requests) > 0 ORDER BY bucket");
    for field in &query.group_by {
        sql.push(", ").push(field.name()).push(" NULLS FIRST");
    }
    sql.push(", currency");
    Ok(sql)
}

fn push_segment(
    sql: &mut QueryBuilder<'static, Postgres>,
    query: &UsageQuery,
    segment: &Segment,
    width: TimeDelta,
) -> Result<(), sqlx::Error> {
    let ledger = segment.source == Source::Ledger;
    let time_column = if ledger { "started_at" } else { "bucket" };
    // date_bin on timestamptz counts from the given origin in absolute time:
    // UTC buckets whatever the session's TimeZone.
    sql.push("SELECT date_bin(")
        .push_bind(width)
        .push(", ")
        .push(time_column)
        .push(", TIMESTAMPTZ '1970-01-01 00:00:00+00') AS bucket");
    for field in &query.group_by {
        sql.push(", ")
            .push(field.column())
            .push(" AS ")
            .push(field.name());
    }
    if ledger {
        sql.push(
            ", currency, count(*) AS requests, sum(input_tokens) AS input_tokens, \
             sum(cached_tokens) AS cached_tokens, sum(output_tokens) AS output_tokens, \
             sum(reasoning_tokens) AS reasoning_tokens, coalesce(sum(cost), 0) AS cost, \
             count(*) FILTER (WHERE cost IS NULL) AS unpriced_requests",
        );
    } else {
        sql.push(
            ", currency, sum(requests) AS requests, sum(input_tokens) AS input_tokens, \
             sum(cached_tokens) AS cached_tokens, sum(output_tokens) AS output_tokens, \
             sum(reasoning_tokens) AS reasoning_tokens, sum(cost) AS cost, \
             sum(unpriced_requests) AS unpriced_requests",
        );
    }
    sql.push(" FROM ")
        .push(segment.source.table())
        .push(" WHERE ")
        .push(time_column)
        .push(" >= ")
        .push_bind(time(segment.from)?)
        .push(" AND ")
        .push(time_column)
        .push(" < ")
        .push_bind(time(segment.to)?);
    push_filter(sql, "tenant_id", &query.tenants);
    push_filter(sql, "api_key_id", &query.api_key_ids);
    push_filter(sql, "model", &query.models);
    push_filter(sql, "status", &query.statuses);
    // By position: in a rollup, `bucket` would name the input column, not
    // the binned output.
    sql.push(" GROUP BY 1");
    for position in 0..=query.group_by.len() {
        sql.push(", ").push((position + 2).to_string());
    }
    Ok(())
}

/// `column = $n` for one value (an index range the planner can order by),
/// `column = ANY($n)` for several; nothing for none.
pub fn push_filter(sql: &mut QueryBuilder<'static, Postgres>, column: &str, values: &[String]) {
    match values {
        [] => {}
        [one] => {
            sql.push(" AND ")
                .push(column)
                .push(" = ")
                .push_bind(one.clone());
        }
        many => {
            sql.push(" AND ")
                .push(column)
                .push(" = ANY(")
                .push_bind(many.to_vec())
                .push(")");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const H: i64 = 3_600;
    const D: i64 = 86_400;

    fn covers(segments: &[Segment], from: i64, to: i64) {
        let mut at = from;
        for s in segments {
            assert_eq!(s.from, at, "{segments:?}");
            assert!(s.to > s.from);
            if let Some(grain) = s.source.grain() {
                assert_eq!(s.from % grain, 0);
                assert_eq!(s.to % grain, 0);
            }
            at = s.to;
        }
        assert_eq!(at, to);
    }

    #[test]
    fn plans_cover_the_range_exactly_with_aligned_rollups() {
        let day = [Source::Daily, Source::Hourly];
        // Unaligned at both ends: ledger, hours, days, hours, ledger.
        let (from, to) = (10 * D + 5 * H + 17, 40 * D + 3 * H + 5);
        let plan_ = plan(from, to, &day);
        covers(&plan_, from, to);
        let sources: Vec<Source> = plan_.iter().map(|s| s.source).collect();
        assert_eq!(
            sources,
            [
                Source::Ledger,
                Source::Hourly,
                Source::Daily,
                Source::Hourly,
                Source::Ledger
            ]
        );
        // Aligned: one rollup segment.
        assert_eq!(plan(D, 31 * D, &day).len(), 1);
        // Shorter than an hour: the ledger only.
        let short = plan(D + 10, D + 20, &day);
        assert_eq!(short.len(), 1);
        assert_eq!(short[0].source, Source::Ledger);
        // No rollups: one ledger segment.
        covers(&plan(17, 99_999, &[]), 17, 99_999);
        // Every small range, every alignment.
        for from in (0..3 * D).step_by(1_337) {
            for len in [1, 59, H - 1, H, H + 1, D - 1, D, D + 1, 2 * D + 7] {
                covers(&plan(from, from + len, &day), from, from + len);
                covers(&plan(from, from + len, &[Source::Hourly]), from, from + len);
            }
        }
    }
}
