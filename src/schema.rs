//! Wire shapes of the answers that handlers still build as JSON values (key
//! lists, price versions, reprice and import reports, records pages), for the
//! OpenAPI document. They sit below the handlers, so a handler's
//! `#[utoipa::path]` can name them without importing the HTTP edge. The
//! Schemathesis run in `tests/openapi.rs` checks every answer against them,
//! so a drift fails the build.

use utoipa::ToSchema;

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
    /// The model's context window (spend control bounds a request's input
    /// with it).
    pub max_input_tokens: Option<i64>,
    pub max_output_tokens: Option<i64>,
    /// The most input tokens one image can cost.
    pub max_tokens_per_image: Option<i64>,
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
    /// Model limits (whole numbers, 1 to 10^9): not prices, they bound a
    /// request's cost for hard budgets.
    pub max_input_tokens: Option<i64>,
    pub max_output_tokens: Option<i64>,
    pub max_tokens_per_image: Option<i64>,
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

/// `GET /admin/jobs`.
#[derive(ToSchema)]
pub struct JobList {
    pub object: String,
    pub data: Vec<crate::jobs::JobStatus>,
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

/// `GET /admin/reconciliation`: ledger vs provider per UTC day and line.
#[derive(ToSchema)]
pub struct ReconciliationReport {
    /// Always `list`.
    pub object: String,
    pub data: Vec<ReconciliationLine>,
    /// Unix seconds of the last fetch from the provider; null if none.
    pub fetched_at: Option<i64>,
    /// The dimensions the lines are split by (the day always).
    pub group_by: Vec<String>,
    /// A day is pending until fetched this many hours after its end.
    pub settle_hours: u64,
    pub tolerance: ReconciliationTolerance,
}

/// The thresholds of `match`: tokens exact, cost within the larger of
/// `cost` and `cost_ratio` × the provider's cost.
#[derive(ToSchema)]
pub struct ReconciliationTolerance {
    pub tokens: i64,
    pub cost: String,
    pub cost_ratio: String,
}

/// One line; a dimension appears only when grouped by it.
#[derive(ToSchema)]
pub struct ReconciliationLine {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    pub model: Option<String>,
    /// The upstream's name, or the provider's key id for a key that is not
    /// one of Tollgate's.
    pub upstream_key: Option<String>,
    /// The provider's id of that key.
    pub api_key_id: Option<String>,
    pub project_id: Option<String>,
    pub service_tier: Option<String>,
    /// `match`, `drift`, `pending`, `provider_only` or `gateway_only`.
    pub status: String,
    pub ledger: ReconciliationFigures,
    /// Null until the day was fetched.
    pub provider: Option<ReconciliationFigures>,
    /// ledger − provider; null while `provider` is.
    pub difference: Option<ReconciliationFigures>,
}

/// Requests, tokens and cost (decimal string; null where the side has no
/// cost at the line's grain).
#[derive(ToSchema)]
pub struct ReconciliationFigures {
    pub requests: i64,
    pub input_tokens: i64,
    pub cached_tokens: i64,
    pub output_tokens: i64,
    pub cost: Option<String>,
    /// Ledger only: rows without a cost.
    pub unpriced_requests: Option<i64>,
}
