//! Invalidation across instances: [`InvalidationBus`] (Redis pub/sub and a
//! registry of live instances in Redis) and [`SyncedCache`] (a chain whose
//! invalidations reach every instance, confirmed).
//!
//! # How it works (wire format `lc3`)
//!
//! - **One shared channel, for invalidations only.** An invalidation is
//!   published once and delivered once to each instance.
//! - **One inbox per instance** (`{<channel>}:i:<id>`), which only that
//!   instance reads: the acknowledgements of its invalidations, and its own
//!   heartbeats, which show that its subscriber link carries messages.
//! - **A registry in Redis** (`{<channel>}:live`, `{<channel>}:peers`): every
//!   heartbeat interval each instance refreshes its registration (live until
//!   now + its bound, on Redis's clock) and its record: wire version, link
//!   state, bound, the value envelope and features it writes.
//! - **Publishing is one script**: publish the invalidation and read the live
//!   instances in the same step. Every instance listed registered after its
//!   subscription was confirmed, so it receives the message, and those are
//!   the instances the publisher waits for.
//!
//! So an invalidation costs `N` deliveries plus `N - 1` acks, and an idle
//! second `N / interval` heartbeat deliveries plus as many registry writes:
//! linear in the number of instances `N`, where a broadcast of every ack and
//! heartbeat costs `N²`. See [`wire`] for the format.

mod builder;
mod inner;
mod link;
mod registry;
mod sequences;
mod synced;
mod wire;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::{Error, Operation, Result};
use fred::clients::SubscriberClient;
use fred::prelude::ClientLike;
use tokio::sync::watch;

pub use builder::{InvalidationBusBuilder, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT};
use inner::BusInner;
pub use synced::SyncedCache;

/// The bus's name in errors.
const BUS: &str = "invalidation-bus";

/// What to drop from the in-process tiers.
///
/// ```no_run
/// use cache_server::Invalidation;
/// # async fn demo(bus: cache_server::InvalidationBus) -> cache_core::Result<()> {
/// bus.publish(&Invalidation::Key("user:42".into())).await?;
/// bus.publish(&Invalidation::Prefix("team:7:".into())).await?;
/// bus.publish(&Invalidation::Clear).await?;
/// bus.publish(&Invalidation::Tag { tag: "user:42".into(), generation: 3 }).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalidation {
    /// One key, by its string form.
    Key(String),
    /// Every key starting with this prefix.
    Prefix(String),
    /// Everything.
    Clear,
    /// A tag was bumped to `generation` ([`SyncedCache::invalidate_tag`]):
    /// entries carrying it at an older generation are absent.
    Tag {
        /// The tag.
        tag: String,
        /// Its new generation.
        generation: u64,
    },
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
    /// Messages delivered to this bus: the sum of the three kinds below,
    /// malformed and foreign ones.
    pub received: u64,
    /// Invalidations delivered to this bus (its own included).
    pub received_invalidations: u64,
    /// Acknowledgements delivered to this bus's inbox.
    pub received_acks: u64,
    /// This bus's own heartbeats delivered back to it.
    pub received_heartbeats: u64,
    /// Messages that could not be parsed (ignored).
    pub malformed: u64,
    /// Messages in another wire version (an incompatible instance shares the
    /// channel; logged at `error`).
    pub foreign: u64,
    /// Times the in-process tiers on this bus were flushed because messages
    /// may have been lost (reconnect, a listener falling behind, a sequence
    /// gap, a link down, an invalidation that could not be applied).
    pub resyncs: u64,
    /// Invalidations whose sequence number was not the successor of the last
    /// one seen from the same origin (each one also caused a resync).
    pub sequence_gaps: u64,
    /// Heartbeats (registry refreshes) made by this process.
    pub heartbeats: u64,
    /// Times this bus declared its link down (no heartbeat of its own came
    /// back within heartbeat interval + timeout).
    pub link_downs: u64,
    /// Times the subscriber connection was re-established.
    pub reconnects: u64,
    /// Acknowledgements published (one per invalidation received from
    /// another instance and applied here).
    pub acks_sent: u64,
    /// Acknowledgements received for this bus's invalidations.
    pub acks_received: u64,
    /// Confirmed invalidations ([`SyncedCache`]) that returned an error
    /// because a live instance did not acknowledge them in time.
    pub unconfirmed: u64,
    /// Instances a confirmed invalidation stopped waiting for without an
    /// ack: they had left, their registration ran out, their link was down,
    /// or (standalone server) they had no subscriber connection. Each is flushing
    /// its in-process tiers.
    pub excused: u64,
    /// Other instances' invalidations that failed to apply here (the local
    /// tiers were flushed instead; acknowledged only if that worked).
    pub apply_failures: u64,
    /// How many other instances the last confirmed invalidation waited for.
    pub last_peers: u64,
}

/// Invalidation messages between instances over Redis pub/sub.
///
/// One publisher connection and one subscriber connection, the shared
/// channel, this instance's inbox and its registration (see "How it works"
/// in the crate's bus module docs and the README's Consistency section). A [`SyncedCache`] publishes its invalidations here and
/// applies the other instances' to its in-process tiers, on a task of its own
/// (a bounded queue: when it is full the local tiers are flushed instead), so
/// heartbeats and acks are never held up by a slow tier.
///
/// **Joining, leaving, dying.** [`InvalidationBusBuilder::connect`] first
/// reads the registry and refuses to join a channel whose live instances
/// speak another wire version or write with another feature set (for example
/// one built with cache-server's `tags` feature and one without): their
/// values would be unreadable to each other. Once subscribed, it registers;
/// from then on every confirmed invalidation waits for it. On
/// [`InvalidationBus::shutdown`] (or when the last handle drops) it leaves the
/// registry and is excused at once. An instance that dies stops refreshing
/// its registration and is excused when it runs out (at most heartbeat
/// interval + timeout after its last heartbeat); on a standalone server
/// (not a node of a cluster, even one reached by a plain URL) it is excused
/// sooner, as soon as Redis has closed its subscriber connection.
///
/// **Lost messages.** Pub/sub does not buffer: messages published while the
/// subscriber is disconnected are lost. So when the subscriber reconnects (after
/// it has subscribed again), when the listener falls behind, or when a
/// message's sequence number shows that an earlier one is missing, every
/// [`SyncedCache`] on this bus flushes its in-process tiers.
///
/// **A link that dies silently.** A TCP connection can stop carrying data
/// without closing (a dead peer, a dropped route). Every heartbeat interval
/// (default 1 s) the bus refreshes its registration, publishes a heartbeat to
/// its own inbox and pings its subscriber connection. It hears its own
/// heartbeats come back; if no heartbeat of its own
/// comes back for heartbeat interval + heartbeat timeout (default 1 s + 2 s),
/// it declares its link **down** ([`InvalidationBus::link_is_up`],
/// [`BusStats::link_downs`]) and flushes the in-process tiers, then again every
/// interval while the link stays down. Once it has flushed, its registration
/// says "down", and the others stop waiting for its acks. A heartbeat of its
/// own sent within that silence limit that comes back brings the link back
/// (older ones, let through late by a stalled connection, do not): the
/// registration says "up" again, the in-process tiers are flushed once more
/// (messages may have been lost meanwhile), and only then is the link up and
/// the periodic flushing over. So an instance whose
/// link dies serves entries from its in-process tiers that another instance
/// has since invalidated **for at most heartbeat interval + heartbeat timeout
/// after it sent the last heartbeat that came back: at most 3 s with the
/// defaults**. The silence is counted from the send, not from the return, so
/// a heartbeat that comes back late (a slow link) cannot keep an instance
/// serving past its registration, which runs out 110 % of that bound after
/// Redis ran the refresh the heartbeat carried. The
/// connections themselves drop any command (the `PING` included) left
/// unanswered for the heartbeat timeout, and reconnect, which resubscribes and
/// flushes.
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
            received_invalidations: get(&c.received_invalidations),
            received_acks: get(&c.received_acks),
            received_heartbeats: get(&c.received_heartbeats),
            malformed: get(&c.malformed),
            foreign: get(&c.foreign),
            resyncs: get(&c.resyncs),
            sequence_gaps: get(&c.sequence_gaps),
            heartbeats: get(&c.heartbeats),
            link_downs: get(&c.link_downs),
            reconnects: get(&c.reconnects),
            acks_sent: get(&c.acks_sent),
            acks_received: get(&c.acks_received),
            unconfirmed: get(&c.unconfirmed),
            excused: get(&c.excused),
            apply_failures: get(&c.apply_failures),
            last_peers: get(&c.last_peers),
        }
    }

    /// Whether this bus hears itself: its own heartbeats come back. `false`
    /// from the moment the link is declared down (see
    /// [`InvalidationBus`]: at most heartbeat interval + timeout after the last
    /// heartbeat that came back was sent) until a heartbeat of its own comes
    /// back again.
    ///
    /// ```no_run
    /// # async fn demo(bus: cache_server::InvalidationBus) {
    /// if !bus.link_is_up() {
    ///     eprintln!("invalidations may not reach this instance; its in-process tiers are being flushed");
    /// }
    /// # }
    /// ```
    pub fn link_is_up(&self) -> bool {
        *self.inner.link_tx.borrow()
    }

    /// The link state as a [`watch`] channel: `true` while up (see
    /// [`InvalidationBus::link_is_up`]).
    ///
    /// ```no_run
    /// # async fn demo(bus: cache_server::InvalidationBus) {
    /// let mut link = bus.link_state();
    /// while link.changed().await.is_ok() {
    ///     println!("bus link up: {}", *link.borrow());
    /// }
    /// # }
    /// ```
    pub fn link_state(&self) -> watch::Receiver<bool> {
        self.inner.link_tx.subscribe()
    }

    /// The other instances on this channel that are live now, by
    /// [`InvalidationBus::instance_id`]: registered, and not past their
    /// registration (their last heartbeat + their interval + timeout, on
    /// Redis's clock). Read from the registry in Redis.
    ///
    /// ```no_run
    /// # async fn demo(bus: cache_server::InvalidationBus) -> cache_core::Result<()> {
    /// for peer in bus.live_peers().await? {
    ///     println!("live: {peer:016x}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn live_peers(&self) -> Result<Vec<u64>> {
        let listed = self
            .inner
            .registry
            .publish(&self.inner.publisher, None)
            .await
            .map_err(|e| Error::backend(BUS, Operation::Get, e))?;
        let mut ids: Vec<u64> = listed
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| *id != self.inner.origin)
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// The heartbeat interval and timeout in force: a link that dies is
    /// declared down, and the in-process tiers flushed, at most `interval +
    /// timeout` after the last heartbeat that came back was sent.
    ///
    /// ```no_run
    /// # async fn demo(bus: cache_server::InvalidationBus) {
    /// let (interval, timeout) = bus.heartbeat_settings();
    /// println!("stale local entries live at most {:?} after the link dies", interval + timeout);
    /// # }
    /// ```
    pub fn heartbeat_settings(&self) -> (Duration, Duration) {
        (self.inner.timing.interval, self.inner.timing.timeout)
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
        let here = self.inner.apply_locally(None, invalidation).await;
        let (seq, _, _) = self
            .inner
            .publish(invalidation)
            .await
            .map_err(|e| Error::backend(BUS, operation_of(invalidation), e))?;
        self.inner.forget_pending(seq);
        here.map_err(|reason| Error::Unavailable {
            tier: BUS.into(),
            reason: format!("a cache on this bus failed to apply the invalidation: {reason}"),
        })
    }

    /// Publishes without applying anything here, then waits until every live
    /// instance has applied it (see [`SyncedCache`]).
    async fn publish_confirmed(&self, invalidation: &Invalidation) -> Result<()> {
        let started = Instant::now();
        let (seq, wake, listed) = self
            .inner
            .publish(invalidation)
            .await
            .map_err(|e| Error::backend(BUS, operation_of(invalidation), e))?;
        self.inner.confirm(seq, wake, listed, started).await
    }

    /// Closes both connections and stops the bus's tasks.
    ///
    /// ```no_run
    /// # async fn demo(bus: cache_server::InvalidationBus) {
    /// bus.shutdown().await;
    /// # }
    /// ```
    pub async fn shutdown(&self) {
        // Leave the registry first: the others stop waiting for this one.
        if let Err(err) = self
            .inner
            .registry
            .goodbye(&self.inner.publisher, self.inner.origin)
            .await
        {
            tracing::debug!(error = %err, "leaving the bus registry failed");
        }
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
        Invalidation::Tag { .. } => Operation::Remove,
    }
}
