//! Switches that break one guarantee on purpose (feature `mutations`), so a
//! test can show that it catches the bug. Never enable the feature outside
//! tests. One function per switch; each is read where the thing it breaks is
//! built, not on every call.

use std::sync::atomic::{AtomicBool, Ordering};

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
