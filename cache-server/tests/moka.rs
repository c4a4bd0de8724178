#![allow(clippy::unwrap_used)]
//! MokaTier: conformance, byte budget, per-entry expiry.

use std::time::Duration;

use cache_core::{conformance, CacheLayer, Clock, Entry, ManualClock, SystemClock};
use cache_server::MokaTier;

#[tokio::test]
async fn moka_tier_passes_conformance() {
    conformance::run::<_, Vec<u8>, _, _>(|setup| async move {
        let mut b = MokaTier::builder().clock(setup.clock.clone());
        if let Some(ttl) = setup.tier_ttl {
            b = b.ttl(ttl);
        }
        b.build()
    })
    .await;
    conformance::run::<_, String, _, _>(|setup| async move {
        let mut b = MokaTier::builder().clock(setup.clock.clone());
        if let Some(ttl) = setup.tier_ttl {
            b = b.ttl(ttl);
        }
        b.build()
    })
    .await;
}

#[tokio::test]
async fn moka_tier_stays_within_its_byte_budget() {
    let budget = 64 * 1024;
    let tier: MokaTier<String, Vec<u8>> = MokaTier::builder().max_bytes(budget).build();
    let now = SystemClock.now();
    for i in 0..200 {
        tier.put(
            &format!("k{i}"),
            Entry::expiring_in(vec![0u8; 1024], now, Duration::from_secs(600)),
        )
        .await
        .unwrap();
    }
    tier.run_pending_tasks().await;
    assert!(
        tier.weighted_bytes() <= budget,
        "{} bytes held for a budget of {budget}",
        tier.weighted_bytes()
    );
    // 200 KiB went in, at most 64 KiB fits: moka must have evicted.
    assert!(tier.entry_count() < 200);
    assert!(tier.entry_count() > 0);
}

#[tokio::test]
async fn moka_reclaims_entries_at_their_own_expiry() {
    // Real time here: moka's own expiry (not the read check) must drop the entry.
    let tier: MokaTier<String, String> = MokaTier::builder().ttl(Duration::from_secs(3600)).build();
    let now = SystemClock.now();
    let key = "short".to_string();
    tier.put(
        &key,
        Entry::expiring_in("v".into(), now, Duration::from_millis(300)),
    )
    .await
    .unwrap();
    tier.put(
        &"long".to_string(),
        Entry::expiring_in("v".into(), now, Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    assert!(tier.contains(&key));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        tier.run_pending_tasks().await;
        if !tier.contains(&key) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "moka still holds an entry 10 s after its expiry"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(tier.contains(&"long".to_string()));
}

#[tokio::test]
async fn moka_tier_ttl_caps_expiry_to_the_smaller_of_the_two() {
    let clock = ManualClock::new();
    let tier: MokaTier<String, String> = MokaTier::builder()
        .clock(clock.clone())
        .ttl(Duration::from_secs(60))
        .build();
    let k = "k".to_string();
    tier.put(
        &k,
        Entry::expiring_in("v".into(), clock.now(), Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    let got = tier.get(&k).await.unwrap().unwrap();
    assert_eq!(
        got.expires_at,
        clock.now().saturating_add(Duration::from_secs(60))
    );
    tier.put(
        &k,
        Entry::expiring_in("v".into(), clock.now(), Duration::from_secs(10)),
    )
    .await
    .unwrap();
    let got = tier.get(&k).await.unwrap().unwrap();
    assert_eq!(
        got.expires_at,
        clock.now().saturating_add(Duration::from_secs(10))
    );
}
