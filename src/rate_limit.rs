//! `KeyedRateLimit`: a token bucket per key, for actions that cost the
//! server more than a request (a registration per client address, a
//! conversation change per user, a group change per group).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Keys tracked before full (idle) buckets are pruned: bounds memory under a spray.
const PRUNE_ABOVE_KEYS: usize = 10_000;

/// Registrations per client address.
pub type AddressRateLimit = KeyedRateLimit<IpAddr>;

/// A per-key allowance for actions that cost us: a token bucket of
/// `burst`, refilled at `per_minute`.
pub struct KeyedRateLimit<K> {
    burst: f64,
    per_second: f64,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
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

    fn take_at(&self, key: K, now: Instant, cost: f64) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().map_err(|_| 1u64)?;
        if buckets.len() > PRUNE_ABOVE_KEYS {
            let (burst, rate) = (self.burst, self.per_second);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(key).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_second)
            .min(self.burst);
        *at = now;
        if *tokens >= cost {
            *tokens -= cost;
            Ok(())
        } else if self.per_second > 0.0 {
            Err(((cost - *tokens) / self.per_second).ceil().max(1.0) as u64)
        } else {
            Err(60)
        }
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
}
