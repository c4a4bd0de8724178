//! [`FaultTier`]: wraps a tier and fails, delays or hangs on demand, for tests.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::{
    CacheLayer, DefaultTimer, Entry, Error, MaybeSend, MaybeSync, Operation, Result, Timer,
};

#[derive(Debug, Default)]
struct FaultState {
    failing: AtomicBool,
    fail_next: AtomicUsize,
    hanging: AtomicBool,
    delay_ms: AtomicU64,
    calls: AtomicU64,
    injected: AtomicU64,
    only: Mutex<Option<Vec<Operation>>>,
}

/// The switches of a [`FaultTier`]. Clones control the same tier, so a test keeps
/// one while the chain owns the tier.
///
/// ```
/// use cache_core::{FaultTier, MemoryTier};
/// let (tier, faults) = FaultTier::new(MemoryTier::<String, String>::new());
/// faults.set_failing(true);
/// faults.heal();
/// assert_eq!(faults.calls(), 0);
/// # drop(tier);
/// ```
#[derive(Clone, Debug, Default)]
pub struct FaultHandle {
    state: Arc<FaultState>,
}

impl FaultHandle {
    /// Every call fails (until set back to `false`).
    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }
    /// The next `n` calls fail.
    pub fn fail_next(&self, n: usize) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }
    /// Every call hangs forever (until set back to `false`; calls already hanging
    /// stay hung).
    pub fn set_hanging(&self, hanging: bool) {
        self.state.hanging.store(hanging, Ordering::SeqCst);
    }
    /// Every call waits `delay` before running.
    pub fn set_delay(&self, delay: Option<Duration>) {
        let ms = delay.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }
    /// Faults apply only to these operations (`None`: to all).
    pub fn only(&self, operations: Option<&[Operation]>) {
        let mut only = self.state.only.lock().unwrap_or_else(|e| e.into_inner());
        *only = operations.map(<[Operation]>::to_vec);
    }
    /// Turns every fault off.
    pub fn heal(&self) {
        self.set_failing(false);
        self.fail_next(0);
        self.set_hanging(false);
        self.set_delay(None);
        self.only(None);
    }
    /// How many calls reached the wrapper.
    pub fn calls(&self) -> u64 {
        self.state.calls.load(Ordering::SeqCst)
    }
    /// How many calls were failed on purpose.
    pub fn injected_failures(&self) -> u64 {
        self.state.injected.load(Ordering::SeqCst)
    }

    fn applies(&self, op: Operation) -> bool {
        let only = self.state.only.lock().unwrap_or_else(|e| e.into_inner());
        only.as_ref().is_none_or(|ops| ops.contains(&op))
    }

    fn should_fail(&self) -> bool {
        if self.state.failing.load(Ordering::SeqCst) {
            return true;
        }
        self.state
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// The error a [`FaultTier`] injects.
#[derive(Debug, thiserror::Error)]
#[error("fault injected into {operation}")]
pub struct InjectedFault {
    /// The operation that was failed.
    pub operation: Operation,
}

/// A tier wrapper that fails, delays or hangs on demand, for tests of fail-open
/// reads, timeouts, circuit breakers and invalidation reports.
///
/// `Display`/`name()` show the nesting: `fault(memory)`.
///
/// # Example
///
/// ```
/// use cache_core::{CacheLayer, FaultTier, MemoryTier};
///
/// # futures_executor::block_on(async {
/// let (tier, faults) = FaultTier::new(MemoryTier::<String, String>::new());
/// assert_eq!(tier.name(), "fault(memory)");
/// faults.fail_next(1);
/// assert!(tier.get(&"k".to_string()).await.is_err());
/// assert!(tier.get(&"k".to_string()).await.is_ok());
/// # });
/// ```
pub struct FaultTier<T> {
    inner: T,
    name: String,
    faults: FaultHandle,
    timer: Arc<dyn Timer>,
}

impl<T> fmt::Debug for FaultTier<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultTier")
            .field("name", &self.name)
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl<T> FaultTier<T> {
    /// Wraps `inner`, with delays measured by the [`DefaultTimer`].
    pub fn new<K, V>(inner: T) -> (Self, FaultHandle)
    where
        T: CacheLayer<K, V>,
        K: MaybeSend + MaybeSync + 'static,
        V: MaybeSend + 'static,
    {
        Self::with_timer(inner, Arc::new(DefaultTimer))
    }

    /// Wraps `inner`, sleeping on `timer` for injected delays.
    pub fn with_timer<K, V>(inner: T, timer: Arc<dyn Timer>) -> (Self, FaultHandle)
    where
        T: CacheLayer<K, V>,
        K: MaybeSend + MaybeSync + 'static,
        V: MaybeSend + 'static,
    {
        let faults = FaultHandle::default();
        let name = format!("fault({})", inner.name());
        (
            FaultTier {
                inner,
                name,
                faults: faults.clone(),
                timer,
            },
            faults,
        )
    }

    /// The wrapped tier.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The wrapped tier, consuming the wrapper.
    pub fn into_inner(self) -> T {
        self.inner
    }

    async fn inject(&self, operation: Operation) -> Result<()> {
        self.faults.state.calls.fetch_add(1, Ordering::SeqCst);
        if !self.faults.applies(operation) {
            return Ok(());
        }
        let delay = self.faults.state.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            self.timer.sleep(Duration::from_millis(delay)).await;
        }
        if self.faults.state.hanging.load(Ordering::SeqCst) {
            futures_util::future::pending::<()>().await;
        }
        if self.faults.should_fail() {
            self.faults.state.injected.fetch_add(1, Ordering::SeqCst);
            return Err(Error::backend(
                self.name.clone(),
                operation,
                InjectedFault { operation },
            ));
        }
        Ok(())
    }
}

impl<T> fmt::Display for FaultTier<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg_attr(not(target_family = "wasm"), async_trait)]
#[cfg_attr(target_family = "wasm", async_trait(?Send))]
impl<K, V, T> CacheLayer<K, V> for FaultTier<T>
where
    K: MaybeSend + MaybeSync + 'static,
    V: MaybeSend + 'static,
    T: CacheLayer<K, V>,
{
    fn name(&self) -> &str {
        &self.name
    }
    async fn get(&self, key: &K) -> Result<Option<Entry<V>>> {
        self.inject(Operation::Get).await?;
        self.inner.get(key).await
    }
    async fn put(&self, key: &K, entry: Entry<V>) -> Result<()> {
        self.inject(Operation::Put).await?;
        self.inner.put(key, entry).await
    }
    async fn remove(&self, key: &K) -> Result<bool> {
        self.inject(Operation::Remove).await?;
        self.inner.remove(key).await
    }
    async fn remove_prefix(&self, prefix: &str) -> Result<()> {
        self.inject(Operation::RemovePrefix).await?;
        self.inner.remove_prefix(prefix).await
    }
    async fn clear(&self) -> Result<()> {
        self.inject(Operation::Clear).await?;
        self.inner.clear().await
    }
    async fn get_many(&self, keys: &[K]) -> Result<Vec<Option<Entry<V>>>> {
        self.inject(Operation::GetMany).await?;
        self.inner.get_many(keys).await
    }
    async fn put_many(&self, entries: Vec<(K, Entry<V>)>) -> Result<()> {
        self.inject(Operation::PutMany).await?;
        self.inner.put_many(entries).await
    }
    async fn get_stamped(&self, key: &K) -> Result<(Option<Entry<V>>, crate::Stamp)> {
        self.inject(Operation::Get).await?;
        self.inner.get_stamped(key).await
    }
    async fn stamp(&self, key: &K) -> Result<crate::Stamp> {
        self.inject(Operation::Get).await?;
        self.inner.stamp(key).await
    }
    async fn get_many_stamped(&self, keys: &[K]) -> Result<Vec<(Option<Entry<V>>, crate::Stamp)>> {
        self.inject(Operation::GetMany).await?;
        self.inner.get_many_stamped(keys).await
    }
    async fn put_fenced(
        &self,
        key: &K,
        entry: Entry<V>,
        fence: &crate::Fence<'_>,
    ) -> Result<crate::Fill> {
        self.inject(Operation::Put).await?;
        self.inner.put_fenced(key, entry, fence).await
    }
    async fn put_many_fenced(
        &self,
        entries: Vec<(K, Entry<V>)>,
        fences: &[crate::Fence<'_>],
    ) -> Result<Vec<crate::Fill>> {
        self.inject(Operation::PutMany).await?;
        self.inner.put_many_fenced(entries, fences).await
    }
    async fn remove_stamped(&self, key: &K) -> Result<(bool, crate::Stamp)> {
        self.inject(Operation::Remove).await?;
        self.inner.remove_stamped(key).await
    }
    fn fenced_writes_are_atomic(&self) -> bool {
        self.inner.fenced_writes_are_atomic()
    }
}
