//! A real SMTP server for the origin's mail: aiosmtpd (Debian's `python3-aiosmtpd`, which
//! `scripts/test` installs), storing what it receives in a Maildir that the tests read back.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::json;
use tokio::process::{Child, Command};

/// Longest a message may take to arrive (the origin sends from a queue, after its answer).
const MAIL_WAIT: Duration = Duration::from_secs(20);

/// aiosmtpd on a loopback port, stopped when dropped.
#[derive(Debug)]
pub struct MailServer {
    _child: Child,
    port: u16,
    maildir: PathBuf,
}

/// One message as the server stored it.
#[derive(Debug, Clone)]
pub struct Mail {
    /// `Subject`.
    pub subject: String,
    /// The plain-text part.
    pub text: String,
}

impl Mail {
    /// The first link in the message that starts with `base`.
    pub fn link(&self, base: &str) -> Option<String> {
        let start = self.text.find(base)?;
        self.text[start..]
            .split_whitespace()
            .next()
            .map(str::to_string)
    }
}

impl MailServer {
    /// Starts aiosmtpd with a Maildir under `dir`.
    pub async fn start(dir: &Path) -> Self {
        // Debian's interpreter has the Debian package's modules; a pyenv `python3` first on
        // `PATH` would not (`scripts/test` exports `AIOSMTPD_PYTHON`).
        let python = std::env::var("AIOSMTPD_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
        let port = crate::free_port();
        let maildir = dir.join("maildir");
        let mut command = Command::new(python);
        command
            .args(["-m", "aiosmtpd", "-n", "-u", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir);
        let child = crate::start_listening(command, dir, "aiosmtpd", port).await;
        Self {
            _child: child,
            port,
            maildir,
        }
    }

    /// The origin's `mail` configuration for this server, with links to `link_base_url`.
    pub fn origin_settings(&self, link_base_url: &str) -> String {
        json!({
            "smtp_host": "127.0.0.1",
            "smtp_port": self.port,
            "tls": "none",
            "from": "edgeauth e2e <no-reply@auth.e2e.test>",
            "link_base_url": link_base_url,
        })
        .to_string()
    }

    /// Every message to `to` received so far, in no particular order.
    pub fn received(&self, to: &str) -> Vec<Mail> {
        let mut found = Vec::new();
        for dir in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.maildir.join(dir)) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(raw) = std::fs::read(entry.path()) else {
                    continue;
                };
                let Some(message) = mail_parser::MessageParser::default().parse(&raw) else {
                    continue;
                };
                let recipient = message.header_raw("X-RcptTo").unwrap_or_default().trim();
                if recipient == to {
                    found.push(Mail {
                        subject: message.subject().unwrap_or_default().to_string(),
                        text: message.body_text(0).unwrap_or_default().to_string(),
                    });
                }
            }
        }
        found
    }

    /// Waits for the first message to `to` with a link starting with `base`; returns the link.
    pub async fn wait_for_link(&self, to: &str, base: &str) -> String {
        let deadline = Instant::now() + MAIL_WAIT;
        loop {
            if let Some(link) = self.received(to).iter().find_map(|m| m.link(base)) {
                return link;
            }
            assert!(
                Instant::now() < deadline,
                "no mail to {to} with a link to {base} within {MAIL_WAIT:?}: {:?}",
                self.received(to)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
