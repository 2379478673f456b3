//! `RedisBridge`: shares events, presence and membership between instances
//! through Redis pub/sub.
//!
//! Channels: one per conversation with members connected here
//! (`{prefix}:conv:{id}`), subscribed while it has them, plus one control
//! channel every instance listens on (`{prefix}:control`: presence,
//! membership changes, revocations, liveness news). A conversation event is
//! one PUBLISH, whatever the group's size; Redis hands it to exactly the
//! instances with members online (DESIGN.md "Groups" weighs this against
//! per-instance and per-user channels). Every envelope names its origin
//! instance; an instance ignores its own publications (it already delivered
//! them locally). All subscriptions share one connection, so an instance
//! sees events in the order Redis executed their PUBLISHes (on a Redis
//! Cluster, per channel only: see `target.rs` and `publish_membership`).
//!
//! Liveness: each instance keeps `{prefix}:instance:{id}:alive` (TTL 15 s,
//! refreshed every 5 s) and the set of its online users. An instance whose
//! key expired is dead: the first live instance to notice removes it, tells
//! the others, and tells the dead instance's users' contacts they went
//! offline. A crashed instance's users are offline everywhere within 20 s.
//!
//! Redis going away: local delivery and storage go on (the database is the
//! truth; clients catch up with `get_messages`/`after`), events for other
//! instances are dropped, `/readyz` reports it, and the bridge reconnects
//! with capped exponential backoff, then resubscribes, re-registers, and
//! reloads its users' conversations (membership changes made elsewhere
//! meanwhile were missed); the others reload theirs when they hear it is back.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use redis::AsyncTypedCommands;
use sea_orm::DatabaseConnection;
use tokio::sync::mpsc;

use super::target::{Conn, Incoming, Messages, RedisTarget, Subscriber};
use super::BusEvent;
use crate::chat::membership::{Membership, MembershipChange};
use crate::chat::messages::{
    ApplyMembership, ConversationFrames, DeliverRemote, DeliverToUser, LocalUsers, ReplaceChats,
    RevokeUser, SetBlocked, TellPresence,
};
use crate::chat::presence::Presence;
use crate::chat::protocol::{ChatId, UserId};
use crate::chat::store;
use crate::metrics::Metrics;

/// How long an instance's liveness key lives without a refresh.
const ALIVE_TTL_SECONDS: u64 = 15;
/// How long an instance's user set outlives its last refresh: a crashed
/// instance's keys vanish even when no live instance buries it.
const USERS_TTL_SECONDS: i64 = 4 * ALIVE_TTL_SECONDS as i64;
/// How often the liveness key is refreshed and dead instances looked for.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// First and largest pause between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest a (re)connection may take, all steps together: a cluster whose
/// slots are not all served yet (mid-failover) must not hold up the next
/// attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most channels named in one SUBSCRIBE or UNSUBSCRIBE.
const MAX_SUBSCRIBE: usize = 512;

/// Redis key and channel names, under one prefix (several deployments may
/// share a Redis). On a cluster the registry keys and the control channel
/// carry the hash tag `{prefix}`, so one transaction can write the registry
/// and a presence change (registry + control) is one pipeline; conversation
/// channels are untagged and spread over the slots.
#[derive(Clone)]
struct Names {
    prefix: String,
    instance: String,
    cluster: bool,
}

impl Names {
    /// The prefix of the keys that must share a slot.
    fn shared(&self) -> String {
        if self.cluster {
            format!("{{{}}}", self.prefix)
        } else {
            self.prefix.clone()
        }
    }
    fn conversation(&self, chat: ChatId) -> String {
        format!("{}:conv:{}", self.prefix, chat.0.simple())
    }
    /// The conversation whose channel this is, if it is one of ours.
    fn chat_of(&self, channel: &str) -> Option<ChatId> {
        let id = channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":conv:")?;
        uuid::Uuid::try_parse(id).ok().map(ChatId)
    }
    fn control(&self) -> String {
        format!("{}:control", self.shared())
    }
    fn instances(&self) -> String {
        format!("{}:instances", self.shared())
    }
    fn alive(&self, instance: &str) -> String {
        format!("{}:instance:{instance}:alive", self.shared())
    }
    fn users_of(&self, instance: &str) -> String {
        format!("{}:instance:{instance}:users", self.shared())
    }
    /// `PUBLISH`, or on a cluster the sharded `SPUBLISH`.
    fn publish(&self, channel: String, payload: Vec<u8>) -> redis::Cmd {
        if self.cluster {
            redis::Cmd::spublish(channel, payload)
        } else {
            redis::Cmd::publish(channel, payload)
        }
    }
}

/// What travels on the channels. A header of space-separated ASCII fields,
/// then (for frames) raw bytes:
/// - `C origin chat user|- own_len|- own others`: frames for a conversation's
///   members (`user` gets `own`, or nothing when there is no `own_len`);
/// - `S origin chat seq user|- own_len|- own others`: the same for an event
///   with its place in the conversation's order (B7). A kind of its own, so
///   an instance of an earlier version ignores it (as an undecodable
///   envelope) instead of delivering it out of order;
/// - `G origin id chat presence(1|0) added removed push_len|- removed_len|- push removed_push`:
///   a membership change, numbered by its origin (`id`), published on the
///   control channel and on the conversation's (see `publish_membership`);
/// - `P origin user 1|0 chats` (the origin's record of the user changed) and
///   `N origin user 1|0 chats` (news only): tell `chats` of the user's state;
/// - `R origin user version`, `D origin dead-instance`, `Y origin` (it came
///   back: re-read its users and reload memberships);
/// - `U origin user frame`: a frame for one user's sessions (an invitation);
/// - `K origin chat 1|0`: messages in a direct conversation became blocked
///   (1) or were unblocked (0).
///
/// `U` and `K` are kinds of their own, which an earlier version ignores.
///
/// Lists are comma-separated, `-` when empty.
#[derive(Debug, PartialEq)]
enum Envelope<'a> {
    Conversation {
        origin: &'a str,
        chat: ChatId,
        seq: Option<i64>,
        user: Option<UserId>,
        own: Option<&'a [u8]>,
        others: &'a [u8],
    },
    Membership {
        origin: &'a str,
        id: u64,
        change: MembershipChange,
    },
    Presence {
        origin: &'a str,
        user: UserId,
        online: bool,
        notify: Vec<ChatId>,
        registry: bool,
    },
    Revoke {
        origin: &'a str,
        user: UserId,
        current_version: i32,
    },
    ToUser {
        origin: &'a str,
        user: UserId,
        frame: &'a [u8],
    },
    Blocked {
        origin: &'a str,
        chat: ChatId,
        blocked: bool,
    },
    InstanceDown {
        origin: &'a str,
        dead: &'a str,
    },
    /// The origin (re)connected and registered its users anew.
    Resync {
        origin: &'a str,
    },
}

fn write_list<T: std::fmt::Display>(out: &mut Vec<u8>, items: impl IntoIterator<Item = T>) {
    let mut empty = true;
    for (i, item) in items.into_iter().enumerate() {
        let _ = write!(out, "{}{item}", if i == 0 { "" } else { "," });
        empty = false;
    }
    if empty {
        out.push(b'-');
    }
}

fn parse_list<T>(field: &str, parse: impl Fn(&str) -> Option<T>) -> Option<Vec<T>> {
    if field == "-" {
        return Some(Vec::new());
    }
    field.split(',').map(parse).collect()
}

fn parse_user(field: &str) -> Option<UserId> {
    field.parse().ok().map(UserId)
}

fn parse_chat(field: &str) -> Option<ChatId> {
    uuid::Uuid::parse_str(field).ok().map(ChatId)
}

fn parse_len(field: &str) -> Option<Option<usize>> {
    if field == "-" {
        Some(None)
    } else {
        field.parse().ok().map(Some)
    }
}

/// Splits `n` space-terminated ASCII fields off the front of `bytes`; the
/// rest is returned whole (it may hold spaces and any byte).
fn split_fields(bytes: &[u8], n: usize) -> Option<(Vec<&str>, &[u8])> {
    let mut fields = Vec::with_capacity(n);
    let mut rest = bytes;
    for _ in 0..n {
        let end = rest.iter().position(|b| *b == b' ')?;
        fields.push(std::str::from_utf8(&rest[..end]).ok()?);
        rest = &rest[end + 1..];
    }
    Some((fields, rest))
}

impl<'a> Envelope<'a> {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Envelope::Conversation {
                origin,
                chat,
                seq,
                user,
                own,
                others,
            } => {
                match seq {
                    Some(seq) => write!(out, "S {origin} {} {seq} ", chat.0.simple()),
                    None => write!(out, "C {origin} {} ", chat.0.simple()),
                }
                .expect("writing to a Vec cannot fail");
                match user {
                    Some(u) => {
                        let _ = write!(out, "{u} ");
                    }
                    None => out.extend_from_slice(b"- "),
                }
                match own {
                    Some(own) => {
                        let _ = write!(out, "{} ", own.len());
                        out.extend_from_slice(own);
                    }
                    None => out.extend_from_slice(b"- "),
                }
                out.extend_from_slice(others);
            }
            Envelope::Membership { origin, id, change } => {
                let _ = write!(
                    out,
                    "G {origin} {id} {} {} ",
                    change.chat.0.simple(),
                    u8::from(change.presence)
                );
                write_list(&mut out, &change.added);
                out.push(b' ');
                write_list(&mut out, &change.removed);
                for push in [&change.push, &change.removed_push] {
                    match push {
                        Some(p) => {
                            let _ = write!(out, " {}", p.len());
                        }
                        None => out.extend_from_slice(b" -"),
                    }
                }
                out.push(b' ');
                for push in [&change.push, &change.removed_push].into_iter().flatten() {
                    out.extend_from_slice(push);
                }
            }
            Envelope::Presence {
                origin,
                user,
                online,
                notify,
                registry,
            } => {
                let kind = if *registry { "P" } else { "N" };
                let _ = write!(out, "{kind} {origin} {user} {} ", u8::from(*online));
                write_list(&mut out, notify.iter().map(|c| c.0.simple()));
            }
            Envelope::Revoke {
                origin,
                user,
                current_version,
            } => {
                let _ = write!(out, "R {origin} {user} {current_version}");
            }
            Envelope::ToUser {
                origin,
                user,
                frame,
            } => {
                let _ = write!(out, "U {origin} {user} ");
                out.extend_from_slice(frame);
            }
            Envelope::Blocked {
                origin,
                chat,
                blocked,
            } => {
                let _ = write!(out, "K {origin} {} {}", chat.0.simple(), u8::from(*blocked));
            }
            Envelope::InstanceDown { origin, dead } => {
                let _ = write!(out, "D {origin} {dead}");
            }
            Envelope::Resync { origin } => {
                let _ = write!(out, "Y {origin}");
            }
        }
        out
    }

    fn decode(bytes: &'a [u8]) -> Option<Self> {
        let (head, _) = split_fields(bytes, 1)?;
        match head[0] {
            kind @ ("C" | "S") => {
                let sequenced = kind == "S";
                let (mut f, rest) = split_fields(bytes, if sequenced { 6 } else { 5 })?;
                let seq = if sequenced {
                    Some(f.remove(3).parse().ok()?)
                } else {
                    None
                };
                let user = if f[3] == "-" {
                    None
                } else {
                    Some(parse_user(f[3])?)
                };
                let (own, others) = match parse_len(f[4])? {
                    Some(len) if len <= rest.len() => (Some(&rest[..len]), &rest[len..]),
                    Some(_) => return None,
                    None => (None, rest),
                };
                Some(Envelope::Conversation {
                    origin: f[1],
                    chat: parse_chat(f[2])?,
                    seq,
                    user,
                    own,
                    others,
                })
            }
            "G" => {
                let (f, rest) = split_fields(bytes, 9)?;
                let lens = [parse_len(f[7])?, parse_len(f[8])?];
                if lens.iter().flatten().sum::<usize>() != rest.len() {
                    return None;
                }
                let push = lens[0].map(|n| Bytes::copy_from_slice(&rest[..n]));
                let start = lens[0].unwrap_or(0);
                let removed_push = lens[1].map(|n| Bytes::copy_from_slice(&rest[start..start + n]));
                Some(Envelope::Membership {
                    origin: f[1],
                    id: f[2].parse().ok()?,
                    change: MembershipChange {
                        chat: parse_chat(f[3])?,
                        presence: f[4] == "1",
                        added: parse_list(f[5], parse_user)?,
                        removed: parse_list(f[6], parse_user)?,
                        push,
                        removed_push,
                    },
                })
            }
            kind @ ("P" | "N") => {
                let text = std::str::from_utf8(bytes).ok()?;
                let f: Vec<&str> = text.split(' ').collect();
                let [_, origin, user, online, rest @ ..] = f.as_slice() else {
                    return None;
                };
                Some(Envelope::Presence {
                    origin,
                    user: parse_user(user)?,
                    online: *online == "1",
                    notify: match rest {
                        [] => Vec::new(),
                        [chats] => parse_list(chats, parse_chat)?,
                        _ => return None,
                    },
                    registry: kind == "P",
                })
            }
            "R" => {
                let text = std::str::from_utf8(bytes).ok()?;
                let f: Vec<&str> = text.split(' ').collect();
                let [_, origin, user, version] = f.as_slice() else {
                    return None;
                };
                Some(Envelope::Revoke {
                    origin,
                    user: parse_user(user)?,
                    current_version: version.parse().ok()?,
                })
            }
            "U" => {
                let (f, frame) = split_fields(bytes, 3)?;
                Some(Envelope::ToUser {
                    origin: f[1],
                    user: parse_user(f[2])?,
                    frame,
                })
            }
            "K" => {
                let text = std::str::from_utf8(bytes).ok()?;
                let f: Vec<&str> = text.split(' ').collect();
                let [_, origin, chat, blocked] = f.as_slice() else {
                    return None;
                };
                Some(Envelope::Blocked {
                    origin,
                    chat: parse_chat(chat)?,
                    blocked: match *blocked {
                        "1" => true,
                        "0" => false,
                        _ => return None,
                    },
                })
            }
            "D" => {
                let (f, rest) = split_fields(bytes, 2)?;
                Some(Envelope::InstanceDown {
                    origin: f[1],
                    dead: std::str::from_utf8(rest).ok()?,
                })
            }
            "Y" => Some(Envelope::Resync {
                origin: std::str::from_utf8(&bytes[2..]).ok()?,
            }),
            _ => None,
        }
    }
}

/// The ChatServer's side of the bridge, as recipients of the messages it
/// handles: the bridge knows what it sends, not the actor behind it.
#[derive(Clone)]
pub struct ServerLink {
    pub deliver: Recipient<DeliverRemote>,
    pub revoke: Recipient<RevokeUser>,
    pub to_user: Recipient<DeliverToUser>,
    pub blocked: Recipient<SetBlocked>,
    pub presence: Recipient<TellPresence>,
    pub membership: Recipient<ApplyMembership>,
    pub replace_chats: Recipient<ReplaceChats>,
    pub local_users: Recipient<LocalUsers>,
}

/// Most commands sent to Redis in one pipeline.
const MAX_PIPELINE: usize = 1024;

/// A subscription change, applied in the order they happened, or a
/// barrier answered once every change before it is in place.
enum Subscription {
    Change(String, bool),
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// The live connections while Redis is reachable. Publishes and subscription
/// changes each go through one ordered queue: an actor's spawned futures do
/// not keep their order, and a conversation's events must.
struct Link {
    publisher: Conn,
    commands: mpsc::UnboundedSender<Vec<redis::Cmd>>,
    subscriptions: mpsc::UnboundedSender<Subscription>,
}

/// The bridge actor of one instance.
pub struct RedisBridge {
    target: RedisTarget,
    names: Names,
    /// Where what arrives from the other instances goes (the ChatServer).
    server: ServerLink,
    presence: Arc<Presence>,
    membership: Arc<Membership>,
    db: DatabaseConnection,
    metrics: Metrics,
    /// Users with sessions here: this instance's entry in the registry.
    local_users: HashSet<UserId>,
    /// Conversations with members here: the channels we must be subscribed to.
    rooms: HashSet<ChatId>,
    link: Option<Link>,
    connecting: bool,
    backoff: Duration,
    /// Whether Redis was reachable at the last transition (logged once per change).
    was_up: Option<bool>,
    /// Membership changes published so far (their numbers).
    changes_published: u64,
    /// Membership changes applied lately: each arrives twice.
    changes_seen: SeenChanges,
}

/// The membership changes applied lately, by origin and number, so the
/// second copy of each is ignored.
#[derive(Default)]
struct SeenChanges {
    order: VecDeque<(String, u64)>,
    seen: HashSet<(String, u64)>,
}

impl SeenChanges {
    /// Far more than can arrive between a change's two copies.
    const KEEP: usize = 4096;

    /// Whether change `id` of `origin` is new (and remembers it).
    fn first_time(&mut self, origin: &str, id: u64) -> bool {
        let key = (origin.to_string(), id);
        if !self.seen.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > Self::KEEP {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        true
    }
}

/// What a bridge needs besides its Redis client and the ChatServer.
pub struct BridgeParts {
    pub prefix: String,
    pub presence: Arc<Presence>,
    pub membership: Arc<Membership>,
    pub db: DatabaseConnection,
    pub metrics: Metrics,
}

impl RedisBridge {
    pub fn new(target: RedisTarget, parts: BridgeParts, server: ServerLink) -> Self {
        let instance = uuid::Uuid::new_v4().simple().to_string();
        RedisBridge {
            names: Names {
                prefix: parts.prefix,
                instance,
                cluster: target.is_cluster(),
            },
            target,
            server,
            presence: parts.presence,
            membership: {
                // Nothing from the other instances has reached us yet: the
                // first connection's reload makes the record current.
                parts.membership.set_current(false);
                parts.membership
            },
            db: parts.db,
            metrics: parts.metrics,
            local_users: HashSet::new(),
            rooms: HashSet::new(),
            link: None,
            connecting: false,
            backoff: BACKOFF_MIN,
            was_up: None,
            changes_published: 0,
            changes_seen: SeenChanges::default(),
        }
    }

    fn transition(&mut self, up: bool, detail: &str) {
        self.metrics.redis_state(up);
        if !up {
            // Changes made elsewhere no longer reach us: authorize from the
            // database until memberships are reloaded.
            self.membership.set_current(false);
        }
        if self.was_up != Some(up) {
            if up {
                tracing::info!(instance = %self.names.instance, "redis bridge connected");
            } else {
                tracing::warn!(instance = %self.names.instance, error = detail, "redis bridge down; local delivery continues");
            }
            self.was_up = Some(up);
        }
    }

    fn lost(&mut self, ctx: &mut Context<Self>, detail: &str) {
        if self.link.take().is_some() || !self.connecting {
            self.transition(false, detail);
            self.schedule_reconnect(ctx);
        }
    }

    fn schedule_reconnect(&mut self, ctx: &mut Context<Self>) {
        if self.connecting {
            return;
        }
        self.connecting = true;
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        ctx.run_later(wait, |act, ctx| {
            act.connecting = false;
            act.metrics.redis_reconnect();
            act.connect(ctx);
        });
    }

    /// Connects, subscribes to the control channel and every local
    /// conversation's channel, registers this instance, loads who is online
    /// elsewhere, and reloads memberships.
    fn connect(&mut self, ctx: &mut Context<Self>) {
        if self.connecting || self.link.is_some() {
            return;
        }
        self.connecting = true;
        let target = self.target.clone();
        let names = self.names.clone();
        let users: Vec<UserId> = self.local_users.iter().copied().collect();
        let channels: Vec<String> = self.rooms.iter().map(|c| names.conversation(*c)).collect();
        let setup = async move {
            let (mut publisher, mut sink, stream) = target.connect().await?;
            sink.set(&[names.control()], true).await?;
            for chunk in channels.chunks(MAX_SUBSCRIBE) {
                sink.set(chunk, true).await?;
            }
            register(&mut publisher, &names, &users).await?;
            let remote = online_elsewhere(&mut publisher, &names).await?;
            Ok::<_, redis::RedisError>((publisher, sink, stream, remote))
        };
        let setup = async move {
            tokio::time::timeout(CONNECT_TIMEOUT, setup)
                .await
                .map_err(|_| {
                    redis::RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connecting took too long",
                    ))
                })?
        };
        ctx.spawn(setup.into_actor(self).map(|result, act, ctx| {
            act.connecting = false;
            match result {
                Ok((publisher, sink, stream, remote)) => {
                    // Who went offline or came online elsewhere while we were
                    // away: our local users' contacts are told.
                    let changes = act.presence.replace_remote(&remote);
                    act.tell_presence(changes, false, ctx);
                    let (commands, queued) = mpsc::unbounded_channel();
                    actix::spawn(send_in_order(publisher.clone(), queued, ctx.address()));
                    let (subscriptions, changes) = mpsc::unbounded_channel();
                    actix::spawn(subscribe_in_order(sink, changes, ctx.address()));
                    act.link = Some(Link {
                        publisher,
                        commands,
                        subscriptions,
                    });
                    act.backoff = BACKOFF_MIN;
                    act.transition(true, "");
                    // What arrives is handled once the memberships are
                    // reloaded: until then this instance may still hold a
                    // member removed elsewhere while Redis was away, and
                    // would hand her the group's next message.
                    act.reload_memberships(ctx, Some(stream));
                    // Instances that stayed connected learn our users anew,
                    // and the membership changes we may have made meanwhile.
                    let resync = Envelope::Resync {
                        origin: &act.names.instance,
                    };
                    act.send(vec![act
                        .names
                        .publish(act.names.control(), resync.encode())]);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "redis bridge could not connect; retrying");
                    act.transition(false, &e.to_string());
                    act.schedule_reconnect(ctx);
                }
            }
        }));
    }

    /// Queues commands behind every earlier one; dropped while Redis is down
    /// (live delivery is best-effort; the database has every message).
    fn send(&self, commands: Vec<redis::Cmd>) {
        if let Some(link) = &self.link {
            let _ = link.commands.send(commands);
        }
    }

    fn publish_control(&self, envelope: Envelope<'_>) {
        self.send(vec![self
            .names
            .publish(self.names.control(), envelope.encode())]);
    }

    fn publish_conversation(&self, frames: &ConversationFrames) {
        let envelope = Envelope::Conversation {
            origin: &self.names.instance,
            chat: frames.chat,
            seq: frames.seq,
            user: frames.user,
            own: frames.own.as_deref(),
            others: &frames.others,
        };
        self.send(vec![self
            .names
            .publish(self.names.conversation(frames.chat), envelope.encode())]);
    }

    /// A membership change goes on the control channel, which every
    /// instance hears (one where an added member is connected opens the
    /// conversation's room), and on the conversation's own channel, where it
    /// keeps its place among the conversation's messages: a cluster orders
    /// each channel, not channels against each other, and a message must not
    /// reach a member removed before it was sent. Receivers apply whichever
    /// copy arrives first.
    fn publish_membership(&mut self, change: &MembershipChange) {
        self.changes_published += 1;
        let payload = Envelope::Membership {
            origin: &self.names.instance,
            id: self.changes_published,
            change: change.clone(),
        }
        .encode();
        self.send(vec![
            self.names
                .publish(self.names.conversation(change.chat), payload.clone()),
            self.names.publish(self.names.control(), payload),
        ]);
    }

    fn room(&mut self, chat: ChatId, open: bool) {
        let changed = if open {
            self.rooms.insert(chat)
        } else {
            self.rooms.remove(&chat)
        };
        if let (true, Some(link)) = (changed, &self.link) {
            let channel = self.names.conversation(chat);
            let _ = link.subscriptions.send(Subscription::Change(channel, open));
        }
    }

    fn user_presence(&mut self, user: UserId, online: bool, notify: Vec<ChatId>) {
        if online {
            self.local_users.insert(user);
        } else {
            self.local_users.remove(&user);
        }
        let names = &self.names;
        let users = names.users_of(&names.instance);
        let membership = if online {
            redis::Cmd::sadd(&users, user.0)
        } else {
            redis::Cmd::srem(&users, user.0)
        };
        // Every key expires: a crashed instance's leave nothing behind for good.
        let expiry = redis::Cmd::expire(&users, USERS_TTL_SECONDS);
        let envelope = Envelope::Presence {
            origin: &names.instance,
            user,
            online,
            notify,
            registry: true,
        }
        .encode();
        self.send(vec![
            membership,
            expiry,
            names.publish(names.control(), envelope),
        ]);
    }

    /// Refreshes our liveness and buries instances whose key expired.
    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        let Some(link) = &self.link else {
            return;
        };
        let mut conn = link.publisher.clone();
        let names = self.names.clone();
        let check = async move {
            conn.set_ex(names.alive(&names.instance), 1, ALIVE_TTL_SECONDS)
                .await?;
            conn.expire(names.users_of(&names.instance), USERS_TTL_SECONDS)
                .await?;
            conn.expire(names.instances(), USERS_TTL_SECONDS).await?;
            let instances: HashSet<String> = conn.smembers(names.instances()).await?;
            let mut buried = Vec::new();
            for other in instances.into_iter().filter(|i| *i != names.instance) {
                if conn.exists(names.alive(&other)).await? {
                    continue;
                }
                // Only the instance whose SREM removed it does the burial.
                if conn.srem(names.instances(), &other).await? == 1 {
                    conn.del(names.users_of(&other)).await?;
                    let envelope = Envelope::InstanceDown {
                        origin: &names.instance,
                        dead: &other,
                    };
                    names
                        .publish(names.control(), envelope.encode())
                        .query_async::<()>(&mut conn)
                        .await?;
                    buried.push(other);
                }
            }
            Ok::<_, redis::RedisError>(buried)
        };
        ctx.spawn(check.into_actor(self).map(|result, act, ctx| match result {
            Ok(buried) => {
                for dead in buried {
                    tracing::warn!(dead = %dead, "instance stopped refreshing its liveness; clearing its users");
                    act.bury(&dead, true, ctx);
                }
            }
            Err(e) => act.lost(ctx, &e.to_string()),
        }));
    }

    /// Forgets a dead instance's users; the burying instance also tells their
    /// contacts (anywhere) that they went offline.
    fn bury(&mut self, dead: &str, notify_contacts: bool, ctx: &mut Context<Self>) {
        let gone: Vec<(UserId, bool)> = self
            .presence
            .drop_instance(dead)
            .into_iter()
            .filter(|u| !self.presence.is_online(*u))
            .map(|u| (u, false))
            .collect();
        if notify_contacts {
            // The instance that buried it tells everyone, through the bus.
            self.tell_presence(gone, true, ctx);
        }
    }

    /// Re-reads the users another instance registered after an outage.
    fn resync(&mut self, instance: String, ctx: &mut Context<Self>) {
        let Some(link) = &self.link else {
            return;
        };
        let mut conn = link.publisher.clone();
        let key = self.names.users_of(&instance);
        let read = async move {
            let users: redis::RedisResult<HashSet<String>> = conn.smembers(key).await;
            users
        };
        ctx.spawn(
            read.into_actor(self)
                .map(move |result, act, ctx| match result {
                    Ok(users) => {
                        let users: Vec<UserId> = users
                            .iter()
                            .filter_map(|u| u.parse().ok())
                            .map(UserId)
                            .collect();
                        let changes = act.presence.replace_instance(&instance, &users);
                        act.tell_presence(changes, false, ctx);
                    }
                    Err(e) => act.lost(ctx, &e.to_string()),
                }),
        );
    }

    /// Reloads the conversations of every user connected here from the
    /// database: membership changes made while an instance was cut off from
    /// Redis never reached the others.
    /// Reloads the conversations of the users here from the database (the
    /// changes made while Redis was away never reached us); then, if given,
    /// starts handling `stream`, so that no event from the other instances
    /// is delivered by the old memberships.
    fn reload_memberships(&mut self, ctx: &mut Context<Self>, stream: Option<Messages>) {
        self.membership.set_current(false);
        let (db, membership, server) = (
            self.db.clone(),
            self.membership.clone(),
            self.server.clone(),
        );
        let reload = async move {
            for _ in 0..5 {
                let since = membership.seq();
                let users = server.local_users.send(LocalUsers).await?;
                let chats = match store::chats_of_users(&db, &users).await {
                    Ok(chats) => chats,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reload memberships after a Redis outage");
                        return Ok(());
                    }
                };
                if server
                    .replace_chats
                    .send(ReplaceChats { chats, since })
                    .await?
                {
                    membership.set_current(true);
                    return Ok(());
                }
            }
            tracing::warn!("memberships changed too fast to reload; they are reloaded at the next reconnection");
            Ok::<_, MailboxError>(())
        };
        ctx.spawn(reload.into_actor(self).map(|_, _, ctx| {
            if let Some(stream) = stream {
                ctx.add_stream(stream);
            }
        }));
    }

    /// Tells the conversations of users whose online state changed: through
    /// the bus to every instance (`everywhere`), or to this instance's
    /// sessions only (each instance found the change itself). The
    /// conversations come from the database here; the ChatServer builds and
    /// routes the frames.
    fn tell_presence(
        &mut self,
        changes: Vec<(UserId, bool)>,
        everywhere: bool,
        ctx: &mut Context<Self>,
    ) {
        if changes.is_empty() {
            return;
        }
        let (db, server) = (self.db.clone(), self.server.presence.clone());
        let tell = async move {
            for (user, online) in changes {
                match store::presence_chats(&db, user).await {
                    Ok(chats) => server.do_send(TellPresence {
                        user,
                        online,
                        chats,
                        everywhere,
                    }),
                    Err(e) => {
                        tracing::error!(error = %e, user = user.0, "cannot load conversations for presence")
                    }
                }
            }
        };
        ctx.spawn(tell.into_actor(self));
    }
}

/// Sends queued commands in order, as many per pipeline as are waiting.
async fn send_in_order(
    mut conn: Conn,
    mut queue: mpsc::UnboundedReceiver<Vec<redis::Cmd>>,
    bridge: Addr<RedisBridge>,
) {
    while let Some(mut commands) = queue.recv().await {
        while commands.len() < MAX_PIPELINE {
            match queue.try_recv() {
                Ok(more) => commands.extend(more),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.send_all(commands).await {
            bridge.do_send(LinkLost(e.to_string()));
            return;
        }
    }
}

/// Applies subscription changes in the order they happened; a run of
/// waiting changes in the same direction goes as one command.
async fn subscribe_in_order(
    mut sink: Subscriber,
    mut changes: mpsc::UnboundedReceiver<Subscription>,
    bridge: Addr<RedisBridge>,
) {
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match changes.recv().await {
                Some(next) => next,
                None => return,
            },
        };
        let (channel, subscribe) = match first {
            Subscription::Change(channel, subscribe) => (channel, subscribe),
            Subscription::Barrier(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let mut channels = vec![channel];
        while channels.len() < MAX_SUBSCRIBE {
            match changes.try_recv() {
                Ok(Subscription::Change(next, same)) if same == subscribe => channels.push(next),
                Ok(other) => {
                    carried = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        if let Err(e) = sink.set(&channels, subscribe).await {
            bridge.do_send(LinkLost(e.to_string()));
            return;
        }
    }
}

/// A Redis operation failed: the link is gone.
#[derive(Message)]
#[rtype(result = "()")]
struct LinkLost(String);

impl Handler<LinkLost> for RedisBridge {
    type Result = ();

    fn handle(&mut self, msg: LinkLost, ctx: &mut Context<Self>) {
        self.lost(ctx, &msg.0);
    }
}

/// Adds this instance and its users to the registry, with a fresh liveness key.
async fn register(conn: &mut Conn, names: &Names, users: &[UserId]) -> redis::RedisResult<()> {
    let users_key = names.users_of(&names.instance);
    let mut pipe = redis::pipe();
    pipe.atomic()
        .set_ex(names.alive(&names.instance), 1, ALIVE_TTL_SECONDS)
        .ignore()
        .sadd(names.instances(), &names.instance)
        .ignore()
        .expire(names.instances(), USERS_TTL_SECONDS)
        .ignore()
        .del(&users_key)
        .ignore();
    if !users.is_empty() {
        pipe.sadd(&users_key, users.iter().map(|u| u.0).collect::<Vec<_>>())
            .ignore()
            .expire(&users_key, USERS_TTL_SECONDS)
            .ignore();
    }
    pipe.query_async::<()>(conn).await
}

/// (instance, user) for every user online on another live instance.
async fn online_elsewhere(
    conn: &mut Conn,
    names: &Names,
) -> redis::RedisResult<Vec<(String, UserId)>> {
    let instances: HashSet<String> = conn.smembers(names.instances()).await?;
    let mut online = Vec::new();
    for other in instances.into_iter().filter(|i| *i != names.instance) {
        if !conn.exists(names.alive(&other)).await? {
            continue;
        }
        let users: HashSet<String> = conn.smembers(names.users_of(&other)).await?;
        online.extend(
            users
                .iter()
                .filter_map(|u| u.parse().ok())
                .map(|u| (other.clone(), UserId(u))),
        );
    }
    Ok(online)
}

impl Actor for RedisBridge {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Every session's events pass through here; don't make senders wait.
        ctx.set_mailbox_capacity(16 * 1024);
        self.connect(ctx);
        ctx.run_interval(HEARTBEAT, |act, ctx| act.heartbeat(ctx));
    }
}

impl StreamHandler<Incoming> for RedisBridge {
    fn handle(&mut self, incoming: Incoming, ctx: &mut Context<Self>) {
        match incoming {
            Incoming::Message(msg) => self.received(msg, ctx),
            Incoming::Unsubscribed(channel) => self.unsubscribed(channel),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.lost(ctx, "subscription connection closed");
    }
}

impl RedisBridge {
    /// An envelope from another instance (our own are ignored).
    fn received(&mut self, msg: redis::Msg, ctx: &mut Context<Self>) {
        let Some(envelope) = Envelope::decode(msg.get_payload_bytes()) else {
            let channel = msg.get_channel_name();
            tracing::warn!(channel, "undecodable message on a bus channel");
            return;
        };
        let me = self.names.instance.as_str();
        match envelope {
            Envelope::Conversation {
                origin,
                chat,
                seq,
                user,
                own,
                others,
            } if origin != me => {
                let frames = ConversationFrames {
                    chat,
                    seq,
                    user,
                    own: own.map(Bytes::copy_from_slice),
                    others: Bytes::copy_from_slice(others),
                };
                self.server.deliver.do_send(DeliverRemote { frames });
            }
            // Each change comes twice (see `publish_membership`).
            Envelope::Membership { origin, id, change }
                if origin != me && self.changes_seen.first_time(origin, id) =>
            {
                self.server.membership.do_send(ApplyMembership {
                    change: Arc::new(change),
                    broadcast: false,
                });
            }
            Envelope::Revoke {
                origin,
                user,
                current_version,
            } if origin != me => {
                self.server.revoke.do_send(RevokeUser {
                    user,
                    current_version,
                    broadcast: false,
                });
            }
            Envelope::Blocked {
                origin,
                chat,
                blocked,
            } if origin != me => {
                self.server.blocked.do_send(SetBlocked {
                    chat,
                    blocked,
                    broadcast: false,
                });
            }
            Envelope::ToUser {
                origin,
                user,
                frame,
            } if origin != me => {
                self.server.to_user.do_send(DeliverToUser {
                    user,
                    frame: Bytes::copy_from_slice(frame),
                    broadcast: false,
                });
            }
            Envelope::Presence {
                origin,
                user,
                online,
                notify,
                registry,
            } if origin != me => {
                if registry {
                    self.presence.set_remote(user, origin, online);
                }
                if !notify.is_empty() {
                    self.server.presence.do_send(TellPresence {
                        user,
                        online,
                        chats: notify,
                        everywhere: false,
                    });
                }
            }
            Envelope::InstanceDown { origin, dead } if origin != me => {
                let dead = dead.to_string();
                self.bury(&dead, false, ctx);
            }
            Envelope::Resync { origin } if origin != me => {
                let origin = origin.to_string();
                self.resync(origin, ctx);
                self.reload_memberships(ctx, None);
            }
            _ => {}
        }
    }

    /// A cluster node ended a sharded subscription: the confirmation of
    /// ours (the channel is no longer wanted), or the node's own because
    /// the channel's slot moved to another master, after which we subscribe
    /// again (the cluster client finds the new owner). Events published in
    /// between are missed live, as in an outage: the next event of the
    /// conversation shows the gap in `seq`, which is filled from the
    /// database, and clients catch up with `sync` (B7).
    fn unsubscribed(&mut self, channel: String) {
        let wanted = channel == self.names.control()
            || self
                .names
                .chat_of(&channel)
                .is_some_and(|chat| self.rooms.contains(&chat));
        if let (true, Some(link)) = (wanted, &self.link) {
            tracing::info!(
                channel,
                "a cluster node dropped our subscription (slot moved); subscribing again"
            );
            let _ = link.subscriptions.send(Subscription::Change(channel, true));
        }
    }
}

/// An event for the other instances.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish(pub BusEvent);

impl Handler<Publish> for RedisBridge {
    type Result = ();

    fn handle(&mut self, Publish(event): Publish, _: &mut Context<Self>) {
        let origin = self.names.instance.as_str();
        match event {
            BusEvent::Conversation(frames) => self.publish_conversation(&frames),
            BusEvent::Room { chat, open } => self.room(chat, open),
            BusEvent::Membership(change) => self.publish_membership(&change),
            BusEvent::Presence {
                user,
                online,
                notify,
                registry: true,
            } => self.user_presence(user, online, notify),
            BusEvent::Presence {
                user,
                online,
                notify,
                registry: false,
            } => self.publish_control(Envelope::Presence {
                origin,
                user,
                online,
                notify,
                registry: false,
            }),
            BusEvent::Revoke {
                user,
                current_version,
            } => self.publish_control(Envelope::Revoke {
                origin,
                user,
                current_version,
            }),
            BusEvent::Blocked { chat, blocked } => self.publish_control(Envelope::Blocked {
                origin,
                chat,
                blocked,
            }),
            BusEvent::ToUser { user, frame } => self.publish_control(Envelope::ToUser {
                origin,
                user,
                frame: &frame,
            }),
        }
    }
}

/// Answered once every subscription asked for before it is in place (at
/// once while Redis is down: nothing can be subscribed then).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Barrier;

impl Handler<Barrier> for RedisBridge {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Barrier, _: &mut Context<Self>) -> Self::Result {
        let (done, wait) = tokio::sync::oneshot::channel();
        if let Some(link) = &self.link {
            let _ = link.subscriptions.send(Subscription::Barrier(done));
        }
        Box::pin(async move {
            let _ = wait.await;
        })
    }
}

/// Leave the registry on a graceful shutdown, so peers need not wait for the TTL.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deregister;

impl Handler<Deregister> for RedisBridge {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Deregister, _: &mut Context<Self>) -> Self::Result {
        let link = self.link.as_ref().map(|l| l.publisher.clone());
        let names = self.names.clone();
        Box::pin(
            async move {
                let Some(mut conn) = link else {
                    return;
                };
                let mut pipe = redis::pipe();
                pipe.srem(names.instances(), &names.instance)
                    .ignore()
                    .del(names.alive(&names.instance))
                    .ignore()
                    .del(names.users_of(&names.instance))
                    .ignore();
                let _ = pipe.query_async::<()>(&mut conn).await;
            }
            .into_actor(self),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(envelope: Envelope<'_>) {
        let encoded = envelope.encode();
        assert_eq!(Envelope::decode(&encoded).as_ref(), Some(&envelope));
    }

    #[test]
    fn envelopes_round_trip() {
        let chat = ChatId(uuid::Uuid::new_v4());
        let frame = br#"{"type":"message","data":{"content":"a b c"}}"#;
        round_trip(Envelope::Conversation {
            origin: "i1",
            chat,
            seq: None,
            user: Some(UserId(3)),
            own: Some(b"own frame with spaces"),
            others: frame,
        });
        round_trip(Envelope::Conversation {
            origin: "i1",
            chat,
            seq: Some(42),
            user: None,
            own: None,
            others: frame,
        });
        round_trip(Envelope::Conversation {
            origin: "i1",
            chat,
            seq: Some(1),
            user: Some(UserId(3)),
            own: Some(b"own"),
            others: frame,
        });
        round_trip(Envelope::Membership {
            origin: "i2",
            id: 7,
            change: MembershipChange {
                chat,
                added: vec![UserId(1), UserId(2)],
                removed: vec![],
                presence: true,
                push: Some(Bytes::from_static(b"{\"a\": 1}")),
                removed_push: Some(Bytes::from_static(b"{\"removed\": true}")),
            },
        });
        round_trip(Envelope::Membership {
            origin: "i2",
            id: u64::MAX,
            change: MembershipChange {
                chat,
                added: vec![],
                removed: vec![UserId(9)],
                presence: false,
                push: None,
                removed_push: None,
            },
        });
        round_trip(Envelope::Presence {
            origin: "i3",
            user: UserId(7),
            online: true,
            notify: vec![chat, ChatId(uuid::Uuid::new_v4())],
            registry: true,
        });
        round_trip(Envelope::Presence {
            origin: "i3",
            user: UserId(7),
            online: false,
            notify: vec![],
            registry: false,
        });
        round_trip(Envelope::Revoke {
            origin: "i4",
            user: UserId(5),
            current_version: 2,
        });
        round_trip(Envelope::ToUser {
            origin: "i4",
            user: UserId(5),
            frame: br#"{"type": "invitation", "data": {"name": "a b"}}"#,
        });
        round_trip(Envelope::Blocked {
            origin: "i4",
            chat,
            blocked: true,
        });
        round_trip(Envelope::InstanceDown {
            origin: "i4",
            dead: "i5",
        });
        round_trip(Envelope::Resync { origin: "i6" });
    }

    #[test]
    fn each_change_is_applied_once() {
        let mut seen = SeenChanges::default();
        assert!(seen.first_time("a", 1));
        assert!(!seen.first_time("a", 1), "the second copy");
        assert!(seen.first_time("b", 1), "another origin's change 1");
        for id in 2..=SeenChanges::KEEP as u64 + 1 {
            assert!(seen.first_time("a", id));
        }
        assert_eq!(seen.order.len(), SeenChanges::KEEP);
        assert!(seen.first_time("a", 1), "forgotten after KEEP newer ones");
        assert!(!seen.first_time("a", SeenChanges::KEEP as u64));
    }

    #[test]
    fn malformed_envelopes_are_refused() {
        for junk in [
            &b"X junk"[..],
            b"",
            b"C i1 notauuid - - {}",
            b"C i1 0123456789abcdef0123456789abcdef 1 999 short",
            b"G i1 1 0123456789abcdef0123456789abcdef 1 - - 5 - abc",
            b"G i1 x 0123456789abcdef0123456789abcdef 1 - - - - ",
            b"P i1 x 1",
            b"R i1 5",
        ] {
            assert_eq!(
                Envelope::decode(junk),
                None,
                "{:?}",
                String::from_utf8_lossy(junk)
            );
        }
    }
}
