//! The [`CacheLayer`] trait and the `Send`-outside-wasm plumbing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;

use crate::{Entry, Error, Fence, Fill, Operation, Result, Stamp, Timestamp};

/// `Send` on native targets, nothing on wasm32, where JS values are `!Send` and
/// everything runs on one thread. (The matrix-rust-sdk pattern.)
#[cfg(not(target_family = "wasm"))]
pub trait MaybeSend: Send {}
#[cfg(not(target_family = "wasm"))]
impl<T: Send + ?Sized> MaybeSend for T {}
/// `Send` on native targets, nothing on wasm32, where JS values are `!Send` and
/// everything runs on one thread. (The matrix-rust-sdk pattern.)
#[cfg(target_family = "wasm")]
pub trait MaybeSend {}
#[cfg(target_family = "wasm")]
impl<T: ?Sized> MaybeSend for T {}

/// `Sync` on native targets, nothing on wasm32.
#[cfg(not(target_family = "wasm"))]
pub trait MaybeSync: Sync {}
#[cfg(not(target_family = "wasm"))]
impl<T: Sync + ?Sized> MaybeSync for T {}
/// `Sync` on native targets, nothing on wasm32.
#[cfg(target_family = "wasm")]
pub trait MaybeSync {}
#[cfg(target_family = "wasm")]
impl<T: ?Sized> MaybeSync for T {}

/// A boxed future that is `Send` on native targets and not on wasm32.
#[cfg(not(target_family = "wasm"))]
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A boxed future that is `Send` on native targets and not on wasm32.
#[cfg(target_family = "wasm")]
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// One cache tier: a store of [`Entry`] values keyed by `K`.
///
/// # Contract
///
/// - `get` never returns an entry at or after its `expires_at`, whatever the
///   backend still holds: every read is checked against the tier's clock.
/// - `put` stores the entry until `min(entry.expires_at, now + tier_ttl)` when the
///   tier has its own TTL; putting an already-expired entry leaves the key absent.
/// - A key reaches only its own entry: stores with key syntax encode keys (see
///   [`crate::key`]) and keep to their namespace.
/// - A value the backend holds but cannot decode is a miss (and is removed), not
///   an error for the reader.
/// - `remove` says whether an entry was removed. `remove_prefix` and `clear` touch
///   only this tier's own keys.
/// - Errors are [`Error`]s; a tier never panics on bad input or a failing backend.
/// - `put_fenced` writes only while its [`Fence`] holds, judged at the moment of
///   the write (see [`crate::fence`]); a refused write leaves the tier as it was.
///   Tiers that stamp (`get_stamped` hands out [`Stamp`]s) also refuse a stamp
///   that a removal or write-through has voided since.
///
/// The futures are `Send` on native targets and `?Send` on wasm32. The trait is
/// object-safe: chains hold tiers as `Arc<dyn CacheLayer<K, V>>`.
///
/// Every tier in this workspace runs the shared conformance suite
/// (`cache_core::conformance`, feature `conformance`).
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use cache_core::{CacheLayer, Clock, Entry, ManualClock, MemoryTier};
///
/// # futures_executor::block_on(async {
/// let clock = ManualClock::new();
/// let tier: Arc<dyn CacheLayer<String, String>> =
///     Arc::new(MemoryTier::builder().clock(clock.clone()).build());
/// let key = "avatar:42".to_string();
/// tier.put(&key, Entry::expiring_in("v1".into(), clock.now(), Duration::from_secs(60))).await?;
/// assert_eq!(tier.get(&key).await?.map(|e| e.value).as_deref(), Some("v1"));
/// clock.advance(Duration::from_secs(60));
/// assert!(tier.get(&key).await?.is_none());
/// # Ok::<_, cache_core::Error>(()) }).unwrap();
/// ```
#[cfg_attr(not(target_family = "wasm"), async_trait)]
#[cfg_attr(target_family = "wasm", async_trait(?Send))]
pub trait CacheLayer<K, V>: MaybeSend + MaybeSync
where
    K: MaybeSend + MaybeSync + 'static,
    V: MaybeSend + 'static,
{
    /// A short name for errors and metrics, e.g. `"memory"` or `"redis"`.
    fn name(&self) -> &str;

    /// The unexpired entry for `key`, if any.
    async fn get(&self, key: &K) -> Result<Option<Entry<V>>>;

    /// The same answer as [`CacheLayer::get`] at time `now`, given at once by
    /// tiers that never wait (in-process memory); `None` means "cannot answer
    /// without waiting: call `get`".
    ///
    /// The chain serves tier-0 hits through it without allocating a future, and
    /// passes the time it read from its own clock, so one hit reads the clock once.
    /// A tier that implements it must give exactly what `get` would give if its
    /// clock read `now`: in particular, never an entry expired at `now`. The
    /// default returns `None`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_core::{CacheLayer, Clock, Entry, ManualClock, MemoryTier};
    ///
    /// # futures_executor::block_on(async {
    /// let clock = ManualClock::new();
    /// let tier = MemoryTier::builder().clock(clock.clone()).build();
    /// let key = "user:1".to_string();
    /// tier.put(&key, Entry::expiring_in(1u32, clock.now(), Duration::from_secs(60))).await?;
    ///
    /// let hit = tier.get_ready(&key, clock.now()).expect("memory never waits")?;
    /// assert_eq!(hit.map(|e| e.value), Some(1));
    /// let later = clock.now().saturating_add(Duration::from_secs(60));
    /// assert!(tier.get_ready(&key, later).expect("memory never waits")?.is_none());
    /// # Ok::<(), cache_core::Error>(())
    /// # }).unwrap();
    /// ```
    fn get_ready(&self, key: &K, now: Timestamp) -> Option<Result<Option<Entry<V>>>> {
        let _ = (key, now);
        None
    }

    /// Stores `entry` under `key`, replacing any previous entry.
    async fn put(&self, key: &K, entry: Entry<V>) -> Result<()>;

    /// Like [`CacheLayer::get`], and on a miss also the [`Stamp`] a later
    /// [`CacheLayer::put_fenced`] of this key must present. The default stamps
    /// nothing ([`Stamp::NONE`]): right for in-process tiers, which the fence's
    /// in-process check covers.
    async fn get_stamped(&self, key: &K) -> Result<(Option<Entry<V>>, Stamp)> {
        Ok((self.get(key).await?, Stamp::NONE))
    }

    /// The [`Stamp`] a later [`CacheLayer::put_fenced`] of `key` must present,
    /// whether or not the tier holds the key: what a background refresh of a
    /// value the tier still holds takes before it loads. The default stamps
    /// nothing ([`Stamp::NONE`]).
    async fn stamp(&self, key: &K) -> Result<Stamp> {
        let _ = key;
        Ok(Stamp::NONE)
    }

    /// [`CacheLayer::get_stamped`] for many keys, in order. The default calls
    /// [`CacheLayer::get_many`] and stamps nothing.
    async fn get_many_stamped(&self, keys: &[K]) -> Result<Vec<(Option<Entry<V>>, Stamp)>> {
        Ok(self
            .get_many(keys)
            .await?
            .into_iter()
            .map(|e| (e, Stamp::NONE))
            .collect())
    }

    /// A conditional write: stores `entry` only if `fence` still holds at the
    /// moment of the write, and its stamp is still current for tiers that stamp.
    /// [`Fill::Refused`] means nothing was written.
    ///
    /// The default checks the fence, then calls [`CacheLayer::put`]: the check and
    /// the write are not one atomic step, so a chain serialises such a tier's
    /// fills with its removals (see [`CacheLayer::fenced_writes_are_atomic`]).
    /// Tiers that can check under their own lock, or in the backend (a Lua
    /// script), override it and say so.
    async fn put_fenced(&self, key: &K, entry: Entry<V>, fence: &Fence<'_>) -> Result<Fill> {
        if !fence.holds() {
            return Ok(Fill::Refused);
        }
        self.put(key, entry).await?;
        Ok(Fill::Written)
    }

    /// [`CacheLayer::put_fenced`] for many entries; `fences[i]` guards
    /// `entries[i]`. The default writes them one by one.
    async fn put_many_fenced(
        &self,
        entries: Vec<(K, Entry<V>)>,
        fences: &[Fence<'_>],
    ) -> Result<Vec<Fill>> {
        let mut out = Vec::with_capacity(entries.len());
        for ((key, entry), fence) in entries.into_iter().zip(fences) {
            out.push(self.put_fenced(&key, entry, fence).await?);
        }
        Ok(out)
    }

    /// Whether [`CacheLayer::put_fenced`] checks its fence and writes in one
    /// atomic step with respect to `remove`, `remove_prefix` and `clear` (under
    /// the tier's lock, or in the backend). When `false` (the default) a chain
    /// keeps this tier's fills and removals apart itself: a removal waits for the
    /// fills already under way, and a fill that meets a removal under way is
    /// refused.
    fn fenced_writes_are_atomic(&self) -> bool {
        false
    }

    /// Removes `key`; `true` if an entry was there.
    async fn remove(&self, key: &K) -> Result<bool>;

    /// Like [`CacheLayer::remove`], and hands back the [`Stamp`] a write that
    /// follows this removal (a write-through) presents to
    /// [`CacheLayer::put_fenced`]: a stamping tier's removal voids every earlier
    /// stamp and the returned one is current until the next removal or
    /// write-through. The default stamps nothing.
    async fn remove_stamped(&self, key: &K) -> Result<(bool, Stamp)> {
        Ok((self.remove(key).await?, Stamp::NONE))
    }

    /// Removes every key whose string form starts with `prefix`.
    ///
    /// The default says the operation is unsupported.
    async fn remove_prefix(&self, prefix: &str) -> Result<()> {
        let _ = prefix;
        Err(Error::Unsupported {
            tier: self.name().to_owned(),
            operation: Operation::RemovePrefix,
        })
    }

    /// Removes every entry of this tier (and only of this tier).
    async fn clear(&self) -> Result<()>;

    /// The entries for `keys`, in order. The default calls [`CacheLayer::get`] for
    /// each key; tiers with a batch command override it (one round trip).
    async fn get_many(&self, keys: &[K]) -> Result<Vec<Option<Entry<V>>>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get(key).await?);
        }
        Ok(out)
    }

    /// Stores every entry. The default calls [`CacheLayer::put`] for each.
    async fn put_many(&self, entries: Vec<(K, Entry<V>)>) -> Result<()> {
        for (key, entry) in entries {
            self.put(&key, entry).await?;
        }
        Ok(())
    }
}

// The forwarding impls are written out by hand, in async_trait's desugared form,
// so that they hand back the inner tier's future as is. Written with
// `#[async_trait]` they would box a second future around it on every call, and
// method resolution picks these impls for every `Arc<dyn CacheLayer>`.
macro_rules! forward_layer {
    ($($ptr:ty),*) => {$(
        impl<K, V, T> CacheLayer<K, V> for $ptr
        where
            K: MaybeSend + MaybeSync + 'static,
            V: MaybeSend + 'static,
            T: CacheLayer<K, V> + ?Sized,
        {
            #[inline]
            fn name(&self) -> &str {
                (**self).name()
            }
            #[inline]
            fn get_ready(&self, key: &K, now: Timestamp) -> Option<Result<Option<Entry<V>>>> {
                (**self).get_ready(key, now)
            }
            #[inline]
            fn fenced_writes_are_atomic(&self) -> bool {
                (**self).fenced_writes_are_atomic()
            }
            #[inline]
            fn get_stamped<'s, 'k, 'f>(
                &'s self,
                key: &'k K,
            ) -> BoxFuture<'f, Result<(Option<Entry<V>>, Stamp)>>
            where
                's: 'f,
                'k: 'f,
                Self: 'f,
            {
                (**self).get_stamped(key)
            }
            #[inline]
            fn stamp<'s, 'k, 'f>(&'s self, key: &'k K) -> BoxFuture<'f, Result<Stamp>>
            where
                's: 'f,
                'k: 'f,
                Self: 'f,
            {
                (**self).stamp(key)
            }
            #[inline]
            fn get_many_stamped<'s, 'k, 'f>(
                &'s self,
                keys: &'k [K],
            ) -> BoxFuture<'f, Result<Vec<(Option<Entry<V>>, Stamp)>>>
            where
                's: 'f,
                'k: 'f,
                Self: 'f,
            {
                (**self).get_many_stamped(keys)
            }
            #[inline]
            fn put_fenced<'s, 'k, 'r, 'c, 'f>(
                &'s self,
                key: &'k K,
                entry: Entry<V>,
                fence: &'r Fence<'c>,
            ) -> BoxFuture<'f, Result<Fill>>
            where
                's: 'f,
                'k: 'f,
                'r: 'f,
                'c: 'f,
                Self: 'f,
            {
                (**self).put_fenced(key, entry, fence)
            }
            #[inline]
            fn put_many_fenced<'s, 'r, 'c, 'f>(
                &'s self,
                entries: Vec<(K, Entry<V>)>,
                fences: &'r [Fence<'c>],
            ) -> BoxFuture<'f, Result<Vec<Fill>>>
            where
                's: 'f,
                'r: 'f,
                'c: 'f,
                Self: 'f,
            {
                (**self).put_many_fenced(entries, fences)
            }
            #[inline]
            fn remove_stamped<'s, 'k, 'f>(&'s self, key: &'k K) -> BoxFuture<'f, Result<(bool, Stamp)>>
            where
                's: 'f,
                'k: 'f,
                Self: 'f,
            {
                (**self).remove_stamped(key)
            }
            #[inline]
            fn get<'s, 'k, 'f>(&'s self, key: &'k K) -> BoxFuture<'f, Result<Option<Entry<V>>>>
            where
                's: 'f,
                'k: 'f,
                Self: 'f,
            {
                (**self).get(key)
            }
            #[inline]
            fn put<'s, 'k, 'f>(&'s self, key: &'k K, entry: Entry<V>) -> BoxFuture<'f, Result<()>>
            where
                's: 'f,
                'k: 'f,
                Self: 'f,
            {
                (**self).put(key, entry)
            }
            #[inline]
            fn remove<'s, 'k, 'f>(&'s self, key: &'k K) -> BoxFuture<'f, Result<bool>>
            where
                's: 'f,
                'k: 'f,
                Self: 'f,
            {
                (**self).remove(key)
            }
            #[inline]
            fn remove_prefix<'s, 'p, 'f>(&'s self, prefix: &'p str) -> BoxFuture<'f, Result<()>>
            where
                's: 'f,
                'p: 'f,
                Self: 'f,
            {
                (**self).remove_prefix(prefix)
            }
            #[inline]
            fn clear<'s, 'f>(&'s self) -> BoxFuture<'f, Result<()>>
            where
                's: 'f,
                Self: 'f,
            {
                (**self).clear()
            }
            #[inline]
            fn get_many<'s, 'k, 'f>(
                &'s self,
                keys: &'k [K],
            ) -> BoxFuture<'f, Result<Vec<Option<Entry<V>>>>>
            where
                's: 'f,
                'k: 'f,
                Self: 'f,
            {
                (**self).get_many(keys)
            }
            #[inline]
            fn put_many<'s, 'f>(&'s self, entries: Vec<(K, Entry<V>)>) -> BoxFuture<'f, Result<()>>
            where
                's: 'f,
                Self: 'f,
            {
                (**self).put_many(entries)
            }
        }
    )*};
}
forward_layer!(&T, Arc<T>, Box<T>);
