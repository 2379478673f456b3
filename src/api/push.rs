//! Web Push over REST (PROTOCOL.md B11): the server's public key, and each
//! browser's subscription of the signed-in user.

use paperclip::actix::{api_v2_operation, web, Apiv2Schema, CreatedJson, NoContent};
use serde::{Deserialize, Serialize};

use crate::auth::AuthUser;
use crate::chat::protocol::UserId;
use crate::error::ApiError;
use crate::push::subscriptions::{self, SubscriptionJson};
use crate::push::WebPush;
use crate::state::AppState;

/// The server's VAPID public key.
#[derive(Debug, Serialize, Apiv2Schema)]
pub struct PushKey {
    /// Uncompressed P-256 point, base64url: `applicationServerKey`.
    pub public_key: String,
}

/// The subscription stored.
#[derive(Debug, Serialize, Apiv2Schema)]
pub struct Subscribed {
    pub endpoint: String,
}

/// A subscription to remove.
#[derive(Debug, Deserialize, Apiv2Schema)]
pub struct Unsubscribe {
    pub endpoint: Option<String>,
}

fn enabled(state: &AppState) -> Result<&WebPush, ApiError> {
    state.push.as_deref().ok_or(ApiError::NotFound)
}

/// The key browsers subscribe with (404 when Web Push is off).
#[api_v2_operation(tags(Push))]
pub async fn key(state: web::Data<AppState>) -> Result<web::Json<PushKey>, ApiError> {
    Ok(web::Json(PushKey {
        public_key: enabled(&state)?.vapid.public_key().to_string(),
    }))
}

/// Register this browser's `PushSubscription` for the caller: they get a
/// push for a new message while no session of theirs is open. The same
/// endpoint again replaces its keys (and moves it to the caller).
#[api_v2_operation(tags(Push))]
pub async fn subscribe(
    state: web::Data<AppState>,
    user: AuthUser,
    body: web::Json<SubscriptionJson>,
) -> Result<CreatedJson<Subscribed>, ApiError> {
    let push = enabled(&state)?;
    let me = UserId(user.0.id);
    state.allow_change(me)?;
    let checked = push
        .check(body.into_inner())
        .map_err(|refused| ApiError::field(refused.field, refused.message))?;
    let endpoint = checked.endpoint.clone();
    subscriptions::save(&state.db, me, checked).await?;
    Ok(CreatedJson(Subscribed { endpoint }))
}

/// Stop pushing to this browser (204; nothing if it was not the caller's).
#[api_v2_operation(tags(Push))]
pub async fn unsubscribe(
    state: web::Data<AppState>,
    user: AuthUser,
    body: web::Json<Unsubscribe>,
) -> Result<NoContent, ApiError> {
    enabled(&state)?;
    let endpoint = body
        .into_inner()
        .endpoint
        .ok_or_else(|| ApiError::field("endpoint", "This field is required."))?;
    subscriptions::remove(&state.db, UserId(user.0.id), &endpoint).await?;
    Ok(NoContent)
}
