//! `format=csv`: every row of the filter, newest first, streamed as it is
//! read, without letting one export hold a database connection for ever.
//!
//! A producer task reads the rows with sqlx `fetch` (a cursor over one
//! statement, one snapshot) from the exports pool and hands the body CSV
//! chunks through a small channel, so memory stays at a few chunks whatever
//! the row count and a slow client slows the read instead of filling memory.
//!
//! Bounds (`[database]`): at most `exports_per_tenant` exports of one tenant
//! (the admin API counts as one holder) run at once, more are answered 429
//! `rate_limit_exceeded` with `retry-after`; a client that reads nothing for
//! `export_stall_secs` is cut, and an export ends after `export_max_secs`
//! (also its `statement_timeout`). Either way the producer stops, its
//! connection goes back to the pool, and the body ends with an error (the
//! client sees a truncated chunked response, never a complete-looking file).
//! An error before the first chunk is answered with the usual envelope.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use sqlx::PgPool;
use tokio::sync::mpsc;

use super::{csv, records_sql, RecordsQuery};
use crate::error::{ApiError, ErrorSource};
use crate::ledger::{LedgerRow, COLUMNS};
use crate::state::{AppState, Slot};

/// The export allowance of the admin API (tenant ids cannot contain `:`).
pub const ADMIN_HOLDER: &str = "admin:";

/// Bytes per body chunk of a CSV export.
const CSV_CHUNK: usize = 64 * 1024;

/// Seconds a refused export is told to wait.
const RETRY_AFTER_SECS: &str = "5";

#[derive(Clone, Copy)]
struct Bounds {
    stall: Duration,
    total: Duration,
}

pub async fn records_csv(state: &AppState, query: RecordsQuery, holder: &str) -> Response {
    let Some(slot) = state.exports.try_take(holder) else {
        return with_retry_after(too_many_exports(state.config.database.exports_per_tenant));
    };
    let bounds = Bounds {
        stall: Duration::from_secs(state.config.database.export_stall_secs),
        total: Duration::from_secs(state.config.database.export_max_secs),
    };
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, sqlx::Error>>(4);
    let complete = Arc::new(AtomicBool::new(false));
    state.tasks.spawn(produce(
        state.exports_pool.clone(),
        query,
        tx,
        slot,
        bounds,
        complete.clone(),
    ));
    let first = match rx.recv().await {
        Some(Ok(chunk)) => chunk,
        Some(Err(err)) => return with_retry_after(ApiError::from(err)),
        None => return ApiError::internal("CSV export stopped before its header").into_response(),
    };
    csv_response(first, rx, complete)
}

fn csv_response(
    first: Bytes,
    rx: mpsc::Receiver<Result<Bytes, sqlx::Error>>,
    complete: Arc<AtomicBool>,
) -> Response {
    // The channel closing ends the body cleanly only if the producer said
    // the export is complete; otherwise the body ends with an error.
    let rest = futures_util::stream::unfold(Some(rx), move |rx| {
        let complete = complete.clone();
        async move {
            let mut rx = rx?;
            match rx.recv().await {
                Some(Ok(chunk)) => Some((Ok(chunk), Some(rx))),
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "CSV export failed mid-stream; cutting the body");
                    Some((Err(std::io::Error::other(err)), None))
                }
                None if complete.load(Ordering::Acquire) => None,
                None => Some((Err(std::io::Error::other("CSV export was cut")), None)),
            }
        }
    });
    let body = futures_util::stream::once(async move { Ok(first) }).chain(rest);
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8; header=present"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"usage-records.csv\""),
    );
    response
}

fn too_many_exports(limit: u32) -> ApiError {
    ApiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        kind: "requests",
        code: Some("rate_limit_exceeded".into()),
        param: None,
        message: format!(
            "At most {limit} CSV exports may run at once; retry when one has finished."
        ),
        source: ErrorSource::Client,
        // The caller sets `retry-after` itself.
        retry_after: None,
    }
}

/// 429 and 503 say when to come back.
fn with_retry_after(error: ApiError) -> Response {
    let retry = error.retryable();
    let mut response = error.into_response();
    if retry {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        );
    }
    response
}

/// Why the producer stopped early.
enum Stop {
    ClientGone,
    Stalled,
}

async fn produce(
    pool: PgPool,
    query: RecordsQuery,
    tx: mpsc::Sender<Result<Bytes, sqlx::Error>>,
    slot: Slot,
    bounds: Bounds,
    complete: Arc<AtomicBool>,
) {
    let _slot = slot; // held until the export ends
    match tokio::time::timeout(bounds.total, stream_rows(&pool, &query, &tx, bounds.stall)).await {
        Ok(Ok(())) => complete.store(true, Ordering::Release),
        Ok(Err(Stop::ClientGone)) => {}
        Ok(Err(Stop::Stalled)) => tracing::warn!(
            stall_secs = bounds.stall.as_secs(),
            "CSV export cut: its client read nothing"
        ),
        Err(_) => tracing::warn!(
            max_secs = bounds.total.as_secs(),
            "CSV export cut: it ran too long"
        ),
    }
}

async fn stream_rows(
    pool: &PgPool,
    query: &RecordsQuery,
    tx: &mpsc::Sender<Result<Bytes, sqlx::Error>>,
    stall: Duration,
) -> Result<(), Stop> {
    let send = |item| async move {
        match tokio::time::timeout(stall, tx.send(item)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Stop::ClientGone),
            Err(_) => Err(Stop::Stalled),
        }
    };
    let mut sql = records_sql(COLUMNS, query, None);
    let mut rows = sql.build_query_as::<LedgerRow>().fetch(pool);
    let mut buf = String::with_capacity(CSV_CHUNK + 4096);
    csv::write_header(&mut buf);
    // The first chunk goes out after the first row (or the end), so the
    // handler learns quickly whether the query runs at all.
    let mut sent_first = false;
    while let Some(row) = rows.next().await {
        match row {
            Ok(row) => csv::write_row(&mut buf, &row),
            Err(err) => {
                send(Err(err)).await?;
                return Err(Stop::ClientGone);
            }
        }
        if !sent_first || buf.len() >= CSV_CHUNK {
            sent_first = true;
            let chunk = std::mem::replace(&mut buf, String::with_capacity(CSV_CHUNK + 4096));
            send(Ok(Bytes::from(chunk))).await?;
        }
    }
    if !buf.is_empty() {
        send(Ok(Bytes::from(buf))).await?;
    }
    Ok(())
}
