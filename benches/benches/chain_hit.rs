//! Chain overhead: a hit on tier 0 through the chain against a direct `get` on
//! the same tier with the same keys, for the memory tier and the server's moka
//! tier, with no observer and with the monitor attached. Goals: chain ≤ 1.2×
//! direct (issue: cache-core); monitor on ≤ 1.3× no observer (issue 6).
//!
//! Both futures complete on their first poll (the tiers never wait), so they
//! are polled once with a no-op waker: no executor cost dilutes the ratio.
//! The chain serves tier-0 hits through the tier's synchronous `get_ready` when
//! the tier has one, so that is measured too.
//!
//! Criterion's groups run first; then every read runs interleaved in rounds
//! (each round does 2,000 reads of every side in turn, median per hit, ratios
//! taken within a round), which is what the printed table and
//! `bench-results/chain.json` report.

use benches::results::{interleave, ns_per_op, rounds, Goal, SuiteResults};
use benches::{criterion, fill, keys, memory_tier, ready, KEYS};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use cache_core::{CacheLayer, Clock, ConcurrentTier, MemoryTier, SystemClock, Tier, TieredCache};
use cache_monitor::Monitor;
use cache_server::MokaTier;
use criterion::{criterion_group, Criterion, Throughput};

// One out-of-line function per read, used by both harnesses below, so each read
// is compiled once and both harnesses time the same code: inlined into a harness
// loop, the optimizer could treat the two sides differently (it can drop the
// direct get's boxed future when it sees the whole call, for instance).

#[inline(never)]
fn direct_hit<T: CacheLayer<String, String>>(tier: &T, key: &String) -> bool {
    ready(tier.get(key)).expect("get").is_some()
}

#[inline(never)]
fn get_ready_hit<T: CacheLayer<String, String>>(tier: &T, key: &String) -> bool {
    tier.get_ready(key, SystemClock.now())
        .expect("ready")
        .expect("get")
        .is_some()
}

#[inline(never)]
fn chain_hit_once(chain: &TieredCache<String, String>, key: &String) -> bool {
    ready(chain.get(key)).expect("get").is_some()
}

/// The server's tier 0 holding an hour-long URL for every key.
fn moka_tier(keys: &[String]) -> MokaTier<String, String> {
    fill(MokaTier::builder().name("moka").build(), keys)
}

/// A chain whose tier 0 is `tier` (a second, empty tier below it), with the
/// monitor attached when given.
fn chain<T: CacheLayer<String, String> + 'static>(
    tier: T,
    monitor: Option<&Monitor>,
) -> TieredCache<String, String> {
    let builder = TieredCache::builder()
        .tier(Tier::new(tier).ttl(Duration::from_secs(3_600)))
        .tier(Tier::new(MemoryTier::builder().name("l2").build()));
    match monitor {
        Some(m) => builder.shared_observer(Arc::new(m.clone())).build(),
        None => builder.build(),
    }
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

    let chain = chain(memory_tier(&keys), None);
    let mut i = 0;
    group.bench_function("chain_tier0_hit_no_observer", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(chain_hit_once(&chain, black_box(&keys[i])))
        })
    });
    group.finish();
}

/// Hits per side per round.
const PER_ROUND: usize = 2_000;

/// The rows of one tier-0 type: its direct `get` (the baseline), its
/// `get_ready` if it has one, the chain hit with no observer and with the
/// monitor, all interleaved. Generic over the tier, so a new tier is one call.
fn measure_tier<T: CacheLayer<String, String> + 'static>(
    results: &mut SuiteResults,
    label: &str,
    make: impl Fn(&[String]) -> T,
) {
    let keys = keys();
    let direct = make(&keys);
    let plain = chain(make(&keys), None);
    let monitor = Monitor::new();
    let observed = chain(make(&keys), Some(&monitor));
    let has_ready = direct.get_ready(&keys[0], SystemClock.now()).is_some();
    let key = |round: usize, i: usize| &keys[(round * PER_ROUND + i) % KEYS];

    let mut direct_side = |r: usize| {
        ns_per_op(PER_ROUND, |i| {
            black_box(direct_hit(&direct, black_box(key(r, i))));
        })
    };
    let mut plain_side = |r: usize| {
        ns_per_op(PER_ROUND, |i| {
            black_box(chain_hit_once(&plain, black_box(key(r, i))));
        })
    };
    let mut observed_side = |r: usize| {
        ns_per_op(PER_ROUND, |i| {
            black_box(chain_hit_once(&observed, black_box(key(r, i))));
        })
    };
    let mut ready_side = |r: usize| {
        if !has_ready {
            return f64::NAN;
        }
        ns_per_op(PER_ROUND, |i| {
            black_box(get_ready_hit(&direct, black_box(key(r, i))));
        })
    };
    let m = interleave(
        rounds(301),
        &mut [
            &mut direct_side,
            &mut plain_side,
            &mut observed_side,
            &mut ready_side,
        ],
    );
    let direct_name = format!("`{label}::get` (direct, boxed future)");
    let plain_name = format!("chain hit, tier 0 = `{label}`, no observer");
    results.push(
        m.row(1, &plain_name, 0, &direct_name, "ns")
            .goal(Goal::AtMost(1.2)),
    );
    results.push(
        m.row(
            2,
            &format!("chain hit, tier 0 = `{label}`, monitor on"),
            1,
            &plain_name,
            "ns",
        )
        .goal(Goal::AtMost(1.3)),
    );
    if has_ready {
        results.push(m.row(
            3,
            &format!("`{label}::get_ready` (sync, no future)"),
            0,
            &direct_name,
            "ns",
        ));
    }
    let report = monitor.report();
    assert_eq!(report.hits, report.requests, "every read is a tier-0 hit");
}

fn interleaved() {
    let mut results = SuiteResults::new(
        "chain",
        format!(
            "interleaved: {} rounds × {PER_ROUND} hits per side, 1,000 keys, median ns per hit, ratio = median of per-round ratios",
            rounds(301)
        ),
    );
    measure_tier(&mut results, "MemoryTier", memory_tier);
    measure_tier(&mut results, "MokaTier", moka_tier);
    measure_tier(&mut results, "ConcurrentTier", |k| {
        fill(ConcurrentTier::builder().max_entries(2 * KEYS).build(), k)
    });
    results.finish();
}

criterion_group! {
    name = benches;
    config = criterion();
    targets = chain_hit
}

fn main() {
    benches();
    if std::env::args().all(|a| a != "--list") {
        interleaved();
    }
    Criterion::default().configure_from_args().final_summary();
}
