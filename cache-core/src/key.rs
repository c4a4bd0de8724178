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
#[inline]
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
    if all_printable_ascii(key.as_bytes()) {
        return Ok(());
    }
    find_control(key.as_bytes())
}

/// The byte scan behind [`validate`] for keys that are not all printable ASCII.
#[cold]
#[inline(never)]
fn find_control(bytes: &[u8]) -> Result<(), KeyError> {
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

/// Every byte in `0x20..=0x7E`, eight at a time (keys are short, so this beats a
/// vectorized loop that ends in a scalar tail). Exact: a `false` is re-checked by
/// the byte scan in [`validate`], which also locates the offending byte.
#[inline]
fn all_printable_ascii(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    const SPACE: u64 = u64::from_ne_bytes([0x20; 8]);
    // A byte below 0x20 (classic "has a byte less than n" test, exact for n ≤ 128),
    // or at or above 0x7F (0x7F + 1 and every byte ≥ 0x80 set the high bit).
    let bad = |w: u64| (w.wrapping_sub(SPACE) & !w & HIGH) | ((w.wrapping_add(ONES) | w) & HIGH);
    let word = |b: &[u8]| {
        let mut w = [0; 8];
        w.copy_from_slice(&b[..8]);
        u64::from_ne_bytes(w)
    };
    let half = |b: &[u8]| {
        let mut w = [0; 4];
        w.copy_from_slice(&b[..4]);
        u64::from(u32::from_ne_bytes(w))
    };
    let n = bytes.len();
    let acc = if n >= 8 {
        // Whole words, then the last eight bytes (overlapping the last word): no
        // byte-by-byte copy, which would stall the word load that follows it.
        let mut acc = bad(word(&bytes[n - 8..]));
        for chunk in bytes.chunks_exact(8) {
            acc |= bad(word(chunk));
        }
        acc
    } else if n >= 4 {
        // Two overlapping halves cover all of it.
        bad(half(bytes) | half(&bytes[n - 4..]) << 32)
    } else if let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) {
        // One to three bytes: first, middle and last cover all of them.
        bad(u64::from_ne_bytes([
            first,
            bytes[n / 2],
            last,
            b'A',
            b'A',
            b'A',
            b'A',
            b'A',
        ]))
    } else {
        0
    };
    acc == 0
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
    #[inline]
    fn validate(&self) -> Result<(), KeyError> {
        validate(&self.key_str())
    }
}

impl CacheKey for String {
    #[inline]
    fn key_str(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}
impl CacheKey for &'static str {
    #[inline]
    fn key_str(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}
impl CacheKey for Box<str> {
    #[inline]
    fn key_str(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}
impl CacheKey for Arc<str> {
    #[inline]
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
    fn word_at_a_time_check_agrees_with_a_byte_scan() {
        let printable = |b: u8| (0x20..=0x7E).contains(&b);
        // Every byte value at every position of keys up to three words long.
        for len in 0..=24 {
            for at in 0..len {
                for b in 0..=u8::MAX {
                    let mut key = vec![b'k'; len];
                    key[at] = b;
                    assert_eq!(all_printable_ascii(&key), printable(b), "{key:?}");
                }
            }
            assert!(all_printable_ascii(&vec![b'k'; len]));
        }
        // Pairs of bytes in one word, where a borrow or carry could cross over.
        for a in 0..=u8::MAX {
            for b in 0..=u8::MAX {
                let key = [b'k', a, b, b'k', b'k', b'k', b'k', b'k', b'k'];
                assert_eq!(
                    all_printable_ascii(&key),
                    printable(a) && printable(b),
                    "{key:?}"
                );
            }
        }
    }

    #[test]
    fn preview_is_short_and_escaped() {
        let p = preview(&format!("a\n{}", "x".repeat(100)));
        assert!(p.starts_with("\"a\\n"));
        assert!(p.chars().count() < 40);
    }
}
