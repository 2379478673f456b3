//! Attachments (PROTOCOL.md B9): one row per uploaded file. The bytes are
//! in the object store (a directory, S3 or Google Cloud Storage) under the
//! row's id; the row says who uploaded it, what it is, and where it was
//! sent. `state` is `uploading` while the body streams in, `ready` once it
//! is stored, and `removed` once its message was deleted or it was never
//! sent within a day: the sweep then deletes the object and the row.

use sea_orm_migration::prelude::*;

use crate::m20261125_000001_create_schema::timestamp;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Attachments {
    Table,
    Id,
    UploaderId,
    Name,
    ContentType,
    Size,
    Width,
    Height,
    State,
    MessageId,
    ChatId,
    Position,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Messages {
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
                    .table(Attachments::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Attachments::Id)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(Attachments::UploaderId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Attachments::Name).string_len(255).not_null())
                    .col(
                        ColumnDef::new(Attachments::ContentType)
                            .string_len(127)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Attachments::Size).big_integer().not_null())
                    .col(ColumnDef::new(Attachments::Width).integer().null())
                    .col(ColumnDef::new(Attachments::Height).integer().null())
                    .col(ColumnDef::new(Attachments::State).string_len(16).not_null())
                    .col(ColumnDef::new(Attachments::MessageId).big_integer().null())
                    .col(ColumnDef::new(Attachments::ChatId).uuid().null())
                    .col(
                        ColumnDef::new(Attachments::Position)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(timestamp(backend, Attachments::CreatedAt).not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_attachments_uploader")
                            .from(Attachments::Table, Attachments::UploaderId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_attachments_message")
                            .from(Attachments::Table, Attachments::MessageId)
                            .to(Messages::Table, Messages::Id)
                            .on_delete(ForeignKeyAction::SetNull),
                    )
                    .to_owned(),
            )
            .await?;
        // A message's files (history, sync, deletion); a user's unsent
        // uploads (the quota); what the sweep looks for.
        for (name, columns) in [
            ("idx_attachments_message", &[Attachments::MessageId][..]),
            (
                "idx_attachments_uploader",
                &[Attachments::UploaderId, Attachments::State][..],
            ),
            (
                "idx_attachments_state",
                &[Attachments::State, Attachments::CreatedAt][..],
            ),
        ] {
            let mut index = Index::create();
            index.if_not_exists().name(name).table(Attachments::Table);
            for column in columns {
                index.col(*column);
            }
            manager.create_index(index.to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Attachments::Table).to_owned())
            .await
    }
}
