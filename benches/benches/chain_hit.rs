//! A hit on tier 0 through the chain (observer off) against a direct `get` on the
//! same tier with the same keys. Goal (issue: cache-core): chain ≤ 1.2× direct.
//!
//! Both futures complete on their first poll (the memory tier never waits), so
//! they are polled once with a no-op waker: no executor cost dilutes the ratio.
//! The chain serves tier-0 hits through the tier's synchronous `get_ready`, so the
//! tier's own `get_ready` is measured too: the chain's overhead over it is shown
//! beside the goal's ratio.

use benches::{keys, memory_tier, ready, KEYS};
use std::hint::black_box;
use std::time::Duration;

use cache_core::{CacheLayer, Clock, MemoryTier, SystemClock, Tier, TieredCache};
use criterion::{criterion_group, Criterion, Throughput};

// One out-of-line function per read, used by both harnesses below, so each read
// is compiled once and both harnesses time the same code: inlined into a harness
// loop, the optimizer could treat the two sides differently (it can drop the
// direct get's boxed future when it sees the whole call, for instance).

#[inline(never)]
fn direct_hit(tier: &MemoryTier<String, String>, key: &String) -> bool {
    ready(tier.get(key)).expect("get").is_some()
}

#[inline(never)]
fn get_ready_hit(tier: &MemoryTier<String, String>, key: &String) -> bool {
    tier.get_ready(key, SystemClock.now())
        .expect("ready")
        .expect("get")
        .is_some()
}

#[inline(never)]
fn chain_hit_once(chain: &TieredCache<String, String>, key: &String) -> bool {
    ready(chain.get(key)).expect("get").is_some()
}

fn chain_hit(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("chain_hit");
    group.throughput(Throughput::Elements(1));

    let direct = memory_tier(&keys);
    let mut i = 0;
    group.bench_function("tier0_direct_get", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(direct_hit(&direct, black_box(&keys[i])))
        })
    });

    // The tier's own synchronous answer: what a hit costs with no future at all.
    let mut i = 0;
    group.bench_function("tier0_get_ready", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(get_ready_hit(&direct, black_box(&keys[i])))
        })
    });

    let chain: TieredCache<String, String> = TieredCache::builder()
        .tier(Tier::new(memory_tier(&keys)).ttl(Duration::from_secs(3_600)))
        .tier(Tier::new(MemoryTier::builder().name("l2").build()))
        .build();
    let mut i = 0;
    group.bench_function("chain_tier0_hit_no_observer", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(chain_hit_once(&chain, black_box(&keys[i])))
        })
    });
    group.finish();
}

/// The same two reads, interleaved in rounds, median per round. On a shared
/// machine whose load drifts, criterion's back-to-back groups can see different
/// loads; alternating rounds gives both sides the same conditions.
fn interleaved() {
    let keys = keys();
    let direct = memory_tier(&keys);
    let chain: TieredCache<String, String> = TieredCache::builder()
        .tier(Tier::new(memory_tier(&keys)).ttl(Duration::from_secs(3_600)))
        .tier(Tier::new(MemoryTier::builder().name("l2").build()))
        .build();
    const ROUNDS: usize = 301;
    const PER_ROUND: usize = 2_000;
    let mut times = [
        Vec::with_capacity(ROUNDS),
        Vec::with_capacity(ROUNDS),
        Vec::with_capacity(ROUNDS),
    ];
    for round in 0..ROUNDS {
        let start = std::time::Instant::now();
        for i in 0..PER_ROUND {
            let key = &keys[(round * PER_ROUND + i) % KEYS];
            black_box(get_ready_hit(&direct, black_box(key)));
        }
        times[2].push(start.elapsed().as_nanos() as f64 / PER_ROUND as f64);
        let start = std::time::Instant::now();
        for i in 0..PER_ROUND {
            let key = &keys[(round * PER_ROUND + i) % KEYS];
            black_box(direct_hit(&direct, black_box(key)));
        }
        times[0].push(start.elapsed().as_nanos() as f64 / PER_ROUND as f64);
        let start = std::time::Instant::now();
        for i in 0..PER_ROUND {
            let key = &keys[(round * PER_ROUND + i) % KEYS];
            black_box(chain_hit_once(&chain, black_box(key)));
        }
        times[1].push(start.elapsed().as_nanos() as f64 / PER_ROUND as f64);
    }
    let [direct_ns, chain_ns, ready_ns] = times.map(|mut t| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    });
    println!("chain_hit interleaved medians ({ROUNDS} rounds x {PER_ROUND} hits):");
    println!("  tier0_direct_get            {direct_ns:8.1} ns/hit   1.00x");
    println!(
        "  chain_tier0_hit_no_observer {chain_ns:8.1} ns/hit   {:.2}x",
        chain_ns / direct_ns
    );
    println!(
        "  tier0_get_ready (sync)      {ready_ns:8.1} ns/hit   {:.2}x   (chain / get_ready {:.2}x)",
        ready_ns / direct_ns,
        chain_ns / ready_ns
    );
}

criterion_group!(benches, chain_hit);

fn main() {
    benches();
    if std::env::args().all(|a| a != "--list") {
        interleaved();
    }
    Criterion::default().configure_from_args().final_summary();
}
