//! Crossing detection: the detector task, and the check of one scope
//! (settings from its `limits` row, the period's spend from
//! [`store::live`] — the status's own sum — and the crossed thresholds
//! recorded in the outbox, once per period by its unique key). It never
//! sends anything and never changes a limit or a ledger row.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::outbox::{self, Crossing};
use super::Alerts;
use crate::limits::store::{self, Scope};

/// How stale the set of alerting scopes may be.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// The thresholds `spent` has reached: `spent ≥ threshold × amount`, and
/// some spend at all (a zero budget alerts at its first cost, not at 0).
pub fn crossed(thresholds: &[Decimal], amount: Decimal, spent: Decimal) -> Vec<Decimal> {
    if spent <= Decimal::ZERO {
        return Vec::new();
    }
    thresholds
        .iter()
        .copied()
        .filter(|t| t.checked_mul(amount).is_some_and(|line| spent >= line))
        .collect()
}

/// The detector: reloads the alerting set, sweeps, and checks what is
/// pending, woken by the ledger writer or once a second.
pub(super) async fn run(
    pool: PgPool,
    alerts: Arc<Alerts>,
    sweep: Duration,
    stop: CancellationToken,
) {
    let mut reloaded: Option<Instant> = None;
    let mut swept: Option<Instant> = None;
    loop {
        if reloaded.is_none_or(|at| at.elapsed() >= RELOAD_EVERY) {
            match alerts.reload(&pool).await {
                Ok(()) => reloaded = Some(Instant::now()),
                Err(err) => tracing::debug!(error = %err, "alerting scopes not reloaded"),
            }
        }
        // The first sweep runs at start: crossings seen by no one while
        // every replica was down.
        if reloaded.is_some() && swept.is_none_or(|at| at.elapsed() >= sweep) {
            alerts.touch_all();
            swept = Some(Instant::now());
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = check_pending(&pool, &alerts) => {}
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RELOAD_EVERY) => {}
            () = alerts.detect.notified() => {}
        }
    }
}

/// Checks every pending scope; on a database error the rest stay pending.
async fn check_pending(pool: &PgPool, alerts: &Alerts) {
    let pending = alerts.take_pending();
    let mut recorded = 0;
    for (i, (scope, id)) in pending.iter().enumerate() {
        match check(pool, *scope, id).await {
            Ok(new) => recorded += new,
            Err(err) => {
                tracing::warn!(error = %err, "budget alert check deferred");
                alerts.requeue(&pending[i..]);
                break;
            }
        }
    }
    if recorded > 0 {
        crate::telemetry::metrics::record_alerts_recorded(recorded);
        alerts.deliver.notify_one();
    }
}

/// Records the thresholds the scope's spend has crossed this period; how
/// many events are new.
pub(super) async fn check(pool: &PgPool, scope: Scope, id: &str) -> Result<u64, sqlx::Error> {
    let Some(row) = store::get(pool, scope, id).await? else {
        return Ok(0);
    };
    let (Some(budget), Some(alerts)) = (&row.settings.budget, &row.settings.alerts) else {
        return Ok(0);
    };
    let mut conn = pool.acquire().await?;
    let now = store::db_now(&mut conn).await?;
    let live = store::live(&mut conn, scope, id, Some(budget.period), now).await?;
    let thresholds = crossed(&alerts.thresholds, budget.amount, live.spent);
    if thresholds.is_empty() {
        return Ok(0);
    }
    let crossing = Crossing {
        scope,
        id,
        period: budget.period,
        period_start: store::since(Some(budget.period), now),
        amount: budget.amount,
        spent: live.spent,
        webhook_url: &alerts.webhook_url,
    };
    outbox::record(&mut conn, &crossing, &thresholds).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn ds(list: &[&str]) -> Vec<Decimal> {
        list.iter().map(|s| d(s)).collect()
    }

    #[test]
    fn a_threshold_is_crossed_when_spend_reaches_it_exactly() {
        let t = ds(&["0.5", "0.8", "1"]);
        assert_eq!(crossed(&t, d("0.035"), d("0.0174999")), ds(&[]));
        assert_eq!(crossed(&t, d("0.035"), d("0.0175")), ds(&["0.5"]));
        assert_eq!(crossed(&t, d("0.035"), d("0.028")), ds(&["0.5", "0.8"]));
        assert_eq!(crossed(&t, d("0.035"), d("0.035")), t);
        assert_eq!(crossed(&t, d("0.035"), d("9")), t);
        // Above 1: an overshoot alert.
        assert_eq!(crossed(&ds(&["1.5"]), d("10"), d("14.99")), ds(&[]));
        assert_eq!(crossed(&ds(&["1.5"]), d("10"), d("15")), ds(&["1.5"]));
    }

    #[test]
    fn no_spend_crosses_nothing_even_of_a_zero_budget() {
        let t = ds(&["0.5", "1"]);
        assert!(crossed(&t, d("0"), d("0")).is_empty());
        assert_eq!(crossed(&t, d("0"), d("0.0000000001")), t);
        assert!(crossed(&t, d("10"), d("0")).is_empty());
    }

    #[test]
    fn the_largest_amounts_do_not_overflow() {
        let amount = d("999999999999.9999999999999999");
        assert_eq!(crossed(&ds(&["10"]), amount, amount), ds(&[]));
        assert_eq!(
            crossed(&ds(&["0.000001"]), amount, amount),
            ds(&["0.000001"])
        );
    }
}
