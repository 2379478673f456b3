//! A batch of plain messages (no files, no edits, deletions or reactions
//! beside them) in one round trip to the database, where the general path
//! (`commit::store_unique`) takes four or five, which is most of what a
//! batch of one or two messages costs (BENCHMARKS.md, "CPU per message
//! against the rate"). PostgreSQL: one statement that autocommits, resends
//! left out, the conversations locked and moved on, the rest inserted with
//! their `seq`. SQLite: the transaction's statements sent together, each
//! statement a trip to SQLite's thread and back no more.

use super::*;

/// Stores the messages at `candidates`, none with files, in one statement
/// (`insert_plain_postgres`); resends of a stored `client_id` are answered
/// with their originals. An error: the statement stored nothing, and the
/// caller retries one by one. Once it succeeded its rows are committed, so
/// a surprise after it is answered, never retried (a retry would store the
/// messages twice; a resend with its client_id finds them).
pub(super) async fn store_plain_postgres(
    db: &DatabaseConnection,
    batch: &[Row],
    candidates: &[usize],
) -> Result<Vec<Option<Result<Stored, StoreError>>>, DbErr> {
    let rows: Vec<&Row> = candidates.iter().map(|&i| &batch[i]).collect();
    let returned = insert_plain_postgres(db, &rows).await?;
    let mut results: Vec<Option<Result<Stored, StoreError>>> = vec![None; batch.len()];
    let unreadable = |results: &mut Vec<_>, error: String| unreadable(results, candidates, error);
    let stored = match returned_by_id(returned) {
        Ok(stored) => stored,
        Err(e) => {
            unreadable(&mut results, e.to_string());
            return Ok(results);
        }
    };
    // Inserted: those without a client_id, and those whose key came back;
    // the others were resends (a batch holds no key twice: `same_as`).
    let keys: HashSet<ClientKey> = stored.iter().filter_map(Inserted::client_key).collect();
    let (inserted, resent): (Vec<usize>, Vec<usize>) = candidates
        .iter()
        .partition(|&&i| client_key(&batch[i]).is_none_or(|k| keys.contains(&k)));
    if inserted.len() != stored.len() {
        let error = format!(
            "inserted {} messages but {} came back",
            inserted.len(),
            stored.len()
        );
        unreadable(&mut results, error);
        return Ok(results);
    }
    let messages = inserted
        .iter()
        .zip(&stored)
        .map(|(&i, returned)| returned.model(&batch[i]))
        .collect::<Result<Vec<_>, DbErr>>();
    let messages = match messages {
        Ok(messages) => messages,
        Err(e) => {
            unreadable(&mut results, e.to_string());
            return Ok(results);
        }
    };
    answer_new(&mut results, inserted.into_iter().zip(messages));
    if !resent.is_empty() {
        let keys: HashSet<ClientKey> = resent
            .iter()
            .filter_map(|&i| client_key(&batch[i]))
            .collect();
        let originals = existing_by_client_id(db, &keys).await.map_err(Arc::new);
        for i in resent {
            let original = match (&originals, client_key(&batch[i])) {
                (Ok(found), Some(key)) => found.get(&key).cloned(),
                _ => None,
            };
            results[i] = Some(match (original, &originals) {
                (Some(m), _) => Ok(Stored::Duplicate(m)),
                (None, Err(e)) => Err(StoreError::Database(e.clone())),
                (None, Ok(_)) => Err(StoreError::Internal("a resend's original is gone".into())),
            });
        }
    }
    Ok(results)
}

/// PostgreSQL: a batch of plain messages (no files, no changes beside them)
/// in one statement, which autocommits: the messages whose `client_id` is
/// stored already left out (resends: the caller finds their originals),
/// the conversations' rows locked in id order and moved on by the counts
/// of the rest, and those inserted with the numbers between, in the
/// batch's order. One round trip where
/// `BEGIN`, `next_seqs`, `insert_unnest` and `COMMIT` take four, which is
/// most of a small batch's cost (BENCHMARKS.md, "CPU per message against
/// the rate"). A conversation that does not exist gives its messages no
/// `seq` (the LEFT JOIN), which the column refuses, so the statement fails
/// whole and nothing of it is stored: an `Err` here means nothing was
/// committed. (That, with the lock, is the check PostgreSQL's `messages`
/// make instead of a foreign key to `chats`: migration m20261212_000001.)
/// The rows come back as returned (`returned_by_id` sorts them and reads
/// what `Inserted` holds); they are committed already.
async fn insert_plain_postgres<C: ConnectionTrait>(
    db: &C,
    rows: &[&Row],
) -> Result<Vec<sea_orm::QueryResult>, DbErr> {
    let statement = sea_orm::Statement::from_sql_and_values(
        DatabaseBackend::Postgres,
        "WITH batch AS (SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::text[], \
         $5::timestamptz[], $6::int8[]) WITH ORDINALITY AS b(chat, sender, content, client, \
         created, reply, ord)), \
         fresh AS (SELECT * FROM batch b WHERE b.client = '' OR NOT EXISTS (SELECT 1 FROM \
         messages m WHERE m.sender_id = b.sender AND m.chat_id = b.chat AND m.client_id = b.client)), \
         counts AS (SELECT chat AS id, count(*) AS n FROM fresh GROUP BY chat), \
         locked AS (SELECT id FROM chats WHERE id IN (SELECT id FROM counts) ORDER BY id FOR UPDATE), \
         bumped AS (UPDATE chats SET seq = chats.seq + counts.n \
         FROM locked JOIN counts ON counts.id = locked.id WHERE chats.id = locked.id \
         RETURNING chats.id, chats.seq - counts.n AS before) \
         INSERT INTO messages (chat_id, sender_id, content, client_id, seq, created_at, reply_to) \
         SELECT b.chat, b.sender, b.content, NULLIF(b.client, ''), \
         bumped.before + row_number() OVER (PARTITION BY b.chat ORDER BY b.ord), \
         b.created, NULLIF(b.reply, 0) \
         FROM fresh b LEFT JOIN bumped ON bumped.id = b.chat ORDER BY b.ord \
         RETURNING id, seq, chat_id, sender_id, client_id",
        message_arrays(rows.iter().copied()),
    );
    db.query_all_raw(statement).await
}

/// Answers each of a committed batch's messages (by its place in the batch)
/// as stored, with no quote yet (`commit_unique` adds it) and no files.
fn answer_new(
    results: &mut [Option<Result<Stored, StoreError>>],
    stored: impl Iterator<Item = (usize, message::Model)>,
) {
    for (i, message) in stored {
        results[i] = Some(Ok(Stored::New(Posted {
            message,
            quote: None,
            attachments: Vec::new(),
        })));
    }
}

/// A committed batch whose answer could not be read back: each of its
/// messages is answered with an internal error (never retried: it is
/// stored, and a retry would store it twice; a resend finds it).
fn unreadable(
    results: &mut [Option<Result<Stored, StoreError>>],
    candidates: &[usize],
    error: String,
) {
    tracing::error!(%error, size = candidates.len(), "a committed batch came back unreadable");
    for &i in candidates {
        results[i] = Some(Err(StoreError::Internal(error.clone())));
    }
}

/// SQLite: the messages at `candidates`, none with files, stored in one
/// trip to SQLite's thread (`plain_sqlite_text`), where the general path
/// takes five (`BEGIN`, the `seq`s, the next id, the insert, `COMMIT`),
/// each a hand-over to that thread and a wake-up back. `None`: the trip
/// stored nothing (a resend's `client_id` met its unique index, say, or a
/// conversation is gone), and the caller takes the general path, which
/// finds resends first and refuses what it must one message at a time.
pub(super) async fn store_plain_sqlite(
    db: &DatabaseConnection,
    batch: &[Row],
    candidates: &[usize],
) -> Option<Vec<Option<Result<Stored, StoreError>>>> {
    use sea_orm::sqlx::{self, Row as _};
    let rows: Vec<&Row> = candidates.iter().map(|&i| &batch[i]).collect();
    let places = places_in_conversations(&rows);
    let mut query = sqlx::query(sqlx::AssertSqlSafe(plain_sqlite_text(rows.len())));
    for (row, place) in rows.iter().zip(&places) {
        let message = &row.message;
        query = query
            .bind(message.chat.0)
            .bind(message.sender.0)
            .bind(message.content.clone())
            .bind(message.client_id.clone())
            .bind(*place)
            .bind(row.created_at)
            .bind(message.reply_to);
    }
    for row in &rows {
        query = query.bind(row.message.chat.0);
    }
    // The connection is held from `BEGIN` to its end here, so no other
    // task's statements can run inside this transaction.
    let mut conn = match db.get_sqlite_connection_pool().acquire().await {
        Ok(conn) => conn,
        Err(error) => {
            tracing::debug!(%error, "no writer's connection for the one-trip batch");
            return None;
        }
    };
    let returned = match query.fetch_all(&mut *conn).await {
        Ok(returned) => returned,
        Err(error) => {
            // Nothing was committed (`COMMIT` is the text's last statement),
            // and SQLite may have left the transaction open.
            tracing::debug!(%error, size = rows.len(), "the one-trip batch stored nothing");
            if sqlx::query("ROLLBACK").execute(&mut *conn).await.is_err() {
                // No transaction was open (`BEGIN` itself failed, or SQLite
                // rolled back on an I/O error): a fresh connection is the
                // safe one to go on with.
                conn.close_on_drop();
            }
            return None;
        }
    };
    drop(conn);
    let mut results: Vec<Option<Result<Stored, StoreError>>> = vec![None; batch.len()];
    // A row a conversation: its new top, and the last id inserted.
    let read = || -> Result<(i64, HashMap<uuid::Uuid, i64>), sqlx::Error> {
        let last = returned
            .first()
            .ok_or(sqlx::Error::RowNotFound)?
            .try_get(2)?;
        let tops = returned
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()?;
        Ok((last, tops))
    };
    let (last, tops) = match read() {
        Ok(read) => read,
        Err(e) => {
            unreadable(&mut results, candidates, e.to_string());
            return Some(results);
        }
    };
    let first = last - (rows.len() as i64 - 1);
    let counts = counts_by_conversation(&rows);
    let mut stored = Vec::with_capacity(rows.len());
    for (k, (row, place)) in rows.iter().zip(&places).enumerate() {
        let chat = row.message.chat.0;
        let Some(top) = tops.get(&chat) else {
            let error = format!("conversation {chat} came back without its new seq");
            unreadable(&mut results, candidates, error);
            return Some(results);
        };
        stored.push(model_of(row, first + k as i64, top - counts[&chat] + place));
    }
    answer_new(&mut results, candidates.iter().copied().zip(stored));
    Some(results)
}

/// How many of `rows` each conversation has.
fn counts_by_conversation(rows: &[&Row]) -> HashMap<uuid::Uuid, i64> {
    let mut counts = HashMap::new();
    for row in rows {
        *counts.entry(row.message.chat.0).or_default() += 1;
    }
    counts
}

/// Each row's place among the batch's rows of its conversation, from 1:
/// its `seq` is the conversation's `seq` before the batch plus this.
fn places_in_conversations(rows: &[&Row]) -> Vec<i64> {
    let mut seen: HashMap<uuid::Uuid, i64> = HashMap::new();
    rows.iter()
        .map(|row| {
            let place = seen.entry(row.message.chat.0).or_default();
            *place += 1;
            *place
        })
        .collect()
}

/// The text `store_plain_sqlite` sends for `n` messages, each bound as
/// seven values (conversation, sender, text, client id, place in its
/// conversation, time, reply), then the `n` conversations again. It
/// depends only on `n`, so the sizes in use stay in the driver's statement
/// cache. The parameters are `?`, not `?NNN`: the driver asks SQLite each
/// parameter's name, which for numbered ones is a walk along the list of
/// names, and for a batch of 512 that was two thirds of the server's CPU.
/// In one IMMEDIATE transaction:
/// - the messages inserted in the batch's order, each with the next id
///   (after every id ever used: `AUTOINCREMENT`'s `sqlite_sequence` keeps
///   removed messages' ids) and its conversation's `seq` plus its place. A
///   conversation that does not exist gives no `seq`, which the column
///   refuses, so the statement fails whole;
/// - each conversation's `seq` moved to its newest message's, and returned
///   with the last id inserted (the first is `n - 1` before it; an
///   `UPDATE` leaves `last_insert_rowid()` as the `INSERT` set it);
/// - `COMMIT`, last: if any statement fails, nothing is committed.
///
/// The driver hands each statement's end and each row to this task as an
/// item of its own, and each can wake this thread (BENCHMARKS.md, "A
/// fortieth machine"): four statements and a row a conversation, where a
/// `SELECT last_insert_rowid()` of its own was a fifth and a row more.
fn plain_sqlite_text(n: usize) -> String {
    use std::fmt::Write;
    let mut sql = String::with_capacity(600 + n * 40);
    sql.push_str(
        "BEGIN IMMEDIATE; \
         INSERT INTO messages (id, chat_id, sender_id, content, client_id, seq, created_at, \
         reply_to) SELECT next.id + b.column1, b.column2, b.column3, b.column4, b.column5, \
         chats.seq + b.column6, b.column7, b.column8 FROM (VALUES ",
    );
    // Writing to a String cannot fail.
    for k in 0..n {
        let _ = write!(
            sql,
            "{}({k}, ?, ?, ?, ?, ?, ?, ?)",
            if k == 0 { "" } else { ", " }
        );
    }
    sql.push_str(
        ") AS b LEFT JOIN chats ON chats.id = b.column2 \
         CROSS JOIN (SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0), \
         COALESCE((SELECT MAX(id) FROM messages), 0)) + 1 AS id) AS next ORDER BY b.column1; \
         UPDATE chats SET seq = (SELECT MAX(seq) FROM messages WHERE chat_id = chats.id) \
         WHERE id IN (?",
    );
    sql.push_str(&", ?".repeat(n.saturating_sub(1)));
    sql.push_str(") RETURNING id, seq, last_insert_rowid(); COMMIT");
    sql
}
