//! Conversations over REST: the same contacts and history the WebSocket
//! serves, and adding a contact (creating the direct conversation).

use paperclip::actix::{api_v2_operation, web, Apiv2Schema};
use serde::Deserialize;

use super::auth::account_error;
use super::body::{require_fields, JsonOrForm};
use crate::accounts;
use crate::auth::AuthUser;
use crate::chat::membership::MembershipChange;
use crate::chat::messages::{ApplyMembership, ConversationFrames, Deliver};
use crate::chat::presence::PresenceView;
use crate::chat::protocol::{
    ChatId, Contact, ConversationChange, ConversationPush, HistoryPage, UserId,
};
use crate::chat::store;
use crate::error::ApiError;
use crate::state::AppState;

/// The user's conversations, most recently active first.
#[api_v2_operation(tags(Contacts))]
pub async fn list_contacts(
    state: web::Data<AppState>,
    user: AuthUser,
) -> Result<web::Json<Vec<Contact>>, ApiError> {
    Ok(web::Json(contacts_of(&state, UserId(user.0.id)).await?))
}

/// `user`'s conversations as they see them, charged to their fan-out
/// budget (PROTOCOL.md C12).
pub(super) async fn contacts_of(state: &AppState, user: UserId) -> Result<Vec<Contact>, ApiError> {
    state.charge_contact_list(user).await?;
    let list = store::contacts_of(&state.db, &state.contact_lists, user).await?;
    Ok(list.into_contacts(user, &state.presence))
}

/// Whom to add.
#[derive(Debug, Deserialize, Apiv2Schema)]
pub struct NewContact {
    pub username: Option<String>,
}

/// Add a contact: the direct conversation with that user, created once.
#[api_v2_operation(tags(Contacts))]
pub async fn add_contact(
    state: web::Data<AppState>,
    user: AuthUser,
    body: JsonOrForm<NewContact>,
) -> Result<web::Json<Contact>, ApiError> {
    let me = UserId(user.0.id);
    state.allow_change(me)?;
    let username = body.0.username;
    require_fields(&[("username", username.as_deref())])?;
    let username = username.unwrap_or_default();
    let other = accounts::find_by_username(&state.db, username.trim())
        .await?
        .filter(|u| u.is_active)
        .ok_or_else(|| ApiError::field("username", "No active user with that username."))?;
    let (chat, created) = accounts::direct_chat(&state.db, me.0, other.id)
        .await
        .map_err(account_error)?;
    let chat = ChatId(chat.id);
    if created {
        announce_direct(&state, chat, me, UserId(other.id)).await?;
    }
    let contact = store::contact_of(&state.db, &state.contact_lists, me, chat)
        .await?
        .into_contacts(me, &state.presence)
        .pop()
        .ok_or_else(|| ApiError::internal("add contact", "conversation vanished after creation"))?;
    Ok(web::Json(contact))
}

/// Tells the ChatServer (here and on every instance) that a direct
/// conversation exists, so its messages are routed from now on, and pushes
/// it to both people's sessions as `conversation`, each seeing the other.
async fn announce_direct(
    state: &AppState,
    chat: ChatId,
    me: UserId,
    other: UserId,
) -> Result<(), ApiError> {
    let change = MembershipChange::direct(chat, vec![me, other]);
    let server_error = |e: actix::MailboxError| ApiError::internal("add contact", e);
    state
        .server
        .send(ApplyMembership::everywhere(change))
        .await
        .map_err(server_error)?;
    let row = store::conversation(&state.db, chat)
        .await?
        .ok_or_else(|| ApiError::internal("add contact", "conversation vanished after creation"))?;
    // A new direct conversation: a block between the two would have
    // refused it, so nothing is hidden.
    let presence = PresenceView::shared(&state.presence);
    let view = |viewer| {
        let item = row.to_conversation(Some(viewer), Some(0), &presence);
        ConversationPush::new(&item, &ConversationChange::Created).to_json()
    };
    let frames = ConversationFrames {
        chat,
        seq: None,
        user: Some(me),
        own: Some(view(me)),
        others: view(other),
    };
    state.server.do_send(Deliver { frames, skip: None });
    Ok(())
}

pub(super) fn chat_id(raw: &str) -> Result<ChatId, ApiError> {
    uuid::Uuid::parse_str(raw)
        .map(ChatId)
        .map_err(|_| ApiError::NotFound)
}

/// One conversation (404 if it does not exist or the user is not in it).
#[api_v2_operation(tags(Contacts))]
pub async fn get_contact(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<String>,
) -> Result<web::Json<Contact>, ApiError> {
    let chat = chat_id(&id)?;
    let me = UserId(user.0.id);
    let contact = store::contact_of(&state.db, &state.contact_lists, me, chat)
        .await?
        .into_contacts(me, &state.presence)
        .pop()
        .ok_or(ApiError::NotFound)?;
    Ok(web::Json(contact))
}

/// Paging through history.
#[derive(Debug, Deserialize, Apiv2Schema)]
pub struct HistoryParams {
    /// Messages with ids below this one (older).
    pub before: Option<i64>,
    /// Messages with ids above this one (newer; catching up after a reconnect).
    pub after: Option<i64>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<u64>,
}

/// One page of a conversation's history.
#[api_v2_operation(tags(Contacts))]
pub async fn messages(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<String>,
    params: web::Query<HistoryParams>,
) -> Result<web::Json<HistoryPage>, ApiError> {
    let chat = chat_id(&id)?;
    let me = UserId(user.0.id);
    let limit = params.limit.unwrap_or(store::DEFAULT_HISTORY_PAGE);
    if limit == 0 || limit > store::MAX_HISTORY_PAGE {
        return Err(ApiError::field(
            "limit",
            format!(
                "Ensure this value is between 1 and {}.",
                store::MAX_HISTORY_PAGE
            ),
        ));
    }
    if !store::members_of(&state.db, chat).await?.contains(&me) {
        return Err(ApiError::NotFound);
    }
    let page = store::history_page(&state.db, chat, me, params.before, params.after, limit).await?;
    Ok(web::Json(page))
}
