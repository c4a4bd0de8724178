//! Recording from many threads and tasks at once loses no events.
#![cfg(not(target_family = "wasm"))]
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use cache_core::{Event, EventKind, EventSource, ManualClock};
use cache_monitor::Monitor;

fn hit(index: usize, ns: u64) -> Event<'static> {
    Event {
        kind: if ns.is_multiple_of(4) {
            EventKind::Miss
        } else {
            EventKind::Hit
        },
        source: EventSource::Tier {
            index,
            name: ["memory", "shared"][index],
        },
        key: "k",
        latency: Some(Duration::from_nanos(ns)),
        bytes: if ns.is_multiple_of(4) { 0 } else { 3 },
        error: None,
    }
}

#[test]
fn many_threads_lose_no_events_even_across_window_buckets() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 50_000;
    let clock = ManualClock::new();
    // One-millisecond buckets, and a thread moving the clock: rotations race with
    // recording the whole time.
    let m = Monitor::builder()
        .clock(clock.clone())
        .window(Duration::from_millis(1), 10_000)
        .build();
    let start = Arc::new(std::sync::Barrier::new(THREADS as usize));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (m, start, clock) = (m.clone(), start.clone(), clock.clone());
            std::thread::spawn(move || {
                start.wait();
                for i in 0..PER_THREAD {
                    m.record(&hit((t % 2) as usize, i % 1_000));
                    // Every thread moves the clock now and then: bucket rotations
                    // race with the other threads' recording.
                    if i.is_multiple_of(500) {
                        clock.advance(Duration::from_millis(1));
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let ticks = THREADS * PER_THREAD / 500;

    let per_value_misses = PER_THREAD / 4; // i % 1000 divisible by 4: a quarter
    let r = m.report();
    let reads: u64 = r.tiers.iter().map(|t| t.reads).sum();
    assert_eq!(reads, THREADS * PER_THREAD);
    let misses: u64 = r.tiers.iter().map(|t| t.misses).sum();
    assert_eq!(misses, THREADS * per_value_misses);
    assert_eq!(r.bytes_saved, 3 * THREADS * (PER_THREAD - per_value_misses));
    let counted: u64 = r
        .tiers
        .iter()
        .map(|t| t.latency.as_ref().unwrap().count)
        .sum();
    assert_eq!(counted, THREADS * PER_THREAD);
    // The same sum of latencies as recorded: Σ over threads of Σ (i % 1000).
    let sum_ns: u64 = THREADS * (0..PER_THREAD).map(|i| i % 1_000).sum::<u64>();
    let sum: Duration = r
        .tiers
        .iter()
        .map(|t| t.latency.as_ref().unwrap().sum)
        .sum();
    assert_eq!(sum, Duration::from_nanos(sum_ns));
    // The timeline's buckets, boundaries aside, add up to the same total.
    let timeline = m.timeline(Duration::from_millis(10_000));
    let plotted: u64 = timeline
        .iter()
        .map(|p| p.tiers.iter().map(|t| t.reads).sum::<u64>())
        .sum();
    assert!(
        ticks < 10_000 && timeline.len() as u64 > ticks / 2,
        "{}",
        timeline.len()
    );
    assert_eq!(plotted, THREADS * PER_THREAD);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_lose_no_events() {
    let m = Monitor::builder().clock(ManualClock::new()).build();
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let m = m.clone();
            tokio::spawn(async move {
                for i in 0..2_000u64 {
                    m.record(&hit(t % 2, i + 1));
                    if i.is_multiple_of(100) {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let r = m.report();
    let reads: u64 = r.tiers.iter().map(|t| t.reads).sum();
    assert_eq!(reads, 64 * 2_000);
    assert_eq!(r.requests, 32 * 2_000, "tier 0 got half the tasks");
}
