//! `GET /admin/reconciliation?start_time&end_time&group_by=` (admin token):
//! the comparison of [`super::report`] for the UTC days the range touches.
//! Reads only (the fetch is the job's).

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{Duration, NaiveDate, Utc};

use super::report::{GroupBy, Grouping, Query};
use crate::admin::require_admin;
use crate::error::ApiError;
use crate::reports::params::parse_time;
use crate::state::AppState;

/// The widest range one report covers.
pub const MAX_DAYS: i64 = 366;
/// The most lines one report answers; more asks for a narrower range.
pub const MAX_LINES: usize = 50_000;

/// `start_time` (required), `end_time` (exclusive; default now), `group_by`
/// (comma-separated or repeated; default `model`).
pub fn parse_query(raw: Option<&str>) -> Result<Query, ApiError> {
    let mut start = None;
    let mut end = None;
    let mut groups: Vec<String> = Vec::new();
    for (name, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match name.as_ref() {
            "start_time" => start = Some(parse_time("start_time", &value)?),
            "end_time" => end = Some(parse_time("end_time", &value)?),
            "group_by" | "group_by[]" => {
                if value.len() > 256 || value.chars().any(char::is_control) {
                    return Err(ApiError::invalid_value(
                        "group_by",
                        "'group_by' is malformed.",
                    ));
                }
                groups.extend(
                    value
                        .split(',')
                        .filter(|g| !g.trim().is_empty())
                        .map(|g| g.trim().to_owned()),
                );
            }
            _ => {}
        }
    }
    let start = start.ok_or_else(|| ApiError::missing_parameter("start_time"))?;
    let end = end.unwrap_or_else(Utc::now);
    if end <= start {
        return Err(ApiError::invalid_value(
            "end_time",
            "'end_time' must be after 'start_time'.",
        ));
    }
    let from = start.date_naive();
    let to = (end - Duration::seconds(1)).date_naive();
    if (to - from).num_days() >= MAX_DAYS {
        return Err(ApiError::invalid_value(
            "end_time",
            format!("A report covers at most {MAX_DAYS} days."),
        ));
    }
    let grouping = if groups.is_empty() {
        Grouping {
            model: true,
            ..Grouping::default()
        }
    } else {
        GroupBy::parse_all(&groups)
            .map_err(|e| ApiError::invalid_value("group_by", format!("'group_by': {e}.")))?
    };
    Ok(Query { from, to, grouping })
}

/// Days in the CLI's `--from`/`--to` form.
pub fn parse_day(param: &str, value: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map_err(|_| format!("{param}: `{value}` is not a YYYY-MM-DD date"))
}

/// Ledger vs provider per UTC day and line (CONTRACT §12): requests,
/// input, cached and output tokens and cost on each side, the difference
/// (ledger − provider) and a status: `match`, `drift`, `pending` (the day
/// is not closed yet, or was never fetched: `provider` is null), `provider_only`,
/// `gateway_only`.
#[utoipa::path(get, path = "/admin/reconciliation", tag = "admin", security(("admin" = [])),
    params(
        ("start_time" = String, Query, description = "Unix seconds or RFC 3339; the UTC day it falls in is the first."),
        ("end_time" = Option<String>, Query, description = "Exclusive; default now. At most 366 days after start_time."),
        ("group_by" = Option<String>, Query, description = "Comma-separated or repeated: model, upstream_key, project_id, service_tier (default model)."),
    ),
    responses(
        (status = 200, description = "The comparison.", body = crate::schema::ReconciliationReport),
        (status = 400, description = "A bad parameter, named in `param`.", body = crate::error::Envelope),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled.", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
    ))]
pub async fn reconciliation(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let query = parse_query(query.as_deref())?;
    let report = super::report(&state.reports_pool, &state.config, &query).await?;
    if report.data.len() > MAX_LINES {
        return Err(ApiError::invalid_value(
            "end_time",
            format!("More than {MAX_LINES} lines: narrow the range or group_by."),
        ));
    }
    Ok(Json(report).into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ranges_cover_the_utc_days_they_touch() {
        // 2026-12-06T00:00Z .. 2026-12-08T00:00Z: the 6th and the 7th.
        let q = parse_query(Some("start_time=1796515200&end_time=1796688000")).unwrap();
        assert_eq!(
            (q.from.to_string(), q.to.to_string()),
            ("2026-12-06".into(), "2026-12-07".into())
        );
        assert_eq!(q.grouping.names(), ["model"]);
        let q = parse_query(Some(
            "start_time=2026-12-06T10:00:00Z&end_time=1796601600&group_by=model,upstream_key&group_by=service_tier",
        ))
        .unwrap();
        assert_eq!(q.to.to_string(), "2026-12-06");
        assert_eq!(
            q.grouping.names(),
            ["model", "upstream_key", "service_tier"]
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        for (query, param) in [
            ("", "start_time"),
            ("start_time=x", "start_time"),
            ("start_time=100&end_time=50", "end_time"),
            ("start_time=0&end_time=86400000", "end_time"),
            ("start_time=0&end_time=100&group_by=tenant", "group_by"),
        ] {
            assert_eq!(
                parse_query(Some(query)).unwrap_err().param.as_deref(),
                Some(param),
                "{query}"
            );
        }
    }
}
