//! The page: the chain, the friend list, the upload form and the clock hook.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use cache_browser::{Picture, ProfilePictures, ServerInvalidations, BYTES_TTL};
use cache_core::{BoxError, Clock, Entry, SystemClock, Timestamp};
use cache_monitor::Monitor;
use js_sys::{Reflect, Uint8Array};
use serde::Deserialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::{spawn_local, JsFuture};
use web_sys::{
    Document, Element, Event, HtmlInputElement, Request, RequestCache, RequestInit, Response,
};

use crate::{element, monitor};

/// Storage namespace (LocalStorage prefix, IndexedDB database, Cache API cache).
pub(crate) const NAMESPACE: &str = "profile-pictures";
/// BroadcastChannel for cross-tab invalidation.
const CHANNEL: &str = "profile-pictures-invalidate";
/// The server's avatar changes, as server-sent events.
const EVENTS: &str = "/api/events";
/// How many users the server seeds, and how many of them are friends.
const USERS: u64 = 200;
const FRIENDS: u64 = 50;
/// The test hook: `?clock-offset-min=46` runs the page's clock 46 minutes
/// ahead (for "a reload 45+ minutes later"). Off unless the URL asks for it.
const CLOCK_PARAM: &str = "clock-offset-min";

/// The page's state, shared by the element, the monitor and the form.
pub(crate) struct App {
    pub(crate) pictures: Rc<ProfilePictures>,
    pub(crate) monitor: Monitor,
    pub(crate) document: Document,
    pub(crate) clock_offset: Duration,
    pub(crate) records: RefCell<monitor::Records>,
    /// The server's avatar changes (uploads by anyone, on any instance);
    /// `None` when the browser has no `EventSource`.
    pub(crate) events: Option<ServerInvalidations>,
}

thread_local! {
    static APP: RefCell<Option<Rc<App>>> = const { RefCell::new(None) };
}

/// The running page, once [`start`] has built it.
pub(crate) fn app() -> Option<Rc<App>> {
    APP.with(|a| a.borrow().clone())
}

/// The system clock, moved ahead by the test hook's offset.
#[derive(Debug, Clone, Copy)]
struct PageClock {
    offset: Duration,
}

impl Clock for PageClock {
    fn now(&self) -> Timestamp {
        SystemClock.now().saturating_add(self.offset)
    }
}

#[derive(Deserialize)]
struct AvatarJson {
    url: String,
}

pub(crate) fn js_err(e: JsValue) -> BoxError {
    cache_browser::JsError::from_js(&e).to_string().into()
}

async fn fetch(url: &str, init: &RequestInit) -> Result<Response, BoxError> {
    let window = web_sys::window().ok_or("no window")?;
    let request = Request::new_with_str_and_init(url, init).map_err(js_err)?;
    let response = JsFuture::from(window.fetch_with_request(&request))
        .await
        .map_err(js_err)?;
    response.dyn_into::<Response>().map_err(js_err)
}

async fn body_bytes(response: &Response) -> Result<Vec<u8>, BoxError> {
    let buffer = JsFuture::from(response.array_buffer().map_err(js_err)?)
        .await
        .map_err(js_err)?;
    Ok(Uint8Array::new(&buffer).to_vec())
}

/// The chain's network loader: the API for the URL, then the picture's bytes
/// (so IndexedDB and the Cache API can keep them for offline use).
///
/// The bytes are fetched with the browser's default cache mode, in CORS mode
/// like the `<img crossorigin>` that later shows the URL: the presigned URL
/// carries a signed `response-cache-control` (private, immutable), so after a
/// reload the `<img>` of a LocalStorage hit without bytes (a picture over
/// its byte limit) gets them from the HTTP cache.
async fn load_from_network(
    clock: PageClock,
    user: String,
) -> Result<Option<Entry<Picture>>, BoxError> {
    let api = RequestInit::new();
    api.set_cache(RequestCache::NoStore); // the page's own tiers are the cache
    let response = fetch(&format!("/api/users/{user}/avatar"), &api).await?;
    if response.status() == 404 {
        return Ok(None);
    }
    if !response.ok() {
        return Err(format!("avatar API answered {}", response.status()).into());
    }
    let avatar: AvatarJson = serde_json::from_slice(&body_bytes(&response).await?)?;
    let download = RequestInit::new();
    download.set_mode(web_sys::RequestMode::Cors);
    download.set_credentials(web_sys::RequestCredentials::SameOrigin);
    let image = fetch(&avatar.url, &download).await?;
    if !image.ok() {
        return Err(format!("picture download answered {}", image.status()).into());
    }
    let content_type = image
        .headers()
        .get("content-type")
        .ok()
        .flatten()
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let bytes = body_bytes(&image).await?;
    // The bytes stay good after the URL expires: keep them as long as the
    // byte tiers allow (LocalStorage keeps its entries for less time).
    let expires_at = clock.now().saturating_add(BYTES_TTL);
    Ok(Some(Entry::new(
        Picture {
            url: avatar.url,
            bytes: Some(Bytes::from(bytes)),
            content_type,
        },
        expires_at,
    )))
}

pub(crate) fn now_ms() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map_or(0.0, |p| p.now())
}

pub(crate) fn by_id(document: &Document, id: &str) -> Option<Element> {
    document.get_element_by_id(id)
}

/// The friends: 50 of the 200 users, spread over the whole range.
fn friends() -> Vec<u64> {
    (1..=USERS).step_by((USERS / FRIENDS) as usize).collect()
}

/// (Re)creates the friend list: 50 `<cached-profile-picture>` elements, as
/// plain HTML, and starts timing the list.
pub(crate) fn show_list(app: &App) {
    let Some(list) = by_id(&app.document, "friends") else {
        return;
    };
    let users = friends();
    let html: String = users
        .iter()
        .map(|u| {
            format!(
                "<li><cached-profile-picture user-id=\"{u}\" size=\"72\" alt=\"user {u}\">\
                 </cached-profile-picture><div class=\"name\">user {u}</div></li>"
            )
        })
        .collect();
    app.records
        .borrow_mut()
        .start_list(users.iter().map(u64::to_string).collect(), now_ms());
    monitor::show_summary(app);
    // Setting the HTML disconnects the old elements and connects the new ones.
    list.set_inner_html(&html);
}

fn set_status(document: &Document, text: &str) {
    if let Some(status) = by_id(document, "upload-status") {
        status.set_text_content(Some(text));
    }
}

async fn upload(app: Rc<App>) -> Result<String, BoxError> {
    let input = |id: &str| {
        by_id(&app.document, id)
            .and_then(|e| e.dyn_into::<HtmlInputElement>().ok())
            .ok_or_else(|| BoxError::from(format!("missing #{id}")))
    };
    let user = input("upload-user")?.value();
    let file = input("upload-file")?
        .files()
        .and_then(|f| f.get(0))
        .ok_or("choose a picture first")?;
    let buffer = JsFuture::from(file.array_buffer()).await.map_err(js_err)?;
    let init = RequestInit::new();
    init.set_method("PUT");
    init.set_cache(RequestCache::NoStore);
    init.set_body(&Uint8Array::new(&buffer));
    let response = fetch(&format!("/api/users/{user}/avatar"), &init).await?;
    if response.status() != 204 {
        let body = body_bytes(&response).await.unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("HTTP {}", response.status()));
        return Err(format!("upload refused: {message}").into());
    }
    // Every tier here, then the other tabs' memory tiers; every element showing
    // the user (here and there) resolves it again, from the network. With the
    // server's event stream open, its `avatar` event (sent before the 204)
    // does that: invalidating here too would only redraw every element twice.
    if !app
        .events
        .as_ref()
        .is_some_and(ServerInvalidations::is_open)
    {
        app.pictures.invalidate(&user).await?;
    }
    Ok(user)
}

fn on_submit(app: Rc<App>) -> Closure<dyn FnMut(Event)> {
    Closure::new(move |event: Event| {
        event.prevent_default();
        let app = app.clone();
        spawn_local(async move {
            set_status(&app.document, "uploading…");
            match upload(app.clone()).await {
                Ok(user) => set_status(
                    &app.document,
                    &format!("uploaded a new picture for user {user}"),
                ),
                Err(e) => set_status(&app.document, &format!("{e}")),
            }
        });
    })
}

fn on_click(document: &Document, id: &str, f: impl FnMut(Event) + 'static) -> Result<(), JsValue> {
    if let Some(button) = by_id(document, id) {
        let f = Closure::<dyn FnMut(Event)>::new(f);
        button.add_event_listener_with_callback("click", f.as_ref().unchecked_ref())?;
        f.forget(); // lives as long as the page
    }
    Ok(())
}

/// The clock hook's offset, from `?clock-offset-min=N` (0 without it, or when
/// it is not a number of minutes).
fn clock_offset(window: &web_sys::Window) -> Duration {
    let search = window.location().search().unwrap_or_default();
    let minutes = search
        .trim_start_matches('?')
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == CLOCK_PARAM)
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_secs(minutes.saturating_mul(60))
}

/// Starts the page: builds the chain (with the page's monitor as its
/// observer), defines `<cached-profile-picture>`, shows the friend list, wires
/// the upload form, the "show again" button, the monitor overlay and the
/// console API (`cacheMonitor`).
///
/// # Errors
///
/// When there is no window or document, or the custom element cannot be
/// defined.
#[wasm_bindgen]
pub async fn start() -> Result<(), JsValue> {
    let window = web_sys::window().ok_or_else(|| JsValue::from_str("no window"))?;
    let document = window
        .document()
        .ok_or_else(|| JsValue::from_str("no document"))?;
    let clock_offset = clock_offset(&window);
    let clock = PageClock {
        offset: clock_offset,
    };
    let monitor = Monitor::builder().clock(clock).build();
    let origin = window.location().origin()?;
    let pictures = ProfilePictures::builder(NAMESPACE)
        .clock(clock)
        .observer(monitor.clone())
        .cross_tab(CHANNEL)
        // Same origin, so the service worker can answer `/pictures/{id}`.
        .cache_api_base_url(format!("{origin}/pictures/"))
        .network(move |user| load_from_network(clock, user))
        .build()
        .await;
    if let Some(tiers) = by_id(&document, "tiers") {
        tiers.set_text_content(Some(&pictures.tier_names().join(" → ")));
    }
    if let Some(first) = friends().first() {
        if let Some(input) =
            by_id(&document, "upload-user").and_then(|e| e.dyn_into::<HtmlInputElement>().ok())
        {
            input.set_value(&first.to_string());
            input.set_max(&USERS.to_string());
        }
    }
    let pictures = Rc::new(pictures);
    // An avatar event invalidates the user in every tier here and in the
    // other tabs, and every element showing the user draws it again; a gap
    // in the stream empties the URL tiers.
    let events = ServerInvalidations::builder()
        .key_event("avatar", "user")
        .pictures(&pictures)
        .connect(EVENTS)
        .map_err(|e| {
            web_sys::console::warn_1(&format!("no live avatar updates: {e}").into());
        })
        .ok();
    let app = Rc::new(App {
        pictures,
        monitor,
        document: document.clone(),
        clock_offset,
        records: RefCell::new(monitor::Records::default()),
        events,
    });
    APP.with(|a| *a.borrow_mut() = Some(app.clone()));
    if let Some(form) = by_id(&document, "upload") {
        let submit = on_submit(app.clone());
        form.add_event_listener_with_callback("submit", submit.as_ref().unchecked_ref())?;
        submit.forget(); // lives as long as the page
    }
    let again = app.clone();
    on_click(&document, "show-again", move |_| show_list(&again))?;
    monitor::install(&app)?;
    element::define()?;
    show_list(&app);
    let _ = Reflect::set(&window, &"profileWebReady".into(), &JsValue::TRUE);
    Ok(())
}
