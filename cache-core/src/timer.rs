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
