//! [`LocalStorageTier`]: JSON records in `window.localStorage` under a prefix.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use cache_core::{
    async_trait, key, CacheKey, CacheLayer, Clock, Entry, Error, Operation, Result, SystemClock,
    Timestamp,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use web_sys::Storage;

use crate::js::{self, JsError};

/// The `format` field of every record this crate writes; anything else under our
/// prefix is foreign and is removed when met.
const FORMAT: &str = "cache-browser/1";

/// The key suffix of the write probe. `~p` is never produced by
/// [`cache_core::key::encode`], so the probe cannot collide with an entry.
const PROBE: &str = "~probe";

#[derive(Serialize)]
struct RecordOut<'a, V> {
    format: &'static str,
    key: &'a str,
    value: &'a V,
    expires_at: u64,
    stored_at: u64,
}

/// Borrows `format` and `key` from the raw JSON when it can: the hit path
/// allocates only the value.
#[derive(Deserialize)]
struct RecordIn<'a, V> {
    #[serde(borrow)]
    format: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    key: std::borrow::Cow<'a, str>,
    value: V,
    expires_at: u64,
}

#[derive(Deserialize)]
struct RecordAge {
    format: String,
    stored_at: u64,
}

/// A cache tier in `localStorage`: one JSON record
/// `{format, key, value, expires_at, stored_at}` per entry, under the key
/// `"<prefix>:<encoded key>"`.
///
/// - Records that are not valid JSON, or were not written by this tier for this
///   key (another app writing under the prefix), are misses and are removed.
/// - When the ~5 MB origin quota runs out, the tier evicts its own oldest
///   records (never anyone else's) and retries once, then reports
///   [`Error::QuotaExceeded`].
/// - [`LocalStorageTierBuilder::open`] probes storage with a real write: storage that is
///   absent (a service worker) or blocked (privacy settings, sandboxed frames)
///   gives [`Error::Unavailable`] so the page can build its chain without it.
/// - [`CacheLayer::clear`] removes only keys under the prefix.
///
/// # Example
///
/// ```no_run
/// # async fn demo() -> cache_core::Result<()> {
/// use std::time::Duration;
/// use cache_browser::LocalStorageTier;
/// use cache_core::{CacheLayer, Clock, Entry, SystemClock};
///
/// let tier = LocalStorageTier::<String>::builder("avatars")
///     .ttl(Duration::from_secs(45 * 60))
///     .open()?;
/// let url = "https://img.example/42.png".to_string();
/// tier.put(&"user:42".to_string(), Entry::expiring_in(url, SystemClock.now(), Duration::from_secs(3600))).await?;
/// assert!(tier.get(&"user:42".to_string()).await?.is_some());
/// # Ok(()) }
/// ```
pub struct LocalStorageTier<V> {
    storage: Storage,
    prefix: String,
    name: String,
    clock: Arc<dyn Clock>,
    ttl: Option<Duration>,
    _value: PhantomData<fn() -> V>,
}

impl<V> fmt::Debug for LocalStorageTier<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalStorageTier")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Builds a [`LocalStorageTier`]; see [`LocalStorageTier::builder`].
#[must_use]
pub struct LocalStorageTierBuilder<V> {
    namespace: String,
    name: String,
    clock: Arc<dyn Clock>,
    ttl: Option<Duration>,
    _value: PhantomData<fn() -> V>,
}

impl<V> fmt::Debug for LocalStorageTierBuilder<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalStorageTierBuilder")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl<V> LocalStorageTierBuilder<V> {
    /// The tier's name for errors and metrics (default `"local_storage"`).
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

    /// Finds `localStorage` and proves it writable with a probe write.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when storage is absent, blocked or refuses writes.
    pub fn open(self) -> Result<LocalStorageTier<V>> {
        let unavailable = |e: JsError| Error::Unavailable {
            tier: self.name.clone(),
            reason: e.to_string(),
        };
        let storage: Storage = js::global_property("localStorage")
            .and_then(|v| js::cast(v, "a Storage"))
            .map_err(unavailable)?;
        let prefix = format!("{}:", key::encode(&self.namespace));
        let probe = format!("{prefix}{PROBE}");
        storage
            .set_item(&probe, "1")
            .and_then(|()| storage.remove_item(&probe))
            .map_err(|e| unavailable(JsError::from_js(&e)))?;
        Ok(LocalStorageTier {
            storage,
            prefix,
            name: self.name,
            clock: self.clock,
            ttl: self.ttl,
            _value: PhantomData,
        })
    }
}

impl<V> LocalStorageTier<V> {
    /// A builder for a tier whose keys live under `namespace` (encoded, so any
    /// string is safe).
    pub fn builder(namespace: &str) -> LocalStorageTierBuilder<V> {
        LocalStorageTierBuilder {
            namespace: namespace.to_owned(),
            name: "local_storage".into(),
            clock: Arc::new(SystemClock),
            ttl: None,
            _value: PhantomData,
        }
    }

    /// The storage-key prefix of this tier's records (`"<encoded namespace>:"`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn storage_key(&self, key: &str) -> String {
        let mut out = String::with_capacity(self.prefix.len() + key.len());
        out.push_str(&self.prefix);
        key::encode_into(key, &mut out);
        out
    }

    fn err(&self, op: Operation, e: &wasm_bindgen::JsValue) -> Error {
        js::backend(&self.name, op, e)
    }

    /// Every storage key under our prefix (a snapshot: removal shifts indices).
    fn our_keys(&self, op: Operation) -> Result<Vec<String>> {
        let len = self.storage.length().map_err(|e| self.err(op, &e))?;
        let mut keys = Vec::new();
        for i in 0..len {
            if let Some(k) = self.storage.key(i).map_err(|e| self.err(op, &e))? {
                if k.starts_with(&self.prefix) && !k.ends_with(PROBE) {
                    keys.push(k);
                }
            }
        }
        Ok(keys)
    }

    fn remove_raw(&self, storage_key: &str, op: Operation) -> Result<()> {
        self.storage
            .remove_item(storage_key)
            .map_err(|e| self.err(op, &e))
    }

    /// Removes the oldest of our records (by `stored_at`; foreign or corrupt
    /// records first) until at least `bytes` UTF-16 code units are freed, and at
    /// least a quarter of our records. Returns how many were removed.
    fn evict_oldest(&self, bytes: usize) -> Result<usize> {
        let op = Operation::Put;
        let mut aged: Vec<(u64, String, usize)> = Vec::new();
        for k in self.our_keys(op)? {
            let raw = self.storage.get_item(&k).map_err(|e| self.err(op, &e))?;
            let size = raw.as_ref().map_or(0, String::len) + k.len();
            let age = raw
                .and_then(|r| serde_json::from_str::<RecordAge>(&r).ok())
                .filter(|r| r.format == FORMAT)
                .map_or(0, |r| r.stored_at);
            aged.push((age, k, size));
        }
        aged.sort();
        let min_count = aged.len().div_ceil(4);
        let (mut freed, mut removed) = (0usize, 0usize);
        for (_, k, size) in aged {
            if removed >= min_count && freed >= bytes {
                break;
            }
            self.remove_raw(&k, op)?;
            freed += size;
            removed += 1;
        }
        Ok(removed)
    }

    fn write(&self, storage_key: &str, json: &str) -> Result<()> {
        let quota = |e: JsError| Error::QuotaExceeded {
            tier: self.name.clone(),
            source: Some(Box::new(e)),
        };
        match self.storage.set_item(storage_key, json) {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = JsError::from_js(&e);
                if !e.is_quota() {
                    return Err(Error::backend(&self.name, Operation::Put, e));
                }
                // Make room among our own records only, then try once more.
                if self.evict_oldest(storage_key.len() + json.len())? == 0 {
                    return Err(quota(e));
                }
                self.storage.set_item(storage_key, json).map_err(|e| {
                    let e = JsError::from_js(&e);
                    if e.is_quota() {
                        quota(e)
                    } else {
                        Error::backend(&self.name, Operation::Put, e)
                    }
                })
            }
        }
    }
}

fn checked_key<K: CacheKey>(key: &K) -> Result<std::borrow::Cow<'_, str>> {
    let s = key.key_str();
    key::validate(&s).map_err(|reason| Error::invalid_key(&s, reason))?;
    Ok(s)
}

#[async_trait(?Send)]
impl<K, V> CacheLayer<K, V> for LocalStorageTier<V>
where
    K: CacheKey,
    V: Serialize + DeserializeOwned + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    async fn get(&self, key: &K) -> Result<Option<Entry<V>>> {
        let key = checked_key(key)?;
        let sk = self.storage_key(&key);
        let Some(raw) = self
            .storage
            .get_item(&sk)
            .map_err(|e| self.err(Operation::Get, &e))?
        else {
            return Ok(None);
        };
        match serde_json::from_str::<RecordIn<'_, V>>(&raw) {
            Ok(r) if r.format == FORMAT && r.key == *key => {
                let entry = Entry::new(r.value, Timestamp::from_unix_millis(r.expires_at));
                if entry.is_expired(self.clock.now()) {
                    self.remove_raw(&sk, Operation::Get)?;
                    return Ok(None);
                }
                Ok(Some(entry))
            }
            // Corrupt, foreign or another key's record: a miss, and not kept.
            _ => {
                self.remove_raw(&sk, Operation::Get)?;
                Ok(None)
            }
        }
    }

    async fn put(&self, key: &K, entry: Entry<V>) -> Result<()> {
        let key = checked_key(key)?;
        let sk = self.storage_key(&key);
        let now = self.clock.now();
        let entry = entry.capped_by_ttl(now, self.ttl);
        if entry.is_expired(now) {
            return self.remove_raw(&sk, Operation::Put);
        }
        let json = serde_json::to_string(&RecordOut {
            format: FORMAT,
            key: &key,
            value: &entry.value,
            expires_at: entry.expires_at.as_unix_millis(),
            stored_at: now.as_unix_millis(),
        })
        .map_err(|e| Error::Encode {
            tier: self.name.clone(),
            reason: e.to_string(),
        })?;
        self.write(&sk, &json)
    }

    async fn remove(&self, key: &K) -> Result<bool> {
        let key = checked_key(key)?;
        let sk = self.storage_key(&key);
        let was = self
            .storage
            .get_item(&sk)
            .map_err(|e| self.err(Operation::Remove, &e))?
            .is_some();
        self.remove_raw(&sk, Operation::Remove)?;
        Ok(was)
    }

    async fn remove_prefix(&self, prefix: &str) -> Result<()> {
        let start = self.storage_key(prefix);
        for k in self.our_keys(Operation::RemovePrefix)? {
            if k.starts_with(&start) {
                self.remove_raw(&k, Operation::RemovePrefix)?;
            }
        }
        Ok(())
    }

    async fn clear(&self) -> Result<()> {
        for k in self.our_keys(Operation::Clear)? {
            self.remove_raw(&k, Operation::Clear)?;
        }
        Ok(())
    }
}
