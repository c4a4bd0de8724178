//! Per-thread rows of the counters a read's fast path bumps (hits, misses,
//! bytes served), so that threads reading at once do not fight over one
//! cache line, and a thread bumps its own row with a plain load and store
//! instead of a locked read-modify-write (Caffeine's striped `LongAdder`,
//! with one writer per stripe).
//!
//! Each thread takes a stripe number from a process-wide pool the first
//! time it records, and gives it back when it exits; a thread beyond
//! [`STRIPES`] (or one recording after it gave its number back) falls back
//! to the shared atomic counters. A stripe has one writer at a time: its number belongs
//! to one live thread, and the pool's mutex orders the hand-over. Readers
//! sum every stripe with relaxed loads (64-bit loads do not tear).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::layout::MAX_TIERS;

/// Stripes per monitor.
pub(crate) const STRIPES: usize = 64;

/// One thread's row: per tier, hits, misses and bytes served.
#[repr(align(128))]
pub(crate) struct Stripe {
    pub(crate) hits: [AtomicU64; MAX_TIERS],
    pub(crate) misses: [AtomicU64; MAX_TIERS],
    pub(crate) bytes: [AtomicU64; MAX_TIERS],
}

impl Stripe {
    fn new() -> Self {
        Stripe {
            hits: std::array::from_fn(|_| AtomicU64::new(0)),
            misses: std::array::from_fn(|_| AtomicU64::new(0)),
            bytes: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

pub(crate) fn stripes() -> Box<[Stripe]> {
    (0..STRIPES).map(|_| Stripe::new()).collect()
}

/// Adds `n` to a counter only this thread writes.
#[inline]
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// Numbers given back by threads that exited, and the next fresh one.
static POOL: Mutex<(Vec<usize>, usize)> = Mutex::new((Vec::new(), 0));

/// `NUMBER` before the thread first records.
const UNSET: usize = usize::MAX;
/// `NUMBER` once the thread gave its number back (it is exiting).
const GONE: usize = usize::MAX - 1;

thread_local! {
    /// This thread's stripe number: [`UNSET`] until it first records, and
    /// [`STRIPES`] or more when it has none. A `const` cell with no
    /// destructor, so the hot path reads it with one load and no
    /// initialisation check; [`GUARD`] gives the number back.
    static NUMBER: Cell<usize> = const { Cell::new(UNSET) };
    /// Gives this thread's number back to the pool when the thread exits.
    static GUARD: Guard = const { Guard };
}

/// See [`GUARD`].
struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        let number = NUMBER.with(|n| n.replace(GONE));
        give_back(number);
    }
}

fn give_back(number: usize) {
    if number < STRIPES {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        pool.0.push(number);
    }
}

/// A number from the pool for this thread, with its guard armed; none (and
/// the number given back) when the guard cannot be armed any more.
#[cold]
#[inline(never)]
fn take() -> Option<usize> {
    let number = {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        match pool.0.pop() {
            Some(n) => n,
            None => {
                pool.1 += 1;
                pool.1 - 1
            }
        }
    };
    // Touching the guard registers its destructor. A thread already
    // running its destructors may be refused: it records without a stripe.
    if GUARD.try_with(|_| ()).is_err() {
        give_back(number);
        NUMBER.with(|n| n.set(GONE));
        return None;
    }
    NUMBER.with(|n| n.set(number));
    (number < STRIPES).then_some(number)
}

/// This thread's stripe, if it has one (a thread beyond [`STRIPES`], or one
/// recording after it gave its number back on exit, has none).
#[inline]
pub(crate) fn local() -> Option<usize> {
    let number = NUMBER.with(Cell::get);
    if number < STRIPES {
        Some(number)
    } else if number == UNSET {
        take()
    } else {
        None
    }
}

/// This thread's stripe, if it has one.
#[cfg(test)]
fn current() -> Option<usize> {
    local()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn threads_get_distinct_stripes_and_give_them_back() {
        let mine = current().unwrap();
        let theirs: Vec<Option<usize>> = (0..4)
            .map(|_| std::thread::spawn(current))
            .map(|t| t.join().unwrap())
            .collect();
        // Each exited before the next started: they may share one number,
        // never this thread's.
        assert!(theirs.iter().all(|t| t.is_some() && *t != Some(mine)));
        // Three threads that each hold their number until all have one.
        let all = std::sync::Arc::new(std::sync::Barrier::new(3));
        let numbers: Vec<Option<usize>> = (0..3)
            .map(|_| {
                let all = all.clone();
                std::thread::spawn(move || {
                    let n = current();
                    all.wait();
                    n
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let mut distinct = numbers.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "threads alive together: {numbers:?}");
    }
}
