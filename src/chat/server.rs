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
    ApplyMembership, CloseAll, Connect, ConnectError, ConversationFrames, Deliver, DeliverRemote,
    DeliverToUser, Disconnect, Kick, LocalUsers, OnlineTokens, OnlineVersions, Release,
    ReplaceChats, RevokeUser, ServerStats, SessionId, SetBlocked, Stats, TellPresence,
};
use super::presence::Presence;
use super::protocol::{ChatId, PresenceEvent, ServerEvent, UserId};
use super::socket::{Outbox, Queued};
use crate::auth::TokenId;
use crate::bus::{Bus, BusEvent};
use crate::metrics::Metrics;

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
    held: RefCell<Option<Vec<Bytes>>>,
}

/// Frames held for one authorizing session, at most: beyond it the session
/// is as slow as a full outbox (a registration waits milliseconds, for one
/// Redis round trip).
const MAX_HELD_FOR_SESSION: usize = 256;

struct UserEntry {
    sessions: HashMap<SessionId, SessionLink>,
}

/// A conversation with members connected here.
struct Room {
    users: HashSet<UserId>,
    /// Whether presence changes are pushed in it (B6).
    presence: bool,
    /// Where its stream of events stands here (B7).
    order: Order,
}

/// A room's place in its conversation's events: the last `seq` its
/// sessions were given, and the events held behind a hole.
#[derive(Default)]
struct Order {
    /// `None` until known: the first event sets it.
    last: Option<i64>,
    held: BTreeMap<i64, ConversationFrames>,
    /// A fill from the database is under way.
    filling: bool,
}

impl Order {
    fn starting_at(seq: Option<i64>) -> Self {
        Order {
            last: seq,
            ..Order::default()
        }
    }

    /// Takes an event; returns those now due, in order (none when it is a
    /// duplicate or waits behind a hole).
    fn accept(&mut self, frames: ConversationFrames, seq: i64) -> Vec<ConversationFrames> {
        match self.last {
            Some(last) if seq <= last => return Vec::new(),
            Some(last) if seq > last + 1 => {
                self.held.insert(seq, frames);
                if self.held.len() > HELD_LIMIT {
                    return self.skip_hole();
                }
                return Vec::new();
            }
            _ => {}
        }
        self.last = Some(seq);
        let mut due = vec![frames];
        due.extend(self.release());
        due
    }

    /// The held events that follow on without a hole.
    fn release(&mut self) -> Vec<ConversationFrames> {
        let mut due = Vec::new();
        while let Some(entry) = self.held.first_entry() {
            let next = self.last.map_or(*entry.key(), |l| l + 1);
            if *entry.key() > next {
                break;
            }
            let seq = *entry.key();
            let frames = entry.remove();
            if self.last.is_none_or(|l| seq > l) {
                self.last = Some(seq);
                due.push(frames);
            }
        }
        due
    }

    /// The hole to fill: the events after `last` and before the first held.
    fn hole(&self) -> Option<(i64, i64)> {
        let (first, _) = self.held.first_key_value()?;
        Some((self.last?, *first))
    }

    /// Gives up on the hole: the held events go out as they are, and each
    /// session sees the jump in `seq` and asks `sync` itself.
    fn skip_hole(&mut self) -> Vec<ConversationFrames> {
        if let Some((&first, _)) = self.held.first_key_value() {
            self.last = Some(first - 1);
        }
        self.release()
    }
}

/// Routes events to this instance's sessions and, through the bus, to the others.
pub struct ChatServer {
    users: HashMap<UserId, UserEntry>,
    rooms: HashMap<ChatId, Room>,
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
            users: HashMap::new(),
            rooms: HashMap::new(),
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

    /// Pushes a frame to every local session of `user`; sessions whose queue
    /// overflowed are noted in `overflowed` (their outbox is already closing).
    fn push(&self, user: UserId, frame: &Bytes, overflowed: &mut Vec<(UserId, SessionId)>) {
        let Some(entry) = self.users.get(&user) else {
            return;
        };
        for (id, link) in &entry.sessions {
            self.push_session(user, *id, link, frame, overflowed);
        }
    }

    fn push_session(
        &self,
        user: UserId,
        id: SessionId,
        link: &SessionLink,
        frame: &Bytes,
        overflowed: &mut Vec<(UserId, SessionId)>,
    ) {
        let queued = match link.held.borrow_mut().as_mut() {
            Some(held) if held.len() < MAX_HELD_FOR_SESSION => {
                held.push(frame.clone());
                return;
            }
            Some(_) => {
                link.outbox
                    .close(CloseCode::Policy, "slow consumer: outgoing queue full");
                Queued::Overflow
            }
            None => link.outbox.send_text(frame.clone()),
        };
        match queued {
            Queued::Yes => self.metrics.frames_out(1),
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
                    self.push_session(*user, *id, link, frame, &mut overflowed);
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
                self.push(*user, push, &mut overflowed);
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
                self.push(*user, push, &mut overflowed);
            }
            if !deferred.is_empty() {
                let (bus, push) = (self.bus.clone(), push.clone());
                let subscribed = async move { bus.barrier().await };
                ctx.spawn(subscribed.into_actor(self).map(move |(), act, _| {
                    let mut overflowed = Vec::new();
                    for user in deferred {
                        act.push(user, &push, &mut overflowed);
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

impl Actor for ChatServer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Every session registers here; the default mailbox of 16 would make
        // their `send`s wait on each other.
        ctx.set_mailbox_capacity(4096);
        ctx.run_interval(DEPARTURE_TICK, |act, _| act.announce_departures());
    }
}

/// `user`'s conversations loaded after change number `since`, with the
/// changes after it (from `recent`, the last of which is number `seq`)
/// applied on top; `None` when some of those are no longer in `recent`
/// (the session loads again, then gives up with `internal`).
fn replay(
    recent: &VecDeque<(u64, Arc<MembershipChange>)>,
    seq: u64,
    user: UserId,
    mut chats: HashSet<ChatId>,
    since: u64,
) -> Option<HashSet<ChatId>> {
    let complete = since >= seq || recent.front().is_some_and(|(s, _)| *s <= since + 1);
    if !complete {
        return None;
    }
    for (_, change) in recent.iter().filter(|(s, _)| *s > since) {
        if change.concerns(user) {
            change.apply_to(user, &mut chats);
        }
    }
    Some(chats)
}

impl Handler<Connect> for ChatServer {
    type Result = Result<(), ConnectError>;

    fn handle(&mut self, msg: Connect, _: &mut Context<Self>) -> Self::Result {
        let link = SessionLink {
            outbox: msg.outbox,
            kick: msg.kick,
            token_version: msg.token_version,
            token: msg.token,
            held: RefCell::new(Some(Vec::new())),
        };
        if let Some(entry) = self.users.get_mut(&msg.user) {
            let already_here = entry.sessions.contains_key(&msg.session);
            if !already_here && entry.sessions.len() >= self.max_sessions_per_user {
                return Err(ConnectError::TooManySessions);
            }
            entry.sessions.insert(msg.session, link);
        } else {
            self.register_user(msg.user, msg.chats, msg.since, msg.blocked_peers)?;
            self.users.insert(
                msg.user,
                UserEntry {
                    sessions: HashMap::from([(msg.session, link)]),
                },
            );
        }
        if let Some(previous) = msg.previous.filter(|p| *p != msg.user) {
            self.remove_session(previous, msg.session);
        }
        Ok(())
    }
}

impl Handler<Release> for ChatServer {
    type Result = ();

    /// The session has queued its `authorization_response`: what was held
    /// for it follows, in order, and later frames go straight to it.
    fn handle(&mut self, msg: Release, _: &mut Context<Self>) {
        let Some(link) = self
            .users
            .get(&msg.user)
            .and_then(|e| e.sessions.get(&msg.session))
        else {
            return;
        };
        let Some(held) = link.held.borrow_mut().take() else {
            return;
        };
        let mut overflowed = Vec::new();
        for frame in &held {
            self.push_session(msg.user, msg.session, link, frame, &mut overflowed);
        }
        self.drop_overflowed(overflowed);
    }
}

impl Handler<Disconnect> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, _: &mut Context<Self>) {
        self.remove_session(msg.user, msg.session);
    }
}

impl Handler<Deliver> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        self.deliver(msg.frames, msg.skip, ctx);
    }
}

impl Handler<DeliverRemote> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: DeliverRemote, ctx: &mut Context<Self>) {
        self.deliver_here(msg.frames, None, ctx);
    }
}

impl Handler<Filled> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: Filled, ctx: &mut Context<Self>) {
        let Some(room) = self.rooms.get_mut(&msg.chat) else {
            return;
        };
        room.order.filling = false;
        let before = room.order.last;
        match msg.events {
            Ok(events) => {
                for frames in events {
                    self.deliver_here(frames, None, ctx);
                }
            }
            Err(e) => {
                tracing::warn!(chat = %msg.chat, error = %e, "could not load a hole's events; sessions will sync");
            }
        }
        let Some(room) = self.rooms.get_mut(&msg.chat) else {
            return;
        };
        match room.order.hole() {
            // A hole larger than one page: the next page.
            Some((_, until)) if until <= msg.until && room.order.last != before => {
                self.fill_hole(msg.chat)
            }
            // Nothing came of it (the database failed, or does not hold
            // the events): go on without them.
            Some((_, until)) if until <= msg.until => {
                let due = room.order.skip_hole();
                for frames in &due {
                    self.push_to_room(frames, None);
                }
            }
            _ => {}
        }
    }
}

impl Handler<ApplyMembership> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: ApplyMembership, ctx: &mut Context<Self>) {
        self.apply_membership(msg.change.clone(), ctx);
        if msg.broadcast {
            self.bus.publish(BusEvent::Membership(msg.change));
        }
    }
}

impl Handler<ReplaceChats> for ChatServer {
    type Result = bool;

    fn handle(&mut self, msg: ReplaceChats, _: &mut Context<Self>) -> bool {
        for (user, chats) in msg.chats {
            if !self.users.contains_key(&user) {
                continue;
            }
            let Some(fresh) = self.catch_up(user, &chats, msg.since) else {
                return false;
            };
            let known: HashSet<ChatId> = self.membership.chats_of(user).into_iter().collect();
            for gone in known.difference(&fresh) {
                self.leave_room(user, *gone);
            }
            for entry in chats.iter().filter(|c| !known.contains(&c.chat)) {
                if fresh.contains(&entry.chat) {
                    self.join_room(user, entry.chat, entry.presence, Some(entry.seq));
                }
            }
            // Blocks made or lifted while the bus was away.
            for entry in chats.iter().filter(|c| fresh.contains(&c.chat)) {
                self.set_blocked(entry.chat, entry.blocked);
                self.membership
                    .set_audience(entry.chat, Some(entry.audience));
            }
            self.membership.set_user(user, fresh);
        }
        true
    }
}

impl Handler<LocalUsers> for ChatServer {
    type Result = MessageResult<LocalUsers>;

    fn handle(&mut self, _: LocalUsers, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.users.keys().copied().collect())
    }
}

impl Handler<TellPresence> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: TellPresence, _: &mut Context<Self>) {
        self.tell_presence_here(msg.user, msg.online, &msg.chats);
        if msg.everywhere {
            self.bus.publish(BusEvent::Presence {
                user: msg.user,
                online: msg.online,
                notify: msg.chats,
                registry: false,
            });
        }
    }
}

impl Handler<RevokeUser> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: RevokeUser, _: &mut Context<Self>) {
        if let Some(entry) = self.users.get(&msg.user) {
            for link in entry.sessions.values() {
                let signed_out = msg.token.is_some() && link.token == msg.token;
                if link.token_version < msg.current_version || signed_out {
                    link.kick.do_send(Kick::revoked());
                }
            }
        }
        if msg.broadcast {
            self.bus.publish(BusEvent::Revoke {
                user: msg.user,
                current_version: msg.current_version,
                token: msg.token,
            });
        }
    }
}

impl Handler<SetBlocked> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: SetBlocked, _: &mut Context<Self>) {
        if let Some(chat) = msg.chat {
            self.set_blocked(chat, msg.blocked);
        }
        if let Some(pair) = msg.pair {
            let users = &self.users;
            self.blocks
                .set_pair(pair, msg.blocked, |u| users.contains_key(&u));
            if msg.broadcast {
                self.bus.publish(BusEvent::Blocked {
                    pair,
                    chat: msg.chat,
                    blocked: msg.blocked,
                });
            }
        }
    }
}

impl Handler<DeliverToUser> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: DeliverToUser, _: &mut Context<Self>) {
        let mut overflowed = Vec::new();
        self.push(msg.user, &msg.frame, &mut overflowed);
        self.drop_overflowed(overflowed);
        if msg.broadcast {
            self.bus.publish(BusEvent::ToUser {
                user: msg.user,
                frame: msg.frame,
            });
        }
    }
}

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

impl Handler<Stats> for ChatServer {
    type Result = ServerStats;

    fn handle(&mut self, _: Stats, _: &mut Context<Self>) -> ServerStats {
        ServerStats {
            users: self.users.len(),
            sessions: self.users.values().map(|e| e.sessions.len()).sum(),
            rooms: self.rooms.len(),
            leaving: self.leaving.len(),
        }
    }
}

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

impl Handler<OnlineTokens> for ChatServer {
    type Result = MessageResult<OnlineTokens>;

    fn handle(&mut self, _: OnlineTokens, _: &mut Context<Self>) -> Self::Result {
        let sessions = self.users.iter().flat_map(|(user, e)| {
            let tokens = e.sessions.values().filter_map(|l| l.token);
            tokens.map(move |t| (*user, t))
        });
        MessageResult(sessions.collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64) -> ConversationFrames {
        ConversationFrames {
            chat: ChatId(uuid::Uuid::nil()),
            seq: Some(seq),
            user: None,
            own: None,
            others: Bytes::from(seq.to_string()),
        }
    }

    fn seqs(due: Vec<ConversationFrames>) -> Vec<i64> {
        due.into_iter().filter_map(|f| f.seq).collect()
    }

    /// A push that reaches a session between its `Connect` and `Release`
    /// (while it waits for the bus) is sent after the session's
    /// `authorization_response`, never before it.
    #[actix_rt::test]
    async fn pushes_wait_until_the_authorization_answer_is_queued() {
        use futures_util::{FutureExt, StreamExt};
        let db = sea_orm::Database::connect("sqlite::memory:")
            .await
            .expect("in-memory SQLite");
        let server = ChatServer::create(|ctx| {
            ChatServer::new(
                Arc::new(Presence::default()),
                Arc::new(Membership::default()),
                Bus::Local,
                HoleFiller::start(db, ctx.address().recipient()),
                10,
                Metrics::default(),
            )
        });
        struct Ignore;
        impl Actor for Ignore {
            type Context = Context<Self>;
        }
        impl Handler<Kick> for Ignore {
            type Result = ();
            fn handle(&mut self, _: Kick, _: &mut Context<Self>) {}
        }
        let (outbox, mut body) = crate::chat::socket::outbox(16);
        let (user, session) = (UserId(7), 1);
        let connect = Connect {
            session,
            user,
            outbox: outbox.clone(),
            kick: Ignore.start().recipient(),
            chats: Vec::new(),
            since: 0,
            token_version: 0,
            token: None,
            blocked_peers: Vec::new(),
            previous: None,
        };
        assert_eq!(server.send(connect).await.expect("server runs"), Ok(()));
        let push = DeliverToUser {
            user,
            frame: Bytes::from_static(b"\"a push\""),
            broadcast: false,
        };
        server.send(push).await.expect("server runs");
        assert!(body.next().now_or_never().is_none(), "held, not sent");
        outbox.send_text(Bytes::from_static(b"\"the answer\""));
        server
            .send(Release { session, user })
            .await
            .expect("server runs");
        let sent = body.next().await.expect("frames").expect("infallible");
        let text = String::from_utf8_lossy(&sent);
        let (answer, push) = (text.find("the answer"), text.find("a push"));
        assert!(answer.is_some() && answer < push, "{text:?}");
    }

    #[test]
    fn events_go_out_in_seq_order_each_once() {
        let mut order = Order::starting_at(Some(4));
        assert_eq!(seqs(order.accept(event(5), 5)), [5]);
        assert_eq!(
            seqs(order.accept(event(5), 5)),
            Vec::<i64>::new(),
            "a duplicate"
        );
        assert_eq!(
            seqs(order.accept(event(8), 8)),
            Vec::<i64>::new(),
            "behind a hole"
        );
        assert_eq!(seqs(order.accept(event(7), 7)), Vec::<i64>::new());
        assert_eq!(order.hole(), Some((5, 7)));
        assert_eq!(
            seqs(order.accept(event(6), 6)),
            [6, 7, 8],
            "the hole filled"
        );
        assert_eq!(order.hole(), None);
        assert_eq!(order.last, Some(8));
    }

    #[test]
    fn a_hole_given_up_lets_what_is_held_go_out() {
        let mut order = Order::starting_at(Some(1));
        order.accept(event(4), 4);
        order.accept(event(5), 5);
        order.accept(event(7), 7);
        assert_eq!(seqs(order.skip_hole()), [4, 5], "up to the next hole");
        assert_eq!(order.hole(), Some((5, 7)));
        assert_eq!(
            seqs(order.accept(event(3), 3)),
            Vec::<i64>::new(),
            "too late now"
        );
    }

    #[test]
    fn a_room_holds_a_bounded_number_of_events() {
        let mut order = Order::starting_at(Some(1));
        for seq in 3..3 + HELD_LIMIT as i64 {
            assert!(order.accept(event(seq), seq).is_empty());
        }
        let next = 3 + HELD_LIMIT as i64;
        let due = seqs(order.accept(event(next), next));
        assert_eq!(due.len(), HELD_LIMIT + 1, "the hole given up");
        assert_eq!(order.held.len(), 0);
        assert_eq!(order.last, Some(next));
    }

    fn change(chat: u128, added: &[i64], removed: &[i64]) -> Arc<MembershipChange> {
        Arc::new(MembershipChange {
            chat: ChatId(uuid::Uuid::from_u128(chat)),
            added: added.iter().copied().map(UserId).collect(),
            removed: removed.iter().copied().map(UserId).collect(),
            presence: true,
            push: None,
            removed_push: None,
        })
    }

    fn chats(ids: &[u128]) -> HashSet<ChatId> {
        ids.iter()
            .map(|id| ChatId(uuid::Uuid::from_u128(*id)))
            .collect()
    }

    #[test]
    fn a_registration_replays_the_changes_after_its_snapshot_or_is_stale() {
        // Changes 5–7 are remembered: user 1 joined 10, left 11; 12 is another's.
        let recent: VecDeque<_> = [
            (5, change(10, &[1], &[])),
            (6, change(11, &[], &[1])),
            (7, change(12, &[2], &[])),
        ]
        .into();
        let me = UserId(1);
        let snapshot = || chats(&[11, 20]);
        assert_eq!(
            replay(&recent, 7, me, snapshot(), 7),
            Some(snapshot()),
            "current"
        );
        assert_eq!(
            replay(&recent, 7, me, snapshot(), 4),
            Some(chats(&[10, 20])),
            "5, 6, 7 replayed"
        );
        assert_eq!(
            replay(&recent, 7, me, chats(&[10, 11, 20]), 5),
            Some(chats(&[10, 20])),
            "6, 7"
        );
        assert_eq!(
            replay(&recent, 7, me, snapshot(), 3),
            None,
            "change 4 is forgotten: stale"
        );
        assert_eq!(
            replay(&VecDeque::new(), 0, me, snapshot(), 0),
            Some(snapshot()),
            "no changes yet"
        );
    }

    #[test]
    fn a_room_that_knows_no_seq_starts_at_its_first_event() {
        let mut order = Order::default();
        assert_eq!(seqs(order.accept(event(12), 12)), [12]);
        assert_eq!(seqs(order.accept(event(13), 13)), [13]);
        assert_eq!(seqs(order.accept(event(11), 11)), Vec::<i64>::new());
    }
}
