//! `message_events`: the events of a conversation's log (PROTOCOL.md B7)
//! that are not a new message: an edit, a deletion, a reaction change (B8).

use sea_orm::entity::prelude::*;

/// What an event did to its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum EventKind {
    /// Its sender changed its text (`content`).
    #[sea_orm(string_value = "edited")]
    Edited,
    /// It was deleted.
    #[sea_orm(string_value = "deleted")]
    Deleted,
    /// `user_id` set (`added`) or took back a reaction with `emoji`.
    #[sea_orm(string_value = "reaction")]
    Reaction,
}

/// One event, with its place in its conversation's order: `(chat_id, seq)`
/// is unique, and shares the numbering with `messages.seq`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "message_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub chat_id: Uuid,
    pub seq: i64,
    pub message_id: i64,
    pub kind: EventKind,
    /// Who did it (null once their account is deleted).
    pub user_id: Option<i64>,
    /// An edit's new text; emptied when the message is deleted.
    #[sea_orm(column_type = "Text", nullable)]
    pub content: Option<String>,
    pub emoji: Option<String>,
    /// A reaction change: set (true) or taken back (false).
    pub added: Option<bool>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
