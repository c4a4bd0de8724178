//! Criterion suites for the workspace. Run them with `cargo xtask bench` (or
//! `cargo bench -p benches`); results and their baselines are in BENCHMARKS.md.
//!
//! This library holds what the suites share: polling a future that never waits,
//! and the key set and memory tier the chain suites read.

#[cfg(not(target_family = "wasm"))]
mod shared {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    use cache_core::{CacheLayer, Clock, Entry, MemoryTier, SystemClock};

    /// Polls `fut` once with a no-op waker, so no executor cost dilutes a
    /// measurement. Panics if it is not ready: the suites only poll futures of
    /// tiers that never wait.
    #[inline]
    pub fn ready<F: Future>(fut: F) -> F::Output {
        let mut cx = Context::from_waker(Waker::noop());
        match pin!(fut).poll(&mut cx) {
            Poll::Ready(out) => out,
            Poll::Pending => panic!("a benchmarked future had to wait"),
        }
    }

    /// How many keys the chain suites cycle through.
    pub const KEYS: usize = 1_000;

    /// `KEYS` avatar keys.
    pub fn keys() -> Vec<String> {
        (0..KEYS).map(|i| format!("user:{i}:avatar")).collect()
    }

    /// A memory tier holding an hour-long URL for every key.
    pub fn memory_tier(keys: &[String]) -> MemoryTier<String, String> {
        let tier = MemoryTier::builder().max_entries(KEYS * 2).build();
        let now = SystemClock.now();
        for k in keys {
            let entry = Entry::expiring_in(
                format!("https://img.example/{k}.png"),
                now,
                Duration::from_secs(3_600),
            );
            ready(tier.put(k, entry)).expect("memory put");
        }
        tier
    }
}

#[cfg(not(target_family = "wasm"))]
pub use shared::{keys, memory_tier, ready, KEYS};

// The workspace README's example is a doctest: it must compile and pass.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct WorkspaceReadmeDoctest;
