//! [`ProfilePictures`]: the ready-made chain for profile pictures.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cache_core::{
    async_trait, loader_fn, BoxError, ByteSize, CacheLayer, Clock, Entry, Error, Loader,
    MemoryTier, Observer, Result, Source, SystemClock, Tier, TieredCache, Timestamp,
};
use js_sys::{Array, Uint8Array};
use serde::{Deserialize, Serialize};
use wasm_bindgen::JsValue;
use web_sys::{Blob, BlobPropertyBag, Url};

use crate::{CacheApiTier, IndexedDbTier, JsError, LocalStorageTier};

/// LocalStorage lifetime of a picture URL in the preset.
pub const LOCAL_STORAGE_TTL: Duration = Duration::from_secs(45 * 60);
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
    /// A `blob:` object URL of the bytes when the bytes are known, else the
    /// picture's URL. Object URLs stay valid until the entry is replaced or the
    /// [`ProfilePictures`] is dropped.
    pub src: String,
    /// `"memory"`, `"local_storage"`, `"indexed_db"`, `"cache_api"` or `"network"`.
    pub served_by: String,
    /// When the picture stops being valid.
    pub expires_at: Timestamp,
}

/// LocalStorage holds only the URL and media type.
#[derive(Serialize, Deserialize)]
struct StoredUrl {
    url: String,
    content_type: String,
}

#[derive(Debug)]
struct UrlTier(LocalStorageTier<StoredUrl>);

#[async_trait(?Send)]
impl CacheLayer<String, Picture> for UrlTier {
    fn name(&self) -> &str {
        CacheLayer::<String, StoredUrl>::name(&self.0)
    }
    async fn get(&self, key: &String) -> Result<Option<Entry<Picture>>> {
        Ok(self.0.get(key).await?.map(|e: Entry<StoredUrl>| {
            e.map(|s| Picture {
                url: s.url,
                bytes: None,
                content_type: s.content_type,
            })
        }))
    }
    async fn put(&self, key: &String, entry: Entry<Picture>) -> Result<()> {
        let entry = entry.map(|p| StoredUrl {
            url: p.url,
            content_type: p.content_type,
        });
        self.0.put(key, entry).await
    }
    async fn remove(&self, key: &String) -> Result<bool> {
        CacheLayer::<String, StoredUrl>::remove(&self.0, key).await
    }
    async fn remove_prefix(&self, prefix: &str) -> Result<()> {
        CacheLayer::<String, StoredUrl>::remove_prefix(&self.0, prefix).await
    }
    async fn clear(&self) -> Result<()> {
        CacheLayer::<String, StoredUrl>::clear(&self.0).await
    }
}

/// `[u32 url len][url][u32 type len][type][bytes]`: IndexedDB keeps the URL and
/// media type beside the image bytes.
fn pack(p: &Picture, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + p.url.len() + p.content_type.len() + bytes.len());
    for s in [&p.url, &p.content_type] {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(bytes);
    out
}

fn unpack(data: &[u8]) -> Option<Picture> {
    fn field(data: &[u8]) -> Option<(String, &[u8])> {
        let len = u32::from_le_bytes(data.get(..4)?.try_into().ok()?) as usize;
        let s = std::str::from_utf8(data.get(4..4 + len)?).ok()?;
        Some((s.to_owned(), &data[4 + len..]))
    }
    let (url, rest) = field(data)?;
    let (content_type, rest) = field(rest)?;
    Some(Picture {
        url,
        bytes: Some(Bytes::copy_from_slice(rest)),
        content_type,
    })
}

#[derive(Debug)]
struct BytesTier(IndexedDbTier<Vec<u8>>);

#[async_trait(?Send)]
impl CacheLayer<String, Picture> for BytesTier {
    fn name(&self) -> &str {
        CacheLayer::<String, Vec<u8>>::name(&self.0)
    }
    async fn get(&self, key: &String) -> Result<Option<Entry<Picture>>> {
        let Some(e) = self.0.get(key).await? else {
            return Ok(None);
        };
        match unpack(&e.value) {
            Some(p) => Ok(Some(Entry::new(p, e.expires_at))),
            None => {
                CacheLayer::<String, Vec<u8>>::remove(&self.0, key).await?;
                Ok(None)
            }
        }
    }
    async fn put(&self, key: &String, entry: Entry<Picture>) -> Result<()> {
        // A URL without bytes has nothing to keep here.
        let Some(bytes) = entry.value.bytes.clone() else {
            return Ok(());
        };
        let packed = pack(&entry.value, &bytes);
        self.0.put(key, Entry::new(packed, entry.expires_at)).await
    }
    async fn remove(&self, key: &String) -> Result<bool> {
        CacheLayer::<String, Vec<u8>>::remove(&self.0, key).await
    }
    async fn remove_prefix(&self, prefix: &str) -> Result<()> {
        CacheLayer::<String, Vec<u8>>::remove_prefix(&self.0, prefix).await
    }
    async fn clear(&self) -> Result<()> {
        CacheLayer::<String, Vec<u8>>::clear(&self.0).await
    }
}

#[derive(Debug)]
struct ResponseTier(CacheApiTier<Vec<u8>>);

#[async_trait(?Send)]
impl CacheLayer<String, Picture> for ResponseTier {
    fn name(&self) -> &str {
        CacheLayer::<String, Vec<u8>>::name(&self.0)
    }
    async fn get(&self, key: &String) -> Result<Option<Entry<Picture>>> {
        let Some((response, expires_at)) = self.0.match_response(key).await? else {
            return Ok(None);
        };
        let content_type = response
            .headers()
            .get("content-type")
            .ok()
            .flatten()
            .unwrap_or_else(|| "application/octet-stream".into());
        let body = response.array_buffer().map_err(|e| {
            Error::backend(
                self.name(),
                cache_core::Operation::Get,
                JsError::from_js(&e),
            )
        })?;
        let body = crate::js::await_promise(body)
            .await
            .map_err(|e| Error::backend(self.name(), cache_core::Operation::Get, e))?;
        Ok(Some(Entry::new(
            Picture {
                url: self.0.url_for(key),
                bytes: Some(Bytes::from(Uint8Array::new(&body).to_vec())),
                content_type,
            },
            expires_at,
        )))
    }
    async fn put(&self, key: &String, entry: Entry<Picture>) -> Result<()> {
        let Some(bytes) = entry.value.bytes.as_ref() else {
            return Ok(());
        };
        let init = web_sys::ResponseInit::new();
        let headers = web_sys::Headers::new().map_err(|e| {
            Error::backend(
                self.name(),
                cache_core::Operation::Put,
                JsError::from_js(&e),
            )
        })?;
        let _ = headers.set("content-type", &entry.value.content_type);
        init.set_headers(&headers);
        let body = Uint8Array::from(bytes.as_ref());
        let response = web_sys::Response::new_with_opt_js_u8_array_and_init(Some(&body), &init)
            .map_err(|e| {
                Error::backend(
                    self.name(),
                    cache_core::Operation::Put,
                    JsError::from_js(&e),
                )
            })?;
        self.0.put_response(key, &response, entry.expires_at).await
    }
    async fn remove(&self, key: &String) -> Result<bool> {
        CacheLayer::<String, Vec<u8>>::remove(&self.0, key).await
    }
    async fn remove_prefix(&self, prefix: &str) -> Result<()> {
        CacheLayer::<String, Vec<u8>>::remove_prefix(&self.0, prefix).await
    }
    async fn clear(&self) -> Result<()> {
        CacheLayer::<String, Vec<u8>>::clear(&self.0).await
    }
}

/// The profile-picture chain of the original design:
///
/// memory → LocalStorage (the URL, 45 min) → IndexedDB (the bytes, 7 days) →
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
    object_urls: RefCell<HashMap<String, String>>,
}

impl fmt::Debug for ProfilePictures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProfilePictures")
            .field("tiers", &self.cache.tier_names())
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
    pub fn network<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(String) -> Fut + 'static,
        Fut: std::future::Future<Output = std::result::Result<Option<Entry<Picture>>, BoxError>>
            + 'static,
    {
        self.loader = Some(Arc::new(loader_fn(f)));
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

    /// The Cache API entry limit (default [`crate::DEFAULT_MAX_ENTRIES`]).
    pub fn max_entries(mut self, n: usize) -> Self {
        self.max_entries = n;
        self
    }

    /// Opens every storage tier it can; unavailable ones are left out.
    pub async fn build(self) -> ProfilePictures {
        let ns = self.namespace;
        let clock = self.clock;
        let mut chain = TieredCache::builder()
            .shared_clock(clock.clone())
            .tier(Tier::new(
                MemoryTier::builder()
                    .name("memory")
                    .shared_clock(clock.clone())
                    .max_entries(1_000)
                    .build(),
            ));
        if let Ok(t) = LocalStorageTier::<StoredUrl>::builder(&ns)
            .clock(clock.clone())
            .ttl(LOCAL_STORAGE_TTL)
            .open()
        {
            chain = chain.tier(Tier::new(UrlTier(t)).ttl(LOCAL_STORAGE_TTL));
        }
        if let Ok(t) = IndexedDbTier::<Vec<u8>>::builder(&ns)
            .clock(clock.clone())
            .ttl(BYTES_TTL)
            .max_bytes(self.max_bytes)
            .open()
            .await
        {
            chain = chain.tier(Tier::new(BytesTier(t)).ttl(BYTES_TTL));
        }
        if let Ok(t) = CacheApiTier::<Vec<u8>>::builder(&ns)
            .clock(clock.clone())
            .ttl(BYTES_TTL)
            .max_entries(self.max_entries)
            .open()
            .await
        {
            chain = chain.tier(Tier::new(ResponseTier(t)).ttl(BYTES_TTL));
        }
        if let Some(observer) = self.observer {
            chain = chain.shared_observer(observer);
        }
        if let Some(loader) = self.loader {
            chain = chain.shared_origin(loader);
        }
        ProfilePictures {
            cache: chain.build(),
            object_urls: RefCell::new(HashMap::new()),
        }
    }
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
        }
    }

    /// The chain, e.g. for [`crate::CrossTabInvalidation`] or selective
    /// invalidation with [`TieredCache::only`].
    pub fn cache(&self) -> &TieredCache<String, Picture> {
        &self.cache
    }

    /// Names of the tiers in use, top first (missing storage is left out).
    pub fn tier_names(&self) -> Vec<&str> {
        self.cache.tier_names()
    }

    /// Resolves a picture to an `<img>` source and the tier that served it.
    ///
    /// # Errors
    ///
    /// When no tier and not the network could answer.
    pub async fn get(&self, key: &str) -> Result<Option<ResolvedPicture>> {
        let Some(found) = self.cache.get(&key.to_owned()).await? else {
            return Ok(None);
        };
        let served_by = match found.source {
            Source::Tier { name, .. } => name.to_owned(),
            Source::Origin => "network".to_owned(),
            Source::Stale => "stale".to_owned(),
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

    /// Invalidates `key` in every tier and revokes its object URL.
    ///
    /// # Errors
    ///
    /// As [`TieredCache::invalidate`].
    pub async fn invalidate(&self, key: &str) -> Result<()> {
        if let Some(url) = self.object_urls.borrow_mut().remove(key) {
            let _ = Url::revoke_object_url(&url);
        }
        self.cache.invalidate(&key.to_owned()).await.map(|_| ())
    }

    fn object_url(&self, key: &str, bytes: &[u8], content_type: &str) -> Result<String> {
        let fail = |e: JsValue| Error::Encode {
            tier: "object_url".into(),
            reason: JsError::from_js(&e).to_string(),
        };
        let parts = Array::of1(&Uint8Array::from(bytes).into());
        let opts = BlobPropertyBag::new();
        opts.set_type(content_type);
        let blob = Blob::new_with_u8_array_sequence_and_options(&parts, &opts).map_err(fail)?;
        let url = Url::create_object_url_with_blob(&blob).map_err(fail)?;
        if let Some(old) = self
            .object_urls
            .borrow_mut()
            .insert(key.to_owned(), url.clone())
        {
            let _ = Url::revoke_object_url(&old);
        }
        Ok(url)
    }
}

impl Drop for ProfilePictures {
    fn drop(&mut self) {
        for url in self.object_urls.borrow().values() {
            let _ = Url::revoke_object_url(url);
        }
    }
}
