//! The profile-web page as the journey reads it, as methods of [`Browser`]:
//! its monitor (`cacheMonitor.report()`, `peek`, `serverEvents()`), its friend
//! list of `<cached-profile-picture>` elements, the bytes an `<img>` shows,
//! and the service worker's shell caches.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::browser::{bytes_of, poll, Browser};

/// Fetches the `src` of the `<img>` of `arguments[0]` in the friend list and
/// passes its bytes (or `'error: …'`) to the callback.
const LIST_IMAGE_BYTES: &str = "const [user, done] = arguments;
     const img = document.querySelector(
       `#friends cached-profile-picture[user-id=\"${user}\"] img`);
     fetch(img.src).then(r => r.arrayBuffer())
       .then(b => done(Array.from(new Uint8Array(b))))
       .catch(e => done('error: ' + e));";

impl Browser {
    /// Polls `script` until it returns `true` (liveness bound, not a speed
    /// claim); on timeout, panics with `what` and the friend list's state.
    pub(crate) async fn wait_for(&self, what: &str, script: &str, args: Vec<Value>) {
        if !self.turns_true(script, args).await {
            let state = self.pictures().await;
            panic!("timed out waiting for {what}; pictures: {state}");
        }
    }

    /// Waits until the friend list's run `run` has drawn all its pictures.
    pub(crate) async fn wait_list(&self, what: &str, run: u64) {
        self.wait_for(
            what,
            "const s = document.getElementById('summary');
             if (document.body && document.body.dataset.error) return true;
             return !!window.cacheMonitor && !!s && s.dataset.complete === 'true'
                 && Number(s.dataset.run) === arguments[0];",
            vec![json!(run)],
        )
        .await;
        let error = self
            .script("return document.body.dataset.error || null", vec![])
            .await;
        assert_eq!(error, Value::Null, "{what}: the page failed to start");
    }

    /// `cacheMonitor.report()`.
    pub(crate) async fn report(&self) -> Value {
        self.script("return cacheMonitor.report()", vec![]).await
    }

    /// Per friend in the list (by user id): the element's state, its tier, and
    /// whether its `<img>` shows a decoded image.
    pub(crate) async fn pictures(&self) -> Value {
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
            vec![],
        )
        .await
    }

    /// The page's own wasm and JS as Chromium loaded them (Resource Timing),
    /// by path: the body's bytes over the wire (`encodedBodySize`, 0 when
    /// it came from a cache) and decoded (`decodedBodySize`).
    pub(crate) async fn loaded_code(&self) -> BTreeMap<String, (u64, u64)> {
        let loaded = self
            .script(
                "const out = {};
                 for (const e of performance.getEntriesByType('resource')) {
                   const u = new URL(e.name);
                   if (u.origin !== location.origin || !/\\.(wasm|js)$/.test(u.pathname)) continue;
                   out[u.pathname.slice(1)] = [e.encodedBodySize, e.decodedBodySize];
                 }
                 return out;",
                vec![],
            )
            .await;
        serde_json::from_value(loaded.clone())
            .unwrap_or_else(|_| panic!("resource timing: {loaded}"))
    }

    /// Milliseconds from the navigation to the friend list's last picture
    /// drawn (`performance.now()` counts from the navigation): the visit as
    /// a person sees it, the page's own download, compile and start
    /// included.
    pub(crate) async fn list_since_navigation_ms(&self) -> f64 {
        let report = self.report().await;
        let pictures = report["list"]["pictures"].as_object().unwrap();
        assert!(!pictures.is_empty(), "no picture drawn: {report}");
        pictures
            .values()
            .map(|p| p["at_ms"].as_f64().unwrap())
            .fold(0.0, f64::max)
    }

    /// What each tier holds for `user` (`cacheMonitor.peek`).
    pub(crate) async fn peek(&self, user: &str) -> Value {
        self.script_async(
            "const [user, done] = arguments;
             cacheMonitor.peek(user).then(done, (e) => done('error: ' + e));",
            vec![json!(user)],
        )
        .await
    }

    /// How many of `users` each tier of the page holds.
    pub(crate) async fn tiers_holding(&self, users: &[String]) -> BTreeMap<String, usize> {
        let held = self
            .script_async(
                "const [users, done] = arguments;
                 Promise.all(users.map(u => cacheMonitor.peek(u))).then(all => {
                   const out = {};
                   for (const tiers of all) for (const t of tiers) {
                     out[t.tier] = (out[t.tier] || 0) + (t.url !== null && !t.error ? 1 : 0);
                   }
                   done(out);
                 }, e => done('error: ' + e));",
                vec![json!(users)],
            )
            .await;
        serde_json::from_value(held.clone()).unwrap_or_else(|_| panic!("peek failed: {held}"))
    }

    /// The bytes the `<img>` of `user` in the friend list currently shows
    /// (fetched from its src: a `blob:` URL of cached bytes, or the presigned
    /// URL).
    pub(crate) async fn image_bytes(&self, user: &str) -> Vec<u8> {
        let value = self.script_async(LIST_IMAGE_BYTES, vec![json!(user)]).await;
        bytes_of(&value).unwrap_or_else(|| panic!("cannot read user {user}'s image: {value}"))
    }

    /// Waits until the `<img>` of `user` in the friend list shows `expected`
    /// (read from its src; a read that fails because a newer draw revoked
    /// the `blob:` URL is tried again).
    pub(crate) async fn wait_for_image(&self, what: &str, user: &str, expected: &[u8]) {
        let shown = poll(async || {
            let value = self.script_async(LIST_IMAGE_BYTES, vec![json!(user)]).await;
            match bytes_of(&value) {
                Some(bytes) if bytes == expected => Ok(()),
                Some(bytes) => Err(format!("{} bytes", bytes.len())),
                None => Err(value.to_string()),
            }
        })
        .await;
        if let Err(shown) = shown {
            panic!("{what}: user {user}'s image never showed the expected bytes; it shows {shown}");
        }
    }

    /// The state of the page's live update stream (`cacheMonitor.serverEvents()`).
    pub(crate) async fn server_events(&self) -> Value {
        self.script("return cacheMonitor.serverEvents()", vec![])
            .await
    }

    /// The service worker's shell caches (one per build), by name.
    pub(crate) async fn shell_caches(&self) -> Vec<String> {
        let names = self
            .script_async(
                "const done = arguments[0];
                 caches.keys().then(k => done(k.filter(n => n.startsWith('profile-web-shell-'))),
                                    e => done('error: ' + e));",
                vec![],
            )
            .await;
        serde_json::from_value(names.clone()).unwrap_or_else(|_| panic!("caches.keys(): {names}"))
    }
}
