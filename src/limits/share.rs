//! How much of a scope's remaining budget, concurrency and rate allowance
//! one replica's slice may grow by, decided under the scope's row lock from
//! what the database knows. Pure functions; [`super::store::sync`] loads the
//! figures and saves the outcome.
//!
//! The rule is the demarcation protocol's: a grant never exceeds what is
//! free (so the slices together never exceed what remains), and at most
//! half of it unless the replica's waiting requests need more — so near
//! exhaustion grants shrink geometrically to exact per-request grants, and
//! the other replicas always find the other half.

use rust_decimal::Decimal;

use super::rate;

/// What a replica may add to its slice of one resource: at most `want`,
/// at most what is `free`, and at most half of `free` unless `need` (what
/// its waiting requests take at once) is more.
pub fn grant(want: Decimal, need: Decimal, free: Decimal) -> Decimal {
    if want <= Decimal::ZERO || free <= Decimal::ZERO {
        return Decimal::ZERO;
    }
    let half = free / Decimal::TWO;
    want.min(need.max(half)).min(free)
}

/// [`grant`] for whole units (concurrency slots).
pub fn grant_count(want: i64, need: i64, free: i64) -> i64 {
    if want <= 0 || free <= 0 {
        return 0;
    }
    want.min(need.max(free / 2).max(1)).min(free)
}

/// What a rate bucket at `level` (after refill and what the replica gave
/// back) grants toward `want`, of which the waiting requests `need` at
/// once: never more than the bucket holds, except that a single request
/// larger than the whole allowance (`largest`) is granted from a full
/// bucket, which then goes below zero and refills from there (as one
/// replica alone would do).
pub fn grant_rate(
    limit: i64,
    level: Decimal,
    want: Decimal,
    need: Decimal,
    largest: Decimal,
) -> Decimal {
    let limit = Decimal::from(limit);
    if largest > limit && level >= limit {
        return largest.max(grant(want.max(need), need, level));
    }
    grant(want.max(need), need, level)
}

/// Seconds until a bucket at `level` holds `need` (at most a whole minute's
/// allowance is ever needed).
pub fn rate_wait(limit: i64, level: Decimal, need: Decimal) -> u64 {
    let need = need.ceil().mantissa();
    let need = i64::try_from(need).unwrap_or(i64::MAX);
    rate::wait_seconds(limit, level, need).max(1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn d(n: i64) -> Decimal {
        Decimal::from(n)
    }

    #[test]
    fn grants_at_most_half_of_what_is_free_unless_needed() {
        assert_eq!(grant(d(100), d(0), d(10)), d(5));
        assert_eq!(grant(d(3), d(0), d(10)), d(3));
        assert_eq!(grant(d(8), d(8), d(10)), d(8));
        assert_eq!(grant(d(12), d(12), d(10)), d(10));
        assert_eq!(grant(d(5), d(1), d(-3)), d(0));
        assert_eq!(grant_count(10, 0, 7), 3);
        assert_eq!(grant_count(10, 5, 7), 5);
        assert_eq!(grant_count(2, 0, 1), 1);
    }

    #[test]
    fn rate_grants_respect_the_bucket() {
        // Less than one request's worth: not enough for it (partial).
        assert_eq!(
            grant_rate(60, Decimal::new(5, 1), d(10), d(1), d(1)),
            Decimal::new(5, 1)
        );
        assert_eq!(grant_rate(60, d(30), d(100), d(1), d(1)), d(15));
        // 30 waiting on a bucket of 5: 5.
        assert_eq!(grant_rate(5, d(5), d(30), d(30), d(1)), d(5));
        // A request larger than the allowance, from a full bucket only.
        assert_eq!(grant_rate(100, d(100), d(5000), d(5000), d(5000)), d(5000));
        assert_eq!(grant_rate(100, d(99), d(5000), d(5000), d(5000)), d(99));
        assert_eq!(rate_wait(60, d(0), d(1)), 1);
        assert_eq!(rate_wait(6, d(0), d(1)), 10);
    }

    proptest! {
        /// Replicas granted one after another never hold more than was free.
        #[test]
        fn successive_grants_never_exceed_what_was_free(
            free in 0i64..1_000_000,
            asks in proptest::collection::vec((0i64..500_000, 0i64..50_000), 1..20),
        ) {
            let mut left = d(free);
            let mut total = Decimal::ZERO;
            for (want, need) in asks {
                let g = grant(d(want), d(need), left);
                prop_assert!(g >= Decimal::ZERO && g <= d(want).max(Decimal::ZERO));
                total += g;
                left -= g;
            }
            prop_assert!(total <= d(free));
        }

        #[test]
        fn slot_grants_never_exceed_what_was_free(
            free in 0i64..1000,
            asks in proptest::collection::vec((0i64..500, 0i64..50), 1..20),
        ) {
            let mut left = free;
            for (want, need) in asks {
                let g = grant_count(want, need, left);
                prop_assert!(g >= 0 && g <= want.max(0));
                left -= g;
                prop_assert!(left >= 0);
            }
        }
    }
}
