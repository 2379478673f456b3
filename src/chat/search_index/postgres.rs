//! PostgreSQL's search index: the table `message_search` (the migration
//! `m20261212_000001_postgres_search_table` made it), written behind the
//! writer by an indexer on every instance (DESIGN.md, "Search").
//!
//! Written in the messages' transactions, as a stored `tsvector` column
//! with its GIN index, the words were about a third of what a message
//! waited for at 10,000 msg/s: the one backend that commits the writer's
//! batches computed every message's words and wrote them into the GIN
//! index (BENCHMARKS.md, "A twenty-eighth machine" and "A twenty-ninth
//! machine"). Here the writer only wakes the indexer, which gathers for
//! [`GATHER`] and writes the words of everything committed since, in
//! steps of at most [`CHUNK`] messages and as many events.
//!
//! What is indexed is kept by the progress row `search_progress`, written
//! in the same transaction as the words: the last message id and the last
//! `message_events` id the table holds. Edits and deletions are read from
//! the conversation log, as SQLite's indexer reads them. A search matches
//! what the table does not hold yet beside it, in the same statement
//! (`search::postgres`), so a message is found once acknowledged.
//!
//! Ids are taken before commit, and several writers (one per instance)
//! commit out of id order: a step may not pass a smaller id still being
//! written. So a step reads how far it may go and, in the same statement,
//! PostgreSQL's snapshot, then waits until every transaction that snapshot
//! saw in progress has ended ([`wait_for_writers`]). An id at or below
//! the bound is then committed, or never will be: nothing is skipped, not
//! even after a long commit, where a time limit would skip it.
//!
//! Every instance runs an indexer; a step locks the progress row first
//! and skips the round if another instance's step holds it. An instance
//! is woken by its own writer, and looks every [`ROUND`] for the others'.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::sqlx::{self, PgPool, Postgres, Transaction};
use sea_orm::{DatabaseConnection, DbErr};
use tokio::sync::Notify;

use super::db_error;

/// How long the indexer gathers after a commit woke it: at 10,000 msg/s,
/// about a thousand messages a step.
pub const GATHER: Duration = Duration::from_millis(100);
/// How often the indexer looks without a wake-up: the messages of other
/// instances, whose writers wake their own indexers (either may index
/// them).
pub const ROUND: Duration = Duration::from_secs(1);
/// Most messages (and, apart, most events) one step indexes.
pub const CHUNK: i64 = 5_000;
/// How often a step asks whether the writes it waits for have ended: a
/// writer's batch takes a few milliseconds.
const POLL: Duration = Duration::from_millis(2);
/// A step still waiting after this says so in the log (a transaction
/// left open, by an administrator's session say, holds the index back;
/// searches still find what it has not indexed, matched on the fly).
const WAIT_WARNING: Duration = Duration::from_secs(10);

/// The progress, how far the next step goes (at most `$3` more messages
/// and `$3` more events), whether it takes as many as it may of either,
/// and the statement's snapshot, from which all of it was read.
const BOUNDS: &str = "
SELECT p.message_id, p.event_id,
    coalesce((SELECT max(id) FROM (SELECT id FROM messages
        WHERE id > p.message_id ORDER BY id LIMIT $1) n), p.message_id),
    coalesce((SELECT max(id) FROM (SELECT id FROM message_events
        WHERE id > p.event_id ORDER BY id LIMIT $1) e), p.event_id),
    (SELECT count(*) FROM (SELECT 1 FROM messages WHERE id > p.message_id LIMIT $1) n) = $1
    OR (SELECT count(*) FROM (SELECT 1 FROM message_events WHERE id > p.event_id LIMIT $1) e) = $1,
    pg_current_snapshot()::text
FROM search_progress p
";

/// How many of the transactions `$1` (a snapshot) saw in progress still
/// are.
const STILL_WRITING: &str = "
SELECT count(*) FROM pg_snapshot_xip($1::pg_snapshot) AS x
WHERE pg_xact_status(x) = 'in progress'
";

/// The messages edited (`$3` = 'edited') or edited or deleted (`$3` =
/// 'deleted') by the events after `$1` up to `$2`, among those indexed
/// before this step (up to `$4`).
const CHANGED: &str = "SELECT message_id FROM message_events
    WHERE id > $1 AND id <= $2 AND message_id <= $4 AND (kind = 'edited' OR kind = $3)";

/// The indexer: the pool it writes with, and the writer's wake-up call.
pub struct PostgresIndexer {
    pool: PgPool,
    committed: Arc<Notify>,
}

/// How far a step got.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Nothing was left to index, or another instance's step is under way.
    Nothing,
    /// Indexed everything up to the snapshot it read.
    All,
    /// Indexed as many messages or events as it may, or found the
    /// progress moved by another instance: there may be more.
    Part,
}

impl PostgresIndexer {
    /// An indexer writing with `db`'s pool (a PostgreSQL one).
    pub fn new(db: &DatabaseConnection) -> Arc<Self> {
        Arc::new(PostgresIndexer {
            pool: db.get_postgres_connection_pool().clone(),
            committed: Arc::new(Notify::new()),
        })
    }

    /// What the writer calls after each batch (`Notify::notify_one`: a
    /// wake-up call kept until the indexer next waits).
    pub fn committed(&self) -> Arc<Notify> {
        self.committed.clone()
    }

    /// Indexes everything committed before the call, step by step: up
    /// to the end of the snapshot a step reads, not on after it. (With
    /// messages arriving all the time, stepping until nothing is left
    /// made a step of a few messages after every batch: 131 µs of the
    /// database's CPU a message at 10,000 msg/s against 101.)
    pub async fn catch_up(&self) -> Result<(), DbErr> {
        while step(&self.pool, CHUNK).await.map_err(db_error)? == Step::Part {}
        Ok(())
    }

    /// The indexer: after each wake-up (a commit of this instance, or
    /// [`ROUND`] without one), [`GATHER`], then catches up. Starts by
    /// catching up with what was stored while it was not running. Runs
    /// until the runtime stops; a step cut short is rolled back and done
    /// again.
    pub async fn run(self: Arc<Self>) {
        self.committed.notify_one();
        loop {
            tokio::select! {
                _ = self.committed.notified() => {}
                _ = tokio::time::sleep(ROUND) => {}
            }
            tokio::time::sleep(GATHER).await;
            if let Err(error) = self.catch_up().await {
                tracing::error!(error = %crate::db::describe(&error), "cannot write the search index");
            }
        }
    }
}

/// One step of at most `chunk` messages and `chunk` events: reads its
/// bounds, waits for the writes under way below them, then, in one
/// transaction that holds the progress row, writes the new messages'
/// words, takes out the words of those edited or deleted since (among
/// those indexed before) and puts the edited ones' current text back.
async fn step(pool: &PgPool, chunk: i64) -> Result<Step, sqlx::Error> {
    let (message, event, last_message, last_event, part, snapshot): (
        i64,
        i64,
        i64,
        i64,
        bool,
        String,
    ) = sqlx::query_as(BOUNDS).bind(chunk).fetch_one(pool).await?;
    if (last_message, last_event) == (message, event) {
        return Ok(Step::Nothing);
    }
    wait_for_writers(pool, &snapshot).await?;
    let mut tx = pool.begin().await?;
    let progress: Option<(i64, i64)> =
        sqlx::query_as("SELECT message_id, event_id FROM search_progress FOR UPDATE SKIP LOCKED")
            .fetch_optional(&mut *tx)
            .await?;
    match progress {
        None => return Ok(Step::Nothing), // another instance's step
        Some(now) if now != (message, event) => return Ok(Step::Part), // read again
        Some(_) => {}
    }
    write(&mut tx, (message, event), (last_message, last_event)).await?;
    tx.commit().await?;
    Ok(if part { Step::Part } else { Step::All })
}

/// The step's writes, from the progress `from` to `to` (message id,
/// event id). A message new in this step is indexed with its text as it
/// is now, edits included, unless deleted.
async fn write(
    tx: &mut Transaction<'_, Postgres>,
    from: (i64, i64),
    to: (i64, i64),
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO message_search (chat_id, message_id, search)
        SELECT chat_id, id, chat_search_vector(content) FROM messages
        WHERE id > $1 AND id <= $2 AND NOT deleted",
    )
    .bind(from.0)
    .bind(to.0)
    .execute(&mut **tx)
    .await?;
    let changed = sqlx::AssertSqlSafe(format!(
        "DELETE FROM message_search s USING messages m
        WHERE s.chat_id = m.chat_id AND s.message_id = m.id AND m.id IN ({CHANGED})"
    ));
    sqlx::query(changed)
        .bind(from.1)
        .bind(to.1)
        .bind("deleted")
        .bind(from.0)
        .execute(&mut **tx)
        .await?;
    let edited = sqlx::AssertSqlSafe(format!(
        "INSERT INTO message_search (chat_id, message_id, search)
        SELECT chat_id, id, chat_search_vector(content) FROM messages
        WHERE id IN ({CHANGED}) AND NOT deleted"
    ));
    sqlx::query(edited)
        .bind(from.1)
        .bind(to.1)
        .bind("edited")
        .bind(from.0)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE search_progress SET message_id = $1, event_id = $2")
        .bind(to.0)
        .bind(to.1)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Waits until every transaction `snapshot` saw in progress has ended
/// (committed or rolled back). Holds no lock and no transaction while it
/// waits.
async fn wait_for_writers(pool: &PgPool, snapshot: &str) -> Result<(), sqlx::Error> {
    let started = tokio::time::Instant::now();
    let mut warned = false;
    loop {
        let writing: i64 = sqlx::query_scalar(STILL_WRITING)
            .bind(snapshot)
            .fetch_one(pool)
            .await?;
        if writing == 0 {
            return Ok(());
        }
        if !warned && started.elapsed() > WAIT_WARNING {
            warned = true;
            tracing::warn!(
                transactions = writing,
                "the search index waits for transactions left open; searches match what it has not indexed yet"
            );
        }
        tokio::time::sleep(POLL).await;
    }
}
