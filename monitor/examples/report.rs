//! A monitor on a two-tier chain: a few hundred reads of a skewed key set, then
//! the report as a console table, as JSON and as Prometheus text.
//!
//! `cargo run -p cache-monitor --example report`

use std::time::Duration;

use cache_core::{loader_fn, BoxError, Clock, Entry, ManualClock, MemoryTier, Tier, TieredCache};
use cache_monitor::Monitor;

fn main() -> Result<(), cache_core::Error> {
    let clock = ManualClock::new();
    let monitor = Monitor::builder().clock(clock.clone()).build();
    let origin_clock = clock.clone();
    let cache: TieredCache<u64, String> = TieredCache::builder()
        .clock(clock.clone())
        .tier(Tier::new(
            MemoryTier::builder()
                .name("memory")
                .max_entries(8)
                .clock(clock.clone())
                .build(),
        ))
        .tier(Tier::new(
            MemoryTier::builder()
                .name("shared")
                .clock(clock.clone())
                .build(),
        ))
        .origin(loader_fn(move |id: u64| {
            let now = origin_clock.now();
            async move {
                Ok::<_, BoxError>(Some(Entry::expiring_in(
                    format!("https://img.example/avatars/{id}.png"),
                    now,
                    Duration::from_secs(600),
                )))
            }
        }))
        .observer(monitor.clone())
        .build();

    futures_executor::block_on(async {
        for i in 0..400u64 {
            // Most reads go to a few users, some to many: the small tier misses
            // now and then and the shared one catches it.
            let id = if i % 4 == 0 { i % 40 } else { i % 5 };
            cache.get(&id).await?;
            clock.advance(Duration::from_millis(250));
        }
        Ok::<_, cache_core::Error>(())
    })?;

    let report = monitor.report();
    println!("{report}");
    println!(
        "JSON: {}",
        serde_json::to_string(&report).unwrap_or_default()
    );
    println!("\nPrometheus:\n{}", monitor.prometheus());
    Ok(())
}
