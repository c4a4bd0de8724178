//! [`TagStore`]: where a chain keeps the generations of its [`Tags`](crate::Tags).
//!
//! Tag invalidation is lazy: [`TieredCache::invalidate_tag`](crate::TieredCache::invalidate_tag)
//! bumps the tag's generation in the store, and every read compares the
//! generations an entry was read at with the current ones. No tier is scanned.
//!
//! The store must be **as shared and as durable as the tiers** that hold
//! tagged entries: with no store, a chain keeps generations in its own memory,
//! which is right for in-process tiers only. Chains of several instances over
//! a shared Redis use `cache_server::RedisTagStore`; a page whose tiers
//! outlive it uses `cache_browser::LocalStorageTagStore`.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::{Error, MaybeSend, MaybeSync, Result};

/// Why a tier refuses an entry stored with tags in a build without cache-core's
/// `tags` feature (it cannot check them; see [`Tags::try_from_pairs`](crate::Tags::try_from_pairs)).
///
/// ```
/// assert!(cache_core::tags::TAGS_UNSUPPORTED.contains("`tags` feature"));
/// ```
pub const TAGS_UNSUPPORTED: &str =
    "the entry was stored with tags, and this build of cache-core lacks the `tags` feature to check them";

/// The longest tag accepted, in bytes.
pub const MAX_TAG_BYTES: usize = 200;

/// Checks a tag: not empty, at most [`MAX_TAG_BYTES`], no control characters.
///
/// ```
/// assert!(cache_core::tags::validate_tag("user:42").is_ok());
/// assert!(cache_core::tags::validate_tag("").is_err());
/// assert!(cache_core::tags::validate_tag("a\nb").is_err());
/// ```
pub fn validate_tag(tag: &str) -> Result<()> {
    crate::key::validate(tag).map_err(|reason| Error::invalid_key(tag, reason))?;
    if tag.len() > MAX_TAG_BYTES {
        return Err(Error::invalid_key(
            tag,
            crate::KeyError::TooLong {
                len: tag.len(),
                max: MAX_TAG_BYTES,
            },
        ));
    }
    Ok(())
}

/// Where the generations of tags live.
///
/// A generation starts at 0 (a tag never invalidated) and only grows.
/// Implementations: [`MemoryTagStore`] (one process), `cache_server::RedisTagStore`
/// (a fleet over Redis: `INCR`), `cache_browser::LocalStorageTagStore` (every
/// tab of a page, across reloads).
///
/// A chain caches the generations it reads from a store that answers only
/// asynchronously, and keeps that copy current through the bus
/// (`cache_server::SyncedCache`). A store that can answer at once
/// ([`TagStore::generation_now`]) is read on every check instead.
///
/// ```
/// use cache_core::tags::{MemoryTagStore, TagStore};
///
/// # futures_executor::block_on(async {
/// let store = MemoryTagStore::new();
/// assert_eq!(store.generations(&["user:42"]).await?, [0]);
/// assert_eq!(store.bump("user:42").await?, 1);
/// assert_eq!(store.generations(&["user:42", "team:7"]).await?, [1, 0]);
/// # Ok::<(), cache_core::Error>(()) }).unwrap();
/// ```
#[cfg_attr(not(target_family = "wasm"), async_trait)]
#[cfg_attr(target_family = "wasm", async_trait(?Send))]
pub trait TagStore: MaybeSend + MaybeSync {
    /// A short name for errors and metrics.
    fn name(&self) -> &str;

    /// The current generation of each tag, in order (0 for one never bumped).
    async fn generations(&self, tags: &[&str]) -> Result<Vec<u64>>;

    /// Bumps `tag`'s generation and returns the new one.
    async fn bump(&self, tag: &str) -> Result<u64>;

    /// `tag`'s generation at once, for stores that never wait (browser
    /// storage); `None` (the default) means "ask [`TagStore::generations`]".
    fn generation_now(&self, tag: &str) -> Option<Result<u64>> {
        let _ = tag;
        None
    }

    /// For stores that answer at once: a number that changes whenever any
    /// generation changes (so a load can tell whether a tag was bumped while
    /// it ran). `None` (the default) for stores that do not answer at once.
    fn changes_now(&self) -> Option<u64> {
        None
    }
}

/// A [`TagStore`] in this process's memory: for chains that share one process
/// (and tiers that do not outlive it).
#[derive(Debug, Default)]
pub struct MemoryTagStore {
    state: Mutex<(HashMap<String, u64>, u64)>,
}

impl MemoryTagStore {
    /// An empty store: every tag at generation 0.
    ///
    /// ```
    /// use cache_core::{MemoryTagStore, TagStore};
    ///
    /// let store = MemoryTagStore::new();
    /// assert_eq!(store.generation_now("user:42").unwrap()?, 0);
    /// # Ok::<(), cache_core::Error>(())
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<String, u64>, u64)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg_attr(not(target_family = "wasm"), async_trait)]
#[cfg_attr(target_family = "wasm", async_trait(?Send))]
impl TagStore for MemoryTagStore {
    fn name(&self) -> &str {
        "memory-tags"
    }
    async fn generations(&self, tags: &[&str]) -> Result<Vec<u64>> {
        let state = self.lock();
        Ok(tags
            .iter()
            .map(|t| state.0.get(*t).copied().unwrap_or(0))
            .collect())
    }
    async fn bump(&self, tag: &str) -> Result<u64> {
        let mut state = self.lock();
        state.1 += 1;
        let generation = state.0.entry(tag.to_owned()).or_insert(0);
        *generation += 1;
        Ok(*generation)
    }
    fn generation_now(&self, tag: &str) -> Option<Result<u64>> {
        Some(Ok(self.lock().0.get(tag).copied().unwrap_or(0)))
    }
    fn changes_now(&self) -> Option<u64> {
        Some(self.lock().1)
    }
}
