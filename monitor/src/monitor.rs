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
use crate::report::{build_report, KeyCount, Report};
use crate::stripes::{self, Stripe};

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
    name: OnceLock<Box<str>>,
    counters: [AtomicU64; TIER_COUNTERS],
    /// Reads answered or failed: hits, misses, read errors and timeouts.
    read: AtomicHistogram,
}

#[repr(align(128))]
struct OriginSlot {
    counters: [AtomicU64; ORIGIN_COUNTERS],
    /// Every origin call: loads, not-found answers and failures.
    load: AtomicHistogram,
}

/// Cumulative counters at the start of one window bucket.
struct RingState {
    slots: Vec<Option<(u64, Vec<u64>)>>,
}

/// What `reset` subtracts.
struct Baseline {
    at: Timestamp,
    flat: Vec<u64>,
    hists: Vec<HistogramSnapshot>,
    keys: HashMap<Box<str>, KeyStats>,
}

struct Shared {
    clock: Arc<dyn Clock>,
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
    bucket_ms: u64,
    /// The newest window bucket snapshotted.
    current_bucket: AtomicU64,
    /// When the next bucket starts (ms): `tick` compares against it, no
    /// division on the way.
    next_bucket_ms: AtomicU64,
    ring: Mutex<RingState>,
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
/// Every event reads the monitor's clock to find its window bucket (a
/// comparison with the next bucket's start); once per bucket (a minute by
/// default) one event also copies the counters into the window ring under a
/// mutex that other events never wait for. Key tracking, when enabled, takes a mutex per read.
///
/// # Windows
///
/// [`Monitor::report`] covers everything since the monitor was built or last
/// [`reset`](Monitor::reset). [`Monitor::window`] covers the last N minutes and
/// [`Monitor::timeline`] gives one report per bucket, for plotting. Window reports
/// carry counts, rates, average times and bytes, but no percentiles (the
/// histograms are kept since start only; compute windowed quantiles from the
/// Prometheus buckets).
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
        let bucket_ms = u64::try_from(b.bucket.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let shared = Shared {
            #[cfg(feature = "metrics")]
            export: b.export.then(|| crate::export::Names::new(&b.prefix)),
            clock: b.clock,
            started: now,
            prefix: b.prefix,
            tiers: (0..MAX_TIERS)
                .map(|_| TierSlot {
                    name: OnceLock::new(),
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
            current_bucket: AtomicU64::new(0),
            next_bucket_ms: AtomicU64::new(0),
            ring: Mutex::new(RingState {
                slots: vec![None; b.buckets.max(1)],
            }),
            baseline: Mutex::new(Baseline {
                at: now,
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
        let s = &*self.shared;
        #[cfg(feature = "metrics")]
        if let Some(names) = &s.export {
            crate::export::record(names, event);
        }
        // Every event looks at the clock before it is counted, so it lands in
        // the window bucket of its time (reading it one time in eight left
        // an event of a new bucket in the old one: a window then missed it).
        self.tick(s.clock.now());
        let stripe = stripes::local();
        match event.source {
            EventSource::Tier { index, name } => {
                let Some(slot) = s.tiers.get(index) else {
                    add(&s.chain[C_DROPPED], 1);
                    return;
                };
                if slot.name.get().is_none() {
                    let _ = slot.name.set(name.into());
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
        self.rotate(ms / s.bucket_ms);
    }

    #[cold]
    fn rotate(&self, bucket: u64) {
        let s = &*self.shared;
        let mut ring = match s.ring.try_lock() {
            Ok(ring) => ring,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            // Another event is rotating: this one lands on either side of the
            // boundary, and is counted either way.
            Err(TryLockError::WouldBlock) => return,
        };
        let current = s.current_bucket.load(Ordering::Acquire);
        if bucket <= current {
            return;
        }
        let flat = self.flat();
        let len = ring.slots.len() as u64;
        let first = if current == 0 {
            bucket.saturating_sub(len - 1)
        } else {
            (current + 1).max(bucket.saturating_sub(len - 1))
        };
        for b in first..=bucket {
            ring.slots[(b % len) as usize] = Some((b, flat.clone()));
        }
        s.current_bucket.store(bucket, Ordering::Release);
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
            .map(|t| t.name.get().map(|n| n.to_string()))
            .collect()
    }

    /// Everything since the monitor was built or last reset, with latency
    /// percentiles.
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
        drop(baseline);
        build_report(&diff, Some(&hists), &self.names(), since, now, top)
    }

    /// The last `last` of activity, to the bucket: the current (partial) bucket
    /// and the full buckets before it, as many as `last` spans (rounded up, at most
    /// the configured depth), and never from before the last reset. No
    /// percentiles.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_core::{Event, EventKind, EventSource, ManualClock};
    /// use cache_monitor::Monitor;
    ///
    /// let clock = ManualClock::new();
    /// let monitor = Monitor::builder().clock(clock.clone()).build();
    /// let hit = Event { kind: EventKind::Hit, source: EventSource::Tier { index: 0, name: "memory" },
    ///                   key: "k", latency: Some(Duration::from_micros(5)), bytes: 10, error: None };
    /// monitor.record(&hit);
    /// clock.advance(Duration::from_secs(600));
    /// monitor.record(&hit);
    /// assert_eq!(monitor.window(Duration::from_secs(300)).requests, 1);
    /// assert_eq!(monitor.report().requests, 2);
    /// ```
    pub fn window(&self, last: Duration) -> Report {
        let now = self.shared.clock.now();
        self.tick(now);
        let flat = self.flat();
        let (start_bucket, start) = self.window_start(last);
        let baseline = lock(&self.shared.baseline);
        let (since, start) = if baseline.at > start_bucket {
            (baseline.at, baseline.flat.clone())
        } else {
            (start_bucket, start)
        };
        drop(baseline);
        build_report(&sub(&flat, &start), None, &self.names(), since, now, None)
    }

    /// Start time and counters of the oldest bucket in a window of `last`.
    fn window_start(&self, last: Duration) -> (Timestamp, Vec<u64>) {
        let s = &*self.shared;
        let ring = lock(&s.ring);
        let len = ring.slots.len() as u64;
        let current = s.current_bucket.load(Ordering::Acquire);
        let span = u64::try_from(last.as_millis())
            .unwrap_or(u64::MAX)
            .div_ceil(s.bucket_ms)
            .clamp(1, len);
        let first = current.saturating_sub(span - 1);
        match &ring.slots[(first % len) as usize] {
            Some((b, flat)) if *b == first => (
                Timestamp::from_unix_millis(first.saturating_mul(s.bucket_ms)),
                flat.clone(),
            ),
            _ => (s.started, vec![0; FLAT_LEN]),
        }
    }

    /// One report per bucket over the last `last` (as [`Monitor::window`] counts
    /// it), oldest first; the last one is the current, partial bucket. For
    /// plotting hit rate and access time over time. No percentiles. Buckets from
    /// before the monitor was built (or last reset) are empty.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_core::{Event, EventKind, EventSource, ManualClock};
    /// use cache_monitor::Monitor;
    ///
    /// let clock = ManualClock::new();
    /// let monitor = Monitor::builder().clock(clock.clone()).build();
    /// let miss = Event { kind: EventKind::Miss, source: EventSource::Tier { index: 0, name: "memory" },
    ///                    key: "k", latency: Some(Duration::ZERO), bytes: 0, error: None };
    /// monitor.record(&miss);
    /// clock.advance(Duration::from_secs(60));
    /// let points = monitor.timeline(Duration::from_secs(120));
    /// assert_eq!(points.iter().map(|r| r.requests).collect::<Vec<_>>(), [1, 0]);
    /// ```
    pub fn timeline(&self, last: Duration) -> Vec<Report> {
        let s = &*self.shared;
        let now = s.clock.now();
        self.tick(now);
        let flat = self.flat();
        let names = self.names();
        let (reset_at, reset_flat) = {
            let b = lock(&s.baseline);
            (b.at, b.flat.clone())
        };
        let ring = lock(&s.ring);
        let len = ring.slots.len() as u64;
        let current = s.current_bucket.load(Ordering::Acquire);
        let span = u64::try_from(last.as_millis())
            .unwrap_or(u64::MAX)
            .div_ceil(s.bucket_ms)
            .clamp(1, len);
        let first = current.saturating_sub(span - 1);
        let at = |b: u64| -> Option<&Vec<u64>> {
            match &ring.slots[(b % len) as usize] {
                Some((tag, flat)) if *tag == b => Some(flat),
                _ => None,
            }
        };
        let mut out = Vec::new();
        for b in first..=current {
            let begin = Timestamp::from_unix_millis(b.saturating_mul(s.bucket_ms));
            let end = if b == current {
                now
            } else {
                Timestamp::from_unix_millis((b + 1).saturating_mul(s.bucket_ms))
            };
            let Some(start) = at(b) else { continue };
            let stop = if b == current { Some(&flat) } else { at(b + 1) };
            let Some(stop) = stop else { continue };
            // Buckets before a reset start from the reset's counters.
            let (begin, start) = if reset_at > begin {
                (reset_at.min(end), max_each(start, &reset_flat))
            } else {
                (begin, start.clone())
            };
            let stop = max_each(stop, &start);
            out.push(build_report(
                &sub(&stop, &start),
                None,
                &names,
                begin,
                end,
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

fn sub(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x.saturating_sub(*y)).collect()
}

fn max_each(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| *x.max(y)).collect()
}

impl Observer for Monitor {
    #[inline]
    fn on_event(&self, event: &Event<'_>) {
        self.record(event);
    }
}
