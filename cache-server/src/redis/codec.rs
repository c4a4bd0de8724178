//! Value codecs and the versioned envelope Redis values are stored in.

use std::fmt;

use cache_core::{BoxError, Tags, Timestamp};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Turns values into bytes for Redis and back.
///
/// The default, [`MsgPackCodec`], works for every serde type. Implement this
/// trait to store values in another format (for example raw bytes, or JSON that
/// other services read).
///
/// ```
/// use cache_server::{Codec, MsgPackCodec};
///
/// let mut buf = Vec::new();
/// MsgPackCodec.encode_into(&"hello".to_string(), &mut buf).unwrap();
/// let back: String = MsgPackCodec.decode(&buf).unwrap();
/// assert_eq!(back, "hello");
/// ```
pub trait Codec<V>: fmt::Debug + Send + Sync + 'static {
    /// Appends the encoding of `value` to `out`.
    fn encode_into(&self, value: &V, out: &mut Vec<u8>) -> Result<(), BoxError>;
    /// Decodes a value; an error makes the stored value a miss (and removes it).
    fn decode(&self, bytes: &[u8]) -> Result<V, BoxError>;
}

/// MessagePack through serde (`rmp-serde`): compact, schema-less, any serde type.
///
/// Structs are encoded as maps with field names, so adding an optional field
/// stays readable by older and newer instances during a rolling deploy.
#[derive(Clone, Copy, Debug, Default)]
pub struct MsgPackCodec;

impl<V> Codec<V> for MsgPackCodec
where
    V: Serialize + DeserializeOwned,
{
    fn encode_into(&self, value: &V, out: &mut Vec<u8>) -> Result<(), BoxError> {
        value
            .serialize(&mut rmp_serde::Serializer::new(out).with_struct_map())
            .map_err(Into::into)
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, BoxError> {
        rmp_serde::from_slice(bytes).map_err(Into::into)
    }
}

/// First bytes of every stored value.
const MAGIC: &[u8; 2] = b"LC";
/// The envelope version this build writes and reads.
pub(crate) const ENVELOPE_VERSION: u8 = 1;
/// The family of envelopes this build writes and reads (versions 1 to 4);
/// announced on the invalidation bus, so that an instance writing another
/// family is refused before it shares a namespace.
pub(crate) const ENVELOPE_FAMILY: u8 = 1;
/// The same envelope, its payload LZ4-compressed (size prepended). Written and
/// read only with the `compression` feature; a build without it reports such a
/// value as another version.
#[cfg(feature = "compression")]
pub(crate) const COMPRESSED_VERSION: u8 = 2;
/// The most a compressed payload may claim to expand to (a corrupt or hostile
/// length must not make a read allocate without bound).
#[cfg(feature = "compression")]
pub(crate) const MAX_DECOMPRESSED: usize = 128 << 20;
/// Version 1 with the entry's tags between the header and the payload: a
/// count (u16), then per tag its name's length (u16), the name (UTF-8) and
/// its generation (u64), all big-endian.
pub(crate) const TAGGED_VERSION: u8 = 3;
/// Version 3, its payload LZ4-compressed (feature `compression`).
#[cfg(feature = "compression")]
pub(crate) const TAGGED_COMPRESSED_VERSION: u8 = 4;
/// Magic, version, expiry (u64 big-endian milliseconds).
pub(crate) const HEADER_LEN: usize = 2 + 1 + 8;

/// Writes the envelope header for `expires_at` and `tags` into `out`, and
/// returns where the payload starts. Fails only on tags no envelope can hold
/// (more than 65,535, or a name longer than 65,535 bytes).
pub(crate) fn write_header(
    expires_at: Timestamp,
    tags: &Tags,
    out: &mut Vec<u8>,
) -> Result<usize, String> {
    out.extend_from_slice(MAGIC);
    out.push(if tags.is_empty() {
        ENVELOPE_VERSION
    } else {
        TAGGED_VERSION
    });
    out.extend_from_slice(&expires_at.as_unix_millis().to_be_bytes());
    if !tags.is_empty() {
        let list = tags.list();
        if list.is_empty() {
            return Err("the entry's tags were forgotten (more than Tags::MAX_LISTS lists)".into());
        }
        let count = u16::try_from(list.len()).map_err(|_| "more than 65,535 tags".to_owned())?;
        out.extend_from_slice(&count.to_be_bytes());
        for (name, generation) in list.iter() {
            let len = u16::try_from(name.len())
                .map_err(|_| "a tag name longer than 65,535 bytes".to_owned())?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&generation.to_be_bytes());
        }
    }
    Ok(out.len())
}

/// Reads the tags section at the start of `bytes`; returns the tags and the
/// rest. [`Corrupt::Payload`] if it is cut short or not UTF-8,
/// [`Corrupt::TagsUnsupported`] if there are tags and this build has no
/// cache-core `tags` feature to check them.
fn read_tags(bytes: &[u8]) -> Result<(Tags, &[u8]), Corrupt> {
    let (tags, rest) = parse_tags(bytes).ok_or(Corrupt::Payload)?;
    Ok((
        Tags::try_from_pairs(tags).ok_or(Corrupt::TagsUnsupported)?,
        rest,
    ))
}

/// Tag names with their generations, as `Tags::try_from_pairs` takes them.
type TagPairs = Vec<(Box<str>, u64)>;

/// The tag pairs at the start of `bytes`, and the rest.
fn parse_tags(bytes: &[u8]) -> Option<(TagPairs, &[u8])> {
    let (count, mut rest) = bytes.split_first_chunk::<2>()?;
    let count = u16::from_be_bytes(*count) as usize;
    let mut pairs = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let (len, after) = rest.split_first_chunk::<2>()?;
        let len = u16::from_be_bytes(*len) as usize;
        let name = after.get(..len)?;
        let name = std::str::from_utf8(name).ok()?;
        let (generation, after) = after.get(len..)?.split_first_chunk::<8>()?;
        pairs.push((Box::from(name), u64::from_be_bytes(*generation)));
        rest = after;
    }
    Some((pairs, rest))
}

/// Why a stored value could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Corrupt {
    /// Not an envelope at all.
    NotAnEnvelope,
    /// An envelope of another version.
    Version(u8),
    /// The payload did not decode.
    Payload,
    /// The key holds a hash, list... instead of a string.
    WrongType,
    /// The entry carries tags, and this build cannot check them (no
    /// cache-core `tags` feature).
    TagsUnsupported,
}

impl fmt::Display for Corrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Corrupt::NotAnEnvelope => f.write_str("not a cache envelope"),
            Corrupt::Version(v) => write!(
                f,
                "envelope version {v}, this build reads {ENVELOPE_VERSION} and {TAGGED_VERSION}"
            ),
            Corrupt::Payload => f.write_str("payload does not decode"),
            Corrupt::WrongType => f.write_str("the key holds another Redis type"),
            Corrupt::TagsUnsupported => f.write_str(cache_core::tags::TAGS_UNSUPPORTED),
        }
    }
}

/// A stored value, opened.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Opened<'a> {
    pub(crate) expires_at: Timestamp,
    pub(crate) tags: Tags,
    pub(crate) payload: &'a [u8],
    /// The payload is LZ4-compressed (feature `compression`).
    pub(crate) compressed: bool,
}

/// Splits an envelope into its expiry and payload.
pub(crate) fn open(bytes: &[u8]) -> Result<Opened<'_>, Corrupt> {
    if bytes.len() < HEADER_LEN || &bytes[..2] != MAGIC {
        return Err(Corrupt::NotAnEnvelope);
    }
    let (tagged, compressed) = match bytes[2] {
        ENVELOPE_VERSION => (false, false),
        TAGGED_VERSION => (true, false),
        #[cfg(feature = "compression")]
        COMPRESSED_VERSION => (false, true),
        #[cfg(feature = "compression")]
        TAGGED_COMPRESSED_VERSION => (true, true),
        other => return Err(Corrupt::Version(other)),
    };
    let mut millis = [0u8; 8];
    millis.copy_from_slice(&bytes[3..HEADER_LEN]);
    let (tags, payload) = if tagged {
        read_tags(&bytes[HEADER_LEN..])?
    } else {
        (Tags::NONE, &bytes[HEADER_LEN..])
    };
    Ok(Opened {
        expires_at: Timestamp::from_unix_millis(u64::from_be_bytes(millis)),
        tags,
        payload,
        compressed,
    })
}

/// Compresses the payload of the envelope in `buf` (it starts at `start`)
/// when it is longer than `above` bytes and compression makes it smaller;
/// marks the envelope.
#[cfg(feature = "compression")]
pub(crate) fn compress(buf: &mut Vec<u8>, start: usize, above: usize) {
    let payload = &buf[start..];
    if payload.len() <= above {
        return;
    }
    let packed = lz4_flex::compress_prepend_size(payload);
    if packed.len() >= payload.len() {
        return;
    }
    buf.truncate(start);
    buf[2] = if buf[2] == TAGGED_VERSION {
        TAGGED_COMPRESSED_VERSION
    } else {
        COMPRESSED_VERSION
    };
    buf.extend_from_slice(&packed);
}

/// The payload of a compressed envelope, expanded; `None` if it is corrupt or
/// claims more than [`MAX_DECOMPRESSED`] bytes.
#[cfg(feature = "compression")]
pub(crate) fn decompress(payload: &[u8]) -> Option<Vec<u8>> {
    let claimed = payload.get(..4)?;
    let claimed = u32::from_le_bytes(claimed.try_into().ok()?) as usize;
    if claimed > MAX_DECOMPRESSED {
        return None;
    }
    lz4_flex::decompress_size_prepended(payload).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn envelope_roundtrip_and_rejects() {
        let mut buf = Vec::new();
        write_header(Timestamp::from_unix_millis(42), &Tags::NONE, &mut buf).unwrap();
        buf.extend_from_slice(b"payload");
        let Opened {
            expires_at: at,
            payload,
            compressed,
            tags,
        } = open(&buf).unwrap();
        assert!(tags.is_empty());
        assert!(!compressed);
        assert_eq!(at, Timestamp::from_unix_millis(42));
        assert_eq!(payload, b"payload");

        assert_eq!(open(b"garbage").unwrap_err(), Corrupt::NotAnEnvelope);
        assert_eq!(open(b"").unwrap_err(), Corrupt::NotAnEnvelope);
        let mut old = buf.clone();
        old[2] = 0;
        assert_eq!(open(&old).unwrap_err(), Corrupt::Version(0));
    }

    /// An envelope a build with tags writes for an entry tagged `user:42` at
    /// generation 7, built by hand (this build may not be able to make tags).
    fn tagged_by_another_build() -> Vec<u8> {
        let mut buf = MAGIC.to_vec();
        buf.push(TAGGED_VERSION);
        buf.extend_from_slice(&42u64.to_be_bytes());
        buf.extend_from_slice(&1u16.to_be_bytes());
        buf.extend_from_slice(&7u16.to_be_bytes());
        buf.extend_from_slice(b"user:42");
        buf.extend_from_slice(&7u64.to_be_bytes());
        buf.extend_from_slice(b"payload");
        buf
    }

    #[cfg(feature = "tags")]
    #[test]
    fn an_envelope_tagged_by_another_build_opens_with_its_tags() {
        let buf = tagged_by_another_build();
        let opened = open(&buf).unwrap();
        assert_eq!(
            opened.tags.list().iter().collect::<Vec<_>>(),
            [("user:42", 7)]
        );
        assert_eq!(opened.payload, b"payload");
    }

    /// Without the `tags` feature an entry cannot carry tags, so one stored
    /// with them is refused (it would be served past an `invalidate_tag`),
    /// with a reason that names the feature; a cut one is still corrupt.
    #[cfg(not(feature = "tags"))]
    #[test]
    fn without_the_tags_feature_a_tagged_envelope_is_refused_with_a_clear_reason() {
        let buf = tagged_by_another_build();
        let err = open(&buf).unwrap_err();
        assert_eq!(err, Corrupt::TagsUnsupported);
        assert!(err.to_string().contains("`tags` feature"), "{err}");
        assert_eq!(open(&buf[..HEADER_LEN + 5]).unwrap_err(), Corrupt::Payload);
        assert_eq!(std::mem::size_of::<Tags>(), 0);
    }

    fn envelope(payload: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        write_header(Timestamp::from_unix_millis(42), &Tags::NONE, &mut buf).unwrap();
        buf.extend_from_slice(payload);
        buf
    }

    #[cfg(feature = "tags")]
    #[test]
    fn tags_travel_in_the_envelope_and_a_cut_tag_section_is_refused() {
        let tags = Tags::from_pairs(vec![("user:42".into(), 7), ("é/..\\x".into(), u64::MAX)]);
        let mut buf = Vec::new();
        let start = write_header(Timestamp::from_unix_millis(42), &tags, &mut buf).unwrap();
        buf.extend_from_slice(b"payload");
        assert_eq!(buf[2], TAGGED_VERSION);
        let opened = open(&buf).unwrap();
        assert_eq!(opened.tags, tags);
        assert_eq!(opened.payload, b"payload");
        assert_eq!(&buf[start..], b"payload");
        for cut in HEADER_LEN..start {
            assert_eq!(
                open(&buf[..cut]).unwrap_err(),
                Corrupt::Payload,
                "cut at {cut}"
            );
        }
        let mut bad_utf8 = buf.clone();
        bad_utf8[HEADER_LEN + 4] = 0xff;
        assert_eq!(open(&bad_utf8).unwrap_err(), Corrupt::Payload);
        let huge = Tags::from_pairs(vec![("x".repeat(70_000).into(), 1)]);
        assert!(write_header(Timestamp::MAX, &huge, &mut Vec::new()).is_err());
    }

    #[cfg(all(feature = "compression", feature = "tags"))]
    #[test]
    fn a_tagged_envelope_compresses_its_payload_only() {
        let tags = Tags::from_pairs(vec![("user:42".into(), 3)]);
        let large: Vec<u8> = b"https://img.example/avatar?".repeat(800);
        let mut buf = Vec::new();
        let start = write_header(Timestamp::from_unix_millis(42), &tags, &mut buf).unwrap();
        buf.extend_from_slice(&large);
        compress(&mut buf, start, 1024);
        assert_eq!(buf[2], TAGGED_COMPRESSED_VERSION);
        let opened = open(&buf).unwrap();
        assert!(opened.compressed);
        assert_eq!(opened.tags, tags);
        assert_eq!(decompress(opened.payload).unwrap(), large);
    }

    #[cfg(feature = "compression")]
    #[test]
    fn large_payloads_are_compressed_and_flagged_small_ones_are_not() {
        let large: Vec<u8> = b"https://img.example/avatar?".repeat(800);
        let mut buf = envelope(&large);
        compress(&mut buf, HEADER_LEN, 1024);
        assert_eq!(buf[2], COMPRESSED_VERSION);
        assert!(buf.len() < large.len() / 4, "{} bytes", buf.len());
        let opened = open(&buf).unwrap();
        assert!(opened.compressed);
        assert_eq!(opened.expires_at, Timestamp::from_unix_millis(42));
        assert_eq!(decompress(opened.payload).unwrap(), large);

        let small = envelope(b"short");
        let mut kept = small.clone();
        compress(&mut kept, HEADER_LEN, 1024);
        assert_eq!(kept, small, "a payload under the threshold was touched");
        // Incompressible: stored as it is.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let mut raw = envelope(&noise);
        compress(&mut raw, HEADER_LEN, 1024);
        assert_eq!(raw[2], ENVELOPE_VERSION);
    }

    #[cfg(feature = "compression")]
    #[test]
    fn corrupt_or_oversized_compressed_payloads_are_refused_without_panicking() {
        assert!(decompress(b"").is_none());
        assert!(decompress(&[1, 0, 0]).is_none());
        // Claims 4 GiB.
        assert!(decompress(&[0xff, 0xff, 0xff, 0xff, 0x10, 0x41]).is_none());
        // Claims 100 bytes, holds garbage.
        assert!(decompress(&[100, 0, 0, 0, 0xff, 0xff, 0xff]).is_none());
    }

    #[cfg(not(feature = "compression"))]
    #[test]
    fn without_the_feature_a_compressed_envelope_is_another_version() {
        let mut buf = envelope(b"x");
        buf[2] = 2;
        assert_eq!(open(&buf).unwrap_err(), Corrupt::Version(2));
    }

    #[test]
    fn msgpack_rejects_garbage_without_panicking() {
        let r: Result<Vec<u8>, _> = MsgPackCodec.decode(&[0xc1, 0xff, 0x00]);
        assert!(r.is_err());
    }
}
