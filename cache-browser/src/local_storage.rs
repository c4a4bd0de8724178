//! [`LocalStorageTier`]: JSON records in `window.localStorage` under a prefix.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use cache_core::{
    async_trait, key, CacheKey, CacheLayer, Clock, Entry, Error, Operation, Result, SystemClock,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsValue;
use web_sys::Storage;

use crate::js::{self, JsError};
use crate::record::{self, Refused};

/// The key suffix of the write probe. `~p` is never produced by
/// [`cache_core::key::encode`], so the probe cannot collide with an entry.
const PROBE: &str = "~probe";

// The read path. Through web-sys, `Storage::getItem` turns the storage key into
// a fresh JS string with a `TextDecoder` (a fixed cost that dominates for a short
// key, and a fresh string must be hashed again by the engine) and copies the
// record into a new allocation made by calling back into wasm. Here the storage
// key is a JS string the tier keeps (`KeyCache`) or, for a key it does not keep
// yet, is passed in the tier's scratch buffer (it is ASCII) and made into a JS
// string with `fromCharCode`, which the tier then keeps (`ls_last_key`). The
// record is copied into the scratch buffer, which serde_json parses in place.
// `ls_read*` return the number of UTF-8 bytes written; -1 when there is no
// record; or -2 - (record length in UTF-16 units) when it does not fit (the
// caller grows the buffer and reads that record the web-sys way). They throw
// what `getItem` throws.
#[wasm_bindgen(inline_js = r#"
const encoder = new TextEncoder();
const decoder = new TextDecoder();
let memory, mem = new Uint8Array(0), lastKey;
export function ls_init(m) { memory = m; }
// The wasm memory as bytes, through `end` (a view made again after the memory
// grew: growth detaches a plain buffer and lengthens a shared one).
function bytes(end) {
  if (mem.byteLength === 0 || end > mem.length) mem = new Uint8Array(memory.buffer);
  return mem;
}
function copy(raw, ptr, cap) {
  if (raw === null) return -1;
  const len = raw.length;
  if (len > cap) return -2 - len;
  const m = bytes(ptr + cap);
  let i = 0;
  for (; i < len; i++) {
    const c = raw.charCodeAt(i);
    if (c > 0x7f) break;
    m[ptr + i] = c;
  }
  if (i === len) return len;
  const r = encoder.encodeInto(raw.slice(i), m.subarray(ptr + i, ptr + cap));
  return r.read === len - i ? i + r.written : -2 - len;
}
export function ls_read(storage, key, ptr, cap) {
  return copy(storage.getItem(key), ptr, cap);
}
export function ls_read_new(storage, ptr, cap, key_len) {
  const k = bytes(ptr + cap).subarray(ptr, ptr + key_len);
  lastKey = key_len <= 128 ? String.fromCharCode.apply(null, k) : decoder.decode(k);
  return copy(storage.getItem(lastKey), ptr, cap);
}
export function ls_last_key() {
  const k = lastKey;
  lastKey = undefined;
  return k;
}
// IndexedDB's batch read (here so the page fetches one snippet, not two):
// the records of `keys` in `store`, in order (undefined: none). One
// `getAllKeys` and one `getAll` of the range the keys span, at most twice as
// many records as keys, then a `get` for each key past what that returned.
export function idb_get_many(store, keys) {
  return new Promise((resolve, reject) => {
    const fail = (e) => reject(e.target.error);
    const sorted = keys.slice().sort();
    const limit = 2 * keys.length;
    const range = IDBKeyRange.bound(sorted[0], sorted[sorted.length - 1]);
    const ks = store.getAllKeys(range, limit);
    const vs = store.getAll(range, limit);
    ks.onerror = vs.onerror = fail;
    vs.onsuccess = () => {
      const found = new Map();
      ks.result.forEach((k, i) => found.set(k, vs.result[i]));
      const last = ks.result.length < limit ? undefined : ks.result[limit - 1];
      const out = new Array(keys.length);
      let left = 1;
      const done = () => { if (--left === 0) resolve(out); };
      keys.forEach((k, i) => {
        if (last === undefined || k <= last) {
          out[i] = found.get(k);
          return;
        }
        left++;
        const r = store.get(k);
        r.onerror = fail;
        r.onsuccess = () => { out[i] = r.result; done(); };
      });
      done();
    };
  });
}
"#)]
extern "C" {
    /// Gives the JS side the wasm memory (idempotent).
    fn ls_init(memory: &JsValue);
    /// Reads the record under `key` (a JS string) into the `cap` bytes at `ptr`.
    #[wasm_bindgen(catch)]
    fn ls_read(
        storage: &Storage,
        key: &JsValue,
        ptr: u32,
        cap: u32,
    ) -> std::result::Result<i32, JsValue>;
    /// Reads the record under the ASCII storage key in the first `key_len` of
    /// the `cap` bytes at `ptr` into them.
    #[wasm_bindgen(catch)]
    fn ls_read_new(
        storage: &Storage,
        ptr: u32,
        cap: u32,
        key_len: u32,
    ) -> std::result::Result<i32, JsValue>;
    /// The storage key `ls_read_new` last made, as a JS string.
    fn ls_last_key() -> JsValue;
    /// The records of `keys` (an array of storage keys) in the object store
    /// `store`, in order, `undefined` for none: a promise of an array. Its
    /// requests run in the store's transaction; a failed one rejects it with
    /// the request's error.
    pub(crate) fn idb_get_many(store: &JsValue, keys: &js_sys::Array) -> js_sys::Promise;
}

/// The scratch buffer's starting size, and the largest it grows to: records
/// bigger than that are read the web-sys way.
const SCRATCH_START: usize = 1024;
const SCRATCH_MAX: usize = 64 * 1024;

/// How many storage keys [`KeyCache`] keeps as JS strings before it starts over.
const KEY_CACHE_MAX: usize = 256;

/// The storage keys of recently read keys, as JS strings (what
/// `wasm_bindgen::intern` does for a whole program, bounded and per tier).
#[derive(Default)]
struct KeyCache {
    map: HashMap<Box<str>, JsValue, BuildHasherDefault<Fnv>>,
}

impl KeyCache {
    fn insert(&mut self, key: &str, storage_key: JsValue) {
        if self.map.len() >= KEY_CACHE_MAX {
            self.map.clear();
        }
        self.map.insert(key.into(), storage_key);
    }
}

/// FNV-1a: far cheaper than SipHash in wasm for short keys. Collisions only
/// cost time, and the map holds at most [`KEY_CACHE_MAX`] keys.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// A cache tier in `localStorage`: one JSON record
/// `{format, key, value, expires_at, stored_at, tags?}` per entry (`tags`, the
/// entry's [`Tags`](cache_core::Tags) as `[[name, generation]]`, only when it
/// has some), under the key `"<prefix>:<encoded key>"`.
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
/// - A hit costs about one `getItem` plus a parse: the tier keeps the storage
///   keys of up to 256 recently read keys as JS strings and reads records into
///   one reusable buffer (up to 64 KiB; bigger records take a slower path).
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
    /// The last record read (see `ls_read`); always fully initialised.
    scratch: RefCell<Vec<u8>>,
    keys: RefCell<KeyCache>,
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
        ls_init(&wasm_bindgen::memory());
        Ok(LocalStorageTier {
            storage,
            prefix,
            name: self.name,
            clock: self.clock,
            ttl: self.ttl,
            scratch: RefCell::new(vec![0; SCRATCH_START]),
            keys: RefCell::default(),
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
        record::location(&self.prefix, key)
    }

    fn err(&self, op: Operation, e: &JsValue) -> Error {
        js::backend(&self.name, op, e)
    }

    /// Reads the record of `key` (valid) into `buf` (see `ls_read`).
    fn read_into(&self, key: &str, buf: &mut Vec<u8>) -> Result<Read> {
        let Ok(mut keys) = self.keys.try_borrow_mut() else {
            return Ok(Read::Elsewhere);
        };
        // The JS side writes into `buf` through its address in wasm memory
        // (no typed-array view is made per call), as C would through a pointer.
        let at = |buf: &mut Vec<u8>| {
            Some((
                u32::try_from(buf.as_mut_ptr() as usize).ok()?,
                u32::try_from(buf.len()).ok()?,
            ))
        };
        let n = if let Some(sk) = keys.map.get(key) {
            let Some((ptr, cap)) = at(buf) else {
                return Ok(Read::Elsewhere);
            };
            ls_read(&self.storage, sk, ptr, cap)
        } else {
            let sk = self.storage_key(key);
            if buf.len() < sk.len() {
                buf.resize(sk.len(), 0);
            }
            buf[..sk.len()].copy_from_slice(sk.as_bytes());
            let (Some((ptr, cap)), Ok(key_len)) = (at(buf), u32::try_from(sk.len())) else {
                return Ok(Read::Elsewhere);
            };
            let n = ls_read_new(&self.storage, ptr, cap, key_len);
            let js = ls_last_key();
            if js.is_string() {
                keys.insert(key, js);
            }
            n
        }
        .map_err(|e| self.err(Operation::Get, &e))?;
        Ok(match usize::try_from(n) {
            Ok(n) => Read::Bytes(n),
            Err(_) if n == -1 => Read::Absent,
            // UTF-8 takes at most 3 bytes per UTF-16 unit.
            Err(_) => Read::TooBig(
                usize::try_from(-2 - i64::from(n))
                    .unwrap_or(usize::MAX)
                    .saturating_mul(3),
            ),
        })
    }

    /// Serves a decoded record unless it has expired; removes it if it is
    /// expired or was refused.
    fn serve(&self, key: &str, found: Result<Entry<V>, Refused>) -> Result<Option<Entry<V>>> {
        let now = self.clock.now();
        match found.and_then(|entry| record::unexpired(entry.expires_at, now).map(|_| entry)) {
            Ok(entry) => Ok(Some(entry)),
            // Expired, or corrupt, foreign or another key's record: a miss, and
            // not kept.
            Err(_) => {
                self.remove_raw(&self.storage_key(key), Operation::Get)?;
                Ok(None)
            }
        }
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
            let age = raw.and_then(|r| record::json::stored_at(&r)).unwrap_or(0);
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

/// What [`LocalStorageTier::read_into`] found.
enum Read {
    /// No record under the key.
    Absent,
    /// The record is the first `n` bytes of the scratch buffer.
    Bytes(usize),
    /// The record did not fit in the scratch buffer, which needs this many
    /// bytes.
    TooBig(usize),
    /// Not read: read it the web-sys way.
    Elsewhere,
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
        let key = record::checked_key(key)?;
        if let Ok(mut buf) = self.scratch.try_borrow_mut() {
            match self.read_into(&key, &mut buf)? {
                Read::Absent => return Ok(None),
                Read::Bytes(n) => {
                    // `ls_read` never reports more than the buffer holds; if it
                    // did, the record is read again the web-sys way below.
                    if let Some(raw) = buf.get(..n) {
                        let found = record::json::decode::<V>(raw, &key);
                        drop(buf);
                        return self.serve(&key, found);
                    }
                }
                Read::TooBig(need) => {
                    // Grow the buffer for next time, up to the cap; read this
                    // record the web-sys way.
                    if need <= SCRATCH_MAX && need > buf.len() {
                        buf.resize(need, 0);
                    }
                }
                Read::Elsewhere => {}
            }
        }
        let sk = self.storage_key(&key);
        let Some(raw) = self
            .storage
            .get_item(&sk)
            .map_err(|e| self.err(Operation::Get, &e))?
        else {
            return Ok(None);
        };
        let found = record::json::decode::<V>(raw.as_bytes(), &key);
        self.serve(&key, found)
    }

    async fn put(&self, key: &K, mut entry: Entry<V>) -> Result<()> {
        let key = record::checked_key(key)?;
        let sk = self.storage_key(&key);
        let now = self.clock.now();
        let Some(expires_at) = record::put_expiry(entry.expires_at, now, self.ttl) else {
            return self.remove_raw(&sk, Operation::Put);
        };
        entry.expires_at = expires_at;
        let json = record::json::encode(&key, &entry, now)
            .map_err(|e| record::encode_error(&self.name, e))?;
        self.write(&sk, &json)
    }

    async fn remove(&self, key: &K) -> Result<bool> {
        let key = record::checked_key(key)?;
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
