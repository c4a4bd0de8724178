//! [`MokaTier`]: the in-process tier, a moka `future::Cache` bounded by bytes.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_lock::RwLock;
use cache_core::{
    async_trait, ByteSize, CacheKey, CacheLayer, Clock, Entry, Fence, Fill, Result, TierOptions,
};
use moka::Expiry;

/// Bytes counted per entry on top of key and value, for moka's own bookkeeping.
const ENTRY_OVERHEAD: usize = 64;

/// An in-process tier backed by a [moka](https://docs.rs/moka) `future::Cache`.
///
/// - **Capacity** is a byte budget: each entry weighs its key's string form plus
///   the value's [`ByteSize`] plus a small fixed overhead. Moka evicts by its
///   TinyLFU policy when the budget is full.
/// - **Expiry** of each entry is `min(entry.expires_at, now + tier_ttl)`, handed
///   to moka through its per-entry expiry policy, so memory is reclaimed on time.
///   Every read is also checked against the injected [`Clock`], so an entry is
///   never served at or after its expiry even when moka still holds it (tests
///   move a manual clock forward without sleeping).
///
/// Keys are not encoded: moka has no key syntax and compares keys by value.
///
/// # Fenced writes
///
/// [`put_fenced`](CacheLayer::put_fenced) checks its [`Fence`] and inserts in one
/// step with respect to `remove`, `remove_prefix` and `clear`
/// ([`fenced_writes_are_atomic`](CacheLayer::fenced_writes_are_atomic) is
/// `true`): fenced writes hold a tier-wide lock shared, removals hold it
/// exclusively. (Moka's own per-key locking is not enough: `invalidate_all` and
/// the prefix scan take no per-key lock.) So a removal is either entirely
/// before a fenced write, whose check then fails and nothing is written, or
/// entirely after it, and removes what was written. A refused write leaves the
/// old value in place. Reads and plain `put`s never take the lock. The tier
/// hands out no stamps ([`Stamp::NONE`](cache_core::Stamp::NONE)): the fence's
/// in-process check covers an in-process tier.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use cache_core::{CacheLayer, Clock, Entry, SystemClock};
/// use cache_server::MokaTier;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let tier: MokaTier<String, String> = MokaTier::builder()
///     .max_bytes(64 * 1024 * 1024)
///     .ttl(Duration::from_secs(300))
///     .build();
/// let key = "avatar:42".to_string();
/// tier.put(&key, Entry::expiring_in("https://img/42".into(), SystemClock.now(), Duration::from_secs(60))).await?;
/// assert_eq!(tier.get(&key).await?.unwrap().value, "https://img/42");
/// # Ok::<_, cache_core::Error>(()) }).unwrap();
/// ```
pub struct MokaTier<K, V> {
    cache: moka::future::Cache<K, Entry<V>>,
    /// Fenced writes hold it shared, removals exclusively (see "Fenced writes").
    fence: Arc<RwLock<()>>,
    /// Name, TTL and clock (the byte budget is the cache's; no entry bound).
    options: TierOptions,
}

impl<K, V> Clone for MokaTier<K, V> {
    fn clone(&self) -> Self {
        MokaTier {
            cache: self.cache.clone(),
            fence: self.fence.clone(),
            options: self.options.clone(),
        }
    }
}

impl<K, V> fmt::Debug for MokaTier<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MokaTier")
            .field("name", &self.options.name())
            .field("ttl", &self.options.ttl())
            .field("max_bytes", &self.cache.policy().max_capacity())
            .finish_non_exhaustive()
    }
}

impl<K, V> fmt::Display for MokaTier<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MokaTier({})", self.options.name())
    }
}

/// Per-entry expiry: the time left until the entry's (already TTL-capped) expiry,
/// measured on the tier's clock.
struct EntryExpiry {
    clock: Arc<dyn Clock>,
}

impl<K, V> Expiry<K, Entry<V>> for EntryExpiry {
    fn expire_after_create(&self, _: &K, value: &Entry<V>, _: Instant) -> Option<Duration> {
        Some(value.remaining(self.clock.now()))
    }

    fn expire_after_update(
        &self,
        _: &K,
        value: &Entry<V>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        // A replaced entry brings its own expiry; the old one must not linger.
        Some(value.remaining(self.clock.now()))
    }
}

impl<K, V> MokaTier<K, V>
where
    K: CacheKey,
    V: Clone + ByteSize + Send + Sync + 'static,
{
    /// A builder with a 64 MiB budget, no tier TTL and the system clock.
    pub fn builder() -> MokaTierBuilder<K, V> {
        MokaTierBuilder::default()
    }

    /// The number of entries moka holds (approximate until pending tasks run).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// The bytes counted against the budget (approximate until pending tasks run).
    pub fn weighted_bytes(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Runs moka's pending maintenance (evictions, counters) now.
    pub async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks().await;
    }

    /// Whether moka holds an entry for `key`, without touching its recency or
    /// frequency statistics.
    pub fn contains(&self, key: &K) -> bool {
        self.cache.contains_key(key)
    }

    /// Inserts `entry` capped by the tier's TTL, or drops the key if that leaves
    /// it expired (the old value must not survive an expired put).
    async fn store(&self, key: &K, entry: Entry<V>) {
        let now = self.options.clock().now();
        let entry = entry.capped_by_ttl(now, self.options.ttl());
        if entry.is_expired(now) {
            self.cache.invalidate(key).await;
        } else {
            self.cache.insert(key.clone(), entry).await;
        }
    }
}

#[async_trait]
impl<K, V> CacheLayer<K, V> for MokaTier<K, V>
where
    K: CacheKey,
    V: Clone + ByteSize + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        self.options.name()
    }

    async fn get(&self, key: &K) -> Result<Option<Entry<V>>> {
        let now = self.options.clock().now();
        Ok(self.cache.get(key).await.filter(|e| !e.is_expired(now)))
    }

    async fn put(&self, key: &K, entry: Entry<V>) -> Result<()> {
        self.store(key, entry).await;
        Ok(())
    }

    async fn put_fenced(&self, key: &K, entry: Entry<V>, fence: &Fence<'_>) -> Result<Fill> {
        // Shared: fills run side by side; a removal waits for them and they
        // wait for it, so the check below and the insert are one step for it.
        let _fill = self.fence.read().await;
        if !fence.holds() {
            return Ok(Fill::Refused);
        }
        self.store(key, entry).await;
        Ok(Fill::Written)
    }

    async fn put_many_fenced(
        &self,
        entries: Vec<(K, Entry<V>)>,
        fences: &[Fence<'_>],
    ) -> Result<Vec<Fill>> {
        let _fill = self.fence.read().await;
        let mut out = Vec::with_capacity(entries.len());
        let mut fences = fences.iter();
        for (key, entry) in entries {
            // Each check right before its own insert; an entry without a
            // fence is refused.
            if fences.next().is_some_and(Fence::holds) {
                self.store(&key, entry).await;
                out.push(Fill::Written);
            } else {
                out.push(Fill::Refused);
            }
        }
        Ok(out)
    }

    fn fenced_writes_are_atomic(&self) -> bool {
        true
    }

    async fn remove(&self, key: &K) -> Result<bool> {
        let _removal = self.fence.write().await;
        let now = self.options.clock().now();
        Ok(self
            .cache
            .remove(key)
            .await
            .is_some_and(|e| !e.is_expired(now)))
    }

    async fn remove_prefix(&self, prefix: &str) -> Result<()> {
        let _removal = self.fence.write().await;
        let doomed: Vec<Arc<K>> = self
            .cache
            .iter()
            .filter(|(k, _)| k.key_str().starts_with(prefix))
            .map(|(k, _)| k)
            .collect();
        for key in doomed {
            self.cache.invalidate(&*key).await;
        }
        Ok(())
    }

    async fn clear(&self) -> Result<()> {
        let _removal = self.fence.write().await;
        // Entries inserted before this call are never returned afterwards.
        self.cache.invalidate_all();
        Ok(())
    }
}

/// Builds a [`MokaTier`]. See [`MokaTier::builder`].
///
/// ```
/// use std::time::Duration;
/// use cache_server::MokaTier;
///
/// let tier: MokaTier<u64, String> = MokaTier::builder()
///     .name("in-process")
///     .max_bytes(8 * 1024 * 1024)
///     .ttl(Duration::from_secs(120))
///     .build();
/// assert_eq!(cache_core::CacheLayer::name(&tier), "in-process");
/// ```
/// Its settings are a [`TierOptions`] (moka bounds by bytes only: it has no
/// `max_entries`).
#[must_use]
pub struct MokaTierBuilder<K, V> {
    options: TierOptions,
    _types: std::marker::PhantomData<fn(K, V)>,
}

impl<K, V> fmt::Debug for MokaTierBuilder<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MokaTierBuilder")
            .field("name", &self.options.name())
            .field("max_bytes", &self.options.max_bytes())
            .field("ttl", &self.options.ttl())
            .finish_non_exhaustive()
    }
}

impl<K, V> Default for MokaTierBuilder<K, V> {
    fn default() -> Self {
        MokaTierBuilder {
            options: TierOptions::default()
                .with_name("moka")
                .with_max_bytes(64 * 1024 * 1024),
            _types: std::marker::PhantomData,
        }
    }
}

impl<K, V> MokaTierBuilder<K, V>
where
    K: CacheKey,
    V: Clone + ByteSize + Send + Sync + 'static,
{
    /// The tier's name in errors and metrics (default `"moka"`).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.options = self.options.with_name(name);
        self
    }

    /// The byte budget (default 64 MiB).
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        self.options = self.options.with_max_bytes(bytes);
        self
    }

    /// The tier's own TTL: no entry lives longer than this after its put.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.options = self.options.with_ttl(ttl);
        self
    }

    /// The clock expiry is decided by (default [`SystemClock`](cache_core::SystemClock)).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.options = self.options.with_clock(clock);
        self
    }

    /// The clock expiry is decided by, shared.
    pub fn shared_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.options = self.options.with_shared_clock(clock);
        self
    }

    /// Builds the tier.
    pub fn build(self) -> MokaTier<K, V> {
        let cache = moka::future::Cache::builder()
            .name(self.options.name())
            .max_capacity(self.options.max_bytes() as u64)
            .weigher(|k: &K, e: &Entry<V>| {
                let bytes = k.key_str().len() + e.value.byte_size() + ENTRY_OVERHEAD;
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .expire_after(EntryExpiry {
                clock: self.options.clock().clone(),
            })
            .build();
        MokaTier {
            cache,
            fence: Arc::new(RwLock::new(())),
            options: self.options,
        }
    }
}
