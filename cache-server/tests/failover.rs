#![allow(clippy::unwrap_used)]
//! The guarantee through a Redis failover, in both deployments a user runs
//! (real processes on loopback): a primary with a replica behind three
//! Sentinels, and a cluster of three primaries with a replica each.
//! Instances invalidate while the test stalls the replication links, then a
//! replica is promoted (`SENTINEL FAILOVER`, `kill -9` of the primary,
//! `CLUSTER FAILOVER TAKEOVER`, or `kill -9` then `CLUSTER FAILOVER FORCE`).
//! Afterwards no instance (nor a fresh one) serves a value older than one
//! whose invalidation returned `Ok`, and no instance's reads of a key go
//! back to an older value. With the failover handling switched off
//! (no `WAIT`, no failover check) the same run finds violations.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::{Tier, TieredCache};
use cache_server::testing::replicated::ReplicatedCluster;
use cache_server::testing::sentinel::SentinelGroup;
use cache_server::testing::RedisServer;
use cache_server::{InvalidationBus, MokaTier, RedisTier, Replication, SyncedCache};
use support::origin;

mod support;

const CHANNEL: &str = "pics:invalidate";
const KEYS: usize = 20;
/// How long an invalidation waits for the replica. On loopback a replica
/// that keeps up answers `WAIT` in far less (at 150 ms some were late); the
/// stalled one makes the invalidations during the stall wait this long, so
/// each instance runs those at once.
const WAIT_TIMEOUT: Duration = Duration::from_millis(300);
/// How long A, B and a fresh instance read after the promotion: past the
/// in-process TTL on a cluster (1 s), so reads reach the promoted replicas.
const READS_AFTER: Duration = Duration::from_secs(3);

struct Instance {
    name: &'static str,
    cache: SyncedCache<String, String>,
}

/// What of the failover handling is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Handling {
    /// `WAIT` for 1 replica, and the failover check.
    Full,
    /// `WAIT` only.
    WaitOnly,
    /// Neither.
    Off,
    /// `Full`, but the tier ignores its connections' errors and reconnects
    /// (`mutation::set_ignore_connection_events`): on a cluster, only the
    /// routing check of each answer can notice the failover in time.
    FullWithoutEvents,
}

/// Where the instances' Redis runs.
enum Deployment {
    Sentinel(SentinelGroup),
    /// The bus runs on a server of its own (the bus takes one node, not a
    /// cluster).
    Cluster(ReplicatedCluster, RedisServer),
}

impl Deployment {
    fn url(&self) -> String {
        match self {
            Deployment::Sentinel(g) => g.url(),
            Deployment::Cluster(c, _) => c.url(),
        }
    }

    fn bus_url(&self) -> String {
        match self {
            Deployment::Sentinel(g) => g.url(),
            Deployment::Cluster(_, bus) => bus.url(),
        }
    }

    /// How long the in-process tier keeps a value, and how often the
    /// failover check looks without being woken. On Sentinel, values stay
    /// in process (what the bus's resync after the failover flushes is read
    /// again from Redis). On a cluster the in-process copies expire within
    /// a second, so reads soon after the promotion reach Redis, and the
    /// periodic look is a minute away: nothing but the routing check (a
    /// client follows `MOVED` with no connection event) can notice in time.
    fn timing(&self) -> (Duration, Duration) {
        match self {
            Deployment::Sentinel(_) => (Duration::from_secs(300), Duration::from_millis(250)),
            Deployment::Cluster(..) => (Duration::from_secs(1), Duration::from_secs(60)),
        }
    }

    fn stall_replication(&self, on: bool) {
        match self {
            Deployment::Sentinel(g) => g.stall_replication(on),
            Deployment::Cluster(c, _) => c.stall_replication(on),
        }
    }
}

/// moka -> Redis (through the Sentinels, or the cluster) -> origin, which
/// answers `<key>@v<version>`.
async fn instance(
    name: &'static str,
    deployment: &Deployment,
    version: Arc<AtomicU64>,
    handling: Handling,
) -> Instance {
    let (local_ttl, check_every) = deployment.timing();
    let make = || {
        let redis = RedisTier::<String>::builder()
            .url(deployment.url())
            .namespace("pics")
            .command_timeout(Duration::from_secs(1));
        match handling {
            Handling::Full | Handling::FullWithoutEvents => redis
                .replication(Replication::new(1, WAIT_TIMEOUT))
                .failover_check(Some(check_every)),
            Handling::WaitOnly => redis
                .replication(Replication::new(1, WAIT_TIMEOUT))
                .failover_check(None),
            Handling::Off => redis.replication(Replication::NONE).failover_check(None),
        }
    };
    // Right after a failover a connection can still meet the old primary's
    // address on its way out: an app retries its start, so does this.
    let mut tries = 0;
    cache_server::mutation::set_ignore_connection_events(handling == Handling::FullWithoutEvents);
    let redis = loop {
        match make().build().await {
            Ok(r) => break r,
            Err(e) if tries < 20 => {
                tries += 1;
                println!("{name}: connecting the tier failed ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("{name}: {e}"),
        }
    };
    cache_server::mutation::set_ignore_connection_events(false);
    let failovers = redis.failovers();
    let chain = TieredCache::builder()
        .tier(Tier::new(MokaTier::<String, String>::builder().build()).ttl(local_ttl))
        // No breaker: the WAIT failures during the stall would otherwise
        // make the chain skip Redis for a while, hiding what it serves.
        .tier(
            Tier::new(redis)
                .ttl(Duration::from_secs(3000))
                .no_circuit_breaker(),
        )
        .origin(origin(version, Arc::default()))
        .build();
    let mut tries = 0;
    let bus = loop {
        let connected = InvalidationBus::builder()
            .url(deployment.bus_url())
            .channel(CHANNEL)
            .heartbeat_interval(Duration::from_millis(200))
            .heartbeat_timeout(Duration::from_millis(800))
            .connect()
            .await;
        match connected {
            Ok(bus) => break bus,
            Err(e) if tries < 20 => {
                tries += 1;
                println!("{name}: connecting the bus failed ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("{name}: {e}"),
        }
    };
    let cache = SyncedCache::new(chain, bus, vec![0]);
    if matches!(handling, Handling::Full | Handling::FullWithoutEvents) {
        cache.flush_on_failover(failovers);
    }
    Instance { name, cache }
}

fn key(i: usize) -> String {
    format!("user:{i}")
}

fn version_of(value: &str) -> u64 {
    value.rsplit("@v").next().unwrap().parse().unwrap()
}

#[derive(Debug, Default)]
struct Findings {
    /// Invalidations that returned Ok, and those that returned an error.
    ok: usize,
    failed: usize,
    /// A read older than a version whose invalidation returned Ok.
    stale: Vec<String>,
    /// A read older than one the same instance returned before.
    backwards: Vec<String>,
    reads: usize,
    /// Reads A and B (the instances that saw the failover) got from Redis
    /// after it: Redis is trusted again once the failover is voided.
    redis_hits_after: usize,
    /// Whether the failover happened (from then on Redis hits are counted).
    failed_over: bool,
    /// Of A and B, how many read from Redis a key that the fresh instance
    /// filled at the end: each trusts Redis again once it has voided the
    /// failover. (The Redis hits above depend on which of A and B voided
    /// first: the later void unlinks what the other had filled.)
    probe_hits: usize,
}

/// Reads every key on `inst`, checking each against the newest version an
/// invalidation confirmed (`floor`) and the newest this instance returned.
async fn read_all(
    inst: &Instance,
    floor: &HashMap<String, u64>,
    seen: &mut HashMap<(&'static str, String), u64>,
    f: &mut Findings,
) {
    for i in 0..KEYS {
        let k = key(i);
        let Ok(Some(hit)) = inst.cache.get(&k).await else {
            continue;
        };
        f.reads += 1;
        if f.failed_over
            && inst.name != "C"
            && matches!(hit.source, cache_core::Source::Tier { index: 1, .. })
        {
            f.redis_hits_after += 1;
        }
        let v = version_of(hit.value());
        let min = floor.get(&k).copied().unwrap_or(0);
        if v < min {
            f.stale.push(format!(
                "{} read {k}@{v} after v{min} was confirmed ({:?})",
                inst.name, hit.source
            ));
        }
        let last = seen.entry((inst.name, k.clone())).or_insert(0);
        if v < *last {
            f.backwards.push(format!(
                "{} read {k}@{v} after {k}@{last} ({:?})",
                inst.name, hit.source
            ));
        }
        *last = (*last).max(v);
    }
}

/// Invalidates keys `range` on `inst` at `version`, all at once (as an app
/// serving many users does), recording the confirmed ones in `floor`. A
/// key whose invalidation failed is tried again, up to `attempts` in all,
/// as an app retries what was reported incomplete.
async fn invalidate(
    inst: &Instance,
    range: std::ops::Range<usize>,
    version: u64,
    attempts: usize,
    floor: &mut HashMap<String, u64>,
    f: &mut Findings,
) {
    let mut todo: Vec<usize> = range.collect();
    for attempt in 1..=attempts {
        let results = futures_util::future::join_all(
            todo.iter()
                .map(|&i| async move { (i, inst.cache.invalidate(&key(i)).await) }),
        )
        .await;
        todo.clear();
        for (i, result) in results {
            match result {
                Ok(_) => {
                    f.ok += 1;
                    floor.insert(key(i), version);
                }
                Err(e) => {
                    println!(
                        "invalidate {} on {} (attempt {attempt} of {attempts}): {e:?}",
                        key(i),
                        inst.name
                    );
                    if attempt == attempts {
                        f.failed += 1;
                    } else {
                        todo.push(i);
                    }
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    SentinelFailover,
    KillPrimary,
    /// `CLUSTER FAILOVER TAKEOVER` on every shard's replica.
    ClusterTakeover,
    /// `kill -9` of shard 0's primary, then `CLUSTER FAILOVER FORCE` on its
    /// replica.
    ClusterKillAndForce,
}

/// One failover run at a time: each starts five to seven redis processes
/// and proxies.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run(fault: Fault, handling: Handling) -> Findings {
    let _one = ONE_AT_A_TIME.lock().await;
    let t0 = Instant::now();
    let phase = |what: &str| {
        println!(
            "{fault:?}, {handling:?}: {what} at {:.1} s",
            t0.elapsed().as_secs_f64()
        )
    };
    let mut deployment = match fault {
        Fault::SentinelFailover | Fault::KillPrimary => {
            Deployment::Sentinel(SentinelGroup::start().await)
        }
        Fault::ClusterTakeover | Fault::ClusterKillAndForce => {
            Deployment::Cluster(ReplicatedCluster::start().await, RedisServer::start())
        }
    };
    phase("deployment up");
    let version = Arc::new(AtomicU64::new(1));
    let a = instance("A", &deployment, version.clone(), handling).await;
    let b = instance("B", &deployment, version.clone(), handling).await;
    let mut floor: HashMap<String, u64> = HashMap::new();
    let mut seen = HashMap::new();
    let mut f = Findings::default();
    for inst in [&a, &b] {
        read_all(inst, &floor, &mut seen, &mut f).await;
    }
    phase("instances up");
    // Confirmed while the replica keeps up (a `WAIT` can be late on a busy
    // machine: what was reported incomplete is tried again).
    version.store(2, Ordering::SeqCst);
    invalidate(&a, 0..5, 2, 3, &mut floor, &mut f).await;
    for inst in [&a, &b] {
        read_all(inst, &floor, &mut seen, &mut f).await;
    }
    // The replica's link stalls; the primary goes on.
    tokio::task::block_in_place(|| deployment.stall_replication(true));
    version.store(3, Ordering::SeqCst);
    invalidate(&a, 5..12, 3, 1, &mut floor, &mut f).await;
    invalidate(&b, 12..KEYS, 3, 1, &mut floor, &mut f).await;
    for inst in [&a, &b] {
        read_all(inst, &floor, &mut seen, &mut f).await;
    }
    phase("invalidated during the stall");
    // A replica is promoted without what it missed. Until the old primary
    // is demoted, it answers too (and clients still on it read what it
    // has): the check is about after.
    tokio::task::block_in_place(|| match (&mut deployment, fault) {
        (Deployment::Sentinel(group), Fault::SentinelFailover | Fault::KillPrimary) => {
            let replica = group.replica().port();
            match fault {
                Fault::SentinelFailover => group.force_failover(),
                _ => group.kill_primary(),
            }
            group.wait_for_primary(replica);
            group.stall_replication(false);
            if let Fault::SentinelFailover = fault {
                group.wait_for_old_primary_demoted();
            }
        }
        (Deployment::Cluster(cluster, _), Fault::ClusterTakeover) => {
            for shard in 0..3 {
                cluster.takeover(shard);
            }
            for shard in 0..3 {
                cluster.wait_for_promotion(shard);
            }
            cluster.stall_replication(false);
            for shard in 0..3 {
                cluster.wait_for_old_primary_demoted(shard);
            }
        }
        (Deployment::Cluster(cluster, _), _) => {
            cluster.kill_primary(0);
            cluster.force_failover(0);
            cluster.wait_for_promotion(0);
            cluster.stall_replication(false);
        }
        _ => unreachable!("{fault:?} on another deployment"),
    });
    phase("the replica is the primary");
    f.failed_over = true;
    // Reads for a while after the promotion, on A, B and a fresh instance.
    let c = instance("C", &deployment, version.clone(), handling).await;
    phase("a fresh instance up");
    let until = Instant::now() + READS_AFTER;
    while Instant::now() < until {
        for inst in [&a, &b, &c] {
            read_all(inst, &floor, &mut seen, &mut f).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    phase("reads over");
    // A key no one has read: C fills Redis from the origin, then A and B
    // must find it there.
    let probe = "probe".to_owned();
    let filled = c.cache.get(&probe).await;
    assert!(matches!(filled, Ok(Some(_))), "C's probe read: {filled:?}");
    for inst in [&a, &b] {
        match inst.cache.get(&probe).await {
            Ok(Some(hit)) if matches!(hit.source, cache_core::Source::Tier { index: 1, .. }) => {
                f.probe_hits += 1
            }
            other => println!(
                "{}: the probe key was not a Redis hit: {:?}",
                inst.name,
                other.map(|o| o.map(|h| h.source))
            ),
        }
    }
    for inst in [&a, &b, &c] {
        inst.cache.bus().shutdown().await;
    }
    phase("done");
    println!(
        "{fault:?}, handling {handling:?}: {} invalidations Ok, {} failed, {} reads, {} stale, {} backwards ({} Redis hits on A and B after the failover, {} of 2 on the probe); first: {:?} {:?}",
        f.ok,
        f.failed,
        f.reads,
        f.stale.len(),
        f.backwards.len(),
        f.redis_hits_after,
        f.probe_hits,
        f.stale.first(),
        f.backwards.first()
    );
    f
}

fn assert_held(f: &Findings) {
    assert!(
        f.ok >= 5,
        "the invalidations before the stall were confirmed: {f:?}"
    );
    assert!(
        f.failed >= 1,
        "with the replica stalled, WAIT reports the invalidations incomplete: {f:?}"
    );
    assert!(f.stale.is_empty(), "stale reads: {:?}", f.stale);
    assert!(
        f.backwards.is_empty(),
        "reads went backwards: {:?}",
        f.backwards
    );
    // The void after the failover needs no replica (the promoted one has
    // none after a kill): the instances that saw it trust Redis again.
    assert_eq!(
        f.probe_hits, 2,
        "A and B must read from Redis after the failover: {f:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_serves_no_value_older_than_a_confirmed_invalidation() {
    assert_held(&run(Fault::SentinelFailover, Handling::Full).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_primary_serves_no_value_older_than_a_confirmed_invalidation() {
    assert_held(&run(Fault::KillPrimary, Handling::Full).await);
}

/// The check above must catch a tier that neither waits for replicas nor
/// notices the new primary: then invalidations return Ok during the stall,
/// and after the failover old values come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutation_without_failover_handling_old_values_come_back() {
    let f = run(Fault::SentinelFailover, Handling::Off).await;
    assert_eq!(f.failed, 0, "nothing waits for the replica: {f:?}");
    assert!(
        !f.stale.is_empty() && !f.backwards.is_empty(),
        "the check must find stale and backward reads without the handling: {f:?}"
    );
}

/// `WAIT` alone keeps confirmed invalidations, but not monotonic reads: an
/// instance that read the new value after an invalidation that reported
/// itself incomplete reads the old one again from the promoted replica,
/// unless the failover is noticed and voided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutation_without_the_failover_check_reads_go_backwards() {
    let f = run(Fault::SentinelFailover, Handling::WaitOnly).await;
    assert!(f.stale.is_empty(), "WAIT keeps what was confirmed: {f:?}");
    assert!(
        !f.backwards.is_empty(),
        "without the failover check, reads go back to values whose removal was lost: {f:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_takeover_serves_no_value_older_than_a_confirmed_invalidation() {
    assert_held(&run(Fault::ClusterTakeover, Handling::Full).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_kill_and_forced_failover_serve_no_value_older_than_a_confirmed_invalidation() {
    assert_held(&run(Fault::ClusterKillAndForce, Handling::Full).await);
}

/// On a cluster as on Sentinel, the check must catch a tier without the
/// failover handling: old values come back from the promoted replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutation_cluster_without_failover_handling_old_values_come_back() {
    let f = run(Fault::ClusterTakeover, Handling::Off).await;
    assert_eq!(f.failed, 0, "nothing waits for the replicas: {f:?}");
    assert!(
        !f.stale.is_empty(),
        "the check must find stale reads on a cluster without the handling: {f:?}"
    );
}

/// On a cluster, `WAIT` alone keeps what was confirmed but not monotonic
/// reads: a client that follows `MOVED` to a promoted replica reads values
/// whose removal was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutation_cluster_without_the_failover_check_reads_go_backwards() {
    let f = run(Fault::ClusterTakeover, Handling::WaitOnly).await;
    assert!(f.stale.is_empty(), "WAIT keeps what was confirmed: {f:?}");
    assert!(
        !f.backwards.is_empty(),
        "without the failover check, reads go back to values whose removal was lost: {f:?}"
    );
}

/// A client that follows `MOVED` to the promoted replica meets no connection
/// error: with the tier deaf to connection events and its periodic look a
/// minute away, the routing check of each answer alone notices the
/// failover before an old value is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_takeover_is_noticed_by_the_routing_check_alone() {
    assert_held(&run(Fault::ClusterTakeover, Handling::FullWithoutEvents).await);
}
