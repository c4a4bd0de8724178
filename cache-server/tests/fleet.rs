#![allow(clippy::unwrap_used)]
//! The bus as a fleet runs it: what it costs per instance, instances that
//! join, leave and die, and builds that cannot share Redis. Real
//! redis-servers on loopback ports; many buses in one process.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::{
    loader_fn, BoxError, Clock, Entry, FaultTier, MemoryTier, SystemClock, Tier, TieredCache,
};
use cache_server::testing::{LoopbackProxy, RedisServer};
use cache_server::{BusStats, InvalidationBus, InvalidationBusBuilder, SyncedCache};
use support::{fast_bus, wait_for, Instance};

mod support;

const LIVENESS: Duration = Duration::from_secs(20);

/// An instance: moka -> origin (the origin answers `<key>@v1`), its bus built
/// by `bus`.
async fn instance(bus: InvalidationBusBuilder) -> Instance {
    let bus = bus.connect().await.unwrap();
    support::instance(None, Arc::new(AtomicU64::new(1)), bus)
}

fn fast(url: String, channel: &str) -> InvalidationBusBuilder {
    fast_bus(url).channel(channel)
}

fn total(instances: &[Instance], f: impl Fn(&BusStats) -> u64) -> u64 {
    instances.iter().map(|i| f(&i.cache.bus().stats())).sum()
}

/// Messages delivered by Redis to the buses of a fleet of `n`: per
/// invalidation (the invalidation to every instance, one ack per other
/// instance) and per heartbeat (to its sender only). Counted on each bus,
/// not timed.
async fn deliveries(server: &RedisServer, n: usize) -> (u64, u64, u64, f64) {
    let channel = format!("fleet{n}:invalidate");
    let mut fleet = Vec::new();
    for _ in 0..n {
        fleet.push(instance(fast(server.url(), &channel)).await);
    }
    wait_for!(
        "the first instance sees the others",
        fleet[0].cache.bus().live_peers().await.unwrap().len() == n - 1,
        within LIVENESS
    );
    let key = "user:1".to_string();
    for i in &fleet {
        i.cache.get(&key).await.unwrap();
    }
    let invalidations = |f: &[Instance]| total(f, |s| s.received_invalidations);
    let acks = |f: &[Instance]| total(f, |s| s.received_acks);
    let (inv0, ack0) = (invalidations(&fleet), acks(&fleet));
    fleet[0].cache.invalidate(&key).await.unwrap();
    assert_eq!(fleet[0].cache.bus().stats().last_peers, n as u64 - 1);
    for i in &fleet {
        assert!(
            !i.moka.contains(&key),
            "confirmed: every instance dropped it"
        );
    }
    // Ours comes back to us too; wait for it, then for anything extra.
    wait_for!(
        "the invalidation reached every bus",
        invalidations(&fleet) - inv0 >= n as u64,
        within LIVENESS
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let per_invalidation = (invalidations(&fleet) - inv0, acks(&fleet) - ack0);

    // Idle: every heartbeat is delivered once, to its sender, and nothing
    // else is delivered.
    let received = |f: &[Instance]| total(f, |s| s.received);
    let heard = |f: &[Instance]| total(f, |s| s.received_heartbeats);
    let sent = |f: &[Instance]| total(f, |s| s.heartbeats);
    let (r0, h0, s0) = (received(&fleet), heard(&fleet), sent(&fleet));
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (r1, h1, s1) = (received(&fleet), heard(&fleet), sent(&fleet));
    let secs = started.elapsed().as_secs_f64();
    let (idle_deliveries, heartbeats_heard, heartbeats_sent) = (r1 - r0, h1 - h0, s1 - s0);
    assert_eq!(
        idle_deliveries, heartbeats_heard,
        "idle, only heartbeats are delivered"
    );
    // Each heartbeat sent is heard once (give or take those in flight at
    // either end of the window).
    assert!(
        heartbeats_heard <= heartbeats_sent + n as u64
            && heartbeats_heard + n as u64 >= heartbeats_sent,
        "{heartbeats_heard} heartbeats heard for {heartbeats_sent} sent by {n} instances"
    );
    for i in &fleet {
        i.cache.bus().shutdown().await;
    }
    (
        per_invalidation.0,
        per_invalidation.1,
        heartbeats_sent,
        idle_deliveries as f64 / secs,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_grow_linearly_with_the_fleet() {
    let server = RedisServer::start();
    println!("| instances | invalidation deliveries | ack deliveries | per invalidation | idle deliveries/s (200 ms heartbeats) |");
    println!("|---|---|---|---|---|");
    for n in [2usize, 4, 8, 16] {
        let (inv, acks, _sent, idle) = deliveries(&server, n).await;
        println!("| {n} | {inv} | {acks} | {} | {idle:.0} |", inv + acks);
        let n = n as u64;
        assert_eq!(inv, n, "one delivery of the invalidation per instance");
        assert_eq!(
            acks,
            n - 1,
            "one ack per other instance, to the publisher only"
        );
        // Idle: about n / interval; a broadcast of heartbeats would be n² / interval.
        assert!(
            idle < (n as f64) * 5.0 * 1.6 + 5.0,
            "idle deliveries per second {idle:.0} for {n} instances"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_counts_at_once_and_one_that_leaves_is_excused_at_once() {
    let server = RedisServer::start();
    let channel = "churn:invalidate";
    // A waits up to 30 s for acks: an instance it waited for in vain would
    // show as an error, not as a slow Ok.
    let a = instance(fast(server.url(), channel).ack_timeout(Duration::from_secs(30))).await;
    let key = "user:1".to_string();
    a.cache.invalidate(&key).await.unwrap();
    assert_eq!(a.cache.bus().stats().last_peers, 0, "alone");

    // B joins: A's very next invalidation waits for it, no discovery window.
    let b = instance(fast(server.url(), channel)).await;
    b.cache.get(&key).await.unwrap();
    assert!(b.moka.contains(&key));
    a.cache.invalidate(&key).await.unwrap();
    assert_eq!(a.cache.bus().stats().last_peers, 1);
    assert!(!b.moka.contains(&key), "A's Ok means B dropped it");

    // B leaves gracefully: gone from the registry, not waited for.
    b.cache.bus().shutdown().await;
    assert!(a.cache.bus().live_peers().await.unwrap().is_empty());
    a.cache.invalidate(&key).await.unwrap();
    assert_eq!(a.cache.bus().stats().last_peers, 0);
    assert_eq!(a.cache.bus().stats().unconfirmed, 0);
}

/// An instance whose connections are gone (its process died: Redis closed
/// its sockets) is excused as soon as Redis shows no subscriber on its inbox,
/// long before its registration runs out. Here its registration lasts 25 s
/// and the publisher gives up after 10 s: an Ok proves it was excused early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_connections_died_is_excused_before_its_registration_runs_out() {
    let server = RedisServer::start();
    let channel = "dead:invalidate";
    let proxy = LoopbackProxy::start(server.port(), |mut cr, mut sw, mut sr, mut cw| {
        (
            async move {
                let _ = tokio::io::copy(&mut cr, &mut sw).await;
            },
            async move {
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
            },
        )
    })
    .await;
    let b = instance(
        InvalidationBus::builder()
            .url(proxy.url())
            .channel(channel)
            .heartbeat_interval(Duration::from_secs(5))
            .heartbeat_timeout(Duration::from_secs(20)),
    )
    .await;
    let a = instance(fast(server.url(), channel).ack_timeout(Duration::from_secs(10))).await;
    let b_id = b.cache.bus().instance_id();
    assert_eq!(a.cache.bus().live_peers().await.unwrap(), vec![b_id]);
    // B's process "dies": every connection it had is closed, and it cannot
    // reconnect (the proxy is gone).
    drop(proxy);
    let key = "user:1".to_string();
    let result = a.cache.invalidate(&key).await;
    let stats = a.cache.bus().stats();
    assert!(result.is_ok(), "{result:?}; {stats:?}");
    assert_eq!(stats.excused, 1, "{stats:?}");
    assert_eq!(stats.unconfirmed, 0, "{stats:?}");
    assert_eq!(
        a.cache.bus().live_peers().await.unwrap(),
        vec![b_id],
        "B's registration had not run out: it was excused for its missing subscriber"
    );
    drop(b);
}

/// A fleet shares Redis values: an instance built with another feature set
/// than the live ones (here: `tags`) is refused at start, and the message
/// names the feature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_of_another_build_is_refused_with_a_message_naming_the_feature() {
    let server = RedisServer::start();
    let channel = "mixed:invalidate";
    let tagged = cfg!(feature = "tags");
    let first = instance(fast(server.url(), channel)).await;
    // The other build: without `tags` when this one has it, and the reverse.
    let other: &[&str] = if tagged { &[] } else { &["tags"] };
    let err = fast(server.url(), channel)
        .pretend_features(other)
        .connect()
        .await
        .unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(msg.contains("`tags`"), "{msg}");
    assert!(msg.contains("refusing to join"), "{msg}");
    assert!(
        msg.contains(&format!("{:016x}", first.cache.bus().instance_id())),
        "names the instance it cannot share with: {msg}"
    );
    assert!(
        first.cache.bus().live_peers().await.unwrap().is_empty(),
        "the refused instance never registered"
    );
    // The same build joins.
    let second = instance(fast(server.url(), channel)).await;
    let key = "user:1".to_string();
    second.cache.get(&key).await.unwrap();
    first.cache.invalidate(&key).await.unwrap();
    assert!(!second.moka.contains(&key));
}

/// A remote invalidation whose local apply fails is not acknowledged (its
/// tier may still hold the old value), unless the local tiers could be
/// flushed instead. B's in-process tier fails every removal and clear: A's
/// call reports B, never Ok. Once B's tier works again, it confirms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_invalidation_that_fails_to_apply_is_not_acknowledged() {
    let server = RedisServer::start();
    let channel = "apply:invalidate";
    let a = instance(fast(server.url(), channel).ack_timeout(Duration::from_secs(2))).await;
    let b_bus = fast(server.url(), channel).connect().await.unwrap();
    let (tier, faults) = FaultTier::new(MemoryTier::<String, String>::new());
    let b_chain = TieredCache::builder()
        .tier(Tier::new(tier))
        .origin(loader_fn(move |key: String| async move {
            Ok::<_, BoxError>(Some(Entry::expiring_in(
                format!("{key}@v1"),
                SystemClock.now(),
                Duration::from_secs(60),
            )))
        }))
        .build();
    let b = SyncedCache::new(b_chain, b_bus, vec![0]);
    let key = "user:1".to_string();
    b.get(&key).await.unwrap();
    faults.set_failing(true);
    let err = a.cache.invalidate(&key).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("{:016x}", b.bus().instance_id())),
        "names B: {msg}"
    );
    assert!(b.bus().stats().apply_failures >= 1);
    assert_eq!(b.bus().stats().acks_sent, 0, "{:?}", b.bus().stats());
    faults.set_failing(false);
    a.cache.invalidate(&key).await.unwrap();
    // B counts its ack once Redis took it, which may be after A heard it.
    wait_for!("B counts its ack", b.bus().stats().acks_sent == 1, within LIVENESS);
}
