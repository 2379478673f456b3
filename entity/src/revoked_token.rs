//! `revoked_tokens`: tokens signed out one at a time (`POST /api/logout/`).

use sea_orm::entity::prelude::*;

/// The token whose `jti` is `id` was signed out; it is refused until
/// `expires_at` (seconds since the epoch), when it would have expired anyway
/// and the row is swept.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "revoked_tokens")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub user_id: i64,
    pub expires_at: i64,
    /// When it was signed out, in seconds since the epoch by the clock of
    /// the process that wrote the row (0: before this was recorded); the
    /// revocation sweep reads the recent ones.
    pub revoked_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
