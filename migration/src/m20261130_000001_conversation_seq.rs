//! One order per conversation (PROTOCOL.md B7): `chats.seq` is the
//! conversation's latest event number and `messages.seq` each message's.
//! Existing messages are numbered per conversation in id order.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Chats {
    Table,
    Seq,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    ChatId,
    Seq,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, column) in [
            (Chats::Table.into_iden(), Chats::Seq.into_iden()),
            (Messages::Table.into_iden(), Messages::Seq.into_iden()),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .add_column(ColumnDef::new(column).big_integer().not_null().default(0))
                        .to_owned(),
                )
                .await?;
        }
        let db = manager.get_connection();
        let number_messages = match db.get_database_backend() {
            DatabaseBackend::MySql => {
                "UPDATE messages m JOIN (SELECT id, ROW_NUMBER() OVER \
                 (PARTITION BY chat_id ORDER BY id) AS n FROM messages) r ON m.id = r.id \
                 SET m.seq = r.n"
            }
            _ => {
                "UPDATE messages SET seq = r.n FROM (SELECT id, ROW_NUMBER() OVER \
                 (PARTITION BY chat_id ORDER BY id) AS n FROM messages) AS r \
                 WHERE messages.id = r.id"
            }
        };
        db.execute_unprepared(number_messages).await?;
        db.execute_unprepared(
            "UPDATE chats SET seq = COALESCE((SELECT MAX(m.seq) FROM messages m \
             WHERE m.chat_id = chats.id), 0)",
        )
        .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_messages_chat_seq")
                    .table(Messages::Table)
                    .col(Messages::ChatId)
                    .col(Messages::Seq)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("uq_messages_chat_seq")
                    .table(Messages::Table)
                    .to_owned(),
            )
            .await?;
        for (table, column) in [
            (Messages::Table.into_iden(), Messages::Seq.into_iden()),
            (Chats::Table.into_iden(), Chats::Seq.into_iden()),
        ] {
            manager
                .alter_table(Table::alter().table(table).drop_column(column).to_owned())
                .await?;
        }
        Ok(())
    }
}
