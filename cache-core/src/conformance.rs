//! The conformance suite every tier runs (feature `conformance`).
//!
//! A tier passes when [`run`] completes. The suite builds a fresh tier for each
//! check through a factory that receives a [`Setup`]: the [`ManualClock`] the tier
//! must check expiry against, and the TTL the tier must apply on its own. Checks
//! panic with `conformance[<check>]: <what went wrong>`.
//!
//! Native tiers run it under tokio, browser tiers under wasm-bindgen-test:
//!
//! ```
//! use cache_core::{conformance, MemoryTier};
//!
//! # futures_executor::block_on(async {
//! conformance::run::<_, Vec<u8>, _, _>(|setup| async move {
//!     let mut builder = MemoryTier::builder().clock(setup.clock.clone());
//!     if let Some(ttl) = setup.tier_ttl {
//!         builder = builder.ttl(ttl);
//!     }
//!     builder.build()
//! })
//! .await;
//! # });
//! ```

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use crate::{
    CacheLayer, Clock, Entry, Error, Fence, FenceCheck, Fill, ManualClock, MaybeSend, MaybeSync,
};

/// What the factory gets for each check.
#[derive(Clone, Debug)]
pub struct Setup {
    /// The clock the tier must check expiry against.
    pub clock: ManualClock,
    /// The tier's own TTL, when the check needs one.
    pub tier_ttl: Option<Duration>,
    /// A name unique to this check and this run (`conformance-<check>-<nonce>`),
    /// for tiers whose storage outlives a run (Redis, browser storage) and needs a
    /// fresh namespace, database or cache name per tier.
    pub namespace: String,
}

/// A value type the suite can generate.
pub trait SampleValue: Clone + PartialEq + Debug + MaybeSend + MaybeSync + 'static {
    /// A value of about `len` bytes, different for different seeds.
    fn sample(seed: u64, len: usize) -> Self;
}

fn bytes_for(seed: u64, len: usize) -> Vec<u8> {
    // xorshift: cheap, deterministic, not compressible to nothing.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x & 0xFF) as u8
        })
        .collect()
}

impl SampleValue for Vec<u8> {
    fn sample(seed: u64, len: usize) -> Self {
        bytes_for(seed, len)
    }
}

impl SampleValue for Bytes {
    fn sample(seed: u64, len: usize) -> Self {
        Bytes::from(bytes_for(seed, len))
    }
}

impl SampleValue for String {
    fn sample(seed: u64, len: usize) -> Self {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789/-_.";
        let mut s = format!("https://img.example/{seed}/");
        s.extend(
            bytes_for(seed, len.saturating_sub(s.len()))
                .into_iter()
                .map(|b| char::from(ALPHABET[usize::from(b) % ALPHABET.len()])),
        );
        s
    }
}

/// Keys that have broken stores before: path tricks, glob and separator
/// characters, unicode, whitespace, control characters, empty and very long keys.
pub fn hostile_keys() -> Vec<String> {
    vec![
        String::new(),
        " ".into(),
        "..".into(),
        "../other".into(),
        "a/../b".into(),
        "/absolute".into(),
        "%2e%2e%2fescape".into(),
        "~2E~2E".into(),
        "ns:other:key".into(),
        "*".into(),
        "user:*".into(),
        "[a-z]?".into(),
        "line\nbreak".into(),
        "nul\0byte".into(),
        "tab\tkey".into(),
        "ключ".into(),
        "🙂 emoji".into(),
        "a b+c=d&e".into(),
        "https://evil.example/x?y#z".into(),
        "x".repeat(300),
        "y".repeat(5_000),
    ]
}

/// Different in every call and every run: wall-clock milliseconds and a counter.
fn nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{n:x}", crate::SystemClock.now().as_unix_millis())
}

fn day() -> Duration {
    Duration::from_secs(86_400)
}

async fn fresh<T, F, Fut>(make: &F, check: &str, tier_ttl: Option<Duration>) -> (T, ManualClock)
where
    F: Fn(Setup) -> Fut,
    Fut: Future<Output = T>,
{
    let clock = ManualClock::new();
    let tier = make(Setup {
        clock: clock.clone(),
        tier_ttl,
        namespace: format!("conformance-{check}-{}", nonce()),
    })
    .await;
    (tier, clock)
}

macro_rules! ok {
    ($check:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(err) => panic!("conformance[{}]: {} failed: {err}", $check, stringify!($e)),
        }
    };
}

/// Runs every check, each on a fresh tier from `make`.
pub async fn run<T, V, F, Fut>(make: F)
where
    T: CacheLayer<String, V>,
    V: SampleValue,
    F: Fn(Setup) -> Fut,
    Fut: Future<Output = T>,
{
    missing_key(&make).await;
    put_get(&make).await;
    overwrite(&make).await;
    remove(&make).await;
    clear(&make).await;
    expiry(&make).await;
    expired_put(&make).await;
    tier_ttl(&make).await;
    large_values(&make).await;
    batch(&make).await;
    remove_prefix(&make).await;
    hostile(&make).await;
    get_ready_agrees(&make).await;
    fenced_writes(&make).await;
    #[cfg(feature = "tags")]
    tags(&make).await;
}

/// A key never written reads as `None`.
pub async fn missing_key<T, V, F, Fut>(make: &F)
where
    T: CacheLayer<String, V>,
    V: SampleValue,
    F: Fn(Setup) -> Fut,
    Fut: Future<Output = T>,
{
    let (tier, _) = fresh(make, "missing_key", None).await;
    assert!(
        !tier.name().is_empty(),
        "conformance[missing_key]: empty name"
    );
    let got = ok!("missing_key", tier.get(&"never-written".to_string()).await);
    assert!(got.is_none(), "conformance[missing_key]: got a value");
}

/// What is put is read back with its expiry.
pub async fn put_get<T, V, F, Fut>(make: &F)
where
    T: CacheLayer<String, V>,
    V: SampleValue,
    F: Fn(Setup) -> Fut,
    Fut: Future<Output = T>,
{
    let (tier, clock) = fresh(make, "put_get", None).await;
    let key = "avatar:1".to_string();
    let entry = Entry::expiring_in(V::sample(1, 64), clock.now(), day());
    ok!("put_get", tier.put(&key, entry.clone()).await);
    let got = ok!("put_get", tier.get(&key).await);
    assert_eq!(
        got.as_ref().map(|e| &e.value),
        Some(&entry.value),
        "conformance[put_get]: value"
    );
    let got = got.map(|e| e.expires_at);
    assert_eq!(
        got,
        Some(entry.expires_at),
        "conformance[put_get]: expiry must travel with the value"
    );
}

/// A second put replaces the first.
pub async fn overwrite<T, V, F, Fut>(make: &F)
where
    T: CacheLayer<String, V>,
    V: SampleValue,
    F: Fn(Setup) -> Fut,
    Fut: Future<Output = T>,
{
    let (tier, clock) = fresh(make, "overwrite", None).await;
    let key = "k".to_string();
    ok!(
        "overwrite",
        tier.put(
            &key,
            Entry::expiring_in(V::sample(1, 32), clock.now(), day())
        )
        .await
    );
    let second = V::sample(2, 48);
    ok!(
        "overwrite",
        tier.put(&key, Entry::expiring_in(second.clone(), clock.now(), day()))
            .await
    );
    let got = ok!("overwrite", tier.get(&key).await).map(|e| e.value);
    assert_eq!(got, Some(second), "conformance[overwrite]");
}

/// `remove` removes and says whether something was there.
pub async fn remove<T, V, F, Fut>(make: &F)
where
    T: CacheLayer<String, V>,
    V: SampleValue,
    F: Fn(Setup) -> Fut,
    Fut: Future<Output = T>,
{
    let (tier, clock) = fresh(make, "remove", None).await;
    let (a, b) = ("a".to_string(), "b".to_string());
    ok!(
        "remove",
        tier.put(&a, Entry::expiring_in(V::sample(1, 16), clock.now(), day()))
            .await
    );
    ok!(
        "remove",
        tier.put(&b, Entry::expiring_in(V::sample(2, 16), clock.now(), day()))
            .await
    );
    assert!(
        ok!("remove", tier.remove(&a).await),
        "conformance[remove]: first remove must say true"
    );
    assert!(
        !ok!("remove", tier.remove(&a).await),
        "conformance[remove]: second remove must say false"
    );
    assert!(
        ok!("remove", tier.get(&a).await).is_none(),
        "conformance[remove]: still there"
    );
    assert!(
        ok!("remove", tier.get(&b).await).is_some(),
        "conformance[remove]: removed a neighbour"
    );
}

/// `clear` empties the tier.
pub async fn clear<T, V, F, Fut>(make: &F)
where
    T: CacheLayer<String, V>,
    V: SampleValue,
    F: Fn(Setup) -> Fut,
    Fut: Future<Output = T>,
{
    let (tier, clock) = fresh(make, "clear", None).await;
    for i in 0..5u64 {
        ok!(
            "clear",
            tier.put(
                &format!("k{i}"),
                Entry::expiring_in(V::sample(i, 16), clock.now(), day())
            )
            .await
        );
    }
    ok!("clear", tier.clear().await);
    for i in 0..5 {
        assert!(
            ok!("clear", tier.get(&format!("k{i}")).await).is_none(),
            "conformance[clear]: k{i} survived"
        );
    }
}

/// An entry is served until just before its expiry and never at or after it,
/// even though the backend may still hold it.
pub async fn expiry<T, V, F, Fut>(make: &F)
where
    T: CacheLayer<String, V>,
    V: SampleValue,
    F: Fn(Setup) -> Fut,
    Fut: Future<Output = T>,
{
    let (tier, clock) = fresh(make, "expiry", None).await;
    let key = "short".to_string();
    let long = "long".to_string();
    ok!(
        "expiry",
        tier.put(
            &key,
            Entry::expiring_in(V::sample(1, 16), clock.now(), Duration::from_secs(10))
        )
        .await
    );
    ok!(
        "expiry",
        tier.put(
            &long,
            Entry::expiring_in(V::sample(2, 16), clock.now(), day() * 7)
        )
        .await
    );
    clock.advance(Duration::from_millis(9_999));
    assert!(
        ok!("expiry", tier.get(&key).await).is_some(),
        "conformance[expiry]: gone before its time"
    );
    clock.advance(Duration::from_millis(1));
    assert!(
        ok!("expiry", tier.get(&key).await).is_none(),
        "conformance[expiry]: served at its expiry"
    );
    clock.advance(day() * 6);
    assert!(
        ok!("expiry", tier.get(&long).await).is_some(),
        "conformance[expiry]: a week-long entry lost after six days"
    );
    clock.advance(day());
    assert!(
        ok!("expiry", tier.get(&long).await).is_none(),
        "conformance[expiry]: served after a week"
    );
}

/// Putting an already-expired entry leaves the key absent (the old value must
/// not survive).
pub async fn expired_put<T, V, F, Fut>(make: &F)
where
    T: CacheLayer<String, V>,
    V: SampleValue,
    F: Fn(Setup) -> Fut,
    Fut: Future<Output = T>,
{
    let (tier, clock) = fresh(make, "expired_put", None).await;
    let key = "k".to_string();
    ok!(
        "expired_put",
        tier.put(
            &key,
            Entry::expiring_in(V::sample(1, 16), clock.now(), day())
        )
        .await
    );
    let dead = Entry::new(
        V::sample(2, 16),
        clock.now().saturating_sub(Duration::from_secs(1)),
    );
    ok!("expired_put", tier.put(&key, dead).await);
    assert!(
        ok!("expired_put", tier.get(&key).await).is_none(),
        "conformance[expired_put]: a value survived an expired put"
    );
}

/// The tier's own TTL caps entries that would live longer.
pub async fn tier_ttl<T, V, F, Fut>(make: &F)
where
    T: CacheLayer<String, V>,
    V: SampleValue,
    F: Fn(Setup) -> Fut,
    Fut: Future<Output = T>,
{
    let ttl = Duration::from_secs(60);
    let (tier, clock) = fresh(make, "tier_ttl", Some(ttl)).await;
    let key = "k".to_string();
    ok!(
        "tier_ttl",
        tier.put(
            &key,
            Entry::expiring_in(V::sample(1, 16), clock.now(), day())
        )
        .await
    );
    clock.advance(Duration::from_secs(59));
    let got = ok!("tier_ttl", tier.get(&key).await);
    assert!(
        got.is_some(),
        "conformance[tier_ttl]: gone before the tier TTL"
    );
    clock.advance(Duration::from_secs(1));
    assert!(
        ok!("tier_ttl", tier.get(&key).await).is_none(),
        "conformance[tier_ttl]: served past the tier TTL"
    );
}

/// A 256 KiB value round-trips intact.
pub async fn large_values<T, V, F, Fut>(make: &F)
where
    T: CacheLayer<String, V>,
    V: SampleValue,
    F: Fn(Setup) -> Fut,
    Fut: Future<Output = T>,
{
    let (tier, clock) = fresh(make, "large_values", None).await;
    let key = "large".to_string();
    let value = V::sample(7, 256 * 1024);
    ok!(
        "large_values",
        tier.put(&key, Entry::expiring_in(value.clone(), clock.now(), day()))
            .await
    );
    let got = ok!("large_values", tier.get(&key).await).map(|e| e.value);
    assert!(
        got.as_ref() == Some(&value),
        "conformance[large_values]: value changed"
    );
}

/// Batch reads keep order and report missing keys as `None`.
pub async fn batch<T, V, F, Fut>(make: &F)
where
    T: CacheLayer<String, V>,
    V: SampleValue,
    F: Fn(Setup) -> Fut,
    Fut: Future<Output = T>,
{
    let (tier, clock) = fresh(make, "batch", None).await;
    let entries: Vec<(String, Entry<V>)> = (0..10u64)
        .map(|i| {
            (
                format!("b{i}"),
                Entry::expiring_in(V::sample(i, 24), clock.now(), day()),
            )
        })
        .collect();
    ok!("batch", tier.put_many(entries.clone()).await);
    let keys: Vec<String> = vec![
        "b3".into(),
        "nope".into(),
        "b0".into(),
        "b9".into(),
        "b3".into(),
    ];
    let got = ok!("batch", tier.get_many(&keys).await);
    let want: Vec<Option<V>> = vec![
        Some(entries[3].1.value.clone()),
        None,
        Some(entries[0].1.value.clone()),
        Some(entries[9].1.value.clone()),
        Some(entries[3].1.value.clone()),
    ];
    let got: Vec<Option<V>> = got.into_iter().map(|e| e.map(|e| e.value)).collect();
    assert!(got == want, "conformance[batch]: wrong values or order");
}

/// An entry's [`Tags`](crate::Tags), names and generations, are stored with
/// it and read back unchanged by `get`, `get_many` and `get_ready`, whether it
/// was written by `put`, `put_fenced` or `put_many` (they travel with the
/// entry across backfill: the lazy `invalidate_tag` depends on it). Tag names
/// are hostile too. Needs the `tags` feature.
#[cfg(feature = "tags")]
pub async fn tags<T, V, F, Fut>(make: &F)
where
    T: CacheLayer<String, V>,
    V: SampleValue,
    F: Fn(Setup) -> Fut,
    Fut: Future<Output = T>,
{
    let (tier, clock) = fresh(make, "tags", None).await;
    let tagged = |seed: u64, tags: crate::Tags| {
        let mut entry = Entry::expiring_in(V::sample(seed, 48), clock.now(), day());
        entry.tags = tags;
        entry
    };
    let hostile: Vec<(Box<str>, u64)> = hostile_keys()
        .into_iter()
        .take(6)
        .enumerate()
        .map(|(i, name)| (name.into_boxed_str(), i as u64 * 1_000_003))
        .collect();
    let cases: Vec<(String, Entry<V>)> = vec![
        ("t:one".into(), tagged(1, crate::Tags::new(["user:42"]))),
        (
            "t:gens".into(),
            tagged(
                2,
                crate::Tags::from_pairs(vec![("user:7".into(), 3), ("team:1".into(), u64::MAX)]),
            ),
        ),
        (
            "t:hostile".into(),
            tagged(3, crate::Tags::from_pairs(hostile)),
        ),
        ("t:none".into(), tagged(4, crate::Tags::NONE)),
    ];
    for (key, entry) in &cases {
        ok!("tags", tier.put(key, entry.clone()).await);
        let got = ok!("tags", tier.get(key).await);
        assert_eq!(
            got.map(|e| e.tags),
            Some(entry.tags),
            "conformance[tags]: put then get of {key}"
        );
        if let Some(ready) = tier.get_ready(key, clock.now()) {
            let got = ok!("tags", ready);
            assert_eq!(
                got.map(|e| e.tags),
                Some(entry.tags),
                "conformance[tags]: get_ready of {key}"
            );
        }
    }
    // A fenced write (a backfill or fill) keeps them too.
    let (key, entry) = &cases[1];
    ok!("tags", tier.remove(key).await);
    let (_, stamp) = ok!("tags", tier.get_stamped(key).await);
    let fill = ok!(
        "tags",
        tier.put_fenced(key, entry.clone(), &Fence::new(&Check(true), stamp))
            .await
    );
    assert_eq!(
        fill,
        Fill::Written,
        "conformance[tags]: fenced write refused"
    );
    let got = ok!("tags", tier.get(key).await);
    assert_eq!(
        got.map(|e| e.tags),
        Some(entry.tags),
        "conformance[tags]: put_fenced"
    );
    // And batches.
    let batch: Vec<(String, Entry<V>)> = cases
        .iter()
        .map(|(k, e)| (format!("{k}:batch"), e.clone()))
        .collect();
    ok!("tags", tier.put_many(batch.clone()).await);
    let keys: Vec<String> = batch.iter().map(|(k, _)| k.clone()).collect();
    let got = ok!("tags", tier.get_many(&keys).await);
    for ((key, entry), got) in batch.iter().zip(got) {
        assert_eq!(
            got.map(|e| e.tags),
            Some(entry.tags),
            "conformance[tags]: put_many then get_many of {key}"
        );
    }
}

/// `remove_prefix` removes exactly the keys with that prefix.
pub async fn remove_prefix<T, V, F, Fut>(make: &F)
where
    T: CacheLayer<String, V>,
    V: SampleValue,
    F: Fn(Setup) -> Fut,
    Fut: Future<Output = T>,
{
    let (tier, clock) = fresh(make, "remove_prefix", None).await;
    let keys = [
        "user:1",
        "user:10",
        "user:1/avatar",
        "user:2",
        "other:user:1",
        "user*",
    ];
    for (i, k) in keys.iter().enumerate() {
        ok!(
            "remove_prefix",
            tier.put(
                &k.to_string(),
                Entry::expiring_in(V::sample(i as u64, 16), clock.now(), day())
            )
            .await
        );
    }
    ok!("remove_prefix", tier.remove_prefix("user:1").await);
    for k in keys {
        let present = ok!("remove_prefix", tier.get(&k.to_string()).await).is_some();
        let should = !k.starts_with("user:1");
        assert_eq!(present, should, "conformance[remove_prefix]: key {k:?}");
    }
}

/// Hostile keys either work, each reaching only its own entry, or are refused
/// with [`Error::InvalidKey`]; never a panic, never another key's entry.
pub async fn hostile<T, V, F, Fut>(make: &F)
where
    T: CacheLayer<String, V>,
    V: SampleValue,
    F: Fn(Setup) -> Fut,
    Fut: Future<Output = T>,
{
    let (tier, clock) = fresh(make, "hostile", None).await;
    let keys = hostile_keys();
    let victim = "other".to_string();
    let victim_value = V::sample(999, 16);
    ok!(
        "hostile",
        tier.put(
            &victim,
            Entry::expiring_in(victim_value.clone(), clock.now(), day())
        )
        .await
    );
    let mut accepted = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let value = V::sample(i as u64, 16);
        match tier
            .put(key, Entry::expiring_in(value.clone(), clock.now(), day()))
            .await
        {
            Ok(()) => accepted.push((key, value)),
            Err(Error::InvalidKey { .. }) => {
                let read = tier.get(key).await;
                assert!(
                    matches!(read, Err(Error::InvalidKey { .. }) | Ok(None)),
                    "conformance[hostile]: refused key {:?} on put but read gave {read:?}",
                    crate::key::preview(key)
                );
            }
            Err(other) => panic!(
                "conformance[hostile]: key {} failed with {other} instead of InvalidKey",
                crate::key::preview(key)
            ),
        }
    }
    for (key, value) in &accepted {
        let got = ok!("hostile", tier.get(key).await).map(|e| e.value);
        assert!(
            got.as_ref() == Some(value),
            "conformance[hostile]: key {} read back another value",
            crate::key::preview(key)
        );
    }
    let got = ok!("hostile", tier.get(&victim).await).map(|e| e.value);
    assert!(
        got == Some(victim_value),
        "conformance[hostile]: a hostile key overwrote {victim:?}"
    );
    for (key, _) in &accepted {
        ok!("hostile", tier.remove(key).await);
    }
    assert!(
        ok!("hostile", tier.get(&victim).await).is_some(),
        "conformance[hostile]: removing hostile keys removed {victim:?}"
    );
}

/// A tier that answers [`CacheLayer::get_ready`] gives exactly what `get` gives:
/// for a hit, a missing key and an expired entry; and it judges expiry by the
/// `now` it is given.
pub async fn get_ready_agrees<T, V, F, Fut>(make: &F)
where
    T: CacheLayer<String, V>,
    V: SampleValue,
    F: Fn(Setup) -> Fut,
    Fut: Future<Output = T>,
{
    let (tier, clock) = fresh(make, "get_ready", None).await;
    let (hit, gone) = ("hit".to_string(), "gone".to_string());
    ok!(
        "get_ready",
        tier.put(
            &hit,
            Entry::expiring_in(V::sample(1, 32), clock.now(), day())
        )
        .await
    );
    ok!(
        "get_ready",
        tier.put(
            &gone,
            Entry::expiring_in(V::sample(2, 32), clock.now(), Duration::from_secs(5))
        )
        .await
    );
    // Before the advance: `get_ready` judges expiry by the `now` it is given,
    // not by reading a clock of its own.
    let at_expiry = clock.now().saturating_add(Duration::from_secs(5));
    if let Some(answer) = tier.get_ready(&gone, at_expiry) {
        assert!(
            ok!("get_ready", answer).is_none(),
            "conformance[get_ready]: returned an entry expired at the `now` it was given"
        );
    }
    clock.advance(Duration::from_secs(5));
    for key in [&hit, &gone, &"never".to_string()] {
        let Some(now) = tier.get_ready(key, clock.now()) else {
            return; // this tier always waits; nothing to compare
        };
        let now = ok!("get_ready", now);
        let later = ok!("get_ready", tier.get(key).await);
        assert!(
            now == later,
            "conformance[get_ready]: get_ready and get disagree for {key:?}"
        );
    }
}

/// A fence check with a fixed answer.
struct Check(bool);

impl FenceCheck for Check {
    fn holds(&self) -> bool {
        self.0
    }
}

/// The conditional write: a fill whose fence holds is written; one whose fence
/// no longer holds is refused and leaves the tier as it was; a tier that stamps
/// refuses a stamp voided by a removal and accepts the removal's own; batches
/// refuse entry by entry; stamped reads agree with plain reads.
pub async fn fenced_writes<T, V, F, Fut>(make: &F)
where
    T: CacheLayer<String, V>,
    V: SampleValue,
    F: Fn(Setup) -> Fut,
    Fut: Future<Output = T>,
{
    const C: &str = "fenced_writes";
    let (tier, clock) = fresh(make, C, None).await;
    let key = "fenced".to_string();
    let (a, b) = (V::sample(1, 64), V::sample(2, 64));
    let (found, stamp) = ok!(C, tier.get_stamped(&key).await);
    assert!(found.is_none(), "conformance[{C}]: a missing key was found");
    let entry = |v: &V| Entry::expiring_in(v.clone(), clock.now(), day());

    let fill = ok!(
        C,
        tier.put_fenced(&key, entry(&a), &Fence::new(&Check(true), stamp))
            .await
    );
    assert_eq!(
        fill,
        Fill::Written,
        "conformance[{C}]: a fill whose fence holds was refused"
    );
    let got = ok!(C, tier.get(&key).await).map(|e| e.value);
    assert_eq!(
        got.as_ref(),
        Some(&a),
        "conformance[{C}]: the fill was not stored"
    );

    let fill = ok!(
        C,
        tier.put_fenced(&key, entry(&b), &Fence::new(&Check(false), stamp))
            .await
    );
    assert_eq!(
        fill,
        Fill::Refused,
        "conformance[{C}]: a voided fence was written"
    );
    let got = ok!(C, tier.get(&key).await).map(|e| e.value);
    assert_eq!(
        got.as_ref(),
        Some(&a),
        "conformance[{C}]: a refused fill changed the tier"
    );

    let (removed, current) = ok!(C, tier.remove_stamped(&key).await);
    assert!(removed, "conformance[{C}]: remove_stamped removed nothing");
    assert!(
        ok!(C, tier.get(&key).await).is_none(),
        "conformance[{C}]: still there after remove_stamped"
    );
    if stamp.is_taken() {
        let fill = ok!(
            C,
            tier.put_fenced(&key, entry(&b), &Fence::new(&Check(true), stamp))
                .await
        );
        assert_eq!(
            fill,
            Fill::Refused,
            "conformance[{C}]: a stamp voided by a removal was written"
        );
        assert!(
            ok!(C, tier.get(&key).await).is_none(),
            "conformance[{C}]: the refused fill landed"
        );
        assert!(
            current.is_taken(),
            "conformance[{C}]: a stamping tier's removal handed out no stamp"
        );
    }
    let fill = ok!(
        C,
        tier.put_fenced(&key, entry(&b), &Fence::new(&Check(true), current))
            .await
    );
    assert_eq!(
        fill,
        Fill::Written,
        "conformance[{C}]: the removal's own stamp was refused"
    );
    let got = ok!(C, tier.get(&key).await).map(|e| e.value);
    assert_eq!(
        got.as_ref(),
        Some(&b),
        "conformance[{C}]: the write-through was not stored"
    );

    // Batches: entry by entry.
    let keys = vec!["fenced-1".to_string(), "fenced-2".to_string()];
    let found = ok!(C, tier.get_many_stamped(&keys).await);
    assert_eq!(
        found.len(),
        2,
        "conformance[{C}]: get_many_stamped lost keys"
    );
    assert!(
        found.iter().all(|(e, _)| e.is_none()),
        "conformance[{C}]: missing keys were found"
    );
    let (yes, no) = (Check(true), Check(false));
    let fences = [Fence::new(&yes, found[0].1), Fence::new(&no, found[1].1)];
    let fills = ok!(
        C,
        tier.put_many_fenced(
            vec![(keys[0].clone(), entry(&a)), (keys[1].clone(), entry(&b))],
            &fences
        )
        .await
    );
    assert_eq!(
        fills,
        vec![Fill::Written, Fill::Refused],
        "conformance[{C}]: batch outcomes"
    );
    let got = ok!(C, tier.get_many_stamped(&keys).await);
    assert_eq!(
        got[0].0.as_ref().map(|e| &e.value),
        Some(&a),
        "conformance[{C}]: batch fill lost"
    );
    assert!(
        got[1].0.is_none(),
        "conformance[{C}]: a refused batch entry landed"
    );
    let plain = ok!(C, tier.get_many(&keys).await);
    assert_eq!(
        plain
            .iter()
            .map(|e| e.as_ref().map(|e| &e.value))
            .collect::<Vec<_>>(),
        got.iter()
            .map(|(e, _)| e.as_ref().map(|e| &e.value))
            .collect::<Vec<_>>(),
        "conformance[{C}]: get_many_stamped disagrees with get_many"
    );
}
