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
//!
//! This folder is the actor. Beside it: `envelope/` (what travels, and its
//! versions), `names.rs` (keys and channels), `link.rs` (the connections
//! and their ordered queues), `registry.rs` (the registry's commands).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use redis::AsyncTypedCommands;
use sea_orm::DatabaseConnection;
use tokio::sync::mpsc;

use super::envelope::{Envelope, READS_VERSION};
use super::link::{send_in_order, subscribe_in_order, Link, LinkLost, Subscription, MAX_SUBSCRIBE};
use super::names::Names;
use super::registry::{check_liveness, online_elsewhere, presence_commands, register, HEARTBEAT};
use super::target::{Incoming, Messages, RedisTarget};
use super::BusEvent;
use crate::chat::membership::{Membership, MembershipChange};
use crate::chat::messages::{
    ApplyMembership, ConversationFrames, DeliverRemote, DeliverToUser, LocalUsers, ReadsStored,
    ReplaceChats, RevokeUser, SetBlocked, StoredRead, TellPresence,
};
use crate::chat::presence::Presence;
use crate::chat::protocol::{ChatId, UserId};
use crate::chat::store;
use crate::metrics::Metrics;

mod liveness;
mod traffic;

pub use traffic::Publish;

/// First and largest pause between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest a (re)connection may take, all steps together: a cluster whose
/// slots are not all served yet (mid-failover) must not hold up the next
/// attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The ChatServer's side of the bridge, as recipients of the messages it
/// handles: the bridge knows what it sends, not the actor behind it.
#[derive(Clone)]
pub struct ServerLink {
    pub deliver: Recipient<DeliverRemote>,
    pub revoke: Recipient<RevokeUser>,
    pub to_user: Recipient<DeliverToUser>,
    pub reads: Recipient<ReadsStored>,
    pub blocked: Recipient<SetBlocked>,
    pub presence: Recipient<TellPresence>,
    pub membership: Recipient<ApplyMembership>,
    pub replace_chats: Recipient<ReplaceChats>,
    pub local_users: Recipient<LocalUsers>,
}

/// The bridge actor of one instance.
pub struct RedisBridge {
    pub(super) target: RedisTarget,
    pub(super) names: Names,
    /// Where what arrives from the other instances goes (the ChatServer).
    pub(super) server: ServerLink,
    pub(super) presence: Arc<Presence>,
    pub(super) membership: Arc<Membership>,
    pub(super) db: DatabaseConnection,
    pub(super) metrics: Metrics,
    /// Users with sessions here: this instance's entry in the registry.
    pub(super) local_users: HashSet<UserId>,
    /// Conversations with members here: the channels we must be subscribed to.
    pub(super) rooms: HashSet<ChatId>,
    pub(super) link: Option<Link>,
    /// The envelope version written: the newest every live instance reads
    /// (`envelope/`, "Versions"); 1 until the registry has been read.
    pub(super) write_version: u8,
    pub(super) connecting: bool,
    pub(super) backoff: Duration,
    /// Whether Redis was reachable at the last transition (logged once per change).
    pub(super) was_up: Option<bool>,
    /// Membership changes published so far (their numbers).
    pub(super) changes_published: u64,
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
            write_version: 1,
            connecting: false,
            backoff: BACKOFF_MIN,
            was_up: None,
            changes_published: 0,
            changes_seen: SeenChanges::default(),
        }
    }

    pub(super) fn transition(&mut self, up: bool, detail: &str) {
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

    pub(super) fn lost(&mut self, ctx: &mut Context<Self>, detail: &str) {
        if self.link.take().is_some() || !self.connecting {
            self.transition(false, detail);
            self.schedule_reconnect(ctx);
        }
    }

    pub(super) fn schedule_reconnect(&mut self, ctx: &mut Context<Self>) {
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
    pub(super) fn connect(&mut self, ctx: &mut Context<Self>) {
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
                Ok((publisher, sink, stream, (remote, readable))) => {
                    act.set_write_version(readable);
                    // Who went offline or came online elsewhere while we were
                    // away: our local users' contacts are told.
                    let changes = act.presence.replace_remote(&remote);
                    act.tell_presence(changes, false, ctx);
                    let (commands, queued) = mpsc::unbounded_channel();
                    actix::spawn(send_in_order(
                        publisher.clone(),
                        queued,
                        ctx.address().recipient(),
                    ));
                    let (subscriptions, changes) = mpsc::unbounded_channel();
                    actix::spawn(subscribe_in_order(sink, changes, ctx.address().recipient()));
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
                        .publish(act.names.control(), resync.encode(act.write_version))]);
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
    pub(super) fn send(&self, commands: Vec<redis::Cmd>) {
        if let Some(link) = &self.link {
            let _ = link.commands.send(commands);
        }
    }

    pub(super) fn publish_control(&self, envelope: Envelope<'_>) {
        self.send(vec![self.names.publish(
            self.names.control(),
            envelope.encode(self.write_version),
        )]);
    }

    pub(super) fn publish_conversation(&self, frames: &ConversationFrames) {
        let envelope = Envelope::Conversation {
            origin: &self.names.instance,
            chat: frames.chat,
            seq: frames.seq,
            user: frames.user,
            own: frames.own.as_deref(),
            others: &frames.others,
        };
        self.send(vec![self.names.publish(
            self.names.conversation(frames.chat),
            envelope.encode(self.write_version),
        )]);
    }

    /// A conversation's read marks stored together: one `M` envelope for
    /// all of them, on the conversation's channel when they are for
    /// `everyone` in it, else on the control channel (for the readers' own
    /// sessions, wherever they are). While an instance that does not read
    /// `M` lives, an envelope for each: `C` or `U` with its frame.
    pub(super) fn publish_reads(
        &self,
        chat: ChatId,
        reads: Vec<(UserId, i64, Bytes)>,
        everyone: bool,
    ) {
        if self.write_version < READS_VERSION {
            for (user, _, frame) in reads {
                if everyone {
                    self.publish_conversation(&ConversationFrames {
                        chat,
                        seq: None,
                        user: Some(user),
                        own: Some(frame.clone()),
                        others: frame,
                    });
                } else {
                    self.publish_control(Envelope::ToUser {
                        origin: &self.names.instance,
                        user,
                        frame: &frame,
                    });
                }
            }
            return;
        }
        let envelope = Envelope::Reads {
            origin: &self.names.instance,
            chat,
            reads: reads
                .into_iter()
                .map(|(user, up_to, _)| (user, up_to))
                .collect(),
        };
        let channel = if everyone {
            self.names.conversation(chat)
        } else {
            self.names.control()
        };
        self.send(vec![self
            .names
            .publish(channel, envelope.encode(self.write_version))]);
    }

    /// A membership change goes on the control channel, which every
    /// instance hears (one where an added member is connected opens the
    /// conversation's room), and on the conversation's own channel, where it
    /// keeps its place among the conversation's messages: a cluster orders
    /// each channel, not channels against each other, and a message must not
    /// reach a member removed before it was sent. Receivers apply whichever
    /// copy arrives first.
    pub(super) fn publish_membership(&mut self, change: &MembershipChange) {
        self.changes_published += 1;
        let payload = Envelope::Membership {
            origin: &self.names.instance,
            id: self.changes_published,
            change: change.clone(),
        }
        .encode(self.write_version);
        self.send(vec![
            self.names
                .publish(self.names.conversation(change.chat), payload.clone()),
            self.names.publish(self.names.control(), payload),
        ]);
    }

    pub(super) fn room(&mut self, chat: ChatId, open: bool) {
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
}

impl Handler<LinkLost> for RedisBridge {
    type Result = ();

    fn handle(&mut self, msg: LinkLost, ctx: &mut Context<Self>) {
        self.lost(ctx, &msg.0);
    }
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
mod tests;
