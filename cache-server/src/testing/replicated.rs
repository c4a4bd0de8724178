//! A Redis Cluster of three primaries, each with a replica, on loopback,
//! with replication links the test can stall (feature `testing`).
//!
//! Each primary announces the port of a [`LoopbackProxy`] in front of it
//! (`cluster-announce-port`; its cluster bus port stays its own), so
//! clients and its replica reach it through the proxy. The proxy recognises
//! a replication connection (it sends `REPLCONF`) and holds what flows on it
//! while [`ReplicatedCluster::stall_replication`] is on: the primaries go on
//! answering clients while the replicas fall behind. Then
//! [`ReplicatedCluster::takeover`] (`CLUSTER FAILOVER TAKEOVER`) or
//! [`ReplicatedCluster::force_failover`] (`CLUSTER FAILOVER FORCE`) promotes
//! a replica without what it missed, as a failover does in production.
//!
//! ```no_run
//! # async fn demo() {
//! use cache_server::testing::replicated::ReplicatedCluster;
//!
//! let cluster = ReplicatedCluster::start().await;
//! println!("{}", cluster.url()); // redis-cluster://127.0.0.1:<proxy>?node=...
//! cluster.stall_replication(true);
//! cluster.takeover(0);
//! cluster.wait_for_promotion(0);
//! # }
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::sentinel::{
    demotion_report, holds_within, info_field, pipe, wait_caught_up, wait_explained,
};
use super::{cluster_url, free_port, temp_dir, LoopbackProxy, RedisServer};

/// The slots each of the three shards serves.
const SLOTS: [(u16, u16); 3] = [(0, 5460), (5461, 10922), (10923, 16383)];

/// Three primaries with a replica each, joined as one cluster. Everything
/// is killed on drop.
#[derive(Debug)]
pub struct ReplicatedCluster {
    primaries: Vec<RedisServer>,
    replicas: Vec<RedisServer>,
    proxies: Vec<LoopbackProxy>,
    stall: Arc<AtomicBool>,
}

fn node_id(node: &RedisServer) -> String {
    node.cli(&["CLUSTER", "MYID"])
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())
        .expect("CLUSTER MYID")
}

/// Whether `node`'s `CLUSTER NODES` lists every node of `ids` with the
/// `slave` flag (its lines: id, address, flags, ...).
fn knows_as_replicas(node: &RedisServer, ids: &[String]) -> bool {
    let Some(nodes) = node.cli(&["CLUSTER", "NODES"]) else {
        return false;
    };
    ids.iter().all(|id| {
        nodes.lines().any(|line| {
            let mut fields = line.split_whitespace();
            fields.next() == Some(id.as_str()) && fields.nth(1).is_some_and(|f| f.contains("slave"))
        })
    })
}

fn role(node: &RedisServer) -> String {
    node.cli(&["ROLE"])
        .and_then(|r| r.lines().next().map(str::to_owned))
        .unwrap_or_default()
}

impl ReplicatedCluster {
    /// Starts six nodes, assigns the slots to three of them, makes each of
    /// the other three a replica of one, and waits until every node says
    /// `cluster_state:ok` and every replica is in sync. Call inside a
    /// multi-threaded tokio runtime (the proxies run on it).
    pub async fn start() -> Self {
        let dir = temp_dir("replicated");
        let stall = Arc::new(AtomicBool::new(false));
        let mut primaries = Vec::new();
        let mut proxies = Vec::new();
        for _ in 0..SLOTS.len() {
            let port = free_port();
            let s = stall.clone();
            let proxy = LoopbackProxy::start(port, move |cr, sw, sr, cw| {
                let replication = Arc::new(AtomicBool::new(false));
                (
                    pipe(cr, sw, s.clone(), replication.clone(), true),
                    pipe(sr, cw, s.clone(), replication, false),
                )
            })
            .await;
            let extra = [
                "--cluster-announce-port".to_owned(),
                proxy.port().to_string(),
                "--cluster-announce-bus-port".to_owned(),
                (port + 10_000).to_string(),
            ]
            .into_iter()
            .chain(NODE_FLAGS.map(str::to_owned))
            .collect::<Vec<String>>();
            let dir = dir.clone();
            let node =
                tokio::task::block_in_place(|| RedisServer::start_cluster_node(port, dir, &extra));
            primaries.push(node);
            proxies.push(proxy);
        }
        let replicas: Vec<RedisServer> = tokio::task::block_in_place(|| {
            (0..SLOTS.len())
                .map(|_| {
                    let extra = NODE_FLAGS.map(str::to_owned);
                    RedisServer::start_cluster_node(free_port(), dir.clone(), &extra)
                })
                .collect()
        });
        let cluster = ReplicatedCluster {
            primaries,
            replicas,
            proxies,
            stall,
        };
        tokio::task::block_in_place(|| cluster.join());
        cluster
    }

    fn join(&self) {
        // Every node gets its own config epoch before it meets the others
        // (as `redis-cli --cluster create` does). Left at 0, the nodes
        // resolve their collisions one bump at a time, but only between
        // primaries: a replica made one before its collision with its
        // primary was resolved kept its primary's epoch. In CI that undid a
        // takeover. `TAKEOVER` bumps the epoch only of a node whose epoch
        // is not already the highest; this replica's was, so it claimed the
        // slots with the same epoch as its primary; the primary, whose node
        // ID was the smaller, resolved the collision by taking a new,
        // higher epoch, and with it the slots back. (Reproduced on its own:
        // a primary and its replica set to the same highest epoch, the
        // replica made one as soon as it knew its primary, then `TAKEOVER`:
        // undone in two of four runs; with distinct epochs, in none of
        // seven.)
        for (epoch, node) in self.primaries.iter().chain(&self.replicas).enumerate() {
            let epoch = (epoch + 1).to_string();
            let out = node.cli(&["CLUSTER", "SET-CONFIG-EPOCH", &epoch]);
            assert!(
                out.as_deref().is_some_and(|o| o.trim() == "OK"),
                "CLUSTER SET-CONFIG-EPOCH: {out:?}"
            );
        }
        for (node, (lo, hi)) in self.primaries.iter().zip(SLOTS) {
            let out = node.cli(&["CLUSTER", "ADDSLOTSRANGE", &lo.to_string(), &hi.to_string()]);
            assert!(
                out.as_deref().is_some_and(|o| o.trim() == "OK"),
                "ADDSLOTSRANGE: {out:?}"
            );
        }
        let first = &self.primaries[0];
        for node in self.primaries[1..].iter().chain(&self.replicas) {
            let (port, bus) = (node.port().to_string(), (node.port() + 10_000).to_string());
            let out = first.cli(&["CLUSTER", "MEET", "127.0.0.1", &port, &bus]);
            assert!(
                out.as_deref().is_some_and(|o| o.trim() == "OK"),
                "CLUSTER MEET: {out:?}"
            );
        }
        let all = || self.primaries.iter().chain(&self.replicas);
        wait_explained(
            "every node knows the others",
            Duration::from_secs(20),
            || {
                all().all(|n| {
                    n.cli(&["CLUSTER", "NODES"]).is_some_and(|out| {
                        out.lines().count() == 6
                            && !out.contains("handshake")
                            && !out.contains("noaddr")
                    })
                })
            },
            || self.views(),
        );
        for (replica, primary) in self.replicas.iter().zip(&self.primaries) {
            let id = node_id(primary);
            wait_explained(
                "CLUSTER REPLICATE",
                Duration::from_secs(20),
                || {
                    replica
                        .cli(&["CLUSTER", "REPLICATE", &id])
                        .is_some_and(|o| o.trim() == "OK")
                },
                || self.views(),
            );
        }
        // Every node must also know the replicas as replicas: a primary
        // that still took one for a primary (it learns the role from the
        // replica's next ping) refused it its vote in a forced failover
        // ("it is a master node"), and the failover timed out.
        let replica_ids: Vec<String> = self.replicas.iter().map(node_id).collect();
        wait_explained(
            "the cluster is ok and in sync, and every node knows the replicas",
            Duration::from_secs(30),
            || {
                all().all(|n| {
                    n.cli(&["CLUSTER", "INFO"])
                        .is_some_and(|i| i.contains("cluster_state:ok"))
                        && knows_as_replicas(n, &replica_ids)
                }) && self.replicas.iter().all(|r| {
                    r.cli(&["INFO", "replication"])
                        .is_some_and(|i| i.contains("master_link_status:up"))
                })
            },
            || self.views(),
        );
        // Each node starts with its own epoch as its current epoch. A
        // replica that asks for votes before it has heard the newest epoch
        // is refused, and retries only after twice the node timeout (10 s
        // and more): wait until every node has the same current epoch (and,
        // as the epochs set above promise, the primaries' config epochs are
        // distinct).
        wait_explained(
            "the nodes agree on the epochs",
            Duration::from_secs(30),
            || {
                let current: Vec<_> = all()
                    .map(|n| info_field(n, &["CLUSTER", "INFO"], "cluster_current_epoch"))
                    .collect();
                let mut mine: Vec<_> = self
                    .primaries
                    .iter()
                    .map(|n| info_field(n, &["CLUSTER", "INFO"], "cluster_my_epoch"))
                    .collect();
                mine.sort_unstable();
                mine.dedup();
                current.iter().all(|e| e.is_some() && *e == current[0])
                    && mine.len() == self.primaries.len()
            },
            || self.views(),
        );
    }

    /// `redis-cluster://127.0.0.1:<proxy 0>?node=127.0.0.1:<proxy 1>&node=...`:
    /// the primaries as clients see them.
    pub fn url(&self) -> String {
        cluster_url(self.proxies.iter().map(LoopbackProxy::port))
    }

    /// The first primaries (shard `i` is `primaries()[i]`, reached through
    /// its proxy).
    pub fn primaries(&self) -> &[RedisServer] {
        &self.primaries
    }

    /// The replicas (`replicas()[i]` replicates shard `i`).
    pub fn replicas(&self) -> &[RedisServer] {
        &self.replicas
    }

    /// Holds (or lets go of) everything on every replication link: the
    /// primaries go on accepting writes their replicas do not get. Before a
    /// stall it waits until each replica has what its primary wrote so far
    /// (blocking: inside tokio, call it in `block_in_place`).
    pub fn stall_replication(&self, on: bool) {
        if on && !self.stall.load(Ordering::SeqCst) {
            for (primary, replica) in self.primaries.iter().zip(&self.replicas) {
                wait_caught_up(primary, replica);
            }
        }
        self.stall.store(on, Ordering::SeqCst);
    }

    /// `CLUSTER FAILOVER TAKEOVER` on shard `i`'s replica: it takes the
    /// slots at once, with no agreement from anyone.
    pub fn takeover(&self, i: usize) {
        self.failover(i, "TAKEOVER");
    }

    /// `CLUSTER FAILOVER FORCE` on shard `i`'s replica: it is elected
    /// without its primary's consent (the primary may be dead). Blocks until
    /// the replica says it is a primary. An election that does not win
    /// within the manual failover's 5 s is over, and with automatic
    /// failovers off nothing tries again: so does this, up to three times.
    pub fn force_failover(&self, i: usize) {
        for attempt in 1..=3 {
            self.failover(i, "FORCE");
            if holds_within(Duration::from_secs(8), || {
                role(&self.replicas[i]) == "master"
            }) {
                return;
            }
            eprintln!("shard {i}: forced failover attempt {attempt} did not elect the replica");
        }
        panic!(
            "shard {i}: three forced failovers did not elect the replica{}{}",
            self.views(),
            self.election_log()
        );
    }

    fn failover(&self, i: usize, how: &str) {
        let out = self.replicas[i].cli(&["CLUSTER", "FAILOVER", how]);
        assert!(
            out.as_deref().is_some_and(|o| o.trim() == "OK"),
            "CLUSTER FAILOVER {how}: {out:?}"
        );
    }

    /// Kills shard `i`'s first primary with SIGKILL.
    pub fn kill_primary(&mut self, i: usize) {
        self.primaries[i].kill();
    }

    /// Waits until shard `i`'s replica is a primary and every live node
    /// says `cluster_state:ok` (blocking; up to 30 s).
    pub fn wait_for_promotion(&self, i: usize) {
        wait_explained(
            &format!("shard {i}'s promotion"),
            Duration::from_secs(30),
            || {
                role(&self.replicas[i]) == "master"
                    && self.live().all(|n| {
                        n.cli(&["CLUSTER", "INFO"])
                            .is_some_and(|info| info.contains("cluster_state:ok"))
                    })
            },
            || format!("{}{}", self.views(), self.election_log()),
        );
    }

    /// Every live node's `CLUSTER INFO` and `CLUSTER NODES`, for a wait that
    /// timed out.
    fn views(&self) -> String {
        let views: Vec<String> = self
            .live()
            .map(|n| {
                format!(
                    "node {}: {}\n{}",
                    n.port(),
                    n.cli(&["CLUSTER", "INFO"]).unwrap_or_default(),
                    n.cli(&["CLUSTER", "NODES"]).unwrap_or_default()
                )
            })
            .collect();
        format!(". The nodes' views:\n{}", views.join("\n"))
    }

    /// What every live node logged about failovers and votes.
    fn election_log(&self) -> String {
        let lines: Vec<String> = self
            .live()
            .flat_map(|n| {
                let log = n.log_text();
                let port = n.port();
                log.lines()
                    .filter(|l| {
                        let l = l.to_ascii_lowercase();
                        l.contains("failover") || l.contains("vote") || l.contains("election")
                    })
                    .map(|l| format!("node {port}: {l}"))
                    .collect::<Vec<_>>()
            })
            .collect();
        format!(
            "\nWhat the nodes logged about failovers:\n{}",
            lines.join("\n")
        )
    }

    fn live(&self) -> impl Iterator<Item = &RedisServer> {
        self.primaries
            .iter()
            .chain(&self.replicas)
            .filter(|n| n.is_running())
    }

    /// Waits until shard `i`'s first primary has become a replica of the
    /// new one (blocking; up to 60 s): from then on it sends clients to the
    /// new primary (`MOVED`) instead of answering them. Whether its sync
    /// from the new primary has completed is not waited for: it answers no
    /// client either way. (Waiting for `master_link_status:up` too timed out
    /// now and then in CI, twice in five runs, with nothing in the message
    /// to say why; if this wait times out, the panic shows both nodes'
    /// replication state, the old primary's log and the nodes' views.)
    pub fn wait_for_old_primary_demoted(&self, i: usize) {
        let old = &self.primaries[i];
        let new_port = format!("master_port:{}", self.replicas[i].port());
        wait_explained(
            &format!("shard {i}'s old primary's demotion"),
            Duration::from_secs(60),
            || {
                old.cli(&["INFO", "replication"]).is_some_and(|info| {
                    let mut lines = info.lines().map(str::trim);
                    info.contains("role:slave") && lines.any(|l| l == new_port)
                })
            },
            || {
                format!(
                    "{}{}",
                    demotion_report(old, &self.replicas[i]),
                    self.views()
                )
            },
        );
    }
}

/// Every node's flags beyond the defaults:
/// - No automatic failovers: every failover here is the test's own
///   (`TAKEOVER`, `FORCE`; manual failovers still run with this). Without
///   it, a loaded machine let a demoted primary win an election against the
///   replica that had just taken its slots (its node timeout ran out on a
///   starved peer), and the test's wait for that primary's demotion never
///   ended.
/// - Notice-level logs: each step of a sync, and each vote, for a demotion
///   or a promotion that does not complete (the default here is warnings
///   only).
const NODE_FLAGS: [&str; 4] = [
    "--cluster-replica-no-failover",
    "yes",
    "--loglevel",
    "notice",
];

impl Drop for ReplicatedCluster {
    fn drop(&mut self) {
        let dir = self.primaries.first().map(|n| n.dir.clone());
        self.primaries.clear();
        self.replicas.clear();
        self.proxies.clear();
        if let Some(dir) = dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
