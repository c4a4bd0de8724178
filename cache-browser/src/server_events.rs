//! [`ServerInvalidations`]: invalidations pushed by the server over
//! server-sent events (`EventSource`).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::rc::{Rc, Weak};

use cache_core::{ByteSize, CacheKey, Error, MaybeSend, MaybeSync, Result};
use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{EventSource, MessageEvent};

use crate::js::JsError;
use crate::{CrossTabInvalidation, ProfilePictures};

/// What to run for one invalidated key, or for a reset (with its reason).
type Handler = Rc<dyn Fn(String) -> LocalBoxFuture<'static, ()>>;

/// Counters of a [`ServerInvalidations`]; see [`ServerInvalidations::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerInvalidationStats {
    /// Key invalidations applied (their handler finished).
    pub invalidations: u64,
    /// Resets applied (their handler finished): `reset` events and gaps.
    pub resets: u64,
    /// Gaps seen: an event id that did not follow the previous one, or a
    /// `hello` after a reconnect that names another newest event.
    pub gaps: u64,
    /// Events ignored because their data was not what the format says.
    pub malformed: u64,
    /// Events ignored because their id was already seen.
    pub duplicates: u64,
    /// Times the connection was opened (1 + reconnects).
    pub opened: u64,
}

/// What the listener does, in order.
enum Action {
    Invalidate(String),
    Reset(String),
}

struct Inner {
    key_event: String,
    key_field: String,
    on_invalidate: Handler,
    on_reset: Handler,
    /// The last event id seen: (stream, seq).
    last: RefCell<Option<(String, u64)>>,
    stats: Cell<ServerInvalidationStats>,
    queue: RefCell<VecDeque<Action>>,
    draining: Cell<bool>,
    /// The open connection and its listeners (none when fed by `dispatch`).
    source: RefCell<Option<Connection>>,
}

struct Connection {
    source: EventSource,
    _listeners: Vec<Closure<dyn FnMut(MessageEvent)>>,
    _on_state: Vec<Closure<dyn FnMut(web_sys::Event)>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.source.close();
    }
}

/// Applies invalidations the server pushes over server-sent events to the
/// page's tiers; the handlers given to the builder may forward them to the
/// other tabs (over [`CrossTabInvalidation`]'s `BroadcastChannel`).
///
/// # The stream
///
/// An `EventSource` on the given URL, reading three event types (the format
/// of `profile-server`'s `GET /api/events`):
///
/// - the key event (default `invalidate`, see
///   [`ServerInvalidationsBuilder::key_event`]) with JSON data naming the key
///   in a field (default `key`; a string or a number): the key is
///   invalidated;
/// - `reset`, data `{"reason": "..."}`: changes may have been missed, the
///   reset handler runs (e.g. empty the tiers that hold URLs);
/// - `hello`, data `{"stream": "...", "seq": n}`: sent on every
///   (re)connection with the newest event's id.
///
/// Event ids are `<stream>-<seq>`, seq counting up by one per event. A gap
/// (an event whose seq does not follow the last one, another stream's event,
/// or a `hello` after a reconnect that names another newest event than the
/// last one seen) runs the reset handler before the event itself. Malformed
/// data is counted and logged to the console (never a panic); a numbered key
/// event whose key cannot be read counts as a gap. Unknown event types are
/// ignored. Handlers run one at a time, in the order of the events.
/// When the browser gives up on the connection (an HTTP error), it is opened
/// again after 5 s with `?last_event_id=` (the header cannot be set).
///
/// There is no leader election: every tab that builds one holds its own
/// connection. So [`ServerInvalidationsBuilder::pictures`] applies a key in
/// its own tab only (every tab hears it), and forwards resets;
/// [`ServerInvalidationsBuilder::cross_tab`] forwards everything, for a page
/// whose tabs share one stream.
///
/// # Example
///
/// ```no_run
/// # async fn demo() -> cache_core::Result<()> {
/// use std::rc::Rc;
/// use cache_browser::{ProfilePictures, ServerInvalidations};
///
/// let pictures = Rc::new(ProfilePictures::builder("avatars").cross_tab("avatars").build().await);
/// let events = ServerInvalidations::builder()
///     .key_event("avatar", "user") // `event: avatar`, `data: {"user":"42"}`
///     .pictures(&pictures) // invalidate in every tier, redraw
///     .connect("/api/events")?;
/// // Keep `events` alive as long as the page shows pictures.
/// println!("{:?}", events.stats());
/// # Ok(()) }
/// ```
pub struct ServerInvalidations {
    inner: Rc<Inner>,
}

impl fmt::Debug for ServerInvalidations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerInvalidations")
            .field("key_event", &self.inner.key_event)
            .field("last_event_id", &self.last_event_id())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Builds [`ServerInvalidations`]; see [`ServerInvalidations::builder`].
#[must_use]
pub struct ServerInvalidationsBuilder {
    key_event: String,
    key_field: String,
    on_invalidate: Option<Handler>,
    on_reset: Option<Handler>,
}

impl fmt::Debug for ServerInvalidationsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerInvalidationsBuilder")
            .field("key_event", &self.key_event)
            .field("key_field", &self.key_field)
            .finish_non_exhaustive()
    }
}

impl ServerInvalidationsBuilder {
    /// The event type that invalidates one key, and the JSON field of its
    /// data that holds the key (default `invalidate` and `key`).
    pub fn key_event(mut self, event: &str, field: &str) -> Self {
        self.key_event = event.to_owned();
        self.key_field = field.to_owned();
        self
    }

    /// Runs for every invalidated key (after the previous event's handler).
    pub fn on_invalidate<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(String) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.on_invalidate = Some(Rc::new(move |key| f(key).boxed_local()));
        self
    }

    /// Runs for every reset (a `reset` event or a gap), with its reason.
    pub fn on_reset<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(String) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.on_reset = Some(Rc::new(move |reason| f(reason).boxed_local()));
        self
    }

    /// Both handlers for a plain chain: a key is invalidated in every tier
    /// here and in the other tabs' local tiers
    /// ([`CrossTabInvalidation::invalidate`]); a reset empties `url_tiers`
    /// here and the local tiers of the other tabs
    /// ([`CrossTabInvalidation::clear_tiers`]). Failures are logged.
    pub fn cross_tab<K, V>(self, tabs: &Rc<CrossTabInvalidation<K, V>>, url_tiers: &[usize]) -> Self
    where
        K: CacheKey + From<String> + 'static,
        V: Clone + ByteSize + MaybeSend + MaybeSync + 'static,
    {
        let (keys, resets) = (Rc::downgrade(tabs), Rc::downgrade(tabs));
        let url_tiers: Rc<[usize]> = url_tiers.into();
        self.on_invalidate(move |key| {
            let tabs = keys.upgrade();
            async move {
                if let Some(tabs) = tabs {
                    log_failure("invalidating", tabs.invalidate(&K::from(key)).await);
                }
            }
        })
        .on_reset(move |_reason| {
            let (tabs, tiers) = (resets.upgrade(), url_tiers.clone());
            async move {
                if let Some(tabs) = tabs {
                    log_failure("emptying the URL tiers", tabs.clear_tiers(&tiers).await);
                }
            }
        })
    }

    /// Both handlers for [`ProfilePictures`] when every tab holds its own
    /// stream: a key goes through [`ProfilePictures::invalidate_here`] (every
    /// tier, the key's watchers redraw it; the other tabs hear the same event
    /// on their own stream, so it is not forwarded), a reset through
    /// [`ProfilePictures::drop_url_tiers`] (here, and forwarded to the other
    /// tabs' memory). Only a weak reference is kept. For one stream shared by
    /// the tabs, forward keys with [`ProfilePictures::invalidate`] in
    /// [`on_invalidate`](Self::on_invalidate) instead.
    pub fn pictures(self, pictures: &Rc<ProfilePictures>) -> Self {
        let (keys, resets) = (Rc::downgrade(pictures), Rc::downgrade(pictures));
        self.on_invalidate(move |key| {
            let pictures = keys.upgrade();
            async move {
                if let Some(pictures) = pictures {
                    log_failure("invalidating", pictures.invalidate_here(&key).await);
                }
            }
        })
        .on_reset(move |_reason| {
            let pictures = resets.upgrade();
            async move {
                if let Some(pictures) = pictures {
                    log_failure("emptying the URL tiers", pictures.drop_url_tiers().await);
                }
            }
        })
    }

    /// Opens an `EventSource` on `url` and applies what it says.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when `EventSource` is missing or refuses the URL.
    pub fn connect(self, url: &str) -> Result<ServerInvalidations> {
        let listener = self.build();
        open(&listener.inner, url.to_owned())?;
        Ok(listener)
    }

    /// A listener without a connection: events reach it through
    /// [`ServerInvalidations::dispatch`] (e.g. when another part of the page
    /// owns the `EventSource`).
    pub fn build(self) -> ServerInvalidations {
        let nothing: Handler = Rc::new(|_| async {}.boxed_local());
        ServerInvalidations {
            inner: Rc::new(Inner {
                key_event: self.key_event,
                key_field: self.key_field,
                on_invalidate: self.on_invalidate.unwrap_or_else(|| nothing.clone()),
                on_reset: self.on_reset.unwrap_or(nothing),
                last: RefCell::new(None),
                stats: Cell::new(ServerInvalidationStats::default()),
                queue: RefCell::new(VecDeque::new()),
                draining: Cell::new(false),
                source: RefCell::new(None),
            }),
        }
    }
}

fn warn(message: &str) {
    web_sys::console::warn_1(&JsValue::from_str(&format!(
        "cache-browser server invalidations: {message}"
    )));
}

fn log_failure<T>(what: &str, result: Result<T>) {
    if let Err(e) = result {
        warn(&format!("{what} failed: {e}"));
    }
}

/// How long to wait before opening a connection the browser gave up on.
const REOPEN_MS: i32 = 5_000;

/// Opens the `EventSource` (again), resuming after the last id seen.
fn open(inner: &Rc<Inner>, url: String) -> Result<()> {
    let unavailable = |e: JsValue| Error::Unavailable {
        tier: "event_source".into(),
        reason: JsError::from_js(&e).to_string(),
    };
    let resume_url = match inner.last.borrow().as_ref() {
        Some((stream, seq)) => {
            let sep = if url.contains('?') { '&' } else { '?' };
            let id = format!("{stream}-{seq}");
            let id = js_sys::encode_uri_component(&id);
            format!("{url}{sep}last_event_id={id}")
        }
        None => url.clone(),
    };
    let source = EventSource::new(&resume_url).map_err(unavailable)?;
    let mut listeners = Vec::new();
    for kind in ["hello", "reset", inner.key_event.as_str()] {
        let weak = Rc::downgrade(inner);
        let listener = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
            if let Some(inner) = weak.upgrade() {
                on_event(&inner, &event);
            }
        });
        source
            .add_event_listener_with_callback(kind, listener.as_ref().unchecked_ref())
            .map_err(unavailable)?;
        listeners.push(listener);
    }
    let weak = Rc::downgrade(inner);
    let on_open = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
        if let Some(inner) = weak.upgrade() {
            inner.count(|s| s.opened += 1);
        }
    });
    source.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    let weak: Weak<Inner> = Rc::downgrade(inner);
    let on_error = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
        let Some(inner) = weak.upgrade() else { return };
        let closed = inner
            .source
            .borrow()
            .as_ref()
            .is_some_and(|c| c.source.ready_state() == EventSource::CLOSED);
        // While CONNECTING the browser retries by itself.
        if closed {
            warn(&format!("the browser gave up on {url}; opening it again"));
            reopen_later(&weak, url.clone());
        }
    });
    source.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    *inner.source.borrow_mut() = Some(Connection {
        source,
        _listeners: listeners,
        _on_state: vec![on_open, on_error],
    });
    Ok(())
}

fn reopen_later(weak: &Weak<Inner>, url: String) {
    let weak = weak.clone();
    let again = Closure::once_into_js(move || {
        if let Some(inner) = weak.upgrade() {
            log_failure("reopening the event stream", open(&inner, url));
        }
    });
    if let Some(window) = web_sys::window() {
        let _ = window.set_timeout_with_callback_and_timeout_and_arguments_0(
            again.unchecked_ref(),
            REOPEN_MS,
        );
    }
}

/// `<stream>-<seq>`.
fn parse_id(id: &str) -> Option<(String, u64)> {
    let (stream, seq) = id.rsplit_once('-')?;
    Some((stream.to_owned(), seq.parse().ok()?))
}

impl Inner {
    fn count(&self, f: impl FnOnce(&mut ServerInvalidationStats)) {
        let mut stats = self.stats.get();
        f(&mut stats);
        self.stats.set(stats);
    }

    fn malformed(&self, what: &str, data: &str) {
        self.count(|s| s.malformed += 1);
        warn(&format!(
            "ignored a malformed {what} event: {}",
            cache_core::key::preview(data)
        ));
    }
}

/// Applies one event: the gap check, then the action, queued.
fn on_event(inner: &Rc<Inner>, event: &MessageEvent) {
    let kind = event.type_();
    let data = event.data().as_string().unwrap_or_default();
    let id = parse_id(&event.last_event_id());
    let json: Option<serde_json::Value> = serde_json::from_str(&data).ok();
    let field = |name: &str| json.as_ref().and_then(|j| j.get(name)).cloned();
    if kind == "hello" {
        let from_data = field("stream")
            .and_then(|s| s.as_str().map(str::to_owned))
            .zip(field("seq").and_then(|n| n.as_u64()));
        let Some((stream, seq)) = id.or(from_data) else {
            return inner.malformed("hello", &data);
        };
        let gap = matches!(&*inner.last.borrow(), Some((s, n)) if *s != stream || *n != seq);
        *inner.last.borrow_mut() = Some((stream, seq));
        if gap {
            inner.count(|s| s.gaps += 1);
            enqueue(
                inner,
                Action::Reset("the stream resumed after a gap".into()),
            );
        }
    } else if kind == "reset" {
        let reason = field("reason")
            .and_then(|r| r.as_str().map(str::to_owned))
            .unwrap_or_else(|| "the server asked for a reset".to_owned());
        if let Some(id) = id {
            *inner.last.borrow_mut() = Some(id);
        }
        enqueue(inner, Action::Reset(reason));
    } else if kind == inner.key_event {
        let key = match field(&inner.key_field) {
            Some(serde_json::Value::String(key)) => Some(key),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let in_sequence = id.is_some();
        if let Some((stream, seq)) = id {
            let last = inner.last.borrow().clone();
            match last {
                Some((s, n)) if s == stream && seq <= n => {
                    inner.count(|s| s.duplicates += 1);
                    return;
                }
                Some((s, n)) if s != stream || seq != n + 1 => {
                    inner.count(|s| s.gaps += 1);
                    enqueue(
                        inner,
                        Action::Reset(format!("events before {seq} were missed")),
                    );
                }
                _ => {}
            }
            *inner.last.borrow_mut() = Some((stream, seq));
        }
        match key {
            Some(key) => enqueue(inner, Action::Invalidate(key)),
            None => {
                inner.malformed(&kind, &data);
                // A numbered event was lost all the same: like a gap.
                if in_sequence {
                    enqueue(inner, Action::Reset("an event could not be read".into()));
                }
            }
        }
    }
}

/// Runs the actions one at a time, in order.
fn enqueue(inner: &Rc<Inner>, action: Action) {
    inner.queue.borrow_mut().push_back(action);
    if inner.draining.replace(true) {
        return;
    }
    let inner = inner.clone();
    wasm_bindgen_futures::spawn_local(async move {
        loop {
            let next = inner.queue.borrow_mut().pop_front();
            let Some(action) = next else { break };
            match action {
                Action::Invalidate(key) => {
                    (inner.on_invalidate)(key).await;
                    inner.count(|s| s.invalidations += 1);
                }
                Action::Reset(reason) => {
                    (inner.on_reset)(reason).await;
                    inner.count(|s| s.resets += 1);
                }
            }
        }
        inner.draining.set(false);
    });
}

impl ServerInvalidations {
    /// A builder: the key event, the handlers, then
    /// [`connect`](ServerInvalidationsBuilder::connect).
    ///
    /// ```no_run
    /// # fn demo() -> cache_core::Result<()> {
    /// let events = cache_browser::ServerInvalidations::builder()
    ///     .on_invalidate(|key| async move { let _ = key; /* drop it */ })
    ///     .on_reset(|reason| async move { let _ = reason; /* drop the URL tiers */ })
    ///     .connect("/api/events")?;
    /// # drop(events); Ok(()) }
    /// ```
    pub fn builder() -> ServerInvalidationsBuilder {
        ServerInvalidationsBuilder {
            key_event: "invalidate".to_owned(),
            key_field: "key".to_owned(),
            on_invalidate: None,
            on_reset: None,
        }
    }

    /// Applies one event as if the stream had delivered it (its type, data
    /// and `lastEventId`).
    ///
    /// ```no_run
    /// # fn demo(events: &cache_browser::ServerInvalidations) -> Result<(), wasm_bindgen::JsValue> {
    /// let init = web_sys::MessageEventInit::new();
    /// init.set_data(&r#"{"key":"42"}"#.into());
    /// init.set_last_event_id("s1-1");
    /// events.dispatch(&web_sys::MessageEvent::new_with_event_init_dict("invalidate", &init)?);
    /// # Ok(()) }
    /// ```
    pub fn dispatch(&self, event: &MessageEvent) {
        on_event(&self.inner, event);
    }

    /// What it has done so far.
    ///
    /// ```no_run
    /// # fn demo(events: &cache_browser::ServerInvalidations) {
    /// let stats = events.stats();
    /// println!("{} invalidations, {} resets", stats.invalidations, stats.resets);
    /// # }
    /// ```
    pub fn stats(&self) -> ServerInvalidationStats {
        self.inner.stats.get()
    }

    /// The id of the last event seen (`<stream>-<seq>`).
    ///
    /// ```no_run
    /// # fn demo(events: &cache_browser::ServerInvalidations) {
    /// if let Some(id) = events.last_event_id() { println!("in step up to {id}"); }
    /// # }
    /// ```
    pub fn last_event_id(&self) -> Option<String> {
        let last = self.inner.last.borrow();
        last.as_ref().map(|(stream, seq)| format!("{stream}-{seq}"))
    }

    /// Whether the connection is open now (`EventSource.readyState` OPEN).
    ///
    /// ```no_run
    /// # fn demo(events: &cache_browser::ServerInvalidations) {
    /// if !events.is_open() { /* the server is out of reach; it reconnects */ }
    /// # }
    /// ```
    pub fn is_open(&self) -> bool {
        self.inner
            .source
            .borrow()
            .as_ref()
            .is_some_and(|c| c.source.ready_state() == EventSource::OPEN)
    }
}

impl Drop for ServerInvalidations {
    fn drop(&mut self) {
        // Closes the EventSource; a queued handler still finishes.
        self.inner.source.borrow_mut().take();
    }
}
