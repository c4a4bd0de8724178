//! The chain's own stores: remembered "no value" answers (negative caching) and
//! the last values kept to serve while the origin fails (stale store). Both are
//! written only under their fence, like a tier.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::fences::KeyFence;
use super::Inner;
use crate::in_process::InProcessTier;
use crate::{
    ByteSize, CacheKey, Clock, Entry, EventKind, EventSource, FenceCheck, MaybeSend, MaybeSync,
    MemoryTier, Timestamp,
};

pub(crate) struct NegativeCache<K> {
    pub(crate) ttl: Duration,
    pub(crate) capacity: usize,
    pub(crate) map: Mutex<HashMap<K, Timestamp>>,
}

pub(crate) struct StaleStore<K, V> {
    pub(crate) grace: Duration,
    /// Holds entries with their expiry pushed out by `grace`.
    pub(crate) values: MemoryTier<K, V>,
}

impl<K, V> Inner<K, V>
where
    K: CacheKey,
    V: Clone + ByteSize + MaybeSend + MaybeSync + 'static,
{
    pub(super) fn negative_hit(&self, key: &K) -> bool {
        let Some(negative) = &self.negative else {
            return false;
        };
        let now = self.clock.now();
        let hit = {
            let mut map = negative.map.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(key) {
                Some(&until) if now < until => true,
                Some(_) => {
                    map.remove(key);
                    false
                }
                None => false,
            }
        };
        if hit {
            self.emit(
                EventKind::NegativeHit,
                EventSource::Chain,
                &key.key_str(),
                None,
                0,
                None,
            );
        }
        hit
    }

    /// Remembers that the origin has no value for `key`, unless `fence` no
    /// longer holds (checked under the map's lock, which `forget` also takes).
    pub(super) fn remember_negative(&self, key: &K, fence: &KeyFence<'_>) {
        let Some(negative) = &self.negative else {
            return;
        };
        let now = self.clock.now();
        let mut map = negative.map.lock().unwrap_or_else(|e| e.into_inner());
        if !fence.holds() {
            return;
        }
        if map.len() >= negative.capacity {
            map.retain(|_, until| now < *until);
            if map.len() >= negative.capacity {
                map.clear();
            }
        }
        map.insert(key.clone(), now.saturating_add(negative.ttl));
    }

    /// Keeps `entry` to serve while the origin fails, unless `fence` no longer
    /// holds (checked under the store's lock).
    pub(super) fn remember_stale(
        &self,
        key: &K,
        entry: &Entry<V>,
        now: Timestamp,
        fence: &dyn FenceCheck,
    ) {
        if let Some(stale) = &self.stale {
            let mut kept = Entry::new(
                entry.value.clone(),
                entry.expires_at.saturating_add(stale.grace),
            );
            kept.tags = entry.tags;
            stale.values.put_entry_if(key, kept, now, || fence.holds());
        }
    }

    pub(super) fn stale_value(&self, key: &K) -> Option<Entry<V>> {
        let stale = self.stale.as_ref()?;
        let kept = stale.values.get_entry(key, self.clock.now())?;
        // A tag bumped since, or not known here (no waiting on this path):
        // not served.
        if !kept.tags.is_empty()
            && !matches!(
                self.tags.check_now(&kept.tags),
                super::tags::TagCheck::Current
            )
        {
            return None;
        }
        let mut entry = Entry::new(kept.value, kept.expires_at.saturating_sub(stale.grace));
        entry.tags = kept.tags;
        Some(entry)
    }
}
