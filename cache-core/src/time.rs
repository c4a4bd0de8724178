//! Wall-clock time for expiry: [`Timestamp`], the [`Clock`] trait, [`SystemClock`]
//! and the [`ManualClock`] tests use to jump a day without sleeping.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::{MaybeSend, MaybeSync};

/// A point in wall-clock time, in whole milliseconds since the Unix epoch.
///
/// Expiry is absolute so that an entry keeps the same deadline however many tiers
/// it travels through. Millisecond precision matches what stores keep (Redis
/// `PXAT`, `Date.now()` in the browser).
///
/// ```
/// use std::time::Duration;
/// use cache_core::Timestamp;
///
/// let t = Timestamp::from_unix_millis(1_000);
/// assert_eq!(t.saturating_add(Duration::from_secs(1)).as_unix_millis(), 2_000);
/// assert_eq!(t.saturating_add(Duration::from_secs(1)).duration_since(t), Duration::from_secs(1));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(transparent))]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const UNIX_EPOCH: Timestamp = Timestamp(0);
    /// The latest representable instant; "never expires".
    pub const MAX: Timestamp = Timestamp(u64::MAX);

    /// A timestamp `millis` milliseconds after the Unix epoch.
    pub const fn from_unix_millis(millis: u64) -> Self {
        Timestamp(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_unix_millis(self) -> u64 {
        self.0
    }

    /// Converts a [`std::time::SystemTime`]-like value (also `web_time::SystemTime`).
    /// Times before the epoch clamp to the epoch.
    #[inline]
    pub fn from_system_time(time: web_time::SystemTime) -> Self {
        let millis = time
            .duration_since(web_time::UNIX_EPOCH)
            .map(|d| {
                d.as_secs()
                    .saturating_mul(1_000)
                    .saturating_add(u64::from(d.subsec_millis()))
            })
            .unwrap_or(0);
        Timestamp(millis)
    }

    /// This instant plus `d`, clamped at [`Timestamp::MAX`].
    pub fn saturating_add(self, d: Duration) -> Self {
        let add = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(add))
    }

    /// This instant minus `d`, clamped at the epoch.
    pub fn saturating_sub(self, d: Duration) -> Self {
        let sub = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_sub(sub))
    }

    /// Time from `earlier` to `self`; zero if `earlier` is later.
    pub fn duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({}ms)", self.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms since epoch", self.0)
    }
}

/// A source of wall-clock time. Injected everywhere expiry is decided, so tests can
/// move time by hand.
///
/// ```
/// use std::time::Duration;
/// use cache_core::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let before = clock.now();
/// clock.advance(Duration::from_secs(86_400));
/// assert_eq!(clock.now().duration_since(before), Duration::from_secs(86_400));
/// ```
pub trait Clock: fmt::Debug + MaybeSend + MaybeSync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}

/// The real wall clock. Works on wasm32 too (`Date.now()` through `web-time`), where
/// `std::time::SystemTime::now()` and `Instant::now()` panic.
///
/// Every cache read checks expiry against the clock, so it sits on the hot path.
/// On native targets it reads the system wall clock at most every 250 ms and
/// extrapolates in between with the kernel's coarse monotonic clock
/// (`CLOCK_MONOTONIC_COARSE`, read from the vDSO: a few nanoseconds, no
/// syscall, no timestamp-counter read). That clock advances once per scheduler
/// tick, so the time reported is rounded **up**: never behind the system wall
/// clock and at most 20 ms ahead of it. An entry is therefore never served after
/// its expiry, and may be dropped up to 20 ms before it. Steps of the system
/// clock (an NTP correction) show up within 250 ms.
///
/// ```
/// use cache_core::{Clock, SystemClock, Timestamp};
/// assert!(SystemClock.now() > Timestamp::UNIX_EPOCH);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Timestamp {
        #[cfg(not(target_family = "wasm"))]
        {
            Timestamp(wall::now_ms())
        }
        #[cfg(target_family = "wasm")]
        {
            Timestamp::from_system_time(web_time::SystemTime::now())
        }
    }
}

#[cfg(not(target_family = "wasm"))]
mod wall {
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

    use super::Timestamp;

    /// How long the extrapolation runs before the wall clock is read again.
    const RESYNC_MS: u64 = 250;

    /// The most the kernel's coarse monotonic clock can lag behind the true
    /// time: one scheduler tick, 1/HZ, and HZ is at least 100 on Linux.
    pub(super) const COARSE_LAG_MS: u64 = 10;

    /// Wall-clock ms minus coarse monotonic ms at the last sync, plus
    /// `COARSE_LAG_MS`; `i64::MIN` before one.
    static OFFSET_MS: AtomicI64 = AtomicI64::new(i64::MIN);
    /// Coarse monotonic ms of the last sync.
    static SYNCED_AT: AtomicU64 = AtomicU64::new(0);

    /// The kernel's coarse monotonic clock (`CLOCK_MONOTONIC_COARSE` on Linux,
    /// read from the vDSO: no syscall, no timestamp-counter read), in ms. It
    /// advances once per tick and lags the true time by less than a tick.
    #[inline]
    fn coarse_ms() -> u64 {
        // On Linux, straight from the vDSO through rustix (inlined, no libc
        // trampoline): perf showed coarsetime's out-of-line wrapper and
        // glibc's `clock_gettime` stub costing about as much as the read.
        #[cfg(target_os = "linux")]
        {
            let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
            (t.tv_sec as u64)
                .wrapping_mul(1_000)
                .wrapping_add(t.tv_nsec as u64 / 1_000_000)
        }
        #[cfg(not(target_os = "linux"))]
        {
            // coarsetime's ticks are seconds in the high 32 bits, 2^-32 s below.
            let ticks = coarsetime::Instant::now_without_cache_update().as_ticks();
            ((u128::from(ticks) * 1_000) >> 32) as u64
        }
    }

    /// The wall clock in ms, never behind the true time and at most
    /// `2 * COARSE_LAG_MS` ahead of it (so an entry is never served after it
    /// expired; it may be dropped up to 20 ms early).
    ///
    /// With `lag(t)` the coarse clock's lag at `t` (in `[0, tick)`): at the last
    /// sync `t0`, `OFFSET = wall(t0) - coarse(t0) + COARSE_LAG`, so now
    /// `coarse(t) + OFFSET = wall(t) + lag(t0) - lag(t) + COARSE_LAG`, within
    /// `[wall(t), wall(t) + 2 * COARSE_LAG)`.
    #[inline]
    pub(super) fn now_ms() -> u64 {
        let mono = coarse_ms();
        let offset = OFFSET_MS.load(Ordering::Relaxed);
        if offset == i64::MIN || mono.saturating_sub(SYNCED_AT.load(Ordering::Relaxed)) >= RESYNC_MS
        {
            return resync(mono);
        }
        mono.saturating_add_signed(offset)
    }

    #[cold]
    fn resync(mono: u64) -> u64 {
        let wall = Timestamp::from_system_time(web_time::SystemTime::now()).0;
        let wall = wall.saturating_add(COARSE_LAG_MS);
        // Races between threads are benign: each stores a valid pair.
        let offset = i64::try_from(wall).unwrap_or(i64::MAX) - i64::try_from(mono).unwrap_or(0);
        OFFSET_MS.store(offset, Ordering::Relaxed);
        SYNCED_AT.store(mono, Ordering::Relaxed);
        wall
    }

    #[cfg(test)]
    #[allow(clippy::unwrap_used)]
    mod tests {
        use super::*;
        use std::time::Duration;

        #[test]
        fn follows_the_system_wall_clock() {
            let system = || Timestamp::from_system_time(web_time::SystemTime::now()).0;
            for _ in 0..50 {
                // Bracketed by two system reads, so a preemption between the reads
                // widens the bracket instead of failing the test. The 2 ms slack is
                // millisecond truncation on both sides of the offset.
                let before = system();
                let fast = now_ms();
                let after = system();
                // Never behind (the 1 ms is the truncation of both reads to
                // whole ms), at most two coarse ticks ahead.
                assert!(
                    before.saturating_sub(1) <= fast && fast <= after + 2 * COARSE_LAG_MS + 1,
                    "fast {fast} outside [{before}, {after} + {}]",
                    2 * COARSE_LAG_MS
                );
                std::thread::sleep(Duration::from_millis(7));
            }
        }
    }
}

/// A clock that only moves when told to. Clones share the same time.
///
/// Starts at a fixed, realistic instant (2026-01-01T00:00:00Z) rather than the
/// epoch, so code that subtracts durations from "now" behaves as in production.
///
/// ```
/// use std::time::Duration;
/// use cache_core::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let shared = clock.clone();
/// clock.advance(Duration::from_secs(60));
/// assert_eq!(shared.now(), clock.now());
/// ```
#[derive(Clone, Debug)]
pub struct ManualClock {
    millis: Arc<AtomicU64>,
}

impl ManualClock {
    /// The instant a new `ManualClock` starts at: 2026-01-01T00:00:00Z.
    pub const START: Timestamp = Timestamp(1_767_225_600_000);

    /// A clock standing at [`ManualClock::START`].
    pub fn new() -> Self {
        Self::starting_at(Self::START)
    }

    /// A clock standing at `start`.
    pub fn starting_at(start: Timestamp) -> Self {
        ManualClock {
            millis: Arc::new(AtomicU64::new(start.0)),
        }
    }

    /// Moves time forward by `d`.
    pub fn advance(&self, d: Duration) {
        let add = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        // fetch_update never fails with a closure that always returns Some.
        let _ = self
            .millis
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |m| {
                Some(m.saturating_add(add))
            });
    }

    /// Sets the time; it may move backwards, as real wall clocks sometimes do.
    pub fn set(&self, to: Timestamp) {
        self.millis.store(to.0, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.millis.load(Ordering::SeqCst))
    }
}
