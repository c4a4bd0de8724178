//! cache-core in a real browser (headless Chromium via wasm-bindgen-test): the
//! memory tier passes the conformance suite, and the chain works with the
//! browser's clock and timers (`std::time::Instant::now()` would panic here).
#![cfg(target_family = "wasm")]
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cache_core::{
    conformance, loader_fn, BoxError, Clock, Entry, FaultTier, MemoryTier, Source, SystemClock,
    Tier, TieredCache,
};
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
async fn memory_tier_passes_the_conformance_suite() {
    conformance::run::<_, Vec<u8>, _, _>(|setup| async move {
        let mut builder = MemoryTier::builder().clock(setup.clock.clone());
        if let Some(ttl) = setup.tier_ttl {
            builder = builder.ttl(ttl);
        }
        builder.build()
    })
    .await;
}

#[wasm_bindgen_test]
async fn chain_reads_backfills_and_times_out_a_hanging_tier_in_the_browser() {
    let (hanging, faults) = FaultTier::new(
        MemoryTier::<String, String>::builder()
            .name("hangs")
            .build(),
    );
    faults.set_hanging(true);
    let cache = TieredCache::builder()
        .tier(Tier::new(MemoryTier::builder().name("memory").build()))
        .tier(Tier::new(hanging).timeout(Duration::from_millis(20)))
        .origin(loader_fn(|key: String| async move {
            Ok::<_, BoxError>(Some(Entry::expiring_in(
                format!("{key}!"),
                SystemClock.now(),
                Duration::from_secs(60),
            )))
        }))
        .build();
    let first = cache.get(&"a".to_string()).await.unwrap().unwrap();
    assert_eq!(first.source, Source::Origin);
    assert_eq!(first.entry.value, "a!");
    let second = cache.get(&"a".to_string()).await.unwrap().unwrap();
    assert_eq!(
        second.source,
        Source::Tier {
            index: 0,
            name: "memory"
        }
    );
    assert!(SystemClock.now() > cache_core::Timestamp::from_unix_millis(1_600_000_000_000));
}
