//! The conversation log (PROTOCOL.md B7): every event that changes a
//! conversation's history has a `seq`, 1, 2, 3… with no gaps, given in the
//! transaction that stores it (`writer.rs`). This module turns stored events
//! into the frames sessions receive, live and through `sync`, from one
//! function each, so the two are the same bytes; and it fills the holes the
//! ChatServer finds in a conversation's live stream from the database.

use std::time::Duration;

use actix::prelude::*;
use entity::message;
use sea_orm::{DatabaseConnection, DbErr};
use tokio::sync::mpsc;

use super::protocol::{
    format_time, ChatId, Direction, MessageAck, MessageBody, MessagePush, Reply, ServerEvent,
    SyncPage, UserId,
};
use super::server::ConversationFrames;
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

/// The inner `data` of a `message` frame, as `direction` sees it.
fn message_body(m: &message::Model, direction: Direction) -> MessageBody {
    MessageBody {
        direction,
        content: m.content.clone(),
        time: format_time(&m.created_at),
        id: m.id,
        sender: m.sender_id,
        client_id: m.client_id.clone(),
    }
}

/// The frames of a stored message for its conversation's members: `send`
/// for the sender's sessions, `received` for everyone else's.
pub fn message_frames(m: &message::Model) -> ConversationFrames {
    let pk = ChatId(m.chat_id);
    let frame = |direction| {
        let body = message_body(m, direction);
        ServerEvent::Message(MessagePush {
            pk,
            seq: m.seq,
            data: &body,
        })
        .to_json()
    };
    ConversationFrames {
        chat: pk,
        seq: Some(m.seq),
        user: m.sender_id.map(UserId),
        own: Some(frame(Direction::Send)),
        others: frame(Direction::Received),
    }
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
    events: &[message::Model],
    latest: i64,
    has_more: bool,
) -> bytes::Bytes {
    let bodies: Vec<(i64, MessageBody)> = events
        .iter()
        .map(|m| {
            let direction = if m.sender_id == Some(viewer.0) {
                Direction::Send
            } else {
                Direction::Received
            };
            (m.seq, message_body(m, direction))
        })
        .collect();
    let events = bodies
        .iter()
        .map(|(seq, body)| {
            ServerEvent::Message(MessagePush {
                pk: chat,
                seq: *seq,
                data: body,
            })
        })
        .collect();
    let page = SyncPage {
        pk: chat,
        events,
        seq: latest,
        has_more,
    };
    ServerEvent::SyncResponse(Reply::Ok(page)).to_json()
}

/// The events of `chat` after `after_seq`, oldest first (at most `limit`),
/// whether there are more, and the conversation's latest `seq`.
pub async fn events_after(
    db: &DatabaseConnection,
    chat: ChatId,
    after_seq: i64,
    limit: u64,
) -> Result<(Vec<message::Model>, bool, i64), DbErr> {
    let latest = store::latest_seq(db, chat).await?;
    let (rows, has_more) = store::messages_by_seq(db, chat, after_seq, None, limit).await?;
    // Events committed between the two reads: the latest is at least theirs.
    let latest = rows.last().map_or(latest, |m| latest.max(m.seq));
    Ok((rows, has_more, latest))
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
                let events = store::messages_by_seq(&db, chat, after, Some(until), limit)
                    .await
                    .map(|(rows, _)| rows.iter().map(message_frames).collect());
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
