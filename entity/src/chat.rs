//! `chats`: conversations, direct (two people) or group.

use sea_orm::entity::prelude::*;

/// Whether a conversation is between two people or a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum ChatKind {
    #[sea_orm(string_value = "direct")]
    Direct,
    #[sea_orm(string_value = "group")]
    Group,
}

/// One conversation. A direct chat's `direct_key` ("small_id:large_id") is
/// unique, so a pair of users has exactly one.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "chats")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub kind: ChatKind,
    pub title: Option<String>,
    #[sea_orm(unique)]
    pub direct_key: Option<String>,
    pub created_at: DateTimeUtc,
    /// The `seq` of the conversation's latest event (0: none yet). Bumped
    /// in the transaction that stores the events, which also serialises
    /// the commits of one conversation across instances.
    pub seq: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::chat_member::Entity")]
    ChatMember,
    #[sea_orm(has_many = "super::message::Entity")]
    Message,
}

impl Related<super::chat_member::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ChatMember.def()
    }
}

impl Related<super::message::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Message.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}

/// The `direct_key` of the conversation between two users, whatever their order.
pub fn direct_key(a: i64, b: i64) -> String {
    format!("{}:{}", a.min(b), a.max(b))
}
