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
use super::groups::{self, GroupError};
use super::internal_reply;
use super::invitations;
use super::log;
use super::membership::{Audience, MembershipChange};
use super::messages::{
    ApplyMembership, Connect, ConnectError, ConversationFrames, Deliver, Disconnect, Kick, Release,
    SessionId,
};
use super::presence::PresenceView;
use super::protocol::*;
use super::socket::{Incoming, Outbox, Queued, TransportError};
use super::store;
use super::timers::{self, Expiry, Failure, Heartbeat, HeartbeatFailed, TokenExpired};
use super::writer::{NewMessage, Submitter};
use crate::auth::{self, AuthError};
use crate::metrics;
use crate::rate_limit::TokenBucket;
use crate::state::AppState;

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
    span: tracing::Span,
}

impl WsSession {
    /// A session for a new connection; `url_token` is the `?token=` of B1;
    /// the slots are its place under its address's caps (all sockets, and
    /// those not authorized yet).
    pub fn new(
        state: Arc<AppState>,
        outbox: Outbox,
        url_token: Option<String>,
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
            span: tracing::info_span!("ws_session", session = id, user = tracing::field::Empty),
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

    /// A failure of ours: the client gets a generic `internal` error with an
    /// id; the detail goes to the log under the same id.
    fn internal_error(
        &self,
        kind: RequestKind,
        error: &(dyn std::error::Error + 'static),
        ctx: &mut Context<Self>,
    ) {
        let reply = internal_reply(&self.span, kind, error);
        self.state
            .metrics
            .bad_frame(Some(ErrorCode::Internal.as_str()));
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
        self.dispatch(user, kind, request, ctx);
    }

    /// Answers a frame that is not a request (B3): `invalid` for a known
    /// type with bad fields, `bad_request` otherwise; counted against the
    /// request rate like any frame, and not answered past it.
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
            ClientRequest::GetContacts(_) => self.get_contacts(user, ctx),
            ClientRequest::GetContact(q) => self.get_contact(user, q.id, ctx),
            ClientRequest::Message(m) => self.send_message(user, m, ctx),
            ClientRequest::GetMessages(q) => self.get_messages(user, q, ctx),
            ClientRequest::Sync(q) => self.sync(user, q, ctx),
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

    /// Authorizes the session (again). A re-authorization as someone else
    /// moves the session's registration in one step at the ChatServer: if it
    /// is refused, the session stays exactly as it was.
    fn authorize(&mut self, token: String, ctx: &mut Context<Self>) {
        let state = self.state.clone();
        let (session, outbox) = (self.id, self.outbox.clone());
        let kick = ctx.address().recipient();
        let previous = self.user;
        let registered = async move {
            let (user, claims) =
                auth::authenticate_claims(&state.db, &state.keys, token.trim()).await?;
            let me = UserId(user.id);
            let server_error = AuthError::Server;
            let mut outcome = Err(ConnectError::Stale);
            for _ in 0..REGISTRATION_ATTEMPTS {
                let since = state.membership.seq();
                let chats = store::chats_of(&state.db, me).await?;
                let blocked_peers = store::blocked_peers(&state.db, me).await?;
                let connect = Connect {
                    session,
                    user: me,
                    outbox: outbox.clone(),
                    kick: kick.clone(),
                    chats,
                    since,
                    token_version: user.token_version,
                    token: claims.token_id(),
                    blocked_peers,
                    previous,
                };
                outcome = state.server.send(connect).await.map_err(server_error)?;
                if outcome != Err(ConnectError::Stale) {
                    break;
                }
            }
            if outcome.is_ok() {
                // The conversations' channels are subscribed before the
                // client hears it is in: whatever it fetches next, it also
                // gets everything live from then on.
                state.bus.barrier().await;
            }
            Ok::<_, AuthError>(outcome.map(|()| (me, claims.remaining())))
        };
        // `wait`: frames that follow the authorization are handled after it.
        ctx.wait(registered.into_actor(self).map(move |result, act, ctx| {
            let registered = matches!(result, Ok(Ok(_)));
            let reply = match result {
                Ok(Ok((user, remaining))) => {
                    act.authorized(user, remaining, ctx);
                    AuthorizationReply::success()
                }
                Ok(Err(ConnectError::TooManySessions)) => {
                    AuthorizationReply::Error(ErrorReply::new(
                        ErrorCode::RateLimited,
                        "too many open sessions for this user",
                    ))
                }
                Ok(Err(e @ ConnectError::Stale)) => AuthorizationReply::Error(internal_reply(
                    &act.span,
                    RequestKind::Authorization,
                    &e,
                )),
                Err(AuthError::InvalidToken) => {
                    AuthorizationReply::refused("Invalid token provided")
                }
                Err(AuthError::InactiveUser) => AuthorizationReply::refused("Inactive user"),
                Err(e @ (AuthError::Database(_) | AuthError::Server(_))) => {
                    AuthorizationReply::Error(internal_reply(
                        &act.span,
                        RequestKind::Authorization,
                        &e,
                    ))
                }
            };
            act.send(&ServerEvent::AuthorizationResponse(reply), ctx);
            if let (true, Some(user)) = (registered, act.user) {
                let session = act.id;
                // Only now may the pushes held since `Connect` follow.
                act.state.server.do_send(Release { session, user });
            }
        }));
    }

    /// The session is now `user`'s, until the token expires in `remaining`.
    fn authorized(&mut self, user: UserId, remaining: Duration, ctx: &mut Context<Self>) {
        if self.user.is_none() {
            self.state.metrics.session_authorized();
        }
        self.user = Some(user);
        self.unauthenticated = None;
        self.span.record("user", user.0);
        tracing::info!(parent: &self.span, "authorized");
        // Replacing the previous token's expiry cancels it.
        self.expiry = Some(timers::expire_at(
            Instant::now() + remaining,
            self.id,
            ctx.address().downgrade().recipient(),
            self.state.limits.heartbeat,
        ));
    }

    /// Runs a database query for a request of `kind` without blocking the
    /// actor, then `answer`s with its result; a database error is answered
    /// `internal` (B3), its detail logged.
    fn query<T, Q, F, A>(&mut self, kind: RequestKind, query: Q, answer: A, ctx: &mut Context<Self>)
    where
        Q: FnOnce(DatabaseConnection) -> F,
        F: std::future::Future<Output = Result<T, sea_orm::DbErr>> + 'static,
        A: FnOnce(&mut Self, T, &mut Context<Self>) + 'static,
    {
        let pending = query(self.state.db.clone());
        ctx.spawn(
            pending
                .into_actor(self)
                .map(move |result, act, ctx| match result {
                    Ok(value) => answer(act, value, ctx),
                    Err(e) => act.internal_error(kind, &e, ctx),
                }),
        );
    }

    fn get_contacts(&mut self, user: UserId, ctx: &mut Context<Self>) {
        let query = move |db| async move {
            let rows = store::contacts_of(&db, user).await?;
            Ok((rows, store::blocked_peers(&db, user).await?))
        };
        self.query(
            RequestKind::GetContacts,
            query,
            move |act, (rows, hidden), ctx| {
                let presence = PresenceView::new(&act.state.presence, hidden);
                let contacts = rows
                    .into_iter()
                    .map(|r| r.into_contact(user, &presence))
                    .collect();
                act.send(&ServerEvent::GetContactsResponse(Reply::Ok(contacts)), ctx);
            },
            ctx,
        );
    }

    fn get_contact(&mut self, user: UserId, id: ConversationRef, ctx: &mut Context<Self>) {
        let Some(chat_id) = id.chat_id() else {
            return self.not_found(RequestKind::GetContact, ctx);
        };
        let presence = self.state.presence.clone();
        let query =
            move |db| async move { store::conversation_of(&db, user, chat_id, &presence).await };
        self.query(
            RequestKind::GetContact,
            query,
            |act, conversation, ctx| match conversation {
                Some(c) => act.send(&ServerEvent::GetContactResponse(Reply::Ok(c)), ctx),
                None => act.not_found(RequestKind::GetContact, ctx),
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

    fn send_message(&mut self, user: UserId, request: SendMessage, ctx: &mut Context<Self>) {
        let arrived = Instant::now();
        if let Some(text) = self.content_error(&request.content) {
            return self.send_error(RequestKind::Message, ErrorCode::Invalid, &text, ctx);
        }
        let client_id = request.client_id.filter(|c| !c.is_empty());
        if client_id
            .as_ref()
            .is_some_and(|c| c.chars().count() > MAX_CLIENT_ID_CHARS)
        {
            let text = format!("client_id is longer than {MAX_CLIENT_ID_CHARS} characters");
            return self.send_error(RequestKind::Message, ErrorCode::Invalid, &text, ctx);
        }
        let content = request.content;
        self.with_membership(
            RequestKind::Message,
            user,
            &request.to,
            ctx,
            move |act, chat, ctx| {
                if act.state.membership.is_blocked(chat) {
                    return act.send_error(
                        RequestKind::Message,
                        ErrorCode::Invalid,
                        changes::BLOCKED,
                        ctx,
                    );
                }
                let new = NewMessage {
                    chat,
                    sender: user,
                    content,
                    client_id,
                    reply_to: request.reply_to,
                };
                act.with_audience(
                    RequestKind::Message,
                    chat,
                    ctx,
                    move |act, audience, ctx| {
                        act.submit(user, Job::Message(new), audience, arrived, ctx)
                    },
                );
            },
        );
    }

    /// Runs `then` with who an event of `chat` reaches. Joined since this
    /// user's conversations were loaded: it is looked up once, then kept
    /// for everyone here.
    fn with_audience<F>(
        &mut self,
        kind: RequestKind,
        chat: ChatId,
        ctx: &mut Context<Self>,
        then: F,
    ) where
        F: FnOnce(&mut Self, Audience, &mut Context<Self>) + 'static,
    {
        if let Some(audience) = self.state.membership.audience(chat) {
            return then(self, audience, ctx);
        }
        let context = Arc::clone(&self.state);
        let lookup = async move { context.audience(chat).await };
        ctx.wait(
            lookup
                .into_actor(self)
                .map(move |result, act, ctx| match result {
                    Ok(audience) => then(act, audience, ctx),
                    Err(e) => act.internal_error(kind, &e, ctx),
                }),
        );
    }

    /// `edit_message`, `delete_message`, `react` (B8): the message's
    /// conversation is looked up (`not_found` unless the user is a member),
    /// then the writer applies the change under the rules (`changes.rs`)
    /// and answers.
    fn change_message(&mut self, user: UserId, change: Change, ctx: &mut Context<Self>) {
        let arrived = Instant::now();
        let kind = change.kind();
        if let Change::Edit { content, .. } = &change {
            if let Some(text) = self.content_error(content) {
                return self.send_error(kind, ErrorCode::Invalid, &text, ctx);
            }
        }
        let db = self.state.db.clone();
        let id = change.message_id();
        let lookup = async move { store::chat_of_message(&db, id).await };
        ctx.wait(
            lookup
                .into_actor(self)
                .map(move |result, act, ctx| match result {
                    Ok(Some(chat)) => {
                        let id = ConversationRef(chat.to_string());
                        act.with_membership(kind, user, &id, ctx, move |act, chat, ctx| {
                            act.with_audience(kind, chat, ctx, move |act, audience, ctx| {
                                let change = ChangeRequest { user, change };
                                act.submit(user, Job::Change(change), audience, arrived, ctx)
                            })
                        })
                    }
                    Ok(None) => act.not_found(kind, ctx),
                    Err(e) => act.internal_error(kind, &e, ctx),
                }),
        );
    }

    /// Charges an event's deliveries to its author's fan-out budget and
    /// hands it to the writer, which answers once it is stored.
    fn submit(
        &mut self,
        user: UserId,
        job: Job,
        audience: Audience,
        arrived: Instant,
        ctx: &mut Context<Self>,
    ) {
        let kind = match &job {
            Job::Message(_) => RequestKind::Message,
            Job::Change(c) => c.change.kind(),
        };
        if let Err(retry) = self.state.fanout.take_many(user, audience.deliveries()) {
            self.state.metrics.rate_limited();
            let text = format!("too many deliveries; try again in {retry} s");
            return self.send_error(kind, ErrorCode::RateLimited, &text, ctx);
        }
        let from = Submitter::Session {
            outbox: self.outbox.clone(),
            span: self.span.clone(),
        };
        let queued = match job {
            Job::Message(new) => self.state.writer.submit(new, from, arrived),
            Job::Change(change) => self.state.writer.submit_change(change, from, arrived),
        };
        if let Err(e) = queued {
            let reply = e.reply(&self.span, kind);
            self.send(&ServerEvent::error(kind, reply), ctx);
        }
    }

    fn get_messages(&mut self, user: UserId, query: HistoryQuery, ctx: &mut Context<Self>) {
        let limit = query.limit.unwrap_or(store::DEFAULT_HISTORY_PAGE);
        if limit == 0 || limit > store::MAX_HISTORY_PAGE {
            let text = format!("limit must be between 1 and {}", store::MAX_HISTORY_PAGE);
            return self.send_error(RequestKind::GetMessages, ErrorCode::Invalid, &text, ctx);
        }
        let (before, after) = (query.before, query.after);
        let kind = RequestKind::GetMessages;
        self.with_membership(kind, user, &query.id, ctx, move |act, chat, ctx| {
            let page = move |db: DatabaseConnection| async move {
                store::history_page(&db, chat, user, before, after, limit).await
            };
            act.query(
                kind,
                page,
                move |act, page, ctx| {
                    act.send(&ServerEvent::GetMessagesResponse(Reply::Ok(page)), ctx);
                },
                ctx,
            );
        });
    }

    /// `sync` (B7): the conversation's events after `after_seq`, each as a
    /// live session received it.
    fn sync(&mut self, user: UserId, query: SyncQuery, ctx: &mut Context<Self>) {
        let kind = RequestKind::Sync;
        let limit = query.limit.unwrap_or(store::DEFAULT_HISTORY_PAGE);
        if limit == 0 || limit > store::MAX_HISTORY_PAGE {
            let text = format!("limit must be between 1 and {}", store::MAX_HISTORY_PAGE);
            return self.send_error(kind, ErrorCode::Invalid, &text, ctx);
        }
        let after = query.after_seq;
        if after < 0 {
            return self.send_error(kind, ErrorCode::Invalid, "after_seq must be 0 or more", ctx);
        }
        self.with_membership(kind, user, &query.id, ctx, move |act, chat, ctx| {
            let page = move |db| async move { log::events_after(&db, chat, after, limit).await };
            act.query(
                kind,
                page,
                move |act, (events, has_more, latest), ctx| {
                    act.send_json(log::sync_frame(chat, user, &events, latest, has_more), ctx);
                },
                ctx,
            );
        });
    }

    fn mark_read(&mut self, user: UserId, request: MarkRead, ctx: &mut Context<Self>) {
        let up_to = request.up_to;
        if up_to < 0 {
            return self.send_error(
                RequestKind::Read,
                ErrorCode::Invalid,
                "up_to must be a message id",
                ctx,
            );
        }
        let kind = RequestKind::Read;
        self.with_membership(kind, user, &request.id, ctx, move |act, chat, ctx| {
            let mark = move |db| async move { store::mark_read(&db, chat, user, up_to).await };
            act.query(
                kind,
                mark,
                move |act, (), ctx| {
                    let ack = ReadAck {
                        status: "success",
                        pk: chat,
                        up_to,
                    };
                    act.send(&ServerEvent::ReadResponse(Reply::Ok(ack)), ctx);
                    let event = ReadEvent {
                        pk: chat,
                        user_id: user.0,
                        up_to,
                    };
                    // The reader's other tabs hear it too, to stay in step.
                    let frame = ServerEvent::Read(event).to_json();
                    let frames = ConversationFrames {
                        chat,
                        seq: None,
                        user: Some(user),
                        own: Some(frame.clone()),
                        others: frame,
                    };
                    act.state.server.do_send(Deliver {
                        frames,
                        skip: Some(act.id),
                    });
                },
                ctx,
            );
        });
    }

    fn typing(&mut self, user: UserId, id: ConversationRef, ctx: &mut Context<Self>) {
        self.with_membership(
            RequestKind::Typing,
            user,
            &id,
            ctx,
            move |act, chat, ctx| {
                if act.state.membership.is_blocked(chat) {
                    return act.send_error(
                        RequestKind::Typing,
                        ErrorCode::Invalid,
                        changes::BLOCKED,
                        ctx,
                    );
                }
                if act.state.typing_relays.take(chat).is_err() {
                    // Someone's typing was shown in this second: a member never
                    // gets more than TYPING_RELAYS_PER_SECOND, however many type.
                    return;
                }
                let frame = ServerEvent::Typing(TypingEvent {
                    pk: chat,
                    user_id: user.0,
                })
                .to_json();
                act.state.server.do_send(Deliver {
                    frames: ConversationFrames::to_others(chat, user, frame),
                    skip: None,
                });
            },
        );
    }

    /// Runs a group change and announces it; answers with the conversation
    /// as the caller now sees it, or the error (B3). `ctx.wait`: the
    /// caller's next request sees the change.
    fn group_change<F, Fut>(
        &mut self,
        kind: RequestKind,
        user: UserId,
        change: F,
        ctx: &mut Context<Self>,
    ) where
        F: FnOnce(groups::Groups) -> Fut,
        Fut: std::future::Future<Output = Result<groups::Changed, GroupError>> + 'static,
    {
        let state = self.state.clone();
        let pending = change(state.groups.clone());
        let work = async move {
            let changed = pending.await?;
            groups::announce(&state.db, &state.server, &state.presence, user, changed).await
        };
        ctx.wait(work.into_actor(self).map(move |result, act, ctx| {
            let reply = result.map_or_else(|e| Reply::Err(act.group_error(kind, e)), Reply::Ok);
            let event = match kind {
                RequestKind::CreateGroup => ServerEvent::CreateGroupResponse(reply),
                RequestKind::AddMembers => ServerEvent::AddMembersResponse(reply),
                RequestKind::RemoveMember => ServerEvent::RemoveMemberResponse(reply),
                RequestKind::AcceptInvitation => ServerEvent::AcceptInvitationResponse(reply),
                _ => ServerEvent::RenameGroupResponse(reply),
            };
            act.send(&event, ctx);
        }));
    }

    /// The B3 error a failed group request is answered with (ours logged).
    fn group_error(&self, kind: RequestKind, e: GroupError) -> ErrorReply {
        if e.code() == ErrorCode::Internal {
            return internal_reply(&self.span, kind, &e);
        }
        self.state.metrics.bad_frame(Some(e.code().as_str()));
        ErrorReply::new(e.code(), e.to_string())
    }

    fn get_invitations(&mut self, user: UserId, ctx: &mut Context<Self>) {
        let query = move |db| async move { invitations::pending_of(&db, user).await };
        self.query(
            RequestKind::GetInvitations,
            query,
            |act, list, ctx| act.send(&ServerEvent::GetInvitationsResponse(Reply::Ok(list)), ctx),
            ctx,
        );
    }

    fn accept_invitation(&mut self, user: UserId, id: ConversationRef, ctx: &mut Context<Self>) {
        let Some(chat) = id.chat_id() else {
            return self.not_found(RequestKind::AcceptInvitation, ctx);
        };
        self.group_change(
            RequestKind::AcceptInvitation,
            user,
            move |groups| async move { groups.accept(user, chat).await },
            ctx,
        );
    }

    /// `block_user` and `unblock_user`: `ctx.wait`, so the next request
    /// meets the new state.
    fn change_block(
        &mut self,
        kind: RequestKind,
        user: UserId,
        other: UserRef,
        ctx: &mut Context<Self>,
    ) {
        if let Err(retry) = self.state.change_limit.take(user) {
            self.state.metrics.rate_limited();
            let text = format!("too many changes; try again in {retry} s");
            return self.send_error(kind, ErrorCode::RateLimited, &text, ctx);
        }
        let state = self.state.clone();
        let block = kind == RequestKind::BlockUser;
        let work = async move {
            blocks::change(&state.db, &state.server, user, other.user_id, block).await
        };
        ctx.wait(work.into_actor(self).map(move |result, act, ctx| {
            let reply = match result {
                Ok(()) => Reply::Ok(BlockAck {
                    status: "success",
                    user_id: other.user_id,
                }),
                Err(BlockError::Invalid(message)) => {
                    act.state
                        .metrics
                        .bad_frame(Some(ErrorCode::Invalid.as_str()));
                    Reply::Err(ErrorReply::new(ErrorCode::Invalid, message))
                }
                Err(e) => Reply::Err(internal_reply(&act.span, kind, &e)),
            };
            let event = if block {
                ServerEvent::BlockUserResponse(reply)
            } else {
                ServerEvent::UnblockUserResponse(reply)
            };
            act.send(&event, ctx);
        }));
    }

    fn get_blocked(&mut self, user: UserId, ctx: &mut Context<Self>) {
        let query = move |db| async move { blocks::blocked_by(&db, user).await };
        self.query(
            RequestKind::GetBlocked,
            query,
            |act, list, ctx| act.send(&ServerEvent::GetBlockedResponse(Reply::Ok(list)), ctx),
            ctx,
        );
    }

    fn decline_invitation(&mut self, user: UserId, id: ConversationRef, ctx: &mut Context<Self>) {
        let kind = RequestKind::DeclineInvitation;
        let Some(chat) = id.chat_id() else {
            return self.not_found(kind, ctx);
        };
        let groups = self.state.groups.clone();
        let work = async move { groups.decline(user, chat).await };
        ctx.spawn(work.into_actor(self).map(move |result, act, ctx| {
            let reply = match result {
                Ok(()) => Reply::Ok(Declined {
                    status: "success",
                    pk: chat,
                }),
                Err(e) => Reply::Err(act.group_error(kind, e)),
            };
            act.send(&ServerEvent::DeclineInvitationResponse(reply), ctx);
        }));
    }

    fn create_group(&mut self, user: UserId, request: CreateGroup, ctx: &mut Context<Self>) {
        self.group_change(
            RequestKind::CreateGroup,
            user,
            move |groups| async move {
                groups
                    .create(user, &request.title, &request.members)
                    .await
            },
            ctx,
        );
    }

    fn add_members(&mut self, user: UserId, request: AddMembers, ctx: &mut Context<Self>) {
        let Some(chat) = request.id.chat_id() else {
            return self.not_found(RequestKind::AddMembers, ctx);
        };
        self.group_change(
            RequestKind::AddMembers,
            user,
            move |groups| async move { groups.add_members(user, chat, &request.members).await },
            ctx,
        );
    }

    fn remove_member(&mut self, user: UserId, request: RemoveMember, ctx: &mut Context<Self>) {
        let Some(chat) = request.id.chat_id() else {
            return self.not_found(RequestKind::RemoveMember, ctx);
        };
        let target = UserId(request.user_id);
        self.group_change(
            RequestKind::RemoveMember,
            user,
            move |groups| async move { groups.remove_member(user, chat, target).await },
            ctx,
        );
    }

    fn rename_group(&mut self, user: UserId, request: RenameGroup, ctx: &mut Context<Self>) {
        let Some(chat) = request.id.chat_id() else {
            return self.not_found(RequestKind::RenameGroup, ctx);
        };
        self.group_change(
            RequestKind::RenameGroup,
            user,
            move |groups| async move { groups.rename(user, chat, &request.title).await },
            ctx,
        );
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
                Err(_) => {
                    self.state.metrics.frame_in(metrics::UNPARSED);
                    self.send(
                        &ServerEvent::BadRequest(Notice::new("frame is not valid UTF-8")),
                        ctx,
                    )
                }
            },
            Ok(Incoming::Binary) => self.send(
                &ServerEvent::BadRequest(Notice::new(
                    "binary frames are not supported; send JSON in text frames",
                )),
                ctx,
            ),
            Ok(Incoming::Oversize(size)) => {
                let limit = self.state.limits.max_frame_bytes;
                let text =
                    format!("frame of {size} bytes is larger than the limit of {limit} bytes");
                self.send(&ServerEvent::BadRequest(Notice::new(text)), ctx);
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
