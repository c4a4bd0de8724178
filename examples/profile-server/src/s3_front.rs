//! The embedded S3 for the demo: presign's s3s-fs server (SigV4 on), served a
//! second time, on another loopback port, behind tower-http's CORS layer.
//!
//! Why CORS: the page fetches picture bytes from presigned URLs (to keep them
//! in IndexedDB and the Cache API), a cross-origin `fetch` that needs
//! `Access-Control-Allow-Origin`, which s3s-fs does not send. The front is
//! the same service (same bucket, same request counts) wrapped in
//! [`CorsLayer`]; SigV4 checks the URL against the `Host` it was signed for,
//! the front's address. With real S3/MinIO, configure CORS on the bucket
//! instead.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{header, Method};
use cache_core::BoxError;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use presign::embedded::{self, EmbeddedService};
use presign::S3Config;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower_http::cors::{Any, Cors, CorsLayer, Vary};
use tower_layer::Layer;

/// The embedded S3 server and its CORS front; both stop on drop.
#[derive(Debug)]
pub struct EmbeddedS3 {
    server: embedded::EmbeddedS3,
    front_addr: SocketAddr,
    front: JoinHandle<()>,
}

impl EmbeddedS3 {
    /// Starts s3s-fs on a free loopback port and the front on another.
    pub async fn start() -> Result<Self, BoxError> {
        let server = embedded::EmbeddedS3::start().await?;
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let front_addr = listener.local_addr()?;
        let front = tokio::spawn(serve_front(listener, cors().layer(server.service())));
        Ok(EmbeddedS3 {
            server,
            front_addr,
            front,
        })
    }

    /// Settings for the bucket as the server itself reaches it (uploads).
    pub fn direct_config(&self) -> S3Config {
        self.server.config()
    }

    /// Settings for presigned URLs handed to browsers, and for uploads: the
    /// front's address. Several servers may share them.
    pub fn public_config(&self) -> S3Config {
        let direct = self.server.config();
        S3Config::new(
            format!("http://{}", self.front_addr),
            direct.region(),
            direct.bucket(),
            direct.credentials().clone(),
        )
    }

    /// The object GET and PUT requests the S3 server received (through the
    /// front or directly) since it started.
    pub fn requests(&self) -> embedded::ObjectRequests {
        self.server.requests()
    }

    /// `http://127.0.0.1:<port>` of the front.
    pub fn public_endpoint(&self) -> String {
        format!("http://{}", self.front_addr)
    }
}

impl Drop for EmbeddedS3 {
    fn drop(&mut self) {
        self.front.abort();
    }
}

/// What a page on any origin may do with presigned URLs: GET, HEAD and PUT
/// them with any request headers, and read the answer's ETag, type and
/// length. Every OPTIONS request is answered as a preflight.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::HEAD, Method::PUT])
        .allow_headers(Any)
        .expose_headers([header::ETAG, header::CONTENT_TYPE, header::CONTENT_LENGTH])
        // Every origin gets the same answer: nothing varies with the request.
        .vary(Vary::list([]))
}

/// Serves HTTP/1.1 connections to `service` for as long as the task runs.
async fn serve_front(listener: TcpListener, service: Cors<EmbeddedService>) {
    let http = hyper::server::conn::http1::Builder::new();
    loop {
        let socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(_) => {
                // Out of file descriptors, or a connection reset before
                // accept: wait a moment rather than spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let conn = http.serve_connection(
            TokioIo::new(socket),
            TowerToHyperService::new(service.clone()),
        );
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}
