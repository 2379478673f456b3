//! Groups (B6), invitations (C9), blocks (C10) and mutes (C17): the same
//! rules as REST, answered on the socket.

use super::*;

impl WsSession {
    /// Runs a group change and announces it; answers with the conversation
    /// as the caller now sees it, or the error (B3). `ctx.wait`: the
    /// caller's next request sees the change.
    pub(super) fn group_change<F, Fut>(
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
    pub(super) fn group_error(&self, kind: RequestKind, e: GroupError) -> ErrorReply {
        if e.code() == ErrorCode::Internal || matches!(e, GroupError::Busy(_)) {
            return failure_reply(&self.span, kind, &e);
        }
        self.state.metrics.bad_frame(Some(e.code().as_str()));
        ErrorReply::new(e.code(), e.to_string())
    }

    pub(super) fn get_invitations(&mut self, user: UserId, ctx: &mut Context<Self>) {
        let query = move |db| async move { invitations::pending_of(&db, user).await };
        self.query(
            RequestKind::GetInvitations,
            query,
            |act, list, ctx| act.send(&ServerEvent::GetInvitationsResponse(Reply::Ok(list)), ctx),
            ctx,
        );
    }

    pub(super) fn accept_invitation(
        &mut self,
        user: UserId,
        id: ConversationRef,
        ctx: &mut Context<Self>,
    ) {
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

    /// Takes one of `user`'s changes (blocks, mutes: over every socket and
    /// REST together); answers `rate_limited` when there is none left.
    fn change_allowed(&self, kind: RequestKind, user: UserId, ctx: &mut Context<Self>) -> bool {
        let changes = &self.state.change_limit;
        self.take_allowance(changes, user, 1, kind, "changes", ctx)
    }

    /// `block_user` and `unblock_user`: `ctx.wait`, so the next request
    /// meets the new state.
    pub(super) fn change_block(
        &mut self,
        kind: RequestKind,
        user: UserId,
        other: UserRef,
        ctx: &mut Context<Self>,
    ) {
        if !self.change_allowed(kind, user, ctx) {
            return;
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
                Err(e) => Reply::Err(failure_reply(&act.span, kind, &e)),
            };
            let event = if block {
                ServerEvent::BlockUserResponse(reply)
            } else {
                ServerEvent::UnblockUserResponse(reply)
            };
            act.send(&event, ctx);
        }));
    }

    /// `mute`: `ctx.wait`, so a notification decided after the answer
    /// already meets the new state.
    pub(super) fn mute(&mut self, user: UserId, request: MuteQuery, ctx: &mut Context<Self>) {
        let kind = RequestKind::Mute;
        let Some(chat) = request.id.chat_id() else {
            return self.not_found(kind, ctx);
        };
        if !self.change_allowed(kind, user, ctx) {
            return;
        }
        let db = self.state.db.clone();
        let work = async move { mute::set(&db, user, chat, request.muted).await };
        ctx.wait(
            work.into_actor(self)
                .map(move |result, act, ctx| match result {
                    Ok(Some((state, changed))) => {
                        let ack = MuteAck {
                            status: "success",
                            state,
                        };
                        act.send(&ServerEvent::MuteResponse(Reply::Ok(ack)), ctx);
                        if changed {
                            mute::announce(&act.state.server, user, &state);
                        }
                    }
                    Ok(None) => act.not_found(kind, ctx),
                    Err(e) => act.internal_error(kind, &e, ctx),
                }),
        );
    }

    pub(super) fn get_blocked(&mut self, user: UserId, ctx: &mut Context<Self>) {
        let query = move |db| async move { blocks::blocked_by(&db, user).await };
        self.query(
            RequestKind::GetBlocked,
            query,
            |act, list, ctx| act.send(&ServerEvent::GetBlockedResponse(Reply::Ok(list)), ctx),
            ctx,
        );
    }

    pub(super) fn decline_invitation(
        &mut self,
        user: UserId,
        id: ConversationRef,
        ctx: &mut Context<Self>,
    ) {
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

    pub(super) fn create_group(
        &mut self,
        user: UserId,
        request: CreateGroup,
        ctx: &mut Context<Self>,
    ) {
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

    pub(super) fn add_members(
        &mut self,
        user: UserId,
        request: AddMembers,
        ctx: &mut Context<Self>,
    ) {
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

    pub(super) fn remove_member(
        &mut self,
        user: UserId,
        request: RemoveMember,
        ctx: &mut Context<Self>,
    ) {
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

    pub(super) fn rename_group(
        &mut self,
        user: UserId,
        request: RenameGroup,
        ctx: &mut Context<Self>,
    ) {
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
