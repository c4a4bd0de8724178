//! The application: the URL service and its cache tiers, the monitor and
//! the event hub, built from a [`Config`]. The routes and the server share
//! its state.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use cache_core::{BoxError, Clock, ConcurrentTier, Tier};
use cache_monitor::Monitor;
use cache_server::{Invalidation, InvalidationBus, MokaTier, RedisTier, Replication};
use presign::{ObjectKeys, PresignedUrl, PresignedUrls, PresignedUrlsBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::events::{Change, EventHub};
use crate::{routes, Config, EmbeddedS3, Limits};

/// How long the in-process tier keeps a URL.
const LOCAL_TTL: Duration = Duration::from_secs(10 * 60);
/// How long the shared tier (Redis) keeps a URL (the service also caps it by the
/// URL's expiry minus the margin).
const SHARED_TTL: Duration = Duration::from_secs(50 * 60);

/// The application: its router and the services behind it.
pub struct App {
    pub(crate) state: Arc<AppState>,
}

/// What the handlers, the seeding and the server share.
pub(crate) struct AppState {
    pub(crate) urls: PresignedUrls,
    pub(crate) monitor: Monitor,
    pub(crate) users: u64,
    pub(crate) max_upload: usize,
    pub(crate) limits: Limits,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) web_dir: Option<PathBuf>,
    pub(crate) embedded_s3: Option<EmbeddedS3>,
    pub(crate) events: Arc<EventHub>,
    /// Feeds `events` with the invalidations other instances send over the
    /// bus (none without Redis).
    _bus_events: Option<AbortOnDrop>,
    /// Whether every user has a picture: `/readyz` answers 200 from then on.
    pub(crate) seeded: AtomicBool,
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

/// The server's monitor: the last 15 minutes in 10 s buckets, the last hour
/// by the minute and the last day in 5-minute buckets (about 820 kB of
/// snapshots), for `/api/cache/history` and the dashboard.
fn history_monitor() -> Monitor {
    let minute = Duration::from_secs(60);
    Monitor::builder()
        .window(Duration::from_secs(10), 90)
        .long_window(minute, 60)
        .long_window(minute * 5, 288)
        .build()
}

/// [`build_app`](crate::build_app) without the seed: the services, connected.
pub(crate) async fn build_unseeded(config: &Config) -> Result<App, BoxError> {
    let monitor = history_monitor();
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
            seeded: AtomicBool::new(false),
        }),
    })
}

impl App {
    /// The HTTP routes (API, metrics, dashboard, static files).
    pub fn router(&self) -> Router {
        routes::router(&self.state)
    }

    /// Deletes replaced picture versions whose URLs have all expired (what the
    /// background sweeper of [`serve`](crate::serve) runs every
    /// `sweep_interval`). Returns how many objects were deleted.
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
