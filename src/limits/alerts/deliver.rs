//! The delivery task: claims due outbox events, POSTs each as a signed
//! CloudEvent, records the outcome. A 2xx is delivered; anything else (a
//! status, a refused connection, the timeout) is retried after capped
//! exponential backoff, forever. Redirects are not followed (a 3xx is a
//! failure). It never logs the secret or a URL, and never records a
//! crossing.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::event;
use super::outbox::{self, Due};
use super::Alerts;
use crate::config::{AlertsConfig, Secret};

/// Events claimed per round (delivered concurrently).
const CLAIM_MAX: i64 = 16;
/// The longest wait between rounds: events another replica recorded are
/// picked up within this.
const IDLE: Duration = Duration::from_secs(1);
/// How much longer than an attempt's timeout a claim holds its event.
const HOLD_MARGIN: Duration = Duration::from_secs(30);
/// `last_error` is cut to this many characters.
const MAX_ERROR: usize = 512;

pub(super) struct Settings {
    secret: Secret,
    retry_base: Duration,
    retry_max: Duration,
    timeout: Duration,
}

impl Settings {
    /// `None` without a signing secret: this replica delivers nothing.
    pub(super) fn from_config(config: &AlertsConfig) -> Option<Self> {
        if config.signing_secret.is_empty() {
            return None;
        }
        Some(Self {
            secret: config.signing_secret.clone(),
            retry_base: Duration::from_millis(config.retry_base_ms),
            retry_max: Duration::from_secs(config.retry_max_secs),
            timeout: Duration::from_secs(config.request_timeout_secs),
        })
    }

    fn hold(&self) -> Duration {
        self.timeout + HOLD_MARGIN
    }
}

/// The wait after the `attempts`-th failed attempt: base, 2×base, 4×base …
/// at most `max`.
pub fn backoff(base: Duration, max: Duration, attempts: i32) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(31);
    base.saturating_mul(1 << doublings).min(max)
}

pub(super) async fn run(
    pool: PgPool,
    alerts: Arc<Alerts>,
    settings: Settings,
    stop: CancellationToken,
) {
    let client = match client(&settings) {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "no HTTP client for budget alerts; none are delivered");
            return;
        }
    };
    loop {
        // Cut at shutdown even mid-attempt: the claim's hold then lapses and
        // any replica retries it (at least once, never lost).
        let wait = tokio::select! {
            () = stop.cancelled() => return,
            wait = round(&pool, &client, &settings) => wait,
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            () = alerts.deliver.notified() => {}
        }
    }
}

fn client(settings: &Settings) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// One claim and its attempts; how long to wait before the next round.
async fn round(pool: &PgPool, client: &reqwest::Client, settings: &Settings) -> Duration {
    let due = match outbox::claim(pool, settings.hold(), CLAIM_MAX).await {
        Ok(due) => due,
        Err(err) => {
            tracing::warn!(error = %err, "budget alert delivery deferred");
            return IDLE;
        }
    };
    let attempts = due.iter().map(|d| attempt(client, &settings.secret, d));
    let outcomes = futures_util::future::join_all(attempts).await;
    let mut wait = if due.len() as i64 == CLAIM_MAX {
        Duration::ZERO
    } else {
        IDLE
    };
    for (due, outcome) in due.iter().zip(outcomes) {
        crate::telemetry::metrics::record_alert_delivery(outcome.is_ok());
        let saved = match outcome {
            Ok(()) => outbox::delivered(pool, &due.event.id).await,
            Err(error) => {
                let retry_in = backoff(settings.retry_base, settings.retry_max, due.event.attempts);
                wait = wait.min(retry_in);
                tracing::info!(event = %due.event.id, attempts = due.event.attempts, %error, "budget alert not delivered; retrying");
                outbox::failed(pool, &due.event.id, &error, retry_in).await
            }
        };
        if let Err(err) = saved {
            // The claim's hold lapses and the event is sent again.
            tracing::warn!(error = %err, event = %due.event.id, "budget alert outcome not recorded");
        }
    }
    wait
}

/// One POST; `Err` says why it is not delivered (no URL in it).
async fn attempt(client: &reqwest::Client, secret: &Secret, due: &Due) -> Result<(), String> {
    let body = event::body(&due.event);
    let signature = event::signature(secret.expose().as_bytes(), &body);
    let sent = client
        .post(&due.url)
        .header(http::header::CONTENT_TYPE, event::CONTENT_TYPE)
        .header(event::SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("HTTP {}", response.status().as_u16())),
        Err(err) => Err(describe(err)),
    }
}

/// The error and its causes, without the URL (it may carry a token).
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
    text.chars().take(MAX_ERROR).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let s = Duration::from_secs;
        let waits: Vec<_> = (1..=11).map(|n| backoff(s(1), s(300), n)).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300].map(s));
        assert_eq!(backoff(s(1), s(300), i32::MAX), s(300));
        assert_eq!(backoff(s(1), s(300), 0), s(1));
        assert_eq!(
            backoff(Duration::from_millis(50), s(300), 3),
            Duration::from_millis(200)
        );
    }
}
