//! Committing a batch: new messages (with their `seq`, replies checked,
//! resends found by `client_id`) and changes, in one transaction; one by
//! one when the batch fails, so one bad row cannot fail the others.

use super::*;

/// The one-by-one retries of a failed batch. They are there so one bad row
/// cannot fail the others; once `GIVE_UP_AFTER` in a row fail with a
/// database error too, the failure is the database's (a full disk, say),
/// and the rest are refused with that error instead of tried one by one.
#[derive(Default)]
pub(super) struct OneByOne {
    failed_in_a_row: usize,
    gave_up: Option<Arc<DbErr>>,
}

impl OneByOne {
    const GIVE_UP_AFTER: usize = 3;
    /// Runs of one row's transaction after the database chose it to break a
    /// deadlock (rolled back whole, so nothing is stored twice).
    const DEADLOCK_RUNS: usize = 3;

    async fn attempt<T, F>(&mut self, mut store: impl FnMut() -> F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        if let Some(error) = &self.gave_up {
            return Err(StoreError::Database(error.clone()));
        }
        let mut result = store().await;
        for _ in 1..Self::DEADLOCK_RUNS {
            match &result {
                Err(StoreError::Database(e)) if crate::db::is_deadlock(e) => {
                    tracing::warn!(error = %e, "a deadlock rolled the row back; running it again");
                    result = store().await;
                }
                _ => break,
            }
        }
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
pub(super) async fn reachable(db: &DatabaseConnection) -> bool {
    crate::db::ping(db).await.is_ok()
}

/// Commits a batch: its new messages, then its changes, in one transaction
/// (`run_batches` puts the new messages first, so a change can name a
/// message of the same batch, and the events' `seq` follow the answers'
/// order).
pub(super) async fn commit_jobs(
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
pub(super) struct Changes {
    batch: Vec<ChangeRequest>,
    edit_window: chrono::Duration,
}

/// Applies a run of changes in one transaction; should it fail, one by one,
/// so one bad change cannot fail the others.
pub(super) async fn commit_changes(
    db: &DatabaseConnection,
    metrics: &Metrics,
    changes: Changes,
) -> Results {
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
pub(super) async fn commit_batch(
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

pub(super) async fn commit_unique(
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
    let (mut resolved, changed) = match store_unique(db, metrics, &batch, &same_as, ids, &changes)
        .await
    {
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

pub(super) fn active_model(p: &Row, seq: i64) -> message::ActiveModel {
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
pub(super) type ClientKey = (i64, uuid::Uuid, String);

pub(super) fn client_key(p: &Row) -> Option<ClientKey> {
    let cid = p.message.client_id.clone()?;
    Some((p.message.sender.0, p.message.chat.0, cid))
}

/// Finds messages already stored under the batch's client keys.
pub(super) async fn existing_by_client_id<C: ConnectionTrait>(
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
pub(super) async fn store_unique(
    db: &DatabaseConnection,
    metrics: &Metrics,
    batch: &[Row],
    same_as: &[Option<usize>],
    ids: MySqlIds,
    changes: &Changes,
) -> Result<(Vec<Option<Result<Stored, StoreError>>>, Results), DbErr> {
    let candidates: Vec<usize> = (0..batch.len()).filter(|&i| same_as[i].is_none()).collect();
    let plain = changes.batch.is_empty()
        && candidates
            .iter()
            .all(|&i| batch[i].message.attachments.is_empty());
    if plain && !candidates.is_empty() && !commit_gate::armed() {
        match db.get_database_backend() {
            DatabaseBackend::Postgres => {
                return Ok((
                    store_plain_postgres(db, batch, &candidates).await?,
                    Vec::new(),
                ))
            }
            DatabaseBackend::Sqlite => {
                if let Some(results) = store_plain_sqlite(db, batch, &candidates).await {
                    return Ok((results, Vec::new()));
                }
                metrics.plain_fell_back();
            }
            _ => {}
        }
    }
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
    let txn = crate::db::begin_write_uncancelled(db).await?;
    // Files first (and before any conversation is locked, in every batch):
    // a message whose files were sent meanwhile, by another batch or
    // instance or earlier in this one, is refused and takes no `seq`.
    for i in reserve_files(&txn, batch, &mut to_insert).await? {
        results[i] = Some(Err(StoreError::Refused {
            code: ErrorCode::Invalid,
            message: "an attachment was sent already".into(),
        }));
    }
    let rows: Vec<&Row> = to_insert.iter().map(|&i| &batch[i]).collect();
    let mut touched: BTreeSet<uuid::Uuid> = chat_of.values().copied().collect();
    touched.extend(rows.iter().map(|r| r.message.chat.0));
    // Messages and changes share a batch only on SQLite (one lane), whose
    // IMMEDIATE transaction is the one writer: the order in which its rows
    // are touched locks nothing. Elsewhere a change locks its message's row
    // before its conversation's, and new messages lock only conversations.
    debug_assert!(
        changes.batch.is_empty() || db.get_database_backend() == DatabaseBackend::Sqlite,
        "changes travel in a lane of their own on PostgreSQL and MySQL"
    );
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
            let files = &batch[i].message.attachments;
            if !files.is_empty() {
                store::claim(&txn, &row, files).await?;
            }
            results[i] = Some(Ok(Stored::New(Posted {
                message: row,
                quote: None,
                attachments: files.clone(),
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

/// Reserves the files of the messages at `to_insert` (`store::reserve`)
/// and drops from it those whose files are no longer there to send;
/// answers the dropped ones' places.
async fn reserve_files(
    txn: &DatabaseTransaction,
    batch: &[Row],
    to_insert: &mut Vec<usize>,
) -> Result<Vec<usize>, DbErr> {
    let mut refused = Vec::new();
    for &i in to_insert.iter() {
        let message = &batch[i].message;
        if !message.attachments.is_empty()
            && !store::reserve(txn, message.sender, &message.attachments).await?
        {
            refused.push(i);
        }
    }
    to_insert.retain(|i| !refused.contains(i));
    Ok(refused)
}

/// Inserts `pending` (each row with its `seq`) the fastest way the
/// database allows, and gives back the stored rows in the same order.
pub(super) async fn insert_rows(
    txn: &DatabaseTransaction,
    ids: MySqlIds,
    pending: &[(&Row, i64)],
) -> Result<Vec<message::Model>, DbErr> {
    Ok(match (txn.get_database_backend(), ids) {
        (DatabaseBackend::Postgres, _) => insert_unnest(txn, pending).await?,
        (DatabaseBackend::MySql, MySqlIds::Consecutive { increment }) => {
            let first = insert_values(txn, pending, None).await?;
            let first =
                i64::try_from(first).map_err(|_| DbErr::Custom("an id beyond i64".into()))?;
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
            // SQLite: the ids are numbered here and nothing comes back, where
            // `RETURNING` handed each row's id through the driver's channel
            // to this task one at a time (BENCHMARKS.md, "An eighth machine,
            // and the writer numbers SQLite's messages").
            let first = next_sqlite_message_id(txn).await?;
            let stored: Vec<message::Model> = pending
                .iter()
                .enumerate()
                .map(|(k, (row, seq))| model_of(row, first + k as i64, *seq))
                .collect();
            insert_values(txn, pending, Some(first)).await?;
            stored
        }
    })
}

/// The first id after every message SQLite has stored, removed ones
/// included (`AUTOINCREMENT` keeps the highest in `sqlite_sequence`), for
/// a transaction that has already written: SQLite lets one transaction
/// write at a time, so the ids from here up are this one's until it ends.
async fn next_sqlite_message_id(txn: &DatabaseTransaction) -> Result<i64, DbErr> {
    let statement = sea_orm::Statement::from_string(
        DatabaseBackend::Sqlite,
        "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0), \
         COALESCE((SELECT MAX(id) FROM messages), 0)) + 1 AS next",
    );
    txn.query_one_raw(statement)
        .await?
        .ok_or_else(|| DbErr::Custom("no next message id".into()))?
        .try_get_by_index(0)
}

pub(super) fn model_of(p: &Row, id: i64, seq: i64) -> message::Model {
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
pub(super) async fn store_one(db: &DatabaseConnection, p: &Row) -> Result<Stored, StoreError> {
    let db_error = |e: DbErr| StoreError::Database(Arc::new(e));
    let attempt = async {
        let txn = crate::db::begin_write_uncancelled(db).await?;
        let files = &p.message.attachments;
        if !files.is_empty() && !store::reserve(&txn, p.message.sender, files).await? {
            return Ok(None);
        }
        let seq = next_seqs(&txn, &[p]).await?[0];
        let id = message::Entity::insert(active_model(p, seq))
            .exec(&txn)
            .await?
            .last_insert_id;
        let stored = model_of(p, id, seq);
        store::claim(&txn, &stored, &p.message.attachments).await?;
        txn.commit().await?;
        Ok::<_, DbErr>(Some(stored))
    };
    match attempt.await {
        Ok(None) => Err(StoreError::Refused {
            code: ErrorCode::Invalid,
            message: "an attachment was sent already".into(),
        }),
        Ok(Some(stored)) => Ok(Stored::New(Posted {
            message: stored,
            quote: None,
            attachments: p.message.attachments.clone(),
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
