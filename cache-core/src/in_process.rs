//! What the in-process tiers share: [`TierOptions`], the settings their
//! builders hold, and [`InProcessTier`], the batch calls of the tiers whose
//! reads and writes need no `await`.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::{Clock, Entry, Fence, Fill, SystemClock, Timestamp};

/// The settings every in-process tier has: a name, a clock, a tier TTL and
/// bounds on entries and bytes.
///
/// The builders of [`MemoryTier`](crate::MemoryTier),
/// `ConcurrentTier` (native) and cache-server's `MokaTier` each hold one and
/// their setters (`name`, `clock`, `shared_clock`, `ttl`, `max_entries`,
/// `max_bytes`) set it; a tier written outside this crate can hold one too.
/// `MokaTier` is bounded by bytes only and has no `max_entries`.
///
/// Defaults: name `"memory"`, the system clock, no tier TTL, 10,000 entries,
/// 64 MiB.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use cache_core::{ManualClock, TierOptions};
///
/// let options = TierOptions::default()
///     .with_name("hot")
///     .with_clock(ManualClock::new())
///     .with_ttl(Duration::from_secs(300))
///     .with_max_entries(0);
/// assert_eq!(options.name(), "hot");
/// assert_eq!(options.ttl(), Some(Duration::from_secs(300)));
/// assert_eq!(options.max_entries(), 1, "at least one entry");
/// assert_eq!(options.max_bytes(), 64 << 20);
/// ```
#[derive(Clone)]
#[must_use]
pub struct TierOptions {
    pub(crate) name: Cow<'static, str>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) max_entries: usize,
    pub(crate) max_bytes: usize,
}

impl Default for TierOptions {
    fn default() -> Self {
        TierOptions {
            name: Cow::Borrowed("memory"),
            clock: Arc::new(SystemClock),
            ttl: None,
            max_entries: 10_000,
            max_bytes: 64 << 20,
        }
    }
}

impl fmt::Debug for TierOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.debug_fields(&mut f.debug_struct("TierOptions"))
            .finish_non_exhaustive()
    }
}

impl TierOptions {
    /// The name used in errors and metrics.
    pub fn with_name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The clock reads are checked against.
    pub fn with_clock(self, clock: impl Clock) -> Self {
        self.with_shared_clock(Arc::new(clock))
    }

    /// The clock, already shared.
    pub fn with_shared_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The tier's own TTL: entries are kept at most this long.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The most entries kept (at least 1).
    pub fn with_max_entries(mut self, n: usize) -> Self {
        self.max_entries = n.max(1);
        self
    }

    /// The most bytes kept; a single larger value is not stored.
    pub fn with_max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// The name used in errors and metrics.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The clock reads are checked against.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The tier's own TTL, if any.
    pub fn ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// The most entries kept.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// The most bytes kept.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Adds name, TTL and bounds to a tier's or builder's `Debug` output.
    pub(crate) fn debug_fields<'d, 'a, 'b>(
        &self,
        d: &'d mut fmt::DebugStruct<'a, 'b>,
    ) -> &'d mut fmt::DebugStruct<'a, 'b> {
        d.field("name", &self.name)
            .field("ttl", &self.ttl)
            .field("max_entries", &self.max_entries)
            .field("max_bytes", &self.max_bytes)
    }
}

/// What a conditional write did, from whether it wrote.
pub(crate) fn fill(written: bool) -> Fill {
    if written {
        Fill::Written
    } else {
        Fill::Refused
    }
}

/// A tier that reads and writes without `await` ([`MemoryTier`](crate::MemoryTier),
/// `ConcurrentTier`): its single-key read and write, called directly on the
/// tier (static calls, inlined: the chain's hit path calls `get_entry`), and
/// its batch calls, written once as loops over them at one clock reading.
pub(crate) trait InProcessTier<K, V> {
    fn options(&self) -> &TierOptions;

    /// `key`'s unexpired entry at `now` (an expired one met is dropped).
    fn get_entry(&self, key: &K, now: Timestamp) -> Option<Entry<V>>;

    /// Writes `entry` (capped by the tier TTL) if `holds()` is true when
    /// checked under the lock that removals of `key` take; `false` when refused.
    fn put_entry_if(
        &self,
        key: &K,
        entry: Entry<V>,
        now: Timestamp,
        holds: impl FnOnce() -> bool,
    ) -> bool;

    fn get_many_now(&self, keys: &[K]) -> Vec<Option<Entry<V>>> {
        let now = self.options().clock.now();
        keys.iter().map(|k| self.get_entry(k, now)).collect()
    }

    fn put_many_now(&self, entries: Vec<(K, Entry<V>)>) {
        let now = self.options().clock.now();
        for (k, e) in entries {
            self.put_entry_if(&k, e, now, || true);
        }
    }

    fn put_fenced_now(&self, key: &K, entry: Entry<V>, fence: &Fence<'_>) -> Fill {
        fill(self.put_entry_if(key, entry, self.options().clock.now(), || fence.holds()))
    }

    fn put_many_fenced_now(&self, entries: Vec<(K, Entry<V>)>, fences: &[Fence<'_>]) -> Vec<Fill> {
        let now = self.options().clock.now();
        entries
            .into_iter()
            .zip(fences)
            .map(|((k, e), fence)| fill(self.put_entry_if(&k, e, now, || fence.holds())))
            .collect()
    }
}
