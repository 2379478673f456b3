//! PostgreSQL: text written without spaces between its words (Chinese,
//! Japanese) is indexed a character a word, as the server's SQLite index
//! does (`src/chat/unspaced.rs`, whose ranges these are): the search
//! vector's function puts a space on each side of every such character, in
//! the same `regexp_replace` that makes ASCII punctuation a space. The
//! rows holding such characters are written again, so that their stored
//! vector is made anew; the others' vectors do not change.
//!
//! SQLite's index is rebuilt by the server when its layout changes
//! (`src/chat/search_index.rs`, `LAYOUT`); MySQL's is left as it is (its
//! searches match such text as a substring).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// ASCII punctuation, made a space (as `m20261203_000001_search`).
const PUNCTUATION: &str = r"[!-/:-@\[-`{-~]+";

/// The unspaced characters (`src/chat/unspaced.rs`, `RANGES`).
const UNSPACED: &str = r"[\u3005-\u3007\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003ffff]";

/// Makes `chat_search_vector(text)` replace `pattern` by `replacement`
/// before splitting the text into words (everything else as
/// `m20261203_000001_search` made it), then writes again the rows holding
/// unspaced characters, whose stored vector changes.
fn vector_function(pattern: &str, replacement: &str) -> String {
    format!(
        r"DO $migration$
DECLARE
    own text := current_schema();
BEGIN
    EXECUTE format(
        'CREATE OR REPLACE FUNCTION %I.chat_search_vector(text) RETURNS tsvector '
        'LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS %L',
        own, format('SELECT pg_catalog.strip(pg_catalog.to_tsvector(''pg_catalog.simple''::regconfig, '
            'pg_catalog.regexp_replace(%I.chat_search_unaccent($1), %L, %L, ''g'')))',
            own, '{pattern}', '{replacement}'));
END
$migration$;
UPDATE messages SET content = content WHERE content ~ '{UNSPACED}';"
    )
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // A punctuation match leaves the group empty: a space each side.
        let pattern = format!("{PUNCTUATION}|({UNSPACED})");
        let sql = vector_function(&pattern, r" \1 ");
        crate::only_on(manager, DatabaseBackend::Postgres, &sql).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let sql = vector_function(PUNCTUATION, " ");
        crate::only_on(manager, DatabaseBackend::Postgres, &sql).await
    }
}
