//! The background-job shape (src/jobs): one claim per job across replicas,
//! status recorded per step, pause honoured, a claim released when its step
//! is cancelled. Real PostgreSQL; two "replicas" are two pools on one
//! database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use tollgate::jobs::{self, Job, JobContext, JobError, Progress, Round};

/// A job whose step waits until released, counting how often it ran.
struct Gate {
    name: &'static str,
    ran: Arc<AtomicUsize>,
    entered: Arc<Notify>,
    release: Arc<Notify>,
    fail: bool,
}

impl Job for Gate {
    fn name(&self) -> String {
        self.name.to_owned()
    }
    fn every(&self) -> Duration {
        Duration::from_millis(50)
    }
    async fn step(&mut self, _ctx: &JobContext) -> Result<Progress, JobError> {
        self.ran.fetch_add(1, Ordering::SeqCst);
        self.entered.notify_one();
        self.release.notified().await;
        if self.fail {
            return Err(JobError::failed("peer answered HTTP 503"));
        }
        Ok(Progress {
            cursor: Some("42".into()),
            lag_rows: Some(7),
            ..Progress::idle()
        })
    }
}

fn gate(name: &'static str) -> Gate {
    Gate {
        name,
        ran: Arc::default(),
        entered: Arc::default(),
        release: Arc::default(),
        fail: false,
    }
}

async fn second_pool(pool: &PgPool) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap()
}

fn ctx(pool: &PgPool) -> JobContext {
    JobContext {
        pool: pool.clone(),
        stop: CancellationToken::new(),
    }
}

#[sqlx::test]
async fn one_replica_at_a_time_holds_a_job(pool: PgPool) {
    let other = second_pool(&pool).await;
    let mut first = gate("test.claim");
    let entered = first.entered.clone();
    let release = first.release.clone();
    let a = ctx(&pool);
    let running = tokio::spawn(async move { jobs::run_once(&a, &mut first).await });
    entered.notified().await;

    // While the first replica's step runs, the second finds it claimed.
    let mut second = gate("test.claim");
    let b = ctx(&other);
    assert_eq!(jobs::run_once(&b, &mut second).await.unwrap(), Round::Busy);
    assert_eq!(second.ran.load(Ordering::SeqCst), 0);
    // Another job is not blocked by it.
    let mut unrelated = gate("test.unrelated");
    unrelated.release.notify_one();
    assert!(matches!(
        jobs::run_once(&b, &mut unrelated).await.unwrap(),
        Round::Ran(_)
    ));

    release.notify_one();
    let round = running.await.unwrap().unwrap();
    assert_eq!(
        round,
        Round::Ran(Progress {
            cursor: Some("42".into()),
            lag_rows: Some(7),
            ..Progress::idle()
        })
    );
    // Released: the second replica now gets it.
    second.release.notify_one();
    assert!(matches!(
        jobs::run_once(&b, &mut second).await.unwrap(),
        Round::Ran(_)
    ));
    let status = jobs::status(&pool, "test.claim").await.unwrap().unwrap();
    assert_eq!(status.runs, 2);
    assert_eq!(status.cursor.as_deref(), Some("42"));
    assert_eq!(status.lag_rows, Some(7));
    assert!(status.last_success_at.is_some());
    assert!(status.holder.unwrap().contains(':'));
}

#[sqlx::test]
async fn a_cancelled_step_gives_its_claim_back(pool: PgPool) {
    let mut job = gate("test.cancel");
    let entered = job.entered.clone();
    let a = ctx(&pool);
    let running = tokio::spawn(async move { jobs::run_once(&a, &mut job).await });
    entered.notified().await;
    running.abort();
    let _ = running.await;
    // The aborted step's connection was closed, not pooled with the lock.
    let other = second_pool(&pool).await;
    let mut next = gate("test.cancel");
    next.release.notify_one();
    let b = ctx(&other);
    let mut round = jobs::run_once(&b, &mut next).await.unwrap();
    for _ in 0..50 {
        if round != Round::Busy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        next.release.notify_one();
        round = jobs::run_once(&b, &mut next).await.unwrap();
    }
    assert!(matches!(round, Round::Ran(_)), "{round:?}");
}

#[sqlx::test]
async fn failures_are_recorded_and_pause_is_honoured(pool: PgPool) {
    let c = ctx(&pool);
    let mut failing = gate("test.status");
    failing.fail = true;
    failing.release.notify_one();
    let err = jobs::run_once(&c, &mut failing).await.unwrap_err();
    assert!(err.to_string().contains("503"));
    let status = jobs::status(&pool, "test.status").await.unwrap().unwrap();
    assert_eq!(status.failures_in_a_row, 1);
    assert_eq!(status.last_error.as_deref(), Some("peer answered HTTP 503"));
    assert!(status.last_success_at.is_none());

    jobs::set_paused(&pool, "test.status", true).await.unwrap();
    let mut paused = gate("test.status");
    assert_eq!(
        jobs::run_once(&c, &mut paused).await.unwrap(),
        Round::Paused
    );
    assert_eq!(paused.ran.load(Ordering::SeqCst), 0);

    jobs::set_paused(&pool, "test.status", false).await.unwrap();
    paused.release.notify_one();
    assert!(matches!(
        jobs::run_once(&c, &mut paused).await.unwrap(),
        Round::Ran(_)
    ));
    let status = jobs::status(&pool, "test.status").await.unwrap().unwrap();
    assert_eq!(status.failures_in_a_row, 0);
    // The last failure stays visible after a success.
    assert!(status.last_error.is_some());
    assert_eq!(status.runs, 2);
    let all = jobs::statuses(&pool).await.unwrap();
    assert_eq!(all.len(), 1);
}
