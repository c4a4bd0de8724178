//! Tags: the chain's view of tag generations, the lazy check every read makes,
//! and `invalidate_tag`.
//!
//! An entry carries, for each of its tags, the generation it was read at. A
//! read treats an entry with an older generation than the current one as
//! absent. Generations come from the chain's [`TagStore`] (or, with none, from
//! this table alone, which is then the truth).
//!
//! Loads: a loaded value's tags are known only once the loader returns. The
//! table counts every change it sees (`epoch`): a load notes the count when it
//! starts, and its value is written into the tiers only if none of its tags
//! changed (or became known) meanwhile; otherwise it is returned to the reads
//! that waited for it, and kept nowhere. So a value loaded before a bump never
//! lands with the bumped generation.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::{Result, TagStore, Tags};

pub(crate) enum TagCheck {
    Current,
    Stale,
    /// A generation this chain has not read yet (from a store that answers
    /// only asynchronously).
    Unknown,
}

#[derive(Clone, Copy)]
struct Known {
    generation: u64,
    /// The epoch at which this table last changed it (a bump, or a first
    /// read of a generation above 0).
    changed: u64,
    /// The epoch of its last bump seen here (this chain's own, or another
    /// instance's through the bus).
    bumped: u64,
}

#[derive(Default)]
struct State {
    generations: HashMap<Box<str>, Known>,
    epoch: u64,
    /// Verdicts on tag lists (by [`Tags`] handle: current or not) at `epoch`:
    /// a tagged hit then costs one lookup. Emptied whenever `epoch` moves.
    verdicts: HashMap<u64, bool>,
}

/// The most verdicts kept before they are all dropped.
const MAX_VERDICTS: usize = 1 << 16;

/// What a load noted when it started.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LoadMark {
    epoch: u64,
    store: Option<u64>,
}

pub(crate) struct TagTable {
    store: Option<Arc<dyn TagStore>>,
    state: RwLock<State>,
}

impl TagTable {
    pub(crate) fn new(store: Option<Arc<dyn TagStore>>) -> Self {
        TagTable {
            store,
            state: RwLock::default(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The store, when it answers at once (then it is read on every check).
    fn sync_store(&self) -> Option<&dyn TagStore> {
        self.store
            .as_deref()
            .filter(|store| store.changes_now().is_some())
    }

    /// Whether `tags` (names and the generations an entry was read at) are
    /// current, without waiting.
    pub(crate) fn check_now(&self, tags: &Tags) -> TagCheck {
        let Some(id) = tags.id() else {
            return TagCheck::Current;
        };
        if self.sync_store().is_none() {
            // The common tagged hit: a verdict already reached at this epoch.
            if let Some(&current) = self.read().verdicts.get(&id) {
                return if current {
                    TagCheck::Current
                } else {
                    TagCheck::Stale
                };
            }
        }
        let list = tags.list();
        if list.is_empty() {
            // A list the process forgot: absent, to be safe.
            return TagCheck::Stale;
        }
        if let Some(store) = self.sync_store() {
            for (name, generation) in list.iter() {
                match store.generation_now(name) {
                    Some(Ok(current)) if current > generation => return TagCheck::Stale,
                    Some(Ok(_)) => {}
                    _ => return TagCheck::Unknown,
                }
            }
            return TagCheck::Current;
        }
        let (verdict, epoch) = {
            let state = self.read();
            let mut verdict = TagCheck::Current;
            for (name, generation) in list.iter() {
                match state.generations.get(name) {
                    Some(known) if known.generation > generation => {
                        verdict = TagCheck::Stale;
                        break;
                    }
                    Some(_) => {}
                    // With no store this table is the truth: never bumped is 0.
                    None if self.store.is_some() => verdict = TagCheck::Unknown,
                    None => {}
                }
            }
            (verdict, state.epoch)
        };
        let current = match verdict {
            TagCheck::Current => true,
            TagCheck::Stale => false,
            TagCheck::Unknown => return verdict,
        };
        let mut state = self.write();
        // Kept only if nothing changed meanwhile.
        if state.epoch == epoch {
            if state.verdicts.len() >= MAX_VERDICTS {
                state.verdicts.clear();
            }
            state.verdicts.insert(id, current);
        }
        verdict
    }

    /// Whether `tags` are current, reading the generations it does not know
    /// yet from the store.
    pub(crate) async fn check(&self, tags: &Tags) -> Result<bool> {
        loop {
            match self.check_now(tags) {
                TagCheck::Current => return Ok(true),
                TagCheck::Stale => return Ok(false),
                TagCheck::Unknown => {
                    if self.sync_store().is_some() {
                        // The store answered with an error at once: ask it
                        // the slow way, for the error.
                        let list = tags.list();
                        let names: Vec<&str> = list.names().collect();
                        if let Some(store) = &self.store {
                            let current = store.generations(&names).await?;
                            return Ok(list.iter().zip(current).all(|((_, g), c)| c <= g));
                        }
                    }
                    self.resolve(tags.list().names()).await?;
                }
            }
        }
    }

    /// Reads the generations of the tags in `names` this table does not know
    /// from the store, and learns them.
    async fn resolve<'a>(&self, names: impl Iterator<Item = &'a str>) -> Result<()> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let unknown: Vec<&str> = {
            let state = self.read();
            names
                .filter(|n| !state.generations.contains_key(*n))
                .collect()
        };
        if unknown.is_empty() {
            return Ok(());
        }
        let current = store.generations(&unknown).await?;
        for (name, generation) in unknown.into_iter().zip(current) {
            self.learn(name, generation, false);
        }
        Ok(())
    }

    /// Records that `name` is at `generation` (or later): read from the store
    /// (`bumped` false) or bumped (`bumped` true: by this chain, or by
    /// another instance, through the bus). A tag first read at a generation
    /// above 0 counts as a change, so loads under way do not trust it (it may
    /// have been bumped while they ran).
    pub(crate) fn learn(&self, name: &str, generation: u64, bumped: bool) {
        let mut state = self.write();
        let epoch = state.epoch + 1;
        let known = match state.generations.get(name) {
            Some(known) if known.generation >= generation => return,
            Some(known) => Known {
                generation,
                changed: epoch,
                bumped: if bumped { epoch } else { known.bumped },
            },
            // Generation 0 was never bumped: a load under way that meets it
            // cannot be older than a bump, so it is no change.
            // (It changes no verdict: an unknown tag got none.)
            None if generation == 0 => Known {
                generation,
                changed: 0,
                bumped: 0,
            },
            None => Known {
                generation,
                changed: epoch,
                bumped: if bumped { epoch } else { 0 },
            },
        };
        state.generations.insert(Box::from(name), known);
        state.epoch = epoch;
        state.verdicts.clear();
    }

    /// Bumps `name`: in the store if there is one, else here. Returns the new
    /// generation.
    pub(crate) async fn bump(&self, name: &str) -> Result<u64> {
        match &self.store {
            Some(store) => {
                let generation = store.bump(name).await?;
                self.learn(name, generation, true);
                Ok(generation)
            }
            None => Ok(self.bump_here(name)),
        }
    }

    fn bump_here(&self, name: &str) -> u64 {
        let mut state = self.write();
        state.epoch += 1;
        state.verdicts.clear();
        let epoch = state.epoch;
        let known = state.generations.entry(Box::from(name)).or_insert(Known {
            generation: 0,
            changed: epoch,
            bumped: epoch,
        });
        known.generation += 1;
        known.changed = epoch;
        known.bumped = epoch;
        known.generation
    }

    /// Another instance bumped `name` to `generation`: learn it (with a store),
    /// or bump this chain's own generation (without one, each instance keeps
    /// its own).
    pub(crate) fn bumped_elsewhere(&self, name: &str, generation: u64) {
        if self.store.is_some() {
            self.learn(name, generation, true);
        } else {
            self.bump_here(name);
        }
    }

    /// Forgets every generation read from the store (they may have been
    /// bumped unseen, e.g. while the bus link was down): they are read again
    /// when next needed. A chain with no store keeps its own, which are the
    /// truth.
    pub(crate) fn forget(&self) {
        if self.store.is_none() {
            return;
        }
        let mut state = self.write();
        state.generations.clear();
        state.verdicts.clear();
        state.epoch += 1;
    }

    /// The current generation of `name`, as far as this chain knows.
    pub(crate) fn known(&self, name: &str) -> Option<u64> {
        if let Some(store) = self.sync_store() {
            return store.generation_now(name).and_then(|g| g.ok());
        }
        match self.read().generations.get(name) {
            Some(known) => Some(known.generation),
            None if self.store.is_none() => Some(0),
            None => None,
        }
    }

    /// Noted by a load when it starts.
    pub(crate) fn mark(&self) -> LoadMark {
        LoadMark {
            epoch: self.read().epoch,
            store: self.sync_store().and_then(|s| s.changes_now()),
        }
    }

    /// The generations for a value loaded since `mark`, and whether it may be
    /// written into the tiers: only if none of its tags changed or became
    /// known since the load started.
    pub(crate) async fn stamp_loaded(&self, tags: &Tags, mark: LoadMark) -> Result<(Tags, bool)> {
        if let Some(store) = self.sync_store() {
            let mut failed = false;
            let stamped = tags.with_generations(|name| match store.generation_now(name) {
                Some(Ok(g)) => g,
                _ => {
                    failed = true;
                    0
                }
            });
            let unchanged = store.changes_now() == mark.store;
            return Ok((stamped, unchanged && !failed));
        }
        // A tag unknown even after `resolve` exists only without a store,
        // where it was never bumped.
        self.stamp_from_table(tags, mark, |known| known.changed, self.store.is_none())
            .await
    }

    /// The generations for a value a `put` that began at `mark` writes now,
    /// and whether it may still write: not if one of its tags was bumped here
    /// since it began (that `invalidate_tag` began after it, and wins).
    pub(crate) async fn stamp_put(&self, tags: &Tags, mark: LoadMark) -> Result<(Tags, bool)> {
        if let Some(store) = self.sync_store() {
            let list = tags.list();
            let names: Vec<&str> = list.names().collect();
            let current = store.generations(&names).await?;
            let mut it = current.into_iter();
            let stamped = tags.with_generations(|_| it.next().unwrap_or(0));
            return Ok((stamped, store.changes_now() == mark.store));
        }
        self.stamp_from_table(tags, mark, |known| known.bumped, true)
            .await
    }

    /// `tags` at the generations this table knows (after reading the unknown
    /// ones from the store), and whether none of them moved since `mark` by
    /// the measure `since` picks; a tag still unknown counts as
    /// `unknown_fillable`.
    async fn stamp_from_table(
        &self,
        tags: &Tags,
        mark: LoadMark,
        since: fn(&Known) -> u64,
        unknown_fillable: bool,
    ) -> Result<(Tags, bool)> {
        self.resolve(tags.list().names()).await?;
        let state = self.read();
        let mut fillable = true;
        let stamped = tags.with_generations(|name| match state.generations.get(name) {
            Some(known) => {
                fillable &= since(known) <= mark.epoch;
                known.generation
            }
            None => {
                fillable &= unknown_fillable;
                0
            }
        });
        Ok((stamped, fillable))
    }
}
