//! `blocks`: who blocked whom.

use sea_orm::entity::prelude::*;

/// `user_id` blocked `blocked_id`: no direct messages between them either
/// way, no presence in their direct conversation, and `blocked_id` cannot
/// put `user_id` in a group.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "blocks")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: i64,
    #[sea_orm(primary_key, auto_increment = false)]
    pub blocked_id: i64,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
