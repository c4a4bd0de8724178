//! Where a [`RedisTier`](super::RedisTier) keeps a key's value and its fence
//! generations.
//!
//! Single node: `<ns>:<encoded>`, `<ns>:~g:<encoded>`, `<ns>:~a` (the scope
//! generation), `<ns>:~p` (the scope's log: which prefix each recent bump
//! covered) and `<ns>:~t` (how far the log has been trimmed). Cluster: the
//! same under a per-shard hash tag, `<ns>:{<ns>.<shard>}:<encoded>` and so on,
//! so that a key, its generation and its scope's generation and log share one
//! hash slot and one Lua script can touch them all.
//!
//! Encoded keys hold only `[A-Za-z0-9_-]` and `~XX` escapes with uppercase hex
//! digits ([`cache_core::key::encode`]), so the `~a`, `~p`, `~t` and `~g:`
//! names can never be an encoded key, and `{`/`}` never appear in one.

use cache_core::key;

/// Shards of a namespace on a Redis Cluster, unless the builder says otherwise.
pub const DEFAULT_CLUSTER_SHARDS: u16 = 64;

/// The name of a scope's generation, after the shard prefix.
const SCOPE: &str = "~a";
/// The name of a scope's log of bumps (a sorted set: score the generation,
/// member `<generation>:<encoded prefix>`), after the shard prefix.
const SCOPE_LOG: &str = "~p";
/// The name of the generation up to which a scope's log was trimmed.
const SCOPE_TRIMMED: &str = "~t";
/// What follows the shard prefix in a key generation's name.
const GENERATION: &str = "~g:";

/// A namespace's key layout: one shard on a single node, `shards` hash-tagged
/// shards on a cluster.
#[derive(Debug)]
pub(super) struct Layout {
    /// `<ns>:` (single node) or `<ns>:{<ns>.<shard>}:` (cluster), per shard.
    prefixes: Vec<String>,
    /// `<prefix>~a` per shard: the scope generations.
    scopes: Vec<String>,
    /// `<prefix>~p` per shard: the scopes' logs.
    logs: Vec<String>,
    /// `<prefix>~t` per shard: how far each log was trimmed.
    trimmed: Vec<String>,
}

/// The three Redis keys a fenced operation on one key touches, in one hash slot.
#[derive(Debug, Clone)]
pub(super) struct FenceKeys {
    /// Where the value is.
    pub(super) value: String,
    /// The key's generation.
    pub(super) generation: String,
    /// The key's shard (index into [`Layout::scope`]).
    pub(super) shard: usize,
    /// The encoded key (what a scope log's prefixes are compared with).
    pub(super) encoded: String,
}

/// 64-bit FNV-1a: stable across builds and platforms, so every instance puts a
/// key into the same shard.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl Layout {
    /// The layout of `namespace`: one unsharded prefix when `shards` is `None`
    /// (single node), else that many hash-tagged shards.
    pub(super) fn new(namespace: &str, shards: Option<u16>) -> Self {
        let prefixes: Vec<String> = match shards {
            None => vec![format!("{namespace}:")],
            Some(n) => (0..n.max(1))
                .map(|shard| format!("{namespace}:{{{namespace}.{shard}}}:"))
                .collect(),
        };
        let named = |name: &str| prefixes.iter().map(|p| format!("{p}{name}")).collect();
        Layout {
            scopes: named(SCOPE),
            logs: named(SCOPE_LOG),
            trimmed: named(SCOPE_TRIMMED),
            prefixes,
        }
    }

    /// The number of shards (1 on a single node).
    pub(super) fn shards(&self) -> usize {
        self.prefixes.len()
    }

    /// The shard of an encoded key.
    fn shard_of(&self, encoded: &str) -> usize {
        match self.prefixes.len() {
            1 => 0,
            // The modulus is at most u16::MAX, so the remainder fits.
            n => (fnv1a(encoded.as_bytes()) % n as u64) as usize,
        }
    }

    /// The Redis key of an encoded key, on a cluster. (The single-node key,
    /// `<ns>:<encoded>`, is built directly by `RedisTier::redis_key`.)
    pub(super) fn sharded_value_key(&self, encoded: &str) -> String {
        let prefix = &self.prefixes[self.shard_of(encoded)];
        let mut out = String::with_capacity(prefix.len() + encoded.len());
        out.push_str(prefix);
        out.push_str(encoded);
        out
    }

    /// The value, generation and shard of the (validated) key `raw`.
    pub(super) fn fence_keys(&self, raw: &str) -> FenceKeys {
        let mut encoded = String::with_capacity(raw.len() + 8);
        key::encode_into(raw, &mut encoded);
        let shard = self.shard_of(&encoded);
        let prefix = &self.prefixes[shard];
        let mut value = String::with_capacity(prefix.len() + encoded.len());
        value.push_str(prefix);
        value.push_str(&encoded);
        let mut generation = String::with_capacity(prefix.len() + GENERATION.len() + encoded.len());
        generation.push_str(prefix);
        generation.push_str(GENERATION);
        generation.push_str(&encoded);
        FenceKeys {
            value,
            generation,
            shard,
            encoded,
        }
    }

    /// The scope generation of `shard`.
    pub(super) fn scope(&self, shard: usize) -> &str {
        &self.scopes[shard]
    }

    /// The log of `shard`'s scope bumps.
    pub(super) fn scope_log(&self, shard: usize) -> &str {
        &self.logs[shard]
    }

    /// Where the trim point of `shard`'s log is kept.
    pub(super) fn scope_trimmed(&self, shard: usize) -> &str {
        &self.trimmed[shard]
    }

    /// The `SCAN MATCH` pattern for the value keys whose decoded key starts
    /// with `prefix` (all of them when it is empty). It may also match
    /// generations: filter with [`Layout::is_value_key`].
    ///
    /// Encoded keys have no glob characters, and on a cluster the only `}:` in
    /// a key is the one that closes its shard tag, so `<ns>:{<ns>.*}:<p>*` matches
    /// exactly the keys of every shard that start with `<p>`.
    pub(super) fn pattern(&self, namespace: &str, prefix: &str) -> String {
        let mut pattern = if self.prefixes.len() == 1 {
            self.prefixes[0].clone()
        } else {
            format!("{namespace}:{{{namespace}.*}}:")
        };
        key::encode_into(prefix, &mut pattern);
        pattern.push('*');
        pattern
    }

    /// Whether a Redis key that matched [`Layout::pattern`] holds a value (and
    /// not a generation, which `clear` and `remove_prefix` leave in place).
    pub(super) fn is_value_key(&self, namespace: &str, rkey: &[u8]) -> bool {
        let Some(mut rest) = rkey
            .strip_prefix(namespace.as_bytes())
            .and_then(|r| r.strip_prefix(b":"))
        else {
            return false;
        };
        if self.prefixes.len() > 1 {
            // Skip the shard tag, `{<ns>.<shard>}:`.
            match rest.windows(2).position(|w| w == b"}:") {
                Some(end) if rest.first() == Some(&b'{') => rest = &rest[end + 2..],
                _ => return false,
            }
        }
        // Encoded keys escape with uppercase hex; `~` then a lowercase letter
        // is one of the tier's own names (`~a`, `~g:`).
        !(rest.first() == Some(&b'~') && rest.get(1).is_some_and(u8::is_ascii_lowercase))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn single_node_layout() {
        let l = Layout::new("avatars", None);
        let k = l.fence_keys("user:42");
        assert_eq!(k.value, "avatars:user~3A42");
        assert_eq!(k.generation, "avatars:~g:user~3A42");
        assert_eq!(l.scope(k.shard), "avatars:~a");
        assert_eq!(l.scope_log(k.shard), "avatars:~p");
        assert_eq!(l.scope_trimmed(k.shard), "avatars:~t");
        assert_eq!(k.encoded, "user~3A42");
        assert_eq!(l.pattern("avatars", "user:1"), "avatars:user~3A1*");
        assert_eq!(l.pattern("avatars", ""), "avatars:*");
        assert!(l.is_value_key("avatars", b"avatars:user~3A42"));
        assert!(l.is_value_key("avatars", b"avatars:~7Eg"));
        assert!(!l.is_value_key("avatars", b"avatars:~a"));
        assert!(!l.is_value_key("avatars", b"avatars:~p"));
        assert!(!l.is_value_key("avatars", b"avatars:~t"));
        assert!(!l.is_value_key("avatars", b"avatars:~g:user~3A42"));
        assert!(!l.is_value_key("avatars", b"other:x"));
    }

    #[test]
    fn cluster_layout_keeps_a_key_its_generation_and_scope_in_one_slot() {
        let l = Layout::new("avatars", Some(DEFAULT_CLUSTER_SHARDS));
        assert_eq!(l.shards(), 64);
        let mut shards = std::collections::BTreeSet::new();
        for raw in ["user:42", "a/../b", "{x}", "*", "ключ", "~2E"] {
            let k = l.fence_keys(raw);
            shards.insert(k.shard);
            let mut encoded = String::new();
            key::encode_into(raw, &mut encoded);
            assert_eq!(k.value, l.sharded_value_key(&encoded));
            assert_eq!(
                k.value,
                format!("avatars:{{avatars.{}}}:{encoded}", k.shard)
            );
            let slot = fred::util::redis_keyslot(k.value.as_bytes());
            assert_eq!(slot, fred::util::redis_keyslot(k.generation.as_bytes()));
            assert_eq!(slot, fred::util::redis_keyslot(l.scope(k.shard).as_bytes()));
            assert!(l.is_value_key("avatars", k.value.as_bytes()), "{raw}");
            assert!(!l.is_value_key("avatars", k.generation.as_bytes()), "{raw}");
            assert!(!l.is_value_key("avatars", l.scope(k.shard).as_bytes()));
        }
        assert!(shards.len() > 1, "keys spread over shards");
        assert_eq!(
            l.pattern("avatars", "user:1"),
            "avatars:{avatars.*}:user~3A1*"
        );
        // The shard is stable (FNV-1a of the encoded key): pinned here so a
        // change of hash, which would move every key, fails a test.
        assert_eq!(
            l.fence_keys("user:42").shard,
            (fnv1a(b"user~3A42") % 64) as usize
        );
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
