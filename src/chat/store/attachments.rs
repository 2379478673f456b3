//! Attachments in the database (B9): which files a message carries, which
//! uploads a sender may send, and the rows' part in sending and deleting.
//! The bytes themselves are the `attachments` module's.

use entity::attachment;
use sea_orm::sea_query::Expr;

use super::*;

/// Most files one message may carry.
pub const MAX_ATTACHMENTS_PER_MESSAGE: usize = 10;

/// A stored file as the wire shows it.
pub fn attachment_info(row: &attachment::Model) -> AttachmentInfo {
    AttachmentInfo {
        id: row.id,
        name: row.name.clone(),
        size: row.size,
        content_type: row.content_type.clone(),
        width: row.width,
        height: row.height,
    }
}

/// The files of each of `messages` that are still there, in the order
/// they were sent.
pub async fn attachments_for<C: ConnectionTrait>(
    db: &C,
    messages: &[i64],
) -> Result<HashMap<i64, Vec<AttachmentInfo>>, DbErr> {
    let mut found: HashMap<i64, Vec<AttachmentInfo>> = HashMap::new();
    for chunk in messages.chunks(IN_CHUNK) {
        let rows = attachment::Entity::find()
            .filter(attachment::Column::MessageId.is_in(chunk.iter().copied()))
            .filter(attachment::Column::State.eq(attachment::READY))
            .order_by_asc(attachment::Column::Position)
            .all(db)
            .await?;
        for row in rows {
            if let Some(message) = row.message_id {
                found
                    .entry(message)
                    .or_default()
                    .push(attachment_info(&row));
            }
        }
    }
    Ok(found)
}

/// The files `sender` names for a new message, in the order named: each
/// uploaded by them, stored whole, and not sent yet; or, for a resend
/// (`client_id` of a message of theirs that carries it), sent in that
/// message. `Ok(Err(why))` when one is not.
pub async fn sendable<C: ConnectionTrait>(
    db: &C,
    sender: UserId,
    ids: &[uuid::Uuid],
    client_id: Option<&str>,
) -> Result<Result<Vec<AttachmentInfo>, String>, DbErr> {
    let rows: HashMap<uuid::Uuid, attachment::Model> = attachment::Entity::find()
        .filter(attachment::Column::Id.is_in(ids.iter().copied()))
        .filter(attachment::Column::UploaderId.eq(sender.0))
        .filter(attachment::Column::State.eq(attachment::READY))
        .all(db)
        .await?
        .into_iter()
        .map(|row| (row.id, row))
        .collect();
    let sent_in: HashSet<i64> = rows.values().filter_map(|r| r.message_id).collect();
    let resent = match (client_id, sent_in.is_empty()) {
        (Some(client_id), false) => message::Entity::find()
            .select_only()
            .column(message::Column::Id)
            .filter(message::Column::Id.is_in(sent_in))
            .filter(message::Column::SenderId.eq(sender.0))
            .filter(message::Column::ClientId.eq(client_id))
            .into_tuple::<i64>()
            .all(db)
            .await?
            .into_iter()
            .collect(),
        _ => HashSet::new(),
    };
    let mut files = Vec::with_capacity(ids.len());
    for id in ids {
        match rows.get(id) {
            None => return Ok(Err(format!("attachment {id} is not an upload of yours"))),
            Some(row) if row.message_id.is_some_and(|m| !resent.contains(&m)) => {
                return Ok(Err(format!("attachment {id} was sent already")))
            }
            Some(row) => files.push(attachment_info(row)),
        }
    }
    Ok(Ok(files))
}

/// Reserves `files` for a message of `sender`'s about to be stored, in
/// its transaction: each must still be the sender's, ready and not sent.
/// `false` (and nothing reserved) if one is not: sent meanwhile by another
/// message, or removed. A reservation (`SENDING`) never outlives its
/// transaction: `claim` ends it, and a rollback undoes it.
pub async fn reserve<C: ConnectionTrait>(
    txn: &C,
    sender: UserId,
    files: &[AttachmentInfo],
) -> Result<bool, DbErr> {
    let mut reserved = Vec::with_capacity(files.len());
    for file in files {
        let done = attachment::Entity::update_many()
            .col_expr(attachment::Column::State, Expr::value(attachment::SENDING))
            .filter(attachment::Column::Id.eq(file.id))
            .filter(attachment::Column::UploaderId.eq(sender.0))
            .filter(attachment::Column::State.eq(attachment::READY))
            .filter(attachment::Column::MessageId.is_null())
            .exec(txn)
            .await?;
        if done.rows_affected != 1 {
            // Only what this call reserved goes back: an earlier message
            // of the same transaction keeps its own.
            attachment::Entity::update_many()
                .col_expr(attachment::Column::State, Expr::value(attachment::READY))
                .filter(attachment::Column::Id.is_in(reserved))
                .exec(txn)
                .await?;
            return Ok(false);
        }
        reserved.push(file.id);
    }
    Ok(true)
}

/// Ties the reserved `files` to the new message `message`, in order, in
/// its transaction.
pub async fn claim<C: ConnectionTrait>(
    txn: &C,
    message: &message::Model,
    files: &[AttachmentInfo],
) -> Result<(), DbErr> {
    for (position, file) in files.iter().enumerate() {
        let done = attachment::Entity::update_many()
            .col_expr(attachment::Column::MessageId, Expr::value(message.id))
            .col_expr(attachment::Column::ChatId, Expr::value(message.chat_id))
            .col_expr(attachment::Column::Position, Expr::value(position as i32))
            .col_expr(attachment::Column::State, Expr::value(attachment::READY))
            .filter(attachment::Column::Id.eq(file.id))
            .filter(attachment::Column::State.eq(attachment::SENDING))
            .exec(txn)
            .await?;
        if done.rows_affected != 1 {
            return Err(DbErr::Custom(format!(
                "attachment {} was not reserved for its message",
                file.id
            )));
        }
    }
    Ok(())
}

/// Marks the files of a deleted message removed, in the deletion's
/// transaction: nobody can read them from then on, and the sweep deletes
/// their bytes.
pub async fn remove_of_message<C: ConnectionTrait>(txn: &C, message: i64) -> Result<(), DbErr> {
    attachment::Entity::update_many()
        .col_expr(attachment::Column::State, Expr::value(attachment::REMOVED))
        .filter(attachment::Column::MessageId.eq(message))
        .exec(txn)
        .await?;
    Ok(())
}
