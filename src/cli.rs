//! The command line (CONTRACT §1): argument definitions and what each command
//! calls. Every command prints a one-line reason on failure (see `main`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, ProcessEnv};
use crate::mock_upstream::MockUpstream;
use crate::pricing::{self, litellm};
use crate::{limits, server, state};

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "A metered gateway for the OpenAI Responses API"
)]
pub struct Cli {
    /// Configuration file (default: config/tollgate.toml when present).
    #[arg(long, global = true, env = "TOLLGATE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (applies pending migrations first).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// One-command tour: database, simulated upstream, prices, a demo key.
    Demo {
        /// Address of the gateway.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Run the simulated OpenAI Responses backend.
    MockUpstream {
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: SocketAddr,
        /// Do not keep the requests it receives (for benchmarks).
        #[arg(long)]
        no_recording: bool,
    },
    /// Manage client keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage the price table.
    Prices {
        #[command(subcommand)]
        command: PricesCommand,
    },
    /// Manage budgets and rate limits (CONTRACT §8), as `/admin/limits` does.
    Limits {
        #[command(subcommand)]
        command: LimitsCommand,
    },
    /// The ledger's months: list, archive, verify, restore (CONTRACT §5a).
    Ledger {
        #[command(subcommand)]
        command: crate::ledger::command::LedgerCommand,
    },
    /// The provider's usage and cost against the ledger (CONTRACT §12).
    Reconcile {
        #[command(subcommand)]
        command: ReconcileCommand,
    },
    /// Billing export to OpenMeter, Lago, Stripe and webhooks (CONTRACT §13).
    Exports {
        #[command(subcommand)]
        command: ExportsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ExportsCommand {
    /// Each sink's cursor, lag, last error and waiting rows.
    Status {
        /// Print the endpoint's JSON instead of one line per sink.
        #[arg(long)]
        json: bool,
    },
    /// Pause a sink on every replica (rows keep queuing).
    Pause { sink: String },
    /// Resume a paused sink.
    Resume { sink: String },
    /// Send a sink every ledger row from a time on again (deduplicated by the sink).
    Replay {
        sink: String,
        /// Unix seconds or RFC 3339.
        #[arg(long)]
        from: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReconcileCommand {
    /// Fetch the provider's usage and cost for these UTC days (inclusive).
    Fetch {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
    /// Print the comparison for these UTC days (inclusive), as the endpoint.
    Show {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// model, upstream_key, project_id, service_tier (comma-separated).
        #[arg(long, default_value = "model")]
        group_by: String,
        /// Print the endpoint's JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
}

/// The scope a limits command acts on: exactly one of tenant or key.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct ScopeArg {
    /// A tenant id.
    #[arg(long)]
    tenant: Option<String>,
    /// A key id (as `tollgate keys list` shows it).
    #[arg(long)]
    key: Option<String>,
}

impl ScopeArg {
    fn split(&self) -> (limits::store::Scope, &str) {
        chosen_scope(self.tenant.as_deref(), self.key.as_deref())
            .unwrap_or_else(|| unreachable!("clap requires one of --tenant and --key"))
    }
}

/// The scope `--tenant` or `--key` names (clap lets at most one through).
fn chosen_scope<'a>(
    tenant: Option<&'a str>,
    key: Option<&'a str>,
) -> Option<(limits::store::Scope, &'a str)> {
    match (tenant, key) {
        (Some(tenant), _) => Some((limits::store::Scope::Tenant, tenant)),
        (None, Some(key)) => Some((limits::store::Scope::Key, key)),
        (None, None) => None,
    }
}

#[derive(Debug, Subcommand)]
pub enum LimitsCommand {
    /// Replace a scope's limits (as a PUT does); prints the new status.
    ///
    /// Either the flags or `--body` with a CONTRACT §8 JSON body.
    Set {
        #[command(flatten)]
        scope: ScopeArg,
        /// Budget amount in the ledger currency, a decimal such as 50.00.
        #[arg(long, conflicts_with = "body", allow_hyphen_values = true)]
        budget: Option<String>,
        /// day, week, month (the default) or total.
        #[arg(long, requires = "budget")]
        period: Option<String>,
        /// hard (the default) or soft.
        #[arg(long, requires = "budget")]
        mode: Option<String>,
        #[arg(long, conflicts_with = "body", allow_negative_numbers = true)]
        requests_per_minute: Option<i64>,
        #[arg(long, conflicts_with = "body", allow_negative_numbers = true)]
        tokens_per_minute: Option<i64>,
        #[arg(long, conflicts_with = "body", allow_negative_numbers = true)]
        concurrent_requests: Option<i64>,
        /// The whole limits body as JSON (for parts without a flag).
        #[arg(long)]
        body: Option<String>,
    },
    /// Print a scope's limits and live status, or every scope's.
    Show {
        #[arg(long, conflicts_with = "key")]
        tenant: Option<String>,
        #[arg(long)]
        key: Option<String>,
    },
    /// Remove a scope's limits.
    Delete {
        #[command(flatten)]
        scope: ScopeArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; the secret is printed once.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by its id.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum PricesCommand {
    /// Import a LiteLLM `model_prices_and_context_window.json` file.
    Import { file: PathBuf },
    /// Show the price in force for every model.
    List,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::MockUpstream {
            listen,
            no_recording,
        } => {
            let listener = crate::server::listen(&listen.to_string())
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            eprintln!("mock upstream listening on http://{listen}/v1");
            let mock = if no_recording {
                MockUpstream::without_recording()
            } else {
                MockUpstream::new()
            };
            tokio::select! {
                result = mock.serve(listener) => result?,
                _ = tokio::signal::ctrl_c() => {}
            }
            Ok(())
        }
        Command::Demo { listen } => crate::demo::run(cli.config.as_deref(), listen).await,
        command => {
            let config = Config::load(cli.config.as_deref(), &ProcessEnv)?;
            let pool = state::connect_and_migrate(&config).await?;
            match command {
                Command::Serve => serve(config, pool).await,
                Command::Migrate => {
                    println!(
                        "migrations applied to {}",
                        state::redact_url(&config.database_url)
                    );
                    Ok(())
                }
                Command::Keys { command } => keys(&pool, command).await,
                Command::Prices { command } => prices(&pool, command).await,
                Command::Limits { command } => limits_command(&pool, &config, command).await,
                Command::Reconcile { command } => reconcile_command(pool, config, command).await,
                Command::Ledger { command } => {
                    crate::ledger::command::run(pool, config.ledger.archive_dir.clone(), command)
                        .await
                }
                Command::Exports { command } => {
                    use crate::export::command as export;
                    let out = match command {
                        ExportsCommand::Status { json } => {
                            export::status(&pool, &config.exports, json).await?
                        }
                        ExportsCommand::Pause { sink } => {
                            export::set_paused(&pool, &sink, true).await?
                        }
                        ExportsCommand::Resume { sink } => {
                            export::set_paused(&pool, &sink, false).await?
                        }
                        ExportsCommand::Replay { sink, from } => {
                            export::replay(&pool, &sink, &from).await?
                        }
                    };
                    println!("{out}");
                    Ok(())
                }
                Command::MockUpstream { .. } | Command::Demo { .. } => Ok(()),
            }
        }
    }
}

pub async fn serve(config: Config, pool: sqlx::PgPool) -> anyhow::Result<()> {
    let listen = config.listen.clone();
    let (state, background) = server::build_state(config, pool).await?;
    let listener = server::listen(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%listen, "tollgate serving");
    server::run(listener, state, background, server::shutdown_signal()).await?;
    Ok(())
}

async fn keys(pool: &sqlx::PgPool, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create { tenant, name } => {
            let created = crate::auth::create_key(pool, &tenant, &name).await?;
            println!("id:     {}", created.info.id);
            println!("tenant: {}", created.info.tenant);
            println!("key:    {}", created.key);
            eprintln!("Store the key now: it is not shown again.");
        }
        KeysCommand::List { tenant } => {
            println!(
                "{:<14} {:<24} {:<20} {:<26} revoked_at",
                "id", "tenant", "name", "created_at"
            );
            for key in crate::auth::list_keys(pool, tenant.as_deref()).await? {
                println!(
                    "{:<14} {:<24} {:<20} {:<26} {}",
                    key.id,
                    key.tenant,
                    key.name,
                    key.created_at.to_rfc3339(),
                    key.revoked_at.map(|t| t.to_rfc3339()).unwrap_or_default()
                );
            }
        }
        KeysCommand::Revoke { id } => match crate::auth::revoke_key(pool, &id).await? {
            Some(_) => println!("revoked {id}"),
            None => anyhow::bail!("no key with id {id}"),
        },
    }
    Ok(())
}

async fn prices(pool: &sqlx::PgPool, command: PricesCommand) -> anyhow::Result<()> {
    match command {
        PricesCommand::Import { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let report = litellm::parse_litellm(&text)?;
            let changed = pricing::import_sheets(pool, &report.imported, "cli").await?;
            println!(
                "imported {} models ({} new versions, {} unchanged), skipped {}",
                report.imported.len(),
                changed.len(),
                report.imported.len() - changed.len(),
                report.skipped.len()
            );
            for skipped in &report.skipped {
                eprintln!("skipped {}: {}", skipped.model, skipped.reason);
            }
        }
        PricesCommand::List => {
            let table = pricing::PriceTable::from_versions(pricing::load_versions(pool).await?);
            let current = pricing::current_prices(&table, chrono::Utc::now());
            for version in current.data {
                println!("{version}");
            }
        }
    }
    Ok(())
}

async fn limits_command(
    pool: &sqlx::PgPool,
    config: &Config,
    command: LimitsCommand,
) -> anyhow::Result<()> {
    let printed = match command {
        LimitsCommand::Set {
            scope,
            budget,
            period,
            mode,
            requests_per_minute,
            tokens_per_minute,
            concurrent_requests,
            body,
        } => {
            let body = match body {
                Some(body) => body,
                None => limits_body(
                    budget.map(|amount| (amount, period, mode)),
                    [
                        ("requests_per_minute", requests_per_minute),
                        ("tokens_per_minute", tokens_per_minute),
                        ("concurrent_requests", concurrent_requests),
                    ],
                ),
            };
            let (scope, id) = scope.split();
            let can_sign = !config.alerts.signing_secret.is_empty();
            serde_json::to_value(
                limits::api::set(pool, scope, id, body.as_bytes(), can_sign).await?,
            )?
        }
        LimitsCommand::Show { tenant, key } => {
            match chosen_scope(tenant.as_deref(), key.as_deref()) {
                Some((scope, id)) => match limits::api::status_of(pool, scope, id).await? {
                    Some(status) => serde_json::to_value(status)?,
                    None => anyhow::bail!("no limits are set for {} '{id}'", scope.as_str()),
                },
                None => serde_json::to_value(limits::api::statuses(pool).await?)?,
            }
        }
        LimitsCommand::Delete { scope } => {
            let (scope, id) = scope.split();
            limits::api::remove(pool, scope, id).await?;
            serde_json::json!({"deleted": {"scope": scope.as_str(), "id": id}})
        }
    };
    println!("{}", serde_json::to_string_pretty(&printed)?);
    Ok(())
}

/// How long `reconcile fetch` waits for a gateway replica's fetch to end.
const RECONCILE_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

async fn reconcile_command(
    pool: sqlx::PgPool,
    config: Config,
    command: ReconcileCommand,
) -> anyhow::Result<()> {
    use crate::reconcile::{api::parse_day, report};
    let days = |from: &str, to: &str| -> anyhow::Result<_> {
        let from = parse_day("--from", from).map_err(anyhow::Error::msg)?;
        let to = parse_day("--to", to).map_err(anyhow::Error::msg)?;
        anyhow::ensure!(from <= to, "--from is after --to");
        anyhow::ensure!(
            (to - from).num_days() < crate::reconcile::api::MAX_DAYS,
            "at most {} days at once",
            crate::reconcile::api::MAX_DAYS
        );
        Ok((from, to))
    };
    match command {
        ReconcileCommand::Fetch { from, to } => {
            anyhow::ensure!(
                config.reconcile.enabled(),
                "reconciliation is off: set TOLLGATE_OPENAI_ADMIN_KEY (or [reconcile] admin_key)"
            );
            let range = days(&from, &to)?;
            let config = std::sync::Arc::new(config);
            let mut job = crate::reconcile::FetchJob::new(config, None, Some(range))?;
            let ctx = crate::jobs::JobContext {
                pool,
                stop: tokio_util::sync::CancellationToken::new(),
            };
            let f = crate::reconcile::fetch_now(&ctx, &mut job, RECONCILE_WAIT).await?;
            println!(
                "fetched {} days in {:.1} s: {} requests, {} pages; provider rows changed: {} usage, {} cost",
                f.days,
                f.millis as f64 / 1000.0,
                f.requests,
                f.pages,
                f.usage_rows_changed,
                f.cost_rows_changed
            );
        }
        ReconcileCommand::Show {
            from,
            to,
            group_by,
            json,
        } => {
            let (from, to) = days(&from, &to)?;
            let groups: Vec<&str> = group_by.split(',').filter(|g| !g.is_empty()).collect();
            let grouping = report::GroupBy::parse_all(&groups)
                .map_err(|e| anyhow::anyhow!("--group-by: {e}"))?;
            let query = report::Query { from, to, grouping };
            let report = crate::reconcile::report(&pool, &config, &query).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report::table(&report));
            }
        }
    }
    Ok(())
}

/// The §8 body the `limits set` flags stand for. The amount stays a string
/// (the body parser checks it like any PUT's); absent flags are absent parts.
fn limits_body(
    budget: Option<(String, Option<String>, Option<String>)>,
    rates: [(&str, Option<i64>); 3],
) -> String {
    let mut body = serde_json::Map::new();
    if let Some((amount, period, mode)) = budget {
        let mut part = serde_json::Map::new();
        part.insert("amount".into(), amount.into());
        if let Some(period) = period {
            part.insert("period".into(), period.into());
        }
        if let Some(mode) = mode {
            part.insert("mode".into(), mode.into());
        }
        body.insert("budget".into(), part.into());
    }
    let rate: serde_json::Map<_, _> = rates
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_owned(), value?.into())))
        .collect();
    if !rate.is_empty() {
        body.insert("rate".into(), rate.into());
    }
    serde_json::Value::Object(body).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn database_passwords_are_not_printed() {
        assert_eq!(
            state::redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(state::redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn limits_flags_make_the_contract_body() {
        let body = limits_body(
            Some(("50.00".into(), Some("day".into()), None)),
            [
                ("requests_per_minute", Some(600)),
                ("tokens_per_minute", None),
                ("concurrent_requests", Some(2)),
            ],
        );
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "budget": {"amount": "50.00", "period": "day"},
                "rate": {"requests_per_minute": 600, "concurrent_requests": 2},
            })
        );
        assert_eq!(limits_body(None, [("requests_per_minute", None); 3]), "{}");
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
