//! Accounts: register, and the caller's own profile and security events.

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde::Deserialize;
use serde_json::json;

use super::{
    email::{address_may_receive, link_notice, link_ttl, mail_accepted, new_link},
    private_json,
    reauthentication::{confirm, Asks, Proof},
    sessions::end_all_sessions,
    ApiJson,
};
use crate::{
    api::caller::{Caller, RevokingAll},
    audit::{email_subject, RequestFacts},
    clock::now,
    error::ApiError,
    mail::Notice,
    state::AppState,
    store::{profile_cache::Profile, LinkPurpose, StoreError, User, UserId},
};

/// NIST SP 800-63B §5.1.1.2: at least 8 characters; long passphrases welcome, up to a bound that
/// keeps hashing cost predictable.
pub const PASSWORD_CHARS: std::ops::RangeInclusive<usize> = 8..=1024;
/// RFC 5321's practical limit for an address.
pub const MAX_EMAIL_BYTES: usize = 254;
/// Scopes a new account starts with.
pub const DEFAULT_SCOPES: [&str; 1] = ["profile"];

/// `POST /v1/register` and `POST /v1/login` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Trimmed and case-folded before use.
    pub email: String,
    /// Checked for length only (NIST SP 800-63B: no composition rules).
    pub password: String,
    /// Login only: also return the refresh token in the body (non-browser clients).
    #[serde(default)]
    pub refresh_token_in_body: bool,
    /// Login only: a solved CAPTCHA's token, needed once the email is soft-locked.
    #[serde(default)]
    pub captcha_token: Option<String>,
    /// Login only: the TOTP code, for an account with a second factor.
    #[serde(default)]
    pub otp: Option<String>,
    /// Login only: a recovery code instead of the TOTP code (each works once).
    #[serde(default)]
    pub recovery_code: Option<String>,
}

/// Trims and case-folds an email and checks it looks like one. Deliverability is the
/// verification mail's job, not this check's.
pub fn normalise_email(raw: &str) -> Result<String, ApiError> {
    use unicode_normalization::UnicodeNormalization as _;
    // NFKC, case folded, NFKC again (the UAX #31 recipe for identifiers): full-width, ligature
    // and compatibility spellings of an address become one, so they cannot be two accounts.
    let folded: String = raw.trim().nfkc().collect::<String>().to_lowercase();
    let email: String = folded.nfkc().collect();
    let invalid = |message: &str| ApiError::InvalidField {
        field: "email".into(),
        message: message.into(),
    };
    if email.len() > MAX_EMAIL_BYTES {
        return Err(invalid("is too long"));
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return Err(invalid("is not an email address"));
    };
    if local.is_empty()
        || domain.is_empty()
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
    {
        return Err(invalid("is not an email address"));
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("must not contain spaces or control characters"));
    }
    if email.chars().any(is_invisible) {
        return Err(invalid("must not contain invisible characters"));
    }
    Ok(email)
}

/// Characters that render as nothing: the Unicode format characters (general category Cf: zero
/// width spaces and joiners, bidirectional controls, tags), variation selectors and the Hangul
/// fillers. `a\u{200B}lice@` would otherwise register beside `alice@` and look the same.
fn is_invisible(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x034F
            | 0x061C
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFFB
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

pub(crate) fn check_password(password: &str) -> Result<(), ApiError> {
    let chars = password.chars().count();
    if PASSWORD_CHARS.contains(&chars) {
        Ok(())
    } else {
        Err(ApiError::InvalidField {
            field: "password".into(),
            message: format!(
                "must be {} to {} characters",
                PASSWORD_CHARS.start(),
                PASSWORD_CHARS.end()
            ),
        })
    }
}

/// `POST /v1/register`. Without `mail`: 201 with the new user's id, or 409 `email_taken`. With
/// `mail`, addresses are verified, and the answer is 202 with one body whether or not the
/// address has an account, after the same work (a hash, one transaction that creates the
/// account or finds its address taken): a new account is mailed its verification link, the
/// owner of an existing one a notice that someone tried to register with their address.
pub async fn register(
    State(state): State<AppState>,
    facts: RequestFacts,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Response, ApiError> {
    let email = normalise_email(&body.email)?;
    check_password(&body.password)?;
    let password_hash = state.passwords.hash(body.password).await?;
    let now = now();
    let user = User {
        id: UserId(uuid::Uuid::new_v4()),
        email,
        password_hash,
        scopes: DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        display_name: None,
        totp: None,
        sessions_revoked_at: None,
        created_at: now,
        email_verified: false,
    };
    if !state.mailer.enabled() {
        state.users.create_user(&user, None).await?;
        tracing::info!(event = "register", user_id = %user.id, "account created");
        state.audit.record("register", &user.id.to_string(), &facts);
        return Ok((
            StatusCode::CREATED,
            Json(json!({"user_id": user.id.to_string()})),
        )
            .into_response());
    }
    let ttl = link_ttl(&state, LinkPurpose::VerifyEmail);
    let (token, link) = new_link(user.id, ttl, now);
    match state.users.create_user(&user, Some(&link)).await {
        Ok(()) => {
            tracing::info!(event = "register", user_id = %user.id, "account created");
            state.audit.record("register", &user.id.to_string(), &facts);
            state.mailer.send(
                &user.email,
                link_notice(LinkPurpose::VerifyEmail, token, ttl),
            );
        }
        Err(StoreError::EmailTaken) => {
            let account = state.pseudonyms.of(&user.email);
            state
                .audit
                .record("register_address_taken", &email_subject(&account), &facts);
            // Off the answer's path: the budget check is a round trip only this branch makes.
            tokio::spawn(async move {
                if address_may_receive(&state, &user.email).await {
                    state.mailer.send(&user.email, Notice::AlreadyRegistered);
                }
            });
        }
        Err(e) => return Err(e.into()),
    }
    Ok(mail_accepted())
}

/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 100;

/// `GET /v1/me`: the caller's profile. The id comes only from the verified token's `sub`.
/// Cache-aside: a cache error is logged and the answer comes from DynamoDB.
pub async fn me(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let now = now();
    // Read before DynamoDB is: a change after this makes the fill below a no-op.
    let cached = match state.profile_cache.get(caller.user_id, now).await {
        Ok(read) => Some(read),
        Err(e) => {
            tracing::warn!(error = %e, "profile cache unavailable");
            None
        }
    };
    let generation = cached.as_ref().map(|read| read.generation);
    let profile = match cached.and_then(|read| read.profile) {
        Some(profile) => profile,
        None => {
            let user = state
                .users
                .get_user(caller.user_id)
                .await?
                .ok_or(ApiError::InvalidCredentials)?;
            let profile = Profile::from(&user);
            let expires_at = now + i64::from(state.config.profile_cache_ttl_seconds);
            // Without a generation (the cache did not answer) nothing is filled.
            if let Some(generation) = generation {
                if let Err(e) = state
                    .profile_cache
                    .put(caller.user_id, &profile, expires_at, now, generation)
                    .await
                {
                    tracing::warn!(error = %e, "profile not cached");
                }
            }
            profile
        }
    };
    Ok(private_json(profile))
}

/// `PATCH /v1/me` body: only what a user may change about themselves.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    /// A new display name, or `null` to clear it.
    pub display_name: Option<String>,
}

/// `PATCH /v1/me`: updates the caller's own profile.
pub async fn update_me(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(update): ApiJson<ProfileUpdate>,
) -> Result<Response, ApiError> {
    let name = update.display_name.map(|n| n.trim().to_owned());
    if let Some(name) = &name {
        let chars = name.chars().count();
        if chars == 0 || chars > MAX_DISPLAY_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(ApiError::InvalidField {
                field: "display_name".into(),
                message: format!(
                    "must be 1 to {MAX_DISPLAY_NAME_CHARS} characters without control characters"
                ),
            });
        }
    }
    match state
        .users
        .update_display_name(caller.user_id, name.as_deref())
        .await
    {
        Err(StoreError::NotFound) => return Err(ApiError::InvalidCredentials),
        other => other?,
    }
    // A failed invalidation leaves the old profile for at most profile_cache_ttl_seconds.
    if let Err(e) = state.profile_cache.invalidate(caller.user_id).await {
        tracing::warn!(user_id = %caller.user_id, error = %e, "profile cache not invalidated");
    }
    me(State(state), caller).await
}

/// Most events `GET /v1/me/audit` returns.
const AUDIT_PAGE: u32 = 50;

/// `GET /v1/me/audit`: the caller's own security events, newest first (logins, failed logins,
/// soft locks, CAPTCHAs, refresh-token reuse, logouts), with the address and request id of each.
pub async fn my_audit(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let events = state
        .audit
        .for_user(&caller.user_id.to_string(), AUDIT_PAGE)
        .await?;
    Ok(private_json(json!({ "events": events })))
}

/// Most security events an export holds: a year of them (the audit log's retention) for any
/// account used by a person.
const EXPORT_EVENTS: u32 = 10_000;

/// `GET /v1/me/export`: everything the origin holds about the caller, as one JSON document
/// (GDPR art. 20): the account (never its password hash, TOTP secret or recovery codes, which
/// are credentials, not data about the person), its live sessions and its security events.
pub async fn export_me(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let user = super::caller_account(&state, &caller).await?;
    let now = now();
    let sessions: Vec<serde_json::Value> = state
        .refresh
        .sessions(user.id, now)
        .await?
        .iter()
        .map(|s| {
            json!({
                "id": s.family_id,
                "logged_in_at": s.session_started_at,
                "last_active_at": s.issued_at,
                "expires_at": s.expires_at,
                "mfa": s.mfa,
            })
        })
        .collect();
    let events = state
        .audit
        .for_user(&user.id.to_string(), EXPORT_EVENTS)
        .await?;
    let totp = user.totp.as_ref().filter(|t| t.confirmed);
    let mut response = private_json(json!({
        "exported_at": now,
        "account": {
            "user_id": user.id.to_string(),
            "email": user.email,
            "email_verified": user.email_verified,
            "display_name": user.display_name,
            "scopes": user.scopes,
            "created_at": user.created_at,
            "second_factor": {
                "totp": totp.is_some(),
                "recovery_codes_left": totp.map_or(0, |t| t.recovery_codes.len()),
            },
        },
        "sessions": sessions,
        "security_events": events,
    }));
    response.headers_mut().insert(
        axum::http::header::CONTENT_DISPOSITION,
        axum::http::HeaderValue::from_static("attachment; filename=\"account-export.json\""),
    );
    Ok(response)
}

/// `DELETE /v1/me`: deletes the caller's account (GDPR art. 17), with re-authentication (the
/// password and, with a second factor, a code; or a recent login). In this order, each step
/// durable before the next, so that a 503 is retried with the same token and proof until it
/// answers 204:
/// 1. a revoke-all, published: every access token of the account is refused at once by the
///    edges and the origin, and no refresh token is exchanged again;
/// 2. every session's refresh tokens deleted, and the cached profile;
/// 3. the account's security events keep only the network each came from;
/// 4. the account and its email's guard, in one transaction (the password hash, TOTP secret,
///    recovery codes and live links were attributes of it): the address may register again.
///
/// The owner is mailed a last notice; an `account_deleted` event, without the address it came
/// from, stays under the account's random id.
pub async fn delete_me(
    State(state): State<AppState>,
    facts: RequestFacts,
    RevokingAll(caller): RevokingAll,
    ApiJson(proof): ApiJson<Proof>,
) -> Result<Response, ApiError> {
    let user = confirm(
        &state,
        &facts,
        &caller,
        proof,
        Asks::PasswordAndSecondFactor,
        "account_deletion_failed",
    )
    .await?;
    let now = now();
    let revoked_through = state.users.revoke_sessions(user.id, now).await?;
    end_all_sessions(&state, user.id, revoked_through, now).await?;
    state.refresh.revoke_user(user.id).await?;
    state.profile_cache.invalidate(user.id).await?;
    let subject = user.id.to_string();
    state.audit.pseudonymise(&subject).await?;
    state.users.delete_user(&user).await?;
    tracing::info!(event = "account_deleted", user_id = %user.id, "account deleted");
    let without_address = RequestFacts {
        client_ip: None,
        ..facts
    };
    state
        .audit
        .record("account_deleted", &subject, &without_address);
    state.mailer.send(&user.email, Notice::AccountDeleted);
    Ok(super::no_content())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_case_folded() {
        assert_eq!(
            normalise_email("  Alice@Example.COM ").expect("valid"),
            "alice@example.com"
        );
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "alice@localhost",
            "al ice@example.com",
            "alice@.com",
        ] {
            assert!(normalise_email(bad).is_err(), "{bad}");
        }
        assert!(normalise_email(&format!("{}@example.com", "a".repeat(250))).is_err());
    }

    #[test]
    fn look_alike_spellings_of_an_address_are_one_address_or_refused() {
        // Full-width letters, a ligature, the Kelvin sign for k.
        assert_eq!(
            normalise_email("\u{ff41}\u{ff4c}ice@example.com").expect("valid"),
            "alice@example.com"
        );
        assert_eq!(
            normalise_email("\u{fb03}x@example.com").expect("valid"),
            "ffix@example.com"
        );
        assert_eq!(
            normalise_email("mar\u{212a}@example.com").expect("valid"),
            "mark@example.com"
        );
        // Composed and decomposed accents are one address.
        assert_eq!(
            normalise_email("jose\u{301}@example.com").expect("valid"),
            normalise_email("jos\u{e9}@example.com").expect("valid")
        );
        for invisible in [
            "a\u{200b}lice@example.com",
            "alice\u{200d}@example.com",
            "\u{feff}alice@example.com",
            "ali\u{ad}ce@example.com",
            "alice@exam\u{2060}ple.com",
            "alice\u{e0041}@example.com",
            "a\u{202e}lice@example.com",
            "alice\u{fe0f}@example.com",
            "\u{3164}alice@example.com",
        ] {
            assert!(normalise_email(invisible).is_err(), "{invisible:?}");
        }
    }

    #[test]
    fn password_length_follows_nist() {
        assert!(check_password("1234567").is_err());
        assert!(check_password("12345678").is_ok());
        assert!(check_password(&"long passphrase ".repeat(40)).is_ok());
        assert!(check_password(&"x".repeat(1025)).is_err());
        // Characters, not bytes: eight emoji are eight characters.
        assert!(check_password("🔑🔑🔑🔑🔑🔑🔑🔑").is_ok());
    }
}
