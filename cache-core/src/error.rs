//! The one error type of the workspace's cache tiers.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::key::KeyError;
use crate::report::TierReport;

/// A boxed error from a backend (a Redis client, a browser API, an HTTP call).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A shared error, cheap to hand to every caller waiting on one origin load.
pub type SharedError = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which cache operation was running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// `get`
    Get,
    /// `get_many`
    GetMany,
    /// `put`
    Put,
    /// `put_many`
    PutMany,
    /// `remove`
    Remove,
    /// `remove_prefix`
    RemovePrefix,
    /// `clear`
    Clear,
}

impl Operation {
    /// The operation's name as in the trait.
    pub const fn as_str(self) -> &'static str {
        match self {
            Operation::Get => "get",
            Operation::GetMany => "get_many",
            Operation::Put => "put",
            Operation::PutMany => "put_many",
            Operation::Remove => "remove",
            Operation::RemovePrefix => "remove_prefix",
            Operation::Clear => "clear",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong in a tier or a chain.
///
/// Messages never contain credentials, and never the full key: a key may carry
/// user data, so errors show at most a short escaped preview of it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key cannot be stored: empty, too long or holding control characters.
    #[error("invalid cache key {preview}: {reason}")]
    InvalidKey {
        /// A short, escaped preview of the key, safe to log.
        preview: String,
        /// What is wrong with it.
        reason: KeyError,
    },

    /// A tier's backend failed (network, protocol, browser API...).
    #[error("tier `{tier}` failed during {operation}: {source}")]
    Backend {
        /// The tier's name.
        tier: String,
        /// What the tier was doing.
        operation: Operation,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },

    /// A tier did not answer within its timeout.
    #[error("tier `{tier}` did not answer {operation} within {after:?}")]
    Timeout {
        /// The tier's name.
        tier: String,
        /// What the tier was doing.
        operation: Operation,
        /// The timeout that elapsed.
        after: Duration,
    },

    /// A tier ran out of storage quota and could not make room.
    #[error("tier `{tier}` is out of storage quota")]
    QuotaExceeded {
        /// The tier's name.
        tier: String,
        /// The backend's own error, when there is one.
        #[source]
        source: Option<BoxError>,
    },

    /// A tier cannot be used at all (storage absent or blocked, connection closed).
    #[error("tier `{tier}` is unavailable: {reason}")]
    Unavailable {
        /// The tier's name.
        tier: String,
        /// Why.
        reason: String,
    },

    /// A value could not be encoded for storage.
    #[error("tier `{tier}` cannot encode the value: {reason}")]
    Encode {
        /// The tier's name.
        tier: String,
        /// Why.
        reason: String,
    },

    /// The tier does not implement this operation.
    #[error("tier `{tier}` does not support {operation}")]
    Unsupported {
        /// The tier's name.
        tier: String,
        /// The operation asked for.
        operation: Operation,
    },

    /// The origin loader failed.
    #[error("origin failed to load the value: {source}")]
    Origin {
        /// The loader's error, shared by every caller of one single-flight load.
        #[source]
        source: SharedError,
    },

    /// Every tier failed and there was no origin to ask.
    #[error("no tier could answer ({failed} failed) and there is no origin")]
    NoTierAnswered {
        /// How many tiers failed or were skipped.
        failed: usize,
    },

    /// A write-through lost to a newer write or an invalidation of the same key
    /// that began while it was under way: the tier refused it (nothing of it was
    /// written there), and the newer operation's outcome stands.
    #[error("the write of tier `{tier}` was refused: a newer write or invalidation of the key came first")]
    Superseded {
        /// The tier's name.
        tier: String,
    },

    /// An operation that must reach every tier (invalidate, clear, write-through)
    /// failed in at least one. The report says what each tier did; retry the
    /// operation to finish it.
    #[error("{} failed in tier(s) {}", .report.operation(), .report.failed_tier_names().join(", "))]
    Incomplete {
        /// What each tier did.
        report: TierReport,
    },
}

impl Error {
    /// A [`Error::Backend`] for `tier`.
    pub fn backend(
        tier: impl Into<String>,
        operation: Operation,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Backend {
            tier: tier.into(),
            operation,
            source: source.into(),
        }
    }

    /// An [`Error::InvalidKey`] for `key`.
    pub fn invalid_key(key: &str, reason: KeyError) -> Self {
        Error::InvalidKey {
            preview: crate::key::preview(key),
            reason,
        }
    }

    /// Whether retrying the same call later may succeed (timeouts, backend and
    /// availability failures, partial failures).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Backend { .. }
                | Error::Timeout { .. }
                | Error::Unavailable { .. }
                | Error::Origin { .. }
                | Error::NoTierAnswered { .. }
                | Error::Incomplete { .. }
                | Error::Superseded { .. }
        )
    }
}
