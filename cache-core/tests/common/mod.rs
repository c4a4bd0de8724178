//! Helpers shared by the chain tests: a recording observer, a tokio timer and a
//! tier whose writes can be held at a gate.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_core::{
    async_trait, BoxFuture, CacheLayer, Entry, Event, EventKind, EventSource, Observer, Result,
    Timer,
};
use tokio::sync::Notify;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub kind: EventKind,
    pub tier: Option<usize>,
    pub key: String,
    pub bytes: usize,
}

/// Records every event.
#[derive(Debug, Default)]
pub struct Recorder {
    events: Mutex<Vec<Seen>>,
}

impl Recorder {
    pub fn events(&self) -> Vec<Seen> {
        self.events.lock().unwrap().clone()
    }
    pub fn count(&self, kind: EventKind) -> usize {
        self.events().iter().filter(|e| e.kind == kind).count()
    }
    pub fn count_at(&self, kind: EventKind, tier: usize) -> usize {
        self.events()
            .iter()
            .filter(|e| e.kind == kind && e.tier == Some(tier))
            .count()
    }
}

impl Observer for Recorder {
    fn on_event(&self, event: &Event<'_>) {
        let tier = match event.source {
            EventSource::Tier { index, .. } => Some(index),
            _ => None,
        };
        self.events.lock().unwrap().push(Seen {
            kind: event.kind,
            tier,
            key: event.key.to_string(),
            bytes: event.bytes,
        });
    }
}

/// Tier timeouts on tokio's clock, so paused-time tests see virtual time.
#[derive(Debug)]
pub struct TokioTimer;

impl Timer for TokioTimer {
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// A gate a test opens by hand: `wait` parks until `open`.
#[derive(Debug, Default)]
pub struct Gate {
    open: AtomicBool,
    notify: Notify,
    reached: AtomicBool,
    reached_notify: Notify,
}

impl Gate {
    pub async fn wait(&self) {
        self.reached.store(true, Ordering::SeqCst);
        self.reached_notify.notify_waiters();
        while !self.open.load(Ordering::SeqCst) {
            let notified = self.notify.notified();
            if self.open.load(Ordering::SeqCst) {
                break;
            }
            notified.await;
        }
    }
    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
    /// Waits until something is parked at the gate (liveness-bounded).
    pub async fn reached(&self) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !self.reached.load(Ordering::SeqCst) {
                let n = self.reached_notify.notified();
                if self.reached.load(Ordering::SeqCst) {
                    break;
                }
                n.await;
            }
        })
        .await
        .expect("nothing reached the gate within 10 s");
    }
}

/// Wraps a tier; while armed, `put` parks at the gate before writing.
#[derive(Debug)]
pub struct GatedPuts<T> {
    pub inner: T,
    pub gate: Arc<Gate>,
    pub armed: AtomicBool,
}

impl<T> GatedPuts<T> {
    pub fn new(inner: T) -> Self {
        GatedPuts {
            inner,
            gate: Arc::new(Gate::default()),
            armed: AtomicBool::new(false),
        }
    }
}

#[async_trait]
impl<T: CacheLayer<String, String>> CacheLayer<String, String> for GatedPuts<T> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn get(&self, key: &String) -> Result<Option<Entry<String>>> {
        self.inner.get(key).await
    }
    async fn put(&self, key: &String, entry: Entry<String>) -> Result<()> {
        if self.armed.load(Ordering::SeqCst) {
            self.gate.wait().await;
        }
        self.inner.put(key, entry).await
    }
    async fn remove(&self, key: &String) -> Result<bool> {
        self.inner.remove(key).await
    }
    async fn remove_prefix(&self, prefix: &str) -> Result<()> {
        self.inner.remove_prefix(prefix).await
    }
    async fn clear(&self) -> Result<()> {
        self.inner.clear().await
    }
}
