#![allow(clippy::unwrap_used)]
//! moka -> redis -> origin under 64 concurrent readers while redis-server dies
//! and comes back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::{
    loader_fn, BoxError, Clock, Entry, Event, EventKind, EventSource, Observer, SystemClock, Tier,
    TieredCache,
};
use cache_server::testing::RedisServer;
use cache_server::{MokaTier, RedisTier};

const READERS: usize = 64;
const KEYS: u64 = 2_000;
const REDIS_TIMEOUT: Duration = Duration::from_millis(200);
const TIER_TIMEOUT: Duration = Duration::from_millis(300);

/// Counts what the chain reports about the Redis tier (index 1).
#[derive(Debug, Default)]
struct RedisEvents {
    failures: AtomicU64,
    skipped: AtomicU64,
    hits: AtomicU64,
    writes: AtomicU64,
}

impl Observer for RedisEvents {
    fn on_event(&self, e: &Event<'_>) {
        if !matches!(e.source, EventSource::Tier { index: 1, .. }) {
            return;
        }
        let c = match e.kind {
            EventKind::Error | EventKind::Timeout => &self.failures,
            EventKind::Skipped => &self.skipped,
            EventKind::Hit => &self.hits,
            EventKind::Write | EventKind::Backfill => &self.writes,
            _ => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct Readers {
    reads: AtomicU64,
    failed: AtomicU64,
    max_latency_us: AtomicU64,
}

fn value_for(key: u64) -> String {
    format!("https://img.example/{key}/{}", "x".repeat(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_redis_fails_no_read_and_redis_is_used_again_when_back() {
    let mut server = RedisServer::start();
    let events = Arc::new(RedisEvents::default());
    let redis: RedisTier<String> = RedisTier::builder()
        .url(server.url())
        .namespace("faults")
        .command_timeout(REDIS_TIMEOUT)
        .build()
        .await
        .unwrap();
    let chain: TieredCache<u64, String> = TieredCache::builder()
        // Small on purpose: most reads must reach Redis.
        .tier(
            Tier::new(MokaTier::builder().max_bytes(32 * 1024).build())
                .ttl(Duration::from_secs(60)),
        )
        .tier(
            Tier::new(redis)
                .ttl(Duration::from_secs(600))
                .timeout(TIER_TIMEOUT)
                .circuit_breaker(5, Duration::from_millis(500)),
        )
        .origin(loader_fn(|key: u64| async move {
            Ok::<_, BoxError>(Some(Entry::expiring_in(
                value_for(key),
                SystemClock.now(),
                Duration::from_secs(3600),
            )))
        }))
        .shared_observer(events.clone())
        .build();

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Readers::default());
    let mut tasks = Vec::new();
    for r in 0..READERS {
        let (chain, stop, stats) = (chain.clone(), stop.clone(), stats.clone());
        tasks.push(tokio::spawn(async move {
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (r as u64 + 1);
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = x % KEYS;
                let start = Instant::now();
                let got = chain.get(&key).await;
                let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
                stats.max_latency_us.fetch_max(us, Ordering::Relaxed);
                stats.reads.fetch_add(1, Ordering::Relaxed);
                let ok = matches!(&got, Ok(Some(l)) if *l.value() == value_for(key));
                if !ok {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("read of {key} failed: {got:?}");
                }
                tokio::task::yield_now().await;
            }
        }));
    }

    // Phase 1: Redis up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        events.hits.load(Ordering::Relaxed) > 0,
        "redis answers before the kill"
    );
    let reads_before = stats.reads.load(Ordering::Relaxed);

    // Phase 2: Redis killed.
    tokio::task::block_in_place(|| server.kill());
    let failures_at_kill = events.failures.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failures = events.failures.load(Ordering::Relaxed) - failures_at_kill;
    assert!(
        failures > 0,
        "the observer must see redis errors or timeouts"
    );
    assert!(
        events.skipped.load(Ordering::Relaxed) > 0,
        "the breaker skips the dead tier"
    );
    let reads_down = stats.reads.load(Ordering::Relaxed) - reads_before;
    assert!(reads_down > 0, "reads go on while redis is down");

    // Phase 3: Redis back (empty), same process, same pool.
    tokio::task::block_in_place(|| server.restart());
    let (hits0, writes0) = (
        events.hits.load(Ordering::Relaxed),
        events.writes.load(Ordering::Relaxed),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let keys: u64 = server
            .cli(&["DBSIZE"])
            .map(|s| s.trim().parse().unwrap_or(0))
            .unwrap_or(0);
        if events.hits.load(Ordering::Relaxed) > hits0
            && events.writes.load(Ordering::Relaxed) > writes0
            && keys > 0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "redis not used again within 15 s of its restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let reads = stats.reads.load(Ordering::Relaxed);
    let max = Duration::from_micros(stats.max_latency_us.load(Ordering::Relaxed));
    println!(
        "{reads} reads ({reads_down} while redis was down), {failures} redis failures observed, max read latency {max:?}"
    );
    assert_eq!(stats.failed.load(Ordering::Relaxed), 0, "no read may fail");
    // Bounded by the tier timeout (300 ms), with slack for a shared 2-core box:
    // without the timeout a read would hang for the reconnect back-off or more.
    assert!(
        max < TIER_TIMEOUT * 5,
        "a read took {max:?}, far past the {TIER_TIMEOUT:?} Redis timeout"
    );
}
