//! The wire form of an alert: a CloudEvents 1.0 structured-mode JSON body
//! built from the outbox row alone (so every retry sends the same bytes),
//! and its `x-tollgate-signature`. Budget crossings
//! (`tollgate.budget.threshold_crossed`) and reconciliation drift
//! (`tollgate.reconciliation.drift`, whose data is the drifting line as the
//! report shows it). Pure; no I/O.

use chrono::SecondsFormat;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use super::outbox::EventRow;

pub const EVENT_TYPE: &str = "tollgate.budget.threshold_crossed";
pub const DRIFT_EVENT_TYPE: &str = "tollgate.reconciliation.drift";
pub const SOURCE: &str = "tollgate";
pub const CONTENT_TYPE: &str = "application/cloudevents+json";
pub const SIGNATURE_HEADER: &str = "x-tollgate-signature";

#[derive(Serialize)]
struct CloudEvent<'a, D> {
    specversion: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    source: &'static str,
    id: &'a str,
    time: String,
    datacontenttype: &'static str,
    /// `tenants/<id>` or `keys/<id>`, as in the admin paths;
    /// `reconciliation/<day>/<line>` for drift.
    subject: String,
    data: D,
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
    let time = event
        .created_at
        .to_rfc3339_opts(SecondsFormat::Micros, true);
    if event.event_type == DRIFT_EVENT_TYPE {
        let cloud = CloudEvent {
            specversion: "1.0",
            kind: DRIFT_EVENT_TYPE,
            source: SOURCE,
            id: &event.id,
            time,
            datacontenttype: "application/json",
            subject: event.subject.clone().unwrap_or_default(),
            data: event.data.as_ref(),
        };
        return serde_json::to_vec(&cloud).unwrap_or_default();
    }
    let scope = event.scope_kind.as_deref().unwrap_or_default();
    let collection = if scope == "key" { "keys" } else { "tenants" };
    let decimal = |d: Option<rust_decimal::Decimal>| d.unwrap_or_default().normalize().to_string();
    let cloud = CloudEvent {
        specversion: "1.0",
        kind: EVENT_TYPE,
        source: SOURCE,
        id: &event.id,
        time,
        datacontenttype: "application/json",
        subject: format!(
            "{collection}/{}",
            event.scope_id.as_deref().unwrap_or_default()
        ),
        data: Data {
            scope,
            tenant: event.tenant_id.as_deref().unwrap_or_default(),
            key_id: event.api_key_id.as_deref(),
            threshold: decimal(event.threshold),
            amount: decimal(event.amount),
            spent: decimal(event.spent),
            period: event.period.as_deref().unwrap_or_default(),
            period_start: event
                .period_start
                .unwrap_or_default()
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
            event_type: EVENT_TYPE.into(),
            scope_kind: Some("key".into()),
            scope_id: Some("key_9".into()),
            tenant_id: Some("acme".into()),
            api_key_id: Some("key_9".into()),
            period: Some("month".into()),
            period_start: Some(at("2026-05-01T00:00:00Z")),
            threshold: Some(d("0.800000")),
            amount: Some(d("50.0000000000000000")),
            spent: Some(d("40.0035000000000000")),
            subject: None,
            data: None,
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
            scope_kind: Some("tenant".into()),
            scope_id: Some("acme".into()),
            api_key_id: None,
            ..row()
        };
        let value: serde_json::Value = serde_json::from_slice(&body(&event)).unwrap();
        assert_eq!(value["subject"], "tenants/acme");
        assert!(value["data"]["key_id"].is_null());
    }

    #[test]
    fn a_drift_event_carries_its_line_as_data() {
        let line = serde_json::json!({"day": "2026-12-06", "model": "gpt-5.5", "status": "drift",
            "difference": {"requests": -1, "cost": "-0.0035"}});
        let event = EventRow {
            event_type: DRIFT_EVENT_TYPE.into(),
            scope_kind: None,
            scope_id: None,
            tenant_id: None,
            api_key_id: None,
            period: None,
            period_start: None,
            threshold: None,
            amount: None,
            spent: None,
            subject: Some("reconciliation/2026-12-06/model=gpt-5.5".into()),
            data: Some(line.clone()),
            ..row()
        };
        let bytes = body(&event);
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["type"], DRIFT_EVENT_TYPE);
        assert_eq!(value["subject"], "reconciliation/2026-12-06/model=gpt-5.5");
        assert_eq!(value["data"], line);
        assert_eq!(body(&event), bytes);
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
