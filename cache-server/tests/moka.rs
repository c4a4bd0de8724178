#![allow(clippy::unwrap_used)]
//! MokaTier: conformance, byte budget, per-entry expiry, fenced writes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_core::{
    conformance, CacheLayer, Clock, Entry, Fence, FenceCheck, Fill, ManualClock, Stamp, SystemClock,
};
use cache_server::MokaTier;
use support::Holds;

mod support;

#[tokio::test]
async fn moka_tier_passes_conformance() {
    conformance::run::<_, Vec<u8>, _, _>(|setup| async move {
        let mut b = MokaTier::builder().clock(setup.clock.clone());
        if let Some(ttl) = setup.tier_ttl {
            b = b.ttl(ttl);
        }
        b.build()
    })
    .await;
    conformance::run::<_, String, _, _>(|setup| async move {
        let mut b = MokaTier::builder().clock(setup.clock.clone());
        if let Some(ttl) = setup.tier_ttl {
            b = b.ttl(ttl);
        }
        b.build()
    })
    .await;
}

#[tokio::test]
async fn moka_tier_stays_within_its_byte_budget() {
    let budget = 64 * 1024;
    let tier: MokaTier<String, Vec<u8>> = MokaTier::builder().max_bytes(budget).build();
    let now = SystemClock.now();
    for i in 0..200 {
        tier.put(
            &format!("k{i}"),
            Entry::expiring_in(vec![0u8; 1024], now, Duration::from_secs(600)),
        )
        .await
        .unwrap();
    }
    tier.run_pending_tasks().await;
    assert!(
        tier.weighted_bytes() <= budget,
        "{} bytes held for a budget of {budget}",
        tier.weighted_bytes()
    );
    // 200 KiB went in, at most 64 KiB fits: moka must have evicted.
    assert!(tier.entry_count() < 200);
    assert!(tier.entry_count() > 0);
}

#[tokio::test]
async fn moka_reclaims_entries_at_their_own_expiry() {
    // Real time here: moka's own expiry (not the read check) must drop the entry.
    let tier: MokaTier<String, String> = MokaTier::builder().ttl(Duration::from_secs(3600)).build();
    let now = SystemClock.now();
    let key = "short".to_string();
    tier.put(
        &key,
        Entry::expiring_in("v".into(), now, Duration::from_millis(300)),
    )
    .await
    .unwrap();
    tier.put(
        &"long".to_string(),
        Entry::expiring_in("v".into(), now, Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    assert!(tier.contains(&key));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        tier.run_pending_tasks().await;
        if !tier.contains(&key) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "moka still holds an entry 10 s after its expiry"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(tier.contains(&"long".to_string()));
}

#[tokio::test]
async fn moka_tier_ttl_caps_expiry_to_the_smaller_of_the_two() {
    let clock = ManualClock::new();
    let tier: MokaTier<String, String> = MokaTier::builder()
        .clock(clock.clone())
        .ttl(Duration::from_secs(60))
        .build();
    let k = "k".to_string();
    tier.put(
        &k,
        Entry::expiring_in("v".into(), clock.now(), Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    let got = tier.get(&k).await.unwrap().unwrap();
    assert_eq!(
        got.expires_at,
        clock.now().saturating_add(Duration::from_secs(60))
    );
    tier.put(
        &k,
        Entry::expiring_in("v".into(), clock.now(), Duration::from_secs(10)),
    )
    .await
    .unwrap();
    let got = tier.get(&k).await.unwrap().unwrap();
    assert_eq!(
        got.expires_at,
        clock.now().saturating_add(Duration::from_secs(10))
    );
}

#[tokio::test]
async fn a_refused_fenced_write_leaves_the_old_value() {
    let tier: MokaTier<String, String> = MokaTier::builder().build();
    assert!(CacheLayer::<String, String>::fenced_writes_are_atomic(
        &tier
    ));
    let k = "k".to_string();
    let now = SystemClock.now();
    let entry = |v: &str| Entry::expiring_in(v.to_string(), now, Duration::from_secs(60));
    let fill = tier
        .put_fenced(&k, entry("old"), &Fence::new(&Holds(true), Stamp::NONE))
        .await
        .unwrap();
    assert_eq!(fill, Fill::Written);
    let fill = tier
        .put_fenced(&k, entry("new"), &Fence::new(&Holds(false), Stamp::NONE))
        .await
        .unwrap();
    assert_eq!(fill, Fill::Refused);
    assert_eq!(tier.get(&k).await.unwrap().unwrap().value, "old");
    // Moka holds the old entry, not a refused one waiting for maintenance.
    tier.run_pending_tasks().await;
    assert_eq!(tier.get(&k).await.unwrap().unwrap().value, "old");

    // A batch refuses exactly the entries whose fence fails (and any entry
    // without a fence).
    let keys: Vec<String> = (0..4).map(|i| format!("b{i}")).collect();
    let (yes, no) = (Holds(true), Holds(false));
    let fills = tier
        .put_many_fenced(
            keys.iter().map(|k| (k.clone(), entry(k))).collect(),
            &[
                Fence::new(&yes, Stamp::NONE),
                Fence::new(&no, Stamp::NONE),
                Fence::new(&yes, Stamp::NONE),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        fills,
        [Fill::Written, Fill::Refused, Fill::Written, Fill::Refused]
    );
    let got = tier.get_many(&keys).await.unwrap();
    let got: Vec<bool> = got.iter().map(Option::is_some).collect();
    assert_eq!(got, [true, false, true, false]);
}

/// A check that starts a removal of the key on another task, waits long
/// enough for an unsynchronised removal to finish, and records whether it had.
struct RemovalDuringCheck {
    tier: MokaTier<String, String>,
    key: String,
    how: &'static str,
    removal: Mutex<Option<tokio::task::JoinHandle<()>>>,
    finished_during_check: Arc<AtomicBool>,
}

impl FenceCheck for RemovalDuringCheck {
    fn holds(&self) -> bool {
        let (tier, key, how) = (self.tier.clone(), self.key.clone(), self.how);
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let handle = tokio::runtime::Handle::current().spawn(async move {
            let layer: &dyn CacheLayer<String, String> = &tier;
            match how {
                "remove" => drop(layer.remove(&key).await.unwrap()),
                "remove_prefix" => layer.remove_prefix("ra").await.unwrap(),
                _ => layer.clear().await.unwrap(),
            }
            flag.store(true, Ordering::SeqCst);
        });
        // Blocks this worker; the removal runs on the other one.
        std::thread::sleep(Duration::from_millis(200));
        self.finished_during_check
            .store(done.load(Ordering::SeqCst), Ordering::SeqCst);
        *self.removal.lock().unwrap() = Some(handle);
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_racing_a_fenced_write_waits_for_it_and_removes_what_it_wrote() {
    for how in ["remove", "remove_prefix", "clear"] {
        let tier: MokaTier<String, String> = MokaTier::builder().build();
        let key = "race".to_string();
        let check = RemovalDuringCheck {
            tier: tier.clone(),
            key: key.clone(),
            how,
            removal: Mutex::new(None),
            finished_during_check: Arc::new(AtomicBool::new(false)),
        };
        let entry = Entry::expiring_in("v".to_string(), SystemClock.now(), Duration::from_secs(60));
        let fill = tier
            .put_fenced(&key, entry, &Fence::new(&check, Stamp::NONE))
            .await
            .unwrap();
        assert_eq!(fill, Fill::Written, "{how}");
        assert!(
            !check.finished_during_check.load(Ordering::SeqCst),
            "{how} finished between the fence check and the insert"
        );
        let removal = check.removal.lock().unwrap().take().unwrap();
        removal.await.unwrap();
        // The removal came after the write as a whole: it removed the value.
        assert!(tier.get(&key).await.unwrap().is_none(), "{how}");
    }
}
