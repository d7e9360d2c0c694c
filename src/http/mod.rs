//! The HTTP edge: the router and its layer order, and the operational
//! endpoints (health, metrics, the OpenAPI document). Everything below it (handlers, state) is
//! imported from here; nothing imports this module but [`crate::server`].
//!
//! Layer order, outermost first (each layer sees what the ones below it do):
//! 1. `CatchPanicLayer` — a panicking handler becomes a 500 envelope (its
//!    `Meter` still records the request while unwinding);
//! 2. `SetSensitiveRequestHeadersLayer(authorization, api-key)` — keys never
//!    reach logs;
//! 3. `TraceLayer` — one span per request;
//! 4. routes. Authentication happens inside each handler, *after* which every
//!    request is metered; body limits are enforced by the proxy itself so that
//!    a 413 is metered too (axum's default 2 MiB limit is disabled).

mod dashboard;
mod health;
mod metrics;
pub mod openapi;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::HeaderName;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::state::AppState;
use crate::{admin, jobs, limits, proxy, reconcile, reports};

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.body_limit_bytes;
    let mut client = Router::new();
    for prefix in ["/v1", "/api/v1"] {
        client = client
            .route(
                &format!("{prefix}/responses"),
                post(proxy::create_response).get(proxy::ws::connect),
            )
            .route(
                &format!("{prefix}/responses/compact"),
                post(proxy::compact_response),
            )
            .route(
                &format!("{prefix}/responses/input_tokens"),
                post(proxy::count_input_tokens),
            )
            .route(
                &format!("{prefix}/responses/{{id}}"),
                get(proxy::retrieve_response).delete(proxy::delete_response),
            )
            .route(
                &format!("{prefix}/responses/{{id}}/cancel"),
                post(proxy::cancel_response),
            )
            .route(
                &format!("{prefix}/responses/{{id}}/input_items"),
                get(proxy::list_input_items),
            )
            .route(&format!("{prefix}/models"), get(proxy::list_models))
            .route(&format!("{prefix}/key"), get(limits::api::key_status))
            .route(&format!("{prefix}/keys"), get(admin::tenant_keys))
            .merge(proxy::conversations::routes(prefix))
            .route(&format!("{prefix}/usage"), get(reports::tenant_usage))
            .route(
                &format!("{prefix}/usage/records"),
                get(reports::tenant_records),
            );
    }
    let admin = Router::new()
        .route("/admin/keys", post(admin::create_key).get(admin::list_keys))
        .route("/admin/keys/{id}", axum::routing::delete(admin::revoke_key))
        .route("/admin/prices", get(admin::list_prices))
        .route("/admin/prices/import", post(admin::import_prices))
        .route(
            "/admin/prices/{*model}",
            put(admin::put_price)
                .get(admin::price_history)
                .delete(admin::retire_price),
        )
        .route("/admin/reprice", post(admin::reprice))
        .route("/admin/ledger/quarantine", get(admin::list_quarantine))
        .route(
            "/admin/ledger/partitions",
            get(crate::ledger::api::partitions),
        )
        .route("/admin/limits", get(limits::api::list))
        .route("/admin/alerts", get(limits::alerts::api::list))
        .route("/admin/jobs", get(jobs::api::list))
        .route("/admin/reconciliation", get(reconcile::api::reconciliation))
        .route(
            "/admin/limits/tenants/{tenant}",
            put(limits::api::put_tenant)
                .get(limits::api::get_tenant)
                .delete(limits::api::delete_tenant),
        )
        .route(
            "/admin/limits/keys/{key_id}",
            put(limits::api::put_key)
                .get(limits::api::get_key)
                .delete(limits::api::delete_key),
        )
        .route("/admin/usage", get(reports::admin_usage))
        .route("/admin/usage/records", get(reports::admin_records))
        .merge(crate::export::api::routes())
        .layer(DefaultBodyLimit::max(limit));
    Router::new()
        .merge(client)
        .merge(admin)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics_endpoint))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/", get(dashboard::root))
        .route("/dashboard", get(dashboard::index))
        .route("/dashboard/", get(dashboard::index))
        .route("/dashboard/{*asset}", get(dashboard::asset))
        .fallback(not_found)
        .layer(DefaultBodyLimit::disable())
        .layer(TraceLayer::new_for_http())
        .layer(SetSensitiveRequestHeadersLayer::new([
            http::header::AUTHORIZATION,
            HeaderName::from_static("api-key"),
        ]))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("handler panicked").into_response()
        }))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("Unknown endpoint.")
}
