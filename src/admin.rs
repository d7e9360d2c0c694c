//! The admin API (`/admin/*`): client keys and prices.
//!
//! Every call needs `Authorization: Bearer $TOLLGATE_ADMIN_TOKEN`, compared
//! in constant time; with no token configured every call is refused. Price
//! changes are new versions, never updates; after a change this replica
//! reloads its price table at once (others within their reload interval).
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

use crate::app::AppState;
use crate::auth::{self, KeyError};
use crate::error::ApiError;
use crate::pricing::{self, litellm, PriceSheet};
use crate::proxy::authorization;

/// The label recorded as `created_by` on price versions.
const ADMIN_LABEL: &str = "admin-token";

pub fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let expected = state.config.admin_token.expose();
    if expected.is_empty() {
        return Err(ApiError::admin_disabled());
    }
    if auth::admin_token_matches(expected, authorization(headers)) {
        Ok(())
    } else {
        Err(ApiError::admin_unauthorized())
    }
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

pub async fn create_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let request: NewKey = parse_json(&body)?;
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

pub async fn list_keys(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(filter): Query<KeyFilter>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let keys = auth::list_keys(&state.pool, filter.tenant.as_deref()).await?;
    Ok(Json(serde_json::json!({"object": "list", "data": keys})).into_response())
}

pub async fn revoke_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let revoked = auth::revoke_key(&state.pool, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("No key with id '{id}'.")))?;
    state.auth.forget(&id);
    Ok(Json(revoked).into_response())
}

pub async fn list_prices(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let table = state.prices.snapshot();
    Ok(Json(pricing::current_prices(&table, Utc::now())).into_response())
}

pub async fn price_history(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let model = state.config.public_model(&model).to_owned();
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

/// `PUT /admin/prices/{model}`: a new version; `effective_from` defaults to now.
pub async fn put_price(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(model): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let model = state.config.public_model(&model).to_owned();
    if model.is_empty() || model.len() > 200 {
        return Err(ApiError::unprocessable(
            "model",
            "The model id must be 1-200 characters.",
        ));
    }
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
        ADMIN_LABEL,
    )
    .await?;
    reload(&state).await;
    Ok((StatusCode::CREATED, Json(version.to_json())).into_response())
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

/// `POST /admin/prices/import`: a LiteLLM `model_prices_and_context_window.json`.
pub async fn import_prices(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::invalid_request("The body must be UTF-8 JSON."))?;
    let report = litellm::parse_litellm(text)
        .map_err(|err| ApiError::unprocessable("body", err.to_string()))?;
    let changed = pricing::import_sheets(&state.pool, &report.imported, ADMIN_LABEL).await?;
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
