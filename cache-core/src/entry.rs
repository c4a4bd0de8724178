//! [`Entry`]: a value with its absolute expiry and its [`Tags`].

use std::sync::Arc;
use std::time::Duration;

use crate::Timestamp;

/// A cached value and the instant it stops being valid.
///
/// The expiry is absolute and travels with the value through every tier: a tier
/// stores the entry until `min(expires_at, now + tier_ttl)` and never returns it
/// at or after `expires_at`.
///
/// ```
/// use std::time::Duration;
/// use cache_core::{Entry, Timestamp};
///
/// let now = Timestamp::from_unix_millis(10_000);
/// let entry = Entry::expiring_in("https://img/42.png", now, Duration::from_secs(60));
/// assert!(!entry.is_expired(now));
/// assert_eq!(entry.remaining(now), Duration::from_secs(60));
/// assert!(entry.is_expired(now.saturating_add(Duration::from_secs(60))));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Entry<V> {
    /// The cached value.
    pub value: V,
    /// The first instant at which the value must no longer be served.
    pub expires_at: Timestamp,
    /// The tags the value carries, each with the generation it was read at
    /// (see [`Tags`]); empty for most entries. Without the `tags` feature it
    /// is always empty and takes no space.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Tags::is_empty")
    )]
    pub tags: Tags,
}

impl<V> Entry<V> {
    /// An entry valid until `expires_at` (exclusive), with no tags.
    pub fn new(value: V, expires_at: Timestamp) -> Self {
        Entry {
            value,
            expires_at,
            tags: Tags::NONE,
        }
    }

    /// The same entry carrying `tags` (their generations are filled in by the
    /// chain that stores it; see [`Tags`]).
    ///
    /// ```
    /// use cache_core::{Entry, Timestamp};
    ///
    /// let entry = Entry::new("https://img/42.png", Timestamp::MAX).with_tags(["user:42", "team:7"]);
    /// assert_eq!(entry.tags.list().names().collect::<Vec<_>>(), ["user:42", "team:7"]);
    /// ```
    #[cfg(feature = "tags")]
    #[must_use]
    pub fn with_tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = Tags::new(tags);
        self
    }

    /// An entry valid for `ttl` from `now`.
    pub fn expiring_in(value: V, now: Timestamp, ttl: Duration) -> Self {
        Entry::new(value, now.saturating_add(ttl))
    }

    /// Whether the entry must no longer be served at `now`.
    #[inline]
    pub fn is_expired(&self, now: Timestamp) -> bool {
        now >= self.expires_at
    }

    /// How long the entry stays valid after `now`; zero once expired.
    pub fn remaining(&self, now: Timestamp) -> Duration {
        self.expires_at.duration_since(now)
    }

    /// The same entry with its expiry brought forward to `limit` if that is sooner.
    #[must_use]
    pub fn capped_at(mut self, limit: Timestamp) -> Self {
        if limit < self.expires_at {
            self.expires_at = limit;
        }
        self
    }

    /// The same entry capped to live at most `ttl` from `now`, when a TTL is given.
    #[must_use]
    pub fn capped_by_ttl(self, now: Timestamp, ttl: Option<Duration>) -> Self {
        match ttl {
            Some(ttl) => self.capped_at(now.saturating_add(ttl)),
            None => self,
        }
    }

    /// Maps the value, keeping the expiry.
    pub fn map<U>(self, f: impl FnOnce(V) -> U) -> Entry<U> {
        Entry {
            value: f(self.value),
            expires_at: self.expires_at,
            tags: self.tags,
        }
    }

    /// Borrows the value, keeping the expiry and tags.
    pub fn as_ref(&self) -> Entry<&V> {
        Entry {
            value: &self.value,
            expires_at: self.expires_at,
            tags: self.tags,
        }
    }
}

/// The tags of an [`Entry`]: names such as `"user:42"`, each with the
/// **generation** of that tag the value was read at.
///
/// [`TieredCache::invalidate_tag`](crate::TieredCache::invalidate_tag) does
/// not look for the entries carrying a tag (no scan of Redis, no index): it
/// bumps the tag's generation, and from then on every read treats an entry
/// whose generation of that tag is older as absent (the lazy approach of
/// bentocache and HybridCache). Tiers store the tags with the value, so they
/// travel with it across backfill.
///
/// # The `tags` feature
///
/// Tags need cache-core's `tags` feature, off by default. Without it `Tags`
/// takes no space, so an [`Entry`] is as small as a value and its expiry, and
/// the in-process hit costs what it did before tags existed (an 8-byte field
/// made the one-thread `ConcurrentTier` hit about 10 ns slower, see
/// BENCHMARKS.md). Every entry is then untagged: `Entry::with_tags` and
/// `Tags::new` do not exist, [`TieredCache::invalidate_tag`](crate::TieredCache::invalidate_tag)
/// still bumps generations (and so still reaches instances that have the
/// feature), and a tier that reads an entry some other build stored with tags
/// refuses it ([`Tags::try_from_pairs`]), since this build cannot check them.
///
/// # Representation
///
/// With the feature, `Tags` is a `Copy` handle, 8 bytes: a tier-0 hit clones and drops an entry,
/// and a field that needs dropping (an `Arc`) cost every hit, tagged or not,
/// about 10 ns. The lists themselves are interned, once per distinct content,
/// in a process-wide table of at most [`Tags::MAX_LISTS`] lists; beyond that
/// the oldest are forgotten. An entry whose list was forgotten is written
/// nowhere, and reads as absent as soon as its tags can no longer be checked
/// (after any tag generation changes): a miss, never a wrong value. Most entries have no tags: then the
/// handle is empty and costs a read one check.
///
/// Generations are set by the chain; a value given to the chain (to `put`, or
/// from a loader) carries names only, see `Entry::with_tags`.
///
/// ```
/// # #[cfg(feature = "tags")] {
/// use cache_core::Tags;
///
/// let tags = Tags::new(["user:42"]);
/// assert_eq!(tags.list().iter().collect::<Vec<_>>(), [("user:42", 0)]);
/// let read_at = tags.with_generations(|_| 3);
/// assert_eq!(read_at.list().iter().collect::<Vec<_>>(), [("user:42", 3)]);
/// assert_eq!(Tags::new(["user:42"]), tags, "the same content, the same handle");
/// assert!(Tags::NONE.is_empty());
/// # }
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Tags(Handle);

/// The handle: `None` for no tags, else the list's number in the
/// process-wide table.
type Handle = Option<ListId>;

/// With the `tags` feature, a list's number.
#[cfg(feature = "tags")]
type ListId = std::num::NonZeroU64;

/// Without it, none can exist: `Option<Infallible>` takes no space and is
/// always `None` (every entry is untagged).
#[cfg(not(feature = "tags"))]
type ListId = std::convert::Infallible;

/// One tag's name and the generation it was read at.
type TagAt = (Box<str>, u64);

/// The names and generations behind a [`Tags`] handle (empty for none, or
/// for a list the process has forgotten: see [`Tags::is_forgotten`]).
///
/// ```
/// # #[cfg(feature = "tags")] {
/// use cache_core::Tags;
///
/// let tags = Tags::new(["user:42", "team:7"]);
/// let list = tags.list();
/// assert_eq!(list.names().collect::<Vec<_>>(), ["user:42", "team:7"]);
/// assert_eq!(list.len(), 2);
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct TagList(Option<Arc<[TagAt]>>);

impl TagList {
    /// Each tag's name and generation.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.0
            .iter()
            .flat_map(|t| t.iter())
            .map(|(n, g)| (&**n, *g))
    }

    /// Each tag's name.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.iter().map(|(n, _)| n)
    }

    /// How many tags.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |t| t.len())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The process-wide table of tag lists behind [`Tags`] handles.
#[cfg(feature = "tags")]
#[derive(Default)]
struct Registry {
    by_id: std::collections::HashMap<u64, Arc<[TagAt]>>,
    by_content: std::collections::HashMap<Arc<[TagAt]>, u64>,
    /// Ids in the order they were made, oldest first.
    order: std::collections::VecDeque<u64>,
    next: u64,
}

#[cfg(feature = "tags")]
fn registry() -> &'static std::sync::RwLock<Registry> {
    static REGISTRY: std::sync::OnceLock<std::sync::RwLock<Registry>> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

impl Tags {
    /// No tags.
    pub const NONE: Tags = Tags(None);

    /// How many distinct tag lists the process keeps (see
    /// [representation](Tags#representation)).
    pub const MAX_LISTS: usize = 1 << 18;

    /// `names`, each at generation 0, without duplicates (in first-seen order).
    ///
    /// ```
    /// let tags = cache_core::Tags::new(["user:42", "team:7", "user:42"]);
    /// assert_eq!(tags.len(), 2);
    /// ```
    #[cfg(feature = "tags")]
    pub fn new<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut out: Vec<(Box<str>, u64)> = Vec::new();
        for name in names {
            let name: String = name.into();
            if !out.iter().any(|(n, _)| **n == *name) {
                out.push((name.into_boxed_str(), 0));
            }
        }
        Tags::from_pairs(out)
    }

    /// Tags with their generations, as a tier that stored them reads them back.
    ///
    /// ```
    /// use cache_core::Tags;
    ///
    /// let read_back = Tags::from_pairs(vec![("user:42".into(), 3)]);
    /// assert_eq!(read_back, Tags::new(["user:42"]).with_generations(|_| 3));
    /// assert!(Tags::from_pairs(Vec::new()).is_empty());
    /// ```
    #[cfg(feature = "tags")]
    pub fn from_pairs(pairs: Vec<(Box<str>, u64)>) -> Self {
        if pairs.is_empty() {
            return Tags::NONE;
        }
        let list: Arc<[TagAt]> = pairs.into();
        let mut reg = registry().write().unwrap_or_else(|e| e.into_inner());
        if let Some(&id) = reg.by_content.get(&list) {
            return Tags(std::num::NonZeroU64::new(id));
        }
        reg.next += 1;
        let id = reg.next;
        reg.by_id.insert(id, list.clone());
        reg.by_content.insert(list, id);
        reg.order.push_back(id);
        while reg.order.len() > Self::MAX_LISTS {
            if let Some(old) = reg.order.pop_front() {
                if let Some(list) = reg.by_id.remove(&old) {
                    reg.by_content.remove(&list);
                }
            }
        }
        Tags(std::num::NonZeroU64::new(id))
    }

    /// Tags a tier read back, in a build that may lack the `tags` feature:
    /// `None` when `pairs` is not empty and this build cannot carry tags
    /// (the entry must then be refused: its tags cannot be checked).
    ///
    /// ```
    /// use cache_core::Tags;
    ///
    /// assert_eq!(Tags::try_from_pairs(Vec::new()), Some(Tags::NONE));
    /// let read_back = Tags::try_from_pairs(vec![("user:42".into(), 3)]);
    /// assert_eq!(read_back.is_some(), cfg!(feature = "tags"));
    /// ```
    pub fn try_from_pairs(pairs: Vec<(Box<str>, u64)>) -> Option<Self> {
        #[cfg(feature = "tags")]
        return Some(Tags::from_pairs(pairs));
        #[cfg(not(feature = "tags"))]
        return pairs.is_empty().then_some(Tags::NONE);
    }

    /// Whether there are no tags (always, without the `tags` feature).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The handle's number (equal lists, equal numbers), for caches of
    /// verdicts about them.
    #[inline]
    pub(crate) fn id(&self) -> Option<u64> {
        #[cfg(feature = "tags")]
        return self.0.map(std::num::NonZeroU64::get);
        #[cfg(not(feature = "tags"))]
        return self.0.map(|never| match never {});
    }

    /// The names and generations.
    ///
    /// ```
    /// # #[cfg(feature = "tags")] {
    /// let tags = cache_core::Tags::new(["user:42"]);
    /// for (name, generation) in tags.list().iter() {
    ///     assert_eq!((name, generation), ("user:42", 0));
    /// }
    /// # }
    /// ```
    pub fn list(&self) -> TagList {
        #[cfg(not(feature = "tags"))]
        return TagList(None);
        #[cfg(feature = "tags")]
        match self.0 {
            None => TagList(None),
            Some(id) => TagList(
                registry()
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .by_id
                    .get(&id.get())
                    .cloned(),
            ),
        }
    }

    /// Whether these are tags whose list the process has forgotten (more
    /// than [`Tags::MAX_LISTS`] lists were made since): an entry carrying
    /// them reads as absent.
    ///
    /// ```
    /// # #[cfg(feature = "tags")]
    /// assert!(!cache_core::Tags::new(["user:42"]).is_forgotten());
    /// assert!(!cache_core::Tags::NONE.is_forgotten());
    /// ```
    pub fn is_forgotten(&self) -> bool {
        !self.is_empty() && self.list().0.is_none()
    }

    /// How many tags.
    ///
    /// ```
    /// # #[cfg(feature = "tags")]
    /// assert_eq!(cache_core::Tags::new(["a", "b"]).len(), 2);
    /// assert_eq!(cache_core::Tags::NONE.len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.list().len()
    }

    /// Whether a tag called `name` is among them.
    ///
    /// ```
    /// # #[cfg(feature = "tags")] {
    /// let tags = cache_core::Tags::new(["user:42"]);
    /// assert!(tags.contains("user:42") && !tags.contains("user:7"));
    /// # }
    /// ```
    pub fn contains(&self, name: &str) -> bool {
        self.list().names().any(|n| n == name)
    }

    /// The same names with the generations `generation(name)` gives.
    ///
    /// ```
    /// # #[cfg(feature = "tags")] {
    /// let tags = cache_core::Tags::new(["a", "b"]).with_generations(|n| if n == "a" { 1 } else { 2 });
    /// assert_eq!(tags.list().iter().collect::<Vec<_>>(), [("a", 1), ("b", 2)]);
    /// # }
    /// ```
    #[must_use]
    pub fn with_generations(&self, generation: impl FnMut(&str) -> u64) -> Tags {
        #[cfg(not(feature = "tags"))]
        {
            let _ = generation;
            *self
        }
        #[cfg(feature = "tags")]
        self.stamped(generation)
    }

    #[cfg(feature = "tags")]
    fn stamped(&self, mut generation: impl FnMut(&str) -> u64) -> Tags {
        if self.is_forgotten() {
            // Still forgotten: still absent, never untagged.
            return *self;
        }
        Tags::from_pairs(
            self.list()
                .iter()
                .map(|(n, _)| (Box::from(n), generation(n)))
                .collect(),
        )
    }
}

impl std::fmt::Debug for Tags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.list().iter()).finish()
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Tags {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.is_forgotten() {
            return Err(serde::ser::Error::custom(
                "these tags were forgotten (more than Tags::MAX_LISTS lists): the entry is absent",
            ));
        }
        serializer.collect_seq(self.list().iter())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Tags {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pairs: Vec<(String, u64)> = serde::Deserialize::deserialize(deserializer)?;
        Tags::try_from_pairs(
            pairs
                .into_iter()
                .map(|(n, g)| (n.into_boxed_str(), g))
                .collect(),
        )
        .ok_or_else(|| serde::de::Error::custom(crate::tags::TAGS_UNSUPPORTED))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without the `tags` feature an entry is its value and expiry, as before
    /// tags existed (the in-process hit copies it); with it, 8 bytes more.
    #[test]
    fn tags_take_space_only_with_the_feature() {
        let tags = if cfg!(feature = "tags") { 8 } else { 0 };
        assert_eq!(std::mem::size_of::<Tags>(), tags);
        assert_eq!(
            std::mem::size_of::<Entry<String>>(),
            std::mem::size_of::<String>() + 8 + tags
        );
    }

    /// Tags a tier reads back are refused, not dropped, by a build that
    /// cannot carry them (the entry would outlive an `invalidate_tag`).
    #[test]
    fn tags_read_back_are_refused_only_without_the_feature() {
        assert_eq!(Tags::try_from_pairs(Vec::new()), Some(Tags::NONE));
        let read_back = Tags::try_from_pairs(vec![("user:42".into(), 3)]);
        if cfg!(feature = "tags") {
            let tags = read_back.expect("the feature carries tags");
            assert_eq!(tags.list().iter().collect::<Vec<_>>(), [("user:42", 3)]);
        } else {
            assert_eq!(read_back, None);
            assert!(Tags::NONE.is_empty() && Tags::NONE.list().is_empty());
        }
    }
}
