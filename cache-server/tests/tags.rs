#![allow(clippy::unwrap_used)]
//! Tags across a fleet, on a real `redis-server`: `invalidate_tag` on one
//! instance drops every entry carrying the tag from every tier of every
//! instance, with one `HINCRBY` and no scan.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cache_core::{CacheLayer, ConcurrentTier, Error, Source, TagStore, Tier, TieredCache};
use cache_server::fred::interfaces::KeysInterface;
use cache_server::testing::RedisServer;
use cache_server::{InvalidationBus, RedisTagStore, RedisTier, SyncedCache};
use support::{redis_tier, tagged_origin};

mod support;

struct Instance {
    cache: SyncedCache<String, String>,
    front: Arc<ConcurrentTier<String, String>>,
    redis: RedisTier<String>,
    loads: Arc<AtomicU64>,
}

/// One backend: ConcurrentTier -> Redis -> origin, tags in Redis. The origin
/// tags `<kind>:<user>` with `user:<user>` and answers the current `version`.
async fn instance(server: &RedisServer, version: Arc<AtomicU64>) -> Instance {
    let front = Arc::new(ConcurrentTier::builder().name("memory").build());
    let redis = redis_tier(server.url(), "profiles").await;
    let loads = Arc::new(AtomicU64::new(0));
    let chain = support::chain(
        Tier::new(front.clone()),
        Some(redis.clone()),
        tagged_origin(version, loads.clone()),
    )
    .tag_store(Arc::new(RedisTagStore::new(&redis)))
    .build();
    let bus = InvalidationBus::builder()
        .url(server.url())
        .channel("profiles:invalidate")
        .connect()
        .await
        .unwrap();
    Instance {
        cache: SyncedCache::new(chain, bus, vec![0]),
        front,
        redis,
        loads,
    }
}

fn k(s: &str) -> String {
    s.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_tag_on_one_instance_drops_tagged_entries_on_every_instance() {
    let server = RedisServer::start();
    let version = Arc::new(AtomicU64::new(1));
    let a = instance(&server, version.clone()).await;
    let b = instance(&server, version.clone()).await;
    let keys = ["avatar:42", "name:42", "avatar:7"];
    for key in keys {
        a.cache.get(&k(key)).await.unwrap().unwrap();
        // B finds it in Redis and backfills its own front tier, tags included.
        let hit = b.cache.get(&k(key)).await.unwrap().unwrap();
        assert_eq!(
            hit.source,
            Source::Tier {
                index: 1,
                name: "redis"
            }
        );
        let held = b.front.get(&k(key)).await.unwrap().unwrap();
        assert_eq!(held.tags.list().names().collect::<Vec<_>>().len(), 1);
    }
    assert_eq!(a.loads.load(Ordering::SeqCst), 3);
    assert_eq!(b.loads.load(Ordering::SeqCst), 0);

    version.store(2, Ordering::SeqCst);
    let generation = a.cache.invalidate_tag("user:42").await.unwrap();
    assert_eq!(generation, 1);
    // Returned only once B learned it: B's next reads, of its own front tier
    // and of Redis, treat both user-42 entries as absent.
    for key in ["avatar:42", "name:42"] {
        let got = b.cache.get(&k(key)).await.unwrap().unwrap();
        assert_eq!(got.source, Source::Origin, "{key}");
        assert_eq!(got.entry.value, format!("{key}@v2"));
        assert_eq!(
            got.entry.tags.list().iter().collect::<Vec<_>>(),
            [("user:42", 1)]
        );
    }
    // Untouched: another user's entry.
    let other = b.cache.get(&k("avatar:7")).await.unwrap().unwrap();
    assert_eq!(other.entry.value, "avatar:7@v1");
    assert!(matches!(other.source, Source::Tier { index: 0, .. }));
    // A sees B's new values in Redis.
    let got = a.cache.get(&k("name:42")).await.unwrap().unwrap();
    assert_eq!(got.entry.value, "name:42@v2");
    assert_eq!(
        got.source,
        Source::Tier {
            index: 1,
            name: "redis"
        }
    );

    // The generation is in one Redis hash, bumped by one HINCRBY.
    let store = RedisTagStore::new(&a.redis);
    assert_eq!(
        store.generations(&["user:42", "user:7"]).await.unwrap(),
        [1, 0]
    );
    // And a clear of the tier leaves it (a generation never goes back).
    CacheLayer::<String, String>::clear(&a.redis).await.unwrap();
    assert_eq!(store.generations(&["user:42"]).await.unwrap(), [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_scan_the_old_value_stays_in_redis_but_no_read_returns_it() {
    let server = RedisServer::start();
    let version = Arc::new(AtomicU64::new(1));
    let a = instance(&server, version.clone()).await;
    a.cache.get(&k("avatar:42")).await.unwrap().unwrap();
    let rkey = a.redis.redis_key(&k("avatar:42")).unwrap();
    let before: Option<Vec<u8>> = a.redis.pool().get(rkey.as_str()).await.unwrap();
    assert!(before.is_some());

    a.cache.invalidate_tag("user:42").await.unwrap();
    // Nothing was deleted: the bump is all invalidate_tag did to Redis...
    let after: Option<Vec<u8>> = a.redis.pool().get(rkey.as_str()).await.unwrap();
    assert_eq!(after, before);
    // ...yet even the Redis tier's own reader, through a fresh chain (another
    // instance starting now), does not return it.
    let fresh: TieredCache<String, String> = TieredCache::builder()
        .tier(Tier::new(a.redis.clone()))
        .tag_store(Arc::new(RedisTagStore::new(&a.redis)))
        .build();
    assert!(fresh.get(&k("avatar:42")).await.unwrap().is_none());
    assert!(fresh.get_many(&[k("avatar:42")]).await.unwrap()[0].is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_tag_bump_is_reported_and_nothing_is_published() {
    let server = RedisServer::start();
    let version = Arc::new(AtomicU64::new(1));
    let a = instance(&server, version.clone()).await;
    a.cache.get(&k("avatar:42")).await.unwrap().unwrap();
    let mut applied = a.cache.applied();
    drop(server); // Redis goes away.
    let result = tokio::time::timeout(Duration::from_secs(30), a.cache.invalidate_tag("user:42"))
        .await
        .expect("the bump gives up within its command timeout");
    assert!(
        matches!(
            result,
            Err(Error::Backend { .. } | Error::Timeout { .. } | Error::Unavailable { .. })
        ),
        "{result:?}"
    );
    assert!(applied.try_recv().is_err(), "nothing was published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tags_never_reach_redis() {
    let server = RedisServer::start();
    let a = instance(&server, Arc::new(AtomicU64::new(1))).await;
    for bad in ["", "a\r\nb", &"x".repeat(300)] {
        assert!(
            matches!(
                a.cache.invalidate_tag(bad).await,
                Err(Error::InvalidKey { .. })
            ),
            "{bad:?}"
        );
    }
    // A hostile but valid tag is a hash field: it reaches nothing else.
    let store = RedisTagStore::new(&a.redis);
    let hostile = "user:42\"} ..\\/* HDEL";
    a.cache.invalidate_tag(hostile).await.unwrap();
    assert_eq!(
        store.generations(&[hostile, "user:42"]).await.unwrap(),
        [1, 0]
    );
}
