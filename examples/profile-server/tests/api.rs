//! The HTTP API against real parts: the server in-process on a free loopback
//! port, the embedded s3s-fs (SigV4 on), and, for two instances, a real
//! redis-server started by the test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cache_core::{Clock, SystemClock, Timestamp};
use cache_server::testing::RedisServer;
use profile_server::avatar::generate_png;
use profile_server::{serve, Config, Server};
use reqwest::StatusCode;
use serde_json::Value;
use support::{assert_error, client, json_body, raw};

mod support;

async fn start() -> Server {
    serve(Config::embedded()).await.unwrap()
}

async fn get_json(server: &Server, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    support::get_json(&client(), &format!("{}{path}", server.url())).await
}

async fn put(
    server: &Server,
    path: &str,
    body: Vec<u8>,
    content_type: &str,
) -> (StatusCode, Value) {
    support::put(
        &client(),
        &format!("{}{path}", server.url()),
        body,
        content_type,
    )
    .await
}

async fn fetch_bytes(url: &str) -> (StatusCode, Vec<u8>) {
    support::fetch_bytes(&client(), url).await
}

fn max_age(headers: &reqwest::header::HeaderMap) -> u64 {
    let cc = headers["cache-control"].to_str().unwrap();
    assert!(cc.starts_with("private, max-age="), "{cc}");
    cc["private, max-age=".len()..].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_avatar_returns_a_working_url_with_bounded_max_age() {
    let server = start().await;
    let (status, headers, body) = get_json(&server, "/api/users/1/avatar").await;
    assert_eq!(status, StatusCode::OK);
    let url = body["url"].as_str().unwrap();
    let expires_at = Timestamp::from_unix_millis(body["expires_at"].as_u64().unwrap());
    assert_eq!(
        headers["etag"].to_str().unwrap(),
        body["etag"].as_str().unwrap()
    );
    // max-age never outlives the URL: now + max-age <= expires_at.
    let remaining = expires_at.duration_since(SystemClock.now());
    let age = max_age(&headers);
    assert!(age > 0, "a fresh URL may be cached a while");
    assert!(
        Duration::from_secs(age) <= remaining,
        "max-age {age}s exceeds the URL's remaining life {remaining:?}"
    );
    // The URL is presigned for the embedded S3 and serves the seeded picture.
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let (s3_status, bytes) = fetch_bytes(url).await;
    assert_eq!(s3_status, StatusCode::OK);
    assert_eq!(bytes, generate_png(1, 96));
    // Tampering with the URL is refused by S3 (SigV4 is on).
    let tampered = url.replace("avatars/1", "avatars/2");
    assert_eq!(fetch_bytes(&tampered).await.0, StatusCode::FORBIDDEN);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_none_match_with_current_etag_is_304_and_other_etag_is_200() {
    let server = start().await;
    let (_, headers, body) = get_json(&server, "/api/users/2/avatar").await;
    let etag = body["etag"].as_str().unwrap().to_owned();
    let c = client();
    let url = format!("{}/api/users/2/avatar", server.url());
    let resp = c
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(resp.headers()["etag"].to_str().unwrap(), etag);
    assert!(max_age(resp.headers()) <= max_age(&headers));
    assert!(resp.bytes().await.unwrap().is_empty());
    let resp = c
        .get(&url)
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_json_with_400_404_413_415() {
    let server = start().await;
    for bad in [
        "abc",
        "-1",
        "1.5",
        "01",
        "1%20",
        "%2F1",
        "99999999999999999999999",
    ] {
        let (status, _, body) = get_json(&server, &format!("/api/users/{bad}/avatar")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "id {bad}");
        assert_error(&body);
    }
    for unknown in ["0", "201", "12345"] {
        let (status, _, body) = get_json(&server, &format!("/api/users/{unknown}/avatar")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "id {unknown}");
        assert_error(&body);
    }
    let png = generate_png(9, 16);
    let (status, body) = put(&server, "/api/users/abc/avatar", png.clone(), "image/png").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body);
    let (status, body) = put(&server, "/api/users/420/avatar", png, "image/png").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body);

    // Over 2 MiB, with a PNG header so only the size is wrong.
    let mut big = generate_png(1, 16);
    big.resize(profile_server::DEFAULT_MAX_UPLOAD + 1, 0);
    let (status, body) = put(&server, "/api/users/1/avatar", big, "image/png").await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error(&body);
    // Same, streamed without a Content-Length.
    let mut big = generate_png(1, 16);
    big.resize(profile_server::DEFAULT_MAX_UPLOAD + 1, 0);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let resp = client()
        .put(format!("{}/api/users/1/avatar", server.url()))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // The Content-Type claims an image; the bytes are not one.
    let (status, body) = put(
        &server,
        "/api/users/1/avatar",
        b"<svg onload=alert(1)>".to_vec(),
        "image/png",
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_error(&body);
    let (status, _) = put(&server, "/api/users/1/avatar", Vec::new(), "image/png").await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Batch errors.
    for (query, want) in [
        ("/api/avatars", StatusCode::BAD_REQUEST),
        ("/api/avatars?ids=", StatusCode::BAD_REQUEST),
        ("/api/avatars?ids=1,x", StatusCode::BAD_REQUEST),
        ("/api/avatars?ids=1,2,999", StatusCode::NOT_FOUND),
    ] {
        let (status, _, body) = get_json(&server, query).await;
        assert_eq!(status, want, "{query}");
        assert_error(&body);
    }
    let ids: Vec<String> = (0..101).map(|i| (i % 6 + 1).to_string()).collect();
    let (status, _, body) = get_json(&server, &format!("/api/avatars?ids={}", ids.join(","))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "101 ids");
    assert_error(&body);
    // The pictures were not touched by any refused upload.
    let (_, _, body) = get_json(&server, "/api/users/1/avatar").await;
    assert_eq!(
        fetch_bytes(body["url"].as_str().unwrap()).await.1,
        generate_png(1, 96)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_returns_every_user_through_the_batch_path() {
    let server = start().await;
    let single = get_json(&server, "/api/users/3/avatar").await.2;
    let signed_before = server.app().urls().signatures();
    let (status, headers, body) = get_json(&server, "/api/avatars?ids=1,2,3,3").await;
    assert_eq!(status, StatusCode::OK);
    let map = body.as_object().unwrap();
    assert_eq!(map.len(), 3);
    // User 3 was cached: the batch answered it from a tier, same URL.
    assert_eq!(map["3"]["url"], single["url"]);
    assert_eq!(server.app().urls().signatures(), signed_before + 2);
    for id in ["1", "2", "3"] {
        let u: u64 = id.parse().unwrap();
        let (s, bytes) = fetch_bytes(map[id]["url"].as_str().unwrap()).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(bytes, generate_png(u, 96));
    }
    let remaining = map
        .values()
        .map(|v| {
            Timestamp::from_unix_millis(v["expires_at"].as_u64().unwrap())
                .duration_since(SystemClock.now())
        })
        .min()
        .unwrap();
    assert!(Duration::from_secs(max_age(&headers)) <= remaining);
    // 100 ids is the limit, and allowed.
    let ids: Vec<String> = (0..100).map(|i| (i % 6 + 1).to_string()).collect();
    let (status, _, body) = get_json(&server, &format!("/api/avatars?ids={}", ids.join(","))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_object().unwrap().len(), 6);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_replaces_the_picture_and_the_next_get_serves_the_new_bytes() {
    let server = start().await;
    let before = get_json(&server, "/api/users/4/avatar").await.2;
    assert_eq!(
        fetch_bytes(before["url"].as_str().unwrap()).await.1,
        generate_png(4, 96)
    );
    let signed = server.app().urls().signatures();

    // A GIF this time: any sniffed image type is accepted.
    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&[1, 0, 1, 0, 0, 0, 0, 0x3B]);
    let (status, _) = put(
        &server,
        "/api/users/4/avatar",
        gif.clone(),
        "application/octet-stream",
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let after = get_json(&server, "/api/users/4/avatar").await.2;
    // The cached URL was invalidated: a new one was signed for this read.
    assert_eq!(server.app().urls().signatures(), signed + 1);
    let resp = client()
        .get(after["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "image/gif"
    );
    assert_eq!(resp.bytes().await.unwrap().to_vec(), gif);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_and_dashboard_show_the_tiers() {
    let server = start().await;
    get_json(&server, "/api/users/1/avatar").await;
    get_json(&server, "/api/users/1/avatar").await;
    let (status, _, report) = get_json(&server, "/api/cache/report").await;
    assert_eq!(status, StatusCode::OK);
    let tiers: Vec<&str> = report["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(tiers, ["memory", "shared-in-process"]);
    assert_eq!(report["tiers"][0]["hits"], 1);
    assert_eq!(report["origin"]["loads"], 1);

    let resp = client()
        .get(format!("{}/metrics", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = resp.text().await.unwrap();
    assert!(text.contains("# TYPE") && text.contains("memory"), "{text}");

    let resp = client()
        .get(format!("{}/dashboard", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let html = resp.text().await.unwrap();
    assert!(html.contains("/api/cache/report"));
    server.shutdown().await;
}

/// `/api/cache/report` states the period it covers and how latency was
/// sampled; `/api/cache/history` gives the monitor's buckets, oldest first,
/// and together they count every lookup the report counts; a bad `last` is
/// a 400 that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_states_its_period_and_history_counts_every_lookup() {
    let server = start().await;
    for user in [1, 2, 1, 3, 1] {
        get_json(&server, &format!("/api/users/{user}/avatar")).await;
    }
    get_json(&server, "/api/avatars?ids=2,3,4").await;
    let report = get_json(&server, "/api/cache/report").await.2;
    assert_eq!(report["requests"], 8, "{report}");
    assert_eq!(report["period"]["covers"], "since_start", "{report}");
    let length = report["period"]["length"].as_f64().unwrap();
    let (since, until) = (
        report["since"].as_u64().unwrap(),
        report["until"].as_u64().unwrap(),
    );
    assert!((length - (until - since) as f64).abs() < 1e-6, "{report}");
    assert_eq!(
        report["latency_timed_every"],
        cache_core::FAST_PATH_TIMED_EVERY,
        "{report}"
    );

    for (last, last_ms, bucket_ms, len) in [
        ("", 900_000, 10_000, 90),
        ("?last=15m", 900_000, 10_000, 90),
        ("?last=1h", 3_600_000, 60_000, 60),
        ("?last=24h", 86_400_000, 300_000, 288),
    ] {
        let (status, headers, history) =
            get_json(&server, &format!("/api/cache/history{last}")).await;
        assert_eq!(status, StatusCode::OK, "{last}: {history}");
        assert_eq!(headers["cache-control"], "no-store");
        assert_eq!(history["last_ms"], last_ms, "{last}");
        assert_eq!(history["bucket_ms"], bucket_ms, "{last}");
        assert_eq!(
            history["latency_timed_every"],
            cache_core::FAST_PATH_TIMED_EVERY
        );
        assert_eq!(
            history["tiers"],
            serde_json::json!(["memory", "shared-in-process"])
        );
        let points = history["points"].as_array().unwrap();
        let n = |p: &Value, k: &str| p[k].as_u64().unwrap();
        // The buckets since the monitor started (none from before, each with
        // a length), contiguous up to now.
        assert!(points.len() <= len + 1, "{last}: {} points", points.len());
        assert_eq!(n(&points[0], "since"), since, "{last}: starts at the start");
        assert!(n(points.last().unwrap(), "until") >= until, "{last}");
        assert!(points.iter().all(|p| n(p, "since") < n(p, "until")));
        for pair in points.windows(2) {
            assert_eq!(
                n(&pair[0], "until"),
                n(&pair[1], "since"),
                "{last}: {pair:?}"
            );
        }
        let total: u64 = points.iter().map(|p| n(p, "requests")).sum();
        assert_eq!(total, 8, "{last}: every lookup is in the history");
        let loads: u64 = points
            .iter()
            .map(|p| p["origin"]["loads"].as_u64().unwrap())
            .sum();
        assert_eq!(loads, 4, "{last}: one signing per user");
        // Every signing is timed: a bucket with one has its percentiles (the
        // median never above the 99th), a bucket without has none.
        for p in points {
            let (o, loads) = (&p["origin"], n(&p["origin"], "loads"));
            assert_eq!(o["p99_ms"].is_number(), loads > 0, "{last}: {p}");
            if loads > 0 {
                let (p50, p99) = (o["p50_ms"].as_f64().unwrap(), o["p99_ms"].as_f64().unwrap());
                assert!(0.0 < p50 && p50 <= p99, "{last}: {p}");
            }
        }
        let memory_hits: u64 = points
            .iter()
            .map(|p| p["tiers"]["memory"]["hits"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(memory_hits, report["tiers"][0]["hits"].as_u64().unwrap());
    }
    for bad in ["abc", "0", "-1h", "1.5h", "2d", "15M"] {
        let (status, _, body) = get_json(&server, &format!("/api/cache/history?last={bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_error(&body);
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with(&format!("last={bad} is")),
            "{body}"
        );
    }
    server.shutdown().await;
}

/// The dashboard in a real headless Chromium (`--dump-dom` after its script
/// ran, with virtual time so several 2 s polls happen): a card per tier and
/// for the signer, and the charts of both rows drawn from the server's
/// history while this test sends traffic. The page loads nothing but itself,
/// the report and the history (it works offline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_draws_tiers_and_charts_in_chromium() {
    const CHROMIUM: &str = "/usr/bin/chromium";
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: sudo apt-get install -y chromium"
    );
    let mut config = Config::embedded();
    config.users = 10;
    let server = serve(config).await.unwrap();
    let html = client()
        .get(format!("{}/dashboard", server.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for external in ["src=\"http", "href=\"http", "@import", "cdn"] {
        assert!(!html.contains(external), "the dashboard loads {external}…");
    }
    let traffic = {
        let base = server.url();
        tokio::spawn(async move {
            let http = client();
            for i in 0u64.. {
                // A new picture every round, so the lookup that follows is
                // signed: the page's polls (on Chromium's virtual clock, only
                // a few real milliseconds apart) each find signings since the
                // last one, not only now and then.
                let url = format!("{base}/api/users/{}/avatar", i % 10 + 1);
                let _ = support::put(&http, &url, generate_png(i, 8), "image/png").await;
                let ids = format!("{},{}", i % 10 + 1, (i * 7) % 10 + 1);
                let _ = support::get_json(&http, &format!("{base}/api/avatars?ids={ids}")).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let url = format!("{}/dashboard", server.url());
    let dom = tokio::task::spawn_blocking(move || {
        std::process::Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--virtual-time-budget=20000",
                "--dump-dom",
                &url,
            ])
            .stderr(std::process::Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    traffic.abort();
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    for card in ["memory", "shared-in-process", "signer"] {
        assert!(
            dom.contains(&format!("{card} <span class=\"kind\">")),
            "no card for {card}: {dom}"
        );
    }
    assert!(dom.contains("lookups since start"), "{dom}");
    assert!(dom.contains("per thread"), "the sampling is stated: {dom}");
    let chart = |id: &str| {
        let start = dom.find(&format!("id=\"{id}\"")).unwrap();
        let end = start + dom[start..].find("</svg>").unwrap();
        dom[start..end].to_owned()
    };
    // The points a series drew in a chart.
    let points = |chart: &str, series: &str| {
        chart
            .find(&format!("data-series=\"{series}\""))
            .map_or(0, |start| {
                let group = &chart[start..];
                group[..group.find("</g>").unwrap()]
                    .matches("<circle")
                    .count()
            })
    };
    let rate = chart("recent-rate");
    let hits = chart("recent-hit");
    let latency = chart("recent-latency");
    assert!(points(&rate, "lookups") > 0, "no lookup points: {rate}");
    assert!(
        points(&hits, "memory") > 0,
        "no memory hit-rate points: {hits}"
    );
    assert!(
        points(&latency, "signer") > 0,
        "no signing latency points: {latency}"
    );
    let p99 = chart("recent-p99");
    assert!(points(&p99, "signer") > 0, "no signing p99 points: {p99}");
    for id in ["long-rate", "long-hit", "long-latency", "long-p99"] {
        assert!(chart(id).contains("<circle"), "{id}: no points");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_web_directory_at_root() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("index.html"),
        "<!doctype html><p>hello page</p>",
    )
    .unwrap();
    std::fs::write(dir.path().join("sw.js"), "// worker").unwrap();
    let mut config = Config::embedded();
    config.web_dir = Some(dir.path().to_owned());
    let server = serve(config).await.unwrap();
    let page = client()
        .get(server.url())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("hello page"));
    let sw = client()
        .get(format!("{}/sw.js", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(sw.status(), StatusCode::OK);
    assert_eq!(sw.text().await.unwrap(), "// worker");
    // Unknown API paths stay JSON errors, not the page.
    let (status, _, body) = get_json(&server, "/api/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body);
    server.shutdown().await;
}

/// The web app's precompressed copies (`cargo xtask` writes `.br` and `.gz`
/// beside the wasm and the JS): each request gets the best encoding its
/// `Accept-Encoding` allows, with `Content-Encoding` and the file's own type;
/// without one, or refusing both, the file itself. Every answer says `Vary:
/// Accept-Encoding`. (Stand-in bytes: the real build is the journey's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_precompressed_copies_by_accept_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, bytes: &[u8]| std::fs::write(dir.path().join(name), bytes).unwrap();
    file("index.html", b"<!doctype html><p>page</p>");
    file("app_bg.wasm", b"\0asm identity bytes");
    file("app_bg.wasm.br", b"brotli bytes");
    file("app_bg.wasm.gz", b"gzip bytes");
    let mut config = Config::embedded();
    config.web_dir = Some(dir.path().to_owned());
    let server = serve(config).await.unwrap();
    let get = async |path: &str, accept: Option<&str>| {
        let mut request = client().get(format!("{}{path}", server.url()));
        if let Some(accept) = accept {
            request = request.header("accept-encoding", accept);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path} {accept:?}");
        let headers = response.headers().clone();
        let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
        let vary = header("vary").unwrap_or_default();
        assert!(
            vary.to_ascii_lowercase().contains("accept-encoding"),
            "{path} {accept:?}: vary {vary:?}"
        );
        let body = response.bytes().await.unwrap().to_vec();
        (header("content-encoding"), header("content-type"), body)
    };
    let wasm = |encoding: Option<&str>, body: &[u8]| {
        (
            encoding.map(str::to_owned),
            Some("application/wasm".to_owned()),
            body.to_vec(),
        )
    };
    for (accept, expected) in [
        (Some("br, gzip"), wasm(Some("br"), b"brotli bytes")),
        (
            Some("gzip, deflate, br, zstd"),
            wasm(Some("br"), b"brotli bytes"),
        ),
        (Some("gzip"), wasm(Some("gzip"), b"gzip bytes")),
        (Some("br;q=0, gzip"), wasm(Some("gzip"), b"gzip bytes")),
        (
            Some("br;q=0.5, gzip;q=1"),
            wasm(Some("gzip"), b"gzip bytes"),
        ),
        (None, wasm(None, b"\0asm identity bytes")),
        (Some("identity"), wasm(None, b"\0asm identity bytes")),
        (Some("zstd"), wasm(None, b"\0asm identity bytes")),
    ] {
        assert_eq!(
            get("/app_bg.wasm", accept).await,
            expected,
            "Accept-Encoding {accept:?}"
        );
    }
    // A file without copies goes out as it is, whatever the request accepts.
    let (encoding, _, body) = get("/", Some("br, gzip")).await;
    assert_eq!(encoding, None);
    assert_eq!(body, b"<!doctype html><p>page</p>");
    server.shutdown().await;
}

/// Two instances sharing one real redis-server and one S3: a PUT on A
/// invalidates B's in-process tier over the bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_on_one_instance_is_seen_by_another_through_redis() {
    let redis = RedisServer::start();
    let s3 = profile_server::EmbeddedS3::start().await.unwrap();
    let mut config = Config::embedded();
    config.redis_url = Some(redis.url());
    config.s3 = Some(s3.public_config());
    let a = serve(config.clone()).await.unwrap();
    let b = serve(config).await.unwrap();

    let first = get_json(&b, "/api/users/5/avatar").await.2;
    // B answers the next read from its own in-process tier.
    let again = get_json(&b, "/api/users/5/avatar").await.2;
    assert_eq!(again["url"], first["url"]);
    let report = get_json(&b, "/api/cache/report").await.2;
    assert_eq!(report["tiers"][0]["name"], "memory");
    assert_eq!(report["tiers"][0]["hits"], 1);
    assert_eq!(report["tiers"][1]["name"], "redis");

    let jpeg = [0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3, 4, 5].to_vec();
    let signed_on_b = b.app().urls().signatures();
    let (status, _) = put(&a, "/api/users/5/avatar", jpeg.clone(), "image/jpeg").await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // The bus is asynchronous: poll B until its next GET misses every tier
    // (its in-process tier dropped by the bus, Redis by A) and signs a new URL
    // (liveness bound, not a speed claim).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let now = loop {
        let now = get_json(&b, "/api/users/5/avatar").await.2;
        if b.app().urls().signatures() > signed_on_b {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B still serves its cached URL 10 s after the PUT on A"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (status, bytes) = fetch_bytes(now["url"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, jpeg, "B's new URL serves A's upload");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_two_hundred_users_with_distinct_pictures() {
    let server = start().await;
    let ids: Vec<String> = (1..=200).map(|i| i.to_string()).collect();
    let mut seen = std::collections::HashSet::new();
    for chunk in ids.chunks(100) {
        let (status, _, body) =
            get_json(&server, &format!("/api/avatars?ids={}", chunk.join(","))).await;
        assert_eq!(status, StatusCode::OK);
        for id in chunk {
            let (s3_status, bytes) = fetch_bytes(body[id]["url"].as_str().unwrap()).await;
            assert_eq!(s3_status, StatusCode::OK, "user {id}");
            assert_eq!(bytes, generate_png(id.parse().unwrap(), 96), "user {id}");
            assert!(seen.insert(bytes), "user {id}'s picture equals another's");
        }
    }
    assert_eq!(
        get_json(&server, "/api/users/201/avatar").await.0,
        StatusCode::NOT_FOUND
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_request_counts_follow_picture_downloads_and_uploads() {
    let server = start().await;
    let (status, headers, before) = get_json(&server, "/api/s3/requests").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["cache-control"], "no-store");
    // Seeding uploaded every user's picture.
    assert!(before["put_object"].as_u64().unwrap() >= 200, "{before}");
    let get0 = before["get_object"].as_u64().unwrap();

    // Resolving URLs reads no object.
    let body = get_json(&server, "/api/avatars?ids=1,2,3").await.2;
    let after_urls = get_json(&server, "/api/s3/requests").await.2;
    assert_eq!(after_urls["get_object"].as_u64().unwrap(), get0);
    // Each picture download is one GET, even a refused one.
    for id in ["1", "2"] {
        assert_eq!(
            fetch_bytes(body[id]["url"].as_str().unwrap()).await.0,
            StatusCode::OK
        );
    }
    let tampered = body["3"]["url"]
        .as_str()
        .unwrap()
        .replace("avatars/3", "avatars/4");
    assert_eq!(fetch_bytes(&tampered).await.0, StatusCode::FORBIDDEN);
    let after_gets = get_json(&server, "/api/s3/requests").await.2;
    assert_eq!(after_gets["get_object"].as_u64().unwrap(), get0 + 3);
    // An upload is one more PUT.
    let (status, _) = put(
        &server,
        "/api/users/5/avatar",
        generate_png(55, 8),
        "image/png",
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let after_put = get_json(&server, "/api/s3/requests").await.2;
    assert_eq!(
        after_put["put_object"].as_u64().unwrap(),
        before["put_object"].as_u64().unwrap() + 1
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_request_counts_are_404_with_external_s3() {
    let s3 = profile_server::EmbeddedS3::start().await.unwrap();
    let mut config = Config::embedded();
    config.users = 3;
    config.s3 = Some(s3.public_config());
    let server = serve(config).await.unwrap();
    let (status, _, body) = get_json(&server, "/api/s3/requests").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body);
    server.shutdown().await;
}

/// The comma-separated values of header `name`, trimmed.
fn header_list(headers: &reqwest::header::HeaderMap, name: &str) -> Vec<String> {
    headers[name]
        .to_str()
        .unwrap()
        .split(',')
        .map(|v| v.trim().to_owned())
        .collect()
}

/// What a page on another origin needs from the embedded S3's front: the
/// preflight of a request to a presigned URL, and on the presigned GET (and
/// PUT) itself `Access-Control-Allow-Origin` and the headers the page may
/// read, the answer otherwise as S3 gives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_s3_front_answers_cors_preflights_and_presigned_requests() {
    let server = start().await;
    let http = client();
    let origin = "http://localhost:8080";
    let (_, _, body) = get_json(&server, "/api/users/1/avatar").await;
    let url = body["url"].as_str().unwrap();
    let front = server.app().embedded_s3_endpoint().unwrap();
    assert!(url.starts_with(&front), "{url} is not on the front {front}");

    for method in ["GET", "PUT"] {
        let preflight = http
            .request(reqwest::Method::OPTIONS, url)
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", "content-type")
            .send()
            .await
            .unwrap();
        assert!(preflight.status().is_success(), "{}", preflight.status());
        let h = preflight.headers();
        assert_eq!(h["access-control-allow-origin"], "*");
        assert_eq!(
            header_list(h, "access-control-allow-methods"),
            ["GET", "HEAD", "PUT"]
        );
        assert_eq!(h["access-control-allow-headers"], "*");
    }

    let get = http.get(url).header("origin", origin).send().await.unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    let h = get.headers().clone();
    assert_eq!(h["access-control-allow-origin"], "*");
    assert_eq!(
        header_list(&h, "access-control-expose-headers"),
        ["etag", "content-type", "content-length"]
    );
    assert!(h.contains_key("etag"), "{h:?}");
    // The signed response override still reaches the browser.
    let cc = h["cache-control"].to_str().unwrap();
    assert!(cc.starts_with("private, max-age="), "{cc}");
    assert_eq!(get.bytes().await.unwrap(), generate_png(1, 96));

    // A presigned PUT straight to the front, then a presigned GET of it.
    let signer = server.app().urls().signer();
    let key = "cors/check.png";
    let put = signer.presign_put(key, Duration::from_secs(60)).unwrap();
    let png = generate_png(77, 8);
    let answer = http
        .put(&put.url)
        .header("origin", origin)
        .body(png.clone())
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "{}", answer.status());
    assert_eq!(answer.headers()["access-control-allow-origin"], "*");
    let get = signer.presign_get(key, Duration::from_secs(60)).unwrap();
    assert_eq!(fetch_bytes(&get.url).await, (StatusCode::OK, png));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_ok() {
    let server = start().await;
    let resp = client()
        .get(format!("{}/healthz", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "ok");
    server.shutdown().await;
}

#[test]
fn config_debug_never_shows_the_secret_key() {
    let mut config = Config::embedded();
    config.s3 = Some(presign::S3Config::new(
        "http://127.0.0.1:9000",
        "us-east-1",
        "avatars",
        presign::Credentials::new("key-id", "super-secret-value-123"),
    ));
    let shown = format!("{config:?}");
    assert!(shown.contains("avatars"), "{shown}");
    assert!(!shown.contains("super-secret-value-123"), "{shown}");
}

// ---------------------------------------------------------------------------
// Per-upload object keys, signed Cache-Control, the version sweeper.

/// Two uploads in the same second (the same millisecond, likely) give two
/// keys, two URLs and two ETags; `If-None-Match` with the old ETag gets 200 and
/// the new one; the URL's answer from S3 carries the signed, immutable
/// Cache-Control, which a client cannot edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upload_gets_its_own_key_url_and_etag() {
    let server = start().await;
    let first = get_json(&server, "/api/users/8/avatar").await.2;
    let a = generate_png(801, 16);
    let b = generate_png(802, 16);
    assert_eq!(
        put(&server, "/api/users/8/avatar", a.clone(), "image/png")
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let (_, headers_a, after_a) = get_json(&server, "/api/users/8/avatar").await;
    assert_eq!(
        put(&server, "/api/users/8/avatar", b.clone(), "image/png")
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let after_b = get_json(&server, "/api/users/8/avatar").await.2;
    let urls = [&first, &after_a, &after_b].map(|v| v["url"].as_str().unwrap().to_owned());
    let etags = [&first, &after_a, &after_b].map(|v| v["etag"].as_str().unwrap().to_owned());
    let path = |u: &str| u.split('?').next().unwrap().to_owned();
    assert!(
        path(&urls[0]) != path(&urls[1]) && path(&urls[1]) != path(&urls[2]),
        "{urls:?}"
    );
    assert!(etags[0] != etags[1] && etags[1] != etags[2], "{etags:?}");
    assert_eq!(headers_a["etag"].to_str().unwrap(), etags[1]);

    // Each URL keeps serving its own version's bytes: keys are never reused.
    assert_eq!(fetch_bytes(&urls[0]).await.1, generate_png(8, 96));
    assert_eq!(fetch_bytes(&urls[1]).await.1, a);
    assert_eq!(fetch_bytes(&urls[2]).await.1, b);

    // The old ETag is not current: 200 with the new body and ETag.
    let resp = client()
        .get(format!("{}/api/users/8/avatar", server.url()))
        .header("if-none-match", &etags[1])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["etag"].to_str().unwrap(), etags[2]);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["url"].as_str().unwrap(), urls[2]);

    // S3's answer carries the signed Cache-Control: private, immutable, for
    // the URL's life minus the 5-minute margin (55 min for a fresh URL).
    let resp = client().get(&urls[2]).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cc = resp.headers()["cache-control"].to_str().unwrap().to_owned();
    assert!(
        cc.starts_with("private, max-age=") && cc.ends_with(", immutable"),
        "{cc}"
    );
    let age: u64 = cc["private, max-age=".len()..cc.len() - ", immutable".len()]
        .parse()
        .unwrap();
    // The URL was signed for 60 min: the bytes may be kept its life minus the
    // margin, counted from signing.
    let margin = server.app().urls().margin();
    assert_eq!(
        Duration::from_secs(age),
        presign::DEFAULT_URL_VALIDITY - margin
    );
    let expires_at = Timestamp::from_unix_millis(after_b["expires_at"].as_u64().unwrap());
    assert!(expires_at.duration_since(SystemClock.now()) <= presign::DEFAULT_URL_VALIDITY);
    assert!(
        age > 50 * 60,
        "a fresh URL's bytes may be cached ~55 min, got {age}s"
    );
    // A client that lengthens the max-age breaks the signature.
    let edited = urls[2].replace("max-age%3D", "max-age%3D9");
    assert_ne!(edited, urls[2]);
    assert_eq!(fetch_bytes(&edited).await.0, StatusCode::FORBIDDEN);
    server.shutdown().await;
}

/// The background sweeper deletes a replaced version only once every URL to
/// it has expired: nothing before (on the manual clock), the old object after
/// the clock passes the URL validity plus the grace, never the current one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeper_deletes_replaced_versions_after_their_urls_expired() {
    let clock = cache_core::ManualClock::starting_at(SystemClock.now());
    let mut config = Config::embedded();
    config.users = 3;
    config.clock = std::sync::Arc::new(clock.clone());
    config.sweep_interval = Duration::from_millis(50);
    let server = serve(config).await.unwrap();
    let old = get_json(&server, "/api/users/2/avatar").await.2;
    let old_url = old["url"].as_str().unwrap().to_owned();
    let new_png = generate_png(2002, 16);
    assert_eq!(
        put(&server, "/api/users/2/avatar", new_png.clone(), "image/png")
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    // URLs signed now (the manual clock still reads real time, which S3
    // checks signing times against).
    let new_url = get_json(&server, "/api/users/2/avatar").await.2["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let other_url = get_json(&server, "/api/users/3/avatar").await.2["url"]
        .as_str()
        .unwrap()
        .to_owned();
    // Just short of validity + grace: the old URL may still be in use.
    clock.advance(presign::DEFAULT_URL_VALIDITY + presign::SWEEP_GRACE - Duration::from_secs(1));
    assert_eq!(server.app().sweep().await.unwrap(), 0);
    assert_eq!(
        fetch_bytes(&old_url).await,
        (StatusCode::OK, generate_png(2, 96))
    );
    // Past it: the background sweeper (every 50 ms) deletes the old version.
    clock.advance(Duration::from_secs(2));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fetch_bytes(&old_url).await.0 == StatusCode::OK {
        assert!(
            std::time::Instant::now() < deadline,
            "the old version was never swept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fetch_bytes(&old_url).await.0, StatusCode::NOT_FOUND);
    // The current version stays, and so do the other users' only versions.
    assert_eq!(fetch_bytes(&new_url).await, (StatusCode::OK, new_png));
    assert_eq!(
        fetch_bytes(&other_url).await,
        (StatusCode::OK, generate_png(3, 96))
    );
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// Deadlines and graceful shutdown, over raw sockets.

fn short_limits(body_ms: u64, request_ms: u64) -> Config {
    let mut config = Config::embedded();
    config.users = 3;
    config.limits = profile_server::Limits {
        header_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(body_ms),
        request_timeout: Duration::from_millis(request_ms),
    };
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_body_gets_408_json_and_its_socket_closed() {
    let server = serve(short_limits(300, 5_000)).await.unwrap();
    let png = generate_png(1, 16);
    let mut stream = raw::stalled_put(server.addr(), 5_000, &png[..20]).await;
    let answer = raw::read_to_close(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        json_body(&answer)["error"]
            .as_str()
            .unwrap()
            .contains("body"),
        "{answer}"
    );
    // The server still serves, and the picture was not touched.
    let (_, _, body) = get_json(&server, "/api/users/1/avatar").await;
    assert_eq!(
        fetch_bytes(body["url"].as_str().unwrap()).await.1,
        generate_png(1, 96)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_request_deadline_answers_408_json_too() {
    // The body may take 10 s, but the whole request only 300 ms.
    let server = serve(short_limits(10_000, 300)).await.unwrap();
    let mut stream = raw::stalled_put(server.addr(), 5_000, b"\x89PNG").await;
    let answer = raw::read_to_close(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        json_body(&answer)["error"]
            .as_str()
            .unwrap()
            .contains("request"),
        "{answer}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_headers_lose_their_connection() {
    use tokio::io::AsyncWriteExt;
    let server = serve(short_limits(5_000, 5_000)).await.unwrap();
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    stream
        .write_all(b"GET /api/users/1/avatar HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // No blank line: the headers never end. hyper closes the connection.
    let answer = raw::read_to_close(&mut stream).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    server.shutdown().await;
}

/// Shutdown while an upload is in flight: the listener closes at once, the
/// upload still completes (204), and a new instance on the same S3 serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_requests_in_flight_and_refuses_new_ones() {
    use tokio::io::AsyncWriteExt;
    let s3 = profile_server::EmbeddedS3::start().await.unwrap();
    let mut config = Config::embedded();
    config.users = 3;
    config.s3 = Some(s3.public_config());
    let server = serve(config).await.unwrap();
    let addr = server.addr();
    let png = generate_png(3003, 16);
    let mut stream = raw::stalled_put(addr, png.len(), &png[..10]).await;
    // Let the request reach its handler before the shutdown starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let shutdown = tokio::spawn(server.shutdown());
    // New connections are refused once the listener is closed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still accepting after shutdown began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !shutdown.is_finished(),
        "shutdown did not wait for the upload in flight"
    );
    stream.write_all(&png[10..]).await.unwrap();
    let answer = raw::read_to_close(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .unwrap()
        .unwrap();
    // The upload landed: a new instance on the same S3 serves it.
    let mut config = Config::embedded();
    config.users = 3;
    config.s3 = Some(s3.public_config());
    let again = serve(config).await.unwrap();
    let body = get_json(&again, "/api/users/1/avatar").await.2;
    assert_eq!(fetch_bytes(body["url"].as_str().unwrap()).await.1, png);
    again.shutdown().await;
}

/// The binary: SIGTERM while an upload is in flight → it finishes the upload,
/// prints that it stopped and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_shuts_down_gracefully_on_sigterm() {
    use std::io::BufRead;
    use tokio::io::AsyncWriteExt;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_profile-server"))
        .env("PORT", "0")
        .env("USERS", "3")
        .env_remove("REDIS_URL")
        .env_remove("S3_ENDPOINT")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("the server exited before listening")
            .unwrap();
        if let Some(rest) = line.strip_prefix("profile-server: open ") {
            break rest
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches('/')
                .to_owned();
        }
    };
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let png = generate_png(4004, 16);
    let mut stream = raw::stalled_put(addr, png.len(), &png[..10]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream.write_all(&png[10..]).await.unwrap();
    let answer = raw::read_to_close(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("SIGTERM")), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
}

/// A finished seed leaves a marker in the bucket: an instance started later
/// (a rolling restart) reads it instead of looking up every user, and seeds
/// again once the marker is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_instance_trusts_the_seed_marker_and_seeds_again_without_it() {
    use object_store::path::Path;
    use object_store::ObjectStoreExt;

    let s3 = profile_server::EmbeddedS3::start().await.unwrap();
    let mut config = Config::embedded();
    config.s3 = Some(s3.public_config());
    config.users = 12;
    let first = serve(config.clone()).await.unwrap();
    assert_eq!(
        s3.requests().put_object,
        12 + 1,
        "12 pictures and the marker"
    );
    let store = first.app().urls().store().clone();
    let marker = Path::from("profile-server/seeded-12");
    store.head(&marker).await.expect("the marker is written");
    first.shutdown().await;

    // User 7 loses its picture; with the marker, a new instance does not look.
    let seven = first_object_of(&store, "7").await;
    store.delete(&seven).await.unwrap();
    let second = serve(config.clone()).await.unwrap();
    assert_eq!(
        s3.requests().put_object,
        13,
        "no user looked up, none seeded"
    );
    second.shutdown().await;

    // Without the marker, the next start looks and gives user 7 a picture.
    store.delete(&marker).await.unwrap();
    let third = serve(config).await.unwrap();
    assert_eq!(
        s3.requests().put_object,
        13 + 2,
        "user 7 and the marker again"
    );
    assert!(third.app().urls().head("7").await.unwrap().is_some());
    third.shutdown().await;
}

/// The first object stored under `user`'s directory.
async fn first_object_of(
    store: &std::sync::Arc<dyn object_store::ObjectStore>,
    user: &str,
) -> object_store::path::Path {
    use futures_util::TryStreamExt;
    let all: Vec<_> = store.list(None).try_collect().await.unwrap();
    all.into_iter()
        .map(|m| m.location)
        .find(|p| {
            let key = p.to_string();
            key.split('/').rev().nth(1) == Some(user)
        })
        .unwrap_or_else(|| panic!("no object of user {user}"))
}
