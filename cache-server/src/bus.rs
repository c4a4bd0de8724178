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
//! <seq: lowercase hex>                 see below
//! <kind>                               k | p | c | h | a
//! <body>                               the key (k), the prefix (p), empty (c),
//!                                      "<n|u|d> <bound ms: hex>" (h),
//!                                      "<origin: 16 hex> <seq: hex>" (a)
//! ```
//!
//! - `k`, `p`, `c`: an invalidation. Its `seq` is 1, 2, 3, ... per origin.
//! - `h`: a heartbeat, every heartbeat interval: the sender's link as it sees
//!   it (`n` its first heartbeat, `u` up, `d` down) and its bound (interval +
//!   timeout): how long after this heartbeat it declares its link down if none
//!   of its own comes back.
//! - `a`: an acknowledgement, body `<origin: 16 hex> <seq: hex>`: the sender
//!   has applied that origin's invalidation `seq` to its in-process tiers.
//!
//! The `seq` of a heartbeat or an acknowledgement is the number of the
//! sender's last invalidation.
//!
//! A receiver keeps the last `seq` of every origin. An invalidation that is
//! not the successor of the last one, or another message whose number is not
//! the last one, means an invalidation was lost (or numbers went backwards),
//! and the in-process tiers are flushed. Anything that does not parse is
//! counted and ignored.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use cache_core::{
    ByteSize, CacheKey, ChainOp, Entry, Error, Lookup, MaybeSend, MaybeSync, Operation, Result,
    TierReport, TieredCache,
};
use fred::clients::{Client, SubscriberClient};
use fred::error::ErrorKind;
use fred::prelude::{ClientLike, Config, EventInterface, PubsubInterface, ReconnectPolicy};
use fred::types::config::UnresponsiveConfig;
use futures_util::future::BoxFuture;
use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinHandle;

use crate::redis::{client_builder, default_reconnect_policy, describe_connect_error};

/// The bus's name in errors.
const BUS: &str = "invalidation-bus";
/// Wire format version, first line of every message.
const WIRE_VERSION: &str = "lc2";

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
    /// Every heartbeat interval: the sender's view of its own link, and how
    /// long after this heartbeat it declares its link down if no heartbeat of
    /// its own comes back (its interval + timeout).
    Heartbeat {
        link: LinkReport,
        bound: Duration,
    },
    /// The sender applied invalidation `seq` of `origin` to its in-process
    /// tiers.
    Ack {
        origin: u64,
        seq: u64,
    },
}

/// The link state a heartbeat reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkReport {
    /// The bus's first heartbeat: it has just subscribed.
    New,
    Up,
    Down,
}

impl LinkReport {
    fn code(self) -> &'static str {
        match self {
            LinkReport::New => "n",
            LinkReport::Up => "u",
            LinkReport::Down => "d",
        }
    }

    fn from_code(code: &str) -> Option<Self> {
        match code {
            "n" => Some(LinkReport::New),
            "u" => Some(LinkReport::Up),
            "d" => Some(LinkReport::Down),
            _ => None,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Message {
    /// `lc2\n<origin: 16 hex>\n<seq: hex>\n<kind>\n<body>`.
    fn encode(&self) -> String {
        let head = format!("{WIRE_VERSION}\n{:016x}\n{:x}\n", self.origin, self.seq);
        match &self.body {
            Body::Invalidate(Invalidation::Key(k)) => format!("{head}k\n{k}"),
            Body::Invalidate(Invalidation::Prefix(p)) => format!("{head}p\n{p}"),
            Body::Invalidate(Invalidation::Clear) => format!("{head}c\n"),
            Body::Invalidate(Invalidation::Tag { tag, generation }) => {
                format!("{head}t\n{generation:x} {tag}")
            }
            Body::Heartbeat { link, bound } => {
                format!("{head}h\n{} {:x}", link.code(), millis(*bound))
            }
            Body::Ack { origin, seq } => format!("{head}a\n{origin:016x} {seq:x}"),
        }
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
            "t" => {
                let (generation, tag) = body.split_once(' ')?;
                Body::Invalidate(Invalidation::Tag {
                    tag: tag.to_owned(),
                    generation: hex(generation)?,
                })
            }
            "h" => {
                let (link, bound) = body.split_once(' ')?;
                Body::Heartbeat {
                    link: LinkReport::from_code(link)?,
                    bound: Duration::from_millis(hex(bound)?),
                }
            }
            "a" => {
                let (origin, seq) = body.split_once(' ')?;
                Body::Ack {
                    origin: Some(origin).filter(|o| o.len() == 16).and_then(hex)?,
                    seq: hex(seq)?,
                }
            }
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
    /// Origin -> (last number, when it arrived).
    last: HashMap<u64, (u64, Instant)>,
}

impl Sequences {
    /// Records `seq` from `origin`; `false` if an invalidation from it was
    /// missed or the numbers went backwards. An invalidation (`advances`) must
    /// carry the successor of the last number seen; any other message the
    /// last number itself. The first message from an origin starts its
    /// sequence.
    fn next(&mut self, origin: u64, seq: u64, advances: bool) -> bool {
        let now = Instant::now();
        match self.last.insert(origin, (seq, now)) {
            None => true,
            Some((last, _)) if advances && seq == last.wrapping_add(1) => true,
            Some((last, _)) if !advances && seq == last => true,
            Some((last, _)) => {
                self.last.insert(origin, (last.max(seq), now));
                false
            }
        }
    }

    /// Forgets origins silent for [`FORGET_PEERS_AFTER`] (instances that
    /// stopped; a restarted instance has a new origin).
    fn forget_silent(&mut self) {
        let now = Instant::now();
        self.last
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < FORGET_PEERS_AFTER);
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
    /// Heartbeats published by this process.
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
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    received: AtomicU64,
    malformed: AtomicU64,
    resyncs: AtomicU64,
    sequence_gaps: AtomicU64,
    heartbeats: AtomicU64,
    link_downs: AtomicU64,
    reconnects: AtomicU64,
    acks_sent: AtomicU64,
    acks_received: AtomicU64,
    unconfirmed: AtomicU64,
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

/// Peers silent for this long are forgotten.
const FORGET_PEERS_AFTER: Duration = Duration::from_secs(600);

/// Whether this bus hears itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkState {
    /// Connected; the first heartbeat has not come back yet.
    Starting,
    Up,
    /// No heartbeat of its own came back in time: the local tiers are flushed
    /// every heartbeat interval until one does.
    Down,
}

struct Link {
    state: LinkState,
    /// When the last heartbeat of this bus's own came back.
    last_echo: Instant,
    /// When the local tiers were last flushed because the link is down.
    last_flush: Instant,
}

/// What this bus knows of another instance, from its heartbeats.
#[derive(Clone, Copy, Debug)]
struct Peer {
    last_heartbeat: Instant,
    link: LinkReport,
    bound: Duration,
    /// When its first heartbeat arrived here, and whether that one was its
    /// very first (`n`: it had just subscribed).
    first_heard: Instant,
    first_was_new: bool,
}

impl Peer {
    /// Whether the peer hears itself: its last heartbeat said so, and it is
    /// not older than the peer's own down-detection bound (plus 5%: a peer
    /// whose heartbeats stopped declares its link down a little before its
    /// bound, so it has flushed by the time it stops counting as live here).
    fn is_live(&self, now: Instant) -> bool {
        self.link != LinkReport::Down && self.is_recent(now)
    }

    /// Whether its last heartbeat, whatever link it reported, is not older
    /// than the peer's own down-detection bound (plus 5%). A peer that is not
    /// recent has declared its own link down and is flushing its tiers.
    fn is_recent(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_heartbeat) <= self.bound + self.bound / 20
    }
}

/// Heartbeat settings.
#[derive(Clone, Copy, Debug)]
struct Timing {
    interval: Duration,
    timeout: Duration,
}

impl Timing {
    /// How often the watchdog looks at the link.
    fn tick(self) -> Duration {
        (self.interval.min(self.timeout) / 10).max(Duration::from_millis(1))
    }

    /// The documented bound: a link that dies is declared down, and the local
    /// tiers flushed, at most this long after the last heartbeat came back.
    fn bound(self) -> Duration {
        self.interval + self.timeout
    }

    /// Silence after which the watchdog declares the link down: one tick
    /// early, so the flush happens within [`Timing::bound`], and before other
    /// instances stop counting on this one.
    fn silence_limit(self) -> Duration {
        self.bound().saturating_sub(self.tick())
    }
}

struct BusInner {
    publisher: Client,
    subscriber: SubscriberClient,
    channel: String,
    /// This bus's id on the wire.
    origin: u64,
    /// The number of the last invalidation published; held while publishing,
    /// so numbers reach Redis in order.
    last_seq: tokio::sync::Mutex<u64>,
    appliers: Mutex<Appliers>,
    next_applier: AtomicU64,
    timing: Timing,
    /// Whether the link watchdog runs (always, but under the
    /// `mutations` switch `mutation::set_no_heartbeat_watchdog`).
    watchdog: bool,
    link: Mutex<Link>,
    link_tx: watch::Sender<bool>,
    peers: Mutex<HashMap<u64, Peer>>,
    /// This bus's invalidations waiting for acknowledgements, by number.
    pending: Mutex<HashMap<u64, Pending>>,
    ack_timeout: Duration,
    /// Until then this bus may not have heard from every live instance yet
    /// (subscribed at + heartbeat interval + timeout).
    discovery_until: Instant,
    counters: Counters,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// One of this bus's invalidations, waiting for the other instances.
#[derive(Debug)]
struct Pending {
    /// When it came back to this bus, and which peers were live then.
    echo: Option<(Instant, Vec<u64>)>,
    /// The peers that acknowledged it.
    acked: Vec<u64>,
    wake: Arc<Notify>,
}

/// Where a confirmed invalidation stands.
#[derive(Debug, PartialEq, Eq)]
enum Confirmation {
    Confirmed,
    /// Only instances whose last heartbeat reported their link down have not
    /// acknowledged yet. They are still waited for until the ack timeout: a
    /// "down" report can arrive late, after the instance is back up and
    /// serving, and only its ack proves it applied the invalidation. At the
    /// timeout they are excused (they are flushing: the documented exception).
    MissingDown(Vec<u64>),
    /// Our own message has not come back yet.
    NoEcho,
    /// This bus may not know every live instance yet.
    Discovering,
    /// These live instances have not acknowledged it yet.
    Missing(Vec<u64>),
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

    /// Publishes `body`; an invalidation under the next sequence number, any
    /// other message under the current one. Returns that number.
    async fn send(&self, body: Body) -> std::result::Result<u64, fred::error::Error> {
        self.send_with(body, |_| {}).await.map_err(|(_, e)| e)
    }

    /// [`BusInner::send`], calling `before` with the number before publishing.
    async fn send_with(
        &self,
        body: Body,
        before: impl FnOnce(u64),
    ) -> std::result::Result<u64, (u64, fred::error::Error)> {
        let mut last = self.last_seq.lock().await;
        if matches!(body, Body::Invalidate(_)) {
            // A number is used once even if the publish fails: receivers then
            // see a gap and flush, as they should when they may have missed
            // an invalidation.
            *last += 1;
        }
        let seq = *last;
        before(seq);
        let msg = Message {
            origin: self.origin,
            seq,
            body,
        }
        .encode();
        let _: i64 = self
            .publisher
            .publish(self.channel.as_str(), msg)
            .await
            .map_err(|e| (seq, e))?;
        Ok(seq)
    }

    async fn on_message(self: &Arc<Self>, sequences: &mut Sequences, raw: fred::types::Message) {
        bump(&self.counters.received);
        let Some(msg) = raw.value.as_str().and_then(|s| Message::decode(&s)) else {
            bump(&self.counters.malformed);
            tracing::warn!(channel = %self.channel, "ignored a malformed invalidation message");
            return;
        };
        let advances = matches!(msg.body, Body::Invalidate(_));
        if !sequences.next(msg.origin, msg.seq, advances) {
            bump(&self.counters.sequence_gaps);
            tracing::warn!(
                channel = %self.channel,
                origin = %format_args!("{:016x}", msg.origin),
                seq = msg.seq,
                "invalidation bus sequence gap; flushing in-process tiers"
            );
            self.resync().await;
        }
        if msg.origin == self.origin {
            // Our own messages were applied here before they were published.
            // Our own heartbeats coming back prove the link works (only
            // heartbeats: other instances judge us by the same ones).
            match msg.body {
                Body::Heartbeat { .. } => {
                    sequences.forget_silent();
                    self.heard_itself().await;
                }
                Body::Invalidate(_) => self.echoed(msg.seq),
                Body::Ack { .. } => {}
            }
            return;
        }
        match msg.body {
            Body::Invalidate(inv) => {
                self.apply_locally(None, &inv).await;
                // Applied: tell the sender, without holding up the next message.
                let bus = self.clone();
                let ack = Body::Ack {
                    origin: msg.origin,
                    seq: msg.seq,
                };
                tokio::spawn(async move {
                    match bus.send(ack).await {
                        Ok(_) => bump(&bus.counters.acks_sent),
                        Err(err) => {
                            tracing::warn!(error = %err, "publishing an invalidation ack failed")
                        }
                    }
                });
            }
            Body::Heartbeat { link, bound } => self.heard_peer(msg.origin, link, bound),
            Body::Ack { origin, seq } if origin == self.origin => self.acked(msg.origin, seq),
            Body::Ack { .. } => {}
        }
    }

    /// Our invalidation `seq` came back: the peers heard from recently (link
    /// up or reported down) are the ones that must acknowledge it. (Redis
    /// delivers in publish order, so every
    /// heartbeat published before it has been seen here.)
    fn echoed(&self, seq: u64) {
        let now = Instant::now();
        let live = self.recent_peers(now);
        if let Ok(mut pending) = self.pending.lock() {
            if let Some(p) = pending.get_mut(&seq) {
                p.echo = Some((now, live));
                p.wake.notify_one();
            }
        }
    }

    fn acked(&self, peer: u64, seq: u64) {
        bump(&self.counters.acks_received);
        if let Ok(mut pending) = self.pending.lock() {
            if let Some(p) = pending.get_mut(&seq) {
                if !p.acked.contains(&peer) {
                    p.acked.push(peer);
                }
                p.wake.notify_one();
            }
        }
    }

    /// The peers heard from within their bound, whatever link they
    /// reported: every one of them is asked to acknowledge.
    fn recent_peers(&self, now: Instant) -> Vec<u64> {
        self.peers_where(|p| p.is_recent(now))
    }

    /// The peers whose last heartbeat said their link is up, and is recent.
    fn live_peers(&self, now: Instant) -> Vec<u64> {
        self.peers_where(|p| p.is_live(now))
    }

    fn peers_where(&self, keep: impl Fn(&Peer) -> bool) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .peers
            .lock()
            .map(|p| {
                p.iter()
                    .filter(|(_, p)| keep(p))
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default();
        ids.sort_unstable();
        ids
    }

    /// Publishes invalidation `seq` and registers it as waiting for acks.
    async fn send_confirmed(
        &self,
        invalidation: &Invalidation,
    ) -> std::result::Result<(u64, Arc<Notify>), fred::error::Error> {
        let wake = Arc::new(Notify::new());
        let w = wake.clone();
        let seq = self
            .send_with(Body::Invalidate(invalidation.clone()), |seq| {
                if let Ok(mut pending) = self.pending.lock() {
                    pending.insert(
                        seq,
                        Pending {
                            echo: None,
                            acked: Vec::new(),
                            wake: w,
                        },
                    );
                }
            })
            .await;
        match seq {
            Ok(seq) => Ok((seq, wake)),
            Err((seq, err)) => {
                self.forget_pending(seq);
                Err(err)
            }
        }
    }

    fn forget_pending(&self, seq: u64) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(&seq);
        }
    }

    /// Where invalidation `seq` stands at `now`.
    fn confirmation(&self, seq: u64, now: Instant) -> Confirmation {
        let (echo_at, live_then, acked) = {
            let Ok(pending) = self.pending.lock() else {
                return Confirmation::NoEcho;
            };
            match pending.get(&seq) {
                Some(Pending {
                    echo: Some((at, live)),
                    acked,
                    ..
                }) => (*at, live.clone(), acked.clone()),
                _ => return Confirmation::NoEcho,
            }
        };
        let discovering = echo_at < self.discovery_until;
        if discovering && now < self.discovery_until {
            return Confirmation::Discovering;
        }
        let Ok(peers) = self.peers.lock() else {
            return Confirmation::NoEcho;
        };
        // Live when the message came back, or (while this bus was still
        // discovering) an instance heard of only afterwards that was already
        // running; one that had just started subscribed after the message
        // and holds nothing older.
        let late = peers
            .iter()
            .filter(|(_, p)| discovering && p.first_heard > echo_at && !p.first_was_new);
        let mut missing: Vec<u64> = live_then
            .iter()
            .copied()
            .chain(late.map(|(id, _)| *id))
            .filter(|id| !acked.contains(id))
            // One that went silent has declared its link down and is flushing.
            .filter(|id| peers.get(id).is_some_and(|p| p.is_recent(now)))
            .collect();
        if missing.is_empty() {
            return Confirmation::Confirmed;
        }
        missing.sort_unstable();
        missing.dedup();
        if missing
            .iter()
            .all(|id| peers.get(id).is_some_and(|p| p.link == LinkReport::Down))
        {
            return Confirmation::MissingDown(missing);
        }
        Confirmation::Missing(missing)
    }

    /// Waits until every live instance acknowledged invalidation `seq`, or
    /// the ack timeout (counted from `started`) passes.
    async fn confirm(&self, seq: u64, wake: Arc<Notify>, started: Instant) -> Result<()> {
        struct Forget<'a>(&'a BusInner, u64);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0.forget_pending(self.1);
            }
        }
        let _forget = Forget(self, seq);
        let deadline = started + self.ack_timeout;
        loop {
            let now = Instant::now();
            let state = self.confirmation(seq, now);
            if state == Confirmation::Confirmed {
                return Ok(());
            }
            if now >= deadline {
                if let Confirmation::MissingDown(ids) = &state {
                    tracing::info!(
                        channel = %self.channel,
                        instances = ids.len(),
                        "invalidation #{seq} confirmed without instances whose link is down (they flush their in-process tiers)"
                    );
                    return Ok(());
                }
                bump(&self.counters.unconfirmed);
                let reason = match state {
                    Confirmation::Missing(ids) => {
                        let ids: Vec<String> = ids.iter().map(|id| format!("{id:016x}")).collect();
                        format!(
                            "instances {} did not confirm invalidation #{seq} within {:?}; they may still serve the old value",
                            ids.join(", "),
                            self.ack_timeout
                        )
                    }
                    Confirmation::NoEcho => format!(
                        "invalidation #{seq} did not come back to this instance within {:?} (its bus link may be down); other instances may still serve the old value",
                        self.ack_timeout
                    ),
                    _ => format!(
                        "this instance had not heard from every other instance yet when invalidation #{seq} timed out after {:?}",
                        self.ack_timeout
                    ),
                };
                tracing::warn!(channel = %self.channel, %reason, "invalidation not confirmed");
                return Err(Error::Unavailable {
                    tier: BUS.into(),
                    reason,
                });
            }
            // Acks and echoes wake us; peers going silent are seen on the
            // next tick.
            let next = (now + self.timing.tick()).min(deadline);
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep_until(next.into()) => {}
            }
        }
    }

    /// A heartbeat of our own came back.
    async fn heard_itself(self: &Arc<Self>) {
        let was = {
            let Ok(mut link) = self.link.lock() else {
                return;
            };
            link.last_echo = Instant::now();
            let was = link.state;
            if was == LinkState::Starting {
                link.state = LinkState::Up;
                self.link_tx.send_replace(true);
            }
            was
        };
        if was == LinkState::Down {
            // Messages may have been lost while the link was down: flush once
            // more, then count as up.
            tracing::info!(channel = %self.channel, "invalidation bus link is back; flushing in-process tiers");
            self.resync().await;
            if let Ok(mut link) = self.link.lock() {
                if link.state == LinkState::Down {
                    link.state = LinkState::Up;
                    self.link_tx.send_replace(true);
                }
            }
            self.announce();
        }
    }

    /// Publishes a heartbeat now, in the background: the link state changed,
    /// or a new instance wants to know this one.
    fn announce(self: &Arc<Self>) {
        let bus = self.clone();
        tokio::spawn(async move { bus.heartbeat().await });
    }

    fn heard_peer(self: &Arc<Self>, origin: u64, link: LinkReport, bound: Duration) {
        let now = Instant::now();
        if let Ok(mut peers) = self.peers.lock() {
            let (first_heard, first_was_new) = peers
                .get(&origin)
                .map_or((now, link == LinkReport::New), |p| {
                    (p.first_heard, p.first_was_new)
                });
            peers.insert(
                origin,
                Peer {
                    last_heartbeat: now,
                    link,
                    bound,
                    first_heard,
                    first_was_new,
                },
            );
        }
        if link == LinkReport::New {
            // A new instance: tell it about this one right away.
            self.announce();
        }
    }

    fn link_state(&self) -> LinkState {
        self.link.lock().map(|l| l.state).unwrap_or(LinkState::Down)
    }

    /// Publishes a heartbeat with this bus's view of its link.
    async fn heartbeat(&self) {
        if let Err(err) = self.try_heartbeat().await {
            tracing::debug!(error = %err, "publishing a heartbeat failed");
        }
    }

    /// Publishes a heartbeat.
    async fn try_heartbeat(&self) -> std::result::Result<(), fred::error::Error> {
        let link = match self.link_state() {
            LinkState::Starting => LinkReport::New,
            LinkState::Up => LinkReport::Up,
            LinkState::Down => LinkReport::Down,
        };
        let body = Body::Heartbeat {
            link,
            bound: self.timing.bound(),
        };
        self.send(body).await?;
        bump(&self.counters.heartbeats);
        Ok(())
    }

    /// One look at the link: declares it down after too long a silence, and
    /// flushes every interval while it is down.
    async fn watch_link(self: &Arc<Self>) {
        let (flush, went_down) = {
            let Ok(mut link) = self.link.lock() else {
                return;
            };
            let now = Instant::now();
            match link.state {
                LinkState::Starting | LinkState::Up
                    if now.saturating_duration_since(link.last_echo)
                        > self.timing.silence_limit() =>
                {
                    link.state = LinkState::Down;
                    link.last_flush = now;
                    self.link_tx.send_replace(false);
                    bump(&self.counters.link_downs);
                    tracing::warn!(
                        channel = %self.channel,
                        silent_for = ?now.saturating_duration_since(link.last_echo),
                        "invalidation bus link is down (no heartbeat came back); flushing in-process tiers"
                    );
                    (true, true)
                }
                LinkState::Down
                    if now.saturating_duration_since(link.last_flush) >= self.timing.interval =>
                {
                    link.last_flush = now;
                    (true, false)
                }
                _ => (false, false),
            }
        };
        if flush {
            self.resync().await;
        }
        if went_down {
            // Flushed: other instances may stop waiting for this one.
            self.announce();
        }
    }

    fn forget_silent_peers(&self) {
        let now = Instant::now();
        if let Ok(mut peers) = self.peers.lock() {
            peers.retain(|_, p| {
                now.saturating_duration_since(p.last_heartbeat) < FORGET_PEERS_AFTER
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
/// it has subscribed again), when the listener falls behind, or when a
/// message's sequence number shows that an earlier one is missing, every
/// [`SyncedCache`] on this bus flushes its in-process tiers.
///
/// **A link that dies silently.** A TCP connection can stop carrying data
/// without closing (a dead peer, a dropped route). Every heartbeat interval
/// (default 1 s) the bus publishes a heartbeat and pings its subscriber
/// connection. It hears its own heartbeats come back; if no heartbeat of its own
/// comes back for heartbeat interval + heartbeat timeout (default 1 s + 2 s),
/// it declares its link **down** ([`InvalidationBus::link_is_up`],
/// [`BusStats::link_downs`]) and flushes the in-process tiers, then again every
/// interval while the link stays down, and once more when a heartbeat of its own
/// comes back (messages may have been lost meanwhile). So an instance whose
/// link dies serves entries from its in-process tiers that another instance
/// has since invalidated **for at most heartbeat interval + heartbeat timeout
/// after its last heartbeat came back: at most 3 s with the defaults**. The
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
            heartbeats: get(&c.heartbeats),
            link_downs: get(&c.link_downs),
            reconnects: get(&c.reconnects),
            acks_sent: get(&c.acks_sent),
            acks_received: get(&c.acks_received),
            unconfirmed: get(&c.unconfirmed),
        }
    }

    /// Whether this bus hears itself: its own heartbeats come back. `false`
    /// from the moment the link is declared down (see
    /// [`InvalidationBus`]: at most heartbeat interval + timeout after the last
    /// heartbeat came back) until a heartbeat of its own comes back again.
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

    /// The other instances on this channel that are live: their last heartbeat
    /// said their link is up, and is no older than their own down-detection
    /// bound (their interval + timeout, + 5%). By
    /// [`InvalidationBus::instance_id`].
    ///
    /// ```no_run
    /// # async fn demo(bus: cache_server::InvalidationBus) {
    /// for peer in bus.live_peers() {
    ///     println!("live: {peer:016x}");
    /// }
    /// # }
    /// ```
    pub fn live_peers(&self) -> Vec<u64> {
        self.inner.live_peers(Instant::now())
    }

    /// The heartbeat interval and timeout in force: a link that dies is
    /// declared down, and the in-process tiers flushed, at most `interval +
    /// timeout` after the last heartbeat came back.
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
        self.inner.apply_locally(None, invalidation).await;
        self.publish_only(invalidation).await.map(|_| ())
    }

    /// Publishes without applying anything here, then waits until every live
    /// instance has applied it (see [`SyncedCache`]).
    async fn publish_confirmed(&self, invalidation: &Invalidation) -> Result<()> {
        let started = Instant::now();
        let (seq, wake) = self
            .inner
            .send_confirmed(invalidation)
            .await
            .map_err(|e| Error::backend(BUS, operation_of(invalidation), e))?;
        bump(&self.inner.counters.published);
        self.inner.confirm(seq, wake, started).await
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
        Invalidation::Tag { .. } => Operation::Remove,
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
    timing: Timing,
    ack_timeout: Option<Duration>,
    /// Extra CA certificates (PEM) to trust.
    #[cfg(feature = "tls")]
    tls_ca: Vec<Vec<u8>>,
}

/// Default [`InvalidationBusBuilder::heartbeat_interval`]: 1 s.
///
/// ```
/// use cache_server::{DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT};
/// // A dead link is noticed, and the in-process tiers flushed, within 3 s.
/// assert_eq!((DEFAULT_HEARTBEAT_INTERVAL + DEFAULT_HEARTBEAT_TIMEOUT).as_secs(), 3);
/// ```
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Default [`InvalidationBusBuilder::heartbeat_timeout`]: 2 s.
///
/// ```
/// assert_eq!(cache_server::DEFAULT_HEARTBEAT_TIMEOUT.as_secs(), 2);
/// ```
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);

impl fmt::Debug for InvalidationBusBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No URL or config: they may hold credentials.
        let mut d = f.debug_struct("InvalidationBusBuilder");
        d.field("channel", &self.channel)
            .field("command_timeout", &self.command_timeout)
            .field("heartbeat_interval", &self.timing.interval)
            .field("heartbeat_timeout", &self.timing.timeout)
            .field("ack_timeout", &self.ack_timeout);
        #[cfg(feature = "tls")]
        d.field("tls_ca_pems", &self.tls_ca.len());
        d.finish_non_exhaustive()
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
            timing: Timing {
                interval: DEFAULT_HEARTBEAT_INTERVAL,
                timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            },
            ack_timeout: None,
            #[cfg(feature = "tls")]
            tls_ca: Vec::new(),
        }
    }
}

impl InvalidationBusBuilder {
    /// The server URL (`redis://` or `redis-cluster://`; with the `tls`
    /// feature also `rediss://` and `rediss-cluster://`, see
    /// [`tls_ca_pem`](Self::tls_ca_pem)). An ACL user needs `PUBLISH` and
    /// `SUBSCRIBE` on the channel, `PING` and `CLIENT SETNAME`.
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

    /// A full fred [`Config`] instead of a URL (with the `tls` feature, its
    /// `tls` field may hold a connector of your own;
    /// [`tls_ca_pem`](Self::tls_ca_pem) replaces it).
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

    /// How often the bus publishes a heartbeat and pings its subscriber
    /// connection (default 1 s, at least 1 ms). Use the same value on every
    /// instance of a channel.
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = cache_server::InvalidationBus::builder().heartbeat_interval(Duration::from_millis(500));
    /// # let _ = b;
    /// ```
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.timing.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How much later than the interval a heartbeat of its own may come back
    /// (default 2 s, at least 1 ms). With no heartbeat of its own back for
    /// `interval + timeout`, the bus declares its link down and flushes the
    /// in-process tiers; it is also how long a connection may leave a `PING`
    /// unanswered before fred drops and reconnects it.
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = cache_server::InvalidationBus::builder().heartbeat_timeout(Duration::from_secs(1));
    /// # let _ = b;
    /// ```
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.timing.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long a [`SyncedCache`] invalidation waits for the other live
    /// instances to confirm it (default heartbeat interval + timeout: by then
    /// an instance that cannot answer has declared its link down, or stopped
    /// counting as live). When one does not confirm in time, the call returns
    /// an error.
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = cache_server::InvalidationBus::builder().ack_timeout(Duration::from_secs(5));
    /// # let _ = b;
    /// ```
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = Some(timeout);
        self
    }

    /// Also trusts the CA certificate(s) in `pem` (one or more `-----BEGIN
    /// CERTIFICATE-----` blocks) for a `rediss://` server, on top of the
    /// system's roots. May be called more than once. `connect` fails if a PEM
    /// holds no certificate or if the URL or config is not TLS. Feature `tls`.
    ///
    /// ```
    /// use cache_server::InvalidationBus;
    /// # // A throwaway redis-server with TLS, its own CA and an ACL user.
    /// # let server = cache_server::testing::tls::TlsRedisServer::start("avatars", &["avatars:invalidate"]);
    /// # let (url, ca_pem) = (server.url(), server.ca_pem().to_owned());
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// // url: "rediss://app:<password>@127.0.0.1:<port>"
    /// // ca_pem: the private CA's certificate, e.g. std::fs::read("ca.pem")?
    /// let bus = InvalidationBus::builder()
    ///     .url(url)
    ///     .tls_ca_pem(ca_pem)
    ///     .channel("avatars:invalidate")
    ///     .connect()
    ///     .await?;
    /// bus.shutdown().await;
    /// # Ok::<_, cache_core::Error>(()) }).unwrap();
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls_ca_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.tls_ca.push(pem.as_ref().to_vec());
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
            reason: describe_connect_error(&e),
        };
        let config = match self.config {
            Some(c) => c,
            None => Config::from_url(&self.url).map_err(unavailable)?,
        };
        #[cfg(feature = "tls")]
        let config = {
            let mut config = config;
            crate::tls::trust_extra_cas(&mut config, &self.tls_ca).map_err(|reason| {
                Error::Unavailable {
                    tier: BUS.into(),
                    reason,
                }
            })?;
            config
        };
        let timing = self.timing;
        let connect_timeout = self.command_timeout.max(Duration::from_secs(1));
        let mut builder =
            client_builder(config, self.command_timeout, connect_timeout, self.policy);
        // A connection that leaves a command (the periodic PING included)
        // unanswered for the heartbeat timeout is dropped and reconnected: a
        // silently dead TCP connection does not go unnoticed.
        builder.with_connection_config(|c| {
            c.unresponsive = UnresponsiveConfig {
                max_timeout: Some(timing.timeout),
                interval: (timing.timeout / 4)
                    .clamp(Duration::from_millis(2), Duration::from_secs(1)),
            };
        });
        let publisher = builder.build().map_err(unavailable)?;
        let subscriber = builder.build_subscriber_client().map_err(unavailable)?;
        publisher.init().await.map_err(unavailable)?;
        subscriber.init().await.map_err(unavailable)?;

        let now = Instant::now();
        let inner = Arc::new(BusInner {
            publisher,
            subscriber: subscriber.clone(),
            channel: self.channel,
            origin: random_id(),
            last_seq: tokio::sync::Mutex::new(0),
            appliers: Mutex::new(Vec::new()),
            next_applier: AtomicU64::new(0),
            timing,
            watchdog: watchdog_enabled(),
            link: Mutex::new(Link {
                state: LinkState::Starting,
                last_echo: now,
                last_flush: now,
            }),
            link_tx: watch::Sender::new(false),
            peers: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            ack_timeout: self.ack_timeout.unwrap_or(timing.bound()),
            discovery_until: now + timing.bound(),
            counters: Counters::default(),
            tasks: Mutex::new(Vec::new()),
        });
        let bus = InvalidationBus { inner };
        let inner = &bus.inner;
        // Listen before subscribing, so no message slips between the two.
        let tasks = [
            spawn_message_pump(inner, subscriber.message_rx()),
            spawn_reconnect_watch(inner, subscriber.reconnect_rx()),
        ];
        if let Ok(mut t) = inner.tasks.lock() {
            t.extend(tasks);
        }
        if let Err(e) = subscriber.subscribe(inner.channel.as_str()).await {
            bus.shutdown().await;
            return Err(unavailable(e));
        }
        let tasks = [
            spawn_every(inner, timing.interval, |bus| async move {
                bus.heartbeat().await
            }),
            spawn_every(inner, timing.interval, |bus| async move {
                if let Err(err) = bus.subscriber.ping::<fred::types::Value>(None).await {
                    tracing::debug!(error = %err, "pinging the invalidation bus subscriber failed");
                }
                bus.forget_silent_peers();
            }),
        ];
        let watchdog = inner.watchdog.then(|| {
            spawn_every(
                inner,
                timing.tick(),
                |bus| async move { bus.watch_link().await },
            )
        });
        if let Ok(mut t) = inner.tasks.lock() {
            t.extend(tasks);
            t.extend(watchdog);
        }
        // The first heartbeat announces this instance; once it comes back the
        // link is up. A PUBLISH the server refuses (an ACL user without this
        // channel) fails here with the server's reason; fred's SUBSCRIBE does
        // not report NOPERM, so this is where such an ACL shows.
        if let Err(err) = inner.try_heartbeat().await {
            if err.details().starts_with("NOPERM") || matches!(err.kind(), ErrorKind::Auth) {
                bus.shutdown().await;
                return Err(Error::Unavailable {
                    tier: BUS.into(),
                    reason: format!(
                        "Redis refused PUBLISH on channel {:?}: {err}",
                        inner.channel
                    ),
                });
            }
            tracing::debug!(error = %err, "publishing the first heartbeat failed");
        }
        let mut up = inner.link_tx.subscribe();
        let wait = timing.bound().max(connect_timeout);
        if !matches!(
            tokio::time::timeout(wait, up.wait_for(|up| *up)).await,
            Ok(Ok(_))
        ) {
            bus.shutdown().await;
            return Err(Error::Unavailable {
                tier: BUS.into(),
                reason: format!(
                    "the bus did not receive its own first heartbeat back within {wait:?} \
                     (with Redis ACLs, the user needs PUBLISH and SUBSCRIBE on the channel)"
                ),
            });
        }
        Ok(bus)
    }
}

#[cfg(feature = "mutations")]
fn watchdog_enabled() -> bool {
    !crate::mutation::no_heartbeat_watchdog()
}

#[cfg(not(feature = "mutations"))]
fn watchdog_enabled() -> bool {
    true
}

/// Runs `f` every `period` (the first time one period from now) while the bus
/// lives.
fn spawn_every<F, Fut>(inner: &Arc<BusInner>, period: Duration, f: F) -> JoinHandle<()>
where
    F: Fn(Arc<BusInner>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            f(inner).await;
        }
    })
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
            bump(&inner.counters.reconnects);
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
                Invalidation::Tag { tag, generation } => {
                    self.chain.tag_invalidated(tag, *generation);
                    Ok(TierReport::new(ChainOp::Invalidate, Vec::new()))
                }
            };
            if let Err(err) = result {
                tracing::warn!(error = %err, "applying a remote invalidation failed");
            }
            let _ = self.applied.send(invalidation.clone());
        })
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(err) = self
                .chain
                .only(&self.tiers)
                .resync("invalidation bus")
                .await
            {
                tracing::warn!(error = %err, "flushing the in-process tiers failed");
            }
            bump(&self.flushes);
            let _ = self.applied.send(Invalidation::Clear);
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
/// defaults)** after its last heartbeat came back; by then it has flushed its
/// in-process tiers, and it keeps flushing them every interval until its link
/// is back (see [`InvalidationBus`]).
///
/// Every instance heard from within its interval + timeout (+ 5%: it declares
/// its own link down a little earlier) is asked to acknowledge. One that went
/// silent is not waited for: it is flushing. One whose last heartbeat reported
/// its link down is waited for until the ack timeout and then excused (it is
/// flushing), because a "down" heartbeat can arrive late, after the instance is
/// back up and serving: only its ack proves it applied the invalidation. An
/// instance whose last heartbeat said its link is up and that does not acknowledge
/// within the ack timeout ([`InvalidationBusBuilder::ack_timeout`], default
/// interval + timeout) makes the call return [`Error::Unavailable`] naming it
/// (`tier: "invalidation-bus"`), never `Ok`; everything was still applied
/// here and published. So does a message of this instance's own that does not
/// come back. During its first interval + timeout after connecting, a bus may
/// not have heard from every instance yet: its invalidations wait until then.
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
    /// drop it from its local tiers and waits until every live one has (see
    /// [the guarantee](SyncedCache#the-guarantee)). The message is published
    /// even if a tier failed here; the error then names the tier, so the call
    /// can be retried. An instance that did not confirm gives
    /// [`Error::Unavailable`].
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
        self.bus
            .inner
            .apply_locally(Some(self.registration.id), &invalidation)
            .await;
        self.bus.publish_confirmed(&invalidation).await?;
        Ok(generation)
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
        let confirmed = self.bus.publish_confirmed(&invalidation).await;
        let report = report?;
        confirmed?;
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
            Invalidation::Tag {
                tag: "user:1 with spaces\nand a newline".into(),
                generation: u64::MAX,
            },
            Invalidation::Tag {
                tag: "".into(),
                generation: 0,
            },
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
        for (origin, seq) in [(0, 0), (u64::MAX, u64::MAX), (0xabc, 1)] {
            let m = msg(Body::Ack { origin, seq });
            assert_eq!(Message::decode(&m.encode()), Some(m));
        }
        assert_eq!(
            msg(Body::Ack {
                origin: 0xfeed,
                seq: 0x1f
            })
            .encode(),
            "lc2\n0123456789abcdef\n7\na\n000000000000feed 1f"
        );
        for link in [LinkReport::New, LinkReport::Up, LinkReport::Down] {
            for bound in [Duration::ZERO, Duration::from_millis(3000)] {
                let m = msg(Body::Heartbeat { link, bound });
                assert_eq!(Message::decode(&m.encode()), Some(m));
            }
        }
        assert_eq!(
            msg(Body::Invalidate(Invalidation::Key("a".into()))).encode(),
            "lc2\n0123456789abcdef\n7\nk\na"
        );
        assert_eq!(
            msg(Body::Heartbeat {
                link: LinkReport::Up,
                bound: Duration::from_secs(3)
            })
            .encode(),
            "lc2\n0123456789abcdef\n7\nh\nu bb8"
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
            format!("lc2\n{o}\n1\nh\n"),
            format!("lc2\n{o}\n1\nh\nu"),
            format!("lc2\n{o}\n1\nh\nu "),
            format!("lc2\n{o}\n1\nh\nx 10"),
            format!("lc2\n{o}\n1\nh\nu 10 "),
            format!("lc2\n{o}\n1\nh\nu  10"),
            format!("lc2\n{o}\n1\nh\nu -10"),
            format!("lc2\n{o}\n1\nh\nup 10"),
            format!("lc2\n{o}\n1\na\n"),
            format!("lc2\n{o}\n1\na\n{o}"),
            format!("lc2\n{o}\n1\na\n{o} "),
            format!("lc2\n{o}\n1\na\nfeed 1"),
            format!("lc2\n{o}\n1\na\n{o} 1 "),
            format!("lc2\n{o}\n1\na\n{o} +1"),
            format!("lc2\n{o}\n1\na\n{o}\n1"),
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
            msg(Body::Heartbeat {
                link: LinkReport::Down,
                bound: Duration::from_secs(3),
            })
            .encode(),
            msg(Body::Ack {
                origin: 0xfeed,
                seq: 0x1f,
            })
            .encode(),
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
    fn a_peer_is_live_while_its_heartbeats_say_up_and_are_recent() {
        let t0 = Instant::now();
        let peer = |link| Peer {
            last_heartbeat: t0,
            link,
            bound: Duration::from_millis(1000),
            first_heard: t0,
            first_was_new: false,
        };
        let ms = Duration::from_millis;
        assert!(peer(LinkReport::Up).is_live(t0 + ms(1000)));
        assert!(peer(LinkReport::New).is_live(t0 + ms(1050)), "5% slack");
        assert!(!peer(LinkReport::Up).is_live(t0 + ms(1051)));
        assert!(!peer(LinkReport::Down).is_live(t0), "down: it is flushing");
        let timing = Timing {
            interval: ms(1000),
            timeout: ms(2000),
        };
        assert_eq!(timing.bound(), ms(3000));
        assert_eq!(timing.tick(), ms(100));
        assert_eq!(timing.silence_limit(), ms(2900));
    }

    #[test]
    fn sequences_detect_gaps() {
        let mut s = Sequences::default();
        assert!(
            s.next(1, 5, true),
            "the first message from an origin starts it"
        );
        assert!(s.next(1, 6, true));
        assert!(s.next(1, 6, false), "a heartbeat carries the last number");
        assert!(s.next(1, 6, false));
        assert!(s.next(2, 0, false), "origins are independent");
        assert!(!s.next(1, 8, true), "7 is missing");
        assert!(s.next(1, 9, true));
        assert!(!s.next(1, 9, true), "a repeat is not the successor");
        assert!(!s.next(1, 3, true), "backwards");
        assert!(s.next(1, 10, true), "the highest number seen is kept");
        assert!(!s.next(1, 11, false), "a heartbeat shows 11 was missed");
        assert!(s.next(1, 11, false));
        assert!(!s.next(1, 10, false), "backwards");
        assert!(s.next(1, 12, true));
        assert!(s.next(2, 1, true));
    }
}
