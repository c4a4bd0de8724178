//! A per-tier circuit breaker driven by the chain's clock.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::{Clock, Timestamp};

/// Opens after `threshold` consecutive failures and keeps the tier out of reads
/// and backfills for `cool_down`; then lets one probe through (half-open): a
/// success closes it, a failure opens it again.
#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cool_down_ms: u64,
    failures: AtomicU32,
    /// 0 when closed; otherwise the instant (ms) until which the tier is skipped.
    open_until: AtomicU64,
}

impl Breaker {
    pub(crate) fn new(config: Option<(u32, Duration)>) -> Self {
        let (threshold, cool_down) = config.unwrap_or((0, Duration::ZERO));
        Breaker {
            threshold,
            cool_down_ms: u64::try_from(cool_down.as_millis()).unwrap_or(u64::MAX),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
        }
    }

    /// Whether the tier may be called now. Closed breakers cost one atomic load.
    #[inline]
    pub(crate) fn allows(&self, clock: &dyn Clock) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = clock.now().as_unix_millis();
        if now < until {
            return false;
        }
        // Half-open: exactly one caller wins the probe; the rest stay out for
        // another cool-down unless the probe succeeds first.
        self.open_until
            .compare_exchange(
                until,
                now.saturating_add(self.cool_down_ms),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Closed: no failure streak has opened it (no cool-down, no probe pending).
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.open_until.load(Ordering::Acquire) == 0
    }

    #[inline]
    pub(crate) fn success(&self) {
        // Loads first so the common (healthy) path never writes the shared line.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.open_until.load(Ordering::Relaxed) != 0 {
            self.open_until.store(0, Ordering::Release);
        }
    }

    pub(crate) fn failure(&self, now: Timestamp) {
        if self.threshold == 0 {
            return;
        }
        let failures = self
            .failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        if failures >= self.threshold {
            let until = now
                .as_unix_millis()
                .saturating_add(self.cool_down_ms)
                .max(1);
            self.open_until.store(until, Ordering::Release);
        }
    }

    pub(crate) fn is_open(&self, now: Timestamp) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        until != 0 && now.as_unix_millis() < until
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ManualClock;

    #[test]
    fn opens_after_threshold_and_probes_once_after_cool_down() {
        let clock = ManualClock::new();
        let b = Breaker::new(Some((3, Duration::from_secs(10))));
        b.failure(clock.now());
        b.failure(clock.now());
        assert!(b.allows(&clock));
        b.failure(clock.now());
        assert!(!b.allows(&clock));
        clock.advance(Duration::from_secs(10));
        assert!(b.allows(&clock), "one probe after the cool-down");
        assert!(!b.allows(&clock), "only one");
        b.success();
        assert!(b.allows(&clock) && b.allows(&clock), "closed again");
    }

    #[test]
    fn disabled_breaker_never_opens() {
        let clock = ManualClock::new();
        let b = Breaker::new(None);
        for _ in 0..100 {
            b.failure(clock.now());
        }
        assert!(b.allows(&clock));
    }
}
