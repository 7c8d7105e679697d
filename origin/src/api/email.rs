//! The account's address: the links that verify it, and what mail to one address may cost.
//!
//! A link's token is the account's id and 256 random bits, base64url: the id says which account
//! to ask, and only the SHA-256 of the whole token is stored, so the table does not hold a live
//! link. Each account has at most one live link per purpose; a new one replaces the last.

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use base64ct::{Base64UrlUnpadded, Encoding};
use rand_core::{OsRng, RngCore};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{accounts::normalise_email, no_content, ApiJson};
use crate::{
    audit::RequestFacts,
    clock::now,
    error::ApiError,
    mail::Notice,
    rate_limit::Decision,
    state::AppState,
    store::{LinkPurpose, LinkToken, UserId},
};

/// Bytes of a link token: the account's id, then the random part.
const LINK_BYTES: usize = 16 + 32;

/// A new link token for `user` that works for `ttl_seconds`, and what the store keeps of it.
pub(crate) fn new_link(user: UserId, ttl_seconds: u32, now: i64) -> (String, LinkToken) {
    let mut bytes = [0u8; LINK_BYTES];
    bytes[..16].copy_from_slice(user.0.as_bytes());
    OsRng.fill_bytes(&mut bytes[16..]);
    let token = Base64UrlUnpadded::encode_string(&bytes);
    let link = LinkToken {
        hash: Sha256::digest(token.as_bytes()).into(),
        expires_at: now + i64::from(ttl_seconds),
    };
    (token, link)
}

/// The account a link token names and the hash to compare; `None` for text that is no token.
pub fn parse_link(token: &str) -> Option<(UserId, [u8; 32])> {
    let mut bytes = [0u8; LINK_BYTES];
    let decoded = Base64UrlUnpadded::decode(token.as_bytes(), &mut bytes).ok()?;
    if decoded.len() != LINK_BYTES {
        return None;
    }
    let id = uuid::Uuid::from_slice(&bytes[..16]).ok()?;
    Some((UserId(id), Sha256::digest(token.as_bytes()).into()))
}

/// Takes one message from the address's budget (`rate_limits.mail_per_address`), keyed by its
/// pseudonym: `false` when it is spent, and the message is not sent. A limiter that does not
/// answer lets the message go: mail is a nuisance to flood, not a secret to guess.
pub(crate) async fn address_may_receive(state: &AppState, email: &str) -> bool {
    let key = format!("mail_address:{}", state.pseudonyms.of(email));
    match state
        .rate_limiter
        .acquire(&key, state.config.rate_limits.mail_per_address)
        .await
    {
        Ok(Decision::Allowed) => true,
        Ok(Decision::Limited { .. }) => {
            tracing::info!(
                event = "mail_address_limited",
                "no mail: the address's budget is spent"
            );
            false
        }
        Err(error) => {
            tracing::warn!(event = "rate_limiter_unavailable", %error, "mail let through");
            true
        }
    }
}

/// The answer of every endpoint that mails a link to an address it was given, whether or not the
/// address has an account: 202, the same body.
pub(crate) fn mail_accepted() -> Response {
    (
        StatusCode::ACCEPTED,
        Json(json!({
            "status": "accepted",
            "message": "if the address can receive this mail, it is on its way",
        })),
    )
        .into_response()
}

/// `POST /v1/email/verify` body: the token from the link.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkBody {
    /// The `token` of the link's fragment.
    pub token: String,
}

/// `POST /v1/email/verify`: the link's token verifies the account's address, once. 204; 400
/// `invalid_link` for a token that is wrong, expired, used, or replaced by a newer link.
pub async fn verify(
    State(state): State<AppState>,
    facts: RequestFacts,
    ApiJson(body): ApiJson<LinkBody>,
) -> Result<Response, ApiError> {
    let (user, hash) = parse_link(&body.token).ok_or(ApiError::InvalidLink)?;
    if !state.users.verify_email(user, &hash, now()).await? {
        return Err(ApiError::InvalidLink);
    }
    // The profile says whether the address is verified.
    if let Err(e) = state.profile_cache.invalidate(user).await {
        tracing::warn!(user_id = %user, error = %e, "profile cache not invalidated");
    }
    state
        .audit
        .record("email_verified", &user.to_string(), &facts);
    Ok(no_content())
}

/// `POST /v1/email/verify/resend` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressBody {
    /// The account's address.
    pub email: String,
}

/// `POST /v1/email/verify/resend`: mails a new verification link, which replaces the last, to
/// an account whose address is not verified yet. Always 202 with the same body, before any
/// store is read: the work happens after the answer, so neither its content nor its timing
/// tells whether the address has an account or is verified.
pub async fn resend(
    State(state): State<AppState>,
    facts: RequestFacts,
    ApiJson(body): ApiJson<AddressBody>,
) -> Result<Response, ApiError> {
    accept_link_request(state, facts, &body, LinkPurpose::VerifyEmail)
}

/// What differs between the links one asks to be mailed.
struct LinkKind {
    /// The answer without `mail`.
    not_enabled: &'static str,
    /// The warning when the work after the answer fails.
    not_sent: &'static str,
    /// The audit event once the link is mailed.
    sent: &'static str,
}

fn kind(purpose: LinkPurpose) -> LinkKind {
    match purpose {
        LinkPurpose::VerifyEmail => LinkKind {
            not_enabled: "email verification needs `mail`",
            not_sent: "verification_not_resent",
            sent: "email_verification_sent",
        },
        LinkPurpose::ResetPassword => LinkKind {
            not_enabled: "password reset needs `mail`",
            not_sent: "reset_link_not_sent",
            sent: "password_reset_requested",
        },
    }
}

/// How long a link of `purpose` works.
pub(crate) fn link_ttl(state: &AppState, purpose: LinkPurpose) -> u32 {
    match purpose {
        LinkPurpose::VerifyEmail => state.config.email_verification.link_ttl_seconds,
        LinkPurpose::ResetPassword => state.config.password_reset.link_ttl_seconds,
    }
}

/// The message that carries a link of `purpose` with `token`, working for `ttl` seconds.
pub(crate) fn link_notice(purpose: LinkPurpose, token: String, ttl: u32) -> Notice {
    let valid_minutes = ttl / 60;
    match purpose {
        LinkPurpose::VerifyEmail => Notice::VerifyEmail {
            token,
            valid_minutes,
        },
        LinkPurpose::ResetPassword => Notice::PasswordReset {
            token,
            valid_minutes,
        },
    }
}

/// A request to mail a link of `purpose` to an address (resend, forgot): 202 with the same body
/// before any store is read, whatever the address; the lookup, the new link and the mail happen
/// after the answer.
pub(crate) fn accept_link_request(
    state: AppState,
    facts: RequestFacts,
    body: &AddressBody,
    purpose: LinkPurpose,
) -> Result<Response, ApiError> {
    let kind = kind(purpose);
    if !state.mailer.enabled() {
        return Err(ApiError::NotEnabled(kind.not_enabled));
    }
    let email = normalise_email(&body.email)?;
    tokio::spawn(async move {
        if let Err(error) = mail_link(&state, &email, &facts, purpose).await {
            tracing::warn!(event = kind.not_sent, %error);
        }
    });
    Ok(mail_accepted())
}

/// Mails a new link of `purpose`, replacing the last, to the account with `email`, if the
/// address's budget allows; nothing for an unknown address, nor a verification link for a
/// verified one.
async fn mail_link(
    state: &AppState,
    email: &str,
    facts: &RequestFacts,
    purpose: LinkPurpose,
) -> Result<(), ApiError> {
    if !address_may_receive(state, email).await {
        return Ok(());
    }
    let Some(user) = state.users.find_by_email(email).await? else {
        return Ok(());
    };
    if purpose == LinkPurpose::VerifyEmail && user.email_verified {
        return Ok(());
    }
    let ttl = link_ttl(state, purpose);
    let (token, link) = new_link(user.id, ttl, now());
    state.users.set_link(user.id, purpose, &link).await?;
    state
        .mailer
        .send(&user.email, link_notice(purpose, token, ttl));
    state
        .audit
        .record(kind(purpose).sent, &user.id.to_string(), facts);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_names_its_account_and_only_its_hash_is_kept() {
        let user = UserId(uuid::Uuid::new_v4());
        let (token, link) = new_link(user, 600, 1_000);
        assert_eq!(link.expires_at, 1_600);
        assert_eq!(parse_link(&token), Some((user, link.hash)));
        let (other, _) = new_link(user, 600, 1_000);
        assert_ne!(token, other, "random part");
        // Not tokens: too short, too long, not base64url.
        for bad in [
            "",
            &token[..token.len() - 1],
            &format!("{token}A"),
            &token.replace(&token[..1], "+"),
        ] {
            assert_eq!(parse_link(bad), None, "{bad}");
        }
    }
}
