//! `group_changes`: what happened to a group, for its conversation to tell
//! (PROTOCOL.md C20).
//!
//! A group's newest row is also its roster's version: contact lists keep
//! a group's member ids under it (`store::Rosters`), so every membership
//! change writes a row, and rows are only ever added. Deleting a group's
//! newest row would take the version back to one a stale roster may be
//! kept under.

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
