//! `PresignedUrls` with in-memory tiers: lifetimes, the margin guarantee, batch
//! lookups, user id checks, and the replace flow against a real S3 (s3s-fs).
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cache_core::{
    async_trait, CacheLayer, Clock, Entry, ManualClock, MemoryTier, SystemClock, Tier, Timestamp,
};
use presign::embedded::EmbeddedS3;
use presign::{Credentials, Error, PresignedUrl, PresignedUrls, S3Config, DEFAULT_MARGIN};
use proptest::prelude::*;

mod support;
use support::{fetch, http};

const MIN: Duration = Duration::from_secs(60);

fn offline_config(creds: Credentials) -> S3Config {
    S3Config::new("http://127.0.0.1:9", "us-east-1", "avatars", creds)
}

/// Counts calls, so tests can see how many round trips a lookup made.
#[derive(Debug, Default)]
struct Counting {
    inner: MemoryTier<String, PresignedUrl>,
    gets: AtomicU64,
    batch_gets: AtomicU64,
}

#[async_trait]
impl CacheLayer<String, PresignedUrl> for Counting {
    fn name(&self) -> &str {
        "shared"
    }
    async fn get(&self, key: &String) -> cache_core::Result<Option<Entry<PresignedUrl>>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key).await
    }
    async fn get_many(
        &self,
        keys: &[String],
    ) -> cache_core::Result<Vec<Option<Entry<PresignedUrl>>>> {
        self.batch_gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get_many(keys).await
    }
    async fn put(&self, key: &String, entry: Entry<PresignedUrl>) -> cache_core::Result<()> {
        self.inner.put(key, entry).await
    }
    async fn remove(&self, key: &String) -> cache_core::Result<bool> {
        self.inner.remove(key).await
    }
    async fn clear(&self) -> cache_core::Result<()> {
        self.inner.clear().await
    }
}

/// The moka tier (10 min) and a Redis-like shared tier (50 min), both on `clock`.
fn service(clock: &ManualClock, creds: Credentials) -> (PresignedUrls, Arc<Counting>) {
    let config = offline_config(creds);
    let shared = Arc::new(Counting {
        inner: MemoryTier::builder()
            .name("shared")
            .clock(clock.clone())
            .build(),
        ..Counting::default()
    });
    let urls = PresignedUrls::builder(
        config.signer().unwrap(),
        Arc::new(config.object_store().unwrap()),
    )
    .tier(
        Tier::new(
            cache_server::MokaTier::<String, PresignedUrl>::builder()
                .name("moka")
                .clock(clock.clone())
                .build(),
        )
        .ttl(10 * MIN),
    )
    .tier(Tier::shared(shared.clone()).ttl(50 * MIN))
    .clock(clock.clone())
    .build()
    .unwrap();
    (urls, shared)
}

fn creds() -> Credentials {
    Credentials::new("AKIDEXAMPLE", "secret")
}

#[test]
fn url_is_cached_per_user_and_signed_once() {
    futures_executor::block_on(async {
        let clock = ManualClock::new();
        let (urls, _) = service(&clock, creds());
        let a = urls.url("alice").await.unwrap();
        clock.advance(MIN);
        assert_eq!(urls.url("alice").await.unwrap(), a);
        let b = urls.url("bob").await.unwrap();
        assert_ne!(a.url, b.url);
        assert!(a.url.contains("/avatars/avatars/alice?"), "{}", a.url);
        assert_eq!(urls.signatures(), 2);
        assert_eq!(a.expires_at, ManualClock::START.saturating_add(60 * MIN));
    });
}

#[test]
fn cache_lifetime_is_fifty_minutes_by_default() {
    futures_executor::block_on(async {
        let clock = ManualClock::new();
        let (urls, _) = service(&clock, creds());
        let first = urls.url("alice").await.unwrap();
        clock.advance(50 * MIN - Duration::from_millis(1));
        assert_eq!(
            urls.url("alice").await.unwrap(),
            first,
            "still cached just before 50 min"
        );
        clock.advance(Duration::from_millis(1));
        let second = urls.url("alice").await.unwrap();
        assert_ne!(second, first, "re-signed at 50 min");
        assert_eq!(urls.signatures(), 2);
    });
}

#[test]
fn cache_lifetime_is_capped_by_url_expiry_minus_margin() {
    futures_executor::block_on(async {
        let clock = ManualClock::new();
        let config = offline_config(creds());
        let urls = PresignedUrls::builder(
            config.signer().unwrap(),
            Arc::new(config.object_store().unwrap()),
        )
        .tier(Tier::new(
            MemoryTier::builder().clock(clock.clone()).build(),
        ))
        .clock(clock.clone())
        .url_validity(30 * MIN)
        .build()
        .unwrap();
        let first = urls.url("u1").await.unwrap();
        assert_eq!(
            first.expires_at,
            ManualClock::START.saturating_add(30 * MIN)
        );
        clock.advance(25 * MIN - Duration::from_millis(1));
        assert_eq!(urls.url("u1").await.unwrap(), first);
        clock.advance(Duration::from_millis(1));
        assert_ne!(
            urls.url("u1").await.unwrap(),
            first,
            "re-signed at expiry - margin"
        );
    });
}

#[test]
fn cache_lifetime_is_capped_by_credential_expiry_minus_margin() {
    futures_executor::block_on(async {
        let clock = ManualClock::new();
        let creds_end = ManualClock::START.saturating_add(20 * MIN);
        let (urls, _) = service(&clock, creds().with_expiry(creds_end));
        let first = urls.url("u1").await.unwrap();
        assert_eq!(
            first.expires_at, creds_end,
            "a URL dies with its credentials"
        );
        clock.advance(15 * MIN - Duration::from_millis(1));
        assert_eq!(urls.url("u1").await.unwrap(), first);
        clock.advance(Duration::from_millis(1));
        // Credentials have exactly the margin left: nothing useful can be signed.
        let err = urls.url("u1").await.unwrap_err();
        assert!(
            err.to_string().contains("credentials expire too soon"),
            "{err}"
        );
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the request times, every URL handed out has at least the margin
    /// of validity left, and only URLs of the asked-for user are returned.
    #[test]
    fn every_url_handed_out_has_the_margin_left(
        steps in prop::collection::vec((0u64..(3 * 3_600_000), 0usize..4, any::<bool>()), 1..60),
        creds_life_min in prop::option::of(1u64..(6 * 60)),
    ) {
        futures_executor::block_on(async {
            let clock = ManualClock::new();
            let mut c = creds();
            if let Some(m) = creds_life_min {
                c = c.with_expiry(ManualClock::START.saturating_add(Duration::from_secs(m * 60)));
            }
            let (urls, _) = service(&clock, c);
            let users = ["u0", "u1", "u2", "u3"];
            for (advance_ms, user, batch) in steps {
                clock.advance(Duration::from_millis(advance_ms));
                let now = clock.now();
                let got = if batch {
                    urls.urls(&users).await.map(|v| v[user].clone())
                } else {
                    urls.url(users[user]).await
                };
                match got {
                    Ok(url) => {
                        let left = url.expires_at.duration_since(now);
                        prop_assert!(left >= DEFAULT_MARGIN, "{:?} left at {:?}", left, now);
                        let path = format!("/avatars/{}?", users[user]);
                        prop_assert!(url.url.contains(&path), "{} for {}", url.url, users[user]);
                    }
                    Err(err) => {
                        // Only allowed when the credentials themselves are about to expire.
                        let creds_end = ManualClock::START.saturating_add(Duration::from_secs(creds_life_min.unwrap_or(0) * 60));
                        prop_assert!(creds_life_min.is_some() && creds_end.duration_since(now) <= DEFAULT_MARGIN + Duration::from_secs(1),
                            "unexpected error {err}");
                    }
                }
            }
            Ok(())
        })?;
    }
}

#[test]
fn batch_of_fifty_users_reads_each_tier_once_and_signs_only_misses() {
    futures_executor::block_on(async {
        let clock = ManualClock::new();
        let (urls, shared) = service(&clock, creds());
        let users: Vec<String> = (0..50).map(|i| format!("user-{i}")).collect();
        // 20 users already resolved (in both tiers).
        let warm = urls.urls(&users[..20]).await.unwrap();
        assert_eq!(urls.signatures(), 20);
        // Drop them from the local tier only, as if this were another instance.
        for u in &users[..20] {
            urls.cache().only(&[0]).invalidate(u).await.unwrap();
        }
        let gets_before = (
            shared.gets.load(Ordering::SeqCst),
            shared.batch_gets.load(Ordering::SeqCst),
        );
        let all = urls.urls(&users).await.unwrap();
        assert_eq!(all.len(), 50);
        assert_eq!(&all[..20], &warm[..], "the 20 come from the shared tier");
        assert_eq!(urls.signatures(), 20 + 30, "only the 30 misses are signed");
        assert_eq!(
            shared.batch_gets.load(Ordering::SeqCst) - gets_before.1,
            1,
            "one batch read of the shared tier"
        );
        assert_eq!(
            shared.gets.load(Ordering::SeqCst) - gets_before.0,
            0,
            "no single reads"
        );
        for (u, url) in users.iter().zip(&all) {
            assert!(
                url.url.contains(&format!("/avatars/{u}?")),
                "{u} got {}",
                url.url
            );
        }
    });
}

#[test]
fn bad_user_ids_are_clear_errors_and_sign_nothing() {
    futures_executor::block_on(async {
        let clock = ManualClock::new();
        let (urls, _) = service(&clock, creds());
        let long = "x".repeat(129);
        for bad in [
            "",
            "..",
            "../bob",
            "a/../b",
            "/etc/passwd",
            "a/b",
            "a b",
            "ünï",
            "a\nb",
            ".hidden",
            long.as_str(),
        ] {
            let err = urls.url(bad).await.unwrap_err();
            assert!(matches!(err, Error::InvalidUserId { .. }), "{bad:?}: {err}");
            assert!(err.to_string().starts_with("invalid user id"), "{err}");
            assert!(urls.object_key(bad).is_err());
        }
        assert!(urls.urls(&["ok", "../no"]).await.is_err());
        assert_eq!(urls.signatures(), 0);
        assert_eq!(urls.object_key("a.b@c-d_e").unwrap(), "avatars/a.b@c-d_e");
        assert!(urls.url(&"x".repeat(128)).await.is_ok());
    });
}

#[test]
fn bad_settings_are_rejected() {
    let config = offline_config(creds());
    let build = |f: fn(presign::PresignedUrlsBuilder) -> presign::PresignedUrlsBuilder| {
        f(PresignedUrls::builder(
            config.signer().unwrap(),
            Arc::new(config.object_store().unwrap()),
        ))
        .build()
    };
    assert!(matches!(
        build(|b| b.url_validity(8 * 24 * 60 * MIN)),
        Err(Error::ExpiryTooLong { .. })
    ));
    assert!(build(|b| b.url_validity(5 * MIN)).is_err());
    assert!(build(|b| b.key_prefix("/abs/")).is_err());
    assert!(build(|b| b.key_prefix("no-slash")).is_err());
    assert!(build(|b| b.key_prefix("pics/")).is_ok());
}

/// A tier whose next read, once armed, reads its entry and then waits to be
/// released before answering: a lookup caught between reading and returning.
#[derive(Debug)]
struct HeldAfterRead {
    inner: MemoryTier<String, PresignedUrl>,
    hold: std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    read_done: tokio::sync::Notify,
}

#[async_trait]
impl CacheLayer<String, PresignedUrl> for HeldAfterRead {
    fn name(&self) -> &str {
        "shared"
    }
    async fn get(&self, key: &String) -> cache_core::Result<Option<Entry<PresignedUrl>>> {
        let found = self.inner.get(key).await;
        let held = self.hold.lock().unwrap().take();
        if let Some(held) = held {
            self.read_done.notify_one();
            let _ = held.await;
        }
        found
    }
    async fn put(&self, key: &String, entry: Entry<PresignedUrl>) -> cache_core::Result<()> {
        self.inner.put(key, entry).await
    }
    async fn remove(&self, key: &String) -> cache_core::Result<bool> {
        self.inner.remove(key).await
    }
    async fn clear(&self) -> cache_core::Result<()> {
        self.inner.clear().await
    }
}

#[tokio::test]
async fn replace_serves_new_bytes_even_with_a_lookup_in_flight() {
    let s3 = EmbeddedS3::start().await.unwrap();
    let config = s3.config();
    // Real time (S3 checks URLs against it), moved forward by hand.
    let clock = ManualClock::starting_at(SystemClock.now());
    let shared = Arc::new(HeldAfterRead {
        inner: MemoryTier::builder()
            .name("shared")
            .clock(clock.clone())
            .build(),
        hold: std::sync::Mutex::new(None),
        read_done: tokio::sync::Notify::new(),
    });
    let urls = Arc::new(
        PresignedUrls::builder(
            config.signer().unwrap(),
            Arc::new(config.object_store().unwrap()),
        )
        .tier(Tier::new(
            MemoryTier::builder()
                .name("local")
                .clock(clock.clone())
                .build(),
        ))
        .tier(Tier::shared(shared.clone()).ttl(50 * MIN))
        .clock(clock.clone())
        .build()
        .unwrap(),
    );
    urls.replace("alice", Bytes::from_static(b"old picture"), "image/png")
        .await
        .unwrap();
    let old = urls.url("alice").await.unwrap();
    assert_eq!(fetch(&old.url).await.1, b"old picture");

    // Another request resolves alice: its local tier is empty and the shared tier
    // has read the old URL but not yet answered when the replace happens.
    urls.cache()
        .only(&[0])
        .invalidate(&"alice".to_string())
        .await
        .unwrap();
    let (release, held) = tokio::sync::oneshot::channel();
    *shared.hold.lock().unwrap() = Some(held);
    let racing = tokio::spawn({
        let urls = urls.clone();
        async move { urls.url("alice").await.unwrap() }
    });
    // Liveness bound only: wait until the racing read has read the old entry.
    tokio::time::timeout(Duration::from_secs(10), shared.read_done.notified())
        .await
        .unwrap();
    clock.advance(Duration::from_secs(2));
    urls.replace("alice", Bytes::from_static(b"new picture"), "image/webp")
        .await
        .unwrap();
    release.send(()).unwrap();
    let raced = racing.await.unwrap();
    assert_eq!(raced, old, "the racing read got the old URL");

    let signed_before = urls.signatures();
    let next = urls.url("alice").await.unwrap();
    assert_ne!(
        next, old,
        "the old URL was not written back by the racing read"
    );
    assert_eq!(
        urls.signatures(),
        signed_before + 1,
        "the next lookup signed a fresh URL"
    );
    let (status, body, ct) = fetch(&next.url).await;
    assert_eq!((status, body.as_slice()), (200, &b"new picture"[..]));
    assert_eq!(ct.as_deref(), Some("image/webp"));
    assert_eq!(
        urls.url("alice").await.unwrap(),
        next,
        "and it is cached again"
    );
}

#[tokio::test]
async fn head_delete_and_upload_url_work_against_s3() {
    let s3 = EmbeddedS3::start().await.unwrap();
    let config = s3.config();
    let urls = PresignedUrls::builder(
        config.signer().unwrap(),
        Arc::new(config.object_store().unwrap()),
    )
    .tier(Tier::new(MemoryTier::new()))
    .build()
    .unwrap();
    assert!(urls.head("carol").await.unwrap().is_none());
    let put = urls.upload_url("carol", 10 * MIN).unwrap();
    let status = http()
        .put(&put.url)
        .body("uploaded")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    urls.invalidate("carol").await.unwrap();
    assert_eq!(urls.head("carol").await.unwrap().unwrap().size, 8);
    let get = urls.url("carol").await.unwrap();
    assert!(get.remaining(SystemClock.now()) > 55 * MIN);
    assert_eq!(fetch(&get.url).await.1, b"uploaded");
    urls.delete("carol").await.unwrap();
    assert!(urls.head("carol").await.unwrap().is_none());
    assert_eq!(fetch(&urls.url("carol").await.unwrap().url).await.0, 404);
}

#[test]
fn debug_of_the_service_hides_credentials() {
    let clock = ManualClock::new();
    let (urls, _) = service(
        &clock,
        Credentials::new("AKIDEXAMPLE", "TOPSECRETVALUE").with_session_token("TOKENVALUE"),
    );
    let shown = format!("{urls:?}");
    assert!(
        !shown.contains("TOPSECRETVALUE") && !shown.contains("TOKENVALUE"),
        "{shown}"
    );
    let _ = Timestamp::UNIX_EPOCH;
}

fn per_upload(s3: &EmbeddedS3, clock: &ManualClock) -> PresignedUrls {
    let config = s3.config();
    PresignedUrls::builder(
        config.signer().unwrap(),
        Arc::new(config.object_store().unwrap()),
    )
    .object_keys(presign::ObjectKeys::PerUpload)
    .tier(Tier::new(MemoryTier::builder().clock(clock.clone()).build()).ttl(10 * MIN))
    .clock(clock.clone())
    .build()
    .unwrap()
}

/// With `ObjectKeys::PerUpload`, two uploads at the same instant (the manual
/// clock stands still) get two ordered keys; the newest is served, with a
/// signed immutable Cache-Control; a user without versions is `NoPicture`,
/// for a single and a batch lookup; `delete` removes every version.
#[tokio::test]
async fn per_upload_keys_are_distinct_ordered_and_the_newest_wins() {
    let s3 = EmbeddedS3::start().await.unwrap();
    // The clock reads real time (S3 checks signing times) and stands still.
    let clock = ManualClock::starting_at(SystemClock.now());
    let urls = per_upload(&s3, &clock);
    assert!(matches!(
        urls.url("dave").await,
        Err(Error::NoPicture { .. })
    ));
    urls.replace("dave", Bytes::from_static(b"one"), "image/png")
        .await
        .unwrap();
    let k1 = urls.current_object_key("dave").await.unwrap().unwrap();
    urls.replace("dave", Bytes::from_static(b"one"), "image/png")
        .await
        .unwrap();
    let k2 = urls.current_object_key("dave").await.unwrap().unwrap();
    urls.replace("dave", Bytes::from_static(b"two"), "image/png")
        .await
        .unwrap();
    let k3 = urls.current_object_key("dave").await.unwrap().unwrap();
    assert!(
        k1.starts_with("avatars/dave/") && k1 < k2 && k2 < k3,
        "{k1} {k2} {k3}"
    );
    let url = urls.url("dave").await.unwrap();
    assert!(url.url.contains(&format!("/{k3}?")), "{}", url.url);
    assert!(
        url.url
            .contains("&response-cache-control=private%2C%20max-age%3D3300%2C%20immutable&"),
        "{}",
        url.url
    );
    let resp = http().get(&url.url).send().await.unwrap();
    assert_eq!(
        resp.headers()["cache-control"],
        "private, max-age=3300, immutable"
    );
    assert_eq!(&resp.bytes().await.unwrap()[..], b"two");
    // A batch with a user who has no picture names that user.
    urls.replace("erin", Bytes::from_static(b"e"), "image/png")
        .await
        .unwrap();
    match urls.urls(&["erin", "frank"]).await {
        Err(Error::NoPicture { user }) => assert_eq!(user, "frank"),
        other => panic!("{other:?}"),
    }
    urls.delete("dave").await.unwrap();
    assert!(urls.current_object_key("dave").await.unwrap().is_none());
    assert_eq!(fetch(&url.url).await.0, 404);
}

/// `sweep` deletes a replaced version once the clock passes its successor's
/// upload time + URL validity + grace, never the newest version.
#[tokio::test]
async fn sweep_deletes_replaced_versions_only_after_their_urls_expired() {
    let s3 = EmbeddedS3::start().await.unwrap();
    let clock = ManualClock::starting_at(SystemClock.now());
    let urls = per_upload(&s3, &clock);
    urls.replace("gus", Bytes::from_static(b"v1"), "image/png")
        .await
        .unwrap();
    let v1 = urls.current_object_key("gus").await.unwrap().unwrap();
    clock.advance(MIN);
    urls.replace("gus", Bytes::from_static(b"v2"), "image/png")
        .await
        .unwrap();
    let v2 = urls.current_object_key("gus").await.unwrap().unwrap();
    urls.replace("hal", Bytes::from_static(b"h"), "image/png")
        .await
        .unwrap();
    let exists = |key: String| {
        let store = urls.store().clone();
        async move {
            object_store::ObjectStoreExt::head(&store, &key.as_str().into())
                .await
                .is_ok()
        }
    };
    let keep = presign::DEFAULT_URL_VALIDITY + presign::SWEEP_GRACE;
    clock.advance(keep - Duration::from_millis(1));
    assert_eq!(urls.sweep().await.unwrap(), 0);
    assert!(exists(v1.clone()).await);
    clock.advance(Duration::from_millis(1));
    assert_eq!(urls.sweep().await.unwrap(), 1);
    assert!(!exists(v1).await);
    assert!(exists(v2.clone()).await);
    // Much later: the newest versions stay.
    clock.advance(24 * 60 * MIN);
    assert_eq!(urls.sweep().await.unwrap(), 0);
    assert!(exists(v2).await);
    assert!(urls.current_object_key("hal").await.unwrap().is_some());
}
