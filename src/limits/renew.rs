//! Keeps the reservations of this replica's open requests alive: a request
//! admitted under a limit is registered here until its ledger row is stored
//! (or quarantined), and a background task extends the registered
//! reservations every third of their lifetime. A stream of any length thus
//! holds its budget, tokens and concurrency slot until its last byte, while
//! the holds of a replica that died lapse one lifetime after it stopped:
//! the same loop sweeps expired reservations off their scopes' counters.
//!
//! It owns the in-process registry and the renewal loop; it never decides
//! admission and never releases a live reservation (settlement does).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::store;
use crate::state::AppState;

/// Longest a request's reservation is renewed: past it the request (whose
/// row never came) is forgotten and its hold lapses like a dead replica's.
pub const MAX_HOLD: Duration = Duration::from_secs(24 * 60 * 60);

/// Request id → when it was admitted. Process-wide because the ledger
/// writer, which closes entries, knows only its pool; ids are unique, so
/// gateways sharing a process never touch each other's entries.
static OPEN: LazyLock<Mutex<HashMap<String, Instant>>> = LazyLock::new(Mutex::default);

fn open() -> std::sync::MutexGuard<'static, HashMap<String, Instant>> {
    OPEN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A reservation was made for `request_id`.
pub fn opened(request_id: &str) {
    open().insert(request_id.to_owned(), Instant::now());
}

/// The rows of these requests are stored or quarantined: stop renewing.
pub fn closed<'a>(request_ids: impl IntoIterator<Item = &'a str>) {
    let mut open = open();
    if open.is_empty() {
        return;
    }
    for id in request_ids {
        open.remove(id);
    }
}

/// The ids to renew now; entries older than [`MAX_HOLD`] are dropped.
fn due() -> Vec<String> {
    let mut open = open();
    open.retain(|_, admitted| admitted.elapsed() < MAX_HOLD);
    open.keys().cloned().collect()
}

/// How often expired reservations are swept off their scopes' counters
/// (at most; every tick when the lifetime is shorter).
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Runs until shutdown: every `ttl / 3` (at most [`SWEEP_EVERY`]), extends
/// the registered reservations to `ttl` from the database's now and sweeps
/// the expired ones of any replica (a dead one's) off the counters.
pub fn spawn(state: &Arc<AppState>) {
    let ttl = Duration::from_secs(state.config.limits.reservation_ttl_secs);
    let pool = state.pool.clone();
    let stop = state.shutdown.clone();
    state.tasks.spawn(async move {
        let mut tick = tokio::time::interval((ttl / 3).min(SWEEP_EVERY));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            renew(&pool, ttl).await;
            match store::sweep_expired(&pool).await {
                Ok(0) => {}
                Ok(swept) => tracing::info!(swept, "expired limit reservations released"),
                Err(err) => tracing::warn!(error = %err, "sweeping expired limit reservations failed; retried next round"),
            }
        }
    });
}

async fn renew(pool: &sqlx::PgPool, ttl: Duration) {
    let ids = due();
    if ids.is_empty() {
        return;
    }
    if let Err(err) = store::extend(pool, &ids, ttl).await {
        tracing::warn!(error = %err, open = ids.len(), "renewing limit reservations failed; retried next round");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_requests_are_not_renewed() {
        opened("req_renew_a");
        opened("req_renew_b");
        closed(["req_renew_a"]);
        let due = due();
        assert!(due.contains(&"req_renew_b".to_owned()));
        assert!(!due.contains(&"req_renew_a".to_owned()));
        closed(["req_renew_b"]);
        assert!(!super::due().contains(&"req_renew_b".to_owned()));
    }
}
