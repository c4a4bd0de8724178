//! The tiered chain's contract, test by test (see `TieredCache` docs).
#![cfg(not(target_family = "wasm"))]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cache_core::{
    async_trait, loader_fn, BoxError, CacheLayer, ChainOp, Clock, Entry, Error, EventKind,
    FaultTier, Loader, ManualClock, MemoryTier, Result, Source, Tier, TierAction, TieredCache,
};
use common::{Gate, GatedPuts, Recorder, TokioTimer};

const HOUR: Duration = Duration::from_secs(3_600);

fn mem(name: &'static str, clock: &ManualClock) -> Arc<MemoryTier<String, String>> {
    Arc::new(
        MemoryTier::builder()
            .name(name)
            .clock(clock.clone())
            .build(),
    )
}

/// An origin answering `"<key>@v<n>"` valid for an hour, counting its loads.
#[derive(Debug, Clone)]
struct Origin {
    clock: ManualClock,
    loads: Arc<AtomicUsize>,
    batches: Arc<AtomicUsize>,
    ttl: Duration,
}

impl Origin {
    fn new(clock: &ManualClock) -> Self {
        Origin {
            clock: clock.clone(),
            loads: Arc::default(),
            batches: Arc::default(),
            ttl: HOUR,
        }
    }
    fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Loader<String, String> for Origin {
    async fn load(&self, key: &String) -> std::result::Result<Option<Entry<String>>, BoxError> {
        let n = self.loads.fetch_add(1, Ordering::SeqCst) + 1;
        if key.starts_with("missing") {
            return Ok(None);
        }
        Ok(Some(Entry::expiring_in(
            format!("{key}@v{n}"),
            self.clock.now(),
            self.ttl,
        )))
    }
    async fn load_many(
        &self,
        keys: &[String],
    ) -> std::result::Result<Vec<Option<Entry<String>>>, BoxError> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        let mut out = Vec::new();
        for k in keys {
            out.push(self.load(k).await?);
        }
        Ok(out)
    }
}

fn k(s: &str) -> String {
    s.to_string()
}

#[tokio::test]
async fn first_hit_wins_and_backfills_upper_tiers_capped_by_their_ttl_and_remaining_life() {
    let clock = ManualClock::new();
    let (l1, l2, l3) = (mem("l1", &clock), mem("l2", &clock), mem("l3", &clock));
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::shared(l1.clone()).ttl(Duration::from_secs(60)))
        .tier(Tier::shared(l2.clone()).ttl(Duration::from_secs(600)))
        .tier(Tier::shared(l3.clone()))
        .build();
    // Only the bottom tier holds the key, for 300 more seconds.
    let entry = Entry::expiring_in(k("v"), clock.now(), Duration::from_secs(300));
    l3.put(&k("a"), entry.clone()).await.unwrap();

    let got = cache.get(&k("a")).await.unwrap().unwrap();
    assert_eq!(
        got.source,
        Source::Tier {
            index: 2,
            name: "l3"
        }
    );
    assert_eq!(got.entry, entry);
    // l1 got its own 60 s TTL; l2's 600 s is capped by the entry's 300 s of life.
    let in_l1 = l1.get(&k("a")).await.unwrap().unwrap();
    let in_l2 = l2.get(&k("a")).await.unwrap().unwrap();
    assert_eq!(
        in_l1.expires_at,
        clock.now().saturating_add(Duration::from_secs(60))
    );
    assert_eq!(in_l2.expires_at, entry.expires_at);

    assert_eq!(
        cache.get(&k("a")).await.unwrap().unwrap().source,
        Source::Tier {
            index: 0,
            name: "l1"
        }
    );
    clock.advance(Duration::from_secs(60));
    assert_eq!(
        cache.get(&k("a")).await.unwrap().unwrap().source,
        Source::Tier {
            index: 1,
            name: "l2"
        }
    );
    clock.advance(Duration::from_secs(240));
    assert!(
        cache.get(&k("a")).await.unwrap().is_none(),
        "served past its expiry"
    );
}

#[tokio::test]
async fn origin_results_land_in_every_tier() {
    let clock = ManualClock::new();
    let (l1, l2) = (mem("l1", &clock), mem("l2", &clock));
    let origin = Origin::new(&clock);
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::shared(l1.clone()).ttl(Duration::from_secs(60)))
        .tier(Tier::shared(l2.clone()))
        .origin(origin.clone())
        .build();
    let got = cache.get(&k("u1")).await.unwrap().unwrap();
    assert_eq!(got.source, Source::Origin);
    assert_eq!(got.entry.value, "u1@v1");
    assert_eq!(l1.get(&k("u1")).await.unwrap().unwrap().value, "u1@v1");
    assert_eq!(
        l2.get(&k("u1")).await.unwrap().unwrap().expires_at,
        got.entry.expires_at
    );
    assert_eq!(
        cache.get(&k("u1")).await.unwrap().unwrap().source,
        Source::Tier {
            index: 0,
            name: "l1"
        }
    );
    assert_eq!(origin.loads(), 1);
}

/// A tier that returns whatever it holds, expired or not: the chain must still
/// never hand out an expired entry.
#[derive(Debug)]
struct IgnoresExpiry(Entry<String>);

#[async_trait]
impl CacheLayer<String, String> for IgnoresExpiry {
    fn name(&self) -> &str {
        "careless"
    }
    async fn get(&self, _: &String) -> Result<Option<Entry<String>>> {
        Ok(Some(self.0.clone()))
    }
    async fn put(&self, _: &String, _: Entry<String>) -> Result<()> {
        Ok(())
    }
    async fn remove(&self, _: &String) -> Result<bool> {
        Ok(false)
    }
    async fn clear(&self) -> Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn an_expired_entry_from_a_careless_tier_is_a_miss() {
    let clock = ManualClock::new();
    let stale = Entry::new(k("old"), clock.now());
    let origin = Origin::new(&clock);
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::new(IgnoresExpiry(stale)))
        .origin(origin.clone())
        .build();
    let got = cache.get(&k("a")).await.unwrap().unwrap();
    assert_eq!(got.source, Source::Origin);
    assert_eq!(got.entry.value, "a@v1");
}

#[tokio::test]
async fn a_failing_tier_is_a_miss_and_is_reported() {
    let clock = ManualClock::new();
    let (l1, faults) = FaultTier::new(
        MemoryTier::builder()
            .name("l1")
            .clock(clock.clone())
            .build(),
    );
    let l2 = mem("l2", &clock);
    let recorder = Arc::new(Recorder::default());
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .observer(recorder.clone())
        .tier(Tier::new(l1))
        .tier(Tier::shared(l2.clone()))
        .build();
    l2.put(&k("a"), Entry::expiring_in(k("v"), clock.now(), HOUR))
        .await
        .unwrap();
    faults.set_failing(true);
    let got = cache.get(&k("a")).await.unwrap().unwrap();
    assert_eq!(
        got.source,
        Source::Tier {
            index: 1,
            name: "l2"
        }
    );
    assert_eq!(
        recorder.count_at(EventKind::Error, 0),
        1,
        "the failed read; a tier whose read failed handed out no stamp, so it is not filled"
    );
    assert_eq!(recorder.count_at(EventKind::Hit, 1), 1);

    // With no origin and every tier failing, the read fails, and says why.
    let lonely: TieredCache<String, String> = {
        let (t, f) = FaultTier::new(MemoryTier::builder().build());
        f.set_failing(true);
        TieredCache::builder().tier(Tier::new(t)).build()
    };
    assert!(matches!(
        lonely.get(&k("a")).await,
        Err(Error::NoTierAnswered { failed: 1 })
    ));
}

#[tokio::test]
async fn a_failing_tier_with_an_origin_still_answers() {
    let clock = ManualClock::new();
    let (l1, faults) = FaultTier::new(MemoryTier::builder().clock(clock.clone()).build());
    faults.set_failing(true);
    let origin = Origin::new(&clock);
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::new(l1))
        .origin(origin)
        .build();
    for _ in 0..10 {
        assert!(cache.get(&k("a")).await.unwrap().is_some());
    }
}

#[tokio::test]
async fn circuit_breaker_skips_a_tier_that_keeps_failing_then_probes_after_cool_down() {
    let clock = ManualClock::new();
    let (l1, faults) = FaultTier::new(MemoryTier::builder().clock(clock.clone()).build());
    let l2 = mem("l2", &clock);
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::new(l1).circuit_breaker(3, Duration::from_secs(30)))
        .tier(Tier::shared(l2.clone()).no_circuit_breaker())
        .build();
    l2.put(
        &k("a"),
        Entry::expiring_in(k("v"), clock.now(), Duration::from_secs(86_400)),
    )
    .await
    .unwrap();
    faults.set_failing(true);
    // Reads 1 to 3: get fails (1, 2, 3); the third opens the breaker. A tier
    // whose read failed handed out no stamp, so no read backfills it.
    for _ in 0..3 {
        assert!(cache.get(&k("a")).await.unwrap().is_some());
    }
    assert_eq!(faults.calls(), 3);
    assert!(cache.is_tier_skipped(0));
    for _ in 0..5 {
        assert!(cache.get(&k("a")).await.unwrap().is_some());
    }
    assert_eq!(
        faults.calls(),
        3,
        "an open breaker keeps reads and backfills away from the tier"
    );

    clock.advance(Duration::from_secs(30));
    faults.heal();
    let got = cache.get(&k("a")).await.unwrap().unwrap();
    assert_eq!(
        got.source,
        Source::Tier {
            index: 1,
            name: "l2"
        }
    );
    assert_eq!(
        faults.calls(),
        5,
        "one probe read after the cool-down, then its backfill"
    );
    assert!(
        !cache.is_tier_skipped(0),
        "a successful probe closes the breaker"
    );
    assert_eq!(
        cache.get(&k("a")).await.unwrap().unwrap().source,
        Source::Tier {
            index: 0,
            name: "fault(memory)"
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_tier_that_hangs_forever_costs_a_read_no_more_than_its_timeout() {
    // Paused tokio time: the elapsed time below is virtual and exact, not a
    // wall-clock measurement.
    let clock = ManualClock::new();
    let (l1, faults) = FaultTier::new(MemoryTier::builder().clock(clock.clone()).build());
    let l2 = mem("l2", &clock);
    let timeout = Duration::from_millis(50);
    let recorder = Arc::new(Recorder::default());
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .timer(TokioTimer)
        .observer(recorder.clone())
        .tier(Tier::new(l1).timeout(timeout).no_circuit_breaker())
        .tier(Tier::shared(l2.clone()))
        .build();
    l2.put(&k("a"), Entry::expiring_in(k("v"), clock.now(), HOUR))
        .await
        .unwrap();
    faults.set_hanging(true);
    faults.only(Some(&[cache_core::Operation::Get]));

    let start = tokio::time::Instant::now();
    let got = cache.get(&k("a")).await.unwrap().unwrap();
    let took = start.elapsed();
    assert_eq!(
        got.source,
        Source::Tier {
            index: 1,
            name: "l2"
        }
    );
    assert!(took >= timeout, "returned before the timeout: {took:?}");
    assert!(
        took < timeout + Duration::from_millis(2),
        "waited past the timeout: {took:?}"
    );
    assert_eq!(recorder.count_at(EventKind::Timeout, 0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_gets_of_one_cold_key_cause_one_origin_load() {
    let clock = ManualClock::new();
    let gate = Arc::new(Gate::default());
    let loads = Arc::new(AtomicUsize::new(0));
    let recorder = Arc::new(Recorder::default());
    let origin = {
        let (gate, loads, clock) = (gate.clone(), loads.clone(), clock.clone());
        loader_fn(move |key: String| {
            let (gate, loads, clock) = (gate.clone(), loads.clone(), clock.clone());
            async move {
                loads.fetch_add(1, Ordering::SeqCst);
                gate.wait().await;
                Ok::<_, BoxError>(Some(Entry::expiring_in(
                    format!("{key}!"),
                    clock.now(),
                    HOUR,
                )))
            }
        })
    };
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .observer(recorder.clone())
        .tier(Tier::new(
            MemoryTier::builder().clock(clock.clone()).build(),
        ))
        .origin(origin)
        .build();

    let readers: Vec<_> = (0..1_000)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get(&k("cold"))
                    .await
                    .map(|l| l.map(|l| (l.entry.value, l.source == Source::Origin)))
            })
        })
        .collect();
    // Open the gate only once every other reader has joined the load in flight.
    tokio::time::timeout(Duration::from_secs(30), async {
        while recorder.count(EventKind::Coalesced) < 999 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("readers did not all join the load within 30 s");
    gate.open();
    for reader in readers {
        let (value, from_origin) = reader.await.unwrap().unwrap().unwrap();
        assert_eq!(value, "cold!");
        assert!(from_origin);
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(recorder.count(EventKind::OriginLoad), 1);
    assert_eq!(cache.loads_in_flight(), 0);
}

/// An origin whose first load parks at a gate and answers "old"; later loads
/// answer "new" at once.
fn gated_origin(
    clock: &ManualClock,
    gate: Arc<Gate>,
    loads: Arc<AtomicUsize>,
) -> impl Loader<String, String> {
    let clock = clock.clone();
    loader_fn(move |_key: String| {
        let (gate, loads, clock) = (gate.clone(), loads.clone(), clock.clone());
        async move {
            let n = loads.fetch_add(1, Ordering::SeqCst);
            let value = if n == 0 {
                gate.wait().await;
                "old"
            } else {
                "new"
            };
            Ok::<_, BoxError>(Some(Entry::expiring_in(
                value.to_string(),
                clock.now(),
                HOUR,
            )))
        }
    })
}

#[tokio::test]
async fn a_load_racing_an_invalidate_leaves_no_stale_value_in_any_tier() {
    let clock = ManualClock::new();
    let (l1, l2) = (mem("l1", &clock), mem("l2", &clock));
    let gate = Arc::new(Gate::default());
    let loads = Arc::new(AtomicUsize::new(0));
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::shared(l1.clone()))
        .tier(Tier::shared(l2.clone()))
        .origin(gated_origin(&clock, gate.clone(), loads.clone()))
        .build();

    let early = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get(&k("u")).await.unwrap().unwrap().entry.value }
    });
    gate.reached().await; // the first load is in flight, holding "old"
    let report = cache.invalidate(&k("u")).await.unwrap();
    assert_eq!(report.operation(), ChainOp::Invalidate);

    // A read that starts after the invalidation must not join the old load.
    let late = cache.get(&k("u")).await.unwrap().unwrap();
    assert_eq!(late.entry.value, "new");
    assert_eq!(late.source, Source::Origin);

    gate.open();
    assert_eq!(
        early.await.unwrap(),
        "old",
        "the early reader gets what it asked for"
    );
    // ...but "old" was written nowhere: every tier holds "new".
    assert_eq!(l1.get(&k("u")).await.unwrap().unwrap().value, "new");
    assert_eq!(l2.get(&k("u")).await.unwrap().unwrap().value, "new");
    assert_eq!(
        cache.get(&k("u")).await.unwrap().unwrap().entry.value,
        "new"
    );
    assert_eq!(loads.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_load_racing_an_invalidate_with_nothing_after_leaves_tiers_empty() {
    let clock = ManualClock::new();
    let (l1, l2) = (mem("l1", &clock), mem("l2", &clock));
    let gate = Arc::new(Gate::default());
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::shared(l1.clone()))
        .tier(Tier::shared(l2.clone()))
        .origin(gated_origin(&clock, gate.clone(), Arc::default()))
        .build();
    let early = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get(&k("u")).await.unwrap().map(|l| l.entry.value) }
    });
    gate.reached().await;
    cache.invalidate(&k("u")).await.unwrap();
    gate.open();
    early.await.unwrap();
    assert!(
        l1.get(&k("u")).await.unwrap().is_none(),
        "stale value written to l1"
    );
    assert!(
        l2.get(&k("u")).await.unwrap().is_none(),
        "stale value written to l2"
    );
}

#[tokio::test]
async fn a_backfill_racing_an_invalidate_never_outlives_it() {
    let clock = ManualClock::new();
    let upper = Arc::new(GatedPuts::new(
        MemoryTier::builder()
            .name("upper")
            .clock(clock.clone())
            .build(),
    ));
    let lower = mem("lower", &clock);
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::shared(upper.clone()))
        .tier(Tier::shared(lower.clone()))
        .build();
    lower
        .put(&k("u"), Entry::expiring_in(k("old"), clock.now(), HOUR))
        .await
        .unwrap();
    upper.armed.store(true, Ordering::SeqCst);

    let reader = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get(&k("u")).await.unwrap().unwrap().entry.value }
    });
    upper.gate.reached().await; // the backfill into `upper` is about to write "old"
                                // `upper` cannot check its fence atomically (the trait's default
                                // `put_fenced`), so the invalidation waits for the fill under way to land,
                                // then removes it.
    let invalidation = tokio::spawn({
        let cache = cache.clone();
        async move { cache.invalidate(&k("u")).await.map(drop) }
    });
    tokio::task::yield_now().await;
    assert!(
        !invalidation.is_finished(),
        "the removal waits for the fill under way"
    );
    upper.gate.open();
    invalidation.await.unwrap().unwrap();
    assert_eq!(reader.await.unwrap(), "old");
    assert!(
        upper.inner.get(&k("u")).await.unwrap().is_none(),
        "the racing backfill left a stale value"
    );
    assert!(lower.get(&k("u")).await.unwrap().is_none());
}

#[tokio::test]
async fn invalidate_reports_each_tier_and_names_the_one_that_failed() {
    let clock = ManualClock::new();
    let l1 = mem("l1", &clock);
    let (l2, faults) = FaultTier::new(
        MemoryTier::builder()
            .name("redis-ish")
            .clock(clock.clone())
            .build(),
    );
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::shared(l1.clone()))
        .tier(Tier::new(l2))
        .build();
    cache
        .put(&k("u"), Entry::expiring_in(k("v"), clock.now(), HOUR))
        .await
        .unwrap();

    faults.set_failing(true);
    let err = cache.invalidate(&k("u")).await.unwrap_err();
    let Error::Incomplete { report } = &err else {
        panic!("expected Incomplete, got {err}")
    };
    assert_eq!(report.failed_tier_names(), vec!["fault(redis-ish)"]);
    assert_eq!(report.failed_tiers(), vec![1]);
    assert!(matches!(
        report.outcomes()[0].result,
        Ok(TierAction::Removed)
    ));
    assert!(err.to_string().contains("fault(redis-ish)"), "{err}");
    assert!(l1.get(&k("u")).await.unwrap().is_none());

    // Retrying once the tier is back finishes the job.
    faults.heal();
    let report = cache.invalidate(&k("u")).await.unwrap();
    assert!(report.is_complete());
    assert!(matches!(
        report.outcomes()[1].result,
        Ok(TierAction::Removed)
    ));
    assert!(cache.get(&k("u")).await.unwrap().is_none());
}

#[tokio::test]
async fn prefix_invalidation_and_clear_reach_every_tier() {
    let clock = ManualClock::new();
    let (l1, l2) = (mem("l1", &clock), mem("l2", &clock));
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::shared(l1.clone()))
        .tier(Tier::shared(l2.clone()))
        .build();
    for key in ["user:1:avatar", "user:1:name", "user:2:avatar"] {
        cache
            .put(&k(key), Entry::expiring_in(k("v"), clock.now(), HOUR))
            .await
            .unwrap();
    }
    cache.invalidate_prefix("user:1:").await.unwrap();
    for tier in [&l1, &l2] {
        assert!(tier.get(&k("user:1:avatar")).await.unwrap().is_none());
        assert!(tier.get(&k("user:1:name")).await.unwrap().is_none());
        assert!(tier.get(&k("user:2:avatar")).await.unwrap().is_some());
    }
    cache.clear().await.unwrap();
    assert!(l1.is_empty() && l2.is_empty());
}

#[tokio::test]
async fn only_selected_tiers_are_invalidated() {
    let clock = ManualClock::new();
    let (l1, l2) = (mem("l1", &clock), mem("l2", &clock));
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::shared(l1.clone()))
        .tier(Tier::shared(l2.clone()))
        .build();
    cache
        .put(&k("u"), Entry::expiring_in(k("v"), clock.now(), HOUR))
        .await
        .unwrap();
    let report = cache.only(&[0]).invalidate(&k("u")).await.unwrap();
    assert!(matches!(
        report.outcomes()[1].result,
        Ok(TierAction::NotSelected)
    ));
    assert!(l1.get(&k("u")).await.unwrap().is_none());
    assert!(l2.get(&k("u")).await.unwrap().is_some());
}

/// A one-tier chain serving stale values for 5 minutes, in front of an origin that
/// answers `"<key>!"` for 60 s until `failing` is set.
fn stale_serving_chain() -> (
    TieredCache<String, String>,
    ManualClock,
    Arc<std::sync::atomic::AtomicBool>,
) {
    let clock = ManualClock::new();
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let origin = {
        let (clock, failing) = (clock.clone(), failing.clone());
        loader_fn(move |key: String| {
            let (clock, failing) = (clock.clone(), failing.clone());
            async move {
                if failing.load(Ordering::SeqCst) {
                    return Err(BoxError::from("origin down"));
                }
                Ok(Some(Entry::expiring_in(
                    format!("{key}!"),
                    clock.now(),
                    Duration::from_secs(60),
                )))
            }
        })
    };
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::new(
            MemoryTier::builder().clock(clock.clone()).build(),
        ))
        .origin(origin)
        .serve_stale_on_error(Duration::from_secs(300), 100)
        .build();
    (cache, clock, failing)
}

#[tokio::test]
async fn stale_values_are_served_within_grace_when_the_origin_fails() {
    let (cache, clock, failing) = stale_serving_chain();
    cache.get(&k("a")).await.unwrap().unwrap();
    failing.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_secs(61));
    let got = cache.get(&k("a")).await.unwrap().unwrap();
    assert_eq!(got.source, Source::Stale);
    assert_eq!(got.entry.value, "a!");
    assert!(
        got.entry.is_expired(clock.now()),
        "a stale value says it is expired"
    );
    clock.advance(Duration::from_secs(300));
    assert!(
        matches!(cache.get(&k("a")).await, Err(Error::Origin { .. })),
        "served past the grace period"
    );

    // Without the option, an origin failure is an error straight away.
    let strict: TieredCache<String, String> = TieredCache::builder()
        .origin(loader_fn(|_: String| async {
            Err::<Option<Entry<String>>, _>(BoxError::from("down"))
        }))
        .build();
    assert!(matches!(
        strict.get(&k("a")).await,
        Err(Error::Origin { .. })
    ));
}

#[tokio::test]
async fn an_invalidated_key_is_not_served_stale() {
    let (cache, _clock, failing) = stale_serving_chain();
    cache.get(&k("a")).await.unwrap();
    cache.invalidate(&k("a")).await.unwrap();
    failing.store(true, Ordering::SeqCst);
    assert!(cache.get(&k("a")).await.is_err());
}

#[tokio::test]
async fn negative_results_are_cached_for_their_own_ttl() {
    let clock = ManualClock::new();
    let origin = Origin::new(&clock);
    let recorder = Arc::new(Recorder::default());
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .observer(recorder.clone())
        .tier(Tier::new(
            MemoryTier::builder().clock(clock.clone()).build(),
        ))
        .origin(origin.clone())
        .negative_caching(Duration::from_secs(10), 100)
        .build();
    assert!(cache.get(&k("missing-1")).await.unwrap().is_none());
    assert!(cache.get(&k("missing-1")).await.unwrap().is_none());
    assert_eq!(origin.loads(), 1);
    assert_eq!(recorder.count(EventKind::NegativeHit), 1);
    clock.advance(Duration::from_secs(10));
    assert!(cache.get(&k("missing-1")).await.unwrap().is_none());
    assert_eq!(origin.loads(), 2, "the negative entry expired");
    cache.invalidate(&k("missing-1")).await.unwrap();
    assert!(cache.get(&k("missing-1")).await.unwrap().is_none());
    assert_eq!(origin.loads(), 3, "invalidation forgets negative entries");
}

#[tokio::test]
async fn get_many_reads_each_tier_once_loads_the_rest_in_one_batch_and_backfills() {
    let clock = ManualClock::new();
    let (l1, faults1) = FaultTier::new(
        MemoryTier::builder()
            .name("l1")
            .clock(clock.clone())
            .build(),
    );
    let l1_inner_calls = faults1.clone();
    let l2 = mem("l2", &clock);
    let origin = Origin::new(&clock);
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::new(l1))
        .tier(Tier::shared(l2.clone()))
        .origin(origin.clone())
        .build();
    l2.put(
        &k("b"),
        Entry::expiring_in(k("b-from-l2"), clock.now(), HOUR),
    )
    .await
    .unwrap();
    let keys = vec![k("a"), k("b"), k("c"), k("a"), k("missing-x")];
    let got = cache.get_many(&keys).await.unwrap();
    assert_eq!(
        l1_inner_calls.calls(),
        3,
        "one get_many on l1, one put_many backfilling b, one put_many of the origin batch"
    );
    assert_eq!(origin.batches.load(Ordering::SeqCst), 1, "one origin batch");
    assert_eq!(
        origin.loads(),
        3,
        "a, c and missing-x: duplicates coalesced"
    );
    let values: Vec<Option<(String, Source<'_>)>> = got
        .into_iter()
        .map(|l| l.map(|l| (l.entry.value, l.source)))
        .collect();
    assert_eq!(
        values[1],
        Some((
            k("b-from-l2"),
            Source::Tier {
                index: 1,
                name: "l2"
            }
        ))
    );
    assert_eq!(values[0].as_ref().map(|v| v.1), Some(Source::Origin));
    assert_eq!(values[0], values[3]);
    assert!(values[4].is_none());
    let again = cache.get_many(&keys[..3]).await.unwrap();
    assert!(again.iter().all(|l| l.as_ref().unwrap().source
        == Source::Tier {
            index: 0,
            name: "fault(l1)"
        }));
}

#[tokio::test]
async fn bad_keys_are_refused_with_a_clear_error() {
    let cache: TieredCache<String, String> = TieredCache::builder()
        .tier(Tier::new(MemoryTier::builder().build()))
        .build();
    for bad in [String::new(), "a\nb".into(), "x".repeat(10_000)] {
        let err = cache.get(&bad).await.unwrap_err();
        assert!(matches!(err, Error::InvalidKey { .. }), "{err}");
        assert!(
            err.to_string().len() < 200,
            "error echoes the whole key: {err}"
        );
        assert!(matches!(
            cache.invalidate(&bad).await,
            Err(Error::InvalidKey { .. })
        ));
    }
}

#[tokio::test]
async fn put_writes_through_and_beats_a_load_in_flight() {
    let clock = ManualClock::new();
    let l1 = mem("l1", &clock);
    let gate = Arc::new(Gate::default());
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::shared(l1.clone()))
        .origin(gated_origin(&clock, gate.clone(), Arc::default()))
        .build();
    let early = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get(&k("u")).await.unwrap().unwrap().entry.value }
    });
    gate.reached().await;
    cache
        .put(&k("u"), Entry::expiring_in(k("put"), clock.now(), HOUR))
        .await
        .unwrap();
    gate.open();
    early.await.unwrap();
    assert_eq!(l1.get(&k("u")).await.unwrap().unwrap().value, "put");
}

#[tokio::test]
async fn a_chain_is_itself_a_tier() {
    let clock = ManualClock::new();
    let inner = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::shared(mem("inner", &clock)))
        .origin(Origin::new(&clock))
        .build();
    let outer = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::shared(mem("outer", &clock)))
        .tier(Tier::new(inner))
        .build();
    assert_eq!(
        outer.get(&k("a")).await.unwrap().unwrap().source,
        Source::Tier {
            index: 1,
            name: "tiered"
        }
    );
    assert_eq!(outer.to_string(), "TieredCache(outer -> tiered)");
}

#[tokio::test]
async fn a_resync_flush_clears_the_selected_tiers_and_is_reported_once() {
    let clock = ManualClock::new();
    let (l1, l2) = (mem("l1", &clock), mem("l2", &clock));
    let recorder = Arc::new(Recorder::default());
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .observer(recorder.clone())
        .tier(Tier::shared(l1.clone()))
        .tier(Tier::shared(l2.clone()))
        .build();
    cache
        .put(&k("a"), Entry::expiring_in(k("v"), clock.now(), HOUR))
        .await
        .unwrap();
    cache.only(&[0]).resync("bus link down").await.unwrap();
    assert!(
        l1.get(&k("a")).await.unwrap().is_none(),
        "the local tier was flushed"
    );
    assert!(
        l2.get(&k("a")).await.unwrap().is_some(),
        "the shared tier was left alone"
    );
    let resyncs: Vec<_> = recorder
        .events()
        .into_iter()
        .filter(|e| e.kind == EventKind::Resync)
        .collect();
    assert_eq!(resyncs.len(), 1);
    assert_eq!(resyncs[0].key, "bus link down");
    assert_eq!(resyncs[0].tier, None);
}

/// The lifetimes `put` stored in a tier with `ttl` and `jitter`, for entries
/// expiring `life` from now: the lowest and highest, in ms from now.
async fn stored_lifetimes(ttl: Option<Duration>, jitter: f64, life: Duration) -> (u64, u64) {
    let clock = ManualClock::new();
    let tier = mem("jittered", &clock);
    let mut t = Tier::shared(tier.clone()).ttl_jitter(jitter);
    if let Some(ttl) = ttl {
        t = t.ttl(ttl);
    }
    let cache: TieredCache<String, String> =
        TieredCache::builder().clock(clock.clone()).tier(t).build();
    let now = clock.now();
    let (mut lo, mut hi) = (u64::MAX, 0);
    for i in 0..400 {
        let key = format!("k{i}");
        let entry = Entry::expiring_in("v".to_string(), now, life);
        cache.put(&key, entry.clone()).await.unwrap();
        let stored = tier.get(&key).await.unwrap().unwrap();
        assert!(
            stored.expires_at <= entry.expires_at,
            "jitter stored {key} past its own expiry"
        );
        let ms = stored.expires_at.duration_since(now).as_millis() as u64;
        lo = lo.min(ms);
        hi = hi.max(ms);
    }
    (lo, hi)
}

#[tokio::test]
async fn ttl_jitter_spreads_the_tier_ttl_both_ways_within_its_fraction() {
    let (lo, hi) = stored_lifetimes(Some(Duration::from_secs(100)), 0.1, 10 * HOUR).await;
    assert!(lo >= 90_000 && hi <= 110_000, "outside ±10%: {lo}..{hi} ms");
    // 400 draws: both halves of the spread are reached.
    assert!(lo < 95_000 && hi > 105_000, "not spread: {lo}..{hi} ms");
}

#[tokio::test]
async fn ttl_jitter_never_lets_an_entry_outlive_its_own_expiry() {
    // The TTL is longer than the entry's life: the spread is capped by it.
    let (lo, hi) =
        stored_lifetimes(Some(Duration::from_secs(100)), 0.5, Duration::from_secs(40)).await;
    assert!(hi <= 40_000, "past the entry's expiry: {hi} ms");
    assert!(lo >= 20_000, "{lo}");
    // Without a tier TTL the entry's remaining life is spread, only downwards.
    let (lo, hi) = stored_lifetimes(None, 0.2, Duration::from_secs(100)).await;
    assert!(
        hi <= 100_000 && (80_000..95_000).contains(&lo),
        "{lo}..{hi} ms"
    );
}

#[tokio::test]
async fn no_ttl_jitter_keeps_lifetimes_exact() {
    let (lo, hi) = stored_lifetimes(Some(Duration::from_secs(100)), 0.0, 10 * HOUR).await;
    assert_eq!((lo, hi), (100_000, 100_000));
}

#[tokio::test]
async fn get_with_loads_a_miss_with_its_own_loader_and_not_the_origin() {
    let clock = ManualClock::new();
    let origin = Origin::new(&clock);
    let cache: TieredCache<String, String> = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::shared(mem("l1", &clock)))
        .origin(origin.clone())
        .build();
    let c = clock.clone();
    let own = loader_fn(move |key: String| {
        let now = c.now();
        async move { Ok::<_, BoxError>(Some(Entry::expiring_in(format!("{key}@own"), now, HOUR))) }
    });
    let got = cache
        .get_with(&"k".to_string(), own)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (got.value().as_str(), got.source),
        ("k@own", Source::Origin)
    );
    assert_eq!(origin.loads(), 0, "the chain's origin was asked");
    // Cached now: a plain get is a tier hit with the per-call loader's value.
    let again = cache.get(&"k".to_string()).await.unwrap().unwrap();
    assert_eq!(again.value(), "k@own");
    assert!(matches!(again.source, Source::Tier { index: 0, .. }));
}

#[tokio::test]
async fn get_with_works_on_a_chain_without_an_origin() {
    let clock = ManualClock::new();
    let cache: TieredCache<String, String> = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::shared(mem("l1", &clock)))
        .build();
    assert!(cache.get(&"k".to_string()).await.unwrap().is_none());
    let c = clock.clone();
    let own = loader_fn(move |_: String| {
        let now = c.now();
        async move { Ok::<_, BoxError>(Some(Entry::expiring_in("v".to_string(), now, HOUR))) }
    });
    assert_eq!(
        cache
            .get_with(&"k".to_string(), own)
            .await
            .unwrap()
            .unwrap()
            .value(),
        "v"
    );
}

#[tokio::test]
async fn get_with_joins_a_load_in_flight_instead_of_calling_its_loader() {
    let clock = ManualClock::new();
    let gate = Arc::new(common::Gate::default());
    let cache: TieredCache<String, String> = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::shared(mem("l1", &clock)))
        .build();
    let (g, c) = (gate.clone(), clock.clone());
    let slow = loader_fn(move |_: String| {
        let (g, now) = (g.clone(), c.now());
        async move {
            g.wait().await;
            Ok::<_, BoxError>(Some(Entry::expiring_in("first".to_string(), now, HOUR)))
        }
    });
    let calls = Arc::new(AtomicUsize::new(0));
    let (n, c) = (calls.clone(), clock.clone());
    let second = loader_fn(move |_: String| {
        n.fetch_add(1, Ordering::SeqCst);
        let now = c.now();
        async move { Ok::<_, BoxError>(Some(Entry::expiring_in("second".to_string(), now, HOUR))) }
    });
    let key = "k".to_string();
    let (a, b) = tokio::join!(cache.get_with(&key, slow), async {
        gate.reached().await;
        // Polled once while the first load waits at the gate: it joins it.
        let mut joined = Box::pin(cache.get_with(&key, second));
        assert!(futures_util::FutureExt::now_or_never(&mut joined).is_none());
        gate.open();
        joined.await
    });
    assert_eq!(a.unwrap().unwrap().value(), "first");
    assert_eq!(b.unwrap().unwrap().value(), "first");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the second loader ran");
}

type Queue = Arc<std::sync::Mutex<Vec<cache_core::BoxFuture<'static, ()>>>>;

/// A chain of two memory tiers over `origin` refreshing within 10 minutes of
/// expiry, its background tasks kept in a queue for the test to run.
fn refreshing(
    clock: &ManualClock,
    origin: impl Loader<String, String>,
) -> (
    TieredCache<String, String>,
    Arc<MemoryTier<String, String>>,
    Queue,
) {
    let l1 = mem("l1", clock);
    let queue: Queue = Arc::default();
    let q = queue.clone();
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::shared(l1.clone()))
        .tier(Tier::shared(mem("l2", clock)))
        .origin(origin)
        .refresh_ahead(Duration::from_secs(600), move |task| {
            q.lock().unwrap().push(task)
        })
        .build();
    (cache, l1, queue)
}

fn take(queue: &Queue) -> Vec<cache_core::BoxFuture<'static, ()>> {
    queue.lock().unwrap().drain(..).collect()
}

#[tokio::test]
async fn refresh_ahead_reloads_once_in_the_background_while_readers_keep_the_value() {
    let clock = ManualClock::new();
    let origin = Origin::new(&clock);
    let (cache, l1, queue) = refreshing(&clock, origin.clone());
    assert_eq!(cache.get(&k("a")).await.unwrap().unwrap().value(), "a@v1");
    // Outside the window: nothing to refresh.
    clock.advance(Duration::from_secs(2_000));
    assert_eq!(cache.get(&k("a")).await.unwrap().unwrap().value(), "a@v1");
    assert!(take(&queue).is_empty(), "refreshed outside the window");
    // 9 minutes left: every hit gets v1 at once; one reload is queued.
    clock.advance(Duration::from_secs(1_060));
    for _ in 0..20 {
        let hit = cache.get(&k("a")).await.unwrap().unwrap();
        assert_eq!(hit.value(), "a@v1");
        assert!(matches!(hit.source, Source::Tier { index: 0, .. }));
    }
    let got = cache.get_many(&[k("a"), k("a")]).await.unwrap();
    assert!(got.iter().all(|l| l.as_ref().unwrap().value() == "a@v1"));
    let tasks = take(&queue);
    assert_eq!(tasks.len(), 1, "one reload per key");
    assert_eq!(origin.loads(), 1, "the reload ran in the read");
    for task in tasks {
        task.await;
    }
    assert_eq!(origin.loads(), 2);
    let fresh = l1.get(&k("a")).await.unwrap().unwrap();
    assert_eq!(fresh.value, "a@v2", "the reload did not reach tier 0");
    assert_eq!(fresh.expires_at, clock.now().saturating_add(HOUR));
    assert_eq!(cache.get(&k("a")).await.unwrap().unwrap().value(), "a@v2");
    assert!(take(&queue).is_empty(), "a fresh entry was refreshed again");
}

#[tokio::test]
async fn an_invalidation_during_a_refresh_wins_over_it() {
    let clock = ManualClock::new();
    let gate = Arc::new(common::Gate::default());
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let version = Arc::new(AtomicUsize::new(0));
    let (g, a, v, c) = (gate.clone(), armed.clone(), version.clone(), clock.clone());
    let origin = loader_fn(move |key: String| {
        let (g, a, v, now) = (g.clone(), a.clone(), v.clone(), c.now());
        async move {
            // Reads the version first, then (when armed) waits: it lands after
            // the invalidation with what it read before it.
            let n = v.fetch_add(1, Ordering::SeqCst) + 1;
            if a.load(Ordering::SeqCst) {
                g.wait().await;
            }
            Ok::<_, BoxError>(Some(Entry::expiring_in(format!("{key}@v{n}"), now, HOUR)))
        }
    });
    let (cache, l1, queue) = refreshing(&clock, origin);
    assert_eq!(cache.get(&k("a")).await.unwrap().unwrap().value(), "a@v1");
    clock.advance(Duration::from_secs(3_300));
    armed.store(true, Ordering::SeqCst);
    assert_eq!(cache.get(&k("a")).await.unwrap().unwrap().value(), "a@v1");
    let task = tokio::spawn(take(&queue).pop().expect("a reload was queued"));
    gate.reached().await;
    cache.invalidate(&k("a")).await.unwrap();
    gate.open();
    task.await.unwrap();
    assert!(
        l1.get(&k("a")).await.unwrap().is_none(),
        "the reload that read before the invalidation was written after it"
    );
    armed.store(false, Ordering::SeqCst);
    assert_eq!(cache.get(&k("a")).await.unwrap().unwrap().value(), "a@v3");
}

/// An origin answering `<key>@v<n>` for an hour, which waits at `gate` while
/// `slow` is set.
fn slow_origin(
    clock: &ManualClock,
    gate: &Arc<Gate>,
    slow: &Arc<std::sync::atomic::AtomicBool>,
) -> impl Loader<String, String> {
    let (c, g, s) = (clock.clone(), gate.clone(), slow.clone());
    let n = Arc::new(AtomicUsize::new(0));
    loader_fn(move |key: String| {
        let (now, g, s, n) = (c.now(), g.clone(), s.clone(), n.clone());
        async move {
            let v = n.fetch_add(1, Ordering::SeqCst) + 1;
            if s.load(Ordering::SeqCst) {
                g.wait().await;
            }
            Ok::<_, BoxError>(Some(Entry::expiring_in(format!("{key}@v{v}"), now, HOUR)))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_load_slower_than_the_soft_timeout_answers_stale_and_lands_in_the_background() {
    let clock = ManualClock::new();
    let (gate, slow) = (Arc::new(Gate::default()), Arc::default());
    let l1 = mem("l1", &clock);
    let cache: TieredCache<String, String> = TieredCache::builder()
        .clock(clock.clone())
        .timer(TokioTimer)
        .tier(Tier::shared(l1.clone()))
        .origin(slow_origin(&clock, &gate, &slow))
        .serve_stale_on_error(HOUR, 100)
        .soft_origin_timeout(Duration::from_millis(100), |task| {
            tokio::spawn(task);
        })
        .origin_timeout(Duration::from_secs(30))
        .build();
    assert_eq!(cache.get(&k("a")).await.unwrap().unwrap().value(), "a@v1");
    clock.advance(HOUR); // expired, kept as stale
    slow.store(true, Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    let got = cache.get(&k("a")).await.unwrap().unwrap();
    assert_eq!((got.value().as_str(), got.source), ("a@v1", Source::Stale));
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(100),
        "not the soft timeout"
    );
    // The load goes on without a reader and fills the tier when it lands.
    gate.open();
    for _ in 0..100 {
        if l1.get(&k("a")).await.unwrap().is_some() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(l1.get(&k("a")).await.unwrap().unwrap().value, "a@v2");
    assert_eq!(cache.get(&k("a")).await.unwrap().unwrap().value(), "a@v2");
}

#[tokio::test(start_paused = true)]
async fn without_a_stale_value_a_read_waits_and_the_hard_timeout_fails_the_load() {
    let clock = ManualClock::new();
    let (gate, slow) = (
        Arc::new(Gate::default()),
        Arc::new(std::sync::atomic::AtomicBool::new(true)),
    );
    let cache: TieredCache<String, String> = TieredCache::builder()
        .clock(clock.clone())
        .timer(TokioTimer)
        .tier(Tier::shared(mem("l1", &clock)))
        .origin(slow_origin(&clock, &gate, &slow))
        .serve_stale_on_error(HOUR, 100)
        .soft_origin_timeout(Duration::from_millis(100), |task| {
            tokio::spawn(task);
        })
        .origin_timeout(Duration::from_secs(2))
        .build();
    let started = tokio::time::Instant::now();
    let err = cache.get(&k("never-cached")).await.unwrap_err();
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(2),
        "not the hard timeout"
    );
    let Error::Origin { source } = &err else {
        panic!("{err:?}");
    };
    assert!(
        source
            .downcast_ref::<cache_core::OriginTimedOut>()
            .is_some(),
        "{err}"
    );
    // The next read starts a new load (the timed-out one is gone).
    slow.store(false, Ordering::SeqCst);
    assert_eq!(
        cache
            .get(&k("never-cached"))
            .await
            .unwrap()
            .unwrap()
            .value(),
        "never-cached@v2"
    );
}

#[tokio::test(start_paused = true)]
async fn a_load_within_the_soft_timeout_is_waited_for() {
    let clock = ManualClock::new();
    let (gate, slow) = (Arc::new(Gate::default()), Arc::default());
    let cache: TieredCache<String, String> = TieredCache::builder()
        .clock(clock.clone())
        .timer(TokioTimer)
        .tier(Tier::shared(mem("l1", &clock)))
        .origin(slow_origin(&clock, &gate, &slow))
        .serve_stale_on_error(HOUR, 100)
        .soft_origin_timeout(Duration::from_millis(100), |task| {
            tokio::spawn(task);
        })
        .build();
    assert_eq!(cache.get(&k("a")).await.unwrap().unwrap().value(), "a@v1");
    clock.advance(HOUR);
    slow.store(true, Ordering::SeqCst);
    let key = k("a");
    let (got, ()) = tokio::join!(cache.get(&key), async {
        gate.reached().await;
        tokio::time::sleep(Duration::from_millis(40)).await;
        gate.open();
    });
    let got = got.unwrap().unwrap();
    assert_eq!((got.value().as_str(), got.source), ("a@v2", Source::Origin));
}

/// Keeps how the chain called it: with a time, or without.
#[derive(Debug, Default)]
struct Timed {
    without: AtomicUsize,
    with: std::sync::Mutex<Vec<(EventKind, cache_core::Timestamp)>>,
}

impl cache_core::Observer for Timed {
    fn on_event(&self, _: &cache_core::Event<'_>) {
        self.without.fetch_add(1, Ordering::Relaxed);
    }

    fn on_event_at(&self, event: &cache_core::Event<'_>, at: cache_core::Timestamp) {
        self.with.lock().unwrap().push((event.kind, at));
    }
}

/// With the default clock, a hit hands the observer the time its expiry
/// check read (so a monitor need not read a clock again); with a clock of
/// the caller's, the observer is never handed a time.
#[tokio::test]
async fn a_hit_hands_the_observer_its_time_with_the_default_clock_only() {
    let tier = Arc::new(MemoryTier::<String, String>::builder().name("l1").build());
    let timed = Arc::new(Timed::default());
    let cache = TieredCache::builder()
        .observer(timed.clone())
        .tier(Tier::shared(tier.clone()))
        .build();
    let now = cache_core::SystemClock.now();
    tier.put(&k("a"), Entry::expiring_in(k("v"), now, HOUR))
        .await
        .unwrap();
    let before = cache_core::SystemClock.now();
    for _ in 0..3 {
        cache.get(&k("a")).await.unwrap().unwrap();
    }
    let after = cache_core::SystemClock.now();
    let with = timed.with.lock().unwrap().clone();
    assert_eq!(with.len(), 3, "{with:?}");
    for (kind, at) in with {
        assert_eq!(kind, EventKind::Hit);
        // The chain's clock re-anchors every 250 ms, by at most a tick.
        let slack = Duration::from_millis(20);
        assert!(
            before.saturating_sub(slack) <= at && at <= after.saturating_add(slack),
            "{at:?} outside [{before:?}, {after:?}]"
        );
    }
    cache.get(&k("missing")).await.unwrap();
    assert!(
        timed.without.load(Ordering::Relaxed) >= 1,
        "a miss has no time"
    );

    let clock = ManualClock::new();
    let l1 = mem("l1", &clock);
    l1.put(&k("a"), Entry::expiring_in(k("v"), clock.now(), HOUR))
        .await
        .unwrap();
    let own = Arc::new(Timed::default());
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .observer(own.clone())
        .tier(Tier::shared(l1))
        .build();
    cache.get(&k("a")).await.unwrap().unwrap();
    assert!(own.with.lock().unwrap().is_empty());
    assert!(own.without.load(Ordering::Relaxed) >= 1);
}
