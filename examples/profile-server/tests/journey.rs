//! The end-to-end journey in a real headless Chromium, driven over WebDriver
//! (fantoccini to `/usr/bin/chromedriver`; see `support/browser.rs`, and
//! `support/page.rs` for what the test reads from the page), against the real
//! server with its embedded S3 and 200 seeded users. Each step reads, from the
//! page's own monitor (`cacheMonitor.report()`), which tier served each of the
//! 50 pictures of the friend list, and checks that every image rendered
//! (`naturalWidth > 0`):
//!
//! 1. first visit: all from the network, and every tier then holds every
//!    picture; the page's wasm and JS came as their brotli copies;
//! 2. the list shown again in the same page: all from memory;
//! 3. a reload: all from LocalStorage, which keeps a small picture's bytes
//!    beside its URL, and a presigned URL loads from the browser's HTTP
//!    cache (S3 served no object request meanwhile); the page's
//!    monitor, opened, lists the five tiers with their hits and misses
//!    (zeros included), spreads its chart over its width, sits beside the
//!    list and closes;
//! 4. a reload 45+ minutes later (the page's clock hook): all from IndexedDB;
//! 5. offline (Chromium's network emulation), LocalStorage and IndexedDB
//!    cleared, a reload: the page from the service worker's cache, all 50
//!    pictures from the Cache API;
//! 6. an upload in tab 1: tab 1 and a second window show the new bytes, and no
//!    tier in either holds the old picture;
//!    Then another client (plain HTTP from this test) uploads a picture for
//!    another friend: both open windows show it without a reload, through
//!    the server's event stream (`/api/events`);
//! 7. a new build (its build id written into a copy of the app): the next load
//!    runs it, and its service worker replaces the old build's shell cache;
//! 8. the server's `/dashboard` after all that traffic: it draws the
//!    monitor's history from before it opened, then new lookups live, with
//!    distinct tick labels.
//!
//! A screenshot of each step is saved under `<target dir>/journey/` (paths
//! printed; the page's monitor as `page-monitor.png`, the dashboard as
//! `dashboard.png`), with `visits.json` (tier counts and whole-list time per
//! visit).
//!
//! Beside it, `the_page_weighs_at_most_250_kb_over_the_wire` fetches the
//! page's wasm and JS as Chromium asks for them (issue 21's budget), as gzip
//! only and with no `Accept-Encoding`.
//!
//! Needs the built web app: `PROFILE_WEB_DIR` (set by `cargo xtask test`, which
//! builds it first). Without it the test fails, it never skips. Compiled only
//! with the `journey` feature, so `cargo test --workspace` (which cannot build
//! the wasm app) leaves it to its own suite.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fantoccini::wd::WindowHandle;
use profile_server::avatar::generate_png;
use profile_server::{serve, Config};
use serde_json::{json, Value};
use support::browser::{bytes_of, journey_dir, poll, Browser, Chromedriver};

mod support;

const FRIENDS: usize = 50;
const CACHE_TIERS: [&str; 4] = ["memory", "local_storage", "indexed_db", "cache_api"];

fn web_dir() -> PathBuf {
    let hint = "run `cargo xtask test` (it builds examples/profile-web with wasm-bindgen into \
                target/profile-web and sets PROFILE_WEB_DIR), or `cargo xtask journey`";
    let dir = std::env::var_os("PROFILE_WEB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("PROFILE_WEB_DIR is not set: {hint}"));
    for file in [
        "index.html",
        "sw.js",
        "profile_web.js",
        "profile_web_bg.wasm",
    ] {
        assert!(
            dir.join(file).is_file(),
            "{} has no {file}: {hint}",
            dir.display()
        );
    }
    dir
}

/// Object requests the server's embedded S3 has served since it started.
async fn s3_get_objects(server: &str) -> u64 {
    let (_, _, counts) =
        support::get_json(&support::client(), &format!("{server}/api/s3/requests")).await;
    counts["get_object"]
        .as_u64()
        .unwrap_or_else(|| panic!("/api/s3/requests has no get_object count: {counts}"))
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// One visit's record for visits.json.
struct Visit {
    name: &'static str,
    list_ms: f64,
    tiers: BTreeMap<String, u64>,
}

/// Checks one showing of the list: 50 friends, each drawn (state ready, an
/// image with natural width > 0), each served by `tier` according to both the
/// monitor's report and the element. Returns the visit's record.
async fn check_visit(browser: &Browser, name: &'static str, tier: &str) -> Visit {
    let report = browser.report().await;
    let pictures = browser.pictures().await;
    let list = &report["list"];
    let served = list["pictures"].as_object().unwrap();
    println!("{name}: {} ; tiers {}", list["list_ms"], list["tiers"]);
    // The page monitor's view of each tier so far (mean of its timed reads).
    let per_tier: Vec<String> = report["tiers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            format!(
                "{} {}/{} {:.2} ms",
                t["tier"].as_str().unwrap_or("?"),
                t["hits"],
                t["misses"],
                t["avg_ms"].as_f64().unwrap_or(f64::NAN)
            )
        })
        .collect();
    println!(
        "{name}: page monitor (hits/misses, mean read) {}",
        per_tier.join(", ")
    );
    // Where the visit's time went: the tier lookup (the chain, the object
    // URL) and the rest until the image was decoded and drawn.
    let spread = |field: &str| {
        let mut ms: Vec<f64> = served.values().filter_map(|p| p[field].as_f64()).collect();
        ms.sort_by(f64::total_cmp);
        (ms.get(ms.len() / 2).copied(), ms.last().copied())
    };
    println!(
        "{name}: lookup ms (median, max) {:?}; shown ms (median, max) {:?}",
        spread("lookup_ms"),
        spread("shown_ms")
    );
    assert_eq!(
        served.len(),
        FRIENDS,
        "{name}: the monitor reports {} pictures: {list}",
        served.len()
    );
    assert_eq!(
        pictures.as_object().unwrap().len(),
        FRIENDS,
        "{name}: {pictures}"
    );
    for (user, p) in served {
        assert_eq!(
            p["tier"], tier,
            "{name}: user {user} was served by {} (monitor)",
            p["tier"]
        );
        let el = &pictures[user];
        assert_eq!(el["state"], "ready", "{name}: user {user}: {el}");
        assert_eq!(el["served_by"], tier, "{name}: user {user}: {el}");
        assert_eq!(
            el["rendered"],
            Value::Bool(true),
            "{name}: user {user}'s picture did not render: {el}"
        );
        assert!(p["natural_width"].as_u64().unwrap() > 0, "{name}: {p}");
    }
    assert_eq!(list["tiers"], json!({ tier: FRIENDS }), "{name}");
    Visit {
        name,
        list_ms: list["list_ms"].as_f64().unwrap(),
        tiers: serde_json::from_value(list["tiers"].clone()).unwrap(),
    }
}

/// How many of this page's fetches its service worker was woken for only to
/// pass them on to the network (the worker counts them per page). Its static
/// routes send those (the presigned picture URLs on S3's origin, the API)
/// past it, so a visit's count is 0.
async fn fetches_passed_through_worker(browser: &Browser) -> Value {
    browser
        .script_async(
            "const done = arguments[0];
             const sw = navigator.serviceWorker;
             if (!sw || !sw.controller) { done('no service worker controls the page'); return; }
             sw.addEventListener('message', function on(e) {
               if (e.data && e.data.type === 'page-source') {
                 sw.removeEventListener('message', on);
                 done(e.data.passed_on);
               }
             });
             sw.controller.postMessage({ type: 'page-source' });",
            vec![],
        )
        .await
}

fn write_visits(visits: &[Visit]) {
    let json: Vec<Value> = visits
        .iter()
        .map(|v| json!({"visit": v.name, "list_ms": v.list_ms, "tiers": v.tiers}))
        .collect();
    let path = journey_dir().join("visits.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("visits: {}", path.display());
}

/// In the current tab, no tier holds the old picture of `user`: a tier with
/// bytes holds `new`, a tier with only a URL holds none of `old_urls` (the
/// URLs the tiers held before the upload); and the memory tier holds it.
async fn assert_no_old_picture(
    browser: &Browser,
    tab: &str,
    user: &str,
    old_urls: &[String],
    new: &[u8],
) {
    // Another invalidation of the same upload (the server's event, another
    // window's forward) may have emptied memory again: wait for its redraw.
    let held = poll(async || {
        let held = browser.peek(user).await;
        let in_memory = held
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["tier"] == "memory" && !t["url"].is_null());
        if in_memory {
            Ok(held)
        } else {
            Err(held)
        }
    })
    .await
    .unwrap_or_else(|held| held);
    println!("{tab}: tiers for user {user}: {}", summarize_peek(&held));
    for t in held.as_array().unwrap() {
        assert!(t["error"].is_null(), "{tab}: {t}");
        let Some(url) = t["url"].as_str() else {
            continue; // Nothing held: fine.
        };
        match bytes_of(&t["bytes"]) {
            Some(bytes) => assert_eq!(bytes, new, "{tab}: tier {} holds other bytes", t["tier"]),
            None => assert!(
                !old_urls.iter().any(|u| u == url),
                "{tab}: tier {} still holds an old URL: {url}",
                t["tier"]
            ),
        }
    }
    let memory = held
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tier"] == "memory")
        .unwrap();
    assert!(!memory["url"].is_null(), "{tab}: memory lost user {user}");
}

fn summarize_peek(held: &Value) -> String {
    held.as_array()
        .map(|tiers| {
            tiers
                .iter()
                .map(|t| {
                    format!(
                        "{}={}",
                        t["tier"].as_str().unwrap_or("?"),
                        match (&t["url"], t["bytes"].as_array()) {
                            (Value::Null, _) => "-".to_owned(),
                            (_, Some(b)) => format!("{} bytes", b.len()),
                            (_, None) => "url".to_owned(),
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| held.to_string())
}

/// The tiers of the page's monitor, in the chain's order.
const MONITOR_ROWS: [&str; 5] = [
    "memory",
    "local_storage",
    "indexed_db",
    "cache_api",
    "network",
];

/// The page's monitor after a reload served by LocalStorage (so IndexedDB
/// and the Cache API have not been asked yet): opened with its button, it
/// lists the five tiers with hits and misses, zeros included; its chart
/// spreads the lookups over its whole width, with distinct tick labels; it
/// sits beside the list, not over it; its close button hides it. Its report
/// says what it covers and how latency was sampled. Screenshot:
/// `page-monitor.png`.
async fn check_page_monitor(browser: &Browser) {
    browser.click("#monitor-toggle").await;
    let state = browser
        .script(
            "const m = document.getElementById('monitor');
             const box = (e) => { const r = e.getBoundingClientRect();
               return { left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width }; };
             const rows = [...m.querySelectorAll('tbody tr')].map((tr) => ({
               tier: tr.dataset.tier, hits: Number(tr.dataset.hits), misses: Number(tr.dataset.misses),
               cells: [...tr.cells].map((c) => c.textContent) }));
             const svg = document.getElementById('latency-chart');
             const view = svg.viewBox.baseVal;
             const xs = [...svg.querySelectorAll('circle')].map((c) => Number(c.getAttribute('cx')));
             return {
               hidden: m.hidden, expanded: document.getElementById('monitor-toggle').getAttribute('aria-expanded'),
               rows, monitor: box(m), list: box(document.getElementById('friends')),
               body: document.getElementById('monitor-body').clientWidth,
               chart: { width: svg.getBoundingClientRect().width, view_width: view.width, points: xs.length,
                        min_x: Math.min(...xs), max_x: Math.max(...xs), scale: svg.dataset.scale,
                        y_ticks: [...svg.querySelectorAll('text.tick.y')].map((t) => t.textContent),
                        x_ticks: [...svg.querySelectorAll('text.tick.x')].map((t) => t.textContent) },
             };",
            vec![],
        )
        .await;
    println!("page monitor: {state}");
    assert_eq!(state["hidden"], false, "the button opens the monitor");
    assert_eq!(state["expanded"], "true");
    let rows = state["rows"].as_array().unwrap();
    let tiers: Vec<&str> = rows.iter().map(|r| r["tier"].as_str().unwrap()).collect();
    assert_eq!(tiers, MONITOR_ROWS, "a row per tier, in the chain's order");
    let row = |tier: &str| rows.iter().find(|r| r["tier"] == tier).unwrap();
    assert_eq!(row("local_storage")["hits"], FRIENDS, "{state}");
    assert_eq!(row("memory")["misses"], FRIENDS, "{state}");
    for tier in ["indexed_db", "cache_api", "network"] {
        let r = row(tier);
        assert_eq!(
            (r["hits"].as_u64(), r["misses"].as_u64()),
            (Some(0), Some(0)),
            "{tier}: {r}"
        );
        assert_eq!(r["cells"][1], "0", "{tier}: the zero is shown: {r}");
    }
    // The chart: as wide as the panel's content, the first lookup at the y
    // axis and the last at the right edge (not squeezed to one side).
    let chart = &state["chart"];
    let f = |v: &Value| v.as_f64().unwrap();
    assert_eq!(chart["points"], FRIENDS, "{chart}");
    assert!(
        f(&chart["width"]) >= f(&state["body"]) - 1.0,
        "the chart fills the panel: {state}"
    );
    assert!(
        f(&chart["max_x"]) - f(&chart["min_x"]) >= 0.8 * f(&chart["view_width"]),
        "the lookups spread over the chart's width: {chart}"
    );
    for axis in ["y_ticks", "x_ticks"] {
        assert_distinct(&chart[axis], &format!("page monitor {axis}"));
    }
    // Docked beside the list: the boxes do not meet.
    let (m, l) = (&state["monitor"], &state["list"]);
    let apart = f(&m["left"]) >= f(&l["right"])
        || f(&m["right"]) <= f(&l["left"])
        || f(&m["top"]) >= f(&l["bottom"])
        || f(&m["bottom"]) <= f(&l["top"]);
    assert!(apart, "the monitor covers the list: monitor {m}, list {l}");
    // What the report covers and how latency was sampled.
    let report = browser.report().await;
    let (period, sampling) = (&report["period"], &report["sampling"]);
    assert_eq!(period["covers"], "since the page loaded", "{period}");
    assert!(period["length_ms"].as_u64().is_some(), "{period}");
    assert_eq!(
        sampling["latency_timed_every"],
        cache_core::FAST_PATH_TIMED_EVERY,
        "{sampling}"
    );
    assert_eq!(sampling["counts"], "exact", "{sampling}");
    let listed: Vec<&str> = report["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tier"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed, CACHE_TIERS,
        "cacheMonitor.report() lists every tier"
    );
    let stated = browser
        .script(
            "return document.getElementById('monitor-sampling').textContent",
            vec![],
        )
        .await;
    assert!(
        stated
            .as_str()
            .unwrap()
            .contains(&format!("one in {}", cache_core::FAST_PATH_TIMED_EVERY)),
        "{stated}"
    );
    browser.screenshot("page-monitor").await;
    // Closed with its own button: hidden, and the list takes the room back.
    browser.click("#monitor-close").await;
    let closed = browser
        .script(
            "const m = document.getElementById('monitor');
             return { hidden: m.hidden, width: m.getBoundingClientRect().width,
                      list: document.getElementById('friends').getBoundingClientRect().width,
                      expanded: document.getElementById('monitor-toggle').getAttribute('aria-expanded') };",
            vec![],
        )
        .await;
    assert_eq!(closed["hidden"], true, "{closed}");
    assert_eq!(
        closed["width"], 0,
        "a closed monitor takes no room: {closed}"
    );
    assert_eq!(closed["expanded"], "false");
    assert!(
        f(&closed["list"]) > f(&l["right"]) - f(&l["left"]),
        "{closed} {l}"
    );
}

/// The labels of one axis (a JSON array of strings) are all different.
fn assert_distinct(labels: &Value, what: &str) {
    let labels: Vec<&str> = labels
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let mut sorted = labels.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        labels.len(),
        "{what}: repeated tick labels {labels:?}"
    );
    assert!(labels.len() >= 2, "{what}: {labels:?}");
}

/// Sum of the lookups the dashboard's `<row>-rate` chart drew (its points'
/// `data-n`).
const DRAWN_LOOKUPS: &str = "return [...document.querySelectorAll(
       `#${arguments[0]}-rate g[data-series=lookups] circle`)]
     .reduce((n, c) => n + Number(c.dataset.n), 0);";

/// The server's dashboard after traffic: as soon as it opens, it draws the
/// monitor's history from before it opened (the hour row holds every lookup
/// the server counted, the 15-minute row the ones made just before), then
/// follows new lookups live; every axis has distinct tick labels, latency
/// gets a log scale when it spans two orders of magnitude, and the page
/// states what the numbers cover and how latency was sampled. Screenshot:
/// `dashboard.png`.
async fn check_dashboard(browser: &Browser, origin: &str) {
    let http = support::client();
    let lookup = |n: u64| {
        let http = http.clone();
        async move {
            for user in 1..=n {
                let url = format!("{origin}/api/users/{user}/avatar");
                assert_eq!(
                    support::get_json(&http, &url).await.0,
                    reqwest::StatusCode::OK
                );
            }
        }
    };
    lookup(20).await;
    let before = support::get_json(&http, &format!("{origin}/api/cache/report"))
        .await
        .2;
    let counted = before["requests"].as_u64().unwrap();
    browser.goto(&format!("{origin}/dashboard")).await;
    browser
        .wait_for(
            "the dashboard to load the history",
            "return !!window.dashboard && window.dashboard.loaded",
            vec![],
        )
        .await;
    let first = browser
        .script("return window.dashboard.first", vec![])
        .await;
    println!("dashboard first render: {first}; the server had counted {counted}");
    // The journey runs in well under an hour: the hour row holds it all.
    let n = |v: &Value| v.as_u64().unwrap();
    assert!(n(&first["long"]["requests"]) >= counted, "{first}");
    assert!(n(&first["recent"]["requests"]) >= 20, "{first}");
    for row in ["recent", "long"] {
        assert!(n(&first[row]["points"]) > 0, "{row}: {first}");
        let drawn = browser.script(DRAWN_LOOKUPS, vec![json!(row)]).await;
        assert!(
            n(&drawn) >= n(&first[row]["requests"]),
            "{row}: drew {drawn}"
        );
    }
    // Lookups after it opened are followed live.
    let seen = n(&browser.script(DRAWN_LOOKUPS, vec![json!("recent")]).await);
    lookup(10).await;
    browser
        .wait_for(
            "the dashboard to draw the lookups made after it opened",
            &format!("{} >= arguments[1]", DRAWN_LOOKUPS.trim_end_matches(';')),
            vec![json!("recent"), json!(seen + 10)],
        )
        .await;
    let axes = browser
        .script(
            "const out = {};
             for (const svg of document.querySelectorAll('svg.chart')) out[svg.id] = {
               scale: svg.dataset.scale,
               y: [...svg.querySelectorAll('text.tick.y')].map((t) => t.textContent),
               x: [...svg.querySelectorAll('text.tick.x')].map((t) => t.textContent) };
             const h = window.dashboard.state.recent;
             const ms = h.points.flatMap((p) => [...Object.values(p.tiers).map((t) => t.average_ms),
                                                 p.origin.average_ms]).filter((v) => v > 0);
             out.latency_span = ms.length ? Math.max(...ms) / Math.min(...ms) : 0;
             out.close = window.dashboard.axis('latency', [0.0012, 0.0021, 0.0017]).ticks.map((t) => t.label);
             out.wide = window.dashboard.axis('latency', [0.004, 0.3, 180]);
             out.summary = document.getElementById('summary').textContent;
             out.sampling = document.getElementById('sampling').textContent;
             return out;",
            vec![],
        )
        .await;
    println!("dashboard axes: {axes}");
    for id in [
        "recent-rate",
        "recent-hit",
        "recent-latency",
        "recent-p99",
        "long-rate",
        "long-hit",
        "long-latency",
        "long-p99",
    ] {
        assert_distinct(&axes[id]["y"], &format!("{id} y"));
        assert_distinct(&axes[id]["x"], &format!("{id} x"));
    }
    let span = axes["latency_span"].as_f64().unwrap();
    assert_eq!(
        axes["recent-latency"]["scale"],
        if span >= 100.0 { "log" } else { "linear" },
        "latencies spanning {span:.0}x"
    );
    // Labels of values that once all read 0.001 or 0.002.
    assert_distinct(&axes["close"], "close latencies");
    assert_eq!(axes["close"][1], "0.5 µs");
    assert_eq!(axes["wide"]["scale"], "log");
    assert_distinct(
        &json!(axes["wide"]["ticks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["label"].clone())
            .collect::<Vec<_>>()),
        "wide latencies",
    );
    assert!(
        axes["summary"]
            .as_str()
            .unwrap()
            .contains("lookups since start"),
        "{axes}"
    );
    assert!(
        axes["sampling"].as_str().unwrap().contains(&format!(
            "one in {} per thread",
            cache_core::FAST_PATH_TIMED_EVERY
        )),
        "{axes}"
    );
    // Both rows in one picture.
    browser.resize(1280, 1250).await;
    browser.screenshot("dashboard").await;
}

/// `body` decoded by Debian's `brotli` or `gzip` (`cargo xtask setup`
/// installs both).
fn decode(program: &str, body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .args(["-d", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): sudo apt-get install -y {program}")
        });
    let mut stdin = child.stdin.take().unwrap();
    let input = body.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{program} -d failed");
    out.stdout
}

/// Issue 21's budget for the page's own weight: every wasm and JS file of the
/// built app (wasm-bindgen's module and snippets, the wasm, the service
/// worker), fetched with the `Accept-Encoding` Chromium sends, weighs at most
/// 250 KB over the wire (bodies; headers not counted). The wasm and the
/// module come brotli-encoded, their bodies being the build's `.br` copies,
/// which decode to the files; a client that accepts only gzip gets the `.gz`
/// copies, and one that sends no `Accept-Encoding` the files themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_weighs_at_most_250_kb_over_the_wire() {
    use support::weight::{fetch_page, BUDGET, CHROMIUM_ACCEPTS};
    let dir = web_dir();
    let mut config = Config::embedded();
    config.web_dir = Some(dir.clone());
    let server = serve(config).await.unwrap();
    let origin = server.url();
    let file = |name: &str| std::fs::read(dir.join(name)).unwrap();

    let (plain, plain_total) = fetch_page(&dir, &origin, None).await;
    for s in &plain {
        assert_eq!(s.encoding, None, "{}: no Accept-Encoding", s.file);
        assert!(s.body == file(&s.file), "{}: not the file's bytes", s.file);
    }
    let mut totals = Vec::new();
    for (accept, encoding, program) in
        [(CHROMIUM_ACCEPTS, "br", "brotli"), ("gzip", "gzip", "gzip")]
    {
        let suffix = if encoding == "br" { "br" } else { "gz" };
        let (served, total) = fetch_page(&dir, &origin, Some(accept)).await;
        for s in &served {
            let copy = format!("{}.{suffix}", s.file);
            if dir.join(&copy).is_file() {
                assert_eq!(
                    s.encoding.as_deref(),
                    Some(encoding),
                    "{} ({accept})",
                    s.file
                );
                assert!(s.body == file(&copy), "{}: not {copy}", s.file);
                assert!(
                    decode(program, &s.body) == file(&s.file),
                    "{copy} does not decode to {}",
                    s.file
                );
            } else {
                assert_eq!(s.encoding, None, "{} ({accept})", s.file);
                assert!(s.body == file(&s.file), "{}: not the file's bytes", s.file);
            }
        }
        for heavy in ["profile_web_bg.wasm", "profile_web.js"] {
            let s = served.iter().find(|s| s.file == heavy).unwrap();
            assert_eq!(
                s.encoding.as_deref(),
                Some(encoding),
                "{heavy} is not precompressed: build the app with `cargo xtask journey`"
            );
        }
        let files: Vec<String> = served
            .iter()
            .map(|s| format!("{} {} B", s.file, s.body.len()))
            .collect();
        println!(
            "page weight, Accept-Encoding {accept:?}: {total} B ({})",
            files.join(", ")
        );
        totals.push(total);
    }
    println!("page weight, no Accept-Encoding: {plain_total} B");
    assert!(
        totals[0] <= BUDGET,
        "the page's wasm + JS weigh {} B over the wire as Chromium asks for them, over the budget of {BUDGET} B",
        totals[0]
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journey_five_visits_then_upload_in_two_windows() {
    // A copy of the built app, so step 7 can put a "new build" in its place.
    let site = tempfile::tempdir().unwrap();
    copy_dir(&web_dir(), site.path());
    let mut config = Config::embedded();
    config.web_dir = Some(site.path().to_path_buf());
    config.users = 200;
    let server = serve(config).await.unwrap();
    let origin = server.url();
    let page = format!("{origin}/");

    let driver = Chromedriver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let browser = Browser::start(&driver, profile.path()).await;
    let mut visits = Vec::new();

    // 1. First visit: all 50 from the network; every tier then holds them.
    browser.goto(&page).await;
    browser.wait_list("the first visit", 1).await;
    visits.push(check_visit(&browser, "first", "network").await);
    // The page itself came compressed: Chromium received the build's brotli
    // copies of the wasm and its module and ran what they decode to.
    let loaded = browser.loaded_code().await;
    println!(
        "first visit: {:.0} ms from the navigation to the 50th picture; wasm and JS (bytes over the wire, decoded): {loaded:?}",
        browser.list_since_navigation_ms().await
    );
    for file in ["profile_web_bg.wasm", "profile_web.js"] {
        let size = |name: &str| std::fs::metadata(site.path().join(name)).unwrap().len();
        assert_eq!(
            loaded.get(file),
            Some(&(size(&format!("{file}.br")), size(file))),
            "first visit: {file} did not come as its brotli copy: {loaded:?}"
        );
    }
    let report = browser.report().await;
    let users: Vec<String> = report["list"]["pictures"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let held = browser.tiers_holding(&users).await;
    println!("first visit: tiers holding the 50 pictures: {held:?}");
    for tier in CACHE_TIERS {
        assert_eq!(
            held.get(tier),
            Some(&FRIENDS),
            "first visit: {tier}: {held:?}"
        );
    }
    let first = &users[0];
    let first_id: u64 = first.parse().unwrap();
    // The presigned URL of the first friend's picture, as LocalStorage holds it.
    let first_url = browser
        .peek(first)
        .await
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tier"] == "local_storage")
        .and_then(|t| t["url"].as_str().map(str::to_owned))
        .unwrap();
    assert_eq!(
        browser.image_bytes(first).await,
        generate_png(first_id, 96),
        "user {first}'s picture is its generated one"
    );
    browser
        .wait_for(
            "the service worker to control the page",
            "return !!navigator.serviceWorker.controller",
            vec![],
        )
        .await;
    browser.screenshot("1-first-visit").await;

    // 2. Same page, the list shown again: all from memory. The monitor's
    // overlay is open for the screenshot: its chart has points for both tiers.
    browser
        .script("document.getElementById('show-again').click()", vec![])
        .await;
    browser.wait_list("the list shown again", 2).await;
    visits.push(check_visit(&browser, "same_session", "memory").await);
    browser.script("cacheMonitor.toggle()", vec![]).await;
    let chart = browser
        .script(
            "const out = {};
             for (const g of document.querySelectorAll('#latency-chart g.series'))
               out[g.dataset.tier] = g.querySelectorAll('circle').length;
             out.rows = document.querySelectorAll('#monitor tbody tr').length;
             return out;",
            vec![],
        )
        .await;
    println!("monitor chart points: {chart}");
    assert!(
        chart["network"].as_u64().unwrap() >= FRIENDS as u64,
        "{chart}"
    );
    assert!(
        chart["memory"].as_u64().unwrap() >= FRIENDS as u64,
        "{chart}"
    );
    let report = browser.report().await;
    let memory = report["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tier"] == "memory")
        .unwrap();
    assert!(
        memory["hits"].as_u64().unwrap() >= FRIENDS as u64,
        "{memory}"
    );
    assert!(memory["bytes_saved"].as_u64().unwrap() > 0, "{memory}");
    browser.screenshot("2-same-session").await;

    // The element in plain HTML, outside the list: it draws its user, and
    // draws again when `user-id` changes.
    browser
        .script(
            "document.body.insertAdjacentHTML('beforeend',
               '<cached-profile-picture id=\"probe\" user-id=\"2\" size=\"40\" alt=\"probe\">' +
               '</cached-profile-picture>')",
            vec![],
        )
        .await;
    for user in [2u64, 6] {
        browser
            .script(
                "document.getElementById('probe').setAttribute('user-id', arguments[0])",
                vec![json!(user.to_string())],
            )
            .await;
        browser
            .wait_for(
                &format!("the probe element to draw user {user}"),
                "const el = document.getElementById('probe');
                 const img = el.querySelector('img');
                 return el.dataset.state === 'ready' && img.naturalWidth > 0
                     && cacheMonitor.report().pictures[arguments[0]] !== undefined;",
                vec![json!(user.to_string())],
            )
            .await;
        let bytes = browser
            .script_async(
                "const done = arguments[0];
                 fetch(document.querySelector('#probe img').src).then(r => r.arrayBuffer())
                   .then(b => done(Array.from(new Uint8Array(b)))).catch(e => done('error: ' + e));",
                vec![],
            )
            .await;
        assert_eq!(
            bytes_of(&bytes),
            Some(generate_png(user, 96)),
            "probe, user {user}"
        );
        let alt = browser
            .script("return document.querySelector('#probe img').alt", vec![])
            .await;
        assert_eq!(alt, "probe");
    }
    browser
        .script("document.getElementById('probe').remove()", vec![])
        .await;

    // 3. Reload: all from LocalStorage, which keeps a small picture's bytes
    // beside its URL, so S3 serves no object meanwhile.
    let s3_before = s3_get_objects(&origin).await;
    browser.refresh().await;
    browser.wait_list("the reload", 1).await;
    visits.push(check_visit(&browser, "reload", "local_storage").await);
    let pictures = browser.pictures().await;
    for (user, p) in pictures.as_object().unwrap() {
        let src = p["src"].as_str().unwrap();
        assert!(
            src.starts_with("data:image/png;base64,"),
            "reload: user {user} shows {src}, not the bytes LocalStorage keeps"
        );
    }
    // A picture's presigned URL itself (what the page shows for a picture
    // over LocalStorage's byte limit) loads from the browser's HTTP cache:
    // the first visit fetched it with the signed `response-cache-control`.
    let loaded = browser
        .script_async(
            "const [user, done] = arguments;
             fetch('/api/users/' + user + '/avatar').then(r => r.json()).then(({ url }) => {
               const img = new Image();
               img.crossOrigin = 'anonymous';
               img.onload = () => done(img.naturalWidth);
               img.onerror = () => done('error loading ' + url);
               img.src = url;
             }).catch(e => done('error: ' + e));",
            vec![json!(first)],
        )
        .await;
    assert!(
        loaded.as_u64().is_some_and(|w| w > 0),
        "reload: the presigned URL did not load: {loaded}"
    );
    let s3_after = s3_get_objects(&origin).await;
    assert_eq!(
        s3_after,
        s3_before,
        "reload: S3 served {} object requests; LocalStorage and the HTTP cache should have",
        s3_after - s3_before
    );
    assert_eq!(
        fetches_passed_through_worker(&browser).await,
        json!(0),
        "reload: the service worker was woken for requests it only passed on \
         (its static routes should send them straight to the network)"
    );
    browser.screenshot("3-reload").await;
    check_page_monitor(&browser).await;

    // 4. A reload 46 minutes later (the page's clock hook): LocalStorage's
    // URLs expired (45 min), IndexedDB still holds the bytes (7 days).
    browser.goto(&format!("{page}?clock-offset-min=46")).await;
    browser.wait_list("the reload 46 minutes later", 1).await;
    assert_eq!(browser.report().await["clock_offset_ms"], 46 * 60_000);
    visits.push(check_visit(&browser, "later", "indexed_db").await);
    browser.screenshot("4-later").await;

    // 5. Offline: clear LocalStorage and IndexedDB, cut the network in
    // Chromium, reload: the page from the service worker's cache, the
    // pictures from the Cache API.
    let cleared = browser
        .script_async(
            "const done = arguments[0];
             localStorage.clear();
             const req = indexedDB.deleteDatabase('profile-pictures');
             req.onsuccess = () => done('ok');
             req.onerror = () => done('error: ' + req.error);
             req.onblocked = () => {};",
            vec![],
        )
        .await;
    assert_eq!(cleared, "ok", "clearing IndexedDB");
    let offline = browser.go_offline(&origin).await;
    browser.refresh().await;
    browser.wait_list("the offline reload", 1).await;
    visits.push(check_visit(&browser, "offline", "cache_api").await);
    browser
        .wait_for(
            "the service worker to say how it served the page",
            "return !!document.body.dataset.pageSource",
            vec![],
        )
        .await;
    let source = browser
        .script("return document.body.dataset.pageSource", vec![])
        .await;
    assert_eq!(source, "sw-cache", "offline: the page itself");
    // Plain HTML can use the service worker's picture route offline too.
    let via_sw = browser
        .script_async(
            "const [user, done] = arguments;
             fetch('/pictures/' + user).then(r => r.arrayBuffer())
               .then(b => done(Array.from(new Uint8Array(b)))).catch(e => done('error: ' + e));",
            vec![json!(first)],
        )
        .await;
    assert_eq!(bytes_of(&via_sw), Some(generate_png(first_id, 96)));
    browser.screenshot("5-offline").await;
    browser.go_online(offline).await;
    write_visits(&visits);

    // 6. Upload in tab 1 with a second window open on the page.
    browser.goto(&page).await;
    browser.wait_list("tab 1 back online", 1).await;
    browser
        .wait_for(
            "the service worker to say how it served the page",
            "return !!document.body.dataset.pageSource",
            vec![],
        )
        .await;
    assert_eq!(
        browser
            .script("return document.body.dataset.pageSource", vec![])
            .await,
        "sw-network",
        "back online, the service worker fetches the page"
    );
    let tab1 = browser.window().await;
    let tab2 = browser.new_window().await;
    browser.switch_to(&tab2).await;
    browser.goto(&page).await;
    browser.wait_list("the second window", 1).await;
    let renders_before = browser.report().await["pictures"][first]["renders"]
        .as_u64()
        .unwrap();
    // Every URL the tiers hold now (either window's: they share all but
    // memory); the loop ends in tab 1.
    let mut old_urls: Vec<String> = vec![first_url];
    for handle in [&tab2, &tab1] {
        browser.switch_to(handle).await;
        let held = browser.peek(first).await;
        old_urls.extend(
            held.as_array()
                .unwrap()
                .iter()
                .filter_map(|t| t["url"].as_str().map(str::to_owned)),
        );
    }
    println!("URLs of user {first} before the upload: {old_urls:?}");
    let tab1_renders = browser.report().await["pictures"][first]["renders"]
        .as_u64()
        .unwrap();

    let new_picture = generate_png(1_000_000 + first_id, 64);
    assert_ne!(new_picture, generate_png(first_id, 96));
    let file = profile.path().join("new-avatar.png");
    std::fs::write(&file, &new_picture).unwrap();
    browser
        .script(
            "document.getElementById('upload-user').value = arguments[0]",
            vec![json!(first)],
        )
        .await;
    browser.choose_file("#upload-file", &file).await;
    browser.click("#upload-button").await;
    browser
        .wait_for(
            "the upload to finish",
            "return document.getElementById('upload-status').textContent
                 === 'uploaded a new picture for user ' + arguments[0]",
            vec![json!(first)],
        )
        .await;
    let drawn_again = "const [user, n] = arguments;
         const p = cacheMonitor.report().pictures[user];
         const el = document.querySelector(`#friends cached-profile-picture[user-id=\"${user}\"]`);
         return !!p && p.renders > n && el.dataset.state === 'ready';";
    browser
        .wait_for(
            "tab 1 to draw the new picture",
            drawn_again,
            vec![json!(first), json!(tab1_renders)],
        )
        .await;
    browser
        .wait_for_image("tab 1 shows the new picture", first, &new_picture)
        .await;
    println!("tab 1: event stream {}", browser.server_events().await);
    assert_no_old_picture(&browser, "tab 1", first, &old_urls, &new_picture).await;
    browser.screenshot("6-upload-tab1").await;

    browser.switch_to(&tab2).await;
    browser
        .wait_for(
            "the second window to draw the new picture",
            drawn_again,
            vec![json!(first), json!(renders_before)],
        )
        .await;
    browser
        .wait_for_image(
            "the second window shows the new picture",
            first,
            &new_picture,
        )
        .await;
    assert_no_old_picture(&browser, "window 2", first, &old_urls, &new_picture).await;
    browser.screenshot("6-upload-window2").await;

    // Another client uploads through the API while both windows are open:
    // each shows the new picture without a reload, told by the server's
    // event stream (window 1 may also hear it from window 2's forward).
    let second = &users[1];
    let second_id: u64 = second.parse().unwrap();
    let mut before: Vec<(WindowHandle, String, u64)> = Vec::new();
    let mut old_urls: Vec<String> = Vec::new();
    for handle in [&tab1, &tab2] {
        browser.switch_to(handle).await;
        browser
            .wait_for(
                "the page's event stream to be open",
                "const s = cacheMonitor.serverEvents();
                 return !!s && s.open && s.last_event_id !== null;",
                vec![],
            )
            .await;
        // Gone after a reload: proves there was none.
        browser
            .script("window.__journeyNoReload = 'still here'", vec![])
            .await;
        let src = browser.pictures().await[second]["src"]
            .as_str()
            .unwrap()
            .to_owned();
        let renders = browser.report().await["pictures"][second]["renders"]
            .as_u64()
            .unwrap_or(0);
        old_urls.extend(
            browser
                .peek(second)
                .await
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|t| t["url"].as_str().map(str::to_owned)),
        );
        before.push((handle.clone(), src, renders));
    }
    assert!(!old_urls.is_empty(), "the tiers held user {second} before");
    let other_picture = generate_png(2_000_000 + second_id, 64);
    let (status, body) = support::put(
        &support::client(),
        &format!("{origin}/api/users/{second}/avatar"),
        other_picture.clone(),
        "image/png",
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::NO_CONTENT, "{body}");
    for (n, (handle, src, renders)) in before.iter().enumerate() {
        let tab = format!("window {}", n + 1);
        browser.switch_to(handle).await;
        browser
            .wait_for(
                &format!("{tab} to draw user {second}'s picture uploaded by another client"),
                drawn_again,
                vec![json!(second), json!(renders)],
            )
            .await;
        browser
            .wait_for_image(
                &format!("{tab} shows the picture another client uploaded"),
                second,
                &other_picture,
            )
            .await;
        let marker = browser
            .script("return window.__journeyNoReload || null", vec![])
            .await;
        assert_eq!(marker, "still here", "{tab} was reloaded");
        let now = browser.pictures().await[second]["src"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_ne!(&now, src, "{tab}: the element shows a new image URL");
        assert_no_old_picture(&browser, &tab, second, &old_urls, &other_picture).await;
        let events = browser.server_events().await;
        println!("{tab}: event stream {events}");
        assert!(
            events["invalidations"].as_u64().unwrap() >= 1,
            "{tab}: {events}"
        );
        browser
            .screenshot(&format!("6-upload-by-another-client-window{}", n + 1))
            .await;
    }

    // 7. A new build is deployed: the next load runs it, and its service
    // worker takes over at once and deletes the old build's shell cache.
    let old_build = browser
        .script(
            "return document.getElementById('build').textContent",
            vec![],
        )
        .await;
    let old_build = old_build.as_str().unwrap().to_owned();
    assert!(
        browser
            .shell_caches()
            .await
            .contains(&format!("profile-web-shell-{old_build}")),
        "the shell cache is named after the build"
    );
    let new_build = format!("{old_build}-next");
    for file in ["index.html", "sw.js"] {
        let path = site.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&old_build), "{file} names its build");
        std::fs::write(&path, text.replace(&old_build, &new_build)).unwrap();
        // As a new build would: no compressed copy of the old file stays.
        for copy in ["br", "gz"] {
            let _ = std::fs::remove_file(site.path().join(format!("{file}.{copy}")));
        }
    }
    browser.goto(&page).await;
    browser.wait_list("the load after a new build", 1).await;
    let build = browser
        .script(
            "return document.getElementById('build').textContent",
            vec![],
        )
        .await;
    assert_eq!(
        build,
        new_build.as_str(),
        "the next load runs the new build"
    );
    let replaced = poll(async || {
        let caches = browser.shell_caches().await;
        if caches == [format!("profile-web-shell-{new_build}")] {
            Ok(())
        } else {
            Err(caches)
        }
    })
    .await;
    if let Err(caches) = replaced {
        panic!("the new service worker did not replace the old shell cache: {caches:?}");
    }
    browser
        .wait_for(
            "the new service worker to control the page",
            "return !!navigator.serviceWorker.controller
                 && navigator.serviceWorker.controller.state === 'activated'",
            vec![],
        )
        .await;
    browser.screenshot("7-new-build").await;

    // 8. The server's dashboard, after the traffic of the visits above.
    check_dashboard(&browser, &origin).await;

    browser.close().await;
    server.shutdown().await;
}
