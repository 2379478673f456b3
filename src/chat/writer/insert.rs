//! The rows themselves: each conversation's next `seq` numbers, and the
//! multi-row insert of a batch (`UNNEST` on PostgreSQL, `VALUES` lists
//! elsewhere).

use super::*;

/// Takes the next `seq` of each row's conversation (B7), in row order,
/// inside the transaction that stores the rows (`store::take_seqs`:
/// another instance's batch for the same conversation waits for this
/// commit).
pub(super) async fn next_seqs<C: ConnectionTrait>(
    txn: &C,
    rows: &[&Row],
) -> Result<Vec<i64>, DbErr> {
    let chats: Vec<uuid::Uuid> = rows.iter().map(|row| row.message.chat.0).collect();
    store::take_seqs(txn, &chats).await
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
         RETURNING id, seq, chat_id, sender_id, client_id",
        values,
    );
    let returned = returned_by_id(txn.query_all_raw(statement).await?)?;
    if returned.len() != batch.len() {
        return Err(DbErr::Custom(format!(
            "inserted {} messages but {} came back",
            batch.len(),
            returned.len()
        )));
    }
    batch
        .iter()
        .zip(returned)
        .map(|((row, _), inserted)| inserted.model(row))
        .collect()
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

/// What PostgreSQL's inserts return of each row (`RETURNING id, seq,
/// chat_id, sender_id, client_id`, in that order): what the database chose
/// (the id; the `seq` when the statement numbers the rows itself) and what
/// tells the rows apart. The rest is what the writer sent, so the stored
/// message is built from its `Row` (`model`) instead of decoding the text
/// and every other column again, by name (4.7-8.3 % of the server's CPU at
/// full speed: BENCHMARKS.md, "What an insert returns").
pub(super) struct Inserted {
    id: i64,
    seq: i64,
    chat: uuid::Uuid,
    sender: Option<i64>,
    client_id: Option<String>,
}

impl Inserted {
    /// The key a resend of this message is known by, if it has one.
    pub(super) fn client_key(&self) -> Option<ClientKey> {
        Some((self.sender?, self.chat, self.client_id.clone()?))
    }

    /// The stored message: `row` with the id and `seq` it was given. An
    /// error if the database returned a row of another conversation or
    /// sender (the rows and the batch were paired wrongly: nothing must be
    /// answered).
    pub(super) fn model(&self, row: &Row) -> Result<message::Model, DbErr> {
        if self.chat != row.message.chat.0 || self.sender != Some(row.message.sender.0) {
            return Err(DbErr::Custom(format!(
                "message {} came back for another conversation or sender than sent",
                self.id
            )));
        }
        Ok(model_of(row, self.id, self.seq))
    }
}

/// The rows an insert returned (`Inserted`), sorted by id: one statement
/// draws ids in input order, so that is the order its rows were given in.
pub(super) fn returned_by_id(returned: Vec<sea_orm::QueryResult>) -> Result<Vec<Inserted>, DbErr> {
    let mut rows = returned
        .iter()
        .map(|row| {
            Ok(Inserted {
                id: row.try_get_by_index(0)?,
                seq: row.try_get_by_index(1)?,
                chat: row.try_get_by_index(2)?,
                sender: row.try_get_by_index(3)?,
                client_id: row.try_get_by_index(4)?,
            })
        })
        .collect::<Result<Vec<_>, DbErr>>()?;
    rows.sort_by_key(|m| m.id);
    Ok(rows)
}

/// SQLite and MySQL: the whole batch in one multi-row `INSERT … VALUES`,
/// its text written here and its values bound as they are. Built through
/// sea-query (an `ActiveModel` per row, an expression per value, then the
/// text) it was 8 % of the server's CPU at full speed on SQLite
/// (BENCHMARKS.md, "The batch insert written by hand"). SQLite's rows carry
/// the ids the writer numbered (`first_id` up); MySQL draws them, and the
/// id of the first row is what this returns there (`LAST_INSERT_ID()`).
pub(super) async fn insert_values<C: ConnectionTrait>(
    txn: &C,
    batch: &[(&Row, i64)],
    first_id: Option<i64>,
) -> Result<u64, DbErr> {
    use sea_orm::sea_query::Value;
    let (columns, placeholders) = match first_id {
        Some(_) => ("id, ", "(?, ?, ?, ?, ?, ?, ?, ?)"),
        None => ("", "(?, ?, ?, ?, ?, ?, ?)"),
    };
    let mut sql = format!(
        "INSERT INTO messages ({columns}chat_id, sender_id, content, client_id, seq, \
         created_at, reply_to) VALUES "
    );
    sql.reserve(batch.len() * (placeholders.len() + 2));
    let mut values = Vec::with_capacity(batch.len() * 8);
    for (k, (row, seq)) in batch.iter().enumerate() {
        if k > 0 {
            sql.push_str(", ");
        }
        sql.push_str(placeholders);
        if let Some(first) = first_id {
            values.push(Value::BigInt(Some(first + k as i64)));
        }
        let message = &row.message;
        values.extend([
            Value::Uuid(Some(message.chat.0)),
            Value::BigInt(Some(message.sender.0)),
            Value::String(Some(message.content.clone())),
            Value::String(message.client_id.clone()),
            Value::BigInt(Some(*seq)),
            Value::ChronoDateTimeUtc(Some(row.created_at)),
            Value::BigInt(message.reply_to),
        ]);
    }
    let statement =
        sea_orm::Statement::from_sql_and_values(txn.get_database_backend(), sql, values);
    let done = txn.execute_raw(statement).await?;
    if done.rows_affected() != batch.len() as u64 {
        return Err(DbErr::Custom(format!(
            "inserted {} messages but the database reports {}",
            batch.len(),
            done.rows_affected()
        )));
    }
    Ok(done.last_insert_id())
}
