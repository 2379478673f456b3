//! Schema migrations of the chat server. They run at start-up and with the
//! `migrate` subcommand; each is idempotent on SQLite, PostgreSQL and MySQL.

pub use sea_orm_migration::prelude::*;

mod m20261125_000001_create_schema;
mod m20261126_000001_security;
mod m20261127_000001_groups;
mod m20261130_000001_conversation_seq;
mod m20261130_000002_username_keys;
mod m20261130_000003_invitations;
mod m20261130_000004_blocks;
mod m20261201_000001_message_changes;
mod m20261202_000001_revoked_tokens;
mod m20261203_000001_search;
mod m20261204_000001_mute;
mod m20261204_000002_push;
mod m20261204_000003_group_changes;
mod m20261205_000001_attachments;
mod m20261206_000001_search_pending_list;
mod m20261207_000001_client_id_partial_index;
mod m20261208_000001_sqlite_one_conversation_index;
mod m20261209_000001_revocation_times;
mod m20261210_000001_sqlite_search_merges;
mod m20261211_000001_sqlite_search_file;
mod m20261212_000001_postgres_messages_conversation_check;
mod m20261213_000001_search_unspaced;

/// Every migration, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_create_schema::Migration),
            Box::new(m20261126_000001_security::Migration),
            Box::new(m20261127_000001_groups::Migration),
            Box::new(m20261130_000001_conversation_seq::Migration),
            Box::new(m20261130_000002_username_keys::Migration),
            Box::new(m20261130_000003_invitations::Migration),
            Box::new(m20261130_000004_blocks::Migration),
            Box::new(m20261201_000001_message_changes::Migration),
            Box::new(m20261202_000001_revoked_tokens::Migration),
            Box::new(m20261203_000001_search::Migration),
            Box::new(m20261204_000001_mute::Migration),
            Box::new(m20261204_000002_push::Migration),
            Box::new(m20261204_000003_group_changes::Migration),
            Box::new(m20261205_000001_attachments::Migration),
            Box::new(m20261206_000001_search_pending_list::Migration),
            Box::new(m20261207_000001_client_id_partial_index::Migration),
            Box::new(m20261208_000001_sqlite_one_conversation_index::Migration),
            Box::new(m20261209_000001_revocation_times::Migration),
            Box::new(m20261210_000001_sqlite_search_merges::Migration),
            Box::new(m20261211_000001_sqlite_search_file::Migration),
            Box::new(m20261212_000001_postgres_messages_conversation_check::Migration),
            Box::new(m20261213_000001_search_unspaced::Migration),
        ]
    }
}

/// Runs `sql` on `backend`; nothing on the other databases (a migration
/// that only one database needs).
pub(crate) async fn only_on(
    manager: &SchemaManager<'_>,
    backend: sea_orm_migration::sea_orm::DatabaseBackend,
    sql: &str,
) -> Result<(), DbErr> {
    use sea_orm_migration::sea_orm::ConnectionTrait;
    let db = manager.get_connection();
    if db.get_database_backend() == backend {
        db.execute_unprepared(sql).await?;
    }
    Ok(())
}
