//! Lago: `POST {url}/api/v1/events/batch` (at most [`MAX_BATCH`] events),
//! `Authorization: Bearer`. `transaction_id` is the ledger row's
//! `request_id` (Lago's dedupe key), `external_subscription_id` the
//! tenant's, `code` the configured billable metric, `timestamp` the
//! request's start (unix seconds with microseconds, as a string), and
//! `precise_total_amount_cents` the exact cost × 100 as a decimal string;
//! `properties` carry the model, tier, every token count and the cost.
//!
//! Lago validates a batch as a whole: a 422 stores nothing, so the batch is
//! sent again one event at a time ([`super::sink::deliver`]). A single event
//! refused only because its `transaction_id` already exists was stored
//! before (a resend after a crash): that is an acknowledgement.

use rust_decimal::Decimal;
use serde_json::{json, Value};

use super::sink::{answer, refusal, Answer, Event, SinkClient};

pub const PATH: &str = "/api/v1/events/batch";
pub const MAX_BATCH: usize = 100;

/// Cost × 100, exact, shortest form.
pub fn cents(cost: Option<Decimal>) -> String {
    (cost.unwrap_or_default() * Decimal::ONE_HUNDRED)
        .normalize()
        .to_string()
}

pub fn event(code: &str, e: &Event<'_>) -> Value {
    let row = e.row;
    let micros = row.started_at.timestamp_subsec_micros();
    json!({
        "transaction_id": row.request_id,
        "external_subscription_id": e.customer,
        "code": code,
        "timestamp": format!("{}.{micros:06}", row.started_at.timestamp()),
        "precise_total_amount_cents": cents(row.cost),
        "properties": {
            "model": row.model,
            "service_tier": row.service_tier,
            "endpoint": row.endpoint,
            "status": row.status,
            "input_tokens": row.input_tokens,
            "cached_tokens": row.cached_tokens,
            "output_tokens": row.output_tokens,
            "reasoning_tokens": row.reasoning_tokens,
            "total_tokens": row.total_tokens,
            "cost": row.cost_text(),
            "currency": row.currency,
        },
    })
}

pub fn body(code: &str, events: &[Event<'_>]) -> Value {
    json!({ "events": events.iter().map(|e| event(code, e)).collect::<Vec<_>>() })
}

pub async fn post(client: &SinkClient, events: &[Event<'_>]) -> Answer {
    let code = client.config.code.as_deref().unwrap_or_default();
    let sent = client
        .http
        .post(format!("{}{PATH}", client.config.base()))
        .bearer_auth(client.config.api_key.expose())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body(code, events)).unwrap_or_default())
        .send()
        .await;
    let single = events.len() == 1;
    answer(
        sent,
        |_| Answer::Accepted,
        |status, body| {
            if single && status == 422 && only_already_exists(body) {
                Answer::Accepted
            } else {
                Answer::Refused(refusal(status, body))
            }
        },
    )
    .await
}

/// A 422 whose every error is `transaction_id: value_already_exist`.
pub fn only_already_exists(body: &[u8]) -> bool {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let Some(details) = value.get("error_details").and_then(Value::as_object) else {
        return false;
    };
    let mut errors = Vec::new();
    collect(
        &Value::Object(details.clone()),
        &mut Vec::new(),
        &mut errors,
    );
    !errors.is_empty()
        && errors
            .iter()
            .all(|(field, error)| field == "transaction_id" && error == "value_already_exist")
}

/// (field, error) pairs anywhere in `error_details` (keyed by field, or by
/// event index then field).
fn collect(value: &Value, path: &mut Vec<String>, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                path.push(k.clone());
                collect(v, path, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            for item in items {
                collect(item, path, out);
            }
        }
        Value::String(error) => {
            out.push((path.last().cloned().unwrap_or_default(), error.clone()));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::export::event::tests::row;

    #[test]
    fn the_amount_is_the_exact_cost_in_cents() {
        assert_eq!(
            cents(Some("0.0123456789012345".parse().unwrap())),
            "1.23456789012345"
        );
        assert_eq!(cents(Some("12".parse().unwrap())), "1200");
        let r = row("req_9", Some("0.5"));
        let e = event(
            "llm_usage",
            &Event {
                row: &r,
                customer: "sub_1",
            },
        );
        assert_eq!(e["transaction_id"], "req_9");
        assert_eq!(e["external_subscription_id"], "sub_1");
        assert_eq!(e["timestamp"], "1796119200.123456");
        assert_eq!(e["precise_total_amount_cents"], "50");
        assert_eq!(e["properties"]["cached_tokens"], 200);
    }

    #[test]
    fn an_existing_transaction_id_is_an_acknowledgement() {
        let dup = br#"{"status":422,"error":"Unprocessable Entity","code":"validation_errors","error_details":{"0":{"transaction_id":["value_already_exist"]}}}"#;
        assert!(only_already_exists(dup));
        let bad = br#"{"status":422,"code":"validation_errors","error_details":{"0":{"code":["metric_not_found"]}}}"#;
        assert!(!only_already_exists(bad));
        assert!(!only_already_exists(b"not json"));
    }
}
