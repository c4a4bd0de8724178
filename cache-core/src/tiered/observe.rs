//! Events for the observer, the chain's clock, tier calls under their timeouts,
//! and circuit-breaker bookkeeping.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{select, Either};

use super::{Inner, TierSlot};
use crate::{
    ByteSize, CacheKey, Clock, Error, Event, EventKind, EventSource, MaybeSend, MaybeSync,
    Operation, Result, Timestamp,
};

/// The event a failed tier call reports.
pub(super) fn failure_kind(error: &Error) -> EventKind {
    match error {
        Error::Timeout { .. } => EventKind::Timeout,
        _ => EventKind::Error,
    }
}

/// The event a tier call reports: `ok_kind` on success, else its failure kind
/// with the error.
pub(super) fn event_for<T>(result: &Result<T>, ok_kind: EventKind) -> (EventKind, Option<&Error>) {
    match result {
        Ok(_) => (ok_kind, None),
        Err(e) => (failure_kind(e), Some(e)),
    }
}

#[cold]
#[inline(never)]
pub(super) fn invalid_key<K: CacheKey>(key: &K, reason: crate::key::KeyError) -> Error {
    Error::invalid_key(&key.key_str(), reason)
}

/// How long since `start`, if the call was timed.
#[inline]
pub(super) fn elapsed(start: Option<Stopwatch>) -> Option<Duration> {
    start.map(Stopwatch::elapsed)
}

thread_local! {
    /// Synchronous answers left on this thread before the next one is timed.
    static UNTIMED_LEFT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether this synchronous answer is the one in
/// [`FAST_PATH_TIMED_EVERY`](crate::FAST_PATH_TIMED_EVERY) on this thread that
/// is timed.
#[inline]
fn fast_path_timed() -> bool {
    UNTIMED_LEFT.with(|left| match left.get() {
        0 => {
            left.set(crate::FAST_PATH_TIMED_EVERY - 1);
            true
        }
        n => {
            left.set(n - 1);
            false
        }
    })
}

/// The chain's clock: the default [`crate::SystemClock`] is called directly
/// (inlined on every read's hot path); any other clock through its trait object.
#[derive(Debug)]
pub(crate) struct ChainClock {
    pub(crate) system: bool,
    pub(crate) shared: Arc<dyn Clock>,
}

impl Clock for ChainClock {
    #[inline]
    fn now(&self) -> Timestamp {
        if self.system {
            crate::SystemClock.now()
        } else {
            self.shared.now()
        }
    }
}

/// Times one tier or origin call for the observer.
///
/// On native targets it reads the CPU's timestamp counter through one shared,
/// calibrated `quanta::Clock`, and scales only when the call ends: a few
/// nanoseconds per read where `clock_gettime` can cost tens on a VM, and without
/// the thread-local lookup of `quanta::Instant::now`. On wasm32 it is
/// `performance.now()` through `web_time`.
#[derive(Clone, Copy)]
pub(super) struct Stopwatch(
    #[cfg(not(target_family = "wasm"))] u64,
    #[cfg(target_family = "wasm")] web_time::Instant,
);

#[cfg(not(target_family = "wasm"))]
fn tsc() -> &'static quanta::Clock {
    static CLOCK: std::sync::OnceLock<quanta::Clock> = std::sync::OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
}

impl Stopwatch {
    #[inline]
    fn start() -> Self {
        #[cfg(not(target_family = "wasm"))]
        {
            Stopwatch(tsc().raw())
        }
        #[cfg(target_family = "wasm")]
        {
            Stopwatch(web_time::Instant::now())
        }
    }

    #[inline]
    fn elapsed(self) -> Duration {
        #[cfg(not(target_family = "wasm"))]
        {
            let clock = tsc();
            clock.delta(self.0, clock.raw())
        }
        #[cfg(target_family = "wasm")]
        {
            self.0.elapsed()
        }
    }
}

impl<K, V> Inner<K, V>
where
    K: CacheKey,
    V: Clone + ByteSize + MaybeSend + MaybeSync + 'static,
{
    /// The stopwatch of a call that may wait: every one is timed.
    #[inline]
    pub(super) fn start(&self) -> Option<Stopwatch> {
        self.observer.as_ref().map(|_| Stopwatch::start())
    }

    /// The stopwatch of a synchronous answer (an in-process tier's
    /// `get_ready`): one in [`FAST_PATH_TIMED_EVERY`](crate::FAST_PATH_TIMED_EVERY)
    /// per thread is timed, the others are counted without a clock read.
    #[inline]
    pub(super) fn start_sampled(&self) -> Option<Stopwatch> {
        if self.observer.is_some() && fast_path_timed() {
            Some(Stopwatch::start())
        } else {
            None
        }
    }

    #[inline]
    pub(super) fn emit(
        &self,
        kind: EventKind,
        source: EventSource<'_>,
        key: &str,
        latency: Option<Duration>,
        bytes: usize,
        error: Option<&Error>,
    ) {
        if let Some(observer) = &self.observer {
            observer.on_event(&Event {
                kind,
                source,
                key,
                latency,
                bytes,
                error,
            });
        }
    }

    pub(super) fn tier_source(&self, index: usize) -> EventSource<'_> {
        EventSource::Tier {
            index,
            name: &self.tiers[index].name,
        }
    }

    /// Runs a tier call under the tier's timeout.
    pub(super) async fn call<T>(
        &self,
        slot: &TierSlot<K, V>,
        operation: Operation,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match slot.timeout {
            None => fut.await,
            Some(after) => {
                let fut = pin!(fut);
                match select(fut, self.timer.sleep(after)).await {
                    Either::Left((result, _)) => result,
                    Either::Right(((), _)) => Err(Error::Timeout {
                        tier: slot.name.clone(),
                        operation,
                        after,
                    }),
                }
            }
        }
    }

    /// Feeds a tier call's outcome to the tier's circuit breaker.
    pub(super) fn record_outcome<T>(&self, index: usize, result: &Result<T>) {
        let breaker = &self.tiers[index].breaker;
        match result {
            Ok(_) => breaker.success(),
            Err(_) => breaker.failure(self.clock.now()),
        }
    }

    /// Records a tier call's outcome in the breaker and the observer.
    pub(super) fn settle<T>(
        &self,
        index: usize,
        key: &K,
        start: Option<Stopwatch>,
        bytes: usize,
        result: &Result<T>,
        ok_kind: EventKind,
    ) {
        self.record_outcome(index, result);
        if self.observer.is_some() {
            let (kind, error) = event_for(result, ok_kind);
            let bytes = if error.is_none() { bytes } else { 0 };
            self.emit(
                kind,
                self.tier_source(index),
                &key.key_str(),
                elapsed(start),
                bytes,
                error,
            );
        }
    }

    /// Emits `Skipped` and says so when tier `index`'s breaker keeps it out.
    pub(super) fn breaker_skips(&self, index: usize, key: &K) -> bool {
        if self.tiers[index].breaker.allows(&self.clock) {
            return false;
        }
        self.emit_skipped(index, std::slice::from_ref(key));
        true
    }

    /// Emits `Skipped` for each of `keys` at tier `index`.
    pub(super) fn emit_skipped(&self, index: usize, keys: &[K]) {
        if self.observer.is_none() {
            return;
        }
        for key in keys {
            self.emit(
                EventKind::Skipped,
                self.tier_source(index),
                &key.key_str(),
                None,
                0,
                None,
            );
        }
    }
}
