#![allow(clippy::unwrap_used)]
//! RedisTier against a real redis-server started by the test.

use std::time::Duration;

use cache_core::{conformance, CacheLayer, Clock, Entry, Error, ManualClock, SystemClock};
use cache_server::fred::interfaces::KeysInterface;
use cache_server::testing::RedisServer;
use cache_server::RedisTier;
use support::{conformance_tier, stat_calls};

mod support;

type L = dyn CacheLayer<String, String>;

async fn tier(server: &RedisServer, ns: &str) -> RedisTier<String> {
    RedisTier::builder()
        .url(server.url())
        .namespace(ns)
        .pool_size(2)
        .build()
        .await
        .unwrap()
}

/// How many value keys (not generations, `<ns>:~...`) are under `<ns>:`.
fn value_keys(server: &RedisServer, ns: &str) -> usize {
    let script = format!(
        "local n = 0 for _, k in ipairs(redis.call('KEYS', '{ns}:*')) do \
         if not string.find(k, '^{ns}:~[a-z]') then n = n + 1 end end return n"
    );
    server
        .cli(&["EVAL", &script, "0"])
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_tier_passes_conformance() {
    let server = RedisServer::start();
    let url = server.url();
    conformance::run::<_, Vec<u8>, _, _>(|setup| {
        let url = url.clone();
        async move { conformance_tier(&url, &setup).build().await.unwrap() }
    })
    .await;
    conformance::run::<_, String, _, _>(|setup| {
        let url = url.clone();
        async move {
            conformance_tier(&url, &setup)
                .namespace(format!("{}-s", setup.namespace))
                .build()
                .await
                .unwrap()
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_values_are_misses_deleted_and_counted() {
    let server = RedisServer::start();
    let tier = tier(&server, "avatars").await;
    let k = |s: &str| s.to_string();
    // Garbage, an envelope of another version, a payload that does not decode
    // as a String, and a key of another Redis type.
    server
        .cli(&["SET", "avatars:garbage", "not an envelope"])
        .unwrap();
    let mut old = b"LC\x00".to_vec();
    old.extend_from_slice(&u64::MAX.to_be_bytes());
    old.push(b'x');
    tier.pool()
        .next()
        .set::<(), _, _>("avatars:old", old.as_slice(), None, None, false)
        .await
        .unwrap();
    let mut bad_payload = b"LC\x01".to_vec();
    bad_payload.extend_from_slice(&u64::MAX.to_be_bytes());
    bad_payload.push(0xc1); // never valid MessagePack
    tier.pool()
        .next()
        .set::<(), _, _>("avatars:payload", bad_payload.as_slice(), None, None, false)
        .await
        .unwrap();
    server.cli(&["HSET", "avatars:hash", "f", "v"]).unwrap();

    for key in ["garbage", "old", "payload", "hash"] {
        let got = tier.get(&k(key)).await;
        assert!(matches!(got, Ok(None)), "{key}: {got:?}");
        assert_eq!(
            server
                .cli(&["EXISTS", &format!("avatars:{key}")])
                .unwrap()
                .trim(),
            "0",
            "{key} was not deleted"
        );
    }
    assert_eq!(tier.corrupt_values(), 4);

    // Through get_many too.
    server.cli(&["SET", "avatars:garbage", "junk"]).unwrap();
    tier.put(
        &k("good"),
        Entry::expiring_in("v".into(), SystemClock.now(), Duration::from_secs(60)),
    )
    .await
    .unwrap();
    let got = tier.get_many(&[k("garbage"), k("good")]).await.unwrap();
    assert!(got[0].is_none());
    assert_eq!(got[1].as_ref().unwrap().value, "v");
    assert_eq!(tier.corrupt_values(), 5);
    assert_eq!(
        server.cli(&["EXISTS", "avatars:garbage"]).unwrap().trim(),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_sets_an_absolute_expiry_capped_by_the_tier_ttl() {
    let server = RedisServer::start();
    let tier: RedisTier<String> = RedisTier::builder()
        .url(server.url())
        .namespace("ttl")
        .ttl(Duration::from_secs(600))
        .build()
        .await
        .unwrap();
    let now = SystemClock.now();
    let short = Entry::expiring_in("a".to_string(), now, Duration::from_secs(60));
    tier.put(&"short".to_string(), short.clone()).await.unwrap();
    let at: u64 = server
        .cli(&["PEXPIRETIME", "ttl:short"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(at, short.expires_at.as_unix_millis(), "PXAT = entry expiry");

    let long = Entry::expiring_in("b".to_string(), now, Duration::from_secs(86_400));
    tier.put(&"long".to_string(), long).await.unwrap();
    let at: u64 = server
        .cli(&["PEXPIRETIME", "ttl:long"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let cap = now
        .saturating_add(Duration::from_secs(600))
        .as_unix_millis();
    // The tier reads its own clock a moment after `now`.
    assert!(
        (cap..cap + 5_000).contains(&at),
        "PXAT {at} not capped near {cap}"
    );
    assert_eq!(stat_calls(&server, "expire"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_of_fifty_keys_is_one_mget() {
    let server = RedisServer::start();
    let tier = tier(&server, "batch").await;
    let now = SystemClock.now();
    let keys: Vec<String> = (0..50).map(|i| format!("user:{i}")).collect();
    tier.put_many(
        keys.iter()
            .filter(|k| !k.ends_with('7'))
            .map(|k| {
                (
                    k.clone(),
                    Entry::expiring_in(format!("v-{k}"), now, Duration::from_secs(60)),
                )
            })
            .collect(),
    )
    .await
    .unwrap();
    server.cli(&["CONFIG", "RESETSTAT"]).unwrap();
    let got = tier.get_many(&keys).await.unwrap();
    for (k, v) in keys.iter().zip(&got) {
        if k.ends_with('7') {
            assert!(v.is_none());
        } else {
            assert_eq!(v.as_ref().unwrap().value, format!("v-{k}"));
        }
    }
    assert_eq!(stat_calls(&server, "mget"), 1, "one MGET for 50 keys");
    assert_eq!(stat_calls(&server, "get"), 0, "no single GETs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_and_remove_prefix_touch_only_the_namespace() {
    let server = RedisServer::start();
    let a = tier(&server, "a").await;
    let b = tier(&server, "b").await;
    let ab = tier(&server, "a.b").await;
    let now = SystemClock.now();
    for i in 0..1_200 {
        // More than one SCAN page and one UNLINK batch.
        let e = Entry::expiring_in(format!("{i}"), now, Duration::from_secs(600));
        a.put(&format!("user:{i}"), e.clone()).await.unwrap();
        if i < 10 {
            b.put(&format!("user:{i}"), e.clone()).await.unwrap();
            ab.put(&format!("user:{i}"), e).await.unwrap();
        }
    }
    // Keys outside the namespace `a:*` (which the tier owns), some close to it.
    for foreign in ["a", "ab:user~3A1", "a.b", "other", "A:user~3A1"] {
        server.cli(&["SET", foreign, "keep"]).unwrap();
    }
    server.cli(&["CONFIG", "RESETSTAT"]).unwrap();

    L::remove_prefix(&a, "user:1").await.unwrap();
    assert!(a.get(&"user:1".to_string()).await.unwrap().is_none());
    assert!(a.get(&"user:1100".to_string()).await.unwrap().is_none());
    assert!(a.get(&"user:2".to_string()).await.unwrap().is_some());
    assert!(b.get(&"user:1".to_string()).await.unwrap().is_some());

    L::clear(&a).await.unwrap();
    // No value is left; the generations stay (the scope's, bumped twice, and
    // the key generations of the puts).
    assert_eq!(value_keys(&server, "a"), 0);
    let scope: u64 = server
        .cli(&["GET", "a:~a"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(scope > 0);
    for i in 0..10 {
        assert!(b.get(&format!("user:{i}")).await.unwrap().is_some());
        assert!(ab.get(&format!("user:{i}")).await.unwrap().is_some());
    }
    for foreign in ["a", "ab:user~3A1", "a.b", "other", "A:user~3A1"] {
        assert_eq!(
            server.cli(&["GET", foreign]).unwrap().trim(),
            "keep",
            "{foreign}"
        );
    }
    assert_eq!(stat_calls(&server, "flushdb"), 0);
    assert_eq!(stat_calls(&server, "flushall"), 0);
    assert!(stat_calls(&server, "scan") >= 2);
    assert!(stat_calls(&server, "unlink") >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_encoded_inside_their_namespace() {
    let server = RedisServer::start();
    let a = tier(&server, "a").await;
    let e = Entry::expiring_in("x".to_string(), SystemClock.now(), Duration::from_secs(60));
    for key in ["../b:k", "*", "b:k", "{slot}x", "ключ"] {
        a.put(&key.to_string(), e.clone()).await.unwrap();
    }
    let keys = server.cli(&["KEYS", "*"]).unwrap();
    let mut generations = 0;
    for line in keys.lines() {
        let (ns, mut rest) = line.split_once(':').unwrap();
        assert_eq!(ns, "a", "{line} left the namespace");
        // Each put also bumped the key's generation, `a:~g:<encoded>`.
        if let Some(key) = rest.strip_prefix("~g:") {
            generations += 1;
            rest = key;
        }
        assert!(
            rest.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-~".contains(&b)),
            "{line} carries key syntax"
        );
    }
    assert_eq!(keys.lines().count(), 10);
    assert_eq!(generations, 5);
    assert_eq!(a.redis_key(&"b:k".to_string()).unwrap(), "a:b~3Ak");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_namespaces_and_keys_are_refused() {
    let server = RedisServer::start();
    for ns in ["", "a:b", "a*", "{a}", "a b"] {
        let r = RedisTier::<String>::builder()
            .url(server.url())
            .namespace(ns)
            .build()
            .await;
        assert!(matches!(r, Err(Error::Unavailable { .. })), "{ns:?}");
    }
    let t = tier(&server, "ok").await;
    let r = t.get(&String::new()).await;
    assert!(matches!(r, Err(Error::InvalidKey { .. })));
    let r = t
        .put(
            &"a\nb".to_string(),
            Entry::new("v".into(), cache_core::Timestamp::MAX),
        )
        .await;
    assert!(matches!(r, Err(Error::InvalidKey { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_clock_keeps_redis_expiry_in_step() {
    // With a test clock far from the wall clock, Redis must neither drop the
    // entry early nor keep it without limit.
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let tier: RedisTier<String> = RedisTier::builder()
        .url(server.url())
        .namespace("manual")
        .clock(clock.clone())
        .build()
        .await
        .unwrap();
    tier.put(
        &"k".to_string(),
        Entry::expiring_in("v".into(), clock.now(), Duration::from_secs(30)),
    )
    .await
    .unwrap();
    let pttl: i64 = server
        .cli(&["PTTL", "manual:k"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((25_000..=30_000).contains(&pttl), "pttl {pttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_output_holds_no_credentials() {
    let server = RedisServer::start();
    server
        .cli(&["CONFIG", "SET", "requirepass", "s3cret-pass"])
        .unwrap();
    let builder = RedisTier::<String>::builder()
        .url(format!(
            "redis://default:s3cret-pass@127.0.0.1:{}",
            server.port()
        ))
        .namespace("auth");
    assert!(!format!("{builder:?}").contains("s3cret"));
    let tier = builder.build().await.unwrap();
    assert!(!format!("{tier:?}").contains("s3cret"));
    tier.put(
        &"k".to_string(),
        Entry::expiring_in("v".into(), SystemClock.now(), Duration::from_secs(60)),
    )
    .await
    .unwrap();
    let bad = RedisTier::<String>::builder()
        .url(format!(
            "redis://default:wrong-pass@127.0.0.1:{}",
            server.port()
        ))
        .reconnect_policy(cache_server::fred::prelude::ReconnectPolicy::new_constant(
            1, 10,
        ))
        .build()
        .await;
    let err = bad.unwrap_err().to_string();
    assert!(!err.contains("wrong-pass"), "{err}");
}

/// Stores `String`s as plain UTF-8, for other services to read.
#[derive(Debug)]
struct Utf8;

impl cache_server::Codec<String> for Utf8 {
    fn encode_into(&self, value: &String, out: &mut Vec<u8>) -> Result<(), cache_core::BoxError> {
        out.extend_from_slice(value.as_bytes());
        Ok(())
    }
    fn decode(&self, bytes: &[u8]) -> Result<String, cache_core::BoxError> {
        Ok(std::str::from_utf8(bytes)?.to_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_codec_is_pluggable() {
    let server = RedisServer::start();
    let tier = RedisTier::builder()
        .url(server.url())
        .namespace("utf8")
        .codec(Utf8)
        .build()
        .await
        .unwrap();
    let k = "k".to_string();
    tier.put(
        &k,
        Entry::expiring_in(
            "héllo".to_string(),
            SystemClock.now(),
            Duration::from_secs(60),
        ),
    )
    .await
    .unwrap();
    assert_eq!(tier.get(&k).await.unwrap().unwrap().value, "héllo");
    let raw = server.cli(&["GET", "utf8:k"]).unwrap();
    assert!(raw.trim_end().ends_with("héllo"), "{raw:?}");
    // Invalid UTF-8 after a valid header: a miss, deleted, counted.
    let mut bad = b"LC\x01".to_vec();
    bad.extend_from_slice(&u64::MAX.to_be_bytes());
    bad.extend_from_slice(&[0xff, 0xfe]);
    tier.pool()
        .next()
        .set::<(), _, _>("utf8:k", bad.as_slice(), None, None, false)
        .await
        .unwrap();
    assert!(tier.get(&k).await.unwrap().is_none());
    assert_eq!(tier.corrupt_values(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_tier_starts_while_redis_is_down_and_works_once_it_is_up() {
    let mut server = RedisServer::start();
    tokio::task::block_in_place(|| server.kill());
    let tier: RedisTier<String> = RedisTier::builder()
        .url(server.url())
        .namespace("lazy")
        .command_timeout(Duration::from_millis(200))
        .lazy_connect(true)
        .build()
        .await
        .unwrap();
    let k = "k".to_string();
    let start = std::time::Instant::now();
    let down = tier.get(&k).await;
    assert!(
        matches!(down, Err(Error::Timeout { .. } | Error::Backend { .. })),
        "{down:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "bounded by the timeout"
    );

    tokio::task::block_in_place(|| server.restart());
    let e = Entry::expiring_in("v".to_string(), SystemClock.now(), Duration::from_secs(60));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tier.put(&k, e.clone()).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The pool's other connections may still be connecting: each one that
    // connects makes the tier look at the primary again, and a read across
    // such a look is a miss. Once they are up, the value is served.
    loop {
        if let Ok(Some(hit)) = tier.get(&k).await {
            assert_eq!(hit.value, "v");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never served the value"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn compressing_tier(server: &RedisServer, ns: &str, above: usize) -> RedisTier<String> {
    RedisTier::builder()
        .url(server.url())
        .namespace(ns)
        .pool_size(1)
        .compress_above(above)
        .build()
        .await
        .unwrap()
}

async fn raw_value(tier: &RedisTier<String>, rkey: &str) -> Vec<u8> {
    tier.pool()
        .next()
        .get::<Option<Vec<u8>>, _>(rkey)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressing_tier_passes_conformance() {
    let server = RedisServer::start();
    let url = server.url();
    conformance::run::<_, Vec<u8>, _, _>(|setup| {
        let url = url.clone();
        async move {
            conformance_tier(&url, &setup)
                .compress_above(16)
                .build()
                .await
                .unwrap()
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_are_stored_compressed_flagged_and_read_back_by_any_instance() {
    let server = RedisServer::start();
    let writer = compressing_tier(&server, "thumbs", 1024).await;
    // The same namespace without a threshold: it still reads compressed values.
    let reader = tier(&server, "thumbs").await;
    let large = "https://img.example/avatars/42.png?v=1&".repeat(520); // ~20 KB
    let small = "https://img.example/avatars/7.png".to_string();
    let day = Duration::from_secs(86_400);
    for (key, value) in [("large", &large), ("small", &small)] {
        writer
            .put(
                &key.to_string(),
                Entry::expiring_in(value.clone(), SystemClock.now(), day),
            )
            .await
            .unwrap();
    }
    let stored = raw_value(&writer, "thumbs:large").await;
    assert_eq!(&stored[..3], b"LC\x02", "not flagged as compressed");
    assert!(
        stored.len() < large.len() / 4,
        "{} bytes stored",
        stored.len()
    );
    let stored = raw_value(&writer, "thumbs:small").await;
    assert_eq!(
        &stored[..3],
        b"LC\x01",
        "a value under the threshold was compressed"
    );
    for tier in [&writer, &reader] {
        let got = tier.get(&"large".to_string()).await.unwrap().unwrap();
        assert_eq!(got.value, large);
        let got = tier
            .get_many(&["large".to_string(), "small".to_string()])
            .await
            .unwrap();
        assert_eq!(got[0].as_ref().unwrap().value, large);
        assert_eq!(got[1].as_ref().unwrap().value, small);
    }
    assert_eq!(writer.corrupt_values() + reader.corrupt_values(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_compressed_value_is_a_miss_deleted_and_counted() {
    let server = RedisServer::start();
    let tier = compressing_tier(&server, "thumbs", 1024).await;
    let mut bad = b"LC\x02".to_vec();
    bad.extend_from_slice(&u64::MAX.to_be_bytes());
    bad.extend_from_slice(&[0xff, 0xff, 0xff, 0x7f, 0x10, 0x41]); // claims 2 GiB
    for (key, value) in [
        ("bomb", bad.clone()),
        ("garbled", {
            let mut g = bad[..11].to_vec();
            g.extend_from_slice(&[100, 0, 0, 0, 0xff, 0xff]);
            g
        }),
    ] {
        tier.pool()
            .next()
            .set::<(), _, _>(format!("thumbs:{key}"), value.as_slice(), None, None, false)
            .await
            .unwrap();
        let got = tier.get(&key.to_string()).await;
        assert!(matches!(got, Ok(None)), "{key}: {got:?}");
        assert_eq!(
            server
                .cli(&["EXISTS", &format!("thumbs:{key}")])
                .unwrap()
                .trim(),
            "0",
            "{key} was not deleted"
        );
    }
    assert_eq!(tier.corrupt_values(), 2);
}
