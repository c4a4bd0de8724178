//! The profile-picture preset and cross-tab invalidation in headless Chromium.
#![cfg(target_family = "wasm")]
#![allow(clippy::unwrap_used)]
// `Tier::shared` takes an `Arc`; on wasm32 nothing is `Send`.
#![allow(clippy::arc_with_non_send_sync)]

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use cache_browser::{CrossTabInvalidation, Picture, ProfilePictures};
use cache_core::{BoxError, CacheLayer, Clock, Entry, ManualClock, MemoryTier, Tier, TieredCache};
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::*;

mod support;
use support::{
    counting_network, day, hide_indexed_db, hide_local_storage, load_img, open_upgrade, sleep,
    unique,
};

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen(inline_js = r#"
export function same_origin_frame_channel(name) {
  const iframe = document.createElement("iframe");
  document.body.appendChild(iframe);
  // about:blank inherits our origin: a second same-origin browsing context.
  if (iframe.contentWindow.origin !== self.origin) throw new Error("not same-origin");
  return new iframe.contentWindow.BroadcastChannel(name);
}
"#)]
extern "C" {
    fn same_origin_frame_channel(name: &str) -> JsValue;
}

/// Records which tiers reported errors.
#[derive(Debug, Default)]
struct Errors(std::sync::Mutex<Vec<String>>);

impl cache_core::Observer for Errors {
    fn on_event(&self, event: &cache_core::Event<'_>) {
        if event.kind == cache_core::EventKind::Error {
            if let cache_core::EventSource::Tier { name, .. } = event.source {
                self.0.lock().unwrap().push(name.to_owned());
            }
        }
    }
}

async fn pictures(ns: &str, clock: &ManualClock, calls: Rc<Cell<u32>>) -> ProfilePictures {
    pictures_observed(ns, clock, calls, std::sync::Arc::new(Errors::default())).await
}

async fn pictures_observed(
    ns: &str,
    clock: &ManualClock,
    calls: Rc<Cell<u32>>,
    errors: std::sync::Arc<Errors>,
) -> ProfilePictures {
    ProfilePictures::builder(ns)
        .observer(errors)
        .clock(clock.clone())
        .network(counting_network(clock, calls, 30 * day()))
        .build()
        .await
}

#[wasm_bindgen_test]
async fn profile_preset_serves_from_each_tier_in_order_and_backfills() {
    let ns = unique("pp");
    let clock = ManualClock::new();
    let calls = Rc::new(Cell::new(0));
    let p = pictures(&ns, &clock, calls.clone()).await;
    assert_eq!(
        p.tier_names(),
        ["memory", "local_storage", "indexed_db", "cache_api"]
    );

    let first = p.get("42").await.unwrap().unwrap();
    assert_eq!(
        first.expires_at,
        clock.now().saturating_add(Duration::from_secs(30 * 86_400))
    );
    assert_eq!(first.served_by, "network");
    assert!(
        first.src.starts_with("data:image/png;base64,"),
        "{}",
        first.src
    );
    assert_eq!(
        load_img(&first.src).await.as_f64(),
        Some(1.0),
        "the <img> must load the object URL"
    );
    assert_eq!(p.get("42").await.unwrap().unwrap().served_by, "memory");

    // A new page session: memory is empty, LocalStorage has the URL and,
    // the picture being small, its bytes.
    let p2 = pictures(&ns, &clock, calls.clone()).await;
    let hit = p2.get("42").await.unwrap().unwrap();
    assert_eq!(hit.served_by, "local_storage");
    assert_eq!(hit.src, first.src);

    // 46 minutes later LocalStorage has expired; IndexedDB has the bytes.
    clock.advance(Duration::from_secs(46 * 60));
    let p3 = pictures(&ns, &clock, calls.clone()).await;
    let hit = p3.get("42").await.unwrap().unwrap();
    assert_eq!(hit.served_by, "indexed_db");
    assert_eq!(load_img(&hit.src).await.as_f64(), Some(1.0));
    // ... which backfilled the memory tier above it ...
    assert_eq!(p3.get("42").await.unwrap().unwrap().served_by, "memory");
    // ... and that hit backfilled LocalStorage.
    let p4 = pictures(&ns, &clock, calls.clone()).await;
    assert_eq!(
        p4.get("42").await.unwrap().unwrap().served_by,
        "local_storage"
    );

    // Without LocalStorage and IndexedDB copies, the Cache API answers.
    p4.cache()
        .only(&[0, 1, 2])
        .invalidate(&"42".to_string())
        .await
        .unwrap();
    let p5 = pictures(&ns, &clock, calls.clone()).await;
    let hit = p5.get("42").await.unwrap().unwrap();
    assert_eq!(hit.served_by, "cache_api");
    assert_eq!(load_img(&hit.src).await.as_f64(), Some(1.0));
    assert_eq!(calls.get(), 1, "the network was asked once");

    // After seven days every stored copy is gone: back to the network.
    clock.advance(Duration::from_secs(7 * 86_400));
    let p6 = pictures(&ns, &clock, calls.clone()).await;
    assert_eq!(p6.get("42").await.unwrap().unwrap().served_by, "network");
    assert_eq!(calls.get(), 2);
}

/// User `n`'s picture is `n` bytes (`https://img.example/{n}`), valid 30 days.
fn sized_network(clock: &ManualClock) -> impl Fn(String) -> support::Answer + 'static {
    let clock = clock.clone();
    move |user: String| {
        let now = clock.now();
        Box::pin(async move {
            let n: usize = user.parse()?;
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + n) as u8).collect();
            let picture = Picture {
                url: format!("https://img.example/{user}"),
                bytes: Some(Bytes::from(bytes)),
                content_type: "image/png".into(),
            };
            Ok(Some(Entry::expiring_in(picture, now, 30 * day())))
        })
    }
}

#[wasm_bindgen_test]
async fn local_storage_keeps_the_bytes_of_pictures_up_to_the_limit() {
    let ns = unique("inline");
    let clock = ManualClock::new();
    let session = || {
        ProfilePictures::builder(&ns)
            .clock(clock.clone())
            .local_storage_picture_bytes(6)
            .network(sized_network(&clock))
            .build()
    };
    let users: Vec<String> = (0..=9).map(|n| n.to_string()).collect();
    let first = session().await;
    let mut shown = Vec::new();
    for user in &users {
        let p = first.get(user).await.unwrap().unwrap();
        assert_eq!(p.served_by, "network");
        shown.push(p.src);
    }

    // A new page session: pictures of 1 to 6 bytes (every base64 padding)
    // come from LocalStorage as they were shown; an empty one and those over
    // the limit as their URL.
    let second = session().await;
    for (n, user) in users.iter().enumerate() {
        let p = second.get(user).await.unwrap().unwrap();
        assert_eq!(p.served_by, "local_storage", "user {user}");
        if (1..=6).contains(&n) {
            assert_eq!(p.src, shown[n], "user {user}");
            assert!(p.src.starts_with("data:image/png;base64,"), "{}", p.src);
        } else {
            assert_eq!(p.src, format!("https://img.example/{user}"));
        }
    }

    // Stored bytes that do not decode leave the URL, which still loads.
    let prefix = cache_browser::LocalStorageTier::<String>::builder(&ns)
        .open()
        .unwrap()
        .prefix()
        .to_owned();
    let storage = web_sys::window().unwrap().local_storage().unwrap().unwrap();
    let record = storage.get_item(&format!("{prefix}3")).unwrap().unwrap();
    let b64 = shown[3].trim_start_matches("data:image/png;base64,");
    let stored = format!("\"base64\":\"{b64}\"");
    assert!(record.contains(&stored), "{record} holds {stored}");
    storage
        .set_item(
            &format!("{prefix}3"),
            &record.replace(&stored, "\"base64\":\"@@@=\""),
        )
        .unwrap();
    let third = session().await;
    let p = third.get("3").await.unwrap().unwrap();
    assert_eq!(p.served_by, "local_storage");
    assert_eq!(p.src, "https://img.example/3");
}

#[wasm_bindgen_test]
async fn blocked_local_storage_leaves_the_tier_out_and_the_chain_works() {
    let restore = hide_local_storage("blocked");
    let clock = ManualClock::new();
    let calls = Rc::new(Cell::new(0));
    let p = pictures(&unique("blocked"), &clock, calls.clone()).await;
    restore.call0(&JsValue::NULL).unwrap();
    assert_eq!(p.tier_names(), ["memory", "indexed_db", "cache_api"]);
    assert_eq!(p.get("7").await.unwrap().unwrap().served_by, "network");
    assert_eq!(p.get("7").await.unwrap().unwrap().served_by, "memory");
}

#[wasm_bindgen_test]
async fn invalidate_in_one_tab_clears_the_memory_tier_of_another() {
    let name = unique("tabs");
    let clock = ManualClock::new();
    let make = || {
        let memory = std::sync::Arc::new(
            MemoryTier::<String, String>::builder()
                .clock(clock.clone())
                .build(),
        );
        let chain = TieredCache::builder()
            .clock(clock.clone())
            .tier(Tier::shared(memory.clone()))
            .build();
        (memory, chain)
    };
    let (mem_a, cache_a) = make();
    let (mem_b, cache_b) = make();
    let tab_a = CrossTabInvalidation::new(cache_a, &name, &[0]).unwrap();
    let tab_b = CrossTabInvalidation::with_channel(
        cache_b,
        same_origin_frame_channel(&name).unchecked_into(),
        &[0],
    );
    let entry = Entry::expiring_in("v".to_string(), clock.now(), Duration::from_secs(600));
    for key in ["user:1", "user:2", "team:1"] {
        tab_a
            .cache()
            .put(&key.to_string(), entry.clone())
            .await
            .unwrap();
        tab_b
            .cache()
            .put(&key.to_string(), entry.clone())
            .await
            .unwrap();
    }

    tab_a.invalidate(&"user:1".to_string()).await.unwrap();
    assert!(mem_a.get(&"user:1".to_string()).await.unwrap().is_none());
    let mut waited = 0;
    while mem_b.get(&"user:1".to_string()).await.unwrap().is_some() {
        assert!(
            waited < 10_000,
            "tab B never heard of the invalidation (liveness bound 10 s)"
        );
        sleep(10).await;
        waited += 10;
    }
    assert!(
        mem_b.get(&"user:2".to_string()).await.unwrap().is_some(),
        "only the key"
    );

    // And back the other way, by prefix.
    tab_b.invalidate_prefix("user:").await.unwrap();
    let mut waited = 0;
    while mem_a.get(&"user:2".to_string()).await.unwrap().is_some() {
        assert!(
            waited < 10_000,
            "tab A never heard of the prefix invalidation"
        );
        sleep(10).await;
        waited += 10;
    }
    assert!(mem_a.get(&"team:1".to_string()).await.unwrap().is_some());
}

#[wasm_bindgen_test]
async fn missing_indexed_db_leaves_the_tier_out_and_the_chain_works() {
    let restore = hide_indexed_db();
    let clock = ManualClock::new();
    let calls = Rc::new(Cell::new(0));
    let p = pictures(&unique("no-idb"), &clock, calls.clone()).await;
    restore.call0(&JsValue::NULL).unwrap();
    assert_eq!(p.tier_names(), ["memory", "local_storage", "cache_api"]);
    assert_eq!(p.get("9").await.unwrap().unwrap().served_by, "network");
    p.cache()
        .only(&[0, 1])
        .invalidate(&"9".to_string())
        .await
        .unwrap();
    assert_eq!(p.get("9").await.unwrap().unwrap().served_by, "cache_api");
    assert_eq!(calls.get(), 1);
}

#[wasm_bindgen_test]
async fn a_tier_failing_at_run_time_is_a_miss_and_the_chain_carries_on() {
    let ns = unique("fail-open");
    let clock = ManualClock::new();
    let calls = Rc::new(Cell::new(0));
    let errors = std::sync::Arc::new(Errors::default());
    let p = pictures_observed(&ns, &clock, calls.clone(), errors.clone()).await;
    assert_eq!(p.get("5").await.unwrap().unwrap().served_by, "network");
    assert!(errors.0.lock().unwrap().is_empty());
    // Another tab upgrades the IndexedDB schema: our tier closes its connection
    // and cannot reopen at its version, so every IndexedDB read now fails.
    assert_eq!(open_upgrade(&ns, 2).await.as_string().unwrap(), "upgraded");
    p.cache()
        .only(&[0, 1])
        .invalidate(&"5".to_string())
        .await
        .unwrap();
    let hit = p.get("5").await.unwrap().unwrap();
    assert_eq!(
        hit.served_by, "cache_api",
        "IndexedDB errored, the next tier answered"
    );
    assert_eq!(calls.get(), 1);
    assert!(
        errors.0.lock().unwrap().iter().any(|t| t == "indexed_db"),
        "the IndexedDB failure must reach the observer: {:?}",
        errors.0.lock().unwrap()
    );
}

#[wasm_bindgen_test]
async fn chain_get_many_over_browser_tiers_loads_misses_in_one_batch() {
    // Exercises cache-core's batch-load path on wasm32 (the one that needed
    // `Box::pin` instead of `.boxed()`).
    #[derive(Debug)]
    struct Batch(Rc<Cell<u32>>);
    #[cache_core::async_trait(?Send)]
    impl cache_core::Loader<String, String> for Batch {
        async fn load(&self, key: &String) -> Result<Option<Entry<String>>, BoxError> {
            Ok(self
                .load_many(std::slice::from_ref(key))
                .await?
                .pop()
                .flatten())
        }
        async fn load_many(&self, keys: &[String]) -> Result<Vec<Option<Entry<String>>>, BoxError> {
            self.0.set(self.0.get() + 1);
            let now = ManualClock::START;
            Ok(keys
                .iter()
                .map(|k| {
                    Some(Entry::expiring_in(
                        format!("v-{k}"),
                        now,
                        Duration::from_secs(3_600),
                    ))
                })
                .collect())
        }
    }
    let clock = ManualClock::new();
    let batches = Rc::new(Cell::new(0));
    let ls = cache_browser::LocalStorageTier::<String>::builder(&unique("many"))
        .clock(clock.clone())
        .open()
        .unwrap();
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::new(ls))
        .origin(Batch(batches.clone()))
        .build();
    let keys: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
    let got = cache.get_many(&keys).await.unwrap();
    assert_eq!(batches.get(), 1, "one batch load for all misses");
    for (k, g) in keys.iter().zip(&got) {
        assert_eq!(
            g.as_ref().map(|l| l.value().clone()),
            Some(format!("v-{k}"))
        );
    }
    let again = cache.get_many(&keys).await.unwrap();
    assert!(again.iter().all(|l| matches!(
        l.as_ref().map(|l| l.source),
        Some(cache_core::Source::Tier { index: 0, .. })
    )));
    assert_eq!(batches.get(), 1);
}
