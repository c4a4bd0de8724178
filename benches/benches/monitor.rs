//! The monitor's cost. Goals (issue 6): recording one access < 50 ns; a tier-0
//! chain hit with the monitor attached ≤ 1.3× the same hit with no observer.
//!
//! - `record/*`: `Monitor::record` of a tier-0 hit (counters, histogram, window
//!   check, one read of the default `CoarseClock`), beside its parts measured in
//!   the same run: one relaxed atomic add, one `SystemClock::now()` and one
//!   `CoarseClock::now()`.
//! - `chain_hit_observed/*`: the tier-0 hit of `chain_hit.rs` with no observer,
//!   with an observer that does nothing (what the chain itself pays to report:
//!   two `Instant::now()` and the event), and with the monitor. Futures complete on
//!   their first poll and are polled once with a no-op waker.

use benches::{keys, memory_tier, ready, KEYS};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cache_core::{
    Clock, Event, EventKind, EventSource, MemoryTier, Observer, SystemClock, Tier, TieredCache,
};
use cache_monitor::Monitor;
use criterion::{criterion_group, Criterion, Throughput};

fn record(c: &mut Criterion) {
    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Elements(1));

    let counter = AtomicU64::new(0);
    group.bench_function("baseline_one_atomic_add", |b| {
        b.iter(|| counter.fetch_add(black_box(1), Ordering::Relaxed))
    });
    group.bench_function("baseline_system_clock_now", |b| {
        b.iter(|| black_box(SystemClock.now()))
    });

    let coarse = cache_monitor::CoarseClock::new();
    group.bench_function("baseline_coarse_clock_now", |b| {
        b.iter(|| black_box(coarse.now()))
    });

    let monitor = Monitor::new();
    let mut ns = 0u64;
    group.bench_function("monitor_record_hit", |b| {
        b.iter(|| {
            // Latencies spread over many buckets, as real ones are.
            ns = (ns + 7_919) % 2_000_000;
            monitor.record(black_box(&Event {
                kind: EventKind::Hit,
                source: EventSource::Tier {
                    index: 0,
                    name: "memory",
                },
                key: "user:1:avatar",
                latency: Some(Duration::from_nanos(ns)),
                bytes: 64,
                error: None,
            }))
        })
    });

    // The same without the clock cost (a manual clock is one atomic load): what
    // the counters and the histogram cost alone.
    let manual = Monitor::builder()
        .clock(cache_core::ManualClock::new())
        .build();
    group.bench_function("monitor_record_hit_manual_clock", |b| {
        b.iter(|| {
            ns = (ns + 7_919) % 2_000_000;
            manual.record(black_box(&Event {
                kind: EventKind::Hit,
                source: EventSource::Tier {
                    index: 0,
                    name: "memory",
                },
                key: "user:1:avatar",
                latency: Some(Duration::from_nanos(ns)),
                bytes: 64,
                error: None,
            }))
        })
    });
    // A chain's tier-0 hit as it usually comes (63 in 64 are not timed):
    // placed by the monitor's own clock, or by the time the chain read for
    // the hit's expiry check (`Observer::on_event_at`, the default clocks).
    let untimed = Event {
        kind: EventKind::Hit,
        source: EventSource::Tier {
            index: 0,
            name: "memory",
        },
        key: "user:1:avatar",
        latency: None,
        bytes: 64,
        error: None,
    };
    group.bench_function("monitor_untimed_hit_own_clock", |b| {
        b.iter(|| monitor.on_event(black_box(&untimed)))
    });
    let at = SystemClock.now();
    group.bench_function("monitor_untimed_hit_chains_time", |b| {
        b.iter(|| monitor.on_event_at(black_box(&untimed), black_box(at)))
    });
    group.finish();
    black_box(monitor.report());
}

#[derive(Debug)]
struct NoOp;
impl Observer for NoOp {
    fn on_event(&self, event: &Event<'_>) {
        black_box(event);
    }
}

fn chain(keys: &[String], observer: Option<Arc<dyn Observer>>) -> TieredCache<String, String> {
    let builder = TieredCache::builder()
        .tier(Tier::new(memory_tier(keys)).ttl(Duration::from_secs(3_600)))
        .tier(Tier::new(MemoryTier::builder().name("l2").build()));
    match observer {
        Some(observer) => builder.shared_observer(observer).build(),
        None => builder.build(),
    }
}

fn chain_hit_observed(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("chain_hit_observed");
    group.throughput(Throughput::Elements(1));

    let monitor = Monitor::new();
    let chains = [
        ("no_observer", chain(&keys, None)),
        ("noop_observer", chain(&keys, Some(Arc::new(NoOp)))),
        ("monitor", chain(&keys, Some(Arc::new(monitor.clone())))),
    ];
    for (name, chain) in &chains {
        let mut i = 0;
        group.bench_function(*name, |b| {
            b.iter(|| {
                i = (i + 1) % KEYS;
                let hit = ready(chain.get(black_box(&keys[i]))).expect("get");
                black_box(hit.is_some())
            })
        });
    }
    group.finish();
    let report = monitor.report();
    assert_eq!(
        report.hits, report.requests,
        "every measured read is a tier-0 hit"
    );
}

/// The same three chains measured in alternation, 2 000 hits each per round, so a
/// noisy neighbour slows all three alike; prints the median per hit and the
/// ratios. Criterion's groups above run one after another and drift with the
/// machine's load.
fn interleaved() {
    let keys = keys();
    let monitor = Monitor::new();
    let chains = [
        ("no_observer", chain(&keys, None)),
        ("noop_observer", chain(&keys, Some(Arc::new(NoOp)))),
        ("monitor", chain(&keys, Some(Arc::new(monitor.clone())))),
    ];
    const ROUNDS: usize = 301;
    const PER_ROUND: usize = 2_000;
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(ROUNDS); chains.len()];
    for round in 0..ROUNDS {
        for (slot, (_, chain)) in chains.iter().enumerate() {
            let start = std::time::Instant::now();
            for i in 0..PER_ROUND {
                let key = &keys[(round * PER_ROUND + i) % KEYS];
                black_box(ready(chain.get(black_box(key))).expect("get").is_some());
            }
            times[slot].push(start.elapsed().as_nanos() as f64 / PER_ROUND as f64);
        }
    }
    let medians: Vec<f64> = times
        .iter_mut()
        .map(|t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect();
    println!("chain_hit_observed interleaved medians ({ROUNDS} rounds x {PER_ROUND} hits):");
    for ((name, _), m) in chains.iter().zip(&medians) {
        println!(
            "  {name:<14} {m:8.1} ns/hit   ratio to no_observer {:.2}x",
            m / medians[0]
        );
    }
}

criterion_group!(benches, record, chain_hit_observed);

fn main() {
    benches();
    if std::env::args().all(|a| a != "--list") {
        interleaved();
    }
    Criterion::default().configure_from_args().final_summary();
}
