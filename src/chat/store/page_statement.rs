//! A page of history in one statement, on PostgreSQL: the conversation's
//! latest `seq`, the messages, what their replies quote, their reactions and
//! their files. One statement reads one snapshot, so the page needs no
//! REPEATABLE READ transaction, and it is one round trip instead of seven
//! (BEGIN, SET TRANSACTION, `seq`, messages, quotes, reactions, files,
//! COMMIT). What it answers is exactly what `history_items` builds from its
//! separate queries; the tests run both paths against the same rules.

use super::*;

/// One row of the page statement: a message with what it shows, or, when
/// the page is empty, only the conversation's `seq` (the message columns
/// null).
struct PageRow {
    chat_seq: i64,
    message: Option<message::Model>,
    quote: Option<Quote>,
    reactions: Vec<ReactionCount>,
    attachments: Vec<AttachmentInfo>,
}

/// The reactions aggregated per emoji, as the statement's JSON has them.
#[derive(serde::Deserialize)]
struct ReactionJson(String, u64, bool);

impl PageRow {
    fn read(row: &sea_orm::QueryResult) -> Result<Self, DbErr> {
        let json = |column: &str| -> Result<Option<String>, DbErr> { row.try_get("", column) };
        let parse = |column: &str, text: String| {
            DbErr::Type(format!(
                "history page: {column} is not the JSON expected: {text}"
            ))
        };
        let message = match row.try_get::<Option<i64>>("", "id")? {
            Some(_) => Some(message::Model::from_query_result(row, "")?),
            None => None,
        };
        let quote = match row.try_get::<Option<i64>>("", "quote_id")? {
            Some(_) => Some(Quote {
                sender: row.try_get("", "quote_sender")?,
                content: row.try_get("", "quote_content")?,
            }),
            None => None,
        };
        let reactions = match json("reaction_counts")? {
            Some(text) => serde_json::from_str::<Vec<ReactionJson>>(&text)
                .map_err(|_| parse("reaction_counts", text))?
                .into_iter()
                .map(|ReactionJson(emoji, count, mine)| ReactionCount { emoji, count, mine })
                .collect(),
            None => Vec::new(),
        };
        let attachments = match json("files")? {
            Some(text) => serde_json::from_str(&text).map_err(|_| parse("files", text))?,
            None => Vec::new(),
        };
        Ok(PageRow {
            chat_seq: row.try_get("", "chat_seq")?,
            message,
            quote,
            reactions,
            attachments,
        })
    }
}

/// The statement: `$1` the conversation, messages with `$2 < seq < $3`, at
/// most `$4` of them (newest first when `newest`, else oldest first), as
/// viewer `$5` sees them; returned oldest first. A conversation that does
/// not exist answers no row. Reactions are ordered as `reactions_of`
/// orders them (when each emoji was first set, then the emoji's bytes).
fn page_sql(newest: bool) -> String {
    let direction = if newest { "DESC" } else { "ASC" };
    format!(
        r#"WITH page AS (
    SELECT * FROM messages
    WHERE chat_id = $1 AND seq > $2 AND seq < $3
    ORDER BY seq {direction} LIMIT $4
)
SELECT c.seq AS chat_seq, p.*,
    q.id AS quote_id, q.sender_id AS quote_sender,
    CASE WHEN q.deleted THEN '' ELSE left(q.content, {QUOTE_CHARS}) END AS quote_content,
    (SELECT json_agg(json_build_array(r.emoji, r.n, r.mine) ORDER BY r.first, r.emoji COLLATE "C")::text
     FROM (SELECT emoji, count(*) AS n, bool_or(user_id = $5) AS mine, min(created_at) AS first
           FROM reactions WHERE message_id = p.id AND NOT p.deleted GROUP BY emoji) r
    ) AS reaction_counts,
    (SELECT json_agg(json_build_object('id', a.id, 'name', a.name, 'size', a.size,
                                       'content_type', a.content_type,
                                       'width', a.width, 'height', a.height)
                     ORDER BY a.position)::text
     FROM attachments a
     WHERE a.message_id = p.id AND a.state = '{ready}' AND NOT p.deleted
    ) AS files
FROM chats c
LEFT JOIN page p ON true
LEFT JOIN messages q ON q.id = p.reply_to
WHERE c.id = $1
ORDER BY p.seq"#,
        ready = entity::attachment::READY,
    )
}

/// A page of `chat`'s history with `after < seq < before` (`None`: no
/// bound), at most `limit`: the newest of them unless `after` is given, as
/// `history` pages. PostgreSQL only.
pub(super) async fn page_in_one_statement(
    db: &DatabaseConnection,
    chat: ChatId,
    viewer: UserId,
    after: Option<i64>,
    before: Option<i64>,
    limit: u64,
) -> Result<HistoryPage, DbErr> {
    let newest = after.is_none();
    let statement = sea_orm::Statement::from_sql_and_values(
        sea_orm::DatabaseBackend::Postgres,
        page_sql(newest),
        [
            chat.0.into(),
            after.unwrap_or(0).into(),
            before.unwrap_or(i64::MAX).into(),
            // One more than asked: whether there are more.
            (limit as i64 + 1).into(),
            viewer.0.into(),
        ],
    );
    let rows = db.query_all_raw(statement).await?;
    let mut seq = 0;
    let mut messages = Vec::with_capacity(rows.len());
    for row in &rows {
        let row = PageRow::read(row)?;
        seq = row.chat_seq;
        if let Some(m) = row.message {
            messages.push(history_item(
                m,
                viewer,
                row.quote,
                row.reactions,
                row.attachments,
            ));
        }
    }
    let has_more = messages.len() as u64 > limit;
    if has_more {
        // The one beyond the page: the oldest going back, the newest going on.
        if newest {
            messages.remove(0);
        } else {
            messages.pop();
        }
    }
    Ok(HistoryPage {
        pk: chat,
        messages,
        has_more,
        seq,
    })
}
