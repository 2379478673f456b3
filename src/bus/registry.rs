//! The registry in Redis: which instances live (each one's liveness key,
//! whose value is the newest envelope version it reads), which users each
//! has online, and the commands that keep it: registering, the heartbeat's
//! liveness check with its burials, presence changes. The bridge
//! (`redis/`) decides when to run them and what follows from them.

use std::collections::HashSet;
use std::time::Duration;

use redis::AsyncTypedCommands;

use super::envelope::{Envelope, ENVELOPE_VERSION};
use super::names::Names;
use super::target::Conn;
use crate::chat::protocol::{ChatId, UserId};

/// How long an instance's liveness key lives without a refresh.
const ALIVE_TTL_SECONDS: u64 = 15;
/// How long an instance's user set outlives its last refresh: a crashed
/// instance's keys vanish even when no live instance buries it.
const USERS_TTL_SECONDS: i64 = 4 * ALIVE_TTL_SECONDS as i64;
/// How often the liveness key is refreshed and dead instances looked for.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(5);

/// Adds this instance and its users to the registry, with a fresh liveness key.
pub(super) async fn register(
    conn: &mut Conn,
    names: &Names,
    users: &[UserId],
) -> redis::RedisResult<()> {
    let users_key = names.users_of(&names.instance);
    let mut pipe = redis::pipe();
    pipe.atomic()
        .set_ex(
            names.alive(&names.instance),
            ENVELOPE_VERSION,
            ALIVE_TTL_SECONDS,
        )
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

/// The newest envelope version an instance reads, from the value of its
/// liveness key; `None` once the key is gone (the instance is dead).
async fn envelope_version(
    conn: &mut Conn,
    names: &Names,
    instance: &str,
) -> redis::RedisResult<Option<u8>> {
    let value = conn.get(names.alive(instance)).await?;
    // Anything but a version is an instance of version 1, which wrote `1`.
    Ok(value.map(|v| v.parse().unwrap_or(1)))
}

/// What the other live instances have: (instance, user) for every user
/// online there, and the newest envelope version all of them read.
pub(super) async fn online_elsewhere(
    conn: &mut Conn,
    names: &Names,
) -> redis::RedisResult<(Vec<(String, UserId)>, u8)> {
    let instances: HashSet<String> = conn.smembers(names.instances()).await?;
    let mut online = Vec::new();
    let mut readable = ENVELOPE_VERSION;
    for other in instances.into_iter().filter(|i| *i != names.instance) {
        let Some(version) = envelope_version(conn, names, &other).await? else {
            continue;
        };
        readable = readable.min(version);
        let users: HashSet<String> = conn.smembers(names.users_of(&other)).await?;
        online.extend(
            users
                .iter()
                .filter_map(|u| u.parse().ok())
                .map(|u| (other.clone(), UserId(u))),
        );
    }
    Ok((online, readable))
}

/// Refreshes this instance's liveness and looks at the others': buries
/// (for everyone) each one whose key expired, telling the others with an
/// envelope of `version`. Returns the buried instances and the newest
/// envelope version every live instance reads.
pub(super) async fn check_liveness(
    conn: &mut Conn,
    names: &Names,
    version: u8,
) -> redis::RedisResult<(Vec<String>, u8)> {
    conn.set_ex(
        names.alive(&names.instance),
        ENVELOPE_VERSION,
        ALIVE_TTL_SECONDS,
    )
    .await?;
    conn.expire(names.users_of(&names.instance), USERS_TTL_SECONDS)
        .await?;
    conn.expire(names.instances(), USERS_TTL_SECONDS).await?;
    let instances: HashSet<String> = conn.smembers(names.instances()).await?;
    let mut buried = Vec::new();
    let mut readable = ENVELOPE_VERSION;
    for other in instances.into_iter().filter(|i| *i != names.instance) {
        if let Some(theirs) = envelope_version(conn, names, &other).await? {
            readable = readable.min(theirs);
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
                .publish(names.control(), envelope.encode(version))
                .query_async::<()>(conn)
                .await?;
            buried.push(other);
        }
    }
    Ok((buried, readable))
}

/// The commands that record `user` online (or not) here and tell `notify`,
/// the conversations to push it to, with an envelope of `version`.
pub(super) fn presence_commands(
    names: &Names,
    user: UserId,
    online: bool,
    notify: Vec<ChatId>,
    version: u8,
) -> Vec<redis::Cmd> {
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
    .encode(version);
    vec![membership, expiry, names.publish(names.control(), envelope)]
}
