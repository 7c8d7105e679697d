//! Arbitrary bytes as everything the Envoy filter reads from outside its own code: the plugin
//! configuration, the shared-data records another VM wrote (fetcher lease, key set,
//! deny-list head and segments), Envoy's `verify_signature` answer, and the header maps the ABI
//! hands over (`wire`). A panic here would trap the VM, taking every request of its worker thread with it.
//!
//! Invariants:
//! - no panic, whatever the bytes;
//! - every record that decodes encodes back to bytes that decode to the same record, and so does
//!   every header map;
//! - the ES256 signature conversion gives DER only for 64 bytes, and its length matches its
//!   header.

#![no_main]

use edgeauth_envoy::{
    deny_list::{Head, Segment},
    host_crypto::{ecdsa_signature_der, verify_result},
    settings::Settings,
    shared::{decode_version, KeysRecord, Lease},
    wire::{decode_pairs, encode_pairs, method_and_path, names_are_text},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Settings::from_json(data);
    let _ = verify_result(data);
    let _ = decode_version(Some(data));
    let _ = Lease::may_take(Some(data), 7, 1_000);

    if let Some(lease) = Lease::decode(data) {
        assert_eq!(Lease::decode(&lease.encode()), Some(lease));
    }
    if let Some(record) = KeysRecord::decode(data) {
        assert_eq!(KeysRecord::decode(&record.encode()), Some(record));
    }
    if let Some(head) = Head::decode(data) {
        assert_eq!(Head::decode(&head.encode()), Some(head));
    }
    if let Some(segment) = Segment::decode(data) {
        assert_eq!(Segment::decode(&segment.encode()), Some(segment));
    }
    if let Ok(pairs) = decode_pairs(data) {
        let _ = (names_are_text(&pairs), method_and_path(&pairs));
        assert_eq!(decode_pairs(&encode_pairs(&pairs)), Ok(pairs));
    }
    match ecdsa_signature_der(data) {
        Some(der) => {
            assert_eq!(data.len(), 64);
            assert_eq!(der[0], 0x30);
            assert_eq!(usize::from(der[1]) + 2, der.len());
        }
        None => assert_ne!(data.len(), 64),
    }
});
