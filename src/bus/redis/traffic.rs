//! The bridge's traffic: what it receives from the other instances (one arm
//! per envelope kind) and what it publishes for this one.

use super::*;

impl RedisBridge {
    /// An envelope from another instance (our own are ignored). (Long on
    /// purpose: one arm per envelope kind, each handing it to what applies it.)
    pub(super) fn received(&mut self, msg: redis::Msg, ctx: &mut Context<Self>) {
        let Some(envelope) = Envelope::decode(msg.get_payload_bytes()) else {
            let channel = msg.get_channel_name();
            tracing::warn!(channel, "undecodable message on a bus channel");
            return;
        };
        let me = self.names.instance.as_str();
        match envelope {
            Envelope::Conversation {
                origin,
                chat,
                seq,
                user,
                own,
                others,
            } if origin != me => {
                let frames = ConversationFrames {
                    chat,
                    seq,
                    user,
                    own: own.map(Bytes::copy_from_slice),
                    others: Bytes::copy_from_slice(others),
                };
                self.server.deliver.do_send(DeliverRemote { frames });
            }
            // Each change comes twice (see `publish_membership`).
            Envelope::Membership { origin, id, change }
                if origin != me && self.changes_seen.first_time(origin, id) =>
            {
                self.server.membership.do_send(ApplyMembership {
                    change: Arc::new(change),
                    broadcast: false,
                });
            }
            Envelope::Revoke {
                origin,
                user,
                current_version,
                token,
            } if origin != me => {
                self.server.revoke.do_send(RevokeUser {
                    user,
                    current_version,
                    token,
                    broadcast: false,
                });
            }
            Envelope::Blocked {
                origin,
                chat,
                blocked,
            } if origin != me => {
                self.server.blocked.do_send(SetBlocked {
                    pair: None,
                    chat: Some(chat),
                    blocked,
                    broadcast: false,
                });
            }
            Envelope::BlockedPair {
                origin,
                pair,
                blocked,
            } if origin != me => {
                self.server.blocked.do_send(SetBlocked {
                    pair: Some(pair),
                    chat: None,
                    blocked,
                    broadcast: false,
                });
            }
            Envelope::ToUser {
                origin,
                user,
                frame,
            } if origin != me => {
                self.server.to_user.do_send(DeliverToUser {
                    user,
                    frame: Bytes::copy_from_slice(frame),
                    skip: None,
                    broadcast: false,
                });
            }
            Envelope::Reads {
                origin,
                chat,
                reads,
            } if origin != me => {
                // Marks for the reader's own sessions come on the control
                // channel, those for every member on the conversation's.
                let shared = self.names.chat_of(msg.get_channel_name()).is_some();
                let reads = reads.into_iter().map(|(user, up_to)| StoredRead {
                    chat,
                    user,
                    up_to,
                    session: None,
                    shared,
                });
                self.server.reads.do_send(ReadsStored {
                    reads: reads.collect(),
                    broadcast: false,
                });
            }
            Envelope::Presence {
                origin,
                user,
                online,
                notify,
                registry,
            } if origin != me => {
                if registry {
                    self.presence.set_remote(user, origin, online);
                }
                if !notify.is_empty() {
                    self.server.presence.do_send(TellPresence {
                        user,
                        online,
                        chats: notify,
                        everywhere: false,
                    });
                }
            }
            Envelope::InstanceDown { origin, dead } if origin != me => {
                let dead = dead.to_string();
                self.bury(&dead, false, ctx);
            }
            Envelope::Resync { origin } if origin != me => {
                let origin = origin.to_string();
                self.resync(origin, ctx);
                self.reload_memberships(ctx, None);
            }
            _ => {}
        }
    }

    /// A cluster node ended a sharded subscription: the confirmation of
    /// ours (the channel is no longer wanted), or the node's own because
    /// the channel's slot moved to another master, after which we subscribe
    /// again (the cluster client finds the new owner). Events published in
    /// between are missed live, as in an outage: the next event of the
    /// conversation shows the gap in `seq`, which is filled from the
    /// database, and clients catch up with `sync` (B7).
    pub(super) fn unsubscribed(&mut self, channel: String) {
        let wanted = channel == self.names.control()
            || self
                .names
                .chat_of(&channel)
                .is_some_and(|chat| self.rooms.contains(&chat));
        if let (true, Some(link)) = (wanted, &self.link) {
            tracing::info!(
                channel,
                "a cluster node dropped our subscription (slot moved); subscribing again"
            );
            let _ = link.subscriptions.send(Subscription::Change(channel, true));
        }
    }
}

/// An event for the other instances.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish(pub BusEvent);

impl Handler<Publish> for RedisBridge {
    type Result = ();

    fn handle(&mut self, Publish(event): Publish, _: &mut Context<Self>) {
        let origin = self.names.instance.as_str();
        match event {
            BusEvent::Conversation(frames) => self.publish_conversation(&frames),
            BusEvent::Room { chat, open } => self.room(chat, open),
            BusEvent::Membership(change) => self.publish_membership(&change),
            BusEvent::Presence {
                user,
                online,
                notify,
                registry: true,
            } => self.user_presence(user, online, notify),
            BusEvent::Presence {
                user,
                online,
                notify,
                registry: false,
            } => self.publish_control(Envelope::Presence {
                origin,
                user,
                online,
                notify,
                registry: false,
            }),
            BusEvent::Revoke {
                user,
                current_version,
                token,
            } => self.publish_control(Envelope::Revoke {
                origin,
                user,
                current_version,
                token,
            }),
            BusEvent::Blocked {
                pair,
                chat,
                blocked,
            } => {
                if let Some(chat) = chat {
                    self.publish_control(Envelope::Blocked {
                        origin,
                        chat,
                        blocked,
                    });
                }
                self.publish_control(Envelope::BlockedPair {
                    origin,
                    pair,
                    blocked,
                })
            }
            BusEvent::ToUser { user, frame } => self.publish_control(Envelope::ToUser {
                origin,
                user,
                frame: &frame,
            }),
            BusEvent::Reads {
                chat,
                reads,
                everyone,
            } => self.publish_reads(chat, reads, everyone),
        }
    }
}
