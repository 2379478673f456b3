//! Sending what `dispatch` queued: each push built when it goes (so a
//! message deleted meanwhile is not pushed, and no text waits in the
//! queue), encrypted for its browser (RFC 8291), signed (VAPID) and POSTed;
//! the row is settled by the push service's answer.

use std::collections::HashMap;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use entity::{chat, message, push_outbox, push_subscription, user};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::{later, WebPush};

/// Outbox rows sent per round.
const SEND_BATCH: u64 = 100;
/// A push service's answer must come within this.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// No send is started that could end this close to the lease's end.
const LEASE_MARGIN: Duration = Duration::from_secs(1);
/// Failed sends before a push is given up.
const MAX_ATTEMPTS: i32 = 8;
/// How long a push service keeps a push for an offline browser.
const TTL_SECONDS: u32 = 86_400;
/// The preview's length, in characters.
const PREVIEW_CHARS: usize = 100;

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

/// The push services' client: a bounded wait, no redirects (an endpoint
/// was checked, where it would redirect to was not).
pub(super) fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(SEND_TIMEOUT)
        .disable_redirects()
        .finish()
}

/// Step 2: send what is due in the outbox, each push started only while it
/// can end before `lease_until`: a slow push service never makes two
/// instances send the same row.
pub(super) async fn send_due(
    db: &DatabaseConnection,
    push: &WebPush,
    client: &awc::Client,
    lease_until: DateTime<Utc>,
) -> Result<(), DbErr> {
    let last_start =
        lease_until - chrono::Duration::from_std(SEND_TIMEOUT + LEASE_MARGIN).expect("seconds");
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
    let senders =
        crate::chat::store::profiles(db, messages.values().filter_map(|m| m.sender_id)).await?;
    for row in due {
        if Utc::now() > last_start {
            break;
        }
        let found = subscriptions
            .get(&row.subscription_id)
            .zip(messages.get(&row.message_id));
        let result = match found {
            Some((subscription, message)) if !message.deleted => {
                let sender = message
                    .sender_id
                    .and_then(|id| senders.get(&id))
                    .map(user::Profile::display_name)
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
