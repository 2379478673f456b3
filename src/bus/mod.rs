//! The bridge between instances. With one instance (no Redis configured) it
//! is a no-op and every event is delivered in-process by the ChatServer;
//! with Redis, `redis::RedisBridge` carries events to the other instances.

pub mod redis;

use actix::Recipient;
use bytes::Bytes;

use crate::chat::protocol::UserId;

/// What crosses from one instance to the others.
#[derive(Debug, Clone)]
pub enum BusEvent {
    /// Frames for users, each rendered for its recipient.
    Frames(Vec<(UserId, Bytes)>),
    /// A user's first session here opened, or their last one closed.
    Presence { user: UserId, online: bool },
    /// Close this user's sessions older than `current_version` everywhere.
    Revoke { user: UserId, current_version: i32 },
}

/// Where the ChatServer hands events bound for other instances.
#[derive(Clone, Default)]
pub enum Bus {
    /// One instance: nothing to forward.
    #[default]
    Local,
    /// Several instances sharing Redis.
    Redis(Recipient<redis::Publish>),
}

impl Bus {
    /// Forwards an event to the other instances (nothing to do when alone).
    pub fn publish(&self, event: BusEvent) {
        match self {
            Bus::Local => drop(event),
            Bus::Redis(bridge) => bridge.do_send(redis::Publish(event)),
        }
    }
}
