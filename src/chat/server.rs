//! `ChatServer`: who is connected to this instance, and routing of events to
//! their sessions. It owns only in-memory state and awaits nothing: a frame
//! to a session is a non-blocking push into that session's bounded outbox.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;

use super::presence::Presence;
use super::protocol::{ChatId, PresenceEvent, ServerEvent, UserId};
use super::session::Kick;
use super::socket::{Outbox, Queued};
use crate::bus::{Bus, BusEvent};
use crate::metrics::Metrics;

/// Unique id of a session on this instance.
pub type SessionId = u64;

struct SessionLink {
    outbox: Outbox,
    /// Closes the session with a reason.
    kick: Recipient<Kick>,
    /// The `token_version` of the token this session authorized with.
    token_version: i32,
}

struct UserEntry {
    sessions: HashMap<SessionId, SessionLink>,
    /// (conversation, other member): whom to tell about presence changes.
    contacts: Vec<(ChatId, UserId)>,
}

/// Routes events to this instance's sessions and, through the bus, to the others.
pub struct ChatServer {
    users: HashMap<UserId, UserEntry>,
    presence: Arc<Presence>,
    bus: Bus,
    max_sessions_per_user: usize,
    metrics: Metrics,
}

impl ChatServer {
    pub fn new(
        presence: Arc<Presence>,
        bus: Bus,
        max_sessions_per_user: usize,
        metrics: Metrics,
    ) -> Self {
        ChatServer {
            users: HashMap::new(),
            presence,
            bus,
            max_sessions_per_user,
            metrics,
        }
    }

    /// Pushes a frame to every local session of `user`; sessions whose queue
    /// overflowed are dropped from the map (their outbox is already closing).
    fn deliver_local(&mut self, user: UserId, frame: &Bytes) {
        let Some(entry) = self.users.get_mut(&user) else {
            return;
        };
        let mut overflowed = Vec::new();
        for (id, link) in &entry.sessions {
            match link.outbox.send_text(frame.clone()) {
                Queued::Yes => self.metrics.frames_out(1),
                Queued::Overflow => {
                    self.metrics.outbox_overflow();
                    link.kick.do_send(Kick::slow_consumer());
                    overflowed.push(*id);
                }
                Queued::Closed => {}
            }
        }
        for id in overflowed {
            self.remove_session(user, id);
        }
    }

    /// Delivers frames to their users' sessions on this instance only.
    fn deliver_here(&mut self, frames: &[(UserId, Bytes)]) {
        for (user, frame) in frames {
            self.deliver_local(*user, frame);
        }
    }

    /// Delivers frames to their users here, and hands them to the bus for the
    /// users' sessions elsewhere.
    fn deliver(&mut self, frames: Vec<(UserId, Bytes)>) {
        self.deliver_here(&frames);
        self.bus.publish(BusEvent::Frames(frames));
    }

    fn presence_frames(
        user: UserId,
        contacts: &[(ChatId, UserId)],
        online: bool,
    ) -> Vec<(UserId, Bytes)> {
        contacts
            .iter()
            .map(|(chat, contact)| {
                let event = ServerEvent::Presence(PresenceEvent {
                    pk: *chat,
                    user_id: user.0,
                    online,
                });
                (*contact, event.to_json())
            })
            .collect()
    }

    fn remove_session(&mut self, user: UserId, session: SessionId) {
        let Some(entry) = self.users.get_mut(&user) else {
            return;
        };
        if entry.sessions.remove(&session).is_none() || !entry.sessions.is_empty() {
            return;
        }
        let entry = self
            .users
            .remove(&user)
            .expect("the entry was just looked up");
        self.presence.set_local(user, false);
        self.bus.publish(BusEvent::Presence {
            user,
            online: false,
        });
        if !self.presence.is_online(user) {
            let frames = Self::presence_frames(user, &entry.contacts, false);
            self.deliver(frames);
        }
    }
}

impl Actor for ChatServer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Every session registers here; the default mailbox of 16 would make
        // their `send`s wait on each other.
        ctx.set_mailbox_capacity(4096);
    }
}

/// Why a session could not register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("too many sessions for this user")]
    TooManySessions,
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
    pub contacts: Vec<(ChatId, UserId)>,
    /// The `token_version` of the token the session authorized with.
    pub token_version: i32,
    /// The user the session was authorized as until now, if any.
    pub previous: Option<UserId>,
}

impl Handler<Connect> for ChatServer {
    type Result = Result<(), ConnectError>;

    fn handle(&mut self, msg: Connect, _: &mut Context<Self>) -> Self::Result {
        let link = SessionLink {
            outbox: msg.outbox,
            kick: msg.kick,
            token_version: msg.token_version,
        };
        if let Some(entry) = self.users.get_mut(&msg.user) {
            let already_here = entry.sessions.contains_key(&msg.session);
            if !already_here && entry.sessions.len() >= self.max_sessions_per_user {
                return Err(ConnectError::TooManySessions);
            }
            entry.sessions.insert(msg.session, link);
            entry.contacts = msg.contacts;
        } else {
            self.users.insert(
                msg.user,
                UserEntry {
                    sessions: HashMap::from([(msg.session, link)]),
                    contacts: msg.contacts,
                },
            );
            let was_online = self.presence.is_online(msg.user);
            self.presence.set_local(msg.user, true);
            self.bus.publish(BusEvent::Presence {
                user: msg.user,
                online: true,
            });
            if !was_online {
                let frames = Self::presence_frames(msg.user, &self.users[&msg.user].contacts, true);
                self.deliver(frames);
            }
        }
        if let Some(previous) = msg.previous.filter(|p| *p != msg.user) {
            self.remove_session(previous, msg.session);
        }
        Ok(())
    }
}

/// A session ended (or re-authorized as someone else).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    pub session: SessionId,
    pub user: UserId,
}

impl Handler<Disconnect> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, _: &mut Context<Self>) {
        self.remove_session(msg.user, msg.session);
    }
}

/// Frames for users, each already rendered for its recipient.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver {
    pub frames: Vec<(UserId, Bytes)>,
}

impl Handler<Deliver> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: Deliver, _: &mut Context<Self>) {
        self.deliver(msg.frames);
    }
}

/// Frames that arrived from another instance: local delivery only.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeliverRemote {
    pub frames: Vec<(UserId, Bytes)>,
}

impl Handler<DeliverRemote> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: DeliverRemote, _: &mut Context<Self>) {
        self.deliver_here(&msg.frames);
    }
}

/// A user's online state changed elsewhere (an instance died, or Redis came
/// back and showed what happened meanwhile): tell their `contacts`, on every
/// instance (`everywhere`) or on this one only.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TellPresence {
    pub user: UserId,
    pub online: bool,
    pub contacts: Vec<(ChatId, UserId)>,
    pub everywhere: bool,
}

impl Handler<TellPresence> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: TellPresence, _: &mut Context<Self>) {
        let frames = Self::presence_frames(msg.user, &msg.contacts, msg.online);
        if msg.everywhere {
            self.deliver(frames);
        } else {
            self.deliver_here(&frames);
        }
    }
}

/// Some of the user's tokens were revoked (password change, deactivation):
/// close their sessions that authorized with an older `token_version` than
/// `current_version`, here and on the other instances.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RevokeUser {
    pub user: UserId,
    /// The user's valid `token_version` now; `i32::MAX` closes every session.
    pub current_version: i32,
    /// Whether to tell the other instances (false when the news came from them).
    pub broadcast: bool,
}

impl RevokeUser {
    /// Every session of `user` (a deactivated or deleted account).
    pub fn all(user: UserId, broadcast: bool) -> Self {
        RevokeUser {
            user,
            current_version: i32::MAX,
            broadcast,
        }
    }
}

impl Handler<RevokeUser> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: RevokeUser, _: &mut Context<Self>) {
        if let Some(entry) = self.users.get(&msg.user) {
            for link in entry.sessions.values() {
                if link.token_version < msg.current_version {
                    link.kick.do_send(Kick::revoked());
                }
            }
        }
        if msg.broadcast {
            self.bus.publish(BusEvent::Revoke {
                user: msg.user,
                current_version: msg.current_version,
            });
        }
    }
}

/// The instance is shutting down: close every session with 1001.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseAll;

impl Handler<CloseAll> for ChatServer {
    type Result = usize;

    fn handle(&mut self, _: CloseAll, _: &mut Context<Self>) -> usize {
        let mut count = 0;
        for entry in self.users.values() {
            for link in entry.sessions.values() {
                link.kick.do_send(Kick::going_away());
                count += 1;
            }
        }
        count
    }
}

/// How many users and sessions are registered here (for tests and metrics).
#[derive(Message)]
#[rtype(result = "ServerStats")]
pub struct Stats;

/// Sizes of the ChatServer's maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, MessageResponse)]
pub struct ServerStats {
    pub users: usize,
    pub sessions: usize,
}

impl Handler<Stats> for ChatServer {
    type Result = ServerStats;

    fn handle(&mut self, _: Stats, _: &mut Context<Self>) -> ServerStats {
        ServerStats {
            users: self.users.len(),
            sessions: self.users.values().map(|e| e.sessions.len()).sum(),
        }
    }
}

/// Who is connected here, each with the oldest `token_version` among their
/// sessions: what the revocation sweep checks against the database.
#[derive(Message)]
#[rtype(result = "Vec<(UserId, i32)>")]
pub struct OnlineVersions;

impl Handler<OnlineVersions> for ChatServer {
    type Result = MessageResult<OnlineVersions>;

    fn handle(&mut self, _: OnlineVersions, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.users
                .iter()
                .filter_map(|(user, e)| {
                    let oldest = e.sessions.values().map(|l| l.token_version).min()?;
                    Some((*user, oldest))
                })
                .collect(),
        )
    }
}
