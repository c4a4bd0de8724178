//! The signer against a real S3 implementation: s3s-fs with SigV4 auth on, on a
//! loopback port. Status codes come from s3s' own signature checks.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cache_core::{Clock, SystemClock};
use presign::embedded::{EmbeddedS3, ACCESS_KEY_ID};
use presign::{Credentials, Method, ResponseHeaders, S3Config};

mod support;
use support::{get, http};

const HOUR: Duration = Duration::from_secs(3_600);

async fn put(url: &str, body: &'static [u8]) -> reqwest::StatusCode {
    http().put(url).body(body).send().await.unwrap().status()
}

/// Uploads `body` under `key` with a presigned PUT.
async fn upload(s3: &EmbeddedS3, key: &str, body: &'static [u8]) {
    let url = s3
        .config()
        .signer()
        .unwrap()
        .presign_put(key, HOUR)
        .unwrap();
    assert_eq!(put(&url.url, body).await, 200, "upload of {key:?}");
}

#[tokio::test]
async fn presigned_get_fetches_exactly_the_stored_bytes() {
    let s3 = EmbeddedS3::start().await.unwrap();
    let store = s3.config().object_store().unwrap();
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    object_store::ObjectStoreExt::put(&store, &"users/42.png".into(), bytes.clone().into())
        .await
        .unwrap();
    let url = s3
        .config()
        .signer()
        .unwrap()
        .presign_get("users/42.png", HOUR)
        .unwrap();
    let (status, body) = get(&url.url).await;
    assert_eq!(status, 200);
    assert_eq!(body, bytes);
}

#[tokio::test]
async fn presigned_put_uploads_the_body() {
    let s3 = EmbeddedS3::start().await.unwrap();
    upload(&s3, "uploads/new.png", b"fresh bytes").await;
    let store = s3.config().object_store().unwrap();
    let got = object_store::ObjectStoreExt::get(&store, &"uploads/new.png".into())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&got[..], b"fresh bytes");
}

#[tokio::test]
async fn tampered_signature_is_rejected() {
    let s3 = EmbeddedS3::start().await.unwrap();
    upload(&s3, "k.png", b"x").await;
    let url = s3
        .config()
        .signer()
        .unwrap()
        .presign_get("k.png", HOUR)
        .unwrap()
        .url;
    assert_eq!(get(&url).await.0, 200);
    let last = url.chars().last().unwrap();
    let flipped = if last == '0' { '1' } else { '0' };
    let tampered = format!("{}{flipped}", &url[..url.len() - 1]);
    assert_eq!(get(&tampered).await.0, 403);
}

#[tokio::test]
async fn edited_expiry_is_rejected() {
    let s3 = EmbeddedS3::start().await.unwrap();
    upload(&s3, "k.png", b"x").await;
    let url = s3
        .config()
        .signer()
        .unwrap()
        .presign_get("k.png", HOUR)
        .unwrap()
        .url;
    assert!(url.contains("X-Amz-Expires=3600"));
    let edited = url.replace("X-Amz-Expires=3600", "X-Amz-Expires=604800");
    assert_eq!(get(&edited).await.0, 403);
}

#[tokio::test]
async fn another_key_swapped_in_is_rejected() {
    let s3 = EmbeddedS3::start().await.unwrap();
    upload(&s3, "users/1.png", b"one").await;
    upload(&s3, "users/2.png", b"two").await;
    let url = s3
        .config()
        .signer()
        .unwrap()
        .presign_get("users/1.png", HOUR)
        .unwrap()
        .url;
    assert_eq!(get(&url).await, (200, b"one".to_vec()));
    let swapped = url.replace("/users/1.png?", "/users/2.png?");
    assert_ne!(swapped, url);
    assert_eq!(get(&swapped).await.0, 403);
}

#[tokio::test]
async fn wrong_secret_is_rejected() {
    let s3 = EmbeddedS3::start().await.unwrap();
    upload(&s3, "k.png", b"x").await;
    let config = s3.config();
    let wrong = S3Config::new(
        config.endpoint(),
        config.region(),
        config.bucket(),
        Credentials::new(ACCESS_KEY_ID, "not-the-secret"),
    );
    let url = wrong.signer().unwrap().presign_get("k.png", HOUR).unwrap();
    assert_eq!(get(&url.url).await.0, 403);
    let put_url = wrong.signer().unwrap().presign_put("k.png", HOUR).unwrap();
    assert_eq!(put(&put_url.url, b"evil").await, 403);
    let right = config.signer().unwrap().presign_get("k.png", HOUR).unwrap();
    assert_eq!(get(&right.url).await, (200, b"x".to_vec()));
}

#[tokio::test]
async fn expired_url_is_rejected() {
    let s3 = EmbeddedS3::start().await.unwrap();
    upload(&s3, "k.png", b"x").await;
    let signer = s3.config().signer().unwrap();
    // Signed two hours ago, valid for one: expired an hour ago.
    let past = SystemClock.now().saturating_sub(2 * HOUR);
    let expired = signer.presign_at(Method::Get, "k.png", HOUR, past).unwrap();
    assert!(expired.expires_at < SystemClock.now());
    assert_eq!(get(&expired.url).await.0, 403);
    // Signed as long ago but valid for three hours: still good.
    let alive = signer
        .presign_at(Method::Get, "k.png", 3 * HOUR, past)
        .unwrap();
    assert_eq!(get(&alive.url).await.0, 200);
}

#[tokio::test]
async fn special_character_keys_reach_the_right_object() {
    let s3 = EmbeddedS3::start().await.unwrap();
    let keys: [(&str, &'static [u8]); 9] = [
        ("a b.png", b"space"),
        ("a+b.png", b"plus"),
        ("x=y&z.png", b"equals-amp"),
        ("ünïcødé/☃ 😀.png", b"unicode"),
        ("dir/sub/file.txt", b"nested"),
        ("100%.png", b"percent"),
        ("semi;colon,comma'quote(paren)!*.png", b"punct"),
        ("tilde~dash-under_score.png", b"unreserved"),
        ("question?hash#.png", b"query-chars"),
    ];
    for (key, body) in keys {
        upload(&s3, key, body).await;
        // The server stored it under exactly this key (s3s-fs keeps keys as paths).
        let on_disk = std::fs::read(s3.root().join("avatars").join(key)).unwrap();
        assert_eq!(on_disk, body, "{key:?} on disk");
    }
    let signer = s3.config().signer().unwrap();
    for (key, body) in keys {
        let url = signer.presign_get(key, HOUR).unwrap();
        assert_eq!(get(&url.url).await, (200, body.to_vec()), "{key:?}");
    }
}

#[tokio::test]
async fn rotated_credentials_take_effect_on_the_next_url() {
    let s3 = EmbeddedS3::start().await.unwrap();
    upload(&s3, "k.png", b"x").await;
    let config = s3.config();
    let signer = S3Config::new(
        config.endpoint(),
        config.region(),
        config.bucket(),
        Credentials::new(ACCESS_KEY_ID, "stale-secret"),
    )
    .signer()
    .unwrap();
    let stale = signer.presign_get("k.png", HOUR).unwrap();
    assert_eq!(get(&stale.url).await.0, 403);
    signer.set_credentials(config.credentials().clone());
    let fresh = signer.presign_get("k.png", HOUR).unwrap();
    assert_eq!(get(&fresh.url).await, (200, b"x".to_vec()));
}

/// A signed `response-cache-control` is accepted by s3s (SigV4 covers it), the
/// answer carries that header (applied by the embedded server, as S3 does), and
/// editing, adding or removing an override breaks the signature.
#[tokio::test]
async fn signed_response_overrides_are_applied_and_cannot_be_edited() {
    let s3 = EmbeddedS3::start().await.unwrap();
    upload(&s3, "users/7/v1.png", b"png bytes").await;
    let signer = s3.config().signer().unwrap();
    let headers = ResponseHeaders::new()
        .cache_control("private, max-age=3300, immutable")
        .content_disposition("inline; filename=\"avatar.png\"")
        .content_type("image/png");
    let url = signer
        .presign_get_with("users/7/v1.png", HOUR, &headers)
        .unwrap()
        .url;
    let resp = http().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["cache-control"],
        "private, max-age=3300, immutable"
    );
    assert_eq!(resp.headers()["content-type"], "image/png");
    assert_eq!(
        resp.headers()["content-disposition"],
        "inline; filename=\"avatar.png\""
    );
    assert_eq!(&resp.bytes().await.unwrap()[..], b"png bytes");

    // A longer max-age, swapped in by a client.
    let edited = url.replace("max-age%3D3300", "max-age%3D99999");
    assert_ne!(edited, url);
    assert_eq!(get(&edited).await.0, 403);
    // An override removed, or one added, is refused too.
    let start = url.find("&response-content-type=").unwrap();
    let end = start + url[start + 1..].find('&').unwrap() + 1;
    let removed = format!("{}{}", &url[..start], &url[end..]);
    assert_eq!(get(&removed).await.0, 403);
    let added = format!("{url}&response-expires=0");
    assert_eq!(get(&added).await.0, 403);
    // A plain URL to the same object has no such header.
    let plain = signer.presign_get("users/7/v1.png", HOUR).unwrap().url;
    let resp = http().get(&plain).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("cache-control").is_none());
}

#[tokio::test]
async fn embedded_s3_counts_object_gets_and_puts() {
    let s3 = EmbeddedS3::start().await.unwrap();
    assert_eq!(s3.requests(), Default::default());
    upload(&s3, "a.png", b"a").await;
    let signer = s3.config().signer().unwrap();
    let url = signer.presign_get("a.png", HOUR).unwrap().url;
    assert_eq!(get(&url).await.0, 200);
    assert_eq!(get(&url).await.0, 200);
    // A refused GET reached the server: it counts.
    let tampered = url.replace("a.png?", "b.png?");
    assert_eq!(get(&tampered).await.0, 403);
    // Listing, HEAD and DELETE are not object GETs/PUTs.
    let store = s3.config().object_store().unwrap();
    let _ = object_store::ObjectStoreExt::head(&store, &"a.png".into()).await;
    let counts = s3.requests();
    assert_eq!((counts.get_object, counts.put_object), (3, 1));
}
