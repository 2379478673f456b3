//! SQLite: the search index leaves the messages' file. Its triggers and
//! its FTS5 table `message_search` are dropped here; the server keeps the
//! index in a file of its own (`<DB_NAME>-search`), written behind the
//! writer on a connection of its own, and builds it from the messages
//! when the file is missing (`src/chat/search_index.rs`; BENCHMARKS.md,
//! "A fifteenth machine", has why). The pages the table held are free
//! pages of the messages' file from then on, reused by new rows (a
//! `VACUUM` gives them back to the disk).
//!
//! Undone, the table and its triggers are built again from the messages,
//! as by `m20261203_000001_search` and `m20261210_000001_sqlite_search_merges`.

use sea_orm_migration::prelude::*;

use crate::m20261203_000001_search::{SQLITE_DROP_TRIGGERS, SQLITE_FILL, SQLITE_TABLE};
use crate::m20261208_000001_sqlite_one_conversation_index::sqlite_only;
use crate::m20261210_000001_sqlite_search_merges::merges;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        sqlite_only(manager, SQLITE_DROP_TRIGGERS).await?;
        sqlite_only(manager, "DROP TABLE IF EXISTS message_search").await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        sqlite_only(manager, SQLITE_TABLE).await?;
        sqlite_only(manager, SQLITE_FILL).await?;
        merges(manager, 16, 64).await
    }
}
