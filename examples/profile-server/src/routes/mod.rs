//! The HTTP routes: the avatar API (`avatars`, `upload`), the report and
//! metrics (`metrics`), the event stream, health and readiness, the
//! dashboard, the web app's static files; every request under the
//! whole-request deadline; errors as JSON (`error`).

mod avatars;
mod error;
mod metrics;
mod upload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::{SetResponseHeader, SetResponseHeaderLayer};
use tower_http::set_status::SetStatus;
use tower_layer::Layer;

use crate::app::AppState;
use error::ApiError;

/// The routes of [`crate::App::router`].
pub(crate) fn router(state: &Arc<AppState>) -> Router {
    let api = Router::new()
        .route(
            "/api/users/{id}/avatar",
            get(avatars::get_avatar).put(upload::put_avatar),
        )
        .route("/api/avatars", get(avatars::get_avatars))
        .route("/api/cache/report", get(metrics::report))
        .route("/api/cache/history", get(metrics::history))
        .route("/api/s3/requests", get(s3_requests))
        .route("/api/events", get(event_stream))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/dashboard", get(dashboard))
        .route("/api/{*rest}", get(api_not_found).put(api_not_found));
    let api = api.with_state(state.clone());
    let app = match &state.web_dir {
        Some(dir) => api.fallback_service(web_app(dir)),
        None => api.fallback(no_web_app),
    };
    app.layer(axum::middleware::from_fn_with_state(
        state.limits.request_timeout,
        request_deadline,
    ))
}

/// The web app's files. A file the build precompressed (`<file>.br`,
/// `<file>.gz` beside it: `cargo xtask` writes them for the wasm and the JS)
/// goes out in the best encoding the request's `Accept-Encoding` allows, with
/// its `Content-Encoding`; otherwise, and for every other file, the file as
/// it is. Every answer says `Vary: Accept-Encoding`, so no HTTP cache hands one
/// client's encoding to another. An unknown path gets index.html (status 404).
fn web_app(
    dir: &std::path::Path,
) -> SetResponseHeader<ServeDir<SetStatus<ServeFile>>, HeaderValue> {
    let files = ServeDir::new(dir)
        .precompressed_br()
        .precompressed_gzip()
        .not_found_service(ServeFile::new(dir.join("index.html")));
    SetResponseHeaderLayer::if_not_present(
        header::VARY,
        HeaderValue::from_static("accept-encoding"),
    )
    .layer(files)
}

/// A request that has not been answered within `timeout` gets `408
/// {"error": ...}` and its connection closed.
async fn request_deadline(State(timeout): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request took longer than {} ms", timeout.as_millis()),
        )
        .into_response(),
    }
}

/// The embedded S3's object request counts (404 with external S3).
async fn s3_requests(State(state): State<Arc<AppState>>) -> Response {
    match &state.embedded_s3 {
        Some(s3) => {
            let mut response = Json(s3.requests()).into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "no embedded S3: request counts are only kept for the embedded s3s-fs",
        )
        .into_response(),
    }
}

/// `GET /api/events`: the avatar changes as server-sent events, resuming
/// after `Last-Event-ID` (header, or `?last_event_id=` for a client that
/// cannot set headers).
async fn event_stream(
    State(state): State<Arc<AppState>>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(query.get("last_event_id").map(String::as_str));
    let mut response = state.events.response(last).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready once seeded: a load balancer sends traffic from then on. `/healthz`
/// (alive) answers from the moment the server listens.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.seeded.load(std::sync::atomic::Ordering::Acquire) {
        "ready".into_response()
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "seeding: not ready yet").into_response()
    }
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("../dashboard.html"))
}

async fn api_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such API endpoint")
}

async fn no_web_app() -> Response {
    (
        StatusCode::NOT_FOUND,
        Html(
            "<!doctype html><title>profile-server</title><p>No web app directory was given \
             (WEB_DIR or --web-dir). Run <code>cargo xtask demo</code> to build and serve it. \
             The API is at <code>/api/users/1/avatar</code>; metrics at \
             <a href=\"/dashboard\">/dashboard</a>.</p>",
        ),
    )
        .into_response()
}
