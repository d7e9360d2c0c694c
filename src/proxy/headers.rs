//! Which of the client's request headers reach the upstream.
//!
//! An allowlist, never a denylist: a header not named here stays at the
//! gateway. Passed on are the headers OpenAI's own SDKs send to describe
//! themselves and correlate requests:
//! - `x-client-request-id`: the client's correlation id (validated, also
//!   recorded on the ledger row); without one the gateway's request id is
//!   sent in its place so the upstream's logs still correlate;
//! - `user-agent`, `x-stainless-*` (SDK language, version, OS, retry count,
//!   read timeout): descriptive only;
//! - `openai-beta`: opts in to beta behaviour of the same API.
//!
//! Never passed on: credentials (`authorization`, `api-key`, `cookie`, the
//! upstream credential is the gateway's own), the organisation and project
//! selectors (`openai-organization`, `openai-project`: they would pick whose
//! account pays), hop-by-hop and framing headers (the client is rebuilt).

use http::{HeaderMap, HeaderName, HeaderValue};

pub const CLIENT_REQUEST_ID: &str = "x-client-request-id";
/// OpenAI accepts ids of up to 512 characters.
pub const MAX_CLIENT_REQUEST_ID: usize = 512;

const PASSED: [&str; 2] = ["user-agent", "openai-beta"];
const PASSED_PREFIX: &str = "x-stainless-";
/// Bounds what one client can make the gateway copy on every request.
const MAX_PASSED_VALUE: usize = 1024;
const MAX_PASSED_HEADERS: usize = 32;

/// The client's `x-client-request-id` when it is usable: 1..=512 visible
/// ASCII characters (no NUL, no control characters). Anything else is
/// dropped, not refused: the header is only for correlation.
pub fn client_request_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CLIENT_REQUEST_ID)?.to_str().ok()?;
    let valid = !value.is_empty()
        && value.len() <= MAX_CLIENT_REQUEST_ID
        && value.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    valid.then(|| value.to_owned())
}

/// The headers to add to the upstream request, `x-client-request-id`
/// included (the client's, else `request_id`).
pub fn forwarded(headers: &HeaderMap, request_id: &str) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        if out.len() >= MAX_PASSED_HEADERS {
            break;
        }
        let passed = PASSED.contains(&name.as_str()) || name.as_str().starts_with(PASSED_PREFIX);
        if passed && value.len() <= MAX_PASSED_VALUE {
            out.append(name.clone(), value.clone());
        }
    }
    let id = client_request_id(headers)
        .and_then(|id| HeaderValue::from_str(&id).ok())
        .or_else(|| HeaderValue::from_str(request_id).ok());
    if let Some(id) = id {
        out.insert(HeaderName::from_static(CLIENT_REQUEST_ID), id);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn map(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_the_allowlist_reaches_the_upstream() {
        let h = map(&[
            ("authorization", b"Bearer sk-tenant"),
            ("api-key", b"k"),
            ("cookie", b"c=1"),
            ("openai-organization", b"org-x"),
            ("openai-project", b"proj-x"),
            ("x-forwarded-for", b"1.2.3.4"),
            ("user-agent", b"OpenAI/Python 3.51.0"),
            ("x-stainless-lang", b"python"),
            ("x-stainless-retry-count", b"0"),
            ("openai-beta", b"responses_websockets=2026-02-06"),
            ("x-client-request-id", b"abc-123"),
        ]);
        let out = forwarded(&h, "req_gw");
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "openai-beta",
                "user-agent",
                "x-client-request-id",
                "x-stainless-lang",
                "x-stainless-retry-count"
            ]
        );
        assert_eq!(out["x-client-request-id"], "abc-123");
    }

    #[test]
    fn a_missing_or_bad_client_id_is_replaced_by_the_gateways() {
        assert_eq!(
            forwarded(&HeaderMap::new(), "req_gw")[CLIENT_REQUEST_ID],
            "req_gw"
        );
        let long = "a".repeat(MAX_CLIENT_REQUEST_ID + 1);
        for bad in [&b""[..], long.as_bytes(), b"a\tb", "é".as_bytes()] {
            let h = map(&[(CLIENT_REQUEST_ID, bad)]);
            assert_eq!(client_request_id(&h), None);
            assert_eq!(forwarded(&h, "req_gw")[CLIENT_REQUEST_ID], "req_gw");
        }
        let ok = "b".repeat(MAX_CLIENT_REQUEST_ID);
        let h = map(&[(CLIENT_REQUEST_ID, ok.as_bytes())]);
        assert_eq!(client_request_id(&h), Some(ok));
    }

    #[test]
    fn oversized_values_are_not_copied() {
        let big = "x".repeat(MAX_PASSED_VALUE + 1);
        let h = map(&[("user-agent", big.as_bytes())]);
        assert!(forwarded(&h, "r").get("user-agent").is_none());
    }
}
