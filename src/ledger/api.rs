//! `GET /admin/ledger/partitions` (admin token): the ledger's months with
//! their rows, bytes and state, archived months with their manifest, and the
//! default partition's row count. Reads only.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::months::{self, PartitionInfo};
use crate::admin::require_admin;
use crate::error::ApiError;
use crate::state::AppState;

/// The answer of `GET /admin/ledger/partitions`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct PartitionList {
    /// Always `list`.
    pub object: String,
    /// Oldest first; the default partition last.
    pub data: Vec<PartitionInfo>,
    /// Rows no month covers (they wait for the `ledger.months` job).
    pub default_partition_rows: i64,
    /// `[ledger] retention_months`; null keeps everything.
    pub retention_months: Option<u32>,
}

/// The ledger's months (CONTRACT §3, §5a).
#[utoipa::path(get, path = "/admin/ledger/partitions", tag = "admin", security(("admin" = [])),
    responses(
        (status = 200, description = "The ledger's partitions.", body = PartitionList),
        (status = 401, description = "Missing or wrong admin token.", body = crate::error::Envelope),
        (status = 403, description = "The admin API is disabled (no admin token configured).", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
    ))]
pub async fn partitions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let data = months::partitions(&state.pool).await?;
    let default_partition_rows = data
        .iter()
        .find(|p| p.state == "default")
        .map_or(0, |p| p.rows);
    Ok(Json(PartitionList {
        object: "list".into(),
        data,
        default_partition_rows,
        retention_months: state.config.ledger.retention_months,
    })
    .into_response())
}
