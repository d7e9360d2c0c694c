//! The SQL of the `alert_events` outbox: record crossings once per
//! (scope, scope id, period start, threshold), claim due events for
//! delivery (`FOR UPDATE SKIP LOCKED`, so replicas take different rows),
//! record each attempt's outcome, and list events for `GET /admin/alerts`.
//! Rows are never deleted or re-created here; an event's `id` is fixed when
//! it is recorded. Reconciliation drift events ([`record_drift`]) share the
//! table, keyed once per subject (a day and a line).

use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool};

use crate::limits::budget::Period;
use crate::limits::store::Scope;

/// A scope's spend past some of its thresholds, as detection saw it.
pub struct Crossing<'a> {
    pub scope: Scope,
    pub id: &'a str,
    pub period: Period,
    pub period_start: DateTime<Utc>,
    pub amount: Decimal,
    pub spent: Decimal,
    pub webhook_url: &'a str,
}

/// Inserts one event per threshold unless the period already has it; how
/// many were new. The event's tenant is the scope's (a key's owner for a
/// key); a key that no longer exists records nothing.
pub async fn record(
    conn: &mut PgConnection,
    c: &Crossing<'_>,
    thresholds: &[Decimal],
) -> Result<u64, sqlx::Error> {
    let ids: Vec<String> = thresholds.iter().map(|_| new_id()).collect();
    let done = sqlx::query(
        "INSERT INTO alert_events (id, scope_kind, scope_id, tenant_id, api_key_id, period,
            period_start, threshold, amount, spent, webhook_url)
         SELECT e.id, $1, $2, o.tenant_id, o.api_key_id, $3, $4, e.threshold, $5, $6, $7
         FROM unnest($8::text[], $9::numeric[]) AS e(id, threshold)
         CROSS JOIN (
            SELECT $2::text AS tenant_id, NULL::text AS api_key_id WHERE $1::text = 'tenant'
            UNION ALL
            SELECT tenant_id, id FROM api_keys WHERE $1::text = 'key' AND id = $2::text) AS o
         ON CONFLICT (scope_kind, scope_id, period_start, threshold) DO NOTHING",
    )
    .bind(c.scope.as_str())
    .bind(c.id)
    .bind(c.period.as_str())
    .bind(c.period_start)
    .bind(c.amount)
    .bind(c.spent)
    .bind(c.webhook_url)
    .bind(&ids)
    .bind(thresholds)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// The CloudEvents id: `evt_` and a UUIDv7, so ids sort by creation.
fn new_id() -> String {
    format!("evt_{}", uuid::Uuid::now_v7().simple())
}

/// Records a reconciliation drift event for `subject` (a day and a line)
/// unless one was ever recorded; whether it is new.
pub async fn record_drift(
    pool: &PgPool,
    subject: &str,
    data: &serde_json::Value,
    webhook_url: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO alert_events (id, event_type, subject, data, webhook_url)
         VALUES ($1, 'tollgate.reconciliation.drift', $2, $3, $4)
         ON CONFLICT (subject) WHERE event_type = 'tollgate.reconciliation.drift' DO NOTHING",
    )
    .bind(new_id())
    .bind(subject)
    .bind(data)
    .bind(webhook_url)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Points drift events not yet delivered at the webhook configured now.
pub async fn retarget_drift(pool: &PgPool, webhook_url: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE alert_events SET webhook_url = $1
         WHERE event_type = 'tollgate.reconciliation.drift' AND delivered_at IS NULL
           AND webhook_url <> $1",
    )
    .bind(webhook_url)
    .execute(pool)
    .await?;
    Ok(())
}

/// One outbox row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub id: String,
    /// `tollgate.budget.threshold_crossed` or `tollgate.reconciliation.drift`.
    pub event_type: String,
    pub scope_kind: Option<String>,
    pub scope_id: Option<String>,
    pub tenant_id: Option<String>,
    pub api_key_id: Option<String>,
    pub period: Option<String>,
    pub period_start: Option<DateTime<Utc>>,
    pub threshold: Option<Decimal>,
    pub amount: Option<Decimal>,
    pub spent: Option<Decimal>,
    /// A drift event's CloudEvents subject and data.
    pub subject: Option<String>,
    pub data: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

const COLUMNS: &str = "e.id, e.event_type, e.scope_kind, e.scope_id, e.tenant_id, e.api_key_id,
    e.period, e.period_start, e.threshold, e.amount, e.spent, e.subject, e.data, e.created_at,
    e.attempts, e.next_attempt_at, e.delivered_at, e.last_error";

/// A claimed event and where to send it: the scope's webhook as set now,
/// or the one it was recorded with once the scope has no alerts.
#[derive(Debug, sqlx::FromRow)]
pub struct Due {
    #[sqlx(flatten)]
    pub event: EventRow,
    pub url: String,
}

/// Claims up to `max` due events: counts the attempt and moves each past
/// `hold` (longer than an attempt may take), so no other replica takes it
/// while it is under way, and a replica that dies mid-attempt leaves it to
/// the others once `hold` has passed.
pub async fn claim(pool: &PgPool, hold: Duration, max: i64) -> Result<Vec<Due>, sqlx::Error> {
    sqlx::query_as(&format!(
        "WITH due AS (
            SELECT id FROM alert_events
            WHERE delivered_at IS NULL AND next_attempt_at <= clock_timestamp()
            ORDER BY next_attempt_at LIMIT $2
            FOR UPDATE SKIP LOCKED)
         UPDATE alert_events e
         SET attempts = e.attempts + 1,
             next_attempt_at = clock_timestamp() + make_interval(secs => $1)
         FROM due WHERE e.id = due.id
         RETURNING {COLUMNS}, coalesce(
            (SELECT l.alert_webhook_url FROM limits l
             WHERE l.scope_kind = e.scope_kind AND l.scope_id = e.scope_id),
            e.webhook_url) AS url"
    ))
    .bind(hold.as_secs_f64())
    .bind(max)
    .fetch_all(pool)
    .await
}

pub async fn delivered(pool: &PgPool, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE alert_events SET delivered_at = clock_timestamp()
         WHERE id = $1 AND delivered_at IS NULL",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records a failed attempt; the next one is due after `retry_in`.
pub async fn failed(
    pool: &PgPool,
    id: &str,
    error: &str,
    retry_in: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE alert_events
         SET last_error = $2, next_attempt_at = clock_timestamp() + make_interval(secs => $3)
         WHERE id = $1 AND delivered_at IS NULL",
    )
    .bind(id)
    .bind(error)
    .bind(retry_in.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// What `GET /admin/alerts` filters by.
#[derive(Debug, Default)]
pub struct Filter {
    pub tenant: Option<String>,
    pub delivered: Option<bool>,
    pub limit: i64,
}

/// Events newest first; one more than `limit` tells the caller there are more.
pub async fn list(pool: &PgPool, filter: &Filter) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM alert_events e
         WHERE ($1::text IS NULL OR e.tenant_id = $1)
           AND ($2::bool IS NULL OR (e.delivered_at IS NOT NULL) = $2)
         ORDER BY e.created_at DESC, e.id DESC
         LIMIT $3"
    ))
    .bind(filter.tenant.as_deref())
    .bind(filter.delivered)
    .bind(filter.limit.saturating_add(1))
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    async fn events(pool: &PgPool) -> Vec<(String, DateTime<Utc>, Decimal, Decimal)> {
        sqlx::query_as(
            "SELECT scope_id, period_start, threshold, spent FROM alert_events
             ORDER BY period_start, threshold",
        )
        .fetch_all(pool)
        .await
        .unwrap()
    }

    #[sqlx::test(migrations = "./migrations")]
    async fn a_threshold_is_recorded_once_per_scope_and_period(pool: PgPool) {
        let mut conn = pool.acquire().await.unwrap();
        let may = at("2026-05-01T00:00:00Z");
        let crossing = |spent: &str, period_start| Crossing {
            scope: Scope::Tenant,
            id: "acme",
            period: Period::Month,
            period_start,
            amount: d("10"),
            spent: d(spent),
            webhook_url: "https://hooks.example/t",
        };
        let half = [d("0.5")];
        assert_eq!(
            record(&mut conn, &crossing("5", may), &half).await.unwrap(),
            1
        );
        // Seen again (another batch, another replica, a reprice): nothing new.
        assert_eq!(
            record(&mut conn, &crossing("6", may), &half).await.unwrap(),
            0
        );
        // The next threshold in the same period is its own event.
        let both = [d("0.5"), d("0.8")];
        assert_eq!(
            record(&mut conn, &crossing("8", may), &both).await.unwrap(),
            1
        );
        // A new period starts over.
        let june = at("2026-06-01T00:00:00Z");
        assert_eq!(
            record(&mut conn, &crossing("5", june), &half)
                .await
                .unwrap(),
            1
        );
        // Another scope is another key.
        let other = Crossing {
            id: "globex",
            ..crossing("5", may)
        };
        assert_eq!(record(&mut conn, &other, &half).await.unwrap(), 1);
        let acme: Vec<_> = events(&pool)
            .await
            .into_iter()
            .filter(|e| e.0 == "acme")
            .map(|e| {
                (
                    e.1,
                    e.2.normalize().to_string(),
                    e.3.normalize().to_string(),
                )
            })
            .collect();
        assert_eq!(
            acme,
            [
                (may, "0.5".to_owned(), "5".to_owned()),
                (may, "0.8".to_owned(), "8".to_owned()),
                (june, "0.5".to_owned(), "5".to_owned()),
            ]
        );
    }

    #[sqlx::test(migrations = "./migrations")]
    async fn a_drift_is_recorded_once_per_subject_and_delivered_like_the_others(pool: PgPool) {
        let data = serde_json::json!({"day": "2026-12-06", "model": "gpt-5.5", "status": "drift"});
        let subject = "reconciliation/2026-12-06/model=gpt-5.5";
        assert!(
            record_drift(&pool, subject, &data, "https://hooks.example/a")
                .await
                .unwrap()
        );
        assert!(
            !record_drift(&pool, subject, &data, "https://hooks.example/a")
                .await
                .unwrap()
        );
        let other = "reconciliation/2026-12-07/model=gpt-5.5";
        assert!(record_drift(&pool, other, &data, "https://hooks.example/a")
            .await
            .unwrap());
        retarget_drift(&pool, "https://hooks.example/b")
            .await
            .unwrap();
        let due = claim(&pool, Duration::from_secs(60), 10).await.unwrap();
        assert_eq!(due.len(), 2);
        assert!(due.iter().all(|d| d.url == "https://hooks.example/b"
            && d.event.event_type == "tollgate.reconciliation.drift"
            && d.event.tenant_id.is_none()));
    }

    #[sqlx::test(migrations = "./migrations")]
    async fn a_claimed_event_is_not_claimed_again_until_its_hold_passes(pool: PgPool) {
        let mut conn = pool.acquire().await.unwrap();
        let crossing = Crossing {
            scope: Scope::Tenant,
            id: "acme",
            period: Period::Total,
            period_start: DateTime::<Utc>::UNIX_EPOCH,
            amount: d("1"),
            spent: d("1"),
            webhook_url: "https://hooks.example/t",
        };
        record(&mut conn, &crossing, &[d("1")]).await.unwrap();
        let first = claim(&pool, Duration::from_secs(60), 10).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].event.attempts, 1);
        assert_eq!(first[0].url, "https://hooks.example/t");
        assert!(claim(&pool, Duration::from_secs(60), 10)
            .await
            .unwrap()
            .is_empty());
        let id = &first[0].event.id;
        failed(&pool, id, "HTTP 500", Duration::ZERO).await.unwrap();
        let again = claim(&pool, Duration::from_secs(60), 10).await.unwrap();
        assert_eq!(
            (again[0].event.id.as_str(), again[0].event.attempts),
            (id.as_str(), 2)
        );
        delivered(&pool, id).await.unwrap();
        failed(&pool, id, "late", Duration::ZERO).await.unwrap();
        let rows = list(
            &pool,
            &Filter {
                limit: 10,
                ..Filter::default()
            },
        )
        .await
        .unwrap();
        assert!(rows[0].delivered_at.is_some());
        assert_eq!(rows[0].last_error.as_deref(), Some("HTTP 500"));
        assert!(claim(&pool, Duration::ZERO, 10).await.unwrap().is_empty());
    }
}
