//! The one end-of-request hook: outcome → usage → price → ledger row.
//!
//! A [`Meter`] is created as soon as a request is authenticated and travels
//! with it (into the response body wrapper for proxied responses). It records
//! exactly once: through [`Meter::finish`] on every ending the code foresees,
//! and through `Drop` on every ending it does not (a handler future dropped
//! because the client left, a panic unwinding) — then as `interrupted`.
//! Recording is a channel send; nothing here waits for the database.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::ledger::{boundary, LedgerHandle, LedgerRow, RequestStatus, UsageSource};
use crate::pricing::{cost, PriceVersion};
use crate::usage::{ResponseSummary, Usage};

/// What is known about a request before it is forwarded.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub principal: Principal,
    pub endpoint: &'static str,
    pub started_at: DateTime<Utc>,
    pub model: Option<String>,
    pub stream: bool,
    pub end_user: Option<String>,
    pub upstream: Option<String>,
    /// The price version in force at `started_at`, captured once.
    pub price: Option<Arc<PriceVersion>>,
    pub attempts: i32,
    /// The model the client asked for, when a fallback served instead.
    pub fallback_from: Option<String>,
    /// False for calls that report usage they did not cause (retrieving a
    /// response shows its original usage): recorded, never billed.
    pub billable: bool,
    /// Offered tools left out of the forwarded request (`proxy::tools`).
    pub dropped_tools: Option<String>,
    /// The client's valid `x-client-request-id` (`proxy::headers`).
    pub client_request_id: Option<String>,
}

impl RequestContext {
    pub fn new(principal: Principal, endpoint: &'static str) -> Self {
        Self {
            request_id: new_request_id(),
            principal,
            endpoint,
            started_at: Utc::now(),
            model: None,
            stream: false,
            end_user: None,
            upstream: None,
            price: None,
            attempts: 0,
            fallback_from: None,
            billable: true,
            dropped_tools: None,
            client_request_id: None,
        }
    }
}

pub fn new_request_id() -> String {
    format!("req_{}", uuid::Uuid::now_v7().simple())
}

/// How the exchange ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: RequestStatus,
    pub summary: Option<ResponseSummary>,
    pub usage_source: UsageSource,
    pub http_status: Option<u16>,
    pub error_code: Option<String>,
    pub response_id: Option<String>,
    pub first_byte_at: Option<DateTime<Utc>>,
    pub client_disconnected: bool,
}

impl Outcome {
    pub fn new(status: RequestStatus) -> Self {
        Self {
            status,
            summary: None,
            usage_source: UsageSource::Missing,
            http_status: None,
            error_code: None,
            response_id: None,
            first_byte_at: None,
            client_disconnected: false,
        }
    }

    /// A response object reached us: its status and usage decide the row.
    pub fn from_summary(summary: ResponseSummary, http_status: u16) -> Self {
        let status = match summary.status.as_deref() {
            Some("incomplete") => RequestStatus::Incomplete,
            Some("failed") => RequestStatus::Failed,
            Some("cancelled") => RequestStatus::Cancelled,
            Some("completed") => RequestStatus::Completed,
            // A background response: billed when it finishes.
            Some("queued" | "in_progress") if summary.usage.is_none() => RequestStatus::Queued,
            // A response object without a terminal status carries no usage
            // to bill; it did not end properly from our point of view.
            _ if summary.usage.is_none() => RequestStatus::Interrupted,
            _ => RequestStatus::Completed,
        };
        let mut outcome = Self::new(status);
        outcome.usage_source = if summary.usage.is_some() {
            UsageSource::Reported
        } else {
            UsageSource::Missing
        };
        outcome.http_status = Some(http_status);
        outcome.response_id = summary.id.clone();
        outcome.error_code = summary.error_code.clone();
        outcome.summary = Some(summary);
        outcome
    }
}

impl Outcome {
    /// This interrupted outcome, completed by the final response fetched from
    /// the upstream afterwards. The cut stays visible in `error_code`.
    pub fn recovered(self, summary: ResponseSummary) -> Self {
        let http_status = self.http_status.unwrap_or(200);
        let mut outcome = Self::from_summary(summary, http_status);
        outcome.usage_source = UsageSource::Recovered;
        outcome.error_code = self.error_code;
        outcome.response_id = outcome.response_id.or(self.response_id);
        outcome.first_byte_at = self.first_byte_at;
        outcome.client_disconnected = self.client_disconnected;
        outcome
    }
}

/// Records its request exactly once.
pub struct Meter {
    ctx: Option<RequestContext>,
    ledger: LedgerHandle,
}

impl Meter {
    pub fn new(ctx: RequestContext, ledger: LedgerHandle) -> Self {
        Self {
            ctx: Some(ctx),
            ledger,
        }
    }

    /// The context; present until the meter has recorded.
    pub fn ctx(&self) -> Option<&RequestContext> {
        self.ctx.as_ref()
    }

    pub fn ctx_mut(&mut self) -> Option<&mut RequestContext> {
        self.ctx.as_mut()
    }

    pub fn request_id(&self) -> &str {
        self.ctx.as_ref().map_or("", |c| c.request_id.as_str())
    }

    pub fn finish(mut self, outcome: Outcome) {
        self.record(outcome);
    }

    /// Tollgate refused the request; nothing was forwarded.
    pub fn reject(self, error: &ApiError) {
        let mut outcome = Outcome::new(RequestStatus::Rejected);
        outcome.http_status = Some(error.status.as_u16());
        outcome.error_code = Some(error.ledger_code().to_owned());
        self.finish(outcome);
    }

    /// The upstream could not be reached or timed out before answering.
    pub fn upstream_failed(self, error: &ApiError) {
        let mut outcome = Outcome::new(RequestStatus::UpstreamError);
        outcome.http_status = Some(error.status.as_u16());
        outcome.error_code = Some(error.ledger_code().to_owned());
        self.finish(outcome);
    }

    fn record(&mut self, outcome: Outcome) {
        if let Some(ctx) = self.ctx.take() {
            // A client saw a response finish: a queued background row may
            // be ready to settle now rather than at the next poll.
            let finished = outcome
                .summary
                .as_ref()
                .and_then(|s| s.status.as_deref())
                .is_some_and(|s| !matches!(s, "queued" | "in_progress"));
            if ctx.endpoint == "responses.retrieve" && finished {
                self.ledger.nudge_background();
            }
            let row = build_row(ctx, outcome, Utc::now());
            crate::telemetry::observe_row(&row);
            self.ledger.record(row);
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if self.ctx.is_some() {
            let mut outcome = Outcome::new(RequestStatus::Interrupted);
            outcome.client_disconnected = true;
            outcome.error_code = Some("client_disconnected".into());
            self.record(outcome);
        }
    }
}

/// What a row bills: the usage as stored, where it came from, and its price.
#[derive(Debug, Clone, PartialEq)]
pub struct Billing {
    /// Zero when there is no usage to store (missing or invalid).
    pub usage: Usage,
    pub usage_source: UsageSource,
    pub cost: Option<Decimal>,
    pub price_id: Option<i64>,
    pub unpriced_reason: Option<String>,
    /// What the upstream reported when it cannot be true.
    pub anomaly: Option<String>,
}

/// The one place a usage report becomes a bill: usage that cannot be true
/// (see [`boundary::usage_problem`]) and costs beyond [`boundary::max_cost`]
/// are `invalid`, never priced and never stored as numbers the database
/// would refuse; what was reported stays in `anomaly`. Used for every new
/// row and for every settled background row.
pub fn bill(
    status: RequestStatus,
    source: UsageSource,
    summary: &ResponseSummary,
    price: Option<&PriceVersion>,
) -> Billing {
    let invalid = |anomaly: String| Billing {
        usage: Usage::default(),
        usage_source: UsageSource::Invalid,
        cost: None,
        price_id: None,
        unpriced_reason: Some("usage_invalid".to_owned()),
        anomaly: Some(anomaly),
    };
    if let Some(problem) = summary.usage_problem {
        return invalid(format!("usage_invalid: {problem}"));
    }
    if let Some(usage) = &summary.usage {
        if let Some(reason) = boundary::usage_problem(usage) {
            return invalid(boundary::describe_invalid_usage(reason, usage));
        }
    }
    let (cost, price_id, unpriced_reason) = if summary.usage.is_none()
        && matches!(
            status,
            RequestStatus::Rejected | RequestStatus::UpstreamError
        ) {
        // Refused or failed before the backend did any work: nothing to
        // bill, and we know it.
        (Some(Decimal::ZERO), None, None)
    } else if summary.usage.is_none() && status == RequestStatus::Queued {
        (None, None, Some("background_pending".to_owned()))
    } else {
        price_usage(
            price,
            summary.usage.as_ref(),
            summary.service_tier.as_deref(),
        )
    };
    if let (Some(cost), Some(usage)) = (cost, &summary.usage) {
        if cost.abs() > boundary::max_cost() {
            return invalid(boundary::describe_invalid_usage("cost_out_of_range", usage));
        }
    }
    Billing {
        usage: summary.usage.unwrap_or_default(),
        usage_source: if summary.usage.is_some() {
            source
        } else {
            UsageSource::Missing
        },
        cost,
        price_id,
        unpriced_reason,
        anomaly: None,
    }
}

/// Prices the outcome with the version captured at the request's start,
/// then seals the row at the ledger's boundary.
pub fn build_row(ctx: RequestContext, outcome: Outcome, finished_at: DateTime<Utc>) -> LedgerRow {
    let status = row_status(ctx.billable, &outcome);
    let mut summary = outcome.summary.unwrap_or_default();
    let billing = if ctx.billable {
        bill(
            outcome.status,
            outcome.usage_source,
            &summary,
            ctx.price.as_deref(),
        )
    } else {
        // A call that causes no usage (retrieve, delete, ...).
        summary.usage = None;
        summary.usage_problem = None;
        Billing {
            usage: Usage::default(),
            usage_source: UsageSource::Missing,
            cost: Some(Decimal::ZERO),
            price_id: None,
            unpriced_reason: None,
            anomaly: None,
        }
    };
    let currency = ctx
        .price
        .as_ref()
        .map_or_else(|| "usd".to_owned(), |p| p.currency.clone());
    let usage = billing.usage;
    let mut row = LedgerRow {
        id: None,
        request_id: ctx.request_id,
        response_id: outcome.response_id.or(summary.id),
        tenant: ctx.principal.tenant.to_string(),
        api_key_id: ctx.principal.key_id.to_string(),
        endpoint: ctx.endpoint.to_owned(),
        model: ctx.model,
        upstream: ctx.upstream,
        upstream_model: summary.model,
        stream: ctx.stream,
        status: status.as_str().to_owned(),
        usage_source: billing.usage_source.as_str().to_owned(),
        input_tokens: usage.input_tokens,
        cached_tokens: usage.cached_tokens,
        output_tokens: usage.output_tokens,
        reasoning_tokens: usage.reasoning_tokens,
        total_tokens: usage.total_tokens,
        service_tier: summary.service_tier,
        price_id: billing.price_id,
        cost: billing.cost,
        unpriced_reason: billing.unpriced_reason,
        currency,
        http_status: outcome.http_status.map(i32::from),
        error_code: outcome.error_code,
        attempts: ctx.attempts,
        fallback_from: ctx.fallback_from,
        end_user: ctx.end_user,
        dropped_tools: ctx.dropped_tools,
        client_request_id: ctx.client_request_id,
        client_disconnected: outcome.client_disconnected,
        mcp_calls: i32::try_from(summary.mcp_calls).unwrap_or(i32::MAX),
        started_at: ctx.started_at,
        first_byte_at: outcome.first_byte_at,
        finished_at,
        anomaly: billing.anomaly,
    };
    boundary::seal(&mut row);
    row
}

/// The row's status. A call that uses no model (input items, delete, token
/// count, ...) answers something other than a response object: a complete
/// 2xx answer without a status or usage is that call done, not a response
/// cut short. A cut body keeps its cut code and stays `interrupted`.
fn row_status(billable: bool, outcome: &Outcome) -> RequestStatus {
    let answered = outcome
        .http_status
        .is_some_and(|status| (200..300).contains(&status))
        && outcome.error_code.is_none();
    match outcome.status {
        RequestStatus::Interrupted if !billable && answered => RequestStatus::Completed,
        status => status,
    }
}

/// Cost, price id and unpriced reason of `usage` under `price`.
pub fn price_usage(
    price: Option<&PriceVersion>,
    usage: Option<&Usage>,
    service_tier: Option<&str>,
) -> (Option<Decimal>, Option<i64>, Option<String>) {
    let Some(usage) = usage else {
        return (None, None, Some("usage_missing".to_owned()));
    };
    match price.and_then(|p| p.sheet.as_ref().map(|sheet| (p.id, sheet))) {
        Some((id, sheet)) => match cost::cost(sheet, usage, service_tier) {
            Ok(value) => (Some(value), Some(id), None),
            Err(unpriced) => (None, None, Some(unpriced.reason())),
        },
        None => (None, None, Some("no_price".to_owned())),
    }
}
