//! Model test: random sequences of reads, updates (origin change + invalidate),
//! clock jumps, tier failures and origin failures, checked against a reference
//! model. The chain must never return an expired value or a value older than the
//! last successful invalidation, and must never fail while the origin can answer.
#![cfg(not(target_family = "wasm"))]
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_core::{
    async_trait, BoxError, Clock, Entry, Error, FaultHandle, FaultTier, Loader, ManualClock,
    MemoryTier, Tier, TieredCache,
};
use proptest::prelude::*;

const KEYS: u8 = 4;

#[derive(Clone, Debug)]
enum Op {
    Get(u8),
    GetMany(Vec<u8>),
    /// The origin's value changes, then the key is invalidated (the replace flow).
    Update(u8),
    Advance(u64),
    TierFailing(usize, bool),
    OriginFailing(bool),
    RetryInvalidations,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..KEYS).prop_map(Op::Get),
        2 => proptest::collection::vec(0..KEYS, 1..6).prop_map(Op::GetMany),
        3 => (0..KEYS).prop_map(Op::Update),
        2 => prop_oneof![0u64..120, 0u64..4_000].prop_map(Op::Advance),
        2 => (0usize..3, any::<bool>()).prop_map(|(t, f)| Op::TierFailing(t, f)),
        1 => any::<bool>().prop_map(Op::OriginFailing),
        1 => Just(Op::RetryInvalidations),
    ]
}

/// The source of truth: a version per key; values are `"<key>:<version>"`.
#[derive(Debug)]
struct Origin {
    clock: ManualClock,
    versions: Arc<Mutex<HashMap<String, u64>>>,
    failing: Arc<AtomicBool>,
    ttl: Duration,
}

#[async_trait]
impl Loader<String, String> for Origin {
    async fn load(&self, key: &String) -> Result<Option<Entry<String>>, BoxError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err("origin down".into());
        }
        let version = *self.versions.lock().unwrap().get(key).unwrap_or(&0);
        Ok(Some(Entry::expiring_in(
            format!("{key}:{version}"),
            self.clock.now(),
            self.ttl,
        )))
    }
}

fn version_of(value: &str, key: &str) -> u64 {
    let (k, v) = value.rsplit_once(':').expect("value shape");
    assert_eq!(k, key, "a key read another key's value");
    v.parse().expect("version")
}

fn run(ops: Vec<Op>, origin_ttl: u64) {
    let clock = ManualClock::new();
    let versions: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let origin_failing = Arc::new(AtomicBool::new(false));
    let mut faults: Vec<FaultHandle> = Vec::new();
    let mut builder = TieredCache::builder().clock(clock.clone());
    for (i, ttl) in [Some(30u64), Some(600), None].into_iter().enumerate() {
        let (tier, handle) = FaultTier::new(
            MemoryTier::builder()
                .name(["l1", "l2", "l3"][i])
                .max_entries(3)
                .clock(clock.clone())
                .build(),
        );
        faults.push(handle);
        let mut tier = Tier::new(tier).circuit_breaker(2, Duration::from_secs(20));
        if let Some(ttl) = ttl {
            tier = tier.ttl(Duration::from_secs(ttl));
        }
        builder = builder.tier(tier);
    }
    let cache = builder
        .origin(Origin {
            clock: clock.clone(),
            versions: versions.clone(),
            failing: origin_failing.clone(),
            ttl: Duration::from_secs(origin_ttl),
        })
        .build();

    // Keys whose last invalidation did not reach every tier: the caller owes a
    // retry, and until then an older version may legitimately be served.
    let mut dirty: HashSet<String> = HashSet::new();
    let current = |key: &str| *versions.lock().unwrap().get(key).unwrap_or(&0);

    futures_executor::block_on(async {
        for op in ops {
            match op {
                Op::Get(k) => {
                    let key = format!("k{k}");
                    let result = cache.get(&key).await;
                    check(
                        &key,
                        result.map(|l| l.map(|l| l.entry)),
                        &clock,
                        &dirty,
                        current(&key),
                        &origin_failing,
                    );
                }
                Op::GetMany(ks) => {
                    let keys: Vec<String> = ks.iter().map(|k| format!("k{k}")).collect();
                    match cache.get_many(&keys).await {
                        Ok(found) => {
                            assert_eq!(found.len(), keys.len());
                            for (key, l) in keys.iter().zip(found) {
                                check(
                                    key,
                                    Ok(l.map(|l| l.entry)),
                                    &clock,
                                    &dirty,
                                    current(key),
                                    &origin_failing,
                                );
                            }
                        }
                        Err(e) => check(&keys[0], Err(e), &clock, &dirty, 0, &origin_failing),
                    }
                }
                Op::Update(k) => {
                    let key = format!("k{k}");
                    *versions.lock().unwrap().entry(key.clone()).or_insert(0) += 1;
                    match cache.invalidate(&key).await {
                        Ok(report) => {
                            assert!(report.is_complete());
                            dirty.remove(&key);
                        }
                        Err(Error::Incomplete { report }) => {
                            for i in report.failed_tiers() {
                                assert!(
                                    faults[i].injected_failures() > 0,
                                    "tier {i} reported failed but never failed"
                                );
                            }
                            dirty.insert(key);
                        }
                        Err(other) => panic!("invalidate failed oddly: {other}"),
                    }
                }
                Op::Advance(secs) => clock.advance(Duration::from_secs(secs)),
                Op::TierFailing(t, f) => faults[t].set_failing(f),
                Op::OriginFailing(f) => origin_failing.store(f, Ordering::SeqCst),
                Op::RetryInvalidations => {
                    for key in dirty.clone() {
                        if cache.invalidate(&key).await.is_ok() {
                            dirty.remove(&key);
                        }
                    }
                }
            }
        }
    });
}

fn check(
    key: &str,
    result: Result<Option<Entry<String>>, Error>,
    clock: &ManualClock,
    dirty: &HashSet<String>,
    current: u64,
    origin_failing: &AtomicBool,
) {
    match result {
        Ok(Some(entry)) => {
            assert!(
                !entry.is_expired(clock.now()),
                "served an expired value for {key}"
            );
            let version = version_of(&entry.value, key);
            if dirty.contains(key) {
                assert!(version <= current, "a version from the future for {key}");
            } else {
                assert_eq!(
                    version, current,
                    "served a value older than the last invalidation for {key}"
                );
            }
        }
        Ok(None) => panic!("{key}: the origin has every key, yet the read found nothing"),
        Err(e) => assert!(
            origin_failing.load(Ordering::SeqCst),
            "{key}: failed while the origin could answer: {e}"
        ),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_chain_never_serves_expired_or_invalidated_values(
        ops in proptest::collection::vec(op(), 1..80),
        origin_ttl in 1u64..5_000,
    ) {
        run(ops, origin_ttl);
    }
}
