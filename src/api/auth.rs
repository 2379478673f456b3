//! Logging in and registering (PROTOCOL.md A1, B1).

use std::collections::BTreeMap;

use actix_web::HttpRequest;
use chrono::Utc;
use entity::user;
use paperclip::actix::{api_v2_operation, web, Apiv2Schema, CreatedJson};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, IntoActiveModel};
use serde::{Deserialize, Serialize};

use super::body::{require_fields, JsonOrForm};
use crate::accounts::{self, AccountError, NewUser};
use crate::error::ApiError;
use crate::state::AppState;

/// Credentials, as JSON or as a form.
#[derive(Debug, Deserialize, Apiv2Schema)]
pub struct LoginRequest {
    pub username: Option<String>,
    pub password: Option<String>,
}

/// A user as the old backend described them after login.
#[derive(Debug, Serialize, Apiv2Schema)]
pub struct UserData {
    pub id: i64,
    pub username: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub is_active: bool,
    pub is_staff: bool,
    pub is_superuser: bool,
    /// Always `{}`: this server has no per-user permissions.
    pub permissions: BTreeMap<String, bool>,
}

impl From<&user::Model> for UserData {
    fn from(u: &user::Model) -> Self {
        UserData {
            id: u.id,
            username: u.username.clone(),
            email: u.email.clone(),
            first_name: u.first_name.clone(),
            last_name: u.last_name.clone(),
            is_active: u.is_active,
            is_staff: u.is_staff,
            is_superuser: u.is_superuser,
            permissions: BTreeMap::new(),
        }
    }
}

/// A token for the WebSocket and for `Authorization: Bearer`, and who it is for.
#[derive(Debug, Serialize, Apiv2Schema)]
pub struct LoginResponse {
    pub token: String,
    pub data: UserData,
}

/// Log in with username and password.
///
/// Wrong credentials and inactive accounts get the same answer, in the same time.
#[api_v2_operation(tags(Auth))]
pub async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: JsonOrForm<LoginRequest>,
) -> Result<web::Json<LoginResponse>, ApiError> {
    let LoginRequest { username, password } = body.0;
    require_fields(&[
        ("username", username.as_deref()),
        ("password", password.as_deref()),
    ])?;
    let (username, password) = (username.unwrap_or_default(), password.unwrap_or_default());
    let address = state.proxies.limit_key(&req);
    // Counted before the hash, so concurrent guesses cannot pass the limit.
    let attempt = state
        .login_throttle
        .begin(&user::username_key(&username), address)
        .map_err(ApiError::TooManyRequests)?;
    let found = accounts::find_by_username(&state.db, &username).await?;
    let phc = found.as_ref().map(|u| u.password_hash.clone());
    let matches = match accounts::verify_password(password, phc).await {
        Ok(matches) => matches,
        Err(e) => {
            attempt.withdrawn(); // not checked: no guess was made
            return Err(account_error(e));
        }
    };
    let user = match found {
        Some(user) if matches && user.is_active => user,
        _ => return Err(ApiError::non_field("User not found")),
    };
    attempt.succeeded();
    let token = state.keys.issue(user.id, user.token_version);
    let mut active = user.into_active_model();
    active.last_login = Set(Some(Utc::now()));
    let user = active.update(&state.db).await?;
    tracing::info!(user = user.id, "logged in");
    Ok(web::Json(LoginResponse {
        token,
        data: UserData::from(&user),
    }))
}

/// A new account.
#[derive(Debug, Deserialize, Apiv2Schema)]
pub struct RegisterRequest {
    pub username: Option<String>,
    pub password: Option<String>,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
}

/// Create an account (when `REGISTRATION_OPEN`), logged in at once.
///
/// Limited per client address (`REGISTRATION_BURST`, `REGISTRATION_PER_MINUTE`).
#[api_v2_operation(tags(Auth))]
pub async fn register(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: JsonOrForm<RegisterRequest>,
) -> Result<CreatedJson<LoginResponse>, ApiError> {
    if !state.settings.auth.registration_open {
        return Err(ApiError::Forbidden("Registration is closed.".into()));
    }
    let client = state.proxies.limit_key(&req);
    state
        .registration_limit
        .take(client)
        .map_err(ApiError::TooManyRequests)?;
    let r = body.0;
    require_fields(&[
        ("username", r.username.as_deref()),
        ("password", r.password.as_deref()),
    ])?;
    let new = NewUser {
        username: r.username.unwrap_or_default().trim().to_string(),
        password: r.password.unwrap_or_default(),
        email: r.email.unwrap_or_default().trim().to_string(),
        first_name: r.first_name.unwrap_or_default().trim().to_string(),
        last_name: r.last_name.unwrap_or_default().trim().to_string(),
        is_staff: false,
        is_superuser: false,
    };
    if new.email.len() > 254
        || new.first_name.chars().count() > 150
        || new.last_name.chars().count() > 150
    {
        return Err(ApiError::non_field(
            "email must be at most 254 characters, names at most 150",
        ));
    }
    let user = match accounts::create_user(&state.db, new).await {
        Ok(user) => user,
        Err(e) => {
            let e = account_error(e);
            if matches!(e, ApiError::Busy(_)) {
                // Refused untried (hashing queue or database busy): the
                // client's retry must not find its allowance spent.
                state.registration_limit.give_back(client);
            }
            return Err(e);
        }
    };
    let token = state.keys.issue(user.id, user.token_version);
    Ok(CreatedJson(LoginResponse {
        token,
        data: UserData::from(&user),
    }))
}

/// Maps account refusals to the field they concern.
pub fn account_error(e: AccountError) -> ApiError {
    match e {
        AccountError::UsernameTaken
        | AccountError::UsernameConfusable
        | AccountError::InvalidUsername(_) => ApiError::field("username", e.to_string()),
        AccountError::InvalidPassword(_) => ApiError::field("password", e.to_string()),
        AccountError::NoSuchUser(_) => {
            ApiError::field("username", "No active user with that username.")
        }
        AccountError::SameUser => {
            ApiError::field("username", "You cannot add yourself as a contact.")
        }
        AccountError::Database(e) => e.into(),
        AccountError::Hashing(e) => ApiError::internal("password hashing", e),
        AccountError::HashingBusy(_) => ApiError::Busy(Box::new(e)),
        AccountError::ChangedMeanwhile => ApiError::Unauthorized(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use actix_web::ResponseError;

    use super::*;

    #[test]
    fn a_hash_refused_for_the_queue_is_a_503_to_try_again() {
        let response = account_error(AccountError::HashingBusy(64)).error_response();
        assert_eq!(response.status().as_u16(), 503);
        assert_eq!(response.headers().get("retry-after").unwrap(), "1");
    }
}
