//! `messages`: what was said, in which conversation, by whom.

use sea_orm::entity::prelude::*;

/// One stored message. `(sender_id, chat_id, client_id)` is unique, which
/// makes a client's resend to a conversation idempotent.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "messages")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub chat_id: Uuid,
    /// Null once the sender's account is deleted.
    pub sender_id: Option<i64>,
    #[sea_orm(column_type = "Text")]
    pub content: String,
    pub client_id: Option<String>,
    pub created_at: DateTimeUtc,
    /// Its place in the conversation's order (PROTOCOL.md B7): 1, 2, 3…
    /// with no gaps, in commit order; `(chat_id, seq)` is unique.
    pub seq: i64,
    /// The message this one answers (B8), of the same conversation.
    pub reply_to: Option<i64>,
    /// When its sender last changed its text (B8).
    pub edited_at: Option<DateTimeUtc>,
    /// Deleted (B8): `content` is empty and nothing of it is kept.
    pub deleted: bool,
    /// The text as first sent, once the message has been edited: `sync`
    /// replays the `message` event as it was pushed. Null otherwise, and
    /// once deleted.
    #[sea_orm(column_type = "Text", nullable)]
    pub original_content: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::chat::Entity",
        from = "Column::ChatId",
        to = "super::chat::Column::Id",
        on_delete = "Cascade"
    )]
    Chat,
    #[sea_orm(
        belongs_to = "super::user::Entity",
        from = "Column::SenderId",
        to = "super::user::Column::Id",
        on_delete = "SetNull"
    )]
    Sender,
}

impl Related<super::chat::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Chat.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
