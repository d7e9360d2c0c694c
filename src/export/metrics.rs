//! `tollgate_export_*`, labelled by sink only (a bounded set): events sent
//! and refused, requests (batches) made, failed steps, and the lag.

use std::sync::OnceLock;

const EVENTS: &str = "tollgate_export_events_total";
const BATCHES: &str = "tollgate_export_batches_total";
const FAILURES: &str = "tollgate_export_failures_total";
const LAG_ROWS: &str = "tollgate_export_lag_rows";
const LAG_SECONDS: &str = "tollgate_export_lag_seconds";

fn describe() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        use metrics::{describe_counter, describe_gauge};
        describe_counter!(
            EVENTS,
            "Ledger rows a billing sink acknowledged (outcome=sent) or refused (outcome=refused)."
        );
        describe_counter!(BATCHES, "Requests made to a billing sink.");
        describe_counter!(
            FAILURES,
            "Export steps that failed (sink down, 5xx, timeout, database); retried with backoff."
        );
        describe_gauge!(
            LAG_ROWS,
            "Outbox entries a billing sink has not passed yet."
        );
        describe_gauge!(
            LAG_SECONDS,
            "Age of the oldest outbox entry a billing sink has not passed yet."
        );
    });
}

pub fn delivered(sink: &'static str, sent: u64, refused: u64, batches: usize) {
    describe();
    metrics::counter!(EVENTS, "sink" => sink, "outcome" => "sent").increment(sent);
    metrics::counter!(EVENTS, "sink" => sink, "outcome" => "refused").increment(refused);
    metrics::counter!(BATCHES, "sink" => sink).increment(batches as u64);
}

pub fn failure(sink: &'static str) {
    describe();
    metrics::counter!(FAILURES, "sink" => sink).increment(1);
}

pub fn lag(sink: &'static str, rows: i64, seconds: f64) {
    describe();
    metrics::gauge!(LAG_ROWS, "sink" => sink).set(rows as f64);
    metrics::gauge!(LAG_SECONDS, "sink" => sink).set(seconds);
}
