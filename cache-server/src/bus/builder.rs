//! [`InvalidationBusBuilder`]: settings, connecting, and the bus's tasks.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_core::{Error, Result};
use fred::prelude::{ClientLike, Config, EventInterface, PubsubInterface, ReconnectPolicy};
use fred::types::config::{ServerConfig, UnresponsiveConfig};
use fred::types::CustomCommand;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use super::inner::{BusInner, Counters, APPLY_QUEUE};
use super::link::{Link, LinkState, Timing};
use super::registry::Registry;
use super::sequences::Sequences;
use super::wire::{Build, LinkReport, Message};
use super::{InvalidationBus, BUS};
use crate::redis::{client_builder, default_reconnect_policy, describe_connect_error};

/// Builds an [`InvalidationBus`]. See [`InvalidationBus::builder`].
///
/// ```
/// use std::time::Duration;
/// let builder = cache_server::InvalidationBus::builder()
///     .url("redis://127.0.0.1:6379")
///     .channel("avatars:invalidate")
///     .command_timeout(Duration::from_millis(500));
/// # let _ = builder;
/// ```
#[must_use]
pub struct InvalidationBusBuilder {
    config: Option<Config>,
    url: String,
    channel: String,
    command_timeout: Duration,
    policy: ReconnectPolicy,
    timing: Timing,
    ack_timeout: Option<Duration>,
    /// What this instance announces it writes (this build, unless a test
    /// pretends to be another).
    build: Option<Build>,
    /// Extra CA certificates (PEM) to trust.
    #[cfg(feature = "tls")]
    tls_ca: Vec<Vec<u8>>,
}

/// Default [`InvalidationBusBuilder::heartbeat_interval`]: 1 s.
///
/// ```
/// use cache_server::{DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT};
/// // A dead link is noticed, and the in-process tiers flushed, within 3 s.
/// assert_eq!((DEFAULT_HEARTBEAT_INTERVAL + DEFAULT_HEARTBEAT_TIMEOUT).as_secs(), 3);
/// ```
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Default [`InvalidationBusBuilder::heartbeat_timeout`]: 2 s.
///
/// ```
/// assert_eq!(cache_server::DEFAULT_HEARTBEAT_TIMEOUT.as_secs(), 2);
/// ```
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);

impl fmt::Debug for InvalidationBusBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No URL or config: they may hold credentials.
        let mut d = f.debug_struct("InvalidationBusBuilder");
        d.field("channel", &self.channel)
            .field("command_timeout", &self.command_timeout)
            .field("heartbeat_interval", &self.timing.interval)
            .field("heartbeat_timeout", &self.timing.timeout)
            .field("ack_timeout", &self.ack_timeout);
        #[cfg(feature = "tls")]
        d.field("tls_ca_pems", &self.tls_ca.len());
        d.finish_non_exhaustive()
    }
}

impl Default for InvalidationBusBuilder {
    fn default() -> Self {
        InvalidationBusBuilder {
            config: None,
            url: "redis://127.0.0.1:6379".into(),
            channel: "cache:invalidate".into(),
            command_timeout: Duration::from_secs(1),
            policy: default_reconnect_policy(),
            timing: Timing {
                interval: DEFAULT_HEARTBEAT_INTERVAL,
                timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            },
            ack_timeout: None,
            build: None,
            #[cfg(feature = "tls")]
            tls_ca: Vec::new(),
        }
    }
}

impl InvalidationBusBuilder {
    /// The server URL (`redis://` or `redis-cluster://`; with the `tls`
    /// feature also `rediss://` and `rediss-cluster://`, see
    /// `tls_ca_pem` (feature `tls`); `redis-sentinel://` for a primary
    /// behind Sentinel). An ACL user needs `PUBLISH`, `SUBSCRIBE` and
    /// `PUBSUB` on the channel and on `{<channel>}:i:*`, `EVALSHA`/`EVAL` on
    /// the keys `{<channel>}:*`, `PING` and `CLIENT SETNAME`.
    ///
    /// ```
    /// let b = cache_server::InvalidationBus::builder().url("redis://127.0.0.1:6379");
    /// # let _ = b;
    /// ```
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self.config = None;
        self
    }

    /// A full fred [`Config`] instead of a URL (with the `tls` feature, its
    /// `tls` field may hold a connector of your own;
    /// `tls_ca_pem` (feature `tls`) replaces it).
    ///
    /// ```
    /// use cache_server::fred::prelude::Config;
    /// let config = Config::from_url("redis://127.0.0.1:6379").unwrap();
    /// let b = cache_server::InvalidationBus::builder().config(config);
    /// # let _ = b;
    /// ```
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// The pub/sub channel (default `"cache:invalidate"`). Instances that share
    /// a cache must use the same channel.
    ///
    /// ```
    /// let b = cache_server::InvalidationBus::builder().channel("avatars:invalidate");
    /// # let _ = b;
    /// ```
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// Timeout of `PUBLISH` and `SUBSCRIBE` (default 1 s).
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = cache_server::InvalidationBus::builder().command_timeout(Duration::from_millis(500));
    /// # let _ = b;
    /// ```
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// The reconnect policy of both connections (default
    /// [`crate::default_reconnect_policy`]).
    ///
    /// ```
    /// let b = cache_server::InvalidationBus::builder()
    ///     .reconnect_policy(cache_server::default_reconnect_policy());
    /// # let _ = b;
    /// ```
    pub fn reconnect_policy(mut self, policy: ReconnectPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How often the bus publishes a heartbeat and pings its subscriber
    /// connection (default 1 s, at least 1 ms). Use the same value on every
    /// instance of a channel.
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = cache_server::InvalidationBus::builder().heartbeat_interval(Duration::from_millis(500));
    /// # let _ = b;
    /// ```
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.timing.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How much later than the interval a heartbeat of its own may come back
    /// (default 2 s, at least 1 ms). With no heartbeat of its own back for
    /// `interval + timeout`, the bus declares its link down and flushes the
    /// in-process tiers; it is also how long a connection may leave a `PING`
    /// unanswered before fred drops and reconnects it.
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = cache_server::InvalidationBus::builder().heartbeat_timeout(Duration::from_secs(1));
    /// # let _ = b;
    /// ```
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.timing.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long a [`SyncedCache`](super::SyncedCache) invalidation waits for
    /// the other live instances to confirm it (default heartbeat interval +
    /// timeout + interval: by then an instance that cannot answer has
    /// declared its link down, or its registration has run out, and is
    /// excused). When one does not confirm in time, the call returns an
    /// error.
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = cache_server::InvalidationBus::builder().ack_timeout(Duration::from_secs(5));
    /// # let _ = b;
    /// ```
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = Some(timeout);
        self
    }

    /// Also trusts the CA certificate(s) in `pem` (one or more `-----BEGIN
    /// CERTIFICATE-----` blocks) for a `rediss://` server, on top of the
    /// system's roots. May be called more than once. `connect` fails if a PEM
    /// holds no certificate or if the URL or config is not TLS. Feature `tls`.
    ///
    /// ```
    /// use cache_server::InvalidationBus;
    /// # // A throwaway redis-server with TLS, its own CA and an ACL user.
    /// # let server = cache_server::testing::tls::TlsRedisServer::start("avatars", &["avatars:invalidate"]);
    /// # let (url, ca_pem) = (server.url(), server.ca_pem().to_owned());
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// // url: "rediss://app:<password>@127.0.0.1:<port>"
    /// // ca_pem: the private CA's certificate, e.g. std::fs::read("ca.pem")?
    /// let bus = InvalidationBus::builder()
    ///     .url(url)
    ///     .tls_ca_pem(ca_pem)
    ///     .channel("avatars:invalidate")
    ///     .connect()
    ///     .await?;
    /// bus.shutdown().await;
    /// # Ok::<_, cache_core::Error>(()) }).unwrap();
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls_ca_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.tls_ca.push(pem.as_ref().to_vec());
        self
    }

    /// Announces `features` instead of this build's (feature `mutations`
    /// only): lets a test start an instance that claims another build, to
    /// show that an incompatible fleet is refused.
    #[cfg(feature = "mutations")]
    #[doc(hidden)]
    pub fn pretend_features(mut self, features: &[&str]) -> Self {
        let mut build = Build::this();
        build.features = features.iter().map(|f| (*f).to_owned()).collect();
        self.build = Some(build);
        self
    }

    /// Connects, subscribes and starts listening. Call inside a tokio runtime.
    ///
    /// ```no_run
    /// # async fn demo() -> cache_core::Result<()> {
    /// let bus = cache_server::InvalidationBus::builder()
    ///     .url("redis://127.0.0.1:6379")
    ///     .connect()
    ///     .await?;
    /// # let _ = bus; Ok(()) }
    /// ```
    pub async fn connect(self) -> Result<InvalidationBus> {
        let unavailable = |e: fred::error::Error| Error::Unavailable {
            tier: BUS.into(),
            reason: describe_connect_error(&e),
        };
        let config = match self.config {
            Some(c) => c,
            None => Config::from_url(&self.url).map_err(unavailable)?,
        };
        #[cfg(feature = "tls")]
        let config = {
            let mut config = config;
            crate::tls::trust_extra_cas(&mut config, &self.tls_ca).map_err(|reason| {
                Error::Unavailable {
                    tier: BUS.into(),
                    reason,
                }
            })?;
            config
        };
        let cluster_url = matches!(config.server, ServerConfig::Clustered { .. });
        let timing = self.timing;
        let connect_timeout = self.command_timeout.max(Duration::from_secs(1));
        let mut builder =
            client_builder(config, self.command_timeout, connect_timeout, self.policy);
        // A connection that leaves a command (the periodic PING included)
        // unanswered for the heartbeat timeout is dropped and reconnected: a
        // silently dead TCP connection does not go unnoticed.
        builder.with_connection_config(|c| {
            c.unresponsive = UnresponsiveConfig {
                max_timeout: Some(timing.timeout),
                interval: (timing.timeout / 4)
                    .clamp(Duration::from_millis(2), Duration::from_secs(1)),
            };
        });
        let publisher = builder.build().map_err(unavailable)?;
        let subscriber = builder.build_subscriber_client().map_err(unavailable)?;
        publisher.init().await.map_err(unavailable)?;
        subscriber.init().await.map_err(unavailable)?;
        let clustered = cluster_url || !is_standalone(&publisher).await;

        let registry = Registry::new(&self.channel);
        let build = self.build.unwrap_or_else(Build::this);
        // Refuse to join a fleet this build cannot share Redis with, before
        // anyone can see this instance.
        let listed = match registry.publish(&publisher, None).await {
            Ok(listed) => listed,
            Err(e) => {
                let _ = publisher.quit().await;
                let _ = subscriber.quit().await;
                if e.details().contains("MOVED") {
                    return Err(Error::Unavailable {
                        tier: BUS.into(),
                        reason: format!(
                            "the bus registry of channel {:?} lives in one hash slot of a Redis Cluster, and this \
                             plain connection reaches another node: connect with the cluster URL \
                             (redis-cluster://...) or to the node that owns that slot ({e})",
                            self.channel
                        ),
                    });
                }
                return Err(unavailable(e));
            }
        };
        for (id, record) in &listed {
            let why = match record {
                Ok(r) => build.incompatibility(&r.build),
                Err(Some(version)) => Some(format!(
                    "it speaks bus wire version {version}, this build {}",
                    super::wire::WIRE_VERSION
                )),
                Err(None) => Some("its registry record does not parse".to_owned()),
            };
            if let Some(why) = why {
                let _ = publisher.quit().await;
                let _ = subscriber.quit().await;
                let reason = format!(
                    "refusing to join channel {:?}: instance {id:016x} is incompatible: {why}",
                    self.channel
                );
                tracing::error!(%reason, "incompatible fleet");
                return Err(Error::Unavailable {
                    tier: BUS.into(),
                    reason,
                });
            }
        }

        let now = Instant::now();
        let origin = random_id();
        let (to_apply, apply_rx) = mpsc::channel(APPLY_QUEUE);
        let inner = Arc::new(BusInner {
            publisher,
            subscriber: subscriber.clone(),
            inbox: registry.inbox(origin),
            registry,
            channel: self.channel,
            origin,
            build,
            clustered,
            last_seq: tokio::sync::Mutex::new(0),
            appliers: Mutex::default(),
            next_applier: AtomicU64::new(0),
            timing,
            watchdog: watchdog_enabled(),
            link: Mutex::new(Link {
                state: LinkState::Starting,
                report: LinkReport::New,
                last_echo: now,
                last_flush: now,
            }),
            epoch: now,
            // Set below, from the connect time.
            look_by: AtomicU64::new(0),
            looking: tokio::sync::Mutex::new(()),
            link_tx: watch::Sender::new(false),
            pending: Mutex::new(HashMap::new()),
            suspects: Mutex::new(HashMap::new()),
            ack_timeout: self.ack_timeout.unwrap_or(timing.bound() + timing.interval),
            to_apply,
            counters: Counters::default(),
            refreshes: AtomicU64::new(0),
            tasks: Mutex::new(Vec::new()),
        });
        inner.look_again_by(now);
        let bus = InvalidationBus { inner };
        let inner = &bus.inner;
        // Listen before subscribing, so no message slips between the two.
        let tasks = [
            spawn_message_pump(inner, subscriber.message_rx()),
            spawn_applier(inner, apply_rx),
            spawn_reconnect_watch(inner, subscriber.reconnect_rx()),
        ];
        if let Ok(mut t) = inner.tasks.lock() {
            t.extend(tasks);
        }
        let channels = vec![inner.channel.clone(), inner.inbox.clone()];
        if let Err(e) = subscriber.subscribe(channels).await {
            bus.shutdown().await;
            return Err(unavailable(e));
        }
        let tasks = [
            spawn_every(inner, timing.interval, |bus| async move {
                bus.heartbeat().await;
            }),
            spawn_every(inner, timing.interval, |bus| async move {
                if let Err(err) = bus.subscriber.ping::<fred::types::Value>(None).await {
                    tracing::debug!(error = %err, "pinging the invalidation bus subscriber failed");
                }
            }),
        ];
        let watchdog = inner.watchdog.then(|| {
            spawn_every(
                inner,
                timing.tick(),
                |bus| async move { bus.watch_link().await },
            )
        });
        if let Ok(mut t) = inner.tasks.lock() {
            t.extend(tasks);
            t.extend(watchdog);
        }
        // The first heartbeat registers this instance (it is subscribed, so
        // from now on every invalidation reaches it and waits for its ack);
        // once it comes back the link is up.
        inner.heartbeat().await;
        let mut up = inner.link_tx.subscribe();
        let wait = timing.bound().max(connect_timeout);
        if !matches!(
            tokio::time::timeout(wait, up.wait_for(|up| *up)).await,
            Ok(Ok(_))
        ) {
            bus.shutdown().await;
            return Err(Error::Unavailable {
                tier: BUS.into(),
                reason: format!(
                    "the bus did not receive its own first heartbeat back within {wait:?} \
                     (with Redis ACLs, the user needs PUBLISH and SUBSCRIBE on the channel and on {{<channel>}}:i:*)"
                ),
            });
        }
        Ok(bus)
    }
}

fn random_id() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(std::process::id())
}

#[cfg(feature = "mutations")]
fn watchdog_enabled() -> bool {
    !crate::mutation::no_heartbeat_watchdog()
}

#[cfg(not(feature = "mutations"))]
fn watchdog_enabled() -> bool {
    true
}

/// Runs `f` every `period` (the first time one period from now) while the bus
/// lives.
fn spawn_every<F, Fut>(inner: &Arc<BusInner>, period: Duration, f: F) -> JoinHandle<()>
where
    F: Fn(Arc<BusInner>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            f(inner).await;
        }
    })
}

fn spawn_message_pump(
    inner: &Arc<BusInner>,
    mut rx: broadcast::Receiver<fred::types::Message>,
) -> JoinHandle<()> {
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        let mut sequences = Sequences::default();
        loop {
            let received = rx.recv().await;
            let Some(inner) = weak.upgrade() else { return };
            match received {
                Ok(msg) => inner.on_message(&mut sequences, &msg),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "invalidation bus fell behind; flushing in-process tiers"
                    );
                    let _ = inner.resync().await;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

/// Applies the other instances' invalidations in order and acknowledges
/// them, apart from the message pump, so that a slow tier never holds up
/// heartbeats and acks.
fn spawn_applier(inner: &Arc<BusInner>, mut rx: mpsc::Receiver<Message>) -> JoinHandle<()> {
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let Some(inner) = weak.upgrade() else { return };
            inner.apply_and_ack(msg).await;
        }
    })
}

fn spawn_reconnect_watch(
    inner: &Arc<BusInner>,
    mut rx: broadcast::Receiver<fred::types::config::Server>,
) -> JoinHandle<()> {
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        loop {
            let received = rx.recv().await;
            let Some(inner) = weak.upgrade() else { return };
            if matches!(received, Err(broadcast::error::RecvError::Closed)) {
                return;
            }
            // Subscribe again first, then flush: a message published between
            // the two is then either delivered or flushed anyway.
            let mut delay = Duration::from_millis(20);
            while let Err(err) = inner.subscriber.resubscribe_all().await {
                tracing::warn!(error = %err, "re-subscribing the invalidation bus failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            tracing::info!(channel = %inner.channel, "invalidation bus reconnected; flushing in-process tiers");
            super::inner::bump(&inner.counters.reconnects);
            let _ = inner.resync().await;
        }
    })
}

/// Whether the server a plain connection reaches is a standalone one, not a
/// node of a cluster (`INFO cluster` says `cluster_enabled:0`). A node of a
/// cluster counts only its own subscribers in `PUBSUB NUMSUB`, while an
/// instance may be subscribed on another node: a bus that took "no
/// subscriber" there for "its connection is gone" excused live instances
/// before they had applied its invalidations. When the server does not say
/// (the command is denied, or fails), it is taken for a cluster node: the
/// bus then only waits longer for a dead instance, never less for a live one.
async fn is_standalone(client: &fred::clients::Client) -> bool {
    let info: std::result::Result<String, _> = client
        .custom(
            CustomCommand::new_static("INFO", None, false),
            vec![fred::types::Value::from("cluster")],
        )
        .await;
    info.is_ok_and(|info| info.lines().any(|l| l.trim() == "cluster_enabled:0"))
}
