//! The Lua scripts behind [`RedisTier`](super::RedisTier)'s fenced writes and
//! removals, and how they are sent: `EVALSHA`, and on `NOSCRIPT` (a restarted
//! or failed-over server, `SCRIPT FLUSH`) the same call as `EVAL`, which also
//! puts the script back into that server's cache.
//!
//! Generations are decimal strings compared as strings; a missing one is `0`.
//! A new generation is `max(old + 1, Redis TIME in µs)`: it grows with every
//! bump, and it never comes back to a value handed out earlier, even after the
//! generation key has expired (or the server restarted empty), as long as the
//! server's clock does not step back.

use std::sync::LazyLock;

use fred::bytes_utils::Str;
use sha1::{Digest, Sha1};

/// A Lua script and its SHA-1 (what `EVALSHA` names it by).
#[derive(Debug)]
pub(crate) struct Script {
    pub(crate) body: &'static str,
    pub(crate) sha: Str,
}

impl Script {
    pub(crate) fn new(body: &'static str) -> Self {
        let digest = Sha1::digest(body.as_bytes());
        let sha: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Script {
            body,
            sha: Str::from(sha),
        }
    }
}

/// Lua for `local g = <next generation of KEYS[n]>`, as a decimal string.
macro_rules! next_generation {
    ($key:literal) => {
        concat!(
            "local t = redis.call('TIME')\n",
            "local g = string.format('%d', math.max((tonumber(redis.call('GET', KEYS[",
            $key,
            "])) or 0) + 1, t[1] * 1000000 + t[2]))\n",
        )
    };
}

/// A fenced fill. `KEYS`: value, key generation, scope generation. `ARGV`: the
/// stamp's key generation and scope generation, `PXAT` (empty: the entry has
/// expired, delete instead), the value; empty generations (an open fence)
/// compare nothing. Returns 1 (written) or 0 (refused).
pub(super) const FILL_LUA: &str = "\
if ARGV[1] ~= '' then
  local g = redis.call('MGET', KEYS[2], KEYS[3])
  if (g[1] or '0') ~= ARGV[1] or (g[2] or '0') ~= ARGV[2] then
    return 0
  end
end
if ARGV[3] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[4], 'PXAT', ARGV[3])
end
return 1
";

/// A removal. `KEYS`: value, key generation, scope generation. `ARGV`: how
/// long the key generation is kept (ms). Returns `{removed (0/1), new key
/// generation, scope generation}`.
pub(super) const REMOVE_LUA: &str = concat!(
    next_generation!("2"),
    "redis.call('SET', KEYS[2], g, 'PX', ARGV[1])
return {redis.call('DEL', KEYS[1]), g, redis.call('GET', KEYS[3]) or '0'}
"
);

/// An unconditional write (a write-through): bumps the key generation like a
/// removal, so fills stamped before it are refused, then writes. `KEYS`:
/// value, key generation. `ARGV`: how long the key generation is kept (ms),
/// `PXAT`, the value. Returns the new key generation.
pub(super) const WRITE_LUA: &str = concat!(
    next_generation!("2"),
    "redis.call('SET', KEYS[2], g, 'PX', ARGV[1])
redis.call('SET', KEYS[1], ARGV[3], 'PXAT', ARGV[2])
return g
"
);

/// Bumps a scope generation (`remove_prefix`, `clear`); it never expires.
/// `KEYS`: the scope generation. Returns the new one.
pub(super) const BUMP_SCOPE_LUA: &str = concat!(
    next_generation!("1"),
    "redis.call('SET', KEYS[1], g)
return g
"
);

/// The fill with its generation check left out: what `put_fenced` runs while
/// the `mutations` switch says to ignore stamps. Never sent otherwise.
#[cfg(feature = "mutations")]
pub(super) const FILL_IGNORING_STAMPS_LUA: &str = "\
if ARGV[3] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[4], 'PXAT', ARGV[3])
end
return 1
";

/// Deletes `KEYS[1]` only if it still holds `ARGV[1]`.
pub(super) const DELETE_IF_UNCHANGED_LUA: &str = "\
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

pub(super) static FILL: LazyLock<Script> = LazyLock::new(|| Script::new(FILL_LUA));
pub(super) static REMOVE: LazyLock<Script> = LazyLock::new(|| Script::new(REMOVE_LUA));
pub(super) static WRITE: LazyLock<Script> = LazyLock::new(|| Script::new(WRITE_LUA));
pub(super) static BUMP_SCOPE: LazyLock<Script> = LazyLock::new(|| Script::new(BUMP_SCOPE_LUA));
pub(super) static DELETE_IF_UNCHANGED: LazyLock<Script> =
    LazyLock::new(|| Script::new(DELETE_IF_UNCHANGED_LUA));
#[cfg(feature = "mutations")]
pub(super) static FILL_IGNORING_STAMPS: LazyLock<Script> =
    LazyLock::new(|| Script::new(FILL_IGNORING_STAMPS_LUA));

/// The fenced fill: [`FILL`], or while the `mutations` switch says so, the
/// one that ignores stamps.
pub(super) fn fill() -> &'static Script {
    if ignore_stamps() {
        #[cfg(feature = "mutations")]
        return &FILL_IGNORING_STAMPS;
    }
    &FILL
}

/// Whether fills on this thread ignore stamps (`mutation::set_ignore_stamps`).
#[cfg(feature = "mutations")]
fn ignore_stamps() -> bool {
    crate::mutation::ignore_stamps()
}

/// Whether fills ignore stamps: never, without the `mutations` feature.
#[cfg(not(feature = "mutations"))]
const fn ignore_stamps() -> bool {
    false
}

/// Whether Redis said it does not have the script.
pub(crate) fn is_noscript(err: &fred::error::Error) -> bool {
    err.details().starts_with("NOSCRIPT")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_is_the_one_redis_computes() {
        // `redis-cli SCRIPT LOAD "return 1"`.
        assert_eq!(
            &*Script::new("return 1").sha,
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
    }
}
