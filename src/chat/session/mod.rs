//! `WsSession`: one actor per WebSocket connection. It owns the connection's
//! state (who it is after authorization, rate limit, its timers), turns each
//! frame into a typed request, does the database work for it as a future
//! (never blocking the actor or anyone else), and answers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::CloseCode;
use sea_orm::DatabaseConnection;

use super::address_cap::AddressSlot;
use super::blocks::{self, BlockError};
use super::changes::{self, Change, ChangeRequest};
use super::failure_reply;
use super::groups::{self, GroupError};
use super::invitations;
use super::log;
use super::membership::{Audience, MembershipChange};
use super::messages::{
    ApplyMembership, Connect, ConnectError, ConversationFrames, Deliver, Disconnect, Kick, Release,
    SessionId,
};
use super::mute;
use super::protocol::*;
use super::search::{self, Search};
use super::search_slots;
use super::socket::{Incoming, Outbox, Queued, TransportError};
use super::store;
use super::timers::{self, Expiry, Failure, Heartbeat, HeartbeatFailed, TokenExpired};
use super::writer::{NewMessage, Submitter};
use crate::auth::{self, AuthError};
use crate::metrics;
use crate::rate_limit::{TokenBucket, UserRateLimit};
use crate::state::AppState;

mod authorize;
mod conversation;
mod social;

use conversation::OwnMarks;

/// Longest `client_id` accepted (B2).
pub const MAX_CLIENT_ID_CHARS: usize = 64;

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// What a session hands to the writer.
enum Job {
    Message(NewMessage),
    Change(ChangeRequest),
}

/// How many times a registration is retried when membership changes
/// outran the loading of the user's conversations.
const REGISTRATION_ATTEMPTS: usize = 5;

/// One WebSocket connection.
pub struct WsSession {
    id: SessionId,
    state: Arc<AppState>,
    outbox: Outbox,
    user: Option<UserId>,
    url_token: Option<String>,
    /// The socket's request rate (`RATE_LIMIT_PER_SECOND`, `RATE_LIMIT_BURST`).
    rate: TokenBucket,
    /// Pings the client; set once started.
    heartbeat: Option<Heartbeat>,
    /// Closes the session when its token expires.
    expiry: Option<Expiry>,
    /// Counts this connection against its address's unauthenticated sockets
    /// until it authorizes.
    unauthenticated: Option<AddressSlot>,
    /// Counts this connection against its address's sockets while it lives.
    _socket: AddressSlot,
    /// This session's read marks not stored yet, and the requests held
    /// behind them (`conversation.rs`, `after_own_marks`).
    marks: OwnMarks,
    span: tracing::Span,
}

impl WsSession {
    /// A session for a new connection from `client_ip`; `url_token` is
    /// the `?token=` of B1; the slots are its place under its address's
    /// caps (all sockets, and those not authorized yet).
    pub fn new(
        state: Arc<AppState>,
        outbox: Outbox,
        url_token: Option<String>,
        client_ip: std::net::IpAddr,
        [socket, unauthenticated]: [AddressSlot; 2],
    ) -> Self {
        let id = NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed);
        let rate = TokenBucket::full(f64::from(state.limits.rate_burst), Instant::now());
        WsSession {
            id,
            state,
            outbox,
            user: None,
            url_token,
            rate,
            heartbeat: None,
            expiry: None,
            unauthenticated: Some(unauthenticated),
            _socket: socket,
            marks: OwnMarks::default(),
            // A root span: as a child it would keep the upgrade's request
            // span (its fields, its line) in memory as long as the
            // connection lives.
            span: tracing::info_span!(
                parent: None,
                "ws_session",
                session = id,
                client_ip = %client_ip,
                user = tracing::field::Empty,
            ),
        }
    }

    /// Takes one request from the socket's rate allowance.
    fn allow_request(&mut self) -> bool {
        let limits = &self.state.limits;
        let (burst, rate) = (limits.rate_burst, limits.rate_per_second);
        self.rate
            .take(1.0, f64::from(burst), f64::from(rate), Instant::now())
            .is_ok()
    }

    /// Queues a frame; a client that stopped reading is disconnected.
    fn send(&self, event: &ServerEvent, ctx: &mut Context<Self>) {
        self.send_json(event.to_json(), ctx);
    }

    /// Queues a frame already in JSON (see `send`).
    fn send_json(&self, frame: bytes::Bytes, ctx: &mut Context<Self>) {
        match self.outbox.send_text(frame) {
            Queued::Yes => self.state.metrics.frames_out(1),
            Queued::Overflow => {
                self.state.metrics.outbox_overflow();
                tracing::warn!(parent: &self.span, "client is not reading; disconnecting");
                ctx.stop();
            }
            Queued::Closed => ctx.stop(),
        }
    }

    fn send_error(
        &self,
        kind: RequestKind,
        code: ErrorCode,
        message: &str,
        ctx: &mut Context<Self>,
    ) {
        self.state.metrics.bad_frame(Some(code.as_str()));
        self.send(
            &ServerEvent::error(kind, ErrorReply::new(code, message)),
            ctx,
        );
    }

    /// Takes `units` of `user`'s allowance in `limit` (one kept per user,
    /// over REST and every socket); past it, answers `kind` with
    /// `rate_limited` ("too many `what`; try again in N s") and returns
    /// false.
    fn take_allowance(
        &self,
        limit: &UserRateLimit,
        user: UserId,
        units: u32,
        kind: RequestKind,
        what: &str,
        ctx: &mut Context<Self>,
    ) -> bool {
        let Err(retry) = limit.take_many(user, units) else {
            return true;
        };
        self.state.metrics.rate_limited();
        let text = format!("too many {what}; try again in {retry} s");
        self.send_error(kind, ErrorCode::RateLimited, &text, ctx);
        false
    }

    /// A failure of ours: the client gets a generic `internal` error (or,
    /// for a busy database, `rate_limited`) with an id; the detail goes to
    /// the log under the same id.
    fn internal_error(
        &self,
        kind: RequestKind,
        error: &(dyn std::error::Error + 'static),
        ctx: &mut Context<Self>,
    ) {
        let reply = failure_reply(&self.span, kind, error);
        self.state.metrics.bad_frame(Some(reply.code.as_str()));
        self.send(&ServerEvent::error(kind, reply), ctx);
    }

    fn close(&self, code: CloseCode, reason: &str, ctx: &mut Context<Self>) {
        self.outbox.close(code, reason);
        ctx.stop();
    }

    /// A text frame: parsed, counted against the request rate, checked for
    /// authorization, then handed to its handler.
    fn handle_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        let request = match parse_request(text) {
            Ok(request) => request,
            Err(error) => return self.bad_frame(error, ctx),
        };
        let kind = request.kind();
        self.state.metrics.frame_in(kind.wire_name());
        if !self.allow_request() {
            self.state.metrics.rate_limited();
            self.send_error(
                kind,
                ErrorCode::RateLimited,
                "too many requests; slow down",
                ctx,
            );
            return;
        }
        let user = match (&request, self.user) {
            (ClientRequest::Authorization(a), _) => {
                let token = a.token.clone();
                return self.authorize(token, ctx);
            }
            (ClientRequest::Ping(_), _) => return self.send(&ServerEvent::Pong(Empty {}), ctx),
            (_, Some(user)) => user,
            (_, None) => {
                return self.send_error(
                    kind,
                    ErrorCode::Unauthorized,
                    "not authorized: send an authorization request with your token first",
                    ctx,
                )
            }
        };
        let all_sockets = &self.state.socket_requests;
        if !self.take_allowance(all_sockets, user, 1, kind, "requests", ctx) {
            return;
        }
        self.dispatch(user, kind, request, ctx);
    }

    /// Answers a frame that is not a request (B3), whether its text does
    /// not parse or it has none (binary, not UTF-8, over the size limit):
    /// `invalid` for a known type with bad fields, `bad_request` otherwise;
    /// counted against the request rate like any frame, and not answered
    /// past it.
    fn bad_frame(&mut self, error: FrameError, ctx: &mut Context<Self>) {
        let (kind, code) = match &error {
            FrameError::Invalid { kind, .. } => {
                (kind.wire_name(), Some(ErrorCode::Invalid.as_str()))
            }
            _ => (metrics::UNPARSED, None),
        };
        self.state.metrics.frame_in(kind);
        if self.allow_request() {
            self.state.metrics.bad_frame(code);
            self.send(&ServerEvent::from_frame_error(error), ctx);
        } else {
            self.state.metrics.rate_limited();
        }
    }

    /// Hands an authorized user's request to its handler.
    fn dispatch(
        &mut self,
        user: UserId,
        kind: RequestKind,
        request: ClientRequest,
        ctx: &mut Context<Self>,
    ) {
        match request {
            ClientRequest::GetContacts(_) => {
                self.after_own_marks(ctx, move |act, ctx| act.get_contacts(user, ctx))
            }
            ClientRequest::GetContact(q) => {
                self.after_own_marks(ctx, move |act, ctx| act.get_contact(user, q.id, ctx))
            }
            ClientRequest::Message(m) => self.send_message(user, m, ctx),
            ClientRequest::GetMessages(q) => self.get_messages(user, q, ctx),
            ClientRequest::Sync(q) => self.sync(user, q, ctx),
            ClientRequest::Search(q) => self.search(user, q, ctx),
            ClientRequest::Read(r) => self.mark_read(user, r, ctx),
            ClientRequest::Typing(t) => self.typing(user, t.id, ctx),
            ClientRequest::CreateGroup(g) => self.create_group(user, g, ctx),
            ClientRequest::AddMembers(a) => self.add_members(user, a, ctx),
            ClientRequest::RemoveMember(r) => self.remove_member(user, r, ctx),
            ClientRequest::RenameGroup(r) => self.rename_group(user, r, ctx),
            ClientRequest::GetInvitations(_) => self.get_invitations(user, ctx),
            ClientRequest::AcceptInvitation(q) => self.accept_invitation(user, q.id, ctx),
            ClientRequest::DeclineInvitation(q) => self.decline_invitation(user, q.id, ctx),
            ClientRequest::BlockUser(r) => self.change_block(RequestKind::BlockUser, user, r, ctx),
            ClientRequest::UnblockUser(r) => {
                self.change_block(RequestKind::UnblockUser, user, r, ctx)
            }
            ClientRequest::GetBlocked(_) => self.get_blocked(user, ctx),
            ClientRequest::Mute(m) => self.mute(user, m, ctx),
            ClientRequest::EditMessage(e) => {
                let change = Change::Edit {
                    id: e.id,
                    content: e.content,
                };
                self.change_message(user, change, ctx)
            }
            ClientRequest::DeleteMessage(d) => {
                self.change_message(user, Change::Delete { id: d.id }, ctx)
            }
            ClientRequest::React(r) => {
                let Some(emoji) = changes::canonical_emoji(&r.emoji) else {
                    let text = "emoji must be exactly one emoji";
                    return self.send_error(kind, ErrorCode::Invalid, text, ctx);
                };
                let change = Change::React {
                    id: r.id,
                    emoji: emoji.to_owned(),
                    on: r.on,
                };
                self.change_message(user, change, ctx)
            }
            ClientRequest::Authorization(_) | ClientRequest::Ping(_) => {}
        }
    }

    /// Runs a database query for a request of `kind` without blocking the
    /// actor, then `answer`s with its result; a database error is answered
    /// `internal` (B3), its detail logged. The time to the answer goes to
    /// `chat_request_seconds`.
    fn query<T, Q, F, A>(&mut self, kind: RequestKind, query: Q, answer: A, ctx: &mut Context<Self>)
    where
        Q: FnOnce(DatabaseConnection) -> F,
        F: std::future::Future<Output = Result<T, sea_orm::DbErr>> + 'static,
        A: FnOnce(&mut Self, T, &mut Context<Self>) + 'static,
    {
        let started = Instant::now();
        let pending = query(self.state.db.clone());
        ctx.spawn(pending.into_actor(self).map(move |result, act, ctx| {
            match result {
                Ok(value) => answer(act, value, ctx),
                Err(e) => act.internal_error(kind, &e, ctx),
            }
            act.state
                .metrics
                .request_answered(kind.wire_name(), started.elapsed());
        }));
    }

    /// The user's conversations: charged to their fan-out budget, one unit
    /// per conversation listed, before the list is read (C12).
    fn get_contacts(&mut self, user: UserId, ctx: &mut Context<Self>) {
        const KIND: RequestKind = RequestKind::GetContacts;
        let cost = self.state.membership.contact_list_cost(user).unwrap_or(1);
        if !self.take_allowance(&self.state.fanout, user, cost, KIND, "contact lists", ctx) {
            return;
        }
        let lists = self.state.contact_lists.clone();
        let query = move |db| async move { store::contacts_of(&db, &lists, user).await };
        self.query(
            KIND,
            query,
            move |act, list, ctx| {
                let contacts = list.into_contacts(user, &act.state.presence);
                act.send(&ServerEvent::GetContactsResponse(Reply::Ok(contacts)), ctx);
            },
            ctx,
        );
    }

    /// A conversation with, for a group, every member's profile: charged
    /// to the caller's fan-out budget like a message to it (one unit per
    /// other member) before any of it is read, so that asking for a
    /// 1,000-member group's list at the request rate cannot keep the
    /// database and the sockets busy for everyone else.
    fn get_contact(&mut self, user: UserId, id: ConversationRef, ctx: &mut Context<Self>) {
        const KIND: RequestKind = RequestKind::GetContact;
        // A member first: only then is the audience looked up (and kept).
        self.with_membership(KIND, user, &id, ctx, move |act, chat_id, ctx| {
            act.with_audience(KIND, chat_id, ctx, move |act, audience, ctx| {
                let (fanout, cost) = (&act.state.fanout, audience.deliveries());
                if !act.take_allowance(fanout, user, cost, KIND, "member lists", ctx) {
                    return;
                }
                act.answer_contact(user, chat_id, ctx);
            });
        });
    }

    /// `get_contact`'s answer, once charged.
    fn answer_contact(&mut self, user: UserId, chat_id: ChatId, ctx: &mut Context<Self>) {
        const KIND: RequestKind = RequestKind::GetContact;
        let presence = self.state.presence.clone();
        let query =
            move |db| async move { store::conversation_of(&db, user, chat_id, &presence).await };
        self.query(
            KIND,
            query,
            |act, conversation, ctx| match conversation {
                Some(c) => act.send(&ServerEvent::GetContactResponse(Reply::Ok(c)), ctx),
                None => act.not_found(KIND, ctx),
            },
            ctx,
        );
    }

    /// `not_found` for a conversation, or for a message (B8): one that
    /// does not exist and one the user may not see are answered alike.
    fn not_found(&self, kind: RequestKind, ctx: &mut Context<Self>) {
        let what = match kind {
            RequestKind::EditMessage | RequestKind::DeleteMessage | RequestKind::React => {
                "message not found"
            }
            _ => "conversation not found",
        };
        self.send_error(kind, ErrorCode::NotFound, what, ctx);
    }

    /// Runs `then` once `user` is known to belong to the conversation;
    /// answers `not_found` otherwise. The ChatServer's record of the
    /// user's conversations answers at once while it is current. Otherwise
    /// the database answers, with `ctx.wait` so later frames stay behind
    /// this one: when the record may be stale (the bus is down, or
    /// memberships are being reloaded after it was), and for a conversation
    /// the record does not hold (a direct conversation made by the
    /// `contact add` command while the user was connected, which is then
    /// announced so its messages are routed from then on).
    fn with_membership<F>(
        &mut self,
        kind: RequestKind,
        user: UserId,
        id: &ConversationRef,
        ctx: &mut Context<Self>,
        then: F,
    ) where
        F: FnOnce(&mut Self, ChatId, &mut Context<Self>) + 'static,
    {
        let Some(chat_id) = id.chat_id() else {
            return self.not_found(kind, ctx);
        };
        let known = self.state.membership.is_member(user, chat_id);
        if known && self.state.membership.is_current() {
            return then(self, chat_id, ctx);
        }
        let db = self.state.db.clone();
        let lookup = async move { store::membership_of(&db, chat_id).await };
        ctx.wait(
            lookup
                .into_actor(self)
                .map(move |result, act, ctx| match result {
                    Ok(Some((kind_of, members))) if members.contains(&user) => {
                        if !known && kind_of == entity::chat::ChatKind::Direct {
                            let change = MembershipChange::direct(chat_id, members);
                            act.state
                                .server
                                .do_send(ApplyMembership::everywhere(change));
                        }
                        then(act, chat_id, ctx);
                    }
                    Ok(_) => act.not_found(kind, ctx),
                    Err(e) => act.internal_error(kind, &e, ctx),
                }),
        );
    }

    /// Why `content` is not a message's text, if it is not (B3).
    fn content_error(&self, content: &str) -> Option<String> {
        changes::content_error(content, self.state.limits.max_message_chars)
    }
}

impl Actor for WsSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.state.metrics.connection_opened();
        tracing::debug!(parent: &self.span, "connected");
        self.send(&ServerEvent::Info("Waiting user token..."), ctx);
        ctx.run_later(self.state.limits.authorization_timeout, |act, ctx| {
            if act.user.is_none() {
                act.send(
                    &ServerEvent::AuthorizationResponse(AuthorizationReply::timeout()),
                    ctx,
                );
                act.close(CloseCode::Normal, "authorization timeout", ctx);
            }
        });
        self.heartbeat = Some(timers::register(
            self.id,
            self.outbox.clone(),
            ctx.address().downgrade().recipient(),
            self.state.limits.heartbeat,
        ));
        if let Some(token) = self.url_token.take() {
            self.authorize(token, ctx);
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.outbox.close(CloseCode::Away, "session ended");
        if let Some(user) = self.user.take() {
            self.state.server.do_send(Disconnect {
                session: self.id,
                user,
            });
            self.state.metrics.session_ended();
        }
        self.state.metrics.connection_closed();
        tracing::debug!(parent: &self.span, "disconnected");
    }
}

impl StreamHandler<Result<Incoming, TransportError>> for WsSession {
    fn handle(&mut self, item: Result<Incoming, TransportError>, ctx: &mut Context<Self>) {
        self.outbox.heard();
        match item {
            Ok(Incoming::Text(bytes)) => match std::str::from_utf8(&bytes) {
                Ok(text) => self.handle_text(text, ctx),
                Err(_) => self.bad_frame(
                    FrameError::BadRequest("frame is not valid UTF-8".into()),
                    ctx,
                ),
            },
            Ok(Incoming::Binary) => {
                let text = "binary frames are not supported; send JSON in text frames";
                self.bad_frame(FrameError::BadRequest(text.into()), ctx)
            }
            Ok(Incoming::Oversize(size)) => {
                let limit = self.state.limits.max_frame_bytes;
                let text =
                    format!("frame of {size} bytes is larger than the limit of {limit} bytes");
                self.bad_frame(FrameError::BadRequest(text), ctx)
            }
            Ok(Incoming::Ping(payload)) => {
                if self.outbox.send_pong(payload) == Queued::Overflow {
                    ctx.stop();
                }
            }
            Ok(Incoming::Pong) => {}
            Ok(Incoming::Close(_)) => self.close(CloseCode::Normal, "", ctx),
            Err(TransportError::Overflow(limit)) => {
                let reason = format!("message larger than {limit} bytes");
                self.close(CloseCode::Size, &reason, ctx);
            }
            Err(e) => {
                tracing::debug!(parent: &self.span, error = %e, "connection broken");
                self.close(CloseCode::Protocol, "protocol error", ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<HeartbeatFailed> for WsSession {
    type Result = ();

    fn handle(&mut self, HeartbeatFailed(failure): HeartbeatFailed, ctx: &mut Context<Self>) {
        match failure {
            Failure::Silent => {
                tracing::info!(parent: &self.span, "client silent too long; dropping");
                self.close(CloseCode::Away, "heartbeat timeout", ctx);
            }
            Failure::Overflow => {
                self.state.metrics.outbox_overflow();
                tracing::warn!(parent: &self.span, "client is not reading; disconnecting");
                ctx.stop();
            }
        }
    }
}

impl Handler<TokenExpired> for WsSession {
    type Result = ();

    fn handle(&mut self, _: TokenExpired, ctx: &mut Context<Self>) {
        tracing::info!(parent: &self.span, "token expired; closing session");
        let kick = Kick::token_expired();
        self.close(kick.code, kick.reason, ctx);
    }
}

impl Handler<Kick> for WsSession {
    type Result = ();

    fn handle(&mut self, kick: Kick, ctx: &mut Context<Self>) {
        tracing::info!(parent: &self.span, reason = kick.reason, "closing session");
        self.close(kick.code, kick.reason, ctx);
    }
}
