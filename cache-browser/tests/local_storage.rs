//! LocalStorageTier in headless Chromium: the conformance suite and bad input.
#![cfg(target_family = "wasm")]
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cache_browser::LocalStorageTier;
use cache_core::{conformance, CacheLayer, Clock, Entry, Error, ManualClock};
use wasm_bindgen_test::*;

mod support;
use support::{day, hide_local_storage};

wasm_bindgen_test_configure!(run_in_browser);

fn storage() -> web_sys::Storage {
    web_sys::window().unwrap().local_storage().unwrap().unwrap()
}

#[wasm_bindgen_test]
async fn local_storage_passes_conformance() {
    conformance::run::<_, String, _, _>(|setup| async move {
        let mut b = LocalStorageTier::<String>::builder(&format!("ls-{}", setup.namespace))
            .clock(setup.clock.clone());
        if let Some(ttl) = setup.tier_ttl {
            b = b.ttl(ttl);
        }
        let tier = b.open().unwrap();
        // A fresh namespace per check: drop anything a previous run left.
        CacheLayer::<String, String>::clear(&tier).await.unwrap();
        tier
    })
    .await;
}

fn tier(ns: &str, clock: &ManualClock) -> LocalStorageTier<String> {
    let t = LocalStorageTier::<String>::builder(ns)
        .clock(clock.clone())
        .open()
        .unwrap();
    for i in (0..storage().length().unwrap()).rev() {
        if let Some(k) = storage().key(i).unwrap() {
            if k.starts_with(t.prefix()) {
                storage().remove_item(&k).unwrap();
            }
        }
    }
    t
}

#[wasm_bindgen(inline_js = r#"
export function fill_local_storage(prefix) {
  // Fill the real origin quota with someone else's data.
  const chunk = "x".repeat(256 * 1024);
  let i = 0;
  try { for (;;) { localStorage.setItem(prefix + (i++), chunk); } } catch (e) { if (e.name !== "QuotaExceededError") throw e; }
  let small = "x".repeat(1024);
  try { for (;;) { localStorage.setItem(prefix + (i++), small); } } catch (e) {}
  return i;
}
export function unfill_local_storage(prefix) {
  for (let i = localStorage.length - 1; i >= 0; i--) { const k = localStorage.key(i); if (k && k.startsWith(prefix)) localStorage.removeItem(k); }
}
"#)]
extern "C" {
    fn fill_local_storage(prefix: &str) -> u32;
    fn unfill_local_storage(prefix: &str);
}

use wasm_bindgen::prelude::*;

#[wasm_bindgen_test]
async fn corrupt_and_foreign_records_are_misses_and_removed() {
    let clock = ManualClock::new();
    let t = tier("bad-records", &clock);
    let k = |s: &str| format!("{}{}", t.prefix(), cache_core::key::encode(s));
    storage().set_item(&k("corrupt"), "{not json").unwrap();
    storage()
        .set_item(
            &k("foreign"),
            r#"{"value":"x","expires_at":99999999999999,"stored_at":0}"#,
        )
        .unwrap();
    // Our format, but recorded for another key (copied by hand): not served.
    t.put(
        &"real".to_string(),
        Entry::expiring_in("v".into(), clock.now(), day()),
    )
    .await
    .unwrap();
    let copied = storage().get_item(&k("real")).unwrap().unwrap();
    // The record is plain JSON: {format, key, value, expires_at, stored_at}.
    let record: js_sys::Object = js_sys::JSON::parse(&copied).unwrap().unchecked_into();
    let field = |f: &str| js_sys::Reflect::get(&record, &f.into()).unwrap();
    assert_eq!(field("value").as_string().as_deref(), Some("v"));
    assert_eq!(field("key").as_string().as_deref(), Some("real"));
    assert_eq!(
        field("expires_at").as_f64(),
        Some((clock.now().as_unix_millis() + 86_400_000) as f64)
    );
    assert_eq!(
        field("stored_at").as_f64(),
        Some(clock.now().as_unix_millis() as f64)
    );
    storage().set_item(&k("copy"), &copied).unwrap();
    for key in ["corrupt", "foreign", "copy"] {
        let got = CacheLayer::<String, String>::get(&t, &key.to_string())
            .await
            .unwrap();
        assert!(got.is_none(), "{key} served");
        assert!(
            storage().get_item(&k(key)).unwrap().is_none(),
            "{key} not removed"
        );
    }
    assert!(CacheLayer::<String, String>::get(&t, &"real".to_string())
        .await
        .unwrap()
        .is_some());
}

#[wasm_bindgen_test]
async fn clear_touches_only_our_prefix() {
    let clock = ManualClock::new();
    let t = tier("mine", &clock);
    storage().set_item("someone-else", "keep me").unwrap();
    t.put(
        &"a".to_string(),
        Entry::expiring_in("v".into(), clock.now(), day()),
    )
    .await
    .unwrap();
    CacheLayer::<String, String>::clear(&t).await.unwrap();
    assert_eq!(
        storage().get_item("someone-else").unwrap().as_deref(),
        Some("keep me")
    );
    assert!(CacheLayer::<String, String>::get(&t, &"a".to_string())
        .await
        .unwrap()
        .is_none());
    storage().remove_item("someone-else").unwrap();
}

#[wasm_bindgen_test]
async fn full_storage_evicts_our_oldest_and_retries_then_reports_quota() {
    let clock = ManualClock::new();
    let t = tier("full", &clock);
    for i in 0..8u32 {
        t.put(
            &format!("old{i}"),
            Entry::expiring_in("o".repeat(20_000), clock.now(), day()),
        )
        .await
        .unwrap();
        clock.advance(Duration::from_secs(1));
    }
    fill_local_storage("zz-other-app:");
    // Room is made among our own records, oldest first.
    let r = t
        .put(
            &"new".to_string(),
            Entry::expiring_in("n".repeat(30_000), clock.now(), day()),
        )
        .await;
    let kept_new = CacheLayer::<String, String>::get(&t, &"new".to_string())
        .await
        .unwrap()
        .is_some();
    let old0 = CacheLayer::<String, String>::get(&t, &"old0".to_string())
        .await
        .unwrap()
        .is_some();
    let old7 = CacheLayer::<String, String>::get(&t, &"old7".to_string())
        .await
        .unwrap()
        .is_some();
    // With none of our records left, the quota error is reported.
    CacheLayer::<String, String>::clear(&t).await.unwrap();
    fill_local_storage("zz-other-app:more:");
    let err = t
        .put(
            &"big".to_string(),
            Entry::expiring_in("b".repeat(100_000), clock.now(), day()),
        )
        .await;
    unfill_local_storage("zz-other-app:");
    r.unwrap();
    assert!(kept_new, "the new record was stored after eviction");
    assert!(!old0, "the oldest record was evicted");
    assert!(old7, "the newest old record survived");
    match err {
        Err(Error::QuotaExceeded { .. }) => {}
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
}

#[wasm_bindgen_test]
fn missing_or_blocked_storage_is_detected_by_the_write_probe() {
    for mode in ["missing", "blocked"] {
        let restore = hide_local_storage(mode);
        let r = LocalStorageTier::<String>::builder("probe").open();
        restore.call0(&JsValue::NULL).unwrap();
        match r {
            Err(Error::Unavailable { .. }) => {}
            other => panic!("{mode}: expected Unavailable, got {other:?}"),
        }
    }
    assert!(
        LocalStorageTier::<String>::builder("probe").open().is_ok(),
        "restored"
    );
}

#[wasm_bindgen_test]
async fn hostile_keys_never_reach_other_entries() {
    let clock = ManualClock::new();
    let t = tier("hostile", &clock);
    t.put(
        &"a/../b".to_string(),
        Entry::expiring_in("1".into(), clock.now(), day()),
    )
    .await
    .unwrap();
    t.put(
        &"b".to_string(),
        Entry::expiring_in("2".into(), clock.now(), day()),
    )
    .await
    .unwrap();
    let raw: Vec<String> = (0..storage().length().unwrap())
        .filter_map(|i| storage().key(i).unwrap())
        .filter(|k| k.starts_with(t.prefix()))
        .collect();
    assert!(
        raw.iter()
            .all(|k| !k[t.prefix().len()..].contains(['/', '.', ':'])),
        "{raw:?}"
    );
    let err = t
        .put(
            &"nul\0".to_string(),
            Entry::expiring_in("x".into(), clock.now(), day()),
        )
        .await;
    assert!(matches!(err, Err(Error::InvalidKey { .. })));
    let got = CacheLayer::<String, String>::get(&t, &"b".to_string())
        .await
        .unwrap()
        .map(|e| e.value);
    assert_eq!(got.as_deref(), Some("2"));
}

#[wasm_bindgen_test]
async fn values_of_any_size_and_script_round_trip() {
    // The read path copies records into a reusable buffer that starts at 1 KiB
    // and grows up to 64 KiB; bigger records, and non-ASCII text, must read back
    // exactly all the same, and again on the next read (after the buffer grew).
    let clock = ManualClock::new();
    let t = tier("sizes", &clock);
    let values = [
        ("ascii", "https://img.example/42.png".to_string()),
        ("accents", "café/naïve/Ünïcödé".repeat(3)),
        (
            "emoji",
            "🖼️ avatar 😀 \u{10FFFF} \"quoted\" \\ \n\t".to_string(),
        ),
        // Fits the starting buffer in UTF-16 units but not in UTF-8 bytes.
        ("partial", "é".repeat(600)),
        ("mid", "m".repeat(5_000)),
        ("mid-utf8", "é".repeat(3_000)),
        ("huge", "h€".repeat(60_000)),
        ("ключ", "значение".to_string()),
    ];
    for (k, v) in &values {
        t.put(
            &k.to_string(),
            Entry::expiring_in(v.clone(), clock.now(), day()),
        )
        .await
        .unwrap();
    }
    for round in 0..2 {
        for (k, v) in &values {
            let got = CacheLayer::<String, String>::get(&t, &k.to_string())
                .await
                .unwrap()
                .map(|e| e.value);
            assert_eq!(got.as_deref(), Some(v.as_str()), "{k}, round {round}");
        }
    }
    // A small record after a huge one: no stale bytes from the bigger read.
    let got = CacheLayer::<String, String>::get(&t, &"ascii".to_string())
        .await
        .unwrap()
        .map(|e| e.value);
    assert_eq!(got.as_deref(), Some("https://img.example/42.png"));
    CacheLayer::<String, String>::clear(&t).await.unwrap();
}

#[wasm_bindgen_test]
async fn many_keys_read_right_past_the_key_cache() {
    // The tier keeps the storage keys of recent reads as JS strings (bounded,
    // starting over when full): each key must still read its own record.
    let clock = ManualClock::new();
    let t = tier("many", &clock);
    for i in 0..600u32 {
        t.put(
            &format!("k{i}"),
            Entry::expiring_in(format!("v{i}"), clock.now(), day()),
        )
        .await
        .unwrap();
    }
    for round in 0..2 {
        for i in (0..600u32).rev() {
            let got = CacheLayer::<String, String>::get(&t, &format!("k{i}"))
                .await
                .unwrap()
                .map(|e| e.value);
            assert_eq!(got, Some(format!("v{i}")), "round {round}");
        }
    }
    // Long keys (their storage keys are passed to JS another way) and the
    // longest valid key.
    for k in [
        "é".repeat(100),
        "x/".repeat(100),
        "z".repeat(cache_core::key::MAX_KEY_BYTES),
    ] {
        t.put(&k, Entry::expiring_in(k.clone(), clock.now(), day()))
            .await
            .unwrap();
        for _ in 0..2 {
            let got = CacheLayer::<String, String>::get(&t, &k)
                .await
                .unwrap()
                .map(|e| e.value);
            assert_eq!(got.as_ref(), Some(&k));
        }
    }
    // A key removed behind the tier's back is a miss, not a stale hit.
    storage().remove_item(&format!("{}k7", t.prefix())).unwrap();
    assert!(CacheLayer::<String, String>::get(&t, &"k7".to_string())
        .await
        .unwrap()
        .is_none());
    CacheLayer::<String, String>::clear(&t).await.unwrap();
}

#[wasm_bindgen_test]
async fn reads_stay_right_after_wasm_memory_grows() {
    // The read path writes records into wasm memory from JS; growing the memory
    // replaces its buffer, and reads must follow.
    let clock = ManualClock::new();
    let t = tier("grow", &clock);
    let k = "user:1".to_string();
    t.put(&k, Entry::expiring_in("before".into(), clock.now(), day()))
        .await
        .unwrap();
    let get = || async {
        CacheLayer::<String, String>::get(&t, &k)
            .await
            .unwrap()
            .map(|e| e.value)
    };
    assert_eq!(get().await.as_deref(), Some("before"));
    let pages_before = wasm_bindgen::memory()
        .unchecked_into::<js_sys::WebAssembly::Memory>()
        .grow(0);
    let big = vec![1u8; 64 << 20];
    let pages_after = wasm_bindgen::memory()
        .unchecked_into::<js_sys::WebAssembly::Memory>()
        .grow(0);
    assert!(pages_after > pages_before, "the memory grew");
    t.put(&k, Entry::expiring_in("after".into(), clock.now(), day()))
        .await
        .unwrap();
    assert_eq!(get().await.as_deref(), Some("after"));
    assert_eq!(big.iter().map(|&b| u64::from(b)).sum::<u64>(), 64 << 20);
}
