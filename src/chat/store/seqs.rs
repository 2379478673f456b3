//! Each conversation's `seq` (B7): the counter on its `chats` row that
//! numbers its events. It moves forward only inside the transaction that
//! stores the events it numbers, with the row locked until that commits:
//! so the numbers have no gaps (a rollback returns them) and follow commit
//! order.

use std::collections::{BTreeMap, HashMap};

use entity::chat;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

/// Moves each conversation of `counts` forward by its count and answers
/// the new top of each (the last number taken). The rows are locked in id
/// order on PostgreSQL and MySQL, so two transactions never lock them in
/// opposite orders; SQLite has one writer at a time.
async fn advance_seqs<C: ConnectionTrait>(
    txn: &C,
    counts: &BTreeMap<uuid::Uuid, i64>,
) -> Result<HashMap<uuid::Uuid, i64>, DbErr> {
    match txn.get_database_backend() {
        DatabaseBackend::Postgres => bump_postgres(txn, counts).await,
        DatabaseBackend::Sqlite => bump_sqlite(txn, counts).await,
        _ => read_then_move(txn, counts).await,
    }
}

/// The next `seq` of each conversation `chats` names, in that order: a
/// conversation named three times takes its next three numbers.
pub async fn take_seqs<C: ConnectionTrait>(
    txn: &C,
    chats: &[uuid::Uuid],
) -> Result<Vec<i64>, DbErr> {
    if chats.is_empty() {
        // Nothing to number (and SQLite's statement would have no ids).
        return Ok(Vec::new());
    }
    let mut counts: BTreeMap<uuid::Uuid, i64> = BTreeMap::new();
    for chat in chats {
        *counts.entry(*chat).or_default() += 1;
    }
    let tops = advance_seqs(txn, &counts).await?;
    if tops.len() != counts.len() {
        return Err(DbErr::Custom(
            "a numbered event of a conversation that does not exist".into(),
        ));
    }
    // Each conversation's events take its numbers up to the new top, in order.
    let mut next: HashMap<uuid::Uuid, i64> = tops
        .into_iter()
        .map(|(chat, top)| (chat, top - counts[&chat] + 1))
        .collect();
    Ok(chats
        .iter()
        .map(|chat| {
            let seq = next.entry(*chat).or_default();
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

/// SQLite: one `UPDATE … RETURNING` whose text is written here, where
/// sea-query built a `SELECT` and an `UPDATE … CASE`: the writer's side of
/// a batch's store took 70,000 instructions and now 57,000–62,000
/// (BENCHMARKS.md, "A tenth machine"). SQLite has no row locks to order,
/// and the writer's transactions are IMMEDIATE, each the one writer from
/// its start. The text depends only on how many conversations the batch
/// numbers, so the few texts in use stay in the driver's statement cache.
async fn bump_sqlite<C: ConnectionTrait>(
    txn: &C,
    counts: &BTreeMap<uuid::Uuid, i64>,
) -> Result<HashMap<uuid::Uuid, i64>, DbErr> {
    use sea_orm::sea_query::Value;
    // Plain `?`s, each id bound twice: the driver asks SQLite every
    // parameter's name, and a numbered one (`?NNN`) is found by a walk
    // along the list of names, quadratic in a large batch (writer/plain.rs).
    let mut sql = String::from("UPDATE chats SET seq = seq + CASE id");
    let mut values = Vec::with_capacity(counts.len() * 3);
    for (chat, n) in counts {
        sql.push_str(" WHEN ? THEN ?");
        values.push(Value::Uuid(Some(*chat)));
        values.push(Value::BigInt(Some(*n)));
    }
    sql.push_str(" END WHERE id IN (?");
    sql.push_str(&", ?".repeat(counts.len().saturating_sub(1)));
    values.extend(counts.keys().map(|chat| Value::Uuid(Some(*chat))));
    sql.push_str(") RETURNING id, seq");
    let statement = sea_orm::Statement::from_sql_and_values(DatabaseBackend::Sqlite, sql, values);
    txn.query_all_raw(statement)
        .await?
        .iter()
        .map(|row| Ok((row.try_get("", "id")?, row.try_get("", "seq")?)))
        .collect()
}

/// MySQL: the rows read and locked in id order (`SELECT … FOR UPDATE` on
/// the primary key), then moved to their new tops. (MariaDB's `UPDATE` has
/// no `RETURNING`.)
async fn read_then_move<C: ConnectionTrait>(
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
    set_seqs(txn, &moved).await?;
    Ok(tops)
}

/// Moves each conversation's `seq` to its new value, in one statement.
async fn set_seqs<C: ConnectionTrait>(txn: &C, moved: &[(uuid::Uuid, i64)]) -> Result<(), DbErr> {
    let Some(((first, seq), rest)) = moved.split_first() else {
        return Ok(());
    };
    let mut to = Expr::case(chat::Column::Id.eq(*first), *seq);
    for (chat, seq) in rest {
        to = to.case(chat::Column::Id.eq(*chat), *seq);
    }
    chat::Entity::update_many()
        .col_expr(
            chat::Column::Seq,
            to.finally(Expr::col(chat::Column::Seq)).into(),
        )
        .filter(chat::Column::Id.is_in(moved.iter().map(|(chat, _)| *chat)))
        .exec(txn)
        .await?;
    Ok(())
}
