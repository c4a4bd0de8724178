//! Helpers shared by the HTTP test suites (`api`, `e2e`, `journey`): plain reqwest calls
//! and raw-socket requests that stall on purpose; for the journey (feature
//! `journey`), the browser and the page it reads.
#![allow(dead_code, clippy::unwrap_used)]

use reqwest::StatusCode;
use serde_json::Value;

/// The journey's headless Chromium (fantoccini, chromedriver, DevTools).
#[cfg(feature = "journey")]
pub(crate) mod browser;
/// The profile-web page as the journey reads it.
#[cfg(feature = "journey")]
pub(crate) mod page;
/// The page's wasm and JS as the server sends them.
#[cfg(feature = "journey")]
pub(crate) mod weight;

/// A client that never goes through a proxy (tests talk to 127.0.0.1 only).
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// `GET url` → status, headers and the JSON body (`Null` if not JSON).
pub(crate) async fn get_json(
    client: &reqwest::Client,
    url: &str,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let resp = client.get(url).send().await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let body = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or(Value::Null);
    (status, headers, body)
}

/// `PUT url` with `body` → status and the JSON body (`Null` if none).
pub(crate) async fn put(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    content_type: &str,
) -> (StatusCode, Value) {
    let resp = client
        .put(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (
        status,
        serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or(Value::Null),
    )
}

/// `GET url` → status and bytes.
pub(crate) async fn fetch_bytes(client: &reqwest::Client, url: &str) -> (StatusCode, Vec<u8>) {
    let resp = client.get(url).send().await.unwrap();
    (resp.status(), resp.bytes().await.unwrap().to_vec())
}

/// Asserts `body` is `{"error": "<non-empty>"}`.
pub(crate) fn assert_error(body: &Value) {
    let msg = body["error"].as_str().unwrap_or_default();
    assert!(!msg.is_empty(), "expected {{\"error\": ...}}, got {body}");
}

/// The JSON body of a raw HTTP/1.1 answer (`Null` if none).
pub(crate) fn json_body(http: &str) -> Value {
    let body = http.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// Raw sockets, for requests that stall on purpose.
pub(crate) mod raw {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Reads until the server closes the connection (liveness bound: 10 s).
    pub(crate) async fn read_to_close(stream: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
        assert!(
            read.is_ok(),
            "the server kept the connection open: {}",
            String::from_utf8_lossy(&out)
        );
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Sends the headers of a PUT of user 1's picture announcing `len` body
    /// bytes, then `sent` of them.
    pub(crate) async fn stalled_put(
        addr: std::net::SocketAddr,
        len: usize,
        sent: &[u8],
    ) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "PUT /api/users/1/avatar HTTP/1.1\r\nhost: {addr}\r\ncontent-type: image/png\r\ncontent-length: {len}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(sent).await.unwrap();
        stream
    }
}
