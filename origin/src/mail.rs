//! Outgoing mail: verification links, password-reset links and security notices, sent over SMTP
//! (configuration `mail`) from a background queue.
//!
//! A request never waits for the mail server: [`Mailer::send`] puts the message on an in-memory
//! queue and returns. One task delivers the queue; a message the server did not take is tried
//! again after 1 s, 2 s, 4 s … (at most 5 min apart) until `give_up_after_seconds` have passed
//! since it was queued, so a mail server that is down or slow fails no request and loses no
//! message while the origin runs. A message refused for good (a permanent 5xx reply, an address
//! the builder refuses) or given up is logged and counted (`edgeauth_mail_messages_total` with
//! `outcome="failed"`). The queue is in memory: messages still queued when the process stops
//! are lost, which costs a user a resend, never an account.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use lettre::{
    message::{Mailbox, MultiPart},
    transport::smtp::authentication::Credentials,
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
};
use serde::Deserialize;
use tokio::{sync::mpsc, time::Instant};

use crate::metrics::METRICS;

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailTls {
    /// Plain SMTP upgraded with STARTTLS, which must succeed (the submission port, 587).
    #[default]
    Starttls,
    /// TLS from the first byte (implicit TLS, port 465).
    Tls,
    /// No TLS: only to a server on the loopback interface (a local relay or a test server).
    None,
}

/// `mail`: the SMTP server and what the messages say. Without it the origin sends no mail, and
/// the flows that need mail (email verification, password reset) are off.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailSettings {
    /// The SMTP server's host name (for TLS, the name its certificate has).
    pub smtp_host: String,
    /// Its port; default 587 for `starttls`, 465 for `tls`, 25 for `none`.
    #[serde(default)]
    pub smtp_port: Option<u16>,
    /// Default `starttls`.
    #[serde(default)]
    pub tls: MailTls,
    /// SMTP AUTH user name (Amazon SES: the SMTP credentials' user name); with `password`.
    #[serde(default)]
    pub username: Option<String>,
    /// SMTP AUTH password.
    #[serde(default)]
    pub password: Option<String>,
    /// The sender, e.g. `Example <no-reply@example.com>`.
    pub from: String,
    /// Where the links in messages point: the web app's origin, e.g. `https://app.example.com`.
    /// A verification link is `<link_base_url>/verify-email#token=…`; the token is in the
    /// fragment, which browsers never send to a server or in a `Referer`.
    pub link_base_url: String,
    /// How long a message is retried before it is given up (default 1 day).
    #[serde(default = "default_give_up")]
    pub give_up_after_seconds: u32,
}

impl std::fmt::Debug for MailSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password, wherever the configuration is printed.
        f.debug_struct("MailSettings")
            .field("smtp_host", &self.smtp_host)
            .field("smtp_port", &self.smtp_port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("from", &self.from)
            .field("link_base_url", &self.link_base_url)
            .field("give_up_after_seconds", &self.give_up_after_seconds)
            .finish()
    }
}

fn default_give_up() -> u32 {
    24 * 3600
}

impl MailSettings {
    /// Checks what start-up can: the sender parses, the link base is an http(s) origin without a
    /// trailing slash, credentials come in pairs and never go out without TLS.
    pub fn validate(&self) -> Result<(), String> {
        if self.smtp_host.trim().is_empty() {
            return Err("smtp_host must not be empty".into());
        }
        self.from
            .parse::<Mailbox>()
            .map_err(|e| format!("from is not a mailbox ({e})"))?;
        let base = &self.link_base_url;
        if !(base.starts_with("https://") || base.starts_with("http://")) || base.ends_with('/') {
            return Err("link_base_url must be an http(s) URL without a trailing slash".into());
        }
        if self.username.is_some() != self.password.is_some() {
            return Err("username and password go together".into());
        }
        if self.tls == MailTls::None && !is_loopback(&self.smtp_host) {
            return Err(
                "tls `none` is only for a server on the loopback interface (links in mail are credentials)"
                    .into(),
            );
        }
        if !(60..=7 * 24 * 3600).contains(&self.give_up_after_seconds) {
            return Err("give_up_after_seconds must be between 1 minute and 7 days".into());
        }
        Ok(())
    }

    fn port(&self) -> u16 {
        self.smtp_port.unwrap_or(match self.tls {
            MailTls::Starttls => 587,
            MailTls::Tls => 465,
            MailTls::None => 25,
        })
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A message to one user, before it is rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The link that verifies the address (register, resend).
    VerifyEmail {
        /// The token for the link.
        token: String,
        /// How long the link works.
        valid_minutes: u32,
    },
    /// Someone tried to register with an address that has an account.
    AlreadyRegistered,
    /// The link that sets a new password.
    PasswordReset {
        /// The token for the link.
        token: String,
        /// How long the link works.
        valid_minutes: u32,
    },
    /// The password was changed, and every session ended.
    PasswordChanged,
    /// One-time codes for the account were refused past the limit: someone who knows the
    /// password is guessing the second factor.
    SecondFactorLocked {
        /// How long codes are refused.
        minutes: u32,
    },
    /// The account's second factor was turned off.
    SecondFactorRemoved,
    /// The account was deleted, with everything it held.
    AccountDeleted,
}

impl Notice {
    /// The template's name: the `template` label of the metrics and logs.
    pub fn template(&self) -> &'static str {
        match self {
            Self::VerifyEmail { .. } => "verify_email",
            Self::AlreadyRegistered => "already_registered",
            Self::PasswordReset { .. } => "password_reset",
            Self::PasswordChanged => "password_changed",
            Self::SecondFactorLocked { .. } => "second_factor_locked",
            Self::SecondFactorRemoved => "second_factor_removed",
            Self::AccountDeleted => "account_deleted",
        }
    }

    /// Subject, plain text and HTML.
    fn render(&self, base: &str) -> (String, String, String) {
        let (subject, lines, link): (&str, Vec<String>, Option<(String, &str)>) = match self {
            Self::VerifyEmail {
                token,
                valid_minutes,
            } => (
                "Verify your email address",
                vec![
                    "Someone, probably you, created an account with this address.".into(),
                    format!(
                        "Open the link below within {valid_minutes} minutes to verify it. If it \
                         was not you, ignore this message."
                    ),
                ],
                Some((
                    format!("{base}/verify-email#token={token}"),
                    "Verify my address",
                )),
            ),
            Self::AlreadyRegistered => (
                "Someone tried to register with your address",
                vec![
                    "Someone tried to create an account with this address, which already has \
                     one. Nothing was changed."
                        .into(),
                    "If it was you, log in instead, or reset your password if you forgot it. If \
                     it was not you, you can ignore this message."
                        .into(),
                ],
                Some((format!("{base}/login"), "Log in")),
            ),
            Self::PasswordReset {
                token,
                valid_minutes,
            } => (
                "Reset your password",
                vec![
                    "Someone, probably you, asked to reset the password of your account.".into(),
                    format!(
                        "Open the link below within {valid_minutes} minutes to choose a new one; \
                         it works once. If it was not you, ignore this message: your password \
                         stays as it is."
                    ),
                ],
                Some((
                    format!("{base}/reset-password#token={token}"),
                    "Choose a new password",
                )),
            ),
            Self::PasswordChanged => (
                "Your password was changed",
                vec![
                    "The password of your account was just changed, and every session of the \
                     account was logged out."
                        .into(),
                    "If it was not you, reset your password now and check your account's recent \
                     activity."
                        .into(),
                ],
                Some((format!("{base}/forgot-password"), "Reset my password")),
            ),
            Self::SecondFactorLocked { minutes } => (
                "Someone is trying to sign in to your account",
                vec![
                    "Your password was entered correctly, followed by too many wrong one-time \
                     codes. Whoever did it knows your password."
                        .into(),
                    format!(
                        "One-time codes are refused for the next {minutes} minutes. If it was not \
                         you, change your password now."
                    ),
                ],
                Some((format!("{base}/forgot-password"), "Reset my password")),
            ),
            Self::SecondFactorRemoved => (
                "Two-step verification was turned off",
                vec![
                    "The one-time codes that protected your account were just turned off: your \
                     password alone now logs in."
                        .into(),
                    "If it was not you, reset your password now and turn two-step verification \
                     on again."
                        .into(),
                ],
                Some((format!("{base}/forgot-password"), "Reset my password")),
            ),
            Self::AccountDeleted => (
                "Your account was deleted",
                vec![
                    "Your account and everything it held were just deleted, and every session of \
                     it was logged out. This address is no longer kept with it."
                        .into(),
                    "This is the last message you will get from us about it.".into(),
                ],
                None,
            ),
        };
        let mut text = lines.join("\n\n");
        let mut html = String::from("<!doctype html><html><body>");
        for line in &lines {
            html.push_str(&format!("<p>{}</p>", escape_html(line)));
        }
        if let Some((url, label)) = link {
            text.push_str(&format!("\n\n{url}\n"));
            html.push_str(&format!(
                "<p><a href=\"{}\">{}</a></p>",
                escape_html(&url),
                escape_html(label)
            ));
        }
        html.push_str("</body></html>");
        (subject.to_owned(), text, html)
    }
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Most messages queued and waiting for a retry together; past it new ones are counted as failed.
/// A day of retries at the rate limits' register budget stays far below it.
const QUEUE_LIMIT: usize = 100_000;
/// Longest one delivery attempt may take (connect, TLS, the whole SMTP dialogue).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LONGEST_RETRY: Duration = Duration::from_secs(300);

/// Why the mailer could not start.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The SMTP transport could not be set up (its TLS configuration).
    #[error("SMTP transport: {0}")]
    Transport(#[from] lettre::transport::smtp::Error),
    /// `from` is not a mailbox.
    #[error("mail `from`: {0}")]
    From(#[from] lettre::address::AddressError),
}

/// One message on its way.
#[derive(Debug)]
struct Outgoing {
    to: String,
    notice: Notice,
    queued_at: Instant,
    attempts: u32,
}

/// Sends mail without making a request wait; cheap to clone.
#[derive(Debug, Clone)]
pub struct Mailer {
    queue: Option<mpsc::UnboundedSender<Outgoing>>,
    queued: Arc<AtomicUsize>,
}

impl Mailer {
    /// A mailer that sends nothing: no `mail` configured.
    pub fn disabled() -> Self {
        Self {
            queue: None,
            queued: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Starts the delivery task for `settings` (checked by [`MailSettings::validate`]).
    pub fn start(settings: &MailSettings) -> Result<Self, MailError> {
        let builder = match settings.tls {
            MailTls::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&settings.smtp_host)?
            }
            MailTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&settings.smtp_host)?,
            MailTls::None => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.smtp_host)
            }
        };
        let mut builder = builder.port(settings.port()).timeout(Some(ATTEMPT_TIMEOUT));
        if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        let from: Mailbox = settings.from.parse()?;
        let (sender, receiver) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let delivery = Delivery {
            transport: builder.build(),
            from,
            link_base_url: settings.link_base_url.clone(),
            give_up_after: Duration::from_secs(u64::from(settings.give_up_after_seconds)),
            queued: queued.clone(),
        };
        tokio::spawn(delivery.run(receiver));
        Ok(Self {
            queue: Some(sender),
            queued,
        })
    }

    /// Whether mail goes anywhere.
    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues `notice` for `to`. Never waits and never fails the caller: a message that cannot
    /// be queued is logged and counted.
    pub fn send(&self, to: &str, notice: Notice) {
        let Some(queue) = &self.queue else {
            tracing::debug!(
                template = notice.template(),
                "no mail configured: message not sent"
            );
            return;
        };
        let template = notice.template();
        if self.queued.fetch_add(1, Ordering::AcqRel) >= QUEUE_LIMIT {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            tracing::error!(
                event = "mail_failed",
                template,
                "mail queue full: message dropped"
            );
            METRICS.mail(template, "failed");
            return;
        }
        METRICS.mail_queue(1);
        let outgoing = Outgoing {
            to: to.to_owned(),
            notice,
            queued_at: Instant::now(),
            attempts: 0,
        };
        if queue.send(outgoing).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            METRICS.mail_queue(-1);
            tracing::error!(
                event = "mail_failed",
                template,
                "mail task gone: message dropped"
            );
            METRICS.mail(template, "failed");
        }
    }
}

/// The delivery task's state.
struct Delivery {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    link_base_url: String,
    give_up_after: Duration,
    queued: Arc<AtomicUsize>,
}

impl Delivery {
    async fn run(self, mut receiver: mpsc::UnboundedReceiver<Outgoing>) {
        // Messages waiting for their next attempt, by when it is due (and a tie-breaker).
        let mut waiting: BTreeMap<(Instant, u64), Outgoing> = BTreeMap::new();
        let mut order = 0_u64;
        let mut open = true;
        loop {
            let due = waiting.keys().next().map(|(at, _)| *at);
            let next = tokio::select! {
                received = receiver.recv(), if open => match received {
                    Some(message) => message,
                    None => {
                        open = false;
                        continue;
                    }
                },
                () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    match waiting.pop_first() {
                        Some((_, message)) => message,
                        None => continue,
                    }
                }
                else => return,
            };
            if let Some(retry) = self.attempt(next).await {
                order += 1;
                waiting.insert((retry.0, order), retry.1);
            }
        }
    }

    /// One attempt; the message and when to try again if it is to be retried.
    async fn attempt(&self, mut message: Outgoing) -> Option<(Instant, Outgoing)> {
        let template = message.notice.template();
        message.attempts += 1;
        let outcome = match self.build(&message) {
            Ok(email) => self.transport.send(email).await.map(drop),
            Err(problem) => {
                tracing::error!(event = "mail_failed", template, %problem, "message not built");
                return self.done(template, "failed");
            }
        };
        match outcome {
            Ok(()) => {
                tracing::info!(event = "mail_sent", template, attempts = message.attempts);
                self.done(template, "sent")
            }
            Err(error) if error.is_permanent() => {
                tracing::error!(event = "mail_failed", template, %error, "refused by the mail server");
                self.done(template, "failed")
            }
            Err(error) if message.queued_at.elapsed() >= self.give_up_after => {
                tracing::error!(event = "mail_failed", template, %error, attempts = message.attempts, "given up");
                self.done(template, "failed")
            }
            Err(error) => {
                METRICS.mail_send_error();
                let wait = FIRST_RETRY
                    .saturating_mul(2_u32.saturating_pow(message.attempts - 1))
                    .min(LONGEST_RETRY);
                tracing::warn!(event = "mail_retry", template, %error, attempts = message.attempts, retry_in_ms = wait.as_millis() as u64);
                Some((Instant::now() + wait, message))
            }
        }
    }

    fn done(&self, template: &'static str, outcome: &'static str) -> Option<(Instant, Outgoing)> {
        self.queued.fetch_sub(1, Ordering::AcqRel);
        METRICS.mail_queue(-1);
        METRICS.mail(template, outcome);
        None
    }

    fn build(&self, message: &Outgoing) -> Result<Message, String> {
        let to: Mailbox = message.to.parse().map_err(|e| format!("recipient: {e}"))?;
        let (subject, text, html) = message.notice.render(&self.link_base_url);
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .multipart(MultiPart::alternative_plain_html(text, html))
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> MailSettings {
        MailSettings {
            smtp_host: "email-smtp.eu-west-1.amazonaws.com".into(),
            smtp_port: None,
            tls: MailTls::Starttls,
            username: Some("AKIA…".into()),
            password: Some("secret".into()),
            from: "Example <no-reply@example.com>".into(),
            link_base_url: "https://app.example.com".into(),
            give_up_after_seconds: default_give_up(),
        }
    }

    #[test]
    fn settings_refuse_what_would_leak_or_break_links() {
        assert_eq!(settings().validate(), Ok(()));
        assert_eq!(settings().port(), 587);
        let plain_remote = MailSettings {
            tls: MailTls::None,
            ..settings()
        };
        assert!(plain_remote.validate().is_err());
        let plain_local = MailSettings {
            smtp_host: "127.0.0.1".into(),
            ..plain_remote
        };
        assert_eq!(plain_local.validate(), Ok(()));
        assert_eq!(plain_local.port(), 25);
        for bad in [
            MailSettings {
                link_base_url: "https://app.example.com/".into(),
                ..settings()
            },
            MailSettings {
                link_base_url: "javascript:alert(1)".into(),
                ..settings()
            },
            MailSettings {
                from: "not a mailbox".into(),
                ..settings()
            },
            MailSettings {
                password: None,
                ..settings()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_link_is_in_the_fragment_and_html_is_escaped() {
        let notice = Notice::VerifyEmail {
            token: "tok".into(),
            valid_minutes: 60,
        };
        let (subject, text, html) = notice.render("https://app.example.com");
        assert_eq!(subject, "Verify your email address");
        assert!(text.contains("https://app.example.com/verify-email#token=tok"));
        assert!(text.contains("60 minutes"));
        assert!(html.contains("href=\"https://app.example.com/verify-email#token=tok\""));
        let (_, _, html) = notice.render("https://a.example/?x=\"<b>");
        assert!(html.contains("&quot;&lt;b&gt;"), "{html}");
        assert!(!html.contains("\"<b>"));
    }
}
