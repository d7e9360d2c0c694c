//! Spend control (CONTRACT §8): budgets and rate limits per tenant and per
//! key, exact across every replica sharing the database.
//!
//! It owns the `limits`, `limit_leases` and `limit_overruns` tables,
//! admission ([`admit`], the one call on the request path, between
//! validation and routing), settlement ([`settle_stored`], called by the
//! ledger writer once a batch of rows is stored), the status reads and the
//! `/admin/limits` and `/v1/key` handlers ([`api`]), and budget threshold
//! alerts ([`alerts`]). It never forwards, prices or writes ledger rows.
//!
//! Admission is leased (the escrow of the demarcation protocol): each
//! replica holds a slice of every limited scope it serves — of the budget,
//! of the rate buckets, of the concurrency — granted by the database under
//! the scope's row lock so that the slices together never exceed what
//! remains ([`share`], [`store::sync`]), and admits from it in memory
//! ([`slice`]). The keeper ([`keeper`]) refills slices ahead of need from
//! recent demand, hands back what is not used, renews them, and near
//! exhaustion shrinks them to exact per-request grants. So N replicas admit
//! what one would, the request path makes no database round trip while a
//! slice lasts, and a limited scope keeps being served through a database
//! outage for as long as its slices last.
//!
//! A hard budget reserves a true upper bound of each request's cost
//! ([`estimate`]); a request that cannot be bounded is refused.

pub mod alerts;
pub mod api;
mod body;
pub mod budget;
pub mod estimate;
mod keeper;
pub mod rate;
mod share;
mod slice;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use sqlx::PgPool;

use crate::error::ApiError;
use crate::ledger::LedgerRow;
use crate::metering::RequestContext;
pub use estimate::Estimate;
pub use keeper::LeaseSettings;
use keeper::{Leases, Refusal};
use store::{BucketView, Scope, Settings};

/// How often the limit settings are reloaded.
const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// Reloads closer together than this are one reload.
const MIN_RELOAD: Duration = Duration::from_millis(50);

#[derive(Clone)]
struct Snapshot {
    /// When these settings were read (never: nothing is known yet).
    loaded: Option<Instant>,
    /// A change made or announced since: read again before the next
    /// admission (these stay in force if the database cannot be read).
    invalidated: bool,
    keys: HashMap<String, Arc<Settings>>,
    tenants: HashMap<String, Arc<Settings>>,
}

impl Snapshot {
    fn empty() -> Self {
        Self {
            loaded: None,
            invalidated: false,
            keys: HashMap::new(),
            tenants: HashMap::new(),
        }
    }

    /// The limited scopes a request of `key` in `tenant` must pass, key
    /// first (the order every lock here is taken in).
    fn applying<'a>(&self, tenant: &'a str, key: &'a str) -> Vec<(Scope, &'a str, Arc<Settings>)> {
        let mut scopes = Vec::new();
        if let Some(settings) = self.keys.get(key) {
            scopes.push((Scope::Key, key, settings.clone()));
        }
        if let Some(settings) = self.tenants.get(tenant) {
            scopes.push((Scope::Tenant, tenant, settings.clone()));
        }
        scopes
    }
}

/// The cached limit settings and this replica's slices.
pub struct Limits {
    snapshot: ArcSwap<Snapshot>,
    reloading: tokio::sync::Mutex<()>,
    leases: Arc<Leases>,
}

impl Limits {
    pub fn new(settings: LeaseSettings) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(Snapshot::empty()),
            reloading: tokio::sync::Mutex::new(()),
            leases: Leases::new(settings),
        }
    }

    /// The settings in force. Reloaded once a second by a task of its own
    /// (and at once after a change announced on `tollgate_limits`), so a
    /// request waits for the database only when nothing is loaded yet or a
    /// change made on this replica just invalidated them: never through an
    /// outage, when the last known settings stay in force.
    async fn current(&self, pool: &PgPool) -> Result<Arc<Snapshot>, sqlx::Error> {
        let snap = self.snapshot.load_full();
        if snap.loaded.is_some() && !snap.invalidated {
            return Ok(snap);
        }
        self.reload(pool).await
    }

    async fn reload(&self, pool: &PgPool) -> Result<Arc<Snapshot>, sqlx::Error> {
        let _one = self.reloading.lock().await;
        let snap = self.snapshot.load_full();
        if !snap.invalidated && snap.loaded.is_some_and(|at| at.elapsed() < MIN_RELOAD) {
            return Ok(snap);
        }
        let rows = match store::list(pool).await {
            Ok(rows) => rows,
            Err(err) if snap.loaded.is_some() => {
                // Through an outage the last known settings stay in force,
                // retried by the reloader, not by every request.
                tracing::warn!(error = %err, "limits unreadable; keeping the last known settings");
                let kept = Arc::new(Snapshot {
                    invalidated: false,
                    ..(*snap).clone()
                });
                self.snapshot.store(kept.clone());
                return Ok(kept);
            }
            Err(err) => return Err(err),
        };
        let mut snap = Snapshot::empty();
        for row in rows {
            let map = match row.scope {
                Scope::Key => &mut snap.keys,
                Scope::Tenant => &mut snap.tenants,
            };
            map.insert(row.id, Arc::new(row.settings));
        }
        self.leases.refresh_settings(|scope, id| match scope {
            Scope::Key => snap.keys.get(id),
            Scope::Tenant => snap.tenants.get(id),
        });
        snap.loaded = Some(Instant::now());
        let snap = Arc::new(snap);
        self.snapshot.store(snap.clone());
        Ok(snap)
    }

    /// Reads the settings again before the next admission (after a change
    /// made on this replica or announced by another).
    pub fn invalidate(&self) {
        let snap = self.snapshot.load_full();
        self.snapshot.store(Arc::new(Snapshot {
            invalidated: true,
            ..(*snap).clone()
        }));
    }

    /// This replica's name on its slices (`limit_leases.holder`).
    pub fn holder(&self) -> &str {
        self.leases.holder()
    }

    /// Starts the keeper and the change listener; they run until `stop`.
    pub fn spawn(
        self: &Arc<Self>,
        tasks: &tokio_util::task::TaskTracker,
        pool: &PgPool,
        stop: &tokio_util::sync::CancellationToken,
    ) {
        tasks.spawn(self.leases.clone().run(pool.clone(), stop.clone()));
        let (weak, reload_pool, reload_stop) = (Arc::downgrade(self), pool.clone(), stop.clone());
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = reload_stop.cancelled() => return,
                    () = tokio::time::sleep(RELOAD_EVERY) => {}
                }
                let Some(limits) = weak.upgrade() else { return };
                let _ = limits.reload(&reload_pool).await;
            }
        });
        let weak = Arc::downgrade(self);
        tasks.spawn(crate::notify::follow(
            pool.clone(),
            store::CHANNEL,
            stop.clone(),
            move |trigger| {
                let weak = weak.clone();
                async move {
                    let Some(limits) = weak.upgrade() else {
                        return crate::notify::Reloaded::Stop;
                    };
                    limits.changed(trigger);
                    crate::notify::Reloaded::Done
                }
            },
        ));
    }

    fn changed(&self, trigger: crate::notify::Trigger) {
        self.invalidate();
        match trigger {
            crate::notify::Trigger::Connected => self.leases.recall_all(),
            crate::notify::Trigger::Notified(payloads) => {
                for (scope, id) in payloads.iter().filter_map(|p| store::parse_notification(p)) {
                    self.leases.recalled(scope, &id);
                }
            }
        }
    }

    /// Shutdown, once the ledger writer stored its rows: slices with
    /// nothing open are handed back at once instead of lapsing.
    pub async fn release_idle(&self, pool: &PgPool) {
        self.leases.release_idle(pool).await;
    }
}

/// An admitted request: the rate headers its response carries.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    requests: Option<BucketView>,
    tokens: Option<BucketView>,
}

impl Admission {
    /// Replaces the upstream's `x-ratelimit-*` with Tollgate's own for a
    /// limited key (the tighter of key and tenant); leaves others alone.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if self.requests.is_none() && self.tokens.is_none() {
            return;
        }
        // The six standard names are overwritten or removed below; any
        // other `x-ratelimit-*` of the upstream's is rare and only then
        // worth a scan that collects names.
        let unusual = |name: &HeaderName| {
            name.as_str().starts_with("x-ratelimit-")
                && !RATE_HEADERS.iter().flatten().any(|known| known == name)
        };
        if headers.keys().any(unusual) {
            let stale: Vec<HeaderName> = headers.keys().filter(|k| unusual(k)).cloned().collect();
            for name in stale {
                headers.remove(name);
            }
        }
        for (names, view) in RATE_HEADERS.iter().zip([self.requests, self.tokens]) {
            let [limit, remaining, reset] = names;
            match view {
                Some(view) => {
                    headers.insert(limit.clone(), HeaderValue::from(view.limit));
                    headers.insert(remaining.clone(), HeaderValue::from(view.remaining));
                    if let Ok(value) = HeaderValue::try_from(format!("{}s", view.reset_seconds)) {
                        headers.insert(reset.clone(), value);
                    }
                }
                None => {
                    for name in names {
                        headers.remove(name);
                    }
                }
            }
        }
    }
}

/// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, built once.
static RATE_HEADERS: [[HeaderName; 3]; 2] = [
    [
        HeaderName::from_static("x-ratelimit-limit-requests"),
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        HeaderName::from_static("x-ratelimit-reset-requests"),
    ],
    [
        HeaderName::from_static("x-ratelimit-limit-tokens"),
        HeaderName::from_static("x-ratelimit-remaining-tokens"),
        HeaderName::from_static("x-ratelimit-reset-tokens"),
    ],
];

fn tightest(views: impl Iterator<Item = BucketView>) -> Option<BucketView> {
    views.min_by_key(|v| v.remaining)
}

impl Limits {
    /// Admits the request or refuses it (429; 400 for a request a hard
    /// budget cannot bound; 503 when its slices are used up and the database
    /// cannot be reached; metered by the caller). Without limits on the
    /// tenant or the key this is a lookup in memory; with limits, a take
    /// from this replica's slices unless they must be refilled first.
    ///
    /// `estimate` is called only for limited scopes (it parses the body
    /// again).
    pub async fn admit(
        &self,
        pool: &PgPool,
        ctx: &RequestContext,
        estimate: impl FnOnce() -> Estimate,
    ) -> Result<Admission, ApiError> {
        let tenant = ctx.principal.tenant.as_ref();
        let key = ctx.principal.key_id.as_ref();
        let mut pending = Some(estimate);
        let mut estimated: Option<Estimate> = None;
        for _ in 0..2 {
            let snap = self.current(pool).await?;
            let scopes = snap.applying(tenant, key);
            if scopes.is_empty() {
                return Ok(Admission::default());
            }
            if let Some(compute) = pending.take() {
                estimated = Some(compute());
            }
            let Some(estimate) = estimated.as_ref() else {
                return Err(ApiError::internal("no estimate"));
            };
            if let Some(why) = &estimate.unbounded {
                if scopes.iter().any(|(_, _, s)| hard(s)) {
                    return Err(unbounded(why));
                }
            }
            let request = keeper::Request {
                request_id: ctx.request_id.clone(),
                tenant: ctx.principal.tenant.clone(),
                key_id: ctx.principal.key_id.clone(),
                started_at: ctx.started_at,
            };
            let need = slice::Need {
                cost: estimate.cost,
                tokens: estimate.tokens,
            };
            match self.leases.admit(&scopes, need, request).await {
                Ok(views) => {
                    return Ok(Admission {
                        requests: tightest(views.iter().filter_map(|v| v.0)),
                        tokens: tightest(views.iter().filter_map(|v| v.1)),
                    })
                }
                Err(Refusal::Retry) => self.invalidate(),
                Err(refusal) => return Err(refused(&refusal)),
            }
        }
        Err(refused(&Refusal::Unavailable))
    }
}

fn hard(settings: &Settings) -> bool {
    settings
        .budget
        .as_ref()
        .is_some_and(|b| b.mode == budget::Mode::Hard)
}

fn unbounded(why: &estimate::Unbounded) -> ApiError {
    ApiError::invalid_value(
        why.param.clone(),
        format!(
            "This request's cost cannot be bounded ({}), and a hard budget admits only what it can bound.",
            why.reason
        ),
    )
    .with_code("cost_unbounded")
}

fn refused(refusal: &Refusal) -> ApiError {
    match refusal {
        Refusal::Budget { scope } => {
            crate::telemetry::metrics::record_limit_rejection(scope.as_str(), "budget");
            ApiError::insufficient_quota(format!(
                "The {} budget does not cover this request.",
                scope.as_str()
            ))
        }
        Refusal::Rate {
            scope,
            reason,
            retry_after,
        } => {
            crate::telemetry::metrics::record_limit_rejection(scope.as_str(), reason);
            ApiError::rate_limited(
                format!("The {} limit `{reason}` is reached.", scope.as_str()),
                *retry_after,
            )
        }
        Refusal::Unavailable | Refusal::Retry => ApiError::service_unavailable(
            "Spend control cannot admit this request now (its allowance is used up and the database is unreachable); try again shortly.",
        ),
    }
}

/// Settlement hook of the ledger writer: the holds of rows just stored end
/// (their cost is in the ledger's spend from now on). A background
/// response's `queued` row keeps its hold until it settles. A row the
/// database refused (quarantined) keeps its hold for `max_hold_secs`: its
/// spend is unknown, so it keeps counting.
pub fn settle_stored(rows: &[LedgerRow]) {
    keeper::settle_stored(rows.iter().map(|r| {
        (
            r.request_id.as_str(),
            r.status.as_str(),
            r.cost,
            r.total_tokens,
        )
    }));
}

/// Hook of the ledger handle: a request's row was recorded (it is no
/// longer open; its concurrency slot is free).
pub fn recorded(request_id: &str) {
    keeper::recorded(request_id);
}

/// A background response was settled on this replica.
pub fn settle_background(request_id: &str, cost: Option<rust_decimal::Decimal>, tokens: i64) {
    keeper::settle_background(request_id, cost, tokens);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn upstream_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-ratelimit-limit-requests", "10000"),
            ("x-ratelimit-remaining-requests", "9999"),
            ("x-ratelimit-reset-requests", "6ms"),
            ("x-ratelimit-limit-tokens", "2000000"),
            ("x-ratelimit-remaining-tokens", "1999000"),
            ("x-ratelimit-reset-tokens", "30ms"),
            ("x-ratelimit-limit-images", "50"),
            ("content-type", "application/json"),
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        headers
    }

    #[test]
    fn admission_replaces_every_upstream_rate_header_with_its_own() {
        let view = BucketView {
            limit: 5,
            remaining: 3,
            reset_seconds: 12,
        };
        let mut headers = upstream_headers();
        Admission {
            requests: Some(view),
            tokens: None,
        }
        .apply(&mut headers);
        let mut shown: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        shown.sort();
        assert_eq!(
            shown,
            [
                ("content-type", "application/json"),
                ("x-ratelimit-limit-requests", "5"),
                ("x-ratelimit-remaining-requests", "3"),
                ("x-ratelimit-reset-requests", "12s"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn an_unlimited_key_keeps_the_upstreams_headers() {
        let mut headers = upstream_headers();
        Admission {
            requests: None,
            tokens: None,
        }
        .apply(&mut headers);
        assert_eq!(headers, upstream_headers());
    }
}
