//! PostgreSQL's batch of plain messages (no files, no edits, deletions or
//! reactions beside them) as one statement that autocommits: resends left
//! out, the conversations locked and moved on, the rest inserted with their
//! `seq`. One round trip where the general path (`commit::store_unique`)
//! takes four or five, which is most of what a batch of one or two messages
//! costs (BENCHMARKS.md, "CPU per message against the rate").

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
    let unreadable = |results: &mut Vec<Option<Result<Stored, StoreError>>>, error: String| {
        tracing::error!(%error, size = candidates.len(), "a committed batch came back unreadable");
        for &i in candidates {
            results[i] = Some(Err(StoreError::Internal(error.clone())));
        }
    };
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
    for (i, message) in inserted.into_iter().zip(messages) {
        results[i] = Some(Ok(Stored::New(Posted {
            message,
            quote: None,
            attachments: Vec::new(),
        })));
    }
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
/// committed. The rows come back as returned (`returned_by_id` sorts
/// them and reads what `Inserted` holds); they are committed already.
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
