//! One error type for every handler, one mapping to HTTP. Internal causes are logged here and
//! never sent: a client sees a status, a stable code and a short message.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use crate::{password::PasswordError, store::StoreError};

/// Seconds a client should wait after a 503.
pub const RETRY_AFTER_SECONDS: u32 = 5;

/// What a handler can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: a field is missing, malformed or out of bounds.
    #[error("invalid field `{field}`: {message}")]
    InvalidField {
        /// The field, as named in the request body.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// 400: the body is not the JSON the endpoint takes.
    #[error("invalid body: {0}")]
    InvalidBody(String),
    /// 413
    #[error("request body too large")]
    PayloadTooLarge,
    /// 415
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// 409: the email is registered already.
    #[error("email already registered")]
    EmailTaken,
    /// 401: credentials or token refused. Deliberately vague.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// 401: the refresh token is unknown, expired, or was reused (RFC 6749 §5.2 `invalid_grant`).
    #[error("invalid refresh token")]
    InvalidGrant,
    /// A refused bearer token: status, challenge and body exactly as the edges answer them.
    #[error("access token refused")]
    Token {
        /// 401, 403 or 503.
        status: u16,
        /// RFC 6750 challenge.
        www_authenticate: Option<String>,
        /// The core's JSON body.
        body: String,
    },
    /// 401: the password was right; the account has a second factor: send `otp` or
    /// `recovery_code` (`mfa`).
    #[error("this account needs a second factor: send otp or recovery_code")]
    MfaRequired,
    /// 401: the action needs the password again (`password` in the body), or a session that
    /// logged in within `max_age_seconds` (RFC 9470 step-up: `insufficient_user_authentication`
    /// with `max_age`).
    #[error(
        "this action needs your password, or a login within the last {max_age_seconds} seconds"
    )]
    ReauthenticationRequired {
        /// `reauthentication_max_age_seconds`.
        max_age_seconds: u32,
    },
    /// 409: the account has no confirmed second factor to manage.
    #[error("no second factor is enabled on this account")]
    MfaNotEnabled,
    /// 404: no live session of the caller has this id.
    #[error("no such session")]
    SessionNotFound,
    /// 409: the account's second factor is confirmed already; it is not replaced this way.
    #[error("a second factor is enabled already")]
    MfaAlreadyEnabled,
    /// 401: the one-time code or recovery code is wrong, or was used already.
    #[error("the one-time code is wrong or was used already")]
    InvalidOtp,
    /// 429: too many second-factor codes for this account; TOTP is refused until the window
    /// ends (`second_factor_lock`); a recovery code still works.
    #[error("too many one-time codes; retry later or use a recovery code")]
    MfaLocked {
        /// Seconds until codes are taken again, at most (`Retry-After`).
        retry_after_seconds: u64,
    },
    /// 401: this email is soft-locked after failed logins; send a solved CAPTCHA (`soft_lock`).
    #[error("solve the CAPTCHA and send its token as captcha_token")]
    CaptchaRequired,
    /// 429: the client's budget for this endpoint is spent (`rate_limit`).
    #[error("too many requests; retry later")]
    RateLimited {
        /// Seconds until the next request is allowed (`Retry-After`).
        retry_after_seconds: u64,
    },
    /// 400: a mailed link's token is wrong, expired, used, or replaced by a newer link.
    #[error("this link is invalid, expired, used, or replaced by a newer one")]
    InvalidLink,
    /// 403: the password was right; the account's address is not verified yet, and this origin
    /// lets only verified accounts log in (`email_verification.login_unverified`).
    #[error("verify your email address first: open the link in the mail, or ask for a new one")]
    EmailNotVerified,
    /// 403: the refresh cookie came from a page not on `cors.allowed_origins`, without
    /// `X-Requested-With` (a cross-site request forgery, or a client that should send it).
    #[error("the refresh cookie is taken only from an allowed origin or with X-Requested-With")]
    CrossSiteRefresh,
    /// 404: the endpoint needs something this origin is not configured with.
    #[error("not enabled on this server: {0}")]
    NotEnabled(&'static str),
    /// 503: a dependency is down; says which for the log, not the client.
    #[error("{0} unavailable")]
    Unavailable(String),
    /// 500: a bug or an impossible state; logged, never detailed to the client.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::EmailTaken => Self::EmailTaken,
            StoreError::Unavailable(cause) => Self::Unavailable(cause),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<PasswordError> for ApiError {
    fn from(e: PasswordError) -> Self {
        match e {
            // A flood of logins: 503 with Retry-After at once, not a wait behind it.
            PasswordError::Busy(_) => Self::Unavailable(e.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidField { .. } | Self::InvalidBody(_) => {
                (StatusCode::BAD_REQUEST, "invalid_request")
            }
            Self::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::EmailTaken => (StatusCode::CONFLICT, "email_taken"),
            Self::InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            Self::InvalidGrant => (StatusCode::UNAUTHORIZED, "invalid_grant"),
            Self::CaptchaRequired => (StatusCode::UNAUTHORIZED, "captcha_required"),
            Self::MfaRequired => (StatusCode::UNAUTHORIZED, "mfa_required"),
            Self::MfaAlreadyEnabled => (StatusCode::CONFLICT, "mfa_already_enabled"),
            Self::MfaNotEnabled => (StatusCode::CONFLICT, "mfa_not_enabled"),
            Self::ReauthenticationRequired { .. } => {
                (StatusCode::UNAUTHORIZED, "insufficient_user_authentication")
            }
            Self::SessionNotFound => (StatusCode::NOT_FOUND, "not_found"),
            Self::InvalidOtp => (StatusCode::UNAUTHORIZED, "invalid_otp"),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::MfaLocked { .. } => (StatusCode::TOO_MANY_REQUESTS, "mfa_locked"),
            Self::InvalidLink => (StatusCode::BAD_REQUEST, "invalid_link"),
            Self::EmailNotVerified => (StatusCode::FORBIDDEN, "email_not_verified"),
            Self::NotEnabled(_) => (StatusCode::NOT_FOUND, "not_enabled"),
            Self::CrossSiteRefresh => (StatusCode::FORBIDDEN, "cross_site_refresh"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
            Self::Token { .. } => (StatusCode::UNAUTHORIZED, "invalid_token"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Token {
            status,
            www_authenticate,
            body,
        } = self
        {
            // The core's own answer, so the origin and the edges say the same about a token.
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED);
            let mut response =
                (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            if let Some(value) = www_authenticate.and_then(|v| HeaderValue::from_str(&v).ok()) {
                headers.insert(header::WWW_AUTHENTICATE, value);
            }
            if status == StatusCode::SERVICE_UNAVAILABLE {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
            }
            return response;
        }
        let (status, code) = self.status_and_code();
        let body = match &self {
            Self::InvalidField { field, message } => {
                json!({"error": code, "field": field, "message": message})
            }
            Self::Unavailable(cause) => {
                tracing::warn!(%cause, "dependency unavailable");
                json!({"error": code, "message": "a dependency is unavailable; retry shortly"})
            }
            Self::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                json!({"error": code, "message": "internal error"})
            }
            other => json!({"error": code, "message": other.to_string()}),
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        if let Self::RateLimited {
            retry_after_seconds,
        }
        | Self::MfaLocked {
            retry_after_seconds,
        } = self
        {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_seconds));
        }
        if let Self::ReauthenticationRequired { max_age_seconds } = self {
            // RFC 9470 §3: the token is fine, the authentication behind it is too old.
            let challenge = format!(
                "Bearer error=\"insufficient_user_authentication\", error_description=\"A more recent authentication is required\", max_age={max_age_seconds}"
            );
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                headers.insert(header::WWW_AUTHENTICATE, value);
            }
        } else if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
