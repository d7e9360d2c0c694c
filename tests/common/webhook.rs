//! A webhook receiver for budget alert tests: a real axum server on
//! 127.0.0.1:0 that verifies each delivery's signature with the shared
//! secret, answers 500 to the first `fail_first` attempts of every event id
//! and 200 after, and keeps every attempt it saw.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// One POST as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub id: String,
    pub body: Bytes,
    pub event: Value,
    pub content_type: String,
    pub signature_valid: bool,
    /// What the receiver answered.
    pub status: u16,
}

#[derive(Clone)]
struct Shared {
    secret: Vec<u8>,
    fail_first: usize,
    attempts: Arc<Mutex<Vec<Attempt>>>,
}

pub struct Receiver {
    pub url: String,
    shared: Shared,
}

impl Receiver {
    pub async fn start(secret: &str, fail_first: usize) -> Self {
        let shared = Shared {
            secret: secret.as_bytes().to_vec(),
            fail_first,
            attempts: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, shared }
    }

    pub fn attempts(&self) -> Vec<Attempt> {
        self.shared.attempts.lock().unwrap().clone()
    }

    /// The accepted (2xx) deliveries, by event id.
    pub fn accepted(&self) -> BTreeMap<String, Vec<Attempt>> {
        let mut by_id: BTreeMap<String, Vec<Attempt>> = BTreeMap::new();
        for attempt in self.attempts().into_iter().filter(|a| a.status == 200) {
            by_id.entry(attempt.id.clone()).or_default().push(attempt);
        }
        by_id
    }

    /// Every attempt, by event id.
    pub fn by_id(&self) -> BTreeMap<String, Vec<Attempt>> {
        let mut by_id: BTreeMap<String, Vec<Attempt>> = BTreeMap::new();
        for attempt in self.attempts() {
            by_id.entry(attempt.id.clone()).or_default().push(attempt);
        }
        by_id
    }

    /// Waits until `n` distinct events were accepted.
    pub async fn until_accepted(&self, n: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.accepted().len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {n} events accepted; attempts: {:#?}",
                self.accepted().len(),
                self.attempts()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `sha256=<hex HMAC-SHA256>` of `body` keyed by `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn receive(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = event["id"].as_str().unwrap_or_default().to_owned();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let signature_valid = header("x-tollgate-signature") == sign(&shared.secret, &body);
    let mut attempts = shared.attempts.lock().unwrap();
    let earlier = attempts.iter().filter(|a| a.id == id).count();
    let status = if !signature_valid {
        StatusCode::UNAUTHORIZED
    } else if earlier < shared.fail_first {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    attempts.push(Attempt {
        id,
        body: body.clone(),
        event,
        content_type: header("content-type"),
        signature_valid,
        status: status.as_u16(),
    });
    status
}
