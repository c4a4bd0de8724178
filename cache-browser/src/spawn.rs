//! [`PageSpawner`]: background tasks on the page's event loop.

use cache_core::{BoxFuture, Spawn};

/// Runs the chain's background tasks on the page's event loop, through
/// `wasm_bindgen_futures::spawn_local`: the spawner for
/// [`TieredCacheBuilder::refresh_ahead`](cache_core::TieredCacheBuilder::refresh_ahead)
/// and [`soft_origin_timeout`](cache_core::TieredCacheBuilder::soft_origin_timeout)
/// in a page, a worker or a service worker.
///
/// A task starts in a microtask after the read that spawned it has returned,
/// and runs between the page's other work whenever it waits (a `fetch`, an
/// IndexedDB request): the read that noticed the entry is due never waits for
/// the reload. Nothing runs it after the page is gone; a reload cut short that
/// way leaves the entry to expire as it would have.
///
/// # Example (wasm32)
///
/// ```text
/// use std::time::Duration;
/// use cache_browser::{LocalStorageTier, PageSpawner};
/// use cache_core::{loader_fn, BoxError, Clock, Entry, MemoryTier, SystemClock, Tier, TieredCache};
///
/// let origin = loader_fn(|user: String| async move {
///     let url = format!("/img/{user}.png"); // a fetch, in a real page
///     Ok::<_, BoxError>(Some(Entry::expiring_in(url, SystemClock.now(), Duration::from_secs(3_600))))
/// });
/// let cache: TieredCache<String, String> = TieredCache::builder()
///     .tier(Tier::new(MemoryTier::new()))
///     .tier(Tier::new(LocalStorageTier::builder("avatars").open()?))
///     .origin(origin)
///     // A hit in the last 5 minutes of an entry's life reloads it in the background.
///     .refresh_ahead(Duration::from_secs(300), PageSpawner)
///     .build();
/// ```
///
/// `tests/refresh.rs` runs refresh-ahead with it in headless Chromium.
#[derive(Clone, Copy, Debug, Default)]
pub struct PageSpawner;

impl Spawn for PageSpawner {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        wasm_bindgen_futures::spawn_local(task);
    }
}
