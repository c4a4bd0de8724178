//! [`RedisTierBuilder`]: settings, connecting, and the fred defaults the
//! tier and the bus share.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use cache_core::{Clock, Error, Result, SystemClock};
use fred::prelude::{Builder, ClientLike, Config, Pool, ReconnectPolicy};

use super::layout::Layout;

pub(super) use super::codec::{Codec, MsgPackCodec};
use super::failover::{Guard, Replication};
pub(super) use super::layout::DEFAULT_CLUSTER_SHARDS;

use super::{
    Inner, RedisTier, DEFAULT_COMMAND_TIMEOUT, DEFAULT_FAILOVER_CHECK, DEFAULT_FENCE_HORIZON,
    DEFAULT_POOL_SIZE,
};

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
    /// any `tls_ca_pem` (feature `tls`)). `user` is an ACL user; without
    /// it the password is the `default` user's (`requirepass`).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.connection = Connection::Url(url.into());
        self
    }

    /// A full fred [`Config`] (sentinel, RESP3, a TLS connector of your own
    /// in `config.tls` with the `tls` feature...). `tls_ca_pem` (feature `tls`)
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

    /// `config` with the extra CAs of `tls_ca_pem` (feature `tls`) trusted.
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
