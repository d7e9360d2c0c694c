//! `/admin/limits/...` (admin token) and `GET /v1/key` (tenant key): limit
//! settings with their live status (CONTRACT §8). [`set`], [`remove`],
//! [`status_of`] and [`statuses`] are shared with `tollgate limits`. Reads and writes go
//! through [`super::store`]; a change here invalidates this replica's cached
//! set of limited scopes at once (others reload it within a second), and
//! reloads its set of alerting scopes. A webhook URL is admin data: `GET
//! /v1/key` shows a scope's alert thresholds, never its URL.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::body;
use super::rate::{self, Bucket};
use super::store::{self, LimitRow, Scope};
use crate::admin::require_admin;
use crate::error::ApiError;
use crate::state::AppState;

/// A scope's settings and live status.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScopeStatus {
    /// `tenant` or `key`.
    pub scope: &'static str,
    pub id: String,
    pub budget: Option<BudgetStatus>,
    pub rate: RateStatus,
    /// Budget threshold alerts; null when none are set.
    pub alerts: Option<AlertsStatus>,
}

/// A scope's alert settings.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AlertsStatus {
    /// Fractions of the budget amount, ascending (decimal strings).
    pub thresholds: Vec<String>,
    /// Where the events go. Admin answers only: absent in `GET /v1/key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
}

/// Amounts are decimal strings in the ledger's currency.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BudgetStatus {
    pub amount: String,
    pub period: &'static str,
    pub mode: &'static str,
    /// The ledger's cost sum for the period.
    pub spent: String,
    /// Estimates of the requests in flight, as the replicas last reported
    /// them (at least every second while they serve the scope).
    pub reserved: String,
    /// amount − spent − reserved (may be negative after an overrun).
    pub remaining: String,
    /// What the replicas' slices hold of the budget, reserved included
    /// (the rest of it is what they may still admit without asking).
    pub leased: String,
    /// Null for `total`.
    pub resets_at: Option<DateTime<Utc>>,
    /// The period's excess of actual over estimated cost.
    pub overrun: String,
}

#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct RateStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<LimitStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<LimitStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrent_requests: Option<LimitStatus>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LimitStatus {
    pub limit: i64,
    pub remaining: i64,
    /// Seconds until the allowance is whole again (0 for concurrency).
    pub reset_seconds: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LimitList {
    pub object: &'static str,
    pub data: Vec<ScopeStatus>,
}

/// `GET /v1/key`: the calling key and the limits that apply to it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyStatus {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub limits: KeyLimits,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyLimits {
    pub key: Option<ScopeStatus>,
    pub tenant: Option<ScopeStatus>,
}

async fn status(pool: &PgPool, row: &LimitRow) -> Result<ScopeStatus, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let now = store::db_now(&mut conn).await?;
    let s = &row.settings;
    let period = s.budget.as_ref().map(|b| b.period);
    let live = store::live(&mut conn, row.scope, &row.id, period, now).await?;
    let budget = s.budget.as_ref().map(|b| BudgetStatus {
        amount: b.amount.to_string(),
        period: b.period.as_str(),
        mode: b.mode.as_str(),
        spent: live.spent.to_string(),
        reserved: live.reserved.to_string(),
        remaining: (b.amount - live.spent - live.reserved)
            .normalize()
            .to_string(),
        leased: live.leased.to_string(),
        resets_at: b.period.resets_at(now),
        overrun: live.overrun.to_string(),
    });
    let at = row.bucket_at.unwrap_or(DateTime::<Utc>::MIN_UTC);
    let bucket = |limit: Option<i64>, level| {
        limit.map(|limit| {
            let level = Bucket { limit, level }.level_at(at, now);
            LimitStatus {
                limit,
                remaining: level
                    .floor()
                    .max(rust_decimal::Decimal::ZERO)
                    .mantissa()
                    .try_into()
                    .unwrap_or(0),
                reset_seconds: rate::reset_seconds(limit, level),
            }
        })
    };
    Ok(ScopeStatus {
        scope: row.scope.as_str(),
        id: row.id.clone(),
        budget,
        rate: RateStatus {
            requests_per_minute: bucket(s.requests_per_minute, row.rpm_level),
            tokens_per_minute: bucket(s.tokens_per_minute, row.tpm_level),
            concurrent_requests: s.concurrent_requests.map(|limit| LimitStatus {
                limit,
                remaining: (limit - live.open).max(0),
                reset_seconds: 0,
            }),
        },
        alerts: s.alerts.as_ref().map(|a| AlertsStatus {
            thresholds: a.thresholds.iter().map(ToString::to_string).collect(),
            webhook_url: Some(a.webhook_url.clone()),
        }),
    })
}

/// A scope's settings and live status; `None` without limits.
pub async fn status_of(
    pool: &PgPool,
    scope: Scope,
    id: &str,
) -> Result<Option<ScopeStatus>, ApiError> {
    match store::get(pool, scope, id).await? {
        Some(row) => Ok(Some(status(pool, &row).await?)),
        None => Ok(None),
    }
}

/// Every scope with limits, with its live status.
pub async fn statuses(pool: &PgPool) -> Result<Vec<ScopeStatus>, ApiError> {
    let mut data = Vec::new();
    for row in store::list(pool).await? {
        data.push(status(pool, &row).await?);
    }
    Ok(data)
}

/// The tenant must be well-formed and known (it has had a key).
async fn check_tenant(pool: &PgPool, tenant: &str) -> Result<(), ApiError> {
    let known = crate::auth::valid_tenant(tenant)
        && sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)")
            .bind(tenant)
            .fetch_one(pool)
            .await?;
    if known {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            "tenant",
            format!("Unknown tenant '{tenant}'."),
        ))
    }
}

async fn check_key(pool: &PgPool, key_id: &str) -> Result<(), ApiError> {
    let known: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys WHERE id = $1)")
        .bind(key_id)
        .fetch_one(pool)
        .await?;
    if known {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("No key with id '{key_id}'.")).with_param("key_id"))
    }
}

async fn check_scope(pool: &PgPool, scope: Scope, id: &str) -> Result<(), ApiError> {
    match scope {
        Scope::Tenant => check_tenant(pool, id).await,
        Scope::Key => check_key(pool, id).await,
    }
}

/// Replaces a scope's limits with a CONTRACT §8 body: the one write path of
/// the admin API and `tollgate limits set`. Nothing changes on error.
/// Alerts need a gateway that can sign webhooks (`can_sign`).
pub async fn set(
    pool: &PgPool,
    scope: Scope,
    id: &str,
    bytes: &[u8],
    can_sign: bool,
) -> Result<ScopeStatus, ApiError> {
    let settings = body::parse(bytes)?;
    if settings.alerts.is_some() && !can_sign {
        return Err(ApiError::unprocessable(
            "alerts",
            "This gateway has no alerts signing secret ([alerts] signing_secret or \
             TOLLGATE_ALERTS_SECRET): webhooks are signed, so alerts cannot be set.",
        ));
    }
    check_scope(pool, scope, id).await?;
    store::put(pool, scope, id, &settings).await?;
    status_of(pool, scope, id)
        .await?
        .ok_or_else(|| ApiError::internal("the limits just stored are gone"))
}

/// Removes a scope's limits; 404 when it had none.
pub async fn remove(pool: &PgPool, scope: Scope, id: &str) -> Result<(), ApiError> {
    if store::delete(pool, scope, id).await? {
        Ok(())
    } else {
        Err(no_limits(scope, id))
    }
}

fn no_limits(scope: Scope, id: &str) -> ApiError {
    ApiError::not_found(format!("No limits are set for {} '{id}'.", scope.as_str()))
}

async fn put_limits(
    state: &AppState,
    headers: &HeaderMap,
    scope: Scope,
    id: &str,
    bytes: &[u8],
) -> Result<Response, ApiError> {
    require_admin(state, headers)?;
    let can_sign = !state.config.alerts.signing_secret.is_empty();
    let status = set(&state.pool, scope, id, bytes, can_sign).await?;
    changed(state).await;
    if status.alerts.is_some() {
        // Spend may already be past a threshold.
        state.alerts.touch(scope, id);
    }
    Ok(Json(status).into_response())
}

/// This replica's caches follow a change at once.
async fn changed(state: &AppState) {
    state.limits.invalidate();
    if let Err(err) = state.alerts.reload(&state.pool).await {
        tracing::warn!(error = %err, "alerting scopes not reloaded; the detector retries within a second");
    }
}

async fn get_limits(
    state: &AppState,
    headers: &HeaderMap,
    scope: Scope,
    id: &str,
) -> Result<Response, ApiError> {
    require_admin(state, headers)?;
    match status_of(&state.pool, scope, id).await? {
        Some(status) => Ok(Json(status).into_response()),
        None => Err(no_limits(scope, id)),
    }
}

async fn delete_limits(
    state: &AppState,
    headers: &HeaderMap,
    scope: Scope,
    id: &str,
) -> Result<Response, ApiError> {
    require_admin(state, headers)?;
    remove(&state.pool, scope, id).await?;
    changed(state).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Sets (replaces) a tenant's limits.
#[utoipa::path(put, path = "/admin/limits/tenants/{tenant}", tag = "admin", security(("admin" = [])),
    params(("tenant" = String, Path, description = "Tenant id.")),
    request_body(content = serde_json::Value, description = "CONTRACT §8 limits body: `budget` {amount (decimal string), period, mode}, `rate` {requests_per_minute, tokens_per_minute, concurrent_requests}, `alerts` {thresholds (1-10 decimal strings in (0, 10]), webhook_url (http or https, at most 2048 characters)}; `alerts` needs a `budget` and a gateway with a signing secret."),
    responses(
        (status = 200, description = "The limits and their live status.", body = ScopeStatus),
        (status = 400, description = "The body is not JSON.", body = crate::error::Envelope),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled.", body = crate::error::Envelope),
        (status = 422, description = "Invalid input, the field named in `param`; nothing changed.", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
    ))]
pub async fn put_tenant(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    put_limits(&state, &headers, Scope::Tenant, &tenant, &body).await
}

/// A tenant's limits and live status.
#[utoipa::path(get, path = "/admin/limits/tenants/{tenant}", tag = "admin", security(("admin" = [])),
    params(("tenant" = String, Path, description = "Tenant id.")),
    responses(
        (status = 200, description = "The limits and their live status.", body = ScopeStatus),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled.", body = crate::error::Envelope),
        (status = 404, description = "No limits are set.", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
    ))]
pub async fn get_tenant(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    get_limits(&state, &headers, Scope::Tenant, &tenant).await
}

/// Removes a tenant's limits.
#[utoipa::path(delete, path = "/admin/limits/tenants/{tenant}", tag = "admin", security(("admin" = [])),
    params(("tenant" = String, Path, description = "Tenant id.")),
    responses(
        (status = 204, description = "Removed."),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled.", body = crate::error::Envelope),
        (status = 404, description = "No limits are set.", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
    ))]
pub async fn delete_tenant(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    delete_limits(&state, &headers, Scope::Tenant, &tenant).await
}

/// Sets (replaces) a key's limits.
#[utoipa::path(put, path = "/admin/limits/keys/{key_id}", tag = "admin", security(("admin" = [])),
    params(("key_id" = String, Path, description = "Key id.")),
    request_body(content = serde_json::Value, description = "CONTRACT §8 limits body."),
    responses(
        (status = 200, description = "The limits and their live status.", body = ScopeStatus),
        (status = 400, description = "The body is not JSON.", body = crate::error::Envelope),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled.", body = crate::error::Envelope),
        (status = 404, description = "No such key.", body = crate::error::Envelope),
        (status = 422, description = "Invalid input, the field named in `param`; nothing changed.", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
    ))]
pub async fn put_key(
    State(state): State<Arc<AppState>>,
    Path(key_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    put_limits(&state, &headers, Scope::Key, &key_id, &body).await
}

/// A key's limits and live status.
#[utoipa::path(get, path = "/admin/limits/keys/{key_id}", tag = "admin", security(("admin" = [])),
    params(("key_id" = String, Path, description = "Key id.")),
    responses(
        (status = 200, description = "The limits and their live status.", body = ScopeStatus),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled.", body = crate::error::Envelope),
        (status = 404, description = "No limits are set.", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
    ))]
pub async fn get_key(
    State(state): State<Arc<AppState>>,
    Path(key_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    get_limits(&state, &headers, Scope::Key, &key_id).await
}

/// Removes a key's limits.
#[utoipa::path(delete, path = "/admin/limits/keys/{key_id}", tag = "admin", security(("admin" = [])),
    params(("key_id" = String, Path, description = "Key id.")),
    responses(
        (status = 204, description = "Removed."),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled.", body = crate::error::Envelope),
        (status = 404, description = "No limits are set.", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
    ))]
pub async fn delete_key(
    State(state): State<Arc<AppState>>,
    Path(key_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    delete_limits(&state, &headers, Scope::Key, &key_id).await
}

/// Every scope with limits, tenants first.
#[utoipa::path(get, path = "/admin/limits", tag = "admin", security(("admin" = [])),
    responses(
        (status = 200, description = "All limits with live status.", body = LimitList),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled.", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
    ))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    Ok(Json(LimitList {
        object: "list",
        data: statuses(&state.pool).await?,
    })
    .into_response())
}

/// The calling key, with its own and its tenant's limits and live status.
#[utoipa::path(get, path = "/v1/key", tag = "usage", security(("key" = [])),
    responses(
        (status = 200, description = "The key and its limits.", body = KeyStatus),
        (status = 401, description = "Missing or unknown key.", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
    ))]
pub async fn key_status(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = state
        .auth
        .authenticate(crate::proxy::authorization(&headers))
        .await?;
    let name: String = sqlx::query_scalar("SELECT name FROM api_keys WHERE id = $1")
        .bind(principal.key_id.as_ref())
        .fetch_optional(&state.pool)
        .await?
        .unwrap_or_default();
    let mut limits = KeyLimits {
        key: status_of(&state.pool, Scope::Key, &principal.key_id).await?,
        tenant: status_of(&state.pool, Scope::Tenant, &principal.tenant).await?,
    };
    for scope in [&mut limits.key, &mut limits.tenant].into_iter().flatten() {
        if let Some(alerts) = &mut scope.alerts {
            alerts.webhook_url = None;
        }
    }
    Ok(Json(KeyStatus {
        id: principal.key_id.to_string(),
        tenant: principal.tenant.to_string(),
        name,
        limits,
    })
    .into_response())
}
