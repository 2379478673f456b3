//! `RedisBridge`: shares events and presence between instances through
//! Redis pub/sub.
//!
//! Channels: one per user with live sessions here (`{prefix}:user:{id}`),
//! subscribed while the user is connected, plus one presence channel.
//! A per-user channel needs no directory of who is where, so there is
//! nothing to go stale: publishing to a user reaches exactly the instances
//! that have them. Every envelope names its origin instance; an instance
//! ignores its own publications (it already delivered them locally).
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
//! with capped exponential backoff, then resubscribes and re-registers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use redis::aio::{MultiplexedConnection, PubSubSink};
use redis::{AsyncConnectionConfig, AsyncTypedCommands};
use sea_orm::DatabaseConnection;
use tokio::sync::mpsc;

use super::BusEvent;
use crate::chat::presence::Presence;
use crate::chat::protocol::UserId;
use crate::chat::server::{DeliverRemote, RevokeUser, TellPresence};
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
/// Bound on any one Redis round trip, so a hung Redis reads as a down one.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Redis key and channel names, under one prefix (several deployments may share a Redis).
#[derive(Clone)]
struct Names {
    prefix: String,
    instance: String,
}

impl Names {
    fn user(&self, user: UserId) -> String {
        format!("{}:user:{}", self.prefix, user.0)
    }
    fn presence(&self) -> String {
        format!("{}:presence", self.prefix)
    }
    fn instances(&self) -> String {
        format!("{}:instances", self.prefix)
    }
    fn alive(&self, instance: &str) -> String {
        format!("{}:instance:{instance}:alive", self.prefix)
    }
    fn users_of(&self, instance: &str) -> String {
        format!("{}:instance:{instance}:users", self.prefix)
    }
    fn user_of_channel(&self, channel: &str) -> Option<UserId> {
        channel
            .strip_prefix(&self.prefix)?
            .strip_prefix(":user:")?
            .parse()
            .ok()
            .map(UserId)
    }
}

/// What travels on the channels: `F origin frame`, `R origin version` (user
/// channels), `P origin user 1|0`, `D origin dead-instance`, `Y origin`
/// (presence).
enum Envelope<'a> {
    Frame {
        origin: &'a str,
        frame: &'a [u8],
    },
    Revoke {
        origin: &'a str,
        current_version: i32,
    },
    Presence {
        origin: &'a str,
        user: UserId,
        online: bool,
    },
    InstanceDown {
        origin: &'a str,
        dead: &'a str,
    },
    /// The origin (re)connected and registered its users anew: re-read them.
    Resync {
        origin: &'a str,
    },
}

impl<'a> Envelope<'a> {
    fn encode(&self) -> Vec<u8> {
        match self {
            Envelope::Frame { origin, frame } => [b"F ", origin.as_bytes(), b" ", frame].concat(),
            Envelope::Revoke {
                origin,
                current_version,
            } => format!("R {origin} {current_version}").into_bytes(),
            Envelope::Presence {
                origin,
                user,
                online,
            } => format!("P {origin} {} {}", user.0, u8::from(*online)).into_bytes(),
            Envelope::InstanceDown { origin, dead } => format!("D {origin} {dead}").into_bytes(),
            Envelope::Resync { origin } => format!("Y {origin}").into_bytes(),
        }
    }

    fn decode(bytes: &'a [u8]) -> Option<Self> {
        let mut parts = bytes.splitn(3, |b| *b == b' ');
        let kind = parts.next()?;
        let origin = std::str::from_utf8(parts.next()?).ok()?;
        let rest = parts.next();
        match kind {
            b"F" => Some(Envelope::Frame {
                origin,
                frame: rest?,
            }),
            // An instance of an older release sends no version: revoke all.
            b"R" => Some(Envelope::Revoke {
                origin,
                current_version: rest
                    .and_then(|r| std::str::from_utf8(r).ok()?.parse().ok())
                    .unwrap_or(i32::MAX),
            }),
            b"P" => {
                let rest = std::str::from_utf8(rest?).ok()?;
                let (user, online) = rest.split_once(' ')?;
                Some(Envelope::Presence {
                    origin,
                    user: UserId(user.parse().ok()?),
                    online: online == "1",
                })
            }
            b"D" => Some(Envelope::InstanceDown {
                origin,
                dead: std::str::from_utf8(rest?).ok()?,
            }),
            b"Y" => Some(Envelope::Resync { origin }),
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
    pub presence: Recipient<TellPresence>,
}

/// Most commands sent to Redis in one pipeline.
const MAX_PIPELINE: usize = 1024;

/// A subscription change, applied in the order they happened.
type Subscription = (String, bool);

/// The live connections while Redis is reachable. Publishes and subscription
/// changes each go through one ordered queue: an actor's spawned futures do
/// not keep their order, and a conversation's events must.
struct Link {
    publisher: MultiplexedConnection,
    commands: mpsc::UnboundedSender<Vec<redis::Cmd>>,
    subscriptions: mpsc::UnboundedSender<Subscription>,
}

/// The bridge actor of one instance.
pub struct RedisBridge {
    client: redis::Client,
    names: Names,
    /// Where what arrives from the other instances goes (the ChatServer).
    server: ServerLink,
    presence: Arc<Presence>,
    db: DatabaseConnection,
    metrics: Metrics,
    /// Users with sessions here: the user channels we must be subscribed to.
    local_users: HashSet<UserId>,
    link: Option<Link>,
    connecting: bool,
    backoff: Duration,
    /// Whether Redis was reachable at the last transition (logged once per change).
    was_up: Option<bool>,
}

impl RedisBridge {
    pub fn new(
        client: redis::Client,
        prefix: String,
        presence: Arc<Presence>,
        db: DatabaseConnection,
        metrics: Metrics,
        server: ServerLink,
    ) -> Self {
        let instance = uuid::Uuid::new_v4().simple().to_string();
        RedisBridge {
            client,
            names: Names { prefix, instance },
            server,
            presence,
            db,
            metrics,
            local_users: HashSet::new(),
            link: None,
            connecting: false,
            backoff: BACKOFF_MIN,
            was_up: None,
        }
    }

    fn transition(&mut self, up: bool, detail: &str) {
        self.metrics.redis_state(up);
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

    fn config() -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
    }

    /// Connects, subscribes to the presence channel and every local user's
    /// channel, registers this instance and loads who is online elsewhere.
    fn connect(&mut self, ctx: &mut Context<Self>) {
        if self.connecting || self.link.is_some() {
            return;
        }
        self.connecting = true;
        let client = self.client.clone();
        let names = self.names.clone();
        let users: Vec<UserId> = self.local_users.iter().copied().collect();
        let setup = async move {
            let config = Self::config();
            let mut publisher = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            let pubsub = client.get_async_pubsub().await?;
            let (mut sink, stream) = pubsub.split();
            sink.subscribe(names.presence()).await?;
            for user in &users {
                sink.subscribe(names.user(*user)).await?;
            }
            register(&mut publisher, &names, &users).await?;
            let remote = online_elsewhere(&mut publisher, &names).await?;
            Ok::<_, redis::RedisError>((publisher, sink, stream, remote))
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
                    ctx.add_stream(stream);
                    act.transition(true, "");
                    // Instances that stayed connected learn our users anew.
                    let resync = Envelope::Resync {
                        origin: &act.names.instance,
                    };
                    act.send(vec![redis::Cmd::publish(
                        act.names.presence(),
                        resync.encode(),
                    )]);
                }
                Err(e) => {
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

    fn publish_frames(&mut self, frames: Vec<(UserId, Bytes)>) {
        let names = &self.names;
        let commands = frames
            .iter()
            .map(|(user, frame)| {
                let envelope = Envelope::Frame {
                    origin: &names.instance,
                    frame,
                };
                redis::Cmd::publish(names.user(*user), envelope.encode())
            })
            .collect();
        self.send(commands);
    }

    fn user_presence(&mut self, user: UserId, online: bool) {
        if online {
            self.local_users.insert(user);
        } else {
            self.local_users.remove(&user);
        }
        let names = &self.names;
        if let Some(link) = &self.link {
            let _ = link.subscriptions.send((names.user(user), online));
        }
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
        }
        .encode();
        self.send(vec![
            membership,
            expiry,
            redis::Cmd::publish(names.presence(), envelope),
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
                    conn.publish(names.presence(), envelope.encode()).await?;
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

    /// Tells the contacts of users whose online state changed: through the
    /// bus to every instance (`everywhere`), or to this instance's sessions
    /// only (each instance found the change itself). The contacts come from
    /// the database here; the ChatServer builds and routes the frames.
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
                match store::contacts_for_presence(&db, user).await {
                    Ok(contacts) => server.do_send(TellPresence {
                        user,
                        online,
                        contacts,
                        everywhere,
                    }),
                    Err(e) => {
                        tracing::error!(error = %e, user = user.0, "cannot load contacts for presence")
                    }
                }
            }
        };
        ctx.spawn(tell.into_actor(self));
    }
}

/// Sends queued commands in order, as many per pipeline as are waiting.
async fn send_in_order(
    mut conn: MultiplexedConnection,
    mut queue: mpsc::UnboundedReceiver<Vec<redis::Cmd>>,
    bridge: Addr<RedisBridge>,
) {
    while let Some(first) = queue.recv().await {
        let mut pipe = redis::pipe();
        let mut count = 0;
        let mut next = Some(first);
        while let Some(commands) = next.take() {
            for command in commands {
                pipe.add_command(command).ignore();
                count += 1;
            }
            if count < MAX_PIPELINE {
                next = queue.try_recv().ok();
            }
        }
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            bridge.do_send(LinkLost(e.to_string()));
            return;
        }
    }
}

/// Applies subscription changes in the order they happened.
async fn subscribe_in_order(
    mut sink: PubSubSink,
    mut changes: mpsc::UnboundedReceiver<Subscription>,
    bridge: Addr<RedisBridge>,
) {
    while let Some((channel, subscribe)) = changes.recv().await {
        let outcome = if subscribe {
            sink.subscribe(channel).await
        } else {
            sink.unsubscribe(channel).await
        };
        if let Err(e) = outcome {
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
async fn register(
    conn: &mut MultiplexedConnection,
    names: &Names,
    users: &[UserId],
) -> redis::RedisResult<()> {
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
    conn: &mut MultiplexedConnection,
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

impl StreamHandler<redis::Msg> for RedisBridge {
    fn handle(&mut self, msg: redis::Msg, ctx: &mut Context<Self>) {
        let channel = msg.get_channel_name().to_string();
        let Some(envelope) = Envelope::decode(msg.get_payload_bytes()) else {
            tracing::warn!(channel, "undecodable message on a bus channel");
            return;
        };
        let me = self.names.instance.clone();
        match envelope {
            Envelope::Frame { origin, frame } if origin != me => {
                if let Some(user) = self.names.user_of_channel(&channel) {
                    let frame = Bytes::copy_from_slice(frame);
                    self.server.deliver.do_send(DeliverRemote {
                        frames: vec![(user, frame)],
                    });
                }
            }
            Envelope::Revoke {
                origin,
                current_version,
            } if origin != me => {
                if let Some(user) = self.names.user_of_channel(&channel) {
                    self.server.revoke.do_send(RevokeUser {
                        user,
                        current_version,
                        broadcast: false,
                    });
                }
            }
            Envelope::Presence {
                origin,
                user,
                online,
            } if origin != me => {
                self.presence.set_remote(user, origin, online);
            }
            Envelope::InstanceDown { origin, dead } if origin != me => {
                let dead = dead.to_string();
                self.bury(&dead, false, ctx);
            }
            Envelope::Resync { origin } if origin != me => {
                let origin = origin.to_string();
                self.resync(origin, ctx);
            }
            _ => {}
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.lost(ctx, "subscription connection closed");
    }
}

/// An event for the other instances.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish(pub BusEvent);

impl Handler<Publish> for RedisBridge {
    type Result = ();

    fn handle(&mut self, Publish(event): Publish, _: &mut Context<Self>) {
        match event {
            BusEvent::Frames(frames) => self.publish_frames(frames),
            BusEvent::Presence { user, online } => self.user_presence(user, online),
            BusEvent::Revoke {
                user,
                current_version,
            } => {
                let envelope = Envelope::Revoke {
                    origin: &self.names.instance,
                    current_version,
                }
                .encode();
                self.send(vec![redis::Cmd::publish(self.names.user(user), envelope)]);
            }
        }
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

    #[test]
    fn envelopes_round_trip() {
        let frame = br#"{"type":"message","data":{"content":"a b c"}}"#;
        let encoded = Envelope::Frame {
            origin: "i1",
            frame,
        }
        .encode();
        match Envelope::decode(&encoded) {
            Some(Envelope::Frame { origin, frame: f }) => {
                assert_eq!((origin, f), ("i1", &frame[..]))
            }
            _ => panic!("frame envelope"),
        }
        let encoded = Envelope::Presence {
            origin: "i2",
            user: UserId(7),
            online: true,
        }
        .encode();
        assert!(matches!(
            Envelope::decode(&encoded),
            Some(Envelope::Presence {
                origin: "i2",
                user: UserId(7),
                online: true
            })
        ));
        assert!(Envelope::decode(b"X junk").is_none());
        assert!(Envelope::decode(b"").is_none());
    }

    #[test]
    fn user_channels_parse_back() {
        let names = Names {
            prefix: "chat".into(),
            instance: "i".into(),
        };
        assert_eq!(
            names.user_of_channel(&names.user(UserId(42))),
            Some(UserId(42))
        );
        assert_eq!(names.user_of_channel("chat:presence"), None);
        assert_eq!(names.user_of_channel("other:user:1"), None);
    }
}
