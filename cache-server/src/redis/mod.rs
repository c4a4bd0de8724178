//! [`RedisTier`]: the shared tier, on one Redis or a Redis Cluster, through fred.

mod codec;
mod failover;
mod layout;
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
    Stamp, SystemClock, Timestamp,
};
use fred::clients::Client;
use fred::error::ErrorKind;
use fred::interfaces::EventInterface;
use fred::prelude::{
    Builder, ClientLike, Config, Key, KeysInterface, LuaInterface, Pool, ReconnectPolicy, Value,
};
use fred::types::{CustomCommand, FromValue};
use futures_util::StreamExt;
use tokio::sync::watch;

use codec::{open, write_header, Corrupt, HEADER_LEN};
use layout::{FenceKeys, Layout};
use scripts::{is_noscript, Script};

pub(crate) use codec::ENVELOPE_FAMILY;
pub use codec::{Codec, MsgPackCodec};
pub use failover::Replication;
use failover::{Guard, Seen};
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
///
/// On a cluster, `<shard>` is the 64-bit FNV-1a hash of `<enc>` modulo the
/// number of shards ([`DEFAULT_CLUSTER_SHARDS`], see
/// [`RedisTierBuilder::cluster_shards`]): the hash tag keeps a value and its
/// two generations in one hash slot, so one script can touch all three, while
/// the shards spread the namespace over every primary. Every instance that
/// shares a namespace must use the same number of shards. `~a` and `~g:` can
/// never be an encoded key (escapes are uppercase). [`RedisTier::redis_key`]
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
/// clock. With a test clock (not [`SystemClock`]) the `PXAT` deadline is moved
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
/// - `put_fenced`: one script: compare both generations with the stamp, and
///   only if they match `SET <key> <value> PXAT <expiry>`. `put_many_fenced`:
///   one pipeline of those.
/// - `remove`, `remove_stamped`: one script: bump the key generation (kept
///   for twice the fence horizon, `PX`), `DEL` the value.
/// - `put`: one script: bump the key generation, `SET .. PXAT`; `put_many`: a
///   pipeline of those. A `put` of an already-expired entry is a `remove`.
/// - `remove_prefix` and `clear`: first bump the scope generation (every
///   shard's, pipelined, on a cluster), then `SCAN MATCH <ns>:<prefix>*` (on a
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
/// anything. A miss hands out a [`Stamp`] of both generations, and
/// `put_fenced` writes only if, in the same script, both are still what the
/// stamp says: a fill whose read came before a removal on **any** instance is
/// refused ([`Fill::Refused`]) and Redis is left as it was. Because that check
/// and the write are one step in Redis, and a removal's bump and `DEL` are one
/// step too, `fenced_writes_are_atomic` is `true`: a removal is entirely
/// before a fill (refused) or entirely after it (removes what it wrote). The
/// fence's in-process check is evaluated just before the script is sent.
///
/// A new generation is `max(old + 1, Redis's clock in µs)`, so it never comes
/// back to an earlier value, even once its key has expired or the server has
/// restarted empty (as long as Redis's clock does not step back). A stamp of
/// [`Stamp::NONE`] counts as generations `(0, 0)`: it is refused once the key
/// was removed within the last two horizons, or once the scope was ever
/// cleared.
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
/// fill). Scope generations never expire: one per namespace, or per shard.
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
            // Redis's own time base is the real wall clock: read it precisely
            // here (`SystemClock` rounds up by up to 20 ms for expiry checks).
            let wall = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
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
                self.eval::<i64>(
                    &scripts::DELETE_IF_UNCHANGED,
                    vec![Key::from(rkey)],
                    vec![Value::Bytes(Bytes::copy_from_slice(bytes))],
                )
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

    /// Runs one script: `EVALSHA`, or `EVAL` (which caches it again) if the
    /// server does not have it.
    async fn eval<R: FromValue>(
        &self,
        script: &Script,
        keys: Vec<Key>,
        args: Vec<Value>,
    ) -> std::result::Result<R, fred::error::Error> {
        Self::eval_on(self.pool.next(), script, keys, args).await
    }

    /// [`Inner::eval`] on `client`.
    async fn eval_on<R: FromValue>(
        client: &Client,
        script: &Script,
        keys: Vec<Key>,
        args: Vec<Value>,
    ) -> std::result::Result<R, fred::error::Error> {
        match client
            .evalsha::<R, _, _, _>(script.sha.clone(), keys.clone(), args.clone())
            .await
        {
            Err(err) if is_noscript(&err) => client.eval(script.body, keys, args).await,
            result => result,
        }
    }

    /// Runs script calls in one pipeline (fred sends each to its key's node);
    /// the calls a server answered `NOSCRIPT` go again as `EVAL`, in a second
    /// pipeline. One result per call, in order.
    async fn eval_all(
        &self,
        client: &Client,
        calls: Vec<ScriptCall>,
    ) -> Vec<std::result::Result<Value, fred::error::Error>> {
        if calls.is_empty() {
            return Vec::new();
        }
        // fred's pipelines have no Lua methods: the calls go as custom
        // commands, each routed by the hash slot of its first key.
        let pipe = client.pipeline();
        for call in &calls {
            let (command, args) = call.command(false);
            let queued: std::result::Result<(), _> = pipe.custom(command, args).await;
            if let Err(err) = queued {
                return vec![Err(err); calls.len()];
            }
        }
        let mut results = pipe.try_all::<Value>().await;
        let again: Vec<usize> = (0..results.len())
            .filter(|&i| matches!(&results[i], Err(e) if is_noscript(e)))
            .collect();
        if !again.is_empty() {
            let pipe = client.pipeline();
            for &i in &again {
                let (command, args) = calls[i].command(true);
                let queued: std::result::Result<(), _> = pipe.custom(command, args).await;
                if let Err(err) = queued {
                    results[i] = Err(err);
                }
            }
            for (i, result) in again.into_iter().zip(pipe.try_all::<Value>().await) {
                results[i] = result;
            }
        }
        results
    }

    /// How long a key generation is kept after its last bump, as a `PX`
    /// argument: twice the horizon (see "Fenced writes" in [`RedisTier`]).
    fn generation_ttl_ms(&self) -> Value {
        let ms = self.horizon.saturating_mul(2).as_millis().max(1);
        Value::Integer(i64::try_from(ms).unwrap_or(i64::MAX))
    }

    /// Whether `stamp` is young enough to be presented (a stamp older than
    /// the horizon may predate a removal whose generation has expired).
    fn stamp_is_fresh(&self, stamp: Stamp, now: Timestamp) -> bool {
        stamp
            .taken_at()
            .is_none_or(|at| now.duration_since(at) <= self.horizon)
    }

    /// The stamps of `keys` (read as misses) at `now`: one `MGET` of their
    /// generations and the scope's on a single node, one pipeline of one `MGET`
    /// per shard on a cluster.
    async fn stamps(&self, keys: &[FenceKeys], operation: Operation) -> Result<Vec<Stamp>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let err = |e| self.error(operation, e);
        let now = self.clock.now();
        let mut by_shard: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, k) in keys.iter().enumerate() {
            by_shard.entry(k.shard).or_default().push(i);
        }
        let mut out = vec![Stamp::NONE; keys.len()];
        let groups: Vec<Vec<Option<Bytes>>> = if by_shard.len() == 1 || !self.clustered {
            // Single node (one scope), or every key in one shard: one MGET.
            let shard = keys[0].shard;
            let mut names: Vec<&str> = keys.iter().map(|k| k.generation.as_str()).collect();
            names.push(self.layout.scope(shard));
            let gens: Vec<Option<Bytes>> = self.pool.mget(names).await.map_err(err)?;
            by_shard = BTreeMap::from([(shard, (0..keys.len()).collect())]);
            vec![gens]
        } else {
            let pipe = self.pool.next().pipeline();
            for (&shard, idx) in &by_shard {
                let mut names: Vec<&str> =
                    idx.iter().map(|&i| keys[i].generation.as_str()).collect();
                names.push(self.layout.scope(shard));
                let _: () = pipe.mget(names).await.map_err(err)?;
            }
            let groups = pipe.try_all::<Vec<Option<Bytes>>>().await;
            groups
                .into_iter()
                .collect::<std::result::Result<_, _>>()
                .map_err(err)?
        };
        for (idx, mut gens) in by_shard.values().zip(groups) {
            let scope = parse_generation(gens.pop().flatten().as_deref());
            for (&i, g) in idx.iter().zip(gens) {
                out[i] = Stamp::new(parse_generation(g.as_deref()), scope, now);
            }
        }
        Ok(out)
    }

    /// Bumps the scope generation of every shard (one script on a single node,
    /// one pipeline of them on a cluster), so every fill stamped before is
    /// refused; `remove_prefix` and `clear` do this before they delete.
    async fn bump_scopes(&self, operation: Operation) -> Result<()> {
        let calls = self
            .layout
            .scopes()
            .iter()
            .map(|scope| ScriptCall {
                script: &scripts::BUMP_SCOPE,
                keys: vec![Key::from(scope.as_str())],
                args: Vec::new(),
            })
            .collect::<Vec<_>>();
        let client = self.pool.next();
        let slots: Vec<Option<u16>> = calls.iter().map(ScriptCall::slot).collect();
        for result in self.eval_all(client, calls).await {
            result.map_err(|e| self.error(operation, e))?;
        }
        self.replicated(client, slots, operation).await
    }

    /// Waits until the configured number of replicas have every write made on
    /// `client` so far (one `WAIT` per node of `slots` on a cluster).
    async fn replicated(
        &self,
        client: &Client,
        slots: Vec<Option<u16>>,
        operation: Operation,
    ) -> Result<()> {
        if self.replication.replicas() == 0 {
            return Ok(());
        }
        let mut targets: Vec<Option<u16>> = Vec::new();
        if self.clustered {
            let routing = fred::interfaces::ClusterInterface::cached_cluster_state(client);
            let mut servers = Vec::new();
            for slot in slots.into_iter().flatten() {
                let server = routing.as_ref().and_then(|r| r.get_server(slot)).cloned();
                if !servers.contains(&server) {
                    servers.push(server);
                    targets.push(Some(slot));
                }
            }
        } else {
            targets.push(None);
        }
        for slot in targets {
            self.replication
                .wait(client, slot)
                .await
                .map_err(|e| match e {
                    failover::ReplicationError::Redis(e) => self.error(operation, e),
                    short => Error::backend(self.name.to_string(), operation, short),
                })?;
        }
        Ok(())
    }

    /// The script call that removes `keys`' value and bumps its generation.
    fn remove_call(&self, keys: FenceKeys) -> ScriptCall {
        ScriptCall {
            script: &scripts::REMOVE,
            keys: vec![
                Key::from(keys.value),
                Key::from(keys.generation),
                Key::from(self.layout.scope(keys.shard)),
            ],
            args: vec![self.generation_ttl_ms()],
        }
    }

    /// The script call for an unconditional `put`: bump the generation, then
    /// write (or remove, if the entry has already expired).
    fn write_call<V>(&self, keys: FenceKeys, entry: Entry<V>, now: Timestamp) -> Result<ScriptCall>
    where
        C: Codec<V>,
    {
        let entry = entry.capped_by_ttl(now, self.ttl);
        if entry.is_expired(now) {
            return Ok(self.remove_call(keys));
        }
        Ok(ScriptCall {
            script: &scripts::WRITE,
            keys: vec![Key::from(keys.value), Key::from(keys.generation)],
            args: vec![
                self.generation_ttl_ms(),
                Value::Integer(self.pxat(entry.expires_at, now)),
                Value::Bytes(self.envelope(&entry)?),
            ],
        })
    }

    /// The script call for a fenced fill, or `None` if it is refused without
    /// asking Redis (the fence's check fails, or the stamp is past the horizon).
    fn fill_call<V>(
        &self,
        keys: FenceKeys,
        entry: Entry<V>,
        fence: &Fence<'_>,
        now: Timestamp,
    ) -> Result<Option<ScriptCall>>
    where
        C: Codec<V>,
    {
        let stamp = fence.stamp();
        if !self.stamp_is_fresh(stamp, now) {
            return Ok(None);
        }
        let entry = entry.capped_by_ttl(now, self.ttl);
        let (at, value) = if entry.is_expired(now) {
            // Written means "removed" for an entry that has already expired.
            (Value::from(""), Value::from(""))
        } else {
            let value = self.envelope(&entry)?;
            (
                Value::Integer(self.pxat(entry.expires_at, now)),
                Value::Bytes(value),
            )
        };
        // The in-process check, as late as possible: the stamp covers what
        // happens between here and the script.
        if !fence.holds() {
            return Ok(None);
        }
        Ok(Some(ScriptCall {
            script: scripts::fill(),
            keys: vec![
                Key::from(keys.value),
                Key::from(keys.generation),
                Key::from(self.layout.scope(keys.shard)),
            ],
            args: vec![
                Value::from(stamp.key_generation().to_string()),
                Value::from(stamp.scope_generation().to_string()),
                at,
                value,
            ],
        }))
    }
}

/// One script call: the script, its `KEYS` and its `ARGV`.
struct ScriptCall {
    script: &'static Script,
    keys: Vec<Key>,
    args: Vec<Value>,
}

impl ScriptCall {
    /// The hash slot of its first key.
    fn slot(&self) -> Option<u16> {
        self.keys.first().map(Key::cluster_hash)
    }

    /// The call as a raw `EVALSHA` (or `EVAL`) command for a pipeline,
    /// routed to the hash slot of its first key.
    fn command(&self, eval: bool) -> (CustomCommand, Vec<Value>) {
        let slot = self.keys.first().map(Key::cluster_hash);
        let (name, script) = if eval {
            ("EVAL", Value::from(self.script.body))
        } else {
            ("EVALSHA", Value::String(self.script.sha.clone()))
        };
        let mut args = Vec::with_capacity(2 + self.keys.len() + self.args.len());
        args.push(script);
        args.push(Value::Integer(self.keys.len() as i64));
        args.extend(self.keys.iter().map(|k| Value::Bytes(k.inner().clone())));
        args.extend(self.args.iter().cloned());
        (CustomCommand::new_static(name, slot, false), args)
    }
}

impl<V, C> RedisTier<V, C>
where
    V: Send + Sync + 'static,
    C: Codec<V>,
{
    /// Starts watching which primary the pool talks to: every connection
    /// error or reconnect distrusts Redis at once and wakes the checker,
    /// which also looks every [`RedisTierBuilder::failover_check`]. Unless
    /// `lazy`, the first look happens here, so the tier starts trusted.
    async fn watch_primary(&self, lazy: bool) {
        let inner = &self.inner;
        if !inner.guard.enabled() {
            return;
        }
        let mut tasks = Vec::new();
        for client in inner.pool.clients() {
            let mut rx = client.error_rx();
            let weak = Arc::downgrade(inner);
            tasks.push(tokio::spawn(async move {
                loop {
                    let event = rx.recv().await;
                    let Some(inner) = weak.upgrade() else { return };
                    match event {
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            inner.guard.distrust();
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            }));
            let mut rx = client.reconnect_rx();
            let weak = Arc::downgrade(inner);
            tasks.push(tokio::spawn(async move {
                while rx.recv().await.is_ok() {
                    let Some(inner) = weak.upgrade() else { return };
                    inner.guard.distrust();
                }
            }));
        }
        if !lazy {
            inner.check_primary().await;
        }
        let weak = Arc::downgrade(inner);
        tasks.push(tokio::spawn(async move {
            let mut soon = false;
            loop {
                let (every, wake) = {
                    let Some(inner) = weak.upgrade() else { return };
                    (inner.check_every, inner.clone())
                };
                let wait = if soon {
                    Duration::from_millis(20)
                } else {
                    every
                };
                tokio::select! {
                    () = wake.guard.wake.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                }
                drop(wake);
                let Some(inner) = weak.upgrade() else { return };
                soon = !inner.check_primary().await;
            }
        }));
        if let Ok(mut t) = inner.tasks.lock() {
            t.extend(tasks);
        }
    }
}

impl<C> Inner<C> {
    /// One look at the primary; `false` if it must be looked at again soon
    /// (unreachable, not yet a primary, or a void that failed).
    async fn check_primary(&self) -> bool {
        let _one = self.checking.lock().await;
        let seen = match failover::look(self.pool.clients(), self.clustered).await {
            failover::Look::Primary(id) => Some(id),
            failover::Look::Unsure => None,
            failover::Look::Denied(why) => {
                tracing::warn!(
                    tier = %self.name,
                    reason = %why,
                    "the failover check needs INFO (CLUSTER INFO on a cluster), which this Redis user may not run: it is off for this tier"
                );
                self.guard.give_up();
                self.load_scripts().await;
                return true;
            }
        };
        match self.guard.saw(seen) {
            Seen::Same => {
                self.load_scripts().await;
                true
            }
            Seen::Unsure => false,
            Seen::Failover => {
                tracing::warn!(
                    tier = %self.name,
                    namespace = %self.namespace,
                    "Redis failed over to another primary: voiding what it holds (a removal may have been lost)"
                );
                self.load_scripts().await;
                let voided = match self.bump_scopes(Operation::Clear).await {
                    Ok(()) => {
                        let pattern = self.layout.pattern(&self.namespace, "");
                        self.unlink_matching(pattern, Operation::Clear).await
                    }
                    Err(e) => Err(e),
                };
                match voided {
                    Ok(()) => {
                        self.guard.voided();
                        tracing::warn!(tier = %self.name, "voided after the failover; trusted again");
                        true
                    }
                    Err(err) => {
                        tracing::warn!(tier = %self.name, error = %err, "voiding after a failover failed; retrying");
                        // Look again: the next look sees the same new
                        // primary, so keep it distrusted until voided.
                        self.guard.forget_primary();
                        false
                    }
                }
            }
        }
    }

    /// The epoch a read starts under, or `None` when Redis is not trusted:
    /// a read that finds it distrusted looks at the primary itself first
    /// (one look at a time), so a tier that just connected, or whose
    /// connection was just replaced, answers at once when nothing changed.
    async fn trusted_epoch(&self) -> Option<u64> {
        if let Some(epoch) = self.guard.begin() {
            return Some(epoch);
        }
        // A look already under way: wait for it, at most one command
        // timeout (Redis may be down), then look again if still untrusted.
        match tokio::time::timeout(self.command_timeout, self.checking.lock()).await {
            Ok(looked) => drop(looked),
            Err(_) => return None,
        }
        if let Some(epoch) = self.guard.begin() {
            return Some(epoch);
        }
        self.check_primary().await;
        self.guard.begin()
    }

    /// Loads every script into every connection's server, so the first
    /// pipelined fills after a start or a failover do not meet `NOSCRIPT`.
    async fn load_scripts(&self) {
        let bodies = [
            scripts::FILL.body,
            scripts::REMOVE.body,
            scripts::WRITE.body,
            scripts::BUMP_SCOPE.body,
            scripts::DELETE_IF_UNCHANGED.body,
        ];
        for client in self.pool.clients() {
            for body in bodies {
                let loaded: std::result::Result<Value, _> = if self.clustered {
                    client.script_load_cluster(body).await
                } else {
                    client.script_load(body).await
                };
                if let Err(err) = loaded {
                    tracing::debug!(tier = %self.name, error = %err, "loading a script failed");
                }
            }
        }
    }
}

/// A generation as Redis holds it (a decimal string; missing is `0`). Anything
/// else becomes `u64::MAX`, which no stored generation matches, so a fill
/// stamped with it is refused until a removal writes a good one.
fn parse_generation(raw: Option<&[u8]>) -> u64 {
    match raw {
        None => 0,
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX),
    }
}

/// A generation in a script's reply (an integer or a decimal string).
fn generation_of(value: &Value) -> u64 {
    match value {
        Value::Integer(i) => u64::try_from(*i).unwrap_or(u64::MAX),
        Value::String(s) => parse_generation(Some(s.as_bytes())),
        Value::Bytes(b) => parse_generation(Some(b)),
        Value::Null => 0,
        _ => u64::MAX,
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
        self.replicated(client, slots, operation).await
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
        let read = inner.pool.get::<Option<Bytes>, _>(rkey.as_str()).await;
        if !inner.guard.still(epoch) {
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
        if !inner.guard.still(epoch) {
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

    /// Bumps every scope generation, then deletes the values matching
    /// `pattern`.
    async fn remove_matching(&self, prefix: &str, operation: Operation) -> Result<()> {
        let inner = &*self.inner;
        inner.bump_scopes(operation).await?;
        let pattern = inner.layout.pattern(&inner.namespace, prefix);
        inner.unlink_matching(pattern, operation).await
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
    horizon: Duration,
    shards: u16,
    #[cfg(feature = "compression")]
    compress_above: Option<usize>,
    /// Extra CA certificates (PEM) to trust.
    #[cfg(feature = "tls")]
    tls_ca: Vec<Vec<u8>>,
    replication: Replication,
    check_every: Option<Duration>,
    _value: PhantomData<fn() -> V>,
}

impl<V, C: fmt::Debug> fmt::Debug for RedisTierBuilder<V, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No URL or config: they may hold credentials.
        let mut d = f.debug_struct("RedisTierBuilder");
        d.field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("ttl", &self.ttl)
            .field("codec", &self.codec)
            .field("command_timeout", &self.command_timeout)
            .field("pool_size", &self.pool_size)
            .field("fence_horizon", &self.horizon)
            .field("cluster_shards", &self.shards)
            .field("replication", &self.replication)
            .field("failover_check", &self.check_every);
        #[cfg(feature = "tls")]
        d.field("tls_ca_pems", &self.tls_ca.len());
        d.finish_non_exhaustive()
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
            horizon: DEFAULT_FENCE_HORIZON,
            #[cfg(feature = "compression")]
            compress_above: None,
            #[cfg(feature = "tls")]
            tls_ca: Vec::new(),
            shards: DEFAULT_CLUSTER_SHARDS,
            replication: Replication::NONE,
            check_every: Some(DEFAULT_FAILOVER_CHECK),
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
    /// With the `tls` feature, `rediss://` and `rediss-cluster://` connect
    /// over TLS (server certificates checked against the system's roots, plus
    /// any [`tls_ca_pem`](Self::tls_ca_pem)). `user` is an ACL user; without
    /// it the password is the `default` user's (`requirepass`).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.connection = Connection::Url(url.into());
        self
    }

    /// A full fred [`Config`] (sentinel, RESP3, a TLS connector of your own
    /// in `config.tls` with the `tls` feature...). [`tls_ca_pem`](Self::tls_ca_pem)
    /// replaces the connector of a TLS config.
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
            horizon: self.horizon,
            shards: self.shards,
            #[cfg(feature = "compression")]
            compress_above: self.compress_above,
            #[cfg(feature = "tls")]
            tls_ca: self.tls_ca,
            replication: self.replication,
            check_every: self.check_every,
            _value: PhantomData,
        }
    }

    /// How many replicas every removal, write-through and `clear` must reach
    /// before it counts as done (default [`Replication::NONE`]). With Redis
    /// behind Sentinel or a cluster with replicas, use at least
    /// `Replication::new(1, ..)`: replication is asynchronous, and without
    /// it a failover can bring back a value whose removal returned `Ok`. A
    /// write that reaches fewer replicas in time returns an error naming the
    /// tier (the chain reports [`Error::Incomplete`]); the write itself
    /// stays on the primary. Costs one `WAIT` round trip per write (fills
    /// and reads do not wait).
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = cache_server::RedisTier::<String>::builder()
    ///     .replication(cache_server::Replication::new(1, Duration::from_millis(200)));
    /// # let _ = b;
    /// ```
    pub fn replication(mut self, replication: Replication) -> Self {
        self.replication = replication;
        self
    }

    /// Whether and how often the tier checks which primary it talks to
    /// (default every [`DEFAULT_FAILOVER_CHECK`], and after every connection
    /// error or reconnect; `None` switches it off). While a check is due
    /// after a connection event, reads are misses and fills are refused. A
    /// check that finds another primary (its replication id, or a cluster's
    /// current epoch, changed) is a failover: the tier voids what Redis held
    /// (bumps the scope generations and unlinks the namespace's values) and
    /// ticks [`RedisTier::failovers`]. The check runs `INFO replication`
    /// (`CLUSTER INFO` on a cluster): an ACL user that may not run it gets a
    /// warning and no check (grant `+info`, or `+cluster|info`).
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = cache_server::RedisTier::<String>::builder().failover_check(Some(Duration::from_millis(500)));
    /// # let _ = b;
    /// ```
    pub fn failover_check(mut self, every: Option<Duration>) -> Self {
        self.check_every = every.map(|d| d.max(Duration::from_millis(10)));
        self
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

    /// How long a stamp stays usable (default [`DEFAULT_FENCE_HORIZON`]): a
    /// fill whose stamp is older is refused, and key generations are kept for
    /// twice this long after a removal. Make it longer than the slowest fill
    /// (read, origin load, write) you want to land. See "Fenced writes" in
    /// [`RedisTier`].
    pub fn fence_horizon(mut self, horizon: Duration) -> Self {
        self.horizon = horizon.max(Duration::from_millis(1));
        self
    }

    /// On a Redis Cluster, how many hash-tagged shards the namespace is spread
    /// over (default [`DEFAULT_CLUSTER_SHARDS`]; at least 1). Each shard is one
    /// hash slot and has its own scope generation, so `clear` and
    /// `remove_prefix` bump that many keys. Every instance sharing the
    /// namespace must use the same value; changing it moves every key. Not
    /// used on a single node.
    pub fn cluster_shards(mut self, shards: u16) -> Self {
        self.shards = shards.max(1);
        self
    }

    /// Compresses (LZ4) every stored payload longer than `bytes`, when that makes
    /// it smaller; such values are flagged in their envelope (version 2) and
    /// expanded on read. Feature `compression`. Every instance sharing the
    /// namespace must be built with the feature (one without it reports such
    /// values as corrupt and deletes them); instances may use different
    /// thresholds. A stored value that claims to expand past 128 MiB is
    /// treated as corrupt.
    ///
    /// ```no_run
    /// # async fn demo() -> cache_core::Result<()> {
    /// use cache_server::RedisTier;
    /// let tier = RedisTier::<Vec<u8>>::builder()
    ///     .url("redis://127.0.0.1:6379")
    ///     .namespace("thumbnails")
    ///     .compress_above(4 * 1024)
    ///     .build()
    ///     .await?;
    /// # let _ = tier; Ok(()) }
    /// ```
    #[cfg(feature = "compression")]
    pub fn compress_above(mut self, bytes: usize) -> Self {
        self.compress_above = Some(bytes);
        self
    }

    /// Also trusts the CA certificate(s) in `pem` (one or more `-----BEGIN
    /// CERTIFICATE-----` blocks) for a `rediss://` server, on top of the
    /// system's roots: for a managed Redis or a server whose certificate comes
    /// from a private CA. May be called more than once. Feature `tls`.
    ///
    /// The server's certificate must name the host of the URL (a DNS name, or
    /// an IP address SAN for `rediss://127.0.0.1`). `build` fails if a PEM
    /// holds no certificate, if the URL or config is not TLS, or with
    /// [`pool`](Self::pool) (whose connections are already made).
    ///
    /// ```
    /// use cache_core::CacheLayer;
    /// use cache_server::RedisTier;
    /// # // A throwaway redis-server with TLS, its own CA and an ACL user.
    /// # let server = cache_server::testing::tls::TlsRedisServer::start("avatars", &[]);
    /// # let (url, ca_pem) = (server.url(), server.ca_pem().to_owned());
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// // url: "rediss://app:<password>@127.0.0.1:<port>"
    /// // ca_pem: the private CA's certificate, e.g. std::fs::read("ca.pem")?
    /// let tier: RedisTier<String> = RedisTier::builder()
    ///     .url(url)
    ///     .tls_ca_pem(ca_pem)
    ///     .namespace("avatars")
    ///     .build()
    ///     .await?;
    /// assert_eq!(tier.get(&"user:42".to_string()).await?, None);
    /// # Ok::<_, cache_core::Error>(()) }).unwrap();
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls_ca_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.tls_ca.push(pem.as_ref().to_vec());
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
            reason: format!("{what}: {}", describe_connect_error(&e)),
        };
        let owned = !matches!(self.connection, Connection::Pool(_));
        #[cfg(feature = "tls")]
        if matches!(self.connection, Connection::Pool(_)) && !self.tls_ca.is_empty() {
            return Err(Error::Unavailable {
                tier: self.name.to_string(),
                reason: "tls_ca_pem cannot apply to a given pool: its connections are already \
                         configured"
                    .into(),
            });
        }
        let pool = match self.connection {
            Connection::Pool(pool) => pool,
            Connection::Url(ref url) => {
                let config = Config::from_url(url).map_err(|e| unavailable("bad Redis URL", e))?;
                self.connect(self.with_tls(config)?)
                    .await
                    .map_err(|e| unavailable("cannot connect", e))?
            }
            Connection::Config(ref config) => self
                .connect(self.with_tls((**config).clone())?)
                .await
                .map_err(|e| unavailable("cannot connect", e))?,
        };
        let clustered = pool.next().is_clustered();
        let layout = Layout::new(&self.namespace, clustered.then_some(self.shards));
        let system_clock = self.clock.is_none();
        let tier = RedisTier {
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
                layout,
                horizon: self.horizon,
                #[cfg(feature = "compression")]
                compress_above: self.compress_above,
                corrupt: AtomicU64::new(0),
                owned,
                replication: self.replication,
                guard: Guard::new(self.check_every.is_some()),
                check_every: self.check_every.unwrap_or(Duration::MAX),
                tasks: std::sync::Mutex::new(Vec::new()),
                checking: tokio::sync::Mutex::new(()),
            }),
            _value: PhantomData,
        };
        tier.watch_primary(self.lazy).await;
        Ok(tier)
    }

    /// `config` with the extra CAs of [`tls_ca_pem`](Self::tls_ca_pem) trusted.
    fn with_tls(&self, config: Config) -> Result<Config> {
        #[cfg(feature = "tls")]
        let config = {
            let mut config = config;
            crate::tls::trust_extra_cas(&mut config, &self.tls_ca).map_err(|reason| {
                Error::Unavailable {
                    tier: self.name.to_string(),
                    reason,
                }
            })?;
            config
        };
        Ok(config)
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

/// A connection error's text, with a hint when the server's TLS certificate
/// was not trusted. fred's errors never quote the URL or the password.
pub(crate) fn describe_connect_error(err: &fred::error::Error) -> String {
    let text = err.to_string();
    if text.contains("InvalidCertificate") || text.contains("certificate verify failed") {
        format!(
            "{text} (the server's TLS certificate is not trusted: give its CA to \
             `tls_ca_pem`, or check that it names the host of the URL)"
        )
    } else {
        text
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
