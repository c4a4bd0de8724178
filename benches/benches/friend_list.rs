//! A friend list: 50 avatar URLs through `presign::PresignedUrls` (moka, then
//! Redis, then the signer), cold (no tier holds them: one `MGET` that misses,
//! 50 signatures, one fenced write to each tier), Redis-warm (moka empty: one
//! `MGET`) and fully warm (moka hits), against what a backend without a URL
//! cache does: 50 sequential object `HEAD`s to S3 each followed by a presign.
//! The S3 is the embedded s3s-fs on loopback (`presign::embedded`) and Redis a
//! redis-server the bench starts, so a round trip here is far cheaper than the
//! 350 ms behind the original claim (17.5 s → 50 ms for 50 friends); the
//! ratios, not the absolute times, carry over.
//!
//! Sides run in turn in each round (fresh ids for the cold side every round),
//! medians and per-round ratios against the uncached baseline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::results::{interleave, rounds, SuiteResults};
use bytes::Bytes;
use cache_core::{CacheLayer, Clock, SystemClock, Tier};
use cache_server::testing::RedisServer;
use cache_server::{MokaTier, RedisTier};
use presign::embedded::EmbeddedS3;
use presign::{Method, PresignedUrl, PresignedUrls};

/// Friends on the list.
const FRIENDS: usize = 50;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let redis = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (_s3, urls, moka) = rt.block_on(async {
        let s3 = EmbeddedS3::start().await.expect("embedded S3");
        let config = s3.config();
        let moka = MokaTier::<String, PresignedUrl>::builder()
            .name("moka")
            .build();
        let shared = RedisTier::<PresignedUrl>::builder()
            .url(redis.url())
            .namespace("bench.friend-list")
            .build()
            .await
            .expect("redis");
        let urls = PresignedUrls::builder(
            config.signer().expect("signer"),
            Arc::new(config.object_store().expect("store")),
        )
        .tier(Tier::new(moka.clone()).ttl(Duration::from_secs(600)))
        .tier(Tier::new(shared).ttl(Duration::from_secs(3_000)))
        .build()
        .expect("urls");
        (s3, urls, moka)
    });
    // The baseline's 50 pictures exist, so each HEAD finds its object.
    let friends: Vec<String> = (1..=FRIENDS).map(|i| format!("friend-{i}")).collect();
    rt.block_on(async {
        for f in &friends {
            urls.replace(f, Bytes::from_static(b"\x89PNG\r\n\x1a\n"), "image/png")
                .await
                .expect("upload");
        }
    });
    let millis = |start: Instant| start.elapsed().as_secs_f64() * 1e3;

    let mut uncached = |_: usize| {
        rt.block_on(async {
            let start = Instant::now();
            for f in &friends {
                let head = urls.head(f).await.expect("head");
                assert!(head.is_some());
                let key = urls.object_key(f).expect("key");
                let url = urls
                    .signer()
                    .presign_at(
                        Method::Get,
                        &key,
                        Duration::from_secs(3_600),
                        SystemClock.now(),
                    )
                    .expect("sign");
                std::hint::black_box(url);
            }
            millis(start)
        })
    };
    // The cold side's ids of round `r` are warm for the other sides of `r`.
    let ids = |r: usize| -> Vec<String> { (0..FRIENDS).map(|i| format!("r{r}-{i}")).collect() };
    let signatures_before = urls.signatures();
    let mut cold = |r: usize| {
        rt.block_on(async {
            let ids = ids(r);
            let start = Instant::now();
            let got = urls.urls(&ids).await.expect("urls");
            let t = millis(start);
            assert_eq!(got.len(), FRIENDS);
            t
        })
    };
    let mut redis_warm = |r: usize| {
        rt.block_on(async {
            let ids = ids(r);
            for id in &ids {
                moka.remove(id).await.expect("remove");
            }
            let start = Instant::now();
            let got = urls.urls(&ids).await.expect("urls");
            let t = millis(start);
            assert_eq!(got.len(), FRIENDS);
            t
        })
    };
    let mut warm = |r: usize| {
        rt.block_on(async {
            let ids = ids(r);
            let start = Instant::now();
            let got = urls.urls(&ids).await.expect("urls");
            let t = millis(start);
            assert_eq!(got.len(), FRIENDS);
            t
        })
    };
    let rounds = rounds(31);
    let m = interleave(
        rounds,
        &mut [&mut uncached, &mut cold, &mut redis_warm, &mut warm],
    );
    assert_eq!(
        urls.signatures() - signatures_before,
        (rounds * FRIENDS) as u64,
        "only the cold side signs"
    );
    let mut results = SuiteResults::new(
        "friend_list",
        format!(
            "50 URLs per list, embedded S3 and redis-server on loopback; {rounds} rounds, sides in turn; median ms; the original claims 17.5 s → 50 ms with 350 ms S3 round trips"
        ),
    );
    let base = "50 sequential S3 `HEAD` + presign (no URL cache)";
    for (side, name) in [
        (
            1,
            "`PresignedUrls::urls`, cold (sign 50, fill moka and Redis)",
        ),
        (2, "`PresignedUrls::urls`, Redis-warm (one `MGET`)"),
        (3, "`PresignedUrls::urls`, fully warm (moka hits)"),
    ] {
        results.push(m.row(side, name, 0, base, "ms"));
    }
    results.finish();
}
