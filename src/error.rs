//! The one error type of the HTTP edge.
//!
//! Every handler under `/v1`, `/api/v1` and `/admin` fails with an [`ApiError`],
//! which renders the OpenAI error envelope
//! `{"error": {"message", "type", "param", "code"}}`, knows its HTTP status,
//! where the fault lies ([`ErrorSource`]) and whether the client may retry.
//! Errors the client must not retry carry `x-should-retry: false`, which the
//! OpenAI SDKs honour even on 429/5xx.
//!
//! Upstream HTTP errors are *not* `ApiError`s: they are forwarded byte for byte.

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Who caused the failure; decides retry advice and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The caller sent something we refuse.
    Client,
    /// The backend failed or could not be reached.
    Upstream,
    /// Tollgate itself failed.
    Internal,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: Option<Cow<'static, str>>,
    pub param: Option<String>,
    pub message: String,
    pub source: ErrorSource,
    /// Seconds for a `retry-after` header (spend-control refusals).
    pub retry_after: Option<u64>,
}

/// The OpenAI error envelope every Tollgate-raised error is rendered in.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ErrorBody)]
pub struct Body<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        let source = if status.is_server_error() {
            ErrorSource::Internal
        } else {
            ErrorSource::Client
        };
        Self {
            status,
            kind,
            code: None,
            param: None,
            message: message.into(),
            source,
            retry_after: None,
        }
    }

    pub fn with_code(mut self, code: impl Into<Cow<'static, str>>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// 400 `invalid_request_error`.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            message.into(),
        )
    }

    pub fn invalid_json(detail: impl std::fmt::Display) -> Self {
        Self::invalid_request(format!(
            "We could not parse the JSON body of your request: {detail}"
        ))
        .with_code("invalid_json")
    }

    pub fn missing_parameter(param: &str) -> Self {
        Self::invalid_request(format!("Missing required parameter: '{param}'."))
            .with_code("missing_required_parameter")
            .with_param(param)
    }

    pub fn invalid_value(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::invalid_request(message)
            .with_code("invalid_value")
            .with_param(param)
    }

    pub fn invalid_api_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "Incorrect API key provided. Use `Authorization: Bearer <your Tollgate key>`.",
        )
        .with_code("invalid_api_key")
    }

    pub fn admin_unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "Incorrect admin token provided.",
        )
        .with_code("invalid_api_key")
    }

    pub fn admin_disabled() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "The admin API is disabled: TOLLGATE_ADMIN_TOKEN is not set.",
        )
        .with_code("admin_disabled")
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
        .with_code("model_not_found")
        .with_param("model")
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message).with_code("not_found")
    }

    /// 410 `ledger_archived`: the rows asked for belong to a month that was
    /// archived and dropped (CONTRACT §5); reports still answer it.
    pub fn ledger_archived(month: impl std::fmt::Display, location: &str) -> Self {
        Self::new(
            StatusCode::GONE,
            "invalid_request_error",
            format!(
                "The ledger rows of {month} were archived to {location} and are no longer in \
                 the database: read them from the archive (`tollgate ledger restore --month \
                 {month}` brings them back), use /v1/usage for their sums, or narrow \
                 start_time/end_time to months still in the database."
            ),
        )
        .with_code("ledger_archived")
        .with_param("start_time")
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("The request body exceeds the limit of {limit} bytes."),
        )
        .with_code("request_too_large")
    }

    /// 429 `insufficient_quota` (type and code): a budget would be exceeded.
    pub fn insufficient_quota(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", message)
            .with_code("insufficient_quota")
    }

    /// 429 `rate_limit_exceeded` with `retry-after`: a rate or concurrency limit.
    pub fn rate_limited(message: impl Into<String>, retry_after: u64) -> Self {
        let mut err = Self::new(StatusCode::TOO_MANY_REQUESTS, "requests", message)
            .with_code("rate_limit_exceeded");
        err.retry_after = Some(retry_after);
        err
    }

    /// 422 for admin input that parses but is not acceptable; `field` names it.
    pub fn unprocessable(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request_error",
            message,
        )
        .with_code("invalid_value")
        .with_param(field)
    }

    pub fn upstream_unreachable(detail: impl std::fmt::Display) -> Self {
        let mut err = Self::new(
            StatusCode::BAD_GATEWAY,
            "api_error",
            format!("The model backend could not be reached: {detail}"),
        )
        .with_code("upstream_unreachable");
        err.source = ErrorSource::Upstream;
        err
    }

    pub fn upstream_timeout(seconds: f64) -> Self {
        let mut err = Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "api_error",
            format!("The model backend did not answer within {seconds} s."),
        )
        .with_code("upstream_timeout");
        err.source = ErrorSource::Upstream;
        err
    }

    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "api_error", message)
            .with_code("service_unavailable")
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "The gateway failed to process the request.",
        )
        .with_code("internal_error")
    }

    /// Retrying an identical request can only help for upstream and capacity
    /// faults; everything the client sent wrong fails again the same way.
    pub fn retryable(&self) -> bool {
        // A spent budget stays spent until its period resets.
        self.kind != "insufficient_quota"
            && matches!(
                self.status,
                StatusCode::REQUEST_TIMEOUT
                    | StatusCode::TOO_MANY_REQUESTS
                    | StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            )
    }

    /// The `error_code` recorded in the ledger for a refused request.
    pub fn ledger_code(&self) -> &str {
        self.code.as_deref().unwrap_or(self.kind)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let envelope = Envelope {
            error: Body {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code.as_deref(),
            },
        };
        serde_json::to_vec(&envelope).unwrap_or_default()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.to_json()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if !self.retryable() {
            headers.insert("x-should-retry", HeaderValue::from_static("false"));
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => {
                tracing::warn!(error = %err, "database unavailable");
                Self::service_unavailable("The database is unavailable; try again shortly.")
            }
            other => Self::internal(other),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn envelope_has_all_four_keys() {
        let err = ApiError::invalid_request("bad").with_param("tools[0].type");
        let v: serde_json::Value = serde_json::from_slice(&err.to_json()).unwrap();
        assert_eq!(v["error"]["message"], "bad");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "tools[0].type");
        assert!(v["error"].get("code").unwrap().is_null());
    }

    #[test]
    fn client_errors_say_do_not_retry() {
        let resp = ApiError::missing_parameter("model").into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(resp.headers()["x-should-retry"], "false");
        let resp = ApiError::upstream_unreachable("refused").into_response();
        assert!(resp.headers().get("x-should-retry").is_none());
    }
}
