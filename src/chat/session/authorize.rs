//! Authorization (A2, C4): the token checked, the session registered with the
//! ChatServer in one step, and its pushes released after the answer.

use super::*;

impl WsSession {
    /// Authorizes the session (again). A re-authorization as someone else
    /// moves the session's registration in one step at the ChatServer: if it
    /// is refused, the session stays exactly as it was.
    pub(super) fn authorize(&mut self, token: String, ctx: &mut Context<Self>) {
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
                let (chats, blocked_peers) = store::chats_of(&state.db, me).await?;
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
                Ok(Err(e @ ConnectError::Stale)) => AuthorizationReply::Error(failure_reply(
                    &act.span,
                    RequestKind::Authorization,
                    &e,
                )),
                Err(AuthError::InvalidToken) => {
                    AuthorizationReply::refused("Invalid token provided")
                }
                Err(AuthError::InactiveUser) => AuthorizationReply::refused("Inactive user"),
                Err(e @ (AuthError::Database(_) | AuthError::Server(_))) => {
                    AuthorizationReply::Error(failure_reply(
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
    pub(super) fn authorized(
        &mut self,
        user: UserId,
        remaining: Duration,
        ctx: &mut Context<Self>,
    ) {
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
}
