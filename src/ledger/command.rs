//! `tollgate ledger partitions|archive|verify|restore` (CONTRACT §1).
//!
//! Archive and restore run as one round of the `ledger.months` job (its
//! advisory claim), so a command and a gateway replica never work on the
//! ledger's months at once. Prints to standard output; never serves HTTP.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use sqlx::PgPool;

use super::archive::{self, Manifest};
use super::months::{self, Month, JOB_NAME};
use crate::jobs::{Job, JobContext, JobError, Progress, Round};

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// List the ledger's months: rows, bytes, state (live, archived, default).
    Partitions {
        /// Print the endpoint's JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Archive a past month to Parquet, verify the archive, drop the month.
    Archive {
        #[arg(long, value_name = "YYYY-MM")]
        month: String,
        /// Write and verify only; keep the partition.
        #[arg(long)]
        keep: bool,
    },
    /// Read a month's archive back and compare it with the database.
    Verify {
        #[arg(long, value_name = "YYYY-MM")]
        month: String,
    },
    /// Re-create an archived month from its archive and attach it again.
    Restore {
        #[arg(long, value_name = "YYYY-MM")]
        month: String,
    },
}

/// How long a command waits for a replica's round of the job to end.
const CLAIM_WAIT: Duration = Duration::from_secs(120);

pub async fn run(pool: PgPool, archive_dir: PathBuf, command: LedgerCommand) -> anyhow::Result<()> {
    let action = match command {
        LedgerCommand::Partitions { json } => return print_partitions(&pool, json).await,
        LedgerCommand::Archive { month, keep } => {
            if keep {
                Action::Write(parse(&month)?)
            } else {
                Action::Archive(parse(&month)?)
            }
        }
        LedgerCommand::Verify { month } => {
            let month = parse(&month)?;
            let manifest = archive::verify(&pool, &archive_dir, month).await?;
            print_manifest("verified", &manifest, &archive_dir, month);
            return Ok(());
        }
        LedgerCommand::Restore { month } => Action::Restore(parse(&month)?),
    };
    let ctx = JobContext {
        pool,
        stop: tokio_util::sync::CancellationToken::new(),
    };
    let mut once = Once {
        action,
        archive_dir: archive_dir.clone(),
        done: None,
    };
    let deadline = std::time::Instant::now() + CLAIM_WAIT;
    loop {
        match crate::jobs::run_once(&ctx, &mut once).await? {
            Round::Ran(_) => break,
            Round::Paused => bail!("the job {JOB_NAME} is paused"),
            Round::Busy if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Round::Busy => bail!("a gateway replica kept {JOB_NAME} busy; try again"),
        }
    }
    let (verb, month) = match once.action {
        Action::Write(m) => ("archived (partition kept)", m),
        Action::Archive(m) => ("archived, verified and dropped", m),
        Action::Restore(m) => ("restored", m),
    };
    let manifest = once.done.context("the job ran without a result")?;
    let pending: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM ledger_archives WHERE month = $1 AND state = 'pending')",
    )
    .bind(month.first_day())
    .fetch_one(&ctx.pool)
    .await?;
    let verb = if pending {
        "archived and verified; its rows stay in usage_ledger_legacy until every month there is archived"
    } else {
        verb
    };
    print_manifest(verb, &manifest, &archive_dir, month);
    Ok(())
}

fn parse(month: &str) -> anyhow::Result<Month> {
    Month::parse(month).with_context(|| format!("--month {month}: expected YYYY-MM"))
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Write(Month),
    Archive(Month),
    Restore(Month),
}

/// One round of `ledger.months` doing what the command asked.
struct Once {
    action: Action,
    archive_dir: PathBuf,
    done: Option<Manifest>,
}

impl Job for Once {
    fn name(&self) -> String {
        JOB_NAME.to_owned()
    }

    fn every(&self) -> Duration {
        Duration::from_secs(3_600)
    }

    async fn step(&mut self, ctx: &JobContext) -> Result<Progress, JobError> {
        let dir = &self.archive_dir;
        let manifest = match self.action {
            Action::Write(m) => match archive::write(&ctx.pool, dir, m).await {
                Ok(_) => archive::verify(&ctx.pool, dir, m).await,
                Err(err) => Err(err),
            },
            Action::Archive(m) => archive::archive_and_drop(&ctx.pool, dir, m).await,
            Action::Restore(m) => archive::restore(&ctx.pool, dir, m).await,
        }
        .map_err(JobError::failed)?;
        self.done = Some(manifest);
        Ok(Progress::idle())
    }
}

fn print_manifest(verb: &str, manifest: &Manifest, dir: &std::path::Path, month: Month) {
    let sums = manifest
        .cost_sum
        .iter()
        .map(|(c, d)| format!("{d} {c}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "{month}: {verb}; {} rows, cost {}, {} file(s) in {}",
        manifest.rows,
        if sums.is_empty() { "0".into() } else { sums },
        manifest.files.len(),
        archive::month_dir(dir, month).display()
    );
}

async fn print_partitions(pool: &PgPool, json: bool) -> anyhow::Result<()> {
    let list = months::partitions(pool).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<10} {:<9} {:>12} {:>14}  {:<10} table",
        "month", "state", "rows", "bytes", "compacted"
    );
    for p in list {
        println!(
            "{:<10} {:<9} {:>12} {:>14}  {:<10} {}",
            p.month.as_deref().unwrap_or("-"),
            p.state,
            p.rows,
            p.bytes,
            p.compacted_at
                .map(|t| t.format("%Y-%m-%d").to_string())
                .unwrap_or_else(|| "-".into()),
            p.table.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
