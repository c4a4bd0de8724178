//! Criterion suites for the workspace. Run them with `cargo xtask bench` (or
//! `cargo bench -p benches`); results and their baselines are in BENCHMARKS.md.
//!
//! This library holds what the suites share: polling a future that never waits,
//! the key sets and the memory tier the chain suites read, the results every
//! suite writes ([`results`]) and the BENCHMARKS.md generator that reads them
//! ([`doc`], run by the `bench-report` binary).

#[cfg(not(target_family = "wasm"))]
mod shared {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    use cache_core::{CacheLayer, Clock, Entry, MemoryTier, SystemClock};
    use criterion::Criterion;

    /// Criterion configured from the command line, with short measurements in
    /// a quick run (see [`crate::results::quick`]).
    pub fn criterion() -> Criterion {
        let c = Criterion::default().configure_from_args();
        if crate::results::quick() {
            c.warm_up_time(Duration::from_millis(300))
                .measurement_time(Duration::from_secs(1))
                .sample_size(10)
        } else {
            c
        }
    }

    /// Polls `fut` once with a no-op waker, so no executor cost dilutes a
    /// measurement. Panics if it is not ready: the suites only poll futures of
    /// tiers that never wait. Inlined always, as an `.await` is in the
    /// future that contains it: a call would add a copy of every answer.
    #[inline(always)]
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

    /// The peers suite's keys: `n` keys of 12 bytes (`user:0000042`).
    pub fn peer_keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("user:{i:07}")).collect()
    }

    /// A 200-byte URL for `key` (the size of the values the peers suite stores).
    pub fn url_value(key: &str) -> String {
        let mut url = format!("https://img.example/avatars/{key}.png?sig=");
        while url.len() < 200 {
            url.push('0');
        }
        url
    }

    /// `tier` after writing an hour-long URL for every key into it.
    pub fn fill<T: CacheLayer<String, String>>(tier: T, keys: &[String]) -> T {
        let now = SystemClock.now();
        for k in keys {
            let entry = Entry::expiring_in(
                format!("https://img.example/{k}.png"),
                now,
                Duration::from_secs(3_600),
            );
            futures_executor::block_on(tier.put(k, entry)).expect("put");
        }
        tier
    }

    /// A memory tier holding an hour-long URL for every key.
    pub fn memory_tier(keys: &[String]) -> MemoryTier<String, String> {
        fill(MemoryTier::builder().max_entries(KEYS * 2).build(), keys)
    }
}

#[cfg(not(target_family = "wasm"))]
pub use shared::{criterion, fill, keys, memory_tier, peer_keys, ready, url_value, KEYS};

#[cfg(not(target_family = "wasm"))]
pub mod browser;
#[cfg(not(target_family = "wasm"))]
pub mod doc;
#[cfg(not(target_family = "wasm"))]
pub mod results;

// The workspace README's example is a doctest: it must compile and pass.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct WorkspaceReadmeDoctest;
