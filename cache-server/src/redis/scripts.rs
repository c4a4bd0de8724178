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

/// A fenced fill. `KEYS`: value, key generation, scope generation, scope
/// log, scope trim point. `ARGV`: the stamp's key generation and scope
/// generation, `PXAT` (empty: the entry has expired, delete instead), the
/// value, the encoded key; empty generations (an open fence) compare nothing.
/// Returns 1 (written) or 0 (refused).
///
/// A key generation other than the stamp's refuses. A scope generation other
/// than the stamp's refuses only if a bump since the stamp covered the key
/// (its logged prefix starts the encoded key: `clear` logs the empty prefix),
/// or if the log cannot tell (trimmed past the stamp, or a bump not logged).
pub(super) const FILL_LUA: &str = "\
if ARGV[1] ~= '' then
  local g = redis.call('MGET', KEYS[2], KEYS[3])
  if (g[1] or '0') ~= ARGV[1] then
    return 0
  end
  if (g[2] or '0') ~= ARGV[2] then
    if (tonumber(redis.call('GET', KEYS[5])) or 0) > tonumber(ARGV[2]) then
      return 0
    end
    local since = redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. ARGV[2], '+inf')
    if #since == 0 then
      return 0
    end
    for _, m in ipairs(since) do
      local p = string.match(m, '^%d+:(.*)$')
      if p == nil or string.sub(ARGV[5], 1, #p) == p then
        return 0
      end
    end
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

/// Bumps a scope generation (`remove_prefix`, `clear`), which never expires,
/// and logs which prefix the bump covers. `KEYS`: the scope generation, its
/// log, its trim point. `ARGV`: the encoded prefix (empty for `clear`), how
/// many log entries to keep, how long to keep them (µs). Returns the new
/// generation.
///
/// The log keeps the bumps a fresh stamp may still need (a stamp older than
/// the fence horizon is refused before it is sent); what it drops moves the
/// trim point, and a stamp from before the trim point is refused.
pub(super) const BUMP_SCOPE_LUA: &str = concat!(
    next_generation!("1"),
    "redis.call('SET', KEYS[1], g)
redis.call('ZADD', KEYS[2], g, g .. ':' .. ARGV[1])
local cutoff = string.format('%d', t[1] * 1000000 + t[2] - tonumber(ARGV[3]))
local dropped = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. cutoff, 'WITHSCORES')
local n = redis.call('ZCARD', KEYS[2]) - #dropped / 2
local keep = tonumber(ARGV[2])
if n > keep then
  dropped = redis.call('ZRANGE', KEYS[2], 0, redis.call('ZCARD', KEYS[2]) - keep - 1, 'WITHSCORES')
end
if #dropped > 0 then
  local last = dropped[#dropped]
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', last)
  if (tonumber(redis.call('GET', KEYS[3])) or 0) < tonumber(last) then
    redis.call('SET', KEYS[3], string.format('%d', tonumber(last)))
  end
end
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
