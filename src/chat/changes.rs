//! Changes to stored messages (PROTOCOL.md B8): edits, deletions and
//! reactions. Each change that changes something is an event of its
//! conversation's log (B7), with the next `seq`, committed by the message
//! writer (`writer.rs`) in the same order as new messages, so live delivery
//! and `sync` carry them in one order.
//!
//! The rules live here, checked inside the transaction that applies the
//! change, with the conversation's row locked: two instances changing the
//! same message at once see each other's result (a deletion racing an edit
//! never brings the text back).

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use entity::{chat, chat_member, message, message_event, reaction};
use message_event::EventKind;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};

use super::protocol::{
    format_time, ChatId, ErrorCode, MessageDeleted, MessageEdited, Quote, ReactionEvent, Reply,
    RequestKind, ServerEvent, UserId,
};
use super::server::ConversationFrames;
use super::writer::StoreError;

/// Most distinct emoji on one message.
pub const MAX_EMOJI_PER_MESSAGE: u64 = 20;
/// How much of the answered message a reply's `quote` shows, in characters.
pub const QUOTE_CHARS: usize = 200;
/// Why a change of a deleted message is refused.
pub const DELETED: &str = "the message was deleted";

/// A change one user asks for.
#[derive(Debug, Clone)]
pub struct ChangeRequest {
    pub user: UserId,
    pub change: Change,
}

/// What to change. Content and emoji are checked by the caller (`emoji`
/// already in its canonical form, see `canonical_emoji`).
#[derive(Debug, Clone)]
pub enum Change {
    Edit { id: i64, content: String },
    Delete { id: i64 },
    React { id: i64, emoji: String, on: bool },
}

impl Change {
    /// The message it changes.
    pub fn message_id(&self) -> i64 {
        match self {
            Change::Edit { id, .. } | Change::Delete { id } | Change::React { id, .. } => *id,
        }
    }

    /// The request it answers.
    pub fn kind(&self) -> RequestKind {
        match self {
            Change::Edit { .. } => RequestKind::EditMessage,
            Change::Delete { .. } => RequestKind::DeleteMessage,
            Change::React { .. } => RequestKind::React,
        }
    }
}

/// The state a change left, as its answer and (when it changed something)
/// its event tell it.
#[derive(Debug, Clone)]
pub enum Applied {
    Edited(MessageEdited),
    Deleted(MessageDeleted),
    Reacted(ReactionEvent),
}

/// What became of a change: `changed` is false when it asked for what was
/// already so (no event, no push).
#[derive(Debug, Clone)]
pub struct ChangeOutcome {
    pub applied: Applied,
    pub changed: bool,
}

impl ChangeOutcome {
    /// The `X_response` to whoever asked.
    pub fn ack_frame(&self) -> bytes::Bytes {
        let ok = Some("success");
        match &self.applied {
            Applied::Edited(e) => {
                let ack = MessageEdited {
                    status: ok,
                    ..e.clone()
                };
                ServerEvent::EditMessageResponse(Reply::Ok(&ack)).to_json()
            }
            Applied::Deleted(d) => {
                let ack = MessageDeleted {
                    status: ok,
                    ..d.clone()
                };
                ServerEvent::DeleteMessageResponse(Reply::Ok(&ack)).to_json()
            }
            Applied::Reacted(r) => {
                let ack = ReactionEvent {
                    status: ok,
                    ..r.clone()
                };
                ServerEvent::ReactResponse(Reply::Ok(&ack)).to_json()
            }
        }
    }

    /// The event's frames for every member, when something changed.
    pub fn event_frames(&self) -> Option<ConversationFrames> {
        if !self.changed {
            return None;
        }
        let (pk, seq, frame) = match &self.applied {
            Applied::Edited(e) => (e.pk, e.seq, ServerEvent::MessageEdited(e).to_json()),
            Applied::Deleted(d) => (d.pk, Some(d.seq), ServerEvent::MessageDeleted(d).to_json()),
            Applied::Reacted(r) => (r.pk, r.seq, ServerEvent::Reaction(r).to_json()),
        };
        Some(ConversationFrames {
            chat: pk,
            seq,
            user: None,
            own: None,
            others: frame,
        })
    }
}

/// The canonical (fully qualified) form of `text` when it is exactly one
/// emoji, so that "❤" and "❤️" are one reaction; `None` otherwise.
pub fn canonical_emoji(text: &str) -> Option<&'static str> {
    emojis::get(text).map(|e| e.as_str())
}

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

/// The frame of a stored event, as it was pushed (`sync`, hole filling).
/// An edit's text is the one it set (empty once the message was deleted).
pub fn event_frame(e: &message_event::Model) -> bytes::Bytes {
    let pk = ChatId(e.chat_id);
    match e.kind {
        EventKind::Edited => ServerEvent::MessageEdited(&MessageEdited {
            status: None,
            pk,
            seq: Some(e.seq),
            id: e.message_id,
            content: e.content.clone().unwrap_or_default(),
            edited_at: Some(format_time(&e.created_at)),
        })
        .to_json(),
        EventKind::Deleted => ServerEvent::MessageDeleted(&MessageDeleted {
            status: None,
            pk,
            seq: e.seq,
            id: e.message_id,
        })
        .to_json(),
        EventKind::Reaction => ServerEvent::Reaction(&ReactionEvent {
            status: None,
            pk,
            seq: Some(e.seq),
            id: e.message_id,
            user_id: e.user_id,
            emoji: e.emoji.clone().unwrap_or_default(),
            on: e.added.unwrap_or(false),
        })
        .to_json(),
    }
}

fn refused(code: ErrorCode, message: impl Into<String>) -> StoreError {
    StoreError::Refused {
        code,
        message: message.into(),
    }
}

fn not_found() -> StoreError {
    refused(ErrorCode::NotFound, "message not found")
}

/// Applies `batch` in order, in one transaction; each entry's result is its
/// answer (a refusal is an answer, not a failure of the batch). `Err` when
/// the database failed: nothing of the batch was stored.
pub async fn commit(
    db: &DatabaseConnection,
    batch: &[ChangeRequest],
    edit_window: chrono::Duration,
) -> Result<Vec<Result<ChangeOutcome, StoreError>>, DbErr> {
    let now = Utc::now();
    // A message never moves between conversations: which one each change
    // touches can be read before the transaction.
    let ids: Vec<i64> = batch.iter().map(|r| r.change.message_id()).collect();
    let chat_of: HashMap<i64, uuid::Uuid> = message::Entity::find()
        .select_only()
        .column(message::Column::Id)
        .column(message::Column::ChatId)
        .filter(message::Column::Id.is_in(ids))
        .into_tuple::<(i64, uuid::Uuid)>()
        .all(db)
        .await?
        .into_iter()
        .collect();
    let txn = db.begin().await?;
    let chats: BTreeSet<uuid::Uuid> = chat_of.values().copied().collect();
    let mut locked = lock_chats(&txn, &chats).await?;
    let before: HashMap<uuid::Uuid, i64> = locked.iter().map(|(id, c)| (*id, c.seq)).collect();
    let mut results = Vec::with_capacity(batch.len());
    for request in batch {
        let chat = chat_of
            .get(&request.change.message_id())
            .and_then(|id| locked.get_mut(id));
        let result = match chat {
            Some(chat) => apply(&txn, request, chat, edit_window, now).await?,
            None => Err(not_found()),
        };
        results.push(result);
    }
    for (id, chat) in &locked {
        if before.get(id) != Some(&chat.seq) {
            chat::Entity::update_many()
                .col_expr(chat::Column::Seq, Expr::value(chat.seq))
                .filter(chat::Column::Id.eq(*id))
                .exec(&txn)
                .await?;
        }
    }
    txn.commit().await?;
    Ok(results)
}

/// Locks `chats` for this transaction, in id order (new messages lock them
/// in the same order, `writer::next_seqs`), and reads them. SQLite has one
/// writer at a time: an UPDATE first makes this transaction that writer.
async fn lock_chats<C: ConnectionTrait>(
    txn: &C,
    chats: &BTreeSet<uuid::Uuid>,
) -> Result<HashMap<uuid::Uuid, chat::Model>, DbErr> {
    if chats.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<uuid::Uuid> = chats.iter().copied().collect();
    let mut query = chat::Entity::find()
        .filter(chat::Column::Id.is_in(ids.clone()))
        .order_by_asc(chat::Column::Id);
    if txn.get_database_backend() == DatabaseBackend::Sqlite {
        chat::Entity::update_many()
            .col_expr(chat::Column::Seq, Expr::col(chat::Column::Seq))
            .filter(chat::Column::Id.is_in(ids))
            .exec(txn)
            .await?;
    } else {
        query = query.lock_exclusive();
    }
    Ok(query
        .all(txn)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect())
}

/// Applies one change with `chat` locked; moves `chat.seq` when it stores
/// an event.
async fn apply<C: ConnectionTrait>(
    txn: &C,
    request: &ChangeRequest,
    chat: &mut chat::Model,
    edit_window: chrono::Duration,
    now: DateTime<Utc>,
) -> Result<Result<ChangeOutcome, StoreError>, DbErr> {
    let user = request.user;
    let id = request.change.message_id();
    let Some(m) = message::Entity::find_by_id(id).one(txn).await? else {
        return Ok(Err(not_found()));
    };
    let Some(member) = chat_member::Entity::find_by_id((chat.id, user.0))
        .one(txn)
        .await?
    else {
        return Ok(Err(not_found()));
    };
    let pk = ChatId(chat.id);
    let own = m.sender_id == Some(user.0);
    match &request.change {
        Change::Edit { content, .. } => {
            if !own {
                return Ok(Err(not_found()));
            }
            if m.deleted {
                return Ok(Err(refused(ErrorCode::Invalid, DELETED)));
            }
            if now - m.created_at > edit_window {
                let text = format!(
                    "a message can be edited for {} s after it was sent",
                    edit_window.num_seconds()
                );
                return Ok(Err(refused(ErrorCode::Invalid, text)));
            }
            if is_blocked(txn, chat).await? {
                return Ok(Err(refused(ErrorCode::Invalid, super::session::BLOCKED)));
            }
            if &m.content == content {
                let applied = Applied::Edited(MessageEdited {
                    status: None,
                    pk,
                    seq: None,
                    id,
                    content: m.content,
                    edited_at: m.edited_at.as_ref().map(format_time),
                });
                return Ok(Ok(ChangeOutcome {
                    applied,
                    changed: false,
                }));
            }
            let seq = next_seq(chat);
            message::Entity::update_many()
                .col_expr(message::Column::Content, Expr::value(content.clone()))
                .col_expr(message::Column::EditedAt, Expr::value(now))
                .col_expr(
                    message::Column::OriginalContent,
                    Expr::value(m.original_content.unwrap_or(m.content)),
                )
                .filter(message::Column::Id.eq(id))
                .exec(txn)
                .await?;
            insert_event(txn, chat.id, seq, id, EventKind::Edited, user, now, |e| {
                e.content = Set(Some(content.clone()));
            })
            .await?;
            Ok(Ok(ChangeOutcome {
                applied: Applied::Edited(MessageEdited {
                    status: None,
                    pk,
                    seq: Some(seq),
                    id,
                    content: content.clone(),
                    edited_at: Some(format_time(&now)),
                }),
                changed: true,
            }))
        }
        Change::Delete { .. } => {
            let owner =
                chat.kind == chat::ChatKind::Group && member.role == chat_member::Role::Owner;
            if !own && !owner {
                return Ok(Err(not_found()));
            }
            if m.deleted {
                // Asked again (a resend): the deletion that was made.
                let seq = message_event::Entity::find()
                    .select_only()
                    .column(message_event::Column::Seq)
                    .filter(message_event::Column::MessageId.eq(id))
                    .filter(message_event::Column::Kind.eq(EventKind::Deleted))
                    .into_tuple::<i64>()
                    .one(txn)
                    .await?
                    .unwrap_or(m.seq);
                let applied = Applied::Deleted(MessageDeleted {
                    status: None,
                    pk,
                    seq,
                    id,
                });
                return Ok(Ok(ChangeOutcome {
                    applied,
                    changed: false,
                }));
            }
            let seq = next_seq(chat);
            // Nothing of the text stays: not the message's, not its first
            // version's, not an edit event's. Its reactions go with it.
            message::Entity::update_many()
                .col_expr(message::Column::Content, Expr::value(""))
                .col_expr(
                    message::Column::OriginalContent,
                    Expr::value(Option::<String>::None),
                )
                .col_expr(message::Column::Deleted, Expr::value(true))
                .filter(message::Column::Id.eq(id))
                .exec(txn)
                .await?;
            message_event::Entity::update_many()
                .col_expr(message_event::Column::Content, Expr::value(""))
                .filter(message_event::Column::MessageId.eq(id))
                .filter(message_event::Column::Content.is_not_null())
                .exec(txn)
                .await?;
            reaction::Entity::delete_many()
                .filter(reaction::Column::MessageId.eq(id))
                .exec(txn)
                .await?;
            insert_event(txn, chat.id, seq, id, EventKind::Deleted, user, now, |_| {}).await?;
            Ok(Ok(ChangeOutcome {
                applied: Applied::Deleted(MessageDeleted {
                    status: None,
                    pk,
                    seq,
                    id,
                }),
                changed: true,
            }))
        }
        Change::React { emoji, on, .. } => {
            if m.deleted {
                return Ok(Err(refused(ErrorCode::Invalid, DELETED)));
            }
            if is_blocked(txn, chat).await? {
                return Ok(Err(refused(ErrorCode::Invalid, super::session::BLOCKED)));
            }
            let on = *on;
            let changed = if on {
                set_reaction(txn, id, user, emoji, now).await?
            } else {
                let taken = reaction::Entity::delete_many()
                    .filter(reaction::Column::MessageId.eq(id))
                    .filter(reaction::Column::UserId.eq(user.0))
                    .filter(reaction::Column::Emoji.eq(emoji.as_str()))
                    .exec(txn)
                    .await?;
                Ok(taken.rows_affected > 0)
            };
            let changed = match changed {
                Ok(changed) => changed,
                Err(refusal) => return Ok(Err(refusal)),
            };
            let seq = if changed {
                let seq = next_seq(chat);
                insert_event(txn, chat.id, seq, id, EventKind::Reaction, user, now, |e| {
                    e.emoji = Set(Some(emoji.clone()));
                    e.added = Set(Some(on));
                })
                .await?;
                Some(seq)
            } else {
                None
            };
            Ok(Ok(ChangeOutcome {
                applied: Applied::Reacted(ReactionEvent {
                    status: None,
                    pk,
                    seq,
                    id,
                    user_id: Some(user.0),
                    emoji: emoji.clone(),
                    on,
                }),
                changed,
            }))
        }
    }
}

/// Sets `user`'s `emoji` on message `id`: `Ok(true)` when it was not set,
/// `Ok(false)` when it was; refused when it would be one emoji too many.
async fn set_reaction<C: ConnectionTrait>(
    txn: &C,
    id: i64,
    user: UserId,
    emoji: &str,
    now: DateTime<Utc>,
) -> Result<Result<bool, StoreError>, DbErr> {
    let on_message = reaction::Entity::find().filter(reaction::Column::MessageId.eq(id));
    let set = on_message
        .clone()
        .filter(reaction::Column::UserId.eq(user.0))
        .filter(reaction::Column::Emoji.eq(emoji))
        .count(txn)
        .await?;
    if set > 0 {
        return Ok(Ok(false));
    }
    let present: Vec<String> = on_message
        .select_only()
        .column(reaction::Column::Emoji)
        .distinct()
        .into_tuple()
        .all(txn)
        .await?;
    if !present.iter().any(|e| e == emoji) && present.len() as u64 >= MAX_EMOJI_PER_MESSAGE {
        let text = format!("a message has at most {MAX_EMOJI_PER_MESSAGE} different reactions");
        return Ok(Err(refused(ErrorCode::Invalid, text)));
    }
    reaction::Entity::insert(reaction::ActiveModel {
        message_id: Set(id),
        user_id: Set(user.0),
        emoji: Set(emoji.to_owned()),
        created_at: Set(now),
    })
    .exec(txn)
    .await?;
    Ok(Ok(true))
}

/// Whether `chat` is a direct conversation with a block either way (C10).
async fn is_blocked<C: ConnectionTrait>(txn: &C, chat: &chat::Model) -> Result<bool, DbErr> {
    let Some((a, b)) = chat
        .direct_key
        .as_deref()
        .and_then(super::store::direct_pair)
    else {
        return Ok(false);
    };
    Ok(!super::blocks::blocked_pairs(txn, &[(a, b)])
        .await?
        .is_empty())
}

fn next_seq(chat: &mut chat::Model) -> i64 {
    chat.seq += 1;
    chat.seq
}

#[allow(clippy::too_many_arguments)]
async fn insert_event<C: ConnectionTrait>(
    txn: &C,
    chat: uuid::Uuid,
    seq: i64,
    message_id: i64,
    kind: EventKind,
    user: UserId,
    now: DateTime<Utc>,
    fill: impl FnOnce(&mut message_event::ActiveModel),
) -> Result<(), DbErr> {
    let mut event = message_event::ActiveModel {
        id: NotSet,
        chat_id: Set(chat),
        seq: Set(seq),
        message_id: Set(message_id),
        kind: Set(kind),
        user_id: Set(Some(user.0)),
        content: Set(None),
        emoji: Set(None),
        added: Set(None),
        created_at: Set(now),
    };
    fill(&mut event);
    message_event::Entity::insert(event).exec(txn).await?;
    Ok(())
}
