//! # cache-browser
//!
//! Browser tiers for [`cache_core`], compiled to `wasm32-unknown-unknown` with
//! wasm-bindgen and web-sys. On other targets the crate is empty, so a native
//! workspace build is unaffected.
//!
//! - [What is here](#what-is-here)
//! - [Feature flags](#feature-flags)
//! - [Example (wasm32)](#example-wasm32)
//! - [Minimum supported Rust version](#minimum-supported-rust-version)
//!
//! # What is here
//!
//! - `LocalStorageTier`: JSON records `{format, key, value, expires_at, stored_at}`
//!   under a prefix; corrupt or foreign records are misses and are removed; on
//!   `QuotaExceededError` it evicts its own oldest records and retries once; a
//!   write probe detects absent or blocked storage.
//! - `IndexedDbTier` (indexed_db_futures 0.6): bytes as `Uint8Array`, an expiry
//!   index with `sweep_expired()`, a byte budget with LRU eviction, reopen and
//!   retry once on a closing connection, close on `versionchange`.
//! - `CacheApiTier`: responses under stable logical URLs, expiry in a header,
//!   refuses opaque responses, a maximum entry count; works in a window and in a
//!   service worker (it finds `caches` on `globalThis`).
//! - `CrossTabInvalidation`: `invalidate(key)` in one tab drops the key from the
//!   memory tier of every other tab of the origin, over `BroadcastChannel`.
//! - `ServerInvalidations`: invalidations pushed by the server as server-sent
//!   events (`EventSource`), applied to the page's tiers (and, as the page chooses, forwarded to the
//!   other tabs); after a gap in the stream, the URL tiers are emptied.
//! - `ProfilePictures`: the preset chain memory → LocalStorage (URL, 45 min) →
//!   IndexedDB (bytes, 7 days) → Cache API (response, 7 days) → network, giving an
//!   `<img>` source and the tier that served it; `watch` and `peek` per key,
//!   and cross-tab invalidation with `.cross_tab(channel)`. The reads made in
//!   one turn of the event loop (a list's elements) go to the chain as one
//!   `get_many`.
//! - `Batcher`: that coalescing, DataLoader-style, in front of any chain.
//! - `PageSpawner`: runs the chain's background tasks (refresh-ahead, a load
//!   outliving a soft origin timeout) on the page's event loop.
//! - `use_profile_picture` / `ProfilePicture`: the original React hook's shape
//!   (`url`, `loading`, `error`, `refetch`) for Rust front-ends, redrawn on
//!   invalidation here or in another tab.
//!
//! Every tier takes an injected [`cache_core::Clock`], checks expiry on every
//! read, passes `cache_core::conformance` in headless Chromium, and turns every
//! browser exception into a [`cache_core::Error`] (never a panic).
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `browser-bench` | no | compiles the crate's browser hit-latency benchmark (`tests/bench.rs`); nothing in the library |
//!
//! Target: `wasm32-unknown-unknown` (these docs are built for it).
//!
//! # Example (wasm32)
//!
//! ```text
//! use cache_browser::{Picture, ProfilePictures};
//! use cache_core::{BoxError, Clock, Entry, SystemClock};
//!
//! let pictures = ProfilePictures::builder("avatars")
//!     .network(|user: String| async move {
//!         let p = Picture { url: format!("/img/{user}.png"), bytes: None, content_type: "image/png".into() };
//!         Ok::<_, BoxError>(Some(Entry::expiring_in(p, SystemClock.now(), std::time::Duration::from_secs(3600))))
//!     })
//!     .build()
//!     .await;
//! let found = pictures.get("42").await?.expect("the loader always answers");
//! img.set_src(&found.src); // found.served_by: "memory", "local_storage", ..., "network"
//! ```
//!
//! The `profile_pictures` example is a complete page script:
//! `cargo build -p cache-browser --example profile_pictures --target wasm32-unknown-unknown`.
//!
//! # Minimum supported Rust version
//!
//! Rust 1.95 (`rust-version` in Cargo.toml), checked by the workspace's
//! `cargo xtask test`. Raising it is a minor-version change, noted in the
//! changelog.

// docs.rs (nightly, `--cfg docsrs`): mark feature- and target-gated items.
// `doc_cfg` includes what `doc_auto_cfg` did before nightly merged the two.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(target_family = "wasm")]
mod js;
#[cfg(target_family = "wasm")]
mod local_storage;
// The record codec builds natively too, for its unit tests.
#[cfg(any(target_family = "wasm", test))]
mod record;

#[cfg(target_family = "wasm")]
pub use js::JsError;
#[cfg(target_family = "wasm")]
pub use local_storage::{LocalStorageTier, LocalStorageTierBuilder};
#[cfg(target_family = "wasm")]
mod indexed_db;
#[cfg(target_family = "wasm")]
pub use indexed_db::{IndexedDbTier, IndexedDbTierBuilder, DEFAULT_MAX_BYTES};
#[cfg(target_family = "wasm")]
mod cache_api;
#[cfg(target_family = "wasm")]
pub use cache_api::{
    CacheApiTier, CacheApiTierBuilder, DEFAULT_BASE_URL, DEFAULT_MAX_ENTRIES, EXPIRES_HEADER,
    TAGS_HEADER,
};
#[cfg(target_family = "wasm")]
mod tags;
#[cfg(target_family = "wasm")]
pub use tags::LocalStorageTagStore;
#[cfg(target_family = "wasm")]
mod cross_tab;
#[cfg(target_family = "wasm")]
pub use cross_tab::CrossTabInvalidation;
#[cfg(target_family = "wasm")]
mod server_events;
#[cfg(target_family = "wasm")]
pub use server_events::{ServerInvalidationStats, ServerInvalidations, ServerInvalidationsBuilder};
#[cfg(target_family = "wasm")]
mod spawn;
#[cfg(target_family = "wasm")]
pub use spawn::PageSpawner;
#[cfg(target_family = "wasm")]
mod batch;
#[cfg(target_family = "wasm")]
pub use batch::{Batched, Batcher, Served};
#[cfg(target_family = "wasm")]
mod profile;
#[cfg(target_family = "wasm")]
pub use profile::{
    use_profile_picture, Picture, ProfilePicture, ProfilePictures, ProfilePicturesBuilder,
    ResolvedPicture, TierContents, BYTES_TTL, DATA_URL_MAX_BYTES, LOCAL_STORAGE_PICTURE_BYTES,
    LOCAL_STORAGE_TTL,
};
