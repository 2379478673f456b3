//! Brute-force protection for `POST /api/login/`: failed attempts are
//! counted per username and per client address in a sliding window.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A client address may fail this many times more often than one username:
/// several people share one address behind a NAT or a proxy.
const PER_ADDRESS_FACTOR: u32 = 10;
/// Keys tracked before stale ones are pruned (bounds memory under a spray of usernames).
const PRUNE_ABOVE_KEYS: usize = 10_000;

/// Failed-login counters.
pub struct LoginThrottle {
    max_attempts: u32,
    window: Duration,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LoginThrottle {
    pub fn new(max_attempts: u32, window: Duration) -> Self {
        LoginThrottle {
            max_attempts,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn keys(username: &str, address: &str) -> [(String, u32); 2] {
        [
            (format!("user:{}", username.to_lowercase()), 1),
            (format!("addr:{address}"), PER_ADDRESS_FACTOR),
        ]
    }

    /// Seconds to wait before trying again, if either counter is exhausted.
    pub fn retry_after(&self, username: &str, address: &str) -> Option<u64> {
        let now = Instant::now();
        let mut failures = self.failures.lock().ok()?;
        Self::keys(username, address)
            .into_iter()
            .filter_map(|(key, factor)| {
                let attempts = failures.get_mut(&key)?;
                while attempts
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.window)
                {
                    attempts.pop_front();
                }
                let limit = (self.max_attempts * factor) as usize;
                (attempts.len() >= limit).then(|| {
                    let oldest = attempts.front().copied().unwrap_or(now);
                    let wait = self.window.saturating_sub(now.duration_since(oldest));
                    wait.as_secs().max(1)
                })
            })
            .max()
    }

    /// Counts a failed attempt against the username and the address.
    pub fn record_failure(&self, username: &str, address: &str) {
        let now = Instant::now();
        let Ok(mut failures) = self.failures.lock() else {
            return;
        };
        if failures.len() > PRUNE_ABOVE_KEYS {
            let window = self.window;
            failures.retain(|_, a| a.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        for (key, _) in Self::keys(username, address) {
            failures.entry(key).or_default().push_back(now);
        }
    }

    /// A successful login clears the username's counter.
    pub fn record_success(&self, username: &str) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(&format!("user:{}", username.to_lowercase()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_a_username_after_the_limit() {
        let throttle = LoginThrottle::new(3, Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(throttle.retry_after("alice", "1.2.3.4"), None);
            throttle.record_failure("alice", "1.2.3.4");
        }
        assert!(throttle.retry_after("Alice", "5.6.7.8").is_some());
        assert_eq!(throttle.retry_after("bob", "1.2.3.4"), None);
        throttle.record_success("alice");
        assert_eq!(throttle.retry_after("alice", "5.6.7.8"), None);
    }
}
