//! `push_throttle`: when a subscription was last pushed a conversation's
//! message (at most one per 30 s, PROTOCOL.md B11).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "push_throttle")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub subscription_id: i64,
    #[sea_orm(primary_key, auto_increment = false)]
    pub chat_id: Uuid,
    pub last_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
