//! Value codecs and the versioned envelope Redis values are stored in.

use std::fmt;

use cache_core::{BoxError, Timestamp};
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
/// Magic, version, expiry (u64 big-endian milliseconds).
pub(crate) const HEADER_LEN: usize = 2 + 1 + 8;

/// Writes the envelope header for `expires_at` into `out`.
pub(crate) fn write_header(expires_at: Timestamp, out: &mut Vec<u8>) {
    out.extend_from_slice(MAGIC);
    out.push(ENVELOPE_VERSION);
    out.extend_from_slice(&expires_at.as_unix_millis().to_be_bytes());
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
}

impl fmt::Display for Corrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Corrupt::NotAnEnvelope => f.write_str("not a cache envelope"),
            Corrupt::Version(v) => write!(
                f,
                "envelope version {v}, this build reads {ENVELOPE_VERSION}"
            ),
            Corrupt::Payload => f.write_str("payload does not decode"),
            Corrupt::WrongType => f.write_str("the key holds another Redis type"),
        }
    }
}

/// Splits an envelope into its expiry and payload.
pub(crate) fn open(bytes: &[u8]) -> Result<(Timestamp, &[u8]), Corrupt> {
    if bytes.len() < HEADER_LEN || &bytes[..2] != MAGIC {
        return Err(Corrupt::NotAnEnvelope);
    }
    if bytes[2] != ENVELOPE_VERSION {
        return Err(Corrupt::Version(bytes[2]));
    }
    let mut millis = [0u8; 8];
    millis.copy_from_slice(&bytes[3..HEADER_LEN]);
    Ok((
        Timestamp::from_unix_millis(u64::from_be_bytes(millis)),
        &bytes[HEADER_LEN..],
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn envelope_roundtrip_and_rejects() {
        let mut buf = Vec::new();
        write_header(Timestamp::from_unix_millis(42), &mut buf);
        buf.extend_from_slice(b"payload");
        let (at, payload) = open(&buf).unwrap();
        assert_eq!(at, Timestamp::from_unix_millis(42));
        assert_eq!(payload, b"payload");

        assert_eq!(open(b"garbage").unwrap_err(), Corrupt::NotAnEnvelope);
        assert_eq!(open(b"").unwrap_err(), Corrupt::NotAnEnvelope);
        let mut old = buf.clone();
        old[2] = 0;
        assert_eq!(open(&old).unwrap_err(), Corrupt::Version(0));
    }

    #[test]
    fn msgpack_rejects_garbage_without_panicking() {
        let r: Result<Vec<u8>, _> = MsgPackCodec.decode(&[0xc1, 0xff, 0x00]);
        assert!(r.is_err());
    }
}
