//! A fleet as it is deployed: three `profile-server` processes (the real
//! binary) sharing a real redis-server and an S3-compatible server (s3s-fs,
//! SigV4 on), driven over HTTP only.
//!
//! - **Rolling restart under uploads and reads**: each instance in turn is
//!   taken out of rotation, stopped (SIGTERM, and one `kill -9`), started
//!   again and put back once `/readyz` says so, while workers keep uploading
//!   and reading through the instances in rotation. After every upload
//!   returns, every instance in rotation serves the new picture: 0 stale
//!   reads, 0 5xx, 0 failed requests. The upload latency during the restarts
//!   is printed beside the steady state (measured, not asserted).
//! - **Load**: 1,000 requests in flight (single and batch GETs, uploads)
//!   across the three: 0 5xx.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_server::testing::{free_port, RedisServer};
use futures_util::StreamExt;
use presign::embedded::{EmbeddedS3, ACCESS_KEY_ID};
use profile_server::avatar::generate_png;
use reqwest::StatusCode;
use serde_json::Value;

const USERS: u64 = 60;
const SECRET: &str = "fleet-test-secret-key";

/// One `profile-server` process on a fixed loopback port.
struct Instance {
    port: u16,
    /// The process now serving on `port` (replaced by a rolling restart).
    child: Mutex<Option<Child>>,
    /// In rotation: the workers send requests to it.
    live: AtomicBool,
}

impl Instance {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(port: u16, redis: &str, s3: &str) -> Child {
        Command::new(env!("CARGO_BIN_EXE_profile-server"))
            .env("PORT", port.to_string())
            .env("REDIS_URL", redis)
            .env("USERS", USERS.to_string())
            .env("S3_ENDPOINT", s3)
            .env("S3_BUCKET", "avatars")
            .env("S3_ACCESS_KEY_ID", ACCESS_KEY_ID)
            .env("S3_SECRET_ACCESS_KEY", SECRET)
            .env("S3_REGION", "us-east-1")
            .env("REQUEST_TIMEOUT_MS", "30000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn stop(&self, kill: bool) {
        let Some(mut child) = self.child.lock().unwrap().take() else {
            return;
        };
        if kill {
            let _ = child.kill(); // SIGKILL
        } else {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let _ = child.wait();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop(true);
    }
}

async fn wait_ready(http: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await {
            if r.status() == StatusCode::OK {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{url} not ready within 120 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Default)]
struct Tally {
    uploads: AtomicU64,
    reads: AtomicU64,
    server_errors: AtomicU64,
    failed: AtomicU64,
    stale: AtomicU64,
    first_problem: Mutex<Option<String>>,
}

impl Tally {
    fn problem(&self, what: String) {
        let mut first = self.first_problem.lock().unwrap();
        if first.is_none() {
            *first = Some(what);
        }
    }
}

/// The instances in rotation now.
fn live(fleet: &[Arc<Instance>]) -> Vec<Arc<Instance>> {
    fleet
        .iter()
        .filter(|i| i.live.load(Ordering::SeqCst))
        .cloned()
        .collect()
}

/// GET a user's avatar: its etag, or `None` (counted) on an error.
async fn etag(http: &reqwest::Client, inst: &Instance, user: u64, tally: &Tally) -> Option<String> {
    let r = match http
        .get(format!("{}/api/users/{user}/avatar", inst.url()))
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tally.failed.fetch_add(1, Ordering::Relaxed);
            tally.problem(format!("GET on {}: {e}", inst.port));
            return None;
        }
    };
    tally.reads.fetch_add(1, Ordering::Relaxed);
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if status.is_server_error() {
        tally.server_errors.fetch_add(1, Ordering::Relaxed);
        tally.problem(format!("GET on {}: {status} {body}", inst.port));
        return None;
    }
    body["etag"].as_str().map(str::to_owned)
}

/// One worker: uploads to its own users through the instances in rotation,
/// and after each upload reads it back on every instance in rotation. Returns
/// the upload latencies (ms) with the phase each fell in.
async fn worker(
    http: reqwest::Client,
    fleet: Vec<Arc<Instance>>,
    users: Vec<u64>,
    stop: Arc<AtomicBool>,
    restarting: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<(bool, f64, f64)> {
    let mut latencies = Vec::new();
    let mut turn = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let user = users[turn % users.len()];
        turn += 1;
        let targets = live(&fleet);
        if targets.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let via = &targets[turn % targets.len()];
        let Some(before) = etag(&http, via, user, &tally).await else {
            continue;
        };
        let body = generate_png(user * 1000 + turn as u64, 32);
        let started = Instant::now();
        let during_restart = restarting.load(Ordering::SeqCst);
        let put = http
            .put(format!("{}/api/users/{user}/avatar", via.url()))
            .header("content-type", "image/png")
            .body(body)
            .send()
            .await;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        match put {
            Ok(r) if r.status() == StatusCode::NO_CONTENT => {
                tally.uploads.fetch_add(1, Ordering::Relaxed);
                latencies.push((during_restart, ms, since_start(started)));
            }
            Ok(r) => {
                let status = r.status();
                if status.is_server_error() {
                    tally.server_errors.fetch_add(1, Ordering::Relaxed);
                } else {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                }
                let text = r.text().await.unwrap_or_default();
                tally.problem(format!("PUT on {}: {status} {text}", via.port));
                continue;
            }
            Err(e) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                tally.problem(format!("PUT on {}: {e}", via.port));
                continue;
            }
        }
        // The upload returned: no instance in rotation serves the old one.
        for inst in live(&fleet) {
            if let Some(now) = etag(&http, &inst, user, &tally).await {
                if now == before {
                    tally.stale.fetch_add(1, Ordering::Relaxed);
                    tally.problem(format!(
                        "instance {} served user {user}'s old picture after the upload returned",
                        inst.port
                    ));
                }
            }
        }
    }
    latencies
}

/// When the test started, for the timeline it prints.
static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Seconds from the test's start to `at`.
fn since_start(at: Instant) -> f64 {
    at.duration_since(*T0.get_or_init(Instant::now))
        .as_secs_f64()
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let at = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[at]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_and_a_load_spike_give_no_errors_and_no_stale_reads() {
    since_start(Instant::now());
    let redis = RedisServer::start();
    let s3 = EmbeddedS3::start_with("avatars", SECRET.to_owned())
        .await
        .unwrap();
    let s3_url = s3.endpoint();
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap();
    let mut fleet: Vec<Arc<Instance>> = Vec::with_capacity(3);

    for _ in 0..3 {
        let port = free_port();
        let child = Instance::spawn(port, &redis.url(), &s3_url);
        fleet.push(Arc::new(Instance {
            port,
            child: Mutex::new(Some(child)),
            live: AtomicBool::new(false),
        }));
    }
    for inst in &fleet {
        wait_ready(&http, &inst.url()).await;
        inst.live.store(true, Ordering::SeqCst);
    }

    // Steady state, then the rolling restart, with the same workers.
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let restarting = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4u64)
        .map(|w| {
            tokio::spawn(worker(
                http.clone(),
                fleet.clone(),
                (1..=USERS).filter(|u| u % 4 == w).collect(),
                stop.clone(),
                restarting.clone(),
                tally.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(8)).await;
    restarting.store(true, Ordering::SeqCst);
    for (i, inst) in fleet.iter().enumerate() {
        let port = inst.port;
        // Out of rotation, let its requests finish, stop it.
        inst.live.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let kill = i == 1;
        inst.stop(kill);
        println!(
            "{:.2} s: instance {port} stopped ({})",
            since_start(Instant::now()),
            if kill { "kill -9" } else { "SIGTERM" }
        );
        *inst.child.lock().unwrap() = Some(Instance::spawn(port, &redis.url(), &s3_url));
        wait_ready(&http, &inst.url()).await;
        inst.live.store(true, Ordering::SeqCst);
        println!(
            "{:.2} s: instance {port} back in rotation",
            since_start(Instant::now())
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    restarting.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let mut steady = Vec::new();
    let mut during = Vec::new();
    let mut slowest = Vec::new();
    for w in workers {
        for (in_restart, ms, at) in w.await.unwrap() {
            if in_restart {
                during.push(ms);
                slowest.push((ms, at));
            } else {
                steady.push(ms);
            }
        }
    }
    slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
    let slowest: Vec<String> = slowest
        .iter()
        .take(8)
        .map(|(ms, at)| format!("{ms:.0} ms at {at:.2} s"))
        .collect();
    println!(
        "slowest uploads during the restarts: {}",
        slowest.join(", ")
    );
    let (s50, s99) = (
        percentile(steady.clone(), 0.5),
        percentile(steady.clone(), 0.99),
    );
    let (d50, d99) = (
        percentile(during.clone(), 0.5),
        percentile(during.clone(), 0.99),
    );
    println!(
        "rolling restart: {} uploads, {} reads, {} 5xx, {} failed, {} stale; upload latency steady p50 {s50:.0} ms p99 {s99:.0} ms ({} uploads), during the restarts p50 {d50:.0} ms p99 {d99:.0} ms ({} uploads), p99 ratio {:.2}",
        tally.uploads.load(Ordering::Relaxed),
        tally.reads.load(Ordering::Relaxed),
        tally.server_errors.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.stale.load(Ordering::Relaxed),
        steady.len(),
        during.len(),
        d99 / s99,
    );
    let first = tally.first_problem.lock().unwrap().clone();
    assert_eq!(tally.server_errors.load(Ordering::Relaxed), 0, "{first:?}");
    assert_eq!(tally.failed.load(Ordering::Relaxed), 0, "{first:?}");
    assert_eq!(tally.stale.load(Ordering::Relaxed), 0, "{first:?}");
    assert!(!steady.is_empty() && !during.is_empty());

    // A load spike: 1,000 requests in flight across the three.
    let requests = 3_000usize;
    let server_errors = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let urls: Vec<String> = fleet.iter().map(|i| i.url()).collect();
    futures_util::stream::iter(0..requests)
        .map(|n| {
            let (http, urls) = (http.clone(), urls.clone());
            let (server_errors, failures, first_error) =
                (server_errors.clone(), failures.clone(), first_error.clone());
            async move {
                let base = &urls[n % urls.len()];
                let user = (n as u64 * 7919) % USERS + 1;
                let request = match n % 20 {
                    0 => http
                        .put(format!("{base}/api/users/{user}/avatar"))
                        .header("content-type", "image/png")
                        .body(generate_png(user + n as u64, 32)),
                    1 | 2 => {
                        let ids: Vec<String> = (0..20)
                            .map(|k| ((user + k) % USERS + 1).to_string())
                            .collect();
                        http.get(format!("{base}/api/avatars?ids={}", ids.join(",")))
                    }
                    _ => http.get(format!("{base}/api/users/{user}/avatar")),
                };
                match request.send().await {
                    Ok(r) if r.status().is_server_error() => {
                        server_errors.fetch_add(1, Ordering::Relaxed);
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        first_error
                            .lock()
                            .unwrap()
                            .get_or_insert(format!("{status} {text}"));
                    }
                    Ok(r) => {
                        let _ = r.bytes().await;
                    }
                    Err(e) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        first_error.lock().unwrap().get_or_insert(e.to_string());
                    }
                }
            }
        })
        .buffer_unordered(1_000)
        .collect::<()>()
        .await;
    println!(
        "load: {requests} requests, 1,000 in flight: {} 5xx, {} failed",
        server_errors.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed)
    );
    let first = first_error.lock().unwrap().clone();
    assert_eq!(server_errors.load(Ordering::Relaxed), 0, "{first:?}");
    assert_eq!(failures.load(Ordering::Relaxed), 0, "{first:?}");
    for inst in &fleet {
        inst.stop(false);
    }
}
