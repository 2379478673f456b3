//! The ChatServer's messages, one handler each: what other actors ask of it.

use super::*;

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
pub(super) fn replay(
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
            held: Some(Box::default()),
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
                    sessions: [(msg.session, link)].into_iter().collect(),
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
        let held = self
            .users
            .get_mut(&msg.user)
            .and_then(|e| e.sessions.get_mut(&msg.session))
            .and_then(|link| link.held.take());
        let (Some(held), Some(link)) = (
            held,
            self.users
                .get(&msg.user)
                .and_then(|e| e.sessions.get(&msg.session)),
        ) else {
            return;
        };
        let held = held.into_inner();
        let frames: Vec<&Bytes> = held.iter().collect();
        let mut overflowed = Vec::new();
        self.push_session(msg.user, msg.session, link, &frames, &mut overflowed);
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

impl Handler<Committed> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: Committed, ctx: &mut Context<Self>) {
        for outcome in msg.outcomes {
            // The answer is never held (`SessionLink::held` holds pushes only).
            if let Some((outbox, answer)) = outcome.answer {
                if outbox.send_text(answer) == Queued::Yes {
                    self.metrics.frames_out(1);
                }
            }
            if let Some(frames) = outcome.frames {
                self.deliver(frames, None, ctx);
            }
        }
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
        self.kick_revoked(msg.user, msg.current_version, msg.token);
        if msg.broadcast {
            self.bus.publish(BusEvent::Revoke {
                user: msg.user,
                current_version: msg.current_version,
                token: msg.token,
            });
        }
    }
}

impl Handler<Recheck> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: Recheck, _: &mut Context<Self>) {
        for (user, valid) in msg.users {
            self.kick_revoked(user, valid, None);
        }
        for (user, token) in msg.tokens {
            self.kick_revoked(user, i32::MIN, Some(token));
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
        self.push(msg.user, msg.skip, &msg.frame, &mut overflowed);
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

impl Handler<OnlineTokens> for ChatServer {
    type Result = MessageResult<OnlineTokens>;

    fn handle(&mut self, _: OnlineTokens, _: &mut Context<Self>) -> Self::Result {
        let sessions = self.users.values().flat_map(|e| e.sessions.values());
        MessageResult(sessions.filter_map(|l| l.token).collect())
    }
}
