//! Backend end-to-end, black box: two profile-server instances on free
//! loopback ports, sharing a real redis-server (started here) and the embedded
//! s3s-fs (SigV4 on) behind its CORS front, exercised only over HTTP: the API,
//! the presigned URLs, `/api/cache/report`, and Redis' own `INFO
//! commandstats`.
//!
//! - every URL of the 200 seeded users fetches that user's bytes;
//! - 2,000 concurrent mixed requests (single GET, batch GET, PUT) across the
//!   200 users never return a URL for another user, and every URL fetched
//!   serves one of that user's pictures;
//! - a PUT followed by a GET never yields the old bytes or the old ETag;
//! - a batch of 100 is one Redis read and signs only the misses;
//! - bad ids (400), unknown users (404), oversized (413), stalled (408) and
//!   non-image (415) uploads get their JSON errors.
//!
//! No assertion on wall-clock speed; timeouts here are liveness bounds.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_server::testing::RedisServer;
use futures_util::StreamExt;
use profile_server::avatar::generate_png;
use profile_server::{serve, Config, EmbeddedS3, Limits, Server};
use reqwest::StatusCode;
use serde_json::Value;
use support::{assert_error, get_json, json_body, put, raw};

mod support;

const USERS: u64 = 200;
/// Requests of the mixed load.
const REQUESTS: usize = 2_000;
/// Requests in flight at once during the mixed load. Both servers, the S3,
/// Redis and this client share two cores in a debug build: far more and an
/// instance can miss the invalidation bus' 3 s confirmation deadline, which
/// the PUT rightly reports as a 502.
const IN_FLIGHT: usize = 64;

/// The shared parts and two instances.
struct Backend {
    redis: RedisServer,
    _s3: EmbeddedS3,
    a: Server,
    b: Server,
    http: reqwest::Client,
}

impl Backend {
    async fn start() -> Backend {
        let redis = RedisServer::start();
        let s3 = EmbeddedS3::start().await.unwrap();
        let mut config = Config::embedded();
        config.users = USERS;
        config.redis_url = Some(redis.url());
        config.s3 = Some(s3.public_config());
        // Short enough for the stalled-upload check, long enough for a loaded
        // 2-core machine to read a small body.
        config.limits = Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
        };
        let a = serve(config.clone()).await.unwrap();
        let b = serve(config).await.unwrap();
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(IN_FLIGHT)
            .build()
            .unwrap();
        Backend {
            redis,
            _s3: s3,
            a,
            b,
            http,
        }
    }

    async fn get(&self, server: &Server, path: &str) -> (StatusCode, Value) {
        let (status, _, body) = get_json(&self.http, &format!("{}{path}", server.url())).await;
        (status, body)
    }

    async fn put(
        &self,
        server: &Server,
        user: u64,
        bytes: Vec<u8>,
        ct: &str,
    ) -> (StatusCode, Value) {
        let url = format!("{}/api/users/{user}/avatar", server.url());
        put(&self.http, &url, bytes, ct).await
    }

    async fn bytes(&self, url: &str) -> Vec<u8> {
        let resp = self.http.get(url).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{url}");
        resp.bytes().await.unwrap().to_vec()
    }

    /// Successful calls by command, from `INFO commandstats` (a command a
    /// Lua script runs counts too).
    fn redis_calls(&self) -> HashMap<String, u64> {
        let info = self.redis.cli(&["INFO", "commandstats"]).unwrap();
        info.lines()
            .filter_map(|line| {
                let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let field = |f: &str| -> Option<u64> {
                    stats
                        .split(',')
                        .find_map(|kv| kv.strip_prefix(f)?.strip_prefix('='))?
                        .parse()
                        .ok()
                };
                let ok = field("calls")? - field("failed_calls").unwrap_or(0);
                Some((name.to_owned(), ok))
            })
            .collect()
    }

    async fn shutdown(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
    }
}

/// The user a presigned URL points at: its key is `avatars/<user>/<version>`
/// in bucket `avatars`, path style.
fn user_of(url: &str) -> u64 {
    let path = url.split('?').next().unwrap();
    let rest = path
        .split("/avatars/avatars/")
        .nth(1)
        .unwrap_or_else(|| panic!("{url}"));
    rest.split('/').next().unwrap().parse().unwrap()
}

/// A deterministic pseudo-random sequence (no RNG dependency; reproducible).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_end_to_end() {
    let backend = Backend::start().await;
    every_url_fetches_its_users_bytes(&backend).await;
    batch_is_one_redis_read_and_signs_only_misses(&backend).await;
    concurrent_mixed_requests_never_cross_users(&backend).await;
    put_then_get_never_yields_the_old_picture(&backend).await;
    bad_requests_get_json_errors(&backend).await;
    readiness_and_bus_figures_are_served(&backend).await;
    backend.shutdown().await;
}

/// `/readyz` says ready once seeded (serve returns then), and `/metrics`
/// carries the bus's figures: its link is up, and the uploads above were
/// confirmed by the other instance with nothing unconfirmed.
async fn readiness_and_bus_figures_are_served(backend: &Backend) {
    for server in [&backend.a, &backend.b] {
        let ready = backend
            .http
            .get(format!("{}/readyz", server.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), StatusCode::OK);
        let metrics = backend
            .http
            .get(format!("{}/metrics", server.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let figure = |name: &str| -> u64 {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing from /metrics"))
                .trim()
                .parse()
                .unwrap()
        };
        assert_eq!(figure("cache_bus_link_up"), 1);
        let (status, report) = backend.get(server, "/api/cache/report").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(report["bus"]["link_up"], Value::Bool(true), "{report}");
        assert_eq!(report["bus"]["unconfirmed"], 0, "{report}");
        assert_eq!(figure("cache_bus_unconfirmed_total"), 0);
        assert!(figure("cache_bus_received_total") > 0);
        figure("cache_bus_peers");
        figure("cache_bus_excused_total");
    }
}

async fn every_url_fetches_its_users_bytes(backend: &Backend) {
    let ids: Vec<String> = (1..=USERS).map(|u| u.to_string()).collect();
    for chunk in ids.chunks(100) {
        let (status, body) = backend
            .get(&backend.a, &format!("/api/avatars?ids={}", chunk.join(",")))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.as_object().unwrap().len(), chunk.len());
        let fetches = chunk.iter().map(|id| {
            let url = body[id]["url"].as_str().unwrap().to_owned();
            async move { (id, user_of(&url), backend.bytes(&url).await) }
        });
        let fetched: Vec<_> = futures_util::stream::iter(fetches)
            .buffer_unordered(32)
            .collect()
            .await;
        for (id, url_user, bytes) in fetched {
            let user: u64 = id.parse().unwrap();
            assert_eq!(url_user, user);
            assert_eq!(bytes, generate_png(user, 96), "user {id}");
        }
    }
    // The single route agrees with the batch, on the other instance too.
    for user in [1, 77, 100] {
        let (status, body) = backend
            .get(&backend.b, &format!("/api/users/{user}/avatar"))
            .await;
        assert_eq!(status, StatusCode::OK);
        let url = body["url"].as_str().unwrap();
        assert_eq!(user_of(url), user);
        assert_eq!(backend.bytes(url).await, generate_png(user, 96));
    }
}

/// B has read only users 1, 77 and 100 so far; A has read all 200, so Redis
/// holds every URL. A batch is one Redis read (one MGET) whatever its size,
/// and signs only what no tier holds:
/// - users 101-150, all in Redis: one MGET, no fill, nothing signed;
/// - users 151-200, replaced through A (so gone from Redis and every
///   in-process tier): one MGET for the values, one for the generations of
///   the 50 misses (their fill stamps), one fenced fill script per miss, and
///   50 signatures.
async fn batch_is_one_redis_read_and_signs_only_misses(backend: &Backend) {
    for user in 151..=200 {
        let png = generate_png(user + 5_000, 16);
        let (status, _) = backend.put(&backend.a, user, png, "image/png").await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let ids =
        |r: std::ops::RangeInclusive<u64>| r.map(|u| u.to_string()).collect::<Vec<_>>().join(",");
    let loads = |r: &Value| r["origin"]["loads"].as_u64().unwrap();
    let redis_hits = |r: &Value| {
        let tiers = r["tiers"].as_array().unwrap();
        let redis = tiers.iter().find(|t| t["name"] == "redis").unwrap();
        redis["hits"].as_u64().unwrap()
    };
    for (range, hits, misses) in [(101..=150, 50, 0), (151..=200, 0, 50)] {
        let before = backend.get(&backend.b, "/api/cache/report").await.1;
        let calls_before = backend.redis_calls();
        let path = format!("/api/avatars?ids={}", ids(range.clone()));
        let (status, body) = backend.get(&backend.b, &path).await;
        assert_eq!(status, StatusCode::OK);
        let calls_after = backend.redis_calls();
        let after = backend.get(&backend.b, "/api/cache/report").await.1;
        let delta = |name: &str| {
            calls_after.get(name).copied().unwrap_or(0)
                - calls_before.get(name).copied().unwrap_or(0)
        };
        // The bus's scripts (heartbeats, publishes, status checks) run
        // meanwhile on both instances; each calls TIME exactly once, and a
        // fenced fill never does, so they are told apart by it.
        let bus_scripts = delta("time");
        let scripts = delta("evalsha") + delta("eval") - bus_scripts;
        assert_eq!(scripts, misses, "one fenced fill per miss: {calls_after:?}");
        let reads = if misses == 0 { 1 } else { 2 };
        assert_eq!(delta("mget") - scripts, reads, "{range:?}: {calls_after:?}");
        assert_eq!(delta("get"), 0, "no single GET: {calls_after:?}");
        assert_eq!(redis_hits(&after) - redis_hits(&before), hits, "{range:?}");
        assert_eq!(loads(&after) - loads(&before), misses, "{range:?} signed");
        for user in range {
            let url = body[user.to_string()]["url"].as_str().unwrap();
            let want = if user > 150 {
                generate_png(user + 5_000, 16)
            } else {
                generate_png(user, 96)
            };
            assert_eq!(backend.bytes(url).await, want, "user {user}");
        }
    }
}

/// 2,000 requests, `IN_FLIGHT` at a time, spread over both instances: 60 %
/// single GETs, 25 % batches of 1 to 100 random ids, 15 % PUTs of a new
/// picture. Every URL must be for the user asked about; every URL of a single
/// GET and three of each batch are fetched and must serve one of that user's
/// pictures (seeded or uploaded).
async fn concurrent_mixed_requests_never_cross_users(backend: &Backend) {
    // user → every picture it ever had (its current one included).
    let pictures: Arc<Mutex<HashMap<u64, HashSet<Vec<u8>>>>> = Arc::new(Mutex::new(HashMap::new()));
    // The bytes of every user's current picture at this point: what the earlier
    // steps uploaded, or the seed.
    for user in 1..=USERS {
        let mut set = HashSet::new();
        set.insert(generate_png(user, 96));
        if user > 150 {
            set.insert(generate_png(user + 5_000, 16));
        }
        pictures.lock().unwrap().insert(user, set);
    }
    let mut rng = Lcg(0x5eed);
    let plan: Vec<Step> = (0..REQUESTS as u64)
        .map(|i| {
            let kind = match rng.below(100) {
                0..60 => Kind::Single,
                60..85 => Kind::Batch,
                _ => Kind::Put,
            };
            let user = rng.below(USERS) + 1;
            let batch = (0..=rng.below(100)).map(|_| rng.below(USERS) + 1).collect();
            Step {
                i,
                kind,
                user,
                batch,
            }
        })
        .collect();
    let started = std::time::Instant::now();
    let outcomes: Vec<usize> = futures_util::stream::iter(plan)
        .map(
            |Step {
                 i,
                 kind,
                 user,
                 batch,
             }| {
                let pictures = pictures.clone();
                async move {
                    let server = if i % 2 == 0 { &backend.a } else { &backend.b };
                    let mut checked = 0;
                    match kind {
                        Kind::Single => {
                            let (status, body) = backend
                                .get(server, &format!("/api/users/{user}/avatar"))
                                .await;
                            assert_eq!(status, StatusCode::OK, "{body}");
                            let url = body["url"].as_str().unwrap();
                            assert_eq!(user_of(url), user, "GET of user {user} returned {url}");
                            let bytes = backend.bytes(url).await;
                            assert!(
                                pictures.lock().unwrap()[&user].contains(&bytes),
                                "user {user}: bytes of no picture of theirs"
                            );
                            checked += 1;
                        }
                        Kind::Batch => {
                            let ids: Vec<String> = batch.iter().map(u64::to_string).collect();
                            let (status, body) = backend
                                .get(server, &format!("/api/avatars?ids={}", ids.join(",")))
                                .await;
                            assert_eq!(status, StatusCode::OK, "{body}");
                            let map = body.as_object().unwrap();
                            let distinct: HashSet<&String> = ids.iter().collect();
                            assert_eq!(map.len(), distinct.len());
                            for (id, entry) in map {
                                let url = entry["url"].as_str().unwrap();
                                assert_eq!(
                                    user_of(url).to_string(),
                                    *id,
                                    "batch entry {id} is {url}"
                                );
                            }
                            for id in ids.iter().take(3) {
                                let u: u64 = id.parse().unwrap();
                                let bytes = backend.bytes(map[id]["url"].as_str().unwrap()).await;
                                assert!(
                                    pictures.lock().unwrap()[&u].contains(&bytes),
                                    "user {u}: bytes of no picture of theirs"
                                );
                                checked += 1;
                            }
                        }
                        Kind::Put => {
                            // Distinct per request: the user id and the request number.
                            let png = generate_png(user * 1_000_000 + i, 16);
                            pictures
                                .lock()
                                .unwrap()
                                .get_mut(&user)
                                .unwrap()
                                .insert(png.clone());
                            let (status, body) = backend.put(server, user, png, "image/png").await;
                            assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
                        }
                    }
                    checked
                }
            },
        )
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    assert_eq!(outcomes.len(), REQUESTS);
    // A measurement for the log, not an assertion.
    println!(
        "{REQUESTS} mixed requests, {IN_FLIGHT} in flight, {} URLs fetched: {:?}",
        outcomes.iter().sum::<usize>(),
        started.elapsed()
    );
    assert!(
        outcomes.iter().sum::<usize>() > REQUESTS / 2,
        "too few URLs were fetched to mean anything"
    );
}

/// One request of the mixed load.
struct Step {
    i: u64,
    kind: Kind,
    user: u64,
    /// The ids of a batch (duplicates allowed).
    batch: Vec<u64>,
}

enum Kind {
    Single,
    Batch,
    Put,
}

/// For 40 users at once, three rounds each: PUT new bytes, then GET (single on
/// one instance, batch on the other): the answer is never the old URL, the old
/// ETag or the old bytes. The PUTs of different users overlap.
async fn put_then_get_never_yields_the_old_picture(backend: &Backend) {
    let rounds = (1..=40u64).map(|user| async move {
        let (_, first) = backend
            .get(&backend.a, &format!("/api/users/{user}/avatar"))
            .await;
        let mut seen_etags = HashSet::from([first["etag"].as_str().unwrap().to_owned()]);
        let mut seen_urls = HashSet::from([first["url"].as_str().unwrap().to_owned()]);
        for round in 0..3u64 {
            let png = generate_png(user * 10_000_000 + round, 16);
            let (writer, reader) = if round % 2 == 0 {
                (&backend.a, &backend.a)
            } else {
                (&backend.b, &backend.b)
            };
            let (status, _) = backend.put(writer, user, png.clone(), "image/png").await;
            assert_eq!(status, StatusCode::NO_CONTENT);
            let (status, single) = backend
                .get(reader, &format!("/api/users/{user}/avatar"))
                .await;
            assert_eq!(status, StatusCode::OK);
            let (_, batch) = backend
                .get(
                    reader,
                    &format!("/api/avatars?ids={user},{}", user % 200 + 1),
                )
                .await;
            for answer in [&single, &batch[user.to_string()]] {
                let etag = answer["etag"].as_str().unwrap();
                let url = answer["url"].as_str().unwrap();
                assert!(
                    !seen_etags.contains(etag),
                    "user {user} round {round}: an old ETag after the PUT"
                );
                assert!(
                    !seen_urls.contains(url),
                    "user {user} round {round}: an old URL after the PUT"
                );
                assert_eq!(
                    backend.bytes(url).await,
                    png,
                    "user {user} round {round}: old bytes after the PUT"
                );
            }
            seen_etags.insert(single["etag"].as_str().unwrap().to_owned());
            seen_urls.insert(single["url"].as_str().unwrap().to_owned());
        }
    });
    futures_util::future::join_all(rounds).await;
}

async fn bad_requests_get_json_errors(backend: &Backend) {
    let a = &backend.a;
    let (_, current) = backend.get(a, "/api/users/1/avatar").await;
    let before = backend.bytes(current["url"].as_str().unwrap()).await;
    for bad in [
        "abc",
        "-1",
        "01",
        "1.5",
        "%201",
        "1%2F2",
        "99999999999999999999999",
    ] {
        let (status, body) = backend.get(a, &format!("/api/users/{bad}/avatar")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "id {bad}");
        assert_error(&body);
        if bad == "%201" {
            continue; // a batch trims spaces around its ids: "1, 2" is fine
        }
        let (status, body) = backend.get(a, &format!("/api/avatars?ids=1,{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "batch id {bad}");
        assert_error(&body);
    }
    for unknown in ["0", "201", "4000000000"] {
        let (status, body) = backend
            .get(a, &format!("/api/users/{unknown}/avatar"))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "id {unknown}");
        assert_error(&body);
    }
    let (status, body) = backend.put(a, 201, generate_png(1, 16), "image/png").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body);
    let mut big = generate_png(1, 16);
    big.resize(profile_server::DEFAULT_MAX_UPLOAD + 1, 0);
    let (status, body) = backend.put(a, 1, big, "image/png").await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error(&body);
    let (status, body) = backend
        .put(a, 1, b"GIF-ish but not <html>".to_vec(), "image/gif")
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_error(&body);
    // A stalled upload: 408 JSON after the 2 s body deadline, socket closed.
    let mut stream = raw::stalled_put(a.addr(), 10_000, b"\x89PNG\r\n\x1a\n").await;
    let answer = raw::read_to_close(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_error(&json_body(&answer));
    // None of these touched user 1's picture.
    let (_, body) = backend.get(a, "/api/users/1/avatar").await;
    assert_eq!(backend.bytes(body["url"].as_str().unwrap()).await, before);
}
