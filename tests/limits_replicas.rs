//! Spend control across three real `tollgate serve` processes on one
//! database: together they admit no more than one gateway would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::str::FromStr;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::PgPool;

use common::GatewayProcess;

const ADMIN: &str = "replicas-limits-admin";

async fn three(pool: &PgPool) -> Vec<GatewayProcess> {
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(
            GatewayProcess::start_with_env(pool, "", &[("TOLLGATE_ADMIN_TOKEN", ADMIN)]).await,
        );
    }
    replicas
}

async fn put_tenant_limits(gw: &GatewayProcess, body: Value) {
    let r = gw
        .http
        .put(format!("{}/admin/limits/tenants/acme", gw.base))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // Every replica's cached set of limited scopes is at most a second old.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
}

/// `n` requests at once, round-robin over the replicas; the statuses.
async fn spread(replicas: &[GatewayProcess], n: usize, body: &Value) -> Vec<u16> {
    let sends = (0..n).map(|i| {
        let gw = &replicas[i % replicas.len()];
        async move {
            gw.http
                .post(format!("{}/v1/responses", gw.base))
                .bearer_auth(&gw.key)
                .json(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    futures_util::future::join_all(sends).await
}

async fn rows_stored(pool: &PgPool, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_ledger")
            .fetch_one(pool)
            .await
            .unwrap();
        if stored >= n || Instant::now() > deadline {
            assert_eq!(stored, n);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test]
async fn hard_budget_holds_across_three_replicas_under_300_requests(pool: PgPool) {
    let replicas = three(&pool).await;
    // 100 in + 100 out at 0.000005 / 0.00003: 0.0035 each; 30 fit.
    let cost = Decimal::from_str("0.0035").unwrap();
    let amount = cost * Decimal::from(30);
    put_tenant_limits(
        &replicas[0],
        json!({"budget": {"amount": amount.to_string(), "mode": "hard", "period": "total"}}),
    )
    .await;
    // More body bytes than input tokens, as a real prompt: the estimate bounds the cost.
    let body = json!({"model": "gpt-5.5", "input": "x".repeat(200), "max_output_tokens": 100,
                      "metadata": {"mock_usage": "100,0,100,0"}});
    let mut admitted = 0;
    let mut sent = 0;
    // Three waves of 100 concurrent requests: later waves see settled spend.
    for _ in 0..3 {
        let statuses = spread(&replicas, 100, &body).await;
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 429),
            "{statuses:?}"
        );
        admitted += statuses.iter().filter(|s| **s == 200).count();
        sent += statuses.len();
        rows_stored(&pool, sent as i64).await;
    }
    let spent: Decimal = sqlx::query_scalar("SELECT coalesce(sum(cost), 0) FROM usage_ledger")
        .fetch_one(&pool)
        .await
        .unwrap();
    println!("3 replicas, hard budget {amount}: admitted {admitted} of {sent} (at most 30 fit), spent {spent}");
    assert!(spent <= amount, "spent {spent} > {amount}");
    assert_eq!(spent, cost * Decimal::from(admitted as i64));
    assert!(admitted >= 1);
    let overruns: i64 = sqlx::query_scalar("SELECT count(*) FROM limit_overruns")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(overruns, 0);
}

#[sqlx::test]
async fn requests_per_minute_holds_across_three_replicas(pool: PgPool) {
    let replicas = three(&pool).await;
    put_tenant_limits(&replicas[1], json!({"rate": {"requests_per_minute": 7}})).await;
    let body = json!({"model": "gpt-5.5", "input": "x", "metadata": {"mock_usage": "1,0,1,0"}});
    let statuses = spread(&replicas, 90, &body).await;
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    println!("3 replicas, rpm 7: admitted {admitted} of 90");
    assert_eq!(admitted, 7, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
}
