//! [`SyncedCache`]: a chain whose invalidations reach every instance,
//! confirmed; and how the bus reaches its in-process tiers.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use cache_core::{
    ByteSize, CacheKey, ChainOp, Entry, Lookup, MaybeSend, MaybeSync, Result, TierReport,
    TieredCache,
};
use futures_util::future::BoxFuture;
use tokio::sync::broadcast;

use super::inner::{bump, Applier, BusInner};
use super::{Invalidation, InvalidationBus};

/// Registers `applier` on `bus`; it is removed when the returned guard
/// drops. `true` beside it if the bus has delivered invalidations or flushes
/// before (which `applier` missed).
fn register(bus: &InvalidationBus, applier: Arc<dyn Applier>) -> (Registration, bool) {
    let id = bus.inner.next_applier.fetch_add(1, Ordering::Relaxed);
    let mut missed = false;
    if let Ok(mut appliers) = bus.inner.appliers.lock() {
        missed = appliers.deliveries > 0;
        appliers.list.push((id, applier));
    }
    let registration = Registration {
        bus: Arc::downgrade(&bus.inner),
        id,
    };
    (registration, missed)
}

/// Removes an applier from its bus when dropped.
struct Registration {
    bus: Weak<BusInner>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            if let Ok(mut appliers) = bus.appliers.lock() {
                appliers.list.retain(|(id, _)| *id != self.id);
            }
        }
    }
}

/// The in-process tiers of one [`SyncedCache`], as the bus sees them.
struct LocalTiers<K, V> {
    chain: TieredCache<K, V>,
    tiers: Vec<usize>,
    applied: broadcast::Sender<Invalidation>,
    flushes: AtomicU64,
    /// Set when the bus delivered invalidations before this chain was
    /// wrapped (they reached no tier of it): the first read through the
    /// [`SyncedCache`] flushes the local tiers before it is served.
    missed: AtomicBool,
    /// Held while that flush runs, so reads meanwhile wait for it.
    catching_up: tokio::sync::Mutex<()>,
}

impl<K, V> LocalTiers<K, V>
where
    K: CacheKey + FromStr,
    V: Clone + ByteSize + MaybeSend + MaybeSync + 'static,
{
    /// Before a read: one atomic load, unless invalidations were missed.
    #[inline]
    async fn catch_up(&self) -> Result<()> {
        if self.missed.load(Ordering::Acquire) {
            self.flush_missed().await?;
        }
        Ok(())
    }

    #[cold]
    async fn flush_missed(&self) -> Result<()> {
        let _one = self.catching_up.lock().await;
        if !self.missed.load(Ordering::Acquire) {
            return Ok(());
        }
        tracing::info!(
            "the invalidation bus delivered invalidations before this chain was wrapped; flushing its in-process tiers"
        );
        self.flush()
            .await
            .map_err(|why| cache_core::Error::Unavailable {
                tier: super::BUS.into(),
                reason: format!(
                    "flushing the in-process tiers for invalidations missed before the chain was wrapped: {why}"
                ),
            })?;
        self.missed.store(false, Ordering::Release);
        Ok(())
    }
}

impl<K, V> Applier for LocalTiers<K, V>
where
    K: CacheKey + FromStr,
    V: Clone + ByteSize + MaybeSend + MaybeSync + 'static,
{
    fn apply<'a>(
        &'a self,
        invalidation: &'a Invalidation,
    ) -> BoxFuture<'a, std::result::Result<(), String>> {
        Box::pin(async move {
            let only = self.chain.only(&self.tiers);
            let result = match invalidation {
                Invalidation::Key(k) => match K::from_str(k).ok() {
                    Some(key) => only.invalidate(&key).await,
                    None => only.clear().await,
                },
                Invalidation::Prefix(p) => only.invalidate_prefix(p).await,
                Invalidation::Clear => only.clear().await,
                Invalidation::Tag { tag, generation } => {
                    self.chain.tag_invalidated(tag, *generation);
                    Ok(TierReport::new(ChainOp::Invalidate, Vec::new()))
                }
            };
            let _ = self.applied.send(invalidation.clone());
            result.map(|_| ()).map_err(|e| e.to_string())
        })
    }

    fn flush(&self) -> BoxFuture<'_, std::result::Result<(), String>> {
        Box::pin(async move {
            let result = self
                .chain
                .only(&self.tiers)
                .resync("invalidation bus")
                .await;
            bump(&self.flushes);
            let _ = self.applied.send(Invalidation::Clear);
            result.map(|_| ()).map_err(|e| {
                tracing::warn!(error = %e, "flushing the in-process tiers failed");
                e.to_string()
            })
        })
    }
}

/// A [`TieredCache`] whose invalidations reach every instance, confirmed.
///
/// `invalidate`, `invalidate_prefix`, `clear` and `put` act on every tier of
/// this instance's chain (the shared Redis tier included), then publish on the
/// bus, then **wait until every live instance has applied it**. Every other
/// instance's `SyncedCache` on the same channel drops the key from its **local
/// tiers** only (the indexes given to [`SyncedCache::new`], usually `[0]` for
/// the moka tier), through [`TieredCache::only`], so loads in flight there do
/// not write the old value back, and then acknowledges. Other `SyncedCache`s
/// on the same bus handle (clones of one [`InvalidationBus`]) get it directly,
/// before it is published.
///
/// # The guarantee
///
/// When one of these calls returns `Ok`, no live instance's in-process tiers
/// hold an old value of the key, and no read that starts afterwards on any
/// instance returns one, with one exception: an instance whose bus link is
/// down, for **at most heartbeat interval + heartbeat timeout (3 s with the
/// defaults)** after it sent the last heartbeat that came back (however
/// slowly it came back); by then it has flushed its
/// in-process tiers, and it keeps flushing them every interval until its link
/// is back (see [`InvalidationBus`]).
///
/// An instance is waited for from the moment its bus is connected, but an
/// invalidation reaches a chain only once it is wrapped here. If the bus
/// delivered any before [`SyncedCache::new`] (the chain was used before it
/// was wrapped), the first read through this `SyncedCache` flushes the local
/// tiers before it is served; reads through [`SyncedCache::chain`] skip that.
///
/// The instances waited for are exactly those registered when the
/// invalidation was published (the publish script reads the registry in the
/// same step; each registered only once subscribed, so each receives it).
/// One that leaves ([`InvalidationBus::shutdown`]) is gone from the registry
/// and not waited for. One whose registration says its link is down, or runs
/// out (it stopped refreshing it: dead, or its link is down), or (standalone server)
/// that has no subscriber on its inbox (its connection is gone) is excused:
/// it is flushing, or flushes before it can serve again. An instance that
/// does none of this and does not acknowledge within the ack timeout
/// ([`InvalidationBusBuilder::ack_timeout`](crate::InvalidationBusBuilder::ack_timeout),
/// default interval + timeout + interval) makes the call return
/// [`Error::Unavailable`](cache_core::Error::Unavailable) naming it (`tier:
/// "invalidation-bus"`), never `Ok`; everything was still applied here and
/// published. An instance acknowledges only once the invalidation is applied
/// to its local tiers (or, if that failed, once they were flushed).
///
/// **A paused process.** An instance that is paused (a stopped process, a
/// starved runtime) for longer than the bound is skipped by the others once
/// its registration runs out, and its watchdog cannot flush meanwhile. So a
/// read through [`SyncedCache::get`] or [`SyncedCache::get_many`] first
/// looks at the link when it has been silent past its limit (one clock read
/// and one atomic load otherwise): the link is declared down and the local
/// tiers flushed before the read is served.
///
/// Reads and plain fills never publish anything. When messages may have been
/// lost (see [`InvalidationBus`]), the local tiers are flushed.
///
/// Remote keys arrive as strings and are turned back into `K` with
/// [`FromStr`]; a key that does not parse flushes the local tiers instead.
///
/// # Example
///
/// ```no_run
/// use cache_core::{Tier, TieredCache};
/// use cache_server::{InvalidationBus, MokaTier, SyncedCache};
///
/// # async fn demo() -> cache_core::Result<()> {
/// let chain: TieredCache<u64, String> =
///     TieredCache::builder().tier(Tier::new(MokaTier::builder().build())).build();
/// let bus = InvalidationBus::builder().url("redis://127.0.0.1:6379").connect().await?;
/// let cache = SyncedCache::new(chain, bus, vec![0]);
/// cache.invalidate(&42).await?;
/// # Ok(()) }
/// ```
pub struct SyncedCache<K, V> {
    chain: TieredCache<K, V>,
    bus: InvalidationBus,
    local: Arc<LocalTiers<K, V>>,
    registration: Registration,
}

impl<K, V> fmt::Debug for SyncedCache<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncedCache")
            .field("chain", &self.chain)
            .field("bus", &self.bus)
            .field("local_tiers", &self.local.tiers)
            .finish_non_exhaustive()
    }
}

impl<K, V> SyncedCache<K, V>
where
    K: CacheKey + FromStr,
    V: Clone + ByteSize + MaybeSend + MaybeSync + 'static,
{
    /// Wraps `chain`; `local_tiers` are the indexes of the in-process tiers that
    /// other instances' invalidations must reach.
    ///
    /// ```no_run
    /// # use cache_core::{Tier, TieredCache};
    /// # async fn demo(chain: TieredCache<String, String>, bus: cache_server::InvalidationBus) {
    /// let cache = cache_server::SyncedCache::new(chain, bus, vec![0]);
    /// # let _ = cache; }
    /// ```
    pub fn new(chain: TieredCache<K, V>, bus: InvalidationBus, local_tiers: Vec<usize>) -> Self {
        let (applied, _) = broadcast::channel(1024);
        let local = Arc::new(LocalTiers {
            chain: chain.clone(),
            tiers: local_tiers,
            applied,
            flushes: AtomicU64::new(0),
            missed: AtomicBool::new(false),
            catching_up: tokio::sync::Mutex::new(()),
        });
        let (registration, missed) = register(&bus, local.clone());
        local.missed.store(missed, Ordering::Release);
        SyncedCache {
            chain,
            bus,
            local,
            registration,
        }
    }

    /// The chain, for reads and everything else.
    ///
    /// ```no_run
    /// # async fn demo(cache: cache_server::SyncedCache<String, String>) {
    /// println!("{:?}", cache.chain().tier_names());
    /// # }
    /// ```
    pub fn chain(&self) -> &TieredCache<K, V> {
        &self.chain
    }

    /// The bus.
    ///
    /// ```no_run
    /// # async fn demo(cache: cache_server::SyncedCache<String, String>) {
    /// println!("{:?}", cache.bus().stats());
    /// # }
    /// ```
    pub fn bus(&self) -> &InvalidationBus {
        &self.bus
    }

    /// [`TieredCache::get`], after a look at the bus link if it has been
    /// silent past its limit and the watchdog has not looked yet (see
    /// [the guarantee](SyncedCache#the-guarantee)). Reading through
    /// [`SyncedCache::chain`] skips that look.
    ///
    /// ```no_run
    /// # async fn demo(cache: cache_server::SyncedCache<String, String>) -> cache_core::Result<()> {
    /// if let Some(hit) = cache.get(&"user:42".to_string()).await? {
    ///     println!("{} from {:?}", hit.value(), hit.source);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, key: &K) -> Result<Option<Lookup<'_, V>>> {
        self.local.catch_up().await?;
        self.bus.inner.look_before_read().await;
        self.chain.get(key).await
    }

    /// [`TieredCache::get_many`], after the same look at the link as
    /// [`SyncedCache::get`].
    ///
    /// ```no_run
    /// # async fn demo(cache: cache_server::SyncedCache<String, String>) -> cache_core::Result<()> {
    /// let hits = cache.get_many(&["user:1".to_string(), "user:2".to_string()]).await?;
    /// # let _ = hits; Ok(()) }
    /// ```
    pub async fn get_many(&self, keys: &[K]) -> Result<Vec<Option<Lookup<'_, V>>>> {
        self.local.catch_up().await?;
        self.bus.inner.look_before_read().await;
        self.chain.get_many(keys).await
    }

    /// Removes `key` from every tier here, then tells every other instance to
    /// drop it from its local tiers and waits until every live one has (see
    /// [the guarantee](SyncedCache#the-guarantee)). The message is published
    /// even if a tier failed here; the error then names the tier, so the call
    /// can be retried. An instance that did not confirm gives
    /// [`Error::Unavailable`](cache_core::Error::Unavailable).
    ///
    /// ```no_run
    /// # async fn demo(cache: cache_server::SyncedCache<String, String>) -> cache_core::Result<()> {
    /// cache.invalidate(&"user:42".to_string()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn invalidate(&self, key: &K) -> Result<TierReport> {
        let report = self.chain.invalidate(key).await;
        self.finish(report, Invalidation::Key(key.key_str().into_owned()))
            .await
    }

    /// Removes every key starting with `prefix`, here and on every instance
    /// (confirmed like [`SyncedCache::invalidate`]).
    ///
    /// ```no_run
    /// # async fn demo(cache: cache_server::SyncedCache<String, String>) -> cache_core::Result<()> {
    /// cache.invalidate_prefix("team:7:").await?;
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_prefix(&self, prefix: &str) -> Result<TierReport> {
        let report = self.chain.invalidate_prefix(prefix).await;
        self.finish(report, Invalidation::Prefix(prefix.to_owned()))
            .await
    }

    /// Clears every tier here and the local tiers of every instance
    /// (confirmed like [`SyncedCache::invalidate`]).
    ///
    /// ```no_run
    /// # async fn demo(cache: cache_server::SyncedCache<String, String>) -> cache_core::Result<()> {
    /// cache.clear().await?;
    /// # Ok(()) }
    /// ```
    pub async fn clear(&self) -> Result<TierReport> {
        let report = self.chain.clear().await;
        self.finish(report, Invalidation::Clear).await
    }

    /// Writes `entry` into every tier here ([`TieredCache::put`]), then tells
    /// every other instance to drop `key` from its local tiers, so their next
    /// read finds the new value in the shared tier (confirmed like
    /// [`SyncedCache::invalidate`]).
    ///
    /// ```no_run
    /// # async fn demo(cache: cache_server::SyncedCache<String, String>) -> cache_core::Result<()> {
    /// use std::time::Duration;
    /// use cache_core::{Clock, Entry, SystemClock};
    /// let entry = Entry::expiring_in("https://img/42-v2".to_string(), SystemClock.now(), Duration::from_secs(3600));
    /// cache.put(&"user:42".to_string(), entry).await?;
    /// # Ok(()) }
    /// ```
    pub async fn put(&self, key: &K, entry: Entry<V>) -> Result<TierReport> {
        let report = self.chain.put(key, entry).await;
        self.finish(report, Invalidation::Key(key.key_str().into_owned()))
            .await
    }

    /// Drops every entry carrying `tag` here ([`TieredCache::invalidate_tag`],
    /// with the chain's tag store, usually a [`RedisTagStore`](crate::RedisTagStore)),
    /// then tells every other instance the tag's new generation and waits
    /// until every live one has learned it (confirmed like
    /// [`SyncedCache::invalidate`]). Returns the new generation.
    ///
    /// If the bump itself fails, nothing is published and the error is
    /// returned: call again.
    ///
    /// ```no_run
    /// # async fn demo(cache: cache_server::SyncedCache<String, String>) -> cache_core::Result<()> {
    /// cache.invalidate_tag("user:42").await?; // avatar, name, friends list... of user 42
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_tag(&self, tag: &str) -> Result<u64> {
        let generation = self.chain.invalidate_tag(tag).await?;
        let invalidation = Invalidation::Tag {
            tag: tag.to_owned(),
            generation,
        };
        let here = self
            .bus
            .inner
            .apply_locally(Some(self.registration.id), &invalidation)
            .await;
        self.bus.publish_confirmed(&invalidation).await?;
        here.map_err(|reason| cache_core::Error::Unavailable {
            tier: super::BUS.into(),
            reason: format!("another cache on this bus failed to apply the invalidation: {reason}"),
        })?;
        Ok(generation)
    }

    async fn finish(
        &self,
        report: Result<TierReport>,
        invalidation: Invalidation,
    ) -> Result<TierReport> {
        // Other chains on this bus handle: a failure there is a failure of
        // this call (those tiers may still hold the old value).
        let here = self
            .bus
            .inner
            .apply_locally(Some(self.registration.id), &invalidation)
            .await;
        let confirmed = self.bus.publish_confirmed(&invalidation).await;
        let report = report?;
        confirmed?;
        here.map_err(|reason| cache_core::Error::Unavailable {
            tier: super::BUS.into(),
            reason: format!("another cache on this bus failed to apply the invalidation: {reason}"),
        })?;
        Ok(report)
    }

    /// Every invalidation from another instance (or another `SyncedCache` on
    /// the same bus handle), once applied to the local tiers here
    /// ([`Invalidation::Clear`] also after a resync flush).
    ///
    /// ```no_run
    /// # async fn demo(cache: cache_server::SyncedCache<String, String>) {
    /// let mut applied = cache.applied();
    /// while let Ok(inv) = applied.recv().await {
    ///     println!("dropped {inv:?}");
    /// }
    /// # }
    /// ```
    pub fn applied(&self) -> broadcast::Receiver<Invalidation> {
        self.local.applied.subscribe()
    }

    /// Flushes the local tiers every time `failovers` ticks (usually
    /// [`RedisTier::failovers`](crate::RedisTier::failovers) of the chain's
    /// shared tier): after a failover the shared tier voided what it held,
    /// and values the local tiers read from it before may be ones whose
    /// removal the failover lost. Runs until the cache or the channel is
    /// dropped.
    ///
    /// ```no_run
    /// # async fn demo(cache: cache_server::SyncedCache<String, String>, redis: cache_server::RedisTier<String>) {
    /// cache.flush_on_failover(redis.failovers());
    /// # }
    /// ```
    pub fn flush_on_failover(&self, mut failovers: tokio::sync::watch::Receiver<u64>) {
        let local = Arc::downgrade(&self.local);
        tokio::spawn(async move {
            while failovers.changed().await.is_ok() {
                let Some(local) = local.upgrade() else { return };
                tracing::warn!("the shared tier failed over; flushing the in-process tiers");
                let _ = local.flush().await;
            }
        });
    }

    /// How many times the local tiers were flushed because messages may have
    /// been lost.
    ///
    /// ```no_run
    /// # async fn demo(cache: cache_server::SyncedCache<String, String>) {
    /// println!("{} resync flushes", cache.resync_flushes());
    /// # }
    /// ```
    pub fn resync_flushes(&self) -> u64 {
        self.local.flushes.load(Ordering::Relaxed)
    }
}
