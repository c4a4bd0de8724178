//! Feature `metrics`: a chain's events reach the `metrics` facade through the
//! monitor, with tier and event labels and never a key.
#![cfg(not(target_family = "wasm"))]
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cache_core::{loader_fn, BoxError, Clock, Entry, ManualClock, MemoryTier, Tier, TieredCache};
use cache_monitor::Monitor;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};

fn labels(key: &CompositeKey) -> Vec<(String, String)> {
    key.key()
        .labels()
        .map(|l| (l.key().to_owned(), l.value().to_owned()))
        .collect()
}

#[test]
fn the_monitor_exports_counts_latencies_and_bytes_through_the_metrics_facade() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let clock = ManualClock::new();
    let monitor = Monitor::builder()
        .metric_prefix("avatars")
        .export_metrics()
        .build();
    let c = clock.clone();
    let cache: TieredCache<String, String> = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::new(
            MemoryTier::builder()
                .name("hot")
                .clock(clock.clone())
                .build(),
        ))
        .origin(loader_fn(move |key: String| {
            let now = c.now();
            async move {
                Ok::<_, BoxError>(Some(Entry::expiring_in(
                    format!("url-of-{key}"),
                    now,
                    Duration::from_secs(60),
                )))
            }
        }))
        .observer(monitor.clone())
        .build();
    metrics::with_local_recorder(&recorder, || {
        futures_executor::block_on(async {
            for _ in 0..3 {
                cache.get(&"user:secret-42".to_string()).await.unwrap();
            }
        });
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let find = |kind: MetricKind, name: &str, tier: &str, event: &str| {
        snapshot.iter().find_map(|(key, _, _, value)| {
            let l = labels(key);
            (key.kind() == kind
                && key.key().name() == name
                && l.contains(&("tier".into(), tier.into()))
                && l.contains(&("event".into(), event.into())))
            .then_some(value)
        })
    };
    // One miss, one origin load, one write into the tier, two hits.
    assert_eq!(
        find(MetricKind::Counter, "avatars_events_total", "hot", "hit"),
        Some(&DebugValue::Counter(2))
    );
    assert_eq!(
        find(MetricKind::Counter, "avatars_events_total", "hot", "miss"),
        Some(&DebugValue::Counter(1))
    );
    assert_eq!(
        find(
            MetricKind::Counter,
            "avatars_events_total",
            "origin",
            "origin_load"
        ),
        Some(&DebugValue::Counter(1))
    );
    let bytes = "url-of-user:secret-42".len() as u64;
    assert_eq!(
        find(MetricKind::Counter, "avatars_bytes_total", "hot", "hit"),
        Some(&DebugValue::Counter(2 * bytes))
    );
    // Only timed calls reach the histogram: this thread's first in-process
    // answer (the miss) is, the next 63 (the hits) are not; the origin's
    // call always is.
    assert!(
        matches!(
            find(MetricKind::Histogram, "avatars_latency_seconds", "hot", "miss"),
            Some(DebugValue::Histogram(v)) if v.len() == 1
        ),
        "no latency histogram for the timed miss"
    );
    assert!(
        find(
            MetricKind::Histogram,
            "avatars_latency_seconds",
            "hot",
            "hit"
        )
        .is_none(),
        "untimed hits recorded a latency"
    );
    assert!(
        matches!(
            find(MetricKind::Histogram, "avatars_latency_seconds", "origin", "origin_load"),
            Some(DebugValue::Histogram(v)) if v.len() == 1
        ),
        "no latency histogram for the origin load"
    );
    // Keys are user data: never a label or a name.
    for (key, ..) in &snapshot {
        let text = format!("{} {:?}", key.key().name(), labels(key));
        assert!(!text.contains("secret"), "a key leaked into {text}");
    }
    // The monitor's own figures are unchanged by the export.
    assert_eq!(monitor.report().tiers[0].hits, 2);
}

#[test]
fn without_export_metrics_nothing_reaches_the_facade() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let monitor = Monitor::new();
    let cache: TieredCache<String, String> = TieredCache::builder()
        .tier(Tier::new(MemoryTier::new()))
        .observer(monitor)
        .build();
    metrics::with_local_recorder(&recorder, || {
        futures_executor::block_on(cache.get(&"k".to_string())).unwrap();
    });
    assert!(snapshotter.snapshot().into_vec().is_empty());
}
