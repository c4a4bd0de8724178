//! The window rings: the cumulative counters (in the flat layout) at the
//! start of each recent bucket, so that a window or a timeline is a
//! subtraction of two snapshots. A monitor keeps one fine ring and any
//! number of coarser ones for longer windows (a round-robin database): every
//! coarse bucket starts on a fine bucket's start, so all rings advance in the
//! same rare step, under one mutex the recording path only `try_lock`s.

use std::sync::Arc;
use std::time::Duration;

use crate::histogram::HistogramSnapshot;

/// The counters at the start of a bucket: the flat counters and each
/// latency histogram (tiers, then the origin). One snapshot is shared by
/// every ring, and by every bucket an idle stretch skipped.
#[derive(Debug, PartialEq)]
pub(crate) struct Snap {
    pub(crate) flat: Vec<u64>,
    pub(crate) hists: Vec<HistogramSnapshot>,
}

/// Most buckets one ring keeps (more are capped), so that a mistyped depth
/// cannot ask for terabytes.
pub(crate) const MAX_BUCKETS: usize = 100_000;

/// One ring: `slots.len()` buckets of `bucket_ms` each.
pub(crate) struct Ring {
    pub(crate) bucket_ms: u64,
    /// The newest bucket snapshotted (bucket numbers count from the Unix
    /// epoch); `None` before the first.
    current: Option<u64>,
    /// Bucket number and the snapshot (counters, histograms) at its start.
    slots: Vec<Option<(u64, Arc<Snap>)>>,
}

impl Ring {
    fn new(bucket_ms: u64, buckets: usize) -> Ring {
        Ring {
            bucket_ms: bucket_ms.max(1),
            current: None,
            slots: vec![None; buckets.clamp(1, MAX_BUCKETS)],
        }
    }

    /// How much time the ring spans: its depth times its bucket.
    pub(crate) fn span_ms(&self) -> u64 {
        self.bucket_ms.saturating_mul(self.slots.len() as u64)
    }

    /// The newest bucket snapshotted (0 before the first).
    pub(crate) fn current(&self) -> u64 {
        self.current.unwrap_or(0)
    }

    /// Records `snap` as the snapshot at the start of every bucket after the
    /// newest one up to the bucket holding `ms` (buckets skipped had no
    /// events, so they start with the same counters and histograms).
    fn advance(&mut self, ms: u64, snap: &Arc<Snap>) {
        let bucket = ms / self.bucket_ms;
        let len = self.slots.len() as u64;
        let oldest_kept = bucket.saturating_sub(len - 1);
        let first = match self.current {
            Some(current) if bucket <= current => return,
            Some(current) => (current + 1).max(oldest_kept),
            None => oldest_kept,
        };
        for b in first..=bucket {
            self.slots[(b % len) as usize] = Some((b, snap.clone()));
        }
        self.current = Some(bucket);
    }

    /// The snapshot at the start of bucket `b`, if the ring still has it.
    pub(crate) fn at(&self, b: u64) -> Option<&Snap> {
        let len = self.slots.len() as u64;
        match &self.slots[(b % len) as usize] {
            Some((tag, snap)) if *tag == b => Some(snap),
            _ => None,
        }
    }

    /// The oldest bucket of a window of `last`: the current bucket and the
    /// whole ones before it, as many as `last` spans (rounded up, at most the
    /// ring's depth).
    pub(crate) fn first_of(&self, last: Duration) -> u64 {
        let span = u64::try_from(last.as_millis())
            .unwrap_or(u64::MAX)
            .div_ceil(self.bucket_ms)
            .clamp(1, self.slots.len() as u64);
        self.current().saturating_sub(span - 1)
    }
}

/// Every ring of a monitor, finest first.
pub(crate) struct Rings {
    rings: Vec<Ring>,
}

impl Rings {
    /// The fine ring (`fine`: bucket, depth) and the coarser ones. A coarse
    /// bucket is rounded up to a whole number of fine buckets.
    pub(crate) fn new(fine: (Duration, usize), long: &[(Duration, usize)]) -> Rings {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        let fine_ms = ms(fine.0);
        let mut rings = vec![Ring::new(fine_ms, fine.1)];
        for &(bucket, buckets) in long {
            let coarse = ms(bucket).div_ceil(fine_ms).saturating_mul(fine_ms);
            rings.push(Ring::new(coarse, buckets));
        }
        // Finest first; of equal buckets, the shallowest first. The fine ring
        // stays first: every other bucket is a multiple of its own.
        rings[1..].sort_by_key(|r| (r.bucket_ms, r.slots.len()));
        Rings { rings }
    }

    /// The fine ring, whose bucket the recording path watches.
    pub(crate) fn fine(&self) -> &Ring {
        &self.rings[0]
    }

    /// Advances every ring to the bucket holding `ms`.
    pub(crate) fn advance(&mut self, ms: u64, snap: Snap) {
        let snap = Arc::new(snap);
        for ring in &mut self.rings {
            ring.advance(ms, &snap);
        }
    }

    /// The ring that serves a window of `last`: the finest one spanning it,
    /// or else the one spanning the most.
    pub(crate) fn for_window(&self, last: Duration) -> &Ring {
        let last = u64::try_from(last.as_millis()).unwrap_or(u64::MAX);
        self.rings
            .iter()
            .find(|r| r.span_ms() >= last)
            .or_else(|| self.rings.iter().max_by_key(|r| r.span_ms()))
            .unwrap_or(&self.rings[0])
    }

    /// Each ring's bucket and depth, finest first.
    pub(crate) fn shape(&self) -> Vec<(Duration, usize)> {
        self.rings
            .iter()
            .map(|r| (Duration::from_millis(r.bucket_ms), r.slots.len()))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn coarse_buckets_are_whole_fine_buckets_and_sorted() {
        let rings = Rings::new(
            (S * 10, 90),
            &[(S * 300, 288), (S * 45, 80), (Duration::ZERO, 0)],
        );
        assert_eq!(
            rings.shape(),
            [(S * 10, 90), (S * 10, 1), (S * 50, 80), (S * 300, 288)]
        );
        // 15 min: the fine ring; an hour: the 50 s ring (66 min); a day: the
        // 5 min ring; a week: the ring that spans the most.
        assert_eq!(rings.for_window(S * 900).bucket_ms, 10_000);
        assert_eq!(rings.for_window(S * 3_600).bucket_ms, 50_000);
        assert_eq!(rings.for_window(S * 86_400).bucket_ms, 300_000);
        assert_eq!(rings.for_window(S * 604_800).bucket_ms, 300_000);
    }

    fn snap(n: u64) -> Arc<Snap> {
        Arc::new(Snap {
            flat: vec![n],
            hists: Vec::new(),
        })
    }

    /// The flat counters bucket `b` starts with, if the ring has them.
    fn at(ring: &Ring, b: u64) -> Option<u64> {
        ring.at(b).map(|s| s.flat[0])
    }

    #[test]
    fn a_ring_keeps_its_depth_and_fills_skipped_buckets() {
        let mut ring = Ring::new(1_000, 3);
        ring.advance(500, &snap(1));
        ring.advance(2_500, &snap(7));
        assert_eq!(ring.current(), 2);
        assert_eq!(
            (at(&ring, 0), at(&ring, 1), at(&ring, 2)),
            (Some(1), Some(7), Some(7))
        );
        // Ten buckets later only the last three are kept.
        ring.advance(12_000, &snap(9));
        assert_eq!(
            (at(&ring, 2), at(&ring, 9), at(&ring, 12)),
            (None, None, Some(9))
        );
        assert_eq!(at(&ring, 10), Some(9));
        assert_eq!(ring.first_of(S * 2), 11);
        assert_eq!(ring.first_of(S * 3_600), 10);
        assert_eq!(ring.first_of(Duration::ZERO), 12);
        // A clock that went back changes nothing.
        ring.advance(1_000, &snap(0));
        assert_eq!((ring.current(), at(&ring, 12)), (12, Some(9)));
    }

    #[test]
    fn depth_is_capped() {
        let ring = Ring::new(0, usize::MAX);
        assert_eq!((ring.bucket_ms, ring.slots.len()), (1, MAX_BUCKETS));
    }
}
