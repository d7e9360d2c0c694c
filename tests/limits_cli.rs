//! `tollgate limits set|show|delete` (CONTRACT §1, §8) as an operator runs
//! it: the real binary against the real database, and a running gateway
//! that obeys what the command set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};

use serde_json::{json, Value};
use sqlx::PgPool;

/// Runs `tollgate limits <args>` against the test's database.
async fn limits(pool: &PgPool, args: &[&str]) -> Output {
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tollgate.toml");
    std::fs::write(&config, "").unwrap();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .arg("--config")
            .arg(&config)
            .arg("limits")
            .args(&args)
            .env(
                "DATABASE_URL",
                format!("postgres://postgres@127.0.0.1:5432/{database}"),
            )
            .env("RUST_LOG", "error")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn printed(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "tollgate limits failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the command prints JSON")
}

fn failed(output: &Output) -> String {
    assert!(!output.status.success(), "the command should have failed");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[sqlx::test(migrations = "./migrations")]
async fn set_show_and_delete_a_tenants_limits(pool: PgPool) {
    tollgate::auth::create_key(&pool, "acme", "ops")
        .await
        .unwrap();

    let set = printed(
        &limits(
            &pool,
            &[
                "set",
                "--tenant",
                "acme",
                "--budget",
                "50.00",
                "--period",
                "day",
                "--requests-per-minute",
                "600",
                "--concurrent-requests",
                "20",
            ],
        )
        .await,
    );
    assert_eq!(set["scope"], "tenant");
    assert_eq!(set["id"], "acme");
    assert_eq!(set["budget"]["amount"], "50");
    assert_eq!(set["budget"]["period"], "day");
    assert_eq!(set["budget"]["mode"], "hard");
    assert_eq!(set["budget"]["spent"], "0");
    assert_eq!(set["rate"]["requests_per_minute"]["limit"], 600);
    assert_eq!(set["rate"]["concurrent_requests"]["limit"], 20);
    assert!(set["rate"].get("tokens_per_minute").is_none());

    let shown = printed(&limits(&pool, &["show", "--tenant", "acme"]).await);
    assert_eq!(shown["budget"]["amount"], "50");
    let all = printed(&limits(&pool, &["show"]).await);
    assert_eq!(all.as_array().map(Vec::len), Some(1));

    // A whole §8 body replaces the scope's limits, as a PUT does.
    let replaced = printed(
        &limits(
            &pool,
            &[
                "set",
                "--tenant",
                "acme",
                "--body",
                r#"{"budget": {"amount": "7.5", "period": "total", "mode": "soft"}}"#,
            ],
        )
        .await,
    );
    assert_eq!(replaced["budget"]["mode"], "soft");
    assert_eq!(replaced["budget"]["resets_at"], Value::Null);
    assert_eq!(replaced["rate"], json!({}));

    let deleted = printed(&limits(&pool, &["delete", "--tenant", "acme"]).await);
    assert_eq!(
        deleted,
        json!({"deleted": {"scope": "tenant", "id": "acme"}})
    );
    let gone = failed(&limits(&pool, &["show", "--tenant", "acme"]).await);
    assert!(gone.contains("no limits are set"), "{gone}");
    let again = failed(&limits(&pool, &["delete", "--tenant", "acme"]).await);
    assert!(again.contains("No limits are set"), "{again}");
}

#[sqlx::test(migrations = "./migrations")]
async fn bad_limits_are_refused_naming_the_field_and_change_nothing(pool: PgPool) {
    let key = tollgate::auth::create_key(&pool, "acme", "ops")
        .await
        .unwrap();
    printed(&limits(&pool, &["set", "--tenant", "acme", "--budget", "10"]).await);

    let cases: [(&[&str], &str); 7] = [
        (
            &["set", "--tenant", "acme", "--budget", "-1"],
            "budget.amount",
        ),
        (
            &["set", "--tenant", "acme", "--budget", "1e3"],
            "budget.amount",
        ),
        (
            &[
                "set", "--tenant", "acme", "--budget", "5", "--period", "year",
            ],
            "budget.period",
        ),
        (
            &["set", "--tenant", "acme", "--requests-per-minute", "-5"],
            "rate.requests_per_minute",
        ),
        (
            &[
                "set",
                "--tenant",
                "acme",
                "--body",
                r#"{"budget": {"amount": 5}}"#,
            ],
            "budget.amount",
        ),
        (&["set", "--tenant", "nobody", "--budget", "5"], "tenant"),
        // Alerts need a signing secret, which this gateway's config lacks.
        (
            &[
                "set",
                "--tenant",
                "acme",
                "--body",
                r#"{"budget": {"amount": "5"}, "alerts": {"thresholds": ["0.5"], "webhook_url": "https://hooks.example/t"}}"#,
            ],
            "alerts",
        ),
    ];
    for (args, field) in cases {
        let stderr = failed(&limits(&pool, args).await);
        assert!(
            stderr.contains(field),
            "{args:?}: the error should name `{field}`: {stderr}"
        );
    }
    let unknown_key = failed(&limits(&pool, &["set", "--key", "key_nope", "--budget", "5"]).await);
    assert!(unknown_key.contains("key_nope"), "{unknown_key}");
    // Neither --tenant nor --key, or both: clap refuses before any change.
    failed(&limits(&pool, &["set", "--budget", "5"]).await);
    failed(
        &limits(
            &pool,
            &[
                "set",
                "--tenant",
                "acme",
                "--key",
                &key.info.id,
                "--budget",
                "5",
            ],
        )
        .await,
    );

    let shown = printed(&limits(&pool, &["show"]).await);
    assert_eq!(shown.as_array().map(Vec::len), Some(1));
    assert_eq!(shown[0]["budget"]["amount"], "10");
    assert_eq!(shown[0]["budget"]["period"], "month");
}

/// A limit set from the command line reaches a running gateway (another
/// process) within the second its cache of limited scopes may lag.
#[sqlx::test(migrations = "./migrations")]
async fn a_running_gateway_obeys_a_limit_set_from_the_command_line(pool: PgPool) {
    let gateway = common::GatewayProcess::start(&pool, "").await;
    let create = || async {
        gateway
            .http
            .post(format!("{}/v1/responses", gateway.base))
            .bearer_auth(&gateway.key)
            .json(&json!({"model": "gpt-5.5", "input": "hi"}))
            .send()
            .await
            .unwrap()
    };
    assert_eq!(create().await.status(), 200);

    let key_id: String = sqlx::query_scalar("SELECT id FROM api_keys WHERE tenant_id = 'acme'")
        .fetch_one(&pool)
        .await
        .unwrap();
    printed(
        &limits(
            &pool,
            &["set", "--key", &key_id, "--requests-per-minute", "1"],
        )
        .await,
    );
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;

    let admitted = create().await;
    assert_eq!(admitted.status(), 200);
    assert_eq!(admitted.headers()["x-ratelimit-limit-requests"], "1");
    let refused = create().await;
    assert_eq!(refused.status(), 429);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
}
