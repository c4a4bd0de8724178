//! Throwaway Redis servers for tests and benches (feature `testing`).
//!
//! [`RedisServer`] starts `redis-server` on a free 127.0.0.1 port with no
//! persistence, in its own temporary directory, and kills it when dropped.
//! [`RedisCluster`] starts three of them with `--cluster-enabled yes` and joins
//! them with `redis-cli --cluster create`. Nothing here touches a server the
//! harness did not start.
//!
//! If `redis-server` or `redis-cli` is missing these functions panic with the
//! command that installs them: tests fail, they never skip.
//!
//! ```no_run
//! let server = cache_server::testing::RedisServer::start();
//! println!("{}", server.url()); // redis://127.0.0.1:<port>
//! ```

#![allow(clippy::unwrap_used)]
#![allow(clippy::missing_panics_doc)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub mod replicated;
pub mod sentinel;
pub mod tls;

/// What to run when a binary is missing.
pub const INSTALL_HINT: &str = "sudo apt-get install -y redis-server redis-tools";

pub(crate) fn binary(name: &str) -> String {
    let ok = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`{name}` is not installed or not on PATH; the Redis tests need a real server. \
         Install it with: {INSTALL_HINT}"
    );
    name.to_owned()
}

/// `redis-cli -h 127.0.0.1 -p <port> args...`; its stdout, or `None` on
/// failure.
pub(crate) fn cli_on(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new(binary("redis-cli"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A loopback port for a server a test starts, free together with its
/// cluster bus port (port + 10000).
///
/// Picked below Linux's ephemeral range (32768-60999): an outgoing
/// connection of another test can take an ephemeral port between the pick
/// and the server's own bind (a redis-server in CI once failed to start that
/// way). Never the same port twice in one process; each process starts at
/// its own offset.
///
/// ```no_run
/// let port = cache_server::testing::free_port();
/// assert!(port < 32_768 - 10_000);
/// ```
pub fn free_port() -> u16 {
    // Ports 12000-21999; their bus ports 22000-31999.
    const LOW: u64 = 12_000;
    const SPAN: u64 = 10_000;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let offset = u64::from(std::process::id()).wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOW + (offset + n) % SPAN).unwrap();
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return port;
        }
    }
    panic!("no free loopback port pair found in 12000-31999");
}

pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cache-server-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `redis-server` process on a loopback port, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    cluster: bool,
    /// More `redis-server` arguments (`--replicaof ...`).
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a standalone server on a free port and waits until it answers.
    pub fn start() -> Self {
        Self::start_with(free_port(), false, temp_dir("redis"))
    }

    /// Starts a standalone server with more arguments (for example
    /// `["--replicaof", "127.0.0.1", "6380"]`).
    pub fn start_args(extra: &[&str]) -> Self {
        let mut server = RedisServer {
            port: free_port(),
            dir: temp_dir("redis"),
            cluster: false,
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
        };
        server.spawn();
        server
    }

    /// Starts a cluster-enabled node with more arguments, in `dir`.
    pub(crate) fn start_cluster_node(port: u16, dir: PathBuf, extra: &[String]) -> Self {
        let mut server = RedisServer {
            port,
            dir,
            cluster: true,
            extra: extra.to_vec(),
            child: None,
        };
        server.spawn();
        server
    }

    fn start_with(port: u16, cluster: bool, dir: PathBuf) -> Self {
        let mut server = RedisServer {
            port,
            dir,
            cluster,
            extra: Vec::new(),
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let bin = binary("redis-server");
        let mut cmd = Command::new(bin);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "yes", "--loglevel", "warning"])
            // Redis 7 waits 5 s before a diskless full sync, for more
            // replicas to join it; here each replica (and each demoted
            // primary) syncs alone, so it starts at once.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(&self.dir)
            // Servers share a directory: a replica that loads a full sync
            // from disk renames it to this file, then reads it back, so two
            // syncing at once must not name the same file.
            .arg("--dbfilename")
            .arg(format!("dump-{}.rdb", self.port))
            .arg("--logfile")
            .arg(self.log());
        cmd.args(&self.extra);
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
                .arg("--cluster-config-file")
                .arg(format!("nodes-{}.conf", self.port));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}. Install: {INSTALL_HINT}"));
        self.child = Some(child);
        self.wait_ready();
    }

    /// Its log file (in its directory, which several servers may share).
    fn log(&self) -> PathBuf {
        self.dir.join(format!("redis-{}.log", self.port))
    }

    /// What its log holds (empty if it cannot be read).
    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Waits until it answers PING; panics with its log if it exits first or
    /// does not answer within 10 s.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.cli(&["PING"]).is_some_and(|out| out.trim() == "PONG") {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "redis-server on port {} exited ({status}) before it answered; its log:\n{}",
                    self.port,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not answer within 10 s; its log:\n{}",
            self.port,
            self.log_text()
        );
    }

    /// Runs `redis-cli -p <port> args...`; its stdout, or `None` on failure.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        cli_on(self.port, args)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL) and waits until the port is closed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the server again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three cluster-enabled `redis-server`s on loopback, joined as a 3-master
/// cluster with `redis-cli --cluster create`. Killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster and waits until every node says
    /// `cluster_state:ok`.
    pub fn start() -> Self {
        let dir = temp_dir("cluster");
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_with(free_port(), true, dir.clone()))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new(binary("redis-cli"))
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = nodes.iter().all(|n| {
                n.cli(&["CLUSTER", "INFO"])
                    .is_some_and(|i| i.contains("cluster_state:ok"))
            });
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach cluster_state:ok within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        RedisCluster { nodes }
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The index in [`RedisCluster::nodes`] of the primary that owns `key`'s
    /// hash slot (from `CLUSTER KEYSLOT` and `CLUSTER NODES`).
    pub fn owner_of(&self, key: &str) -> usize {
        let node = &self.nodes[0];
        let slot: u16 = node
            .cli(&["CLUSTER", "KEYSLOT", key])
            .and_then(|s| s.trim().parse().ok())
            .expect("CLUSTER KEYSLOT");
        let nodes = node.cli(&["CLUSTER", "NODES"]).expect("CLUSTER NODES");
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") {
                continue;
            }
            let owns = fields[8..].iter().any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
            });
            let port = fields[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok());
            if owns {
                if let Some(i) = self.nodes.iter().position(|n| Some(n.port()) == port) {
                    return i;
                }
            }
        }
        panic!("no node owns slot {slot} of {key:?}")
    }

    /// `redis-cluster://127.0.0.1:<p1>?node=127.0.0.1:<p2>&node=127.0.0.1:<p3>`.
    pub fn url(&self) -> String {
        cluster_url(self.nodes.iter().map(RedisServer::port))
    }
}

/// `redis-cluster://127.0.0.1:<first>?node=127.0.0.1:<next>&node=...`.
pub(crate) fn cluster_url(ports: impl IntoIterator<Item = u16>) -> String {
    let mut url = String::from("redis-cluster://");
    for (i, port) in ports.into_iter().enumerate() {
        match i {
            0 => {}
            1 => url.push_str("?node="),
            _ => url.push_str("&node="),
        }
        url.push_str(&format!("127.0.0.1:{port}"));
    }
    url
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let dir = self.nodes.first().map(|n| n.dir.clone());
        self.nodes.clear();
        if let Some(dir) = dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A loopback TCP proxy to `127.0.0.1:<upstream>`: each connection it accepts
/// is joined to a fresh connection upstream, and what flows each way is up to
/// the two pipes the caller makes for it (delay, hold, freeze, drop…). Every
/// task it starts is aborted when the proxy is dropped.
///
/// ```no_run
/// # async fn demo() {
/// use cache_server::testing::{LoopbackProxy, RedisServer};
///
/// let server = RedisServer::start();
/// // A plain pass-through in both directions.
/// let proxy = LoopbackProxy::start(server.port(), |mut cr, mut sw, mut sr, mut cw| {
///     (
///         async move { let _ = tokio::io::copy(&mut cr, &mut sw).await; },
///         async move { let _ = tokio::io::copy(&mut sr, &mut cw).await; },
///     )
/// })
/// .await;
/// println!("{}", proxy.url());
/// # }
/// ```
#[derive(Debug)]
pub struct LoopbackProxy {
    port: u16,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl LoopbackProxy {
    /// Listens on a free loopback port. For each connection, `pipes(client
    /// read, upstream write, upstream read, client write)` returns the
    /// client→upstream and upstream→client futures, which the proxy spawns.
    pub async fn start<F, Up, Down>(upstream: u16, mut pipes: F) -> Self
    where
        F: FnMut(
                tokio::net::tcp::OwnedReadHalf,
                tokio::net::tcp::OwnedWriteHalf,
                tokio::net::tcp::OwnedReadHalf,
                tokio::net::tcp::OwnedWriteHalf,
            ) -> (Up, Down)
            + Send
            + 'static,
        Up: std::future::Future<Output = ()> + Send + 'static,
        Down: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tasks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let t = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let (up, down) = pipes(cr, sw, sr, cw);
                let (up, down) = (tokio::spawn(up), tokio::spawn(down));
                t.lock()
                    .unwrap()
                    .extend([up.abort_handle(), down.abort_handle()]);
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        LoopbackProxy { port, tasks }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for LoopbackProxy {
    fn drop(&mut self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
    }
}
