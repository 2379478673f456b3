//! Consent to groups (PROTOCOL.md C9): nobody is put in a group by someone
//! they have never written to. Such a person is invited instead, and joins
//! only by accepting; a declined invitation is kept, so the same group
//! cannot invite them again. Someone who has written to the adder in their
//! direct conversation joins at once, as before.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use entity::{chat, chat_member, invitation, message};
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, JoinType, QueryFilter, QueryOrder,
    QuerySelect, RelationTrait, Set,
};

use super::protocol::{format_time, ChatId, Invitation, UserId};

/// Among `candidates`, those who have written to `adder` in their direct
/// conversation: they join at once; anyone else is invited. One statement
/// however many candidates: per candidate with a direct conversation with
/// the adder, one seek in messages' `(sender_id, chat_id, …)` index,
/// however long that conversation is.
pub async fn consenting<C: ConnectionTrait>(
    db: &C,
    adder: UserId,
    candidates: &[i64],
) -> Result<BTreeSet<i64>, DbErr> {
    let keys: Vec<String> = candidates
        .iter()
        .map(|c| chat::direct_key(adder.0, *c))
        .collect();
    if keys.is_empty() {
        return Ok(BTreeSet::new());
    }
    // In scope here only: its `max` would shadow `Ord::max` below.
    use sea_orm::sea_query::ExprTrait;
    let wrote = Query::select()
        .expr(Expr::val(1))
        .from(message::Entity)
        .and_where(
            Expr::col((message::Entity, message::Column::SenderId))
                .equals((chat_member::Entity, chat_member::Column::UserId)),
        )
        .and_where(
            Expr::col((message::Entity, message::Column::ChatId))
                .equals((chat_member::Entity, chat_member::Column::ChatId)),
        )
        .to_owned();
    let writers: Vec<i64> = chat_member::Entity::find()
        .select_only()
        .column(chat_member::Column::UserId)
        .join(JoinType::InnerJoin, chat_member::Relation::Chat.def())
        .filter(chat::Column::DirectKey.is_in(keys))
        .filter(chat_member::Column::UserId.ne(adder.0))
        .filter(Expr::exists(wrote))
        .into_tuple()
        .all(db)
        .await?;
    Ok(writers.into_iter().collect())
}

/// How many groups each of `users` belongs to (those in none are absent).
pub async fn group_counts<C: ConnectionTrait>(
    db: &C,
    users: &[i64],
) -> Result<HashMap<i64, u64>, DbErr> {
    if users.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(i64, i64)> = chat_member::Entity::find()
        .select_only()
        .column(chat_member::Column::UserId)
        .column_as(chat_member::Column::ChatId.count(), "groups")
        .join(JoinType::InnerJoin, chat_member::Relation::Chat.def())
        .filter(chat::Column::Kind.eq(chat::ChatKind::Group))
        .filter(chat_member::Column::UserId.is_in(users.to_vec()))
        .group_by(chat_member::Column::UserId)
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(user, n)| (user, n.max(0) as u64))
        .collect())
}

/// Invitations made together: to whom, and when.
#[derive(Debug, Default)]
pub struct Invited {
    pub users: Vec<i64>,
    pub at: DateTime<Utc>,
}

/// Records invitations of `users` to `chat` from `by`, and returns those
/// newly invited: not anyone invited to it before (pending, or declined:
/// the group asks once), nor anyone already holding `max_pending`
/// invitations (a flood of groups cannot bury the real ones).
pub async fn invite<C: ConnectionTrait>(
    db: &C,
    chat: ChatId,
    by: UserId,
    users: &[i64],
    max_pending: usize,
) -> Result<Invited, DbErr> {
    let now = Utc::now();
    let none = || Invited {
        users: Vec::new(),
        at: now,
    };
    if users.is_empty() {
        return Ok(none());
    }
    let asked_before: BTreeSet<i64> = invitation::Entity::find()
        .select_only()
        .column(invitation::Column::UserId)
        .filter(invitation::Column::ChatId.eq(chat.0))
        .filter(invitation::Column::UserId.is_in(users.to_vec()))
        .into_tuple::<i64>()
        .all(db)
        .await?
        .into_iter()
        .collect();
    let fresh: Vec<i64> = users
        .iter()
        .copied()
        .filter(|u| !asked_before.contains(u))
        .collect();
    if fresh.is_empty() {
        return Ok(none());
    }
    let pending: HashMap<i64, i64> = invitation::Entity::find()
        .select_only()
        .column(invitation::Column::UserId)
        .column_as(invitation::Column::ChatId.count(), "pending")
        .filter(invitation::Column::UserId.is_in(fresh.clone()))
        .filter(invitation::Column::DeclinedAt.is_null())
        .group_by(invitation::Column::UserId)
        .into_tuple::<(i64, i64)>()
        .all(db)
        .await?
        .into_iter()
        .collect();
    let invited: Vec<i64> = fresh
        .into_iter()
        .filter(|u| pending.get(u).copied().unwrap_or(0) < max_pending as i64)
        .collect();
    if invited.is_empty() {
        return Ok(none());
    }
    for some in invited.chunks(crate::db::ROWS_PER_INSERT) {
        invitation::Entity::insert_many(some.iter().map(|u| invitation::ActiveModel {
            chat_id: Set(chat.0),
            user_id: Set(*u),
            invited_by: Set(Some(by.0)),
            created_at: Set(now),
            declined_at: Set(None),
        }))
        .exec_without_returning(db)
        .await?;
    }
    Ok(Invited {
        users: invited,
        at: now,
    })
}

/// The pending invitations of `user`, newest first.
pub async fn pending_of<C: ConnectionTrait>(
    db: &C,
    user: UserId,
) -> Result<Vec<Invitation>, DbErr> {
    let rows = invitation::Entity::find()
        .find_also_related(chat::Entity)
        .filter(invitation::Column::UserId.eq(user.0))
        .filter(invitation::Column::DeclinedAt.is_null())
        .order_by_desc(invitation::Column::CreatedAt)
        .all(db)
        .await?;
    let chats: Vec<uuid::Uuid> = rows.iter().map(|(i, _)| i.chat_id).collect();
    let inviters: Vec<i64> = rows.iter().filter_map(|(i, _)| i.invited_by).collect();
    let members = super::store::member_counts(db, chats).await?;
    let people = super::store::profiles(db, inviters).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(invitation, chat)| {
            let chat = chat?;
            Some(Invitation {
                pk: ChatId(chat.id),
                name: chat.title.unwrap_or_default(),
                members: members.get(&chat.id).copied().unwrap_or(0).max(0) as u64,
                invited_by: invitation
                    .invited_by
                    .and_then(|id| people.get(&id))
                    .map(super::store::person),
                time: format_time(&invitation.created_at),
            })
        })
        .collect())
}
