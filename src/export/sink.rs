//! What every sink shares: the event handed to it ([`Event`]), the answer it
//! gives ([`Answer`]), the HTTP client, the reading of a status line, and
//! [`deliver`], which sends a step's events in the sink's batches and says,
//! per event, sent, refused (quarantined with the sink's reason) or not sent
//! (retried with the next step).
//!
//! A whole batch refused with a 4xx (OpenMeter's 400 problem, a Lago 422
//! without per-event details) is sent again one event at a time, so one bad
//! event is isolated and the others go through. A 429 is waited out when
//! its `Retry-After` is short; otherwise the step fails and the job backs
//! off. Nothing here logs a credential or the sink's URL.

use std::time::Duration;

use futures_util::StreamExt;

use super::event::ExportRow;
use super::{lago, openmeter, stripe, webhook};
use crate::config::exports::SinkConfig;
use crate::config::Secret;

/// One ledger row bound for a sink, with the tenant's id in that sink.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub row: &'a ExportRow,
    /// OpenMeter subject, Lago external subscription id, Stripe customer
    /// id; the tenant id for the webhook.
    pub customer: &'a str,
}

/// A sink's answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Accepted,
    /// The whole request refused for what it holds (a 4xx).
    Refused(String),
    /// Not taken, for now (5xx, 429, timeout, connection).
    Failed {
        reason: String,
        retry_after: Option<Duration>,
    },
}

/// Per event, after [`deliver`].
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Sent,
    Refused(String),
    NotSent,
}

/// The longest `Retry-After` waited out inside a step.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Attempts of one request inside a step when told to retry after a while.
const RETRY_AFTER_ATTEMPTS: u32 = 3;
/// Sink reasons are cut to this many characters.
const MAX_REASON: usize = 300;

pub struct SinkClient {
    pub name: &'static str,
    pub config: SinkConfig,
    /// The webhook's signing secret (the alerts' one).
    pub signing: Secret,
    pub http: reqwest::Client,
}

impl SinkClient {
    pub fn new(name: &'static str, config: SinkConfig, signing: Secret) -> reqwest::Result<Self> {
        let timeout = Duration::from_secs(config.request_timeout_secs);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            name,
            config,
            signing,
            http,
        })
    }

    /// Events per request.
    pub fn max_batch(&self) -> usize {
        let cap = match self.name {
            "lago" => lago::MAX_BATCH,
            "stripe" => 1,
            _ => usize::MAX,
        };
        self.config.batch_size.min(cap).max(1)
    }

    fn concurrency(&self) -> usize {
        if self.name == "stripe" {
            self.config.concurrency
        } else {
            1
        }
    }

    async fn post(&self, events: &[Event<'_>]) -> Answer {
        match self.name {
            "openmeter" => openmeter::post(self, events).await,
            "lago" => lago::post(self, events).await,
            "stripe" => stripe::post(self, events).await,
            _ => webhook::post(self, events).await,
        }
    }

    /// One request, waiting out a short `Retry-After`.
    async fn post_patiently(&self, events: &[Event<'_>]) -> Answer {
        let mut attempt = 1;
        loop {
            let answer = self.post(events).await;
            match &answer {
                Answer::Failed {
                    retry_after: Some(wait),
                    ..
                } if *wait <= MAX_RETRY_AFTER && attempt < RETRY_AFTER_ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(*wait).await;
                }
                _ => return answer,
            }
        }
    }
}

/// Sends `events` in the sink's batches; one outcome per event, in order.
/// After the first failed request no further request starts.
pub async fn deliver(client: &SinkClient, events: &[Event<'_>]) -> (Vec<Outcome>, Option<String>) {
    let mut outcomes = vec![Outcome::NotSent; events.len()];
    let mut failure: Option<String> = None;
    let size = client.max_batch();
    let starts: Vec<usize> = (0..events.len()).step_by(size).collect();
    // Windows of `concurrency` requests in flight; no closure holds the
    // events (a future built in a closure is not `Send` for every lifetime).
    for window in starts.chunks(client.concurrency()) {
        let mut flight = futures_util::stream::FuturesOrdered::new();
        for &at in window {
            let end = (at + size).min(events.len());
            flight.push_back(send_chunk(client, &events[at..end], at));
        }
        while let Some((at, chunk_outcomes, failed)) = flight.next().await {
            for (i, outcome) in chunk_outcomes.into_iter().enumerate() {
                outcomes[at + i] = outcome;
            }
            if let Some(reason) = failed {
                failure.get_or_insert(reason);
            }
        }
        if failure.is_some() {
            break;
        }
    }
    (outcomes, failure)
}

async fn send_chunk(
    client: &SinkClient,
    chunk: &[Event<'_>],
    at: usize,
) -> (usize, Vec<Outcome>, Option<String>) {
    let (outcomes, failed) = send_one_chunk(client, chunk).await;
    (at, outcomes, failed)
}

async fn send_one_chunk(
    client: &SinkClient,
    chunk: &[Event<'_>],
) -> (Vec<Outcome>, Option<String>) {
    match client.post_patiently(chunk).await {
        Answer::Accepted => (vec![Outcome::Sent; chunk.len()], None),
        Answer::Refused(reason) if chunk.len() == 1 => (vec![Outcome::Refused(cut(&reason))], None),
        Answer::Refused(_) => {
            // Find the bad ones: one request per event.
            let mut outcomes = Vec::with_capacity(chunk.len());
            for event in chunk {
                let outcome = match client.post_patiently(std::slice::from_ref(event)).await {
                    Answer::Accepted => Outcome::Sent,
                    Answer::Refused(reason) => Outcome::Refused(cut(&reason)),
                    Answer::Failed { reason, .. } => {
                        outcomes.resize(chunk.len(), Outcome::NotSent);
                        return (outcomes, Some(reason));
                    }
                };
                outcomes.push(outcome);
            }
            (outcomes, None)
        }
        Answer::Failed { reason, .. } => (vec![Outcome::NotSent; chunk.len()], Some(reason)),
    }
}

fn cut(reason: &str) -> String {
    reason.chars().take(MAX_REASON).collect()
}

/// A response read into an answer: 2xx → `on_success(body)`; 429 with its
/// `Retry-After`; 408 and 5xx failed; any other 4xx → `on_refused(status,
/// body)`.
pub async fn answer(
    sent: reqwest::Result<reqwest::Response>,
    on_success: impl FnOnce(&[u8]) -> Answer,
    on_refused: impl FnOnce(u16, &[u8]) -> Answer,
) -> Answer {
    let response = match sent {
        Ok(response) => response,
        Err(err) => {
            return Answer::Failed {
                reason: describe(err),
                retry_after: None,
            }
        }
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(err) => {
            return Answer::Failed {
                reason: describe(err),
                retry_after: None,
            }
        }
    };
    match status {
        200..=299 => on_success(&body),
        429 => Answer::Failed {
            reason: "HTTP 429 (rate limited)".into(),
            retry_after: Some(retry_after.unwrap_or(Duration::from_secs(1))),
        },
        408 | 500..=599 => Answer::Failed {
            reason: format!("HTTP {status}"),
            retry_after,
        },
        _ => on_refused(status, &body),
    }
}

/// A refusal's text: the status and the start of the sink's body.
pub fn refusal(status: u16, body: &[u8]) -> String {
    cut(&format!("HTTP {status}: {}", String::from_utf8_lossy(body)))
}

/// The error and its causes, without the URL.
fn describe(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut text = if err.is_timeout() {
        "timed out".to_owned()
    } else {
        err.to_string()
    };
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    cut(&text)
}
