//! The messages that cross between actors: sessions and the REST handlers
//! to the ChatServer, the ChatServer to sessions (`Kick`), and the Redis
//! bridge to the ChatServer. Each actor's file handles some of them and
//! sends others; none imports another actor's file for its messages, so
//! the actors do not depend on each other.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use actix_http::ws::CloseCode;
use bytes::Bytes;

use super::membership::{ChatEntry, MembershipChange};
use super::protocol::{ChatId, UserId};
use super::socket::Outbox;
use crate::auth::TokenId;

/// Unique id of a session on this instance.
pub type SessionId = u64;

/// Frames for one conversation's members: `user`'s sessions get `own` (or
/// nothing when it is `None`), everyone else's `others`.
#[derive(Debug, Clone)]
pub struct ConversationFrames {
    pub chat: ChatId,
    /// The event's place in the conversation's order, for events that
    /// change its history (B7); `None` for the rest (read marks, typing).
    pub seq: Option<i64>,
    pub user: Option<UserId>,
    pub own: Option<Bytes>,
    pub others: Bytes,
}

impl ConversationFrames {
    /// The same frame for every member but `user`.
    pub fn to_others(chat: ChatId, user: UserId, frame: Bytes) -> Self {
        ConversationFrames {
            chat,
            seq: None,
            user: Some(user),
            own: None,
            others: frame,
        }
    }

    pub(super) fn frame_for(&self, user: UserId) -> Option<&Bytes> {
        if Some(user) == self.user {
            self.own.as_ref()
        } else {
            Some(&self.others)
        }
    }
}

/// Why a session could not register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("too many sessions for this user")]
    TooManySessions,
    /// The conversations were loaded too long before the registration: load them again.
    #[error("membership snapshot is stale")]
    Stale,
}

/// A session authorized as `user` and wants their events. A session that is
/// already registered (a re-authorization) moves in one step: either it is
/// registered under the new user and no longer under the old, or, refused,
/// it stays exactly where it was.
#[derive(Message)]
#[rtype(result = "Result<(), ConnectError>")]
pub struct Connect {
    pub session: SessionId,
    pub user: UserId,
    pub outbox: Outbox,
    pub kick: Recipient<Kick>,
    /// The user's conversations, loaded after membership change `since`
    /// (`Membership::seq`); used if this is their first session here.
    pub chats: Vec<ChatEntry>,
    pub since: u64,
    /// The `token_version` of the token the session authorized with.
    pub token_version: i32,
    /// That token's id, if it has one.
    pub token: Option<TokenId>,
    /// The people the user has a block with, either way (C10), loaded
    /// with `chats`.
    pub blocked_peers: Vec<UserId>,
    /// The user the session was authorized as until now, if any.
    pub previous: Option<UserId>,
}

/// The session registered by `Connect` has queued its
/// `authorization_response`: the pushes held since, and every later one,
/// may follow.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release {
    pub session: SessionId,
    pub user: UserId,
}

/// A session ended (or re-authorized as someone else).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    pub session: SessionId,
    pub user: UserId,
}

/// Frames for a conversation's members, here and on the other instances;
/// the session `skip` (the one that caused them) is left out.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver {
    pub frames: ConversationFrames,
    pub skip: Option<SessionId>,
}

/// What the writer did with one request: the answer to the session that
/// sent it (its acknowledgement or its error), and the frames the change
/// makes for the conversation's members, handed over together. The
/// ChatServer queues the answer and then delivers the frames, in one turn,
/// so a sender's acknowledgement and its own copy of the message are
/// queued side by side and usually leave in one write; and a session's
/// answers keep the order the writer gave them.
pub struct Outcome {
    pub answer: Option<(Outbox, Bytes)>,
    pub frames: Option<ConversationFrames>,
}

/// A committed batch's outcomes, in commit order: one message to the
/// ChatServer a batch, not one a request.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Committed {
    pub outcomes: Vec<Outcome>,
}

/// Frames that arrived from another instance: local delivery only.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeliverRemote {
    pub frames: ConversationFrames,
}

/// A membership change: applied here, and (`broadcast`) on the other
/// instances. Answered once applied, so a session that made the change can
/// rely on it before it answers its client.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ApplyMembership {
    pub change: Arc<MembershipChange>,
    pub broadcast: bool,
}

impl ApplyMembership {
    /// The one way a committed membership change is announced, by the
    /// WebSocket and REST alike: applied here and on every instance.
    pub fn everywhere(change: MembershipChange) -> Self {
        ApplyMembership {
            change: Arc::new(change),
            broadcast: true,
        }
    }
}

/// The conversations of users connected here, loaded again after change
/// `since` (after a Redis outage, when changes made elsewhere may have been
/// missed). Answers `false` when it came too late: load again.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct ReplaceChats {
    pub chats: HashMap<UserId, Vec<ChatEntry>>,
    pub since: u64,
}

/// Users whose conversations `ReplaceChats` should load: those connected here.
#[derive(Message)]
#[rtype(result = "Vec<UserId>")]
pub struct LocalUsers;

/// A user's online state changed elsewhere (an instance died, or Redis came
/// back and showed what happened meanwhile): tell the conversations `chats`
/// in which presence is pushed, on every instance (`everywhere`) or on this
/// one only.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TellPresence {
    pub user: UserId,
    pub online: bool,
    pub chats: Vec<ChatId>,
    pub everywhere: bool,
}

/// Some of the user's tokens were revoked (password change, deactivation,
/// sign-out): close their sessions that authorized with an older
/// `token_version` than `current_version`, or with the signed-out `token`,
/// here and on the other instances.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RevokeUser {
    pub user: UserId,
    /// The user's valid `token_version` now; `i32::MAX` closes every session.
    pub current_version: i32,
    /// One signed-out token: its sessions close whatever their version.
    pub token: Option<TokenId>,
    /// Whether to tell the other instances (false when the news came from them).
    pub broadcast: bool,
}

impl RevokeUser {
    /// Every session of `user` (a deactivated or deleted account).
    pub fn all(user: UserId, broadcast: bool) -> Self {
        Self::older_than(user, i32::MAX, broadcast)
    }

    /// The sessions of `user` on tokens older than `current_version`.
    pub fn older_than(user: UserId, current_version: i32, broadcast: bool) -> Self {
        RevokeUser {
            user,
            current_version,
            token: None,
            broadcast,
        }
    }

    /// The sessions of `user` on the signed-out `token`.
    pub fn token(user: UserId, token: TokenId, broadcast: bool) -> Self {
        RevokeUser {
            user,
            current_version: i32::MIN,
            token: Some(token),
            broadcast,
        }
    }
}

/// Two people have a block between them now, or no longer (PROTOCOL.md
/// C10): no messages in their direct conversation, no presence between
/// them anywhere. Recorded here and on the other instances. (From the bus
/// the pair and the conversation come as two envelopes, one set each.)
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetBlocked {
    pub pair: Option<(UserId, UserId)>,
    /// Their direct conversation, if they have one.
    pub chat: Option<ChatId>,
    pub blocked: bool,
    /// Whether to tell the other instances (false when the news came from them).
    pub broadcast: bool,
}

/// A frame for one user's sessions (an invitation, PROTOCOL.md C9), here
/// and on the other instances.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeliverToUser {
    pub user: UserId,
    pub frame: Bytes,
    /// A session of this instance not to send it to (the one that asked).
    pub skip: Option<SessionId>,
    /// Whether to tell the other instances (false when the news came from them).
    pub broadcast: bool,
}

/// Read marks (B4 `read`) stored in one batch that moved, for the
/// ChatServer to push: a conversation's marks go to each of its sessions
/// together, in one write to the connection.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReadsStored {
    pub reads: Vec<StoredRead>,
    /// Whether to tell the other instances (false when the news came from them).
    pub broadcast: bool,
}

/// One reader's mark, moved to `up_to` by the request of `session` (which
/// has its answer, and no push); `None` when it was asked on another
/// instance.
#[derive(Debug, Clone, Copy)]
pub struct StoredRead {
    pub chat: ChatId,
    pub user: UserId,
    pub up_to: i64,
    pub session: Option<SessionId>,
    /// Pushed to the other members where marks are (C7); false when its
    /// reader's fan-out budget did not cover that: to their own sessions only.
    pub shared: bool,
}

/// The instance is shutting down: close every session with 1001.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseAll;

/// How many users and sessions are registered here (for tests and metrics).
#[derive(Message)]
#[rtype(result = "ServerStats")]
pub struct Stats;

/// Sizes of the ChatServer's maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, MessageResponse)]
pub struct ServerStats {
    pub users: usize,
    pub sessions: usize,
    /// Conversations with members connected here.
    pub rooms: usize,
    /// Users gone from here whose departure is not announced yet
    /// (`PRESENCE_GRACE`).
    pub leaving: usize,
}

/// The ids of the tokens the sessions here authorized with: what the
/// revocation sweep's full round checks against the signed-out tokens.
#[derive(Message)]
#[rtype(result = "Vec<TokenId>")]
pub struct OnlineTokens;

/// What the revocation sweep read from the database: close the sessions
/// here that it revokes. Says nothing to the other instances (each sweeps).
#[derive(Message, Default)]
#[rtype(result = "()")]
pub struct Recheck {
    /// Users with the lowest `token_version` still valid (`i32::MAX`: none).
    pub users: Vec<(UserId, i32)>,
    /// Signed-out tokens, each with its user.
    pub tokens: Vec<(UserId, TokenId)>,
}

/// Ends a session from outside, with a close frame saying why.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kick {
    pub(super) code: CloseCode,
    pub(super) reason: &'static str,
}

impl Kick {
    /// The client stopped reading and its queue filled up.
    pub fn slow_consumer() -> Self {
        Kick {
            code: CloseCode::Policy,
            reason: "slow consumer: outgoing queue full",
        }
    }

    /// The user's tokens were revoked.
    pub fn revoked() -> Self {
        Kick {
            code: CloseCode::Policy,
            reason: "token revoked",
        }
    }

    /// The token the session authorized with expired.
    pub fn token_expired() -> Self {
        Kick {
            code: CloseCode::Policy,
            reason: "token expired",
        }
    }

    /// The server is shutting down.
    pub fn going_away() -> Self {
        Kick {
            code: CloseCode::Away,
            reason: "server shutting down",
        }
    }
}
