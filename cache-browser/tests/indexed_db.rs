//! IndexedDbTier in headless Chromium: conformance, expiry index, byte budget,
//! reconnects, versionchange and a missing IndexedDB.
#![cfg(target_family = "wasm")]
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cache_browser::IndexedDbTier;
use cache_core::{conformance, CacheLayer, Clock, Entry, Error, ManualClock};
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::*;

mod support;
use support::{day, hide_indexed_db, open_upgrade, unique};

wasm_bindgen_test_configure!(run_in_browser);

async fn tier(name: &str, clock: &ManualClock, max_bytes: u64) -> IndexedDbTier<Vec<u8>> {
    IndexedDbTier::builder(&unique(name))
        .clock(clock.clone())
        .max_bytes(max_bytes)
        .open()
        .await
        .unwrap()
}

#[wasm_bindgen_test]
async fn indexed_db_passes_conformance() {
    conformance::run::<_, Vec<u8>, _, _>(support::conformance_indexed_db).await;
}

#[wasm_bindgen_test]
async fn indexed_db_stores_bytes_as_uint8array_and_serves_20kb_images() {
    let clock = ManualClock::new();
    let t = tier("bytes", &clock, 1 << 20).await;
    let img: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    t.put(
        &"avatar:1".to_string(),
        Entry::expiring_in(img.clone(), clock.now(), day()),
    )
    .await
    .unwrap();
    let got = CacheLayer::<String, Vec<u8>>::get(&t, &"avatar:1".to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.value, img);
    assert_eq!(t.total_bytes().await.unwrap(), 20_000);
}

#[wasm_bindgen_test]
async fn sweep_expired_deletes_only_expired_entries_through_the_index() {
    let clock = ManualClock::new();
    let t = tier("sweep", &clock, 1 << 20).await;
    for i in 0..4u64 {
        let ttl = if i < 3 {
            Duration::from_secs(60)
        } else {
            day()
        };
        t.put(
            &format!("k{i}"),
            Entry::expiring_in(vec![i as u8; 100], clock.now(), ttl),
        )
        .await
        .unwrap();
    }
    assert_eq!(t.sweep_expired().await.unwrap(), 0);
    clock.advance(Duration::from_secs(60));
    assert_eq!(t.sweep_expired().await.unwrap(), 3);
    assert_eq!(t.total_bytes().await.unwrap(), 100);
    // Gone from the store itself, not just hidden by the read-time check.
    clock.set(cache_core::ManualClock::START);
    assert!(CacheLayer::<String, Vec<u8>>::get(&t, &"k0".to_string())
        .await
        .unwrap()
        .is_none());
    assert!(CacheLayer::<String, Vec<u8>>::get(&t, &"k3".to_string())
        .await
        .unwrap()
        .is_some());
}

#[wasm_bindgen_test]
async fn byte_budget_evicts_least_recently_used() {
    let clock = ManualClock::new();
    let t = IndexedDbTier::<Vec<u8>>::builder(&unique("lru"))
        .clock(clock.clone())
        .max_bytes(3_000)
        .touch_after(Duration::ZERO)
        .open()
        .await
        .unwrap();
    for k in ["a", "b", "c"] {
        t.put(
            &k.to_string(),
            Entry::expiring_in(vec![1; 1_000], clock.now(), day()),
        )
        .await
        .unwrap();
        clock.advance(Duration::from_secs(1));
    }
    // Reading `a` makes `b` the least recently used.
    assert!(CacheLayer::<String, Vec<u8>>::get(&t, &"a".to_string())
        .await
        .unwrap()
        .is_some());
    clock.advance(Duration::from_secs(1));
    t.put(
        &"d".to_string(),
        Entry::expiring_in(vec![2; 1_000], clock.now(), day()),
    )
    .await
    .unwrap();
    let present = |k: &'static str| {
        let t = &t;
        async move {
            CacheLayer::<String, Vec<u8>>::get(t, &k.to_string())
                .await
                .unwrap()
                .is_some()
        }
    };
    assert!(!present("b").await, "the least recently used entry must go");
    assert!(present("a").await && present("c").await && present("d").await);
    assert!(t.total_bytes().await.unwrap() <= 3_000);
    // A value larger than the whole budget is refused, not stored.
    let err = t
        .put(
            &"huge".to_string(),
            Entry::expiring_in(vec![0; 3_001], clock.now(), day()),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::QuotaExceeded { .. }), "{err}");
}

#[wasm_bindgen_test]
async fn a_write_in_the_background_is_ordered_before_what_comes_after_it() {
    let clock = ManualClock::new();
    let t = tier("background", &clock, 1 << 20).await;
    let key = |i: u32| format!("k{i}");
    let entry = |i: u32| Entry::expiring_in(vec![i as u8; 300], clock.now(), day());
    for i in 0..20 {
        // Written in the background, then removed at once: the removal,
        // made later, runs later, so nothing is left.
        t.put_many_in_background(vec![(key(i), entry(i))])
            .await
            .unwrap();
        CacheLayer::<String, Vec<u8>>::remove(&t, &key(i))
            .await
            .unwrap();
        let got = CacheLayer::<String, Vec<u8>>::get(&t, &key(i))
            .await
            .unwrap();
        assert_eq!(got, None, "round {i}: the removal lost to the write");
    }
    // Written in the background and then read: the read sees it, as does
    // the byte count.
    let batch: Vec<(String, Entry<Vec<u8>>)> = (100..150).map(|i| (key(i), entry(i))).collect();
    t.put_many_in_background(batch).await.unwrap();
    let got = CacheLayer::<String, Vec<u8>>::get_many(&t, &(100..150).map(key).collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(got.iter().all(Option::is_some), "{got:?}");
    assert_eq!(t.total_bytes().await.unwrap(), 50 * 300);
    // A value over the budget fails before anything is written.
    let huge = Entry::expiring_in(vec![0; 2 << 20], clock.now(), day());
    assert!(matches!(
        t.put_many_in_background(vec![(key(999), huge)]).await,
        Err(Error::QuotaExceeded { .. })
    ));
    // Without a connection (closed under it), it writes and waits.
    t.close_connection_for_test();
    t.put_many_in_background(vec![(key(500), entry(5))])
        .await
        .unwrap();
    let got = CacheLayer::<String, Vec<u8>>::get(&t, &key(500))
        .await
        .unwrap();
    assert_eq!(got.map(|e| e.value), Some(vec![5; 300]));
}

/// `get_many` reads the range its keys span (at most twice as many records
/// as keys) and asks for each key past what that returned on its own; the
/// answers come back in the order asked, duplicates and misses included,
/// whatever else the range holds.
#[wasm_bindgen_test]
async fn get_many_answers_in_order_whatever_else_the_range_holds() {
    let clock = ManualClock::new();
    let t = tier("many", &clock, 1 << 20).await;
    let key = |i: u32| format!("k{i:03}");
    let value = |i: u32| vec![(i % 251) as u8, (i / 251) as u8, 9];
    let stored: Vec<(String, Entry<Vec<u8>>)> = (0..300)
        .map(|i| (key(i), Entry::expiring_in(value(i), clock.now(), day())))
        .collect();
    CacheLayer::<String, Vec<u8>>::put_many(&t, stored)
        .await
        .unwrap();
    CacheLayer::<String, Vec<u8>>::remove(&t, &key(120))
        .await
        .unwrap();
    let check = |asked: &[u32]| {
        let keys: Vec<String> = asked.iter().map(|&i| key(i)).collect();
        let asked = asked.to_vec();
        let t = &t;
        async move {
            let got = CacheLayer::<String, Vec<u8>>::get_many(t, &keys)
                .await
                .unwrap();
            assert_eq!(got.len(), asked.len());
            for (&i, got) in asked.iter().zip(got) {
                let want = (i < 300 && i != 120).then(|| value(i));
                assert_eq!(got.map(|e| e.value), want, "key {}", key(i));
            }
        }
    };
    // Sparse: the range k000..=k299 holds 300 records, far more than twice
    // the 9 keys, so most are read one by one. Unsorted, a duplicate, two
    // misses (one past every stored key).
    check(&[299, 5, 150, 5, 0, 1000, 42, 120, 298]).await;
    // Dense: 50 consecutive keys, one of them removed, in reverse order.
    check(&(100..150).rev().collect::<Vec<u32>>()).await;
    // One key, and none.
    check(&[7]).await;
    assert!(CacheLayer::<String, Vec<u8>>::get_many(&t, &[])
        .await
        .unwrap()
        .is_empty());
}

#[wasm_bindgen_test]
async fn reopens_and_retries_once_when_the_connection_was_closed() {
    let clock = ManualClock::new();
    let t = tier("reopen", &clock, 1 << 20).await;
    t.put(
        &"k".to_string(),
        Entry::expiring_in(vec![9; 10], clock.now(), day()),
    )
    .await
    .unwrap();
    t.close_connection_for_test();
    let got = CacheLayer::<String, Vec<u8>>::get(&t, &"k".to_string())
        .await
        .unwrap();
    assert_eq!(got.map(|e| e.value), Some(vec![9; 10]));
    t.close_connection_for_test();
    t.put(
        &"k2".to_string(),
        Entry::expiring_in(vec![1; 10], clock.now(), day()),
    )
    .await
    .unwrap();
}

#[wasm_bindgen_test]
async fn closes_on_versionchange_so_another_tab_can_upgrade() {
    let clock = ManualClock::new();
    let name = unique("versionchange");
    let t = IndexedDbTier::<Vec<u8>>::builder(&name)
        .clock(clock.clone())
        .open()
        .await
        .unwrap();
    t.put(
        &"k".to_string(),
        Entry::expiring_in(vec![1], clock.now(), day()),
    )
    .await
    .unwrap();
    // Another context opens the same database at a higher version: it must not
    // stay blocked by our open connection.
    let outcome = open_upgrade(&name, 2).await.as_string().unwrap();
    assert_eq!(outcome, "upgraded");
    // Afterwards the tier reports an error (its schema version is gone), never a panic.
    let r = CacheLayer::<String, Vec<u8>>::get(&t, &"k".to_string()).await;
    assert!(r.is_err() || r.unwrap().is_none());
}

#[wasm_bindgen_test]
async fn missing_indexed_db_is_unavailable_not_a_panic() {
    let restore = hide_indexed_db();
    let r = IndexedDbTier::<Vec<u8>>::builder(&unique("absent"))
        .open()
        .await;
    restore.call0(&JsValue::NULL).unwrap();
    match r {
        Err(Error::Unavailable { .. }) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
}
