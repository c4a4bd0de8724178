//! # cache-core
//!
//! The core of a multi-tier cache: one small trait for a tier, and a chain that
//! puts tiers in order in front of an origin and keeps them correct together.
//!
//! - [What is here](#what-is-here)
//! - [Feature flags](#feature-flags)
//! - [Example](#example): two tiers in front of an origin, no network
//! - [Related crates](#related-crates)
//! - [Minimum supported Rust version](#minimum-supported-rust-version)
//!
//! # What is here
//!
//! - [`CacheLayer`]: a tier (async get / put / remove / clear, batch get / put).
//!   Object-safe, `Send` futures on native and `?Send` on wasm32.
//! - [`TieredCache`]: ordered tiers with TTLs and timeouts, an origin loader,
//!   backfill, fail-open reads with circuit breakers, single-flight loads, and
//!   invalidation that reports every tier's outcome and stops racing loads from
//!   writing stale values back. Its docs hold the full contract.
//! - [`Entry`], [`Timestamp`], [`Clock`] ([`SystemClock`], [`ManualClock`]): absolute
//!   expiry on an injected wall clock (wasm-safe).
//! - [`Tags`] and [`TagStore`] (feature `tags`): `put` values with tags, then
//!   [`TieredCache::invalidate_tag`] drops every entry carrying a tag from every
//!   tier, without a scan (a generation checked on read, as bentocache and
//!   HybridCache do).
//! - [`fence`]: fenced (conditional) writes, [`Fence`], [`Stamp`], [`Fill`]: how
//!   a chain's backfills and origin fills lose to invalidations instead of
//!   writing old values back (the guarantee is in [`TieredCache`]'s docs).
//! - [`MemoryTier`]: an LRU tier bounded by entries and bytes; native and wasm32.
//! - [`FaultTier`]: fails, delays or hangs a tier on demand, for tests.
//! - [`Observer`]: every hit, miss, error, timeout, backfill, invalidation and
//!   origin load, with tier, latency and bytes. The `cache-monitor` crate implements it.
//! - [`key`]: key validation and an injective, syntax-free encoding for stores.
//! - `conformance` (feature `conformance`): the test suite every tier runs.
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `conformance` | no | `cache_core::conformance`: the suite every [`CacheLayer`] implementation should pass (enable it in your tier crate's dev-dependencies) |
//! | `serde` | no | `Serialize`/`Deserialize` for [`Timestamp`], [`Entry`] and [`Tags`] |
//! | `tags` | no | tags on entries: `Entry::with_tags`, `Tags::new`. Without it [`Tags`] takes no space (an entry is its value and expiry, and the in-process hit does not pay for the field), every entry is untagged, and a tier refuses an entry another build stored with tags ([`Tags::try_from_pairs`]) |
//! | `tracing` | no | `tracing` spans (DEBUG) for chain operations: `cache.get` (key, tier, outcome: hit, loaded, stale, absent, error), `cache.fill` (key, tier, kind, outcome: written, refused, error) and `cache.invalidate` (op, target, outcome, each tier's action) |
//! | `mutations` | no | test-only switches that revert one fix each, so this crate's tests can show they catch it; never enable it in a build you ship |
//!
//! Targets: native, and `wasm32-unknown-unknown` (futures are `?Send` there and
//! time comes from `web-time`).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use cache_core::{loader_fn, BoxError, Clock, Entry, MemoryTier, Source, SystemClock, Tier, TieredCache};
//!
//! # futures_executor::block_on(async {
//! let cache = TieredCache::builder()
//!     .tier(Tier::new(MemoryTier::builder().name("hot").max_entries(1_000).build()).ttl(Duration::from_secs(60)))
//!     .tier(Tier::new(MemoryTier::builder().name("warm").build()).ttl(Duration::from_secs(3_000)))
//!     .origin(loader_fn(|id: u64| async move {
//!         Ok::<_, BoxError>(Some(Entry::expiring_in(format!("avatar-{id}"), SystemClock.now(), Duration::from_secs(3_600))))
//!     }))
//!     .build();
//!
//! assert_eq!(cache.get(&1).await?.unwrap().source, Source::Origin);
//! assert_eq!(cache.get(&1).await?.unwrap().source, Source::Tier { index: 0, name: "hot" });
//! # Ok::<_, cache_core::Error>(()) }).unwrap();
//! ```
//!
//! A runnable version on a manual clock, showing each tier expire in turn:
//! `cargo run -p cache-core --example two_tiers`.
//!
//! # Related crates
//!
//! - `cache-server`: a moka tier, a Redis / Redis Cluster tier and an
//!   invalidation bus for fleets of servers.
//! - `cache-browser`: LocalStorage, IndexedDB and Cache API tiers (wasm32).
//! - `cache-monitor`: per-tier metrics from the chain's [`Observer`].
//! - `presign`: S3 presigned URLs cached in a chain.
//!
//! # Minimum supported Rust version
//!
//! Rust 1.95 (`rust-version` in Cargo.toml), checked by the workspace's
//! `cargo xtask test`. Raising it is a minor-version change, noted in the
//! changelog.

// docs.rs (nightly, `--cfg docsrs`): mark feature- and target-gated items.
// `doc_cfg` includes what `doc_auto_cfg` did before nightly merged the two.
#![cfg_attr(docsrs, feature(doc_cfg))]

// The README's example is a doctest too (its tags example needs the feature).
#[cfg(all(doctest, feature = "tags"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctest;

#[cfg(not(target_family = "wasm"))]
mod concurrent;
mod entry;
mod error;
mod fault;
pub mod fence;
mod in_process;
pub mod key;
mod layer;
mod memory;
#[doc(hidden)]
pub mod mutation;
mod observer;
mod report;
mod size;
pub mod tags;
mod tiered;
mod time;
mod timer;

#[cfg(feature = "conformance")]
pub mod conformance;

#[cfg(not(target_family = "wasm"))]
pub use concurrent::{ConcurrentTier, ConcurrentTierBuilder};
pub use entry::{Entry, TagList, Tags};
pub use error::{BoxError, Error, Operation, Result, SharedError};
pub use fault::{FaultHandle, FaultTier, InjectedFault};
pub use fence::{Fence, FenceCheck, Fill, Stamp, Unfenced};
pub use in_process::TierOptions;
pub use key::{CacheKey, KeyError};
pub use layer::{BoxFuture, CacheLayer, MaybeSend, MaybeSync};
pub use memory::{MemoryTier, MemoryTierBuilder};
pub use observer::{Event, EventKind, EventSource, Observer, FAST_PATH_TIMED_EVERY};
pub use report::{ChainOp, TierAction, TierOutcome, TierReport};
pub use size::ByteSize;
pub use tags::{MemoryTagStore, TagStore};
pub use tiered::{
    loader_fn, ExpiredFromOrigin, FnLoader, Loader, LoaderPanicked, Lookup, OriginTimedOut, Source,
    Tier, TierSelection, TieredCache, TieredCacheBuilder, DEFAULT_BREAKER,
};
pub use time::{Clock, ManualClock, SystemClock, Timestamp};
pub use timer::{DefaultTimer, Spawn, Timer};

/// Re-exported so tier implementations use the same `async_trait` as the trait.
pub use async_trait::async_trait;
