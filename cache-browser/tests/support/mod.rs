//! What the browser test files share: unique storage names, a picture, the
//! page helpers that must be written in JavaScript (timers, images, storage
//! that is hidden or blocked), a counting network for the profile-picture
//! preset, and the storage tiers as the conformance suite builds them.
//!
//! Each test file is its own crate and uses part of this module.
#![allow(dead_code, clippy::unwrap_used)]

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use cache_browser::{CacheApiTier, IndexedDbTier, Picture, ProfilePictures};
use cache_core::conformance::Setup;
use cache_core::{BoxError, Clock, Entry, ManualClock};
use wasm_bindgen::prelude::*;

/// A 1×1 PNG.
pub(crate) const PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4,
    0x89, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0xF8, 0xCF, 0xC0, 0xF0,
    0x1F, 0x00, 0x05, 0x00, 0x01, 0xFF, 0x89, 0x99, 0x3D, 0x1D, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
];

/// One hour.
pub(crate) const HOUR: Duration = Duration::from_secs(3_600);

/// One day.
pub(crate) fn day() -> Duration {
    Duration::from_secs(86_400)
}

/// `name` with a random suffix: storage that no other test (or earlier run in
/// the same browser profile) has used.
pub(crate) fn unique(name: &str) -> String {
    format!("{name}-{}", js_sys::Math::random().to_bits())
}

#[wasm_bindgen(inline_js = r#"
export function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }
export function load_img(src) {
  return new Promise((resolve) => {
    const img = document.createElement("img");
    img.onload = () => resolve(img.naturalWidth);
    img.onerror = () => resolve(-1);
    img.src = src;
  });
}
export function hide_local_storage(mode) {
  const desc = Object.getOwnPropertyDescriptor(globalThis, "localStorage")
    || Object.getOwnPropertyDescriptor(Window.prototype, "localStorage");
  Object.defineProperty(globalThis, "localStorage", { configurable: true, get() {
    // What Chromium does when site data is blocked: the getter throws.
    if (mode === "blocked") throw new DOMException("Access is denied for this document.", "SecurityError");
    return undefined;
  }});
  return () => { delete globalThis.localStorage; if (!("localStorage" in globalThis)) Object.defineProperty(globalThis, "localStorage", desc); };
}
export function hide_indexed_db() {
  const desc = Object.getOwnPropertyDescriptor(globalThis, "indexedDB")
    || Object.getOwnPropertyDescriptor(Object.getPrototypeOf(globalThis), "indexedDB");
  Object.defineProperty(globalThis, "indexedDB", { configurable: true, get() { return undefined; } });
  return () => { delete globalThis.indexedDB; if (!("indexedDB" in globalThis)) Object.defineProperty(globalThis, "indexedDB", desc); };
}
export function open_upgrade(name, version) {
  return new Promise((resolve) => {
    const req = indexedDB.open(name, version);
    req.onblocked = () => resolve("blocked");
    req.onsuccess = () => { req.result.close(); resolve("upgraded"); };
    req.onerror = () => resolve("error: " + req.error);
  });
}
"#)]
extern "C" {
    /// Resolves after `ms` milliseconds (a macrotask later).
    pub(crate) async fn sleep(ms: u32);
    /// Loads `src` into an `<img>`: its natural width, or -1 if it failed.
    pub(crate) async fn load_img(src: &str) -> JsValue;
    /// Makes `localStorage` undefined (`mode` "absent") or throw a
    /// `SecurityError` ("blocked"); the function returned puts it back.
    pub(crate) fn hide_local_storage(mode: &str) -> js_sys::Function;
    /// Makes `indexedDB` undefined; the function returned puts it back.
    pub(crate) fn hide_indexed_db() -> js_sys::Function;
    /// Opens database `name` at `version`: "upgraded", "blocked" (an open
    /// connection did not close) or "error: …".
    pub(crate) async fn open_upgrade(name: &str, version: u32) -> JsValue;
}

/// Polls `done` every 10 ms (a liveness bound of 20 s, not a speed claim).
pub(crate) async fn until(what: &str, done: impl Fn() -> bool) {
    let mut waited = 0;
    while !done() {
        assert!(waited < 20_000, "never happened: {what}");
        sleep(10).await;
        waited += 10;
    }
}

/// What a test network answers.
pub(crate) type Answer = Pin<Box<dyn Future<Output = Result<Option<Entry<Picture>>, BoxError>>>>;

/// A network for [`ProfilePictures::builder`]: counts its calls in `calls`;
/// call `n` answers `https://img.example/{user}.png?v={n}` (the PNG),
/// valid for `life` from the clock's time of the call. User "nobody" has no
/// picture.
pub(crate) fn counting_network(
    clock: &ManualClock,
    calls: Rc<Cell<u32>>,
    life: Duration,
) -> impl Fn(String) -> Answer + 'static {
    let clock = clock.clone();
    move |user: String| {
        let calls = calls.clone();
        let now = clock.now();
        Box::pin(async move {
            calls.set(calls.get() + 1);
            if user == "nobody" {
                return Ok(None);
            }
            let picture = Picture {
                url: format!("https://img.example/{user}.png?v={}", calls.get()),
                bytes: Some(Bytes::from_static(PNG)),
                content_type: "image/png".into(),
            };
            Ok(Some(Entry::expiring_in(picture, now, life)))
        })
    }
}

/// The profile-picture preset on `ns` over a [`counting_network`] whose
/// pictures live an hour, on cross-tab `channel` if given.
pub(crate) async fn pictures(
    ns: &str,
    channel: Option<&str>,
    clock: &ManualClock,
    calls: Rc<Cell<u32>>,
) -> ProfilePictures {
    let mut builder = ProfilePictures::builder(ns)
        .clock(clock.clone())
        .network(counting_network(clock, calls, HOUR));
    if let Some(channel) = channel {
        builder = builder.cross_tab(channel);
    }
    builder.build().await
}

/// A Cache API tier as the conformance suite asks for it (a fresh cache).
pub(crate) async fn conformance_cache_api(setup: Setup) -> CacheApiTier<Vec<u8>> {
    let mut b = CacheApiTier::<Vec<u8>>::builder(&unique(&setup.namespace)).clock(setup.clock);
    if let Some(ttl) = setup.tier_ttl {
        b = b.ttl(ttl);
    }
    b.open().await.unwrap()
}

/// An IndexedDB tier as the conformance suite asks for it (a fresh database).
pub(crate) async fn conformance_indexed_db(setup: Setup) -> IndexedDbTier<Vec<u8>> {
    let mut b = IndexedDbTier::<Vec<u8>>::builder(&unique(&setup.namespace)).clock(setup.clock);
    if let Some(ttl) = setup.tier_ttl {
        b = b.ttl(ttl);
    }
    b.open().await.unwrap()
}
