//! `GET /admin/jobs`: every background job's recorded state (the same rows
//! each job's own status endpoint and `/metrics` read).

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::admin::require_admin;
use crate::error::ApiError;
use crate::state::AppState;

/// Background jobs (partition upkeep, archiving, provider fetches, export
/// delivery): the replica that ran each last, when it last ran and
/// succeeded, its last error, cursor and lag, and whether it is paused.
#[utoipa::path(get, path = "/admin/jobs", tag = "admin", operation_id = "list_jobs", security(("admin" = [])),
    responses(
        (status = 200, description = "Every job's status.", body = crate::schema::JobList),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled (no admin token configured).", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
    ))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let jobs = super::statuses(&state.pool).await?;
    Ok(Json(serde_json::json!({"object": "list", "data": jobs})).into_response())
}
