//! Who has a block with whom (PROTOCOL.md C10), as the ChatServer needs it
//! for the users connected here: presence is never pushed between two
//! people with a block, in any conversation, and a direct conversation's
//! block is never missed by a registration that loaded its snapshot just
//! before the block was made.
//!
//! Blocks are rare and change slowly: the few people each user here has a
//! block with, plus the latest changes (bounded), are all it keeps.

use std::collections::{HashMap, HashSet, VecDeque};

use super::membership::{Audience, ChatEntry};
use super::protocol::{ChatId, UserId};

/// How many block changes are kept for registrations whose snapshot was
/// loaded before them (a registration takes milliseconds).
const RECENT: usize = 4096;

/// One block change: of a pair, or of their direct conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Pair(UserId, UserId, bool),
    Chat(ChatId, bool),
}

#[derive(Debug, Default)]
pub struct Blocklist {
    /// For each user here with any block, the people it is with (either
    /// way).
    peers: HashMap<UserId, HashSet<UserId>>,
    /// The latest changes, oldest first.
    recent: VecDeque<Change>,
}

impl Blocklist {
    /// Whether presence of `subject` is hidden from `viewer` (a user here).
    pub fn hides(&self, viewer: UserId, subject: UserId) -> bool {
        self.peers
            .get(&viewer)
            .is_some_and(|p| p.contains(&subject))
    }

    /// A pair's block changed; `here` tells which users are connected here.
    pub fn set_pair(
        &mut self,
        (a, b): (UserId, UserId),
        blocked: bool,
        here: impl Fn(UserId) -> bool,
    ) {
        for (user, peer) in [(a, b), (b, a)] {
            if here(user) {
                self.set_peer(user, peer, blocked);
            }
        }
        self.remember(Change::Pair(a, b, blocked));
    }

    /// A direct conversation's block changed.
    pub fn set_chat(&mut self, chat: ChatId, blocked: bool) {
        self.remember(Change::Chat(chat, blocked));
    }

    /// `user` registers here with `peers` and `chats` as loaded (possibly
    /// before the latest changes): the changes since are applied on top, in
    /// order, so the last one of each pair and conversation wins.
    pub fn register(&mut self, user: UserId, peers: Vec<UserId>, chats: &mut [ChatEntry]) {
        let mut mine: HashSet<UserId> = peers.into_iter().collect();
        for change in &self.recent {
            match *change {
                Change::Pair(a, b, blocked) if a == user || b == user => {
                    let peer = if a == user { b } else { a };
                    if blocked {
                        mine.insert(peer);
                    } else {
                        mine.remove(&peer);
                    }
                }
                Change::Chat(chat, blocked) => {
                    let entry = chats.iter_mut().find(|e| e.chat == chat);
                    if let Some(entry) = entry.filter(|e| e.audience == Audience::Direct) {
                        entry.blocked = blocked;
                        entry.presence = !blocked;
                    }
                }
                Change::Pair(..) => {}
            }
        }
        if !mine.is_empty() {
            self.peers.insert(user, mine);
        }
    }

    /// `user`'s last session here closed.
    pub fn forget(&mut self, user: UserId) {
        self.peers.remove(&user);
    }

    fn set_peer(&mut self, user: UserId, peer: UserId, blocked: bool) {
        if blocked {
            self.peers.entry(user).or_default().insert(peer);
        } else if let Some(set) = self.peers.get_mut(&user) {
            set.remove(&peer);
            if set.is_empty() {
                self.peers.remove(&user);
            }
        }
    }

    fn remember(&mut self, change: Change) {
        self.recent.push_back(change);
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(chat: ChatId, blocked: bool) -> ChatEntry {
        ChatEntry {
            chat,
            presence: !blocked,
            seq: 0,
            blocked,
            audience: Audience::Direct,
        }
    }

    #[test]
    fn a_block_made_while_a_snapshot_loaded_wins_over_it() {
        let (alice, bob, carol) = (UserId(1), UserId(2), UserId(3));
        let chat = ChatId(uuid::Uuid::from_u128(7));
        let mut list = Blocklist::default();
        // Bob blocks Alice while neither is here and Alice's snapshot (no
        // block yet) is on its way.
        list.set_pair((bob, alice), true, |_| false);
        list.set_chat(chat, true);
        let mut chats = [direct(chat, false)];
        list.register(alice, vec![], &mut chats);
        assert_eq!(chats[0], direct(chat, true));
        assert!(list.hides(alice, bob));
        assert!(!list.hides(alice, carol));
        // And lifted: the later change wins.
        list.set_pair((bob, alice), false, |u| u == alice);
        list.set_chat(chat, false);
        assert!(!list.hides(alice, bob));
        let mut chats = [direct(chat, true)];
        list.register(carol, vec![bob], &mut chats);
        assert_eq!(chats[0], direct(chat, false), "the latest change");
        assert!(list.hides(carol, bob), "loaded peers count");
        list.forget(carol);
        assert!(!list.hides(carol, bob));
    }

    #[test]
    fn a_change_reaches_whichever_of_the_two_is_here() {
        let (alice, bob) = (UserId(1), UserId(2));
        let mut list = Blocklist::default();
        list.set_pair((alice, bob), true, |u| u == bob);
        assert!(list.hides(bob, alice));
        assert!(!list.hides(alice, bob), "alice is not here");
        list.set_pair((alice, bob), false, |u| u == bob);
        assert!(list.peers.is_empty(), "nothing kept for nobody");
    }
}
