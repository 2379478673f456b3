//! Real-time chat over one WebSocket: the actors (`WsSession` per connection,
//! one `ChatServer`), the typed protocol, and the queries they need.

pub mod address_cap;
pub mod blocklist;
pub mod blocks;
pub mod changes;
pub mod groups;
pub mod invitations;
pub mod log;
pub mod membership;
pub mod messages;
pub mod mute;
pub mod presence;
pub mod protocol;
pub mod read_marks;
pub mod revocation;
pub mod search;
pub mod search_index;
pub mod search_slots;
pub mod server;
pub mod session;
pub mod socket;
pub mod store;
pub mod timers;
pub mod unspaced;
pub mod writer;

use std::sync::atomic::Ordering;

use actix::prelude::*;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::state::AppState;
use session::WsSession;

/// `GET /chat` and `/chat/`: upgrades to a WebSocket and starts its session.
pub async fn connect(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let mut response = actix_web_actors::ws::handshake(&req)?;
    if state.draining.load(Ordering::Acquire) {
        // A load balancer retries the upgrade on another instance.
        return Ok(HttpResponse::ServiceUnavailable()
            .insert_header((actix_web::http::header::RETRY_AFTER, "1"))
            .json(serde_json::json!({
                "detail": "This instance is shutting down; connect again."
            })));
    }
    let address = state.proxies.limit_key(&req);
    let Some(socket) = state.sockets.admit(address) else {
        tracing::warn!(%address, "too many sockets from one address");
        return Ok(HttpResponse::TooManyRequests()
            .insert_header((actix_web::http::header::RETRY_AFTER, "5"))
            .json(serde_json::json!({
                "detail": "Too many connections from this address."
            })));
    };
    let Some(slot) = state.unauthenticated.admit(address) else {
        tracing::warn!(%address, "too many unauthenticated sockets from one address");
        return Ok(HttpResponse::TooManyRequests()
            .insert_header((actix_web::http::header::RETRY_AFTER, "5"))
            .json(serde_json::json!({
                "detail": "Too many connections from this address are waiting to authorize."
            })));
    };
    let url_token = url_token(req.query_string());
    let client_ip = state.proxies.client_ip(&req);
    let state = state.into_inner();
    let waits = Some(state.metrics.outbox_waits());
    let (outbox, body) = socket::outbox(state.limits.outbox_capacity, waits);
    let frames = socket::frames(payload.into_inner(), state.limits.max_frame_bytes, &outbox);
    WsSession::create(move |ctx| {
        ctx.add_stream(frames);
        WsSession::new(state, outbox, url_token, client_ip, [socket, slot])
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

/// The error a client sees for a failure of ours, after logging the
/// detail under a fresh error id (the client's text carries the id):
/// `internal`, or, when the database was only too busy to take the request
/// in time (`db::busy_in`), `rate_limited` with "try again", as REST's 503.
pub(crate) fn failure_reply(
    span: &tracing::Span,
    kind: protocol::RequestKind,
    error: &(dyn std::error::Error + 'static),
) -> protocol::ErrorReply {
    let error_id = crate::error::new_error_id();
    let detail = crate::error::chain(error);
    if crate::db::busy_in(error) {
        tracing::warn!(parent: span, %error_id, %kind, error = %detail, "database busy; asked the client to retry");
        return protocol::ErrorReply::new(
            protocol::ErrorCode::RateLimited,
            format!("the server is busy; try again in a moment (error id {error_id})"),
        );
    }
    tracing::error!(parent: span, %error_id, %kind, error = %detail, "request failed");
    protocol::ErrorReply::new(
        protocol::ErrorCode::Internal,
        format!("internal error, try again (error id {error_id})"),
    )
}
