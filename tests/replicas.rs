//! Two real `tollgate serve` processes on one database: a price changed
//! through one is used by requests through the other within a second. The
//! periodic reload is set to an hour, so only the NOTIFY listener can
//! explain that.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::process::{Child, Command};

use tollgate::mock_upstream::MockUpstream;

const ADMIN_TOKEN: &str = "replica-admin-token";

/// A child gateway, killed when dropped (also when the test panics).
struct Replica {
    name: String,
    child: Child,
    base: String,
    log: std::path::PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Replica {
    async fn spawn(name: &str, database_url: &str, upstream: &str, dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, "[prices]\nreload_interval_secs = 3600\n").unwrap();
        let spool = dir.join(format!("{name}-spool"));
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .arg("--config")
            .arg(&config)
            .arg("serve")
            // Named, so the test can wait for its sessions to end.
            .env(
                "DATABASE_URL",
                format!("{database_url}?application_name=tollgate-replica-{name}"),
            )
            .env("TOLLGATE_LISTEN", format!("127.0.0.1:{port}"))
            .env("TOLLGATE_UPSTREAM_URL", upstream)
            .env("TOLLGATE_UPSTREAM_KEY", "sk-upstream")
            .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("TOLLGATE_SPOOL_DIR", &spool)
            .env_remove("TOLLGATE_CONFIG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let replica = Self {
            name: name.to_owned(),
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        replica.wait_ready().await;
        replica
    }

    /// Kills the process and waits until the database has seen its
    /// sessions end (the test database is dropped after the test).
    async fn stop(mut self, pool: &PgPool) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = $1",
            )
            .bind(format!("tollgate-replica-{}", self.name))
            .fetch_one(pool)
            .await
            .unwrap();
            if left == 0 || Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = http.get(format!("{}/readyz", self.base)).send().await {
                if response.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "replica at {} never became ready; log:\n{}\n{}",
                self.base,
                std::fs::read_to_string(&self.log).unwrap_or_default(),
                std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The test database's URL, on the server `DATABASE_URL` names.
async fn database_url(pool: &PgPool) -> String {
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .unwrap();
    let server = std::env::var("DATABASE_URL")
        .ok()
        .and_then(|url| {
            let url = url.split('?').next()?.to_owned();
            let (server, _) = url.rsplit_once('/')?;
            server.contains("://").then(|| server.to_owned())
        })
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432".to_owned());
    format!("{server}/{name}")
}

#[sqlx::test]
async fn a_price_put_through_one_replica_is_used_by_another_within_a_second(pool: PgPool) {
    let mock = MockUpstream::new();
    let mock_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}/v1", mock_listener.local_addr().unwrap());
    tokio::spawn(mock.clone().serve(mock_listener));

    let dir = tempfile::tempdir().unwrap();
    let url = database_url(&pool).await;
    let a = Replica::spawn("a", &url, &upstream, dir.path()).await;
    let b = Replica::spawn("b", &url, &upstream, dir.path()).await;
    let key = tollgate::auth::create_key(&pool, "acme", "replicas")
        .await
        .unwrap()
        .key;
    let http = reqwest::Client::new();

    let put = |price: Value| {
        let request = http
            .put(format!("{}/admin/prices/gpt-5.5", a.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&price);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 201);
            response.json::<Value>().await.unwrap()["id"]
                .as_i64()
                .unwrap()
        }
    };
    // One request through B; its request id (and the status it got).
    let through_b = || {
        let request = http
            .post(format!("{}/v1/responses", b.base))
            .bearer_auth(&key)
            .json(&json!({"model": "gpt-5.5", "input": "x",
                          "metadata": {"mock_usage": "100,0,10,0"}}));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let id = response.headers()["x-tollgate-request-id"]
                .to_str()
                .unwrap()
                .to_owned();
            response.bytes().await.unwrap();
            (status, id)
        }
    };
    let price_of = |request_id: String| {
        let pool = pool.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let row: Option<Option<i64>> =
                    sqlx::query_scalar("SELECT price_id FROM usage_ledger WHERE request_id = $1")
                        .bind(&request_id)
                        .fetch_optional(&pool)
                        .await
                        .unwrap();
                if let Some(price_id) = row {
                    return price_id;
                }
                assert!(Instant::now() < deadline, "no row for {request_id}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };

    // B started with no prices: gpt-5.5 is unknown there.
    assert_eq!(through_b().await.0, 404);

    // The first price, and then a change, both made through A only.
    for (round, price) in [
        json!({"input_cost_per_token": "0.000005", "output_cost_per_token": "0.00003"}),
        json!({"input_cost_per_token": "0.000004", "output_cost_per_token": "0.00002"}),
    ]
    .into_iter()
    .enumerate()
    {
        let new_id = put(price).await;
        let changed_at = Instant::now();
        let mut sent = Vec::new();
        let used_after = loop {
            let sent_at = changed_at.elapsed();
            let (status, request_id) = through_b().await;
            sent.push((sent_at, status));
            if status == 200 && price_of(request_id).await == Some(new_id) {
                break sent_at;
            }
            assert!(
                changed_at.elapsed() < Duration::from_secs(5),
                "round {round}: B never used price {new_id}: {sent:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        eprintln!(
            "round {round}: B priced with the new version {} ms after the PUT returned",
            used_after.as_millis()
        );
        assert!(
            used_after < Duration::from_secs(1),
            "round {round}: B took {used_after:?}: {sent:?}"
        );
    }
    a.stop(&pool).await;
    b.stop(&pool).await;
}
