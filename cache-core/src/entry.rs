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
    /// (see [`Tags`]); empty for most entries, and then free.
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
    /// assert_eq!(entry.tags.names().collect::<Vec<_>>(), ["user:42", "team:7"]);
    /// ```
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
            tags: self.tags.clone(),
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
/// Most entries have no tags; then `Tags` is one null pointer (a thin one:
/// entries are moved by value on the hit path) and costs a read nothing but
/// that check. Generations are set by the chain; a value
/// given to the chain (to `put`, or from a loader) carries names only, see
/// [`Entry::with_tags`].
///
/// ```
/// use cache_core::Tags;
///
/// let tags = Tags::new(["user:42"]);
/// assert_eq!(tags.iter().collect::<Vec<_>>(), [("user:42", 0)]);
/// let read_at = tags.with_generations(|_| 3);
/// assert_eq!(read_at.iter().collect::<Vec<_>>(), [("user:42", 3)]);
/// assert!(Tags::NONE.is_empty());
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Tags(Option<Arc<Vec<TagAt>>>);

/// One tag's name and the generation it was read at.
type TagAt = (Box<str>, u64);

impl Tags {
    /// No tags.
    pub const NONE: Tags = Tags(None);

    /// `names`, each at generation 0, without duplicates (in first-seen order).
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
    pub fn from_pairs(pairs: Vec<(Box<str>, u64)>) -> Self {
        if pairs.is_empty() {
            Tags::NONE
        } else {
            Tags(Some(Arc::new(pairs)))
        }
    }

    /// Whether there are no tags.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// How many tags.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |t| t.len())
    }

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

    /// Whether a tag called `name` is among them.
    pub fn contains(&self, name: &str) -> bool {
        self.names().any(|n| n == name)
    }

    /// The same names with the generations `generation(name)` gives.
    #[must_use]
    pub fn with_generations(&self, mut generation: impl FnMut(&str) -> u64) -> Tags {
        Tags::from_pairs(
            self.iter()
                .map(|(n, _)| (Box::from(n), generation(n)))
                .collect(),
        )
    }
}

impl std::fmt::Debug for Tags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Tags {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Tags {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pairs: Vec<(String, u64)> = serde::Deserialize::deserialize(deserializer)?;
        Ok(Tags::from_pairs(
            pairs
                .into_iter()
                .map(|(n, g)| (n.into_boxed_str(), g))
                .collect(),
        ))
    }
}
