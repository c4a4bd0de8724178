//! The read path: tier 0 without waiting when it can, then each tier in turn
//! (taking its stamp when it misses), fenced backfills, then the origin.
//! Expiry is checked again when a value is returned, after every wait.

use std::sync::Arc;

use futures_util::future::{join_all, select, Either};

use super::fences::KeyFence;
use super::fill::Target;
use super::flight::{Ask, Flown};
use super::observe::{elapsed, failure_kind, Stopwatch};
use super::tags::TagCheck;
use super::{Inner, Lookup, Source, TieredCache};
// The concurrent tier is read directly on the hit path (native only).
#[cfg(not(target_family = "wasm"))]
use crate::in_process::InProcessTier;
use crate::mutation::{self, Mutation};
use crate::{
    ByteSize, CacheKey, Clock, Entry, Error, Event, EventKind, Loader, MaybeSend, MaybeSync,
    Observer, Operation, Result, Stamp, Timestamp,
};

pub(super) enum Read<V> {
    Hit(Entry<V>),
    /// A miss, with the stamp the tier handed out for a later fill.
    Miss(Stamp),
    Failed,
    /// An unexpired entry carrying a tag whose current generation this chain
    /// has not read yet (from a tag store that answers only asynchronously):
    /// the async path reads it. (No payload: the hit path moves this enum,
    /// and a second variant holding an entry would make it bigger.)
    TagsUnknown,
    /// An unexpired entry carrying a tag bumped since it was read: absent, but
    /// the tier gave no stamp for a fill (it hit).
    TagsStale,
}

impl<K, V> TieredCache<K, V>
where
    K: CacheKey,
    V: Clone + ByteSize + MaybeSend + MaybeSync + 'static,
{
    /// The read from tier `first` on. `stamps[i]` is tier `i`'s stamp if it
    /// missed (a tier that failed or hit has none, and is not filled).
    pub(super) async fn get_from(
        &self,
        key: &K,
        first: usize,
        mut failed: usize,
        ticket: u64,
        mut stamps: Vec<Option<Stamp>>,
        loader: Option<Arc<dyn Loader<K, V>>>,
    ) -> Result<Option<Lookup<'_, V>>> {
        let inner = &*self.inner;
        stamps.resize(inner.tiers.len(), None);
        for index in first..inner.tiers.len() {
            match inner.read_tier(index, key).await {
                Read::Hit(entry) => {
                    let targets: Vec<Target> = (0..index)
                        .filter_map(|i| stamps[i].map(|s| (i, s)))
                        .collect();
                    if !targets.is_empty() {
                        let fence = KeyFence {
                            fences: &inner.fences,
                            ticket,
                            key: key.key_str().into_owned(),
                            own: None,
                        };
                        inner
                            .fill(key, &entry, &targets, &fence, EventKind::Backfill, false)
                            .await;
                    }
                    // Checked at the moment of return: the fill may have waited.
                    let now = inner.clock.now();
                    if entry.is_expired(now) && !mutation::on(Mutation::NoExpiryAtReturn) {
                        continue;
                    }
                    if inner.refresh.is_some() {
                        Inner::refresh_if_due_at(&self.inner, index, key, &entry, now);
                    }
                    return Ok(Some(Lookup {
                        entry,
                        source: Source::Tier {
                            index,
                            name: &inner.tiers[index].name,
                        },
                    }));
                }
                Read::Miss(stamp) => stamps[index] = Some(stamp),
                // (`read_tier` settles tags itself.)
                Read::Failed | Read::TagsUnknown | Read::TagsStale => failed += 1,
            }
        }
        self.load_through(key, failed, ticket, stamps, loader).await
    }

    async fn load_through(
        &self,
        key: &K,
        failed: usize,
        ticket: u64,
        stamps: Vec<Option<Stamp>>,
        loader: Option<Arc<dyn Loader<K, V>>>,
    ) -> Result<Option<Lookup<'_, V>>> {
        let inner = &*self.inner;
        if inner.negative_hit(key) {
            return Ok(None);
        }
        if inner.origin.is_none() && loader.is_none() {
            if failed > 0 && failed == inner.tiers.len() {
                return Err(Error::NoTierAnswered { failed });
            }
            return Ok(None);
        }
        let ask = Ask {
            key: key.clone(),
            targets: targets_of(&stamps),
        };
        let again = loader.clone();
        let flight = Inner::join_or_start_many(&self.inner, vec![ask], ticket, loader, true)
            .pop()
            .ok_or(Error::NoTierAnswered { failed })?;
        // An answer that expired before it could be returned (a slow write) is
        // loaded once more, then returned or reported as it is.
        let once_more = |result: Flown<V>| async move {
            if !inner.expired_on_arrival(&result) {
                return result;
            }
            let ask = Ask {
                key: key.clone(),
                targets: targets_of(&stamps),
            };
            match Inner::join_or_start_many(&self.inner, vec![ask], ticket, again, true).pop() {
                Some(flight) => flight.await,
                None => result,
            }
        };
        if let Some((soft, spawner)) = &inner.soft_timeout {
            if inner.stale_value(key).is_some() {
                let sleep = inner.timer.sleep(*soft);
                match select(flight.clone(), sleep).await {
                    Either::Left((result, _)) => {
                        let result = once_more(result).await;
                        return inner.finish_origin_read(key, result);
                    }
                    Either::Right(((), _)) => {
                        // Too slow: the load goes on in the background and
                        // fills the tiers when it lands.
                        let rest = flight.clone();
                        spawner.spawn(Box::pin(async move {
                            let _ = rest.await;
                        }));
                        // Still there unless an invalidation dropped it meanwhile.
                        if let Some(lookup) = inner.serve_stale(key) {
                            return Ok(Some(lookup));
                        }
                    }
                }
            }
        }
        let result = once_more(flight.await).await;
        inner.finish_origin_read(key, result)
    }

    pub(super) async fn get_many_from(&self, keys: &[K]) -> Result<Vec<Option<Lookup<'_, V>>>> {
        let inner = &*self.inner;
        for key in keys {
            key.validate()
                .map_err(|reason| Error::invalid_key(&key.key_str(), reason))?;
        }
        let ticket = inner.fences.ticket();
        let n_tiers = inner.tiers.len();
        let mut out: Vec<Option<Lookup<'_, V>>> = keys.iter().map(|_| None).collect();
        let mut stamps: Vec<Vec<Option<Stamp>>> =
            keys.iter().map(|_| vec![None; n_tiers]).collect();
        let mut pending: Vec<usize> = (0..keys.len()).collect();
        let mut failed = 0;
        for index in 0..n_tiers {
            if pending.is_empty() {
                break;
            }
            let batch: Vec<K> = pending.iter().map(|&j| keys[j].clone()).collect();
            let Some(found) = inner.read_tier_many(index, &batch).await else {
                failed += 1;
                continue;
            };
            let mut still = Vec::new();
            let mut hits = Vec::new();
            for (&j, (entry, stamp)) in pending.iter().zip(found) {
                match entry {
                    Some(entry) => {
                        if inner.refresh.is_some() {
                            let now = inner.clock.now();
                            Inner::refresh_if_due_at(&self.inner, index, &keys[j], &entry, now);
                        }
                        let targets = targets_of(&stamps[j]);
                        if !targets.is_empty() {
                            hits.push((keys[j].clone(), entry.clone(), targets));
                        }
                        out[j] = Some(Lookup {
                            entry,
                            source: Source::Tier {
                                index,
                                name: &inner.tiers[index].name,
                            },
                        });
                    }
                    None => {
                        stamps[j][index] = Some(stamp);
                        still.push(j);
                    }
                }
            }
            if !hits.is_empty() {
                inner.fill_many(hits, ticket, EventKind::Backfill).await;
            }
            pending = still;
        }
        if !pending.is_empty() {
            if inner.origin.is_none() {
                if failed > 0 && failed == n_tiers {
                    return Err(Error::NoTierAnswered { failed });
                }
            } else {
                let asks: Vec<(usize, Ask<K>)> = pending
                    .iter()
                    .filter(|&&j| !inner.negative_hit(&keys[j]))
                    .map(|&j| {
                        (
                            j,
                            Ask {
                                key: keys[j].clone(),
                                targets: targets_of(&stamps[j]),
                            },
                        )
                    })
                    .collect();
                let (positions, asks): (Vec<usize>, Vec<Ask<K>>) = asks.into_iter().unzip();
                let flights = Inner::join_or_start_many(&self.inner, asks, ticket, None, true);
                let results = join_all(flights).await;
                // A key whose answer expired before it could be returned (a
                // slow write) is loaded once more, with the others in the
                // same state; the rest of the batch keeps its answers.
                let mut again = Vec::new();
                for (j, result) in positions.into_iter().zip(results) {
                    if inner.expired_on_arrival(&result) {
                        again.push(j);
                    } else {
                        out[j] = inner.finish_origin_read(&keys[j], result)?;
                    }
                }
                if !again.is_empty() {
                    let asks = again
                        .iter()
                        .map(|&j| Ask {
                            key: keys[j].clone(),
                            targets: targets_of(&stamps[j]),
                        })
                        .collect();
                    let flights = Inner::join_or_start_many(&self.inner, asks, ticket, None, true);
                    let results = join_all(flights).await;
                    for (j, result) in again.into_iter().zip(results) {
                        out[j] = inner.finish_origin_read(&keys[j], result)?;
                    }
                }
            }
        }
        // Checked at the moment of return: a value may have expired while this
        // read waited for other keys. Such keys are read again, alone, and the
        // whole answer is checked again after every such wait.
        if !mutation::on(Mutation::NoExpiryAtReturn) {
            let mut rounds = 0;
            loop {
                let now = inner.clock.now();
                let Some(j) = out.iter().position(|l| {
                    matches!(l, Some(l) if l.source != Source::Stale && l.entry.is_expired(now))
                }) else {
                    break;
                };
                rounds += 1;
                if rounds > 4 * keys.len() {
                    return Err(Error::Origin {
                        source: std::sync::Arc::new(super::ExpiredFromOrigin),
                    });
                }
                out[j] = Box::pin(self.get(&keys[j])).await?;
            }
        }
        Ok(out)
    }
}

/// The tiers a fill may write: those that missed, with their stamps.
fn targets_of(stamps: &[Option<Stamp>]) -> Vec<Target> {
    stamps
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.map(|s| (i, s)))
        .collect()
}

impl<K, V> Inner<K, V>
where
    K: CacheKey,
    V: Clone + ByteSize + MaybeSend + MaybeSync + 'static,
{
    pub(super) async fn read_tier(&self, index: usize, key: &K) -> Read<V> {
        if self.breaker_skips(index, key) {
            return Read::Failed;
        }
        let slot = &self.tiers[index];
        let start = self.start();
        let result = match slot.timeout {
            // The common in-process case stays small: no timer state in this future.
            None => slot.layer.get_stamped(key).await,
            Some(_) => Box::pin(self.call(slot, Operation::Get, slot.layer.get_stamped(key))).await,
        };
        let (result, stamp) = match result {
            Ok((found, stamp)) => (Ok(found), stamp),
            Err(e) => (Err(e), Stamp::NONE),
        };
        let now = self.clock.now();
        if let Ok(Some(entry)) = &result {
            if !entry.tags.is_empty() && !entry.is_expired(now) {
                // Reads the generations this chain lacks, so that `classify`
                // can judge the tags without waiting.
                if let Err(err) = self.tags.check(&entry.tags).await {
                    self.settle::<()>(index, key, start, 0, &Err(err), EventKind::Miss);
                    return Read::Failed;
                }
            }
        }
        match self.classify(index, key, start, result, stamp, now) {
            Read::TagsStale => self.stale_tags(index, key, start).await,
            // Only from a store whose synchronous answer failed.
            Read::TagsUnknown => {
                let err = crate::Error::backend(
                    self.tiers[index].name.clone(),
                    Operation::Get,
                    "the tag store did not answer",
                );
                self.settle::<()>(index, key, start, 0, &Err(err), EventKind::Miss);
                Read::Failed
            }
            read => read,
        }
    }

    /// Tier `index` held `key` with a tag bumped since: a miss, with the stamp
    /// a fill of the tier needs (a stamping tier gave none, as it hit).
    #[cold]
    async fn stale_tags(&self, index: usize, key: &K, start: Option<Stopwatch>) -> Read<V> {
        let slot = &self.tiers[index];
        match self.call(slot, Operation::Get, slot.layer.stamp(key)).await {
            Ok(stamp) => {
                self.settle(index, key, start, 0, &Ok(()), EventKind::Miss);
                Read::Miss(stamp)
            }
            Err(err) => {
                self.settle::<()>(index, key, start, 0, &Err(err), EventKind::Miss);
                Read::Failed
            }
        }
    }

    /// A hit at tier `index`: the breaker's success, and the observer's event.
    /// `now` is the time the hit was checked against: with the default
    /// clock the observer gets it ([`Observer::on_event_at`]), so it need
    /// not read a clock itself.
    #[cfg_attr(not(target_family = "wasm"), inline(always))]
    #[cfg_attr(target_family = "wasm", inline)]
    pub(super) fn emit_hit(
        &self,
        index: usize,
        key: &K,
        start: Option<Stopwatch>,
        entry: &Entry<V>,
        now: Timestamp,
    ) {
        self.tiers[index].breaker.success();
        if let Some(observer) = &self.observer {
            let event = Event {
                kind: EventKind::Hit,
                source: self.tier_source(index),
                key: &key.key_str(),
                latency: elapsed(start),
                bytes: entry.value.byte_size(),
                error: None,
            };
            if self.clock.system {
                observer.on_event_at(&event, now);
            } else {
                observer.on_event(&event);
            }
        }
    }

    /// Tier `index`'s answer without waiting, when its breaker is closed and it can
    /// give one ([`CacheLayer::get_ready`](crate::CacheLayer::get_ready)); `None`
    /// sends the read down the async path (which also handles open and half-open
    /// breakers). Tiers that answer at once are in-process and do not stamp.
    /// Also gives, in `now`, the time the answer was checked against, so a
    /// hit needs no second clock read (refresh-ahead's check uses it). An
    /// out-parameter: returned beside the answer, it made the hit move the
    /// entry through the stack once more.
    #[cfg_attr(not(target_family = "wasm"), inline(always))]
    #[cfg_attr(target_family = "wasm", inline)]
    pub(super) fn read_tier_now(
        &self,
        index: usize,
        key: &K,
        now: &mut Timestamp,
    ) -> Option<Read<V>> {
        let slot = self.tiers.get(index)?;
        if !slot.breaker.is_closed() {
            return None;
        }
        let start = self.start_sampled();
        // One clock read serves the tier's expiry check and the chain's.
        *now = self.clock.now();
        let now = *now;
        #[cfg(not(target_family = "wasm"))]
        let result = match &slot.concurrent {
            Some(tier) => Ok(tier.get_entry(key, now)),
            None => slot.layer.get_ready(key, now)?,
        };
        #[cfg(target_family = "wasm")]
        let result = slot.layer.get_ready(key, now)?;
        // Built in place: this is the hit path, and moving the answer once
        // more costs it measurably. `TagsStale` and `TagsUnknown` are left
        // to the caller.
        Some(self.classify(index, key, start, result, Stamp::NONE, now))
    }

    /// What a read makes of tier 0's synchronous answer [`Read::TagsStale`]
    /// (an in-process tier, which does not stamp): a miss.
    #[cold]
    #[inline(never)]
    pub(super) fn stale_tags_now(&self, key: &K) -> Stamp {
        self.settle(0, key, None, 0, &Ok(()), EventKind::Miss);
        Stamp::NONE
    }

    /// Turns a tier's answer into a hit, miss or failure: checks expiry against
    /// `now` (read from the chain's clock), updates the breaker and reports to the
    /// observer.
    #[cfg_attr(not(target_family = "wasm"), inline(always))]
    #[cfg_attr(target_family = "wasm", inline)]
    fn classify(
        &self,
        index: usize,
        key: &K,
        start: Option<Stopwatch>,
        result: Result<Option<Entry<V>>>,
        stamp: Stamp,
        now: Timestamp,
    ) -> Read<V> {
        match result {
            Ok(Some(entry)) if !entry.is_expired(now) => {
                if !entry.tags.is_empty() {
                    // The handle by value: taking the entry's address (or
                    // moving it into a call) would make the untagged hit copy
                    // it through the stack too.
                    match self.tag_check_now(entry.tags) {
                        TagCheck::Current => {}
                        TagCheck::Stale => return Read::TagsStale,
                        TagCheck::Unknown => return Read::TagsUnknown,
                    }
                }
                self.emit_hit(index, key, start, &entry, now);
                Read::Hit(entry)
            }
            Ok(_) => {
                self.settle(index, key, start, 0, &Ok(()), EventKind::Miss);
                Read::Miss(stamp)
            }
            Err(err) => {
                self.settle::<()>(index, key, start, 0, &Err(err), EventKind::Miss);
                Read::Failed
            }
        }
    }

    /// Whether an entry's tags are current, judged without waiting. Out of
    /// line, so untagged hits stay small.
    #[inline(never)]
    fn tag_check_now(&self, tags: crate::Tags) -> TagCheck {
        self.tags.check_now(&tags)
    }

    /// One batch read of tier `index`, with stamps for the misses; `None` if the
    /// tier failed or was skipped.
    async fn read_tier_many(
        &self,
        index: usize,
        keys: &[K],
    ) -> Option<Vec<(Option<Entry<V>>, Stamp)>> {
        let slot = &self.tiers[index];
        if !slot.breaker.allows(&self.clock) {
            self.emit_skipped(index, keys);
            return None;
        }
        let start = self.start();
        let result = self
            .call(slot, Operation::GetMany, slot.layer.get_many_stamped(keys))
            .await
            .and_then(|found| {
                if found.len() == keys.len() {
                    Ok(found)
                } else {
                    Err(Error::backend(
                        slot.name.clone(),
                        Operation::GetMany,
                        format!("returned {} results for {} keys", found.len(), keys.len()),
                    ))
                }
            });
        let latency = elapsed(start);
        match result {
            Ok(found) => {
                slot.breaker.success();
                let now = self.clock.now();
                let mut found: Vec<(Option<Entry<V>>, Stamp)> = found
                    .into_iter()
                    .map(|(e, s)| (e.filter(|e| !e.is_expired(now)), s))
                    .collect();
                if found
                    .iter()
                    .any(|(e, _)| e.as_ref().is_some_and(|e| !e.tags.is_empty()))
                {
                    if let Err(err) = self.drop_stale_tags(index, keys, &mut found).await {
                        slot.breaker.failure(self.clock.now());
                        for key in keys {
                            self.emit(
                                failure_kind(&err),
                                self.tier_source(index),
                                &key.key_str(),
                                latency,
                                0,
                                Some(&err),
                            );
                        }
                        return None;
                    }
                }
                if self.observer.is_some() {
                    for (key, (entry, _)) in keys.iter().zip(&found) {
                        let (kind, bytes) = match entry {
                            Some(e) => (EventKind::Hit, e.value.byte_size()),
                            None => (EventKind::Miss, 0),
                        };
                        self.emit(
                            kind,
                            self.tier_source(index),
                            &key.key_str(),
                            latency,
                            bytes,
                            None,
                        );
                    }
                }
                Some(found)
            }
            Err(err) => {
                slot.breaker.failure(self.clock.now());
                let kind = failure_kind(&err);
                for key in keys {
                    self.emit(
                        kind,
                        self.tier_source(index),
                        &key.key_str(),
                        latency,
                        0,
                        Some(&err),
                    );
                }
                None
            }
        }
    }

    /// Turns the entries of a batch read whose tags were bumped since into
    /// misses, with the stamps a fill of the tier needs.
    #[cold]
    async fn drop_stale_tags(
        &self,
        index: usize,
        keys: &[K],
        found: &mut [(Option<Entry<V>>, Stamp)],
    ) -> Result<()> {
        let slot = &self.tiers[index];
        for (key, (entry, stamp)) in keys.iter().zip(found.iter_mut()) {
            let Some(e) = entry else { continue };
            if e.tags.is_empty() || self.tags.check(&e.tags).await? {
                continue;
            }
            *entry = None;
            *stamp = self
                .call(slot, Operation::Get, slot.layer.stamp(key))
                .await?;
        }
        Ok(())
    }
}
