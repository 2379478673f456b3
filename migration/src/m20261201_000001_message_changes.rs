//! Replies, edits, deletions and reactions (PROTOCOL.md B8).
//!
//! - `messages` gains `reply_to`, `edited_at`, `deleted` and
//!   `original_content` (the text as first sent, kept once the message is
//!   edited so that `sync` replays its `message` event as it was pushed).
//! - `message_events`: the conversation-log events that are not a new
//!   message (an edit, a deletion, a reaction change), each with the `seq`
//!   it took in its conversation (B7).
//! - `reactions`: who reacted to what with which emoji, now.
//!
//! Emoji columns compare bytes on MySQL (`utf8mb4_bin`): its default
//! collations weigh every emoji outside the Basic Multilingual Plane the
//! same, which would make 👍 and 😂 one key.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

use crate::m20261125_000001_create_schema::{id_column, timestamp};

#[derive(DeriveIden)]
enum Messages {
    Table,
    Id,
    ReplyTo,
    EditedAt,
    Deleted,
    OriginalContent,
}

#[derive(DeriveIden)]
enum MessageEvents {
    Table,
    Id,
    ChatId,
    Seq,
    MessageId,
    Kind,
    UserId,
    Content,
    Emoji,
    Added,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Reactions {
    Table,
    MessageId,
    UserId,
    Emoji,
    CreatedAt,
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

/// An emoji: one grapheme cluster, at most 64 bytes, compared as bytes.
fn emoji(backend: DatabaseBackend, name: impl IntoIden) -> ColumnDef {
    let mut col = ColumnDef::new(name);
    match backend {
        DatabaseBackend::MySql => col.custom(Alias::new(
            "VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        )),
        _ => col.string_len(64),
    };
    col
}

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        // One column per statement: SQLite adds one at a time.
        for column in [
            ColumnDef::new(Messages::ReplyTo)
                .big_integer()
                .null()
                .to_owned(),
            timestamp(backend, Messages::EditedAt).null().to_owned(),
            ColumnDef::new(Messages::Deleted)
                .boolean()
                .not_null()
                .default(false)
                .to_owned(),
            ColumnDef::new(Messages::OriginalContent)
                .text()
                .null()
                .to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Messages::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(MessageEvents::Table)
                    .if_not_exists()
                    .col(id_column(backend, MessageEvents::Id))
                    .col(ColumnDef::new(MessageEvents::ChatId).uuid().not_null())
                    .col(ColumnDef::new(MessageEvents::Seq).big_integer().not_null())
                    .col(
                        ColumnDef::new(MessageEvents::MessageId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(MessageEvents::Kind)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(ColumnDef::new(MessageEvents::UserId).big_integer().null())
                    .col(ColumnDef::new(MessageEvents::Content).text().null())
                    .col(emoji(backend, MessageEvents::Emoji).null())
                    .col(ColumnDef::new(MessageEvents::Added).boolean().null())
                    .col(timestamp(backend, MessageEvents::CreatedAt).not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_message_events_chat")
                            .from(MessageEvents::Table, MessageEvents::ChatId)
                            .to(Chats::Table, Chats::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_message_events_message")
                            .from(MessageEvents::Table, MessageEvents::MessageId)
                            .to(Messages::Table, Messages::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_message_events_user")
                            .from(MessageEvents::Table, MessageEvents::UserId)
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
                    .name("uq_message_events_chat_seq")
                    .table(MessageEvents::Table)
                    .col(MessageEvents::ChatId)
                    .col(MessageEvents::Seq)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_message_events_message")
                    .table(MessageEvents::Table)
                    .col(MessageEvents::MessageId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Reactions::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Reactions::MessageId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Reactions::UserId).big_integer().not_null())
                    .col(emoji(backend, Reactions::Emoji).not_null())
                    .col(timestamp(backend, Reactions::CreatedAt).not_null())
                    .primary_key(
                        Index::create()
                            .col(Reactions::MessageId)
                            .col(Reactions::UserId)
                            .col(Reactions::Emoji),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_reactions_message")
                            .from(Reactions::Table, Reactions::MessageId)
                            .to(Messages::Table, Messages::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_reactions_user")
                            .from(Reactions::Table, Reactions::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Reactions::Table.into_iden(),
            MessageEvents::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        for column in [
            Messages::OriginalContent.into_iden(),
            Messages::Deleted.into_iden(),
            Messages::EditedAt.into_iden(),
            Messages::ReplyTo.into_iden(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Messages::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
