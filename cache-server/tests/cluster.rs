#![allow(clippy::unwrap_used)]
//! RedisTier and the invalidation bus on a real 3-master Redis Cluster.

use std::collections::BTreeSet;
use std::time::Duration;

use cache_core::{conformance, CacheLayer, Clock, Entry, SystemClock, Tier, TieredCache};
use cache_server::fred::interfaces::KeysInterface;
use cache_server::testing::RedisCluster;
use cache_server::{Invalidation, InvalidationBus, MokaTier, SyncedCache};
use support::{conformance_tier, next_applied, redis_tier};

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
