//! WebSocket mode (CONTRACT §9): `GET /v1/responses` with an upgrade.
//!
//! The handshake's `Authorization` is checked before upgrading (401
//! otherwise). Each client text message `{"type": "response.create", ...}`
//! becomes one `POST /v1/responses` with `stream: true` through the same
//! path as any POST (validation, tools, limits, routing, metering: one row
//! per message); each SSE event's `data` JSON is sent back as one text
//! message, unchanged. A refused message comes back as an `error` message
//! (and is metered as rejected by that path). Responses run one after another
//! on a connection; a socket closed mid-response drops the streaming body,
//! which the metered body records like a client that left a stream.
//! The connection's [`Activity`] (from the edge) hears when a response is
//! under way (never shed then) and asks the bridge to close an idle socket
//! (idle or lifetime timeout, shed at the connection cap, shutdown): the
//! bridge then sends a close frame (1001, going away) and ends.
//! `stream_id` (the WebSocket lane, not part of a POST) is taken out of the
//! forwarded body and echoed on every event of its response; responses run
//! in arrival order, which keeps every lane first-in first-out.
//!
//! Never: parses or re-encodes the events it relays (an echoed `stream_id`
//! is spliced in front of the event's own bytes).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;

use super::tools::indexmap_free::Members;
use super::{authorization, refused, routed, Routed};
use crate::connection::Activity;
use crate::error::ApiError;
use crate::state::AppState;

/// `GET /v1/responses` upgraded to a WebSocket.
pub async fn connect(
    State(state): State<Arc<AppState>>,
    activity: Option<Extension<Arc<Activity>>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Err(err) = state.auth.authenticate(authorization(&headers)).await {
        return err.into_response();
    }
    // Served outside the edge (a router under test): nobody asks it to close.
    let activity = activity.map_or_else(|| Arc::new(Activity::default()), |a| a.0);
    upgrade.on_upgrade(move |socket| serve(state, headers, socket, activity))
}

/// Longest wait for a close frame to go out to a peer that reads nothing.
const CLOSE_SEND_TIME: Duration = Duration::from_secs(1);

async fn serve(
    state: Arc<AppState>,
    headers: HeaderMap,
    mut socket: WebSocket,
    activity: Arc<Activity>,
) {
    let mut pending: Option<Message> = None;
    loop {
        let message = match pending.take() {
            Some(message) => message,
            None => tokio::select! {
                received = socket.recv() => match received {
                    Some(Ok(message)) => message,
                    _ => return,
                },
                () = activity.closed() => {
                    let close = Message::Close(Some(CloseFrame {
                        code: 1001,
                        reason: "idle".into(),
                    }));
                    let _ = tokio::time::timeout(CLOSE_SEND_TIME, socket.send(close)).await;
                    return;
                }
            },
        };
        let _under_way = activity.begin_request();
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => return,
            _ => continue,
        };
        let (response, lane) = match create_body(text.as_str()) {
            Ok((body, lane)) => (
                routed(&state, &headers, Body::from(body), Routed::Create).await,
                lane,
            ),
            Err(Unserved::BadCreate(err)) => {
                (refused(&state, &headers, Routed::Create, err).await, None)
            }
            Err(Unserved::NotCreate(message)) => {
                if send_error(&mut socket, 400, "invalid_request_error", &message).await {
                    continue;
                }
                return;
            }
        };
        match relay(&mut socket, response, lane.as_deref()).await {
            Relayed::Done => {}
            Relayed::Next(message) => pending = Some(message),
            Relayed::Gone => return,
        }
    }
}

/// The message as a create body: `type` and `stream_id` dropped, `stream:
/// true` forced, every other member the client's bytes (duplicates kept, so
/// the create path refuses them as it would a POST); and the `stream_id`
/// as its raw JSON, to echo.
fn create_body(text: &str) -> Result<(Bytes, Option<String>), Unserved> {
    let members: Members = serde_json::from_str(text).map_err(|_| {
        Unserved::NotCreate("A message must be a JSON object with a 'type'.".to_owned())
    })?;
    let kind = members
        .0
        .iter()
        .find(|(k, _)| k == "type")
        .and_then(|(_, v)| serde_json::from_str::<String>(v.get()).ok());
    if kind.as_deref() != Some("response.create") {
        return Err(Unserved::NotCreate(format!(
            "Unsupported message type {}; expected 'response.create'.",
            kind.map_or_else(|| "(none)".to_owned(), |k| format!("'{k}'"))
        )));
    }
    let lane = match members.0.iter().find(|(k, _)| k == "stream_id") {
        None => None,
        Some((_, v)) => match serde_json::from_str::<String>(v.get()) {
            Ok(id) if id.len() <= MAX_STREAM_ID && !id.chars().any(char::is_control) => {
                Some(serde_json::Value::from(id).to_string())
            }
            _ => {
                return Err(Unserved::BadCreate(ApiError::invalid_value(
                    "stream_id",
                    format!(
                        "'stream_id' must be a string of at most {MAX_STREAM_ID} characters without control characters."
                    ),
                )))
            }
        },
    };
    let mut out = String::with_capacity(text.len() + 16);
    out.push('{');
    for (key, value) in members
        .0
        .iter()
        .filter(|(k, _)| k != "type" && k != "stream" && k != "stream_id")
    {
        out.push_str(&serde_json::Value::from(key.as_ref()).to_string());
        out.push(':');
        out.push_str(value.get());
        out.push(',');
    }
    out.push_str("\"stream\":true}");
    Ok((Bytes::from(out), lane))
}

/// A message the create path does not serve: not a `response.create` at
/// all (an error event, no row: it asked for nothing), or a create whose
/// envelope is wrong (refused like a bad POST body: one rejected row).
#[derive(Debug)]
enum Unserved {
    NotCreate(String),
    BadCreate(ApiError),
}

/// Longest `stream_id` accepted.
const MAX_STREAM_ID: usize = 256;

/// The event with `"stream_id": <lane>` as its first member, the rest its
/// own bytes.
fn on_lane(event: String, lane: Option<&str>) -> String {
    match (lane, event.strip_prefix('{')) {
        (Some(lane), Some(rest)) => {
            let rest = rest.trim_start();
            let comma = if rest.starts_with('}') { "" } else { "," };
            format!("{{\"stream_id\":{lane}{comma}{rest}")
        }
        _ => event,
    }
}

/// Sends an `error` message; false when the socket is gone.
async fn send_error(socket: &mut WebSocket, status: u16, kind: &str, message: &str) -> bool {
    let event = serde_json::json!({
        "type": "error",
        "status": status,
        "error": {"type": kind, "message": message, "code": null, "param": null},
    });
    socket
        .send(Message::Text(event.to_string().into()))
        .await
        .is_ok()
}

enum Relayed {
    Done,
    /// The client sent its next message before this response ended.
    Next(Message),
    Gone,
}

async fn relay(socket: &mut WebSocket, response: Response, lane: Option<&str>) -> Relayed {
    let status = response.status();
    let is_sse = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    let mut body = response.into_body();
    if !is_sse {
        // A refusal or upstream error: its OpenAI envelope as an error event.
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let error = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("error").cloned())
            .unwrap_or(serde_json::Value::Null);
        let event = serde_json::json!({"type": "error", "status": status.as_u16(), "error": error});
        let event = on_lane(event.to_string(), lane);
        return match socket.send(Message::Text(event.into())).await {
            Ok(()) => Relayed::Done,
            Err(_) => Relayed::Gone,
        };
    }
    let mut buffer: Vec<u8> = Vec::new();
    let mut next: Option<Message> = None;
    loop {
        tokio::select! {
            frame = body.frame() => match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        buffer.extend_from_slice(&data);
                        for event in take_events(&mut buffer) {
                            let event = on_lane(event, lane);
                            if socket.send(Message::Text(event.into())).await.is_err() {
                                return Relayed::Gone;
                            }
                        }
                    }
                }
                // The stream ended (or broke: the metered body recorded it).
                _ => break,
            },
            incoming = socket.recv(), if next.is_none() => match incoming {
                Some(Ok(Message::Text(text))) => next = Some(Message::Text(text)),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    // Dropping `body` here is the client leaving the stream.
                    return Relayed::Gone;
                }
                Some(Ok(_)) => {}
            },
        }
    }
    match next {
        Some(message) => Relayed::Next(message),
        None => Relayed::Done,
    }
}

/// Complete SSE events in `buffer` (removed from it), as their `data`.
fn take_events(buffer: &mut Vec<u8>) -> Vec<String> {
    let mut events = Vec::new();
    while let Some(end) = find_blank_line(buffer) {
        let block: Vec<u8> = buffer.drain(..end.1).collect();
        let text = String::from_utf8_lossy(&block[..end.0]);
        let data: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        if !data.is_empty() {
            events.push(data.join("\n"));
        }
    }
    events
}

/// (end of the event, end of its separator) for the first blank line.
fn find_blank_line(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_stream_id_is_taken_out_and_echoed_on_each_event() {
        let (body, lane) =
            create_body(r#"{"type":"response.create","stream_id":"lane-1","model":"m"}"#).unwrap();
        assert_eq!(&body[..], br#"{"model":"m","stream":true}"#);
        assert_eq!(lane.as_deref(), Some(r#""lane-1""#));
        assert_eq!(
            on_lane(
                r#"{"type":"response.created","x":1.50}"#.to_owned(),
                lane.as_deref()
            ),
            r#"{"stream_id":"lane-1","type":"response.created","x":1.50}"#
        );
        assert_eq!(
            on_lane("{}".to_owned(), lane.as_deref()),
            r#"{"stream_id":"lane-1"}"#
        );
        assert_eq!(on_lane("{\"a\":1}".to_owned(), None), "{\"a\":1}");
        for bad in [r#"1"#, r#""a\u0000""#, &format!("\"{}\"", "x".repeat(300))] {
            let message = format!(r#"{{"type":"response.create","stream_id":{bad}}}"#);
            assert!(create_body(&message).is_err(), "{bad}");
        }
        let parsed: serde_json::Value = serde_json::from_str(&on_lane(
            r#"{"type":"error"}"#.to_owned(),
            Some(r#""q\"uote""#),
        ))
        .unwrap();
        assert_eq!(parsed["stream_id"], "q\"uote");
    }

    #[test]
    fn a_create_message_becomes_a_streaming_body() {
        let (body, lane) =
            create_body(r#"{"type":"response.create","model":"m","stream":false,"x":1.50}"#)
                .unwrap();
        assert_eq!(&body[..], br#"{"model":"m","x":1.50,"stream":true}"#);
        assert_eq!(lane, None);
        assert!(create_body(r#"{"type":"session.update"}"#).is_err());
        assert!(create_body("[1]").is_err());
    }

    #[test]
    fn events_are_cut_at_blank_lines() {
        let mut buffer = b"event: a\ndata: {\"x\":1}\n\nevent: b\ndata: {\"y\"".to_vec();
        assert_eq!(take_events(&mut buffer), [r#"{"x":1}"#]);
        buffer.extend_from_slice(b":2}\n\n");
        assert_eq!(take_events(&mut buffer), [r#"{"y":2}"#]);
        assert!(buffer.is_empty());
    }
}
