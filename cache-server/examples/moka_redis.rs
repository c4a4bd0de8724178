//! moka → Redis in front of an origin, as one instance of a fleet would run it.
//!
//! Uses the Redis at `REDIS_URL` if set; otherwise starts a throwaway
//! `redis-server` (it must be on `PATH`: `sudo apt-get install -y redis-server`)
//! on a free loopback port and stops it at the end.
//!
//! `cargo run -p cache-server --example moka_redis`

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cache_core::{loader_fn, BoxError, Clock, Entry, SystemClock, Tier, TieredCache};
use cache_server::{MokaTier, RedisTier};

/// A `redis-server` child process, killed on drop.
struct LocalRedis(Child);

impl Drop for LocalRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn local_redis() -> Result<(String, LocalRedis), BoxError> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start redis-server ({e}); install it or set REDIS_URL"))?;
    Ok((format!("redis://127.0.0.1:{port}"), LocalRedis(child)))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let (url, _server) = match std::env::var("REDIS_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let (url, server) = local_redis()?;
            (url, Some(server))
        }
    };
    // A fresh redis-server takes a moment to listen: retry the connection.
    let mut attempts = 0;
    let redis = loop {
        match RedisTier::builder()
            .url(url.as_str())
            .namespace("example")
            .build()
            .await
        {
            Ok(tier) => break tier,
            Err(_) if attempts < 50 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(format!("cannot reach Redis at {url}: {e}").into()),
        }
    };
    println!("Redis at {url}");

    let cache: TieredCache<String, String> = TieredCache::builder()
        .tier(
            Tier::new(MokaTier::builder().max_bytes(32 << 20).build()).ttl(Duration::from_secs(60)),
        )
        .tier(
            Tier::new(redis)
                .ttl(Duration::from_secs(3_000))
                .timeout(Duration::from_millis(250)),
        )
        .origin(loader_fn(|user: String| async move {
            Ok::<_, BoxError>(Some(Entry::expiring_in(
                format!("https://img.example/avatars/{user}.png"),
                SystemClock.now(),
                Duration::from_secs(3_600),
            )))
        }))
        .build();

    let user = "user:42".to_string();
    for _ in 0..2 {
        let hit = cache
            .get(&user)
            .await?
            .expect("the origin knows every user");
        println!("{user} -> {} from {:?}", hit.value(), hit.source);
    }
    // Invalidation removes the key from moka and from Redis (and reports each
    // tier's outcome); the next read goes back to the origin.
    let report = cache.invalidate(&user).await?;
    println!("invalidated {user}: {report:?}");
    let hit = cache
        .get(&user)
        .await?
        .expect("the origin knows every user");
    println!("{user} -> {} from {:?}", hit.value(), hit.source);
    Ok(())
}
