//! SQLite and PostgreSQL: the index that finds a resend by its `client_id`
//! (`uq_messages_sender_chat_client_id`, B7) holds only the messages that
//! have one.
//!
//! A message without a `client_id` (every message of the old web client,
//! part A) can never be found by it, and NULLs never conflict in a unique
//! index, yet each such message had an entry: on SQLite one more B-tree
//! keyed by conversation to write per message, which is a page per
//! conversation per batch in the WAL. The queries that use the index all
//! compare `client_id` with a value (`=` or `IN`), which both databases take
//! as proof that it is not null, so they still use it (tests/chat_features.rs,
//! `the_client_id_index_is_partial_and_used`).
//!
//! Nothing else needs it: no API deletes a user. An operator who deletes
//! one by hand makes the database set `sender_id` to null in that user's
//! messages with a scan of `messages`, no index starting with `sender_id`
//! left to find them.
//!
//! MySQL has no partial indexes, and its foreign key on `sender_id` needs
//! an index that starts with it: unchanged there.
//!
//! The index is built again when the first upgraded instance starts (on
//! PostgreSQL inside the migration's transaction): until it is built,
//! inserts into `messages` wait, on instances not yet upgraded too (the
//! build reads every message that has a `client_id`). Upgrade a large
//! database outside its busiest hour.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const PARTIAL: &str = "
DROP INDEX IF EXISTS uq_messages_sender_chat_client_id;
CREATE UNIQUE INDEX uq_messages_sender_chat_client_id
    ON messages (sender_id, chat_id, client_id) WHERE client_id IS NOT NULL;
";

const WHOLE: &str = "
DROP INDEX IF EXISTS uq_messages_sender_chat_client_id;
CREATE UNIQUE INDEX uq_messages_sender_chat_client_id
    ON messages (sender_id, chat_id, client_id);
";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        replace(manager, PARTIAL).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        replace(manager, WHOLE).await
    }
}

async fn replace(manager: &SchemaManager<'_>, sql: &str) -> Result<(), DbErr> {
    let db = manager.get_connection();
    match db.get_database_backend() {
        DatabaseBackend::Sqlite | DatabaseBackend::Postgres => {
            db.execute_unprepared(sql).await?;
        }
        _ => {}
    }
    Ok(())
}
