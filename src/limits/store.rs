//! The SQL of spend control: limit rows, the admission transaction,
//! settlement of reservations by the ledger writer, and live status reads.
//!
//! Admission is one transaction per batch of requests (`super::batch`):
//! lock the `limits` rows of their keys and tenants (`ORDER BY scope_kind,
//! scope_id ... FOR UPDATE`, the one global order every locker here uses,
//! so no two transactions deadlock), read the database clock, each scope's
//! spend of the period (`limit_spend`), open reservations and buckets;
//! decide the requests in order; then save the buckets and insert the
//! reservations. Admissions for the same scope therefore run one batch
//! after another on any replica, each seeing the reservations of those
//! before it.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use super::budget::{self, Mode, Period};
use super::estimate::Estimate;
use super::rate::{self, Bucket};

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
    // With the row locked, the counters start from the reservations as they
    // are: every admission or release of this scope is before (seen) or
    // after (moves the counters from here).
    let col = scope.column();
    sqlx::query(&format!(
        "UPDATE limits SET
            reserved = (SELECT coalesce(sum(estimate), 0) FROM limit_reservations WHERE {col} = $2),
            open_requests = (SELECT count(*) FROM limit_reservations WHERE {col} = $2)
         WHERE scope_kind = $1 AND scope_id = $2"
    ))
    .bind(scope.as_str())
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

pub async fn delete(pool: &PgPool, scope: Scope, id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM limits WHERE scope_kind = $1 AND scope_id = $2")
        .bind(scope.as_str())
        .bind(id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// A scope's live figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Live {
    /// The ledger's cost sum since the period start (from `limit_spend`,
    /// the per-day sums the database keeps with every ledger change).
    pub spent: Decimal,
    /// Estimates of the scope's open reservations (the row's counter).
    pub reserved: Decimal,
    /// Open reservations: requests in flight (the row's counter).
    pub open: i64,
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
    let (spent, reserved, open, overrun): (Decimal, Decimal, i64, Decimal) = sqlx::query_as(&format!(
        "SELECT
            (SELECT coalesce(sum(spent), 0) FROM limit_spend
              WHERE scope_kind = $3 AND scope_id = $1 AND day >= ($2 AT TIME ZONE 'UTC')::date),
            (SELECT coalesce(max(reserved), 0) FROM limits WHERE scope_kind = $3 AND scope_id = $1),
            (SELECT coalesce(max(open_requests), 0) FROM limits WHERE scope_kind = $3 AND scope_id = $1),
            (SELECT coalesce(sum(overrun), 0) FROM limit_overruns WHERE {col} = $1 AND started_at >= $2)"
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
        overrun: overrun.normalize(),
    })
}

pub async fn db_now(conn: &mut PgConnection) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(conn)
        .await
}

/// What admission asks for.
#[derive(Debug, Clone)]
pub struct Ask {
    pub request_id: String,
    pub tenant: String,
    pub key_id: String,
    pub estimate: Estimate,
    pub ttl: std::time::Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Budget {
        scope: Scope,
    },
    Rate {
        scope: Scope,
        reason: &'static str,
        retry_after: u64,
    },
}

/// One bucket's state after admission, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketView {
    pub limit: i64,
    pub remaining: i64,
    pub reset_seconds: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Granted {
    pub requests: Vec<BucketView>,
    pub tokens: Vec<BucketView>,
}

/// One request's verdict.
pub type Decision = Result<Granted, Refusal>;

/// The admission transaction (module doc) for several requests at once, in
/// their order: each sees the reservations and bucket takes of those before
/// it, exactly as if they had been admitted one after another at the same
/// instant. One transaction per batch, not per request, is what keeps
/// limits from becoming the bottleneck (`super::batch`).
pub async fn admit(pool: &PgPool, asks: &[Ask]) -> Result<Vec<Decision>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let keys: Vec<&str> = asks.iter().map(|a| a.key_id.as_str()).collect();
    let tenants: Vec<&str> = asks.iter().map(|a| a.tenant.as_str()).collect();
    let raws: Vec<RawRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM limits
         WHERE (scope_kind = 'key' AND scope_id = ANY($1))
            OR (scope_kind = 'tenant' AND scope_id = ANY($2))
         ORDER BY scope_kind, scope_id FOR UPDATE"
    ))
    .bind(&keys)
    .bind(&tenants)
    .fetch_all(&mut *tx)
    .await?;
    // Read after the locks are held: every later admission sees a later clock.
    let now = db_now(&mut tx).await?;
    let mut scopes = Vec::with_capacity(raws.len());
    for row in raws.into_iter().filter_map(RawRow::into_row) {
        scopes.push(ScopeState::load(&mut tx, row, now).await?);
    }
    let decisions: Vec<Decision> = asks.iter().map(|ask| decide(&mut scopes, ask)).collect();
    save_buckets(&mut tx, &scopes, now).await?;
    insert_reservations(&mut tx, asks, &decisions, now).await?;
    tx.commit().await?;
    Ok(decisions)
}

/// A locked scope during one admission transaction: its live figures and
/// bucket levels, moved along by every request the batch admits.
struct ScopeState {
    row: LimitRow,
    live: Live,
    /// Bucket levels at the transaction's `now`, after the batch's takes.
    rpm: Decimal,
    tpm: Decimal,
    taken: bool,
}

impl ScopeState {
    async fn load(
        tx: &mut Transaction<'_, Postgres>,
        row: LimitRow,
        now: DateTime<Utc>,
    ) -> Result<Self, sqlx::Error> {
        let s = &row.settings;
        // Always read: the counters are saved back with the batch's takes.
        let period = s.budget.as_ref().map(|b| b.period);
        let live = live(tx, row.scope, &row.id, period, now).await?;
        let at = row.bucket_at.unwrap_or(DateTime::<Utc>::MIN_UTC);
        let level = |limit: Option<i64>, level: Decimal| {
            limit.map_or(level, |limit| Bucket { limit, level }.level_at(at, now))
        };
        Ok(Self {
            rpm: level(s.requests_per_minute, row.rpm_level),
            tpm: level(s.tokens_per_minute, row.tpm_level),
            live,
            row,
            taken: false,
        })
    }

    fn applies_to(&self, ask: &Ask) -> bool {
        match self.row.scope {
            Scope::Key => self.row.id == ask.key_id,
            Scope::Tenant => self.row.id == ask.tenant,
        }
    }

    /// This scope's verdict on `ask`, taking nothing; the bucket views the
    /// request would leave.
    fn check(&self, ask: &Ask) -> Result<Views, Refusal> {
        let s = &self.row.settings;
        let scope = self.row.scope;
        if let Some(b) = &s.budget {
            let fits = budget::admits(
                b.mode,
                b.amount,
                self.live.spent,
                self.live.reserved,
                ask.estimate.cost,
            );
            if !fits {
                return Err(Refusal::Budget { scope });
            }
        }
        if s.concurrent_requests
            .is_some_and(|max| self.live.open >= max)
        {
            return Err(Refusal::Rate {
                scope,
                reason: "concurrent_requests",
                retry_after: 1,
            });
        }
        let rpm = take_view(
            scope,
            s.requests_per_minute,
            self.rpm,
            1,
            "requests_per_minute",
        )?;
        let tpm = take_view(
            scope,
            s.tokens_per_minute,
            self.tpm,
            ask.estimate.tokens,
            "tokens_per_minute",
        )?;
        Ok((rpm, tpm))
    }

    fn take(&mut self, ask: &Ask) {
        self.live.reserved += ask.estimate.cost;
        self.live.open += 1;
        if self.row.settings.requests_per_minute.is_some() {
            self.rpm -= Decimal::ONE;
        }
        if self.row.settings.tokens_per_minute.is_some() {
            self.tpm -= Decimal::from(ask.estimate.tokens);
        }
        self.taken = true;
    }
}

type Views = (Option<BucketView>, Option<BucketView>);

/// A rate bucket's verdict on taking `cost`, and the view it would leave.
fn take_view(
    scope: Scope,
    limit: Option<i64>,
    level: Decimal,
    cost: i64,
    reason: &'static str,
) -> Result<Option<BucketView>, Refusal> {
    let Some(limit) = limit else {
        return Ok(None);
    };
    if !rate::admits(limit, level, cost) {
        return Err(Refusal::Rate {
            scope,
            reason,
            retry_after: rate::wait_seconds(limit, level, cost),
        });
    }
    let after = level - Decimal::from(cost);
    Ok(Some(BucketView {
        limit,
        remaining: after
            .floor()
            .max(Decimal::ZERO)
            .mantissa()
            .try_into()
            .unwrap_or(0),
        reset_seconds: rate::reset_seconds(limit, after),
    }))
}

/// Every scope of the request must admit it (key first, then tenant, the
/// lock order); only then does it take from each.
fn decide(scopes: &mut [ScopeState], ask: &Ask) -> Decision {
    let mut granted = Granted::default();
    for scope in scopes.iter().filter(|s| s.applies_to(ask)) {
        let (rpm, tpm) = scope.check(ask)?;
        granted.requests.extend(rpm);
        granted.tokens.extend(tpm);
    }
    for scope in scopes.iter_mut().filter(|s| s.applies_to(ask)) {
        scope.take(ask);
    }
    Ok(granted)
}

async fn save_buckets(
    tx: &mut Transaction<'_, Postgres>,
    scopes: &[ScopeState],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    for scope in scopes.iter().filter(|s| s.taken) {
        sqlx::query(
            "UPDATE limits SET rpm_level = $3, tpm_level = $4, bucket_at = $5,
                reserved = $6, open_requests = $7
             WHERE scope_kind = $1 AND scope_id = $2",
        )
        .bind(scope.row.scope.as_str())
        .bind(&scope.row.id)
        .bind(scope.rpm)
        .bind(scope.tpm)
        .bind(now)
        .bind(scope.live.reserved)
        .bind(scope.live.open)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// One statement for the admitted requests of the batch.
async fn insert_reservations(
    tx: &mut Transaction<'_, Postgres>,
    asks: &[Ask],
    decisions: &[Decision],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let admitted: Vec<&Ask> = asks
        .iter()
        .zip(decisions)
        .filter(|(_, d)| d.is_ok())
        .map(|(a, _)| a)
        .collect();
    if admitted.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&Ask) -> &str| admitted.iter().map(|a| f(a)).collect::<Vec<_>>();
    let expires: Vec<DateTime<Utc>> = admitted
        .iter()
        .map(|a| now + chrono::Duration::from_std(a.ttl).unwrap_or(chrono::Duration::hours(1)))
        .collect();
    sqlx::query(
        "INSERT INTO limit_reservations (request_id, tenant_id, api_key_id, estimate, tokens, created_at, expires_at)
         SELECT r, t, k, e, n, $6, x
         FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::int8[], $7::timestamptz[])
              AS a(r, t, k, e, n, x)",
    )
    .bind(column(|a| &a.request_id))
    .bind(column(|a| &a.tenant))
    .bind(column(|a| &a.key_id))
    .bind(admitted.iter().map(|a| a.estimate.cost).collect::<Vec<_>>())
    .bind(admitted.iter().map(|a| a.estimate.tokens).collect::<Vec<_>>())
    .bind(now)
    .bind(expires)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Extends the reservations of requests still open to `ttl` from now (the
/// database's clock, as admission's); never shortens one.
pub async fn extend(
    pool: &PgPool,
    request_ids: &[String],
    ttl: std::time::Duration,
) -> Result<(), sqlx::Error> {
    let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1));
    sqlx::query(
        "UPDATE limit_reservations SET expires_at = greatest(expires_at, now() + $2)
         WHERE request_id = ANY($1)",
    )
    .bind(request_ids)
    .bind(ttl)
    .execute(pool)
    .await?;
    Ok(())
}

/// What the ledger stored for one request, as settlement needs it.
pub struct Settled<'a> {
    pub request_id: &'a str,
    pub cost: Option<Decimal>,
    pub total_tokens: i64,
}

/// Releases the reservations of stored rows (one statement), records their
/// overruns, and gives `tokens_per_minute` back what the estimate held
/// beyond the actual (or takes the excess).
pub async fn settle(pool: &PgPool, rows: &[Settled<'_>]) -> Result<(), sqlx::Error> {
    let ids: Vec<&str> = rows.iter().map(|r| r.request_id).collect();
    let costs: Vec<Option<Decimal>> = rows.iter().map(|r| r.cost).collect();
    let tokens: Vec<i64> = rows.iter().map(|r| r.total_tokens).collect();
    let mut tx = pool.begin().await?;
    let refunds: Vec<Release> = sqlx::query_as(
        "WITH actual AS (
            SELECT * FROM unnest($1::text[], $2::numeric[], $3::int8[]) AS a(request_id, cost, tokens)),
         settled AS (
            DELETE FROM limit_reservations r USING actual a WHERE r.request_id = a.request_id
            RETURNING r.request_id, r.tenant_id, r.api_key_id, r.estimate, r.tokens AS held,
                      r.created_at, a.cost, a.tokens),
         over AS (
            INSERT INTO limit_overruns (request_id, tenant_id, api_key_id, estimate, actual, overrun, started_at)
            SELECT request_id, tenant_id, api_key_id, estimate, cost, cost - estimate, created_at
            FROM settled WHERE cost > estimate
            ON CONFLICT (request_id) DO NOTHING)
         SELECT 'key', api_key_id, sum(held - tokens)::int8, sum(estimate), count(*) FROM settled GROUP BY api_key_id
         UNION ALL
         SELECT 'tenant', tenant_id, sum(held - tokens)::int8, sum(estimate), count(*) FROM settled GROUP BY tenant_id",
    )
    .bind(&ids)
    .bind(&costs)
    .bind(&tokens)
    .fetch_all(&mut *tx)
    .await?;
    release(&mut tx, refunds).await?;
    tx.commit().await
}

/// Deletes the reservations past their expiry (their replica died or lost
/// the database) and takes them off their scopes' counters; their tokens
/// stay taken (the actual is unknown). How many were swept.
pub async fn sweep_expired(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let gone: Vec<Release> = sqlx::query_as(
        "WITH gone AS (
            DELETE FROM limit_reservations WHERE expires_at <= clock_timestamp()
            RETURNING tenant_id, api_key_id, estimate)
         SELECT 'key', api_key_id, 0::int8, sum(estimate), count(*) FROM gone GROUP BY api_key_id
         UNION ALL
         SELECT 'tenant', tenant_id, 0::int8, sum(estimate), count(*) FROM gone GROUP BY tenant_id",
    )
    .fetch_all(&mut *tx)
    .await?;
    let swept = gone
        .iter()
        .filter(|r| r.0 == "key")
        .map(|r| u64::try_from(r.4).unwrap_or(0))
        .sum();
    release(&mut tx, gone).await?;
    tx.commit().await?;
    Ok(swept)
}

/// Per scope: tokens to give back, and the estimate sum and count of the
/// reservations that ended.
type Release = (String, String, i64, Decimal, i64);

/// Takes ended reservations off their scopes: the counters, and the tokens
/// the estimates held beyond the actuals. Lock order as in admission (kind,
/// id), so settlement and admission never deadlock.
async fn release(
    tx: &mut Transaction<'_, Postgres>,
    mut released: Vec<Release>,
) -> Result<(), sqlx::Error> {
    released.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    for (kind, id, refund, estimate, count) in released {
        sqlx::query(
            "UPDATE limits SET
                tpm_level = CASE WHEN tokens_per_minute IS NULL THEN tpm_level
                                 ELSE least(tokens_per_minute, tpm_level + $3) END,
                reserved = reserved - $4, open_requests = open_requests - $5
             WHERE scope_kind = $1 AND scope_id = $2",
        )
        .bind(kind)
        .bind(id)
        .bind(refund)
        .bind(estimate)
        .bind(count)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
