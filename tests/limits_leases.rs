//! Spend control on the production path (issue 22): a hard budget holds
//! against input a request only points at, replicas admit from leased
//! slices (no database round trip per request) and drain a budget to
//! exactly zero together, a change reaches every replica within a second,
//! a dead replica's slice lapses, and a limited tenant is served through a
//! database outage. Real PostgreSQL, real `tollgate serve` processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::str::FromStr;
use std::time::{Duration, Instant};

use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::PgPool;

use common::{gpt55_price, GatewayProcess, TestGateway};

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

const ADMIN: &str = "leases-admin";

async fn ledger_sum(pool: &PgPool) -> Decimal {
    sqlx::query_scalar("SELECT coalesce(sum(cost), 0) FROM usage_ledger")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn rows_stored(pool: &PgPool, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_ledger")
            .fetch_one(pool)
            .await
            .unwrap_or(0);
        if stored >= n || Instant::now() > deadline {
            assert_eq!(stored, n);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The issue's scenario: a hard total budget of 5.00; one response of a
/// 200,000-token input (1.0003); then 20 concurrent continuations of it
/// with `max_output_tokens: 16`, each billed the carried-over context
/// (200,020 input tokens: 1.0004). Each continuation's bound counts that
/// context, so the three that fit are served and the others refused: spent
/// ≤ 5.00, overrun 0.
#[sqlx::test]
async fn a_hard_budget_holds_against_context_carried_by_previous_response_id(pool: PgPool) {
    let gw = TestGateway::start(pool.clone()).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let (status, _) = gw
        .admin(
            Method::PUT,
            "/admin/limits/tenants/acme",
            Some(json!({"budget": {"amount": "5.00", "period": "total", "mode": "hard"}})),
        )
        .await;
    assert_eq!(status, 200);

    // A real 200,000-token prompt is at least 200,000 bytes.
    let first = gw
        .create(
            &key,
            json!({"model": "gpt-5.5", "input": "x".repeat(200_100), "max_output_tokens": 10,
                   "metadata": {"mock_usage": "200000,0,10,0"}}),
        )
        .await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    let previous = first["id"].as_str().unwrap().to_owned();
    // Its row stored and its hold released (for the few milliseconds in
    // between, its estimate and its cost both count: that can only refuse).
    gw.rows(1).await;
    common::limits_settled(&pool).await;

    let continuation = json!({"model": "gpt-5.5", "input": "go on", "max_output_tokens": 16,
        "previous_response_id": previous, "metadata": {"mock_usage": "200020,0,10,0"}});
    let sends = (0..20).map(|_| gw.create(&key, continuation.clone()));
    let mut served = 0;
    let mut refused = 0;
    for r in futures_util::future::join_all(sends).await {
        match r.status().as_u16() {
            200 => served += 1,
            429 => {
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["error"]["code"], "insufficient_quota");
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", r.text().await.unwrap()),
        }
    }
    gw.rows(21).await;
    common::limits_settled(&pool).await;
    let spent = ledger_sum(&pool).await;
    let (_, status) = gw
        .admin(Method::GET, "/admin/limits/tenants/acme", None)
        .await;
    println!(
        "hidden input: 20 continuations of a 200,000-token response under a 5.00 hard budget: \
         {served} served, {refused} refused, spent {spent}, overrun {}",
        status["budget"]["overrun"]
    );
    assert_eq!(served, 3, "the three continuations that fit are served");
    assert_eq!(refused, 17);
    assert_eq!(spent, dec("1.0003") + dec("1.0004") * Decimal::from(3));
    assert!(spent <= dec("5.00"));
    assert_eq!(dec(status["budget"]["spent"].as_str().unwrap()), spent);
    assert_eq!(status["budget"]["overrun"], "0");
    gw.shutdown().await;
    // At shutdown the replica hands its idle slices back.
    let leases: i64 = sqlx::query_scalar("SELECT count(*) FROM limit_leases")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(leases, 0, "slices handed back at shutdown");
}

/// A request a hard budget cannot bound is refused, naming what is
/// missing; soft budgets still admit it.
#[sqlx::test]
async fn what_a_hard_budget_cannot_bound_it_refuses(pool: PgPool) {
    let gw = TestGateway::start(pool.clone()).await;
    // No max_input_tokens / max_output_tokens for this model.
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let put = |mode: &'static str| {
        let gw = &gw;
        async move {
            let (status, _) = gw
                .admin(
                    Method::PUT,
                    "/admin/limits/tenants/acme",
                    Some(json!({"budget": {"amount": "100", "mode": mode}})),
                )
                .await;
            assert_eq!(status, 200);
        }
    };
    put("hard").await;
    let cases = [
        (
            json!({"model": "gpt-5.5", "input": "hi"}),
            "max_output_tokens",
        ),
        (
            json!({"model": "gpt-5.5", "max_output_tokens": 5,
                   "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}]}),
            "input[0].content[0]",
        ),
        (
            json!({"model": "gpt-5.5", "max_output_tokens": 5, "input": "hi",
                   "tools": [{"type": "mcp", "server_label": "s", "server_url": "https://mcp.example/x",
                              "require_approval": "never"}]}),
            "max_tool_calls",
        ),
    ];
    for (body, param) in &cases {
        let r = gw.create(&key, body.clone()).await;
        assert_eq!(r.status(), 400, "{body}");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["error"]["code"], "cost_unbounded", "{answer}");
        assert_eq!(answer["error"]["param"], *param, "{answer}");
    }
    // With the model's window and output limit, the file is bounded.
    let mut price = gpt55_price();
    price["max_input_tokens"] = json!(272000);
    price["max_output_tokens"] = json!(128000);
    gw.set_price("gpt-5.5", price).await;
    let r = gw.create(&key, cases[1].0.clone()).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    put("soft").await;
    let r = gw.create(&key, cases[0].0.clone()).await;
    assert_eq!(
        r.status(),
        200,
        "soft budgets admit with the body-bytes estimate"
    );
    gw.rows(5).await;
    let rejected: i64 =
        sqlx::query_scalar("SELECT count(*) FROM usage_ledger WHERE status = 'rejected'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(rejected, 3, "each refusal is one row");
    gw.shutdown().await;
}

async fn replicas(pool: &PgPool, n: usize, config: &str) -> Vec<GatewayProcess> {
    let mut replicas = Vec::new();
    for _ in 0..n {
        replicas.push(
            GatewayProcess::start_with_env(pool, config, &[("TOLLGATE_ADMIN_TOKEN", ADMIN)]).await,
        );
    }
    replicas
}

async fn put_tenant(gw: &GatewayProcess, body: Value) {
    let r = gw
        .http
        .put(format!("{}/admin/limits/tenants/acme", gw.base))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// One raw JSON body, sent as its exact bytes.
async fn send_raw(gw: &GatewayProcess, body: &str) -> u16 {
    gw.http
        .post(format!("{}/v1/responses", gw.base))
        .bearer_auth(&gw.key)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A body whose upstream usage equals its bound exactly: its input tokens
/// are its bytes plus the bound's model-name slack (256), its output its
/// `max_output_tokens`. The usage field has a fixed width, so the body's
/// length does not depend on it.
fn exact_body() -> (String, Decimal) {
    let body = |input: usize| {
        format!(
            r#"{{"model":"gpt-5.5","input":"drain","max_output_tokens":100,"metadata":{{"mock_usage":"{input:06},0,100,0"}}}}"#
        )
    };
    let input = body(0).len() + 256;
    let cost = Decimal::from(input) * dec("0.000005") + Decimal::from(100) * dec("0.00003");
    (body(input), cost)
}

/// Three replicas on one budget of exactly 30 requests' cost, under
/// concurrent load from all of them: exactly 30 are admitted, the budget
/// ends at exactly zero, and nothing overruns.
#[sqlx::test]
async fn three_replicas_drain_one_budget_to_exactly_zero(pool: PgPool) {
    let replicas = replicas(&pool, 3, "").await;
    let (body, cost) = exact_body();
    let amount = cost * Decimal::from(30);
    put_tenant(
        &replicas[0],
        json!({"budget": {"amount": amount.to_string(), "mode": "hard", "period": "total"}}),
    )
    .await;
    let mut admitted = 0;
    let mut sent = 0;
    let started = Instant::now();
    while admitted < 30 && started.elapsed() < Duration::from_secs(60) {
        let sends = (0..12).map(|i| send_raw(&replicas[i % 3], &body));
        let statuses = futures_util::future::join_all(sends).await;
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 429),
            "{statuses:?}"
        );
        admitted += statuses.iter().filter(|s| **s == 200).count();
        sent += statuses.len();
        rows_stored(&pool, sent as i64).await;
    }
    // Once drained, every replica refuses.
    for gw in &replicas {
        assert_eq!(send_raw(gw, &body).await, 429);
        sent += 1;
    }
    rows_stored(&pool, sent as i64).await;
    common::limits_settled(&pool).await;
    let spent = ledger_sum(&pool).await;
    let status: Value = replicas[1]
        .http
        .get(format!("{}/admin/limits/tenants/acme", replicas[1].base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!(
        "3 replicas drained {amount} in {:.1} s: {admitted} admitted of {sent}, spent {spent}, remaining {}",
        started.elapsed().as_secs_f64(),
        status["budget"]["remaining"]
    );
    assert_eq!(admitted, 30);
    assert_eq!(spent, amount);
    assert_eq!(
        dec(status["budget"]["remaining"].as_str().unwrap()),
        Decimal::ZERO
    );
    assert_eq!(status["budget"]["overrun"], "0");
}

async fn metric(gw: &GatewayProcess, name: &str) -> f64 {
    let text = gw
        .http
        .get(format!("{}/metrics", gw.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Admission makes no database round trip per request while a slice lasts:
/// 600 requests over about three seconds on limits that never bind cost a
/// handful of slice syncs, not hundreds of transactions; and a lowered
/// limit reaches every replica within a second.
#[sqlx::test]
async fn slices_admit_in_memory_and_a_change_reaches_every_replica_within_a_second(pool: PgPool) {
    let replicas = replicas(&pool, 3, "").await;
    put_tenant(
        &replicas[0],
        json!({"budget": {"amount": "1000", "mode": "hard", "period": "month"},
               "rate": {"requests_per_minute": 100000, "tokens_per_minute": 100000000,
                        "concurrent_requests": 500}}),
    )
    .await;
    let body = json!({"model": "gpt-5.5", "input": "x", "max_output_tokens": 16,
                      "metadata": {"mock_usage": "10,0,16,0"}});
    let send = |gw: &GatewayProcess| {
        let gw_http = gw.http.clone();
        let url = format!("{}/v1/responses", gw.base);
        let key = gw.key.clone();
        let body = body.clone();
        async move {
            gw_http
                .post(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // Warm up: each replica learns the demand.
    for _ in 0..5 {
        let statuses =
            futures_util::future::join_all((0..30).map(|i| send(&replicas[i % 3]))).await;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    let before: f64 = futures_util::future::join_all(
        replicas
            .iter()
            .map(|gw| metric(gw, "tollgate_limit_syncs_total")),
    )
    .await
    .into_iter()
    .sum();
    let started = Instant::now();
    for _ in 0..20 {
        let statuses =
            futures_util::future::join_all((0..30).map(|i| send(&replicas[i % 3]))).await;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after: f64 = futures_util::future::join_all(
        replicas
            .iter()
            .map(|gw| metric(gw, "tollgate_limit_syncs_total")),
    )
    .await
    .into_iter()
    .sum();
    let syncs = after - before;
    println!(
        "600 limited requests over {elapsed:.1} s on 3 replicas: {syncs} slice syncs ({:.1}/s)",
        syncs / elapsed
    );
    // About one per replica and second (plus a few on demand), never per request.
    assert!(syncs <= 3.0 * (elapsed + 2.0) + 10.0, "{syncs} syncs");

    // Lower the budget below what is spent: every replica refuses within a second.
    put_tenant(
        &replicas[2],
        json!({"budget": {"amount": "0", "mode": "hard", "period": "month"}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let statuses = futures_util::future::join_all((0..9).map(|i| send(&replicas[i % 3]))).await;
    assert!(statuses.iter().all(|s| *s == 429), "{statuses:?}");
}

/// A replica that dies holding slots: the others are refused until its
/// slice lapses (the lease lifetime, 3 s here), then served. It can only
/// refuse, never overshoot.
#[sqlx::test]
async fn a_killed_replicas_slice_lapses_and_only_refuses_meanwhile(pool: PgPool) {
    let config = "[limits]\nlease_ttl_secs = 3\nlease_sync_ms = 200\n";
    let mut replicas = replicas(&pool, 2, config).await;
    put_tenant(&replicas[0], json!({"rate": {"concurrent_requests": 2}})).await;
    // Two slow streams on the first replica hold both slots.
    let slow = json!({"model": "gpt-5.5", "input": "x", "stream": true, "max_output_tokens": 16,
        "metadata": {"mock_usage": "1,0,1,0", "mock_deltas": "100", "mock_delay_ms": "100"}});
    let open: Vec<_> = (0..2)
        .map(|_| {
            replicas[0]
                .http
                .post(format!("{}/v1/responses", replicas[0].base))
                .bearer_auth(&replicas[0].key)
                .json(&slow)
                .send()
        })
        .collect();
    for r in futures_util::future::join_all(open).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    let quick = json!({"model": "gpt-5.5", "input": "x", "max_output_tokens": 16});
    let try_second = |gw: &GatewayProcess| {
        gw.http
            .post(format!("{}/v1/responses", gw.base))
            .bearer_auth(&gw.key)
            .json(&quick)
            .send()
    };
    assert_eq!(try_second(&replicas[1]).await.unwrap().status(), 429);
    let first = replicas.remove(0);
    first.signal("KILL");
    let killed = Instant::now();
    let _ = first.wait().await;
    let deadline = killed + Duration::from_secs(15);
    loop {
        let status = try_second(&replicas[0]).await.unwrap().status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(
            Instant::now() < deadline,
            "the dead replica's slots never came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let waited = killed.elapsed();
    println!(
        "a killed replica's 2 slots came back after {:.1} s (lease 3 s)",
        waited.as_secs_f64()
    );
    assert!(
        waited >= Duration::from_millis(2500),
        "freed before its lease lapsed"
    );
}

/// A limited tenant under steady load through a 10 s database stop: every
/// request is served from the slices its replica holds, rows spool, and
/// afterwards `spent` equals the ledger exactly and the hard budget held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_tenant_is_served_through_a_database_outage() {
    let cluster = tokio::task::spawn_blocking(tollgate::pgtemp::TempCluster::start)
        .await
        .unwrap()
        .expect("a throwaway PostgreSQL cluster (initdb/pg_ctl) is needed");
    let config = tollgate::config::Config {
        database_url: cluster.url(),
        ..Default::default()
    };
    let pool = tollgate::state::connect(&config).await.unwrap();
    tollgate::state::migrate(&pool).await.unwrap();
    let gw = TestGateway::start(pool.clone()).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let (status, _) = gw
        .admin(
            Method::PUT,
            "/admin/limits/tenants/acme",
            Some(
                json!({"budget": {"amount": "50", "mode": "hard", "period": "month"},
                        "rate": {"requests_per_minute": 20000, "concurrent_requests": 100}}),
            ),
        )
        .await;
    assert_eq!(status, 200);
    let body = json!({"model": "gpt-5.5", "input": "x", "max_output_tokens": 16,
                      "metadata": {"mock_usage": "10,0,16,0"}});
    let mut served_before = 0;
    let mut served_during = 0;
    let mut refused = 0;
    let mut sent = 0;
    let started = Instant::now();
    let mut stopped_at: Option<Instant> = None;
    let mut restarted = false;
    // A steady rate (5 requests every 200 ms, below what a loaded machine
    // serves), so the demand a slice learns before the stop is the demand
    // during it: a slice covers `lease_cover_secs` of the *recent* rate, and
    // a load that speeds up as other tests finish would outgrow it.
    let mut pace = tokio::time::interval(Duration::from_millis(200));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while started.elapsed() < Duration::from_secs(17) {
        pace.tick().await;
        if stopped_at.is_none() && started.elapsed() > Duration::from_secs(3) {
            cluster.stop().unwrap();
            stopped_at = Some(Instant::now());
        }
        let down = stopped_at.is_some_and(|at| at.elapsed() < Duration::from_secs(10));
        if stopped_at.is_some_and(|at| at.elapsed() >= Duration::from_secs(10)) && !restarted {
            cluster.start_again().unwrap();
            restarted = true;
        }
        let sends = (0..5).map(|_| gw.create(&key, body.clone()));
        for r in futures_util::future::join_all(sends).await {
            sent += 1;
            match (r.status().as_u16(), down) {
                (200, true) => served_during += 1,
                (200, false) => served_before += 1,
                (status, _) => {
                    refused += 1;
                    println!("refused: {status} {}", r.text().await.unwrap());
                }
            }
        }
    }
    assert!(restarted);
    rows_stored(&pool, sent).await;
    common::limits_settled(&pool).await;
    let spent = ledger_sum(&pool).await;
    let (_, status) = gw
        .admin(Method::GET, "/admin/limits/tenants/acme", None)
        .await;
    println!(
        "10 s database stop under load on a limited tenant: {sent} requests, {served_during} served \
         during the outage, {served_before} outside it, {refused} refused; spent {spent} = ledger, overrun {}",
        status["budget"]["overrun"]
    );
    assert_eq!(refused, 0, "every request is served from the slices");
    assert!(served_during > 100, "the outage was under load");
    assert_eq!(dec(status["budget"]["spent"].as_str().unwrap()), spent);
    assert_eq!(spent, dec("0.00053") * Decimal::from(sent));
    assert!(spent <= dec("50"));
    assert_eq!(status["budget"]["overrun"], "0");
    gw.shutdown().await;
}
