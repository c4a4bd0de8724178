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
//! - `GET /metrics` (Prometheus text), `GET /api/cache/report` (JSON, stating
//!   its period and latency sampling), `GET /api/cache/history?last=15m` (the
//!   monitor's buckets over the last 15 minutes, hour or day, from its
//!   in-memory rings), `GET /dashboard` (HTML: that history when it opens,
//!   then live).
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
mod seed;
mod server;

use cache_core::BoxError;

pub use app::App;
pub use config::{
    Config, Limits, DEFAULT_MAX_UPLOAD, DEFAULT_REDIS_TIMEOUT, DEFAULT_SWEEP_INTERVAL,
    DEFAULT_USERS,
};
pub use events::EventsConfig;
pub use s3_front::EmbeddedS3;
pub use server::Server;

/// The global allocator the `profile-server` binary runs with (mimalloc);
/// a process that embeds the server (the HTTP benchmark does) installs it
/// the same way:
///
/// ```
/// #[global_allocator]
/// static ALLOCATOR: profile_server::Allocator = profile_server::Allocator;
/// let url = String::from("allocated by mimalloc");
/// assert_eq!(url.len(), 21);
/// ```
///
/// Why not the system allocator: under a warm avatar load, glibc's malloc
/// left small freed blocks in its fast bins, and hyper's 8 KiB read buffer,
/// reserved again on every keep-alive read, is a request large enough to
/// make glibc consolidate them first: `perf` put malloc's slow paths
/// (`malloc_consolidate`, `_int_malloc`, `_int_free`) at about 4 % of the
/// warm avatar route's time, against about 1 % for `/healthz`. With mimalloc
/// the warm route's requests a second against `/healthz`'s went from
/// 0.887–0.899× to 0.918–0.926× (BENCHMARKS.md, §7).
pub use mimalloc::MiMalloc as Allocator;

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

/// Builds the app and serves it on `config.addr` (port 0: a free port). It
/// listens before it seeds (so `/healthz` answers during a long seed) and
/// returns once seeded (`/readyz` answers 200).
pub async fn serve(config: Config) -> Result<Server, BoxError> {
    let app = build_unseeded(&config).await?;
    Server::start(app, &config).await
}
