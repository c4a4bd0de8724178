//! An embedded S3 server for local use (feature `embedded-s3`).
//!
//! [`EmbeddedS3::start`] runs [s3s-fs](https://docs.rs/s3s-fs) inside your
//! process, on a free `127.0.0.1` port, with SigV4 authentication on, storing
//! objects in a temporary directory that is removed when the server is dropped.
//! Requests signed with any other key, or tampered with, get `403`.
//!
//! Use it to run an application that presigns URLs without a real S3 or MinIO:
//! a development server, a demo, integration tests. It is not a storage backend
//! for production: objects live only as long as the [`EmbeddedS3`] value, and it
//! listens on loopback only.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use cache_core::BoxError;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::{Credentials, S3Config};

/// The access key id of [`EmbeddedS3::start`]'s credentials.
pub const ACCESS_KEY_ID: &str = "presign-embedded-access-key";

/// A running s3s-fs server on a loopback port. Stopped, and its directory
/// removed, on drop.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cache_core::BoxError> {
/// use std::time::Duration;
/// use presign::embedded::EmbeddedS3;
///
/// let s3 = EmbeddedS3::start().await?; // needs a tokio runtime
/// let signer = s3.config().signer()?;
/// let url = signer.presign_get("users/42.png", Duration::from_secs(60))?;
/// assert!(url.url.starts_with(&s3.endpoint()));
/// # Ok(()) }
/// ```
pub struct EmbeddedS3 {
    addr: SocketAddr,
    config: S3Config,
    dir: tempfile::TempDir,
    task: JoinHandle<()>,
}

impl fmt::Debug for EmbeddedS3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedS3")
            .field("addr", &self.addr)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl EmbeddedS3 {
    /// Starts a server with bucket `avatars` and a random secret key.
    pub async fn start() -> Result<Self, BoxError> {
        Self::start_with("avatars", random_secret()).await
    }

    /// Starts a server with `bucket` (created empty) accepting only
    /// [`ACCESS_KEY_ID`] / `secret_key`.
    pub async fn start_with(bucket: &str, secret_key: String) -> Result<Self, BoxError> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join(bucket))?;
        let fs = s3s_fs::FileSystem::new(dir.path())
            .map_err(|e| format!("s3s-fs cannot use its directory: {e:?}"))?;
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY_ID, secret_key.clone()));
        let service = builder.build();

        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let conn = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        let config = S3Config::new(
            format!("http://{addr}"),
            "us-east-1",
            bucket,
            Credentials::new(ACCESS_KEY_ID, secret_key),
        );
        Ok(EmbeddedS3 {
            addr,
            config,
            dir,
            task,
        })
    }

    /// Path-style configuration for this server, with its credentials.
    pub fn config(&self) -> S3Config {
        self.config.clone()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The directory holding the buckets (one sub-directory each).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for EmbeddedS3 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A secret that differs between runs and servers, without a RNG dependency.
fn random_secret() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::from("secret-");
    for _ in 0..2 {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(std::process::id().into());
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}
