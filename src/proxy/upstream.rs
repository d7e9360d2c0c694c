//! The backend client: one pooled HTTP client per upstream, credentials
//! attached here and nowhere else.
//!
//! OpenAI upstreams get `Authorization: Bearer`, Azure ones `api-key`. The
//! client's own `Authorization` is never forwarded. Only a short list of
//! response headers comes back to the client.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{UpstreamConfig, UpstreamKind};
use crate::usage::ResponseSummary;

pub struct Upstream {
    pub name: String,
    base_url: String,
    api_version: Option<String>,
    /// The header carrying the upstream's credential, built once.
    credential: (HeaderName, HeaderValue),
    /// `<base>/responses<suffix>` for the routed calls, parsed once: URL
    /// parsing (with IDNA host checks) was a visible share of every request.
    routed_urls: Vec<(&'static str, reqwest::Url)>,
    client: reqwest::Client,
}

/// Suffixes of the calls made on every routed request.
const ROUTED_SUFFIXES: [&str; 3] = ["", "/compact", "/input_tokens"];

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            // Stay below common upstream idle closes, or a reused connection
            // fails with "connection closed before message completed".
            .pool_idle_timeout(Duration::from_secs(50))
            .tcp_nodelay(true)
            // Long SSE streams on one HTTP/2 connection hit the server's
            // concurrent-stream limit; HTTP/1.1 with a pool scales instead.
            .http1_only()
            // A redirect is the upstream's answer to pass on, not to follow:
            // following it would send the credential wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let mut credential = match config.kind {
            UpstreamKind::Openai => {
                HeaderValue::try_from(format!("Bearer {}", config.key.expose()))
            }
            UpstreamKind::Azure => HeaderValue::try_from(config.key.expose()),
        }
        .unwrap_or_else(|_| HeaderValue::from_static(""));
        credential.set_sensitive(true);
        let credential_header = match config.kind {
            UpstreamKind::Openai => http::header::AUTHORIZATION,
            UpstreamKind::Azure => HeaderName::from_static("api-key"),
        };
        let mut upstream = Self {
            name: config.name.clone(),
            base_url: config.url.trim_end_matches('/').to_owned(),
            api_version: config.api_version.clone(),
            credential: (credential_header, credential),
            routed_urls: Vec::new(),
            client,
        };
        upstream.routed_urls = ROUTED_SUFFIXES
            .iter()
            .filter_map(|suffix| {
                let url = reqwest::Url::parse(&upstream.url_text(suffix)).ok()?;
                Some((*suffix, url))
            })
            .collect();
        Ok(upstream)
    }

    fn url_text(&self, suffix: &str) -> String {
        let mut url = format!("{}/responses{suffix}", self.base_url);
        if let Some(version) = &self.api_version {
            url.push(if suffix.contains('?') { '&' } else { '?' });
            url.push_str("api-version=");
            url.push_str(version);
        }
        url
    }

    /// A request to `<base>/responses<suffix>` carrying the upstream's
    /// credential (`suffix` may hold a query string).
    pub fn request(&self, method: reqwest::Method, suffix: &str) -> reqwest::RequestBuilder {
        let builder = match self.routed_urls.iter().find(|(known, _)| *known == suffix) {
            Some((_, url)) => self.client.request(method, url.clone()),
            // An unparsable URL fails at `send`, as a request error.
            None => self.client.request(method, self.url_text(suffix)),
        };
        let (name, value) = &self.credential;
        builder.header(name.clone(), value.clone())
    }

    /// One look at a stored response: `Ok(None)` when the upstream no longer
    /// has it, `Err(())` when it could not tell (unreachable, 5xx, timeout).
    pub async fn fetch_response(
        &self,
        response_id: &str,
        within: Duration,
    ) -> Result<Option<ResponseSummary>, ()> {
        let path = format!("/{}", encode_path_segment(response_id));
        let response =
            tokio::time::timeout(within, self.request(reqwest::Method::GET, &path).send())
                .await
                .map_err(|_| ())?
                .map_err(|_| ())?;
        if response.status() == http::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(());
        }
        let body = tokio::time::timeout(within, response.bytes())
            .await
            .map_err(|_| ())?
            .map_err(|_| ())?;
        ResponseSummary::from_response_json(&body)
            .map(Some)
            .map_err(|_| ())
    }

    /// The final state of a response whose stream we lost, by asking the
    /// upstream for it (`GET /responses/{id}`; needs `store` not false).
    /// Polls while it is still running, until `within` has passed. `None`
    /// when the upstream does not have it or never reports usage.
    pub async fn recover(&self, response_id: &str, within: Duration) -> Option<ResponseSummary> {
        let deadline = tokio::time::Instant::now() + within;
        let mut wait = Duration::from_millis(200);
        let path = format!("/{}", encode_path_segment(response_id));
        loop {
            let sent =
                tokio::time::timeout_at(deadline, self.request(reqwest::Method::GET, &path).send())
                    .await;
            let response = match sent {
                Ok(Ok(response)) if response.status().is_success() => response,
                Ok(Ok(response)) if response.status().is_client_error() => return None,
                Err(_) => return None,
                _ => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            let body = tokio::time::timeout_at(deadline, response.bytes())
                .await
                .ok()?
                .ok()?;
            let summary = ResponseSummary::from_response_json(&body).ok()?;
            match summary.status.as_deref() {
                Some("queued" | "in_progress") if tokio::time::Instant::now() + wait < deadline => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                _ => return summary.usage.is_some().then_some(summary),
            }
        }
    }
}

/// Response ids are opaque to us: keep them from changing the path.
pub fn encode_path_segment(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Response headers the client gets from the upstream (CONTRACT §3). Takes
/// the upstream's map and moves the kept entries: cloning a parsed header
/// name or value allocates, and this runs on every response.
pub fn forwarded_headers(upstream: HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    let mut keep = false;
    for (name, value) in upstream {
        // `None` continues the previous name's values.
        if let Some(name) = name {
            let n = name.as_str();
            keep = n == "content-type"
                || n == "x-request-id"
                || n == "openai-processing-ms"
                || n == "openai-version"
                || n == "retry-after"
                || n == "retry-after-ms"
                || n == "x-should-retry"
                || n.starts_with("x-ratelimit-");
            if keep {
                out.append(name, value);
            }
        } else if keep {
            if let Some((last, _)) = out.iter().last() {
                let last = last.clone();
                out.append(last, value);
            }
        }
    }
    out
}

/// How long the upstream asked us to wait before retrying, if it said.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = value("retry-after-ms").and_then(|v| v.parse::<u64>().ok()) {
        return Some(Duration::from_millis(ms));
    }
    value("retry-after")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 60.0)
        .map(Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_listed_headers_are_forwarded() {
        let mut upstream = HeaderMap::new();
        for (k, v) in [
            ("content-type", "text/event-stream"),
            ("x-request-id", "req_1"),
            ("x-ratelimit-remaining-tokens", "10"),
            ("set-cookie", "secret"),
            ("openai-organization", "org-internal"),
        ] {
            upstream.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        upstream.append("set-cookie", HeaderValue::from_static("second"));
        upstream.append(
            "x-ratelimit-remaining-tokens",
            HeaderValue::from_static("9"),
        );
        let out = forwarded_headers(upstream);
        assert_eq!(out.len(), 4);
        assert!(out.get("set-cookie").is_none());
        assert!(out.get("openai-organization").is_none());
        let remaining: Vec<_> = out
            .get_all("x-ratelimit-remaining-tokens")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(remaining, ["10", "9"]);
    }

    #[test]
    fn retry_after_prefers_milliseconds_and_caps_seconds() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("3600"));
        assert_eq!(retry_after(&h), None);
    }
}
