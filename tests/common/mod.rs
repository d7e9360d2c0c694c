//! Test harness: a real gateway on a port-0 socket, in front of the
//! project's simulated upstream (also on port 0), over the per-test database
//! `#[sqlx::test]` provides. Nothing here is mocked but the model backend.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use tollgate::config::{Config, DisconnectPolicy, Secret, UpstreamConfig, UpstreamKind};
use tollgate::ledger::LedgerRow;
use tollgate::mock_upstream::MockUpstream;
use tollgate::server;
use tollgate::state::AppState;

pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const UPSTREAM_KEY: &str = "sk-upstream-secret";
pub const AZURE_KEY: &str = "azure-api-key-secret";

pub struct TestGateway {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub mock: MockUpstream,
    /// A second backend, configured as upstream `azure` (kind azure, v1
    /// path); used only by routes that name it.
    pub azure: MockUpstream,
    pub pool: PgPool,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    _spool: tempfile::TempDir,
}

impl TestGateway {
    pub async fn start(pool: PgPool) -> Self {
        Self::start_with(pool, |_| {}).await
    }

    pub async fn start_with(pool: PgPool, adjust: impl FnOnce(&mut Config)) -> Self {
        let mock = MockUpstream::new();
        let mock_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mock_addr = mock_listener.local_addr().unwrap();
        tokio::spawn(mock.clone().serve(mock_listener));

        let azure = MockUpstream::new();
        let azure_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let azure_addr = azure_listener.local_addr().unwrap();
        tokio::spawn(azure.clone().serve(azure_listener));

        let spool = tempfile::tempdir().unwrap();
        let mut config = Config {
            admin_token: Secret::new(ADMIN_TOKEN),
            drain_deadline_secs: 5,
            on_client_disconnect: DisconnectPolicy::Drain,
            upstreams: vec![
                UpstreamConfig {
                    name: "mock".into(),
                    url: format!("http://{mock_addr}/v1"),
                    key: Secret::new(UPSTREAM_KEY),
                    kind: UpstreamKind::Openai,
                    connect_timeout_ms: 2_000,
                    api_version: None,
                },
                UpstreamConfig {
                    name: "azure".into(),
                    url: format!("http://{azure_addr}/openai/v1"),
                    key: Secret::new(AZURE_KEY),
                    kind: UpstreamKind::Azure,
                    connect_timeout_ms: 2_000,
                    api_version: None,
                },
            ],
            ..Config::default()
        };
        config.ledger.spool_dir = spool.path().to_path_buf();
        adjust(&mut config);
        config.validate().unwrap();

        let (state, background) = server::build_state(config, pool.clone()).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(server::run(listener, state.clone(), background, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            state,
            mock,
            azure,
            pool,
            http: reqwest::Client::new(),
            stop: Some(stop),
            server: Some(server),
            _spool: spool,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A fresh client key for `tenant`.
    pub async fn key(&self, tenant: &str) -> String {
        tollgate::auth::create_key(&self.pool, tenant, "test")
            .await
            .unwrap()
            .key
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Sets a price through the admin API (the real path).
    pub async fn set_price(&self, model: &str, price: Value) {
        let (status, body) = self
            .admin(
                reqwest::Method::PUT,
                &format!("/admin/prices/{model}"),
                Some(price),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    pub async fn create(&self, key: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/responses"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Every ledger row, oldest first, once at least `n` exist.
    pub async fn rows(&self, n: usize) -> Vec<LedgerRow> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            self.state.ledger.flush().await;
            let rows: Vec<LedgerRow> = sqlx::query_as(&format!(
                "SELECT {} FROM usage_ledger ORDER BY id",
                tollgate::ledger::COLUMNS
            ))
            .fetch_all(&self.pool)
            .await
            .unwrap();
            if rows.len() >= n || tokio::time::Instant::now() > deadline {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs the shutdown sequence and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }
}

/// Waits until no replica's slice reports an open request (each reports at
/// its next sync, at most a second after its requests' rows are stored).
pub async fn limits_settled(pool: &PgPool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (committed, open): (rust_decimal::Decimal, i64) = sqlx::query_as(
            "SELECT coalesce(sum(committed), 0), coalesce(sum(open_requests), 0)::int8 FROM limit_leases",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if committed.is_zero() && open == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slices still report {open} open requests holding {committed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The price used by most tests: gpt-5.5's list price (USD per token).
pub fn gpt55_price() -> Value {
    serde_json::json!({
        "input_cost_per_token": "0.000005",
        "cache_read_input_token_cost": "0.0000005",
        "output_cost_per_token": "0.00003",
    })
}

/// Splits an SSE body into `(event, data JSON)` pairs.
pub fn sse_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut event = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            (event, serde_json::from_str(&data).unwrap_or(Value::Null))
        })
        .collect()
}

/// The real `tollgate serve` binary as a child process, on the test's own
/// database, in front of an in-process simulated upstream; with gpt-5.5
/// priced and a key for tenant `acme`. Killed on drop.
pub struct GatewayProcess {
    child: Option<std::process::Child>,
    pub base: String,
    pub key: String,
    pub http: reqwest::Client,
    /// The simulated upstream behind it (recording only when started with
    /// [`Self::start_recording`]).
    pub mock: MockUpstream,
    _dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// `config` is extra TOML for the gateway's config file.
    pub async fn start(pool: &PgPool, config: &str) -> Self {
        Self::start_with_env(pool, config, &[]).await
    }

    /// As [`Self::start`], with extra environment variables for the process.
    pub async fn start_with_env(pool: &PgPool, config: &str, env: &[(&str, &str)]) -> Self {
        Self::launch(pool, config, env, MockUpstream::without_recording()).await
    }

    /// As [`Self::start_with_env`], with an upstream that records every
    /// request it receives (`self.mock.requests()`).
    pub async fn start_recording(pool: &PgPool, config: &str, env: &[(&str, &str)]) -> Self {
        Self::launch(pool, config, env, MockUpstream::new()).await
    }

    async fn launch(pool: &PgPool, config: &str, env: &[(&str, &str)], mock: MockUpstream) -> Self {
        let database: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(pool)
            .await
            .unwrap();
        let sheet = tollgate::pricing::PriceSheet::from_fields(
            &[
                ("input_cost_per_token", "0.000005"),
                ("output_cost_per_token", "0.00003"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.parse().unwrap()))
            .collect(),
            None,
        )
        .unwrap();
        let effective = chrono::Utc::now() - chrono::Duration::seconds(5);
        tollgate::pricing::insert_version(pool, "gpt-5.5", Some(&sheet), effective, "test")
            .await
            .unwrap();
        let key = tollgate::auth::create_key(pool, "acme", "t")
            .await
            .unwrap()
            .key;

        let mock_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mock_addr = mock_listener.local_addr().unwrap();
        tokio::spawn(mock.clone().serve(mock_listener));

        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("tollgate.toml");
        std::fs::write(&config_path, config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .env(
                "DATABASE_URL",
                format!("postgres://postgres@127.0.0.1:5432/{database}"),
            )
            .env("TOLLGATE_LISTEN", format!("127.0.0.1:{port}"))
            .env("TOLLGATE_UPSTREAM_URL", format!("http://{mock_addr}/v1"))
            .env("TOLLGATE_UPSTREAM_KEY", "upstream")
            .env("TOLLGATE_SPOOL_DIR", dir.path().join("spool"))
            .env("RUST_LOG", "error")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .map(|r| r.status() != 200)
            .unwrap_or(true)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "gateway did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            child: Some(child),
            base,
            key,
            http,
            mock,
            _dir: dir,
        }
    }

    /// Sends `kill -<signal>` to the gateway.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the gateway to exit.
    pub async fn wait(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
