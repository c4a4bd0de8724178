//! `GET /api/events`, black box over HTTP: two profile-server instances
//! sharing a real redis-server (started here, with the invalidation bus) and
//! the embedded s3s-fs, and a plain SSE client reading the wire text.
//!
//! - an upload through instance B reaches a client of instance A (over the
//!   bus), and one through A reaches it directly;
//! - `Last-Event-ID` (or `?last_event_id=`) inside the replay ring replays the
//!   missed events, in order, before `hello`;
//! - an id too old for the ring, from another instance's stream, or garbage
//!   gets one `reset`, then `hello`;
//! - shutting an instance down ends its open streams (and does not wait for
//!   the drain deadline).
//!
//! Timeouts are liveness bounds, not speed claims.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cache_server::testing::RedisServer;
use futures_util::StreamExt;
use profile_server::avatar::generate_png;
use profile_server::{serve, Config, EmbeddedS3, EventsConfig, Server};
use reqwest::StatusCode;
use serde_json::Value;

mod support;

const USERS: u64 = 20;
/// Events kept for reconnecting clients (small, so a gap is cheap to make).
const REPLAY: usize = 4;
/// Liveness bound for one expected event.
const PATIENCE: Duration = Duration::from_secs(30);

struct Backend {
    _redis: RedisServer,
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
        config.events = EventsConfig {
            replay: REPLAY,
            ..EventsConfig::default()
        };
        let a = serve(config.clone()).await.unwrap();
        let b = serve(config).await.unwrap();
        Backend {
            _redis: redis,
            _s3: s3,
            a,
            b,
            http: support::client(),
        }
    }

    /// Uploads a new picture for `user` through `server` (204).
    async fn upload(&self, server: &Server, user: u64, version: u64) {
        let url = format!("{}/api/users/{user}/avatar", server.url());
        let png = generate_png(user * 1_000 + version, 16);
        let (status, body) = support::put(&self.http, &url, png, "image/png").await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
}

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq)]
struct Sse {
    event: String,
    id: Option<String>,
    data: Value,
}

/// A plain SSE client on one connection.
struct Client {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl Client {
    /// `GET /api/events` with `Last-Event-ID: last` (or `?last_event_id=`
    /// when `in_query`).
    async fn open(server: &Server, last: Option<&str>, in_query: bool) -> Client {
        let http = support::client();
        let mut url = format!("{}/api/events", server.url());
        let mut request = http.get(&url);
        if let Some(last) = last {
            if in_query {
                url = format!("{url}?last_event_id={last}");
                request = http.get(&url);
            } else {
                request = request.header("last-event-id", last);
            }
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Client {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next event (comments skipped); `None` once the stream ended.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = Sse::default();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event.event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if event.event.is_empty() && data.is_empty() {
                    continue; // A keep-alive comment.
                }
                event.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                return Some(event);
            }
            match tokio::time::timeout(PATIENCE, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buffer.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(Some(Err(_))) | Ok(None) => return None,
                Err(_) => panic!("no event within {PATIENCE:?}; buffered: {:?}", self.buffer),
            }
        }
    }

    /// The next event, which must exist.
    async fn expect(&mut self) -> Sse {
        self.next().await.expect("the stream ended")
    }

    /// Events up to and including `hello`.
    async fn until_hello(&mut self) -> Vec<Sse> {
        let mut seen = Vec::new();
        loop {
            let event = self.expect().await;
            let hello = event.event == "hello";
            seen.push(event);
            if hello {
                return seen;
            }
        }
    }
}

fn seq_of(id: &str) -> u64 {
    id.rsplit_once('-').unwrap().1.parse().unwrap()
}

fn stream_of(id: &str) -> &str {
    id.rsplit_once('-').unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_through_another_instance_reaches_an_open_stream() {
    let backend = Backend::start().await;
    let mut client = Client::open(&backend.a, None, false).await;
    let hello = client.expect().await;
    assert_eq!(hello.event, "hello", "{hello:?}");
    let hello_id = hello.id.clone().unwrap();
    assert_eq!(hello.data["stream"], stream_of(&hello_id));

    // Through B: A hears it over the bus and tells its client.
    backend.upload(&backend.b, 7, 1).await;
    let event = loop {
        let event = client.expect().await;
        if event.event == "avatar" {
            break event;
        }
        // A bus resync at start-up may say `reset` first; nothing else.
        assert_eq!(event.event, "reset", "{event:?}");
    };
    assert_eq!(event.data["user"], "7", "{event:?}");
    let id = event.id.unwrap();
    assert_eq!(stream_of(&id), stream_of(&hello_id), "A's stream");
    assert!(seq_of(&id) > seq_of(&hello_id), "{id} after {hello_id}");

    // Through A itself: published once every tier is done.
    backend.upload(&backend.a, 9, 1).await;
    let event = client.expect().await;
    assert_eq!(
        (event.event.as_str(), &event.data["user"]),
        ("avatar", &Value::from("9"))
    );
    assert_eq!(seq_of(&event.id.unwrap()), seq_of(&id) + 1);
    backend.a.shutdown().await;
    backend.b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_inside_the_ring_replays_the_missed_events() {
    let backend = Backend::start().await;
    for in_query in [false, true] {
        let mut client = Client::open(&backend.a, None, false).await;
        let last = client.expect().await.id.unwrap();
        drop(client);
        // Missed while disconnected (uploads through A are published before
        // the 204).
        backend.upload(&backend.a, 3, 1).await;
        backend.upload(&backend.a, 4, 1).await;
        let mut client = Client::open(&backend.a, Some(&last), in_query).await;
        let seen = client.until_hello().await;
        let events: Vec<(&str, &Value)> = seen
            .iter()
            .map(|e| (e.event.as_str(), &e.data["user"]))
            .collect();
        let null = Value::Null;
        assert_eq!(
            events,
            [
                ("avatar", &Value::from("3")),
                ("avatar", &Value::from("4")),
                ("hello", &null)
            ],
            "in query: {in_query}: {seen:?}"
        );
        let ids: Vec<u64> = seen
            .iter()
            .map(|e| seq_of(e.id.as_ref().unwrap()))
            .collect();
        let n = seq_of(&last);
        assert_eq!(ids, [n + 1, n + 2, n + 2], "{seen:?}");
        // The hello of a reconnect names the same newest event.
        assert_eq!(seen[2].data["seq"], n + 2);
    }
    backend.a.shutdown().await;
    backend.b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_the_ring_cannot_fill_gets_a_reset() {
    let backend = Backend::start().await;
    let mut on_a = Client::open(&backend.a, None, false).await;
    let last_a = on_a.expect().await.id.unwrap();
    drop(on_a);
    let mut on_b = Client::open(&backend.b, None, false).await;
    let last_b = on_b.expect().await.id.unwrap();
    drop(on_b);
    assert_ne!(
        stream_of(&last_a),
        stream_of(&last_b),
        "one stream per instance"
    );

    // More uploads than the ring keeps.
    for version in 1..=REPLAY as u64 + 2 {
        backend.upload(&backend.a, 5, version).await;
    }
    let newest = seq_of(&last_a) + REPLAY as u64 + 2;
    for (what, last) in [
        ("an id older than the ring", last_a.clone()),
        ("instance B's id at instance A", last_b.clone()),
        ("garbage", "not-an-id".to_owned()),
    ] {
        let mut client = Client::open(&backend.a, Some(&last), false).await;
        let seen = client.until_hello().await;
        let names: Vec<&str> = seen.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(names, ["reset", "hello"], "{what}: {seen:?}");
        assert!(seen[0].data["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()));
        // Both carry A's newest id: the client is in step from here on.
        for event in &seen {
            let id = event.id.as_deref().unwrap();
            assert_eq!(stream_of(id), stream_of(&last_a), "{what}: {event:?}");
            assert_eq!(seq_of(id), newest, "{what}: {event:?}");
        }
    }
    // Inside the ring: no reset, the last REPLAY - 1 events replayed.
    let inside = format!("{}-{}", stream_of(&last_a), newest - (REPLAY as u64 - 1));
    let mut client = Client::open(&backend.a, Some(&inside), false).await;
    let seen = client.until_hello().await;
    let names: Vec<&str> = seen.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["avatar", "avatar", "avatar", "hello"], "{seen:?}");
    backend.a.shutdown().await;
    backend.b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_the_open_streams() {
    let backend = Backend::start().await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = Client::open(&backend.a, None, false).await;
        assert_eq!(client.expect().await.event, "hello");
        clients.push(client);
    }
    let mut on_b = Client::open(&backend.b, None, false).await;
    assert_eq!(on_b.expect().await.event, "hello");
    let started = Instant::now();
    // The drain deadline is the request timeout (60 s) + 1 s: a stream that
    // did not end would hold shutdown that long.
    tokio::time::timeout(Duration::from_secs(30), backend.a.shutdown())
        .await
        .expect("shutdown waited for the open event streams");
    println!("shutdown with 3 open streams took {:?}", started.elapsed());
    for mut client in clients {
        assert_eq!(client.next().await, None, "the stream ended");
    }
    // B's stream is untouched and still carries B's own uploads.
    let url = format!("{}/api/users/2/avatar", backend.b.url());
    let png = generate_png(2_001, 16);
    let (status, body) = support::put(&backend.http, &url, png, "image/png").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let event = loop {
        let event = on_b.expect().await;
        if event.event == "avatar" {
            break event;
        }
    };
    assert_eq!(event.data["user"], "2");
    backend.b.shutdown().await;
    assert_eq!(on_b.next().await, None);
}
