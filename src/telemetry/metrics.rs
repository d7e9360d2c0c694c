//! Prometheus metrics in the names of CONTRACT §11, and the process-wide
//! recorder that `/metrics` renders.
//!
//! Owns the metric names, their help texts, the histogram buckets and the
//! label policy. Every label set is bounded: `endpoint`, `status` and `type`
//! are closed sets; `model` is the public model of a row that reached routing
//! (a model the gateway knows), and `other` for refusals before routing,
//! whose model may be anything a client typed; `upstream` is a configured
//! upstream name. No tenant, key or end-user label ever: those are in the
//! reports.
//!
//! Never the record of money: counters are `f64`, the ledger is exact.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use rust_decimal::Decimal;

use crate::ledger::{LedgerRow, LedgerStats};

pub const REQUESTS: &str = "tollgate_requests_total";
pub const TOKENS: &str = "tollgate_tokens_total";
pub const COST: &str = "tollgate_cost_usd_total";
pub const REQUEST_DURATION: &str = "tollgate_request_duration_seconds";
pub const TIME_TO_FIRST_BYTE: &str = "tollgate_time_to_first_byte_seconds";
pub const UPSTREAM_DURATION: &str = "tollgate_upstream_duration_seconds";
pub const ROWS_WRITTEN: &str = "tollgate_ledger_rows_written_total";
pub const ROWS_SPOOLED: &str = "tollgate_ledger_rows_spooled";
pub const DEFAULT_PARTITION_ROWS: &str = "tollgate_ledger_default_partition_rows";
pub const ROWS_QUEUED: &str = "tollgate_ledger_rows_queued";
pub const ROWS_QUARANTINED: &str = "tollgate_ledger_rows_quarantined_total";
pub const WRITE_ERRORS: &str = "tollgate_ledger_write_errors_total";
pub const LIMIT_REJECTIONS: &str = "tollgate_limit_rejections_total";
pub const LIMIT_SYNCS: &str = "tollgate_limit_syncs_total";
pub const ALERTS_RECORDED: &str = "tollgate_alerts_recorded_total";
pub const ALERTS_DELIVERED: &str = "tollgate_alerts_delivered_total";
pub const ALERT_DELIVERY_FAILURES: &str = "tollgate_alerts_delivery_failures_total";
pub const JOB_STEPS: &str = "tollgate_job_steps_total";
pub const JOB_LAST_SUCCESS: &str = "tollgate_job_last_success_timestamp_seconds";
pub const JOB_LAG_ROWS: &str = "tollgate_job_lag_rows";
pub const JOB_LAG_SECONDS: &str = "tollgate_job_lag_seconds";

/// Latency buckets, seconds: sub-millisecond gateway work up to the
/// five-minute request timeout.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];

/// The label for rows whose model never reached routing.
const OTHER_MODEL: &str = "other";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder once per process; `None` when another recorder was
/// installed first (then `/metrics` answers 500).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?
                .install_recorder()
                .ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        REQUESTS,
        "Requests that ended, by endpoint, ledger status and model."
    );
    describe_counter!(
        TOKENS,
        "Tokens of recorded rows by model and OpenTelemetry GenAI token type (input and output are totals; cached_input and reasoning are parts of them)."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "From authentication to the row, by endpoint."
    );
    describe_histogram!(
        TIME_TO_FIRST_BYTE,
        Unit::Seconds,
        "From authentication to the first upstream byte, by endpoint."
    );
    describe_histogram!(
        UPSTREAM_DURATION,
        Unit::Seconds,
        "From sending a request upstream to its response headers, by upstream."
    );
    describe_counter!(ROWS_WRITTEN, "Ledger rows stored in the database.");
    describe_gauge!(
        ROWS_SPOOLED,
        "Ledger rows waiting in the spool for the database."
    );
    describe_gauge!(
        DEFAULT_PARTITION_ROWS,
        "Ledger rows in the default partition (no month covers their time yet)."
    );
    describe_gauge!(
        ROWS_QUEUED,
        "Ledger rows handed to the writer and not yet stored or spooled."
    );
    describe_counter!(
        ROWS_QUARANTINED,
        "Ledger rows the database refused, kept apart with its reason."
    );
    describe_counter!(WRITE_ERRORS, "Ledger batch inserts that failed.");
    describe_counter!(
        "tollgate_connections_shed_total",
        "Client connections closed at the connection cap to make room, by what they were doing (head_pending, idle_keep_alive, websocket_idle)."
    );
    describe_counter!(
        "tollgate_connections_refused_total",
        "Client connections answered 503 at the cap: every connection had a request under way."
    );
    describe_counter!(
        LIMIT_REJECTIONS,
        "Requests refused by a budget or rate limit, by scope and reason."
    );
    describe_counter!(
        LIMIT_SYNCS,
        "Slice syncs of spend control with the database (one transaction each), by trigger (periodic: the keeper's tick; demand: requests waited) and outcome."
    );
    describe_counter!(
        ALERTS_RECORDED,
        "Budget threshold crossings this replica recorded in the outbox."
    );
    describe_counter!(
        ALERTS_DELIVERED,
        "Budget alert events this replica delivered (answered 2xx)."
    );
    describe_counter!(
        ALERT_DELIVERY_FAILURES,
        "Budget alert delivery attempts that failed (retried with backoff)."
    );
    describe_counter!(
        JOB_STEPS,
        "Background job steps this replica ran, by job and outcome (ok, error)."
    );
    describe_gauge!(
        JOB_LAST_SUCCESS,
        "Unix time of the last successful step of each job on this replica."
    );
    describe_gauge!(
        JOB_LAG_ROWS,
        "Work a job reported waiting after its last step on this replica, in rows."
    );
    describe_gauge!(
        JOB_LAG_SECONDS,
        "Age of the oldest work a job reported waiting after its last step on this replica."
    );
}

/// Everything one finished request contributes: its count, tokens, cost and
/// latencies. Called once per ledger row, when it is handed to the writer.
/// The handles of a label set are registered once ([`row_handles`]): a row
/// then costs a few atomic adds, not label strings and registry look-ups.
pub fn record_row(row: &LedgerRow) {
    let model = model_label(row);
    // Before our recorder is installed there is nothing to record into.
    let Some(handles) = row_handles(&row.endpoint, &row.status, model) else {
        return;
    };
    handles.requests.increment(1);
    for (i, tokens) in [
        row.input_tokens,
        row.cached_tokens,
        row.output_tokens,
        row.reasoning_tokens,
    ]
    .into_iter()
    .enumerate()
    {
        if let Ok(tokens) = u64::try_from(tokens) {
            if tokens > 0 {
                handles.tokens[i]
                    .get_or_init(|| {
                        metrics::counter!(TOKENS, "model" => model.to_owned(), "type" => TOKEN_TYPES[i])
                    })
                    .increment(tokens);
            }
        }
    }
    if let Some(cost) = row.cost.filter(|c| !c.is_zero()) {
        add_cost(model, cost);
    }
    if let Ok(elapsed) = (row.finished_at - row.started_at).to_std() {
        handles.duration.record(elapsed);
    }
    if let Some(Ok(first)) = row.first_byte_at.map(|at| (at - row.started_at).to_std()) {
        handles.first_byte.record(first);
    }
}

/// The `type` label of each token counter, in the order of [`RowHandles::tokens`].
const TOKEN_TYPES: [&str; 4] = ["input", "cached_input", "output", "reasoning"];

/// The metric handles of one (endpoint, status, model) label set. Token
/// counters are registered at their first non-zero count, so a type never
/// seen shows no series.
struct RowHandles {
    requests: metrics::Counter,
    tokens: [OnceLock<metrics::Counter>; 4],
    duration: metrics::Histogram,
    first_byte: metrics::Histogram,
}

type ByModel = HashMap<String, Arc<RowHandles>>;

/// endpoint → status → model → handles (every level a bounded set; see the
/// module's label policy). `None` when our recorder is not the one installed
/// (handles registered then would stay no-ops).
fn row_handles(endpoint: &str, status: &str, model: &str) -> Option<Arc<RowHandles>> {
    static HANDLES: OnceLock<RwLock<HashMap<String, HashMap<String, ByModel>>>> = OnceLock::new();
    // Handles registered before our recorder is installed would stay no-ops.
    HANDLE.get()?.as_ref()?;
    let map = HANDLES.get_or_init(RwLock::default);
    let found = map
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(endpoint)
        .and_then(|by_status| by_status.get(status))
        .and_then(|by_model| by_model.get(model))
        .cloned();
    if found.is_some() {
        return found;
    }
    let mut map = map.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    let entry = map
        .entry(endpoint.to_owned())
        .or_default()
        .entry(status.to_owned())
        .or_default()
        .entry(model.to_owned())
        .or_insert_with(|| {
            let (endpoint, status, model) = (endpoint.to_owned(), status.to_owned(), model.to_owned());
            Arc::new(RowHandles {
                requests: metrics::counter!(REQUESTS, "endpoint" => endpoint.clone(), "status" => status, "model" => model),
                tokens: Default::default(),
                duration: metrics::histogram!(REQUEST_DURATION, "endpoint" => endpoint.clone()),
                first_byte: metrics::histogram!(TIME_TO_FIRST_BYTE, "endpoint" => endpoint),
            })
        });
    Some(entry.clone())
}

/// Cost per model label, summed exactly. The `metrics` crate's counters are
/// integers, so the cost counter is kept here and rendered by [`render`].
fn costs() -> &'static Mutex<BTreeMap<String, Decimal>> {
    static COSTS: OnceLock<Mutex<BTreeMap<String, Decimal>>> = OnceLock::new();
    COSTS.get_or_init(Mutex::default)
}

fn add_cost(model: &str, cost: Decimal) {
    let mut costs = costs()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match costs.get_mut(model) {
        Some(sum) => *sum = sum.saturating_add(cost),
        None => {
            costs.insert(model.to_owned(), cost);
        }
    }
}

/// The Prometheus text exposition: the recorder's metrics, then the exact
/// cost counter.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut text = handle.render();
    let costs = costs()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !costs.is_empty() {
        let _ = writeln!(
            text,
            "# HELP {COST} Cost of priced rows in USD (the ledger is the exact record).\n# TYPE {COST} counter"
        );
        for (model, sum) in costs.iter() {
            let _ = writeln!(
                text,
                "{COST}{{model=\"{}\"}} {}",
                escape_label(model),
                sum.normalize()
            );
        }
    }
    text
}

/// Label values escape backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One upstream call, from sending it to its response headers.
pub fn record_upstream(upstream: &str, elapsed: Duration) {
    metrics::histogram!(UPSTREAM_DURATION, "upstream" => upstream.to_owned()).record(elapsed);
}

/// A request refused by spend control (`scope`: tenant or key; `reason`:
/// budget, requests, tokens, concurrency).
pub fn record_limit_rejection(scope: &'static str, reason: &'static str) {
    metrics::counter!(LIMIT_REJECTIONS, "scope" => scope, "reason" => reason).increment(1);
}

/// One slice sync of spend control (`trigger`: periodic or demand).
pub fn record_limit_sync(trigger: &'static str, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::counter!(LIMIT_SYNCS, "trigger" => trigger, "outcome" => outcome).increment(1);
}

/// Budget alert events newly recorded (one per crossed threshold).
pub fn record_alerts_recorded(events: u64) {
    metrics::counter!(ALERTS_RECORDED).increment(events);
}

/// One alert delivery attempt: answered 2xx, or failed (to be retried).
pub fn record_alert_delivery(delivered: bool) {
    let name = if delivered {
        ALERTS_DELIVERED
    } else {
        ALERT_DELIVERY_FAILURES
    };
    metrics::counter!(name).increment(1);
}

/// What a successful job step reported waiting.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobLag {
    pub rows: Option<i64>,
    pub seconds: Option<f64>,
}

/// One background job step (`lag` is `None` when it failed).
pub fn record_job_step(job: &str, lag: Option<JobLag>) {
    let outcome = if lag.is_some() { "ok" } else { "error" };
    metrics::counter!(JOB_STEPS, "job" => job.to_owned(), "outcome" => outcome).increment(1);
    let Some(progress) = lag else { return };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    metrics::gauge!(JOB_LAST_SUCCESS, "job" => job.to_owned()).set(now);
    if let Some(rows) = progress.rows {
        metrics::gauge!(JOB_LAG_ROWS, "job" => job.to_owned()).set(rows as f64);
    }
    if let Some(seconds) = progress.seconds {
        metrics::gauge!(JOB_LAG_SECONDS, "job" => job.to_owned()).set(seconds);
    }
}

/// Publishes the writer's counters; called when `/metrics` is scraped.
pub fn publish_ledger(stats: &LedgerStats) {
    use std::sync::atomic::Ordering::Relaxed;
    metrics::counter!(ROWS_WRITTEN).absolute(stats.written.load(Relaxed));
    metrics::counter!(WRITE_ERRORS).absolute(stats.write_errors.load(Relaxed));
    metrics::counter!(ROWS_QUARANTINED).absolute(stats.quarantined.load(Relaxed));
    metrics::gauge!(ROWS_SPOOLED).set(stats.spooled.load(Relaxed) as f64);
    metrics::gauge!(ROWS_QUEUED).set(stats.queued.load(Relaxed) as f64);
}

/// Rows in the ledger's default partition, as last counted.
pub fn publish_default_partition_rows(rows: i64) {
    metrics::gauge!(DEFAULT_PARTITION_ROWS).set(rows as f64);
}

fn model_label(row: &LedgerRow) -> &str {
    match &row.model {
        Some(model) if row.upstream.is_some() || row.price_id.is_some() => model,
        _ => OTHER_MODEL,
    }
}
