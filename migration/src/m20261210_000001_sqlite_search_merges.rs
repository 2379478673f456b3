//! SQLite: the search index merges its segments sixteen at a time
//! (`automerge`, FTS5's default 4), and at once only when a level holds 64
//! (`crisismerge`, default 16).
//!
//! Every commit writes the words of its messages as a new segment, and
//! FTS5 merges segments of a level into one of the next, a little after
//! each commit. With four to a merge each word is written again at every
//! level, about log₄ of the index's size times; with sixteen, half as
//! often, for up to fifteen segments a level for a search to look into
//! instead of three. The merge that starts when a level is full proceeds a
//! little per commit (it is `crisismerge` that merges a level at once, in
//! one commit, so it is set well above sixteen). BENCHMARKS.md ("The search
//! index merges sixteen at a time") has the trade: about a quarter of the
//! index's write CPU, for search's median 0.4–0.9 ms slower and its p99 the
//! same. The settings live in the index's own `%_config` table.

use sea_orm_migration::prelude::*;

use crate::m20261208_000001_sqlite_one_conversation_index::sqlite_only;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        merges(manager, 16, 64).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        merges(manager, 4, 16).await
    }
}

/// Sets the index's `automerge` and `crisismerge` (SQLite only).
pub(crate) async fn merges(
    manager: &SchemaManager<'_>,
    automerge: u32,
    crisismerge: u32,
) -> Result<(), DbErr> {
    let sql = format!(
        "INSERT INTO message_search(message_search, rank) VALUES ('automerge', {automerge}); \
         INSERT INTO message_search(message_search, rank) VALUES ('crisismerge', {crisismerge});"
    );
    sqlite_only(manager, &sql).await
}
