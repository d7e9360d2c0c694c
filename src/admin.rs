//! The admin API (`/admin/*`): client keys and prices.
//!
//! Every call needs `Authorization: Bearer <token>`: `TOLLGATE_ADMIN_TOKEN`
//! (label `admin`) or one of the labelled `[[admin_tokens]]`, compared in
//! constant time; with no token configured every call is refused. The label
//! of the token used is the `created_by` of the price versions it creates,
//! which the history endpoint shows: that is the audit trail.
//!
//! Price changes are new versions, never updates (a retirement is a version
//! too); after a change this replica reloads its price table at once, and
//! the others when the change's NOTIFY reaches them (`pricing::notify`).
//! Bad input answers 400/422 naming the field and changes nothing.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::auth::{self, KeyError};
use crate::config::MAIN_ADMIN_LABEL;
use crate::error::ApiError;
use crate::pricing::{self, litellm, PriceSheet};
use crate::proxy::authorization;
use crate::state::AppState;

/// Who made an admin call: the label of the token presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminCaller {
    pub label: String,
}

pub fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<AdminCaller, ApiError> {
    let config = &state.config;
    let tokens = std::iter::once((MAIN_ADMIN_LABEL, &config.admin_token)).chain(
        config
            .admin_tokens
            .iter()
            .map(|admin| (admin.label.as_str(), &admin.token)),
    );
    let presented = authorization(headers);
    let mut configured = false;
    let mut matched = None;
    // Every token is compared (no early return), so the time taken does not
    // tell which one, if any, matched.
    for (label, token) in tokens {
        if token.is_empty() {
            continue;
        }
        configured = true;
        if auth::admin_token_matches(token.expose(), presented) && matched.is_none() {
            matched = Some(label);
        }
    }
    match matched {
        Some(label) => Ok(AdminCaller {
            label: label.to_owned(),
        }),
        None if !configured => Err(ApiError::admin_disabled()),
        None => Err(ApiError::admin_unauthorized()),
    }
}

/// Longest model id the price endpoints take, in characters.
const MODEL_MAX_CHARS: usize = 200;

/// A model id as the price endpoints take it: the public id (the prefix is
/// optional), 1-200 characters, no control character (PostgreSQL text
/// cannot hold NUL). `unprocessable` picks 422 (a body field) over 400 (the
/// path).
fn checked_model(
    state: &AppState,
    model: &str,
    param: &str,
    unprocessable: bool,
) -> Result<String, ApiError> {
    let model = state.config.public_model(model);
    let ok = !model.is_empty()
        && model.chars().count() <= MODEL_MAX_CHARS
        && !model.chars().any(char::is_control);
    if ok {
        return Ok(model.to_owned());
    }
    let message =
        format!("The model id must be 1-{MODEL_MAX_CHARS} characters with no control characters.");
    Err(if unprocessable {
        ApiError::unprocessable(param, message)
    } else {
        ApiError::invalid_value(param, message)
    })
}

/// An id or filter from the path or query: short, printable.
fn checked_text(param: &str, value: &str, max_chars: usize) -> Result<(), ApiError> {
    if value.chars().count() > max_chars || value.chars().any(char::is_control) {
        return Err(ApiError::invalid_value(
            param,
            format!("'{param}' must be at most {max_chars} characters with no control characters."),
        ));
    }
    Ok(())
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        if e.classify() == serde_json::error::Category::Data {
            ApiError::unprocessable("body", e.to_string())
        } else {
            ApiError::invalid_json(e)
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    tenant: String,
    #[serde(default)]
    name: String,
}

/// Creates a client key; the secret is in this answer only.
#[utoipa::path(post, path = "/admin/keys", tag = "admin", security(("admin" = [])),
    request_body = crate::schema::NewKeyBody,
    responses(
        (status = 201, description = "The new key.", body = crate::auth::CreatedKey),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled (no admin token configured).", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
        (status = 400, description = "The body is not JSON.", body = crate::error::Envelope),
        (status = 422, description = "Invalid input, the field named in `param`.", body = crate::error::Envelope),
    ))]
pub async fn create_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let request: NewKey = parse_json(&body)?;
    if request.name.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(
            "name",
            "The key name must not contain control characters.",
        ));
    }
    let created = auth::create_key(&state.pool, &request.tenant, &request.name)
        .await
        .map_err(|err| match err {
            KeyError::BadTenant => ApiError::unprocessable("tenant", err.to_string()),
            KeyError::BadName => ApiError::unprocessable("name", err.to_string()),
            KeyError::Db(db) => ApiError::from(db),
        })?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[derive(Deserialize)]
pub struct KeyFilter {
    tenant: Option<String>,
}

/// Lists keys (never their secrets).
#[utoipa::path(get, path = "/admin/keys", tag = "admin", security(("admin" = [])),
    params(("tenant" = Option<String>, Query, description = "Only this tenant's keys.")),
    responses(
        (status = 200, description = "The keys.", body = crate::schema::KeyList),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled (no admin token configured).", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
        (status = 400, description = "The body is not JSON.", body = crate::error::Envelope),
    ))]
pub async fn list_keys(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    filter: Result<Query<KeyFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let Query(filter) = filter
        .map_err(|_| ApiError::invalid_value("tenant", "'tenant' must be given at most once."))?;
    if let Some(tenant) = &filter.tenant {
        checked_text("tenant", tenant, 64)?;
    }
    let keys = auth::list_keys(&state.pool, filter.tenant.as_deref()).await?;
    Ok(Json(serde_json::json!({"object": "list", "data": keys})).into_response())
}

/// The calling tenant's keys (ids and names, never secrets; revoked ones
/// too, since old records name them). Sealed: another tenant's keys never
/// appear.
#[utoipa::path(get, path = "/v1/keys", tag = "usage", operation_id = "list_tenant_keys", security(("key" = [])),
    responses(
        (status = 200, description = "The tenant's keys.", body = crate::schema::KeyList),
        (status = 401, description = "Missing or unknown key.", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
    ))]
pub async fn tenant_keys(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = state
        .auth
        .authenticate(crate::proxy::authorization(&headers))
        .await?;
    let keys = auth::list_keys(&state.pool, Some(&principal.tenant)).await?;
    Ok(Json(serde_json::json!({"object": "list", "data": keys})).into_response())
}

/// Revokes a key at once.
#[utoipa::path(delete, path = "/admin/keys/{id}", tag = "admin", security(("admin" = [])),
    params(("id" = String, Path, description = "Key id.")),
    responses(
        (status = 200, description = "The revoked key.", body = crate::auth::KeyInfo),
        (status = 400, description = "A malformed id (over 64 characters or with control characters), named in `param`.", body = crate::error::Envelope),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled (no admin token configured).", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
        (status = 404, description = "Not found.", body = crate::error::Envelope),
    ))]
pub async fn revoke_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    checked_text("id", &id, 64)?;
    let revoked = auth::revoke_key(&state.pool, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("No key with id '{id}'.")))?;
    state.auth.forget(&id);
    Ok(Json(revoked).into_response())
}

/// The price in force of every model.
#[utoipa::path(get, path = "/admin/prices", tag = "admin", security(("admin" = [])),
    responses(
        (status = 200, description = "Current prices.", body = crate::schema::PriceList),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled (no admin token configured).", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
    ))]
pub async fn list_prices(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let table = state.prices.snapshot();
    Ok(Json(pricing::current_prices(&table, Utc::now())).into_response())
}

/// A model's current price and every version.
#[utoipa::path(get, path = "/admin/prices/{model}", tag = "admin", security(("admin" = [])),
    params(("model" = String, Path, description = "Public model id (the prefix is optional).")),
    responses(
        (status = 200, description = "Current and history.", body = crate::schema::PriceHistory),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled (no admin token configured).", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
        (status = 400, description = "The body is not JSON.", body = crate::error::Envelope),
        (status = 404, description = "Not found.", body = crate::error::Envelope),
    ))]
pub async fn price_history(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let model = checked_model(&state, &model, "model", false)?;
    let history = pricing::model_history(&state.pool, &model).await?;
    if history.is_empty() {
        return Err(ApiError::not_found(format!(
            "No price was ever set for '{model}'."
        )));
    }
    let current = pricing::PriceTable::from_versions(history.clone())
        .lookup(&model, Utc::now())
        .map(|v| v.to_json());
    Ok(Json(serde_json::json!({
        "object": "model_price",
        "model": model,
        "current": current,
        "history": history.iter().map(|v| v.to_json()).collect::<Vec<_>>(),
    }))
    .into_response())
}

#[utoipa::path(put, path = "/admin/prices/{model}", tag = "admin", security(("admin" = [])),
    params(("model" = String, Path, description = "Public model id (the prefix is optional).")),
    request_body = crate::schema::PriceBody,
    responses(
        (status = 201, description = "The new version.", body = crate::schema::PriceVersion),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled (no admin token configured).", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
        (status = 400, description = "The body is not JSON.", body = crate::error::Envelope),
        (status = 422, description = "Invalid input, the field named in `param`.", body = crate::error::Envelope),
    ))]
/// `PUT /admin/prices/{model}`: a new version; `effective_from` defaults to now.
pub async fn put_price(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(model): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = require_admin(&state, &headers)?;
    let model = checked_model(&state, &model, "model", true)?;
    let mut fields: Vec<(String, Box<RawValue>)> =
        parse_json::<std::collections::BTreeMap<String, Box<RawValue>>>(&body)?
            .into_iter()
            .collect();
    let effective_from = match fields.iter().position(|(k, _)| k == "effective_from") {
        Some(index) => {
            let (_, raw) = fields.remove(index);
            parse_time(&raw)?
        }
        None => Utc::now(),
    };
    let sheet = PriceSheet::parse_strict(&fields)
        .map_err(|err| ApiError::unprocessable(err.field.clone(), err.to_string()))?;
    let version = pricing::insert_version(
        &state.pool,
        &model,
        Some(&sheet),
        effective_from,
        &caller.label,
    )
    .await?;
    reload(&state).await;
    Ok((StatusCode::CREATED, Json(version.to_json())).into_response())
}

#[utoipa::path(delete, path = "/admin/prices/{model}", tag = "admin", security(("admin" = [])),
    params(("model" = String, Path, description = "Public model id (the prefix is optional).")),
    responses(
        (status = 200, description = "The retirement version.", body = crate::schema::PriceVersion),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled (no admin token configured).", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
        (status = 400, description = "The body is not JSON.", body = crate::error::Envelope),
        (status = 404, description = "Not found.", body = crate::error::Envelope),
    ))]
/// `DELETE /admin/prices/{model}`: retires the model's price from now on (a
/// new version with no rates), so new requests for it get 404
/// `model_not_found`. Requests already under way keep the version they
/// started with. Retiring a model whose price is already retired (with
/// nothing scheduled after) changes nothing and answers that retirement.
pub async fn retire_price(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    let caller = require_admin(&state, &headers)?;
    let model = checked_model(&state, &model, "model", false)?;
    let history = pricing::model_history(&state.pool, &model).await?;
    if history.is_empty() {
        return Err(ApiError::not_found(format!(
            "No price was ever set for '{model}'."
        )));
    }
    let now = Utc::now();
    let table = pricing::PriceTable::from_versions(history);
    if let Some(current) = table.in_force(&model, now) {
        if current.sheet.is_none() && !table.has_version_after(&model, now) {
            return Ok(Json(current.to_json()).into_response());
        }
    }
    let version = pricing::insert_version(&state.pool, &model, None, now, &caller.label).await?;
    reload(&state).await;
    Ok(Json(version.to_json()).into_response())
}

#[utoipa::path(post, path = "/admin/reprice", tag = "admin", security(("admin" = [])),
    request_body = crate::schema::RepriceBody,
    responses(
        (status = 200, description = "What was priced.", body = crate::schema::RepriceResult),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled (no admin token configured).", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
        (status = 400, description = "The body is not JSON.", body = crate::error::Envelope),
        (status = 422, description = "Invalid input, the field named in `param`.", body = crate::error::Envelope),
    ))]
/// `POST /admin/reprice {"start_time", "end_time", "models"?}`: prices the
/// unpriced rows with `start_time <= started_at < end_time` (unix seconds or
/// RFC 3339) with the versions now in force at their start.
pub async fn reprice(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let fields = parse_json::<std::collections::BTreeMap<String, Box<RawValue>>>(&body)?;
    let mut start = None;
    let mut end = None;
    let mut models = None;
    for (name, raw) in &fields {
        match name.as_str() {
            "start_time" => start = Some(parse_range_time("start_time", raw)?),
            "end_time" => end = Some(parse_range_time("end_time", raw)?),
            "models" => models = parse_models(&state, raw)?,
            _ => {
                let message = format!(
                    "Unknown field '{name}'; expected start_time, end_time and optionally models."
                );
                return Err(ApiError::unprocessable(name.as_str(), message));
            }
        }
    }
    let start =
        start.ok_or_else(|| ApiError::unprocessable("start_time", "'start_time' is required."))?;
    let end = end.ok_or_else(|| ApiError::unprocessable("end_time", "'end_time' is required."))?;
    if end <= start {
        return Err(ApiError::unprocessable(
            "end_time",
            "'end_time' must be after 'start_time'.",
        ));
    }
    let report = pricing::reprice::reprice(&state.pool, start, end, models.as_deref()).await?;
    if report.priced > 0 {
        // Spend rose: budget alerts may have been crossed.
        state.alerts.touch_all();
    }
    Ok(Json(serde_json::json!({
        "object": "reprice",
        "start_time": start.to_rfc3339(),
        "end_time": end.to_rfc3339(),
        "models": models,
        "priced": report.priced,
        "cost_added": report.cost_added.to_string(),
        "still_unpriced": report.still_unpriced,
    }))
    .into_response())
}

/// Unix seconds (a JSON integer or a string of digits) or RFC 3339.
fn parse_range_time(field: &str, raw: &RawValue) -> Result<DateTime<Utc>, ApiError> {
    let text = match serde_json::from_str::<serde_json::Value>(raw.get()) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let parsed = match text.parse::<i64>() {
        Ok(seconds) => DateTime::from_timestamp(seconds, 0),
        Err(_) => DateTime::parse_from_rfc3339(&text)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
    };
    parsed.ok_or_else(|| {
        ApiError::unprocessable(
            field,
            format!("'{field}' must be unix seconds or an RFC 3339 timestamp."),
        )
    })
}

/// A non-empty array of model ids (the `turing/` prefix is optional).
fn parse_models(state: &AppState, raw: &RawValue) -> Result<Option<Vec<String>>, ApiError> {
    let bad = || {
        ApiError::unprocessable(
            "models",
            "'models' must be a non-empty array of model ids, or left out for every model.",
        )
    };
    let models: Option<Vec<String>> = serde_json::from_str(raw.get()).map_err(|_| bad())?;
    match models {
        None => Ok(None),
        Some(models) if models.is_empty() || models.len() > 1_000 => Err(bad()),
        Some(models) => models
            .iter()
            .map(|m| checked_model(state, m, "models", true))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
    }
}

fn parse_time(raw: &RawValue) -> Result<DateTime<Utc>, ApiError> {
    serde_json::from_str::<String>(raw.get())
        .ok()
        .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| {
            ApiError::unprocessable(
                "effective_from",
                "'effective_from' must be an RFC 3339 timestamp, e.g. 2026-12-01T00:00:00Z.",
            )
        })
}

#[utoipa::path(post, path = "/admin/prices/import", tag = "admin", security(("admin" = [])),
    request_body = Object,
    responses(
        (status = 200, description = "What changed.", body = crate::schema::ImportResult),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled (no admin token configured).", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
        (status = 400, description = "The body is not JSON.", body = crate::error::Envelope),
        (status = 422, description = "Invalid input, the field named in `param`.", body = crate::error::Envelope),
    ))]
/// `POST /admin/prices/import`: a LiteLLM `model_prices_and_context_window.json`.
pub async fn import_prices(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = require_admin(&state, &headers)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::invalid_request("The body must be UTF-8 JSON."))?;
    let report = litellm::parse_litellm(text)
        .map_err(|err| ApiError::unprocessable("body", err.to_string()))?;
    for imported in &report.imported {
        checked_model(&state, &imported.model, "body", true)?;
    }
    let changed = pricing::import_sheets(&state.pool, &report.imported, &caller.label).await?;
    reload(&state).await;
    Ok(Json(serde_json::json!({
        "object": "price_import",
        "imported": changed,
        "unchanged": report.imported.len() - changed.len(),
        "skipped": report.skipped,
    }))
    .into_response())
}

async fn reload(state: &AppState) {
    if let Err(err) = state.prices.reload(&state.pool).await {
        tracing::warn!(error = %err, "price reload after a change failed; the periodic reload will retry");
    }
}

#[derive(Deserialize)]
pub struct QuarantineQuery {
    limit: Option<i64>,
}

/// Ledger rows the database refused, newest first, each with the
/// database's reason and the row as the gateway built it (JSON text).
#[utoipa::path(get, path = "/admin/ledger/quarantine", tag = "admin", security(("admin" = [])),
    params(("limit" = Option<i64>, Query, description = "At most this many (1-1000, default 100).", minimum = 1, maximum = 1000)),
    responses(
        (status = 200, description = "Quarantined rows.", body = crate::schema::QuarantineList),
        (status = 400, description = "A bad parameter.", body = crate::error::Envelope),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled (no admin token configured).", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
    ))]
pub async fn list_quarantine(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<QuarantineQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let Query(query) =
        query.map_err(|_| ApiError::invalid_value("limit", "'limit' must be 1-1000."))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid_value("limit", "'limit' must be 1-1000."));
    }
    let rows = crate::ledger::quarantine::list(&state.pool, limit).await?;
    let total = crate::ledger::quarantine::count(&state.pool).await?;
    Ok(Json(serde_json::json!({"object": "list", "data": rows, "total": total})).into_response())
}
