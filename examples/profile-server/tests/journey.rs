//! The end-to-end journey in a real headless Chromium, driven over the W3C
//! WebDriver protocol (plain JSON to `/usr/bin/chromedriver`):
//!
//! 1. open the page → every avatar renders, first served by the network;
//! 2. reload → every avatar is served by a cache tier, not the network;
//! 3. upload a new picture through the page's form → the page shows the new
//!    bytes (served by the network after the invalidation);
//! 4. shut the server (and its S3) down and reload → the page loads from the
//!    service worker's cache and the pictures from the browser tiers.
//!
//! Needs the built web app: `PROFILE_WEB_DIR` (set by `cargo xtask test`, which
//! builds it first). Without it the test fails, it never skips. Compiled only
//! with the `journey` feature, so `cargo test --workspace` (which cannot build
//! the wasm app) leaves it to its own suite.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use profile_server::avatar::generate_png;
use profile_server::{serve, Config};
use serde_json::{json, Value};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const USERS: [&str; 6] = ["1", "2", "3", "4", "5", "6"];
const CACHE_TIERS: [&str; 4] = ["memory", "local_storage", "indexed_db", "cache_api"];

fn web_dir() -> PathBuf {
    let hint = "run `cargo xtask test` (it builds examples/profile-web with wasm-bindgen into \
                target/profile-web and sets PROFILE_WEB_DIR), or `cargo xtask demo` once and \
                PROFILE_WEB_DIR=target/profile-web cargo test -p profile-server --features journey --test journey";
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
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--no-first-run".to_owned(),
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
            .cmd("/timeouts", json!({"script": 30_000, "pageLoad": 30_000}))
            .await;
        session
    }

    async fn cmd(&self, path: &str, body: Value) -> Value {
        let reply: Value = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if reply["value"]["error"].is_string() {
            panic!("WebDriver {path} failed: {}", reply["value"]);
        }
        reply["value"].clone()
    }

    async fn cmd_get(&self, path: &str) -> Value {
        let reply: Value = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        reply["value"].clone()
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
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            if self.script(script, args.clone()).await == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let state = self.state().await;
                panic!("timed out waiting for {what}; page state: {state}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `start()` has resolved every avatar once more than `loads`.
    async fn wait_ready(&self, what: &str) {
        self.wait_for(
            what,
            "return document.body && document.body.dataset.ready === 'true'",
            json!([]),
        )
        .await;
    }

    /// Per user: which tier served the picture, whether the `<img>` shows a
    /// decoded image, and its state.
    async fn state(&self) -> Value {
        self.script(
            "const out = {};
             for (const li of document.querySelectorAll('#users li')) {
               const img = li.querySelector('img');
               out[li.id.replace('user-', '')] = {
                 served_by: li.dataset.servedBy || null,
                 state: li.dataset.state || null,
                 loads: Number(li.dataset.loads || 0),
                 rendered: !!img && img.complete && img.naturalWidth > 0,
                 src: img ? img.src : null,
               };
             }
             out.error = document.body ? (document.body.dataset.error || null) : 'no body';
             return out;",
            json!([]),
        )
        .await
    }

    /// The bytes the `<img>` of `user` currently shows (fetched from its src:
    /// a `blob:` URL of cached bytes, or the presigned URL).
    async fn image_bytes(&self, user: &str) -> Vec<u8> {
        let value = self
            .script_async(
                "const [user, done] = arguments;
                 const img = document.getElementById('avatar-' + user);
                 fetch(img.src).then(r => r.arrayBuffer())
                   .then(b => done(Array.from(new Uint8Array(b))))
                   .catch(e => done('error: ' + e));",
                json!([user]),
            )
            .await;
        match value.as_array() {
            Some(a) => a.iter().map(|b| b.as_u64().unwrap() as u8).collect(),
            None => panic!("cannot read user {user}'s image bytes: {value}"),
        }
    }
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
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
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
            "chromedriver did not answer within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn served_by(state: &Value, user: &str) -> String {
    state[user]["served_by"].as_str().unwrap_or("?").to_owned()
}

fn assert_all_rendered(state: &Value, step: &str) {
    for user in USERS {
        assert_eq!(
            state[user]["state"], "ready",
            "{step}: user {user}: {state}"
        );
        assert_eq!(
            state[user]["rendered"],
            Value::Bool(true),
            "{step}: user {user}'s picture did not render: {state}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journey_network_then_cache_then_upload_then_offline() {
    let dir = web_dir();
    let mut config = Config::embedded();
    config.web_dir = Some(dir);
    let server = serve(config).await.unwrap();
    let page = format!("{}/", server.url());

    let driver = start_chromedriver();
    wait_driver(&driver).await;
    let profile = tempfile::tempdir().unwrap();
    let browser = Session::start(&driver, profile.path()).await;

    // 1. First visit: every avatar renders, served by the network.
    browser.cmd("/url", json!({ "url": page })).await;
    browser.wait_ready("the first page load").await;
    let first = browser.state().await;
    println!("first visit: {first}");
    assert_all_rendered(&first, "first visit");
    for user in USERS {
        assert_eq!(
            served_by(&first, user),
            "network",
            "first visit, user {user}"
        );
    }
    assert_eq!(browser.image_bytes("1").await, generate_png(1, 96));
    // The service worker controls the page and holds the app shell.
    browser
        .wait_for(
            "the service worker to control the page",
            "return !!navigator.serviceWorker.controller",
            json!([]),
        )
        .await;
    let shell = browser
        .script_async(
            "const done = arguments[0];
             caches.open('profile-web-shell-v1').then(c => c.keys())
               .then(k => done(k.map(r => new URL(r.url).pathname))).catch(e => done(String(e)));",
            json!([]),
        )
        .await;
    for file in ["/", "/profile_web.js", "/profile_web_bg.wasm"] {
        assert!(
            shell.as_array().unwrap().iter().any(|p| p == file),
            "app shell cache lacks {file}: {shell}"
        );
    }

    // 2. Reload: every avatar comes from a browser cache tier, none from the network.
    browser.cmd("/refresh", json!({})).await;
    browser.wait_ready("the reload").await;
    let reloaded = browser.state().await;
    println!("after reload: {reloaded}");
    assert_all_rendered(&reloaded, "reload");
    for user in USERS {
        let tier = served_by(&reloaded, user);
        assert!(
            CACHE_TIERS.contains(&tier.as_str()),
            "reload, user {user} served by {tier}, expected a cache tier"
        );
    }
    let signed = server.app().urls().signatures();

    // A second tab of the same origin, to see the upload's cross-tab invalidation.
    let first_tab = browser.cmd_get("/window").await;
    let second_tab = browser.cmd("/window/new", json!({"type": "tab"})).await["handle"].clone();
    browser
        .cmd("/window", json!({ "handle": second_tab }))
        .await;
    browser.cmd("/url", json!({ "url": page })).await;
    browser.wait_ready("the second tab").await;
    let before = browser.state().await;
    assert_all_rendered(&before, "second tab");
    assert_ne!(served_by(&before, "2"), "network");
    let second_tab_loads = before["2"]["loads"].as_u64().unwrap();
    browser.cmd("/window", json!({ "handle": first_tab })).await;

    // 3. Upload a new picture for user 2 through the page's form.
    let new_picture = generate_png(1_000_002, 64);
    assert_ne!(new_picture, generate_png(2, 96));
    let file = profile.path().join("new-avatar.png");
    std::fs::write(&file, &new_picture).unwrap();
    browser
        .script(
            "document.getElementById('upload-user').value = '2'",
            json!([]),
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
                 === 'uploaded a new picture for user 2'",
            json!([]),
        )
        .await;
    let uploaded = browser.state().await;
    println!("after upload: {uploaded}");
    assert_eq!(
        served_by(&uploaded, "2"),
        "network",
        "after the upload user 2 was invalidated locally and fetched again"
    );
    assert_eq!(uploaded["2"]["rendered"], Value::Bool(true));
    assert_eq!(
        browser.image_bytes("2").await,
        new_picture,
        "the page shows the new picture"
    );
    assert!(
        server.app().urls().signatures() > signed,
        "the server signed a new URL after invalidating its tiers"
    );

    // The other tab was told over its BroadcastChannel: it dropped user 2 from
    // its memory tier and shows the new picture too.
    browser
        .cmd("/window", json!({ "handle": second_tab }))
        .await;
    browser
        .wait_for(
            "the second tab to show user 2 again",
            "return Number(document.getElementById('user-2').dataset.loads) > arguments[0]
                 && document.getElementById('user-2').dataset.state === 'ready'",
            json!([second_tab_loads]),
        )
        .await;
    assert_eq!(
        browser.image_bytes("2").await,
        new_picture,
        "the second tab shows the new picture"
    );
    // Close the second tab.
    browser
        .http
        .delete(format!("{}/window", browser.base))
        .send()
        .await
        .unwrap();
    browser.cmd("/window", json!({ "handle": first_tab })).await;

    // 4. Offline: the server and its S3 stop answering; reload.
    server.shutdown().await;
    let probe = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(&page)
        .send()
        .await;
    assert!(probe.is_err(), "the server still answers: {probe:?}");
    browser.cmd("/refresh", json!({})).await;
    browser.wait_ready("the offline reload").await;
    let offline = browser.state().await;
    println!("offline: {offline}");
    assert_eq!(
        browser
            .script("return !!navigator.serviceWorker.controller", json!([]))
            .await,
        Value::Bool(true),
        "the offline page was served by the service worker"
    );
    assert_all_rendered(&offline, "offline reload");
    for user in USERS {
        let tier = served_by(&offline, user);
        assert!(
            CACHE_TIERS.contains(&tier.as_str()),
            "offline, user {user} served by {tier}"
        );
    }
    // User 2's URL was never loaded by an <img> (S3 is down): its bytes come
    // from IndexedDB or the Cache API, and they are the new picture.
    let tier = served_by(&offline, "2");
    assert!(
        tier == "indexed_db" || tier == "cache_api",
        "offline, user 2 served by {tier}"
    );
    assert_eq!(browser.image_bytes("2").await, new_picture);

    let _ = browser.http.delete(&browser.base).send().await;
}
