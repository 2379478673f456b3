//! The four tables of DESIGN.md "Data", with their indexes and constraints.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Username,
    Email,
    FirstName,
    LastName,
    PasswordHash,
    IsActive,
    IsStaff,
    IsSuperuser,
    TokenVersion,
    CreatedAt,
    LastLogin,
}

#[derive(DeriveIden)]
enum Chats {
    Table,
    Id,
    Kind,
    Title,
    DirectKey,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ChatMembers {
    Table,
    ChatId,
    UserId,
    JoinedAt,
    LastReadMessageId,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    Id,
    ChatId,
    SenderId,
    Content,
    ClientId,
    CreatedAt,
}

/// A UTC timestamp column that keeps microseconds on every backend: MySQL's
/// plain `timestamp` would drop them, so it gets `DATETIME(6)` (sqlx sets the
/// session time zone to UTC).
pub(crate) fn timestamp(backend: DatabaseBackend, name: impl IntoIden) -> ColumnDef {
    let mut col = ColumnDef::new(name);
    match backend {
        DatabaseBackend::MySql => col.custom(Alias::new("DATETIME(6)")),
        _ => col.timestamp_with_time_zone(),
    };
    col
}

/// A bigint auto-increment primary key; SQLite only allows AUTOINCREMENT (which
/// guarantees ids are never reused) on `INTEGER PRIMARY KEY`, a 64-bit column there.
pub(crate) fn id_column(backend: DatabaseBackend, name: impl IntoIden) -> ColumnDef {
    let mut col = ColumnDef::new(name);
    match backend {
        DatabaseBackend::Sqlite => col.integer(),
        _ => col.big_integer(),
    };
    col.not_null().auto_increment().primary_key();
    col
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .if_not_exists()
                    .col(id_column(backend, Users::Id))
                    .col(
                        ColumnDef::new(Users::Username)
                            .string_len(150)
                            .not_null()
                            .unique_key(),
                    )
                    .col(
                        ColumnDef::new(Users::Email)
                            .string_len(254)
                            .not_null()
                            .default(""),
                    )
                    .col(
                        ColumnDef::new(Users::FirstName)
                            .string_len(150)
                            .not_null()
                            .default(""),
                    )
                    .col(
                        ColumnDef::new(Users::LastName)
                            .string_len(150)
                            .not_null()
                            .default(""),
                    )
                    .col(
                        ColumnDef::new(Users::PasswordHash)
                            .string_len(255)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Users::IsActive)
                            .boolean()
                            .not_null()
                            .default(true),
                    )
                    .col(
                        ColumnDef::new(Users::IsStaff)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .col(
                        ColumnDef::new(Users::IsSuperuser)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .col(
                        ColumnDef::new(Users::TokenVersion)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(timestamp(backend, Users::CreatedAt).not_null())
                    .col(timestamp(backend, Users::LastLogin).null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Chats::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Chats::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Chats::Kind).string_len(16).not_null())
                    .col(ColumnDef::new(Chats::Title).string_len(255).null())
                    .col(
                        ColumnDef::new(Chats::DirectKey)
                            .string_len(64)
                            .null()
                            .unique_key(),
                    )
                    .col(timestamp(backend, Chats::CreatedAt).not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ChatMembers::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(ChatMembers::ChatId).uuid().not_null())
                    .col(ColumnDef::new(ChatMembers::UserId).big_integer().not_null())
                    .col(timestamp(backend, ChatMembers::JoinedAt).not_null())
                    .col(
                        ColumnDef::new(ChatMembers::LastReadMessageId)
                            .big_integer()
                            .null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(ChatMembers::ChatId)
                            .col(ChatMembers::UserId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_chat_members_chat")
                            .from(ChatMembers::Table, ChatMembers::ChatId)
                            .to(Chats::Table, Chats::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_chat_members_user")
                            .from(ChatMembers::Table, ChatMembers::UserId)
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
                    .name("idx_chat_members_user")
                    .table(ChatMembers::Table)
                    .col(ChatMembers::UserId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Messages::Table)
                    .if_not_exists()
                    .col(id_column(backend, Messages::Id))
                    .col(ColumnDef::new(Messages::ChatId).uuid().not_null())
                    .col(ColumnDef::new(Messages::SenderId).big_integer().null())
                    .col(ColumnDef::new(Messages::Content).text().not_null())
                    .col(ColumnDef::new(Messages::ClientId).string_len(64).null())
                    .col(timestamp(backend, Messages::CreatedAt).not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_messages_chat")
                            .from(Messages::Table, Messages::ChatId)
                            .to(Chats::Table, Chats::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_messages_sender")
                            .from(Messages::Table, Messages::SenderId)
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
                    .name("idx_messages_chat_id_id")
                    .table(Messages::Table)
                    .col(Messages::ChatId)
                    .col(Messages::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("uq_messages_sender_client_id")
                    .table(Messages::Table)
                    .col(Messages::SenderId)
                    .col(Messages::ClientId)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Messages::Table.into_iden(),
            ChatMembers::Table.into_iden(),
            Chats::Table.into_iden(),
            Users::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
