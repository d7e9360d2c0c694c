//! Typed configuration: `config/tollgate.toml` (or `--config` / `TOLLGATE_CONFIG`),
//! then the environment variables of CONTRACT §2 on top, then one
//! [`Config::validate`] whose errors name the field path.
//!
//! Secrets never appear in `Debug` output ([`Secret`]); in the file they may be
//! written as `env:NAME` references so the file itself holds none.
//! This module reads the environment only through [`Env`], so tests can give
//! their own without touching the process environment.

pub mod exports;
pub mod reconcile;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub const DEFAULT_CONFIG_PATH: &str = "config/tollgate.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A credential: redacted in `Debug`, resolved from `env:NAME` references.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("Secret(<empty>)")
        } else {
            f.write_str("Secret(***)")
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Where environment variables come from.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    /// `Authorization: Bearer <key>`, path `<url>/responses`.
    Openai,
    /// `api-key: <key>` header; the model field carries the deployment name.
    Azure,
}

impl UpstreamKind {
    fn parse(value: &str) -> Option<Self> {
        match value {
            "openai" => Some(Self::Openai),
            "azure" => Some(Self::Azure),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    /// Base URL; the gateway appends `/responses`.
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub key: Secret,
    #[serde(default = "default_kind")]
    pub kind: UpstreamKind,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Azure's legacy form: `POST <url>/responses?api-version=<this>`
    /// instead of the v1 path.
    #[serde(default)]
    pub api_version: Option<String>,
}

/// One place a public model can be served: an upstream and the model name
/// that upstream knows (an Azure deployment name, say).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    pub upstream: String,
    /// Defaults to the public model id.
    #[serde(default)]
    pub deployment: Option<String>,
}

/// The ordered deployments of one public model (tried in order on
/// connection failures, 429 and 5xx).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub model: String,
    pub deployments: Vec<DeploymentConfig>,
}

fn default_kind() -> UpstreamKind {
    UpstreamKind::Openai
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}

/// What happens to an upstream stream when the client goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DisconnectPolicy {
    /// Keep reading the upstream until its terminal event (bounded by the
    /// request's timeout) so the row carries the usage the backend bills.
    Drain,
    /// Close the upstream at once: cheaper for the backend bill when it stops
    /// generating, but the row has no reported usage.
    Abort,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Most rows one INSERT carries.
    pub batch_max: usize,
    /// How long the writer waits for more rows after the first of a batch
    /// arrives (unless `batch_max` is reached first). Fewer, larger INSERTs
    /// cost PostgreSQL and the gateway less per row; the price is that a
    /// crash (SIGKILL) can lose rows of requests that ended this much longer
    /// ago. 0 writes whatever is queued at once.
    pub linger_ms: u64,
    pub spool_dir: PathBuf,
    /// Months kept in the database, the current one included; an older
    /// month is archived to Parquet, verified and dropped (CONTRACT §5a).
    /// Unset: keep everything.
    pub retention_months: Option<u32>,
    /// Where archived months are written (`TOLLGATE_ARCHIVE_DIR`).
    pub archive_dir: PathBuf,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            batch_max: 1_000,
            linger_ms: 5,
            spool_dir: PathBuf::from("./data/spool"),
            retention_months: None,
            archive_dir: PathBuf::from("./data/archive"),
        }
    }
}

impl LedgerConfig {
    pub fn batching(&self) -> crate::ledger::Batching {
        crate::ledger::Batching {
            max_rows: self.batch_max,
            linger: std::time::Duration::from_millis(self.linger_ms),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricesConfig {
    /// Requests for models with no price are forwarded (cost left null)
    /// instead of refused with 404.
    pub allow_unpriced_models: bool,
    /// Safety reload of the in-memory price table.
    pub reload_interval_secs: u64,
}

impl Default for PricesConfig {
    fn default() -> Self {
        Self {
            allow_unpriced_models: false,
            reload_interval_secs: 5,
        }
    }
}

/// Bounds on client connections (`[server]`): see README "Bounds".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// From the first byte of a request to the end of its headers.
    pub header_read_timeout_secs: u64,
    /// From the end of the headers to the end of the body; a body still
    /// arriving then is cut with 408.
    pub body_read_timeout_secs: u64,
    /// How long a keep-alive connection may wait, with no request under way,
    /// for the first byte of the next request.
    pub idle_timeout_secs: u64,
    /// Open client connections at most; one over it is answered 503 with
    /// `retry-after` and closed. Lowered at start to fit the open-files limit.
    pub max_connections: usize,
    /// How long an upgraded WebSocket may go with no response under way.
    pub websocket_idle_timeout_secs: u64,
    /// How long a WebSocket may stay open; past it, it is closed once its
    /// response under way (if any) ends.
    pub websocket_max_lifetime_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 60,
            idle_timeout_secs: 60,
            max_connections: 8_192,
            websocket_idle_timeout_secs: 300,
            websocket_max_lifetime_secs: 86_400,
        }
    }
}

/// The database pools besides the main one (`database_max_connections`,
/// which serves authentication, proxying, the admin API and readiness).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// The ledger writer's own connections: reports can never take them.
    pub ledger_max_connections: u32,
    /// JSON records pages and usage reports.
    pub reports_max_connections: u32,
    /// `statement_timeout` of every report query.
    pub report_statement_timeout_secs: u64,
    /// CSV exports (each holds a connection while it streams).
    pub exports_max_connections: u32,
    /// CSV exports one tenant (or the admin API) may run at once; one more
    /// is answered 429 `rate_limit_exceeded` with `retry-after`.
    pub exports_per_tenant: u32,
    /// Longest a CSV export may run (also its `statement_timeout`).
    pub export_max_secs: u64,
    /// A client that reads nothing of an export for this long is cut, and
    /// the export's connection goes back to the pool.
    pub export_stall_secs: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            ledger_max_connections: 4,
            reports_max_connections: 8,
            report_statement_timeout_secs: 30,
            exports_max_connections: 4,
            exports_per_tenant: 2,
            export_max_secs: 900,
            export_stall_secs: 30,
        }
    }
}

/// Budget threshold alerts (`[alerts]`, CONTRACT §8): how their webhooks
/// are signed and retried. See README "Spend control".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// The HMAC-SHA256 key of `x-tollgate-signature` (`env:NAME` allowed;
    /// `TOLLGATE_ALERTS_SECRET` overrides). Empty: alerts cannot be set
    /// (422) and this replica delivers none.
    pub signing_secret: Secret,
    /// The first retry's delay; each further one doubles, up to
    /// `retry_max_secs`.
    pub retry_base_ms: u64,
    pub retry_max_secs: u64,
    /// One delivery attempt at most (connect, send, response headers).
    pub request_timeout_secs: u64,
    /// How often every alerting scope is checked even without new ledger
    /// rows (the safety net for a crossing a replica died before checking).
    pub sweep_secs: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            signing_secret: Secret::default(),
            retry_base_ms: 1_000,
            retry_max_secs: 300,
            request_timeout_secs: 10,
            sweep_secs: 60,
        }
    }
}

/// A signing secret shorter than this is refused at start.
pub const MIN_ALERTS_SECRET: usize = 16;

/// An extra admin token with a label; the label is what the audit trail
/// (`created_by` of price versions) records for changes made with it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTokenConfig {
    pub label: String,
    pub token: Secret,
}

/// The label recorded for changes made with `admin_token`
/// (`TOLLGATE_ADMIN_TOKEN`); extra tokens may not take it.
pub const MAIN_ADMIN_LABEL: &str = "admin";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: String,
    pub database_url: String,
    pub admin_token: Secret,
    /// Labelled admin tokens besides `admin_token` (`[[admin_tokens]]`).
    pub admin_tokens: Vec<AdminTokenConfig>,
    pub model_prefix: String,
    /// Largest accepted request body; base64 images make requests large.
    pub body_limit_bytes: usize,
    pub database_max_connections: u32,
    /// How long shutdown waits for in-flight requests before cutting them.
    pub drain_deadline_secs: u64,
    pub on_client_disconnect: DisconnectPolicy,
    pub upstreams: Vec<UpstreamConfig>,
    /// Per public model; models without a route go to the first upstream.
    pub routes: Vec<RouteConfig>,
    /// Per tenant, the MCP `server_url` hosts its requests may name; a
    /// tenant not listed may name any host.
    pub mcp_allowed_hosts: HashMap<String, Vec<String>>,
    /// `[tools]`: offered tools the platform does not serve.
    pub tools: ToolsConfig,
    /// `[limits]`: how spend control holds what it reserves.
    pub limits: LimitsConfig,
    /// How often pending background responses are polled for their usage.
    pub background_poll_secs: u64,
    pub ledger: LedgerConfig,
    pub prices: PricesConfig,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub alerts: AlertsConfig,
    /// `[reconcile]`: the provider's usage and cost (CONTRACT §12).
    pub reconcile: reconcile::ReconcileConfig,
    /// `[exports.<sink>]`: billing export (CONTRACT §13).
    pub exports: exports::ExportsConfig,
}

/// `[limits]` (CONTRACT §8).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// How long a replica's slice of a scope holds without renewal. The
    /// replica renews it every second while it serves the scope; a dead
    /// replica's slice lapses this long after its last renewal, and through
    /// a database outage a replica admits from its slices for at most this
    /// long after its last sync.
    pub lease_ttl_secs: u64,
    /// How often a replica syncs the slices it used (refill ahead of need,
    /// report what is open, hand back what it does not need).
    pub lease_sync_ms: u64,
    /// How many seconds of a scope's recent demand a slice keeps ready (and
    /// so covers through a database outage), never more than half of what
    /// is free per sync.
    pub lease_cover_secs: u64,
    /// How long a request's hold is kept when its row never reaches the
    /// ledger (refused by the database) or its background response never
    /// settles; it then ends as if it had cost its estimate.
    pub max_hold_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            lease_ttl_secs: 120,
            lease_sync_ms: 1000,
            lease_cover_secs: 30,
            max_hold_secs: 24 * 60 * 60,
        }
    }
}

impl LimitsConfig {
    pub fn leases(&self) -> crate::limits::LeaseSettings {
        crate::limits::LeaseSettings {
            ttl: Duration::from_secs(self.lease_ttl_secs),
            every: Duration::from_millis(self.lease_sync_ms),
            cover: Duration::from_secs(self.lease_cover_secs),
            max_hold: Duration::from_secs(self.max_hold_secs),
        }
    }
}

/// What to do with an offered tool the platform does not serve
/// (`proxy::tools`): leave it out of the forwarded request, or refuse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnsupportedTools {
    #[default]
    Drop,
    Refuse,
}

/// `[tools]`: `unsupported` for every tenant, `tenants` overriding it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsConfig {
    pub unsupported: UnsupportedTools,
    pub tenants: HashMap<String, UnsupportedTools>,
}

impl ToolsConfig {
    pub fn policy(&self, tenant: &str) -> UnsupportedTools {
        self.tenants
            .get(tenant)
            .copied()
            .unwrap_or(self.unsupported)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            database_url: "postgres://postgres@127.0.0.1:5432/tollgate".into(),
            admin_token: Secret::default(),
            admin_tokens: Vec::new(),
            model_prefix: "turing/".into(),
            body_limit_bytes: 32 * 1024 * 1024,
            database_max_connections: 16,
            drain_deadline_secs: 25,
            on_client_disconnect: DisconnectPolicy::Drain,
            upstreams: Vec::new(),
            routes: Vec::new(),
            mcp_allowed_hosts: HashMap::new(),
            tools: ToolsConfig::default(),
            limits: LimitsConfig::default(),
            background_poll_secs: 15,
            ledger: LedgerConfig::default(),
            prices: PricesConfig::default(),
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            alerts: AlertsConfig::default(),
            reconcile: Default::default(),
            exports: Default::default(),
        }
    }
}

impl Config {
    /// Reads `path` (or the default file when it exists), applies the
    /// environment and validates.
    pub fn load(path: Option<&Path>, env: &dyn Env) -> Result<Self, ConfigError> {
        let explicit = path
            .map(Path::to_path_buf)
            .or_else(|| env.var("TOLLGATE_CONFIG").map(PathBuf::from));
        let mut config = match explicit {
            Some(path) => Self::from_file(&path)?,
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Self::from_file(Path::new(DEFAULT_CONFIG_PATH))?
            }
            None => Self::default(),
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Environment variables override the file (CONTRACT §2). The upstream
    /// variables describe the upstream named `default`, created if absent.
    pub fn apply_env(&mut self, env: &dyn Env) -> Result<(), ConfigError> {
        if let Some(v) = env.var("DATABASE_URL") {
            self.database_url = v;
        }
        if let Some(v) = env.var("TOLLGATE_LISTEN") {
            self.listen = v;
        }
        if let Some(v) = env.var("TOLLGATE_ADMIN_TOKEN") {
            self.admin_token = Secret::new(v);
        }
        if let Some(v) = env.var("TOLLGATE_MODEL_PREFIX") {
            self.model_prefix = v;
        }
        if let Some(v) = env.var("TOLLGATE_SPOOL_DIR") {
            self.ledger.spool_dir = PathBuf::from(v);
        }
        if let Some(v) = env.var("TOLLGATE_ARCHIVE_DIR") {
            self.ledger.archive_dir = PathBuf::from(v);
        }
        if let Some(v) = env.var("TOLLGATE_ALERTS_SECRET") {
            self.alerts.signing_secret = Secret::new(v);
        }
        let url = env.var("TOLLGATE_UPSTREAM_URL");
        let key = env.var("TOLLGATE_UPSTREAM_KEY");
        let kind = env.var("TOLLGATE_UPSTREAM_KIND");
        if url.is_some() || key.is_some() || kind.is_some() {
            let index = match self.upstreams.iter().position(|u| u.name == "default") {
                Some(i) => i,
                None => {
                    self.upstreams.insert(
                        0,
                        UpstreamConfig {
                            name: "default".into(),
                            url: String::new(),
                            key: Secret::default(),
                            kind: UpstreamKind::Openai,
                            connect_timeout_ms: default_connect_timeout_ms(),
                            api_version: None,
                        },
                    );
                    0
                }
            };
            let upstream = &mut self.upstreams[index];
            if let Some(url) = url {
                upstream.url = url;
            }
            if let Some(key) = key {
                upstream.key = Secret::new(key);
            }
            if let Some(kind) = kind {
                upstream.kind = UpstreamKind::parse(&kind).ok_or_else(|| {
                    invalid(
                        "TOLLGATE_UPSTREAM_KIND",
                        format!("`{kind}` is not one of openai, azure"),
                    )
                })?;
            }
        }
        self.admin_token = resolve_secret(&self.admin_token, "admin_token", env)?;
        for (i, admin) in self.admin_tokens.iter_mut().enumerate() {
            admin.token = resolve_secret(&admin.token, &format!("admin_tokens[{i}].token"), env)?;
        }
        for (i, upstream) in self.upstreams.iter_mut().enumerate() {
            upstream.key = resolve_secret(&upstream.key, &format!("upstreams[{i}].key"), env)?;
        }
        self.alerts.signing_secret =
            resolve_secret(&self.alerts.signing_secret, "alerts.signing_secret", env)?;
        self.reconcile.apply_env(env)?;
        self.exports.apply_env(env)?;
        Ok(())
    }

    /// Checks what serde cannot; each error names the field path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| invalid("listen", format!("`{}`: {e}", self.listen)))?;
        if !self.database_url.starts_with("postgres://")
            && !self.database_url.starts_with("postgresql://")
        {
            return Err(invalid(
                "database_url",
                "must be a postgres:// or postgresql:// URL",
            ));
        }
        if self.body_limit_bytes < 1024 {
            return Err(invalid("body_limit_bytes", "must be at least 1024"));
        }
        if self.ledger.batch_max == 0 {
            return Err(invalid("ledger.batch_max", "must be at least 1"));
        }
        if self.ledger.linger_ms > 1_000 {
            return Err(invalid("ledger.linger_ms", "must be at most 1000"));
        }
        if self.ledger.retention_months == Some(0) {
            return Err(invalid(
                "ledger.retention_months",
                "must be at least 1 (the current month stays)",
            ));
        }
        if self.prices.reload_interval_secs == 0 {
            return Err(invalid("prices.reload_interval_secs", "must be at least 1"));
        }
        self.validate_admin_tokens()?;
        let mut names = std::collections::HashSet::new();
        for (i, upstream) in self.upstreams.iter().enumerate() {
            let field = |f: &str| format!("upstreams[{i}].{f}");
            if upstream.name.is_empty() {
                return Err(invalid(field("name"), "must not be empty"));
            }
            if !names.insert(upstream.name.as_str()) {
                return Err(invalid(
                    field("name"),
                    format!("`{}` is declared twice", upstream.name),
                ));
            }
            if !(upstream.url.starts_with("http://") || upstream.url.starts_with("https://")) {
                return Err(invalid(
                    field("url"),
                    format!("`{}` is not an http(s) URL", upstream.url),
                ));
            }
            if upstream.key.is_empty() {
                return Err(invalid(field("key"), "the upstream credential is not set"));
            }
        }
        let mut routed = std::collections::HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            if route.model.is_empty() || !routed.insert(route.model.as_str()) {
                return Err(invalid(
                    format!("routes[{i}].model"),
                    format!("`{}` is empty or routed twice", route.model),
                ));
            }
            if route.deployments.is_empty() {
                return Err(invalid(
                    format!("routes[{i}].deployments"),
                    "needs at least one deployment",
                ));
            }
            for (j, deployment) in route.deployments.iter().enumerate() {
                if !names.contains(deployment.upstream.as_str()) {
                    return Err(invalid(
                        format!("routes[{i}].deployments[{j}].upstream"),
                        format!("no upstream is named `{}`", deployment.upstream),
                    ));
                }
            }
        }
        let l = &self.limits;
        if l.lease_ttl_secs < 2 {
            return Err(invalid("limits.lease_ttl_secs", "must be at least 2"));
        }
        if !(10..=60_000).contains(&l.lease_sync_ms) || l.lease_sync_ms >= l.lease_ttl_secs * 250 {
            return Err(invalid(
                "limits.lease_sync_ms",
                "must be 10-60000 and below a quarter of lease_ttl_secs",
            ));
        }
        if !(1..=3600).contains(&l.lease_cover_secs) {
            return Err(invalid("limits.lease_cover_secs", "must be 1-3600"));
        }
        if l.max_hold_secs < 60 {
            return Err(invalid("limits.max_hold_secs", "must be at least 60"));
        }
        if self.background_poll_secs == 0 {
            return Err(invalid("background_poll_secs", "must be at least 1"));
        }
        self.validate_bounds()
    }

    /// Every timeout and pool of `[server]` and `[database]` must be at
    /// least 1: a zero would refuse everything or wait forever.
    fn validate_bounds(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        let d = &self.database;
        let at_least_one: [(&str, u64); 12] = [
            (
                "server.header_read_timeout_secs",
                s.header_read_timeout_secs,
            ),
            ("server.body_read_timeout_secs", s.body_read_timeout_secs),
            ("server.idle_timeout_secs", s.idle_timeout_secs),
            ("server.max_connections", s.max_connections as u64),
            (
                "server.websocket_idle_timeout_secs",
                s.websocket_idle_timeout_secs,
            ),
            (
                "server.websocket_max_lifetime_secs",
                s.websocket_max_lifetime_secs,
            ),
            (
                "database.ledger_max_connections",
                d.ledger_max_connections.into(),
            ),
            (
                "database.reports_max_connections",
                d.reports_max_connections.into(),
            ),
            (
                "database.report_statement_timeout_secs",
                d.report_statement_timeout_secs,
            ),
            (
                "database.exports_max_connections",
                d.exports_max_connections.into(),
            ),
            ("database.exports_per_tenant", d.exports_per_tenant.into()),
            ("database.export_stall_secs", d.export_stall_secs),
        ];
        for (field, value) in at_least_one {
            if value == 0 {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        if d.export_max_secs < d.export_stall_secs {
            return Err(invalid(
                "database.export_max_secs",
                "must be at least database.export_stall_secs",
            ));
        }
        self.validate_alerts()
    }

    fn validate_alerts(&self) -> Result<(), ConfigError> {
        let a = &self.alerts;
        let secret = a.signing_secret.expose();
        if !secret.is_empty() && secret.len() < MIN_ALERTS_SECRET {
            return Err(invalid(
                "alerts.signing_secret",
                format!("must be at least {MIN_ALERTS_SECRET} bytes (or unset)"),
            ));
        }
        if !(1..=3_600).contains(&a.retry_max_secs) {
            return Err(invalid("alerts.retry_max_secs", "must be 1-3600"));
        }
        if a.retry_base_ms == 0 || a.retry_base_ms > a.retry_max_secs.saturating_mul(1_000) {
            return Err(invalid(
                "alerts.retry_base_ms",
                "must be at least 1 and at most alerts.retry_max_secs",
            ));
        }
        if !(1..=60).contains(&a.request_timeout_secs) {
            return Err(invalid("alerts.request_timeout_secs", "must be 1-60"));
        }
        if a.sweep_secs == 0 {
            return Err(invalid("alerts.sweep_secs", "must be at least 1"));
        }
        self.reconcile.validate(!a.signing_secret.is_empty())?;
        self.exports.validate(!a.signing_secret.is_empty())
    }

    /// Labels are what the audit trail shows, so they must be unambiguous;
    /// tokens must be distinct so that a token names exactly one label.
    fn validate_admin_tokens(&self) -> Result<(), ConfigError> {
        let mut labels = std::collections::HashSet::new();
        let mut tokens = std::collections::HashSet::new();
        if !self.admin_token.is_empty() {
            tokens.insert(self.admin_token.expose());
        }
        for (i, admin) in self.admin_tokens.iter().enumerate() {
            let field = |f: &str| format!("admin_tokens[{i}].{f}");
            let label_ok = admin.label.len() <= 64
                && admin
                    .label
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric())
                && admin
                    .label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !label_ok {
                return Err(invalid(
                    field("label"),
                    "must be 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit",
                ));
            }
            if admin.label == MAIN_ADMIN_LABEL {
                return Err(invalid(
                    field("label"),
                    format!("`{MAIN_ADMIN_LABEL}` is the label of TOLLGATE_ADMIN_TOKEN"),
                ));
            }
            if !labels.insert(admin.label.as_str()) {
                return Err(invalid(
                    field("label"),
                    format!("`{}` is declared twice", admin.label),
                ));
            }
            if admin.token.is_empty() {
                return Err(invalid(field("token"), "must not be empty"));
            }
            if !tokens.insert(admin.token.expose()) {
                return Err(invalid(
                    field("token"),
                    "the same token is given to another label or to admin_token",
                ));
            }
        }
        Ok(())
    }

    /// Serving needs a backend; `migrate` and `keys` do not.
    pub fn require_upstream(&self) -> Result<&UpstreamConfig, ConfigError> {
        self.upstreams.first().ok_or_else(|| {
            invalid(
                "upstreams",
                "no upstream configured: set TOLLGATE_UPSTREAM_URL and TOLLGATE_UPSTREAM_KEY or declare [[upstreams]]",
            )
        })
    }

    pub fn drain_deadline(&self) -> Duration {
        Duration::from_secs(self.drain_deadline_secs)
    }

    /// The public model id without the platform prefix (`turing/gpt-5.5` → `gpt-5.5`).
    pub fn public_model<'a>(&self, model: &'a str) -> &'a str {
        if self.model_prefix.is_empty() {
            model
        } else {
            model.strip_prefix(&self.model_prefix).unwrap_or(model)
        }
    }
}

pub(crate) fn resolve_secret(
    secret: &Secret,
    field: &str,
    env: &dyn Env,
) -> Result<Secret, ConfigError> {
    match secret.expose().strip_prefix("env:") {
        Some(name) => env
            .var(name)
            .map(Secret::new)
            .ok_or_else(|| invalid(field, format!("environment variable {name} is not set"))),
        None => Ok(secret.clone()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn shipped_config_file_parses_and_validates_with_env() {
        let text = include_str!("../config/tollgate.toml");
        let mut config = Config::from_toml(text).unwrap();
        config
            .apply_env(&env(&[
                ("TOLLGATE_UPSTREAM_URL", "http://127.0.0.1:9/v1"),
                ("TOLLGATE_UPSTREAM_KEY", "sk-upstream"),
            ]))
            .unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.require_upstream().unwrap().url,
            "http://127.0.0.1:9/v1"
        );
    }

    #[test]
    fn env_overrides_file_values() {
        let mut config =
            Config::from_toml("listen = \"127.0.0.1:1\"\nmodel_prefix = \"x/\"").unwrap();
        config
            .apply_env(&env(&[
                ("TOLLGATE_LISTEN", "0.0.0.0:9000"),
                ("TOLLGATE_MODEL_PREFIX", "turing/"),
                ("TOLLGATE_UPSTREAM_URL", "https://api.openai.com/v1"),
                ("TOLLGATE_UPSTREAM_KEY", "k"),
                ("TOLLGATE_UPSTREAM_KIND", "azure"),
            ]))
            .unwrap();
        assert_eq!(config.listen, "0.0.0.0:9000");
        assert_eq!(config.public_model("turing/gpt-5.5"), "gpt-5.5");
        assert_eq!(config.public_model("gpt-5.5"), "gpt-5.5");
        assert_eq!(config.upstreams[0].kind, UpstreamKind::Azure);
    }

    #[test]
    fn env_references_resolve_and_missing_ones_name_the_field() {
        let text = "[[upstreams]]\nname = \"a\"\nurl = \"http://x\"\nkey = \"env:MY_KEY\"\n";
        let mut config = Config::from_toml(text).unwrap();
        config.apply_env(&env(&[("MY_KEY", "secret")])).unwrap();
        assert_eq!(config.upstreams[0].key.expose(), "secret");
        assert_eq!(format!("{:?}", config.upstreams[0].key), "Secret(***)");

        let mut config = Config::from_toml(text).unwrap();
        let err = config.apply_env(&env(&[])).unwrap_err().to_string();
        assert!(err.contains("upstreams[0].key"), "{err}");
    }

    #[test]
    fn labelled_admin_tokens_resolve_and_are_validated() {
        let text = "[[admin_tokens]]\nlabel = \"finance\"\ntoken = \"env:FIN_TOKEN\"\n\n\
                    [[admin_tokens]]\nlabel = \"ops.oncall\"\ntoken = \"literal-token\"\n";
        let mut config = Config::from_toml(text).unwrap();
        config
            .apply_env(&env(&[
                ("FIN_TOKEN", "fin-secret"),
                ("TOLLGATE_ADMIN_TOKEN", "main-secret"),
            ]))
            .unwrap();
        config.validate().unwrap();
        assert_eq!(config.admin_tokens[0].label, "finance");
        assert_eq!(config.admin_tokens[0].token.expose(), "fin-secret");
        assert_eq!(config.admin_tokens[1].token.expose(), "literal-token");
        assert!(!format!("{config:?}").contains("fin-secret"));

        // A missing env reference names the field.
        let err = Config::from_toml(text)
            .unwrap()
            .apply_env(&env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin_tokens[0].token"), "{err}");

        let check = |toml: &str, main: &str| {
            let mut config = Config::from_toml(toml).unwrap();
            config.admin_token = Secret::new(main);
            config.validate().unwrap_err().to_string()
        };
        let one = |label: &str, token: &str| {
            format!("[[admin_tokens]]\nlabel = \"{label}\"\ntoken = \"{token}\"\n")
        };
        for (toml, field) in [
            (one("", "t"), "admin_tokens[0].label"),
            (one("has space", "t"), "admin_tokens[0].label"),
            (one("-dash", "t"), "admin_tokens[0].label"),
            (one("admin", "t"), "admin_tokens[0].label"),
            (one("a", ""), "admin_tokens[0].token"),
            (one("a", "main"), "admin_tokens[0].token"),
            (
                format!("{}{}", one("a", "t1"), one("a", "t2")),
                "admin_tokens[1].label",
            ),
            (
                format!("{}{}", one("a", "t1"), one("b", "t1")),
                "admin_tokens[1].token",
            ),
        ] {
            let err = check(&toml, "main");
            assert!(err.contains(field), "{toml} -> {err}");
        }
        // Labels are known fields only.
        assert!(
            Config::from_toml("[[admin_tokens]]\nlabel = \"a\"\ntoken = \"t\"\nrole = \"x\"")
                .is_err()
        );
    }

    #[test]
    fn the_alerts_secret_comes_from_the_file_or_the_env_and_is_never_shown() {
        let text = "[alerts]\nsigning_secret = \"env:HOOK_KEY\"\nretry_base_ms = 50\n";
        let mut config = Config::from_toml(text).unwrap();
        config
            .apply_env(&env(&[("HOOK_KEY", "0123456789abcdef-file")]))
            .unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.alerts.signing_secret.expose(),
            "0123456789abcdef-file"
        );
        assert_eq!(config.alerts.retry_base_ms, 50);
        assert!(!format!("{config:?}").contains("0123456789abcdef"));

        let mut config = Config::from_toml(text).unwrap();
        config
            .apply_env(&env(&[("TOLLGATE_ALERTS_SECRET", "0123456789abcdef-env")]))
            .unwrap();
        assert_eq!(
            config.alerts.signing_secret.expose(),
            "0123456789abcdef-env"
        );

        for (toml, field) in [
            (
                "[alerts]\nsigning_secret = \"short\"",
                "alerts.signing_secret",
            ),
            ("[alerts]\nretry_base_ms = 0", "alerts.retry_base_ms"),
            ("[alerts]\nretry_max_secs = 0", "alerts.retry_max_secs"),
            (
                "[alerts]\nrequest_timeout_secs = 0",
                "alerts.request_timeout_secs",
            ),
            ("[alerts]\nsweep_secs = 0", "alerts.sweep_secs"),
        ] {
            let err = Config::from_toml(toml).unwrap().validate().unwrap_err();
            assert!(err.to_string().contains(field), "{toml} -> {err}");
        }
        assert!(Config::from_toml("[alerts]\nsecret = \"x\"").is_err());
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(Config::from_toml("listne = \"x\"").is_err());
        let err = Config::from_toml("listen = \"nope\"")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen"), "{err}");
        let mut config = Config::default();
        let err = config
            .apply_env(&env(&[("TOLLGATE_UPSTREAM_KIND", "bedrock")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("TOLLGATE_UPSTREAM_KIND"), "{err}");
    }
}
