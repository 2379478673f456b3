//! Requests about a conversation's messages: send, change (B8), history,
//! `sync` (B7), read marks and typing.

use super::*;
use crate::chat::read_marks::{Asked, Pushed, ReadMarkError};

/// The answer to a read mark the server has no room to queue.
const BUSY: &str = "too many read marks at once; try again in a moment";

/// A session's own read marks on their way to the database (they are
/// stored in batches), and the requests that read marks held behind them.
/// B4's `read` has no answer a client must wait for, so a `get_contacts`
/// sent right after it must still count the conversation as read.
#[derive(Default)]
pub(super) struct OwnMarks {
    in_flight: u32,
    held: Vec<HeldRequest>,
}

/// A request waiting for the session's own read marks.
type HeldRequest = Box<dyn FnOnce(&mut WsSession, &mut Context<WsSession>)>;

impl WsSession {
    pub(super) fn send_message(
        &mut self,
        user: UserId,
        request: SendMessage,
        ctx: &mut Context<Self>,
    ) {
        let arrived = Instant::now();
        let kind = RequestKind::Message;
        let files = match attachment_ids(request.attachments.as_deref()) {
            Ok(files) => files,
            Err(text) => return self.send_error(kind, ErrorCode::Invalid, &text, ctx),
        };
        // With files the text may be empty (B9).
        let only_files = !files.is_empty() && request.content.trim().is_empty();
        if let Some(text) = self.content_error(&request.content).filter(|_| !only_files) {
            return self.send_error(kind, ErrorCode::Invalid, &text, ctx);
        }
        let client_id = request.client_id.filter(|c| !c.is_empty());
        if client_id
            .as_ref()
            .is_some_and(|c| c.chars().count() > MAX_CLIENT_ID_CHARS)
        {
            let text = format!("client_id is longer than {MAX_CLIENT_ID_CHARS} characters");
            return self.send_error(kind, ErrorCode::Invalid, &text, ctx);
        }
        let new = NewMessage {
            chat: ChatId(uuid::Uuid::nil()),
            sender: user,
            content: request.content,
            client_id,
            reply_to: request.reply_to,
            attachments: Vec::new(),
        };
        self.with_membership(kind, user, &request.to, ctx, move |act, chat, ctx| {
            if act.state.membership.is_blocked(chat) {
                return act.send_error(kind, ErrorCode::Invalid, changes::BLOCKED, ctx);
            }
            let new = NewMessage { chat, ..new };
            if files.is_empty() {
                return act.submit_message(user, new, arrived, ctx);
            }
            let client_id = new.client_id.clone();
            let db = act.state.db.clone();
            let lookup =
                async move { store::sendable(&db, user, &files, client_id.as_deref()).await };
            // `wait`: the session's next frames wait too, so its messages
            // keep the order they were sent in.
            ctx.wait(lookup.into_actor(act).map(move |result, act, ctx| {
                match result {
                    Err(e) => act.internal_error(kind, &e, ctx),
                    Ok(Err(text)) => act.send_error(kind, ErrorCode::Invalid, &text, ctx),
                    Ok(Ok(attachments)) => {
                        // The old web client shows only `content` (B9).
                        let content = match new.content.trim().is_empty() {
                            true => AttachmentInfo::names(&attachments),
                            false => new.content,
                        };
                        let new = NewMessage {
                            content,
                            attachments,
                            ..new
                        };
                        act.submit_message(user, new, arrived, ctx)
                    }
                }
            }));
        });
    }

    /// Hands a checked message to the writer, charged to its sender's
    /// fan-out budget.
    fn submit_message(
        &mut self,
        user: UserId,
        new: NewMessage,
        arrived: Instant,
        ctx: &mut Context<Self>,
    ) {
        let chat = new.chat;
        self.with_audience(
            RequestKind::Message,
            chat,
            ctx,
            move |act, audience, ctx| act.submit(user, Job::Message(new), audience, arrived, ctx),
        );
    }

    /// Runs `then` with who an event of `chat` reaches. Joined since this
    /// user's conversations were loaded: it is looked up once, then kept
    /// for everyone here.
    pub(super) fn with_audience<F>(
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
    /// then the writer applies the change under the rules (`changes/`)
    /// and answers.
    pub(super) fn change_message(&mut self, user: UserId, change: Change, ctx: &mut Context<Self>) {
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
    pub(super) fn submit(
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
        let (fanout, cost) = (&self.state.fanout, audience.deliveries());
        if !self.take_allowance(fanout, user, cost, kind, "deliveries", ctx) {
            return;
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

    pub(super) fn get_messages(
        &mut self,
        user: UserId,
        query: HistoryQuery,
        ctx: &mut Context<Self>,
    ) {
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
    pub(super) fn sync(&mut self, user: UserId, query: SyncQuery, ctx: &mut Context<Self>) {
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

    /// `search` (B10): in one conversation of the user's, or in all.
    pub(super) fn search(&mut self, user: UserId, query: SearchQuery, ctx: &mut Context<Self>) {
        let kind = RequestKind::Search;
        let scope = match &query.id {
            None => None,
            Some(id) => match id.chat_id() {
                Some(chat) => Some(chat),
                None => return self.not_found(kind, ctx),
            },
        };
        let search = match Search::new(&query.query, scope, query.before, query.limit) {
            Ok(search) => search,
            Err(bad) => return self.send_error(kind, ErrorCode::Invalid, &bad.message, ctx),
        };
        let Some(in_line) = self.state.search_slots.enter(user) else {
            self.state.metrics.rate_limited();
            return self.send_error(kind, ErrorCode::RateLimited, search_slots::BUSY, ctx);
        };
        if !self.take_allowance(&self.state.search_limit, user, 1, kind, "searches", ctx) {
            return;
        }
        let index = self.state.search_index.clone();
        let run = move |db| async move {
            let _slot = in_line.turn().await;
            search::run(&db, index.as_deref(), user, &search).await
        };
        self.query(
            kind,
            run,
            move |act, page, ctx| match page {
                Some(page) => act.send(&ServerEvent::SearchResponse(Reply::Ok(page)), ctx),
                None => act.not_found(kind, ctx),
            },
            ctx,
        );
    }

    pub(super) fn mark_read(&mut self, user: UserId, request: MarkRead, ctx: &mut Context<Self>) {
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
            act.with_audience(kind, chat, ctx, move |act, audience, ctx| {
                // Pushed to the others, a mark costs what a message to them
                // does; past the budget it is stored all the same, and
                // reaches only the reader's own sessions. Whether it moves
                // is known once it is stored: one that does not (so reaches
                // nobody) gets its share back.
                let cost = audience.receipt_deliveries();
                let charged = cost > 0 && act.state.fanout.take_many(user, cost).is_ok();
                let shared = cost == 0 || charged;
                let marks = act.state.read_marks.clone();
                let asked = Asked {
                    session: act.id,
                    shared,
                };
                let mark = move |_| async move { Ok(marks.mark(chat, user, up_to, asked).await) };
                act.marks.in_flight += 1;
                act.query(
                    kind,
                    mark,
                    move |act, stored, ctx| {
                        if charged && !matches!(stored, Ok(true)) {
                            act.state.fanout.give_back_many(user, cost);
                        }
                        act.answer_mark(chat, up_to, stored, ctx);
                        act.own_mark_stored(ctx);
                    },
                    ctx,
                );
            });
        });
    }

    /// Answers a mark once stored; one that moved the reader forward was
    /// handed to the ChatServer to push (`read_marks`).
    fn answer_mark(
        &mut self,
        chat: ChatId,
        up_to: i64,
        stored: Result<Pushed, ReadMarkError>,
        ctx: &mut Context<Self>,
    ) {
        let kind = RequestKind::Read;
        match stored {
            Ok(_) => {}
            Err(ReadMarkError::Busy) => {
                return self.send_error(kind, ErrorCode::RateLimited, BUSY, ctx)
            }
            Err(e) => return self.internal_error(kind, &e, ctx),
        }
        let ack = ReadAck {
            status: "success",
            pk: chat,
            up_to,
        };
        self.send(&ServerEvent::ReadResponse(Reply::Ok(ack)), ctx);
    }

    /// Runs `request` now, or, while this session has read marks on their
    /// way to the database, once they are stored (in the order asked).
    /// Held requests are bounded by the socket's request rate.
    pub(super) fn after_own_marks(
        &mut self,
        ctx: &mut Context<Self>,
        request: impl FnOnce(&mut Self, &mut Context<Self>) + 'static,
    ) {
        if self.marks.in_flight == 0 {
            return request(self, ctx);
        }
        self.marks.held.push(Box::new(request));
    }

    /// One of this session's marks was stored (or refused): once none is
    /// left on its way, the requests held behind them run.
    fn own_mark_stored(&mut self, ctx: &mut Context<Self>) {
        self.marks.in_flight = self.marks.in_flight.saturating_sub(1);
        if self.marks.in_flight == 0 {
            for request in std::mem::take(&mut self.marks.held) {
                request(self, ctx);
            }
        }
    }

    /// `typing`: relayed to the other members, at most once a second for
    /// each typist and `TYPING_RELAYS_PER_SECOND` for the conversation, and
    /// charged to the typist's fan-out budget like a message (a notice
    /// reaches as many). Notices past any of these are dropped, unanswered.
    pub(super) fn typing(&mut self, user: UserId, id: ConversationRef, ctx: &mut Context<Self>) {
        let kind = RequestKind::Typing;
        self.with_membership(kind, user, &id, ctx, move |act, chat, ctx| {
            if act.state.membership.is_blocked(chat) {
                return act.send_error(kind, ErrorCode::Invalid, changes::BLOCKED, ctx);
            }
            let state = &act.state;
            if state.typists.take((chat, user)).is_err() || state.typing_relays.take(chat).is_err()
            {
                return;
            }
            act.with_audience(kind, chat, ctx, move |act, audience, _| {
                let state = &act.state;
                if state.fanout.take_many(user, audience.deliveries()).is_err() {
                    // Not relayed: the conversation's turn goes to someone else.
                    state.typing_relays.give_back(chat);
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
            });
        });
    }
}

/// The `attachments` of a `message` (B9): at most ten distinct upload ids.
fn attachment_ids(ids: Option<&[String]>) -> Result<Vec<uuid::Uuid>, String> {
    let ids = ids.unwrap_or_default();
    if ids.len() > store::MAX_ATTACHMENTS_PER_MESSAGE {
        return Err(format!(
            "a message carries at most {} attachments",
            store::MAX_ATTACHMENTS_PER_MESSAGE
        ));
    }
    let mut parsed = Vec::with_capacity(ids.len());
    for id in ids {
        let id =
            uuid::Uuid::parse_str(id).map_err(|_| format!("attachment {id:?} is not an id"))?;
        if parsed.contains(&id) {
            return Err(format!("attachment {id} is named twice"));
        }
        parsed.push(id);
    }
    Ok(parsed)
}
