//! Fenced writes: the tokens that let a tier refuse a fill that lost a race.
//!
//! A chain never writes a value and takes it back later. Every write it makes on
//! behalf of a read (a backfill, an origin fill) is a **conditional write**
//! ([`CacheLayer::put_fenced`](crate::CacheLayer::put_fenced)) carrying a
//! [`Fence`]:
//!
//! - an in-process check ([`FenceCheck`]), true while no invalidation or
//!   write-through covering the key has begun since the read began. A tier
//!   evaluates it **at the moment it writes**, under its own lock, so an
//!   invalidation is either entirely before the write (the write is refused) or
//!   entirely after it (the invalidation removes what was written);
//! - a [`Stamp`]: the tier's own generation for the key, handed out when the read
//!   missed it ([`CacheLayer::get_stamped`](crate::CacheLayer::get_stamped)).
//!   Tiers shared between processes (Redis) bump the generation on every removal
//!   and write-through and compare it in the same atomic step as the write, so a
//!   fill from another instance that read before the removal is refused there too.
//!
//! This is memcache's lease ("Scaling Memcache at Facebook", NSDI 2013): a miss
//! hands out a token, a delete voids outstanding tokens, and a set with a void
//! token is refused.

use std::fmt;

use crate::{MaybeSend, MaybeSync, Timestamp};

/// A tier's own generation for one key, taken when a read missed it.
///
/// Tiers that are shared between processes (Redis) hand out stamps from
/// [`CacheLayer::get_stamped`](crate::CacheLayer::get_stamped) and refuse a
/// [`CacheLayer::put_fenced`](crate::CacheLayer::put_fenced) whose stamp is no
/// longer current. In-process tiers do not stamp ([`Stamp::NONE`]): the
/// in-process [`FenceCheck`] covers them.
///
/// ```
/// use cache_core::{Stamp, Timestamp};
///
/// let stamp = Stamp::new(3, 1, Timestamp::from_unix_millis(1_000));
/// assert_eq!((stamp.key_generation(), stamp.scope_generation()), (3, 1));
/// assert!(stamp.is_taken());
/// assert!(!Stamp::NONE.is_taken());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Stamp {
    key: u64,
    scope: u64,
    taken_at: Option<Timestamp>,
}

impl Stamp {
    /// No stamp: the tier does not stamp (in-process tiers), or none was taken.
    pub const NONE: Stamp = Stamp {
        key: 0,
        scope: 0,
        taken_at: None,
    };

    /// A stamp of the key's generation and of its scope's (namespace or shard)
    /// generation, taken at `taken_at` on the tier's clock.
    pub fn new(key_generation: u64, scope_generation: u64, taken_at: Timestamp) -> Self {
        Stamp {
            key: key_generation,
            scope: scope_generation,
            taken_at: Some(taken_at),
        }
    }

    /// The key's generation when the stamp was taken.
    pub fn key_generation(&self) -> u64 {
        self.key
    }

    /// The generation of the key's scope (namespace, shard) when it was taken.
    pub fn scope_generation(&self) -> u64 {
        self.scope
    }

    /// When the tier handed it out, on the tier's clock.
    pub fn taken_at(&self) -> Option<Timestamp> {
        self.taken_at
    }

    /// Whether a tier handed it out (not [`Stamp::NONE`]).
    pub fn is_taken(&self) -> bool {
        self.taken_at.is_some()
    }
}

impl fmt::Debug for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.taken_at {
            None => f.write_str("Stamp::NONE"),
            Some(at) => write!(f, "Stamp(key {}, scope {}, at {at})", self.key, self.scope),
        }
    }
}

/// The in-process half of a [`Fence`]: whether the fill of one key may still write.
///
/// Evaluated by the tier at the moment of the write, under whatever lock makes
/// the write atomic. Must be cheap and must not block.
///
/// ```
/// use cache_core::FenceCheck;
///
/// struct Never;
/// impl FenceCheck for Never {
///     fn holds(&self) -> bool { false }
/// }
/// assert!(!Never.holds());
/// ```
pub trait FenceCheck: MaybeSend + MaybeSync {
    /// `true` while no invalidation or write-through covering the key has begun
    /// since the fill's read began.
    fn holds(&self) -> bool;
}

/// A check that always holds: for writes made outside a chain.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unfenced;

impl FenceCheck for Unfenced {
    fn holds(&self) -> bool {
        true
    }
}

/// What a conditional write presents: the in-process check and the tier's stamp.
///
/// ```
/// use cache_core::{CacheLayer, Clock, Entry, Fence, Fill, ManualClock, MemoryTier, Stamp, Unfenced};
/// use std::time::Duration;
///
/// # futures_executor::block_on(async {
/// let clock = ManualClock::new();
/// let tier = MemoryTier::builder().clock(clock.clone()).build();
/// let key = "user:1".to_string();
/// let entry = Entry::expiring_in(1u32, clock.now(), Duration::from_secs(60));
/// let fill = tier.put_fenced(&key, entry.clone(), &Fence::new(&Unfenced, Stamp::NONE)).await?;
/// assert_eq!(fill, Fill::Written);
///
/// struct Voided;
/// impl cache_core::FenceCheck for Voided {
///     fn holds(&self) -> bool { false }
/// }
/// let fill = tier.put_fenced(&key, entry, &Fence::new(&Voided, Stamp::NONE)).await?;
/// assert_eq!(fill, Fill::Refused);
/// # Ok::<(), cache_core::Error>(()) }).unwrap();
/// ```
#[derive(Clone, Copy)]
pub struct Fence<'a> {
    check: &'a dyn FenceCheck,
    stamp: Stamp,
    /// [`Fence::open`]: nothing to compare, the write is unconditional.
    open: bool,
}

impl<'a> Fence<'a> {
    /// A fence of `check` and `stamp`.
    pub fn new(check: &'a dyn FenceCheck, stamp: Stamp) -> Self {
        Fence {
            check,
            stamp,
            open: false,
        }
    }

    /// A fence that always holds, with no stamp: for writes made outside a
    /// chain. A tier that keeps generations does not compare them for it:
    /// the write is unconditional (a fence made with [`Fence::new`] and
    /// [`Stamp::NONE`] is still compared, as generations `(0, 0)`).
    ///
    /// ```
    /// assert!(cache_core::Fence::open().is_open());
    /// ```
    pub fn open() -> Fence<'static> {
        Fence {
            check: &Unfenced,
            stamp: Stamp::NONE,
            open: true,
        }
    }

    /// Whether this is [`Fence::open`].
    ///
    /// ```
    /// use cache_core::{Fence, Stamp, Unfenced};
    /// assert!(!Fence::new(&Unfenced, Stamp::NONE).is_open());
    /// ```
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Whether the in-process check still holds.
    #[inline]
    pub fn holds(&self) -> bool {
        self.check.holds()
    }

    /// The tier's stamp.
    pub fn stamp(&self) -> Stamp {
        self.stamp
    }

    /// The in-process check.
    pub fn check(&self) -> &'a dyn FenceCheck {
        self.check
    }
}

impl fmt::Debug for Fence<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fence")
            .field("stamp", &self.stamp)
            .finish_non_exhaustive()
    }
}

/// What a conditional write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fill {
    /// The entry was written.
    Written,
    /// The fence no longer held: nothing was written.
    Refused,
}

impl Fill {
    /// Whether the entry was written.
    pub fn is_written(self) -> bool {
        self == Fill::Written
    }
}
