//! Throwaway local PostgreSQL clusters for `tollgate demo` and fault tests.
//!
//! This module owns the whole life of a private cluster: it finds the
//! `initdb`/`pg_ctl`/`postgres` binaries, runs `initdb` into a fresh temporary
//! directory, picks a free TCP port on 127.0.0.1, starts and stops the server
//! with `pg_ctl`, and on drop shuts it down immediately and deletes the
//! directory. It never touches any other cluster (e.g. the shared server on
//! port 5432).
//!
//! PostgreSQL refuses to run as root. When the current process is root, every
//! PostgreSQL command is run as the `postgres` OS user (through `setpriv`, or
//! `runuser` if `setpriv` is missing) and the temporary directory is chowned to
//! that user. Otherwise the binaries are run directly.
//!
//! Everything here is synchronous (`std::process`); async callers should use
//! `spawn_blocking`.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, PoisonError};

use tempfile::TempDir;

/// Superuser role created by `initdb` (and used in [`TempCluster::url`]).
const SUPERUSER: &str = "postgres";
/// OS user the binaries run as when this process is root.
const OS_USER: &str = "postgres";
/// How many ports to try when the chosen one is taken before the server binds it.
const PORT_ATTEMPTS: usize = 8;
/// Seconds `pg_ctl -w` waits for start/stop.
const PG_CTL_TIMEOUT_SECS: &str = "60";
/// Where distribution packages install versioned PostgreSQL binaries.
const DISTRO_PG_ROOT: &str = "/usr/lib/postgresql";

/// Ports handed out to live clusters of this process, so two clusters started
/// concurrently never pick the same one.
static RESERVED_PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Why a temporary cluster could not be found, started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum PgTempError {
    /// No usable `initdb`/`pg_ctl`/`postgres` binaries.
    #[error("PostgreSQL binaries not found: {0}")]
    BinariesNotFound(String),
    /// Running as root, but there is no way to run PostgreSQL as `postgres`.
    #[error("running as root, but cannot run PostgreSQL as the `postgres` OS user: {0}")]
    NoUnprivilegedUser(String),
    /// A filesystem or process-spawn operation failed.
    #[error("{context}: {error}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        error: io::Error,
    },
    /// A command ran but failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line that failed.
        command: String,
        /// Its exit status.
        status: String,
        /// Its stderr (or stdout if stderr was empty), trimmed onto one line.
        stderr: String,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> PgTempError {
    let context = context.into();
    move |error| PgTempError::Io { context, error }
}

/// Knobs for [`TempCluster::start_with`]. The default is what
/// [`TempCluster::start`] uses.
#[derive(Debug, Clone, Default)]
pub struct TempClusterOptions {
    /// Directory holding `initdb`, `pg_ctl` and `postgres`; `None` means
    /// [`TempCluster::find_bin_dir`].
    pub bin_dir: Option<PathBuf>,
    /// Run with `fsync = off` (and `synchronous_commit`/`full_page_writes`
    /// off). Faster, but an OS crash can corrupt the cluster. Default: false
    /// (fsync stays on).
    pub no_fsync: bool,
}

/// How PostgreSQL commands are launched.
#[derive(Debug, Clone)]
enum RunAs {
    /// Run the binaries directly (we are not root).
    CurrentUser,
    /// We are root: wrap each command so it runs as the `postgres` OS user.
    PostgresUser {
        wrapper: Wrapper,
        uid: u32,
        gid: u32,
    },
}

#[derive(Debug, Clone)]
enum Wrapper {
    Setpriv(PathBuf),
    Runuser(PathBuf),
}

/// A private PostgreSQL cluster in a temporary directory, listening on
/// 127.0.0.1 only, with trust authentication and superuser `postgres`.
///
/// Dropping it stops the server (`pg_ctl -m immediate`) and removes the
/// directory.
#[derive(Debug)]
pub struct TempCluster {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    log_file: PathBuf,
    port: u16,
    run_as: RunAs,
    /// `postgresql.conf` as written by initdb; our settings are appended.
    base_conf: String,
    options: TempClusterOptions,
    // Last field: removed after `Drop::drop` has stopped the server.
    dir: TempDir,
}

impl TempCluster {
    /// Create and start a fresh cluster with default options (fsync on), and
    /// return once it accepts connections.
    pub fn start() -> Result<Self, PgTempError> {
        Self::start_with(TempClusterOptions::default())
    }

    /// Like [`TempCluster::start`], with explicit options.
    pub fn start_with(options: TempClusterOptions) -> Result<Self, PgTempError> {
        let bin_dir = match &options.bin_dir {
            Some(dir) => dir.clone(),
            None => Self::find_bin_dir()?,
        };
        if !has_pg_binaries(&bin_dir) {
            return Err(PgTempError::BinariesNotFound(format!(
                "{} lacks initdb, pg_ctl or postgres",
                bin_dir.display()
            )));
        }
        let run_as = detect_run_as()?;

        let dir = tempfile::Builder::new()
            .prefix("tollgate-pgtemp-")
            .tempdir()
            .map_err(io_err("creating temporary directory"))?;
        let data_dir = dir.path().join("data");
        let log_file = dir.path().join("postgres.log");
        fs::create_dir(&data_dir).map_err(io_err(format!("creating {}", data_dir.display())))?;
        fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("chmod {}", data_dir.display())))?;
        if let RunAs::PostgresUser { uid, gid, .. } = &run_as {
            for path in [dir.path(), data_dir.as_path()] {
                std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                    .map_err(io_err(format!("chown {} to {OS_USER}", path.display())))?;
            }
        }

        let mut cluster = TempCluster {
            bin_dir,
            data_dir,
            log_file,
            port: 0,
            run_as,
            base_conf: String::new(),
            options,
            dir,
        };
        cluster.initdb()?;

        let mut attempt = 1;
        loop {
            let port = reserve_port()?;
            cluster.release_port();
            cluster.port = port;
            cluster.write_conf()?;
            match cluster.pg_ctl_start() {
                Ok(()) => {
                    tracing::debug!(port, dir = %cluster.dir.path().display(), "temporary PostgreSQL cluster started");
                    return Ok(cluster);
                }
                Err(StartError::PortInUse(err)) if attempt < PORT_ATTEMPTS => {
                    tracing::debug!(port, attempt, %err, "port taken before PostgreSQL bound it; retrying");
                    attempt += 1;
                }
                Err(err) => return Err(err.into_inner()),
            }
        }
    }

    /// Connection URL: `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/postgres", self.port)
    }

    /// TCP port the cluster listens on (127.0.0.1 only). Stable across
    /// [`stop`](Self::stop)/[`start_again`](Self::start_again).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory (also holds its unix socket).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The temporary directory (data dir + server log) removed on drop.
    pub fn root_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stop the server with a fast shutdown (`pg_ctl -m fast`), keeping the
    /// data. A no-op if it is not running.
    pub fn stop(&self) -> Result<(), PgTempError> {
        if !self.is_running() {
            return Ok(());
        }
        self.pg_ctl_stop("fast")
    }

    /// Start the server again on the same port with the same data, returning
    /// once it accepts connections. A no-op if it is already running.
    pub fn start_again(&self) -> Result<(), PgTempError> {
        if self.is_running() {
            return Ok(());
        }
        self.pg_ctl_start().map_err(StartError::into_inner)
    }

    /// Whether the server is running (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("status").arg("-D").arg(&self.data_dir);
        matches!(cmd.output(), Ok(out) if out.status.success())
    }

    /// Directory holding the PostgreSQL server binaries: the directory of
    /// `initdb` found on `PATH` (symlinks resolved when the real directory
    /// also has `pg_ctl` and `postgres`), else the newest
    /// `/usr/lib/postgresql/<version>/bin`.
    pub fn find_bin_dir() -> Result<PathBuf, PgTempError> {
        if let Some(initdb) = find_in_path("initdb") {
            let real_dir = fs::canonicalize(&initdb)
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf));
            let path_dir = initdb.parent().map(Path::to_path_buf);
            if let Some(dir) = [real_dir, path_dir]
                .into_iter()
                .flatten()
                .find(|d| has_pg_binaries(d))
            {
                return Ok(dir);
            }
        }
        let entries = fs::read_dir(DISTRO_PG_ROOT).map_err(|e| {
            PgTempError::BinariesNotFound(format!(
                "initdb is not on PATH and {DISTRO_PG_ROOT} is unreadable: {e}"
            ))
        })?;
        entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let version = parse_version(&entry.file_name().to_string_lossy())?;
                let bin = entry.path().join("bin");
                has_pg_binaries(&bin).then_some((version, bin))
            })
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, bin)| bin)
            .ok_or_else(|| {
                PgTempError::BinariesNotFound(format!(
                    "initdb is not on PATH and no {DISTRO_PG_ROOT}/<version>/bin has initdb, pg_ctl and postgres"
                ))
            })
    }

    fn initdb(&mut self) -> Result<(), PgTempError> {
        let mut cmd = self.pg_command("initdb");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync", "--no-instructions"]);
        run(&mut cmd)?;
        let conf = self.data_dir.join("postgresql.conf");
        self.base_conf =
            fs::read_to_string(&conf).map_err(io_err(format!("reading {}", conf.display())))?;
        Ok(())
    }

    /// Rewrite `postgresql.conf` as initdb's version plus our settings.
    /// Overwriting an existing file keeps its owner (`postgres` when root).
    fn write_conf(&self) -> Result<(), PgTempError> {
        let mut conf = self.base_conf.clone();
        conf.push_str("\n# --- added by tollgate pgtemp ---\n");
        conf.push_str("listen_addresses = '127.0.0.1'\n");
        conf.push_str(&format!("port = {}\n", self.port));
        conf.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            conf_quote(&self.data_dir.to_string_lossy())
        ));
        if self.options.no_fsync {
            conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        let path = self.data_dir.join("postgresql.conf");
        fs::write(&path, conf).map_err(io_err(format!("writing {}", path.display())))
    }

    fn pg_ctl_start(&self) -> Result<(), StartError> {
        // Only look at log lines written by this attempt.
        let log_offset = fs::metadata(&self.log_file).map(|m| m.len()).unwrap_or(0);
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file)
            .args(["-w", "-t", PG_CTL_TIMEOUT_SECS]);
        match run(&mut cmd) {
            Ok(_) => Ok(()),
            Err(PgTempError::Command {
                command,
                status,
                stderr,
            }) => {
                let log = read_log_from(&self.log_file, log_offset);
                let port_in_use = log.contains("Address already in use")
                    || log.contains("could not bind")
                    || log.contains("could not create any TCP/IP sockets");
                let reasons = log_errors(&log);
                let stderr = if reasons.is_empty() {
                    stderr
                } else {
                    format!("{stderr}; server log: {reasons}")
                };
                let err = PgTempError::Command {
                    command,
                    status,
                    stderr,
                };
                Err(if port_in_use {
                    StartError::PortInUse(err)
                } else {
                    StartError::Other(err)
                })
            }
            Err(other) => Err(StartError::Other(other)),
        }
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), PgTempError> {
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("stop").arg("-D").arg(&self.data_dir).args([
            "-m",
            mode,
            "-w",
            "-t",
            PG_CTL_TIMEOUT_SECS,
        ]);
        run(&mut cmd).map(drop)
    }

    /// Last resort when `pg_ctl stop` fails in drop: SIGQUIT the postmaster
    /// (its immediate-shutdown signal).
    fn kill_postmaster(&self) {
        let pid_file = self.data_dir.join("postmaster.pid");
        let Ok(contents) = fs::read_to_string(&pid_file) else {
            return;
        };
        let Some(pid) = contents
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u32>().ok())
        else {
            return;
        };
        let result = Command::new("kill")
            .args(["-QUIT", &pid.to_string()])
            .stdin(Stdio::null())
            .output();
        if !matches!(&result, Ok(out) if out.status.success()) {
            tracing::warn!(pid, "could not signal temporary PostgreSQL postmaster");
        }
    }

    /// A command for one of the PostgreSQL binaries, run as the right user,
    /// from a directory that user can enter, in the C locale.
    fn pg_command(&self, binary: &str) -> Command {
        let program = self.bin_dir.join(binary);
        let mut cmd = match &self.run_as {
            RunAs::CurrentUser => Command::new(&program),
            RunAs::PostgresUser { wrapper, .. } => {
                let mut cmd = match wrapper {
                    Wrapper::Setpriv(path) => {
                        let mut cmd = Command::new(path);
                        cmd.args([
                            &format!("--reuid={OS_USER}"),
                            &format!("--regid={OS_USER}"),
                            "--init-groups",
                        ]);
                        cmd
                    }
                    Wrapper::Runuser(path) => {
                        let mut cmd = Command::new(path);
                        cmd.args(["-u", OS_USER]);
                        cmd
                    }
                };
                cmd.arg("--").arg(&program);
                cmd
            }
        };
        cmd.current_dir(self.dir.path())
            .env("LC_ALL", "C")
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST")
            .stdin(Stdio::null());
        cmd
    }

    fn release_port(&self) {
        if self.port != 0 {
            RESERVED_PORTS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&self.port);
        }
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        if self.port != 0 && self.is_running() {
            if let Err(err) = self.pg_ctl_stop("immediate") {
                tracing::warn!(%err, "immediate stop of temporary PostgreSQL failed; signalling postmaster");
                self.kill_postmaster();
            }
        }
        self.release_port();
        // `self.dir` (TempDir) removes the directory when the fields drop.
    }
}

/// `pg_ctl start` failure, split by whether retrying on another port may help.
enum StartError {
    PortInUse(PgTempError),
    Other(PgTempError),
}

impl StartError {
    fn into_inner(self) -> PgTempError {
        match self {
            StartError::PortInUse(e) | StartError::Other(e) => e,
        }
    }
}

/// Run a command to completion; a non-zero exit becomes
/// [`PgTempError::Command`] with its trimmed, one-line stderr.
fn run(cmd: &mut Command) -> Result<Output, PgTempError> {
    let described = describe(cmd);
    let out = cmd
        .output()
        .map_err(io_err(format!("running `{described}`")))?;
    if out.status.success() {
        return Ok(out);
    }
    let stderr = one_line(&String::from_utf8_lossy(&out.stderr));
    let stderr = if stderr.is_empty() {
        one_line(&String::from_utf8_lossy(&out.stdout))
    } else {
        stderr
    };
    Err(PgTempError::Command {
        command: described,
        status: out.status.to_string(),
        stderr,
    })
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn read_log_from(path: &Path, offset: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// The last few FATAL/PANIC/ERROR (and bind failure) lines of a server log,
/// on one line.
fn log_errors(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| {
            ["FATAL:", "PANIC:", "ERROR:", "could not bind"]
                .iter()
                .any(|needle| l.contains(needle))
        })
        .collect();
    lines[lines.len().saturating_sub(3)..].join("; ")
}

/// Quote a value for a single-quoted `postgresql.conf` string.
fn conf_quote(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\'', "''")
}

/// Pick a free port by binding 127.0.0.1:0 and releasing it, skipping ports
/// already handed to another cluster of this process.
fn reserve_port() -> Result<u16, PgTempError> {
    for _ in 0..64 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(io_err("binding 127.0.0.1:0 to pick a port"))?;
        let port = listener
            .local_addr()
            .map_err(io_err("reading the picked port"))?
            .port();
        drop(listener);
        if RESERVED_PORTS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(port)
        {
            return Ok(port);
        }
    }
    Err(PgTempError::Io {
        context: "picking a free port on 127.0.0.1".to_owned(),
        error: io::Error::new(io::ErrorKind::AddrInUse, "no unreserved port found"),
    })
}

fn detect_run_as() -> Result<RunAs, PgTempError> {
    if effective_uid() != Some(0) {
        return Ok(RunAs::CurrentUser);
    }
    let wrapper = if let Some(path) = find_executable("setpriv") {
        Wrapper::Setpriv(path)
    } else if let Some(path) = find_executable("runuser") {
        Wrapper::Runuser(path)
    } else {
        return Err(PgTempError::NoUnprivilegedUser(
            "neither setpriv nor runuser is installed".to_owned(),
        ));
    };
    let uid = id_of(OS_USER, "-u")?;
    let gid = id_of(OS_USER, "-g")?;
    Ok(RunAs::PostgresUser { wrapper, uid, gid })
}

/// Effective uid from `/proc/self/status`, falling back to `id -u`.
fn effective_uid() -> Option<u32> {
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        if let Some(rest) = status.lines().find_map(|l| l.strip_prefix("Uid:")) {
            // Fields: real, effective, saved, filesystem.
            if let Some(euid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
                return Some(euid);
            }
        }
    }
    let out = Command::new("id").arg("-u").output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// `id -u USER` / `id -g USER` (goes through NSS, unlike parsing /etc/passwd).
fn id_of(user: &str, flag: &str) -> Result<u32, PgTempError> {
    let mut cmd = Command::new("id");
    cmd.args([flag, user]);
    let out = run(&mut cmd)
        .map_err(|e| PgTempError::NoUnprivilegedUser(format!("no `{user}` OS user ({e})")))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| PgTempError::NoUnprivilegedUser(format!("`id {flag} {user}`: {e}")))
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// `PATH`, then the usual sbin/bin directories (root's tools may not be on PATH).
fn find_executable(name: &str) -> Option<PathBuf> {
    find_in_path(name).or_else(|| {
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(name))
            .find(|p| is_executable(p))
    })
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn has_pg_binaries(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|b| is_executable(&dir.join(b)))
}

/// "15" → [15], "9.6" → [9, 6]; anything else is not a version directory.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn psql(port: u16, sql: &str) -> Output {
        Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-X", "-A", "-t"])
            .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "5")
            .env_remove("PGPASSWORD")
            .output()
            .expect("run psql")
    }

    fn psql_ok(port: u16, sql: &str) -> String {
        let out = psql(port, sql);
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn pg_isready(port: u16) -> i32 {
        Command::new("pg_isready")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "3"])
            .status()
            .expect("run pg_isready")
            .code()
            .expect("exit code")
    }

    #[test]
    fn lifecycle_stop_restart_and_cleanup() {
        let t = Instant::now();
        let cluster = TempCluster::start().expect("start");
        eprintln!("start() took {:?}", t.elapsed());
        let port = cluster.port();
        assert_ne!(port, 5432);
        assert_eq!(
            cluster.url(),
            format!("postgres://postgres@127.0.0.1:{port}/postgres")
        );
        assert!(cluster.is_running());
        assert_eq!(psql_ok(port, "select 1"), "1");
        assert_eq!(psql_ok(port, "show fsync"), "on");
        assert_eq!(pg_isready(port), 0);
        psql_ok(
            port,
            "create table kept(v int); insert into kept values (42)",
        );

        let t = Instant::now();
        cluster.stop().expect("stop");
        eprintln!("stop() took {:?}", t.elapsed());
        assert!(!cluster.is_running());
        let out = psql(port, "select 1");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("Connection refused"), "{stderr}");
        assert_eq!(pg_isready(port), 2, "no response expected");
        cluster.stop().expect("second stop is a no-op");

        let t = Instant::now();
        cluster.start_again().expect("start_again");
        eprintln!("start_again() took {:?}", t.elapsed());
        assert_eq!(cluster.port(), port);
        assert!(cluster.is_running());
        assert_eq!(psql_ok(port, "select v from kept"), "42");
        cluster
            .start_again()
            .expect("start_again while running is a no-op");

        let root = cluster.root_dir().to_path_buf();
        assert!(root.join("data").join("PG_VERSION").exists());
        let t = Instant::now();
        drop(cluster);
        eprintln!("drop took {:?}", t.elapsed());
        assert!(!root.exists(), "{} not removed", root.display());
        let out = psql(port, "select 1");
        assert!(!out.status.success(), "server still up after drop");
    }

    #[test]
    fn two_clusters_start_concurrently() {
        let t = Instant::now();
        let a = std::thread::spawn(TempCluster::start);
        let b = std::thread::spawn(|| {
            TempCluster::start_with(TempClusterOptions {
                no_fsync: true,
                ..TempClusterOptions::default()
            })
        });
        let a = a.join().expect("join a").expect("start a");
        let b = b.join().expect("join b").expect("start b");
        eprintln!("two concurrent starts took {:?}", t.elapsed());
        assert_ne!(a.port(), b.port());
        assert_ne!(a.root_dir(), b.root_dir());
        for cluster in [&a, &b] {
            let out = Command::new("psql")
                .arg(cluster.url())
                .args(["-X", "-A", "-t", "-c", "select current_user"])
                .output()
                .expect("psql url");
            assert!(out.status.success(), "{out:?}");
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "postgres");
        }
        assert_eq!(psql_ok(a.port(), "show fsync"), "on");
        assert_eq!(psql_ok(b.port(), "show fsync"), "off");
        // Stopping one leaves the other alone.
        a.stop().expect("stop a");
        assert_eq!(psql_ok(b.port(), "select 1"), "1");
    }

    #[test]
    fn start_again_reports_port_clash_on_one_line() {
        let cluster = TempCluster::start().expect("start");
        cluster.stop().expect("stop");
        let squatter = TcpListener::bind((Ipv4Addr::LOCALHOST, cluster.port())).expect("squat");
        let err = cluster.start_again().expect_err("port is taken");
        let msg = err.to_string();
        eprintln!("{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains("pg_ctl"), "{msg}");
        assert!(msg.contains("could not") || msg.contains("in use"), "{msg}");
        drop(squatter);
        cluster.start_again().expect("start after port freed");
        assert_eq!(psql_ok(cluster.port(), "select 1"), "1");
    }

    #[test]
    fn missing_binaries_give_clear_error() {
        let err = TempCluster::start_with(TempClusterOptions {
            bin_dir: Some(PathBuf::from("/nonexistent")),
            ..TempClusterOptions::default()
        })
        .expect_err("no binaries");
        assert!(matches!(err, PgTempError::BinariesNotFound(_)), "{err}");
    }

    #[test]
    fn finds_bin_dir_and_parses_versions() {
        let dir = TempCluster::find_bin_dir().expect("bin dir");
        assert!(has_pg_binaries(&dir), "{}", dir.display());
        assert_eq!(parse_version("15"), Some(vec![15]));
        assert_eq!(parse_version("9.6"), Some(vec![9, 6]));
        assert_eq!(parse_version("x"), None);
        assert_eq!(conf_quote("/tmp/a'b"), "/tmp/a''b");
    }
}
