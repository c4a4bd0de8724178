//! [`TieredCache`]: tiers read in order, backfilled upwards, invalidated together.
//!
//! The protocol, one concern per module:
//! - `read`: the read path (tier 0 at once, then each tier, then the origin);
//! - `fill`: fenced writes (backfills, origin fills, write-through);
//! - `invalidate`: invalidation and write-through (begin, remove, end);
//! - `fences`: the in-process fences every fill is checked against;
//! - `flight`: single-flight origin loads under `catch_unwind`;
//! - `extras`: the negative cache and the stale store;
//! - `observe`: events, timeouts and circuit breakers.

mod breaker;
mod builder;
mod extras;
mod fences;
mod fill;
mod flight;
mod invalidate;
mod loader;
mod observe;
mod read;
mod refresh;
mod tags;
mod trace;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

pub use builder::{Tier, TieredCacheBuilder, DEFAULT_BREAKER};
pub use flight::{LoaderPanicked, OriginTimedOut};
pub use loader::{loader_fn, FnLoader, Loader};

use breaker::Breaker;
use extras::{NegativeCache, StaleStore};
use fences::Fences;
use flight::Flight;
use observe::{invalid_key, ChainClock};
use read::Read;

use crate::{
    BoxFuture, ByteSize, CacheKey, CacheLayer, Clock, Entry, MaybeSend, MaybeSync, Observer,
    Result, Stamp, TierAction, TierReport, Timer,
};

/// Where a value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source<'a> {
    /// Tier number `index` (0 is read first), named `name`.
    Tier {
        /// Position in the chain.
        index: usize,
        /// The tier's name.
        name: &'a str,
    },
    /// The origin loader (this read, or a load it joined).
    Origin,
    /// The origin failed and an expired value within the grace period was served.
    Stale,
}

/// A value found by a [`TieredCache`] read, with where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup<'a, V> {
    /// The value and its expiry.
    pub entry: Entry<V>,
    /// Which tier (or the origin) answered.
    pub source: Source<'a>,
}

impl<V> Lookup<'_, V> {
    /// The value.
    pub fn value(&self) -> &V {
        &self.entry.value
    }
    /// The value, owned.
    pub fn into_value(self) -> V {
        self.entry.value
    }
}

pub(crate) struct TierSlot<K, V> {
    name: String,
    layer: Arc<dyn CacheLayer<K, V>>,
    ttl: Option<Duration>,
    /// [`Tier::ttl_jitter`]'s fraction; 0 for none.
    jitter: f64,
    timeout: Option<Duration>,
    breaker: Breaker,
    /// For a tier whose fenced writes are not atomic with its removals: fills
    /// hold it shared, removals exclusive.
    gate: Option<async_lock::RwLock<()>>,
    /// The layer itself when it is a [`ConcurrentTier`](crate::ConcurrentTier):
    /// tier-0 hits read it directly (inlined, no virtual call, no answer passed
    /// back through memory).
    #[cfg(not(target_family = "wasm"))]
    concurrent: Option<Arc<crate::ConcurrentTier<K, V>>>,
}

pub(crate) struct Inner<K, V> {
    tiers: Vec<TierSlot<K, V>>,
    origin: Option<Arc<dyn Loader<K, V>>>,
    clock: ChainClock,
    timer: Arc<dyn Timer>,
    observer: Option<Arc<dyn Observer>>,
    fences: Fences,
    flights: Mutex<HashMap<K, Flight<V>>>,
    /// The keys of the loads retired lately (locked inside `flights`).
    retired: Mutex<flight::Retired>,
    next_flight: AtomicU64,
    negative: Option<NegativeCache<K>>,
    stale: Option<StaleStore<K, V>>,
    refresh: Option<refresh::Refresh<K>>,
    /// Fails a load that takes longer (the hard origin timeout).
    origin_timeout: Option<Duration>,
    /// With a stale value at hand, a single-key read waits this long for the
    /// origin, then answers stale and leaves the load to `spawner`.
    soft_timeout: Option<(Duration, Arc<dyn crate::Spawn>)>,
    /// The generations of the tags entries carry.
    tags: tags::TagTable,
}

/// The boxed rest of a read that tier 0 did not answer at once.
type SlowRead<'s, 'k, V> = BoxFuture<'k, Result<Option<Lookup<'s, V>>>>;

/// The future of [`TieredCache::get`] and [`TieredCache::get_with`].
///
/// Lazy, like every future: the read starts when it is first polled. A hit on
/// an in-process tier 0 completes on that first poll, its answer returned
/// straight from the poll; anything else continues in a boxed future.
#[must_use = "a read does nothing until it is awaited"]
pub struct Get<'s, 'k, K, V> {
    cache: &'s TieredCache<K, V>,
    key: &'k K,
    loader: Option<Arc<dyn Loader<K, V>>>,
    slow: Option<SlowRead<'s, 'k, V>>,
}

impl<K, V> fmt::Debug for Get<'_, '_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Get")
            .field("started", &self.slow.is_some())
            .finish_non_exhaustive()
    }
}

impl<'s, 'k, K, V> Future for Get<'s, 'k, K, V>
where
    K: CacheKey,
    V: Clone + ByteSize + MaybeSend + MaybeSync + 'static,
    's: 'k,
{
    type Output = Result<Option<Lookup<'s, V>>>;

    #[cfg_attr(not(target_family = "wasm"), inline(always))]
    #[cfg_attr(target_family = "wasm", inline)]
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.get_mut();
        if this.slow.is_none() {
            match this.cache.start_read(this.key, this.loader.take()) {
                Ok(done) => return std::task::Poll::Ready(done),
                Err(slow) => this.slow = Some(slow),
            }
        }
        match &mut this.slow {
            Some(slow) => slow.as_mut().poll(cx),
            None => std::task::Poll::Pending,
        }
    }
}

/// An origin entry that had expired by the time it could be returned.
#[derive(Debug, thiserror::Error)]
#[error("the origin's entry had expired by the time it could be returned")]
pub struct ExpiredFromOrigin;

/// A chain of cache tiers in front of an optional origin.
///
/// # Order
///
/// Tiers are read in the order they were added: tier 0 first. The first tier
/// holding an unexpired entry answers; a hit at tier `i` is written back into
/// tiers `0..i` (backfill), each capped by its own TTL and by the entry's
/// remaining life. When every tier misses, the origin is asked once per key, however
/// many reads are waiting (single-flight), and its result is written into every
/// tier.
///
/// # Contract
///
/// - **Expiry.** Entries carry an absolute expiry. A tier keeps an entry until
///   `min(entry.expires_at, now + tier_ttl)`. The chain checks every value
///   against its clock **at the moment it returns it**, after any wait (a slow
///   backfill, other keys of a `get_many`), so no value is returned at or after
///   its `expires_at` ([`Source::Stale`] values, served by choice while the
///   origin fails, are the one exception).
/// - **Fail-open.** A tier that errors, or does not answer within its timeout,
///   counts as a miss for that read and is reported to the observer. A read fails
///   only when no tier and no origin can answer. After repeated failures a tier's
///   circuit breaker skips it for a cool-down.
/// - **Single-flight.** Concurrent misses of one key share one origin load. The
///   loader runs under `catch_unwind`: a panic is an error for every reader of
///   that load, never a hang, and the next read loads afresh.
/// - **Stale and negative values** (both off by default): see
///   [`TieredCacheBuilder::serve_stale_on_error`] and
///   [`TieredCacheBuilder::negative_caching`].
///
/// # Consistency
///
/// After [`invalidate(k)`](TieredCache::invalidate),
/// [`invalidate_prefix`](TieredCache::invalidate_prefix) or
/// [`clear`](TieredCache::clear) covering `k`, or [`put(k, v)`](TieredCache::put),
/// returns `Ok`:
///
/// - no tier holds a value of `k` that was read or loaded before that call
///   began, and no read that starts afterwards returns one (nor the stale store
///   or the negative cache);
/// - a losing write is **refused, never written and undone**: every backfill and
///   origin fill is a fenced write ([`CacheLayer::put_fenced`](crate::CacheLayer::put_fenced),
///   see [`crate::fence`]). An invalidation begins (voiding the fences of every
///   read under way) before it touches any tier and ends after its last removal;
///   a tier checks the fence at the moment it writes, under the same lock its
///   removals take, so each fill lands wholly before a removal or not at all.
///   Shared tiers (Redis) also compare a per-key generation in the same atomic
///   step, which refuses the fills of **other instances** whose reads began
///   before the removal;
/// - a refused or failed write never turns into a silent success: `put` reports
///   [`Error::Superseded`](crate::Error::Superseded) for a tier where a newer write or invalidation won, and
///   [`Error::Incomplete`](crate::Error::Incomplete) names every tier that failed, so the call can be
///   retried;
/// - reads that start after an invalidation begins never join a load that began
///   before it.
///
/// Across instances, `cache_server::SyncedCache` carries the same promise to
/// every instance's in-process tiers: its invalidations return once every live
/// instance has applied them; the one exception is an instance whose bus link is
/// down, which flushes its in-process tiers within the bus's heartbeat interval
/// plus heartbeat timeout (3 s by default).
///
/// Concurrent `put`s of one key: the one that began last wins in every tier it
/// reaches; the others report [`Error::Superseded`](crate::Error::Superseded) for the tiers where they lost.
/// One limit: a `put` on one instance still under way when another instance
/// invalidates the same key may land in the shared tier after that invalidation
/// (last writer wins there, as with any two concurrent writes).
///
/// A tier whose fenced write is not atomic with its removals (the trait's
/// default) is kept apart by the chain: a removal waits for the fills already
/// under way in that tier (each bounded by the tier's timeout, if it has one),
/// and a fill that meets a removal under way is refused.
///
/// `TieredCache` is a cheap handle: clones share the same tiers and state.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use cache_core::{loader_fn, BoxError, Clock, Entry, ManualClock, MemoryTier, Source, Tier, TieredCache};
///
/// # futures_executor::block_on(async {
/// let clock = ManualClock::new();
/// let origin_clock = clock.clone();
/// let cache = TieredCache::builder()
///     .clock(clock.clone())
///     .tier(Tier::new(MemoryTier::builder().name("l1").clock(clock.clone()).build()).ttl(Duration::from_secs(60)))
///     .tier(Tier::new(MemoryTier::builder().name("l2").clock(clock.clone()).build()).ttl(Duration::from_secs(3000)))
///     .origin(loader_fn(move |user: u64| {
///         let now = origin_clock.now();
///         async move {
///             Ok::<_, BoxError>(Some(Entry::expiring_in(format!("https://img/{user}"), now, Duration::from_secs(3600))))
///         }
///     }))
///     .build();
///
/// let first = cache.get(&7).await?.expect("the origin has every user");
/// assert_eq!(first.source, Source::Origin);
/// assert_eq!(cache.get(&7).await?.unwrap().source, Source::Tier { index: 0, name: "l1" });
///
/// clock.advance(Duration::from_secs(60)); // l1's TTL is over; l2 still holds it
/// assert_eq!(cache.get(&7).await?.unwrap().source, Source::Tier { index: 1, name: "l2" });
///
/// cache.invalidate(&7).await?; // gone from every tier
/// assert_eq!(cache.get(&7).await?.unwrap().source, Source::Origin);
/// # Ok::<_, cache_core::Error>(()) }).unwrap();
/// ```
pub struct TieredCache<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K, V> Clone for TieredCache<K, V> {
    fn clone(&self) -> Self {
        TieredCache {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V> fmt::Debug for TieredCache<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.inner.tiers.iter().map(|t| t.name.as_str()).collect();
        f.debug_struct("TieredCache")
            .field("tiers", &names)
            .field("origin", &self.inner.origin.is_some())
            .finish_non_exhaustive()
    }
}

impl<K, V> fmt::Display for TieredCache<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TieredCache(")?;
        for (i, t) in self.inner.tiers.iter().enumerate() {
            if i > 0 {
                f.write_str(" -> ")?;
            }
            f.write_str(&t.name)?;
        }
        if self.inner.origin.is_some() {
            f.write_str(" -> origin")?;
        }
        f.write_str(")")
    }
}

impl<K, V> TieredCache<K, V>
where
    K: CacheKey,
    V: Clone + ByteSize + MaybeSend + MaybeSync + 'static,
{
    /// A builder; see [`TieredCacheBuilder`].
    pub fn builder() -> TieredCacheBuilder<K, V> {
        TieredCacheBuilder::default()
    }

    /// The value for `key`, from the first tier that holds it, else from the
    /// origin. `Ok(None)` when no tier holds it and the origin (if any) has no
    /// value. Errors only when no tier and no origin could answer.
    #[cfg_attr(not(target_family = "wasm"), inline(always))]
    #[cfg_attr(target_family = "wasm", inline)]
    pub fn get<'s, 'k>(&'s self, key: &'k K) -> Get<'s, 'k, K, V> {
        Get {
            cache: self,
            key,
            loader: None,
            slow: None,
        }
    }

    /// Like [`TieredCache::get`], but a key no tier holds is loaded by `loader`
    /// instead of the chain's origin (a chain need not have one). Everything
    /// else is the same: one load per key however many reads wait (a read that
    /// finds a load of its key already in flight, from the origin or another
    /// `get_with`, joins it and `loader` is not called), the result written
    /// into the tiers by fenced fills, so an invalidation that begins while
    /// `loader` runs still wins; a panicking loader is an error for every
    /// waiter.
    ///
    /// ```
    /// use cache_core::{loader_fn, BoxError, Clock, Entry, MemoryTier, SystemClock, Tier, TieredCache};
    /// use std::time::Duration;
    ///
    /// # futures_executor::block_on(async {
    /// let cache: TieredCache<String, String> =
    ///     TieredCache::builder().tier(Tier::new(MemoryTier::new())).build();
    /// let key = "user:7:name".to_string();
    /// let by_id = loader_fn(|key: String| async move {
    ///     let id = key.split(':').nth(1).unwrap_or_default().to_owned();
    ///     Ok::<_, BoxError>(Some(Entry::expiring_in(format!("user #{id}"), SystemClock.now(), Duration::from_secs(60))))
    /// });
    /// let first = cache.get_with(&key, by_id).await?.expect("loaded");
    /// assert_eq!(first.value(), "user #7");
    /// // Now cached: this loader is never called.
    /// let never = loader_fn(|_: String| async { Err::<Option<Entry<String>>, BoxError>("not called".into()) });
    /// assert_eq!(cache.get_with(&key, never).await?.expect("cached").value(), "user #7");
    /// # Ok::<_, cache_core::Error>(()) }).unwrap();
    /// ```
    pub fn get_with<'s, 'k>(
        &'s self,
        key: &'k K,
        loader: impl Loader<K, V> + 'static,
    ) -> Get<'s, 'k, K, V> {
        Get {
            cache: self,
            key,
            loader: Some(Arc::new(loader)),
            slow: None,
        }
    }

    /// A read's first step: tier 0 at once when it can answer without waiting
    /// (a hit is the whole read), else the boxed rest, which loads a miss with
    /// `loader` or else the origin.
    ///
    /// The hit path (`get`, `poll`, this, `read_tier_now`, `classify`,
    /// `emit_hit`) is inlined always: with plain `#[inline]`, a program that
    /// awaits one chain type's `get` in several places got some of them out
    /// of line, and the hit's answer went through memory once more per call
    /// (the peers suite's chain hit: 1.50–1.55× quick_cache's `get` before,
    /// 1.41–1.46× after, three quick runs each). Native only: inlined at
    /// every call site of the web page's size-optimised wasm, it added 875
    /// bytes over the wire and put the page 422 bytes over its budget.
    #[cfg_attr(not(target_family = "wasm"), inline(always))]
    #[cfg_attr(target_family = "wasm", inline)]
    fn start_read<'s, 'k>(
        &'s self,
        key: &'k K,
        loader: Option<Arc<dyn Loader<K, V>>>,
    ) -> std::result::Result<Result<Option<Lookup<'s, V>>>, SlowRead<'s, 'k, V>>
    where
        's: 'k,
    {
        let inner = &*self.inner;
        if let Err(reason) = key.validate() {
            return Ok(Err(invalid_key(key, reason)));
        }
        let ticket = inner.fences.ticket();
        let mut now = crate::Timestamp::UNIX_EPOCH;
        let (next, failed, stamp) = match inner.read_tier_now(0, key, &mut now) {
            Some(Read::Hit(entry)) => {
                if inner.refresh.is_some() {
                    Inner::refresh_if_due(&self.inner, key, &entry, now);
                }
                // Only with the feature: even an empty call here, which indexes
                // the tiers (a bounds check that could unwind while the entry
                // is live), made the hit copy the entry through the stack and
                // cost it about 8 ns (store-forwarding stalls, seen with perf).
                #[cfg(feature = "tracing")]
                trace::hit_now(&|| key.key_str().into_owned(), &inner.tiers[0].name);
                return Ok(Ok(Some(Lookup {
                    entry,
                    source: Source::Tier {
                        index: 0,
                        name: &inner.tiers[0].name,
                    },
                })));
            }
            Some(Read::Miss(stamp)) => (1, 0, Some(stamp)),
            Some(Read::Failed) => (1, 1, None),
            Some(Read::TagsStale) => (1, 0, Some(inner.stale_tags_now(key))),
            // The async path reads the generations it lacks.
            None | Some(Read::TagsUnknown) => (0, 0, None),
        };
        Err(self.get_slow(key, next, failed, ticket, stamp, loader))
    }

    /// The boxed rest of a read that tier 0 did not serve at once. Kept out of line
    /// so the fast path in [`TieredCache::get`] stays small.
    #[inline(never)]
    fn get_slow<'s, 'k>(
        &'s self,
        key: &'k K,
        first: usize,
        failed: usize,
        ticket: u64,
        first_stamp: Option<Stamp>,
        loader: Option<Arc<dyn Loader<K, V>>>,
    ) -> SlowRead<'s, 'k, V>
    where
        's: 'k,
    {
        let mut stamps = Vec::with_capacity(self.inner.tiers.len());
        if first == 1 {
            stamps.push(first_stamp);
        }
        Box::pin(trace::get(
            || key.key_str().into_owned(),
            self.get_from(key, first, failed, ticket, stamps, loader),
        ))
    }

    /// The values for `keys`, in order: one batch call per tier for the keys still
    /// missing, then one origin batch for the rest (joining loads already in
    /// flight). Duplicate keys are allowed.
    pub async fn get_many(&self, keys: &[K]) -> Result<Vec<Option<Lookup<'_, V>>>> {
        self.get_many_from(keys).await
    }

    /// Writes `entry` into every tier (write-through), valid until its
    /// `expires_at`.
    ///
    /// Like an invalidation it fences the key first: loads and backfills of `key`
    /// that began before it are refused from then on, so an older value never
    /// lands over this one. In a tier that stamps (Redis) it removes the key and
    /// writes with the removal's stamp, so a write or invalidation from another
    /// instance that comes in between wins there too. Tiers where a newer write or
    /// invalidation won report [`Error::Superseded`](crate::Error::Superseded);
    /// failed tiers are named by [`Error::Incomplete`](crate::Error::Incomplete).
    pub async fn put(&self, key: &K, entry: Entry<V>) -> Result<TierReport> {
        trace::invalidate("put", &key.key_str(), self.inner.put_through(key, entry)).await
    }

    /// Removes `key` from every tier. See [`TieredCache::only`] to pick tiers.
    ///
    /// Returns what each tier did, or [`Error::Incomplete`](crate::Error::Incomplete) naming the tiers that
    /// failed: call again to retry. Loads in flight for `key` will not write.
    pub async fn invalidate(&self, key: &K) -> Result<TierReport> {
        trace::invalidate(
            "invalidate",
            &key.key_str(),
            self.inner.invalidate(key, None),
        )
        .await
    }

    /// Removes every key starting with `prefix` from every tier.
    pub async fn invalidate_prefix(&self, prefix: &str) -> Result<TierReport> {
        trace::invalidate(
            "invalidate_prefix",
            prefix,
            self.inner.invalidate_prefix(prefix, None),
        )
        .await
    }

    /// Removes everything from every tier.
    pub async fn clear(&self) -> Result<TierReport> {
        trace::invalidate("clear", "", self.inner.clear(None)).await
    }

    /// Drops every entry carrying `tag`, from every tier, without looking for
    /// them: bumps the tag's generation (in the chain's
    /// [`TagStore`](crate::TagStore), if it has one) and returns the new one.
    /// From then on every read treats an entry carrying the tag at an older
    /// generation as absent (and fills it afresh), in every tier; loads under
    /// way when it began are not written into the tiers, and reads that start
    /// afterwards do not join them. See [`Tags`](crate::Tags).
    ///
    /// Tags are given with the value (cache-core's `tags` feature): `put` an
    /// entry `with_tags`, or have the loader return
    /// one. Without the feature no entry carries tags, so this only bumps the
    /// generation (which instances with the feature still honour).
    /// Across instances, `cache_server::SyncedCache::invalidate_tag` also
    /// tells every other instance.
    ///
    /// ```
    /// # #[cfg(feature = "tags")] {
    /// use cache_core::{Entry, MemoryTier, Tier, TieredCache, Timestamp};
    ///
    /// # futures_executor::block_on(async {
    /// let cache: TieredCache<String, String> = TieredCache::builder().tier(Tier::new(MemoryTier::new())).build();
    /// let avatar = Entry::new("https://img/42-v1".to_string(), Timestamp::MAX).with_tags(["user:42"]);
    /// cache.put(&"avatar:42".to_string(), avatar).await?;
    /// cache.put(&"name:42".to_string(), Entry::new("Ada".into(), Timestamp::MAX).with_tags(["user:42"])).await?;
    /// cache.put(&"name:7".to_string(), Entry::new("Grace".into(), Timestamp::MAX).with_tags(["user:7"])).await?;
    ///
    /// assert_eq!(cache.invalidate_tag("user:42").await?, 1);
    /// assert!(cache.get(&"avatar:42".to_string()).await?.is_none());
    /// assert!(cache.get(&"name:42".to_string()).await?.is_none());
    /// assert!(cache.get(&"name:7".to_string()).await?.is_some());
    /// # Ok::<_, cache_core::Error>(()) }).unwrap();
    /// # }
    /// ```
    pub async fn invalidate_tag(&self, tag: &str) -> Result<u64> {
        trace::invalidate("invalidate_tag", tag, self.inner.invalidate_tag(tag)).await
    }

    /// Applies another instance's [`TieredCache::invalidate_tag`], which
    /// bumped `tag` to `generation`: with a shared [`TagStore`](crate::TagStore)
    /// the chain learns the new generation; without one it bumps its own.
    /// Reads from now on do not join loads begun before. (The bus of
    /// `cache_server::SyncedCache` calls it.)
    ///
    /// ```
    /// # #[cfg(feature = "tags")] {
    /// use cache_core::{Entry, MemoryTier, Tier, TieredCache, Timestamp};
    ///
    /// # futures_executor::block_on(async {
    /// let cache: TieredCache<String, u8> = TieredCache::builder().tier(Tier::new(MemoryTier::new())).build();
    /// cache.put(&"k".to_string(), Entry::new(1, Timestamp::MAX).with_tags(["t"])).await?;
    /// cache.tag_invalidated("t", 1);
    /// assert!(cache.get(&"k".to_string()).await?.is_none());
    /// # Ok::<_, cache_core::Error>(()) }).unwrap();
    /// # }
    /// ```
    pub fn tag_invalidated(&self, tag: &str, generation: u64) {
        self.inner.tag_invalidated(tag, generation);
    }

    /// The current generation of `tag` as this chain knows it (`None`: not
    /// read from the tag store yet). Entries carrying the tag at an older
    /// generation are absent.
    ///
    /// ```
    /// use cache_core::{MemoryTier, Tier, TieredCache};
    ///
    /// # futures_executor::block_on(async {
    /// let cache: TieredCache<String, u8> = TieredCache::builder().tier(Tier::new(MemoryTier::new())).build();
    /// assert_eq!(cache.tag_generation("t"), Some(0));
    /// cache.invalidate_tag("t").await?;
    /// assert_eq!(cache.tag_generation("t"), Some(1));
    /// # Ok::<_, cache_core::Error>(()) }).unwrap();
    /// ```
    pub fn tag_generation(&self, tag: &str) -> Option<u64> {
        self.inner.tags.known(tag)
    }

    /// The same invalidation operations, applied to the chosen tiers only (for
    /// example the in-process tier, when another instance has already removed a
    /// key from the shared tier). Reads in flight are guarded either way.
    ///
    /// ```
    /// # use cache_core::{MemoryTier, Tier, TieredCache};
    /// # futures_executor::block_on(async {
    /// let cache: TieredCache<String, String> = TieredCache::builder()
    ///     .tier(Tier::new(MemoryTier::new()))
    ///     .tier(Tier::new(MemoryTier::builder().name("shared").build()))
    ///     .build();
    /// let report = cache.only(&[0]).invalidate(&"k".to_string()).await?;
    /// assert_eq!(report.outcomes().len(), 2);
    /// # Ok::<_, cache_core::Error>(()) }).unwrap();
    /// ```
    pub fn only<'s>(&'s self, tiers: &'s [usize]) -> TierSelection<'s, K, V> {
        TierSelection { cache: self, tiers }
    }

    /// The tiers' names, in read order.
    pub fn tier_names(&self) -> Vec<&str> {
        self.inner.tiers.iter().map(|t| t.name.as_str()).collect()
    }

    /// Whether tier `index`'s circuit breaker is open now.
    pub fn is_tier_skipped(&self, index: usize) -> bool {
        self.inner
            .tiers
            .get(index)
            .is_some_and(|t| t.breaker.is_open(self.inner.clock.now()))
    }

    /// The number of origin loads in flight (single-flight groups).
    pub fn loads_in_flight(&self) -> usize {
        self.inner
            .lock_flights()
            .values()
            .filter(|f| f.is_live())
            .count()
    }
}

/// Invalidation restricted to some tiers. See [`TieredCache::only`].
#[derive(Debug)]
pub struct TierSelection<'s, K, V> {
    cache: &'s TieredCache<K, V>,
    tiers: &'s [usize],
}

impl<K, V> TierSelection<'_, K, V>
where
    K: CacheKey,
    V: Clone + ByteSize + MaybeSend + MaybeSync + 'static,
{
    /// [`TieredCache::invalidate`] on the selected tiers.
    pub async fn invalidate(&self, key: &K) -> Result<TierReport> {
        trace::invalidate(
            "invalidate",
            &key.key_str(),
            self.cache.inner.invalidate(key, Some(self.tiers)),
        )
        .await
    }
    /// [`TieredCache::invalidate_prefix`] on the selected tiers.
    pub async fn invalidate_prefix(&self, prefix: &str) -> Result<TierReport> {
        trace::invalidate(
            "invalidate_prefix",
            prefix,
            self.cache.inner.invalidate_prefix(prefix, Some(self.tiers)),
        )
        .await
    }
    /// [`TieredCache::clear`] on the selected tiers.
    pub async fn clear(&self) -> Result<TierReport> {
        trace::invalidate("clear", "", self.cache.inner.clear(Some(self.tiers))).await
    }

    /// Clears the selected tiers because invalidations may have been missed
    /// (`reason` says why, e.g. "bus link down"), and reports it to the observer
    /// as one [`EventKind::Resync`](crate::EventKind::Resync) event. Loads in
    /// flight are fenced as by [`TierSelection::clear`].
    ///
    /// ```
    /// # use cache_core::{MemoryTier, Tier, TieredCache};
    /// # futures_executor::block_on(async {
    /// let cache: TieredCache<String, String> = TieredCache::builder()
    ///     .tier(Tier::new(MemoryTier::new()))
    ///     .build();
    /// cache.only(&[0]).resync("bus link down").await?;
    /// # Ok::<_, cache_core::Error>(()) }).unwrap();
    /// ```
    pub async fn resync(&self, reason: &str) -> Result<TierReport> {
        // Tag generations read from the store may be behind as well.
        self.cache.inner.forget_tag_generations();
        let report = self.cache.inner.clear(Some(self.tiers)).await;
        self.cache.inner.emit(
            crate::EventKind::Resync,
            crate::EventSource::Chain,
            reason,
            None,
            0,
            report.as_ref().err(),
        );
        report
    }
}

/// A chain is itself a tier, so chains nest. `get` answers from any tier or the
/// origin; `put` writes through; `remove`, `remove_prefix` and `clear` invalidate.
#[cfg_attr(not(target_family = "wasm"), async_trait)]
#[cfg_attr(target_family = "wasm", async_trait(?Send))]
impl<K, V> CacheLayer<K, V> for TieredCache<K, V>
where
    K: CacheKey,
    V: Clone + ByteSize + MaybeSend + MaybeSync + 'static,
{
    fn name(&self) -> &str {
        "tiered"
    }
    async fn get(&self, key: &K) -> Result<Option<Entry<V>>> {
        Ok(TieredCache::get(self, key).await?.map(|l| l.entry))
    }
    async fn put(&self, key: &K, entry: Entry<V>) -> Result<()> {
        TieredCache::put(self, key, entry).await.map(drop)
    }
    async fn remove(&self, key: &K) -> Result<bool> {
        let report = self.invalidate(key).await?;
        Ok(report
            .outcomes()
            .iter()
            .any(|o| matches!(o.result, Ok(TierAction::Removed))))
    }
    async fn remove_prefix(&self, prefix: &str) -> Result<()> {
        self.invalidate_prefix(prefix).await.map(drop)
    }
    async fn clear(&self) -> Result<()> {
        TieredCache::clear(self).await.map(drop)
    }
    async fn get_many(&self, keys: &[K]) -> Result<Vec<Option<Entry<V>>>> {
        Ok(TieredCache::get_many(self, keys)
            .await?
            .into_iter()
            .map(|l| l.map(|l| l.entry))
            .collect())
    }
}
