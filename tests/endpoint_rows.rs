//! Every client endpoint once, and the row each call leaves: a call that was
//! answered in full is `completed` whatever its answer's shape (a response,
//! a list of input items, a deletion, a token count, a conversation), and
//! only the calls that create a response are billed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{gpt55_price, TestGateway};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

async fn call(
    gw: &TestGateway,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let mut request = gw
        .http
        .request(method.clone(), gw.url(path))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "{method} {path}: {body}");
    body
}

#[sqlx::test]
async fn every_endpoint_leaves_one_row_that_says_what_happened(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let create = json!({"model": "gpt-5.5", "input": "hello"});

    let created = call(
        &gw,
        &key,
        Method::POST,
        "/v1/responses",
        Some(create.clone()),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let background = call(
        &gw,
        &key,
        Method::POST,
        "/v1/responses",
        Some(json!({"model": "gpt-5.5", "input": "later", "background": true})),
    )
    .await;
    let background_id = background["id"].as_str().unwrap().to_owned();
    call(
        &gw,
        &key,
        Method::POST,
        "/v1/responses/compact",
        Some(create.clone()),
    )
    .await;
    let counted = call(
        &gw,
        &key,
        Method::POST,
        "/v1/responses/input_tokens",
        Some(create),
    )
    .await;
    assert_eq!(counted["object"], "response.input_tokens");
    call(&gw, &key, Method::GET, &format!("/v1/responses/{id}"), None).await;
    let items = call(
        &gw,
        &key,
        Method::GET,
        &format!("/v1/responses/{id}/input_items"),
        None,
    )
    .await;
    assert_eq!(items["object"], "list");
    call(
        &gw,
        &key,
        Method::POST,
        &format!("/v1/responses/{background_id}/cancel"),
        None,
    )
    .await;
    let deleted = call(
        &gw,
        &key,
        Method::DELETE,
        &format!("/v1/responses/{id}"),
        None,
    )
    .await;
    assert_eq!(deleted["deleted"], true);

    let conversation = call(
        &gw,
        &key,
        Method::POST,
        "/v1/conversations",
        Some(json!({})),
    )
    .await;
    let conv = format!("/v1/conversations/{}", conversation["id"].as_str().unwrap());
    call(&gw, &key, Method::GET, &conv, None).await;
    call(
        &gw,
        &key,
        Method::POST,
        &conv,
        Some(json!({"metadata": {"k": "v"}})),
    )
    .await;
    let added = call(
        &gw,
        &key,
        Method::POST,
        &format!("{conv}/items"),
        Some(json!({"items": [{"type": "message", "role": "user", "content": "hi"}]})),
    )
    .await;
    let item = added["data"][0]["id"].as_str().unwrap().to_owned();
    call(&gw, &key, Method::GET, &format!("{conv}/items"), None).await;
    call(
        &gw,
        &key,
        Method::GET,
        &format!("{conv}/items/{item}"),
        None,
    )
    .await;
    call(
        &gw,
        &key,
        Method::DELETE,
        &format!("{conv}/items/{item}"),
        None,
    )
    .await;
    call(&gw, &key, Method::DELETE, &conv, None).await;

    let rows = gw.rows(16).await;
    let seen: Vec<(&str, &str, bool)> = rows
        .iter()
        .map(|r| {
            let billed = r.cost.is_some_and(|c| !c.is_zero());
            (r.endpoint.as_str(), r.status.as_str(), billed)
        })
        .collect();
    let expected = [
        ("responses.create", "completed", true),
        // A background response is queued until it finishes, then settled.
        ("responses.create", "queued", false),
        ("responses.compact", "completed", true),
        ("responses.input_tokens", "completed", false),
        ("responses.retrieve", "completed", false),
        ("responses.input_items", "completed", false),
        // The call answers the cancelled response: the row says so.
        ("responses.cancel", "cancelled", false),
        ("responses.delete", "completed", false),
        ("conversations.create", "completed", false),
        ("conversations.retrieve", "completed", false),
        ("conversations.update", "completed", false),
        ("conversations.items.create", "completed", false),
        ("conversations.items.list", "completed", false),
        ("conversations.items.retrieve", "completed", false),
        ("conversations.items.delete", "completed", false),
        ("conversations.delete", "completed", false),
    ];
    assert_eq!(seen.len(), expected.len(), "{seen:?}");
    for (got, want) in seen.iter().zip(expected) {
        let (endpoint, status, billed) = want;
        assert_eq!(got.0, endpoint, "{seen:?}");
        if endpoint == "responses.create" && !billed {
            // The background row: queued, or already settled as cancelled.
            assert!(
                matches!(got.1, "queued" | "cancelled" | "completed"),
                "{got:?}"
            );
            continue;
        }
        assert_eq!((got.1, got.2), (status, billed), "{endpoint}: {got:?}");
    }
    gw.shutdown().await;
}
