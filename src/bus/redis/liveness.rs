//! Liveness and presence across instances: the heartbeat, burying a dead
//! instance, resyncing after an outage, and telling conversations who came
//! and went.

use super::*;

impl RedisBridge {
    pub(super) fn user_presence(&mut self, user: UserId, online: bool, notify: Vec<ChatId>) {
        if online {
            self.local_users.insert(user);
        } else {
            self.local_users.remove(&user);
        }
        let commands = presence_commands(&self.names, user, online, notify, self.write_version);
        self.send(commands);
    }

    /// Refreshes our liveness and buries instances whose key expired.
    pub(super) fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        let Some(link) = &self.link else {
            return;
        };
        let mut conn = link.publisher.clone();
        let names = self.names.clone();
        let version = self.write_version;
        let check = async move { check_liveness(&mut conn, &names, version).await };
        ctx.spawn(check.into_actor(self).map(|result, act, ctx| match result {
            Ok((buried, readable)) => {
                act.set_write_version(readable);
                for dead in buried {
                    tracing::warn!(dead = %dead, "instance stopped refreshing its liveness; clearing its users");
                    act.bury(&dead, true, ctx);
                }
            }
            Err(e) => act.lost(ctx, &e.to_string()),
        }));
    }

    /// Writes envelopes of `version` from now on: the newest every live
    /// instance reads (`envelope/`, "Versions").
    pub(super) fn set_write_version(&mut self, version: u8) {
        if version != self.write_version {
            tracing::info!(
                from = self.write_version,
                to = version,
                "envelope version changed: the newest every live instance reads"
            );
            self.write_version = version;
        }
    }

    /// Forgets a dead instance's users; the burying instance also tells their
    /// contacts (anywhere) that they went offline.
    pub(super) fn bury(&mut self, dead: &str, notify_contacts: bool, ctx: &mut Context<Self>) {
        let gone: Vec<(UserId, bool)> = self
            .presence
            .drop_instance(dead)
            .into_iter()
            .filter(|u| !self.presence.is_online(*u))
            .map(|u| (u, false))
            .collect();
        if notify_contacts {
            // The instance that buried it tells everyone, through the bus.
            self.tell_presence(gone, true, ctx);
        }
    }

    /// Re-reads the users another instance registered after an outage.
    pub(super) fn resync(&mut self, instance: String, ctx: &mut Context<Self>) {
        let Some(link) = &self.link else {
            return;
        };
        let mut conn = link.publisher.clone();
        let key = self.names.users_of(&instance);
        let read = async move {
            let users: redis::RedisResult<HashSet<String>> = conn.smembers(key).await;
            users
        };
        ctx.spawn(
            read.into_actor(self)
                .map(move |result, act, ctx| match result {
                    Ok(users) => {
                        let users: Vec<UserId> = users
                            .iter()
                            .filter_map(|u| u.parse().ok())
                            .map(UserId)
                            .collect();
                        let changes = act.presence.replace_instance(&instance, &users);
                        act.tell_presence(changes, false, ctx);
                    }
                    Err(e) => act.lost(ctx, &e.to_string()),
                }),
        );
    }

    /// Reloads the conversations of every user connected here from the
    /// database: membership changes made while an instance was cut off from
    /// Redis never reached the others.
    /// Reloads the conversations of the users here from the database (the
    /// changes made while Redis was away never reached us); then, if given,
    /// starts handling `stream`, so that no event from the other instances
    /// is delivered by the old memberships.
    pub(super) fn reload_memberships(&mut self, ctx: &mut Context<Self>, stream: Option<Messages>) {
        self.membership.set_current(false);
        let (db, membership, server) = (
            self.db.clone(),
            self.membership.clone(),
            self.server.clone(),
        );
        let reload = async move {
            for _ in 0..5 {
                let since = membership.seq();
                let users = server.local_users.send(LocalUsers).await?;
                let chats = match store::chats_of_users(&db, &users).await {
                    Ok(chats) => chats,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reload memberships after a Redis outage");
                        return Ok(());
                    }
                };
                if server
                    .replace_chats
                    .send(ReplaceChats { chats, since })
                    .await?
                {
                    membership.set_current(true);
                    return Ok(());
                }
            }
            tracing::warn!("memberships changed too fast to reload; they are reloaded at the next reconnection");
            Ok::<_, MailboxError>(())
        };
        ctx.spawn(reload.into_actor(self).map(|_, _, ctx| {
            if let Some(stream) = stream {
                ctx.add_stream(stream);
            }
        }));
    }

    /// Tells the conversations of users whose online state changed: through
    /// the bus to every instance (`everywhere`), or to this instance's
    /// sessions only (each instance found the change itself). The
    /// conversations come from the database here; the ChatServer builds and
    /// routes the frames.
    pub(super) fn tell_presence(
        &mut self,
        changes: Vec<(UserId, bool)>,
        everywhere: bool,
        ctx: &mut Context<Self>,
    ) {
        if changes.is_empty() {
            return;
        }
        let (db, server) = (self.db.clone(), self.server.presence.clone());
        let tell = async move {
            for (user, online) in changes {
                match store::presence_chats(&db, user).await {
                    Ok(chats) => server.do_send(TellPresence {
                        user,
                        online,
                        chats,
                        everywhere,
                    }),
                    Err(e) => {
                        tracing::error!(error = %e, user = user.0, "cannot load conversations for presence")
                    }
                }
            }
        };
        ctx.spawn(tell.into_actor(self));
    }
}
