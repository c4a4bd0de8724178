//! [`TieredCache`]: tiers read in order, backfilled upwards, invalidated together.

mod breaker;
mod builder;
mod guard;
mod loader;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::{join_all, ready, select, Either, FutureExt, Shared, WeakShared};
// Latencies are timed only when an observer is installed (see `Stopwatch`).

pub use builder::{Tier, TieredCacheBuilder, DEFAULT_BREAKER};
pub use loader::{loader_fn, FnLoader, Loader};

use breaker::Breaker;
use guard::{InvalidationLog, Scope};

use crate::{
    BoxError, BoxFuture, ByteSize, CacheKey, CacheLayer, ChainOp, Clock, Entry, Error, Event,
    EventKind, EventSource, MaybeSend, MaybeSync, MemoryTier, Observer, Operation, Result,
    SharedError, TierAction, TierOutcome, TierReport, Timer, Timestamp,
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

type LoadResult<V> = std::result::Result<Option<Entry<V>>, SharedError>;
type FlightFuture<V> = Shared<BoxFuture<'static, LoadResult<V>>>;

struct Flight<V> {
    id: u64,
    weak: WeakShared<BoxFuture<'static, LoadResult<V>>>,
}

pub(crate) struct TierSlot<K, V> {
    name: String,
    layer: Arc<dyn CacheLayer<K, V>>,
    ttl: Option<Duration>,
    timeout: Option<Duration>,
    breaker: Breaker,
}

pub(crate) struct NegativeCache<K> {
    ttl: Duration,
    capacity: usize,
    map: Mutex<HashMap<K, Timestamp>>,
}

pub(crate) struct StaleStore<K, V> {
    grace: Duration,
    /// Holds entries with their expiry pushed out by `grace`.
    values: MemoryTier<K, V>,
}

pub(crate) struct Inner<K, V> {
    tiers: Vec<TierSlot<K, V>>,
    origin: Option<Arc<dyn Loader<K, V>>>,
    clock: ChainClock,
    timer: Arc<dyn Timer>,
    observer: Option<Arc<dyn Observer>>,
    log: InvalidationLog,
    flights: Mutex<HashMap<K, Flight<V>>>,
    next_flight: AtomicU64,
    negative: Option<NegativeCache<K>>,
    stale: Option<StaleStore<K, V>>,
}

/// An origin that handed back an entry which had already expired.
#[derive(Debug, thiserror::Error)]
#[error("the origin returned an entry that had already expired")]
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
///   `min(entry.expires_at, now + tier_ttl)`. The chain checks every hit against
///   its clock too, so an expired value is never returned, whatever a tier says.
/// - **Fail-open.** A tier that errors, or does not answer within its timeout,
///   counts as a miss for that read and is reported to the observer. A read fails
///   only when no tier and no origin can answer. After repeated failures a tier's
///   circuit breaker skips it for a cool-down.
/// - **Invalidation.** [`TieredCache::invalidate`] removes the key from every tier
///   and reports what each did; if any tier failed, the error names it, so the
///   call can be retried. Nothing is dropped silently. A load or backfill that was
///   in flight when its key was invalidated does not write its result into any
///   tier afterwards, and reads that start after the invalidation do not join it.
/// - **Stale and negative values** (both off by default): see
///   [`TieredCacheBuilder::serve_stale_on_error`] and
///   [`TieredCacheBuilder::negative_caching`].
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

enum Read<V> {
    Hit(Entry<V>),
    Miss,
    Failed,
}

/// The event a failed tier call reports.
fn failure_kind(error: &Error) -> EventKind {
    match error {
        Error::Timeout { .. } => EventKind::Timeout,
        _ => EventKind::Error,
    }
}

/// The event a tier call reports: `ok_kind` on success, else its failure kind
/// with the error.
fn event_for<T>(result: &Result<T>, ok_kind: EventKind) -> (EventKind, Option<&Error>) {
    match result {
        Ok(_) => (ok_kind, None),
        Err(e) => (failure_kind(e), Some(e)),
    }
}

#[cold]
#[inline(never)]
fn invalid_key<K: CacheKey>(key: &K, reason: crate::key::KeyError) -> Error {
    Error::invalid_key(&key.key_str(), reason)
}

#[inline]
fn elapsed(start: Option<Stopwatch>) -> Duration {
    start.map_or(Duration::ZERO, |s| s.elapsed())
}

/// The chain's clock: the default [`SystemClock`] is called directly (inlined on
/// every read's hot path); any other clock through its trait object.
#[derive(Debug)]
pub(crate) struct ChainClock {
    pub(crate) system: bool,
    pub(crate) shared: Arc<dyn Clock>,
}

impl Clock for ChainClock {
    #[inline]
    fn now(&self) -> Timestamp {
        if self.system {
            crate::SystemClock.now()
        } else {
            self.shared.now()
        }
    }
}

/// Times one tier or origin call for the observer.
///
/// On native targets it reads the CPU's timestamp counter through one shared,
/// calibrated `quanta::Clock`, and scales only when the call ends: a few
/// nanoseconds per read where `clock_gettime` can cost tens on a VM, and without
/// the thread-local lookup of `quanta::Instant::now`. On wasm32 it is
/// `performance.now()` through `web_time`.
#[derive(Clone, Copy)]
struct Stopwatch(
    #[cfg(not(target_family = "wasm"))] u64,
    #[cfg(target_family = "wasm")] web_time::Instant,
);

#[cfg(not(target_family = "wasm"))]
fn tsc() -> &'static quanta::Clock {
    static CLOCK: std::sync::OnceLock<quanta::Clock> = std::sync::OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
}

impl Stopwatch {
    #[inline]
    fn start() -> Self {
        #[cfg(not(target_family = "wasm"))]
        {
            Stopwatch(tsc().raw())
        }
        #[cfg(target_family = "wasm")]
        {
            Stopwatch(web_time::Instant::now())
        }
    }

    #[inline]
    fn elapsed(self) -> Duration {
        #[cfg(not(target_family = "wasm"))]
        {
            let clock = tsc();
            clock.delta(self.0, clock.raw())
        }
        #[cfg(target_family = "wasm")]
        {
            self.0.elapsed()
        }
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
    #[inline]
    pub fn get<'s, 'k, 'f>(
        &'s self,
        key: &'k K,
    ) -> impl Future<Output = Result<Option<Lookup<'s, V>>>> + 'f
    where
        's: 'f,
        'k: 'f,
    {
        let inner = &*self.inner;
        if let Err(reason) = key.validate() {
            return Either::Left(ready(Err(invalid_key(key, reason))));
        }
        let epoch = inner.log.current();
        // Fast path: a tier 0 that answers without waiting (an in-process tier)
        // serves a hit as an already-completed future; everything else continues
        // in the boxed slow path below, from where the fast path stopped.
        let (next, failed) = match inner.read_tier_now(0, key) {
            Some(Read::Hit(entry)) => {
                return Either::Left(ready(Ok(Some(Lookup {
                    entry,
                    source: Source::Tier {
                        index: 0,
                        name: &inner.tiers[0].name,
                    },
                }))));
            }
            Some(Read::Miss) => (1, 0),
            Some(Read::Failed) => (1, 1),
            None => (0, 0),
        };
        Either::Right(self.get_slow(key, next, failed, epoch))
    }

    /// The boxed rest of a read that tier 0 did not serve at once. Kept out of line
    /// so the fast path in [`TieredCache::get`] stays small.
    #[inline(never)]
    fn get_slow<'s, 'k, 'f>(
        &'s self,
        key: &'k K,
        first: usize,
        failed: usize,
        epoch: u64,
    ) -> BoxFuture<'f, Result<Option<Lookup<'s, V>>>>
    where
        's: 'f,
        'k: 'f,
    {
        Box::pin(self.get_from(key, first, failed, epoch))
    }

    /// The read from tier `first` on, after `failed` tiers above it failed.
    async fn get_from(
        &self,
        key: &K,
        first: usize,
        mut failed: usize,
        epoch: u64,
    ) -> Result<Option<Lookup<'_, V>>> {
        let inner = &*self.inner;
        for index in first..inner.tiers.len() {
            match inner.read_tier(index, key).await {
                Read::Hit(entry) => {
                    if index > 0 {
                        inner
                            .write_back(key, &entry, 0..index, epoch, EventKind::Backfill)
                            .await;
                    }
                    return Ok(Some(Lookup {
                        entry,
                        source: Source::Tier {
                            index,
                            name: &inner.tiers[index].name,
                        },
                    }));
                }
                Read::Miss => {}
                Read::Failed => failed += 1,
            }
        }
        self.load_through(key, failed).await
    }

    /// The values for `keys`, in order: one batch call per tier for the keys still
    /// missing, then one origin batch for the rest (joining loads already in
    /// flight). Duplicate keys are allowed.
    pub async fn get_many(&self, keys: &[K]) -> Result<Vec<Option<Lookup<'_, V>>>> {
        let inner = &*self.inner;
        for key in keys {
            key.validate()
                .map_err(|reason| Error::invalid_key(&key.key_str(), reason))?;
        }
        let epoch = inner.log.current();
        let mut out: Vec<Option<Lookup<'_, V>>> = keys.iter().map(|_| None).collect();
        let mut pending: Vec<usize> = (0..keys.len()).collect();
        let mut failed = 0;
        for index in 0..inner.tiers.len() {
            if pending.is_empty() {
                break;
            }
            let batch: Vec<K> = pending.iter().map(|&j| keys[j].clone()).collect();
            let Some(found) = inner.read_tier_many(index, &batch).await else {
                failed += 1;
                continue;
            };
            let mut still = Vec::new();
            let mut hits = Vec::new();
            for (&j, entry) in pending.iter().zip(found) {
                match entry {
                    Some(entry) => {
                        if index > 0 {
                            hits.push((keys[j].clone(), entry.clone()));
                        }
                        out[j] = Some(Lookup {
                            entry,
                            source: Source::Tier {
                                index,
                                name: &inner.tiers[index].name,
                            },
                        });
                    }
                    None => still.push(j),
                }
            }
            if !hits.is_empty() {
                inner
                    .write_back_many(hits, 0..index, epoch, EventKind::Backfill)
                    .await;
            }
            pending = still;
        }
        if pending.is_empty() {
            return Ok(out);
        }
        if inner.origin.is_none() {
            if failed > 0 && failed == inner.tiers.len() {
                return Err(Error::NoTierAnswered { failed });
            }
            return Ok(out);
        }
        let mut asks = Vec::new();
        for &j in &pending {
            if inner.negative_hit(&keys[j]) {
                continue;
            }
            asks.push(j);
        }
        let ask_keys: Vec<K> = asks.iter().map(|&j| keys[j].clone()).collect();
        let flights = Inner::join_or_start_many(&self.inner, &ask_keys);
        let results = join_all(flights).await;
        for ((&j, key), result) in asks.iter().zip(&ask_keys).zip(results) {
            out[j] = inner.finish_origin_read(key, result)?;
        }
        Ok(out)
    }

    async fn load_through(&self, key: &K, failed: usize) -> Result<Option<Lookup<'_, V>>> {
        let inner = &*self.inner;
        if inner.negative_hit(key) {
            return Ok(None);
        }
        if inner.origin.is_none() {
            if failed > 0 && failed == inner.tiers.len() {
                return Err(Error::NoTierAnswered { failed });
            }
            return Ok(None);
        }
        let flight = Inner::join_or_start_many(&self.inner, std::slice::from_ref(key))
            .pop()
            .ok_or(Error::NoTierAnswered { failed })?;
        let result = flight.await;
        inner.finish_origin_read(key, result)
    }

    /// Writes `value` into every tier (write-through), valid until `expires_at`.
    /// Loads in flight for `key` will not overwrite it.
    pub async fn put(&self, key: &K, entry: Entry<V>) -> Result<TierReport> {
        key.validate()
            .map_err(|reason| Error::invalid_key(&key.key_str(), reason))?;
        let inner = &*self.inner;
        inner.forget(Scope::Key(key.key_str().into_owned()), |k| k == key);
        let now = inner.clock.now();
        inner.remember_stale(key, &entry, now);
        let outcomes = join_all(inner.tiers.iter().enumerate().map(|(index, slot)| {
            let entry = entry.clone().capped_by_ttl(now, slot.ttl);
            async move {
                let start = inner.start();
                let bytes = entry.value.byte_size();
                let result = inner
                    .call(slot, Operation::Put, slot.layer.put(key, entry))
                    .await;
                inner.settle(index, key, start, bytes, &result, EventKind::Write);
                TierOutcome {
                    index,
                    tier: slot.name.clone(),
                    result: result.map(|()| TierAction::Written),
                }
            }
        }))
        .await;
        TierReport::new(ChainOp::Put, outcomes).into_result()
    }

    /// Removes `key` from every tier. See [`TieredCache::only`] to pick tiers.
    ///
    /// Returns what each tier did, or [`Error::Incomplete`] naming the tiers that
    /// failed: call again to retry. Loads in flight for `key` will not write.
    pub async fn invalidate(&self, key: &K) -> Result<TierReport> {
        self.inner.invalidate(key, None).await
    }

    /// Removes every key starting with `prefix` from every tier.
    pub async fn invalidate_prefix(&self, prefix: &str) -> Result<TierReport> {
        self.inner.invalidate_prefix(prefix, None).await
    }

    /// Removes everything from every tier.
    pub async fn clear(&self) -> Result<TierReport> {
        self.inner.clear(None).await
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
            .filter(|f| f.weak.upgrade().is_some())
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
        self.cache.inner.invalidate(key, Some(self.tiers)).await
    }
    /// [`TieredCache::invalidate_prefix`] on the selected tiers.
    pub async fn invalidate_prefix(&self, prefix: &str) -> Result<TierReport> {
        self.cache
            .inner
            .invalidate_prefix(prefix, Some(self.tiers))
            .await
    }
    /// [`TieredCache::clear`] on the selected tiers.
    pub async fn clear(&self) -> Result<TierReport> {
        self.cache.inner.clear(Some(self.tiers)).await
    }
}

impl<K, V> Inner<K, V>
where
    K: CacheKey,
    V: Clone + ByteSize + MaybeSend + MaybeSync + 'static,
{
    #[inline]
    fn start(&self) -> Option<Stopwatch> {
        self.observer.as_ref().map(|_| Stopwatch::start())
    }

    #[inline]
    fn emit(
        &self,
        kind: EventKind,
        source: EventSource<'_>,
        key: &str,
        latency: Duration,
        bytes: usize,
        error: Option<&Error>,
    ) {
        if let Some(observer) = &self.observer {
            observer.on_event(&Event {
                kind,
                source,
                key,
                latency,
                bytes,
                error,
            });
        }
    }

    fn tier_source(&self, index: usize) -> EventSource<'_> {
        EventSource::Tier {
            index,
            name: &self.tiers[index].name,
        }
    }

    fn lock_flights(&self) -> MutexGuard<'_, HashMap<K, Flight<V>>> {
        self.flights.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a tier call under the tier's timeout.
    async fn call<T>(
        &self,
        slot: &TierSlot<K, V>,
        operation: Operation,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match slot.timeout {
            None => fut.await,
            Some(after) => {
                let fut = pin!(fut);
                match select(fut, self.timer.sleep(after)).await {
                    Either::Left((result, _)) => result,
                    Either::Right(((), _)) => Err(Error::Timeout {
                        tier: slot.name.clone(),
                        operation,
                        after,
                    }),
                }
            }
        }
    }

    /// Feeds a tier call's outcome to the tier's circuit breaker.
    fn record_outcome<T>(&self, index: usize, result: &Result<T>) {
        let breaker = &self.tiers[index].breaker;
        match result {
            Ok(_) => breaker.success(),
            Err(_) => breaker.failure(self.clock.now()),
        }
    }

    /// Records a tier call's outcome in the breaker and the observer.
    fn settle<T>(
        &self,
        index: usize,
        key: &K,
        start: Option<Stopwatch>,
        bytes: usize,
        result: &Result<T>,
        ok_kind: EventKind,
    ) {
        self.record_outcome(index, result);
        if self.observer.is_some() {
            let (kind, error) = event_for(result, ok_kind);
            let bytes = if error.is_none() { bytes } else { 0 };
            self.emit(
                kind,
                self.tier_source(index),
                &key.key_str(),
                elapsed(start),
                bytes,
                error,
            );
        }
    }

    /// Emits `Skipped` and says so when tier `index`'s breaker keeps it out.
    fn breaker_skips(&self, index: usize, key: &K) -> bool {
        if self.tiers[index].breaker.allows(&self.clock) {
            return false;
        }
        if self.observer.is_some() {
            let source = self.tier_source(index);
            self.emit(
                EventKind::Skipped,
                source,
                &key.key_str(),
                Duration::ZERO,
                0,
                None,
            );
        }
        true
    }

    async fn read_tier(&self, index: usize, key: &K) -> Read<V> {
        if self.breaker_skips(index, key) {
            return Read::Failed;
        }
        let slot = &self.tiers[index];
        let start = self.start();
        let result = match slot.timeout {
            // The common in-process case stays small: no timer state in this future.
            None => slot.layer.get(key).await,
            Some(_) => Box::pin(self.call(slot, Operation::Get, slot.layer.get(key))).await,
        };
        self.classify(index, key, start, result, self.clock.now())
    }

    /// Tier `index`'s answer without waiting, when its breaker is closed and it can
    /// give one ([`CacheLayer::get_ready`]); `None` sends the read down the async
    /// path (which also handles open and half-open breakers).
    #[inline]
    fn read_tier_now(&self, index: usize, key: &K) -> Option<Read<V>> {
        let slot = self.tiers.get(index)?;
        if !slot.breaker.is_closed() {
            return None;
        }
        let start = self.start();
        // One clock read serves the tier's expiry check and the chain's.
        let now = self.clock.now();
        let result = slot.layer.get_ready(key, now)?;
        Some(self.classify(index, key, start, result, now))
    }

    /// Turns a tier's answer into a hit, miss or failure: checks expiry against
    /// `now` (read from the chain's clock), updates the breaker and reports to the
    /// observer.
    #[inline]
    fn classify(
        &self,
        index: usize,
        key: &K,
        start: Option<Stopwatch>,
        result: Result<Option<Entry<V>>>,
        now: Timestamp,
    ) -> Read<V> {
        let slot = &self.tiers[index];
        match result {
            Ok(Some(entry)) if !entry.is_expired(now) => {
                slot.breaker.success();
                if self.observer.is_some() {
                    let bytes = entry.value.byte_size();
                    let source = self.tier_source(index);
                    self.emit(
                        EventKind::Hit,
                        source,
                        &key.key_str(),
                        elapsed(start),
                        bytes,
                        None,
                    );
                }
                Read::Hit(entry)
            }
            Ok(_) => {
                self.settle(index, key, start, 0, &Ok(()), EventKind::Miss);
                Read::Miss
            }
            Err(err) => {
                self.settle::<()>(index, key, start, 0, &Err(err), EventKind::Miss);
                Read::Failed
            }
        }
    }

    /// One batch read of tier `index`; `None` if the tier failed or was skipped.
    async fn read_tier_many(&self, index: usize, keys: &[K]) -> Option<Vec<Option<Entry<V>>>> {
        let slot = &self.tiers[index];
        if !slot.breaker.allows(&self.clock) {
            for key in keys {
                let source = self.tier_source(index);
                if self.observer.is_some() {
                    self.emit(
                        EventKind::Skipped,
                        source,
                        &key.key_str(),
                        Duration::ZERO,
                        0,
                        None,
                    );
                }
            }
            return None;
        }
        let start = self.start();
        let result = self
            .call(slot, Operation::GetMany, slot.layer.get_many(keys))
            .await
            .and_then(|found| {
                if found.len() == keys.len() {
                    Ok(found)
                } else {
                    Err(Error::backend(
                        slot.name.clone(),
                        Operation::GetMany,
                        format!("returned {} results for {} keys", found.len(), keys.len()),
                    ))
                }
            });
        let latency = elapsed(start);
        match result {
            Ok(found) => {
                slot.breaker.success();
                let now = self.clock.now();
                let found: Vec<Option<Entry<V>>> = found
                    .into_iter()
                    .map(|e| e.filter(|e| !e.is_expired(now)))
                    .collect();
                if self.observer.is_some() {
                    for (key, entry) in keys.iter().zip(&found) {
                        let (kind, bytes) = match entry {
                            Some(e) => (EventKind::Hit, e.value.byte_size()),
                            None => (EventKind::Miss, 0),
                        };
                        self.emit(
                            kind,
                            self.tier_source(index),
                            &key.key_str(),
                            latency,
                            bytes,
                            None,
                        );
                    }
                }
                Some(found)
            }
            Err(err) => {
                slot.breaker.failure(self.clock.now());
                let kind = failure_kind(&err);
                for key in keys {
                    self.emit(
                        kind,
                        self.tier_source(index),
                        &key.key_str(),
                        latency,
                        0,
                        Some(&err),
                    );
                }
                None
            }
        }
    }

    /// Writes an entry read from a lower tier (or loaded) into `targets`, unless
    /// the key was invalidated since `epoch`; takes the writes back if an
    /// invalidation raced with them.
    async fn write_back(
        &self,
        key: &K,
        entry: &Entry<V>,
        targets: std::ops::Range<usize>,
        epoch: u64,
        kind: EventKind,
    ) {
        let key_str = key.key_str();
        if self.log.touched_since(epoch, &key_str) {
            return;
        }
        let now = self.clock.now();
        self.remember_stale(key, entry, now);
        let written = join_all(targets.filter_map(|index| {
            let slot = &self.tiers[index];
            if !slot.breaker.allows(&self.clock) {
                return None;
            }
            let entry = entry.clone().capped_by_ttl(now, slot.ttl);
            Some(async move {
                let start = self.start();
                let bytes = entry.value.byte_size();
                let result = self
                    .call(slot, Operation::Put, slot.layer.put(key, entry))
                    .await;
                self.settle(index, key, start, bytes, &result, kind);
                index
            })
        }))
        .await;
        if self.log.touched_since(epoch, &key_str) {
            self.take_back(key, &written).await;
        }
    }

    async fn take_back(&self, key: &K, tiers: &[usize]) {
        if let Some(stale) = &self.stale {
            stale.values.remove_key(key);
        }
        join_all(tiers.iter().map(|&index| async move {
            let slot = &self.tiers[index];
            let start = self.start();
            let result = self
                .call(slot, Operation::Remove, slot.layer.remove(key))
                .await;
            self.settle(index, key, start, 0, &result, EventKind::Invalidate);
        }))
        .await;
    }

    /// Batch version of [`Inner::write_back`]: one `put_many` per tier.
    async fn write_back_many(
        &self,
        entries: Vec<(K, Entry<V>)>,
        targets: std::ops::Range<usize>,
        epoch: u64,
        kind: EventKind,
    ) {
        let entries: Vec<(K, Entry<V>)> = entries
            .into_iter()
            .filter(|(k, _)| !self.log.touched_since(epoch, &k.key_str()))
            .collect();
        if entries.is_empty() {
            return;
        }
        let now = self.clock.now();
        for (k, e) in &entries {
            self.remember_stale(k, e, now);
        }
        let entries = &entries;
        let written = join_all(targets.filter_map(|index| {
            let slot = &self.tiers[index];
            if !slot.breaker.allows(&self.clock) {
                return None;
            }
            let batch: Vec<(K, Entry<V>)> = entries
                .iter()
                .map(|(k, e)| (k.clone(), e.clone().capped_by_ttl(now, slot.ttl)))
                .collect();
            Some(async move {
                let start = self.start();
                let sizes: Vec<usize> = if self.observer.is_some() {
                    batch.iter().map(|(_, e)| e.value.byte_size()).collect()
                } else {
                    Vec::new()
                };
                let result = self
                    .call(slot, Operation::PutMany, slot.layer.put_many(batch))
                    .await;
                self.record_outcome(index, &result);
                if self.observer.is_some() {
                    let latency = elapsed(start);
                    let (kind, error) = event_for(&result, kind);
                    for (i, (k, _)) in entries.iter().enumerate() {
                        let bytes = match error {
                            None => sizes.get(i).copied().unwrap_or(0),
                            Some(_) => 0,
                        };
                        self.emit(
                            kind,
                            self.tier_source(index),
                            &k.key_str(),
                            latency,
                            bytes,
                            error,
                        );
                    }
                }
                index
            })
        }))
        .await;
        for (k, _) in entries {
            if self.log.touched_since(epoch, &k.key_str()) {
                self.take_back(k, &written).await;
            }
        }
    }

    fn negative_hit(&self, key: &K) -> bool {
        let Some(negative) = &self.negative else {
            return false;
        };
        let now = self.clock.now();
        let hit = {
            let mut map = negative.map.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(key) {
                Some(&until) if now < until => true,
                Some(_) => {
                    map.remove(key);
                    false
                }
                None => false,
            }
        };
        if hit {
            self.emit(
                EventKind::NegativeHit,
                EventSource::Chain,
                &key.key_str(),
                Duration::ZERO,
                0,
                None,
            );
        }
        hit
    }

    fn remember_negative(&self, key: &K, epoch: u64) {
        let Some(negative) = &self.negative else {
            return;
        };
        if self.log.touched_since(epoch, &key.key_str()) {
            return;
        }
        let now = self.clock.now();
        let mut map = negative.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= negative.capacity {
            map.retain(|_, until| now < *until);
            if map.len() >= negative.capacity {
                map.clear();
            }
        }
        map.insert(key.clone(), now.saturating_add(negative.ttl));
    }

    fn remember_stale(&self, key: &K, entry: &Entry<V>, now: Timestamp) {
        if let Some(stale) = &self.stale {
            let kept = Entry::new(
                entry.value.clone(),
                entry.expires_at.saturating_add(stale.grace),
            );
            stale.values.put_entry(key, kept, now);
        }
    }

    fn stale_value(&self, key: &K) -> Option<Entry<V>> {
        let stale = self.stale.as_ref()?;
        let kept = stale.values.get_entry(key, self.clock.now())?;
        Some(Entry::new(
            kept.value,
            kept.expires_at.saturating_sub(stale.grace),
        ))
    }

    /// Drops what the chain itself remembers about keys matching `matches`, and
    /// records the invalidation so racing reads do not write.
    fn forget(&self, scope: Scope, matches: impl Fn(&K) -> bool) {
        self.log.record(scope);
        self.lock_flights().retain(|k, _| !matches(k));
        if let Some(negative) = &self.negative {
            negative
                .map
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|k, _| !matches(k));
        }
        if let Some(stale) = &self.stale {
            stale.values.retain_keys(|k| !matches(k));
        }
    }

    fn selected(tiers: Option<&[usize]>, index: usize) -> bool {
        tiers.is_none_or(|t| t.contains(&index))
    }

    async fn invalidate(&self, key: &K, tiers: Option<&[usize]>) -> Result<TierReport> {
        key.validate()
            .map_err(|reason| Error::invalid_key(&key.key_str(), reason))?;
        self.forget(Scope::Key(key.key_str().into_owned()), |k| k == key);
        let outcomes = join_all(
            self.tiers
                .iter()
                .enumerate()
                .map(|(index, slot)| async move {
                    if !Self::selected(tiers, index) {
                        return TierOutcome {
                            index,
                            tier: slot.name.clone(),
                            result: Ok(TierAction::NotSelected),
                        };
                    }
                    let start = self.start();
                    let result = self
                        .call(slot, Operation::Remove, slot.layer.remove(key))
                        .await;
                    self.settle(index, key, start, 0, &result, EventKind::Invalidate);
                    TierOutcome {
                        index,
                        tier: slot.name.clone(),
                        result: result.map(|removed| {
                            if removed {
                                TierAction::Removed
                            } else {
                                TierAction::Absent
                            }
                        }),
                    }
                }),
        )
        .await;
        TierReport::new(ChainOp::Invalidate, outcomes).into_result()
    }

    async fn invalidate_prefix(&self, prefix: &str, tiers: Option<&[usize]>) -> Result<TierReport> {
        self.forget(Scope::Prefix(prefix.to_owned()), |k| {
            k.key_str().starts_with(prefix)
        });
        self.remove_everywhere(ChainOp::InvalidatePrefix, prefix, tiers, |slot| {
            slot.layer.remove_prefix(prefix)
        })
        .await
    }

    async fn clear(&self, tiers: Option<&[usize]>) -> Result<TierReport> {
        self.forget(Scope::All, |_| true);
        self.remove_everywhere(ChainOp::Clear, "", tiers, |slot| slot.layer.clear())
            .await
    }

    async fn remove_everywhere<'a, F, Fut>(
        &'a self,
        op: ChainOp,
        what: &str,
        tiers: Option<&[usize]>,
        remove: F,
    ) -> Result<TierReport>
    where
        F: Fn(&'a TierSlot<K, V>) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let operation = match op {
            ChainOp::Clear => Operation::Clear,
            _ => Operation::RemovePrefix,
        };
        let remove = &remove;
        let outcomes = join_all(
            self.tiers
                .iter()
                .enumerate()
                .map(|(index, slot)| async move {
                    if !Self::selected(tiers, index) {
                        return TierOutcome {
                            index,
                            tier: slot.name.clone(),
                            result: Ok(TierAction::NotSelected),
                        };
                    }
                    let start = self.start();
                    let result = self.call(slot, operation, remove(slot)).await;
                    self.record_outcome(index, &result);
                    let (kind, error) = event_for(&result, EventKind::Invalidate);
                    self.emit(
                        kind,
                        self.tier_source(index),
                        what,
                        elapsed(start),
                        0,
                        error,
                    );
                    TierOutcome {
                        index,
                        tier: slot.name.clone(),
                        result: result.map(|()| TierAction::Cleared),
                    }
                }),
        )
        .await;
        TierReport::new(op, outcomes).into_result()
    }

    /// Joins the loads in flight for `keys` and starts one batch load for the rest.
    fn join_or_start_many(this: &Arc<Self>, keys: &[K]) -> Vec<FlightFuture<V>> {
        let mut joined = Vec::new();
        let mut out: Vec<Option<FlightFuture<V>>> = Vec::with_capacity(keys.len());
        let mut to_load: Vec<(K, u64)> = Vec::new();
        let mut positions: Vec<Vec<usize>> = Vec::new();
        {
            let flights = this.lock_flights();
            for (pos, key) in keys.iter().enumerate() {
                if let Some(shared) = flights.get(key).and_then(|f| f.weak.upgrade()) {
                    joined.push(pos);
                    out.push(Some(shared));
                } else if let Some(i) = to_load.iter().position(|(k, _)| k == key) {
                    positions[i].push(pos);
                    out.push(None);
                } else {
                    to_load.push((
                        key.clone(),
                        this.next_flight.fetch_add(1, Ordering::Relaxed),
                    ));
                    positions.push(vec![pos]);
                    out.push(None);
                }
            }
            drop(flights);
            if !to_load.is_empty() {
                let epoch = this.log.current();
                let batch: BoxFuture<'static, Arc<Vec<LoadResult<V>>>> =
                    Box::pin(Self::run_loads(this.clone(), to_load.clone(), epoch));
                let batch = batch.shared();
                let mut flights = this.lock_flights();
                for (i, (key, id)) in to_load.into_iter().enumerate() {
                    let per_key: BoxFuture<'static, LoadResult<V>> =
                        Box::pin(batch.clone().map(move |all: Arc<Vec<LoadResult<V>>>| {
                            all.get(i).cloned().unwrap_or(Ok(None))
                        }));
                    let shared = per_key.shared();
                    if let Some(weak) = shared.downgrade() {
                        flights.insert(key, Flight { id, weak });
                    }
                    for &pos in &positions[i] {
                        out[pos] = Some(shared.clone());
                    }
                }
            }
        }
        for pos in joined {
            this.emit(
                EventKind::Coalesced,
                EventSource::Origin,
                &keys[pos].key_str(),
                Duration::ZERO,
                0,
                None,
            );
        }
        out.into_iter().flatten().collect()
    }

    /// One origin load for `keys` (each with its flight id): writes results into
    /// every tier unless invalidated, then retires the flights.
    async fn run_loads(
        this: Arc<Self>,
        keys: Vec<(K, u64)>,
        epoch: u64,
    ) -> Arc<Vec<LoadResult<V>>> {
        let Some(origin) = this.origin.clone() else {
            return Arc::new(Vec::new());
        };
        let start = this.start();
        let plain: Vec<K> = keys.iter().map(|(k, _)| k.clone()).collect();
        let loaded = if plain.len() == 1 {
            origin.load(&plain[0]).await.map(|e| vec![e])
        } else {
            origin.load_many(&plain).await
        };
        let latency = elapsed(start);
        let now = this.clock.now();
        let results: Vec<LoadResult<V>> = match loaded {
            Ok(found) if found.len() == plain.len() => found
                .into_iter()
                .map(|e| match e {
                    Some(e) if e.is_expired(now) => Err(Arc::new(ExpiredFromOrigin) as SharedError),
                    other => Ok(other),
                })
                .collect(),
            Ok(found) => {
                let err: SharedError = Arc::from(BoxError::from(format!(
                    "the origin returned {} values for {} keys",
                    found.len(),
                    plain.len()
                )));
                plain.iter().map(|_| Err(err.clone())).collect()
            }
            Err(err) => {
                let err: SharedError = Arc::from(err);
                plain.iter().map(|_| Err(err.clone())).collect()
            }
        };
        let mut fresh = Vec::new();
        for (key, result) in plain.iter().zip(&results) {
            match result {
                Ok(Some(entry)) => {
                    this.emit(
                        EventKind::OriginLoad,
                        EventSource::Origin,
                        &key.key_str(),
                        latency,
                        entry.value.byte_size(),
                        None,
                    );
                    fresh.push((key.clone(), entry.clone()));
                }
                Ok(None) => {
                    this.emit(
                        EventKind::OriginNotFound,
                        EventSource::Origin,
                        &key.key_str(),
                        latency,
                        0,
                        None,
                    );
                    this.remember_negative(key, epoch);
                }
                Err(err) => {
                    if this.observer.is_some() {
                        let err = Error::Origin {
                            source: err.clone(),
                        };
                        this.emit(
                            EventKind::OriginError,
                            EventSource::Origin,
                            &key.key_str(),
                            latency,
                            0,
                            Some(&err),
                        );
                    }
                }
            }
        }
        let all = 0..this.tiers.len();
        match fresh.len() {
            0 => {}
            1 => {
                let (key, entry) = &fresh[0];
                this.write_back(key, entry, all, epoch, EventKind::Write)
                    .await;
            }
            _ => {
                this.write_back_many(fresh, all, epoch, EventKind::Write)
                    .await
            }
        }
        let mut flights = this.lock_flights();
        for (key, id) in &keys {
            if flights.get(key).is_some_and(|f| f.id == *id) {
                flights.remove(key);
            }
        }
        Arc::new(results)
    }

    fn finish_origin_read(&self, key: &K, result: LoadResult<V>) -> Result<Option<Lookup<'_, V>>> {
        match result {
            Ok(found) => Ok(found.map(|entry| Lookup {
                entry,
                source: Source::Origin,
            })),
            Err(source) => match self.stale_value(key) {
                Some(entry) => {
                    self.emit(
                        EventKind::StaleServed,
                        EventSource::Chain,
                        &key.key_str(),
                        Duration::ZERO,
                        entry.value.byte_size(),
                        None,
                    );
                    Ok(Some(Lookup {
                        entry,
                        source: Source::Stale,
                    }))
                }
                None => Err(Error::Origin { source }),
            },
        }
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
