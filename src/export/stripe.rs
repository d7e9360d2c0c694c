//! Stripe: `POST {url}/v1/billing/meter_events`, form-encoded, one event
//! per request (`[exports.stripe] concurrency` in flight), `Authorization:
//! Bearer`. `event_name` the configured meter event, `identifier` the
//! ledger row's `request_id` (Stripe's dedupe key), `timestamp` the
//! request's start (unix seconds), `payload[stripe_customer_id]` the
//! tenant's customer, `payload[value]` the configured integer
//! (`total_tokens`, `input_tokens`, `output_tokens` or `cost_micros`, the
//! cost in millionths of the currency unit rounded half to even).
//!
//! Stripe takes events up to 35 days old: older rows are never sent but
//! listed (`outside_window`, see [`in_window`]). A 429 is waited out per its
//! `Retry-After`. A 400 saying the identifier already exists is an
//! acknowledgement (a resend after a crash).

use chrono::{DateTime, Duration, Utc};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};

use super::event::ExportRow;
use super::sink::{answer, refusal, Answer, Event, SinkClient};

pub const PATH: &str = "/v1/billing/meter_events";

/// Stripe's window is 35 days; an hour is kept in hand for the time a
/// batch takes and for clocks.
pub fn in_window(started_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    started_at > now - Duration::days(35) + Duration::hours(1)
}

pub fn value(row: &ExportRow, kind: &str) -> i64 {
    match kind {
        "input_tokens" => row.input_tokens,
        "output_tokens" => row.output_tokens,
        "cost_micros" => (row.cost.unwrap_or_default() * Decimal::from(1_000_000))
            .round_dp_with_strategy(0, RoundingStrategy::MidpointNearestEven)
            .to_i64()
            .unwrap_or(i64::MAX),
        _ => row.total_tokens,
    }
}

pub fn form(event_name: &str, kind: &str, e: &Event<'_>) -> Vec<(&'static str, String)> {
    vec![
        ("event_name", event_name.to_owned()),
        ("identifier", e.row.request_id.clone()),
        ("timestamp", e.row.started_at.timestamp().to_string()),
        ("payload[stripe_customer_id]", e.customer.to_owned()),
        ("payload[value]", value(e.row, kind).to_string()),
    ]
}

pub async fn post(client: &SinkClient, events: &[Event<'_>]) -> Answer {
    let Some(e) = events.first() else {
        return Answer::Accepted;
    };
    let config = &client.config;
    let kind = config.value.as_deref().unwrap_or("total_tokens");
    let event_name = config.event_name.as_deref().unwrap_or_default();
    let sent = client
        .http
        .post(format!("{}{PATH}", config.base()))
        .bearer_auth(config.api_key.expose())
        .form(&form(event_name, kind, e))
        .send()
        .await;
    answer(
        sent,
        |_| Answer::Accepted,
        |status, body| {
            if status == 400 && already_exists(body) {
                Answer::Accepted
            } else {
                Answer::Refused(refusal(status, body))
            }
        },
    )
    .await
}

/// Stripe's answer to an identifier it already holds.
pub fn already_exists(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .is_some_and(|code| code == "resource_already_exists")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::export::event::tests::row;

    #[test]
    fn the_form_names_stripes_fields() {
        let r = row("req_5", Some("0.0000025"));
        let e = Event {
            row: &r,
            customer: "cus_1",
        };
        let f = form("llm_tokens", "total_tokens", &e);
        assert!(f.contains(&("identifier", "req_5".into())));
        assert!(f.contains(&("payload[stripe_customer_id]", "cus_1".into())));
        assert!(f.contains(&("payload[value]", "1500".into())));
        assert!(f.contains(&("timestamp", "1796119200".into())));
        assert_eq!(value(&r, "cost_micros"), 2);
        assert_eq!(value(&row("x", Some("0.0000035")), "cost_micros"), 4);
    }

    #[test]
    fn rows_older_than_35_days_are_outside_the_window() {
        let now = Utc::now();
        assert!(in_window(now - Duration::days(34), now));
        assert!(!in_window(now - Duration::days(35), now));
        assert!(already_exists(
            br#"{"error":{"code":"resource_already_exists","type":"invalid_request_error"}}"#
        ));
        assert!(!already_exists(
            br#"{"error":{"code":"parameter_missing"}}"#
        ));
    }
}
