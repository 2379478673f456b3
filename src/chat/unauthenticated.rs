//! A cap on WebSockets that have not authorized yet, per client address:
//! each may sit for up to five seconds holding a socket and a session, so
//! without a cap one address could hold thousands.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Unauthenticated sockets per client address.
pub struct UnauthenticatedSockets {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One socket's place under the cap, given back when dropped (at
/// authorization, or when the session ends).
pub struct UnauthenticatedSlot {
    owner: Arc<UnauthenticatedSockets>,
    address: IpAddr,
}

impl UnauthenticatedSockets {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(UnauthenticatedSockets {
            limit,
            counts: Mutex::default(),
        })
    }

    /// A place for a new socket from `address`, or `None` at the cap.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Option<UnauthenticatedSlot> {
        let mut counts = self.counts.lock().ok()?;
        let count = counts.entry(address).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(UnauthenticatedSlot {
            owner: self.clone(),
            address,
        })
    }
}

impl Drop for UnauthenticatedSlot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.owner.counts.lock() {
            if let Some(count) = counts.get_mut(&self.address) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&self.address);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_given_back() {
        let cap = UnauthenticatedSockets::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = cap.admit(a).unwrap();
        let _second = cap.admit(a).unwrap();
        assert!(cap.admit(a).is_none());
        assert!(cap.admit(b).is_some());
        drop(first);
        assert!(cap.admit(a).is_some());
    }
}
