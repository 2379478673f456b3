//! Invitations to groups (PROTOCOL.md C9): someone added by a person they
//! have never written to is invited instead, and joins only by accepting.
//! A declined invitation is kept, so the group cannot invite them again.

use sea_orm_migration::prelude::*;

use crate::m20261125_000001_create_schema::timestamp;

#[derive(DeriveIden)]
enum Invitations {
    Table,
    ChatId,
    UserId,
    InvitedBy,
    CreatedAt,
    DeclinedAt,
}

#[derive(DeriveIden)]
enum Chats {
    Table,
    Id,
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
                    .table(Invitations::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Invitations::ChatId).uuid().not_null())
                    .col(ColumnDef::new(Invitations::UserId).big_integer().not_null())
                    .col(ColumnDef::new(Invitations::InvitedBy).big_integer().null())
                    .col(timestamp(backend, Invitations::CreatedAt).not_null())
                    .col(timestamp(backend, Invitations::DeclinedAt).null())
                    .primary_key(
                        Index::create()
                            .col(Invitations::ChatId)
                            .col(Invitations::UserId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_invitations_chat")
                            .from(Invitations::Table, Invitations::ChatId)
                            .to(Chats::Table, Chats::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_invitations_user")
                            .from(Invitations::Table, Invitations::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_invitations_invited_by")
                            .from(Invitations::Table, Invitations::InvitedBy)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::SetNull),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_invitations_user")
                    .table(Invitations::Table)
                    .col(Invitations::UserId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Invitations::Table).to_owned())
            .await
    }
}

#[derive(DeriveMigrationName)]
pub struct Migration;
