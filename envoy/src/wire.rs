//! The proxy-wasm ABI's serialised header map, both ways: a little-endian `u32` count, then a
//! `u32` name length and a `u32` value length per pair, then each name and each value followed
//! by a NUL. Envoy writes the request headers in this form and reads local-response and call
//! headers in it.
//!
//! The map comes from outside this module's code, so decoding checks every length against the
//! buffer and answers an error, never a panic: a panic traps the VM and takes every request of
//! its worker thread with it. The SDK's own decoder slices unchecked and unwraps UTF-8.
//!
//! A request's pairs, decoded here or read from the native module's header array, are judged the
//! same way in both builds ([`names_are_text`], [`method_and_path`]) before the core reads them.

use thiserror::Error;

/// A header map Envoy handed over that cannot be read: a length points past the end of the
/// buffer, or a NUL terminator is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("the serialised header map is malformed")]
pub struct Malformed;

/// One header as Envoy hands it over: name and value, bytes nobody has checked.
pub type Pair<'a> = (&'a [u8], &'a [u8]);

/// Decodes a serialised header map into pairs that borrow from it: one allocation per request,
/// not two per header. Names and values stay bytes ([`names_are_text`], [`method_and_path`]).
pub fn decode_pairs(bytes: &[u8]) -> Result<Vec<Pair<'_>>, Malformed> {
    if bytes.is_empty() {
        // Envoy sends nothing at all for an empty map.
        return Ok(Vec::new());
    }
    let mut lengths = Reader { bytes, at: 0 };
    let count = lengths.u32()?;
    // Each pair takes at least 8 length bytes and 2 NULs: a count that cannot fit is refused
    // before anything is allocated for it.
    if count > bytes.len() / 10 {
        return Err(Malformed);
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
        pairs.push((name, value));
    }
    Ok(pairs)
}

/// Encodes pairs for the host. Lengths above `u32::MAX` cannot occur: every caller's headers
/// are a few hundred bytes.
pub fn encode_pairs<N: AsRef<[u8]>>(pairs: &[(N, &[u8])]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(name, value)| 10 + name.as_ref().len() + value.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    let length = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&length(pairs.len()));
    for (name, value) in pairs {
        out.extend_from_slice(&length(name.as_ref().len()));
        out.extend_from_slice(&length(value.len()));
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_ref());
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

/// Whether every name among a request's pairs is UTF-8. Envoy's codecs refuse other names, so
/// one is the host's doing or a codec this filter does not know: the request is refused, not
/// guessed at. Both builds ask this before handing the pairs to the core, which reads them as
/// they lie (names compared as bytes, values left bytes: HTTP allows obs-text in values, and the
/// core decides what a non-text value means for the header that carries it).
pub fn names_are_text(pairs: &[Pair]) -> bool {
    // Names are ASCII in practice; the check that makes no `str` is the cheaper one.
    pairs
        .iter()
        .all(|(name, _)| name.is_ascii() || std::str::from_utf8(name).is_ok())
}

/// The request's `:method` and `:path`, or `None` if either is missing or not text: a path that
/// is not text cannot be matched against the route rules.
pub fn method_and_path<'a>(pairs: &[Pair<'a>]) -> Option<(&'a str, &'a str)> {
    let text = |name: &[u8]| {
        let (_, value) = pairs.iter().find(|(k, _)| *k == name)?;
        std::str::from_utf8(value).ok()
    };
    Some((text(b":method")?, text(b":path")?))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Result<usize, Malformed> {
        let end = self.at.checked_add(4).ok_or(Malformed)?;
        let field = self.bytes.get(self.at..end).ok_or(Malformed)?;
        self.at = end;
        let mut le = [0u8; 4];
        le.copy_from_slice(field);
        usize::try_from(u32::from_le_bytes(le)).map_err(|_| Malformed)
    }

    /// `len` bytes and the NUL after them.
    fn terminated(&mut self, len: usize) -> Result<&'a [u8], Malformed> {
        let end = self.at.checked_add(len).ok_or(Malformed)?;
        let field = self.bytes.get(self.at..end).ok_or(Malformed)?;
        if self.bytes.get(end) != Some(&0) {
            return Err(Malformed);
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
                (&b":method"[..], &b"GET"[..]),
                (b":path", b"/orders"),
                (b"x-obs", &[0x80, 0xff]),
                (b"empty", b""),
            ]
        );
        assert_eq!(decode_pairs(&[]), Ok(Vec::new()));
        assert_eq!(decode_pairs(&encode_pairs::<&str>(&[])), Ok(Vec::new()));
    }

    #[test]
    fn every_truncation_of_a_map_is_an_error_not_a_panic() {
        // The SDK's decoder slices these unchecked: each one would trap the VM.
        let map = sample();
        for len in 1..map.len() {
            assert_eq!(decode_pairs(&map[..len]), Err(Malformed), "{len}");
        }
    }

    #[test]
    fn lengths_that_point_past_the_buffer_are_refused() {
        let mut huge_count = sample();
        huge_count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_pairs(&huge_count), Err(Malformed));

        let mut huge_name = sample();
        huge_name[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_pairs(&huge_name), Err(Malformed));

        // A length one short leaves a name without its NUL where the terminator should be.
        let mut short = sample();
        short[4..8].copy_from_slice(&6u32.to_le_bytes());
        assert_eq!(decode_pairs(&short), Err(Malformed));
    }

    #[test]
    fn a_name_that_is_not_text_is_told_apart() {
        let mut map = encode_pairs(&[(":method", b"GET"), (":path", b"/"), ("x", b"1")]);
        let pairs = decode_pairs(&map).expect("decodes");
        assert!(names_are_text(&pairs));
        let last_name_at = map.len() - 4;
        assert_eq!(map[last_name_at], b'x');
        map[last_name_at] = 0xff;
        let pairs = decode_pairs(&map).expect("still a well-formed map");
        assert!(!names_are_text(&pairs));
        // Text beyond ASCII is text.
        let accented = encode_pairs(&[("caf\u{e9}", b"1")]);
        assert!(names_are_text(&decode_pairs(&accented).expect("decodes")));
    }

    #[test]
    fn method_and_path_are_read_as_text_or_not_at_all() {
        let read = |pairs: &[(&str, &[u8])]| {
            let map = encode_pairs(pairs);
            let pairs = decode_pairs(&map).expect("decodes");
            method_and_path(&pairs).map(|(m, p)| (m.to_string(), p.to_string()))
        };
        assert_eq!(
            read(&[(":path", b"/a?b=1"), (":method", b"GET")]),
            Some(("GET".into(), "/a?b=1".into()))
        );
        assert_eq!(read(&[(":method", b"GET")]), None);
        assert_eq!(read(&[(":path", b"/")]), None);
        assert_eq!(read(&[(":method", b"GET"), (":path", &[b'/', 0xff])]), None);
        // A name is matched exactly: pseudo-headers are lowercase on every codec.
        assert_eq!(read(&[(":METHOD", b"GET"), (":path", b"/")]), None);
    }

    #[test]
    fn the_core_reads_decoded_pairs_without_regard_to_case() {
        use edgeauth_core::Headers as _;
        let map = encode_pairs(&[
            ("Authorization", b"a"),
            ("x", b"b"),
            ("authorization", b"c"),
        ]);
        let pairs = decode_pairs(&map).expect("decodes");
        let mut seen = Vec::new();
        pairs.values("authorization", &mut |v| seen.push(v.to_vec()));
        assert_eq!(seen, vec![b"a".to_vec(), b"c".to_vec()]);
        assert!(pairs.carries("AUTHORIZATION"));
        assert!(!pairs.carries("authorizatio"));
        let mut names = Vec::new();
        assert!(pairs.each_name(&mut |n| names.push(n.to_vec())));
        assert_eq!(names, [&b"Authorization"[..], b"x", b"authorization"]);
    }
}
