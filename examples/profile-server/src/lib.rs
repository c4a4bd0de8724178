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

mod app;
pub mod avatar;
mod config;
mod events;
mod routes;
mod s3_front;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use cache_core::BoxError;
use futures_util::{StreamExt, TryStreamExt};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use presign::PresignedUrls;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use app::App;
pub use config::{
    Config, Limits, DEFAULT_MAX_UPLOAD, DEFAULT_REDIS_TIMEOUT, DEFAULT_SWEEP_INTERVAL,
    DEFAULT_USERS,
};
pub use events::EventsConfig;
pub use s3_front::EmbeddedS3;

use app::build_unseeded;

/// Most ids one batch request may ask for.
pub const MAX_BATCH: usize = 100;

/// Builds the services of `config` (connects to Redis and S3, or starts the
/// embedded S3) and seeds a generated picture for every user who has none.
///
/// Needs a tokio runtime.
pub async fn build_app(config: &Config) -> Result<App, BoxError> {
    let app = build_unseeded(config).await?;
    app.seed().await?;
    Ok(app)
}

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
/// body and whole-request deadlines are in the router (`request_deadline`,
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
