//! Reconciliation with the provider (CONTRACT §12): does the ledger agree
//! with what OpenAI itself counted and billed, per UTC day, model and
//! upstream key, in requests, tokens and money?
//!
//! It owns the provider's side (the organization Usage and Costs APIs read
//! by [`client`], stored idempotently by [`store`]: `provider_usage`,
//! `provider_costs`, `provider_fetches`, `provider_keys`), the scheduled
//! fetch ([`FetchJob`], a [`crate::jobs::Job`]: one replica at a time,
//! backoff, `job_status`), the name mapping ([`names`], [`keys`]), the
//! comparison ([`report`]) read from the ledger's `ledger_upstream_daily`
//! rollup, `GET /admin/reconciliation` ([`api`]), the drift alerts it
//! records in the alerts outbox, and the `tollgate_reconciliation_*`
//! metrics ([`metrics`]).
//!
//! It never writes a ledger row or a price, never reads raw ledger rows
//! (old months may be archived), and never logs or returns the admin key
//! (`TOLLGATE_OPENAI_ADMIN_KEY`). Without the key it is off: nothing is
//! fetched, and the report shows the ledger's side with every day
//! `pending` (`provider: null`).

pub mod api;
pub mod client;
pub mod fetch;
pub mod keys;
pub mod metrics;
pub mod names;
pub mod report;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use sqlx::PgPool;

use crate::config::Config;
use crate::jobs::{Job, JobContext, JobError, Progress};
use crate::limits::alerts::Alerts;
use client::OrgClient;
use fetch::Fetched;
use report::{GroupBy, Query, Report};

/// The job's name: its claim, its `job_status` row, its metrics label.
pub const JOB_NAME: &str = "reconcile.fetch";

/// The scheduled fetch (or, with a range, the command line's).
pub struct FetchJob {
    config: Arc<Config>,
    client: OrgClient,
    alerts: Option<Arc<Alerts>>,
    range: Option<(NaiveDate, NaiveDate)>,
    /// What the last step fetched.
    pub last: Option<Fetched>,
}

impl FetchJob {
    /// `range`: the days to fetch; `None` for the recent days
    /// (`refetch_days`) on each round.
    pub fn new(
        config: Arc<Config>,
        alerts: Option<Arc<Alerts>>,
        range: Option<(NaiveDate, NaiveDate)>,
    ) -> Result<Self, client::FetchError> {
        let client = OrgClient::new(&config.reconcile)?;
        Ok(Self {
            config,
            client,
            alerts,
            range,
            last: None,
        })
    }
}

impl Job for FetchJob {
    fn name(&self) -> String {
        JOB_NAME.to_owned()
    }

    fn every(&self) -> Duration {
        Duration::from_secs(self.config.reconcile.every_secs)
    }

    async fn step(&mut self, ctx: &JobContext) -> Result<Progress, JobError> {
        match keys::discover(&ctx.pool, &self.config, &self.client).await {
            Ok(found) => {
                for (upstream, why) in &found.unmatched {
                    tracing::warn!(%upstream, reason = why, "upstream key not found in the organization's projects; configure [reconcile.api_key_ids]");
                }
            }
            // Configured keys still work; the step goes on.
            Err(err) => tracing::warn!(error = %err, "upstream key discovery failed"),
        }
        let rc = &self.config.reconcile;
        let (from, to) = self
            .range
            .unwrap_or_else(|| fetch::recent_days(Utc::now(), rc.refetch_days));
        let fetched = fetch::fetch_range(
            &ctx.pool,
            &self.client,
            from,
            to,
            rc.hourly_page_buckets,
            &ctx.stop,
        )
        .await
        .map_err(JobError::failed)?;
        metrics::record_fetch(&fetched);
        after_fetch(&ctx.pool, &self.config, self.alerts.as_deref(), from, to).await?;
        self.last = Some(fetched);
        Ok(Progress {
            cursor: Some(format!("{from}..{to}")),
            ..Progress::idle()
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchNowError {
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("the job {JOB_NAME} is paused")]
    Paused,
    #[error("a gateway replica kept the fetch busy; try again")]
    Busy,
}

/// Runs `job` once now, waiting up to `wait` while another replica's round
/// holds the claim (what `tollgate reconcile fetch` and the demo do).
pub async fn fetch_now(
    ctx: &JobContext,
    job: &mut FetchJob,
    wait: Duration,
) -> Result<Fetched, FetchNowError> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match crate::jobs::run_once(ctx, job).await? {
            crate::jobs::Round::Ran(_) => {
                return job.last.clone().ok_or(FetchNowError::Busy);
            }
            crate::jobs::Round::Paused => return Err(FetchNowError::Paused),
            crate::jobs::Round::Busy if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            crate::jobs::Round::Busy => return Err(FetchNowError::Busy),
        }
    }
}

/// Starts the scheduled fetch when an admin key is configured.
pub fn spawn(state: &Arc<crate::state::AppState>) {
    let rc = &state.config.reconcile;
    if !rc.enabled() {
        return;
    }
    match FetchJob::new(state.config.clone(), Some(state.alerts.clone()), None) {
        Ok(job) => {
            let ctx = JobContext {
                pool: state.pool.clone(),
                stop: state.shutdown.clone(),
            };
            crate::jobs::spawn(&state.tasks, ctx, job);
        }
        Err(err) => tracing::error!(error = %err, "reconciliation not started"),
    }
}

/// The report for `query` with this configuration, judged now.
pub async fn report(pool: &PgPool, config: &Config, query: &Query) -> Result<Report, sqlx::Error> {
    let mapping = keys::Mapping::load(pool, config).await?;
    let settings = config.reconcile.settings();
    report::build(pool, &mapping, &settings, query, Utc::now()).await
}

/// After a fetch: the fetched days' disagreements become alerts (once per
/// day and line) and the metrics follow the report.
async fn after_fetch(
    pool: &PgPool,
    config: &Config,
    alerts: Option<&Alerts>,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<(), JobError> {
    let rc = &config.reconcile;
    let grouping = GroupBy::parse_all(&rc.alert_group_by)
        .map_err(|e| JobError::failed(format!("alert_group_by: {e}")))?;
    let query = Query { from, to, grouping };
    let report = report(pool, config, &query).await?;
    metrics::record_report(&report);
    let Some(url) = &rc.alert_webhook_url else {
        return Ok(());
    };
    crate::limits::alerts::retarget_drift(pool, url).await?;
    let mut recorded = 0;
    for line in report.data.iter().filter(|l| l.status.disagrees()) {
        let data = serde_json::to_value(line).map_err(JobError::failed)?;
        if crate::limits::alerts::record_drift(pool, &subject(line, &report.group_by), &data, url)
            .await?
        {
            recorded += 1;
        }
    }
    if recorded > 0 {
        crate::telemetry::metrics::record_alerts_recorded(recorded);
        if let Some(alerts) = alerts {
            alerts.wake_delivery();
        }
    }
    Ok(())
}

/// `reconciliation/<day>/model=gpt-5.5/upstream_key=openai`: the line's
/// identity, which is what makes its alert once per day and line.
pub fn subject(line: &report::Line, group_by: &[&str]) -> String {
    let mut subject = format!("reconciliation/{}", line.day.format("%Y-%m-%d"));
    for dim in group_by {
        subject.push_str(&format!("/{dim}={}", line.dimension(dim).text()));
    }
    subject
}
