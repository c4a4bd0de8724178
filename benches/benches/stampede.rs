//! A stampede: 1,000 concurrent cold gets of one key, on a tokio runtime with
//! two worker threads. The origin waits 5 ms (a database or S3 round trip) and
//! counts its calls. The chain (a `MemoryTier` in front of the origin, single
//! flight on a miss) against a naive read-through cache without single flight
//! (`Mutex<HashMap>`: look up, on a miss call the origin and insert), the way
//! one is often written by hand.
//!
//! Each round uses a fresh key and fresh caches, then the two sides run in
//! turn; the table shows the medians of origin calls and of the time until
//! all 1,000 gets have their value, and the per-round ratios.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use benches::results::{interleave, rounds, Interleaved, SuiteResults};
use cache_core::{loader_fn, BoxError, Clock, Entry, MemoryTier, SystemClock, Tier, TieredCache};

/// Concurrent gets per stampede.
const GETS: usize = 1_000;
/// How long the origin takes to answer.
const ORIGIN_LATENCY: Duration = Duration::from_millis(5);

/// The origin: waits, counts, answers with a URL valid for an hour.
#[derive(Clone, Default)]
struct Origin {
    calls: Arc<AtomicU64>,
}

impl Origin {
    async fn load(&self, key: &str) -> Entry<String> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(ORIGIN_LATENCY).await;
        Entry::expiring_in(
            format!("https://img.example/{key}.png"),
            SystemClock.now(),
            Duration::from_secs(3_600),
        )
    }
}

/// What a stampede cost: origin calls, and the time until every get had its value.
struct Outcome {
    calls: f64,
    millis: f64,
}

/// 1,000 concurrent `chain.get` of one cold key.
async fn chain_stampede(key: String) -> Outcome {
    let origin = Origin::default();
    let loader = origin.clone();
    let chain: Arc<TieredCache<String, String>> = Arc::new(
        TieredCache::builder()
            .tier(Tier::new(MemoryTier::builder().build()).ttl(Duration::from_secs(600)))
            .origin(loader_fn(move |key: String| {
                let origin = loader.clone();
                async move { Ok::<_, BoxError>(Some(origin.load(&key).await)) }
            }))
            .build(),
    );
    let start = Instant::now();
    let gets: Vec<_> = (0..GETS)
        .map(|_| {
            let (chain, key) = (chain.clone(), key.clone());
            tokio::spawn(async move {
                let hit = chain.get(&key).await.expect("get");
                hit.map(|l| l.into_value())
            })
        })
        .collect();
    for get in gets {
        let hit = get.await.expect("task");
        assert!(hit.is_some(), "every get has the value");
    }
    Outcome {
        calls: origin.calls.load(Ordering::Relaxed) as f64,
        millis: start.elapsed().as_secs_f64() * 1e3,
    }
}

/// A read-through cache as often written by hand: no single flight, so every
/// get that misses before the first fill calls the origin.
#[derive(Clone, Default)]
struct Naive {
    map: Arc<Mutex<HashMap<String, Entry<String>>>>,
    origin: Origin,
}

impl Naive {
    async fn get(&self, key: &str) -> String {
        let now = SystemClock.now();
        let cached = {
            let map = self.map.lock().expect("lock");
            map.get(key)
                .filter(|e| !e.is_expired(now))
                .map(|e| e.value.clone())
        };
        if let Some(value) = cached {
            return value;
        }
        let entry = self.origin.load(key).await;
        let value = entry.value.clone();
        self.map.lock().expect("lock").insert(key.to_owned(), entry);
        value
    }
}

/// 1,000 concurrent `Naive::get` of one cold key.
async fn naive_stampede(key: String) -> Outcome {
    let naive = Naive::default();
    let start = Instant::now();
    let gets: Vec<_> = (0..GETS)
        .map(|_| {
            let (naive, key) = (naive.clone(), key.clone());
            tokio::spawn(async move { naive.get(&key).await })
        })
        .collect();
    for get in gets {
        assert!(!get.await.expect("task").is_empty());
    }
    Outcome {
        calls: naive.origin.calls.load(Ordering::Relaxed) as f64,
        millis: start.elapsed().as_secs_f64() * 1e3,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rounds = rounds(31);
    // Each side's value is its time; its origin calls are kept beside.
    let (mut naive_calls, mut chain_calls) = (Vec::new(), Vec::new());
    let mut naive_side = |r: usize| {
        let o = rt.block_on(naive_stampede(format!("naive:{r}")));
        naive_calls.push(o.calls);
        o.millis
    };
    let mut chain_side = |r: usize| {
        let o = rt.block_on(chain_stampede(format!("chain:{r}")));
        chain_calls.push(o.calls);
        o.millis
    };
    let times = interleave(rounds, &mut [&mut naive_side, &mut chain_side]);
    // Not asserted: the table shows the median, and this line every round.
    println!("chain origin calls per round: {chain_calls:?}");
    let calls = Interleaved {
        values: vec![naive_calls, chain_calls],
    };
    let mut results = SuiteResults::new(
        "stampede",
        format!(
            "{GETS} concurrent cold gets of one key per round, origin {} ms, tokio with 2 workers; {rounds} rounds, sides alternating; medians",
            ORIGIN_LATENCY.as_millis()
        ),
    );
    results.push(calls.row(
        1,
        "chain (`MemoryTier` + origin, single flight): origin calls",
        0,
        "naive read-through (`Mutex<HashMap>`, no single flight): origin calls",
        "calls",
    ));
    results.push(times.row(
        1,
        "chain: time until all 1,000 gets have the value",
        0,
        "naive read-through: the same",
        "ms",
    ));
    results.finish();
}
