//! The dashboard (CONTRACT §10): a static web UI compiled into the binary
//! from `assets/dashboard/`, served under `/dashboard`, and the `/` redirect
//! to it.
//!
//! It owns only the bytes of those files and the headers they travel with:
//! a content type per file, a Content-Security-Policy that lets the page load
//! nothing and call nothing outside its own origin, and cache headers. It
//! never reads the database or a credential: the page signs in by sending
//! the typed token to the public REST API itself, so every figure it shows
//! is one the API answered.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

/// Every file the dashboard serves: path under `/dashboard/`, content type,
/// bytes. A fixed list rather than a directory walk, so a stray file under
/// `assets/` is never published by accident.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../assets/dashboard/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard/app.js"),
    ),
    (
        "decimal.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard/decimal.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/dashboard/style.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../../assets/dashboard/favicon.svg"),
    ),
    (
        "vendor/chart.umd.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard/vendor/chart.umd.js"),
    ),
];

/// Nothing from another origin: scripts, styles, images and API calls are
/// all `'self'`; no inline script; the page cannot be framed or submit forms
/// elsewhere. Chart.js sets element styles through the CSSOM, which CSP does
/// not restrict, so `style-src 'self'` holds.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// `GET /`: the dashboard is what a browser opening the gateway should see.
pub async fn root() -> Redirect {
    Redirect::to("/dashboard")
}

/// `GET /dashboard`: the page itself.
pub async fn index() -> Response {
    serve("index.html")
}

/// `GET /dashboard/{*asset}`: the page's scripts, styles and the vendored
/// chart library.
pub async fn asset(Path(asset): Path<String>) -> Response {
    serve(&asset)
}

fn serve(name: &str) -> Response {
    let name = if name.is_empty() { "index.html" } else { name };
    let Some((_, content_type, bytes)) = ASSETS.iter().find(|(path, _, _)| *path == name) else {
        return (StatusCode::NOT_FOUND, "Not found.").into_response();
    };
    let mut response = (*bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Assets are not fingerprinted and change with the binary: revalidate
    // on every load (cheap, and an upgrade is never hidden behind a stale
    // cache) and never keep them in shared caches.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_type_and_bytes() {
        for (path, content_type, bytes) in ASSETS {
            assert!(!bytes.is_empty(), "{path} is empty");
            assert!(content_type.contains('/'), "{path}");
        }
    }

    #[test]
    fn unknown_assets_are_not_found() {
        assert_eq!(serve("../Cargo.toml").status(), StatusCode::NOT_FOUND);
        assert_eq!(serve("index.html").status(), StatusCode::OK);
    }
}
