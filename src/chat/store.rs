//! The queries chat needs: contacts, membership, history, read marks, the
//! quotes replies show, blocked pairs; and `StoreError`, why something was
//! not stored.
//! Messages are written by the group-commit writer (`writer/`).

use std::collections::{HashMap, HashSet};

use entity::{block, chat, chat_member, message, message_event, reaction, user};
use sea_orm::sea_query::{Expr, Func};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    FromQueryResult, QueryFilter, QueryOrder, QuerySelect,
};

use super::membership::{group_presence, Audience, ChatEntry};
use super::presence::{Presence, PresenceView};
use super::protocol::{
    format_time, ChatId, Contact, Conversation, ConversationKind, Direction, ErrorCode, ErrorReply,
    HistoryItem, HistoryPage, LastMessage, MemberItem, MemberRole, Person, Quote, ReactionCount,
    RequestKind, UserId,
};

/// Largest page of history one request may ask for.
pub const MAX_HISTORY_PAGE: u64 = 200;
/// The page size when a request names none.
pub const DEFAULT_HISTORY_PAGE: u64 = 50;

/// Most values in one `IN (...)` list.
const IN_CHUNK: usize = 1000;

/// A conversation as one user sees it: the other member (direct) or the
/// members (group), the last message, how many messages they have not read.
#[derive(Debug, Clone)]
pub struct ContactRow {
    pub chat: chat::Model,
    pub other: Option<user::Model>,
    /// Every member's id (groups only; a direct conversation has `other`).
    pub member_ids: Vec<UserId>,
    pub last_message: Option<message::Model>,
    pub unread: u64,
    /// A direct conversation whose two people have a block (C10): the
    /// other is never shown online.
    pub blocked: bool,
}

/// The kind of a stored conversation, as the wire names it.
pub fn kind_of(chat: &chat::Model) -> ConversationKind {
    match chat.kind {
        chat::ChatKind::Direct => ConversationKind::Direct,
        chat::ChatKind::Group => ConversationKind::Group,
    }
}

fn last_message_item(m: message::Model) -> LastMessage {
    LastMessage {
        id: m.id,
        sender: m.sender_id,
        time: format_time(&m.created_at),
        content: m.content,
    }
}

impl ContactRow {
    /// The contact as `viewer` sees it; `online` comes from live presence.
    pub fn into_contact(self, viewer: UserId, presence: &PresenceView) -> Contact {
        let other = self.other.as_ref();
        let (name, online, members) = match self.chat.kind {
            chat::ChatKind::Group => (
                self.chat.title.clone().unwrap_or_default(),
                self.member_ids
                    .iter()
                    .any(|m| *m != viewer && presence.is_online(*m)),
                self.member_ids.len() as u64,
            ),
            chat::ChatKind::Direct => (
                other.map(|u| u.display_name()).unwrap_or_default(),
                !self.blocked && other.is_some_and(|u| presence.is_online(UserId(u.id))),
                1 + u64::from(other.is_some()),
            ),
        };
        Contact {
            pk: ChatId(self.chat.id),
            name,
            online,
            user_id: other.map(|u| u.id),
            username: other.map(|u| u.username.clone()),
            last_message: self.last_message.map(last_message_item),
            unread: self.unread,
            kind: kind_of(&self.chat),
            members,
            seq: self.chat.seq,
        }
    }
}

/// A page of history as `viewer` sees it: each message with what it shows
/// of the one it answers and its reactions (B8).
pub async fn history_items<C: ConnectionTrait>(
    db: &C,
    messages: Vec<message::Model>,
    viewer: UserId,
) -> Result<Vec<HistoryItem>, DbErr> {
    let quotes = quotes_for(db, &messages).await?;
    let ids: Vec<i64> = messages
        .iter()
        .filter(|m| !m.deleted)
        .map(|m| m.id)
        .collect();
    let mut reactions = reactions_of(db, &ids, viewer).await?;
    Ok(messages
        .into_iter()
        .map(|m| {
            let quote = m.reply_to.and_then(|id| quotes.get(&id).cloned());
            let reactions = reactions.remove(&m.id).unwrap_or_default();
            history_item(m, viewer, quote, reactions)
        })
        .collect())
}

/// A stored message as `viewer` sees it in history.
pub fn history_item(
    m: message::Model,
    viewer: UserId,
    quote: Option<Quote>,
    reactions: Vec<ReactionCount>,
) -> HistoryItem {
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
        reply_to: m.reply_to,
        quote,
        edited_at: m.edited_at.as_ref().map(format_time),
        deleted: m.deleted,
        reactions,
    }
}

#[derive(Debug, FromQueryResult)]
struct ReactionRow {
    message_id: i64,
    emoji: String,
    n: i64,
    mine: i64,
    first: chrono::DateTime<chrono::Utc>,
}

/// The reactions on `messages`, per message: each emoji with how many set
/// it and whether `viewer` did, in the order the emoji were first set.
/// One grouped query for the page.
pub async fn reactions_of<C: ConnectionTrait>(
    db: &C,
    messages: &[i64],
    viewer: UserId,
) -> Result<HashMap<i64, Vec<ReactionCount>>, DbErr> {
    let mut by_message: HashMap<i64, Vec<(chrono::DateTime<chrono::Utc>, ReactionCount)>> =
        HashMap::new();
    for chunk in messages.chunks(IN_CHUNK) {
        let mine = Expr::case(reaction::Column::UserId.eq(viewer.0), 1i64).finally(0i64);
        let rows = reaction::Entity::find()
            .select_only()
            .column(reaction::Column::MessageId)
            .column(reaction::Column::Emoji)
            .column_as(reaction::Column::UserId.count(), "n")
            .expr_as(Func::max(mine), "mine")
            .expr_as(Func::min(Expr::col(reaction::Column::CreatedAt)), "first")
            .filter(reaction::Column::MessageId.is_in(chunk.to_vec()))
            .group_by(reaction::Column::MessageId)
            .group_by(reaction::Column::Emoji)
            .into_model::<ReactionRow>()
            .all(db)
            .await?;
        for r in rows {
            by_message.entry(r.message_id).or_default().push((
                r.first,
                ReactionCount {
                    emoji: r.emoji,
                    count: r.n.max(0) as u64,
                    mine: r.mine > 0,
                },
            ));
        }
    }
    Ok(by_message
        .into_iter()
        .map(|(id, mut counts)| {
            counts.sort_by(|a, b| (a.0, &a.1.emoji).cmp(&(b.0, &b.1.emoji)));
            (id, counts.into_iter().map(|(_, c)| c).collect())
        })
        .collect())
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

/// The conversations of `memberships` as `user` sees them, newest activity
/// first: a fixed number of queries however many there are (each list is
/// read in chunks of `IN_CHUNK`).
async fn contact_rows(
    db: &DatabaseConnection,
    user: UserId,
    memberships: Vec<chat_member::Model>,
) -> Result<Vec<ContactRow>, DbErr> {
    if memberships.is_empty() {
        return Ok(Vec::new());
    }
    let chat_ids: Vec<uuid::Uuid> = memberships.iter().map(|m| m.chat_id).collect();
    let (chats, last_ids) = chats_and_last_ids(db, &chat_ids).await?;
    let (direct, groups): (Vec<uuid::Uuid>, Vec<uuid::Uuid>) = chat_ids.iter().partition(|id| {
        chats
            .get(id)
            .is_some_and(|c| c.kind == chat::ChatKind::Direct)
    });
    let others = other_people(db, user, &direct).await?;
    let pairs: Vec<(i64, i64)> = others.values().map(|u| (user.0, u.id)).collect();
    let blocked = blocked_pairs(db, &pairs).await?;
    let is_blocked =
        |other: &user::Model| blocked.contains(&(user.0.min(other.id), user.0.max(other.id)));
    let mut group_members = member_ids(db, &groups).await?;
    let last_messages = messages_by_chat(db, &last_ids).await?;
    let unread = unread_counts(db, user, &memberships).await?;

    let mut rows: Vec<ContactRow> = memberships
        .into_iter()
        .filter_map(|m| {
            let chat = chats.get(&m.chat_id)?.clone();
            let other = others.get(&m.chat_id).cloned();
            Some(ContactRow {
                blocked: other.as_ref().is_some_and(is_blocked),
                other,
                member_ids: group_members.remove(&m.chat_id).unwrap_or_default(),
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

/// The conversations `chat_ids`, and the id of each one's newest message
/// that is not deleted.
async fn chats_and_last_ids(
    db: &DatabaseConnection,
    chat_ids: &[uuid::Uuid],
) -> Result<(HashMap<uuid::Uuid, chat::Model>, Vec<i64>), DbErr> {
    let mut chats: HashMap<uuid::Uuid, chat::Model> = HashMap::new();
    let mut last_ids = Vec::new();
    for chunk in chat_ids.chunks(IN_CHUNK) {
        chats.extend(
            chat::Entity::find()
                .filter(chat::Column::Id.is_in(chunk.to_vec()))
                .all(db)
                .await?
                .into_iter()
                .map(|c| (c.id, c)),
        );
        last_ids.extend(
            message::Entity::find()
                .select_only()
                .expr(Func::max(Expr::col(message::Column::Id)))
                .filter(message::Column::ChatId.is_in(chunk.to_vec()))
                .filter(message::Column::Deleted.eq(false))
                .group_by(message::Column::ChatId)
                .into_tuple::<Option<i64>>()
                .all(db)
                .await?
                .into_iter()
                .flatten(),
        );
    }
    Ok((chats, last_ids))
}

/// The other person of each direct conversation in `direct`.
async fn other_people(
    db: &DatabaseConnection,
    user: UserId,
    direct: &[uuid::Uuid],
) -> Result<HashMap<uuid::Uuid, user::Model>, DbErr> {
    let mut others: HashMap<uuid::Uuid, user::Model> = HashMap::new();
    for chunk in direct.chunks(IN_CHUNK) {
        others.extend(
            chat_member::Entity::find()
                .filter(chat_member::Column::ChatId.is_in(chunk.to_vec()))
                .filter(chat_member::Column::UserId.ne(user.0))
                .find_also_related(user::Entity)
                .all(db)
                .await?
                .into_iter()
                .filter_map(|(m, u)| u.map(|u| (m.chat_id, u))),
        );
    }
    Ok(others)
}

/// Every member of each group in `groups`.
async fn member_ids(
    db: &DatabaseConnection,
    groups: &[uuid::Uuid],
) -> Result<HashMap<uuid::Uuid, Vec<UserId>>, DbErr> {
    let mut group_members: HashMap<uuid::Uuid, Vec<UserId>> = HashMap::new();
    for chunk in groups.chunks(IN_CHUNK) {
        for (chat_id, member) in chat_member::Entity::find()
            .select_only()
            .column(chat_member::Column::ChatId)
            .column(chat_member::Column::UserId)
            .filter(chat_member::Column::ChatId.is_in(chunk.to_vec()))
            .into_tuple::<(uuid::Uuid, i64)>()
            .all(db)
            .await?
        {
            group_members
                .entry(chat_id)
                .or_default()
                .push(UserId(member));
        }
    }
    Ok(group_members)
}

/// The messages `ids`, by their conversation (one each).
async fn messages_by_chat(
    db: &DatabaseConnection,
    ids: &[i64],
) -> Result<HashMap<uuid::Uuid, message::Model>, DbErr> {
    let mut last_messages: HashMap<uuid::Uuid, message::Model> = HashMap::new();
    for chunk in ids.chunks(IN_CHUNK) {
        last_messages.extend(
            message::Entity::find()
                .filter(message::Column::Id.is_in(chunk.to_vec()))
                .all(db)
                .await?
                .into_iter()
                .map(|m| (m.chat_id, m)),
        );
    }
    Ok(last_messages)
}

/// How many messages of others each membership has not read.
async fn unread_counts(
    db: &DatabaseConnection,
    user: UserId,
    memberships: &[chat_member::Model],
) -> Result<HashMap<uuid::Uuid, u64>, DbErr> {
    let mut unread: HashMap<uuid::Uuid, u64> = HashMap::new();
    for chunk in memberships.chunks(IN_CHUNK) {
        let mut unread_filter = Condition::any();
        for m in chunk {
            unread_filter = unread_filter.add(
                Condition::all()
                    .add(message::Column::ChatId.eq(m.chat_id))
                    .add(message::Column::Id.gt(m.last_read_message_id.unwrap_or(0))),
            );
        }
        unread.extend(
            message::Entity::find()
                .select_only()
                .column(message::Column::ChatId)
                .column_as(message::Column::Id.count(), "n")
                .filter(unread_filter)
                .filter(message::Column::Deleted.eq(false))
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
                .map(|c| (c.chat_id, c.n.max(0) as u64)),
        );
    }
    Ok(unread)
}

/// A conversation with every member's account and role, longest-standing
/// first.
#[derive(Debug, Clone)]
pub struct ConversationRow {
    pub chat: chat::Model,
    pub members: Vec<(chat_member::Model, user::Model)>,
    pub last_message: Option<message::Model>,
}

impl ConversationRow {
    /// Whether `user` is a member.
    pub fn has_member(&self, user: UserId) -> bool {
        self.members.iter().any(|(m, _)| m.user_id == user.0)
    }

    /// The conversation as `viewer` sees it (`None`: as every member alike,
    /// for a `conversation` push), with `unread` when known.
    pub fn to_conversation(
        &self,
        viewer: Option<UserId>,
        unread: Option<u64>,
        presence: &PresenceView,
    ) -> Conversation {
        let members: Vec<MemberItem> = self
            .members
            .iter()
            .map(|(m, u)| MemberItem {
                user_id: u.id,
                username: u.username.clone(),
                name: u.display_name(),
                role: match m.role {
                    chat_member::Role::Owner => MemberRole::Owner,
                    chat_member::Role::Member => MemberRole::Member,
                },
                online: presence.is_online(UserId(u.id)),
            })
            .collect();
        let is_viewer = |id: i64| viewer == Some(UserId(id));
        let other = match self.chat.kind {
            chat::ChatKind::Direct => self
                .members
                .iter()
                .map(|(_, u)| u)
                .find(|u| !is_viewer(u.id)),
            chat::ChatKind::Group => None,
        };
        let online = match viewer {
            Some(_) => members.iter().any(|m| m.online && !is_viewer(m.user_id)),
            // Every member who gets a push is online; another one is when
            // at least two are.
            None => members.iter().filter(|m| m.online).count() >= 2,
        };
        Conversation {
            pk: ChatId(self.chat.id),
            name: match other {
                Some(u) => u.display_name(),
                None => self.chat.title.clone().unwrap_or_default(),
            },
            online,
            user_id: other.map(|u| u.id),
            username: other.map(|u| u.username.clone()),
            last_message: self.last_message.clone().map(last_message_item),
            unread,
            kind: kind_of(&self.chat),
            members,
            removed: None,
            seq: self.chat.seq,
            invited: None,
        }
    }
}

/// A conversation with its members, if it exists.
pub async fn conversation<C: ConnectionTrait>(
    db: &C,
    chat: ChatId,
) -> Result<Option<ConversationRow>, DbErr> {
    let Some(model) = chat::Entity::find_by_id(chat.0).one(db).await? else {
        return Ok(None);
    };
    let members = chat_member::Entity::find()
        .filter(chat_member::Column::ChatId.eq(chat.0))
        .find_also_related(user::Entity)
        .order_by_asc(chat_member::Column::JoinedAt)
        .order_by_asc(chat_member::Column::UserId)
        .all(db)
        .await?
        .into_iter()
        .filter_map(|(m, u)| Some((m, u?)))
        .collect();
    let last_message = message::Entity::find()
        .filter(message::Column::ChatId.eq(chat.0))
        .order_by_desc(message::Column::Id)
        .one(db)
        .await?;
    Ok(Some(ConversationRow {
        chat: model,
        members,
        last_message,
    }))
}

/// A conversation as `user` sees it, with members and unread count, if
/// they are a member.
pub async fn conversation_of(
    db: &DatabaseConnection,
    user: UserId,
    chat: ChatId,
    presence: &Presence,
) -> Result<Option<Conversation>, DbErr> {
    let Some(row) = contact_of(db, user, chat).await? else {
        return Ok(None);
    };
    let Some(full) = conversation(db, chat).await? else {
        return Ok(None);
    };
    let presence = presence_view(db, user, presence).await?;
    let mut item = full.to_conversation(Some(user), Some(row.unread), &presence);
    if row.blocked {
        item.online = false;
        for member in item.members.iter_mut().filter(|m| m.user_id != user.0) {
            member.online = false;
        }
    }
    Ok(Some(item))
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

/// A conversation's kind and members, if it exists.
pub async fn membership_of(
    db: &DatabaseConnection,
    chat: ChatId,
) -> Result<Option<(chat::ChatKind, Vec<UserId>)>, DbErr> {
    let kind = chat::Entity::find_by_id(chat.0)
        .select_only()
        .column(chat::Column::Kind)
        .into_tuple::<chat::ChatKind>()
        .one(db)
        .await?;
    match kind {
        Some(kind) => Ok(Some((kind, members_of(db, chat).await?))),
        None => Ok(None),
    }
}

/// How many members each of `chats` has (those with none are absent).
pub async fn member_counts<C: ConnectionTrait>(
    db: &C,
    chats: Vec<uuid::Uuid>,
) -> Result<HashMap<uuid::Uuid, i64>, DbErr> {
    if chats.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(chat_member::Entity::find()
        .select_only()
        .column(chat_member::Column::ChatId)
        .column_as(chat_member::Column::UserId.count(), "n")
        .filter(chat_member::Column::ChatId.is_in(chats))
        .group_by(chat_member::Column::ChatId)
        .into_tuple::<(uuid::Uuid, i64)>()
        .all(db)
        .await?
        .into_iter()
        .collect())
}

/// Who a message to `chat` reaches (`None`: no such conversation).
pub async fn audience_of(db: &DatabaseConnection, chat: ChatId) -> Result<Option<Audience>, DbErr> {
    let Some(kind) = chat::Entity::find_by_id(chat.0)
        .select_only()
        .column(chat::Column::Kind)
        .into_tuple::<chat::ChatKind>()
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(match kind {
        chat::ChatKind::Direct => Audience::Direct,
        chat::ChatKind::Group => {
            let n = member_counts(db, vec![chat.0]).await?;
            Audience::Group(n.get(&chat.0).copied().unwrap_or(0).max(0) as u64)
        }
    }))
}

/// What the ChatServer routes a conversation by.
#[derive(Debug, Clone, Copy)]
struct ChatFlags {
    /// Presence is pushed in it: direct and not blocked, or a group of at
    /// most `PRESENCE_MAX_MEMBERS`.
    presence: bool,
    /// Its latest `seq`.
    seq: i64,
    /// A direct conversation whose two people have a block (C10).
    blocked: bool,
    /// Who a message to it reaches.
    audience: Audience,
}

/// The two user ids of a direct conversation's key ("small:large").
pub(crate) fn direct_pair(key: &str) -> Option<(i64, i64)> {
    let (a, b) = key.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The routing flags of each of `chats`.
async fn chat_flags(
    db: &DatabaseConnection,
    chats: &[uuid::Uuid],
) -> Result<HashMap<uuid::Uuid, ChatFlags>, DbErr> {
    let mut flags = HashMap::new();
    for chunk in chats.chunks(IN_CHUNK) {
        let rows = chat::Entity::find()
            .select_only()
            .column(chat::Column::Id)
            .column(chat::Column::Kind)
            .column(chat::Column::Seq)
            .column(chat::Column::DirectKey)
            .filter(chat::Column::Id.is_in(chunk.to_vec()))
            .into_tuple::<(uuid::Uuid, chat::ChatKind, i64, Option<String>)>()
            .all(db)
            .await?;
        let groups: Vec<uuid::Uuid> = rows
            .iter()
            .filter(|(_, k, _, _)| *k == chat::ChatKind::Group)
            .map(|(id, _, _, _)| *id)
            .collect();
        let sizes = member_counts(db, groups).await?;
        let pairs: Vec<(i64, i64)> = rows
            .iter()
            .filter_map(|(_, _, _, key)| key.as_deref().and_then(direct_pair))
            .collect();
        let blocked = blocked_pairs(db, &pairs).await?;
        for (id, kind, seq, key) in rows {
            let flag = match kind {
                chat::ChatKind::Direct => {
                    let blocked = key
                        .as_deref()
                        .and_then(direct_pair)
                        .is_some_and(|pair| blocked.contains(&pair));
                    ChatFlags {
                        presence: !blocked,
                        seq,
                        blocked,
                        audience: Audience::Direct,
                    }
                }
                chat::ChatKind::Group => {
                    let size = sizes.get(&id).copied().unwrap_or(0).max(0);
                    ChatFlags {
                        presence: group_presence(size as u64),
                        seq,
                        blocked: false,
                        audience: Audience::Group(size as u64),
                    }
                }
            };
            flags.insert(id, flag);
        }
    }
    Ok(flags)
}

/// The conversations of each of `users`, with whether presence is pushed
/// in them: what the ChatServer routes by.
pub async fn chats_of_users(
    db: &DatabaseConnection,
    users: &[UserId],
) -> Result<HashMap<UserId, Vec<ChatEntry>>, DbErr> {
    let mut pairs = Vec::new();
    for chunk in users.chunks(IN_CHUNK) {
        pairs.extend(
            chat_member::Entity::find()
                .select_only()
                .column(chat_member::Column::ChatId)
                .column(chat_member::Column::UserId)
                .filter(chat_member::Column::UserId.is_in(chunk.iter().map(|u| u.0)))
                .into_tuple::<(uuid::Uuid, i64)>()
                .all(db)
                .await?,
        );
    }
    let mut chat_ids: Vec<uuid::Uuid> = pairs.iter().map(|(c, _)| *c).collect();
    chat_ids.sort_unstable();
    chat_ids.dedup();
    let flags = chat_flags(db, &chat_ids).await?;
    let mut chats: HashMap<UserId, Vec<ChatEntry>> =
        users.iter().map(|u| (*u, Vec::new())).collect();
    for (chat, user) in pairs {
        let flag = flags.get(&chat).copied().unwrap_or(ChatFlags {
            presence: true,
            seq: 0,
            blocked: false,
            audience: Audience::Direct,
        });
        chats.entry(UserId(user)).or_default().push(ChatEntry {
            chat: ChatId(chat),
            presence: flag.presence,
            seq: flag.seq,
            blocked: flag.blocked,
            audience: flag.audience,
        });
    }
    Ok(chats)
}

/// The conversations of `user` (see `chats_of_users`).
pub async fn chats_of(db: &DatabaseConnection, user: UserId) -> Result<Vec<ChatEntry>, DbErr> {
    Ok(chats_of_users(db, &[user])
        .await?
        .remove(&user)
        .unwrap_or_default())
}

/// The conversations of `user` in which their presence is pushed.
pub async fn presence_chats(db: &DatabaseConnection, user: UserId) -> Result<Vec<ChatId>, DbErr> {
    Ok(chats_of(db, user)
        .await?
        .into_iter()
        .filter(|c| c.presence)
        .map(|c| c.chat)
        .collect())
}

/// A page of history as `viewer` sees it (`history`, `history_items`),
/// with the conversation's latest `seq` read in the same snapshot: a client
/// applies the live changes after that `seq` to the page, and none before
/// (a reaction counted twice would stay wrong). PostgreSQL needs a
/// REPEATABLE READ transaction for one snapshot; SQLite's and MySQL's read
/// transactions are one already.
pub async fn history_page(
    db: &DatabaseConnection,
    chat: ChatId,
    viewer: UserId,
    before: Option<i64>,
    after: Option<i64>,
    limit: u64,
) -> Result<HistoryPage, DbErr> {
    use sea_orm::{AccessMode, IsolationLevel, TransactionTrait};
    let txn = match db.get_database_backend() {
        sea_orm::DatabaseBackend::Postgres => {
            db.begin_with_config(
                Some(IsolationLevel::RepeatableRead),
                Some(AccessMode::ReadOnly),
            )
            .await?
        }
        _ => db.begin().await?,
    };
    let seq = latest_seq(&txn, chat).await?;
    let (rows, has_more) = history(&txn, chat, before, after, limit).await?;
    let messages = history_items(&txn, rows, viewer).await?;
    txn.commit().await?;
    Ok(HistoryPage {
        pk: chat,
        messages,
        has_more,
        seq,
    })
}

/// One page of a conversation's history, oldest first within the page, and
/// whether there is more in the direction of travel. With `after`, pages go
/// forward from that message (catching up); otherwise backward from
/// `before` (or from the newest). Pages follow the conversation's order
/// (`seq`, B7), not ids: ids are drawn when a row is inserted, so on several
/// instances a smaller id can be committed after a larger one, and a page
/// "after id N" by id would skip it for good.
pub async fn history<C: ConnectionTrait>(
    db: &C,
    chat: ChatId,
    before: Option<i64>,
    after: Option<i64>,
    limit: u64,
) -> Result<(Vec<message::Model>, bool), DbErr> {
    let limit = limit.clamp(1, MAX_HISTORY_PAGE);
    let before = match before {
        Some(id) => Some(seq_next_to(db, chat, id, false).await?),
        None => None,
    };
    match after {
        Some(id) => {
            let after = seq_next_to(db, chat, id, true).await?;
            messages_by_seq(db, chat, after, before, limit).await
        }
        None => {
            let mut query = message::Entity::find()
                .filter(message::Column::ChatId.eq(chat.0))
                .order_by_desc(message::Column::Seq);
            if let Some(before) = before {
                query = query.filter(message::Column::Seq.lt(before));
            }
            let mut rows = query.limit(limit + 1).all(db).await?;
            let has_more = rows.len() as u64 > limit;
            rows.truncate(limit as usize);
            rows.reverse();
            Ok((rows, has_more))
        }
    }
}

/// The messages of `chat` with `after < seq < before`, oldest first (at
/// most `limit`), and whether there are more.
pub async fn messages_by_seq<C: ConnectionTrait>(
    db: &C,
    chat: ChatId,
    after: i64,
    before: Option<i64>,
    limit: u64,
) -> Result<(Vec<message::Model>, bool), DbErr> {
    let mut query = message::Entity::find()
        .filter(message::Column::ChatId.eq(chat.0))
        .filter(message::Column::Seq.gt(after))
        .order_by_asc(message::Column::Seq);
    if let Some(before) = before {
        query = query.filter(message::Column::Seq.lt(before));
    }
    let mut rows = query.limit(limit + 1).all(db).await?;
    let has_more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    Ok((rows, has_more))
}

/// The changes (B8) of `chat` with `after < seq < before`, oldest first (at
/// most `limit`), and whether there are more.
pub async fn changes_by_seq(
    db: &DatabaseConnection,
    chat: ChatId,
    after: i64,
    before: Option<i64>,
    limit: u64,
) -> Result<(Vec<message_event::Model>, bool), DbErr> {
    let mut query = message_event::Entity::find()
        .filter(message_event::Column::ChatId.eq(chat.0))
        .filter(message_event::Column::Seq.gt(after))
        .order_by_asc(message_event::Column::Seq);
    if let Some(before) = before {
        query = query.filter(message_event::Column::Seq.lt(before));
    }
    let mut rows = query.limit(limit + 1).all(db).await?;
    let has_more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    Ok((rows, has_more))
}

/// The conversation of message `id`, if there is such a message.
pub async fn chat_of_message(db: &DatabaseConnection, id: i64) -> Result<Option<ChatId>, DbErr> {
    Ok(message::Entity::find_by_id(id)
        .select_only()
        .column(message::Column::ChatId)
        .into_tuple::<uuid::Uuid>()
        .one(db)
        .await?
        .map(ChatId))
}

/// The `seq` of the message `id` of `chat`, if it is one of its messages.
async fn seq_of<C: ConnectionTrait>(db: &C, chat: ChatId, id: i64) -> Result<Option<i64>, DbErr> {
    message::Entity::find_by_id(id)
        .filter(message::Column::ChatId.eq(chat.0))
        .select_only()
        .column(message::Column::Seq)
        .into_tuple::<i64>()
        .one(db)
        .await
}

/// Where a page next to message `id` reads from, in `seq`: forward
/// (`after`), the `seq` after which to read; backward (`before`), the one
/// below which. For one of the conversation's messages that is its own
/// `seq`. Any other id (0, or a made-up one) reads from just before the
/// first message with a larger id (forward), or from just after the last
/// with a smaller one (backward), so no message beyond it is ever skipped.
async fn seq_next_to<C: ConnectionTrait>(
    db: &C,
    chat: ChatId,
    id: i64,
    forward: bool,
) -> Result<i64, DbErr> {
    if let Some(seq) = seq_of(db, chat, id).await? {
        return Ok(seq);
    }
    let seq = Expr::col(message::Column::Seq);
    let (bound, beyond) = if forward {
        (Func::min(seq), message::Column::Id.gt(id))
    } else {
        (Func::max(seq), message::Column::Id.lt(id))
    };
    let neighbour = message::Entity::find()
        .select_only()
        .expr(bound)
        .filter(message::Column::ChatId.eq(chat.0))
        .filter(beyond)
        .into_tuple::<Option<i64>>()
        .one(db)
        .await?
        .flatten();
    match (forward, neighbour) {
        (true, Some(seq)) => Ok(seq - 1),
        (true, None) => latest_seq(db, chat).await,
        (false, Some(seq)) => Ok(seq + 1),
        (false, None) => Ok(0),
    }
}

/// The `seq` of a conversation's latest event (0 when it has none, or does
/// not exist).
pub async fn latest_seq<C: ConnectionTrait>(db: &C, chat: ChatId) -> Result<i64, DbErr> {
    Ok(chat::Entity::find_by_id(chat.0)
        .select_only()
        .column(chat::Column::Seq)
        .into_tuple::<i64>()
        .one(db)
        .await?
        .unwrap_or(0))
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

/// How much of the answered message a reply's `quote` shows, in characters.
pub const QUOTE_CHARS: usize = 200;

/// What a reply shows of `m`.
pub fn quote_of(m: &message::Model) -> Quote {
    Quote {
        sender: m.sender_id,
        content: if m.deleted {
            String::new()
        } else {
            m.content.chars().take(QUOTE_CHARS).collect()
        },
    }
}

/// What replies among `messages` show of the messages they answer.
pub async fn quotes_for<C: ConnectionTrait>(
    db: &C,
    messages: &[message::Model],
) -> Result<HashMap<i64, Quote>, DbErr> {
    let answered: Vec<i64> = messages.iter().filter_map(|m| m.reply_to).collect();
    if answered.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(message::Entity::find()
        .filter(message::Column::Id.is_in(answered))
        .all(db)
        .await?
        .iter()
        .map(|m| (m.id, quote_of(m)))
        .collect())
}

/// Among the pairs `(a, b)`, those with a block either way, as
/// `(smaller, larger)`. One query over the people involved (two `IN`
/// The people `user` has a block with, either way: presence between them
/// is hidden (C10).
pub async fn blocked_peers<C: ConnectionTrait>(db: &C, user: UserId) -> Result<Vec<UserId>, DbErr> {
    let rows: Vec<(i64, i64)> = block::Entity::find()
        .select_only()
        .column(block::Column::UserId)
        .column(block::Column::BlockedId)
        .filter(
            Condition::any()
                .add(block::Column::UserId.eq(user.0))
                .add(block::Column::BlockedId.eq(user.0)),
        )
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(a, b)| UserId(if a == user.0 { b } else { a }))
        .collect())
}

/// Presence as `viewer` may see it: their blocks looked up (C10).
pub async fn presence_view<'a, C: ConnectionTrait>(
    db: &C,
    viewer: UserId,
    presence: &'a Presence,
) -> Result<PresenceView<'a>, DbErr> {
    Ok(PresenceView::new(
        presence,
        blocked_peers(db, viewer).await?,
    ))
}

/// lists, not one condition per pair: SQLite bounds an expression's depth).
pub async fn blocked_pairs<C: ConnectionTrait>(
    db: &C,
    pairs: &[(i64, i64)],
) -> Result<HashSet<(i64, i64)>, DbErr> {
    if pairs.is_empty() {
        return Ok(HashSet::new());
    }
    let wanted: HashSet<(i64, i64)> = pairs.iter().map(|(a, b)| (*a.min(b), *a.max(b))).collect();
    let people: Vec<i64> = wanted
        .iter()
        .flat_map(|(a, b)| [*a, *b])
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    Ok(block::Entity::find()
        .filter(block::Column::UserId.is_in(people.clone()))
        .filter(block::Column::BlockedId.is_in(people))
        .all(db)
        .await?
        .into_iter()
        .map(|b| (b.user_id.min(b.blocked_id), b.user_id.max(b.blocked_id)))
        .filter(|pair| wanted.contains(pair))
        .collect())
}

/// A user as an invitation or the blocked list names them.
pub fn person(user: &user::Model) -> Person {
    Person {
        user_id: user.id,
        username: user.username.clone(),
        name: user.display_name(),
    }
}

/// Why a message could not be stored (it was not acknowledged).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the message writer is overloaded")]
    Busy,
    #[error("the message writer has stopped")]
    Stopped,
    /// Shared: one batch's failure answers each of its requests.
    #[error("database")]
    Database(#[source] std::sync::Arc<DbErr>),
    /// The writer lost track of a request's result (a bug, logged as such).
    #[error("message writer: {0}")]
    Internal(String),
    /// The request breaks a rule (B3 `code`): an answer, not a failure.
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
}

impl StoreError {
    /// The B3 error a client is answered with; failures are logged in
    /// `span` and answered `internal` with an id.
    pub fn reply(&self, span: &tracing::Span, kind: RequestKind) -> ErrorReply {
        match self {
            StoreError::Refused { code, message } => ErrorReply::new(*code, message.clone()),
            StoreError::Busy if kind == RequestKind::Message => ErrorReply::new(
                ErrorCode::RateLimited,
                "server busy; message not stored, resend it",
            ),
            StoreError::Busy => ErrorReply::new(
                ErrorCode::RateLimited,
                "server busy; nothing changed, try again",
            ),
            e => super::internal_reply(span, kind, e),
        }
    }
}
