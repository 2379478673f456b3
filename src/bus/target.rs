//! Where the bus's Redis is: one server (`REDIS_URL`), or a Redis Cluster
//! (`REDIS_CLUSTER_URLS`) with sharded pub/sub. The bridge talks to either
//! through the three types here, so everything it does is written once.
//!
//! What differs on a cluster:
//! - channels are sharded (`SSUBSCRIBE`/`SPUBLISH`): a conversation's events
//!   go only to the shard that owns its channel, and only from there to the
//!   instances subscribed, so pub/sub scales with the shards (classic
//!   `PUBLISH` on a cluster is copied to every node);
//! - keys that must sit together (the instance registry, which one
//!   transaction writes) and the control channel carry the hash tag
//!   `{prefix}`, so they share a slot;
//! - a pipeline goes to one node, so commands are grouped by slot, and the
//!   groups are sent together; order holds per slot, hence per channel;
//! - every node connection is watched: when one drops (a master failed, say),
//!   the bridge treats it as Redis going away and comes back as it does after
//!   any outage (resubscribe, re-register, reload memberships);
//! - a node that stops serving a slot (the slot migrated to another master)
//!   drops the sharded subscriptions to its channels with an unsolicited
//!   `SUNSUBSCRIBE`: the stream reports it (`Incoming::Unsubscribed`), and
//!   the bridge subscribes again to each channel it still wants, which the
//!   cluster client sends to the slot's new owner.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSubSink};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{AsyncConnectionConfig, Cmd, Msg, Pipeline, PushKind, RedisFuture, RedisResult, Value};
use tokio::sync::mpsc;

/// Bound on any one Redis round trip, so a hung Redis reads as a down one.
pub(super) const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a cluster request is retried (redirections during a failover)
/// before the bridge hears of the failure and reconnects by itself.
const CLUSTER_RETRIES: u32 = 3;

/// One Redis, or a cluster's seed nodes.
#[derive(Clone)]
pub enum RedisTarget {
    Single(redis::Client),
    Cluster(Vec<redis::ConnectionInfo>),
}

/// What arrives on the subscription connection.
#[derive(Debug)]
pub enum Incoming {
    /// A message on a subscribed channel.
    Message(Msg),
    /// A cluster node ended a sharded subscription (`SUNSUBSCRIBE`): ours,
    /// confirmed, or the node's own when the channel's slot moved away.
    Unsubscribed(String),
}

/// What arrives on the subscribed channels; ends when the subscription
/// connection (or, on a cluster, any node's connection) is lost.
pub type Messages = Pin<Box<dyn Stream<Item = Incoming> + Send>>;

impl RedisTarget {
    /// From `REDIS_CLUSTER_URLS`, or `REDIS_URL`/`REDIS_HOST`; `None` without either.
    pub fn from_settings(settings: &crate::config::RedisSettings) -> RedisResult<Option<Self>> {
        let nodes = settings.cluster_nodes();
        if !nodes.is_empty() {
            let nodes = nodes
                .into_iter()
                .map(redis::IntoConnectionInfo::into_connection_info)
                .collect::<RedisResult<Vec<_>>>()?;
            return Ok(Some(RedisTarget::Cluster(nodes)));
        }
        settings
            .url()
            .map(|url| redis::Client::open(url.as_str()).map(RedisTarget::Single))
            .transpose()
    }

    /// Whether channels are sharded and keys need hash tags.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisTarget::Cluster(_))
    }

    /// Where it points, for a log line (never a password).
    pub fn location(&self) -> String {
        match self {
            RedisTarget::Single(client) => {
                let info = client.get_connection_info();
                format!("{} (db {})", info.addr(), info.redis_settings().db())
            }
            RedisTarget::Cluster(nodes) => {
                let nodes: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
                format!("cluster {}", nodes.join(" "))
            }
        }
    }

    fn cluster_client(
        nodes: &[redis::ConnectionInfo],
        push: Option<mpsc::UnboundedSender<redis::PushInfo>>,
    ) -> RedisResult<ClusterClient> {
        let mut builder = ClusterClientBuilder::new(nodes.to_vec())
            .use_protocol(redis::ProtocolVersion::RESP3)
            .connection_timeout(REDIS_TIMEOUT)
            .response_timeout(REDIS_TIMEOUT)
            .overall_response_timeout(Some(REDIS_TIMEOUT))
            .retries(CLUSTER_RETRIES);
        if let Some(push) = push {
            builder = builder.push_sender(push);
        }
        builder.build()
    }

    /// Answers when Redis (every cluster node) answers `PING`.
    pub async fn ping(&self) -> RedisResult<()> {
        let mut conn = match self {
            RedisTarget::Single(client) => {
                Conn::Single(client.get_multiplexed_async_connection().await?)
            }
            RedisTarget::Cluster(nodes) => Conn::Cluster(
                Self::cluster_client(nodes, None)?
                    .get_async_connection()
                    .await?,
            ),
        };
        redis::cmd("PING")
            .query_async::<Value>(&mut conn)
            .await
            .map(drop)
    }

    /// A connection for commands, one for subscriptions, and what arrives
    /// on the latter.
    pub async fn connect(&self) -> RedisResult<(Conn, Subscriber, Messages)> {
        match self {
            RedisTarget::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(REDIS_TIMEOUT))
                    .set_response_timeout(Some(REDIS_TIMEOUT));
                let publisher = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                let (sink, stream) = client.get_async_pubsub().await?.split();
                Ok((
                    Conn::Single(publisher),
                    Subscriber::Single(sink),
                    Box::pin(futures_util::StreamExt::map(stream, Incoming::Message)),
                ))
            }
            RedisTarget::Cluster(nodes) => {
                // A fresh client per connection: pushes of an abandoned one
                // never reach the new stream.
                let (push, pushes) = mpsc::unbounded_channel();
                let conn = Self::cluster_client(nodes, Some(push))?
                    .get_async_connection()
                    .await?;
                let messages = futures_util::stream::unfold(pushes, |mut pushes| async move {
                    loop {
                        let push = pushes.recv().await?;
                        match push.kind {
                            PushKind::Disconnection => return None,
                            PushKind::SUnsubscribe => {
                                let channel = push.data.first().and_then(|channel| {
                                    redis::from_redis_value_ref::<String>(channel).ok()
                                });
                                if let Some(channel) = channel {
                                    return Some((Incoming::Unsubscribed(channel), pushes));
                                }
                            }
                            _ => {
                                if let Some(msg) = Msg::from_push_info(push) {
                                    return Some((Incoming::Message(msg), pushes));
                                }
                            }
                        }
                    }
                });
                Ok((
                    Conn::Cluster(conn.clone()),
                    Subscriber::Cluster(conn),
                    Box::pin(messages),
                ))
            }
        }
    }
}

/// A connection for commands, to one Redis or to a cluster.
#[derive(Clone)]
pub enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Sends `commands` in order, as few pipelines as the target allows: one
    /// on a single Redis; one per slot on a cluster, sent together (each
    /// node keeps the order of its own).
    pub async fn send_all(&mut self, commands: Vec<Cmd>) -> RedisResult<()> {
        match self {
            Conn::Single(conn) => {
                let mut pipe = redis::pipe();
                for command in commands {
                    pipe.add_command(command).ignore();
                }
                pipe.query_async::<()>(conn).await
            }
            Conn::Cluster(conn) => {
                let mut by_slot: HashMap<Slot, Pipeline> = HashMap::new();
                for command in commands {
                    // Every command the bridge sends names its key or channel first.
                    let slot = match command.args_iter().nth(1) {
                        Some(redis::Arg::Simple(key)) => Slot::for_key(key),
                        _ => Slot::for_key(b""),
                    };
                    by_slot
                        .entry(slot)
                        .or_default()
                        .add_command(command)
                        .ignore();
                }
                let sends = by_slot.into_values().map(|pipe| {
                    let mut conn = conn.clone();
                    async move { pipe.query_async::<()>(&mut conn).await }
                });
                futures_util::future::try_join_all(sends).await.map(drop)
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Where subscriptions are made: the pub/sub connection of one Redis, or the
/// cluster connection (sharded subscriptions, each on its slot's node).
pub enum Subscriber {
    Single(PubSubSink),
    Cluster(ClusterConnection),
}

impl Subscriber {
    /// Subscribes (`on`) to or unsubscribes from `channels`, answering once
    /// Redis confirmed every one.
    pub async fn set(&mut self, channels: &[String], on: bool) -> RedisResult<()> {
        match self {
            Subscriber::Single(sink) if on => sink.subscribe(channels).await,
            Subscriber::Single(sink) => sink.unsubscribe(channels).await,
            Subscriber::Cluster(conn) => {
                // One command names channels of one slot only: one each,
                // sent together.
                let changes = channels.iter().map(|channel| {
                    let mut conn = conn.clone();
                    async move {
                        if on {
                            conn.ssubscribe(channel).await
                        } else {
                            conn.sunsubscribe(channel).await
                        }
                    }
                });
                futures_util::future::try_join_all(changes).await.map(drop)
            }
        }
    }
}
