//! Where each counter sits: the layout of the counter arrays and of the flat
//! snapshots that [`Monitor`](crate::Monitor) records into and
//! [`Report`](crate::Report) is built from. Both sides name positions only
//! through these constants.

/// How many tiers (indexes `0..MAX_TIERS`) a monitor keeps apart. Events for
/// higher indexes are counted in
/// [`Report::dropped_events`](crate::Report::dropped_events) only.
pub const MAX_TIERS: usize = 16;

// Per-tier counters, by position.
pub(crate) const T_HITS: usize = 0;
pub(crate) const T_MISSES: usize = 1;
pub(crate) const T_ERRORS: usize = 2;
pub(crate) const T_TIMEOUTS: usize = 3;
pub(crate) const T_READ_FAILURES: usize = 4;
pub(crate) const T_SKIPS: usize = 5;
pub(crate) const T_BACKFILLS: usize = 6;
pub(crate) const T_WRITES: usize = 7;
pub(crate) const T_INVALIDATIONS: usize = 8;
pub(crate) const T_BYTES_SERVED: usize = 9;
pub(crate) const T_BYTES_WRITTEN: usize = 10;
pub(crate) const T_REFUSED: usize = 11;
/// Reads whose latency was measured (in the histogram and the sum): in-process
/// answers are timed one in [`cache_core::FAST_PATH_TIMED_EVERY`].
pub(crate) const T_TIMED_READS: usize = 12;
pub(crate) const TIER_COUNTERS: usize = 13;
/// In flat snapshots, each tier's counters are followed by its read latency sum.
pub(crate) const T_READ_NS: usize = TIER_COUNTERS;
pub(crate) const TIER_STRIDE: usize = TIER_COUNTERS + 1;

// Origin counters.
pub(crate) const O_LOADS: usize = 0;
pub(crate) const O_NOT_FOUND: usize = 1;
pub(crate) const O_ERRORS: usize = 2;
pub(crate) const O_COALESCED: usize = 3;
pub(crate) const O_BYTES: usize = 4;
pub(crate) const ORIGIN_COUNTERS: usize = 5;
pub(crate) const O_NS: usize = ORIGIN_COUNTERS;
pub(crate) const ORIGIN_OFFSET: usize = MAX_TIERS * TIER_STRIDE;

// Chain-level counters.
pub(crate) const C_NEGATIVE_HITS: usize = 0;
pub(crate) const C_STALE_SERVED: usize = 1;
pub(crate) const C_STALE_BYTES: usize = 2;
pub(crate) const C_DROPPED: usize = 3;
pub(crate) const C_RESYNCS: usize = 4;
pub(crate) const CHAIN_COUNTERS: usize = 5;
pub(crate) const CHAIN_OFFSET: usize = ORIGIN_OFFSET + ORIGIN_COUNTERS + 1;
pub(crate) const FLAT_LEN: usize = CHAIN_OFFSET + CHAIN_COUNTERS;
