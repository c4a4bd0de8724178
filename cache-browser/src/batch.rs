//! [`Batcher`]: the reads a page makes in one turn of its event loop, asked
//! of the chain together as one [`TieredCache::get_many`], as DataLoader
//! does for GraphQL.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use cache_core::{ByteSize, CacheKey, Entry, Lookup, Result, Source, TieredCache};
use futures_util::future::join_all;
use wasm_bindgen::JsValue;
use wasm_bindgen_futures::JsFuture;

/// How many microtasks a batch waits at most for more reads to join it
/// (it stops at the first one in which none came).
const MAX_TICKS: usize = 4;

/// Where a batched read's value came from: [`Source`], owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Served {
    /// Tier number `index`, named `name`.
    Tier {
        /// Position in the chain.
        index: usize,
        /// The tier's name.
        name: String,
    },
    /// The origin loader.
    Origin,
    /// An expired value served because the origin failed (grace period).
    Stale,
}

impl Served {
    fn of(source: Source<'_>) -> Self {
        match source {
            Source::Tier { index, name } => Served::Tier {
                index,
                name: name.to_owned(),
            },
            Source::Origin => Served::Origin,
            Source::Stale => Served::Stale,
        }
    }
}

/// A value a [`Batcher`] read found, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batched<V> {
    /// The value and its expiry.
    pub entry: Entry<V>,
    /// Which tier, or the origin, answered.
    pub served: Served,
}

fn owned<V>(lookup: Lookup<'_, V>) -> Batched<V> {
    Batched {
        served: Served::of(lookup.source),
        entry: lookup.entry,
    }
}

type Answer<V> = Result<Option<Batched<V>>>;

/// Where a batch leaves one caller's answer.
struct Slot<V> {
    answer: RefCell<Option<Answer<V>>>,
    waker: RefCell<Option<Waker>>,
}

impl<V> Slot<V> {
    fn send(&self, answer: Answer<V>) {
        *self.answer.borrow_mut() = Some(answer);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

/// One caller's wait for its answer.
struct Wait<V>(Rc<Slot<V>>);

impl<V> Future for Wait<V> {
    type Output = Answer<V>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer<V>> {
        if let Some(answer) = self.0.answer.borrow_mut().take() {
            return Poll::Ready(answer);
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

struct Inner<K, V> {
    cache: TieredCache<K, V>,
    pending: RefCell<Vec<(K, Rc<Slot<V>>)>>,
    /// Whether a flush is waiting for this turn's reads.
    scheduled: Cell<bool>,
    /// How many `get_many` calls the batcher made (batches of one included).
    batches: Cell<u64>,
}

/// Coalesces the reads made in one turn of the page's event loop (one
/// microtask checkpoint: every element a list creates in one frame) into one
/// [`TieredCache::get_many`]: one batch call per tier (one IndexedDB
/// transaction, one pass over the Cache API) and one origin batch for the
/// keys no tier holds, joining loads already in flight (single flight).
///
/// Each caller gets its own answer. A batch that fails as a whole (one key's
/// origin load failed, or one key is invalid) is asked again key by key, so a
/// failing key fails only its own callers: the other keys are then answered
/// by the tiers the batch filled, and the failing key is loaded once more.
///
/// ```no_run
/// # async fn demo(cache: cache_core::TieredCache<String, Vec<u8>>) -> cache_core::Result<()> {
/// use cache_browser::Batcher;
/// use futures_util::future::join_all;
///
/// let batcher = Batcher::new(cache);
/// let (a, b) = ("1".to_owned(), "2".to_owned());
/// // Asked in the same turn: one `get_many` of both keys.
/// let found = join_all([batcher.get(&a), batcher.get(&b)]).await;
/// # let _ = found; Ok(()) }
/// ```
pub struct Batcher<K, V> {
    inner: Rc<Inner<K, V>>,
}

impl<K, V> Clone for Batcher<K, V> {
    fn clone(&self) -> Self {
        Batcher {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V> fmt::Debug for Batcher<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher")
            .field("pending", &self.inner.pending.borrow().len())
            .field("batches", &self.inner.batches.get())
            .finish_non_exhaustive()
    }
}

/// Resolves after the microtasks queued so far have run.
async fn next_microtask() {
    let _ = JsFuture::from(js_sys::Promise::resolve(&JsValue::UNDEFINED)).await;
}

impl<K, V> Batcher<K, V>
where
    K: CacheKey,
    V: Clone + ByteSize + 'static,
{
    /// A batcher in front of `cache`.
    pub fn new(cache: TieredCache<K, V>) -> Self {
        Batcher {
            inner: Rc::new(Inner {
                cache,
                pending: RefCell::new(Vec::new()),
                scheduled: Cell::new(false),
                batches: Cell::new(0),
            }),
        }
    }

    /// The chain behind the batcher.
    pub fn cache(&self) -> &TieredCache<K, V> {
        &self.inner.cache
    }

    /// How many `get_many` calls the batcher has made so far.
    pub fn batches(&self) -> u64 {
        self.inner.batches.get()
    }

    /// `key`'s value, read with every other key asked in the same turn.
    ///
    /// # Errors
    ///
    /// As [`TieredCache::get`], for this key alone.
    pub fn get(&self, key: &K) -> impl Future<Output = Result<Option<Batched<V>>>> {
        let slot = Rc::new(Slot {
            answer: RefCell::new(None),
            waker: RefCell::new(None),
        });
        self.inner
            .pending
            .borrow_mut()
            .push((key.clone(), slot.clone()));
        if !self.inner.scheduled.replace(true) {
            let inner = self.inner.clone();
            wasm_bindgen_futures::spawn_local(flush(inner));
        }
        Wait(slot)
    }
}

/// Waits for the turn's reads, then asks the chain for all of them at once.
async fn flush<K, V>(inner: Rc<Inner<K, V>>)
where
    K: CacheKey,
    V: Clone + ByteSize + 'static,
{
    let mut seen = inner.pending.borrow().len();
    for _ in 0..MAX_TICKS {
        next_microtask().await;
        let now = inner.pending.borrow().len();
        if now == seen {
            break;
        }
        seen = now;
    }
    // Reads from here on start the next batch.
    inner.scheduled.set(false);
    let batch = std::mem::take(&mut *inner.pending.borrow_mut());
    if batch.is_empty() {
        return;
    }
    inner.batches.set(inner.batches.get() + 1);
    let keys: Vec<K> = batch.iter().map(|(k, _)| k.clone()).collect();
    match inner.cache.get_many(&keys).await {
        Ok(found) => {
            for ((_, slot), found) in batch.iter().zip(found) {
                slot.send(Ok(found.map(owned)));
            }
        }
        Err(_) => {
            // One key failed the batch: each key on its own (a tier hit for
            // the keys the batch filled), so each caller gets its own answer.
            let cache = &inner.cache;
            join_all(batch.iter().map(|(key, slot)| async move {
                slot.send(cache.get(key).await.map(|l| l.map(owned)));
            }))
            .await;
        }
    }
}
