//! What happened to each group (who created, added, removed, left or
//! renamed it, and when), so its conversation tells it after a reload too
//! (PROTOCOL.md C20).

use sea_orm_migration::prelude::*;

use crate::m20261125_000001_create_schema::{id_column, timestamp};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum GroupChanges {
    Table,
    Id,
    ChatId,
    Kind,
    ById,
    UserIds,
    Title,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Chats {
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
                    .table(GroupChanges::Table)
                    .if_not_exists()
                    .col(id_column(backend, GroupChanges::Id))
                    .col(ColumnDef::new(GroupChanges::ChatId).uuid().not_null())
                    .col(ColumnDef::new(GroupChanges::Kind).string_len(16).not_null())
                    .col(ColumnDef::new(GroupChanges::ById).big_integer().null())
                    .col(ColumnDef::new(GroupChanges::UserIds).text().not_null())
                    .col(ColumnDef::new(GroupChanges::Title).string_len(100).null())
                    .col(timestamp(backend, GroupChanges::CreatedAt).not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_group_changes_chat")
                            .from(GroupChanges::Table, GroupChanges::ChatId)
                            .to(Chats::Table, Chats::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_group_changes_chat")
                    .table(GroupChanges::Table)
                    .col(GroupChanges::ChatId)
                    .col(GroupChanges::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(GroupChanges::Table).to_owned())
            .await
    }
}
