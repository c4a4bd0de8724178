//! Invalidation and write-through: begin (fence), forget, remove under the write
//! gates, end.

use std::future::Future;

use futures_util::future::join_all;

use super::fences::{Begun, KeyFence, Scope};
use super::observe::{elapsed, event_for};
use super::{Inner, TierSlot};
use crate::mutation::{self, Mutation};
use crate::{
    ByteSize, CacheKey, ChainOp, Clock, Entry, Error, EventKind, Fill, MaybeSend, MaybeSync,
    Operation, Result, Stamp, TierAction, TierOutcome, TierReport,
};

impl<K, V> Inner<K, V>
where
    K: CacheKey,
    V: Clone + ByteSize + MaybeSend + MaybeSync + 'static,
{
    /// Drops what the chain itself remembers about keys matching `matches`:
    /// flights (reads from now on do not join loads begun before), remembered
    /// "no value" answers and stale values. Called after the fence has begun.
    fn forget(&self, matches: impl Fn(&K) -> bool) {
        self.lock_flights().retain(|k, _| !matches(k));
        if let Some(negative) = &self.negative {
            negative
                .map
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|k, _| !matches(k));
        }
        if let Some(stale) = &self.stale {
            stale.values.retain_keys(|k| !matches(k));
        }
    }

    fn selected(tiers: Option<&[usize]>, index: usize) -> bool {
        tiers.is_none_or(|t| t.contains(&index))
    }

    fn not_selected(index: usize, slot: &TierSlot<K, V>) -> TierOutcome {
        TierOutcome {
            index,
            tier: slot.name.clone(),
            result: Ok(TierAction::NotSelected),
        }
    }

    /// Runs one removal in tier `index` with its write gate held exclusively
    /// (waiting for the fills already under way in a tier without atomic fenced
    /// writes).
    async fn remove_in<T>(
        &self,
        slot: &TierSlot<K, V>,
        operation: Operation,
        removal: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let _gate = match &slot.gate {
            Some(gate) if !mutation::on(Mutation::CheckBeforeWrite) => Some(gate.write().await),
            _ => None,
        };
        self.call(slot, operation, removal).await
    }

    pub(super) async fn invalidate(&self, key: &K, tiers: Option<&[usize]>) -> Result<TierReport> {
        key.validate()
            .map_err(|reason| Error::invalid_key(&key.key_str(), reason))?;
        let key_str = key.key_str();
        let _begun = Begun::new(&self.fences, Scope::Key(key_str.clone().into_owned()));
        self.forget(|k| k == key);
        self.remove_everywhere(
            ChainOp::Invalidate,
            &key_str,
            tiers,
            |slot| slot.layer.remove(key),
            |removed| {
                if removed {
                    TierAction::Removed
                } else {
                    TierAction::Absent
                }
            },
        )
        .await
    }

    pub(super) async fn invalidate_prefix(
        &self,
        prefix: &str,
        tiers: Option<&[usize]>,
    ) -> Result<TierReport> {
        let _begun = Begun::new(&self.fences, Scope::Prefix(prefix.to_owned()));
        self.forget(|k| k.key_str().starts_with(prefix));
        self.remove_everywhere(
            ChainOp::InvalidatePrefix,
            prefix,
            tiers,
            |slot| slot.layer.remove_prefix(prefix),
            |()| TierAction::Cleared,
        )
        .await
    }

    pub(super) async fn clear(&self, tiers: Option<&[usize]>) -> Result<TierReport> {
        let _begun = Begun::new(&self.fences, Scope::All);
        self.forget(|_| true);
        self.remove_everywhere(
            ChainOp::Clear,
            "",
            tiers,
            |slot| slot.layer.clear(),
            |()| TierAction::Cleared,
        )
        .await
    }

    /// Runs `remove` in every selected tier at once (each under its write gate
    /// and timeout), reports each outcome to the breaker and the observer
    /// (`what` is the key, prefix or `""`), and says what each tier did.
    async fn remove_everywhere<'a, T, F, Fut>(
        &'a self,
        op: ChainOp,
        what: &str,
        tiers: Option<&[usize]>,
        remove: F,
        action: fn(T) -> TierAction,
    ) -> Result<TierReport>
    where
        F: Fn(&'a TierSlot<K, V>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let operation = match op {
            ChainOp::Clear => Operation::Clear,
            ChainOp::InvalidatePrefix => Operation::RemovePrefix,
            _ => Operation::Remove,
        };
        let remove = &remove;
        let outcomes = join_all(
            self.tiers
                .iter()
                .enumerate()
                .map(|(index, slot)| async move {
                    if !Self::selected(tiers, index) {
                        return Self::not_selected(index, slot);
                    }
                    let start = self.start();
                    let result = self.remove_in(slot, operation, remove(slot)).await;
                    self.record_outcome(index, &result);
                    let (kind, error) = event_for(&result, EventKind::Invalidate);
                    self.emit(
                        kind,
                        self.tier_source(index),
                        what,
                        elapsed(start),
                        0,
                        error,
                    );
                    TierOutcome {
                        index,
                        tier: slot.name.clone(),
                        result: result.map(action),
                    }
                }),
        )
        .await;
        TierReport::new(op, outcomes).into_result()
    }

    /// Write-through: fences the key like an invalidation (older loads and
    /// backfills are refused from now on), removes it from every tier (a stamping
    /// tier hands back the stamp of this removal) and writes the new entry with a
    /// fenced write. A newer write or invalidation that begins meanwhile wins: this
    /// one's refused tiers report [`Error::Superseded`].
    pub(super) async fn put_through(&self, key: &K, mut entry: Entry<V>) -> Result<TierReport> {
        key.validate()
            .map_err(|reason| Error::invalid_key(&key.key_str(), reason))?;
        for tag in entry.tags.list().names() {
            crate::tags::validate_tag(tag)?;
        }
        // An `invalidate_tag` of one of its tags that begins after this call
        // wins over it, as an invalidation of its key does.
        let mark = self.tags.mark();
        let key_str = key.key_str().into_owned();
        let begun = (!mutation::on(Mutation::UnfencedPut))
            .then(|| Begun::new(&self.fences, Scope::Key(key_str.clone())));
        let fence = KeyFence {
            fences: &self.fences,
            ticket: self.fences.ticket(),
            key: key_str,
            own: begun.as_ref().map(|b| b.id),
        };
        if begun.is_some() {
            self.forget(|k| k == key);
        }
        // Each tier: the removal that voids older stamps, then the fenced write.
        let removed: Vec<(usize, Result<Stamp>)> = join_all(self.tiers.iter().enumerate().map(
            |(index, slot)| async move {
                let result = self
                    .remove_in(slot, Operation::Remove, slot.layer.remove_stamped(key))
                    .await;
                (index, result.map(|(_, stamp)| stamp))
            },
        ))
        .await;
        let mut outcomes = Vec::with_capacity(self.tiers.len());
        let mut targets = Vec::new();
        for (index, result) in removed {
            match result {
                Ok(stamp) => targets.push((index, stamp)),
                Err(err) => {
                    self.tiers[index].breaker.failure(self.clock.now());
                    outcomes.push(TierOutcome {
                        index,
                        tier: self.tiers[index].name.clone(),
                        result: Err(err),
                    });
                }
            }
        }
        if entry.is_expired(self.clock.now()) {
            // Nothing to keep: the removal was the whole write.
            for (index, _) in targets {
                outcomes.push(TierOutcome {
                    index,
                    tier: self.tiers[index].name.clone(),
                    result: Ok(TierAction::Absent),
                });
            }
            drop(begun);
            outcomes.sort_by_key(|o| o.index);
            return TierReport::new(ChainOp::Put, outcomes).into_result();
        }
        let mut superseded = false;
        if !entry.tags.is_empty() {
            match self.tags.stamp_put(&entry.tags, mark).await {
                Ok((tags, fillable)) => {
                    entry.tags = tags;
                    superseded = !fillable && !mutation::on(Mutation::PutIgnoresTagBumps);
                }
                Err(err) => {
                    drop(begun);
                    return Err(err);
                }
            }
        }
        let filled = if superseded {
            targets
                .iter()
                .map(|&(index, _)| (index, Ok(Fill::Refused)))
                .collect()
        } else {
            self.fill(key, &entry, &targets, &fence, EventKind::Write, true)
                .await
        };
        for (index, result) in filled {
            let tier = self.tiers[index].name.clone();
            let result = match result {
                Ok(Fill::Written) => Ok(TierAction::Written),
                Ok(Fill::Refused) => Err(Error::Superseded { tier: tier.clone() }),
                Err(e) => Err(e),
            };
            outcomes.push(TierOutcome {
                index,
                tier,
                result,
            });
        }
        drop(begun);
        outcomes.sort_by_key(|o| o.index);
        TierReport::new(ChainOp::Put, outcomes).into_result()
    }

    /// Bumps `tag`'s generation (in the tag store, if any): every entry
    /// carrying the tag at an older generation is absent from now on. Reads
    /// from now on do not join loads begun before.
    pub(super) async fn invalidate_tag(&self, tag: &str) -> Result<u64> {
        crate::tags::validate_tag(tag)?;
        let start = self.start();
        // Loads under way whose values carry the tag will see the bump (their
        // fills are then refused); reads from now on start their own.
        self.forget_flights();
        let result = self.tags.bump(tag).await;
        self.forget_flights();
        let (kind, error) = event_for(&result, EventKind::Invalidate);
        self.emit(
            kind,
            crate::EventSource::Chain,
            tag,
            elapsed(start),
            0,
            error,
        );
        result
    }

    /// Another instance bumped `tag` to `generation`.
    pub(super) fn tag_invalidated(&self, tag: &str, generation: u64) {
        self.tags.bumped_elsewhere(tag, generation);
        self.forget_flights();
    }

    /// Forgets the generations read from the tag store (they may have been
    /// bumped unseen); they are read again when next needed.
    pub(super) fn forget_tag_generations(&self) {
        self.tags.forget();
        self.forget_flights();
    }

    fn forget_flights(&self) {
        if mutation::on(Mutation::JoinLoadsAcrossTagBumps) {
            return;
        }
        self.lock_flights().clear();
    }
}
