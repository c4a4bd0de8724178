//! Single-flight origin loads: one load per key however many reads wait, run
//! under `catch_unwind`, its result written through fenced fills.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use futures_util::future::{select, Either, FutureExt, Shared, WeakShared};

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
pub(super) type FlightFuture<V> = Shared<BoxFuture<'static, LoadResult<V>>>;

pub(crate) struct Flight<V> {
    id: u64,
    weak: WeakShared<BoxFuture<'static, LoadResult<V>>>,
}

impl<V> Flight<V> {
    pub(super) fn is_live(&self) -> bool {
        self.weak.upgrade().is_some()
    }
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

    /// Joins the loads in flight for `asks` and starts one batch load for the
    /// rest, whose fills are fenced by `ticket` (taken when the reads began).
    pub(super) fn join_or_start_many(
        this: &Arc<Self>,
        asks: Vec<Ask<K>>,
        ticket: u64,
        loader: Option<Arc<dyn Loader<K, V>>>,
    ) -> Vec<FlightFuture<V>> {
        let mut joined = Vec::new();
        let mut out: Vec<Option<FlightFuture<V>>> = Vec::with_capacity(asks.len());
        let mut to_load: Vec<(Ask<K>, u64)> = Vec::new();
        let mut positions: Vec<Vec<usize>> = Vec::new();
        {
            let flights = this.lock_flights();
            for (pos, ask) in asks.into_iter().enumerate() {
                if let Some(shared) = flights.get(&ask.key).and_then(|f| f.weak.upgrade()) {
                    joined.push(ask.key);
                    out.push(Some(shared));
                } else if let Some(i) = to_load.iter().position(|(a, _)| a.key == ask.key) {
                    positions[i].push(pos);
                    out.push(None);
                } else {
                    let id = this.next_flight.fetch_add(1, Ordering::Relaxed);
                    to_load.push((ask, id));
                    positions.push(vec![pos]);
                    out.push(None);
                }
            }
            drop(flights);
            if !to_load.is_empty() {
                let ids: Vec<(K, u64)> =
                    to_load.iter().map(|(a, id)| (a.key.clone(), *id)).collect();
                let asks: Vec<Ask<K>> = to_load.into_iter().map(|(a, _)| a).collect();
                let batch: BoxFuture<'static, Arc<Vec<LoadResult<V>>>> = Box::pin(Self::run_loads(
                    this.clone(),
                    asks,
                    ids.clone(),
                    ticket,
                    loader,
                ));
                let batch = batch.shared();
                let mut flights = this.lock_flights();
                for (i, (key, id)) in ids.into_iter().enumerate() {
                    let per_key: BoxFuture<'static, LoadResult<V>> =
                        Box::pin(batch.clone().map(move |all: Arc<Vec<LoadResult<V>>>| {
                            all.get(i).cloned().unwrap_or(Ok(None))
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
                Duration::ZERO,
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

    /// One origin load for `asks`: fenced fills of every result, then the flights
    /// are retired.
    async fn run_loads(
        this: Arc<Self>,
        asks: Vec<Ask<K>>,
        ids: Vec<(K, u64)>,
        ticket: u64,
        loader: Option<Arc<dyn Loader<K, V>>>,
    ) -> Arc<Vec<LoadResult<V>>> {
        // Retires the flights even if this future is dropped or panics.
        struct Retire<'a, K: CacheKey, V: Clone + ByteSize + MaybeSend + MaybeSync + 'static> {
            inner: &'a Inner<K, V>,
            ids: &'a [(K, u64)],
        }
        impl<K: CacheKey, V: Clone + ByteSize + MaybeSend + MaybeSync + 'static> Drop for Retire<'_, K, V> {
            fn drop(&mut self) {
                let mut flights = self.inner.lock_flights();
                for (key, id) in self.ids {
                    if flights.get(key).is_some_and(|f| f.id == *id) {
                        flights.remove(key);
                    }
                }
            }
        }
        let _retire = Retire {
            inner: &this,
            ids: &ids,
        };
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
        Arc::new(results)
    }

    /// What a reader of an origin load returns: the value if it is still
    /// unexpired now (checked at the moment of return), else an error, or a stale
    /// value when the chain keeps them.
    pub(super) fn finish_origin_read(
        &self,
        key: &K,
        result: LoadResult<V>,
    ) -> Result<Option<Lookup<'_, V>>> {
        let result = match result {
            Ok(Some(entry))
                if entry.is_expired(self.clock.now())
                    && !mutation::on(Mutation::NoExpiryAtReturn) =>
            {
                Err(Arc::new(ExpiredFromOrigin) as SharedError)
            }
            other => other,
        };
        match result {
            Ok(found) => Ok(found.map(|entry| Lookup {
                entry,
                source: Source::Origin,
            })),
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
            Duration::ZERO,
            entry.value.byte_size(),
            None,
        );
        Some(Lookup {
            entry,
            source: Source::Stale,
        })
    }
}
