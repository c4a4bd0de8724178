//! The record codec the storage tiers share: how an entry's key, expiry and
//! tags are written beside its value, and how a record read back is checked
//! before it is served.
//!
//! Each tier lays its record out in its own storage, and those layouts stay
//! as earlier releases wrote them (`tests/stored_formats.rs` pins them):
//!
//! - LocalStorage: one JSON string `{format, key, value, expires_at,
//!   stored_at, tags?}` ([`json`]);
//! - IndexedDB: an object `{format, key, value, expires_at, tags?}` whose
//!   `expires_at` is a JS number ([`millis_from_js`]) and whose `tags` are
//!   [`tags_to_json`];
//! - Cache API: a response whose expiry header is [`expiry_to_text`] and whose
//!   tags header is [`tags_to_hex`].
//!
//! What the fields mean and when a record is refused is decided here once. A
//! refused record ([`Refused`]) is a miss, and the tier removes it: decoding
//! never panics, and a record that cannot be checked is never served.
//!
//! Nothing here touches a web API, so the codec builds and is tested natively
//! too (`cargo test -p cache-browser --lib`).

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use cache_core::{key, CacheKey, Entry, Error, Result, Tags, Timestamp};

/// The `format` field of every LocalStorage and IndexedDB record this crate
/// writes; a record under our prefix without it is foreign.
pub(crate) const FORMAT: &str = "cache-browser/1";

/// Why a stored record is not served. The tier reads it as a miss and
/// removes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its expiry has passed.
    Expired,
    /// Not written by this crate: another `format`, or a field missing.
    Foreign,
    /// Written by this crate for another key (copied under this one).
    OtherKey,
    /// Unreadable: not JSON, a field of the wrong type, a bad expiry or tags,
    /// or tags this build cannot check (without the `tags` feature).
    Corrupt(String),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Expired => f.write_str("the record has expired"),
            Refused::Foreign => f.write_str("the record was not written by cache-browser"),
            Refused::OtherKey => f.write_str("the record was written for another key"),
            Refused::Corrupt(why) => write!(f, "the record is corrupt: {why}"),
        }
    }
}

impl std::error::Error for Refused {}

/// [`Error::InvalidKey`] unless `key` is a valid cache key: only valid keys
/// reach a store.
pub(crate) fn validate(key: &str) -> Result<()> {
    key::validate(key).map_err(|reason| Error::invalid_key(key, reason))
}

/// `key` as a string, validated (see [`validate`]).
pub(crate) fn checked_key<K: CacheKey>(key: &K) -> Result<Cow<'_, str>> {
    let s = key.key_str();
    validate(&s)?;
    Ok(s)
}

/// Where the record of `key` is kept: `prefix` (a tier's storage-key prefix
/// or base URL), then the key encoded with [`key::encode`].
pub(crate) fn location(prefix: &str, key: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + key.len());
    out.push_str(prefix);
    key::encode_into(key, &mut out);
    out
}

/// The error of a put whose record cannot be encoded.
pub(crate) fn encode_error(tier: &str, reason: impl fmt::Display) -> Error {
    Error::Encode {
        tier: tier.to_owned(),
        reason: reason.to_string(),
    }
}

/// The expiry a put writes: `expires_at` capped by the tier's TTL from `now`;
/// `None` when that is not after `now` (the tier then removes the key instead
/// of writing).
pub(crate) fn put_expiry(
    expires_at: Timestamp,
    now: Timestamp,
    ttl: Option<Duration>,
) -> Option<Timestamp> {
    let entry = Entry::new((), expires_at).capped_by_ttl(now, ttl);
    (!entry.is_expired(now)).then_some(entry.expires_at)
}

/// `expires_at`, if a record expiring then may still be served at `now`.
pub(crate) fn unexpired(expires_at: Timestamp, now: Timestamp) -> Result<Timestamp, Refused> {
    if now < expires_at {
        Ok(expires_at)
    } else {
        Err(Refused::Expired)
    }
}

/// Checks that a record's `format` and `key` fields (`None` when absent or
/// of another type) say this crate wrote it for `key`.
pub(crate) fn check_owner(
    format: Option<&str>,
    owner: Option<&str>,
    key: &str,
) -> Result<(), Refused> {
    if format != Some(FORMAT) {
        Err(Refused::Foreign)
    } else if owner != Some(key) {
        Err(Refused::OtherKey)
    } else {
        Ok(())
    }
}

/// An expiry as a JS number (ms since the epoch), as IndexedDB indexes it.
pub(crate) fn millis_to_js(at: Timestamp) -> f64 {
    at.as_unix_millis() as f64
}

/// An expiry read back as a JS number (saturating; `NaN` is the epoch, long
/// expired).
pub(crate) fn millis_from_js(ms: f64) -> Timestamp {
    Timestamp::from_unix_millis(ms as u64)
}

/// An expiry as text (ms since the epoch), as the Cache API tier's header
/// holds it.
pub(crate) fn expiry_to_text(at: Timestamp) -> String {
    at.as_unix_millis().to_string()
}

/// An expiry read back from text (`None` when absent).
pub(crate) fn expiry_from_text(text: Option<&str>) -> Result<Timestamp, Refused> {
    let text = text.ok_or(Refused::Foreign)?;
    text.parse::<u64>()
        .map(Timestamp::from_unix_millis)
        .map_err(|e| Refused::Corrupt(format!("expiry {text:?}: {e}")))
}

/// An entry's tags as JSON `[[name, generation]]`, or `None` when it has
/// none (the field is then left out).
///
/// # Errors
///
/// [`Error::Encode`] (for `tier`) when the tags cannot be written: the
/// process has forgotten them (see [`Tags::is_forgotten`]).
pub(crate) fn tags_to_json(tags: &Tags, tier: &str) -> Result<Option<String>> {
    if tags.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(tags)
        .map(Some)
        .map_err(|e| encode_error(tier, e))
}

/// Tags read back from JSON `[[name, generation]]` (none when absent).
pub(crate) fn tags_from_json(json: Option<&[u8]>) -> Result<Tags, Refused> {
    match json {
        None => Ok(Tags::NONE),
        Some(json) => {
            serde_json::from_slice(json).map_err(|e| Refused::Corrupt(format!("tags: {e}")))
        }
    }
}

/// [`tags_to_json`], hex-encoded: any tag name makes a valid header value
/// that way.
///
/// # Errors
///
/// As [`tags_to_json`].
pub(crate) fn tags_to_hex(tags: &Tags, tier: &str) -> Result<Option<String>> {
    Ok(tags_to_json(tags, tier)?.map(|json| json.bytes().map(|b| format!("{b:02x}")).collect()))
}

/// Tags read back from [`tags_to_hex`] (none when absent).
pub(crate) fn tags_from_hex(hex: Option<&str>) -> Result<Tags, Refused> {
    let Some(hex) = hex else {
        return Ok(Tags::NONE);
    };
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| Refused::Corrupt(format!("tags: {hex:?} is not hex")))?;
    tags_from_json(Some(&bytes))
}

/// The LocalStorage tier's record: one JSON object
/// `{format, key, value, expires_at, stored_at, tags?}`, the fields in that
/// order, `tags` only when the entry has some.
pub(crate) mod json {
    use std::borrow::Cow;

    use cache_core::{Entry, Tags, Timestamp};
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Serialize};

    use super::{check_owner, Refused, FORMAT};

    #[derive(Serialize)]
    struct RecordOut<'a, V> {
        format: &'static str,
        key: &'a str,
        value: &'a V,
        expires_at: u64,
        stored_at: u64,
        #[serde(skip_serializing_if = "Tags::is_empty")]
        tags: &'a Tags,
    }

    /// Borrows `format` and `key` from the raw JSON when it can: the hit path
    /// allocates only the value.
    #[derive(Deserialize)]
    struct RecordIn<'a, V> {
        #[serde(borrow)]
        format: Cow<'a, str>,
        #[serde(borrow)]
        key: Cow<'a, str>,
        value: V,
        expires_at: u64,
        #[serde(default)]
        tags: Tags,
    }

    #[derive(Deserialize)]
    struct RecordAge {
        format: String,
        stored_at: u64,
    }

    /// The record of `entry` under `key`, stored at `stored_at`.
    pub(crate) fn encode<V: serde::Serialize>(
        key: &str,
        entry: &Entry<V>,
        stored_at: Timestamp,
    ) -> serde_json::Result<String> {
        serde_json::to_string(&RecordOut {
            format: FORMAT,
            key,
            value: &entry.value,
            expires_at: entry.expires_at.as_unix_millis(),
            stored_at: stored_at.as_unix_millis(),
            tags: &entry.tags,
        })
    }

    /// The entry in `raw`, if it is a record this crate wrote for `key`
    /// (expired or not: see [`super::unexpired`]).
    pub(crate) fn decode<V: DeserializeOwned>(raw: &[u8], key: &str) -> Result<Entry<V>, Refused> {
        let r = serde_json::from_slice::<RecordIn<'_, V>>(raw)
            .map_err(|e| Refused::Corrupt(e.to_string()))?;
        check_owner(Some(&r.format), Some(&r.key), key)?;
        let mut entry = Entry::new(r.value, Timestamp::from_unix_millis(r.expires_at));
        entry.tags = r.tags;
        Ok(entry)
    }

    /// When the record in `raw` was stored (ms since the epoch); `None` if it
    /// is not one of ours.
    pub(crate) fn stored_at(raw: &str) -> Option<u64> {
        serde_json::from_str::<RecordAge>(raw)
            .ok()
            .filter(|r| r.format == FORMAT)
            .map(|r| r.stored_at)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_unix_millis(1_767_225_600_000);
    const LATER: Timestamp = Timestamp::from_unix_millis(1_767_312_000_000);

    fn entry(value: &str, expires_at: Timestamp) -> Entry<String> {
        Entry::new(value.to_owned(), expires_at)
    }

    #[test]
    fn a_json_record_round_trips_and_keeps_its_layout() {
        let raw = json::encode("user:42", &entry("https://img/42", LATER), NOW).unwrap();
        assert_eq!(
            raw,
            r#"{"format":"cache-browser/1","key":"user:42","value":"https://img/42","expires_at":1767312000000,"stored_at":1767225600000}"#
        );
        let back: Entry<String> = json::decode(raw.as_bytes(), "user:42").unwrap();
        assert_eq!(back.value, "https://img/42");
        assert_eq!(back.expires_at, LATER);
        assert!(back.tags.is_empty());
        assert_eq!(json::stored_at(&raw), Some(NOW.as_unix_millis()));
        // Any serde value: bytes are a JSON array.
        let bytes = json::encode("k", &Entry::new(vec![1u8, 2], LATER), NOW).unwrap();
        assert!(bytes.contains(r#""value":[1,2]"#));
        let back: Entry<Vec<u8>> = json::decode(bytes.as_bytes(), "k").unwrap();
        assert_eq!(back.value, [1, 2]);
    }

    /// Whether `read` was refused as corrupt (and got there without a panic).
    fn is_corrupt<T>(read: Result<T, Refused>) -> bool {
        matches!(read, Err(Refused::Corrupt(_)))
    }

    /// Tags `[["team:7",3]]` an earlier release stored, read back: with the
    /// `tags` feature, those tags (returned, to write them again); without
    /// it, refused with the reason, since this build cannot check them.
    fn read_team_7(read: Result<Tags, Refused>) -> Option<Tags> {
        if cfg!(feature = "tags") {
            let team = read.unwrap();
            assert_eq!(team.list().iter().collect::<Vec<_>>(), [("team:7", 3)]);
            Some(team)
        } else {
            assert!(
                matches!(&read, Err(Refused::Corrupt(why)) if why.contains(cache_core::tags::TAGS_UNSUPPORTED)),
                "{read:?}"
            );
            None
        }
    }

    #[test]
    fn a_json_record_keeps_tags_with_their_generations() {
        let old = r#"{"format":"cache-browser/1","key":"k","value":"v","expires_at":1,"stored_at":1,"tags":[["team:7",3]]}"#;
        let team = read_team_7(json::decode::<String>(old.as_bytes(), "k").map(|e| e.tags));
        #[cfg(feature = "tags")]
        {
            let tagged = entry("v", LATER).with_tags(["user:42"]);
            let raw = json::encode("k", &tagged, NOW).unwrap();
            assert!(raw.ends_with(r#","stored_at":1767225600000,"tags":[["user:42",0]]}"#));
            let back: Entry<String> = json::decode(raw.as_bytes(), "k").unwrap();
            assert_eq!(back.tags, tagged.tags);
            let again = json::encode(
                "k",
                &Entry {
                    tags: team.unwrap(),
                    ..entry("v", LATER)
                },
                NOW,
            );
            assert!(again.unwrap().contains(r#""tags":[["team:7",3]]"#));
        }
        #[cfg(not(feature = "tags"))]
        assert!(team.is_none());
    }

    #[test]
    fn corrupt_foreign_and_other_keys_json_records_are_refused_not_a_panic() {
        let decode = |raw: &[u8]| json::decode::<String>(raw, "k").map(|e| e.value);
        for raw in [
            &b""[..],
            b"{not json",
            b"null",
            b"[]",
            b"{\"format\":\"cache-browser/1\"",
            b"\xff\xfe",
            // A value of the wrong type, a negative or fractional expiry, bad tags.
            br#"{"format":"cache-browser/1","key":"k","value":7,"expires_at":1,"stored_at":1}"#,
            br#"{"format":"cache-browser/1","key":"k","value":"v","expires_at":-1,"stored_at":1}"#,
            br#"{"format":"cache-browser/1","key":"k","value":"v","expires_at":1.5,"stored_at":1}"#,
            br#"{"format":"cache-browser/1","key":"k","value":"v","expires_at":1,"stored_at":1,"tags":"x"}"#,
            // Written by someone else: no format.
            br#"{"value":"x","expires_at":99999999999999,"stored_at":0}"#,
        ] {
            assert!(is_corrupt(decode(raw)), "{:?}", String::from_utf8_lossy(raw));
        }
        assert_eq!(
            decode(br#"{"format":"other/2","key":"k","value":"v","expires_at":1,"stored_at":1}"#),
            Err(Refused::Foreign)
        );
        assert_eq!(
            decode(br#"{"format":"cache-browser/1","key":"j","value":"v","expires_at":1,"stored_at":1}"#),
            Err(Refused::OtherKey)
        );
        // Every prefix of a good record: refused, never a panic.
        let good = json::encode("k", &entry("v", LATER), NOW).unwrap();
        for end in 0..good.len() {
            assert!(decode(&good.as_bytes()[..end]).is_err(), "{end}");
        }
        assert_eq!(decode(good.as_bytes()), Ok("v".to_owned()));
        // The age of a record that is not ours is unknown.
        assert_eq!(json::stored_at("{not json"), None);
        assert_eq!(
            json::stored_at(r#"{"format":"other/2","stored_at":5}"#),
            None
        );
    }

    #[test]
    fn expiry_is_checked_against_now_and_capped_by_the_ttl_on_put() {
        let ms = Duration::from_millis;
        assert_eq!(unexpired(LATER, NOW), Ok(LATER));
        assert_eq!(unexpired(NOW, NOW), Err(Refused::Expired));
        assert_eq!(unexpired(NOW, LATER), Err(Refused::Expired));
        // A JSON record decodes whatever its expiry; the tier then checks it.
        let raw = json::encode("k", &entry("v", NOW), NOW).unwrap();
        let back: Entry<String> = json::decode(raw.as_bytes(), "k").unwrap();
        assert_eq!(unexpired(back.expires_at, NOW), Err(Refused::Expired));

        assert_eq!(put_expiry(LATER, NOW, None), Some(LATER));
        assert_eq!(
            put_expiry(LATER, NOW, Some(ms(10))),
            Some(Timestamp::from_unix_millis(NOW.as_unix_millis() + 10))
        );
        assert_eq!(put_expiry(LATER, NOW, Some(ms(u64::MAX))), Some(LATER));
        assert_eq!(put_expiry(NOW, NOW, None), None);
        assert_eq!(put_expiry(LATER, NOW, Some(Duration::ZERO)), None);
        assert_eq!(put_expiry(Timestamp::MAX, NOW, None), Some(Timestamp::MAX));
    }

    #[test]
    fn expiry_round_trips_as_a_js_number() {
        assert_eq!(millis_to_js(LATER), 1_767_312_000_000.0);
        assert_eq!(millis_from_js(millis_to_js(LATER)), LATER);
        // Whatever number IndexedDB hands back: no panic, an expired entry
        // at worst.
        assert_eq!(millis_from_js(f64::NAN), Timestamp::from_unix_millis(0));
        assert_eq!(millis_from_js(-5.0), Timestamp::from_unix_millis(0));
        assert_eq!(millis_from_js(f64::INFINITY), Timestamp::MAX);
    }

    #[test]
    fn expiry_round_trips_as_text() {
        assert_eq!(expiry_to_text(LATER), "1767312000000");
        assert_eq!(expiry_from_text(Some("1767312000000")), Ok(LATER));
        assert_eq!(expiry_from_text(None), Err(Refused::Foreign));
        for bad in ["", "soon", "-1", "1.5", "99999999999999999999999"] {
            assert!(is_corrupt(expiry_from_text(Some(bad))), "{bad:?}");
        }
    }

    #[test]
    fn tags_round_trip_as_json_and_hex_and_bad_ones_are_refused() {
        assert_eq!(tags_to_json(&Tags::NONE, "t").unwrap(), None);
        assert_eq!(tags_from_json(None), Ok(Tags::NONE));
        assert_eq!(tags_from_json(Some(b"[]")), Ok(Tags::NONE));
        for bad in [&b"[["[..], b"{}", b"[[\"a\"]]", b"[[\"a\",-1]]", b"\xff"] {
            assert!(is_corrupt(tags_from_json(Some(bad))), "{bad:?}");
        }
        if let Some(team) = read_team_7(tags_from_json(Some(br#"[["team:7",3]]"#))) {
            assert_eq!(
                tags_to_json(&team, "t").unwrap().as_deref(),
                Some(r#"[["team:7",3]]"#)
            );
        }

        assert_eq!(tags_to_hex(&Tags::NONE, "t").unwrap(), None);
        assert_eq!(tags_from_hex(None), Ok(Tags::NONE));
        // Odd length, not hex, not ASCII, hex of bad JSON.
        for bad in ["5", "5bzz", "5b\u{e9}5d", "5b5b"] {
            assert!(is_corrupt(tags_from_hex(Some(bad))), "{bad:?}");
        }
        const TEAM_7_HEX: &str = "5b5b227465616d3a37222c335d5d";
        if let Some(team) = read_team_7(tags_from_hex(Some(TEAM_7_HEX))) {
            assert_eq!(
                tags_to_hex(&team, "t").unwrap().as_deref(),
                Some(TEAM_7_HEX)
            );
        }
    }

    #[test]
    fn owner_checks_keys_and_locations() {
        assert_eq!(check_owner(Some(FORMAT), Some("k"), "k"), Ok(()));
        assert_eq!(check_owner(None, Some("k"), "k"), Err(Refused::Foreign));
        assert_eq!(
            check_owner(Some("cache-browser/2"), Some("k"), "k"),
            Err(Refused::Foreign)
        );
        assert_eq!(check_owner(Some(FORMAT), None, "k"), Err(Refused::OtherKey));
        assert_eq!(
            check_owner(Some(FORMAT), Some("j"), "k"),
            Err(Refused::OtherKey)
        );

        assert_eq!(location("avatars:", "user:42"), "avatars:user~3A42");
        assert_eq!(
            location("https://cache-browser.invalid/", "user:42"),
            "https://cache-browser.invalid/user~3A42"
        );
        assert_eq!(location("", "a/b"), key::encode("a/b"));
        assert_eq!(checked_key(&"user:42".to_string()).unwrap(), "user:42");
        assert!(matches!(
            checked_key(&String::new()),
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(validate(""), Err(Error::InvalidKey { .. })));
        assert!(matches!(
            encode_error("local_storage", Refused::Expired),
            Error::Encode { tier, reason } if tier == "local_storage" && reason == "the record has expired"
        ));
        for refused in [
            Refused::Expired,
            Refused::Foreign,
            Refused::OtherKey,
            Refused::Corrupt("x".into()),
        ] {
            assert!(!refused.to_string().is_empty());
        }
    }
}
