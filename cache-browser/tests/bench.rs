//! Browser benchmark (feature `browser-bench`; not a test): median hit latency of
//! each tier beside a plain-JS baseline doing the same operation in the same page.
//!
//! ```text
//! CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner CHROMEDRIVER=/usr/bin/chromedriver \
//!   cargo test -p cache-browser --release --features browser-bench --target wasm32-unknown-unknown --test bench -- --nocapture
//! ```
#![cfg(all(target_family = "wasm", feature = "browser-bench"))]
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cache_browser::{CacheApiTier, IndexedDbTier, LocalStorageTier};
use cache_core::{CacheLayer, Clock, Entry, SystemClock};
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const N: usize = 400;

#[wasm_bindgen(inline_js = r#"
function median(a) { a.sort((x, y) => x - y); return a[a.length >> 1]; }
export function js_local_storage(key, n) {
  // One getItem is below the timer's resolution: time batches of 100.
  const t = [];
  for (let i = 0; i < n; i++) {
    const s = performance.now();
    for (let j = 0; j < 100; j++) { if (localStorage.getItem(key) === null) throw new Error("miss"); }
    t.push((performance.now() - s) / 100);
  }
  return median(t);
}
export async function js_indexed_db(n, size) {
  const db = await new Promise((res, rej) => {
    const r = indexedDB.open("bench-baseline-" + Math.random(), 1);
    r.onupgradeneeded = () => r.result.createObjectStore("s");
    r.onsuccess = () => res(r.result); r.onerror = () => rej(r.error);
  });
  await new Promise((res) => { const tx = db.transaction("s", "readwrite"); tx.objectStore("s").put(new Uint8Array(size).fill(7), "k"); tx.oncomplete = res; });
  const t = [];
  for (let i = 0; i < n; i++) {
    const s = performance.now();
    const v = await new Promise((res) => { const r = db.transaction("s").objectStore("s").get("k"); r.onsuccess = () => res(r.result); });
    if (v.length !== size) throw new Error("bad read");
    t.push(performance.now() - s);
  }
  db.close();
  return median(t);
}
export async function js_cache_match(n, size) {
  const cache = await caches.open("bench-baseline-" + Math.random());
  await cache.put("https://bench.invalid/k", new Response(new Uint8Array(size).fill(7)));
  const t = [];
  for (let i = 0; i < n; i++) {
    const s = performance.now();
    const r = await cache.match("https://bench.invalid/k");
    const b = await r.arrayBuffer();
    if (b.byteLength !== size) throw new Error("bad read");
    t.push(performance.now() - s);
  }
  return median(t);
}
"#)]
extern "C" {
    fn js_local_storage(key: &str, n: usize) -> f64;
    async fn js_indexed_db(n: usize, size: usize) -> JsValue;
    async fn js_cache_match(n: usize, size: usize) -> JsValue;
}

fn now() -> f64 {
    js_sys::Reflect::get(&js_sys::global(), &"performance".into())
        .unwrap()
        .unchecked_into::<web_sys::Performance>()
        .now()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn time_gets<V: 'static, T: CacheLayer<String, V>>(tier: &T, key: &str) -> f64 {
    let key = key.to_string();
    // Warm-up.
    for _ in 0..20 {
        assert!(tier.get(&key).await.unwrap().is_some());
    }
    let mut t = Vec::with_capacity(N);
    for _ in 0..N {
        let s = now();
        let hit = tier.get(&key).await.unwrap();
        t.push(now() - s);
        assert!(hit.is_some());
    }
    median(t)
}

fn row(name: &str, tier: f64, base: f64, baseline: &str) {
    web_sys::console::log_1(
        &format!(
            "| {name} | {tier:.4} ms | {baseline} | {base:.4} ms | {:.2}x |",
            tier / base
        )
        .into(),
    );
}

#[wasm_bindgen_test]
async fn browser_hit_latency() {
    let day = Duration::from_secs(86_400);
    let img: Vec<u8> = (0..20 * 1024).map(|i| (i % 251) as u8).collect();
    web_sys::console::log_1(&"| tier | median hit | baseline | baseline median | ratio |".into());
    web_sys::console::log_1(&"|---|---|---|---|---|".into());

    let ls = LocalStorageTier::<String>::builder("bench").open().unwrap();
    let url = "https://img.example/avatars/42.png?X-Amz-Signature=0123456789abcdef".to_string();
    ls.put(
        &"user:42".to_string(),
        Entry::expiring_in(url, SystemClock.now(), day),
    )
    .await
    .unwrap();
    let tier = {
        // Batches of 100, as the baseline: one read is below the timer's resolution.
        let key = "user:42".to_string();
        let mut t = Vec::with_capacity(N);
        for _ in 0..N {
            let s = now();
            for _ in 0..100 {
                assert!(CacheLayer::<String, String>::get(&ls, &key)
                    .await
                    .unwrap()
                    .is_some());
            }
            t.push((now() - s) / 100.0);
        }
        median(t)
    };
    let base = js_local_storage(&format!("{}user~3A42", ls.prefix()), N);
    row(
        "LocalStorageTier (URL JSON)",
        tier,
        base,
        "`localStorage.getItem`",
    );

    let idb = IndexedDbTier::<Vec<u8>>::builder(&format!("bench-{}", js_sys::Math::random()))
        .open()
        .await
        .unwrap();
    idb.put(
        &"user:42".to_string(),
        Entry::expiring_in(img.clone(), SystemClock.now(), day),
    )
    .await
    .unwrap();
    let tier = time_gets::<Vec<u8>, _>(&idb, "user:42").await;
    let base = js_indexed_db(N, img.len()).await.as_f64().unwrap();
    row(
        "IndexedDbTier (20 KB image)",
        tier,
        base,
        "raw IndexedDB `get` (one readonly tx)",
    );

    let ca = CacheApiTier::<Vec<u8>>::builder(&format!("bench-{}", js_sys::Math::random()))
        .open()
        .await
        .unwrap();
    ca.put(
        &"user:42".to_string(),
        Entry::expiring_in(img.clone(), SystemClock.now(), day),
    )
    .await
    .unwrap();
    let tier = time_gets::<Vec<u8>, _>(&ca, "user:42").await;
    let base = js_cache_match(N, img.len()).await.as_f64().unwrap();
    row(
        "CacheApiTier (20 KB body)",
        tier,
        base,
        "`cache.match` + `arrayBuffer()`",
    );
}
