//! # cache-server
//!
//! Server-side tiers for [`cache_core::TieredCache`], for a fleet of backend
//! instances that share one Redis (or Redis Cluster) and each keep an in-process
//! tier in front of it:
//!
//! - [`MokaTier`]: the in-process tier, a moka cache bounded by bytes, with
//!   per-entry expiry.
//! - [`RedisTier`]: the shared tier, namespaced and key-encoded, values in a
//!   versioned envelope, absolute expiry, batch reads in one round trip, works on
//!   Redis Cluster.
//! - [`InvalidationBus`] and [`SyncedCache`]: an invalidation on one instance
//!   drops the key from every other instance's in-process tier, over Redis
//!   pub/sub, and returns `Ok` once every live instance has confirmed it. A
//!   lost subscription, a lost message or a link that dies silently (no
//!   heartbeat of its own back within heartbeat interval + timeout, 3 s by
//!   default) flushes the in-process tier.
//! - `testing` (feature `testing`): throwaway `redis-server` processes and
//!   3-master clusters on loopback ports, for tests and benches.
//!
//! Contents:
//! - [Feature flags](#feature-flags)
//! - [Example: an in-process tier](#example-an-in-process-tier), no network
//! - [Example: moka → Redis, invalidated on every instance](#example-moka--redis-invalidated-on-every-instance)
//! - [Minimum supported Rust version](#minimum-supported-rust-version)
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `testing` | no | `cache_server::testing`: start throwaway `redis-server` processes and clusters on loopback ports (needs `redis-server` and `redis-cli` on `PATH`) |
//! | `compression` | no | `RedisTierBuilder::compress_above`: LZ4-compress stored values above a size (pure Rust, `lz4_flex`) |
//! | `tls` | no | `rediss://` URLs (TLS through rustls with the ring provider, server certificates checked against the system's roots), and `tls_ca_pem` on [`RedisTierBuilder`] and [`InvalidationBusBuilder`] to trust a private CA |
//! | `mutations` | no | test-only switches that break a guarantee on purpose; never enable it in a build you ship |
//!
//! Native targets only: on wasm32 the crate is empty (browser tiers are in
//! `cache-browser`).
//!
//! # Example: an in-process tier
//!
//! ```
//! use std::time::Duration;
//! use cache_core::{loader_fn, BoxError, Clock, Entry, Source, SystemClock, Tier, TieredCache};
//! use cache_server::MokaTier;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let cache: TieredCache<String, String> = TieredCache::builder()
//!     .tier(Tier::new(MokaTier::builder().max_bytes(32 << 20).build()).ttl(Duration::from_secs(60)))
//!     .origin(loader_fn(|user: String| async move {
//!         Ok::<_, BoxError>(Some(Entry::expiring_in(format!("/img/{user}.png"), SystemClock.now(), Duration::from_secs(3_600))))
//!     }))
//!     .build();
//! assert_eq!(cache.get(&"42".to_string()).await?.unwrap().source, Source::Origin);
//! assert!(matches!(cache.get(&"42".to_string()).await?.unwrap().source, Source::Tier { index: 0, .. }));
//! # Ok::<_, cache_core::Error>(()) }).unwrap();
//! ```
//!
//! # Example: moka → Redis, invalidated on every instance
//!
//! This one needs a Redis; here a throwaway `redis-server` from the `testing`
//! feature. `cargo run -p cache-server --example moka_redis` runs a similar
//! chain against `REDIS_URL` or a `redis-server` it starts.
//!
//! ```
//! use std::time::Duration;
//! use cache_core::{Tier, TieredCache};
//! use cache_server::{InvalidationBus, MokaTier, RedisTier, SyncedCache};
//!
//! # let server = cache_server::testing::RedisServer::start(); // a throwaway redis-server
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let url = server.url(); // "redis://127.0.0.1:6379"
//! let chain: TieredCache<String, String> = TieredCache::builder()
//!     .tier(Tier::new(MokaTier::builder().max_bytes(32 << 20).build()).ttl(Duration::from_secs(60)))
//!     .tier(Tier::new(RedisTier::builder().url(&url).namespace("avatars").build().await?)
//!         .ttl(Duration::from_secs(3000))
//!         .timeout(Duration::from_millis(250)))
//!     .build();
//! let bus = InvalidationBus::builder().url(url).channel("avatars:invalidate").connect().await?;
//! let cache = SyncedCache::new(chain, bus, vec![0]);
//! cache.get(&"user:42".to_string()).await?;
//! cache.invalidate(&"user:42".to_string()).await?; // every instance drops it
//! # Ok::<_, cache_core::Error>(()) }).unwrap();
//! ```
//!
//! # Minimum supported Rust version
//!
//! Rust 1.95 (`rust-version` in Cargo.toml), checked by the workspace's
//! `cargo xtask test`. Raising it is a minor-version change, noted in the
//! changelog.

// docs.rs (nightly, `--cfg docsrs`): mark feature- and target-gated items.
// `doc_cfg` includes what `doc_auto_cfg` did before nightly merged the two.
#![cfg_attr(docsrs, feature(doc_cfg))]
// Native only: on wasm32 the crate is empty.
#![cfg(not(target_family = "wasm"))]

mod bus;
mod moka_tier;
#[cfg(feature = "mutations")]
#[doc(hidden)]
pub mod mutation;
mod redis;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "tls")]
mod tls;

pub use bus::{
    BusStats, Invalidation, InvalidationBus, InvalidationBusBuilder, SyncedCache,
    DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT,
};
pub use moka_tier::{MokaTier, MokaTierBuilder};
pub use redis::{
    default_reconnect_policy, Codec, MsgPackCodec, RedisTagStore, RedisTier, RedisTierBuilder,
    Replication, DEFAULT_CLUSTER_SHARDS, DEFAULT_COMMAND_TIMEOUT, DEFAULT_FAILOVER_CHECK,
    DEFAULT_FENCE_HORIZON, DEFAULT_POOL_SIZE,
};

/// The fred client crate, re-exported for its config types.
pub use fred;
