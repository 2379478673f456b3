//! The queries chat needs: contacts (`contacts.rs`, with the groups'
//! members kept between lists in `rosters.rs`), membership (`chats.rs`),
//! history and read marks (`history.rs`); here, the quotes replies show,
//! blocked pairs, people's profiles, and `StoreError`, why something was
//! not stored.
//! Messages are written by the group-commit writer (`writer/`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use entity::{block, chat, chat_member, message, message_event, reaction, user};
use sea_orm::sea_query::{Alias, Expr, Func, Order, Query};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    FromQueryResult, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::membership::{group_presence, Audience, ChatEntry};
use super::presence::{Presence, PresenceView};
use super::protocol::{
    format_time, AttachmentInfo, ChatId, Contact, Conversation, ConversationKind, Direction,
    ErrorCode, ErrorReply, GroupChangeItem, HistoryItem, HistoryPage, LastMessage, MemberItem,
    MemberRole, Person, Quote, ReactionCount, RequestKind, UserId,
};

mod attachments;
mod chats;
mod contacts;
mod group_changes;
mod history;
mod page_statement;
mod position;
mod rosters;
mod seqs;

pub use attachments::*;
pub use chats::*;
pub use contacts::*;
pub use group_changes::*;
pub use history::*;
use position::around;
pub use rosters::*;
pub use seqs::take_seqs;

/// Largest page of history one request may ask for.
pub const MAX_HISTORY_PAGE: u64 = 200;
/// The page size when a request names none.
pub const DEFAULT_HISTORY_PAGE: u64 = 50;

/// Most values in one `IN (...)` list.
const IN_CHUNK: usize = 1000;

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

/// The two user ids of a direct conversation's key ("small:large").
pub(crate) fn direct_pair(key: &str) -> Option<(i64, i64)> {
    let (a, b) = key.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
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

/// Among the pairs `(a, b)`, those with a block either way, as
/// `(smaller, larger)`. One query over the people involved (two `IN`
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
pub fn person(user: &user::Profile) -> Person {
    Person {
        user_id: user.id,
        username: user.username.clone(),
        name: user.display_name(),
    }
}

/// How many conversations `user` is in (at least one, as a cost), by the
/// membership table's user index.
pub async fn conversation_count<C: ConnectionTrait>(db: &C, user: UserId) -> Result<u32, DbErr> {
    let count = chat_member::Entity::find()
        .filter(chat_member::Column::UserId.eq(user.0))
        .count(db)
        .await?;
    Ok(u32::try_from(count.max(1)).unwrap_or(u32::MAX))
}

/// Whether `user` is a member of `chat` (one primary-key lookup).
pub async fn is_member<C: ConnectionTrait>(
    db: &C,
    user: UserId,
    chat: ChatId,
) -> Result<bool, DbErr> {
    let row = chat_member::Entity::find_by_id((chat.0, user.0))
        .one(db)
        .await?;
    Ok(row.is_some())
}

/// The profiles of those of `ids` who have an account, by id.
pub async fn profiles<C: ConnectionTrait>(
    db: &C,
    ids: impl IntoIterator<Item = i64>,
) -> Result<HashMap<i64, user::Profile>, DbErr> {
    let ids: Vec<i64> = ids
        .into_iter()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut found = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(IN_CHUNK) {
        for profile in user::Entity::find()
            .select_only()
            .columns(user::Profile::COLUMNS)
            .filter(user::Column::Id.is_in(chunk.to_vec()))
            .into_model::<user::Profile>()
            .all(db)
            .await?
        {
            found.insert(profile.id, profile);
        }
    }
    Ok(found)
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
            e => super::failure_reply(span, kind, e),
        }
    }
}
