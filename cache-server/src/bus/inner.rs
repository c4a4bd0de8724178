//! The bus's shared state and what it does with each message: apply and
//! acknowledge invalidations, hear its own heartbeats, collect acks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_core::{Error, Result};
use fred::clients::{Client, SubscriberClient};
use fred::prelude::{ClientLike, PubsubInterface};
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use super::link::{Link, LinkState, Timing};
use super::registry::{Listed, Registry};
use super::sequences::{Sequences, FORGET_PEERS_AFTER};
use super::wire::{foreign_version, Body, Build, LinkReport, Message, Record};
use super::{Invalidation, BUS};

/// Something in this process that holds in-process tiers: it applies the
/// invalidations of the other instances and flushes on a resync.
pub(super) trait Applier: Send + Sync {
    /// Applies one invalidation; `Err` with a reason if a tier failed.
    fn apply<'a>(
        &'a self,
        invalidation: &'a Invalidation,
    ) -> BoxFuture<'a, std::result::Result<(), String>>;
    /// Drops everything from the in-process tiers; `Err` if a tier failed.
    fn flush(&self) -> BoxFuture<'_, std::result::Result<(), String>>;
}

pub(super) type Appliers = Vec<(u64, Arc<dyn Applier>)>;

/// The registered appliers, and how many deliveries (invalidations applied,
/// flushes) the bus has made to whoever was registered: an applier
/// registered after one missed it.
#[derive(Default)]
pub(super) struct ApplierList {
    pub(super) list: Appliers,
    pub(super) deliveries: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) published: AtomicU64,
    pub(super) received: AtomicU64,
    pub(super) received_invalidations: AtomicU64,
    pub(super) received_acks: AtomicU64,
    pub(super) received_heartbeats: AtomicU64,
    pub(super) malformed: AtomicU64,
    pub(super) foreign: AtomicU64,
    pub(super) resyncs: AtomicU64,
    pub(super) sequence_gaps: AtomicU64,
    pub(super) heartbeats: AtomicU64,
    pub(super) link_downs: AtomicU64,
    pub(super) reconnects: AtomicU64,
    pub(super) acks_sent: AtomicU64,
    pub(super) acks_received: AtomicU64,
    pub(super) unconfirmed: AtomicU64,
    pub(super) excused: AtomicU64,
    pub(super) apply_failures: AtomicU64,
    pub(super) last_peers: AtomicU64,
}

/// `d` in nanoseconds, saturating (for [`BusInner::look_by`]).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One of this bus's invalidations, waiting for the other instances.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// The peers that acknowledged it (acks can come before the publish
    /// returns).
    acked: Vec<u64>,
    wake: Arc<Notify>,
}

pub(super) struct BusInner {
    pub(super) publisher: Client,
    pub(super) subscriber: SubscriberClient,
    pub(super) channel: String,
    pub(super) registry: Registry,
    /// This bus's own inbox channel.
    pub(super) inbox: String,
    /// This bus's id on the wire.
    pub(super) origin: u64,
    pub(super) build: Build,
    /// Whether Redis is a cluster, reached by a cluster URL or by a plain
    /// one to one of its nodes (`PUBSUB NUMSUB` then sees one node only).
    pub(super) clustered: bool,
    /// The number of the last invalidation published; held while publishing,
    /// so numbers reach Redis in order.
    pub(super) last_seq: tokio::sync::Mutex<u64>,
    pub(super) appliers: Mutex<ApplierList>,
    pub(super) next_applier: AtomicU64,
    pub(super) timing: Timing,
    /// Whether the link watchdog runs (always, but under the
    /// `mutations` switch `mutation::set_no_heartbeat_watchdog`).
    pub(super) watchdog: bool,
    pub(super) link: Mutex<Link>,
    /// The origin of [`BusInner::look_by`].
    pub(super) epoch: Instant,
    /// Nanoseconds after [`BusInner::epoch`] past which the link must be
    /// looked at before a read is served: when the last heartbeat that came
    /// back (while the link was up) was sent, plus the silence limit.
    pub(super) look_by: AtomicU64,
    /// Held by [`BusInner::watch_link`] while it decides and flushes, so a
    /// read that looks meanwhile waits for the flush.
    pub(super) looking: tokio::sync::Mutex<()>,
    pub(super) link_tx: watch::Sender<bool>,
    /// This bus's invalidations waiting for acknowledgements, by number.
    pub(super) pending: Mutex<HashMap<u64, Pending>>,
    /// Instances this bus excused lately (by id, when), for as long as they
    /// may still be listed (the bound and its 10 %): an invalidation that
    /// lists one looks at them at once, not one tick later. A dead
    /// instance stays listed until its registration runs out; without this
    /// every invalidation meanwhile waited one tick for it.
    pub(super) suspects: Mutex<HashMap<u64, Instant>>,
    pub(super) ack_timeout: Duration,
    /// Other instances' invalidations, in order, for the applier task.
    pub(super) to_apply: mpsc::Sender<Message>,
    pub(super) counters: Counters,
    /// The number of this bus's last registry refresh.
    pub(super) refreshes: AtomicU64,
    pub(super) tasks: Mutex<Vec<JoinHandle<()>>>,
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
            let registry = Registry::new(&self.channel);
            let origin = self.origin;
            rt.spawn(async move {
                let _ = registry.goodbye(&p, origin).await;
                let _ = s.quit().await;
                let _ = p.quit().await;
            });
        }
    }
}

/// How many other instances' invalidations may wait to be applied; past
/// that the local tiers are flushed instead (which covers them all).
pub(super) const APPLY_QUEUE: usize = 4096;

impl BusInner {
    /// The appliers to deliver to now; the delivery is counted (see
    /// [`ApplierList`]).
    pub(super) fn appliers(&self) -> Appliers {
        self.appliers
            .lock()
            .map(|mut a| {
                a.deliveries += 1;
                a.list.clone()
            })
            .unwrap_or_default()
    }

    /// Applies `invalidation` to every local applier but `except`; `Err` with
    /// the reasons if one failed.
    pub(super) async fn apply_locally(
        &self,
        except: Option<u64>,
        invalidation: &Invalidation,
    ) -> std::result::Result<(), String> {
        let mut failed = Vec::new();
        for (id, applier) in self.appliers() {
            if Some(id) != except {
                if let Err(why) = applier.apply(invalidation).await {
                    failed.push(why);
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }

    /// Flushes every local applier: messages may have been lost. `Err` if
    /// one failed.
    pub(super) async fn resync(&self) -> std::result::Result<(), String> {
        bump(&self.counters.resyncs);
        let mut failed = Vec::new();
        for (_, applier) in self.appliers() {
            if let Err(why) = applier.flush().await {
                failed.push(why);
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }

    fn message(&self, seq: u64, body: Body) -> String {
        Message {
            origin: self.origin,
            seq,
            body,
        }
        .encode()
    }

    /// This bus's registry record, reporting `link`.
    fn record(&self, link: LinkReport) -> Record {
        Record {
            link,
            bound: self.timing.bound(),
            build: self.build.clone(),
        }
    }

    /// Refreshes this bus's registration and sends a heartbeat to its own
    /// inbox. Each refresh has a higher number than the one before, so one
    /// delayed on a dropped connection cannot overwrite a newer one, and it
    /// reports [`Link::report`] as it was when it took its number: a refresh
    /// that overwrites another was decided after it. `false` if the refresh
    /// failed (Redis may not have run it).
    ///
    /// [`Link::report`]: super::link::Link::report
    pub(super) async fn heartbeat(&self) -> bool {
        let seq = *self.last_seq.lock().await;
        let Ok((number, report)) = self.link.lock().map(|link| {
            let number = self.refreshes.fetch_add(1, Ordering::Relaxed) + 1;
            (number, link.report)
        }) else {
            return false;
        };
        // Taken before the refresh is sent: Redis runs it later, so the
        // registration it renews runs out later than `bound` after this.
        let sent = nanos(self.epoch.elapsed());
        let heartbeat = self.message(seq, Body::Heartbeat { sent });
        let forget = super::wire::millis(FORGET_PEERS_AFTER);
        match self
            .registry
            .heartbeat(
                &self.publisher,
                self.origin,
                (number, &self.record(report)),
                forget,
                heartbeat,
            )
            .await
        {
            Ok(true) => {
                bump(&self.counters.heartbeats);
                true
            }
            Ok(false) => {
                tracing::debug!(
                    channel = %self.channel,
                    "a delayed registry refresh was stale and changed nothing"
                );
                true
            }
            Err(err) => {
                tracing::debug!(
                    channel = %self.channel,
                    instance = %format_args!("{:016x}", self.origin),
                    error = %err,
                    "a heartbeat failed"
                );
                false
            }
        }
    }

    /// Publishes invalidation `invalidation` under the next number,
    /// registered as waiting for acks, and returns that number with the
    /// instances that were live when it was published.
    pub(super) async fn publish(
        &self,
        invalidation: &Invalidation,
    ) -> std::result::Result<(u64, Arc<Notify>, Vec<Listed>), fred::error::Error> {
        let mut last = self.last_seq.lock().await;
        // A number is used once even if the publish fails: receivers then
        // see a gap and flush, as they should when they may have missed an
        // invalidation.
        *last += 1;
        let seq = *last;
        let wake = Arc::new(Notify::new());
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(
                seq,
                Pending {
                    acked: Vec::new(),
                    wake: wake.clone(),
                },
            );
        }
        let message = self.message(seq, Body::Invalidate(invalidation.clone()));
        match self
            .registry
            .publish(&self.publisher, Some((self.channel.as_str(), message)))
            .await
        {
            Ok(listed) => {
                drop(last);
                bump(&self.counters.published);
                Ok((seq, wake, listed))
            }
            Err(err) => {
                self.forget_pending(seq);
                Err(err)
            }
        }
    }

    /// One message from the subscriber connection, in the order Redis sent
    /// it. Quick: invalidations go to the applier task.
    pub(super) fn on_message(
        self: &Arc<Self>,
        sequences: &mut Sequences,
        raw: &fred::types::Message,
    ) {
        bump(&self.counters.received);
        let text = raw.value.as_str();
        let Some(msg) = text.as_deref().and_then(Message::decode) else {
            if let Some(version) = text.as_deref().and_then(foreign_version) {
                bump(&self.counters.foreign);
                tracing::error!(
                    channel = %self.channel,
                    wire = version,
                    "a message in another wire version ({version}) than this build's ({}): an incompatible instance shares this channel; its invalidations do not reach this instance",
                    super::wire::WIRE_VERSION
                );
            } else {
                bump(&self.counters.malformed);
                tracing::warn!(channel = %self.channel, "ignored a malformed invalidation message");
            }
            return;
        };
        let inbox = raw.channel.as_bytes() == self.inbox.as_bytes();
        match (&msg.body, inbox) {
            (Body::Heartbeat { sent }, true) if msg.origin == self.origin => {
                bump(&self.counters.received_heartbeats);
                sequences.forget_silent();
                self.heard_itself(*sent);
            }
            (Body::Ack { origin, seq }, true) if *origin == self.origin => {
                bump(&self.counters.received_acks);
                self.acked(msg.origin, *seq);
            }
            (Body::Invalidate(_), false) => {
                bump(&self.counters.received_invalidations);
                if msg.origin == self.origin {
                    // Applied here before it was published.
                    return;
                }
                if !sequences.next(msg.origin, msg.seq) {
                    bump(&self.counters.sequence_gaps);
                    tracing::warn!(
                        channel = %self.channel,
                        origin = %format_args!("{:016x}", msg.origin),
                        seq = msg.seq,
                        "invalidation bus sequence gap; flushing in-process tiers"
                    );
                    self.spawn_resync();
                }
                if self.to_apply.try_send(msg.clone()).is_err() {
                    // The applier is far behind: a flush covers this one and
                    // every one before it, and lets us acknowledge it.
                    tracing::warn!(channel = %self.channel, "invalidation queue full; flushing in-process tiers");
                    let bus = self.clone();
                    tokio::spawn(async move {
                        if bus.resync().await.is_ok() {
                            bus.ack(msg.origin, msg.seq).await;
                        }
                    });
                }
            }
            _ => bump(&self.counters.malformed),
        }
    }

    fn spawn_resync(self: &Arc<Self>) {
        let bus = self.clone();
        tokio::spawn(async move {
            let _ = bus.resync().await;
        });
    }

    /// The applier task's step: apply one invalidation of another instance,
    /// then acknowledge it, only if it was applied (or the local tiers were
    /// flushed instead).
    pub(super) async fn apply_and_ack(&self, msg: Message) {
        let Body::Invalidate(inv) = &msg.body else {
            return;
        };
        let applied = match self.apply_locally(None, inv).await {
            Ok(()) => true,
            Err(why) => {
                bump(&self.counters.apply_failures);
                tracing::warn!(
                    channel = %self.channel,
                    origin = %format_args!("{:016x}", msg.origin),
                    seq = msg.seq,
                    reason = %why,
                    "applying a remote invalidation failed; flushing the in-process tiers instead"
                );
                match self.resync().await {
                    Ok(()) => true,
                    Err(why) => {
                        tracing::error!(
                            channel = %self.channel,
                            reason = %why,
                            "flushing the in-process tiers failed too; the invalidation is not acknowledged"
                        );
                        false
                    }
                }
            }
        };
        if applied {
            self.ack(msg.origin, msg.seq).await;
        }
    }

    /// Tells `origin` that its invalidation `seq` was applied here.
    async fn ack(&self, origin: u64, seq: u64) {
        let current = *self.last_seq.lock().await;
        let ack = self.message(current, Body::Ack { origin, seq });
        match self
            .publisher
            .publish::<i64, _, _>(self.registry.inbox(origin), ack)
            .await
        {
            Ok(_) => bump(&self.counters.acks_sent),
            Err(err) => {
                tracing::warn!(channel = %self.channel, error = %err, "publishing an invalidation ack failed")
            }
        }
    }

    /// `peer` applied this bus's invalidation `seq`.
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

    pub(super) fn forget_pending(&self, seq: u64) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(&seq);
        }
    }

    /// A heartbeat of our own, sent `sent` nanoseconds after the epoch, came
    /// back. The link's silence is counted from when it was sent, not from
    /// now: the registration it refreshed runs out counted from the refresh,
    /// and a slow trip back must not let this instance serve from its local
    /// tiers after the others have stopped waiting for it.
    ///
    /// A link that is down comes back only with a heartbeat sent within the
    /// silence limit: older ones held up on the way (a stalled connection
    /// lets them through in a burst) say nothing of the link now.
    fn heard_itself(self: &Arc<Self>, sent: u64) {
        let now = Instant::now();
        // A time after now was not sent by this process: ignored.
        let Some(sent) = self
            .epoch
            .checked_add(Duration::from_nanos(sent))
            .filter(|t| *t <= now)
        else {
            return;
        };
        let fresh = now.saturating_duration_since(sent) <= self.timing.silence_limit();
        let was = {
            let Ok(mut link) = self.link.lock() else {
                return;
            };
            link.last_echo = link.last_echo.max(sent);
            let was = link.state;
            match was {
                LinkState::Starting => self.mark_up(&mut link),
                LinkState::Up => self.look_again_by(link.last_echo),
                LinkState::Down if fresh => {
                    // From here on every refresh says "up".
                    link.state = LinkState::Recovering;
                    link.report = LinkReport::Up;
                }
                LinkState::Down | LinkState::Recovering => {}
            }
            was
        };
        match was {
            LinkState::Starting => self.announce(),
            LinkState::Down if fresh => {
                let bus = self.clone();
                tokio::spawn(async move { bus.back_up().await });
            }
            _ => {}
        }
    }

    /// The link is back ([`LinkState::Recovering`]). The registry says "up"
    /// first, then the local tiers are flushed, then the link is up: an
    /// invalidation published while the registry still said "down" (nobody
    /// waited for this instance's ack) is covered by the flush, and every
    /// one after it waits for this instance's ack. If the refresh or the
    /// flush fails, the link is down again (and flushed every interval)
    /// until the next heartbeat comes back; its registration goes on saying
    /// "up" (the others wait for it) until one of those flushes works.
    async fn back_up(self: Arc<Self>) {
        tracing::info!(channel = %self.channel, "invalidation bus link is back; flushing in-process tiers");
        let told = self.heartbeat().await;
        let flushed = told && self.resync().await.is_ok();
        let Ok(mut link) = self.link.lock() else {
            return;
        };
        if link.state != LinkState::Recovering {
            return;
        }
        if flushed {
            self.mark_up(&mut link);
        } else {
            // Down again; the registry is told so only after a flush works
            // (see `watch_link`): until then the others wait for this one.
            link.state = LinkState::Down;
            tracing::warn!(
                channel = %self.channel,
                told_the_registry = told,
                "the invalidation bus link came back, but telling the registry or flushing failed; it stays down"
            );
        }
    }

    /// The link is up (and says so from the next refresh on): reads are
    /// served until the silence limit after the last echo's send.
    fn mark_up(&self, link: &mut Link) {
        link.state = LinkState::Up;
        link.report = LinkReport::Up;
        self.look_again_by(link.last_echo);
        self.link_tx.send_replace(true);
    }

    /// The link is next looked at before a read the silence limit after
    /// `echo` (when the last heartbeat that came back was sent).
    pub(super) fn look_again_by(&self, echo: Instant) {
        let by = echo.saturating_duration_since(self.epoch) + self.timing.silence_limit();
        self.look_by.store(nanos(by), Ordering::Release);
    }

    /// Called before a read is served from the local tiers. When the link
    /// has been silent past the limit and the watchdog has not looked yet (a
    /// process that was paused, a starved runtime), it looks now and waits
    /// for the flush: the others stopped waiting for this instance once its
    /// registration ran out, so its local tiers may hold what their
    /// invalidations removed. Otherwise one clock read and one atomic load.
    pub(super) async fn look_before_read(self: &Arc<Self>) {
        if !self.watchdog {
            return;
        }
        if nanos(self.epoch.elapsed()) > self.look_by.load(Ordering::Acquire) {
            self.watch_link().await;
        }
    }

    /// Refreshes the registration now, in the background (a change of
    /// [`Link::report`](super::link::Link::report) reaches the others
    /// without waiting for the next interval).
    pub(super) fn announce(self: &Arc<Self>) {
        let bus = self.clone();
        tokio::spawn(async move {
            bus.heartbeat().await;
        });
    }

    /// One look at the link: declares it down after too long a silence, and
    /// flushes every interval while it is down (or recovering). The registry
    /// is told "down" once a flush after the link went down succeeded: from
    /// then on the others stop waiting for this instance.
    pub(super) async fn watch_link(self: &Arc<Self>) {
        let _looking = self.looking.lock().await;
        let flush = {
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
                        instance = %format_args!("{:016x}", self.origin),
                        silent_for = ?now.saturating_duration_since(link.last_echo),
                        "invalidation bus link is down (no heartbeat came back); flushing in-process tiers"
                    );
                    true
                }
                LinkState::Down | LinkState::Recovering
                    if now.saturating_duration_since(link.last_flush) >= self.timing.interval =>
                {
                    link.last_flush = now;
                    true
                }
                _ => false,
            }
        };
        if !flush || self.resync().await.is_err() {
            return;
        }
        let tell = self.link.lock().is_ok_and(|mut link| {
            let tell = link.state == LinkState::Down && link.report != LinkReport::Down;
            if tell {
                link.report = LinkReport::Down;
            }
            tell
        });
        if tell {
            // Flushed: the others may stop waiting for this one.
            self.announce();
        }
    }

    /// Waits until every instance in `listed` (live when invalidation `seq`
    /// was published) has acknowledged it or is excused, or the ack timeout
    /// (from `started`) passes.
    ///
    /// Excused: one whose record said "down" (it flushes, and says "up" only
    /// before its last flush), one whose registration ran out or was removed
    /// (it stopped, or its heartbeats stopped: it has declared its link down
    /// and is flushing), and on a standalone server one with no subscriber on its
    /// inbox (its connection is gone: it flushes when it subscribes again, or
    /// within the bound when it cannot).
    pub(super) async fn confirm(
        &self,
        seq: u64,
        wake: Arc<Notify>,
        listed: Vec<Listed>,
        started: Instant,
    ) -> Result<()> {
        struct Forget<'a>(&'a BusInner, u64);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0.forget_pending(self.1);
            }
        }
        let _forget = Forget(self, seq);
        let mut waiting: Vec<u64> = Vec::new();
        for (id, record) in listed {
            if id == self.origin {
                continue;
            }
            match record {
                Ok(r) if r.link == LinkReport::Down => self.excuse(seq, id, "its link was down"),
                _ => waiting.push(id),
            }
        }
        self.counters
            .last_peers
            .store(waiting.len() as u64, Ordering::Relaxed);
        let deadline = started + self.ack_timeout;
        let tick = self.timing.tick();
        // The first look comes early (a tenth of a tick): acks from live
        // instances come within milliseconds, and an instance that died is
        // excused then instead of one tick later. One that was excused
        // lately (a dead one stays listed until its registration runs out)
        // is looked at at once. Same rules, fresh figures: only sooner.
        let mut next_check = if self.any_suspect(&waiting) {
            Instant::now()
        } else {
            Instant::now() + tick / 10
        };
        loop {
            let acked = self
                .pending
                .lock()
                .map(|p| p.get(&seq).map(|p| p.acked.clone()).unwrap_or_default())
                .unwrap_or_default();
            waiting.retain(|id| !acked.contains(id));
            if waiting.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                bump(&self.counters.unconfirmed);
                let ids: Vec<String> = waiting.iter().map(|id| format!("{id:016x}")).collect();
                let reason = format!(
                    "instances {} did not confirm invalidation #{seq} of {:016x} within {:?}; they may still serve the old value",
                    ids.join(", "),
                    self.origin,
                    self.ack_timeout
                );
                tracing::warn!(channel = %self.channel, %reason, "invalidation not confirmed");
                return Err(Error::Unavailable {
                    tier: BUS.into(),
                    reason,
                });
            }
            if now >= next_check {
                next_check = now + tick;
                self.excuse_gone(seq, &mut waiting).await;
                continue;
            }
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep_until(next_check.min(deadline).into()) => {}
            }
        }
    }

    /// Whether any of `waiting` was excused lately (forgetting the old ones).
    fn any_suspect(&self, waiting: &[u64]) -> bool {
        let Ok(mut suspects) = self.suspects.lock() else {
            return false;
        };
        if suspects.is_empty() {
            return false;
        }
        let keep = self.timing.bound() + self.timing.bound() / 5;
        suspects.retain(|_, at| at.elapsed() < keep);
        waiting.iter().any(|id| suspects.contains_key(id))
    }

    fn excuse(&self, seq: u64, id: u64, why: &str) {
        bump(&self.counters.excused);
        tracing::info!(
            channel = %self.channel,
            instance = %format_args!("{id:016x}"),
            "invalidation #{seq} excused an instance: {why} (it flushes its in-process tiers)"
        );
    }

    /// Drops from `waiting` the instances that are excused now.
    async fn excuse_gone(&self, seq: u64, waiting: &mut Vec<u64>) {
        let status = match self.registry.status(&self.publisher, waiting).await {
            Ok(s) => s,
            Err(err) => {
                tracing::debug!(error = %err, "reading the registry failed");
                return;
            }
        };
        let subscribers: Option<Vec<i64>> = if self.clustered {
            None
        } else {
            let inboxes: Vec<String> = waiting.iter().map(|id| self.registry.inbox(*id)).collect();
            self.publisher
                .pubsub_numsub::<Vec<fred::types::Value>, _>(inboxes)
                .await
                .ok()
                .map(|flat| {
                    flat.chunks(2)
                        .map(|p| p.get(1).and_then(fred::types::Value::as_i64).unwrap_or(0))
                        .collect()
                })
        };
        let mut i = 0;
        waiting.retain(|id| {
            let n = i;
            i += 1;
            let why = match status.get(n) {
                Some(None) => Some("it left or its registration ran out"),
                Some(Some(r)) if r.link == LinkReport::Down => Some("its link went down"),
                _ => match subscribers.as_ref().and_then(|s| s.get(n)) {
                    Some(0) => Some("it has no subscriber connection"),
                    _ => None,
                },
            };
            match why {
                Some(why) => {
                    self.excuse(seq, *id, why);
                    if let Ok(mut suspects) = self.suspects.lock() {
                        suspects.insert(*id, Instant::now());
                    }
                    false
                }
                None => true,
            }
        });
    }
}

#[cfg(all(test, feature = "testing"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::RedisServer;
    use crate::InvalidationBus;

    /// An applier whose flushes wait until the test lets them go, then fail
    /// while `fail` is set.
    #[derive(Default)]
    struct HeldFlush {
        started: AtomicU64,
        go: Notify,
        fail: std::sync::atomic::AtomicBool,
    }

    impl Applier for HeldFlush {
        fn apply<'a>(
            &'a self,
            _: &'a Invalidation,
        ) -> BoxFuture<'a, std::result::Result<(), String>> {
            Box::pin(async { Ok(()) })
        }

        fn flush(&self) -> BoxFuture<'_, std::result::Result<(), String>> {
            Box::pin(async {
                self.started.fetch_add(1, Ordering::SeqCst);
                self.go.notified().await;
                if self.fail.load(Ordering::SeqCst) {
                    return Err("the test failed this flush".to_owned());
                }
                Ok(())
            })
        }
    }

    /// A bus on `server` whose heartbeat interval and timeout are both
    /// `heartbeat`.
    async fn connect(server: &RedisServer, heartbeat: Duration) -> InvalidationBus {
        InvalidationBus::builder()
            .url(server.url())
            .channel("ch")
            .heartbeat_interval(heartbeat)
            .heartbeat_timeout(heartbeat)
            .connect()
            .await
            .unwrap()
    }

    /// What this bus's registry record says of its link.
    async fn reported(bus: &BusInner) -> LinkReport {
        let status = bus
            .registry
            .status(&bus.publisher, &[bus.origin])
            .await
            .unwrap();
        status[0].as_ref().unwrap().link
    }

    /// A link that comes back tells the registry "up", flushes, and only then
    /// is up (and stops flushing). A heartbeat sent during that flush must
    /// say "up" too: it is numbered after the "up", so it is the one the
    /// others read, and they stop waiting for an instance whose record says
    /// "down". When a heartbeat's report came from the link's state, this
    /// one said "down" (the link was not up yet), and the record said so
    /// after the instance had stopped flushing: the race test with bus
    /// stalls saw another instance's invalidation return while this one
    /// still held the old value. The watchdog's look and the heartbeat are
    /// driven by hand here (the bus's own heartbeats come every 10 s).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_heartbeat_during_the_recovery_flush_says_up() {
        let server = RedisServer::start();
        let (bus, inner, held) = recovering(&server).await;
        // The next heartbeat is sent while the flush runs.
        let _ = inner.heartbeat().await;
        held.go.notify_one();
        wait_until(|| async { bus.link_is_up() }).await;
        assert_eq!(
            reported(&inner).await,
            LinkReport::Up,
            "a heartbeat sent during the recovery flush told the others the link was down"
        );
        bus.shutdown().await;
    }

    /// A bus (heartbeats every 10 s: the test drives them) with a
    /// [`HeldFlush`], whose link the watchdog has declared down (the flush
    /// let go at once), and whose heartbeat saying so came back: the
    /// registry says "up" again, and the recovery flush is held.
    async fn recovering(server: &RedisServer) -> (InvalidationBus, Arc<BusInner>, Arc<HeldFlush>) {
        let bus = connect(server, Duration::from_secs(10)).await;
        let inner = bus.inner.clone();
        let held = Arc::new(HeldFlush::default());
        inner
            .appliers
            .lock()
            .unwrap()
            .list
            .push((u64::MAX, held.clone()));
        assert_eq!(reported(&inner).await, LinkReport::Up);

        // The last heartbeat that came back is long past: the watchdog
        // declares the link down, flushes, and sends a heartbeat saying so.
        inner.link.lock().unwrap().last_echo =
            Instant::now().checked_sub(Duration::from_secs(60)).unwrap();
        held.go.notify_one();
        inner.watch_link().await;
        assert_eq!(held.started.load(Ordering::SeqCst), 1);
        assert!(!bus.link_is_up());

        // That heartbeat comes back: the link recovers. The registry is told
        // "up", then the flush begins, and is held.
        wait_until(|| async { held.started.load(Ordering::SeqCst) >= 2 }).await;
        assert_eq!(reported(&inner).await, LinkReport::Up);
        assert!(!bus.link_is_up());
        (bus, inner, held)
    }

    /// A recovery whose flush fails leaves the link down (flushed every
    /// interval, as before), not up with what the flush was to remove; and
    /// the registration does not say "down" on the strength of a flush that
    /// failed. The next heartbeat that comes back tries again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_recovery_whose_flush_fails_leaves_the_link_down() {
        let server = RedisServer::start();
        let (bus, inner, held) = recovering(&server).await;
        held.fail.store(true, Ordering::SeqCst);
        held.go.notify_one();
        wait_until(|| async { inner.link.lock().unwrap().state == LinkState::Down }).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!bus.link_is_up());
        assert_eq!(inner.link.lock().unwrap().state, LinkState::Down);
        // What the next refresh will say, and what the registry says now.
        assert_eq!(inner.link.lock().unwrap().report, LinkReport::Up);
        assert_eq!(reported(&inner).await, LinkReport::Up);

        // A heartbeat comes back, the flush works: the link is up.
        held.fail.store(false, Ordering::SeqCst);
        held.go.notify_one();
        let _ = inner.heartbeat().await;
        wait_until(|| async { bus.link_is_up() }).await;
        assert_eq!(held.started.load(Ordering::SeqCst), 3);
        bus.shutdown().await;
    }

    /// A heartbeat sent more than the silence limit ago says nothing of the
    /// link now (a stalled connection lets old ones through in a burst, the
    /// newest last): it does not bring a link that is down back up. Before,
    /// each one did, and the link, its last echo still too old, went down
    /// again at the next look: flapping, with a flush each time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_old_heartbeat_does_not_bring_a_down_link_back() {
        let server = RedisServer::start();
        let bus = connect(&server, Duration::from_millis(100)).await;
        let inner = bus.inner.clone();
        // Its own heartbeats stop coming back: the link goes down.
        bus.subscriber()
            .unsubscribe(inner.inbox.clone())
            .await
            .unwrap();
        wait_until(|| async { !bus.link_is_up() }).await;
        // The heartbeat sent when it connected comes back now.
        inner.heard_itself(0);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(inner.link.lock().unwrap().state, LinkState::Down);
        assert_eq!(bus.stats().link_downs, 1);
        // One sent just now does.
        inner.heard_itself(nanos(inner.epoch.elapsed()));
        wait_until(|| async { bus.link_is_up() }).await;
        bus.shutdown().await;
    }

    async fn wait_until<F, Fut>(cond: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond().await {
            assert!(Instant::now() < deadline, "not within 10 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
