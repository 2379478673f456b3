//! Deciding and sending pushes. One loop per instance; each round, the
//! instance that holds the lease (`push_dispatch`, renewed when half of it
//! is left; read first, so a round costs no write otherwise)
//! 1. decides: reads the messages after its mark, finds the members to tell
//!    (not the sender, not muted, no live session on any instance, at most
//!    one push per conversation per 30 s per subscription), and in one
//!    transaction queues them in `push_outbox`, notes the time in
//!    `push_throttle` and moves the mark;
//! 2. sends what is due in the outbox (`send.rs`), deleting each row once
//!    the push service took it (2xx) or refused it for good; a subscription
//!    the service says is gone (404, 410) is deleted; other failures are
//!    tried again later, eight times in all.
//!
//! Message ids are taken before commit, so with several instances a
//! smaller id can commit after a larger one: the mark stops at a hole until
//! it is `HOLE_GRACE` old (a rolled-back insert leaves one for good).
//! A push is sent with `Topic` = the conversation, so should one go twice
//! (the process killed between the service's answer and the row's
//! deletion) the push service and the browser keep only the last.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::{chat_member, message, push_dispatch, push_outbox, push_subscription, push_throttle};
use sea_orm::sea_query::{Expr, Func, OnConflict, Query};
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use tokio::sync::watch;

use super::{later, WebPush};
use crate::chat::presence::Presence;
use crate::chat::protocol::UserId;

/// The `push_dispatch` row.
const NAME: &str = "web_push";
/// How often each instance looks (and the holder decides and sends).
pub const ROUND: Duration = Duration::from_secs(1);
/// How long a lease lasts unless renewed: after a crash, another instance
/// takes over within this.
const LEASE: Duration = Duration::from_secs(15);
/// How long a hole in the message ids may be a commit still under way.
const HOLE_GRACE: Duration = Duration::from_secs(5);
/// Messages older than this are not pushed (a push service keeps a push
/// as long: `TTL` in `send.rs`).
const MAX_AGE: Duration = Duration::from_secs(86_400);
/// At most one push per conversation per subscription in this time.
pub const THROTTLE: Duration = Duration::from_secs(30);
/// Messages read per batch, and at most this many batches per round.
const BATCH: u64 = 500;
const BATCHES_PER_ROUND: usize = 40;

/// Runs until `stop` says true; then finishes the round under way (no push
/// is left half sent) and gives the lease up, so another instance takes
/// over at once.
pub async fn run(
    db: DatabaseConnection,
    push: Arc<WebPush>,
    presence: Arc<Presence>,
    mut stop: watch::Receiver<bool>,
) {
    let me = uuid::Uuid::new_v4().simple().to_string();
    let client = super::send::client();
    let mut tick = tokio::time::interval(ROUND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
        let lease_until = match acquire(&db, &me).await {
            Ok(Some(until)) => until,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "web push: lease not renewed");
                continue;
            }
        };
        // A busy server stores more than a batch a second: several per round.
        for _ in 0..BATCHES_PER_ROUND {
            match decide(&db, &presence, &me).await {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "web push: deciding failed; tried again next round");
                    break;
                }
            }
        }
        if let Err(e) = super::send::send_due(&db, &push, &client, lease_until).await {
            tracing::warn!(error = %e, "web push: sending failed; tried again next round");
        }
    }
    let released = push_dispatch::Entity::update_many()
        .col_expr(
            push_dispatch::Column::LeaseUntil,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .filter(push_dispatch::Column::Name.eq(NAME))
        .filter(push_dispatch::Column::Holder.eq(me.as_str()))
        .exec(&db)
        .await;
    if let Err(e) = released {
        tracing::warn!(error = %e, "web push: lease not released; another instance waits for it to end");
    }
}

/// Takes or renews the lease; until when this instance holds it (`None`:
/// another one does). Read first:
/// a lease held by another instance, or by this one with more than half
/// its time left, costs no write (on SQLite every write waits for the
/// one write lock the messages need).
async fn acquire(db: &DatabaseConnection, me: &str) -> Result<Option<DateTime<Utc>>, DbErr> {
    let now = Utc::now();
    let Some(row) = push_dispatch::Entity::find_by_id(NAME).one(db).await? else {
        return Ok(None);
    };
    let left = row.lease_until.map(|until| until - now);
    let half = chrono::Duration::from_std(LEASE / 2).expect("seconds");
    match (row.holder.as_deref() == Some(me), left) {
        (true, Some(left)) if left > half => return Ok(row.lease_until),
        (false, Some(left)) if left > chrono::Duration::zero() => return Ok(None),
        _ => {}
    }
    let until = later(LEASE);
    let result = push_dispatch::Entity::update_many()
        .col_expr(push_dispatch::Column::Holder, Expr::value(me))
        .col_expr(push_dispatch::Column::LeaseUntil, Expr::value(Some(until)))
        .filter(push_dispatch::Column::Name.eq(NAME))
        .filter(
            Condition::any()
                .add(push_dispatch::Column::Holder.eq(me))
                .add(push_dispatch::Column::LeaseUntil.is_null())
                .add(push_dispatch::Column::LeaseUntil.lt(now)),
        )
        .exec(db)
        .await?;
    Ok((result.rows_affected == 1).then_some(until))
}

/// What deciding needs of a message (never its text).
#[derive(Debug, Clone, sea_orm::FromQueryResult)]
struct Stored {
    id: i64,
    chat_id: uuid::Uuid,
    sender_id: Option<i64>,
    created_at: DateTime<Utc>,
    deleted: bool,
}

/// The messages after `mark` that may be decided now: in id order, up to
/// the first hole that may still fill.
fn decidable(mark: i64, messages: Vec<Stored>, now: DateTime<Utc>) -> Vec<Stored> {
    let grace = chrono::Duration::from_std(HOLE_GRACE).expect("seconds");
    let mut next = mark + 1;
    let mut ready = Vec::with_capacity(messages.len());
    for m in messages {
        if m.id != next && now - m.created_at < grace {
            break;
        }
        next = m.id + 1;
        ready.push(m);
    }
    ready
}

/// Moves the mark from `from` to `to` if this instance still holds the
/// lease and nobody moved it meanwhile; whether it did.
async fn move_mark<C: sea_orm::ConnectionTrait>(
    db: &C,
    me: &str,
    from: i64,
    to: i64,
) -> Result<bool, DbErr> {
    let moved = push_dispatch::Entity::update_many()
        .col_expr(push_dispatch::Column::DecidedUpTo, Expr::value(to))
        .filter(push_dispatch::Column::Name.eq(NAME))
        .filter(push_dispatch::Column::Holder.eq(me))
        .filter(push_dispatch::Column::DecidedUpTo.eq(from))
        .exec(db)
        .await?;
    Ok(moved.rows_affected == 1)
}

/// Step 1: queue the pushes the messages after the mark call for. Whether
/// a whole batch was decided (there may be more).
async fn decide(db: &DatabaseConnection, presence: &Presence, me: &str) -> Result<bool, DbErr> {
    let Some(state) = push_dispatch::Entity::find_by_id(NAME).one(db).await? else {
        return Ok(false);
    };
    let from = state.decided_up_to;
    // Nobody subscribed: nothing to decide, whatever was stored.
    if push_subscription::Entity::find().one(db).await?.is_none() {
        if let Some(newest) = newest_message(db).await?.filter(|n| *n > from) {
            move_mark(db, me, from, newest).await?;
        }
        return Ok(false);
    }
    let now = Utc::now();
    let ready = decidable(from, messages_after(db, from).await?, now);
    // A whole batch, no hole: there may be more after it.
    let more = ready.len() as u64 == BATCH;
    let Some(mark) = ready.last().map(|m| m.id) else {
        return Ok(false);
    };
    let newest = newest_per_chat(&ready, now);
    let queued = pushes(db, presence, &newest, now).await?;
    let txn = crate::db::begin_write(db).await?;
    if !move_mark(&txn, me, from, mark).await? {
        // Another instance took the lease meanwhile: it decides these.
        txn.rollback().await?;
        return Ok(false);
    }
    enqueue(&txn, &queued, now).await?;
    txn.commit().await?;
    if !queued.is_empty() {
        tracing::debug!(pushes = queued.len(), up_to = mark, "web push: queued");
    }
    Ok(more)
}

/// The newest message id stored, if any.
async fn newest_message(db: &DatabaseConnection) -> Result<Option<i64>, DbErr> {
    Ok(message::Entity::find()
        .select_only()
        .expr(Func::max(Expr::col(message::Column::Id)))
        .into_tuple()
        .one(db)
        .await?
        .flatten())
}

/// The next batch of messages after `mark`, in id order.
async fn messages_after(db: &DatabaseConnection, mark: i64) -> Result<Vec<Stored>, DbErr> {
    message::Entity::find()
        .select_only()
        .columns([
            message::Column::Id,
            message::Column::ChatId,
            message::Column::SenderId,
            message::Column::CreatedAt,
            message::Column::Deleted,
        ])
        .filter(message::Column::Id.gt(mark))
        .order_by_asc(message::Column::Id)
        .limit(BATCH)
        .into_model::<Stored>()
        .all(db)
        .await
}

/// The message each conversation's push tells of: its newest, unless
/// deleted or older than a push service would keep (pushes were off
/// meanwhile).
fn newest_per_chat(ready: &[Stored], now: DateTime<Utc>) -> HashMap<uuid::Uuid, &Stored> {
    let stale = now - chrono::Duration::from_std(MAX_AGE).expect("seconds");
    let mut newest = HashMap::new();
    for m in ready.iter().filter(|m| !m.deleted && m.created_at > stale) {
        newest.insert(m.chat_id, m);
    }
    newest
}

/// One push to queue: a subscription, told of a conversation's message.
struct Queued {
    subscription: i64,
    chat: uuid::Uuid,
    message: i64,
}

/// The pushes `newest` calls for: to every member with a subscription who
/// did not send it, has not muted the conversation and has no live
/// session, except where that subscription was told of the conversation
/// within `THROTTLE`.
async fn pushes(
    db: &DatabaseConnection,
    presence: &Presence,
    newest: &HashMap<uuid::Uuid, &Stored>,
    now: DateTime<Utc>,
) -> Result<Vec<Queued>, DbErr> {
    let chats: Vec<uuid::Uuid> = newest.keys().copied().collect();
    if chats.is_empty() {
        return Ok(Vec::new());
    }
    let members: Vec<(uuid::Uuid, i64)> = chat_member::Entity::find()
        .select_only()
        .columns([chat_member::Column::ChatId, chat_member::Column::UserId])
        .filter(chat_member::Column::ChatId.is_in(chats.clone()))
        .filter(chat_member::Column::Muted.eq(false))
        .filter(
            chat_member::Column::UserId.in_subquery(
                Query::select()
                    .column(push_subscription::Column::UserId)
                    .from(push_subscription::Entity)
                    .to_owned(),
            ),
        )
        .into_tuple()
        .all(db)
        .await?;
    let recipients: Vec<(uuid::Uuid, i64)> = members
        .into_iter()
        .filter(|(chat, user)| {
            newest[chat].sender_id != Some(*user) && !presence.is_online(UserId(*user))
        })
        .collect();
    let users: HashSet<i64> = recipients.iter().map(|(_, u)| *u).collect();
    let subscriptions = subscriptions_of(db, &users.into_iter().collect::<Vec<_>>()).await?;
    let throttled = throttled(db, &subscriptions, &chats, now).await?;
    let mut by_user: HashMap<i64, Vec<i64>> = HashMap::new();
    for s in &subscriptions {
        by_user.entry(s.user_id).or_default().push(s.id);
    }
    let mut queued = Vec::new();
    for (chat, user) in recipients {
        for &subscription in by_user.get(&user).into_iter().flatten() {
            if !throttled.contains(&(subscription, chat)) {
                queued.push(Queued {
                    subscription,
                    chat,
                    message: newest[&chat].id,
                });
            }
        }
    }
    Ok(queued)
}

/// Every subscription of `users`.
async fn subscriptions_of(
    db: &DatabaseConnection,
    users: &[i64],
) -> Result<Vec<push_subscription::Model>, DbErr> {
    let mut subscriptions = Vec::new();
    for some in users.chunks(crate::db::IDS_PER_LIST) {
        subscriptions.extend(
            push_subscription::Entity::find()
                .filter(push_subscription::Column::UserId.is_in(some.iter().copied()))
                .all(db)
                .await?,
        );
    }
    Ok(subscriptions)
}

/// The (subscription, conversation) pairs told within `THROTTLE`.
async fn throttled(
    db: &DatabaseConnection,
    subscriptions: &[push_subscription::Model],
    chats: &[uuid::Uuid],
    now: DateTime<Utc>,
) -> Result<HashSet<(i64, uuid::Uuid)>, DbErr> {
    let since = now - chrono::Duration::from_std(THROTTLE).expect("seconds");
    let mut throttled = HashSet::new();
    for some in subscriptions.chunks(crate::db::IDS_PER_LIST) {
        throttled.extend(
            push_throttle::Entity::find()
                .filter(push_throttle::Column::SubscriptionId.is_in(some.iter().map(|s| s.id)))
                .filter(push_throttle::Column::ChatId.is_in(chats.iter().copied()))
                .filter(push_throttle::Column::LastAt.gt(since))
                .all(db)
                .await?
                .into_iter()
                .map(|t| (t.subscription_id, t.chat_id)),
        );
    }
    Ok(throttled)
}

/// Queues the pushes in `push_outbox` and notes in `push_throttle` when
/// each subscription was told of each conversation.
async fn enqueue<C: sea_orm::ConnectionTrait>(
    txn: &C,
    queued: &[Queued],
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    for some in queued.chunks(crate::db::ROWS_PER_INSERT) {
        push_outbox::Entity::insert_many(some.iter().map(|q| push_outbox::ActiveModel {
            subscription_id: Set(q.subscription),
            message_id: Set(q.message),
            not_before: Set(now),
            attempts: Set(0),
            ..Default::default()
        }))
        .exec_without_returning(txn)
        .await?;
        push_throttle::Entity::insert_many(some.iter().map(|q| push_throttle::ActiveModel {
            subscription_id: Set(q.subscription),
            chat_id: Set(q.chat),
            last_at: Set(now),
        }))
        .on_conflict(
            OnConflict::columns([
                push_throttle::Column::SubscriptionId,
                push_throttle::Column::ChatId,
            ])
            .update_column(push_throttle::Column::LastAt)
            .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(id: i64, seconds_ago: i64) -> Stored {
        Stored {
            id,
            chat_id: uuid::Uuid::nil(),
            sender_id: None,
            created_at: Utc::now() - chrono::Duration::seconds(seconds_ago),
            deleted: false,
        }
    }

    #[test]
    fn the_mark_waits_at_a_young_hole_and_passes_an_old_one() {
        let now = Utc::now();
        let ids = |v: Vec<Stored>| v.iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(
            ids(decidable(10, vec![at(11, 0), at(12, 0)], now)),
            [11, 12]
        );
        assert_eq!(ids(decidable(10, vec![at(11, 0), at(13, 0)], now)), [11]);
        assert_eq!(ids(decidable(10, vec![at(12, 0)], now)), Vec::<i64>::new());
        assert_eq!(ids(decidable(10, vec![at(12, 60), at(14, 0)], now)), [12]);
    }

    #[test]
    fn a_conversation_is_told_of_its_newest_message_unless_deleted_or_stale() {
        let now = Utc::now();
        let (a, b, c) = (
            uuid::Uuid::from_u128(1),
            uuid::Uuid::from_u128(2),
            uuid::Uuid::from_u128(3),
        );
        let in_chat = |id, chat, seconds_ago, deleted| Stored {
            chat_id: chat,
            deleted,
            ..at(id, seconds_ago)
        };
        let ready = [
            in_chat(1, a, 5, false),
            in_chat(2, b, 5, false),
            in_chat(3, a, 1, false),
            in_chat(4, b, 0, true),
            in_chat(5, c, 2 * 86_400, false),
        ];
        let newest = newest_per_chat(&ready, now);
        let told: HashMap<uuid::Uuid, i64> = newest.iter().map(|(k, m)| (*k, m.id)).collect();
        assert_eq!(told, HashMap::from([(a, 3), (b, 2)]));
    }
}
