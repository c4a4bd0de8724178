//! What the storage tiers keep, to the byte, in headless Chromium: a page
//! that stored records with one release reads them with the next (a reload
//! after an upgrade), so these layouts change only on purpose.
#![cfg(target_family = "wasm")]
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cache_browser::{CacheApiTier, IndexedDbTier, LocalStorageTier};
use cache_core::{CacheLayer, Clock, Entry, ManualClock, Timestamp};
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::*;

mod support;
use support::unique;

wasm_bindgen_test_configure!(run_in_browser);

const DAY: Duration = Duration::from_secs(86_400);

/// `ManualClock::START` + one day, in ms since the epoch.
const EXPIRES: u64 = 1_767_312_000_000;

/// `[["user:42",0]]` and `[["team:7",3]]`, hex-encoded as the Cache API tier
/// keeps them in its tags header.
#[cfg(feature = "tags")]
const USER_42_HEX: &str = "5b5b22757365723a3432222c305d5d";
const TEAM_7_HEX: &str = "5b5b227465616d3a37222c335d5d";

fn entry<V>(value: V, clock: &ManualClock) -> Entry<V> {
    Entry::expiring_in(value, clock.now(), DAY)
}

#[cfg(feature = "tags")]
fn tagged<V>(value: V, clock: &ManualClock) -> Entry<V> {
    entry(value, clock).with_tags(["user:42"])
}

fn tags_of<V>(entry: &Entry<V>) -> Vec<(String, u64)> {
    entry
        .tags
        .list()
        .iter()
        .map(|(n, g)| (n.to_owned(), g))
        .collect()
}

#[wasm_bindgen(inline_js = r#"
function request(r) {
  return new Promise((resolve, reject) => { r.onsuccess = () => resolve(r.result); r.onerror = () => reject(r.error); });
}
function describe(v) {
  if (v instanceof Uint8Array) return "Uint8Array[" + v.join(",") + "]";
  return typeof v + " " + JSON.stringify(v);
}
// The record under `key` in the tier's `entries` store, field by field in
// their order, or null.
export async function idb_record(db_name, key) {
  const db = await request(indexedDB.open(db_name));
  try {
    const rec = await request(db.transaction("entries").objectStore("entries").get(key));
    if (rec === undefined) return null;
    return Object.keys(rec).map((k) => k + ": " + describe(rec[k])).join("\n");
  } finally { db.close(); }
}
// Stores a record as the previous release wrote it.
export async function idb_put_old(db_name, key, record_key, bytes, expires_at, tags) {
  const value = new Uint8Array(bytes);
  const rec = { format: "cache-browser/1", key: record_key, value, expires_at };
  if (tags !== undefined) rec.tags = tags;
  const db = await request(indexedDB.open(db_name));
  try {
    const tx = db.transaction("entries", "readwrite");
    tx.objectStore("entries").put(rec, key);
    await new Promise((resolve, reject) => { tx.oncomplete = resolve; tx.onerror = () => reject(tx.error); });
  } finally { db.close(); }
}
// The response under `url`: its headers (sorted) and body, or null.
export async function cached_response(cache_name, url) {
  const r = await (await caches.open(cache_name)).match(url);
  if (!r) return null;
  const lines = [];
  r.headers.forEach((v, k) => lines.push(k + ": " + v));
  lines.sort();
  lines.push("status: " + r.status);
  lines.push("body: " + new Uint8Array(await r.arrayBuffer()).join(","));
  return lines.join("\n");
}
// Stores a response as the previous release wrote it.
export async function cache_put_old(cache_name, url, bytes, expires_at, tags_hex) {
  const body = new Uint8Array(bytes);
  const headers = { "content-type": "application/octet-stream", "x-cache-browser-expires-at": expires_at };
  if (tags_hex !== undefined) headers["x-cache-browser-tags"] = tags_hex;
  await (await caches.open(cache_name)).put(url, new Response(body, { status: 200, headers }));
}
"#)]
extern "C" {
    async fn idb_record(db_name: &str, key: &str) -> JsValue;
    async fn idb_put_old(
        db_name: &str,
        key: &str,
        record_key: &str,
        bytes: &[u8],
        expires_at: f64,
        tags: Option<String>,
    );
    async fn cached_response(cache_name: &str, url: &str) -> JsValue;
    async fn cache_put_old(
        cache_name: &str,
        url: &str,
        bytes: &[u8],
        expires_at: &str,
        tags_hex: Option<String>,
    );
}

fn storage() -> web_sys::Storage {
    web_sys::window().unwrap().local_storage().unwrap().unwrap()
}

#[wasm_bindgen_test]
async fn local_storage_records_keep_their_layout() {
    let clock = ManualClock::new();
    let t = LocalStorageTier::<String>::builder(&unique("fmt"))
        .clock(clock.clone())
        .open()
        .unwrap();
    let at = |encoded: &str| format!("{}{encoded}", t.prefix());
    t.put(
        &"user:42".to_string(),
        entry("https://img/42".into(), &clock),
    )
    .await
    .unwrap();
    assert_eq!(
        storage().get_item(&at("user~3A42")).unwrap().unwrap(),
        format!(
            r#"{{"format":"cache-browser/1","key":"user:42","value":"https://img/42","expires_at":{EXPIRES},"stored_at":1767225600000}}"#
        )
    );
    #[cfg(feature = "tags")]
    {
        t.put(
            &"user:42".to_string(),
            tagged("https://img/42".into(), &clock),
        )
        .await
        .unwrap();
        assert_eq!(
            storage().get_item(&at("user~3A42")).unwrap().unwrap(),
            format!(
                r#"{{"format":"cache-browser/1","key":"user:42","value":"https://img/42","expires_at":{EXPIRES},"stored_at":1767225600000,"tags":[["user:42",0]]}}"#
            )
        );
    }

    // Records as the previous release wrote them.
    storage()
        .set_item(
            &at("old"),
            r#"{"format":"cache-browser/1","key":"old","value":"v","expires_at":1767312000000,"stored_at":1}"#,
        )
        .unwrap();
    let old = CacheLayer::<String, String>::get(&t, &"old".to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.value, "v");
    assert_eq!(old.expires_at, Timestamp::from_unix_millis(EXPIRES));
    assert!(old.tags.is_empty());
    storage()
        .set_item(
            &at("old-tagged"),
            r#"{"format":"cache-browser/1","key":"old-tagged","value":"v","expires_at":1767312000000,"stored_at":1,"tags":[["team:7",3]]}"#,
        )
        .unwrap();
    let old = CacheLayer::<String, String>::get(&t, &"old-tagged".to_string())
        .await
        .unwrap();
    if cfg!(feature = "tags") {
        assert_eq!(tags_of(&old.unwrap()), [("team:7".to_string(), 3)]);
    } else {
        // This build cannot check tags: a miss, and removed.
        assert!(old.is_none());
        assert!(storage().get_item(&at("old-tagged")).unwrap().is_none());
    }
}

#[wasm_bindgen_test]
async fn indexed_db_records_keep_their_layout() {
    let clock = ManualClock::new();
    let db = unique("fmt");
    let t = IndexedDbTier::<Vec<u8>>::builder(&db)
        .clock(clock.clone())
        .open()
        .await
        .unwrap();
    t.put(&"user:42".to_string(), entry(vec![1, 2, 3], &clock))
        .await
        .unwrap();
    let layout = format!(
        "format: string \"cache-browser/1\"\nkey: string \"user:42\"\nvalue: Uint8Array[1,2,3]\nexpires_at: number {EXPIRES}"
    );
    assert_eq!(
        idb_record(&db, "user~3A42").await.as_string().unwrap(),
        layout
    );
    #[cfg(feature = "tags")]
    {
        t.put(&"user:42".to_string(), tagged(vec![1, 2, 3], &clock))
            .await
            .unwrap();
        assert_eq!(
            idb_record(&db, "user~3A42").await.as_string().unwrap(),
            format!("{layout}\ntags: string \"[[\\\"user:42\\\",0]]\"")
        );
    }

    idb_put_old(&db, "old", "old", &[4, 5], EXPIRES as f64, None).await;
    let old = CacheLayer::<String, Vec<u8>>::get(&t, &"old".to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.value, [4, 5]);
    assert_eq!(old.expires_at, Timestamp::from_unix_millis(EXPIRES));
    assert!(old.tags.is_empty());
    idb_put_old(
        &db,
        "old-tagged",
        "old-tagged",
        &[6],
        EXPIRES as f64,
        Some(r#"[["team:7",3]]"#.into()),
    )
    .await;
    let old = CacheLayer::<String, Vec<u8>>::get(&t, &"old-tagged".to_string())
        .await
        .unwrap();
    if cfg!(feature = "tags") {
        assert_eq!(tags_of(&old.unwrap()), [("team:7".to_string(), 3)]);
    } else {
        assert!(old.is_none());
        assert!(idb_record(&db, "old-tagged").await.is_null());
    }
    // Corrupt tags, or a record of another key: misses, and removed.
    idb_put_old(
        &db,
        "bad-tags",
        "bad-tags",
        &[7],
        EXPIRES as f64,
        Some("[[".into()),
    )
    .await;
    idb_put_old(&db, "copy", "old", &[8], EXPIRES as f64, None).await;
    for key in ["bad-tags", "copy"] {
        let got = CacheLayer::<String, Vec<u8>>::get(&t, &key.to_string())
            .await
            .unwrap();
        assert!(got.is_none(), "{key} served");
        assert!(idb_record(&db, key).await.is_null(), "{key} not removed");
    }
}

#[wasm_bindgen_test]
async fn cache_api_responses_keep_their_layout() {
    let clock = ManualClock::new();
    let name = unique("fmt");
    let t = CacheApiTier::<Vec<u8>>::builder(&name)
        .clock(clock.clone())
        .open()
        .await
        .unwrap();
    t.put(&"user:42".to_string(), entry(vec![1, 2, 3], &clock))
        .await
        .unwrap();
    let url = t.url_for("user:42");
    assert_eq!(url, "https://cache-browser.invalid/user~3A42");
    assert_eq!(
        cached_response(&name, &url).await.as_string().unwrap(),
        format!(
            "content-type: application/octet-stream\nx-cache-browser-expires-at: {EXPIRES}\nstatus: 200\nbody: 1,2,3"
        )
    );
    #[cfg(feature = "tags")]
    {
        t.put(&"user:42".to_string(), tagged(vec![1, 2, 3], &clock))
            .await
            .unwrap();
        assert_eq!(
            cached_response(&name, &url).await.as_string().unwrap(),
            format!(
                "content-type: application/octet-stream\nx-cache-browser-expires-at: {EXPIRES}\nx-cache-browser-tags: {USER_42_HEX}\nstatus: 200\nbody: 1,2,3"
            )
        );
    }

    let old_url = t.url_for("old");
    cache_put_old(&name, &old_url, &[4, 5], &EXPIRES.to_string(), None).await;
    let old = CacheLayer::<String, Vec<u8>>::get(&t, &"old".to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.value, [4, 5]);
    assert_eq!(old.expires_at, Timestamp::from_unix_millis(EXPIRES));
    assert!(old.tags.is_empty());
    let tagged_url = t.url_for("old-tagged");
    cache_put_old(
        &name,
        &tagged_url,
        &[6],
        &EXPIRES.to_string(),
        Some(TEAM_7_HEX.into()),
    )
    .await;
    let old = CacheLayer::<String, Vec<u8>>::get(&t, &"old-tagged".to_string())
        .await
        .unwrap();
    if cfg!(feature = "tags") {
        assert_eq!(tags_of(&old.unwrap()), [("team:7".to_string(), 3)]);
    } else {
        assert!(old.is_none());
        assert!(cached_response(&name, &tagged_url).await.is_null());
    }
    // Corrupt tags or expiry: misses, and removed.
    let bad_tags = t.url_for("bad-tags");
    cache_put_old(
        &name,
        &bad_tags,
        &[7],
        &EXPIRES.to_string(),
        Some("5bzz".into()),
    )
    .await;
    let bad_expiry = t.url_for("bad-expiry");
    cache_put_old(&name, &bad_expiry, &[8], "soon", None).await;
    for (key, url) in [("bad-tags", &bad_tags), ("bad-expiry", &bad_expiry)] {
        let got = CacheLayer::<String, Vec<u8>>::get(&t, &key.to_string())
            .await
            .unwrap();
        assert!(got.is_none(), "{key} served");
        assert!(
            cached_response(&name, url).await.is_null(),
            "{key} not removed"
        );
    }
}
