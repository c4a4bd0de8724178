//! A fixed log-linear latency histogram of atomic counters (HDR-like).
//!
//! Values are nanoseconds. Values below 64 ns have a bucket each (exact); above
//! that, every power of two is split into 32 equal buckets, so a bucket is at most
//! 1/32 (3.125%) of its lower bound wide. Values from 2^40 ns (about 18 minutes)
//! up share the last bucket; the exact maximum is kept separately.
//!
//! Recording is two relaxed atomic adds and one atomic load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// log2 of the number of buckets each power of two is split into.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Values `>= 1 << MAX_EXP` share the last bucket.
const MAX_EXP: u32 = 40;
/// Number of buckets.
pub(crate) const BUCKETS: usize = ((MAX_EXP - SUB_BITS) as usize) * SUB as usize + SUB as usize;
// Snapshots name buckets by `u16`.
const _: () = assert!(BUCKETS <= u16::MAX as usize);

/// The bucket holding `ns`.
#[inline]
pub(crate) fn bucket_index(ns: u64) -> usize {
    if ns < 2 * SUB {
        return ns as usize;
    }
    let ns = ns.min((1 << MAX_EXP) - 1);
    let exp = 63 - ns.leading_zeros();
    let shift = exp - SUB_BITS;
    (shift as usize) * SUB as usize + (ns >> shift) as usize
}

/// The smallest value in bucket `index`.
pub(crate) fn bucket_low(index: usize) -> u64 {
    let index = index as u64;
    if index < 2 * SUB {
        return index;
    }
    let shift = index / SUB - 1;
    (index - shift * SUB) << shift
}

/// The largest value in bucket `index` (inclusive). The last bucket is unbounded.
pub(crate) fn bucket_high(index: usize) -> u64 {
    if index + 1 >= BUCKETS {
        return u64::MAX;
    }
    bucket_low(index + 1) - 1
}

/// Nanoseconds in `d`, saturating.
#[inline]
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The recording side: one counter per bucket, a sum and a max.
pub(crate) struct AtomicHistogram {
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl AtomicHistogram {
    pub(crate) fn new() -> Self {
        AtomicHistogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }

    #[inline]
    pub(crate) fn record(&self, ns: u64) {
        self.buckets[bucket_index(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        // A plain load first: the maximum rarely moves, and a load is cheaper than
        // the compare-and-swap loop `fetch_max` compiles to.
        if ns > self.max_ns.load(Ordering::Relaxed) {
            self.max_ns.fetch_max(ns, Ordering::Relaxed);
        }
    }

    pub(crate) fn sum_ns(&self) -> u64 {
        self.sum_ns.load(Ordering::Relaxed)
    }

    /// The counters now: the buckets that hold anything, and the exact
    /// maximum.
    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self
                .buckets
                .iter()
                .enumerate()
                .filter_map(|(i, b)| {
                    let n = b.load(Ordering::Relaxed);
                    // `BUCKETS` is below `u16::MAX`.
                    (n > 0).then_some((i as u16, n))
                })
                .collect(),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
            max_ns: Some(self.max_ns.load(Ordering::Relaxed)),
        }
    }

    /// Starts a new maximum (for `reset`); counts are reset by subtraction.
    pub(crate) fn reset_max(&self) {
        self.max_ns.store(0, Ordering::Relaxed);
    }
}

/// A copy of a histogram's counters, sparse: the window rings keep one per
/// tier in every bucket, and a tier's reads fill a few hundred of the
/// [`BUCKETS`] at most (about 300 for reads spanning three orders of
/// magnitude), not all of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HistogramSnapshot {
    /// `(bucket index, count)` of the non-empty buckets, by index.
    pub(crate) counts: Vec<(u16, u64)>,
    pub(crate) sum_ns: u64,
    /// The exact maximum; `None` where it is not known (a difference of two
    /// snapshots taken by the window rings, which keep no maximum per bucket).
    pub(crate) max_ns: Option<u64>,
}

impl HistogramSnapshot {
    /// `self - earlier`, bucket by bucket; the max stays `self`'s (the
    /// maximum since the last reset, which is when `earlier` is taken).
    pub(crate) fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: merge(&self.counts, &earlier.counts, u64::saturating_sub),
            sum_ns: self.sum_ns.saturating_sub(earlier.sum_ns),
            max_ns: self.max_ns,
        }
    }

    /// What was recorded between two snapshots of the window rings: as
    /// [`HistogramSnapshot::since`], with no maximum (the percentiles are then
    /// each their bucket's upper bound).
    pub(crate) fn between(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            max_ns: None,
            ..self.since(earlier)
        }
    }

    /// The larger count of each bucket (and sum): of two snapshots of the
    /// same counters, the later one, whichever order they are given in.
    pub(crate) fn max_each(&self, other: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: merge(&self.counts, &other.counts, u64::max),
            sum_ns: self.sum_ns.max(other.sum_ns),
            max_ns: self.max_ns.max(other.max_ns),
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.counts.iter().map(|&(_, n)| n).sum()
    }

    /// The `q`-quantile (0 < q ≤ 1): the upper bound of the bucket holding the
    /// value of rank `ceil(q * count)`, capped at the maximum recorded. `None` when
    /// empty.
    pub(crate) fn quantile(&self, q: f64) -> Option<u64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        // Nearest-rank definition; the float-to-int cast saturates.
        let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        for &(index, n) in &self.counts {
            seen += n;
            if seen >= rank {
                let high = bucket_high(usize::from(index));
                return Some(match self.max_ns {
                    Some(max) if max > 0 => high.min(max),
                    _ => high,
                });
            }
        }
        self.max_ns
    }

    /// Cumulative counts of values `<= bound_ns`, for each of `bounds_ns` (which
    /// must be bucket upper bounds to be exact, see [`export_bounds_ns`]).
    pub(crate) fn cumulative(&self, bounds_ns: &[u64]) -> Vec<u64> {
        let mut out = Vec::with_capacity(bounds_ns.len());
        let mut seen = 0;
        let mut next = self.counts.iter().peekable();
        for &bound in bounds_ns {
            while let Some(&&(index, n)) = next.peek() {
                if bucket_high(usize::from(index)) > bound {
                    break;
                }
                seen += n;
                next.next();
            }
            out.push(seen);
        }
        out
    }
}

/// The buckets of `a` and `b` (each sorted by index) combined by `f`, a
/// bucket missing on one side counting 0 there; empty results left out.
fn merge(a: &[(u16, u64)], b: &[(u16, u64)], f: fn(u64, u64) -> u64) -> Vec<(u16, u64)> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let (index, n) = match (a.get(i), b.get(j)) {
            (Some(&(x, n)), Some(&(y, m))) if x == y => {
                i += 1;
                j += 1;
                (x, f(n, m))
            }
            (Some(&(x, n)), Some(&(y, _))) if x < y => {
                i += 1;
                (x, f(n, 0))
            }
            (Some(&(x, n)), None) => {
                i += 1;
                (x, f(n, 0))
            }
            (_, Some(&(y, m))) => {
                j += 1;
                (y, f(0, m))
            }
            (None, None) => break,
        };
        if n > 0 {
            out.push((index, n));
        }
    }
    out
}

/// Nice boundaries for exported (Prometheus) buckets, in nanoseconds.
const NICE_BOUNDS_NS: [u64; 18] = [
    1_000,
    5_000,
    10_000,
    50_000,
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The exported bucket bounds: for each nice value, the upper bound of the
/// internal bucket holding it, so exported counts are exact (`le="0.000999423"`
/// rather than a rounded `le="0.001"` that would split a bucket).
pub(crate) fn export_bounds_ns() -> Vec<u64> {
    NICE_BOUNDS_NS
        .iter()
        .map(|&ns| bucket_high(bucket_index(ns)))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_narrow() {
        assert_eq!(bucket_low(0), 0);
        for i in 0..BUCKETS - 1 {
            let (low, high) = (bucket_low(i), bucket_high(i));
            assert!(low <= high, "bucket {i}");
            assert_eq!(bucket_low(i + 1), high + 1, "bucket {i} meets the next");
            assert_eq!(bucket_index(low), i);
            assert_eq!(bucket_index(high), i);
            // Relative width at most 1/32 of the lower bound.
            assert!(
                (high - low + 1) * SUB <= low.max(SUB),
                "bucket {i} too wide"
            );
        }
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_index((1 << MAX_EXP) - 1), BUCKETS - 1);
    }

    #[test]
    fn small_values_are_exact() {
        for ns in 0..64 {
            assert_eq!(bucket_index(ns), ns as usize);
            assert_eq!(bucket_high(ns as usize), ns);
        }
    }

    #[test]
    fn quantiles_follow_nearest_rank() {
        let h = AtomicHistogram::new();
        // 1..=100 ns: all exact buckets below 64, 2-wide buckets above.
        for ns in 1..=100 {
            h.record(ns);
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 100);
        assert_eq!(s.quantile(0.5), Some(50));
        assert_eq!(s.quantile(0.01), Some(1));
        // rank 95 lies in bucket [94, 95]; rank 99 in [98, 99].
        assert_eq!(s.quantile(0.95), Some(95));
        assert_eq!(s.quantile(0.99), Some(99));
        assert_eq!(s.quantile(1.0), Some(100));
        assert_eq!(s.max_ns, Some(100));
        assert_eq!(s.sum_ns, 5050);
    }

    #[test]
    fn quantile_is_the_upper_bound_of_the_right_bucket() {
        let h = AtomicHistogram::new();
        let values = [1_000_000u64, 2_000_000, 3_000_000, 40_000_000];
        for (i, &v) in values.iter().enumerate() {
            for _ in 0..(i + 1) * 10 {
                h.record(v);
            }
        }
        // 100 values: 10 × 1 ms, 20 × 2 ms, 30 × 3 ms, 40 × 40 ms.
        let s = h.snapshot();
        let up = |v: u64| bucket_high(bucket_index(v));
        assert_eq!(s.quantile(0.10), Some(up(1_000_000)));
        assert_eq!(s.quantile(0.11), Some(up(2_000_000)));
        assert_eq!(s.quantile(0.50), Some(up(3_000_000)));
        assert_eq!(s.quantile(0.61), Some(40_000_000), "capped at the max");
        for v in values {
            assert!((up(v) - v) * 32 <= v, "within 1/32 of the true value");
        }
    }

    #[test]
    fn cumulative_counts_at_export_bounds_are_exact() {
        let h = AtomicHistogram::new();
        let bounds = export_bounds_ns();
        for &b in &bounds {
            h.record(b); // on the bound: counted at this bound
            h.record(b + 1); // just above: counted at the next one
        }
        let cum = h.snapshot().cumulative(&bounds);
        for (i, &c) in cum.iter().enumerate() {
            assert_eq!(c, 2 * i as u64 + 1, "bound {i}");
        }
        assert!(bounds.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn since_subtracts() {
        let h = AtomicHistogram::new();
        h.record(10);
        let a = h.snapshot();
        h.record(20);
        h.record(20);
        let d = h.snapshot().since(&a);
        assert_eq!(d.count(), 2);
        assert_eq!(d.sum_ns, 40);
        assert_eq!(d.quantile(0.5), Some(20));
    }

    #[test]
    fn between_has_no_maximum_and_max_each_takes_the_later_counts() {
        let h = AtomicHistogram::new();
        h.record(10);
        h.record(5_000);
        let a = h.snapshot();
        h.record(20);
        h.record(100_000);
        let b = h.snapshot();
        let d = b.between(&a);
        assert_eq!(d.count(), 2);
        assert_eq!(d.sum_ns, 100_020);
        assert_eq!(d.max_ns, None);
        // Without a maximum, a percentile is its bucket's upper bound.
        assert_eq!(d.quantile(1.0), Some(bucket_high(bucket_index(100_000))));
        assert_eq!(d.quantile(0.5), Some(20));
        // Buckets only `a` or only `b` holds are kept, and empty ones dropped.
        assert_eq!(a.max_each(&b), b);
        assert_eq!(b.max_each(&a), b);
        assert_eq!(b.since(&b).counts, []);
        assert_eq!(HistogramSnapshot::default().max_each(&a), a);
    }
}
