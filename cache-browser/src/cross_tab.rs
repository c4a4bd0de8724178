//! [`CrossTabInvalidation`]: invalidations reach every tab of the origin.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use cache_core::{
    ByteSize, CacheKey, Error, MaybeSend, MaybeSync, Result, TierReport, TieredCache,
};
use js_sys::{Object, Reflect};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{BroadcastChannel, MessageEvent};

use crate::js::JsError;

const KIND_KEY: &str = "key";
const KIND_PREFIX: &str = "prefix";
const KIND_CLEAR: &str = "clear";
const FORMAT: &str = "cache-browser/invalidate/1";

/// The callback of [`CrossTabInvalidation::on_invalidated`], shared with the
/// message listener.
type OnInvalidated = Rc<RefCell<Option<Rc<dyn Fn(&str)>>>>;

/// Wraps a [`TieredCache`] so that invalidating a key in one tab also drops it
/// from the per-tab tiers (the memory tier) of every other tab of the same
/// origin, over a `BroadcastChannel`.
///
/// The sending tab invalidates every tier itself (shared tiers such as
/// IndexedDB are shared by all tabs anyway); receiving tabs only invalidate the
/// tiers listed as `local_tiers`. A `BroadcastChannel` never delivers a message
/// to the object that sent it, so a tab does not process its own messages.
///
/// # Example
///
/// ```no_run
/// # async fn demo() -> cache_core::Result<()> {
/// use cache_browser::CrossTabInvalidation;
/// use cache_core::{MemoryTier, Tier, TieredCache};
///
/// let cache: TieredCache<String, String> =
///     TieredCache::builder().tier(Tier::new(MemoryTier::new())).build();
/// let tabs = CrossTabInvalidation::new(cache, "avatars", &[0])?;
/// tabs.invalidate(&"user:42".to_string()).await?; // every tab forgets user:42
/// # Ok(()) }
/// ```
pub struct CrossTabInvalidation<K, V> {
    cache: TieredCache<K, V>,
    channel: BroadcastChannel,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    on_invalidated: OnInvalidated,
}

impl<K, V> fmt::Debug for CrossTabInvalidation<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CrossTabInvalidation")
            .field("channel", &self.channel.name())
            .finish_non_exhaustive()
    }
}

impl<K, V> CrossTabInvalidation<K, V>
where
    K: CacheKey + From<String>,
    V: Clone + ByteSize + MaybeSend + MaybeSync + 'static,
{
    /// Listens on the `BroadcastChannel` named `channel_name`; messages from
    /// other tabs invalidate `local_tiers` (indices into the chain) of `cache`.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when `BroadcastChannel` is missing.
    pub fn new(
        cache: TieredCache<K, V>,
        channel_name: &str,
        local_tiers: &[usize],
    ) -> Result<Self> {
        let channel = BroadcastChannel::new(channel_name).map_err(|e| Error::Unavailable {
            tier: "broadcast_channel".into(),
            reason: JsError::from_js(&e).to_string(),
        })?;
        Ok(Self::with_channel(cache, channel, local_tiers))
    }

    /// Like [`CrossTabInvalidation::new`] with a channel made by the caller,
    /// e.g. in another browsing context (an iframe's realm).
    pub fn with_channel(
        cache: TieredCache<K, V>,
        channel: BroadcastChannel,
        local_tiers: &[usize],
    ) -> Self {
        let tiers: Rc<[usize]> = local_tiers.into();
        let target = cache.clone();
        let on_invalidated: OnInvalidated = Rc::default();
        let callback = on_invalidated.clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
            let Some((kind, key)) = parse(&event.data()) else {
                return; // Not our message: ignore it.
            };
            let cache = target.clone();
            let tiers = tiers.clone();
            let callback = callback.clone();
            wasm_bindgen_futures::spawn_local(async move {
                // A failed local invalidation leaves nothing shared stale; the
                // entry still expires on its own.
                let _ = match kind.as_str() {
                    KIND_PREFIX => cache.only(&tiers).invalidate_prefix(&key).await,
                    KIND_CLEAR => {
                        // Nothing names a key: the callback is for keys only.
                        let _ = cache.only(&tiers).clear().await;
                        return;
                    }
                    _ => cache.only(&tiers).invalidate(&K::from(key.clone())).await,
                };
                let callback = callback.borrow().clone();
                if let Some(callback) = callback {
                    callback(&key);
                }
            });
        });
        channel.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        CrossTabInvalidation {
            cache,
            channel,
            _on_message: on_message,
            on_invalidated,
        }
    }

    /// Calls `f` in this tab after another tab's invalidation has been applied
    /// to the local tiers here, with the key (or, for a prefix invalidation,
    /// the prefix): e.g. to draw the key again from fresh data. Replaces any
    /// earlier callback.
    ///
    /// ```no_run
    /// # fn demo(tabs: &cache_browser::CrossTabInvalidation<String, String>) {
    /// tabs.on_invalidated(|key| {
    ///     let _redraw = key; // e.g. resolve `key` again and show it
    /// });
    /// # }
    /// ```
    pub fn on_invalidated(&self, f: impl Fn(&str) + 'static) {
        *self.on_invalidated.borrow_mut() = Some(Rc::new(f));
    }

    /// The wrapped chain.
    pub fn cache(&self) -> &TieredCache<K, V> {
        &self.cache
    }

    /// Invalidates `key` in every tier here, then tells the other tabs.
    ///
    /// # Errors
    ///
    /// As [`TieredCache::invalidate`]; the other tabs are told even then.
    pub async fn invalidate(&self, key: &K) -> Result<TierReport> {
        let report = self.cache.invalidate(key).await;
        self.post(KIND_KEY, &key.key_str())?;
        report
    }

    /// Invalidates every key starting with `prefix`, here and in the other tabs.
    ///
    /// # Errors
    ///
    /// As [`TieredCache::invalidate_prefix`].
    pub async fn invalidate_prefix(&self, prefix: &str) -> Result<TierReport> {
        let report = self.cache.invalidate_prefix(prefix).await;
        self.post(KIND_PREFIX, prefix)?;
        report
    }

    /// Empties `tiers` (indices into the chain) here, then tells the other
    /// tabs, which empty their local tiers: e.g. the tiers that hold picture
    /// URLs, after the server said changes may have been missed (see
    /// [`crate::ServerInvalidations`]).
    ///
    /// ```no_run
    /// # async fn demo(tabs: cache_browser::CrossTabInvalidation<String, String>) -> cache_core::Result<()> {
    /// tabs.clear_tiers(&[0, 1]).await?; // tiers 0 and 1 here, the local tiers elsewhere
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`TieredCache::clear`]; the other tabs are told even then.
    pub async fn clear_tiers(&self, tiers: &[usize]) -> Result<TierReport> {
        let report = self.cache.only(tiers).clear().await;
        self.post(KIND_CLEAR, "")?;
        report
    }

    fn post(&self, kind: &str, key: &str) -> Result<()> {
        let msg = Object::new();
        let put =
            |f: &str, v: &str| Reflect::set(&msg, &JsValue::from_str(f), &JsValue::from_str(v));
        put("format", FORMAT)
            .and_then(|_| put("kind", kind))
            .and_then(|_| put("key", key))
            .and_then(|_| self.channel.post_message(&msg))
            .map_err(|e| Error::Unavailable {
                tier: "broadcast_channel".into(),
                reason: JsError::from_js(&e).to_string(),
            })
    }
}

fn parse(data: &JsValue) -> Option<(String, String)> {
    let get = |f: &str| Reflect::get(data, &JsValue::from_str(f)).ok()?.as_string();
    if get("format")? != FORMAT {
        return None;
    }
    let kind = get("kind")?;
    [KIND_KEY, KIND_PREFIX, KIND_CLEAR]
        .contains(&kind.as_str())
        .then_some(())?;
    Some((kind, get("key")?))
}

impl<K, V> Drop for CrossTabInvalidation<K, V> {
    fn drop(&mut self) {
        self.channel.set_onmessage(None);
        self.channel.close();
    }
}
