//! # presign
//!
//! Presigned URLs for S3 and S3-compatible stores (MinIO, s3s, Ceph...), and a
//! cached service that hands each user a URL to their picture.
//!
//! - [What is here](#what-is-here)
//! - [Feature flags](#feature-flags)
//! - [Example](#example): sign a URL, no network
//! - [Minimum supported Rust version](#minimum-supported-rust-version)
//!
//! # What is here
//!
//! - [`Signer`]: AWS Signature Version 4 query-string presigning of GET, PUT,
//!   HEAD and DELETE URLs; path-style or virtual-hosted URLs, session tokens,
//!   injectable signing time. The derived signing key is cached per day, so a
//!   signature costs one SHA-256 and one HMAC.
//! - [`Credentials`]: never shown in `Debug`, `Display` or errors.
//! - [`S3Config`]: endpoint, region, bucket, style and credentials; builds the
//!   signer and an `object_store` client for the same bucket.
//! - [`PresignedUrls`]: user id → presigned GET URL through a cache-core chain
//!   (in-process → Redis → signer), keyed by user, never by URL. Every URL it
//!   hands out works for at least a safety margin more. Batch lookups, safe user
//!   id → object key mapping, and `replace` (upload + invalidate everywhere).
//!   With [`ObjectKeys::PerUpload`], every upload gets its own object key, URLs
//!   carry a signed immutable `Cache-Control`, and [`PresignedUrls::sweep`]
//!   deletes replaced versions once their URLs expired.
//! - [`ResponseHeaders`]: response-header overrides (`response-cache-control`,
//!   ...) signed into GET URLs.
//! - [`embedded`] (feature `embedded-s3`): an S3 server embedded in your
//!   process (s3s-fs, SigV4 auth on, loopback port, temporary directory), for
//!   local development, demos and tests. It applies signed response-header
//!   overrides and counts object requests.
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `embedded-s3` | no | [`embedded::EmbeddedS3`]: an S3 server inside your process, for local development, demos and tests |
//!
//! Native targets only: on wasm32 the crate is empty.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use presign::{Credentials, S3Config};
//!
//! let signer = S3Config::new("http://127.0.0.1:9000", "us-east-1", "avatars",
//!     Credentials::new("access-key", "secret-key")).signer()?;
//! let url = signer.presign_get("users/42.png", Duration::from_secs(3_600))?;
//! assert!(url.url.starts_with("http://127.0.0.1:9000/avatars/users/42.png?X-Amz-Algorithm="));
//! # Ok::<_, presign::Error>(())
//! ```
//!
//! `cargo run -p presign --features embedded-s3 --example embedded_s3` uploads
//! and downloads through presigned URLs against the embedded S3.
//!
//! # Minimum supported Rust version
//!
//! Rust 1.95 (`rust-version` in Cargo.toml), checked by the workspace's
//! `cargo xtask test`. Raising it is a minor-version change, noted in the
//! changelog.

// Without `embedded-s3` the `embedded` module is not built: the links above to
// it point at the feature table instead of being left unresolved.
#![cfg_attr(
    not(feature = "embedded-s3"),
    doc = "",
    doc = "[`embedded`]: #feature-flags",
    doc = "[`embedded::EmbeddedS3`]: #feature-flags"
)]
// docs.rs (nightly, `--cfg docsrs`): mark feature- and target-gated items.
// `doc_cfg` includes what `doc_auto_cfg` did before nightly merged the two.
#![cfg_attr(docsrs, feature(doc_cfg))]
// Native only: on wasm32 the crate is empty.
#![cfg(not(target_family = "wasm"))]

mod encode;
mod error;
mod service;
mod signer;

pub use error::{Error, Result};
pub use service::{
    Invalidator, ObjectKeys, PresignedUrls, PresignedUrlsBuilder, UserId, DEFAULT_MARGIN,
    DEFAULT_MAX_CACHE_LIFETIME, DEFAULT_URL_VALIDITY, MAX_USER_ID_BYTES, SWEEP_GRACE,
};
pub use signer::{
    Credentials, Method, PresignedUrl, ResponseHeaders, S3Config, Signer, UrlStyle, MAX_EXPIRY,
    MAX_OBJECT_KEY_BYTES,
};

#[cfg(feature = "embedded-s3")]
pub mod embedded;
