//! Blocking (PROTOCOL.md C10): who blocked whom. A block stops direct
//! messages both ways, hides presence in the direct conversation, and keeps
//! the blocker out of the blocked user's groups.

use sea_orm_migration::prelude::*;

use crate::m20261125_000001_create_schema::timestamp;

#[derive(DeriveIden)]
enum Blocks {
    Table,
    UserId,
    BlockedId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        manager
            .create_table(
                Table::create()
                    .table(Blocks::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Blocks::UserId).big_integer().not_null())
                    .col(ColumnDef::new(Blocks::BlockedId).big_integer().not_null())
                    .col(timestamp(backend, Blocks::CreatedAt).not_null())
                    .primary_key(Index::create().col(Blocks::UserId).col(Blocks::BlockedId))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_blocks_user")
                            .from(Blocks::Table, Blocks::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_blocks_blocked")
                            .from(Blocks::Table, Blocks::BlockedId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_blocks_blocked")
                    .table(Blocks::Table)
                    .col(Blocks::BlockedId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Blocks::Table).to_owned())
            .await
    }
}

#[derive(DeriveMigrationName)]
pub struct Migration;
