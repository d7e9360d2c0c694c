//! One replica's slice of one limited scope, in memory: what the database
//! granted it (budget, concurrency slots, rate tokens), what its open
//! requests hold of that, and its recent demand. Admission takes from the
//! slice without any I/O; [`super::keeper`] refills it from the database
//! ahead of need, hands back what is not used and renews it.
//!
//! Accounting, in the slice's own terms:
//! - `budget` is what this replica may have committed beyond the ledger's
//!   spend (the database's row says the same, see `share`); `committed`
//!   the estimates of its open requests. A request is admitted (hard) when
//!   `committed + estimate ≤ budget`. When its row is stored, its estimate
//!   leaves `committed` and its actual cost leaves `budget`: the cost is in
//!   the ledger's spend from then on.
//! - `slots` concurrency slots, `open` of them in use.
//! - `requests` and `tokens`: bucket tokens taken from the database and not
//!   yet used. `tokens_per_minute` gets back what an estimate held beyond
//!   the actual when the row is stored.
//!
//! It never talks to the database and never decides how big a slice should
//! be in the database's terms (that is `share`); it plans what to ask for.

use std::time::{Duration, Instant};

use rust_decimal::Decimal;

use super::budget::Mode;
use super::store::{Ask, BucketView, Granted, Scope, Settings};

/// What one request takes from each of its scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub cost: Decimal,
    pub tokens: i64,
}

/// What the requests waiting on a slice need together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Waiting {
    pub cost: Decimal,
    pub requests: i64,
    pub tokens: i64,
    pub largest_tokens: i64,
}

impl Waiting {
    pub fn add(&mut self, need: Need) {
        self.cost += need.cost;
        self.requests += 1;
        self.tokens = self.tokens.saturating_add(need.tokens);
        self.largest_tokens = self.largest_tokens.max(need.tokens);
    }
}

/// Why a slice cannot admit a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Short {
    /// No valid lease (never granted, or expired without renewal).
    Lease,
    Budget,
    Slots,
    Requests,
    Tokens,
}

/// Recent demand per second, smoothed over syncs.
#[derive(Debug, Clone, Copy, Default)]
struct Demand {
    cost: Decimal,
    requests: Decimal,
    tokens: Decimal,
    peak_open: i64,
}

/// What was taken since the last sync.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    cost: Decimal,
    requests: i64,
    tokens: i64,
    peak_open: i64,
}

/// The database's bucket level seen at the last sync (for the
/// `x-ratelimit-*` headers: what the fleet has left, plus this slice).
#[derive(Debug, Clone, Copy)]
struct Seen {
    requests: Decimal,
    tokens: Decimal,
}

#[derive(Debug)]
pub struct Slice {
    pub scope: Scope,
    pub id: String,
    settings: Settings,
    budget: Decimal,
    committed: Decimal,
    slots: i64,
    open: i64,
    requests: Decimal,
    tokens: Decimal,
    window: Window,
    demand: Demand,
    seen: Seen,
    /// Until when this replica may admit from the slice: the lease's expiry
    /// as the database set it, measured from when the sync was sent, less a
    /// margin (a late renewal must never let two replicas use one slice).
    valid_until: Option<Instant>,
    last_sync: Option<Instant>,
    /// When the current demand window began: the previous plan, whether or
    /// not its sync reached the database.
    window_since: Option<Instant>,
    last_active: Instant,
    /// Near exhaustion: keep no spare, ask for exactly what is needed.
    scarce_until: Option<Instant>,
    /// The lease row exists in the database (as far as this replica knows).
    pub leased: bool,
    /// What the last sync reported as committed and open: a change is
    /// reported at the next tick (the status's `reserved` stays fresh).
    reported: (Decimal, i64),
}

/// How long a replica keeps no spare after a recall.
const SCARCE_FOR: Duration = Duration::from_secs(5);
/// A lease is used until this fraction of its lifetime (from the sync's
/// sending) has passed; the rest is a margin against a late renewal.
const LEASE_USE_FRACTION: f64 = 0.9;
/// A slice without lease or use is forgotten after this long.
const FORGET_AFTER: Duration = Duration::from_secs(300);
/// An idle slice with nothing open is handed back after this long.
pub const IDLE_RELEASE: Duration = Duration::from_secs(10);

impl Slice {
    pub fn new(scope: Scope, id: String, settings: Settings, now: Instant) -> Self {
        Self {
            scope,
            id,
            settings,
            budget: Decimal::ZERO,
            committed: Decimal::ZERO,
            slots: 0,
            open: 0,
            requests: Decimal::ZERO,
            tokens: Decimal::ZERO,
            window: Window::default(),
            demand: Demand::default(),
            seen: Seen {
                requests: Decimal::ZERO,
                tokens: Decimal::ZERO,
            },
            valid_until: None,
            last_sync: None,
            window_since: None,
            last_active: now,
            scarce_until: None,
            leased: false,
            reported: (Decimal::ZERO, 0),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn hard(&self) -> Option<bool> {
        self.settings.budget.as_ref().map(|b| b.mode == Mode::Hard)
    }

    /// Whether `need` fits now.
    pub fn check(&self, need: Need, now: Instant) -> Result<(), Short> {
        if self.valid_until.is_none_or(|until| now >= until) {
            return Err(Short::Lease);
        }
        match self.hard() {
            Some(true) if self.committed + need.cost > self.budget => return Err(Short::Budget),
            Some(false) if self.committed >= self.budget => return Err(Short::Budget),
            _ => {}
        }
        if self.settings.concurrent_requests.is_some() && self.open >= self.slots {
            return Err(Short::Slots);
        }
        if self.settings.requests_per_minute.is_some() && self.requests < Decimal::ONE {
            return Err(Short::Requests);
        }
        if self.settings.tokens_per_minute.is_some() && self.tokens < Decimal::from(need.tokens) {
            return Err(Short::Tokens);
        }
        Ok(())
    }

    /// Takes `need` (after [`Slice::check`] said it fits).
    pub fn take(&mut self, need: Need, now: Instant) {
        self.committed += need.cost;
        self.open += 1;
        if self.settings.requests_per_minute.is_some() {
            self.requests -= Decimal::ONE;
        }
        if self.settings.tokens_per_minute.is_some() {
            self.tokens -= Decimal::from(need.tokens);
        }
        self.window.cost += need.cost;
        self.window.requests += 1;
        self.window.tokens = self.window.tokens.saturating_add(need.tokens);
        self.window.peak_open = self.window.peak_open.max(self.open);
        self.last_active = now;
    }

    /// A request taken earlier ended (its row was handed to the ledger):
    /// it no longer holds a concurrency slot.
    pub fn close(&mut self) {
        self.open -= 1;
    }

    /// A request taken earlier has its row stored: its estimate leaves
    /// `committed`, its actual cost (now in the ledger's spend) leaves
    /// `budget`, and `tokens_per_minute` gets the difference back (its slot
    /// was freed by [`Slice::close`] unless `open` says it still holds it).
    pub fn release(&mut self, need: Need, actual_cost: Decimal, actual_tokens: i64, open: bool) {
        self.committed -= need.cost;
        if open {
            self.open -= 1;
        }
        if self.settings.budget.is_some() {
            // Never below what is still committed: an overrun is recorded
            // elsewhere, the slice just stays conservative.
            self.budget = (self.budget - actual_cost).max(self.committed);
        }
        if self.settings.tokens_per_minute.is_some() {
            self.tokens += Decimal::from(need.tokens) - Decimal::from(actual_tokens);
        }
    }

    /// A taken request that never went out (its client left while it waited
    /// for a sync): everything goes back as if it had not been admitted.
    pub fn untake(&mut self, need: Need, open: bool) {
        self.committed -= need.cost;
        if open {
            self.open -= 1;
        }
        if self.settings.requests_per_minute.is_some() {
            self.requests += Decimal::ONE;
        }
        if self.settings.tokens_per_minute.is_some() {
            self.tokens += Decimal::from(need.tokens);
        }
    }

    fn scarce(&self, now: Instant) -> bool {
        self.scarce_until.is_some_and(|until| now < until)
    }

    /// Keep no spare for a while (another replica found the scope short,
    /// or its limits changed).
    pub fn recall(&mut self, now: Instant) {
        self.scarce_until = Some(now + SCARCE_FOR);
    }

    pub fn replace_settings(&mut self, settings: Settings) {
        self.settings = settings;
    }

    /// Whether the periodic sync has something to do for this slice.
    pub fn due(&self, now: Instant, every: Duration, ttl: Duration) -> bool {
        let Some(last) = self.last_sync else {
            return self.leased;
        };
        let since = now.saturating_duration_since(last);
        let active = self.window.requests > 0 || self.reported != (self.committed, self.open);
        let renew = self.leased && since >= ttl / 4;
        let idle = self.leased && self.idle(now);
        (active && since >= every) || renew || idle || (self.scarce(now) && self.has_spare())
    }

    fn has_spare(&self) -> bool {
        self.budget > self.committed
            || self.slots > self.open
            || self.requests > Decimal::ZERO
            || self.tokens > Decimal::ZERO
    }

    /// A slice with no lease, nothing open and no use for a while: its
    /// cell can be dropped (a later request starts a new one).
    pub fn forgettable(&self, now: Instant) -> bool {
        !self.leased
            && self.open == 0
            && now.saturating_duration_since(self.last_active) >= FORGET_AFTER
    }

    fn idle(&self, now: Instant) -> bool {
        self.open == 0 && now.saturating_duration_since(self.last_active) >= IDLE_RELEASE
    }

    /// Plans one sync: what to hand back now (moved out of the slice at
    /// once, so admissions meanwhile cannot use it), what to ask for, and
    /// what the requests waiting on it `need` in total. `release` gives the
    /// whole spare back (shutdown); an idle slice does so by itself.
    pub fn plan(&mut self, need: Waiting, cover: Duration, now: Instant, release: bool) -> Ask {
        let Waiting {
            cost: need_cost,
            requests: need_requests,
            tokens: need_tokens,
            largest_tokens,
        } = need;
        self.learn_demand(now);
        let release = release || (self.idle(now) && need_requests == 0);
        let keep_spare = !release && !self.scarce(now);
        let secs = Decimal::from(cover.as_secs().max(1));
        let d = self.demand;

        let budget_target = if keep_spare {
            need_cost + d.cost * secs
        } else {
            need_cost
        };
        let avail = self.budget - self.committed;
        let (budget_back, budget_want) =
            plan_resource(avail, budget_target, self.settings.budget.is_some());
        self.budget -= budget_back;

        // Concurrency comes in bursts: keep as many spare slots as were
        // open at the recent peak.
        let slots_target = if keep_spare {
            need_requests + d.peak_open.max(1)
        } else {
            need_requests
        };
        let free = self.slots - self.open;
        let (slots_back, slots_want) = plan_count(
            free,
            slots_target,
            self.settings.concurrent_requests.is_some(),
        );
        self.slots -= slots_back;

        let spare = |rate: Decimal| {
            if keep_spare {
                rate * secs
            } else {
                Decimal::ZERO
            }
        };
        let requests_target = Decimal::from(need_requests) + spare(d.requests);
        let (requests_back, requests_want) = plan_resource(
            self.requests,
            requests_target,
            self.settings.requests_per_minute.is_some(),
        );
        self.requests -= requests_back;
        let tokens_target = Decimal::from(need_tokens) + spare(d.tokens);
        let (tokens_back, tokens_want) = plan_resource(
            self.tokens.max(Decimal::ZERO),
            tokens_target,
            self.settings.tokens_per_minute.is_some(),
        );
        self.tokens -= tokens_back;

        self.reported = (self.committed + need_cost, self.open + need_requests);
        Ask {
            scope: self.scope,
            id: self.id.clone(),
            budget_held: self.budget.max(self.committed).max(Decimal::ZERO),
            // The waiters are admitted right after the sync if it grants
            // enough: report them as open already (the next sync corrects a
            // refusal).
            committed: self.committed + need_cost,
            budget_back,
            budget_want,
            budget_need: need_cost,
            slots_held: self.slots.max(0),
            open: self.open + need_requests,
            slots_back,
            slots_want,
            slots_need: need_requests,
            requests_back,
            requests_want,
            requests_need: Decimal::from(need_requests),
            tokens_back,
            tokens_want,
            tokens_need: Decimal::from(need_tokens),
            tokens_largest: Decimal::from(largest_tokens),
            requests_kept: self.requests,
            tokens_kept: self.tokens,
            release: release && self.open == 0,
        }
    }

    /// Folds the window since the previous plan into the smoothed demand.
    /// The window is measured from that plan, not from the last successful
    /// sync: through a database outage every sync fails, and dividing one
    /// second's requests by the time since the last success made the
    /// demand (and with it the spare a slice keeps) shrink as the outage
    /// went on, until the slice handed its cover back and refused.
    fn learn_demand(&mut self, now: Instant) {
        let elapsed = self
            .window_since
            .map_or(Duration::from_secs(1), |since| {
                now.saturating_duration_since(since)
            })
            .max(Duration::from_millis(100));
        self.window_since = Some(now);
        let secs = Decimal::from_f64_retain(elapsed.as_secs_f64()).unwrap_or(Decimal::ONE);
        let w = self.window;
        let half = Decimal::new(5, 1);
        let blend = |old: Decimal, new: Decimal| (old * half + new * half).round_dp(12);
        self.demand.cost = blend(self.demand.cost, w.cost / secs);
        self.demand.requests = blend(self.demand.requests, Decimal::from(w.requests) / secs);
        self.demand.tokens = blend(self.demand.tokens, Decimal::from(w.tokens) / secs);
        // The peak decays by half per sync without new peaks.
        self.demand.peak_open = (self.demand.peak_open / 2).max(w.peak_open);
        self.window = Window::default();
    }

    /// The sync was committed: the slice grows by what was granted, and the
    /// lease holds `ttl` from `sent`.
    pub fn apply(&mut self, granted: &Granted, sent: Instant, ask: &Ask) {
        self.settings = granted.settings.clone();
        self.budget += (granted.budget - ask.budget_held).max(Decimal::ZERO);
        self.slots += (granted.slots - ask.slots_held).max(0);
        self.requests += granted.requests - ask.requests_kept;
        self.tokens += granted.tokens - ask.tokens_kept;
        self.seen = Seen {
            requests: granted.rpm_level,
            tokens: granted.tpm_level,
        };
        self.leased = !ask.release;
        self.valid_until = if ask.release {
            None
        } else {
            Some(sent + granted.ttl.mul_f64(LEASE_USE_FRACTION))
        };
        self.last_sync = Some(sent);
        if granted.recall {
            self.recall(sent);
        }
    }

    /// The sync certainly did not reach the database: what was moved out
    /// for handing back is still this replica's.
    pub fn restore(&mut self, ask: &Ask) {
        self.budget += ask.budget_back;
        self.slots += ask.slots_back;
        self.requests += ask.requests_back;
        self.tokens += ask.tokens_back;
    }

    /// Seconds a request refused for `short` should wait: until the
    /// fleet's bucket (as last seen) could hold it.
    pub fn retry_after(&self, short: Short, need: Need) -> u64 {
        let wait = |limit: Option<i64>, level: Decimal, units: Decimal| {
            limit.map_or(1, |limit| super::share::rate_wait(limit, level, units))
        };
        match short {
            Short::Requests => wait(
                self.settings.requests_per_minute,
                self.seen.requests,
                Decimal::ONE,
            ),
            Short::Tokens => wait(
                self.settings.tokens_per_minute,
                self.seen.tokens,
                Decimal::from(need.tokens),
            ),
            _ => 1,
        }
    }

    /// The rate headers of this slice for a request it just admitted.
    pub fn views(&self) -> (Option<BucketView>, Option<BucketView>) {
        let view = |limit: Option<i64>, seen: Decimal, held: Decimal| {
            limit.map(|limit| {
                let left = (seen + held.max(Decimal::ZERO)).min(Decimal::from(limit));
                BucketView {
                    limit,
                    remaining: left
                        .floor()
                        .max(Decimal::ZERO)
                        .mantissa()
                        .try_into()
                        .unwrap_or(0),
                    reset_seconds: super::rate::reset_seconds(limit, left),
                }
            })
        };
        (
            view(
                self.settings.requests_per_minute,
                self.seen.requests,
                self.requests,
            ),
            view(
                self.settings.tokens_per_minute,
                self.seen.tokens,
                self.tokens,
            ),
        )
    }
}

/// For a resource with `avail` spare and a `target` spare: what to hand
/// back (more than twice the target is idle weight) and what to ask for
/// (below half the target, or short of what is needed now).
fn plan_resource(avail: Decimal, target: Decimal, limited: bool) -> (Decimal, Decimal) {
    if !limited {
        return (Decimal::ZERO, Decimal::ZERO);
    }
    let avail = avail.max(Decimal::ZERO);
    if avail > target * Decimal::TWO || (target.is_zero() && avail > Decimal::ZERO) {
        return (avail - target, Decimal::ZERO);
    }
    if avail * Decimal::TWO < target || avail < target {
        return (Decimal::ZERO, target - avail);
    }
    (Decimal::ZERO, Decimal::ZERO)
}

fn plan_count(avail: i64, target: i64, limited: bool) -> (i64, i64) {
    let (back, want) = plan_resource(Decimal::from(avail), Decimal::from(target), limited);
    let whole = |d: Decimal| i64::try_from(d.trunc().mantissa()).unwrap_or(0);
    (whole(back), whole(want))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::limits::budget::Period;
    use crate::limits::store::BudgetSetting;

    const DEFAULT_COVER: Duration = Duration::from_secs(30);

    impl Waiting {
        fn of(cost: Decimal, requests: i64, tokens: i64) -> Self {
            Self {
                cost,
                requests,
                tokens,
                largest_tokens: tokens,
            }
        }
    }

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn hard(amount: &str) -> Settings {
        Settings {
            budget: Some(BudgetSetting {
                amount: d(amount),
                period: Period::Total,
                mode: Mode::Hard,
            }),
            concurrent_requests: Some(2),
            requests_per_minute: Some(60),
            tokens_per_minute: Some(1000),
            ..Settings::default()
        }
    }

    fn granted(
        settings: Settings,
        budget: &str,
        slots: i64,
        requests: &str,
        tokens: &str,
    ) -> Granted {
        Granted {
            settings,
            budget: d(budget),
            slots,
            requests: d(requests),
            tokens: d(tokens),
            rpm_level: Decimal::ZERO,
            tpm_level: Decimal::ZERO,
            recall: false,
            others_spare: false,
            ttl: Duration::from_secs(120),
        }
    }

    #[test]
    fn admits_from_the_slice_and_releases_into_the_ledger() {
        let now = Instant::now();
        let mut s = Slice::new(Scope::Tenant, "acme".into(), hard("10"), now);
        let need = Need {
            cost: d("1"),
            tokens: 100,
        };
        assert_eq!(s.check(need, now), Err(Short::Lease));
        let ask = s.plan(Waiting::of(d("1"), 1, 100), DEFAULT_COVER, now, false);
        assert_eq!(ask.budget_want, d("1"));
        assert_eq!(ask.slots_want, 2);
        s.apply(&granted(hard("10"), "1", 2, "1", "100"), now, &ask);
        assert_eq!(s.check(need, now), Ok(()));
        s.take(need, now);
        // The budget slice is used up; a second request waits for a sync.
        assert_eq!(s.check(need, now), Err(Short::Budget));
        // Its row is stored at a cost of 0.25: 0.25 left the slice for the
        // ledger, the rest of the estimate is free again.
        s.release(need, d("0.25"), 40, true);
        assert_eq!(s.budget, d("0.75"));
        assert_eq!(s.committed, Decimal::ZERO);
        assert_eq!(s.tokens, d("60"));
        assert_eq!(s.open, 0);
    }

    #[test]
    fn a_plan_hands_back_idle_weight_at_once() {
        let now = Instant::now();
        let mut s = Slice::new(Scope::Key, "k".into(), hard("100"), now);
        let ask = s.plan(Waiting::default(), DEFAULT_COVER, now, false);
        s.apply(&granted(hard("100"), "50", 2, "30", "500"), now, &ask);
        let ask = s.plan(Waiting::default(), DEFAULT_COVER, now, true);
        assert!(ask.release);
        assert_eq!(ask.budget_held, Decimal::ZERO);
        assert_eq!(ask.requests_back, d("30"));
        assert_eq!(s.requests, Decimal::ZERO);
        // Nothing reached the database: it is all still ours.
        s.restore(&ask);
        assert_eq!(s.requests, d("30"));
        assert_eq!(s.budget, d("50"));
        assert_eq!(s.slots, 2);
    }

    #[test]
    fn soft_budgets_admit_while_something_is_left() {
        let now = Instant::now();
        let mut settings = hard("10");
        if let Some(b) = settings.budget.as_mut() {
            b.mode = Mode::Soft;
        }
        let mut s = Slice::new(Scope::Tenant, "t".into(), settings.clone(), now);
        let ask = s.plan(Waiting::of(d("0"), 1, 1), DEFAULT_COVER, now, false);
        s.apply(&granted(settings, "0.5", 2, "5", "50"), now, &ask);
        let big = Need {
            cost: d("3"),
            tokens: 1,
        };
        assert_eq!(s.check(big, now), Ok(()));
        s.take(big, now);
        assert_eq!(s.check(big, now), Err(Short::Budget));
    }

    #[test]
    fn demand_holds_through_failed_syncs() {
        let start = Instant::now();
        let mut s = Slice::new(Scope::Tenant, "t".into(), hard("1000"), start);
        let ask = s.plan(Waiting::default(), DEFAULT_COVER, start, false);
        s.apply(&granted(hard("1000"), "300", 2, "60", "1000"), start, &ask);
        let need = Need {
            cost: d("1"),
            tokens: 1,
        };
        // Ten requests a second; the database answered only the first
        // sync: every later plan fails (its hand-back restored, as on a
        // refused connection), and the demand must stay ten a second.
        for second in 1..=20u64 {
            let now = start + Duration::from_secs(second);
            for _ in 0..10 {
                s.take(need, now);
                s.release(need, d("0"), 0, true);
            }
            let ask = s.plan(Waiting::default(), DEFAULT_COVER, now, false);
            assert_eq!(ask.budget_back, Decimal::ZERO, "second {second}");
            s.restore(&ask);
        }
        assert!(s.demand.cost > d("9.99"), "{}", s.demand.cost);
    }

    #[test]
    fn an_expired_lease_admits_nothing() {
        let now = Instant::now();
        let mut s = Slice::new(Scope::Tenant, "t".into(), hard("10"), now);
        let ask = s.plan(Waiting::of(d("1"), 1, 1), DEFAULT_COVER, now, false);
        let mut g = granted(hard("10"), "5", 2, "5", "50");
        g.ttl = Duration::from_secs(10);
        s.apply(&g, now, &ask);
        let need = Need {
            cost: d("1"),
            tokens: 1,
        };
        assert_eq!(s.check(need, now + Duration::from_secs(8)), Ok(()));
        assert_eq!(
            s.check(need, now + Duration::from_secs(9)),
            Err(Short::Lease)
        );
    }
}
