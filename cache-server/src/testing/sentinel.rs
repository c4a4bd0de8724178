//! A primary with a replica behind three Sentinels, on loopback, with a
//! replication link the test can stall (feature `testing`).
//!
//! Everyone reaches the primary through a [`LoopbackProxy`]: the Sentinels
//! monitor it there, the replica replicates from it there, and clients get
//! its address from the Sentinels. The proxy recognises the replica's
//! replication connection (it sends `REPLCONF`) and holds what flows on
//! that one connection while [`SentinelGroup::stall_replication`] is on,
//! so the primary goes on answering clients while the replica falls behind,
//! as when a replica's link stalls in production.
//!
//! ```no_run
//! # async fn demo() {
//! let group = cache_server::testing::sentinel::SentinelGroup::start().await;
//! println!("{}", group.url()); // redis-sentinel://127.0.0.1:<s1>?sentinelServiceName=...
//! group.stall_replication(true);
//! group.force_failover();
//! group.wait_for_primary(group.replica().port());
//! # }
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{binary, cli_on as cli, free_port, temp_dir, LoopbackProxy, RedisServer, INSTALL_HINT};

/// The Sentinels' name for the primary.
pub const SERVICE: &str = "lcmaster";

/// One `redis-server --sentinel` process, killed on drop.
#[derive(Debug)]
struct Sentinel {
    port: u16,
    child: Child,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A primary, a replica and three Sentinels (quorum 2, primary down after
/// 1 s, `INFO` and hello periods of 500 ms), all on loopback. Everything is killed on drop.
#[derive(Debug)]
pub struct SentinelGroup {
    primary: RedisServer,
    replica: RedisServer,
    proxy: LoopbackProxy,
    stall: Arc<AtomicBool>,
    sentinels: Vec<Sentinel>,
    dir: PathBuf,
}

/// A numeric `field:value` line of what `command` answers (`INFO
/// replication`, `CLUSTER INFO`).
pub(super) fn info_field(node: &RedisServer, command: &[&str], field: &str) -> Option<u64> {
    let info = node.cli(command)?;
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until `replica` has applied everything `primary` had written when
/// this was called (blocking; up to 10 s): a stall that starts after this
/// holds back only what comes later.
pub(super) fn wait_caught_up(primary: &RedisServer, replica: &RedisServer) {
    let replication = ["INFO", "replication"];
    let Some(written) = info_field(primary, &replication, "master_repl_offset") else {
        return;
    };
    wait(
        "the replica catches up before the stall",
        Duration::from_secs(10),
        || info_field(replica, &replication, "slave_repl_offset").is_some_and(|o| o >= written),
    );
}

pub(super) fn wait(what: &str, within: Duration, ok: impl FnMut() -> bool) {
    wait_explained(what, within, ok, String::new);
}

/// [`wait`], whose failure also says what `explain` finds then.
pub(super) fn wait_explained(
    what: &str,
    within: Duration,
    ok: impl FnMut() -> bool,
    explain: impl FnOnce() -> String,
) {
    if !holds_within(within, ok) {
        panic!("{what}: not within {within:?}{}", explain());
    }
}

/// Whether `ok` holds within `within`, asked every 20 ms (blocking).
pub(super) fn holds_within(within: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !ok() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// For a demotion that did not complete: the old and the new primary's
/// `INFO replication` and the last lines of both logs (the new primary's
/// says whether it gave its slots back: in a chaos run, a cluster takeover
/// was undone and the replica synced from the old primary again, which
/// the old primary's log alone could not explain).
pub(super) fn demotion_report(old: &RedisServer, new: &RedisServer) -> String {
    let tail = |node: &RedisServer| {
        let log = node.log_text();
        let mut tail: Vec<&str> = log.lines().rev().take(60).collect();
        tail.reverse();
        tail.join("\n")
    };
    format!(
        ". The old primary ({}): {}\nIts log, last lines:\n{}\nThe new primary ({}): {}\nIts log, last lines:\n{}",
        old.port(),
        old.cli(&["INFO", "replication"]).unwrap_or_default(),
        tail(old),
        new.port(),
        new.cli(&["INFO", "replication"]).unwrap_or_default(),
        tail(new),
    )
}

/// Copies `from` to `to`, holding the bytes while `stall` is on and this
/// connection is a replication link; marks it as one when it sees `REPLCONF`
/// (when `sniff`).
pub(super) async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stall: Arc<AtomicBool>,
    replication: Arc<AtomicBool>,
    sniff: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if sniff
            && buf[..n]
                .windows(8)
                .any(|w| w.eq_ignore_ascii_case(b"REPLCONF"))
        {
            replication.store(true, Ordering::SeqCst);
        }
        while stall.load(Ordering::SeqCst) && replication.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl SentinelGroup {
    /// Starts the group and waits until the Sentinels know the replica and
    /// it is in sync. Call inside a tokio runtime (the proxy runs on it).
    pub async fn start() -> Self {
        let primary = RedisServer::start();
        let stall = Arc::new(AtomicBool::new(false));
        let s = stall.clone();
        let proxy = LoopbackProxy::start(primary.port(), move |cr, sw, sr, cw| {
            let replication = Arc::new(AtomicBool::new(false));
            (
                pipe(cr, sw, s.clone(), replication.clone(), true),
                pipe(sr, cw, s.clone(), replication, false),
            )
        })
        .await;
        let proxy_port = proxy.port().to_string();
        let replica = RedisServer::start_args(&["--replicaof", "127.0.0.1", &proxy_port]);
        let dir = temp_dir("sentinel");
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.join(format!("sentinel-{i}.conf"));
            let mut f = std::fs::File::create(&conf).unwrap();
            writeln!(
                f,
                "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n\
                 sentinel monitor {SERVICE} 127.0.0.1 {proxy_port} 2\n\
                 sentinel down-after-milliseconds {SERVICE} 1000\n\
                 sentinel failover-timeout {SERVICE} 3000\n\
                 sentinel parallel-syncs {SERVICE} 1\n",
                dir = dir.display()
            )
            .unwrap();
            let child = Command::new(binary("redis-server"))
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start a sentinel: {e}. Install: {INSTALL_HINT}")
                });
            sentinels.push(Sentinel { port, child });
        }
        let group = SentinelGroup {
            primary,
            replica,
            proxy,
            stall,
            sentinels,
            dir,
        };
        let replica_port = group.replica.port();
        tokio::task::block_in_place(|| {
            // A Sentinel looks at the replicas (`INFO`) every 10 s and says
            // hello every 2 s; it demotes an old primary that still says
            // `role:master` only after four hellos. Real periods would make
            // each failover's demotion take 10 to 20 s: `SENTINEL DEBUG`
            // (Redis 7) shortens them, as Redis's own Sentinel tests do.
            for s in &group.sentinels {
                wait("the sentinel answers", Duration::from_secs(10), || {
                    cli(s.port, &["PING"]).is_some_and(|p| p.trim() == "PONG")
                });
                let out = cli(
                    s.port,
                    &[
                        "SENTINEL",
                        "DEBUG",
                        "info-period",
                        "500",
                        "publish-period",
                        "500",
                    ],
                );
                assert!(
                    out.as_deref().is_some_and(|o| o.trim() == "OK"),
                    "SENTINEL DEBUG: {out:?}"
                );
            }
            wait("the replica is in sync", Duration::from_secs(20), || {
                group
                    .replica
                    .cli(&["INFO", "replication"])
                    .is_some_and(|i| i.contains("master_link_status:up"))
            });
            for s in &group.sentinels {
                wait(
                    "every sentinel knows the replica and the others",
                    Duration::from_secs(30),
                    || {
                        let replicas = cli(s.port, &["SENTINEL", "REPLICAS", SERVICE]);
                        let known = cli(s.port, &["SENTINEL", "SENTINELS", SERVICE]);
                        replicas.is_some_and(|r| r.contains(&replica_port.to_string()))
                            && known.is_some_and(|k| k.matches("runid").count() >= 2)
                    },
                );
            }
        });
        group
    }

    /// `redis-sentinel://127.0.0.1:<s1>?sentinelServiceName=<SERVICE>&node=127.0.0.1:<s2>&node=...`.
    pub fn url(&self) -> String {
        let mut url = format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName={SERVICE}",
            self.sentinels[0].port
        );
        for s in &self.sentinels[1..] {
            url.push_str(&format!("&node=127.0.0.1:{}", s.port));
        }
        url
    }

    /// The primary as it started (clients reach it through the proxy).
    pub fn primary(&self) -> &RedisServer {
        &self.primary
    }

    /// The replica.
    pub fn replica(&self) -> &RedisServer {
        &self.replica
    }

    /// The port the Sentinels give for the primary now (the proxy's port
    /// while the first primary serves); `None` while they disagree.
    pub fn primary_port(&self) -> Option<u16> {
        let mut seen = None;
        for s in &self.sentinels {
            let out = cli(s.port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE])?;
            let port: u16 = out.lines().nth(1)?.trim().parse().ok()?;
            if seen.is_some_and(|p| p != port) {
                return None;
            }
            seen = Some(port);
        }
        seen
    }

    /// The proxy's port: where the first primary is reached.
    pub fn proxy_port(&self) -> u16 {
        self.proxy.port()
    }

    /// Holds (or lets go of) everything on the replica's replication link:
    /// the primary goes on accepting writes the replica does not get.
    /// Before a stall it waits until the replica has what the primary
    /// wrote so far (blocking: inside tokio, call it in `block_in_place`).
    pub fn stall_replication(&self, on: bool) {
        if on && !self.stall.load(Ordering::SeqCst) {
            wait_caught_up(&self.primary, &self.replica);
        }
        self.stall.store(on, Ordering::SeqCst);
    }

    /// `SENTINEL FAILOVER`: promote the replica now, demote the primary.
    pub fn force_failover(&self) {
        let out = cli(self.sentinels[0].port, &["SENTINEL", "FAILOVER", SERVICE]);
        assert!(
            out.as_deref().is_some_and(|o| o.trim() == "OK"),
            "SENTINEL FAILOVER: {out:?}"
        );
    }

    /// Kills the primary with SIGKILL.
    pub fn kill_primary(&mut self) {
        self.primary.kill();
    }

    /// Waits until the first primary has been turned into a replica of the
    /// new one and has synced from it (after [`SentinelGroup::force_failover`]
    /// the Sentinels demote it a few seconds after the promotion; until then
    /// both answer as primaries). Blocking; up to 60 s.
    pub fn wait_for_old_primary_demoted(&self) {
        wait_explained(
            "the old primary's demotion",
            Duration::from_secs(60),
            || {
                self.primary.cli(&["INFO", "replication"]).is_some_and(|i| {
                    i.contains("role:slave") && i.contains("master_link_status:up")
                })
            },
            || demotion_report(&self.primary, &self.replica),
        );
    }

    /// Waits until every Sentinel names `port` as the primary and it says so
    /// itself (blocking; up to 30 s).
    pub fn wait_for_primary(&self, port: u16) {
        wait("the failover", Duration::from_secs(30), || {
            self.primary_port() == Some(port)
                && cli(port, &["ROLE"]).is_some_and(|r| r.starts_with("master"))
        });
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        self.sentinels.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
