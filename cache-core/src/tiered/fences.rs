//! The chain's in-process fences: which fills may still write.
//!
//! Every invalidation and write-through **begins** (it is recorded, and stays
//! "under way") before it touches any tier, and **ends** (it is recorded again)
//! after its last tier call. A read takes a ticket (the current sequence number)
//! when it begins. Its fills may write only while
//!
//! - no invalidation covering the key is under way, and
//! - no invalidation covering the key began or ended after the ticket.
//!
//! The second record matters: a read that starts while an invalidation is under
//! way can still find the old value in a tier the invalidation has not reached
//! yet; the end record voids its ticket. A tier evaluates the check at the
//! moment it writes, under the lock its removals take (or the chain's write
//! gate, for tiers that cannot), so an invalidation is either wholly before a
//! write (refused) or wholly after it (the removal takes the value out).
//!
//! The common case (nothing under way, nothing since the ticket) costs two atomic
//! loads; otherwise a short lock and a scan of the recent records.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::mutation::{self, Mutation};
use crate::FenceCheck;

/// Records kept to answer "since the ticket"; a fill older than that is refused.
const RETAINED: usize = 2048;

#[derive(Clone, Debug)]
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
struct State {
    /// (sequence number, scope) of every begin and end, oldest first.
    recent: VecDeque<(u64, Scope)>,
    /// (id, scope) of the invalidations under way.
    under_way: Vec<(u64, Scope)>,
}

#[derive(Debug, Default)]
pub(crate) struct Fences {
    seq: AtomicU64,
    open: AtomicUsize,
    state: Mutex<State>,
}

impl Fences {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ticket a read takes when it begins.
    #[inline]
    pub(crate) fn ticket(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    fn push(state: &mut State, seq: u64, scope: Scope) {
        state.recent.push_back((seq, scope));
        while state.recent.len() > RETAINED {
            state.recent.pop_front();
        }
    }

    /// An invalidation or write-through of `scope` begins; returns its id.
    pub(crate) fn begin(&self, scope: Scope) -> u64 {
        let mut state = self.lock();
        // Bumped under the lock so sequence numbers and record order agree.
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        if mutation::on(Mutation::NoPendingFence) {
            Self::push(&mut state, seq, scope);
            return seq;
        }
        Self::push(&mut state, seq, scope.clone());
        state.under_way.push((seq, scope));
        self.open.fetch_add(1, Ordering::SeqCst);
        seq
    }

    /// The invalidation `id` has made its last tier call.
    pub(crate) fn end(&self, id: u64) {
        let mut state = self.lock();
        let Some(pos) = state.under_way.iter().position(|(i, _)| *i == id) else {
            return;
        };
        let (_, scope) = state.under_way.swap_remove(pos);
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        Self::push(&mut state, seq, scope);
        self.open.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether a fill of `key` by a read holding `ticket` may write. `own` is the
    /// id of the write-through doing the fill, which does not fence itself.
    pub(crate) fn holds(&self, ticket: u64, key: &str, own: Option<u64>) -> bool {
        if self.seq.load(Ordering::SeqCst) == ticket && self.open.load(Ordering::SeqCst) == 0 {
            return true;
        }
        let state = self.lock();
        if state
            .under_way
            .iter()
            .any(|(id, scope)| Some(*id) != own && scope.covers(key))
        {
            return false;
        }
        match state.recent.front() {
            Some((oldest, _)) if *oldest <= ticket + 1 => !state
                .recent
                .iter()
                .any(|(seq, scope)| *seq > ticket && scope.covers(key)),
            // Nothing recorded at all since the ticket.
            None => true,
            // The records no longer reach back to the ticket: assume the worst.
            Some(_) => false,
        }
    }
}

/// Ends an invalidation when dropped, so one whose future is dropped half-way
/// does not fence its key for ever.
pub(crate) struct Begun<'a> {
    fences: &'a Fences,
    pub(crate) id: u64,
}

impl<'a> Begun<'a> {
    pub(crate) fn new(fences: &'a Fences, scope: Scope) -> Self {
        let id = fences.begin(scope);
        Begun { fences, id }
    }
}

impl Drop for Begun<'_> {
    fn drop(&mut self) {
        self.fences.end(self.id);
    }
}

/// The in-process check of one key's fill: a [`FenceCheck`] for tiers.
pub(crate) struct KeyFence<'a> {
    pub(crate) fences: &'a Fences,
    pub(crate) ticket: u64,
    pub(crate) key: String,
    pub(crate) own: Option<u64>,
}

impl FenceCheck for KeyFence<'_> {
    #[inline]
    fn holds(&self) -> bool {
        self.fences.holds(self.ticket, &self.key, self.own)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_covering_invalidations_fence() {
        let f = Fences::default();
        let t = f.ticket();
        assert!(f.holds(t, "a", None));
        let b = f.begin(Scope::Key("b".into()));
        assert!(f.holds(t, "a", None));
        assert!(!f.holds(t, "b", None));
        f.end(b);
        let p = f.begin(Scope::Prefix("user:".into()));
        assert!(!f.holds(t, "user:1", None));
        f.end(p);
        assert!(f.holds(f.ticket(), "user:1", None));
        let all = f.begin(Scope::All);
        assert!(
            !f.holds(f.ticket(), "anything", None),
            "under way fences new tickets too"
        );
        f.end(all);
        assert!(f.holds(f.ticket(), "anything", None));
    }

    #[test]
    fn a_ticket_taken_while_under_way_is_voided_by_the_end() {
        let f = Fences::default();
        let id = f.begin(Scope::Key("k".into()));
        let during = f.ticket();
        assert!(!f.holds(during, "k", None));
        f.end(id);
        assert!(!f.holds(during, "k", None), "the end record voids it");
        assert!(f.holds(f.ticket(), "k", None));
    }

    #[test]
    fn a_write_through_does_not_fence_itself() {
        let f = Fences::default();
        let id = f.begin(Scope::Key("k".into()));
        let t = f.ticket();
        assert!(f.holds(t, "k", Some(id)));
        let other = f.begin(Scope::Key("k".into()));
        assert!(!f.holds(t, "k", Some(id)), "a newer one does");
        f.end(other);
        f.end(id);
    }

    #[test]
    fn forgotten_history_fences() {
        let f = Fences::default();
        let t = f.ticket();
        for i in 0..RETAINED {
            let id = f.begin(Scope::Key(format!("other{i}")));
            f.end(id);
        }
        assert!(!f.holds(t, "a", None));
    }
}
