//! `/v1/conversations` through the gateway: the creator's calls reach the
//! upstream, another tenant's answer exactly like an unknown id, one
//! unbilled row per call.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestGateway;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

async fn call(
    gw: &TestGateway,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = gw.http.request(method, gw.url(path)).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

#[sqlx::test]
async fn the_creator_uses_its_conversation_and_each_call_is_one_row(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    let key = gw.key("acme").await;
    let (status, _, created) = call(
        &gw,
        &key,
        Method::POST,
        "/v1/conversations",
        Some(json!({"metadata": {"topic": "demo"},
            "items": [{"type": "message", "role": "user", "content": "hello"}]})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(created["object"], "conversation");
    let id = created["id"].as_str().unwrap().to_owned();
    let owner = tollgate::proxy::conversations::conversation_owner(&gw.pool, &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(owner.tenant, "acme");

    let base = format!("/api/v1/conversations/{id}");
    let (s, _, got) = call(&gw, &key, Method::GET, &base, None).await;
    assert_eq!((s, got["metadata"]["topic"].as_str()), (200, Some("demo")));
    let (s, _, got) = call(
        &gw,
        &key,
        Method::POST,
        &base,
        Some(json!({"metadata": {"topic": "x"}})),
    )
    .await;
    assert_eq!((s, got["metadata"]["topic"].as_str()), (200, Some("x")));
    let (s, _, added) = call(
        &gw,
        &key,
        Method::POST,
        &format!("{base}/items"),
        Some(json!({"items": [{"type": "message", "role": "user", "content": "more"}]})),
    )
    .await;
    assert_eq!(s, 200);
    let item = added["data"][0]["id"].as_str().unwrap().to_owned();
    let (s, _, list) = call(
        &gw,
        &key,
        Method::GET,
        &format!("{base}/items?limit=10"),
        None,
    )
    .await;
    assert_eq!((s, list["data"].as_array().unwrap().len()), (200, 2));
    let (s, _, got) = call(
        &gw,
        &key,
        Method::GET,
        &format!("{base}/items/{item}"),
        None,
    )
    .await;
    assert_eq!((s, got["id"].as_str()), (200, Some(item.as_str())));
    let (s, _, _) = call(
        &gw,
        &key,
        Method::DELETE,
        &format!("{base}/items/{item}"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, deleted) = call(&gw, &key, Method::DELETE, &base, None).await;
    assert_eq!((s, deleted["deleted"].as_bool()), (200, Some(true)));

    let paths: Vec<String> = gw.mock.requests().into_iter().map(|r| r.path).collect();
    assert!(
        paths[4].ends_with(&format!("/conversations/{id}/items?limit=10")),
        "{paths:?}"
    );
    let rows = gw.rows(8).await;
    let endpoints: Vec<&str> = rows.iter().map(|r| r.endpoint.as_str()).collect();
    assert_eq!(
        endpoints,
        [
            "conversations.create",
            "conversations.retrieve",
            "conversations.update",
            "conversations.items.create",
            "conversations.items.list",
            "conversations.items.retrieve",
            "conversations.items.delete",
            "conversations.delete",
        ]
    );
    for row in &rows {
        assert_eq!(row.status, "completed", "{}", row.endpoint);
        assert_eq!(row.tenant, "acme");
        assert_eq!(row.input_tokens + row.output_tokens, 0);
        assert_ne!(row.cost, Some(rust_decimal::Decimal::ONE));
    }
}

#[sqlx::test]
async fn another_tenants_conversation_answers_like_an_unknown_one(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    let owner = gw.key("acme").await;
    let other = gw.key("globex").await;
    let (_, _, created) = call(
        &gw,
        &owner,
        Method::POST,
        "/v1/conversations",
        Some(json!({})),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let before = gw.mock.request_count();

    let unknown = "conv_0000000000000000ffffffffffffffff";
    let calls = [
        (Method::GET, ""),
        (Method::POST, ""),
        (Method::DELETE, ""),
        (Method::GET, "/items"),
        (Method::POST, "/items"),
        (Method::GET, "/items/msg_1"),
        (Method::DELETE, "/items/msg_1"),
    ];
    for (method, suffix) in &calls {
        let body = (*method == Method::POST).then(|| json!({"items": []}));
        let foreign = call(
            &gw,
            &other,
            method.clone(),
            &format!("/v1/conversations/{id}{suffix}"),
            body.clone(),
        )
        .await;
        let missing = call(
            &gw,
            &other,
            method.clone(),
            &format!("/v1/conversations/{unknown}{suffix}"),
            body,
        )
        .await;
        assert_eq!(foreign.0, 404, "{method} {suffix}");
        assert_eq!(foreign.0, missing.0);
        let replace = |v: &Value, id: &str| v.to_string().replace(id, "ID");
        assert_eq!(replace(&foreign.2, &id), replace(&missing.2, unknown));
        assert_eq!(foreign.2["error"]["code"], "conversation_not_found");
        let names = |h: &reqwest::header::HeaderMap| {
            let mut n: Vec<String> = h
                .keys()
                .map(|k| k.to_string())
                .filter(|k| k != "date")
                .collect();
            n.sort();
            n
        };
        assert_eq!(names(&foreign.1), names(&missing.1));
    }
    assert_eq!(
        gw.mock.request_count(),
        before,
        "nothing foreign reached the upstream"
    );
    let rows = gw.rows(1 + 2 * calls.len()).await;
    assert!(rows[1..]
        .iter()
        .all(|r| r.status == "rejected" && r.http_status == Some(404) && r.tenant == "globex"));
    // The owner still has it.
    let (s, _, _) = call(
        &gw,
        &owner,
        Method::GET,
        &format!("/v1/conversations/{id}"),
        None,
    )
    .await;
    assert_eq!(s, 200);
}
