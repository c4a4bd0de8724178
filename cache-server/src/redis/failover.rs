//! Surviving a failover: wait for replicas, and notice a new primary.
//!
//! Redis replicates asynchronously: a removal the primary has done can be
//! missing on the replica that a failover promotes. Two defences, both on by
//! configuration:
//!
//! - **`WAIT`** ([`Replication`]): after every removal, write-through,
//!   scope bump and `UNLINK`, the tier waits until that many replicas have it
//!   (`WAIT <replicas> <timeout>` on the connection that wrote). Fewer in
//!   time is an error naming the tier, which the chain reports as
//!   [`Error::Incomplete`](cache_core::Error::Incomplete): never `Ok`.
//! - **The primary's identity** ([`Guard`]): the tier knows the replication
//!   id of the primary it talks to (single node, Sentinel) or, on a cluster,
//!   which node serves which slots (the routing each connection has after
//!   `CLUSTER SLOTS`). Every connection error or reconnect distrusts Redis at
//!   once, and so does, on a cluster, a read answered under another routing
//!   than the known one (a client follows `MOVED` to a promoted replica by
//!   syncing its routing, with no error or reconnect); until a check has seen the same primary again, reads are misses
//!   and fills are refused. A check that sees another primary is a
//!   **failover**: a gap in the shared tier's history. It voids everything
//!   written before it, as a gap on the bus flushes the in-process tiers: the
//!   scope generations are bumped (every stamp handed out before is refused),
//!   the namespace's values are unlinked, and [`RedisTier::failovers`]
//!   (super::RedisTier::failovers) ticks, so that in-process tiers fed from
//!   Redis can be flushed ([`SyncedCache::flush_on_failover`]
//!   (crate::SyncedCache::flush_on_failover)).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::prelude::Value;
use fred::types::CustomCommand;
use tokio::sync::{watch, Notify};

/// How many replicas a write must reach before it counts as done.
///
/// ```
/// use std::time::Duration;
/// let r = cache_server::Replication::new(1, Duration::from_millis(200));
/// assert_eq!(r.replicas(), 1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replication {
    replicas: u32,
    timeout: Duration,
}

impl Replication {
    /// Wait for nothing: writes count as done when the primary has them (a
    /// failover may then lose them; the failover check still voids what was
    /// written before it).
    pub const NONE: Replication = Replication {
        replicas: 0,
        timeout: Duration::ZERO,
    };

    /// Wait until `replicas` replicas have each write, at most `timeout`
    /// (at least 1 ms; keep it below the command timeout).
    ///
    /// ```
    /// use std::time::Duration;
    /// let r = cache_server::Replication::new(2, Duration::from_millis(100));
    /// assert_eq!(r.timeout(), Duration::from_millis(100));
    /// ```
    pub fn new(replicas: u32, timeout: Duration) -> Self {
        Replication {
            replicas,
            timeout: timeout.max(Duration::from_millis(1)),
        }
    }

    /// The replicas a write must reach.
    ///
    /// ```
    /// assert_eq!(cache_server::Replication::NONE.replicas(), 0);
    /// ```
    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// How long a write waits for them.
    ///
    /// ```
    /// assert_eq!(cache_server::Replication::NONE.timeout(), std::time::Duration::ZERO);
    /// ```
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `WAIT` on `client` for the writes it made, routed by `slot` on a
    /// cluster. `Err` with the reason when fewer replicas confirmed in time.
    pub(super) async fn wait(
        &self,
        client: &Client,
        slot: Option<u16>,
    ) -> Result<(), ReplicationError> {
        if self.replicas == 0 {
            return Ok(());
        }
        let ms = i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX);
        let reached: i64 = client
            .custom(
                CustomCommand::new_static("WAIT", slot, false),
                vec![Value::from(i64::from(self.replicas)), Value::from(ms)],
            )
            .await
            .map_err(ReplicationError::Redis)?;
        if reached < i64::from(self.replicas) {
            return Err(ReplicationError::Short {
                reached,
                wanted: self.replicas,
                timeout: self.timeout,
            });
        }
        Ok(())
    }
}

/// Why a write did not reach its replicas.
#[derive(Debug)]
pub(super) enum ReplicationError {
    Redis(fred::error::Error),
    Short {
        reached: i64,
        wanted: u32,
        timeout: Duration,
    },
}

impl std::fmt::Display for ReplicationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplicationError::Redis(e) => write!(f, "WAIT failed: {e}"),
            ReplicationError::Short {
                reached,
                wanted,
                timeout,
            } => write!(
                f,
                "the write reached {reached} of {wanted} replicas within {timeout:?}: \
                 a failover now could bring the old value back; retry"
            ),
        }
    }
}

impl std::error::Error for ReplicationError {}

/// Whether the tier trusts what Redis answers, and which primary it knows.
#[derive(Debug)]
pub(super) struct Guard {
    /// Off: every answer is trusted (`failover_check(None)`, or a user that
    /// may not run the check).
    enabled: AtomicBool,
    trusted: AtomicBool,
    /// Bumped whenever the tier distrusts Redis: a read that started under
    /// another number is not trusted.
    epoch: AtomicU64,
    /// The primary's replication id (single node) or the cluster's current
    /// epoch, once seen.
    known: Mutex<Option<String>>,
    failovers: AtomicU64,
    pub(super) failover_tx: watch::Sender<u64>,
    /// Wakes the checker.
    pub(super) wake: Notify,
    /// Reads treated as misses, fills refused, while distrusted.
    pub(super) distrusted: AtomicU64,
    /// On a cluster, the fingerprint of the routing last seen by a check
    /// (0: none yet).
    routing: AtomicU64,
}

impl Guard {
    pub(super) fn new(enabled: bool) -> Self {
        Guard {
            enabled: AtomicBool::new(enabled),
            // Until the first check: a read cannot be older than the
            // primary the first check sees.
            trusted: AtomicBool::new(!enabled),
            epoch: AtomicU64::new(0),
            known: Mutex::new(None),
            failovers: AtomicU64::new(0),
            failover_tx: watch::Sender::new(0),
            wake: Notify::new(),
            distrusted: AtomicU64::new(0),
            routing: AtomicU64::new(0),
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Before a read: the epoch to check it against afterwards, or `None`
    /// when Redis is not trusted now.
    pub(super) fn begin(&self) -> Option<u64> {
        let epoch = self.epoch.load(Ordering::Acquire);
        if self.trusted.load(Ordering::Acquire) {
            Some(epoch)
        } else {
            self.distrusted.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// After a read begun at `epoch`: whether its answer may be used.
    pub(super) fn still(&self, epoch: Option<u64>) -> bool {
        let ok = epoch.is_some_and(|e| {
            self.trusted.load(Ordering::Acquire) && self.epoch.load(Ordering::Acquire) == e
        });
        if !ok && epoch.is_some() {
            self.distrusted.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Whether Redis is trusted now (no counting).
    pub(super) fn is_trusted(&self) -> bool {
        self.trusted.load(Ordering::Acquire)
    }

    /// Failovers voided so far.
    pub(super) fn failover_count(&self) -> u64 {
        *self.failover_tx.borrow()
    }

    /// Whether `fingerprint` is the routing the last check saw.
    pub(super) fn routing_is(&self, fingerprint: u64) -> bool {
        self.routing.load(Ordering::Acquire) == fingerprint
    }

    /// A connection failed or was replaced: trust nothing until checked.
    pub(super) fn distrust(&self) {
        if !self.enabled() {
            return;
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.trusted.store(false, Ordering::Release);
        self.wake.notify_one();
    }

    fn trust(&self) {
        self.trusted.store(true, Ordering::Release);
    }

    /// The outcome of one look at the primary (`id`: replication id or
    /// cluster epoch of every connection, `None` if they disagree or one is
    /// not a primary). `Seen::Failover` when it is not the known one.
    pub(super) fn saw(&self, id: Option<String>) -> Seen {
        let Some(id) = id else {
            self.distrust();
            return Seen::Unsure;
        };
        let Ok(mut known) = self.known.lock() else {
            return Seen::Unsure;
        };
        // A cluster's identity is its routing's fingerprint.
        if let Ok(fingerprint) = u64::from_str_radix(&id, 16) {
            self.routing.store(fingerprint, Ordering::Release);
        }
        match known.as_deref() {
            None => {
                *known = Some(id);
                self.trust();
                Seen::Same
            }
            Some(k) if k == id => {
                self.trust();
                Seen::Same
            }
            Some(_) => {
                *known = Some(id);
                self.epoch.fetch_add(1, Ordering::AcqRel);
                self.trusted.store(false, Ordering::Release);
                Seen::Failover
            }
        }
    }

    /// The check cannot work (the user may not run `INFO`): trust every
    /// answer from now on, as with the check switched off.
    pub(super) fn give_up(&self) {
        self.enabled.store(false, Ordering::Release);
        self.trust();
    }

    /// Voiding after a failover failed: forget the new primary, so the next
    /// look sees a failover again and voids again.
    pub(super) fn forget_primary(&self) {
        if let Ok(mut known) = self.known.lock() {
            *known = Some(String::new());
        }
    }

    /// The failover's void is done: trust again, and tell the listeners.
    pub(super) fn voided(&self) {
        let n = self.failovers.fetch_add(1, Ordering::Relaxed) + 1;
        self.trust();
        self.failover_tx.send_replace(n);
    }
}

/// What a check saw.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Seen {
    Same,
    Unsure,
    Failover,
}

/// `master_replid` from `INFO replication` if the server is a primary.
pub(super) fn primary_replid(info: &str) -> Option<String> {
    let mut role = None;
    let mut replid = None;
    for line in info.lines() {
        if let Some(r) = line.strip_prefix("role:") {
            role = Some(r.trim());
        } else if let Some(r) = line.strip_prefix("master_replid:") {
            replid = Some(r.trim().to_owned());
        }
    }
    (role == Some("master")).then_some(replid).flatten()
}

/// The fingerprint of the routing `client` has now: which node (by id and
/// address) serves which slots. `None` before it has one.
pub(super) fn routing_of(client: &Client) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let routing = fred::interfaces::ClusterInterface::cached_cluster_state(client)?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for range in routing.slots() {
        (range.start, range.end, &*range.id).hash(&mut hasher);
        (&*range.primary.host, range.primary.port).hash(&mut hasher);
    }
    // 0 means "none seen" in the guard.
    Some(hasher.finish().max(1))
}

/// What one look at the pool found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Look {
    /// Every connection talks to the primary with this id (replication id,
    /// or a cluster's routing fingerprint).
    Primary(String),
    /// Unreachable, not a primary, or the connections disagree.
    Unsure,
    /// Redis refused the command (an ACL user without `INFO` / `CLUSTER
    /// SLOTS`): the check cannot work for this user.
    Denied(String),
}

/// One look at what each connected client of the pool talks to (one that is
/// not connected cannot answer a read; when it connects, its reconnect
/// distrusts Redis again). On a cluster, each client syncs its routing
/// (`CLUSTER SLOTS`) and the look is that routing's fingerprint, in hex.
pub(super) async fn look(clients: &[Client], clustered: bool) -> Look {
    let mut seen: Option<String> = None;
    for client in clients.iter().filter(|c| c.is_connected()) {
        let id = if clustered {
            match fred::interfaces::ClusterInterface::sync_cluster(client).await {
                Ok(()) => routing_of(client).map(|f| format!("{f:016x}")),
                Err(e) if e.details().starts_with("NOPERM") => return Look::Denied(e.to_string()),
                Err(_) => return Look::Unsure,
            }
        } else {
            let info: String = match client
                .custom(
                    CustomCommand::new_static("INFO", None, false),
                    vec![Value::from("replication")],
                )
                .await
            {
                Ok(info) => info,
                Err(e) if e.details().starts_with("NOPERM") => return Look::Denied(e.to_string()),
                Err(_) => return Look::Unsure,
            };
            primary_replid(&info)
        };
        let Some(id) = id else {
            return Look::Unsure;
        };
        match &seen {
            None => seen = Some(id),
            Some(s) if *s == id => {}
            Some(_) => return Look::Unsure,
        }
    }
    seen.map_or(Look::Unsure, Look::Primary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_is_read_for_the_primary_only() {
        let primary = "# Replication\r\nrole:master\r\nconnected_slaves:1\r\nmaster_replid:abc123\r\nmaster_replid2:000\r\n";
        assert_eq!(primary_replid(primary), Some("abc123".into()));
        let replica = "# Replication\r\nrole:slave\r\nmaster_replid:abc123\r\n";
        assert_eq!(primary_replid(replica), None);
        assert_eq!(primary_replid("garbage"), None);
    }

    #[test]
    fn a_new_primary_is_a_failover_and_reads_begun_before_it_are_not_trusted() {
        let g = Guard::new(true);
        assert_eq!(g.begin(), None, "not trusted before the first check");
        assert_eq!(g.saw(Some("a".into())), Seen::Same);
        let e = g.begin();
        assert!(e.is_some());
        assert!(g.still(e));
        g.distrust();
        assert!(!g.still(e), "a read across a reconnect is not trusted");
        assert_eq!(g.begin(), None);
        assert_eq!(g.saw(Some("a".into())), Seen::Same);
        let e = g.begin();
        assert_eq!(g.saw(Some("b".into())), Seen::Failover);
        assert!(!g.still(e));
        assert_eq!(g.begin(), None, "distrusted until voided");
        g.voided();
        assert_eq!(*g.failover_tx.borrow(), 1);
        assert!(g.begin().is_some());
        assert_eq!(g.saw(None), Seen::Unsure);
        assert_eq!(g.begin(), None);
        let off = Guard::new(false);
        let e = off.begin();
        off.distrust();
        assert!(off.still(e), "switched off: everything is trusted");
    }
}
