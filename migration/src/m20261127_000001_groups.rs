//! Group conversations (PROTOCOL.md B6): each member's role, so a group has
//! an owner. Direct conversations' members are all `member`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ChatMembers {
    Table,
    Role,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ChatMembers::Table)
                    .add_column(
                        ColumnDef::new(ChatMembers::Role)
                            .string_len(16)
                            .not_null()
                            .default("member"),
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
                    .drop_column(ChatMembers::Role)
                    .to_owned(),
            )
            .await
    }
}
