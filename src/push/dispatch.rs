//! Deciding and sending pushes. One loop per instance; each round, the
//! instance that holds the lease (`push_dispatch`, renewed every round)
//! 1. decides: reads the messages after its mark, finds the members to tell
//!    (not the sender, not muted, no live session on any instance, at most
//!    one push per conversation per 30 s per subscription), and in one
//!    transaction queues them in `push_outbox`, notes the time in
//!    `push_throttle` and moves the mark;
//! 2. sends what is due in the outbox, deleting each row once the push
//!    service took it (2xx) or refused it for good; a subscription the
//!    service says is gone (404, 410) is deleted; other failures are tried
//!    again later, up to `MAX_ATTEMPTS`.
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

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use entity::{
    chat, chat_member, message, push_dispatch, push_outbox, push_subscription, push_throttle, user,
};
use sea_orm::sea_query::{Expr, OnConflict, Query};
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set, TransactionTrait,
};
use tokio::sync::watch;

use super::WebPush;
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
/// At most one push per conversation per subscription in this time.
pub const THROTTLE: Duration = Duration::from_secs(30);
/// Messages read per round, and outbox rows sent per round.
const BATCH: u64 = 500;
const SEND_BATCH: u64 = 100;
/// Failed sends before a push is given up.
const MAX_ATTEMPTS: i32 = 8;
/// A push service's answer must come within this.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a push service keeps a push for an offline browser.
const TTL_SECONDS: u32 = 86_400;
/// The preview's length, in characters.
const PREVIEW_CHARS: usize = 100;

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
    let client = awc::Client::builder()
        .timeout(SEND_TIMEOUT)
        .disable_redirects()
        .finish();
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
        match acquire(&db, &me).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "web push: lease not renewed");
                continue;
            }
        }
        if let Err(e) = decide(&db, &presence, &me).await {
            tracing::warn!(error = %e, "web push: deciding failed; tried again next round");
        }
        if let Err(e) = send_due(&db, &push, &client).await {
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

fn later(duration: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(duration).expect("the durations here are seconds")
}

/// Takes or renews the lease; whether this instance holds it.
async fn acquire(db: &DatabaseConnection, me: &str) -> Result<bool, DbErr> {
    let now = Utc::now();
    let result = push_dispatch::Entity::update_many()
        .col_expr(push_dispatch::Column::Holder, Expr::value(me))
        .col_expr(
            push_dispatch::Column::LeaseUntil,
            Expr::value(Some(later(LEASE))),
        )
        .filter(push_dispatch::Column::Name.eq(NAME))
        .filter(
            Condition::any()
                .add(push_dispatch::Column::Holder.eq(me))
                .add(push_dispatch::Column::LeaseUntil.is_null())
                .add(push_dispatch::Column::LeaseUntil.lt(now)),
        )
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
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

/// Step 1: queue the pushes the messages after the mark call for.
async fn decide(db: &DatabaseConnection, presence: &Presence, me: &str) -> Result<(), DbErr> {
    let Some(state) = push_dispatch::Entity::find_by_id(NAME).one(db).await? else {
        return Ok(());
    };
    let messages = message::Entity::find()
        .select_only()
        .columns([
            message::Column::Id,
            message::Column::ChatId,
            message::Column::SenderId,
            message::Column::CreatedAt,
            message::Column::Deleted,
        ])
        .filter(message::Column::Id.gt(state.decided_up_to))
        .order_by_asc(message::Column::Id)
        .limit(BATCH)
        .into_model::<Stored>()
        .all(db)
        .await?;
    let now = Utc::now();
    let ready = decidable(state.decided_up_to, messages, now);
    let Some(mark) = ready.last().map(|m| m.id) else {
        return Ok(());
    };
    // The newest message of each conversation is the one told.
    let mut newest: HashMap<uuid::Uuid, &Stored> = HashMap::new();
    for m in ready.iter().filter(|m| !m.deleted) {
        newest.insert(m.chat_id, m);
    }
    let chats: Vec<uuid::Uuid> = newest.keys().copied().collect();
    let members: Vec<(uuid::Uuid, i64)> = if chats.is_empty() {
        Vec::new()
    } else {
        chat_member::Entity::find()
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
            .await?
    };
    let recipients: Vec<(uuid::Uuid, i64)> = members
        .into_iter()
        .filter(|(chat, user)| {
            newest[chat].sender_id != Some(*user) && !presence.is_online(UserId(*user))
        })
        .collect();
    let users: HashSet<i64> = recipients.iter().map(|(_, u)| *u).collect();
    let subscriptions = if users.is_empty() {
        Vec::new()
    } else {
        push_subscription::Entity::find()
            .filter(push_subscription::Column::UserId.is_in(users))
            .all(db)
            .await?
    };
    let throttled: HashSet<(i64, uuid::Uuid)> = if subscriptions.is_empty() {
        HashSet::new()
    } else {
        let since = now - chrono::Duration::from_std(THROTTLE).expect("seconds");
        push_throttle::Entity::find()
            .filter(push_throttle::Column::SubscriptionId.is_in(subscriptions.iter().map(|s| s.id)))
            .filter(push_throttle::Column::ChatId.is_in(chats))
            .filter(push_throttle::Column::LastAt.gt(since))
            .all(db)
            .await?
            .into_iter()
            .map(|t| (t.subscription_id, t.chat_id))
            .collect()
    };
    let mut by_user: HashMap<i64, Vec<&push_subscription::Model>> = HashMap::new();
    for s in &subscriptions {
        by_user.entry(s.user_id).or_default().push(s);
    }
    let mut queued = Vec::new();
    for (chat, user) in &recipients {
        for s in by_user.get(user).into_iter().flatten() {
            if !throttled.contains(&(s.id, *chat)) {
                queued.push((s.id, *chat, newest[chat].id));
            }
        }
    }

    let txn = db.begin().await?;
    let moved = push_dispatch::Entity::update_many()
        .col_expr(push_dispatch::Column::DecidedUpTo, Expr::value(mark))
        .filter(push_dispatch::Column::Name.eq(NAME))
        .filter(push_dispatch::Column::Holder.eq(me))
        .filter(push_dispatch::Column::DecidedUpTo.eq(state.decided_up_to))
        .exec(&txn)
        .await?;
    if moved.rows_affected != 1 {
        // Another instance took the lease meanwhile: it decides these.
        return txn.rollback().await;
    }
    if !queued.is_empty() {
        push_outbox::Entity::insert_many(queued.iter().map(|(subscription, _, message)| {
            push_outbox::ActiveModel {
                subscription_id: Set(*subscription),
                message_id: Set(*message),
                not_before: Set(now),
                attempts: Set(0),
                ..Default::default()
            }
        }))
        .exec_without_returning(&txn)
        .await?;
        push_throttle::Entity::insert_many(queued.iter().map(|(subscription, chat, _)| {
            push_throttle::ActiveModel {
                subscription_id: Set(*subscription),
                chat_id: Set(*chat),
                last_at: Set(now),
            }
        }))
        .on_conflict(
            OnConflict::columns([
                push_throttle::Column::SubscriptionId,
                push_throttle::Column::ChatId,
            ])
            .update_column(push_throttle::Column::LastAt)
            .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
    }
    txn.commit().await?;
    if !queued.is_empty() {
        tracing::debug!(pushes = queued.len(), up_to = mark, "web push: queued");
    }
    Ok(())
}

/// What became of one push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Accepted, or refused for good: the row goes.
    Done,
    /// The subscription is gone (404, 410): it goes, and its rows with it.
    Gone,
    /// Try again later.
    Retry,
}

fn outcome(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Done,
        404 | 410 => Outcome::Gone,
        408 | 429 | 500..=599 => Outcome::Retry,
        _ => Outcome::Done,
    }
}

/// The payload the service worker shows (B11).
#[derive(Debug, serde::Serialize)]
struct Payload<'a> {
    pk: uuid::Uuid,
    title: &'a str,
    sender: &'a str,
    preview: &'a str,
}

/// Step 2: send what is due in the outbox.
async fn send_due(
    db: &DatabaseConnection,
    push: &WebPush,
    client: &awc::Client,
) -> Result<(), DbErr> {
    let due = push_outbox::Entity::find()
        .filter(push_outbox::Column::NotBefore.lte(Utc::now()))
        .order_by_asc(push_outbox::Column::Id)
        .limit(SEND_BATCH)
        .all(db)
        .await?;
    if due.is_empty() {
        return Ok(());
    }
    let subscriptions: HashMap<i64, push_subscription::Model> = push_subscription::Entity::find()
        .filter(push_subscription::Column::Id.is_in(due.iter().map(|d| d.subscription_id)))
        .all(db)
        .await?
        .into_iter()
        .map(|s| (s.id, s))
        .collect();
    let messages: HashMap<i64, message::Model> = message::Entity::find()
        .filter(message::Column::Id.is_in(due.iter().map(|d| d.message_id)))
        .all(db)
        .await?
        .into_iter()
        .map(|m| (m.id, m))
        .collect();
    let chats: HashMap<uuid::Uuid, chat::Model> = chat::Entity::find()
        .filter(chat::Column::Id.is_in(messages.values().map(|m| m.chat_id)))
        .all(db)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    let senders: HashMap<i64, user::Model> = user::Entity::find()
        .filter(user::Column::Id.is_in(messages.values().filter_map(|m| m.sender_id)))
        .all(db)
        .await?
        .into_iter()
        .map(|u| (u.id, u))
        .collect();
    for row in due {
        let found = subscriptions
            .get(&row.subscription_id)
            .zip(messages.get(&row.message_id));
        let result = match found {
            Some((subscription, message)) if !message.deleted => {
                let sender = message
                    .sender_id
                    .and_then(|id| senders.get(&id))
                    .map(user::Model::display_name)
                    .unwrap_or_default();
                let title = match chats.get(&message.chat_id) {
                    Some(c) if c.kind == chat::ChatKind::Group => {
                        c.title.clone().unwrap_or_default()
                    }
                    _ => sender.clone(),
                };
                let preview: String = if push.preview {
                    message.content.chars().take(PREVIEW_CHARS).collect()
                } else {
                    String::new()
                };
                let payload = Payload {
                    pk: message.chat_id,
                    title: &title,
                    sender: &sender,
                    preview: &preview,
                };
                send(push, client, subscription, &payload).await
            }
            // The message was deleted (or the subscription went) meanwhile.
            _ => Outcome::Done,
        };
        settle(db, &row, result).await?;
    }
    Ok(())
}

async fn settle(
    db: &DatabaseConnection,
    row: &push_outbox::Model,
    result: Outcome,
) -> Result<(), DbErr> {
    match result {
        Outcome::Done => {
            push_outbox::Entity::delete_by_id(row.id).exec(db).await?;
        }
        Outcome::Gone => {
            // Its outbox and throttle rows go with it (ON DELETE CASCADE).
            push_subscription::Entity::delete_by_id(row.subscription_id)
                .exec(db)
                .await?;
            push_outbox::Entity::delete_by_id(row.id).exec(db).await?;
        }
        Outcome::Retry if row.attempts + 1 >= MAX_ATTEMPTS => {
            tracing::warn!(
                subscription = row.subscription_id,
                "web push: given up after {MAX_ATTEMPTS} attempts"
            );
            push_outbox::Entity::delete_by_id(row.id).exec(db).await?;
        }
        Outcome::Retry => {
            // 1, 2, 4 … 64 s.
            let wait = Duration::from_secs(1 << row.attempts.clamp(0, 6));
            push_outbox::Entity::update_many()
                .col_expr(push_outbox::Column::Attempts, Expr::value(row.attempts + 1))
                .col_expr(push_outbox::Column::NotBefore, Expr::value(later(wait)))
                .filter(push_outbox::Column::Id.eq(row.id))
                .exec(db)
                .await?;
        }
    }
    Ok(())
}

/// Encrypts the payload for the subscription (RFC 8291) and POSTs it.
async fn send(
    push: &WebPush,
    client: &awc::Client,
    subscription: &push_subscription::Model,
    payload: &Payload<'_>,
) -> Outcome {
    let keys = URL_SAFE_NO_PAD
        .decode(&subscription.p256dh)
        .ok()
        .and_then(|k| p256::PublicKey::from_sec1_bytes(&k).ok())
        .zip(
            URL_SAFE_NO_PAD
                .decode(&subscription.auth)
                .ok()
                .and_then(|a| <[u8; 16]>::try_from(a).ok()),
        );
    let Some((public, auth)) = keys else {
        // Checked when stored; a row that fails now cannot be pushed to.
        return Outcome::Gone;
    };
    let body = serde_json::to_vec(payload).expect("a payload is strings");
    let auth = web_push_native::Auth::from(auth);
    let encrypted = match web_push_native::encrypt(body, &public, &auth) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(error = %e, "web push: encryption failed");
            return Outcome::Done;
        }
    };
    let Ok(uri) = subscription.endpoint.parse::<awc::http::Uri>() else {
        return Outcome::Gone;
    };
    let origin = format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("https"),
        uri.authority().map(|a| a.as_str()).unwrap_or_default()
    );
    let request = client
        .post(&subscription.endpoint)
        .insert_header(("TTL", TTL_SECONDS.to_string()))
        .insert_header(("Urgency", "high"))
        .insert_header(("Topic", payload.pk.simple().to_string()))
        .insert_header(("Content-Encoding", "aes128gcm"))
        .insert_header(("Content-Type", "application/octet-stream"))
        .insert_header((
            "Authorization",
            push.vapid.authorization(&origin, Utc::now().timestamp()),
        ));
    match request.send_body(encrypted).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let result = outcome(status);
            if result == Outcome::Done && status >= 300 {
                tracing::warn!(
                    status,
                    subscription = subscription.id,
                    "web push: refused by the push service"
                );
            }
            result
        }
        Err(e) => {
            tracing::info!(error = %e, subscription = subscription.id, "web push: push service unreachable");
            Outcome::Retry
        }
    }
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
    fn what_the_push_service_answers() {
        assert_eq!(outcome(201), Outcome::Done);
        assert_eq!(outcome(410), Outcome::Gone);
        assert_eq!(outcome(404), Outcome::Gone);
        assert_eq!(outcome(429), Outcome::Retry);
        assert_eq!(outcome(503), Outcome::Retry);
        assert_eq!(outcome(400), Outcome::Done);
        assert_eq!(outcome(413), Outcome::Done);
    }
}
