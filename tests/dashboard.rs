//! The dashboard in a real browser: a real gateway (real PostgreSQL, the
//! simulated upstream) gets known traffic from two tenants, then
//! `tests/browser/dashboard.test.mjs` drives Debian's Chromium headless
//! against it (sign-in, totals against the API and the ledger to the last
//! digit, records filter, CSV download, price form, no request off the
//! origin, tenant isolation). Also, without a browser: the assets' headers
//! and the `/` redirect.
//!
//! `scripts/test` (the README's test command) installs Chromium and the
//! script's `node_modules`; without them the browser test fails, naming
//! what is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::PgPool;

use common::{gpt55_price, TestGateway, ADMIN_TOKEN};

const CHROMIUM: &str = "/usr/bin/chromium";

/// One request with exactly this usage (`input,cached,output,reasoning`).
fn request(model: &str, usage: &str, extra: Value) -> Value {
    let mut metadata = json!({"mock_usage": usage});
    if let Value::Object(more) = extra {
        metadata.as_object_mut().unwrap().extend(more);
    }
    json!({"model": model, "input": "hello", "metadata": metadata})
}

struct Traffic {
    acme_key: String,
    globex_key_id: String,
    rows: usize,
}

/// Two tenants, three priced models with awkward decimal prices, a
/// failed response, an upstream error, a refused unknown model and an
/// unpriced (flex tier) response.
async fn traffic(gw: &TestGateway) -> Traffic {
    gw.set_price("gpt-5.5", gpt55_price()).await;
    gw.set_price(
        "gpt-5.4-mini",
        json!({"input_cost_per_token": "0.000000123", "cache_read_input_token_cost": "0.0000000111",
               "output_cost_per_token": "0.000000987", "output_cost_per_reasoning_token": "0.0000012345"}),
    )
    .await;
    gw.set_price(
        "gpt-5.2",
        json!({"input_cost_per_token": "0.0000017", "output_cost_per_token": "0.0000133"}),
    )
    .await;
    let acme = [gw.key("acme").await, gw.key("acme").await];
    let globex = tollgate::auth::create_key(&gw.pool, "globex", "globex-key")
        .await
        .unwrap();
    let none = json!({});
    let acme_requests = [
        (
            0,
            request("turing/gpt-5.5", "1234,200,567,64", none.clone()),
        ),
        (0, request("gpt-5.5", "98765,4321,1234,999", none.clone())),
        (
            1,
            request("turing/gpt-5.4-mini", "777,13,333,17", none.clone()),
        ),
        (1, request("gpt-5.4-mini", "123457,0,98,0", none.clone())),
        (1, request("gpt-5.4-mini", "5,1,7,3", none.clone())),
        (
            0,
            request("gpt-5.5", "50,0,40,0", json!({"mock_status": "failed"})),
        ),
        (
            0,
            request("gpt-5.5", "10,0,10,0", json!({"mock_http_status": "500"})),
        ),
        (
            1,
            request("gpt-5.5", "300,0,200,0", json!({"mock_tier": "flex"})),
        ),
        (0, request("gpt-unknown-model", "1,0,1,0", none.clone())),
    ];
    for (key, body) in &acme_requests {
        gw.create(&acme[*key], body.clone())
            .await
            .text()
            .await
            .unwrap();
    }
    // Enough rows for the tenant's records table to need a second page (50 a page).
    for i in 0..45 {
        let usage = format!("{},0,{},0", 11 + i, 3 + i * 7);
        gw.create(&acme[i % 2], request("gpt-5.5", &usage, none.clone()))
            .await
            .text()
            .await
            .unwrap();
    }
    for usage in ["4000,1000,3000,100", "17,0,29,0"] {
        gw.create(&globex.key, request("gpt-5.2", usage, none.clone()))
            .await
            .text()
            .await
            .unwrap();
    }
    let rows = acme_requests.len() + 45 + 2;
    assert_eq!(gw.rows(rows).await.len(), rows);
    Traffic {
        acme_key: acme[0].clone(),
        globex_key_id: globex.info.id,
        rows,
    }
}

/// The provider's side for the "Provider vs ledger" view: today's traffic
/// (pending, the day is not closed) and usage the provider saw three days
/// ago that no ledger row accounts for (`provider_only`), fetched through
/// the simulated upstream's organization API.
async fn provider_view(gw: &TestGateway) {
    use tollgate::mock_upstream::org::{api_key_id, Counts, Served};
    let today = chrono::Utc::now().date_naive();
    gw.mock.org().add_usage(&Served {
        at: (today - chrono::Duration::days(3))
            .and_hms_opt(9, 0, 0)
            .unwrap()
            .and_utc(),
        model: "gpt-5.5-2025-08-07",
        api_key_id: &api_key_id(common::UPSTREAM_KEY),
        project_id: tollgate::mock_upstream::org::DEFAULT_PROJECT,
        service_tier: "default",
        batch: false,
        counts: Counts {
            requests: 2,
            input: 1000,
            cached: 0,
            output: 300,
        },
        reasoning: 0,
    });
    let range = (today - chrono::Duration::days(5), today);
    let mut job =
        tollgate::reconcile::FetchJob::new(gw.state.config.clone(), None, Some(range)).unwrap();
    let ctx = tollgate::jobs::JobContext {
        pool: gw.pool.clone(),
        stop: tokio_util::sync::CancellationToken::new(),
    };
    for _ in 0..200 {
        if let tollgate::jobs::Round::Ran(_) =
            tollgate::jobs::run_once(&ctx, &mut job).await.unwrap()
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the provider fetch never ran");
}

/// The ledger's own figures for `tenant` (every tenant when `None`):
/// exact cost sum (normalized) and row count.
async fn ledger_totals(pool: &PgPool, tenant: Option<&str>) -> Value {
    let (cost, count): (Option<Decimal>, i64) = sqlx::query_as(
        "SELECT SUM(cost), COUNT(*) FROM usage_ledger WHERE $1::text IS NULL OR tenant_id = $1",
    )
    .bind(tenant)
    .fetch_one(pool)
    .await
    .unwrap();
    json!({"cost": cost.unwrap_or_default().normalize().to_string(), "requests": count})
}

/// Why the browser test cannot run here, if it cannot.
fn browser_missing() -> Option<String> {
    if !Path::new(CHROMIUM).exists() {
        return Some(format!("{CHROMIUM} is missing (apt-get install chromium)"));
    }
    let modules =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/node_modules/playwright-core");
    if !modules.exists() {
        return Some("tests/browser/node_modules is missing (npm ci in tests/browser)".into());
    }
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("node is missing".into());
    }
    None
}

#[sqlx::test]
async fn dashboard_in_a_real_browser(pool: PgPool) {
    if let Some(reason) = browser_missing() {
        panic!("the browser test cannot run: {reason} (scripts/test installs it)");
    }
    let gw = TestGateway::start_with(pool.clone(), |c| {
        c.reconcile.url = c.upstreams[0].url.clone();
        c.reconcile.admin_key = tollgate::config::Secret::new("sk-admin-dashboard-test");
    })
    .await;
    let traffic = traffic(&gw).await;
    provider_view(&gw).await;
    // Real limits for the limits panel: a tenant budget and a key rate.
    let (status, _) = gw
        .admin(
            reqwest::Method::PUT,
            "/admin/limits/tenants/acme",
            Some(json!({"budget": {"amount": "50.00", "period": "month", "mode": "hard"}})),
        )
        .await;
    assert_eq!(status, 200);
    let key_status: Value = gw
        .http
        .get(gw.url("/v1/key"))
        .bearer_auth(&traffic.acme_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (status, _) = gw
        .admin(
            reqwest::Method::PUT,
            &format!("/admin/limits/keys/{}", key_status["id"].as_str().unwrap()),
            Some(json!({"rate": {"requests_per_minute": 600}})),
        )
        .await;
    assert_eq!(status, 200);
    let tenant_budget = key_status["limits"]["tenant"]["budget"].clone();
    let info = json!({
        "limits": {"tenant_budget": tenant_budget},
        "tenant": "acme",
        "other_tenant": "globex",
        "other_models": ["gpt-5.2"],
        "other_key_ids": [traffic.globex_key_id],
        "filter_model": "gpt-5.4-mini",
        "expected": {
            "admin": ledger_totals(&pool, None).await,
            "tenant": ledger_totals(&pool, Some("acme")).await,
        },
    });
    assert_eq!(info["expected"]["admin"]["requests"], traffic.rows);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dashboard.test.mjs");
    let output = tokio::process::Command::new("node")
        .arg(&script)
        .arg(gw.url(""))
        .arg(ADMIN_TOKEN)
        .arg(&traffic.acme_key)
        .arg(info.to_string())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "browser test failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    gw.shutdown().await;
}

#[sqlx::test]
async fn assets_are_served_from_the_binary_with_a_strict_policy(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let root = http.get(gw.url("/")).send().await.unwrap();
    assert!(root.status().is_redirection(), "{}", root.status());
    assert_eq!(root.headers()["location"], "/dashboard");

    for (path, content_type) in [
        ("/dashboard", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/decimal.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
        ("/dashboard/vendor/chart.umd.js", "text/javascript"),
    ] {
        let response = http.get(gw.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with(content_type),
            "{path}"
        );
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert!(
            csp.contains("connect-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert_eq!(headers["x-content-type-options"], "nosniff");
    }
    let html = http
        .get(gw.url("/dashboard"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains(r#"name="token""#));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external URL in the page"
    );
    for missing in [
        "/dashboard/nope.js",
        "/dashboard/../Cargo.toml",
        "/dashboard/vendor/",
    ] {
        let response = http.get(gw.url(missing)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{missing}");
    }
    gw.shutdown().await;
}
