//! Per-origin invalidation numbers: a skipped number means a message was lost.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Peers silent for this long are forgotten.
pub(super) const FORGET_PEERS_AFTER: Duration = Duration::from_secs(600);

/// The last invalidation number seen from each origin.
#[derive(Debug, Default)]
pub(super) struct Sequences {
    /// Origin -> (last number, when it arrived).
    last: HashMap<u64, (u64, Instant)>,
}

impl Sequences {
    /// Records invalidation `seq` from `origin`; `false` if one from it was
    /// missed or the numbers went backwards. The first message from an origin
    /// starts its sequence.
    pub(super) fn next(&mut self, origin: u64, seq: u64) -> bool {
        let now = Instant::now();
        match self.last.insert(origin, (seq, now)) {
            None => true,
            Some((last, _)) if seq == last.wrapping_add(1) => true,
            Some((last, _)) => {
                self.last.insert(origin, (last.max(seq), now));
                false
            }
        }
    }

    /// Forgets origins silent for [`FORGET_PEERS_AFTER`] (instances that
    /// stopped; a restarted instance has a new origin).
    pub(super) fn forget_silent(&mut self) {
        let now = Instant::now();
        self.last
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < FORGET_PEERS_AFTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_detect_gaps() {
        let mut s = Sequences::default();
        assert!(s.next(1, 5), "the first message from an origin starts it");
        assert!(s.next(1, 6));
        assert!(s.next(2, 0), "origins are independent");
        assert!(!s.next(1, 8), "7 is missing");
        assert!(s.next(1, 9));
        assert!(!s.next(1, 9), "a repeat is not the successor");
        assert!(!s.next(1, 3), "backwards");
        assert!(s.next(1, 10), "the highest number seen is kept");
        assert!(s.next(2, 1));
    }
}
