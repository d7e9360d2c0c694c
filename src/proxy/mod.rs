//! Forwarding `/responses` traffic: read and check the body, pick the price,
//! route it (deployments, fallbacks, affinity), call the upstream with the
//! caller's retry budget, and hand the answer back through the metering body
//! wrapper.
//!
//! Flow: auth → [`request`] (parse, rewrite) → the candidate list (the
//! request, then its fallbacks) → every candidate's effective body through
//! [`validate`] and [`admit`] (tools, MCP allowlist, stateful rule, text
//! bounds, ownership of referenced ids), all before anything is sent →
//! [`route`] (deployments) → price in force at the request's start →
//! [`upstream`] → [`tap::MeteredBody`] (forward + observe) → the meter's one
//! end-of-request record. Every refusal after authentication is metered too.

pub mod admit;
pub mod conversations;
pub mod headers;
pub mod request;
pub mod route;
pub mod settle;
pub mod tap;
pub mod tools;
pub mod upstream;
pub mod validate;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::ledger::owners::owner_of;
use crate::metering::{Meter, RequestContext};
use crate::state::AppState;
use crate::usage::error_code_from_body;
use admit::admit;
use request::{parse_create, CreateRequest, Fallback};
use route::{auto_chain, Deployment};
use tap::{MeteredBody, Observer, TapSettings, UpstreamBody};
use upstream::{forwarded_headers, retry_after, Upstream, UpstreamError};

pub const REQUEST_ID_HEADER: &str = "x-tollgate-request-id";

/// How many models `"auto"` adds after the requested one.
const AUTO_FALLBACKS: usize = 3;
/// Deadline for calls that carry no `turing_options` (retrieve, delete …).
const PASSTHROUGH_TIMEOUT: Duration = Duration::from_secs(120);

/// The body-carrying `/responses` calls that are routed by model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Routed {
    Create,
    Compact,
    InputTokens,
}

impl Routed {
    fn endpoint(self) -> &'static str {
        match self {
            Self::Create => "responses.create",
            Self::Compact => "responses.compact",
            Self::InputTokens => "responses.input_tokens",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Self::Create => "",
            Self::Compact => "/compact",
            Self::InputTokens => "/input_tokens",
        }
    }

    /// Counting input tokens causes no usage; creating and compacting do.
    fn billable(self) -> bool {
        self != Self::InputTokens
    }
}

pub fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// Authenticates and opens the request's meter; a 401 is not metered.
async fn open_meter(
    state: &AppState,
    headers: &HeaderMap,
    endpoint: &'static str,
) -> Result<Meter, Response> {
    let principal = state
        .auth
        .authenticate(authorization(headers))
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(Meter::new(
        RequestContext::new(principal, endpoint),
        state.ledger.clone(),
    ))
}

fn with_request_id(mut response: Response, request_id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// `POST /v1/responses`.
pub async fn create_response(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    routed(&state, &headers, body, Routed::Create).await
}

/// `POST /v1/responses/compact` (metered: it reports usage).
pub async fn compact_response(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    routed(&state, &headers, body, Routed::Compact).await
}

/// `POST /v1/responses/input_tokens`.
pub async fn count_input_tokens(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    routed(&state, &headers, body, Routed::InputTokens).await
}

async fn routed(state: &AppState, headers: &HeaderMap, body: Body, kind: Routed) -> Response {
    let mut meter = match open_meter(state, headers, kind.endpoint()).await {
        Ok(meter) => meter,
        Err(response) => return response,
    };
    if let Some(ctx) = meter.ctx_mut() {
        ctx.billable = kind.billable();
    }
    let request_id = meter.request_id().to_owned();
    let response = forward_routed(state, meter, headers, body, kind).await;
    with_request_id(response, &request_id)
}

/// A request refused before it could take the create path (a WebSocket
/// `response.create` whose envelope is wrong): one rejected row, and the
/// error as the answer.
async fn refused(state: &AppState, headers: &HeaderMap, kind: Routed, err: ApiError) -> Response {
    let meter = match open_meter(state, headers, kind.endpoint()).await {
        Ok(meter) => meter,
        Err(response) => return response,
    };
    let request_id = meter.request_id().to_owned();
    meter.reject(&err);
    with_request_id(err.into_response(), &request_id)
}

/// One model to try, with what the fallback rules give it, already checked.
struct Candidate {
    model: String,
    overrides: Vec<(String, Box<RawValue>)>,
    max_retries: u32,
    /// Where this candidate's referenced state lives.
    pinned: Option<String>,
    /// What its body carries over from earlier state (for the cost bound).
    carried: crate::limits::estimate::Carried,
    /// Its parameter path (`turing_options.fallbacks[0]`), empty for the
    /// request itself.
    param: String,
    /// The end user of this candidate's body (an override may change it).
    end_user: Option<String>,
    /// The offered tools this candidate's body leaves out (an override of
    /// `tools` may change them).
    dropped: Vec<tools::Dropped>,
}

/// The answer of the candidate that served (or failed last).
struct Served {
    result: Result<Reply, ApiError>,
    deployment: Deployment,
    index: usize,
    attempts: i32,
}

/// parse → candidates (each checked like the request) → send → respond.
async fn forward_routed(
    state: &AppState,
    mut meter: Meter,
    headers: &HeaderMap,
    body: Body,
    kind: Routed,
) -> Response {
    let prepared = match prepare(state, &mut meter, headers, body, kind).await {
        Ok(prepared) => prepared,
        Err(err) => {
            meter.reject(&err);
            return err.into_response();
        }
    };
    let (request, chain) = prepared;
    let admission = match limit(state, &meter, &request, &chain, kind).await {
        Ok(admission) => admission,
        Err(err) => {
            meter.reject(&err);
            return err.into_response();
        }
    };
    let request_id = meter.request_id().to_owned();
    let forwarded = headers::forwarded(headers, &request_id);
    let served = match send_chain(state, &request, &chain, kind, &request_id, &forwarded).await {
        Ok(Some(served)) => served,
        Ok(None) => {
            let err = ApiError::model_not_found(&request.model);
            meter.reject(&err);
            return err.into_response();
        }
        Err(err) => {
            meter.reject(&err);
            return err.into_response();
        }
    };
    let mut response = answer(state, meter, &request, &chain, served);
    admission.apply(response.headers_mut());
    response
}

/// Spend control, once the request and every candidate passed their checks
/// and before anything is sent: the bound of the cost is reserved against
/// the highest price any candidate could be served at, each with its own
/// effective body and what it carries over.
async fn limit(
    state: &AppState,
    meter: &Meter,
    request: &CreateRequest,
    chain: &[Candidate],
    kind: Routed,
) -> Result<crate::limits::Admission, ApiError> {
    let Some(ctx) = meter.ctx().filter(|_| kind.billable()) else {
        return Ok(crate::limits::Admission::default());
    };
    state
        .limits
        .admit(&state.pool, ctx, || estimate(state, ctx, request, chain))
        .await
}

fn estimate(
    state: &AppState,
    ctx: &crate::metering::RequestContext,
    request: &CreateRequest,
    chain: &[Candidate],
) -> crate::limits::Estimate {
    use crate::limits::estimate::Candidate as Bounded;
    let bodies: Vec<bytes::Bytes> = chain
        .iter()
        .map(|c| {
            request
                .body_for(&c.model, &c.overrides)
                .unwrap_or_else(|_| request.body.clone())
        })
        .collect();
    let candidates: Vec<Bounded<'_>> = chain
        .iter()
        .zip(&bodies)
        .map(|(c, body)| Bounded {
            body,
            price: state.prices.lookup(&c.model, ctx.started_at),
            carried: c.carried,
            param: &c.param,
        })
        .collect();
    crate::limits::Estimate::of_candidates(&candidates)
}

/// Everything decided before the first byte goes upstream: the body read and
/// parsed, the ledger context set, and every candidate built and checked.
async fn prepare(
    state: &AppState,
    meter: &mut Meter,
    headers: &HeaderMap,
    body: Body,
    kind: Routed,
) -> Result<(CreateRequest, Vec<Candidate>), ApiError> {
    let ctx = meter
        .ctx_mut()
        .ok_or_else(|| ApiError::internal("meter without context"))?;
    // Recorded on refusals too: it is how a client finds its row.
    ctx.client_request_id = headers::client_request_id(headers);
    let bytes = read_body(headers, body, state.config.body_limit_bytes).await?;
    let tenant = ctx.principal.tenant.clone();
    let policy = state.config.tools.policy(&tenant);
    let request = match parse_create(&bytes, &state.config.model_prefix, policy) {
        Ok(request) => request,
        Err(rejection) => {
            // Only values that passed their checks are on the partial.
            ctx.model = rejection.partial.model;
            ctx.stream = rejection.partial.stream;
            ctx.end_user = rejection.partial.end_user;
            return Err(rejection.error);
        }
    };
    ctx.model = Some(request.model.clone());
    ctx.stream = request.stream;
    ctx.end_user = request.facts.end_user.clone();
    let started_at = ctx.started_at;
    ctx.dropped_tools = tools::dropped_list(&request.dropped_tools);
    let chain = build_candidates(state, &request, kind, started_at)?;
    let chain = admit_candidates(state, &request, &tenant, chain).await?;
    Ok((request, chain))
}

/// A model the price book must know, unless unpriced models are allowed.
fn require_price(
    state: &AppState,
    kind: Routed,
    model: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> bool {
    state.config.prices.allow_unpriced_models
        || !kind.billable()
        || state.prices.lookup(model, at).is_some()
}

/// The request's model, then its fallbacks in order (`"auto"` expanded),
/// each with its overrides and the parameter path that names it.
fn build_candidates(
    state: &AppState,
    request: &CreateRequest,
    kind: Routed,
    started_at: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<(Candidate, String)>, ApiError> {
    if !require_price(state, kind, &request.model, started_at) {
        return Err(ApiError::model_not_found(&request.model));
    }
    let candidate = |model: String, overrides, max_retries| Candidate {
        model,
        overrides,
        max_retries,
        pinned: None,
        carried: Default::default(),
        param: String::new(),
        end_user: None,
        dropped: Vec::new(),
    };
    let mut chain = vec![(
        candidate(
            request.model.clone(),
            Vec::new(),
            request.options.max_retries,
        ),
        String::new(),
    )];
    let fallbacks = &request.options.fallbacks;
    for (i, fallback) in fallbacks.iter().enumerate() {
        let param = if fallbacks.len() > 1 {
            format!("turing_options.fallbacks[{i}]")
        } else {
            "turing_options.fallbacks".to_owned()
        };
        // Fallbacks inherit the request and its timeout, not retries or fallbacks.
        let (model, overrides) = match fallback {
            Fallback::Model(model) => (model.clone(), Vec::new()),
            Fallback::Override { model, fields } => (model.clone(), fields.clone()),
            Fallback::Auto => {
                let table = state.prices.snapshot();
                let catalogue: Vec<&str> = table
                    .models()
                    .filter(|m| table.lookup(m, started_at).is_some())
                    .collect();
                for model in auto_chain(&request.model, catalogue, AUTO_FALLBACKS) {
                    chain.push((candidate(model, Vec::new(), 0), param.clone()));
                }
                continue;
            }
        };
        if !require_price(state, kind, &model, started_at) {
            return Err(ApiError::invalid_value(
                param,
                format!("The fallback model `{model}` does not exist or has no price."),
            )
            .with_code("model_not_found"));
        }
        chain.push((candidate(model, overrides, 0), param));
    }
    Ok(chain)
}

/// Every candidate's effective body passes the request's checks and its
/// admission (ownership, MCP allowlist) before anything is sent: one refused
/// fallback refuses the whole request.
async fn admit_candidates(
    state: &AppState,
    request: &CreateRequest,
    tenant: &str,
    chain: Vec<(Candidate, String)>,
) -> Result<Vec<Candidate>, ApiError> {
    let own = admit(state, tenant, &request.facts, "").await?;
    let mut checked = Vec::with_capacity(chain.len());
    for (mut candidate, param) in chain {
        candidate.param.clone_from(&param);
        if candidate.overrides.is_empty() {
            candidate.pinned.clone_from(&own.pinned);
            candidate.carried = own.carried;
            candidate.end_user.clone_from(&request.facts.end_user);
            candidate.dropped.clone_from(&request.dropped_tools);
        } else {
            let facts = request.fallback_facts(&candidate.overrides, &param)?;
            let admitted = admit(state, tenant, &facts, &param).await?;
            candidate.pinned = admitted.pinned;
            candidate.carried = admitted.carried;
            candidate.end_user = facts.end_user;
            candidate.dropped = facts.tools.dropped;
        }
        checked.push(candidate);
    }
    Ok(checked)
}

/// Tries the candidates in order, each on its deployments, until one answers
/// with something other than a backend failure. `None`: no deployment at all.
async fn send_chain(
    state: &AppState,
    request: &CreateRequest,
    chain: &[Candidate],
    kind: Routed,
    request_id: &str,
    forwarded: &HeaderMap,
) -> Result<Option<Served>, ApiError> {
    let mut attempts = 0;
    let mut last_failure = None;
    for (index, candidate) in chain.iter().enumerate() {
        let deployments = match &candidate.pinned {
            Some(upstream) => state.routes.pinned(&candidate.model, upstream),
            None => state.routes.deployments(&candidate.model),
        };
        for deployment in deployments {
            let body = request.body_for(&deployment.model, &candidate.overrides)?;
            let sent = send_with_retries(
                &deployment.upstream,
                kind.suffix(),
                body,
                request_id,
                forwarded,
                request.timeout(),
                candidate.max_retries,
            )
            .await;
            attempts += sent.attempts;
            let served = Served {
                result: sent.result,
                deployment,
                index,
                attempts,
            };
            if !sent.worth_another_deployment {
                return Ok(Some(served));
            }
            last_failure = Some(served);
        }
    }
    Ok(last_failure.map(|mut served| {
        served.attempts = attempts;
        served
    }))
}

/// Records which candidate served and hands its answer to the client.
fn answer(
    state: &AppState,
    mut meter: Meter,
    request: &CreateRequest,
    chain: &[Candidate],
    served: Served,
) -> Response {
    let Served {
        result,
        deployment,
        index,
        attempts,
    } = served;
    let Some(ctx) = meter.ctx_mut() else {
        return ApiError::internal("meter without context").into_response();
    };
    ctx.attempts = attempts;
    ctx.upstream = Some(deployment.upstream.name.clone());
    let Some(candidate) = chain.get(index) else {
        return ApiError::internal("served by an unknown candidate").into_response();
    };
    if index > 0 {
        ctx.fallback_from = Some(request.model.clone());
        ctx.model = Some(candidate.model.clone());
        ctx.end_user.clone_from(&candidate.end_user);
        ctx.dropped_tools = tools::dropped_list(&candidate.dropped);
    }
    ctx.price = state.prices.lookup(&candidate.model, ctx.started_at);
    let reply = match result {
        Ok(reply) => reply,
        Err(err) => {
            meter.upstream_failed(&err);
            return err.into_response();
        }
    };
    let response = respond(
        state,
        meter,
        reply,
        request.stream,
        request.timeout(),
        deployment.upstream,
    );
    tools::with_dropped_header(response, &candidate.dropped)
}

/// The upstream's answer, handed to the client through the metering body.
fn respond(
    state: &AppState,
    meter: Meter,
    reply: Reply,
    stream_requested: bool,
    idle: Duration,
    upstream: Arc<Upstream>,
) -> Response {
    let status = reply.status;
    let is_sse = stream_requested
        && reply
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
    let mut out_headers = forwarded_headers(reply.headers);
    if is_sse {
        out_headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
        // Tell a buffering reverse proxy in front of us to pass events on.
        out_headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    }
    let observer = if !status.is_success() {
        Observer::error_body()
    } else if is_sse {
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
            idle,
            policy: state.config.on_client_disconnect,
            tasks: state.tasks.clone(),
            recovery: Some(upstream),
            drain_for: idle,
            cut: state.drain_cut.clone(),
        },
    );
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = status;
    *response.headers_mut() = out_headers;
    response
}

/// A call on an existing response, as the ledger and the upstream see it.
struct OwnedCall {
    method: http::Method,
    endpoint: &'static str,
    /// Appended to `/responses/{id}`.
    suffix: &'static str,
}

const RETRIEVE: OwnedCall = OwnedCall {
    method: http::Method::GET,
    endpoint: "responses.retrieve",
    suffix: "",
};
const DELETE: OwnedCall = OwnedCall {
    method: http::Method::DELETE,
    endpoint: "responses.delete",
    suffix: "",
};
const CANCEL: OwnedCall = OwnedCall {
    method: http::Method::POST,
    endpoint: "responses.cancel",
    suffix: "/cancel",
};
const INPUT_ITEMS: OwnedCall = OwnedCall {
    method: http::Method::GET,
    endpoint: "responses.input_items",
    suffix: "/input_items",
};

/// `GET /v1/responses/{id}` (also `?stream=true&starting_after=N`).
pub async fn retrieve_response(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    owned_call(&state, &headers, RETRIEVE, &id, query).await
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete_response(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    owned_call(&state, &headers, DELETE, &id, None).await
}

/// `POST /v1/responses/{id}/cancel`.
pub async fn cancel_response(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    owned_call(&state, &headers, CANCEL, &id, None).await
}

/// `GET /v1/responses/{id}/input_items`.
pub async fn list_input_items(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    owned_call(&state, &headers, INPUT_ITEMS, &id, query).await
}

/// A call on an existing response: only its creator may make it, and it goes
/// to the upstream that holds the response. Recorded, never billed.
async fn owned_call(
    state: &AppState,
    headers: &HeaderMap,
    call: OwnedCall,
    id: &str,
    query: Option<String>,
) -> Response {
    let OwnedCall {
        method,
        endpoint,
        suffix,
    } = call;
    // `?stream=true` on retrieve replays the events; it only counts as a
    // stream if the upstream answers with one (see `respond`).
    let stream = query.as_deref().is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "stream" && v == "true")
    });
    let mut meter = match open_meter(state, headers, endpoint).await {
        Ok(meter) => meter,
        Err(response) => return response,
    };
    let request_id = meter.request_id().to_owned();
    let Some(ctx) = meter.ctx_mut() else {
        return ApiError::internal("meter without context").into_response();
    };
    ctx.billable = false;
    ctx.stream = stream;
    ctx.client_request_id = headers::client_request_id(headers);
    let tenant = ctx.principal.tenant.clone();
    // Another tenant's id answers exactly as an unknown one.
    let not_found = || {
        ApiError::not_found(format!("No response found with id '{id}'."))
            .with_code("response_not_found")
    };
    // An id that cannot be stored cannot be known; the database never sees it.
    let upstream = match validate::check_text(id, "id", validate::MAX_ID_CHARS) {
        Err(_) => Ok(None),
        Ok(()) => owner_of(state.ledger.recent(), &state.pool, id).await,
    };
    let upstream = match upstream {
        Ok(Some(owner)) if *owner.tenant == *tenant => owner
            .upstream
            .and_then(|name| state.routes.upstream(&name))
            .or_else(|| state.routes.default_upstream()),
        Ok(_) => None,
        Err(err) => {
            let err = ApiError::from(err);
            meter.reject(&err);
            return with_request_id(err.into_response(), &request_id);
        }
    };
    let Some(upstream) = upstream else {
        let err = not_found();
        meter.reject(&err);
        return with_request_id(err.into_response(), &request_id);
    };
    if let Some(ctx) = meter.ctx_mut() {
        ctx.upstream = Some(upstream.name.clone());
    }
    if method == http::Method::DELETE {
        if let Err(err) = settle::before_delete(state, &upstream, id).await {
            meter.reject(&err);
            return with_request_id(err.into_response(), &request_id);
        }
    }
    let mut path = format!("/{}{suffix}", upstream::encode_path_segment(id));
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        path.push('?');
        path.push_str(&query);
    }
    let sent = tokio::time::timeout(
        PASSTHROUGH_TIMEOUT,
        upstream.send_with_headers(
            method,
            &path,
            Bytes::new(),
            headers::forwarded(headers, &request_id),
        ),
    )
    .await;
    let reply = match sent {
        Ok(Ok(response)) => Reply::streaming(response),
        Ok(Err(err)) => {
            let err = ApiError::upstream_unreachable(err.describe());
            meter.upstream_failed(&err);
            return with_request_id(err.into_response(), &request_id);
        }
        Err(_) => {
            let err = ApiError::upstream_timeout(PASSTHROUGH_TIMEOUT.as_secs_f64());
            meter.upstream_failed(&err);
            return with_request_id(err.into_response(), &request_id);
        }
    };
    with_request_id(
        respond(state, meter, reply, stream, PASSTHROUGH_TIMEOUT, upstream),
        &request_id,
    )
}

/// `GET /v1/models`: the public models with a price in force.
#[utoipa::path(get, path = "/v1/models", tag = "usage", security(("key" = [])),
    responses(
        (status = 200, description = "The public models this key may use.", body = crate::schema::ModelList),
        (status = 401, description = "Missing or unknown key.", body = crate::error::Envelope),
        (status = 503, description = "The database is unavailable.", body = crate::error::Envelope),
    ))]
pub async fn list_models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(err) = state.auth.authenticate(authorization(&headers)).await {
        return err.into_response();
    }
    let now = chrono::Utc::now();
    let table = state.prices.snapshot();
    let mut data: Vec<serde_json::Value> = table
        .models()
        .filter_map(|m| table.lookup(m, now))
        .map(|version| {
            serde_json::json!({
                "id": format!("{}{}", state.config.model_prefix, version.model),
                "object": "model",
                "created": version.effective_from.timestamp(),
                "owned_by": "tollgate",
            })
        })
        .collect();
    data.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Json(serde_json::json!({"object": "list", "data": data})).into_response()
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
    body: UpstreamBody,
}

impl Reply {
    fn streaming(response: http::Response<Incoming>) -> Self {
        let (parts, body) = response.into_parts();
        Self {
            status: parts.status,
            headers: parts.headers,
            body: body.map_err(Into::into).boxed(),
        }
    }

    /// An answer whose body was read (to decide on a retry): `head`, then
    /// the `rest` still to stream when the body was longer than what is held.
    fn read(status: StatusCode, headers: HeaderMap, head: Bytes, rest: Option<Incoming>) -> Self {
        let body = match rest {
            None => Full::new(head).map_err(|never| match never {}).boxed(),
            Some(rest) => {
                let head = futures_util::stream::once(async move {
                    Ok::<_, tap::BoxError>(http_body::Frame::data(head))
                });
                let tail = http_body_util::BodyStream::new(rest.map_err(tap::BoxError::from));
                http_body_util::StreamBody::new(futures_util::StreamExt::chain(head, tail)).boxed()
            }
        };
        Self {
            status,
            headers,
            body,
        }
    }
}

/// Reads an error body until it ends or [`tap::ERROR_BODY_PARSE_LIMIT`]
/// bytes are held; returns those and, if it did not end, the unread rest.
/// A body that fails or outlives `deadline` gives what was read.
async fn read_error_head(mut body: Incoming, deadline: Instant) -> (Bytes, Option<Incoming>) {
    let mut head = bytes::BytesMut::new();
    loop {
        if head.len() >= tap::ERROR_BODY_PARSE_LIMIT {
            return (head.freeze(), Some(body));
        }
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    head.extend_from_slice(data);
                }
            }
            Ok(None) => return (head.freeze(), None),
            Ok(Some(Err(_))) | Err(_) => return (head.freeze(), None),
        }
    }
}

struct Sent {
    result: Result<Reply, ApiError>,
    attempts: i32,
    /// The failure is the backend's (unreachable, 429 rate limit, 5xx):
    /// another deployment or fallback may do better.
    worth_another_deployment: bool,
}

/// Sends to one deployment, retrying what the caller allowed (`max_retries`)
/// and what can help: connect failures, 429 `rate_limit_exceeded` (never
/// `insufficient_quota`) and 5xx, honouring `retry-after`. Nothing is retried
/// once the answer's body may have reached the client.
async fn send_with_retries(
    upstream: &Upstream,
    suffix: &str,
    body: Bytes,
    request_id: &str,
    extra: &HeaderMap,
    timeout: Duration,
    max_retries: u32,
) -> Sent {
    let deadline = Instant::now() + timeout;
    let max_attempts = max_retries + 1;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let last = attempt >= max_attempts;
        let attempts = i32::try_from(attempt).unwrap_or(i32::MAX);
        let sent = tokio::time::timeout_at(
            deadline,
            upstream.send_with_headers(http::Method::POST, suffix, body.clone(), extra.clone()),
        )
        .await;
        let response = match sent {
            Err(_) => {
                return Sent {
                    result: Err(ApiError::upstream_timeout(timeout.as_secs_f64())),
                    attempts,
                    worth_another_deployment: true,
                }
            }
            Ok(Err(err)) => {
                if !last && matches!(err, UpstreamError::Send(_)) {
                    backoff(attempt, None, deadline).await;
                    continue;
                }
                return Sent {
                    result: Err(ApiError::upstream_unreachable(err.describe())),
                    attempts,
                    worth_another_deployment: true,
                };
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
        if !retryable {
            return Sent {
                result: Ok(Reply::streaming(response)),
                attempts,
                worth_another_deployment: false,
            };
        }
        // Read the start of the error body: a quota error must not be
        // retried and is passed on exactly as received. Only a bounded
        // prefix is held; a longer body is forwarded as it streams.
        let headers = response.headers().clone();
        let wait = retry_after(&headers);
        let (error_head, rest) = read_error_head(response.into_body(), deadline).await;
        let quota = error_code_from_body(&error_head).as_deref() == Some("insufficient_quota");
        if last || quota {
            return Sent {
                result: Ok(Reply::read(status, headers, error_head, rest)),
                attempts,
                worth_another_deployment: !quota,
            };
        }
        tracing::info!(request_id, attempt, %status, upstream = %upstream.name, "retrying upstream");
        backoff(attempt, wait, deadline).await;
    }
}

async fn backoff(attempt: u32, asked: Option<Duration>, deadline: Instant) {
    let exponential = Duration::from_millis(250u64 << attempt.min(5));
    let wait = asked.unwrap_or(exponential);
    tokio::time::sleep_until((Instant::now() + wait).min(deadline)).await;
}
