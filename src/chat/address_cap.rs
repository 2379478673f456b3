//! Caps on WebSockets per client address: on those that have not
//! authorized yet (each may sit for up to five seconds holding a socket and
//! a session, so without a cap one address could hold thousands), and on
//! all of them (authorized sockets live for hours: one address must not
//! hold the instance's file descriptors).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Sockets per client address, up to a limit.
pub struct AddressCap {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One socket's place under a cap, given back when dropped (for the
/// unauthenticated cap at authorization, or when the session ends).
pub struct AddressSlot {
    owner: Arc<AddressCap>,
    address: IpAddr,
}

impl AddressCap {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(AddressCap {
            limit,
            counts: Mutex::default(),
        })
    }

    /// A place for a new socket from `address`, or `None` at the cap.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Option<AddressSlot> {
        let mut counts = self.counts.lock().ok()?;
        let count = counts.entry(address).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            owner: self.clone(),
            address,
        })
    }
}

impl Drop for AddressSlot {
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
        let cap = AddressCap::new(2);
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
