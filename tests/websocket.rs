//! WebSocket mode (CONTRACT §9) with a real WebSocket client: N responses
//! on one connection are N exact rows, a cut socket is a client that left a
//! stream, a bad message is an `error` event and a rejected row.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{gpt55_price, TestGateway};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(
    gw: &TestGateway,
    key: &str,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("ws://{}/v1/responses", gw.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(s, _)| s)
}

async fn next_event(socket: &mut Socket) -> Value {
    loop {
        match socket.next().await.unwrap().unwrap() {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Close(_) => panic!("closed"),
            _ => {}
        }
    }
}

fn create(usage: &str) -> Message {
    Message::Text(
        json!({"type": "response.create", "model": "turing/gpt-5.5", "input": "hi",
               "metadata": {"mock_usage": usage}})
        .to_string()
        .into(),
    )
}

#[sqlx::test]
async fn several_responses_on_one_socket_are_one_row_each(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let mut socket = open(&gw, &key).await.unwrap();
    let usages = ["10,0,20,0", "11,0,21,0", "12,0,22,0"];
    for usage in usages {
        socket.send(create(usage)).await.unwrap();
        let first = next_event(&mut socket).await;
        assert_eq!(first["type"], "response.created");
        loop {
            let event = next_event(&mut socket).await;
            if event["type"] == "response.completed" {
                break;
            }
        }
    }
    // A message that is not a response.create: an error event, no row.
    socket
        .send(Message::Text(r#"{"type":"session.update"}"#.into()))
        .await
        .unwrap();
    assert_eq!(next_event(&mut socket).await["type"], "error");
    // A refused create: an error event and a rejected row.
    socket
        .send(Message::Text(
            json!({"type": "response.create", "model": "turing/nope", "input": "x"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let error = next_event(&mut socket).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["status"], 404);
    assert_eq!(error["error"]["code"], "model_not_found");
    socket.close(None).await.unwrap();

    let rows = gw.rows(4).await;
    assert_eq!(rows.len(), 4);
    for (row, usage) in rows.iter().zip(usages) {
        assert_eq!(row.status, "completed");
        assert!(row.stream);
        assert_eq!(row.endpoint, "responses.create");
        let want: Vec<i64> = usage.split(',').map(|n| n.parse().unwrap()).collect();
        assert_eq!((row.input_tokens, row.output_tokens), (want[0], want[2]));
        assert!(row.cost.is_some());
    }
    assert_eq!(rows[3].status, "rejected");
    for request in gw.mock.requests() {
        assert_eq!(request.json().unwrap()["stream"], true);
        assert!(request.json().unwrap().get("type").is_none());
    }
}

#[sqlx::test]
async fn a_socket_cut_mid_response_is_a_client_that_left(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let mut socket = open(&gw, &key).await.unwrap();
    socket
        .send(Message::Text(
            json!({"type": "response.create", "model": "turing/gpt-5.5", "input": "x",
                   "metadata": {"mock_usage": "30,0,40,0", "mock_delay_ms": "30", "mock_deltas": "10"}})
            .to_string()
            .into(),
        ))
        .await
        .unwrap();
    assert_eq!(next_event(&mut socket).await["type"], "response.created");
    drop(socket);

    let rows = gw.rows(1).await;
    assert_eq!(rows.len(), 1);
    assert!(rows[0].client_disconnected);
    // The default drain policy still records the real usage.
    assert_eq!(rows[0].status, "completed");
    assert_eq!((rows[0].input_tokens, rows[0].output_tokens), (30, 40));
}

#[sqlx::test]
async fn the_handshake_needs_a_key(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    match open(&gw, "sk-tg-wrong").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        other => panic!("expected a 401 handshake, got {:?}", other.map(|_| ())),
    }
    assert!(gw.rows(0).await.is_empty());
}

/// `stream_id` names the client's lane: it never reaches the upstream (it
/// is not part of a POST) and every event of its response echoes it,
/// refusals included.
#[sqlx::test]
async fn a_stream_id_is_echoed_on_its_events_and_not_forwarded(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let mut socket = open(&gw, &key).await.unwrap();
    socket
        .send(Message::Text(
            json!({"type": "response.create", "stream_id": "lane-a", "model": "turing/gpt-5.5",
                   "input": "hi", "metadata": {"mock_usage": "10,0,20,0"}})
            .to_string()
            .into(),
        ))
        .await
        .unwrap();
    let mut events = 0;
    loop {
        let event = next_event(&mut socket).await;
        assert_eq!(event["stream_id"], "lane-a", "{event}");
        events += 1;
        if event["type"] == "response.completed" {
            break;
        }
    }
    assert!(events > 2);
    socket
        .send(Message::Text(
            json!({"type": "response.create", "stream_id": "lane-b", "model": "turing/nope", "input": "x"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let error = next_event(&mut socket).await;
    assert_eq!(
        (error["type"].as_str(), error["stream_id"].as_str()),
        (Some("error"), Some("lane-b"))
    );
    // A hostile lane (NUL, or huge): refused like a bad body, one rejected row.
    for bad in [json!("a\u{0}b"), json!("x".repeat(100_000))] {
        socket
            .send(Message::Text(
                json!({"type": "response.create", "stream_id": bad, "model": "turing/gpt-5.5", "input": "x"})
                    .to_string()
                    .into(),
            ))
            .await
            .unwrap();
        let error = next_event(&mut socket).await;
        assert_eq!(error["type"], "error");
        assert_eq!(error["status"], 400);
        assert_eq!(error["error"]["param"], "stream_id");
    }
    socket.close(None).await.unwrap();
    let rows = gw.rows(4).await;
    assert_eq!(rows.len(), 4);
    assert_eq!(rows.iter().filter(|r| r.status == "rejected").count(), 3);
    let forwarded = gw.mock.requests();
    assert_eq!(forwarded.len(), 1);
    assert!(forwarded[0].json().unwrap().get("stream_id").is_none());
}
