//! A counting stand-in for the billing sinks (the benchmark's; the tests'
//! schema-checking stand-ins live in tests/common/billing_sinks.rs): each
//! API's path, every event counted and its id deduplicated, 2xx at once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::Value;

#[derive(Default)]
pub(crate) struct Counts {
    pub received: u64,
    pub unique: HashSet<String>,
}

#[derive(Clone, Default)]
pub(crate) struct Sinks {
    pub counts: Arc<Mutex<HashMap<&'static str, Counts>>>,
}

impl Sinks {
    pub(crate) async fn start() -> anyhow::Result<(Self, String)> {
        let sinks = Sinks::default();
        let app = axum::Router::new()
            .route("/api/v1/events", axum::routing::post(openmeter))
            .route("/api/v1/events/batch", axum::routing::post(lago))
            .route("/v1/billing/meter_events", axum::routing::post(stripe))
            .route("/{hook}", axum::routing::post(webhook))
            .with_state(sinks.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((sinks, base))
    }

    pub(crate) fn unique(&self, sink: &str) -> u64 {
        self.counts
            .lock()
            .map(|c| c.get(sink).map_or(0, |c| c.unique.len() as u64))
            .unwrap_or(0)
    }

    pub(crate) fn received(&self, sink: &str) -> u64 {
        self.counts
            .lock()
            .map(|c| c.get(sink).map_or(0, |c| c.received))
            .unwrap_or(0)
    }

    fn add(&self, sink: &'static str, ids: impl Iterator<Item = String>) {
        if let Ok(mut counts) = self.counts.lock() {
            let c = counts.entry(sink).or_default();
            for id in ids {
                c.received += 1;
                c.unique.insert(id);
            }
        }
    }
}

fn ids(events: &Value, field: &str) -> Vec<String> {
    events
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e[field].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn openmeter(State(s): State<Sinks>, body: Bytes) -> StatusCode {
    let events: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    s.add("openmeter", ids(&events, "id").into_iter());
    StatusCode::NO_CONTENT
}

async fn webhook(State(s): State<Sinks>, Path(_h): Path<String>, body: Bytes) -> StatusCode {
    let events: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    s.add("webhook", ids(&events, "id").into_iter());
    StatusCode::OK
}

async fn lago(State(s): State<Sinks>, body: Bytes) -> StatusCode {
    let batch: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    s.add("lago", ids(&batch["events"], "transaction_id").into_iter());
    StatusCode::OK
}

async fn stripe(State(s): State<Sinks>, body: Bytes) -> StatusCode {
    let id = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "identifier")
        .map(|(_, v)| v.into_owned());
    s.add("stripe", id.into_iter());
    StatusCode::OK
}
