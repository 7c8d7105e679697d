//! Signatures checked by Envoy's own BoringSSL through its `verify_signature` foreign function,
//! instead of Rust crypto compiled to Wasm: P-256 and RSA arithmetic in V8's Wasm engine is
//! an order of magnitude slower than BoringSSL's native code (`bench-results/envoy.md`).
//!
//! The core prepares everything up to the signature ([`edgeauth_core::authorize_deferred`]); this
//! module encodes the key and signature the way BoringSSL takes them (a DER
//! `SubjectPublicKeyInfo`, an ECDSA signature as DER `SEQUENCE { r, s }`), and the core decides
//! the rest, so the verdict is the one the core gives with its own crypto.
//!
//! Envoy's function digests with a named hash, which fits RS256 and ES256 but not Ed25519 (no
//! digest) nor RSA-PSS (no padding parameter). Which algorithms the host may take is decided once
//! per VM by a known-answer test ([`SELF_TEST`]): a valid signature must pass and a tampered one
//! must fail. Anything else stays with the core.
//!
//! Everything here is plain bytes in and out; the host call itself is in the filter.

use edgeauth_core::{Algorithm, PublicKey};

/// One signature per algorithm from keys made for this purpose (not the origin's), with their
/// JWKS: the host's known-answer test.
pub const SELF_TEST: &str = include_str!("self_test.json");

/// The algorithms whose signatures Envoy's `verify_signature` can check, with the hash to name.
pub fn host_hash(alg: Algorithm) -> Option<&'static str> {
    match alg {
        Algorithm::Rs256 | Algorithm::Es256 => Some("sha256"),
        _ => None,
    }
}

fn push_length(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let first = bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(bytes.len() - 1);
    out.push(0x80 | (bytes.len() - first) as u8);
    out.extend_from_slice(&bytes[first..]);
}

/// A DER element: tag, definite length, content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    push_length(content.len(), &mut out);
    out.extend_from_slice(content);
    out
}

/// A DER INTEGER holding the unsigned big-endian `bytes`: no redundant leading zeros, and a
/// zero byte added where the top bit would make it negative.
fn der_unsigned(bytes: &[u8]) -> Vec<u8> {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    let trimmed = &bytes[first..];
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|&b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    der(0x02, &content)
}

fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(bytes.len() + 1);
    content.push(0); // no unused bits
    content.extend_from_slice(bytes);
    der(0x03, &content)
}

const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_PRIME256V1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// The key as a DER `SubjectPublicKeyInfo` (RFC 5280 §4.1; RFC 3279, 5480 and 8410 for the
/// algorithm identifiers), the form BoringSSL's `EVP_parse_public_key` reads.
pub fn spki_der(key: &PublicKey) -> Vec<u8> {
    let (algorithm, subject_public_key) = match key {
        PublicKey::Rsa { modulus, exponent } => {
            let mut identifier = der(0x06, OID_RSA_ENCRYPTION);
            identifier.extend_from_slice(&der(0x05, &[]));
            let mut integers = der_unsigned(modulus);
            integers.extend_from_slice(&der_unsigned(exponent));
            (identifier, der(0x30, &integers))
        }
        PublicKey::P256(point) => {
            let mut identifier = der(0x06, OID_EC_PUBLIC_KEY);
            identifier.extend_from_slice(&der(0x06, OID_PRIME256V1));
            (identifier, point.clone())
        }
        PublicKey::Ed25519(key) => (der(0x06, OID_ED25519), key.clone()),
    };
    let mut content = der(0x30, &algorithm);
    content.extend_from_slice(&bit_string(&subject_public_key));
    der(0x30, &content)
}

/// A JWS ES256 signature (`r || s`, 32 bytes each, RFC 7518 §3.4) as the DER `ECDSA-Sig-Value`
/// BoringSSL verifies; `None` for any other length.
pub fn ecdsa_signature_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() != 64 {
        return None;
    }
    let (r, s) = raw.split_at(32);
    let mut integers = der_unsigned(r);
    integers.extend_from_slice(&der_unsigned(s));
    Some(der(0x30, &integers))
}

fn push_varint(mut value: usize, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn push_field(number: u8, bytes: &[u8], out: &mut Vec<u8>) {
    out.push((number << 3) | 2); // length-delimited
    push_varint(bytes.len(), out);
    out.extend_from_slice(bytes);
}

/// The foreign function's argument: a serialised `VerifySignatureArguments` protobuf
/// (`hash_function = 1`, `public_key = 2` as DER, `signature = 3`, `text = 4`).
pub fn verify_arguments(hash: &str, spki: &[u8], signature: &[u8], text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(spki.len() + signature.len() + text.len() + 24);
    push_field(1, hash.as_bytes(), &mut out);
    push_field(2, spki, &mut out);
    push_field(3, signature, &mut out);
    push_field(4, text, &mut out);
    out
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Reads a serialised `VerifySignatureResult` (`bool result = 1`, `string error = 2`): whether
/// the signature verified. `None` if the bytes are not that message.
pub fn verify_result(bytes: &[u8]) -> Option<bool> {
    let mut at = 0;
    let mut result = false; // proto3 leaves a false field out
    while at < bytes.len() {
        let tag = read_varint(bytes, &mut at)?;
        match (tag >> 3, tag & 7) {
            (1, 0) => result = read_varint(bytes, &mut at)? != 0,
            (_, 0) => {
                read_varint(bytes, &mut at)?;
            }
            (_, 2) => {
                let len = usize::try_from(read_varint(bytes, &mut at)?).ok()?;
                at = at.checked_add(len).filter(|&end| end <= bytes.len())?;
            }
            _ => return None,
        }
    }
    Some(result)
}

/// The signature as BoringSSL takes it for `alg`, if the host checks that algorithm: RS256 as
/// it is, ES256 as DER. `None` otherwise, or for an ES256 signature of the wrong length (the core
/// refuses it).
pub fn host_signature(alg: Algorithm, signature: &[u8]) -> Option<Vec<u8>> {
    match alg {
        Algorithm::Es256 => ecdsa_signature_der(signature),
        Algorithm::Rs256 => Some(signature.to_vec()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_minimal_and_never_negative() {
        assert_eq!(der_unsigned(&[0x00, 0x00, 0x7f]), vec![0x02, 0x01, 0x7f]);
        assert_eq!(der_unsigned(&[0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(der_unsigned(&[0x00, 0x00]), vec![0x02, 0x01, 0x00]);
        assert_eq!(
            der_unsigned(&[0x01, 0x00, 0x01]),
            vec![0x02, 0x03, 0x01, 0x00, 0x01]
        );
        // Long form lengths, as a 2048-bit modulus needs.
        let long = der(0x04, &[0u8; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(der(0x04, &[0u8; 200])[..3], [0x04, 0x81, 0xc8]);
    }

    #[test]
    fn keys_encode_as_the_spki_openssl_writes() {
        // `openssl pkey -pubout -outform DER` writes these prefixes for P-256 and Ed25519 keys.
        let point = [vec![0x04], vec![0x11; 32], vec![0x22; 32]].concat();
        let p256 = spki_der(&PublicKey::P256(point.clone()));
        let prefix = "3059301306072a8648ce3d020106082a8648ce3d030107034200";
        assert_eq!(hex(&p256[..26]), prefix);
        assert_eq!(&p256[26..], point.as_slice());
        let ed = spki_der(&PublicKey::Ed25519(vec![0x33; 32]));
        assert_eq!(hex(&ed[..12]), "302a300506032b6570032100");
        // An RSA key with a 2048-bit modulus: 294 bytes, as every such SPKI.
        let mut modulus = vec![0xc5; 256];
        modulus[255] = 0x01;
        let rsa = spki_der(&PublicKey::Rsa {
            modulus,
            exponent: vec![0x01, 0x00, 0x01],
        });
        assert_eq!(rsa.len(), 294);
        assert_eq!(hex(&rsa[..19]), "30820122300d06092a864886f70d0101010500");
        assert_eq!(hex(&rsa[rsa.len() - 5..]), "0203010001");
    }

    #[test]
    fn es256_signatures_become_der_and_other_lengths_are_refused() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // r needs a zero byte
        raw[32..].fill(0x01);
        let der = ecdsa_signature_der(&raw).expect("64 bytes");
        assert_eq!(&der[..5], &[0x30, 0x45, 0x02, 0x21, 0x00]);
        assert_eq!(der.len(), 2 + 35 + 34);
        assert_eq!(ecdsa_signature_der(&[0u8; 63]), None);
        assert_eq!(ecdsa_signature_der(&[0u8; 65]), None);
    }

    #[test]
    fn the_protobuf_messages_round_trip() {
        let args = verify_arguments("sha256", &[1, 2], &[3; 200], b"abc");
        assert_eq!(&args[..8], &[0x0a, 6, b's', b'h', b'a', b'2', b'5', b'6']);
        assert_eq!(&args[8..12], &[0x12, 2, 1, 2]);
        assert_eq!(
            &args[12..15],
            &[0x1a, 0xc8, 0x01],
            "a two-byte varint length"
        );
        assert_eq!(verify_result(&[0x08, 0x01]), Some(true));
        assert_eq!(verify_result(&[0x08, 0x01, 0x12, 0x00]), Some(true));
        assert_eq!(verify_result(&[0x12, 0x03, b'b', b'a', b'd']), Some(false));
        assert_eq!(verify_result(&[]), Some(false));
        assert_eq!(
            verify_result(&[0x12, 0x09, b'x']),
            None,
            "length past the end"
        );
        assert_eq!(
            verify_result(&[0x0d, 0, 0, 0, 0]),
            None,
            "a wire type it does not use"
        );
    }

    #[test]
    fn only_rs256_and_es256_go_to_the_host() {
        for alg in [Algorithm::Es256, Algorithm::Rs256] {
            assert!(host_hash(alg).is_some() && host_signature(alg, &[1; 64]).is_some());
        }
        assert!(host_signature(Algorithm::Es256, &[1; 10]).is_none());
        for alg in [Algorithm::EdDsa, Algorithm::Ps256, Algorithm::Hs256] {
            assert!(host_hash(alg).is_none() && host_signature(alg, &[1; 64]).is_none());
        }
    }

    #[test]
    fn the_self_test_vectors_verify_with_the_core_and_encode_for_the_host() {
        use base64ct::{Base64UrlUnpadded, Encoding as _};
        use edgeauth_core::{check_signature, KeyRing, Policy};
        let vectors: serde_json::Value = serde_json::from_str(SELF_TEST).expect("JSON");
        let policy = Policy::from_json(
            // The vectors' headers carry no `typ`.
            r#"{"issuers":["self-test"],"audiences":["self-test"],"algorithms":["EdDSA","ES256","RS256"],"allow_missing_type":true}"#,
        )
        .expect("policy");
        let (ring, skipped) =
            KeyRing::from_jwks(vectors["jwks"].to_string().as_bytes(), &policy).expect("JWKS");
        assert!(skipped.is_empty());
        for alg in ["EdDSA", "ES256", "RS256"] {
            let token = vectors["tokens"][alg].as_str().expect("a token");
            assert!(check_signature(token, &ring, &policy).is_ok(), "{alg}");
        }
        for alg in ["ES256", "RS256"] {
            let token = vectors["tokens"][alg].as_str().expect("a token");
            let (input, signature) = token.rsplit_once('.').expect("compact");
            let signature = Base64UrlUnpadded::decode_vec(signature).expect("base64url");
            let key = ring
                .keys()
                .iter()
                .find(|k| k.kid() == Some(&format!("self-test-{alg}")))
                .and_then(|k| k.public_key())
                .expect("the key");
            let algorithm = if alg == "ES256" {
                Algorithm::Es256
            } else {
                Algorithm::Rs256
            };
            let signature = host_signature(algorithm, &signature).expect("host-verifiable");
            let arguments =
                verify_arguments("sha256", &spki_der(&key), &signature, input.as_bytes());
            assert!(arguments.ends_with(input.as_bytes()));
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
