//! Security rules that need the schema: usernames unique up to case, width
//! and look-alike letters (`users.username_key`), and `client_id`
//! de-duplicated per conversation rather than per sender.

use entity::user;
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    UsernameKey,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    ChatId,
    SenderId,
    ClientId,
}

/// Longest key: a skeleton can be longer than its username (`m` is `rn`).
const KEY_LEN: u32 = 512;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(
                        ColumnDef::new(Users::UsernameKey)
                            .string_len(KEY_LEN)
                            .not_null()
                            .default(""),
                    )
                    .to_owned(),
            )
            .await?;
        backfill_username_keys(manager).await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_users_username_key")
                    .table(Users::Table)
                    .col(Users::UsernameKey)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // The new index first: on MySQL the sender's foreign key needs an
        // index that starts with sender_id at every moment.
        manager
            .create_index(
                Index::create()
                    .name("uq_messages_sender_chat_client_id")
                    .table(Messages::Table)
                    .col(Messages::SenderId)
                    .col(Messages::ChatId)
                    .col(Messages::ClientId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("uq_messages_sender_client_id")
                    .table(Messages::Table)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("uq_messages_sender_client_id")
                    .table(Messages::Table)
                    .col(Messages::SenderId)
                    .col(Messages::ClientId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("uq_messages_sender_chat_client_id")
                    .table(Messages::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("uq_users_username_key")
                    .table(Users::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .drop_column(Users::UsernameKey)
                    .to_owned(),
            )
            .await
    }
}

/// Gives every existing account its key. Existing accounts keep working even
/// where two of them collide (`Bob` and `bob` registered before this rule):
/// the later one's key gets its id appended, so the index holds and only new
/// look-alikes are refused.
async fn backfill_username_keys(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    let db = manager.get_connection();
    let users: Vec<(i64, String)> = user::Entity::find()
        .select_only()
        .column(user::Column::Id)
        .column(user::Column::Username)
        .order_by_asc(user::Column::Id)
        .into_tuple()
        .all(db)
        .await?;
    let mut taken = std::collections::HashSet::new();
    for (id, username) in users {
        let mut key = user::username_key(&username);
        if !taken.insert(key.clone()) {
            key = format!("{key}#{id}");
        }
        user::Entity::update_many()
            .col_expr(user::Column::UsernameKey, Expr::value(key))
            .filter(user::Column::Id.eq(id))
            .exec(db)
            .await?;
    }
    Ok(())
}
