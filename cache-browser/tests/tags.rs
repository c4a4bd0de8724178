//! Tags on the page's tiers, in headless Chromium: `invalidate_tag` drops
//! every entry carrying the tag from memory, LocalStorage, IndexedDB and the
//! Cache API, and the generations outlive the page (a reload, another tab).
#![cfg(target_family = "wasm")]
#![allow(clippy::unwrap_used)]
// `Tier::shared` takes an `Arc`; on wasm32 nothing is `Send`.
#![allow(clippy::arc_with_non_send_sync)]

use std::sync::Arc;

use cache_browser::{CacheApiTier, IndexedDbTier, LocalStorageTagStore, LocalStorageTier};
use cache_core::{
    CacheLayer, Clock, Entry, ManualClock, MemoryTier, Source, TagStore, Tier, TieredCache,
};
use wasm_bindgen_test::*;

mod support;
use support::{unique, HOUR};

wasm_bindgen_test_configure!(run_in_browser);

/// The tiers of one page (the same storage names give the same storage).
struct Page {
    chain: TieredCache<String, Vec<u8>>,
    memory: Arc<MemoryTier<String, Vec<u8>>>,
    local: Arc<LocalStorageTier<Vec<u8>>>,
    idb: Arc<IndexedDbTier<Vec<u8>>>,
    cache_api: Arc<CacheApiTier<Vec<u8>>>,
}

async fn page(ns: &str, clock: &ManualClock) -> Page {
    let memory = Arc::new(MemoryTier::builder().clock(clock.clone()).build());
    let local = Arc::new(
        LocalStorageTier::<Vec<u8>>::builder(&format!("ls-{ns}"))
            .clock(clock.clone())
            .open()
            .unwrap(),
    );
    let idb = Arc::new(
        IndexedDbTier::<Vec<u8>>::builder(&format!("idb-{ns}"))
            .clock(clock.clone())
            .open()
            .await
            .unwrap(),
    );
    let cache_api = Arc::new(
        CacheApiTier::<Vec<u8>>::builder(&format!("ca-{ns}"))
            .clock(clock.clone())
            .open()
            .await
            .unwrap(),
    );
    let chain = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::shared(memory.clone()))
        .tier(Tier::shared(local.clone()))
        .tier(Tier::shared(idb.clone()))
        .tier(Tier::shared(cache_api.clone()))
        .tag_store(Arc::new(LocalStorageTagStore::open(ns).unwrap()))
        .build();
    Page {
        chain,
        memory,
        local,
        idb,
        cache_api,
    }
}

fn tagged(bytes: &[u8], clock: &ManualClock, tags: &[&str]) -> Entry<Vec<u8>> {
    Entry::expiring_in(bytes.to_vec(), clock.now(), HOUR).with_tags(tags.iter().copied())
}

#[wasm_bindgen_test]
async fn invalidate_tag_drops_tagged_entries_from_every_browser_tier_and_survives_a_reload() {
    let clock = ManualClock::new();
    let ns = unique("tags");
    let first = page(&ns, &clock).await;
    let key = |s: &str| s.to_string();
    first
        .chain
        .put(&key("avatar:42"), tagged(b"png-42", &clock, &["user:42"]))
        .await
        .unwrap();
    first
        .chain
        .put(&key("avatar:7"), tagged(b"png-7", &clock, &["user:7"]))
        .await
        .unwrap();
    // Every tier holds the entry with its tags.
    let layers: [&dyn CacheLayer<String, Vec<u8>>; 4] = [
        &*first.memory,
        &*first.local,
        &*first.idb,
        &*first.cache_api,
    ];
    for layer in layers {
        let held = layer.get(&key("avatar:42")).await.unwrap().unwrap();
        assert_eq!(
            held.tags.list().iter().collect::<Vec<_>>(),
            [("user:42", 0)],
            "{}",
            layer.name()
        );
    }

    assert_eq!(first.chain.invalidate_tag("user:42").await.unwrap(), 1);
    assert!(first.chain.get(&key("avatar:42")).await.unwrap().is_none());
    // Each tier on its own, below the ones above it: still absent.
    for only in 0..4 {
        let single: TieredCache<String, Vec<u8>> = TieredCache::builder()
            .clock(clock.clone())
            .tier(Tier::shared(
                [
                    first.memory.clone() as Arc<dyn CacheLayer<String, Vec<u8>>>,
                    first.local.clone(),
                    first.idb.clone(),
                    first.cache_api.clone(),
                ][only]
                    .clone(),
            ))
            .tag_store(Arc::new(LocalStorageTagStore::open(&ns).unwrap()))
            .build();
        assert!(
            single.get(&key("avatar:42")).await.unwrap().is_none(),
            "tier {only} served a value whose tag was bumped"
        );
        assert!(single.get(&key("avatar:7")).await.unwrap().is_some());
    }

    // A reload (or another tab): a new chain over the same storage. The
    // generation is in localStorage, so the old entries stay absent there too.
    drop(first);
    let second = page(&ns, &clock).await;
    assert!(second.chain.get(&key("avatar:42")).await.unwrap().is_none());
    let seven = second.chain.get(&key("avatar:7")).await.unwrap().unwrap();
    assert!(
        matches!(seven.source, Source::Tier { index: 1, .. }),
        "{:?}",
        seven.source
    );
    // A bump in this "tab" is seen by a chain that was already open.
    let third = page(&ns, &clock).await;
    assert!(third.chain.get(&key("avatar:7")).await.unwrap().is_some());
    second.chain.invalidate_tag("user:7").await.unwrap();
    assert!(third.chain.get(&key("avatar:7")).await.unwrap().is_none());
}

#[wasm_bindgen_test]
async fn the_tag_store_survives_clearing_the_local_storage_tier() {
    let clock = ManualClock::new();
    let ns = unique("tags-clear");
    let p = page(&ns, &clock).await;
    p.chain.invalidate_tag("t").await.unwrap();
    p.chain.invalidate_tag("t").await.unwrap();
    CacheLayer::<String, Vec<u8>>::clear(&*p.local)
        .await
        .unwrap();
    p.chain.clear().await.unwrap();
    let store = LocalStorageTagStore::open(&ns).unwrap();
    assert_eq!(store.generations(&["t"]).await.unwrap(), [2]);
    assert_eq!(store.generation_now("t").unwrap().unwrap(), 2);
}
