//! `GET /openapi.json`: the OpenAPI 3.1 document of every endpoint Tollgate
//! itself owns, generated from the handlers' `#[utoipa::path]` attributes
//! and the wire types' `ToSchema` derives.
//!
//! The proxied Responses and Conversations endpoints are not copied here:
//! the document points at OpenAI's own specification for them (their bodies
//! pass through unchanged). The few schemas below describe answers that
//! handlers still build as JSON values (key lists, price versions, reprice
//! and import reports); CI's Schemathesis run checks every answer against
//! the document, so a drift fails the build.

use std::sync::OnceLock;

use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ExternalDocs, OpenApi as Document};
use utoipa::{Modify, OpenApi, ToSchema};

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
        crate::admin::revoke_key,
        crate::admin::list_prices,
        crate::admin::price_history,
        crate::admin::put_price,
        crate::admin::retire_price,
        crate::admin::reprice,
        crate::admin::import_prices,
        crate::admin::list_quarantine,
        crate::limits::api::put_tenant,
        crate::limits::api::get_tenant,
        crate::limits::api::delete_tenant,
        crate::limits::api::put_key,
        crate::limits::api::get_key,
        crate::limits::api::delete_key,
        crate::limits::api::list,
        crate::limits::api::key_status,
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

/// `GET /v1/usage/records` (JSON form).
#[derive(ToSchema)]
pub struct RecordsPage {
    /// Always `list`.
    pub object: String,
    pub data: Vec<crate::ledger::LedgerRow>,
    pub has_more: bool,
    /// Pass as `after` for the next page.
    pub next_cursor: Option<String>,
}

/// `POST /admin/keys` body.
#[derive(ToSchema)]
pub struct NewKeyBody {
    /// 1-64 letters, digits, `.`, `_` or `-`.
    pub tenant: String,
    /// At most 200 characters.
    pub name: Option<String>,
}

/// `GET /admin/keys`.
#[derive(ToSchema)]
pub struct KeyList {
    pub object: String,
    pub data: Vec<crate::auth::KeyInfo>,
}

/// One price version. Rates are exact decimal strings (USD per token);
/// tier and long-context variants (`*_flex`, `*_priority`,
/// `*_above_272k_tokens`) appear as further fields of the same form.
#[derive(ToSchema)]
pub struct PriceVersion {
    pub id: i64,
    pub model: String,
    pub effective_from: String,
    pub retired: bool,
    pub input_cost_per_token: Option<String>,
    pub cache_read_input_token_cost: Option<String>,
    pub output_cost_per_token: Option<String>,
    pub output_cost_per_reasoning_token: Option<String>,
    pub currency: String,
    pub created_at: String,
    /// The label of the admin token that created it.
    pub created_by: String,
}

/// `GET /admin/prices`.
#[derive(ToSchema)]
pub struct PriceList {
    pub object: String,
    pub data: Vec<PriceVersion>,
}

/// `GET /admin/prices/{model}`.
#[derive(ToSchema)]
pub struct PriceHistory {
    pub object: String,
    pub model: String,
    pub current: Option<PriceVersion>,
    pub history: Vec<PriceVersion>,
}

/// `PUT /admin/prices/{model}` body: LiteLLM field names, each a decimal
/// string or a JSON number (parsed exactly), plus `effective_from`.
#[derive(ToSchema)]
pub struct PriceBody {
    pub input_cost_per_token: String,
    pub output_cost_per_token: String,
    pub cache_read_input_token_cost: Option<String>,
    pub output_cost_per_reasoning_token: Option<String>,
    /// RFC 3339; default now; may be in the future.
    pub effective_from: Option<String>,
}

/// `POST /admin/reprice` body.
#[derive(ToSchema)]
pub struct RepriceBody {
    /// Unix seconds or RFC 3339, inclusive.
    pub start_time: String,
    /// Unix seconds or RFC 3339, exclusive.
    pub end_time: String,
    pub models: Option<Vec<String>>,
}

/// `POST /admin/reprice` answer.
#[derive(ToSchema)]
pub struct RepriceResult {
    pub object: String,
    pub start_time: String,
    pub end_time: String,
    pub models: Option<Vec<String>>,
    pub priced: i64,
    /// Exact decimal string.
    pub cost_added: String,
    pub still_unpriced: i64,
}

/// `POST /admin/prices/import` answer.
#[derive(ToSchema)]
pub struct ImportResult {
    pub object: String,
    /// The models that got a new version.
    pub imported: Vec<String>,
    pub unchanged: i64,
    pub skipped: Vec<serde_json::Value>,
}

/// `GET /admin/ledger/quarantine`.
#[derive(ToSchema)]
pub struct QuarantineList {
    pub object: String,
    pub data: Vec<crate::ledger::quarantine::QuarantinedRow>,
    /// Every quarantined row, not only this page.
    pub total: i64,
}

/// One entry of `GET /v1/models`, as OpenAI shapes it.
#[derive(ToSchema)]
pub struct Model {
    /// The public id, prefix included (`turing/gpt-5.5`).
    pub id: String,
    pub object: String,
    /// Unix seconds: when the price now in force took effect.
    pub created: i64,
    pub owned_by: String,
}

/// `GET /v1/models`.
#[derive(ToSchema)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<Model>,
}
