//! `tollgate-bench`: Tollgate's benchmarks, run against the real binaries.
//!
//! # `ttfb`: does the streaming path add buffering?
//!
//! Measures streaming `POST /v1/responses` requests two ways in the same run:
//! DIRECTLY against the simulated upstream (`tollgate mock-upstream`) and
//! THROUGH `tollgate serve` in front of it, with the ledger on (every request
//! through Tollgate becomes a row written by the real batching PostgreSQL
//! writer). The two kinds are interleaved A-B-B-A so that the machine's noise
//! hits both alike. For each request the client records, from the moment it
//! starts sending:
//!
//! * `headers`: the response headers arrived;
//! * `first byte` (TTFB): the first body byte arrived;
//! * `first event`: the first complete SSE event (blank-line terminated) arrived;
//! * `last byte`: the body ended.
//!
//! It reports p50/p90/p99/max of each, direct and through, the ratio
//! through/direct at p50 and p99, and the added latency (through - direct)
//! in microseconds. While measuring it checks that every response ends with a
//! `response.completed` event, and afterwards that the ledger holds exactly
//! one completed, priced row per request sent through Tollgate (warm-up
//! included).
//!
//! ```text
//! cargo build --release --bins
//! cargo run --release --bin tollgate-bench -- ttfb [--requests N] [--concurrency C] [--warmup W] [--delay-ms D] [--write-md]
//! ```
//!
//! Needs a PostgreSQL server where it may create databases: the one in
//! `DATABASE_URL` if set, else `postgres://postgres@127.0.0.1:5432`. The
//! command sets everything else up itself: a throwaway database
//! `tollgate_bench_<pid>` (dropped at the end), the `tollgate` binary found
//! next to this one started as `mock-upstream` and `serve` on free loopback
//! ports (killed at the end, also on error, panic or Ctrl-C), the bundled
//! prices (`config/prices.json`) and a client key. `--write-md` replaces this
//! run's block in the `ttfb` section of `BENCHMARKS.md` (one block per
//! concurrency / delay setting).

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use sqlx::Connection;

#[path = "bench/litellm.rs"]
mod litellm;
#[path = "bench/profile.rs"]
mod profile;
#[path = "bench/scenarios.rs"]
mod scenarios;
#[path = "bench/sinks.rs"]
mod sinks;
#[path = "bench/stack.rs"]
mod stack;

const DEFAULT_BASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const ADMIN_TOKEN: &str = "bench-admin";
const UPSTREAM_KEY: &str = "bench";
const MODEL: &str = "gpt-5.4-mini";
const MODEL_PREFIX: &str = "turing/";
/// `mock_usage` of every request: input, cached, output, reasoning tokens.
const USAGE: (i64, i64, i64, i64) = (100, 0, 200, 0);
const MD_FILE: &str = "BENCHMARKS.md";
const MD_BEGIN: &str = "<!-- ttfb:begin -->";
const MD_END: &str = "<!-- ttfb:end -->";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const LEDGER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    name = "tollgate-bench",
    about = "Tollgate benchmarks, run against the real binaries"
)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Time to first byte of streaming responses, direct vs through Tollgate.
    Ttfb(TtfbArgs),
    /// Non-streaming saturation (wrk) direct / nginx / Tollgate, open-loop
    /// added latency at half nginx's rate, CPU per request, ledger rows/s.
    Throughput(ThroughputArgs),
    /// Event throughput of large streams; many streams held open.
    Streams(StreamsArgs),
    /// The batched ledger writer alone, and its backlog behind a locked table.
    Ledger(LedgerArgs),
    /// Instructions per proxied request under valgrind --tool=callgrind.
    Callgrind(CallgrindArgs),
    /// Spend control on vs off: saturation ratio, p50 at 4 connections,
    /// database transactions for admission per second.
    Limits(LimitsArgs),
    /// Billing export: serving with export on vs off, events/s per sink,
    /// catch-up after an outage.
    Export(ExportArgs),
    /// Where the CPU goes in a saturated run: `perf record` of the whole
    /// machine, split by process, gateway stage and library; folded stacks
    /// for a flame graph. Not part of `all` (needs perf and minutes).
    Profile(ProfileArgs),
    /// Everything above, then one table.
    All(AllArgs),
}

#[derive(Debug, Clone, Args)]
struct CommonArgs {
    /// Run very briefly, only to check that the scenario works end to end (CI).
    #[arg(long)]
    smoke: bool,
    /// Write the figures into BENCHMARKS.md (between this scenario's markers).
    #[arg(long)]
    write_md: bool,
}

#[derive(Debug, Clone, Args)]
struct ThroughputArgs {
    /// Seconds of wrk per route.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// wrk threads (each takes a share of the 2 cores).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Seconds of open-loop load per route for the added latency.
    #[arg(long, default_value_t = 10.0)]
    latency_seconds: f64,
    /// Add LiteLLM's proxy as a peer row (installs it into target/litellm-venv).
    #[arg(long)]
    litellm: bool,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Clone, Args)]
struct StreamsArgs {
    /// Deltas per stream for the event-throughput measure.
    #[arg(long, default_value_t = 2000)]
    deltas: usize,
    /// Streams per route for the event-throughput measure.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Streams held open at once through Tollgate.
    #[arg(long, default_value_t = 10_000)]
    open: usize,
    /// How long each open stream lasts, in seconds.
    #[arg(long, default_value_t = 60)]
    hold_secs: u64,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Clone, Args)]
struct LedgerArgs {
    /// Rows for the writer-alone measure.
    #[arg(long, default_value_t = 200_000)]
    rows: usize,
    /// The writer's batch_max (the shipped default is 1000).
    #[arg(long, default_value_t = 1000)]
    batch_max: usize,
    /// Rows per second recorded during the backlog measure.
    #[arg(long, default_value_t = 10_000)]
    backlog_rate: usize,
    /// Seconds of recording during the backlog measure.
    #[arg(long, default_value_t = 8)]
    backlog_secs: u64,
    /// Seconds the table stays locked (from t = 1 s).
    #[arg(long, default_value_t = 4)]
    lock_secs: u64,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Clone, Args)]
struct ProfileArgs {
    /// Seconds of wrk (and of perf, plus two).
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// perf's sampling frequency per CPU, Hz.
    #[arg(long, default_value_t = 499)]
    frequency: u32,
    /// Profile the route of a key under every kind of limit (key and
    /// tenant) instead of the unlimited one.
    #[arg(long)]
    limited: bool,
    /// Where perf.data, the folded stacks and the flame graph go.
    #[arg(long, default_value = "target/profile")]
    out: PathBuf,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Clone, Args)]
struct CallgrindArgs {
    /// Requests sent to the gateway under callgrind.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Clone, Args)]
struct LimitsArgs {
    /// Seconds of wrk per route and round.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Rounds, unlimited and limited alternating.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// wrk connections at saturation.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Clone, Args)]
struct ExportArgs {
    /// Seconds of wrk per round.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Rounds, export off and on alternating.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Backlog rows for the per-sink throughput.
    #[arg(long, default_value_t = 100_000)]
    rows: i64,
    /// The longest one sink's throughput measure runs.
    #[arg(long, default_value_t = 60)]
    max_secs: u64,
    /// Rows of the catch-up measure.
    #[arg(long, default_value_t = 1_000_000)]
    catchup_rows: i64,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Clone, Args)]
struct AllArgs {
    /// Streams held open (the target is 10,000).
    #[arg(long, default_value_t = 10_000)]
    open: usize,
    /// Seconds each open stream lasts (the target is 60).
    #[arg(long, default_value_t = 60)]
    hold_secs: u64,
    /// Skip the callgrind run (slow).
    #[arg(long)]
    no_callgrind: bool,
    /// Add LiteLLM's proxy as a peer row in the throughput run.
    #[arg(long)]
    litellm: bool,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Clone, Args)]
struct TtfbArgs {
    /// Measured requests, half direct and half through Tollgate, interleaved.
    #[arg(long, default_value_t = 400)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Unmeasured requests first (interleaved the same way).
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Pause between SSE events in the simulated upstream (`mock_delay_ms`).
    /// 0, the default, streams as fast as the mock can; a few ms makes any
    /// buffering show up as a first byte as late as the last one.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Write this run into BENCHMARKS.md (its block of the ttfb section).
    #[arg(long)]
    write_md: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tollgate-bench: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            result = run(cli) => result,
            // Dropping `run` drops its guards: children killed, database dropped.
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tollgate-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let rows = match cli.command {
        BenchCommand::Ttfb(args) => ttfb(args).await?,
        BenchCommand::Throughput(args) => throughput(args).await?,
        BenchCommand::Streams(args) => streams(args).await?,
        BenchCommand::Ledger(args) => ledger(args).await?,
        BenchCommand::Callgrind(args) => callgrind(args).await?,
        BenchCommand::Limits(args) => limits(args).await?,
        BenchCommand::Export(args) => export(args).await?,
        BenchCommand::Profile(args) => profile(args).await?,
        BenchCommand::All(args) => all(args).await?,
    };
    println!("\n{}", stack::summary_table(&rows));
    Ok(())
}

async fn throughput(args: ThroughputArgs) -> Result<Vec<stack::SummaryRow>> {
    let smoke = args.common.smoke;
    scenarios::throughput(scenarios::ThroughputOptions {
        seconds: if smoke { 1 } else { args.seconds },
        connections: args.connections,
        threads: args.threads,
        latency_seconds: if smoke { 0.5 } else { args.latency_seconds },
        litellm: args.litellm,
        smoke,
        write_md: args.common.write_md,
    })
    .await
}

async fn streams(args: StreamsArgs) -> Result<Vec<stack::SummaryRow>> {
    let smoke = args.common.smoke;
    scenarios::streams(scenarios::StreamsOptions {
        deltas: if smoke { 200 } else { args.deltas },
        rounds: if smoke { 2 } else { args.rounds },
        open: if smoke { 50 } else { args.open },
        hold_secs: if smoke { 2 } else { args.hold_secs },
        smoke,
        write_md: args.common.write_md,
    })
    .await
}

async fn ledger(args: LedgerArgs) -> Result<Vec<stack::SummaryRow>> {
    let smoke = args.common.smoke;
    scenarios::ledger(scenarios::LedgerOptions {
        rows: if smoke { 2_000 } else { args.rows },
        batch_max: args.batch_max,
        backlog_rate: if smoke { 1_000 } else { args.backlog_rate },
        backlog_secs: if smoke { 3 } else { args.backlog_secs },
        lock_secs: if smoke { 1 } else { args.lock_secs },
        smoke,
        write_md: args.common.write_md,
    })
    .await
}

async fn callgrind(args: CallgrindArgs) -> Result<Vec<stack::SummaryRow>> {
    let smoke = args.common.smoke;
    scenarios::callgrind(scenarios::CallgrindOptions {
        requests: if smoke { 10 } else { args.requests },
        smoke,
        write_md: args.common.write_md,
    })
    .await
}

async fn profile(args: ProfileArgs) -> Result<Vec<stack::SummaryRow>> {
    profile::profile(profile::ProfileOptions {
        seconds: if args.common.smoke { 1 } else { args.seconds },
        connections: args.connections,
        frequency: args.frequency,
        limited: args.limited,
        out: args.out,
        write_md: args.common.write_md,
    })
    .await
}

async fn limits(args: LimitsArgs) -> Result<Vec<stack::SummaryRow>> {
    let smoke = args.common.smoke;
    scenarios::limits(scenarios::LimitsOptions {
        seconds: if smoke { 1 } else { args.seconds },
        rounds: if smoke { 1 } else { args.rounds },
        connections: args.connections,
        smoke,
        write_md: args.common.write_md,
    })
    .await
}

async fn export(args: ExportArgs) -> Result<Vec<stack::SummaryRow>> {
    let smoke = args.common.smoke;
    scenarios::export(scenarios::ExportOptions {
        seconds: if smoke { 1 } else { args.seconds },
        rounds: if smoke { 1 } else { args.rounds },
        connections: args.connections,
        rows: if smoke { 1_000 } else { args.rows },
        max_secs: if smoke { 10 } else { args.max_secs },
        catchup_rows: if smoke { 1_000 } else { args.catchup_rows },
        smoke,
        write_md: args.common.write_md,
    })
    .await
}

/// Every scenario in turn (each with its own database and processes).
async fn all(args: AllArgs) -> Result<Vec<stack::SummaryRow>> {
    let common = args.common.clone();
    let mut rows = ttfb(TtfbArgs {
        requests: if common.smoke { 40 } else { 400 },
        concurrency: 1,
        warmup: if common.smoke { 4 } else { 20 },
        delay_ms: 0,
        write_md: common.write_md && !common.smoke,
    })
    .await?;
    rows.extend(
        throughput(ThroughputArgs {
            seconds: 10,
            connections: 64,
            threads: 1,
            latency_seconds: 10.0,
            litellm: args.litellm,
            common: common.clone(),
        })
        .await?,
    );
    rows.extend(
        streams(StreamsArgs {
            deltas: 2000,
            rounds: 20,
            open: args.open,
            hold_secs: args.hold_secs,
            common: common.clone(),
        })
        .await?,
    );
    rows.extend(
        ledger(LedgerArgs {
            rows: 200_000,
            batch_max: 1000,
            backlog_rate: 10_000,
            backlog_secs: 8,
            lock_secs: 4,
            common: common.clone(),
        })
        .await?,
    );
    rows.extend(
        limits(LimitsArgs {
            seconds: 8,
            rounds: 3,
            connections: 64,
            common: common.clone(),
        })
        .await?,
    );
    rows.extend(
        export(ExportArgs {
            seconds: 8,
            rounds: 3,
            connections: 64,
            rows: 100_000,
            max_secs: 60,
            catchup_rows: 1_000_000,
            common: common.clone(),
        })
        .await?,
    );
    if !args.no_callgrind {
        rows.extend(
            callgrind(CallgrindArgs {
                requests: 2000,
                common: common.clone(),
            })
            .await?,
        );
    }
    rows.push(stack::SummaryRow::new(
        "SSE scanner, pricing",
        "see `cargo bench --bench sse` / `--bench pricing` (criterion, not run by `all`)"
            .to_owned(),
        "≥ 1 GB/s; ≤ 1 µs",
        None,
    ));
    if common.smoke {
        // A few seconds per scenario prove it runs, not how fast it is.
        for row in &mut rows {
            row.verdict = "-".to_owned();
        }
    }
    let table = stack::summary_table(&rows);
    if common.write_md && !common.smoke {
        stack::write_section(
            "summary",
            &format!(
                "## Summary of the last `all` run\n\n`{}`\n\n{}\n\n{table}",
                stack::this_command(),
                stack::machine_line(&load_average())
            ),
        )?;
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------
// Environment: binaries, database, child processes

/// The directory holding `config/` (the working directory when it has one,
/// else the crate this binary was built from).
fn repo_root() -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_default();
    if cwd.join("config/prices.json").is_file() {
        cwd
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }
}

/// `target/<profile>/tollgate`, next to this executable; refuses a binary
/// older than the library it links (only the bench was rebuilt).
fn tollgate_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate this executable")?;
    let dir = exe
        .parent()
        .context("this executable has no parent directory")?;
    let bin = dir.join("tollgate");
    if !bin.is_file() {
        bail!(
            "{} not found; run `cargo build --release --bins` first",
            bin.display()
        );
    }
    // `cargo run --bin tollgate-bench` rebuilds the library (deps/) without
    // relinking `tollgate`; measuring that stale binary would mislead. The
    // binary's dep-info (`tollgate.d`) names every source file it was built
    // from: any of them newer than the binary means it is stale. (Comparing
    // with `deps/libtollgate-*.rlib` misfires when `cargo bench` or another
    // profile leaves an rlib of its own there.)
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let newest_source = std::fs::read_to_string(dir.join("tollgate.d"))
        .ok()
        .and_then(|text| {
            let (_, deps) = text.lines().next()?.split_once(": ")?;
            deps.split_whitespace()
                .filter_map(|p| modified(Path::new(p)))
                .max()
        });
    if let (Some(source), Some(bin_time)) = (newest_source, modified(&bin)) {
        if source > bin_time {
            bail!(
                "{} is older than its sources; run `cargo build --release --bins` first",
                bin.display()
            );
        }
    }
    Ok(bin)
}

/// `url` with its database name replaced by `database`.
fn with_database(url: &str, database: &str) -> Result<String> {
    let (main, query) = match url.split_once('?') {
        Some((main, query)) => (main, Some(query)),
        None => (url, None),
    };
    let authority = main
        .find("://")
        .map(|i| i + 3)
        .with_context(|| format!("DATABASE_URL is not a URL: {url}"))?;
    let path = main[authority..]
        .find('/')
        .map_or(main.len(), |i| authority + i);
    let mut out = format!("{}/{database}", &main[..path]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

/// A database of our own on the server, dropped when this is dropped.
struct Database {
    admin_url: String,
    name: String,
    url: String,
    dropped: bool,
}

impl Database {
    async fn create() -> Result<Self> {
        let base = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_BASE_URL.to_owned());
        let admin_url = with_database(&base, "postgres")?;
        let name = format!("tollgate_bench_{}", std::process::id());
        let url = with_database(&base, &name)?;
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .with_context(|| format!("cannot connect to PostgreSQL at {admin_url}"))?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .with_context(|| format!("cannot create database {name}"))?;
        let _ = conn.close().await;
        Ok(Self {
            admin_url,
            name,
            url,
            dropped: false,
        })
    }

    async fn drop_now(&mut self) -> Result<()> {
        drop_database(&self.admin_url, &self.name).await?;
        self.dropped = true;
        Ok(())
    }
}

async fn drop_database(admin_url: &str, name: &str) -> Result<()> {
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    let _ = conn.close().await;
    Ok(())
}

impl Drop for Database {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // We may be inside the runtime (error path) or unwinding; a thread
        // with a runtime of its own works from anywhere.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let joined = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(drop_database(&admin_url, &name)))
        })
        .join();
        if !matches!(joined, Ok(Ok(()))) {
            eprintln!(
                "tollgate-bench: could not drop database {}; drop it by hand",
                self.name
            );
        }
    }
}

/// Child processes, killed (in reverse start order) when this is dropped.
#[derive(Default)]
struct Children {
    procs: Vec<(String, Child, PathBuf)>,
}

impl Children {
    fn spawn(&mut self, name: &str, mut command: Command, log: PathBuf) -> Result<()> {
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.procs.push((name.to_owned(), child, log));
        Ok(())
    }

    /// Process id of the named child (`sh -c … exec` keeps the id).
    fn pid(&self, name: &str) -> Option<u32> {
        self.procs
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, child, _)| child.id())
    }

    /// SIGTERM to the named child, then waits for it to exit (callgrind
    /// writes its profile on a clean exit only).
    fn terminate(&mut self, name: &str, timeout: Duration) -> Result<()> {
        let Some(index) = self.procs.iter().position(|(n, _, _)| n == name) else {
            bail!("{name} is not running");
        };
        let (_, mut child, _) = self.procs.remove(index);
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM {name} failed");
        }
        let deadline = Instant::now() + timeout;
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("{name} did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Fails, with the tail of its log, if a child has exited.
    fn check_alive(&mut self) -> Result<()> {
        for (name, child, log) in &mut self.procs {
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited ({status}):\n{}", log_tail(log));
            }
        }
        Ok(())
    }

    fn kill_all(&mut self) {
        // nginx's workers outlive a SIGKILLed master: SIGTERM makes the
        // master stop them.
        if self.pid("nginx").is_some() {
            let _ = self.terminate("nginx", Duration::from_secs(5));
        }
        while let Some((_, mut child, _)) = self.procs.pop() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A `tollgate` command with the bench's environment (and none of the
/// caller's `TOLLGATE_*` settings).
fn tollgate_command(bin: &Path, root: &Path, db_url: &str) -> Command {
    let mut command = Command::new(bin);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TOLLGATE_") {
            command.env_remove(name);
        }
    }
    command.current_dir(root).env("DATABASE_URL", db_url);
    let config = root.join("config/tollgate.toml");
    if config.is_file() {
        command.env("TOLLGATE_CONFIG", config);
    }
    command
}

/// Runs a one-shot `tollgate` command to completion; its standard output.
async fn run_once(command: Command, what: &str) -> Result<String> {
    let output = tokio::process::Command::from(command)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run `tollgate {what}`"))?;
    if !output.status.success() {
        bail!(
            "`tollgate {what}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

async fn wait_ready(client: &reqwest::Client, url: &str, children: &mut Children) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(response) = client.get(url).send().await {
            if response.status() == reqwest::StatusCode::OK {
                return Ok(());
            }
        }
        children.check_alive()?;
        if Instant::now() > deadline {
            bail!("{url} not ready after {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// Measurement

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Direct,
    Through,
}

/// A-B-B-A: each route goes first as often as second.
fn route_of(index: usize) -> Route {
    if matches!(index % 4, 0 | 3) {
        Route::Direct
    } else {
        Route::Through
    }
}

fn through_count(n: usize) -> usize {
    (0..n).filter(|&i| route_of(i) == Route::Through).count()
}

struct Target {
    url: String,
    authorization: String,
    body: Bytes,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    route: Route,
    headers: Duration,
    first_byte: Duration,
    first_event: Duration,
    last_byte: Duration,
    bytes: usize,
    completed: bool,
}

fn request_body(model: &str, delay_ms: u64) -> Result<Bytes> {
    let (input, cached, output, reasoning) = USAGE;
    let mut metadata = serde_json::json!({
        "mock_deltas": "50",
        "mock_delta_bytes": "16",
        "mock_ttfb_ms": "0",
        "mock_usage": format!("{input},{cached},{output},{reasoning}"),
    });
    if delay_ms > 0 {
        metadata["mock_delay_ms"] = serde_json::Value::String(delay_ms.to_string());
    }
    let body = serde_json::json!({
        "model": model,
        "input": "Benchmark",
        "stream": true,
        "metadata": metadata,
    });
    Ok(Bytes::from(serde_json::to_vec(&body)?))
}

/// True once `buf` holds the end of an SSE event (a blank line).
fn has_event_end(buf: &[u8]) -> bool {
    buf.windows(2).any(|w| w == b"\n\n" || w == b"\r\r") || buf.windows(4).any(|w| w == b"\r\n\r\n")
}

/// Whether the last event of an SSE body is `response.completed`.
fn ends_with_completed(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body)
        .replace("\r\n", "\n")
        .replace('\r', "\n");
    let Some(last) = text.trim_end().rsplit("\n\n").next() else {
        return false;
    };
    let mut event = None;
    let mut data_type = None;
    for line in last.lines() {
        if let Some(name) = line.strip_prefix("event:") {
            event = Some(name.trim().to_owned());
        } else if let Some(data) = line.strip_prefix("data:") {
            data_type = serde_json::from_str::<serde_json::Value>(data.trim())
                .ok()
                .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned));
        }
    }
    let is_completed = |v: &Option<String>| v.as_deref() == Some("response.completed");
    is_completed(&data_type) && (event.is_none() || is_completed(&event))
}

async fn measure_one(client: &reqwest::Client, route: Route, target: &Target) -> Result<Sample> {
    let start = Instant::now();
    let response = client
        .post(&target.url)
        .header(reqwest::header::AUTHORIZATION, &target.authorization)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(target.body.clone())
        .send()
        .await?;
    let headers = start.elapsed();
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        bail!("HTTP {status}: {text}");
    }
    let mut stream = response.bytes_stream();
    let mut body = Vec::with_capacity(32 * 1024);
    let mut first_byte = None;
    let mut first_event = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if chunk.is_empty() {
            continue;
        }
        let now = start.elapsed();
        first_byte.get_or_insert(now);
        let scan_from = body.len().saturating_sub(3);
        body.extend_from_slice(&chunk);
        if first_event.is_none() && has_event_end(&body[scan_from..]) {
            first_event = Some(now);
        }
    }
    let last_byte = start.elapsed();
    let first_byte = first_byte.context("empty response body")?;
    Ok(Sample {
        route,
        headers,
        first_byte,
        first_event: first_event.unwrap_or(last_byte),
        last_byte,
        bytes: body.len(),
        completed: ends_with_completed(&body),
    })
}

/// `n` requests, A-B-B-A, `concurrency` at a time.
async fn run_batch(
    client: &reqwest::Client,
    direct: &Arc<Target>,
    through: &Arc<Target>,
    n: usize,
    concurrency: usize,
) -> Result<Vec<Sample>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(n).max(1) {
        let (client, direct, through, next) = (
            client.clone(),
            direct.clone(),
            through.clone(),
            next.clone(),
        );
        workers.spawn(async move {
            let mut samples = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= n {
                    return Ok::<_, anyhow::Error>(samples);
                }
                let route = route_of(index);
                let target = match route {
                    Route::Direct => &direct,
                    Route::Through => &through,
                };
                let sample = measure_one(&client, route, target)
                    .await
                    .with_context(|| format!("request {index} ({route:?})"))?;
                samples.push(sample);
            }
        });
    }
    let mut samples = Vec::with_capacity(n);
    while let Some(joined) = workers.join_next().await {
        samples.extend(joined.context("a request worker panicked")??);
    }
    Ok(samples)
}

// ---------------------------------------------------------------------------
// Statistics and report

#[derive(Debug, Clone, Copy)]
struct Summary {
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
}

/// Nearest-rank percentile of a sorted slice.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len()) - 1)
        .copied()
        .unwrap_or_default()
}

fn summarize(mut values: Vec<Duration>) -> Summary {
    values.sort_unstable();
    Summary {
        p50: percentile(&values, 0.50),
        p90: percentile(&values, 0.90),
        p99: percentile(&values, 0.99),
        max: values.last().copied().unwrap_or_default(),
    }
}

/// Reads one measure out of a sample.
type Measure = fn(&Sample) -> Duration;

const MEASURES: [(&str, Measure); 4] = [
    ("first byte (TTFB)", |s| s.first_byte),
    ("first SSE event", |s| s.first_event),
    ("headers", |s| s.headers),
    ("last byte (whole stream)", |s| s.last_byte),
];

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn ratio(through: Duration, direct: Duration) -> String {
    if direct.is_zero() {
        return "n/a".to_owned();
    }
    format!("{:.2}×", through.as_secs_f64() / direct.as_secs_f64())
}

fn added_us(through: Duration, direct: Duration) -> String {
    let diff = through.as_micros() as i128 - direct.as_micros() as i128;
    format!("{diff:+} µs")
}

/// Markdown tables: the overhead table, then the latency distribution.
fn tables(samples: &[Sample]) -> String {
    let pick = |route: Route, f: Measure| {
        summarize(samples.iter().filter(|s| s.route == route).map(f).collect())
    };
    let mut out = String::new();
    out.push_str("| measure | p50 through/direct | p50 added | p99 through/direct | p99 added |\n");
    out.push_str("|---|---:|---:|---:|---:|\n");
    for (name, f) in MEASURES {
        let (d, t) = (pick(Route::Direct, f), pick(Route::Through, f));
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} |",
            ratio(t.p50, d.p50),
            added_us(t.p50, d.p50),
            ratio(t.p99, d.p99),
            added_us(t.p99, d.p99),
        );
    }
    out.push('\n');
    out.push_str("| measure | route | p50 ms | p90 ms | p99 ms | max ms |\n");
    out.push_str("|---|---|---:|---:|---:|---:|\n");
    for (name, f) in MEASURES {
        for (label, route) in [("direct", Route::Direct), ("through", Route::Through)] {
            let s = pick(route, f);
            let shown = if route == Route::Direct { name } else { "" };
            let _ = writeln!(
                out,
                "| {shown} | {label} | {} | {} | {} | {} |",
                ms(s.p50),
                ms(s.p90),
                ms(s.p99),
                ms(s.max)
            );
        }
    }
    out
}

/// First line of a command's output, or `unknown`.
fn command_line_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_owned())
        })
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn git_revision(root: &Path) -> String {
    let root = root.to_string_lossy();
    let rev = command_line_output("git", &["-C", &root, "rev-parse", "--short", "HEAD"]);
    let dirty = Command::new("git")
        .args(["-C", &root, "status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    if dirty {
        format!("{rev} + uncommitted changes")
    } else {
        rev
    }
}

struct RunFacts {
    date: String,
    command: String,
    nproc: String,
    cpu: String,
    rustc: String,
    kernel: String,
    postgres: String,
    revision: String,
    load_start: String,
    load_end: String,
}

fn block_key(args: &TtfbArgs) -> String {
    if args.delay_ms > 0 {
        format!("c{}-d{}", args.concurrency, args.delay_ms)
    } else {
        format!("c{}", args.concurrency)
    }
}

fn run_block(
    args: &TtfbArgs,
    facts: &RunFacts,
    samples: &[Sample],
    elapsed: Duration,
    ledger: &LedgerCheck,
) -> String {
    let n_direct = samples.iter().filter(|s| s.route == Route::Direct).count();
    let n_through = samples.len() - n_direct;
    let stream_bytes = samples.first().map_or(0, |s| s.bytes);
    let key = block_key(args);
    let mut out = String::new();
    let _ = writeln!(out, "<!-- ttfb:{key}:begin -->");
    let _ = write!(out, "### Concurrency {}", args.concurrency);
    if args.delay_ms > 0 {
        let _ = write!(out, ", {} ms between events", args.delay_ms);
    }
    out.push_str("\n\n");
    let _ = writeln!(out, "`{}`", facts.command);
    out.push('\n');
    let _ = writeln!(
        out,
        "Run {}; {} CPUs ({}), Linux {}, {}, PostgreSQL {}; Tollgate {}. \
         Load average (1 min) {} at the start, {} at the end.",
        facts.date,
        facts.nproc,
        facts.cpu,
        facts.kernel,
        facts.rustc,
        facts.postgres,
        facts.revision,
        facts.load_start,
        facts.load_end
    );
    out.push('\n');
    let _ = writeln!(
        out,
        "{} measured requests ({n_direct} direct, {n_through} through Tollgate) after {} warm-up requests, \
         {} in flight at a time; each response is {stream_bytes} bytes of SSE (50 deltas of 16 bytes). \
         The measured requests took {:.0} ms in all ({:.0} requests/s, both routes together).",
        samples.len(),
        args.warmup,
        args.concurrency,
        elapsed.as_secs_f64() * 1e3,
        samples.len() as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    out.push('\n');
    out.push_str(&tables(samples));
    out.push('\n');
    let _ = writeln!(
        out,
        "Checked: every response ended with `response.completed`; the ledger held {} rows \
         ({} measured + {} warm-up requests through Tollgate), all `completed`, usage `reported` \
         ({}/{} tokens in/out) and priced.",
        ledger.total, ledger.measured, ledger.warmup, USAGE.0, USAGE.2
    );
    let _ = writeln!(out, "<!-- ttfb:{key}:end -->");
    out
}

const MD_INTRO: &str = "\
# Tollgate benchmarks

What is measured, and how to get the figures yourself. Everything here is
produced by `tollgate-bench` (`src/bin/tollgate-bench.rs`) against the real
`tollgate` binary and a real PostgreSQL, with the project's simulated upstream
(`tollgate mock-upstream`) standing in for OpenAI.

**Read the ratios, not the milliseconds.** Each table comes from one run on the
machine named next to it, a shared and noisy 2-core box where the client, the
simulated upstream, Tollgate and PostgreSQL all compete for the same CPUs.
Absolute times move from run to run; the comparisons are made inside a single
run, direct and through Tollgate interleaved, so that noise hits both alike.

## Reproduce

A PostgreSQL server where you may create databases
(`postgres://postgres@127.0.0.1:5432`, or set `DATABASE_URL`), then:

```sh
cargo build --release --bins
cargo run --release --bin tollgate-bench -- ttfb --requests 400
cargo run --release --bin tollgate-bench -- ttfb --requests 400 --concurrency 16
cargo run --release --bin tollgate-bench -- throughput --litellm   # wrk: direct / nginx / Tollgate (/ LiteLLM)
cargo run --release --bin tollgate-bench -- streams                # events/s; 10,000 streams held 60 s
cargo run --release --bin tollgate-bench -- ledger                 # writer alone; backlog behind a lock
cargo run --release --bin tollgate-bench -- callgrind              # instructions per request
cargo run --release --bin tollgate-bench -- all [--litellm]        # all of the above, one table
cargo run --release --bin tollgate-bench -- all --smoke            # seconds-long end-to-end check (CI)
cargo bench --bench sse
cargo bench --bench pricing
```

The bench installs what it needs from Debian when missing (`apt-get install -y
nginx wrk valgrind`) and LiteLLM into `target/litellm-venv` (`--litellm`).

The bench creates and drops its own database (`tollgate_bench_<pid>`), starts
`tollgate mock-upstream` and `tollgate serve` on free loopback ports, imports
`config/prices.json`, creates a key, and stops everything at the end.
`--write-md` replaces that run's block in the section below.

";

fn ttfb_section_head() -> String {
    format!(
        "{MD_BEGIN}\n\
## Time to first byte: direct vs through Tollgate

Streaming `POST /v1/responses` (`\"stream\": true`), each request sent either
directly to the simulated upstream or through `tollgate serve` in front of it,
interleaved A-B-B-A in the same run. Through Tollgate the request is
authenticated, priced, forwarded, its SSE stream tapped for usage on the way
back, and a ledger row written by the batching PostgreSQL writer (the run
checks the row count afterwards). The client records, from the moment it
starts sending: the response headers, the **first body byte (TTFB)**, the
first complete SSE event, and the last byte.

The simulated upstream answers at once (`mock_ttfb_ms` 0, no pause between
events), so the \"added\" columns are Tollgate's whole cost on that path: the
extra loopback hop plus its own work. The direct figures are a few hundred
microseconds, so ratios come out large for small absolute additions; the added
microseconds are the figure to read. Buffering would show as a first byte as
late as the last byte; `--delay-ms D` spreads the events out to make that
visible on a human scale. The simulated upstream writes one event per body
chunk, so the first byte and the first event coincide here.

With more requests in flight than cores, the two cores (shared by the client,
the simulated upstream, Tollgate, PostgreSQL and whatever else the machine is
running) are saturated: the through figures then include waiting for CPU
behind other requests' gateway work, which is a throughput limit of this box,
not a per-stream delay. Compare the concurrency-1 block for the per-request
cost.

p99 of 200 requests per route is the second-slowest request, so on this box it
mostly measures scheduling noise: expect its ratio to move by several times
from one run to the next. p50 is the steadier figure, and steadiest at
concurrency 1.

"
    )
}

/// Replaces (or adds) this run's block inside the ttfb section of the file.
fn write_markdown(path: &Path, block: &str, key: &str) -> Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => MD_INTRO.to_owned(),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    let (before, section, after) = match (existing.find(MD_BEGIN), existing.find(MD_END)) {
        (Some(begin), Some(end)) if begin < end => (
            existing[..begin].to_owned(),
            existing[begin..end].to_owned(),
            existing[end + MD_END.len()..].to_owned(),
        ),
        (None, None) => {
            let mut before = existing.clone();
            if !before.ends_with("\n\n") {
                before.push_str(if before.ends_with('\n') { "\n" } else { "\n\n" });
            }
            (before, String::new(), "\n".to_owned())
        }
        _ => bail!(
            "{} has unbalanced {MD_BEGIN} / {MD_END} markers",
            path.display()
        ),
    };
    // Keep the other runs' blocks, replace this one, order by key.
    let mut blocks: Vec<(String, String)> = Vec::new();
    let mut rest = section.as_str();
    while let Some(start) = rest.find("<!-- ttfb:c") {
        let tail = &rest[start + "<!-- ttfb:".len()..];
        let Some(colon) = tail.find(':') else { break };
        let other = &tail[..colon];
        let end_marker = format!("<!-- ttfb:{other}:end -->");
        let Some(end) = rest.find(&end_marker) else {
            bail!("{} has no {end_marker}", path.display());
        };
        let end = end + end_marker.len();
        if other != key {
            blocks.push((
                other.to_owned(),
                format!("{}\n", rest[start..end].trim_end()),
            ));
        }
        rest = &rest[end..];
    }
    blocks.push((key.to_owned(), block.to_owned()));
    blocks.sort_by_key(|(k, _)| block_order(k));
    let mut out = before;
    out.push_str(&ttfb_section_head());
    let joined: Vec<&str> = blocks.iter().map(|(_, b)| b.as_str()).collect();
    out.push_str(&joined.join("\n"));
    out.push_str(MD_END);
    out.push_str(&after);
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
}

/// `c16-d5` → (16, 5).
fn block_order(key: &str) -> (u64, u64) {
    let mut parts = key.split('-');
    let mut number = |prefix: char| {
        parts
            .next()
            .and_then(|p| p.strip_prefix(prefix))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let concurrency = number('c');
    let delay = number('d');
    (concurrency, delay)
}

// ---------------------------------------------------------------------------
// Ledger check

struct LedgerCheck {
    total: i64,
    measured: i64,
    warmup: i64,
}

/// Waits for the writer to store `expected` rows, then checks there are
/// exactly that many and that each is a completed, reported, priced request.
async fn check_ledger(db_url: &str, measured: usize, warmup: usize) -> Result<LedgerCheck> {
    let expected = i64::try_from(measured + warmup)?;
    let (input, cached, output, reasoning) = USAGE;
    let mut conn = sqlx::PgConnection::connect(db_url).await?;
    let count = "SELECT count(*), count(*) FILTER (WHERE status = 'completed' \
        AND usage_source = 'reported' AND stream AND input_tokens = $1 \
        AND cached_tokens = $2 AND output_tokens = $3 AND reasoning_tokens = $4 \
        AND cost IS NOT NULL) FROM usage_ledger";
    let deadline = Instant::now() + LEDGER_TIMEOUT;
    let mut counts = (0, 0);
    for settle in [false, true] {
        loop {
            counts = sqlx::query_as(count)
                .bind(input)
                .bind(cached)
                .bind(output)
                .bind(reasoning)
                .fetch_one(&mut conn)
                .await?;
            if settle || counts.0 >= expected || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Give a late extra row the chance to show up before judging.
        if !settle {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let _ = conn.close().await;
    let (total, good): (i64, i64) = counts;
    println!(
        "ledger: {total} rows (expected {expected} = {measured} measured + {warmup} warm-up \
         requests through Tollgate), {good} of them completed, usage reported, priced"
    );
    if total != expected || good != expected {
        bail!("ledger check failed: {total} rows, {good} as expected, wanted {expected}");
    }
    Ok(LedgerCheck {
        total,
        measured: i64::try_from(measured)?,
        warmup: i64::try_from(warmup)?,
    })
}

// ---------------------------------------------------------------------------
// The ttfb command

async fn ttfb(args: TtfbArgs) -> Result<Vec<stack::SummaryRow>> {
    if args.requests < 4 {
        bail!("--requests must be at least 4");
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let load_start = load_average();
    let mut stack = stack::Stack::start(stack::StackOptions::default()).await?;
    let (root, client) = (stack.root.clone(), stack.client.clone());
    let (mock_base, gateway_base, key) = (
        stack.mock_base.clone(),
        stack.gateway_base.clone(),
        stack.key.clone(),
    );

    let direct = Arc::new(Target {
        url: format!("{mock_base}/v1/responses"),
        authorization: format!("Bearer {UPSTREAM_KEY}"),
        body: request_body(MODEL, args.delay_ms)?,
    });
    let through = Arc::new(Target {
        url: format!("{gateway_base}/v1/responses"),
        authorization: format!("Bearer {key}"),
        body: request_body(&format!("{MODEL_PREFIX}{MODEL}"), args.delay_ms)?,
    });

    println!(
        "tollgate-bench ttfb: {} requests, concurrency {}, warm-up {}{}",
        args.requests,
        args.concurrency,
        args.warmup,
        if args.delay_ms > 0 {
            format!(", {} ms between events", args.delay_ms)
        } else {
            String::new()
        }
    );
    let warmup = run_batch(&client, &direct, &through, args.warmup, args.concurrency).await?;
    let started = Instant::now();
    let samples = run_batch(&client, &direct, &through, args.requests, args.concurrency).await?;
    let elapsed = started.elapsed();
    let load_end = load_average();

    let incomplete = samples
        .iter()
        .chain(&warmup)
        .filter(|s| !s.completed)
        .count();
    if incomplete > 0 {
        stack.children.check_alive()?;
        bail!("{incomplete} responses did not end with a response.completed event");
    }
    let ledger = check_ledger(
        &stack.db.url,
        through_count(args.requests),
        through_count(args.warmup),
    )
    .await?;
    let postgres = {
        let mut conn = sqlx::PgConnection::connect(&stack.db.url).await?;
        let (version,): (String,) = sqlx::query_as("SHOW server_version")
            .fetch_one(&mut conn)
            .await?;
        let _ = conn.close().await;
        version
    };

    // Stop the gateway before dropping its database.
    stack.stop().await?;

    let facts = RunFacts {
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        command: format!(
            "cargo run --release --bin tollgate-bench -- {}",
            std::env::args().skip(1).collect::<Vec<_>>().join(" ")
        ),
        nproc: command_line_output("nproc", &[]),
        cpu: cpu_model(),
        rustc: command_line_output("rustc", &["--version"]),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned()),
        postgres,
        revision: git_revision(&root),
        load_start,
        load_end,
    };
    println!(
        "all {} responses ended with response.completed; measured phase took {:.0} ms\n",
        samples.len() + warmup.len(),
        elapsed.as_secs_f64() * 1e3
    );
    let block = run_block(&args, &facts, &samples, elapsed, &ledger);
    println!("{block}");
    if args.write_md {
        let path = root.join(MD_FILE);
        write_markdown(&path, &block, &block_key(&args))?;
        println!("wrote {}", path.display());
    }
    let pick = |route: Route| {
        summarize(
            samples
                .iter()
                .filter(|s| s.route == route)
                .map(|s| s.first_byte)
                .collect(),
        )
    };
    let (d, t) = (pick(Route::Direct), pick(Route::Through));
    let added = |t: Duration, d: Duration| t.as_secs_f64() * 1e6 - d.as_secs_f64() * 1e6;
    Ok(vec![stack::SummaryRow::new(
        "stream TTFB added",
        format!(
            "p50 {:+.0} µs, p99 {:+.0} µs (concurrency {})",
            added(t.p50, d.p50),
            added(t.p99, d.p99),
            args.concurrency
        ),
        "p99 ≤ +1 ms",
        Some(added(t.p99, d.p99) <= 1000.0),
    )])
}
