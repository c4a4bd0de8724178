//! [`CoarseClock`]: a wall clock cheap enough to read on every event.

use cache_core::{Clock, SystemClock, Timestamp};

/// A wall clock with a few milliseconds' resolution that costs a fraction of
/// [`SystemClock`] to read: the monitor's default, since it reads the clock once
/// per event only to find the window bucket.
///
/// On native targets it is [`SystemClock`] read once at construction plus a
/// coarse monotonic clock (`CLOCK_MONOTONIC_COARSE` on Linux, through the
/// `coarsetime` crate): it never goes backwards, and does not follow later
/// adjustments of the system clock. On wasm32 it is [`SystemClock`]
/// (`Date.now()`).
///
/// ```
/// use cache_core::{Clock, SystemClock};
/// use cache_monitor::CoarseClock;
///
/// let coarse = CoarseClock::new();
/// let (a, b) = (coarse.now().as_unix_millis(), SystemClock.now().as_unix_millis());
/// assert!(a.abs_diff(b) < 1_000);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct CoarseClock {
    #[cfg(not(target_family = "wasm"))]
    anchor_ms: u64,
    #[cfg(not(target_family = "wasm"))]
    anchor: coarsetime::Instant,
}

impl CoarseClock {
    /// A clock starting from the system clock's current time.
    pub fn new() -> Self {
        #[cfg(not(target_family = "wasm"))]
        {
            CoarseClock {
                anchor: coarsetime::Instant::now_without_cache_update(),
                anchor_ms: SystemClock.now().as_unix_millis(),
            }
        }
        #[cfg(target_family = "wasm")]
        {
            CoarseClock {}
        }
    }
}

impl Default for CoarseClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for CoarseClock {
    #[inline]
    fn now(&self) -> Timestamp {
        #[cfg(not(target_family = "wasm"))]
        {
            // `now_without_cache_update`: the cached variant writes a global
            // atomic, which threads would fight over.
            let elapsed =
                coarsetime::Instant::now_without_cache_update().duration_since(self.anchor);
            Timestamp::from_unix_millis(self.anchor_ms.saturating_add(elapsed.as_millis()))
        }
        #[cfg(target_family = "wasm")]
        {
            SystemClock.now()
        }
    }
}
