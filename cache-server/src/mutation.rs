//! Switches that plant a known bug, so a test can show it would catch it
//! (feature `mutations`; tests only).
//!
//! Without the feature every switch is a `const false` and the code it guards
//! compiles away. The switches are per thread: run a mutated test on a
//! current-thread runtime, so the tier's code runs on the thread that set them.
#![doc(hidden)]

#[cfg(feature = "mutations")]
use std::cell::Cell;

#[cfg(feature = "mutations")]
thread_local! {
    static IGNORE_STAMPS: Cell<bool> = const { Cell::new(false) };
}

/// While `true`, `RedisTier::put_fenced` and `put_many_fenced` on this thread
/// write without comparing the stamp's generations with Redis's (the fence's
/// in-process check and the horizon still apply).
#[cfg(feature = "mutations")]
pub fn set_ignore_stamps(on: bool) {
    IGNORE_STAMPS.with(|s| s.set(on));
}

/// Whether fenced writes on this thread ignore stamps.
#[cfg(feature = "mutations")]
pub(crate) fn ignore_stamps() -> bool {
    IGNORE_STAMPS.with(Cell::get)
}

/// Whether fenced writes on this thread ignore stamps: never, without the
/// `mutations` feature.
#[cfg(not(feature = "mutations"))]
pub(crate) const fn ignore_stamps() -> bool {
    false
}
