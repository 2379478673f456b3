//! PostgreSQL: `messages` loses its foreign key to `chats`
//! (`fk_messages_chat`), whose check the writer's own lock already makes;
//! a trigger on `chats` does the key's cascade.
//!
//! The key was checked once for every message inserted, by a trigger and
//! a query of its own (a lookup of the conversation's row and a lock on
//! it), inside the writer's statement, which every message at 10,000 a
//! second waits for. It checked nothing the writer does not: every insert
//! into `messages` takes its conversation's next `seq` in the same
//! statement or transaction, locking the conversation's row `FOR UPDATE`
//! first (`chat/writer/plain.rs`, `store::take_seqs`). A conversation that
//! does not exist has no row to lock, and its messages no `seq`, so the
//! insert fails whole; a deletion of the row waits for that lock, or the
//! insert waits for the deletion and then finds no row. Without the check
//! the statement took less time, and messages waited less for it
//! (BENCHMARKS.md "A forty-fourth machine").
//!
//! What else the key did, deleting a conversation's messages with it (`ON
//! DELETE CASCADE`), the trigger `chats_remove_messages` does, after each
//! deleted row, as the key's own trigger did. The server never deletes a
//! conversation; an operator may. The sender's key stays: no statement of
//! the writer's locks the sender's row, so nothing else keeps a message
//! from naming a user deleted at the same moment. SQLite and MySQL keep
//! both keys: nothing to do there.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The function resolves `messages` in the schema it is created in
        // (`SET search_path FROM CURRENT`), whoever deletes the row.
        crate::only_on(
            manager,
            DatabaseBackend::Postgres,
            "ALTER TABLE messages DROP CONSTRAINT IF EXISTS fk_messages_chat;
             CREATE OR REPLACE FUNCTION chats_remove_messages() RETURNS trigger
                 LANGUAGE plpgsql SET search_path FROM CURRENT AS $remove$
             BEGIN
                 DELETE FROM messages WHERE chat_id = OLD.id;
                 RETURN OLD;
             END
             $remove$;
             DROP TRIGGER IF EXISTS chats_remove_messages ON chats;
             CREATE TRIGGER chats_remove_messages AFTER DELETE ON chats
                 FOR EACH ROW EXECUTE FUNCTION chats_remove_messages();",
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::only_on(
            manager,
            DatabaseBackend::Postgres,
            "DROP TRIGGER IF EXISTS chats_remove_messages ON chats;
             DROP FUNCTION IF EXISTS chats_remove_messages();
             ALTER TABLE messages DROP CONSTRAINT IF EXISTS fk_messages_chat;
             ALTER TABLE messages ADD CONSTRAINT fk_messages_chat
                 FOREIGN KEY (chat_id) REFERENCES chats (id) ON DELETE CASCADE;",
        )
        .await
    }
}
