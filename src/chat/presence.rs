//! Who is online: users with at least one live session on this instance, and
//! (with Redis) on the others. Written by the ChatServer and the Redis bridge,
//! read by sessions when they build contact lists, without a round trip
//! through any actor.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use super::protocol::UserId;

/// Online state shared by everything on one instance.
#[derive(Default)]
pub struct Presence {
    local: RwLock<HashSet<UserId>>,
    /// Users online on other instances: user → instances they are on.
    remote: RwLock<HashMap<UserId, HashSet<String>>>,
}

impl Presence {
    /// Whether `user` has a live session anywhere.
    pub fn is_online(&self, user: UserId) -> bool {
        let local = self
            .local
            .read()
            .map(|s| s.contains(&user))
            .unwrap_or(false);
        local
            || self
                .remote
                .read()
                .map(|r| r.contains_key(&user))
                .unwrap_or(false)
    }

    /// Marks `user` online here (first session) or not (last session gone).
    pub fn set_local(&self, user: UserId, online: bool) {
        if let Ok(mut local) = self.local.write() {
            if online {
                local.insert(user);
            } else {
                local.remove(&user);
            }
        }
    }

    /// Records `user`'s state on another instance; returns whether their
    /// overall remote state changed.
    pub fn set_remote(&self, user: UserId, instance: &str, online: bool) -> bool {
        let Ok(mut remote) = self.remote.write() else {
            return false;
        };
        if online {
            let instances = remote.entry(user).or_default();
            instances.insert(instance.to_string()) && instances.len() == 1
        } else {
            let Some(instances) = remote.get_mut(&user) else {
                return false;
            };
            let removed = instances.remove(instance);
            if instances.is_empty() {
                remote.remove(&user);
                removed
            } else {
                false
            }
        }
    }

    /// Forgets every user of a dead instance; returns those no longer online anywhere else.
    pub fn drop_instance(&self, instance: &str) -> Vec<UserId> {
        let Ok(mut remote) = self.remote.write() else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        remote.retain(|user, instances| {
            instances.remove(instance);
            if instances.is_empty() {
                gone.push(*user);
                false
            } else {
                true
            }
        });
        gone
    }
}
