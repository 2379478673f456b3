//! Test support: holds the commit of the next batch that stores an event of
//! one conversation, after its `seq` was taken and before the commit, so a
//! test can make one instance's commit slow on purpose while another
//! instance stores later events of the same conversation
//! (tests/conversation_log.rs); or the next batch of read marks with a mark
//! in it, before it is written (tests/chat_features.rs). Unused, it costs
//! one atomic load a batch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, Semaphore};

static ARMED: AtomicBool = AtomicBool::new(false);
static GATES: Mutex<Option<HashMap<uuid::Uuid, Gate>>> = Mutex::new(None);

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
    let gate = Gate {
        reached: Arc::new(Notify::new()),
        open: Arc::new(Semaphore::new(0)),
    };
    let mut gates = GATES.lock().unwrap_or_else(|e| e.into_inner());
    gates
        .get_or_insert_with(HashMap::new)
        .insert(chat, gate.clone());
    ARMED.store(true, Ordering::Release);
    gate
}

/// Whether a test has held a conversation in this process: the writer
/// then takes the path that has a point between a batch's `seq` and its
/// commit for the gate to hold.
pub(super) fn armed() -> bool {
    ARMED.load(Ordering::Acquire)
}

/// Where a writer waits, if a gate holds one of `chats`.
pub(crate) async fn pass(chats: impl Iterator<Item = uuid::Uuid>) {
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
            if let Some(gate) = gates.remove(&chat) {
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
