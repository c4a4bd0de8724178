//! [`Monitor`]: the observer that records a chain's events into atomic counters.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::Duration;

use cache_core::{Clock, Error, Event, EventKind, EventSource, Observer, Operation, Timestamp};

use crate::builder::MonitorBuilder;
use crate::histogram::{nanos, AtomicHistogram, HistogramSnapshot};
use crate::layout::{
    CHAIN_COUNTERS, C_DROPPED, C_NEGATIVE_HITS, C_RESYNCS, C_STALE_BYTES, C_STALE_SERVED, FLAT_LEN,
    MAX_TIERS, ORIGIN_COUNTERS, O_BYTES, O_COALESCED, O_ERRORS, O_LOADS, O_NOT_FOUND,
    TIER_COUNTERS, T_BACKFILLS, T_BYTES_SERVED, T_BYTES_WRITTEN, T_ERRORS, T_HITS, T_INVALIDATIONS,
    T_MISSES, T_READ_FAILURES, T_REFUSED, T_SKIPS, T_TIMED_READS, T_TIMEOUTS, T_WRITES,
};
use crate::report::{build_report, Covers, KeyCount, Report};
use crate::stripes::{self, Stripe};
use crate::windows::{Rings, Snap};

fn counters<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

#[inline]
fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Requests and hits of one key (see [`crate::MonitorBuilder::track_keys`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct KeyStats {
    requests: u64,
    hits: u64,
}

/// Aligned so that threads hitting different tiers do not share cache lines.
#[repr(align(128))]
struct TierSlot {
    /// Set by the first event from this index; later names are ignored.
    /// Every event reads it, so it has cache lines of its own: beside the
    /// counters, which a timed read writes, each such write made the other
    /// threads' next hit miss on this line (seen as the hottest load of a
    /// two-thread hit under `perf`).
    name: Alone<OnceLock<Box<str>>>,
    counters: [AtomicU64; TIER_COUNTERS],
    /// Reads answered or failed: hits, misses, read errors and timeouts.
    read: AtomicHistogram,
}

/// A value on cache lines of its own (128 bytes: adjacent-line prefetchers
/// fetch lines in pairs).
#[repr(align(128))]
struct Alone<T>(T);

#[repr(align(128))]
struct OriginSlot {
    counters: [AtomicU64; ORIGIN_COUNTERS],
    /// Every origin call: loads, not-found answers and failures.
    load: AtomicHistogram,
}

/// What `reset` subtracts.
struct Baseline {
    at: Timestamp,
    /// Whether `reset` was called (else the baseline is the monitor's start).
    reset: bool,
    flat: Vec<u64>,
    hists: Vec<HistogramSnapshot>,
    keys: HashMap<Box<str>, KeyStats>,
}

struct Shared {
    clock: Arc<dyn Clock>,
    /// Whether `clock` is the default wall clock: then a chain's own time of
    /// an event ([`Observer::on_event_at`]) places it as well.
    default_clock: bool,
    started: Timestamp,
    prefix: String,
    /// Set by [`MonitorBuilder::export_metrics`].
    #[cfg(feature = "metrics")]
    export: Option<crate::export::Names>,
    tiers: Box<[TierSlot]>,
    origin: OriginSlot,
    chain: [AtomicU64; CHAIN_COUNTERS],
    /// Per-thread rows of hits, misses and bytes served (`stripes`).
    stripes: Box<[Stripe]>,
    /// The fine ring's bucket.
    bucket_ms: u64,
    /// When the fine ring's next bucket starts (ms): `tick` compares against
    /// it, no division on the way.
    next_bucket_ms: AtomicU64,
    rings: Mutex<Rings>,
    baseline: Mutex<Baseline>,
    keys: Option<KeyTracker>,
}

/// Per-key counts for the busiest keys (opt-in; see
/// [`MonitorBuilder::track_keys`]).
struct KeyTracker {
    capacity: usize,
    map: Mutex<HashMap<Box<str>, KeyStats>>,
}

impl KeyTracker {
    fn record(&self, key: &str, hit: bool) {
        let mut map = lock(&self.map);
        if let Some(stats) = map.get_mut(key) {
            stats.requests += 1;
            stats.hits += u64::from(hit);
            return;
        }
        let mut stats = KeyStats {
            requests: 1,
            hits: u64::from(hit),
        };
        if map.len() >= self.capacity {
            // Space-saving: the newcomer takes over the least-counted key's slot
            // and inherits its count, so a heavy key is never pushed out by a
            // stream of one-off keys.
            let Some(victim) = map
                .iter()
                .min_by_key(|(_, s)| s.requests)
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            if let Some(old) = map.remove(&victim) {
                stats.requests += old.requests;
            }
        }
        map.insert(key.into(), stats);
    }
}

/// Records a read's latency, if it was timed.
#[inline]
fn time_read(slot: &TierSlot, latency: Option<Duration>) {
    if let Some(latency) = latency {
        slot.read.record(nanos(latency));
        add(&slot.counters[T_TIMED_READS], 1);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Per-tier cache metrics: an [`Observer`] for [`cache_core::TieredCache`].
///
/// # What it counts
///
/// - Per tier (by index, named by the first event seen for that index): hits,
///   misses, errors, timeouts, circuit-breaker skips, backfills, writes,
///   invalidations, bytes served (hits) and bytes written; a histogram of read
///   latency (hits, misses, failed reads) with p50/p95/p99/max.
/// - The origin: loads, not-found answers, failures, coalesced reads, bytes loaded,
///   and a histogram of origin call latency.
/// - Overall: requests (every read reaches tier 0 once), hit rate, average access
///   time and bytes saved. See [`Report`] for the exact definitions.
/// - Optionally, the top keys by requests ([`MonitorBuilder::track_keys`]).
///
/// # Cost
///
/// Recording is lock-free. A hit or miss bumps its thread's own row of
/// counters (a plain load and store, no locked instruction, no cache line
/// shared with other threads: 64 rows, then the shared atomics); other events
/// add to shared relaxed atomics. Counts are exact. Latency is what the chain
/// measured: every call that waits, and one in
/// [`cache_core::FAST_PATH_TIMED_EVERY`] in-process answers per thread
/// ([`Report::latency_timed_every`]); the histograms and means are over those.
/// Every event is placed in time to find its window bucket (a comparison
/// with the next bucket's start): a chain's hit by the time the chain read
/// for its expiry check ([`Observer::on_event_at`], with the default clock),
/// any other event by a read of the monitor's clock; once per bucket (a minute by
/// default) one event also copies the counters and the latency histograms
/// into the window rings under a mutex that other events never wait for. Key tracking, when enabled, takes a mutex per read.
///
/// # Windows
///
/// [`Monitor::report`] covers everything since the monitor was built or last
/// [`reset`](Monitor::reset). [`Monitor::window`] covers the last N minutes and
/// [`Monitor::timeline`] gives one report per bucket, for plotting. Each
/// report states its period ([`Report::period`]) and how latency was sampled
/// ([`Report::latency_timed_every`]). Window and timeline reports carry
/// what a report since start does, latency percentiles included, except the
/// exact maximum ([`LatencyStats::max`](crate::LatencyStats::max) is `None`
/// there, and each percentile is its bucket's upper bound: never below the
/// true value, at most 3.1 % above it).
///
/// The windows come from rings of snapshots kept in memory: a fine one
/// ([`MonitorBuilder::window`], by default an hour by the minute) and any
/// coarser ones for a longer history ([`MonitorBuilder::long_window`]), so a
/// dashboard opened now can show the last hour or day. A snapshot holds the
/// counters (about 2 KiB) and each histogram's non-empty buckets (16 bytes
/// each; a tier whose reads span three orders of magnitude fills about 300),
/// and is shared by every ring and by the buckets of an idle stretch.
///
/// `Monitor` is a cheap handle: clones record into the same counters.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use cache_core::{loader_fn, BoxError, Clock, Entry, MemoryTier, SystemClock, Tier, TieredCache};
/// use cache_monitor::Monitor;
///
/// # futures_executor::block_on(async {
/// let monitor = Monitor::new();
/// let cache = TieredCache::builder()
///     .tier(Tier::new(MemoryTier::builder().name("memory").build()))
///     .origin(loader_fn(|id: u64| async move {
///         Ok::<_, BoxError>(Some(Entry::expiring_in(vec![0u8; 1000], SystemClock.now(), Duration::from_secs(60))))
///     }))
///     .observer(monitor.clone())
///     .build();
///
/// cache.get(&1).await?; // miss, origin load
/// cache.get(&1).await?; // hit
/// let report = monitor.report();
/// assert_eq!(report.requests, 2);
/// assert_eq!(report.hit_rate, Some(0.5));
/// assert_eq!(report.bytes_saved, 1000);
/// assert_eq!(report.tiers[0].hits, 1);
/// assert_eq!(report.origin.loads, 1);
/// println!("{report}");
/// # Ok::<_, cache_core::Error>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct Monitor {
    shared: Arc<Shared>,
}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("prefix", &self.shared.prefix)
            .field("started", &self.shared.started)
            .field("bucket_ms", &self.shared.bucket_ms)
            .finish_non_exhaustive()
    }
}

impl Default for Monitor {
    fn default() -> Self {
        Self::new()
    }
}

impl Monitor {
    /// The monitor [`MonitorBuilder::build`] builds.
    pub(crate) fn from_builder(b: MonitorBuilder) -> Monitor {
        let now = b.clock.now();
        let rings = Rings::new((b.bucket, b.buckets), &b.long);
        let bucket_ms = rings.fine().bucket_ms;
        let shared = Shared {
            #[cfg(feature = "metrics")]
            export: b.export.then(|| crate::export::Names::new(&b.prefix)),
            clock: b.clock,
            default_clock: b.default_clock,
            started: now,
            prefix: b.prefix,
            tiers: (0..MAX_TIERS)
                .map(|_| TierSlot {
                    name: Alone(OnceLock::new()),
                    counters: counters(),
                    read: AtomicHistogram::new(),
                })
                .collect(),
            origin: OriginSlot {
                counters: counters(),
                load: AtomicHistogram::new(),
            },
            chain: counters(),
            stripes: stripes::stripes(),
            bucket_ms,
            next_bucket_ms: AtomicU64::new(0),
            rings: Mutex::new(rings),
            baseline: Mutex::new(Baseline {
                at: now,
                reset: false,
                flat: vec![0; FLAT_LEN],
                hists: Vec::new(),
                keys: HashMap::new(),
            }),
            keys: b.track_keys.map(|capacity| KeyTracker {
                capacity,
                map: Mutex::new(HashMap::new()),
            }),
        };
        // On wasm32 the clock is not `Send`/`Sync`, and there are no threads.
        #[allow(clippy::arc_with_non_send_sync)]
        let shared = Arc::new(shared);
        let monitor = Monitor { shared };
        monitor.tick(now);
        lock(&monitor.shared.baseline).hists = monitor.histograms();
        monitor
    }
}

/// Whether a failed tier call was a read (as opposed to a write or removal).
fn failed_read(error: Option<&Error>) -> bool {
    match error {
        Some(Error::Backend { operation, .. })
        | Some(Error::Timeout { operation, .. })
        | Some(Error::Unsupported { operation, .. }) => {
            matches!(operation, Operation::Get | Operation::GetMany)
        }
        Some(Error::QuotaExceeded { .. }) | Some(Error::Encode { .. }) => false,
        // Unknown operation: count it as a read, which is what most events are.
        _ => true,
    }
}

impl Monitor {
    /// A monitor on a [`CoarseClock`](crate::CoarseClock) with one-minute buckets kept for an hour.
    pub fn new() -> Self {
        MonitorBuilder::default().build()
    }

    /// A builder.
    pub fn builder() -> MonitorBuilder {
        MonitorBuilder::default()
    }

    /// Records one event. This is what [`Observer::on_event`] does.
    #[inline]
    pub fn record(&self, event: &Event<'_>) {
        self.record_at(event, self.shared.clock.now());
    }

    /// Records one event that happened at `now`.
    #[inline]
    fn record_at(&self, event: &Event<'_>, now: Timestamp) {
        let s = &*self.shared;
        #[cfg(feature = "metrics")]
        if let Some(names) = &s.export {
            crate::export::record(names, event);
        }
        // Every event is placed in time before it is counted, so it lands
        // in the window bucket of its time (reading the clock one time in
        // eight left an event of a new bucket in the old one: a window then
        // missed it).
        self.tick(now);
        let stripe = stripes::local();
        match event.source {
            EventSource::Tier { index, name } => {
                let Some(slot) = s.tiers.get(index) else {
                    add(&s.chain[C_DROPPED], 1);
                    return;
                };
                if slot.name.0.get().is_none() {
                    let _ = slot.name.0.set(name.into());
                }
                let c = &slot.counters;
                let bytes = event.bytes as u64;
                match event.kind {
                    EventKind::Hit => {
                        match stripe {
                            Some(n) => {
                                let row = &s.stripes[n];
                                stripes::bump(&row.hits[index], 1);
                                stripes::bump(&row.bytes[index], bytes);
                            }
                            None => {
                                add(&c[T_HITS], 1);
                                add(&c[T_BYTES_SERVED], bytes);
                            }
                        }
                        time_read(slot, event.latency);
                        if index == 0 {
                            self.track_key(event.key, true);
                        }
                    }
                    EventKind::Miss => {
                        match stripe {
                            Some(n) => stripes::bump(&s.stripes[n].misses[index], 1),
                            None => add(&c[T_MISSES], 1),
                        }
                        time_read(slot, event.latency);
                        if index == 0 {
                            self.track_key(event.key, false);
                        }
                    }
                    EventKind::Error | EventKind::Timeout => {
                        let which = if event.kind == EventKind::Error {
                            T_ERRORS
                        } else {
                            T_TIMEOUTS
                        };
                        add(&c[which], 1);
                        if failed_read(event.error) {
                            add(&c[T_READ_FAILURES], 1);
                            time_read(slot, event.latency);
                            if index == 0 {
                                self.track_key(event.key, false);
                            }
                        }
                    }
                    EventKind::Skipped => {
                        add(&c[T_SKIPS], 1);
                        if index == 0 {
                            self.track_key(event.key, false);
                        }
                    }
                    EventKind::Backfill => {
                        add(&c[T_BACKFILLS], 1);
                        add(&c[T_BYTES_WRITTEN], bytes);
                    }
                    EventKind::Write => {
                        add(&c[T_WRITES], 1);
                        add(&c[T_BYTES_WRITTEN], bytes);
                    }
                    EventKind::Invalidate => add(&c[T_INVALIDATIONS], 1),
                    EventKind::Refused => add(&c[T_REFUSED], 1),
                    _ => add(&s.chain[C_DROPPED], 1),
                }
            }
            EventSource::Origin => {
                let c = &s.origin.counters;
                // The chain times every origin call.
                let ns = nanos(event.latency.unwrap_or_default());
                match event.kind {
                    EventKind::OriginLoad => {
                        add(&c[O_LOADS], 1);
                        add(&c[O_BYTES], event.bytes as u64);
                        s.origin.load.record(ns);
                    }
                    EventKind::OriginNotFound => {
                        add(&c[O_NOT_FOUND], 1);
                        s.origin.load.record(ns);
                    }
                    EventKind::OriginError => {
                        add(&c[O_ERRORS], 1);
                        s.origin.load.record(ns);
                    }
                    EventKind::Coalesced => add(&c[O_COALESCED], 1),
                    _ => add(&s.chain[C_DROPPED], 1),
                }
            }
            EventSource::Chain => match event.kind {
                EventKind::NegativeHit => add(&s.chain[C_NEGATIVE_HITS], 1),
                EventKind::StaleServed => {
                    add(&s.chain[C_STALE_SERVED], 1);
                    add(&s.chain[C_STALE_BYTES], event.bytes as u64);
                }
                EventKind::Resync => add(&s.chain[C_RESYNCS], 1),
                _ => add(&s.chain[C_DROPPED], 1),
            },
        }
    }

    #[inline]
    fn track_key(&self, key: &str, hit: bool) {
        if let Some(keys) = &self.shared.keys {
            keys.record(key, hit);
        }
    }

    /// Snapshots the counters into the window ring when `now` entered a new bucket.
    #[inline]
    fn tick(&self, now: Timestamp) {
        let s = &*self.shared;
        let ms = now.as_unix_millis();
        // A clock that went backwards keeps recording into the newest bucket.
        if ms < s.next_bucket_ms.load(Ordering::Acquire) {
            return;
        }
        self.rotate(ms);
    }

    /// Snapshots the counters into every ring whose bucket `ms` passed.
    #[cold]
    fn rotate(&self, ms: u64) {
        let s = &*self.shared;
        let mut rings = match s.rings.try_lock() {
            Ok(rings) => rings,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            // Another event is rotating: this one lands on either side of the
            // boundary, and is counted either way.
            Err(TryLockError::WouldBlock) => return,
        };
        let bucket = ms / s.bucket_ms;
        if bucket <= rings.fine().current() && ms < s.next_bucket_ms.load(Ordering::Acquire) {
            return;
        }
        rings.advance(
            ms,
            Snap {
                flat: self.flat(),
                hists: self.histograms(),
            },
        );
        s.next_bucket_ms.store(
            bucket.saturating_add(1).saturating_mul(s.bucket_ms),
            Ordering::Release,
        );
    }

    /// Every cumulative counter, in the flat layout.
    fn flat(&self) -> Vec<u64> {
        let s = &*self.shared;
        let mut out = Vec::with_capacity(FLAT_LEN);
        for (index, slot) in s.tiers.iter().enumerate() {
            let base = out.len();
            out.extend(slot.counters.iter().map(|c| c.load(Ordering::Relaxed)));
            for row in s.stripes.iter() {
                out[base + T_HITS] += row.hits[index].load(Ordering::Relaxed);
                out[base + T_MISSES] += row.misses[index].load(Ordering::Relaxed);
                out[base + T_BYTES_SERVED] += row.bytes[index].load(Ordering::Relaxed);
            }
            out.push(slot.read.sum_ns());
        }
        out.extend(s.origin.counters.iter().map(|c| c.load(Ordering::Relaxed)));
        out.push(s.origin.load.sum_ns());
        out.extend(s.chain.iter().map(|c| c.load(Ordering::Relaxed)));
        out
    }

    /// Histogram snapshots: one per tier slot, then the origin.
    fn histograms(&self) -> Vec<HistogramSnapshot> {
        let s = &*self.shared;
        s.tiers
            .iter()
            .map(|t| t.read.snapshot())
            .chain(std::iter::once(s.origin.load.snapshot()))
            .collect()
    }

    fn names(&self) -> Vec<Option<String>> {
        self.shared
            .tiers
            .iter()
            .map(|t| t.name.0.get().map(|n| n.to_string()))
            .collect()
    }

    /// Everything since the monitor was built or last reset, with latency
    /// percentiles ([`Report::period`] says which).
    pub fn report(&self) -> Report {
        let now = self.shared.clock.now();
        self.tick(now);
        let flat = self.flat();
        let hists = self.histograms();
        let baseline = lock(&self.shared.baseline);
        let diff = sub(&flat, &baseline.flat);
        let hists: Vec<HistogramSnapshot> = hists
            .iter()
            .zip(&baseline.hists)
            .map(|(h, b)| h.since(b))
            .collect();
        let top = self.top_keys(&baseline.keys);
        let since = baseline.at;
        let covers = if baseline.reset {
            Covers::SinceReset
        } else {
            Covers::SinceStart
        };
        drop(baseline);
        build_report(
            &diff,
            Some(&hists),
            &self.names(),
            (since, now),
            (covers, None),
            top,
        )
    }

    /// The last `last` of activity, to the bucket: the current (partial) bucket
    /// and the full buckets before it, as many as `last` spans (rounded up, at
    /// most the depth of the ring that serves it: see
    /// [`Monitor::resolution`]), and never from before the last reset. With
    /// percentiles, but no exact maximum (see [Windows](Monitor#windows)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_core::{Event, EventKind, EventSource, ManualClock};
    /// use cache_monitor::{Covers, Monitor};
    ///
    /// let clock = ManualClock::new();
    /// let monitor = Monitor::builder().clock(clock.clone()).build();
    /// let hit = Event { kind: EventKind::Hit, source: EventSource::Tier { index: 0, name: "memory" },
    ///                   key: "k", latency: Some(Duration::from_micros(5)), bytes: 10, error: None };
    /// monitor.record(&hit);
    /// clock.advance(Duration::from_secs(600));
    /// monitor.record(&hit);
    /// let window = monitor.window(Duration::from_secs(300));
    /// assert_eq!(window.requests, 1);
    /// assert_eq!(window.period.covers, Covers::Window);
    /// assert_eq!(window.period.bucket, Some(Duration::from_secs(60)));
    /// assert_eq!(monitor.report().requests, 2);
    /// ```
    pub fn window(&self, last: Duration) -> Report {
        let s = &*self.shared;
        let now = s.clock.now();
        self.tick(now);
        let flat = self.flat();
        let hists = self.histograms();
        let (bucket, start_at, start, start_hists) = {
            let rings = lock(&s.rings);
            let ring = rings.for_window(last);
            let first = ring.first_of(last);
            let bucket = Duration::from_millis(ring.bucket_ms);
            match ring.at(first) {
                Some(snap) => (
                    bucket,
                    bucket_start(first, ring.bucket_ms),
                    snap.flat.clone(),
                    snap.hists.clone(),
                ),
                None => (bucket, s.started, vec![0; FLAT_LEN], Vec::new()),
            }
        };
        let baseline = lock(&s.baseline);
        let (since, start, start_hists) = if baseline.at > start_at {
            (baseline.at, baseline.flat.clone(), baseline.hists.clone())
        } else {
            (start_at, start, start_hists)
        };
        drop(baseline);
        build_report(
            &sub(&flat, &start),
            Some(&between(&hists, &start_hists)),
            &self.names(),
            (since, now),
            (Covers::Window, Some(bucket)),
            None,
        )
    }

    /// The bucket width [`Monitor::window`] and [`Monitor::timeline`] count a
    /// window of `last` in: the finest ring that spans `last`
    /// ([`MonitorBuilder::window`], [`MonitorBuilder::long_window`]), or else
    /// the one that spans the most.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_monitor::Monitor;
    ///
    /// let s = Duration::from_secs;
    /// let monitor = Monitor::builder().window(s(10), 90).long_window(s(300), 288).build();
    /// assert_eq!(monitor.resolution(s(900)), s(10)); // 15 minutes in 10 s buckets
    /// assert_eq!(monitor.resolution(s(3_600)), s(300)); // an hour in 5 min buckets
    /// assert_eq!(monitor.longest_window(), s(86_400));
    /// ```
    pub fn resolution(&self, last: Duration) -> Duration {
        Duration::from_millis(lock(&self.shared.rings).for_window(last).bucket_ms)
    }

    /// The longest window the monitor keeps: the largest depth times bucket
    /// of its rings. A longer [`Monitor::window`] covers this much.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_monitor::Monitor;
    ///
    /// assert_eq!(Monitor::new().longest_window(), Duration::from_secs(3_600));
    /// ```
    pub fn longest_window(&self) -> Duration {
        lock(&self.shared.rings)
            .shape()
            .iter()
            .map(|&(bucket, depth)| bucket.saturating_mul(u32::try_from(depth).unwrap_or(u32::MAX)))
            .max()
            .unwrap_or_default()
    }

    /// One report per bucket over the last `last` (as [`Monitor::window`] counts
    /// it, in the buckets of [`Monitor::resolution`]), oldest first; the last
    /// one is the current, partial bucket. For plotting hit rate and access
    /// time (and its percentiles: see [Windows](Monitor#windows)) over time.
    /// Buckets from before the monitor was built (or last reset) are empty.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_core::{Event, EventKind, EventSource, ManualClock};
    /// use cache_monitor::{Covers, Monitor};
    ///
    /// let clock = ManualClock::new();
    /// let monitor = Monitor::builder().clock(clock.clone()).build();
    /// let miss = Event { kind: EventKind::Miss, source: EventSource::Tier { index: 0, name: "memory" },
    ///                    key: "k", latency: Some(Duration::ZERO), bytes: 0, error: None };
    /// monitor.record(&miss);
    /// clock.advance(Duration::from_secs(60));
    /// let points = monitor.timeline(Duration::from_secs(120));
    /// assert_eq!(points.iter().map(|r| r.requests).collect::<Vec<_>>(), [1, 0]);
    /// assert_eq!(points[0].period.covers, Covers::Bucket);
    /// ```
    pub fn timeline(&self, last: Duration) -> Vec<Report> {
        let s = &*self.shared;
        let now = s.clock.now();
        self.tick(now);
        let current_snap = Snap {
            flat: self.flat(),
            hists: self.histograms(),
        };
        let names = self.names();
        let (reset_at, reset_snap) = {
            let b = lock(&s.baseline);
            (
                b.at,
                Snap {
                    flat: b.flat.clone(),
                    hists: b.hists.clone(),
                },
            )
        };
        let rings = lock(&s.rings);
        let ring = rings.for_window(last);
        let bucket = Duration::from_millis(ring.bucket_ms);
        let current = ring.current();
        let mut out = Vec::new();
        for b in ring.first_of(last)..=current {
            let begin = bucket_start(b, ring.bucket_ms);
            let end = if b == current {
                now
            } else {
                bucket_start(b + 1, ring.bucket_ms)
            };
            let Some(start) = ring.at(b) else { continue };
            let stop = if b == current {
                Some(&current_snap)
            } else {
                ring.at(b + 1)
            };
            let Some(stop) = stop else { continue };
            // Buckets before a reset start from the reset's counters.
            let (begin, start) = if reset_at > begin {
                (
                    reset_at.min(end),
                    Snap {
                        flat: max_each(&start.flat, &reset_snap.flat),
                        hists: start
                            .hists
                            .iter()
                            .zip(&reset_snap.hists)
                            .map(|(a, r)| a.max_each(r))
                            .collect(),
                    },
                )
            } else {
                (
                    begin,
                    Snap {
                        flat: start.flat.clone(),
                        hists: start.hists.clone(),
                    },
                )
            };
            let stop_flat = max_each(&stop.flat, &start.flat);
            out.push(build_report(
                &sub(&stop_flat, &start.flat),
                Some(&between(&stop.hists, &start.hists)),
                &names,
                (begin, end),
                (Covers::Bucket, Some(bucket)),
                None,
            ));
        }
        out
    }

    /// Starts counting afresh: reports after this cover only later events (the
    /// maximum latency restarts too). Prometheus sees the counters drop, which it
    /// treats as a counter reset. Events recorded while `reset` runs count on one
    /// side or the other (their maximum latency may be missed).
    pub fn reset(&self) {
        let now = self.shared.clock.now();
        self.tick(now);
        let mut baseline = lock(&self.shared.baseline);
        for t in self.shared.tiers.iter() {
            t.read.reset_max();
        }
        self.shared.origin.load.reset_max();
        baseline.at = now;
        baseline.reset = true;
        baseline.flat = self.flat();
        baseline.hists = self.histograms();
        baseline.keys = self
            .shared
            .keys
            .as_ref()
            .map(|k| lock(&k.map).clone())
            .unwrap_or_default();
    }

    /// The Prometheus text exposition of [`Monitor::report`]; see
    /// [`Report::to_prometheus`].
    pub fn prometheus(&self) -> String {
        self.report().to_prometheus(&self.shared.prefix)
    }

    fn top_keys(&self, since: &HashMap<Box<str>, KeyStats>) -> Option<Vec<KeyCount>> {
        let keys = self.shared.keys.as_ref()?;
        let map = lock(&keys.map);
        let mut top: Vec<KeyCount> = map
            .iter()
            .map(|(k, s)| {
                let before = since.get(k).copied().unwrap_or_default();
                KeyCount {
                    key: k.to_string(),
                    requests: s.requests.saturating_sub(before.requests),
                    hits: s.hits.saturating_sub(before.hits),
                }
            })
            .filter(|k| k.requests > 0)
            .collect();
        drop(map);
        top.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.key.cmp(&b.key)));
        top.truncate(keys.capacity);
        Some(top)
    }
}

fn bucket_start(bucket: u64, bucket_ms: u64) -> Timestamp {
    Timestamp::from_unix_millis(bucket.saturating_mul(bucket_ms))
}

fn sub(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x.saturating_sub(*y)).collect()
}

fn max_each(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| *x.max(y)).collect()
}

/// What each histogram of `stop` recorded since `start`'s (a missing one
/// counts as empty), without a maximum ([`HistogramSnapshot::between`]). A
/// bucket of `start` above `stop`'s (two snapshots racing a reset) counts 0.
fn between(stop: &[HistogramSnapshot], start: &[HistogramSnapshot]) -> Vec<HistogramSnapshot> {
    let empty = HistogramSnapshot::default();
    stop.iter()
        .enumerate()
        .map(|(i, h)| h.between(start.get(i).unwrap_or(&empty)))
        .collect()
}

impl Observer for Monitor {
    #[inline]
    fn on_event(&self, event: &Event<'_>) {
        self.record(event);
    }

    /// With the default clock, the chain's time of a hit places it (one
    /// clock read per hit instead of two); with a clock of your own
    /// ([`MonitorBuilder::clock`]), the monitor reads that one.
    #[inline]
    fn on_event_at(&self, event: &Event<'_>, at: Timestamp) {
        if self.shared.default_clock {
            self.record_at(event, at);
        } else {
            self.record(event);
        }
    }
}
