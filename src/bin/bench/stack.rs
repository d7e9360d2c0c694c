//! What every scenario starts: a throwaway database, `tollgate mock-upstream`,
//! `tollgate serve` (ledger on) in front of it, prices and a client key; plus
//! nginx, tool installation, process statistics and the markdown writer.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sqlx::Connection;

use super::{
    free_port, repo_root, run_once, tollgate_binary, tollgate_command, wait_ready, Children,
    Database, ADMIN_TOKEN, MD_FILE, UPSTREAM_KEY,
};

/// Options of [`Stack::start`].
#[derive(Default)]
pub(crate) struct StackOptions {
    /// Run the mock and the gateway with `ulimit -n 65536` (many streams).
    pub raise_fds: bool,
    /// Run the gateway under this wrapper (e.g. valgrind and its flags).
    pub gateway_wrapper: Vec<String>,
    /// Do not start the gateway at all (the ledger harness needs only the database).
    pub no_gateway: bool,
    /// Extra environment of `tollgate serve` (e.g. `TOLLGATE_CONFIG`).
    pub gateway_env: Vec<(String, String)>,
}

/// Mock + gateway + database; children are killed before the database is dropped.
pub(crate) struct Stack {
    pub children: Children,
    pub db: Database,
    pub work: tempfile::TempDir,
    pub root: PathBuf,
    pub client: reqwest::Client,
    pub mock_port: u16,
    pub mock_base: String,
    pub gateway_base: String,
    pub key: String,
    /// A key of tenant `bench-limited` whose key and tenant both carry every
    /// kind of limit (set too high to refuse): its requests take the whole
    /// admission and settlement path.
    pub limited_key: String,
}

/// `sh -c 'ulimit -n 65536; exec …'` around `command` (no unsafe pre-exec).
pub(crate) fn with_fd_limit(command: &Command) -> Command {
    let mut wrapped = Command::new("sh");
    wrapped
        .arg("-c")
        .arg("ulimit -n 65536 2>/dev/null || ulimit -n 20000; exec \"$0\" \"$@\"")
        .arg(command.get_program())
        .args(command.get_args());
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(name, value),
            None => wrapped.env_remove(name),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

fn wrap(wrapper: &[String], command: &Command) -> Command {
    let Some((program, flags)) = wrapper.split_first() else {
        let mut copy = Command::new(command.get_program());
        copy.args(command.get_args());
        for (name, value) in command.get_envs() {
            match value {
                Some(value) => copy.env(name, value),
                None => copy.env_remove(name),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            copy.current_dir(dir);
        }
        return copy;
    };
    let mut wrapped = Command::new(program);
    wrapped
        .args(flags)
        .arg(command.get_program())
        .args(command.get_args());
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(name, value),
            None => wrapped.env_remove(name),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

impl Stack {
    pub(crate) async fn start(options: StackOptions) -> Result<Self> {
        let root = repo_root();
        let bin = tollgate_binary()?;
        let work = tempfile::Builder::new()
            .prefix("tollgate-bench-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let db = Database::create().await?;
        let mut children = Children::default();
        let client = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .build()?;

        let mock_port = free_port()?;
        let mut mock = Command::new(&bin);
        mock.args([
            "mock-upstream",
            "--listen",
            &format!("127.0.0.1:{mock_port}"),
            "--no-recording",
        ]);
        let mock = if options.raise_fds {
            with_fd_limit(&mock)
        } else {
            mock
        };
        children.spawn("mock-upstream", mock, work.path().join("mock.log"))?;

        let mut import = tollgate_command(&bin, &root, &db.url);
        import
            .arg("prices")
            .arg("import")
            .arg(root.join("config/prices.json"));
        run_once(import, "prices import").await?;
        let (_, key) = create_key(&bin, &root, &db.url, "bench").await?;
        let (limited_id, limited_key) = create_key(&bin, &root, &db.url, "bench-limited").await?;
        for scope in [
            ["--tenant", "bench-limited"],
            ["--key", limited_id.as_str()],
        ] {
            let mut set = tollgate_command(&bin, &root, &db.url);
            set.args(["limits", "set"])
                .args(scope)
                .args(NEVER_REFUSING_LIMITS);
            run_once(set, "limits set").await?;
        }

        let mock_base = format!("http://127.0.0.1:{mock_port}");
        let gateway_port = free_port()?;
        let gateway_base = format!("http://127.0.0.1:{gateway_port}");
        if !options.no_gateway {
            let mut serve = tollgate_command(&bin, &root, &db.url);
            serve
                .arg("serve")
                .env("TOLLGATE_LISTEN", format!("127.0.0.1:{gateway_port}"))
                .env("TOLLGATE_UPSTREAM_URL", format!("{mock_base}/v1"))
                .env("TOLLGATE_UPSTREAM_KEY", UPSTREAM_KEY)
                .env("TOLLGATE_SPOOL_DIR", work.path().join("spool"))
                .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
                .envs(options.gateway_env.iter().map(|(k, v)| (k, v)));
            let serve = wrap(&options.gateway_wrapper, &serve);
            let serve = if options.raise_fds {
                with_fd_limit(&serve)
            } else {
                serve
            };
            children.spawn("tollgate serve", serve, work.path().join("serve.log"))?;
        }
        wait_ready(
            &client,
            &format!("{mock_base}/__mock/health"),
            &mut children,
        )
        .await?;
        if !options.no_gateway {
            wait_ready(&client, &format!("{gateway_base}/readyz"), &mut children).await?;
        }
        Ok(Self {
            children,
            db,
            work,
            root,
            client,
            mock_port,
            mock_base,
            gateway_base,
            key,
            limited_key,
        })
    }

    pub(crate) fn gateway_pid(&self) -> Result<u32> {
        self.children
            .pid("tollgate serve")
            .context("the gateway is not running")
    }

    pub(crate) fn mock_pid(&self) -> Result<u32> {
        self.children
            .pid("mock-upstream")
            .context("the mock is not running")
    }

    /// The pids of the PostgreSQL backends connected to the bench's
    /// database (the gateway's pools, the ledger writer's among them).
    pub(crate) async fn database_backend_pids(&self) -> Result<Vec<u32>> {
        let mut conn = sqlx::PgConnection::connect(&self.db.url).await?;
        let pids: Vec<(i32,)> = sqlx::query_as(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut conn)
        .await?;
        Ok(pids
            .into_iter()
            .filter_map(|(p,)| u32::try_from(p).ok())
            .collect())
    }

    pub(crate) async fn ledger_count(&self) -> Result<i64> {
        let mut conn = sqlx::PgConnection::connect(&self.db.url).await?;
        let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM usage_ledger")
            .fetch_one(&mut conn)
            .await?;
        let _ = conn.close().await;
        Ok(count)
    }

    /// Waits until the ledger count stops moving (or reaches `expected`).
    pub(crate) async fn ledger_settled(&self, expected: Option<i64>) -> Result<i64> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = -1;
        loop {
            let count = self.ledger_count().await?;
            if expected.is_some_and(|e| count >= e) || count == last || Instant::now() > deadline {
                return Ok(count);
            }
            last = count;
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    }

    /// Stops everything and drops the database.
    pub(crate) async fn stop(mut self) -> Result<()> {
        self.children.kill_all();
        self.db.drop_now().await
    }
}

/// Every limit kind, each far above what a bench run can reach: a hard
/// monthly budget, requests and tokens per minute, concurrency.
const NEVER_REFUSING_LIMITS: [&str; 8] = [
    "--budget",
    "100000000",
    "--requests-per-minute",
    "1000000000",
    "--tokens-per-minute",
    "1000000000000",
    "--concurrent-requests",
    "100000",
];

/// `tollgate keys create`: the key's id and secret.
async fn create_key(
    bin: &std::path::Path,
    root: &std::path::Path,
    db_url: &str,
    tenant: &str,
) -> Result<(String, String)> {
    let mut create = tollgate_command(bin, root, db_url);
    create.args(["keys", "create", "--tenant", tenant]);
    let created = run_once(create, "keys create").await?;
    let field = |name: &str| {
        created
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .with_context(|| format!("`tollgate keys create` printed no `{name}` line"))
    };
    Ok((field("id:")?, field("key:")?))
}

// ---------------------------------------------------------------------------
// Tools

/// `name` on PATH (or at this path), installing the Debian `package` if missing.
pub(crate) fn ensure_tool(name: &str, package: &str) -> Result<PathBuf> {
    if let Some(path) = which(name) {
        return Ok(path);
    }
    println!("{name} not found: apt-get install -y {package}");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    let ok = install().map(|s| s.success()).unwrap_or(false);
    if !ok {
        let _ = Command::new("apt-get").args(["update", "-q"]).status();
        let _ = install();
    }
    which(name).with_context(|| format!("{name} still missing after apt-get install {package}"))
}

fn which(name: &str) -> Option<PathBuf> {
    let candidate = Path::new(name);
    if candidate.is_absolute() {
        return candidate.is_file().then(|| candidate.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// nginx as a plain reverse proxy to `upstream_port`, as a child.
pub(crate) fn start_nginx(
    children: &mut Children,
    work: &Path,
    upstream_port: u16,
) -> Result<(String, String)> {
    let nginx = ensure_tool("nginx", "nginx")?;
    let dir = work.join("nginx");
    std::fs::create_dir_all(dir.join("logs"))?;
    let port = free_port()?;
    let d = dir.display();
    let conf = format!(
        "worker_processes auto;
worker_rlimit_nofile 65536;
daemon off;
master_process on;
user root;
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream mock {{
        server 127.0.0.1:{upstream_port};
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut command = Command::new(&nginx);
    command
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(dir.join("logs/error.log"));
    children.spawn("nginx", with_fd_limit(&command), dir.join("stdout.log"))?;
    let version = Command::new(&nginx)
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .and_then(|s| s.strip_prefix("nginx version: ").map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());
    Ok((format!("http://127.0.0.1:{port}"), version))
}

// ---------------------------------------------------------------------------
// /proc

/// Resident memory of a process, in KiB.
pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS line")
}

pub(crate) fn clock_ticks() -> f64 {
    super::command_line_output("getconf", &["CLK_TCK"])
        .parse()
        .unwrap_or(100.0)
}

/// (user + system CPU seconds, parent pid) of one process.
fn stat_of(pid: u32) -> Option<(f64, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ppid: u32 = fields.get(1)?.parse().ok()?;
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(((utime + stime) / clock_ticks(), ppid))
}

/// CPU seconds (user + system) of `pid` and its direct children (nginx workers).
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let own = stat_of(pid).map_or(0.0, |(cpu, _)| cpu);
    let children: f64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter_map(stat_of)
        .filter(|(_, ppid)| *ppid == pid)
        .map(|(cpu, _)| cpu)
        .sum();
    own + children
}

// ---------------------------------------------------------------------------
// Report

/// One line of the final table printed by `all`.
#[derive(Debug, Clone)]
pub(crate) struct SummaryRow {
    pub scenario: String,
    pub figure: String,
    pub target: String,
    pub verdict: String,
}

impl SummaryRow {
    pub(crate) fn new(scenario: &str, figure: String, target: &str, met: Option<bool>) -> Self {
        Self {
            scenario: scenario.to_owned(),
            figure,
            target: target.to_owned(),
            verdict: match met {
                Some(true) => "met".to_owned(),
                Some(false) => "MISSED".to_owned(),
                None => "-".to_owned(),
            },
        }
    }
}

pub(crate) fn summary_table(rows: &[SummaryRow]) -> String {
    let mut out = String::from("| scenario | figure | target | |\n|---|---|---|---|\n");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            row.scenario, row.figure, row.target, row.verdict
        );
    }
    out
}

/// Machine and versions, for every section.
pub(crate) fn machine_line(load_start: &str) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    format!(
        "Run {}; {} CPUs ({}), Linux {kernel}, {}; Tollgate {}. Load average (1 min) {load_start} at the start, {} at the end.",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        super::command_line_output("nproc", &[]),
        super::cpu_model(),
        super::command_line_output("rustc", &["--version"]),
        super::git_revision(&repo_root()),
        super::load_average(),
    )
}

pub(crate) fn this_command() -> String {
    format!(
        "cargo run --release --bin tollgate-bench -- {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    )
}

/// Replaces (or appends) the `<!-- key:begin -->` … `<!-- key:end -->` block.
pub(crate) fn write_section(key: &str, body: &str) -> Result<()> {
    let path = repo_root().join(MD_FILE);
    let existing = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let begin = format!("<!-- {key}:begin -->");
    let end = format!("<!-- {key}:end -->");
    let block = format!("{begin}\n{}\n{end}", body.trim_end());
    let out = match (existing.find(&begin), existing.find(&end)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{block}{}", &existing[..b], &existing[e + end.len()..])
        }
        (None, None) => {
            let mut out = existing.trim_end().to_owned();
            out.push_str("\n\n");
            out.push_str(&block);
            out.push('\n');
            out
        }
        _ => bail!("{} has unbalanced {begin} / {end}", path.display()),
    };
    std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {key} section of {}", path.display());
    Ok(())
}
