//! The backend client: one pooled HTTP client per upstream, credentials
//! attached here and nowhere else.
//!
//! OpenAI upstreams get `Authorization: Bearer`, Azure ones `api-key`. The
//! client's own `Authorization` is never forwarded. Only a short list of
//! response headers comes back to the client.
//!
//! The client is hyper's pooled HTTP/1.1 client with rustls (webpki roots)
//! and nothing on top: no redirect following (a redirect is the upstream's
//! answer to pass on; following it would carry the credential wherever it
//! points), no proxy lookup, no URL re-parsing per call.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{UpstreamConfig, UpstreamKind};
use crate::usage::ResponseSummary;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Why a call to the upstream produced no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the upstream URL is not valid: {0}")]
    Url(#[from] http::uri::InvalidUri),
    #[error("the upstream request could not be built: {0}")]
    Request(#[from] http::Error),
    #[error("error sending request: {0}")]
    Send(#[from] hyper_util::client::legacy::Error),
}

impl UpstreamError {
    /// The error with its causes ("…: client error (Connect): tcp connect
    /// error: Connection refused"), so an operator can tell a refused connect
    /// from a reset. It names no address.
    pub fn describe(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.ends_with(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        text
    }
}

pub struct Upstream {
    pub name: String,
    base_url: String,
    api_version: Option<String>,
    /// The header carrying the upstream's credential, built once.
    credential: (HeaderName, HeaderValue),
    /// `<base>/responses<suffix>` for the routed calls, parsed once (a `Uri`
    /// clone is a reference count, not a parse).
    routed_uris: Vec<(&'static str, Uri)>,
    client: HttpsClient,
}

/// Suffixes of the calls made on every routed request.
const ROUTED_SUFFIXES: [&str; 3] = ["", "/compact", "/input_tokens"];

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Result<Self, rustls::Error> {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        // The provider is named, not taken from the process default, so the
        // TLS setup cannot depend on which other crates enabled which one.
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        // HTTP/1.1 only: long SSE streams on one HTTP/2 connection hit the
        // server's concurrent-stream limit; a pool of HTTP/1.1 connections
        // scales instead.
        let client = Client::builder(TokioExecutor::new())
            // Stay below common upstream idle closes, or a reused connection
            // fails with "connection closed before message completed".
            .pool_idle_timeout(Duration::from_secs(50))
            .pool_timer(TokioTimer::new())
            // hyper's adaptive read buffer stays: a fixed 4 KiB one saved
            // 2 KiB per open stream but cost 10-15 % of event throughput on
            // large streams (more, smaller reads and frames; BENCHMARKS.md).
            .build(connector);
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
            routed_uris: Vec::new(),
            client,
        };
        upstream.routed_uris = ROUTED_SUFFIXES
            .iter()
            .filter_map(|suffix| {
                let uri = upstream.url_text(suffix).parse::<Uri>().ok()?;
                Some((*suffix, uri))
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

    /// Sends `method <base>/responses<suffix>` (`suffix` may hold a query
    /// string) with the upstream's credential; a non-empty `body` goes as
    /// JSON, and `request_id` as `x-client-request-id`.
    pub async fn send(
        &self,
        method: Method,
        suffix: &str,
        body: Bytes,
        request_id: Option<&str>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let mut extra = HeaderMap::new();
        if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
            extra.insert("x-client-request-id", id);
        }
        self.send_with_headers(method, suffix, body, extra).await
    }

    /// `method <base><path>` for resources outside `/responses`
    /// (`/conversations/...`), otherwise as [`Self::send_with_headers`].
    pub async fn send_resource(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        extra: HeaderMap,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let mut url = format!("{}{path}", self.base_url);
        if let Some(version) = &self.api_version {
            url.push(if path.contains('?') { '&' } else { '?' });
            url.push_str("api-version=");
            url.push_str(version);
        }
        self.send_uri(method, url.parse::<Uri>()?, body, extra)
            .await
    }

    /// [`Self::send`] with the client headers `headers::forwarded` chose.
    pub async fn send_with_headers(
        &self,
        method: Method,
        suffix: &str,
        body: Bytes,
        extra: HeaderMap,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let uri = match self.routed_uris.iter().find(|(known, _)| *known == suffix) {
            Some((_, uri)) => uri.clone(),
            None => self.url_text(suffix).parse::<Uri>()?,
        };
        self.send_uri(method, uri, body, extra).await
    }

    async fn send_uri(
        &self,
        method: Method,
        uri: Uri,
        body: Bytes,
        extra: HeaderMap,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let (name, value) = &self.credential;
        let mut request = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(name.clone(), value.clone());
        if !body.is_empty() {
            request = request.header(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        if let Some(headers) = request.headers_mut() {
            headers.extend(extra);
        }
        let request = request.body(Full::new(body))?;
        let sent_at = std::time::Instant::now();
        let response = self.client.request(request).await?;
        crate::telemetry::metrics::record_upstream(&self.name, sent_at.elapsed());
        Ok(response)
    }

    async fn get(&self, path: &str) -> Result<http::Response<Incoming>, UpstreamError> {
        self.send(Method::GET, path, Bytes::new(), None).await
    }

    /// One look at a stored response: `Ok(None)` when the upstream no longer
    /// has it, `Err(())` when it could not tell (unreachable, 5xx, timeout).
    pub async fn fetch_response(
        &self,
        response_id: &str,
        within: Duration,
    ) -> Result<Option<ResponseSummary>, ()> {
        let path = format!("/{}", encode_path_segment(response_id));
        let response = tokio::time::timeout(within, self.get(&path))
            .await
            .map_err(|_| ())?
            .map_err(|_| ())?;
        if response.status() == http::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(());
        }
        let body = tokio::time::timeout(within, response.into_body().collect())
            .await
            .map_err(|_| ())?
            .map_err(|_| ())?
            .to_bytes();
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
            let sent = tokio::time::timeout_at(deadline, self.get(&path)).await;
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
            let body = tokio::time::timeout_at(deadline, response.into_body().collect())
                .await
                .ok()?
                .ok()?
                .to_bytes();
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

    fn config(url: String) -> UpstreamConfig {
        UpstreamConfig {
            name: "tls".into(),
            url,
            key: crate::config::Secret::new("sk-upstream"),
            kind: UpstreamKind::Openai,
            connect_timeout_ms: 5_000,
            api_version: None,
        }
    }

    /// The TLS stack is set up at run time (provider, roots); an `https`
    /// upstream that does not speak TLS must come back as a send error that
    /// says why, never as a panic or a plaintext request.
    #[tokio::test]
    async fn an_https_upstream_goes_through_tls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut first = [0_u8; 1];
            tokio::io::AsyncReadExt::read_exact(&mut socket, &mut first)
                .await
                .unwrap();
            let _ = tokio::io::AsyncWriteExt::write_all(
                &mut socket,
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
            )
            .await;
            first[0]
        });
        let upstream = Upstream::new(&config(format!("https://127.0.0.1:{port}/v1"))).unwrap();
        let err = upstream
            .send(Method::POST, "", Bytes::from_static(b"{}"), None)
            .await
            .unwrap_err();
        // 0x16: a TLS handshake record, not the start of an HTTP request.
        assert_eq!(server.await.unwrap(), 0x16);
        assert!(matches!(err, UpstreamError::Send(_)), "{err:?}");
        assert!(!err.describe().contains("127.0.0.1"), "{}", err.describe());
    }

    #[test]
    fn an_invalid_upstream_url_is_an_error_not_a_panic() {
        let upstream = Upstream::new(&config("http://exa mple.com/v1".into())).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = runtime
            .block_on(upstream.send(Method::GET, "", Bytes::new(), None))
            .unwrap_err();
        assert!(matches!(err, UpstreamError::Url(_)), "{err:?}");
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
