//! The conversation log (PROTOCOL.md B7): every event that changes a
//! conversation's history has a `seq`, 1, 2, 3… with no gaps, given in the
//! transaction that stores it (`writer/`). This module turns stored events
//! into the frames sessions receive, live and through `sync`, from one
//! function each, so the two are the same bytes; and it fills the holes the
//! ChatServer finds in a conversation's live stream from the database.

use std::time::Duration;

use actix::prelude::*;
use entity::{message, message_event};
use sea_orm::{DatabaseConnection, DbErr};
use tokio::sync::mpsc;

use super::changes;
use super::messages::ConversationFrames;
use super::protocol::{
    format_time, AttachmentInfo, ChatId, Direction, MessageAck, MessageBody, MessagePush, Quote,
    Reply, ServerEvent, SyncPage, UserId,
};
use super::store;

/// How long the ChatServer holds events behind a hole in a conversation's
/// stream before it loads the missing ones from the database. An event
/// committed by another instance usually arrives well within this; the
/// database answers for the rest.
pub const HOLE_WAIT: Duration = Duration::from_millis(250);
/// Most events held behind one hole: past this the hole is filled at once.
pub const MAX_HELD: usize = 512;
/// Most events a room holds at all: past this (the database is slow to fill
/// the hole) the hole is given up, so a room's memory stays bounded.
pub const HELD_LIMIT: usize = 4 * MAX_HELD;
/// Most events one fill loads; a larger hole takes several.
const FILL_PAGE: u64 = 500;
/// Fill requests waiting for the database; beyond this a hole is given up
/// (its sessions see the jump in `seq` and `sync` themselves).
const FILL_QUEUE: usize = 1024;

/// One event of a conversation's log: a new message (with what it shows
/// of the message it answers), or a change to one (B8).
#[derive(Debug, Clone)]
pub enum LogEvent {
    Message(message::Model, Option<Quote>, Vec<AttachmentInfo>),
    Change(message_event::Model),
}

impl LogEvent {
    fn seq(&self) -> i64 {
        match self {
            LogEvent::Message(m, ..) => m.seq,
            LogEvent::Change(e) => e.seq,
        }
    }

    /// Its frames for the conversation's members.
    fn frames(&self) -> ConversationFrames {
        match self {
            LogEvent::Message(m, quote, files) => message_frames(m, quote.as_ref(), files),
            LogEvent::Change(e) => ConversationFrames {
                chat: ChatId(e.chat_id),
                seq: Some(e.seq),
                user: None,
                own: None,
                others: changes::event_frame(e),
            },
        }
    }
}

/// The inner `data` of a `message` frame, as `direction` sees it: the text
/// as it was sent (an edited message's first version; nothing once deleted).
fn message_body(
    m: &message::Model,
    quote: Option<&Quote>,
    files: &[AttachmentInfo],
    direction: Direction,
) -> MessageBody {
    MessageBody {
        direction,
        content: m
            .original_content
            .clone()
            .unwrap_or_else(|| m.content.clone()),
        time: format_time(&m.created_at),
        id: m.id,
        sender: m.sender_id,
        client_id: m.client_id.clone(),
        reply_to: m.reply_to,
        quote: quote.cloned(),
        attachments: files.to_vec(),
    }
}

/// The frames of a stored message for its conversation's members: `send`
/// for the sender's sessions, `received` for everyone else's.
pub fn message_frames(
    m: &message::Model,
    quote: Option<&Quote>,
    files: &[AttachmentInfo],
) -> ConversationFrames {
    let pk = ChatId(m.chat_id);
    let mut body = message_body(m, quote, files, Direction::Received);
    let frame = |body: &MessageBody| {
        ServerEvent::Message(MessagePush {
            pk,
            seq: m.seq,
            data: body,
        })
        .to_json()
    };
    let others = frame(&body);
    let own = sent_from_received(&others).unwrap_or_else(|| {
        body.direction = Direction::Send;
        frame(&body)
    });
    ConversationFrames {
        chat: pk,
        seq: Some(m.seq),
        user: m.sender_id.map(UserId),
        own: Some(own),
        others,
    }
}

/// The sender's `message` frame from everyone else's: the two differ only
/// in `direction`, copied here with that one value replaced instead of
/// serialising the message a second time (that was 3 % of the server's CPU
/// at full speed: BENCHMARKS.md "Serialised once"). The pattern, quotes
/// unescaped, can only be the object's key, never text a user wrote: their
/// quotes are escaped (`\"`). `None` if it is missing.
fn sent_from_received(received: &[u8]) -> Option<bytes::Bytes> {
    const RECEIVED: &[u8] = br#"{"direction":"received","#;
    const SENT: &[u8] = br#"{"direction":"send","#;
    let at = received
        .windows(RECEIVED.len())
        .position(|window| window == RECEIVED)?;
    let mut sent = Vec::with_capacity(received.len() - RECEIVED.len() + SENT.len());
    sent.extend_from_slice(&received[..at]);
    sent.extend_from_slice(SENT);
    sent.extend_from_slice(&received[at + RECEIVED.len()..]);
    Some(sent.into())
}

/// The sender's acknowledgement of a stored message (B2).
pub fn ack_frame(m: &message::Model) -> bytes::Bytes {
    let ack = MessageAck {
        status: "success",
        id: m.id,
        pk: ChatId(m.chat_id),
        client_id: m.client_id.clone(),
        time: format_time(&m.created_at),
    };
    ServerEvent::MessageResponse(Reply::Ok(ack)).to_json()
}

/// The `sync_response` frame for `viewer`: `events` (oldest first) exactly
/// as a live session of theirs received them.
pub fn sync_frame(
    chat: ChatId,
    viewer: UserId,
    events: &[LogEvent],
    latest: i64,
    has_more: bool,
) -> bytes::Bytes {
    // Each event's frame as the viewer's sessions got it, spliced in as
    // raw JSON: a change's frame is the same bytes for everyone.
    let frames: Vec<Box<serde_json::value::RawValue>> = events
        .iter()
        .map(|event| {
            let frame = match event {
                LogEvent::Message(m, quote, files) => {
                    let direction = if m.sender_id == Some(viewer.0) {
                        Direction::Send
                    } else {
                        Direction::Received
                    };
                    let body = message_body(m, quote.as_ref(), files, direction);
                    ServerEvent::Message(MessagePush {
                        pk: chat,
                        seq: m.seq,
                        data: &body,
                    })
                    .to_json()
                }
                LogEvent::Change(e) => changes::event_frame(e),
            };
            raw(frame)
        })
        .collect();
    let page = SyncPage {
        pk: chat,
        events: frames,
        seq: latest,
        has_more,
    };
    ServerEvent::SyncResponse(Reply::Ok(page)).to_json()
}

/// A frame the server made, as raw JSON to splice into another.
fn raw(frame: bytes::Bytes) -> Box<serde_json::value::RawValue> {
    let text = String::from_utf8(frame.to_vec()).expect("frames are serialized JSON text");
    serde_json::value::RawValue::from_string(text).expect("frames are serialized JSON")
}

/// The events of `chat` after `after_seq`, oldest first (at most `limit`),
/// whether there are more, and the conversation's latest `seq`.
pub async fn events_after(
    db: &DatabaseConnection,
    chat: ChatId,
    after_seq: i64,
    limit: u64,
) -> Result<(Vec<LogEvent>, bool, i64), DbErr> {
    let latest = store::latest_seq(db, chat).await?;
    let (rows, has_more) = events_between(db, chat, after_seq, None, limit).await?;
    // Events committed between the two reads: the latest is at least theirs.
    let latest = rows.last().map_or(latest, |e| latest.max(e.seq()));
    Ok((rows, has_more, latest))
}

/// The events of `chat` with `after < seq < before`, oldest first (at most
/// `limit`), and whether there are more: its messages and the changes to
/// them, merged in `seq` order.
pub async fn events_between(
    db: &DatabaseConnection,
    chat: ChatId,
    after: i64,
    before: Option<i64>,
    limit: u64,
) -> Result<(Vec<LogEvent>, bool), DbErr> {
    let (messages, more_messages) = store::messages_by_seq(db, chat, after, before, limit).await?;
    let (changes, more_changes) = store::changes_by_seq(db, chat, after, before, limit).await?;
    let quotes = store::quotes_for(db, &messages).await?;
    let ids: Vec<i64> = messages.iter().map(|m| m.id).collect();
    let mut files = store::attachments_for(db, &ids).await?;
    let mut events: Vec<LogEvent> = messages
        .into_iter()
        .map(|m| {
            let quote = m.reply_to.and_then(|id| quotes.get(&id).cloned());
            let files = files.remove(&m.id).unwrap_or_default();
            LogEvent::Message(m, quote, files)
        })
        .chain(changes.into_iter().map(LogEvent::Change))
        .collect();
    events.sort_by_key(LogEvent::seq);
    // Each list holds the first `limit` of its kind: the first `limit`
    // merged are the first `limit` events.
    let has_more = events.len() as u64 > limit || more_messages || more_changes;
    events.truncate(limit as usize);
    Ok((events, has_more))
}

/// The events of a hole in a conversation's live stream, loaded from the
/// database: `seq` in `after + 1 ..= until - 1`. `Err` when the database
/// could not say.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Filled {
    pub chat: ChatId,
    pub until: i64,
    pub events: Result<Vec<ConversationFrames>, DbErr>,
}

struct FillRequest {
    chat: ChatId,
    after: i64,
    until: i64,
}

/// Loads the events of holes for the ChatServer, off its thread (the
/// ChatServer awaits nothing). Cheap to clone.
#[derive(Clone)]
pub struct HoleFiller {
    tx: mpsc::Sender<FillRequest>,
}

impl HoleFiller {
    /// Starts the task that answers fill requests to `server`.
    pub fn start(db: DatabaseConnection, server: Recipient<Filled>) -> Self {
        let (tx, mut rx) = mpsc::channel::<FillRequest>(FILL_QUEUE);
        actix::spawn(async move {
            while let Some(FillRequest { chat, after, until }) = rx.recv().await {
                let limit = ((until - after - 1).max(1) as u64).min(FILL_PAGE);
                let events = events_between(&db, chat, after, Some(until), limit)
                    .await
                    .map(|(rows, _)| rows.iter().map(LogEvent::frames).collect());
                server.do_send(Filled {
                    chat,
                    until,
                    events,
                });
            }
        });
        HoleFiller { tx }
    }

    /// Asks for the events of `chat` with `after < seq < until`; `false`
    /// when too many requests are waiting.
    pub fn request(&self, chat: ChatId, after: i64, until: i64) -> bool {
        self.tx.try_send(FillRequest { chat, after, until }).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serialised(m: &message::Model, quote: Option<&Quote>, files: &[AttachmentInfo]) -> Vec<u8> {
        let body = message_body(m, quote, files, Direction::Send);
        let push = MessagePush {
            pk: ChatId(m.chat_id),
            seq: m.seq,
            data: &body,
        };
        ServerEvent::Message(push).to_json().to_vec()
    }

    #[test]
    fn the_senders_frame_is_the_message_serialised_with_send() {
        let tricky = r#"{"direction":"received","content":"x"} \" {"direction":"received","#;
        let quote = Quote {
            sender: Some(2),
            content: tricky.into(),
        };
        let file = AttachmentInfo {
            id: uuid::Uuid::from_u128(7),
            name: r#"{"direction":"received",.png"#.into(),
            size: 10,
            content_type: "image/png".into(),
            width: Some(1),
            height: Some(2),
        };
        let mut m = message::Model {
            id: 41,
            chat_id: uuid::Uuid::from_u128(1),
            sender_id: Some(1),
            content: tricky.into(),
            client_id: Some(r#"{"direction":"received","#.into()),
            created_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("a valid time"),
            seq: 3,
            reply_to: None,
            edited_at: None,
            deleted: false,
            original_content: None,
        };
        for (quote, files) in [(None, vec![]), (Some(&quote), vec![file])] {
            m.reply_to = quote.map(|_| 40);
            let frames = message_frames(&m, quote, &files);
            let own = frames.own.expect("the sender's frame");
            assert_eq!(
                String::from_utf8_lossy(&own),
                String::from_utf8_lossy(&serialised(&m, quote, &files))
            );
            let others = String::from_utf8(frames.others.to_vec()).expect("JSON is UTF-8");
            assert!(others.contains(r#""data":{"direction":"received","content":"#));
            assert_eq!(others.replacen("received", "send", 1).as_bytes(), &own[..]);
        }
    }
}
