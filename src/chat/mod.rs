//! Real-time chat over one WebSocket: the actors (`WsSession` per connection,
//! one `ChatServer`), the typed protocol, and the queries they need.

pub mod address_cap;
pub mod blocks;
pub mod changes;
pub mod groups;
pub mod invitations;
pub mod log;
pub mod membership;
pub mod messages;
pub mod presence;
pub mod protocol;
pub mod revocation;
pub mod server;
pub mod session;
pub mod socket;
pub mod store;
pub mod timers;
pub mod writer;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::{web, HttpRequest, HttpResponse};
use sea_orm::DatabaseConnection;

use crate::auth::TokenKeys;
use crate::bus::Bus;
use crate::client_address::TrustedProxies;
use crate::config::Settings;
use crate::metrics::Metrics;
use address_cap::AddressCap;
use membership::Membership;
use presence::Presence;
use server::ChatServer;
use session::WsSession;
use writer::MessageWriter;

/// The bounds a session enforces, from `Settings`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_message_chars: usize,
    pub rate_per_second: u32,
    pub rate_burst: u32,
    pub outbox_capacity: usize,
    pub max_unauthenticated_per_address: usize,
    /// How long a new connection has to authorize (A2.2).
    pub authorization_timeout: Duration,
    /// Pings and the silence limit (B5).
    pub heartbeat: timers::Timing,
}

impl Limits {
    pub fn from_settings(settings: &Settings) -> Self {
        Limits {
            max_frame_bytes: settings.limits.max_frame_bytes,
            max_message_chars: settings.limits.max_message_chars,
            rate_per_second: settings.limits.rate_limit_per_second,
            rate_burst: settings.limits.rate_limit_burst,
            outbox_capacity: settings.limits.outbox_capacity,
            max_unauthenticated_per_address: settings.limits.max_unauthenticated_per_address,
            authorization_timeout: Duration::from_secs(
                settings.server.authorization_timeout_seconds,
            ),
            heartbeat: timers::Timing {
                interval: Duration::from_secs(settings.server.heartbeat_seconds),
                client_timeout: Duration::from_secs(settings.server.client_timeout_seconds),
            },
        }
    }
}

/// Typing notices relayed per conversation and second (per instance): in a
/// group, however many people type, a member gets at most this many.
pub const TYPING_RELAYS_PER_SECOND: u32 = 2;

/// What every session needs: shared by all sessions of an instance.
pub struct ChatContext {
    pub db: DatabaseConnection,
    pub keys: TokenKeys,
    pub server: Addr<ChatServer>,
    pub presence: Arc<Presence>,
    pub membership: Arc<Membership>,
    /// The bridge to the other instances (for its subscription barrier).
    pub bus: Bus,
    pub writer: MessageWriter,
    /// Group requests, with their change budgets (shared with REST).
    pub groups: groups::Groups,
    /// `typing` relays per conversation (`TYPING_RELAYS_PER_SECOND`).
    pub typing_relays: crate::rate_limit::KeyedRateLimit<protocol::ChatId>,
    /// Deliveries each user's messages may cause (`FANOUT_PER_SECOND`).
    pub fanout: crate::rate_limit::KeyedRateLimit<protocol::UserId>,
    /// Blocks and unblocks per user, shared with REST's contacts and blocks
    /// (`AppState::change_limit`): opening sockets gains nothing.
    pub change_limit: Arc<crate::rate_limit::KeyedRateLimit<i64>>,
    pub metrics: Metrics,
    pub limits: Limits,
    /// Whose `X-Forwarded-For` is believed.
    pub proxies: TrustedProxies,
    /// Sockets not yet authorized, per client address.
    pub unauthenticated: Arc<AddressCap>,
    /// All sockets, per client address (`MAX_SOCKETS_PER_ADDRESS`).
    pub sockets: Arc<AddressCap>,
    /// Set once the instance is shutting down: new sockets are refused.
    pub draining: Arc<AtomicBool>,
}

impl ChatContext {
    /// Who an event in `chat` reaches: what the membership record knows,
    /// else the database (remembered for next time).
    pub async fn audience(
        &self,
        chat: protocol::ChatId,
    ) -> Result<membership::Audience, sea_orm::DbErr> {
        if let Some(audience) = self.membership.audience(chat) {
            return Ok(audience);
        }
        let audience = store::audience_of(&self.db, chat)
            .await?
            .unwrap_or(membership::Audience::Direct);
        self.membership.set_audience(chat, Some(audience));
        Ok(audience)
    }
}

/// `GET /chat` and `/chat/`: upgrades to a WebSocket and starts its session.
pub async fn connect(
    req: HttpRequest,
    payload: web::Payload,
    chat: web::Data<ChatContext>,
) -> Result<HttpResponse, actix_web::Error> {
    let mut response = actix_web_actors::ws::handshake(&req)?;
    if chat.draining.load(Ordering::Acquire) {
        // A load balancer retries the upgrade on another instance.
        return Ok(HttpResponse::ServiceUnavailable()
            .insert_header((actix_web::http::header::RETRY_AFTER, "1"))
            .json(serde_json::json!({
                "detail": "This instance is shutting down; connect again."
            })));
    }
    let address = chat.proxies.limit_key(&req);
    let Some(socket) = chat.sockets.admit(address) else {
        tracing::warn!(%address, "too many sockets from one address");
        return Ok(HttpResponse::TooManyRequests()
            .insert_header((actix_web::http::header::RETRY_AFTER, "5"))
            .json(serde_json::json!({
                "detail": "Too many connections from this address."
            })));
    };
    let Some(slot) = chat.unauthenticated.admit(address) else {
        tracing::warn!(%address, "too many unauthenticated sockets from one address");
        return Ok(HttpResponse::TooManyRequests()
            .insert_header((actix_web::http::header::RETRY_AFTER, "5"))
            .json(serde_json::json!({
                "detail": "Too many connections from this address are waiting to authorize."
            })));
    };
    let url_token = url_token(req.query_string());
    let chat = chat.into_inner();
    let (outbox, body) = socket::outbox(chat.limits.outbox_capacity);
    let frames = socket::incoming(payload, chat.limits.max_frame_bytes);
    WsSession::create(move |ctx| {
        ctx.add_stream(frames);
        WsSession::new(chat, outbox, url_token, [socket, slot])
    });
    Ok(response.streaming(body))
}

/// The `?token=` of B1, by its literal name only: a percent-encoded name
/// (`?%74oken=`) is not it, so what authorizes a socket is exactly what the
/// log redacts.
fn url_token(query: &str) -> Option<String> {
    let raw = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))?;
    let (_, token) = serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("token={raw}"))
        .ok()?
        .into_iter()
        .next()?;
    Some(token).filter(|t| !t.is_empty())
}

/// The `internal` error a client sees for a failure of ours, after logging
/// the detail under a fresh error id (the client's text carries the id).
pub(crate) fn internal_reply(
    span: &tracing::Span,
    kind: protocol::RequestKind,
    error: &dyn std::fmt::Display,
) -> protocol::ErrorReply {
    let error_id = crate::error::new_error_id();
    tracing::error!(parent: span, %error_id, %kind, error = %error, "request failed");
    protocol::ErrorReply::new(
        protocol::ErrorCode::Internal,
        format!("internal error, try again (error id {error_id})"),
    )
}
