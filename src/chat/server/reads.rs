//! Read marks' pushes (B4 `read`, C7). The read-mark writer hands over each
//! batch it stored (`ReadsStored`), and a conversation's marks reach each
//! of its sessions here together: one wake-up and one write per connection
//! for all of them, where a push per mark woke every member's connection
//! once per reader (in a group of 100 where half the members mark a
//! message read, fifty times each). They cross to the other instances the
//! same way, a conversation's marks in one bus event (`BusEvent::Reads`),
//! and arrive there as a `ReadsStored` of their own.

use super::*;
use crate::chat::membership::{group_presence, Audience};
use crate::chat::messages::{ReadsStored, StoredRead};
use crate::chat::protocol::ReadEvent;

impl Handler<ReadsStored> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: ReadsStored, _: &mut Context<Self>) {
        let mut reads = msg.reads;
        reads.sort_unstable_by_key(|read| read.chat.0);
        let mut overflowed = Vec::new();
        for marks in reads.chunk_by(|a, b| a.chat == b.chat) {
            self.push_reads(marks, msg.broadcast, &mut overflowed);
        }
        self.drop_overflowed(overflowed);
    }
}

impl ChatServer {
    /// One conversation's marks: to the members' sessions here but the one
    /// that asked each, and (`broadcast`) to the other instances; in a
    /// group too large for presence, and for a mark its reader's fan-out
    /// budget did not cover (not `shared`), only to each reader's own
    /// other sessions (C7).
    fn push_reads(
        &mut self,
        marks: &[StoredRead],
        broadcast: bool,
        overflowed: &mut Vec<(UserId, SessionId)>,
    ) {
        let Some(chat) = marks.first().map(|mark| mark.chat) else {
            return;
        };
        let to_everyone = match self.membership.audience(chat) {
            Some(Audience::Group(members)) => group_presence(members),
            _ => true,
        };
        if !to_everyone {
            return self.push_own_reads(chat, marks, broadcast, overflowed);
        }
        if marks.iter().all(|mark| mark.shared) {
            return self.push_shared_reads(chat, marks, broadcast, overflowed);
        }
        let (shared, own): (Vec<StoredRead>, Vec<StoredRead>) =
            marks.iter().partition(|mark| mark.shared);
        self.push_own_reads(chat, &own, broadcast, overflowed);
        self.push_shared_reads(chat, &shared, broadcast, overflowed);
    }

    /// Marks that reach only their readers' own other sessions, here and
    /// (`broadcast`, through the control channel) wherever else they are.
    fn push_own_reads(
        &mut self,
        chat: ChatId,
        marks: &[StoredRead],
        broadcast: bool,
        overflowed: &mut Vec<(UserId, SessionId)>,
    ) {
        let mut elsewhere = Vec::new();
        for (mark, frame) in marks.iter().zip(read_frames(chat, marks)) {
            self.push(mark.user, mark.session, &frame, overflowed);
            // Through Redis only when the reader has a session elsewhere:
            // in a busy large group, marks far outnumber messages.
            if broadcast && self.presence.is_online_elsewhere(mark.user) {
                elsewhere.push((mark.user, mark.up_to, frame));
            }
        }
        if !elsewhere.is_empty() {
            self.bus.publish(BusEvent::Reads {
                chat,
                reads: elsewhere,
                everyone: false,
            });
        }
    }

    /// Marks that reach every member's sessions but the one that asked
    /// each, here and (`broadcast`, through the conversation's channel) on
    /// the other instances.
    fn push_shared_reads(
        &mut self,
        chat: ChatId,
        marks: &[StoredRead],
        broadcast: bool,
        overflowed: &mut Vec<(UserId, SessionId)>,
    ) {
        if marks.is_empty() {
            return;
        }
        let frames = read_frames(chat, marks);
        if broadcast {
            let reads = marks.iter().zip(&frames);
            self.bus.publish(BusEvent::Reads {
                chat,
                reads: reads
                    .map(|(mark, frame)| (mark.user, mark.up_to, frame.clone()))
                    .collect(),
                everyone: true,
            });
        }
        let Some(room) = self.rooms.get(&chat) else {
            return;
        };
        let mut theirs = Vec::with_capacity(frames.len());
        for user in &room.users {
            let Some(entry) = self.users.get(user) else {
                continue;
            };
            for (&id, link) in &entry.sessions {
                theirs.clear();
                let asked_elsewhere = marks.iter().map(|mark| mark.session != Some(id));
                let frames = frames.iter().zip(asked_elsewhere);
                theirs.extend(frames.filter_map(|(frame, push)| push.then_some(frame)));
                self.push_session(*user, id, link, &theirs, overflowed);
            }
        }
    }
}

/// The `read` push of each mark, in order.
fn read_frames(chat: ChatId, marks: &[StoredRead]) -> Vec<Bytes> {
    marks
        .iter()
        .map(|mark| {
            ServerEvent::Read(ReadEvent {
                pk: chat,
                user_id: mark.user.0,
                up_to: mark.up_to,
            })
            .to_json()
        })
        .collect()
}
