//! The `ledger.months` job: the one background worker that keeps the
//! ledger's months. Each step creates months ahead and empties the default
//! partition into them ([`months`]), finishes any drop an archive left
//! ([`archive::drop_detached`]), then does one bounded piece: the oldest
//! month past retention archived ([`archive`]), else the oldest closed
//! partition's indexes compacted ([`indexes`]).
//!
//! Owns the schedule, nothing else: it never touches a row or a file
//! itself.

use std::time::Duration;

use chrono::Utc;

use super::months::{default_rows, ensure_months, months_past_retention, Month, JOB_NAME};
use super::{archive, indexes};
use crate::jobs::{Job, JobContext, JobError, Progress};

/// The `ledger.months` job: months ahead, the default partition emptied into
/// real months, then one bounded piece per step: (with `retention_months`)
/// the oldest month past retention archived, else the oldest closed month's
/// indexes compacted ([`indexes::compact_next`]).
pub struct MonthsJob {
    pub retention_months: Option<u32>,
    pub archive_dir: std::path::PathBuf,
}

impl Job for MonthsJob {
    fn name(&self) -> String {
        JOB_NAME.to_owned()
    }

    fn every(&self) -> Duration {
        Duration::from_secs(3_600)
    }

    async fn step(&mut self, ctx: &JobContext) -> Result<Progress, JobError> {
        let now = Utc::now();
        ensure_months(&ctx.pool, now).await?;
        let waiting = default_rows(&ctx.pool).await?;
        let mut progress = Progress {
            cursor: Some(Month::of(now).to_string()),
            lag_rows: Some(waiting),
            ..Progress::idle()
        };
        archive::drop_detached(&ctx.pool).await?;
        // Months past retention go first: compacting one about to be
        // archived would be wasted work.
        if let Some(keep) = self.retention_months {
            let oldest_kept = Month::of(now).plus(1 - keep as i32);
            let due = months_past_retention(&ctx.pool, oldest_kept).await?;
            if let Some(month) = due.first() {
                archive::archive_and_drop(&ctx.pool, &self.archive_dir, *month)
                    .await
                    .map_err(JobError::failed)?;
                progress.more = true;
                progress.cursor = Some(format!("archived {month}"));
                return Ok(progress);
            }
        }
        let (compacted, more_closed) = indexes::compact_next(&ctx.pool, now).await?;
        if let Some(done) = compacted {
            progress.more = more_closed;
            progress.cursor = Some(format!("compacted {}", done.partition));
        }
        Ok(progress)
    }
}

/// Starts the job on this replica.
pub fn spawn(
    tasks: &tokio_util::task::TaskTracker,
    ctx: JobContext,
    config: &crate::config::LedgerConfig,
) {
    let job = MonthsJob {
        retention_months: config.retention_months,
        archive_dir: config.archive_dir.clone(),
    };
    crate::jobs::spawn(tasks, ctx, job);
}
