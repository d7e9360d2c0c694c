//! `/healthz` (the process is up) and `/readyz` (database reachable,
//! migrations applied, ledger state).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::state::{AppState, MIGRATOR};

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "`ok`", content_type = "text/plain", body = String)))]
pub(super) async fn healthz() -> &'static str {
    "ok"
}

/// Database reachable, migrations applied, ledger state.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready.", body = Object),
        (status = 503, description = "Not ready; the body says why.", body = Object),
    ))]
pub(super) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let stats = state.ledger.stats();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let database =
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&state.pool)
            .await;
    let expected = MIGRATOR.iter().count() as i64;
    let (ready, db_status) = match database {
        Ok(applied) if applied >= expected => (true, "ok".to_owned()),
        Ok(applied) => (false, format!("{applied} of {expected} migrations applied")),
        Err(err) => (false, format!("unreachable: {err}")),
    };
    let ready = ready && !state.shutdown.is_cancelled();
    let default_rows = crate::ledger::months::default_rows(&state.pool)
        .await
        .unwrap_or_else(|_| crate::ledger::months::last_default_rows());
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "database": db_status,
        "ledger": {
            "queued_rows": load(&stats.queued),
            "spooled_rows": load(&stats.spooled),
            "written_rows": load(&stats.written),
            "quarantined_rows": load(&stats.quarantined),
            // Rows no month covers yet (the ledger.months job moves them).
            "default_partition_rows": default_rows,
        },
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
