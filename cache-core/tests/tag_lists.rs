//! The process-wide table of tag lists is bounded: past `Tags::MAX_LISTS`
//! lists the oldest are forgotten; an entry carrying a forgotten list reads
//! as absent once its tags can no longer be checked (after any generation
//! changes), and is written nowhere (never as an untagged value).
//! Its own test binary: it fills the process-wide table.
#![cfg(not(target_family = "wasm"))]
#![allow(clippy::unwrap_used)]

use cache_core::{CacheLayer, Entry, MemoryTier, Tags, Tier, TieredCache, Timestamp};

#[test]
fn an_entry_whose_tag_list_was_forgotten_reads_as_absent_and_is_not_written() {
    futures_executor::block_on(async {
        let tier0 = std::sync::Arc::new(MemoryTier::new());
        let cache: TieredCache<String, String> = TieredCache::builder()
            .tier(Tier::shared(tier0.clone()))
            .build();
        let key = "avatar:42".to_string();
        cache
            .put(
                &key,
                Entry::new("v1".into(), Timestamp::MAX).with_tags(["user:42"]),
            )
            .await
            .unwrap();
        let held = tier0.get(&key).await.unwrap().unwrap();
        assert!(cache.get(&key).await.unwrap().is_some());
        assert!(!held.tags.is_forgotten());

        // As many other lists as the table keeps: the first ones go.
        for i in 0..Tags::MAX_LISTS {
            let _ = Tags::new([format!("other:{i}")]);
        }
        assert!(held.tags.is_forgotten());
        // Its verdict (current, at this table's state) may still be used...
        assert!(cache.get(&key).await.unwrap().is_some());
        // ...until a generation changes: then it cannot be checked, so absent.
        cache.invalidate_tag("unrelated").await.unwrap();
        assert!(
            cache.get(&key).await.unwrap().is_none(),
            "an entry with forgotten tags was served after a bump"
        );
        // Never turned into an untagged value: its generations stay forgotten...
        assert!(held.tags.with_generations(|_| 7).is_forgotten());
        // ...and the chain writes it nowhere.
        tier0.remove(&key).await.unwrap();
        let mut stale = Entry::new("v0".to_string(), Timestamp::MAX);
        stale.tags = held.tags;
        let report = cache.put(&key, stale).await;
        assert!(report.is_err(), "{report:?}");
        assert!(tier0.get(&key).await.unwrap().is_none());
    });
}
