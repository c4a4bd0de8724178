//! Presigning against the embedded S3: start it, upload a picture with a
//! presigned PUT, download it with a presigned GET, and show that a tampered
//! URL is refused. No network, no credentials of yours.
//!
//! `cargo run -p presign --features embedded-s3 --example embedded_s3`

use std::time::Duration;

use presign::embedded::EmbeddedS3;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), cache_core::BoxError> {
    let s3 = EmbeddedS3::start().await?;
    println!("embedded S3 at {} (bucket `avatars`)", s3.endpoint());
    let signer = s3.config().signer()?;
    let http = reqwest::Client::new();

    let put = signer.presign_put("users/42.png", Duration::from_secs(300))?;
    let status = http
        .put(&put.url)
        .body(&b"\x89PNG not really"[..])
        .send()
        .await?
        .status();
    println!("PUT  {} -> {status}", put.url);

    let get = signer.presign_get("users/42.png", Duration::from_secs(300))?;
    let resp = http.get(&get.url).send().await?;
    println!("GET  {} -> {}", get.url, resp.status());
    println!("     body: {:?}", resp.bytes().await?);

    let tampered = get.url.replace("users/42.png", "users/43.png");
    let status = http.get(&tampered).send().await?.status();
    println!("GET  (another key, same signature) -> {status}");
    Ok(())
}
