//! The embedded S3 for the demo: presign's s3s-fs server (SigV4 on), behind a
//! small loopback front that adds CORS headers.
//!
//! Why a front: the page fetches picture bytes from presigned URLs (to keep them
//! in IndexedDB and the Cache API), a cross-origin `fetch` that needs
//! `Access-Control-Allow-Origin`, which s3s-fs does not send. The front forwards
//! requests unchanged, `Host` header included, so SigV4 signatures made for
//! the front's address still verify at s3s. With real S3/MinIO, configure CORS on
//! the bucket instead.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use cache_core::BoxError;
use presign::embedded;
use presign::S3Config;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The embedded S3 server and its CORS front; both stop on drop.
#[derive(Debug)]
pub struct EmbeddedS3 {
    server: embedded::EmbeddedS3,
    front_addr: SocketAddr,
    front: JoinHandle<()>,
}

#[derive(Clone)]
struct Front {
    upstream: String,
    client: reqwest::Client,
}

impl EmbeddedS3 {
    /// Starts s3s-fs on a free loopback port and the front on another.
    pub async fn start() -> Result<Self, BoxError> {
        let server = embedded::EmbeddedS3::start().await?;
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let front_addr = listener.local_addr()?;
        let state = Front {
            upstream: server.endpoint(),
            client: reqwest::Client::builder().no_proxy().build()?,
        };
        let app = Router::new().fallback(forward).with_state(state);
        let front = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
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

fn cors(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("etag, content-type, content-length"),
    );
}

async fn forward(State(front): State<Front>, req: Request) -> Response {
    let method = req.method().clone();
    if method == Method::OPTIONS {
        let mut response = StatusCode::NO_CONTENT.into_response();
        cors(&mut response);
        let h = response.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, PUT"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("*"),
        );
        return response;
    }
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut upstream = front
        .client
        .request(method, format!("{}{path}", front.upstream));
    for (name, value) in req.headers() {
        // Host included: it is part of the signature.
        upstream = upstream.header(name, value);
    }
    let body = match axum::body::to_bytes(req.into_body(), 64 << 20).await {
        Ok(body) => body,
        Err(_) => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
    };
    if !body.is_empty() {
        upstream = upstream.body(body);
    }
    let reply = match upstream.send().await {
        Ok(reply) => reply,
        Err(_) => return StatusCode::BAD_GATEWAY.into_response(),
    };
    let status = reply.status();
    let headers = reply.headers().clone();
    let body = match reply.bytes().await {
        Ok(body) => body,
        Err(_) => return StatusCode::BAD_GATEWAY.into_response(),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if name != header::TRANSFER_ENCODING && name != header::CONNECTION {
            response.headers_mut().insert(name, value.clone());
        }
    }
    cors(&mut response);
    response
}
