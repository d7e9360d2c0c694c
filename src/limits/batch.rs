//! Group commit for admission: the requests of limited scopes that arrive
//! while an admission transaction runs are decided together by the next
//! one. Each lane (tenants hash onto [`LANES`] of them) runs one
//! transaction at a time; a request queues on its lane, and whoever holds
//! the lane's turn takes everything queued (up to [`MAX_BATCH`]) into one
//! transaction. Under load a busy tenant costs one transaction per batch
//! instead of one per request, and a burst on one tenant holds at most one
//! pooled connection per lane (it cannot drain the pool into 503s).
//!
//! Decisions are the same as one-at-a-time admission in arrival order
//! (`store::admit`); across replicas the scope row locks still serialise
//! the transactions. It owns the queues; it never decides anything itself.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use sqlx::PgPool;
use tokio::sync::oneshot;

use super::store::{self, Ask, Decision};
use crate::error::ApiError;

/// How many lanes tenants hash onto.
const LANES: usize = 64;
/// Most requests one admission transaction decides.
pub const MAX_BATCH: usize = 256;

struct Waiting {
    ask: Ask,
    reply: oneshot::Sender<Result<Decision, ApiError>>,
}

#[derive(Default)]
struct Lane {
    queue: Mutex<VecDeque<Waiting>>,
    turn: tokio::sync::Mutex<()>,
}

impl Lane {
    fn push(&self, waiting: Waiting) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(waiting);
    }

    fn next_batch(&self) -> Vec<Waiting> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let n = queue.len().min(MAX_BATCH);
        queue.drain(..n).collect()
    }
}

/// The lanes of one gateway.
pub struct Batcher {
    lanes: Vec<Lane>,
}

impl Default for Batcher {
    fn default() -> Self {
        Self {
            lanes: (0..LANES).map(|_| Lane::default()).collect(),
        }
    }
}

impl Batcher {
    fn lane(&self, tenant: &str) -> &Lane {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        tenant.hash(&mut hasher);
        let index = usize::try_from(hasher.finish() % LANES as u64).unwrap_or(0);
        &self.lanes[index]
    }

    /// Decides `ask` in the next transaction of its lane.
    pub async fn admit(&self, pool: &PgPool, ask: Ask) -> Result<Decision, ApiError> {
        let lane = self.lane(&ask.tenant);
        let (reply, mut decided) = oneshot::channel();
        lane.push(Waiting { ask, reply });
        loop {
            tokio::select! {
                biased;
                // Decided by another's transaction: no need for the turn.
                result = &mut decided => return result.unwrap_or_else(|_| Err(dropped())),
                turn = lane.turn.lock() => {
                    let batch = lane.next_batch();
                    if batch.is_empty() {
                        // Ours is in a batch still running (its leader went
                        // away; the transaction runs on in its own task).
                        drop(turn);
                        return decided.await.unwrap_or_else(|_| Err(dropped()));
                    }
                    // Its own task: a leader whose client leaves must not
                    // cancel the others' admission halfway.
                    let _ = tokio::spawn(decide(pool.clone(), batch)).await;
                }
            }
        }
    }
}

fn dropped() -> ApiError {
    ApiError::internal("the admission transaction ended without a decision")
}

async fn decide(pool: PgPool, batch: Vec<Waiting>) {
    let (asks, replies): (Vec<Ask>, Vec<_>) = batch.into_iter().map(|w| (w.ask, w.reply)).unzip();
    match store::admit(&pool, &asks).await {
        Ok(decisions) => {
            let mut gone = Vec::new();
            for ((reply, decision), ask) in replies.into_iter().zip(decisions).zip(&asks) {
                let admitted = decision.is_ok();
                if reply.send(Ok(decision)).is_err() && admitted {
                    gone.push(ask);
                }
            }
            release_abandoned(&pool, &gone).await;
        }
        Err(err) => {
            let err = ApiError::from(err);
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}

/// Requests whose clients left while they waited for admission were never
/// forwarded: their reservations are released at once, as for a row of no
/// cost, instead of holding until they expire.
async fn release_abandoned(pool: &PgPool, gone: &[&Ask]) {
    if gone.is_empty() {
        return;
    }
    let settled: Vec<store::Settled<'_>> = gone
        .iter()
        .map(|ask| store::Settled {
            request_id: &ask.request_id,
            cost: None,
            total_tokens: 0,
        })
        .collect();
    if let Err(err) = store::settle(pool, &settled).await {
        tracing::warn!(error = %err, requests = gone.len(), "releasing abandoned admissions failed; they expire");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::limits::store::{Scope, Settings};
    use crate::limits::Estimate;

    fn ask(id: &str) -> Ask {
        Ask {
            request_id: id.to_owned(),
            tenant: "acme".to_owned(),
            key_id: "key_a".to_owned(),
            estimate: Estimate {
                cost: rust_decimal::Decimal::new(1, 2),
                tokens: 10,
            },
            ttl: std::time::Duration::from_secs(900),
        }
    }

    /// A request whose client leaves while it waits on the lane is decided
    /// with the others, and its reservation is released at once.
    #[sqlx::test(migrations = "./migrations")]
    async fn an_abandoned_admission_releases_its_reservation(pool: PgPool) {
        let settings = Settings {
            concurrent_requests: Some(10),
            ..Settings::default()
        };
        store::put(&pool, Scope::Tenant, "acme", &settings)
            .await
            .unwrap();
        let batcher = std::sync::Arc::new(Batcher::default());
        let lane = batcher.lane("acme");
        let held = lane.turn.lock().await;
        let abandoned = {
            let (batcher, pool) = (batcher.clone(), pool.clone());
            tokio::spawn(async move { batcher.admit(&pool, ask("req_gone")).await })
        };
        while lane.queue.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        abandoned.abort();
        let _ = abandoned.await;
        drop(held);

        let kept = batcher.admit(&pool, ask("req_kept")).await.unwrap();
        assert!(kept.is_ok());
        let open: Vec<String> =
            sqlx::query_scalar("SELECT request_id FROM limit_reservations ORDER BY request_id")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(open, ["req_kept"]);
        let counted: i64 = sqlx::query_scalar("SELECT open_requests FROM limits")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(counted, 1);
    }
}
