//! `rediss://`: the origin's Redis over TLS, as ElastiCache with in-transit encryption or any
//! Redis behind a certificate. A redis-server of the test's own serves TLS only, with a
//! certificate from a CA made for the test; the origin binary runs as a process of its own, so
//! that the CA it trusts (`SSL_CERT_FILE`, read by the system's certificate loader) is its alone.
//! Runs in the scripts/test passes with a Redis (`EDGEAUTH_TEST_REDIS_URL` or
//! `EDGEAUTH_TEST_REDIS_CLUSTER`), and skips otherwise.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::test_redis;

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success(), "openssl {args:?}");
}

/// A CA (`name.crt`, `name.key`) and, signed by it, a certificate for `localhost`
/// (`name-server.crt`, `name-server.key`).
fn certificates(dir: &Path, name: &str) {
    let (ca_key, ca_crt) = (format!("{name}.key"), format!("{name}.crt"));
    let (key, csr, crt) = (
        format!("{name}-server.key"),
        format!("{name}-server.csr"),
        format!("{name}-server.crt"),
    );
    openssl(dir, &["genrsa", "-out", &ca_key, "2048"]);
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &ca_key,
            "-sha256",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-out",
            &ca_crt,
        ],
    );
    openssl(dir, &["genrsa", "-out", &key, "2048"]);
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &key,
            "-subj",
            "/CN=localhost",
            "-out",
            &csr,
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").expect("ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-sha256",
            "-extfile",
            "san.ext",
            "-out",
            &crt,
        ],
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Kills the process when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The origin binary, on the Redis at `redis_url`, trusting the CAs in `trusted`: whether its
/// `/readyz` turns ready (its deny-list rebuilt in that Redis) within `bound`.
async fn ready_within(dir: &Path, redis_url: &str, trusted: &Path, bound: Duration) -> bool {
    let port = free_port();
    let _origin = Running(
        Command::new(env!("CARGO_BIN_EXE_origin"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("SSL_CERT_FILE", trusted)
            .env("EDGEAUTH_DATA_DIR", dir.join(format!("data-{port}")))
            .env("EDGEAUTH_LISTEN", format!("127.0.0.1:{port}"))
            .env("EDGEAUTH_REDIS_DENYLIST_URL", redis_url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the origin binary"),
    );
    let started = Instant::now();
    while started.elapsed() < bound {
        let ready = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            stream
                .write_all(b"GET /readyz HTTP/1.1\r\nhost: origin\r\nconnection: close\r\n\r\n")
                .ok()?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply).ok()?;
            Some(reply.starts_with("HTTP/1.1 200"))
        })
        .await
        .expect("task");
        if ready == Some(true) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn the_deny_list_reaches_redis_over_tls_and_only_with_a_trusted_certificate() {
    if test_redis().is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("edgeauth-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    certificates(&dir, "redis-ca");
    // A CA the origin is told to trust that did not sign the server's certificate: what a
    // client sees when someone else answers on the Redis's address.
    certificates(&dir, "other-ca");
    let port = free_port();
    let _redis = Running(
        Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
            ])
            .args([
                "--tls-cert-file",
                "redis-ca-server.crt",
                "--tls-key-file",
                "redis-ca-server.key",
            ])
            .args([
                "--tls-ca-cert-file",
                "redis-ca.crt",
                "--tls-auth-clients",
                "no",
            ])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&dir)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server, installed with the run's Redis"),
    );
    let url = format!("rediss://localhost:{port}");
    assert!(
        ready_within(
            &dir,
            &url,
            &dir.join("redis-ca.crt"),
            Duration::from_secs(20)
        )
        .await,
        "the origin never got ready on a Redis over TLS"
    );
    assert!(
        !ready_within(
            &dir,
            &url,
            &dir.join("other-ca.crt"),
            Duration::from_secs(3)
        )
        .await,
        "the origin trusted a certificate no CA it trusts signed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
