//! `GET /admin/alerts` (admin token): budget alert and reconciliation
//! drift events, newest first,
//! with their delivery state. Reads only; the events themselves are made
//! by [`super::detect`] and sent by [`super::deliver`].

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::outbox::{self, EventRow, Filter};
use crate::admin::require_admin;
use crate::error::ApiError;
use crate::state::AppState;

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1_000;

/// One budget threshold crossing or reconciliation drift, and its delivery.
/// The budget fields are null on a drift event; `subject` and `data` are
/// null on a budget event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AlertEvent {
    /// The CloudEvents `id`: the same on every delivery attempt.
    pub id: String,
    /// The CloudEvents `type`: `tollgate.budget.threshold_crossed` or
    /// `tollgate.reconciliation.drift`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `tenant` or `key`.
    pub scope: Option<String>,
    pub tenant: Option<String>,
    /// Null for a tenant's alert.
    pub key_id: Option<String>,
    /// The fraction of the budget amount crossed (decimal string).
    pub threshold: Option<String>,
    /// The budget amount when the crossing was seen.
    pub amount: Option<String>,
    /// The period's spend when the crossing was seen (≥ threshold × amount).
    pub spent: Option<String>,
    /// `day`, `week`, `month` or `total`.
    pub period: Option<String>,
    /// The budget period's start (1970-01-01 for `total`).
    pub period_start: Option<DateTime<Utc>>,
    /// A drift event's subject: `reconciliation/<day>/<line>`.
    pub subject: Option<String>,
    /// A drift event's line, as `GET /admin/reconciliation` showed it.
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    /// Delivery attempts so far (including one under way).
    pub attempts: i32,
    /// Null until a webhook answered 2xx.
    pub delivered_at: Option<DateTime<Utc>>,
    /// The last failed attempt's reason (kept after a later success).
    pub last_error: Option<String>,
    /// When the next attempt is due; null once delivered.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

impl From<EventRow> for AlertEvent {
    fn from(e: EventRow) -> Self {
        Self {
            next_attempt_at: e.delivered_at.is_none().then_some(e.next_attempt_at),
            id: e.id,
            kind: e.event_type,
            scope: e.scope_kind,
            tenant: e.tenant_id,
            key_id: e.api_key_id,
            threshold: e.threshold.map(|d| d.normalize().to_string()),
            amount: e.amount.map(|d| d.normalize().to_string()),
            spent: e.spent.map(|d| d.normalize().to_string()),
            period: e.period,
            period_start: e.period_start,
            subject: e.subject,
            data: e.data,
            created_at: e.created_at,
            attempts: e.attempts,
            delivered_at: e.delivered_at,
            last_error: e.last_error,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AlertList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<AlertEvent>,
    /// More events match than `limit`.
    pub has_more: bool,
}

/// `limit`, `tenant`, `delivered`; anything else is ignored.
fn filter(query: Option<&str>) -> Result<Filter, ApiError> {
    let mut filter = Filter {
        limit: DEFAULT_LIMIT,
        ..Filter::default()
    };
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match name.as_ref() {
            "limit" => {
                filter.limit = value
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid_value("limit", format!("'limit' must be 1-{MAX_LIMIT}."))
                    })?;
            }
            "tenant" => {
                if !crate::auth::valid_tenant(&value) {
                    return Err(ApiError::invalid_value(
                        "tenant",
                        "'tenant' must be 1-64 letters, digits, '.', '_' or '-'.",
                    ));
                }
                filter.tenant = Some(value.into_owned());
            }
            "delivered" => {
                filter.delivered = Some(match value.as_ref() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(ApiError::invalid_value(
                            "delivered",
                            "'delivered' must be true or false.",
                        ))
                    }
                });
            }
            _ => {}
        }
    }
    Ok(filter)
}

/// Budget alert and reconciliation drift events, newest first, with their
/// delivery attempts.
#[utoipa::path(get, path = "/admin/alerts", tag = "admin", operation_id = "list_alerts", security(("admin" = [])),
    params(
        ("limit" = Option<i64>, Query, description = "At most this many (1-1000, default 100).", minimum = 1, maximum = 1000),
        ("tenant" = Option<String>, Query, description = "Only this tenant's events (its own and its keys')."),
        ("delivered" = Option<bool>, Query, description = "Only delivered (`true`) or pending (`false`) events."),
    ),
    responses(
        (status = 200, description = "Alert events.", body = AlertList),
        (status = 400, description = "A bad parameter, named in `param`.", body = crate::error::Envelope),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled.", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
    ))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let filter = filter(query.as_deref())?;
    let mut rows = outbox::list(&state.pool, &filter).await?;
    let has_more = rows.len() as i64 > filter.limit;
    rows.truncate(usize::try_from(filter.limit).unwrap_or(0));
    Ok(Json(AlertList {
        object: "list",
        data: rows.into_iter().map(AlertEvent::from).collect(),
        has_more,
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parameters_are_checked_and_named() {
        let f = filter(Some("limit=5&tenant=acme&delivered=false&other=x")).unwrap();
        assert_eq!(
            (f.limit, f.tenant.as_deref(), f.delivered),
            (5, Some("acme"), Some(false))
        );
        assert_eq!(filter(None).unwrap().limit, 100);
        for (query, param) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=x", "limit"),
            ("tenant=", "tenant"),
            ("tenant=a%00b", "tenant"),
            ("delivered=yes", "delivered"),
        ] {
            assert_eq!(
                filter(Some(query)).unwrap_err().param.as_deref(),
                Some(param),
                "{query}"
            );
        }
    }
}
