//! Platform semantics: routing across OpenAI and Azure upstreams,
//! turing_options (fallbacks, auto), stateful follow-ups and ownership, the
//! other `/responses` endpoints, and the MCP host allowlist.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestGateway, AZURE_KEY};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::PgPool;
use tollgate::config::{DeploymentConfig, RouteConfig};

fn price(input: &str, output: &str) -> Value {
    json!({"input_cost_per_token": input, "output_cost_per_token": output})
}

fn route(model: &str, deployments: &[(&str, Option<&str>)]) -> RouteConfig {
    RouteConfig {
        model: model.into(),
        deployments: deployments
            .iter()
            .map(|(upstream, deployment)| DeploymentConfig {
                upstream: (*upstream).into(),
                deployment: deployment.map(str::to_owned),
            })
            .collect(),
    }
}

#[sqlx::test]
async fn azure_deployment_gets_its_header_and_deployment_name(pool: PgPool) {
    let gw = TestGateway::start_with(pool, |c| {
        c.routes = vec![route("gpt-5.5", &[("azure", Some("gpt-55-prod"))])];
    })
    .await;
    gw.set_price("gpt-5.5", price("0.000005", "0.00003")).await;
    let key = gw.key("acme").await;
    let response = gw
        .create(&key, json!({"model": "turing/gpt-5.5", "input": "hi", "metadata": {"mock_usage": "10,0,10,0"}}))
        .await;
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();

    assert_eq!(gw.mock.request_count(), 0);
    let received = gw.azure.requests().pop().unwrap();
    assert_eq!(received.path, "/openai/v1/responses");
    assert_eq!(received.header("api-key"), Some(AZURE_KEY));
    assert_eq!(
        received.header("authorization"),
        None,
        "Azure gets api-key, not a bearer"
    );
    assert_eq!(received.json().unwrap()["model"], "gpt-55-prod");
    let row = &gw.rows(1).await[0];
    assert_eq!(row.upstream.as_deref(), Some("azure"));
    assert_eq!(
        row.model.as_deref(),
        Some("gpt-5.5"),
        "priced under the public model"
    );
    // 10*0.000005 + 10*0.00003
    assert_eq!(row.cost, Some("0.00035".parse().unwrap()));
}

#[sqlx::test]
async fn azure_legacy_api_version_form(pool: PgPool) {
    let gw = TestGateway::start_with(pool, |c| {
        let azure = &mut c.upstreams[1];
        azure.url = azure.url.trim_end_matches("/v1").to_owned();
        azure.api_version = Some("2025-04-01-preview".into());
        c.routes = vec![route("gpt-5.5", &[("azure", None)])];
    })
    .await;
    gw.set_price("gpt-5.5", price("0.000005", "0.00003")).await;
    let key = gw.key("acme").await;
    let response = gw
        .create(&key, json!({"model": "gpt-5.5", "input": "hi"}))
        .await;
    assert_eq!(response.status(), 200);
    let received = gw.azure.requests().pop().unwrap();
    assert_eq!(
        received.path,
        "/openai/responses?api-version=2025-04-01-preview"
    );
}

#[sqlx::test]
async fn deployments_fail_over_in_order(pool: PgPool) {
    // Nothing listens on this port: the first deployment cannot be reached.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = TestGateway::start_with(pool, |c| {
        let mut down = c.upstreams[0].clone();
        down.name = "down".into();
        down.url = format!("http://{closed}/v1");
        c.upstreams.push(down);
        c.routes = vec![route(
            "gpt-5.5",
            &[("down", None), ("azure", Some("gpt-55-backup"))],
        )];
    })
    .await;
    gw.set_price("gpt-5.5", price("0.000005", "0.00003")).await;
    let key = gw.key("acme").await;
    let response = gw
        .create(&key, json!({"model": "gpt-5.5", "input": "hi"}))
        .await;
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    assert_eq!(
        gw.azure.requests().pop().unwrap().json().unwrap()["model"],
        "gpt-55-backup"
    );
    let row = &gw.rows(1).await[0];
    assert_eq!(row.upstream.as_deref(), Some("azure"));
    assert_eq!(row.attempts, 2);
    assert_eq!(row.status, "completed");
}

#[sqlx::test]
async fn fallback_chain_of_three_is_priced_at_the_model_that_served(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", price("0.000005", "0.00003")).await;
    gw.set_price("gpt-5.4", price("0.0000025", "0.000015"))
        .await;
    gw.set_price("gpt-5", price("0.00000125", "0.00001")).await;
    let key = gw.key("acme").await;
    let response = gw
        .create(
            &key,
            json!({"model": "turing/gpt-5.5", "input": "hi", "temperature": 1.0,
            "metadata": {"mock_http_status": "503"},
            "turing_options": {"max_retries": 1, "fallbacks": [
                "turing/gpt-5.4",
                {"model": "gpt-5", "temperature": 0.25, "metadata": {"mock_usage": "1000,0,100,0"}}
            ]}}),
        )
        .await;
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();

    let bodies: Vec<Value> = gw
        .mock
        .requests()
        .iter()
        .map(|r| r.json().unwrap())
        .collect();
    let models: Vec<&str> = bodies
        .iter()
        .map(|b| b["model"].as_str().unwrap())
        .collect();
    // max_retries applies to the requested model only: 2 tries, then 1 each.
    assert_eq!(models, ["gpt-5.5", "gpt-5.5", "gpt-5.4", "gpt-5"]);
    assert_eq!(
        bodies[2]["temperature"], 1.0,
        "fallbacks inherit the request"
    );
    assert_eq!(
        bodies[3]["temperature"], 0.25,
        "an object fallback overrides fields"
    );
    assert!(bodies.iter().all(|b| b.get("turing_options").is_none()));

    let row = &gw.rows(1).await[0];
    assert_eq!(row.model.as_deref(), Some("gpt-5"));
    assert_eq!(row.fallback_from.as_deref(), Some("gpt-5.5"));
    assert_eq!(row.attempts, 4);
    // 1000*0.00000125 + 100*0.00001 at gpt-5's price
    assert_eq!(row.cost, Some("0.00225".parse().unwrap()));
}

#[sqlx::test]
async fn auto_fallback_uses_the_same_family_first(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    for model in ["gpt-5.5", "gpt-5.4", "o3"] {
        gw.set_price(model, price("0.000001", "0.000001")).await;
    }
    let key = gw.key("acme").await;
    let response = gw
        .create(
            &key,
            json!({"model": "gpt-5.5", "input": "hi",
                   "metadata": {"mock_fail_times": "1", "mock_fail_key": "auto", "mock_http_status": "500"},
                   "turing_options": {"fallbacks": "auto"}}),
        )
        .await;
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    let row = &gw.rows(1).await[0];
    assert_eq!(row.model.as_deref(), Some("gpt-5.4"));
    assert_eq!(row.fallback_from.as_deref(), Some("gpt-5.5"));
}

#[sqlx::test]
async fn invalid_turing_options_name_their_path(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", price("0.000001", "0.000001")).await;
    let key = gw.key("acme").await;
    for (options, param) in [
        (
            json!({"fallbacks": ["gpt-5.5", {"temperature": 1}]}),
            "turing_options.fallbacks[1].model",
        ),
        (
            json!({"fallbacks": "no-such-model"}),
            "turing_options.fallbacks",
        ),
        (json!({"max_retries": 9}), "turing_options.max_retries"),
        (json!({"timeout": -1}), "turing_options.timeout"),
        (
            json!({"fallbacks": {"model": "gpt-5.5", "stream": true}}),
            "turing_options.fallbacks.stream",
        ),
    ] {
        let response = gw
            .create(
                &key,
                json!({"model": "gpt-5.5", "input": "x", "turing_options": options}),
            )
            .await;
        assert_eq!(response.status(), 400, "{options}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["param"], param, "{options}");
    }
    assert_eq!(gw.mock.request_count(), 0);
}

#[sqlx::test]
async fn follow_ups_go_to_the_upstream_that_holds_the_state(pool: PgPool) {
    let gw = TestGateway::start_with(pool, |c| {
        c.routes = vec![
            route("gpt-5.4", &[("azure", None)]),
            route("gpt-5.5", &[("mock", None)]),
        ];
    })
    .await;
    gw.set_price("gpt-5.4", price("0.000001", "0.000001")).await;
    gw.set_price("gpt-5.5", price("0.000001", "0.000001")).await;
    let key = gw.key("acme").await;
    let first: Value = gw
        .create(
            &key,
            json!({"model": "gpt-5.4", "input": "remember 7", "tags": ["stateful"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = first["id"].as_str().unwrap();
    // A different model whose own route is the other upstream: the state wins.
    let response = gw
        .create(
            &key,
            json!({"model": "gpt-5.5", "input": "what was it?", "previous_response_id": id}),
        )
        .await;
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    assert_eq!(gw.mock.request_count(), 0);
    assert_eq!(gw.azure.request_count(), 2);
    let sent = gw.azure.requests().pop().unwrap().json().unwrap();
    assert_eq!(sent["previous_response_id"], id);
    assert!(sent.get("tags").is_none());
}

#[sqlx::test]
async fn another_tenants_response_is_404_like_an_unknown_one(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", price("0.000001", "0.000001")).await;
    let owner = gw.key("acme").await;
    let intruder = gw.key("globex").await;
    let created: Value = gw
        .create(
            &owner,
            json!({"model": "gpt-5.5", "input": "secret", "background": false}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();

    let call = |method: reqwest::Method, path: String, key: String| {
        let gw = &gw;
        async move {
            let response = gw
                .http
                .request(method, gw.url(&path))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body["error"]["code"].clone())
        }
    };
    for (method, suffix) in [
        (reqwest::Method::GET, ""),
        (reqwest::Method::GET, "/input_items"),
        (reqwest::Method::POST, "/cancel"),
        (reqwest::Method::DELETE, ""),
    ] {
        let foreign = call(
            method.clone(),
            format!("/v1/responses/{id}{suffix}"),
            intruder.clone(),
        )
        .await;
        let unknown = call(
            method.clone(),
            format!("/v1/responses/resp_unknown{suffix}"),
            intruder.clone(),
        )
        .await;
        assert_eq!(foreign.0, 404, "{method} {suffix}");
        assert_eq!(
            foreign, unknown,
            "{method} {suffix}: indistinguishable from an unknown id"
        );
    }
    let response = gw
        .create(
            &intruder,
            json!({"model": "gpt-5.5", "input": "x", "previous_response_id": id}),
        )
        .await;
    assert_eq!(response.status(), 404);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "previous_response_not_found");
    assert_eq!(
        gw.mock.request_count(),
        1,
        "nothing of the intruder's reached the upstream"
    );

    // The owner can do all of it.
    let (status, _) = call(
        reqwest::Method::GET,
        format!("/v1/responses/{id}"),
        owner.clone(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        reqwest::Method::GET,
        format!("/v1/responses/{id}/input_items"),
        owner.clone(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        reqwest::Method::DELETE,
        format!("/v1/responses/{id}"),
        owner.clone(),
    )
    .await;
    assert_eq!(status, 200);

    let rows = gw.rows(13).await;
    let retrieve = rows
        .iter()
        .find(|r| r.endpoint == "responses.retrieve" && r.tenant == "acme")
        .unwrap();
    assert_eq!(
        retrieve.cost,
        Some(Decimal::ZERO),
        "retrieving shows usage, it does not cause it"
    );
    assert_eq!(retrieve.input_tokens, 0);
    assert_eq!(
        rows.iter()
            .filter(|r| r.tenant == "globex" && r.status == "rejected")
            .count(),
        9
    );
}

#[sqlx::test]
async fn compact_is_metered_and_input_tokens_is_not_billed(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", price("0.000005", "0.00003")).await;
    let key = gw.key("acme").await;
    let response = gw
        .http
        .post(gw.url("/v1/responses/compact"))
        .bearer_auth(&key)
        .json(&json!({"model": "turing/gpt-5.5", "input": "a long conversation"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let compaction: Value = response.json().await.unwrap();
    assert_eq!(compaction["object"], "response.compaction");
    let usage = &compaction["usage"];
    let response = gw
        .http
        .post(gw.url("/api/v1/responses/input_tokens"))
        .bearer_auth(&key)
        .json(&json!({"model": "turing/gpt-5.5", "input": "count me"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap()["object"],
        "response.input_tokens"
    );

    let rows = gw.rows(2).await;
    let compact = &rows[0];
    assert_eq!(compact.endpoint, "responses.compact");
    assert_eq!(compact.usage_source, "reported");
    assert_eq!(
        compact.input_tokens,
        usage["input_tokens"].as_i64().unwrap()
    );
    let expected = Decimal::from(usage["input_tokens"].as_i64().unwrap())
        * "0.000005".parse::<Decimal>().unwrap()
        + Decimal::from(usage["output_tokens"].as_i64().unwrap())
            * "0.00003".parse::<Decimal>().unwrap();
    assert_eq!(compact.cost, Some(expected));
    assert!(compact.cost.unwrap() > Decimal::ZERO);
    assert_eq!(rows[1].endpoint, "responses.input_tokens");
    assert_eq!(rows[1].cost, Some(Decimal::ZERO));
    assert_eq!(gw.mock.requests()[1].path, "/v1/responses/input_tokens");
}

#[sqlx::test]
async fn mcp_hosts_outside_the_tenants_allowlist_are_refused(pool: PgPool) {
    let gw = TestGateway::start_with(pool, |c| {
        c.mcp_allowed_hosts
            .insert("acme".into(), vec!["mcp.good.example".into()]);
    })
    .await;
    gw.set_price("gpt-5.5", price("0.000001", "0.000001")).await;
    let acme = gw.key("acme").await;
    let other = gw.key("globex").await;
    let tools = |host: &str| json!([{"type": "mcp", "server_label": "s", "server_url": format!("https://{host}/sse"), "require_approval": "never"}]);
    let refused = gw
        .create(
            &acme,
            json!({"model": "gpt-5.5", "input": "x", "tools": tools("evil.example")}),
        )
        .await;
    assert_eq!(refused.status(), 400);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["param"], "tools[0].server_url");
    assert_eq!(error["error"]["code"], "mcp_server_not_allowed");
    let allowed = gw
        .create(
            &acme,
            json!({"model": "gpt-5.5", "input": "x", "tools": tools("MCP.good.example")}),
        )
        .await;
    assert_eq!(allowed.status(), 200);
    // No list for a tenant: any host.
    let open = gw
        .create(
            &other,
            json!({"model": "gpt-5.5", "input": "x", "tools": tools("evil.example")}),
        )
        .await;
    assert_eq!(open.status(), 200);
    let forwarded = gw.mock.requests()[0].json().unwrap();
    assert_eq!(
        forwarded["tools"][0]["server_url"], "https://MCP.good.example/sse",
        "passed through untouched"
    );
}

#[sqlx::test]
async fn models_lists_the_priced_public_ids(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", price("0.000001", "0.000001")).await;
    gw.set_price("o3", price("0.000001", "0.000001")).await;
    let key = gw.key("acme").await;
    let models: Value = gw
        .http
        .get(gw.url("/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["turing/gpt-5.5", "turing/o3"]);
}

#[sqlx::test]
async fn background_responses_are_billed_exactly_once(pool: PgPool) {
    let gw = TestGateway::start_with(pool, |c| c.background_poll_secs = 1).await;
    gw.set_price("gpt-5.5", price("0.000005", "0.00003")).await;
    let key = gw.key("acme").await;
    let mut ids = Vec::new();
    for usage in ["10,0,10,0", "20,0,20,0"] {
        let created: Value = gw
            .create(
                &key,
                json!({"model": "gpt-5.5", "input": "later", "background": true,
                                 "metadata": {"mock_usage": usage}}),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(created["status"], "queued");
        assert!(created["usage"].is_null());
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let rows = gw.rows(2).await;
    assert!(
        rows.iter()
            .all(|r| r.status == "queued" && r.cost.is_none()),
        "{rows:#?}"
    );
    assert_eq!(
        rows[0].unpriced_reason.as_deref(),
        Some("background_pending")
    );

    // The client polls the first one to its end: it is settled at once.
    let retrieved: Value = gw
        .http
        .get(gw.url(&format!("/v1/responses/{}", ids[0])))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(retrieved["status"], "completed");

    // The second, never retrieved, is settled by the reconciler's poll.
    let settled = |rows: &[tollgate::ledger::LedgerRow], id: &str| {
        rows.iter()
            .filter(|r| r.endpoint == "responses.create" && r.response_id.as_deref() == Some(id))
            .cloned()
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let rows = gw.rows(3).await;
        if rows.iter().all(|r| r.status != "queued") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "background rows were not settled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Further polls and retrievals change nothing.
    for _ in 0..2 {
        gw.http
            .get(gw.url(&format!("/v1/responses/{}", ids[0])))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let rows = gw.rows(5).await;
    for (id, cost) in ids.iter().zip(["0.00035", "0.0007"]) {
        let creates = settled(&rows, id);
        assert_eq!(creates.len(), 1, "one row per create");
        assert_eq!(creates[0].status, "completed");
        assert_eq!(creates[0].usage_source, "reported");
        // 10*0.000005 + 10*0.00003, 20*0.000005 + 20*0.00003
        assert_eq!(creates[0].cost, Some(cost.parse().unwrap()));
    }
    let billed: Decimal = rows.iter().filter_map(|r| r.cost).sum();
    assert_eq!(
        billed,
        "0.00105".parse::<Decimal>().unwrap(),
        "retrievals add nothing"
    );
}
