//! Prometheus text exposition (format 0.0.4) of a [`Report`].

use std::fmt::Write;

use crate::report::{LatencyStats, Report, TierStats};

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn tier_labels(t: &TierStats) -> String {
    format!("tier=\"{}\",index=\"{}\"", escape(&t.name), t.index)
}

fn histogram(out: &mut String, name: &str, labels: &str, l: &LatencyStats) {
    let sep = if labels.is_empty() { "" } else { "," };
    for b in &l.buckets {
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{}\"}} {}",
            b.le, b.count
        );
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", l.count);
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", l.sum.as_secs_f64());
    let _ = writeln!(out, "{name}_count{braces} {}", l.count);
}

type TierCounter = (&'static str, &'static str, fn(&TierStats) -> u64);

const TIER_COUNTERS: [TierCounter; 12] = [
    ("tier_hits_total", "Reads answered by the tier.", |t| t.hits),
    (
        "tier_misses_total",
        "Reads the tier could not answer.",
        |t| t.misses,
    ),
    (
        "tier_errors_total",
        "Failed tier calls (reads, writes, removals).",
        |t| t.errors,
    ),
    (
        "tier_timeouts_total",
        "Tier calls that ran past the tier's timeout.",
        |t| t.timeouts,
    ),
    (
        "tier_read_failures_total",
        "Reads that failed or timed out.",
        |t| t.read_failures,
    ),
    (
        "tier_skipped_total",
        "Reads that skipped the tier (circuit breaker open).",
        |t| t.skips,
    ),
    (
        "tier_backfills_total",
        "Entries found lower down and written into the tier.",
        |t| t.backfills,
    ),
    (
        "tier_writes_total",
        "Entries written by put or after an origin load.",
        |t| t.writes,
    ),
    (
        "tier_invalidations_total",
        "Keys, prefixes or clears removed from the tier.",
        |t| t.invalidations,
    ),
    (
        "tier_refused_fills_total",
        "Fenced writes the tier refused: an invalidation or newer write came first.",
        |t| t.refused_fills,
    ),
    (
        "tier_served_bytes_total",
        "Payload bytes served by the tier's hits.",
        |t| t.bytes_served,
    ),
    (
        "tier_written_bytes_total",
        "Payload bytes written into the tier.",
        |t| t.bytes_written,
    ),
];

impl Report {
    /// The report in the Prometheus text format, every metric named
    /// `<prefix>_...`, with `HELP` and `TYPE` lines, base units (seconds, bytes),
    /// counters ending in `_total` and a `tier` (name) and `index` label on tier
    /// metrics. Histograms are exported with `le` bounds from 1 µs to 10 s;
    /// each bound is the top of an internal bucket, so the counts are exact.
    ///
    /// | metric | type |
    /// |---|---|
    /// | `_requests_total` | counter: reads through the chain |
    /// | `_tier_{hits,misses,errors,timeouts,read_failures,skipped,backfills,writes,invalidations,refused_fills}_total` | counters |
    /// | `_tier_{served,written}_bytes_total` | counters |
    /// | `_tier_read_duration_seconds` | histogram |
    /// | `_origin_{loads,not_found,errors,coalesced}_total`, `_origin_loaded_bytes_total` | counters |
    /// | `_origin_duration_seconds` | histogram |
    /// | `_negative_hits_total`, `_stale_served_total`, `_monitor_dropped_events_total` | counters |
    ///
    /// Key names never appear (they may carry user data). Window reports have no
    /// histograms, so only their counters are written.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_core::{Event, EventKind, EventSource};
    /// use cache_monitor::Monitor;
    ///
    /// let monitor = Monitor::new();
    /// monitor.record(&Event { kind: EventKind::Hit, source: EventSource::Tier { index: 0, name: "memory" },
    ///                         key: "k", latency: Some(Duration::from_micros(3)), bytes: 42, error: None });
    /// let text = monitor.report().to_prometheus("cache");
    /// assert!(text.contains("cache_tier_hits_total{tier=\"memory\",index=\"0\"} 1\n"));
    /// assert!(text.contains("cache_tier_served_bytes_total{tier=\"memory\",index=\"0\"} 42\n"));
    /// assert!(text.contains("cache_tier_read_duration_seconds_count{tier=\"memory\",index=\"0\"} 1\n"));
    /// ```
    pub fn to_prometheus(&self, prefix: &str) -> String {
        let p = prefix;
        let mut out = String::new();

        let name = format!("{p}_requests_total");
        header(
            &mut out,
            &name,
            "counter",
            "Reads through the cache chain (counted at the first tier).",
        );
        let _ = writeln!(out, "{name} {}", self.requests);

        for (suffix, help, get) in TIER_COUNTERS {
            let name = format!("{p}_{suffix}");
            header(&mut out, &name, "counter", help);
            for t in &self.tiers {
                let _ = writeln!(out, "{name}{{{}}} {}", tier_labels(t), get(t));
            }
        }

        if self.tiers.iter().any(|t| t.latency.is_some()) {
            let name = format!("{p}_tier_read_duration_seconds");
            header(
                &mut out,
                &name,
                "histogram",
                "Tier read latency (hits, misses, failed reads).",
            );
            for t in &self.tiers {
                if let Some(l) = &t.latency {
                    histogram(&mut out, &name, &tier_labels(t), l);
                }
            }
        }

        let o = &self.origin;
        for (suffix, help, value) in [
            (
                "origin_loads_total",
                "Values loaded from the origin.",
                o.loads,
            ),
            (
                "origin_not_found_total",
                "Origin loads that found no value.",
                o.not_found,
            ),
            ("origin_errors_total", "Origin loads that failed.", o.errors),
            (
                "origin_coalesced_total",
                "Reads that joined an origin load in flight.",
                o.coalesced,
            ),
            (
                "origin_loaded_bytes_total",
                "Payload bytes loaded from the origin.",
                o.bytes_loaded,
            ),
            (
                "negative_hits_total",
                "Reads answered by the negative cache.",
                self.negative_hits,
            ),
            (
                "stale_served_total",
                "Reads served an expired value because the origin failed.",
                self.stale_served,
            ),
            (
                "resyncs_total",
                "In-process tiers flushed because invalidations may have been missed.",
                self.resyncs,
            ),
            (
                "monitor_dropped_events_total",
                "Events the monitor could not place.",
                self.dropped_events,
            ),
        ] {
            let name = format!("{p}_{suffix}");
            header(&mut out, &name, "counter", help);
            let _ = writeln!(out, "{name} {value}");
        }

        if let Some(l) = &o.latency {
            let name = format!("{p}_origin_duration_seconds");
            header(
                &mut out,
                &name,
                "histogram",
                "Origin call latency (loads, not found, failures).",
            );
            histogram(&mut out, &name, "", l);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
