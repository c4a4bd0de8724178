//! Watching which primary the pool talks to (see [`super::failover`]): the
//! checker task, one look, and loading the scripts after it.

use std::sync::Arc;
use std::time::Duration;

use cache_core::Operation;

use super::commands::Wait;
use fred::interfaces::{ClientLike, EventInterface};
use fred::prelude::{LuaInterface, Value};

pub(super) use super::codec::Codec;
use super::failover::{self, Seen};

use super::{scripts, Inner, RedisTier};

impl<V, C> RedisTier<V, C>
where
    V: Send + Sync + 'static,
    C: Codec<V>,
{
    /// Starts watching which primary the pool talks to: every connection
    /// error or reconnect distrusts Redis at once and wakes the checker,
    /// which also looks every [`RedisTierBuilder::failover_check`]. Unless
    /// `lazy`, the first look happens here, so the tier starts trusted.
    pub(super) async fn watch_primary(&self, lazy: bool) {
        let inner = &self.inner;
        if !inner.guard.enabled() {
            return;
        }
        let mut tasks = Vec::new();
        #[cfg(feature = "mutations")]
        let clients = if crate::mutation::ignore_connection_events() {
            &[][..]
        } else {
            inner.pool.clients()
        };
        #[cfg(not(feature = "mutations"))]
        let clients = inner.pool.clients();
        for client in clients {
            let mut rx = client.error_rx();
            let weak = Arc::downgrade(inner);
            tasks.push(tokio::spawn(async move {
                loop {
                    let event = rx.recv().await;
                    let Some(inner) = weak.upgrade() else { return };
                    match event {
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            inner.guard.distrust();
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            }));
            let mut rx = client.reconnect_rx();
            let weak = Arc::downgrade(inner);
            tasks.push(tokio::spawn(async move {
                while rx.recv().await.is_ok() {
                    let Some(inner) = weak.upgrade() else { return };
                    inner.guard.distrust();
                }
            }));
        }
        if !lazy {
            inner.check_primary().await;
            // Loaded before the tier is handed out: its first pipelined
            // fills meet no NOSCRIPT.
            inner.load_scripts().await;
        }
        let weak = Arc::downgrade(inner);
        tasks.push(tokio::spawn(async move {
            let mut soon = false;
            loop {
                let (every, wake) = {
                    let Some(inner) = weak.upgrade() else { return };
                    (inner.check_every, inner.clone())
                };
                let wait = if soon {
                    Duration::from_millis(20)
                } else {
                    every
                };
                tokio::select! {
                    () = wake.guard.wake.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                }
                drop(wake);
                let Some(inner) = weak.upgrade() else { return };
                soon = !inner.check_primary().await;
            }
        }));
        if let Ok(mut t) = inner.tasks.lock() {
            t.extend(tasks);
        }
    }
}

impl<C> Inner<C> {
    /// One look at the primary; `false` if it must be looked at again soon
    /// (unreachable, not yet a primary, or a void that failed).
    pub(super) async fn check_primary(&self) -> bool {
        let _one = self.checking.lock().await;
        // Scripts are loaded after a connection event, not on every tick.
        let after_event = !self.guard.is_trusted();
        let seen = match failover::look(self.pool.clients(), self.clustered).await {
            failover::Look::Primary(id) => Some(id),
            failover::Look::Unsure => None,
            failover::Look::Denied(why) => {
                tracing::warn!(
                    tier = %self.name,
                    reason = %why,
                    "the failover check needs INFO (CLUSTER INFO on a cluster), which this Redis user may not run: it is off for this tier"
                );
                self.guard.give_up();
                self.load_scripts().await;
                return true;
            }
        };
        match self.guard.saw(seen) {
            Seen::Same => {
                if after_event {
                    self.load_scripts_later();
                }
                true
            }
            Seen::Unsure => false,
            Seen::Failover => {
                tracing::warn!(
                    tier = %self.name,
                    namespace = %self.namespace,
                    "Redis failed over to another primary: voiding what it holds (a removal may have been lost)"
                );
                self.load_scripts().await;
                // On the primary only: waiting for replicas here would keep
                // the tier distrusted (every read a miss) for as long as the
                // new primary has none, as after the old one was killed. A
                // later failover to a replica without the void is itself a
                // failover, seen by this look, and voided again.
                let voided = match self
                    .bump_scopes("", Operation::Clear, Wait::PrimaryOnly)
                    .await
                {
                    Ok(()) => {
                        let pattern = self.layout.pattern(&self.namespace, "");
                        self.unlink_matching(pattern, Operation::Clear, Wait::PrimaryOnly)
                            .await
                    }
                    Err(e) => Err(e),
                };
                match voided {
                    Ok(()) => {
                        self.guard.voided();
                        tracing::warn!(tier = %self.name, "voided after the failover; trusted again");
                        true
                    }
                    Err(err) => {
                        tracing::warn!(tier = %self.name, error = %err, "voiding after a failover failed; retrying");
                        // Look again: the next look sees the same new
                        // primary, so keep it distrusted until voided.
                        self.guard.forget_primary();
                        false
                    }
                }
            }
        }
    }

    /// Whether the answer of a read begun under `epoch` (with `failovers`
    /// failovers voided then) may be used. When a connection event came in
    /// during the read, the primary is looked at again: if every connected
    /// client still talks to the known primary and no failover was voided
    /// meanwhile, the answer came from that primary too.
    ///
    /// On a cluster, an answer is also checked against the routing: a client
    /// that met `MOVED` (a replica took over the slot) has synced another
    /// routing before it sent the read again, with no connection event. An
    /// answer under a routing the last check did not see distrusts Redis and
    /// waits for a look, which finds the failover and voids it.
    pub(super) async fn answer_trusted(&self, epoch: Option<u64>, failovers: u64) -> bool {
        if self.guard.still(epoch) {
            if !self.clustered || self.routing_unchanged() {
                return true;
            }
            self.guard.distrust();
        }
        if epoch.is_none() {
            return false;
        }
        match tokio::time::timeout(self.command_timeout, self.checking.lock()).await {
            Ok(looked) => drop(looked),
            Err(_) => return false,
        }
        if !self.guard.is_trusted() {
            self.check_primary().await;
        }
        self.guard.is_trusted() && self.guard.failover_count() == failovers
    }

    /// Whether every connected client routes as the last check saw.
    fn routing_unchanged(&self) -> bool {
        self.pool
            .clients()
            .iter()
            .filter(|c| c.is_connected())
            .all(|c| failover::routing_of(c).is_some_and(|f| self.guard.routing_is(f)))
    }

    /// The epoch a read starts under, or `None` when Redis is not trusted:
    /// a read that finds it distrusted looks at the primary itself first
    /// (one look at a time), so a tier that just connected, or whose
    /// connection was just replaced, answers at once when nothing changed.
    pub(super) async fn trusted_epoch(&self) -> Option<u64> {
        if let Some(epoch) = self.guard.begin() {
            return Some(epoch);
        }
        // A look already under way: wait for it, at most one command
        // timeout (Redis may be down), then look again if still untrusted.
        match tokio::time::timeout(self.command_timeout, self.checking.lock()).await {
            Ok(looked) => drop(looked),
            Err(_) => return None,
        }
        if let Some(epoch) = self.guard.begin() {
            return Some(epoch);
        }
        self.check_primary().await;
        self.guard.begin()
    }

    /// Loads every script into every connection's server, so the first
    /// pipelined fills after a start or a failover do not meet `NOSCRIPT`.
    pub(super) async fn load_scripts(&self) {
        load_scripts_on(self.pool.clone(), self.clustered, self.name.to_string()).await;
    }

    /// [`Inner::load_scripts`] in the background, so a look does not hold
    /// the readers that wait for it (a fill that still meets `NOSCRIPT`
    /// sends the script again anyway).
    fn load_scripts_later(&self) {
        tokio::spawn(load_scripts_on(
            self.pool.clone(),
            self.clustered,
            self.name.to_string(),
        ));
    }
}

async fn load_scripts_on(pool: fred::prelude::Pool, clustered: bool, name: String) {
    let bodies = [
        scripts::FILL.body,
        scripts::REMOVE.body,
        scripts::WRITE.body,
        scripts::BUMP_SCOPE.body,
        scripts::DELETE_IF_UNCHANGED.body,
    ];
    for client in pool.clients() {
        for body in bodies {
            let loaded: std::result::Result<Value, _> = if clustered {
                client.script_load_cluster(body).await
            } else {
                client.script_load(body).await
            };
            if let Err(err) = loaded {
                tracing::debug!(tier = %name, error = %err, "loading a script failed");
            }
        }
    }
}
