//! The bridge between instances. With one instance (no Redis configured) it
//! is a no-op and every event is delivered in-process by the ChatServer;
//! with Redis (one server or a cluster: `target`), `redis::RedisBridge`
//! carries events to the other instances.

mod envelope;
mod link;
mod names;
pub mod redis;
mod registry;
pub mod target;

use std::sync::Arc;
use std::time::Duration;

use actix::Recipient;

use crate::auth::TokenId;
use crate::chat::membership::MembershipChange;
use crate::chat::messages::ConversationFrames;
use crate::chat::protocol::{ChatId, UserId};

/// What crosses from one instance to the others.
#[derive(Debug, Clone)]
pub enum BusEvent {
    /// Frames for a conversation's members.
    Conversation(ConversationFrames),
    /// A conversation gained its first member here (`open`) or lost its
    /// last: its events are wanted here, or no longer.
    Room { chat: ChatId, open: bool },
    /// Who joined or left a conversation.
    Membership(Arc<MembershipChange>),
    /// A user came online or went offline: the conversations `notify` are
    /// told; with `registry`, this instance's own record of the user changed
    /// (their first session here opened, or their last one closed).
    Presence {
        user: UserId,
        online: bool,
        notify: Vec<ChatId>,
        registry: bool,
    },
    /// Close this user's sessions older than `current_version`, or on the
    /// signed-out `token`, everywhere.
    Revoke {
        user: UserId,
        current_version: i32,
        token: Option<TokenId>,
    },
    /// A frame for one user's sessions, wherever they are.
    ToUser { user: UserId, frame: bytes::Bytes },
    /// A conversation's read marks, stored together: each reader, how far,
    /// and its `read` frame (for instances that take frames only); for
    /// `everyone` in the conversation, or only for the readers' own
    /// sessions (a group too large for presence, C7).
    Reads {
        chat: ChatId,
        reads: Vec<(UserId, i64, bytes::Bytes)>,
        everyone: bool,
    },
    /// Two people have a block between them now, or no longer; `chat` is
    /// their direct conversation, if they have one.
    Blocked {
        pair: (UserId, UserId),
        chat: Option<ChatId>,
        blocked: bool,
    },
}

/// Longest wait for the bus to confirm earlier subscriptions.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the ChatServer hands events bound for other instances.
#[derive(Clone, Default)]
pub enum Bus {
    /// One instance: nothing to forward.
    #[default]
    Local,
    /// Several instances sharing Redis.
    Redis {
        publish: Recipient<redis::Publish>,
        barrier: Recipient<redis::Barrier>,
    },
}

impl Bus {
    /// Forwards an event to the other instances (nothing to do when alone).
    pub fn publish(&self, event: BusEvent) {
        match self {
            Bus::Local => drop(event),
            Bus::Redis { publish, .. } => publish.do_send(redis::Publish(event)),
        }
    }

    /// Waits until every subscription asked for before this call is in
    /// place (at most `BARRIER_TIMEOUT`; at once while Redis is down), so
    /// events published from now on reach this instance.
    pub async fn barrier(&self) {
        if let Bus::Redis { barrier, .. } = self {
            let _ = tokio::time::timeout(BARRIER_TIMEOUT, barrier.send(redis::Barrier)).await;
        }
    }
}
