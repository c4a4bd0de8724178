//! The crate's error type.

use std::time::Duration;

/// Everything that can go wrong while signing, caching or storing.
///
/// No variant ever carries a secret key or session token: messages name what is
/// wrong, not the credentials involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A presigned URL may be valid for at most 7 days (SigV4's limit).
    #[error("a presigned URL may be valid for at most {max:?}; {requested:?} was asked for")]
    ExpiryTooLong {
        /// The validity asked for.
        requested: Duration,
        /// The limit (7 days).
        max: Duration,
    },

    /// A presigned URL must be valid for at least one second.
    #[error("a presigned URL must be valid for at least one second")]
    ExpiryTooShort,

    /// The endpoint is not `http(s)://host[:port]`.
    #[error("invalid S3 endpoint: {reason}")]
    InvalidEndpoint {
        /// Why.
        reason: String,
    },

    /// The bucket name breaks S3's naming rules.
    #[error("invalid bucket name {bucket:?}: {reason}")]
    InvalidBucket {
        /// The name.
        bucket: String,
        /// Why.
        reason: &'static str,
    },

    /// The region is empty or holds characters a region never has.
    #[error("invalid region {region:?}")]
    InvalidRegion {
        /// The region.
        region: String,
    },

    /// An object key is empty or longer than S3's 1024 bytes.
    #[error("invalid object key ({len} bytes): {reason}")]
    InvalidObjectKey {
        /// The key's length in bytes.
        len: usize,
        /// Why.
        reason: &'static str,
    },

    /// A response-header override cannot be signed into a URL.
    #[error("invalid response header override {name}: {reason}")]
    InvalidResponseHeader {
        /// The query parameter, e.g. `response-cache-control`.
        name: &'static str,
        /// Why.
        reason: &'static str,
    },

    /// A user id cannot be mapped to an object key.
    #[error("invalid user id {preview}: {reason}")]
    InvalidUserId {
        /// The id, quoted and shortened.
        preview: String,
        /// Why.
        reason: &'static str,
    },

    /// The user has no picture in the store (no version, with
    /// [`crate::ObjectKeys::PerUpload`]).
    #[error("user {user} has no picture")]
    NoPicture {
        /// The (valid) user id.
        user: String,
    },

    /// The credentials expire before a URL signed with them would be useful.
    #[error("the credentials expire too soon: {remaining:?} left, at least {needed:?} needed")]
    CredentialsExpireTooSoon {
        /// Validity the credentials have left.
        remaining: Duration,
        /// What was needed (the safety margin plus a little).
        needed: Duration,
    },

    /// The service's settings contradict each other.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The object store failed.
    #[error("object store failed during {operation}: {source}")]
    ObjectStore {
        /// What was being done (`put`, `head`, `delete`).
        operation: &'static str,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },

    /// The cache chain failed (no tier and no signer could answer, or an
    /// invalidation did not reach every tier).
    #[error(transparent)]
    Cache(#[from] cache_core::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
