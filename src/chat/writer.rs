//! The `MessageWriter`: one task that commits the message inserts of every
//! session in batches (group commit). Only once a message's batch has
//! committed is it acknowledged to its sender and handed to the ChatServer,
//! in commit order. One transaction per batch of whatever arrived while the
//! previous one was committing is what lets durable throughput approach the
//! in-memory rate. The same transaction gives each message the next `seq`
//! of its conversation (B7, `next_seqs`). Changes to stored messages
//! (edits, deletions, reactions: B8, `changes.rs`) go through the same
//! queue, so every event of a conversation reaches the ChatServer in `seq`
//! order, whichever kind it is.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use actix::Recipient;
use chrono::{DateTime, Utc};
use entity::{chat, message};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseConnection, DatabaseTransaction, DbErr,
    EntityTrait, FromQueryResult, QueryFilter, QueryOrder, QuerySelect,
};
use tokio::sync::{mpsc, oneshot};

use super::changes::{self, ChangeOutcome, ChangeRequest};
use super::log;
use super::messages::Deliver;
use super::protocol::{ChatId, ErrorCode, Quote, RequestKind, ServerEvent, UserId};
use super::socket::{Outbox, Queued};
use super::store;
pub use super::store::StoreError;
use crate::metrics::Metrics;

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
}

/// A message committed now, and what it shows of the one it answers.
#[derive(Debug, Clone)]
pub struct Posted {
    pub message: message::Model,
    pub quote: Option<Quote>,
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
    /// A session: the writer answers on its connection (the acknowledgement,
    /// or the error, logged in its span).
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

/// Handle to the group-commit writer task. Cheap to clone.
#[derive(Clone)]
pub struct MessageWriter {
    tx: mpsc::Sender<PendingInsert>,
}

impl MessageWriter {
    /// Starts the writer task on the current tokio runtime, with a queue of
    /// `capacity` messages; beyond it `submit` answers `Busy`. Committed
    /// messages go to `server` in commit order. It runs until every handle
    /// is dropped and the queue is drained, so a graceful shutdown commits
    /// everything accepted.
    pub fn with_capacity(
        db: DatabaseConnection,
        server: Recipient<Deliver>,
        metrics: Metrics,
        capacity: usize,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        Self::with_edit_window(db, server, metrics, capacity, DEFAULT_EDIT_WINDOW)
    }

    /// As `with_capacity`, with how long after sending a message may be
    /// edited (`EDIT_WINDOW_SECONDS`, B8).
    pub fn with_edit_window(
        db: DatabaseConnection,
        server: Recipient<Deliver>,
        metrics: Metrics,
        capacity: usize,
        edit_window: chrono::Duration,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(capacity);
        let task = tokio::spawn(run_writer(db, rx, server, metrics, edit_window));
        (MessageWriter { tx }, task)
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
        self.queue(Job::Insert(row), RequestKind::Message, from, arrived)
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
        self.queue(Job::Change(change), kind, from, arrived)
    }

    /// Queues a change whose result the caller awaits.
    pub fn change(&self, change: ChangeRequest) -> Result<PendingStore, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.submit_change(change, Submitter::Caller(reply), Instant::now())?;
        Ok(rx)
    }

    fn queue(
        &self,
        job: Job,
        kind: RequestKind,
        from: Submitter,
        arrived: Instant,
    ) -> Result<(), StoreError> {
        let pending = PendingInsert {
            job,
            waiter: Waiter {
                from,
                arrived,
                kind,
            },
        };
        match self.tx.try_send(pending) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(StoreError::Busy),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(StoreError::Stopped),
        }
    }

    /// Queues a message whose result the caller awaits; the ChatServer
    /// gets it as from `submit`.
    pub fn store(&self, message: NewMessage) -> Result<PendingStore, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.submit(message, Submitter::Caller(reply), Instant::now())?;
        Ok(rx)
    }
}

/// Tells a job's sender and the ChatServer what became of it.
fn answer(
    server: &Recipient<Deliver>,
    metrics: &Metrics,
    waiter: Waiter,
    result: Result<Stored, StoreError>,
) {
    let event = match &result {
        Ok(Stored::New(p)) => Some(log::message_frames(&p.message, p.quote.as_ref())),
        Ok(Stored::Changed(outcome)) => outcome.event_frames(),
        _ => None,
    };
    match (waiter.from, result) {
        (Submitter::Caller(reply), result) => {
            let _ = reply.send(result);
        }
        (Submitter::Session { outbox, span }, Err(e)) => {
            let reply = e.reply(&span, waiter.kind);
            let _ = outbox.send_text(ServerEvent::error(waiter.kind, reply).to_json());
        }
        (Submitter::Session { outbox, .. }, Ok(stored)) => {
            let ack = match &stored {
                Stored::New(Posted { message: m, .. }) | Stored::Duplicate(m) => log::ack_frame(m),
                Stored::Changed(outcome) => outcome.ack_frame(),
            };
            if outbox.send_text(ack) == Queued::Yes {
                metrics.frames_out(1);
            }
        }
    }
    if let Some(frames) = event {
        server.do_send(Deliver { frames, skip: None });
        metrics.message_delivered(waiter.arrived.elapsed());
    }
}

/// How long after sending a message may be edited, unless configured.
pub const DEFAULT_EDIT_WINDOW: chrono::Duration = chrono::Duration::seconds(2 * 24 * 3600);

async fn run_writer(
    db: DatabaseConnection,
    rx: mpsc::Receiver<PendingInsert>,
    server: Recipient<Deliver>,
    metrics: Metrics,
    edit_window: chrono::Duration,
) {
    let ids = match db.get_database_backend() {
        DatabaseBackend::MySql => mysql_ids(&db).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read MySQL's auto-increment settings; inserting row by row");
            MySqlIds::RowByRow
        }),
        _ => MySqlIds::RowByRow,
    };
    let batch_metrics = metrics.clone();
    let commit = move |batch: Vec<Job>| {
        let (db, metrics) = (db.clone(), batch_metrics.clone());
        async move { commit_jobs(&db, &metrics, batch, ids, edit_window).await }
    };
    let answer_metrics = metrics.clone();
    let answer = move |waiter, result| answer(&server, &answer_metrics, waiter, result);
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

/// The writer's loop: whatever arrived while the previous batch was
/// committing is the next batch, handed to `commit`; then each message's
/// result is `answer`ed, in batch order.
async fn run_batches<C, F, A>(
    mut rx: mpsc::Receiver<PendingInsert>,
    metrics: Metrics,
    commit: C,
    mut answer: A,
) where
    C: Fn(Vec<Job>) -> F,
    F: std::future::Future<Output = Vec<Result<Stored, StoreError>>> + Send + 'static,
    A: FnMut(Waiter, Result<Stored, StoreError>),
{
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let started = Instant::now();
        let count = batch.len();
        // New messages first: a change may name a message of this batch,
        // and the answers (and so the events) go out in `seq` order.
        batch.sort_by_key(|p| matches!(p.job, Job::Change(_)));
        let (rows, waiters): (Vec<Job>, Vec<Waiter>) =
            batch.drain(..).map(|p| (p.job, p.waiter)).unzip();
        let changes = rows.iter().filter(|j| matches!(j, Job::Change(_))).count();
        // A task per batch: should a batch ever panic, its senders are told
        // nothing was stored, and the writer goes on.
        let results = match tokio::spawn(commit(rows)).await {
            Ok(results) if results.len() == count => results,
            Ok(results) => {
                let error = format!("{count} messages but {} results", results.len());
                vec![Err(StoreError::Internal(error)); count]
            }
            Err(e) => {
                tracing::error!(error = %e, size = count, "message batch failed unexpectedly; its senders were told");
                vec![Err(StoreError::Internal("the batch failed".into())); count]
            }
        };
        for (waiter, result) in waiters.into_iter().zip(results) {
            answer(waiter, result);
        }
        metrics.record_store_batch(count, changes, started.elapsed());
    }
}

/// What a batch's jobs became, in the batch's order.
type Results = Vec<Result<Stored, StoreError>>;

/// The one-by-one retries of a failed batch. They are there so one bad row
/// cannot fail the others; once `GIVE_UP_AFTER` in a row fail with a
/// database error too, the failure is the database's (a full disk, say),
/// and the rest are refused with that error instead of tried one by one.
#[derive(Default)]
struct OneByOne {
    failed_in_a_row: usize,
    gave_up: Option<Arc<DbErr>>,
}

impl OneByOne {
    const GIVE_UP_AFTER: usize = 3;

    async fn attempt<T, F>(&mut self, store: impl FnOnce() -> F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        if let Some(error) = &self.gave_up {
            return Err(StoreError::Database(error.clone()));
        }
        let result = store().await;
        match &result {
            Err(StoreError::Database(error)) => {
                self.failed_in_a_row += 1;
                if self.failed_in_a_row >= Self::GIVE_UP_AFTER {
                    tracing::error!(%error, "retries one by one fail too; the rest of the batch is refused");
                    self.gave_up = Some(error.clone());
                }
            }
            _ => self.failed_in_a_row = 0,
        }
        result
    }
}

/// Whether the database answers at all, after a batch failed: if not, the
/// batch is refused at once rather than retried one by one (each attempt
/// would wait the pool's acquire timeout for a connection).
async fn reachable(db: &DatabaseConnection) -> bool {
    crate::db::ping(db).await.is_ok()
}

/// Commits a batch: its new messages, then its changes, in one transaction
/// (`run_batches` puts the new messages first, so a change can name a
/// message of the same batch, and the events' `seq` follow the answers'
/// order).
async fn commit_jobs(
    db: &DatabaseConnection,
    metrics: &Metrics,
    batch: Vec<Job>,
    ids: MySqlIds,
    edit_window: chrono::Duration,
) -> Results {
    let (mut rows, mut changes) = (Vec::new(), Vec::new());
    for job in batch {
        match job {
            Job::Insert(row) => rows.push(row),
            Job::Change(change) => changes.push(change),
        }
    }
    let changes = Changes {
        batch: changes,
        edit_window,
    };
    let (mut results, changed) = commit_batch(db, metrics, rows, ids, changes).await;
    results.extend(changed);
    results
}

/// The changes of a batch, and how long a message may be edited.
struct Changes {
    batch: Vec<ChangeRequest>,
    edit_window: chrono::Duration,
}

/// Applies a run of changes in one transaction; should it fail, one by one,
/// so one bad change cannot fail the others.
async fn commit_changes(db: &DatabaseConnection, metrics: &Metrics, changes: Changes) -> Results {
    let Changes { batch, edit_window } = changes;
    if batch.is_empty() {
        return Vec::new();
    }
    let stored = |r: Result<ChangeOutcome, StoreError>| r.map(Stored::Changed);
    match changes::commit(db, &batch, edit_window).await {
        Ok(results) => results.into_iter().map(stored).collect(),
        Err(e) if !reachable(db).await => {
            tracing::error!(error = %e, size = batch.len(), "change batch failed and the database is unreachable; refused");
            vec![Err(StoreError::Database(Arc::new(e))); batch.len()]
        }
        Err(e) => {
            tracing::warn!(error = %e, size = batch.len(), "change batch failed; retrying one by one");
            metrics.batch_retried();
            let mut results = Vec::with_capacity(batch.len());
            let mut retries = OneByOne::default();
            for change in batch {
                let result = retries
                    .attempt(|| async {
                        match changes::commit(db, std::slice::from_ref(&change), edit_window).await
                        {
                            Ok(mut one) => one.pop().unwrap_or_else(|| {
                                Err(StoreError::Internal("lost change result".into()))
                            }),
                            Err(e) => Err(StoreError::Database(Arc::new(e))),
                        }
                    })
                    .await;
                results.push(stored(result));
            }
            results
        }
    }
}

/// Commits new messages and changes: replies to a message of another
/// conversation (or none) are refused; the rest as `commit_unique`.
/// Answers the messages' results and the changes'.
async fn commit_batch(
    db: &DatabaseConnection,
    metrics: &Metrics,
    batch: Vec<Row>,
    ids: MySqlIds,
    changes: Changes,
) -> (Results, Results) {
    if batch.iter().all(|p| p.message.reply_to.is_none()) {
        return commit_unique(db, metrics, batch, ids, &HashMap::new(), changes).await;
    }
    let wanted: Vec<i64> = batch.iter().filter_map(|p| p.message.reply_to).collect();
    let answered: HashMap<i64, message::Model> = match message::Entity::find()
        .filter(message::Column::Id.is_in(wanted))
        .all(db)
        .await
    {
        Ok(found) => found.into_iter().map(|m| (m.id, m)).collect(),
        Err(e) => {
            let error = StoreError::Database(Arc::new(e));
            let refused = batch.iter().map(|_| Err(error.clone())).collect();
            return (refused, commit_changes(db, metrics, changes).await);
        }
    };
    let answers = |p: &Row| {
        p.message.reply_to.is_none_or(|id| {
            answered
                .get(&id)
                .is_some_and(|m| m.chat_id == p.message.chat.0)
        })
    };
    type Placed = Vec<(usize, Row)>;
    let (valid, refused): (Placed, Placed) =
        batch.into_iter().enumerate().partition(|(_, p)| answers(p));
    let mut results: Vec<Option<Result<Stored, StoreError>>> =
        (0..valid.len() + refused.len()).map(|_| None).collect();
    for (i, _) in &refused {
        results[*i] = Some(Err(StoreError::Refused {
            code: ErrorCode::Invalid,
            message: "reply_to is not a message of this conversation".into(),
        }));
    }
    let (places, rows): (Vec<usize>, Vec<Row>) = valid.into_iter().unzip();
    let quotes: HashMap<i64, Quote> = answered
        .iter()
        .map(|(id, m)| (*id, store::quote_of(m)))
        .collect();
    let (stored, changed) = commit_unique(db, metrics, rows, ids, &quotes, changes).await;
    for (i, r) in places.into_iter().zip(stored) {
        results[i] = Some(r);
    }
    let results = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(StoreError::Internal("lost batch result".into()))))
        .collect();
    (results, changed)
}

async fn commit_unique(
    db: &DatabaseConnection,
    metrics: &Metrics,
    batch: Vec<Row>,
    ids: MySqlIds,
    quotes: &HashMap<i64, Quote>,
    changes: Changes,
) -> (Results, Results) {
    if batch.is_empty() {
        return (Vec::new(), commit_changes(db, metrics, changes).await);
    }
    // A client_id seen twice in one batch: the later ones get the first's result.
    let mut first_of: HashMap<ClientKey, usize> = HashMap::new();
    let mut same_as: Vec<Option<usize>> = Vec::with_capacity(batch.len());
    for (i, p) in batch.iter().enumerate() {
        let dup = client_key(p).and_then(|key| match first_of.get(&key) {
            Some(&j) => Some(j),
            None => {
                first_of.insert(key, i);
                None
            }
        });
        same_as.push(dup);
    }
    let (mut resolved, changed) = match store_unique(db, &batch, &same_as, ids, &changes).await {
        Ok(results) => results,
        Err(e) if !reachable(db).await => {
            // Retrying one by one would wait for a connection once per
            // message: minutes for a large batch while the database is away.
            tracing::error!(error = %e, size = batch.len(), "batch insert failed and the database is unreachable; refused");
            let e = Arc::new(e);
            let refused = |n| vec![Some(Err(StoreError::Database(e.clone()))); n];
            let changed = vec![Err(StoreError::Database(e.clone())); changes.batch.len()];
            (refused(batch.len()), changed)
        }
        Err(e) => {
            // A race with another instance on the same client_id, or a real
            // failure: retry one by one so one bad row cannot fail the others
            // (and the changes in a transaction of their own).
            tracing::warn!(error = %e, size = batch.len(), "batch insert failed; retrying one by one");
            metrics.batch_retried();
            let mut results = Vec::with_capacity(batch.len());
            let mut retries = OneByOne::default();
            for (i, p) in batch.iter().enumerate() {
                let r = match same_as[i] {
                    Some(_) => None,
                    None => Some(retries.attempt(|| store_one(db, p)).await),
                };
                results.push(r);
            }
            (results, commit_changes(db, metrics, changes).await)
        }
    };
    for i in 0..batch.len() {
        if let Some(j) = same_as[i] {
            let original = resolved[j].clone().map(|r| {
                r.and_then(|s| match s.message() {
                    Some(m) => Ok(Stored::Duplicate(m.clone())),
                    None => Err(StoreError::Internal("a change among messages".into())),
                })
            });
            resolved[i] = original;
        }
    }
    let quote = |m: &message::Model| m.reply_to.and_then(|id| quotes.get(&id).cloned());
    for r in resolved.iter_mut().flatten() {
        if let Ok(Stored::New(p)) = r {
            p.quote = quote(&p.message);
        }
    }
    let stored = resolved
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(StoreError::Internal("lost batch result".into()))))
        .collect();
    (stored, changed)
}

fn active_model(p: &Row, seq: i64) -> message::ActiveModel {
    message::ActiveModel {
        id: NotSet,
        chat_id: Set(p.message.chat.0),
        sender_id: Set(Some(p.message.sender.0)),
        content: Set(p.message.content.clone()),
        client_id: Set(p.message.client_id.clone()),
        created_at: Set(p.created_at),
        seq: Set(seq),
        reply_to: Set(p.message.reply_to),
        edited_at: Set(None),
        deleted: Set(false),
        original_content: Set(None),
    }
}

/// What makes a resend the same message: the sender, the conversation and
/// the client's id. (Per conversation: the same `client_id` in two
/// conversations is two messages, and neither may be answered with the other.)
type ClientKey = (i64, uuid::Uuid, String);

fn client_key(p: &Row) -> Option<ClientKey> {
    let cid = p.message.client_id.clone()?;
    Some((p.message.sender.0, p.message.chat.0, cid))
}

/// Finds messages already stored under the batch's client keys.
async fn existing_by_client_id<C: ConnectionTrait>(
    db: &C,
    keys: &HashSet<ClientKey>,
) -> Result<HashMap<ClientKey, message::Model>, DbErr> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let senders: HashSet<i64> = keys.iter().map(|(s, _, _)| *s).collect();
    let chats: HashSet<uuid::Uuid> = keys.iter().map(|(_, c, _)| *c).collect();
    let client_ids: HashSet<&String> = keys.iter().map(|(_, _, id)| id).collect();
    Ok(message::Entity::find()
        .filter(message::Column::SenderId.is_in(senders))
        .filter(message::Column::ChatId.is_in(chats))
        .filter(message::Column::ClientId.is_in(client_ids.into_iter().cloned()))
        .all(db)
        .await?
        .into_iter()
        .filter_map(|m| {
            let key = (m.sender_id?, m.chat_id, m.client_id.clone()?);
            keys.contains(&key).then_some((key, m))
        })
        .collect())
}

/// Stores the batch's distinct messages, each with the next `seq` of its
/// conversation, then applies the batch's changes, in one transaction.
/// Entries that are in-batch duplicates are left `None` for the caller to
/// fill in.
async fn store_unique(
    db: &DatabaseConnection,
    batch: &[Row],
    same_as: &[Option<usize>],
    ids: MySqlIds,
    changes: &Changes,
) -> Result<(Vec<Option<Result<Stored, StoreError>>>, Results), DbErr> {
    let keys: HashSet<ClientKey> = batch.iter().filter_map(client_key).collect();
    let existing = existing_by_client_id(db, &keys).await?;
    let mut results: Vec<Option<Result<Stored, StoreError>>> = vec![None; batch.len()];
    let mut to_insert = Vec::new();
    for (i, p) in batch.iter().enumerate() {
        if same_as[i].is_some() {
            continue;
        }
        match client_key(p).and_then(|k| existing.get(&k)) {
            Some(original) => results[i] = Some(Ok(Stored::Duplicate(original.clone()))),
            None => to_insert.push(i),
        }
    }
    if to_insert.is_empty() && changes.batch.is_empty() {
        return Ok((results, Vec::new()));
    }
    let chat_of = match changes.batch.is_empty() {
        true => HashMap::new(),
        false => changes::chats_of(db, &changes.batch).await?,
    };
    let rows: Vec<&Row> = to_insert.iter().map(|&i| &batch[i]).collect();
    let mut touched: BTreeSet<uuid::Uuid> = chat_of.values().copied().collect();
    touched.extend(rows.iter().map(|r| r.message.chat.0));
    let txn = crate::db::begin_write(db).await?;
    if !changes.batch.is_empty() {
        // Every conversation of the batch locked at once, in id order, as
        // another instance's batch would lock them.
        changes::lock_chats(&txn, &touched).await?;
    }
    if !rows.is_empty() {
        let seqs = next_seqs(&txn, &rows).await?;
        let pending: Vec<(&Row, i64)> = rows.iter().copied().zip(seqs).collect();
        let stored = insert_rows(&txn, ids, &pending).await?;
        if stored.len() != to_insert.len() {
            return Err(DbErr::Custom(format!(
                "inserted {} messages but {} came back",
                to_insert.len(),
                stored.len()
            )));
        }
        for (&i, row) in to_insert.iter().zip(stored) {
            results[i] = Some(Ok(Stored::New(Posted {
                message: row,
                quote: None,
            })));
        }
    }
    let changed = match changes.batch.is_empty() {
        true => Vec::new(),
        false => changes::apply_all(&txn, &changes.batch, &chat_of, changes.edit_window)
            .await?
            .into_iter()
            .map(|r| r.map(Stored::Changed))
            .collect(),
    };
    commit_gate::pass(touched.into_iter()).await;
    txn.commit().await?;
    Ok((results, changed))
}

/// Inserts `pending` (each row with its `seq`) the fastest way the
/// database allows, and gives back the stored rows in the same order.
async fn insert_rows(
    txn: &DatabaseTransaction,
    ids: MySqlIds,
    pending: &[(&Row, i64)],
) -> Result<Vec<message::Model>, DbErr> {
    Ok(match (txn.get_database_backend(), ids) {
        (DatabaseBackend::Postgres, _) => insert_unnest(txn, pending).await?,
        (DatabaseBackend::MySql, MySqlIds::Consecutive { increment }) => {
            let first = insert_values(txn, pending).await?;
            pending
                .iter()
                .enumerate()
                .map(|(k, (row, seq))| model_of(row, first + k as i64 * increment, *seq))
                .collect()
        }
        (DatabaseBackend::MySql, MySqlIds::RowByRow) => {
            // No RETURNING, and ids that may interleave: row by row, one commit.
            let mut stored = Vec::with_capacity(pending.len());
            for (row, seq) in pending {
                let id = message::Entity::insert(active_model(row, *seq))
                    .exec(txn)
                    .await?
                    .last_insert_id;
                stored.push(model_of(row, id, *seq));
            }
            stored
        }
        _ => {
            message::Entity::insert_many(pending.iter().map(|(row, seq)| active_model(row, *seq)))
                .exec_with_returning(txn)
                .await?
        }
    })
}

/// Test support: holds the commit of the next batch that stores an event of
/// one conversation, after its `seq` was taken and before the commit, so a
/// test can make one instance's commit slow on purpose while another
/// instance stores later events of the same conversation
/// (tests/conversation_log.rs). Unused, it costs one atomic load a batch.
#[doc(hidden)]
pub mod commit_gate {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use tokio::sync::{Notify, Semaphore};

    static ARMED: AtomicBool = AtomicBool::new(false);
    static GATES: Mutex<Option<HashMap<uuid::Uuid, Gate>>> = Mutex::new(None);

    /// A held conversation: `reached` once a batch waits at it; that batch
    /// commits once `release` is called.
    #[derive(Clone)]
    pub struct Gate {
        reached: Arc<Notify>,
        open: Arc<Semaphore>,
    }

    impl Gate {
        /// Waits until a batch of the conversation is held here.
        pub async fn reached(&self) {
            self.reached.notified().await;
        }

        /// Lets the held batch commit.
        pub fn release(&self) {
            self.open.close();
        }
    }

    /// Holds the next batch with an event of `chat` before its commit.
    pub fn hold(chat: uuid::Uuid) -> Gate {
        let gate = Gate {
            reached: Arc::new(Notify::new()),
            open: Arc::new(Semaphore::new(0)),
        };
        let mut gates = GATES.lock().unwrap_or_else(|e| e.into_inner());
        gates
            .get_or_insert_with(HashMap::new)
            .insert(chat, gate.clone());
        ARMED.store(true, Ordering::Release);
        gate
    }

    /// Where the writer waits, if a gate holds one of `chats`.
    pub(super) async fn pass(chats: impl Iterator<Item = uuid::Uuid>) {
        if !ARMED.load(Ordering::Acquire) {
            return;
        }
        let gate = {
            let mut gates = GATES.lock().unwrap_or_else(|e| e.into_inner());
            let Some(gates) = gates.as_mut() else {
                return;
            };
            let mut found = None;
            for chat in chats {
                if let Some(gate) = gates.remove(&chat) {
                    found = Some(gate);
                    break;
                }
            }
            found
        };
        if let Some(gate) = gate {
            gate.reached.notify_one();
            // Closed by `release`: the error is the signal to go on.
            let _ = gate.open.acquire().await;
        }
    }
}

/// Takes the next `seq` of each row's conversation (B7), in row order, by
/// moving `chats.seq` forward inside the transaction that stores the rows:
/// so the numbers have no gaps (a rollback returns them) and follow commit
/// order. On PostgreSQL and MySQL the conversations' rows are locked first,
/// in id order: another instance's batch for the same conversation waits for
/// this commit, and two batches never lock in opposite orders. SQLite has one
/// writer at a time, and the UPDATE comes first so that this transaction is
/// that writer before it reads.
async fn next_seqs<C: ConnectionTrait>(txn: &C, rows: &[&Row]) -> Result<Vec<i64>, DbErr> {
    let mut counts: BTreeMap<uuid::Uuid, i64> = BTreeMap::new();
    for row in rows {
        *counts.entry(row.message.chat.0).or_default() += 1;
    }
    let tops: HashMap<uuid::Uuid, i64> = match txn.get_database_backend() {
        DatabaseBackend::Postgres => bump_postgres(txn, &counts).await?,
        DatabaseBackend::MySql => bump_mysql(txn, &counts).await?,
        _ => bump_sqlite(txn, &counts).await?,
    };
    if tops.len() != counts.len() {
        return Err(DbErr::Custom(
            "a message for a conversation that does not exist".into(),
        ));
    }
    // Each conversation's rows take its numbers up to the new top, in order.
    let mut next: HashMap<uuid::Uuid, i64> = tops
        .into_iter()
        .map(|(chat, top)| (chat, top - counts[&chat] + 1))
        .collect();
    Ok(rows
        .iter()
        .map(|row| {
            let seq = next.entry(row.message.chat.0).or_default();
            *seq += 1;
            *seq - 1
        })
        .collect())
}

/// PostgreSQL: one statement whose text never changes (prepared once): the
/// CTE locks the rows in id order, and the UPDATE moves only rows it
/// locked, so no lock is taken out of that order.
async fn bump_postgres<C: ConnectionTrait>(
    txn: &C,
    counts: &BTreeMap<uuid::Uuid, i64>,
) -> Result<HashMap<uuid::Uuid, i64>, DbErr> {
    use sea_orm::sea_query::{ArrayType, Value};
    let ids = counts.keys().map(|c| Value::Uuid(Some(*c))).collect();
    let ns = counts.values().map(|n| Value::BigInt(Some(*n))).collect();
    let statement = sea_orm::Statement::from_sql_and_values(
        DatabaseBackend::Postgres,
        "WITH locked AS (SELECT id FROM chats WHERE id = ANY($1) ORDER BY id FOR UPDATE) \
         UPDATE chats SET seq = chats.seq + batch.n \
         FROM locked JOIN UNNEST($1::uuid[], $2::int8[]) AS batch(id, n) ON batch.id = locked.id \
         WHERE chats.id = locked.id RETURNING chats.id, chats.seq",
        [
            Value::Array(ArrayType::Uuid, Some(Box::new(ids))),
            Value::Array(ArrayType::BigInt, Some(Box::new(ns))),
        ],
    );
    txn.query_all_raw(statement)
        .await?
        .iter()
        .map(|row| Ok((row.try_get("", "id")?, row.try_get("", "seq")?)))
        .collect()
}

/// MySQL: the rows locked in id order (`SELECT … FOR UPDATE` on the
/// primary key), then moved to their new tops.
async fn bump_mysql<C: ConnectionTrait>(
    txn: &C,
    counts: &BTreeMap<uuid::Uuid, i64>,
) -> Result<HashMap<uuid::Uuid, i64>, DbErr> {
    let chats: Vec<uuid::Uuid> = counts.keys().copied().collect();
    let found = chat::Entity::find()
        .select_only()
        .column(chat::Column::Id)
        .column(chat::Column::Seq)
        .filter(chat::Column::Id.is_in(chats))
        .order_by_asc(chat::Column::Id)
        .lock_exclusive()
        .into_tuple::<(uuid::Uuid, i64)>()
        .all(txn)
        .await?;
    let tops: HashMap<uuid::Uuid, i64> = found
        .iter()
        .map(|(chat, seq)| (*chat, seq + counts.get(chat).copied().unwrap_or(0)))
        .collect();
    let moved: Vec<(uuid::Uuid, i64)> = tops.iter().map(|(chat, top)| (*chat, *top)).collect();
    changes::set_seqs(txn, &moved).await?;
    Ok(tops)
}

/// SQLite: the UPDATE first (this transaction becomes the one writer), then
/// the new values read back.
async fn bump_sqlite<C: ConnectionTrait>(
    txn: &C,
    counts: &BTreeMap<uuid::Uuid, i64>,
) -> Result<HashMap<uuid::Uuid, i64>, DbErr> {
    let chats: Vec<uuid::Uuid> = counts.keys().copied().collect();
    let mut cases = counts.iter();
    let Some((first, n)) = cases.next() else {
        return Ok(HashMap::new());
    };
    let mut by = Expr::case(chat::Column::Id.eq(*first), *n);
    for (chat, n) in cases {
        by = by.case(chat::Column::Id.eq(*chat), *n);
    }
    chat::Entity::update_many()
        .col_expr(
            chat::Column::Seq,
            Expr::col(chat::Column::Seq).add(by.finally(0)),
        )
        .filter(chat::Column::Id.is_in(chats.clone()))
        .exec(txn)
        .await?;
    Ok(chat::Entity::find()
        .select_only()
        .column(chat::Column::Id)
        .column(chat::Column::Seq)
        .filter(chat::Column::Id.is_in(chats))
        .into_tuple::<(uuid::Uuid, i64)>()
        .all(txn)
        .await?
        .into_iter()
        .collect())
}

/// PostgreSQL: the whole batch in one statement with six array parameters.
/// Its text never changes, so it is prepared once; a multi-row VALUES list
/// has six parameters per row and a new text for every batch size, and
/// re-preparing it cost four fifths of each batch's time.
async fn insert_unnest<C: ConnectionTrait>(
    txn: &C,
    batch: &[(&Row, i64)],
) -> Result<Vec<message::Model>, DbErr> {
    use sea_orm::sea_query::{ArrayType, Value};
    let array = |ty: ArrayType, values: Vec<Value>| Value::Array(ty, Some(Box::new(values)));
    let values = vec![
        array(
            ArrayType::Uuid,
            batch
                .iter()
                .map(|(p, _)| Value::Uuid(Some(p.message.chat.0)))
                .collect(),
        ),
        array(
            ArrayType::BigInt,
            batch
                .iter()
                .map(|(p, _)| Value::BigInt(Some(p.message.sender.0)))
                .collect(),
        ),
        array(
            ArrayType::String,
            batch
                .iter()
                .map(|(p, _)| Value::String(Some(p.message.content.clone())))
                .collect(),
        ),
        // Arrays cannot hold NULLs here: no client_id travels as '' (never a
        // real one: empty ids are dropped at the edge) and NULLIF restores it.
        array(
            ArrayType::String,
            batch
                .iter()
                .map(|(p, _)| Value::String(Some(p.message.client_id.clone().unwrap_or_default())))
                .collect(),
        ),
        array(
            ArrayType::BigInt,
            batch
                .iter()
                .map(|(_, seq)| Value::BigInt(Some(*seq)))
                .collect(),
        ),
        array(
            ArrayType::ChronoDateTimeUtc,
            batch
                .iter()
                .map(|(p, _)| Value::ChronoDateTimeUtc(Some(p.created_at)))
                .collect(),
        ),
        // No reply travels as 0 (never a message id) and NULLIF restores it.
        array(
            ArrayType::BigInt,
            batch
                .iter()
                .map(|(p, _)| Value::BigInt(Some(p.message.reply_to.unwrap_or(0))))
                .collect(),
        ),
    ];
    let statement = sea_orm::Statement::from_sql_and_values(
        DatabaseBackend::Postgres,
        "INSERT INTO messages (chat_id, sender_id, content, client_id, seq, created_at, reply_to) \
         SELECT chat, sender, content, NULLIF(client, ''), seq, created, NULLIF(reply, 0) \
         FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::int8[], \
         $6::timestamptz[], $7::int8[]) AS batch(chat, sender, content, client, seq, created, reply) \
         RETURNING id, chat_id, sender_id, content, client_id, created_at, seq, reply_to, \
         edited_at, deleted, original_content",
        values,
    );
    let mut rows = txn
        .query_all_raw(statement)
        .await?
        .iter()
        .map(|row| message::Model::from_query_result(row, ""))
        .collect::<Result<Vec<_>, _>>()?;
    if rows.len() != batch.len() {
        return Err(DbErr::Custom(format!(
            "inserted {} messages but {} came back",
            batch.len(),
            rows.len()
        )));
    }
    // One statement draws ids in input order: sorting by id restores it.
    rows.sort_by_key(|m| m.id);
    Ok(rows)
}

/// MySQL: the whole batch in one multi-row INSERT; the id of its first row
/// (`LAST_INSERT_ID()`). Only used where the ids are known to be consecutive.
async fn insert_values<C: ConnectionTrait>(txn: &C, batch: &[(&Row, i64)]) -> Result<i64, DbErr> {
    use sea_orm::sea_query::Query;
    let mut insert = Query::insert();
    insert.into_table(message::Entity).columns([
        message::Column::ChatId,
        message::Column::SenderId,
        message::Column::Content,
        message::Column::ClientId,
        message::Column::Seq,
        message::Column::CreatedAt,
        message::Column::ReplyTo,
    ]);
    for (p, seq) in batch {
        insert
            .values([
                p.message.chat.0.into(),
                p.message.sender.0.into(),
                p.message.content.clone().into(),
                p.message.client_id.clone().into(),
                (*seq).into(),
                p.created_at.into(),
                p.message.reply_to.into(),
            ])
            .map_err(|e| DbErr::Custom(format!("building the batch insert: {e}")))?;
    }
    let done = txn.execute(&insert).await?;
    if done.rows_affected() != batch.len() as u64 {
        return Err(DbErr::Custom(format!(
            "inserted {} messages but the server reports {}",
            batch.len(),
            done.rows_affected()
        )));
    }
    i64::try_from(done.last_insert_id()).map_err(|_| DbErr::Custom("an id beyond i64".into()))
}

fn model_of(p: &Row, id: i64, seq: i64) -> message::Model {
    message::Model {
        id,
        chat_id: p.message.chat.0,
        sender_id: Some(p.message.sender.0),
        content: p.message.content.clone(),
        client_id: p.message.client_id.clone(),
        created_at: p.created_at,
        seq,
        reply_to: p.message.reply_to,
        edited_at: None,
        deleted: false,
        original_content: None,
    }
}

/// Stores one message in a transaction of its own; a unique violation on
/// `client_id` means another instance stored it first, so that one is the
/// original.
async fn store_one(db: &DatabaseConnection, p: &Row) -> Result<Stored, StoreError> {
    let db_error = |e: DbErr| StoreError::Database(Arc::new(e));
    let attempt = async {
        let txn = crate::db::begin_write(db).await?;
        let seq = next_seqs(&txn, &[p]).await?[0];
        let id = message::Entity::insert(active_model(p, seq))
            .exec(&txn)
            .await?
            .last_insert_id;
        txn.commit().await?;
        Ok::<_, DbErr>(model_of(p, id, seq))
    };
    match attempt.await {
        Ok(stored) => Ok(Stored::New(Posted {
            message: stored,
            quote: None,
        })),
        Err(insert_error) => {
            let Some(key) = client_key(p) else {
                return Err(db_error(insert_error));
            };
            let found = existing_by_client_id(db, &HashSet::from([key.clone()]))
                .await
                .map_err(db_error)?;
            match found.get(&key) {
                Some(original) => Ok(Stored::Duplicate(original.clone())),
                None => Err(db_error(insert_error)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(content: &str) -> PendingInsert {
        let message = NewMessage {
            chat: ChatId(uuid::Uuid::nil()),
            sender: UserId(1),
            content: content.into(),
            client_id: None,
            reply_to: None,
        };
        let (outbox, _) = crate::chat::socket::outbox(4);
        PendingInsert {
            job: Job::Insert(Row {
                message,
                created_at: Utc::now(),
            }),
            waiter: Waiter {
                from: Submitter::Session {
                    outbox,
                    span: tracing::Span::none(),
                },
                arrived: Instant::now(),
                kind: RequestKind::Message,
            },
        }
    }

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

    #[tokio::test]
    async fn a_crashed_batch_is_answered_not_stored_and_the_writer_goes_on() {
        let (tx, rx) = mpsc::channel(8);
        // The first batch panics; later ones are answered with an error of
        // their own, so the test can tell the writer kept going.
        let commit = |batch: Vec<Job>| async move {
            if batch
                .iter()
                .any(|p| matches!(p, Job::Insert(r) if r.message.content == "crash"))
            {
                panic!("a batch crashed");
            }
            vec![Err(StoreError::Internal("second batch".into())); batch.len()]
        };
        let (answers, mut answered) = mpsc::unbounded_channel();
        let answer = move |_: Waiter, result: Result<Stored, StoreError>| {
            let _ = answers.send(result.err().map(|e| e.to_string()));
        };
        let writer = tokio::spawn(run_batches(rx, Metrics::default(), commit, answer));
        tx.send(pending("crash")).await.unwrap();
        assert_eq!(
            answered.recv().await,
            Some(Some("message writer: the batch failed".into())),
            "the sender learns nothing was stored"
        );
        tx.send(pending("next")).await.unwrap();
        assert_eq!(
            answered.recv().await,
            Some(Some("message writer: second batch".into()))
        );
        drop(tx);
        writer.await.unwrap();
    }
}
