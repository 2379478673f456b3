//! SQLite's search index, in a database file of its own beside the
//! messages' (`<DB_NAME>-search`, e.g. `chat.db-search`), written behind
//! the writer by a connection of its own (DESIGN.md, "Search").
//!
//! Written in the messages' transactions (as it was until the migration
//! `m20261211_000001_sqlite_search_file`), the index's words were most of
//! what a message waited for at 10,000 msg/s: every batch wrote a new FTS5
//! segment on the one thread that commits the batches (BENCHMARKS.md, "A
//! fourteenth machine"; "A fifteenth machine" has this file's figures). Here the writer only wakes the indexer, which
//! gathers for [`GATHER`] and then writes the words of everything
//! committed since, in a few large transactions on a thread of its own,
//! which hold the index file's write lock and never the messages'.
//!
//! The words are written at idle priority: after a wake-up, a step of
//! at most [`BACKGROUND_CHUNK`] messages runs on a connection of its own
//! whose thread the kernel runs only when no other thread of the
//! machine wants the core (Linux's `SCHED_IDLE`), so the writer, the
//! sessions and the database never wait behind it for a core. A backlog
//! beyond that step (the index fallen behind on a busy machine, or being
//! built) is written at the server's own priority, as a search's
//! catch-up is, so that a busy machine cannot starve it for good.
//!
//! What is indexed is kept by a progress row in the index file itself,
//! written in the same transaction as the words: the last message id and
//! the last `message_events` id seen. Edits and deletions are read from
//! the conversation log: an `edited` or `deleted` event of a message
//! already indexed takes its words out and puts its current text back
//! unless it is deleted. A message is found once acknowledged all the
//! same: every search also matches what the index does not hold yet, in
//! a small table in memory ([`SearchIndex::with_tail`]).
//!
//! The file holds nothing that is not in the messages: it is written with
//! `synchronous = NORMAL` (a power cut can lose its last transactions,
//! with the progress row that counts them, so they are indexed again), and
//! a file that is missing, or of another layout ([`LAYOUT`]), is built
//! again from the messages, in transactions of [`CHUNK`] messages.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use sea_orm::sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sea_orm::sqlx::{self, Executor};
use sea_orm::{
    ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr, FromQueryResult, RuntimeErr,
    SqlxSqliteConnector, Statement,
};
use tokio::sync::{Mutex, Notify};

/// How long the indexer gathers after a commit woke it: at 10,000 msg/s,
/// about a thousand messages a transaction.
pub const GATHER: Duration = Duration::from_millis(100);
/// Most messages (and, apart, most events) one transaction indexes.
pub const CHUNK: i64 = 5_000;
/// Most messages (and, apart, most events) the step at idle priority
/// indexes after a wake-up: at 10,000 msg/s a wake-up finds about a
/// thousand. Bounded, since a step holds the indexer's turn, which a
/// search that must catch the index up waits for: on a machine whose
/// cores are both busy, a thread at idle priority runs a few per cent
/// of the time, so this step may then take about a second.
pub const BACKGROUND_CHUNK: i64 = 2_000;
/// The name of the thread of the indexer's own connection (`top -H`).
pub const BACKGROUND_THREAD: &str = "search-indexer";
/// Most messages a search matches in memory beside the index; with more
/// not indexed yet (the index being built, or behind), the search
/// catches the index up first.
pub const MAX_TAIL: i64 = 5_000;
/// The file's layout (`PRAGMA user_version`); another is built again.
/// 2: unspaced text (Chinese, Japanese) indexed a character a word
/// ([`super::unspaced`]).
const LAYOUT: i64 = 2;
/// How many connections searches and the indexer share.
const CONNECTIONS: u32 = 4;
/// As the messages' database: a commit of another instance on the same
/// file is waited for.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How both FTS5 tables split words (see [`SCHEMA`]): a search matches
/// the index and the tail alike.
macro_rules! tokenizer {
    () => {
        "tokenize = 'unicode61 remove_diacritics 2', detail = column"
    };
}

/// The index as FTS5 holds it: no copy of the text (`content=''`,
/// `contentless_delete=1`, `secure-delete` so a deleted row's words leave
/// at once); `body`, the words (`unicode61 remove_diacritics 2`: case and
/// accents ignored; of the text as `chat_search_text` gives it, each
/// Chinese or Japanese character a word, [`super::unspaced`]), and
/// `chat`, one token naming the conversation (`c` +
/// its id in hex), so a query matches words and the caller's conversations
/// in the index itself; prefix indexes for 2 to 8 characters (a prefix of
/// another length makes FTS5 merge every matching word's list in memory,
/// 40 ms for a common word of a million messages, where a prefix index
/// answers in 1 ms); `detail=column`: no word positions, which no query
/// uses. Segments are merged sixteen at a time (`automerge`, FTS5's
/// default 4), and a level at once only when it holds 64 (`crisismerge`):
/// each word is written again half as often as with four, for up to
/// fifteen segments a level for a search to look into.
const SCHEMA: &str = concat!(
    "
DROP TABLE IF EXISTS message_search;
DROP TABLE IF EXISTS search_progress;
CREATE VIRTUAL TABLE message_search USING fts5(
    body, chat, content = '', contentless_delete = 1, prefix = '2 3 4 5 6 7 8', ",
    tokenizer!(),
    ");",
    "
INSERT INTO message_search(message_search, rank) VALUES ('secure-delete', 1);
INSERT INTO message_search(message_search, rank) VALUES ('automerge', 16);
INSERT INTO message_search(message_search, rank) VALUES ('crisismerge', 64);
CREATE TABLE search_progress (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    message_id INTEGER NOT NULL,
    event_id INTEGER NOT NULL
);
INSERT INTO search_progress VALUES (1, 0, 0);
PRAGMA user_version = 2;
"
);

/// Each connection's own FTS5 table of what the index does not hold yet,
/// filled for each search ([`SearchIndex::with_tail`]); in memory, with
/// no copy of the text (so it is emptied at once, by `delete-all`) and no
/// prefix indexes (each word written once instead of eight times; FTS5
/// finds a prefix without them by walking the words it starts). With
/// both, and with the tail filled by one insert, the median search took
/// 8.3 ms against 5.4 (BENCHMARKS.md, "A fifteenth machine").
const TAIL: &str = concat!(
    "CREATE VIRTUAL TABLE temp.search_tail USING fts5(body, chat, content = '', ",
    tokenizer!(),
    ")"
);

/// The messages the index does not hold as they are now, into the tail
/// (emptied first): those after its progress (`?1`), then those it holds
/// whose text was edited since (events after `?2`). Deleted ones are left
/// out (every search leaves out deleted messages anyway). Two inserts, so
/// each reads by key.
const FILL_TAIL: [&str; 3] = [
    "INSERT INTO temp.search_tail(search_tail) VALUES ('delete-all')",
    "INSERT INTO temp.search_tail(rowid, body, chat)
    SELECT id, chat_search_text(content), 'c' || hex(chat_id) FROM store.messages
    WHERE id > ?1 AND NOT deleted",
    "INSERT INTO temp.search_tail(rowid, body, chat)
    SELECT id, chat_search_text(content), 'c' || hex(chat_id) FROM store.messages
    WHERE id IN (SELECT message_id FROM store.message_events
        WHERE id > ?2 AND kind = 'edited' AND message_id <= ?1)
    AND NOT deleted",
];

/// One step of the indexer, in one transaction. `?1`, `?2`: the progress
/// (message id, event id); `?3`, `?4`: how far this step goes, read in the
/// same transaction, so from the same snapshot of the messages' file.
/// First the new messages' words; then, for the messages indexed before
/// this step, the words of those edited or deleted since: taken out, and
/// the current text put back unless deleted. A message new in this step is
/// indexed with its text as it is now, edits included.
const STEP: [&str; 4] = [
    "INSERT INTO message_search(rowid, body, chat)
    SELECT id, chat_search_text(content), 'c' || hex(chat_id) FROM store.messages
    WHERE id > ?1 AND id <= ?3 AND NOT deleted",
    "DELETE FROM message_search WHERE rowid IN (SELECT message_id FROM store.message_events
    WHERE id > ?2 AND id <= ?4 AND kind IN ('edited', 'deleted') AND message_id <= ?1)",
    "INSERT INTO message_search(rowid, body, chat)
    SELECT id, chat_search_text(content), 'c' || hex(chat_id) FROM store.messages
    WHERE id IN (SELECT message_id FROM store.message_events
        WHERE id > ?2 AND id <= ?4 AND kind = 'edited' AND message_id <= ?1)
    AND NOT deleted",
    "UPDATE search_progress SET message_id = ?3, event_id = ?4",
];

/// The progress, how far the next step goes (at most `?1` more messages
/// and `?1` more events), and whether it takes as many as it may of
/// either, so that there may be more.
const BOUNDS: &str = "
SELECT p.message_id, p.event_id,
    coalesce((SELECT max(id) FROM (SELECT id FROM store.messages
        WHERE id > p.message_id ORDER BY id LIMIT ?1)), p.message_id),
    coalesce((SELECT max(id) FROM (SELECT id FROM store.message_events
        WHERE id > p.event_id ORDER BY id LIMIT ?1)), p.event_id),
    (SELECT count(*) FROM (SELECT 1 FROM store.messages
        WHERE id > p.message_id LIMIT ?1)) = ?1
    OR (SELECT count(*) FROM (SELECT 1 FROM store.message_events
        WHERE id > p.event_id LIMIT ?1)) = ?1
FROM search_progress p
";

/// Why the index file could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the search index {path}: {source}")]
pub struct OpenError {
    path: String,
    #[source]
    source: sqlx::Error,
}

/// The index file, its indexer's turn, and the writer's wake-up call.
pub struct SearchIndex {
    /// Searches, and the steps that catch the index up at the server's
    /// own priority.
    pool: SqlitePool,
    /// The indexer's own connection, its thread at idle priority
    /// ([`run_at_idle_priority`]).
    background: SqlitePool,
    /// The same pool, for searches written as sea-orm statements.
    db: DatabaseConnection,
    /// One step at a time in this process (another instance's steps wait
    /// in SQLite's busy handler for the index file's write lock).
    turn: Mutex<()>,
    committed: Arc<Notify>,
}

impl SearchIndex {
    /// The index file of the SQLite database at `messages`, created or
    /// built again when missing or of another layout; each connection
    /// has the messages' file attached as `store`.
    pub async fn open(messages: &Path) -> Result<Arc<Self>, OpenError> {
        let file = index_path(messages);
        let failed = |source| OpenError {
            path: file.display().to_string(),
            source,
        };
        let messages = std::path::absolute(messages)
            .map_err(|e| failed(sqlx::Error::Io(e)))?
            .display()
            .to_string();
        crate::db::create_private(&file).map_err(|e| failed(sqlx::Error::Io(e)))?;
        let vfs = crate::db::sqlite_wal::registered()
            .map_err(|e| failed(sqlx::Error::Configuration(Box::new(e))))?;
        let options = SqliteConnectOptions::new()
            .vfs(vfs)
            .filename(&file)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .pragma("temp_store", "memory");
        prepare(&options).await.map_err(failed)?;
        let attach = format!(
            "ATTACH DATABASE '{}' AS store",
            messages.replace('\'', "''")
        );
        let searches_attach = attach.clone();
        let pool = SqlitePoolOptions::new()
            .max_connections(CONNECTIONS)
            .min_connections(1)
            .after_connect(move |conn, _| {
                let attach = searches_attach.clone();
                Box::pin(async move {
                    conn.execute(sqlx::AssertSqlSafe(attach)).await?;
                    conn.execute(TAIL).await?;
                    add_functions(conn).await
                })
            })
            .connect_with(options.clone())
            .await
            .map_err(failed)?;
        let background = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .after_connect(move |conn, _| {
                let attach = attach.clone();
                Box::pin(async move {
                    conn.execute(sqlx::AssertSqlSafe(attach)).await?;
                    add_functions(conn).await?;
                    run_at_idle_priority(conn).await
                })
            })
            .connect_with(options.thread_name(|_| BACKGROUND_THREAD.to_string()))
            .await
            .map_err(failed)?;
        Ok(Arc::new(SearchIndex {
            db: SqlxSqliteConnector::from_sqlx_sqlite_pool(pool.clone()),
            pool,
            background,
            turn: Mutex::new(()),
            committed: Arc::new(Notify::new()),
        }))
    }

    /// Connections to the index file, the messages' attached as `store`.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The rows of `query`, run on one of the index's connections with
    /// `temp.search_tail` holding what the index does not hold yet: the
    /// messages after its progress, and those edited since, as they are
    /// now. A search matches both tables, and leaves out of the index's
    /// matches the messages the tail holds (an edited one's old words).
    /// So a message is found as soon as it is acknowledged, without the
    /// search writing the index: the tail is about the last [`GATHER`]'s
    /// messages. A search that caught the index up itself instead took
    /// 13.9 ms at the median against 5.4 this way (BENCHMARKS.md, "A
    /// fifteenth machine"). The progress is read first, so the messages'
    /// file is read from a snapshot no older than the index's: nothing
    /// falls between the two. With more than [`MAX_TAIL`] messages not
    /// indexed yet, the search catches the index up first.
    pub async fn with_tail<T: FromQueryResult>(&self, query: Statement) -> Result<Vec<T>, DbErr> {
        let mut caught_up = false;
        loop {
            let txn = crate::db::begin(&self.db).await?;
            let progress = txn
                .query_one_raw(Statement::from_string(
                    DatabaseBackend::Sqlite,
                    "SELECT message_id, event_id FROM search_progress",
                ))
                .await?
                .ok_or_else(|| DbErr::Custom("the search index has no progress row".into()))?;
            let message: i64 = progress.try_get("", "message_id")?;
            let event: i64 = progress.try_get("", "event_id")?;
            let behind = txn
                .query_one_raw(Statement::from_sql_and_values(
                    DatabaseBackend::Sqlite,
                    "SELECT count(*) AS n FROM (SELECT 1 FROM store.messages WHERE id > ?1 LIMIT ?2)",
                    [message.into(), (MAX_TAIL + 1).into()],
                ))
                .await?
                .map(|row| row.try_get::<i64>("", "n"))
                .transpose()?
                .unwrap_or(0);
            if behind > MAX_TAIL && !caught_up {
                // Being built, or fallen behind: indexed first, not
                // matched in memory message by message for each search.
                drop(txn);
                self.catch_up().await?;
                caught_up = true;
                continue;
            }
            for fill in FILL_TAIL {
                txn.execute_raw(Statement::from_sql_and_values(
                    DatabaseBackend::Sqlite,
                    fill,
                    [message.into(), event.into()],
                ))
                .await?;
            }
            let rows = T::find_by_statement(query).all(&txn).await?;
            txn.commit().await?;
            return Ok(rows);
        }
    }

    /// What the writer calls after each batch (`Notify::notify_one`: a
    /// wake-up call kept until the indexer next waits).
    pub fn committed(&self) -> Arc<Notify> {
        self.committed.clone()
    }

    /// Indexes everything committed before the call, step by step, at
    /// the server's own priority.
    pub async fn catch_up(&self) -> Result<(), DbErr> {
        let _turn = self.turn.lock().await;
        while step(&self.pool, CHUNK).await.map_err(db_error)? != Step::Nothing {}
        Ok(())
    }

    /// What the indexer does after a wake-up: a step at idle priority,
    /// then, if that one did not reach the end, the rest as
    /// [`catch_up`](Self::catch_up) does.
    pub async fn index_committed(&self) -> Result<(), DbErr> {
        let _turn = self.turn.lock().await;
        if step(&self.background, BACKGROUND_CHUNK)
            .await
            .map_err(db_error)?
            == Step::Part
        {
            while step(&self.pool, CHUNK).await.map_err(db_error)? != Step::Nothing {}
        }
        Ok(())
    }

    /// The indexer: after each wake-up (a commit), [`GATHER`], then
    /// catches up. Starts by catching up with what was stored while it
    /// was not running. Runs until the runtime stops; a step cut short
    /// is rolled back and done again.
    pub async fn run(self: Arc<Self>) {
        self.committed.notify_one();
        loop {
            self.committed.notified().await;
            tokio::time::sleep(GATHER).await;
            if let Err(error) = self.index_committed().await {
                tracing::error!(error = %crate::db::describe(&error), "cannot write the search index");
            }
        }
    }
}

/// How far a step got.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Nothing was left to index.
    Nothing,
    /// Indexed everything up to the snapshot it read.
    All,
    /// Indexed as many messages or events as it may: there may be more.
    Part,
}

/// One step on a connection of `pool`, of at most `chunk` messages and
/// `chunk` events.
async fn step(pool: &SqlitePool, chunk: i64) -> Result<Step, sqlx::Error> {
    // Not `BEGIN IMMEDIATE`, which would take the write lock of every
    // attached file, the messages' too, and stop the writer for the
    // step: the first statement writes the index file, which takes its
    // lock alone (waiting for another instance's step); the messages'
    // file is only read.
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE search_progress SET message_id = message_id")
        .execute(&mut *tx)
        .await?;
    let (message, event, last_message, last_event, part): (i64, i64, i64, i64, bool) =
        sqlx::query_as(BOUNDS)
            .bind(chunk)
            .fetch_one(&mut *tx)
            .await?;
    if (last_message, last_event) == (message, event) {
        return Ok(Step::Nothing); // the transaction is rolled back, unwritten
    }
    for statement in STEP {
        sqlx::query(statement)
            .bind(message)
            .bind(event)
            .bind(last_message)
            .bind(last_event)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(if part { Step::Part } else { Step::All })
}

/// Adds what the index's statements call to `conn`:
/// `chat_search_text(text)`, the text as the index is given it.
async fn add_functions(conn: &mut sqlx::SqliteConnection) -> Result<(), sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    // SAFETY: the handle is locked for the call, so no other thread uses
    // the connection, which is open.
    unsafe { super::unspaced::register(handle.as_raw_handle().as_ptr()) }
        .map_err(|e| sqlx::Error::Configuration(Box::new(e)))
}

/// Puts the thread of `conn` (each sqlx SQLite connection runs its
/// statements on a thread of its own) at Linux's `SCHED_IDLE`: it runs
/// only on a core no other thread wants, and gives the core up at once
/// when one does. The call is made on that thread, from a progress
/// handler that SQLite calls while the connection runs a statement. A
/// thread cannot raise its priority back without privileges, so the
/// connection keeps it. Where it fails (another system, or a kernel
/// that refuses), the indexer runs at the server's priority, as before,
/// and says so in the log.
async fn run_at_idle_priority(conn: &mut sqlx::SqliteConnection) -> Result<(), sqlx::Error> {
    let outcome = Arc::new(std::sync::Mutex::new(None));
    let slot = outcome.clone();
    conn.lock_handle().await?.set_progress_handler(1, move || {
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(idle_priority());
        }
        true // go on with the statement
    });
    let ran = conn.execute("SELECT 1").await;
    conn.lock_handle().await?.remove_progress_handler();
    ran?;
    let outcome = outcome
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    match outcome {
        Some(Ok(())) => tracing::debug!("the search indexer's thread runs at idle priority"),
        Some(Err(error)) => tracing::warn!(
            %error,
            "the search indexer runs at the server's own priority: cannot lower its thread's"
        ),
        None => tracing::warn!(
            "the search indexer runs at the server's own priority: SQLite did not call the progress handler"
        ),
    }
    Ok(())
}

/// The calling thread to `SCHED_IDLE`.
#[cfg(target_os = "linux")]
fn idle_priority() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` that outlives the call; pid
    // 0 is the calling thread, and the call changes nothing else.
    let done = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn idle_priority() -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "SCHED_IDLE is Linux's",
    ))
}

/// Makes the index file's layout [`LAYOUT`], building it afresh when it is
/// another; on a connection without the messages' file attached, so that
/// `BEGIN IMMEDIATE` locks the index file alone. Read and written in one
/// write transaction: a second instance starting beside this one finds
/// the layout this one wrote.
async fn prepare(options: &SqliteConnectOptions) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect_with(options).await?;
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let layout: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *tx)
        .await?;
    if layout != LAYOUT {
        if layout != 0 {
            tracing::warn!(
                layout,
                "the search index is of another layout; building it again"
            );
        }
        sqlx::raw_sql(SCHEMA).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    conn.close().await
}

/// `<messages>-search`, beside the messages' file.
pub fn index_path(messages: &Path) -> PathBuf {
    let mut name = messages.as_os_str().to_owned();
    name.push("-search");
    PathBuf::from(name)
}

fn db_error(error: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(Arc::new(error)))
}
