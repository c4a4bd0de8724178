//! S3's URI encoding, SigV4 dates and hex, written for the signing hot path.

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";
const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";

/// Whether `b` is an RFC 3986 unreserved character, the only bytes S3's URI
/// encoding leaves alone (besides `/` in paths).
#[inline]
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Appends `s` URI-encoded the way SigV4 wants it for S3: every byte but the
/// unreserved ones as `%XX` (upper-case hex), `/` kept when `keep_slash`.
pub(crate) fn uri_encode_into(s: &str, keep_slash: bool, out: &mut String) {
    let bytes = s.as_bytes();
    // Fast path: copy runs of bytes that need no escaping in one go.
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if unreserved(b) || (keep_slash && b == b'/') {
            continue;
        }
        if start < i {
            // s[start..i] is all unreserved ASCII, so both ends are char boundaries.
            out.push_str(&s[start..i]);
        }
        out.push('%');
        out.push(char::from(HEX_UPPER[usize::from(b >> 4)]));
        out.push(char::from(HEX_UPPER[usize::from(b & 0x0F)]));
        start = i + 1;
    }
    if start < bytes.len() {
        // Past the last escaped byte only unreserved ASCII (or `/`) remains.
        out.push_str(&s[start..]);
    }
}

/// URI-encodes `s`; see [`uri_encode_into`].
pub(crate) fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 2);
    uri_encode_into(s, keep_slash, &mut out);
    out
}

/// Lower-case hex of `bytes` into a fixed buffer.
#[inline]
pub(crate) fn hex32(bytes: &[u8]) -> [u8; 64] {
    let mut out = [0u8; 64];
    for (i, &b) in bytes.iter().take(32).enumerate() {
        out[2 * i] = HEX_LOWER[usize::from(b >> 4)];
        out[2 * i + 1] = HEX_LOWER[usize::from(b & 0x0F)];
    }
    out
}

/// Civil date (year, month, day) of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// `YYYYMMDDTHHMMSSZ` for `secs` since the Unix epoch (years up to 9999).
pub(crate) fn amz_date(secs: u64) -> [u8; 16] {
    let (y, m, d) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    let (hh, mm, ss) = (rem / 3_600, rem % 3_600 / 60, rem % 60);
    let mut out = *b"00000000T000000Z";
    let digits = |out: &mut [u8], mut v: u64| {
        for slot in out.iter_mut().rev() {
            // `v % 10` is below 10, so the cast cannot truncate.
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    digits(&mut out[0..4], y);
    digits(&mut out[4..6], m);
    digits(&mut out[6..8], d);
    digits(&mut out[9..11], hh);
    digits(&mut out[11..13], mm);
    digits(&mut out[13..15], ss);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_s3() {
        assert_eq!(uri_encode("a b+c=d&e/f", true), "a%20b%2Bc%3Dd%26e/f");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
        assert_eq!(uri_encode("ünï ☃", true), "%C3%BCn%C3%AF%20%E2%98%83");
        assert_eq!(uri_encode("-._~AZaz09", false), "-._~AZaz09");
        assert_eq!(uri_encode("%2F", true), "%252F");
    }

    #[test]
    fn formats_dates() {
        assert_eq!(&amz_date(1_369_353_600), b"20130524T000000Z");
        assert_eq!(&amz_date(0), b"19700101T000000Z");
        // 2024-02-29T23:59:59Z, a leap day.
        assert_eq!(&amz_date(1_709_251_199), b"20240229T235959Z");
        assert_eq!(&amz_date(1_767_225_600), b"20260101T000000Z");
    }

    #[test]
    fn hex_is_lower_case() {
        let h = hex32(&[0xAB; 32]);
        assert!(h.iter().all(|&b| b == b'a' || b == b'b'));
    }
}
