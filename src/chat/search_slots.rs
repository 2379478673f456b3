//! How many searches run at once on this instance (`SEARCHES_AT_ONCE`),
//! and one at a time for each user. A search holds a pooled database
//! connection while it runs, and on MySQL/MariaDB it costs in proportion
//! to the word's matches in the whole database (seconds for a common word
//! on a large one: BENCHMARKS.md "Search"), so a burst of searches, one
//! user's allowance spent at once or many users' together, could take
//! every connection from the requests that chat.
//!
//! A search waits, holding no connection, for the user's earlier searches
//! to finish and then for a free slot (first come, first served), so a
//! client may send several without waiting for each answer. Only a user
//! with `PER_USER` searches already in line is refused, at once
//! (`rate_limited`, 429): their searches cannot pile up behind slow ones.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::protocol::UserId;

/// What a search refused here is told (the web client waits the seconds it
/// names, then asks again if the query is still the one in the box).
pub const BUSY: &str = "too many searches at once; try again in 1 s";

/// Searches one user may have in line, the running one included.
pub const PER_USER: usize = 5;

/// The slots, and each user's line: its turn (one permit) and how many
/// of their searches are in it.
pub struct SearchSlots {
    running: Arc<Semaphore>,
    lines: Mutex<HashMap<UserId, (Arc<Semaphore>, usize)>>,
}

/// A search in its user's line, not yet running.
#[must_use = "a search leaves the line as soon as this is dropped"]
pub struct InLine {
    turn: Arc<Semaphore>,
    place: Place,
}

/// A running search's slot and turn; both given back when dropped.
pub struct SearchSlot {
    _running: OwnedSemaphorePermit,
    _turn: OwnedSemaphorePermit,
    _place: Place,
}

/// Counts a search in its user's line until dropped.
struct Place {
    slots: Arc<SearchSlots>,
    user: UserId,
}

impl SearchSlots {
    pub fn new(at_once: usize) -> Arc<Self> {
        Arc::new(SearchSlots {
            running: Arc::new(Semaphore::new(at_once.max(1))),
            lines: Mutex::new(HashMap::new()),
        })
    }

    /// A place in `user`'s line, or None with `PER_USER` there already.
    pub fn enter(self: &Arc<Self>, user: UserId) -> Option<InLine> {
        // The map is consistent whatever panicked while holding it.
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        let (turn, queued) = lines
            .entry(user)
            .or_insert_with(|| (Arc::new(Semaphore::new(1)), 0));
        if *queued >= PER_USER {
            return None;
        }
        *queued += 1;
        Some(InLine {
            turn: turn.clone(),
            place: Place {
                slots: self.clone(),
                user,
            },
        })
    }
}

impl InLine {
    /// Waits for the user's earlier searches, then for a free slot.
    pub async fn turn(self) -> SearchSlot {
        // Neither semaphore is ever closed, so neither wait can fail.
        let turn = self
            .turn
            .acquire_owned()
            .await
            .expect("a user's search line is never closed");
        let running = self
            .place
            .slots
            .running
            .clone()
            .acquire_owned()
            .await
            .expect("the search slots are never closed");
        SearchSlot {
            _running: running,
            _turn: turn,
            _place: self.place,
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut lines = self
            .slots
            .lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, queued)) = lines.get_mut(&self.user) {
            *queued -= 1;
            if *queued == 0 {
                lines.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn lines(slots: &SearchSlots) -> usize {
        slots.lines.lock().expect("no test panics holding it").len()
    }

    #[test]
    fn a_search_waits_for_a_slot_and_for_its_users_earlier_one() {
        let slots = SearchSlots::new(2);
        let enter = |user| slots.enter(UserId(user)).expect("room in the line");
        let first = enter(1).turn().now_or_never().expect("a free slot");
        let mut again = Box::pin(enter(1).turn());
        assert!(
            again.as_mut().now_or_never().is_none(),
            "after the user's first"
        );
        let second = enter(2).turn().now_or_never().expect("a second slot");
        let mut third = Box::pin(enter(3).turn());
        assert!(third.as_mut().now_or_never().is_none(), "both slots taken");
        drop(first);
        // The user's turn is free, but the slot went to who asked first.
        assert!(again.as_mut().now_or_never().is_none());
        let third = third.now_or_never().expect("first come, first served");
        drop(second);
        let again = again.now_or_never().expect("its turn and a slot");
        drop((third, again));
        assert_eq!(lines(&slots), 0, "nobody's line is kept");
    }

    #[test]
    fn a_user_has_so_many_in_line_and_a_dropped_wait_leaves_it() {
        let slots = SearchSlots::new(1);
        let running = slots.enter(UserId(1)).unwrap().turn().now_or_never();
        let mut waiting: Vec<InLine> = (1..PER_USER)
            .map(|_| slots.enter(UserId(1)).expect("room in the line"))
            .collect();
        assert!(slots.enter(UserId(1)).is_none(), "the line is full");
        assert!(
            slots.enter(UserId(2)).is_some(),
            "another's line is their own"
        );
        // A search given up while waiting (its client gone) leaves.
        let mut given_up = Box::pin(waiting.pop().expect("four wait").turn());
        assert!(given_up.as_mut().now_or_never().is_none());
        drop(given_up);
        assert!(slots.enter(UserId(1)).is_some());
        drop((running, waiting));
        assert_eq!(lines(&slots), 0);
    }
}
