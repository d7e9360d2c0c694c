//! The mock's `/conversations` endpoints: an in-memory store of
//! conversations and their items, answering in OpenAI's shapes (object
//! `conversation`, `conversation.deleted`, item lists) and 404 for an
//! unknown id. Never persists anything.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Value};

use super::{now, push_json, with_parts, ErrorBody, Handled, MockUpstream};

struct Conversation {
    created_at: u64,
    metadata: Value,
    items: Vec<Value>,
}

/// The mock's conversations, shared by its clones.
#[derive(Default)]
pub(super) struct Conversations(Mutex<HashMap<String, Conversation>>);

impl Conversations {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Conversation>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Routes under `p` (``, `/v1`, `/openai/v1`).
pub(super) fn routes(r: Router<MockUpstream>, p: &str) -> Router<MockUpstream> {
    use axum::routing::{get, post};
    r.route(&format!("{p}/conversations"), post(create))
        .route(
            &format!("{p}/conversations/{{id}}"),
            get(retrieve).post(update).delete(delete),
        )
        .route(
            &format!("{p}/conversations/{{id}}/items"),
            get(list_items).post(add_items),
        )
        .route(
            &format!("{p}/conversations/{{id}}/items/{{item}}"),
            get(item).delete(delete_item),
        )
}

fn conversation_json(id: &str, c: &Conversation) -> Value {
    json!({"id": id, "object": "conversation", "created_at": c.created_at, "metadata": c.metadata})
}

fn reply(m: &MockUpstream, status: StatusCode, value: &Value) -> Response {
    let mut body = Vec::with_capacity(256);
    push_json(&mut body, value);
    with_parts(
        status,
        m.headers("application/json", std::time::Instant::now()),
        Body::from(body),
    )
}

fn missing(m: &MockUpstream, what: &str, id: &str) -> Response {
    m.error(
        StatusCode::NOT_FOUND,
        ErrorBody {
            message: format!("{what} with id '{id}' not found."),
            kind: "invalid_request_error".into(),
            param: None,
            code: None,
        },
        None,
    )
}

/// Items as given, each with an id when it has none.
fn stamp(m: &MockUpstream, items: Option<&Value>) -> Vec<Value> {
    let list = items.and_then(Value::as_array).cloned().unwrap_or_default();
    list.into_iter()
        .map(|mut item| {
            if let Some(obj) = item.as_object_mut() {
                if !obj.contains_key("id") {
                    obj.insert("id".into(), json!(format!("msg_{:016x}", m.next_random())));
                }
            }
            item
        })
        .collect()
}

fn list_json(items: &[Value]) -> Value {
    json!({
        "object": "list",
        "data": items,
        "first_id": items.first().and_then(|i| i.get("id")),
        "last_id": items.last().and_then(|i| i.get("id")),
        "has_more": false,
    })
}

async fn create(
    State(m): State<MockUpstream>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Handled {
    m.intake(&method, &uri, &headers, &body)?;
    let request: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let id = format!("conv_{:016x}{:016x}", m.next_random(), m.next_random());
    let conversation = Conversation {
        created_at: now().as_secs(),
        metadata: request.get("metadata").cloned().unwrap_or(json!({})),
        items: stamp(&m, request.get("items")),
    };
    let out = conversation_json(&id, &conversation);
    m.inner
        .conversations
        .with(|all| all.insert(id, conversation));
    Ok(reply(&m, StatusCode::OK, &out))
}

async fn retrieve(
    State(m): State<MockUpstream>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Handled {
    m.intake(&method, &uri, &headers, &body)?;
    let found = m
        .inner
        .conversations
        .with(|all| all.get(&id).map(|c| conversation_json(&id, c)));
    Ok(match found {
        Some(out) => reply(&m, StatusCode::OK, &out),
        None => missing(&m, "Conversation", &id),
    })
}

async fn update(
    State(m): State<MockUpstream>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Handled {
    m.intake(&method, &uri, &headers, &body)?;
    let request: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let found = m.inner.conversations.with(|all| {
        all.get_mut(&id).map(|c| {
            if let Some(metadata) = request.get("metadata") {
                c.metadata = metadata.clone();
            }
            conversation_json(&id, c)
        })
    });
    Ok(match found {
        Some(out) => reply(&m, StatusCode::OK, &out),
        None => missing(&m, "Conversation", &id),
    })
}

async fn delete(
    State(m): State<MockUpstream>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Handled {
    m.intake(&method, &uri, &headers, &body)?;
    let removed = m.inner.conversations.with(|all| all.remove(&id).is_some());
    Ok(if removed {
        reply(
            &m,
            StatusCode::OK,
            &json!({"id": id, "object": "conversation.deleted", "deleted": true}),
        )
    } else {
        missing(&m, "Conversation", &id)
    })
}

async fn list_items(
    State(m): State<MockUpstream>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Handled {
    m.intake(&method, &uri, &headers, &body)?;
    let found = m
        .inner
        .conversations
        .with(|all| all.get(&id).map(|c| list_json(&c.items)));
    Ok(match found {
        Some(out) => reply(&m, StatusCode::OK, &out),
        None => missing(&m, "Conversation", &id),
    })
}

async fn add_items(
    State(m): State<MockUpstream>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Handled {
    m.intake(&method, &uri, &headers, &body)?;
    let request: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let added = stamp(&m, request.get("items"));
    let found = m.inner.conversations.with(|all| {
        all.get_mut(&id).map(|c| {
            c.items.extend(added.iter().cloned());
            list_json(&added)
        })
    });
    Ok(match found {
        Some(out) => reply(&m, StatusCode::OK, &out),
        None => missing(&m, "Conversation", &id),
    })
}

async fn item(
    State(m): State<MockUpstream>,
    Path((id, item)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Handled {
    m.intake(&method, &uri, &headers, &body)?;
    let found = m.inner.conversations.with(|all| {
        all.get(&id).map(|c| {
            c.items
                .iter()
                .find(|i| i.get("id").and_then(Value::as_str) == Some(&item))
                .cloned()
        })
    });
    Ok(match found {
        Some(Some(out)) => reply(&m, StatusCode::OK, &out),
        Some(None) => missing(&m, "Item", &item),
        None => missing(&m, "Conversation", &id),
    })
}

async fn delete_item(
    State(m): State<MockUpstream>,
    Path((id, item)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Handled {
    m.intake(&method, &uri, &headers, &body)?;
    let found = m.inner.conversations.with(|all| {
        all.get_mut(&id).map(|c| {
            let before = c.items.len();
            c.items
                .retain(|i| i.get("id").and_then(Value::as_str) != Some(&item));
            (before != c.items.len()).then(|| conversation_json(&id, c))
        })
    });
    Ok(match found {
        Some(Some(out)) => reply(&m, StatusCode::OK, &out),
        Some(None) => missing(&m, "Item", &item),
        None => missing(&m, "Conversation", &id),
    })
}
