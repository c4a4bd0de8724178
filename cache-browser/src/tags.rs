//! [`LocalStorageTagStore`]: tag generations every tab of a page shares, and
//! that outlive the page.

use cache_core::{async_trait, key, Error, Operation, Result, TagStore};
use web_sys::Storage;

use crate::js::JsError;

const NAME: &str = "localstorage-tags";

/// The generations of [tags](cache_core::Tags) in `localStorage`, for a page
/// whose tiers outlive it (LocalStorage, IndexedDB, the Cache API) and are
/// shared by all its tabs: a generation kept only in one tab's memory would
/// be 0 again after a reload, and unknown to the other tabs.
///
/// It answers at once, so a chain reads it on every check of a tagged entry
/// (one `getItem` per tag) instead of keeping a copy: a tag bumped in one tab
/// is seen by the next read in every other tab, with no message.
///
/// Keys are `cache-browser-tags:<namespace>:<encoded tag>` and one change
/// counter, `cache-browser-tags:<namespace>:~changes`, outside any
/// [`LocalStorageTier`](crate::LocalStorageTier)'s prefix, so clearing a tier
/// never takes a generation back.
///
/// ```no_run
/// use std::rc::Rc;
/// use cache_browser::{LocalStorageTagStore, LocalStorageTier};
/// use cache_core::{Entry, Tier, TieredCache, Timestamp};
///
/// # async fn demo() -> cache_core::Result<()> {
/// let tags = LocalStorageTagStore::open("avatars")?;
/// let cache: TieredCache<String, String> = TieredCache::builder()
///     .tier(Tier::new(LocalStorageTier::<String>::builder("avatars").open()?))
///     .tag_store(std::sync::Arc::new(tags))
///     .build();
/// cache.put(&"avatar:42".to_string(), Entry::new("https://img/42".into(), Timestamp::MAX).with_tags(["user:42"])).await?;
/// cache.invalidate_tag("user:42").await?; // every tab, and after a reload too
/// # let _ = Rc::new(()); Ok(()) }
/// ```
#[derive(Debug)]
pub struct LocalStorageTagStore {
    storage: Storage,
    prefix: String,
}

// One thread on wasm32: the chain's `MaybeSend + MaybeSync` bounds are empty
// there, so nothing more is needed.

impl LocalStorageTagStore {
    /// The store for `namespace`, on `window.localStorage`.
    ///
    /// ```no_run
    /// # fn demo() -> cache_core::Result<()> {
    /// let tags = cache_browser::LocalStorageTagStore::open("avatars")?;
    /// # let _ = tags; Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] where there is no `localStorage` (a worker) or it
    /// is blocked.
    pub fn open(namespace: &str) -> Result<Self> {
        let unavailable = |reason: String| Error::Unavailable {
            tier: NAME.into(),
            reason,
        };
        let window = web_sys::window().ok_or_else(|| unavailable("no window".into()))?;
        let storage = window
            .local_storage()
            .map_err(|e| unavailable(JsError::from_js(&e).to_string()))?
            .ok_or_else(|| unavailable("localStorage is absent".into()))?;
        Ok(LocalStorageTagStore {
            storage,
            prefix: format!("cache-browser-tags:{}:", key::encode(namespace)),
        })
    }

    fn item(&self, name: &str) -> Result<u64> {
        let raw = self
            .storage
            .get_item(name)
            .map_err(|e| Error::backend(NAME, Operation::Get, JsError::from_js(&e)))?;
        match raw {
            None => Ok(0),
            Some(raw) => raw.parse().map_err(|_| {
                Error::backend(NAME, Operation::Get, "a tag generation is not a number")
            }),
        }
    }

    fn set(&self, name: &str, value: u64) -> Result<()> {
        self.storage
            .set_item(name, &value.to_string())
            .map_err(|e| {
                let err = JsError::from_js(&e);
                if err.is_quota() {
                    Error::QuotaExceeded {
                        tier: NAME.into(),
                        source: Some(Box::new(err)),
                    }
                } else {
                    Error::backend(NAME, Operation::Put, err)
                }
            })
    }

    fn tag_key(&self, tag: &str) -> String {
        format!("{}{}", self.prefix, key::encode(tag))
    }

    fn changes_key(&self) -> String {
        format!("{}~changes", self.prefix)
    }
}

#[async_trait(?Send)]
impl TagStore for LocalStorageTagStore {
    fn name(&self) -> &str {
        NAME
    }

    async fn generations(&self, tags: &[&str]) -> Result<Vec<u64>> {
        tags.iter().map(|t| self.item(&self.tag_key(t))).collect()
    }

    async fn bump(&self, tag: &str) -> Result<u64> {
        let name = self.tag_key(tag);
        let generation = self.item(&name)? + 1;
        self.set(&name, generation)?;
        let changes = self.changes_key();
        let n = self.item(&changes).unwrap_or(0).wrapping_add(1);
        self.set(&changes, n)?;
        Ok(generation)
    }

    fn generation_now(&self, tag: &str) -> Option<Result<u64>> {
        Some(self.item(&self.tag_key(tag)))
    }

    fn changes_now(&self) -> Option<u64> {
        // A counter that cannot be read still answers: it then never matches
        // a load's mark, so no load is kept, which is safe.
        Some(self.item(&self.changes_key()).unwrap_or(u64::MAX))
    }
}
