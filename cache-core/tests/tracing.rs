//! `tracing` spans (feature `tracing`): every chain operation opens a span
//! naming the tier and the outcome.
#![cfg(not(target_family = "wasm"))]
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_core::{
    loader_fn, BoxError, Clock, Entry, FaultTier, ManualClock, MemoryTier, Tier, TieredCache,
};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// A span's name and its fields as last recorded.
type Opened = (String, BTreeMap<String, String>);

/// Every span opened, with its fields as last recorded.
#[derive(Default, Clone)]
struct Spans(Arc<Mutex<Vec<Opened>>>, Arc<AtomicU64>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
}

impl Subscriber for Spans {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut fields = BTreeMap::new();
        span.record(&mut Fields(&mut fields));
        let mut all = self.0.lock().unwrap();
        all.push((span.metadata().name().into(), fields));
        self.1.fetch_add(1, Ordering::SeqCst);
        Id::from_u64(all.len() as u64)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut all = self.0.lock().unwrap();
        let (_, fields) = &mut all[span.into_u64() as usize - 1];
        values.record(&mut Fields(fields));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

impl Spans {
    fn named(&self, name: &str) -> Vec<BTreeMap<String, String>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .collect()
    }
    fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

fn field<'a>(span: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    span.get(name).map(String::as_str).unwrap_or("<unset>")
}

#[test]
fn chain_operations_open_spans_with_tier_and_outcome() {
    let spans = Spans::default();
    tracing::subscriber::with_default(spans.clone(), || {
        futures_executor::block_on(async {
            let clock = ManualClock::new();
            let c = clock.clone();
            let (l2, faults) = FaultTier::new::<String, String>(
                MemoryTier::builder()
                    .name("l2")
                    .clock(clock.clone())
                    .build(),
            );
            let cache: TieredCache<String, String> = TieredCache::builder()
                .clock(clock.clone())
                .tier(Tier::new(
                    MemoryTier::builder()
                        .name("l1")
                        .clock(clock.clone())
                        .build(),
                ))
                .tier(Tier::new(l2).no_circuit_breaker())
                .origin(loader_fn(move |key: String| {
                    let now = c.now();
                    async move {
                        Ok::<_, BoxError>(Some(Entry::expiring_in(
                            key,
                            now,
                            Duration::from_secs(60),
                        )))
                    }
                }))
                .build();
            let key = "user:42".to_string();

            // A miss everywhere: loaded, then filled into both tiers.
            cache.get(&key).await.unwrap();
            let gets = spans.named("cache.get");
            assert_eq!(gets.len(), 1);
            assert_eq!(field(&gets[0], "key"), "user:42");
            assert_eq!(field(&gets[0], "tier"), "origin");
            assert_eq!(field(&gets[0], "outcome"), "loaded");
            let fills = spans.named("cache.fill");
            let tiers: Vec<&str> = fills.iter().map(|f| field(f, "tier")).collect();
            assert_eq!(tiers, ["l1", "fault(l2)"]);
            assert!(fills.iter().all(|f| field(f, "outcome") == "written"));
            assert!(fills.iter().all(|f| field(f, "kind") == "Write"));

            // A tier-0 hit.
            spans.clear();
            cache.get(&key).await.unwrap();
            let gets = spans.named("cache.get");
            assert_eq!(gets.len(), 1);
            assert_eq!(
                (field(&gets[0], "tier"), field(&gets[0], "outcome")),
                ("l1", "hit")
            );

            // An invalidation where one tier fails: the span says which.
            spans.clear();
            faults.fail_next(1);
            assert!(cache.invalidate(&key).await.is_err());
            let inv = spans.named("cache.invalidate");
            assert_eq!(inv.len(), 1);
            assert_eq!(field(&inv[0], "op"), "invalidate");
            assert_eq!(field(&inv[0], "target"), "user:42");
            assert_eq!(field(&inv[0], "outcome"), "failed");
            assert!(field(&inv[0], "error").contains("l2"), "{:?}", inv[0]);

            spans.clear();
            cache.invalidate(&key).await.unwrap();
            let inv = spans.named("cache.invalidate");
            assert_eq!(field(&inv[0], "outcome"), "ok");
            assert_eq!(field(&inv[0], "tiers"), "l1=Absent,fault(l2)=Removed");

            spans.clear();
            cache.invalidate_tag("user:42").await.unwrap();
            let inv = spans.named("cache.invalidate");
            assert_eq!(
                (field(&inv[0], "op"), field(&inv[0], "outcome")),
                ("invalidate_tag", "ok")
            );
        });
    });
}
