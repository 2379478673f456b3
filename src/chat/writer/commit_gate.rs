//! Test support: holds the commit of the next batch that stores an event of
//! one conversation, after its `seq` was taken and before the commit, so a
//! test can make one instance's commit slow on purpose while another
//! instance stores later events of the same conversation
//! (tests/conversation_log.rs); or the next batch of read marks with a mark
//! in it, before it is written (tests/chat_features.rs); or a batch of
//! changes after it decided them and before it numbers their events
//! (`Point::Numbering`, tests/message_changes.rs); or a search in one
//! conversation as it starts (`Point::Search`, tests/search.rs). Unused,
//! it costs one atomic load a batch or search.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, Semaphore};

static ARMED: AtomicBool = AtomicBool::new(false);
static GATES: Mutex<Option<HashMap<(Point, uuid::Uuid), Gate>>> = Mutex::new(None);

/// Where in a batch a gate holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Point {
    /// After the batch's `seq` numbers were taken, before its commit.
    Commit,
    /// A batch of changes, after its reads and writes, before its events
    /// take their `seq` (so before the conversation's row is locked).
    Numbering,
    /// A search in the conversation, as it starts (its slot taken).
    Search,
}

/// A held conversation: `reached` once a batch waits at it; that batch
/// commits once `release` is called.
#[derive(Clone)]
pub struct Gate {
    reached: Arc<Notify>,
    open: Arc<Semaphore>,
}

impl Gate {
    /// Waits until a batch of the conversation is held here.
    pub async fn reached(&self) {
        self.reached.notified().await;
    }

    /// Lets the held batch commit.
    pub fn release(&self) {
        self.open.close();
    }
}

/// Holds the next batch with an event of `chat` before its commit.
pub fn hold(chat: uuid::Uuid) -> Gate {
    hold_at(Point::Commit, chat)
}

/// Holds the next batch with an event of `chat` at `point`.
pub fn hold_at(point: Point, chat: uuid::Uuid) -> Gate {
    let gate = Gate {
        reached: Arc::new(Notify::new()),
        open: Arc::new(Semaphore::new(0)),
    };
    let mut gates = GATES.lock().unwrap_or_else(|e| e.into_inner());
    gates
        .get_or_insert_with(HashMap::new)
        .insert((point, chat), gate.clone());
    ARMED.store(true, Ordering::Release);
    gate
}

/// Whether a test has held a conversation in this process: the writer
/// then takes the path that has a point between a batch's `seq` and its
/// commit for the gate to hold.
pub(super) fn armed() -> bool {
    ARMED.load(Ordering::Acquire)
}

/// Where a writer waits before its commit, if a gate holds one of `chats`.
pub(crate) async fn pass(chats: impl Iterator<Item = uuid::Uuid>) {
    pass_at(Point::Commit, chats).await
}

/// Where a writer waits at `point`, if a gate holds one of `chats` there.
pub(crate) async fn pass_at(point: Point, chats: impl Iterator<Item = uuid::Uuid>) {
    if !armed() {
        return;
    }
    let gate = {
        let mut gates = GATES.lock().unwrap_or_else(|e| e.into_inner());
        let Some(gates) = gates.as_mut() else {
            return;
        };
        let mut found = None;
        for chat in chats {
            if let Some(gate) = gates.remove(&(point, chat)) {
                found = Some(gate);
                break;
            }
        }
        found
    };
    if let Some(gate) = gate {
        gate.reached.notify_one();
        // Closed by `release`: the error is the signal to go on.
        let _ = gate.open.acquire().await;
    }
}
