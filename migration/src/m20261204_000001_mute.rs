//! Muted conversations (PROTOCOL.md C17): a member who muted a conversation
//! gets no desktop notification, sound or Web Push for it, on any device.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ChatMembers {
    Table,
    Muted,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ChatMembers::Table)
                    .add_column(
                        ColumnDef::new(ChatMembers::Muted)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ChatMembers::Table)
                    .drop_column(ChatMembers::Muted)
                    .to_owned(),
            )
            .await
    }
}
