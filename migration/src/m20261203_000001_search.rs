//! Search (PROTOCOL.md B10): each database's own full-text engine over
//! `messages.content`, kept in step with every insert, edit and deletion
//! inside the transaction that makes it, so a message is found as soon as
//! it is acknowledged and a deleted one never is.
//!
//! - SQLite: an FTS5 table `message_search` holding no copy of the text
//!   (`content=''`, `contentless_delete=1`, `secure-delete` so a deleted
//!   row's words leave the index at once), with two columns: `body`, the
//!   words (`unicode61 remove_diacritics 2`: case and accents ignored), and
//!   `chat`, one token naming the conversation (`c` + its id in hex), so a
//!   query matches words and the caller's conversations in the index
//!   itself. Prefix indexes for 2 to 8 characters: a prefix of another
//!   length makes FTS5 merge every matching word's list in memory, 40 ms
//!   for a common word of a million messages, where a prefix index answers
//!   in 1 ms. `detail=column`: no word positions, which no query uses.
//!   Triggers on `messages` keep it in step.
//! - PostgreSQL: a stored `tsvector` column `search`, generated from the
//!   text with `unaccent` and the `simple` configuration (no stemming or
//!   stop words, so every language works alike), and a GIN index on it.
//!   ASCII punctuation is made a space first, so URLs, addresses and
//!   hyphenated words are found by their parts, as on the other engines.
//!   The vector is stripped of word positions, which no query uses: a
//!   third smaller. The GIN index is on `(chat_id, search)` (`btree_gin`
//!   puts the uuid beside the words), so one conversation's matches of a
//!   rare word come straight from the index.
//! - MySQL/MariaDB: a `FULLTEXT` index on `content`, built with the stop
//!   word list off (every word is indexed); the column's collation makes it
//!   case- and accent-insensitive.
//!
//! DESIGN.md ("Search") says why each and what each cannot do.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

pub(crate) const SQLITE_TABLE: &str = "
CREATE VIRTUAL TABLE IF NOT EXISTS message_search USING fts5(
    body, chat,
    content = '', contentless_delete = 1,
    tokenize = 'unicode61 remove_diacritics 2',
    prefix = '2 3 4 5 6 7 8', detail = column
);
INSERT INTO message_search(message_search, rank) VALUES ('secure-delete', 1);
";

/// Fills the index from the messages and keeps it in step from then on.
/// Run when the triggers are missing: on the first migration, and after
/// they were dropped for a bulk load (the search benchmark's fill), so the
/// index is rebuilt from what the table holds.
pub(crate) const SQLITE_FILL: &str = "
INSERT INTO message_search(message_search) VALUES ('delete-all');
INSERT INTO message_search(rowid, body, chat)
    SELECT id, content, 'c' || hex(chat_id) FROM messages WHERE NOT deleted;
CREATE TRIGGER messages_search_insert AFTER INSERT ON messages
WHEN NOT new.deleted BEGIN
    INSERT INTO message_search(rowid, body, chat)
        VALUES (new.id, new.content, 'c' || hex(new.chat_id));
END;
CREATE TRIGGER messages_search_update AFTER UPDATE OF content, deleted ON messages
BEGIN
    DELETE FROM message_search WHERE rowid = old.id;
    INSERT INTO message_search(rowid, body, chat)
        SELECT new.id, new.content, 'c' || hex(new.chat_id) WHERE NOT new.deleted;
END;
CREATE TRIGGER messages_search_delete AFTER DELETE ON messages
BEGIN
    DELETE FROM message_search WHERE rowid = old.id;
END;
";

pub(crate) const SQLITE_DROP_TRIGGERS: &str = "
DROP TRIGGER IF EXISTS messages_search_insert;
DROP TRIGGER IF EXISTS messages_search_update;
DROP TRIGGER IF EXISTS messages_search_delete;
";

/// `chat_search_vector(text)`: what the GIN index holds of a message.
/// `unaccent` is only STABLE (its dictionary could change), so it is called
/// through an IMMUTABLE function naming the dictionary, as its
/// documentation suggests for indexes. Every name in the two functions is
/// qualified with its schema, found here: the extension's (wherever it
/// was created: the first schema of the search path, unless it existed)
/// and the migration's own (`current_schema()`). So they work whatever
/// the search path of the caller, pg_dump's restore (an empty one)
/// included.
const POSTGRES_UP: &str = r"
CREATE EXTENSION IF NOT EXISTS unaccent;
CREATE EXTENSION IF NOT EXISTS btree_gin;
DO $migration$
DECLARE
    ext text := (SELECT n.nspname FROM pg_extension e
        JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'unaccent');
    own text := current_schema();
BEGIN
    EXECUTE format(
        'CREATE OR REPLACE FUNCTION %I.chat_search_unaccent(text) RETURNS text '
        'LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS %L',
        own, format('SELECT %I.unaccent(%L::regdictionary, $1)', ext, quote_ident(ext) || '.unaccent'));
    EXECUTE format(
        'CREATE OR REPLACE FUNCTION %I.chat_search_vector(text) RETURNS tsvector '
        'LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS %L',
        own, format('SELECT pg_catalog.strip(pg_catalog.to_tsvector(''pg_catalog.simple''::regconfig, '
            'pg_catalog.regexp_replace(%I.chat_search_unaccent($1), ''[!-/:-@\[-`{-~]+'', '' '', ''g'')))', own));
END
$migration$;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS search tsvector
    GENERATED ALWAYS AS (chat_search_vector(content)) STORED;
CREATE INDEX IF NOT EXISTS idx_messages_chat_search ON messages USING gin (chat_id, search);
";

const POSTGRES_DOWN: &str = "
DROP INDEX IF EXISTS idx_messages_chat_search;
ALTER TABLE messages DROP COLUMN IF EXISTS search;
DROP FUNCTION IF EXISTS chat_search_vector(text);
DROP FUNCTION IF EXISTS chat_search_unaccent(text);
";

/// The stop word setting is read when the index is built: off, so that
/// "the" or "who" can be searched for. The statements run on one
/// connection, in one call.
///
/// `ALGORITHM=COPY`: the table is copied with the index built row by row.
/// Built in place, InnoDB indexes rows by a hidden document id that it
/// keeps only while a FULLTEXT index exists: on a table that had one
/// before (the migration undone, or the benchmark's bulk load without
/// it), the rows written meanwhile have none, and an index built in place
/// finds none of them (seen on MariaDB 10.11: every search empty).
const MYSQL_UP: &str = "
SET SESSION innodb_ft_enable_stopword = OFF;
ALTER TABLE messages ADD FULLTEXT INDEX ft_messages_content (content), ALGORITHM=COPY;
SET SESSION innodb_ft_enable_stopword = ON;
";

fn unsupported(backend: DatabaseBackend) -> DbErr {
    DbErr::Migration(format!("no search index is defined for {backend:?}"))
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        match db.get_database_backend() {
            DatabaseBackend::Sqlite => {
                db.execute_unprepared(SQLITE_TABLE).await?;
                let triggers = db
                    .query_one_raw(sea_orm_migration::sea_orm::Statement::from_string(
                        DatabaseBackend::Sqlite,
                        "SELECT count(*) AS n FROM sqlite_master \
                         WHERE type = 'trigger' AND name LIKE 'messages_search_%'",
                    ))
                    .await?
                    .map(|row| row.try_get::<i64>("", "n"))
                    .transpose()?
                    .unwrap_or(0);
                if triggers < 3 {
                    db.execute_unprepared(SQLITE_DROP_TRIGGERS).await?;
                    db.execute_unprepared(SQLITE_FILL).await?;
                }
            }
            DatabaseBackend::Postgres => {
                db.execute_unprepared(POSTGRES_UP).await?;
            }
            DatabaseBackend::MySql => {
                if !manager.has_index("messages", "ft_messages_content").await? {
                    db.execute_unprepared(MYSQL_UP).await?;
                }
            }
            other => return Err(unsupported(other)),
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        match db.get_database_backend() {
            DatabaseBackend::Sqlite => {
                db.execute_unprepared(SQLITE_DROP_TRIGGERS).await?;
                db.execute_unprepared("DROP TABLE IF EXISTS message_search")
                    .await?
            }
            DatabaseBackend::Postgres => db.execute_unprepared(POSTGRES_DOWN).await?,
            DatabaseBackend::MySql => {
                db.execute_unprepared("ALTER TABLE messages DROP INDEX ft_messages_content")
                    .await?
            }
            other => return Err(unsupported(other)),
        };
        Ok(())
    }
}
