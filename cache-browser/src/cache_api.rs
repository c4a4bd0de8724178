//! [`CacheApiTier`]: HTTP responses in the Cache API, under stable logical URLs.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use cache_core::{
    async_trait, CacheKey, CacheLayer, Clock, Entry, Error, Operation, Result, SystemClock, Tags,
    Timestamp,
};
use futures_util::future::join_all;
use js_sys::{Array, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{Cache, CacheStorage, Headers, Request, Response, ResponseInit, ResponseType};

use crate::js::{self, JsError};
use crate::record;

/// The response header that records an entry's expiry (ms since the epoch).
pub const EXPIRES_HEADER: &str = "x-cache-browser-expires-at";

/// The response header that records an entry's [`Tags`] (hex-encoded JSON
/// `[[name, generation]]`), when it has any.
pub const TAGS_HEADER: &str = "x-cache-browser-tags";

/// Default logical URL base. Entries are keyed by `<base><encoded key>`, never
/// by the (presigned, short-lived) URL the bytes were fetched from.
pub const DEFAULT_BASE_URL: &str = "https://cache-browser.invalid/";

/// Default maximum number of entries.
pub const DEFAULT_MAX_ENTRIES: usize = 500;

/// A cache tier in the Cache API (`caches`), usable from a window and from a
/// service worker (it finds `caches` on `globalThis`).
///
/// - Each entry is an HTTP response stored under a stable logical URL
///   `<base_url><encoded key>`, with its expiry in the [`EXPIRES_HEADER`] header.
///   Responses without that header (not ours) are misses and are deleted.
/// - Opaque responses (`no-cors` fetches) are refused: their size is hidden, and
///   Chromium charges ~7 MB of quota for each.
/// - At most `max_entries` entries; the oldest written go first.
///
/// As a [`CacheLayer`] it stores binary values (`Vec<u8>`, `bytes::Bytes`) as
/// response bodies with the tier's content type; [`CacheApiTier::put_response`]
/// and [`CacheApiTier::match_response`] store and serve real responses, e.g.
/// from a service worker's `fetch` handler.
///
/// # Example
///
/// ```no_run
/// # async fn demo() -> cache_core::Result<()> {
/// use std::time::Duration;
/// use cache_browser::CacheApiTier;
/// use cache_core::{CacheLayer, Clock, Entry, SystemClock};
///
/// let tier = CacheApiTier::<Vec<u8>>::builder("avatars-v1")
///     .base_url("https://app.example/avatars/")
///     .max_entries(200)
///     .open()
///     .await?;
/// tier.put(&"user:42".to_string(), Entry::expiring_in(vec![1, 2, 3], SystemClock.now(), Duration::from_secs(3600))).await?;
/// # Ok(()) }
/// ```
pub struct CacheApiTier<V> {
    cache: Cache,
    cache_name: String,
    base_url: String,
    content_type: String,
    name: String,
    clock: Arc<dyn Clock>,
    ttl: Option<Duration>,
    max_entries: usize,
    _value: PhantomData<fn() -> V>,
}

impl<V> fmt::Debug for CacheApiTier<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheApiTier")
            .field("cache_name", &self.cache_name)
            .field("base_url", &self.base_url)
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

/// Builds a [`CacheApiTier`]; see [`CacheApiTier::builder`].
#[must_use]
pub struct CacheApiTierBuilder<V> {
    cache_name: String,
    base_url: String,
    content_type: String,
    name: String,
    clock: Arc<dyn Clock>,
    ttl: Option<Duration>,
    max_entries: usize,
    _value: PhantomData<fn() -> V>,
}

impl<V> fmt::Debug for CacheApiTierBuilder<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheApiTierBuilder")
            .field("cache_name", &self.cache_name)
            .finish_non_exhaustive()
    }
}

impl<V> CacheApiTierBuilder<V> {
    /// The tier's name for errors and metrics (default `"cache_api"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    /// The clock expiry is checked against (default [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }
    /// The tier's own TTL: entries are kept at most this long after a put.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
    /// The base of the logical URLs (an `http(s)` URL ending in `/`).
    pub fn base_url(mut self, base: impl Into<String>) -> Self {
        self.base_url = base.into();
        self
    }
    /// The `Content-Type` of bodies stored through [`CacheLayer::put`]
    /// (default `application/octet-stream`).
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = content_type.into();
        self
    }
    /// The maximum number of entries (default [`DEFAULT_MAX_ENTRIES`]).
    pub fn max_entries(mut self, n: usize) -> Self {
        self.max_entries = n.max(1);
        self
    }

    /// Opens the named cache through `globalThis.caches`.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the Cache API is absent (insecure context) or
    /// refuses to open.
    pub async fn open(self) -> Result<CacheApiTier<V>> {
        let unavailable = |e: JsError| Error::Unavailable {
            tier: self.name.clone(),
            reason: e.to_string(),
        };
        let caches: CacheStorage = js::global_property("caches")
            .and_then(|v| js::cast(v, "a CacheStorage"))
            .map_err(unavailable)?;
        let cache: Cache = js::await_promise(caches.open(&self.cache_name))
            .await
            .and_then(|v| js::cast(v, "a Cache"))
            .map_err(unavailable)?;
        Ok(CacheApiTier {
            cache,
            cache_name: self.cache_name,
            base_url: self.base_url,
            content_type: self.content_type,
            name: self.name,
            clock: self.clock,
            ttl: self.ttl,
            max_entries: self.max_entries,
            _value: PhantomData,
        })
    }
}

impl<V> CacheApiTier<V> {
    /// A builder for a tier in the cache named `cache_name`.
    pub fn builder(cache_name: &str) -> CacheApiTierBuilder<V> {
        CacheApiTierBuilder {
            cache_name: cache_name.to_owned(),
            base_url: DEFAULT_BASE_URL.into(),
            content_type: "application/octet-stream".into(),
            name: "cache_api".into(),
            clock: Arc::new(SystemClock),
            ttl: None,
            max_entries: DEFAULT_MAX_ENTRIES,
            _value: PhantomData,
        }
    }

    /// The stable logical URL an entry for `key` is stored under.
    pub fn url_for(&self, key: &str) -> String {
        record::location(&self.base_url, key)
    }

    fn err(&self, op: Operation, e: JsError) -> Error {
        if e.is_quota() {
            Error::QuotaExceeded {
                tier: self.name.clone(),
                source: Some(Box::new(e)),
            }
        } else {
            Error::backend(&self.name, op, e)
        }
    }

    async fn delete_url(&self, url: &str, op: Operation) -> Result<bool> {
        js::await_promise(self.cache.delete_with_str(url))
            .await
            .map(|v| v.as_bool().unwrap_or(false))
            .map_err(|e| self.err(op, e))
    }

    /// The unexpired stored response for `key` and its expiry. Expired and
    /// foreign responses are deleted and read as `None`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] for a bad key; a backend error if the Cache API fails.
    pub async fn match_response(&self, key: &str) -> Result<Option<(Response, Timestamp)>> {
        record::validate(key)?;
        let url = self.url_for(key);
        let op = Operation::Get;
        let found = js::await_promise(self.cache.match_with_str(&url))
            .await
            .map_err(|e| self.err(op, e))?;
        if found.is_undefined() || found.is_null() {
            return Ok(None);
        }
        let response: Response = js::cast(found, "a Response").map_err(|e| self.err(op, e))?;
        let expires = response.headers().get(EXPIRES_HEADER).ok().flatten();
        match record::expiry_from_text(expires.as_deref())
            .and_then(|at| record::unexpired(at, self.clock.now()))
        {
            Ok(at) => Ok(Some((response, at))),
            // Expired, or not written by this tier: a miss, and deleted.
            Err(_) => {
                self.delete_url(&url, op).await?;
                Ok(None)
            }
        }
    }

    /// Stores a copy of `response` for `key` until `expires_at` (capped by the
    /// tier's TTL), recording the expiry in [`EXPIRES_HEADER`].
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] for an opaque or error response (nothing is stored);
    /// [`Error::QuotaExceeded`] when the origin is out of quota; other backend
    /// errors.
    pub async fn put_response(
        &self,
        key: &str,
        response: &Response,
        expires_at: Timestamp,
    ) -> Result<()> {
        self.put_response_tagged(key, response, expires_at, &Tags::NONE)
            .await
    }

    /// [`CacheApiTier::put_response`] for an entry carrying `tags` (kept in
    /// the [`TAGS_HEADER`]; read them back with [`CacheApiTier::tags_of`]).
    ///
    /// ```no_run
    /// # async fn demo(tier: cache_browser::CacheApiTier<Vec<u8>>, response: web_sys::Response) -> cache_core::Result<()> {
    /// use cache_core::{Tags, Timestamp};
    /// tier.put_response_tagged("avatar:42", &response, Timestamp::MAX, &Tags::new(["user:42"])).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`CacheApiTier::put_response`].
    pub async fn put_response_tagged(
        &self,
        key: &str,
        response: &Response,
        expires_at: Timestamp,
        tags: &Tags,
    ) -> Result<()> {
        record::validate(key)?;
        let op = Operation::Put;
        match response.type_() {
            ResponseType::Opaque | ResponseType::Opaqueredirect | ResponseType::Error => {
                return Err(Error::Encode {
                    tier: self.name.clone(),
                    reason: format!(
                        "refusing a {:?} response: its size is hidden and it costs megabytes of quota",
                        response.type_()
                    ),
                });
            }
            _ => {}
        }
        let body = js::await_promise(
            response
                .clone()
                .and_then(|r| r.array_buffer())
                .map_err(|e| self.err(op, JsError::from_js(&e)))?,
        )
        .await
        .map_err(|e| self.err(op, e))?;
        let content_type = response.headers().get("content-type").ok().flatten();
        self.store(
            key,
            &Uint8Array::new(&body),
            content_type.as_deref(),
            expires_at,
            tags,
        )
        .await
    }

    /// The tags of a response this tier stored (from [`TAGS_HEADER`]); `None`
    /// if the header is there but corrupt.
    ///
    /// ```no_run
    /// # async fn demo(tier: cache_browser::CacheApiTier<Vec<u8>>) -> cache_core::Result<()> {
    /// if let Some((response, _expires_at)) = tier.match_response("avatar:42").await? {
    ///     let tags = cache_browser::CacheApiTier::<Vec<u8>>::tags_of(&response);
    ///     # let _ = tags;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn tags_of(response: &Response) -> Option<Tags> {
        let hex = response.headers().get(TAGS_HEADER).ok().flatten();
        record::tags_from_hex(hex.as_deref()).ok()
    }

    async fn store(
        &self,
        key: &str,
        body: &Uint8Array,
        content_type: Option<&str>,
        expires_at: Timestamp,
        tags: &Tags,
    ) -> Result<()> {
        let op = Operation::Put;
        let url = self.url_for(key);
        let Some(expires_at) = record::put_expiry(expires_at, self.clock.now(), self.ttl) else {
            self.delete_url(&url, op).await?;
            return Ok(());
        };
        let fail = |e: &JsValue| self.err(op, JsError::from_js(e));
        let headers = Headers::new().map_err(|e| fail(&e))?;
        headers
            .set("content-type", content_type.unwrap_or(&self.content_type))
            .map_err(|e| fail(&e))?;
        headers
            .set(EXPIRES_HEADER, &record::expiry_to_text(expires_at))
            .map_err(|e| fail(&e))?;
        if let Some(hex) = record::tags_to_hex(tags, &self.name)? {
            headers.set(TAGS_HEADER, &hex).map_err(|e| fail(&e))?;
        }
        let init = ResponseInit::new();
        init.set_status(200);
        init.set_headers(&headers);
        let response =
            Response::new_with_opt_js_u8_array_and_init(Some(body), &init).map_err(|e| fail(&e))?;
        let request = Request::new_with_str(&url).map_err(|e| fail(&e))?;
        js::await_promise(self.cache.put_with_request(&request, &response))
            .await
            .map_err(|e| self.err(op, e))?;
        self.enforce_max_entries().await
    }

    /// Deletes the oldest-written entries beyond `max_entries` (`cache.keys()`
    /// lists requests in insertion order; a put re-inserts at the end).
    async fn enforce_max_entries(&self) -> Result<()> {
        let op = Operation::Put;
        let keys = self.our_requests(op).await?;
        if keys.len() > self.max_entries {
            for url in &keys[..keys.len() - self.max_entries] {
                self.delete_url(url, op).await?;
            }
        }
        Ok(())
    }

    /// URLs of every request under our base URL.
    async fn our_requests(&self, op: Operation) -> Result<Vec<String>> {
        let keys = js::await_promise(self.cache.keys())
            .await
            .map_err(|e| self.err(op, e))?;
        let keys: Array = js::cast(keys, "an Array").map_err(|e| self.err(op, e))?;
        Ok(keys
            .iter()
            .filter_map(|r| r.dyn_into::<Request>().ok())
            .map(|r| r.url())
            .filter(|u| u.starts_with(&self.base_url))
            .collect())
    }

    /// How many entries the cache holds under our base URL.
    ///
    /// # Errors
    ///
    /// A backend error if the Cache API fails.
    pub async fn len(&self) -> Result<usize> {
        Ok(self.our_requests(Operation::Get).await?.len())
    }
}

#[async_trait(?Send)]
impl<K, V> CacheLayer<K, V> for CacheApiTier<V>
where
    K: CacheKey,
    V: AsRef<[u8]> + From<Vec<u8>> + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    async fn get(&self, key: &K) -> Result<Option<Entry<V>>> {
        let key = record::checked_key(key)?;
        let Some((response, expires_at)) = self.match_response(&key).await? else {
            return Ok(None);
        };
        let op = Operation::Get;
        let promise = response
            .array_buffer()
            .map_err(|e| self.err(op, JsError::from_js(&e)))?;
        let Some(tags) = Self::tags_of(&response) else {
            // Corrupt tags: a miss, and deleted.
            self.delete_url(&self.url_for(&key), op).await?;
            return Ok(None);
        };
        let body = js::await_promise(promise)
            .await
            .map_err(|e| self.err(op, e))?;
        let mut entry = Entry::new(V::from(Uint8Array::new(&body).to_vec()), expires_at);
        entry.tags = tags;
        Ok(Some(entry))
    }

    /// Every key's `match` and body read at once, in the cache opened once.
    async fn get_many(&self, keys: &[K]) -> Result<Vec<Option<Entry<V>>>> {
        join_all(keys.iter().map(|key| CacheLayer::<K, V>::get(self, key)))
            .await
            .into_iter()
            .collect()
    }

    async fn put(&self, key: &K, entry: Entry<V>) -> Result<()> {
        let key = record::checked_key(key)?;
        let body = Uint8Array::from(entry.value.as_ref());
        self.store(&key, &body, None, entry.expires_at, &entry.tags)
            .await
    }

    async fn remove(&self, key: &K) -> Result<bool> {
        let key = record::checked_key(key)?;
        self.delete_url(&self.url_for(&key), Operation::Remove)
            .await
    }

    async fn remove_prefix(&self, prefix: &str) -> Result<()> {
        let start = self.url_for(prefix);
        for url in self.our_requests(Operation::RemovePrefix).await? {
            if url.starts_with(&start) {
                self.delete_url(&url, Operation::RemovePrefix).await?;
            }
        }
        Ok(())
    }

    async fn clear(&self) -> Result<()> {
        for url in self.our_requests(Operation::Clear).await? {
            self.delete_url(&url, Operation::Clear).await?;
        }
        Ok(())
    }
}
