//! Fenced writes: every backfill, origin fill and write-through goes through here.
//!
//! A fill never writes and takes back. It hands each tier a [`Fence`]: the
//! chain's in-process check for its key and ticket, and the stamp the read got
//! from that tier when it missed. The tier checks both at the moment it writes
//! ([`CacheLayer::put_fenced`](crate::CacheLayer::put_fenced)) and refuses the
//! write if an invalidation or newer write of the key came first.
//!
//! Tiers whose conditional write is not atomic with their removals
//! ([`CacheLayer::fenced_writes_are_atomic`](crate::CacheLayer::fenced_writes_are_atomic)
//! is `false`) get a write gate: a fill holds it shared for the length of its
//! tier call and is refused if a removal holds it; a removal holds it exclusive,
//! after waiting for the fills already under way.

use futures_util::future::join_all;

use super::fences::KeyFence;
use super::observe::elapsed;
use super::{Inner, TierSlot};
use crate::mutation::{self, Mutation};
use crate::{
    ByteSize, CacheKey, Clock, Entry, Error, EventKind, Fence, FenceCheck, Fill, MaybeSend,
    MaybeSync, Operation, Result, Stamp, Timestamp,
};

/// A tier a fill may write, with the stamp the read got from it.
pub(super) type Target = (usize, Stamp);

/// Enters tier `slot`'s write gate for a fill, shared, for as long as the
/// returned guard lives (`Some(None)`: the tier has no gate). `None` when a
/// removal holds it: the fill is refused.
fn enter_gate<K, V>(slot: &TierSlot<K, V>) -> Option<Option<async_lock::RwLockReadGuard<'_, ()>>> {
    match &slot.gate {
        Some(gate) => gate.try_read().map(Some),
        None => Some(None),
    }
}

impl<K, V> Inner<K, V>
where
    K: CacheKey,
    V: Clone + ByteSize + MaybeSend + MaybeSync + 'static,
{
    /// Writes `entry` into every target tier under `fence`. `through` is a
    /// write-through (`put`): it ignores circuit breakers, as the caller must learn
    /// of every tier it did not reach. Returns each target's outcome.
    pub(super) async fn fill(
        &self,
        key: &K,
        entry: &Entry<V>,
        targets: &[Target],
        fence: &KeyFence<'_>,
        kind: EventKind,
        through: bool,
    ) -> Vec<(usize, Result<Fill>)> {
        let now = self.clock.now();
        let forgotten = !entry.tags.is_empty() && entry.tags.is_forgotten();
        if forgotten || !fence.holds() || entry.is_expired(now) {
            return targets
                .iter()
                .map(|&(i, _)| (i, Ok(Fill::Refused)))
                .collect();
        }
        self.remember_stale(key, entry, now, fence);
        join_all(targets.iter().map(|&(index, stamp)| async move {
            let slot = &self.tiers[index];
            if !through && !slot.breaker.allows(&self.clock) {
                return (index, Ok(Fill::Refused));
            }
            let entry = slot.stored(index, key, entry.clone(), now);
            let bytes = entry.value.byte_size();
            let start = self.start();
            let result = super::trace::fill(
                || key.key_str().into_owned(),
                &slot.name,
                kind,
                self.fill_one(index, key, entry, Fence::new(fence, stamp)),
            )
            .await;
            self.settle_fill(index, key, start, bytes, &result, kind);
            (index, result)
        }))
        .await
    }

    async fn fill_one(
        &self,
        index: usize,
        key: &K,
        entry: Entry<V>,
        fence: Fence<'_>,
    ) -> Result<Fill> {
        let slot = &self.tiers[index];
        if mutation::on(Mutation::CheckBeforeWrite) {
            if !fence.holds() {
                return Ok(Fill::Refused);
            }
            return self
                .call(
                    slot,
                    Operation::Put,
                    slot.layer.put_fenced(key, entry, &Fence::open()),
                )
                .await;
        }
        let Some(_gate) = enter_gate(slot) else {
            return Ok(Fill::Refused);
        };
        if mutation::on(Mutation::IgnoreStamps) {
            if !fence.holds() {
                return Ok(Fill::Refused);
            }
            return self
                .call(slot, Operation::Put, slot.layer.put(key, entry))
                .await
                .map(|()| Fill::Written);
        }
        self.call(
            slot,
            Operation::Put,
            slot.layer.put_fenced(key, entry, &fence),
        )
        .await
    }

    fn settle_fill(
        &self,
        index: usize,
        key: &K,
        start: Option<super::observe::Stopwatch>,
        bytes: usize,
        result: &Result<Fill>,
        kind: EventKind,
    ) {
        match result {
            Ok(Fill::Refused) => {
                self.record_outcome(index, result);
                self.emit(
                    EventKind::Refused,
                    self.tier_source(index),
                    &key.key_str(),
                    elapsed(start),
                    0,
                    None,
                );
            }
            _ => self.settle(index, key, start, bytes, result, kind),
        }
    }

    /// Batch version of [`Inner::fill`] for reads of many keys: one
    /// `put_many_fenced` per tier. Each entry lists its own targets.
    pub(super) async fn fill_many(
        &self,
        entries: Vec<(K, Entry<V>, Vec<Target>)>,
        ticket: u64,
        kind: EventKind,
    ) {
        let now = self.clock.now();
        let fences: Vec<KeyFence<'_>> = entries
            .iter()
            .map(|(k, _, _)| KeyFence {
                fences: &self.fences,
                ticket,
                key: k.key_str().into_owned(),
                own: None,
            })
            .collect();
        let live: Vec<usize> = (0..entries.len())
            .filter(|&i| fences[i].holds() && !entries[i].1.is_expired(now))
            .collect();
        if live.is_empty() {
            return;
        }
        for &i in &live {
            self.remember_stale(&entries[i].0, &entries[i].1, now, &fences[i]);
        }
        let (entries, fences, live) = (&entries, &fences, &live);
        join_all((0..self.tiers.len()).map(|index| async move {
            let slot = &self.tiers[index];
            let mut batch = Vec::new();
            let mut guards = Vec::new();
            for &i in live {
                let (key, entry, targets) = &entries[i];
                if let Some(&(_, stamp)) = targets.iter().find(|(t, _)| *t == index) {
                    batch.push((key.clone(), slot.stored(index, key, entry.clone(), now)));
                    guards.push(Fence::new(&fences[i], stamp));
                }
            }
            if batch.is_empty() || !slot.breaker.allows(&self.clock) {
                return;
            }
            let keys: Vec<K> = batch.iter().map(|(k, _)| k.clone()).collect();
            let sizes: Vec<usize> = batch.iter().map(|(_, e)| e.value.byte_size()).collect();
            let start = self.start();
            let result = self.fill_batch(index, batch, &guards).await;
            self.record_outcome(index, &result);
            if self.observer.is_none() {
                return;
            }
            let latency = elapsed(start);
            for (j, key) in keys.iter().enumerate() {
                let (event, bytes, error) = match &result {
                    Ok(fills) => match fills.get(j) {
                        Some(Fill::Written) => (kind, sizes[j], None),
                        _ => (EventKind::Refused, 0, None),
                    },
                    Err(e) => (super::observe::failure_kind(e), 0, Some(e)),
                };
                self.emit(
                    event,
                    self.tier_source(index),
                    &key.key_str(),
                    latency,
                    bytes,
                    error,
                );
            }
        }))
        .await;
    }

    async fn fill_batch(
        &self,
        index: usize,
        batch: Vec<(K, Entry<V>)>,
        fences: &[Fence<'_>],
    ) -> Result<Vec<Fill>> {
        let slot = &self.tiers[index];
        let n = batch.len();
        if mutation::on(Mutation::CheckBeforeWrite) {
            let open: Vec<Fence<'_>> = fences
                .iter()
                .map(|f| if f.holds() { Fence::open() } else { *f })
                .collect();
            return self
                .call(
                    slot,
                    Operation::PutMany,
                    slot.layer.put_many_fenced(batch, &open),
                )
                .await;
        }
        let Some(_gate) = enter_gate(slot) else {
            return Ok(vec![Fill::Refused; n]);
        };
        if mutation::on(Mutation::IgnoreStamps) {
            let batch: Vec<(K, Entry<V>)> = batch
                .into_iter()
                .zip(fences)
                .filter(|(_, f)| f.holds())
                .map(|(e, _)| e)
                .collect();
            return self
                .call(slot, Operation::PutMany, slot.layer.put_many(batch))
                .await
                .map(|()| vec![Fill::Written; n]);
        }
        let result = self
            .call(
                slot,
                Operation::PutMany,
                slot.layer.put_many_fenced(batch, fences),
            )
            .await?;
        if result.len() != n {
            return Err(Error::backend(
                slot.name.clone(),
                Operation::PutMany,
                format!("returned {} outcomes for {n} entries", result.len()),
            ));
        }
        Ok(result)
    }
}

impl<K: CacheKey, V> TierSlot<K, V> {
    /// What the chain writes into this tier: `entry` capped by the tier's TTL,
    /// its lifetime spread by the tier's jitter, never past its own expiry.
    pub(super) fn stored(
        &self,
        index: usize,
        key: &K,
        entry: Entry<V>,
        now: Timestamp,
    ) -> Entry<V> {
        if self.jitter == 0.0 {
            return entry.capped_by_ttl(now, self.ttl);
        }
        // The lifetime to spread: the tier's TTL, else what is left of the entry's.
        let life = match self.ttl {
            Some(ttl) => ttl,
            None if entry.expires_at == Timestamp::MAX => return entry,
            None => entry.expires_at.duration_since(now),
        };
        let factor = 1.0 + self.jitter * (2.0 * unit_random(&key.key_str(), index, now) - 1.0);
        let spread = std::time::Duration::try_from_secs_f64(life.as_secs_f64() * factor)
            .unwrap_or(std::time::Duration::MAX);
        entry.capped_at(now.saturating_add(spread))
    }
}

/// A number in `[0, 1)` drawn from the key, the tier and the time of the
/// write (FNV-1a, then SplitMix64's finaliser): different keys written together
/// spread apart, and a replayed run spreads exactly as before.
fn unit_random(key: &str, index: usize, now: Timestamp) -> f64 {
    let mut z: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        z = (z ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    z ^= now.as_unix_millis().rotate_left(17) ^ (index as u64).rotate_left(43);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}
