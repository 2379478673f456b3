//! `group_changes`: what happened to a group, for its conversation to tell
//! (PROTOCOL.md C20).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "group_changes")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub chat_id: Uuid,
    /// `created`, `members_added`, `member_removed` or `renamed`.
    pub kind: String,
    /// Who made it (null once their account is gone).
    pub by_id: Option<i64>,
    /// Who joined or was removed: user ids, comma-separated.
    #[sea_orm(column_type = "Text")]
    pub user_ids: String,
    /// The title it was given (created, renamed).
    pub title: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
