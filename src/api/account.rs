//! The logged-in user's own account: who am I, change my password, sign
//! out this device or every device.

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
    match accounts::verify_password(old_password.unwrap_or_default(), current).await {
        Ok(true) => {}
        Ok(false) => return Err(ApiError::field("old_password", "Wrong password.")),
        Err(e) => {
            attempt.withdrawn(); // not checked: no guess was made
            return Err(account_error(e));
        }
    }
    attempt.succeeded();
    let new_password = new_password.unwrap_or_default();
    if let Err(e) = accounts::validate_password(&new_password, &user.username) {
        return Err(ApiError::field("new_password", e.to_string()));
    }
    let user = accounts::set_password(&state.db, user, new_password)
        .await
        .map_err(account_error)?;
    state.server.do_send(RevokeUser::older_than(
        UserId(user.id),
        user.token_version,
        true,
    ));
    Ok(web::Json(PasswordChanged {
        token: state.keys.issue(user.id, user.token_version),
    }))
}

/// Sign out: revokes the token this request carries and closes the live
/// sessions that authorized with it, on every instance. The caller's other
/// tokens (other devices) stay valid. 204 with no body.
#[api_v2_operation(tags(Account))]
pub async fn sign_out(
    state: web::Data<AppState>,
    user: AuthUser,
) -> Result<paperclip::actix::NoContent, ApiError> {
    let AuthUser(user, claims) = user;
    let Some(token) = claims.token_id() else {
        // A token issued before tokens had ids cannot be told from the
        // user's others: revoking them all is the only way to revoke it.
        return revoke_every_token(&state, user.id).await;
    };
    accounts::revoke_token(&state.db, user.id, token, claims.expires_at())
        .await
        .map_err(account_error)?;
    state
        .server
        .do_send(RevokeUser::token(UserId(user.id), token, true));
    Ok(paperclip::actix::NoContent)
}

/// Sign out everywhere: revokes every token of the caller (this one too)
/// and closes their live sessions on every instance, as a password change
/// does. For a lost or shared device; 204 with no body.
#[api_v2_operation(tags(Account))]
pub async fn sign_out_everywhere(
    state: web::Data<AppState>,
    user: AuthUser,
) -> Result<paperclip::actix::NoContent, ApiError> {
    revoke_every_token(&state, user.0.id).await
}

async fn revoke_every_token(
    state: &AppState,
    id: i64,
) -> Result<paperclip::actix::NoContent, ApiError> {
    let user = accounts::revoke_tokens(&state.db, id)
        .await
        .map_err(account_error)?;
    state.server.do_send(RevokeUser::older_than(
        UserId(user.id),
        user.token_version,
        true,
    ));
    Ok(paperclip::actix::NoContent)
}
