//! `GET /openapi.json`: the OpenAPI 3.1 document of every endpoint Tollgate
//! itself owns, generated from the handlers' `#[utoipa::path]` attributes
//! and the wire types' `ToSchema` derives.
//!
//! The proxied Responses and Conversations endpoints are not copied here:
//! the document points at OpenAI's own specification for them (their bodies
//! pass through unchanged). Answers that handlers still build as JSON values are
//! described in [`crate::schema`]; CI's Schemathesis run checks every answer
//! against the document, so a drift fails the build.

use std::sync::OnceLock;

use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ExternalDocs, OpenApi as Document};
use utoipa::{Modify, OpenApi};

/// Where the proxied endpoints are specified.
pub const OPENAI_SPEC: &str = "https://github.com/openai/openai-openapi";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tollgate",
        description = "A metered gateway for the OpenAI Responses API. This document covers the \
            endpoints Tollgate owns (usage, records, admin, operations). The proxied endpoints \
            (`POST /v1/responses`, `GET/DELETE /v1/responses/{id}`, `/cancel`, `/input_items`, \
            `/v1/responses/input_tokens`, `/v1/responses/compact`, `/v1/conversations/...`) speak \
            OpenAI's Responses API unchanged: see OpenAI's OpenAPI specification. Every path is \
            also served under `/api/v1`.",
        license(name = "Apache-2.0"),
    ),
    paths(
        crate::proxy::list_models,
        crate::reports::tenant_usage,
        crate::reports::tenant_records,
        crate::reports::admin_usage,
        crate::reports::admin_records,
        crate::admin::create_key,
        crate::admin::list_keys,
        crate::admin::tenant_keys,
        crate::admin::revoke_key,
        crate::admin::list_prices,
        crate::admin::price_history,
        crate::admin::put_price,
        crate::admin::retire_price,
        crate::admin::reprice,
        crate::admin::import_prices,
        crate::admin::list_quarantine,
        crate::ledger::api::partitions,
        crate::limits::api::put_tenant,
        crate::limits::api::get_tenant,
        crate::limits::api::delete_tenant,
        crate::limits::api::put_key,
        crate::limits::api::get_key,
        crate::limits::api::delete_key,
        crate::limits::api::list,
        crate::limits::api::key_status,
        crate::limits::alerts::api::list,
        crate::jobs::api::list,
        crate::reconcile::api::reconciliation,
        crate::export::api::status,
        crate::export::api::pause,
        crate::export::api::resume,
        crate::export::api::replay,
        crate::export::api::put_tenant,
        crate::export::api::get_tenant,
        super::health::healthz,
        super::health::readyz,
        super::metrics::metrics_endpoint,
        openapi_json,
    ),
    modifiers(&Security, &ProxiedEndpoints),
    tags(
        (name = "usage", description = "The caller's tenant's ledger, read back (tenant key)."),
        (name = "admin", description = "Keys, prices, reprice and every tenant's usage (admin token)."),
        (name = "operations", description = "Health, readiness, metrics and this document."),
    )
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme("key", bearer("A Tollgate client key (`sk-tg-...`)."));
        components.add_security_scheme("admin", bearer("An admin token (`TOLLGATE_ADMIN_TOKEN`)."));
    }
}

struct ProxiedEndpoints;

impl Modify for ProxiedEndpoints {
    fn modify(&self, openapi: &mut Document) {
        let mut docs = ExternalDocs::new(OPENAI_SPEC);
        docs.description = Some(
            "The proxied /responses and /conversations endpoints: OpenAI's specification.".into(),
        );
        openapi.external_docs = Some(docs);
    }
}

/// The document, built once.
pub fn document() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| ApiDoc::openapi().to_pretty_json().unwrap_or_default())
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1.", content_type = "application/json", body = Object)))]
pub(super) async fn openapi_json() -> Response {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        document(),
    )
        .into_response()
}
