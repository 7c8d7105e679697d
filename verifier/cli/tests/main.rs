//! `edge-verify` as a user runs it: files, stdin, JSON on stdout, exit codes.

#[path = "../../core/tests/shared/mod.rs"]
mod shared;

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
};

use serde_json::{json, Value};
use shared::*;

struct Files {
    _dir: tempfile::TempDir,
    jwks: PathBuf,
    policy: PathBuf,
}

/// A key set after a rotation: `current` signs, `previous` still verifies, `retired` is gone.
fn rotated_files(policy_text: &str) -> Files {
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks = dir.path().join("jwks.json");
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &jwks,
        shared::jwks(&[
            Signer::ed25519(1).jwk("current"),
            Signer::ed25519(2).jwk("previous"),
        ]),
    )
    .expect("write");
    std::fs::write(&policy, policy_text).expect("write");
    Files {
        _dir: dir,
        jwks,
        policy,
    }
}

fn run(files: &Files, extra: &[&str], stdin: &[u8]) -> (i32, Value, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge-verify"))
        .arg("--jwks")
        .arg(&files.jwks)
        .arg("--policy")
        .arg(&files.policy)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn edge-verify");
    // A reader that stops early may close stdin first; that is its right.
    let _ = child.stdin.take().expect("stdin").write_all(stdin);
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let verdict: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout}"));
    (
        out.status.code().expect("exit code"),
        verdict,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn now_arg() -> String {
    format!("--now={NOW}")
}

#[test]
fn previous_key_of_a_rotated_set_is_accepted() {
    let files = rotated_files(&policy_json(""));
    let token = good_token(&Signer::ed25519(2), "previous");
    let (code, v, _) = run(&files, &[&now_arg()], token.as_bytes());
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["verdict"], "accept");
    assert_eq!(v["header"]["kid"], "previous");
    assert_eq!(v["claims"]["sub"], "3f1c2a9e-7b4d-4c1a-9e2f-0a1b2c3d4e5f");
    assert_eq!(v["claims"]["scope"], json!(["profile", "orders:read"]));
}

#[test]
fn retired_key_is_rejected() {
    let files = rotated_files(&policy_json(""));
    let token = good_token(&Signer::ed25519(3), "retired");
    let (code, v, _) = run(&files, &[&now_arg()], format!("{token}\n").as_bytes());
    assert_eq!(code, 1);
    assert_eq!(v["verdict"], "reject");
    assert_eq!(v["reason"], "unknown_key");
    assert_eq!(v["status"], 401);
}

#[test]
fn now_pins_the_clock() {
    let files = rotated_files(&policy_json(""));
    let token = good_token(&Signer::ed25519(1), "current");
    let (code, _, _) = run(&files, &["--now", &NOW.to_string()], token.as_bytes());
    assert_eq!(code, 0);
    let later = (NOW + 3600).to_string();
    let (code, v, _) = run(&files, &["--now", &later], token.as_bytes());
    assert_eq!((code, v["reason"].as_str()), (1, Some("token_expired")));
    assert!(v["www_authenticate"]
        .as_str()
        .expect("challenge")
        .contains("invalid_token"));
}

#[test]
fn signature_only_skips_claims_but_not_signatures() {
    let files = rotated_files(&policy_json(""));
    let token = good_token(&Signer::ed25519(1), "current");
    let later = format!("--now={}", NOW + 86_400);
    let (code, v, _) = run(&files, &[&later, "--signature-only"], token.as_bytes());
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["checked"], "signature");
    let forged = good_token(&Signer::ed25519(9), "current");
    let (code, v, _) = run(&files, &["--signature-only"], forged.as_bytes());
    assert_eq!((code, v["reason"].as_str()), (1, Some("bad_signature")));
}

#[test]
fn hostile_input_is_a_reject_not_a_crash() {
    let files = rotated_files(&policy_json(""));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "malformed_token"),
        (
            "binary",
            vec![0xff, 0x00, 0xfe, b'.', 0x80, b'.', 0x01],
            "malformed_token",
        ),
        ("huge", vec![b'a'; 4 * 1024 * 1024], "token_too_large"),
        (
            "nested",
            format!(
                "{}.{}.{}",
                b64(br#"{"alg":"EdDSA","kid":"current"}"#),
                b64("[".repeat(7000).as_bytes()),
                b64(&[0; 64])
            )
            .into_bytes(),
            "token_too_large",
        ),
        (
            "nested-small",
            format!(
                "{}.{}.{}",
                b64(br#"{"alg":"EdDSA","kid":"current","typ":"at+jwt"}"#),
                b64("[".repeat(4000).as_bytes()),
                b64(&[0; 64])
            )
            .into_bytes(),
            "bad_signature",
        ),
    ];
    for (name, input, reason) in cases {
        let (code, v, _) = run(&files, &[&now_arg()], &input);
        assert_eq!(
            (code, v["reason"].as_str()),
            (1, Some(reason)),
            "{name}: {v}"
        );
    }
}

#[test]
fn configuration_errors_exit_2() {
    let good = rotated_files(&policy_json(""));
    let (code, v, err) = run(&good, &["--now", "yesterday"], b"");
    assert_eq!((code, v["verdict"].as_str()), (2, Some("error")));
    assert!(err.contains("--now"), "{err}");
    let (code, _, _) = run(&good, &["--frobnicate"], b"");
    assert_eq!(code, 2);

    let bad_policy = rotated_files(r#"{"issuers":["a"],"audiences":["b"],"leway_seconds":3}"#);
    let (code, v, _) = run(&bad_policy, &[], b"");
    assert_eq!(code, 2);
    assert!(
        v["error"]
            .as_str()
            .expect("message")
            .contains("leway_seconds"),
        "{v}"
    );

    let no_usable_key = rotated_files(&policy_json(r#","algorithms":["RS256"]"#));
    let (code, v, _) = run(&no_usable_key, &[], b"");
    assert_eq!(code, 2);
    assert!(
        v["error"]
            .as_str()
            .expect("message")
            .contains("no usable key"),
        "{v}"
    );

    let missing = Command::new(env!("CARGO_BIN_EXE_edge-verify"))
        .arg("--policy")
        .arg(&good.policy)
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn skipped_keys_are_reported_on_stderr() {
    let files = rotated_files(&policy_json(""));
    let mut enc = Signer::ed25519(5).jwk("enc-key");
    enc["use"] = json!("enc");
    std::fs::write(
        &files.jwks,
        shared::jwks(&[Signer::ed25519(1).jwk("current"), enc]),
    )
    .expect("write");
    let (code, _, err) = run(
        &files,
        &[&now_arg()],
        good_token(&Signer::ed25519(1), "current").as_bytes(),
    );
    assert_eq!(code, 0);
    assert!(err.contains("enc-key") && err.contains("sig"), "{err}");
}

#[test]
fn shipped_examples_give_the_documented_verdicts() {
    let examples =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test"))
            .join("../../examples");
    let files = Files {
        _dir: tempfile::tempdir().expect("tempdir"),
        jwks: examples.join("jwks.json"),
        policy: examples.join("policy.json"),
    };
    for (name, code, reason) in [
        ("token-current.jwt", 0, None),
        ("token-previous-key.jwt", 0, None),
        ("token-retired-key.jwt", 1, Some("unknown_key")),
        ("token-wrong-audience.jwt", 1, Some("audience_not_allowed")),
    ] {
        let token = std::fs::read(examples.join(name)).expect("example token");
        let (got, v, _) = run(&files, &[&now_arg()], &token);
        assert_eq!((got, v["reason"].as_str()), (code, reason), "{name}: {v}");
    }
}
