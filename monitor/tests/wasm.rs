//! The monitor in a real browser (headless Chromium): recording, a chain, reports.
#![cfg(target_family = "wasm")]
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cache_core::{
    loader_fn, BoxError, Clock, Entry, Event, EventKind, EventSource, ManualClock, MemoryTier,
    Source, SystemClock, Tier, TieredCache,
};
use cache_monitor::Monitor;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
fn records_events_and_reports_on_the_default_clock() {
    // The default monitor reads the wall clock (Date.now() on wasm32), which must not panic.
    let m = Monitor::new();
    let tier = EventSource::Tier {
        index: 0,
        name: "memory",
    };
    for i in 1..=60u64 {
        let kind = if i % 10 == 0 {
            EventKind::Miss
        } else {
            EventKind::Hit
        };
        m.record(&Event {
            kind,
            source: tier,
            key: "k",
            latency: Some(Duration::from_nanos(i)),
            bytes: 100,
            error: None,
        });
    }
    let r = m.report();
    assert_eq!(r.requests, 60);
    assert_eq!(r.hits, 54);
    assert_eq!(r.hit_rate, Some(0.9));
    let l = r.tiers[0].latency.as_ref().unwrap();
    assert_eq!(l.p50, Some(Duration::from_nanos(30)));
    assert_eq!(l.p99, Some(Duration::from_nanos(60)));
    assert_eq!(m.window(Duration::from_secs(60)).requests, 60);
    assert!(r.to_string().contains("hit rate 90.0%"));
    assert!(m.prometheus().contains("cache_requests_total 60\n"));
}

#[wasm_bindgen_test]
async fn monitors_a_chain_in_the_browser() {
    let clock = ManualClock::new();
    let m = Monitor::builder().clock(clock.clone()).build();
    let cache: TieredCache<u64, String> = TieredCache::builder()
        .tier(Tier::new(MemoryTier::builder().name("page").build()))
        .tier(Tier::new(MemoryTier::builder().name("session").build()))
        .origin(loader_fn(|id: u64| async move {
            Ok::<_, BoxError>(Some(Entry::expiring_in(
                format!("avatar-{id}"),
                SystemClock.now(),
                Duration::from_secs(60),
            )))
        }))
        .observer(m.clone())
        .build();
    assert_eq!(cache.get(&1).await.unwrap().unwrap().source, Source::Origin);
    assert_eq!(
        cache.get(&1).await.unwrap().unwrap().source,
        Source::Tier {
            index: 0,
            name: "page"
        }
    );
    clock.advance(Duration::from_secs(120));
    assert_eq!(
        cache.get(&1).await.unwrap().unwrap().source,
        Source::Tier {
            index: 0,
            name: "page"
        }
    );
    let r = m.report();
    assert_eq!((r.requests, r.hits, r.origin.loads), (3, 2, 1));
    assert_eq!(r.bytes_saved, 2 * "avatar-1".len() as u64);
    assert_eq!(r.tiers[1].writes, 1);
    // Two minutes on: the window of the last minute holds only the third read.
    assert_eq!(m.window(Duration::from_secs(60)).requests, 1);
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.contains("\"requests\":3"));
}
