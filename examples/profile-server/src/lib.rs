//! The profile-picture backend of the demo.
//!
//! Presigned avatar URLs resolved through `memory → shared tier → signer`
//! ([`presign::PresignedUrls`]), where the shared tier is Redis when
//! `REDIS_URL` is set and an in-process moka tier otherwise (`memory` is a
//! [`cache_core::ConcurrentTier`]). Uploads replace the
//! object and invalidate every tier on every instance (over cache-server's
//! invalidation bus when Redis is there). Every access is measured by a
//! [`cache_monitor::Monitor`].
//!
//! # HTTP API
//!
//! - `GET /api/users/{id}/avatar` → `200 {"url", "expires_at", "etag"}` with
//!   `Cache-Control: private, max-age=…` (never past the URL's life minus the
//!   safety margin) and an `ETag`; `If-None-Match` → `304`.
//! - `GET /api/avatars?ids=1,2,3` (1 to 100 ids) → `200 {"1": {...}, ...}`, one
//!   batch lookup.
//! - `PUT /api/users/{id}/avatar` with PNG/JPEG/GIF/WebP bytes (≤ 2 MiB) → `204`.
//!   Every upload gets its own object key ([`presign::ObjectKeys::PerUpload`]),
//!   so the URL and ETag change on every replace; URLs carry a signed
//!   `response-cache-control: private, max-age=…, immutable`. A background
//!   sweeper deletes replaced versions once their URLs expired.
//! - `GET /metrics` (Prometheus text), `GET /api/cache/report` (JSON),
//!   `GET /dashboard` (HTML polling the report).
//! - `GET /api/s3/requests` → `200 {"get_object": n, "put_object": n}`: the
//!   object requests the embedded S3 has received since start (404 with
//!   external S3 settings).
//! - `GET /api/events` → `text/event-stream`: every avatar change, by an
//!   upload through this instance or (over the invalidation bus) any other,
//!   as `event: avatar` / `data: {"user":"42"}`; `event: reset` when changes
//!   may have been missed; `Last-Event-ID` resumes (see [`EventsConfig`]).
//! - `GET /healthz` → `200 ok` (alive: from the moment the server listens);
//!   `GET /readyz` → `200 ready` once every user is seeded, `503` before.
//! - Errors: `{"error": "..."}` with 400 (invalid id), 404 (unknown user), 413
//!   (upload too big), 415 (not an image), 408 (the body or the whole request
//!   missed its deadline; see [`Limits`]).
//! - Anything else: the web app's static files, when a directory is given.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), cache_core::BoxError> {
//! use profile_server::{serve, Config};
//! let server = serve(Config::embedded()).await?; // embedded S3, in-process tiers
//! println!("listening on {}", server.url());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

pub mod avatar;
mod config;
mod events;
mod s3_front;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::{Bytes, BytesMut};
use cache_core::{BoxError, Clock, ConcurrentTier, Tier};
use cache_monitor::Monitor;
use cache_server::{Invalidation, InvalidationBus, MokaTier, RedisTier, Replication};
use futures_util::{StreamExt, TryStreamExt};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use presign::{ObjectKeys, PresignedUrl, PresignedUrls, PresignedUrlsBuilder};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tower_http::services::{ServeDir, ServeFile};

pub use config::{
    Config, Limits, DEFAULT_MAX_UPLOAD, DEFAULT_REDIS_TIMEOUT, DEFAULT_SWEEP_INTERVAL,
    DEFAULT_USERS,
};
pub use events::EventsConfig;
pub use s3_front::EmbeddedS3;

use events::{Change, EventHub};

/// Most ids one batch request may ask for.
pub const MAX_BATCH: usize = 100;

/// How long the in-process tier keeps a URL.
const LOCAL_TTL: Duration = Duration::from_secs(10 * 60);
/// How long the shared tier (Redis) keeps a URL (the service also caps it by the
/// URL's expiry minus the margin).
const SHARED_TTL: Duration = Duration::from_secs(50 * 60);

/// The application: its router and the services behind it.
pub struct App {
    state: Arc<AppState>,
}

struct AppState {
    urls: PresignedUrls,
    monitor: Monitor,
    users: u64,
    max_upload: usize,
    limits: Limits,
    clock: Arc<dyn Clock>,
    web_dir: Option<std::path::PathBuf>,
    embedded_s3: Option<EmbeddedS3>,
    events: Arc<EventHub>,
    /// Feeds `events` with the invalidations other instances send over the
    /// bus (none without Redis).
    _bus_events: Option<AbortOnDrop>,
    /// Whether every user has a picture: `/readyz` answers 200 from then on.
    seeded: std::sync::atomic::AtomicBool,
}

/// A background task that ends with its owner.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Publishes every invalidation another instance sent (applied here) as an
/// event: a user id as `avatar`, anything wider, a resync flush or missed
/// messages as `reset`.
fn forward_bus_events(urls: &PresignedUrls, events: &Arc<EventHub>) -> Option<AbortOnDrop> {
    let mut applied = urls.synced()?.applied();
    let events = events.clone();
    Some(AbortOnDrop(tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let change = match applied.recv().await {
                Ok(Invalidation::Key(user)) => Change::Avatar(user),
                Ok(Invalidation::Prefix(prefix)) => {
                    Change::Reset(format!("every user id starting with {prefix:?} changed"))
                }
                Ok(Invalidation::Clear) => {
                    Change::Reset("the invalidation bus resynchronised".to_owned())
                }
                // Any number of users: the pages drop their URL tiers.
                Ok(Invalidation::Tag { tag, .. }) => {
                    Change::Reset(format!("every entry tagged {tag:?} changed"))
                }
                Ok(other) => Change::Reset(format!(
                    "an invalidation this stream cannot map ({other:?})"
                )),
                Err(RecvError::Lagged(n)) => {
                    Change::Reset(format!("{n} invalidations were missed"))
                }
                Err(RecvError::Closed) => return,
            };
            events.publish(change);
        }
    })))
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("users", &self.state.users)
            .field("urls", &self.state.urls)
            .field("embedded_s3", &self.state.embedded_s3)
            .finish_non_exhaustive()
    }
}

/// The URL cache: tier 0 the native in-process tier (read by the chain's
/// direct hit path), then Redis with the invalidation bus when `REDIS_URL` is
/// set, else an in-process stand-in for it.
async fn cache_tiers(
    builder: PresignedUrlsBuilder,
    config: &Config,
) -> Result<(PresignedUrlsBuilder, Option<watch::Receiver<u64>>), BoxError> {
    let local = ConcurrentTier::<String, PresignedUrl>::builder()
        .name("memory")
        .max_entries(100_000)
        .max_bytes(32 << 20)
        .build();
    let builder = builder.tier(Tier::new(local).ttl(LOCAL_TTL));
    Ok(match &config.redis_url {
        Some(url) => {
            let shared = RedisTier::<PresignedUrl>::builder()
                .url(url.clone())
                .namespace("profile-server.avatar-urls")
                .replication(Replication::new(
                    config.redis_replicas,
                    config.redis_timeout / 2,
                ))
                .build()
                .await?;
            let failovers = shared.failovers();
            let bus = InvalidationBus::builder()
                .url(url.clone())
                .channel("profile-server:avatar-urls:invalidate")
                .connect()
                .await?;
            let builder = builder
                .tier(
                    Tier::new(shared)
                        .ttl(SHARED_TTL)
                        .timeout(config.redis_timeout),
                )
                .bus(bus, vec![0]);
            (builder, Some(failovers))
        }
        None => (
            builder.tier(
                Tier::new(
                    MokaTier::<String, PresignedUrl>::builder()
                        .name("shared-in-process")
                        .max_bytes(32 << 20)
                        .build(),
                )
                .ttl(SHARED_TTL),
            ),
            None,
        ),
    })
}

/// Builds the services of `config` (connects to Redis and S3, or starts the
/// embedded S3) and seeds a generated picture for every user who has none.
///
/// Needs a tokio runtime.
pub async fn build_app(config: &Config) -> Result<App, BoxError> {
    let app = build_unseeded(config).await?;
    app.seed().await?;
    Ok(app)
}

/// [`build_app`] without the seed: the services, connected.
async fn build_unseeded(config: &Config) -> Result<App, BoxError> {
    let monitor = Monitor::new();
    let (embedded_s3, public, direct) = match &config.s3 {
        Some(s3) => (None, s3.clone(), s3.clone()),
        None => {
            let s3 = EmbeddedS3::start().await?;
            let (public, direct) = (s3.public_config(), s3.direct_config());
            (Some(s3), public, direct)
        }
    };
    let mut builder = PresignedUrls::builder(public.signer()?, Arc::new(direct.object_store()?))
        .object_keys(ObjectKeys::PerUpload)
        .clock(config.clock.clone())
        .observer(monitor.clone());
    let mut failovers = None;
    if config.url_cache {
        (builder, failovers) = cache_tiers(builder, config).await?;
    }
    let urls = builder.build()?;
    if let (Some(synced), Some(failovers)) = (urls.synced(), failovers) {
        // A Redis failover voids the shared tier: flush the in-process one.
        synced.flush_on_failover(failovers);
    }
    let events = Arc::new(EventHub::new(config.events));
    let bus_events = forward_bus_events(&urls, &events);
    Ok(App {
        state: Arc::new(AppState {
            urls,
            monitor,
            users: config.users,
            max_upload: config.max_upload_bytes,
            limits: config.limits,
            clock: config.clock.clone(),
            web_dir: config.web_dir.clone(),
            embedded_s3,
            events,
            _bus_events: bus_events,
            seeded: std::sync::atomic::AtomicBool::new(false),
        }),
    })
}

/// How many times a PUT tries to invalidate the old URL before answering 502.
const INVALIDATE_ATTEMPTS: u32 = 4;

/// Seeding uploads in flight at once.
const SEED_CONCURRENCY: usize = 64;

/// Gives every user `1..=users` without a picture a generated one, several
/// uploads at a time. `fresh`: the store is known to be empty (the embedded S3
/// just started), so there is nothing to look up first.
async fn seed(urls: &PresignedUrls, users: u64, fresh: bool) -> Result<(), BoxError> {
    futures_util::stream::iter(1..=users)
        .map(|user| async move {
            let id = user.to_string();
            if !fresh && urls.head(&id).await?.is_some() {
                return Ok(());
            }
            let png = Bytes::from(avatar::generate_png(user, 96));
            // No invalidation: a user without a picture has no cached URL.
            urls.upload(&id, png, "image/png").await
        })
        .buffer_unordered(SEED_CONCURRENCY)
        .try_collect::<()>()
        .await?;
    Ok(())
}

impl App {
    /// Gives every user who has none a generated picture, then counts the
    /// app as ready (`/readyz`).
    async fn seed(&self) -> Result<(), BoxError> {
        let state = &self.state;
        seed(&state.urls, state.users, state.embedded_s3.is_some()).await?;
        state
            .seeded
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// The HTTP routes (API, metrics, dashboard, static files).
    pub fn router(&self) -> Router {
        let api = Router::new()
            .route("/api/users/{id}/avatar", get(get_avatar).put(put_avatar))
            .route("/api/avatars", get(get_avatars))
            .route("/api/cache/report", get(report))
            .route("/api/s3/requests", get(s3_requests))
            .route("/api/events", get(event_stream))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/dashboard", get(dashboard))
            .route("/api/{*rest}", get(api_not_found).put(api_not_found));
        let api = api.with_state(self.state.clone());
        let app = match &self.state.web_dir {
            Some(dir) => api.fallback_service(
                ServeDir::new(dir).not_found_service(ServeFile::new(dir.join("index.html"))),
            ),
            None => api.fallback(no_web_app),
        };
        app.layer(axum::middleware::from_fn_with_state(
            self.state.limits.request_timeout,
            request_deadline,
        ))
    }

    /// Deletes replaced picture versions whose URLs have all expired (what the
    /// background sweeper of [`serve`] runs every `sweep_interval`). Returns
    /// how many objects were deleted.
    pub async fn sweep(&self) -> Result<usize, BoxError> {
        Ok(self.state.urls.sweep().await?)
    }

    /// The per-tier metrics.
    pub fn monitor(&self) -> &Monitor {
        &self.state.monitor
    }

    /// The URL service.
    pub fn urls(&self) -> &PresignedUrls {
        &self.state.urls
    }

    /// The embedded S3 (its CORS front's endpoint), when no S3 was configured.
    pub fn embedded_s3_endpoint(&self) -> Option<String> {
        self.state
            .embedded_s3
            .as_ref()
            .map(EmbeddedS3::public_endpoint)
    }
}

/// A running server; see [`serve`].
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    app: App,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    sweeper: JoinHandle<()>,
}

impl Server {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The application behind it.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// Graceful shutdown: ends the event streams (`/api/events`), stops
    /// accepting connections (the listener is closed), closes idle keep-alive
    /// connections, lets requests in flight finish (each is bounded by the
    /// request deadline), then stops the sweeper and the embedded S3.
    pub async fn shutdown(mut self) {
        self.app.state.events.close();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
        self.sweeper.abort();
        // Leave the bus: the other instances stop waiting for this one at once.
        if let Some(synced) = self.app.state.urls.synced() {
            synced.bus().shutdown().await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.app.state.events.close();
        self.task.abort();
        self.sweeper.abort();
    }
}

/// Builds the app and serves it on `config.addr` (port 0: a free port). It
/// listens before it seeds (so `/healthz` answers during a long seed) and
/// returns once seeded (`/readyz` answers 200).
pub async fn serve(config: Config) -> Result<Server, BoxError> {
    let app = build_unseeded(&config).await?;
    // Listen first: `/healthz` answers during a long seed, `/readyz` once it
    // is done.
    let listener = TcpListener::bind(config.addr).await?;
    let addr = listener.local_addr()?;
    let router = app.router();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(accept_loop(listener, router, config.limits, stopped));
    if let Err(e) = app.seed().await {
        let _ = stop.send(());
        let _ = task.await;
        return Err(e);
    }
    let state = app.state.clone();
    let interval = config.sweep_interval;
    let sweeper = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(e) = state.urls.sweep().await {
                // Names the store operation, never a credential.
                eprintln!("profile-server: sweeping old picture versions failed: {e}");
            }
        }
    });
    Ok(Server {
        addr,
        app,
        stop: Some(stop),
        task,
        sweeper,
    })
}

/// Serves HTTP/1.1 connections until `stopped`, then shuts down gracefully.
///
/// Not `axum::serve`: it has no header deadline. Here hyper closes a connection
/// whose request headers do not arrive within `limits.header_timeout`; the
/// body and whole-request deadlines are in the router ([`request_deadline`],
/// `put_avatar`).
async fn accept_loop(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let socket = match accepted {
                    Ok((socket, _)) => socket,
                    Err(_) => {
                        // Out of file descriptors, or a connection reset before
                        // accept: wait a moment rather than spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let service = TowerToHyperService::new(router.clone());
                let conn = graceful.watch(http.serve_connection(TokioIo::new(socket), service));
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut stopped => break,
        }
    }
    drop(listener);
    // Idle connections close now; a request in flight finishes first, bounded
    // by its deadline (plus a moment to write the answer).
    let drain = limits.request_timeout + Duration::from_secs(1);
    let _ = tokio::time::timeout(drain, graceful.shutdown()).await;
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

// ---------------------------------------------------------------------------
// Handlers.

/// An error answered as `{"error": "..."}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl From<presign::Error> for ApiError {
    fn from(e: presign::Error) -> Self {
        match e {
            presign::Error::InvalidUserId { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
            }
            presign::Error::NoPicture { .. } => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            // The message names the failing tier or store, never a credential.
            other => ApiError::new(StatusCode::BAD_GATEWAY, other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.status == StatusCode::REQUEST_TIMEOUT
            || self.status == StatusCode::PAYLOAD_TOO_LARGE
        {
            // The rest of the body is not read: the connection cannot be reused.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl AppState {
    /// Users are `1..=users`: a decimal id without sign or leading zero.
    fn user(&self, raw: &str) -> Result<String, ApiError> {
        let valid = !raw.is_empty()
            && raw.len() <= 19
            && raw.bytes().all(|b| b.is_ascii_digit())
            && !(raw.len() > 1 && raw.starts_with('0'));
        let id: u64 = match raw.parse() {
            Ok(id) if valid => id,
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "invalid user id {}: expected a positive decimal number",
                        cache_core::key::preview(raw)
                    ),
                ))
            }
        };
        if id == 0 || id > self.users {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("unknown user {id}"),
            ));
        }
        Ok(id.to_string())
    }
}

/// One avatar in the API's JSON.
#[derive(Debug, Serialize)]
struct AvatarBody {
    url: String,
    /// Milliseconds since the Unix epoch.
    expires_at: u64,
    etag: String,
}

fn etag_of(url: &PresignedUrl) -> String {
    // The URL's SigV4 signature already is a SHA-256 HMAC over everything in
    // it (object key, expiry, overrides), so its first 96 bits identify the URL
    // as well as a hash of it would, without hashing it again per request.
    let signature = url
        .url
        .split_once("X-Amz-Signature=")
        .map(|(_, rest)| rest.split('&').next().unwrap_or(rest))
        .filter(|sig| sig.len() >= 24 && sig.bytes().all(|b| b.is_ascii_hexdigit()));
    if let Some(sig) = signature {
        return format!("\"{}\"", &sig[..24]);
    }
    let digest = Sha256::digest(url.url.as_bytes());
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

fn body_of(url: &PresignedUrl, etag: String) -> AvatarBody {
    AvatarBody {
        url: url.url.clone(),
        expires_at: url.expires_at.as_unix_millis(),
        etag,
    }
}

/// Seconds a client may keep the answer: the URL's remaining life minus the
/// margin, so a cached answer never hands out a dead (or nearly dead) URL.
fn max_age(state: &AppState, url: &PresignedUrl) -> u64 {
    url.remaining(state.clock.now())
        .saturating_sub(state.urls.margin())
        .as_secs()
}

fn cache_control(seconds: u64) -> HeaderValue {
    HeaderValue::try_from(format!("private, max-age={seconds}"))
        .unwrap_or(HeaderValue::from_static("no-store"))
}

fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

async fn get_avatar(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user = state.user(&id)?;
    let url = state.urls.url(&user).await?;
    let etag = etag_of(&url);
    let mut response = if if_none_match(&headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Json(body_of(&url, etag.clone())).into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, cache_control(max_age(&state, &url)));
    if let Ok(v) = HeaderValue::try_from(etag) {
        h.insert(header::ETAG, v);
    }
    Ok(response)
}

async fn get_avatars(
    State(state): State<Arc<AppState>>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let Some(raw) = query.get("ids") else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing query parameter `ids` (e.g. ?ids=1,2,3)",
        ));
    };
    let parts: Vec<&str> = raw.split(',').map(str::trim).collect();
    if parts.len() > MAX_BATCH {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "too many ids: {} (at most {MAX_BATCH} per request)",
                parts.len()
            ),
        ));
    }
    let mut users: Vec<String> = Vec::with_capacity(parts.len());
    for part in parts {
        let user = state.user(part)?;
        if !users.contains(&user) {
            users.push(user);
        }
    }
    let urls = state.urls.urls(&users).await?;
    let seconds = urls.iter().map(|u| max_age(&state, u)).min().unwrap_or(0);
    let body: BTreeMap<&str, AvatarBody> = users
        .iter()
        .map(String::as_str)
        .zip(urls.iter().map(|url| body_of(url, etag_of(url))))
        .collect();
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, cache_control(seconds));
    Ok(response)
}

/// The most of an oversized upload's body read and dropped before the 413
/// answer (a larger one gets the answer at once and its connection closed).
const LINGER_LIMIT: usize = 8 << 20;

/// Reads and drops up to `limit` more bytes of a body, until it ends, the
/// limit is passed or `deadline`.
async fn drain<S, E>(stream: &mut S, limit: usize, deadline: tokio::time::Instant)
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
{
    let mut seen = 0usize;
    while seen <= limit {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) => seen += chunk.len(),
            _ => return,
        }
    }
}

async fn put_avatar(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let user = state.user(&id)?;
    let too_big = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("upload larger than {} bytes", state.max_upload),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let deadline = tokio::time::Instant::now() + state.limits.body_timeout;
    let mut stream = body.into_data_stream();
    if declared.is_some_and(|n| n > state.max_upload as u64) {
        // Read (and drop) a body of reasonable size first, so a client that
        // sends it all before reading gets the 413 instead of a broken pipe.
        if declared.is_some_and(|n| n <= LINGER_LIMIT as u64) {
            drain(&mut stream, LINGER_LIMIT, deadline).await;
        }
        return Err(too_big());
    }
    let mut bytes = BytesMut::new();
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        let Ok(next) = next else {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the upload's body did not arrive within {} ms",
                    state.limits.body_timeout.as_millis()
                ),
            ));
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("cannot read body: {e}"))
        })?;
        if bytes.len() + chunk.len() > state.max_upload {
            drain(
                &mut stream,
                LINGER_LIMIT - bytes.len().min(LINGER_LIMIT),
                deadline,
            )
            .await;
            return Err(too_big());
        }
        bytes.extend_from_slice(&chunk);
    }
    let Some(content_type) = avatar::sniff_image(&bytes) else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not an image: expected PNG, JPEG, GIF or WebP bytes",
        ));
    };
    state
        .urls
        .upload(&user, bytes.freeze(), content_type)
        .await?;
    // The new version is in S3; now no tier on any instance may keep the old
    // URL. A tier that failed (a Redis timeout under load) is retried: giving
    // up leaves the old URL cached until it expires.
    let mut attempt = 1;
    loop {
        match state.urls.invalidate(&user).await {
            Ok(()) => {
                // Every tier is done: open pages may now fetch the new one.
                state.events.publish(Change::Avatar(user));
                return Ok(StatusCode::NO_CONTENT);
            }
            Err(_) if attempt < INVALIDATE_ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn report(State(state): State<Arc<AppState>>) -> Response {
    let mut report = serde_json::to_value(state.monitor.report()).unwrap_or_default();
    if let (Some(synced), Some(object)) = (state.urls.synced(), report.as_object_mut()) {
        object.insert("bus".to_owned(), bus_report(synced.bus()));
    }
    let mut response = Json(report).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
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

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut text = state.monitor.prometheus();
    if let Some(synced) = state.urls.synced() {
        bus_metrics(&mut text, synced.bus());
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// The invalidation bus's figures for `/api/cache/report` (and the
/// dashboard's bus card).
fn bus_report(bus: &InvalidationBus) -> serde_json::Value {
    let s = bus.stats();
    serde_json::json!({
        "link_up": bus.link_is_up(),
        "peers": s.last_peers,
        "published": s.published,
        "received": s.received,
        "unconfirmed": s.unconfirmed,
        "excused": s.excused,
        "resyncs": s.resyncs,
        "link_downs": s.link_downs,
        "reconnects": s.reconnects,
        "sequence_gaps": s.sequence_gaps,
        "apply_failures": s.apply_failures,
    })
}

/// The invalidation bus's figures in Prometheus text.
fn bus_metrics(out: &mut String, bus: &InvalidationBus) {
    use std::fmt::Write as _;
    let s = bus.stats();
    let gauges = [
        (
            "cache_bus_link_up",
            "1 while the invalidation bus hears its own heartbeats",
            u64::from(bus.link_is_up()),
        ),
        (
            "cache_bus_peers",
            "other instances the last confirmed invalidation waited for",
            s.last_peers,
        ),
    ];
    let counters = [
        ("cache_bus_published_total", "invalidations published", s.published),
        ("cache_bus_received_total", "messages delivered to this instance", s.received),
        ("cache_bus_unconfirmed_total", "invalidations a live instance did not confirm in time (returned an error)", s.unconfirmed),
        ("cache_bus_excused_total", "instances an invalidation stopped waiting for (left, ran out, no subscriber, link down)", s.excused),
        ("cache_bus_resyncs_total", "flushes of the in-process tiers because messages may have been lost", s.resyncs),
        ("cache_bus_link_downs_total", "times this instance declared its bus link down", s.link_downs),
        ("cache_bus_reconnects_total", "subscriber reconnections", s.reconnects),
        ("cache_bus_sequence_gaps_total", "invalidations missed (sequence gaps)", s.sequence_gaps),
        ("cache_bus_apply_failures_total", "other instances' invalidations that failed to apply here", s.apply_failures),
        ("cache_bus_foreign_total", "messages of another wire version", s.foreign),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    for (name, help, value) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
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
