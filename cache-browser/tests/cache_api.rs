//! CacheApiTier in headless Chromium (window context).
#![cfg(target_family = "wasm")]
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cache_browser::{CacheApiTier, EXPIRES_HEADER};
use cache_core::{conformance, CacheLayer, Clock, Entry, Error, ManualClock};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

mod support;
use support::{day, unique};

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen(inline_js = r#"
export async function opaque_response() {
  // The same server under another origin: an IPv4-mapped IPv6 address is a
  // different host string than 127.0.0.1 but reaches the same socket.
  const url = location.protocol + "//[::ffff:127.0.0.1]:" + location.port + "/";
  try {
    return await fetch(url, { mode: "no-cors" });
  } catch (e) {
    throw new Error("the cross-origin no-cors fetch failed (" + e + "): the test page must not be " +
      "cross-origin isolated; run with WASM_BINDGEN_TEST_NO_ORIGIN_ISOLATION=1");
  }
}
export function error_response() {
  return Response.error();
}
export async function put_foreign(cache_name, url) {
  const cache = await caches.open(cache_name);
  await cache.put(url, new Response("not ours"));
}
"#)]
extern "C" {
    fn error_response() -> JsValue;
    async fn opaque_response() -> JsValue;
    async fn put_foreign(cache_name: &str, url: &str);
}

#[wasm_bindgen_test]
async fn cache_api_passes_conformance() {
    conformance::run::<_, Vec<u8>, _, _>(support::conformance_cache_api).await;
}

#[wasm_bindgen_test]
async fn refuses_opaque_responses() {
    let clock = ManualClock::new();
    let t = CacheApiTier::<Vec<u8>>::builder(&unique("opaque-real"))
        .clock(clock.clone())
        .open()
        .await
        .unwrap();
    let resp: web_sys::Response = opaque_response().await.unchecked_into();
    assert_eq!(
        resp.type_(),
        web_sys::ResponseType::Opaque,
        "the fixture must be opaque"
    );
    let err = t
        .put_response("avatar:1", &resp, clock.now().saturating_add(day()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Encode { .. }), "{err}");
    assert_eq!(t.len().await.unwrap(), 0, "nothing stored");
}

#[wasm_bindgen_test]
async fn refuses_responses_whose_type_hides_the_body() {
    // The test server has a single origin, so no real opaque (cross-origin
    // no-cors) response can be made here; `Response.error()` (type "error")
    // goes through the same type check that refuses "opaque" and "opaqueredirect".
    let clock = ManualClock::new();
    let t = CacheApiTier::<Vec<u8>>::builder(&unique("opaque"))
        .clock(clock.clone())
        .open()
        .await
        .unwrap();
    let resp: web_sys::Response = error_response().unchecked_into();
    assert_eq!(resp.type_(), web_sys::ResponseType::Error);
    let err = t
        .put_response("avatar:1", &resp, clock.now().saturating_add(day()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Encode { .. }), "{err}");
    assert_eq!(t.len().await.unwrap(), 0, "nothing stored");
}

#[wasm_bindgen_test]
async fn stores_real_responses_under_a_stable_logical_url_with_expiry_header() {
    let clock = ManualClock::new();
    let name = unique("responses");
    let t = CacheApiTier::<Vec<u8>>::builder(&name)
        .base_url("https://app.example/avatars/")
        .clock(clock.clone())
        .open()
        .await
        .unwrap();
    let init = web_sys::ResponseInit::new();
    let headers = web_sys::Headers::new().unwrap();
    headers.set("content-type", "image/png").unwrap();
    init.set_headers(&headers);
    let resp = web_sys::Response::new_with_opt_str_and_init(Some("PNGDATA"), &init).unwrap();
    let expires = clock.now().saturating_add(Duration::from_secs(3_600));
    t.put_response("user:42", &resp, expires).await.unwrap();
    assert_eq!(
        t.url_for("user:42"),
        "https://app.example/avatars/user~3A42"
    );
    let (got, at) = t.match_response("user:42").await.unwrap().unwrap();
    assert_eq!(at, expires);
    assert_eq!(
        got.headers().get("content-type").unwrap().as_deref(),
        Some("image/png")
    );
    assert_eq!(
        got.headers().get(EXPIRES_HEADER).unwrap(),
        Some(expires.as_unix_millis().to_string())
    );
    let text = JsFuture::from(got.text().unwrap())
        .await
        .unwrap()
        .as_string()
        .unwrap();
    assert_eq!(text, "PNGDATA");
    clock.advance(Duration::from_secs(3_600));
    assert!(t.match_response("user:42").await.unwrap().is_none());
    assert_eq!(t.len().await.unwrap(), 0, "expired response deleted");
}

#[wasm_bindgen_test]
async fn foreign_response_under_our_url_is_a_miss_and_removed() {
    let name = unique("foreign");
    let t = CacheApiTier::<Vec<u8>>::builder(&name)
        .open()
        .await
        .unwrap();
    put_foreign(&name, &t.url_for("k")).await;
    assert_eq!(t.len().await.unwrap(), 1);
    assert!(CacheLayer::<String, Vec<u8>>::get(&t, &"k".to_string())
        .await
        .unwrap()
        .is_none());
    assert_eq!(t.len().await.unwrap(), 0);
}

#[wasm_bindgen_test]
async fn keeps_at_most_max_entries_dropping_the_oldest() {
    let clock = ManualClock::new();
    let t = CacheApiTier::<Vec<u8>>::builder(&unique("max"))
        .clock(clock.clone())
        .max_entries(3)
        .open()
        .await
        .unwrap();
    for i in 0..5u8 {
        t.put(
            &format!("k{i}"),
            Entry::expiring_in(vec![i], clock.now(), day()),
        )
        .await
        .unwrap();
    }
    assert_eq!(t.len().await.unwrap(), 3);
    for (i, want) in [(0, false), (1, false), (2, true), (3, true), (4, true)] {
        let got = CacheLayer::<String, Vec<u8>>::get(&t, &format!("k{i}"))
            .await
            .unwrap();
        assert_eq!(got.is_some(), want, "k{i}");
    }
}
