//! [`Observer`]: the hook through which a chain reports every access.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::{Error, MaybeSend, MaybeSync, Timestamp};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// A tier returned an unexpired entry.
    Hit,
    /// A tier answered that it does not hold the key (or held it expired).
    Miss,
    /// A tier failed; the read carried on (fail-open).
    Error,
    /// A tier did not answer within its timeout; the read carried on.
    Timeout,
    /// A tier was skipped because its circuit breaker is open.
    Skipped,
    /// An entry found lower down was written into this (upper) tier.
    Backfill,
    /// An entry was written into this tier by `put` or after an origin load.
    Write,
    /// This tier removed a key, a prefix or everything.
    Invalidate,
    /// The origin loaded a value.
    OriginLoad,
    /// The origin answered that the key has no value.
    OriginNotFound,
    /// The origin failed.
    OriginError,
    /// A read joined an origin load already in flight for the same key.
    Coalesced,
    /// The origin failed and an expired value within its grace period was served.
    StaleServed,
    /// A remembered "no value" answered the read without asking the origin.
    NegativeHit,
    /// A fenced write into this tier (a backfill or an origin fill) was refused:
    /// an invalidation or a newer write of its key began after the read that
    /// found the value. Nothing was written.
    Refused,
    /// The chain's in-process tiers were flushed because invalidations may have
    /// been missed (a bus link went down, a message was lost). Reported once per
    /// flush, from [`EventSource::Chain`], with the reason as the key.
    Resync,
}

/// Where it happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventSource<'a> {
    /// Tier number `index` (0 is read first) named `name`.
    Tier {
        /// Position in the chain, 0 first.
        index: usize,
        /// The tier's name.
        name: &'a str,
    },
    /// The origin loader.
    Origin,
    /// The chain itself (negative cache, stale store).
    Chain,
}

/// One access, as reported to an [`Observer`].
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    /// What happened.
    pub kind: EventKind,
    /// Where.
    pub source: EventSource<'a>,
    /// The key's string form; for prefix invalidation the prefix; empty for `clear`.
    pub key: &'a str,
    /// How long the tier or origin took; `None` when the call was not timed:
    /// where nothing was awaited (a skip, a coalesced read, a flush), and for
    /// the synchronous answers of in-process tiers that are not sampled (one
    /// in [`FAST_PATH_TIMED_EVERY`] per thread is timed). Every call that
    /// waits (another tier, the origin, a fill) is timed.
    pub latency: Option<Duration>,
    /// Payload bytes moved (value size on hits, writes and loads), else 0.
    pub bytes: usize,
    /// The error, for `Error`, `Timeout` and `OriginError` events.
    pub error: Option<&'a Error>,
}

/// One synchronous tier answer in this many, per thread, is timed: the
/// answers of in-process tiers (`get_ready`) take tens of nanoseconds, as
/// long as the two clock reads that would time them. Their counts stay
/// exact; their latency is sampled. Every other call is timed.
///
/// ```
/// assert_eq!(cache_core::FAST_PATH_TIMED_EVERY, 64);
/// ```
pub const FAST_PATH_TIMED_EVERY: u32 = 64;

/// Receives a chain's events. Implemented by the `cache-monitor` crate; implement it to
/// feed your own metrics or logs.
///
/// Called inline on the read path: keep it cheap and never block. With no
/// observer installed the chain does not read the clock for latencies at all.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use cache_core::{Event, EventKind, Observer};
///
/// #[derive(Debug, Default)]
/// struct CountHits(AtomicU64);
/// impl Observer for CountHits {
///     fn on_event(&self, event: &Event<'_>) {
///         if event.kind == EventKind::Hit {
///             self.0.fetch_add(1, Ordering::Relaxed);
///         }
///     }
/// }
/// ```
pub trait Observer: fmt::Debug + MaybeSend + MaybeSync + 'static {
    /// Called once per event.
    fn on_event(&self, event: &Event<'_>);

    /// Called instead of [`Observer::on_event`] when the chain has just read
    /// the wall clock for this event anyway: `at` is that time, from the
    /// chain's default clock ([`SystemClock`](crate::SystemClock): never
    /// behind the true time, at most 20 ms ahead). A tier hit's expiry check
    /// reads it; a chain given another clock never calls this. An observer
    /// that places events in time can use `at` instead of reading a clock
    /// of its own on the hit path. The default ignores `at`.
    ///
    /// ```
    /// use std::sync::Mutex;
    /// use cache_core::{Event, Observer, Timestamp};
    ///
    /// #[derive(Debug, Default)]
    /// struct LastSeen(Mutex<Option<Timestamp>>);
    /// impl Observer for LastSeen {
    ///     fn on_event(&self, _: &Event<'_>) {}
    ///     fn on_event_at(&self, _: &Event<'_>, at: Timestamp) {
    ///         *self.0.lock().unwrap() = Some(at);
    ///     }
    /// }
    /// ```
    #[inline]
    fn on_event_at(&self, event: &Event<'_>, at: Timestamp) {
        let _ = at;
        self.on_event(event)
    }
}

impl<O: Observer + ?Sized> Observer for Arc<O> {
    fn on_event(&self, event: &Event<'_>) {
        (**self).on_event(event)
    }

    fn on_event_at(&self, event: &Event<'_>, at: Timestamp) {
        (**self).on_event_at(event, at)
    }
}
