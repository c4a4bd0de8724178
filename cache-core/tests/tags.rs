//! Tags: `invalidate_tag` drops every entry carrying a tag from every tier,
//! lazily (a generation checked on read), races with loads included.
#![cfg(not(target_family = "wasm"))]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cache_core::{
    async_trait, loader_fn, BoxError, CacheLayer, Clock, ConcurrentTier, Entry, Error, ManualClock,
    MemoryTagStore, MemoryTier, Result, Source, TagStore, Tier, TieredCache, Timestamp,
};
use common::Gate;

const HOUR: Duration = Duration::from_secs(3_600);

fn k(s: &str) -> String {
    s.to_string()
}

fn mem(name: &'static str, clock: &ManualClock) -> Arc<MemoryTier<String, String>> {
    Arc::new(
        MemoryTier::builder()
            .name(name)
            .clock(clock.clone())
            .build(),
    )
}

/// Tags every key with `user:<n>` for keys `<anything>:<n>`.
fn tagged_origin(
    clock: &ManualClock,
    loads: Arc<AtomicUsize>,
) -> impl cache_core::Loader<String, String> {
    let clock = clock.clone();
    loader_fn(move |key: String| {
        let n = loads.fetch_add(1, Ordering::SeqCst) + 1;
        let now = clock.now();
        async move {
            let user = key.rsplit(':').next().unwrap_or_default().to_owned();
            Ok::<_, BoxError>(Some(
                Entry::expiring_in(format!("{key}@v{n}"), now, HOUR)
                    .with_tags([format!("user:{user}")]),
            ))
        }
    })
}

fn tagged(value: &str, clock: &ManualClock, tags: &[&str]) -> Entry<String> {
    Entry::expiring_in(value.to_string(), clock.now(), HOUR).with_tags(tags.iter().copied())
}

#[tokio::test]
async fn invalidate_tag_drops_every_entry_carrying_it_from_every_tier() {
    let clock = ManualClock::new();
    let front = Arc::new(
        ConcurrentTier::builder()
            .name("front")
            .clock(clock.clone())
            .build(),
    );
    let (l2, l3) = (mem("l2", &clock), mem("l3", &clock));
    let cache: TieredCache<String, String> = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::new(front.clone()))
        .tier(Tier::shared(l2.clone()))
        .tier(Tier::shared(l3.clone()))
        .build();
    cache
        .put(&k("avatar:42"), tagged("a42", &clock, &["user:42"]))
        .await
        .unwrap();
    cache
        .put(&k("name:42"), tagged("n42", &clock, &["user:42", "team:7"]))
        .await
        .unwrap();
    cache
        .put(&k("name:7"), tagged("n7", &clock, &["user:7", "team:7"]))
        .await
        .unwrap();
    cache
        .put(
            &k("plain"),
            Entry::expiring_in("p".into(), clock.now(), HOUR),
        )
        .await
        .unwrap();

    assert_eq!(cache.invalidate_tag("user:42").await.unwrap(), 1);
    for key in ["avatar:42", "name:42"] {
        assert!(
            cache.get(&k(key)).await.unwrap().is_none(),
            "{key} still served"
        );
    }
    assert_eq!(
        cache.get(&k("name:7")).await.unwrap().unwrap().into_value(),
        "n7"
    );
    assert_eq!(
        cache.get(&k("plain")).await.unwrap().unwrap().into_value(),
        "p"
    );
    // Through get_many as well.
    let many = cache
        .get_many(&[k("avatar:42"), k("name:7"), k("name:42")])
        .await
        .unwrap();
    assert!(many[0].is_none() && many[2].is_none());
    assert_eq!(many[1].as_ref().unwrap().value(), "n7");

    // A second tag of the same entries.
    assert_eq!(cache.invalidate_tag("team:7").await.unwrap(), 1);
    assert!(cache.get(&k("name:7")).await.unwrap().is_none());
    assert_eq!(cache.tag_generation("team:7"), Some(1));
    assert_eq!(cache.tag_generation("never"), Some(0));

    // Written again after the bump: served.
    cache
        .put(&k("avatar:42"), tagged("a42-v2", &clock, &["user:42"]))
        .await
        .unwrap();
    let again = cache.get(&k("avatar:42")).await.unwrap().unwrap();
    assert_eq!(again.entry.value, "a42-v2");
    assert_eq!(
        again.entry.tags.list().iter().collect::<Vec<_>>(),
        [("user:42", 1)]
    );
}

#[tokio::test]
async fn tags_travel_with_the_entry_across_backfill() {
    let clock = ManualClock::new();
    let (l1, l2) = (mem("l1", &clock), mem("l2", &clock));
    let loads = Arc::new(AtomicUsize::new(0));
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::shared(l1.clone()).ttl(Duration::from_secs(60)))
        .tier(Tier::shared(l2.clone()))
        .origin(tagged_origin(&clock, loads.clone()))
        .build();
    let first = cache.get(&k("avatar:42")).await.unwrap().unwrap();
    assert_eq!(first.source, Source::Origin);
    assert_eq!(
        first.entry.tags.list().iter().collect::<Vec<_>>(),
        [("user:42", 0)]
    );
    for tier in [&l1, &l2] {
        let held = tier.get(&k("avatar:42")).await.unwrap().unwrap();
        assert_eq!(held.tags, first.entry.tags, "{} lost the tags", tier.name());
    }
    // l1's TTL ends; l2 backfills it, tags included.
    clock.advance(Duration::from_secs(61));
    let hit = cache.get(&k("avatar:42")).await.unwrap().unwrap();
    assert_eq!(
        hit.source,
        Source::Tier {
            index: 1,
            name: "l2"
        }
    );
    let backfilled = l1.get(&k("avatar:42")).await.unwrap().unwrap();
    assert_eq!(backfilled.tags, first.entry.tags);
    // And the backfilled copy is dropped by the tag like the rest.
    cache.invalidate_tag("user:42").await.unwrap();
    let reloaded = cache.get(&k("avatar:42")).await.unwrap().unwrap();
    assert_eq!(reloaded.source, Source::Origin);
    assert_eq!(loads.load(Ordering::SeqCst), 2);
    assert_eq!(
        reloaded.entry.tags.list().iter().collect::<Vec<_>>(),
        [("user:42", 1)]
    );
    assert_eq!(
        l1.get(&k("avatar:42")).await.unwrap().unwrap().tags,
        reloaded.entry.tags
    );
}

/// The first load parks at `gate` and answers "old"; later loads answer "new".
fn gated_tagged_origin(
    clock: &ManualClock,
    gate: Arc<Gate>,
    loads: Arc<AtomicUsize>,
) -> impl cache_core::Loader<String, String> {
    let clock = clock.clone();
    loader_fn(move |_key: String| {
        let (gate, loads, clock) = (gate.clone(), loads.clone(), clock.clone());
        async move {
            let n = loads.fetch_add(1, Ordering::SeqCst);
            let value = if n == 0 {
                gate.wait().await;
                "old"
            } else {
                "new"
            };
            Ok::<_, BoxError>(Some(
                Entry::expiring_in(value.to_string(), clock.now(), HOUR).with_tags(["t"]),
            ))
        }
    })
}

#[tokio::test]
async fn a_load_racing_invalidate_tag_is_not_kept_and_later_reads_do_not_join_it() {
    let clock = ManualClock::new();
    let (l1, l2) = (mem("l1", &clock), mem("l2", &clock));
    let gate = Arc::new(Gate::default());
    let loads = Arc::new(AtomicUsize::new(0));
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::shared(l1.clone()))
        .tier(Tier::shared(l2.clone()))
        .origin(gated_tagged_origin(&clock, gate.clone(), loads.clone()))
        .build();
    let early = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get(&k("u")).await.unwrap().unwrap().entry.value }
    });
    gate.reached().await;
    cache.invalidate_tag("t").await.unwrap();
    // A read that starts now does not join the load begun before.
    let late = cache.get(&k("u")).await.unwrap().unwrap();
    assert_eq!(late.entry.value, "new");
    gate.open();
    // The early read began before: it may get the old value...
    assert_eq!(early.await.unwrap(), "old");
    // ...but no tier keeps it.
    for tier in [&l1, &l2] {
        let held = tier.get(&k("u")).await.unwrap().map(|e| e.value);
        assert_eq!(held.as_deref(), Some("new"), "{}", tier.name());
    }
    assert_eq!(
        cache.get(&k("u")).await.unwrap().unwrap().entry.value,
        "new"
    );
}

#[tokio::test]
async fn a_stale_value_is_not_served_after_its_tag_is_bumped() {
    let clock = ManualClock::new();
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let origin = {
        let (clock, down) = (clock.clone(), down.clone());
        loader_fn(move |key: String| {
            let down = down.load(Ordering::SeqCst);
            let now = clock.now();
            async move {
                if down {
                    return Err::<Option<Entry<String>>, BoxError>("origin down".into());
                }
                Ok(Some(
                    Entry::expiring_in(format!("{key}-v1"), now, Duration::from_secs(10))
                        .with_tags(["t"]),
                ))
            }
        })
    };
    let cache: TieredCache<String, String> = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::new(
            MemoryTier::builder().clock(clock.clone()).build(),
        ))
        .origin(origin)
        .serve_stale_on_error(HOUR, 100)
        .build();
    cache.get(&k("a")).await.unwrap().unwrap();
    cache.get(&k("b")).await.unwrap().unwrap();
    down.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_secs(11));
    // Expired, origin down: the stale value is served...
    assert_eq!(
        cache.get(&k("a")).await.unwrap().unwrap().source,
        Source::Stale
    );
    cache.invalidate_tag("t").await.unwrap();
    // ...but not once its tag was bumped.
    assert!(matches!(
        cache.get(&k("b")).await,
        Err(Error::Origin { .. })
    ));
}

#[tokio::test]
async fn bad_tags_are_clear_errors() {
    let cache: TieredCache<String, String> = TieredCache::builder()
        .tier(Tier::new(MemoryTier::new()))
        .build();
    for bad in ["", "a\nb", &"x".repeat(201)] {
        assert!(
            matches!(
                cache.invalidate_tag(bad).await,
                Err(Error::InvalidKey { .. })
            ),
            "{bad:?}"
        );
        let entry = Entry::new("v".to_string(), Timestamp::MAX).with_tags([bad]);
        assert!(matches!(
            cache.put(&k("k"), entry).await,
            Err(Error::InvalidKey { .. })
        ));
    }
    assert!(
        cache.get(&k("k")).await.unwrap().is_none(),
        "nothing was written"
    );
}

/// A tag store that answers only asynchronously (as Redis does), counting
/// its reads, over a shared [`MemoryTagStore`].
#[derive(Default)]
struct AsyncStore {
    inner: MemoryTagStore,
    reads: AtomicUsize,
}

#[async_trait]
impl TagStore for AsyncStore {
    fn name(&self) -> &str {
        "async-tags"
    }
    async fn generations(&self, tags: &[&str]) -> Result<Vec<u64>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.generations(tags).await
    }
    async fn bump(&self, tag: &str) -> Result<u64> {
        self.inner.bump(tag).await
    }
}

#[tokio::test]
async fn two_instances_over_a_shared_tier_and_store_learn_each_others_bumps() {
    let clock = ManualClock::new();
    let store = Arc::new(AsyncStore::default());
    let shared = mem("shared", &clock);
    let instance = |name: &'static str| {
        TieredCache::builder()
            .clock(clock.clone())
            .tier(Tier::new(
                MemoryTier::builder()
                    .name(name)
                    .clock(clock.clone())
                    .build(),
            ))
            .tier(Tier::shared(shared.clone()))
            .tag_store(store.clone())
            .build()
    };
    let (a, b): (TieredCache<String, String>, TieredCache<String, String>) =
        (instance("local-a"), instance("local-b"));
    a.put(&k("avatar:42"), tagged("v1", &clock, &["user:42"]))
        .await
        .unwrap();
    assert_eq!(a.tag_generation("user:42"), Some(0));
    // B has not read the tag's generation yet: its first read asks the store.
    assert_eq!(b.tag_generation("user:42"), None);
    assert_eq!(
        b.get(&k("avatar:42")).await.unwrap().unwrap().entry.value,
        "v1"
    );
    assert_eq!(b.tag_generation("user:42"), Some(0));
    let reads = store.reads.load(Ordering::SeqCst);
    b.get(&k("avatar:42")).await.unwrap().unwrap();
    assert_eq!(
        store.reads.load(Ordering::SeqCst),
        reads,
        "then it keeps it"
    );

    let generation = a.invalidate_tag("user:42").await.unwrap();
    assert!(a.get(&k("avatar:42")).await.unwrap().is_none());
    // What the bus does (cache_server::SyncedCache): B learns the bump.
    b.tag_invalidated("user:42", generation);
    assert!(b.get(&k("avatar:42")).await.unwrap().is_none());

    // A new value is read at the new generation on both.
    b.put(&k("avatar:42"), tagged("v2", &clock, &["user:42"]))
        .await
        .unwrap();
    assert_eq!(
        a.get(&k("avatar:42")).await.unwrap().unwrap().entry.value,
        "v2"
    );
}

#[tokio::test]
async fn a_load_meeting_a_tag_bumped_elsewhere_for_the_first_time_is_not_kept() {
    // B has never read tag t; it was bumped (by another instance) before:
    // B cannot tell whether that bump came while its load ran, so the value
    // is returned but kept nowhere. The next load, with t known, is kept.
    let clock = ManualClock::new();
    let store = Arc::new(AsyncStore::default());
    store.bump("t").await.unwrap();
    let l1 = mem("l1", &clock);
    let loads = Arc::new(AtomicUsize::new(0));
    let origin = {
        let (clock, loads) = (clock.clone(), loads.clone());
        loader_fn(move |key: String| {
            let n = loads.fetch_add(1, Ordering::SeqCst) + 1;
            let now = clock.now();
            async move {
                Ok::<_, BoxError>(Some(
                    Entry::expiring_in(format!("{key}#{n}"), now, HOUR).with_tags(["t"]),
                ))
            }
        })
    };
    let b = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::shared(l1.clone()))
        .origin(origin)
        .tag_store(store.clone())
        .build();
    let first = b.get(&k("x")).await.unwrap().unwrap();
    assert_eq!(first.entry.value, "x#1");
    assert!(l1.get(&k("x")).await.unwrap().is_none(), "not kept");
    let second = b.get(&k("x")).await.unwrap().unwrap();
    assert_eq!(second.entry.value, "x#2");
    assert_eq!(
        second.entry.tags.list().iter().collect::<Vec<_>>(),
        [("t", 1)]
    );
    assert_eq!(l1.get(&k("x")).await.unwrap().unwrap().value, "x#2");
    assert_eq!(
        b.get(&k("x")).await.unwrap().unwrap().source,
        Source::Tier {
            index: 0,
            name: "l1"
        }
    );
}

#[tokio::test]
async fn a_resync_forgets_generations_read_from_the_store() {
    let clock = ManualClock::new();
    let store = Arc::new(AsyncStore::default());
    let shared = mem("shared", &clock);
    let b: TieredCache<String, String> = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::shared(shared.clone()))
        .tag_store(store.clone())
        .build();
    b.put(&k("k"), tagged("v", &clock, &["t"])).await.unwrap();
    assert!(b.get(&k("k")).await.unwrap().is_some());
    // Bumped by another instance whose message B never got (its bus link
    // was down): B still trusts its copy...
    store.bump("t").await.unwrap();
    assert!(b.get(&k("k")).await.unwrap().is_some());
    // ...until the bus resyncs it.
    b.only(&[]).resync("bus link down").await.unwrap();
    assert_eq!(b.tag_generation("t"), None);
    assert!(b.get(&k("k")).await.unwrap().is_none());
    assert_eq!(b.tag_generation("t"), Some(1));
}

#[tokio::test]
async fn a_synchronous_store_is_read_on_every_check() {
    // MemoryTagStore answers at once, like the browser's LocalStorage store:
    // no copy to keep current, a bump by any chain is seen by every other.
    let clock = ManualClock::new();
    let store = Arc::new(MemoryTagStore::new());
    let shared = mem("shared", &clock);
    let chain = || -> TieredCache<String, String> {
        TieredCache::builder()
            .clock(clock.clone())
            .tier(Tier::shared(shared.clone()))
            .tag_store(store.clone())
            .build()
    };
    let (a, b) = (chain(), chain());
    a.put(&k("k"), tagged("v", &clock, &["t"])).await.unwrap();
    assert!(b.get(&k("k")).await.unwrap().is_some());
    a.invalidate_tag("t").await.unwrap();
    assert!(b.get(&k("k")).await.unwrap().is_none(), "no message needed");
}
