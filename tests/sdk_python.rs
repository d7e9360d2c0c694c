//! The stock openai-python SDK (1.102.0, installed into `target/py-sdk` on
//! first run) against a real gateway: every SDK call pattern the platform
//! promises, then the ledger rows and their exact costs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{gpt55_price, TestGateway};
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgPool;

const SDK_VERSION: &str = "1.102.0";

/// A venv with the pinned SDK; created once, reused by later runs.
fn sdk_python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/py-sdk");
    let python = venv.join("bin/python");
    let ready = Command::new(&python)
        .args([
            "-c",
            &format!("import openai,sys; sys.exit(openai.__version__ != '{SDK_VERSION}')"),
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 is needed for the SDK test");
        assert!(status.success(), "python3 -m venv failed");
        let status = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("openai=={SDK_VERSION}"))
            .status()
            .expect("pip");
        assert!(status.success(), "pip install openai=={SDK_VERSION} failed");
    }
    python
}

#[sqlx::test]
async fn openai_python_sdk_calls_are_proxied_and_billed_exactly(pool: PgPool) {
    let python = tokio::task::spawn_blocking(sdk_python).await.unwrap();
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("sdk-tenant").await;

    let output = tokio::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/sdk/sdk_check.py"
        ))
        .env("TOLLGATE_BASE_URL", gw.url("/api/v1"))
        .env("TOLLGATE_KEY", &key)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "SDK script failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap();
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
