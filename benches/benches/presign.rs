//! Signing one presigned GET URL: `presign::Signer` against `rusty-s3` and
//! `object_store`'s S3 signer, same bucket, key, credentials and validity, in the
//! same run. Goals (issue 4): at least as fast as rusty-s3, at least 2× faster
//! than object_store.
//!
//! presign and rusty-s3 take the signing time as an argument (a fixed instant);
//! object_store reads the system clock and resolves its (static) credentials on
//! each call, behind an `async fn` that completes on its first poll — polled
//! once with a no-op waker here, so no executor cost is added.

use benches::ready;
use std::hint::black_box;
use std::time::Duration;

use cache_core::Timestamp;
use criterion::{criterion_group, criterion_main, Criterion};
use object_store::signer::Signer as _;

const ENDPOINT: &str = "http://127.0.0.1:9000";
const REGION: &str = "us-east-1";
const BUCKET: &str = "avatars";
const KEY: &str = "avatars/user-42";
const ACCESS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const VALIDITY: Duration = Duration::from_secs(3_600);
const AT_SECS: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

fn sign_one_url(c: &mut Criterion) {
    let ours = presign::S3Config::new(
        ENDPOINT,
        REGION,
        BUCKET,
        presign::Credentials::new(ACCESS_KEY, SECRET),
    )
    .signer()
    .expect("presign signer");
    let at = Timestamp::from_unix_millis(AT_SECS as u64 * 1_000);

    let rusty_bucket = rusty_s3::Bucket::new(
        url::Url::parse(ENDPOINT).expect("endpoint"),
        rusty_s3::UrlStyle::Path,
        BUCKET,
        REGION,
    )
    .expect("rusty-s3 bucket");
    let rusty_creds = rusty_s3::Credentials::new(ACCESS_KEY, SECRET);
    let rusty_at = jiff::Timestamp::from_second(AT_SECS).expect("timestamp");

    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(ENDPOINT)
        .with_region(REGION)
        .with_bucket_name(BUCKET)
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET)
        .with_allow_http(true)
        .build()
        .expect("object_store");
    let path = object_store::path::Path::from(KEY);

    // All three sign the same request: sanity-check the shapes once.
    let a = ours
        .presign_at(presign::Method::Get, KEY, VALIDITY, at)
        .expect("sign");
    let b = {
        use rusty_s3::S3Action as _;
        rusty_bucket
            .get_object(Some(&rusty_creds), KEY)
            .sign_with_time(VALIDITY, &rusty_at)
    };
    assert_eq!(a.url, b.as_str(), "presign and rusty-s3 sign identically");
    let o = ready(store.signed_url(http::Method::GET, &path, VALIDITY)).expect("object_store sign");
    assert!(o.as_str().contains("/avatars/avatars/user-42?"));

    let mut group = c.benchmark_group("presign/sign_get_url");
    group.bench_function("presign", |bch| {
        bch.iter(|| {
            black_box(
                ours.presign_at(
                    presign::Method::Get,
                    black_box(KEY),
                    VALIDITY,
                    black_box(at),
                )
                .expect("sign"),
            )
        })
    });
    group.bench_function("rusty-s3", |bch| {
        use rusty_s3::S3Action as _;
        bch.iter(|| {
            black_box(
                rusty_bucket
                    .get_object(Some(&rusty_creds), black_box(KEY))
                    .sign_with_time(VALIDITY, black_box(&rusty_at)),
            )
        })
    });
    group.bench_function("object_store", |bch| {
        bch.iter(|| {
            black_box(
                ready(store.signed_url(http::Method::GET, black_box(&path), VALIDITY))
                    .expect("sign"),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, sign_one_url);
criterion_main!(benches);
