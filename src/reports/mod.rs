//! Reading the ledger back: `GET /v1/usage/records` (the caller's tenant
//! only) and `GET /admin/usage/records` (every tenant).
//!
//! Records are served newest first with keyset pagination on
//! `(started_at, id)`, so a page costs the same at any depth. Filters are
//! bound parameters (`QueryBuilder::push_bind`), never text spliced into SQL.
//! The tenant filter of the client endpoint comes from the authenticated key,
//! never from a parameter.

mod params;

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sqlx::{Postgres, QueryBuilder};

use crate::app::AppState;
use crate::error::ApiError;
use crate::ledger::{LedgerRow, COLUMNS};
use crate::proxy::authorization;
pub use params::{Cursor, RecordsQuery};

pub async fn tenant_records(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let principal = state.auth.authenticate(authorization(&headers)).await?;
    let mut query = RecordsQuery::parse(query.as_deref().unwrap_or(""), false)?;
    query.tenants = vec![principal.tenant.to_string()];
    records(&state, &query).await
}

pub async fn admin_records(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    crate::admin::require_admin(&state, &headers)?;
    let query = RecordsQuery::parse(query.as_deref().unwrap_or(""), true)?;
    records(&state, &query).await
}

async fn records(state: &AppState, query: &RecordsQuery) -> Result<Response, ApiError> {
    let mut rows = fetch_records(&state.pool, query).await?;
    let has_more = rows.len() > query.limit;
    rows.truncate(query.limit);
    let next_cursor = if has_more {
        rows.last().and_then(|row| {
            row.id.map(|id| {
                Cursor {
                    started_at: row.started_at,
                    id,
                }
                .encode()
            })
        })
    } else {
        None
    };
    Ok(Json(serde_json::json!({
        "object": "list",
        "data": rows,
        "has_more": has_more,
        "next_cursor": next_cursor,
    }))
    .into_response())
}

/// One page plus one row (to know whether more follow).
pub async fn fetch_records(
    pool: &sqlx::PgPool,
    query: &RecordsQuery,
) -> Result<Vec<LedgerRow>, sqlx::Error> {
    let mut sql: QueryBuilder<Postgres> = QueryBuilder::new(format!(
        "SELECT {COLUMNS} FROM usage_ledger WHERE started_at >= "
    ));
    sql.push_bind(query.start_time);
    sql.push(" AND started_at < ").push_bind(query.end_time);
    if !query.tenants.is_empty() {
        sql.push(" AND tenant_id = ANY(")
            .push_bind(&query.tenants)
            .push(")");
    }
    if !query.models.is_empty() {
        sql.push(" AND model = ANY(")
            .push_bind(&query.models)
            .push(")");
    }
    if !query.api_key_ids.is_empty() {
        sql.push(" AND api_key_id = ANY(")
            .push_bind(&query.api_key_ids)
            .push(")");
    }
    if !query.statuses.is_empty() {
        sql.push(" AND status = ANY(")
            .push_bind(&query.statuses)
            .push(")");
    }
    if let Some(cursor) = &query.after {
        sql.push(" AND (started_at, id) < (")
            .push_bind(cursor.started_at)
            .push(", ")
            .push_bind(cursor.id)
            .push(")");
    }
    sql.push(" ORDER BY started_at DESC, id DESC LIMIT ")
        .push_bind(i64::try_from(query.limit + 1).unwrap_or(i64::MAX));
    sql.build_query_as::<LedgerRow>().fetch_all(pool).await
}
