//! `tollgate demo`: the one-command tour. A database (DATABASE_URL, or a
//! throwaway local cluster), the built-in simulated upstream, the bundled
//! prices, a demo tenant and key; prints commands that work as pasted, then
//! serves until Ctrl-C and removes the throwaway cluster.

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
    tokio::spawn(mock.serve(mock_listener));

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
    print_tour(listen, &key.key, &admin_token, &prefix);
    server::run(listener, state, background, server::shutdown_signal()).await?;
    drop(cluster);
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
