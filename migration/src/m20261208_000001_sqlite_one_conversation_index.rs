//! SQLite: `messages` keeps one index keyed by conversation,
//! `uq_messages_chat_seq`, and loses `idx_messages_chat_id_id`.
//!
//! Every index whose key starts with the conversation costs a batch one
//! B-tree page per conversation in it, written whole to the WAL and again
//! by the checkpoint: with messages spread over many conversations, the
//! main part of what a commit writes. Within a conversation `id` and `seq`
//! grow together (both are taken in commit order), so the queries that
//! looked a conversation's messages up by `id` read them by `seq` instead
//! (`chat/store`: the newest message, unread counts, a page next to an id
//! that is not a message of the conversation). On SQLite every index ends
//! with the row's id, so the `(chat_id, seq)` index holds the ids too.
//!
//! PostgreSQL and MySQL keep the index: search walks a conversation's
//! messages by `(chat_id, id)` there (`chat/search.rs`). Dropping an index
//! takes no time; the way back builds it again.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        sqlite_only(manager, "DROP INDEX IF EXISTS idx_messages_chat_id_id").await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        sqlite_only(
            manager,
            "CREATE INDEX IF NOT EXISTS idx_messages_chat_id_id ON messages (chat_id, id)",
        )
        .await
    }
}

/// Runs `sql` on SQLite; nothing on the other databases.
pub(crate) async fn sqlite_only(manager: &SchemaManager<'_>, sql: &str) -> Result<(), DbErr> {
    crate::only_on(manager, DatabaseBackend::Sqlite, sql).await
}
