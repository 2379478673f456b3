//! Who is online: users with at least one live session on this instance, and
//! (with Redis) on the others. Written by the ChatServer and the Redis bridge,
//! read by sessions when they build contact lists, without a round trip
//! through any actor.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use super::protocol::UserId;

/// Presence as one viewer may see it: nobody they have a block with, either
/// way (C10), is ever online to them.
pub struct PresenceView<'a> {
    presence: &'a Presence,
    hidden: HashSet<UserId>,
}

impl<'a> PresenceView<'a> {
    /// As seen by someone who has a block with each of `hidden`.
    pub fn new(presence: &'a Presence, hidden: Vec<UserId>) -> Self {
        PresenceView {
            presence,
            hidden: hidden.into_iter().collect(),
        }
    }

    /// As a frame that every member shares shows it.
    pub fn shared(presence: &'a Presence) -> Self {
        PresenceView {
            presence,
            hidden: HashSet::new(),
        }
    }

    /// Whether `user` counts as online to this viewer.
    pub fn is_online(&self, user: UserId) -> bool {
        !self.hidden.contains(&user) && self.presence.is_online(user)
    }
}

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

    /// Whether `user` has a live session on another instance (as far as
    /// this one has heard).
    pub fn is_online_elsewhere(&self, user: UserId) -> bool {
        self.remote
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

    /// Replaces what is known of other instances with `snapshot` (instance,
    /// user), as read from Redis after an outage; returns the users whose
    /// overall state changed, with their new state.
    pub fn replace_remote(&self, snapshot: &[(String, UserId)]) -> Vec<(UserId, bool)> {
        let mut fresh: HashMap<UserId, HashSet<String>> = HashMap::new();
        for (instance, user) in snapshot {
            fresh.entry(*user).or_default().insert(instance.clone());
        }
        self.swap_remote(|_| true, fresh)
    }

    /// Replaces what is known of one other instance's users (it told us it
    /// re-registered them after an outage); returns the changes as `replace_remote`.
    pub fn replace_instance(&self, instance: &str, users: &[UserId]) -> Vec<(UserId, bool)> {
        let fresh = users
            .iter()
            .map(|u| (*u, HashSet::from([instance.to_string()])))
            .collect();
        self.swap_remote(|i| i == instance, fresh)
    }

    /// Drops the instances `replaced` selects from the remote map, merges in
    /// `fresh`, and reports who went offline or came online overall.
    fn swap_remote(
        &self,
        replaced: impl Fn(&str) -> bool,
        fresh: HashMap<UserId, HashSet<String>>,
    ) -> Vec<(UserId, bool)> {
        let local: HashSet<UserId> = self.local.read().map(|l| l.clone()).unwrap_or_default();
        let Ok(mut remote) = self.remote.write() else {
            return Vec::new();
        };
        let before: HashSet<UserId> = remote.keys().copied().collect();
        remote.retain(|_, instances| {
            instances.retain(|i| !replaced(i));
            !instances.is_empty()
        });
        for (user, instances) in fresh {
            remote.entry(user).or_default().extend(instances);
        }
        let after: HashSet<UserId> = remote.keys().copied().collect();
        let went = before.difference(&after).map(|u| (*u, false));
        let came = after.difference(&before).map(|u| (*u, true));
        went.chain(came)
            .filter(|(u, _)| !local.contains(u))
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_after_an_outage_replaces_what_was_known() {
        let p = Presence::default();
        let (bob, carol, dave) = (UserId(2), UserId(3), UserId(4));
        p.set_remote(bob, "b", true);
        p.set_remote(dave, "b", true);
        p.set_local(dave, true);
        // During the outage bob and dave left b, carol arrived on c.
        let mut changes = p.replace_remote(&[("c".into(), carol)]);
        changes.sort();
        assert_eq!(changes, vec![(bob, false), (carol, true)], "dave is local");
        assert!(!p.is_online(bob) && p.is_online(carol));
        assert!(p.is_online_elsewhere(carol) && !p.is_online_elsewhere(dave));
        // Instance c re-registers with bob only.
        let mut changes = p.replace_instance("c", &[bob]);
        changes.sort();
        assert_eq!(changes, vec![(bob, true), (carol, false)]);
    }
}
