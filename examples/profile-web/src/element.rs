//! `<cached-profile-picture user-id="…" size="…" alt="…">`: a custom element
//! defined from Rust, built on `cache_browser::use_profile_picture`.
//!
//! The class itself is a few lines of JS (a custom element must extend
//! `HTMLElement`, which Rust cannot subclass); its callbacks call into Rust,
//! which keeps each element's hook and draws it. It works in plain HTML and in
//! any framework: set `user-id` and the element resolves the picture through
//! the page's chain, and draws it again when `user-id` changes or the picture
//! is invalidated in this or another tab.
//!
//! While it works it carries `data-state` (`loading`, `ready`, `error`); once
//! drawn, `data-served-by` (the tier), `data-lookup-ms` (the tier lookup) and
//! `data-shown-ms` (until the image was decoded).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use cache_browser::{use_profile_picture, ProfilePicture};
use js_sys::{Function, Object, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::{spawn_local, JsFuture};
use web_sys::{Element, HtmlElement, HtmlImageElement};

use crate::app::{app, now_ms};
use crate::monitor::Render;

/// The element's tag.
pub(crate) const TAG: &str = "cached-profile-picture";
const ID_PROPERTY: &str = "__cachedProfilePictureId";
const DEFAULT_SIZE: u32 = 72;

/// The class: every lifecycle callback goes to Rust.
const CLASS: &str = "return class CachedProfilePicture extends HTMLElement {
  static get observedAttributes() { return ['user-id', 'size', 'alt']; }
  connectedCallback() { hooks.connected(this); }
  disconnectedCallback() { hooks.disconnected(this); }
  attributeChangedCallback(name, old, value) { if (old !== value) hooks.changed(this, name); }
};";

/// One connected element.
struct Mounted {
    host: HtmlElement,
    img: HtmlImageElement,
    tier: Element,
    time: Element,
    hook: RefCell<Option<ProfilePicture>>,
    /// `performance.now()` when the current lookup started.
    started: Cell<f64>,
    /// Bumped per drawn state, so a slow decode does not overwrite a newer one.
    draws: Cell<u64>,
}

thread_local! {
    static MOUNTED: RefCell<HashMap<u32, Rc<Mounted>>> = RefCell::new(HashMap::new());
    static NEXT_ID: Cell<u32> = const { Cell::new(1) };
}

fn mounted(host: &HtmlElement) -> Option<Rc<Mounted>> {
    let id = Reflect::get(host, &ID_PROPERTY.into()).ok()?.as_f64()? as u32;
    MOUNTED.with(|m| m.borrow().get(&id).cloned())
}

fn size_of(host: &HtmlElement) -> u32 {
    host.get_attribute("size")
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|s| (8..=1024).contains(s))
        .unwrap_or(DEFAULT_SIZE)
}

fn apply_attributes(m: &Mounted) {
    let size = size_of(&m.host);
    m.img.set_width(size);
    m.img.set_height(size);
    let alt = m.host.get_attribute("alt").unwrap_or_else(|| {
        format!(
            "user {}",
            m.host.get_attribute("user-id").unwrap_or_default()
        )
    });
    m.img.set_alt(&alt);
}

fn connected(host: HtmlElement) {
    if mounted(&host).is_some() {
        return;
    }
    let Some(document) = host.owner_document() else {
        return;
    };
    let make = |tag: &str, class: &str| {
        let e = document.create_element(tag).ok()?;
        e.set_class_name(class);
        host.append_child(&e).ok()?;
        Some(e)
    };
    host.set_inner_html("");
    let (Some(img), Some(tier), Some(time)) = (
        make("img", "picture").and_then(|e| e.dyn_into::<HtmlImageElement>().ok()),
        make("div", "tier"),
        make("div", "time"),
    ) else {
        return;
    };
    let id = NEXT_ID.with(|n| {
        let id = n.get();
        n.set(id.wrapping_add(1));
        id
    });
    let _ = Reflect::set(&host, &ID_PROPERTY.into(), &JsValue::from(id));
    let m = Rc::new(Mounted {
        host: host.clone(),
        img,
        tier,
        time,
        hook: RefCell::new(None),
        started: Cell::new(now_ms()),
        draws: Cell::new(0),
    });
    apply_attributes(&m);
    MOUNTED.with(|all| all.borrow_mut().insert(id, m.clone()));
    let Some(app) = app() else {
        let _ = host.set_attribute("data-state", "error");
        m.tier.set_text_content(Some("the page did not start"));
        return;
    };
    let user = host.get_attribute("user-id").unwrap_or_default();
    let hook = use_profile_picture(&app.pictures, &user, move |p| draw(id, p));
    // Stored once `use_profile_picture` returns (its first `draw`, the
    // loading state, does not need it).
    *m.hook.borrow_mut() = Some(hook);
}

fn disconnected(host: HtmlElement) {
    let Ok(id) = Reflect::get(&host, &ID_PROPERTY.into()) else {
        return;
    };
    let _ = Reflect::delete_property(&host, &ID_PROPERTY.into());
    if let Some(id) = id.as_f64() {
        // Dropping the hook ends its watch.
        MOUNTED.with(|m| m.borrow_mut().remove(&(id as u32)));
    }
}

fn changed(host: HtmlElement, name: String) {
    let Some(m) = mounted(&host) else {
        return; // Not connected yet: `connected` reads every attribute.
    };
    apply_attributes(&m);
    if name == "user-id" {
        let hook = m.hook.borrow().clone();
        if let Some(hook) = hook {
            hook.set_user_id(&host.get_attribute("user-id").unwrap_or_default());
        }
    }
}

/// Draws the hook's state into element `id`.
fn draw(id: u32, p: &ProfilePicture) {
    let Some(m) = MOUNTED.with(|all| all.borrow().get(&id).cloned()) else {
        return;
    };
    let draw = m.draws.get() + 1;
    m.draws.set(draw);
    if p.loading() {
        m.started.set(now_ms());
        let _ = m.host.set_attribute("data-state", "loading");
        m.tier.set_text_content(Some("…"));
        return;
    }
    if let Some(error) = p.error() {
        let _ = m.host.set_attribute("data-state", "error");
        let _ = m.host.set_attribute("data-error", &error);
        m.tier.set_text_content(Some("error"));
        m.time.set_text_content(Some(&error));
        return;
    }
    let Some(url) = p.url() else {
        return;
    };
    // An http(s) URL is loaded like the network loader fetched it (CORS), so
    // the browser's HTTP cache answers it.
    if url.starts_with("blob:") || url.starts_with("data:") {
        m.img.remove_attribute("crossorigin").ok();
    } else {
        m.img.set_cross_origin(Some("anonymous"));
        // Chromium holds low-priority image requests to 6 per host in
        // flight, HTTP-cache hits too: a probe of 50 cached pictures saw
        // them arrive about 6 at a time; at high priority they did not wait.
        let _ = m.img.set_attribute("fetchpriority", "high");
    }
    m.img.set_src(&url);
    let tier = p.served_by().unwrap_or_default();
    let lookup_ms = p.lookup_ms().unwrap_or(0.0);
    let user = p.user_id();
    let p = p.clone();
    spawn_local(async move {
        let decoded = JsFuture::from(m.img.decode()).await;
        if m.draws.get() != draw {
            return; // A newer state is being drawn.
        }
        if decoded.is_err() {
            // A URL that no longer loads (expired, or offline): resolve again
            // from the bytes.
            p.url_failed();
            return;
        }
        let shown_ms = now_ms() - m.started.get();
        let _ = m.host.set_attribute("data-served-by", &tier);
        let _ = m
            .host
            .set_attribute("data-lookup-ms", &format!("{lookup_ms:.3}"));
        let _ = m
            .host
            .set_attribute("data-shown-ms", &format!("{shown_ms:.3}"));
        let _ = m.host.remove_attribute("data-error");
        let _ = m.host.set_attribute("data-state", "ready");
        m.tier.set_text_content(Some(&tier));
        // Without cross-origin isolation `performance.now()` ticks in 0.1 ms.
        let lookup = if lookup_ms < 0.1 {
            "< 0.1".to_owned()
        } else {
            format!("{lookup_ms:.1}")
        };
        m.time.set_text_content(Some(&format!(
            "lookup {lookup} ms · shown {shown_ms:.1} ms"
        )));
        crate::monitor::rendered(Render {
            user,
            tier,
            lookup_ms,
            shown_ms,
            natural_width: m.img.natural_width(),
            in_list: m.host.closest("#friends").ok().flatten().is_some(),
            at_ms: now_ms(),
        });
    });
}

/// Defines `<cached-profile-picture>` (once per page).
pub(crate) fn define() -> Result<(), JsValue> {
    let window = web_sys::window().ok_or("no window")?;
    let registry = window.custom_elements();
    if !registry.get(TAG).is_undefined() {
        return Ok(());
    }
    let hooks = Object::new();
    let on_connected = Closure::<dyn Fn(HtmlElement)>::new(connected);
    let on_disconnected = Closure::<dyn Fn(HtmlElement)>::new(disconnected);
    let on_changed = Closure::<dyn Fn(HtmlElement, String)>::new(changed);
    Reflect::set(&hooks, &"connected".into(), on_connected.as_ref())?;
    Reflect::set(&hooks, &"disconnected".into(), on_disconnected.as_ref())?;
    Reflect::set(&hooks, &"changed".into(), on_changed.as_ref())?;
    // They live as long as the page (the class calls them).
    on_connected.forget();
    on_disconnected.forget();
    on_changed.forget();
    let class: Function = Function::new_with_args("hooks", CLASS)
        .call1(&JsValue::NULL, &hooks)?
        .dyn_into()?;
    registry.define(TAG, &class)
}
