//! Blocking over REST (PROTOCOL.md C10): the same rules as the WebSocket
//! requests, through `chat::blocks`.

use paperclip::actix::{api_v2_operation, web, Apiv2Schema};
use serde::Deserialize;

use super::body::JsonOrForm;
use crate::auth::AuthUser;
use crate::chat::blocks::{self, BlockError};
use crate::chat::protocol::{BlockAck, Person, UserId};
use crate::error::ApiError;
use crate::state::AppState;

impl From<BlockError> for ApiError {
    fn from(e: BlockError) -> Self {
        match e {
            BlockError::Invalid(message) => ApiError::field("user_id", message),
            BlockError::Database(e) => e.into(),
            BlockError::Server(e) => ApiError::internal("block change", e),
        }
    }
}

/// Someone to block.
#[derive(Debug, Deserialize, Apiv2Schema)]
pub struct NewBlock {
    /// The user's id.
    pub user_id: Option<i64>,
}

/// The people the caller blocked, most recent first.
#[api_v2_operation(tags(Blocks))]
pub async fn list_blocks(
    state: web::Data<AppState>,
    user: AuthUser,
) -> Result<web::Json<Vec<Person>>, ApiError> {
    Ok(web::Json(
        blocks::blocked_by(&state.db, UserId(user.0.id)).await?,
    ))
}

/// Block someone: no direct messages between the two either way, no
/// presence in their direct conversation, and they cannot put the caller in
/// a group. Blocking again changes nothing.
#[api_v2_operation(tags(Blocks))]
pub async fn block_user(
    state: web::Data<AppState>,
    user: AuthUser,
    body: JsonOrForm<NewBlock>,
) -> Result<web::Json<BlockAck>, ApiError> {
    let other = body
        .0
        .user_id
        .ok_or_else(|| ApiError::field("user_id", "This field is required."))?;
    change(&state, &user, other, true).await
}

/// Lift the caller's block of someone (nothing if there was none).
#[api_v2_operation(tags(Blocks))]
pub async fn unblock_user(
    state: web::Data<AppState>,
    user: AuthUser,
    other: web::Path<i64>,
) -> Result<web::Json<BlockAck>, ApiError> {
    change(&state, &user, other.into_inner(), false).await
}

async fn change(
    state: &AppState,
    user: &AuthUser,
    other: i64,
    block: bool,
) -> Result<web::Json<BlockAck>, ApiError> {
    let me = UserId(user.0.id);
    state.allow_change(me)?;
    blocks::change(&state.db, &state.server, me, other, block).await?;
    Ok(web::Json(BlockAck {
        status: "success",
        user_id: other,
    }))
}
