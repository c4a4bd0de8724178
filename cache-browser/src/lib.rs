//! # cache-browser
//!
//! Browser tiers for [`cache_core`], compiled to `wasm32-unknown-unknown`.
//! On other targets the crate is empty.

#![cfg_attr(docsrs, feature(doc_auto_cfg))]

#[cfg(target_family = "wasm")]
mod js;
#[cfg(target_family = "wasm")]
mod local_storage;

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
pub use cache_api::{CacheApiTier, CacheApiTierBuilder, DEFAULT_BASE_URL, DEFAULT_MAX_ENTRIES, EXPIRES_HEADER};
#[cfg(target_family = "wasm")]
mod cross_tab;
#[cfg(target_family = "wasm")]
pub use cross_tab::CrossTabInvalidation;
#[cfg(target_family = "wasm")]
mod profile;
#[cfg(target_family = "wasm")]
pub use profile::{Picture, ProfilePictures, ProfilePicturesBuilder, ResolvedPicture, BYTES_TTL, LOCAL_STORAGE_TTL};
