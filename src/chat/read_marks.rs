//! Read marks (B4 `read`), committed in batches: one task takes every mark
//! that arrived while the previous batch was being written, keeps the
//! furthest per (conversation, reader), and writes them in one
//! transaction. Clients mark read most of what they show (BENCHMARKS.md
//! "A realistic mix": half of all deliveries), so a transaction per mark
//! is a commit per mark: at 2,500 marks a second that took every pooled
//! connection and failed messages behind them.
//!
//! A mark is answered once its batch has committed, as a message is, and
//! the marks that moved go to the ChatServer together (`ReadsStored`), to
//! be pushed to the other members a conversation at a time.
//!
//! Batches start at least `SPACING` apart: a mark that comes after a quiet
//! moment is written at once, but under a steady stream of marks they wait
//! up to `SPACING` and go together. Without it the batches follow one
//! another as fast as the database commits them, each a commit of a few
//! marks (BENCHMARKS.md "Read marks written at most fifty times a second").

use std::collections::HashMap;
use std::time::Duration;

use actix::Recipient;
use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr, Statement, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::messages::{ReadsStored, SessionId, StoredRead};
use super::protocol::{ChatId, UserId};
use super::store;

/// Who asked for a mark, and whether it goes to the other members.
#[derive(Debug, Clone, Copy)]
pub struct Asked {
    /// The session that asked: it gets the answer, and no push.
    pub session: SessionId,
    /// Pushed to the other members (their reader's fan-out budget covered
    /// it), or only to the reader's own other sessions.
    pub shared: bool,
}

/// Most marks taken into one batch.
const MAX_BATCH: usize = 1024;
/// Marks waiting beyond the one being written; more are answered busy.
const QUEUE: usize = 16 * 1024;
/// Least time from one batch's start to the next one's: at most fifty
/// commits a second of marks, each read receipt later by at most this.
const SPACING: Duration = Duration::from_millis(20);

/// Why a mark was not written.
#[derive(Debug, thiserror::Error)]
pub enum ReadMarkError {
    #[error("read marks are queued to the limit")]
    Busy,
    #[error("the read-mark writer has stopped")]
    Stopped,
    #[error("writing read marks: {0}")]
    Database(String),
}

struct Mark {
    chat: ChatId,
    user: UserId,
    up_to: i64,
    asked: Asked,
    done: oneshot::Sender<Result<Pushed, ReadMarkError>>,
}

/// Whether a stored mark moved its reader forward and so went to the
/// ChatServer to push; one that did not (the reader was there or further,
/// or a further mark of the same batch was pushed instead) was stored all
/// the same and pushed to nobody.
pub type Pushed = bool;

/// The handle sessions mark through; cloned into each.
#[derive(Clone)]
pub struct ReadMarks {
    queue: mpsc::Sender<Mark>,
}

impl ReadMarks {
    /// Starts the writing task on the current runtime, handing the marks
    /// that moved to `server`. It ends once every handle is dropped and the
    /// queue is written.
    pub fn start(
        db: DatabaseConnection,
        server: Recipient<ReadsStored>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, marks) = mpsc::channel(QUEUE);
        (ReadMarks { queue }, tokio::spawn(run(db, marks, server)))
    }

    /// Moves `user`'s mark in `chat` forward to `up_to`, as `asked`, and
    /// returns once it is stored, with whether it was pushed. A mark that
    /// moves (one already there or further, in the store or in the same
    /// batch, does not) is pushed to the others (or, not `shared`, to the
    /// reader's other sessions).
    pub async fn mark(
        &self,
        chat: ChatId,
        user: UserId,
        up_to: i64,
        asked: Asked,
    ) -> Result<Pushed, ReadMarkError> {
        let (done, answer) = oneshot::channel();
        let mark = Mark {
            chat,
            user,
            up_to,
            asked,
            done,
        };
        self.queue.try_send(mark).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ReadMarkError::Busy,
            mpsc::error::TrySendError::Closed(_) => ReadMarkError::Stopped,
        })?;
        answer.await.map_err(|_| ReadMarkError::Stopped)?
    }
}

async fn run(
    db: DatabaseConnection,
    mut marks: mpsc::Receiver<Mark>,
    server: Recipient<ReadsStored>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut next_start = Instant::now();
    while marks.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if Instant::now() < next_start {
            tokio::time::sleep_until(next_start).await;
            while batch.len() < MAX_BATCH {
                let Ok(mark) = marks.try_recv() else { break };
                batch.push(mark);
            }
        }
        next_start = Instant::now() + SPACING;
        // The furthest mark of each reader, and which request asked it.
        let mut furthest: HashMap<(ChatId, UserId), (i64, usize)> = HashMap::new();
        for (i, mark) in batch.iter().enumerate() {
            let entry = furthest
                .entry((mark.chat, mark.user))
                .or_insert((mark.up_to, i));
            if mark.up_to > entry.0 {
                *entry = (mark.up_to, i);
            }
        }
        super::writer::commit_gate::pass(furthest.keys().map(|(chat, _)| chat.0)).await;
        let written = write(&db, &furthest).await;
        match &written {
            Ok(moved) if !moved.is_empty() => {
                // Every row that moved is one of the batch's readers.
                let stored = moved.iter().filter_map(|(&(chat, user), &up_to)| {
                    let asked = batch[furthest.get(&(chat, user))?.1].asked;
                    Some(StoredRead {
                        chat,
                        user,
                        up_to,
                        session: Some(asked.session),
                        shared: asked.shared,
                    })
                });
                server.do_send(ReadsStored {
                    reads: stored.collect(),
                    broadcast: true,
                });
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, marks = batch.len(), "writing read marks failed")
            }
        }
        for (i, mark) in batch.drain(..).enumerate() {
            let key = (mark.chat, mark.user);
            let answer = match &written {
                Ok(moved) => Ok(moved.contains_key(&key)
                    && furthest.get(&key).is_some_and(|&(_, asker)| asker == i)),
                Err(e) => Err(ReadMarkError::Database(e.to_string())),
            };
            // A session that went away meanwhile does not take its answer.
            let _ = mark.done.send(answer);
        }
    }
}

/// Writes the marks; returns the readers whose mark moved, and where to.
/// A mark goes no further than the conversation's newest message
/// (`store::mark_read`): what comes later arrives unread. PostgreSQL and SQLite
/// take them in one statement; MySQL (no `UPDATE … FROM`, no `RETURNING`)
/// one statement each, in one transaction.
async fn write(
    db: &DatabaseConnection,
    furthest: &HashMap<(ChatId, UserId), (i64, usize)>,
) -> Result<HashMap<(ChatId, UserId), i64>, DbErr> {
    let mut moved = HashMap::new();
    let backend = db.get_database_backend();
    if backend != DatabaseBackend::MySql {
        for row in db.query_all_raw(one_statement(backend, furthest)).await? {
            let key = (
                ChatId(row.try_get("", "chat_id")?),
                UserId(row.try_get("", "user_id")?),
            );
            moved.insert(key, row.try_get("", "last_read_message_id")?);
        }
        return Ok(moved);
    }
    let txn = crate::db::begin(db).await?;
    for (&(chat, user), &(up_to, _)) in furthest {
        if let Some(stored) = store::mark_read(&txn, chat, user, up_to).await? {
            moved.insert((chat, user), stored);
        }
    }
    txn.commit().await?;
    Ok(moved)
}

/// Every mark of the batch moved forward in one `UPDATE … FROM`, returning
/// the rows that moved: like `store::mark_read`, never backward.
/// PostgreSQL takes the marks as three arrays, so the statement's text is
/// the same for every batch and the writers' connections prepare and plan
/// it once (`db::Plans::Generic`); a `VALUES` list has a text per batch
/// size, each parsed and planned when it is new to the connection's
/// statement cache (BENCHMARKS.md, "Planned once"). SQLite, whose
/// statements cost no round trip to prepare, takes the `VALUES` list.
fn one_statement(
    backend: DatabaseBackend,
    furthest: &HashMap<(ChatId, UserId), (i64, usize)>,
) -> Statement {
    // Each mark no further than the conversation's newest message (the
    // index on messages (chat_id, seq) finds it), none if it has none.
    const SET: &str = "UPDATE chat_members SET last_read_message_id = v.r FROM (SELECT w.c, w.u, \
         (SELECT CASE WHEN w.r < messages.id THEN w.r ELSE messages.id END FROM messages \
         WHERE messages.chat_id = w.c ORDER BY messages.seq DESC LIMIT 1) AS r \
         FROM";
    const WHERE: &str = ") AS v WHERE chat_members.chat_id = v.c AND chat_members.user_id = v.u \
         AND v.r IS NOT NULL \
         AND (chat_members.last_read_message_id IS NULL OR chat_members.last_read_message_id < v.r) \
         RETURNING chat_id, user_id, last_read_message_id";
    if backend == DatabaseBackend::Postgres {
        use sea_orm::sea_query::ArrayType;
        // One map, unchanged between the three walks: they go in one order.
        let column = |ty: ArrayType, value: &dyn Fn(ChatId, UserId, i64) -> Value| {
            let values = furthest
                .iter()
                .map(|(&(chat, user), &(up_to, _))| value(chat, user, up_to));
            Value::Array(ty, Some(Box::new(values.collect())))
        };
        let values = vec![
            column(ArrayType::Uuid, &|chat, _, _| Value::Uuid(Some(chat.0))),
            column(ArrayType::BigInt, &|_, user, _| Value::BigInt(Some(user.0))),
            column(ArrayType::BigInt, &|_, _, up_to| Value::BigInt(Some(up_to))),
        ];
        let sql =
            format!("{SET} UNNEST($1::uuid[], $2::int8[], $3::int8[]) AS w (c, u, r) {WHERE}");
        return Statement::from_sql_and_values(backend, sql, values);
    }
    let rows = vec!["(?, ?, ?)"; furthest.len()].join(", ");
    let values: Vec<Value> = furthest
        .iter()
        .flat_map(|(&(chat, user), &(up_to, _))| [chat.0.into(), user.0.into(), up_to.into()])
        .collect();
    let sql = format!("WITH w (c, u, r) AS (VALUES {rows}) {SET} w {WHERE}");
    Statement::from_sql_and_values(backend, sql, values)
}
