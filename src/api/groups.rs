//! Group conversations over REST (PROTOCOL.md B6): the same rules and
//! errors as the WebSocket requests, through `chat::groups`.

use paperclip::actix::{api_v2_operation, web, Apiv2Schema, CreatedJson};
use serde::Deserialize;

use super::body::JsonOrForm;
use super::contacts::{chat_id, contacts_of};
use crate::auth::AuthUser;
use crate::chat::groups::{self, Changed, GroupError};
use crate::chat::invitations;
use crate::chat::protocol::{
    ChatId, Contact, Conversation, ConversationKind, Declined, Invitation, UserId,
};
use crate::chat::store;
use crate::error::ApiError;
use crate::state::AppState;

impl From<GroupError> for ApiError {
    fn from(e: GroupError) -> Self {
        match e {
            GroupError::Invalid { field, message } => ApiError::field(field, message),
            GroupError::Forbidden(message) => ApiError::Forbidden(message),
            GroupError::NotFound => ApiError::NotFound,
            GroupError::Database(e) => e.into(),
            GroupError::Server(e) => ApiError::internal("group change", e),
            GroupError::RateLimited { retry_after } => ApiError::TooManyRequests(retry_after),
            e @ GroupError::Busy(_) => ApiError::Busy(Box::new(e)),
        }
    }
}

/// A new group.
#[derive(Debug, Deserialize, Apiv2Schema)]
pub struct NewGroup {
    /// 1 to 100 characters after trimming.
    pub title: Option<String>,
    /// User ids to add besides the creator (duplicates ignored; absent or
    /// null: nobody else yet).
    pub members: Option<Vec<i64>>,
}

/// A new title.
#[derive(Debug, Deserialize, Apiv2Schema)]
pub struct GroupTitle {
    /// 1 to 100 characters after trimming.
    pub title: Option<String>,
}

/// People to add.
#[derive(Debug, Deserialize, Apiv2Schema)]
pub struct NewMembers {
    /// User ids (members already in the group are ignored).
    pub members: Option<Vec<i64>>,
}

fn required<T>(field: &str, value: Option<T>) -> Result<T, ApiError> {
    value.ok_or_else(|| ApiError::field(field, "This field is required."))
}

async fn announce(
    state: &AppState,
    user: UserId,
    changed: Result<Changed, GroupError>,
) -> Result<Conversation, ApiError> {
    Ok(groups::announce(&state.db, &state.server, &state.presence, user, changed?).await?)
}

/// The user's groups, most recently active first.
#[api_v2_operation(tags(Groups))]
pub async fn list_groups(
    state: web::Data<AppState>,
    user: AuthUser,
) -> Result<web::Json<Vec<Contact>>, ApiError> {
    let mut contacts = contacts_of(&state, UserId(user.0.id)).await?;
    contacts.retain(|c| c.kind == ConversationKind::Group);
    Ok(web::Json(contacts))
}

/// Start a group: the caller is its owner and first member.
#[api_v2_operation(tags(Groups))]
pub async fn create_group(
    state: web::Data<AppState>,
    user: AuthUser,
    body: JsonOrForm<NewGroup>,
) -> Result<CreatedJson<Conversation>, ApiError> {
    let me = UserId(user.0.id);
    let title = required("title", body.0.title)?;
    let members = body.0.members.unwrap_or_default();
    let changed = state.groups.create(me, &title, &members).await;
    Ok(CreatedJson(announce(&state, me, changed).await?))
}

/// A group the caller belongs to, with its members (404 otherwise). The
/// member list is charged to the caller's fan-out budget like a message to
/// the group, before it is read (429 past it).
#[api_v2_operation(tags(Groups))]
pub async fn get_group(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<String>,
) -> Result<web::Json<Conversation>, ApiError> {
    let chat = chat_id(&id)?;
    let me = UserId(user.0.id);
    state.charge_member_list(me, chat).await?;
    let conversation = store::conversation_of(&state.db, me, chat, &state.presence)
        .await?
        .filter(|c| c.kind == ConversationKind::Group)
        .ok_or(ApiError::NotFound)?;
    Ok(web::Json(conversation))
}

/// Rename a group (any member).
#[api_v2_operation(tags(Groups))]
pub async fn rename_group(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<String>,
    body: JsonOrForm<GroupTitle>,
) -> Result<web::Json<Conversation>, ApiError> {
    let me = UserId(user.0.id);
    let chat = chat_id(&id)?;
    let title = required("title", body.0.title)?;
    let changed = state.groups.rename(me, chat, &title).await;
    Ok(web::Json(announce(&state, me, changed).await?))
}

/// Add people to a group (any member).
#[api_v2_operation(tags(Groups))]
pub async fn add_members(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<String>,
    body: JsonOrForm<NewMembers>,
) -> Result<web::Json<Conversation>, ApiError> {
    let me = UserId(user.0.id);
    let chat = chat_id(&id)?;
    let members = required("members", body.0.members)?;
    let changed = state.groups.add_members(me, chat, &members).await;
    Ok(web::Json(announce(&state, me, changed).await?))
}

/// Remove a member (the owner), or leave (oneself). After leaving, the
/// answer is the group as its members now see it, with `removed: true`.
#[api_v2_operation(tags(Groups))]
pub async fn remove_member(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<(String, i64)>,
) -> Result<web::Json<Conversation>, ApiError> {
    let me = UserId(user.0.id);
    let (id, target) = path.into_inner();
    let chat: ChatId = chat_id(&id)?;
    let changed = state.groups.remove_member(me, chat, UserId(target)).await;
    Ok(web::Json(announce(&state, me, changed).await?))
}

/// The caller's pending invitations to groups, newest first (C9).
#[api_v2_operation(tags(Groups))]
pub async fn list_invitations(
    state: web::Data<AppState>,
    user: AuthUser,
) -> Result<web::Json<Vec<Invitation>>, ApiError> {
    let list = invitations::pending_of(&state.db, UserId(user.0.id)).await?;
    Ok(web::Json(list))
}

/// Join a group one is invited to: the answer is the group as the caller
/// now sees it (404 without a pending invitation).
#[api_v2_operation(tags(Groups))]
pub async fn accept_invitation(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<String>,
) -> Result<web::Json<Conversation>, ApiError> {
    let me = UserId(user.0.id);
    let chat = chat_id(&id)?;
    let changed = state.groups.accept(me, chat).await;
    Ok(web::Json(announce(&state, me, changed).await?))
}

/// Turn an invitation down for good: the group cannot invite the caller
/// again (404 without a pending invitation).
#[api_v2_operation(tags(Groups))]
pub async fn decline_invitation(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<String>,
) -> Result<web::Json<Declined>, ApiError> {
    let chat = chat_id(&id)?;
    state.groups.decline(UserId(user.0.id), chat).await?;
    Ok(web::Json(Declined {
        status: "success",
        pk: chat,
    }))
}
