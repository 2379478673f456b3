//! Web Push (PROTOCOL.md B11): a member with no live session anywhere is
//! told of a new message through their browsers' push services.
//!
//! - `subscriptions`: what browsers register, checked (the server POSTs to
//!   the endpoint, so only the configured push services are accepted).
//! - `dispatch`: one instance at a time (a lease in the database) reads the
//!   messages stored since it last looked, decides who gets a push, and
//!   queues them in `push_outbox` in the same transaction that moves its
//!   mark; then sends the queue (`send`), deleting each row once the push
//!   service accepted it. A restart loses nothing (the queue and the mark are in the
//!   database) and a graceful one sends nothing twice.
//! - `vapid`: the signature that identifies this server to push services.

pub mod dispatch;
mod send;
pub mod subscriptions;
pub mod vapid;

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::Settings;
pub use vapid::Vapid;

/// What the server needs to push: its VAPID key and the rules from
/// the configuration.
#[derive(Debug, Clone)]
pub struct WebPush {
    pub vapid: Vapid,
    /// Whether a push carries the start of the message.
    pub preview: bool,
    hosts: Vec<String>,
    allow_http: bool,
}

impl WebPush {
    /// From the settings and the key (`Settings::vapid_key_with_source`).
    pub fn new(settings: &Settings, private_key: &[u8]) -> Result<Self, vapid::BadKey> {
        Ok(WebPush {
            vapid: Vapid::new(private_key, &settings.push.vapid_subject)?,
            preview: settings.push.push_preview,
            hosts: settings.push.hosts().collect(),
            allow_http: settings.push.push_allow_http,
        })
    }
}

/// Now plus `duration` (a lease's end, a retry's time).
fn later(duration: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(duration).expect("the durations here are seconds")
}
