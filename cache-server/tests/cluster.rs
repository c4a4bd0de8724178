#![allow(clippy::unwrap_used)]
//! RedisTier and the invalidation bus on a real 3-master Redis Cluster.

use std::collections::BTreeSet;
use std::time::Duration;

use cache_core::{conformance, CacheLayer, Clock, Entry, SystemClock, Tier, TieredCache};
use cache_server::fred::interfaces::KeysInterface;
use cache_server::testing::RedisCluster;
use cache_server::{Invalidation, InvalidationBus, MokaTier, SyncedCache};
use support::{conformance_tier, next_applied, redis_tier, Frozen};

mod support;

fn node_keys(cluster: &RedisCluster, pattern: &str) -> Vec<usize> {
    cluster
        .nodes()
        .iter()
        .map(|n| {
            n.cli(&[
                "EVAL",
                &format!("return #redis.call('KEYS', '{pattern}')"),
                "0",
            ])
            .unwrap()
            .trim()
            .parse()
            .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_end_to_end() {
    let cluster = RedisCluster::start();
    let url = cluster.url();

    // The conformance suite, on the cluster.
    conformance::run::<_, Vec<u8>, _, _>(|setup| {
        let url = url.clone();
        async move { conformance_tier(&url, &setup).build().await.unwrap() }
    })
    .await;

    let tier = redis_tier(url.clone(), "avatars").await;
    assert!(tier.is_clustered());

    // get_many over keys in many hash slots, on every node.
    let keys: Vec<String> = (0..50).map(|i| format!("user:{i}")).collect();
    let slots: BTreeSet<u16> = keys
        .iter()
        .map(|k| cache_server::fred::util::redis_keyslot(tier.redis_key(k).unwrap().as_bytes()))
        .collect();
    assert!(slots.len() > 10, "the keys must span many slots");
    let now = SystemClock.now();
    tier.put_many(
        keys.iter()
            .filter(|k| !k.ends_with('3'))
            .map(|k| {
                (
                    k.clone(),
                    Entry::expiring_in(format!("v-{k}"), now, Duration::from_secs(600)),
                )
            })
            .collect(),
    )
    .await
    .unwrap();
    let per_node = node_keys(&cluster, "avatars:*");
    assert!(
        per_node.iter().all(|&n| n > 0),
        "keys on every master: {per_node:?}"
    );
    let got = tier.get_many(&keys).await.unwrap();
    for (k, v) in keys.iter().zip(&got) {
        if k.ends_with('3') {
            assert!(v.is_none(), "{k}");
        } else {
            assert_eq!(v.as_ref().unwrap().value, format!("v-{k}"));
        }
    }
    let single = tier.get_many(&keys[..1]).await.unwrap();
    assert_eq!(single[0].as_ref().unwrap().value, "v-user:0");

    // remove_prefix and clear reach every master, and only the namespace.
    tier.pool()
        .set::<(), _, _>("foreign", "keep", None, None, false)
        .await
        .unwrap();
    CacheLayer::<String, String>::remove_prefix(&tier, "user:1")
        .await
        .unwrap();
    assert!(tier.get(&"user:1".to_string()).await.unwrap().is_none());
    assert!(tier.get(&"user:12".to_string()).await.unwrap().is_none());
    assert!(tier.get(&"user:2".to_string()).await.unwrap().is_some());
    CacheLayer::<String, String>::clear(&tier).await.unwrap();
    // No value is left on any master; the generations stay.
    assert_eq!(node_keys(&cluster, "avatars:{*}:[^~]*"), vec![0, 0, 0]);
    assert_eq!(
        node_keys(&cluster, "avatars:{*}:~a").iter().sum::<usize>(),
        64,
        "one scope generation per shard"
    );
    assert_eq!(node_keys(&cluster, "foreign").iter().sum::<usize>(), 1);

    // The invalidation bus over the cluster: two instances.
    let mut instances = Vec::new();
    for _ in 0..2 {
        let moka: MokaTier<String, String> = MokaTier::builder().build();
        let chain = TieredCache::builder()
            .tier(Tier::new(moka.clone()))
            .tier(Tier::new(tier.clone()))
            .build();
        let bus = InvalidationBus::builder()
            .url(url.clone())
            .connect()
            .await
            .unwrap();
        instances.push((SyncedCache::new(chain, bus, vec![0]), moka));
    }
    let key = "user:5".to_string();
    tier.put(
        &key,
        Entry::expiring_in("v".into(), SystemClock.now(), Duration::from_secs(60)),
    )
    .await
    .unwrap();
    let (a, _) = &instances[0];
    let (b, b_moka) = &instances[1];
    b.get(&key).await.unwrap().unwrap();
    assert!(b_moka.contains(&key));
    let mut applied = b.applied();
    a.invalidate(&key).await.unwrap();
    let got = next_applied(&mut applied).await;
    assert_eq!(got, Invalidation::Key(key.clone()));
    assert!(!b_moka.contains(&key));
}

/// A bus on a plain connection to the cluster node that owns its registry
/// (as the race test wires two of its instances) waits for an instance
/// subscribed on another node. `PUBSUB NUMSUB` counts one node's subscribers
/// only: such a bus once took "none here" for "its connection is gone",
/// excused the live instance at its first look and returned before that
/// instance had applied the invalidation (the cluster race test caught it in
/// CI, on a loaded machine). Here A is frozen while B invalidates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_bus_on_a_cluster_node_waits_for_an_instance_subscribed_on_another() {
    let cluster = RedisCluster::start();
    // A channel whose registry lives on another node than A's subscription
    // (A's subscriber picks its node itself).
    let mut found = None;
    for i in 0..12 {
        let channel = format!("plain-{i}");
        let a = Frozen::start(
            InvalidationBus::builder()
                .url(cluster.url())
                .channel(&channel),
        );
        let inbox = format!("{{{channel}}}:i:{:016x}", a.id);
        let subscribed: Vec<usize> = (0..cluster.nodes().len())
            .filter(|&n| {
                let out = cluster.nodes()[n]
                    .cli(&["PUBSUB", "NUMSUB", &inbox])
                    .unwrap();
                out.lines().nth(1).map(str::trim) == Some("1")
            })
            .collect();
        let owner = cluster.owner_of(&format!("{{{channel}}}:live"));
        if subscribed.len() == 1 && subscribed[0] != owner {
            found = Some((channel, a, owner));
            break;
        }
    }
    let (channel, a, owner) =
        found.expect("in 12 channels, A subscribed once on a node that is not the registry's");
    let plain = format!("redis://127.0.0.1:{}", cluster.nodes()[owner].port());
    let moka: MokaTier<String, String> = MokaTier::builder().build();
    let chain = TieredCache::builder().tier(Tier::new(moka)).build();
    let bus = InvalidationBus::builder()
        .url(plain)
        .channel(channel)
        .connect()
        .await
        .unwrap();
    let b = SyncedCache::new(chain, bus, vec![0]);
    support::wait_for!(
        "B lists A",
        b.bus().live_peers().await.unwrap() == vec![a.id]
    );

    let key = "user:1".to_string();
    a.hold(&key, "old").await;
    a.freeze(Duration::from_millis(800), None);
    b.invalidate(&key).await.unwrap();
    assert!(
        !a.moka.contains(&key),
        "B's invalidation returned while A (subscribed on another node, frozen) still held the key"
    );
    assert_eq!(b.bus().stats().excused, 0, "A was live: nobody excuses it");
}
