//! Usernames' keys again, with `i` as `l` (a capital `I` looks like `l`, and
//! case folding had made it an `i`, so `aIice` could register beside
//! `alice`). Accounts that already collide keep working: the earlier one
//! gets the plain key, a later one its key with its id appended, as the
//! first keying did.

use std::collections::HashSet;

use entity::user;
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let users: Vec<(i64, String)> = user::Entity::find()
            .select_only()
            .column(user::Column::Id)
            .column(user::Column::Username)
            .order_by_asc(user::Column::Id)
            .into_tuple()
            .all(db)
            .await?;
        let set_key = |id: i64, key: String| {
            user::Entity::update_many()
                .col_expr(user::Column::UsernameKey, Expr::value(key))
                .filter(user::Column::Id.eq(id))
                .exec(db)
        };
        // First out of the way (keys are unique: a new key may be another
        // account's old one), then the new keys, earliest account first.
        for (id, _) in &users {
            set_key(*id, format!("#rekeying#{id}")).await?;
        }
        let mut taken = HashSet::new();
        for (id, username) in users {
            let mut key = user::username_key(&username);
            if !taken.insert(key.clone()) {
                key = format!("{key}#{id}");
            }
            set_key(id, key).await?;
        }
        Ok(())
    }

    async fn down(&self, _: &SchemaManager) -> Result<(), DbErr> {
        // The earlier keying is not kept anywhere to go back to; the keys
        // this one wrote are unique and work with the earlier code too.
        Ok(())
    }
}
