//! An embedded S3 server for local use (feature `embedded-s3`).
//!
//! [`EmbeddedS3::start`] runs [s3s-fs](https://docs.rs/s3s-fs) inside your
//! process, on a free `127.0.0.1` port, with SigV4 authentication on, storing
//! objects in a temporary directory that is removed when the server is dropped.
//! Requests signed with any other key, or tampered with, get `403`.
//!
//! Like S3 (and unlike s3s-fs alone), a successful GET applies the signed
//! response-header overrides of its URL (`response-cache-control`,
//! `response-content-type`, ...): the server
//! sets those headers on the answer. It counts the object GET and PUT requests
//! it receives ([`EmbeddedS3::requests`]), so a test can prove that a client
//! fetched nothing. [`EmbeddedS3::service`] hands out the same HTTP service,
//! to serve on another listener too, wrapped in middleware (CORS, say).
//!
//! Use it to run an application that presigns URLs without a real S3 or MinIO:
//! a development server, a demo, integration tests. It is not a storage backend
//! for production: objects live only as long as the [`EmbeddedS3`] value, and it
//! listens on loopback only.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use cache_core::BoxError;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request};
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
    service: EmbeddedService,
}

#[derive(Debug, Default)]
struct Counters {
    get_object: AtomicU64,
    put_object: AtomicU64,
}

/// How many object requests an [`EmbeddedS3`] has received since it started,
/// whatever their answer (a refused signature counts too). Listing, HEAD and
/// DELETE requests are not counted.
///
/// ```
/// let none = presign::embedded::ObjectRequests::default();
/// assert_eq!((none.get_object, none.put_object), (0, 0));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ObjectRequests {
    /// `GetObject` requests (downloads, presigned or not).
    pub get_object: u64,
    /// `PutObject` requests (uploads; copies and multipart parts excluded).
    pub put_object: u64,
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
        let service = EmbeddedService {
            service,
            counters: Arc::default(),
        };

        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let served = service.clone();
        let task = tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let conn = http
                    .serve_connection(TokioIo::new(socket), served.clone())
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
            service,
        })
    }

    /// The object GET and PUT requests received so far.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::BoxError> {
    /// let s3 = presign::embedded::EmbeddedS3::start().await?;
    /// assert_eq!(s3.requests().get_object, 0);
    /// # Ok(()) }
    /// ```
    pub fn requests(&self) -> ObjectRequests {
        let counters = &self.service.counters;
        ObjectRequests {
            get_object: counters.get_object.load(Ordering::Relaxed),
            put_object: counters.put_object.load(Ordering::Relaxed),
        }
    }

    /// The HTTP service this server runs on its port, to serve elsewhere too
    /// (a hyper [`Service`](hyper::service::Service) and a tower
    /// [`Service`](tower_service::Service) of `Request<Incoming>`), for
    /// example wrapped in CORS middleware on another listener. It shares this
    /// server's bucket and request counts; keep the server alive while it is
    /// served (dropping it removes the objects' directory). Signatures are
    /// checked against the request's own `Host`: presign URLs for the
    /// address it is served at.
    pub fn service(&self) -> EmbeddedService {
        self.service.clone()
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

/// The HTTP service of an [`EmbeddedS3`] ([`EmbeddedS3::service`]): s3s
/// (SigV4 on) behind a thin layer that counts object requests and applies the
/// response-header overrides S3 applies (s3s-fs ignores them).
#[derive(Clone)]
pub struct EmbeddedService {
    service: s3s::service::S3Service,
    counters: Arc<Counters>,
}

impl fmt::Debug for EmbeddedService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedService")
            .field("requests", &self.counters)
            .finish_non_exhaustive()
    }
}

/// Sub-resources that make a `GET`/`PUT` on a key something other than
/// GetObject/PutObject.
const SUBRESOURCES: [&str; 9] = [
    "acl",
    "tagging",
    "attributes",
    "legal-hold",
    "retention",
    "torrent",
    "uploadId",
    "partNumber",
    "uploads",
];

/// The overrides S3 honours on GET, and the header each one sets.
const OVERRIDES: [(&str, &str); 6] = [
    ("response-cache-control", "cache-control"),
    ("response-content-disposition", "content-disposition"),
    ("response-content-encoding", "content-encoding"),
    ("response-content-language", "content-language"),
    ("response-content-type", "content-type"),
    ("response-expires", "expires"),
];

impl hyper::service::Service<Request<Incoming>> for EmbeddedService {
    type Response = s3s::HttpResponse;
    type Error = s3s::HttpError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<s3s::HttpResponse, s3s::HttpError>> + Send>,
    >;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let query = req.uri().query().unwrap_or_default().to_owned();
        let params: Vec<(String, String)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        // Path style: `/bucket/key`; a key is a non-empty second segment.
        let on_object = req
            .uri()
            .path()
            .trim_start_matches('/')
            .split_once('/')
            .is_some_and(|(_, key)| !key.is_empty())
            && !params
                .iter()
                .any(|(k, _)| SUBRESOURCES.contains(&k.as_str()));
        let method = req.method().clone();
        if on_object && method == Method::GET {
            self.counters.get_object.fetch_add(1, Ordering::Relaxed);
        } else if on_object
            && method == Method::PUT
            && !req.headers().contains_key("x-amz-copy-source")
        {
            self.counters.put_object.fetch_add(1, Ordering::Relaxed);
        }
        let service = self.service.clone();
        Box::pin(async move {
            let mut response = service.call(req.map(s3s::Body::from)).await?;
            // Only after s3s accepted the signature (which covers the query).
            if on_object && method == Method::GET && response.status().is_success() {
                for (param, header) in OVERRIDES {
                    let value = params.iter().rev().find(|(k, _)| k == param);
                    if let Some(value) = value.and_then(|(_, v)| HeaderValue::from_str(v).ok()) {
                        response
                            .headers_mut()
                            .insert(HeaderName::from_static(header), value);
                    }
                }
            }
            Ok(response)
        })
    }
}

impl tower_service::Service<Request<Incoming>> for EmbeddedService {
    type Response = s3s::HttpResponse;
    type Error = s3s::HttpError;
    type Future = <Self as hyper::service::Service<Request<Incoming>>>::Future;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // No back-pressure: every request gets its own task in s3s.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        hyper::service::Service::call(self, req)
    }
}

/// Decodes `%XX` escapes and `+` (a space in a query); invalid escapes stay as
/// they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
