//! A headless Chromium for the journey: chromedriver on a free port, one
//! WebDriver session driven with fantoccini, the DevTools commands chromedriver
//! relays (`goog/cdp/execute`, issued through fantoccini's custom commands on
//! the same connection), network emulation, screenshots and waiting.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cache_server::testing::free_port;
use fantoccini::wd::{
    Capabilities, TimeoutConfiguration, WebDriverCompatibleCommand, WindowHandle,
};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// Liveness bound for one condition (not a speed claim: the machine is slow).
pub(crate) const PATIENCE: Duration = Duration::from_secs(120);
/// How often a condition is looked at again.
const POLL: Duration = Duration::from_millis(200);

/// Runs `probe` until it returns `Ok`, every 200 ms within [`PATIENCE`]; then
/// its last answer (`Err` if the condition never held).
pub(crate) async fn poll<T, E>(mut probe: impl AsyncFnMut() -> Result<T, E>) -> Result<T, E> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answer = probe().await;
        if answer.is_ok() || Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `<target dir>/journey`, where screenshots go: the test binary is
/// `<target dir>/debug/deps/journey-…`.
pub(crate) fn journey_dir() -> PathBuf {
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

/// A JavaScript array of bytes (`Array.from(new Uint8Array(..))`) as bytes;
/// `None` for anything else (an `'error: …'` string).
pub(crate) fn bytes_of(value: &Value) -> Option<Vec<u8>> {
    value
        .as_array()?
        .iter()
        .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
        .collect()
}

/// chromedriver on a free port, killed on drop.
pub(crate) struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    /// Starts `/usr/bin/chromedriver` and waits until its `/status` says it
    /// is ready (liveness bound: 60 s).
    pub(crate) async fn start() -> Chromedriver {
        for (bin, pkg) in [(CHROMEDRIVER, "chromium-driver"), (CHROMIUM, "chromium")] {
            assert!(
                Path::new(bin).is_file(),
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
        let driver = Chromedriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        driver.wait_ready().await;
        driver
    }

    /// Polls `/status` (before any session, so plain HTTP rather than
    /// WebDriver).
    async fn wait_ready(&self) {
        let http = super::client();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{}/status", self.url)).send().await {
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
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One WebDriver session in headless Chromium. Every call panics on a
/// WebDriver error, naming what it did.
pub(crate) struct Browser {
    client: Client,
}

impl Browser {
    /// A session of a new Chromium with its profile in `profile` (a fresh
    /// directory), script and page-load timeouts of 120 s.
    pub(crate) async fn start(driver: &Chromedriver, profile: &Path) -> Browser {
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
        let caps: Capabilities = serde_json::from_value(json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }))
        .unwrap();
        // chromedriver is on 127.0.0.1 over plain http: no TLS connector.
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .unwrap_or_else(|e| panic!("chromedriver refused the session: {e}"));
        let timeouts = TimeoutConfiguration::new(Some(PATIENCE), Some(PATIENCE), None);
        client.update_timeouts(timeouts).await.unwrap();
        Browser { client }
    }

    /// Ends the session (Chromium quits).
    pub(crate) async fn close(self) {
        let _ = self.client.close().await;
    }

    /// Navigates the current window to `url`.
    pub(crate) async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("navigating to {url}: {e}"));
    }

    /// Reloads the current page.
    pub(crate) async fn refresh(&self) {
        self.client
            .refresh()
            .await
            .unwrap_or_else(|e| panic!("reloading: {e}"));
    }

    /// Runs `script` in the page (its `arguments` are `args`), returns what it
    /// returned.
    pub(crate) async fn script(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Runs `script` in the page with `args` and a callback as last argument,
    /// returns what it passed to the callback.
    pub(crate) async fn script_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute_async(script, args)
            .await
            .unwrap_or_else(|e| panic!("async script failed: {e}\n{script}"))
    }

    /// Polls `script` until it returns `true`; `false` if it did not within
    /// [`PATIENCE`] (a liveness bound, not a speed claim).
    pub(crate) async fn turns_true(&self, script: &str, args: Vec<Value>) -> bool {
        poll(async || {
            let done = self.script(script, args.clone()).await == Value::Bool(true);
            if done {
                Ok(())
            } else {
                Err(())
            }
        })
        .await
        .is_ok()
    }

    /// Types `path` into the file input that `css` selects.
    pub(crate) async fn choose_file(&self, css: &str, path: &Path) {
        let input = self.client.find(Locator::Css(css)).await.unwrap();
        input
            .send_keys(&path.display().to_string())
            .await
            .unwrap_or_else(|e| panic!("choosing {} in {css}: {e}", path.display()));
    }

    /// Clicks the element that `css` selects.
    pub(crate) async fn click(&self, css: &str) {
        let element = self.client.find(Locator::Css(css)).await.unwrap();
        element
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
    }

    /// The current window.
    pub(crate) async fn window(&self) -> WindowHandle {
        self.client.window().await.unwrap()
    }

    /// Opens a new window (not a tab) and returns it; the current window
    /// stays current.
    pub(crate) async fn new_window(&self) -> WindowHandle {
        self.client.new_window(false).await.unwrap().handle
    }

    /// Makes `window` the current one.
    pub(crate) async fn switch_to(&self, window: &WindowHandle) {
        self.client.switch_to_window(window.clone()).await.unwrap();
    }

    /// Resizes the current window (its viewport is what a screenshot shows).
    pub(crate) async fn resize(&self, width: u32, height: u32) {
        self.client
            .set_window_size(width, height)
            .await
            .unwrap_or_else(|e| panic!("resizing the window to {width}x{height}: {e}"));
    }

    /// Saves a screenshot as `<target dir>/journey/<name>.png` and prints its
    /// path.
    pub(crate) async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        let path = journey_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
        path
    }

    /// Cuts the network with Chromium's own emulation, for the page and for
    /// its service worker (a target of its own, whose fetches the page's
    /// emulation does not cover): `Network.emulateNetworkConditions` over CDP
    /// on the page, and in a session attached to each service worker target
    /// of `origin`. Returns those sessions, for [`Browser::go_online`].
    pub(crate) async fn go_offline(&self, origin: &str) -> Offline {
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
        Offline { sessions }
    }

    /// Ends [`Browser::go_offline`]: the network is back for the page and, in
    /// the same sessions (emulation belongs to the session that set it), for
    /// the service workers; then those sessions detach.
    pub(crate) async fn go_online(&self, offline: Offline) {
        self.cdp("Network.emulateNetworkConditions", conditions(false))
            .await;
        for session in offline.sessions {
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

    /// A Chrome DevTools Protocol command through chromedriver, on the
    /// session's own connection.
    pub(crate) async fn cdp(&self, cmd: &str, params: Value) -> Value {
        let command = CdpExecute {
            cmd: cmd.to_owned(),
            params,
        };
        self.client
            .issue_cmd(command)
            .await
            .unwrap_or_else(|e| panic!("CDP {cmd} failed: {e}"))
    }
}

/// The DevTools sessions that keep a service worker offline, from
/// [`Browser::go_offline`] to [`Browser::go_online`].
#[must_use = "the service workers stay offline until Browser::go_online"]
pub(crate) struct Offline {
    sessions: Vec<String>,
}

fn conditions(offline: bool) -> Value {
    json!({"offline": offline, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
}

/// chromedriver's vendor command `POST /session/{id}/goog/cdp/execute`: one
/// Chrome DevTools Protocol command on the page's target, its result as the
/// WebDriver value.
#[derive(Debug)]
struct CdpExecute {
    cmd: String,
    params: Value,
}

impl WebDriverCompatibleCommand for CdpExecute {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        let session = session.expect("a CDP command needs a WebDriver session");
        base.join(&format!("session/{session}/goog/cdp/execute"))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        let body = json!({"cmd": self.cmd, "params": self.params});
        (http::Method::POST, Some(body.to_string()))
    }
}
