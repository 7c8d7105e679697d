//! Mail and the account's address, against a real SMTP server: aiosmtpd (Debian's
//! `python3-aiosmtpd`, which `scripts/test` installs), storing what it receives in a Maildir that
//! the tests read back.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::*;

/// The interpreter that has aiosmtpd: `AIOSMTPD_PYTHON` (scripts/test), else Debian's, which
/// has the Debian package's modules (a pyenv `python3` first on `PATH` would not).
fn aiosmtpd_python() -> String {
    std::env::var("AIOSMTPD_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into())
}
/// Longest a message may take to arrive: a retry after a dead server comes 1, 2, then 4 s later.
const MAIL_WAIT: Duration = Duration::from_secs(20);

struct MailServer {
    child: Child,
    port: u16,
    maildir: PathBuf,
}

/// One message as the SMTP server stored it.
#[derive(Debug)]
struct Mail {
    subject: String,
    text: String,
    html: String,
}

impl Mail {
    /// The token in the message's link (`…#token=<token>`).
    fn token(&self) -> String {
        let start = self.text.find("#token=").expect("a link with a token") + "#token=".len();
        self.text[start..]
            .split_whitespace()
            .next()
            .expect("token")
            .to_string()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl MailServer {
    fn start() -> Self {
        let maildir = std::env::temp_dir().join(format!(
            "edgeauth-maildir-{}",
            uuid::Uuid::new_v4().simple()
        ));
        Self::start_at(free_port(), maildir)
    }

    fn start_at(port: u16, maildir: PathBuf) -> Self {
        let mut child = Command::new(aiosmtpd_python())
            .args(["-m", "aiosmtpd", "-n", "-u", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("aiosmtpd: run scripts/test, which installs python3-aiosmtpd");
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("aiosmtpd exited ({status}): is python3-aiosmtpd installed?");
            }
            assert!(Instant::now() < deadline, "aiosmtpd did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            maildir,
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The same server again: same port, same mailbox.
    fn restart(&mut self) {
        self.stop();
        let again = Self::start_at(self.port, self.maildir.clone());
        // The old value's drop finds its process stopped already.
        drop(std::mem::replace(self, again));
    }

    /// `mail` configuration pointing at this server.
    fn settings(&self) -> String {
        json!({
            "smtp_host": "127.0.0.1",
            "smtp_port": self.port,
            "tls": "none",
            "from": "Example <no-reply@auth.example.test>",
            "link_base_url": "https://app.example.test",
        })
        .to_string()
    }

    /// Every message to `to` received so far, oldest first.
    fn received(&self, to: &str) -> Vec<Mail> {
        let mut files = Vec::new();
        for dir in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.maildir.join(dir)) else {
                continue;
            };
            files.extend(entries.flatten().map(|e| e.path()));
        }
        // Maildir names start `<seconds>.M<microseconds>P…`, the microseconds unpadded.
        let arrival = |path: &PathBuf| -> (u64, u64) {
            let name = path.file_name().map(|n| n.to_string_lossy().to_string());
            let name = name.unwrap_or_default();
            let (seconds, rest) = name.split_once(".M").unwrap_or(("0", "0"));
            let micros = rest.split('P').next().unwrap_or("0");
            (seconds.parse().unwrap_or(0), micros.parse().unwrap_or(0))
        };
        files.sort_by_key(arrival);
        let mut found = Vec::new();
        for path in files {
            let Ok(raw) = std::fs::read(&path) else {
                continue;
            };
            let message = mail_parser::MessageParser::default()
                .parse(&raw)
                .expect("a MIME message");
            let recipient = message
                .header_raw("X-RcptTo")
                .unwrap_or_default()
                .trim()
                .to_string();
            if recipient == to {
                found.push(Mail {
                    subject: message.subject().unwrap_or_default().to_string(),
                    text: message.body_text(0).unwrap_or_default().to_string(),
                    html: message.body_html(0).unwrap_or_default().to_string(),
                });
            }
        }
        found
    }

    /// Waits until `count` messages to `to` have arrived, and returns them.
    async fn wait_for(&self, to: &str, count: usize) -> Vec<Mail> {
        let deadline = Instant::now() + MAIL_WAIT;
        loop {
            let received = self.received(to);
            if received.len() >= count {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "{count} message(s) to {to} expected, {} arrived",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for MailServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An origin that mails through `server`, with `extra` configuration.
async fn mailing_origin(server: &MailServer, extra: &[(&str, &str)]) -> Origin {
    let settings = server.settings();
    let mut env = vec![("EDGEAUTH_MAIL", settings.as_str())];
    env.extend_from_slice(extra);
    origin_with(&env).await
}

impl Origin {
    async fn profile(&self, email: &str, password: &str) -> Value {
        let login = self.login(email, password).await;
        assert_eq!(login.status, StatusCode::OK, "{}", login.body);
        let token = login.body["access_token"].as_str().expect("token");
        let me = self.with_bearer("GET", "/v1/me", token, None).await;
        assert_eq!(me.status, StatusCode::OK, "{}", me.body);
        me.body
    }

    async fn scopes_after_login(&self, email: &str, password: &str) -> String {
        let login = self.login(email, password).await;
        assert_eq!(login.status, StatusCode::OK, "{}", login.body);
        let token = login.body["access_token"].as_str().expect("token");
        let payload = token.split('.').nth(1).expect("payload");
        let claims: Value =
            serde_json::from_slice(&base64ct::Base64UrlUnpadded::decode_vec(payload).expect("b64"))
                .expect("json");
        claims["scope"].as_str().unwrap_or_default().to_string()
    }
}

const PASSWORD: &str = "a passphrase of mine";

#[tokio::test]
async fn a_new_account_is_mailed_a_link_that_verifies_its_address_once() {
    let mail = MailServer::start();
    let o = mailing_origin(
        &mail,
        &[(
            "EDGEAUTH_EMAIL_VERIFICATION",
            r#"{"verified_scopes":["profile"]}"#,
        )],
    )
    .await;
    let r = o.register("Vera@Example.com", PASSWORD).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert!(r.body.get("user_id").is_none(), "{}", r.body);

    let sent = mail.wait_for("vera@example.com", 1).await;
    assert_eq!(sent[0].subject, "Verify your email address");
    assert!(
        sent[0]
            .text
            .contains("https://app.example.test/verify-email#token="),
        "{}",
        sent[0].text
    );
    assert!(sent[0]
        .html
        .contains("href=\"https://app.example.test/verify-email#token="));
    let token = sent[0].token();

    // Before: the account logs in (the default), without the scope that waits for the address.
    assert_eq!(
        o.profile("vera@example.com", PASSWORD).await["email_verified"],
        false
    );
    assert_eq!(o.scopes_after_login("vera@example.com", PASSWORD).await, "");

    let verified = o.post("/v1/email/verify", json!({"token": token})).await;
    assert_eq!(verified.status, StatusCode::NO_CONTENT, "{}", verified.body);
    assert_eq!(
        o.profile("vera@example.com", PASSWORD).await["email_verified"],
        true
    );
    assert_eq!(
        o.scopes_after_login("vera@example.com", PASSWORD).await,
        "profile"
    );

    // Once only, and nothing that is not the link's token.
    let again = o.post("/v1/email/verify", json!({"token": token})).await;
    assert_eq!(
        (again.status, again.body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_link"))
    );
    for bad in [
        "",
        "not a token",
        &token[..token.len() - 2],
        &format!("{token}x"),
    ] {
        let r = o.post("/v1/email/verify", json!({"token": bad})).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_link")),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn register_answers_alike_for_a_taken_address_and_mails_its_owner_instead() {
    let mail = MailServer::start();
    let o = mailing_origin(&mail, &[]).await;
    let new = o.register("owen@example.com", PASSWORD).await;
    mail.wait_for("owen@example.com", 1).await;
    let taken = o
        .register("OWEN@example.com", "someone else's passphrase")
        .await;
    assert_eq!(
        (
            taken.status,
            &taken.body,
            taken.headers.get(header::SET_COOKIE)
        ),
        (new.status, &new.body, None)
    );
    assert_eq!(new.status, StatusCode::ACCEPTED);

    let sent = mail.wait_for("owen@example.com", 2).await;
    let subjects: Vec<&str> = sent.iter().map(|m| m.subject.as_str()).collect();
    assert!(
        subjects.contains(&"Someone tried to register with your address"),
        "{subjects:?}"
    );
    // The second attempt changed nothing: the owner's password still works, the other does not.
    assert_eq!(
        o.login("owen@example.com", PASSWORD).await.status,
        StatusCode::OK
    );
    assert_eq!(
        o.login("owen@example.com", "someone else's passphrase")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_resent_link_replaces_the_last_and_unknown_addresses_answer_alike() {
    let mail = MailServer::start();
    let o = mailing_origin(&mail, &[]).await;
    o.register("rita@example.com", PASSWORD).await;
    let first = mail.wait_for("rita@example.com", 1).await[0].token();

    let unknown = o
        .post(
            "/v1/email/verify/resend",
            json!({"email": "nobody@example.com"}),
        )
        .await;
    let known = o
        .post(
            "/v1/email/verify/resend",
            json!({"email": "Rita@example.com"}),
        )
        .await;
    assert_eq!(known.status, StatusCode::ACCEPTED, "{}", known.body);
    assert_eq!((unknown.status, &unknown.body), (known.status, &known.body));
    let sent = mail.wait_for("rita@example.com", 2).await;
    let second = sent
        .iter()
        .map(Mail::token)
        .find(|t| *t != first)
        .expect("a new link");
    assert!(mail.received("nobody@example.com").is_empty());

    // The first link was replaced by the second.
    let r = o.post("/v1/email/verify", json!({"token": first})).await;
    assert_eq!(r.body["error"], "invalid_link", "{}", r.body);
    let r = o.post("/v1/email/verify", json!({"token": second})).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);

    // A verified address is sent no more links.
    let r = o
        .post(
            "/v1/email/verify/resend",
            json!({"email": "rita@example.com"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = o
        .post(
            "/v1/email/verify/resend",
            json!({"email": "not an address"}),
        )
        .await;
    assert_eq!(r.body["field"], "email", "{}", r.body);
}

#[tokio::test]
async fn a_link_stops_working_when_it_expires() {
    let mail = MailServer::start();
    let o = mailing_origin(
        &mail,
        &[("EDGEAUTH_EMAIL_VERIFICATION", r#"{"link_ttl_seconds":600}"#)],
    )
    .await;
    o.register("exp@example.com", PASSWORD).await;
    let token = mail.wait_for("exp@example.com", 1).await[0].token();
    let (user, hash) = edgeauth_origin::api::email::parse_link(&token).expect("a link token");
    let now = edgeauth_origin::clock::now();
    // Asked as the store would be 601 s from now; the link itself is left for the next step.
    assert!(!o
        .state
        .users
        .verify_email(user, &hash, now + 601)
        .await
        .expect("store"));
    let r = o.post("/v1/email/verify", json!({"token": token})).await;
    assert_eq!(
        r.status,
        StatusCode::NO_CONTENT,
        "still live now: {}",
        r.body
    );
}

#[tokio::test]
async fn only_verified_accounts_log_in_when_so_configured() {
    let mail = MailServer::start();
    let o = mailing_origin(
        &mail,
        &[(
            "EDGEAUTH_EMAIL_VERIFICATION",
            r#"{"login_unverified":false}"#,
        )],
    )
    .await;
    o.register("una@example.com", PASSWORD).await;
    let token = mail.wait_for("una@example.com", 1).await[0].token();
    let r = o.login("una@example.com", PASSWORD).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("email_not_verified")),
        "{}",
        r.body
    );
    assert_eq!(r.headers.get(header::SET_COOKIE), None);
    // A wrong password is told nothing of the address.
    let r = o.login("una@example.com", "not the passphrase").await;
    assert_eq!(r.body["error"], "invalid_credentials");
    o.post("/v1/email/verify", json!({"token": token})).await;
    assert_eq!(
        o.login("una@example.com", PASSWORD).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn one_address_gets_no_more_mail_than_its_budget() {
    let mail = MailServer::start();
    let o = mailing_origin(
        &mail,
        &[(
            "EDGEAUTH_RATE_LIMITS",
            r#"{"mail_per_address":{"count":2,"per_seconds":3600}}"#,
        )],
    )
    .await;
    o.register("bud@example.com", PASSWORD).await;
    mail.wait_for("bud@example.com", 1).await;
    for _ in 0..4 {
        let r = o
            .post(
                "/v1/email/verify/resend",
                json!({"email": "bud@example.com"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
    }
    mail.wait_for("bud@example.com", 3).await;
    // The other two resends were answered alike and sent nothing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(mail.received("bud@example.com").len(), 3);
}

#[tokio::test]
async fn a_dead_mail_server_fails_no_request_and_its_mail_goes_out_when_it_is_back() {
    let mut mail = MailServer::start();
    let o = mailing_origin(&mail, &[]).await;
    mail.stop();
    let r = o.register("dana@example.com", PASSWORD).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    // The first attempt fails (nothing listens) and is retried a second later, then two.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    mail.restart();
    let sent = mail.wait_for("dana@example.com", 1).await;
    assert_eq!(sent[0].subject, "Verify your email address");
    let token = sent[0].token();
    let r = o.post("/v1/email/verify", json!({"token": token})).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
}

#[tokio::test]
async fn without_mail_register_answers_201_and_mail_endpoints_are_not_enabled() {
    let o = origin().await;
    let r = o.register("plain@example.com", PASSWORD).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = o
        .post(
            "/v1/email/verify/resend",
            json!({"email": "plain@example.com"}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_enabled"))
    );
}

impl Origin {
    async fn forgot(&self, email: &str) -> Reply {
        self.post("/v1/password/forgot", json!({"email": email}))
            .await
    }

    async fn reset(&self, token: &str, password: &str) -> Reply {
        self.post(
            "/v1/password/reset",
            json!({"token": token, "password": password}),
        )
        .await
    }
}

/// The token of the newest message to `to` with `subject`, once `count` messages have arrived.
async fn token_of(mail: &MailServer, to: &str, count: usize, subject: &str) -> String {
    let sent = mail.wait_for(to, count).await;
    sent.iter()
        .rev()
        .find(|m| m.subject == subject)
        .unwrap_or_else(|| panic!("no {subject:?} among {sent:?}"))
        .token()
}

const NEW_PASSWORD: &str = "a brand new passphrase";

#[tokio::test]
async fn a_reset_link_sets_a_new_password_once_and_ends_every_session() {
    let mail = MailServer::start();
    let o = mailing_origin(&mail, &[]).await;
    o.register("rosa@example.com", PASSWORD).await;
    mail.wait_for("rosa@example.com", 1).await;
    let login = o
        .post(
            "/v1/login",
            json!({"email": "rosa@example.com", "password": PASSWORD, "refresh_token_in_body": true}),
        )
        .await;
    let access = login.body["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let refresh = login.body["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_string();

    let r = o.forgot("Rosa@Example.com").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let token = token_of(&mail, "rosa@example.com", 2, "Reset your password").await;
    // A password the origin refuses loses nothing: the link still works after it.
    let r = o.reset(&token, "short").await;
    assert_eq!(r.body["field"], "password", "{}", r.body);

    let r = o.reset(&token, NEW_PASSWORD).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(
        o.login("rosa@example.com", PASSWORD).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        o.login("rosa@example.com", NEW_PASSWORD).await.status,
        StatusCode::OK
    );
    // Every session of before is over: its access token and its refresh token are refused.
    let me = o.with_bearer("GET", "/v1/me", &access, None).await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED, "{}", me.body);
    let r = o
        .post("/v1/token/refresh", json!({"refresh_token": refresh}))
        .await;
    assert_eq!(r.body["error"], "invalid_grant", "{}", r.body);
    // The owner is told.
    let sent = mail.wait_for("rosa@example.com", 3).await;
    assert!(
        sent.iter()
            .any(|m| m.subject == "Your password was changed"),
        "{sent:?}"
    );
    // The link is spent.
    let r = o.reset(&token, "yet another passphrase").await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_link"))
    );
    assert_eq!(
        o.login("rosa@example.com", NEW_PASSWORD).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_later_reset_link_replaces_the_earlier_and_unknown_addresses_answer_alike() {
    let mail = MailServer::start();
    let o = mailing_origin(&mail, &[]).await;
    o.register("leo@example.com", PASSWORD).await;
    mail.wait_for("leo@example.com", 1).await;
    let known = o.forgot("leo@example.com").await;
    let first = token_of(&mail, "leo@example.com", 2, "Reset your password").await;
    let unknown = o.forgot("nobody@example.com").await;
    assert_eq!((unknown.status, &unknown.body), (known.status, &known.body));
    o.forgot("leo@example.com").await;
    let second = token_of(&mail, "leo@example.com", 3, "Reset your password").await;
    assert_ne!(first, second);
    assert!(mail.received("nobody@example.com").is_empty());

    let r = o.reset(&first, NEW_PASSWORD).await;
    assert_eq!(r.body["error"], "invalid_link", "replaced: {}", r.body);
    assert_eq!(
        o.login("leo@example.com", PASSWORD).await.status,
        StatusCode::OK,
        "the replaced link changed nothing"
    );
    let r = o.reset(&second, NEW_PASSWORD).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
}

#[tokio::test]
async fn a_reset_link_stops_working_when_it_expires() {
    let mail = MailServer::start();
    let o = mailing_origin(
        &mail,
        &[("EDGEAUTH_PASSWORD_RESET", r#"{"link_ttl_seconds":300}"#)],
    )
    .await;
    o.register("max@example.com", PASSWORD).await;
    mail.wait_for("max@example.com", 1).await;
    o.forgot("max@example.com").await;
    let token = token_of(&mail, "max@example.com", 2, "Reset your password").await;
    let (user, hash) = edgeauth_origin::api::email::parse_link(&token).expect("a link token");
    let now = edgeauth_origin::clock::now();
    let later = o
        .state
        .users
        .reset_password(user, &hash, now + 301, "$argon2id$unused")
        .await
        .expect("store");
    assert_eq!(later, None, "301 s on, the link is expired");
    assert_eq!(
        o.login("max@example.com", PASSWORD).await.status,
        StatusCode::OK,
        "and nothing changed"
    );
}

#[tokio::test]
async fn a_verification_link_does_not_reset_a_password() {
    let mail = MailServer::start();
    let o = mailing_origin(&mail, &[]).await;
    o.register("ivy@example.com", PASSWORD).await;
    let verify = mail.wait_for("ivy@example.com", 1).await[0].token();
    let r = o.reset(&verify, NEW_PASSWORD).await;
    assert_eq!(r.body["error"], "invalid_link", "{}", r.body);
    o.forgot("ivy@example.com").await;
    let reset = token_of(&mail, "ivy@example.com", 2, "Reset your password").await;
    let r = o.post("/v1/email/verify", json!({"token": reset})).await;
    assert_eq!(r.body["error"], "invalid_link", "{}", r.body);
    assert_eq!(
        o.login("ivy@example.com", PASSWORD).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_password_change_needs_the_current_one_and_ends_the_other_sessions_only() {
    let mail = MailServer::start();
    let o = mailing_origin(&mail, &[]).await;
    o.register("cleo@example.com", PASSWORD).await;
    mail.wait_for("cleo@example.com", 1).await;
    let session = || async {
        let r = o
            .post(
                "/v1/login",
                json!({"email": "cleo@example.com", "password": PASSWORD, "refresh_token_in_body": true}),
            )
            .await;
        let field = |name: &str| r.body[name].as_str().expect(name).to_string();
        (field("access_token"), field("refresh_token"))
    };
    let (here, here_refresh) = session().await;
    let (other, other_refresh) = session().await;
    let change = |current: &str| {
        o.with_bearer(
            "POST",
            "/v1/me/password",
            &here,
            Some(json!({"current_password": current, "new_password": NEW_PASSWORD})),
        )
    };

    // A stolen access token alone changes nothing.
    let r = change("a guess").await;
    assert_eq!(r.body["error"], "invalid_credentials", "{}", r.body);
    assert_eq!(
        o.with_bearer("GET", "/v1/me", &other, None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        o.login("cleo@example.com", PASSWORD).await.status,
        StatusCode::OK
    );

    let r = change(PASSWORD).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(
        o.login("cleo@example.com", PASSWORD).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        o.login("cleo@example.com", NEW_PASSWORD).await.status,
        StatusCode::OK
    );
    // The other session is over, its access and refresh tokens both; this one goes on.
    assert_eq!(
        o.with_bearer("GET", "/v1/me", &other, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = o
        .post("/v1/token/refresh", json!({"refresh_token": other_refresh}))
        .await;
    assert_eq!(r.body["error"], "invalid_grant", "{}", r.body);
    assert_eq!(
        o.with_bearer("GET", "/v1/me", &here, None).await.status,
        StatusCode::OK
    );
    let r = o
        .post("/v1/token/refresh", json!({"refresh_token": here_refresh}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let sent = mail.wait_for("cleo@example.com", 2).await;
    assert!(
        sent.iter()
            .any(|m| m.subject == "Your password was changed"),
        "{sent:?}"
    );
}

#[tokio::test]
async fn the_owner_is_told_when_one_time_codes_lock_their_factor() {
    let mail = MailServer::start();
    let o = mailing_origin(&mail, &[WIDE_BUDGETS]).await;
    let (secret, _) = enrolled(&o, "tom@example.com", PASSWORD).await;
    for _ in 0..7 {
        o.post(
            "/v1/login",
            json!({"email": "tom@example.com", "password": PASSWORD, "otp": wrong_code(&secret)}),
        )
        .await;
    }
    mail.wait_for("tom@example.com", 2).await;
    // Queued behind it, a second notice would have arrived by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = mail.received("tom@example.com");
    let told: Vec<&Mail> = sent
        .iter()
        .filter(|m| m.subject == "Someone is trying to sign in to your account")
        .collect();
    assert_eq!(told.len(), 1, "once per lock: {sent:?}");
    assert!(told[0].text.contains("15 minutes"), "{}", told[0].text);
}

#[tokio::test]
async fn the_owner_is_told_when_the_factor_goes_and_when_the_account_does() {
    let mail = MailServer::start();
    let o = mailing_origin(&mail, &[]).await;
    let (secret, _) = enrolled(&o, "gil@example.com", "gil's passphrase").await;
    let now = u64::try_from(edgeauth_origin::clock::now()).expect("time");
    let code = edgeauth_origin::mfa::code_at(&secret, now + 30);
    let login = o
        .post(
            "/v1/login",
            json!({"email": "gil@example.com", "password": "gil's passphrase", "otp": code}),
        )
        .await;
    let token = login.body["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let r = o
        .with_bearer("DELETE", "/v1/me/mfa/totp", &token, Some(json!({})))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    // The verification link, then the notice.
    let received = mail.wait_for("gil@example.com", 2).await;
    assert_eq!(received[1].subject, "Two-step verification was turned off");

    let r = o
        .with_bearer("DELETE", "/v1/me", &token, Some(json!({})))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    let received = mail.wait_for("gil@example.com", 3).await;
    assert_eq!(received[2].subject, "Your account was deleted");
    assert!(
        !received[2].text.contains("#token="),
        "{}",
        received[2].text
    );
    // The address is free again: registering it makes a new account (its link), not a notice
    // that it is taken.
    let again = o.register("gil@example.com", "gil's new passphrase").await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    let received = mail.wait_for("gil@example.com", 4).await;
    assert_eq!(received[3].subject, "Verify your email address");
}
