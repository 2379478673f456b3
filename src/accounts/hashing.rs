//! Password hashes off the async workers, a bounded number at a time.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::AccountError;
use crate::auth::password;

/// Password hashes running at once, one per core, and those waiting.
/// Hashing is pure CPU, so more at once cannot finish sooner, and each
/// holds 19 MiB: a burst of logins queues here instead of multiplying
/// memory, and beyond [`WAITING_PER_CORE`] a core it is refused, so a
/// flood cannot queue requests (and their answers' delay) without end.
struct HashSlots {
    running: tokio::sync::Semaphore,
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// Hashes that may wait for a slot, per core: about a second of hashing.
const WAITING_PER_CORE: usize = 32;

impl HashSlots {
    fn new(cores: usize, max_waiting: usize) -> Self {
        Self {
            running: tokio::sync::Semaphore::new(cores),
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// The process's slots, one per core.
    fn shared() -> &'static HashSlots {
        static SLOTS: std::sync::OnceLock<HashSlots> = std::sync::OnceLock::new();
        SLOTS.get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            HashSlots::new(cores, cores * WAITING_PER_CORE)
        })
    }

    /// Runs argon2 work off the async workers once a slot is free; refused
    /// at once if `max_waiting` hashes are waiting for one already.
    async fn hash<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AccountError> {
        let closed = |e: tokio::sync::AcquireError| AccountError::Hashing(e.to_string());
        let _slot = match self.running.try_acquire() {
            Ok(slot) => slot,
            Err(tokio::sync::TryAcquireError::Closed) => {
                return Err(AccountError::Hashing("no hashing slots".into()))
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                let _waiting = Waiting::join(self)?;
                self.running.acquire().await.map_err(closed)?
            }
        };
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| AccountError::Hashing(e.to_string()))
    }
}

/// One hash counted among those waiting for a slot, until it has one.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn join(slots: &'a HashSlots) -> Result<Self, AccountError> {
        let before = slots.waiting.fetch_add(1, Ordering::AcqRel);
        let waiting = Waiting(&slots.waiting); // taken back on drop, refused or not
        if before >= slots.max_waiting {
            return Err(AccountError::HashingBusy(before));
        }
        Ok(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs argon2 work on the process's hashing slots.
async fn hashing<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AccountError> {
    HashSlots::shared().hash(work).await
}

/// Hashes off the async workers: argon2 takes tens of milliseconds of CPU.
pub async fn hash_password(password: String) -> Result<String, AccountError> {
    hashing(move || password::hash_password(&password)).await
}

/// Verifies off the async workers; with no stored hash, spends the same time
/// on a dummy so the timing does not tell whether the user exists.
/// An error: the password was not checked (`HashingBusy`: the server is
/// too busy; try again).
pub async fn verify_password(password: String, phc: Option<String>) -> Result<bool, AccountError> {
    hashing(move || match phc {
        Some(phc) => password::verify_password(&password, &phc),
        None => {
            password::verify_against_dummy(&password);
            false
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::{AccountError, HashSlots};

    #[tokio::test]
    async fn beyond_the_waiting_bound_a_hash_is_refused_at_once() {
        let slots: &'static HashSlots = Box::leak(Box::new(HashSlots::new(1, 1)));
        let held = slots.running.try_acquire().expect("the one slot");
        // One hash waits for the slot…
        let waiting = tokio::spawn(slots.hash(|| 7));
        while slots.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        // …so the next is refused without waiting, and not counted.
        match slots.hash(|| 8).await {
            Err(AccountError::HashingBusy(1)) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(slots.waiting.load(Ordering::Acquire), 1);
        drop(held);
        assert_eq!(waiting.await.expect("no panic").expect("hashed"), 7);
        assert_eq!(slots.waiting.load(Ordering::Acquire), 0);
        // With a slot free, nothing waits.
        assert_eq!(slots.hash(|| 9).await.expect("hashed"), 9);
    }
}
