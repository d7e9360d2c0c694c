//! `tollgate demo`: the one-command tour. A database (DATABASE_URL, or a
//! throwaway local cluster), the built-in simulated upstream, the bundled
//! prices, a demo tenant and key; prints commands that work as pasted, then
//! serves until Ctrl-C and removes the throwaway cluster.
//!
//! Reconciliation is on against the simulated provider: a few requests are
//! sent through the gateway at start and dated back to the last three days
//! (ledger rows and the simulated provider's counts alike), usage nobody
//! sent through the gateway is added to one of those days, and the days are
//! fetched, so "Provider vs ledger" shows a match, a `provider_only` line
//! and a pending day out of the box.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;

use crate::config::{Config, ProcessEnv, Secret, UpstreamConfig, UpstreamKind};
use crate::mock_upstream::MockUpstream;
use crate::pgtemp::TempCluster;
use crate::{auth, pricing, server};

/// The curated price list shipped with Tollgate (LiteLLM format).
pub const BUNDLED_PRICES: &str = include_str!("../config/prices.json");

pub async fn run(config_path: Option<&Path>, listen: SocketAddr) -> anyhow::Result<()> {
    let mut config = Config::load(config_path, &ProcessEnv)?;
    let cluster = match std::env::var("DATABASE_URL").ok().filter(|v| !v.is_empty()) {
        Some(_) => None,
        None => {
            eprintln!(
                "starting a throwaway PostgreSQL cluster (set DATABASE_URL to use your own)…"
            );
            let cluster = tokio::task::spawn_blocking(TempCluster::start)
                .await?
                .context("cannot start a throwaway PostgreSQL cluster")?;
            config.database_url =
                format!("postgres://postgres@127.0.0.1:{}/tollgate", cluster.port());
            Some(cluster)
        }
    };

    let mock_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mock_addr = mock_listener.local_addr()?;
    let mock = MockUpstream::without_recording();
    #[allow(clippy::disallowed_methods)] // lives as long as the demo process
    tokio::spawn(mock.clone().serve(mock_listener));

    config.listen = listen.to_string();
    config.upstreams = vec![UpstreamConfig {
        name: "mock".into(),
        url: format!("http://{mock_addr}/v1"),
        key: Secret::new("sk-mock-upstream"),
        kind: UpstreamKind::Openai,
        connect_timeout_ms: 2_000,
        api_version: None,
    }];
    if config.admin_token.is_empty() {
        config.admin_token = Secret::new(format!("admin-{}", uuid::Uuid::now_v7().simple()));
    }
    config.reconcile.url = format!("http://{mock_addr}/v1");
    config.reconcile.admin_key = Secret::new("sk-admin-demo");
    config.validate()?;

    let pool = crate::state::connect_and_migrate(&config).await?;
    let report = pricing::litellm::parse_litellm(BUNDLED_PRICES)?;
    pricing::import_sheets(&pool, &report.imported, "demo").await?;
    let key = auth::create_key(&pool, "demo", "demo key").await?;

    let listener = crate::server::listen(&listen.to_string())
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let admin_token = config.admin_token.expose().to_owned();
    let prefix = config.model_prefix.clone();
    let (state, background) = server::build_state(config, pool).await?;
    let seeding = seed_reconciliation(
        state.clone(),
        mock,
        format!("http://{listen}"),
        key.key.clone(),
    );
    state.tasks.spawn(async move {
        if let Err(err) = seeding.await {
            tracing::warn!(error = %err, "demo reconciliation history not seeded");
        }
    });
    print_tour(listen, &key.key, &admin_token, &prefix);
    server::run(listener, state, background, server::shutdown_signal()).await?;
    drop(cluster);
    Ok(())
}

/// Sample history for "Provider vs ledger" (see the module doc).
async fn seed_reconciliation(
    state: std::sync::Arc<crate::state::AppState>,
    mock: MockUpstream,
    base: String,
    key: String,
) -> anyhow::Result<()> {
    use crate::mock_upstream::org::{Counts, Served};
    let http = reqwest::Client::new();
    // The gateway is listening once readiness answers.
    for _ in 0..100 {
        if http.get(format!("{base}/readyz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let day = chrono::Duration::days(1);
    for (model, usage, n) in [
        ("gpt-5.5", "1800,400,700,256", 3),
        ("gpt-5.4-mini", "900,0,300,64", 4),
        ("gpt-5.5", "2400,800,900,320", 2),
    ] {
        for _ in 0..n {
            let body = serde_json::json!({"model": model, "input": "demo history",
                                          "metadata": {"mock_usage": usage}});
            http.post(format!("{base}/v1/responses"))
                .bearer_auth(&key)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body.to_string())
                .send()
                .await?
                .bytes()
                .await?;
        }
        state.ledger.flush().await;
        sqlx::query(
            "UPDATE usage_ledger SET started_at = started_at - interval '1 day',
                 first_byte_at = first_byte_at - interval '1 day',
                 finished_at = finished_at - interval '1 day'",
        )
        .execute(&state.pool)
        .await?;
        mock.org().shift_days(1);
    }
    let upstream_key =
        crate::mock_upstream::org::api_key_id(state.config.upstreams[0].key.expose());
    let two_days_ago = chrono::Utc::now() - day * 2;
    mock.org().add_usage(&Served {
        at: two_days_ago,
        model: "gpt-5.2-2025-08-07",
        api_key_id: &upstream_key,
        project_id: crate::mock_upstream::org::DEFAULT_PROJECT,
        service_tier: "default",
        batch: false,
        counts: Counts {
            requests: 5,
            input: 6000,
            cached: 0,
            output: 2500,
        },
        reasoning: 0,
    });
    let today = chrono::Utc::now().date_naive();
    let mut job = crate::reconcile::FetchJob::new(
        state.config.clone(),
        Some(state.alerts.clone()),
        Some((today - day * 4, today)),
    )?;
    let ctx = crate::jobs::JobContext {
        pool: state.pool.clone(),
        stop: state.shutdown.clone(),
    };
    crate::reconcile::fetch_now(&ctx, &mut job, std::time::Duration::from_secs(60)).await?;
    Ok(())
}

fn print_tour(listen: SocketAddr, key: &str, admin_token: &str, prefix: &str) {
    let base = format!("http://{listen}");
    println!(
        r#"
Tollgate demo is serving on {base} (simulated upstream, bundled prices).

  demo tenant key : {key}
  admin token     : {admin_token}
  dashboard       : {base}/dashboard  (sign in with either of the two above)

Try it (copy and paste):

curl -s {base}/v1/responses -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \
  -d '{{"model": "{prefix}gpt-5.5", "input": "Hello, Tollgate!", "reasoning": {{"effort": "low"}}}}'

curl -sN {base}/v1/responses -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \
  -d '{{"model": "{prefix}gpt-5.4-mini", "input": "Stream please", "stream": true}}'

curl -s "{base}/v1/usage/records" -H "Authorization: Bearer {key}"

Provider vs ledger (sample history of the last three days, one line the provider alone saw):

curl -s "{base}/admin/reconciliation?start_time=$(( $(date +%s) - 5*86400 ))" -H "Authorization: Bearer {admin_token}"

With the OpenAI SDK (pip install openai==1.102.0):

python3 - <<'PY'
from openai import OpenAI
client = OpenAI(base_url="{base}/api/v1", api_key="{key}")
r = client.responses.create(model="{prefix}gpt-5.5", input="Hello, Tollgate!",
                            extra_body={{"turing_options": {{"timeout": 30}}}})
print(r.output_text, r.usage)
PY

Press Ctrl-C to stop."#
    );
}
