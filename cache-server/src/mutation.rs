//! Switches that break one guarantee on purpose (feature `mutations`), so a
//! test can show that it catches the bug. Never enable the feature outside
//! tests. One function per switch; each is read where the thing it breaks is
//! built, not on every call.

use std::cell::Cell;

thread_local! {
    static IGNORE_STAMPS: Cell<bool> = const { Cell::new(false) };
}

/// While on, [`RedisTier`](crate::RedisTier)'s `put_fenced` and
/// `put_many_fenced` called on this thread write without comparing the
/// stamp's generations with Redis's (the fence's in-process check and the
/// horizon still apply). A per-thread switch, so that tests running beside it
/// are not affected: run the mutated test on a current-thread runtime.
///
/// ```
/// cache_server::mutation::set_ignore_stamps(true);
/// // ... fills made on this thread now ignore stamps ...
/// cache_server::mutation::set_ignore_stamps(false);
/// ```
pub fn set_ignore_stamps(on: bool) {
    IGNORE_STAMPS.with(|s| s.set(on));
}

pub(crate) fn ignore_stamps() -> bool {
    IGNORE_STAMPS.with(Cell::get)
}
