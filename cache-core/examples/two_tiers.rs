//! Two tiers in front of an origin, on a manual clock: a short-lived "hot" tier
//! and a longer-lived "warm" one. Shows where each read is served from as time
//! passes and entries expire tier by tier.
//!
//! `cargo run -p cache-core --example two_tiers`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cache_core::{loader_fn, BoxError, Clock, Entry, ManualClock, MemoryTier, Tier, TieredCache};

fn main() -> Result<(), cache_core::Error> {
    let clock = ManualClock::new();
    let loads = Arc::new(AtomicUsize::new(0));
    let (origin_loads, origin_clock) = (loads.clone(), clock.clone());

    let cache: TieredCache<u64, String> = TieredCache::builder()
        .clock(clock.clone())
        .tier(
            Tier::new(
                MemoryTier::builder()
                    .name("hot")
                    .clock(clock.clone())
                    .build(),
            )
            .ttl(Duration::from_secs(60)),
        )
        .tier(
            Tier::new(
                MemoryTier::builder()
                    .name("warm")
                    .clock(clock.clone())
                    .build(),
            )
            .ttl(Duration::from_secs(600)),
        )
        .origin(loader_fn(move |id: u64| {
            origin_loads.fetch_add(1, Ordering::SeqCst);
            let now = origin_clock.now();
            async move {
                // The origin says how long its answer stays valid: one hour.
                Ok::<_, BoxError>(Some(Entry::expiring_in(
                    format!("avatar-{id}.png"),
                    now,
                    Duration::from_secs(3_600),
                )))
            }
        }))
        .build();

    futures_executor::block_on(async {
        for (step, advance) in [0, 30, 60, 600, 3_600].into_iter().enumerate() {
            clock.advance(Duration::from_secs(advance));
            let hit = cache.get(&42).await?.expect("the origin knows user 42");
            println!(
                "read {step} (+{advance:>4} s): {:<16} from {:?}",
                hit.value(),
                hit.source
            );
        }
        Ok::<_, cache_core::Error>(())
    })?;
    println!("origin loads: {}", loads.load(Ordering::SeqCst));
    Ok(())
}
