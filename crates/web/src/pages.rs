//! The static pages and their script and style, with headers that keep the one-time tokens in
//! their URLs private (no referrer, no caching) and the pages out of frames.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const APPROVE: &str = include_str!("../assets/approve.html");
const ENROLL: &str = include_str!("../assets/enroll.html");
const PENDING: &str = include_str!("../assets/pending.html");
const SCRIPT: &str = include_str!("../assets/webauthn.js");
const STYLE: &str = include_str!("../assets/style.css");

pub(crate) fn routes() -> Router {
    Router::new()
        .route("/approve/{token}", get(|| async { page(APPROVE) }))
        .route("/enroll/{token}", get(|| async { page(ENROLL) }))
        .route("/pending", get(|| async { page(PENDING) }))
        .route(
            "/assets/webauthn.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/assets/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .layer(axum::middleware::map_response(secure_headers))
}

fn page(html: &'static str) -> Response {
    asset("text/html; charset=utf-8", html)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Applied to every response, pages and API alike.
pub(crate) async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
