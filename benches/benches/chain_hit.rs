//! Chain overhead: a hit on tier 0 through the chain against a direct `get` on
//! the same tier with the same keys, for the memory tier and the server's moka
//! tier, with no observer and with the monitor attached. Goals: chain ≤ 1.2×
//! direct (issue: cache-core); monitor on ≤ 1.15× no observer (issue 21; was 1.3×, issue 6).
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
//!
//! Then the table `chain_when_off` (issue 13: refresh-ahead, jitter and tags
//! cost a tier-0 hit nothing measurable when off): the tier-0 hit of a plain
//! chain against the same chain with refresh-ahead configured but not due,
//! with `Tier::ttl_jitter`, with a tag store but untagged entries (tags off),
//! interleaved the same way. Goal: ≤ 1.05×. The same table shows what tags
//! cost when on (every entry tagged, one generation check per hit; goal
//! ≤ 1.5×).

use benches::results::{interleave, ns_per_op, rounds, Goal, SuiteResults};
use benches::{criterion, fill, keys, memory_tier, ready, KEYS};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};

use cache_core::{
    loader_fn, BoxError, BoxFuture, CacheLayer, Clock, ConcurrentTier, Entry, MemoryTier,
    SystemClock, Tier, TieredCache,
};
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

    let memory = chain(memory_tier(&keys), None);
    let mut i = 0;
    group.bench_function("chain_tier0_hit_no_observer", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(chain_hit_once(&memory, black_box(&keys[i])))
        })
    });

    // The server's tier 0, with and without the monitor: a target to run
    // under `perf` (`--bench chain_hit -- concurrent`) for the hit the
    // interleaved table measures.
    let monitor = Monitor::new();
    for (name, observer) in [
        ("chain_tier0_concurrent_hit_no_observer", None),
        ("chain_tier0_concurrent_hit_monitor", Some(&monitor)),
    ] {
        let cache = chain(concurrent_tier(&keys), observer);
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % KEYS;
                black_box(chain_hit_once(&cache, black_box(&keys[i])))
            })
        });
    }
    group.finish();
}

/// The server's tier 0 holding an hour-long URL for every key.
fn concurrent_tier(keys: &[String]) -> ConcurrentTier<String, String> {
    fill(
        ConcurrentTier::builder().max_entries(2 * KEYS).build(),
        keys,
    )
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
        .goal(Goal::AtMost(1.15)),
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

/// A feature that must cost a tier-0 hit nothing when it is off (or on but
/// idle), as a variant of the chain built around the same tier 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// No feature: the baseline.
    Plain,
    /// `refresh_ahead` with a 10 s window; every entry lives an hour, so no
    /// hit is due and each only pays the check.
    RefreshAheadNotDue,
    /// `Tier::ttl_jitter(0.1)` on tier 0 (it only changes writes).
    TtlJitter,
    /// A tag store set, entries without tags: tags off for these values.
    TagsOff,
    /// Every entry carries one tag, checked on each hit against the chain's
    /// own generations (tags on: what a tagged hit costs).
    Tagged,
}

/// The variants measured against [`Variant::Plain`], with their row names.
const VARIANTS: &[(Variant, &str)] = &[
    (
        Variant::RefreshAheadNotDue,
        "refresh-ahead on, not due (10 s window, entries 1 h from expiry)",
    ),
    (Variant::TtlJitter, "`ttl_jitter(0.1)` on tier 0"),
    (
        Variant::TagsOff,
        "a tag store set, entries without tags (tags off)",
    ),
    (
        Variant::Tagged,
        "every entry carrying one tag (tags on: a generation check per hit)",
    ),
];

/// A chain whose tier 0 is `tier` in `variant`, with an origin that is never
/// called (refresh-ahead needs one; every variant has it, so it is not what
/// differs) and a second, empty tier. `spawned` counts refreshes started.
fn off_chain<T: CacheLayer<String, String> + 'static>(
    tier: T,
    variant: Variant,
    spawned: &Arc<AtomicUsize>,
    keys: &[String],
) -> TieredCache<String, String> {
    let mut tier0 = Tier::new(tier).ttl(Duration::from_secs(3_600));
    if variant == Variant::TtlJitter {
        tier0 = tier0.ttl_jitter(0.1);
    }
    let builder = TieredCache::builder()
        .tier(tier0)
        .tier(Tier::new(MemoryTier::builder().name("l2").build()))
        .origin(loader_fn(|_: String| async {
            Err::<Option<Entry<String>>, BoxError>("a tier-0 hit never loads".into())
        }));
    match variant {
        Variant::RefreshAheadNotDue => {
            let spawned = spawned.clone();
            builder
                .refresh_ahead(
                    Duration::from_secs(10),
                    move |_task: BoxFuture<'static, ()>| {
                        spawned.fetch_add(1, Ordering::Relaxed);
                    },
                )
                .build()
        }
        Variant::TagsOff => builder
            .tag_store(Arc::new(cache_core::MemoryTagStore::new()))
            .build(),
        Variant::Tagged => {
            let chain = builder.build();
            // The same values, each with a tag, written through the chain
            // (which sets the generations).
            let now = cache_core::SystemClock.now();
            for (i, k) in keys.iter().enumerate() {
                let entry = Entry::expiring_in(
                    format!("https://img.example/{k}.png"),
                    now,
                    Duration::from_secs(3_600),
                )
                .with_tags([format!("user:{i}")]);
                futures_executor::block_on(chain.put(k, entry)).expect("put");
            }
            chain
        }
        Variant::Plain | Variant::TtlJitter => builder.build(),
    }
}

/// The `chain_when_off` rows of one tier-0 type: each of [`VARIANTS`] against
/// the plain chain, interleaved.
fn measure_off<T: CacheLayer<String, String> + 'static>(
    results: &mut SuiteResults,
    label: &str,
    make: impl Fn(&[String]) -> T,
) {
    let keys = keys();
    let spawned = Arc::new(AtomicUsize::new(0));
    let chains: Vec<TieredCache<String, String>> = std::iter::once(Variant::Plain)
        .chain(VARIANTS.iter().map(|(v, _)| *v))
        .map(|v| off_chain(make(&keys), v, &spawned, &keys))
        .collect();
    let key = |round: usize, i: usize| &keys[(round * PER_ROUND + i) % KEYS];
    let mut sides: Vec<Box<dyn FnMut(usize) -> f64 + '_>> = chains
        .iter()
        .map(|chain| {
            Box::new(move |r: usize| {
                ns_per_op(PER_ROUND, |i| {
                    black_box(chain_hit_once(chain, black_box(key(r, i))));
                })
            }) as Box<dyn FnMut(usize) -> f64>
        })
        .collect();
    let mut refs: Vec<&mut dyn FnMut(usize) -> f64> = sides
        .iter_mut()
        .map(|s| &mut **s as &mut dyn FnMut(usize) -> f64)
        .collect();
    let m = interleave(rounds(301), &mut refs);
    let plain = format!("chain hit, tier 0 = `{label}`, plain (origin, nothing else)");
    for (side, (_, name)) in VARIANTS.iter().enumerate() {
        results.push(
            m.row(
                side + 1,
                &format!("chain hit, tier 0 = `{label}`, {name}"),
                0,
                &plain,
                "ns",
            )
            // Tags on are shown for what they cost; the goal is for off.
            .goal(Goal::AtMost(if VARIANTS[side].0 == Variant::Tagged {
                1.5
            } else {
                1.05
            }))
            .in_table("chain_when_off"),
        );
    }
    assert_eq!(
        spawned.load(Ordering::Relaxed),
        0,
        "a hit far from expiry started a refresh"
    );
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
    measure_tier(&mut results, "ConcurrentTier", concurrent_tier);
    results.table_method(
        "chain_when_off",
        format!(
            "interleaved: {} rounds × {PER_ROUND} hits per side (plain and every variant in turn), 1,000 keys, median ns per hit, ratio = median of per-round ratios",
            rounds(301)
        ),
    );
    measure_off(&mut results, "MemoryTier", memory_tier);
    measure_off(&mut results, "ConcurrentTier", concurrent_tier);
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
