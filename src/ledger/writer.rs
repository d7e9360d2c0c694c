//! The batching writer task and the handle request code uses to reach it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::owners::{Owner, RecentResponses, CREATING_ENDPOINTS};
use super::quarantine::{insert_isolating, Stored};
use super::spool::Spool;
use super::LedgerRow;
use crate::limits::alerts::Alerts;

enum Message {
    Row(Box<LedgerRow>),
    Flush(oneshot::Sender<()>),
    /// Shutdown: write what came before, then stop.
    Close,
}

/// Counters shown on `/readyz` and `/metrics`.
#[derive(Debug, Default)]
pub struct LedgerStats {
    /// Rows handed to the writer and not yet stored or spooled.
    pub queued: AtomicU64,
    pub written: AtomicU64,
    /// Rows waiting in the spool for the database.
    pub spooled: AtomicU64,
    pub write_errors: AtomicU64,
    /// Rows the database refused, isolated and kept in `ledger_quarantine`.
    pub quarantined: AtomicU64,
}

impl LedgerStats {
    fn stored(&self, stored: Stored) {
        self.written.fetch_add(stored.written, Ordering::Relaxed);
        self.quarantined
            .fetch_add(stored.quarantined, Ordering::Relaxed);
    }
}

/// Cheap to clone; recording never blocks and never fails while the writer runs.
#[derive(Clone)]
pub struct LedgerHandle {
    tx: mpsc::UnboundedSender<Message>,
    stats: Arc<LedgerStats>,
    recent: Arc<RecentResponses>,
    background: Arc<tokio::sync::Notify>,
}

impl LedgerHandle {
    /// Hands a finished row to the writer. The channel is unbounded on
    /// purpose: a full channel would force a choice between blocking the
    /// request path and dropping the row; instead the backlog is visible in
    /// [`LedgerStats::queued`] and bounded by the spool draining it.
    pub fn record(&self, row: LedgerRow) {
        if let Some(id) = &row.response_id {
            if CREATING_ENDPOINTS.contains(&row.endpoint.as_str()) {
                self.recent.remember(
                    id,
                    Owner::of_row(
                        row.tenant.clone(),
                        row.upstream.clone(),
                        &row.status,
                        &row.usage_source,
                        row.input_tokens,
                        row.output_tokens,
                    ),
                );
            }
        }
        // The request is over: spend control frees its concurrency slot.
        crate::limits::recorded(&row.request_id);
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Message::Row(Box::new(row))).is_err() {
            // Only after shutdown finished: nothing is left to write it.
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("ledger writer stopped; a row could not be recorded");
        }
    }

    /// Resolves once every row recorded before the call is stored or spooled.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Message::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    pub fn stats(&self) -> &LedgerStats {
        &self.stats
    }

    /// Wakes the background settler (a response it may settle finished).
    pub fn nudge_background(&self) {
        self.background.notify_one();
    }

    /// What the background settler waits on besides its timer.
    pub fn background_signal(&self) -> Arc<tokio::sync::Notify> {
        self.background.clone()
    }

    /// Responses recorded by this process, including rows not yet stored.
    pub fn recent(&self) -> &RecentResponses {
        &self.recent
    }

    /// A handle whose rows go to the returned receiver instead of a database:
    /// for tools and tests that exercise the request path alone.
    pub fn capture() -> (Self, CapturedRows) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = Self {
            tx,
            stats: Arc::new(LedgerStats::default()),
            recent: Arc::default(),
            background: Arc::default(),
        };
        (handle, CapturedRows(rx))
    }

    /// Asks the writer to store everything recorded so far and stop; rows
    /// recorded later are refused (and logged), so call this last.
    pub fn close(&self) {
        let _ = self.tx.send(Message::Close);
    }
}

/// The other end of [`LedgerHandle::capture`].
pub struct CapturedRows(mpsc::UnboundedReceiver<Message>);

impl CapturedRows {
    /// Rows recorded so far.
    pub fn drain(&mut self) -> Vec<LedgerRow> {
        let mut rows = Vec::new();
        while let Ok(message) = self.0.try_recv() {
            if let Message::Row(row) = message {
                rows.push(*row);
            }
        }
        rows
    }
}

/// Starts the writer. It runs until every [`LedgerHandle`] is dropped, then
/// writes what is left (to the spool if the database is gone) and ends.
pub fn spawn_writer(
    pool: PgPool,
    spool: Spool,
    batching: Batching,
) -> (LedgerHandle, JoinHandle<()>) {
    spawn_watched_writer(pool, spool, batching, Arc::default())
}

/// As [`spawn_writer`], telling `alerts` about every batch it stores (budget
/// threshold alerts; an in-memory lookup per row).
pub fn spawn_watched_writer(
    pool: PgPool,
    spool: Spool,
    batching: Batching,
    alerts: Arc<Alerts>,
) -> (LedgerHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let stats = Arc::new(LedgerStats::default());
    stats
        .spooled
        .store(spool.pending_rows_estimate(), Ordering::Relaxed);
    let writer = Writer {
        pool,
        spool,
        batch_max: batching.max_rows.max(1),
        linger: batching.linger,
        stats: stats.clone(),
        database_down: false,
        alerts,
    };
    #[allow(clippy::disallowed_methods)] // the writer is awaited by serve's shutdown sequence
    let task = tokio::spawn(writer.run(rx));
    (
        LedgerHandle {
            tx,
            stats,
            recent: Arc::default(),
            background: Arc::default(),
        },
        task,
    )
}

/// How the writer groups rows into INSERTs.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most rows one INSERT carries.
    pub max_rows: usize,
    /// How long a batch waits for more rows after its first one.
    pub linger: Duration,
}

impl Batching {
    /// Whatever is queued, at once, up to `max_rows` (tools and tests).
    pub fn immediate(max_rows: usize) -> Self {
        Self {
            max_rows,
            linger: Duration::ZERO,
        }
    }
}

struct Writer {
    pool: PgPool,
    spool: Spool,
    batch_max: usize,
    linger: Duration,
    stats: Arc<LedgerStats>,
    /// Set by a failed insert, cleared by a successful replay: while set,
    /// batches go straight to the spool instead of waiting on connection
    /// timeouts with the rows only in memory.
    database_down: bool,
    /// Told what was stored (after the insert, like limit settlement).
    alerts: Arc<Alerts>,
}

const REPLAY_EVERY: Duration = Duration::from_secs(1);
/// How long a replay waits for a connection before deciding the database is
/// still away.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Message>) {
        let mut messages = Vec::with_capacity(self.batch_max);
        let mut replay_tick = tokio::time::interval(REPLAY_EVERY);
        replay_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                received = rx.recv_many(&mut messages, self.batch_max) => {
                    if received == 0 {
                        break;
                    }
                    self.linger(&mut rx, &mut messages).await;
                    let mut rows = Vec::with_capacity(messages.len());
                    let mut waiters = Vec::new();
                    let mut close = false;
                    for message in messages.drain(..) {
                        match message {
                            Message::Row(row) => rows.push(*row),
                            Message::Flush(waiter) => waiters.push(waiter),
                            Message::Close => close = true,
                        }
                    }
                    if !rows.is_empty() {
                        self.store(rows).await;
                    }
                    for waiter in waiters {
                        let _ = waiter.send(());
                    }
                    if close {
                        break;
                    }
                }
                _ = replay_tick.tick() => self.replay_spool().await,
            }
        }
        self.replay_spool().await;
        tracing::info!(
            written = self.stats.written.load(Ordering::Relaxed),
            spooled = self.stats.spooled.load(Ordering::Relaxed),
            "ledger writer stopped"
        );
    }

    /// Tops a short batch up with what arrives within the linger; a flush or
    /// shutdown in the batch is not kept waiting.
    async fn linger(&self, rx: &mut mpsc::UnboundedReceiver<Message>, messages: &mut Vec<Message>) {
        if self.linger.is_zero()
            || messages.len() >= self.batch_max
            || messages.iter().any(|m| !matches!(m, Message::Row(_)))
        {
            return;
        }
        let deadline = tokio::time::Instant::now() + self.linger;
        while messages.len() < self.batch_max {
            let before = messages.len();
            let room = self.batch_max - before;
            match tokio::time::timeout_at(deadline, rx.recv_many(messages, room)).await {
                Ok(0) | Err(_) => return,
                Ok(_)
                    if messages[before..]
                        .iter()
                        .any(|m| !matches!(m, Message::Row(_))) =>
                {
                    return
                }
                Ok(_) => {}
            }
        }
    }

    /// Database first; on failure the spool, which fsyncs before returning.
    async fn store(&mut self, rows: Vec<LedgerRow>) {
        let count = rows.len() as u64;
        let inserted = if self.database_down {
            Err(sqlx::Error::PoolTimedOut)
        } else {
            insert_isolating(&self.pool, &rows).await
        };
        match inserted {
            Ok(stored) => {
                self.stats.stored(stored);
                self.alerts.stored(&rows);
            }
            Err(err) => {
                if !self.database_down {
                    self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %err, rows = count, "ledger insert failed; spooling until the database is back");
                }
                self.database_down = true;
                match self.spool.append(&rows) {
                    Ok(()) => {
                        self.stats.spooled.fetch_add(count, Ordering::Relaxed);
                    }
                    Err(spool_err) => {
                        // Neither the database nor the disk took the rows: keep
                        // trying the database rather than dropping them.
                        tracing::error!(error = %spool_err, "spool append failed; retrying the database");
                        self.retry_until_stored(rows).await;
                    }
                }
            }
        }
        self.stats.queued.fetch_sub(count, Ordering::Relaxed);
    }

    async fn retry_until_stored(&self, rows: Vec<LedgerRow>) {
        let mut delay = Duration::from_millis(100);
        loop {
            tokio::time::sleep(delay).await;
            if let Ok(stored) = insert_isolating(&self.pool, &rows).await {
                self.stats.stored(stored);
                self.alerts.stored(&rows);
                return;
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn replay_spool(&mut self) {
        if !self.spool.has_pending() {
            self.database_down = false;
            return;
        }
        match tokio::time::timeout(PROBE_TIMEOUT, self.pool.acquire()).await {
            Ok(Ok(_connection)) => {}
            _ => return,
        }
        let pool = self.pool.clone();
        let batch_max = self.batch_max;
        // A spooled row the database refuses is quarantined like a live one:
        // replay can never stick on it.
        let quarantined = Arc::new(AtomicU64::new(0));
        let alerts = self.alerts.clone();
        let result = self
            .spool
            .replay(|rows| {
                let (pool, quarantined, alerts) =
                    (pool.clone(), quarantined.clone(), alerts.clone());
                async move {
                    for chunk in rows.chunks(batch_max) {
                        let stored = insert_isolating(&pool, chunk).await?;
                        quarantined.fetch_add(stored.quarantined, Ordering::Relaxed);
                        alerts.stored(chunk);
                    }
                    Ok::<_, sqlx::Error>(())
                }
            })
            .await;
        let quarantined = quarantined.load(Ordering::Relaxed);
        self.stats
            .quarantined
            .fetch_add(quarantined, Ordering::Relaxed);
        match result {
            Ok(replayed) if replayed > 0 => {
                tracing::info!(rows = replayed, quarantined, "replayed spooled ledger rows");
                self.stats
                    .written
                    .fetch_add(replayed.saturating_sub(quarantined), Ordering::Relaxed);
                let left = self.stats.spooled.load(Ordering::Relaxed);
                self.stats
                    .spooled
                    .store(left.saturating_sub(replayed), Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(err) => {
                tracing::debug!(error = %err, "spool replay deferred");
                return;
            }
        }
        self.database_down = false;
        if !self.spool.has_pending() {
            self.stats.spooled.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::ledger::sample_row;

    async fn stored(pool: &PgPool) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM usage_ledger")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    /// Polls for up to 20 s: the behaviour checked is *whether* rows land
    /// without a flush, never how fast.
    async fn eventually_stored(pool: &PgPool, rows: i64) -> bool {
        for _ in 0..200 {
            if stored(pool).await >= rows {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    fn writer(
        pool: &PgPool,
        max_rows: usize,
        linger: Duration,
    ) -> (LedgerHandle, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (handle, _task) = spawn_writer(pool.clone(), spool, Batching { max_rows, linger });
        (handle, dir)
    }

    #[sqlx::test(migrations = "./migrations")]
    async fn a_flush_is_not_kept_waiting_by_the_linger(pool: PgPool) {
        let (ledger, _dir) = writer(&pool, 1_000, Duration::from_secs(3_600));
        for i in 0..3 {
            ledger.record(sample_row(&format!("req_linger_{i}")));
        }
        tokio::time::timeout(Duration::from_secs(20), ledger.flush())
            .await
            .expect("flush waited for the hour-long linger");
        assert_eq!(stored(&pool).await, 3);
    }

    #[sqlx::test(migrations = "./migrations")]
    async fn a_full_batch_is_written_without_lingering(pool: PgPool) {
        let (ledger, _dir) = writer(&pool, 2, Duration::from_secs(3_600));
        for i in 0..4 {
            ledger.record(sample_row(&format!("req_full_{i}")));
        }
        assert!(
            eventually_stored(&pool, 4).await,
            "full batches waited for the linger"
        );
    }

    #[sqlx::test(migrations = "./migrations")]
    async fn a_short_batch_is_written_once_the_linger_ends(pool: PgPool) {
        let (ledger, _dir) = writer(&pool, 1_000, Duration::from_millis(50));
        ledger.record(sample_row("req_alone"));
        assert!(
            eventually_stored(&pool, 1).await,
            "a lone row was never written"
        );
        assert_eq!(ledger.stats().queued.load(Ordering::Relaxed), 0);
    }
}
