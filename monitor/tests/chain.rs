//! End to end: a real `TieredCache` (two memory tiers and an origin) with the
//! monitor attached.
#![cfg(not(target_family = "wasm"))]
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cache_core::{
    loader_fn, BoxError, Clock, Entry, FaultTier, ManualClock, MemoryTier, Operation, Source,
    SystemClock, Tier, TieredCache,
};
use cache_monitor::Monitor;
use futures_executor::block_on;

fn value(id: u64) -> String {
    format!("https://img.example/avatars/{id}.png")
}

#[test]
fn chain_hits_misses_backfills_loads_and_bytes_saved() {
    let clock = ManualClock::new();
    let monitor = Monitor::builder().clock(clock.clone()).build();
    let origin_calls = Arc::new(AtomicUsize::new(0));
    let (calls, origin_clock) = (origin_calls.clone(), clock.clone());
    let cache: TieredCache<u64, String> = TieredCache::builder()
        .clock(clock.clone())
        .tier(
            Tier::new(
                MemoryTier::builder()
                    .name("l1")
                    .clock(clock.clone())
                    .build(),
            )
            .ttl(Duration::from_secs(60)),
        )
        .tier(
            Tier::new(
                MemoryTier::builder()
                    .name("l2")
                    .clock(clock.clone())
                    .build(),
            )
            .ttl(Duration::from_secs(3_000)),
        )
        .origin(loader_fn(move |id: u64| {
            calls.fetch_add(1, Ordering::SeqCst);
            let now = origin_clock.now();
            async move {
                Ok::<_, BoxError>(
                    (id != 404)
                        .then(|| Entry::expiring_in(value(id), now, Duration::from_secs(3_600))),
                )
            }
        }))
        .observer(monitor.clone())
        .build();

    block_on(async {
        assert_eq!(cache.get(&1).await.unwrap().unwrap().source, Source::Origin);
        assert_eq!(
            cache.get(&1).await.unwrap().unwrap().source,
            Source::Tier {
                index: 0,
                name: "l1"
            }
        );
        clock.advance(Duration::from_secs(60)); // l1's TTL is over; l2 still holds it
        assert_eq!(
            cache.get(&1).await.unwrap().unwrap().source,
            Source::Tier {
                index: 1,
                name: "l2"
            }
        );
        assert_eq!(
            cache.get(&1).await.unwrap().unwrap().source,
            Source::Tier {
                index: 0,
                name: "l1"
            }
        );
        assert_eq!(cache.get(&2).await.unwrap().unwrap().source, Source::Origin);
        assert!(cache.get(&404).await.unwrap().is_none());
        cache.invalidate(&1).await.unwrap();
    });

    let r = monitor.report();
    let len = value(1).len() as u64;
    assert_eq!(origin_calls.load(Ordering::SeqCst), 3);
    assert_eq!(r.requests, 6);
    assert_eq!(r.hits, 3);
    assert_eq!(r.hit_rate, Some(0.5));
    assert_eq!(r.bytes_saved, 3 * len);
    let (l1, l2) = (&r.tiers[0], &r.tiers[1]);
    assert_eq!((l1.name.as_str(), l2.name.as_str()), ("l1", "l2"));
    assert_eq!((l1.hits, l1.misses, l1.reads), (2, 4, 6));
    assert_eq!((l2.hits, l2.misses, l2.reads), (1, 3, 4));
    assert_eq!((l1.backfills, l2.backfills), (1, 0));
    assert_eq!((l1.writes, l2.writes), (2, 2));
    assert_eq!((l1.invalidations, l2.invalidations), (1, 1));
    assert_eq!((l1.bytes_served, l2.bytes_served), (2 * len, len));
    assert_eq!(l1.bytes_written, 3 * len); // two writes, one backfill
    assert_eq!((l1.errors, l1.timeouts, l2.errors), (0, 0, 0));
    // l1 answers synchronously: one in FAST_PATH_TIMED_EVERY per thread is
    // timed. l2 is read on the async path: every read timed.
    assert_eq!(l1.latency.as_ref().unwrap().count, l1.timed_reads);
    assert!((1..=6).contains(&l1.timed_reads), "{}", l1.timed_reads);
    assert_eq!(l2.latency.as_ref().unwrap().count, 4);
    assert_eq!(l2.timed_reads, 4);
    assert_eq!(r.latency_timed_every, cache_core::FAST_PATH_TIMED_EVERY);
    assert_eq!(r.origin.loads, 2);
    assert_eq!(r.origin.not_found, 1);
    assert_eq!(r.origin.bytes_loaded, 2 * len);
    assert_eq!(r.origin.latency.as_ref().unwrap().count, 3);
    assert!(r.average_access_time.is_some());
    assert_eq!(r.dropped_events, 0);
    println!("{r}");
}

#[test]
fn chain_tier_failures_show_as_errors_not_lost_reads() {
    let clock = ManualClock::new();
    let monitor = Monitor::builder().clock(clock.clone()).build();
    let (faulty, faults) = FaultTier::new(
        MemoryTier::<u64, String>::builder()
            .name("shared")
            .clock(clock.clone())
            .build(),
    );
    let origin_clock = clock.clone();
    let cache: TieredCache<u64, String> = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::new(
            MemoryTier::builder()
                .name("local")
                .clock(clock.clone())
                .build(),
        ))
        .tier(Tier::new(faulty).no_circuit_breaker())
        .origin(loader_fn(move |id: u64| {
            let now = origin_clock.now();
            async move {
                Ok::<_, BoxError>(Some(Entry::expiring_in(
                    value(id),
                    now,
                    Duration::from_secs(60),
                )))
            }
        }))
        .observer(monitor.clone())
        .build();
    faults.only(Some(&[Operation::Get]));
    faults.set_failing(true);
    block_on(async {
        // Reads fail at the shared tier, then load from the origin. A tier whose
        // read failed handed out no stamp, so the origin's fill skips it.
        for id in 0..3 {
            assert_eq!(
                cache.get(&id).await.unwrap().unwrap().source,
                Source::Origin
            );
        }
    });
    let r = monitor.report();
    let shared = &r.tiers[1];
    assert_eq!(shared.name, "fault(shared)");
    assert_eq!(
        (shared.errors, shared.read_failures, shared.reads),
        (3, 3, 3)
    );
    assert_eq!(shared.writes, 0);
    assert_eq!(r.tiers[0].writes, 3);
    assert_eq!(r.origin.loads, 3);
    assert_eq!(r.requests, 3);
    assert_eq!(r.hit_rate, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reads_through_a_chain_are_all_accounted_for() {
    const TASKS: u64 = 16;
    const READS: u64 = 400;
    const KEYS: u64 = 50;
    let monitor = Monitor::builder().clock(ManualClock::new()).build();
    let cache: TieredCache<u64, String> = TieredCache::builder()
        .tier(Tier::new(
            MemoryTier::builder().name("l1").max_entries(20).build(),
        ))
        .tier(Tier::new(MemoryTier::builder().name("l2").build()))
        .origin(loader_fn(|id: u64| async move {
            tokio::task::yield_now().await; // let other reads join the load
            Ok::<_, BoxError>(Some(Entry::expiring_in(
                value(1_000 + id), // same length for every key
                cache_core::SystemClock.now(),
                Duration::from_secs(600),
            )))
        }))
        .observer(monitor.clone())
        .build();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let cache = cache.clone();
            tokio::spawn(async move {
                for i in 0..READS {
                    let key = (t * 7 + i * 13) % KEYS;
                    assert!(cache.get(&key).await.unwrap().is_some());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let r = monitor.report();
    assert_eq!(r.requests, TASKS * READS, "{r:?}");
    // Every read was answered by a tier, started an origin load, or joined one.
    assert_eq!(
        r.hits + r.origin.loads + r.origin.coalesced,
        r.requests,
        "{r}"
    );
    assert!(r.origin.loads >= KEYS, "every key was loaded at least once");
    let (l1, l2) = (&r.tiers[0], &r.tiers[1]);
    assert_eq!(l1.reads, r.requests);
    assert_eq!(l2.reads, l1.misses, "every l1 miss went on to l2");
    assert_eq!(
        r.bytes_saved,
        (l1.hits + l2.hits) * value(1_000).len() as u64
    );
    println!("{r}");
}

/// In-process answers are counted exactly and timed one in
/// `FAST_PATH_TIMED_EVERY` per thread; the mean is over the timed ones.
#[test]
fn in_process_hits_are_counted_exactly_and_timed_one_in_sixty_four() {
    let monitor = Monitor::new();
    let cache: TieredCache<u64, String> = TieredCache::builder()
        .tier(Tier::new(MemoryTier::builder().name("l1").build()))
        .origin(loader_fn(|k: u64| async move {
            Ok::<_, BoxError>(Some(Entry::expiring_in(
                value(k),
                SystemClock.now(),
                Duration::from_secs(600),
            )))
        }))
        .observer(monitor.clone())
        .build();
    let every = u64::from(cache_core::FAST_PATH_TIMED_EVERY);
    // On a thread of its own, so its countdown starts fresh.
    std::thread::spawn(move || {
        block_on(async {
            cache.get(&1).await.unwrap();
            for _ in 0..10 * every {
                cache.get(&1).await.unwrap();
            }
        })
    })
    .join()
    .unwrap();
    let r = monitor.report();
    let l1 = &r.tiers[0];
    assert_eq!((l1.hits, l1.misses), (10 * every, 1));
    assert_eq!(l1.bytes_served, 10 * every * value(1).len() as u64);
    // The miss and the hits share one countdown: 641 answers, the 1st,
    // 65th, ... timed.
    assert_eq!(l1.timed_reads, 11);
    assert_eq!(l1.latency.as_ref().unwrap().count, 11);
    assert!(l1.average_latency.is_some());
}
