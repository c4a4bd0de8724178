//! `Batcher`: the reads made in one turn of the event loop reach each tier as
//! one batch call, each caller gets its own answer, a failing key fails only
//! its own callers, and loads stay single-flight; and `ProfilePictures::get`
//! through it over the real storage tiers.
#![cfg(target_family = "wasm")]
#![allow(clippy::unwrap_used)]
// `Tier::shared` takes an `Arc`; on wasm32 nothing is `Send`.
#![allow(clippy::arc_with_non_send_sync)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cache_browser::{Batcher, Picture, ProfilePictures, Served};
use cache_core::{
    async_trait, loader_fn, BoxError, CacheLayer, Clock, Entry, ManualClock, MemoryTier, Result,
    Tier, TieredCache,
};
use futures_util::future::join_all;
use wasm_bindgen_test::*;

mod support;
use support::{sleep, unique, PNG};

wasm_bindgen_test_configure!(run_in_browser);

const LIFE: Duration = Duration::from_secs(3_600);

/// How often a tier was called, by method.
#[derive(Default, Debug)]
struct Calls {
    get: Cell<u32>,
    get_many: Cell<u32>,
    keys_in_batches: Cell<u32>,
}

/// A memory tier that counts its reads.
struct Counting {
    inner: MemoryTier<String, u32>,
    calls: Rc<Calls>,
}

#[async_trait(?Send)]
impl CacheLayer<String, u32> for Counting {
    fn name(&self) -> &str {
        CacheLayer::<String, u32>::name(&self.inner)
    }
    async fn get(&self, key: &String) -> Result<Option<Entry<u32>>> {
        self.calls.get.set(self.calls.get.get() + 1);
        CacheLayer::<String, u32>::get(&self.inner, key).await
    }
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry<u32>>>> {
        self.calls.get_many.set(self.calls.get_many.get() + 1);
        let n = u32::try_from(keys.len()).unwrap();
        self.calls
            .keys_in_batches
            .set(self.calls.keys_in_batches.get() + n);
        CacheLayer::<String, u32>::get_many(&self.inner, keys).await
    }
    async fn put(&self, key: &String, entry: Entry<u32>) -> Result<()> {
        CacheLayer::<String, u32>::put(&self.inner, key, entry).await
    }
    async fn remove(&self, key: &String) -> Result<bool> {
        CacheLayer::<String, u32>::remove(&self.inner, key).await
    }
    async fn clear(&self) -> Result<()> {
        CacheLayer::<String, u32>::clear(&self.inner).await
    }
}

struct Setup {
    batcher: Batcher<String, u32>,
    clock: ManualClock,
    upper: Rc<Calls>,
    lower: Rc<Calls>,
    lower_tier: Arc<Counting>,
    /// Origin loads per key.
    loads: Rc<RefCell<HashMap<String, u32>>>,
}

/// memory "upper" → memory "lower" → an origin that answers `len(key)`, fails
/// for keys starting with `bad`, and waits 30 ms for keys starting with `slow`.
fn setup() -> Setup {
    let clock = ManualClock::new();
    let memory = |name: &str, calls: &Rc<Calls>| {
        Arc::new(Counting {
            inner: MemoryTier::builder()
                .name(name.to_owned())
                .clock(clock.clone())
                .build(),
            calls: calls.clone(),
        })
    };
    let (upper, lower) = (Rc::new(Calls::default()), Rc::new(Calls::default()));
    let upper_tier = memory("upper", &upper);
    let lower_tier = memory("lower", &lower);
    let loads = Rc::new(RefCell::new(HashMap::new()));
    let (l, c) = (loads.clone(), clock.clone());
    let origin = loader_fn(move |key: String| {
        let (l, now) = (l.clone(), c.now());
        async move {
            *l.borrow_mut().entry(key.clone()).or_insert(0) += 1;
            if key.starts_with("slow") {
                sleep(30).await;
            }
            if key.starts_with("bad") {
                return Err::<Option<Entry<u32>>, BoxError>(format!("no {key}").into());
            }
            let n = u32::try_from(key.len()).unwrap();
            Ok(Some(Entry::expiring_in(n, now, LIFE)))
        }
    });
    let cache = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::shared(upper_tier))
        .tier(Tier::shared(lower_tier.clone()))
        .origin(origin)
        .build();
    Setup {
        batcher: Batcher::new(cache),
        clock,
        upper,
        lower,
        lower_tier,
        loads,
    }
}

#[wasm_bindgen_test]
async fn reads_in_one_turn_reach_each_tier_as_one_batch() {
    let s = setup();
    // Half the keys are in the lower tier; the others only at the origin.
    let keys: Vec<String> = (0..20).map(|i| format!("key-{}", "x".repeat(i))).collect();
    for key in &keys[..10] {
        let entry = Entry::expiring_in(999, s.clock.now(), LIFE);
        CacheLayer::<String, u32>::put(&s.lower_tier.inner, key, entry)
            .await
            .unwrap();
    }
    // Each element of a list asks on its own, in the same turn.
    let found = join_all(keys.iter().map(|k| s.batcher.get(k))).await;
    assert_eq!(s.batcher.batches(), 1, "one get_many for the turn");
    for (i, (key, found)) in keys.iter().zip(&found).enumerate() {
        let found = found.as_ref().unwrap().as_ref().unwrap();
        if i < 10 {
            assert_eq!(found.entry.value, 999, "{key}");
            assert_eq!(
                found.served,
                Served::Tier {
                    index: 1,
                    name: "lower".into()
                }
            );
        } else {
            assert_eq!(found.entry.value, u32::try_from(key.len()).unwrap());
            assert_eq!(found.served, Served::Origin);
        }
    }
    assert_eq!((s.upper.get_many.get(), s.upper.get.get()), (1, 0));
    assert_eq!(s.upper.keys_in_batches.get(), 20);
    assert_eq!((s.lower.get_many.get(), s.lower.get.get()), (1, 0));
    assert_eq!(s.lower.keys_in_batches.get(), 20);
    assert!(s.loads.borrow().values().all(|n| *n == 1));
    assert_eq!(s.loads.borrow().len(), 10, "the origin saw only the misses");

    // The next turn: every key from the upper tier, in one more batch.
    let again = join_all(keys.iter().map(|k| s.batcher.get(k))).await;
    assert_eq!(s.batcher.batches(), 2);
    assert!(again.iter().all(|f| matches!(
        &f.as_ref().unwrap().as_ref().unwrap().served,
        Served::Tier { index: 0, .. }
    )));
    assert_eq!((s.upper.get_many.get(), s.upper.get.get()), (2, 0));
    assert_eq!(s.lower.get_many.get(), 1, "nothing reached the lower tier");
}

#[wasm_bindgen_test]
async fn each_caller_gets_its_own_answer_and_a_failing_key_fails_alone() {
    let s = setup();
    let keys: Vec<String> = ["a", "bad-1", "bbb", "a", "cccc", "bad-22"]
        .iter()
        .map(|k| (*k).to_owned())
        .collect();
    let found = join_all(keys.iter().map(|k| s.batcher.get(k))).await;
    for (key, found) in keys.iter().zip(found) {
        if key.starts_with("bad") {
            let err = found.unwrap_err().to_string();
            assert!(err.contains(&format!("no {key}")), "{key}: {err}");
        } else {
            let found = found.unwrap().unwrap();
            assert_eq!(
                found.entry.value,
                u32::try_from(key.len()).unwrap(),
                "{key}"
            );
        }
    }
    // The origin's batch load failed as a whole (`load_many` is all or
    // nothing), so each key was asked once more on its own: at most two
    // loads per key, the duplicate `a` joining the others' loads.
    {
        let loads = s.loads.borrow();
        assert!(loads.values().all(|n| (1..=2).contains(n)), "{loads:?}");
    }
    // Each key that loaded is now in the top tier: the next turn's batch
    // answers it without the origin, and the failing keys fail again alone.
    let before = s.loads.borrow().clone();
    let again = join_all(keys.iter().map(|k| s.batcher.get(k))).await;
    for (key, found) in keys.iter().zip(again) {
        assert_eq!(found.is_err(), key.starts_with("bad"), "{key}");
    }
    let after = s.loads.borrow();
    for key in ["a", "bbb", "cccc"] {
        assert_eq!(after[key], before[key], "{key} was not loaded again");
    }
    assert!(after["bad-1"] > before["bad-1"]);
}

#[wasm_bindgen_test]
async fn a_read_in_a_later_turn_joins_the_load_in_flight() {
    let s = setup();
    let key = "slow-1".to_owned();
    let first = s.batcher.get(&key);
    let batcher = s.batcher.clone();
    let k = key.clone();
    let second = async move {
        // A later turn, while the first batch's load waits.
        sleep(5).await;
        batcher.get(&k).await
    };
    let (first, second) = futures_util::future::join(first, second).await;
    assert_eq!(s.batcher.batches(), 2);
    assert_eq!(first.unwrap().unwrap().entry.value, 6);
    assert_eq!(second.unwrap().unwrap().entry.value, 6);
    assert_eq!(s.loads.borrow()[&key], 1, "one load for both batches");
}

/// The preset over the real storage tiers: a list's pictures in one batch,
/// from the network, then (a new page: fresh memory) from IndexedDB after
/// LocalStorage is dropped, then from the Cache API after IndexedDB is too.
#[wasm_bindgen_test]
async fn pictures_of_a_list_resolve_in_one_batch_through_every_tier() {
    let ns = unique("batch-pictures");
    let loads = Rc::new(Cell::new(0u32));
    let build = |loads: Rc<Cell<u32>>| {
        ProfilePictures::builder(&ns)
            .network(move |user: String| {
                let loads = loads.clone();
                async move {
                    loads.set(loads.get() + 1);
                    if user == "missing" {
                        return Err::<_, BoxError>("user missing: 404".into());
                    }
                    Ok(Some(Entry::expiring_in(
                        Picture {
                            url: format!("https://img.example/{user}.png"),
                            bytes: Some(Bytes::from_static(PNG)),
                            content_type: "image/png".into(),
                        },
                        cache_core::SystemClock.now(),
                        LIFE,
                    )))
                }
            })
            .build()
    };
    let users: Vec<String> = (1..=12).map(|u| u.to_string()).collect();
    let pictures = build(loads.clone()).await;
    let first = join_all(users.iter().map(|u| pictures.get(u))).await;
    assert_eq!(pictures.batches(), 1);
    assert_eq!(loads.get(), 12);
    for found in &first {
        let found = found.as_ref().unwrap().as_ref().unwrap();
        assert_eq!(found.served_by, "network");
        assert!(found.src.starts_with("data:image/png;base64,"));
    }
    // A missing picture among the list fails alone.
    let mixed = join_all(
        ["1", "missing", "2"]
            .iter()
            .map(|u| pictures.get(u))
            .collect::<Vec<_>>(),
    )
    .await;
    assert!(mixed[1].is_err());
    assert_eq!(
        mixed[0].as_ref().unwrap().as_ref().unwrap().served_by,
        "memory"
    );
    assert_eq!(
        mixed[2].as_ref().unwrap().as_ref().unwrap().served_by,
        "memory"
    );
    drop(pictures);

    for (drop_tiers, tier) in [
        (&["local_storage"][..], "indexed_db"),
        (&["local_storage", "indexed_db"][..], "cache_api"),
    ] {
        let pictures = build(loads.clone()).await;
        let names = pictures.tier_names();
        let dropped: Vec<usize> = names
            .iter()
            .enumerate()
            .filter(|(_, n)| drop_tiers.contains(*n))
            .map(|(i, _)| i)
            .collect();
        pictures.cache().only(&dropped).clear().await.unwrap();
        let before = loads.get();
        let found = join_all(users.iter().map(|u| pictures.get(u))).await;
        assert_eq!(pictures.batches(), 1, "{tier}");
        assert_eq!(loads.get(), before, "{tier}: no network");
        for (user, found) in users.iter().zip(found) {
            let found = found.unwrap().unwrap();
            assert_eq!(found.served_by, tier, "user {user}");
            assert!(found.src.starts_with("data:image/png;base64,"));
        }
        // The batch's backfill reached the tiers above.
        for t in pictures.peek("7").await {
            assert!(t.picture.is_some(), "{tier}: {} holds user 7", t.tier);
        }
    }
}
