//! [`RedisTier`]: the shared tier, on one Redis or a Redis Cluster, through fred.

mod codec;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cache_core::{
    async_trait, key, CacheKey, CacheLayer, Clock, Entry, Error, Operation, Result, SystemClock,
    Timestamp,
};
use fred::error::ErrorKind;
use fred::prelude::{
    Builder, ClientLike, Config, Expiration, KeysInterface, LuaInterface, Pool, ReconnectPolicy,
    Value,
};
use futures_util::StreamExt;

use codec::{open, write_header, Corrupt, HEADER_LEN};

/// Deletes `KEYS[1]` only if it still holds `ARGV[1]`.
const DELETE_IF_UNCHANGED: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     return redis.call('DEL', KEYS[1]) else return 0 end";
pub use codec::{Codec, MsgPackCodec};

/// Default per-command timeout.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(500);
/// Default number of connections in the pool.
pub const DEFAULT_POOL_SIZE: usize = 4;
/// Keys removed per `UNLINK` by `clear` and `remove_prefix`.
const UNLINK_BATCH: usize = 500;

/// A cache tier in Redis (single node or Redis Cluster), through a fred
/// connection pool.
///
/// # Keys
///
/// Every key is stored as `<namespace>:<encoded key>`, where the encoding is
/// [`cache_core::key::encode`]: no key can leave its namespace, glob `SCAN`
/// patterns, or reach another key's entry. Keys are validated first (empty, too
/// long or control characters give [`Error::InvalidKey`]). The tier owns every
/// Redis key under `<namespace>:`; `clear` removes them all, and nothing else.
///
/// # Values
///
/// A value is stored as a small envelope: `"LC"`, a version byte, the entry's
/// `expires_at` (u64 ms), then the payload from the [`Codec`] (default
/// [`MsgPackCodec`]). A stored value that does not decode (garbage, another
/// envelope version, a payload the codec rejects, a key of another Redis type)
/// is a **miss**: it is deleted (only if the key still holds the bytes that were
/// read, so a fresh value written meanwhile survives), logged at `warn` and counted
/// ([`RedisTier::corrupt_values`]); the reader never gets an error or a panic.
///
/// # Expiry
///
/// `put` sets an absolute expiry (`SET .. PXAT`) of `min(entry.expires_at, now +
/// tier_ttl)`, and every read checks the envelope's expiry against the tier's
/// clock. With a test clock (not [`SystemClock`]) the `PXAT` deadline is moved
/// by the clock's offset from the wall clock, so Redis keeps the entry as long
/// as the test clock says it lives.
///
/// # Commands
///
/// - `get`: `GET`; `get_many`: one `MGET` on a single node (one round trip), one
///   `MGET` per hash slot in one pipeline on a cluster.
/// - `put_many`: one pipeline of `SET .. PXAT`.
/// - `remove_prefix` and `clear`: `SCAN MATCH <namespace>:<prefix>*` (on every
///   primary of a cluster) then `UNLINK` in batches. Never `FLUSHDB`/`FLUSHALL`.
///
/// # Connection defaults
///
/// A pool of [`DEFAULT_POOL_SIZE`] connections, a per-command timeout of
/// [`DEFAULT_COMMAND_TIMEOUT`], and a reconnect policy that retries for ever
/// with exponential back-off from 50 ms to 2 s (fred never reconnects without
/// one). When Redis is down, commands fail after the timeout and the chain
/// carries on (fail-open); when it is back the pool reconnects by itself.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use cache_core::{CacheLayer, Clock, Entry, SystemClock};
/// use cache_server::RedisTier;
///
/// # let server = cache_server::testing::RedisServer::start(); // a throwaway redis-server
/// # let url = server.url();
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let tier: RedisTier<String> = RedisTier::builder()
///     .url(url) // "redis://127.0.0.1:6379"
///     .namespace("avatars")
///     .ttl(Duration::from_secs(50 * 60))
///     .build()
///     .await?;
/// let key = "user:42".to_string();
/// tier.put(&key, Entry::expiring_in("https://img/42".into(), SystemClock.now(), Duration::from_secs(60))).await?;
/// assert_eq!(tier.get(&key).await?.unwrap().value, "https://img/42");
/// assert_eq!(tier.redis_key(&key)?, "avatars:user~3A42");
/// # Ok::<_, cache_core::Error>(()) }).unwrap();
/// ```
pub struct RedisTier<V, C = MsgPackCodec> {
    inner: Arc<Inner<C>>,
    _value: PhantomData<fn() -> V>,
}

struct Inner<C> {
    pool: Pool,
    name: Cow<'static, str>,
    namespace: String,
    ttl: Option<Duration>,
    clock: Arc<dyn Clock>,
    system_clock: bool,
    codec: C,
    command_timeout: Duration,
    clustered: bool,
    corrupt: AtomicU64,
    /// Whether the pool was made here (and is closed when the tier is dropped).
    owned: bool,
}

impl<C> Drop for Inner<C> {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let pool = self.pool.clone();
            rt.spawn(async move {
                let _ = pool.quit().await;
            });
        }
    }
}

impl<V, C> Clone for RedisTier<V, C> {
    fn clone(&self) -> Self {
        RedisTier {
            inner: self.inner.clone(),
            _value: PhantomData,
        }
    }
}

impl<V, C: fmt::Debug> fmt::Debug for RedisTier<V, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No URL or config: they may hold credentials.
        f.debug_struct("RedisTier")
            .field("name", &self.inner.name)
            .field("namespace", &self.inner.namespace)
            .field("ttl", &self.inner.ttl)
            .field("clustered", &self.inner.clustered)
            .field("codec", &self.inner.codec)
            .finish_non_exhaustive()
    }
}

impl<V, C> fmt::Display for RedisTier<V, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RedisTier({}, {})",
            self.inner.name, self.inner.namespace
        )
    }
}

impl<V> RedisTier<V, MsgPackCodec> {
    /// A builder; see [`RedisTierBuilder`].
    pub fn builder() -> RedisTierBuilder<V, MsgPackCodec> {
        RedisTierBuilder::default()
    }
}

impl<V, C> RedisTier<V, C>
where
    V: Send + Sync + 'static,
    C: Codec<V>,
{
    /// The fred pool, to run other commands on the same connections.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The namespace keys live under.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// Whether the tier talks to a Redis Cluster.
    pub fn is_clustered(&self) -> bool {
        self.inner.clustered
    }

    /// How many stored values could not be decoded (and were deleted) so far.
    pub fn corrupt_values(&self) -> u64 {
        self.inner.corrupt.load(Ordering::Relaxed)
    }

    /// The Redis key `key` is stored under: `<namespace>:<encoded key>`.
    ///
    /// ```
    /// # let server = cache_server::testing::RedisServer::start();
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let tier: cache_server::RedisTier<String> =
    ///     cache_server::RedisTier::builder().url(server.url()).namespace("avatars").build().await?;
    /// assert_eq!(tier.redis_key(&"user/42".to_string())?, "avatars:user~2F42");
    /// # Ok::<_, cache_core::Error>(()) }).unwrap();
    /// ```
    pub fn redis_key<K: CacheKey>(&self, key: &K) -> Result<String> {
        let s = key.key_str();
        key.validate()
            .map_err(|reason| Error::invalid_key(&s, reason))?;
        let mut out = String::with_capacity(self.inner.namespace.len() + 1 + s.len());
        out.push_str(&self.inner.namespace);
        out.push(':');
        key::encode_into(&s, &mut out);
        Ok(out)
    }

    /// Closes the pool's connections.
    pub async fn quit(&self) -> Result<()> {
        self.inner
            .pool
            .quit()
            .await
            .map_err(|e| Error::Unavailable {
                tier: self.inner.name.to_string(),
                reason: format!("closing the pool failed: {e}"),
            })
    }
}

impl<C> Inner<C> {
    fn error(&self, operation: Operation, err: fred::error::Error) -> Error {
        if matches!(err.kind(), ErrorKind::Timeout) {
            Error::Timeout {
                tier: self.name.to_string(),
                operation,
                after: self.command_timeout,
            }
        } else {
            Error::backend(self.name.to_string(), operation, err)
        }
    }

    /// The `PXAT` deadline for `expires_at`, on Redis's (wall-clock) time base.
    fn pxat(&self, expires_at: Timestamp, now: Timestamp) -> i64 {
        let at = expires_at.as_unix_millis();
        let at = if self.system_clock {
            at
        } else {
            let wall = SystemClock.now().as_unix_millis();
            let offset = i128::from(wall) - i128::from(now.as_unix_millis());
            let shifted = i128::from(at) + offset;
            u64::try_from(shifted.max(1)).unwrap_or(u64::MAX)
        };
        i64::try_from(at).unwrap_or(i64::MAX)
    }

    /// Counts, logs and deletes a value that cannot be read.
    ///
    /// `seen` is the value as read: it is deleted only if the key still holds
    /// exactly those bytes (one atomic script), so a fresh value another instance
    /// wrote in the meantime survives. A key of another Redis type (`seen` is
    /// `None`) is deleted outright.
    async fn corrupt(&self, rkey: &str, why: Corrupt, seen: Option<&[u8]>) {
        self.corrupt.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            tier = %self.name,
            key = %key::preview(rkey),
            reason = %why,
            "undecodable cache value treated as a miss and deleted"
        );
        let deleted = match seen {
            Some(bytes) => {
                self.pool
                    .next()
                    .eval::<i64, _, _, _>(DELETE_IF_UNCHANGED, rkey, Bytes::copy_from_slice(bytes))
                    .await
            }
            None => self.pool.del::<i64, _>(rkey).await,
        };
        if let Err(err) = deleted {
            tracing::warn!(tier = %self.name, error = %err, "could not delete an undecodable value");
        }
    }

    fn is_wrong_type(err: &fred::error::Error) -> bool {
        err.details().starts_with("WRONGTYPE")
    }
}

impl<C> Inner<C> {
    /// Decodes one stored value read at `now`.
    async fn decode<V>(&self, rkey: &str, bytes: &[u8], now: Timestamp) -> Option<Entry<V>>
    where
        C: Codec<V>,
    {
        let (expires_at, payload) = match open(bytes) {
            Ok(parts) => parts,
            Err(why) => {
                self.corrupt(rkey, why, Some(bytes)).await;
                return None;
            }
        };
        if now >= expires_at {
            return None;
        }
        match self.codec.decode(payload) {
            Ok(value) => Some(Entry::new(value, expires_at)),
            Err(_) => {
                self.corrupt(rkey, Corrupt::Payload, Some(bytes)).await;
                None
            }
        }
    }

    fn envelope<V>(&self, entry: &Entry<V>) -> Result<Bytes>
    where
        C: Codec<V>,
    {
        let mut buf = Vec::with_capacity(HEADER_LEN + 64);
        write_header(entry.expires_at, &mut buf);
        self.codec
            .encode_into(&entry.value, &mut buf)
            .map_err(|e| Error::Encode {
                tier: self.name.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Bytes::from(buf))
    }

    /// Deletes every key matching `pattern` (SCAN on every primary + UNLINK).
    async fn unlink_matching(&self, pattern: String, operation: Operation) -> Result<()> {
        let client = self.pool.next();
        let stream = if self.clustered {
            client
                .scan_cluster_buffered(pattern, Some(1000), None)
                .boxed()
        } else {
            client.scan_buffered(pattern, Some(1000), None).boxed()
        };
        let mut chunks = stream.chunks(UNLINK_BATCH);
        while let Some(chunk) = chunks.next().await {
            let keys = chunk
                .into_iter()
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| self.error(operation, e))?;
            if self.clustered {
                // UNLINK of several keys must stay within one hash slot.
                let groups =
                    fred::util::group_by_hash_slot(keys).map_err(|e| self.error(operation, e))?;
                let pipe = client.pipeline();
                for (_, keys) in groups {
                    let _: () = pipe
                        .unlink(Vec::from(keys))
                        .await
                        .map_err(|e| self.error(operation, e))?;
                }
                let _: Vec<Value> = pipe.all().await.map_err(|e| self.error(operation, e))?;
            } else if !keys.is_empty() {
                let _: i64 = client
                    .unlink(keys)
                    .await
                    .map_err(|e| self.error(operation, e))?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl<K, V, C> CacheLayer<K, V> for RedisTier<V, C>
where
    K: CacheKey,
    V: Send + Sync + 'static,
    C: Codec<V>,
{
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn get(&self, key: &K) -> Result<Option<Entry<V>>> {
        let inner = &*self.inner;
        let rkey = self.redis_key(key)?;
        match inner.pool.get::<Option<Bytes>, _>(rkey.as_str()).await {
            Ok(None) => Ok(None),
            Ok(Some(bytes)) => Ok(inner.decode(&rkey, &bytes, inner.clock.now()).await),
            Err(err) if Inner::<C>::is_wrong_type(&err) => {
                inner.corrupt(&rkey, Corrupt::WrongType, None).await;
                Ok(None)
            }
            Err(err) => Err(inner.error(Operation::Get, err)),
        }
    }

    async fn get_many(&self, keys: &[K]) -> Result<Vec<Option<Entry<V>>>> {
        let inner = &*self.inner;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rkeys = keys
            .iter()
            .map(|k| self.redis_key(k))
            .collect::<Result<Vec<_>>>()?;
        let raw: Vec<Option<Bytes>> = if inner.clustered {
            // One MGET per hash slot, all in one pipeline (fred routes each to
            // its node).
            let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
            for (i, k) in rkeys.iter().enumerate() {
                by_slot
                    .entry(fred::util::redis_keyslot(k.as_bytes()))
                    .or_default()
                    .push(i);
            }
            let pipe = inner.pool.next().pipeline();
            for idx in by_slot.values() {
                let ks: Vec<&str> = idx.iter().map(|&i| rkeys[i].as_str()).collect();
                let _: () = pipe
                    .mget(ks)
                    .await
                    .map_err(|e| inner.error(Operation::GetMany, e))?;
            }
            let groups: Vec<Value> = pipe
                .all()
                .await
                .map_err(|e| inner.error(Operation::GetMany, e))?;
            let mut out = vec![None; rkeys.len()];
            for (idx, group) in by_slot.values().zip(groups) {
                let values: Vec<Option<Bytes>> = match group {
                    // A single-key group may come back flattened.
                    Value::Array(_) => group
                        .convert()
                        .map_err(|e| inner.error(Operation::GetMany, e))?,
                    other => vec![other
                        .convert()
                        .map_err(|e| inner.error(Operation::GetMany, e))?],
                };
                for (&i, v) in idx.iter().zip(values) {
                    out[i] = v;
                }
            }
            out
        } else {
            let ks: Vec<&str> = rkeys.iter().map(String::as_str).collect();
            inner
                .pool
                .mget(ks)
                .await
                .map_err(|e| inner.error(Operation::GetMany, e))?
        };
        let now = inner.clock.now();
        let mut out = Vec::with_capacity(raw.len());
        for (rkey, bytes) in rkeys.iter().zip(raw) {
            out.push(match bytes {
                Some(b) => inner.decode(rkey, &b, now).await,
                None => None,
            });
        }
        Ok(out)
    }

    async fn put(&self, key: &K, entry: Entry<V>) -> Result<()> {
        let inner = &*self.inner;
        let rkey = self.redis_key(key)?;
        let now = inner.clock.now();
        let entry = entry.capped_by_ttl(now, inner.ttl);
        if entry.is_expired(now) {
            let _: i64 = inner
                .pool
                .del(rkey)
                .await
                .map_err(|e| inner.error(Operation::Put, e))?;
            return Ok(());
        }
        let value = inner.envelope(&entry)?;
        let at = inner.pxat(entry.expires_at, now);
        inner
            .pool
            .set::<(), _, _>(rkey, value, Some(Expiration::PXAT(at)), None, false)
            .await
            .map_err(|e| inner.error(Operation::Put, e))
    }

    async fn put_many(&self, entries: Vec<(K, Entry<V>)>) -> Result<()> {
        let inner = &*self.inner;
        if entries.is_empty() {
            return Ok(());
        }
        let now = inner.clock.now();
        let pipe = inner.pool.next().pipeline();
        let err = |e| inner.error(Operation::PutMany, e);
        for (key, entry) in entries {
            let rkey = self.redis_key(&key)?;
            let entry = entry.capped_by_ttl(now, inner.ttl);
            if entry.is_expired(now) {
                let _: () = pipe.del(rkey).await.map_err(err)?;
            } else {
                let value = inner.envelope(&entry)?;
                let at = inner.pxat(entry.expires_at, now);
                let _: () = pipe
                    .set(rkey, value, Some(Expiration::PXAT(at)), None, false)
                    .await
                    .map_err(err)?;
            }
        }
        let _: Vec<Value> = pipe.all().await.map_err(err)?;
        Ok(())
    }

    async fn remove(&self, key: &K) -> Result<bool> {
        let inner = &*self.inner;
        let rkey = self.redis_key(key)?;
        let n: i64 = inner
            .pool
            .del(rkey)
            .await
            .map_err(|e| inner.error(Operation::Remove, e))?;
        Ok(n > 0)
    }

    async fn remove_prefix(&self, prefix: &str) -> Result<()> {
        let inner = &*self.inner;
        // The encoding preserves prefixes and has no glob characters.
        let mut pattern = format!("{}:", inner.namespace);
        key::encode_into(prefix, &mut pattern);
        pattern.push('*');
        inner
            .unlink_matching(pattern, Operation::RemovePrefix)
            .await
    }

    async fn clear(&self) -> Result<()> {
        let inner = &*self.inner;
        inner
            .unlink_matching(format!("{}:*", inner.namespace), Operation::Clear)
            .await
    }
}

enum Connection {
    Url(String),
    Config(Box<Config>),
    Pool(Pool),
}

/// Builds a [`RedisTier`]. See [`RedisTier::builder`].
///
/// ```
/// use std::time::Duration;
/// use cache_server::RedisTier;
///
/// let builder = RedisTier::<String>::builder()
///     .url("redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001")
///     .namespace("avatars")
///     .ttl(Duration::from_secs(3000))
///     .command_timeout(Duration::from_millis(200))
///     .pool_size(8);
/// // `builder.build().await` connects.
/// # let _ = builder;
/// ```
#[must_use]
pub struct RedisTierBuilder<V, C = MsgPackCodec> {
    connection: Connection,
    name: Cow<'static, str>,
    namespace: String,
    ttl: Option<Duration>,
    clock: Option<Arc<dyn Clock>>,
    codec: C,
    command_timeout: Duration,
    connect_timeout: Duration,
    pool_size: usize,
    policy: ReconnectPolicy,
    lazy: bool,
    _value: PhantomData<fn() -> V>,
}

impl<V, C: fmt::Debug> fmt::Debug for RedisTierBuilder<V, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTierBuilder")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("ttl", &self.ttl)
            .field("codec", &self.codec)
            .field("command_timeout", &self.command_timeout)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

/// The reconnect policy tiers and buses use unless told otherwise: retry for
/// ever, 50 ms doubling up to 2 s.
pub fn default_reconnect_policy() -> ReconnectPolicy {
    ReconnectPolicy::new_exponential(0, 50, 2_000, 2)
}

impl<V> Default for RedisTierBuilder<V, MsgPackCodec> {
    fn default() -> Self {
        RedisTierBuilder {
            connection: Connection::Url("redis://127.0.0.1:6379".into()),
            name: Cow::Borrowed("redis"),
            namespace: "cache".into(),
            ttl: None,
            clock: None,
            codec: MsgPackCodec,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: Duration::from_secs(2),
            pool_size: DEFAULT_POOL_SIZE,
            policy: default_reconnect_policy(),
            lazy: false,
            _value: PhantomData,
        }
    }
}

/// Whether `ns` is a usable namespace: non-empty, at most 128 bytes, from
/// `[A-Za-z0-9_.-]`. No `:` (the separator), no glob or hash-tag characters.
fn check_namespace(ns: &str) -> Result<(), String> {
    if ns.is_empty() || ns.len() > 128 {
        return Err("the namespace must be 1 to 128 bytes long".into());
    }
    if !ns
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err("the namespace may only hold ASCII letters, digits, '_', '-' and '.'".into());
    }
    Ok(())
}

impl<V, C> RedisTierBuilder<V, C>
where
    V: Send + Sync + 'static,
    C: Codec<V>,
{
    /// The server: `redis://[user:pass@]host:port[/db]`, or
    /// `redis-cluster://host:port?node=host:port&node=...` for a cluster.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.connection = Connection::Url(url.into());
        self
    }

    /// A full fred [`Config`] (TLS, sentinel, RESP3...).
    pub fn config(mut self, config: Config) -> Self {
        self.connection = Connection::Config(Box::new(config));
        self
    }

    /// An existing, already initialised fred pool; the timeout, pool size and
    /// reconnect settings of this builder are then not used.
    pub fn pool(mut self, pool: Pool) -> Self {
        self.connection = Connection::Pool(pool);
        self
    }

    /// The tier's name in errors and metrics (default `"redis"`).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The key namespace (default `"cache"`): keys are `<namespace>:<key>`.
    /// `[A-Za-z0-9_.-]`, 1 to 128 bytes; `build` refuses anything else.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The tier's own TTL: no entry is kept longer than this after its put.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The clock reads are checked against (default [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// The clock reads are checked against, shared.
    pub fn shared_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The value codec (default [`MsgPackCodec`]).
    pub fn codec<C2: Codec<V>>(self, codec: C2) -> RedisTierBuilder<V, C2> {
        RedisTierBuilder {
            connection: self.connection,
            name: self.name,
            namespace: self.namespace,
            ttl: self.ttl,
            clock: self.clock,
            codec,
            command_timeout: self.command_timeout,
            connect_timeout: self.connect_timeout,
            pool_size: self.pool_size,
            policy: self.policy,
            lazy: self.lazy,
            _value: PhantomData,
        }
    }

    /// How long one command may take before it fails with [`Error::Timeout`]
    /// (default [`DEFAULT_COMMAND_TIMEOUT`]). Also the longest a read waits for
    /// Redis while it is down.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// How long one connection attempt may take (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Connections in the pool (default [`DEFAULT_POOL_SIZE`]; at least 1).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// The reconnect policy (default [`default_reconnect_policy`]).
    pub fn reconnect_policy(mut self, policy: ReconnectPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Starts without waiting for Redis (default `false`): `build` then
    /// succeeds even while Redis is down, commands fail with
    /// [`Error::Timeout`] until the pool has connected, and the chain serves
    /// from its other tiers meanwhile (fail-open at start-up too).
    pub fn lazy_connect(mut self, lazy: bool) -> Self {
        self.lazy = lazy;
        self
    }

    /// Connects and builds the tier. Fails if the namespace is invalid, or (unless
    /// [`lazy_connect`](Self::lazy_connect)) if the first connection cannot be
    /// made.
    pub async fn build(self) -> Result<RedisTier<V, C>> {
        check_namespace(&self.namespace).map_err(|reason| Error::Unavailable {
            tier: self.name.to_string(),
            reason,
        })?;
        let unavailable = |what: &str, e: fred::error::Error| Error::Unavailable {
            tier: self.name.to_string(),
            reason: format!("{what}: {e}"),
        };
        let owned = !matches!(self.connection, Connection::Pool(_));
        let pool = match self.connection {
            Connection::Pool(pool) => pool,
            Connection::Url(ref url) => {
                let config = Config::from_url(url).map_err(|e| unavailable("bad Redis URL", e))?;
                self.connect(config)
                    .await
                    .map_err(|e| unavailable("cannot connect", e))?
            }
            Connection::Config(ref config) => self
                .connect((**config).clone())
                .await
                .map_err(|e| unavailable("cannot connect", e))?,
        };
        let clustered = pool.next().is_clustered();
        let system_clock = self.clock.is_none();
        Ok(RedisTier {
            inner: Arc::new(Inner {
                pool,
                name: self.name,
                namespace: self.namespace,
                ttl: self.ttl,
                clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
                system_clock,
                codec: self.codec,
                command_timeout: self.command_timeout,
                clustered,
                corrupt: AtomicU64::new(0),
                owned,
            }),
            _value: PhantomData,
        })
    }

    async fn connect(&self, config: Config) -> std::result::Result<Pool, fred::error::Error> {
        let pool = client_builder(
            config,
            self.command_timeout,
            self.connect_timeout,
            self.policy.clone(),
        )
        .build_pool(self.pool_size)?;
        if self.lazy {
            // fred's reconnect policy covers lost connections, not a first
            // connection that never succeeded: retry that here.
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut delay = Duration::from_millis(50);
                while let Err(err) = pool.init().await {
                    tracing::debug!(error = %err, "Redis not reachable yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            });
        } else {
            pool.init().await?;
        }
        Ok(pool)
    }
}

/// A fred builder with this crate's defaults.
pub(crate) fn client_builder(
    config: Config,
    command_timeout: Duration,
    connect_timeout: Duration,
    policy: ReconnectPolicy,
) -> Builder {
    let mut builder = Builder::from_config(config);
    builder
        .with_performance_config(|p| {
            p.default_command_timeout = command_timeout;
            // Pub/sub bursts: a lagging receiver makes the bus flush everything.
            p.broadcast_channel_capacity = p.broadcast_channel_capacity.max(4096);
        })
        .with_connection_config(|c| {
            c.connection_timeout = connect_timeout;
            c.internal_command_timeout = connect_timeout;
            // A command is tried once more after a reconnect, within its timeout.
            c.max_command_attempts = 2;
            // Name connections (CLIENT SETNAME) so operators can find them.
            c.auto_client_setname = true;
        })
        .set_policy(policy);
    builder
}

#[cfg(all(test, feature = "testing"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::RedisServer;

    #[tokio::test]
    async fn a_corrupt_value_is_deleted_only_while_it_is_unchanged() {
        let server = RedisServer::start();
        let tier: RedisTier<String> = RedisTier::builder()
            .url(server.url())
            .namespace("t")
            .build()
            .await
            .unwrap();
        server.cli(&["SET", "t:k", "fresh"]).unwrap();
        // The read saw garbage, but another instance has written since: its value
        // stays.
        tier.inner
            .corrupt("t:k", Corrupt::NotAnEnvelope, Some(b"garbage"))
            .await;
        assert_eq!(server.cli(&["GET", "t:k"]).unwrap().trim(), "fresh");
        // The key still holds what the read saw: deleted.
        tier.inner
            .corrupt("t:k", Corrupt::NotAnEnvelope, Some(b"fresh"))
            .await;
        assert_eq!(server.cli(&["EXISTS", "t:k"]).unwrap().trim(), "0");
        assert_eq!(tier.corrupt_values(), 2);
    }
}
