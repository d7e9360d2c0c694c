//! `tollgate-bench-reconcile`: the figures of reconciliation (issue 21).
//!
//! - `fetch`: the simulated provider (in-process, loopback) holds `--days`
//!   (90) × `--models` (50) × `--keys` (20) × 24 hourly groups; the fetch
//!   job pages through the Usage API at 1d and 1h and the Costs API into a
//!   throwaway database, then does it again: time, HTTP requests, pages,
//!   rows changed (0 on the second run), and the report over it.
//! - `report --reuse DB`: the report's latency over a large ledger (e.g. the
//!   10 M rows `tollgate-bench-reports --keep` leaves), median / p95 / max.
//! - `writer`: the batching ledger writer's rows/s with the
//!   `ledger_upstream_daily` trigger on and off, interleaved in one run.
//!
//! ```text
//! cargo run --release --bin tollgate-bench-reconcile -- fetch [--days 90 --models 50 --keys 20]
//! cargo run --release --bin tollgate-bench-reconcile -- report --reuse tollgate_bench_reports_123
//! cargo run --release --bin tollgate-bench-reconcile -- writer [--rows 50000 --rounds 3]
//! ```
//! `DATABASE_URL` names the server (default `postgres://postgres@127.0.0.1:5432/postgres`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::{NaiveDate, Utc};
use clap::{Parser, Subcommand};
use rust_decimal::Decimal;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use tollgate::config::{Config, Secret, UpstreamConfig, UpstreamKind};
use tollgate::jobs::JobContext;
use tollgate::ledger::spool::Spool;
use tollgate::ledger::{spawn_writer, Batching, LedgerRow};
use tollgate::mock_upstream::org::{Counts, Served};
use tollgate::mock_upstream::MockUpstream;
use tollgate::reconcile::report::{GroupBy, Query};
use tollgate::reconcile::{fetch_now, FetchJob};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Fetch {
        #[arg(long, default_value_t = 90)]
        days: i64,
        #[arg(long, default_value_t = 50)]
        models: usize,
        #[arg(long, default_value_t = 20)]
        keys: usize,
    },
    Report {
        /// An existing database with a loaded ledger.
        #[arg(long)]
        reuse: String,
        #[arg(long, default_value_t = 200)]
        runs: usize,
        /// The upstream name the ledger's rows carry.
        #[arg(long, default_value = "default")]
        upstream: String,
    },
    Writer {
        #[arg(long, default_value_t = 50_000)]
        rows: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tollgate-bench-reconcile: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-bench-reconcile: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let base: PgConnectOptions = url.parse()?;
    match cli.command {
        Command::Fetch { days, models, keys } => fetch(&base, days, models, keys).await,
        Command::Report {
            reuse,
            runs,
            upstream,
        } => report(&base, &reuse, runs, &upstream).await,
        Command::Writer { rows, rounds } => writer(&base, rows, rounds).await,
    }
}

/// A throwaway database, migrated; dropped by the caller.
async fn scratch(base: &PgConnectOptions, name: &str) -> Result<PgPool> {
    let mut admin = base.clone().connect().await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&mut admin)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(base.clone().database(name))
        .await?;
    tollgate::state::migrate(&pool).await?;
    Ok(pool)
}

async fn drop_db(base: &PgConnectOptions, pool: PgPool, name: &str) -> Result<()> {
    pool.close().await;
    let mut admin = base.clone().connect().await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&mut admin)
        .await?;
    Ok(())
}

fn config(mock_url: &str, upstream: &str) -> Config {
    let mut config = Config {
        upstreams: vec![UpstreamConfig {
            name: upstream.to_owned(),
            url: mock_url.to_owned(),
            key: Secret::new("sk-bench-upstream-key"),
            kind: UpstreamKind::Openai,
            connect_timeout_ms: 2_000,
            api_version: None,
        }],
        ..Config::default()
    };
    config.reconcile.url = mock_url.to_owned();
    config.reconcile.admin_key = Secret::new("sk-admin-bench");
    config
        .reconcile
        .api_key_ids
        .insert(upstream.to_owned(), "key_bench00".to_owned());
    config.reconcile.extra_project_ids = vec!["proj_bench".to_owned()];
    config
}

async fn fetch(base: &PgConnectOptions, days: i64, models: usize, keys: usize) -> Result<()> {
    let mock = MockUpstream::without_recording();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mock_url = format!("http://{}/v1", listener.local_addr()?);
    #[allow(clippy::disallowed_methods)] // lives as long as the bench
    tokio::spawn(mock.clone().serve(listener));

    let today = Utc::now().date_naive();
    let from = today - chrono::Duration::days(days);
    let to = today - chrono::Duration::days(1);
    let began = Instant::now();
    let sheet = tollgate::pricing::PriceSheet::from_fields(
        &[
            ("input_cost_per_token", "0.0000025"),
            ("cache_read_input_token_cost", "0.00000025"),
            ("output_cost_per_token", "0.000015"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.parse().unwrap_or_default()))
        .collect(),
        None,
    )?;
    let model_names: Vec<String> = (0..models).map(|m| format!("bench-model-{m:02}")).collect();
    for name in &model_names {
        mock.org().set_price(name, sheet.clone());
    }
    let dated: Vec<String> = model_names
        .iter()
        .map(|m| format!("{m}-2026-01-01"))
        .collect();
    let key_ids: Vec<String> = (0..keys).map(|k| format!("key_bench{k:02}")).collect();
    let mut groups = 0u64;
    for day in from.iter_days().take_while(|d| *d <= to) {
        let midnight = day
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc())
            .unwrap_or_default();
        for hour in 0..24i64 {
            let at = midnight + chrono::Duration::hours(hour);
            for (m, model) in dated.iter().enumerate() {
                for (k, key) in key_ids.iter().enumerate() {
                    let n = 1 + ((hour as usize + m + k) % 5) as i64;
                    mock.org().add_usage(&Served {
                        at,
                        model,
                        api_key_id: key,
                        project_id: "proj_bench",
                        service_tier: "default",
                        batch: false,
                        counts: Counts {
                            requests: n,
                            input: n * 1_200,
                            cached: n * 200,
                            output: n * 350,
                        },
                        reasoning: 0,
                    });
                    groups += 1;
                }
            }
        }
    }
    println!(
        "simulated provider: {groups} hourly groups ({days} days × {models} models × {keys} keys × 24 h) loaded in {:.1} s",
        began.elapsed().as_secs_f64()
    );

    let name = format!("tollgate_bench_reconcile_{}", std::process::id());
    let pool = scratch(base, &name).await?;
    let config = Arc::new(config(&mock_url, "bench"));
    let ctx = JobContext {
        pool: pool.clone(),
        stop: tokio_util::sync::CancellationToken::new(),
    };
    for run in ["first", "second"] {
        let mut job = FetchJob::new(config.clone(), None, Some((from, to)))?;
        let f = fetch_now(&ctx, &mut job, Duration::from_secs(10)).await?;
        println!(
            "{run} fetch of {} days: {:.1} s, {} HTTP requests, {} pages, provider rows changed: {} usage + {} cost",
            f.days,
            f.millis as f64 / 1000.0,
            f.requests,
            f.pages,
            f.usage_rows_changed,
            f.cost_rows_changed
        );
    }
    let (hourly, daily, costs): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM provider_usage WHERE bucket_width = '1h'),
                (SELECT count(*) FROM provider_usage WHERE bucket_width = '1d'),
                (SELECT count(*) FROM provider_costs)",
    )
    .fetch_one(&pool)
    .await?;
    println!("stored: {hourly} hourly and {daily} daily usage rows, {costs} cost rows");
    let query = Query {
        from,
        to,
        grouping: GroupBy::parse_all(&["model"]).map_err(anyhow::Error::msg)?,
    };
    let timings = time_reports(&pool, &config, &query, 20).await?;
    println!(
        "report over it ({days} days by model): {}",
        timings.describe()
    );
    drop_db(base, pool, &name).await
}

struct Timings {
    samples: Vec<Duration>,
    lines: usize,
}

impl Timings {
    fn quantile(&self, q: f64) -> Duration {
        let mut s = self.samples.clone();
        s.sort();
        let i = ((s.len() as f64 - 1.0) * q).round() as usize;
        s.get(i).copied().unwrap_or_default()
    }

    fn describe(&self) -> String {
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        format!(
            "{} lines; median {}, p95 {}, max {} ({} runs)",
            self.lines,
            ms(self.quantile(0.5)),
            ms(self.quantile(0.95)),
            ms(self.quantile(1.0)),
            self.samples.len()
        )
    }
}

async fn time_reports(
    pool: &PgPool,
    config: &Config,
    query: &Query,
    runs: usize,
) -> Result<Timings> {
    let mut samples = Vec::with_capacity(runs);
    let mut lines = 0;
    for i in 0..runs + 3 {
        let began = Instant::now();
        let report = tollgate::reconcile::report(pool, config, query).await?;
        if i >= 3 {
            samples.push(began.elapsed());
        }
        lines = report.data.len();
    }
    Ok(Timings { samples, lines })
}

async fn report(base: &PgConnectOptions, db: &str, runs: usize, upstream: &str) -> Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(base.clone().database(db))
        .await?;
    tollgate::state::migrate(&pool).await?;
    let (rows, first, last): (i64, Option<NaiveDate>, Option<NaiveDate>) = sqlx::query_as(
        "SELECT (SELECT sum(requests)::bigint FROM ledger_upstream_daily), min(day), max(day)
         FROM ledger_upstream_daily",
    )
    .fetch_one(&pool)
    .await?;
    let (Some(first), Some(last)) = (first, last) else {
        anyhow::bail!("{db} has no ledger rows in ledger_upstream_daily");
    };
    let ledger_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_ledger")
        .fetch_one(&pool)
        .await?;
    println!("{db}: {ledger_rows} ledger rows ({rows} provider-facing) from {first} to {last}");
    let config = config("http://127.0.0.1:9/v1", upstream);
    for groups in [vec!["model"], vec!["model", "upstream_key", "service_tier"]] {
        let query = Query {
            from: first,
            to: last,
            grouping: GroupBy::parse_all(&groups).map_err(anyhow::Error::msg)?,
        };
        let timings = time_reports(&pool, &config, &query, runs).await?;
        println!(
            "report {first}..{last}, group_by={}: {}",
            groups.join(","),
            timings.describe()
        );
    }
    // The same sums straight from the ledger rows, for comparison.
    let began = Instant::now();
    let direct: Vec<(NaiveDate, Option<String>, i64, Option<Decimal>)> = sqlx::query_as(
        "SELECT (started_at AT TIME ZONE 'UTC')::date, model, count(*), sum(cost)
         FROM usage_ledger WHERE upstream = $1 AND endpoint IN ('responses.create', 'responses.compact')
           AND status NOT IN ('rejected', 'upstream_error')
         GROUP BY 1, 2",
    )
    .bind(upstream)
    .fetch_all(&pool)
    .await?;
    println!(
        "the same sums from the ledger rows themselves: {} groups in {:.0} ms (once)",
        direct.len(),
        began.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}

async fn writer(base: &PgConnectOptions, rows: usize, rounds: usize) -> Result<()> {
    let name = format!("tollgate_bench_reconcile_writer_{}", std::process::id());
    let pool = scratch(base, &name).await?;
    let mut on = Vec::new();
    let mut off = Vec::new();
    for round in 0..rounds {
        for trigger in [true, false] {
            let toggle = if trigger { "ENABLE" } else { "DISABLE" };
            sqlx::query(&format!(
                "ALTER TABLE usage_ledger {toggle} TRIGGER ledger_upstream_daily_insert"
            ))
            .execute(&pool)
            .await?;
            let spool = tempfile::tempdir()?;
            let (handle, task) = spawn_writer(
                pool.clone(),
                Spool::open(spool.path())?,
                Batching::immediate(1_000),
            );
            let batch = synthetic_rows(rows, round, trigger);
            let began = Instant::now();
            for row in batch {
                handle.record(row);
            }
            handle.flush().await;
            let rate = rows as f64 / began.elapsed().as_secs_f64();
            handle.close();
            task.await?;
            sqlx::query("TRUNCATE usage_ledger").execute(&pool).await?;
            if trigger {
                on.push(rate)
            } else {
                off.push(rate)
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "ledger writer, {rows} rows in 1000-row batches, {rounds} interleaved rounds each: ledger_upstream_daily trigger on {:.0} rows/s, off {:.0} rows/s (median; on {on:.0?}, off {off:.0?})",
        median(&mut on.clone()),
        median(&mut off.clone()),
    );
    drop_db(base, pool, &name).await
}

/// Rows shaped like traffic: 300 keys over 100 tenants, 8 models, 3 tiers.
fn synthetic_rows(n: usize, round: usize, trigger: bool) -> Vec<LedgerRow> {
    let now = Utc::now();
    (0..n)
        .map(|i| {
            let at = now - chrono::Duration::seconds((i % 86_400) as i64);
            let model = format!("gpt-5.{}", i % 8);
            LedgerRow {
                id: None,
                request_id: format!("bench_{round}_{trigger}_{i}"),
                response_id: None,
                tenant: format!("t{:03}", i % 100),
                api_key_id: format!("key{}", i % 300),
                endpoint: "responses.create".into(),
                upstream_model: Some(format!("{model}-2026-01-01")),
                model: Some(model),
                upstream: Some("default".into()),
                stream: true,
                status: "completed".into(),
                usage_source: "reported".into(),
                input_tokens: 1_000,
                cached_tokens: 200,
                output_tokens: 500,
                reasoning_tokens: 100,
                total_tokens: 1_500,
                service_tier: Some(["default", "flex", "priority"][i % 3].into()),
                price_id: None,
                cost: Some(Decimal::new(123_456, 7)),
                unpriced_reason: None,
                currency: "usd".into(),
                http_status: Some(200),
                error_code: None,
                attempts: 1,
                fallback_from: None,
                end_user: None,
                dropped_tools: None,
                client_request_id: None,
                client_disconnected: false,
                mcp_calls: 0,
                started_at: at,
                first_byte_at: Some(at),
                finished_at: at,
                anomaly: None,
            }
        })
        .collect()
}
