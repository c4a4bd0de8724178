//! Signing one presigned GET URL: `presign::Signer` against `rusty-s3` and
//! `object_store`'s S3 signer, same bucket, key, credentials and validity, in the
//! same run. Goals (issue 4): at least as fast as rusty-s3, at least 2× faster
//! than object_store.
//!
//! presign and rusty-s3 take the signing time as an argument (a fixed instant);
//! object_store reads the system clock and resolves its (static) credentials on
//! each call, behind an `async fn` that completes on its first poll — polled
//! once with a no-op waker here, so no executor cost is added.
//!
//! After criterion's group, the three signers run interleaved in rounds (one
//! URL, and 50 URLs of 50 keys), each against rusty-s3 and object_store in the
//! same round: that is the table `bench-results/presign.json` holds.

use benches::results::{interleave, ns_per_op, rounds, Goal, SuiteResults};
use benches::{criterion, ready};
use std::hint::black_box;
use std::time::Duration;

use cache_core::Timestamp;
use criterion::{criterion_group, Criterion};
use object_store::signer::Signer as _;

const ENDPOINT: &str = "http://127.0.0.1:9000";
const REGION: &str = "us-east-1";
const BUCKET: &str = "avatars";
const KEY: &str = "avatars/user-42";
const ACCESS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const VALIDITY: Duration = Duration::from_secs(3_600);
const AT_SECS: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

/// The three signers, set up for the same bucket, credentials and time.
struct Signers {
    ours: presign::Signer,
    at: Timestamp,
    rusty_bucket: rusty_s3::Bucket,
    rusty_creds: rusty_s3::Credentials,
    rusty_at: jiff::Timestamp,
    store: object_store::aws::AmazonS3,
}

impl Signers {
    fn new() -> Self {
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
        let o =
            ready(store.signed_url(http::Method::GET, &path, VALIDITY)).expect("object_store sign");
        assert!(o.as_str().contains("/avatars/avatars/user-42?"));
        Signers {
            ours,
            at,
            rusty_bucket,
            rusty_creds,
            rusty_at,
            store,
        }
    }

    fn ours(&self, key: &str) -> presign::PresignedUrl {
        self.ours
            .presign_at(
                presign::Method::Get,
                black_box(key),
                VALIDITY,
                black_box(self.at),
            )
            .expect("sign")
    }

    fn rusty(&self, key: &str) -> url::Url {
        use rusty_s3::S3Action as _;
        self.rusty_bucket
            .get_object(Some(&self.rusty_creds), black_box(key))
            .sign_with_time(VALIDITY, black_box(&self.rusty_at))
    }

    fn object_store(&self, key: &str) -> url::Url {
        let path = object_store::path::Path::from(black_box(key));
        ready(self.store.signed_url(http::Method::GET, &path, VALIDITY)).expect("sign")
    }
}

fn sign_one_url(c: &mut Criterion) {
    let s = Signers::new();
    let mut group = c.benchmark_group("presign/sign_get_url");
    group.bench_function("presign", |bch| bch.iter(|| black_box(s.ours(KEY))));
    group.bench_function("rusty-s3", |bch| bch.iter(|| black_box(s.rusty(KEY))));
    group.bench_function("object_store", |bch| {
        bch.iter(|| black_box(s.object_store(KEY)))
    });
    group.finish();
}

/// One URL and 50 URLs (50 keys) from each signer, interleaved in rounds.
fn interleaved() {
    let s = Signers::new();
    let keys: Vec<String> = (0..50).map(|i| format!("avatars/user-{i}")).collect();
    const ONE: usize = 2_000;
    const BATCHES: usize = 40;
    let one = |sign: &dyn Fn(&str)| ns_per_op(ONE, |_| sign(KEY)) / 1e3;
    let fifty =
        |sign: &dyn Fn(&str)| ns_per_op(BATCHES, |_| keys.iter().for_each(|k| sign(k))) / 1e3;
    let ours = |k: &str| {
        black_box(s.ours(k));
    };
    let rusty = |k: &str| {
        black_box(s.rusty(k));
    };
    let store = |k: &str| {
        black_box(s.object_store(k));
    };
    let m = interleave(
        rounds(51),
        &mut [
            &mut |_| one(&rusty),
            &mut |_| one(&store),
            &mut |_| one(&ours),
            &mut |_| fifty(&rusty),
            &mut |_| fifty(&store),
            &mut |_| fifty(&ours),
        ],
    );
    let mut results = SuiteResults::new(
        "presign",
        format!(
            "same endpoint, bucket, credentials, 1 h validity; interleaved: {} rounds × ({ONE} single URLs, {BATCHES} batches of 50) per signer; median µs",
            rounds(51)
        ),
    );
    for (ours, rusty, store, what) in [(2, 0, 1, "1 URL"), (5, 3, 4, "50 URLs")] {
        let name = format!("`presign::Signer`, {what}");
        results.push(
            m.row(ours, &name, rusty, &format!("rusty-s3 0.11, {what}"), "µs")
                .goal(Goal::AtMost(1.0)),
        );
        results.push(
            m.row(
                ours,
                &name,
                store,
                &format!("object_store 0.13, {what}"),
                "µs",
            )
            .goal(Goal::AtMost(0.5)),
        );
    }
    results.finish();
}

criterion_group! {
    name = benches;
    config = criterion();
    targets = sign_one_url
}

fn main() {
    benches();
    if std::env::args().all(|a| a != "--list") {
        interleaved();
    }
    Criterion::default().configure_from_args().final_summary();
}
