//! `/metrics`: the Prometheus recorder (installed once per process) and its
//! rendering.

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::error::ApiError;
use crate::state::AppState;

pub fn metrics_handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .as_ref()
}

pub(super) async fn metrics_endpoint(State(state): State<Arc<AppState>>) -> Response {
    let stats = state.ledger.stats();
    let load =
        |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed) as f64;
    metrics::gauge!("tollgate_ledger_queued_rows").set(load(&stats.queued));
    metrics::gauge!("tollgate_ledger_spooled_rows").set(load(&stats.spooled));
    metrics::gauge!("tollgate_ledger_written_rows").set(load(&stats.written));
    metrics::gauge!("tollgate_ledger_write_errors").set(load(&stats.write_errors));
    match metrics_handle() {
        Some(handle) => (
            [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => ApiError::internal("metrics recorder unavailable").into_response(),
    }
}
