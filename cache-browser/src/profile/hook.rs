//! [`ProfilePicture`]: the picture of one user as a Rust front-end holds it
//! (the original React hook `useProfilePicture`).

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use wasm_bindgen::JsValue;

use super::ProfilePictures;

/// A profile picture's state for a Rust front-end, in the shape of the
/// original React hook `useProfilePicture(userId)`: [`url`](Self::url),
/// [`loading`](Self::loading), [`error`](Self::error) and
/// [`refetch`](Self::refetch). Made by [`use_profile_picture`].
///
/// It resolves its user's picture through [`ProfilePictures`] as soon as it is
/// made, and again whenever the picture is invalidated in this tab or another
/// one (with [`ProfilePicturesBuilder::cross_tab`](super::ProfilePicturesBuilder::cross_tab)) and when the user id
/// changes; after each change of state it calls the `on_change` callback given
/// to [`use_profile_picture`]. Cloning it gives another handle to the same
/// state; the watch ends when the last handle is dropped.
#[derive(Clone)]
pub struct ProfilePicture {
    inner: Rc<HookInner>,
}

struct HookInner {
    pictures: Rc<ProfilePictures>,
    on_change: Box<dyn Fn(&ProfilePicture)>,
    state: RefCell<HookState>,
}

#[derive(Default)]
struct HookState {
    user_id: String,
    url: Option<String>,
    loading: bool,
    error: Option<String>,
    served_by: Option<String>,
    lookup_ms: Option<f64>,
    /// Bumped by every load; an older load that finishes late is dropped.
    generation: u64,
    /// Keeps this hook's watch of `user_id` alive.
    watch: Option<Rc<dyn Fn()>>,
}

impl fmt::Debug for ProfilePicture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.inner.state.borrow();
        f.debug_struct("ProfilePicture")
            .field("user_id", &s.user_id)
            .field("url", &s.url)
            .field("loading", &s.loading)
            .field("error", &s.error)
            .field("served_by", &s.served_by)
            .finish_non_exhaustive()
    }
}

/// The original `useProfilePicture(userId)` hook for Rust front-ends: starts
/// resolving `user_id`'s picture and returns its live state.
///
/// `on_change` runs after every change (loading started, picture found,
/// error); redraw from the handle it is given. Do not capture a clone of the
/// returned handle in it (that would keep the hook alive forever): use the
/// argument.
///
/// # Example
///
/// ```no_run
/// # async fn demo(img: web_sys::HtmlImageElement) {
/// use std::rc::Rc;
/// use cache_browser::{use_profile_picture, ProfilePictures};
///
/// let pictures = Rc::new(ProfilePictures::builder("avatars").cross_tab("avatars").build().await);
/// let avatar = use_profile_picture(&pictures, "42", move |p| {
///     if let Some(url) = p.url() {
///         img.set_src(&url); // a blob: URL of cached bytes, or the picture's URL
///     }
///     img.set_title(&match (p.loading(), p.error()) {
///         (true, _) => "loading…".to_owned(),
///         (false, Some(e)) => format!("failed: {e}"),
///         (false, None) => format!("from {}", p.served_by().unwrap_or_default()),
///     });
/// });
/// avatar.refetch(); // drop the picture from every tier and load it again
/// # }
/// ```
pub fn use_profile_picture(
    pictures: &Rc<ProfilePictures>,
    user_id: &str,
    on_change: impl Fn(&ProfilePicture) + 'static,
) -> ProfilePicture {
    let hook = ProfilePicture {
        inner: Rc::new(HookInner {
            pictures: pictures.clone(),
            on_change: Box::new(on_change),
            state: RefCell::new(HookState::default()),
        }),
    };
    hook.set_user_id(user_id);
    hook
}

fn now_ms() -> f64 {
    js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("performance"))
        .ok()
        .and_then(|p| {
            let now = js_sys::Reflect::get(&p, &JsValue::from_str("now")).ok()?;
            let now: js_sys::Function = wasm_bindgen::JsCast::dyn_into(now).ok()?;
            now.call0(&p).ok()?.as_f64()
        })
        .unwrap_or_else(js_sys::Date::now)
}

impl ProfilePicture {
    /// The `<img>` source once resolved: a `data:` or `blob:` URL of cached
    /// bytes (see [`ResolvedPicture::src`](super::ResolvedPicture::src)), or the
    /// picture's URL (a LocalStorage hit). Kept while a reload is in flight.
    pub fn url(&self) -> Option<String> {
        self.inner.state.borrow().url.clone()
    }

    /// Whether a lookup is in flight.
    pub fn loading(&self) -> bool {
        self.inner.state.borrow().loading
    }

    /// Why the last lookup failed (or that the user has no picture).
    pub fn error(&self) -> Option<String> {
        self.inner.state.borrow().error.clone()
    }

    /// The user whose picture this is.
    pub fn user_id(&self) -> String {
        self.inner.state.borrow().user_id.clone()
    }

    /// The tier that served the current picture (`"memory"`, …, `"network"`).
    pub fn served_by(&self) -> Option<String> {
        self.inner.state.borrow().served_by.clone()
    }

    /// How long the last lookup through the tiers took, in milliseconds
    /// (`performance.now()`), not counting the image's download or decoding.
    pub fn lookup_ms(&self) -> Option<f64> {
        self.inner.state.borrow().lookup_ms
    }

    /// Drops the picture from every tier (here and, with cross-tab, in other
    /// tabs' memory) and loads it again; `on_change` follows.
    pub fn refetch(&self) {
        let pictures = self.inner.pictures.clone();
        let user = self.user_id();
        // `invalidate` wakes every watcher of the key, this hook included.
        wasm_bindgen_futures::spawn_local(async move {
            let _ = pictures.invalidate(&user).await;
        });
    }

    /// Shows another user's picture (the custom element's `user-id` change).
    pub fn set_user_id(&self, user_id: &str) {
        let weak = Rc::downgrade(&self.inner);
        let watch = self.inner.pictures.watch(user_id, move || {
            if let Some(inner) = weak.upgrade() {
                ProfilePicture { inner }.reload();
            }
        });
        {
            let mut s = self.inner.state.borrow_mut();
            s.user_id = user_id.to_owned();
            s.url = None;
            s.served_by = None;
            s.watch = Some(watch);
        }
        self.reload();
    }

    /// The current URL did not load in an `<img>` (a LocalStorage URL that
    /// expired, or the browser is offline): forgets it in the URL-only tiers
    /// and resolves again from the byte tiers (IndexedDB, Cache API) or the
    /// network. Does nothing for a `data:` or `blob:` URL, which cannot go
    /// stale.
    pub fn url_failed(&self) {
        let Some(url) = self.url() else { return };
        if url.starts_with("data:") {
            self.set_error("the picture's bytes did not decode".to_owned());
            return;
        }
        if url.starts_with("blob:") {
            self.set_error(format!("the picture's bytes did not decode ({url})"));
            return;
        }
        let this = self.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let user = this.user_id();
            let _ = this.inner.pictures.forget_url(&user).await;
            this.reload();
        });
    }

    fn set_error(&self, error: String) {
        {
            let mut s = self.inner.state.borrow_mut();
            s.loading = false;
            s.error = Some(error);
        }
        (self.inner.on_change)(self);
    }

    /// Resolves the picture again through the chain (after an invalidation).
    pub fn reload(&self) {
        let (generation, user) = {
            let mut s = self.inner.state.borrow_mut();
            s.generation += 1;
            s.loading = true;
            s.error = None;
            (s.generation, s.user_id.clone())
        };
        (self.inner.on_change)(self);
        let this = self.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let started = now_ms();
            let result = this.inner.pictures.get(&user).await;
            let lookup = now_ms() - started;
            {
                let mut s = this.inner.state.borrow_mut();
                if s.generation != generation {
                    return; // A newer load (or user id) took over.
                }
                s.loading = false;
                s.lookup_ms = Some(lookup);
                match result {
                    Ok(Some(found)) => {
                        s.url = Some(found.src);
                        s.served_by = Some(found.served_by);
                    }
                    Ok(None) => {
                        s.url = None;
                        s.served_by = None;
                        s.error = Some(format!("user {user} has no picture"));
                    }
                    Err(e) => s.error = Some(e.to_string()),
                }
            }
            (this.inner.on_change)(&this);
        });
    }
}
