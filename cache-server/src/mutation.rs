//! Switches that break one guarantee on purpose (feature `mutations`), so a
//! test can show that it catches the bug. Never enable the feature outside
//! tests. One function per switch; each is read where the thing it breaks is
//! built, not on every call.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    static IGNORE_STAMPS: Cell<bool> = const { Cell::new(false) };
}

/// While on, [`RedisTier`](crate::RedisTier)'s `put_fenced` and
/// `put_many_fenced` called on this thread write without comparing the
/// stamp's generations with Redis's (the fence's in-process check and the
/// horizon still apply). A per-thread switch, so that tests running beside it
/// are not affected: run the mutated test on a current-thread runtime.
///
/// ```
/// cache_server::mutation::set_ignore_stamps(true);
/// // ... fills made on this thread now ignore stamps ...
/// cache_server::mutation::set_ignore_stamps(false);
/// ```
pub fn set_ignore_stamps(on: bool) {
    IGNORE_STAMPS.with(|s| s.set(on));
}

pub(crate) fn ignore_stamps() -> bool {
    IGNORE_STAMPS.with(Cell::get)
}

static NO_HEARTBEAT_WATCHDOG: AtomicBool = AtomicBool::new(false);

/// While on, an [`InvalidationBus`](crate::InvalidationBus) connected from
/// then on never declares its link down: no flush when its own heartbeats stop
/// coming back. A global switch (the bus runs on tokio tasks), read once by
/// [`InvalidationBusBuilder::connect`](crate::InvalidationBusBuilder::connect)
/// and kept by the bus.
///
/// ```
/// cache_server::mutation::set_no_heartbeat_watchdog(true);
/// // ... connect the bus under test ...
/// cache_server::mutation::set_no_heartbeat_watchdog(false);
/// ```
pub fn set_no_heartbeat_watchdog(on: bool) {
    NO_HEARTBEAT_WATCHDOG.store(on, Ordering::SeqCst);
}

pub(crate) fn no_heartbeat_watchdog() -> bool {
    NO_HEARTBEAT_WATCHDOG.load(Ordering::SeqCst)
}

static IGNORE_CONNECTION_EVENTS: AtomicBool = AtomicBool::new(false);

/// While on, a [`RedisTier`](crate::RedisTier) built from then on does not
/// listen to its connections' errors and reconnects: only its periodic look
/// and, on a cluster, the routing check of every answer can notice a
/// failover. A global switch, read once when the tier is built.
///
/// ```
/// cache_server::mutation::set_ignore_connection_events(true);
/// // ... build the tier under test ...
/// cache_server::mutation::set_ignore_connection_events(false);
/// ```
pub fn set_ignore_connection_events(on: bool) {
    IGNORE_CONNECTION_EVENTS.store(on, Ordering::SeqCst);
}

pub(crate) fn ignore_connection_events() -> bool {
    IGNORE_CONNECTION_EVENTS.load(Ordering::SeqCst)
}
