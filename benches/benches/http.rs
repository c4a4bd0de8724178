//! The example server (`profile_server::serve`, embedded S3, in-process tiers)
//! under a fixed concurrency from a load generator in this bench: 16 keep-alive
//! HTTP/1.1 connections, each sending its next request when the last answer
//! is read. Requests per second, p50 and p99 latency, for:
//!
//! - `GET /healthz`, the server's trivial route (the baseline);
//! - `GET /api/users/{id}/avatar`, warm (ids 1–50 in turn);
//! - `GET /api/avatars?ids=1,…,50`, warm.
//!
//! Goal (issue 21; 0.8× in issue 12): the warm avatar route, with the
//! server's monitor on as always, serves ≥ 0.9× the health route's requests
//! per second.
//!
//! Warm vs every request signed afresh: a second example server started with
//! `url_cache: false` (`URL_CACHE=off`) has no URL tiers, so every avatar
//! request lists the user's versions in S3 and signs; its avatar route is
//! compared with the warm server's.
//!
//! The load generator shares the machine's cores with the server, as it does
//! with any loopback benchmark; every side pays that alike. Sides run in turn
//! in each round (2 s each, 0.5 s in a quick run); medians of the per-round
//! figures and ratios.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::results::{quantile, quick, rounds, Goal, Interleaved, SuiteResults};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The example server's allocator, as its binary runs with it (the load
/// generator in this process uses it too).
#[global_allocator]
static ALLOCATOR: profile_server::Allocator = profile_server::Allocator;

/// Open connections of the load generator.
const CONNECTIONS: usize = 16;
/// Users the example server seeds, and the ids the avatar routes read.
const USERS: u64 = 50;

/// One side's figures in one round.
struct Load {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Sends `GET path` on `conn` and reads the whole answer; panics unless 200.
async fn request(conn: &mut TcpStream, buf: &mut Vec<u8>, path: &str) {
    let head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    conn.write_all(head.as_bytes()).await.expect("write");
    buf.clear();
    let header_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 8_192];
        let n = conn.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the server closed the connection on {path}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 200"),
        "GET {path}: {}",
        head.lines().next().unwrap_or_default()
    );
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: no content-length"));
    while buf.len() < header_end + length {
        let mut chunk = [0u8; 8_192];
        let n = conn.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "the server closed the connection in a body");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `CONNECTIONS` connections to `addr` requesting `paths` in turn for `span`.
async fn load(addr: SocketAddr, paths: Arc<Vec<String>>, span: Duration) -> Load {
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let paths = paths.clone();
            tokio::spawn(async move {
                let mut conn = TcpStream::connect(addr).await.expect("connect");
                conn.set_nodelay(true).expect("nodelay");
                let mut buf = Vec::with_capacity(16_384);
                let mut latencies = Vec::new();
                let mut i = c;
                while start.elapsed() < span {
                    let sent = Instant::now();
                    request(&mut conn, &mut buf, &paths[i % paths.len()]).await;
                    latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                    i += 1;
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("connection task"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Load {
        per_second: all.len() as f64 / elapsed,
        p50_ms: quantile(&all, 0.5),
        p99_ms: quantile(&all, 0.99),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let span = if quick() {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(2)
    };
    let (server, fresh) = rt.block_on(async {
        let start = |url_cache| {
            profile_server::serve(profile_server::Config {
                users: USERS,
                url_cache,
                ..profile_server::Config::embedded()
            })
        };
        (
            start(true).await.expect("profile-server"),
            start(false)
                .await
                .expect("profile-server without a URL cache"),
        )
    });
    let ids: Vec<String> = (1..=USERS).map(|i| i.to_string()).collect();
    let paths = |f: &dyn Fn(&str) -> String| Arc::new(ids.iter().map(|i| f(i)).collect());
    let batch = format!("/api/avatars?ids={}", ids.join(","));
    // (what, address, paths)
    let sides: Vec<(String, SocketAddr, Arc<Vec<String>>)> = vec![
        (
            "profile-server `GET /healthz`".into(),
            server.addr(),
            Arc::new(vec!["/healthz".to_owned()]),
        ),
        (
            "profile-server avatar `GET`, warm".into(),
            server.addr(),
            paths(&|i| format!("/api/users/{i}/avatar")),
        ),
        (
            "profile-server batch of 50 `GET /api/avatars`, warm".into(),
            server.addr(),
            Arc::new(vec![batch]),
        ),
        (
            "profile-server avatar `GET`, no URL cache (`URL_CACHE=off`: listed and signed afresh every request)".into(),
            fresh.addr(),
            paths(&|i| format!("/api/users/{i}/avatar")),
        ),
    ];
    // Warm every route once (and check it answers 200) before measuring.
    rt.block_on(async {
        for (_, addr, paths) in &sides {
            load(*addr, paths.clone(), Duration::from_millis(100)).await;
        }
    });
    let rounds = rounds(11);
    let mut rps = Interleaved {
        values: vec![Vec::new(); sides.len()],
    };
    let (mut p50, mut p99) = (rps.clone(), rps.clone());
    for _ in 0..rounds {
        for (i, (_, addr, paths)) in sides.iter().enumerate() {
            let l = rt.block_on(load(*addr, paths.clone(), span));
            rps.values[i].push(l.per_second);
            p50.values[i].push(l.p50_ms);
            p99.values[i].push(l.p99_ms);
        }
    }
    let mut results = SuiteResults::new(
        "http",
        format!(
            "{CONNECTIONS} keep-alive connections, {} s per side per round, {rounds} rounds in turn; medians of per-round figures; generator and server share the machine",
            span.as_secs_f64()
        ),
    );
    let name = |i: usize| sides[i].0.as_str();
    for (side, base) in [(1, 0), (2, 0), (3, 1)] {
        let row = rps.row(side, name(side), base, name(base), "req/s");
        results.push(if side == 1 {
            row.goal(Goal::AtLeast(0.9))
        } else {
            row
        });
        for (q, m) in [("p50", &p50), ("p99", &p99)] {
            results.push(m.row(
                side,
                &format!("{}: {q}", name(side)),
                base,
                &format!("{}: {q}", name(base)),
                "ms",
            ));
        }
    }
    results.finish();
    rt.block_on(async {
        server.shutdown().await;
        fresh.shutdown().await;
    });
}
