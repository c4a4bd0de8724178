#![allow(clippy::unwrap_used)]
//! RedisTier's fenced writes on a real redis-server and a real 3-master
//! cluster: stamps taken on a miss, voided by another instance's removal,
//! write-through, prefix removal or clear; the horizon; batches; hostile keys.
//! And the mutation check: with the tier planted to ignore stamps, the same
//! scenarios fail, so they can catch that bug.
//!
//! The scenarios return `Err` (not panic) when a fence lets a stale fill
//! through, so the mutation test can see them fail.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cache_core::{
    CacheLayer, Clock, Entry, Fence, FenceCheck, Fill, ManualClock, Stamp, SystemClock, Unfenced,
};
use cache_server::fred::interfaces::KeysInterface;
use cache_server::testing::{RedisCluster, RedisServer};
use cache_server::RedisTier;
use support::{redis_tier, stat_calls, Holds};

mod support;

type T = RedisTier<String>;
type Checked = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            return Err(format!($($why)+));
        }
    };
}

async fn tier(url: &str, ns: &str) -> T {
    RedisTier::builder()
        .url(url)
        .namespace(ns)
        .pool_size(1)
        .build()
        .await
        .unwrap()
}

/// Two instances (two pools) on one namespace.
async fn instances(url: &str, ns: &str) -> (T, T) {
    (tier(url, ns).await, tier(url, ns).await)
}

fn entry(value: &str) -> Entry<String> {
    Entry::expiring_in(
        value.to_string(),
        SystemClock.now(),
        Duration::from_secs(600),
    )
}

/// What Redis itself holds under the key's value key, bypassing the tier.
async fn raw(tier: &T, key: &str) -> Option<Bytes> {
    let rkey = tier.redis_key(&key.to_string()).unwrap();
    tier.pool().get::<Option<Bytes>, _>(rkey).await.unwrap()
}

async fn value(tier: &T, key: &str) -> Option<String> {
    tier.get(&key.to_string()).await.unwrap().map(|e| e.value)
}

async fn miss_stamp(tier: &T, key: &str) -> Result<Stamp, String> {
    let (hit, stamp) = tier.get_stamped(&key.to_string()).await.unwrap();
    ensure!(hit.is_none(), "{key}: expected a miss");
    ensure!(stamp.is_taken(), "{key}: a miss must hand out a stamp");
    Ok(stamp)
}

/// What another instance does between a fill's read and its write.
#[derive(Clone, Copy, Debug)]
enum Voider {
    Remove,
    Put,
    RemovePrefix,
    Clear,
}

const VOIDERS: [Voider; 4] = [
    Voider::Remove,
    Voider::Put,
    Voider::RemovePrefix,
    Voider::Clear,
];

/// A stamp taken on a miss by `a`, then `how` by `b`: `a`'s fill with that
/// stamp is refused and Redis holds no value (or `b`'s, for a put).
async fn voided_stamp_is_refused(url: &str, ns: &str, how: Voider) -> Checked {
    let (a, b) = instances(url, ns).await;
    let key = "user:1";
    let k = key.to_string();
    let stamp = miss_stamp(&a, key).await?;
    match how {
        Voider::Remove => drop(b.remove(&k).await.unwrap()),
        Voider::Put => b.put(&k, entry("from-b")).await.unwrap(),
        Voider::RemovePrefix => CacheLayer::<String, String>::remove_prefix(&b, "user:")
            .await
            .unwrap(),
        Voider::Clear => CacheLayer::<String, String>::clear(&b).await.unwrap(),
    }
    let fill = a
        .put_fenced(&k, entry("stale"), &Fence::new(&Unfenced, stamp))
        .await
        .unwrap();
    ensure!(
        fill == Fill::Refused,
        "{how:?}: a fill stamped before it was {fill:?}"
    );
    let want = matches!(how, Voider::Put).then(|| "from-b".to_string());
    let got = value(&a, key).await;
    ensure!(got == want, "{how:?}: Redis holds {got:?}, want {want:?}");
    if want.is_none() {
        ensure!(raw(&a, key).await.is_none(), "{how:?}: a raw value is left");
    }
    Ok(())
}

/// A stamp nobody voided is written; another key's removal does not void it.
async fn untouched_stamp_is_written(url: &str, ns: &str) -> Checked {
    let (a, b) = instances(url, ns).await;
    let stamp = miss_stamp(&a, "user:2").await?;
    b.remove(&"user:20".to_string()).await.unwrap();
    b.put(&"user:3".to_string(), entry("other")).await.unwrap();
    let fill = a
        .put_fenced(
            &"user:2".to_string(),
            entry("fresh"),
            &Fence::new(&Unfenced, stamp),
        )
        .await
        .unwrap();
    ensure!(fill == Fill::Written, "an untouched stamp was {fill:?}");
    ensure!(
        value(&b, "user:2").await.as_deref() == Some("fresh"),
        "the other instance does not read the fill"
    );
    // A hit hands out no stamp.
    let (hit, stamp) = a.get_stamped(&"user:2".to_string()).await.unwrap();
    ensure!(hit.is_some() && stamp == Stamp::NONE, "a hit: {stamp:?}");
    Ok(())
}

/// The write-through a chain makes: `remove_stamped`, then `put_fenced` with
/// that stamp; a failing in-process check refuses it and leaves Redis as it
/// was; the write-through voids a fill stamped before it.
async fn write_through_and_the_in_process_check(url: &str, ns: &str) -> Checked {
    let (a, b) = instances(url, ns).await;
    let k = "user:4".to_string();
    let stale = miss_stamp(&b, "user:4").await?;
    let (removed, stamp) = a.remove_stamped(&k).await.unwrap();
    ensure!(!removed && stamp.is_taken(), "remove_stamped: {stamp:?}");
    let fill = a
        .put_fenced(&k, entry("new"), &Fence::new(&Holds(false), stamp))
        .await
        .unwrap();
    ensure!(fill == Fill::Refused, "a failing check gave {fill:?}");
    ensure!(raw(&a, "user:4").await.is_none(), "a refused write landed");
    let fill = a
        .put_fenced(&k, entry("new"), &Fence::new(&Holds(true), stamp))
        .await
        .unwrap();
    ensure!(fill == Fill::Written, "the write-through was {fill:?}");
    let fill = b
        .put_fenced(&k, entry("stale"), &Fence::new(&Unfenced, stale))
        .await
        .unwrap();
    ensure!(
        fill == Fill::Refused,
        "a fill stamped before the write-through was {fill:?}"
    );
    ensure!(
        value(&b, "user:4").await.as_deref() == Some("new"),
        "the write-through's value was replaced"
    );
    // A refused write leaves the old value in place.
    let fill = b
        .put_fenced(&k, entry("other"), &Fence::new(&Holds(false), stamp))
        .await
        .unwrap();
    ensure!(fill == Fill::Refused, "{fill:?}");
    ensure!(
        value(&b, "user:4").await.as_deref() == Some("new"),
        "a refused write touched the old value"
    );
    Ok(())
}

/// `Stamp::NONE` in a chain's fence counts as generations (0, 0): fine on a
/// key never removed, refused once it was. (`Fence::open`, a write outside a
/// chain, compares nothing: `an_open_fence_writes_even_after_a_clear`.)
async fn no_stamp_is_generation_zero(url: &str, ns: &str) -> Checked {
    let (a, b) = instances(url, ns).await;
    let k = "user:5".to_string();
    let unstamped = Fence::new(&Unfenced, Stamp::NONE);
    let fill = a.put_fenced(&k, entry("v"), &unstamped).await.unwrap();
    ensure!(fill == Fill::Written, "no stamp on a fresh key: {fill:?}");
    b.remove(&k).await.unwrap();
    let fill = a.put_fenced(&k, entry("stale"), &unstamped).await.unwrap();
    ensure!(fill == Fill::Refused, "no stamp after a removal: {fill:?}");
    ensure!(raw(&a, "user:5").await.is_none(), "the stale value landed");
    Ok(())
}

/// `put_many_fenced` refuses only the voided entries (and the one whose check
/// fails); stamps from one `get_many_stamped`.
async fn a_batch_refuses_only_the_voided(url: &str, ns: &str) -> Checked {
    let (a, b) = instances(url, ns).await;
    let keys: Vec<String> = (0..5).map(|i| format!("batch:{i}")).collect();
    b.put(&keys[4], entry("hit")).await.unwrap();
    let got = a.get_many_stamped(&keys).await.unwrap();
    ensure!(
        got[..4].iter().all(|(e, s)| e.is_none() && s.is_taken()),
        "misses must be stamped: {got:?}"
    );
    ensure!(
        got[4].0.is_some() && got[4].1 == Stamp::NONE,
        "a hit is not stamped"
    );
    b.remove(&keys[1]).await.unwrap();
    b.put(&keys[3], entry("from-b")).await.unwrap();
    let no = Holds(false);
    let fences: Vec<Fence<'_>> = got
        .iter()
        .enumerate()
        .map(|(i, (_, s))| {
            let check: &dyn FenceCheck = if i == 2 { &no } else { &Unfenced };
            Fence::new(check, *s)
        })
        .collect();
    let fills = a
        .put_many_fenced(
            keys[..4].iter().map(|k| (k.clone(), entry("a"))).collect(),
            &fences[..4],
        )
        .await
        .unwrap();
    let want = [Fill::Written, Fill::Refused, Fill::Refused, Fill::Refused];
    ensure!(fills == want, "fills {fills:?}, want {want:?}");
    let values = b.get_many(&keys).await.unwrap();
    let values: Vec<Option<&str>> = values
        .iter()
        .map(|e| e.as_ref().map(|e| e.value.as_str()))
        .collect();
    let want = [Some("a"), None, None, Some("from-b"), Some("hit")];
    ensure!(values == want, "Redis holds {values:?}, want {want:?}");
    Ok(())
}

/// Keys with path, glob, hash-tag and unicode characters: each gets its own
/// value, generation and (on a cluster) slot, and a removal voids only its
/// own key's stamp.
async fn hostile_keys_stay_in_their_own_entry(url: &str, ns: &str) -> Checked {
    let (a, b) = instances(url, ns).await;
    let keys: Vec<String> = [
        "a/../b",
        "..",
        "/",
        "{user}:1",
        "}{",
        "{",
        "user:*",
        "*",
        "~g:x",
        "~a",
        "ключ/🙂",
    ]
    .iter()
    .map(|k| k.to_string())
    .collect();
    let stamps = a.get_many_stamped(&keys).await.unwrap();
    b.remove(&keys[3]).await.unwrap();
    let fences: Vec<Fence<'_>> = stamps
        .iter()
        .map(|(_, s)| Fence::new(&Unfenced, *s))
        .collect();
    let fills = a
        .put_many_fenced(
            keys.iter().map(|k| (k.clone(), entry(k))).collect(),
            &fences,
        )
        .await
        .unwrap();
    for (i, (k, fill)) in keys.iter().zip(&fills).enumerate() {
        let want = if i == 3 { Fill::Refused } else { Fill::Written };
        ensure!(*fill == want, "{k:?}: {fill:?}, want {want:?}");
        let got = value(&b, k).await;
        let want = (i != 3).then(|| k.clone());
        ensure!(got == want, "{k:?} reads {got:?}");
        let rkey = a.redis_key(k).unwrap();
        ensure!(
            rkey.starts_with(&format!("{ns}:")),
            "{rkey} left the namespace"
        );
    }
    // Each key's generation sits beside its value (in its slot, on a cluster).
    for k in &keys {
        b.remove(k).await.unwrap();
        let rkey = a.redis_key(k).unwrap();
        let cut = rkey.rfind("}:").map_or(ns.len() + 1, |i| i + 2);
        let generation = format!("{}~g:{}", &rkey[..cut], &rkey[cut..]);
        let exists: i64 = a.pool().exists(generation.as_str()).await.unwrap();
        ensure!(exists == 1, "{k:?}: no generation at {generation}");
        let slot = |key: &str| cache_server::fred::util::redis_keyslot(key.as_bytes());
        ensure!(
            !a.is_clustered() || slot(&rkey) == slot(&generation),
            "{k:?}: value and generation in different slots"
        );
    }
    Ok(())
}

/// A `remove_prefix` voids the stamps of the keys it covers and no other:
/// the scope's log says which prefix each bump covered. A later bump of
/// another prefix does not hide an earlier covering one, and `clear`
/// covers every key.
async fn a_prefix_removal_voids_only_what_it_covers(url: &str, ns: &str) -> Checked {
    let (a, b) = instances(url, ns).await;
    let remove_prefix = |p: &'static str| {
        let b = &b;
        async move { CacheLayer::<String, String>::remove_prefix(b, p).await }
    };
    let fill = |key: &'static str, stamp: Stamp| {
        let a = &a;
        async move {
            a.put_fenced(&key.to_string(), entry(key), &Fence::new(&Unfenced, stamp))
                .await
                .unwrap()
        }
    };
    let user = miss_stamp(&a, "user:6").await?;
    let item = miss_stamp(&a, "item:6").await?;
    remove_prefix("item:").await.unwrap();
    let (u, i) = (fill("user:6", user).await, fill("item:6", item).await);
    ensure!(
        u == Fill::Written,
        "another prefix's removal voided user:6: {u:?}"
    );
    ensure!(
        i == Fill::Refused,
        "item:6 was {i:?} after item: was removed"
    );

    let user = miss_stamp(&a, "user:7").await?;
    remove_prefix("us").await.unwrap();
    remove_prefix("item:").await.unwrap();
    let u = fill("user:7", user).await;
    ensure!(u == Fill::Refused, "user:7 was {u:?} after us was removed");

    let user = miss_stamp(&a, "user:8").await?;
    remove_prefix("item:").await.unwrap();
    CacheLayer::<String, String>::clear(&b).await.unwrap();
    let u = fill("user:8", user).await;
    ensure!(u == Fill::Refused, "user:8 was {u:?} after a clear");
    ensure!(raw(&a, "user:8").await.is_none(), "a refused value landed");
    Ok(())
}

/// Every scenario that voids a stamp, on a fresh namespace each.
async fn voiding_scenarios(url: &str, tag: &str) -> Vec<(String, Checked)> {
    let mut out = Vec::new();
    for how in VOIDERS {
        let ns = format!("{tag}-{how:?}");
        out.push((ns.clone(), voided_stamp_is_refused(url, &ns, how).await));
    }
    let ns = format!("{tag}-wt");
    out.push((
        ns.clone(),
        write_through_and_the_in_process_check(url, &ns).await,
    ));
    let ns = format!("{tag}-none");
    out.push((ns.clone(), no_stamp_is_generation_zero(url, &ns).await));
    let ns = format!("{tag}-batch");
    out.push((ns.clone(), a_batch_refuses_only_the_voided(url, &ns).await));
    let ns = format!("{tag}-hostile");
    out.push((
        ns.clone(),
        hostile_keys_stay_in_their_own_entry(url, &ns).await,
    ));
    let ns = format!("{tag}-prefixes");
    out.push((
        ns.clone(),
        a_prefix_removal_voids_only_what_it_covers(url, &ns).await,
    ));
    out
}

async fn all_scenarios(url: &str, tag: &str) {
    let mut results = voiding_scenarios(url, tag).await;
    let ns = format!("{tag}-untouched");
    results.push((ns.clone(), untouched_stamp_is_written(url, &ns).await));
    let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(failed.is_empty(), "{failed:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_writes_on_a_single_node() {
    let server = RedisServer::start();
    let a = tier(&server.url(), "flags").await;
    assert!(CacheLayer::<String, String>::fenced_writes_are_atomic(&a));
    all_scenarios(&server.url(), "single").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_writes_on_a_cluster() {
    let cluster = RedisCluster::start();
    let a = tier(&cluster.url(), "flags").await;
    assert!(a.is_clustered());
    assert!(CacheLayer::<String, String>::fenced_writes_are_atomic(&a));
    all_scenarios(&cluster.url(), "cluster").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stamp_older_than_the_horizon_is_refused() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let a: T = RedisTier::builder()
        .url(server.url())
        .namespace("horizon")
        .clock(clock.clone())
        .fence_horizon(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    assert_eq!(a.fence_horizon(), Duration::from_secs(60));
    let k = "k".to_string();
    let e = || Entry::expiring_in("v".to_string(), clock.now(), Duration::from_secs(3600));
    let (_, stamp) = a.get_stamped(&k).await.unwrap();
    clock.advance(Duration::from_secs(61));
    let fill = a
        .put_fenced(&k, e(), &Fence::new(&Unfenced, stamp))
        .await
        .unwrap();
    assert_eq!(fill, Fill::Refused, "a stamp past the horizon");
    assert!(raw(&a, "k").await.is_none());
    let (_, stamp) = a.get_stamped(&k).await.unwrap();
    clock.advance(Duration::from_secs(60));
    let fill = a
        .put_fenced(&k, e(), &Fence::new(&Unfenced, stamp))
        .await
        .unwrap();
    assert_eq!(fill, Fill::Written, "a stamp right at the horizon");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_never_comes_back_after_it_expired() {
    // The stamp's instance runs a clock that does not move (so its horizon
    // check passes) while Redis lets the generation expire and a new removal
    // bumps it again: a counter restarting from 0 would hand out the same
    // generation and let the stale fill in.
    let server = RedisServer::start();
    let horizon = Duration::from_millis(100);
    let a: T = RedisTier::builder()
        .url(server.url())
        .namespace("aba")
        .clock(ManualClock::new())
        .fence_horizon(horizon)
        .build()
        .await
        .unwrap();
    let b: T = RedisTier::builder()
        .url(server.url())
        .namespace("aba")
        .fence_horizon(horizon)
        .build()
        .await
        .unwrap();
    let k = "k".to_string();
    b.remove(&k).await.unwrap();
    let (_, stamp) = a.get_stamped(&k).await.unwrap();
    let pttl: i64 = server
        .cli(&["PTTL", "aba:~g:k"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        (1..=200).contains(&pttl),
        "kept for twice the horizon: {pttl}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.cli(&["EXISTS", "aba:~g:k"]).unwrap().trim() != "0" {
        assert!(std::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.remove(&k).await.unwrap();
    let fill = a
        .put_fenced(&k, entry("stale"), &Fence::new(&Unfenced, stamp))
        .await
        .unwrap();
    assert_eq!(fill, Fill::Refused);
    assert!(raw(&a, "k").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stamps_cost_a_command_only_on_a_miss_and_fills_one_script() {
    let server = RedisServer::start();
    let a = tier(&server.url(), "cost").await;
    let keys: Vec<String> = (0..50).map(|i| format!("user:{i}")).collect();
    a.put_many(
        keys.iter()
            .filter(|k| !k.ends_with('7'))
            .map(|k| (k.clone(), entry(k)))
            .collect(),
    )
    .await
    .unwrap();
    server.cli(&["CONFIG", "RESETSTAT"]).unwrap();
    let (hit, _) = a.get_stamped(&keys[0]).await.unwrap();
    assert!(hit.is_some());
    assert_eq!(
        (stat_calls(&server, "get"), stat_calls(&server, "mget")),
        (1, 0),
        "a hit is one GET"
    );
    let (_, stamp) = a.get_stamped(&keys[7]).await.unwrap();
    assert_eq!(
        (stat_calls(&server, "get"), stat_calls(&server, "mget")),
        (2, 1),
        "a miss adds one MGET"
    );
    server.cli(&["CONFIG", "RESETSTAT"]).unwrap();
    let got = a.get_many_stamped(&keys).await.unwrap();
    assert_eq!(got.iter().filter(|(e, _)| e.is_none()).count(), 5);
    assert_eq!(
        stat_calls(&server, "mget"),
        2,
        "values, then the misses' stamps"
    );
    server.cli(&["CONFIG", "RESETSTAT"]).unwrap();
    let fill = a
        .put_fenced(&keys[7], entry("v"), &Fence::new(&Unfenced, stamp))
        .await
        .unwrap();
    assert_eq!(fill, Fill::Written);
    assert_eq!(stat_calls(&server, "evalsha"), 1, "a fill is one script");
    // (Redis counts the commands a script runs too: its MGET and SET.)
    assert_eq!(stat_calls(&server, "set"), 1);
    // After SCRIPT FLUSH the tier loads its scripts again, by itself.
    server.cli(&["SCRIPT", "FLUSH"]).unwrap();
    let (_, stamp) = a.get_stamped(&keys[17]).await.unwrap();
    let fill = a
        .put_fenced(&keys[17], entry("v"), &Fence::new(&Unfenced, stamp))
        .await
        .unwrap();
    assert_eq!(fill, Fill::Written);
    server.cli(&["SCRIPT", "FLUSH"]).unwrap();
    let stamps = a.get_many_stamped(&keys[27..28]).await.unwrap();
    let fills = a
        .put_many_fenced(
            vec![(keys[27].clone(), entry("v"))],
            &[Fence::new(&Unfenced, stamps[0].1)],
        )
        .await
        .unwrap();
    assert_eq!(fills, [Fill::Written]);
    server.cli(&["SCRIPT", "FLUSH"]).unwrap();
    CacheLayer::<String, String>::clear(&a).await.unwrap();
    assert!(a.get(&keys[27]).await.unwrap().is_none());
}

/// The mutation check: with the tier planted to write fills without comparing
/// generations, every voiding scenario must fail; with the switch off they
/// pass. (Current-thread runtime: the switch is per thread.)
#[tokio::test]
async fn the_stamp_tests_catch_a_tier_that_ignores_stamps() {
    let server = RedisServer::start();
    cache_server::mutation::set_ignore_stamps(true);
    let mutated = voiding_scenarios(&server.url(), "mutated").await;
    cache_server::mutation::set_ignore_stamps(false);
    for (ns, result) in &mutated {
        // The in-process check alone still refuses in the write-through
        // scenario's first step, but its later stale fill gets through.
        assert!(result.is_err(), "{ns}: passed with stamps ignored");
        println!("{ns}: caught: {}", result.as_ref().unwrap_err());
    }
    let clean = voiding_scenarios(&server.url(), "clean").await;
    for (ns, result) in &clean {
        assert!(result.is_ok(), "{ns}: {result:?}");
    }
}

/// Refresh ahead of expiry over a real Redis tier: the reload takes the
/// tier's stamp first (the entry is still there, so no read handed one out)
/// and its fenced fill is accepted; another instance's invalidation while it
/// loads voids it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_ahead_refreshes_redis_and_loses_to_an_invalidation() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let server = RedisServer::start();
    let url = server.url();
    let clock = cache_core::ManualClock::new();
    let shared = RedisTier::<String>::builder()
        .url(url.as_str())
        .namespace("refresh")
        .clock(clock.clone())
        .pool_size(1)
        .build()
        .await
        .unwrap();
    let other = tier(&url, "refresh").await;
    let version = Arc::new(AtomicUsize::new(0));
    let hold = Arc::new(AtomicBool::new(false));
    let release = Arc::new(tokio::sync::Notify::new());
    let (v, h, r, c) = (
        version.clone(),
        hold.clone(),
        release.clone(),
        clock.clone(),
    );
    let origin = cache_core::loader_fn(move |key: String| {
        let (v, h, r, now) = (v.clone(), h.clone(), r.clone(), c.now());
        async move {
            let n = v.fetch_add(1, Ordering::SeqCst) + 1;
            if h.load(Ordering::SeqCst) {
                r.notified().await;
            }
            Ok::<_, cache_core::BoxError>(Some(Entry::expiring_in(
                format!("{key}@v{n}"),
                now,
                Duration::from_secs(60),
            )))
        }
    });
    type Queue = Arc<Mutex<Vec<cache_core::BoxFuture<'static, ()>>>>;
    let queue: Queue = Arc::default();
    let q = queue.clone();
    let chain: cache_core::TieredCache<String, String> = cache_core::TieredCache::builder()
        .clock(clock.clone())
        .tier(cache_core::Tier::new(shared.clone()))
        .origin(origin)
        .refresh_ahead(Duration::from_secs(10), move |task| {
            q.lock().unwrap().push(task)
        })
        .build();
    let key = "k".to_string();
    // Invalidated once before: its generation has moved, so only a stamp taken
    // now (not "no stamp") lets a fill in.
    other.remove(&key).await.unwrap();
    assert_eq!(chain.get(&key).await.unwrap().unwrap().value(), "k@v1");

    // 5 s left: the hit queues a reload, which lands in Redis.
    clock.advance(Duration::from_secs(55));
    assert_eq!(chain.get(&key).await.unwrap().unwrap().value(), "k@v1");
    let tasks: Vec<_> = queue.lock().unwrap().drain(..).collect();
    assert_eq!(tasks.len(), 1);
    for task in tasks {
        task.await;
    }
    assert_eq!(shared.get(&key).await.unwrap().unwrap().value, "k@v2");

    // Again, and another instance invalidates while the reload waits.
    clock.advance(Duration::from_secs(55));
    hold.store(true, Ordering::SeqCst);
    assert_eq!(chain.get(&key).await.unwrap().unwrap().value(), "k@v2");
    let task = queue.lock().unwrap().pop().expect("a reload was queued");
    let running = tokio::spawn(task);
    while version.load(Ordering::SeqCst) < 3 {
        tokio::task::yield_now().await;
    }
    assert!(other.remove(&key).await.unwrap());
    release.notify_one();
    running.await.unwrap();
    assert!(
        shared.get(&key).await.unwrap().is_none(),
        "the reload that read before the invalidation landed in Redis after it"
    );
}

/// The scripts are loaded when the tier connects: the first pipelined fenced
/// fills on a fresh server meet no `NOSCRIPT` (counted by the server itself).
#[tokio::test]
async fn the_first_pipelined_fills_on_a_fresh_server_meet_no_noscript() {
    let server = RedisServer::start();
    let tier = redis_tier(server.url(), "fresh").await;
    let keys: Vec<String> = (0..8).map(|i| format!("k:{i}")).collect();
    let got = tier.get_many_stamped(&keys).await.unwrap();
    let fences: Vec<Fence<'_>> = got.iter().map(|(_, s)| Fence::new(&Unfenced, *s)).collect();
    let fills = tier
        .put_many_fenced(
            keys.iter().map(|k| (k.clone(), entry("v"))).collect(),
            &fences,
        )
        .await
        .unwrap();
    assert!(fills.iter().all(|f| *f == Fill::Written), "{fills:?}");
    let errors = server.cli(&["INFO", "errorstats"]).unwrap();
    assert!(!errors.contains("NOSCRIPT"), "{errors}");
}

/// An open fence (a write made outside a chain) compares no generations: it
/// is written even after a `clear` bumped the scope, where a chain's fence
/// with no stamp is refused.
#[tokio::test]
async fn an_open_fence_writes_even_after_a_clear() {
    let server = RedisServer::start();
    let tier = redis_tier(server.url(), "open").await;
    let k = "k".to_string();
    CacheLayer::<String, String>::clear(&tier).await.unwrap();
    let unstamped = tier
        .put_fenced(&k, entry("chain"), &Fence::new(&Unfenced, Stamp::NONE))
        .await
        .unwrap();
    assert_eq!(unstamped, Fill::Refused, "a chain's fill without a stamp");
    let open = tier
        .put_fenced(&k, entry("direct"), &Fence::open())
        .await
        .unwrap();
    assert_eq!(open, Fill::Written);
    assert_eq!(tier.get(&k).await.unwrap().unwrap().value, "direct");
}

/// The scope's log is bounded: after more prefix removals than it keeps, a
/// stamp from before them is refused (the log cannot tell what they
/// covered), while a stamp taken after is judged by the log again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stamp_older_than_the_scope_log_is_refused() {
    let server = RedisServer::start();
    let (a, b) = instances(&server.url(), "trim").await;
    let old = miss_stamp(&a, "user:1").await.unwrap();
    for i in 0..1100 {
        CacheLayer::<String, String>::remove_prefix(&b, &format!("item{i}:"))
            .await
            .unwrap();
    }
    let kept = server.cli(&["ZCARD", "trim:~p"]).unwrap();
    assert_eq!(kept.trim(), "1024", "the log keeps 1,024 bumps");
    let k = "user:1".to_string();
    let fill = a
        .put_fenced(&k, entry("old"), &Fence::new(&Unfenced, old))
        .await
        .unwrap();
    assert_eq!(fill, Fill::Refused, "a stamp from before the trim point");
    let fresh = miss_stamp(&a, "user:1").await.unwrap();
    CacheLayer::<String, String>::remove_prefix(&b, "item:")
        .await
        .unwrap();
    let fill = a
        .put_fenced(&k, entry("fresh"), &Fence::new(&Unfenced, fresh))
        .await
        .unwrap();
    assert_eq!(fill, Fill::Written, "a stamp the log still covers");
}

/// Redis behind a gate: while armed, a fenced write waits at the gate, so a
/// chain's write-through stands between its removal and its write.
struct Gated {
    inner: T,
    gate: Arc<Gate>,
}

#[derive(Default)]
struct Gate {
    armed: std::sync::atomic::AtomicBool,
    reached: tokio::sync::Notify,
    open: tokio::sync::Notify,
}

#[cache_core::async_trait]
impl CacheLayer<String, String> for Gated {
    fn name(&self) -> &str {
        "redis"
    }
    async fn get(&self, key: &String) -> cache_core::Result<Option<Entry<String>>> {
        self.inner.get(key).await
    }
    async fn put(&self, key: &String, entry: Entry<String>) -> cache_core::Result<()> {
        self.inner.put(key, entry).await
    }
    async fn get_stamped(
        &self,
        key: &String,
    ) -> cache_core::Result<(Option<Entry<String>>, Stamp)> {
        self.inner.get_stamped(key).await
    }
    async fn stamp(&self, key: &String) -> cache_core::Result<Stamp> {
        CacheLayer::<String, String>::stamp(&self.inner, key).await
    }
    async fn put_fenced(
        &self,
        key: &String,
        entry: Entry<String>,
        fence: &Fence<'_>,
    ) -> cache_core::Result<Fill> {
        if self.gate.armed.swap(false, Ordering::SeqCst) {
            self.gate.reached.notify_one();
            self.gate.open.notified().await;
        }
        self.inner.put_fenced(key, entry, fence).await
    }
    fn fenced_writes_are_atomic(&self) -> bool {
        CacheLayer::<String, String>::fenced_writes_are_atomic(&self.inner)
    }
    async fn remove(&self, key: &String) -> cache_core::Result<bool> {
        self.inner.remove(key).await
    }
    async fn remove_stamped(&self, key: &String) -> cache_core::Result<(bool, Stamp)> {
        self.inner.remove_stamped(key).await
    }
    async fn remove_prefix(&self, prefix: &str) -> cache_core::Result<()> {
        CacheLayer::<String, String>::remove_prefix(&self.inner, prefix).await
    }
    async fn clear(&self) -> cache_core::Result<()> {
        CacheLayer::<String, String>::clear(&self.inner).await
    }
}

/// A chain's `put` that overlaps another instance's `remove_prefix` of other
/// keys is written (it was reported `Superseded`, the scope generation
/// covering the whole namespace); one that overlaps a removal of its own
/// prefix is superseded and leaves nothing in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_overlapping_a_prefix_removal_of_other_keys_is_written() {
    let server = RedisServer::start();
    let (redis, other) = instances(&server.url(), "overlap").await;
    let gate = Arc::new(Gate::default());
    let chain: cache_core::TieredCache<String, String> = cache_core::TieredCache::builder()
        .tier(cache_core::Tier::new(Gated {
            inner: redis,
            gate: gate.clone(),
        }))
        .origin(cache_core::loader_fn(|_: String| async {
            Ok::<_, cache_core::BoxError>(None)
        }))
        .build();
    let key = "user:9".to_string();
    for (prefix, written) in [("item:", true), ("user:", false)] {
        gate.armed.store(true, Ordering::SeqCst);
        let put = {
            let (chain, key) = (chain.clone(), key.clone());
            tokio::spawn(async move { chain.put(&key, entry(prefix)).await })
        };
        gate.reached.notified().await;
        CacheLayer::<String, String>::remove_prefix(&other, prefix)
            .await
            .unwrap();
        gate.open.notify_one();
        let result = put.await.unwrap();
        let stored = value(&other, &key).await;
        if written {
            assert!(result.is_ok(), "{prefix}: {result:?}");
            assert_eq!(stored.as_deref(), Some(prefix));
        } else {
            let superseded = match &result {
                Err(cache_core::Error::Incomplete { report }) => report
                    .outcomes()
                    .iter()
                    .all(|o| matches!(o.result, Err(cache_core::Error::Superseded { .. }))),
                _ => false,
            };
            assert!(superseded, "{prefix}: {result:?}");
            assert_eq!(stored, None, "{prefix}: Redis holds {stored:?}");
        }
    }
}
