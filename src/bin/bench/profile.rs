//! `profile`: where the CPU goes in a saturated non-streaming run. A
//! system-wide `perf record` (call graphs from DWARF) samples the machine
//! while wrk drives the Tollgate route; the samples are split by process
//! (gateway, mock upstream, PostgreSQL, wrk, kernel idle), the gateway's
//! by stage (the first Tollgate or library component found walking each
//! stack from its leaf) and by the crate or library of the leaf frame.
//! Folded stacks are written for a flame graph (rendered when
//! `inferno-flamegraph` is on PATH). It measures shares and CPU per request,
//! never throughput (that is `throughput`'s).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::load_average;
use super::scenarios::{endpoints, limited_endpoint, run_wrk};
use super::stack::{
    cpu_seconds, ensure_tool, machine_line, this_command, write_section, Stack, StackOptions,
    SummaryRow,
};

pub(crate) struct ProfileOptions {
    pub seconds: u64,
    pub connections: usize,
    pub frequency: u32,
    /// Drive the key under every kind of limit instead of the unlimited one.
    pub limited: bool,
    pub out: PathBuf,
    pub write_md: bool,
}

/// Who a sample belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Owner {
    Gateway,
    Mock,
    Postgres,
    Wrk,
    Idle,
    Other,
}

impl Owner {
    fn label(self) -> &'static str {
        match self {
            Owner::Gateway => "Tollgate (`tollgate serve`)",
            Owner::Mock => "mock upstream",
            Owner::Postgres => "PostgreSQL (all processes)",
            Owner::Wrk => "wrk (load generator)",
            Owner::Idle => "idle",
            Owner::Other => "other",
        }
    }
}

/// Stages of the gateway, tried in this order on each frame from the leaf
/// upward: the first that matches names the sample. A pattern is a
/// substring of the demangled symbol.
const STAGES: &[(&str, &[&str])] = &[
    (
        "usage capture (response scan, SSE)",
        &["tollgate::usage::", "tollgate::sse::"],
    ),
    ("pricing", &["tollgate::pricing::"]),
    (
        "metrics and tracing",
        &[
            "tollgate::telemetry::",
            "metrics::",
            "tracing::",
            "tracing_core::",
        ],
    ),
    ("authentication", &["tollgate::auth::"]),
    ("limits (leased admission)", &["tollgate::limits::"]),
    (
        "ledger writer (batching, binds, sqlx, INSERT)",
        &["tollgate::ledger::", "sqlx_core::", "sqlx_postgres::"],
    ),
    (
        "request validation and routing",
        &[
            "tollgate::proxy::validate",
            "tollgate::proxy::request",
            "tollgate::proxy::route",
            "tollgate::proxy::admit",
        ],
    ),
    (
        "upstream client (hyper-util pool, client connection)",
        &[
            "tollgate::proxy::upstream",
            "hyper_util::client",
            "hyper::client::",
            "rustls::",
        ],
    ),
    ("response body relay (tap)", &["tollgate::proxy::tap"]),
    ("proxy handler (other)", &["tollgate::proxy::"]),
    (
        "HTTP server (hyper server connection, router, layers)",
        &[
            "hyper::server::",
            "hyper_util::server",
            "axum::",
            "tower::",
            "tower_http::",
            "tollgate::server",
            "tollgate::http",
            "tollgate::connection",
        ],
    ),
    (
        "HTTP/1 codec (either side)",
        &["hyper::proto::", "http::", "httparse::"],
    ),
    (
        "tokio runtime (scheduler, timers, I/O driver)",
        &["tokio::"],
    ),
];

const KERNEL_LEAF: &str = "kernel (socket reads and writes on loopback, epoll, wake-ups)";

fn stage_of(frames: &[Frame]) -> &'static str {
    if frames.first().is_some_and(Frame::is_kernel) {
        return KERNEL_LEAF;
    }
    for frame in frames {
        for (stage, patterns) in STAGES {
            if patterns.iter().any(|p| frame.symbol.contains(p)) {
                return stage;
            }
        }
    }
    match frames.first() {
        Some(f) if is_allocator(&f.symbol) => "malloc/free (outside any stage above)",
        _ => "other",
    }
}

fn is_allocator(symbol: &str) -> bool {
    [
        "malloc", "free", "realloc", "calloc", "_int_", "tcache", "cfree",
    ]
    .iter()
    .any(|p| symbol.contains(p))
}

/// The crate (Rust), library (C) or `kernel` of a leaf frame.
fn library_of(frame: &Frame) -> String {
    if frame.is_kernel() {
        return "kernel".to_owned();
    }
    let symbol = frame.symbol.trim_start_matches('<');
    let c_name = !symbol.contains("::");
    // Inlined libc frames may be reported inside the caller's object.
    if c_name && is_allocator(symbol) {
        return "libc malloc/free".to_owned();
    }
    if c_name && symbol.trim_start_matches('_').starts_with("mem") {
        return "libc memcpy/memmove/memset".to_owned();
    }
    if frame.dso.contains("libc") {
        return "libc (other)".to_owned();
    }
    if symbol.starts_with("[unknown]") || symbol.is_empty() {
        return format!("unknown ({})", short_dso(&frame.dso));
    }
    match symbol.split("::").next() {
        Some(krate) if symbol.contains("::") => krate.to_owned(),
        _ => format!(
            "{} ({})",
            symbol.split('+').next().unwrap_or(symbol),
            short_dso(&frame.dso)
        ),
    }
}

fn short_dso(dso: &str) -> &str {
    dso.rsplit('/').next().unwrap_or(dso)
}

struct Frame {
    symbol: String,
    dso: String,
}

impl Frame {
    fn is_kernel(&self) -> bool {
        self.dso.contains("kernel") || self.dso.contains("vmlinux")
    }
}

struct Sample {
    owner: Owner,
    /// Leaf first.
    frames: Vec<Frame>,
}

/// Parses `perf script -F comm,pid,tid,ip,sym,dso`: a header line per
/// sample (`comm pid/tid`), then its frames indented, then a blank line.
fn parse_script(text: &str, owner_of: &dyn Fn(u32, &str) -> Owner) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut current: Option<Sample> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            samples.extend(current.take());
            continue;
        }
        if !line.starts_with([' ', '\t']) {
            samples.extend(current.take());
            // `comm` may hold spaces: the pid/tid is the last field.
            let mut fields = line.split_whitespace().rev();
            let pid_tid = fields.next().unwrap_or("");
            let comm: Vec<&str> = fields.collect();
            let comm = comm.into_iter().rev().collect::<Vec<_>>().join(" ");
            let pid = pid_tid
                .split('/')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            current = Some(Sample {
                owner: owner_of(pid, &comm),
                frames: Vec::new(),
            });
            continue;
        }
        let Some(sample) = current.as_mut() else {
            continue;
        };
        let body = line.trim();
        let rest = body
            .split_once(char::is_whitespace)
            .map_or("", |(_, r)| r)
            .trim();
        let (symbol, dso) = match rest.rfind(" (") {
            Some(at) if rest.ends_with(')') => (&rest[..at], &rest[at + 2..rest.len() - 1]),
            _ => (rest, ""),
        };
        sample.frames.push(Frame {
            symbol: strip_offset(symbol).to_owned(),
            dso: dso.to_owned(),
        });
    }
    samples.extend(current.take());
    for sample in &mut samples {
        for i in (0..sample.frames.len().saturating_sub(1)).rev() {
            if sample.frames[i].dso == "inlined" {
                sample.frames[i].dso = sample.frames[i + 1].dso.clone();
            }
        }
    }
    samples
}

/// `foo+0x1f` → `foo`; Rust's legacy hash suffix `::h0123…` dropped.
fn strip_offset(symbol: &str) -> &str {
    let symbol = match symbol.rfind("+0x") {
        Some(at) => &symbol[..at],
        None => symbol,
    };
    match symbol.rfind("::h") {
        Some(at) if symbol.len() - at == 19 => &symbol[..at],
        _ => symbol,
    }
}

/// `root;…;leaf count` lines for a flame graph of the gateway's samples.
fn folded(samples: &[Sample]) -> String {
    let mut counts: HashMap<String, u64> = HashMap::new();
    for sample in samples.iter().filter(|s| s.owner == Owner::Gateway) {
        let stack: Vec<&str> = sample
            .frames
            .iter()
            .rev()
            .map(|f| f.symbol.as_str())
            .collect();
        *counts.entry(stack.join(";").replace(' ', "_")).or_default() += 1;
    }
    let mut lines: Vec<(String, u64)> = counts.into_iter().collect();
    lines.sort();
    lines
        .into_iter()
        .map(|(s, n)| format!("{s} {n}\n"))
        .collect()
}

fn shares<K: std::hash::Hash + Eq + Clone>(keys: impl Iterator<Item = K>) -> Vec<(K, u64)> {
    let mut counts: HashMap<K, u64> = HashMap::new();
    for key in keys {
        *counts.entry(key).or_default() += 1;
    }
    let mut out: Vec<(K, u64)> = counts.into_iter().collect();
    out.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    out
}

fn pct(n: u64, total: u64) -> f64 {
    n as f64 * 100.0 / total.max(1) as f64
}

pub(crate) async fn profile(opts: ProfileOptions) -> Result<Vec<SummaryRow>> {
    let perf = ensure_tool("perf", "linux-perf")?;
    let load_start = load_average();
    let stack = Stack::start(StackOptions::default()).await?;
    let unlimited = endpoints(&stack, "", None)
        .into_iter()
        .find(|e| e.name == "tollgate")
        .context("no tollgate route")?;
    let target = if opts.limited {
        limited_endpoint(&stack, &unlimited)
    } else {
        unlimited
    };
    run_wrk(stack.work.path(), &target, opts.connections, 1, 1)?;
    let gateway = stack.gateway_pid()?;
    let mock = stack.mock_pid()?;
    let backends = stack.database_backend_pids().await.unwrap_or_default();
    let cpu_before = (
        cpu_seconds(gateway),
        cpu_seconds(mock),
        backends.iter().map(|&p| cpu_seconds(p)).sum::<f64>(),
    );

    std::fs::create_dir_all(&opts.out)?;
    let data = opts.out.join("perf.data");
    // perf records for longer than wrk runs; wrk starts once perf is up.
    let mut recorder = Command::new(&perf)
        .args(["record", "-a", "-q", "--call-graph", "dwarf,16384", "-F"])
        .arg(opts.frequency.to_string())
        .arg("-o")
        .arg(&data)
        .args(["--", "sleep"])
        .arg((opts.seconds + 2).to_string())
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start perf record")?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let result = run_wrk(
        stack.work.path(),
        &target,
        opts.connections,
        1,
        opts.seconds,
    )?;
    let cpu_after = (
        cpu_seconds(gateway),
        cpu_seconds(mock),
        backends.iter().map(|&p| cpu_seconds(p)).sum::<f64>(),
    );
    let status = recorder.wait()?;
    if !status.success() {
        bail!("perf record failed: {status}");
    }
    let per_request =
        |before: f64, after: f64| (after - before) / result.requests.max(1) as f64 * 1e6;
    let cpu_us = (
        per_request(cpu_before.0, cpu_after.0),
        per_request(cpu_before.1, cpu_after.1),
        per_request(cpu_before.2, cpu_after.2),
    );
    stack.stop().await?;

    println!("profile: perf script (unwinding the call graphs takes a while)");
    let script = Command::new(&perf)
        .args(["script", "-F", "comm,pid,tid,ip,sym,dso", "-i"])
        .arg(&data)
        .output()
        .context("cannot run perf script")?;
    if !script.status.success() {
        bail!(
            "perf script failed: {}",
            String::from_utf8_lossy(&script.stderr)
        );
    }
    let text = String::from_utf8_lossy(&script.stdout);
    let owner_of = |pid: u32, comm: &str| match pid {
        0 => Owner::Idle,
        p if p == gateway => Owner::Gateway,
        p if p == mock => Owner::Mock,
        _ if comm.starts_with("postgres") => Owner::Postgres,
        _ if comm.starts_with("wrk") => Owner::Wrk,
        _ => Owner::Other,
    };
    let samples = parse_script(&text, &owner_of);
    let folded_path = opts.out.join("tollgate.folded");
    std::fs::write(&folded_path, folded(&samples))?;
    let svg = render_flamegraph(&folded_path);
    let md = report(
        &opts,
        &load_start,
        &samples,
        &result,
        cpu_us,
        svg.as_deref(),
    );
    println!("{md}");
    if opts.write_md {
        write_section("profile", &md)?;
    }
    let gateway_samples = samples.iter().filter(|s| s.owner == Owner::Gateway).count() as u64;
    Ok(vec![SummaryRow::new(
        "profile",
        format!(
            "{:.0} req/s under perf; gateway {:.1} µs CPU/request, {} samples",
            result.rps, cpu_us.0, gateway_samples
        ),
        "-",
        None,
    )])
}

fn render_flamegraph(folded: &Path) -> Option<PathBuf> {
    let svg = folded.with_extension("svg");
    let file = std::fs::File::create(&svg).ok()?;
    let status = Command::new("inferno-flamegraph")
        .args(["--title", "tollgate serve, saturated non-streaming run"])
        .arg(folded)
        .stdout(file)
        .status()
        .ok()?;
    status.success().then_some(svg)
}

fn report(
    opts: &ProfileOptions,
    load_start: &str,
    samples: &[Sample],
    result: &super::scenarios::WrkResult,
    (gateway_us, mock_us, db_us): (f64, f64, f64),
    svg: Option<&Path>,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## Profile of a saturated run (issue 20)\n");
    let _ = writeln!(md, "`{}`\n", this_command());
    let _ = writeln!(md, "{}\n", machine_line(load_start));
    let _ = writeln!(
        md,
        "`perf record -a --call-graph dwarf -F {}` over the whole machine while `wrk -t1 -c{} -d{}s` drove \
         the `{}` route of the throughput scenario (non-streaming create, ledger on): {:.0} req/s, \
         p50 {:.0} µs, p99 {:.0} µs under the profiler. CPU per request from `/proc`: gateway {:.1} µs, \
         mock upstream {:.1} µs, PostgreSQL backends {:.1} µs.\n",
        opts.frequency, opts.connections, opts.seconds, if opts.limited { "tollgate+limits" } else { "tollgate" }, result.rps, result.p50_us, result.p99_us,
        gateway_us, mock_us, db_us
    );
    let total = samples.len() as u64;
    md.push_str("| process | samples | share of the machine |\n|---|---:|---:|\n");
    for (owner, n) in shares(samples.iter().map(|s| s.owner)) {
        let _ = writeln!(md, "| {} | {n} | {:.1} % |", owner.label(), pct(n, total));
    }
    let gateway: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.owner == Owner::Gateway)
        .collect();
    let g = gateway.len() as u64;
    let _ = writeln!(
        md,
        "\nThe gateway's samples by stage: the first component met walking each stack from its leaf \
         (so a `malloc` called while scanning the usage counts as usage capture), with its share of the \
         gateway's CPU and that share of the {gateway_us:.1} µs per request:\n"
    );
    md.push_str("| stage | samples | share | µs/request |\n|---|---:|---:|---:|\n");
    for (stage, n) in shares(gateway.iter().map(|s| stage_of(&s.frames))) {
        let share = pct(n, g);
        let _ = writeln!(
            md,
            "| {stage} | {n} | {share:.1} % | {:.1} |",
            gateway_us * share / 100.0
        );
    }
    let _ = writeln!(
        md,
        "\nThe gateway's samples by the crate or library of the leaf frame (self time), top 15:\n"
    );
    md.push_str("| leaf in | samples | share |\n|---|---:|---:|\n");
    for (library, n) in shares(
        gateway
            .iter()
            .filter_map(|s| s.frames.first())
            .map(library_of),
    )
    .into_iter()
    .take(15)
    {
        let _ = writeln!(md, "| {library} | {n} | {:.1} % |", pct(n, g));
    }
    let _ = writeln!(md, "\nHottest leaf functions of the gateway, top 15:\n");
    md.push_str("| function | samples | share |\n|---|---:|---:|\n");
    for (symbol, n) in shares(
        gateway
            .iter()
            .filter_map(|s| s.frames.first())
            .map(|f| f.symbol.clone()),
    )
    .into_iter()
    .take(15)
    {
        let shown: String = symbol.chars().take(110).collect();
        let _ = writeln!(
            md,
            "| `{}` | {n} | {:.1} % |",
            shown.replace('|', "\\|"),
            pct(n, g)
        );
    }
    let _ = writeln!(
        md,
        "\nFolded stacks of the gateway: `{}`{}.",
        opts.out.join("tollgate.folded").display(),
        svg.map_or(
            String::from(" (install `inferno` for an SVG flame graph)"),
            |p| format!(", flame graph `{}`", p.display())
        )
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "tokio-rt-worker 42/43\n\
        \t    55d0 tollgate::usage::JsonBodyCollector::summary+0x1f (/x/tollgate)\n\
        \t    55d1 hyper::proto::h1::dispatch::Dispatcher::poll+0x2 (/x/tollgate)\n\
        \n\
        postgres 77/77\n\
        \tffff0 copy_user_generic+0x5 ([kernel.kallsyms])\n\
        \n\
        tokio-rt-worker 42/44\n\
        \t    7f00 _int_free (inlined)\n\
        \t    7f00 __GI___libc_free+0x10 (/usr/lib/x86_64-linux-gnu/libc.so.6)\n\
        \t    55d2 tokio::runtime::task::harness::poll+0x9 (/x/tollgate)\n";

    #[test]
    fn samples_are_split_by_process_and_staged_from_the_leaf() {
        let owner_of = |pid: u32, comm: &str| match pid {
            42 => Owner::Gateway,
            _ if comm == "postgres" => Owner::Postgres,
            _ => Owner::Other,
        };
        let samples = parse_script(SCRIPT, &owner_of);
        assert_eq!(samples.len(), 3);
        assert!(samples[1].owner == Owner::Postgres);
        assert_eq!(stage_of(&samples[0].frames), STAGES[0].0);
        assert_eq!(
            stage_of(&samples[2].frames),
            "tokio runtime (scheduler, timers, I/O driver)"
        );
        assert_eq!(library_of(&samples[2].frames[0]), "libc malloc/free");
        assert_eq!(library_of(&samples[0].frames[0]), "tollgate");
        assert_eq!(stage_of(&samples[1].frames), KERNEL_LEAF);
        assert_eq!(
            folded(&samples),
            "hyper::proto::h1::dispatch::Dispatcher::poll;tollgate::usage::JsonBodyCollector::summary 1\n\
             tokio::runtime::task::harness::poll;__GI___libc_free;_int_free 1\n"
        );
    }
}
