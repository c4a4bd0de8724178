//! The invalidation log that keeps racing reads from writing stale values back.
//!
//! Every invalidation (and write-through) bumps an epoch and records what it
//! covered. A read remembers the epoch it started at; before and after it writes
//! into tiers (backfill, origin results) it asks whether anything covering its key
//! was recorded since. If so it does not write, or takes its writes back. The
//! common case (no invalidation since) costs one atomic load.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const RETAINED: usize = 1024;

#[derive(Debug)]
pub(crate) enum Scope {
    Key(String),
    Prefix(String),
    All,
}

impl Scope {
    fn covers(&self, key: &str) -> bool {
        match self {
            Scope::Key(k) => k == key,
            Scope::Prefix(p) => key.starts_with(p.as_str()),
            Scope::All => true,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct InvalidationLog {
    epoch: AtomicU64,
    recent: Mutex<VecDeque<(u64, Scope)>>,
}

impl InvalidationLog {
    #[inline]
    pub(crate) fn current(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub(crate) fn record(&self, scope: Scope) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        // Bumped under the lock so epochs and log order agree.
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        recent.push_back((epoch, scope));
        if recent.len() > RETAINED {
            recent.pop_front();
        }
    }

    /// Whether an invalidation covering `key` was recorded after `since`.
    /// Conservative: if the log no longer reaches back to `since`, says yes.
    pub(crate) fn touched_since(&self, since: u64, key: &str) -> bool {
        if self.epoch.load(Ordering::SeqCst) == since {
            return false;
        }
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        match recent.front() {
            Some((oldest, _)) if *oldest <= since + 1 => recent
                .iter()
                .filter(|(e, _)| *e > since)
                .any(|(_, scope)| scope.covers(key)),
            _ => true,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_covering_invalidations_count() {
        let log = InvalidationLog::default();
        let start = log.current();
        assert!(!log.touched_since(start, "a"));
        log.record(Scope::Key("b".into()));
        assert!(!log.touched_since(start, "a"));
        log.record(Scope::Prefix("user:".into()));
        assert!(log.touched_since(start, "user:1"));
        assert!(!log.touched_since(log.current(), "user:1"));
        log.record(Scope::All);
        assert!(log.touched_since(start, "anything"));
    }

    #[test]
    fn forgotten_history_counts_as_touched() {
        let log = InvalidationLog::default();
        let start = log.current();
        for i in 0..RETAINED + 10 {
            log.record(Scope::Key(format!("other{i}")));
        }
        assert!(log.touched_since(start, "a"));
    }
}
