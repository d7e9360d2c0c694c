//! `/v1/conversations` and its items, proxied with tenant ownership.
//!
//! Creating a conversation records (conversation id → tenant, upstream) in
//! `conversation_owners`; every other call looks the owner up first and only
//! the creating tenant reaches the upstream, at the upstream that holds the
//! conversation. Another tenant's id gets the gateway's own 404, the same one
//! an unknown id gets (unknown ids are never forwarded, so the two cannot
//! differ). Each call is one ledger row, recorded and never billed.
//!
//! Never: parses or rewrites the bodies (they go as the client sent them and
//! come back as the upstream answered), bills a call.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use http::Method;
use http_body_util::BodyExt;
use sqlx::PgPool;

use super::upstream::{encode_path_segment, Upstream};
use super::upstream::{forwarded_headers, UpstreamError};
use super::{headers, open_meter, read_body, with_request_id, PASSTHROUGH_TIMEOUT};
use crate::error::ApiError;
use crate::ledger::owners::Owner;
use crate::ledger::RequestStatus;
use crate::metering::Meter;
use crate::metering::Outcome;
use crate::state::AppState;
use crate::usage::error_code_from_body;
use bytes::Bytes;

/// Largest conversation answer (an item list with images is large).
const MAX_ANSWER: usize = 32 << 20;

/// One kind of call, as the ledger names it.
struct Call {
    method: Method,
    endpoint: &'static str,
}

const CREATE: Call = Call {
    method: Method::POST,
    endpoint: "conversations.create",
};
const RETRIEVE: Call = Call {
    method: Method::GET,
    endpoint: "conversations.retrieve",
};
const UPDATE: Call = Call {
    method: Method::POST,
    endpoint: "conversations.update",
};
const DELETE: Call = Call {
    method: Method::DELETE,
    endpoint: "conversations.delete",
};
const ITEMS_LIST: Call = Call {
    method: Method::GET,
    endpoint: "conversations.items.list",
};
const ITEMS_CREATE: Call = Call {
    method: Method::POST,
    endpoint: "conversations.items.create",
};
const ITEM_RETRIEVE: Call = Call {
    method: Method::GET,
    endpoint: "conversations.items.retrieve",
};
const ITEM_DELETE: Call = Call {
    method: Method::DELETE,
    endpoint: "conversations.items.delete",
};

/// The conversation routes under `prefix` (`/v1`, `/api/v1`).
pub fn routes(prefix: &str) -> axum::Router<Arc<AppState>> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route(&format!("{prefix}/conversations"), post(create))
        .route(
            &format!("{prefix}/conversations/{{id}}"),
            get(retrieve).post(update).delete(delete),
        )
        .route(
            &format!("{prefix}/conversations/{{id}}/items"),
            get(list_items).post(create_items),
        )
        .route(
            &format!("{prefix}/conversations/{{id}}/items/{{item_id}}"),
            get(retrieve_item).delete(delete_item),
        )
}

/// Who created conversation `id`, if the gateway created it.
pub async fn conversation_owner(pool: &PgPool, id: &str) -> Result<Option<Owner>, sqlx::Error> {
    let row: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT tenant_id, upstream FROM conversation_owners WHERE conversation_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    // A conversation's context is whatever its items hold now (other calls
    // and concurrent responses add to it): not known here.
    Ok(row.map(|(tenant, upstream)| Owner {
        tenant,
        upstream,
        context_tokens: None,
    }))
}

async fn record_owner(
    pool: &PgPool,
    id: &str,
    tenant: &str,
    upstream: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO conversation_owners (conversation_id, tenant_id, upstream) VALUES ($1, $2, $3) \
         ON CONFLICT (conversation_id) DO NOTHING",
    )
    .bind(id)
    .bind(tenant)
    .bind(upstream)
    .execute(pool)
    .await?;
    Ok(())
}

/// The 404 for an unknown conversation and for another tenant's.
pub fn conversation_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Conversation with id '{id}' not found."))
        .with_code("conversation_not_found")
}

/// `POST /v1/conversations`.
pub async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut meter = match open_meter(&state, &headers, CREATE.endpoint).await {
        Ok(meter) => meter,
        Err(response) => return response,
    };
    let request_id = meter.request_id().to_owned();
    match create_steps(&state, &mut meter, &headers, body).await {
        Ok(reply) => with_request_id(relay(meter, reply), &request_id),
        Err(err) => {
            meter.reject(&err);
            with_request_id(err.into_response(), &request_id)
        }
    }
}

async fn create_steps(
    state: &AppState,
    meter: &mut Meter,
    client_headers: &HeaderMap,
    body: Body,
) -> Result<Answer, ApiError> {
    let body = read_body(client_headers, body, state.config.body_limit_bytes).await?;
    let upstream = state
        .routes
        .default_upstream()
        .ok_or_else(|| ApiError::internal("no upstream configured"))?;
    let tenant = prepare(meter, client_headers, &upstream)?;
    let extra = headers::forwarded(client_headers, meter.request_id());
    let sent = tokio::time::timeout(
        PASSTHROUGH_TIMEOUT,
        upstream.send_resource(Method::POST, "/conversations", body, extra),
    )
    .await;
    let answer = read_answer(sent, MAX_ANSWER).await?;
    if answer.status.is_success() {
        let id = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_owned))
            .ok_or_else(|| ApiError::upstream_unreachable("conversation answer without an id"))?;
        record_owner(&state.pool, &id, &tenant, &upstream.name)
            .await
            .map_err(ApiError::from)?;
    }
    Ok(answer)
}

/// The upstream's whole answer to the client, and the call's one row:
/// `completed` for a 2xx, `upstream_error` (with the upstream's code)
/// otherwise. Conversation objects carry no usage to observe or recover.
fn relay(meter: Meter, answer: Answer) -> Response {
    let Answer {
        status,
        headers,
        body,
    } = answer;
    let mut outcome = Outcome::new(if status.is_success() {
        RequestStatus::Completed
    } else {
        RequestStatus::UpstreamError
    });
    outcome.http_status = Some(status.as_u16());
    if !status.is_success() {
        outcome.error_code = error_code_from_body(&body);
    }
    outcome.first_byte_at = Some(chrono::Utc::now());
    meter.finish(outcome);
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = forwarded_headers(headers);
    response
}

/// An upstream answer read whole.
struct Answer {
    status: http::StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

type Sent = Result<
    Result<http::Response<hyper::body::Incoming>, UpstreamError>,
    tokio::time::error::Elapsed,
>;

async fn read_answer(sent: Sent, limit: usize) -> Result<Answer, ApiError> {
    let answer = match sent {
        Ok(Ok(answer)) => answer,
        Ok(Err(err)) => return Err(ApiError::upstream_unreachable(err.describe())),
        Err(_) => {
            return Err(ApiError::upstream_timeout(
                PASSTHROUGH_TIMEOUT.as_secs_f64(),
            ))
        }
    };
    let (parts, incoming) = answer.into_parts();
    let body = tokio::time::timeout(
        PASSTHROUGH_TIMEOUT,
        http_body_util::Limited::new(incoming, limit).collect(),
    )
    .await
    .map_err(|_| ApiError::upstream_timeout(PASSTHROUGH_TIMEOUT.as_secs_f64()))?
    .map_err(|e| ApiError::upstream_unreachable(e.to_string()))?
    .to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// Marks the row unbilled, names the upstream, records the client's id.
fn prepare(
    meter: &mut Meter,
    client_headers: &HeaderMap,
    upstream: &Upstream,
) -> Result<String, ApiError> {
    let ctx = meter
        .ctx_mut()
        .ok_or_else(|| ApiError::internal("meter without context"))?;
    ctx.billable = false;
    ctx.upstream = Some(upstream.name.clone());
    ctx.client_request_id = headers::client_request_id(client_headers);
    Ok(ctx.principal.tenant.to_string())
}

/// `GET /v1/conversations/{id}`.
pub async fn retrieve(s: State<Arc<AppState>>, Path(id): Path<String>, h: HeaderMap) -> Response {
    owned(s, h, RETRIEVE, id, "", None, Body::empty()).await
}

/// `POST /v1/conversations/{id}` (update metadata).
pub async fn update(
    s: State<Arc<AppState>>,
    Path(id): Path<String>,
    h: HeaderMap,
    b: Body,
) -> Response {
    owned(s, h, UPDATE, id, "", None, b).await
}

/// `DELETE /v1/conversations/{id}`.
pub async fn delete(s: State<Arc<AppState>>, Path(id): Path<String>, h: HeaderMap) -> Response {
    owned(s, h, DELETE, id, "", None, Body::empty()).await
}

/// `GET /v1/conversations/{id}/items`.
pub async fn list_items(
    s: State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    h: HeaderMap,
) -> Response {
    owned(s, h, ITEMS_LIST, id, "/items", q, Body::empty()).await
}

/// `POST /v1/conversations/{id}/items`.
pub async fn create_items(
    s: State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    h: HeaderMap,
    b: Body,
) -> Response {
    owned(s, h, ITEMS_CREATE, id, "/items", q, b).await
}

/// `GET /v1/conversations/{id}/items/{item_id}`.
pub async fn retrieve_item(
    s: State<Arc<AppState>>,
    Path((id, item)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    h: HeaderMap,
) -> Response {
    let suffix = format!("/items/{}", encode_path_segment(&item));
    owned(s, h, ITEM_RETRIEVE, id, &suffix, q, Body::empty()).await
}

/// `DELETE /v1/conversations/{id}/items/{item_id}`.
pub async fn delete_item(
    s: State<Arc<AppState>>,
    Path((id, item)): Path<(String, String)>,
    h: HeaderMap,
) -> Response {
    let suffix = format!("/items/{}", encode_path_segment(&item));
    owned(s, h, ITEM_DELETE, id, &suffix, None, Body::empty()).await
}

/// A call on an existing conversation: owner check, then the upstream.
async fn owned(
    State(state): State<Arc<AppState>>,
    client_headers: HeaderMap,
    call: Call,
    id: String,
    suffix: &str,
    query: Option<String>,
    body: Body,
) -> Response {
    let mut meter = match open_meter(&state, &client_headers, call.endpoint).await {
        Ok(meter) => meter,
        Err(response) => return response,
    };
    let request_id = meter.request_id().to_owned();
    match owned_steps(
        &state,
        &mut meter,
        &client_headers,
        call,
        &id,
        suffix,
        query,
        body,
    )
    .await
    {
        Ok(reply) => with_request_id(relay(meter, reply), &request_id),
        Err(err) => {
            if err.status.is_server_error() && err.code.as_deref() != Some("internal_error") {
                meter.upstream_failed(&err);
            } else {
                meter.reject(&err);
            }
            with_request_id(err.into_response(), &request_id)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn owned_steps(
    state: &AppState,
    meter: &mut Meter,
    client_headers: &HeaderMap,
    call: Call,
    id: &str,
    suffix: &str,
    query: Option<String>,
    body: Body,
) -> Result<Answer, ApiError> {
    let body = read_body(client_headers, body, state.config.body_limit_bytes).await?;
    let tenant = meter
        .ctx_mut()
        .map(|ctx| ctx.principal.tenant.to_string())
        .ok_or_else(|| ApiError::internal("meter without context"))?;
    let upstream = match conversation_owner(&state.pool, id)
        .await
        .map_err(ApiError::from)?
    {
        Some(owner) if owner.tenant == tenant => owner
            .upstream
            .and_then(|name| state.routes.upstream(&name))
            .or_else(|| state.routes.default_upstream()),
        _ => None,
    }
    .ok_or_else(|| conversation_not_found(id))?;
    prepare(meter, client_headers, &upstream)?;
    let mut path = format!("/conversations/{}{suffix}", encode_path_segment(id));
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        path.push('?');
        path.push_str(&query);
    }
    let extra = headers::forwarded(client_headers, meter.request_id());
    let sent = tokio::time::timeout(
        PASSTHROUGH_TIMEOUT,
        upstream.send_resource(call.method, &path, body, extra),
    )
    .await;
    read_answer(sent, MAX_ANSWER).await
}
