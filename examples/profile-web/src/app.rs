//! The page: resolves avatars through `ProfilePictures`, shows which tier
//! served each one and how long it took, uploads new pictures and invalidates
//! them here and in every other tab.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use cache_browser::{CrossTabInvalidation, Picture, ProfilePictures, BYTES_TTL};
use cache_core::{BoxError, Clock, Entry, SystemClock};
use js_sys::{Reflect, Uint8Array};
use serde::Deserialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::{spawn_local, JsFuture};
use web_sys::{
    BroadcastChannel, Document, Element, Event, HtmlImageElement, HtmlInputElement, MessageEvent,
    Request, RequestCache, RequestInit, Response,
};

/// Storage namespace (LocalStorage prefix, IndexedDB database, Cache API cache).
const NAMESPACE: &str = "profile-pictures";
/// BroadcastChannel for cross-tab invalidation.
const CHANNEL: &str = "profile-pictures-invalidate";

type Listener = Closure<dyn FnMut(MessageEvent)>;

struct App {
    pictures: ProfilePictures,
    tabs: CrossTabInvalidation<String, Picture>,
    document: Document,
    /// Keys this tab announced: its own listener (a second BroadcastChannel
    /// object, which does receive this tab's messages) skips them.
    announced: RefCell<Vec<String>>,
    /// Keeps the listener that re-renders pictures other tabs replaced.
    _channel: Option<(BroadcastChannel, Listener)>,
}

thread_local! {
    static APP: RefCell<Option<Rc<App>>> = const { RefCell::new(None) };
}

#[derive(Deserialize)]
struct AvatarJson {
    url: String,
}

fn js_err(e: JsValue) -> BoxError {
    let text = e
        .as_string()
        .or_else(|| {
            Reflect::get(&e, &JsValue::from_str("message"))
                .ok()
                .and_then(|m| m.as_string())
        })
        .unwrap_or_else(|| format!("{e:?}"));
    text.into()
}

async fn fetch(url: &str, init: &RequestInit) -> Result<Response, BoxError> {
    let window = web_sys::window().ok_or("no window")?;
    init.set_cache(RequestCache::NoStore);
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
async fn load_from_network(user: String) -> Result<Option<Entry<Picture>>, BoxError> {
    let response = fetch(&format!("/api/users/{user}/avatar"), &RequestInit::new()).await?;
    if response.status() == 404 {
        return Ok(None);
    }
    if !response.ok() {
        return Err(format!("avatar API answered {}", response.status()).into());
    }
    let avatar: AvatarJson = serde_json::from_slice(&body_bytes(&response).await?)?;
    let image = fetch(&avatar.url, &RequestInit::new()).await?;
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
    // byte tiers allow (LocalStorage keeps only the URL, for less time).
    let expires_at = SystemClock.now().saturating_add(BYTES_TTL);
    Ok(Some(Entry::new(
        Picture {
            url: avatar.url,
            bytes: Some(Bytes::from(bytes)),
            content_type,
        },
        expires_at,
    )))
}

fn now_ms() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map_or(0.0, |p| p.now())
}

fn by_id(document: &Document, id: &str) -> Option<Element> {
    document.get_element_by_id(id)
}

/// Resolves `user`'s picture and shows it with the serving tier and time.
async fn show(app: Rc<App>, user: String) {
    let Some(item) = by_id(&app.document, &format!("user-{user}")) else {
        return;
    };
    let Some(img) = by_id(&app.document, &format!("avatar-{user}"))
        .and_then(|e| e.dyn_into::<HtmlImageElement>().ok())
    else {
        return;
    };
    let _ = item.set_attribute("data-state", "loading");
    let started = now_ms();
    let mut result = app.pictures.get(&user).await;
    if let Ok(Some(found)) = &result {
        img.set_src(&found.src);
        // A URL-only hit (LocalStorage) whose URL no longer loads (expired, or
        // S3 unreachable offline): forget the URL tiers and resolve again, from
        // the bytes kept in IndexedDB / the Cache API.
        if !found.src.starts_with("blob:") && JsFuture::from(img.decode()).await.is_err() {
            let names = app.pictures.tier_names();
            let url_tiers: Vec<usize> = names
                .iter()
                .enumerate()
                .filter(|(_, n)| **n == "memory" || **n == "local_storage")
                .map(|(i, _)| i)
                .collect();
            let _ = app
                .pictures
                .cache()
                .only(&url_tiers)
                .invalidate(&user)
                .await;
            result = app.pictures.get(&user).await;
            if let Ok(Some(found)) = &result {
                img.set_src(&found.src);
            }
        }
    }
    let elapsed = now_ms() - started;
    let (state, tier) = match &result {
        Ok(Some(found)) => ("ready", found.served_by.clone()),
        Ok(None) => ("missing", "none".to_owned()),
        Err(e) => ("error", format!("error: {e}")),
    };
    let _ = JsFuture::from(img.decode()).await;
    let _ = item.set_attribute("data-served-by", &tier);
    let _ = item.set_attribute("data-ms", &format!("{elapsed:.3}"));
    let loads: u32 = item
        .get_attribute("data-loads")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let _ = item.set_attribute("data-loads", &(loads + 1).to_string());
    let _ = item.set_attribute("data-state", state);
    if let Some(label) = by_id(&app.document, &format!("tier-{user}")) {
        label.set_text_content(Some(&tier));
    }
    if let Some(label) = by_id(&app.document, &format!("time-{user}")) {
        label.set_text_content(Some(&format!("{elapsed:.2} ms")));
    }
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
    // Every tier here (and the object URL), then the other tabs' memory tiers.
    app.pictures.invalidate(&user).await?;
    app.announced.borrow_mut().push(user.clone());
    app.tabs.invalidate(&user).await?;
    Ok(user)
}

fn on_submit(app: Rc<App>) -> Closure<dyn FnMut(Event)> {
    Closure::new(move |event: Event| {
        event.prevent_default();
        let app = app.clone();
        spawn_local(async move {
            set_status(&app.document, "uploading…");
            match upload(app.clone()).await {
                Ok(user) => {
                    show(app.clone(), user.clone()).await;
                    set_status(
                        &app.document,
                        &format!("uploaded a new picture for user {user}"),
                    );
                }
                Err(e) => set_status(&app.document, &format!("{e}")),
            }
        });
    })
}

/// Another tab replaced a picture: CrossTabInvalidation drops it from this
/// tab's memory tier; show it again (after dropping it here too, so the order
/// of the two listeners does not matter).
fn on_other_tab(message: MessageEvent) {
    let Some(user) = Reflect::get(&message.data(), &JsValue::from_str("key"))
        .ok()
        .and_then(|k| k.as_string())
    else {
        return;
    };
    let Some(app) = APP.with(|a| a.borrow().clone()) else {
        return;
    };
    let own = {
        let mut announced = app.announced.borrow_mut();
        let at = announced.iter().position(|k| *k == user);
        at.map(|i| announced.remove(i)).is_some()
    };
    if own {
        return; // This tab sent it and shows the new picture itself.
    }
    spawn_local(async move {
        let _ = app.pictures.cache().only(&[0]).invalidate(&user).await;
        show(app, user).await;
    });
}

/// Starts the page: builds the chain, shows every user listed in the
/// `data-users` attribute of `<body>`, and wires the upload form.
///
/// # Errors
///
/// When there is no window or document, or `BroadcastChannel` is missing.
#[wasm_bindgen]
pub async fn start() -> Result<(), JsValue> {
    let window = web_sys::window().ok_or_else(|| JsValue::from_str("no window"))?;
    let document = window
        .document()
        .ok_or_else(|| JsValue::from_str("no document"))?;
    let pictures = ProfilePictures::builder(NAMESPACE)
        .network(load_from_network)
        .build()
        .await;
    let tabs = CrossTabInvalidation::new(pictures.cache().clone(), CHANNEL, &[0])
        .map_err(|e| JsValue::from_str(&e.to_string()))?;
    let channel = BroadcastChannel::new(CHANNEL).ok().map(|c| {
        let listener = Closure::<dyn FnMut(MessageEvent)>::new(on_other_tab);
        c.set_onmessage(Some(listener.as_ref().unchecked_ref()));
        (c, listener)
    });
    let users: Vec<String> = document
        .body()
        .and_then(|b| b.get_attribute("data-users"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if let Some(tiers) = by_id(&document, "tiers") {
        tiers.set_text_content(Some(&pictures.tier_names().join(" → ")));
    }
    let app = Rc::new(App {
        pictures,
        tabs,
        document: document.clone(),
        announced: RefCell::new(Vec::new()),
        _channel: channel,
    });
    APP.with(|a| *a.borrow_mut() = Some(app.clone()));
    if let Some(form) = by_id(&document, "upload") {
        let submit = on_submit(app.clone());
        form.add_event_listener_with_callback("submit", submit.as_ref().unchecked_ref())?;
        submit.forget(); // lives as long as the page
    }
    let shown: Vec<_> = users.into_iter().map(|u| show(app.clone(), u)).collect();
    futures_util::future::join_all(shown).await;
    let _ = document
        .body()
        .map(|b| b.set_attribute("data-ready", "true"));
    Ok(())
}
