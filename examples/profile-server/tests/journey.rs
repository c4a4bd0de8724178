//! The end-to-end journey in a real headless Chromium, driven over the W3C
//! WebDriver protocol (plain JSON to `/usr/bin/chromedriver`), against the real
//! server with its embedded S3 and 200 seeded users. Each step reads, from the
//! page's own monitor (`cacheMonitor.report()`), which tier served each of the
//! 50 pictures of the friend list, and checks that every image rendered
//! (`naturalWidth > 0`):
//!
//! 1. first visit: all from the network, and every tier then holds every
//!    picture;
//! 2. the list shown again in the same page: all from memory;
//! 3. a reload: all from LocalStorage, the images' bytes from the browser's
//!    HTTP cache (S3 served no object request meanwhile);
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
//!    runs it, and its service worker replaces the old build's shell cache.
//!
//! A screenshot of each step is saved under `<target dir>/journey/` (paths
//! printed), with `visits.json` (tier counts and whole-list time per visit).
//!
//! Needs the built web app: `PROFILE_WEB_DIR` (set by `cargo xtask test`, which
//! builds it first). Without it the test fails, it never skips. Compiled only
//! with the `journey` feature, so `cargo test --workspace` (which cannot build
//! the wasm app) leaves it to its own suite.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use profile_server::avatar::generate_png;
use profile_server::{serve, Config};
use serde_json::{json, Value};

mod support;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const FRIENDS: usize = 50;
const CACHE_TIERS: [&str; 4] = ["memory", "local_storage", "indexed_db", "cache_api"];
/// Liveness bound for one condition (not a speed claim: the machine is slow).
const PATIENCE: Duration = Duration::from_secs(120);

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

/// `<target dir>/journey`: the test binary is `<target dir>/debug/deps/journey-…`.
fn journey_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    let dir = target.join("journey");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One WebDriver session.
struct Session {
    http: reqwest::Client,
    base: String,
}

impl Session {
    async fn start(driver: &Driver, profile: &std::path::Path) -> Session {
        let http = support::client();
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--no-first-run".to_owned(),
            "--window-size=1280,1000".to_owned(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let reply: Value = http
            .post(format!("{}/session", driver.url))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = reply["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver refused the session: {reply}"))
            .to_owned();
        let session = Session {
            http,
            base: format!("{}/session/{id}", driver.url),
        };
        session
            .cmd("/timeouts", json!({"script": 120_000, "pageLoad": 120_000}))
            .await;
        session
    }

    async fn reply(&self, path: &str, reply: reqwest::Response) -> Value {
        let reply: Value = reply.json().await.unwrap();
        if reply["value"]["error"].is_string() {
            panic!("WebDriver {path} failed: {}", reply["value"]);
        }
        reply["value"].clone()
    }

    async fn cmd(&self, path: &str, body: Value) -> Value {
        let reply = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        self.reply(path, reply).await
    }

    async fn cmd_get(&self, path: &str) -> Value {
        let reply = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        self.reply(path, reply).await
    }

    async fn script(&self, script: &str, args: Value) -> Value {
        self.cmd("/execute/sync", json!({"script": script, "args": args}))
            .await
    }

    async fn script_async(&self, script: &str, args: Value) -> Value {
        self.cmd("/execute/async", json!({"script": script, "args": args}))
            .await
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .cmd("/element", json!({"using": "css selector", "value": css}))
            .await;
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap()
            .to_owned()
    }

    /// Polls `script` until it returns `true` (liveness bound, not a speed claim).
    async fn wait_for(&self, what: &str, script: &str, args: Value) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self.script(script, args.clone()).await == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let state = self.pictures().await;
                panic!("timed out waiting for {what}; pictures: {state}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the friend list's run `run` has drawn all its pictures.
    async fn wait_list(&self, what: &str, run: u64) {
        self.wait_for(
            what,
            "const s = document.getElementById('summary');
             if (document.body && document.body.dataset.error) return true;
             return !!window.cacheMonitor && !!s && s.dataset.complete === 'true'
                 && Number(s.dataset.run) === arguments[0];",
            json!([run]),
        )
        .await;
        let error = self
            .script("return document.body.dataset.error || null", json!([]))
            .await;
        assert_eq!(error, Value::Null, "{what}: the page failed to start");
    }

    /// `cacheMonitor.report()`.
    async fn report(&self) -> Value {
        self.script("return cacheMonitor.report()", json!([])).await
    }

    /// Per friend in the list (by user id): the element's state, its tier, and
    /// whether its `<img>` shows a decoded image.
    async fn pictures(&self) -> Value {
        self.script(
            "const out = {};
             for (const el of document.querySelectorAll('#friends cached-profile-picture')) {
               const img = el.querySelector('img');
               out[el.getAttribute('user-id')] = {
                 state: el.dataset.state || null,
                 served_by: el.dataset.servedBy || null,
                 rendered: !!img && img.complete && img.naturalWidth > 0,
                 natural_width: img ? img.naturalWidth : 0,
                 src: img ? img.src : null,
               };
             }
             return out;",
            json!([]),
        )
        .await
    }

    /// What each tier holds for `user` (`cacheMonitor.peek`).
    async fn peek(&self, user: &str) -> Value {
        self.script_async(
            "const [user, done] = arguments;
             cacheMonitor.peek(user).then(done, (e) => done('error: ' + e));",
            json!([user]),
        )
        .await
    }

    /// The bytes the `<img>` of `user` in the friend list currently shows
    /// (fetched from its src: a `blob:` URL of cached bytes, or the presigned
    /// URL).
    async fn image_bytes(&self, user: &str) -> Vec<u8> {
        let value = self
            .script_async(
                "const [user, done] = arguments;
                 const img = document.querySelector(
                   `#friends cached-profile-picture[user-id=\"${user}\"] img`);
                 fetch(img.src).then(r => r.arrayBuffer())
                   .then(b => done(Array.from(new Uint8Array(b))))
                   .catch(e => done('error: ' + e));",
                json!([user]),
            )
            .await;
        bytes_of(&value).unwrap_or_else(|| panic!("cannot read user {user}'s image: {value}"))
    }

    /// Waits until the `<img>` of `user` in the friend list shows `expected`
    /// (read from its src; a read that fails because a newer draw revoked
    /// the `blob:` URL is tried again).
    async fn wait_for_image(&self, what: &str, user: &str, expected: &[u8]) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self
                .script_async(
                    "const [user, done] = arguments;
                     const img = document.querySelector(
                       `#friends cached-profile-picture[user-id=\"${user}\"] img`);
                     fetch(img.src).then(r => r.arrayBuffer())
                       .then(b => done(Array.from(new Uint8Array(b))))
                       .catch(e => done('error: ' + e));",
                    json!([user]),
                )
                .await;
            let bytes = bytes_of(&value);
            if bytes.as_deref() == Some(expected) {
                return;
            }
            if Instant::now() > deadline {
                let shown =
                    bytes.map_or_else(|| value.to_string(), |b| format!("{} bytes", b.len()));
                panic!(
                    "{what}: user {user}'s image never showed the expected bytes; it shows {shown}"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The state of the page's live update stream (`cacheMonitor.serverEvents()`).
    async fn server_events(&self) -> Value {
        self.script("return cacheMonitor.serverEvents()", json!([]))
            .await
    }

    /// Saves a screenshot and prints its path.
    async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.cmd_get("/screenshot").await;
        let bytes = base64_decode(png.as_str().unwrap());
        let path = journey_dir().join(format!("{name}.png"));
        std::fs::write(&path, bytes).unwrap();
        println!("screenshot: {}", path.display());
        path
    }

    /// Cuts the network with Chromium's own emulation, for the page and for
    /// its service worker (a target of its own, whose fetches the page's
    /// emulation does not cover): `Network.emulateNetworkConditions` over CDP
    /// on the page, and in a session attached to each service worker target
    /// of `origin`. Returns those sessions, for [`Session::go_online`].
    async fn go_offline(&self, origin: &str) -> Vec<String> {
        self.cdp("Network.emulateNetworkConditions", conditions(true))
            .await;
        let targets = self.cdp("Target.getTargets", json!({})).await;
        let workers: Vec<String> = targets["targetInfos"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["type"] == "service_worker")
            .filter(|t| t["url"].as_str().is_some_and(|u| u.starts_with(origin)))
            .map(|t| t["targetId"].as_str().unwrap().to_owned())
            .collect();
        assert!(!workers.is_empty(), "no service worker target: {targets}");
        let mut sessions = Vec::new();
        for target in workers {
            let attached = self
                .cdp(
                    "Target.attachToTarget",
                    json!({"targetId": target, "flatten": false}),
                )
                .await;
            let session = attached["sessionId"].as_str().unwrap().to_owned();
            self.send_to(&session, 1, "Network.enable", json!({})).await;
            self.send_to(
                &session,
                2,
                "Network.emulateNetworkConditions",
                conditions(true),
            )
            .await;
            sessions.push(session);
        }
        sessions
    }

    /// Ends [`Session::go_offline`]: the network is back for the page and, in
    /// the same sessions (emulation belongs to the session that set it), for
    /// the service workers; then those sessions detach.
    async fn go_online(&self, sessions: Vec<String>) {
        self.cdp("Network.emulateNetworkConditions", conditions(false))
            .await;
        for session in sessions {
            self.send_to(
                &session,
                3,
                "Network.emulateNetworkConditions",
                conditions(false),
            )
            .await;
            self.cdp("Target.detachFromTarget", json!({"sessionId": session}))
                .await;
        }
    }

    /// One CDP command to the target of an attached (non-flat) session; its
    /// answer comes back as an event, which chromedriver does not relay.
    async fn send_to(&self, session: &str, id: u32, method: &str, params: Value) {
        let message = json!({"id": id, "method": method, "params": params});
        self.cdp(
            "Target.sendMessageToTarget",
            json!({"sessionId": session, "message": message.to_string()}),
        )
        .await;
    }

    /// A Chrome DevTools Protocol command through chromedriver.
    async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.cmd("/goog/cdp/execute", json!({"cmd": cmd, "params": params}))
            .await
    }
}

fn conditions(offline: bool) -> Value {
    json!({"offline": offline, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
}

/// Standard base64 (WebDriver's screenshots), without a dependency for it.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {:?}", char::from(c)),
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .map(value)
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | u32::from(*d) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

fn bytes_of(value: &Value) -> Option<Vec<u8>> {
    value
        .as_array()?
        .iter()
        .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
        .collect()
}

fn start_chromedriver() -> Driver {
    for (bin, pkg) in [(CHROMEDRIVER, "chromium-driver"), (CHROMIUM, "chromium")] {
        assert!(
            std::path::Path::new(bin).is_file(),
            "{bin} is missing: sudo apt-get install -y {pkg}"
        );
    }
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

async fn wait_driver(driver: &Driver) {
    let http = support::client();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{}/status", driver.url)).send().await {
            if let Ok(v) = r.json::<Value>().await {
                if v["value"]["ready"] == Value::Bool(true) {
                    return;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "chromedriver did not answer within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Object requests the server's embedded S3 has served since it started.
async fn s3_get_objects(server: &str) -> u64 {
    let (_, _, counts) =
        support::get_json(&support::client(), &format!("{server}/api/s3/requests")).await;
    counts["get_object"]
        .as_u64()
        .unwrap_or_else(|| panic!("/api/s3/requests has no get_object count: {counts}"))
}

/// The service worker's shell caches (one per build), by name.
async fn shell_caches(browser: &Session) -> Vec<String> {
    let names = browser
        .script_async(
            "const done = arguments[0];
             caches.keys().then(k => done(k.filter(n => n.startsWith('profile-web-shell-'))),
                                e => done('error: ' + e));",
            json!([]),
        )
        .await;
    serde_json::from_value(names.clone()).unwrap_or_else(|_| panic!("caches.keys(): {names}"))
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
async fn check_visit(browser: &Session, name: &'static str, tier: &str) -> Visit {
    let report = browser.report().await;
    let pictures = browser.pictures().await;
    let list = &report["list"];
    let served = list["pictures"].as_object().unwrap();
    println!("{name}: {} ; tiers {}", list["list_ms"], list["tiers"]);
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

fn write_visits(visits: &[Visit]) {
    let json: Vec<Value> = visits
        .iter()
        .map(|v| json!({"visit": v.name, "list_ms": v.list_ms, "tiers": v.tiers}))
        .collect();
    let path = journey_dir().join("visits.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("visits: {}", path.display());
}

/// Every tier of the page holds `user`'s picture: how many of `users` each
/// tier holds.
async fn tiers_holding(browser: &Session, users: &[String]) -> BTreeMap<String, usize> {
    let held = browser
        .script_async(
            "const [users, done] = arguments;
             Promise.all(users.map(u => cacheMonitor.peek(u))).then(all => {
               const out = {};
               for (const tiers of all) for (const t of tiers) {
                 out[t.tier] = (out[t.tier] || 0) + (t.url !== null && !t.error ? 1 : 0);
               }
               done(out);
             }, e => done('error: ' + e));",
            json!([users]),
        )
        .await;
    serde_json::from_value(held.clone()).unwrap_or_else(|_| panic!("peek failed: {held}"))
}

/// In the current tab, no tier holds the old picture of `user`: a tier with
/// bytes holds `new`, a tier with only a URL holds none of `old_urls` (the
/// URLs the tiers held before the upload); and the memory tier holds it.
async fn assert_no_old_picture(
    browser: &Session,
    tab: &str,
    user: &str,
    old_urls: &[String],
    new: &[u8],
) {
    // Another invalidation of the same upload (the server's event, another
    // window's forward) may have emptied memory again: wait for its redraw.
    let deadline = Instant::now() + PATIENCE;
    let held = loop {
        let held = browser.peek(user).await;
        let in_memory = held
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["tier"] == "memory" && !t["url"].is_null());
        if in_memory || Instant::now() > deadline {
            break held;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
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

    let driver = start_chromedriver();
    wait_driver(&driver).await;
    let profile = tempfile::tempdir().unwrap();
    let browser = Session::start(&driver, profile.path()).await;
    let mut visits = Vec::new();

    // 1. First visit: all 50 from the network; every tier then holds them.
    browser.cmd("/url", json!({ "url": page })).await;
    browser.wait_list("the first visit", 1).await;
    visits.push(check_visit(&browser, "first", "network").await);
    let report = browser.report().await;
    let users: Vec<String> = report["list"]["pictures"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let held = tiers_holding(&browser, &users).await;
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
            json!([]),
        )
        .await;
    browser.screenshot("1-first-visit").await;

    // 2. Same page, the list shown again: all from memory. The monitor's
    // overlay is open for the screenshot: its chart has points for both tiers.
    browser
        .script("document.getElementById('show-again').click()", json!([]))
        .await;
    browser.wait_list("the list shown again", 2).await;
    visits.push(check_visit(&browser, "same_session", "memory").await);
    browser.script("cacheMonitor.toggle()", json!([])).await;
    let chart = browser
        .script(
            "const out = {};
             for (const g of document.querySelectorAll('#latency-chart g.series'))
               out[g.dataset.tier] = g.querySelectorAll('circle').length;
             out.rows = document.querySelectorAll('#monitor tbody tr').length;
             return out;",
            json!([]),
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
            json!([]),
        )
        .await;
    for user in [2u64, 6] {
        browser
            .script(
                "document.getElementById('probe').setAttribute('user-id', arguments[0])",
                json!([user.to_string()]),
            )
            .await;
        browser
            .wait_for(
                &format!("the probe element to draw user {user}"),
                "const el = document.getElementById('probe');
                 const img = el.querySelector('img');
                 return el.dataset.state === 'ready' && img.naturalWidth > 0
                     && cacheMonitor.report().pictures[arguments[0]] !== undefined;",
                json!([user.to_string()]),
            )
            .await;
        let bytes = browser
            .script_async(
                "const done = arguments[0];
                 fetch(document.querySelector('#probe img').src).then(r => r.arrayBuffer())
                   .then(b => done(Array.from(new Uint8Array(b)))).catch(e => done('error: ' + e));",
                json!([]),
            )
            .await;
        assert_eq!(
            bytes_of(&bytes),
            Some(generate_png(user, 96)),
            "probe, user {user}"
        );
        let alt = browser
            .script("return document.querySelector('#probe img').alt", json!([]))
            .await;
        assert_eq!(alt, "probe");
    }
    browser
        .script("document.getElementById('probe').remove()", json!([]))
        .await;

    // 3. Reload: all from LocalStorage (URLs only); the images' bytes come from
    // the HTTP cache, so S3 serves no object meanwhile.
    let s3_before = s3_get_objects(&origin).await;
    browser.cmd("/refresh", json!({})).await;
    browser.wait_list("the reload", 1).await;
    visits.push(check_visit(&browser, "reload", "local_storage").await);
    let pictures = browser.pictures().await;
    for (user, p) in pictures.as_object().unwrap() {
        let src = p["src"].as_str().unwrap();
        assert!(
            src.starts_with("http"),
            "reload: user {user} shows {src}, not its URL"
        );
    }
    let s3_after = s3_get_objects(&origin).await;
    assert_eq!(
        s3_after,
        s3_before,
        "reload: S3 served {} object requests; the HTTP cache should have",
        s3_after - s3_before
    );
    browser.screenshot("3-reload").await;

    // 4. A reload 46 minutes later (the page's clock hook): LocalStorage's
    // URLs expired (45 min), IndexedDB still holds the bytes (7 days).
    browser
        .cmd(
            "/url",
            json!({ "url": format!("{page}?clock-offset-min=46") }),
        )
        .await;
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
            json!([]),
        )
        .await;
    assert_eq!(cleared, "ok", "clearing IndexedDB");
    let offline = browser.go_offline(&origin).await;
    browser.cmd("/refresh", json!({})).await;
    browser.wait_list("the offline reload", 1).await;
    visits.push(check_visit(&browser, "offline", "cache_api").await);
    browser
        .wait_for(
            "the service worker to say how it served the page",
            "return !!document.body.dataset.pageSource",
            json!([]),
        )
        .await;
    let source = browser
        .script("return document.body.dataset.pageSource", json!([]))
        .await;
    assert_eq!(source, "sw-cache", "offline: the page itself");
    // Plain HTML can use the service worker's picture route offline too.
    let via_sw = browser
        .script_async(
            "const [user, done] = arguments;
             fetch('/pictures/' + user).then(r => r.arrayBuffer())
               .then(b => done(Array.from(new Uint8Array(b)))).catch(e => done('error: ' + e));",
            json!([first]),
        )
        .await;
    assert_eq!(bytes_of(&via_sw), Some(generate_png(first_id, 96)));
    browser.screenshot("5-offline").await;
    browser.go_online(offline).await;
    write_visits(&visits);

    // 6. Upload in tab 1 with a second window open on the page.
    browser.cmd("/url", json!({ "url": page })).await;
    browser.wait_list("tab 1 back online", 1).await;
    browser
        .wait_for(
            "the service worker to say how it served the page",
            "return !!document.body.dataset.pageSource",
            json!([]),
        )
        .await;
    assert_eq!(
        browser
            .script("return document.body.dataset.pageSource", json!([]))
            .await,
        "sw-network",
        "back online, the service worker fetches the page"
    );
    let tab1 = browser.cmd_get("/window").await;
    let tab2 = browser.cmd("/window/new", json!({"type": "window"})).await["handle"].clone();
    browser.cmd("/window", json!({ "handle": tab2 })).await;
    browser.cmd("/url", json!({ "url": page })).await;
    browser.wait_list("the second window", 1).await;
    let renders_before = browser.report().await["pictures"][first]["renders"]
        .as_u64()
        .unwrap();
    // Every URL the tiers hold now (either window's: they share all but
    // memory); the loop ends in tab 1.
    let mut old_urls: Vec<String> = vec![first_url];
    for handle in [&tab2, &tab1] {
        browser.cmd("/window", json!({ "handle": handle })).await;
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
            json!([first]),
        )
        .await;
    let input = browser.element("#upload-file").await;
    browser
        .cmd(
            &format!("/element/{input}/value"),
            json!({"text": file.display().to_string()}),
        )
        .await;
    let button = browser.element("#upload-button").await;
    browser
        .cmd(&format!("/element/{button}/click"), json!({}))
        .await;
    browser
        .wait_for(
            "the upload to finish",
            "return document.getElementById('upload-status').textContent
                 === 'uploaded a new picture for user ' + arguments[0]",
            json!([first]),
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
            json!([first, tab1_renders]),
        )
        .await;
    browser
        .wait_for_image("tab 1 shows the new picture", first, &new_picture)
        .await;
    println!("tab 1: event stream {}", browser.server_events().await);
    assert_no_old_picture(&browser, "tab 1", first, &old_urls, &new_picture).await;
    browser.screenshot("6-upload-tab1").await;

    browser.cmd("/window", json!({ "handle": tab2 })).await;
    browser
        .wait_for(
            "the second window to draw the new picture",
            drawn_again,
            json!([first, renders_before]),
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
    let mut before: Vec<(Value, String, u64)> = Vec::new();
    let mut old_urls: Vec<String> = Vec::new();
    for handle in [&tab1, &tab2] {
        browser.cmd("/window", json!({ "handle": handle })).await;
        browser
            .wait_for(
                "the page's event stream to be open",
                "const s = cacheMonitor.serverEvents();
                 return !!s && s.open && s.last_event_id !== null;",
                json!([]),
            )
            .await;
        // Gone after a reload: proves there was none.
        browser
            .script("window.__journeyNoReload = 'still here'", json!([]))
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
        browser.cmd("/window", json!({ "handle": handle })).await;
        browser
            .wait_for(
                &format!("{tab} to draw user {second}'s picture uploaded by another client"),
                drawn_again,
                json!([second, renders]),
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
            .script("return window.__journeyNoReload || null", json!([]))
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
            json!([]),
        )
        .await;
    let old_build = old_build.as_str().unwrap().to_owned();
    assert!(
        shell_caches(&browser)
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
    }
    browser.cmd("/url", json!({ "url": page })).await;
    browser.wait_list("the load after a new build", 1).await;
    let build = browser
        .script(
            "return document.getElementById('build').textContent",
            json!([]),
        )
        .await;
    assert_eq!(
        build,
        new_build.as_str(),
        "the next load runs the new build"
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        let caches = shell_caches(&browser).await;
        if caches == [format!("profile-web-shell-{new_build}")] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new service worker did not replace the old shell cache: {caches:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser
        .wait_for(
            "the new service worker to control the page",
            "return !!navigator.serviceWorker.controller
                 && navigator.serviceWorker.controller.state === 'activated'",
            json!([]),
        )
        .await;
    browser.screenshot("7-new-build").await;

    let _ = browser.http.delete(&browser.base).send().await;
    server.shutdown().await;
}
