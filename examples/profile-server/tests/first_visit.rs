//! The first visit of the page beside the previous build's: the browser
//! suite of `cargo xtask bench` runs it (never `cargo xtask test`: it
//! measures, it asserts no time). Two servers, one per build: the shipped
//! build (`PROFILE_WEB_DIR`: the `web` profile, wasm-opt, precompressed wasm
//! and JS) and the build as it was before (`PROFILE_WEB_BASELINE_DIR`: the
//! release profile, no wasm-opt, nothing precompressed, so served
//! uncompressed). Each round makes one first visit of each build in a new
//! headless Chromium with an empty profile (nothing cached, no service
//! worker), the order alternating between rounds, on loopback and then over
//! Chromium's emulation of a slow mobile link (150 ms round trip, 1.6 Mbit/s
//! down, 750 kbit/s up: Lighthouse's mobile throttling). A visit is timed
//! from the navigation to the friend list's 50th picture drawn
//! (`performance.now()` when its image was decoded), so the page's own
//! download, compile and start count.
//!
//! Writes `<target dir>/journey/first_visit.json`: the weight of each
//! build's wasm + JS as Chromium asks for them (`Accept-Encoding: gzip,
//! deflate, br, zstd`) and every visit; `bench-report browser` turns it into
//! rows. Rounds: 7, or 3 with `BENCH_QUICK=1`. Without both directories the
//! test fails; it never skips.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use profile_server::{serve, Config};
use serde_json::{json, Value};
use support::browser::{journey_dir, Browser, Chromedriver};
use support::weight::{fetch_page, CHROMIUM_ACCEPTS};

mod support;

fn dir(var: &str) -> PathBuf {
    let dir = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} is not set: run `cargo xtask bench --only browser`, which builds both")
    });
    assert!(
        dir.join("index.html").is_file(),
        "{} holds no built app",
        dir.display()
    );
    dir
}

/// A link Chromium emulates: latency (ms), download and upload (bytes/s).
type Link = (f64, f64, f64);

/// Chromium's network for a visit: `None` for loopback as it is.
const NETWORKS: [(&str, Option<Link>); 2] = [
    ("loopback", None),
    (
        "150 ms RTT, 1.6 Mbit/s down",
        Some((150.0, 1.6e6 / 8.0, 750e3 / 8.0)),
    ),
];

/// One first visit of `page` in a new Chromium: milliseconds from the
/// navigation to the 50th picture, the list's own time, and the page's wasm
/// and JS bytes over the wire as Chromium counted them.
async fn first_visit(driver: &Chromedriver, page: &str, network: Option<Link>) -> (f64, f64, u64) {
    let profile = tempfile::tempdir().unwrap();
    let browser = Browser::start(driver, profile.path()).await;
    if let Some((latency, down, up)) = network {
        browser.cdp("Network.enable", json!({})).await;
        browser
            .cdp(
                "Network.emulateNetworkConditions",
                json!({"offline": false, "latency": latency,
                       "downloadThroughput": down, "uploadThroughput": up}),
            )
            .await;
    }
    browser.goto(page).await;
    browser.wait_list("a first visit", 1).await;
    let report = browser.report().await;
    assert_eq!(
        report["list"]["tiers"],
        json!({"network": 50}),
        "a first visit loads every picture from the network"
    );
    let list_ms = report["list"]["list_ms"].as_f64().unwrap();
    let page_ms = browser.list_since_navigation_ms().await;
    let wire = browser
        .loaded_code()
        .await
        .values()
        .map(|(wire, _)| wire)
        .sum();
    browser.close().await;
    (page_ms, list_ms, wire)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_visit_beside_the_previous_build() {
    let builds = [
        ("shipped", dir("PROFILE_WEB_DIR")),
        ("as_before", dir("PROFILE_WEB_BASELINE_DIR")),
    ];
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let rounds = if quick { 3 } else { 7 };
    let mut servers = Vec::new();
    let mut weight = serde_json::Map::new();
    for (name, dir) in &builds {
        let mut config = Config::embedded();
        config.web_dir = Some(dir.clone());
        let server = serve(config).await.unwrap();
        let (_, bytes) = fetch_page(dir, &server.url(), Some(CHROMIUM_ACCEPTS)).await;
        println!("{name}: the page's wasm + JS weigh {bytes} B as Chromium asks for them");
        weight.insert((*name).to_owned(), json!(bytes));
        servers.push(server);
    }
    let driver = Chromedriver::start().await;
    // One visit of each unrecorded: the servers' caches and the files' pages.
    for server in &servers {
        first_visit(&driver, &format!("{}/", server.url()), None).await;
    }
    let mut visits: Vec<Value> = Vec::new();
    for round in 0..rounds {
        for (network, conditions) in NETWORKS {
            let mut order = [0, 1];
            if round % 2 == 1 {
                order.reverse();
            }
            for b in order {
                let page = format!("{}/", servers[b].url());
                let (page_ms, list_ms, wire) = first_visit(&driver, &page, conditions).await;
                let build = builds[b].0;
                println!(
                    "round {round}, {network}, {build}: {page_ms:.0} ms from the navigation \
                     ({list_ms:.0} ms from the list's start), {wire} B of wasm + JS over the wire"
                );
                visits.push(json!({
                    "round": round, "network": network, "build": build,
                    "page_ms": page_ms, "list_ms": list_ms, "wire_bytes": wire,
                }));
            }
        }
    }
    let path = journey_dir().join("first_visit.json");
    let out = json!({"weight": weight, "visits": visits});
    std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap()).unwrap();
    println!("first visits: {}", path.display());
    for server in servers {
        server.shutdown().await;
    }
}
