//! The preset's tiers: each storage tier adapted to carry [`Picture`]s
//! (LocalStorage the URL and a small picture's bytes, IndexedDB and the Cache
//! API the bytes), and the network loader.

use bytes::Bytes;
use cache_core::{async_trait, BoxError, CacheLayer, Entry, Error, Fence, Fill, Loader, Result};
use futures_util::future::join_all;
use js_sys::Uint8Array;
use serde::{Deserialize, Serialize};

use crate::{CacheApiTier, IndexedDbTier, JsError, LocalStorageTier};

use super::Picture;

/// LocalStorage holds the URL and media type and, for a small picture, its
/// bytes in base64 (see [`UrlTier`]).
#[derive(Serialize, Deserialize)]
pub(super) struct StoredUrl {
    url: String,
    content_type: String,
    /// Absent in records of pictures over the limit (and of older builds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base64: Option<String>,
}

impl StoredUrl {
    fn into_picture(self) -> Picture {
        // Bytes that do not decode leave the URL, which still loads.
        let bytes = self
            .base64
            .and_then(|b| super::base64_decode(&b))
            .map(Bytes::from);
        Picture {
            url: self.url,
            bytes,
            content_type: self.content_type,
        }
    }
}

/// The LocalStorage tier of the preset: the URL, and the bytes of pictures up
/// to `max_picture_bytes`, so that a reload shows a small picture from the
/// page itself. With the URL alone, a reload's `<img>`s load their bytes from
/// the browser's HTTP cache, which took 50 to 90 ms for 50 small pictures in
/// headless Chromium (each through the network service), against 2 to 5 ms
/// for the 50 LocalStorage reads.
#[derive(Debug)]
pub(super) struct UrlTier {
    pub(super) tier: LocalStorageTier<StoredUrl>,
    pub(super) max_picture_bytes: usize,
}

#[async_trait(?Send)]
impl CacheLayer<String, Picture> for UrlTier {
    fn name(&self) -> &str {
        CacheLayer::<String, StoredUrl>::name(&self.tier)
    }
    async fn get(&self, key: &String) -> Result<Option<Entry<Picture>>> {
        Ok(self
            .tier
            .get(key)
            .await?
            .map(|e: Entry<StoredUrl>| e.map(StoredUrl::into_picture)))
    }
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry<Picture>>>> {
        let found: Vec<Option<Entry<StoredUrl>>> = self.tier.get_many(keys).await?;
        Ok(found
            .into_iter()
            .map(|e| e.map(|e| e.map(StoredUrl::into_picture)))
            .collect())
    }
    async fn put(&self, key: &String, entry: Entry<Picture>) -> Result<()> {
        let max = self.max_picture_bytes;
        let entry = entry.map(|p| StoredUrl {
            base64: p
                .bytes
                .filter(|b| !b.is_empty() && b.len() <= max)
                .map(|b| super::base64_encode(&b)),
            url: p.url,
            content_type: p.content_type,
        });
        self.tier.put(key, entry).await
    }
    async fn remove(&self, key: &String) -> Result<bool> {
        CacheLayer::<String, StoredUrl>::remove(&self.tier, key).await
    }
    async fn remove_prefix(&self, prefix: &str) -> Result<()> {
        CacheLayer::<String, StoredUrl>::remove_prefix(&self.tier, prefix).await
    }
    async fn clear(&self) -> Result<()> {
        CacheLayer::<String, StoredUrl>::clear(&self.tier).await
    }
}

/// `[u32 url len][url][u32 type len][type][bytes]`: IndexedDB keeps the URL and
/// media type beside the image bytes.
pub(super) fn pack(p: &Picture, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + p.url.len() + p.content_type.len() + bytes.len());
    for s in [&p.url, &p.content_type] {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(bytes);
    out
}

pub(super) fn unpack(data: &[u8]) -> Option<Picture> {
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

/// What IndexedDB keeps of `entry`: nothing for a URL without bytes.
pub(super) fn packed(key: &str, entry: Entry<Picture>) -> Option<(String, Entry<Vec<u8>>)> {
    let bytes = entry.value.bytes.as_ref()?;
    let mut stored = Entry::new(pack(&entry.value, bytes), entry.expires_at);
    stored.tags = entry.tags;
    Some((key.to_owned(), stored))
}

#[derive(Debug)]
pub(super) struct BytesTier(pub(super) IndexedDbTier<Vec<u8>>);

impl BytesTier {
    /// The picture in a stored record; an undecodable one is a miss, removed.
    async fn unpacked(
        &self,
        key: &String,
        found: Option<Entry<Vec<u8>>>,
    ) -> Result<Option<Entry<Picture>>> {
        let Some(e) = found else {
            return Ok(None);
        };
        match unpack(&e.value) {
            Some(p) => {
                let mut entry = Entry::new(p, e.expires_at);
                entry.tags = e.tags;
                Ok(Some(entry))
            }
            None => {
                CacheLayer::<String, Vec<u8>>::remove(&self.0, key).await?;
                Ok(None)
            }
        }
    }
}

#[async_trait(?Send)]
impl CacheLayer<String, Picture> for BytesTier {
    fn name(&self) -> &str {
        CacheLayer::<String, Vec<u8>>::name(&self.0)
    }
    async fn get(&self, key: &String) -> Result<Option<Entry<Picture>>> {
        let found = self.0.get(key).await?;
        self.unpacked(key, found).await
    }
    /// One read-only transaction for every key.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry<Picture>>>> {
        let found: Vec<Option<Entry<Vec<u8>>>> = self.0.get_many(keys).await?;
        let mut out = Vec::with_capacity(found.len());
        for (key, e) in keys.iter().zip(found) {
            out.push(self.unpacked(key, e).await?);
        }
        Ok(out)
    }
    async fn put(&self, key: &String, entry: Entry<Picture>) -> Result<()> {
        // A URL without bytes has nothing to keep here.
        let Some((key, stored)) = packed(key, entry) else {
            return Ok(());
        };
        self.0.put(&key, stored).await
    }
    /// One read-write transaction for every entry (a batch's backfill): the
    /// fences are checked first, as the default `put_fenced` does before its
    /// write, and the chain keeps this tier's fills apart from its removals.
    /// The transaction commits in the background: a removal made once this
    /// returns runs after it (see [`IndexedDbTier::put_many_in_background`]),
    /// and the read that backfills does not wait for the commit.
    async fn put_many_fenced(
        &self,
        entries: Vec<(String, Entry<Picture>)>,
        fences: &[Fence<'_>],
    ) -> Result<Vec<Fill>> {
        let mut fills = Vec::with_capacity(entries.len());
        let mut batch = Vec::with_capacity(entries.len());
        for ((key, entry), fence) in entries.into_iter().zip(fences) {
            if !fence.holds() {
                fills.push(Fill::Refused);
                continue;
            }
            fills.push(Fill::Written);
            batch.extend(packed(&key, entry));
        }
        if !batch.is_empty() {
            self.0.put_many_in_background(batch).await?;
        }
        Ok(fills)
    }
    async fn put_many(&self, entries: Vec<(String, Entry<Picture>)>) -> Result<()> {
        let batch: Vec<_> = entries
            .into_iter()
            .filter_map(|(key, entry)| packed(&key, entry))
            .collect();
        self.0.put_many(batch).await
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
pub(super) struct ResponseTier(pub(super) CacheApiTier<Vec<u8>>);

#[async_trait(?Send)]
impl CacheLayer<String, Picture> for ResponseTier {
    fn name(&self) -> &str {
        CacheLayer::<String, Vec<u8>>::name(&self.0)
    }
    async fn get(&self, key: &String) -> Result<Option<Entry<Picture>>> {
        let Some((response, expires_at)) = self.0.match_response(key).await? else {
            return Ok(None);
        };
        let Some(tags) = CacheApiTier::<Vec<u8>>::tags_of(&response) else {
            CacheLayer::<String, Vec<u8>>::remove(&self.0, key).await?;
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
        let mut entry = Entry::new(
            Picture {
                url: self.0.url_for(key),
                bytes: Some(Bytes::from(Uint8Array::new(&body).to_vec())),
                content_type,
            },
            expires_at,
        );
        entry.tags = tags;
        Ok(Some(entry))
    }
    /// Every key's `match` and body read at once, on the cache opened once.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry<Picture>>>> {
        join_all(keys.iter().map(|key| self.get(key)))
            .await
            .into_iter()
            .collect()
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
        self.0
            .put_response_tagged(key, &response, entry.expires_at, &entry.tags)
            .await
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

/// The network loader of the preset: a batch's keys loaded concurrently
/// (the default `load_many` loads one after the other).
pub(super) struct Network<L>(pub(super) L);

#[async_trait(?Send)]
impl<L: Loader<String, Picture>> Loader<String, Picture> for Network<L> {
    async fn load(&self, key: &String) -> std::result::Result<Option<Entry<Picture>>, BoxError> {
        self.0.load(key).await
    }
    async fn load_many(
        &self,
        keys: &[String],
    ) -> std::result::Result<Vec<Option<Entry<Picture>>>, BoxError> {
        join_all(keys.iter().map(|key| self.0.load(key)))
            .await
            .into_iter()
            .collect()
    }
}
