//! Spend control (CONTRACT §8): budgets and rate limits per tenant and per
//! key, exact across every replica sharing the database.
//!
//! It owns the `limits`, `limit_reservations` and `limit_overruns` tables,
//! admission ([`admit`], one call on the request path between validation and
//! routing), settlement ([`settle_stored`], called by the ledger writer once
//! a batch of rows is stored), the status reads and the `/admin/limits` and
//! `/v1/key` handlers ([`api`]), and budget threshold alerts ([`alerts`]:
//! the outbox, its webhook delivery and `/admin/alerts`). It never forwards,
//! prices or writes ledger rows.
//!
//! Exactness comes from the database alone: admission locks the scope rows
//! and decides from the ledger's own sum plus the open reservations, so N
//! replicas admit what one would. Settlement happens *after* the ledger row
//! is stored (the reservation and the row overlap for a moment, which can
//! only refuse, never overshoot). Requests of scopes without limits make no
//! database call: the set of limited scopes is cached in memory and reloaded
//! at most once a second (and at once on this replica after an admin change).

pub mod alerts;
pub mod api;
mod batch;
mod body;
pub mod budget;
pub mod estimate;
pub mod rate;
pub mod renew;
pub mod store;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::http::{HeaderMap, HeaderValue};
use sqlx::PgPool;

use crate::error::ApiError;
use crate::ledger::LedgerRow;
use crate::metering::RequestContext;
use crate::state::AppState;
pub use estimate::Estimate;
use store::{BucketView, Refusal, Scope};

/// How stale the cached set of limited scopes may be.
const CACHE_FOR: Duration = Duration::from_secs(1);

/// Set once this process has made a reservation: until then settlement has
/// nothing to release and the ledger writer skips it.
static RESERVED_ANY: AtomicBool = AtomicBool::new(false);

struct Snapshot {
    loaded: Option<Instant>,
    scopes: HashSet<(Scope, String)>,
}

/// The in-memory set of limited scopes, and the admission lanes.
pub struct Limits {
    snapshot: ArcSwap<Snapshot>,
    reloading: tokio::sync::Mutex<()>,
    batcher: batch::Batcher,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(Snapshot {
                loaded: None,
                scopes: HashSet::new(),
            }),
            reloading: tokio::sync::Mutex::new(()),
            batcher: batch::Batcher::default(),
        }
    }
}

impl Limits {
    fn fresh(&self) -> Option<Arc<Snapshot>> {
        let snap = self.snapshot.load_full();
        snap.loaded
            .filter(|at| at.elapsed() < CACHE_FOR)
            .map(|_| snap)
    }

    async fn current(&self, pool: &PgPool) -> Result<Arc<Snapshot>, sqlx::Error> {
        if let Some(snap) = self.fresh() {
            return Ok(snap);
        }
        let _one = self.reloading.lock().await;
        if let Some(snap) = self.fresh() {
            return Ok(snap);
        }
        let rows = match store::scopes(pool).await {
            Ok(rows) => rows,
            Err(err) => return self.keep_last_known(err),
        };
        let scopes = rows
            .into_iter()
            .filter_map(|(kind, id)| {
                let scope = match kind.as_str() {
                    "tenant" => Scope::Tenant,
                    "key" => Scope::Key,
                    _ => return None,
                };
                Some((scope, id))
            })
            .collect();
        let snap = Arc::new(Snapshot {
            loaded: Some(Instant::now()),
            scopes,
        });
        self.snapshot.store(snap.clone());
        Ok(snap)
    }

    /// The database is away: the last known set of limited scopes stays in
    /// force (retried once per `CACHE_FOR`, not on every request), so keys
    /// without limits keep being served from the spool-backed ledger while
    /// limited ones fail closed (their admission needs the database). With
    /// no set ever loaded, nothing is known: refuse.
    fn keep_last_known(&self, err: sqlx::Error) -> Result<Arc<Snapshot>, sqlx::Error> {
        let last = self.snapshot.load_full();
        if last.loaded.is_none() {
            return Err(err);
        }
        tracing::warn!(error = %err, "limits unreadable; keeping the last known limited scopes");
        let kept = Arc::new(Snapshot {
            loaded: Some(Instant::now()),
            scopes: last.scopes.clone(),
        });
        self.snapshot.store(kept.clone());
        Ok(kept)
    }

    /// Forgets the cached set (after a change made on this replica).
    pub fn invalidate(&self) {
        self.snapshot.store(Arc::new(Snapshot {
            loaded: None,
            scopes: HashSet::new(),
        }));
    }

    async fn limited(&self, pool: &PgPool, tenant: &str, key: &str) -> Result<bool, sqlx::Error> {
        let snap = self.current(pool).await?;
        Ok(snap.scopes.contains(&(Scope::Tenant, tenant.to_owned()))
            || snap.scopes.contains(&(Scope::Key, key.to_owned())))
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
        let stale: Vec<_> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("x-ratelimit-"))
            .cloned()
            .collect();
        for name in stale {
            headers.remove(name);
        }
        for (suffix, view) in [("requests", self.requests), ("tokens", self.tokens)] {
            let Some(view) = view else { continue };
            let values = [
                ("limit", view.limit.to_string()),
                ("remaining", view.remaining.to_string()),
                ("reset", format!("{}s", view.reset_seconds)),
            ];
            for (what, value) in values {
                if let (Ok(name), Ok(value)) = (
                    axum::http::HeaderName::try_from(format!("x-ratelimit-{what}-{suffix}")),
                    HeaderValue::from_str(&value),
                ) {
                    headers.insert(name, value);
                }
            }
        }
    }
}

fn tightest(views: &[BucketView]) -> Option<BucketView> {
    views.iter().copied().min_by_key(|v| v.remaining)
}

/// Admits the request or refuses it (429, metered by the caller). Without
/// limits on the tenant or the key this is a lookup in memory.
///
/// `estimate` is called only for limited scopes (it parses the body again).
pub async fn admit(
    state: &AppState,
    ctx: &RequestContext,
    estimate: impl FnOnce() -> Estimate,
) -> Result<Admission, ApiError> {
    let tenant = ctx.principal.tenant.as_ref();
    let key = ctx.principal.key_id.as_ref();
    if !state.limits.limited(&state.pool, tenant, key).await? {
        return Ok(Admission::default());
    }
    let ask = store::Ask {
        request_id: ctx.request_id.to_string(),
        tenant: tenant.to_owned(),
        key_id: key.to_owned(),
        estimate: estimate(),
        ttl: Duration::from_secs(state.config.limits.reservation_ttl_secs),
    };
    RESERVED_ANY.store(true, Ordering::Relaxed);
    let decided = state.limits.batcher.admit(&state.pool, ask).await?;
    match decided {
        Ok(granted) => {
            renew::opened(&ctx.request_id);
            Ok(Admission {
                requests: tightest(&granted.requests),
                tokens: tightest(&granted.tokens),
            })
        }
        Err(refusal) => Err(refused(&refusal)),
    }
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
    }
}

/// Settlement hook of the ledger writer: releases the reservations of rows
/// just stored. A background response stays reserved (its row is `queued`
/// without a cost, no longer renewed) until its reservation expires, one
/// lifetime later. A failure is logged: the
/// reservation then holds until it expires, which can only refuse, never
/// overshoot.
pub async fn settle_stored(pool: &PgPool, rows: &[LedgerRow]) {
    if !RESERVED_ANY.load(Ordering::Relaxed) {
        return;
    }
    renew::closed(rows.iter().map(|r| r.request_id.as_str()));
    let settled: Vec<store::Settled<'_>> = rows
        .iter()
        .filter(|r| r.status != "queued")
        .map(|r| store::Settled {
            request_id: &r.request_id,
            cost: r.cost,
            total_tokens: r.total_tokens,
        })
        .collect();
    if settled.is_empty() {
        return;
    }
    if let Err(err) = store::settle(pool, &settled).await {
        tracing::warn!(error = %err, rows = settled.len(), "releasing limit reservations failed; they expire");
    }
}
