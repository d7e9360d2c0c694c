//! The ledger row as the exporter reads it ([`ExportRow`]), whether it is
//! final, and the CloudEvent every CloudEvents sink (OpenMeter, webhook)
//! sends for it. Pure; no I/O.

use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

/// The ledger columns an event needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ExportRow {
    pub id: i64,
    pub request_id: String,
    pub tenant_id: String,
    pub api_key_id: String,
    pub endpoint: String,
    pub model: Option<String>,
    pub service_tier: Option<String>,
    pub status: String,
    pub input_tokens: i64,
    pub cached_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    pub total_tokens: i64,
    pub cost: Option<Decimal>,
    pub unpriced_reason: Option<String>,
    pub currency: String,
    pub started_at: DateTime<Utc>,
}

pub const COLUMNS: &str = "id, request_id, tenant_id, api_key_id, endpoint, model, service_tier, \
     status, input_tokens, cached_tokens, output_tokens, reasoning_tokens, total_tokens, cost, \
     unpriced_reason, currency, started_at";

impl ExportRow {
    /// `None` when the row is final (cost settled, no background response
    /// still running); otherwise why it waits.
    pub fn not_final(&self) -> Option<String> {
        if self.status == "queued" {
            return Some("background_pending".into());
        }
        match self.cost {
            Some(_) => None,
            None => Some(
                self.unpriced_reason
                    .clone()
                    .unwrap_or_else(|| "unpriced".into()),
            ),
        }
    }

    /// The exact cost as the shortest decimal string.
    pub fn cost_text(&self) -> String {
        self.cost.unwrap_or_default().normalize().to_string()
    }

    pub fn time(&self) -> String {
        self.started_at.to_rfc3339_opts(SecondsFormat::Micros, true)
    }
}

/// `data` of a usage CloudEvent: every token count and the exact cost.
#[derive(Debug, Serialize)]
pub struct UsageData<'a> {
    pub tenant: &'a str,
    pub api_key_id: &'a str,
    pub endpoint: &'a str,
    pub model: Option<&'a str>,
    pub service_tier: Option<&'a str>,
    pub status: &'a str,
    pub input_tokens: i64,
    pub cached_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    pub total_tokens: i64,
    /// Exact decimal string.
    pub cost: String,
    pub currency: &'a str,
    pub ledger_id: i64,
}

impl<'a> UsageData<'a> {
    pub fn of(row: &'a ExportRow) -> Self {
        Self {
            tenant: &row.tenant_id,
            api_key_id: &row.api_key_id,
            endpoint: &row.endpoint,
            model: row.model.as_deref(),
            service_tier: row.service_tier.as_deref(),
            status: &row.status,
            input_tokens: row.input_tokens,
            cached_tokens: row.cached_tokens,
            output_tokens: row.output_tokens,
            reasoning_tokens: row.reasoning_tokens,
            total_tokens: row.total_tokens,
            cost: row.cost_text(),
            currency: &row.currency,
            ledger_id: row.id,
        }
    }
}

pub const USAGE_TYPE: &str = "tollgate.usage";
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

#[derive(Debug, Serialize)]
pub struct CloudEvent<'a> {
    pub specversion: &'static str,
    /// The ledger row's `request_id`: with `source`, the sink's dedupe key.
    pub id: &'a str,
    pub source: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub subject: &'a str,
    pub time: String,
    pub datacontenttype: &'static str,
    pub data: UsageData<'a>,
}

/// A CloudEvents batch (JSON array) of `rows`, each with its subject.
pub fn cloudevents_batch(source: &str, rows: &[(&ExportRow, &str)]) -> Vec<u8> {
    let events: Vec<CloudEvent<'_>> = rows
        .iter()
        .map(|(row, subject)| CloudEvent {
            specversion: "1.0",
            id: &row.request_id,
            source,
            kind: USAGE_TYPE,
            subject,
            time: row.time(),
            datacontenttype: "application/json",
            data: UsageData::of(row),
        })
        .collect();
    serde_json::to_vec(&events).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub fn row(request_id: &str, cost: Option<&str>) -> ExportRow {
        ExportRow {
            id: 7,
            request_id: request_id.into(),
            tenant_id: "acme".into(),
            api_key_id: "key_1".into(),
            endpoint: "responses.create".into(),
            model: Some("gpt-5.5".into()),
            service_tier: Some("default".into()),
            status: "completed".into(),
            input_tokens: 1200,
            cached_tokens: 200,
            output_tokens: 300,
            reasoning_tokens: 100,
            total_tokens: 1500,
            cost: cost.map(|c| c.parse().unwrap()),
            unpriced_reason: cost.is_none().then(|| "no_price".into()),
            currency: "usd".into(),
            started_at: DateTime::parse_from_rfc3339("2026-12-01T10:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
        }
    }

    #[test]
    fn the_batch_carries_every_count_and_the_exact_cost() {
        let r = row("req_1", Some("0.0123400000000000"));
        let body = cloudevents_batch("tollgate", &[(&r, "cust-1")]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let e = &v[0];
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["id"], "req_1");
        assert_eq!(e["source"], "tollgate");
        assert_eq!(e["subject"], "cust-1");
        assert_eq!(e["time"], "2026-12-01T10:00:00.123456Z");
        assert_eq!(e["data"]["cost"], "0.01234");
        assert_eq!(e["data"]["reasoning_tokens"], 100);
        assert_eq!(e["data"]["cached_tokens"], 200);
    }

    #[test]
    fn queued_and_unpriced_rows_are_not_final() {
        assert_eq!(row("a", Some("1")).not_final(), None);
        assert_eq!(row("a", None).not_final().as_deref(), Some("no_price"));
        let mut queued = row("a", None);
        queued.status = "queued".into();
        assert_eq!(queued.not_final().as_deref(), Some("background_pending"));
    }
}
