//! Billing export (CONTRACT §13): every final ledger row reaches each
//! configured sink (OpenMeter, Lago, Stripe, a signed webhook) once, in
//! ledger order, batched, off the request path and off the ledger writer.
//!
//! It owns the outbox (`export_outbox`, filled by the statement triggers of
//! migration 0019 in the ledger writer's own transaction: one
//! `INSERT … SELECT` per written batch, nothing else on that path), the
//! per-sink cursors (`export_sinks`), what each sink was given or why it
//! waits (`export_items`), the tenants' billing ids (`tenant_billing`), one
//! [`crate::jobs::Job`] per sink (`export.<sink>`: one replica delivers a
//! sink at a time; capped, jittered backoff; pause via `job_status`), the
//! wire formats ([`openmeter`], [`lago`], [`stripe`], [`webhook`]), `GET
//! /admin/exports` and its controls, `/admin/tenants/{tenant}` ([`api`]) and
//! the `tollgate_export_*` metrics.
//!
//! It never writes a ledger row, never reads the ledger but by `request_id`
//! (within the entries' start times), never logs or shows a sink's
//! credential, and never sends a row that is not final:
//! - **final** = a cost is recorded and the row is not `queued`. A queued
//!   (background) row, or an unpriced one (`cost` null), waits as
//!   `unpriced` with its `unpriced_reason`, counted and listed in `GET
//!   /admin/exports`; when it is settled or repriced, the ledger update
//!   queues it again and it goes out then. Unpriced rows are never sent
//!   without an amount.
//! - a row whose tenant has no id for the sink waits as
//!   `waiting_for_mapping` and goes out, oldest first, once `PUT
//!   /admin/tenants/{tenant}` gives one;
//! - a row refused by the sink for its content is `refused` with the sink's
//!   reason (listed; sent again by `replay`); Stripe rows older than its
//!   window are `outside_window`; a row whose cost changed after it was sent
//!   is `changed_after_export` (listed for the operator; Tollgate itself
//!   only prices unpriced rows, so this needs a change outside it).
//!
//! Every event's id is the row's `request_id` (CloudEvents `id` with the
//! configured `source`, Lago `transaction_id`, Stripe `identifier`), so a
//! resend after a crash between the sink's answer and [`outbox::record`] is
//! deduplicated by the sink. See [`outbox`] for why the cursor is correct
//! when transactions commit out of id order.

pub mod api;
pub mod command;
pub mod event;
pub mod lago;
pub mod metrics;
pub mod openmeter;
pub mod outbox;
pub mod sink;
pub mod stripe;
pub mod webhook;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::config::Secret;
use crate::jobs::{Job, JobContext, JobError, Progress};
use event::ExportRow;
use outbox::{Billing, Cursor, Item, ItemUpdate};
use sink::{Event, Outcome, SinkClient};

/// `export.<sink>`: the job's claim, `job_status` row and metrics label.
pub fn job_name(sink: &str) -> String {
    format!("export.{sink}")
}

/// How often a step recounts the lag (a count over the outbox).
const LAG_EVERY: Duration = Duration::from_secs(5);
/// The lag counted at most (status says "at least" beyond it).
pub const LAG_CAP: i64 = 10_000_000;
/// The least time between two prunes of the outbox.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// One sink's delivery.
pub struct ExportJob {
    client: SinkClient,
    wake: Arc<Notify>,
    last_lag: Option<Instant>,
    last_prune: Option<Instant>,
}

impl ExportJob {
    pub fn new(
        sink: &'static str,
        config: crate::config::exports::SinkConfig,
        signing: Secret,
        wake: Arc<Notify>,
    ) -> Result<Self, JobError> {
        let client = SinkClient::new(sink, config, signing).map_err(JobError::failed)?;
        Ok(Self {
            client,
            wake,
            last_lag: None,
            last_prune: None,
        })
    }

    pub fn sink(&self) -> &'static str {
        self.client.name
    }
}

impl Job for ExportJob {
    fn name(&self) -> String {
        job_name(self.client.name)
    }

    fn every(&self) -> Duration {
        Duration::from_millis(self.client.config.idle_ms)
    }

    fn wake(&self) -> Option<Arc<Notify>> {
        Some(self.wake.clone())
    }

    async fn step(&mut self, ctx: &JobContext) -> Result<Progress, JobError> {
        let result = self.deliver_once(ctx).await;
        if result.is_err() {
            metrics::failure(self.client.name);
        }
        result
    }
}

/// What to do with one row.
#[derive(Debug, PartialEq)]
enum Decision {
    Skip,
    Hold(&'static str, Option<String>),
    Send(String),
}

impl ExportJob {
    async fn deliver_once(&mut self, ctx: &JobContext) -> Result<Progress, JobError> {
        let sink = self.client.name;
        let pool = &ctx.pool;
        let Some(cursor) = outbox::cursor(pool, sink).await? else {
            outbox::register(pool, sink).await?;
            return Ok(Progress::more());
        };
        let limit = self.client.config.batch_size as i64;
        let released = match outbox::mapping_column(sink) {
            Some(column) => outbox::released(pool, sink, column, limit).await?,
            None => Vec::new(),
        };
        // A full page of released rows goes first, alone: a tenant's rows
        // leave in order.
        let entries = if released.len() as i64 >= limit {
            Vec::new()
        } else {
            outbox::next(pool, sink, cursor, limit).await?
        };
        let mut seen = HashSet::new();
        let order: Vec<(String, DateTime<Utc>)> = released
            .iter()
            .cloned()
            .chain(entries.iter().map(|e| (e.request_id.clone(), e.started_at)))
            .filter(|(id, _)| seen.insert(id.clone()))
            .collect();
        let rows = outbox::ledger_rows(pool, &order).await?;
        let ids: Vec<&str> = order.iter().map(|(id, _)| id.as_str()).collect();
        let known = outbox::items(pool, sink, &ids).await?;
        let tenants: Vec<&str> = rows
            .values()
            .map(|r| r.tenant_id.as_str())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let maps = outbox::mappings(pool, &tenants).await?;
        let now = Utc::now();
        let mut updates = Vec::new();
        let mut sending: Vec<(&ExportRow, String)> = Vec::new();
        for (id, _) in &order {
            // A row no longer in the database (an archived month): nothing to send.
            let Some(row) = rows.get(id) else { continue };
            match decide(sink, row, known.get(id), maps.get(&row.tenant_id), now) {
                Decision::Skip => {}
                Decision::Hold(state, reason) => updates.push(update(row, state, reason, None)),
                Decision::Send(customer) => sending.push((row, customer)),
            }
        }
        let events: Vec<Event<'_>> = sending
            .iter()
            .map(|(row, customer)| Event { row, customer })
            .collect();
        let (outcomes, failure) = sink::deliver(&self.client, &events).await;
        let (mut sent, mut refused) = (0u64, 0u64);
        for ((row, _), outcome) in sending.iter().zip(outcomes) {
            match outcome {
                Outcome::Sent => {
                    sent += 1;
                    updates.push(update(row, "sent", None, row.cost));
                }
                Outcome::Refused(reason) => {
                    refused += 1;
                    updates.push(update(row, "refused", Some(reason), None));
                }
                Outcome::NotSent => {}
            }
        }
        metrics::delivered(
            sink,
            sent,
            refused,
            events.len().div_ceil(self.client.max_batch()),
        );
        let advance = match failure {
            None => entries.last().map(outbox::Entry::cursor),
            Some(_) => None,
        };
        outbox::record(pool, sink, &updates, advance).await?;
        if let Some(reason) = failure {
            return Err(JobError::failed(format!("{sink}: {reason}")));
        }
        let more = released.len() as i64 >= limit || entries.len() as i64 >= limit;
        if self.last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            self.last_prune = Some(Instant::now());
            outbox::prune(pool).await?;
        }
        let at = advance.unwrap_or(cursor);
        let (lag_rows, lag_seconds) = self.lag(pool, at).await?;
        Ok(Progress {
            more,
            cursor: Some(at.to_string()),
            lag_rows,
            lag_seconds,
        })
    }

    /// The lag, recounted at most every [`LAG_EVERY`] (`GET /admin/exports`
    /// counts its own).
    async fn lag(
        &mut self,
        pool: &sqlx::PgPool,
        at: Cursor,
    ) -> Result<(Option<i64>, Option<f64>), JobError> {
        if self.last_lag.is_some_and(|t| t.elapsed() < LAG_EVERY) {
            return Ok((None, None));
        }
        self.last_lag = Some(Instant::now());
        let (rows, seconds) = outbox::lag(pool, self.client.name, at, LAG_CAP).await?;
        let seconds = seconds.unwrap_or(0.0);
        metrics::lag(self.client.name, rows, seconds);
        Ok((Some(rows), Some(seconds)))
    }
}

fn update(
    row: &ExportRow,
    state: &'static str,
    reason: Option<String>,
    cost: Option<rust_decimal::Decimal>,
) -> ItemUpdate {
    ItemUpdate {
        request_id: row.request_id.clone(),
        ledger_id: row.id,
        tenant_id: row.tenant_id.clone(),
        started_at: row.started_at,
        state,
        reason,
        cost,
    }
}

fn decide(
    sink: &str,
    row: &ExportRow,
    known: Option<&Item>,
    billing: Option<&Billing>,
    now: DateTime<Utc>,
) -> Decision {
    if let Some(item) = known.filter(|i| i.state == "sent" || i.state == "changed_after_export") {
        return match (item.cost == row.cost, item.state.as_str()) {
            (true, "sent") => Decision::Skip,
            (true, _) => Decision::Hold("sent", None),
            (false, _) => Decision::Hold(
                "changed_after_export",
                Some(format!(
                    "sent with cost {}; the ledger now says {}",
                    item.cost.unwrap_or_default().normalize(),
                    row.cost
                        .map_or("null".to_owned(), |c| c.normalize().to_string())
                )),
            ),
        };
    }
    if let Some(reason) = row.not_final() {
        return Decision::Hold("unpriced", Some(reason));
    }
    let customer = match outbox::mapping_column(sink) {
        None => row.tenant_id.clone(),
        Some(column) => match billing.and_then(|b| b.customer(sink)) {
            Some(customer) => customer.to_owned(),
            None => {
                return Decision::Hold(
                    "waiting_for_mapping",
                    Some(format!("tenant has no billing.{column}")),
                )
            }
        },
    };
    if sink == "stripe" && !stripe::in_window(row.started_at, now) {
        return Decision::Hold(
            "outside_window",
            Some("older than Stripe's 35-day window for meter events".into()),
        );
    }
    Decision::Send(customer)
}

/// The wake signals of this process's export jobs (an admin change of a
/// tenant's billing ids wakes them).
#[derive(Default)]
pub struct Wakers(std::sync::Mutex<Vec<Arc<Notify>>>);

impl Wakers {
    pub fn wake_all(&self) {
        for notify in self.0.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            notify.notify_one();
        }
    }

    fn add(&self) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(notify.clone());
        notify
    }
}

/// Process-wide wake signals.
pub fn wakers() -> &'static Wakers {
    static WAKERS: std::sync::OnceLock<Wakers> = std::sync::OnceLock::new();
    WAKERS.get_or_init(Wakers::default)
}

/// Starts one job per configured sink.
pub fn spawn(state: &Arc<crate::state::AppState>) {
    let config = &state.config;
    for (name, sink) in config.exports.sinks() {
        let job = ExportJob::new(
            name,
            sink.clone(),
            config.alerts.signing_secret.clone(),
            wakers().add(),
        );
        match job {
            Ok(job) => {
                let ctx = JobContext {
                    pool: state.pool.clone(),
                    stop: state.shutdown.clone(),
                };
                crate::jobs::spawn(&state.tasks, ctx, job);
            }
            Err(err) => tracing::error!(sink = name, error = %err, "billing export not started"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use event::tests::row;

    fn billing() -> Billing {
        Billing {
            openmeter_subject: Some("subj".into()),
            lago_external_subscription_id: None,
            stripe_customer_id: Some("cus_1".into()),
        }
    }

    #[test]
    fn rows_wait_visibly_until_they_can_be_sent() {
        let now = Utc::now();
        let priced = row("r", Some("0.5"));
        let b = billing();
        assert_eq!(
            decide("openmeter", &priced, None, Some(&b), now),
            Decision::Send("subj".into())
        );
        assert_eq!(
            decide("webhook", &priced, None, None, now),
            Decision::Send("acme".into())
        );
        assert!(matches!(
            decide("lago", &priced, None, Some(&b), now),
            Decision::Hold("waiting_for_mapping", _)
        ));
        assert!(matches!(
            decide("openmeter", &priced, None, None, now),
            Decision::Hold("waiting_for_mapping", _)
        ));
        let unpriced = row("r", None);
        assert_eq!(
            decide("openmeter", &unpriced, None, Some(&b), now),
            Decision::Hold("unpriced", Some("no_price".into()))
        );
        assert!(matches!(
            decide(
                "stripe",
                &priced,
                None,
                Some(&b),
                priced.started_at + chrono::Duration::days(40)
            ),
            Decision::Hold("outside_window", _)
        ));
    }

    #[test]
    fn a_sent_row_is_not_sent_again_and_a_changed_one_is_listed() {
        let now = Utc::now();
        let r = row("r", Some("0.5"));
        let sent = Item {
            request_id: "r".into(),
            state: "sent".into(),
            cost: r.cost,
        };
        assert_eq!(
            decide("webhook", &r, Some(&sent), None, now),
            Decision::Skip
        );
        let other = Item {
            cost: Some("0.4".parse().unwrap()),
            ..sent
        };
        assert!(matches!(
            decide("webhook", &r, Some(&other), None, now),
            Decision::Hold("changed_after_export", _)
        ));
        let refused = Item {
            request_id: "r".into(),
            state: "refused".into(),
            cost: None,
        };
        assert_eq!(
            decide("webhook", &r, Some(&refused), None, now),
            Decision::Send("acme".into())
        );
    }
}
