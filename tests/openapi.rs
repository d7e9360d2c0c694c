//! `GET /openapi.json`: a valid OpenAPI 3.1 document that lists every
//! endpoint Tollgate owns, and a live gateway that answers every generated
//! request without a 5xx and in the shape the document promises
//! (Schemathesis, pinned, from PyPI; run once with the admin token and once
//! with a tenant key).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/python.rs"]
mod python;

use std::path::Path;

use common::{gpt55_price, TestGateway, ADMIN_TOKEN};
use serde_json::{json, Value};
use sqlx::PgPool;

const TOOLS: &[&str] = &["schemathesis==4.32.5", "openapi-spec-validator==0.9.0"];

/// The endpoints Tollgate itself owns; each must be in the document.
const OWNED: &[(&str, &str)] = &[
    ("get", "/v1/models"),
    ("get", "/v1/usage"),
    ("get", "/v1/usage/records"),
    ("get", "/admin/usage"),
    ("get", "/admin/usage/records"),
    ("post", "/admin/keys"),
    ("get", "/admin/keys"),
    ("delete", "/admin/keys/{id}"),
    ("get", "/admin/prices"),
    ("get", "/admin/prices/{model}"),
    ("put", "/admin/prices/{model}"),
    ("delete", "/admin/prices/{model}"),
    ("post", "/admin/prices/import"),
    ("post", "/admin/reprice"),
    ("get", "/admin/ledger/quarantine"),
    ("get", "/admin/limits"),
    ("get", "/admin/alerts"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

/// Runs Schemathesis against the live gateway; its summary line.
fn schemathesis(bin: &Path, base: &str, token: &str, scope: &[&str]) -> String {
    let output = std::process::Command::new(bin.join("schemathesis"))
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--url", base])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"])
        // One worker: hypothesis describes filters with `ast.parse`, which
        // CPython 3.11 does not make thread-safe (seen: "AST constructor
        // recursion depth mismatch" with two).
        .args(["--max-examples", "150", "--workers", "1", "--seed", "7"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(scope)
        .env("NO_COLOR", "1")
        // Its caches and hypothesis' example database stay out of the tree.
        .current_dir(std::env::temp_dir())
        .output()
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let tail = |text: &str| text[text.len().saturating_sub(6000)..].to_owned();
    assert!(
        output.status.success(),
        "Schemathesis found problems:\n{}\n{}",
        tail(&stdout),
        tail(&String::from_utf8_lossy(&output.stderr))
    );
    println!("{stdout}");
    stdout
}

#[sqlx::test]
async fn the_document_is_valid_and_the_gateway_keeps_it(pool: PgPool) {
    let bin = tokio::task::spawn_blocking(|| python::venv("py-schemathesis", TOOLS))
        .await
        .unwrap();
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    for usage in ["1200,200,900,600", "10,0,7,3"] {
        let r = gw
            .create(&key, json!({"model": "turing/gpt-5.5", "input": "hi", "metadata": {"mock_usage": usage}}))
            .await;
        assert_eq!(r.status(), 200);
    }
    gw.rows(2).await;
    // One pending and one delivered alert event, so `GET /admin/alerts`
    // answers with rows to check against the document.
    sqlx::query(
        "INSERT INTO alert_events (id, scope_kind, scope_id, tenant_id, api_key_id, period,
            period_start, threshold, amount, spent, webhook_url, attempts, delivered_at, last_error)
         VALUES ('evt_a', 'tenant', 'acme', 'acme', NULL, 'month', '2026-05-01Z', 0.5, 10, 5.25,
                 'https://hooks.example/t', 2, now(), 'HTTP 500'),
                ('evt_b', 'key', 'key_x', 'acme', 'key_x', 'total', '1970-01-01Z', 1, 10, 10,
                 'https://hooks.example/t', 0, NULL, NULL)",
    )
    .execute(&gw.pool)
    .await
    .unwrap();

    let response = gw.http.get(gw.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let document: Value = response.json().await.unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    for (method, path) in OWNED {
        assert!(
            document["paths"][path][method].is_object(),
            "{method} {path} is missing from /openapi.json"
        );
    }
    assert!(document["externalDocs"]["url"]
        .as_str()
        .unwrap()
        .contains("openai-openapi"));

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&document).unwrap()).unwrap();
    let validated = std::process::Command::new(bin.join("openapi-spec-validator"))
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        validated.status.success(),
        "openapi-spec-validator: {}",
        String::from_utf8_lossy(&validated.stdout)
    );

    let base = gw.url("");
    let admin_run = {
        let (bin, base) = (bin.clone(), base.clone());
        tokio::task::spawn_blocking(move || {
            schemathesis(&bin, &base, ADMIN_TOKEN, &["--exclude-tag", "usage"])
        })
    }
    .await
    .unwrap();
    let tenant_run = tokio::task::spawn_blocking(move || {
        schemathesis(&bin, &base, &key, &["--include-tag", "usage"])
    })
    .await
    .unwrap();
    for run in [admin_run, tenant_run] {
        assert!(run.contains("passed"), "no test case ran:\n{run}");
    }
    gw.shutdown().await;
}
