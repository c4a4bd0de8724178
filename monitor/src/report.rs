//! [`Report`]: a snapshot of a [`Monitor`](crate::Monitor)'s counters, with the
//! console table ([`Display`](fmt::Display)) and serde JSON.

use std::fmt;
use std::time::Duration;

use cache_core::Timestamp;
use serde::{Deserialize, Serialize};

use crate::histogram::{export_bounds_ns, HistogramSnapshot};
use crate::layout::{
    CHAIN_OFFSET, C_DROPPED, C_NEGATIVE_HITS, C_RESYNCS, C_STALE_SERVED, MAX_TIERS, ORIGIN_OFFSET,
    O_BYTES, O_COALESCED, O_ERRORS, O_LOADS, O_NOT_FOUND, O_NS, TIER_STRIDE, T_BACKFILLS,
    T_BYTES_SERVED, T_BYTES_WRITTEN, T_ERRORS, T_HITS, T_INVALIDATIONS, T_MISSES, T_READ_FAILURES,
    T_READ_NS, T_REFUSED, T_SKIPS, T_TIMED_READS, T_TIMEOUTS, T_WRITES,
};

fn default_timed_every() -> u32 {
    1
}

/// What a [`Report`] counts from (see [`Report::period`]).
///
/// ```
/// use cache_monitor::{Covers, Monitor};
///
/// let monitor = Monitor::new();
/// assert_eq!(monitor.report().period.covers, Covers::SinceStart);
/// monitor.reset();
/// assert_eq!(monitor.report().period.covers, Covers::SinceReset);
/// assert_eq!(Covers::SinceReset.to_string(), "since reset");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Covers {
    /// Everything since the monitor was built ([`Monitor::report`](crate::Monitor::report)).
    SinceStart,
    /// Everything since the last [`Monitor::reset`](crate::Monitor::reset).
    SinceReset,
    /// The last buckets of a ring, the current one partial
    /// ([`Monitor::window`](crate::Monitor::window)); never from before a reset.
    Window,
    /// One bucket of a [`Monitor::timeline`](crate::Monitor::timeline).
    Bucket,
}

impl fmt::Display for Covers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Covers::SinceStart => "since start",
            Covers::SinceReset => "since reset",
            Covers::Window => "window",
            Covers::Bucket => "bucket",
        })
    }
}

/// The period a [`Report`] covers: what it counts from, how long that is,
/// and for windows the bucket width they are counted in. The period runs
/// from [`Report::since`] to [`Report::until`].
///
/// ```
/// use std::time::Duration;
/// use cache_core::ManualClock;
/// use cache_monitor::{Covers, Monitor};
///
/// let clock = ManualClock::new();
/// let monitor = Monitor::builder().clock(clock.clone()).build();
/// clock.advance(Duration::from_secs(90));
/// let period = monitor.report().period;
/// assert_eq!((period.covers, period.length, period.bucket), (Covers::SinceStart, Duration::from_secs(90), None));
/// let json = serde_json::to_value(&monitor.window(Duration::from_secs(300))).unwrap();
/// assert_eq!(json["period"]["covers"], "window");
/// assert_eq!(json["period"]["bucket"], 60_000.0); // milliseconds
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    /// What the report counts from.
    pub covers: Covers,
    /// `until - since`.
    #[serde(with = "ms")]
    pub length: Duration,
    /// For windows and timeline buckets, the width of the ring's buckets
    /// (a window is whole buckets and the current partial one); `None` for
    /// reports since start or reset.
    #[serde(with = "opt_ms")]
    pub bucket: Option<Duration>,
}

/// One of the busiest keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCount {
    /// The key's string form.
    pub key: String,
    /// Reads of this key (at the first tier). For keys that took over another's
    /// slot when the table was full, an upper bound.
    pub requests: u64,
    /// Reads answered by the first tier.
    pub hits: u64,
}

/// One exported histogram bucket: how many values were at most `le` seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Upper bound, in seconds (inclusive).
    pub le: f64,
    /// Values at most `le` (cumulative).
    pub count: u64,
}

/// A latency distribution.
///
/// Percentiles are exact to the histogram's resolution: each is the upper bound of
/// the bucket holding the value of nearest rank (`ceil(q × count)`), capped at the
/// maximum. Below 64 ns every nanosecond has its own bucket; above, a bucket is at
/// most 1/32 (3.1%) of its lower bound wide, so a percentile is never below the
/// true value nor more than 3.1% above it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyStats {
    /// Values recorded.
    pub count: u64,
    /// Their sum.
    #[serde(with = "ms")]
    pub sum: Duration,
    /// Median.
    #[serde(with = "opt_ms")]
    pub p50: Option<Duration>,
    /// 95th percentile.
    #[serde(with = "opt_ms")]
    pub p95: Option<Duration>,
    /// 99th percentile.
    #[serde(with = "opt_ms")]
    pub p99: Option<Duration>,
    /// The largest value (exact); `None` in
    /// [`Monitor::window`](crate::Monitor::window) and
    /// [`Monitor::timeline`](crate::Monitor::timeline) reports, whose rings
    /// keep no maximum per bucket (their percentiles are then each their
    /// bucket's upper bound).
    #[serde(with = "opt_ms")]
    pub max: Option<Duration>,
    /// Cumulative counts at fixed bounds from 1 µs to 10 s (the `+Inf` bucket is
    /// `count`), as exported to Prometheus.
    pub buckets: Vec<Bucket>,
}

impl LatencyStats {
    fn from_histogram(h: &HistogramSnapshot) -> Self {
        let count = h.count();
        let q = |q: f64| h.quantile(q).map(Duration::from_nanos);
        let bounds = export_bounds_ns();
        let buckets = bounds
            .iter()
            .zip(h.cumulative(&bounds))
            .map(|(&ns, count)| Bucket {
                le: ns as f64 / 1e9,
                count,
            })
            .collect();
        LatencyStats {
            count,
            sum: Duration::from_nanos(h.sum_ns),
            p50: q(0.50),
            p95: q(0.95),
            p99: q(0.99),
            max: h.max_ns.filter(|_| count > 0).map(Duration::from_nanos),
            buckets,
        }
    }
}

/// One tier's numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TierStats {
    /// Position in the chain, 0 read first.
    pub index: usize,
    /// The tier's name (from the first event seen for this index).
    pub name: String,
    /// Reads that reached this tier and got an answer or failed:
    /// `hits + misses + read_failures`.
    pub reads: u64,
    /// Reads answered with an unexpired entry.
    pub hits: u64,
    /// Reads that found nothing (or only an expired entry).
    pub misses: u64,
    /// Failed calls of any kind (reads, writes, removals).
    pub errors: u64,
    /// Calls of any kind that ran past the tier's timeout.
    pub timeouts: u64,
    /// Errors and timeouts of reads (`get`, `get_many`).
    pub read_failures: u64,
    /// Reads that skipped the tier because its circuit breaker was open.
    pub skips: u64,
    /// Entries found lower down and written into this tier.
    pub backfills: u64,
    /// Entries written by `put` or after an origin load.
    pub writes: u64,
    /// Keys, prefixes or clears removed from this tier.
    pub invalidations: u64,
    /// Fenced writes (backfills, origin fills) this tier refused because an
    /// invalidation or newer write of the key came first.
    pub refused_fills: u64,
    /// Payload bytes of this tier's hits: bytes the origin did not have to send.
    pub bytes_served: u64,
    /// Payload bytes written by backfills and writes.
    pub bytes_written: u64,
    /// `hits / reads`; `None` before the first read.
    pub hit_rate: Option<f64>,
    /// Reads whose latency was measured: every read of a tier that waits;
    /// of an in-process tier's synchronous answers, one in
    /// [`Report::latency_timed_every`] per thread. The mean and the
    /// distribution are over these.
    #[serde(default)]
    pub timed_reads: u64,
    /// Mean read latency (of the timed reads); `None` before the first.
    #[serde(with = "opt_ms")]
    pub average_latency: Option<Duration>,
    /// Read latency distribution (hits, misses and failed reads; the timed
    /// ones). `None` in window reports.
    pub latency: Option<LatencyStats>,
}

/// The origin's numbers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OriginStats {
    /// Values loaded.
    pub loads: u64,
    /// Loads that found no value.
    pub not_found: u64,
    /// Loads that failed.
    pub errors: u64,
    /// Reads that joined a load already in flight instead of starting one.
    pub coalesced: u64,
    /// Payload bytes loaded.
    pub bytes_loaded: u64,
    /// Mean origin call latency (loads, not-found and failures); `None` before
    /// the first call.
    #[serde(with = "opt_ms")]
    pub average_latency: Option<Duration>,
    /// Latency distribution of origin calls. `None` in window reports.
    pub latency: Option<LatencyStats>,
}

/// A snapshot of a [`Monitor`](crate::Monitor): since start (or the last reset),
/// or over a window.
///
/// # Definitions
///
/// - `requests`: reads through the chain. Every read reaches tier 0 exactly once
///   (as a hit, a miss, a failed read or a skip), so this is tier 0's count.
/// - `hits`: reads answered by some tier (sum of the tiers' hits).
/// - `hit_rate`: `hits / requests`.
/// - `average_access_time`: the time spent reading tiers and calling the origin,
///   per request: `(Σ tier read latency + Σ origin latency) / requests`. Reads that
///   joined an origin load in flight share that one load's time; in a batch
///   (`get_many`) every key's event carries the whole batch call's latency.
/// - `bytes_saved`: bytes served from a cache tier instead of the origin (sum of
///   the tiers' `bytes_served`).
///
/// Durations serialize to JSON as float milliseconds, timestamps as Unix
/// milliseconds.
///
/// ```
/// use std::time::Duration;
/// use cache_core::{Event, EventKind, EventSource};
/// use cache_monitor::Monitor;
///
/// let monitor = Monitor::new();
/// let tier = EventSource::Tier { index: 0, name: "memory" };
/// for kind in [EventKind::Hit, EventKind::Hit, EventKind::Hit, EventKind::Miss] {
///     let bytes = if kind == EventKind::Hit { 700_000 } else { 0 };
///     monitor.record(&Event { kind, source: tier, key: "k", latency: Some(Duration::from_millis(8)), bytes, error: None });
/// }
/// let report = monitor.report();
/// assert_eq!(report.hit_rate, Some(0.75));
/// assert_eq!(report.average_access_time, Some(Duration::from_millis(8)));
/// assert!(report.to_string().contains("hit rate 75.0%, average time 8.00 ms, 2.1 MB saved"));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Start of the period covered.
    pub since: Timestamp,
    /// End of the period covered (when the report was taken).
    pub until: Timestamp,
    /// What the period is: since start, since reset, a window or a bucket,
    /// its length, and the bucket width of windows.
    pub period: Period,
    /// Reads through the chain.
    pub requests: u64,
    /// Reads answered by a tier.
    pub hits: u64,
    /// `hits / requests`; `None` before the first request.
    pub hit_rate: Option<f64>,
    /// Tier and origin time per request; `None` before the first request.
    #[serde(with = "opt_ms")]
    pub average_access_time: Option<Duration>,
    /// Bytes served from a cache tier instead of the origin.
    pub bytes_saved: u64,
    /// Tiers that reported events, by index.
    pub tiers: Vec<TierStats>,
    /// The origin.
    pub origin: OriginStats,
    /// Reads answered by the chain's negative cache.
    pub negative_hits: u64,
    /// Reads served an expired value because the origin failed.
    pub stale_served: u64,
    /// Times the in-process tiers were flushed because invalidations may have
    /// been missed (bus link down, lost message).
    pub resyncs: u64,
    /// Events the monitor could not place (tier index ≥ [`MAX_TIERS`] or an
    /// unknown kind).
    pub dropped_events: u64,
    /// The busiest keys by requests, when key tracking is on and the report is
    /// not a window.
    pub top_keys: Option<Vec<KeyCount>>,
    /// How latency is sampled: an in-process tier's synchronous answers are
    /// timed one in this many per thread
    /// ([`cache_core::FAST_PATH_TIMED_EVERY`]); every other tier call and
    /// every origin call is timed. Counts (hits, misses, bytes, errors) are
    /// exact; `average_access_time` scales each tier's timed reads to all
    /// of its reads.
    #[serde(default = "default_timed_every")]
    pub latency_timed_every: u32,
}

pub(crate) fn build_report(
    flat: &[u64],
    hists: Option<&[HistogramSnapshot]>,
    names: &[Option<String>],
    (since, until): (Timestamp, Timestamp),
    (covers, bucket): (Covers, Option<Duration>),
    top_keys: Option<Vec<KeyCount>>,
) -> Report {
    let ratio = |n: u64, d: u64| (d > 0).then(|| n as f64 / d as f64);
    let mean = |ns: u64, d: u64| (d > 0).then(|| Duration::from_nanos(ns / d));
    let mut tiers = Vec::new();
    let mut read_ns_total: u64 = 0;
    for (index, name) in names.iter().enumerate() {
        let c = &flat[index * TIER_STRIDE..(index + 1) * TIER_STRIDE];
        let reads = c[T_HITS] + c[T_MISSES] + c[T_READ_FAILURES];
        // The time of every read, estimated from the timed ones.
        if c[T_TIMED_READS] > 0 {
            let all = c[T_READ_NS] as u128 * reads as u128 / c[T_TIMED_READS] as u128;
            read_ns_total = read_ns_total.saturating_add(u64::try_from(all).unwrap_or(u64::MAX));
        }
        let Some(name) = name else { continue };
        tiers.push(TierStats {
            index,
            name: name.clone(),
            reads,
            hits: c[T_HITS],
            misses: c[T_MISSES],
            errors: c[T_ERRORS],
            timeouts: c[T_TIMEOUTS],
            read_failures: c[T_READ_FAILURES],
            skips: c[T_SKIPS],
            backfills: c[T_BACKFILLS],
            writes: c[T_WRITES],
            invalidations: c[T_INVALIDATIONS],
            refused_fills: c[T_REFUSED],
            bytes_served: c[T_BYTES_SERVED],
            bytes_written: c[T_BYTES_WRITTEN],
            hit_rate: ratio(c[T_HITS], reads),
            timed_reads: c[T_TIMED_READS],
            average_latency: mean(c[T_READ_NS], c[T_TIMED_READS]),
            latency: hists.map(|h| LatencyStats::from_histogram(&h[index])),
        });
    }
    let o = &flat[ORIGIN_OFFSET..ORIGIN_OFFSET + O_NS + 1];
    let calls = o[O_LOADS] + o[O_NOT_FOUND] + o[O_ERRORS];
    let origin = OriginStats {
        loads: o[O_LOADS],
        not_found: o[O_NOT_FOUND],
        errors: o[O_ERRORS],
        coalesced: o[O_COALESCED],
        bytes_loaded: o[O_BYTES],
        average_latency: mean(o[O_NS], calls),
        latency: hists
            .and_then(|h| h.get(MAX_TIERS))
            .map(LatencyStats::from_histogram),
    };
    let c = &flat[CHAIN_OFFSET..];
    let first = &flat[..TIER_STRIDE];
    let requests = first[T_HITS] + first[T_MISSES] + first[T_READ_FAILURES] + first[T_SKIPS];
    let hits: u64 = tiers.iter().map(|t| t.hits).sum();
    let bytes_saved = tiers.iter().map(|t| t.bytes_served).sum();
    Report {
        since,
        until,
        period: Period {
            covers,
            length: until.duration_since(since),
            bucket,
        },
        requests,
        hits,
        hit_rate: ratio(hits, requests),
        average_access_time: mean(read_ns_total.saturating_add(o[O_NS]), requests),
        bytes_saved,
        tiers,
        origin,
        negative_hits: c[C_NEGATIVE_HITS],
        stale_served: c[C_STALE_SERVED],
        resyncs: c[C_RESYNCS],
        dropped_events: c[C_DROPPED],
        top_keys,
        latency_timed_every: cache_core::FAST_PATH_TIMED_EVERY,
    }
}

/// `1.5 ms`, `12 µs`, `830 ns`, `2.10 s`.
pub(crate) struct Human(pub(crate) Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos() as f64;
        let (v, unit) = if ns < 1e3 {
            (ns, "ns")
        } else if ns < 1e6 {
            (ns / 1e3, "µs")
        } else if ns < 1e9 {
            (ns / 1e6, "ms")
        } else {
            (ns / 1e9, "s")
        };
        let text = if unit == "ns" || v >= 100.0 {
            format!("{v:.0} {unit}")
        } else if v >= 10.0 {
            format!("{v:.1} {unit}")
        } else {
            format!("{v:.2} {unit}")
        };
        f.pad(&text)
    }
}

/// A period for people: `850 ms`, `42 s`, `14 min 55 s`, `2 h 5 min`,
/// `3 d 4 h` (whole units, the two largest).
pub(crate) struct Span(pub(crate) Duration);

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs();
        let text = match s {
            0 => format!("{} ms", self.0.as_millis()),
            1..60 => format!("{s} s"),
            60..3_600 => two(s / 60, "min", s % 60, "s"),
            3_600..86_400 => two(s / 3_600, "h", s % 3_600 / 60, "min"),
            _ => two(s / 86_400, "d", s % 86_400 / 3_600, "h"),
        };
        f.pad(&text)
    }
}

fn two(big: u64, big_unit: &str, small: u64, small_unit: &str) -> String {
    if small == 0 {
        format!("{big} {big_unit}")
    } else {
        format!("{big} {big_unit} {small} {small_unit}")
    }
}

/// Decimal (SI) bytes: `2.1 MB`, `512 B`.
pub(crate) struct Bytes(pub(crate) u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0 as f64;
        let units = ["B", "kB", "MB", "GB", "TB", "PB"];
        let mut v = n;
        let mut i = 0;
        while v >= 1000.0 && i + 1 < units.len() {
            v /= 1000.0;
            i += 1;
        }
        let text = if i == 0 {
            format!("{} B", self.0)
        } else {
            format!("{v:.1} {}", units[i])
        };
        f.pad(&text)
    }
}

struct OptHuman(Option<Duration>);

impl fmt::Display for OptHuman {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) => Human(d).fmt(f),
            None => f.pad("-"),
        }
    }
}

struct Percent(Option<f64>);

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(r) => f.pad(&format!("{:.1}%", r * 100.0)),
            None => f.pad("-"),
        }
    }
}

impl fmt::Display for Report {
    /// A console table: a summary line like the original design's report
    /// ("hit rate 95.0%, average time 8.00 ms, 2.1 MB saved"), one row per tier
    /// and an origin line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let length = Span(self.period.length);
        let bucket = self.period.bucket.map(Span);
        let period = match (self.period.covers, bucket) {
            (Covers::Window, Some(bucket)) => {
                format!("over the last {length} ({bucket} buckets)")
            }
            (Covers::Bucket, Some(bucket)) => format!("of one {bucket} bucket ({length})"),
            (covers, _) => format!("{covers}, over {length}"),
        };
        writeln!(
            f,
            "cache report {period}: {} requests, hit rate {}, average time {}, {} saved",
            self.requests,
            Percent(self.hit_rate),
            OptHuman(self.average_access_time),
            Bytes(self.bytes_saved),
        )?;
        writeln!(
            f,
            "{:<3} {:<14} {:>10} {:>10} {:>10} {:>7} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
            "#", "tier", "reads", "hits", "misses", "errors", "timeouts", "skips", "hit rate", "avg", "p50",
            "p95", "p99", "max", "served"
        )?;
        for t in &self.tiers {
            let l = t.latency.as_ref();
            let name: String = t.name.chars().take(14).collect();
            writeln!(
                f,
                "{:<3} {:<14} {:>10} {:>10} {:>10} {:>7} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
                t.index,
                name,
                t.reads,
                t.hits,
                t.misses,
                t.errors,
                t.timeouts,
                t.skips,
                Percent(t.hit_rate),
                OptHuman(t.average_latency),
                OptHuman(l.and_then(|l| l.p50)),
                OptHuman(l.and_then(|l| l.p95)),
                OptHuman(l.and_then(|l| l.p99)),
                OptHuman(l.and_then(|l| l.max)),
                Bytes(t.bytes_served),
            )?;
        }
        let o = &self.origin;
        let l = o.latency.as_ref();
        write!(
            f,
            "origin: {} loads, {} not found, {} errors, {} coalesced, {} loaded, average {}",
            o.loads,
            o.not_found,
            o.errors,
            o.coalesced,
            Bytes(o.bytes_loaded),
            OptHuman(o.average_latency),
        )?;
        if let Some(l) = l {
            write!(
                f,
                ", p50 {}, p95 {}, p99 {}, max {}",
                OptHuman(l.p50),
                OptHuman(l.p95),
                OptHuman(l.p99),
                OptHuman(l.max)
            )?;
        }
        writeln!(f)?;
        let timed: u64 = self.tiers.iter().map(|t| t.timed_reads).sum();
        let reads: u64 = self.tiers.iter().map(|t| t.reads).sum();
        writeln!(
            f,
            "latency: {timed} of {reads} tier reads timed (in-process answers one in {}, every other call)",
            self.latency_timed_every
        )?;
        if self.negative_hits + self.stale_served + self.resyncs + self.dropped_events > 0 {
            writeln!(
                f,
                "chain: {} negative hits, {} stale served, {} resync flushes, {} events dropped",
                self.negative_hits, self.stale_served, self.resyncs, self.dropped_events
            )?;
        }
        if let Some(top) = &self.top_keys {
            for k in top {
                writeln!(
                    f,
                    "key {:?}: {} requests, {} hits",
                    k.key, k.requests, k.hits
                )?;
            }
        }
        Ok(())
    }
}

/// `Duration` as float milliseconds.
mod ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1e3)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        Duration::try_from_secs_f64(ms / 1e3).map_err(serde::de::Error::custom)
    }
}

/// `Option<Duration>` as float milliseconds or null.
mod opt_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_secs_f64() * 1e3)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<f64>::deserialize(d)?
            .map(|ms| Duration::try_from_secs_f64(ms / 1e3).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(Human(Duration::from_nanos(830)).to_string(), "830 ns");
        assert_eq!(Human(Duration::from_micros(12)).to_string(), "12.0 µs");
        assert_eq!(Human(Duration::from_millis(8)).to_string(), "8.00 ms");
        assert_eq!(Human(Duration::from_millis(2_100)).to_string(), "2.10 s");
        assert_eq!(Bytes(512).to_string(), "512 B");
        assert_eq!(Bytes(2_100_000).to_string(), "2.1 MB");
        assert_eq!(Bytes(1_500).to_string(), "1.5 kB");
        let s = Duration::from_secs;
        let spans = [
            (Duration::from_millis(850), "850 ms"),
            (s(42), "42 s"),
            (s(895), "14 min 55 s"),
            (s(900), "15 min"),
            (s(7_500), "2 h 5 min"),
            (s(86_400 * 3 + 3_600 * 4 + 59), "3 d 4 h"),
        ];
        for (d, text) in spans {
            assert_eq!(Span(d).to_string(), text);
        }
    }
}
