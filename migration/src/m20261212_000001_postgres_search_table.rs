//! PostgreSQL: the search index leaves the messages' rows. The stored
//! `tsvector` column `messages.search` and its GIN index are dropped; the
//! words go to a table of their own, `message_search`, which the server
//! writes behind the writer (`src/chat/search_index/postgres.rs`), so a
//! message's commit no longer computes its words or writes them into the
//! GIN index (BENCHMARKS.md, "A twenty-ninth machine", has why).
//!
//! - `message_search (chat_id, message_id, search)`: one row per message
//!   indexed and not deleted, keyed by conversation then message, so a
//!   search walks one conversation newest first; a GIN index on
//!   `(chat_id, search)` (`btree_gin`, as before) answers rare words, its
//!   pending list kept at 64 kB as `m20261206_000001_search_pending_list`
//!   kept the old one's. No foreign key: like SQLite's index file, the
//!   table holds nothing the messages do not, and a search joins them.
//! - `search_progress`: one row, the last message id and the last
//!   `message_events` id the table holds, written in the indexer's
//!   transactions.
//!
//! The vectors already stored are moved, not computed again, with the
//! messages and their events locked against writes (`SHARE`) for the move:
//! the progress row then counts exactly what was moved. One `DO` block, so
//! the lock is held to the end of the move whether or not the migrator
//! runs it in a transaction of its own.
//!
//! Undone, the column and its index are built again from the messages.
//! SQLite and MySQL: nothing to do.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

use crate::m20261208_000001_sqlite_one_conversation_index::only;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = "
DO $migration$
BEGIN
    LOCK TABLE messages, message_events IN SHARE MODE;
    CREATE TABLE IF NOT EXISTS message_search (
        chat_id uuid NOT NULL,
        message_id bigint NOT NULL,
        search tsvector NOT NULL,
        PRIMARY KEY (chat_id, message_id)
    );
    CREATE TABLE IF NOT EXISTS search_progress (
        one smallint PRIMARY KEY CHECK (one = 1),
        message_id bigint NOT NULL,
        event_id bigint NOT NULL
    );
    IF EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
            AND table_name = 'messages' AND column_name = 'search') THEN
        INSERT INTO message_search (chat_id, message_id, search)
            SELECT chat_id, id, search FROM messages WHERE NOT deleted AND search IS NOT NULL;
        DROP INDEX IF EXISTS idx_messages_chat_search;
        ALTER TABLE messages DROP COLUMN search;
    END IF;
    INSERT INTO search_progress (one, message_id, event_id)
        VALUES (1, (SELECT coalesce(max(id), 0) FROM messages),
            (SELECT coalesce(max(id), 0) FROM message_events))
        ON CONFLICT (one) DO NOTHING;
    CREATE INDEX IF NOT EXISTS idx_message_search ON message_search
        USING gin (chat_id, search) WITH (gin_pending_list_limit = 64);
END
$migration$;
";

const DOWN: &str = "
ALTER TABLE messages ADD COLUMN IF NOT EXISTS search tsvector
    GENERATED ALWAYS AS (chat_search_vector(content)) STORED;
CREATE INDEX IF NOT EXISTS idx_messages_chat_search ON messages
    USING gin (chat_id, search) WITH (gin_pending_list_limit = 64);
DROP TABLE IF EXISTS message_search;
DROP TABLE IF EXISTS search_progress;
";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        only(manager, DatabaseBackend::Postgres, UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        only(manager, DatabaseBackend::Postgres, DOWN).await
    }
}
