//! Refresh-ahead in headless Chromium, its background reload run by
//! `PageSpawner` on the page's event loop (issue 13): a hit past the refresh
//! window answers at once with the current value and starts one reload; an
//! invalidation during the reload wins; the reload fills the page's tiers.
//!
//! The origin is a loader that, once held, waits on a JS promise the test
//! resolves, so every interleaving here is chosen by the test, not by timing.
#![cfg(target_family = "wasm")]
#![allow(clippy::unwrap_used)]
// `Tier::shared` takes an `Arc`; on wasm32 nothing is `Send`.
#![allow(clippy::arc_with_non_send_sync)]

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use cache_browser::{IndexedDbTier, LocalStorageTier, PageSpawner};
use cache_core::{
    loader_fn, BoxError, BoxFuture, CacheLayer, Clock, Entry, ManualClock, MemoryTier, Source,
    Spawn, Tier, TieredCache,
};
use futures_util::FutureExt;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

mod support;
use support::{sleep, unique};

wasm_bindgen_test_configure!(run_in_browser);

/// What the origin gives: entries that live a minute.
const LIFE: Duration = Duration::from_secs(60);
/// The refresh window: the last 10 s of an entry's life.
const WINDOW: Duration = Duration::from_secs(10);

/// The origin: call `n` answers `v{n}`, expiring `LIFE` after the clock's
/// time when it was called. While `hold` is set, each call waits for the test
/// to resolve its promise ([`Origin::release`]).
#[derive(Default)]
struct Origin {
    calls: Cell<u32>,
    hold: Cell<bool>,
    /// The resolve functions of the held calls' promises.
    held: RefCell<Vec<js_sys::Function>>,
}

impl Origin {
    /// Resolves every held call; returns how many there were.
    fn release(&self) -> usize {
        let held: Vec<_> = self.held.borrow_mut().drain(..).collect();
        for resolve in &held {
            resolve.call0(&JsValue::NULL).unwrap();
        }
        held.len()
    }
}

/// The chain under test, its tiers kept for direct reads.
struct Page {
    clock: ManualClock,
    origin: Rc<Origin>,
    memory: Arc<MemoryTier<String, Vec<u8>>>,
    local: Arc<LocalStorageTier<Vec<u8>>>,
    idb: Option<Arc<IndexedDbTier<Vec<u8>>>>,
    cache: TieredCache<String, Vec<u8>>,
    /// Refresh tasks spawned and finished (the spawner is `PageSpawner`,
    /// wrapped to count).
    spawned: Rc<Cell<u32>>,
    finished: Rc<Cell<u32>>,
}

/// memory → LocalStorage (→ IndexedDB) → the origin, refreshing ahead on
/// `PageSpawner`.
async fn page(with_indexed_db: bool) -> Page {
    let clock = ManualClock::new();
    let origin = Rc::new(Origin::default());
    let memory = Arc::new(MemoryTier::builder().clock(clock.clone()).build());
    let local = Arc::new(
        LocalStorageTier::builder(&unique("refresh"))
            .clock(clock.clone())
            .open()
            .unwrap(),
    );
    let idb = if with_indexed_db {
        Some(Arc::new(
            IndexedDbTier::builder(&unique("refresh"))
                .clock(clock.clone())
                .open()
                .await
                .unwrap(),
        ))
    } else {
        None
    };
    let (o, c) = (origin.clone(), clock.clone());
    let loader = loader_fn(move |_key: String| {
        let (o, now) = (o.clone(), c.now());
        async move {
            let n = o.calls.get() + 1;
            o.calls.set(n);
            if o.hold.get() {
                let gate = js_sys::Promise::new(&mut |resolve, _reject| {
                    o.held.borrow_mut().push(resolve);
                });
                JsFuture::from(gate).await.unwrap();
            }
            Ok::<_, BoxError>(Some(Entry::expiring_in(
                format!("v{n}").into_bytes(),
                now,
                LIFE,
            )))
        }
    });
    let (spawned, finished) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
    let (s, f) = (spawned.clone(), finished.clone());
    let spawner = move |task: BoxFuture<'static, ()>| {
        s.set(s.get() + 1);
        let f = f.clone();
        PageSpawner.spawn(Box::pin(async move {
            task.await;
            f.set(f.get() + 1);
        }));
    };
    let mut builder = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::shared(memory.clone()))
        .tier(Tier::shared(local.clone()));
    if let Some(idb) = &idb {
        builder = builder.tier(Tier::shared(idb.clone()));
    }
    let cache = builder
        .origin(loader)
        .refresh_ahead(WINDOW, spawner)
        .build();
    Page {
        clock,
        origin,
        memory,
        local,
        idb,
        cache,
        spawned,
        finished,
    }
}

impl Page {
    /// A read that must hit tier 0 on its first poll (never waiting for the
    /// origin); returns the value.
    fn hit_at_once(&self, key: &String) -> Vec<u8> {
        let hit = self
            .cache
            .get(key)
            .now_or_never()
            .expect("a tier-0 hit answers on its first poll")
            .unwrap()
            .expect("present");
        assert_eq!(
            hit.source,
            Source::Tier {
                index: 0,
                name: "memory"
            }
        );
        hit.into_value()
    }

    /// Yields to the page's event loop (a `setTimeout(0)`) until `n` refresh
    /// tasks have finished. Bounded so a lost task fails the test instead of
    /// hanging it; the bound is on turns of the loop, not a time to meet.
    async fn until_finished(&self, n: u32) {
        for _ in 0..1_000 {
            if self.finished.get() >= n {
                return;
            }
            sleep(0).await;
        }
        panic!("{} of {n} refresh tasks finished", self.finished.get());
    }

    /// Lets the event loop turn until the origin has been called `n` times:
    /// the reload first reads the tiers below the one that hit (their copies
    /// are due too here, so it goes on to the origin), which takes a few
    /// turns with IndexedDB. Bounded in turns, not time.
    async fn until_origin_called(&self, n: u32) {
        for _ in 0..1_000 {
            if self.origin.calls.get() >= n {
                return;
            }
            sleep(0).await;
        }
        panic!(
            "the origin was called {} times, not {n}",
            self.origin.calls.get()
        );
    }

    /// What each tier holds for `key` right now, read directly.
    async fn in_tiers(&self, key: &String) -> Vec<(&'static str, Option<Vec<u8>>)> {
        let mut out = vec![
            (
                "memory",
                self.memory.get(key).await.unwrap().map(|e| e.value),
            ),
            (
                "local_storage",
                self.local.get(key).await.unwrap().map(|e| e.value),
            ),
        ];
        if let Some(idb) = &self.idb {
            out.push(("indexed_db", idb.get(key).await.unwrap().map(|e| e.value)));
        }
        out
    }
}

/// Loads `key` (`v1`) and moves the clock into its refresh window.
async fn loaded_and_due(p: &Page, key: &String) {
    let first = p.cache.get(key).await.unwrap().unwrap();
    assert_eq!(
        (first.value().as_slice(), first.source),
        (&b"v1"[..], Source::Origin)
    );
    p.clock.advance(LIFE - WINDOW + Duration::from_secs(5)); // 5 s left
}

#[wasm_bindgen_test]
async fn a_hit_past_the_window_answers_at_once_and_one_reload_lands_after_a_yield() {
    let p = page(false).await;
    let key = "42".to_string();
    loaded_and_due(&p, &key).await;
    p.origin.hold.set(true);

    // Several hits in the window: each gets the current value at once.
    for _ in 0..5 {
        assert_eq!(p.hit_at_once(&key), b"v1");
    }
    assert_eq!(p.spawned.get(), 1, "one reload for five hits");
    assert_eq!(
        p.origin.calls.get(),
        1,
        "the reload waits for the event loop"
    );

    // The page's event loop runs the reload: one origin call, now held.
    sleep(0).await;
    assert_eq!(p.origin.calls.get(), 2);
    for _ in 0..5 {
        assert_eq!(p.hit_at_once(&key), b"v1", "readers keep the current value");
    }
    assert_eq!(
        p.spawned.get(),
        1,
        "no second reload while one is under way"
    );

    // The load answers; after one more turn of the event loop the reload has
    // filled the tiers, and the next read gets the new value from tier 0.
    assert_eq!(p.origin.release(), 1);
    sleep(0).await;
    assert_eq!(p.finished.get(), 1);
    assert_eq!(p.hit_at_once(&key), b"v2");
    assert_eq!(p.origin.calls.get(), 2, "one origin call for every hit");
    let fresh = p.memory.get(&key).await.unwrap().unwrap();
    assert_eq!(fresh.expires_at, p.clock.now().saturating_add(LIFE));
}

#[wasm_bindgen_test]
async fn an_invalidation_during_the_reload_wins() {
    let p = page(true).await;
    let key = "7".to_string();
    loaded_and_due(&p, &key).await;
    p.origin.hold.set(true);
    assert_eq!(p.hit_at_once(&key), b"v1");
    p.until_origin_called(2).await;
    assert_eq!(p.origin.calls.get(), 2, "the reload's load is pending");

    p.cache.invalidate(&key).await.unwrap();
    assert_eq!(p.origin.release(), 1);
    p.until_finished(1).await;

    // The reload's value (v2, loaded before the invalidation ended) is in no tier.
    for (tier, held) in p.in_tiers(&key).await {
        assert_eq!(held, None, "{tier} holds the reload's value");
    }
    // The next read loads afresh.
    p.origin.hold.set(false);
    let next = p.cache.get(&key).await.unwrap().unwrap();
    assert_eq!(
        (next.value().as_slice(), next.source),
        (&b"v3"[..], Source::Origin)
    );
    assert_eq!(p.origin.calls.get(), 3);
}

#[wasm_bindgen_test]
async fn the_reload_fills_memory_local_storage_and_indexed_db() {
    let p = page(true).await;
    let key = "9".to_string();
    loaded_and_due(&p, &key).await;
    let before = p.in_tiers(&key).await;
    assert!(
        before.iter().all(|(_, v)| v.as_deref() == Some(&b"v1"[..])),
        "{before:?}"
    );

    p.origin.hold.set(true);
    assert_eq!(p.hit_at_once(&key), b"v1");
    p.until_origin_called(2).await;
    assert_eq!(p.origin.release(), 1);
    p.until_finished(1).await;

    let expires = p.clock.now().saturating_add(LIFE);
    for (tier, held) in p.in_tiers(&key).await {
        assert_eq!(held.as_deref(), Some(&b"v2"[..]), "{tier}");
    }
    for entry in [
        p.local.get(&key).await.unwrap(),
        p.idb.as_ref().unwrap().get(&key).await.unwrap(),
    ] {
        // Stored to the millisecond.
        assert_eq!(
            entry.unwrap().expires_at.as_unix_millis(),
            expires.as_unix_millis()
        );
    }
    // The old entry would have expired now; the refreshed one is served.
    p.clock.advance(Duration::from_secs(10));
    assert_eq!(p.hit_at_once(&key), b"v2");
    assert_eq!(p.origin.calls.get(), 2);
}
