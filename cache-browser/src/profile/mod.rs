//! [`ProfilePictures`]: the ready-made chain for profile pictures.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cache_core::{
    loader_fn, BoxError, ByteSize, CacheLayer, Clock, Entry, Error, Loader, MemoryTier, Observer,
    Result, SystemClock, Tier, TieredCache, Timestamp,
};
use js_sys::{Array, Uint8Array};
use wasm_bindgen::JsValue;
use web_sys::{Blob, BlobPropertyBag, Url};

use crate::{
    Batcher, CacheApiTier, CrossTabInvalidation, IndexedDbTier, JsError, LocalStorageTier, Served,
};

mod hook;
mod tiers;

pub use hook::{use_profile_picture, ProfilePicture};
use tiers::{BytesTier, Network, ResponseTier, StoredUrl, UrlTier};

/// A tier of the preset, kept beside the chain so [`ProfilePictures::peek`]
/// can read it on its own.
type PictureTier = Arc<dyn CacheLayer<String, Picture>>;

/// Pictures up to this many bytes are handed out as `data:` URLs, bigger
/// ones as `blob:` object URLs. An `<img>` loads a `data:` URL in the page
/// itself; a `blob:` URL is fetched from the browser's blob store, which
/// measured 76–109 ms for 50 small pictures in headless Chromium against
/// 9–34 ms as `data:` URLs (base64 included).
pub const DATA_URL_MAX_BYTES: usize = 64 * 1024;

/// LocalStorage lifetime of a picture URL in the preset.
pub const LOCAL_STORAGE_TTL: Duration = Duration::from_secs(45 * 60);
/// Pictures up to this many bytes keep their bytes in LocalStorage beside
/// their URL by default (see
/// [`ProfilePicturesBuilder::local_storage_picture_bytes`]): 4 KiB, about
/// 5.5 KB of base64, holds a small avatar, and some 900 of them fit the
/// origin's 5 MB.
pub const LOCAL_STORAGE_PICTURE_BYTES: usize = 4 * 1024;
/// IndexedDB and Cache API lifetime of picture bytes in the preset.
pub const BYTES_TTL: Duration = Duration::from_secs(7 * 86_400);

/// A profile picture as the chain carries it: where it can be fetched, and its
/// bytes once someone has them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Picture {
    /// The URL the image can be loaded from (e.g. a presigned URL).
    pub url: String,
    /// The image bytes, when known.
    pub bytes: Option<Bytes>,
    /// The image's media type, e.g. `image/png`.
    pub content_type: String,
}

impl ByteSize for Picture {
    fn byte_size(&self) -> usize {
        self.url.len() + self.content_type.len() + self.bytes.as_ref().map_or(0, Bytes::len)
    }
}

/// A resolved picture: a `src` for an `<img>` and the tier that served it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedPicture {
    /// When the bytes are known, a `data:` URL of them (pictures up to
    /// [`DATA_URL_MAX_BYTES`]) or a `blob:` object URL (bigger ones), else the
    /// picture's URL. Object URLs stay valid until the entry is replaced or the
    /// [`ProfilePictures`] is dropped.
    pub src: String,
    /// `"memory"`, `"local_storage"`, `"indexed_db"`, `"cache_api"` or `"network"`.
    pub served_by: String,
    /// When the picture stops being valid.
    pub expires_at: Timestamp,
}

/// The profile-picture chain of the original design:
///
/// memory → LocalStorage (the URL, and a small picture's bytes, 45 min) →
/// IndexedDB (the bytes, 7 days) →
/// Cache API (the response, 7 days) → the caller's network loader.
///
/// # Order
///
/// Tiers are read top to bottom; the first unexpired hit wins and is written to
/// every tier above it (each with its own TTL, capped by the picture's expiry).
/// A network result is written to every tier. A tier whose storage is missing
/// or blocked is left out when the chain is built, and a tier that fails at
/// run time counts as a miss: the chain carries on to the network.
///
/// # Example
///
/// ```no_run
/// # async fn demo() -> cache_core::Result<()> {
/// use std::time::Duration;
/// use cache_browser::{Picture, ProfilePictures};
/// use cache_core::{BoxError, Clock, Entry, SystemClock};
///
/// let pictures = ProfilePictures::builder("avatars")
///     .network(|user: String| async move {
///         // fetch `/api/users/{user}/avatar` and the image here
///         let picture = Picture { url: format!("https://img.example/{user}.png"), bytes: None, content_type: "image/png".into() };
///         Ok::<_, BoxError>(Some(Entry::expiring_in(picture, SystemClock.now(), Duration::from_secs(3600))))
///     })
///     .build()
///     .await;
/// if let Some(p) = pictures.get("42").await? {
///     // img.set_src(&p.src); p.served_by says which tier answered
/// }
/// # Ok(()) }
/// ```
pub struct ProfilePictures {
    cache: TieredCache<String, Picture>,
    /// The chain's reads, one `get_many` per turn of the event loop.
    batch: Batcher<String, Picture>,
    /// The same tiers as the chain's, read one by one by `peek`.
    tiers: Vec<PictureTier>,
    shared: Rc<Shared>,
    tabs: Option<CrossTabInvalidation<String, Picture>>,
}

/// A key and the callback to run when it is invalidated.
type Watcher = (String, Weak<dyn Fn()>);

/// What the chain's users share: object URLs and the watchers of each key.
#[derive(Default)]
struct Shared {
    /// key → the object URL and the bytes it was made from (kept, so their
    /// address cannot be reused by other bytes while the URL is handed out).
    object_urls: RefCell<HashMap<String, (String, Bytes)>>,
    watchers: RefCell<Vec<Watcher>>,
}

impl Shared {
    fn revoke(&self, key: &str) {
        if let Some((url, _)) = self.object_urls.borrow_mut().remove(key) {
            let _ = Url::revoke_object_url(&url);
        }
    }

    /// Calls every live watcher of `key` (after the borrow ends, so a watcher
    /// may watch again).
    fn notify(&self, key: &str) {
        let live: Vec<Rc<dyn Fn()>> = {
            let mut watchers = self.watchers.borrow_mut();
            watchers.retain(|(_, w)| w.strong_count() > 0);
            watchers
                .iter()
                .filter(|(k, _)| k == key)
                .filter_map(|(_, w)| w.upgrade())
                .collect()
        };
        for watcher in live {
            watcher();
        }
    }
}

impl fmt::Debug for ProfilePictures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProfilePictures")
            .field("tiers", &self.cache.tier_names())
            .field("cross_tab", &self.tabs.is_some())
            .finish_non_exhaustive()
    }
}

/// Builds [`ProfilePictures`]; see [`ProfilePictures::builder`].
#[must_use]
pub struct ProfilePicturesBuilder {
    namespace: String,
    clock: Arc<dyn Clock>,
    loader: Option<Arc<dyn Loader<String, Picture>>>,
    observer: Option<Arc<dyn Observer>>,
    max_bytes: u64,
    max_entries: usize,
    cache_api_base_url: Option<String>,
    channel: Option<String>,
    local_storage_picture_bytes: usize,
}

impl fmt::Debug for ProfilePicturesBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProfilePicturesBuilder")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl ProfilePicturesBuilder {
    /// The clock for every tier and the chain (default [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The network loader: given a key, the picture (URL and, ideally, bytes).
    ///
    /// The pictures a batch of reads misses everywhere (see
    /// [`ProfilePictures::get`]) are loaded at once, one call of `f` per key
    /// running concurrently; if one fails, the batch's callers are answered
    /// key by key (see [`Batcher`]), so the others are loaded once more.
    pub fn network<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(String) -> Fut + 'static,
        Fut: std::future::Future<Output = std::result::Result<Option<Entry<Picture>>, BoxError>>
            + 'static,
    {
        self.loader = Some(Arc::new(Network(loader_fn(f))));
        self
    }

    /// Receives every hit, miss, error and backfill of the chain (e.g. the
    /// `cache-monitor` crate's metrics).
    pub fn observer(mut self, observer: impl Observer) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// The IndexedDB byte budget (default [`crate::DEFAULT_MAX_BYTES`]).
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Pictures up to `max` bytes keep their bytes in LocalStorage beside
    /// their URL, in base64 (default [`LOCAL_STORAGE_PICTURE_BYTES`]); 0 keeps
    /// URLs only. A reload then shows such a picture from LocalStorage as a
    /// `data:` URL instead of loading its URL from the browser's HTTP cache.
    /// When the origin's quota runs out, the tier evicts its oldest entries.
    pub fn local_storage_picture_bytes(mut self, max: usize) -> Self {
        self.local_storage_picture_bytes = max;
        self
    }

    /// The Cache API entry limit (default [`crate::DEFAULT_MAX_ENTRIES`]).
    pub fn max_entries(mut self, n: usize) -> Self {
        self.max_entries = n;
        self
    }

    /// The base of the Cache API tier's logical URLs (default
    /// [`crate::DEFAULT_BASE_URL`]). A base on the page's own origin (e.g.
    /// `https://app.example/pictures/`) lets a service worker answer
    /// `<img src="/pictures/42">` from the same cache.
    pub fn cache_api_base_url(mut self, base: impl Into<String>) -> Self {
        self.cache_api_base_url = Some(base.into());
        self
    }

    /// Invalidations reach every tab of the origin over the `BroadcastChannel`
    /// named `channel`: [`ProfilePictures::invalidate`] tells the other tabs,
    /// which drop the key from their memory tier and wake its watchers (see
    /// [`ProfilePictures::watch`] and [`use_profile_picture`]). Without
    /// `BroadcastChannel` the chain works in this tab only.
    pub fn cross_tab(mut self, channel: &str) -> Self {
        self.channel = Some(channel.to_owned());
        self
    }

    /// Opens every storage tier it can; unavailable ones are left out.
    // The chain takes tiers through its `Arc` forwarding impl; the page is
    // single-threaded, so these `Arc`s never cross a thread.
    #[allow(clippy::arc_with_non_send_sync)]
    pub async fn build(self) -> ProfilePictures {
        let ns = self.namespace;
        let clock = self.clock;
        let mut tiers: Vec<(PictureTier, Option<Duration>)> = vec![(
            Arc::new(
                MemoryTier::builder()
                    .name("memory")
                    .shared_clock(clock.clone())
                    .max_entries(1_000)
                    .build(),
            ),
            None,
        )];
        if let Ok(t) = LocalStorageTier::<StoredUrl>::builder(&ns)
            .clock(clock.clone())
            .ttl(LOCAL_STORAGE_TTL)
            .open()
        {
            let tier = UrlTier {
                tier: t,
                max_picture_bytes: self.local_storage_picture_bytes,
            };
            tiers.push((Arc::new(tier), Some(LOCAL_STORAGE_TTL)));
        }
        if let Ok(t) = IndexedDbTier::<Vec<u8>>::builder(&ns)
            .clock(clock.clone())
            .ttl(BYTES_TTL)
            .max_bytes(self.max_bytes)
            .open()
            .await
        {
            tiers.push((Arc::new(BytesTier(t)), Some(BYTES_TTL)));
        }
        let mut responses = CacheApiTier::<Vec<u8>>::builder(&ns)
            .clock(clock.clone())
            .ttl(BYTES_TTL)
            .max_entries(self.max_entries);
        if let Some(base) = self.cache_api_base_url {
            responses = responses.base_url(base);
        }
        if let Ok(t) = responses.open().await {
            tiers.push((Arc::new(ResponseTier(t)), Some(BYTES_TTL)));
        }
        let mut chain = TieredCache::builder().shared_clock(clock.clone());
        for (tier, ttl) in &tiers {
            let mut tier = Tier::new(tier.clone());
            if let Some(ttl) = ttl {
                tier = tier.ttl(*ttl);
            }
            chain = chain.tier(tier);
        }
        if let Some(observer) = self.observer {
            chain = chain.shared_observer(observer);
        }
        if let Some(loader) = self.loader {
            chain = chain.shared_origin(loader);
        }
        let cache = chain.build();
        let shared = Rc::new(Shared::default());
        let tabs = self.channel.and_then(|channel| {
            let tabs = CrossTabInvalidation::new(cache.clone(), &channel, &[0]).ok()?;
            let weak = Rc::downgrade(&shared);
            tabs.on_invalidated(move |key| {
                if let Some(shared) = weak.upgrade() {
                    shared.revoke(key);
                    shared.notify(key);
                }
            });
            Some(tabs)
        });
        ProfilePictures {
            batch: Batcher::new(cache.clone()),
            cache,
            tiers: tiers.into_iter().map(|(t, _)| t).collect(),
            shared,
            tabs,
        }
    }
}

/// What one tier holds for a key; see [`ProfilePictures::peek`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierContents {
    /// The tier's name.
    pub tier: String,
    /// The unexpired picture it holds (LocalStorage holds no bytes).
    pub picture: Option<Picture>,
    /// Why the tier could not be read, if it failed.
    pub error: Option<String>,
}

impl ProfilePictures {
    /// A builder whose storage lives under `namespace` (LocalStorage prefix,
    /// IndexedDB database and Cache API cache name).
    pub fn builder(namespace: &str) -> ProfilePicturesBuilder {
        ProfilePicturesBuilder {
            namespace: namespace.to_owned(),
            clock: Arc::new(SystemClock),
            loader: None,
            observer: None,
            max_bytes: crate::DEFAULT_MAX_BYTES,
            max_entries: crate::DEFAULT_MAX_ENTRIES,
            cache_api_base_url: None,
            channel: None,
            local_storage_picture_bytes: LOCAL_STORAGE_PICTURE_BYTES,
        }
    }

    /// The chain, e.g. for selective invalidation with [`TieredCache::only`].
    pub fn cache(&self) -> &TieredCache<String, Picture> {
        &self.cache
    }

    /// How many `get_many` calls [`ProfilePictures::get`] has made so far
    /// (one per turn of the event loop that asked for pictures).
    pub fn batches(&self) -> u64 {
        self.batch.batches()
    }

    /// Names of the tiers in use, top first (missing storage is left out).
    pub fn tier_names(&self) -> Vec<&str> {
        self.cache.tier_names()
    }

    /// Resolves a picture to an `<img>` source and the tier that served it.
    ///
    /// The keys asked in one turn of the event loop (the elements a list
    /// creates in one frame) are read together, as one
    /// [`TieredCache::get_many`]: one batch call per tier (one IndexedDB
    /// transaction) and one network batch; see [`Batcher`]. Each caller gets
    /// its own answer, and a key that fails fails only its own.
    ///
    /// # Errors
    ///
    /// When no tier and not the network could answer.
    pub async fn get(&self, key: &str) -> Result<Option<ResolvedPicture>> {
        let Some(found) = self.batch.get(&key.to_owned()).await? else {
            return Ok(None);
        };
        let served_by = match found.served {
            Served::Tier { name, .. } => name,
            Served::Origin => "network".to_owned(),
            Served::Stale => "stale".to_owned(),
        };
        let expires_at = found.entry.expires_at;
        let picture = found.entry.value;
        let src = match &picture.bytes {
            Some(bytes) => self.object_url(key, bytes, &picture.content_type)?,
            None => picture.url,
        };
        Ok(Some(ResolvedPicture {
            src,
            served_by,
            expires_at,
        }))
    }

    /// Invalidates `key` in every tier, revokes its object URL, tells the
    /// other tabs (with [`ProfilePicturesBuilder::cross_tab`]) and wakes the
    /// key's watchers here, which resolve it again.
    ///
    /// # Errors
    ///
    /// As [`TieredCache::invalidate`] (the watchers are woken even then).
    pub async fn invalidate(&self, key: &str) -> Result<()> {
        self.shared.revoke(key);
        let key_owned = key.to_owned();
        let result = match &self.tabs {
            Some(tabs) => tabs.invalidate(&key_owned).await.map(|_| ()),
            None => self.cache.invalidate(&key_owned).await.map(|_| ()),
        };
        self.shared.notify(key);
        result
    }

    /// Like [`ProfilePictures::invalidate`] but in this tab only: every tier
    /// here (the shared ones included), its object URL and watchers; the
    /// other tabs are not told. For an invalidation every tab hears anyway
    /// (each tab's own [`crate::ServerInvalidations`] stream): telling them
    /// too would invalidate each key twice per tab, and the second time could
    /// cancel the fills of the reload the first one started.
    ///
    /// ```no_run
    /// # async fn demo(pictures: cache_browser::ProfilePictures) -> cache_core::Result<()> {
    /// pictures.invalidate_here("42").await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`TieredCache::invalidate`] (the watchers are woken even then).
    pub async fn invalidate_here(&self, key: &str) -> Result<()> {
        self.shared.revoke(key);
        let result = self.cache.invalidate(&key.to_owned()).await.map(|_| ());
        self.shared.notify(key);
        result
    }

    /// Drops `key` from the tiers read first (memory, LocalStorage), which
    /// may hand out its URL, when that URL no longer loads (it expired, or
    /// the browser is offline), so
    /// the next [`ProfilePictures::get`] answers from the bytes kept in
    /// IndexedDB or the Cache API. Watchers are not woken.
    ///
    /// # Errors
    ///
    /// As [`TieredCache::invalidate`].
    pub async fn forget_url(&self, key: &str) -> Result<()> {
        self.shared.revoke(key);
        self.cache
            .only(&self.url_tiers())
            .invalidate(&key.to_owned())
            .await
            .map(|_| ())
    }

    /// The tiers that decide which picture version is shown, by URL: memory
    /// and LocalStorage.
    fn url_tiers(&self) -> Vec<usize> {
        self.tier_names()
            .iter()
            .enumerate()
            .filter(|(_, n)| **n == "memory" || **n == "local_storage")
            .map(|(i, _)| i)
            .collect()
    }

    /// Empties the URL tiers (memory, LocalStorage) here and, with
    /// [`ProfilePicturesBuilder::cross_tab`], the memory tier of every other
    /// tab: what a page does when the server says invalidations may have been
    /// missed (see [`crate::ServerInvalidations`]). The next
    /// [`ProfilePictures::get`] of each key reads the byte tiers or the
    /// network. Watchers are not woken (nothing is known to have changed).
    ///
    /// ```no_run
    /// # async fn demo(pictures: cache_browser::ProfilePictures) -> cache_core::Result<()> {
    /// pictures.drop_url_tiers().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`TieredCache::clear`].
    pub async fn drop_url_tiers(&self) -> Result<()> {
        let tiers = self.url_tiers();
        match &self.tabs {
            Some(tabs) => tabs.clear_tiers(&tiers).await.map(|_| ()),
            None => self.cache.only(&tiers).clear().await.map(|_| ()),
        }
    }

    /// Calls `on_invalidated` whenever `key` is invalidated here or, with
    /// [`ProfilePicturesBuilder::cross_tab`], in another tab, for as long as the
    /// returned `Rc` lives (the chain keeps only a weak reference).
    ///
    /// ```no_run
    /// # async fn demo(pictures: cache_browser::ProfilePictures) {
    /// let watch = pictures.watch("42", || { /* resolve "42" again and redraw it */ });
    /// pictures.invalidate("42").await.ok(); // the closure runs
    /// drop(watch); // no more calls
    /// # }
    /// ```
    #[must_use = "the watch ends when the returned Rc is dropped"]
    pub fn watch(&self, key: &str, on_invalidated: impl Fn() + 'static) -> Rc<dyn Fn()> {
        let watcher: Rc<dyn Fn()> = Rc::new(on_invalidated);
        self.shared
            .watchers
            .borrow_mut()
            .push((key.to_owned(), Rc::downgrade(&watcher)));
        watcher
    }

    /// What each tier holds for `key`, read tier by tier (no backfill, no
    /// network): for checking that an invalidation reached every tier.
    ///
    /// ```no_run
    /// # async fn demo(pictures: cache_browser::ProfilePictures) {
    /// for t in pictures.peek("42").await {
    ///     println!("{}: {:?}", t.tier, t.picture.map(|p| p.url));
    /// }
    /// # }
    /// ```
    pub async fn peek(&self, key: &str) -> Vec<TierContents> {
        let key = key.to_owned();
        let mut out = Vec::with_capacity(self.tiers.len());
        for tier in &self.tiers {
            let (picture, error) = match tier.get(&key).await {
                Ok(found) => (found.map(|e| e.value), None),
                Err(e) => (None, Some(e.to_string())),
            };
            out.push(TierContents {
                tier: tier.name().to_owned(),
                picture,
                error,
            });
        }
        out
    }

    /// One `data:` or object URL per key and byte buffer: a memory hit hands
    /// back the same URL, so a second `<img>` showing the key does not revoke
    /// the first one's (revoking a `data:` URL does nothing).
    fn object_url(&self, key: &str, bytes: &Bytes, content_type: &str) -> Result<String> {
        if let Some((url, made_from)) = self.shared.object_urls.borrow().get(key) {
            if made_from.as_ptr() == bytes.as_ptr() && made_from.len() == bytes.len() {
                return Ok(url.clone());
            }
        }
        let url = if bytes.len() <= DATA_URL_MAX_BYTES {
            data_url(content_type, bytes)
        } else {
            let fail = |e: JsValue| Error::Encode {
                tier: "object_url".into(),
                reason: JsError::from_js(&e).to_string(),
            };
            let parts = Array::of1(&Uint8Array::from(bytes.as_ref()).into());
            let opts = BlobPropertyBag::new();
            opts.set_type(content_type);
            let blob = Blob::new_with_u8_array_sequence_and_options(&parts, &opts).map_err(fail)?;
            Url::create_object_url_with_blob(&blob).map_err(fail)?
        };
        if let Some((old, _)) = self
            .shared
            .object_urls
            .borrow_mut()
            .insert(key.to_owned(), (url.clone(), bytes.clone()))
        {
            let _ = Url::revoke_object_url(&old);
        }
        Ok(url)
    }
}

/// `data:<content type>;base64,<bytes>`; a content type with characters a
/// media type does not use is replaced by `application/octet-stream`.
fn data_url(content_type: &str, bytes: &[u8]) -> String {
    let plain = !content_type.is_empty()
        && content_type
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-/".contains(&b));
    let content_type = if plain {
        content_type
    } else {
        "application/octet-stream"
    };
    let mut out = String::with_capacity(13 + content_type.len() + bytes.len().div_ceil(3) * 4);
    out.push_str("data:");
    out.push_str(content_type);
    out.push_str(";base64,");
    base64_into(&mut out, bytes);
    out
}

/// The standard base64 alphabet (RFC 4648, section 4), padded.
const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_into(out: &mut String, bytes: &[u8]) {
    for chunk in bytes.chunks(3) {
        let at = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (at(0) << 16) | (at(1) << 8) | at(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
}

pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    base64_into(&mut out, bytes);
    out
}

/// The bytes of padded standard base64, or `None` for anything else.
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let value = |c: u8| {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        Some(u32::from(v))
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let quads = text.len() / 4;
    for (q, quad) in text.chunks(4).enumerate() {
        // Padding only at the very end: `xx==` or `xxx=`.
        let pad = if q + 1 == quads {
            quad.iter().rev().take_while(|&&c| c == b'=').count()
        } else {
            0
        };
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for (i, &c) in quad.iter().enumerate() {
            n <<= 6;
            if i < 4 - pad {
                n |= value(c)?;
            }
        }
        let got = n.to_be_bytes();
        out.extend_from_slice(&got[1..4 - pad]);
    }
    Some(out)
}

impl Drop for ProfilePictures {
    fn drop(&mut self) {
        for (url, _) in self.shared.object_urls.borrow().values() {
            let _ = Url::revoke_object_url(url);
        }
    }
}
