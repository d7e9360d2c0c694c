//! Bounded in-memory store of created responses, for retrieve / replay /
//! delete / cancel / input_items and `previous_response_id` checks.
//!
//! It is written on every stored create, so it is sharded: each shard has its
//! own mutex held only for a map insert, which keeps concurrent benchmark
//! requests from serialising on one lock. Entries are immutable `Arc<Plan>`s,
//! so readers clone a pointer and render outside the lock.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use super::render::Plan;

/// Total number of responses kept; the oldest are evicted beyond it.
pub(crate) const CAPACITY: usize = 10_000;
const SHARDS: usize = 16;
const PER_SHARD: usize = CAPACITY / SHARDS;

#[derive(Default)]
struct Shard {
    map: HashMap<u128, Arc<Plan>>,
    /// Insertion order for eviction; may hold ids deleted since (skipped).
    order: VecDeque<u128>,
}

pub(crate) struct Store {
    shards: Vec<Mutex<Shard>>,
}

/// Parses `resp_<32 hex>` into the store key.
pub(crate) fn key_of(id: &str) -> Option<u128> {
    let hex = id.strip_prefix("resp_")?;
    if hex.len() != 32 {
        return None;
    }
    u128::from_str_radix(hex, 16).ok()
}

impl Store {
    pub(crate) fn new() -> Self {
        Store {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    fn shard(&self, key: u128) -> MutexGuard<'_, Shard> {
        // The low bits of a v7 uuid are random, so they spread evenly. A
        // poisoned shard still holds consistent data (no invariant spans a
        // panic point), so keep using it.
        let idx = (key as usize) % SHARDS;
        self.shards[idx].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn insert(&self, plan: Arc<Plan>) {
        let key = plan.key;
        let mut shard = self.shard(key);
        shard.map.insert(key, plan);
        shard.order.push_back(key);
        while shard.map.len() > PER_SHARD {
            match shard.order.pop_front() {
                Some(old) => {
                    shard.map.remove(&old);
                }
                None => break,
            }
        }
        // Deletes leave stale ids in `order`; compact it before it grows
        // without bound under insert/delete churn.
        if shard.order.len() > 2 * PER_SHARD + 16 {
            let Shard { map, order } = &mut *shard;
            order.retain(|k| map.contains_key(k));
        }
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<Plan>> {
        let key = key_of(id)?;
        self.shard(key).map.get(&key).cloned()
    }

    pub(crate) fn remove(&self, id: &str) -> bool {
        match key_of(id) {
            Some(key) => self.shard(key).map.remove(&key).is_some(),
            None => false,
        }
    }

    /// Replaces an entry in place (used by cancel); false if it is gone.
    pub(crate) fn replace(&self, plan: Arc<Plan>) -> bool {
        let mut shard = self.shard(plan.key);
        match shard.map.get_mut(&plan.key) {
            Some(slot) => {
                *slot = plan;
                true
            }
            None => false,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::super::render::{Status, Usage};
    use super::*;

    fn plan(key: u128) -> Arc<Plan> {
        Arc::new(Plan {
            key,
            id: format!("resp_{key:032x}"),
            hex: format!("{key:032x}"),
            created_at: 0,
            model_field: Vec::new(),
            head: Vec::new(),
            requested_tier: Vec::new(),
            final_tier: Vec::new(),
            reasoning: None,
            deltas: 0,
            delta_bytes: 1,
            status: Status::Completed,
            usage: Some(Usage {
                input: 1,
                cached: 0,
                output: 1,
                reasoning: 0,
            }),
            background: false,
            input: serde_json::Value::Null,
        })
    }

    #[test]
    fn evicts_oldest_beyond_capacity() {
        let store = Store::new();
        for k in 0..(CAPACITY as u128 + 500) {
            store.insert(plan(k));
        }
        assert_eq!(store.len(), CAPACITY);
        assert!(store.get(&format!("resp_{:032x}", 0)).is_none());
        assert!(store
            .get(&format!("resp_{:032x}", CAPACITY as u128 + 499))
            .is_some());
    }

    #[test]
    fn delete_churn_keeps_order_bounded() {
        let store = Store::new();
        for k in 0..50_000u128 {
            store.insert(plan(k));
            assert!(store.remove(&format!("resp_{k:032x}")));
        }
        assert_eq!(store.len(), 0);
        let max = store
            .shards
            .iter()
            .map(|s| s.lock().unwrap().order.len())
            .max()
            .unwrap();
        assert!(max <= 2 * PER_SHARD + 16);
    }

    #[test]
    fn key_parsing() {
        assert_eq!(key_of("resp_0000000000000000000000000000000a"), Some(10));
        assert_eq!(key_of("resp_xyz"), None);
        assert_eq!(key_of("msg_0000000000000000000000000000000a"), None);
    }
}
