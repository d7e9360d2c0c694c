//! The scenarios of issue 7 besides `ttfb`: `throughput` (saturation with
//! wrk, open-loop added latency, CPU per request, ledger rows under load),
//! `streams` (event throughput, many open streams), `ledger` (the batched
//! writer alone, and its backlog behind a locked table) and `callgrind`
//! (instructions per proxied request). Each returns its summary rows and
//! writes its BENCHMARKS.md section when asked.

use std::fmt::Write as _;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use sqlx::Connection;

use super::stack::{
    cpu_seconds, ensure_tool, machine_line, rss_kib, start_nginx, this_command, write_section,
    Stack, StackOptions, SummaryRow,
};
use super::{load_average, percentile, MODEL, MODEL_PREFIX, UPSTREAM_KEY};

/// A non-streaming request body (about 1.2 KB of JSON back).
fn json_body(model: &str) -> String {
    serde_json::json!({
        "model": model,
        "input": "Benchmark",
        "metadata": {"mock_usage": "100,0,200,0", "mock_deltas": "8"},
    })
    .to_string()
}

fn stream_body(model: &str, deltas: usize, delay_ms: u64) -> String {
    serde_json::json!({
        "model": model,
        "input": "Benchmark",
        "stream": true,
        "metadata": {
            "mock_usage": "100,0,200,0",
            "mock_deltas": deltas.to_string(),
            "mock_delta_bytes": "16",
            "mock_delay_ms": delay_ms.to_string(),
            "mock_ttfb_ms": "0",
        },
    })
    .to_string()
}

#[derive(Clone)]
pub(crate) struct Endpoint {
    pub name: &'static str,
    url: String,
    authorization: String,
    body: Bytes,
}

pub(crate) fn endpoints(stack: &Stack, nginx: &str, stream: Option<(usize, u64)>) -> Vec<Endpoint> {
    let body = |model: &str| {
        Bytes::from(match stream {
            Some((deltas, delay)) => stream_body(model, deltas, delay),
            None => json_body(model),
        })
    };
    let through_model = format!("{MODEL_PREFIX}{MODEL}");
    let mut out = vec![Endpoint {
        name: "direct",
        url: format!("{}/v1/responses", stack.mock_base),
        authorization: format!("Bearer {UPSTREAM_KEY}"),
        body: body(MODEL),
    }];
    if !nginx.is_empty() {
        out.push(Endpoint {
            name: "nginx",
            url: format!("{nginx}/v1/responses"),
            authorization: format!("Bearer {UPSTREAM_KEY}"),
            body: body(MODEL),
        });
    }
    out.push(Endpoint {
        name: "tollgate",
        url: format!("{}/v1/responses", stack.gateway_base),
        authorization: format!("Bearer {}", stack.key),
        body: body(&through_model),
    });
    out
}

/// The Tollgate route again, with a key under every kind of limit (on the
/// key and its tenant): the cost of admission and settlement.
pub(crate) fn limited_endpoint(stack: &Stack, tollgate: &Endpoint) -> Endpoint {
    Endpoint {
        name: "tollgate+limits",
        authorization: format!("Bearer {}", stack.limited_key),
        ..tollgate.clone()
    }
}

// ---------------------------------------------------------------------------
// wrk

pub(crate) struct WrkResult {
    pub requests: u64,
    seconds: f64,
    pub rps: f64,
    errors: u64,
    /// wrk's `--latency` percentiles (closed loop, at saturation), µs.
    pub p50_us: f64,
    pub p99_us: f64,
    /// CPU seconds of wrk itself (the load generator) over the run.
    wrk_cpu: f64,
}

pub(crate) fn run_wrk(
    work: &std::path::Path,
    endpoint: &Endpoint,
    connections: usize,
    threads: usize,
    seconds: u64,
) -> Result<WrkResult> {
    let wrk = ensure_tool("wrk", "wrk")?;
    let script = work.join(format!("{}.lua", endpoint.name));
    let body = String::from_utf8_lossy(&endpoint.body);
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = [==[{body}]==]\n\
             wrk.headers[\"Content-Type\"] = \"application/json\"\n\
             wrk.headers[\"Authorization\"] = \"{}\"\n",
            endpoint.authorization
        ),
    )?;
    // Through a shell that prints its own /proc stat after wrk: its
    // cutime/cstime are wrk's CPU.
    let output = Command::new("sh")
        .arg("-c")
        .arg("\"$@\"; s=$?; cat /proc/$$/stat >&2; exit $s")
        .arg("sh")
        .arg(wrk)
        .arg("--latency")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("-s")
        .arg(&script)
        .arg(&endpoint.url)
        .output()
        .context("cannot run wrk")?;
    let wrk_cpu = String::from_utf8_lossy(&output.stderr)
        .lines()
        .last()
        .and_then(children_cpu)
        .unwrap_or(0.0);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut result = WrkResult {
        requests: 0,
        seconds: seconds as f64,
        rps: 0.0,
        errors: 0,
        p50_us: 0.0,
        p99_us: 0.0,
        wrk_cpu,
    };
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("50%") {
            result.p50_us = parse_wrk_time(rest).map_or(0.0, |s| s * 1e6);
        } else if let Some(rest) = line.strip_prefix("99%") {
            result.p99_us = parse_wrk_time(rest).map_or(0.0, |s| s * 1e6);
        } else if let Some(rest) = line.strip_prefix("Requests/sec:") {
            result.rps = rest.trim().parse().unwrap_or(0.0);
        } else if line.contains(" requests in ") {
            let mut parts = line.split_whitespace();
            result.requests = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            if let Some(time) = line
                .split(" requests in ")
                .nth(1)
                .and_then(|t| t.split(',').next())
            {
                result.seconds = parse_wrk_time(time).unwrap_or(result.seconds);
            }
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            result.errors += rest.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            result.errors += rest
                .split(',')
                .filter_map(|p| p.split_whitespace().last())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Ok(result)
}

/// cutime + cstime (waited-for children) of a `/proc/<pid>/stat` line.
fn children_cpu(stat: &str) -> Option<f64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let cutime: f64 = fields.get(13)?.parse().ok()?;
    let cstime: f64 = fields.get(14)?.parse().ok()?;
    Some((cutime + cstime) / super::stack::clock_ticks())
}

fn parse_wrk_time(text: &str) -> Option<f64> {
    let text = text.trim();
    if let Some(us) = text.strip_suffix("us") {
        return us.parse::<f64>().ok().map(|v| v / 1e6);
    }
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse::<f64>().ok().map(|v| v / 1e3);
    }
    if let Some(m) = text.strip_suffix('m') {
        return m.parse::<f64>().ok().map(|v| v * 60.0);
    }
    text.strip_suffix('s')?.parse().ok()
}

// ---------------------------------------------------------------------------
// Open-loop client

struct OpenLoop {
    latencies: Vec<Duration>,
    errors: u64,
    late_starts: u64,
}

/// Open loop in the manner of wrk2: `connections` keep-alive connections,
/// each sending its share of the requests on a fixed schedule (the whole
/// run is `rate` requests per second, spread evenly); each request is timed
/// from its *scheduled* start, so a slow server cannot slow the client down
/// and queueing shows (no coordinated omission). The client is a minimal
/// HTTP/1.1 writer/reader on raw sockets: a few µs of CPU per request, so it
/// can offer 10,000+ requests/s on this box where reqwest could not.
async fn open_loop(
    endpoint: &Endpoint,
    rate: f64,
    seconds: f64,
    connections: usize,
) -> Result<OpenLoop> {
    let rest = endpoint
        .url
        .strip_prefix("http://")
        .context("open loop: http:// URLs only")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        endpoint.authorization,
        endpoint.body.len()
    )
    .into_bytes();
    request.extend_from_slice(&endpoint.body);
    let request = Bytes::from(request);
    let authority = authority.to_owned();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = (rate * seconds).round() as u32;
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..connections as u32 {
        let (request, authority) = (request.clone(), authority.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let (mut errors, mut late) = (0_u64, 0_u64);
            let mut conn: Option<tokio::net::TcpStream> = None;
            let mut buf = Vec::with_capacity(16 * 1024);
            let mut i = k;
            while i < total {
                let scheduled = start + interval * i;
                i += connections as u32;
                let now = tokio::time::Instant::now();
                if scheduled > now {
                    tokio::time::sleep_until(scheduled).await;
                } else if now - scheduled > Duration::from_millis(1) {
                    late += 1;
                }
                let stream = match conn.as_mut() {
                    Some(stream) => stream,
                    None => match tokio::net::TcpStream::connect(&authority).await {
                        Ok(stream) => {
                            let _ = stream.set_nodelay(true);
                            conn.insert(stream)
                        }
                        Err(_) => {
                            errors += 1;
                            continue;
                        }
                    },
                };
                match exchange(stream, &request, &mut buf).await {
                    Ok(200) => latencies.push(scheduled.elapsed()),
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        conn = None;
                        buf.clear();
                    }
                }
            }
            (latencies, errors, late)
        });
    }
    let mut out = OpenLoop {
        latencies: Vec::with_capacity(total as usize),
        errors: 0,
        late_starts: 0,
    };
    while let Some(joined) = tasks.join_next().await {
        let (latencies, errors, late) = joined.context("open-loop connection panicked")?;
        out.latencies.extend(latencies);
        out.errors += errors;
        out.late_starts += late;
    }
    out.latencies.sort_unstable();
    Ok(out)
}

/// Appends what the socket has to `buf`; fails on EOF.
async fn read_more(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Result<()> {
    use tokio::io::AsyncReadExt;
    let len = buf.len();
    buf.resize(len + 16 * 1024, 0);
    match stream.read(&mut buf[len..]).await {
        Ok(n) if n > 0 => {
            buf.truncate(len + n);
            Ok(())
        }
        _ => {
            buf.truncate(len);
            bail!("connection closed")
        }
    }
}

/// Writes one request and reads its whole response (Content-Length or
/// chunked); the status code.
async fn exchange(
    stream: &mut tokio::net::TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> Result<u16> {
    use tokio::io::AsyncWriteExt;
    stream.write_all(request).await?;
    buf.clear();
    let head_end = loop {
        if let Some(pos) = memchr::memmem::find(buf, b"\r\n\r\n") {
            break pos + 4;
        }
        read_more(stream, buf).await?;
    };
    let head = std::str::from_utf8(&buf[..head_end])?.to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("bad status line")?;
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    if let Some(length) = header("content-length:") {
        let length: usize = length.parse()?;
        while buf.len() < head_end + length {
            read_more(stream, buf).await?;
        }
        return Ok(status);
    }
    if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        let mut pos = head_end;
        loop {
            let line_end = loop {
                if let Some(i) = memchr::memmem::find(&buf[pos..], b"\r\n") {
                    break pos + i;
                }
                read_more(stream, buf).await?;
            };
            let size_text = std::str::from_utf8(&buf[pos..line_end])?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
            // Chunk data and its CRLF; the last chunk is followed by an empty trailer line.
            let need = line_end + 2 + size + 2;
            while buf.len() < need {
                read_more(stream, buf).await?;
            }
            pos = need;
            if size == 0 {
                return Ok(status);
            }
        }
    }
    bail!("response without Content-Length or chunked encoding")
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

// ---------------------------------------------------------------------------
// throughput (+ open-loop latency, CPU per request, ledger rows under load)

pub(crate) struct ThroughputOptions {
    pub seconds: u64,
    pub connections: usize,
    pub threads: usize,
    pub latency_seconds: f64,
    pub litellm: bool,
    pub smoke: bool,
    pub write_md: bool,
}

struct Row {
    name: &'static str,
    rps: f64,
    requests: u64,
    seconds: f64,
    errors: u64,
    cpu: Option<f64>,
    p50_us: f64,
    p99_us: f64,
    /// wrk's CPU per request, µs.
    wrk_cpu_us: f64,
    /// The database backends' CPU per request (ledger rows), µs.
    db_cpu_us: Option<f64>,
}

pub(crate) async fn throughput(opts: ThroughputOptions) -> Result<Vec<SummaryRow>> {
    let load_start = load_average();
    let stack = Stack::start(StackOptions::default()).await?;
    let mut children_extra = super::Children::default();
    let (nginx, nginx_version) =
        start_nginx(&mut children_extra, stack.work.path(), stack.mock_port)?;
    // nginx answers once its workers are up.
    super::wait_ready(
        &stack.client,
        &format!("{nginx}/__mock/health"),
        &mut children_extra,
    )
    .await?;
    let nginx_pid = children_extra.pid("nginx").context("nginx not running")?;
    let mut targets = endpoints(&stack, &nginx, None);
    if let Some(tollgate) = targets.iter().find(|t| t.name == "tollgate") {
        targets.push(limited_endpoint(&stack, tollgate));
    }
    let wrk_version = super::command_line_output("sh", &["-c", "wrk -v 2>&1 | head -1"]);
    let gateway_pid = stack.gateway_pid()?;
    let mock_pid = stack.mock_pid()?;

    // Warm up each route (connections, caches, the price table).
    for target in &targets {
        run_wrk(stack.work.path(), target, opts.connections, opts.threads, 1)?;
    }
    let litellm = if opts.litellm {
        match super::litellm::start(&mut children_extra, &stack).await {
            Ok(base) => Some(Endpoint {
                name: "litellm",
                url: format!("{base}/v1/responses"),
                authorization: format!("Bearer {}", super::litellm::MASTER_KEY),
                body: Bytes::from(json_body(MODEL)),
            }),
            Err(err) => {
                println!("LiteLLM not measured: {err:#}");
                None
            }
        }
    } else {
        None
    };

    println!(
        "throughput: wrk -t{} -c{} -d{}s per route",
        opts.threads, opts.connections, opts.seconds
    );
    let mut rows = Vec::new();
    let mut ledger_rows = (0_i64, 0_i64, 0.0_f64);
    let mut mock_cpu_per_request = 0.0;
    let all_targets: Vec<Endpoint> = targets.iter().cloned().chain(litellm.clone()).collect();
    for target in &all_targets {
        let cpu_pid = match target.name {
            "tollgate" | "tollgate+limits" => Some(gateway_pid),
            "nginx" => Some(nginx_pid),
            "direct" => Some(mock_pid),
            _ => None,
        };
        let before_rows = if target.name == "tollgate" {
            stack.ledger_count().await?
        } else {
            0
        };
        let cpu_before = cpu_pid.map(cpu_seconds);
        let db_pids = if target.name.starts_with("tollgate") {
            stack.database_backend_pids().await.unwrap_or_default()
        } else {
            Vec::new()
        };
        let db_before: f64 = db_pids.iter().map(|&p| cpu_seconds(p)).sum();
        let result = run_wrk(
            stack.work.path(),
            target,
            opts.connections,
            opts.threads,
            opts.seconds,
        )?;
        let cpu = cpu_pid
            .zip(cpu_before)
            .map(|(pid, before)| (cpu_seconds(pid) - before) / result.requests.max(1) as f64);
        let db_cpu_us = (!db_pids.is_empty()).then(|| {
            let after: f64 = db_pids.iter().map(|&p| cpu_seconds(p)).sum();
            (after - db_before) / result.requests.max(1) as f64 * 1e6
        });
        if target.name == "direct" {
            mock_cpu_per_request = cpu.unwrap_or(0.0);
        }
        if target.name == "tollgate" {
            let at_end = stack.ledger_count().await?;
            let settled = stack
                .ledger_settled(Some(before_rows + result.requests as i64))
                .await?;
            ledger_rows = (at_end - before_rows, settled - before_rows, result.seconds);
        }
        let wrk_cpu_us = result.wrk_cpu / result.requests.max(1) as f64 * 1e6;
        println!(
            "  {:<9} {:>9.0} req/s ({} requests in {:.2} s, {} errors; p50 {:.0} µs, p99 {:.0} µs; \
             CPU µs/request: server {:.1}, database {:.1}, wrk {:.1})",
            target.name,
            result.rps,
            result.requests,
            result.seconds,
            result.errors,
            result.p50_us,
            result.p99_us,
            cpu.unwrap_or(0.0) * 1e6,
            db_cpu_us.unwrap_or(0.0),
            wrk_cpu_us
        );
        rows.push(Row {
            name: target.name,
            rps: result.rps,
            requests: result.requests,
            seconds: result.seconds,
            errors: result.errors,
            cpu,
            p50_us: result.p50_us,
            p99_us: result.p99_us,
            wrk_cpu_us,
            db_cpu_us,
        });
    }
    let rps = |name: &str| rows.iter().find(|r| r.name == name).map_or(0.0, |r| r.rps);
    let (direct, nginx_rps, tollgate) = (rps("direct"), rps("nginx"), rps("tollgate"));

    // Open-loop added latency at half of nginx's saturation rate (the
    // issue's rate), and at half of Tollgate's own, which tells the
    // per-request cost apart from overload when Tollgate saturates first.
    let rate = (nginx_rps / 2.0).max(10.0);
    let own_rate = (tollgate / 2.0).max(10.0);
    // Half the limited route's own saturation: what limits add where they
    // are not the bottleneck.
    let limited_rate = (rps("tollgate+limits") / 2.0).max(10.0);
    let mut latency: Vec<(f64, &'static str, OpenLoop)> = Vec::new();
    for (label, r) in [
        ("nginx", rate),
        ("Tollgate", own_rate),
        ("Tollgate with limits", limited_rate),
    ] {
        println!(
            "latency: open loop at {r:.0} req/s (half {label}'s saturation) for {} s per route",
            opts.latency_seconds
        );
        for target in &targets {
            // The limited route only at its own rate (above its saturation
            // an open loop measures a growing queue), beside direct and the
            // unlimited route.
            let limits_rate = label == "Tollgate with limits";
            if (target.name == "tollgate+limits" && !limits_rate)
                || (target.name == "nginx" && limits_rate)
            {
                continue;
            }
            let result = open_loop(target, r, opts.latency_seconds, opts.connections).await?;
            let l = &result.latencies;
            println!(
                "  {:<9} p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs ({} ok, {} errors, {} late starts)",
                target.name,
                us(percentile(l, 0.5)),
                us(percentile(l, 0.99)),
                us(percentile(l, 0.999)),
                l.len(),
                result.errors,
                result.late_starts
            );
            latency.push((r, target.name, result));
        }
    }
    let pct_at = |r: f64, name: &str, p: f64| {
        latency
            .iter()
            .find(|(lr, n, _)| *n == name && *lr == r)
            .map_or(Duration::ZERO, |(_, _, res)| percentile(&res.latencies, p))
    };
    let added_at = |r: f64, name: &str, p: f64| us(pct_at(r, name, p)) - us(pct_at(r, "direct", p));
    let added = |name: &str, p: f64| added_at(rate, name, p);

    let tollgate_row = rows.iter().find(|r| r.name == "tollgate");
    let gateway_cpu = tollgate_row.and_then(|r| r.cpu).unwrap_or(0.0);
    let nginx_cpu = rows
        .iter()
        .find(|r| r.name == "nginx")
        .and_then(|r| r.cpu)
        .unwrap_or(0.0);
    let ledger_rps = ledger_rows.0 as f64 / ledger_rows.2.max(1e-9);
    children_extra.kill_all();
    stack.stop().await?;

    // Report.
    let mut md = String::new();
    let _ = writeln!(md, "## Non-streaming throughput and added latency\n");
    let _ = writeln!(md, "`{}`\n", this_command());
    let _ = writeln!(
        md,
        "{} nginx {nginx_version} (Debian package, `proxy_pass`, `proxy_buffering off`, keepalive upstream, `worker_processes auto`), {wrk_version}.\n",
        machine_line(&load_start)
    );
    let _ = writeln!(
        md,
        "Saturation: `wrk -t{} -c{} -d{}s` with a Lua script POSTing a non-streaming `/v1/responses` \
         (`mock_usage` 100/200 tokens, 8 deltas; about 1.2 KB back), one route after the other in one run, \
         each after a 1 s warm-up. Through Tollgate every request is authenticated, priced, forwarded \
         and written to the ledger (the rows are counted). wrk uses {} thread(s) of the 2 cores; \
         the mock, nginx or Tollgate, and PostgreSQL share the rest.\n",
        opts.threads, opts.connections, opts.seconds, opts.threads
    );
    md.push_str("| route | req/s | requests | seconds | errors | p50 µs | p99 µs | CPU µs/request (server process) | PostgreSQL µs/request | wrk µs/request | Tollgate / this |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for row in &rows {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {} | {:.2} | {} | {:.0} | {:.0} | {} | {} | {:.1} | {:.2} |",
            row.name,
            row.rps,
            row.requests,
            row.seconds,
            row.errors,
            row.p50_us,
            row.p99_us,
            row.cpu
                .map_or("-".to_owned(), |c| format!("{:.1}", c * 1e6)),
            row.db_cpu_us.map_or("-".to_owned(), |c| format!("{c:.1}")),
            row.wrk_cpu_us,
            tollgate / row.rps.max(1e-9)
        );
    }
    let _ = writeln!(
        md,
        "\nCPU µs/request is user+system time (`/proc/<pid>/stat`) of the serving process \
         (nginx: master + workers; direct: the mock itself) over the run, divided by requests. \
         The Tollgate and nginx rows do not include the mock's own {:.1} µs/request. \
         PostgreSQL: the backends connected to the bench's database (the ledger writer's among them). \
         wrk: the load generator's own CPU (`cutime`+`cstime` of the shell that ran it). \
         p50/p99: wrk's `--latency` at saturation (closed loop: each connection waits for its answer).\n",
        mock_cpu_per_request * 1e6
    );
    let _ = writeln!(
        md,
        "Ledger under that load: {} rows were in PostgreSQL by the end of the {:.1} s Tollgate run \
         ({:.0} rows/s sustained), {} once the writer had caught up (wrk reported {} completed requests; \
         requests cut by wrk's stop are recorded too).\n",
        ledger_rows.0,
        ledger_rows.2,
        ledger_rps,
        ledger_rows.1,
        tollgate_row.map_or(0, |r| r.requests)
    );
    let _ = writeln!(
        md,
        "Added latency, open loop for {} s per route at {rate:.0} req/s (half of nginx's saturation, \
         the issue's rate) and at {own_rate:.0} req/s (half of Tollgate's own saturation): \
         wrk2-style, {} keep-alive connections each sending its share on a fixed schedule, every \
         request timed from its *scheduled* start, so queueing shows (no coordinated omission). \
         The client is the bench's own minimal HTTP/1.1 code on raw sockets (tokio), sharing the \
         2 cores; the tokio timer has 1 ms granularity, which adds up to 1 ms to every route alike.\n",
        opts.latency_seconds, opts.connections
    );
    md.push_str("| rate | route | p50 µs | p99 µs | p99.9 µs | added p50 | added p99 | added p99.9 | errors |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (r, name, result) in &latency {
        let _ = writeln!(
            md,
            "| {r:.0}/s | {name} | {:.0} | {:.0} | {:.0} | {:+.0} µs | {:+.0} µs | {:+.0} µs | {} |",
            us(pct_at(*r, name, 0.5)),
            us(pct_at(*r, name, 0.99)),
            us(pct_at(*r, name, 0.999)),
            added_at(*r, name, 0.5),
            added_at(*r, name, 0.99),
            added_at(*r, name, 0.999),
            result.errors
        );
    }
    let limited = rps("tollgate+limits");
    let limits_added = |p: f64| {
        added_at(limited_rate, "tollgate+limits", p) - added_at(limited_rate, "tollgate", p)
    };
    let _ = writeln!(
        md,
        "\nLimits on vs off: `tollgate+limits` is the Tollgate route with a key whose key *and* \
         tenant both carry a hard monthly budget, requests and tokens per minute and a concurrency \
         limit (set with `tollgate limits set`, far too high to refuse): every request is admitted \
         from the replica's leased slices in memory and released by the ledger writer (see the \
         `limits` scenario for the database calls that costs). Its saturation is {:.2}× the \
         unlimited route's ({limited:.0} vs {tollgate:.0} req/s); at {limited_rate:.0} req/s (half \
         its own saturation) it adds p50 {:+.0} µs, p99 {:+.0} µs over the unlimited route.",
        limited / tollgate.max(1e-9),
        limits_added(0.5),
        limits_added(0.99),
    );
    if let Some(row) = rows.iter().find(|r| r.name == "litellm") {
        let _ = writeln!(
            md,
            "\nLiteLLM proxy (`litellm[proxy]` in `target/litellm-venv`, 1 worker, same mock, same wrk settings): \
             {:.0} req/s, {} errors; Tollgate / LiteLLM = {:.1}×.",
            row.rps,
            row.errors,
            tollgate / row.rps.max(1e-9)
        );
    }
    println!("\n{md}");
    if opts.write_md && !opts.smoke {
        write_section("throughput", &md)?;
    }
    let smoke = opts.smoke;
    let check = |ok: bool| (!smoke).then_some(ok);
    let mut summary = vec![
        SummaryRow::new(
            "throughput",
            format!(
                "Tollgate/nginx {:.2} ({tollgate:.0} vs {nginx_rps:.0} req/s); Tollgate/direct {:.2}",
                tollgate / nginx_rps.max(1e-9),
                tollgate / direct.max(1e-9)
            ),
            "≥ 0.8 × nginx",
            check(tollgate >= 0.8 * nginx_rps),
        ),
        SummaryRow::new(
            "added latency",
            format!(
                "p50 {:+.0} µs, p99 {:+.0} µs, p99.9 {:+.0} µs at {rate:.0} req/s",
                added("tollgate", 0.5),
                added("tollgate", 0.99),
                added("tollgate", 0.999)
            ),
            "p99 ≤ +1 ms",
            check(added("tollgate", 0.99) <= 1000.0),
        ),
        SummaryRow::new(
            "added latency, half Tollgate's rate",
            format!(
                "p50 {:+.0} µs, p99 {:+.0} µs, p99.9 {:+.0} µs at {own_rate:.0} req/s",
                added_at(own_rate, "tollgate", 0.5),
                added_at(own_rate, "tollgate", 0.99),
                added_at(own_rate, "tollgate", 0.999)
            ),
            "-",
            None,
        ),
        SummaryRow::new(
            "limits on vs off",
            format!(
                "{:.2}× the unlimited saturation ({limited:.0} vs {tollgate:.0} req/s); \
                 p99 {:+.0} µs at {limited_rate:.0} req/s",
                limited / tollgate.max(1e-9),
                limits_added(0.99)
            ),
            "-",
            None,
        ),
        SummaryRow::new(
            "CPU/request",
            format!(
                "Tollgate {:.1} µs, nginx {:.1} µs (user+sys)",
                gateway_cpu * 1e6,
                nginx_cpu * 1e6
            ),
            "-",
            None,
        ),
        SummaryRow::new(
            "ledger under load",
            format!("{ledger_rps:.0} rows/s (= request rate)"),
            "-",
            None,
        ),
    ];
    if let Some(row) = rows.iter().find(|r| r.name == "litellm") {
        summary.push(SummaryRow::new(
            "LiteLLM peer",
            format!(
                "{:.0} req/s; Tollgate/LiteLLM {:.1}×",
                row.rps,
                tollgate / row.rps.max(1e-9)
            ),
            "-",
            None,
        ));
    }
    Ok(summary)
}

// ---------------------------------------------------------------------------
// streams

pub(crate) struct StreamsOptions {
    pub deltas: usize,
    pub rounds: usize,
    pub open: usize,
    pub hold_secs: u64,
    pub smoke: bool,
    pub write_md: bool,
}

/// Whether `response.completed` went by (also split across two chunks).
#[derive(Default)]
struct Completed {
    seen: bool,
    carry: Vec<u8>,
}

impl Completed {
    fn feed(&mut self, chunk: &[u8]) {
        if self.seen {
            return;
        }
        const NEEDLE: &[u8] = b"response.completed";
        self.carry
            .extend_from_slice(&chunk[..chunk.len().min(NEEDLE.len())]);
        if memchr::memmem::find(&self.carry, NEEDLE).is_some()
            || memchr::memmem::find(chunk, NEEDLE).is_some()
        {
            self.seen = true;
        }
        self.carry.clear();
        self.carry
            .extend_from_slice(&chunk[chunk.len().saturating_sub(NEEDLE.len())..]);
    }
}

/// Events (blank-line terminated) in one whole stream, and its length.
async fn read_stream(client: &reqwest::Client, endpoint: &Endpoint) -> Result<(u64, u64)> {
    let response = client
        .post(&endpoint.url)
        .header(reqwest::header::AUTHORIZATION, &endpoint.authorization)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(endpoint.body.clone())
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("HTTP {}", response.status());
    }
    let mut stream = response.bytes_stream();
    let (mut events, mut bytes, mut last) = (0_u64, 0_u64, 0_u8);
    let mut completed = Completed::default();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if chunk.is_empty() {
            continue;
        }
        // Count "\n\n" including one straddling two chunks.
        if last == b'\n' && chunk[0] == b'\n' {
            events += 1;
        }
        events += memchr::memmem::find_iter(&chunk, b"\n\n").count() as u64;
        last = chunk[chunk.len() - 1];
        bytes += chunk.len() as u64;
        completed.feed(&chunk);
    }
    if !completed.seen {
        bail!("stream did not end with response.completed");
    }
    Ok((events, bytes))
}

pub(crate) async fn streams(opts: StreamsOptions) -> Result<Vec<SummaryRow>> {
    let load_start = load_average();
    let stack = Stack::start(StackOptions {
        raise_fds: true,
        ..StackOptions::default()
    })
    .await?;
    let mut md = String::new();
    let _ = writeln!(md, "## Streaming: event throughput and open streams\n");
    let _ = writeln!(md, "`{}`\n", this_command());
    let _ = writeln!(md, "{}\n", machine_line(&load_start));

    // Event throughput: large streams, one at a time, A-B-B-A.
    let targets = endpoints(&stack, "", Some((opts.deltas, 0)));
    let (direct, through) = (&targets[0], &targets[1]);
    let mut totals = [(0_u64, 0_u64, Duration::ZERO); 2];
    read_stream(&stack.client, direct).await?;
    read_stream(&stack.client, through).await?;
    for i in 0..opts.rounds * 2 {
        let which = usize::from(matches!(i % 4, 1 | 2));
        let target = if which == 0 { direct } else { through };
        let start = Instant::now();
        let (events, bytes) = read_stream(&stack.client, target).await?;
        let t = &mut totals[which];
        t.0 += events;
        t.1 += bytes;
        t.2 += start.elapsed();
    }
    let eps = |t: &(u64, u64, Duration)| t.0 as f64 / t.2.as_secs_f64().max(1e-9);
    let mbps = |t: &(u64, u64, Duration)| t.1 as f64 / t.2.as_secs_f64().max(1e-9) / 1e6;
    let (d_eps, t_eps) = (eps(&totals[0]), eps(&totals[1]));
    println!(
        "events/s: direct {d_eps:.0} ({:.0} MB/s), through {t_eps:.0} ({:.0} MB/s), ratio {:.2}",
        mbps(&totals[0]),
        mbps(&totals[1]),
        t_eps / d_eps.max(1e-9)
    );
    let per_stream = totals[0].0 / opts.rounds.max(1) as u64;
    let _ = writeln!(
        md,
        "Event throughput: {} streams per route of `mock_deltas` {} (16-byte deltas; {} events, {} bytes each), \
         one stream at a time, direct and through Tollgate interleaved A-B-B-A. Through Tollgate each \
         stream is tapped by the SSE scanner, metered, priced and written to the ledger.\n",
        opts.rounds,
        opts.deltas,
        per_stream,
        totals[0].1 / opts.rounds.max(1) as u64
    );
    md.push_str("| route | events/s | MB/s | through / direct |\n|---|---:|---:|---:|\n");
    let _ = writeln!(md, "| direct | {d_eps:.0} | {:.1} | |", mbps(&totals[0]));
    let _ = writeln!(
        md,
        "| tollgate | {t_eps:.0} | {:.1} | {:.2} |\n",
        mbps(&totals[1]),
        t_eps / d_eps.max(1e-9)
    );

    // Many open streams.
    let gateway_pid = stack.gateway_pid()?;
    let rss_before = rss_kib(gateway_pid)?;
    let hold = opts.hold_secs.max(1);
    let open_target = endpoints(&stack, "", Some((hold as usize, 1000)))
        .pop()
        .context("no gateway endpoint")?;
    let rows_before = stack.ledger_count().await?;
    println!(
        "open streams: {} through Tollgate, each held {hold} s (one event per second)",
        opts.open
    );
    let opened = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let first_errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let fd_limit = open_files_limit(gateway_pid);
    let opening = Arc::new(tokio::sync::Semaphore::new(256));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    // One connection per stream: a client of its own per task would be
    // wasteful; reqwest opens a new connection when none is idle.
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()?;
    for _ in 0..opts.open {
        let (client, target, opened, failed, opening, first_errors) = (
            client.clone(),
            open_target.clone(),
            opened.clone(),
            failed.clone(),
            opening.clone(),
            first_errors.clone(),
        );
        tasks.spawn(async move {
            let mut permit = Some(opening.acquire_owned().await);
            let response = client
                .post(&target.url)
                .header(reqwest::header::AUTHORIZATION, &target.authorization)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(target.body.clone())
                .send()
                .await;
            let response = match response {
                Ok(r) if r.status().is_success() => r,
                other => {
                    if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                        let text = match other {
                            Ok(r) => {
                                let status = r.status();
                                let body = r.text().await.unwrap_or_default();
                                format!("HTTP {status}: {body}")
                            }
                            Err(err) => format!("failed to open: {err:#}"),
                        };
                        eprintln!("  stream refused: {text}");
                        if let Ok(mut seen) = first_errors.lock() {
                            if !seen.contains(&text) {
                                seen.push(text);
                            }
                        }
                    }
                    return;
                }
            };
            let mut stream = response.bytes_stream();
            // Open once the first event arrived.
            let mut completed = Completed::default();
            let mut counted = false;
            while let Some(chunk) = stream.next().await {
                let Ok(chunk) = chunk.map_err(|err| {
                    eprintln!("  stream cut: {err:#}");
                }) else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    if counted {
                        opened.fetch_sub(1, Ordering::Relaxed);
                    }
                    return;
                };
                if !counted {
                    counted = true;
                    opened.fetch_add(1, Ordering::Relaxed);
                    permit.take();
                }
                completed.feed(&chunk);
            }
            drop(permit);
            if !completed.seen {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            if counted {
                opened.fetch_sub(1, Ordering::Relaxed);
            }
        });
    }
    let mut peak_open = 0;
    let mut peak_rss = rss_before;
    let mut rss_at_peak_open = rss_before;
    let mut all_open_after = None;
    let mut last_print = Instant::now();
    while !tasks.is_empty() {
        tokio::select! {
            _ = tasks.join_next() => {}
            () = tokio::time::sleep(Duration::from_millis(250)) => {
                let now_open = opened.load(Ordering::Relaxed);
                let rss = rss_kib(gateway_pid).unwrap_or(0);
                peak_rss = peak_rss.max(rss);
                if now_open >= peak_open {
                    peak_open = now_open;
                    rss_at_peak_open = rss_at_peak_open.max(rss);
                }
                if now_open >= opts.open && all_open_after.is_none() {
                    all_open_after = Some(started.elapsed());
                }
                if last_print.elapsed() > Duration::from_secs(5) {
                    last_print = Instant::now();
                    println!("  t={:>4.0} s open {now_open:>6} failed {:>5} gateway RSS {} MiB",
                        started.elapsed().as_secs_f64(), failed.load(Ordering::Relaxed), rss / 1024);
                }
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let errors = failed.load(Ordering::Relaxed);
    let rss_after = rss_kib(gateway_pid).unwrap_or(0);
    let rows = stack
        .ledger_settled(Some(rows_before + opts.open as i64))
        .await?
        - rows_before;
    stack.stop().await?;
    let per_stream_kib =
        (rss_at_peak_open.saturating_sub(rss_before)) as f64 / peak_open.max(1) as f64;
    println!(
        "open streams: peak {peak_open} open, {errors} errors, RSS {} → {} KiB ({per_stream_kib:.1} KiB/stream), ledger rows {rows}",
        rss_before, rss_at_peak_open
    );
    let _ = writeln!(
        md,
        "Open streams: {} streaming requests through Tollgate, one connection each (opened at most 256 \
         at a time), each stream held {hold} s by the mock (`mock_deltas` {hold}, `mock_delay_ms` 1000: \
         one event per second). Gateway and mock run with `ulimit -n 65536` (`sh -c 'ulimit -n 65536; exec …'`). \
         RSS is `VmRSS` of `tollgate serve` from `/proc/<pid>/status`; per stream = (RSS with the most streams \
         open − RSS before) / streams open.\n",
        opts.open
    );
    md.push_str("| streams | peak open at once | all open after | errors | ledger rows | gateway RSS before | at peak | after | RSS per open stream |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let _ = writeln!(
        md,
        "| {} | {peak_open} | {} | {errors} | {rows} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {per_stream_kib:.1} KiB |",
        opts.open,
        all_open_after.map_or("never".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
        rss_before as f64 / 1024.0,
        rss_at_peak_open as f64 / 1024.0,
        rss_after as f64 / 1024.0,
    );
    let _ = writeln!(
        md,
        "\nThe whole open-streams phase took {:.1} s; peak gateway RSS at any sample {:.1} MiB. \
         The gateway's open-files limit was {} (each proxied stream holds two sockets: the client's and \
         the upstream's).",
        elapsed.as_secs_f64(),
        peak_rss as f64 / 1024.0,
        fd_limit.map_or("unknown".to_owned(), |n| n.to_string()),
    );
    if let Ok(seen) = first_errors.lock() {
        for text in seen.iter() {
            let _ = writeln!(md, "\nError seen: `{}`", text.replace('`', "'"));
        }
    }
    println!("\n{md}");
    if opts.write_md && !opts.smoke {
        write_section("streams", &md)?;
    }
    let check = |ok: bool| (!opts.smoke).then_some(ok);
    Ok(vec![
        SummaryRow::new(
            "stream events/s",
            format!(
                "Tollgate/direct {:.2} ({t_eps:.0} vs {d_eps:.0} events/s)",
                t_eps / d_eps.max(1e-9)
            ),
            "≥ 0.9 × direct",
            check(t_eps >= 0.9 * d_eps),
        ),
        SummaryRow::new(
            "open streams",
            format!(
                "{peak_open}/{} open for {hold} s, {errors} errors, {per_stream_kib:.1} KiB/stream",
                opts.open
            ),
            "10,000 × 60 s, 0 errors, ≤ 32 KiB",
            check(peak_open >= 10_000 && hold >= 60 && errors == 0 && per_stream_kib <= 32.0),
        ),
    ])
}

// ---------------------------------------------------------------------------
// ledger

pub(crate) struct LedgerOptions {
    pub rows: usize,
    pub batch_max: usize,
    pub backlog_rate: usize,
    pub backlog_secs: u64,
    pub lock_secs: u64,
    pub smoke: bool,
    pub write_md: bool,
}

fn synthetic_row(i: usize) -> tollgate::ledger::LedgerRow {
    let now = chrono::Utc::now();
    tollgate::ledger::LedgerRow {
        id: None,
        request_id: format!("req_bench_{i:012}"),
        response_id: Some(format!("resp_bench_{i:012}")),
        tenant: "bench".to_owned(),
        api_key_id: "key_bench".to_owned(),
        endpoint: "responses".to_owned(),
        model: Some(MODEL.to_owned()),
        upstream: Some("default".to_owned()),
        upstream_model: Some(MODEL.to_owned()),
        stream: i % 2 == 0,
        status: "completed".to_owned(),
        usage_source: "reported".to_owned(),
        input_tokens: 100,
        cached_tokens: 0,
        output_tokens: 200,
        reasoning_tokens: 0,
        total_tokens: 300,
        service_tier: Some("default".to_owned()),
        price_id: None,
        cost: Some(rust_decimal::Decimal::new(12345, 8)),
        unpriced_reason: None,
        currency: "usd".to_owned(),
        http_status: Some(200),
        error_code: None,
        attempts: 1,
        fallback_from: None,
        end_user: None,
        dropped_tools: None,
        client_request_id: None,
        client_disconnected: false,
        mcp_calls: 0,
        started_at: now,
        first_byte_at: Some(now),
        finished_at: now,
        anomaly: None,
    }
}

pub(crate) async fn ledger(opts: LedgerOptions) -> Result<Vec<SummaryRow>> {
    let load_start = load_average();
    let stack = Stack::start(StackOptions {
        no_gateway: true,
        ..StackOptions::default()
    })
    .await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&stack.db.url)
        .await?;
    tollgate::state::migrate(&pool).await?;
    let spool = tollgate::ledger::spool::Spool::open(&stack.work.path().join("spool"))?;
    let batching = tollgate::config::LedgerConfig {
        batch_max: opts.batch_max,
        ..Default::default()
    }
    .batching();
    let (handle, writer) = tollgate::ledger::spawn_writer(pool.clone(), spool, batching);

    // Alone: N rows as fast as they can be recorded, then a flush.
    let rows: Vec<_> = (0..opts.rows).map(synthetic_row).collect();
    let start = Instant::now();
    for row in rows {
        handle.record(row);
    }
    handle.flush().await;
    let alone = start.elapsed();
    let count = stack.ledger_count().await?;
    let alone_rps = opts.rows as f64 / alone.as_secs_f64().max(1e-9);
    println!(
        "ledger alone: {} rows in {:.2} s = {alone_rps:.0} rows/s (count {count})",
        opts.rows,
        alone.as_secs_f64()
    );
    if count != opts.rows as i64 {
        bail!("ledger alone: {count} rows stored, {} recorded", opts.rows);
    }

    // Backlog: steady traffic while another connection holds ACCESS EXCLUSIVE.
    let total = opts.backlog_rate * opts.backlog_secs as usize;
    let lock_at = Duration::from_secs(1);
    let lock_for = Duration::from_secs(opts.lock_secs);
    let db_url = stack.db.url.clone();
    let locker = tokio::spawn(async move {
        tokio::time::sleep(lock_at).await;
        let mut conn = sqlx::PgConnection::connect(&db_url).await?;
        let mut tx = conn.begin().await?;
        sqlx::query("LOCK TABLE usage_ledger IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let locked = Instant::now();
        tokio::time::sleep(lock_for).await;
        tx.commit().await?;
        let _ = conn.close().await;
        Ok::<_, anyhow::Error>(locked)
    });
    let start = Instant::now();
    let tick = Duration::from_millis(10);
    let per_tick = (opts.backlog_rate / 100).max(1);
    let mut recorded = 0;
    let mut samples: Vec<(Duration, u64, u64)> = Vec::new();
    let stats = handle.stats();
    while recorded < total {
        let n = per_tick.min(total - recorded);
        for i in 0..n {
            handle.record(synthetic_row(opts.rows + recorded + i));
        }
        recorded += n;
        samples.push((
            start.elapsed(),
            stats.queued.load(Ordering::Relaxed),
            stats.spooled.load(Ordering::Relaxed),
        ));
        let next = start + tick * (samples.len() as u32);
        tokio::time::sleep_until(next.into()).await;
    }
    let recording_done = start.elapsed();
    let locked_at = locker.await.context("locker panicked")??;
    while stats.queued.load(Ordering::Relaxed) > 0 || stats.spooled.load(Ordering::Relaxed) > 0 {
        samples.push((
            start.elapsed(),
            stats.queued.load(Ordering::Relaxed),
            stats.spooled.load(Ordering::Relaxed),
        ));
        if start.elapsed() > Duration::from_secs(120) {
            bail!("backlog did not drain within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.flush().await;
    let drained = start.elapsed();
    let unlocked = (locked_at + lock_for).saturating_duration_since(start);
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let peak_spooled = samples.iter().map(|s| s.2).max().unwrap_or(0);
    let stored = stack.ledger_count().await? - opts.rows as i64;
    let lost = total as i64 - stored;
    let write_errors = stats.write_errors.load(Ordering::Relaxed);
    println!(
        "backlog: {total} rows at {} rows/s, table locked {} s from t={:.1} s: peak queue {peak}, \
         spooled peak {peak_spooled}, drained at t={:.2} s ({:.2} s after unlock); stored {stored}, lost {lost}",
        opts.backlog_rate,
        opts.lock_secs,
        locked_at.saturating_duration_since(start).as_secs_f64(),
        drained.as_secs_f64(),
        drained.saturating_sub(unlocked).as_secs_f64()
    );
    handle.close();
    drop(handle);
    let _ = writer.await;
    pool.close().await;
    stack.stop().await?;

    let mut md = String::new();
    let _ = writeln!(md, "## Ledger: rows per second into PostgreSQL\n");
    let _ = writeln!(md, "`{}`\n", this_command());
    let _ = writeln!(md, "{}\n", machine_line(&load_start));
    let _ = writeln!(
        md,
        "The batched writer alone (`tollgate::ledger::spawn_writer`, batch_max {}, one \
         `INSERT … SELECT FROM UNNEST … ON CONFLICT DO NOTHING` per batch, with the reports rollup \
         trigger and the ledger's indexes in place) fed {} synthetic rows as fast as the harness can \
         call `record`, timed until `flush` returned; the row count is checked.\n",
        opts.batch_max, opts.rows
    );
    md.push_str("| measure | figure |\n|---|---:|\n");
    let _ = writeln!(md, "| rows/s, writer alone | {alone_rps:.0} |");
    let _ = writeln!(
        md,
        "| backlog: rows recorded | {total} at {} rows/s over {:.1} s |",
        opts.backlog_rate,
        recording_done.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "| backlog: ACCESS EXCLUSIVE lock held | {} s, from t = {:.1} s |",
        opts.lock_secs,
        locked_at.saturating_duration_since(start).as_secs_f64()
    );
    let _ = writeln!(md, "| backlog: peak queue (rows in memory) | {peak} |");
    let _ = writeln!(md, "| backlog: rows spooled to disk | {peak_spooled} |");
    let _ = writeln!(
        md,
        "| backlog: drained after unlock | {:.2} s |",
        drained.saturating_sub(unlocked).as_secs_f64()
    );
    let _ = writeln!(md, "| backlog: write errors | {write_errors} |");
    let _ = writeln!(md, "| backlog: rows lost (recorded − counted) | {lost} |");
    let _ = writeln!(
        md,
        "\nWhile the table is locked, the writer's INSERT waits on the lock (it does not fail, so \
         nothing is spooled); `record` never blocks, rows queue in memory (`queued` on `/readyz`), \
         and the queue drains in large batches once the lock is released. The rows/s under proxy \
         load are in the throughput section (they equal the request rate: the writer keeps up)."
    );
    println!("\n{md}");
    if opts.write_md && !opts.smoke {
        write_section("ledger", &md)?;
    }
    if lost != 0 {
        bail!("ledger backlog lost {lost} rows");
    }
    let check = |ok: bool| (!opts.smoke).then_some(ok);
    Ok(vec![
        SummaryRow::new(
            "ledger writer alone",
            format!("{alone_rps:.0} rows/s"),
            "≥ 20,000 rows/s",
            check(alone_rps >= 20_000.0),
        ),
        SummaryRow::new(
            "ledger backlog",
            format!(
                "peak queue {peak}, drained {:.2} s after unlock, {lost} lost",
                drained.saturating_sub(unlocked).as_secs_f64()
            ),
            "0 lost",
            check(lost == 0),
        ),
    ])
}

// ---------------------------------------------------------------------------
// callgrind

pub(crate) struct CallgrindOptions {
    pub requests: usize,
    pub smoke: bool,
    pub write_md: bool,
}

/// Total instructions (Ir) of `tollgate serve` under callgrind after `requests`
/// sequential non-streaming requests, then SIGTERM.
async fn callgrind_run(requests: usize) -> Result<(u64, Duration)> {
    ensure_tool("valgrind", "valgrind")?;
    let out_dir = tempfile::tempdir()?;
    let out = out_dir.path().join("callgrind.out");
    let mut stack = Stack::start(StackOptions {
        gateway_wrapper: vec![
            "valgrind".to_owned(),
            "--tool=callgrind".to_owned(),
            format!("--callgrind-out-file={}", out.display()),
        ],
        ..StackOptions::default()
    })
    .await?;
    let target = endpoints(&stack, "", None)
        .pop()
        .context("no gateway endpoint")?;
    let start = Instant::now();
    for i in 0..requests {
        let response = stack
            .client
            .post(&target.url)
            .header(reqwest::header::AUTHORIZATION, &target.authorization)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(target.body.clone())
            .send()
            .await
            .with_context(|| format!("request {i}"))?;
        if !response.status().is_success() {
            bail!("request {i}: HTTP {}", response.status());
        }
        response.bytes().await?;
    }
    let elapsed = start.elapsed();
    stack.ledger_settled(Some(requests as i64)).await?;
    stack
        .children
        .terminate("tollgate serve", Duration::from_secs(120))?;
    stack.stop().await?;
    let text = std::fs::read_to_string(&out)
        .with_context(|| format!("callgrind wrote no {}", out.display()))?;
    let total = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no totals line in the callgrind output")?;
    Ok((total, elapsed))
}

pub(crate) async fn callgrind(opts: CallgrindOptions) -> Result<Vec<SummaryRow>> {
    let load_start = load_average();
    println!("callgrind: gateway under valgrind, 0 requests");
    let (idle, _) = callgrind_run(0).await?;
    println!(
        "callgrind: gateway under valgrind, {} requests",
        opts.requests
    );
    let (busy, elapsed) = callgrind_run(opts.requests).await?;
    let per_request = busy.saturating_sub(idle) as f64 / opts.requests.max(1) as f64;
    let with_startup = busy as f64 / opts.requests.max(1) as f64;
    println!(
        "callgrind: {busy} Ir with {} requests, {idle} Ir with none: {per_request:.0} Ir/request \
         ({with_startup:.0} including startup); requests took {:.1} s under valgrind",
        opts.requests,
        elapsed.as_secs_f64()
    );
    let mut md = String::new();
    let _ = writeln!(md, "## Instructions per proxied request (callgrind)\n");
    let _ = writeln!(md, "`{}`\n", this_command());
    let _ = writeln!(
        md,
        "{} {}.\n",
        machine_line(&load_start),
        super::command_line_output("valgrind", &["--version"])
    );
    let _ = writeln!(
        md,
        "`tollgate serve` (ledger on) run under `valgrind --tool=callgrind`, sent {} sequential \
         non-streaming requests (the throughput body), waited for their ledger rows, then stopped \
         with SIGTERM; the same with 0 requests gives startup + shutdown. Instruction counts do not \
         depend on the machine's load, so this is the figure to watch for regressions. The idle run \
         is shorter, so its background timers (price reload, reconciler) tick less; the difference \
         is small next to {} requests.\n",
        opts.requests, opts.requests
    );
    md.push_str("| run | Ir (instructions) |\n|---|---:|\n");
    let _ = writeln!(md, "| 0 requests (startup + shutdown) | {idle} |");
    let _ = writeln!(md, "| {} requests | {busy} |", opts.requests);
    let _ = writeln!(
        md,
        "| **per request** (difference / requests) | **{per_request:.0}** |"
    );
    let _ = writeln!(md, "| per request including startup | {with_startup:.0} |");
    println!("\n{md}");
    if opts.write_md && !opts.smoke {
        write_section("callgrind", &md)?;
    }
    Ok(vec![SummaryRow::new(
        "instructions/request",
        format!("{per_request:.0} Ir (callgrind; {with_startup:.0} with startup)"),
        "-",
        None,
    )])
}

/// The soft "Max open files" of a process, from `/proc/<pid>/limits`.
fn open_files_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------
// limits: spend control on vs off, light load, database calls for admission

pub(crate) struct LimitsOptions {
    pub seconds: u64,
    pub rounds: usize,
    pub connections: usize,
    pub smoke: bool,
    pub write_md: bool,
}

/// `wrk --latency`'s 50th percentile, in microseconds.
fn wrk_p50(
    work: &std::path::Path,
    endpoint: &Endpoint,
    connections: usize,
    seconds: u64,
) -> Result<(f64, f64)> {
    let wrk = ensure_tool("wrk", "wrk")?;
    let script = work.join(format!("{}-light.lua", endpoint.name));
    let body = String::from_utf8_lossy(&endpoint.body);
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = [==[{body}]==]\n\
             wrk.headers[\"Content-Type\"] = \"application/json\"\n\
             wrk.headers[\"Authorization\"] = \"{}\"\n",
            endpoint.authorization
        ),
    )?;
    let output = Command::new(wrk)
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(&script)
        .arg(&endpoint.url)
        .output()
        .context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let micros = |value: &str| -> Option<f64> {
        let value = value.trim();
        if let Some(us) = value.strip_suffix("us") {
            return us.parse().ok();
        }
        if let Some(ms) = value.strip_suffix("ms") {
            return ms.parse::<f64>().ok().map(|v| v * 1e3);
        }
        value
            .strip_suffix('s')
            .and_then(|s| s.parse::<f64>().ok())
            .map(|v| v * 1e6)
    };
    let p50 = text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("50%").and_then(micros))
        .context("wrk printed no 50% latency")?;
    let rps = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Requests/sec:")
                .map(|r| r.trim().parse().unwrap_or(0.0))
        })
        .unwrap_or(0.0);
    Ok((p50, rps))
}

/// `tollgate_limit_syncs_total` of the gateway (all triggers and outcomes).
async fn limit_syncs(stack: &Stack) -> Result<f64> {
    let text = stack
        .client
        .get(format!("{}/metrics", stack.gateway_base))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("tollgate_limit_syncs_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Limits on (every kind, on key and tenant, never binding) vs off, on the
/// same gateway in one run, interleaved round by round: saturation ratio,
/// p50 at 4 connections, and the database transactions admission made per
/// second at saturation (slice syncs: they follow the scopes in use, not
/// the request rate).
pub(crate) async fn limits(opts: LimitsOptions) -> Result<Vec<SummaryRow>> {
    let load_start = load_average();
    let stack = Stack::start(StackOptions::default()).await?;
    let targets = endpoints(&stack, "", None);
    let Some(tollgate) = targets.into_iter().find(|t| t.name == "tollgate") else {
        bail!("no tollgate endpoint");
    };
    let limited = limited_endpoint(&stack, &tollgate);
    for target in [&tollgate, &limited] {
        run_wrk(stack.work.path(), target, opts.connections, 1, 1)?;
    }
    let mut off = Vec::new();
    let mut on = Vec::new();
    let mut syncs_per_sec = Vec::new();
    let mut limited_rps = Vec::new();
    println!(
        "limits: wrk -t1 -c{} -d{}s, {} rounds alternating unlimited / limited",
        opts.connections, opts.seconds, opts.rounds
    );
    for round in 0..opts.rounds {
        let a = run_wrk(
            stack.work.path(),
            &tollgate,
            opts.connections,
            1,
            opts.seconds,
        )?;
        let before = limit_syncs(&stack).await?;
        let b = run_wrk(
            stack.work.path(),
            &limited,
            opts.connections,
            1,
            opts.seconds,
        )?;
        let syncs = limit_syncs(&stack).await? - before;
        println!(
            "  round {round}: unlimited {:.0} req/s, limited {:.0} req/s ({:.2}×), {syncs} syncs ({:.1}/s)",
            a.rps,
            b.rps,
            b.rps / a.rps.max(1e-9),
            syncs / b.seconds.max(1e-9)
        );
        off.push(a.rps);
        on.push(b.rps);
        syncs_per_sec.push(syncs / b.seconds.max(1e-9));
        limited_rps.push(b.rps);
    }
    let light_seconds = opts.seconds.max(2);
    let (off_p50, off_light) = wrk_p50(stack.work.path(), &tollgate, 4, light_seconds)?;
    let (on_p50, on_light) = wrk_p50(stack.work.path(), &limited, 4, light_seconds)?;
    stack.ledger_settled(None).await?;
    stack.stop().await?;

    let sum = |v: &[f64]| v.iter().sum::<f64>();
    let ratio = sum(&on) / sum(&off).max(1e-9);
    let ratios: Vec<String> = on
        .iter()
        .zip(&off)
        .map(|(b, a)| format!("{:.2}", b / a.max(1e-9)))
        .collect();
    let syncs = sum(&syncs_per_sec) / syncs_per_sec.len().max(1) as f64;
    let rate = sum(&limited_rps) / limited_rps.len().max(1) as f64;
    let mut md = String::new();
    let _ = writeln!(md, "## Spend control on vs off (leased admission)\n");
    let _ = writeln!(md, "{}\n", machine_line(&load_start));
    let _ = writeln!(md, "`{}`\n", this_command());
    let _ = writeln!(
        md,
        "One gateway, one database, the same canned upstream; `tollgate` is a key without limits, \
         `tollgate+limits` a key whose key *and* tenant both carry a hard monthly budget, requests \
         and tokens per minute and a concurrency limit, all far too high to refuse (every request \
         is admitted from the replica's slices and released by the ledger writer). wrk -t1 \
         -c{} -d{}s, {} rounds, unlimited and limited alternating so the machine's drift hits both.\n",
        opts.connections, opts.seconds, opts.rounds
    );
    md.push_str("| round | unlimited req/s | limited req/s | ratio | slice syncs/s |\n|---:|---:|---:|---:|---:|\n");
    for (i, ((a, b), s)) in off.iter().zip(&on).zip(&syncs_per_sec).enumerate() {
        let _ = writeln!(
            md,
            "| {i} | {a:.0} | {b:.0} | {:.2} | {s:.1} |",
            b / a.max(1e-9)
        );
    }
    let _ = writeln!(
        md,
        "\nLimited / unlimited over all rounds: **{ratio:.2}×** (per round {}). Database \
         transactions for admission at saturation: **{syncs:.1} per second** at {rate:.0} \
         requests per second (one slice sync per busy scope per second and a few on demand; \
         before leases it was one transaction per batch of waiting requests).\n\n\
         Light load, wrk -t1 -c4 -d{light_seconds}s --latency: p50 unlimited {off_p50:.0} µs \
         ({off_light:.0} req/s), limited {on_p50:.0} µs ({on_light:.0} req/s): **{:+.0} µs**.",
        ratios.join(", "),
        on_p50 - off_p50
    );
    println!("\n{md}");
    if opts.write_md && !opts.smoke {
        write_section("limits", &md)?;
    }
    let check = |ok: bool| (!opts.smoke).then_some(ok);
    Ok(vec![
        SummaryRow::new(
            "limits on vs off",
            format!(
                "{ratio:.2}× the unlimited saturation (rounds {})",
                ratios.join(", ")
            ),
            "≥ 0.9×",
            check(ratio >= 0.9),
        ),
        SummaryRow::new(
            "limits at 4 connections",
            format!(
                "p50 {:+.0} µs ({on_p50:.0} vs {off_p50:.0} µs)",
                on_p50 - off_p50
            ),
            "p50 ≤ +1 ms",
            check(on_p50 - off_p50 <= 1000.0),
        ),
        SummaryRow::new(
            "admission database calls",
            format!("{syncs:.1} slice syncs/s at {rate:.0} req/s"),
            "not per request",
            check(syncs < rate / 100.0),
        ),
    ])
}

// ---------------------------------------------------------------------------
// export: billing export throughput per sink, serving with export on vs off,
// catch-up after an outage

pub(crate) struct ExportOptions {
    pub seconds: u64,
    pub rounds: usize,
    pub connections: usize,
    /// Rows queued while every sink is paused, then delivered sink by sink.
    pub rows: i64,
    /// The longest a sink's throughput measure runs (Stripe: one request per event).
    pub max_secs: u64,
    /// Rows of the catch-up measure (OpenMeter, after an outage).
    pub catchup_rows: i64,
    pub smoke: bool,
    pub write_md: bool,
}

const SINK_NAMES: [&str; 4] = ["openmeter", "webhook", "lago", "stripe"];

async fn admin_call(
    stack: &Stack,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value> {
    let mut request = stack
        .client
        .request(method, format!("{}{path}", stack.gateway_base))
        .bearer_auth(super::ADMIN_TOKEN);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("{path}: {status} {text}");
    }
    Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

async fn set_sinks_paused(stack: &Stack, sinks: &[&str], paused: bool) -> Result<()> {
    let action = if paused { "pause" } else { "resume" };
    for sink in sinks {
        admin_call(
            stack,
            reqwest::Method::POST,
            &format!("/admin/exports/{sink}/{action}"),
            None,
        )
        .await?;
    }
    Ok(())
}

/// Waits until every sink's lag is 0 (at most `within`).
async fn sinks_caught_up(stack: &Stack, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let status = admin_call(stack, reqwest::Method::GET, "/admin/exports", None).await?;
        let lagging = status["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|s| s["lag_rows"].as_i64() != Some(0))
                    .count()
            })
            .unwrap_or(1);
        if lagging == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("export did not catch up within {within:?}: {status}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `n` final priced rows of tenant `bench`, straight into the ledger (the
/// triggers queue them as the writer's inserts would).
async fn insert_ledger_rows(url: &str, tag: &str, n: i64) -> Result<()> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let mut done = 0;
    while done < n {
        let chunk = (n - done).min(50_000);
        sqlx::query(
            "INSERT INTO usage_ledger (request_id, tenant_id, api_key_id, endpoint, model, stream,
                 status, usage_source, input_tokens, cached_tokens, output_tokens, reasoning_tokens,
                 total_tokens, service_tier, cost, started_at, finished_at)
             SELECT 'bench_' || $1 || '_' || ($2 + g), 'bench', 'key_bench', 'responses.create',
                 'gpt-5.5', false, 'completed', 'reported', 1000, 200, 300, 50, 1300, 'default',
                 0.0123456789012345, now(), now()
             FROM generate_series(1, $3) AS g",
        )
        .bind(tag)
        .bind(done)
        .bind(chunk)
        .execute(&mut conn)
        .await?;
        done += chunk;
    }
    Ok(())
}

/// Delivers what is queued to `sink` alone; (events, seconds).
async fn deliver_alone(
    stack: &Stack,
    counts: &super::sinks::Sinks,
    sink: &str,
    expect: u64,
    max_secs: u64,
) -> Result<(u64, f64)> {
    let before = counts.unique(sink);
    set_sinks_paused(stack, &[sink], false).await?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(max_secs);
    loop {
        let delivered = counts.unique(sink) - before;
        if delivered >= expect || Instant::now() > deadline {
            let seconds = started.elapsed().as_secs_f64();
            set_sinks_paused(stack, &[sink], true).await?;
            return Ok((delivered, seconds));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Export on vs off on one gateway, alternating round by round (off: every
/// sink paused and unregistered, so the ledger trigger queues nothing; on:
/// all four delivering), then each sink's throughput on a backlog, then the
/// catch-up of a backlog after an outage.
pub(crate) async fn export(opts: ExportOptions) -> Result<Vec<SummaryRow>> {
    let load_start = load_average();
    let (counts, sink_base) = super::sinks::Sinks::start().await?;
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("tollgate.toml");
    let root = super::repo_root();
    let mut config = std::fs::read_to_string(root.join("config/tollgate.toml")).unwrap_or_default();
    let _ = write!(
        config,
        "\n[exports.openmeter]\nurl = \"{sink_base}\"\napi_key = \"k\"\nbatch_size = 2000\nidle_ms = 200\n\
         [exports.webhook]\nurl = \"{sink_base}/hook\"\nbatch_size = 2000\nidle_ms = 200\n\
         [exports.lago]\nurl = \"{sink_base}\"\napi_key = \"k\"\ncode = \"llm_usage\"\nbatch_size = 2000\nidle_ms = 200\n\
         [exports.stripe]\nurl = \"{sink_base}\"\napi_key = \"k\"\nevent_name = \"llm_tokens\"\nbatch_size = 2000\nconcurrency = 16\nidle_ms = 200\n"
    );
    std::fs::write(&config_path, config)?;
    let stack = Stack::start(StackOptions {
        gateway_env: vec![
            ("TOLLGATE_CONFIG".into(), config_path.display().to_string()),
            // The webhook sink signs like the alerts.
            (
                "TOLLGATE_ALERTS_SECRET".into(),
                "bench-signing-secret-0123456789abcdef".into(),
            ),
        ],
        ..StackOptions::default()
    })
    .await?;
    admin_call(
        &stack,
        reqwest::Method::PUT,
        "/admin/tenants/bench",
        Some(serde_json::json!({"billing": {"openmeter_subject": "bench",
            "lago_external_subscription_id": "sub_bench", "stripe_customer_id": "cus_bench"}})),
    )
    .await?;
    let targets = endpoints(&stack, "", None);
    let Some(tollgate) = targets.into_iter().find(|t| t.name == "tollgate") else {
        bail!("no tollgate endpoint");
    };
    run_wrk(stack.work.path(), &tollgate, opts.connections, 1, 1)?;
    let mut conn = sqlx::PgConnection::connect(&stack.db.url).await?;
    let (mut on, mut off) = (Vec::new(), Vec::new());
    println!(
        "export: wrk -t1 -c{} -d{}s, {} rounds off / on",
        opts.connections, opts.seconds, opts.rounds
    );
    for round in 0..opts.rounds {
        set_sinks_paused(&stack, &SINK_NAMES, true).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        sqlx::query("DELETE FROM export_sinks")
            .execute(&mut conn)
            .await?;
        let a = run_wrk(
            stack.work.path(),
            &tollgate,
            opts.connections,
            1,
            opts.seconds,
        )?;
        set_sinks_paused(&stack, &SINK_NAMES, false).await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let b = run_wrk(
            stack.work.path(),
            &tollgate,
            opts.connections,
            1,
            opts.seconds,
        )?;
        println!(
            "  round {round}: export off {:.0} req/s, on {:.0} req/s ({:.2}×)",
            a.rps,
            b.rps,
            b.rps / a.rps.max(1e-9)
        );
        off.push(a.rps);
        on.push(b.rps);
    }
    stack.ledger_settled(None).await?;
    sinks_caught_up(&stack, Duration::from_secs(600)).await?;

    // Throughput per sink on a backlog of `rows`.
    set_sinks_paused(&stack, &SINK_NAMES, true).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    insert_ledger_rows(&stack.db.url, "t", opts.rows).await?;
    let mut rates = Vec::new();
    for sink in SINK_NAMES {
        let (events, seconds) =
            deliver_alone(&stack, &counts, sink, opts.rows as u64, opts.max_secs).await?;
        println!(
            "  {sink}: {events} events in {seconds:.1} s ({:.0}/s)",
            events as f64 / seconds
        );
        rates.push((sink, events, seconds));
    }
    // Catch-up after an outage: OpenMeter paused while `catchup_rows` queue.
    let queued_at = Instant::now();
    insert_ledger_rows(&stack.db.url, "c", opts.catchup_rows).await?;
    let queue_secs = queued_at.elapsed().as_secs_f64();
    let (caught, catchup_secs) = deliver_alone(
        &stack,
        &counts,
        "openmeter",
        opts.catchup_rows as u64,
        3_600,
    )
    .await?;
    let received = counts.received("openmeter");
    let unique = counts.unique("openmeter");
    drop(conn);
    stack.stop().await?;

    let sum = |v: &[f64]| v.iter().sum::<f64>();
    let ratio = sum(&on) / sum(&off).max(1e-9);
    let mut md = String::new();
    let _ = writeln!(md, "## Billing export\n");
    let _ = writeln!(md, "{}\n", machine_line(&load_start));
    let _ = writeln!(md, "`{}`\n", this_command());
    let _ = writeln!(
        md,
        "One gateway with all four sinks configured against a local counting stand-in \
         (src/bin/bench/sinks.rs). Serving: wrk -t1 -c{} -d{}s, rounds alternating export off \
         (every sink paused and unregistered: the ledger trigger queues nothing) and on (all four \
         sinks delivering while serving).\n",
        opts.connections, opts.seconds
    );
    md.push_str("| round | export off req/s | export on req/s | ratio |\n|---:|---:|---:|---:|\n");
    for (i, (a, b)) in off.iter().zip(&on).enumerate() {
        let _ = writeln!(md, "| {i} | {a:.0} | {b:.0} | {:.2} |", b / a.max(1e-9));
    }
    let _ = writeln!(md, "\nOn / off over all rounds: **{ratio:.2}×**.\n");
    let _ = writeln!(
        md,
        "Throughput per sink, each alone on a backlog of {} rows (Lago 100 events per request, \
         Stripe one per request with 16 in flight, at most {} s each):\n",
        opts.rows, opts.max_secs
    );
    md.push_str("| sink | events | seconds | events/s |\n|---|---:|---:|---:|\n");
    for (sink, events, seconds) in &rates {
        let _ = writeln!(
            md,
            "| {sink} | {events} | {seconds:.1} | {:.0} |",
            *events as f64 / seconds
        );
    }
    let _ = writeln!(
        md,
        "\nCatch-up: {} rows queued while OpenMeter was paused (queued in {queue_secs:.0} s), \
         delivered in **{catchup_secs:.0} s** ({:.0} events/s; {caught} delivered). OpenMeter \
         stand-in over the whole run: {received} events received, {unique} unique.",
        opts.catchup_rows,
        caught as f64 / catchup_secs.max(1e-9)
    );
    println!("\n{md}");
    if opts.write_md && !opts.smoke {
        write_section("export", &md)?;
    }
    let check = |ok: bool| (!opts.smoke).then_some(ok);
    let mut rows = vec![SummaryRow::new(
        "export on vs off",
        format!("{ratio:.2}× the export-off saturation"),
        "≥ 0.9×",
        check(ratio >= 0.9),
    )];
    for (sink, events, seconds) in &rates {
        rows.push(SummaryRow::new(
            &format!("export {sink}"),
            format!("{:.0} events/s", *events as f64 / seconds),
            "-",
            None,
        ));
    }
    rows.push(SummaryRow::new(
        "export catch-up",
        format!("{} rows in {catchup_secs:.0} s", opts.catchup_rows),
        "1M rows",
        check(caught as i64 >= opts.catchup_rows),
    ));
    Ok(rows)
}
