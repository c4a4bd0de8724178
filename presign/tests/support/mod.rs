//! What the presign suites share: an HTTP client that reaches the loopback
//! servers directly (no proxy from the environment) and fetching a URL.
#![allow(dead_code, clippy::unwrap_used)]

/// A client for the test's own servers on 127.0.0.1.
pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// `GET url`: the status, the body and the `Content-Type`.
pub(crate) async fn fetch(url: &str) -> (u16, Vec<u8>, Option<String>) {
    let resp = http().get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, resp.bytes().await.unwrap().to_vec(), content_type)
}

/// `GET url`: the status and the body.
pub(crate) async fn get(url: &str) -> (u16, Vec<u8>) {
    let (status, body, _) = fetch(url).await;
    (status, body)
}
