//! Keys: the [`CacheKey`] trait, validation, and an injective encoding that is safe
//! in every store with key syntax (Redis keys, LocalStorage keys, URL path
//! segments for the Cache API, S3 object keys).
//!
//! # Why an encoding
//!
//! A store with key syntax gives some characters a meaning: `:` separates Redis
//! namespaces by convention, `/` and `..` walk URL and object paths, `*` and `?` are
//! glob patterns in `SCAN MATCH`. [`encode`] maps every key to the alphabet
//! `[A-Za-z0-9_-]` plus `~XX` escapes, so an encoded key has no syntax at all, and
//! because the map is injective no two keys share an encoding: no key can reach
//! another key's entry, under any namespace. It also preserves prefixes
//! (`encode(a + b)` starts with `encode(a)`), which prefix invalidation needs.
//!
//! ```
//! use cache_core::key;
//!
//! assert_eq!(key::encode("user/42"), "user~2F42");
//! assert_eq!(key::encode(".."), "~2E~2E");
//! assert_eq!(key::decode("user~2F42").as_deref(), Some("user/42"));
//! assert!(key::validate("").is_err());
//! ```

use std::borrow::Cow;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use crate::{MaybeSend, MaybeSync};

/// Longest key accepted by [`validate`], in bytes. Encoding can triple it, which
/// still fits every store here (Redis: 512 MB; URLs: ~2 MB in Chromium).
pub const MAX_KEY_BYTES: usize = 512;

/// What makes a key invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key is empty.
    #[error("the key is empty")]
    Empty,
    /// The key is longer than [`MAX_KEY_BYTES`].
    #[error("the key is {len} bytes long; the limit is {max}")]
    TooLong {
        /// The key's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The key holds a control character (newline, NUL, escape...).
    #[error("the key holds a control character at byte {at}")]
    ControlCharacter {
        /// Byte offset of the first one.
        at: usize,
    },
}

/// Checks a key against the rules every tier can rely on: not empty, at most
/// [`MAX_KEY_BYTES`] bytes, no control characters.
///
/// `/`, `..`, `:`, `*` and unicode are allowed: [`encode`] makes them harmless.
pub fn validate(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong {
            len: key.len(),
            max: MAX_KEY_BYTES,
        });
    }
    let bytes = key.as_bytes();
    // Fast path, branch-free so it vectorizes: every byte printable ASCII.
    if bytes
        .iter()
        .fold(true, |ok, &b| ok & (b.wrapping_sub(0x20) < 0x5F))
    {
        return Ok(());
    }
    // Byte scan: C0 controls and DEL are single bytes; C1 controls (U+0080..U+009F,
    // all that `char::is_control` adds) are 0xC2 0x80..=0x9F in UTF-8.
    for (at, &b) in bytes.iter().enumerate() {
        let control = b < 0x20
            || b == 0x7F
            || (b == 0xC2 && bytes.get(at + 1).is_some_and(|n| (0x80..=0x9F).contains(n)));
        if control {
            return Err(KeyError::ControlCharacter { at });
        }
    }
    Ok(())
}

#[inline]
fn passes_through(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Appends the encoding of `key` to `out`. See [`encode`].
pub fn encode_into(key: &str, out: &mut String) {
    out.reserve(key.len());
    for &b in key.as_bytes() {
        if passes_through(b) {
            out.push(char::from(b));
        } else {
            out.push('~');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0F)]));
        }
    }
}

/// Encodes `key` into `[A-Za-z0-9_-]` and `~XX` escapes (UTF-8 bytes in upper-case
/// hex). Injective and prefix-preserving; see the [module docs](self).
pub fn encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    encode_into(key, &mut out);
    out
}

/// Reverses [`encode`]; `None` if `encoded` is not an encoding of any key.
pub fn decode(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if passes_through(b) {
            out.push(b);
            i += 1;
        } else if b == b'~' {
            let hi = hex_value(*bytes.get(i + 1)?)?;
            let lo = hex_value(*bytes.get(i + 2)?)?;
            let byte = (hi << 4) | lo;
            // A byte that passes through must not be escaped, or encode would
            // not be the only way to produce this string.
            if passes_through(byte) {
                return None;
            }
            out.push(byte);
            i += 3;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A short preview of a key that is safe to put in logs and errors: at most 32
/// characters, control characters escaped.
pub fn preview(key: &str) -> String {
    const MAX: usize = 32;
    let mut out = String::from("\"");
    for (n, c) in key.chars().enumerate() {
        if n == MAX {
            out.push('…');
            break;
        }
        out.extend(c.escape_debug());
    }
    out.push('"');
    out
}

/// A type usable as a cache key.
///
/// Every key has a string form, used by stores with key syntax (after
/// [`encode`]), by prefix invalidation and by metrics. Implemented for the
/// string types and the integers.
///
/// ```
/// use cache_core::CacheKey;
/// assert_eq!(42u64.key_str(), "42");
/// assert_eq!("avatar:7".to_string().key_str(), "avatar:7");
/// assert!(String::new().validate().is_err());
/// ```
pub trait CacheKey: Clone + Eq + Hash + fmt::Debug + MaybeSend + MaybeSync + 'static {
    /// The key's string form.
    fn key_str(&self) -> Cow<'_, str>;

    /// Checks the key; by default [`validate`] on [`CacheKey::key_str`].
    fn validate(&self) -> Result<(), KeyError> {
        validate(&self.key_str())
    }
}

impl CacheKey for String {
    fn key_str(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}
impl CacheKey for &'static str {
    fn key_str(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}
impl CacheKey for Box<str> {
    fn key_str(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}
impl CacheKey for Arc<str> {
    fn key_str(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

macro_rules! integer_keys {
    ($($t:ty),*) => {$(
        impl CacheKey for $t {
            fn key_str(&self) -> Cow<'_, str> { Cow::Owned(self.to_string()) }
            fn validate(&self) -> Result<(), KeyError> { Ok(()) }
        }
    )*};
}
integer_keys!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_injective_on_tricky_keys() {
        let keys = [
            "a", "a/b", "a~2Fb", "a%2Fb", "..", "~2E~2E", ".", "/", "", "ns:key", "ns~3Akey",
            "ключ", "🙂", "a b", "a+b", "*", "?",
        ];
        let mut seen = std::collections::HashMap::new();
        for k in keys {
            let e = encode(k);
            assert!(
                e.bytes().all(|b| passes_through(b) || b == b'~'),
                "{e} has syntax"
            );
            assert_eq!(decode(&e).as_deref(), Some(k), "roundtrip of {k:?}");
            if let Some(prev) = seen.insert(e.clone(), k) {
                panic!("{prev:?} and {k:?} share the encoding {e}");
            }
        }
    }

    #[test]
    fn encoding_preserves_prefixes() {
        assert!(encode("user/42/avatar").starts_with(&encode("user/4")));
    }

    #[test]
    fn decode_rejects_non_canonical_and_garbage() {
        assert_eq!(decode("~41"), None, "escaped pass-through byte");
        assert_eq!(decode("~4"), None);
        assert_eq!(decode("~zz"), None);
        assert_eq!(decode("a/b"), None);
        assert_eq!(decode("~FF"), None, "invalid UTF-8");
    }

    #[test]
    fn validate_rules() {
        assert_eq!(validate(""), Err(KeyError::Empty));
        assert!(matches!(
            validate(&"x".repeat(MAX_KEY_BYTES + 1)),
            Err(KeyError::TooLong { .. })
        ));
        assert_eq!(validate(&"x".repeat(MAX_KEY_BYTES)), Ok(()));
        assert_eq!(validate("a\nb"), Err(KeyError::ControlCharacter { at: 1 }));
        assert_eq!(validate("a\0"), Err(KeyError::ControlCharacter { at: 1 }));
        assert_eq!(validate("../etc/passwd"), Ok(()));
        assert_eq!(
            validate("é\u{85}"),
            Err(KeyError::ControlCharacter { at: 2 })
        );
        assert_eq!(
            validate("\u{7f}"),
            Err(KeyError::ControlCharacter { at: 0 })
        );
        assert_eq!(validate("ключ 🙂 \u{a0}"), Ok(()));
        // Agrees with `char::is_control` on every char.
        for c in (0..0x3000u32).filter_map(char::from_u32) {
            let s = format!("a{c}");
            assert_eq!(validate(&s).is_err(), c.is_control(), "{c:?}");
        }
    }

    #[test]
    fn preview_is_short_and_escaped() {
        let p = preview(&format!("a\n{}", "x".repeat(100)));
        assert!(p.starts_with("\"a\\n"));
        assert!(p.chars().count() < 40);
    }
}
