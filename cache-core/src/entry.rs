//! [`Entry`]: a value with its absolute expiry.

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
}

impl<V> Entry<V> {
    /// An entry valid until `expires_at` (exclusive).
    pub fn new(value: V, expires_at: Timestamp) -> Self {
        Entry { value, expires_at }
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
        }
    }

    /// Borrows the value, keeping the expiry.
    pub fn as_ref(&self) -> Entry<&V> {
        Entry {
            value: &self.value,
            expires_at: self.expires_at,
        }
    }
}
