//! The `MessageWriter`: a task (a lane) that commits the message inserts of
//! every session in batches (group commit). Only once a message's batch has
//! committed is it acknowledged to its sender and handed to the ChatServer,
//! in commit order. One transaction per batch of whatever arrived while the
//! previous one was committing is what lets durable throughput approach the
//! in-memory rate. The same transaction gives each message the next `seq`
//! of its conversation (B7, `next_seqs`).
//!
//! Changes to stored messages (edits, deletions, reactions: B8,
//! `changes/`) are group-committed the same way. On PostgreSQL and MySQL
//! they have a lane of their own, a second queue and task beside the
//! messages': a batch of changes is a transaction of a dozen statements,
//! and in the messages' batches it would cost every message beside it the
//! one-statement path (`plain.rs`). The two lanes' transactions lock the
//! conversations' rows in id order before taking a `seq`, as two instances
//! do, so the numbers stay gapless and in commit order; each room's `Order`
//! (server/order.rs) delivers the events of both lanes in `seq` order. On
//! SQLite, which has one writer at a time, one lane takes both.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use actix::Recipient;
use chrono::{DateTime, Utc};
use entity::message;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseConnection, DatabaseTransaction, DbErr,
    EntityTrait, QueryFilter,
};
use tokio::sync::{mpsc, oneshot, Notify};

use super::changes::{self, ChangeOutcome, ChangeRequest};
use super::log;
use super::messages::{Committed, Outcome};
use super::protocol::{AttachmentInfo, ChatId, ErrorCode, Quote, RequestKind, ServerEvent, UserId};
use super::socket::Outbox;
use super::store;
pub use super::store::StoreError;
use crate::metrics::Metrics;

mod batches;
mod commit;
#[doc(hidden)]
pub mod commit_gate;
mod insert;
mod plain;

use batches::*;
use commit::*;
use insert::*;
use plain::*;

/// Most inserts committed in one transaction: large enough to amortise the
/// commit, small enough to keep one batch's latency low.
const MAX_BATCH: usize = 512;

/// A message to store.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub chat: ChatId,
    pub sender: UserId,
    pub content: String,
    pub client_id: Option<String>,
    /// The message it answers (B8): one of the same conversation, or the
    /// message is refused `invalid`.
    pub reply_to: Option<i64>,
    /// Its files (B9), checked as `store::sendable`; tied to the message in
    /// its transaction.
    pub attachments: Vec<AttachmentInfo>,
}

/// A message committed now, what it shows of the one it answers, and its files.
#[derive(Debug, Clone)]
pub struct Posted {
    pub message: message::Model,
    pub quote: Option<Quote>,
    pub attachments: Vec<AttachmentInfo>,
}

/// What became of a message or change handed to the writer.
#[derive(Debug, Clone)]
pub enum Stored {
    /// Committed now.
    New(Posted),
    /// The sender had already sent this `client_id`: the original message.
    Duplicate(message::Model),
    /// A change to a stored message (B8), applied or already so.
    Changed(ChangeOutcome),
}

impl Stored {
    /// The stored message, for a new message or a resend.
    pub fn message(&self) -> Option<&message::Model> {
        match self {
            Stored::New(p) => Some(&p.message),
            Stored::Duplicate(m) => Some(m),
            Stored::Changed(_) => None,
        }
    }
}

/// Who is told what became of a message.
pub enum Submitter {
    /// A session: its answer (the acknowledgement, or the error, logged in
    /// its span) goes to its connection through the ChatServer, with the
    /// push (`Committed`).
    Session { outbox: Outbox, span: tracing::Span },
    /// A caller that awaits the result itself (`MessageWriter::store`).
    Caller(oneshot::Sender<Result<Stored, StoreError>>),
}

/// A message handed to `MessageWriter::store`; resolves once its batch
/// committed (an error when the writer stopped first).
pub type PendingStore = oneshot::Receiver<Result<Stored, StoreError>>;

/// A message on its way to the database.
struct Row {
    message: NewMessage,
    created_at: DateTime<Utc>,
}

/// What the writer commits: a new message, or a change to a stored one.
enum Job {
    Insert(Row),
    Change(ChangeRequest),
}

/// Who waits for a job's commit, since when, and for which request.
struct Waiter {
    from: Submitter,
    arrived: Instant,
    kind: RequestKind,
}

struct PendingInsert {
    job: Job,
    waiter: Waiter,
}

/// Handle to the group-commit writer's lanes. Cheap to clone.
#[derive(Clone)]
pub struct MessageWriter {
    messages: mpsc::Sender<PendingInsert>,
    /// The changes' lane; on SQLite, the messages' queue.
    changes: mpsc::Sender<PendingInsert>,
}

impl MessageWriter {
    /// Starts the writer's lanes on the current tokio runtime, each with a
    /// queue of `capacity`; beyond it `submit` answers `Busy`. Committed
    /// messages go to `server` in commit order. The task returned ends once
    /// every handle is dropped and the queues are drained, so a graceful
    /// shutdown commits everything accepted.
    pub fn with_capacity(
        db: DatabaseConnection,
        server: Recipient<Committed>,
        metrics: Metrics,
        capacity: usize,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        Self::with_edit_window(db, server, metrics, capacity, DEFAULT_EDIT_WINDOW, None)
    }

    /// As `with_capacity`, with how long after sending a message may be
    /// edited (`EDIT_WINDOW_SECONDS`, B8), and who is woken after each
    /// batch: SQLite's search indexer (`SearchIndex::committed`).
    pub fn with_edit_window(
        db: DatabaseConnection,
        server: Recipient<Committed>,
        metrics: Metrics,
        capacity: usize,
        edit_window: chrono::Duration,
        committed: Option<Arc<Notify>>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let lane = |rx, inserts| {
            let (db, server, metrics) = (db.clone(), server.clone(), metrics.clone());
            let committed = committed.clone();
            let lane = Lane {
                edit_window,
                inserts,
                committed,
            };
            tokio::spawn(run_writer(db, rx, server, metrics, lane))
        };
        let (messages, rx) = mpsc::channel(capacity);
        if db.get_database_backend() == DatabaseBackend::Sqlite {
            let task = lane(rx, true);
            let changes = messages.clone();
            return (MessageWriter { messages, changes }, task);
        }
        let messages_lane = lane(rx, true);
        let (changes, rx) = mpsc::channel(capacity);
        let changes_lane = lane(rx, false);
        let task = tokio::spawn(async move {
            for (name, lane) in [("messages", messages_lane), ("changes", changes_lane)] {
                if let Err(e) = lane.await {
                    tracing::error!(error = %e, lane = name, "a writer lane ended unexpectedly");
                }
            }
        });
        (MessageWriter { messages, changes }, task)
    }

    /// Queues a message from `from`, which arrived at `arrived`. Once its
    /// batch commits the writer acknowledges it to `from` and hands it to
    /// the ChatServer, in commit order: so every conversation's events
    /// reach the ChatServer in `seq` order, and a sender's acknowledgement
    /// comes before its own sessions get the message.
    pub fn submit(
        &self,
        message: NewMessage,
        from: Submitter,
        arrived: Instant,
    ) -> Result<(), StoreError> {
        let row = Row {
            message,
            created_at: Utc::now(),
        };
        let pending = pending(Job::Insert(row), RequestKind::Message, from, arrived);
        queue(&self.messages, pending)
    }

    /// Queues a change to a stored message (B8); answered as `submit`
    /// answers, and its event handed to the ChatServer in commit order.
    pub fn submit_change(
        &self,
        change: ChangeRequest,
        from: Submitter,
        arrived: Instant,
    ) -> Result<(), StoreError> {
        let kind = change.change.kind();
        let pending = pending(Job::Change(change), kind, from, arrived);
        queue(&self.changes, pending)
    }

    /// Queues a change whose result the caller awaits.
    pub fn change(&self, change: ChangeRequest) -> Result<PendingStore, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.submit_change(change, Submitter::Caller(reply), Instant::now())?;
        Ok(rx)
    }

    /// Queues a message whose result the caller awaits; the ChatServer
    /// gets it as from `submit`.
    pub fn store(&self, message: NewMessage) -> Result<PendingStore, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.submit(message, Submitter::Caller(reply), Instant::now())?;
        Ok(rx)
    }
}

/// A job with who waits for it.
fn pending(job: Job, kind: RequestKind, from: Submitter, arrived: Instant) -> PendingInsert {
    PendingInsert {
        job,
        waiter: Waiter {
            from,
            arrived,
            kind,
        },
    }
}

/// Puts a job on a lane's queue, or says why not.
fn queue(lane: &mpsc::Sender<PendingInsert>, pending: PendingInsert) -> Result<(), StoreError> {
    match lane.try_send(pending) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(_)) => Err(StoreError::Busy),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(StoreError::Stopped),
    }
}

/// What became of a job, for its sender and the ChatServer; a caller
/// that awaits it is told here.
fn outcome(
    metrics: &Metrics,
    waiter: Waiter,
    result: Result<Stored, StoreError>,
) -> Option<Outcome> {
    let frames = match &result {
        Ok(Stored::New(p)) => Some(log::message_frames(
            &p.message,
            p.quote.as_ref(),
            &p.attachments,
        )),
        Ok(Stored::Changed(outcome)) => outcome.event_frames(),
        _ => None,
    };
    let answer = match (waiter.from, result) {
        (Submitter::Caller(reply), result) => {
            let _ = reply.send(result);
            None
        }
        (Submitter::Session { outbox, span }, Err(e)) => {
            let reply = e.reply(&span, waiter.kind);
            Some((outbox, ServerEvent::error(waiter.kind, reply).to_json()))
        }
        (Submitter::Session { outbox, .. }, Ok(stored)) => {
            let ack = match &stored {
                Stored::New(Posted { message: m, .. }) | Stored::Duplicate(m) => log::ack_frame(m),
                Stored::Changed(outcome) => outcome.ack_frame(),
            };
            Some((outbox, ack))
        }
    };
    if frames.is_some() {
        metrics.message_delivered(waiter.arrived.elapsed());
    }
    (answer.is_some() || frames.is_some()).then_some(Outcome { answer, frames })
}

/// How long after sending a message may be edited, unless configured.
pub const DEFAULT_EDIT_WINDOW: chrono::Duration = chrono::Duration::seconds(2 * 24 * 3600);

/// How a lane works.
struct Lane {
    edit_window: chrono::Duration,
    /// Whether new messages come this way (then MySQL's auto-increment
    /// settings are read first).
    inserts: bool,
    /// Woken after each batch.
    committed: Option<Arc<Notify>>,
}

/// A lane: the batches of `rx` committed and answered.
async fn run_writer(
    db: DatabaseConnection,
    rx: mpsc::Receiver<PendingInsert>,
    server: Recipient<Committed>,
    metrics: Metrics,
    lane: Lane,
) {
    let Lane {
        edit_window,
        inserts,
        committed,
    } = lane;
    let ids = match db.get_database_backend() {
        DatabaseBackend::MySql if inserts => mysql_ids(&db).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read MySQL's auto-increment settings; inserting row by row");
            MySqlIds::RowByRow
        }),
        _ => MySqlIds::RowByRow,
    };
    let batch_metrics = metrics.clone();
    let commit = move |batch: Vec<Job>| {
        let (db, metrics, committed) = (db.clone(), batch_metrics.clone(), committed.clone());
        async move {
            let results = commit_jobs(&db, &metrics, batch, ids, edit_window).await;
            if let Some(committed) = committed {
                committed.notify_one();
            }
            results
        }
    };
    let answer_metrics = metrics.clone();
    let answer = move |waiters: Vec<Waiter>, results: Results| {
        let outcomes: Vec<Outcome> = waiters
            .into_iter()
            .zip(results)
            .filter_map(|(waiter, result)| outcome(&answer_metrics, waiter, result))
            .collect();
        if !outcomes.is_empty() {
            server.do_send(Committed { outcomes });
        }
    };
    run_batches(rx, metrics, commit, answer).await;
}

/// How a MySQL batch learns the ids of its rows (MySQL has no RETURNING).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MySqlIds {
    /// One multi-row INSERT: its rows get consecutive ids, `increment` apart,
    /// from `LAST_INSERT_ID()` (the first). InnoDB promises this for inserts
    /// whose row count is known when `innodb_autoinc_lock_mode` is 0 or 1.
    Consecutive { increment: i64 },
    /// One INSERT per row, still one transaction: mode 2 ("interleaved")
    /// may hand a concurrent insert ids in between.
    RowByRow,
}

impl MySqlIds {
    /// What is safe under `innodb_autoinc_lock_mode` and `auto_increment_increment`.
    pub fn for_settings(lock_mode: i64, increment: i64) -> Self {
        match lock_mode {
            0 | 1 if increment >= 1 => MySqlIds::Consecutive { increment },
            _ => MySqlIds::RowByRow,
        }
    }
}

/// Reads the server's auto-increment settings: which `MySqlIds` is safe.
pub async fn mysql_ids(db: &DatabaseConnection) -> Result<MySqlIds, DbErr> {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            DatabaseBackend::MySql,
            "SELECT CAST(@@innodb_autoinc_lock_mode AS SIGNED) AS mode, \
             CAST(@@auto_increment_increment AS SIGNED) AS increment",
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("no answer for the auto-increment settings".into()))?;
    let mode: i64 = row.try_get("", "mode")?;
    let increment: i64 = row.try_get("", "increment")?;
    let ids = MySqlIds::for_settings(mode, increment);
    tracing::info!(
        innodb_autoinc_lock_mode = mode,
        auto_increment_increment = increment,
        ?ids,
        "MySQL batch inserts"
    );
    Ok(ids)
}

/// What a batch's jobs became, in the batch's order.
type Results = Vec<Result<Stored, StoreError>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_row_inserts_only_where_ids_are_consecutive() {
        assert_eq!(
            MySqlIds::for_settings(1, 1),
            MySqlIds::Consecutive { increment: 1 }
        );
        assert_eq!(
            MySqlIds::for_settings(0, 2),
            MySqlIds::Consecutive { increment: 2 }
        );
        assert_eq!(MySqlIds::for_settings(2, 1), MySqlIds::RowByRow);
    }
}
