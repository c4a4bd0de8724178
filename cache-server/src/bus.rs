//! Invalidation across instances: [`InvalidationBus`] (Redis pub/sub) and
//! [`SyncedCache`] (a chain whose invalidations reach every instance).
//!
//! # Wire format (`lc2`)
//!
//! Every message on the channel is UTF-8 text of five `\n`-separated fields:
//!
//! ```text
//! lc2
//! <origin: 16 lowercase hex digits>   the publishing bus
//! <seq: lowercase hex>                 1, 2, 3, ... per origin
//! <kind>                               k | p | c
//! <body>                               the key (k), the prefix (p), empty (c)
//! ```
//!
//! A receiver keeps the last `seq` of every origin; a number that is not the
//! successor of the last one means a message was lost, and the in-process
//! tiers are flushed. Anything that does not parse is counted and ignored.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use cache_core::{
    ByteSize, CacheKey, Error, Lookup, MaybeSend, MaybeSync, Operation, Result, TierReport,
    TieredCache,
};
use fred::clients::{Client, SubscriberClient};
use fred::prelude::{ClientLike, Config, EventInterface, PubsubInterface, ReconnectPolicy};
use futures_util::future::BoxFuture;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::redis::{client_builder, default_reconnect_policy};

/// The bus's name in errors.
const BUS: &str = "invalidation-bus";
/// Wire format version, first line of every message.
const WIRE_VERSION: &str = "lc2";

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

/// One message on the channel: who sent it, its number in that sender's
/// sequence, and what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Message {
    origin: u64,
    seq: u64,
    body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Body {
    Invalidate(Invalidation),
}

impl Message {
    /// `lc2\n<origin: 16 hex>\n<seq: hex>\n<kind>\n<body>`.
    fn encode(&self) -> String {
        let (kind, body) = match &self.body {
            Body::Invalidate(Invalidation::Key(k)) => ("k", k.as_str()),
            Body::Invalidate(Invalidation::Prefix(p)) => ("p", p.as_str()),
            Body::Invalidate(Invalidation::Clear) => ("c", ""),
        };
        format!(
            "{WIRE_VERSION}\n{:016x}\n{:x}\n{kind}\n{body}",
            self.origin, self.seq
        )
    }

    /// Parses a message; `None` for anything this build does not understand.
    /// Strict: lowercase hex only, no signs, no padding beyond 16 digits, no
    /// trailing fields; never panics.
    fn decode(msg: &str) -> Option<Message> {
        let mut parts = msg.splitn(5, '\n');
        if parts.next()? != WIRE_VERSION {
            return None;
        }
        let origin = parts.next().filter(|o| o.len() == 16).and_then(hex)?;
        let seq = hex(parts.next()?)?;
        let kind = parts.next()?;
        let body = parts.next()?;
        let body = match kind {
            "k" => Body::Invalidate(Invalidation::Key(body.to_owned())),
            "p" => Body::Invalidate(Invalidation::Prefix(body.to_owned())),
            "c" if body.is_empty() => Body::Invalidate(Invalidation::Clear),
            _ => return None,
        };
        Some(Message { origin, seq, body })
    }
}

/// A lowercase hex number of 1 to 16 digits.
fn hex(s: &str) -> Option<u64> {
    let ok =
        (1..=16).contains(&s.len()) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ok {
        u64::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

/// The last sequence number seen from each origin; a skipped number means a
/// message was lost.
#[derive(Debug, Default)]
struct Sequences {
    last: HashMap<u64, u64>,
}

impl Sequences {
    /// Records `seq` from `origin`; `false` if it is not the successor of the
    /// last one seen (a gap, or a number going backwards). The first message
    /// from an origin starts its sequence.
    fn next(&mut self, origin: u64, seq: u64) -> bool {
        match self.last.insert(origin, seq) {
            None => true,
            Some(last) if seq == last.wrapping_add(1) => true,
            Some(last) => {
                self.last.insert(origin, last.max(seq));
                false
            }
        }
    }
}

/// Counters of an [`InvalidationBus`].
///
/// ```no_run
/// # async fn demo(bus: cache_server::InvalidationBus) {
/// let stats = bus.stats();
/// println!("{} published, {} gaps", stats.published, stats.sequence_gaps);
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusStats {
    /// Invalidations published by this process.
    pub published: u64,
    /// Messages received (including this process's own).
    pub received: u64,
    /// Messages that could not be parsed (ignored).
    pub malformed: u64,
    /// Times the in-process tiers on this bus were flushed because messages
    /// may have been lost (reconnect, a listener falling behind, a sequence
    /// gap).
    pub resyncs: u64,
    /// Messages whose sequence number was not the successor of the last one
    /// seen from the same origin (each one also caused a resync).
    pub sequence_gaps: u64,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    received: AtomicU64,
    malformed: AtomicU64,
    resyncs: AtomicU64,
    sequence_gaps: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Something in this process that holds in-process tiers: it applies the
/// invalidations of the other instances and flushes on a resync.
trait Applier: Send + Sync {
    fn apply<'a>(&'a self, invalidation: &'a Invalidation) -> BoxFuture<'a, ()>;
    fn flush(&self) -> BoxFuture<'_, ()>;
}

type Appliers = Vec<(u64, Arc<dyn Applier>)>;

struct BusInner {
    publisher: Client,
    subscriber: SubscriberClient,
    channel: String,
    /// This bus's id on the wire.
    origin: u64,
    /// The next sequence number; held while publishing, so numbers reach
    /// Redis in order.
    next_seq: tokio::sync::Mutex<u64>,
    appliers: Mutex<Appliers>,
    next_applier: AtomicU64,
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

impl BusInner {
    fn appliers(&self) -> Appliers {
        self.appliers.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// Applies `invalidation` to every local applier but `except`.
    async fn apply_locally(&self, except: Option<u64>, invalidation: &Invalidation) {
        for (id, applier) in self.appliers() {
            if Some(id) != except {
                applier.apply(invalidation).await;
            }
        }
    }

    /// Flushes every local applier: messages may have been lost.
    async fn resync(&self) {
        bump(&self.counters.resyncs);
        for (_, applier) in self.appliers() {
            applier.flush().await;
        }
    }

    /// Publishes `body` under the next sequence number; returns that number.
    async fn send(&self, body: Body) -> std::result::Result<u64, fred::error::Error> {
        let mut next = self.next_seq.lock().await;
        let seq = *next;
        // A number is used once even if the publish fails: receivers then see
        // a gap, which is what happened.
        *next += 1;
        let msg = Message {
            origin: self.origin,
            seq,
            body,
        }
        .encode();
        let _: i64 = self.publisher.publish(self.channel.as_str(), msg).await?;
        Ok(seq)
    }

    async fn on_message(&self, sequences: &mut Sequences, raw: fred::types::Message) {
        bump(&self.counters.received);
        let Some(msg) = raw.value.as_str().and_then(|s| Message::decode(&s)) else {
            bump(&self.counters.malformed);
            tracing::warn!(channel = %self.channel, "ignored a malformed invalidation message");
            return;
        };
        if !sequences.next(msg.origin, msg.seq) {
            bump(&self.counters.sequence_gaps);
            tracing::warn!(
                channel = %self.channel,
                origin = %format_args!("{:016x}", msg.origin),
                seq = msg.seq,
                "invalidation bus sequence gap; flushing in-process tiers"
            );
            self.resync().await;
        }
        match msg.body {
            // Our own messages were applied here before they were published.
            Body::Invalidate(_) if msg.origin == self.origin => {}
            Body::Invalidate(inv) => self.apply_locally(None, &inv).await,
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
/// it has subscribed again), when the listener falls behind, or when a
/// message's sequence number shows that an earlier one is missing, every
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
}

impl fmt::Debug for InvalidationBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvalidationBus")
            .field("channel", &self.inner.channel)
            .field("instance_id", &format_args!("{:016x}", self.inner.origin))
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn random_id() -> u64 {
    RandomState::new().hash_one(std::process::id())
}

impl InvalidationBus {
    /// A builder; see [`InvalidationBusBuilder`].
    ///
    /// ```
    /// let builder = cache_server::InvalidationBus::builder().channel("avatars:invalidate");
    /// # let _ = builder;
    /// ```
    pub fn builder() -> InvalidationBusBuilder {
        InvalidationBusBuilder::default()
    }

    /// The channel messages travel on.
    ///
    /// ```no_run
    /// # async fn demo(bus: cache_server::InvalidationBus) {
    /// assert_eq!(bus.channel(), "avatars:invalidate");
    /// # }
    /// ```
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// This bus's id on the wire (random per [`InvalidationBusBuilder::connect`]);
    /// errors name other instances by theirs.
    ///
    /// ```no_run
    /// # async fn demo(bus: cache_server::InvalidationBus) {
    /// println!("this instance is {:016x}", bus.instance_id());
    /// # }
    /// ```
    pub fn instance_id(&self) -> u64 {
        self.inner.origin
    }

    /// The counters so far.
    ///
    /// ```no_run
    /// # async fn demo(bus: cache_server::InvalidationBus) {
    /// println!("{:?}", bus.stats());
    /// # }
    /// ```
    pub fn stats(&self) -> BusStats {
        let c = &self.inner.counters;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BusStats {
            published: get(&c.published),
            received: get(&c.received),
            malformed: get(&c.malformed),
            resyncs: get(&c.resyncs),
            sequence_gaps: get(&c.sequence_gaps),
        }
    }

    /// The subscriber connection (to inspect it, or kill it in tests).
    ///
    /// ```no_run
    /// # async fn demo(bus: cache_server::InvalidationBus) {
    /// use cache_server::fred::prelude::ClientLike;
    /// println!("subscriber connection {}", bus.subscriber().id());
    /// # }
    /// ```
    pub fn subscriber(&self) -> &SubscriberClient {
        &self.inner.subscriber
    }

    /// Applies `invalidation` to every [`SyncedCache`] on this bus, then
    /// publishes it to every instance. Fire and forget: nothing waits for the
    /// other instances ([`SyncedCache`] does).
    ///
    /// ```no_run
    /// # async fn demo(bus: cache_server::InvalidationBus) -> cache_core::Result<()> {
    /// bus.publish(&cache_server::Invalidation::Prefix("team:7:".into())).await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish(&self, invalidation: &Invalidation) -> Result<()> {
        self.inner.apply_locally(None, invalidation).await;
        self.publish_only(invalidation).await.map(|_| ())
    }

    /// Publishes without applying anything here; returns the sequence number.
    async fn publish_only(&self, invalidation: &Invalidation) -> Result<u64> {
        let seq = self
            .inner
            .send(Body::Invalidate(invalidation.clone()))
            .await
            .map_err(|e| Error::backend(BUS, operation_of(invalidation), e))?;
        bump(&self.inner.counters.published);
        Ok(seq)
    }

    /// Registers an applier; it is removed when the returned guard drops.
    fn register(&self, applier: Arc<dyn Applier>) -> Registration {
        let id = self.inner.next_applier.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut appliers) = self.inner.appliers.lock() {
            appliers.push((id, applier));
        }
        Registration {
            bus: Arc::downgrade(&self.inner),
            id,
        }
    }

    /// Closes both connections and stops the bus's tasks.
    ///
    /// ```no_run
    /// # async fn demo(bus: cache_server::InvalidationBus) {
    /// bus.shutdown().await;
    /// # }
    /// ```
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

/// Removes an applier from its bus when dropped.
struct Registration {
    bus: Weak<BusInner>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            if let Ok(mut appliers) = bus.appliers.lock() {
                appliers.retain(|(id, _)| *id != self.id);
            }
        }
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
    ///
    /// ```
    /// let b = cache_server::InvalidationBus::builder().url("redis://127.0.0.1:6379");
    /// # let _ = b;
    /// ```
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self.config = None;
        self
    }

    /// A full fred [`Config`] instead of a URL.
    ///
    /// ```
    /// use cache_server::fred::prelude::Config;
    /// let config = Config::from_url("redis://127.0.0.1:6379").unwrap();
    /// let b = cache_server::InvalidationBus::builder().config(config);
    /// # let _ = b;
    /// ```
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// The pub/sub channel (default `"cache:invalidate"`). Instances that share
    /// a cache must use the same channel.
    ///
    /// ```
    /// let b = cache_server::InvalidationBus::builder().channel("avatars:invalidate");
    /// # let _ = b;
    /// ```
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// Timeout of `PUBLISH` and `SUBSCRIBE` (default 1 s).
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = cache_server::InvalidationBus::builder().command_timeout(Duration::from_millis(500));
    /// # let _ = b;
    /// ```
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// The reconnect policy of both connections (default
    /// [`crate::default_reconnect_policy`]).
    ///
    /// ```
    /// let b = cache_server::InvalidationBus::builder()
    ///     .reconnect_policy(cache_server::default_reconnect_policy());
    /// # let _ = b;
    /// ```
    pub fn reconnect_policy(mut self, policy: ReconnectPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Connects, subscribes and starts listening. Call inside a tokio runtime.
    ///
    /// ```no_run
    /// # async fn demo() -> cache_core::Result<()> {
    /// let bus = cache_server::InvalidationBus::builder()
    ///     .url("redis://127.0.0.1:6379")
    ///     .connect()
    ///     .await?;
    /// # let _ = bus; Ok(()) }
    /// ```
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

        let inner = Arc::new(BusInner {
            publisher,
            subscriber: subscriber.clone(),
            channel: self.channel,
            origin: random_id(),
            next_seq: tokio::sync::Mutex::new(1),
            appliers: Mutex::new(Vec::new()),
            next_applier: AtomicU64::new(0),
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
        Ok(InvalidationBus { inner })
    }
}

fn spawn_message_pump(
    inner: &Arc<BusInner>,
    mut rx: broadcast::Receiver<fred::types::Message>,
) -> JoinHandle<()> {
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        let mut sequences = Sequences::default();
        loop {
            let received = rx.recv().await;
            let Some(inner) = weak.upgrade() else { return };
            match received {
                Ok(msg) => {
                    if msg.channel.as_bytes() == inner.channel.as_bytes() {
                        inner.on_message(&mut sequences, msg).await;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "invalidation bus fell behind; flushing in-process tiers"
                    );
                    inner.resync().await;
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
            inner.resync().await;
        }
    })
}

/// The in-process tiers of one [`SyncedCache`], as the bus sees them.
struct LocalTiers<K, V> {
    chain: TieredCache<K, V>,
    tiers: Vec<usize>,
    applied: broadcast::Sender<Invalidation>,
    flushes: AtomicU64,
}

impl<K, V> Applier for LocalTiers<K, V>
where
    K: CacheKey + FromStr,
    V: Clone + ByteSize + MaybeSend + MaybeSync + 'static,
{
    fn apply<'a>(&'a self, invalidation: &'a Invalidation) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let only = self.chain.only(&self.tiers);
            let result = match invalidation {
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
            let _ = self.applied.send(invalidation.clone());
        })
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(err) = self.chain.only(&self.tiers).clear().await {
                tracing::warn!(error = %err, "flushing the in-process tiers failed");
            }
            bump(&self.flushes);
            let _ = self.applied.send(Invalidation::Clear);
        })
    }
}

/// A [`TieredCache`] whose invalidations reach every instance.
///
/// `invalidate`, `invalidate_prefix` and `clear` act on every tier of this
/// instance's chain (the shared Redis tier included), then publish on the bus.
/// Every other instance's `SyncedCache` on the same channel drops the key from
/// its **local tiers** only (the indexes given to [`SyncedCache::new`], usually
/// `[0]` for the moka tier), through [`TieredCache::only`], so loads in flight
/// there do not write the old value back. Other `SyncedCache`s on the same bus
/// handle (clones of one [`InvalidationBus`]) get it directly, before it is
/// published.
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
        });
        let registration = bus.register(local.clone());
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

    /// [`TieredCache::get`].
    ///
    /// ```no_run
    /// # async fn demo(cache: cache_server::SyncedCache<String, String>) -> cache_core::Result<()> {
    /// if let Some(hit) = cache.get(&"user:42".to_string()).await? {
    ///     println!("{} from {:?}", hit.value(), hit.source);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, key: &K) -> Result<Option<Lookup<'_, V>>> {
        self.chain.get(key).await
    }

    /// [`TieredCache::get_many`].
    ///
    /// ```no_run
    /// # async fn demo(cache: cache_server::SyncedCache<String, String>) -> cache_core::Result<()> {
    /// let hits = cache.get_many(&["user:1".to_string(), "user:2".to_string()]).await?;
    /// # let _ = hits; Ok(()) }
    /// ```
    pub async fn get_many(&self, keys: &[K]) -> Result<Vec<Option<Lookup<'_, V>>>> {
        self.chain.get_many(keys).await
    }

    /// Removes `key` from every tier here, then tells every other instance to
    /// drop it from its local tiers. The message is published even if a tier
    /// failed here; the error then names the tier, so the call can be retried.
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

    /// Removes every key starting with `prefix`, here and on every instance.
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

    /// Clears every tier here and the local tiers of every instance.
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

    async fn finish(
        &self,
        report: Result<TierReport>,
        invalidation: Invalidation,
    ) -> Result<TierReport> {
        self.bus
            .inner
            .apply_locally(Some(self.registration.id), &invalidation)
            .await;
        let published = self.bus.publish_only(&invalidation).await;
        let report = report?;
        published?;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn msg(body: Body) -> Message {
        Message {
            origin: 0x0123_4567_89ab_cdef,
            seq: 7,
            body,
        }
    }

    #[test]
    fn wire_format_roundtrips() {
        for inv in [
            Invalidation::Key("user:1\nnot-a-field".into()),
            Invalidation::Key("".into()),
            Invalidation::Prefix("".into()),
            Invalidation::Clear,
        ] {
            let m = msg(Body::Invalidate(inv));
            assert_eq!(Message::decode(&m.encode()), Some(m));
        }
        let m = Message {
            origin: u64::MAX,
            seq: u64::MAX,
            body: Body::Invalidate(Invalidation::Clear),
        };
        assert_eq!(Message::decode(&m.encode()), Some(m));
        assert_eq!(
            msg(Body::Invalidate(Invalidation::Key("a".into()))).encode(),
            "lc2\n0123456789abcdef\n7\nk\na"
        );
    }

    #[test]
    fn wire_format_rejects_garbage() {
        let o = "0123456789abcdef";
        for bad in [
            String::new(),
            "garbage".into(),
            "\n\n\n\n".into(),
            format!("lc1\n{o}\nk\nx"),
            format!("lc2\n{o}\n1\nq\nx"),
            format!("lc2\n{o}\n1\nk"),
            format!("lc2\n{o}\n1"),
            "lc2\nzz\n1\nk\nx".into(),
            "lc2\n123\n1\nk\nx".into(),
            format!("lc2\n{o}0\n1\nk\nx"),
            format!("lc2\n{}\n1\nk\nx", o.to_uppercase()),
            format!("lc2\n{o}\n\nk\nx"),
            format!("lc2\n{o}\n+1\nk\nx"),
            format!("lc2\n{o}\n-1\nk\nx"),
            format!("lc2\n{o}\n11111111111111111\nk\nx"),
            format!("lc2\n{o}\n1 \nk\nx"),
            format!("lc2\n{o}\n1\nc\nx"),
            format!("LC2\n{o}\n1\nk\nx"),
            "lc2\n\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\n1\nk\nx".into(),
        ] {
            assert_eq!(Message::decode(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn wire_decoder_never_panics_on_arbitrary_bytes() {
        // A small deterministic fuzz: mutate valid messages byte by byte.
        let seeds = [
            msg(Body::Invalidate(Invalidation::Key("user:1".into()))).encode(),
            msg(Body::Invalidate(Invalidation::Clear)).encode(),
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for seed in seeds {
            for _ in 0..20_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let mut bytes = seed.clone().into_bytes();
                let at = (x as usize) % bytes.len();
                bytes[at] = (x >> 32) as u8;
                if x.is_multiple_of(3) {
                    bytes.truncate((x >> 40) as usize % bytes.len());
                }
                let _ = Message::decode(&String::from_utf8_lossy(&bytes));
            }
        }
    }

    #[test]
    fn sequences_detect_gaps() {
        let mut s = Sequences::default();
        assert!(s.next(1, 5), "the first message from an origin starts it");
        assert!(s.next(1, 6));
        assert!(s.next(2, 1), "origins are independent");
        assert!(!s.next(1, 8), "7 is missing");
        assert!(s.next(1, 9));
        assert!(!s.next(1, 9), "a repeat is not the successor");
        assert!(!s.next(1, 3), "backwards");
        assert!(s.next(1, 10), "the highest number seen is kept");
    }
}
