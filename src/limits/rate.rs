//! Token buckets for `requests_per_minute` and `tokens_per_minute`, refilled
//! continuously: a bucket holds at most one minute's allowance and gains
//! `limit / 60` per second. The clock is the database's (`clock_timestamp()`
//! read after the scope rows are locked), so every replica computes the same
//! level. Pure functions; [`super::store`] loads and saves the levels.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub limit: i64,
    /// The level at `at`, before refill.
    pub level: Decimal,
}

impl Bucket {
    /// The level at `now`; a bucket never used (`at` = -infinity, or a
    /// level from before the limit was set) is full.
    pub fn level_at(&self, at: DateTime<Utc>, now: DateTime<Utc>) -> Decimal {
        let limit = Decimal::from(self.limit);
        let millis = (now - at).num_milliseconds().max(0);
        let refill = limit * Decimal::from(millis) / Decimal::from(60_000);
        self.level.saturating_add(refill).min(limit)
    }
}

/// Whether `cost` units can be taken from a bucket at `level`. A cost above
/// the whole allowance is taken from a full bucket (the level goes negative
/// and refills), so a large request is slowed, never refused forever.
pub fn admits(limit: i64, level: Decimal, cost: i64) -> bool {
    level >= Decimal::from(cost.min(limit))
}

/// Whole seconds until `cost` units will be available.
pub fn wait_seconds(limit: i64, level: Decimal, cost: i64) -> u64 {
    if limit <= 0 {
        return 60;
    }
    let missing = Decimal::from(cost.min(limit)) - level;
    if missing <= Decimal::ZERO {
        return 0;
    }
    let secs = (missing * Decimal::from(60) / Decimal::from(limit)).ceil();
    u64::try_from(secs.mantissa()).unwrap_or(60).max(1)
}

/// Seconds until the bucket is full again.
pub fn reset_seconds(limit: i64, level: Decimal) -> u64 {
    wait_seconds(limit, level, limit)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn refills_continuously_up_to_the_limit() {
        let t0 = DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let b = Bucket {
            limit: 60,
            level: Decimal::ZERO,
        };
        assert_eq!(
            b.level_at(t0, t0 + chrono::Duration::seconds(10)),
            Decimal::from(10)
        );
        assert_eq!(
            b.level_at(t0, t0 + chrono::Duration::seconds(600)),
            Decimal::from(60)
        );
        assert_eq!(
            b.level_at(t0 + chrono::Duration::seconds(5), t0),
            Decimal::ZERO
        );
        let never = DateTime::<Utc>::MIN_UTC;
        assert_eq!(b.level_at(never, t0), Decimal::from(60));
    }

    #[test]
    fn admission_and_waits() {
        assert!(admits(10, Decimal::ONE, 1));
        assert!(!admits(10, Decimal::new(9, 1), 1));
        assert!(admits(100, Decimal::from(100), 5000));
        assert_eq!(wait_seconds(60, Decimal::ZERO, 1), 1);
        assert_eq!(wait_seconds(6, Decimal::ZERO, 1), 10);
        assert_eq!(reset_seconds(60, Decimal::from(60)), 0);
    }
}
