//! The HTTP API: one module per resource, each handler extracting its request, calling the
//! stores and services in [`AppState`], and answering. What they share is here.

pub mod accounts;
pub mod caller;
pub mod email;
pub mod feed;
pub mod mfa;
pub mod password;
pub mod reauthentication;
pub mod sessions;
pub mod tokens;

use axum::{
    extract::{rejection::JsonRejection, FromRequest, Request},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::de::DeserializeOwned;

use crate::{api::caller::Caller, error::ApiError, state::AppState, store::User};

/// `Json<T>` whose rejections are [`ApiError`]s: 415 without a JSON content type, 413 over the
/// body limit, 400 naming the field otherwise.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::UnsupportedMediaType),
            Err(JsonRejection::BytesRejection(r))
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::PayloadTooLarge)
            }
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::InvalidBody(e.body_text())),
            Err(other) => Err(ApiError::InvalidBody(other.body_text())),
        }
    }
}

/// 204 to a caller's change: nothing to store on the way either.
pub(crate) fn no_content() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A JSON answer about one caller: never stored by a cache on the way.
pub(crate) fn private_json(body: impl serde::Serialize) -> Response {
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The caller's account; a token for an account that no longer exists is refused.
pub(crate) async fn caller_account(state: &AppState, caller: &Caller) -> Result<User, ApiError> {
    state
        .users
        .get_user(caller.user_id)
        .await?
        .ok_or(ApiError::InvalidCredentials)
}
