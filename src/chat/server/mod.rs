//! `ChatServer`: who is connected to this instance, which conversations they
//! are in, and routing of events to their sessions. It owns only in-memory
//! state and awaits nothing: a frame to a session is a non-blocking push into
//! that session's bounded outbox.
//!
//! Routing is by conversation: each conversation with a member connected
//! here is a room holding those members, so a message costs one push per
//! local session, whatever the group's size, and one bus event for all the
//! other instances (DESIGN.md "Groups").
//!
//! Each room also keeps its conversation's order (B7): events that carry a
//! `seq` reach the room's sessions in `seq` order, each once. One that
//! arrives ahead of a hole (an earlier event committed through another
//! instance is still on its way) is held until the hole is filled, by the
//! bus or, after `HOLE_WAIT`, from the database (`log::HoleFiller`).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::CloseCode;
use bytes::Bytes;

use super::blocklist::Blocklist;
use super::log::{Filled, HoleFiller, HELD_LIMIT, HOLE_WAIT, MAX_HELD};
use super::membership::{ChatEntry, Membership, MembershipChange};
use super::messages::{
    ApplyMembership, CloseAll, Committed, Connect, ConnectError, ConversationFrames, Deliver,
    DeliverRemote, DeliverToUser, Disconnect, Kick, LocalUsers, OnlineTokens, Recheck, Release,
    ReplaceChats, RevokeUser, ServerStats, SessionId, SetBlocked, Stats, TellPresence,
};
use super::presence::Presence;
use super::protocol::{ChatId, PresenceEvent, ServerEvent, UserId};
use super::socket::{Outbox, Queued};
use crate::auth::TokenId;
use crate::bus::{Bus, BusEvent};
use crate::metrics::Metrics;

mod handlers;
mod order;
mod reads;
#[cfg(test)]
mod tests;

use handlers::*;
use order::*;

/// How many membership changes are kept for registrations whose snapshot
/// was loaded before them (a registration takes milliseconds; thousands of
/// changes in that time would have it load again).
const RECENT_CHANGES: usize = 4096;

struct SessionLink {
    outbox: Outbox,
    /// Closes the session with a reason.
    kick: Recipient<Kick>,
    /// The `token_version` of the token this session authorized with.
    token_version: i32,
    /// That token's id, if it has one (a sign-out closes its sessions).
    token: Option<TokenId>,
    /// While the session is authorizing (`Connect` until `Release`), the
    /// frames for it wait here, so the client reads its
    /// `authorization_response` before any push. (A cell: frames are pushed
    /// through shared borrows of the session table.)
    held: Option<Box<RefCell<Vec<Bytes>>>>,
}

struct UserEntry {
    sessions: FastMap<SessionId, SessionLink>,
}

/// The tables every delivery looks up. Their keys are ours (ids the
/// database or this process assigned), never a client's choice, so they
/// need no flood-resistant hash: foldhash instead of SipHash.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Routes events to this instance's sessions and, through the bus, to the others.
pub struct ChatServer {
    users: FastMap<UserId, UserEntry>,
    rooms: FastMap<ChatId, Room>,
    membership: Arc<Membership>,
    /// The latest membership changes applied, with their numbers.
    recent: VecDeque<(u64, Arc<MembershipChange>)>,
    seq: u64,
    presence: Arc<Presence>,
    bus: Bus,
    holes: HoleFiller,
    max_sessions_per_user: usize,
    metrics: Metrics,
    /// Users whose last session here closed, with the conversations to
    /// tell: announced offline once `PRESENCE_GRACE` has passed without
    /// them coming back.
    leaving: HashMap<UserId, (Instant, Vec<ChatId>)>,
    /// Who has a block with whom, for the users here (C10).
    blocks: Blocklist,
}

/// How long a user whose last session closed still counts as online: a
/// reload or a dropped mobile connection is no news, and a client that
/// reconnects in a loop costs its members at most one offline and one
/// online per period, not two frames per cycle.
pub const PRESENCE_GRACE: Duration = Duration::from_secs(3);

/// How often departures past their grace are announced.
const DEPARTURE_TICK: Duration = Duration::from_millis(500);

impl ChatServer {
    pub fn new(
        presence: Arc<Presence>,
        membership: Arc<Membership>,
        bus: Bus,
        holes: HoleFiller,
        max_sessions_per_user: usize,
        metrics: Metrics,
    ) -> Self {
        ChatServer {
            users: FastMap::default(),
            rooms: FastMap::default(),
            seq: membership.seq(),
            membership,
            recent: VecDeque::new(),
            presence,
            bus,
            holes,
            max_sessions_per_user,
            metrics,
            leaving: HashMap::new(),
            blocks: Blocklist::default(),
        }
    }

    /// Pushes a frame to every local session of `user` but `skip`; sessions
    /// whose queue overflowed are noted in `overflowed` (their outbox is
    /// already closing).
    fn push(
        &self,
        user: UserId,
        skip: Option<SessionId>,
        frame: &Bytes,
        overflowed: &mut Vec<(UserId, SessionId)>,
    ) {
        let Some(entry) = self.users.get(&user) else {
            return;
        };
        for (id, link) in &entry.sessions {
            if Some(*id) != skip {
                self.push_session(user, *id, link, &[frame], overflowed);
            }
        }
    }

    /// Queues `frames` for one session, together (one wake-up of its
    /// connection).
    fn push_session(
        &self,
        user: UserId,
        id: SessionId,
        link: &SessionLink,
        frames: &[&Bytes],
        overflowed: &mut Vec<(UserId, SessionId)>,
    ) {
        if frames.is_empty() {
            return;
        }
        let held = link.held.as_ref().map(|h| h.borrow_mut());
        let queued = match held {
            // As many as its outbox holds, the answer aside: beyond that the
            // session is as slow as one whose outbox is full.
            Some(mut held) if held.len() + frames.len() < link.outbox.capacity() => {
                held.extend(frames.iter().map(|&frame| frame.clone()));
                return;
            }
            Some(_) => {
                link.outbox
                    .close(CloseCode::Policy, "slow consumer: outgoing queue full");
                Queued::Overflow
            }
            None => link.outbox.send_texts(frames),
        };
        match queued {
            Queued::Yes => self.metrics.frames_out(frames.len() as u64),
            Queued::Overflow => {
                self.metrics.outbox_overflow();
                link.kick.do_send(Kick::slow_consumer());
                overflowed.push((user, id));
            }
            Queued::Closed => {}
        }
    }

    /// Drops the sessions that overflowed while frames were being pushed.
    fn drop_overflowed(&mut self, overflowed: Vec<(UserId, SessionId)>) {
        for (user, session) in overflowed {
            self.remove_session(user, session);
        }
    }

    /// Delivers frames to a conversation's members on this instance only,
    /// except the session `skip`; events with a `seq` in their order.
    fn deliver_here(
        &mut self,
        frames: ConversationFrames,
        skip: Option<SessionId>,
        ctx: &mut Context<Self>,
    ) {
        let Some(seq) = frames.seq else {
            return self.push_to_room(&frames, skip);
        };
        let chat = frames.chat;
        let Some(room) = self.rooms.get_mut(&chat) else {
            return;
        };
        let due = room.order.accept(frames, seq);
        let waiting = room.order.held.len();
        for frames in &due {
            self.push_to_room(frames, skip);
        }
        if waiting > MAX_HELD {
            self.fill_hole(chat);
        } else if waiting > 0 && (waiting == 1 || !due.is_empty()) {
            // A new hole: give the bus a moment to fill it.
            if let Some((last, until)) = self.rooms.get(&chat).and_then(|r| r.order.hole()) {
                ctx.run_later(HOLE_WAIT, move |act, _| {
                    act.hole_timed_out(chat, last, until)
                });
            }
        }
    }

    /// The hole after `last` (before `until`) was not filled in time: load
    /// it from the database, unless it has closed meanwhile.
    fn hole_timed_out(&mut self, chat: ChatId, last: i64, until: i64) {
        let still_open = self
            .rooms
            .get(&chat)
            .and_then(|r| r.order.hole())
            .is_some_and(|(l, u)| l == last && u <= until);
        if still_open {
            self.fill_hole(chat);
        }
    }

    /// Asks the database for a room's missing events (once at a time).
    fn fill_hole(&mut self, chat: ChatId) {
        let Some(room) = self.rooms.get_mut(&chat) else {
            return;
        };
        let Some((after, until)) = room.order.hole() else {
            return;
        };
        if room.order.filling {
            return;
        }
        room.order.filling = true;
        self.metrics.hole_filled();
        if !self.holes.request(chat, after, until) {
            tracing::warn!(%chat, after, until, "too many holes waiting for the database; sessions will sync");
            room.order.filling = false;
            let due = room.order.skip_hole();
            for frames in &due {
                self.push_to_room(frames, None);
            }
        }
    }

    /// Pushes frames to every local session of their conversation's room
    /// but `skip`.
    fn push_to_room(&mut self, frames: &ConversationFrames, skip: Option<SessionId>) {
        self.push_to_room_but(frames, skip, None);
    }

    /// `push_to_room`, and when the frames are about `subject`'s presence,
    /// not to those who have a block with them (C10).
    fn push_to_room_but(
        &mut self,
        frames: &ConversationFrames,
        skip: Option<SessionId>,
        subject: Option<UserId>,
    ) {
        let Some(room) = self.rooms.get(&frames.chat) else {
            return;
        };
        let mut overflowed = Vec::new();
        for user in &room.users {
            if subject.is_some_and(|s| self.blocks.hides(*user, s)) {
                continue;
            }
            let (Some(frame), Some(entry)) = (frames.frame_for(*user), self.users.get(user)) else {
                continue;
            };
            for (id, link) in &entry.sessions {
                if Some(*id) != skip {
                    self.push_session(*user, *id, link, &[frame], &mut overflowed);
                }
            }
        }
        self.drop_overflowed(overflowed);
    }

    /// Delivers frames to a conversation's members here, and hands them to
    /// the bus for the members elsewhere.
    fn deliver(
        &mut self,
        frames: ConversationFrames,
        skip: Option<SessionId>,
        ctx: &mut Context<Self>,
    ) {
        self.bus.publish(BusEvent::Conversation(frames.clone()));
        self.deliver_here(frames, skip, ctx);
    }

    /// Closes the sessions of `user` here on a `token_version` below
    /// `valid`, or on the signed-out `token`.
    fn kick_revoked(&self, user: UserId, valid: i32, token: Option<TokenId>) {
        let Some(entry) = self.users.get(&user) else {
            return;
        };
        let revoked =
            |l: &&SessionLink| l.token_version < valid || (token.is_some() && l.token == token);
        let mut closed = 0;
        for link in entry.sessions.values().filter(revoked) {
            link.kick.do_send(Kick::revoked());
            closed += 1;
        }
        if closed > 0 {
            tracing::info!(
                user = user.0,
                sessions = closed,
                "tokens revoked; closing the sessions on them"
            );
        }
    }

    /// Tells the conversations `chats` (those of them with members here)
    /// that `user` came online or went offline.
    fn tell_presence_here(&mut self, user: UserId, online: bool, chats: &[ChatId]) {
        for chat in chats {
            if !self.rooms.contains_key(chat) {
                continue;
            }
            let frame = ServerEvent::Presence(PresenceEvent {
                pk: *chat,
                user_id: user.0,
                online,
            })
            .to_json();
            let frames = ConversationFrames::to_others(*chat, user, frame);
            self.push_to_room_but(&frames, None, Some(user));
        }
    }

    /// The conversations of `chats` in which presence is pushed.
    fn presence_chats(&self, chats: impl IntoIterator<Item = ChatId>) -> Vec<ChatId> {
        chats
            .into_iter()
            .filter(|c| self.rooms.get(c).is_some_and(|r| r.presence))
            .collect()
    }

    /// Adds `user` to the conversation's room; returns whether the room
    /// was opened (its channel is only now being subscribed). A room opened
    /// with the conversation's `seq` as loaded goes on from there.
    fn join_room(&mut self, user: UserId, chat: ChatId, presence: bool, seq: Option<i64>) -> bool {
        let mut opened = false;
        let room = self.rooms.entry(chat).or_insert_with(|| {
            opened = true;
            self.bus.publish(BusEvent::Room { chat, open: true });
            Room {
                users: HashSet::new(),
                presence,
                order: Order::starting_at(seq),
            }
        });
        room.users.insert(user);
        opened
    }

    /// Records a direct conversation's block for the users here who are in
    /// it: no messages taken, no presence pushed.
    fn set_blocked(&mut self, chat: ChatId, blocked: bool) {
        self.blocks.set_chat(chat, blocked);
        if let Some(room) = self.rooms.get_mut(&chat) {
            room.presence = !blocked;
            self.membership.set_blocked(chat, blocked);
        }
    }

    fn leave_room(&mut self, user: UserId, chat: ChatId) {
        let Some(room) = self.rooms.get_mut(&chat) else {
            return;
        };
        room.users.remove(&user);
        if room.users.is_empty() {
            self.rooms.remove(&chat);
            self.membership.set_blocked(chat, false);
            self.membership.set_audience(chat, None);
            self.bus.publish(BusEvent::Room { chat, open: false });
        }
    }

    fn remove_session(&mut self, user: UserId, session: SessionId) {
        let Some(entry) = self.users.get_mut(&user) else {
            return;
        };
        if entry.sessions.remove(&session).is_none() || !entry.sessions.is_empty() {
            return;
        }
        self.users.remove(&user);
        self.blocks.forget(user);
        let chats = self.membership.remove_user(user);
        let notify = self.presence_chats(chats.iter().copied());
        for chat in chats {
            self.leave_room(user, chat);
        }
        self.leaving.insert(user, (Instant::now(), notify));
    }

    /// Announces offline the users who left more than `PRESENCE_GRACE` ago
    /// and did not come back.
    fn announce_departures(&mut self) {
        let now = Instant::now();
        let due: Vec<UserId> = self
            .leaving
            .iter()
            .filter(|(_, (since, _))| now.duration_since(*since) >= PRESENCE_GRACE)
            .map(|(user, _)| *user)
            .collect();
        for user in due {
            if let Some((_, notify)) = self.leaving.remove(&user) {
                self.announce_offline(user, notify);
            }
        }
    }

    fn announce_offline(&mut self, user: UserId, notify: Vec<ChatId>) {
        self.presence.set_local(user, false);
        let notify = if self.presence.is_online(user) {
            Vec::new()
        } else {
            self.tell_presence_here(user, false, &notify);
            notify
        };
        self.bus.publish(BusEvent::Presence {
            user,
            online: false,
            notify,
            registry: true,
        });
    }

    /// Registers the first session of `user` here, with their conversations
    /// as loaded after change number `since`; refused when changes the
    /// snapshot may have missed are no longer known.
    fn register_user(
        &mut self,
        user: UserId,
        mut chats: Vec<ChatEntry>,
        since: u64,
        blocked_peers: Vec<UserId>,
    ) -> Result<(), ConnectError> {
        let set = self
            .catch_up(user, &chats, since)
            .ok_or(ConnectError::Stale)?;
        self.blocks.register(user, blocked_peers, &mut chats);
        let loaded: HashMap<ChatId, &ChatEntry> = chats.iter().map(|c| (c.chat, c)).collect();
        for entry in &chats {
            if entry.blocked {
                self.membership.set_blocked(entry.chat, true);
            }
            self.membership
                .set_audience(entry.chat, Some(entry.audience));
        }
        for chat in &set {
            let entry = loaded.get(chat);
            let flag = entry.is_none_or(|c| c.presence);
            self.join_room(user, *chat, flag, entry.map(|c| c.seq));
        }
        let notify = self.presence_chats(set.iter().copied());
        self.membership.set_user(user, set);
        // Back within the grace: still online, nothing to announce.
        self.leaving.remove(&user);
        let was_online = self.presence.is_online(user);
        self.presence.set_local(user, true);
        let notify = if was_online {
            Vec::new()
        } else {
            self.tell_presence_here(user, true, &notify);
            notify
        };
        self.bus.publish(BusEvent::Presence {
            user,
            online: true,
            notify,
            registry: true,
        });
        Ok(())
    }

    /// `user`'s conversations: a snapshot loaded after change `since`, with
    /// the changes since applied on top; `None` if some of them are no
    /// longer known (load again).
    fn catch_up(
        &self,
        user: UserId,
        snapshot: &[ChatEntry],
        since: u64,
    ) -> Option<HashSet<ChatId>> {
        let snapshot = snapshot.iter().map(|c| c.chat).collect();
        replay(&self.recent, self.seq, user, snapshot, since)
    }

    /// Applies a membership change here: pushes to the removed and to the
    /// members, the rooms and the members' conversation sets updated.
    ///
    /// A member who joins a conversation with no one else here gets the push
    /// only once its channel is subscribed: whatever they fetch after it,
    /// every later message reaches them live.
    fn apply_membership(&mut self, change: Arc<MembershipChange>, ctx: &mut Context<Self>) {
        let mut overflowed = Vec::new();
        if let Some(push) = &change.removed_push {
            for user in &change.removed {
                self.push(*user, None, push, &mut overflowed);
            }
        }
        let mut deferred = Vec::new();
        for user in self.membership.apply(&change) {
            if change.removed.contains(&user) {
                self.leave_room(user, change.chat);
            }
            if change.added.contains(&user)
                && self.join_room(user, change.chat, change.presence, None)
            {
                deferred.push(user);
            }
        }
        if let Some(room) = self.rooms.get_mut(&change.chat) {
            room.presence = change.presence;
        }
        if let (Some(push), Some(room)) = (&change.push, self.rooms.get(&change.chat)) {
            for user in room.users.iter().filter(|u| !deferred.contains(u)) {
                self.push(*user, None, push, &mut overflowed);
            }
            if !deferred.is_empty() {
                let (bus, push) = (self.bus.clone(), push.clone());
                let subscribed = async move { bus.barrier().await };
                ctx.spawn(subscribed.into_actor(self).map(move |(), act, _| {
                    let mut overflowed = Vec::new();
                    for user in deferred {
                        act.push(user, None, &push, &mut overflowed);
                    }
                    act.drop_overflowed(overflowed);
                }));
            }
        }
        self.seq += 1;
        // The log needs who joined and left, not the pushes (which may be
        // large: a big group's member list).
        let slim = match (&change.push, &change.removed_push) {
            (None, None) => change,
            _ => Arc::new(MembershipChange {
                push: None,
                removed_push: None,
                ..(*change).clone()
            }),
        };
        self.recent.push_back((self.seq, slim));
        if self.recent.len() > RECENT_CHANGES {
            self.recent.pop_front();
        }
        self.membership.advance(self.seq);
        self.drop_overflowed(overflowed);
    }
}
