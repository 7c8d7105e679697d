//! The proxy-wasm ABI's serialised header map, both ways: a little-endian `u32` count, then a
//! `u32` name length and a `u32` value length per pair, then each name and each value followed
//! by a NUL. Envoy writes the request headers in this form and reads local-response and call
//! headers in it.
//!
//! The map comes from outside this module's code, so decoding checks every length against the
//! buffer and answers an error, never a panic: a panic traps the VM and takes every request of
//! its worker thread with it. The SDK's own decoder slices unchecked and unwraps UTF-8.

use thiserror::Error;

/// A header map Envoy handed over that cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum MapError {
    /// A length points past the end of the buffer, or a NUL terminator is missing.
    #[error("the serialised header map is malformed")]
    Malformed,
    /// A header name is not UTF-8. Envoy's codecs refuse such names, so this is the host's
    /// doing or a codec this filter does not know; the request is refused, not guessed at.
    #[error("a header name is not UTF-8")]
    NameNotText,
}

/// Decodes a serialised header map into pairs that borrow from it: one allocation per request,
/// not two per header. Values stay bytes: HTTP allows obs-text in values, and the core decides
/// what a non-text value means for the header that carries it.
pub fn decode_pairs(bytes: &[u8]) -> Result<Vec<(&str, &[u8])>, MapError> {
    if bytes.is_empty() {
        // Envoy sends nothing at all for an empty map.
        return Ok(Vec::new());
    }
    let mut lengths = Reader { bytes, at: 0 };
    let count = lengths.u32()?;
    // Each pair takes at least 8 length bytes and 2 NULs: a count that cannot fit is refused
    // before anything is allocated for it.
    if count > bytes.len() / 10 {
        return Err(MapError::Malformed);
    }
    let mut data = Reader {
        bytes,
        at: 4 + count * 8,
    };
    let mut pairs = Vec::with_capacity(count);
    for _ in 0..count {
        let name_len = lengths.u32()?;
        let value_len = lengths.u32()?;
        let name = data.terminated(name_len)?;
        let value = data.terminated(value_len)?;
        let name = std::str::from_utf8(name).map_err(|_| MapError::NameNotText)?;
        pairs.push((name, value));
    }
    Ok(pairs)
}

/// Encodes pairs for the host. Lengths above `u32::MAX` cannot occur: every caller's headers
/// are a few hundred bytes.
pub fn encode_pairs(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(name, value)| 10 + name.len() + value.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    let length = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&length(pairs.len()));
    for (name, value) in pairs {
        out.extend_from_slice(&length(name.len()));
        out.extend_from_slice(&length(value.len()));
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Result<usize, MapError> {
        let end = self.at.checked_add(4).ok_or(MapError::Malformed)?;
        let field = self.bytes.get(self.at..end).ok_or(MapError::Malformed)?;
        self.at = end;
        let mut le = [0u8; 4];
        le.copy_from_slice(field);
        usize::try_from(u32::from_le_bytes(le)).map_err(|_| MapError::Malformed)
    }

    /// `len` bytes and the NUL after them.
    fn terminated(&mut self, len: usize) -> Result<&'a [u8], MapError> {
        let end = self.at.checked_add(len).ok_or(MapError::Malformed)?;
        let field = self.bytes.get(self.at..end).ok_or(MapError::Malformed)?;
        if self.bytes.get(end) != Some(&0) {
            return Err(MapError::Malformed);
        }
        self.at = end + 1;
        Ok(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        encode_pairs(&[
            (":method", b"GET"),
            (":path", b"/orders"),
            ("x-obs", &[0x80, 0xff]),
            ("empty", b""),
        ])
    }

    #[test]
    fn a_map_decodes_to_the_pairs_encoded() {
        let map = sample();
        let pairs = decode_pairs(&map).expect("decodes");
        assert_eq!(
            pairs,
            vec![
                (":method", &b"GET"[..]),
                (":path", b"/orders"),
                ("x-obs", &[0x80, 0xff]),
                ("empty", b""),
            ]
        );
        assert_eq!(decode_pairs(&[]), Ok(Vec::new()));
        assert_eq!(decode_pairs(&encode_pairs(&[])), Ok(Vec::new()));
    }

    #[test]
    fn every_truncation_of_a_map_is_an_error_not_a_panic() {
        // The SDK's decoder slices these unchecked: each one would trap the VM.
        let map = sample();
        for len in 1..map.len() {
            assert_eq!(decode_pairs(&map[..len]), Err(MapError::Malformed), "{len}");
        }
    }

    #[test]
    fn lengths_that_point_past_the_buffer_are_refused() {
        let mut huge_count = sample();
        huge_count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_pairs(&huge_count), Err(MapError::Malformed));

        let mut huge_name = sample();
        huge_name[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_pairs(&huge_name), Err(MapError::Malformed));

        // A length one short leaves a name without its NUL where the terminator should be.
        let mut short = sample();
        short[4..8].copy_from_slice(&6u32.to_le_bytes());
        assert_eq!(decode_pairs(&short), Err(MapError::Malformed));
    }

    #[test]
    fn a_name_that_is_not_text_is_its_own_error() {
        let map = encode_pairs(&[("x", b"1")]);
        let mut bytes = map.clone();
        let name_at = 4 + 8;
        bytes[name_at] = 0xff;
        assert_eq!(decode_pairs(&bytes), Err(MapError::NameNotText));
    }
}
