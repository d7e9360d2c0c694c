//! What the gateway tells operators about itself: log lines ([`init`]) and
//! Prometheus metrics in the names of CONTRACT §11 ([`metrics`]) and
//! OpenTelemetry spans over OTLP ([`traces`]).
//!
//! Never carries a tenant, key or free-text label: every label set here is
//! bounded, whatever clients send.

pub mod metrics;
pub mod traces;

use crate::ledger::LedgerRow;

use tracing_subscriber::EnvFilter;

/// Logging: human-readable lines on stderr, `RUST_LOG` to filter,
/// `TOLLGATE_LOG_FORMAT=json` for one JSON object per line.
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tower_http=warn,sqlx=warn"));
    let json = std::env::var("TOLLGATE_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Everything a finished request tells operators: its metrics and its span.
pub fn observe_row(row: &LedgerRow) {
    metrics::record_row(row);
    traces::record_row(row);
}
