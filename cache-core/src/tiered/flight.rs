//! Single-flight origin loads: one load per key however many reads wait, run
//! under `catch_unwind`, its result written through fenced fills.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use futures_util::future::{join_all, select, Either, FutureExt, Shared, WeakShared};

use super::fences::KeyFence;
use super::fill::Target;
use super::observe::elapsed;
use super::{ExpiredFromOrigin, Inner, Lookup, Source};
use crate::mutation::{self, Mutation};
use crate::{
    BoxError, BoxFuture, ByteSize, CacheKey, Clock, Entry, Error, EventKind, EventSource, Loader,
    MaybeSend, MaybeSync, Result, SharedError,
};

pub(super) type LoadResult<V> = std::result::Result<Option<Entry<V>>, SharedError>;
pub(super) type FlightFuture<V> = Shared<BoxFuture<'static, Flown<V>>>;

/// What a flight gives each of its readers: the result, and whether tier 0
/// gave it rather than the origin (a load the readers missed had landed
/// there; see [`Inner::join_or_start_many`]).
#[derive(Clone)]
pub(super) struct Flown<V> {
    pub(super) result: LoadResult<V>,
    pub(super) from_first_tier: bool,
}

pub(crate) struct Flight<V> {
    id: u64,
    weak: WeakShared<BoxFuture<'static, Flown<V>>>,
}

impl<V> Flight<V> {
    pub(super) fn is_live(&self) -> bool {
        self.weak.upgrade().is_some()
    }
}

/// The keys of the last [`Retired::KEPT`] loads retired, as hashes (a
/// collision only costs a look in tier 0): a load started for reads that
/// missed tier 0 looks there first only when a load of its key was retired
/// recently (see [`Inner::join_or_start_many`]). Locked inside the flights.
#[derive(Default)]
pub(crate) struct Retired {
    hashes: Vec<u64>,
    next: usize,
}

impl Retired {
    /// How many retirements are remembered: a read that misses tier 0 and
    /// reaches the flight table after more loads than this were retired
    /// meanwhile may start a second load of its key.
    const KEPT: usize = 1024;

    fn note(&mut self, hash: u64) {
        if self.hashes.len() < Self::KEPT {
            self.hashes.push(hash);
        } else {
            self.hashes[self.next] = hash;
            self.next = (self.next + 1) % Self::KEPT;
        }
    }

    fn contains(&self, hash: u64) -> bool {
        self.hashes.contains(&hash)
    }
}

fn key_hash<K: std::hash::Hash>(key: &K) -> u64 {
    use std::hash::Hasher;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

/// The origin loader panicked.
#[derive(Debug, thiserror::Error)]
#[error("the origin loader panicked: {0}")]
pub struct LoaderPanicked(pub String);

/// The origin did not answer within the chain's hard origin timeout
/// ([`TieredCacheBuilder::origin_timeout`](crate::TieredCacheBuilder::origin_timeout)).
#[derive(Debug, thiserror::Error)]
#[error("the origin did not answer within {0:?}")]
pub struct OriginTimedOut(pub Duration);

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// One key to load: the key, its flight id, and the tiers its fill may write
/// with their stamps.
pub(super) struct Ask<K> {
    pub(super) key: K,
    pub(super) targets: Vec<Target>,
}

impl<K, V> Inner<K, V>
where
    K: CacheKey,
    V: Clone + ByteSize + MaybeSend + MaybeSync + 'static,
{
    pub(super) fn lock_flights(&self) -> MutexGuard<'_, HashMap<K, Flight<V>>> {
        self.flights.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Taken only with the flights locked, after them.
    fn lock_retired(&self) -> MutexGuard<'_, Retired> {
        self.retired.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the loads in flight for `asks` and starts one batch load for the
    /// rest, whose fills are fenced by `ticket` (taken when the reads began).
    ///
    /// `after_miss`: the asks come from reads that missed tier 0. A load is
    /// retired only after its fills, so a read that missed tier 0 just before
    /// a load of its key landed there, and reaches this table after the load
    /// was retired, finds no flight to join. A load started for such reads,
    /// when a load of its key was retired recently ([`Retired`]), therefore
    /// looks in tier 0 first, and answers from it every reader that joins it,
    /// without calling the origin (only while no invalidation of the key has
    /// begun since `ticket`). A refresh, which reloads what tier 0 holds,
    /// passes `false`.
    pub(super) fn join_or_start_many(
        this: &Arc<Self>,
        asks: Vec<Ask<K>>,
        ticket: u64,
        loader: Option<Arc<dyn Loader<K, V>>>,
        after_miss: bool,
    ) -> Vec<FlightFuture<V>> {
        let mut joined = Vec::new();
        let mut out: Vec<Option<FlightFuture<V>>> = Vec::with_capacity(asks.len());
        let mut to_load: Vec<(Ask<K>, u64, bool)> = Vec::new();
        let mut positions: Vec<Vec<usize>> = Vec::new();
        {
            // One lock for the look-up and the registration: two reads that
            // both found no flight between the two could each start a load.
            let mut flights = this.lock_flights();
            for (pos, ask) in asks.into_iter().enumerate() {
                if let Some(shared) = flights.get(&ask.key).and_then(|f| f.weak.upgrade()) {
                    joined.push(ask.key);
                    out.push(Some(shared));
                } else if let Some(i) = to_load.iter().position(|(a, _, _)| a.key == ask.key) {
                    positions[i].push(pos);
                    out.push(None);
                } else {
                    let id = this.next_flight.fetch_add(1, Ordering::Relaxed);
                    let look = after_miss && this.lock_retired().contains(key_hash(&ask.key));
                    to_load.push((ask, id, look));
                    positions.push(vec![pos]);
                    out.push(None);
                }
            }
            if !to_load.is_empty() {
                let ids: Vec<(K, u64)> = to_load
                    .iter()
                    .map(|(a, id, _)| (a.key.clone(), *id))
                    .collect();
                let (asks, looks): (Vec<Ask<K>>, Vec<bool>) =
                    to_load.into_iter().map(|(a, _, look)| (a, look)).unzip();
                let batch: BoxFuture<'static, Arc<Vec<Flown<V>>>> = Box::pin(Self::run_loads(
                    this.clone(),
                    asks,
                    ids.clone(),
                    ticket,
                    loader,
                    looks,
                ));
                let batch = batch.shared();
                for (i, (key, id)) in ids.into_iter().enumerate() {
                    let per_key: BoxFuture<'static, Flown<V>> =
                        Box::pin(batch.clone().map(move |all: Arc<Vec<Flown<V>>>| {
                            all.get(i).cloned().unwrap_or(Flown {
                                result: Ok(None),
                                from_first_tier: false,
                            })
                        }));
                    let shared = per_key.shared();
                    if let Some(weak) = shared.downgrade() {
                        flights.insert(key, Flight { id, weak });
                    }
                    for &pos in &positions[i] {
                        out[pos] = Some(shared.clone());
                    }
                }
            }
        }
        for key in joined {
            this.emit(
                EventKind::Coalesced,
                EventSource::Origin,
                &key.key_str(),
                None,
                0,
                None,
            );
        }
        out.into_iter().flatten().collect()
    }

    /// Asks `loader` (else the origin) for `keys`, turning a panic into an error.
    async fn ask_origin(
        &self,
        keys: &[K],
        loader: Option<Arc<dyn Loader<K, V>>>,
    ) -> std::result::Result<Vec<Option<Entry<V>>>, BoxError> {
        let Some(origin) = loader.or_else(|| self.origin.clone()) else {
            return Ok(keys.iter().map(|_| None).collect());
        };
        let load = async {
            if keys.len() == 1 {
                origin.load(&keys[0]).await.map(|e| vec![e])
            } else {
                origin.load_many(keys).await
            }
        };
        let load = async {
            let Some(after) = self.origin_timeout else {
                return load.await;
            };
            let sleep = self.timer.sleep(after);
            match select(Box::pin(load), sleep).await {
                Either::Left((result, _)) => result,
                Either::Right(((), _)) => Err(Box::new(OriginTimedOut(after)) as BoxError),
            }
        };
        if mutation::on(Mutation::NoCatchUnwind) {
            return load.await;
        }
        match AssertUnwindSafe(load).catch_unwind().await {
            Ok(result) => result,
            Err(payload) => Err(Box::new(LoaderPanicked(panic_message(&*payload)))),
        }
    }

    /// One origin load for `asks` (those whose `looks` is set looked in tier
    /// 0 first): fenced fills of every result, then the flights are retired.
    async fn run_loads(
        this: Arc<Self>,
        asks: Vec<Ask<K>>,
        ids: Vec<(K, u64)>,
        ticket: u64,
        loader: Option<Arc<dyn Loader<K, V>>>,
        looks: Vec<bool>,
    ) -> Arc<Vec<Flown<V>>> {
        // Retires the flights even if this future is dropped or panics.
        struct Retire<'a, K: CacheKey, V: Clone + ByteSize + MaybeSend + MaybeSync + 'static> {
            inner: &'a Inner<K, V>,
            ids: &'a [(K, u64)],
        }
        impl<K: CacheKey, V: Clone + ByteSize + MaybeSend + MaybeSync + 'static> Drop for Retire<'_, K, V> {
            fn drop(&mut self) {
                let mut flights = self.inner.lock_flights();
                let mut retired = self.inner.lock_retired();
                for (key, id) in self.ids {
                    if flights.get(key).is_some_and(|f| f.id == *id) {
                        flights.remove(key);
                        retired.note(key_hash(key));
                    }
                }
            }
        }
        let _retire = Retire {
            inner: &this,
            ids: &ids,
        };
        let found: Vec<Option<Entry<V>>> = if looks.contains(&true) {
            let inner: &Self = &this;
            join_all(asks.iter().zip(&looks).map(|(a, &look)| async move {
                if look {
                    inner.look_in_first_tier(&a.key, ticket).await
                } else {
                    None
                }
            }))
            .await
        } else {
            asks.iter().map(|_| None).collect()
        };
        let to_load: Vec<Ask<K>> = asks
            .into_iter()
            .zip(&found)
            .filter(|(_, entry)| entry.is_none())
            .map(|(ask, _)| ask)
            .collect();
        // In the order of `to_load`: the asks tier 0 did not answer.
        let mut loaded = if to_load.is_empty() {
            Vec::new()
        } else {
            this.load_and_fill(to_load, ticket, loader).await
        }
        .into_iter();
        let flown = found
            .into_iter()
            .map(|entry| match entry {
                Some(entry) => Flown {
                    result: Ok(Some(entry)),
                    from_first_tier: true,
                },
                None => Flown {
                    result: loaded.next().unwrap_or(Ok(None)),
                    from_first_tier: false,
                },
            })
            .collect();
        Arc::new(flown)
    }

    /// Tier 0's entry for `key`, if it holds an unexpired one with current
    /// tags and no invalidation of `key` has begun since `ticket`: what a load
    /// started after a miss looks at before it asks the origin. A miss or a
    /// failure here is not reported (the read already reported its own).
    async fn look_in_first_tier(&self, key: &K, ticket: u64) -> Option<Entry<V>> {
        let slot = self.tiers.first()?;
        if !slot.breaker.is_closed() {
            return None;
        }
        let found = match slot.layer.get_ready(key, self.clock.now()) {
            Some(found) => found,
            None => {
                self.call(slot, crate::Operation::Get, slot.layer.get(key))
                    .await
            }
        };
        let entry = found.ok().flatten()?;
        if entry.is_expired(self.clock.now()) {
            return None;
        }
        if !entry.tags.is_empty() && !matches!(self.tags.check(&entry.tags).await, Ok(true)) {
            return None;
        }
        if !self.fences.holds(ticket, &key.key_str(), None) {
            return None;
        }
        // The read already reported its miss at tier 0 (each read reaches
        // tier 0 once): what it gets now is a load's result, landed just
        // before, so it counts as a read that joined a load.
        slot.breaker.success();
        self.emit(
            EventKind::Coalesced,
            EventSource::Origin,
            &key.key_str(),
            None,
            0,
            None,
        );
        Some(entry)
    }

    /// Asks the origin for `asks`, then fills every tier with what it found
    /// (fenced by `ticket`); one result per ask, in order.
    async fn load_and_fill(
        &self,
        asks: Vec<Ask<K>>,
        ticket: u64,
        loader: Option<Arc<dyn Loader<K, V>>>,
    ) -> Vec<LoadResult<V>> {
        let this = self;
        let start = this.start();
        let plain: Vec<K> = asks.iter().map(|a| a.key.clone()).collect();
        // Noted before the load: a tag bumped while it runs keeps its value
        // out of the tiers.
        let mark = this.tags.mark();
        let loaded = this.ask_origin(&plain, loader).await;
        let latency = elapsed(start);
        let now = this.clock.now();
        let mut results: Vec<LoadResult<V>> = match loaded {
            Ok(found) if found.len() == plain.len() => found
                .into_iter()
                .map(|e| match e {
                    Some(e) if e.is_expired(now) => Err(Arc::new(ExpiredFromOrigin) as SharedError),
                    other => Ok(other),
                })
                .collect(),
            Ok(found) => {
                let err: SharedError = Arc::from(BoxError::from(format!(
                    "the origin returned {} values for {} keys",
                    found.len(),
                    plain.len()
                )));
                plain.iter().map(|_| Err(err.clone())).collect()
            }
            Err(err) => {
                let err: SharedError = Arc::from(err);
                plain.iter().map(|_| Err(err.clone())).collect()
            }
        };
        let mut keep = vec![true; results.len()];
        for (result, keep) in results.iter_mut().zip(&mut keep) {
            if let Ok(Some(entry)) = result {
                if !entry.tags.is_empty() {
                    match this.tags.stamp_loaded(&entry.tags, mark).await {
                        Ok((tags, fillable)) => {
                            entry.tags = tags;
                            *keep = fillable || mutation::on(Mutation::KeepLoadsAcrossTagBumps);
                        }
                        Err(_) => *keep = false,
                    }
                }
            }
        }
        let mut fresh = Vec::new();
        for ((ask, result), keep) in asks.into_iter().zip(&results).zip(keep) {
            let key = &ask.key;
            match result {
                Ok(Some(entry)) if !keep => {
                    // Returned to the reads that waited, kept nowhere.
                    this.emit(
                        EventKind::OriginLoad,
                        EventSource::Origin,
                        &key.key_str(),
                        latency,
                        entry.value.byte_size(),
                        None,
                    );
                }
                Ok(Some(entry)) => {
                    this.emit(
                        EventKind::OriginLoad,
                        EventSource::Origin,
                        &key.key_str(),
                        latency,
                        entry.value.byte_size(),
                        None,
                    );
                    fresh.push((ask.key.clone(), entry.clone(), ask.targets));
                }
                Ok(None) => {
                    this.emit(
                        EventKind::OriginNotFound,
                        EventSource::Origin,
                        &key.key_str(),
                        latency,
                        0,
                        None,
                    );
                    let fence = KeyFence {
                        fences: &this.fences,
                        ticket,
                        key: key.key_str().into_owned(),
                        own: None,
                    };
                    this.remember_negative(key, &fence);
                }
                Err(err) => {
                    if this.observer.is_some() {
                        let err = Error::Origin {
                            source: err.clone(),
                        };
                        this.emit(
                            EventKind::OriginError,
                            EventSource::Origin,
                            &key.key_str(),
                            latency,
                            0,
                            Some(&err),
                        );
                    }
                }
            }
        }
        match fresh.len() {
            0 => {}
            1 => {
                let (key, entry, targets) = &fresh[0];
                let fence = KeyFence {
                    fences: &this.fences,
                    ticket,
                    key: key.key_str().into_owned(),
                    own: None,
                };
                this.fill(key, entry, targets, &fence, EventKind::Write, false)
                    .await;
            }
            _ => this.fill_many(fresh, ticket, EventKind::Write).await,
        }
        results
    }

    /// Whether a load's answer had expired when it landed, or has now (a slow
    /// fill): a read loads such a key once more before it reports
    /// [`ExpiredFromOrigin`].
    pub(super) fn expired_on_arrival(&self, flown: &Flown<V>) -> bool {
        match &flown.result {
            Ok(Some(entry)) => {
                entry.is_expired(self.clock.now()) && !mutation::on(Mutation::NoExpiryAtReturn)
            }
            Ok(None) => false,
            Err(err) => err.is::<ExpiredFromOrigin>(),
        }
    }

    /// What a reader of an origin load returns: the value if it is still
    /// unexpired now (checked at the moment of return), else an error, or a stale
    /// value when the chain keeps them.
    pub(super) fn finish_origin_read(
        &self,
        key: &K,
        flown: Flown<V>,
    ) -> Result<Option<Lookup<'_, V>>> {
        let source = if flown.from_first_tier {
            Source::Tier {
                index: 0,
                name: &self.tiers[0].name,
            }
        } else {
            Source::Origin
        };
        let result = match flown.result {
            Ok(Some(entry))
                if entry.is_expired(self.clock.now())
                    && !mutation::on(Mutation::NoExpiryAtReturn) =>
            {
                Err(Arc::new(ExpiredFromOrigin) as SharedError)
            }
            other => other,
        };
        match result {
            Ok(found) => Ok(found.map(|entry| Lookup { entry, source })),
            Err(source) => match self.serve_stale(key) {
                Some(lookup) => Ok(Some(lookup)),
                None => Err(Error::Origin { source }),
            },
        }
    }

    /// The stale value of `key`, if one is kept, reported to the observer.
    pub(super) fn serve_stale(&self, key: &K) -> Option<Lookup<'_, V>> {
        let entry = self.stale_value(key)?;
        self.emit(
            EventKind::StaleServed,
            EventSource::Chain,
            &key.key_str(),
            None,
            entry.value.byte_size(),
            None,
        );
        Some(Lookup {
            entry,
            source: Source::Stale,
        })
    }
}
