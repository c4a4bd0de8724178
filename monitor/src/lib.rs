//! # cache-monitor
//!
//! Per-tier metrics for [`cache_core::TieredCache`]: attach a [`Monitor`] as the
//! chain's observer and read a [`Report`] — hit rate, average access time and
//! bytes saved overall; hits, misses, errors, timeouts, skips, backfills,
//! writes, invalidations, bytes served and latency percentiles per tier; origin
//! loads and their latency — as a console table, serde JSON or Prometheus text.
//!
//! - [What is here](#what-is-here)
//! - [Feature flags](#feature-flags)
//! - [Example](#example): a monitored two-tier chain, no network
//! - [Minimum supported Rust version](#minimum-supported-rust-version)
//!
//! # What is here
//!
//! - [`Monitor`]: the observer. Lock-free recording into preallocated atomic
//!   counters and log-linear histograms (3.1% resolution), up to [`MAX_TIERS`]
//!   tiers. Native and wasm32 (no threads, no `Instant::now()`; time comes from an
//!   injected [`cache_core::Clock`]).
//! - [`Report`]: a snapshot since start or reset ([`Monitor::report`]), over the
//!   last N minutes ([`Monitor::window`]) or bucket by bucket
//!   ([`Monitor::timeline`]), from rings of snapshots kept in memory (a fine
//!   one, [`MonitorBuilder::window`], and coarser ones for the last hour or
//!   day, [`MonitorBuilder::long_window`]). Each report states its period
//!   ([`Report::period`]) and how latency was sampled
//!   ([`Report::latency_timed_every`]). `Display` is a console table,
//!   `Serialize` feeds dashboards, [`Report::to_prometheus`] feeds Prometheus.
//! - [`CoarseClock`]: a cheap monotonic clock (native) for timing events.
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `metrics` | no | `MonitorBuilder::export_metrics`: every event also goes to the [`metrics`](https://docs.rs/metrics) facade (`<prefix>_events_total`, `<prefix>_bytes_total`, `<prefix>_latency_seconds`, labelled `tier` and `event`) |
//!
//! Targets: native and `wasm32-unknown-unknown`.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use cache_core::{loader_fn, BoxError, Clock, Entry, MemoryTier, SystemClock, Tier, TieredCache};
//! use cache_monitor::Monitor;
//!
//! # futures_executor::block_on(async {
//! let monitor = Monitor::new();
//! let cache = TieredCache::builder()
//!     .tier(Tier::new(MemoryTier::builder().name("memory").build()))
//!     .tier(Tier::new(MemoryTier::builder().name("shared").build()))
//!     .origin(loader_fn(|id: u64| async move {
//!         Ok::<_, BoxError>(Some(Entry::expiring_in(format!("https://img/{id}"), SystemClock.now(), Duration::from_secs(60))))
//!     }))
//!     .observer(monitor.clone())
//!     .build();
//!
//! for _ in 0..20 {
//!     cache.get(&7).await?;
//! }
//! let report = monitor.report();
//! assert_eq!(report.requests, 20);
//! assert_eq!(report.hit_rate, Some(0.95));
//! println!("{report}"); // cache report since start, over ...: 20 requests, hit rate 95.0%, average time ...
//! let _json = serde_json::to_string(&report).unwrap();
//! let _text = monitor.prometheus(); // serve at GET /metrics
//! # Ok::<_, cache_core::Error>(()) }).unwrap();
//! ```
//!
//! `cargo run -p cache-monitor --example report` prints a full report, its JSON
//! and its Prometheus text.
//!
//! # Minimum supported Rust version
//!
//! Rust 1.95 (`rust-version` in Cargo.toml), checked by the workspace's
//! `cargo xtask test`. Raising it is a minor-version change, noted in the
//! changelog.

// docs.rs (nightly, `--cfg docsrs`): mark feature- and target-gated items.
// `doc_cfg` includes what `doc_auto_cfg` did before nightly merged the two.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod clock;
#[cfg(feature = "metrics")]
mod export;
mod histogram;
mod layout;
mod monitor;
mod prometheus;
mod report;
mod stripes;
mod windows;

pub use crate::builder::MonitorBuilder;
pub use crate::clock::CoarseClock;
pub use crate::layout::MAX_TIERS;
pub use crate::monitor::Monitor;
pub use crate::report::{
    Bucket, Covers, KeyCount, LatencyStats, OriginStats, Period, Report, TierStats,
};
