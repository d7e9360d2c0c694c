//! The open connections, and which to shed at the cap.
//!
//! Every connection is registered while it lives (one lock to enter, one to
//! leave; its per-request updates are atomics on its own
//! [`Activity`]). At the cap the accept loop asks [`Registry::shed_one`]
//! for room: the oldest connection that has not finished a request head goes
//! first, then the oldest idle keep-alive, then the oldest idle WebSocket;
//! a connection with a request under way never. Finding them takes one scan
//! of the registry, which yields a batch of the oldest candidates, used
//! (each checked again) until it runs out or grows stale: the scan is
//! bounded and shared by many admissions, never done per request.
//!
//! Never does: close a socket (it asks the connection's task, through
//! [`Activity::close`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use slab::Slab;

use crate::connection::{self, Activity, State};

/// A candidate list older than this is rebuilt before use: connections that
/// began to idle since would otherwise be missed.
const CANDIDATES_FRESH_FOR: Duration = Duration::from_millis(100);

/// A head younger than this is shed only after every idle connection.
pub const HEAD_GRACE: Duration = Duration::from_millis(250);

/// The order of shedding: lowest first, then oldest first.
fn rank(state: State, since: Duration, now: Duration) -> u8 {
    match state {
        State::HeadPending if now.saturating_sub(since) >= HEAD_GRACE => 0,
        State::Idle => 1,
        State::WebSocketIdle => 2,
        State::HeadPending => 3,
        State::Active => 4,
    }
}

pub struct Registry {
    cap: usize,
    open: AtomicUsize,
    slots: Mutex<Slab<Arc<Activity>>>,
    candidates: Mutex<Candidates>,
}

#[derive(Default)]
struct Candidates {
    /// Oldest last (popped first).
    list: Vec<Candidate>,
    built: Duration,
    /// The scan listed every candidate there was (fewer than a batch): while
    /// the list is fresh, another scan would find no more.
    complete: bool,
}

struct Candidate {
    rank: u8,
    state: State,
    since: Duration,
    activity: Weak<Activity>,
}

/// A connection's place in the registry; leaves it when dropped.
pub struct Registered {
    registry: Arc<Registry>,
    key: usize,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut slots = self
            .registry
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        slots.try_remove(self.key);
        self.registry.open.store(slots.len(), Ordering::Release);
    }
}

impl Registry {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            open: AtomicUsize::new(0),
            slots: Mutex::new(Slab::with_capacity(cap.min(65_536))),
            candidates: Mutex::new(Candidates::default()),
        })
    }

    pub fn register(self: &Arc<Self>, activity: Arc<Activity>) -> Registered {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let key = slots.insert(activity);
        self.open.store(slots.len(), Ordering::Release);
        Registered {
            registry: self.clone(),
            key,
        }
    }

    /// Open connections are at 90 % of the cap or more: heads get less time.
    pub fn pressed(&self) -> bool {
        self.open.load(Ordering::Acquire) * 10 >= self.cap * 9
    }

    /// Asks the best candidate to close; what it was doing, or `None` when
    /// every connection has a request under way (or is closing already).
    pub fn shed_one(&self) -> Option<State> {
        let mut candidates = self.candidates.lock().unwrap_or_else(|e| e.into_inner());
        let stale = connection::now().saturating_sub(candidates.built) > CANDIDATES_FRESH_FOR;
        if stale {
            candidates.list.clear();
        }
        // At most one scan per call; none while a fresh scan found them all
        // (a cap full of requests under way is not rescanned per accept).
        let mut may_scan = stale || !candidates.complete;
        loop {
            let Some(candidate) = candidates.list.pop() else {
                if !may_scan {
                    return None;
                }
                *candidates = self.scan();
                may_scan = false;
                continue;
            };
            let Some(activity) = candidate.activity.upgrade() else {
                continue;
            };
            // Still doing what it was when listed: nothing arrived since.
            if activity.state() == (candidate.state, candidate.since) && !activity.is_closing() {
                activity.close();
                return Some(candidate.state);
            }
        }
    }

    /// The oldest sheddable connections, a batch of them, best last.
    fn scan(&self) -> Candidates {
        let batch = (self.cap / 32).clamp(8, 1_024);
        let now = connection::now();
        let mut list: Vec<Candidate> = {
            let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots
                .iter()
                .filter(|(_, activity)| !activity.is_closing())
                .filter_map(|(_, activity)| {
                    let (state, since) = activity.state();
                    (state != State::Active).then(|| Candidate {
                        rank: rank(state, since, now),
                        state,
                        since,
                        activity: Arc::downgrade(activity),
                    })
                })
                .collect()
        };
        let order = |c: &Candidate| (c.rank, c.since);
        let complete = list.len() <= batch;
        if !complete {
            list.select_nth_unstable_by_key(batch, order);
            list.truncate(batch);
        }
        list.sort_unstable_by_key(|c| std::cmp::Reverse(order(c)));
        Candidates {
            list,
            built: now,
            complete,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sheds_half_open_then_idle_then_websockets_then_young_heads_never_active() {
        let registry = Registry::new(100);
        let half_open: Vec<Arc<Activity>> = (0..3).map(|_| Arc::new(Activity::default())).collect();
        std::thread::sleep(HEAD_GRACE + Duration::from_millis(50));
        let young = Arc::new(Activity::default());
        let active = Arc::new(Activity::default());
        let _request = active.begin_request();
        let idle = Arc::new(Activity::default());
        drop(idle.begin_request());
        let websocket = Arc::new(Activity::default());
        websocket.upgraded();
        let mut held = Vec::new();
        for a in [&young, &active, &idle, &websocket]
            .into_iter()
            .chain(&half_open)
        {
            held.push(registry.register(a.clone()));
        }
        assert_eq!(registry.shed_one(), Some(State::HeadPending));
        assert_eq!(half_open.iter().filter(|a| a.is_closing()).count(), 1);
        assert_eq!(registry.shed_one(), Some(State::HeadPending));
        assert_eq!(registry.shed_one(), Some(State::HeadPending));
        assert_eq!(registry.shed_one(), Some(State::Idle));
        assert!(idle.is_closing());
        assert_eq!(registry.shed_one(), Some(State::WebSocketIdle));
        assert_eq!(registry.shed_one(), Some(State::HeadPending));
        assert!(young.is_closing());
        assert_eq!(registry.shed_one(), None);
        assert!(!active.is_closing());
        assert!(!registry.pressed());
        drop(held);
        assert_eq!(registry.open.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_candidate_that_became_active_is_skipped() {
        let registry = Registry::new(10);
        let first = Arc::new(Activity::default());
        let second = Arc::new(Activity::default());
        let _a = registry.register(first.clone());
        let _b = registry.register(second.clone());
        // Listed by the first scan, then both start requests.
        let third = Arc::new(Activity::default());
        let _c = registry.register(third.clone());
        assert_eq!(registry.shed_one(), Some(State::HeadPending));
        let _r1 = first.begin_request();
        let _r2 = second.begin_request();
        let _r3 = third.begin_request();
        assert_eq!(registry.shed_one(), None);
    }
}
