//! The tiers inside a service worker: the Cache API and IndexedDB work there
//! (found through `globalThis`, not `window`), LocalStorage is absent and is
//! reported as unavailable.
#![cfg(target_family = "wasm")]
#![allow(clippy::unwrap_used)]

use cache_browser::LocalStorageTier;
use cache_core::{conformance, Error};
use wasm_bindgen_test::*;

mod support;

wasm_bindgen_test_configure!(run_in_service_worker);

#[wasm_bindgen_test]
async fn cache_api_passes_conformance_in_a_service_worker() {
    conformance::run::<_, Vec<u8>, _, _>(support::conformance_cache_api).await;
}

#[wasm_bindgen_test]
async fn indexed_db_passes_conformance_in_a_service_worker() {
    conformance::run::<_, Vec<u8>, _, _>(support::conformance_indexed_db).await;
}

#[wasm_bindgen_test]
fn local_storage_is_unavailable_in_a_service_worker() {
    match LocalStorageTier::<String>::builder("sw").open() {
        Err(Error::Unavailable { .. }) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
}
