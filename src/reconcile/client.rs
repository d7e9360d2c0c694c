//! The OpenAI organization API as Tollgate reads it: one page of the Usage
//! API's completions buckets or of the Costs API's buckets, and the Projects
//! API's projects and their keys (for key discovery). Wire types follow
//! OpenAI's published schema (`UsageResponse`, `UsageTimeBucket`,
//! `UsageCompletionsResult`, `CostsResult`, `ProjectApiKey`).
//!
//! Bounded: one request has a timeout, a page body is read up to
//! `max_page_bytes`, a 429 or 5xx is retried at most twice (honouring
//! `retry-after` up to a minute). Money is exact: a cost's `amount.value` is
//! parsed from the JSON number's own text, never through a float. It never
//! logs or returns the admin key, and its errors carry no URL with a query.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::reconcile::ReconcileConfig;
use crate::config::Secret;

/// Attempts per request (the first included).
const ATTEMPTS: u32 = 3;
/// The longest `retry-after` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Objects per Projects API page (its maximum).
const LIST_LIMIT: u32 = 100;
/// Projects and keys read at most during one discovery.
const MAX_LISTED: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{path}: HTTP {status}: {message}")]
    Status {
        path: String,
        status: u16,
        message: String,
    },
    #[error("{path}: {message}")]
    Transport { path: String, message: String },
    #[error("{path}: the answer is larger than {limit} bytes")]
    TooLarge { path: String, limit: usize },
    #[error("{path}: unreadable answer: {message}")]
    Parse { path: String, message: String },
}

/// `1d` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    Day,
    Hour,
}

impl Width {
    pub fn as_str(self) -> &'static str {
        match self {
            Width::Day => "1d",
            Width::Hour => "1h",
        }
    }

    pub fn seconds(self) -> i64 {
        match self {
            Width::Day => 86_400,
            Width::Hour => 3_600,
        }
    }
}

/// `UsageResponse`: buckets of results, and the cursor to the next page.
#[derive(Debug, Deserialize)]
pub struct Page<T> {
    pub data: Vec<Bucket<T>>,
    pub has_more: bool,
    pub next_page: Option<String>,
}

/// `UsageTimeBucket`.
#[derive(Debug, Deserialize)]
pub struct Bucket<T> {
    pub start_time: i64,
    pub end_time: i64,
    pub results: Vec<T>,
}

/// `UsageCompletionsResult`: the fields Tollgate compares and groups by.
#[derive(Debug, Clone, Deserialize)]
pub struct UsageResult {
    pub num_model_requests: i64,
    pub input_tokens: i64,
    #[serde(default)]
    pub input_cached_tokens: i64,
    pub output_tokens: i64,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub api_key_id: Option<String>,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub service_tier: Option<String>,
    #[serde(default)]
    pub batch: Option<bool>,
}

/// `CostsResult` as sent; [`CostResult`] is what Tollgate keeps of it.
#[derive(Debug, Deserialize)]
struct WireCost {
    amount: WireAmount,
    #[serde(default)]
    line_item: Option<String>,
    #[serde(default)]
    project_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireAmount {
    value: Box<RawValue>,
    currency: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CostResult {
    pub amount: Decimal,
    pub currency: String,
    pub line_item: Option<String>,
    pub project_id: Option<String>,
}

/// A JSON number's text as an exact decimal (`0.06`, `1.5e-7`, `12`).
pub fn exact_number(text: &str) -> Option<Decimal> {
    let text = text.trim();
    if text.contains(['e', 'E']) {
        Decimal::from_scientific(text).ok()
    } else {
        Decimal::from_str_exact(text)
            .ok()
            .or_else(|| Decimal::from_str(text).ok())
    }
}

#[derive(Debug, Deserialize)]
struct List<T> {
    data: Vec<T>,
    #[serde(default)]
    has_more: bool,
    #[serde(default)]
    last_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Project {
    pub id: String,
}

/// `ProjectApiKey`: its id and the redacted form of its secret.
#[derive(Debug, Clone, Deserialize)]
pub struct ProjectKey {
    pub id: String,
    pub redacted_value: String,
}

/// One organization API client; counts the requests it made.
pub struct OrgClient {
    http: reqwest::Client,
    base: String,
    key: Secret,
    max_bytes: usize,
    requests: AtomicU64,
}

impl OrgClient {
    pub fn new(config: &ReconcileConfig) -> Result<Self, FetchError> {
        let timeout = Duration::from_secs(config.request_timeout_secs);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Transport {
                path: String::new(),
                message: e.without_url().to_string(),
            })?;
        Ok(Self {
            http,
            base: config.url.trim_end_matches('/').to_owned(),
            key: config.admin_key.clone(),
            max_bytes: config.max_page_bytes,
            requests: AtomicU64::new(0),
        })
    }

    /// HTTP requests made so far (retries included).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// One page of `GET /organization/usage/completions`, grouped by every
    /// field Tollgate compares.
    pub async fn usage_page(
        &self,
        width: Width,
        start: i64,
        end: i64,
        limit: u32,
        page: Option<&str>,
    ) -> Result<Page<UsageResult>, FetchError> {
        let mut query = vec![
            ("start_time", start.to_string()),
            ("end_time", end.to_string()),
            ("bucket_width", width.as_str().to_owned()),
            ("limit", limit.to_string()),
        ];
        for field in ["model", "api_key_id", "project_id", "service_tier", "batch"] {
            query.push(("group_by", field.to_owned()));
        }
        if let Some(page) = page {
            query.push(("page", page.to_owned()));
        }
        let path = "/organization/usage/completions";
        let body = self.get(path, &query).await?;
        parse(path, &body)
    }

    /// One page of `GET /organization/costs` (daily), grouped by line item
    /// and project.
    pub async fn costs_page(
        &self,
        start: i64,
        end: i64,
        limit: u32,
        page: Option<&str>,
    ) -> Result<Page<CostResult>, FetchError> {
        let mut query = vec![
            ("start_time", start.to_string()),
            ("end_time", end.to_string()),
            ("bucket_width", "1d".to_owned()),
            ("limit", limit.to_string()),
            ("group_by", "line_item".to_owned()),
            ("group_by", "project_id".to_owned()),
        ];
        if let Some(page) = page {
            query.push(("page", page.to_owned()));
        }
        let path = "/organization/costs";
        let body = self.get(path, &query).await?;
        let wire: Page<WireCost> = parse(path, &body)?;
        let mut data = Vec::with_capacity(wire.data.len());
        for bucket in wire.data {
            let mut results = Vec::with_capacity(bucket.results.len());
            for cost in bucket.results {
                let amount =
                    exact_number(cost.amount.value.get()).ok_or_else(|| FetchError::Parse {
                        path: path.to_owned(),
                        message: format!("amount.value {} is not a number", cost.amount.value),
                    })?;
                results.push(CostResult {
                    amount,
                    currency: cost.amount.currency.to_ascii_lowercase(),
                    line_item: cost.line_item,
                    project_id: cost.project_id,
                });
            }
            data.push(Bucket {
                start_time: bucket.start_time,
                end_time: bucket.end_time,
                results,
            });
        }
        Ok(Page {
            data,
            has_more: wire.has_more,
            next_page: wire.next_page,
        })
    }

    /// Every active project (`GET /organization/projects`, paged).
    pub async fn projects(&self) -> Result<Vec<Project>, FetchError> {
        self.list("/organization/projects").await
    }

    /// Every key of one project.
    pub async fn project_keys(&self, project: &str) -> Result<Vec<ProjectKey>, FetchError> {
        let path = format!(
            "/organization/projects/{}/api_keys",
            form_urlencoded::byte_serialize(project.as_bytes()).collect::<String>()
        );
        self.list(&path).await
    }

    async fn list<T>(&self, path: &str) -> Result<Vec<T>, FetchError>
    where
        T: for<'de> Deserialize<'de> + HasId,
    {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut query = vec![("limit", LIST_LIMIT.to_string())];
            if let Some(after) = &after {
                query.push(("after", after.clone()));
            }
            let body = self.get(path, &query).await?;
            let page: List<T> = parse(path, &body)?;
            let last = page
                .last_id
                .clone()
                .or_else(|| page.data.last().map(|t| t.id().to_owned()));
            all.extend(page.data);
            match last {
                Some(last) if page.has_more && all.len() < MAX_LISTED => after = Some(last),
                _ => return Ok(all),
            }
        }
    }

    /// A GET with the admin key; retried on 429, 5xx and transport errors.
    async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Vec<u8>, FetchError> {
        let url = format!("{}{path}", self.base);
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.requests.fetch_add(1, Ordering::Relaxed);
            match self.get_once(path, &url, query).await {
                Ok(body) => return Ok(body),
                Err((error, retry_after)) => {
                    let retryable = match &error {
                        FetchError::Status { status, .. } => *status == 429 || *status >= 500,
                        FetchError::Transport { .. } => true,
                        _ => false,
                    };
                    if !retryable || attempt >= ATTEMPTS {
                        return Err(error);
                    }
                    let wait = retry_after.unwrap_or(Duration::from_millis(500 << attempt));
                    tokio::time::sleep(wait.min(MAX_RETRY_AFTER)).await;
                }
            }
        }
    }

    async fn get_once(
        &self,
        path: &str,
        url: &str,
        query: &[(&str, String)],
    ) -> Result<Vec<u8>, (FetchError, Option<Duration>)> {
        let transport = |e: reqwest::Error| {
            let e = e.without_url();
            let message = if e.is_timeout() {
                "timed out".to_owned()
            } else {
                e.to_string()
            };
            (
                FetchError::Transport {
                    path: path.to_owned(),
                    message,
                },
                None,
            )
        };
        let mut response = self
            .http
            .get(url)
            .query(query)
            .bearer_auth(self.key.expose())
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > self.max_bytes {
                return Err((
                    FetchError::TooLarge {
                        path: path.to_owned(),
                        limit: self.max_bytes,
                    },
                    None,
                ));
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return Ok(body);
        }
        Err((
            FetchError::Status {
                path: path.to_owned(),
                status: status.as_u16(),
                message: error_message(&body),
            },
            retry_after,
        ))
    }
}

/// Lists are paged by the id of their last object.
pub trait HasId {
    fn id(&self) -> &str;
}

impl HasId for Project {
    fn id(&self) -> &str {
        &self.id
    }
}

impl HasId for ProjectKey {
    fn id(&self) -> &str {
        &self.id
    }
}

fn parse<T: for<'de> Deserialize<'de>>(path: &str, body: &[u8]) -> Result<T, FetchError> {
    serde_json::from_slice(body).map_err(|e| FetchError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// The OpenAI envelope's message, cut short; the raw start of the body
/// otherwise.
fn error_message(body: &[u8]) -> String {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    message.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn json_numbers_become_exact_decimals() {
        for (text, exact) in [
            ("0.06", "0.06"),
            ("24.55", "24.55"),
            ("0.11550000000000001", "0.11550000000000001"),
            ("12", "12"),
            ("1.5e-7", "0.00000015"),
            ("2E3", "2000"),
            ("-0.5", "-0.5"),
        ] {
            assert_eq!(
                exact_number(text).unwrap().normalize().to_string(),
                exact,
                "{text}"
            );
        }
        assert!(exact_number("\"1\"").is_none());
        assert!(exact_number("null").is_none());
    }

    #[test]
    fn a_costs_page_keeps_the_amount_as_written() {
        let body = r#"{"object":"page","data":[{"object":"bucket","start_time":1,"end_time":2,
            "results":[{"object":"organization.costs.result","amount":{"value":0.1234567890123456789,"currency":"USD"},
            "line_item":"gpt-5.5-2026-01-01, input","project_id":"proj_a","quantity":null,"quantity_unit":null}]}],
            "has_more":false,"next_page":null}"#;
        let wire: Page<WireCost> = parse("/x", body.as_bytes()).unwrap();
        let value = wire.data[0].results[0].amount.value.get();
        assert_eq!(
            exact_number(value).unwrap().to_string(),
            "0.1234567890123456789"
        );
    }

    #[test]
    fn error_messages_come_from_the_envelope() {
        assert_eq!(
            error_message(br#"{"error":{"message":"Invalid admin key","type":"x"}}"#),
            "Invalid admin key"
        );
        assert_eq!(error_message(b"oops"), "oops");
    }
}
