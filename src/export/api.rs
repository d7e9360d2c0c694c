//! `GET /admin/exports` (per sink: configured, paused, cursor, lag in rows
//! and seconds, last error, rows by state and the first rows waiting or
//! refused), `POST /admin/exports/{sink}/pause|resume|replay` and
//! `PUT|GET /admin/tenants/{tenant}` (the tenant's billing ids). Admin token.
//! Never shows a sink's URL or credential.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;

use super::outbox::{self, Billing, Cursor, Listed};
use crate::admin::require_admin;
use crate::config::exports::{ExportsConfig, SINKS};
use crate::error::ApiError;
use crate::state::AppState;

/// Rows listed per sink in the status.
pub const LISTED_MAX: i64 = 50;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/exports", get(status))
        .route("/admin/exports/{sink}/pause", post(pause))
        .route("/admin/exports/{sink}/resume", post(resume))
        .route("/admin/exports/{sink}/replay", post(replay))
        .route("/admin/tenants/{tenant}", get(get_tenant).put(put_tenant))
}

/// One sink's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct SinkStatus {
    pub sink: String,
    /// This gateway has the sink configured.
    pub configured: bool,
    pub paused: bool,
    /// `txid:seq` in the outbox; null before the sink's first step.
    pub cursor: Option<String>,
    /// Outbox entries not passed yet (counted up to 10,000,000).
    pub lag_rows: i64,
    /// Age of the oldest of them.
    pub lag_seconds: f64,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub failures_in_a_row: i32,
    /// Rows the sink acknowledged.
    pub sent: i64,
    /// Rows waiting for the tenant's billing id in this sink.
    pub waiting_for_mapping: i64,
    /// Rows not final yet (no cost, or a background response running).
    pub unpriced: i64,
    /// Rows the sink refused, with its reason (listed).
    pub refused: i64,
    /// Stripe: rows older than its 35-day window (listed, never sent).
    pub outside_window: i64,
    /// Rows whose cost changed after they were sent (listed).
    pub changed_after_export: i64,
    /// The oldest rows not sent, with why.
    pub listed: Vec<Listed>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExportStatusList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<SinkStatus>,
}

/// Every sink this gateway has configured or the database knows.
pub async fn statuses(
    pool: &PgPool,
    config: &ExportsConfig,
) -> Result<Vec<SinkStatus>, sqlx::Error> {
    let mut out = Vec::new();
    for sink in SINKS {
        let cursor = outbox::cursor(pool, sink).await?;
        let configured = config.sink(sink).is_some();
        if cursor.is_none() && !configured {
            continue;
        }
        let job = crate::jobs::status(pool, &super::job_name(sink)).await?;
        let (lag_rows, lag_seconds) = match cursor {
            Some(at) => outbox::lag(pool, sink, at, super::LAG_CAP).await?,
            None => (0, None),
        };
        let counts = outbox::counts(pool, sink).await?;
        let count = |state: &str| counts.get(state).copied().unwrap_or(0);
        out.push(SinkStatus {
            sink: sink.to_owned(),
            configured,
            paused: job.as_ref().is_some_and(|j| j.paused),
            cursor: cursor.map(|c: Cursor| c.to_string()),
            lag_rows,
            lag_seconds: lag_seconds.unwrap_or(0.0),
            last_success_at: job.as_ref().and_then(|j| j.last_success_at),
            last_error: job.as_ref().and_then(|j| j.last_error.clone()),
            last_error_at: job.as_ref().and_then(|j| j.last_error_at),
            failures_in_a_row: job.as_ref().map_or(0, |j| j.failures_in_a_row),
            sent: count("sent"),
            waiting_for_mapping: count("waiting_for_mapping"),
            unpriced: count("unpriced"),
            refused: count("refused"),
            outside_window: count("outside_window"),
            changed_after_export: count("changed_after_export"),
            listed: outbox::listed(pool, sink, LISTED_MAX).await?,
        });
    }
    Ok(out)
}

/// Billing export status per sink (CONTRACT §13).
#[utoipa::path(get, path = "/admin/exports", tag = "admin", operation_id = "export_status", security(("admin" = [])),
    responses(
        (status = 200, description = "Each sink's cursor, lag, last error and waiting rows.", body = ExportStatusList),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled.", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
    ))]
pub async fn status(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let data = statuses(&state.pool, &state.config.exports).await?;
    Ok(Json(ExportStatusList {
        object: "list".into(),
        data,
    })
    .into_response())
}

fn known_sink(sink: &str) -> Result<&'static str, ApiError> {
    SINKS.into_iter().find(|s| *s == sink).ok_or_else(|| {
        ApiError::not_found(format!("No sink '{sink}' (one of {}).", SINKS.join(", ")))
    })
}

/// The answer to pause, resume and replay.
#[derive(Debug, Serialize, ToSchema)]
pub struct SinkControl {
    pub sink: String,
    pub paused: bool,
    /// Replay: ledger rows queued again for the sink.
    pub queued: Option<u64>,
    pub from: Option<DateTime<Utc>>,
}

async fn set_paused(
    state: &AppState,
    headers: &HeaderMap,
    sink: &str,
    paused: bool,
) -> Result<Response, ApiError> {
    require_admin(state, headers)?;
    let sink = known_sink(sink)?;
    crate::jobs::set_paused(&state.pool, &super::job_name(sink), paused).await?;
    super::wakers().wake_all();
    Ok(Json(SinkControl {
        sink: sink.into(),
        paused,
        queued: None,
        from: None,
    })
    .into_response())
}

/// Pauses a sink's delivery on every replica (rows keep queuing).
#[utoipa::path(post, path = "/admin/exports/{sink}/pause", tag = "admin", operation_id = "pause_export", security(("admin" = [])),
    params(("sink" = String, Path, description = "openmeter, lago, stripe or webhook.")),
    responses(
        (status = 200, description = "Paused.", body = SinkControl),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled.", body = crate::error::Envelope),
        (status = 404, description = "No such sink.", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
    ))]
pub async fn pause(
    State(state): State<Arc<AppState>>,
    Path(sink): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    set_paused(&state, &headers, &sink, true).await
}

/// Resumes a paused sink.
#[utoipa::path(post, path = "/admin/exports/{sink}/resume", tag = "admin", operation_id = "resume_export", security(("admin" = [])),
    params(("sink" = String, Path, description = "openmeter, lago, stripe or webhook.")),
    responses(
        (status = 200, description = "Resumed.", body = SinkControl),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled.", body = crate::error::Envelope),
        (status = 404, description = "No such sink.", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
    ))]
pub async fn resume(
    State(state): State<Arc<AppState>>,
    Path(sink): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    set_paused(&state, &headers, &sink, false).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// Unix seconds or RFC 3339: rows that started at or after it are sent
    /// again (the sink deduplicates what it holds).
    #[schema(value_type = String)]
    pub from: serde_json::Value,
}

/// Sends a sink every ledger row from a time on again, in ledger order.
#[utoipa::path(post, path = "/admin/exports/{sink}/replay", tag = "admin", operation_id = "replay_export", security(("admin" = [])),
    params(("sink" = String, Path, description = "openmeter, lago, stripe or webhook.")),
    request_body = ReplayBody,
    responses(
        (status = 200, description = "Queued.", body = SinkControl),
        (status = 400, description = "The body is not JSON.", body = crate::error::Envelope),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled.", body = crate::error::Envelope),
        (status = 404, description = "No such sink.", body = crate::error::Envelope),
        (status = 422, description = "`from` is missing or not a time.", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
    ))]
pub async fn replay(
    State(state): State<Arc<AppState>>,
    Path(sink): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let sink = known_sink(&sink)?;
    let body: ReplayBody = serde_json::from_slice(&body).map_err(ApiError::invalid_json)?;
    let text = match &body.from {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    let from = crate::reports::params::parse_time("from", &text).map_err(|_| {
        ApiError::unprocessable(
            "from",
            "'from' must be unix seconds or an RFC 3339 timestamp.",
        )
    })?;
    let queued = outbox::replay(&state.pool, sink, from).await?;
    super::wakers().wake_all();
    let paused = crate::jobs::status(&state.pool, &super::job_name(sink))
        .await?
        .is_some_and(|j| j.paused);
    Ok(Json(SinkControl {
        sink: sink.into(),
        paused,
        queued: Some(queued),
        from: Some(from),
    })
    .into_response())
}

/// `PUT /admin/tenants/{tenant}` body and `GET` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantBody {
    pub billing: Billing,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantBilling {
    pub tenant: String,
    pub billing: Billing,
    pub updated_at: DateTime<Utc>,
}

/// A path's tenant id, checked before it reaches the database (a NUL or a
/// 1 MB id is a 422, not a database error).
fn check_tenant_id(tenant: &str) -> Result<(), ApiError> {
    if crate::auth::valid_tenant(tenant) {
        return Ok(());
    }
    Err(ApiError::unprocessable(
        "tenant",
        "A tenant id is 1-64 letters, digits, '.', '_' or '-'.",
    ))
}

/// Sets (replaces) a tenant's ids in the billing systems. Rows waiting for
/// a mapping go out once it is set.
#[utoipa::path(put, path = "/admin/tenants/{tenant}", tag = "admin", operation_id = "put_tenant_billing", security(("admin" = [])),
    params(("tenant" = String, Path, description = "Tenant id.")),
    request_body = TenantBody,
    responses(
        (status = 200, description = "The tenant's billing ids.", body = TenantBilling),
        (status = 400, description = "The body is not JSON.", body = crate::error::Envelope),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled.", body = crate::error::Envelope),
        (status = 422, description = "A bad tenant id or billing id, named in `param`.", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
    ))]
pub async fn put_tenant(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    check_tenant_id(&tenant)?;
    let body: TenantBody = serde_json::from_slice(&body).map_err(ApiError::invalid_json)?;
    let b = &body.billing;
    for (field, value) in [
        ("billing.openmeter_subject", &b.openmeter_subject),
        (
            "billing.lago_external_subscription_id",
            &b.lago_external_subscription_id,
        ),
        ("billing.stripe_customer_id", &b.stripe_customer_id),
    ] {
        if value
            .as_ref()
            .is_some_and(|v| v.is_empty() || v.len() > 256 || v.chars().any(char::is_control))
        {
            return Err(ApiError::unprocessable(
                field,
                format!("'{field}' must be 1-256 printable characters or null."),
            ));
        }
    }
    let updated_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO tenant_billing (tenant_id, openmeter_subject, lago_external_subscription_id,
                 stripe_customer_id)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant_id) DO UPDATE SET openmeter_subject = EXCLUDED.openmeter_subject,
             lago_external_subscription_id = EXCLUDED.lago_external_subscription_id,
             stripe_customer_id = EXCLUDED.stripe_customer_id, updated_at = now()
         RETURNING updated_at",
    )
    .bind(&tenant)
    .bind(&b.openmeter_subject)
    .bind(&b.lago_external_subscription_id)
    .bind(&b.stripe_customer_id)
    .fetch_one(&state.pool)
    .await?;
    super::wakers().wake_all();
    Ok(Json(TenantBilling {
        tenant,
        billing: body.billing,
        updated_at,
    })
    .into_response())
}

/// A tenant's ids in the billing systems.
#[utoipa::path(get, path = "/admin/tenants/{tenant}", tag = "admin", operation_id = "get_tenant_billing", security(("admin" = [])),
    params(("tenant" = String, Path, description = "Tenant id.")),
    responses(
        (status = 200, description = "The tenant's billing ids.", body = TenantBilling),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled.", body = crate::error::Envelope),
        (status = 404, description = "No billing ids are set for the tenant.", body = crate::error::Envelope),
        (status = 422, description = "The tenant id is not one (1-64 letters, digits, '.', '_' or '-').", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
    ))]
pub async fn get_tenant(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    check_tenant_id(&tenant)?;
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        billing: Billing,
        updated_at: DateTime<Utc>,
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT openmeter_subject, lago_external_subscription_id, stripe_customer_id, updated_at
         FROM tenant_billing WHERE tenant_id = $1",
    )
    .bind(&tenant)
    .fetch_optional(&state.pool)
    .await?;
    let Some(Row {
        billing,
        updated_at,
    }) = row
    else {
        return Err(ApiError::not_found(format!(
            "No billing ids for tenant '{tenant}'."
        )));
    };
    Ok(Json(TenantBilling {
        tenant,
        billing,
        updated_at,
    })
    .into_response())
}
