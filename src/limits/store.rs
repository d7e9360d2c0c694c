//! The SQL of spend control: limit rows, the slice sync that leases
//! budget, concurrency and rate tokens to a replica ([`sync`]), and live
//! status reads.
//!
//! A sync is one transaction for every scope it touches: lock their
//! `limits` rows (`ORDER BY scope_kind, scope_id ... FOR UPDATE`, the one
//! order every locker here uses, so no two transactions deadlock), read the
//! database clock, drop lapsed slices, read each scope's spend of the period
//! (`limit_spend`) and the other replicas' slices, decide every grant with
//! [`super::share`], then save this replica's slices, the buckets and the
//! overruns in one statement each. Slices of the same scope therefore move
//! one transaction after another on any replica, each seeing the others'.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use super::budget::{Mode, Period};
use super::rate::Bucket;
use super::share;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Tenant,
    Key,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tenant => "tenant",
            Self::Key => "key",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tenant" => Some(Self::Tenant),
            "key" => Some(Self::Key),
            _ => None,
        }
    }

    /// The column of the ledger and of the reservations naming the scope.
    fn column(self) -> &'static str {
        match self {
            Self::Tenant => "tenant_id",
            Self::Key => "api_key_id",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetSetting {
    pub amount: Decimal,
    pub period: Period,
    pub mode: Mode,
}

/// Budget threshold alerts: fractions of the budget amount (sorted,
/// distinct, normalized) and where their events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSetting {
    pub thresholds: Vec<Decimal>,
    pub webhook_url: String,
}

/// What an admin sets for one scope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub budget: Option<BudgetSetting>,
    pub requests_per_minute: Option<i64>,
    pub tokens_per_minute: Option<i64>,
    pub concurrent_requests: Option<i64>,
    /// Only with a budget (the thresholds are fractions of its amount).
    pub alerts: Option<AlertSetting>,
}

/// One `limits` row: settings plus bucket state.
#[derive(Debug, Clone)]
pub struct LimitRow {
    pub scope: Scope,
    pub id: String,
    pub settings: Settings,
    pub rpm_level: Decimal,
    pub tpm_level: Decimal,
    pub bucket_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct RawRow {
    scope_kind: String,
    scope_id: String,
    budget_amount: Option<Decimal>,
    budget_period: Option<String>,
    budget_mode: Option<String>,
    requests_per_minute: Option<i64>,
    tokens_per_minute: Option<i64>,
    concurrent_requests: Option<i64>,
    rpm_level: Decimal,
    tpm_level: Decimal,
    bucket_at: Option<DateTime<Utc>>,
    alert_thresholds: Option<Vec<Decimal>>,
    alert_webhook_url: Option<String>,
}

impl RawRow {
    fn into_row(self) -> Option<LimitRow> {
        let budget = match (self.budget_amount, self.budget_period, self.budget_mode) {
            (Some(amount), Some(period), Some(mode)) => Some(BudgetSetting {
                amount: amount.normalize(),
                period: Period::parse(&period)?,
                mode: Mode::parse(&mode)?,
            }),
            _ => None,
        };
        let alerts = match (self.alert_thresholds, self.alert_webhook_url) {
            (Some(thresholds), Some(webhook_url)) => Some(AlertSetting {
                thresholds: thresholds.into_iter().map(|t| t.normalize()).collect(),
                webhook_url,
            }),
            _ => None,
        };
        Some(LimitRow {
            scope: Scope::parse(&self.scope_kind)?,
            id: self.scope_id,
            settings: Settings {
                budget,
                requests_per_minute: self.requests_per_minute,
                tokens_per_minute: self.tokens_per_minute,
                concurrent_requests: self.concurrent_requests,
                alerts,
            },
            rpm_level: self.rpm_level,
            tpm_level: self.tpm_level,
            bucket_at: self.bucket_at,
        })
    }
}

const COLUMNS: &str = "scope_kind, scope_id, budget_amount, budget_period, budget_mode,
    requests_per_minute, tokens_per_minute, concurrent_requests, rpm_level, tpm_level, bucket_at,
    alert_thresholds, alert_webhook_url";

/// Every limited scope, for the in-memory "who has limits" set.
pub async fn scopes(pool: &PgPool) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT scope_kind, scope_id FROM limits")
        .fetch_all(pool)
        .await
}

/// Every scope with alerts, for the in-memory "who has alerts" set.
pub async fn alerting_scopes(pool: &PgPool) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT scope_kind, scope_id FROM limits WHERE alert_thresholds IS NOT NULL")
        .fetch_all(pool)
        .await
}

pub async fn get(pool: &PgPool, scope: Scope, id: &str) -> Result<Option<LimitRow>, sqlx::Error> {
    let raw: Option<RawRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM limits WHERE scope_kind = $1 AND scope_id = $2"
    ))
    .bind(scope.as_str())
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(raw.and_then(RawRow::into_row))
}

pub async fn list(pool: &PgPool) -> Result<Vec<LimitRow>, sqlx::Error> {
    let raws: Vec<RawRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM limits ORDER BY scope_kind DESC, scope_id"
    ))
    .fetch_all(pool)
    .await?;
    Ok(raws.into_iter().filter_map(RawRow::into_row).collect())
}

/// Replaces the scope's settings. Buckets restart full, so a changed limit
/// applies from its own allowance.
pub async fn put(pool: &PgPool, scope: Scope, id: &str, s: &Settings) -> Result<(), sqlx::Error> {
    let budget = s.budget.as_ref();
    let alerts = s.alerts.as_ref();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO limits (scope_kind, scope_id, budget_amount, budget_period, budget_mode,
            requests_per_minute, tokens_per_minute, concurrent_requests, rpm_level, tpm_level, bucket_at,
            alert_thresholds, alert_webhook_url, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 0, NULL, $9, $10, now())
         ON CONFLICT (scope_kind, scope_id) DO UPDATE SET
            budget_amount = EXCLUDED.budget_amount, budget_period = EXCLUDED.budget_period,
            budget_mode = EXCLUDED.budget_mode, requests_per_minute = EXCLUDED.requests_per_minute,
            tokens_per_minute = EXCLUDED.tokens_per_minute,
            concurrent_requests = EXCLUDED.concurrent_requests,
            alert_thresholds = EXCLUDED.alert_thresholds,
            alert_webhook_url = EXCLUDED.alert_webhook_url,
            rpm_level = 0, tpm_level = 0, bucket_at = NULL, updated_at = now()",
    )
    .bind(scope.as_str())
    .bind(id)
    .bind(budget.map(|b| b.amount))
    .bind(budget.map(|b| b.period.as_str()))
    .bind(budget.map(|b| b.mode.as_str()))
    .bind(s.requests_per_minute)
    .bind(s.tokens_per_minute)
    .bind(s.concurrent_requests)
    .bind(alerts.map(|a| a.thresholds.clone()))
    .bind(alerts.map(|a| a.webhook_url.as_str()))
    .execute(&mut *tx)
    .await?;
    // Buckets restart full, less what the replicas' slices already took
    // from them (they keep admitting from those until they hand them back).
    sqlx::query(
        "UPDATE limits l SET
            rpm_level = coalesce(l.requests_per_minute, 0) - coalesce(h.requests, 0),
            tpm_level = coalesce(l.tokens_per_minute, 0) - coalesce(h.tokens, 0),
            bucket_at = clock_timestamp()
         FROM (SELECT sum(greatest(requests, 0)) AS requests, sum(greatest(tokens, 0)) AS tokens
               FROM limit_leases WHERE scope_kind = $1 AND scope_id = $2 AND expires_at > clock_timestamp()) h
         WHERE l.scope_kind = $1 AND l.scope_id = $2",
    )
    .bind(scope.as_str())
    .bind(id)
    .execute(&mut *tx)
    .await?;
    notify_change(&mut tx, scope, id).await?;
    tx.commit().await
}

/// Tells every replica (`LISTEN tollgate_limits`) that a scope changed:
/// they reload its settings and hand back their spare at once.
async fn notify_change(
    tx: &mut Transaction<'_, Postgres>,
    scope: Scope,
    id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(format!("{}:{id}", scope.as_str()))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The channel limit changes and recalls are announced on.
pub const CHANNEL: &str = "tollgate_limits";

/// A scope named in a notification.
pub fn parse_notification(payload: &str) -> Option<(Scope, String)> {
    let (kind, id) = payload.split_once(':')?;
    Some((Scope::parse(kind)?, id.to_owned()))
}

pub async fn delete(pool: &PgPool, scope: Scope, id: &str) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // The scope's slices go with it (ON DELETE CASCADE).
    let done = sqlx::query("DELETE FROM limits WHERE scope_kind = $1 AND scope_id = $2")
        .bind(scope.as_str())
        .bind(id)
        .execute(&mut *tx)
        .await?;
    notify_change(&mut tx, scope, id).await?;
    tx.commit().await?;
    Ok(done.rows_affected() > 0)
}

/// A scope's live figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Live {
    /// The ledger's cost sum since the period start (from `limit_spend`,
    /// the per-day sums the database keeps with every ledger change).
    pub spent: Decimal,
    /// Estimates of the requests in flight, as the replicas last reported
    /// them (each reports at least every second while it serves the scope).
    pub reserved: Decimal,
    /// Requests in flight, as last reported.
    pub open: i64,
    /// Budget held by the replicas' live slices (reserved included).
    pub leased: Decimal,
    pub overrun: Decimal,
}

/// Where the period containing `now` starts; `total` starts before any row
/// (1970-01-01).
pub fn since(period: Option<Period>, now: DateTime<Utc>) -> DateTime<Utc> {
    period
        .and_then(|p| p.start(now))
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

pub async fn live(
    conn: &mut PgConnection,
    scope: Scope,
    id: &str,
    period: Option<Period>,
    now: DateTime<Utc>,
) -> Result<Live, sqlx::Error> {
    let col = scope.column();
    let (spent, reserved, open, leased, overrun): (Decimal, Decimal, i64, Decimal, Decimal) =
        sqlx::query_as(&format!(
        "SELECT
            (SELECT coalesce(sum(spent), 0) FROM limit_spend
              WHERE scope_kind = $3 AND scope_id = $1 AND day >= ($2 AT TIME ZONE 'UTC')::date),
            l.reserved, l.open, l.leased,
            (SELECT coalesce(sum(overrun), 0) FROM limit_overruns WHERE {col} = $1 AND started_at >= $2)
         FROM (SELECT coalesce(sum(committed), 0) AS reserved, coalesce(sum(open_requests), 0)::int8 AS open,
                      coalesce(sum(budget), 0) AS leased
               FROM limit_leases
               WHERE scope_kind = $3 AND scope_id = $1 AND expires_at > clock_timestamp()) l"
    ))
    .bind(id)
    .bind(since(period, now))
    .bind(scope.as_str())
    .fetch_one(&mut *conn)
    .await?;
    Ok(Live {
        spent: spent.normalize(),
        reserved: reserved.normalize(),
        open,
        leased: leased.normalize(),
        overrun: overrun.normalize(),
    })
}

pub async fn db_now(conn: &mut PgConnection) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(conn)
        .await
}

/// What one sync asks of the database for one scope (absolute where the
/// database must believe the replica, deltas where tokens move).
#[derive(Debug, Clone, PartialEq)]
pub struct Ask {
    pub scope: Scope,
    pub id: String,
    /// The budget slice after what this sync hands back (≥ `committed`).
    pub budget_held: Decimal,
    pub committed: Decimal,
    pub budget_back: Decimal,
    pub budget_want: Decimal,
    pub budget_need: Decimal,
    pub slots_held: i64,
    pub slots_back: i64,
    pub open: i64,
    pub slots_want: i64,
    pub slots_need: i64,
    /// Rate tokens handed back to the buckets, and wanted from them.
    pub requests_back: Decimal,
    pub requests_want: Decimal,
    pub requests_need: Decimal,
    pub tokens_back: Decimal,
    pub tokens_want: Decimal,
    pub tokens_need: Decimal,
    /// The largest single request among those waiting (tokens).
    pub tokens_largest: Decimal,
    /// What the slice keeps of rate tokens after handing back (reported).
    pub requests_kept: Decimal,
    pub tokens_kept: Decimal,
    /// Give the whole slice up (idle, or shutting down): the lease row goes.
    pub release: bool,
}

/// The database's answer for one scope.
#[derive(Debug, Clone, PartialEq)]
pub struct Granted {
    pub settings: Settings,
    pub budget: Decimal,
    pub slots: i64,
    pub requests: Decimal,
    pub tokens: Decimal,
    /// The buckets' levels after this sync (what other replicas may still take).
    pub rpm_level: Decimal,
    pub tpm_level: Decimal,
    /// The scope was found short lately: keep no spare for a while.
    pub recall: bool,
    /// This sync found it short while other replicas hold spare: they are
    /// being asked to hand it back, so a retry shortly may succeed.
    pub others_spare: bool,
    /// How long the lease holds from when the sync was sent.
    pub ttl: Duration,
}

/// How the sync of one scope ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Synced {
    Granted(Box<Granted>),
    /// The scope has no limits any more.
    Gone,
}

/// One bucket's state after admission, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketView {
    pub limit: i64,
    pub remaining: i64,
    pub reset_seconds: u64,
}

/// A request whose actual cost exceeded its estimate (recorded, never hidden).
#[derive(Debug, Clone, PartialEq)]
pub struct Overrun {
    pub request_id: String,
    pub tenant: String,
    pub key_id: String,
    pub estimate: Decimal,
    pub actual: Decimal,
    pub started_at: DateTime<Utc>,
}

/// How a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The transaction never committed: the database has what it had.
    #[error("slice sync not applied: {0}")]
    NotApplied(sqlx::Error),
    /// The commit was sent and no answer came: it may or may not have
    /// happened.
    #[error("slice sync outcome unknown: {0}")]
    Unknown(sqlx::Error),
}

impl SyncError {
    pub fn into_inner(self) -> sqlx::Error {
        match self {
            Self::NotApplied(err) | Self::Unknown(err) => err,
        }
    }
}

/// How long after a recall every replica keeps no spare (`limits.recall_at`).
const RECALL_FOR_SECS: f64 = 5.0;

/// Moves this replica's slices of the asked scopes (sorted by kind, id) in
/// one transaction: see the module doc. Overruns are recorded with it.
pub async fn sync(
    pool: &PgPool,
    holder: &str,
    asks: &[Ask],
    overruns: &[Overrun],
    ttl: std::time::Duration,
) -> Result<Vec<Synced>, SyncError> {
    let mut tx = pool.begin().await.map_err(SyncError::NotApplied)?;
    let synced = sync_in(&mut tx, holder, asks, overruns, ttl)
        .await
        .map_err(SyncError::NotApplied)?;
    tx.commit().await.map_err(SyncError::Unknown)?;
    Ok(synced)
}

#[derive(sqlx::FromRow)]
struct Others {
    scope_kind: String,
    scope_id: String,
    budget: Decimal,
    slots: i64,
    spare_budget: Decimal,
    spare_slots: i64,
}

/// What the other replicas hold of one scope.
#[derive(Default, Clone)]
struct Held {
    budget: Decimal,
    slots: i64,
    spare_budget: Decimal,
    spare_slots: i64,
}

async fn sync_in(
    tx: &mut Transaction<'_, Postgres>,
    holder: &str,
    asks: &[Ask],
    overruns: &[Overrun],
    ttl: std::time::Duration,
) -> Result<Vec<Synced>, sqlx::Error> {
    let kinds: Vec<&str> = asks.iter().map(|a| a.scope.as_str()).collect();
    let ids: Vec<&str> = asks.iter().map(|a| a.id.as_str()).collect();
    let rows: Vec<(RawRow, Option<DateTime<Utc>>)> = sqlx::query_as::<_, RawRowRecall>(&format!(
        "SELECT {COLUMNS}, recall_at FROM limits
         WHERE (scope_kind, scope_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
         ORDER BY scope_kind, scope_id FOR UPDATE"
    ))
    .bind(&kinds)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .map(|r| (r.raw, r.recall_at))
    .collect();
    let now = db_now(tx).await?;
    sqlx::query(
        "DELETE FROM limit_leases
         WHERE (scope_kind, scope_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
           AND expires_at <= $3",
    )
    .bind(&kinds)
    .bind(&ids)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let others = others(tx, holder, &kinds, &ids).await?;
    let limits: Vec<(LimitRow, Option<DateTime<Utc>>)> = rows
        .into_iter()
        .filter_map(|(raw, recall)| raw.into_row().map(|row| (row, recall)))
        .collect();
    let spent = spent(tx, &limits, now).await?;
    let mut plan = Plan::default();
    let mut synced = Vec::with_capacity(asks.len());
    for ask in asks {
        let found = limits
            .iter()
            .zip(&spent)
            .find(|((row, _), _)| row.scope == ask.scope && row.id == ask.id);
        let Some(((row, recall_at), spent)) = found else {
            synced.push(Synced::Gone);
            continue;
        };
        let held = others
            .get(&(ask.scope, ask.id.clone()))
            .cloned()
            .unwrap_or_default();
        let decided = decide(ask, row, *recall_at, *spent, &held, now, ttl);
        plan.push(ask, row, &decided, now);
        synced.push(Synced::Granted(Box::new(decided.granted)));
    }
    plan.save(tx, holder, now, ttl).await?;
    insert_overruns(tx, overruns).await?;
    Ok(synced)
}

#[derive(sqlx::FromRow)]
struct RawRowRecall {
    #[sqlx(flatten)]
    raw: RawRow,
    recall_at: Option<DateTime<Utc>>,
}

async fn others(
    tx: &mut Transaction<'_, Postgres>,
    holder: &str,
    kinds: &[&str],
    ids: &[&str],
) -> Result<std::collections::HashMap<(Scope, String), Held>, sqlx::Error> {
    let rows: Vec<Others> = sqlx::query_as(
        "SELECT scope_kind, scope_id, sum(budget) AS budget, sum(slots)::int8 AS slots,
                sum(greatest(budget - committed, 0)) AS spare_budget,
                sum(greatest(slots - open_requests, 0))::int8 AS spare_slots
         FROM limit_leases
         WHERE (scope_kind, scope_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
           AND holder <> $3
         GROUP BY scope_kind, scope_id",
    )
    .bind(kinds)
    .bind(ids)
    .bind(holder)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|o| {
            let scope = Scope::parse(&o.scope_kind)?;
            Some((
                (scope, o.scope_id),
                Held {
                    budget: o.budget,
                    slots: o.slots,
                    spare_budget: o.spare_budget,
                    spare_slots: o.spare_slots,
                },
            ))
        })
        .collect())
}

/// Each locked scope's spend of its budget period (zero without a budget).
async fn spent(
    tx: &mut Transaction<'_, Postgres>,
    limits: &[(LimitRow, Option<DateTime<Utc>>)],
    now: DateTime<Utc>,
) -> Result<Vec<Decimal>, sqlx::Error> {
    let kinds: Vec<&str> = limits.iter().map(|(r, _)| r.scope.as_str()).collect();
    let ids: Vec<&str> = limits.iter().map(|(r, _)| r.id.as_str()).collect();
    let days: Vec<chrono::NaiveDate> = limits
        .iter()
        .map(|(r, _)| since(r.settings.budget.as_ref().map(|b| b.period), now).date_naive())
        .collect();
    let sums: Vec<Decimal> = sqlx::query_scalar(
        "SELECT (SELECT coalesce(sum(s.spent), 0) FROM limit_spend s
                 WHERE s.scope_kind = a.k AND s.scope_id = a.i AND s.day >= a.d)
         FROM unnest($1::text[], $2::text[], $3::date[]) WITH ORDINALITY AS a(k, i, d, n)
         ORDER BY a.n",
    )
    .bind(&kinds)
    .bind(&ids)
    .bind(&days)
    .fetch_all(&mut **tx)
    .await?;
    Ok(sums)
}

/// One scope's outcome: the grant, and the bucket levels and recall mark to
/// save.
struct Decided {
    granted: Granted,
    rpm_level: Decimal,
    tpm_level: Decimal,
    recall: bool,
}

/// What one sync asks of one rate bucket.
#[derive(Clone, Copy)]
struct RateAsk {
    want: Decimal,
    need: Decimal,
    largest: Decimal,
    kept: Decimal,
}

/// The grants of one scope for one ask (pure apart from its inputs).
fn decide(
    ask: &Ask,
    row: &LimitRow,
    recall_at: Option<DateTime<Utc>>,
    spent: Decimal,
    others: &Held,
    now: DateTime<Utc>,
    ttl: std::time::Duration,
) -> Decided {
    let s = &row.settings;
    let mut recall = false;
    let budget = match &s.budget {
        None => Decimal::ZERO,
        Some(b) => {
            let free = b.amount - spent - others.budget - ask.budget_held;
            let grant = share::grant(ask.budget_want, ask.budget_need, free);
            // `committed` counts the waiters already: short when it exceeds
            // the slice even with the grant.
            let short = ask.budget_held + grant < ask.committed;
            recall |= short && others.spare_budget > Decimal::ZERO;
            ask.budget_held + grant
        }
    };
    let slots = match s.concurrent_requests {
        None => 0,
        Some(limit) => {
            let free = limit - others.slots - ask.slots_held;
            let grant = share::grant_count(ask.slots_want, ask.slots_need, free);
            recall |= ask.slots_held + grant < ask.open && others.spare_slots > 0;
            ask.slots_held + grant
        }
    };
    let at = row.bucket_at.unwrap_or(DateTime::<Utc>::MIN_UTC);
    let take = |limit: Option<i64>, level: Decimal, back: Decimal, ask: RateAsk| {
        let Some(limit) = limit else {
            return (Decimal::ZERO, Decimal::ZERO);
        };
        let level = Bucket { limit, level }.level_at(at, now);
        let level = (level + back.max(Decimal::ZERO)).min(Decimal::from(limit));
        let grant = share::grant_rate(limit, level, ask.want, ask.need, ask.largest);
        (ask.kept + grant, level - grant)
    };
    let (requests, rpm_level) = take(
        s.requests_per_minute,
        row.rpm_level,
        ask.requests_back,
        RateAsk {
            want: ask.requests_want,
            need: ask.requests_need,
            largest: Decimal::ONE,
            kept: ask.requests_kept,
        },
    );
    let (tokens, tpm_level) = take(
        s.tokens_per_minute,
        row.tpm_level,
        ask.tokens_back,
        RateAsk {
            want: ask.tokens_want,
            need: ask.tokens_need,
            largest: ask.tokens_largest,
            kept: ask.tokens_kept,
        },
    );
    let recalled_lately =
        recall_at.is_some_and(|at| (now - at).num_milliseconds() as f64 / 1000.0 < RECALL_FOR_SECS);
    Decided {
        granted: Granted {
            settings: s.clone(),
            budget,
            slots,
            requests,
            tokens,
            rpm_level,
            tpm_level,
            recall: recall || recalled_lately,
            others_spare: recall,
            ttl,
        },
        rpm_level,
        tpm_level,
        recall,
    }
}

/// Everything one sync writes, one statement per table.
#[derive(Default)]
struct Plan {
    kinds: Vec<String>,
    ids: Vec<String>,
    budget: Vec<Decimal>,
    slots: Vec<i64>,
    requests: Vec<Decimal>,
    tokens: Vec<Decimal>,
    committed: Vec<Decimal>,
    open: Vec<i64>,
    released: Vec<bool>,
    rpm_level: Vec<Decimal>,
    tpm_level: Vec<Decimal>,
    recall_at: Vec<Option<DateTime<Utc>>>,
}

impl Plan {
    fn push(&mut self, ask: &Ask, row: &LimitRow, d: &Decided, now: DateTime<Utc>) {
        self.kinds.push(row.scope.as_str().to_owned());
        self.ids.push(row.id.clone());
        self.budget.push(d.granted.budget);
        self.slots.push(d.granted.slots);
        self.requests.push(d.granted.requests);
        self.tokens.push(d.granted.tokens);
        self.committed.push(ask.committed);
        self.open.push(ask.open);
        self.released.push(ask.release);
        self.rpm_level.push(d.rpm_level);
        self.tpm_level.push(d.tpm_level);
        self.recall_at.push(d.recall.then_some(now));
    }

    async fn save(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        holder: &str,
        now: DateTime<Utc>,
        ttl: std::time::Duration,
    ) -> Result<(), sqlx::Error> {
        if self.kinds.is_empty() {
            return Ok(());
        }
        let expires = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::minutes(2));
        sqlx::query(
            "WITH a AS (SELECT * FROM unnest($1::text[], $2::text[], $3::numeric[], $4::int8[],
                        $5::numeric[], $6::numeric[], $7::numeric[], $8::int8[], $9::bool[])
                        AS a(k, i, b, s, r, t, c, o, released)),
             gone AS (DELETE FROM limit_leases l USING a
                      WHERE a.released AND l.scope_kind = a.k AND l.scope_id = a.i AND l.holder = $10)
             INSERT INTO limit_leases (scope_kind, scope_id, holder, budget, slots, requests, tokens,
                                       committed, open_requests, renewed_at, expires_at)
             SELECT k, i, $10, b, s, r, t, c, o, $11, $12 FROM a WHERE NOT released
             ON CONFLICT (scope_kind, scope_id, holder) DO UPDATE SET
                budget = EXCLUDED.budget, slots = EXCLUDED.slots, requests = EXCLUDED.requests,
                tokens = EXCLUDED.tokens, committed = EXCLUDED.committed,
                open_requests = EXCLUDED.open_requests, renewed_at = EXCLUDED.renewed_at,
                expires_at = EXCLUDED.expires_at",
        )
        .bind(&self.kinds)
        .bind(&self.ids)
        .bind(&self.budget)
        .bind(&self.slots)
        .bind(&self.requests)
        .bind(&self.tokens)
        .bind(&self.committed)
        .bind(&self.open)
        .bind(&self.released)
        .bind(holder)
        .bind(now)
        .bind(expires)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE limits l SET rpm_level = a.r, tpm_level = a.t, bucket_at = $5,
                recall_at = coalesce(a.recall, l.recall_at)
             FROM unnest($1::text[], $2::text[], $3::numeric[], $4::numeric[], $6::timestamptz[])
                  AS a(k, i, r, t, recall)
             WHERE l.scope_kind = a.k AND l.scope_id = a.i",
        )
        .bind(&self.kinds)
        .bind(&self.ids)
        .bind(&self.rpm_level)
        .bind(&self.tpm_level)
        .bind(now)
        .bind(&self.recall_at)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

async fn insert_overruns(
    tx: &mut Transaction<'_, Postgres>,
    overruns: &[Overrun],
) -> Result<(), sqlx::Error> {
    if overruns.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&Overrun) -> &str| overruns.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO limit_overruns (request_id, tenant_id, api_key_id, estimate, actual, overrun, started_at)
         SELECT r, t, k, e, a, a - e, s
         FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::numeric[], $6::timestamptz[])
              AS x(r, t, k, e, a, s)
         ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(col(|o| &o.request_id))
    .bind(col(|o| &o.tenant))
    .bind(col(|o| &o.key_id))
    .bind(overruns.iter().map(|o| o.estimate).collect::<Vec<_>>())
    .bind(overruns.iter().map(|o| o.actual).collect::<Vec<_>>())
    .bind(overruns.iter().map(|o| o.started_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Hands back every slice of `holder` that has nothing open (shutdown):
/// their rate tokens go back to the buckets, their budget and slots are
/// free at once. Slices with open requests (rows still spooled) stay and
/// lapse at their expiry.
pub async fn release_idle(pool: &PgPool, holder: &str) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let gone: Vec<(String, String, Decimal, Decimal)> = sqlx::query_as(
        "SELECT l.scope_kind, l.scope_id, greatest(l.requests, 0), greatest(l.tokens, 0)
         FROM limit_leases l JOIN limits s USING (scope_kind, scope_id)
         WHERE l.holder = $1 AND l.committed = 0 AND l.open_requests = 0
         ORDER BY l.scope_kind, l.scope_id FOR UPDATE OF s",
    )
    .bind(holder)
    .fetch_all(&mut *tx)
    .await?;
    for (kind, id, requests, tokens) in &gone {
        sqlx::query(
            "UPDATE limits SET
                rpm_level = CASE WHEN requests_per_minute IS NULL THEN rpm_level
                                 ELSE least(requests_per_minute, rpm_level + $3) END,
                tpm_level = CASE WHEN tokens_per_minute IS NULL THEN tpm_level
                                 ELSE least(tokens_per_minute, tpm_level + $4) END
             WHERE scope_kind = $1 AND scope_id = $2",
        )
        .bind(kind)
        .bind(id)
        .bind(requests)
        .bind(tokens)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM limit_leases WHERE scope_kind = $1 AND scope_id = $2 AND holder = $3",
        )
        .bind(kind)
        .bind(id)
        .bind(holder)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(gone.len() as u64)
}
