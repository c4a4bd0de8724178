//! Feature `metrics`: the monitor's events, forwarded to the
//! [`metrics`](https://docs.rs/metrics) facade so any `metrics` exporter
//! (Prometheus, StatsD, OpenTelemetry...) picks them up.

use cache_core::{Event, EventKind, EventSource};

/// The metric names, made once from the monitor's prefix.
pub(crate) struct Names {
    events: String,
    latency: String,
    bytes: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Self {
        Names {
            events: format!("{prefix}_events_total"),
            latency: format!("{prefix}_latency_seconds"),
            bytes: format!("{prefix}_bytes_total"),
        }
    }
}

/// The `event` label of a kind.
fn kind(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Hit => "hit",
        EventKind::Miss => "miss",
        EventKind::Error => "error",
        EventKind::Timeout => "timeout",
        EventKind::Skipped => "skipped",
        EventKind::Backfill => "backfill",
        EventKind::Write => "write",
        EventKind::Invalidate => "invalidate",
        EventKind::OriginLoad => "origin_load",
        EventKind::OriginNotFound => "origin_not_found",
        EventKind::OriginError => "origin_error",
        EventKind::Coalesced => "coalesced",
        EventKind::StaleServed => "stale_served",
        EventKind::NegativeHit => "negative_hit",
        EventKind::Refused => "refused",
        EventKind::Resync => "resync",
        _ => "other",
    }
}

/// Forwards one event: a count per tier and kind, the latency of tier and
/// origin calls, and the bytes moved (when any). Keys are user data and are
/// never a label.
pub(crate) fn record(names: &Names, event: &Event<'_>) {
    let (tier, timed) = match event.source {
        EventSource::Tier { name, .. } => (name.to_owned(), true),
        EventSource::Origin => ("origin".to_owned(), true),
        EventSource::Chain => ("chain".to_owned(), false),
    };
    let kind = kind(event.kind);
    let labels = [("tier", tier), ("event", kind.to_owned())];
    metrics::counter!(names.events.clone(), &labels).increment(1);
    // Tier and origin calls are timed (however fast); chain events wait on nothing.
    if timed {
        if let Some(latency) = event.latency {
            metrics::histogram!(names.latency.clone(), &labels).record(latency.as_secs_f64());
        }
    }
    if event.bytes > 0 {
        metrics::counter!(names.bytes.clone(), &labels).increment(event.bytes as u64);
    }
}
