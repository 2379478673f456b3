//! Password-guessing protection, as OWASP recommends it: failures are
//! counted per (account, client address) with growing delays, under looser
//! ceilings per account and per address. An attempt is counted the moment it
//! starts, before the password is hashed, so concurrent guesses cannot slip
//! past the limit; a success takes its own count back.
//!
//! The per-account ceiling only stops addresses that have been guessing: a
//! correct password from an address with no failures, or with one mistyped
//! attempt at this account and none at any other, always gets through, so
//! nobody can lock a user out with guesses of their own.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::rate_limit::PruneAt;

/// Failures per (account, address) that are free of any delay.
const FREE_FAILURES: usize = 3;
/// An account may fail this many times more often than one (account,
/// address) pair, from all addresses together.
const PER_ACCOUNT_FACTOR: u32 = 10;
/// A client address may fail this many times more often than one pair, for
/// all accounts together (several people share an address behind a NAT).
const PER_ADDRESS_FACTOR: u32 = 10;

/// The failures in the window, and when stale keys are next pruned (the
/// rate limiter's rule: a spray of fresh keys is not scanned on every
/// attempt).
#[derive(Default)]
struct Counters {
    pairs: HashMap<(String, IpAddr), VecDeque<Instant>>,
    accounts: HashMap<String, VecDeque<Instant>>,
    addresses: HashMap<IpAddr, VecDeque<Instant>>,
    prune: PruneAt,
}

impl Counters {
    fn keys(&self) -> usize {
        self.pairs.len() + self.accounts.len() + self.addresses.len()
    }
}

/// Failed-attempt counters for one kind of password check (login, password change).
pub struct AttemptThrottle {
    max_attempts: u32,
    window: Duration,
    counters: Arc<Mutex<Counters>>,
}

/// An attempt under way: a failure unless `succeeded` is called.
#[must_use = "an attempt counts as failed unless it is marked as succeeded"]
pub struct Attempt {
    account: String,
    address: IpAddr,
    at: Instant,
    counters: Arc<Mutex<Counters>>,
}

impl Attempt {
    /// The password was right: this attempt no longer counts, and the
    /// failures of this account from this address are forgotten.
    pub fn succeeded(self) {
        let Ok(mut c) = self.counters.lock() else {
            return;
        };
        c.pairs.remove(&(self.account.clone(), self.address));
        remove_one(c.accounts.get_mut(&self.account), self.at);
        remove_one(c.addresses.get_mut(&self.address), self.at);
    }

    /// The password was not checked (the server was too busy to hash it):
    /// this attempt does not count, and earlier failures stay as they were.
    pub fn withdrawn(self) {
        let Ok(mut c) = self.counters.lock() else {
            return;
        };
        remove_one(
            c.pairs.get_mut(&(self.account.clone(), self.address)),
            self.at,
        );
        remove_one(c.accounts.get_mut(&self.account), self.at);
        remove_one(c.addresses.get_mut(&self.address), self.at);
    }
}

fn remove_one(times: Option<&mut VecDeque<Instant>>, at: Instant) {
    if let Some(times) = times {
        if let Some(i) = times.iter().rposition(|t| *t == at) {
            times.remove(i);
        }
    }
}

/// Drops the times that left the window; the number that remain.
fn live(times: &mut VecDeque<Instant>, now: Instant, window: Duration) -> usize {
    while times
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= window)
    {
        times.pop_front();
    }
    times.len()
}

/// Seconds until the oldest of `times` leaves the window (at least 1).
fn until_oldest_expires(times: &VecDeque<Instant>, now: Instant, window: Duration) -> u64 {
    let oldest = times.front().copied().unwrap_or(now);
    window
        .saturating_sub(now.saturating_duration_since(oldest))
        .as_secs()
        .max(1)
}

impl AttemptThrottle {
    /// `max_attempts` failures per (account, address) in `window`.
    pub fn new(max_attempts: u32, window: Duration) -> Self {
        AttemptThrottle {
            max_attempts: max_attempts.max(1),
            window,
            counters: Arc::default(),
        }
    }

    /// Starts an attempt, counted at once as a failure; or the seconds to
    /// wait before this account may be tried again from this address.
    pub fn begin(&self, account: &str, address: IpAddr) -> Result<Attempt, u64> {
        self.begin_at(account, address, Instant::now())
    }

    fn begin_at(&self, account: &str, address: IpAddr, now: Instant) -> Result<Attempt, u64> {
        let account = account.to_string();
        let window = self.window;
        let mut c = self.counters.lock().map_err(|_| 1u64)?;
        if c.prune.due(c.keys()) {
            let fresh = |t: &VecDeque<Instant>| {
                t.back()
                    .is_some_and(|t| now.saturating_duration_since(*t) < window)
            };
            c.pairs.retain(|_, t| fresh(t));
            c.accounts.retain(|_, t| fresh(t));
            c.addresses.retain(|_, t| fresh(t));
            let kept = c.keys();
            c.prune.pruned(kept);
        }
        let limit = self.max_attempts as usize;
        let mut pair_failures = 0;
        if let Some(pair) = c.pairs.get_mut(&(account.clone(), address)) {
            let failures = live(pair, now, window);
            pair_failures = failures;
            if failures >= limit {
                return Err(until_oldest_expires(pair, now, window));
            }
            if failures >= FREE_FAILURES {
                // 1 s after the first delayed failure, then 2, 4, 8 …
                let delay =
                    Duration::from_secs(1 << (failures - FREE_FAILURES).min(16)).min(window);
                let last = pair.back().copied().unwrap_or(now);
                let waited = now.saturating_duration_since(last);
                if waited < delay {
                    return Err((delay - waited).as_secs().max(1));
                }
            }
        }
        let address_failures = match c.addresses.get_mut(&address) {
            Some(times) => {
                let n = live(times, now, window);
                if n >= limit * PER_ADDRESS_FACTOR as usize {
                    return Err(until_oldest_expires(times, now, window));
                }
                n
            }
            None => 0,
        };
        if let Some(times) = c.accounts.get_mut(&account) {
            let n = live(times, now, window);
            // The real user may have mistyped once here: one failure for
            // this account, none for any other, does not count as guessing.
            let guessing = pair_failures > 1 || address_failures > pair_failures;
            if guessing && n >= limit * PER_ACCOUNT_FACTOR as usize {
                return Err(until_oldest_expires(times, now, window));
            }
        }
        c.pairs
            .entry((account.clone(), address))
            .or_default()
            .push_back(now);
        c.accounts
            .entry(account.clone())
            .or_default()
            .push_back(now);
        c.addresses.entry(address).or_default().push_back(now);
        Ok(Attempt {
            account,
            address,
            at: now,
            counters: self.counters.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::PRUNE_ABOVE_KEYS;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    fn fail(t: &AttemptThrottle, account: &str, address: IpAddr, now: Instant) {
        drop(t.begin_at(account, address, now).expect("allowed"));
    }

    /// (keys tracked, size at which they are next pruned)
    fn tracked(t: &AttemptThrottle) -> (usize, usize) {
        let c = t.counters.lock().expect("no test panics holding it");
        (c.keys(), c.prune.above())
    }

    /// The `i`th account tried from the `i`th address: three new keys.
    fn spray(t: &AttemptThrottle, i: u32, now: Instant) {
        let address = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        fail(t, &format!("user{i}"), address, now);
    }

    #[test]
    fn a_spray_of_fresh_keys_is_scanned_once_per_doubling_then_forgotten() {
        let window = Duration::from_secs(300);
        let t = AttemptThrottle::new(10, window);
        let start = Instant::now();
        let mut i = 0;
        while tracked(&t).0 <= PRUNE_ABOVE_KEYS {
            spray(&t, i, start);
            i += 1;
        }
        let (fresh, above) = tracked(&t);
        assert_eq!(above, PRUNE_ABOVE_KEYS);
        // This one prunes: all are fresh, all kept, and the next pruning
        // waits for as many keys again.
        spray(&t, i, start);
        i += 1;
        assert_eq!(tracked(&t), (fresh + 3, 2 * fresh));
        // Once the window has passed, the next pruning forgets all of them
        // and keeps only the attempts made since.
        let later = start + window;
        let first_later = i;
        while tracked(&t).0 <= 2 * fresh {
            spray(&t, i, later);
            i += 1;
        }
        let since = 3 * (i - first_later) as usize;
        spray(&t, i, later);
        assert_eq!(tracked(&t), (since + 3, PRUNE_ABOVE_KEYS.max(2 * since)));
    }

    #[test]
    fn delays_grow_after_the_free_failures() {
        let t = AttemptThrottle::new(10, Duration::from_secs(300));
        let start = Instant::now();
        for _ in 0..FREE_FAILURES {
            fail(&t, "alice", A, start);
        }
        assert_eq!(t.begin_at("alice", A, start).err(), Some(1));
        let mut now = start + Duration::from_secs(1);
        fail(&t, "alice", A, now);
        assert_eq!(t.begin_at("alice", A, now).err(), Some(2));
        now += Duration::from_secs(2);
        fail(&t, "alice", A, now);
        assert_eq!(t.begin_at("alice", A, now).err(), Some(4));
        // Another address is not slowed by these failures.
        t.begin_at("alice", B, now).expect("B is clean").succeeded();
    }

    #[test]
    fn a_pair_locks_at_the_limit_until_the_window_passes() {
        let t = AttemptThrottle::new(5, Duration::from_secs(1000));
        let start = Instant::now();
        // Three free failures, then one after 1 s and one 2 s later: five.
        for at in [0, 0, 0, 1, 3] {
            fail(&t, "alice", A, start + Duration::from_secs(at));
        }
        let now = start + Duration::from_secs(100);
        assert_eq!(t.begin_at("alice", A, now).err(), Some(900));
        assert!(t
            .begin_at("alice", A, start + Duration::from_secs(1000))
            .is_ok());
    }

    #[test]
    fn a_withdrawn_attempt_does_not_count_and_keeps_the_failures() {
        let t = AttemptThrottle::new(10, Duration::from_secs(300));
        let now = Instant::now();
        for _ in 0..FREE_FAILURES - 1 {
            fail(&t, "alice", A, now);
        }
        for _ in 0..5 {
            t.begin_at("alice", A, now).expect("allowed").withdrawn();
        }
        // One more failure is still free; the one after it waits.
        fail(&t, "alice", A, now);
        assert_eq!(t.begin_at("alice", A, now).err(), Some(1));
    }

    #[test]
    fn success_takes_the_attempt_back_and_clears_the_pair() {
        let t = AttemptThrottle::new(10, Duration::from_secs(300));
        let now = Instant::now();
        for _ in 0..FREE_FAILURES {
            fail(&t, "alice", A, now);
        }
        assert!(t.begin_at("alice", A, now).is_err());
        t.begin_at("alice", A, now + Duration::from_secs(1))
            .unwrap()
            .succeeded();
        for _ in 0..FREE_FAILURES {
            fail(&t, "alice", A, now + Duration::from_secs(1));
        }
    }

    #[test]
    fn the_account_ceiling_spares_clean_addresses() {
        let t = AttemptThrottle::new(2, Duration::from_secs(300));
        let now = Instant::now();
        // 20 failures for alice from 10 addresses: the account's ceiling.
        for i in 0..10u8 {
            let address = IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 0, i));
            fail(&t, "alice", address, now);
            fail(&t, "alice", address, now);
        }
        let guessed_before = IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 0, 0));
        fail(&t, "bob", B, now);
        assert!(t.begin_at("alice", B, now).is_err(), "B has failed before");
        assert!(t.begin_at("alice", guessed_before, now).is_err());
        t.begin_at("alice", A, now)
            .expect("a clean address is not locked out")
            .succeeded();
    }

    #[test]
    fn the_account_ceiling_spares_the_real_user_after_one_typo() {
        let t = AttemptThrottle::new(2, Duration::from_secs(300));
        let now = Instant::now();
        // The real user mistypes once from A; then others reach the ceiling.
        fail(&t, "alice", A, now);
        for i in 0..10u8 {
            let address = IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 0, i));
            fail(&t, "alice", address, now);
            fail(&t, "alice", address, now);
        }
        t.begin_at("alice", A, now)
            .expect("one typo is no guessing")
            .succeeded();
        // Two failures at the account from one address are.
        let guesser = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 9));
        fail(&t, "alice", guesser, now);
        fail(&t, "alice", guesser, now);
        assert!(t.begin_at("alice", guesser, now).is_err());
    }

    #[test]
    fn the_address_ceiling_covers_every_account() {
        let t = AttemptThrottle::new(2, Duration::from_secs(300));
        let now = Instant::now();
        for i in 0..20 {
            fail(&t, &format!("user{i}"), A, now);
        }
        assert!(t.begin_at("someone-else", A, now).is_err());
        assert!(t.begin_at("someone-else", B, now).is_ok());
    }
}
