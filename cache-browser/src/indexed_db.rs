//! [`IndexedDbTier`]: image bytes in IndexedDB, with an expiry index, a byte
//! budget and least-recently-used eviction.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use cache_core::{
    async_trait, key, CacheKey, CacheLayer, Clock, Entry, Error, Operation, Result, SystemClock,
    Tags, Timestamp,
};
use futures_util::future::{abortable, AbortHandle};
use indexed_db_futures::database::Database;
use indexed_db_futures::error::{DomException, Error as IdbError, OpenDbError};
use indexed_db_futures::internals::SystemRepr;
use indexed_db_futures::prelude::*;
use indexed_db_futures::transaction::TransactionMode;
use indexed_db_futures::{KeyPath, KeyRange};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use crate::js::JsError;
use crate::record;

mod records;
use records::{lru_record, new_record, num, prefix_range, read_record, write_batch, write_touches};

const ENTRIES: &str = "entries";
const LRU: &str = "lru";
const META: &str = "meta";
const BY_EXPIRY: &str = "by_expiry";
const BY_ACCESS: &str = "by_access";
const TOTAL: &str = "total_bytes";
const DB_VERSION: u8 = 1;

/// A stored value, its expiry and its tags.
type Stored = (Vec<u8>, Timestamp, Tags);
/// One record ready for a batch write: its encoded key, its `entries`
/// record and its size in bytes.
type Prepared = (String, JsValue, u64);
/// A [`write_batch`] whose transaction is made, still running.
type Writing = std::pin::Pin<Box<dyn Future<Output = std::result::Result<(), IdbError>>>>;

/// Default byte budget: 50 MiB of values.
pub const DEFAULT_MAX_BYTES: u64 = 50 * 1024 * 1024;

/// A cache tier of binary values (image bytes) in IndexedDB.
///
/// # Layout
///
/// One database per tier with three object stores: `entries` (the value as a
/// `Uint8Array`, never a `Blob`, which Safari cannot store reliably; its
/// `expires_at`, indexed), `lru` (last access and size per key, indexed by last
/// access) and `meta` (the running byte total). Primary keys are
/// [`cache_core::key::encode`]d, so prefix removal is a key range.
///
/// # Behaviour
///
/// - Reads check `expires_at` against the tier's clock; [`IndexedDbTier::sweep_expired`]
///   deletes expired entries in bulk through the expiry index.
/// - `get_many` reads in one read-only transaction: one `getAllKeys` and one
///   `getAll` of the key range its keys span (at most twice as many records
///   as keys), then a `get` for each key past what that returned.
/// - A put that takes the total over the byte budget first evicts the least
///   recently used entries, in the same transaction.
/// - Inside a transaction only IndexedDB requests are awaited, so transactions
///   never auto-commit early.
/// - If the connection was closed under us (`InvalidStateError`, "the database
///   connection is closing"), the tier reopens and retries the operation once.
/// - On `versionchange` (another tab upgrading the database) it closes its
///   connection so the upgrade is not blocked.
///
/// # Example
///
/// ```no_run
/// # async fn demo() -> cache_core::Result<()> {
/// use std::time::Duration;
/// use cache_browser::IndexedDbTier;
/// use cache_core::{CacheLayer, Clock, Entry, SystemClock};
///
/// let tier = IndexedDbTier::<Vec<u8>>::builder("avatar-bytes")
///     .ttl(Duration::from_secs(7 * 86_400))
///     .max_bytes(20 * 1024 * 1024)
///     .open()
///     .await?;
/// let png = vec![0x89, b'P', b'N', b'G'];
/// tier.put(&"user:42".to_string(), Entry::expiring_in(png, SystemClock.now(), Duration::from_secs(3600))).await?;
/// tier.sweep_expired().await?;
/// # Ok(()) }
/// ```
pub struct IndexedDbTier<V> {
    db_name: String,
    name: String,
    clock: Arc<dyn Clock>,
    ttl: Option<Duration>,
    max_bytes: u64,
    touch_after: Duration,
    conn: RefCell<Option<Conn>>,
    /// When this instance last wrote each key's LRU record.
    touched: RefCell<HashMap<String, Timestamp>>,
    _value: PhantomData<fn() -> V>,
}

impl<V> fmt::Debug for IndexedDbTier<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IndexedDbTier")
            .field("db_name", &self.db_name)
            .field("ttl", &self.ttl)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

/// Builds an [`IndexedDbTier`]; see [`IndexedDbTier::builder`].
#[must_use]
pub struct IndexedDbTierBuilder<V> {
    db_name: String,
    name: String,
    clock: Arc<dyn Clock>,
    ttl: Option<Duration>,
    max_bytes: u64,
    touch_after: Duration,
    _value: PhantomData<fn() -> V>,
}

impl<V> fmt::Debug for IndexedDbTierBuilder<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IndexedDbTierBuilder")
            .field("db_name", &self.db_name)
            .finish_non_exhaustive()
    }
}

impl<V> IndexedDbTierBuilder<V> {
    /// The tier's name for errors and metrics (default `"indexed_db"`).
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

    /// The budget for the sum of value sizes (default [`DEFAULT_MAX_BYTES`]).
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// How stale a key's last-access time may get before a read refreshes it
    /// (default one minute). Refreshing costs a write, so hits do not write
    /// every time.
    pub fn touch_after(mut self, d: Duration) -> Self {
        self.touch_after = d;
        self
    }

    /// Opens (creating or upgrading) the database.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when IndexedDB is absent, blocked or refuses to open.
    pub async fn open(self) -> Result<IndexedDbTier<V>> {
        let tier = IndexedDbTier {
            db_name: self.db_name,
            name: self.name,
            clock: self.clock,
            ttl: self.ttl,
            max_bytes: self.max_bytes,
            touch_after: self.touch_after,
            conn: RefCell::new(None),
            touched: RefCell::new(HashMap::new()),
            _value: PhantomData,
        };
        tier.connection().await?;
        Ok(tier)
    }
}

/// An open connection and its `versionchange` watcher.
struct Conn {
    db: Database,
    /// Set when the connection was closed for another tab's upgrade.
    closed: Rc<Cell<bool>>,
    watcher: Option<AbortHandle>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(w) = &self.watcher {
            w.abort();
        }
        // Closing an already-closed connection is a no-op; closing a live one
        // lets other tabs upgrade the database.
        self.db.clone().close();
    }
}

/// What a rejected promise of IndexedDB requests threw, as the IndexedDB
/// crate's error (a `DOMException` stays one, so a closing connection is
/// still told apart).
fn idb_error_of(thrown: JsValue) -> IdbError {
    match thrown.dyn_into::<web_sys::DomException>() {
        Ok(dom) => IdbError::from(dom),
        Err(other) => IdbError::from(indexed_db_futures::error::JSError::from(other)),
    }
}

fn idb_err(e: &IdbError) -> JsError {
    let name = match e {
        IdbError::DomException(d) => match d {
            DomException::InvalidStateError(_) => "InvalidStateError",
            DomException::TransactionInactiveError(_) => "TransactionInactiveError",
            DomException::NotFoundError(_) => "NotFoundError",
            DomException::ConstraintError(_) => "ConstraintError",
            DomException::DataError(_) => "DataError",
            DomException::AbortError(_) => "AbortError",
            DomException::DataCloneError(_) => "DataCloneError",
            _ => "DOMException",
        },
        _ => "IndexedDbError",
    };
    JsError::new(name, e.to_string())
}

/// Errors that mean "this connection is gone; a new one may work".
fn is_closing(e: &IdbError) -> bool {
    matches!(
        e,
        IdbError::DomException(DomException::InvalidStateError(_))
    ) || e.to_string().contains("closing")
}

fn is_quota(e: &IdbError) -> bool {
    let s = e.to_string();
    s.contains("QuotaExceeded") || s.contains("quota")
}

impl<V> IndexedDbTier<V> {
    /// A builder for a tier in the database named `db_name`.
    pub fn builder(db_name: &str) -> IndexedDbTierBuilder<V> {
        IndexedDbTierBuilder {
            db_name: db_name.to_owned(),
            name: "indexed_db".into(),
            clock: Arc::new(SystemClock),
            ttl: None,
            max_bytes: DEFAULT_MAX_BYTES,
            touch_after: Duration::from_secs(60),
            _value: PhantomData,
        }
    }

    /// The database's name.
    pub fn db_name(&self) -> &str {
        &self.db_name
    }

    fn unavailable(&self, reason: impl fmt::Display) -> Error {
        Error::Unavailable {
            tier: self.name.clone(),
            reason: reason.to_string(),
        }
    }

    async fn open_db(&self) -> Result<Conn> {
        let db = Database::open(self.db_name.as_str())
            .with_version(DB_VERSION)
            .with_on_upgrade_needed(|_event, db| {
                let entries = db.create_object_store(ENTRIES).build()?;
                entries
                    .create_index(BY_EXPIRY, KeyPath::One("expires_at"))
                    .build()?;
                let lru = db.create_object_store(LRU).build()?;
                lru.create_index(BY_ACCESS, KeyPath::One("last_access"))
                    .build()?;
                db.create_object_store(META).build()?;
                Ok(())
            })
            .await
            .map_err(|e: OpenDbError| self.unavailable(e))?;
        let closed = Rc::new(Cell::new(false));
        // Another tab wants to upgrade the schema: close so it is not blocked,
        // and reopen on the next operation. The watcher ends with its connection.
        let watcher = db.version_changes().ok().map(|mut changes| {
            let closed = closed.clone();
            let (watch, handle) = abortable(async move {
                if changes.recv().await.is_some() {
                    changes.db().clone().close();
                }
                closed.set(true);
            });
            wasm_bindgen_futures::spawn_local(async move {
                let _ = watch.await;
            });
            handle
        });
        Ok(Conn {
            db,
            closed,
            watcher,
        })
    }

    async fn connection(&self) -> Result<Database> {
        if let Some(conn) = self.conn.borrow().as_ref() {
            if !conn.closed.get() {
                return Ok(conn.db.clone());
            }
        }
        self.conn.borrow_mut().take();
        let conn = self.open_db().await?;
        let db = conn.db.clone();
        *self.conn.borrow_mut() = Some(conn);
        Ok(db)
    }

    /// Runs `f` on the connection; if the connection turns out to be closing or
    /// closed, reopens and runs it once more.
    async fn with_db<T, F, Fut>(&self, op: Operation, f: F) -> Result<T>
    where
        F: Fn(Database) -> Fut,
        Fut: Future<Output = std::result::Result<T, IdbError>>,
    {
        let db = self.connection().await?;
        match f(db).await {
            Ok(v) => Ok(v),
            Err(e) if is_closing(&e) => {
                self.conn.borrow_mut().take();
                let db = self.connection().await?;
                f(db).await.map_err(|e| self.map_err(op, &e))
            }
            Err(e) => Err(self.map_err(op, &e)),
        }
    }

    fn map_err(&self, op: Operation, e: &IdbError) -> Error {
        if is_quota(e) {
            Error::QuotaExceeded {
                tier: self.name.clone(),
                source: Some(Box::new(idb_err(e))),
            }
        } else {
            Error::backend(&self.name, op, idb_err(e))
        }
    }

    /// Closes the connection the tier holds, as the browser does when site data
    /// is cleared; the next operation sees "connection is closing" and reopens.
    #[doc(hidden)]
    pub fn close_connection_for_test(&self) {
        if let Some(conn) = self.conn.borrow().as_ref() {
            conn.db.clone().close();
        }
    }

    /// Deletes every expired entry through the expiry index; returns how many.
    ///
    /// # Errors
    ///
    /// A backend error if IndexedDB fails.
    pub async fn sweep_expired(&self) -> Result<usize> {
        let now = record::millis_to_js(self.clock.now());
        self.with_db(Operation::RemovePrefix, |db| async move {
            let tx = db
                .transaction([ENTRIES, LRU, META])
                .with_mode(TransactionMode::Readwrite)
                .build()?;
            let entries = tx.object_store(ENTRIES)?;
            let lru = tx.object_store(LRU)?;
            let meta = tx.object_store(META)?;
            let keys: Vec<JsValue> = entries
                .index(BY_EXPIRY)?
                .get_all_keys::<JsValue>()
                .with_query::<f64, _>(KeyRange::UpperBound(now, false)) // open = false: inclusive
                .primitive()?
                .await?
                .collect::<std::result::Result<_, _>>()?;
            let mut freed = 0.0;
            for k in &keys {
                let rec: Option<JsValue> = lru.get(k.clone()).primitive()?.await?;
                freed += rec.as_ref().and_then(|r| num(r, "size")).unwrap_or(0.0);
                entries.delete(k.clone()).primitive()?.await?;
                lru.delete(k.clone()).primitive()?.await?;
            }
            let total: Option<JsValue> = meta.get(TOTAL).primitive()?.await?;
            let total = total.and_then(|v| v.as_f64()).unwrap_or(0.0);
            meta.put(JsValue::from_f64((total - freed).max(0.0)))
                .with_key(TOTAL)
                .primitive()?
                .await?;
            tx.commit().await?;
            Ok(keys.len())
        })
        .await
    }

    /// The sum of stored value sizes, as the tier accounts it.
    ///
    /// # Errors
    ///
    /// A backend error if IndexedDB fails.
    pub async fn total_bytes(&self) -> Result<u64> {
        self.with_db(Operation::Get, |db| async move {
            let tx = db.transaction(META).build()?;
            let meta = tx.object_store(META)?;
            let total: Option<JsValue> = meta.get(TOTAL).primitive()?.await?;
            Ok(total.and_then(|v| v.as_f64()).unwrap_or(0.0) as u64)
        })
        .await
    }

    async fn get_bytes(&self, key: &str) -> Result<Option<(Vec<u8>, Timestamp, Tags)>> {
        let enc = key::encode(key);
        let now = self.clock.now();
        let found = self
            .with_db(Operation::Get, |db| {
                let enc = enc.clone();
                async move {
                    // The hot path: one request in one read-only transaction.
                    let tx = db.transaction(ENTRIES).build()?;
                    let rec: Option<JsValue> =
                        tx.object_store(ENTRIES)?.get(enc).primitive()?.await?;
                    Ok(rec)
                }
            })
            .await?;
        let Some(rec) = found else {
            return Ok(None);
        };
        let Ok((value, expires_at, tags)) = read_record(&rec, key, now) else {
            // Expired, corrupt, or not a record this tier wrote for this key:
            // a miss, removed.
            self.delete_key(&enc, Operation::Get).await?;
            return Ok(None);
        };
        let stale = self
            .touched
            .borrow()
            .get(&enc)
            .is_none_or(|t| now.duration_since(*t) >= self.touch_after);
        if stale {
            // Refresh the LRU record at most once per `touch_after` per key, in its
            // own small transaction, so most hits do not write.
            let size = u64::from(value.length());
            self.with_db(Operation::Get, |db| {
                let enc = enc.clone();
                async move {
                    let tx = db
                        .transaction(LRU)
                        .with_mode(TransactionMode::Readwrite)
                        .build()?;
                    let lru = tx.object_store(LRU)?;
                    lru.put(lru_record(now, size)?)
                        .with_key(enc)
                        .primitive()?
                        .await?;
                    tx.commit().await
                }
            })
            .await?;
            self.mark_touched(enc.clone(), now);
        }
        Ok(Some((value.to_vec(), expires_at, tags)))
    }

    /// [`IndexedDbTier::get_bytes`] for many keys: every record read in one
    /// read-only transaction (the requests all made at once), refused records
    /// removed, and the LRU records due a refresh written in one more
    /// transaction, in the background.
    async fn get_many_bytes(&self, keys: &[String]) -> Result<Vec<Option<Stored>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let encs: Vec<String> = keys.iter().map(|k| key::encode(k)).collect();
        let now = self.clock.now();
        let found = self
            .with_db(Operation::GetMany, |db| {
                let encs = &encs;
                async move {
                    let tx = db.transaction(ENTRIES).build()?;
                    let store = tx.object_store(ENTRIES)?;
                    // One range read instead of a request per key: for 50
                    // pictures, 0.7× the time of 50 `get`s at once (browser
                    // bench, `IndexedDbTier::get_many` row).
                    let keys: js_sys::Array = encs.iter().map(|e| JsValue::from_str(e)).collect();
                    let found =
                        JsFuture::from(crate::local_storage::idb_get_many(store.as_sys(), &keys))
                            .await
                            .map_err(idb_error_of)?;
                    Ok(js_sys::Array::from(&found)
                        .iter()
                        .map(|rec| (!rec.is_undefined()).then_some(rec))
                        .collect::<Vec<Option<JsValue>>>())
                }
            })
            .await?;
        let mut out = Vec::with_capacity(keys.len());
        let mut touch = Vec::new();
        for ((key, enc), rec) in keys.iter().zip(&encs).zip(found) {
            let Some(rec) = rec else {
                out.push(None);
                continue;
            };
            let Ok((value, expires_at, tags)) = read_record(&rec, key, now) else {
                // Expired, corrupt, or foreign: a miss, removed.
                self.delete_key(enc, Operation::GetMany).await?;
                out.push(None);
                continue;
            };
            let stale = self
                .touched
                .borrow()
                .get(enc)
                .is_none_or(|t| now.duration_since(*t) >= self.touch_after);
            if stale && !touch.iter().any(|(e, _)| e == enc) {
                touch.push((enc.clone(), u64::from(value.length())));
            }
            out.push(Some((value.to_vec(), expires_at, tags)));
        }
        if !touch.is_empty() {
            // The LRU records only order eviction: they are written after the
            // answer, in a transaction of their own, so a read does not wait
            // for a commit. One that fails is written again after
            // `touch_after`.
            let db = self.connection().await?;
            for (enc, _) in &touch {
                self.mark_touched(enc.clone(), now);
            }
            wasm_bindgen_futures::spawn_local(async move {
                let _ = write_touches(db, touch, now).await;
            });
        }
        Ok(out)
    }

    fn mark_touched(&self, enc: String, now: Timestamp) {
        let mut touched = self.touched.borrow_mut();
        // Only a hint for how often to write; forgetting it costs one write.
        if touched.len() >= 10_000 {
            touched.clear();
        }
        touched.insert(enc, now);
    }

    /// Deletes one key and its accounting; `true` if it was there.
    async fn delete_key(&self, enc: &str, op: Operation) -> Result<bool> {
        self.with_db(op, |db| async move {
            let tx = db
                .transaction([ENTRIES, LRU, META])
                .with_mode(TransactionMode::Readwrite)
                .build()?;
            let entries = tx.object_store(ENTRIES)?;
            let lru = tx.object_store(LRU)?;
            let meta = tx.object_store(META)?;
            let rec: Option<JsValue> = lru.get(enc).primitive()?.await?;
            let there: Option<String> = entries
                .get_key::<String, _>(enc.to_owned())
                .primitive()?
                .await?;
            if let Some(rec) = &rec {
                let size = num(rec, "size").unwrap_or(0.0);
                let total: Option<JsValue> = meta.get(TOTAL).primitive()?.await?;
                let total = total.and_then(|v| v.as_f64()).unwrap_or(0.0);
                meta.put(JsValue::from_f64((total - size).max(0.0)))
                    .with_key(TOTAL)
                    .primitive()?
                    .await?;
            }
            entries.delete(enc).primitive()?.await?;
            lru.delete(enc).primitive()?.await?;
            tx.commit().await?;
            Ok(there.is_some())
        })
        .await
    }

    async fn put_bytes(
        &self,
        key: &str,
        bytes: &[u8],
        expires_at: Timestamp,
        tags: &Tags,
    ) -> Result<()> {
        self.put_many_bytes(
            vec![(key.to_owned(), bytes, expires_at, tags)],
            Operation::Put,
        )
        .await
    }

    /// The records of every `(key, bytes, expires_at, tags)` (a later
    /// duplicate of a key wins), each marked as touched now; an error names
    /// `op`.
    fn prepare(
        &self,
        items: Vec<(String, &[u8], Timestamp, &Tags)>,
        now: Timestamp,
        op: Operation,
    ) -> Result<Vec<Prepared>> {
        let mut batch: Vec<Prepared> = Vec::with_capacity(items.len());
        for (key, bytes, expires_at, tags) in items {
            let size = bytes.len() as u64;
            if size > self.max_bytes {
                return Err(Error::QuotaExceeded {
                    tier: self.name.clone(),
                    source: Some(Box::new(JsError::new(
                        "QuotaExceededError",
                        format!(
                            "a {size}-byte value exceeds the tier's {}-byte budget",
                            self.max_bytes
                        ),
                    ))),
                });
            }
            let tags = record::tags_to_json(tags, &self.name)?;
            let enc = key::encode(&key);
            let rec = new_record(&key, bytes, expires_at, tags.as_deref())
                .map_err(|e| self.map_err(op, &e))?;
            batch.retain(|(e, ..)| *e != enc);
            batch.push((enc, rec, size));
        }
        for (enc, ..) in &batch {
            self.mark_touched(enc.clone(), now);
        }
        Ok(batch)
    }

    /// Writes every `(key, bytes, expires_at, tags)` in one read-write
    /// transaction (a later duplicate of a key wins), evicting least recently
    /// used keys first if the total goes over the budget.
    async fn put_many_bytes(
        &self,
        items: Vec<(String, &[u8], Timestamp, &Tags)>,
        op: Operation,
    ) -> Result<()> {
        if let Some(write) = self.start_write(items, op).await? {
            write.await.map_err(|e| self.map_err(op, &e))?;
        }
        Ok(())
    }

    /// Starts [`write_batch`] for `items` on the connection (reopened once if
    /// it was closing): the transaction and its first requests are made when
    /// this returns. `None` when there was nothing left to wait for.
    async fn start_write(
        &self,
        items: Vec<(String, &[u8], Timestamp, &Tags)>,
        op: Operation,
    ) -> Result<Option<Writing>> {
        let now = self.clock.now();
        let batch = self.prepare(items, now, op)?;
        if batch.is_empty() {
            return Ok(None);
        }
        // The reopen-once of `with_db`, by hand: `with_db` awaits the whole
        // write, and one more instantiation of it for this caller cost the
        // page 461 B over the wire, more than half of what its budget had
        // left. A closing connection fails the transaction's creation, which
        // is in the first poll.
        let mut reopened = false;
        loop {
            let db = self.connection().await?;
            let mut write: Writing =
                Box::pin(write_batch(db, batch.clone(), self.max_bytes as f64, now));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match write.as_mut().poll(&mut cx) {
                std::task::Poll::Pending => return Ok(Some(write)),
                std::task::Poll::Ready(Ok(())) => return Ok(None),
                std::task::Poll::Ready(Err(e)) if is_closing(&e) && !reopened => {
                    self.conn.borrow_mut().take();
                    reopened = true;
                }
                std::task::Poll::Ready(Err(e)) => return Err(self.map_err(op, &e)),
            }
        }
    }

    /// The entries' `(key, bytes, expires_at, tags)` to write, and the keys
    /// of those already expired (or at once past the tier's TTL), which are
    /// not written.
    #[allow(clippy::type_complexity)]
    fn to_write<'e, K: CacheKey>(
        &self,
        entries: &'e [(K, Entry<V>)],
    ) -> Result<(Vec<(String, &'e [u8], Timestamp, &'e Tags)>, Vec<String>)>
    where
        V: AsRef<[u8]>,
    {
        let now = self.clock.now();
        let mut items = Vec::with_capacity(entries.len());
        let mut expired = Vec::new();
        for (key, entry) in entries {
            let key = record::checked_key(key)?.into_owned();
            match record::put_expiry(entry.expires_at, now, self.ttl) {
                Some(expires_at) => {
                    items.push((key, entry.value.as_ref(), expires_at, &entry.tags))
                }
                None => {
                    items.retain(|(k, ..)| *k != key);
                    expired.push(key);
                }
            }
        }
        Ok((items, expired))
    }

    /// Like [`CacheLayer::put_many`], but returns as soon as the write's
    /// transaction exists and its first requests are made; the commit runs
    /// in the background. IndexedDB runs read-write transactions on the same
    /// stores in the order they were made, so a removal (or another write)
    /// made after this returns still comes after it, and a read made after
    /// it sees it. A write that fails in the background is reported on the
    /// console and leaves its entries out of the tier (a cache miss later).
    ///
    /// An entry already expired is left out (not removed, as `put_many`
    /// does). The preset's chain backfills its IndexedDB tier this way, so a
    /// read answered by a tier below it does not wait for the commit. Another tab
    /// may not see the entries until the commit: use
    /// [`CacheLayer::put_many`] for a new value.
    ///
    /// # Errors
    ///
    /// As [`CacheLayer::put_many`], for what fails before the transaction
    /// runs (a value over the byte budget, a bad key, the connection).
    pub async fn put_many_in_background<K: CacheKey>(
        &self,
        entries: Vec<(K, Entry<V>)>,
    ) -> Result<()>
    where
        V: AsRef<[u8]>,
    {
        // An entry already expired is left out: a backfill's key is one
        // this tier missed, so it holds nothing older to remove.
        let (items, _) = self.to_write(&entries)?;
        if let Some(write) = self.start_write(items, Operation::PutMany).await? {
            let name = self.name.clone();
            wasm_bindgen_futures::spawn_local(async move {
                if let Err(e) = write.await {
                    let e = idb_err(&e);
                    web_sys::console::warn_1(
                        &format!("{name}: a write in the background failed: {e}").into(),
                    );
                }
            });
        }
        Ok(())
    }

    async fn remove_range(&self, start: String, op: Operation) -> Result<()> {
        self.with_db(op, |db| {
            let start = start.clone();
            async move {
                let tx = db
                    .transaction([ENTRIES, LRU, META])
                    .with_mode(TransactionMode::Readwrite)
                    .build()?;
                let entries = tx.object_store(ENTRIES)?;
                let lru = tx.object_store(LRU)?;
                let meta = tx.object_store(META)?;
                let recs: Vec<JsValue> = lru
                    .get_all::<JsValue>()
                    .with_query::<String, _>(prefix_range(start.clone()))
                    .primitive()?
                    .await?
                    .collect::<std::result::Result<_, _>>()?;
                let freed: f64 = recs.iter().filter_map(|r| num(r, "size")).sum();
                entries
                    .delete::<String, _>(prefix_range(start.clone()))
                    .primitive()?
                    .await?;
                lru.delete::<String, _>(prefix_range(start))
                    .primitive()?
                    .await?;
                let total: Option<JsValue> = meta.get(TOTAL).primitive()?.await?;
                let total = total.and_then(|v| v.as_f64()).unwrap_or(0.0);
                meta.put(JsValue::from_f64((total - freed).max(0.0)))
                    .with_key(TOTAL)
                    .primitive()?
                    .await?;
                tx.commit().await
            }
        })
        .await
    }
}

#[async_trait(?Send)]
impl<K, V> CacheLayer<K, V> for IndexedDbTier<V>
where
    K: CacheKey,
    V: AsRef<[u8]> + From<Vec<u8>> + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    async fn get(&self, key: &K) -> Result<Option<Entry<V>>> {
        let key = record::checked_key(key)?;
        Ok(self
            .get_bytes(&key)
            .await?
            .map(|(bytes, expires_at, tags)| {
                let mut entry = Entry::new(V::from(bytes), expires_at);
                entry.tags = tags;
                entry
            }))
    }

    async fn put(&self, key: &K, entry: Entry<V>) -> Result<()> {
        let key = record::checked_key(key)?;
        let Some(expires_at) = record::put_expiry(entry.expires_at, self.clock.now(), self.ttl)
        else {
            self.delete_key(&key::encode(&key), Operation::Put).await?;
            return Ok(());
        };
        self.put_bytes(&key, entry.value.as_ref(), expires_at, &entry.tags)
            .await
    }

    /// Every key in one read-only transaction, through one range read (see
    /// the type's docs).
    async fn get_many(&self, keys: &[K]) -> Result<Vec<Option<Entry<V>>>> {
        let keys = keys
            .iter()
            .map(|k| record::checked_key(k).map(std::borrow::Cow::into_owned))
            .collect::<Result<Vec<String>>>()?;
        Ok(self
            .get_many_bytes(&keys)
            .await?
            .into_iter()
            .map(|found| {
                found.map(|(bytes, expires_at, tags)| {
                    let mut entry = Entry::new(V::from(bytes), expires_at);
                    entry.tags = tags;
                    entry
                })
            })
            .collect())
    }

    /// Every entry in one read-write transaction; an entry already expired
    /// (or at once past the tier's TTL) is removed instead.
    async fn put_many(&self, entries: Vec<(K, Entry<V>)>) -> Result<()> {
        let (items, expired) = self.to_write(&entries)?;
        for key in expired {
            self.delete_key(&key::encode(&key), Operation::PutMany)
                .await?;
        }
        self.put_many_bytes(items, Operation::PutMany).await
    }

    async fn remove(&self, key: &K) -> Result<bool> {
        let key = record::checked_key(key)?;
        self.delete_key(&key::encode(&key), Operation::Remove).await
    }

    async fn remove_prefix(&self, prefix: &str) -> Result<()> {
        self.remove_range(key::encode(prefix), Operation::RemovePrefix)
            .await
    }

    async fn clear(&self) -> Result<()> {
        self.with_db(Operation::Clear, |db| async move {
            let tx = db
                .transaction([ENTRIES, LRU, META])
                .with_mode(TransactionMode::Readwrite)
                .build()?;
            tx.object_store(ENTRIES)?.clear()?.await?;
            tx.object_store(LRU)?.clear()?.await?;
            tx.object_store(META)?
                .put(JsValue::from_f64(0.0))
                .with_key(TOTAL)
                .primitive()?
                .await?;
            tx.commit().await
        })
        .await
    }
}
