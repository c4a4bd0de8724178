//! The production chain, `moka → Redis → signer`, on two instances sharing one
//! real redis-server (started on a free loopback port) and one real S3 (s3s-fs).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cache_core::{Clock, ManualClock, SystemClock, Tier};
use cache_server::testing::RedisServer;
use cache_server::{Invalidation, InvalidationBus, MokaTier, RedisTier};
use presign::embedded::EmbeddedS3;
use presign::{PresignedUrl, PresignedUrls, S3Config};

mod support;
use support::get;

const MIN: Duration = Duration::from_secs(60);
const NAMESPACE: &str = "avatar-urls";

async fn instance(redis: &RedisServer, s3: &S3Config, clock: &ManualClock) -> PresignedUrls {
    let moka = MokaTier::<String, PresignedUrl>::builder()
        .name("moka")
        .max_bytes(16 << 20)
        .clock(clock.clone())
        .build();
    let shared = RedisTier::<PresignedUrl>::builder()
        .url(redis.url())
        .namespace(NAMESPACE)
        .clock(clock.clone())
        .build()
        .await
        .unwrap();
    let bus = InvalidationBus::builder()
        .url(redis.url())
        .channel("avatar-urls:invalidate")
        .connect()
        .await
        .unwrap();
    PresignedUrls::builder(s3.signer().unwrap(), Arc::new(s3.object_store().unwrap()))
        .tier(Tier::new(moka).ttl(10 * MIN))
        .tier(
            Tier::new(shared)
                .ttl(50 * MIN)
                .timeout(Duration::from_secs(2)),
        )
        .clock(clock.clone())
        .bus(bus, vec![0])
        .build()
        .unwrap()
}

/// `cmdstat_<command>` call count from `INFO commandstats` (commands a Lua
/// script runs count too).
fn calls(redis: &RedisServer, command: &str) -> u64 {
    stat(redis, command, "calls")
}

fn stat(redis: &RedisServer, command: &str, field: &str) -> u64 {
    let info = redis.cli(&["INFO", "commandstats"]).unwrap();
    let prefix = format!("cmdstat_{command}:");
    let Some(rest) = info.lines().find_map(|l| l.strip_prefix(&prefix)) else {
        return 0;
    };
    rest.split(',')
        .find_map(|kv| kv.strip_prefix(&format!("{field}=")))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

/// Lua scripts that ran (each fenced fill is one; its generation check is one
/// MGET inside the script).
fn scripts_run(redis: &RedisServer) -> u64 {
    calls(redis, "evalsha") - stat(redis, "evalsha", "failed_calls") + calls(redis, "eval")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_of_fifty_is_one_redis_round_trip_and_signs_only_misses() {
    let redis = RedisServer::start();
    let s3 = EmbeddedS3::start().await.unwrap();
    let clock = ManualClock::starting_at(SystemClock.now());
    let a = instance(&redis, &s3.config(), &clock).await;
    let b = instance(&redis, &s3.config(), &clock).await;
    let users: Vec<String> = (0..50).map(|i| format!("user-{i}")).collect();

    let warm = a.urls(&users[..20]).await.unwrap();
    assert_eq!(a.signatures(), 20);

    let (mget, get, scripts) = (
        calls(&redis, "mget"),
        calls(&redis, "get"),
        scripts_run(&redis),
    );
    let all = b.urls(&users).await.unwrap();
    let fills = scripts_run(&redis) - scripts;
    assert_eq!(fills, 30, "one fenced fill per miss");
    assert_eq!(
        calls(&redis, "mget") - mget - fills,
        2,
        "one MGET for 50 users, one for the generations of the 30 misses (their fill stamps)"
    );
    assert_eq!(calls(&redis, "get") - get, 0, "no single GETs");
    assert_eq!(b.signatures(), 30, "instance B signed only the 30 misses");
    assert_eq!(&all[..20], &warm[..], "the 20 came from Redis");

    // Now all 50 sit in B's moka tier: no Redis command at all.
    let mget = calls(&redis, "mget");
    assert_eq!(b.urls(&users).await.unwrap(), all);
    assert_eq!(calls(&redis, "mget"), mget);
    assert_eq!(b.signatures(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holds_a_url_at_most_fifty_minutes() {
    let redis = RedisServer::start();
    let s3 = EmbeddedS3::start().await.unwrap();
    let clock = ManualClock::starting_at(SystemClock.now());
    let a = instance(&redis, &s3.config(), &clock).await;
    a.url("alice").await.unwrap();
    let keys = redis.cli(&["KEYS", &format!("{NAMESPACE}:*")]).unwrap();
    let key = keys.lines().find(|l| !l.is_empty()).unwrap().to_owned();
    assert!(key.contains("alice"), "{key}");
    let pttl: u64 = redis.cli(&["PTTL", &key]).unwrap().trim().parse().unwrap();
    assert!(pttl > 49 * 60_000 && pttl <= 50 * 60_000, "PTTL {pttl} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_on_one_instance_invalidates_every_instance() {
    let redis = RedisServer::start();
    let s3 = EmbeddedS3::start().await.unwrap();
    let clock = ManualClock::starting_at(SystemClock.now());
    let a = instance(&redis, &s3.config(), &clock).await;
    let b = instance(&redis, &s3.config(), &clock).await;

    a.replace("alice", Bytes::from_static(b"old"), "image/png")
        .await
        .unwrap();
    let old = b.url("alice").await.unwrap(); // now in B's moka tier
    assert_eq!(
        a.url("alice").await.unwrap(),
        old,
        "A reads B's URL from Redis"
    );
    assert_eq!(get(&old.url).await, (200, b"old".to_vec()));
    assert_eq!(b.url("alice").await.unwrap(), old);

    let mut applied = b.synced().unwrap().applied();
    clock.advance(Duration::from_secs(2));
    a.replace("alice", Bytes::from_static(b"new"), "image/png")
        .await
        .unwrap();
    // Liveness bound, not a speed check: B applies A's invalidation.
    let got = tokio::time::timeout(Duration::from_secs(10), applied.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, Invalidation::Key("alice".into()));

    let signed = b.signatures();
    let next = b.url("alice").await.unwrap();
    assert_ne!(
        next, old,
        "B no longer serves the old URL from its moka tier"
    );
    assert_eq!(b.signatures(), signed + 1, "B signed a fresh URL");
    assert_eq!(get(&next.url).await, (200, b"new".to_vec()));
    assert!(next.remaining(clock.now()) >= 55 * MIN);
}

/// The margin guarantee on the production chain: random request times on a
/// manual clock (Redis itself keeps real time; the tier checks every read
/// against the injected clock), every URL handed out by either instance has at
/// least the margin left.
#[test]
fn every_url_from_moka_and_redis_has_the_margin_left() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let redis = RedisServer::start();
    // Signing needs no S3: nothing is fetched here.
    let s3 = S3Config::new(
        "http://127.0.0.1:9",
        "us-east-1",
        "avatars",
        presign::Credentials::new("AKIDEXAMPLE", "secret"),
    );
    let mut runner = TestRunner::new(Config::with_cases(24));
    let steps = prop::collection::vec(
        (
            0u64..(3 * 3_600_000),
            0usize..3,
            any::<bool>(),
            any::<bool>(),
        ),
        1..25,
    );
    runner
        .run(&steps, |steps| {
            rt.block_on(async {
                redis.cli(&["FLUSHDB"]).unwrap(); // our own throwaway server
                let clock = ManualClock::new();
                let a = instance(&redis, &s3, &clock).await;
                let b = instance(&redis, &s3, &clock).await;
                let users = ["u0", "u1", "u2"];
                for (advance_ms, user, on_b, batch) in steps {
                    clock.advance(Duration::from_millis(advance_ms));
                    let now = clock.now();
                    let svc = if on_b { &b } else { &a };
                    let url = if batch {
                        svc.urls(&users).await.unwrap()[user].clone()
                    } else {
                        svc.url(users[user]).await.unwrap()
                    };
                    let left = url.expires_at.duration_since(now);
                    prop_assert!(left >= presign::DEFAULT_MARGIN, "{:?} left", left);
                    let path = format!("/avatars/{}?", users[user]);
                    prop_assert!(url.url.contains(&path), "{}", url.url);
                }
                Ok(())
            })
        })
        .unwrap();
}
