//! LocalStorageTier in headless Chromium: the conformance suite and bad input.
#![cfg(target_family = "wasm")]
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cache_browser::LocalStorageTier;
use cache_core::{conformance, CacheLayer, Clock, Entry, Error, ManualClock};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

fn storage() -> web_sys::Storage {
    web_sys::window().unwrap().local_storage().unwrap().unwrap()
}

fn day() -> Duration {
    Duration::from_secs(86_400)
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
