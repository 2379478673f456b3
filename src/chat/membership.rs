//! Which conversations each user connected to this instance belongs to:
//! written by the ChatServer (at connect, and on every membership change,
//! local or from another instance), read by sessions to check a request
//! without a database round trip.
//!
//! A session loads its user's conversations from the database before it
//! registers, and a membership change can land in between. The ChatServer
//! numbers every change it applies (`seq`) and keeps the latest ones, so a
//! registration says which number its snapshot was taken after and the
//! changes since are applied on top (DESIGN.md "Groups").

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;

use bytes::Bytes;

use super::protocol::{ChatId, UserId};

/// One conversation of a user, as loaded when they connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatEntry {
    pub chat: ChatId,
    /// Whether presence is pushed in it: direct, or a group of at most
    /// `PRESENCE_MAX_MEMBERS` (B6).
    pub presence: bool,
    /// The conversation's latest `seq` when this was loaded (B7): where a
    /// room opened from it starts its live stream.
    pub seq: i64,
    /// A direct conversation whose two people have a block (C10).
    pub blocked: bool,
    /// Who a message to it reaches: what it costs its sender's fan-out
    /// budget.
    pub audience: Audience,
}

/// Who a message to a conversation reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The two people of a direct conversation.
    Direct,
    /// A group's members.
    Group(u64),
}

impl Audience {
    /// The deliveries one message costs: everyone but its sender.
    pub fn deliveries(self) -> u32 {
        match self {
            Audience::Direct => 1,
            Audience::Group(n) => u32::try_from(n.saturating_sub(1).max(1)).unwrap_or(u32::MAX),
        }
    }

    /// The deliveries one read mark's push costs: everyone but the reader
    /// where marks are pushed to the members (direct, and groups with
    /// presence, B4), none in a larger group (only the reader's own
    /// sessions get it).
    pub fn receipt_deliveries(self) -> u32 {
        match self {
            Audience::Group(n) if !group_presence(n) => 0,
            _ => self.deliveries(),
        }
    }
}

/// Largest group in which presence changes are pushed (B6).
pub const PRESENCE_MAX_MEMBERS: u64 = 100;

/// Whether presence is pushed in a group of this many members (B6): one
/// person coming online never costs more than `PRESENCE_MAX_MEMBERS` frames.
/// A direct conversation pushes it unless its people have a block (C10).
pub fn group_presence(members: u64) -> bool {
    members <= PRESENCE_MAX_MEMBERS
}

/// Who joined and who left a conversation, with the `conversation` pushes
/// that tell them. A conversation first used after it was created outside
/// the server (the `contact add` command) is announced the same way, with
/// no push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipChange {
    pub chat: ChatId,
    pub added: Vec<UserId>,
    pub removed: Vec<UserId>,
    /// Whether presence is pushed in the conversation after the change.
    pub presence: bool,
    /// The `conversation` push for every current member.
    pub push: Option<Bytes>,
    /// The push for the removed members (`"removed": true`).
    pub removed_push: Option<Bytes>,
}

impl MembershipChange {
    /// A direct conversation whose two people are members from now on,
    /// announced with no push (whoever made it pushes what it needs).
    pub fn direct(chat: ChatId, people: Vec<UserId>) -> Self {
        MembershipChange {
            chat,
            added: people,
            removed: Vec::new(),
            presence: true,
            push: None,
            removed_push: None,
        }
    }

    /// Whether the change adds or removes `user`.
    pub fn concerns(&self, user: UserId) -> bool {
        self.added.contains(&user) || self.removed.contains(&user)
    }

    /// Applies the change to one user's set of conversations.
    pub fn apply_to(&self, user: UserId, chats: &mut HashSet<ChatId>) {
        if self.removed.contains(&user) {
            chats.remove(&self.chat);
        }
        if self.added.contains(&user) {
            chats.insert(self.chat);
        }
    }
}

/// The conversations of every user with a session here.
pub struct Membership {
    users: RwLock<HashMap<UserId, HashSet<ChatId>>>,
    /// The number of the last change applied.
    seq: AtomicU64,
    /// Whether every change made anywhere has reached this record: false
    /// while the bus is down and until memberships are reloaded after it
    /// (changes made elsewhere meanwhile were missed). Sessions then check
    /// membership in the database instead (DESIGN.md "Groups").
    current: AtomicBool,
    /// Direct conversations of users here whose two people have a block:
    /// no messages are taken in them (C10).
    blocked: RwLock<HashSet<ChatId>>,
    /// The audiences of the conversations of users here (a group's count
    /// kept by the changes); a conversation joined meanwhile is looked up
    /// once by the first session that writes to it.
    audiences: RwLock<HashMap<ChatId, Audience>>,
}

impl Default for Membership {
    fn default() -> Self {
        Membership {
            users: RwLock::default(),
            seq: AtomicU64::new(0),
            current: AtomicBool::new(true),
            blocked: RwLock::default(),
            audiences: RwLock::default(),
        }
    }
}

impl Membership {
    /// Whether messages in `chat` are blocked (a direct conversation whose
    /// two people have a block).
    pub fn is_blocked(&self, chat: ChatId) -> bool {
        self.blocked.read().is_ok_and(|b| b.contains(&chat))
    }

    /// Records whether messages in `chat` are blocked.
    pub(super) fn set_blocked(&self, chat: ChatId, blocked: bool) {
        if let Ok(mut set) = self.blocked.write() {
            if blocked {
                set.insert(chat);
            } else {
                set.remove(&chat);
            }
        }
    }

    /// Who a message to `chat` reaches, if known here.
    pub fn audience(&self, chat: ChatId) -> Option<Audience> {
        self.audiences.read().ok()?.get(&chat).copied()
    }

    /// Records who a message to `chat` reaches (`None`: forget it, nobody
    /// here is in it any more).
    pub(crate) fn set_audience(&self, chat: ChatId, audience: Option<Audience>) {
        if let Ok(mut audiences) = self.audiences.write() {
            match audience {
                Some(a) => audiences.insert(chat, a),
                None => audiences.remove(&chat),
            };
        }
    }

    /// Whether the record can be trusted for authorization (see `current`).
    pub fn is_current(&self) -> bool {
        self.current.load(Ordering::Acquire)
    }

    /// Marks the record as holding every change, or as possibly stale.
    pub fn set_current(&self, current: bool) {
        self.current.store(current, Ordering::Release);
    }

    /// Whether `user` (connected here) belongs to `chat`, as far as this
    /// instance knows. `false` for a user not connected here.
    pub fn is_member(&self, user: UserId, chat: ChatId) -> bool {
        self.users
            .read()
            .map(|u| u.get(&user).is_some_and(|c| c.contains(&chat)))
            .unwrap_or(false)
    }

    /// What a contact list of `user`'s costs their fan-out budget: one unit
    /// per conversation in it (at least one), if `user` is connected here.
    pub fn contact_list_cost(&self, user: UserId) -> Option<u32> {
        let listed = self.users.read().ok()?.get(&user)?.len().max(1);
        Some(u32::try_from(listed).unwrap_or(u32::MAX))
    }

    /// The number of the last change applied: a snapshot loaded after
    /// reading it holds every change up to it.
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// The conversations of `user`, if connected here.
    pub(super) fn chats_of(&self, user: UserId) -> Vec<ChatId> {
        self.users
            .read()
            .map(|u| {
                u.get(&user)
                    .map(|c| c.iter().copied().collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }

    pub(super) fn set_user(&self, user: UserId, chats: HashSet<ChatId>) {
        if let Ok(mut users) = self.users.write() {
            users.insert(user, chats);
        }
    }

    pub(super) fn remove_user(&self, user: UserId) -> HashSet<ChatId> {
        self.users
            .write()
            .ok()
            .and_then(|mut u| u.remove(&user))
            .unwrap_or_default()
    }

    /// Applies a change to the users connected here it concerns; returns them.
    pub(super) fn apply(&self, change: &MembershipChange) -> Vec<UserId> {
        let Ok(mut users) = self.users.write() else {
            return Vec::new();
        };
        if let Ok(mut audiences) = self.audiences.write() {
            if let Some(Audience::Group(size)) = audiences.get_mut(&change.chat) {
                *size =
                    (*size + change.added.len() as u64).saturating_sub(change.removed.len() as u64);
            }
        }
        let mut touched = Vec::new();
        for user in change.removed.iter().chain(&change.added) {
            if let Some(chats) = users.get_mut(user) {
                change.apply_to(*user, chats);
                touched.push(*user);
            }
        }
        touched
    }

    /// Records that change number `seq` has been applied.
    pub(super) fn advance(&self, seq: u64) {
        self.seq.store(seq, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(chat: ChatId, added: &[i64], removed: &[i64]) -> MembershipChange {
        MembershipChange {
            chat,
            added: added.iter().copied().map(UserId).collect(),
            removed: removed.iter().copied().map(UserId).collect(),
            presence: true,
            push: None,
            removed_push: None,
        }
    }

    #[test]
    fn changes_reach_connected_users_only() {
        let m = Membership::default();
        let chat = ChatId(uuid::Uuid::new_v4());
        m.set_user(UserId(1), HashSet::new());
        let touched = m.apply(&change(chat, &[1, 2], &[]));
        assert_eq!(touched, vec![UserId(1)]);
        assert!(m.is_member(UserId(1), chat));
        assert!(!m.is_member(UserId(2), chat), "2 is not connected here");
        m.apply(&change(chat, &[], &[1]));
        assert!(!m.is_member(UserId(1), chat));
    }

    #[test]
    fn replaying_a_change_a_snapshot_already_holds_changes_nothing() {
        let chat = ChatId(uuid::Uuid::new_v4());
        let (join, leave) = (change(chat, &[1], &[]), change(chat, &[], &[1]));
        // Joined then left: whether the snapshot saw none, one or both, the
        // replay of both ends with the user out.
        for mut snapshot in [HashSet::new(), HashSet::from([chat])] {
            join.apply_to(UserId(1), &mut snapshot);
            leave.apply_to(UserId(1), &mut snapshot);
            assert!(snapshot.is_empty());
        }
    }
}
