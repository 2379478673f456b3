//! A room's place in its conversation's events (B7): each room delivers
//! in `seq` order, holding what comes after a hole until it is filled.

use super::*;

/// A conversation with members connected here.
pub(super) struct Room {
    pub(super) users: HashSet<UserId>,
    /// Whether presence changes are pushed in it (B6).
    pub(super) presence: bool,
    /// Where its stream of events stands here (B7).
    pub(super) order: Order,
}

/// A room's place in its conversation's events: the last `seq` its
/// sessions were given, and the events held behind a hole.
#[derive(Default)]
pub(super) struct Order {
    /// `None` until known: the first event sets it.
    pub(super) last: Option<i64>,
    pub(super) held: BTreeMap<i64, ConversationFrames>,
    /// A fill from the database is under way.
    pub(super) filling: bool,
}

impl Order {
    pub(super) fn starting_at(seq: Option<i64>) -> Self {
        Order {
            last: seq,
            ..Order::default()
        }
    }

    /// Takes an event; returns those now due, in order (none when it is a
    /// duplicate or waits behind a hole).
    pub(super) fn accept(
        &mut self,
        frames: ConversationFrames,
        seq: i64,
    ) -> Vec<ConversationFrames> {
        match self.last {
            Some(last) if seq <= last => return Vec::new(),
            Some(last) if seq > last + 1 => {
                self.held.insert(seq, frames);
                if self.held.len() > HELD_LIMIT {
                    return self.skip_hole();
                }
                return Vec::new();
            }
            _ => {}
        }
        self.last = Some(seq);
        let mut due = vec![frames];
        due.extend(self.release());
        due
    }

    /// The held events that follow on without a hole.
    pub(super) fn release(&mut self) -> Vec<ConversationFrames> {
        let mut due = Vec::new();
        while let Some(entry) = self.held.first_entry() {
            let next = self.last.map_or(*entry.key(), |l| l + 1);
            if *entry.key() > next {
                break;
            }
            let seq = *entry.key();
            let frames = entry.remove();
            if self.last.is_none_or(|l| seq > l) {
                self.last = Some(seq);
                due.push(frames);
            }
        }
        due
    }

    /// The hole to fill: the events after `last` and before the first held.
    pub(super) fn hole(&self) -> Option<(i64, i64)> {
        let (first, _) = self.held.first_key_value()?;
        Some((self.last?, *first))
    }

    /// Gives up on the hole: the held events go out as they are, and each
    /// session sees the jump in `seq` and asks `sync` itself.
    pub(super) fn skip_hole(&mut self) -> Vec<ConversationFrames> {
        if let Some((&first, _)) = self.held.first_key_value() {
            self.last = Some(first - 1);
        }
        self.release()
    }
}
