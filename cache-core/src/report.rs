//! [`TierReport`]: what each tier did during an operation that must reach them all.

use std::fmt;

use crate::Error;

/// An operation of the chain that must reach every tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChainOp {
    /// `invalidate(key)`
    Invalidate,
    /// `invalidate_prefix(prefix)`
    InvalidatePrefix,
    /// `clear()`
    Clear,
    /// `put(key, ..)`: a write-through.
    Put,
}

impl fmt::Display for ChainOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChainOp::Invalidate => "invalidate",
            ChainOp::InvalidatePrefix => "invalidate_prefix",
            ChainOp::Clear => "clear",
            ChainOp::Put => "put",
        })
    }
}

/// What one tier did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TierAction {
    /// An entry was there and was removed.
    Removed,
    /// There was nothing to remove.
    Absent,
    /// A prefix removal or clear completed.
    Cleared,
    /// The entry was written.
    Written,
    /// The tier was not part of this operation.
    NotSelected,
}

/// One tier's outcome.
#[derive(Debug)]
pub struct TierOutcome {
    /// Position in the chain, 0 first.
    pub index: usize,
    /// The tier's name.
    pub tier: String,
    /// What it did, or why it failed.
    pub result: Result<TierAction, Error>,
}

/// What every tier did during one [`ChainOp`]. Returned on success, and carried by
/// [`Error::Incomplete`] when some tier failed, so the caller can see which
/// removal to retry.
///
/// ```
/// use cache_core::{ChainOp, TierAction, TierOutcome, TierReport};
///
/// let report = TierReport::new(ChainOp::Invalidate, vec![
///     TierOutcome { index: 0, tier: "memory".into(), result: Ok(TierAction::Removed) },
/// ]);
/// assert!(report.is_complete());
/// assert!(report.failed_tier_names().is_empty());
/// ```
#[derive(Debug)]
pub struct TierReport {
    operation: ChainOp,
    outcomes: Vec<TierOutcome>,
}

impl TierReport {
    /// A report of `outcomes`, one per tier in chain order.
    pub fn new(operation: ChainOp, outcomes: Vec<TierOutcome>) -> Self {
        TierReport {
            operation,
            outcomes,
        }
    }

    /// The operation reported on.
    pub fn operation(&self) -> ChainOp {
        self.operation
    }

    /// One outcome per tier, in chain order.
    pub fn outcomes(&self) -> &[TierOutcome] {
        &self.outcomes
    }

    /// Whether every selected tier succeeded.
    pub fn is_complete(&self) -> bool {
        self.outcomes.iter().all(|o| o.result.is_ok())
    }

    /// Names of the tiers that failed.
    pub fn failed_tier_names(&self) -> Vec<&str> {
        self.outcomes
            .iter()
            .filter(|o| o.result.is_err())
            .map(|o| o.tier.as_str())
            .collect()
    }

    /// Indexes of the tiers that failed, for retrying just those.
    pub fn failed_tiers(&self) -> Vec<usize> {
        self.outcomes
            .iter()
            .filter(|o| o.result.is_err())
            .map(|o| o.index)
            .collect()
    }

    /// `Ok(self)` when complete, else [`Error::Incomplete`].
    pub fn into_result(self) -> Result<TierReport, Error> {
        if self.is_complete() {
            Ok(self)
        } else {
            Err(Error::Incomplete { report: self })
        }
    }
}
