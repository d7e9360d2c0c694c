//! The usage ledger: one row per authenticated request, written off the
//! request path.
//!
//! Request handlers hand finished rows to a [`LedgerHandle`] (a channel send,
//! never an await on the database). One writer task batches them into a single
//! `INSERT … SELECT FROM UNNEST(…) ON CONFLICT DO NOTHING` (the unique key is
//! `(request_id, started_at)`; a request's row is built once, so a replay
//! carries the same id and time), so a row written twice is stored once. When the database refuses a batch, the
//! batch goes to the local [`spool`] (fsync'd before it is forgotten) and is
//! replayed when the database is back. The request id is the idempotency key
//! everywhere: nothing claims it before the row is durable.
//!
//! The table is partitioned by calendar month (UTC, [`months`]); months past
//! retention are archived to Parquet, verified and dropped ([`archive`]).

pub mod api;
pub mod archive;
pub mod boundary;
pub mod command;
pub mod indexes;
mod insert;
pub mod months;
pub mod owners;
pub mod quarantine;
pub mod spool;
pub mod upkeep;
mod writer;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

pub use writer::{
    spawn_watched_writer, spawn_writer, Batching, CapturedRows, LedgerHandle, LedgerStats,
};

/// How a request ended (CONTRACT §5 `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    Completed,
    Incomplete,
    Failed,
    Cancelled,
    /// The upstream answered with an HTTP error (passed through to the client).
    UpstreamError,
    /// Tollgate refused the request before forwarding it.
    Rejected,
    /// The exchange ended without a terminal response (cut stream, client gone,
    /// timeout, shutdown).
    Interrupted,
    /// A background response still running upstream; settled exactly once
    /// when it finishes.
    Queued,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Incomplete => "incomplete",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::UpstreamError => "upstream_error",
            Self::Rejected => "rejected",
            Self::Interrupted => "interrupted",
            Self::Queued => "queued",
        }
    }

    pub const ALL: [&'static str; 8] = [
        "completed",
        "incomplete",
        "failed",
        "cancelled",
        "upstream_error",
        "rejected",
        "interrupted",
        "queued",
    ];
}

/// Where the row's token counts come from (CONTRACT §5 `usage_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// From the final response or terminal stream event.
    Reported,
    /// Fetched from the upstream afterwards (`GET /responses/{id}`).
    Recovered,
    /// The upstream never reported usage for this request.
    Missing,
    /// The upstream reported usage that cannot be true (negative, parts
    /// larger than totals, absurdly large, no counts at all); what it
    /// reported is in the row's `anomaly`.
    Invalid,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reported => "reported",
            Self::Recovered => "recovered",
            Self::Missing => "missing",
            Self::Invalid => "invalid",
        }
    }
}

/// One ledger row, as written and as served by `/v1/usage/records`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct LedgerRow {
    /// Assigned by the database; absent until the row is stored.
    #[serde(default)]
    pub id: Option<i64>,
    pub request_id: String,
    pub response_id: Option<String>,
    pub tenant: String,
    pub api_key_id: String,
    pub endpoint: String,
    pub model: Option<String>,
    pub upstream: Option<String>,
    pub upstream_model: Option<String>,
    pub stream: bool,
    pub status: String,
    pub usage_source: String,
    pub input_tokens: i64,
    pub cached_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    pub total_tokens: i64,
    pub service_tier: Option<String>,
    pub price_id: Option<i64>,
    /// Exact decimal, serialized as a string without trailing zeros; null
    /// when unpriced.
    #[serde(serialize_with = "serialize_cost")]
    pub cost: Option<Decimal>,
    pub unpriced_reason: Option<String>,
    pub currency: String,
    pub http_status: Option<i32>,
    pub error_code: Option<String>,
    pub attempts: i32,
    pub fallback_from: Option<String>,
    pub end_user: Option<String>,
    /// Offered tools left out of the forwarded request, comma-separated
    /// (also the response's `x-tollgate-dropped-tools`); beyond CONTRACT §5.
    #[serde(default)]
    pub dropped_tools: Option<String>,
    /// The client's `x-client-request-id` (1-512 visible ASCII characters;
    /// null when it sent none or an unusable one); beyond CONTRACT §5.
    #[serde(default)]
    pub client_request_id: Option<String>,
    pub client_disconnected: bool,
    pub mcp_calls: i32,
    pub started_at: DateTime<Utc>,
    pub first_byte_at: Option<DateTime<Utc>>,
    pub finished_at: DateTime<Utc>,
    /// What the row boundary found or changed (invalid usage as reported,
    /// NUL bytes, over-long text); null for an ordinary row.
    #[serde(default)]
    pub anomaly: Option<String>,
}

/// The column list shared by reads and CSV output, in CONTRACT §5 order
/// (the fields beyond it where [`LedgerRow`] declares them).
pub const COLUMNS: &str =
    "id, request_id, response_id, tenant_id AS tenant, api_key_id, endpoint, \
     model, upstream, upstream_model, stream, status, usage_source, input_tokens, cached_tokens, \
     output_tokens, reasoning_tokens, total_tokens, service_tier, price_id, cost, unpriced_reason, \
     currency, http_status, error_code, attempts, fallback_from, end_user, dropped_tools, \
     client_request_id, client_disconnected, mcp_calls, started_at, first_byte_at, finished_at, \
     anomaly";

/// The database keeps cost at scale 16; clients get the shortest exact form.
fn serialize_cost<S: serde::Serializer>(cost: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
    match cost {
        Some(value) => s.serialize_str(&value.normalize().to_string()),
        None => s.serialize_none(),
    }
}

/// A plausible completed row, for unit tests across the crate.
#[cfg(test)]
pub(crate) fn sample_row(request_id: &str) -> LedgerRow {
    LedgerRow {
        id: None,
        request_id: request_id.into(),
        response_id: Some("resp_1".into()),
        tenant: "acme".into(),
        api_key_id: "k1".into(),
        endpoint: "responses.create".into(),
        model: Some("gpt-5".into()),
        upstream: Some("default".into()),
        upstream_model: Some("gpt-5-2025-08-07".into()),
        stream: true,
        status: "completed".into(),
        usage_source: "reported".into(),
        input_tokens: 10,
        cached_tokens: 2,
        output_tokens: 5,
        reasoning_tokens: 1,
        total_tokens: 15,
        service_tier: Some("default".into()),
        price_id: None,
        cost: Some(Decimal::new(123_456_789, 13)),
        unpriced_reason: None,
        currency: "usd".into(),
        http_status: Some(200),
        error_code: None,
        attempts: 1,
        fallback_from: None,
        end_user: None,
        dropped_tools: None,
        client_request_id: None,
        client_disconnected: false,
        mcp_calls: 0,
        started_at: chrono::Utc::now(),
        first_byte_at: None,
        finished_at: chrono::Utc::now(),
        anomaly: None,
    }
}
