//! [`Timer`]: how the chain waits, for tier timeouts and injected delays.

use std::fmt;
use std::time::Duration;

use crate::{BoxFuture, MaybeSend, MaybeSync};

/// Something that can sleep. The chain uses it to bound each tier call by its
/// timeout without depending on one async runtime.
///
/// [`DefaultTimer`] works everywhere (a timer thread on native, `setTimeout` on
/// wasm32). Tests can plug in a runtime's virtual time instead, e.g.
/// `Box::pin(tokio::time::sleep(d))` under tokio's paused clock, or wrap the
/// default one:
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::time::Duration;
/// use cache_core::{BoxFuture, DefaultTimer, Timer};
///
/// #[derive(Debug, Default)]
/// struct CountingTimer(AtomicU64);
/// impl Timer for CountingTimer {
///     fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
///         self.0.fetch_add(1, Ordering::Relaxed);
///         DefaultTimer.sleep(d)
///     }
/// }
/// let timer = CountingTimer::default();
/// futures_executor::block_on(timer.sleep(Duration::from_millis(1)));
/// assert_eq!(timer.0.load(Ordering::Relaxed), 1);
/// ```
pub trait Timer: fmt::Debug + MaybeSend + MaybeSync + 'static {
    /// A future that completes after `duration`.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}

/// The runtime-independent timer from `futures-timer`.
///
/// ```
/// use std::time::Duration;
/// use cache_core::{DefaultTimer, Timer};
/// futures_executor::block_on(DefaultTimer.sleep(Duration::from_millis(1)));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultTimer;

impl Timer for DefaultTimer {
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(futures_timer::Delay::new(duration))
    }
}

/// Runs a future to completion in the background: how the chain refreshes an
/// entry ahead of its expiry ([`TieredCacheBuilder::refresh_ahead`](crate::TieredCacheBuilder::refresh_ahead))
/// without holding up the read that noticed it. Any closure taking the boxed
/// future is one: on tokio, `|task| { tokio::spawn(task); }`; on wasm32,
/// `wasm_bindgen_futures::spawn_local`, which runs it on the page's event loop.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use cache_core::{BoxFuture, Spawn};
///
/// // A spawner that keeps its tasks for a test to run by hand.
/// let queue: Arc<Mutex<Vec<BoxFuture<'static, ()>>>> = Arc::default();
/// let q = queue.clone();
/// let spawner = move |task: BoxFuture<'static, ()>| q.lock().unwrap().push(task);
/// spawner.spawn(Box::pin(async {}));
/// for task in queue.lock().unwrap().drain(..) {
///     futures_executor::block_on(task);
/// }
/// ```
pub trait Spawn: MaybeSend + MaybeSync + 'static {
    /// Runs `task` to completion, detached from the caller.
    fn spawn(&self, task: BoxFuture<'static, ()>);
}

impl<F> Spawn for F
where
    F: Fn(BoxFuture<'static, ()>) + MaybeSend + MaybeSync + 'static,
{
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self(task);
    }
}
