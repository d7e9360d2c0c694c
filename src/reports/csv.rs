//! Ledger rows as CSV (RFC 4180): a header row of the JSON field names, then
//! one line per row, CRLF-terminated.
//!
//! A field is quoted when it holds a comma, a double quote, CR or LF, with
//! inner quotes doubled; nothing else is altered, so every value reads back
//! exactly (spreadsheet formula prefixes are not escaped either: that would
//! change the data). Null is the empty field. Values are written as the JSON
//! records show them: cost as the shortest exact decimal, times as RFC 3339
//! UTC, booleans as `true`/`false`.

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::ledger::{LedgerRow, COLUMNS};

/// The column names, in [`COLUMNS`] order (the alias where there is one).
pub fn header() -> Vec<&'static str> {
    COLUMNS
        .split(',')
        .map(|column| {
            let column = column.trim();
            column
                .rsplit_once(" AS ")
                .map_or(column, |(_, alias)| alias.trim())
        })
        .collect()
}

pub fn write_header(out: &mut String) {
    for (i, name) in header().into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        text(out, name);
    }
    out.push_str("\r\n");
}

/// One row, in [`header`] order.
pub fn write_row(out: &mut String, row: &LedgerRow) {
    let mut w = Fields { out, first: true };
    w.opt_num(row.id);
    w.text(&row.request_id);
    w.opt_text(row.response_id.as_deref());
    w.text(&row.tenant);
    w.text(&row.api_key_id);
    w.text(&row.endpoint);
    w.opt_text(row.model.as_deref());
    w.opt_text(row.upstream.as_deref());
    w.opt_text(row.upstream_model.as_deref());
    w.num(row.stream);
    w.text(&row.status);
    w.text(&row.usage_source);
    w.num(row.input_tokens);
    w.num(row.cached_tokens);
    w.num(row.output_tokens);
    w.num(row.reasoning_tokens);
    w.num(row.total_tokens);
    w.opt_text(row.service_tier.as_deref());
    w.opt_num(row.price_id);
    w.opt_num(row.cost.map(|c| c.normalize()));
    w.opt_text(row.unpriced_reason.as_deref());
    w.text(&row.currency);
    w.opt_num(row.http_status);
    w.opt_text(row.error_code.as_deref());
    w.num(row.attempts);
    w.opt_text(row.fallback_from.as_deref());
    w.opt_text(row.end_user.as_deref());
    w.opt_text(row.dropped_tools.as_deref());
    w.opt_text(row.client_request_id.as_deref());
    w.num(row.client_disconnected);
    w.num(row.mcp_calls);
    w.time(Some(row.started_at));
    w.time(row.first_byte_at);
    w.time(Some(row.finished_at));
    w.opt_text(row.anomaly.as_deref());
    out.push_str("\r\n");
}

struct Fields<'a> {
    out: &'a mut String,
    first: bool,
}

impl Fields<'_> {
    fn sep(&mut self) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
    }

    fn text(&mut self, value: &str) {
        self.sep();
        text(self.out, value);
    }

    fn opt_text(&mut self, value: Option<&str>) {
        self.sep();
        if let Some(value) = value {
            text(self.out, value);
        }
    }

    /// Numbers and booleans never need quoting.
    fn num(&mut self, value: impl std::fmt::Display) {
        self.sep();
        let _ = write!(self.out, "{value}");
    }

    fn opt_num(&mut self, value: Option<impl std::fmt::Display>) {
        self.sep();
        if let Some(value) = value {
            let _ = write!(self.out, "{value}");
        }
    }

    /// The form serde gives the JSON records.
    fn time(&mut self, value: Option<DateTime<Utc>>) {
        self.sep();
        if let Some(value) = value {
            self.out
                .push_str(&value.to_rfc3339_opts(SecondsFormat::AutoSi, true));
        }
    }
}

fn text(out: &mut String, value: &str) {
    if value.contains([',', '"', '\r', '\n']) {
        out.push('"');
        for c in value.chars() {
            if c == '"' {
                out.push('"');
            }
            out.push(c);
        }
        out.push('"');
    } else {
        out.push_str(value);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rust_decimal::Decimal;

    /// The shared sample row, with what this module must escape and format.
    fn row() -> LedgerRow {
        LedgerRow {
            id: Some(7),
            response_id: None,
            upstream: Some("mock".into()),
            upstream_model: Some("gpt-5.5-2026".into()),
            model: Some("gpt-5.5".into()),
            price_id: Some(3),
            cost: Some(Decimal::new(12_300, 6)),
            end_user: Some("a,\"b\"\r\nc".into()),
            dropped_tools: Some("web_search,code_interpreter".into()),
            client_request_id: Some("trace 42".into()),
            started_at: DateTime::from_timestamp_micros(1_764_547_200_123_456).unwrap(),
            finished_at: DateTime::from_timestamp(1_764_547_201, 0).unwrap(),
            ..crate::ledger::sample_row("req_1")
        }
    }

    #[test]
    fn header_matches_the_json_fields_in_order() {
        let json = serde_json::to_string(&row()).unwrap();
        let fields: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&json).unwrap();
        let header = header();
        assert_eq!(header.len(), fields.len(), "{header:?}");
        // Same order as the struct (serde writes fields in declaration order).
        let positions: Vec<usize> = header
            .iter()
            .map(|name| json.find(&format!("\"{name}\":")).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{header:?}");
    }

    #[test]
    fn rows_quote_only_what_needs_it_and_match_json_values() {
        let mut out = String::new();
        write_row(&mut out, &row());
        assert!(out.starts_with("7,req_1,,acme,k1,responses.create,gpt-5.5,"));
        assert!(out.contains(",0.0123,"));
        assert!(out.contains(",\"a,\"\"b\"\"\r\nc\",\"web_search,code_interpreter\",trace 42,"));
        let json = serde_json::to_value(row()).unwrap();
        let started = json["started_at"].as_str().unwrap();
        assert!(out.contains(&format!(",{started},,")), "{out}");
        assert!(out.ends_with("\r\n"));
    }
}
