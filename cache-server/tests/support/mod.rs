//! Fixtures the cache-server suites share: the chain a test "instance" runs
//! (an in-process tier, Redis, an origin whose answers carry a version), the
//! Redis tier and bus settings they use, and waiting under a liveness bound.
//! Each suite includes it with `mod support;`; the servers themselves come
//! from `cache_server::testing`.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::conformance::Setup;
use cache_core::{
    loader_fn, BoxError, Clock, Entry, FenceCheck, Loader, SystemClock, Tier, TieredCache,
    TieredCacheBuilder,
};
use cache_server::testing::RedisServer;
use cache_server::{
    Codec, Invalidation, InvalidationBus, InvalidationBusBuilder, MokaTier, MsgPackCodec,
    RedisTier, RedisTierBuilder, SyncedCache,
};
use tokio::sync::broadcast;

/// How long a test waits for what must happen (unless it names its own
/// bound).
pub(crate) const LIVENESS: Duration = Duration::from_secs(10);

/// Waits until an async condition holds, checked every 5 ms, up to
/// [`LIVENESS`] or the bound given after `within`.
#[allow(unused_macros)]
macro_rules! wait_for {
    ($what:expr, $cond:expr) => {
        $crate::support::wait_for!($what, $cond, within $crate::support::LIVENESS)
    };
    ($what:expr, $cond:expr, within $bound:expr) => {{
        let bound: std::time::Duration = $bound;
        let deadline = std::time::Instant::now() + bound;
        while !$cond {
            assert!(
                std::time::Instant::now() < deadline,
                "{}: not within {bound:?}",
                $what
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }};
}
#[allow(unused_imports)]
pub(crate) use wait_for;

/// Waits until `cond` holds, checked every 5 ms, up to [`LIVENESS`].
pub(crate) async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIVENESS;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {LIVENESS:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The next invalidation `applied` reports, within [`LIVENESS`].
pub(crate) async fn next_applied(applied: &mut broadcast::Receiver<Invalidation>) -> Invalidation {
    tokio::time::timeout(LIVENESS, applied.recv())
        .await
        .unwrap()
        .unwrap()
}

/// Waits until `applied` reports `want`, passing over the others (each
/// within [`LIVENESS`]).
pub(crate) async fn applied_until(
    applied: &mut broadcast::Receiver<Invalidation>,
    want: &Invalidation,
) {
    while next_applied(applied).await != *want {}
}

/// Heartbeats short enough for tests: every 200 ms, the link declared down
/// 400 ms after the last one came back, so a dead link is noticed within
/// [`FAST_BOUND`].
pub(crate) const FAST_INTERVAL: Duration = Duration::from_millis(200);
/// See [`FAST_INTERVAL`].
pub(crate) const FAST_TIMEOUT: Duration = Duration::from_millis(400);
/// See [`FAST_INTERVAL`].
pub(crate) const FAST_BOUND: Duration = Duration::from_millis(600);

/// A bus on `url` with the [`FAST_INTERVAL`] heartbeats.
pub(crate) fn fast_bus(url: String) -> InvalidationBusBuilder {
    InvalidationBus::builder()
        .url(url)
        .heartbeat_interval(FAST_INTERVAL)
        .heartbeat_timeout(FAST_TIMEOUT)
}

/// A Redis tier of `String`s on `url` under namespace `ns`, default settings.
pub(crate) async fn redis_tier(url: impl Into<String>, ns: &str) -> RedisTier<String> {
    RedisTier::builder()
        .url(url)
        .namespace(ns)
        .build()
        .await
        .unwrap()
}

/// A Redis tier for one check of the conformance suite, on `url`: the
/// check's namespace, clock and TTL, one connection.
pub(crate) fn conformance_tier<V>(url: &str, setup: &Setup) -> RedisTierBuilder<V>
where
    V: Send + Sync + 'static,
    MsgPackCodec: Codec<V>,
{
    let tier = RedisTier::builder()
        .url(url)
        .namespace(setup.namespace.clone())
        .clock(setup.clock.clone())
        .pool_size(1);
    match setup.tier_ttl {
        Some(ttl) => tier.ttl(ttl),
        None => tier,
    }
}

/// How many times `server` ran `cmd` (lowercase) since start or the last
/// `CONFIG RESETSTAT`.
pub(crate) fn stat_calls(server: &RedisServer, cmd: &str) -> u64 {
    let info = server.cli(&["INFO", "commandstats"]).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
        .unwrap_or(0)
}

/// A fence check that holds or not, as told.
pub(crate) struct Holds(pub(crate) bool);

impl FenceCheck for Holds {
    fn holds(&self) -> bool {
        self.0
    }
}

/// The origin of the fixtures: `<key>@v<version>`, with the version of the
/// moment it loads, valid for an hour; each load counted in `loads`.
pub(crate) fn origin(
    version: Arc<AtomicU64>,
    loads: Arc<AtomicU64>,
) -> impl Loader<String, String> {
    loader_fn(move |key: String| {
        let v = version.load(Ordering::SeqCst);
        loads.fetch_add(1, Ordering::SeqCst);
        async move {
            Ok::<_, BoxError>(Some(Entry::expiring_in(
                format!("{key}@v{v}"),
                SystemClock.now(),
                Duration::from_secs(3600),
            )))
        }
    })
}

/// [`origin`] whose values carry the tag `user:<id>`, `<id>` the key's last
/// `:`-separated part (`avatar:42` → `user:42`).
#[cfg(feature = "tags")]
pub(crate) fn tagged_origin(
    version: Arc<AtomicU64>,
    loads: Arc<AtomicU64>,
) -> impl Loader<String, String> {
    let untagged = Arc::new(origin(version, loads));
    loader_fn(move |key: String| {
        let untagged = untagged.clone();
        async move {
            let user = key.rsplit(':').next().unwrap_or_default().to_owned();
            let entry = untagged.load(&key).await?;
            Ok::<_, BoxError>(entry.map(|e| e.with_tags([format!("user:{user}")])))
        }
    })
}

/// The chain of an instance: `front` (TTL 300 s), then `redis` if any
/// (3000 s), then `origin`.
pub(crate) fn chain(
    front: Tier<String, String>,
    redis: Option<RedisTier<String>>,
    origin: impl Loader<String, String>,
) -> TieredCacheBuilder<String, String> {
    let mut chain = TieredCache::builder().tier(front.ttl(Duration::from_secs(300)));
    if let Some(redis) = redis {
        chain = chain.tier(Tier::new(redis).ttl(Duration::from_secs(3000)));
    }
    chain.origin(origin)
}

/// One backend instance of the bus suites: its synced chain, its moka tier
/// (tier 0, to look into) and its origin's load count.
pub(crate) struct Instance {
    pub(crate) cache: SyncedCache<String, String>,
    pub(crate) moka: MokaTier<String, String>,
    pub(crate) loads: Arc<AtomicU64>,
}

/// moka → `redis` (if any) → [`origin`] of `version`, its invalidations
/// sent over `bus` (tier 0 is the one the others' invalidations clear).
pub(crate) fn instance(
    redis: Option<RedisTier<String>>,
    version: Arc<AtomicU64>,
    bus: InvalidationBus,
) -> Instance {
    let moka: MokaTier<String, String> = MokaTier::builder().build();
    let loads = Arc::new(AtomicU64::new(0));
    let chain = chain(
        Tier::new(moka.clone()),
        redis,
        origin(version, loads.clone()),
    )
    .build();
    Instance {
        cache: SyncedCache::new(chain, bus, vec![0]),
        moka,
        loads,
    }
}

/// What a [`Frozen`] instance is asked to do: stay paused this long, then
/// (if a key is given) read it at once and send back the value.
type Freeze = (Duration, Option<String>);

/// An instance on its own single-thread runtime on its own thread, as a
/// process of its own: a [`SyncedCache`] over one moka tier (its only local
/// tier) whose origin answers `<key>@origin`, on the bus `bus` builds.
/// [`Frozen::freeze`] blocks that thread: the instance neither refreshes its
/// registration, nor reads its subscription, nor acknowledges, nor runs its
/// watchdog until it thaws, as a stopped process would.
pub(crate) struct Frozen {
    pub(crate) moka: MokaTier<String, String>,
    pub(crate) id: u64,
    /// Dropped (taken) to stop the instance.
    freeze: Option<std::sync::mpsc::Sender<Freeze>>,
    answers: std::sync::mpsc::Receiver<Option<Option<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Frozen {
    pub(crate) fn start(bus: InvalidationBusBuilder) -> Frozen {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (freeze, freeze_rx) = std::sync::mpsc::channel::<Freeze>();
        let (answer_tx, answers) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let moka: MokaTier<String, String> = MokaTier::builder().build();
                let chain = TieredCache::builder()
                    .tier(Tier::new(moka.clone()))
                    .origin(loader_fn(|key: String| async move {
                        Ok::<_, BoxError>(Some(Entry::expiring_in(
                            format!("{key}@origin"),
                            SystemClock.now(),
                            Duration::from_secs(60),
                        )))
                    }))
                    .build();
                let bus = bus.connect().await.unwrap();
                let a = SyncedCache::new(chain, bus, vec![0]);
                ready_tx.send((moka, a.bus().instance_id())).unwrap();
                loop {
                    match freeze_rx.try_recv() {
                        Ok((pause, read)) => {
                            // Told it is paused, then paused: nothing of
                            // this runtime runs until the sleep ends.
                            answer_tx.send(None).unwrap();
                            std::thread::sleep(pause);
                            // The first thing it does when it thaws.
                            if let Some(key) = read {
                                let got = a.get(&key).await.unwrap().map(|l| l.into_value());
                                answer_tx.send(Some(got)).unwrap();
                            }
                        }
                        Err(std::sync::mpsc::TryRecvError::Empty) => {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
                    }
                }
                a.bus().shutdown().await;
            });
        });
        let (moka, id) = ready_rx.recv_timeout(LIVENESS).unwrap();
        Frozen {
            moka,
            id,
            freeze: Some(freeze),
            answers,
            thread: Some(thread),
        }
    }

    /// Puts `value` under `key` straight into the instance's moka tier,
    /// expiring in a minute.
    pub(crate) async fn hold(&self, key: &str, value: &str) {
        let entry =
            Entry::expiring_in(value.to_owned(), SystemClock.now(), Duration::from_secs(60));
        cache_core::CacheLayer::put(&self.moka, &key.to_owned(), entry)
            .await
            .unwrap();
    }

    /// Pauses the instance for `pause` and returns once it is paused. With
    /// `read`, the instance reads that key first thing when it thaws;
    /// [`Frozen::thawed_read`] gives the answer.
    pub(crate) fn freeze(&self, pause: Duration, read: Option<&str>) {
        self.freeze
            .as_ref()
            .unwrap()
            .send((pause, read.map(str::to_owned)))
            .unwrap();
        assert!(matches!(self.answers.recv_timeout(LIVENESS), Ok(None)));
    }

    /// What the read asked of [`Frozen::freeze`] returned (waits for it to
    /// thaw, up to `pause` + [`LIVENESS`]).
    pub(crate) fn thawed_read(&self, pause: Duration) -> Option<String> {
        match self.answers.recv_timeout(pause + LIVENESS) {
            Ok(Some(got)) => got,
            other => panic!("no answer from the thawed instance: {other:?}"),
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        drop(self.freeze.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
