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

/// A `size`×`size` PNG for `user`: a disc on a background, both colours
/// derived from the user id, so every user's picture differs. Two-colour
/// palette, one bit per pixel: a 96×96 avatar is about 1.3 KB, so seeding 200
/// users at start-up stays fast.
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
    let row_bytes = size.div_ceil(8) as usize;
    let mut raw = Vec::with_capacity((row_bytes + 1) * size as usize);
    let c = size as i64 / 2;
    let r2 = (size as i64 * 3 / 8).pow(2);
    for y in 0..size as i64 {
        raw.push(0); // filter: none
        let start = raw.len();
        raw.resize(start + row_bytes, 0);
        for x in 0..size as i64 {
            if (x - c).pow(2) + (y - c).pow(2) <= r2 {
                raw[start + (x / 8) as usize] |= 0x80 >> (x % 8);
            }
        }
    }
    encode_png(size, size, &[bg, fg], &raw)
}

/// Encodes filtered 1-bit palette scanlines as a PNG, with zlib "stored"
/// (uncompressed) blocks: tiny avatars do not need compression.
fn encode_png(width: u32, height: u32, palette: &[[u8; 3]; 2], raw: &[u8]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[1, 3, 0, 0, 0]); // 1-bit palette, deflate, no filter, no interlace
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"PLTE", palette.as_flattened());
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

/// CRC-32 (IEEE) lookup table, built at compile time: seeding 200 avatars at
/// start-up stays fast even in a debug build.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
};

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC_TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    // 5552 bytes is the most that can be summed before a u32 may overflow.
    for block in data.chunks(5_552) {
        for &byte in block {
            a += u32::from(byte);
            b += a;
        }
        a %= 65_521;
        b %= 65_521;
    }
    (b << 16) | a
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn crc_and_adler_match_known_values() {
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
    }

    /// Walks the PNG's chunks (checking every CRC), inflates the stored zlib
    /// blocks and reads back pixels: the disc's centre is the foreground
    /// (palette index 1), the corner the background.
    #[test]
    fn generated_png_is_well_formed_and_draws_a_disc() {
        let size = 96u32;
        let png = generate_png(42, size);
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        let mut at = 8;
        let mut chunks = Vec::new();
        while at < png.len() {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            let kind = &png[at + 4..at + 8];
            let data = &png[at + 8..at + 8 + len];
            let crc = u32::from_be_bytes(png[at + 8 + len..at + 12 + len].try_into().unwrap());
            assert_eq!(crc, crc32(&png[at + 4..at + 8 + len]), "CRC of {kind:?}");
            chunks.push((kind.to_vec(), data.to_vec()));
            at += 12 + len;
        }
        let kinds: Vec<&[u8]> = chunks.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(kinds, [&b"IHDR"[..], b"PLTE", b"IDAT", b"IEND"]);
        assert_eq!(&chunks[0].1[..8], [0, 0, 0, 96, 0, 0, 0, 96]);
        assert_eq!(chunks[1].1.len(), 6, "two RGB palette entries");
        // zlib: 2-byte header, stored blocks (1 + 4 header bytes), Adler-32.
        let z = &chunks[2].1;
        let (mut raw, mut i) = (Vec::new(), 2);
        loop {
            let last = z[i] == 1;
            let len = u16::from_le_bytes([z[i + 1], z[i + 2]]) as usize;
            assert_eq!(!u16::from_le_bytes([z[i + 3], z[i + 4]]) as usize, len);
            raw.extend_from_slice(&z[i + 5..i + 5 + len]);
            i += 5 + len;
            if last {
                break;
            }
        }
        assert_eq!(
            u32::from_be_bytes(z[i..i + 4].try_into().unwrap()),
            adler32(&raw)
        );
        let row = size.div_ceil(8) as usize + 1;
        assert_eq!(raw.len(), row * size as usize);
        let pixel = |x: usize, y: usize| (raw[y * row + 1 + x / 8] >> (7 - x % 8)) & 1;
        assert_eq!(pixel(48, 48), 1);
        assert_eq!(pixel(0, 0), 0);
        assert_eq!(pixel(95, 95), 0);
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
