//! The wire form of an alert: a CloudEvents 1.0 structured-mode JSON body
//! built from the outbox row alone (so every retry sends the same bytes),
//! and its `x-tollgate-signature`. Pure; no I/O.

use chrono::SecondsFormat;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use super::outbox::EventRow;

pub const EVENT_TYPE: &str = "tollgate.budget.threshold_crossed";
pub const SOURCE: &str = "tollgate";
pub const CONTENT_TYPE: &str = "application/cloudevents+json";
pub const SIGNATURE_HEADER: &str = "x-tollgate-signature";

#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    source: &'static str,
    id: &'a str,
    time: String,
    datacontenttype: &'static str,
    /// `tenants/<id>` or `keys/<id>`, as in the admin paths.
    subject: String,
    data: Data<'a>,
}

/// Decimals are exact strings, times RFC 3339 UTC.
#[derive(Serialize)]
struct Data<'a> {
    scope: &'a str,
    tenant: &'a str,
    key_id: Option<&'a str>,
    threshold: String,
    amount: String,
    spent: String,
    period: &'a str,
    period_start: String,
}

/// The body's bytes: the same for every attempt of one event.
pub fn body(event: &EventRow) -> Vec<u8> {
    let collection = if event.scope_kind == "key" {
        "keys"
    } else {
        "tenants"
    };
    let cloud = CloudEvent {
        specversion: "1.0",
        kind: EVENT_TYPE,
        source: SOURCE,
        id: &event.id,
        time: event
            .created_at
            .to_rfc3339_opts(SecondsFormat::Micros, true),
        datacontenttype: "application/json",
        subject: format!("{collection}/{}", event.scope_id),
        data: Data {
            scope: &event.scope_kind,
            tenant: &event.tenant_id,
            key_id: event.api_key_id.as_deref(),
            threshold: event.threshold.normalize().to_string(),
            amount: event.amount.normalize().to_string(),
            spent: event.spent.normalize().to_string(),
            period: &event.period,
            period_start: event
                .period_start
                .to_rfc3339_opts(SecondsFormat::Secs, true),
        },
    };
    serde_json::to_vec(&cloud).unwrap_or_default()
}

/// `sha256=<hex HMAC-SHA256 of body keyed by secret>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length; this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::{DateTime, Utc};
    use std::str::FromStr;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn row() -> EventRow {
        let d = |s| rust_decimal::Decimal::from_str(s).unwrap();
        EventRow {
            id: "evt_1".into(),
            scope_kind: "key".into(),
            scope_id: "key_9".into(),
            tenant_id: "acme".into(),
            api_key_id: Some("key_9".into()),
            period: "month".into(),
            period_start: at("2026-05-01T00:00:00Z"),
            threshold: d("0.800000"),
            amount: d("50.0000000000000000"),
            spent: d("40.0035000000000000"),
            created_at: at("2026-05-17T08:09:10.123456Z"),
            attempts: 3,
            next_attempt_at: at("2026-05-17T08:09:10Z"),
            delivered_at: None,
            last_error: Some("HTTP 500".into()),
        }
    }

    #[test]
    fn the_body_is_a_cloudevent_with_exact_decimals_and_the_same_bytes_each_time() {
        let event = row();
        let bytes = body(&event);
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            concat!(
                r#"{"specversion":"1.0","type":"tollgate.budget.threshold_crossed","#,
                r#""source":"tollgate","id":"evt_1","time":"2026-05-17T08:09:10.123456Z","#,
                r#""datacontenttype":"application/json","subject":"keys/key_9","#,
                r#""data":{"scope":"key","tenant":"acme","key_id":"key_9","threshold":"0.8","#,
                r#""amount":"50","spent":"40.0035","period":"month","#,
                r#""period_start":"2026-05-01T00:00:00Z"}}"#
            )
        );
        // Delivery state is not part of the event.
        let retried = EventRow {
            attempts: 9,
            last_error: None,
            ..event
        };
        assert_eq!(body(&retried), bytes);
    }

    #[test]
    fn a_tenant_event_has_no_key() {
        let event = EventRow {
            scope_kind: "tenant".into(),
            scope_id: "acme".into(),
            api_key_id: None,
            ..row()
        };
        let value: serde_json::Value = serde_json::from_slice(&body(&event)).unwrap();
        assert_eq!(value["subject"], "tenants/acme");
        assert!(value["data"]["key_id"].is_null());
    }

    #[test]
    fn the_signature_is_hex_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
