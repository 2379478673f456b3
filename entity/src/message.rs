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
