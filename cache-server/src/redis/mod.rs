//! [`RedisTier`]: the shared tier, on one Redis or a Redis Cluster, through fred.

mod builder;
mod codec;
mod commands;
mod failover;
mod layout;
mod primary;
pub(crate) mod scripts;
mod tags;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cache_core::{
    async_trait, key, CacheKey, CacheLayer, Clock, Entry, Error, Fence, Fill, Operation, Result,
    Stamp, Timestamp,
};
use fred::prelude::{ClientLike, KeysInterface, Pool, Value};
use futures_util::StreamExt;
use tokio::sync::watch;

use codec::{open, write_header, Corrupt, HEADER_LEN};
use layout::{FenceKeys, Layout};

pub(crate) use builder::{client_builder, describe_connect_error};
pub use builder::{default_reconnect_policy, RedisTierBuilder};
pub(crate) use codec::ENVELOPE_FAMILY;
pub use codec::{Codec, MsgPackCodec};
use commands::{generation_of, ScriptCall, Wait};
use failover::Guard;
pub use failover::Replication;
pub use layout::DEFAULT_CLUSTER_SHARDS;
pub use tags::RedisTagStore;

/// Default per-command timeout.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(500);
/// Default number of connections in the pool.
pub const DEFAULT_POOL_SIZE: usize = 4;
/// Default fence horizon: how long a stamp stays usable (see [`RedisTier`]'s
/// "Fenced writes").
pub const DEFAULT_FENCE_HORIZON: Duration = Duration::from_secs(10 * 60);
/// Default [`RedisTierBuilder::failover_check`]: besides every connection
/// error and reconnect, the primary is looked at this often.
pub const DEFAULT_FAILOVER_CHECK: Duration = Duration::from_secs(1);
/// Keys removed per `UNLINK` by `clear` and `remove_prefix`.
const UNLINK_BATCH: usize = 500;

/// A cache tier in Redis (single node or Redis Cluster), through a fred
/// connection pool.
///
/// # Keys
///
/// Keys are validated first (empty, too long or control characters give
/// [`Error::InvalidKey`]), then encoded with [`cache_core::key::encode`], whose
/// output holds only `[A-Za-z0-9_-]` and `~XX` escapes (uppercase hex): no key
/// can leave its namespace, glob `SCAN` patterns, pick a cluster hash slot, or
/// reach another key's entry. The tier owns every Redis key under
/// `<namespace>:`, and nothing else:
///
/// | | single node | Redis Cluster |
/// |---|---|---|
/// | value | `<ns>:<enc>` | `<ns>:{<ns>.<shard>}:<enc>` |
/// | key generation | `<ns>:~g:<enc>` | `<ns>:{<ns>.<shard>}:~g:<enc>` |
/// | scope generation | `<ns>:~a` | `<ns>:{<ns>.<shard>}:~a` (one per shard) |
/// | scope log, trim point | `<ns>:~p`, `<ns>:~t` | `<ns>:{<ns>.<shard>}:~p`, `~t` |
///
/// On a cluster, `<shard>` is the 64-bit FNV-1a hash of `<enc>` modulo the
/// number of shards ([`DEFAULT_CLUSTER_SHARDS`], see
/// [`RedisTierBuilder::cluster_shards`]): the hash tag keeps a value and its
/// generations in one hash slot, so one script can touch them all, while
/// the shards spread the namespace over every primary. Every instance that
/// shares a namespace must use the same number of shards. `~a`, `~p`, `~t`
/// and `~g:` can never be an encoded key (escapes are uppercase). [`RedisTier::redis_key`]
/// gives a key's value key.
///
/// # Values
///
/// A value is stored as a small envelope: `"LC"`, a version byte, the entry's
/// `expires_at` (u64 ms), its [tags](cache_core::Tags) with their generations
/// when it has any (version 3), then the payload from the [`Codec`] (default
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
/// clock. With a test clock (not [`SystemClock`](cache_core::SystemClock)) the `PXAT` deadline is moved
/// by the clock's offset from the wall clock, so Redis keeps the entry as long
/// as the test clock says it lives.
///
/// # Commands
///
/// Every write and removal is one Lua script (sent as `EVALSHA`; on
/// `NOSCRIPT`, after a restart or a failover, as `EVAL`, which loads it again),
/// so a key and its generation always change together.
///
/// - `get`: `GET`; `get_many`: one `MGET` on a single node (one round trip), one
///   `MGET` per hash slot in one pipeline on a cluster.
/// - `get_stamped`: `GET`, and only on a miss `MGET <key gen> <scope gen>`.
///   `get_many_stamped`: `get_many`, then the misses' generations in one `MGET`
///   (single node) or one pipeline of one `MGET` per shard (cluster).
/// - `put_fenced`: one script: compare both generations with the stamp (a
///   moved scope generation is looked up in the scope's log), and only if
///   they hold `SET <key> <value> PXAT <expiry>`. `put_many_fenced`:
///   one pipeline of those.
/// - `remove`, `remove_stamped`: one script: bump the key generation (kept
///   for twice the fence horizon, `PX`), `DEL` the value.
/// - `put`: one script: bump the key generation, `SET .. PXAT`; `put_many`: a
///   pipeline of those. A `put` of an already-expired entry is a `remove`.
/// - `remove_prefix` and `clear`: first bump the scope generation and log the
///   prefix the bump covers (every shard's, pipelined, on a cluster), then `SCAN MATCH <ns>:<prefix>*` (on a
///   cluster `<ns>:{<ns>.*}:<prefix>*`, on every primary) and `UNLINK` the
///   values in batches. Generations stay. Never `FLUSHDB`/`FLUSHALL`.
///
/// # Fenced writes
///
/// The tier stamps ([`CacheLayer::get_stamped`]) and refuses stale fills, in
/// the manner of memcache leases. A **generation** is a number Redis keeps per
/// key and per scope (the namespace, or a cluster shard); a missing one is `0`.
/// Every removal and every `put` of a key bumps its key generation; every
/// `remove_prefix` and `clear` bumps the scope generation before it deletes
/// anything, and adds to the scope's **log** which prefix that bump covers
/// (`clear`: the empty prefix, which covers every key). A miss hands out a
/// [`Stamp`] of both generations, and `put_fenced` writes only if, in the same
/// script, the key generation is still the stamp's and no scope bump since
/// the stamp covers the key: a fill whose read came before a removal of its
/// key, its prefix or everything, on **any** instance, is refused
/// ([`Fill::Refused`]) and Redis is left as it was, while a `remove_prefix` of
/// other keys refuses nothing. The log keeps the last 1,024 bumps of each
/// scope that are younger than twice the fence horizon; a stamp older than
/// what it dropped is refused, as is one whose scope moved by a bump the log
/// does not hold. Because that check
/// and the write are one step in Redis, and a removal's bump and `DEL` are one
/// step too, `fenced_writes_are_atomic` is `true`: a removal is entirely
/// before a fill (refused) or entirely after it (removes what it wrote). The
/// fence's in-process check is evaluated just before the script is sent.
///
/// A new generation is `max(old + 1, Redis's clock in µs)`, so it never comes
/// back to an earlier value, even once its key has expired or the server has
/// restarted empty (as long as Redis's clock does not step back). A stamp of
/// [`Stamp::NONE`] in a chain's fence counts as generations `(0, 0)`: it is
/// refused once the key was removed within the last two horizons, or once
/// the scope was ever cleared or a prefix of the key removed, unless the log
/// still shows that bump. [`Fence::open`] compares nothing: its write is
/// unconditional.
///
/// **The fence horizon** (default [`DEFAULT_FENCE_HORIZON`], see
/// [`RedisTierBuilder::fence_horizon`]) bounds two things. Key generations
/// expire twice the horizon after their last bump, so a removed key costs one
/// small Redis key for that long, not for ever. And because a stamp taken
/// before a removal would match again once that removal's generation has
/// expired (a stamp of `0`, from a key never removed before), `put_fenced`
/// refuses, without asking Redis, any stamp older than the horizon on the
/// tier's clock: a fill may take at most the horizon from its read to its
/// write, or it is not cached. The second horizon is slack for the tier's
/// clock measuring less time than Redis's (a wall clock stepped back during a
/// fill). Scope generations never expire: one per namespace, or per shard,
/// each with its log of at most 1,024 bumps.
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
    /// Where values and generations live.
    layout: Layout,
    /// How old a stamp may be when its fill is written.
    horizon: Duration,
    /// Payloads longer than this are LZ4-compressed.
    #[cfg(feature = "compression")]
    compress_above: Option<usize>,
    corrupt: AtomicU64,
    /// Whether the pool was made here (and is closed when the tier is dropped).
    owned: bool,
    /// How many replicas a removal or write must reach.
    replication: Replication,
    /// Whether Redis is trusted now, and which primary it is.
    guard: Guard,
    /// How often the primary is looked at besides after connection events.
    check_every: Duration,
    /// The failover checker's tasks, stopped when the tier is dropped.
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Held while the primary is looked at: one look at a time.
    checking: tokio::sync::Mutex<()>,
}

impl<C> Drop for Inner<C> {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.get_mut() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
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
            .field("shards", &self.inner.layout.shards())
            .field("fence_horizon", &self.inner.horizon)
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

    /// Failovers seen so far, as a [`watch`] channel: the count ticks each
    /// time the tier found another primary and voided what Redis held.
    /// In-process tiers fed from this one should be flushed then
    /// ([`SyncedCache::flush_on_failover`](crate::SyncedCache::flush_on_failover)).
    ///
    /// ```no_run
    /// # async fn demo(tier: cache_server::RedisTier<String>) {
    /// let mut failovers = tier.failovers();
    /// while failovers.changed().await.is_ok() {
    ///     println!("Redis failed over ({} so far)", *failovers.borrow());
    /// }
    /// # }
    /// ```
    pub fn failovers(&self) -> watch::Receiver<u64> {
        self.inner.guard.failover_tx.subscribe()
    }

    /// Reads answered as misses, and fills refused, because Redis was not
    /// trusted at that moment (after a connection event, before the check).
    ///
    /// ```no_run
    /// # fn demo(tier: cache_server::RedisTier<String>) {
    /// println!("{} reads distrusted", tier.distrusted_reads());
    /// # }
    /// ```
    pub fn distrusted_reads(&self) -> u64 {
        self.inner
            .guard
            .distrusted
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many stored values could not be decoded (and were deleted) so far.
    pub fn corrupt_values(&self) -> u64 {
        self.inner.corrupt.load(Ordering::Relaxed)
    }

    /// The Redis key `key`'s value is stored under: `<namespace>:<encoded key>`
    /// on a single node, `<namespace>:{<namespace>.<shard>}:<encoded key>` on a
    /// cluster (see "Keys" in [`RedisTier`]).
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
        if self.inner.clustered {
            let mut encoded = String::with_capacity(s.len() + 8);
            key::encode_into(&s, &mut encoded);
            return Ok(self.inner.layout.sharded_value_key(&encoded));
        }
        let mut out = String::with_capacity(self.inner.namespace.len() + 1 + s.len());
        out.push_str(&self.inner.namespace);
        out.push(':');
        key::encode_into(&s, &mut out);
        Ok(out)
    }

    /// The value, generation and shard of `key`, validated.
    fn fence_keys<K: CacheKey>(&self, key: &K) -> Result<FenceKeys> {
        let s = key.key_str();
        key.validate()
            .map_err(|reason| Error::invalid_key(&s, reason))?;
        Ok(self.inner.layout.fence_keys(&s))
    }

    /// How long a stamp stays usable (see "Fenced writes" in [`RedisTier`]).
    pub fn fence_horizon(&self) -> Duration {
        self.inner.horizon
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
    /// Decodes one stored value read at `now`.
    async fn decode<V>(&self, rkey: &str, bytes: &[u8], now: Timestamp) -> Option<Entry<V>>
    where
        C: Codec<V>,
    {
        let opened = match open(bytes) {
            Ok(opened) => opened,
            Err(why) => {
                self.corrupt(rkey, why, Some(bytes)).await;
                return None;
            }
        };
        let expires_at = opened.expires_at;
        if now >= expires_at {
            return None;
        }
        #[cfg(feature = "compression")]
        let expanded;
        let payload = if opened.compressed {
            #[cfg(feature = "compression")]
            {
                let Some(bytes_out) = codec::decompress(opened.payload) else {
                    self.corrupt(rkey, Corrupt::Payload, Some(bytes)).await;
                    return None;
                };
                expanded = bytes_out;
                &expanded[..]
            }
            #[cfg(not(feature = "compression"))]
            {
                opened.payload
            }
        } else {
            opened.payload
        };
        match self.codec.decode(payload) {
            Ok(value) => {
                let mut entry = Entry::new(value, expires_at);
                entry.tags = opened.tags;
                Some(entry)
            }
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
        let start = write_header(entry.expires_at, &entry.tags, &mut buf).map_err(|reason| {
            Error::Encode {
                tier: self.name.to_string(),
                reason,
            }
        })?;
        self.codec
            .encode_into(&entry.value, &mut buf)
            .map_err(|e| Error::Encode {
                tier: self.name.to_string(),
                reason: e.to_string(),
            })?;
        #[cfg(feature = "compression")]
        if let Some(above) = self.compress_above {
            codec::compress(&mut buf, start, above);
        }
        #[cfg(not(feature = "compression"))]
        let _ = start;
        Ok(Bytes::from(buf))
    }

    /// Deletes every value key matching `pattern` (SCAN on every primary +
    /// UNLINK); generations stay.
    async fn unlink_matching(
        &self,
        pattern: String,
        operation: Operation,
        wait: Wait,
    ) -> Result<()> {
        let client = self.pool.next();
        let stream = if self.clustered {
            client
                .scan_cluster_buffered(pattern, Some(1000), None)
                .boxed()
        } else {
            client.scan_buffered(pattern, Some(1000), None).boxed()
        };
        let mut chunks = stream.chunks(UNLINK_BATCH);
        let mut slots: Vec<Option<u16>> = Vec::new();
        while let Some(chunk) = chunks.next().await {
            let mut keys = chunk
                .into_iter()
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| self.error(operation, e))?;
            keys.retain(|k| self.layout.is_value_key(&self.namespace, k.as_bytes()));
            if self.clustered {
                // UNLINK of several keys must stay within one hash slot.
                let groups =
                    fred::util::group_by_hash_slot(keys).map_err(|e| self.error(operation, e))?;
                let pipe = client.pipeline();
                for (slot, keys) in groups {
                    if !slots.contains(&Some(slot)) {
                        slots.push(Some(slot));
                    }
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
        // The values' removal must survive a failover as the scope bump does.
        match wait {
            Wait::ForReplicas => self.replicated(client, slots, operation).await,
            Wait::PrimaryOnly => Ok(()),
        }
    }
}

impl<V, C> RedisTier<V, C>
where
    V: Send + Sync + 'static,
    C: Codec<V>,
{
    /// `get`: one `GET`.
    async fn fetch<K: CacheKey>(&self, key: &K) -> Result<Option<Entry<V>>> {
        let inner = &*self.inner;
        let rkey = self.redis_key(key)?;
        let epoch = inner.trusted_epoch().await;
        let failovers = inner.guard.failover_count();
        let read = inner.pool.get::<Option<Bytes>, _>(rkey.as_str()).await;
        if !inner.answer_trusted(epoch, failovers).await {
            // Read while Redis was not trusted, or across a reconnect: it may
            // come from a primary that lost removals. A miss.
            return read
                .map(|_| None)
                .map_err(|e| inner.error(Operation::Get, e));
        }
        match read {
            Ok(None) => Ok(None),
            Ok(Some(bytes)) => Ok(inner.decode(&rkey, &bytes, inner.clock.now()).await),
            Err(err) if Inner::<C>::is_wrong_type(&err) => {
                inner.corrupt(&rkey, Corrupt::WrongType, None).await;
                Ok(None)
            }
            Err(err) => Err(inner.error(Operation::Get, err)),
        }
    }

    /// `get_many`: one `MGET` (single node), one pipeline of one `MGET` per
    /// hash slot (cluster).
    async fn fetch_many<K: CacheKey>(&self, keys: &[K]) -> Result<Vec<Option<Entry<V>>>> {
        let inner = &*self.inner;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rkeys = keys
            .iter()
            .map(|k| self.redis_key(k))
            .collect::<Result<Vec<_>>>()?;
        let epoch = inner.trusted_epoch().await;
        let failovers = inner.guard.failover_count();
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
        if !inner.answer_trusted(epoch, failovers).await {
            return Ok(rkeys.iter().map(|_| None).collect());
        }
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

    /// `remove_stamped`: one script bumps the key generation and deletes.
    async fn remove_key<K: CacheKey>(&self, key: &K) -> Result<(bool, Stamp)> {
        let inner = &*self.inner;
        let keys = self.fence_keys(key)?;
        let call = inner.remove_call(keys);
        let client = inner.pool.next();
        let slot = call.slot();
        let reply: Vec<Value> = Inner::<C>::eval_on(client, call.script, call.keys, call.args)
            .await
            .map_err(|e| inner.error(Operation::Remove, e))?;
        inner
            .replicated(client, vec![slot], Operation::Remove)
            .await?;
        let now = inner.clock.now();
        match reply.as_slice() {
            [removed, generation, scope] => Ok((
                generation_of(removed) > 0,
                Stamp::new(generation_of(generation), generation_of(scope), now),
            )),
            other => Err(Error::backend(
                inner.name.to_string(),
                Operation::Remove,
                format!("unexpected reply from the removal script: {other:?}"),
            )),
        }
    }

    /// Bumps every scope generation, logging that `prefix` is covered, then
    /// deletes the values matching it.
    async fn remove_matching(&self, prefix: &str, operation: Operation) -> Result<()> {
        let inner = &*self.inner;
        inner
            .bump_scopes(prefix, operation, Wait::ForReplicas)
            .await?;
        let pattern = inner.layout.pattern(&inner.namespace, prefix);
        inner
            .unlink_matching(pattern, operation, Wait::ForReplicas)
            .await
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
        self.fetch(key).await
    }

    async fn get_many(&self, keys: &[K]) -> Result<Vec<Option<Entry<V>>>> {
        self.fetch_many(keys).await
    }

    async fn get_stamped(&self, key: &K) -> Result<(Option<Entry<V>>, Stamp)> {
        if let Some(hit) = self.fetch(key).await? {
            return Ok((Some(hit), Stamp::NONE));
        }
        let keys = self.fence_keys(key)?;
        let stamps = self
            .inner
            .stamps(std::slice::from_ref(&keys), Operation::Get)
            .await?;
        Ok((None, stamps.first().copied().unwrap_or(Stamp::NONE)))
    }

    async fn stamp(&self, key: &K) -> Result<Stamp> {
        let keys = self.fence_keys(key)?;
        let stamps = self
            .inner
            .stamps(std::slice::from_ref(&keys), Operation::Get)
            .await?;
        Ok(stamps.first().copied().unwrap_or(Stamp::NONE))
    }

    async fn get_many_stamped(&self, keys: &[K]) -> Result<Vec<(Option<Entry<V>>, Stamp)>> {
        let values = self.fetch_many(keys).await?;
        let misses: Vec<usize> = (0..values.len()).filter(|&i| values[i].is_none()).collect();
        let mut stamps = vec![Stamp::NONE; values.len()];
        if !misses.is_empty() {
            let fence_keys = misses
                .iter()
                .map(|&i| self.fence_keys(&keys[i]))
                .collect::<Result<Vec<_>>>()?;
            let taken = self.inner.stamps(&fence_keys, Operation::GetMany).await?;
            for (i, stamp) in misses.into_iter().zip(taken) {
                stamps[i] = stamp;
            }
        }
        Ok(values.into_iter().zip(stamps).collect())
    }

    async fn put(&self, key: &K, entry: Entry<V>) -> Result<()> {
        let inner = &*self.inner;
        let keys = self.fence_keys(key)?;
        let call = inner.write_call(keys, entry, inner.clock.now())?;
        let client = inner.pool.next();
        let slot = call.slot();
        Inner::<C>::eval_on::<Value>(client, call.script, call.keys, call.args)
            .await
            .map_err(|e| inner.error(Operation::Put, e))?;
        inner.replicated(client, vec![slot], Operation::Put).await
    }

    async fn put_many(&self, entries: Vec<(K, Entry<V>)>) -> Result<()> {
        let inner = &*self.inner;
        let now = inner.clock.now();
        let calls = entries
            .into_iter()
            .map(|(key, entry)| inner.write_call(self.fence_keys(&key)?, entry, now))
            .collect::<Result<Vec<_>>>()?;
        let client = inner.pool.next();
        let slots: Vec<Option<u16>> = calls.iter().map(ScriptCall::slot).collect();
        for result in inner.eval_all(client, calls).await {
            result.map_err(|e| inner.error(Operation::PutMany, e))?;
        }
        inner.replicated(client, slots, Operation::PutMany).await
    }

    async fn put_fenced(&self, key: &K, entry: Entry<V>, fence: &Fence<'_>) -> Result<Fill> {
        let inner = &*self.inner;
        let keys = self.fence_keys(key)?;
        // While Redis is not trusted (a reconnect not yet checked, a
        // failover being voided), nothing is filled.
        if inner.guard.begin().is_none() {
            return Ok(Fill::Refused);
        }
        let Some(call) = inner.fill_call(keys, entry, fence, inner.clock.now())? else {
            return Ok(Fill::Refused);
        };
        let written: i64 = inner
            .eval(call.script, call.keys, call.args)
            .await
            .map_err(|e| inner.error(Operation::Put, e))?;
        Ok(if written == 1 {
            Fill::Written
        } else {
            Fill::Refused
        })
    }

    async fn put_many_fenced(
        &self,
        entries: Vec<(K, Entry<V>)>,
        fences: &[Fence<'_>],
    ) -> Result<Vec<Fill>> {
        let inner = &*self.inner;
        let now = inner.clock.now();
        let mut out = vec![Fill::Refused; entries.len()];
        if inner.guard.begin().is_none() {
            return Ok(out);
        }
        let mut sent = Vec::new();
        let mut calls = Vec::new();
        for (i, (key, entry)) in entries.into_iter().enumerate() {
            let keys = self.fence_keys(&key)?;
            // An entry without a fence is refused.
            let Some(fence) = fences.get(i) else { continue };
            if let Some(call) = inner.fill_call(keys, entry, fence, now)? {
                sent.push(i);
                calls.push(call);
            }
        }
        let client = inner.pool.next();
        for (i, result) in sent.into_iter().zip(inner.eval_all(client, calls).await) {
            let written = result
                .and_then(|v| v.convert::<i64>())
                .map_err(|e| inner.error(Operation::PutMany, e))?;
            if written == 1 {
                out[i] = Fill::Written;
            }
        }
        Ok(out)
    }

    fn fenced_writes_are_atomic(&self) -> bool {
        true
    }

    async fn remove(&self, key: &K) -> Result<bool> {
        Ok(self.remove_key(key).await?.0)
    }

    async fn remove_stamped(&self, key: &K) -> Result<(bool, Stamp)> {
        self.remove_key(key).await
    }

    async fn remove_prefix(&self, prefix: &str) -> Result<()> {
        // The encoding preserves prefixes and has no glob characters.
        self.remove_matching(prefix, Operation::RemovePrefix).await
    }

    async fn clear(&self) -> Result<()> {
        self.remove_matching("", Operation::Clear).await
    }
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
