//! Whether a bus hears itself: heartbeat timing and the link's state.

use std::time::{Duration, Instant};

use super::wire::LinkReport;

/// Heartbeat settings.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timing {
    pub(super) interval: Duration,
    pub(super) timeout: Duration,
}

impl Timing {
    /// How often the watchdog looks at the link, and a confirmation at the
    /// instances that have not acknowledged yet.
    pub(super) fn tick(self) -> Duration {
        (self.interval.min(self.timeout) / 10).max(Duration::from_millis(1))
    }

    /// The documented bound: a link that dies is declared down, and the local
    /// tiers flushed, at most this long after the last heartbeat that came
    /// back was sent.
    pub(super) fn bound(self) -> Duration {
        self.interval + self.timeout
    }

    /// Silence after which the watchdog declares the link down: one tick
    /// early, so the flush happens within [`Timing::bound`] of when the last
    /// heartbeat that came back was sent. The registration that heartbeat
    /// refreshed runs out 110 % of `bound` after Redis ran the refresh, which
    /// is later than the send, so the flush comes first however long the
    /// heartbeat took to come back (a slow subscriber link).
    pub(super) fn silence_limit(self) -> Duration {
        self.bound().saturating_sub(self.tick())
    }
}

/// Whether this bus hears itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LinkState {
    /// Connected; the first heartbeat has not come back yet.
    Starting,
    Up,
    /// No heartbeat of its own came back in time: the local tiers are flushed
    /// every heartbeat interval until one does.
    Down,
    /// Down, and a heartbeat sent within the silence limit came back: the
    /// registry is told "up", then the local tiers are flushed once more, then
    /// the link is up. Until then it flushes every interval as when down.
    Recovering,
}

#[derive(Debug)]
pub(super) struct Link {
    pub(super) state: LinkState,
    /// What this bus's registry refreshes report, read when a refresh takes
    /// its number (under this lock, so a refresh numbered after a change
    /// reports it). "Down" only once the local tiers were flushed after the
    /// link went down, and never again once an echo came back: the others
    /// stop waiting for an instance whose record says "down", so a late
    /// "down" (one decided before the link came back, numbered after the
    /// refresh that said "up") would let them confirm an invalidation this
    /// instance has not applied, while it no longer flushes.
    pub(super) report: LinkReport,
    /// When the last heartbeat of this bus's own that came back was **sent**
    /// (not when it came back): Redis ran the registry refresh it carried
    /// after that, so the registration runs out no earlier than its bound
    /// after this moment, however long the heartbeat took to come back.
    pub(super) last_echo: Instant,
    /// When the local tiers were last flushed because the link is down.
    pub(super) last_flush: Instant,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_interval_plus_timeout_and_the_watchdog_fires_a_tick_early() {
        let ms = Duration::from_millis;
        let timing = Timing {
            interval: ms(1000),
            timeout: ms(2000),
        };
        assert_eq!(timing.bound(), ms(3000));
        assert_eq!(timing.tick(), ms(100));
        assert_eq!(timing.silence_limit(), ms(2900));
    }
}
