//! Forwarding `/responses` traffic: read and check the body, pick the price,
//! call the upstream (with the caller's retry budget), and hand the answer
//! back through the metering body wrapper.
//!
//! Flow: auth → [`request`] (validate, rewrite) → price in force now →
//! [`upstream`] → [`tap::MeteredBody`] (forward + observe) → the meter's one
//! end-of-request record. Every refusal after authentication is metered too.

pub mod request;
pub mod tap;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::time::Instant;

use crate::app::AppState;
use crate::error::ApiError;
use crate::metering::{Meter, RequestContext};
use crate::usage::error_code_from_body;
use request::{parse_create, CreateRequest};
use tap::{MeteredBody, Observer, TapSettings};
use upstream::{forwarded_headers, retry_after, Upstream};

pub const REQUEST_ID_HEADER: &str = "x-tollgate-request-id";

/// `POST /v1/responses` and `POST /api/v1/responses`.
pub async fn create_response(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let principal = match state.auth.authenticate(authorization(&headers)).await {
        Ok(principal) => principal,
        Err(err) => return err.into_response(),
    };
    let meter = Meter::new(
        RequestContext::new(principal, "responses.create"),
        state.ledger.clone(),
    );
    let request_id = meter.request_id().to_owned();
    let mut response = forward_create(&state, meter, &headers, body).await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

pub fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

async fn forward_create(
    state: &AppState,
    mut meter: Meter,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let bytes = match read_body(headers, body, state.config.body_limit_bytes).await {
        Ok(bytes) => bytes,
        Err(err) => {
            meter.reject(&err);
            return err.into_response();
        }
    };
    let request = match parse_create(&bytes, &state.config.model_prefix) {
        Ok(request) => request,
        Err(rejection) => {
            if let Some(ctx) = meter.ctx_mut() {
                ctx.model = rejection.partial.model;
                ctx.stream = rejection.partial.stream;
                ctx.end_user = rejection.partial.end_user;
            }
            meter.reject(&rejection.error);
            return rejection.error.into_response();
        }
    };
    drop(bytes);

    let upstream = state.upstream.as_ref();
    let Some(ctx) = meter.ctx_mut() else {
        return ApiError::internal("meter without context").into_response();
    };
    ctx.model = Some(request.model.clone());
    ctx.stream = request.stream;
    ctx.end_user = request.end_user.clone();
    ctx.upstream = Some(upstream.name.clone());
    ctx.price = state.prices.lookup(&request.model, ctx.started_at);
    if ctx.price.is_none() && !state.config.prices.allow_unpriced_models {
        let err = ApiError::model_not_found(&request.model);
        meter.reject(&err);
        return err.into_response();
    }

    let request_id = meter.request_id().to_owned();
    let (reply, attempts) = send_with_retries(upstream, &request, &request_id).await;
    if let Some(ctx) = meter.ctx_mut() {
        ctx.attempts = attempts;
    }
    let reply = match reply {
        Ok(reply) => reply,
        Err(err) => {
            meter.upstream_failed(&err);
            return err.into_response();
        }
    };

    let status = reply.status;
    let mut out_headers = forwarded_headers(&reply.headers);
    let is_sse = request.stream
        && reply
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
    if is_sse {
        out_headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
        // Tell a buffering reverse proxy in front of us to pass events on.
        out_headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    }
    let observer = if is_sse {
        Observer::sse()
    } else {
        Observer::json()
    };
    let body = MeteredBody::new(
        reply.body,
        observer,
        meter,
        status.as_u16(),
        TapSettings {
            idle: request.timeout(),
            policy: state.config.on_client_disconnect,
            tasks: state.tasks.clone(),
            recovery: Some(state.upstream.clone()),
        },
    );
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = status;
    *response.headers_mut() = out_headers;
    response
}

async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::payload_too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::payload_too_large(limit))
        }
        Err(err) => Err(ApiError::invalid_request(format!(
            "The request body could not be read: {err}"
        ))),
    }
}

/// The upstream's answer, with its body still to be streamed.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: reqwest::Body,
}

impl Reply {
    fn streaming(response: reqwest::Response) -> Self {
        Self {
            status: response.status(),
            headers: response.headers().clone(),
            body: reqwest::Body::from(response),
        }
    }
}

/// Sends the request, retrying what the caller allowed (`max_retries`) and
/// what can help: connect failures, 429 `rate_limit_exceeded` (never
/// `insufficient_quota`) and 5xx. Nothing is retried once the answer's body
/// may have reached the client. Returns the attempts made.
async fn send_with_retries(
    upstream: &Upstream,
    request: &CreateRequest,
    request_id: &str,
) -> (Result<Reply, ApiError>, i32) {
    let timeout = request.timeout();
    let deadline = Instant::now() + timeout;
    let max_attempts = request.options.max_retries + 1;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let last = attempt >= max_attempts;
        let sent = tokio::time::timeout_at(
            deadline,
            upstream
                .create_response(request.body.clone(), request_id)
                .send(),
        )
        .await;
        let attempts = i32::try_from(attempt).unwrap_or(i32::MAX);
        let response = match sent {
            Err(_) => {
                return (
                    Err(ApiError::upstream_timeout(timeout.as_secs_f64())),
                    attempts,
                )
            }
            Ok(Err(err)) => {
                if !last && (err.is_connect() || err.is_request()) {
                    backoff(attempt, None, deadline).await;
                    continue;
                }
                return (
                    Err(ApiError::upstream_unreachable(without_url(&err))),
                    attempts,
                );
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
        if last || !retryable {
            return (Ok(Reply::streaming(response)), attempts);
        }
        // Read the (small) error body: a quota error must not be retried and
        // is then passed on exactly as received.
        let headers = response.headers().clone();
        let wait = retry_after(&headers);
        let body = match tokio::time::timeout_at(deadline, response.bytes()).await {
            Ok(Ok(body)) => body,
            _ => Bytes::new(),
        };
        if error_code_from_body(&body).as_deref() == Some("insufficient_quota") {
            return (
                Ok(Reply {
                    status,
                    headers,
                    body: reqwest::Body::from(body),
                }),
                attempts,
            );
        }
        tracing::info!(request_id, attempt, %status, "retrying upstream");
        backoff(attempt, wait, deadline).await;
    }
}

async fn backoff(attempt: u32, asked: Option<Duration>, deadline: Instant) {
    let exponential = Duration::from_millis(250u64 << attempt.min(5));
    let wait = asked.unwrap_or(exponential);
    tokio::time::sleep_until((Instant::now() + wait).min(deadline)).await;
}

/// reqwest errors name the URL; the upstream's address is not the client's business.
fn without_url(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    if let Some(url) = err.url() {
        text = text.replace(url.as_str(), "upstream");
    }
    text
}
