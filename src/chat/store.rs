//! The queries chat needs: contacts, membership, history, read marks.
//! Messages are written by the group-commit writer (`writer.rs`).

use std::collections::HashMap;

use entity::{chat, chat_member, message, user};
use sea_orm::sea_query::{Expr, Func};
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, DbErr, EntityTrait, FromQueryResult, QueryFilter,
    QueryOrder, QuerySelect,
};

use super::presence::Presence;
use super::protocol::{format_time, ChatId, Contact, Direction, HistoryItem, LastMessage, UserId};

/// Largest page of history one request may ask for.
pub const MAX_HISTORY_PAGE: u64 = 200;
/// The page size when a request names none.
pub const DEFAULT_HISTORY_PAGE: u64 = 50;

/// A conversation as one user sees it: the other member, the last message,
/// how many messages they have not read.
#[derive(Debug, Clone)]
pub struct ContactRow {
    pub chat: chat::Model,
    pub other: Option<user::Model>,
    pub last_message: Option<message::Model>,
    pub unread: u64,
}

impl ContactRow {
    /// The contact as clients see it; `online` comes from live presence.
    pub fn into_contact(self, presence: &Presence) -> Contact {
        let other = self.other.as_ref();
        let name = match (other, self.chat.kind, &self.chat.title) {
            (_, chat::ChatKind::Group, Some(title)) => title.clone(),
            (Some(user), _, _) => user.display_name(),
            (None, _, title) => title.clone().unwrap_or_default(),
        };
        Contact {
            pk: ChatId(self.chat.id),
            name,
            online: other.is_some_and(|u| presence.is_online(UserId(u.id))),
            user_id: other.map(|u| u.id),
            username: other.map(|u| u.username.clone()),
            last_message: self.last_message.map(|m| LastMessage {
                id: m.id,
                sender: m.sender_id,
                time: format_time(&m.created_at),
                content: m.content,
            }),
            unread: self.unread,
        }
    }
}

/// A stored message as `viewer` sees it in history.
pub fn history_item(m: message::Model, viewer: UserId) -> HistoryItem {
    HistoryItem {
        id: m.id,
        sender: m.sender_id,
        direction: if m.sender_id == Some(viewer.0) {
            Direction::Send
        } else {
            Direction::Received
        },
        time: format_time(&m.created_at),
        content: m.content,
        client_id: m.client_id,
    }
}

#[derive(Debug, FromQueryResult)]
struct UnreadCount {
    chat_id: uuid::Uuid,
    n: i64,
}

/// Every conversation `user` belongs to, most recently active first.
pub async fn contacts_of(db: &DatabaseConnection, user: UserId) -> Result<Vec<ContactRow>, DbErr> {
    let memberships = chat_member::Entity::find()
        .filter(chat_member::Column::UserId.eq(user.0))
        .all(db)
        .await?;
    contact_rows(db, user, memberships).await
}

/// One conversation as `user` sees it, if they are a member.
pub async fn contact_of(
    db: &DatabaseConnection,
    user: UserId,
    chat: ChatId,
) -> Result<Option<ContactRow>, DbErr> {
    let membership = chat_member::Entity::find_by_id((chat.0, user.0))
        .one(db)
        .await?;
    let rows = contact_rows(db, user, membership.into_iter().collect()).await?;
    Ok(rows.into_iter().next())
}

async fn contact_rows(
    db: &DatabaseConnection,
    user: UserId,
    memberships: Vec<chat_member::Model>,
) -> Result<Vec<ContactRow>, DbErr> {
    if memberships.is_empty() {
        return Ok(Vec::new());
    }
    let chat_ids: Vec<uuid::Uuid> = memberships.iter().map(|m| m.chat_id).collect();
    let chats: HashMap<uuid::Uuid, chat::Model> = chat::Entity::find()
        .filter(chat::Column::Id.is_in(chat_ids.clone()))
        .all(db)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    let others: HashMap<uuid::Uuid, user::Model> = chat_member::Entity::find()
        .filter(chat_member::Column::ChatId.is_in(chat_ids.clone()))
        .filter(chat_member::Column::UserId.ne(user.0))
        .find_also_related(user::Entity)
        .all(db)
        .await?
        .into_iter()
        .filter_map(|(m, u)| u.map(|u| (m.chat_id, u)))
        .collect();
    let last_ids = message::Entity::find()
        .select_only()
        .expr(Func::max(Expr::col(message::Column::Id)))
        .filter(message::Column::ChatId.is_in(chat_ids.clone()))
        .group_by(message::Column::ChatId)
        .into_tuple::<Option<i64>>()
        .all(db)
        .await?;
    let last_messages: HashMap<uuid::Uuid, message::Model> = message::Entity::find()
        .filter(message::Column::Id.is_in(last_ids.into_iter().flatten()))
        .all(db)
        .await?
        .into_iter()
        .map(|m| (m.chat_id, m))
        .collect();
    let mut unread_filter = Condition::any();
    for m in &memberships {
        unread_filter = unread_filter.add(
            Condition::all()
                .add(message::Column::ChatId.eq(m.chat_id))
                .add(message::Column::Id.gt(m.last_read_message_id.unwrap_or(0))),
        );
    }
    let unread: HashMap<uuid::Uuid, u64> = message::Entity::find()
        .select_only()
        .column(message::Column::ChatId)
        .column_as(message::Column::Id.count(), "n")
        .filter(unread_filter)
        .filter(
            Condition::any()
                .add(message::Column::SenderId.is_null())
                .add(message::Column::SenderId.ne(user.0)),
        )
        .group_by(message::Column::ChatId)
        .into_model::<UnreadCount>()
        .all(db)
        .await?
        .into_iter()
        .map(|c| (c.chat_id, c.n.max(0) as u64))
        .collect();

    let mut rows: Vec<ContactRow> = memberships
        .into_iter()
        .filter_map(|m| {
            let chat = chats.get(&m.chat_id)?.clone();
            Some(ContactRow {
                other: others.get(&m.chat_id).cloned(),
                last_message: last_messages.get(&m.chat_id).cloned(),
                unread: unread.get(&m.chat_id).copied().unwrap_or(0),
                chat,
            })
        })
        .collect();
    rows.sort_by(|a, b| {
        let key = |r: &ContactRow| (r.last_message.as_ref().map(|m| m.id), r.chat.created_at);
        key(b).cmp(&key(a))
    });
    Ok(rows)
}

/// The members of a conversation (empty if it does not exist).
pub async fn members_of(db: &DatabaseConnection, chat: ChatId) -> Result<Vec<UserId>, DbErr> {
    Ok(chat_member::Entity::find()
        .select_only()
        .column(chat_member::Column::UserId)
        .filter(chat_member::Column::ChatId.eq(chat.0))
        .into_tuple::<i64>()
        .all(db)
        .await?
        .into_iter()
        .map(UserId)
        .collect())
}

/// For each conversation of `user`, the other members: whom to tell when the
/// user comes online or goes offline.
pub async fn contacts_for_presence(
    db: &DatabaseConnection,
    user: UserId,
) -> Result<Vec<(ChatId, UserId)>, DbErr> {
    let chat_ids: Vec<uuid::Uuid> = chat_member::Entity::find()
        .select_only()
        .column(chat_member::Column::ChatId)
        .filter(chat_member::Column::UserId.eq(user.0))
        .into_tuple::<uuid::Uuid>()
        .all(db)
        .await?;
    if chat_ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(chat_member::Entity::find()
        .select_only()
        .column(chat_member::Column::ChatId)
        .column(chat_member::Column::UserId)
        .filter(chat_member::Column::ChatId.is_in(chat_ids))
        .filter(chat_member::Column::UserId.ne(user.0))
        .into_tuple::<(uuid::Uuid, i64)>()
        .all(db)
        .await?
        .into_iter()
        .map(|(c, u)| (ChatId(c), UserId(u)))
        .collect())
}

/// One page of a conversation's history, oldest first within the page, and
/// whether there is more in the direction of travel. With `after`, pages go
/// forward from that id (catching up); otherwise backward from `before` (or
/// from the newest).
pub async fn history(
    db: &DatabaseConnection,
    chat: ChatId,
    before: Option<i64>,
    after: Option<i64>,
    limit: u64,
) -> Result<(Vec<message::Model>, bool), DbErr> {
    let limit = limit.clamp(1, MAX_HISTORY_PAGE);
    let mut query = message::Entity::find().filter(message::Column::ChatId.eq(chat.0));
    if let Some(before) = before {
        query = query.filter(message::Column::Id.lt(before));
    }
    let forward = after.is_some();
    if let Some(after) = after {
        query = query
            .filter(message::Column::Id.gt(after))
            .order_by_asc(message::Column::Id);
    } else {
        query = query.order_by_desc(message::Column::Id);
    }
    let mut rows = query.limit(limit + 1).all(db).await?;
    let has_more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    if !forward {
        rows.reverse();
    }
    Ok((rows, has_more))
}

/// Moves `user`'s read mark in `chat` forward to `up_to` (never backward).
pub async fn mark_read(
    db: &DatabaseConnection,
    chat: ChatId,
    user: UserId,
    up_to: i64,
) -> Result<(), DbErr> {
    chat_member::Entity::update_many()
        .col_expr(chat_member::Column::LastReadMessageId, Expr::value(up_to))
        .filter(chat_member::Column::ChatId.eq(chat.0))
        .filter(chat_member::Column::UserId.eq(user.0))
        .filter(
            Condition::any()
                .add(chat_member::Column::LastReadMessageId.is_null())
                .add(chat_member::Column::LastReadMessageId.lt(up_to)),
        )
        .exec(db)
        .await?;
    Ok(())
}
