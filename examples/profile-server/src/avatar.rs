//! Generated avatars (tiny PNGs, no image crate) and image-type sniffing.

/// The image types uploads may have, recognised by their first bytes.
///
/// ```
/// use profile_server::avatar::{generate_png, sniff_image};
/// assert_eq!(sniff_image(&generate_png(7, 16)), Some("image/png"));
/// assert_eq!(sniff_image(b"<svg/>"), None);
/// ```
pub fn sniff_image(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// A `size`×`size` RGB PNG for `user`: a disc on a background, both colours
/// derived from the user id, so every user's picture differs.
///
/// ```
/// let png = profile_server::avatar::generate_png(1, 8);
/// assert!(png.starts_with(b"\x89PNG"));
/// assert_ne!(png, profile_server::avatar::generate_png(2, 8));
/// ```
pub fn generate_png(user: u64, size: u32) -> Vec<u8> {
    let seed = user.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ 0xA5A5_5A5A;
    let bg = [seed as u8, (seed >> 8) as u8, (seed >> 16) as u8];
    let fg = [255 - bg[0], 255 - bg[1] / 2, (seed >> 24) as u8];
    let mut raw = Vec::with_capacity(((size * 3 + 1) * size) as usize);
    let c = size as i64 / 2;
    let r2 = (size as i64 * 3 / 8).pow(2);
    for y in 0..size as i64 {
        raw.push(0); // filter: none
        for x in 0..size as i64 {
            let inside = (x - c).pow(2) + (y - c).pow(2) <= r2;
            raw.extend_from_slice(if inside { &fg } else { &bg });
        }
    }
    encode_png(size, size, &raw)
}

/// Encodes filtered RGB scanlines as a PNG, with zlib "stored" (uncompressed)
/// blocks: tiny avatars do not need compression.
fn encode_png(width: u32, height: u32, raw: &[u8]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
    chunk(&mut out, b"IHDR", &ihdr);
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(block);
    }
    z.extend_from_slice(&adler32(raw).to_be_bytes());
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_and_adler_match_known_values() {
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
    }

    #[test]
    fn sniffs_every_accepted_type_and_rejects_others() {
        assert_eq!(sniff_image(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(sniff_image(b"GIF89a...."), Some("image/gif"));
        assert_eq!(sniff_image(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff_image(b"RIFF\0\0\0\0WAVE"), None);
        assert_eq!(sniff_image(b""), None);
        assert_eq!(sniff_image(b"%PDF-1.7"), None);
    }
}
