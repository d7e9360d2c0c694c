//! The lease bookkeeping inside admission: this replica's slices of every
//! limited scope it serves ([`Leases`]), the requests admitted from them
//! until their rows are stored, and the task that keeps the slices in step
//! with the database.
//!
//! The request path ([`Leases::admit`]) takes from the slices in memory and
//! returns; only a request its slices cannot cover waits, and it waits for
//! the keeper's next sync, which serves every request waiting meanwhile in
//! one transaction (`store::sync`). The keeper also syncs by itself once a
//! second for slices that were used (refill ahead of need, report what is
//! open), that hold more than they need (hand back), or whose lease is due
//! for renewal; it listens on `tollgate_limits` so a limit change or a
//! recall reaches it at once. Database calls therefore follow the number of
//! scopes in use, not the number of requests.
//!
//! Through a database outage the slices keep admitting until they are used
//! up or their lease runs out (measured from the last sync that reached the
//! database); a request they cannot cover then gets 503, never an admission
//! the database did not grant.
//!
//! It never decides sizes in the database's terms (`share`) and never reads
//! a ledger row except to learn whether a held background response settled.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgPool;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::slice::{Need, Short, Slice, Waiting};
use super::store::{self, BucketView, Overrun, Scope, Settings, SyncError, Synced};

/// Why a request was not admitted.
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
    /// The slices cannot cover it and the database cannot be asked.
    Unavailable,
    /// A scope stopped being limited while the request waited: decide again.
    Retry,
}

/// The rate views of an admitted request (for `x-ratelimit-*`).
pub type Views = Vec<(Option<BucketView>, Option<BucketView>)>;

/// Lease timing and sizing (`[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct LeaseSettings {
    /// A lease's lifetime without renewal.
    pub ttl: Duration,
    /// How often used slices are synced.
    pub every: Duration,
    /// How many seconds of recent demand a slice keeps ready.
    pub cover: Duration,
    /// How long a request's hold is kept without its row (a row the
    /// database refused, a background response settled nowhere).
    pub max_hold: Duration,
}

/// One scope's slice on this replica.
#[derive(Debug)]
pub struct Cell {
    slice: Mutex<Slice>,
}

impl Cell {
    fn lock(&self) -> MutexGuard<'_, Slice> {
        self.slice.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// This replica's slices by scope (looked up by `&str`, no allocation).
#[derive(Default)]
struct Cells {
    keys: HashMap<String, Arc<Cell>>,
    tenants: HashMap<String, Arc<Cell>>,
}

impl Cells {
    fn of(&mut self, scope: Scope) -> &mut HashMap<String, Arc<Cell>> {
        match scope {
            Scope::Key => &mut self.keys,
            Scope::Tenant => &mut self.tenants,
        }
    }

    fn get(&self, scope: Scope, id: &str) -> Option<&Arc<Cell>> {
        match scope {
            Scope::Key => self.keys.get(id),
            Scope::Tenant => self.tenants.get(id),
        }
    }

    fn iter(&self) -> impl Iterator<Item = (Scope, &String, &Arc<Cell>)> {
        let keys = self.keys.iter().map(|(id, c)| (Scope::Key, id, c));
        let tenants = self.tenants.iter().map(|(id, c)| (Scope::Tenant, id, c));
        keys.chain(tenants)
    }

    fn retain(&mut self, mut keep: impl FnMut(&Arc<Cell>) -> bool) {
        self.keys.retain(|_, c| keep(c));
        self.tenants.retain(|_, c| keep(c));
    }
}

/// What one admitted request holds until its row is stored.
struct Held {
    leases: Arc<Leases>,
    cells: Vec<Arc<Cell>>,
    need: Need,
    tenant: Arc<str>,
    key_id: Arc<str>,
    started_at: DateTime<Utc>,
    since: Instant,
    /// Its row was stored as `queued`: held until it settles.
    background: bool,
    /// It still holds its concurrency slot (until its row is recorded).
    open: bool,
}

/// The request an admission is for.
#[derive(Debug, Clone)]
pub struct Request {
    pub request_id: String,
    pub tenant: Arc<str>,
    pub key_id: Arc<str>,
    pub started_at: DateTime<Utc>,
}

/// Open admissions by request id, process-wide because the ledger writer,
/// which ends them, knows only the rows; ids are unique, so gateways sharing
/// a process never touch each other's entries.
static HELD: LazyLock<Mutex<HashMap<String, Held>>> = LazyLock::new(Mutex::default);
/// Set once anything was admitted under a limit in this process: until then
/// the ledger writer's hook has nothing to look up.
static HELD_ANY: AtomicBool = AtomicBool::new(false);

fn held() -> MutexGuard<'static, HashMap<String, Held>> {
    HELD.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Waiter {
    cells: Vec<Arc<Cell>>,
    need: Need,
    request: Request,
    reply: oneshot::Sender<Result<Views, Refusal>>,
    /// Retries left while other replicas hand back their spare.
    tries: u8,
    not_before: Instant,
}

/// A waiter may wait this long for other replicas to hand back their spare.
const RECALL_RETRY: Duration = Duration::from_millis(250);
const RECALL_TRIES: u8 = 4;
/// After a sync failed to reach the database, waiters are answered 503 at
/// once for this long instead of each waiting for a connection timeout.
const DOWN_FOR: Duration = Duration::from_secs(1);
/// How often held requests are checked (background settlements elsewhere,
/// holds past `max_hold`).
const HOUSEKEEPING: Duration = Duration::from_secs(5);
/// A background response is looked up in the ledger once it is this old.
const BACKGROUND_CHECK_AFTER: Duration = Duration::from_secs(15);
/// Most scopes one sync transaction moves.
const SYNC_MAX: usize = 256;

pub struct Leases {
    /// This replica's name on its lease rows.
    holder: String,
    settings: LeaseSettings,
    cells: Mutex<Cells>,
    queue: Mutex<VecDeque<Waiter>>,
    wake: Notify,
    overruns: Mutex<Vec<Overrun>>,
    last_failure: Mutex<Option<Instant>>,
    /// The keeper has stopped (shutdown): nobody would answer a waiter.
    stopped: AtomicBool,
}

impl Leases {
    pub fn new(settings: LeaseSettings) -> Arc<Self> {
        let nonce: u32 = rand::random();
        Arc::new(Self {
            holder: format!("{}:{nonce:08x}", crate::jobs::replica_id()),
            settings,
            cells: Mutex::default(),
            queue: Mutex::default(),
            wake: Notify::new(),
            overruns: Mutex::default(),
            last_failure: Mutex::default(),
            stopped: AtomicBool::new(false),
        })
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    fn cells(&self) -> MutexGuard<'_, Cells> {
        self.cells.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cell(&self, scope: Scope, id: &str, settings: &Settings) -> Arc<Cell> {
        let mut cells = self.cells();
        if let Some(cell) = cells.get(scope, id) {
            return cell.clone();
        }
        let cell = Arc::new(Cell {
            slice: Mutex::new(Slice::new(
                scope,
                id.to_owned(),
                settings.clone(),
                Instant::now(),
            )),
        });
        cells.of(scope).insert(id.to_owned(), cell.clone());
        cell
    }

    fn down_recently(&self) -> bool {
        self.last_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < DOWN_FOR)
    }

    /// Admits `request` against the slices of `scopes` (key first, then
    /// tenant): at once from memory when they cover it, else after the
    /// keeper's next sync.
    pub async fn admit(
        self: &Arc<Self>,
        scopes: &[(Scope, &str, Arc<Settings>)],
        need: Need,
        request: Request,
    ) -> Result<Views, Refusal> {
        let cells: Vec<Arc<Cell>> = scopes
            .iter()
            .map(|(scope, id, settings)| self.cell(*scope, id, settings))
            .collect();
        HELD_ANY.store(true, Ordering::Relaxed);
        let request = match self.take(&cells, need, request, Instant::now()) {
            Ok(views) => return Ok(views),
            Err((request, _)) => request,
        };
        if self.down_recently() || self.stopped.load(Ordering::Acquire) {
            return Err(Refusal::Unavailable);
        }
        let (reply, answer) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(Waiter {
                cells,
                need,
                request,
                reply,
                tries: RECALL_TRIES,
                not_before: Instant::now(),
            });
        self.wake.notify_one();
        if self.stopped.load(Ordering::Acquire) {
            // The keeper stopped while this was queued: answer it here.
            let left: Vec<Waiter> = self
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .drain(..)
                .collect();
            for waiter in left {
                let _ = waiter.reply.send(Err(Refusal::Unavailable));
            }
        }
        answer.await.unwrap_or(Err(Refusal::Unavailable))
    }

    /// Takes `need` from every cell if all cover it, and registers the
    /// hold, in one step (nothing in between can be cancelled).
    fn take(
        self: &Arc<Self>,
        cells: &[Arc<Cell>],
        need: Need,
        request: Request,
        now: Instant,
    ) -> Result<Views, (Request, (usize, Short))> {
        let mut slices: Vec<MutexGuard<'_, Slice>> = cells.iter().map(|c| c.lock()).collect();
        for (i, slice) in slices.iter().enumerate() {
            if let Err(short) = slice.check(need, now) {
                return Err((request, (i, short)));
            }
        }
        let mut views = Vec::with_capacity(slices.len());
        for slice in &mut slices {
            slice.take(need, now);
            views.push(slice.views());
        }
        drop(slices);
        held().insert(
            request.request_id.clone(),
            Held {
                leases: self.clone(),
                cells: cells.to_vec(),
                need,
                tenant: request.tenant,
                key_id: request.key_id,
                started_at: request.started_at,
                since: now,
                background: false,
                open: true,
            },
        );
        Ok(views)
    }

    /// A scope's limits changed or were recalled (announced by any
    /// replica): keep no spare and sync it now.
    pub fn recalled(&self, scope: Scope, id: &str) {
        let cell = self.cells().get(scope, id).cloned();
        if let Some(cell) = cell {
            cell.lock().recall(Instant::now());
            self.wake.notify_one();
        }
    }

    /// After a reconnect of the listener: anything may have changed.
    pub fn recall_all(&self) {
        let now = Instant::now();
        for (_, _, cell) in self.cells().iter() {
            cell.lock().recall(now);
        }
        self.wake.notify_one();
    }

    /// Settings changed in the database (seen by the cache reload): the
    /// slices use them from now on.
    pub fn refresh_settings<'a>(&self, lookup: impl Fn(Scope, &str) -> Option<&'a Arc<Settings>>) {
        let now = Instant::now();
        let mut gone = Vec::new();
        for (scope, id, cell) in self.cells().iter() {
            let mut slice = cell.lock();
            match lookup(scope, id) {
                Some(settings) if **settings != *slice.settings() => {
                    slice.replace_settings((**settings).clone());
                    slice.recall(now);
                }
                Some(_) => {}
                None => gone.push((scope, id.clone())),
            }
        }
        if !gone.is_empty() {
            let mut cells = self.cells();
            for (scope, id) in gone {
                cells.of(scope).remove(&id);
            }
        }
    }

    /// Runs the keeper until `stop`.
    pub async fn run(self: Arc<Self>, pool: PgPool, stop: CancellationToken) {
        let mut deferred: Vec<Waiter> = Vec::new();
        let mut next_tick = Instant::now() + self.settings.every;
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING;
        loop {
            let wake_at = deferred
                .iter()
                .map(|w| w.not_before)
                .min()
                .map_or(next_tick, |at| at.min(next_tick));
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep_until(wake_at.into()) => {}
                () = self.wake.notified() => {}
            }
            let now = Instant::now();
            let periodic = now >= next_tick;
            if periodic {
                next_tick = now + self.settings.every;
            }
            let waiters = self.waiting(&mut deferred, now);
            if periodic || !waiters.is_empty() {
                self.round(&pool, waiters, periodic, &mut deferred).await;
            }
            if now >= next_housekeeping {
                next_housekeeping = now + HOUSEKEEPING;
                self.housekeeping(&pool).await;
            }
        }
        // Whoever still waits is told now rather than left hanging.
        self.stopped.store(true, Ordering::Release);
        for waiter in self.waiting(&mut deferred, Instant::now() + Duration::from_secs(3600)) {
            let _ = waiter.reply.send(Err(Refusal::Unavailable));
        }
    }

    /// The queued waiters and the deferred ones whose time has come, in
    /// arrival order.
    fn waiting(&self, deferred: &mut Vec<Waiter>, now: Instant) -> Vec<Waiter> {
        let (due, later): (Vec<Waiter>, Vec<Waiter>) =
            deferred.drain(..).partition(|w| w.not_before <= now);
        *deferred = later;
        let mut waiters = due;
        waiters.extend(
            self.queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .drain(..),
        );
        waiters
    }

    /// One round: serve what now fits, sync what is due or short, then
    /// serve the rest or tell them why not.
    async fn round(
        self: &Arc<Self>,
        pool: &PgPool,
        waiters: Vec<Waiter>,
        periodic: bool,
        deferred: &mut Vec<Waiter>,
    ) {
        let now = Instant::now();
        let mut short = Vec::new();
        for waiter in waiters {
            if let Some(waiter) = self.serve(waiter, now) {
                short.push(waiter);
            }
        }
        if !periodic && !short.is_empty() && self.down_recently() {
            for waiter in short {
                let _ = waiter.reply.send(Err(Refusal::Unavailable));
            }
            return;
        }
        let synced = self.sync(pool, &short, periodic).await;
        let now = Instant::now();
        for waiter in short {
            let Some(mut waiter) = self.serve(waiter, now) else {
                continue;
            };
            let refusal = self.refusal(&waiter, synced.as_ref(), now);
            match refusal {
                None if waiter.tries > 0 => {
                    waiter.tries -= 1;
                    waiter.not_before = now + RECALL_RETRY;
                    deferred.push(waiter);
                }
                None => {
                    let refusal = self.plain_refusal(&waiter, now);
                    let _ = waiter.reply.send(Err(refusal));
                }
                Some(refusal) => {
                    let _ = waiter.reply.send(Err(refusal));
                }
            }
        }
    }

    /// Admits the waiter if its slices cover it now (and tells it); gives it
    /// back otherwise. A waiter whose client left is undone at once.
    fn serve(self: &Arc<Self>, waiter: Waiter, now: Instant) -> Option<Waiter> {
        let Waiter {
            cells,
            need,
            request,
            reply,
            tries,
            not_before,
        } = waiter;
        let request_id = request.request_id.clone();
        match self.take(&cells, need, request, now) {
            Ok(views) => {
                if reply.send(Ok(views)).is_err() {
                    self.undo(&request_id);
                }
                None
            }
            Err((request, _)) => Some(Waiter {
                cells,
                need,
                request,
                reply,
                tries,
                not_before,
            }),
        }
    }

    /// Why a waiter that still does not fit after a sync is refused;
    /// `None` when other replicas are handing back spare (worth a retry).
    fn refusal(
        &self,
        waiter: &Waiter,
        synced: Option<&HashMap<(Scope, String), Synced>>,
        now: Instant,
    ) -> Option<Refusal> {
        let Some(synced) = synced else {
            return Some(Refusal::Unavailable);
        };
        for cell in &waiter.cells {
            let slice = cell.lock();
            let key = (slice.scope, slice.id.clone());
            let Err(short) = slice.check(waiter.need, now) else {
                continue;
            };
            return match synced.get(&key) {
                Some(Synced::Gone) => Some(Refusal::Retry),
                None => Some(Refusal::Unavailable),
                Some(Synced::Granted(g))
                    if g.others_spare && matches!(short, Short::Budget | Short::Slots) =>
                {
                    None
                }
                Some(Synced::Granted(_)) => Some(refusal_of(&slice, short, waiter.need)),
            };
        }
        Some(Refusal::Retry)
    }

    fn plain_refusal(&self, waiter: &Waiter, now: Instant) -> Refusal {
        for cell in &waiter.cells {
            let slice = cell.lock();
            if let Err(short) = slice.check(waiter.need, now) {
                return refusal_of(&slice, short, waiter.need);
            }
        }
        Refusal::Retry
    }

    /// Releases what a waiter took when its client was already gone.
    fn undo(&self, request_id: &str) {
        if let Some(held) = held().remove(request_id) {
            for cell in &held.cells {
                cell.lock().untake(held.need, held.open);
            }
        }
    }

    /// Syncs every due slice and every slice a waiter needs, in one
    /// transaction per [`SYNC_MAX`] scopes. The outcome per scope, or `None`
    /// when the database could not be reached.
    async fn sync(
        &self,
        pool: &PgPool,
        waiters: &[Waiter],
        periodic: bool,
    ) -> Option<HashMap<(Scope, String), Synced>> {
        let now = Instant::now();
        let needs = needs_by_scope(waiters);
        let mut chosen: Vec<((Scope, String), Arc<Cell>)> = self
            .cells()
            .iter()
            .map(|(scope, id, cell)| ((scope, id.clone()), cell.clone()))
            .filter(|(key, cell)| {
                needs.contains_key(key)
                    || (periodic && cell.lock().due(now, self.settings.every, self.settings.ttl))
            })
            .collect();
        if chosen.is_empty() {
            return Some(HashMap::new());
        }
        chosen.sort_by(|a, b| (a.0 .0.as_str(), &a.0 .1).cmp(&(b.0 .0.as_str(), &b.0 .1)));
        let mut outcome = HashMap::new();
        for part in chosen.chunks(SYNC_MAX) {
            let asks: Vec<_> = part
                .iter()
                .map(|(key, cell)| {
                    let need = needs.get(key).copied().unwrap_or_default();
                    cell.lock().plan(need, self.settings.cover, now, false)
                })
                .collect();
            let overruns =
                std::mem::take(&mut *self.overruns.lock().unwrap_or_else(PoisonError::into_inner));
            let sent = Instant::now();
            let result = store::sync(pool, &self.holder, &asks, &overruns, self.settings.ttl).await;
            crate::telemetry::metrics::record_limit_sync(
                if needs.is_empty() {
                    "periodic"
                } else {
                    "demand"
                },
                result.is_ok(),
            );
            match result {
                Ok(synced) => {
                    *self
                        .last_failure
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = None;
                    for (((key, cell), ask), synced) in part.iter().zip(&asks).zip(synced) {
                        match &synced {
                            Synced::Granted(granted) => cell.lock().apply(granted, sent, ask),
                            Synced::Gone => {
                                self.cells().of(key.0).remove(&key.1);
                            }
                        }
                        outcome.insert(key.clone(), synced);
                    }
                }
                Err(err) => {
                    self.failed(&err, part, &asks, overruns);
                    return None;
                }
            }
        }
        Some(outcome)
    }

    fn failed(
        &self,
        err: &SyncError,
        part: &[((Scope, String), Arc<Cell>)],
        asks: &[store::Ask],
        overruns: Vec<Overrun>,
    ) {
        tracing::warn!(error = %err, scopes = part.len(), "limit slices not synced; serving from what they hold");
        *self
            .last_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        // Recording an overrun twice is harmless (ON CONFLICT DO NOTHING).
        self.overruns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(overruns);
        if let SyncError::NotApplied(_) = err {
            for ((_, cell), ask) in part.iter().zip(asks) {
                cell.lock().restore(ask);
            }
        }
        // Unknown outcome: what was handed back stays handed back, and what
        // may have been granted is not used (the database may hold more for
        // this replica than it uses until the next sync, never less).
    }

    /// Holds of background responses settled elsewhere, and holds past
    /// `max_hold`, are released; scopes nobody uses are forgotten.
    async fn housekeeping(self: &Arc<Self>, pool: &PgPool) {
        let (background, stale): (Vec<String>, Vec<String>) = {
            let held = held();
            let mine = held.iter().filter(|(_, h)| Arc::ptr_eq(&h.leases, self));
            let background = mine
                .clone()
                .filter(|(_, h)| h.background && h.since.elapsed() >= BACKGROUND_CHECK_AFTER)
                .map(|(id, _)| id.clone())
                .collect();
            let stale = mine
                .filter(|(_, h)| h.since.elapsed() >= self.settings.max_hold)
                .map(|(id, _)| id.clone())
                .collect();
            (background, stale)
        };
        for id in stale {
            if let Some(h) = held().remove(&id) {
                // Never stored (refused by the database) or never settled:
                // what it cost is unknown, so it counts as its estimate.
                let (cost, tokens) = (h.need.cost, h.need.tokens);
                release_row(&id, h, Some(cost), tokens);
            }
        }
        if !background.is_empty() {
            match settled_rows(pool, &background).await {
                Ok(rows) => {
                    for (id, cost, tokens) in rows {
                        settle_background(&id, cost, tokens);
                    }
                }
                Err(err) => tracing::debug!(error = %err, "background holds not checked"),
            }
        }
        let now = Instant::now();
        self.cells().retain(|cell| !cell.lock().forgettable(now));
    }

    /// Hands back every slice with nothing open (shutdown, after the ledger
    /// writer stored its rows).
    pub async fn release_idle(&self, pool: &PgPool) {
        match store::release_idle(pool, &self.holder).await {
            Ok(0) => {}
            Ok(released) => tracing::info!(released, "limit slices handed back"),
            Err(err) => tracing::warn!(error = %err, "limit slices not handed back; they lapse"),
        }
    }
}

fn refusal_of(slice: &Slice, short: Short, need: Need) -> Refusal {
    let scope = slice.scope;
    let rate = |reason| Refusal::Rate {
        scope,
        reason,
        retry_after: slice.retry_after(short, need),
    };
    match short {
        Short::Budget => Refusal::Budget { scope },
        Short::Slots => rate("concurrent_requests"),
        Short::Requests => rate("requests_per_minute"),
        Short::Tokens => rate("tokens_per_minute"),
        Short::Lease => Refusal::Unavailable,
    }
}

/// Per scope, what the waiters on it need together.
fn needs_by_scope(waiters: &[Waiter]) -> HashMap<(Scope, String), Waiting> {
    let mut needs: HashMap<(Scope, String), Waiting> = HashMap::new();
    for waiter in waiters {
        for cell in &waiter.cells {
            let key = {
                let slice = cell.lock();
                (slice.scope, slice.id.clone())
            };
            needs.entry(key).or_default().add(waiter.need);
        }
    }
    needs
}

/// A request's row was handed to the ledger: the request is no longer
/// open, so its concurrency slot is free (its estimate stays held until the
/// row is stored, which through a database outage may be much later).
pub fn recorded(request_id: &str) {
    if !HELD_ANY.load(Ordering::Relaxed) {
        return;
    }
    let mut held = held();
    if let Some(h) = held.get_mut(request_id) {
        if h.open {
            h.open = false;
            for cell in &h.cells {
                cell.lock().close();
            }
        }
    }
}

/// The ledger writer stored these rows: their holds end (a `queued`
/// background row keeps its hold until it settles).
pub fn settle_stored<'a>(rows: impl Iterator<Item = (&'a str, &'a str, Option<Decimal>, i64)>) {
    if !HELD_ANY.load(Ordering::Relaxed) {
        return;
    }
    let mut ended = Vec::new();
    {
        let mut held = held();
        if held.is_empty() {
            return;
        }
        for (request_id, status, cost, tokens) in rows {
            if status == "queued" {
                if let Some(h) = held.get_mut(request_id) {
                    h.background = true;
                }
                continue;
            }
            if let Some(h) = held.remove(request_id) {
                ended.push((request_id.to_owned(), h, cost, tokens));
            }
        }
    }
    for (request_id, h, cost, tokens) in ended {
        release_row(&request_id, h, cost, tokens);
    }
}

/// Ends one hold: its estimate leaves what its slices have committed, its
/// actual cost (now in the ledger's spend) leaves their budget, and an
/// actual above the estimate is recorded as an overrun.
fn release_row(request_id: &str, h: Held, cost: Option<Decimal>, tokens: i64) {
    let over = cost.is_some_and(|c| c > h.need.cost);
    let leases = h.leases.clone();
    let overrun = over.then(|| Overrun {
        request_id: request_id.to_owned(),
        tenant: h.tenant.to_string(),
        key_id: h.key_id.to_string(),
        estimate: h.need.cost,
        actual: cost.unwrap_or_default(),
        started_at: h.started_at,
    });
    for cell in &h.cells {
        cell.lock()
            .release(h.need, cost.unwrap_or_default(), tokens, h.open);
    }
    if let Some(overrun) = overrun {
        leases
            .overruns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(overrun);
    }
}

/// A background response's row settled (by this replica's settler, or
/// seen settled by housekeeping): its hold ends with its actual cost.
pub fn settle_background(request_id: &str, cost: Option<Decimal>, tokens: i64) {
    let Some(h) = held().remove(request_id) else {
        return;
    };
    release_row(request_id, h, cost, tokens);
}

async fn settled_rows(
    pool: &PgPool,
    request_ids: &[String],
) -> Result<Vec<(String, Option<Decimal>, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT request_id, cost, total_tokens FROM usage_ledger
         WHERE request_id = ANY($1) AND status <> 'queued'",
    )
    .bind(request_ids)
    .fetch_all(pool)
    .await
}
