//! The stock openai-python SDK (1.102.0, installed into `target/py-sdk` on
//! first run) against a real gateway: every SDK call pattern the platform
//! promises, then the ledger rows and their exact costs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/python.rs"]
mod python;

use std::path::PathBuf;

use common::{gpt55_price, TestGateway};
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgPool;

const SDK_PIN: &str = "openai==1.102.0";

/// The python of a venv with the pinned SDK (`target/py-sdk`, created
/// once and reused while the pin is unchanged).
fn sdk_python() -> PathBuf {
    python::venv("py-sdk", &[SDK_PIN]).join("python")
}

/// Runs `tests/sdk/<script>` with `env`; what it printed on standard output,
/// as JSON. A failing script fails the test with its standard error.
async fn run_script(python: PathBuf, script: &str, env: &[(&str, String)]) -> Value {
    let output = tokio::process::Command::new(python)
        .arg(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/sdk")
                .join(script),
        )
        .envs(env.iter().map(|(name, value)| (*name, value.as_str())))
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "SDK script {script} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[sqlx::test]
async fn openai_python_sdk_calls_are_proxied_and_billed_exactly(pool: PgPool) {
    let python = tokio::task::spawn_blocking(sdk_python).await.unwrap();
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("sdk-tenant").await;

    let seen = run_script(
        python,
        "sdk_check.py",
        &[
            ("TOLLGATE_BASE_URL", gw.url("/api/v1")),
            ("TOLLGATE_KEY", key.clone()),
        ],
    )
    .await;
    assert_eq!(
        seen["create"]["usage"],
        serde_json::json!([1200, 200, 900, 600])
    );
    assert_eq!(seen["stream_helper"]["service_tier"], "default");
    assert_eq!(
        seen["unsupported_tool"],
        serde_json::json!({"status": 400, "code": "unsupported_tool", "param": "tools[0].type"})
    );
    assert_eq!(
        seen["unknown_model"],
        serde_json::json!({"status": 404, "code": "model_not_found"})
    );

    let rows = gw.rows(7).await;
    assert_eq!(rows.len(), 7, "one row per SDK request, no more, no less");
    let by_response = |name: &str| {
        let id = seen[name]["id"].as_str().unwrap();
        rows.iter()
            .find(|r| r.response_id.as_deref() == Some(id))
            .unwrap_or_else(|| panic!("no ledger row for {name} ({id})"))
    };
    // Hand-computed at gpt-5.5's price: input 0.000005, cached 0.0000005,
    // output (and reasoning, by fallback) 0.00003 per token.
    let expected = [
        // (1200-200)*0.000005 + 200*0.0000005 + 300*0.00003 + 600*0.00003
        ("create", "completed", false, "0.0321"),
        // 100*0.000005 + 40*0.00003 + 10*0.00003
        ("create_stream", "completed", true, "0.002"),
        // 400*0.000005 + 100*0.0000005 + 100*0.00003 + 200*0.00003
        ("stream_helper", "completed", true, "0.01105"),
        // 40*0.000005 + 16*0.00003
        ("incomplete", "incomplete", true, "0.00068"),
        // 10*0.000005 + 10*0.00003
        ("extra_body", "completed", false, "0.00035"),
    ];
    for (name, status, stream, cost) in expected {
        let row = by_response(name);
        assert_eq!(row.status, status, "{name}");
        assert_eq!(row.stream, stream, "{name}");
        assert_eq!(row.tenant, "sdk-tenant");
        assert_eq!(row.cost, Some(cost.parse::<Decimal>().unwrap()), "{name}");
    }
    let rejected: Vec<_> = rows.iter().filter(|r| r.status == "rejected").collect();
    assert_eq!(rejected.len(), 2);
    assert!(rejected.iter().all(|r| r.cost == Some(Decimal::ZERO)));

    // The platform fields never reached the backend.
    for request in gw.mock.requests() {
        let body = request.json().unwrap();
        assert!(body.get("turing_options").is_none() && body.get("tags").is_none());
        assert!(!body["model"].as_str().unwrap().starts_with("turing/"));
    }
}

#[sqlx::test]
async fn platform_semantics_through_the_sdk(pool: PgPool) {
    let python = tokio::task::spawn_blocking(sdk_python).await.unwrap();
    let gw = TestGateway::start_with(pool, |c| c.background_poll_secs = 1).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    gw.set_price(
        "gpt-5",
        serde_json::json!({"input_cost_per_token": "0.00000125", "output_cost_per_token": "0.00001"}),
    )
    .await;
    let owner = gw.key("owner").await;
    let other = gw.key("intruder").await;

    let seen = run_script(
        python,
        "sdk_platform.py",
        &[
            ("TOLLGATE_BASE_URL", gw.url("/api/v1")),
            ("TOLLGATE_KEY", owner.clone()),
            ("TOLLGATE_OTHER_KEY", other.clone()),
        ],
    )
    .await;
    assert_eq!(
        seen["refused"],
        serde_json::json!({"create": 404, "retrieve": 404, "input_items": 404, "cancel": 404, "delete": 404})
    );

    // Wait until the background row is settled.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let rows = loop {
        let rows = gw.rows(1).await;
        if !rows.iter().any(|r| r.status == "queued") {
            break rows;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "background row never settled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let create = |name: &str| {
        let id = seen[name].as_str().unwrap();
        let found: Vec<_> = rows
            .iter()
            .filter(|r| r.endpoint == "responses.create" && r.response_id.as_deref() == Some(id))
            .collect();
        assert_eq!(found.len(), 1, "exactly one create row for {name}");
        found[0].clone()
    };
    // gpt-5.5: 10*0.000005 + 10*0.00003; 20*…; 30*…
    assert_eq!(create("first").cost, Some("0.00035".parse().unwrap()));
    assert_eq!(create("follow").cost, Some("0.0007".parse().unwrap()));
    assert_eq!(create("background").cost, Some("0.00105".parse().unwrap()));
    let fallback = create("fallback");
    assert_eq!(fallback.model.as_deref(), Some("gpt-5"));
    assert_eq!(fallback.fallback_from.as_deref(), Some("gpt-5.5"));
    // 100*0.00000125 + 10*0.00001, at the model that served
    assert_eq!(fallback.cost, Some("0.000225".parse().unwrap()));

    let intruder: Vec<_> = rows.iter().filter(|r| r.tenant == "intruder").collect();
    assert_eq!(intruder.len(), 5);
    assert!(intruder
        .iter()
        .all(|r| r.status == "rejected" && r.cost == Some(Decimal::ZERO)));
    let billed: Decimal = rows.iter().filter_map(|r| r.cost).sum();
    assert_eq!(
        billed,
        "0.002325".parse::<Decimal>().unwrap(),
        "retrievals, lists and deletes add nothing"
    );
}
