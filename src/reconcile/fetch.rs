//! Fetching the provider's view of a range of UTC days: the Usage API's
//! completions in daily and hourly buckets, the Costs API's daily buckets,
//! each followed page by page (`has_more` / `next_page`) and stored page by
//! page ([`store`]); then every day of the range is marked fetched for each
//! source, with the time its first page was asked for (so a day's mark
//! never claims more than the provider had said by then).

use std::time::Instant;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::client::{FetchError, OrgClient, Width};
use super::store;

/// Daily buckets per Usage API page (its maximum) and per Costs API page.
const DAILY_PAGE_BUCKETS: u32 = 31;
/// Pages one source may take for one range (a provider that never stops
/// paging is an error, not a loop).
const MAX_PAGES: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum FetchFailed {
    #[error(transparent)]
    Provider(#[from] FetchError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Paging(String),
    #[error("stopped")]
    Stopped,
}

/// What one fetch did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Fetched {
    pub days: u32,
    pub pages: u64,
    /// HTTP requests made (retries included).
    pub requests: u64,
    /// Provider rows inserted, changed or removed (0 when nothing changed).
    pub usage_rows_changed: u64,
    pub cost_rows_changed: u64,
    pub millis: u64,
}

/// Midnight UTC of `day` as unix seconds.
pub fn day_start(day: NaiveDate) -> i64 {
    day.and_hms_opt(0, 0, 0)
        .map_or(0, |t| t.and_utc().timestamp())
}

/// The days `from..=to`.
pub fn days(from: NaiveDate, to: NaiveDate) -> Vec<NaiveDate> {
    from.iter_days().take_while(|d| *d <= to).collect()
}

/// Fetches `from..=to` (UTC days) into the provider tables.
pub async fn fetch_range(
    pool: &PgPool,
    client: &OrgClient,
    from: NaiveDate,
    to: NaiveDate,
    hourly_page_buckets: u32,
    stop: &CancellationToken,
) -> Result<Fetched, FetchFailed> {
    let started = Instant::now();
    let requests_before = client.requests();
    let range = days(from, to);
    let start = day_start(from);
    let end = day_start(to) + 86_400;
    let mut fetched = Fetched {
        days: range.len() as u32,
        ..Fetched::default()
    };
    for (width, limit, source) in [
        (Width::Day, DAILY_PAGE_BUCKETS, "usage_1d"),
        (Width::Hour, hourly_page_buckets, "usage_1h"),
    ] {
        let asked_at = Utc::now();
        let (pages, changed) = page_through(stop, |page| async move {
            let page_data = client
                .usage_page(width, start, end, limit, page.as_deref())
                .await?;
            let changed = store::store_usage(pool, width, &page_data.data).await?;
            Ok((page_data.has_more, page_data.next_page, changed))
        })
        .await?;
        fetched.pages += pages;
        fetched.usage_rows_changed += changed;
        store::mark_fetched(pool, source, &range, asked_at).await?;
    }
    let asked_at = Utc::now();
    let (pages, changed) = page_through(stop, |page| async move {
        let page_data = client
            .costs_page(start, end, DAILY_PAGE_BUCKETS, page.as_deref())
            .await?;
        let changed = store::store_costs(pool, &page_data.data).await?;
        Ok((page_data.has_more, page_data.next_page, changed))
    })
    .await?;
    fetched.pages += pages;
    fetched.cost_rows_changed += changed;
    store::mark_fetched(pool, "costs", &range, asked_at).await?;
    fetched.requests = client.requests() - requests_before;
    fetched.millis = started.elapsed().as_millis() as u64;
    Ok(fetched)
}

/// Follows `next_page` until `has_more` is false; (pages, rows changed).
async fn page_through<F, Fut>(
    stop: &CancellationToken,
    mut one: F,
) -> Result<(u64, u64), FetchFailed>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<(bool, Option<String>, u64), FetchFailed>>,
{
    let mut page: Option<String> = None;
    let mut pages = 0u64;
    let mut changed = 0u64;
    loop {
        if stop.is_cancelled() {
            return Err(FetchFailed::Stopped);
        }
        let (has_more, next, rows) = one(page.clone()).await?;
        pages += 1;
        changed += rows;
        if !has_more {
            return Ok((pages, changed));
        }
        match next {
            Some(next) if Some(&next) != page.as_ref() && (pages as usize) < MAX_PAGES => {
                page = Some(next);
            }
            _ => {
                return Err(FetchFailed::Paging(
                    "the provider said has_more without a new next_page".into(),
                ))
            }
        }
    }
}

/// The days a scheduled fetch covers: the last `refetch_days`, today
/// included.
pub fn recent_days(now: DateTime<Utc>, refetch_days: u32) -> (NaiveDate, NaiveDate) {
    let today = now.date_naive();
    let from = today - Duration::days(i64::from(refetch_days.max(1)) - 1);
    (from, today)
}
