//! The rows themselves: each conversation's next `seq` numbers, and the
//! multi-row insert of a batch (`UNNEST` on PostgreSQL, `VALUES` lists
//! elsewhere).

use super::*;

/// Takes the next `seq` of each row's conversation (B7), in row order, by
/// moving `chats.seq` forward inside the transaction that stores the rows:
/// so the numbers have no gaps (a rollback returns them) and follow commit
/// order. On PostgreSQL and MySQL the conversations' rows are locked first,
/// in id order: another instance's batch for the same conversation waits for
/// this commit, and two batches never lock in opposite orders. SQLite has one
/// writer at a time, and the UPDATE comes first so that this transaction is
/// that writer before it reads.
pub(super) async fn next_seqs<C: ConnectionTrait>(
    txn: &C,
    rows: &[&Row],
) -> Result<Vec<i64>, DbErr> {
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
pub(super) async fn bump_postgres<C: ConnectionTrait>(
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
pub(super) async fn bump_mysql<C: ConnectionTrait>(
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
pub(super) async fn bump_sqlite<C: ConnectionTrait>(
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

/// PostgreSQL: the whole batch in one statement with seven array parameters.
/// Its text never changes, so it is prepared once; a multi-row VALUES list
/// has six parameters per row and a new text for every batch size, and
/// re-preparing it cost four fifths of each batch's time.
pub(super) async fn insert_unnest<C: ConnectionTrait>(
    txn: &C,
    batch: &[(&Row, i64)],
) -> Result<Vec<message::Model>, DbErr> {
    use sea_orm::sea_query::{ArrayType, Value};
    let mut values = message_arrays(batch.iter().map(|(p, _)| *p));
    let seqs = batch
        .iter()
        .map(|(_, seq)| Value::BigInt(Some(*seq)))
        .collect();
    values.push(Value::Array(ArrayType::BigInt, Some(Box::new(seqs))));
    let statement = sea_orm::Statement::from_sql_and_values(
        DatabaseBackend::Postgres,
        "INSERT INTO messages (chat_id, sender_id, content, client_id, seq, created_at, reply_to) \
         SELECT chat, sender, content, NULLIF(client, ''), seq, created, NULLIF(reply, 0) \
         FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::timestamptz[], \
         $6::int8[], $7::int8[]) AS batch(chat, sender, content, client, created, reply, seq) \
         RETURNING id, chat_id, sender_id, content, client_id, created_at, seq, reply_to, \
         edited_at, deleted, original_content",
        values,
    );
    returned_in_order(txn.query_all_raw(statement).await?, batch.len())
}

/// The six arrays both PostgreSQL inserts take, one per column, each in
/// the batch's order: conversation, sender, text, client id, time, reply.
pub(super) fn message_arrays<'a>(
    rows: impl Iterator<Item = &'a Row> + Clone,
) -> Vec<sea_orm::Value> {
    use sea_orm::sea_query::{ArrayType, Value};
    let column = |ty: ArrayType, value: &dyn Fn(&Row) -> Value| {
        Value::Array(ty, Some(Box::new(rows.clone().map(value).collect())))
    };
    vec![
        column(ArrayType::Uuid, &|p| Value::Uuid(Some(p.message.chat.0))),
        column(ArrayType::BigInt, &|p| {
            Value::BigInt(Some(p.message.sender.0))
        }),
        column(ArrayType::String, &|p| {
            Value::String(Some(p.message.content.clone()))
        }),
        // Arrays cannot hold NULLs here: no client_id travels as '' (never a
        // real one: empty ids are dropped at the edge) and NULLIF restores it.
        column(ArrayType::String, &|p| {
            Value::String(Some(p.message.client_id.clone().unwrap_or_default()))
        }),
        column(ArrayType::ChronoDateTimeUtc, &|p| {
            Value::ChronoDateTimeUtc(Some(p.created_at))
        }),
        // No reply travels as 0 (never a message id) and NULLIF restores it.
        column(ArrayType::BigInt, &|p| {
            Value::BigInt(Some(p.message.reply_to.unwrap_or(0)))
        }),
    ]
}

/// The rows an insert returned, in the batch's order (`returned_by_id`),
/// if there are as many as it had.
fn returned_in_order(
    returned: Vec<sea_orm::QueryResult>,
    expected: usize,
) -> Result<Vec<message::Model>, DbErr> {
    let rows = returned_by_id(returned)?;
    if rows.len() != expected {
        return Err(DbErr::Custom(format!(
            "inserted {expected} messages but {} came back",
            rows.len()
        )));
    }
    Ok(rows)
}

/// The rows an insert returned, sorted by id: one statement draws ids in
/// input order, so that is the order its rows were given in.
pub(super) fn returned_by_id(
    returned: Vec<sea_orm::QueryResult>,
) -> Result<Vec<message::Model>, DbErr> {
    let mut rows = returned
        .iter()
        .map(|row| message::Model::from_query_result(row, ""))
        .collect::<Result<Vec<_>, _>>()?;
    rows.sort_by_key(|m| m.id);
    Ok(rows)
}

/// MySQL: the whole batch in one multi-row INSERT; the id of its first row
/// (`LAST_INSERT_ID()`). Only used where the ids are known to be consecutive.
pub(super) async fn insert_values<C: ConnectionTrait>(
    txn: &C,
    batch: &[(&Row, i64)],
) -> Result<i64, DbErr> {
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
