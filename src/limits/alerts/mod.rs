//! Alerts through one signed outbox: reconciliation drift (CONTRACT §12,
//! recorded by `crate::reconcile` with [`record_drift`]) and budget
//! threshold alerts (CONTRACT §8): when a period's spend of a scope
//! with alerts first reaches `threshold × amount`, one event is recorded in
//! the `alert_events` outbox and delivered to the scope's webhook as a signed
//! CloudEvent, retried until it is answered 2xx.
//!
//! It owns the `alert_events` table, the in-memory set of alerting scopes
//! ([`Alerts`]), detection ([`detect`]), delivery ([`deliver`]), the event's
//! wire form ([`event`]) and `GET /admin/alerts` ([`api`]). It never changes
//! a ledger row, a limit or an admission decision, and never logs the
//! signing secret or a webhook URL.
//!
//! How a crossing travels:
//! 1. The ledger writer hands every stored batch to [`Alerts::stored`]: rows
//!    with a cost whose tenant or key is in the cached set mark that scope
//!    pending (a lookup in memory; a batch of other scopes costs nothing
//!    more). A reprice and a background settlement mark every alerting scope
//!    ([`Alerts::touch_all`]), an admin change its own scope.
//! 2. The detector task sums the period's spend with the status's own query
//!    ([`super::store::live`]) and inserts one row per crossed threshold with
//!    `ON CONFLICT (scope, id, period_start, threshold) DO NOTHING`: one event
//!    per threshold per period, however many replicas see the crossing. It
//!    also reloads the set once a second and checks every alerting scope every
//!    `[alerts] sweep_secs` (a crossing whose replica died before checking).
//! 3. The delivery task (on replicas with a signing secret) claims due rows
//!    with `FOR UPDATE SKIP LOCKED`, moving them past the attempt's timeout,
//!    POSTs them, and records the outcome; failures are retried with capped
//!    exponential backoff, forever.

pub mod api;
mod deliver;
mod detect;
mod event;
mod outbox;

pub use event::{signature, DRIFT_EVENT_TYPE, SIGNATURE_HEADER};
pub use outbox::{record_drift, retarget_drift};

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use sqlx::PgPool;
use tokio::sync::Notify;

use super::store::{self, Scope};
use crate::config::AlertsConfig;
use crate::ledger::LedgerRow;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Which scopes have alerts, as last loaded.
#[derive(Default)]
struct AlertingScopes {
    tenants: HashSet<String>,
    keys: HashSet<String>,
}

impl AlertingScopes {
    fn contains(&self, scope: Scope, id: &str) -> bool {
        match scope {
            Scope::Tenant => self.tenants.contains(id),
            Scope::Key => self.keys.contains(id),
        }
    }

    fn all(&self) -> impl Iterator<Item = (Scope, &String)> {
        let tenants = self.tenants.iter().map(|id| (Scope::Tenant, id));
        tenants.chain(self.keys.iter().map(|id| (Scope::Key, id)))
    }
}

/// The alerting scopes, the scopes waiting for a check, and the wake-ups of
/// the detector and delivery tasks. Shared by the ledger writer and the
/// state.
#[derive(Default)]
pub struct Alerts {
    scopes: ArcSwap<AlertingScopes>,
    pending: Mutex<HashSet<(Scope, String)>>,
    detect: Notify,
    deliver: Notify,
}

impl Alerts {
    /// The ledger writer stored `rows`: the alerting scopes among those with a
    /// cost are checked soon. No I/O.
    pub fn stored(&self, rows: &[LedgerRow]) {
        let scopes = self.scopes.load();
        if scopes.tenants.is_empty() && scopes.keys.is_empty() {
            return;
        }
        let mut marked = Vec::new();
        for row in rows.iter().filter(|r| r.cost.is_some_and(|c| !c.is_zero())) {
            for (scope, id) in [(Scope::Tenant, &row.tenant), (Scope::Key, &row.api_key_id)] {
                if scopes.contains(scope, id) {
                    marked.push((scope, id.clone()));
                }
            }
        }
        self.mark(marked);
    }

    /// Checks one scope soon (its alerts were just set).
    pub fn touch(&self, scope: Scope, id: &str) {
        self.mark(vec![(scope, id.to_owned())]);
    }

    /// Checks every alerting scope soon (costs changed outside the writer:
    /// a reprice, a background settlement, or the periodic sweep).
    pub fn touch_all(&self) {
        let scopes = self.scopes.load();
        self.mark(scopes.all().map(|(s, id)| (s, id.clone())).collect());
    }

    fn mark(&self, scopes: Vec<(Scope, String)>) {
        if scopes.is_empty() {
            return;
        }
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(scopes);
        self.detect.notify_one();
    }

    /// Puts scopes back without waking the detector (their check failed;
    /// it is retried on the detector's next tick, not in a tight loop).
    fn requeue(&self, scopes: &[(Scope, String)]) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(scopes.iter().cloned());
    }

    /// New events were recorded outside the detector (reconciliation
    /// drift): the delivery task looks at once.
    pub fn wake_delivery(&self) {
        self.deliver.notify_one();
    }

    fn take_pending(&self) -> Vec<(Scope, String)> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.drain().collect()
    }

    /// Reloads the set of alerting scopes; on failure the last one stays.
    pub async fn reload(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let mut loaded = AlertingScopes::default();
        for (kind, id) in store::alerting_scopes(pool).await? {
            match Scope::parse(&kind) {
                Some(Scope::Tenant) => loaded.tenants.insert(id),
                Some(Scope::Key) => loaded.keys.insert(id),
                None => false,
            };
        }
        self.scopes.store(Arc::new(loaded));
        Ok(())
    }
}

/// Starts the detector and, with a signing secret configured, the delivery
/// task; both end at shutdown.
pub fn spawn(
    tasks: &TaskTracker,
    pool: &PgPool,
    alerts: &Arc<Alerts>,
    config: &AlertsConfig,
    stop: &CancellationToken,
) {
    let sweep = std::time::Duration::from_secs(config.sweep_secs);
    let detector = detect::run(pool.clone(), alerts.clone(), sweep, stop.clone());
    tasks.spawn(detector);
    if let Some(settings) = deliver::Settings::from_config(config) {
        let worker = deliver::run(pool.clone(), alerts.clone(), settings, stop.clone());
        tasks.spawn(worker);
    }
}
