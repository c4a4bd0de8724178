//! [`Loader`]: the origin behind the last tier.

use std::fmt;
use std::future::Future;

use async_trait::async_trait;

use crate::{BoxError, Entry, MaybeSend, MaybeSync};

/// Loads values from the source of truth when every tier misses.
///
/// The loader decides each value's expiry (for a presigned URL: its own expiry
/// minus a safety margin). `Ok(None)` means "this key has no value"; with negative
/// caching on, the chain remembers that for a while.
///
/// ```
/// use std::time::Duration;
/// use cache_core::{loader_fn, BoxError, Clock, Entry, SystemClock};
///
/// let origin = loader_fn(|user: u64| async move {
///     let url = format!("https://img.example/{user}.png");
///     Ok::<_, BoxError>(Some(Entry::expiring_in(url, SystemClock.now(), Duration::from_secs(3600))))
/// });
/// # let _ = origin;
/// ```
#[cfg_attr(not(target_family = "wasm"), async_trait)]
#[cfg_attr(target_family = "wasm", async_trait(?Send))]
pub trait Loader<K, V>: MaybeSend + MaybeSync + 'static
where
    K: MaybeSend + MaybeSync + 'static,
    V: MaybeSend + 'static,
{
    /// The value for `key`, `None` if it has none.
    async fn load(&self, key: &K) -> Result<Option<Entry<V>>, BoxError>;

    /// The values for `keys`, in order. The default loads one by one; override it
    /// when the origin has a batch call.
    async fn load_many(&self, keys: &[K]) -> Result<Vec<Option<Entry<V>>>, BoxError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.load(key).await?);
        }
        Ok(out)
    }
}

/// A [`Loader`] made from an async closure taking the key by value. See [`loader_fn`].
pub struct FnLoader<F>(F);

impl<F> fmt::Debug for FnLoader<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnLoader")
    }
}

/// Wraps an async closure `Fn(K) -> Future<Output = Result<Option<Entry<V>>, BoxError>>`
/// as a [`Loader`].
pub fn loader_fn<F>(f: F) -> FnLoader<F> {
    FnLoader(f)
}

#[cfg_attr(not(target_family = "wasm"), async_trait)]
#[cfg_attr(target_family = "wasm", async_trait(?Send))]
impl<K, V, F, Fut> Loader<K, V> for FnLoader<F>
where
    K: Clone + MaybeSend + MaybeSync + 'static,
    V: MaybeSend + 'static,
    F: Fn(K) -> Fut + MaybeSend + MaybeSync + 'static,
    Fut: Future<Output = Result<Option<Entry<V>>, BoxError>> + MaybeSend,
{
    async fn load(&self, key: &K) -> Result<Option<Entry<V>>, BoxError> {
        (self.0)(key.clone()).await
    }
}
