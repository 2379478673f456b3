//! `AppState`: what every REST handler can reach.

use std::sync::Arc;

use actix::Addr;
use sea_orm::DatabaseConnection;

use crate::api::throttle::AttemptThrottle;
use crate::auth::TokenKeys;
use crate::chat::presence::Presence;
use crate::chat::server::ChatServer;
use crate::client_address::TrustedProxies;
use crate::config::Settings;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::rate_limit::{AddressRateLimit, KeyedRateLimit};

/// Shared by every worker; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub db: DatabaseConnection,
    pub keys: TokenKeys,
    pub chat_server: Addr<ChatServer>,
    pub presence: Arc<Presence>,
    pub metrics: Metrics,
    /// Failed logins, per (username, client address).
    pub login_throttle: Arc<AttemptThrottle>,
    /// Wrong `old_password`s of `POST /api/password/`, per (user, client address).
    pub password_throttle: Arc<AttemptThrottle>,
    /// Registrations per client address.
    pub registration_limit: Arc<AddressRateLimit>,
    /// New contacts per user, at the WebSocket's request rate.
    pub change_limit: Arc<KeyedRateLimit<i64>>,
    /// Commits messages and changes to them (shared with the WebSocket).
    pub writer: crate::chat::writer::MessageWriter,
    /// Group requests, with their change budgets (shared with the WebSocket).
    pub groups: crate::chat::groups::Groups,
    /// Whose `X-Forwarded-For` is believed.
    pub proxies: TrustedProxies,
    /// Set once the instance is shutting down: `/readyz` answers 503.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// Set when Redis is configured: checked by `/readyz`.
    pub redis: Option<crate::bus::target::RedisTarget>,
}

impl AppState {
    /// Counts a new contact against the caller's allowance, the
    /// WebSocket's request rate.
    pub fn allow_change(&self, user: crate::chat::protocol::UserId) -> Result<(), ApiError> {
        self.change_limit
            .take(user.0)
            .map_err(ApiError::TooManyRequests)
    }
}
