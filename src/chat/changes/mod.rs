//! Changes to stored messages (PROTOCOL.md B8): edits, deletions and
//! reactions. Each change that changes something is an event of its
//! conversation's log (B7), with the next `seq`, committed by the message
//! writer (`writer/`) in the same order as new messages, so live delivery
//! and `sync` carry them in one order.
//!
//! The rules live here, checked inside the transaction that applies the
//! change, with the message's row locked: two instances changing the same
//! message at once see each other's result (a deletion racing an edit never
//! brings the text back). The conversation's row is locked only at the end,
//! to number the events (`apply_all`).

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use entity::{chat, chat_member, message, message_event, reaction};
use message_event::EventKind;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect,
};

use super::messages::ConversationFrames;
use super::protocol::{
    format_time, ChatId, ErrorCode, MessageDeleted, MessageEdited, ReactionEvent, Reply,
    RequestKind, ServerEvent, UserId,
};
use super::store::{self, StoreError};

mod apply;

pub use apply::*;

/// Most distinct emoji on one message.
pub const MAX_EMOJI_PER_MESSAGE: u64 = 20;
/// Why a message or change in a direct conversation with a block is refused (C10).
pub const BLOCKED: &str = "messages between you and this person are blocked";
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

impl Applied {
    /// Sets the `seq` of the event that made this state (numbered last).
    fn numbered(&mut self, seq: i64) {
        match self {
            Applied::Edited(e) => e.seq = Some(seq),
            Applied::Deleted(d) => d.seq = seq,
            Applied::Reacted(r) => r.seq = Some(seq),
        }
    }
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

/// Why `content` is not a message's text, if it is not (B3): the rule for
/// `message`, `edit_message` and REST's edit alike.
pub fn content_error(content: &str, max_chars: usize) -> Option<String> {
    let chars = content.trim().chars().count();
    if chars == 0 {
        Some("content must not be empty".into())
    } else if chars > max_chars {
        Some(format!("content is longer than {max_chars} characters"))
    } else {
        None
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

/// The conversation of each message `batch` changes (a message never moves
/// between conversations, so this is read before any transaction).
pub async fn chats_of(
    db: &DatabaseConnection,
    batch: &[ChangeRequest],
) -> Result<HashMap<i64, uuid::Uuid>, DbErr> {
    let ids: BTreeSet<i64> = batch.iter().map(|r| r.change.message_id()).collect();
    Ok(message::Entity::find()
        .select_only()
        .column(message::Column::Id)
        .column(message::Column::ChatId)
        .filter(message::Column::Id.is_in(ids))
        .into_tuple::<(i64, uuid::Uuid)>()
        .all(db)
        .await?
        .into_iter()
        .collect())
}

/// Applies `batch` in order, in one transaction of its own; each entry's
/// result is its answer (a refusal is an answer, not a failure of the
/// batch). `Err` when the database failed: nothing of the batch was stored.
pub async fn commit(
    db: &DatabaseConnection,
    batch: &[ChangeRequest],
    edit_window: chrono::Duration,
) -> Result<Vec<Result<ChangeOutcome, StoreError>>, DbErr> {
    let chat_of = chats_of(db, batch).await?;
    let txn = crate::db::begin_write_uncancelled(db).await?;
    let results = apply_all(&txn, batch, &chat_of, edit_window).await?;
    txn.commit().await?;
    Ok(results)
}
