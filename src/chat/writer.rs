//! The `MessageWriter`: one task that commits the message inserts of every
//! session in batches (group commit). A sender awaits its own message's
//! commit; only then is the message acknowledged and delivered. One
//! transaction per batch of whatever arrived while the previous one was
//! committing is what lets durable throughput approach the in-memory rate.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use chrono::{DateTime, Utc};
use entity::message;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr, EntityTrait,
    FromQueryResult, QueryFilter, TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};

use super::protocol::{ChatId, UserId};
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
}

/// What became of a message handed to the writer.
#[derive(Debug, Clone)]
pub enum Stored {
    /// Committed now.
    New(message::Model),
    /// The sender had already sent this `client_id`: the original message.
    Duplicate(message::Model),
}

/// Why a message could not be stored (it was not acknowledged).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the message writer is overloaded")]
    Busy,
    #[error("the message writer has stopped")]
    Stopped,
    #[error("database error: {0}")]
    Database(String),
}

struct PendingInsert {
    message: NewMessage,
    created_at: DateTime<Utc>,
    reply: oneshot::Sender<Result<Stored, StoreError>>,
}

/// Handle to the group-commit writer task. Cheap to clone.
#[derive(Clone)]
pub struct MessageWriter {
    tx: mpsc::Sender<PendingInsert>,
}

/// A message handed to the writer; resolves once its batch committed.
pub type PendingStore = oneshot::Receiver<Result<Stored, StoreError>>;

impl MessageWriter {
    /// Starts the writer task on the current tokio runtime, with a queue of `capacity` messages; beyond it
    /// `submit` answers `Busy`. It runs until every handle is dropped and the
    /// queue is drained, so a graceful shutdown commits everything accepted.
    pub fn with_capacity(
        db: DatabaseConnection,
        metrics: Metrics,
        capacity: usize,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(capacity);
        let task = tokio::spawn(run_writer(db, rx, metrics));
        (MessageWriter { tx }, task)
    }

    /// Queues a message; the returned receiver resolves after commit. The
    /// queue order is the commit order, so one session's messages keep theirs.
    pub fn submit(&self, message: NewMessage) -> Result<PendingStore, StoreError> {
        let (reply, rx) = oneshot::channel();
        let pending = PendingInsert {
            message,
            created_at: Utc::now(),
            reply,
        };
        match self.tx.try_send(pending) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(_)) => Err(StoreError::Busy),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(StoreError::Stopped),
        }
    }
}

async fn run_writer(db: DatabaseConnection, rx: mpsc::Receiver<PendingInsert>, metrics: Metrics) {
    let ids = match db.get_database_backend() {
        DatabaseBackend::MySql => mysql_ids(&db).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read MySQL's auto-increment settings; inserting row by row");
            MySqlIds::RowByRow
        }),
        _ => MySqlIds::RowByRow,
    };
    let commit = move |batch: Vec<PendingInsert>| {
        let db = db.clone();
        async move { commit_batch(&db, batch, ids).await }
    };
    run_batches(rx, metrics, commit).await;
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
/// committing is the next batch, handed to `commit` (which answers each
/// message's sender).
async fn run_batches<C, F>(mut rx: mpsc::Receiver<PendingInsert>, metrics: Metrics, commit: C)
where
    C: Fn(Vec<PendingInsert>) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let started = Instant::now();
        let count = batch.len();
        // A task per batch: should a batch ever panic, its senders' replies
        // are dropped, so they answer "not stored" (nothing was
        // acknowledged), and the writer goes on.
        let work = commit(std::mem::take(&mut batch));
        if let Err(e) = tokio::spawn(work).await {
            tracing::error!(error = %e, size = count, "message batch failed unexpectedly; its senders were told");
            continue;
        }
        metrics.record_store_batch(count, started.elapsed());
    }
}

async fn commit_batch(db: &DatabaseConnection, batch: Vec<PendingInsert>, ids: MySqlIds) {
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
    let mut resolved = match store_unique(db, &batch, &same_as, ids).await {
        Ok(results) => results,
        Err(e) => {
            // A race with another instance on the same client_id, or a real
            // failure: retry one by one so one bad row cannot fail the others.
            tracing::warn!(error = %e, size = batch.len(), "batch insert failed; retrying one by one");
            let mut results = Vec::with_capacity(batch.len());
            for (i, p) in batch.iter().enumerate() {
                let r = match same_as[i] {
                    Some(_) => None,
                    None => Some(store_one(db, p).await),
                };
                results.push(r);
            }
            results
        }
    };
    for i in 0..batch.len() {
        if let Some(j) = same_as[i] {
            let original = resolved[j].clone().map(|r| {
                r.map(|s| match s {
                    Stored::New(m) | Stored::Duplicate(m) => Stored::Duplicate(m),
                })
            });
            resolved[i] = original;
        }
    }
    for (p, r) in batch.into_iter().zip(resolved) {
        let result = r.unwrap_or_else(|| Err(StoreError::Database("lost batch result".into())));
        let _ = p.reply.send(result);
    }
}

fn active_model(p: &PendingInsert) -> message::ActiveModel {
    message::ActiveModel {
        id: NotSet,
        chat_id: Set(p.message.chat.0),
        sender_id: Set(Some(p.message.sender.0)),
        content: Set(p.message.content.clone()),
        client_id: Set(p.message.client_id.clone()),
        created_at: Set(p.created_at),
    }
}

/// What makes a resend the same message: the sender, the conversation and
/// the client's id. (Per conversation: the same `client_id` in two
/// conversations is two messages, and neither may be answered with the other.)
type ClientKey = (i64, uuid::Uuid, String);

fn client_key(p: &PendingInsert) -> Option<ClientKey> {
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

/// Stores the batch's distinct messages in one transaction. Entries that are
/// in-batch duplicates are left `None` for the caller to fill in.
async fn store_unique(
    db: &DatabaseConnection,
    batch: &[PendingInsert],
    same_as: &[Option<usize>],
    ids: MySqlIds,
) -> Result<Vec<Option<Result<Stored, StoreError>>>, DbErr> {
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
    if to_insert.is_empty() {
        return Ok(results);
    }
    let txn = db.begin().await?;
    let backend = db.get_database_backend();
    if backend == DatabaseBackend::Postgres {
        let pending: Vec<&PendingInsert> = to_insert.iter().map(|&i| &batch[i]).collect();
        let rows = insert_unnest(&txn, &pending).await?;
        for (&i, row) in to_insert.iter().zip(rows) {
            results[i] = Some(Ok(Stored::New(row)));
        }
    } else if let (DatabaseBackend::MySql, MySqlIds::Consecutive { increment }) = (backend, ids) {
        let pending: Vec<&PendingInsert> = to_insert.iter().map(|&i| &batch[i]).collect();
        let first = insert_values(&txn, &pending).await?;
        for (k, &i) in to_insert.iter().enumerate() {
            let id = first + k as i64 * increment;
            results[i] = Some(Ok(Stored::New(model_of(&batch[i], id))));
        }
    } else if backend == DatabaseBackend::MySql {
        // No RETURNING, and ids that may interleave: row by row, one commit.
        for &i in &to_insert {
            let id = message::Entity::insert(active_model(&batch[i]))
                .exec(&txn)
                .await?
                .last_insert_id;
            results[i] = Some(Ok(Stored::New(model_of(&batch[i], id))));
        }
    } else {
        let rows = message::Entity::insert_many(to_insert.iter().map(|&i| active_model(&batch[i])))
            .exec_with_returning(&txn)
            .await?;
        if rows.len() != to_insert.len() {
            return Err(DbErr::Custom(format!(
                "inserted {} messages but {} came back",
                to_insert.len(),
                rows.len()
            )));
        }
        for (&i, row) in to_insert.iter().zip(rows) {
            results[i] = Some(Ok(Stored::New(row)));
        }
    }
    txn.commit().await?;
    Ok(results)
}

/// PostgreSQL: the whole batch in one statement with five array parameters.
/// Its text never changes, so it is prepared once; a multi-row VALUES list
/// has five parameters per row and a new text for every batch size, and
/// re-preparing it cost four fifths of each batch's time.
async fn insert_unnest<C: ConnectionTrait>(
    txn: &C,
    batch: &[&PendingInsert],
) -> Result<Vec<message::Model>, DbErr> {
    use sea_orm::sea_query::{ArrayType, Value};
    let array = |ty: ArrayType, values: Vec<Value>| Value::Array(ty, Some(Box::new(values)));
    let values = vec![
        array(
            ArrayType::Uuid,
            batch
                .iter()
                .map(|p| Value::Uuid(Some(p.message.chat.0)))
                .collect(),
        ),
        array(
            ArrayType::BigInt,
            batch
                .iter()
                .map(|p| Value::BigInt(Some(p.message.sender.0)))
                .collect(),
        ),
        array(
            ArrayType::String,
            batch
                .iter()
                .map(|p| Value::String(Some(p.message.content.clone())))
                .collect(),
        ),
        // Arrays cannot hold NULLs here: no client_id travels as '' (never a
        // real one: empty ids are dropped at the edge) and NULLIF restores it.
        array(
            ArrayType::String,
            batch
                .iter()
                .map(|p| Value::String(Some(p.message.client_id.clone().unwrap_or_default())))
                .collect(),
        ),
        array(
            ArrayType::ChronoDateTimeUtc,
            batch
                .iter()
                .map(|p| Value::ChronoDateTimeUtc(Some(p.created_at)))
                .collect(),
        ),
    ];
    let statement = sea_orm::Statement::from_sql_and_values(
        DatabaseBackend::Postgres,
        "INSERT INTO messages (chat_id, sender_id, content, client_id, created_at) \
         SELECT chat, sender, content, NULLIF(client, ''), created \
         FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::timestamptz[]) \
         AS batch(chat, sender, content, client, created) \
         RETURNING id, chat_id, sender_id, content, client_id, created_at",
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
async fn insert_values<C: ConnectionTrait>(
    txn: &C,
    batch: &[&PendingInsert],
) -> Result<i64, DbErr> {
    use sea_orm::sea_query::Query;
    let mut insert = Query::insert();
    insert.into_table(message::Entity).columns([
        message::Column::ChatId,
        message::Column::SenderId,
        message::Column::Content,
        message::Column::ClientId,
        message::Column::CreatedAt,
    ]);
    for p in batch {
        insert
            .values([
                p.message.chat.0.into(),
                p.message.sender.0.into(),
                p.message.content.clone().into(),
                p.message.client_id.clone().into(),
                p.created_at.into(),
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

fn model_of(p: &PendingInsert, id: i64) -> message::Model {
    message::Model {
        id,
        chat_id: p.message.chat.0,
        sender_id: Some(p.message.sender.0),
        content: p.message.content.clone(),
        client_id: p.message.client_id.clone(),
        created_at: p.created_at,
    }
}

/// Stores one message on its own; a unique violation on `client_id` means
/// another instance stored it first, so that one is the original.
async fn store_one(db: &DatabaseConnection, p: &PendingInsert) -> Result<Stored, StoreError> {
    let db_error = |e: DbErr| StoreError::Database(e.to_string());
    match message::Entity::insert(active_model(p)).exec(db).await {
        Ok(res) => Ok(Stored::New(model_of(p, res.last_insert_id))),
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

    fn pending(content: &str) -> (PendingInsert, PendingStore) {
        let (reply, rx) = oneshot::channel();
        let message = NewMessage {
            chat: ChatId(uuid::Uuid::nil()),
            sender: UserId(1),
            content: content.into(),
            client_id: None,
        };
        let insert = PendingInsert {
            message,
            created_at: Utc::now(),
            reply,
        };
        (insert, rx)
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
        let commit = |batch: Vec<PendingInsert>| async move {
            if batch.iter().any(|p| p.message.content == "crash") {
                panic!("a batch crashed");
            }
            for p in batch {
                let _ = p
                    .reply
                    .send(Err(StoreError::Database("second batch".into())));
            }
        };
        let writer = tokio::spawn(run_batches(rx, Metrics::default(), commit));
        let (crash, crashed) = pending("crash");
        tx.send(crash).await.unwrap();
        assert!(
            crashed.await.is_err(),
            "the sender learns nothing was stored"
        );
        let (next, answered) = pending("next");
        tx.send(next).await.unwrap();
        assert!(matches!(answered.await, Ok(Err(StoreError::Database(m))) if m == "second batch"));
        drop(tx);
        writer.await.unwrap();
    }
}
