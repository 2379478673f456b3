//! The logged-in user's own account: who am I, change my password, sign
//! out every device.

use actix_web::HttpRequest;
use paperclip::actix::{api_v2_operation, web, Apiv2Schema};
use serde::{Deserialize, Serialize};

use super::auth::{account_error, UserData};
use super::body::{require_fields, JsonOrForm};
use crate::accounts;
use crate::auth::AuthUser;
use crate::chat::messages::RevokeUser;
use crate::chat::protocol::UserId;
use crate::error::ApiError;
use crate::state::AppState;

/// The account behind the token.
#[api_v2_operation(tags(Account))]
pub async fn me(user: AuthUser) -> Result<web::Json<UserData>, ApiError> {
    Ok(web::Json(UserData::from(&user.0)))
}

/// The current password and the new one.
#[derive(Debug, Deserialize, Apiv2Schema)]
pub struct PasswordChange {
    pub old_password: Option<String>,
    pub new_password: Option<String>,
}

/// A fresh token: every token issued before the change is revoked.
#[derive(Debug, Serialize, Apiv2Schema)]
pub struct PasswordChanged {
    pub token: String,
}

/// Change the password. Revokes every earlier token and closes the user's live sessions.
#[api_v2_operation(tags(Account))]
pub async fn change_password(
    req: HttpRequest,
    state: web::Data<AppState>,
    user: AuthUser,
    body: JsonOrForm<PasswordChange>,
) -> Result<web::Json<PasswordChanged>, ApiError> {
    let PasswordChange {
        old_password,
        new_password,
    } = body.0;
    require_fields(&[
        ("old_password", old_password.as_deref()),
        ("new_password", new_password.as_deref()),
    ])?;
    let user = user.0;
    // A stolen token must not make the password guessable: throttled like login.
    let attempt = state
        .password_throttle
        .begin(&user.id.to_string(), state.proxies.limit_key(&req))
        .map_err(ApiError::TooManyRequests)?;
    let current = Some(user.password_hash.clone());
    if !accounts::verify_password(old_password.unwrap_or_default(), current).await {
        return Err(ApiError::field("old_password", "Wrong password."));
    }
    attempt.succeeded();
    let new_password = new_password.unwrap_or_default();
    if let Err(e) = accounts::validate_password(&new_password, &user.username) {
        return Err(ApiError::field("new_password", e.to_string()));
    }
    let user = accounts::set_password(&state.db, user, new_password)
        .await
        .map_err(account_error)?;
    state.server.do_send(RevokeUser {
        user: UserId(user.id),
        current_version: user.token_version,
        broadcast: true,
    });
    Ok(web::Json(PasswordChanged {
        token: state.keys.issue(user.id, user.token_version),
    }))
}

/// Sign out everywhere: revokes every token of the caller (this one too)
/// and closes their live sessions on every instance, as a password change
/// does. For a lost or shared device; 204 with no body.
#[api_v2_operation(tags(Account))]
pub async fn sign_out_everywhere(
    state: web::Data<AppState>,
    user: AuthUser,
) -> Result<paperclip::actix::NoContent, ApiError> {
    let user = accounts::revoke_tokens(&state.db, user.0.id)
        .await
        .map_err(account_error)?;
    state.server.do_send(RevokeUser {
        user: UserId(user.id),
        current_version: user.token_version,
        broadcast: true,
    });
    Ok(paperclip::actix::NoContent)
}
