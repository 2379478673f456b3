//! How many searches run at once on this instance (`SEARCHES_AT_ONCE`),
//! and one at a time for each user. A search holds a pooled database
//! connection while it runs, and on MySQL/MariaDB it costs in proportion
//! to the word's matches in the whole database (seconds for a common word
//! on a large one: BENCHMARKS.md "Search"), so a burst of searches, one
//! user's allowance spent at once or many users' together, could take
//! every connection from the requests that chat. Past either bound a
//! search is refused at once (`rate_limited`, 429), not queued: a queue
//! would only move the wait, and a client asks again when told.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use super::protocol::UserId;

/// What a search refused here is told (the web client waits the seconds it
/// names, then asks again if the query is still the one in the box).
pub const BUSY: &str = "too many searches at once; try again in 1 s";

/// The users whose search is running, at most `at_once` of them.
pub struct SearchSlots {
    at_once: usize,
    running: Mutex<HashSet<UserId>>,
}

/// A running search's place; given back when dropped.
#[must_use = "the slot is given back as soon as it is dropped"]
pub struct SearchSlot {
    slots: Arc<SearchSlots>,
    user: UserId,
}

impl SearchSlots {
    pub fn new(at_once: usize) -> Arc<Self> {
        Arc::new(SearchSlots {
            at_once: at_once.max(1),
            running: Mutex::new(HashSet::new()),
        })
    }

    /// A place for `user`'s search, or None while `at_once` searches are
    /// running or one of `user`'s is.
    pub fn try_start(self: &Arc<Self>, user: UserId) -> Option<SearchSlot> {
        // The set is consistent whatever panicked while holding it.
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if running.len() >= self.at_once || !running.insert(user) {
            return None;
        }
        Some(SearchSlot {
            slots: self.clone(),
            user,
        })
    }
}

impl Drop for SearchSlot {
    fn drop(&mut self) {
        let mut running = self
            .slots
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        running.remove(&self.user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_so_many_at_once_and_one_per_user() {
        let slots = SearchSlots::new(2);
        let first = slots.try_start(UserId(1)).expect("a free slot");
        assert!(
            slots.try_start(UserId(1)).is_none(),
            "one at a time per user"
        );
        let second = slots.try_start(UserId(2)).expect("a second slot");
        assert!(slots.try_start(UserId(3)).is_none(), "both slots taken");
        drop(first);
        let third = slots.try_start(UserId(3)).expect("given back on drop");
        assert!(slots.try_start(UserId(1)).is_none(), "taken again");
        drop((second, third));
        assert!(slots.try_start(UserId(1)).is_some());
    }
}
