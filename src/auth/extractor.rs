//! `AuthUser`: the extractor for endpoints that need a logged-in user. Takes
//! `Authorization: Bearer <token>` (or the old `Token <token>`).

use std::future::Future;
use std::pin::Pin;

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};
use entity::user;
use paperclip::actix::Apiv2Security;

use super::Claims;
use crate::chat::protocol::UserId;
use crate::error::ApiError;
use crate::state::AppState;

/// The user behind a valid, current token, and the token's claims.
#[derive(Debug, Clone, Apiv2Security)]
#[openapi(
    apiKey,
    in = "header",
    name = "Authorization",
    description = "`Bearer <token>`, the token from POST /api/login/"
)]
pub struct AuthUser(pub user::Model, pub Claims);

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let token = bearer_token(req);
        Box::pin(async move {
            let state = state.ok_or_else(|| {
                ApiError::internal("authentication", "AppState is not registered")
            })?;
            user_of(&state, token).await
        })
    }
}

/// The user of the request's `Authorization` header, or else of `token`
/// (`?token=`, for what a browser fetches without headers: `<img src>`).
pub async fn authenticate_request(
    state: &AppState,
    req: &HttpRequest,
    token: Option<String>,
) -> Result<AuthUser, ApiError> {
    let token = bearer_token(req).or(token.filter(|t| !t.trim().is_empty()));
    user_of(state, token).await
}

async fn user_of(state: &AppState, token: Option<String>) -> Result<AuthUser, ApiError> {
    let token = token.ok_or_else(|| {
        ApiError::Unauthorized("Authentication credentials were not provided.".into())
    })?;
    let claims = state
        .keys
        .decode(token.trim())
        .map_err(|_| super::AuthError::InvalidToken)?;
    // Before any database work: a token-holder's requests are counted
    // first, so a flood costs a signature check each, not queries
    // (docs/SECURITY.md).
    state
        .rest_limit
        .take(UserId(claims.user_id()))
        .map_err(ApiError::TooManyRequests)?;
    let (user, claims) = super::current_user(&state.db, claims).await?;
    Ok(AuthUser(user, claims))
}

fn bearer_token(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let known = scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token");
    (known && !token.trim().is_empty()).then(|| token.trim().to_string())
}
