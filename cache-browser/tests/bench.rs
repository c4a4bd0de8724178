//! Browser benchmark (feature `browser-bench`; not a test): median hit latency of
//! each tier beside a plain-JS baseline doing the same operation in the same page.
//!
//! ```text
//! CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner CHROMEDRIVER=/usr/bin/chromedriver \
//!   cargo test -p cache-browser --release --features browser-bench --target wasm32-unknown-unknown --test bench -- --nocapture
//! ```
//!
//! Tier and baseline samples alternate, so load from other processes hits both
//! alike. Each sample is the mean of a batch of reads, far above the resolution
//! of `performance.now()` (5 µs in a cross-origin isolated page, 100 µs otherwise).
#![cfg(all(target_family = "wasm", feature = "browser-bench"))]
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cache_browser::{CacheApiTier, IndexedDbTier, LocalStorageTier};
use cache_core::{CacheLayer, Clock, Entry, SystemClock};
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// Samples per side.
const N: usize = 100;
/// LocalStorage reads per sample.
const SYNC_BATCH: usize = 1_000;
/// Distinct keys in the many-keys LocalStorage row (more than the tier keeps
/// JS key strings for).
const MANY: usize = 1_000;
/// IndexedDB / Cache API reads per sample (sequential, each awaited).
const ASYNC_BATCH: usize = 20;

#[wasm_bindgen(inline_js = r#"
export function ls_batch(key, batch) {
  const s = performance.now();
  for (let j = 0; j < batch; j++) { if (localStorage.getItem(key) === null) throw new Error("miss"); }
  return (performance.now() - s) / batch;
}
export function ls_json_batch(key, batch) {
  const s = performance.now();
  for (let j = 0; j < batch; j++) {
    const r = JSON.parse(localStorage.getItem(key));
    if (r.expires_at <= Date.now()) throw new Error("expired");
  }
  return (performance.now() - s) / batch;
}
export function ls_json_many_batch(prefix, n, batch) {
  const s = performance.now();
  for (let j = 0; j < batch; j++) {
    const r = JSON.parse(localStorage.getItem(prefix + (j % n)));
    if (r.expires_at <= Date.now()) throw new Error("expired");
  }
  return (performance.now() - s) / batch;
}
export async function idb_setup(size) {
  const db = await new Promise((res, rej) => {
    const r = indexedDB.open("bench-baseline-" + Math.random(), 1);
    r.onupgradeneeded = () => r.result.createObjectStore("s");
    r.onsuccess = () => res(r.result); r.onerror = () => rej(r.error);
  });
  await new Promise((res) => {
    const tx = db.transaction("s", "readwrite");
    tx.objectStore("s").put(new Uint8Array(size).fill(7), "k");
    tx.oncomplete = res;
  });
  return db;
}
export async function idb_batch(db, batch, size) {
  const s = performance.now();
  for (let j = 0; j < batch; j++) {
    const v = await new Promise((res) => {
      const r = db.transaction("s").objectStore("s").get("k");
      r.onsuccess = () => res(r.result);
    });
    if (v.length !== size) throw new Error("bad read");
  }
  return (performance.now() - s) / batch;
}
export async function idb_many_setup(keys, size) {
  const db = await new Promise((res, rej) => {
    const r = indexedDB.open("bench-baseline-" + Math.random(), 1);
    r.onupgradeneeded = () => r.result.createObjectStore("s");
    r.onsuccess = () => res(r.result); r.onerror = () => rej(r.error);
  });
  await new Promise((res) => {
    const tx = db.transaction("s", "readwrite");
    for (const k of keys) tx.objectStore("s").put(new Uint8Array(size).fill(7), k);
    tx.oncomplete = res;
  });
  return db;
}
// Every key's `get` issued at once in one readonly transaction, then all
// awaited: what `IndexedDbTier::get_many` did before its range read.
export async function idb_many_batch(db, keys, batch, size) {
  const s = performance.now();
  for (let j = 0; j < batch; j++) {
    const store = db.transaction("s").objectStore("s");
    const got = await Promise.all(keys.map((k) => new Promise((res) => {
      const r = store.get(k);
      r.onsuccess = () => res(r.result);
    })));
    if (got.some((v) => v.length !== size)) throw new Error("bad read");
  }
  return (performance.now() - s) / batch;
}
export async function cache_setup(size) {
  const cache = await caches.open("bench-baseline-" + Math.random());
  await cache.put("https://bench.invalid/k", new Response(new Uint8Array(size).fill(7)));
  return cache;
}
export async function cache_batch(cache, batch, size) {
  const s = performance.now();
  for (let j = 0; j < batch; j++) {
    const r = await cache.match("https://bench.invalid/k");
    const b = await r.arrayBuffer();
    if (b.byteLength !== size) throw new Error("bad read");
  }
  return (performance.now() - s) / batch;
}
"#)]
extern "C" {
    fn ls_batch(key: &str, batch: usize) -> f64;
    fn ls_json_batch(key: &str, batch: usize) -> f64;
    fn ls_json_many_batch(prefix: &str, n: usize, batch: usize) -> f64;
    async fn idb_setup(size: usize) -> JsValue;
    async fn idb_batch(db: &JsValue, batch: usize, size: usize) -> JsValue;
    async fn idb_many_setup(keys: Vec<String>, size: usize) -> JsValue;
    async fn idb_many_batch(db: &JsValue, keys: Vec<String>, batch: usize, size: usize) -> JsValue;
    async fn cache_setup(size: usize) -> JsValue;
    async fn cache_batch(cache: &JsValue, batch: usize, size: usize) -> JsValue;
}

fn now() -> f64 {
    js_sys::Reflect::get(&js_sys::global(), &"performance".into())
        .unwrap()
        .unchecked_into::<web_sys::Performance>()
        .now()
}

/// Polls a future that completes without waiting (a LocalStorage read) to its
/// end, so the batch measures the tier rather than the test's executor.
fn futures_ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("a LocalStorage read waited"),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn tier_batch<V: 'static, T: CacheLayer<String, V>>(tier: &T, key: &String) -> f64 {
    let s = now();
    for _ in 0..ASYNC_BATCH {
        assert!(tier.get(key).await.unwrap().is_some());
    }
    (now() - s) / ASYNC_BATCH as f64
}

fn row(name: &str, tier: &[f64], base: &[f64], baseline: &str) {
    let (t, b) = (median(tier.to_vec()), median(base.to_vec()));
    web_sys::console::log_1(
        &format!(
            "| {name} | {:.3} µs | {baseline} | {:.3} µs | {:.2}x |",
            t * 1000.0,
            b * 1000.0,
            t / b
        )
        .into(),
    );
}

/// `samples` samples of each side, `tier` and `base` alternating (after one
/// warm-up of each), the side that goes first swapping every sample.
async fn alternate<T, TF, B, BF>(samples: usize, tier: T, base: B) -> (Vec<f64>, Vec<f64>)
where
    T: Fn() -> TF,
    TF: std::future::Future<Output = f64>,
    B: Fn() -> BF,
    BF: std::future::Future<Output = f64>,
{
    tier().await;
    base().await;
    let (mut t, mut b) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    for i in 0..samples {
        if i % 2 == 0 {
            t.push(tier().await);
            b.push(base().await);
        } else {
            b.push(base().await);
            t.push(tier().await);
        }
    }
    (t, b)
}

#[wasm_bindgen_test]
async fn browser_hit_latency() {
    let day = Duration::from_secs(86_400);
    let key = "user:42".to_string();
    let img: Vec<u8> = (0..20 * 1024).map(|i| (i % 251) as u8).collect();
    let isolated = js_sys::Reflect::get(&js_sys::global(), &"crossOriginIsolated".into())
        .ok()
        .and_then(|v| v.as_bool());
    web_sys::console::log_1(
        &format!("(crossOriginIsolated: {isolated:?}; medians of {N} alternating samples)").into(),
    );
    web_sys::console::log_1(&"| tier | median hit | baseline | baseline median | ratio |".into());
    web_sys::console::log_1(&"|---|---|---|---|---|".into());

    // LocalStorage: a presigned-URL-sized record.
    let ls = LocalStorageTier::<String>::builder("bench").open().unwrap();
    let url = "https://img.example/avatars/42.png?X-Amz-Signature=0123456789abcdef".to_string();
    ls.put(&key, Entry::expiring_in(url, SystemClock.now(), day))
        .await
        .unwrap();
    let raw_key = format!("{}user~3A42", ls.prefix());
    let ls_tier_batch = || {
        let s = now();
        for _ in 0..SYNC_BATCH {
            let hit = futures_ready(CacheLayer::<String, String>::get(&ls, &key));
            assert!(hit.unwrap().is_some());
        }
        (now() - s) / SYNC_BATCH as f64
    };
    // Warm-up (JIT tiering of both the wasm and the JS), then the three sides in
    // a rotating order.
    for _ in 0..10 {
        ls_tier_batch();
        ls_batch(&raw_key, SYNC_BATCH);
        ls_json_batch(&raw_key, SYNC_BATCH);
    }
    let (mut tier, mut base, mut json) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..N {
        for side in 0..3 {
            match (i + side) % 3 {
                0 => tier.push(ls_tier_batch()),
                1 => base.push(ls_batch(&raw_key, SYNC_BATCH)),
                _ => json.push(ls_json_batch(&raw_key, SYNC_BATCH)),
            }
        }
    }
    row(
        "LocalStorageTier (URL JSON)",
        &tier,
        &base,
        "`localStorage.getItem`",
    );
    row(
        "LocalStorageTier (URL JSON)",
        &tier,
        &json,
        "`JSON.parse(localStorage.getItem(k))` + expiry check",
    );

    // Many keys: every read is of another key, more than the tier keeps JS key
    // strings for, so it builds each storage key afresh; the JS side builds its
    // key strings by concatenation, as a page would.
    let url =
        |i: usize| format!("https://img.example/avatars/{i}.png?X-Amz-Signature=0123456789abcdef");
    let keys: Vec<String> = (0..MANY).map(|i| format!("user:{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        ls.put(k, Entry::expiring_in(url(i), SystemClock.now(), day))
            .await
            .unwrap();
    }
    let many_prefix = format!("{}user~3A", ls.prefix());
    let ls_many_batch = || {
        let s = now();
        for j in 0..SYNC_BATCH {
            let hit = futures_ready(CacheLayer::<String, String>::get(&ls, &keys[j % MANY]));
            assert!(hit.unwrap().is_some());
        }
        (now() - s) / SYNC_BATCH as f64
    };
    for _ in 0..10 {
        ls_many_batch();
        ls_json_many_batch(&many_prefix, MANY, SYNC_BATCH);
    }
    let (mut tier, mut json) = (Vec::new(), Vec::new());
    for i in 0..N {
        if i % 2 == 0 {
            tier.push(ls_many_batch());
            json.push(ls_json_many_batch(&many_prefix, MANY, SYNC_BATCH));
        } else {
            json.push(ls_json_many_batch(&many_prefix, MANY, SYNC_BATCH));
            tier.push(ls_many_batch());
        }
    }
    row(
        "LocalStorageTier (URL JSON, 1,000 keys in turn)",
        &tier,
        &json,
        "`JSON.parse(localStorage.getItem(prefix + id))` + expiry check, same keys",
    );
    CacheLayer::<String, String>::clear(&ls).await.unwrap();

    // IndexedDB: a 20 KB image.
    let idb = IndexedDbTier::<Vec<u8>>::builder(&format!("bench-{}", js_sys::Math::random()))
        .open()
        .await
        .unwrap();
    idb.put(
        &key,
        Entry::expiring_in(img.clone(), SystemClock.now(), day),
    )
    .await
    .unwrap();
    let db = idb_setup(img.len()).await;
    let (tier, base) = alternate(
        N,
        || tier_batch::<Vec<u8>, _>(&idb, &key),
        || async {
            idb_batch(&db, ASYNC_BATCH, img.len())
                .await
                .as_f64()
                .unwrap()
        },
    )
    .await;
    row(
        "IndexedDbTier (20 KB image)",
        &tier,
        &base,
        "raw IndexedDB `get` (one readonly tx)",
    );

    // IndexedDB's batch: the 50 pictures of a friend list (1 KB each) in one
    // `get_many`, against 50 `get`s issued at once in one transaction.
    let friends: Vec<String> = (1..=50).map(|i| format!("avatar:{i}")).collect();
    let picture = vec![7u8; 1024];
    for k in &friends {
        idb.put(
            k,
            Entry::expiring_in(picture.clone(), SystemClock.now(), day),
        )
        .await
        .unwrap();
    }
    let stored: Vec<String> = friends.iter().map(|k| cache_core::key::encode(k)).collect();
    let db = idb_many_setup(stored.clone(), picture.len()).await;
    let many_batch = || async {
        let s = now();
        for _ in 0..ASYNC_BATCH {
            let got = CacheLayer::<String, Vec<u8>>::get_many(&idb, &friends)
                .await
                .unwrap();
            assert!(got
                .iter()
                .all(|e| e.as_ref().map(|e| e.value.len()) == Some(1024)));
        }
        (now() - s) / ASYNC_BATCH as f64
    };
    let raw_batch = || async {
        idb_many_batch(&db, stored.clone(), ASYNC_BATCH, picture.len())
            .await
            .as_f64()
            .unwrap()
    };
    let (tier, base) = alternate(N / 2, many_batch, raw_batch).await;
    row(
        "IndexedDbTier::get_many (50 pictures of 1 KB: one range read)",
        &tier,
        &base,
        "raw IndexedDB: 50 `get`s at once in one readonly tx",
    );

    // Cache API: a 20 KB response body.
    let ca = CacheApiTier::<Vec<u8>>::builder(&format!("bench-{}", js_sys::Math::random()))
        .open()
        .await
        .unwrap();
    ca.put(
        &key,
        Entry::expiring_in(img.clone(), SystemClock.now(), day),
    )
    .await
    .unwrap();
    let cache = cache_setup(img.len()).await;
    let (tier, base) = alternate(
        N,
        || tier_batch::<Vec<u8>, _>(&ca, &key),
        || async {
            cache_batch(&cache, ASYNC_BATCH, img.len())
                .await
                .as_f64()
                .unwrap()
        },
    )
    .await;
    row(
        "CacheApiTier (20 KB body)",
        &tier,
        &base,
        "`cache.match` + `arrayBuffer()`",
    );
}
