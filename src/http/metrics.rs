//! `/metrics`: renders the process-wide Prometheus recorder
//! ([`crate::telemetry::metrics`] owns the names).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;
use crate::telemetry::metrics;

/// Prometheus text exposition (CONTRACT §11).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Metrics.", content_type = "text/plain", body = String),
        (status = 500, description = "No recorder.", body = crate::error::Envelope),
    ))]
pub(super) async fn metrics_endpoint(State(state): State<Arc<AppState>>) -> Response {
    metrics::publish_ledger(state.ledger.stats());
    // Counted now (a small table); the last count if the database is away.
    let default_rows = crate::ledger::months::default_rows(&state.pool)
        .await
        .unwrap_or_else(|_| crate::ledger::months::last_default_rows());
    metrics::publish_default_partition_rows(default_rows);
    match metrics::handle() {
        Some(handle) => (
            [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            metrics::render(handle),
        )
            .into_response(),
        None => ApiError::internal("metrics recorder unavailable").into_response(),
    }
}
