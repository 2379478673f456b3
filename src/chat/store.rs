//! The queries chat needs (contacts, membership, history, read marks), and
//! the `MessageWriter`: one task that commits the message inserts of every
//! session in batches (group commit).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use chrono::{DateTime, Utc};
use entity::{chat, chat_member, message, user};
use sea_orm::sea_query::{Expr, Func};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, Condition, ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr,
    EntityTrait, FromQueryResult, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};

use super::presence::Presence;
use super::protocol::{format_time, ChatId, Contact, Direction, HistoryItem, LastMessage, UserId};
use crate::metrics::Metrics;

/// Largest page of history one request may ask for.
pub const MAX_HISTORY_PAGE: u64 = 200;
/// The page size when a request names none.
pub const DEFAULT_HISTORY_PAGE: u64 = 50;
/// Most inserts committed in one transaction: large enough to amortise the
/// commit, small enough to keep one batch's latency low.
const MAX_BATCH: usize = 512;

/// A conversation as one user sees it: the other member, the last message,
/// how many messages they have not read.
#[derive(Debug, Clone)]
pub struct ContactRow {
    pub chat: chat::Model,
    pub other: Option<user::Model>,
    pub last_message: Option<message::Model>,
    pub unread: u64,
}

impl ContactRow {
    /// The contact as clients see it; `online` comes from live presence.
    pub fn into_contact(self, presence: &Presence) -> Contact {
        let other = self.other.as_ref();
        let name = match (other, self.chat.kind, &self.chat.title) {
            (_, chat::ChatKind::Group, Some(title)) => title.clone(),
            (Some(user), _, _) => user.display_name(),
            (None, _, title) => title.clone().unwrap_or_default(),
        };
        Contact {
            pk: ChatId(self.chat.id),
            name,
            online: other.is_some_and(|u| presence.is_online(UserId(u.id))),
            user_id: other.map(|u| u.id),
            username: other.map(|u| u.username.clone()),
            last_message: self.last_message.map(|m| LastMessage {
                id: m.id,
                sender: m.sender_id,
                time: format_time(&m.created_at),
                content: m.content,
            }),
            unread: self.unread,
        }
    }
}

/// A stored message as `viewer` sees it in history.
pub fn history_item(m: message::Model, viewer: UserId) -> HistoryItem {
    HistoryItem {
        id: m.id,
        sender: m.sender_id,
        direction: if m.sender_id == Some(viewer.0) {
            Direction::Send
        } else {
            Direction::Received
        },
        time: format_time(&m.created_at),
        content: m.content,
        client_id: m.client_id,
    }
}

#[derive(Debug, FromQueryResult)]
struct UnreadCount {
    chat_id: uuid::Uuid,
    n: i64,
}

/// Every conversation `user` belongs to, most recently active first.
pub async fn contacts_of(db: &DatabaseConnection, user: UserId) -> Result<Vec<ContactRow>, DbErr> {
    let memberships = chat_member::Entity::find()
        .filter(chat_member::Column::UserId.eq(user.0))
        .all(db)
        .await?;
    contact_rows(db, user, memberships).await
}

/// One conversation as `user` sees it, if they are a member.
pub async fn contact_of(
    db: &DatabaseConnection,
    user: UserId,
    chat: ChatId,
) -> Result<Option<ContactRow>, DbErr> {
    let membership = chat_member::Entity::find_by_id((chat.0, user.0))
        .one(db)
        .await?;
    let rows = contact_rows(db, user, membership.into_iter().collect()).await?;
    Ok(rows.into_iter().next())
}

async fn contact_rows(
    db: &DatabaseConnection,
    user: UserId,
    memberships: Vec<chat_member::Model>,
) -> Result<Vec<ContactRow>, DbErr> {
    if memberships.is_empty() {
        return Ok(Vec::new());
    }
    let chat_ids: Vec<uuid::Uuid> = memberships.iter().map(|m| m.chat_id).collect();
    let chats: HashMap<uuid::Uuid, chat::Model> = chat::Entity::find()
        .filter(chat::Column::Id.is_in(chat_ids.clone()))
        .all(db)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    let others: HashMap<uuid::Uuid, user::Model> = chat_member::Entity::find()
        .filter(chat_member::Column::ChatId.is_in(chat_ids.clone()))
        .filter(chat_member::Column::UserId.ne(user.0))
        .find_also_related(user::Entity)
        .all(db)
        .await?
        .into_iter()
        .filter_map(|(m, u)| u.map(|u| (m.chat_id, u)))
        .collect();
    let last_ids = message::Entity::find()
        .select_only()
        .expr(Func::max(Expr::col(message::Column::Id)))
        .filter(message::Column::ChatId.is_in(chat_ids.clone()))
        .group_by(message::Column::ChatId)
        .into_tuple::<Option<i64>>()
        .all(db)
        .await?;
    let last_messages: HashMap<uuid::Uuid, message::Model> = message::Entity::find()
        .filter(message::Column::Id.is_in(last_ids.into_iter().flatten()))
        .all(db)
        .await?
        .into_iter()
        .map(|m| (m.chat_id, m))
        .collect();
    let mut unread_filter = Condition::any();
    for m in &memberships {
        unread_filter = unread_filter.add(
            Condition::all()
                .add(message::Column::ChatId.eq(m.chat_id))
                .add(message::Column::Id.gt(m.last_read_message_id.unwrap_or(0))),
        );
    }
    let unread: HashMap<uuid::Uuid, u64> = message::Entity::find()
        .select_only()
        .column(message::Column::ChatId)
        .column_as(message::Column::Id.count(), "n")
        .filter(unread_filter)
        .filter(
            Condition::any()
                .add(message::Column::SenderId.is_null())
                .add(message::Column::SenderId.ne(user.0)),
        )
        .group_by(message::Column::ChatId)
        .into_model::<UnreadCount>()
        .all(db)
        .await?
        .into_iter()
        .map(|c| (c.chat_id, c.n.max(0) as u64))
        .collect();

    let mut rows: Vec<ContactRow> = memberships
        .into_iter()
        .filter_map(|m| {
            let chat = chats.get(&m.chat_id)?.clone();
            Some(ContactRow {
                other: others.get(&m.chat_id).cloned(),
                last_message: last_messages.get(&m.chat_id).cloned(),
                unread: unread.get(&m.chat_id).copied().unwrap_or(0),
                chat,
            })
        })
        .collect();
    rows.sort_by(|a, b| {
        let key = |r: &ContactRow| (r.last_message.as_ref().map(|m| m.id), r.chat.created_at);
        key(b).cmp(&key(a))
    });
    Ok(rows)
}

/// The members of a conversation (empty if it does not exist).
pub async fn members_of(db: &DatabaseConnection, chat: ChatId) -> Result<Vec<UserId>, DbErr> {
    Ok(chat_member::Entity::find()
        .select_only()
        .column(chat_member::Column::UserId)
        .filter(chat_member::Column::ChatId.eq(chat.0))
        .into_tuple::<i64>()
        .all(db)
        .await?
        .into_iter()
        .map(UserId)
        .collect())
}

/// For each conversation of `user`, the other members: whom to tell when the
/// user comes online or goes offline.
pub async fn contacts_for_presence(
    db: &DatabaseConnection,
    user: UserId,
) -> Result<Vec<(ChatId, UserId)>, DbErr> {
    let chat_ids: Vec<uuid::Uuid> = chat_member::Entity::find()
        .select_only()
        .column(chat_member::Column::ChatId)
        .filter(chat_member::Column::UserId.eq(user.0))
        .into_tuple::<uuid::Uuid>()
        .all(db)
        .await?;
    if chat_ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(chat_member::Entity::find()
        .select_only()
        .column(chat_member::Column::ChatId)
        .column(chat_member::Column::UserId)
        .filter(chat_member::Column::ChatId.is_in(chat_ids))
        .filter(chat_member::Column::UserId.ne(user.0))
        .into_tuple::<(uuid::Uuid, i64)>()
        .all(db)
        .await?
        .into_iter()
        .map(|(c, u)| (ChatId(c), UserId(u)))
        .collect())
}

/// One page of a conversation's history, oldest first within the page, and
/// whether there is more in the direction of travel. With `after`, pages go
/// forward from that id (catching up); otherwise backward from `before` (or
/// from the newest).
pub async fn history(
    db: &DatabaseConnection,
    chat: ChatId,
    before: Option<i64>,
    after: Option<i64>,
    limit: u64,
) -> Result<(Vec<message::Model>, bool), DbErr> {
    let limit = limit.clamp(1, MAX_HISTORY_PAGE);
    let mut query = message::Entity::find().filter(message::Column::ChatId.eq(chat.0));
    if let Some(before) = before {
        query = query.filter(message::Column::Id.lt(before));
    }
    let forward = after.is_some();
    if let Some(after) = after {
        query = query
            .filter(message::Column::Id.gt(after))
            .order_by_asc(message::Column::Id);
    } else {
        query = query.order_by_desc(message::Column::Id);
    }
    let mut rows = query.limit(limit + 1).all(db).await?;
    let has_more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    if !forward {
        rows.reverse();
    }
    Ok((rows, has_more))
}

/// Moves `user`'s read mark in `chat` forward to `up_to` (never backward).
pub async fn mark_read(
    db: &DatabaseConnection,
    chat: ChatId,
    user: UserId,
    up_to: i64,
) -> Result<(), DbErr> {
    chat_member::Entity::update_many()
        .col_expr(chat_member::Column::LastReadMessageId, Expr::value(up_to))
        .filter(chat_member::Column::ChatId.eq(chat.0))
        .filter(chat_member::Column::UserId.eq(user.0))
        .filter(
            Condition::any()
                .add(chat_member::Column::LastReadMessageId.is_null())
                .add(chat_member::Column::LastReadMessageId.lt(up_to)),
        )
        .exec(db)
        .await?;
    Ok(())
}

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

async fn run_writer(
    db: DatabaseConnection,
    mut rx: mpsc::Receiver<PendingInsert>,
    metrics: Metrics,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Whatever arrived while the previous batch was committing is the next batch.
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let started = Instant::now();
        let count = batch.len();
        // A task per batch: should a batch ever panic, its senders get an
        // error (nothing was acknowledged) and the writer goes on.
        let db = db.clone();
        let work = std::mem::take(&mut batch);
        if let Err(e) = tokio::spawn(async move { commit_batch(&db, work).await }).await {
            tracing::error!(error = %e, size = count, "message batch failed unexpectedly; its senders were told");
            continue;
        }
        metrics.record_store_batch(count, started.elapsed());
    }
}

async fn commit_batch(db: &DatabaseConnection, batch: Vec<PendingInsert>) {
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
    let mut resolved = match store_unique(db, &batch, &same_as).await {
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
    } else if backend == DatabaseBackend::MySql {
        // MySQL has no RETURNING: insert row by row, still one commit.
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
