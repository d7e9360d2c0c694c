//! `tollgate_reconciliation_*`: what the last fetch did and what the last
//! report of the fetched days says, per model. Labels are bounded: a model
//! is one the ledger knows (the line has ledger rows), anything else is
//! `other`.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, OnceLock};

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use super::fetch::Fetched;
use super::report::{Grouped, Report, Status};

const LAST_SUCCESS: &str = "tollgate_reconciliation_last_success_timestamp_seconds";
const REQUESTS: &str = "tollgate_reconciliation_provider_requests_total";
const ROWS_CHANGED: &str = "tollgate_reconciliation_provider_rows_changed_total";
const DRIFT_LINES: &str = "tollgate_reconciliation_drift_lines";
const COST_DIFFERENCE: &str = "tollgate_reconciliation_cost_difference_usd";
const PENDING_LINES: &str = "tollgate_reconciliation_pending_lines";

fn describe() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        use metrics::{describe_counter, describe_gauge};
        describe_gauge!(LAST_SUCCESS, "Unix time of the last successful fetch from the provider.");
        describe_counter!(REQUESTS, "HTTP requests made to the provider's organization API.");
        describe_counter!(ROWS_CHANGED, "Provider usage and cost rows inserted, revised or removed by fetches.");
        describe_gauge!(DRIFT_LINES, "Lines of the recently fetched days that disagree (drift, provider_only, gateway_only), by model.");
        describe_gauge!(COST_DIFFERENCE, "Ledger minus provider cost over the recently fetched final days, by model (USD).");
        describe_gauge!(PENDING_LINES, "Lines of the recently fetched days still pending, by model.");
    });
}

/// Models given a gauge so far: set to 0 once they stop disagreeing.
fn seen() -> &'static Mutex<HashSet<String>> {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    SEEN.get_or_init(Mutex::default)
}

pub fn record_fetch(fetched: &Fetched) {
    describe();
    metrics::counter!(REQUESTS).increment(fetched.requests);
    metrics::counter!(ROWS_CHANGED)
        .increment(fetched.usage_rows_changed + fetched.cost_rows_changed);
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    metrics::gauge!(LAST_SUCCESS).set(now);
}

#[derive(Default)]
struct PerModel {
    disagreeing: u64,
    pending: u64,
    cost_difference: Decimal,
}

pub fn record_report(report: &Report) {
    describe();
    let mut per_model: BTreeMap<String, PerModel> = BTreeMap::new();
    for line in &report.data {
        let model = match &line.model {
            Grouped::Value(Some(m)) if line.ledger.requests > 0 => m.clone(),
            _ => "other".to_owned(),
        };
        let entry = per_model.entry(model).or_default();
        if line.status.disagrees() {
            entry.disagreeing += 1;
        }
        if line.status == Status::Pending {
            entry.pending += 1;
        } else if let Some(cost) = line.difference.as_ref().and_then(|d| d.cost) {
            entry.cost_difference += cost;
        }
    }
    let mut seen = seen().lock().unwrap_or_else(|e| e.into_inner());
    for model in seen.iter() {
        if !per_model.contains_key(model) {
            per_model.insert(model.clone(), PerModel::default());
        }
    }
    for (model, figures) in per_model {
        metrics::gauge!(DRIFT_LINES, "model" => model.clone()).set(figures.disagreeing as f64);
        metrics::gauge!(PENDING_LINES, "model" => model.clone()).set(figures.pending as f64);
        metrics::gauge!(COST_DIFFERENCE, "model" => model.clone())
            .set(figures.cost_difference.to_f64().unwrap_or(0.0));
        seen.insert(model);
    }
}
