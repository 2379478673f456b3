//! `AppState`: what every REST handler can reach.

use std::sync::Arc;

use actix::Addr;
use sea_orm::DatabaseConnection;

use crate::api::throttle::LoginThrottle;
use crate::auth::TokenKeys;
use crate::chat::presence::Presence;
use crate::chat::server::ChatServer;
use crate::config::Settings;
use crate::metrics::Metrics;

/// Shared by every worker; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub db: DatabaseConnection,
    pub keys: TokenKeys,
    pub chat_server: Addr<ChatServer>,
    pub presence: Arc<Presence>,
    pub metrics: Metrics,
    pub login_throttle: Arc<LoginThrottle>,
    /// Set when Redis is configured: checked by `/readyz`.
    pub redis: Option<redis::Client>,
}
