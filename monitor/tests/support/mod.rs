//! What the monitor suites share: events as the chain reports them.
#![allow(dead_code)]

use std::time::Duration;

use cache_core::{Event, EventKind, EventSource};

/// Tier `index` of a three-tier chain (`memory`, `shared`, `third`).
pub(crate) fn tier(index: usize) -> EventSource<'static> {
    EventSource::Tier {
        index,
        name: ["memory", "shared", "third"][index.min(2)],
    }
}

/// An event for key `user:1`, timed at `latency`, with `bytes`.
pub(crate) fn event(
    kind: EventKind,
    source: EventSource<'static>,
    latency: Duration,
    bytes: usize,
) -> Event<'static> {
    Event {
        kind,
        source,
        key: "user:1",
        latency: Some(latency),
        bytes,
        error: None,
    }
}
