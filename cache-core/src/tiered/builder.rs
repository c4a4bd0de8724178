//! [`TieredCacheBuilder`] and [`Tier`].

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::breaker::Breaker;
use super::extras::{NegativeCache, StaleStore};
use super::fences::Fences;
use super::observe::ChainClock;
use super::{Inner, TierSlot, TieredCache};
use crate::{
    ByteSize, CacheKey, CacheLayer, Clock, DefaultTimer, Loader, MaybeSend, MaybeSync,
    MemoryTierBuilder, Observer, SystemClock, Timer,
};

/// Default circuit breaker: open after 5 consecutive failures, for 30 seconds.
pub const DEFAULT_BREAKER: (u32, Duration) = (5, Duration::from_secs(30));

/// One tier of a chain and how the chain treats it: its TTL, its timeout, its
/// circuit breaker.
///
/// ```
/// use std::time::Duration;
/// use cache_core::{MemoryTier, Tier};
///
/// let tier = Tier::new(MemoryTier::<String, String>::new())
///     .ttl(Duration::from_secs(300))
///     .timeout(Duration::from_millis(50))
///     .circuit_breaker(3, Duration::from_secs(10));
/// # let _ = tier;
/// ```
pub struct Tier<K, V> {
    pub(super) layer: Arc<dyn CacheLayer<K, V>>,
    pub(super) ttl: Option<Duration>,
    pub(super) timeout: Option<Duration>,
    pub(super) breaker: Option<(u32, Duration)>,
    pub(super) jitter: f64,
    /// The same layer, type-erased, so the builder can recognise a
    /// [`ConcurrentTier`](crate::ConcurrentTier) and read it without a virtual call.
    #[cfg(not(target_family = "wasm"))]
    pub(super) any: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl<K, V> fmt::Debug for Tier<K, V>
where
    K: MaybeSend + MaybeSync + 'static,
    V: MaybeSend + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tier")
            .field("name", &self.layer.name())
            .field("ttl", &self.ttl)
            .field("timeout", &self.timeout)
            .field("breaker", &self.breaker)
            .finish()
    }
}

impl<K, V> Tier<K, V>
where
    K: MaybeSend + MaybeSync + 'static,
    V: MaybeSend + 'static,
{
    /// A tier with no TTL of its own, no timeout and the default circuit breaker.
    ///
    /// A `ConcurrentTier` (native targets; or an `Arc` of one) given
    /// here is recognised, and the chain reads it directly on the hit path, with
    /// no virtual call; through [`Tier::shared`] it is read like any other tier.
    pub fn new<T: CacheLayer<K, V> + 'static>(layer: T) -> Self {
        let layer = Arc::new(layer);
        #[cfg(not(target_family = "wasm"))]
        let any: Arc<dyn std::any::Any + Send + Sync> = layer.clone();
        #[allow(unused_mut)]
        let mut tier = Self::shared(layer);
        #[cfg(not(target_family = "wasm"))]
        {
            tier.any = Some(any);
        }
        tier
    }

    /// Like [`Tier::new`], for a tier that is already shared.
    pub fn shared(layer: Arc<dyn CacheLayer<K, V>>) -> Self {
        Tier {
            layer,
            ttl: None,
            timeout: None,
            breaker: Some(DEFAULT_BREAKER),
            jitter: 0.0,
            #[cfg(not(target_family = "wasm"))]
            any: None,
        }
    }

    /// Entries written into this tier by the chain live at most `ttl`
    /// (and never past their own expiry).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Spreads the lifetime of what the chain writes into this tier by a random
    /// factor in `[1 - fraction, 1 + fraction]` (`fraction` is clamped to
    /// `0.0..=0.5`), so entries written together (a fleet warming up, a batch)
    /// do not all expire together. The lifetime spread is the tier's TTL, or the
    /// entry's remaining life when the tier has none, and a spread entry still
    /// never outlives its own [`Entry::expires_at`](crate::Entry): without a TTL
    /// the spread only ever shortens.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_core::{MemoryTier, Tier};
    ///
    /// // Between 54 and 66 seconds.
    /// let tier = Tier::new(MemoryTier::<String, String>::new())
    ///     .ttl(Duration::from_secs(60))
    ///     .ttl_jitter(0.1);
    /// # let _ = tier;
    /// ```
    #[must_use]
    pub fn ttl_jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 0.5)
        } else {
            0.0
        };
        self
    }

    /// A call into this tier that takes longer than `timeout` counts as a failure
    /// (a miss for reads).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Skip this tier for `cool_down` after `failures` consecutive failures.
    #[must_use]
    pub fn circuit_breaker(mut self, failures: u32, cool_down: Duration) -> Self {
        self.breaker = Some((failures.max(1), cool_down));
        self
    }

    /// Never skip this tier, however often it fails.
    #[must_use]
    pub fn no_circuit_breaker(mut self) -> Self {
        self.breaker = None;
        self
    }
}

/// Builds a [`TieredCache`]. Tiers are read in the order they are added.
#[must_use]
pub struct TieredCacheBuilder<K, V> {
    tiers: Vec<Tier<K, V>>,
    origin: Option<Arc<dyn Loader<K, V>>>,
    clock: Arc<dyn Clock>,
    /// Whether `clock` is still the default [`SystemClock`], which the chain
    /// calls directly instead of through the trait object.
    system_clock: bool,
    timer: Arc<dyn Timer>,
    observer: Option<Arc<dyn Observer>>,
    negative_ttl: Option<Duration>,
    negative_capacity: usize,
    stale_grace: Option<Duration>,
    stale_capacity: usize,
    refresh: Option<(Duration, Arc<dyn crate::Spawn>)>,
    origin_timeout: Option<Duration>,
    soft_timeout: Option<(Duration, Arc<dyn crate::Spawn>)>,
    tag_store: Option<Arc<dyn crate::TagStore>>,
}

impl<K, V> fmt::Debug for TieredCacheBuilder<K, V>
where
    K: MaybeSend + MaybeSync + 'static,
    V: MaybeSend + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredCacheBuilder")
            .field("tiers", &self.tiers)
            .field("origin", &self.origin.is_some())
            .field("clock", &self.clock)
            .field("negative_ttl", &self.negative_ttl)
            .field("stale_grace", &self.stale_grace)
            .finish_non_exhaustive()
    }
}

impl<K, V> Default for TieredCacheBuilder<K, V> {
    fn default() -> Self {
        TieredCacheBuilder {
            tiers: Vec::new(),
            origin: None,
            clock: Arc::new(SystemClock),
            system_clock: true,
            timer: Arc::new(DefaultTimer),
            observer: None,
            negative_ttl: None,
            negative_capacity: 10_000,
            refresh: None,
            origin_timeout: None,
            soft_timeout: None,
            tag_store: None,
            stale_grace: None,
            stale_capacity: 10_000,
        }
    }
}

impl<K, V> TieredCacheBuilder<K, V>
where
    K: CacheKey,
    V: Clone + ByteSize + MaybeSend + MaybeSync + 'static,
{
    /// Appends a tier; it is read after every tier added before it.
    pub fn tier(mut self, tier: Tier<K, V>) -> Self {
        self.tiers.push(tier);
        self
    }

    /// The origin asked when every tier misses.
    pub fn origin(mut self, loader: impl Loader<K, V>) -> Self {
        self.origin = Some(Arc::new(loader));
        self
    }

    /// The origin, already shared.
    pub fn shared_origin(mut self, loader: Arc<dyn Loader<K, V>>) -> Self {
        self.origin = Some(loader);
        self
    }

    /// The clock expiry is checked against (default: [`SystemClock`]). Give the
    /// tiers the same clock.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self.system_clock = false;
        self
    }

    /// The clock, already shared.
    pub fn shared_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self.system_clock = false;
        self
    }

    /// What tier timeouts sleep on (default: [`DefaultTimer`]).
    pub fn timer(mut self, timer: impl Timer) -> Self {
        self.timer = Arc::new(timer);
        self
    }

    /// Receives every event (hits, misses, errors, loads...).
    pub fn observer(mut self, observer: impl Observer) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// The observer, already shared.
    pub fn shared_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Remember "the origin has no value for this key" for `ttl` (off by default),
    /// for up to `capacity` keys.
    pub fn negative_caching(mut self, ttl: Duration, capacity: usize) -> Self {
        self.negative_ttl = Some(ttl);
        self.negative_capacity = capacity.max(1);
        self
    }

    /// When the origin fails, serve a value that expired less than `grace` ago
    /// (off by default). The chain keeps the last `capacity` values it loaded or
    /// backfilled for this.
    pub fn serve_stale_on_error(mut self, grace: Duration, capacity: usize) -> Self {
        self.stale_grace = Some(grace);
        self.stale_capacity = capacity.max(1);
        self
    }

    /// Refresh ahead of expiry: a hit on an entry that expires within `window`
    /// starts one background refresh, run by `spawner`, while this read and
    /// every other keeps getting the value found.
    ///
    /// A tier's copy lives at most its tier's TTL, however long the value is
    /// valid, so the refresh first reads the tiers below the one that hit: the
    /// nearest one holding a copy that does not expire within `window` writes
    /// it into the tiers above it (a fenced backfill), and the origin is not
    /// asked. Only when the value itself nears its expiry (no lower tier has
    /// such a copy) is it reloaded from the origin. The reload is a load like
    /// any other: one per key (a miss meanwhile joins it), its result written
    /// into every tier by fenced fills (each tier's stamp taken before it
    /// loads), so an invalidation that begins after the hit wins over it. An
    /// origin that fails or finds nothing leaves the entry to expire as it
    /// would have. Needs an origin; a chain without one never refreshes.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    /// use cache_core::{loader_fn, BoxError, BoxFuture, Clock, Entry, ManualClock, MemoryTier, Source, Tier, TieredCache};
    ///
    /// # futures_executor::block_on(async {
    /// let clock = ManualClock::new();
    /// let c = clock.clone();
    /// let origin = loader_fn(move |key: String| {
    ///     let now = c.now();
    ///     async move { Ok::<_, BoxError>(Some(Entry::expiring_in(format!("{key} at {now:?}"), now, Duration::from_secs(60)))) }
    /// });
    /// // On tokio: `|task| { tokio::spawn(task); }`. Here, a queue run by hand.
    /// let queue: Arc<Mutex<Vec<BoxFuture<'static, ()>>>> = Arc::default();
    /// let q = queue.clone();
    /// let cache: TieredCache<String, String> = TieredCache::builder()
    ///     .clock(clock.clone())
    ///     .tier(Tier::new(MemoryTier::builder().clock(clock.clone()).build()))
    ///     .origin(origin)
    ///     .refresh_ahead(Duration::from_secs(10), move |task| q.lock().unwrap().push(task))
    ///     .build();
    /// let key = "k".to_string();
    /// let first = cache.get(&key).await?.expect("loaded").into_value();
    /// clock.advance(Duration::from_secs(55)); // 5 s left: within the window
    /// let hit = cache.get(&key).await?.expect("cached");
    /// assert_eq!((hit.value(), hit.source), (&first, Source::Tier { index: 0, name: "memory" }));
    /// for task in queue.lock().unwrap().drain(..) {
    ///     task.await; // the reload
    /// }
    /// assert_ne!(cache.get(&key).await?.expect("refreshed").into_value(), first);
    /// # Ok::<_, cache_core::Error>(()) }).unwrap();
    /// ```
    pub fn refresh_ahead(mut self, window: Duration, spawner: impl crate::Spawn) -> Self {
        self.refresh = Some((window, Arc::new(spawner)));
        self
    }

    /// The hard origin timeout: a load (from the origin or a
    /// [`get_with`](TieredCache::get_with) loader) that takes longer fails
    /// with [`OriginTimedOut`](crate::OriginTimedOut) for every reader waiting
    /// on it, which then get a stale value if
    /// [`serve_stale_on_error`](Self::serve_stale_on_error) has one. Measured
    /// with the chain's [`Timer`].
    pub fn origin_timeout(mut self, hard: Duration) -> Self {
        self.origin_timeout = Some(hard);
        self
    }

    /// The soft origin timeout: when a single-key read ([`TieredCache::get`],
    /// [`TieredCache::get_with`]) has to load and a stale value of the key is at
    /// hand ([`serve_stale_on_error`](Self::serve_stale_on_error)), it waits at
    /// most `soft` for the load, then answers with the stale value
    /// ([`Source::Stale`](crate::Source::Stale)) and leaves the load to run on
    /// `spawner`; when it lands it fills the tiers (fenced, as always). Without
    /// a stale value the read waits for the load (bounded by
    /// [`origin_timeout`](Self::origin_timeout), if set).
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    /// use cache_core::{BoxFuture, MemoryTier, Tier, TieredCache};
    ///
    /// let background: Arc<Mutex<Vec<BoxFuture<'static, ()>>>> = Arc::default();
    /// let b = background.clone();
    /// let cache: TieredCache<String, String> = TieredCache::builder()
    ///     .tier(Tier::new(MemoryTier::new()))
    ///     .serve_stale_on_error(Duration::from_secs(3_600), 10_000)
    ///     .soft_origin_timeout(Duration::from_millis(100), move |task| b.lock().unwrap().push(task))
    ///     .origin_timeout(Duration::from_secs(5))
    ///     .build();
    /// # let _ = cache;
    /// ```
    pub fn soft_origin_timeout(mut self, soft: Duration, spawner: impl crate::Spawn) -> Self {
        self.soft_timeout = Some((soft, Arc::new(spawner)));
        self
    }

    /// Where the generations of [tags](crate::Tags) live; see
    /// [`TagStore`](crate::TagStore). Without one the chain keeps them in its
    /// own memory, which is right only when every tier holding tagged entries
    /// is this process's own: a chain with a shared or persistent tier needs a
    /// store as shared and as durable (`cache_server::RedisTagStore`,
    /// `cache_browser::LocalStorageTagStore`).
    ///
    /// ```
    /// # #[cfg(feature = "tags")] {
    /// use std::sync::Arc;
    /// use cache_core::{Clock, Entry, MemoryTagStore, MemoryTier, SystemClock, Tier, TieredCache};
    ///
    /// # futures_executor::block_on(async {
    /// let store = Arc::new(MemoryTagStore::new());
    /// let shared = Arc::new(MemoryTier::new());
    /// // Two chains over one tier: a tag bumped by one is seen by the other.
    /// let a: TieredCache<String, u32> =
    ///     TieredCache::builder().tier(Tier::shared(shared.clone())).tag_store(store.clone()).build();
    /// let b: TieredCache<String, u32> =
    ///     TieredCache::builder().tier(Tier::shared(shared)).tag_store(store).build();
    /// a.put(&"k".to_string(), Entry::new(1, cache_core::Timestamp::MAX).with_tags(["t"])).await?;
    /// assert!(b.get(&"k".to_string()).await?.is_some());
    /// a.invalidate_tag("t").await?;
    /// assert!(b.get(&"k".to_string()).await?.is_none());
    /// # Ok::<_, cache_core::Error>(()) }).unwrap();
    /// # }
    /// ```
    pub fn tag_store(mut self, store: Arc<dyn crate::TagStore>) -> Self {
        self.tag_store = Some(store);
        self
    }

    /// The chain.
    pub fn build(self) -> TieredCache<K, V> {
        let tiers = self
            .tiers
            .into_iter()
            .map(|t| TierSlot {
                #[cfg(not(target_family = "wasm"))]
                concurrent: t.any.and_then(|any| {
                    match any.downcast::<crate::ConcurrentTier<K, V>>() {
                        Ok(tier) => Some(tier),
                        Err(any) => any
                            .downcast::<Arc<crate::ConcurrentTier<K, V>>>()
                            .ok()
                            .map(|tier| Arc::clone(&*tier)),
                    }
                }),
                name: t.layer.name().to_owned(),
                gate: (!t.layer.fenced_writes_are_atomic()).then(|| async_lock::RwLock::new(())),
                layer: t.layer,
                ttl: t.ttl,
                jitter: t.jitter,
                timeout: t.timeout,
                breaker: Breaker::new(t.breaker),
            })
            .collect();
        let negative = self.negative_ttl.map(|ttl| NegativeCache {
            ttl,
            capacity: self.negative_capacity,
            map: Mutex::new(HashMap::new()),
        });
        let stale = self.stale_grace.map(|grace| StaleStore {
            grace,
            values: MemoryTierBuilder::default()
                .name("stale")
                .max_entries(self.stale_capacity)
                .max_bytes(usize::MAX)
                .shared_clock(self.clock.clone())
                .build(),
        });
        TieredCache {
            inner: Arc::new(Inner {
                tiers,
                origin: self.origin,
                clock: ChainClock {
                    system: self.system_clock,
                    shared: self.clock,
                },
                timer: self.timer,
                observer: self.observer,
                fences: Fences::default(),
                flights: Mutex::new(HashMap::new()),
                retired: Mutex::default(),
                next_flight: AtomicU64::new(1),
                negative,
                stale,
                refresh: self
                    .refresh
                    .map(|(window, spawner)| super::refresh::Refresh {
                        window,
                        spawner,
                        pending: Mutex::new(std::collections::HashSet::new()),
                    }),
                origin_timeout: self.origin_timeout,
                soft_timeout: self.soft_timeout,
                tags: super::tags::TagTable::new(self.tag_store),
            }),
        }
    }
}
