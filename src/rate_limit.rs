//! The one rate limiter: a token bucket (`TokenBucket`), alone (a
//! socket's request rate) or one per key (`KeyedRateLimit`: per client
//! address, per user, per conversation) for actions that cost the server
//! more than a request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::chat::protocol::{ChatId, UserId};

/// Keys tracked before idle ones are first pruned: bounds memory under a
/// spray.
pub const PRUNE_ABOVE_KEYS: usize = 10_000;

/// When a map of keys is next scanned for idle ones to forget: past
/// `PRUNE_ABOVE_KEYS`, then past twice what the last pruning kept, so that
/// with many keys in use at once (a spray) a scan comes only after as many
/// new keys again, not on every take. Shared by `KeyedRateLimit` and the
/// password throttle (`api::throttle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneAt(usize);

impl Default for PruneAt {
    fn default() -> Self {
        PruneAt(PRUNE_ABOVE_KEYS)
    }
}

impl PruneAt {
    /// Whether a map of `len` keys is due for pruning.
    pub fn due(self, len: usize) -> bool {
        len > self.0
    }

    /// A pruning kept `len` keys: the next comes past twice as many.
    pub fn pruned(&mut self, len: usize) {
        self.0 = PRUNE_ABOVE_KEYS.max(2 * len);
    }

    /// The size past which the next pruning comes.
    #[cfg(test)]
    pub(crate) fn above(self) -> usize {
        self.0
    }
}

/// Per client address (registrations).
pub type AddressRateLimit = KeyedRateLimit<IpAddr>;
/// Per user, over all their sockets and REST (contacts and blocks, fan-out).
pub type UserRateLimit = KeyedRateLimit<UserId>;
/// Per conversation (typing relays).
pub type ChatRateLimit = KeyedRateLimit<ChatId>;
/// Per person and conversation (one's own typing relays).
pub type TypistRateLimit = KeyedRateLimit<(ChatId, UserId)>;

/// Up to `burst` actions at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst`.
    pub fn full(burst: f64, now: Instant) -> Self {
        TokenBucket {
            tokens: burst,
            at: now,
        }
    }

    /// Takes `cost` if the bucket (refilled since it was last used) holds
    /// it; otherwise says how many seconds until it will (at least 1).
    pub fn take(
        &mut self,
        cost: f64,
        burst: f64,
        per_second: f64,
        now: Instant,
    ) -> Result<(), u64> {
        self.refill(burst, per_second, now);
        if self.tokens >= cost {
            self.tokens -= cost;
            Ok(())
        } else if per_second > 0.0 {
            Err(((cost - self.tokens) / per_second).ceil().max(1.0) as u64)
        } else {
            Err(60)
        }
    }

    fn refill(&mut self, burst: f64, per_second: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(burst);
        self.at = now;
    }

    /// Returns `cost` taken earlier, up to the burst.
    fn give_back(&mut self, cost: f64, burst: f64) {
        self.tokens = (self.tokens + cost).min(burst);
    }

    /// Whether the bucket is full again by `now` (an idle key, safe to forget).
    fn is_full(&self, burst: f64, per_second: f64, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * per_second >= burst
    }
}

/// A token bucket per key: `burst` at once, refilled at `per_minute`.
pub struct KeyedRateLimit<K> {
    burst: f64,
    per_second: f64,
    buckets: Mutex<Buckets<K>>,
}

/// The buckets, and when the full (idle) ones are next forgotten.
struct Buckets<K> {
    by_key: HashMap<K, TokenBucket>,
    prune: PruneAt,
}

impl<K> Default for Buckets<K> {
    fn default() -> Self {
        Buckets {
            by_key: HashMap::new(),
            prune: PruneAt::default(),
        }
    }
}

impl<K: std::hash::Hash + Eq> KeyedRateLimit<K> {
    pub fn new(burst: u32, per_minute: u32) -> Self {
        KeyedRateLimit {
            burst: f64::from(burst),
            per_second: f64::from(per_minute) / 60.0,
            buckets: Mutex::default(),
        }
    }

    /// Takes one action's allowance, or says how many seconds until there is one.
    pub fn take(&self, key: K) -> Result<(), u64> {
        self.take_at(key, Instant::now(), 1.0)
    }

    /// Takes the allowance of an action that costs `cost` (at most the
    /// burst: a larger one is charged the burst, so it is never refused
    /// for ever).
    pub fn take_many(&self, key: K, cost: u32) -> Result<(), u64> {
        self.take_at(key, Instant::now(), f64::from(cost).min(self.burst))
    }

    /// Gives back one action's allowance taken for an action the server
    /// then could not attempt (it was busy): the client did nothing that
    /// should count. Never beyond the burst.
    pub fn give_back(&self, key: K) {
        self.give_back_many(key, 1);
    }

    /// Gives back what `take_many` took for an action that then did less
    /// than it was charged for (a read mark that moved nothing, so reached
    /// nobody). Never beyond the burst.
    pub fn give_back_many(&self, key: K, cost: u32) {
        let Ok(mut buckets) = self.buckets.lock() else {
            return;
        };
        if let Some(bucket) = buckets.by_key.get_mut(&key) {
            bucket.give_back(f64::from(cost).min(self.burst), self.burst);
        }
    }

    fn take_at(&self, key: K, now: Instant, cost: f64) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().map_err(|_| 1u64)?;
        let (burst, rate) = (self.burst, self.per_second);
        if buckets.prune.due(buckets.by_key.len()) {
            buckets
                .by_key
                .retain(|_, bucket| !bucket.is_full(burst, rate, now));
            let kept = buckets.by_key.len();
            buckets.prune.pruned(kept);
        }
        buckets
            .by_key
            .entry(key)
            .or_insert_with(|| TokenBucket::full(burst, now))
            .take(cost, burst, rate, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn an_allowance_refills_per_key() {
        let r = AddressRateLimit::new(3, 60);
        let now = Instant::now();
        for _ in 0..3 {
            r.take_at(A, now, 1.0).unwrap();
        }
        assert_eq!(r.take_at(A, now, 1.0), Err(1));
        assert!(r.take_at(B, now, 1.0).is_ok());
        assert!(r.take_at(A, now + Duration::from_secs(1), 1.0).is_ok());
    }

    #[test]
    fn an_allowance_given_back_can_be_taken_again_but_not_beyond_the_burst() {
        let r = AddressRateLimit::new(2, 0);
        let now = Instant::now();
        r.take_at(A, now, 1.0).unwrap();
        r.take_at(A, now, 1.0).unwrap();
        assert_eq!(r.take_at(A, now, 1.0), Err(60), "spent");
        r.give_back(A);
        r.take_at(A, now, 1.0).expect("the one given back");
        assert_eq!(r.take_at(A, now, 1.0), Err(60));
        r.give_back(A);
        r.give_back(A);
        r.give_back(A);
        r.take_at(A, now, 1.0).unwrap();
        r.take_at(A, now, 1.0).unwrap();
        assert_eq!(r.take_at(A, now, 1.0), Err(60), "no more than the burst");
        r.give_back(B);
        assert!(r.take_at(B, now, 1.0).is_ok(), "a key never seen is full");
    }

    #[test]
    fn a_cost_given_back_is_given_back_whole_up_to_the_burst() {
        let r = UserRateLimit::new(20, 0);
        let now = Instant::now();
        r.take_at(user(1), now, 10.0).unwrap();
        r.take_at(user(1), now, 10.0).unwrap();
        assert_eq!(r.take_at(user(1), now, 10.0), Err(60), "spent");
        r.give_back_many(user(1), 10);
        r.take_at(user(1), now, 10.0).expect("the ten given back");
        r.give_back_many(user(1), 50);
        r.take_at(user(1), now, 20.0).expect("all of the burst");
        assert_eq!(r.take_at(user(1), now, 1.0), Err(60), "no more than it");
    }

    fn user(n: usize) -> UserId {
        UserId(i64::try_from(n).expect("test keys fit an i64"))
    }

    /// (keys tracked, size at which they are next pruned)
    fn tracked(r: &UserRateLimit) -> (usize, usize) {
        let buckets = r.buckets.lock().expect("no test panics holding it");
        (buckets.by_key.len(), buckets.prune.above())
    }

    #[test]
    fn many_keys_in_use_are_scanned_once_per_doubling_not_on_every_take() {
        // Never refilled: every key taken stays in use.
        let r = UserRateLimit::new(2, 0);
        let now = Instant::now();
        for n in 0..=PRUNE_ABOVE_KEYS {
            r.take_at(user(n), now, 1.0).unwrap();
        }
        assert_eq!(tracked(&r), (10_001, 10_000), "not pruned yet");
        r.take_at(user(10_001), now, 1.0).unwrap();
        assert_eq!(tracked(&r), (10_002, 20_002), "pruned, none idle");
        for n in 10_002..=20_002 {
            r.take_at(user(n), now, 1.0).unwrap();
        }
        assert_eq!(tracked(&r), (20_003, 20_002), "no scan on these takes");
        r.take_at(user(20_003), now, 1.0).unwrap();
        assert_eq!(tracked(&r), (20_004, 40_006));
    }

    #[test]
    fn idle_keys_are_forgotten_once_past_the_size() {
        let r = UserRateLimit::new(1, 60);
        let now = Instant::now();
        for n in 0..=20_002 {
            r.take_at(user(n), now, 1.0).unwrap();
        }
        assert_eq!(tracked(&r), (20_003, 20_002));
        // A second on, every earlier key is full again.
        r.take_at(user(0), now + Duration::from_secs(1), 1.0)
            .unwrap();
        assert_eq!(tracked(&r), (1, 10_000), "all but the one taken now");
    }
}
