//! Background responses: settling their ledger rows exactly once.
//!
//! A `background: true` create returns at once with no usage; its row is
//! written then as `queued` (cost null, `unpriced_reason:
//! background_pending`). This task asks the upstream for every queued
//! response every `background_poll_secs`, and at once when a client has just
//! retrieved one in a terminal state, and settles the row with the final
//! usage, priced with the version in force at the request's start. The
//! `UPDATE … WHERE status = 'queued'` is the exactly-once guard: a second
//! settlement of the same row changes nothing.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::ledger::{boundary, RequestStatus, UsageSource};
use crate::metering::{bill, Billing, Outcome};
use crate::state::AppState;
use crate::usage::ResponseSummary;

const BATCH: i64 = 200;
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

pub fn spawn(state: &Arc<AppState>) {
    let weak = Arc::downgrade(state);
    let stop = state.shutdown.clone();
    let every = Duration::from_secs(state.config.background_poll_secs);
    let nudged = state.ledger.background_signal();
    state.tasks.spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
                () = nudged.notified() => {}
            }
            let Some(state) = weak.upgrade() else { return };
            match settle_pending(&state).await {
                Ok(0) => {}
                Ok(settled) => {
                    tracing::info!(settled, "background responses settled");
                    // Their costs landed outside the writer: budget alerts.
                    state.alerts.touch_all();
                }
                Err(err) => tracing::warn!(error = %err, "background reconciliation deferred"),
            }
        }
    });
}

#[derive(sqlx::FromRow)]
struct Pending {
    request_id: String,
    response_id: String,
    upstream: Option<String>,
    model: Option<String>,
    started_at: DateTime<Utc>,
}

/// One pass over the queued rows; returns how many were settled.
pub async fn settle_pending(state: &AppState) -> Result<u64, sqlx::Error> {
    let pending: Vec<Pending> = sqlx::query_as(
        "SELECT request_id, response_id, upstream, model, started_at FROM usage_ledger
         WHERE status = 'queued' AND response_id IS NOT NULL ORDER BY started_at LIMIT $1",
    )
    .bind(BATCH)
    .fetch_all(&state.pool)
    .await?;
    let mut settled = 0;
    for row in pending {
        let upstream = row
            .upstream
            .as_deref()
            .and_then(|name| state.routes.upstream(name))
            .or_else(|| state.routes.default_upstream());
        let Some(upstream) = upstream else { continue };
        let outcome = match upstream
            .fetch_response(&row.response_id, LOOKUP_TIMEOUT)
            .await
        {
            Ok(Some(summary)) if is_final(&summary) => Outcome::from_summary(summary, 200),
            Ok(Some(_)) | Err(()) => continue,
            // Deleted or expired upstream before it finished: nothing to bill
            // that anyone can know; say so rather than leave it queued forever.
            Ok(None) => {
                let mut outcome = Outcome::new(RequestStatus::Interrupted);
                outcome.error_code = Some("background_response_gone".into());
                outcome
            }
        };
        let price = row
            .model
            .as_deref()
            .and_then(|model| state.prices.lookup(model, row.started_at));
        match settle(&state.pool, &row.request_id, outcome, price.as_deref()).await {
            Ok(true) => settled += 1,
            Ok(false) => {}
            // One row the database refuses must not stop the others: it
            // stays queued, is logged with its reason, and the pass goes on.
            Err(err) if crate::ledger::quarantine::is_refusal(&err) => {
                tracing::error!(request_id = %row.request_id, error = %err,
                    "background settlement refused by the database; left queued");
            }
            Err(err) => return Err(err),
        }
    }
    Ok(settled)
}

fn is_final(summary: &ResponseSummary) -> bool {
    !matches!(
        summary.status.as_deref(),
        Some("queued" | "in_progress") | None
    )
}

/// Writes the final outcome into a queued row; false when it was settled
/// already (by another replica or an earlier pass).
async fn settle(
    pool: &PgPool,
    request_id: &str,
    outcome: Outcome,
    price: Option<&crate::pricing::PriceVersion>,
) -> Result<bool, sqlx::Error> {
    let summary = outcome.summary.clone().unwrap_or_default();
    let billing = match outcome.status {
        RequestStatus::Interrupted => Billing {
            usage: Default::default(),
            usage_source: UsageSource::Missing,
            cost: None,
            price_id: None,
            unpriced_reason: Some("usage_missing".to_owned()),
            anomaly: None,
        },
        _ => bill(outcome.status, UsageSource::Reported, &summary, price),
    };
    let usage = billing.usage;
    // The same bounds as a new row: the values come from the upstream.
    let mut notes = Vec::new();
    let (mut service_tier, mut upstream_model, mut error_code) =
        (summary.service_tier, summary.model, outcome.error_code);
    boundary::bound_optional(
        "service_tier",
        &mut service_tier,
        boundary::MAX_SERVICE_TIER_CHARS,
        &mut notes,
    );
    boundary::bound_optional(
        "upstream_model",
        &mut upstream_model,
        boundary::MAX_MODEL_CHARS,
        &mut notes,
    );
    boundary::bound_optional(
        "error_code",
        &mut error_code,
        boundary::MAX_CODE_CHARS,
        &mut notes,
    );
    let mut anomaly = billing.anomaly;
    boundary::note_anomalies(&mut anomaly, notes);
    let result = sqlx::query(
        "UPDATE usage_ledger SET status = $2, usage_source = $3, input_tokens = $4,
            cached_tokens = $5, output_tokens = $6, reasoning_tokens = $7, total_tokens = $8,
            service_tier = $9, upstream_model = COALESCE($10, upstream_model), cost = $11,
            price_id = $12, unpriced_reason = $13, error_code = $14, mcp_calls = $15,
            anomaly = $16, finished_at = now()
         WHERE request_id = $1 AND status = 'queued'",
    )
    .bind(request_id)
    .bind(outcome.status.as_str())
    .bind(billing.usage_source.as_str())
    .bind(usage.input_tokens)
    .bind(usage.cached_tokens)
    .bind(usage.output_tokens)
    .bind(usage.reasoning_tokens)
    .bind(usage.total_tokens)
    .bind(service_tier)
    .bind(upstream_model)
    .bind(billing.cost)
    .bind(billing.price_id)
    .bind(billing.unpriced_reason)
    .bind(error_code)
    .bind(i32::try_from(summary.mcp_calls).unwrap_or(i32::MAX))
    .bind(anomaly)
    .execute(pool)
    .await?;
    let settled = result.rows_affected() == 1;
    if settled {
        // Its cost is in the ledger's spend now: spend control's hold ends.
        crate::limits::settle_background(request_id, billing.cost, usage.total_tokens);
    }
    Ok(settled)
}

/// Whether `response_id` has a row still waiting for its background result.
pub async fn is_queued(pool: &PgPool, response_id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM usage_ledger WHERE response_id = $1 AND status = 'queued')",
    )
    .bind(response_id)
    .fetch_one(pool)
    .await
}

/// Settles the queued row of `response_id` with a final `summary` seen
/// outside the reconciler's own pass (a DELETE settles before it deletes);
/// false when the summary is not final or no row was queued.
pub async fn settle_response(
    state: &AppState,
    response_id: &str,
    summary: ResponseSummary,
) -> Result<bool, sqlx::Error> {
    if !is_final(&summary) {
        return Ok(false);
    }
    let row: Option<(String, Option<String>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT request_id, model, started_at FROM usage_ledger
         WHERE response_id = $1 AND status = 'queued' ORDER BY started_at LIMIT 1",
    )
    .bind(response_id)
    .fetch_optional(&state.pool)
    .await?;
    let Some((request_id, model, started_at)) = row else {
        return Ok(false);
    };
    let price = model
        .as_deref()
        .and_then(|model| state.prices.lookup(model, started_at));
    let outcome = Outcome::from_summary(summary, 200);
    settle(&state.pool, &request_id, outcome, price.as_deref()).await
}
