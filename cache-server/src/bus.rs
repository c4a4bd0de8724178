//! Invalidation across instances: [`InvalidationBus`] (Redis pub/sub) and
//! [`SyncedCache`] (a chain whose invalidations reach every instance).

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_core::{
    ByteSize, CacheKey, Error, Lookup, MaybeSend, MaybeSync, Operation, Result, TierReport,
    TieredCache,
};
use fred::clients::{Client, SubscriberClient};
use fred::prelude::{ClientLike, Config, EventInterface, PubsubInterface, ReconnectPolicy};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::redis::{client_builder, default_reconnect_policy};

/// The bus's name in errors.
const BUS: &str = "invalidation-bus";
/// Wire format version, first line of every message.
const WIRE_VERSION: &str = "lc1";

/// What to drop from the in-process tiers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// One key, by its string form.
    Key(String),
    /// Every key starting with this prefix.
    Prefix(String),
    /// Everything.
    Clear,
}

impl Invalidation {
    fn encode(&self, origin: u64) -> String {
        let (kind, body) = match self {
            Invalidation::Key(k) => ("k", k.as_str()),
            Invalidation::Prefix(p) => ("p", p.as_str()),
            Invalidation::Clear => ("c", ""),
        };
        format!("{WIRE_VERSION}\n{origin:016x}\n{kind}\n{body}")
    }

    /// Parses a message; `None` for anything this build does not understand.
    fn decode(msg: &str) -> Option<(u64, Invalidation)> {
        let mut parts = msg.splitn(4, '\n');
        if parts.next()? != WIRE_VERSION {
            return None;
        }
        let origin = u64::from_str_radix(parts.next()?, 16).ok()?;
        let kind = parts.next()?;
        let body = parts.next()?.to_owned();
        let inv = match kind {
            "k" => Invalidation::Key(body),
            "p" => Invalidation::Prefix(body),
            "c" => Invalidation::Clear,
            _ => return None,
        };
        Some((origin, inv))
    }
}

#[derive(Clone, Debug)]
enum BusEvent {
    Message(u64, Invalidation),
    /// Messages may have been lost: flush.
    Resync,
}

/// Counters of an [`InvalidationBus`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusStats {
    /// Messages published by this process.
    pub published: u64,
    /// Messages received (including this process's own).
    pub received: u64,
    /// Messages that could not be parsed (ignored).
    pub malformed: u64,
    /// Times the subscriber reconnected (or fell behind) and listeners were told
    /// to flush.
    pub resyncs: u64,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    received: AtomicU64,
    malformed: AtomicU64,
    resyncs: AtomicU64,
}

struct BusInner {
    publisher: Client,
    subscriber: SubscriberClient,
    channel: String,
    events: broadcast::Sender<BusEvent>,
    counters: Counters,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for BusInner {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.get_mut() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (p, s) = (self.publisher.clone(), self.subscriber.clone());
            rt.spawn(async move {
                let _ = s.quit().await;
                let _ = p.quit().await;
            });
        }
    }
}

/// Invalidation messages between instances over Redis pub/sub.
///
/// One publisher connection and one subscriber connection on one channel. A
/// [`SyncedCache`] publishes its invalidations here and applies the other
/// instances' to its in-process tiers.
///
/// **Lost messages.** Pub/sub does not buffer: messages published while the
/// subscriber is disconnected are lost. So when the subscriber reconnects (after
/// it has subscribed again), or when a listener falls behind, every
/// [`SyncedCache`] on this bus flushes its in-process tiers.
///
/// The bus is a cheap handle: clones share the connections. The connections
/// close when the last handle is dropped (inside a tokio runtime) or on
/// [`InvalidationBus::shutdown`].
///
/// # Example
///
/// ```no_run
/// use cache_server::{Invalidation, InvalidationBus};
///
/// # async fn demo() -> cache_core::Result<()> {
/// let bus = InvalidationBus::builder()
///     .url("redis://127.0.0.1:6379")
///     .channel("avatars:invalidate")
///     .connect()
///     .await?;
/// bus.publish(&Invalidation::Key("user:42".into())).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct InvalidationBus {
    inner: Arc<BusInner>,
    origin: u64,
}

impl fmt::Debug for InvalidationBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvalidationBus")
            .field("channel", &self.inner.channel)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn random_id() -> u64 {
    RandomState::new().hash_one(std::process::id())
}

impl InvalidationBus {
    /// A builder; see [`InvalidationBusBuilder`].
    pub fn builder() -> InvalidationBusBuilder {
        InvalidationBusBuilder::default()
    }

    /// The channel messages travel on.
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// The counters so far.
    pub fn stats(&self) -> BusStats {
        let c = &self.inner.counters;
        BusStats {
            published: c.published.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
            resyncs: c.resyncs.load(Ordering::Relaxed),
        }
    }

    /// The subscriber connection (to inspect it, or kill it in tests).
    pub fn subscriber(&self) -> &SubscriberClient {
        &self.inner.subscriber
    }

    /// Publishes `invalidation` to every instance.
    pub async fn publish(&self, invalidation: &Invalidation) -> Result<()> {
        self.publish_as(self.origin, invalidation).await
    }

    async fn publish_as(&self, origin: u64, invalidation: &Invalidation) -> Result<()> {
        let msg = invalidation.encode(origin);
        let _: i64 = self
            .inner
            .publisher
            .publish(self.inner.channel.as_str(), msg)
            .await
            .map_err(|e| Error::backend(BUS, operation_of(invalidation), e))?;
        self.inner
            .counters
            .published
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn listen(&self) -> broadcast::Receiver<BusEvent> {
        self.inner.events.subscribe()
    }

    /// Closes both connections and stops the bus's tasks.
    pub async fn shutdown(&self) {
        if let Ok(mut tasks) = self.inner.tasks.lock() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
        let _ = self.inner.subscriber.quit().await;
        let _ = self.inner.publisher.quit().await;
    }
}

fn operation_of(inv: &Invalidation) -> Operation {
    match inv {
        Invalidation::Key(_) => Operation::Remove,
        Invalidation::Prefix(_) => Operation::RemovePrefix,
        Invalidation::Clear => Operation::Clear,
    }
}

/// Builds an [`InvalidationBus`]. See [`InvalidationBus::builder`].
///
/// ```
/// use std::time::Duration;
/// let builder = cache_server::InvalidationBus::builder()
///     .url("redis://127.0.0.1:6379")
///     .channel("avatars:invalidate")
///     .command_timeout(Duration::from_millis(500));
/// # let _ = builder;
/// ```
#[must_use]
pub struct InvalidationBusBuilder {
    config: Option<Config>,
    url: String,
    channel: String,
    command_timeout: Duration,
    policy: ReconnectPolicy,
}

impl fmt::Debug for InvalidationBusBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No URL or config: they may hold credentials.
        f.debug_struct("InvalidationBusBuilder")
            .field("channel", &self.channel)
            .field("command_timeout", &self.command_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for InvalidationBusBuilder {
    fn default() -> Self {
        InvalidationBusBuilder {
            config: None,
            url: "redis://127.0.0.1:6379".into(),
            channel: "cache:invalidate".into(),
            command_timeout: Duration::from_secs(1),
            policy: default_reconnect_policy(),
        }
    }
}

impl InvalidationBusBuilder {
    /// The server URL (`redis://` or `redis-cluster://`).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self.config = None;
        self
    }

    /// A full fred [`Config`] instead of a URL.
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// The pub/sub channel (default `"cache:invalidate"`). Instances that share
    /// a cache must use the same channel.
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// Timeout of `PUBLISH` and `SUBSCRIBE` (default 1 s).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// The reconnect policy of both connections (default
    /// [`crate::default_reconnect_policy`]).
    pub fn reconnect_policy(mut self, policy: ReconnectPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Connects, subscribes and starts listening. Call inside a tokio runtime.
    pub async fn connect(self) -> Result<InvalidationBus> {
        let unavailable = |e: fred::error::Error| Error::Unavailable {
            tier: BUS.into(),
            reason: e.to_string(),
        };
        let config = match self.config {
            Some(c) => c,
            None => Config::from_url(&self.url).map_err(unavailable)?,
        };
        let builder = client_builder(
            config,
            self.command_timeout,
            self.command_timeout.max(Duration::from_secs(1)),
            self.policy,
        );
        let publisher = builder.build().map_err(unavailable)?;
        let subscriber = builder.build_subscriber_client().map_err(unavailable)?;
        publisher.init().await.map_err(unavailable)?;
        subscriber.init().await.map_err(unavailable)?;

        let (events, _) = broadcast::channel(4096);
        let inner = Arc::new(BusInner {
            publisher,
            subscriber: subscriber.clone(),
            channel: self.channel,
            events,
            counters: Counters::default(),
            tasks: Mutex::new(Vec::new()),
        });
        // Listen before subscribing, so no message slips between the two.
        let messages = spawn_message_pump(&inner, subscriber.message_rx());
        let reconnects = spawn_reconnect_watch(&inner, subscriber.reconnect_rx());
        if let Ok(mut tasks) = inner.tasks.lock() {
            tasks.push(messages);
            tasks.push(reconnects);
        }
        subscriber
            .subscribe(inner.channel.as_str())
            .await
            .map_err(unavailable)?;
        Ok(InvalidationBus {
            inner,
            origin: random_id(),
        })
    }
}

fn spawn_message_pump(
    inner: &Arc<BusInner>,
    mut rx: broadcast::Receiver<fred::types::Message>,
) -> JoinHandle<()> {
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        loop {
            let received = rx.recv().await;
            let Some(inner) = weak.upgrade() else { return };
            match received {
                Ok(msg) => {
                    if msg.channel.as_bytes() != inner.channel.as_bytes() {
                        continue;
                    }
                    inner.counters.received.fetch_add(1, Ordering::Relaxed);
                    match msg.value.as_str().and_then(|s| Invalidation::decode(&s)) {
                        Some((origin, inv)) => {
                            let _ = inner.events.send(BusEvent::Message(origin, inv));
                        }
                        None => {
                            inner.counters.malformed.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(channel = %inner.channel, "ignored a malformed invalidation message");
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "invalidation bus fell behind; flushing in-process tiers"
                    );
                    inner.counters.resyncs.fetch_add(1, Ordering::Relaxed);
                    let _ = inner.events.send(BusEvent::Resync);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

fn spawn_reconnect_watch(
    inner: &Arc<BusInner>,
    mut rx: broadcast::Receiver<fred::types::config::Server>,
) -> JoinHandle<()> {
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        loop {
            let received = rx.recv().await;
            let Some(inner) = weak.upgrade() else { return };
            if matches!(received, Err(broadcast::error::RecvError::Closed)) {
                return;
            }
            // Subscribe again first, then flush: a message published between
            // the two is then either delivered or flushed anyway.
            let mut delay = Duration::from_millis(20);
            while let Err(err) = inner.subscriber.resubscribe_all().await {
                tracing::warn!(error = %err, "re-subscribing the invalidation bus failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            tracing::info!(channel = %inner.channel, "invalidation bus reconnected; flushing in-process tiers");
            inner.counters.resyncs.fetch_add(1, Ordering::Relaxed);
            let _ = inner.events.send(BusEvent::Resync);
        }
    })
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A [`TieredCache`] whose invalidations reach every instance.
///
/// `invalidate`, `invalidate_prefix` and `clear` act on every tier of this
/// instance's chain (the shared Redis tier included), then publish on the bus.
/// Every other instance's `SyncedCache` on the same channel drops the key from
/// its **local tiers** only (the indexes given to [`SyncedCache::new`], usually
/// `[0]` for the moka tier), through [`TieredCache::only`], so loads in flight
/// there do not write the old value back.
///
/// Reads and plain fills never publish anything. When the bus's subscriber
/// reconnects (messages may have been lost), the local tiers are flushed.
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
    origin: u64,
    applied: broadcast::Sender<Invalidation>,
    flushes: Arc<AtomicU64>,
    _listener: AbortOnDrop,
}

impl<K, V> fmt::Debug for SyncedCache<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncedCache")
            .field("chain", &self.chain)
            .field("bus", &self.bus)
            .finish_non_exhaustive()
    }
}

impl<K, V> SyncedCache<K, V>
where
    K: CacheKey + FromStr,
    V: Clone + ByteSize + MaybeSend + MaybeSync + 'static,
{
    /// Wraps `chain`; `local_tiers` are the indexes of the in-process tiers that
    /// other instances' invalidations must reach. Call inside a tokio runtime.
    pub fn new(chain: TieredCache<K, V>, bus: InvalidationBus, local_tiers: Vec<usize>) -> Self {
        let origin = random_id() ^ bus.origin.rotate_left(17);
        let (applied, _) = broadcast::channel(1024);
        let flushes = Arc::new(AtomicU64::new(0));
        let listener = tokio::spawn(listen(
            chain.clone(),
            bus.listen(),
            origin,
            local_tiers,
            applied.clone(),
            flushes.clone(),
        ));
        SyncedCache {
            chain,
            bus,
            origin,
            applied,
            flushes,
            _listener: AbortOnDrop(listener),
        }
    }

    /// The chain, for reads and everything else.
    pub fn chain(&self) -> &TieredCache<K, V> {
        &self.chain
    }

    /// The bus.
    pub fn bus(&self) -> &InvalidationBus {
        &self.bus
    }

    /// [`TieredCache::get`].
    pub async fn get(&self, key: &K) -> Result<Option<Lookup<'_, V>>> {
        self.chain.get(key).await
    }

    /// [`TieredCache::get_many`].
    pub async fn get_many(&self, keys: &[K]) -> Result<Vec<Option<Lookup<'_, V>>>> {
        self.chain.get_many(keys).await
    }

    /// Removes `key` from every tier here, then tells every other instance to
    /// drop it from its local tiers. The message is published even if a tier
    /// failed here; the error then names the tier, so the call can be retried.
    pub async fn invalidate(&self, key: &K) -> Result<TierReport> {
        let report = self.chain.invalidate(key).await;
        self.finish(report, Invalidation::Key(key.key_str().into_owned()))
            .await
    }

    /// Removes every key starting with `prefix`, here and on every instance.
    pub async fn invalidate_prefix(&self, prefix: &str) -> Result<TierReport> {
        let report = self.chain.invalidate_prefix(prefix).await;
        self.finish(report, Invalidation::Prefix(prefix.to_owned()))
            .await
    }

    /// Clears every tier here and the local tiers of every instance.
    pub async fn clear(&self) -> Result<TierReport> {
        let report = self.chain.clear().await;
        self.finish(report, Invalidation::Clear).await
    }

    async fn finish(
        &self,
        report: Result<TierReport>,
        invalidation: Invalidation,
    ) -> Result<TierReport> {
        let published = self.bus.publish_as(self.origin, &invalidation).await;
        let report = report?;
        published?;
        Ok(report)
    }

    /// Every invalidation from another instance, once applied to the local
    /// tiers here ([`Invalidation::Clear`] also after a resync flush).
    pub fn applied(&self) -> broadcast::Receiver<Invalidation> {
        self.applied.subscribe()
    }

    /// How many times the local tiers were flushed because messages may have
    /// been lost.
    pub fn resync_flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}

async fn listen<K, V>(
    chain: TieredCache<K, V>,
    mut rx: broadcast::Receiver<BusEvent>,
    me: u64,
    local: Vec<usize>,
    applied: broadcast::Sender<Invalidation>,
    flushes: Arc<AtomicU64>,
) where
    K: CacheKey + FromStr,
    V: Clone + ByteSize + MaybeSend + MaybeSync + 'static,
{
    let only = chain.only(&local);
    loop {
        let (inv, flush) = match rx.recv().await {
            Ok(BusEvent::Message(origin, _)) if origin == me => continue,
            Ok(BusEvent::Message(_, inv)) => (inv, false),
            Ok(BusEvent::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                (Invalidation::Clear, true)
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let result = match &inv {
            Invalidation::Key(k) => match K::from_str(k).ok() {
                Some(key) => only.invalidate(&key).await,
                None => only.clear().await,
            },
            Invalidation::Prefix(p) => only.invalidate_prefix(p).await,
            Invalidation::Clear => only.clear().await,
        };
        if let Err(err) = result {
            tracing::warn!(error = %err, "applying a remote invalidation failed");
        }
        if flush {
            flushes.fetch_add(1, Ordering::Relaxed);
        }
        let _ = applied.send(inv);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_roundtrips_and_rejects_garbage() {
        for inv in [
            Invalidation::Key("user:1\nnot-a-field".into()),
            Invalidation::Prefix("".into()),
            Invalidation::Clear,
        ] {
            let (origin, back) = Invalidation::decode(&inv.encode(7)).unwrap();
            assert_eq!((origin, back), (7, inv));
        }
        assert!(Invalidation::decode("garbage").is_none());
        assert!(Invalidation::decode("lc0\n1\nk\nx").is_none());
        assert!(Invalidation::decode("lc1\nzz\nk\nx").is_none());
        assert!(Invalidation::decode("lc1\n1\nq\nx").is_none());
    }
}
