//! [`MemoryTier`]: an in-process LRU tier bounded by entry count and bytes.
//! Needs no threads or timers, so it is the memory tier in the browser too.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::in_process::InProcessTier;
use crate::{ByteSize, CacheKey, CacheLayer, Clock, Entry, Result, TierOptions, Timestamp};

const NIL: usize = usize::MAX;

struct Node<K, V> {
    key: K,
    entry: Entry<V>,
    size: usize,
    prev: usize,
    next: usize,
}

/// A slab-backed doubly linked list in recency order plus a hash index.
/// `head` is the most recently used node, `tail` the least.
struct Lru<K, V> {
    map: HashMap<K, usize>,
    nodes: Vec<Option<Node<K, V>>>,
    free: Vec<usize>,
    head: usize,
    tail: usize,
    bytes: usize,
}

impl<K: CacheKey, V> Lru<K, V> {
    fn new() -> Self {
        Lru {
            map: HashMap::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            bytes: 0,
        }
    }

    fn node(&self, idx: usize) -> &Node<K, V> {
        match self.nodes.get(idx) {
            Some(Some(n)) => n,
            _ => unreachable!("LRU index {idx} points at no node"),
        }
    }

    fn node_mut(&mut self, idx: usize) -> &mut Node<K, V> {
        match self.nodes.get_mut(idx) {
            Some(Some(n)) => n,
            _ => unreachable!("LRU index {idx} points at no node"),
        }
    }

    fn unlink(&mut self, idx: usize) {
        let (prev, next) = {
            let n = self.node(idx);
            (n.prev, n.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.node_mut(prev).next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.node_mut(next).prev = prev;
        }
    }

    fn push_front(&mut self, idx: usize) {
        let old_head = self.head;
        {
            let n = self.node_mut(idx);
            n.prev = NIL;
            n.next = old_head;
        }
        if old_head != NIL {
            self.node_mut(old_head).prev = idx;
        }
        self.head = idx;
        if self.tail == NIL {
            self.tail = idx;
        }
    }

    fn touch(&mut self, idx: usize) {
        if self.head != idx {
            self.unlink(idx);
            self.push_front(idx);
        }
    }

    fn remove_idx(&mut self, idx: usize) -> Node<K, V> {
        self.unlink(idx);
        let node = match self.nodes.get_mut(idx).and_then(Option::take) {
            Some(n) => n,
            None => unreachable!("LRU index {idx} points at no node"),
        };
        self.free.push(idx);
        self.map.remove(&node.key);
        self.bytes -= node.size;
        node
    }

    fn remove(&mut self, key: &K) -> Option<Node<K, V>> {
        let idx = *self.map.get(key)?;
        Some(self.remove_idx(idx))
    }

    fn insert(&mut self, key: K, entry: Entry<V>, size: usize) {
        self.remove(&key);
        let node = Node {
            key: key.clone(),
            entry,
            size,
            prev: NIL,
            next: NIL,
        };
        let idx = match self.free.pop() {
            Some(idx) => {
                self.nodes[idx] = Some(node);
                idx
            }
            None => {
                self.nodes.push(Some(node));
                self.nodes.len() - 1
            }
        };
        self.map.insert(key, idx);
        self.bytes += size;
        self.push_front(idx);
    }

    fn evict_to(&mut self, max_entries: usize, max_bytes: usize) {
        while (self.map.len() > max_entries || self.bytes > max_bytes) && self.tail != NIL {
            self.remove_idx(self.tail);
        }
    }

    fn clear(&mut self) {
        self.map.clear();
        self.nodes.clear();
        self.free.clear();
        self.head = NIL;
        self.tail = NIL;
        self.bytes = 0;
    }
}

/// An in-memory LRU tier, bounded by entry count and by total bytes
/// (key length plus [`ByteSize`] of the value).
///
/// Reads check expiry against the injected [`Clock`]; expired entries are dropped
/// when met. Works the same on native and wasm32.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use cache_core::{CacheLayer, Clock, Entry, ManualClock, MemoryTier};
///
/// # futures_executor::block_on(async {
/// let clock = ManualClock::new();
/// let tier = MemoryTier::builder()
///     .max_entries(2)
///     .max_bytes(1 << 20)
///     .ttl(Duration::from_secs(300))
///     .clock(clock.clone())
///     .build();
/// let day = Entry::expiring_in(b"png".to_vec(), clock.now(), Duration::from_secs(86_400));
/// for k in ["a", "b", "c"] {
///     tier.put(&k.to_string(), day.clone()).await?;
/// }
/// assert!(tier.get(&"a".to_string()).await?.is_none(), "least recently used went first");
/// clock.advance(Duration::from_secs(300));
/// assert!(tier.get(&"c".to_string()).await?.is_none(), "the tier TTL caps the entry");
/// # Ok::<_, cache_core::Error>(()) }).unwrap();
/// ```
pub struct MemoryTier<K, V> {
    options: TierOptions,
    state: Mutex<Lru<K, V>>,
}

impl<K, V> fmt::Debug for MemoryTier<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.options
            .debug_fields(&mut f.debug_struct("MemoryTier"))
            .finish_non_exhaustive()
    }
}

impl<K: CacheKey, V: Clone + ByteSize> MemoryTier<K, V> {
    /// A builder with the defaults: 10,000 entries, 64 MiB, no tier TTL, the
    /// system clock, name `"memory"`.
    pub fn builder() -> MemoryTierBuilder<K, V> {
        MemoryTierBuilder::default()
    }

    /// A tier with the defaults (see [`MemoryTier::builder`]).
    pub fn new() -> Self {
        Self::builder().build()
    }

    fn lock(&self) -> MutexGuard<'_, Lru<K, V>> {
        // Nothing panics while the lock is held, but a poisoned lock must not take
        // the cache down either: the structure is consistent between operations.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of entries held (expired ones included until they are met).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether the tier holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total bytes held, as counted against the byte budget.
    pub fn weighted_bytes(&self) -> usize {
        self.lock().bytes
    }

    fn size_of(key: &K, value: &V) -> usize {
        key.key_str().len() + value.byte_size()
    }

    pub(crate) fn remove_key(&self, key: &K) -> bool {
        self.lock().remove(key).is_some()
    }

    pub(crate) fn retain_keys(&self, keep: impl Fn(&K) -> bool) {
        let mut lru = self.lock();
        let doomed: Vec<usize> = lru
            .map
            .iter()
            .filter(|(k, _)| !keep(k))
            .map(|(_, &idx)| idx)
            .collect();
        for idx in doomed {
            lru.remove_idx(idx);
        }
    }
}

impl<K: CacheKey, V: Clone + ByteSize> Default for MemoryTier<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds a [`MemoryTier`]. Its settings are a [`TierOptions`].
#[must_use]
pub struct MemoryTierBuilder<K, V> {
    marker: PhantomData<fn() -> (K, V)>,
    options: TierOptions,
}

impl<K, V> fmt::Debug for MemoryTierBuilder<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.options
            .debug_fields(&mut f.debug_struct("MemoryTierBuilder"))
            .finish_non_exhaustive()
    }
}

impl<K, V> Default for MemoryTierBuilder<K, V> {
    fn default() -> Self {
        MemoryTierBuilder {
            marker: PhantomData,
            options: TierOptions::default(),
        }
    }
}

impl<K: CacheKey, V: Clone + ByteSize> MemoryTierBuilder<K, V> {
    /// The name used in errors and metrics.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.options = self.options.with_name(name);
        self
    }
    /// The clock reads are checked against.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.options = self.options.with_clock(clock);
        self
    }
    /// The clock, already shared.
    pub fn shared_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.options = self.options.with_shared_clock(clock);
        self
    }
    /// The tier's own TTL: entries are kept at most this long.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.options = self.options.with_ttl(ttl);
        self
    }
    /// The most entries kept (at least 1).
    pub fn max_entries(mut self, n: usize) -> Self {
        self.options = self.options.with_max_entries(n);
        self
    }
    /// The most bytes kept; a single larger value is not stored.
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.options = self.options.with_max_bytes(bytes);
        self
    }
    /// The tier.
    pub fn build(self) -> MemoryTier<K, V> {
        MemoryTier {
            options: self.options,
            state: Mutex::new(Lru::new()),
        }
    }
}

impl<K: CacheKey, V: Clone + ByteSize> InProcessTier<K, V> for MemoryTier<K, V> {
    fn options(&self) -> &TierOptions {
        &self.options
    }

    fn get_entry(&self, key: &K, now: Timestamp) -> Option<Entry<V>> {
        let mut lru = self.lock();
        let idx = *lru.map.get(key)?;
        if lru.node(idx).entry.is_expired(now) {
            lru.remove_idx(idx);
            return None;
        }
        lru.touch(idx);
        Some(lru.node(idx).entry.clone())
    }

    /// Writes `entry` if `holds()` is true when checked under the tier's lock
    /// (so no removal can come between the check and the write); `false` when
    /// refused, leaving the tier as it was.
    fn put_entry_if(
        &self,
        key: &K,
        entry: Entry<V>,
        now: Timestamp,
        holds: impl FnOnce() -> bool,
    ) -> bool {
        let entry = entry.capped_by_ttl(now, self.options.ttl);
        let size = Self::size_of(key, &entry.value);
        let mut lru = self.lock();
        if !holds() {
            return false;
        }
        if entry.is_expired(now) || size > self.options.max_bytes {
            // The new value cannot be kept; the old one must not survive it.
            lru.remove(key);
            return true;
        }
        lru.insert(key.clone(), entry, size);
        lru.evict_to(self.options.max_entries, self.options.max_bytes);
        true
    }
}

#[cfg_attr(not(target_family = "wasm"), async_trait)]
#[cfg_attr(target_family = "wasm", async_trait(?Send))]
impl<K, V> CacheLayer<K, V> for MemoryTier<K, V>
where
    K: CacheKey,
    V: Clone + ByteSize + crate::MaybeSend + crate::MaybeSync + 'static,
{
    fn name(&self) -> &str {
        &self.options.name
    }

    fn get_ready(&self, key: &K, now: Timestamp) -> Option<Result<Option<Entry<V>>>> {
        Some(Ok(self.get_entry(key, now)))
    }

    async fn get(&self, key: &K) -> Result<Option<Entry<V>>> {
        Ok(self.get_entry(key, self.options.clock.now()))
    }

    async fn put(&self, key: &K, entry: Entry<V>) -> Result<()> {
        self.put_entry_if(key, entry, self.options.clock.now(), || true);
        Ok(())
    }

    async fn put_fenced(
        &self,
        key: &K,
        entry: Entry<V>,
        fence: &crate::Fence<'_>,
    ) -> Result<crate::Fill> {
        Ok(self.put_fenced_now(key, entry, fence))
    }

    async fn put_many_fenced(
        &self,
        entries: Vec<(K, Entry<V>)>,
        fences: &[crate::Fence<'_>],
    ) -> Result<Vec<crate::Fill>> {
        Ok(self.put_many_fenced_now(entries, fences))
    }

    fn fenced_writes_are_atomic(&self) -> bool {
        true
    }

    async fn remove(&self, key: &K) -> Result<bool> {
        Ok(self.remove_key(key))
    }

    async fn remove_prefix(&self, prefix: &str) -> Result<()> {
        self.retain_keys(|k| !k.key_str().starts_with(prefix));
        Ok(())
    }

    async fn clear(&self) -> Result<()> {
        self.lock().clear();
        Ok(())
    }

    async fn get_many(&self, keys: &[K]) -> Result<Vec<Option<Entry<V>>>> {
        Ok(self.get_many_now(keys))
    }

    async fn put_many(&self, entries: Vec<(K, Entry<V>)>) -> Result<()> {
        self.put_many_now(entries);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ManualClock;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures_executor::block_on(f)
    }

    #[test]
    fn evicts_least_recently_used_by_count() {
        let clock = ManualClock::new();
        let tier: MemoryTier<String, String> = MemoryTier::builder()
            .max_entries(2)
            .clock(clock.clone())
            .build();
        let e = |v: &str| Entry::expiring_in(v.to_string(), clock.now(), Duration::from_secs(60));
        block_on(async {
            tier.put(&"a".into(), e("1")).await.unwrap();
            tier.put(&"b".into(), e("2")).await.unwrap();
            // Reading "a" makes "b" the least recently used.
            assert!(tier.get(&"a".into()).await.unwrap().is_some());
            tier.put(&"c".into(), e("3")).await.unwrap();
            assert!(tier.get(&"b".into()).await.unwrap().is_none());
            assert!(tier.get(&"a".into()).await.unwrap().is_some());
            assert!(tier.get(&"c".into()).await.unwrap().is_some());
            assert_eq!(tier.len(), 2);
        });
    }

    #[test]
    fn evicts_by_bytes_and_refuses_oversized_values() {
        let clock = ManualClock::new();
        let tier: MemoryTier<String, Vec<u8>> = MemoryTier::builder()
            .max_bytes(100)
            .clock(clock.clone())
            .build();
        let e = |n: usize| Entry::expiring_in(vec![0u8; n], clock.now(), Duration::from_secs(60));
        block_on(async {
            tier.put(&"a".into(), e(40)).await.unwrap();
            tier.put(&"b".into(), e(40)).await.unwrap();
            assert_eq!(tier.weighted_bytes(), 82);
            tier.put(&"c".into(), e(40)).await.unwrap();
            assert!(tier.get(&"a".into()).await.unwrap().is_none());
            assert!(tier.weighted_bytes() <= 100);
            // Too big to ever fit: not stored, and the old value is gone too.
            tier.put(&"b".into(), e(500)).await.unwrap();
            assert!(tier.get(&"b".into()).await.unwrap().is_none());
            assert_eq!(tier.weighted_bytes(), 41);
        });
    }

    #[test]
    fn slab_slots_are_reused() {
        let tier: MemoryTier<u64, u64> = MemoryTier::builder().max_entries(4).build();
        block_on(async {
            for i in 0..1000u64 {
                tier.put(&i, Entry::new(i, Timestamp::MAX)).await.unwrap();
            }
        });
        assert_eq!(tier.len(), 4);
        assert!(tier.lock().nodes.len() <= 5);
    }
}
