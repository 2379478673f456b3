//! `push_outbox`: a push decided and not yet accepted by the push service.
//! The row goes once the service accepts it (or refuses it for good), so a
//! restart loses none.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "push_outbox")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub subscription_id: i64,
    /// The message it tells of; its text is read when sent, so a message
    /// deleted meanwhile leaves no copy here.
    pub message_id: i64,
    /// Not sent before this (a retry's backoff).
    pub not_before: DateTimeUtc,
    pub attempts: i32,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
