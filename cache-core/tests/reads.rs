//! Reads that cost no more than they must (issue #21): one origin load for
//! any number of concurrent misses, refresh-ahead from the next tier before the
//! origin, and batches that fail only for the keys that failed.
#![cfg(not(target_family = "wasm"))]
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cache_core::{
    async_trait, loader_fn, BoxError, BoxFuture, CacheLayer, Clock, Entry, ExpiredFromOrigin,
    ManualClock, MemoryTier, Result, Source, Tier, TieredCache,
};
use futures_util::future::join_all;

const HOUR: Duration = Duration::from_secs(3_600);

fn k(s: &str) -> String {
    s.to_string()
}

fn mem(name: &'static str, clock: &ManualClock) -> Arc<MemoryTier<String, String>> {
    Arc::new(
        MemoryTier::builder()
            .name(name)
            .clock(clock.clone())
            .build(),
    )
}

/// SplitMix64: a small seeded generator, so a failing round can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The seed of a randomized test: `$READS_SEED` if set (to replay a failure),
/// else a fixed default. Printed either way.
fn seed(test: &str) -> u64 {
    let seed = std::env::var("READS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_0021);
    println!("{test}: seed {seed} (replay with READS_SEED={seed})");
    seed
}

async fn yields(n: u64) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

/// A tier that reads its inner tier at once and delivers the answer after
/// `delay` yields: a shared tier (Redis) is slower than the in-process one,
/// and what it answers may be out of date by the time the read goes on.
#[derive(Debug)]
struct Slow {
    inner: Arc<MemoryTier<String, String>>,
    delay: u64,
}

#[async_trait]
impl CacheLayer<String, String> for Slow {
    fn name(&self) -> &str {
        "slow"
    }
    async fn get(&self, key: &String) -> Result<Option<Entry<String>>> {
        let found = self.inner.get(key).await;
        yields(self.delay).await;
        found
    }
    async fn put(&self, key: &String, entry: Entry<String>) -> Result<()> {
        self.inner.put(key, entry).await
    }
    async fn remove(&self, key: &String) -> Result<bool> {
        self.inner.remove(key).await
    }
    async fn remove_prefix(&self, prefix: &str) -> Result<()> {
        self.inner.remove_prefix(prefix).await
    }
    async fn clear(&self) -> Result<()> {
        self.inner.clear().await
    }
}

/// 1,000 rounds of 1,000 concurrent gets of a key no tier holds, released
/// together by a barrier on two worker threads: the origin is called exactly
/// once per round.
///
/// The origin answers at once (after a few seeded yields), so its result
/// lands while readers are still on their way from their tier-0 miss (through
/// a slower tier 1, which answered before the fill) to the flight table: a
/// reader that missed tier 0 just before the load landed must not start a
/// second load after the first was retired.
#[test]
fn every_round_of_a_thousand_concurrent_misses_calls_the_origin_once() {
    const ROUNDS: usize = 1_000;
    const READERS: usize = 1_000;
    // Spawned tasks per round, each running its share of the reads at once.
    const TASKS: usize = 50;
    let seed = seed("single_flight");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut rng = Rng(seed);
        let clock = ManualClock::new();
        for round in 0..ROUNDS {
            let loads = Arc::new(AtomicUsize::new(0));
            let origin_yields = rng.below(4);
            let origin = {
                let (loads, clock) = (loads.clone(), clock.clone());
                loader_fn(move |key: String| {
                    let (loads, now) = (loads.clone(), clock.now());
                    async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        yields(origin_yields).await;
                        Ok::<_, BoxError>(Some(Entry::expiring_in(format!("{key}!"), now, HOUR)))
                    }
                })
            };
            let slow = Slow {
                inner: mem("l2", &clock),
                delay: rng.below(4),
            };
            let cache: TieredCache<String, String> = TieredCache::builder()
                .clock(clock.clone())
                .tier(Tier::shared(mem("l1", &clock)))
                .tier(Tier::new(slow))
                .origin(origin)
                .build();
            let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
            let readers: Vec<_> = (0..TASKS)
                .map(|_| {
                    let pauses: Vec<u64> = (0..READERS / TASKS).map(|_| rng.below(3)).collect();
                    let (cache, barrier) = (cache.clone(), barrier.clone());
                    tokio::spawn(async move {
                        barrier.wait().await;
                        let gets = pauses.into_iter().map(|pause| {
                            let cache = cache.clone();
                            async move {
                                yields(pause).await;
                                cache
                                    .get(&k("cold"))
                                    .await
                                    .map(|l| l.map(|l| l.into_value()))
                            }
                        });
                        join_all(gets).await
                    })
                })
                .collect();
            for reader in readers {
                for got in reader.await.unwrap() {
                    assert_eq!(got.unwrap().as_deref(), Some("cold!"));
                }
            }
            assert_eq!(
                loads.load(Ordering::SeqCst),
                1,
                "round {round}: the origin was called more than once (seed {seed})"
            );
            assert_eq!(cache.loads_in_flight(), 0);
        }
    });
}

type Queue = Arc<std::sync::Mutex<Vec<BoxFuture<'static, ()>>>>;

/// Runs the background tasks queued so far (refresh-ahead reloads), in order.
async fn run_queued(queue: &Queue) -> usize {
    let tasks: Vec<_> = queue.lock().unwrap().drain(..).collect();
    let n = tasks.len();
    for task in tasks {
        task.await;
    }
    n
}

/// Tier 0 keeps a copy 30 s, tier 1 two hours, and the value is valid for an
/// hour: tier 0's copy is always within the 60 s refresh window, the value
/// is not until its last minute. Read every 5 s of virtual time for 55
/// minutes: tier 0 is refreshed from tier 1, and the origin is called once
/// (the first load). Then, in the value's own last minute, the origin is
/// asked once more.
#[tokio::test]
async fn refresh_ahead_refreshes_a_tier_copy_from_the_next_tier_not_the_origin() {
    let clock = ManualClock::new();
    let loads = Arc::new(AtomicUsize::new(0));
    let origin = {
        let (loads, clock) = (loads.clone(), clock.clone());
        loader_fn(move |key: String| {
            let n = loads.fetch_add(1, Ordering::SeqCst) + 1;
            let now = clock.now();
            async move { Ok::<_, BoxError>(Some(Entry::expiring_in(format!("{key}@v{n}"), now, HOUR))) }
        })
    };
    let queue: Queue = Arc::default();
    let q = queue.clone();
    let cache: TieredCache<String, String> = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::shared(mem("l1", &clock)).ttl(Duration::from_secs(30)))
        .tier(Tier::shared(mem("l2", &clock)).ttl(2 * HOUR))
        .origin(origin)
        .refresh_ahead(Duration::from_secs(60), move |task| {
            q.lock().unwrap().push(task)
        })
        .build();
    let first = cache.get(&k("a")).await.unwrap().unwrap();
    assert_eq!(
        (first.value().as_str(), first.source),
        ("a@v1", Source::Origin)
    );
    let mut refreshes = run_queued(&queue).await;
    // 660 reads 5 s apart: 55 minutes.
    let mut values = std::collections::BTreeSet::new();
    for step in 1..=660 {
        clock.advance(Duration::from_secs(5));
        let hit = cache.get(&k("a")).await.unwrap().unwrap();
        assert_eq!(
            hit.source,
            Source::Tier {
                index: 0,
                name: "l1"
            },
            "read {step}"
        );
        values.insert(hit.into_value());
        refreshes += run_queued(&queue).await;
    }
    assert!(refreshes > 0, "tier 0's copy was never refreshed");
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "tier 0 was refreshed from the origin, not from tier 1"
    );
    assert_eq!(values.into_iter().collect::<Vec<_>>(), ["a@v1"]);
    // The value's own refresh point: within 60 s of its expiry (at 60 min).
    clock.advance(Duration::from_secs(4 * 60 + 5)); // 59:05
    assert_eq!(cache.get(&k("a")).await.unwrap().unwrap().value(), "a@v1");
    run_queued(&queue).await;
    assert_eq!(
        loads.load(Ordering::SeqCst),
        2,
        "the value itself was not refreshed"
    );
    clock.advance(Duration::from_secs(5));
    assert_eq!(cache.get(&k("a")).await.unwrap().unwrap().value(), "a@v2");
    run_queued(&queue).await;
    assert_eq!(loads.load(Ordering::SeqCst), 2);
}

/// A tier whose next `slow` writes each take `by` of virtual time (the write
/// advances the manual clock before it lands).
#[derive(Debug)]
struct SlowWrites {
    inner: Arc<MemoryTier<String, String>>,
    clock: ManualClock,
    by: Duration,
    slow: AtomicUsize,
}

impl SlowWrites {
    fn write_takes_time(&self) {
        let slow = self
            .slow
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if slow.is_ok() {
            self.clock.advance(self.by);
        }
    }
}

#[async_trait]
impl CacheLayer<String, String> for SlowWrites {
    fn name(&self) -> &str {
        "slow-writes"
    }
    async fn get(&self, key: &String) -> Result<Option<Entry<String>>> {
        self.inner.get(key).await
    }
    async fn put(&self, key: &String, entry: Entry<String>) -> Result<()> {
        self.write_takes_time();
        self.inner.put(key, entry).await
    }
    async fn put_many(&self, entries: Vec<(String, Entry<String>)>) -> Result<()> {
        self.write_takes_time();
        self.inner.put_many(entries).await
    }
    async fn remove(&self, key: &String) -> Result<bool> {
        self.inner.remove(key).await
    }
    async fn remove_prefix(&self, prefix: &str) -> Result<()> {
        self.inner.remove_prefix(prefix).await
    }
    async fn clear(&self) -> Result<()> {
        self.inner.clear().await
    }
}

/// An origin answering `<key>@v<n>` (`n` counts that key's loads), valid an
/// hour, except for keys starting with `short`: valid 10 s.
#[derive(Debug, Clone)]
struct Counting {
    clock: ManualClock,
    loads: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

impl Counting {
    fn loads(&self, key: &str) -> usize {
        self.loads.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

#[async_trait]
impl cache_core::Loader<String, String> for Counting {
    async fn load(&self, key: &String) -> std::result::Result<Option<Entry<String>>, BoxError> {
        let n = {
            let mut loads = self.loads.lock().unwrap();
            let n = loads.entry(key.clone()).or_default();
            *n += 1;
            *n
        };
        let life = if key.starts_with("short") {
            Duration::from_secs(10)
        } else {
            HOUR
        };
        Ok(Some(Entry::expiring_in(
            format!("{key}@v{n}"),
            self.clock.now(),
            life,
        )))
    }
}

/// A chain of one tier whose next `slow` writes take 20 s of virtual time
/// each, over a [`Counting`] origin.
fn slow_write_chain(clock: &ManualClock, slow: usize) -> (TieredCache<String, String>, Counting) {
    let tier = SlowWrites {
        inner: mem("l1", clock),
        clock: clock.clone(),
        by: Duration::from_secs(20),
        slow: AtomicUsize::new(slow),
    };
    let origin = Counting {
        clock: clock.clone(),
        loads: Arc::default(),
    };
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::new(tier))
        .origin(origin.clone())
        .build();
    (cache, origin)
}

fn is_expired_from_origin(err: &cache_core::Error) -> bool {
    matches!(err, cache_core::Error::Origin { source } if source.is::<ExpiredFromOrigin>())
}

/// One slow write (20 s) of a batch load: `short`'s 10 s value has expired
/// by the time the batch could return it, `long`'s has not. The batch answers
/// both: `short` loaded once more (its write is quick by then), `long` kept.
#[tokio::test]
async fn a_key_whose_loaded_entry_expired_before_its_return_does_not_fail_the_batch() {
    let clock = ManualClock::new();
    let (cache, origin) = slow_write_chain(&clock, 1);
    let keys = [k("long"), k("short"), k("long")];
    let got = match cache.get_many(&keys).await {
        Ok(got) => got,
        Err(err) => panic!("the batch failed for one expired key: {err}"),
    };
    let values: Vec<&str> = got
        .iter()
        .map(|l| l.as_ref().expect("every key has a value").value().as_str())
        .collect();
    assert_eq!(values, ["long@v1", "short@v2", "long@v1"]);
    assert_eq!(origin.loads("long"), 1, "long was loaded again");
    assert_eq!(origin.loads("short"), 2);
    for lookup in got.iter().flatten() {
        assert!(!lookup.entry.is_expired(clock.now()));
    }
}

/// Every write is slow: `short`'s value expires during the write of each
/// load. It is loaded once more, then the read fails with
/// `ExpiredFromOrigin`: in a batch and alone.
#[tokio::test]
async fn an_entry_that_expired_during_a_slow_write_is_loaded_once_more_then_fails() {
    let clock = ManualClock::new();
    let (cache, origin) = slow_write_chain(&clock, usize::MAX);
    let err = cache.get_many(&[k("long"), k("short")]).await.unwrap_err();
    assert!(is_expired_from_origin(&err), "{err:?}");
    assert_eq!(origin.loads("short"), 2, "loaded once more, and only once");
    assert_eq!(origin.loads("long"), 1);

    let err = cache.get(&k("short-alone")).await.unwrap_err();
    assert!(is_expired_from_origin(&err), "{err:?}");
    assert_eq!(
        origin.loads("short-alone"),
        2,
        "loaded once more, and only once"
    );
}
