//! PostgreSQL: the search index's pending list (GIN's `fastupdate`) is
//! kept at 64 kB, GIN's smallest, instead of the server's 4 MB default.
//!
//! New entries of a GIN index go to a pending list first, and the insert
//! that finds the list over its limit moves the whole list into the index
//! before it commits. With 4 MB that was one insert batch in a few
//! thousand taking 100 to 500 ms, and every message that arrived meanwhile
//! waited behind it: the p99 of messages at 10,000 a second was 90 ms, its
//! median 3 ms. With 64 kB each move is small: p99 7–13 ms, throughput at
//! full speed within the runs' spread (BENCHMARKS.md "The search index's
//! pending list"). Turning the list off (`fastupdate = off`) gave the same
//! tail but a fifth less throughput at full speed.
//!
//! SQLite and MySQL have no such list: nothing to do.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The limit, in kB.
const PENDING_LIST_KB: u32 = 64;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() == DatabaseBackend::Postgres {
            db.execute_unprepared(&format!(
                "ALTER INDEX IF EXISTS idx_messages_chat_search \
                 SET (gin_pending_list_limit = {PENDING_LIST_KB})"
            ))
            .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() == DatabaseBackend::Postgres {
            db.execute_unprepared(
                "ALTER INDEX IF EXISTS idx_messages_chat_search RESET (gin_pending_list_limit)",
            )
            .await?;
        }
        Ok(())
    }
}
