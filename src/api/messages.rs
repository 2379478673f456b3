//! Replies' companions over REST (PROTOCOL.md B8): edit, delete, react and
//! take a reaction back, with the rules, answers and pushes of the
//! WebSocket requests (the changes go through the same message writer).

use paperclip::actix::{api_v2_operation, web, Apiv2Schema};
use serde::Deserialize;

use super::body::JsonOrForm;
use crate::auth::AuthUser;
use crate::chat::changes::{self, Applied, Change, ChangeRequest};
use crate::chat::protocol::{ErrorCode, MessageDeleted, MessageEdited, ReactionEvent, UserId};
use crate::chat::store;
use crate::chat::writer::{StoreError, Stored};
use crate::error::ApiError;
use crate::state::AppState;

/// A message's new text.
#[derive(Debug, Deserialize, Apiv2Schema)]
pub struct NewContent {
    /// 1 to `MAX_MESSAGE_CHARS` characters after trimming.
    pub content: Option<String>,
}

/// One emoji.
#[derive(Debug, Deserialize, Apiv2Schema)]
pub struct EmojiChoice {
    /// Exactly one emoji (one grapheme cluster), such as "👍".
    pub emoji: Option<String>,
}

/// Applies `change` for the caller through the message writer.
async fn apply(state: &AppState, user: UserId, change: Change) -> Result<Applied, ApiError> {
    state.allow_change(user)?;
    charge_fanout(state, user, change.message_id()).await?;
    let field = match change {
        Change::Edit { .. } => "content",
        Change::React { .. } => "emoji",
        Change::Delete { .. } => "id",
    };
    let pending = state
        .writer
        .change(ChangeRequest { user, change })
        .map_err(|e| store_error(e, field))?;
    let stored = pending
        .await
        .map_err(|_| ApiError::internal("message change", "the writer stopped"))?
        .map_err(|e| store_error(e, field))?;
    match stored {
        Stored::Changed(outcome) => Ok(outcome.applied),
        other => Err(ApiError::internal(
            "message change",
            format!("a change answered {other:?}"),
        )),
    }
}

/// Charges a change to the caller's fan-out budget (`FANOUT_PER_SECOND`),
/// the one a session's messages and changes draw on: one delivery per other
/// member of the message's conversation. (A message that does not exist is
/// 404 here; one the caller cannot see, the writer's rules answer 404.)
async fn charge_fanout(state: &AppState, user: UserId, message: i64) -> Result<(), ApiError> {
    let failed = |e| ApiError::internal("message change", e);
    let Some(conversation) = store::chat_of_message(&state.db, message)
        .await
        .map_err(failed)?
    else {
        return Err(ApiError::NotFound);
    };
    state.charge_fanout(user, conversation).await
}

fn store_error(e: StoreError, field: &str) -> ApiError {
    match e {
        StoreError::Refused {
            code: ErrorCode::NotFound,
            ..
        } => ApiError::NotFound,
        StoreError::Refused { message, .. } => ApiError::field(field, message),
        StoreError::Busy => ApiError::TooManyRequests(1),
        e => ApiError::internal("message change", e),
    }
}

fn content_of(state: &AppState, body: NewContent) -> Result<String, ApiError> {
    let content = body
        .content
        .ok_or_else(|| ApiError::field("content", "This field is required."))?;
    match changes::content_error(&content, state.settings.limits.max_message_chars) {
        Some(text) => Err(ApiError::field("content", text)),
        None => Ok(content),
    }
}

fn emoji_of(choice: Option<String>) -> Result<String, ApiError> {
    let emoji = choice.ok_or_else(|| ApiError::field("emoji", "This field is required."))?;
    changes::canonical_emoji(&emoji)
        .map(str::to_owned)
        .ok_or_else(|| ApiError::field("emoji", "emoji must be exactly one emoji"))
}

/// The message id in a path: an integer, or no message at all (404).
fn message_id(id: &str) -> Result<i64, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound)
}

fn unexpected(applied: Applied) -> ApiError {
    ApiError::internal("message change", format!("unexpected outcome {applied:?}"))
}

/// Change one's message (its sender only, within `EDIT_WINDOW_SECONDS`);
/// every member's sessions get `message_edited`. `seq` is null when the
/// text was already this.
#[api_v2_operation(tags(Messages))]
pub async fn edit_message(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<String>,
    body: JsonOrForm<NewContent>,
) -> Result<web::Json<MessageEdited>, ApiError> {
    let content = content_of(&state, body.0)?;
    let change = Change::Edit {
        id: message_id(&id)?,
        content,
    };
    match apply(&state, UserId(user.0.id), change).await? {
        Applied::Edited(edited) => Ok(web::Json(edited)),
        other => Err(unexpected(other)),
    }
}

/// Take a message back (its sender, or a group's owner): its text is
/// removed from storage and every member's sessions get `message_deleted`.
#[api_v2_operation(tags(Messages))]
pub async fn delete_message(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<String>,
) -> Result<web::Json<MessageDeleted>, ApiError> {
    let change = Change::Delete {
        id: message_id(&id)?,
    };
    match apply(&state, UserId(user.0.id), change).await? {
        Applied::Deleted(deleted) => Ok(web::Json(deleted)),
        other => Err(unexpected(other)),
    }
}

async fn react(
    state: &AppState,
    user: AuthUser,
    id: i64,
    emoji: Option<String>,
    on: bool,
) -> Result<web::Json<ReactionEvent>, ApiError> {
    let change = Change::React {
        id,
        emoji: emoji_of(emoji)?,
        on,
    };
    match apply(state, UserId(user.0.id), change).await? {
        Applied::Reacted(reaction) => Ok(web::Json(reaction)),
        other => Err(unexpected(other)),
    }
}

/// React to a message with one emoji (at most 20 different per message);
/// `seq` is null when the caller had already set it.
#[api_v2_operation(tags(Messages))]
pub async fn add_reaction(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<String>,
    body: JsonOrForm<EmojiChoice>,
) -> Result<web::Json<ReactionEvent>, ApiError> {
    react(&state, user, message_id(&id)?, body.0.emoji, true).await
}

/// Take one's reaction back (`?emoji=`); `seq` is null when it was not set.
#[api_v2_operation(tags(Messages))]
pub async fn remove_reaction(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<String>,
    query: web::Query<EmojiChoice>,
) -> Result<web::Json<ReactionEvent>, ApiError> {
    let query = query.into_inner();
    react(&state, user, message_id(&id)?, query.emoji, false).await
}
