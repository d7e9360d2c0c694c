//! The mock's WebSocket mode: `GET P/responses` with an upgrade, as OpenAI's
//! Responses WebSocket protocol speaks it, so a stock SDK's
//! `responses.connect()` can be run directly against the mock and compared
//! with the same calls through Tollgate.
//!
//! The handshake needs the same credential as every API route (401 before
//! the upgrade otherwise). Each text message `{"type": "response.create",
//! ...create fields}` is served by the create handler as a streaming create
//! (`type` dropped, `stream: true`; scripting keys apply) and recorded with
//! method `WS`; every SSE event's `data` goes back as one text message.
//! Anything else, or a create the mock refuses (a scripted HTTP status, a
//! bad body), answers `{"type": "error", "status", "error": {...}}` and the
//! connection stays open. Responses run one after another.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri};
use http_body_util::BodyExt;
use serde_json::{json, Map, Value};

use super::{authorized, create, MockUpstream};

/// `GET P/responses` upgraded to a WebSocket.
pub(super) async fn connect(
    State(m): State<MockUpstream>,
    uri: Uri,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !authorized(&headers) {
        return m
            .error(
                StatusCode::UNAUTHORIZED,
                super::ErrorBody {
                    message: "Incorrect API key provided.".into(),
                    kind: "invalid_request_error".into(),
                    param: None,
                    code: Some("invalid_api_key".into()),
                },
                None,
            )
            .into_response();
    }
    upgrade.on_upgrade(move |socket| serve(m, uri, headers, socket))
}

async fn serve(m: MockUpstream, uri: Uri, headers: HeaderMap, mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => return,
            _ => continue,
        };
        let sent = match create_body(text.as_str()) {
            Ok(body) => respond(&m, &uri, &headers, body, &mut socket).await,
            Err(message) => {
                let error = json!({"type": "invalid_request_error", "message": message,
                                   "param": "type", "code": "unknown_event_type"});
                send(&mut socket, error_event(400, error)).await
            }
        };
        if !sent {
            return;
        }
    }
}

/// False when the socket is gone.
async fn send(socket: &mut WebSocket, text: String) -> bool {
    socket.send(Message::Text(text.into())).await.is_ok()
}

/// The message as a streaming create body, or why it is not one.
fn create_body(text: &str) -> Result<Bytes, String> {
    let mut object: Map<String, Value> = serde_json::from_str(text)
        .map_err(|_| "A message must be a JSON object with a 'type'.".to_owned())?;
    match object.remove("type") {
        Some(Value::String(kind)) if kind == "response.create" => {}
        other => {
            return Err(format!(
                "Unsupported event type {}; expected 'response.create'.",
                other.map_or_else(|| "(none)".to_owned(), |v| v.to_string())
            ))
        }
    }
    object.insert("stream".into(), Value::Bool(true));
    serde_json::to_vec(&object)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

/// Serves one create: its events' `data` as they are produced, or one
/// error event. False when the socket is gone.
async fn respond(
    m: &MockUpstream,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    socket: &mut WebSocket,
) -> bool {
    let method = Method::from_bytes(b"WS").unwrap_or(Method::POST);
    let response = match create(State(m.clone()), method, uri.clone(), headers.clone(), body).await
    {
        Ok(response) => response,
        Err(reject) => reject.into_response(),
    };
    let status = response.status();
    let sse = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    let mut body = response.into_body();
    if !sse {
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let error = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|mut v| v.get_mut("error").map(Value::take))
            .unwrap_or_else(|| {
                json!({"type": "server_error", "message": "The mock answered without an error envelope.",
                       "param": null, "code": null})
            });
        return send(socket, error_event(status.as_u16(), error)).await;
    }
    let mut pending = Vec::new();
    // Until the stream ends or is cut (`mock_cut_after`).
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        for event in take_events(&mut pending) {
            if !send(socket, event).await {
                return false;
            }
        }
    }
    true
}

fn error_event(status: u16, error: Value) -> String {
    json!({"type": "error", "status": status, "error": error}).to_string()
}

/// The `data` of every complete SSE event in `pending` (LF or CRLF
/// framing), removed from it; a partial event stays.
fn take_events(pending: &mut Vec<u8>) -> Vec<String> {
    let mut events = Vec::new();
    loop {
        let lf = pending
            .windows(2)
            .position(|w| w == b"\n\n")
            .map(|i| (i, 2));
        let crlf = pending
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| (i, 4));
        let Some((end, sep)) = [lf, crlf].into_iter().flatten().min_by_key(|(i, _)| *i) else {
            return events;
        };
        let block: Vec<u8> = pending.drain(..end + sep).collect();
        let text = String::from_utf8_lossy(&block[..end]);
        let data: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        if !data.is_empty() {
            events.push(data.join("\n"));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_create_messages_become_streaming_bodies() {
        let body = create_body(r#"{"type":"response.create","model":"m","stream":false}"#).unwrap();
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value, json!({"model": "m", "stream": true}));
        assert!(create_body(r#"{"type":"response.steer"}"#).is_err());
        assert!(create_body("[]").is_err());
    }

    #[test]
    fn sse_events_become_their_data() {
        let mut pending =
            b"event: a\ndata: {\"x\":1}\n\n: comment\n\nevent: b\r\ndata: {\"y\":2}\r\n\r\ndata: {"
                .to_vec();
        assert_eq!(take_events(&mut pending), [r#"{"x":1}"#, r#"{"y":2}"#]);
        assert_eq!(pending, b"data: {");
    }
}
