//! Test-only switches that revert one fix of the fenced write path each
//! (feature `mutations`), so tests can show that the interleaving explorer
//! catches the bug each fix prevents. Without the feature every switch is a
//! constant `false` and the checks compile away.
//!
//! The switches are per thread: the explorer runs every schedule on one thread.

/// One reverted fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mutation {
    /// Failure 1: an invalidation is recorded only when it begins; reads that
    /// start while its removals are under way compare against it as "not
    /// touched" and write the old value back.
    NoPendingFence,
    /// Failure 2: a fill checks its fence before the write instead of at the
    /// moment of the write (and without the write gate), so a removal can come in
    /// between.
    CheckBeforeWrite,
    /// Failure 3: a write-through `put` does not fence older loads.
    UnfencedPut,
    /// Failure 4: expiry is checked when a tier answers, not when the read
    /// returns.
    NoExpiryAtReturn,
    /// Failure 5: the origin loader runs without `catch_unwind`.
    NoCatchUnwind,
    /// Failure 6: fills ignore the shared tier's stamp (a plain `put`).
    IgnoreStamps,
    /// A refresh-ahead reload writes what it loaded with plain `put`s instead
    /// of fenced fills.
    UnfencedRefresh,
    /// A load whose tags were bumped (or first read) while it ran is written
    /// into the tiers anyway, at the generations current when it lands.
    KeepLoadsAcrossTagBumps,
    /// `invalidate_tag` leaves the loads in flight joinable: reads that start
    /// after it returned join a load begun before it.
    JoinLoadsAcrossTagBumps,
    /// A `put` writes even when one of its tags was bumped here after it
    /// began (at the bumped generation), so it wins over an `invalidate_tag`
    /// that began after it.
    PutIgnoresTagBumps,
}

#[cfg(feature = "mutations")]
mod imp {
    use super::Mutation;
    use std::cell::Cell;

    thread_local! {
        static ACTIVE: Cell<Option<Mutation>> = const { Cell::new(None) };
    }

    /// Turns `mutation` on (or every switch off with `None`) on this thread.
    pub fn set(mutation: Option<Mutation>) {
        ACTIVE.with(|a| a.set(mutation));
    }

    #[inline]
    pub(crate) fn on(mutation: Mutation) -> bool {
        ACTIVE.with(|a| a.get() == Some(mutation))
    }
}

#[cfg(not(feature = "mutations"))]
mod imp {
    use super::Mutation;

    #[inline(always)]
    pub(crate) fn on(_mutation: Mutation) -> bool {
        false
    }
}

pub(crate) use imp::on;
#[cfg(feature = "mutations")]
pub use imp::set;
