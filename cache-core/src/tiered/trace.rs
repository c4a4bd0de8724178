//! `tracing` spans for chain operations (feature `tracing`): `cache.get`,
//! `cache.fill` and `cache.invalidate`, with the tier and the outcome. Without
//! the feature every function here is an empty inline call.

use std::future::Future;

use super::Lookup;
#[cfg(feature = "tracing")]
use super::Source;
use crate::{EventKind, Fill, Result, TierReport};

#[cfg(feature = "tracing")]
mod imp {
    use super::*;
    use tracing::field::Empty;
    use tracing::Instrument;

    fn source_fields(span: &tracing::Span, source: &Source<'_>) {
        match source {
            Source::Tier { name, .. } => {
                span.record("tier", *name);
                span.record("outcome", "hit");
            }
            Source::Origin => {
                span.record("tier", "origin");
                span.record("outcome", "loaded");
            }
            Source::Stale => {
                span.record("tier", "stale");
                span.record("outcome", "stale");
            }
        }
    }

    fn get_outcome<V>(span: &tracing::Span, result: &Result<Option<Lookup<'_, V>>>) {
        match result {
            Ok(Some(found)) => source_fields(span, &found.source),
            Ok(None) => {
                span.record("outcome", "absent");
            }
            Err(err) => {
                span.record("outcome", "error");
                span.record("error", tracing::field::display(err));
            }
        }
    }

    /// A tier-0 hit, answered without waiting: a span that opens and closes.
    #[inline]
    pub(crate) fn hit_now(key: &dyn Fn() -> String, tier: &str) {
        let span = tracing::debug_span!("cache.get", key = Empty, tier, outcome = "hit");
        if !span.is_disabled() {
            span.record("key", key().as_str());
        }
    }

    /// The rest of a read, in a `cache.get` span.
    pub(crate) async fn get<'s, V, F>(
        key: impl FnOnce() -> String,
        read: F,
    ) -> Result<Option<Lookup<'s, V>>>
    where
        F: Future<Output = Result<Option<Lookup<'s, V>>>>,
    {
        let span = tracing::debug_span!(
            "cache.get",
            key = Empty,
            tier = Empty,
            outcome = Empty,
            error = Empty
        );
        if span.is_disabled() {
            return read.await;
        }
        span.record("key", key().as_str());
        let result = read.instrument(span.clone()).await;
        get_outcome(&span, &result);
        result
    }

    /// One fill of one tier, in a `cache.fill` span.
    pub(crate) async fn fill<F>(
        key: impl FnOnce() -> String,
        tier: &str,
        kind: EventKind,
        write: F,
    ) -> Result<Fill>
    where
        F: Future<Output = Result<Fill>>,
    {
        let span = tracing::debug_span!(
            "cache.fill",
            key = Empty,
            tier,
            kind = ?kind,
            outcome = Empty,
            error = Empty
        );
        if span.is_disabled() {
            return write.await;
        }
        span.record("key", key().as_str());
        let result = write.instrument(span.clone()).await;
        match &result {
            Ok(Fill::Written) => span.record("outcome", "written"),
            Ok(Fill::Refused) => span.record("outcome", "refused"),
            Err(err) => {
                span.record("error", tracing::field::display(err));
                span.record("outcome", "error")
            }
        };
        result
    }

    /// An invalidation (`op`: invalidate, invalidate_prefix, clear, put,
    /// invalidate_tag) of `target`, in a `cache.invalidate` span.
    pub(crate) async fn invalidate<F, T>(op: &str, target: &str, run: F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
        T: Outcome,
    {
        let span = tracing::debug_span!(
            "cache.invalidate",
            op,
            target,
            outcome = Empty,
            tiers = Empty,
            error = Empty
        );
        let result = run.instrument(span.clone()).await;
        match &result {
            Ok(done) => {
                span.record("outcome", "ok");
                if let Some(tiers) = done.tiers() {
                    span.record("tiers", tiers.as_str());
                }
            }
            Err(err) => {
                span.record("outcome", "failed");
                span.record("error", tracing::field::display(err));
            }
        }
        result
    }

    /// What an invalidation's span records of its result.
    pub(crate) trait Outcome {
        fn tiers(&self) -> Option<String>;
    }

    impl Outcome for TierReport {
        fn tiers(&self) -> Option<String> {
            Some(
                self.outcomes()
                    .iter()
                    .map(|o| match &o.result {
                        Ok(action) => format!("{}={action:?}", o.tier),
                        Err(_) => format!("{}=failed", o.tier),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
            )
        }
    }

    impl Outcome for u64 {
        fn tiers(&self) -> Option<String> {
            None
        }
    }
}

#[cfg(not(feature = "tracing"))]
mod imp {
    use super::*;

    // The operations themselves, unwrapped: an `async fn` that only awaited
    // them added a state machine to every read, fill and invalidation.

    #[inline(always)]
    pub(crate) fn get<'s, V, F>(_key: impl FnOnce() -> String, read: F) -> F
    where
        F: Future<Output = Result<Option<Lookup<'s, V>>>>,
    {
        read
    }

    #[inline(always)]
    pub(crate) fn fill<F>(
        _key: impl FnOnce() -> String,
        _tier: &str,
        _kind: EventKind,
        write: F,
    ) -> F
    where
        F: Future<Output = Result<Fill>>,
    {
        write
    }

    #[inline(always)]
    pub(crate) fn invalidate<F, T>(_op: &str, _target: &str, run: F) -> F
    where
        F: Future<Output = Result<T>>,
        T: Outcome,
    {
        run
    }

    pub(crate) trait Outcome {}
    impl Outcome for TierReport {}
    impl Outcome for u64 {}
}

#[cfg(feature = "tracing")]
pub(crate) use imp::hit_now;
pub(crate) use imp::{fill, get, invalidate};
