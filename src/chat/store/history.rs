//! History: pages of messages with their reactions and quotes, the events
//! after a `seq` (`sync`), and read marks.

use super::*;

/// A page of history as `viewer` sees it: each message with what it shows
/// of the one it answers and its reactions (B8).
pub async fn history_items<C: ConnectionTrait>(
    db: &C,
    messages: Vec<message::Model>,
    viewer: UserId,
) -> Result<Vec<HistoryItem>, DbErr> {
    let quotes = quotes_for(db, &messages).await?;
    let ids: Vec<i64> = messages
        .iter()
        .filter(|m| !m.deleted)
        .map(|m| m.id)
        .collect();
    let mut reactions = reactions_of(db, &ids, viewer).await?;
    let mut files = attachments_for(db, &ids).await?;
    Ok(messages
        .into_iter()
        .map(|m| {
            let quote = m.reply_to.and_then(|id| quotes.get(&id).cloned());
            let reactions = reactions.remove(&m.id).unwrap_or_default();
            let files = files.remove(&m.id).unwrap_or_default();
            history_item(m, viewer, quote, reactions, files)
        })
        .collect())
}

/// A stored message as `viewer` sees it in history.
pub fn history_item(
    m: message::Model,
    viewer: UserId,
    quote: Option<Quote>,
    reactions: Vec<ReactionCount>,
    attachments: Vec<AttachmentInfo>,
) -> HistoryItem {
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
        reply_to: m.reply_to,
        quote,
        edited_at: m.edited_at.as_ref().map(format_time),
        deleted: m.deleted,
        reactions,
        attachments,
    }
}

#[derive(Debug, FromQueryResult)]
pub(super) struct ReactionRow {
    message_id: i64,
    emoji: String,
    n: i64,
    mine: i64,
    first: chrono::DateTime<chrono::Utc>,
}

/// The reactions on `messages`, per message: each emoji with how many set
/// it and whether `viewer` did, in the order the emoji were first set.
/// One grouped query for the page.
pub async fn reactions_of<C: ConnectionTrait>(
    db: &C,
    messages: &[i64],
    viewer: UserId,
) -> Result<HashMap<i64, Vec<ReactionCount>>, DbErr> {
    let mut by_message: HashMap<i64, Vec<(chrono::DateTime<chrono::Utc>, ReactionCount)>> =
        HashMap::new();
    for chunk in messages.chunks(IN_CHUNK) {
        let mine = Expr::case(reaction::Column::UserId.eq(viewer.0), 1i64).finally(0i64);
        let rows = reaction::Entity::find()
            .select_only()
            .column(reaction::Column::MessageId)
            .column(reaction::Column::Emoji)
            .column_as(reaction::Column::UserId.count(), "n")
            .expr_as(Func::max(mine), "mine")
            .expr_as(Func::min(Expr::col(reaction::Column::CreatedAt)), "first")
            .filter(reaction::Column::MessageId.is_in(chunk.to_vec()))
            .group_by(reaction::Column::MessageId)
            .group_by(reaction::Column::Emoji)
            .into_model::<ReactionRow>()
            .all(db)
            .await?;
        for r in rows {
            by_message.entry(r.message_id).or_default().push((
                r.first,
                ReactionCount {
                    emoji: r.emoji,
                    count: r.n.max(0) as u64,
                    mine: r.mine > 0,
                },
            ));
        }
    }
    Ok(by_message
        .into_iter()
        .map(|(id, mut counts)| {
            counts.sort_by(|a, b| (a.0, &a.1.emoji).cmp(&(b.0, &b.1.emoji)));
            (id, counts.into_iter().map(|(_, c)| c).collect())
        })
        .collect())
}

/// A page of history as `viewer` sees it (`history`, `history_items`),
/// with the conversation's latest `seq` read in the same snapshot: a client
/// applies the live changes after that `seq` to the page, and none before
/// (a reaction counted twice would stay wrong). On PostgreSQL the page is
/// one statement, which reads one snapshot (`page_statement.rs`); on
/// SQLite and MySQL, a read transaction, which is one snapshot there.
pub async fn history_page(
    db: &DatabaseConnection,
    chat: ChatId,
    viewer: UserId,
    before: Option<i64>,
    after: Option<i64>,
    limit: u64,
) -> Result<HistoryPage, DbErr> {
    if db.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        // A message's `seq` never changes, so where the page starts may be
        // read before the page's own snapshot.
        let limit = limit.clamp(1, MAX_HISTORY_PAGE);
        let before = match before {
            Some(id) => Some(seq_next_to(db, chat, id, false).await?),
            None => None,
        };
        let after = match after {
            Some(id) => Some(seq_next_to(db, chat, id, true).await?),
            None => None,
        };
        return page_statement::page_in_one_statement(db, chat, viewer, after, before, limit).await;
    }
    let txn = crate::db::begin(db).await?;
    let seq = latest_seq(&txn, chat).await?;
    let (rows, has_more) = history(&txn, chat, before, after, limit).await?;
    let messages = history_items(&txn, rows, viewer).await?;
    txn.commit().await?;
    Ok(HistoryPage {
        pk: chat,
        messages,
        has_more,
        seq,
    })
}

/// One page of a conversation's history, oldest first within the page, and
/// whether there is more in the direction of travel. With `after`, pages go
/// forward from that message (catching up); otherwise backward from
/// `before` (or from the newest). Pages follow the conversation's order
/// (`seq`, B7), not ids: ids are drawn when a row is inserted, so on several
/// instances a smaller id can be committed after a larger one, and a page
/// "after id N" by id would skip it for good.
pub async fn history<C: ConnectionTrait>(
    db: &C,
    chat: ChatId,
    before: Option<i64>,
    after: Option<i64>,
    limit: u64,
) -> Result<(Vec<message::Model>, bool), DbErr> {
    let limit = limit.clamp(1, MAX_HISTORY_PAGE);
    let before = match before {
        Some(id) => Some(seq_next_to(db, chat, id, false).await?),
        None => None,
    };
    match after {
        Some(id) => {
            let after = seq_next_to(db, chat, id, true).await?;
            messages_by_seq(db, chat, after, before, limit).await
        }
        None => {
            let mut query = message::Entity::find()
                .filter(message::Column::ChatId.eq(chat.0))
                .order_by_desc(message::Column::Seq);
            if let Some(before) = before {
                query = query.filter(message::Column::Seq.lt(before));
            }
            let mut rows = query.limit(limit + 1).all(db).await?;
            let has_more = rows.len() as u64 > limit;
            rows.truncate(limit as usize);
            rows.reverse();
            Ok((rows, has_more))
        }
    }
}

/// The messages of `chat` with `after < seq < before`, oldest first (at
/// most `limit`), and whether there are more.
pub async fn messages_by_seq<C: ConnectionTrait>(
    db: &C,
    chat: ChatId,
    after: i64,
    before: Option<i64>,
    limit: u64,
) -> Result<(Vec<message::Model>, bool), DbErr> {
    let mut query = message::Entity::find()
        .filter(message::Column::ChatId.eq(chat.0))
        .filter(message::Column::Seq.gt(after))
        .order_by_asc(message::Column::Seq);
    if let Some(before) = before {
        query = query.filter(message::Column::Seq.lt(before));
    }
    let mut rows = query.limit(limit + 1).all(db).await?;
    let has_more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    Ok((rows, has_more))
}

/// The changes (B8) of `chat` with `after < seq < before`, oldest first (at
/// most `limit`), and whether there are more.
pub async fn changes_by_seq(
    db: &DatabaseConnection,
    chat: ChatId,
    after: i64,
    before: Option<i64>,
    limit: u64,
) -> Result<(Vec<message_event::Model>, bool), DbErr> {
    let mut query = message_event::Entity::find()
        .filter(message_event::Column::ChatId.eq(chat.0))
        .filter(message_event::Column::Seq.gt(after))
        .order_by_asc(message_event::Column::Seq);
    if let Some(before) = before {
        query = query.filter(message_event::Column::Seq.lt(before));
    }
    let mut rows = query.limit(limit + 1).all(db).await?;
    let has_more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    Ok((rows, has_more))
}

/// The conversation of message `id`, if there is such a message.
pub async fn chat_of_message(db: &DatabaseConnection, id: i64) -> Result<Option<ChatId>, DbErr> {
    Ok(message::Entity::find_by_id(id)
        .select_only()
        .column(message::Column::ChatId)
        .into_tuple::<uuid::Uuid>()
        .one(db)
        .await?
        .map(ChatId))
}

/// The `seq` of the message `id` of `chat`, if it is one of its messages.
pub(super) async fn seq_of<C: ConnectionTrait>(
    db: &C,
    chat: ChatId,
    id: i64,
) -> Result<Option<i64>, DbErr> {
    message::Entity::find_by_id(id)
        .filter(message::Column::ChatId.eq(chat.0))
        .select_only()
        .column(message::Column::Seq)
        .into_tuple::<i64>()
        .one(db)
        .await
}

/// Where a page next to message `id` reads from, in `seq`: forward
/// (`after`), the `seq` after which to read; backward (`before`), the one
/// below which. For one of the conversation's messages that is its own
/// `seq`. Any other id (0, or a made-up one) reads from just before the
/// first message with a larger id (forward), or from just after the last
/// with a smaller one (backward), so no message beyond it is ever skipped.
pub(super) async fn seq_next_to<C: ConnectionTrait>(
    db: &C,
    chat: ChatId,
    id: i64,
    forward: bool,
) -> Result<i64, DbErr> {
    if let Some(seq) = seq_of(db, chat, id).await? {
        return Ok(seq);
    }
    let around = around(db, chat, id).await?;
    if forward {
        match around.after {
            Some(seq) => Ok(seq - 1),
            None => latest_seq(db, chat).await,
        }
    } else {
        Ok(around.up_to.map_or(0, |seq| seq + 1))
    }
}

/// The `seq` of a conversation's latest event (0 when it has none, or does
/// not exist).
pub async fn latest_seq<C: ConnectionTrait>(db: &C, chat: ChatId) -> Result<i64, DbErr> {
    Ok(chat::Entity::find_by_id(chat.0)
        .select_only()
        .column(chat::Column::Seq)
        .into_tuple::<i64>()
        .one(db)
        .await?
        .unwrap_or(0))
}

/// Moves `user`'s read mark in `chat` forward (never backward) to
/// `up_to`, or to the conversation's newest message if `up_to` is past it:
/// what comes later arrives unread, and nobody is told it was read before
/// it was sent. Returns where it moved to, or `None` (it was there or
/// further, the conversation has no message, or `user` is not a member).
pub async fn mark_read<C: ConnectionTrait>(
    db: &C,
    chat: ChatId,
    user: UserId,
    up_to: i64,
) -> Result<Option<i64>, DbErr> {
    let newest: Option<i64> = message::Entity::find()
        .select_only()
        .column(message::Column::Id)
        .filter(message::Column::ChatId.eq(chat.0))
        .order_by_desc(message::Column::Seq)
        .limit(1)
        .into_tuple()
        .one(db)
        .await?;
    let Some(up_to) = newest.map(|newest| newest.min(up_to)) else {
        return Ok(None);
    };
    let moved = chat_member::Entity::update_many()
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
    Ok((moved.rows_affected > 0).then_some(up_to))
}
