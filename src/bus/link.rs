//! The live connections to Redis while it is reachable, and the ordered
//! queues that publishes and subscription changes go through.

use actix::prelude::*;
use tokio::sync::mpsc;

use super::target::{Conn, Subscriber};

/// Most channels named in one SUBSCRIBE or UNSUBSCRIBE.
pub(super) const MAX_SUBSCRIBE: usize = 512;

/// Most commands sent to Redis in one pipeline.
pub(super) const MAX_PIPELINE: usize = 1024;

/// A subscription change, applied in the order they happened, or a
/// barrier answered once every change before it is in place.
pub(super) enum Subscription {
    Change(String, bool),
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// The live connections while Redis is reachable. Publishes and subscription
/// changes each go through one ordered queue: an actor's spawned futures do
/// not keep their order, and a conversation's events must.
pub(super) struct Link {
    pub(super) publisher: Conn,
    pub(super) commands: mpsc::UnboundedSender<Vec<redis::Cmd>>,
    pub(super) subscriptions: mpsc::UnboundedSender<Subscription>,
}

/// Sends queued commands in order, as many per pipeline as are waiting.
pub(super) async fn send_in_order(
    mut conn: Conn,
    mut queue: mpsc::UnboundedReceiver<Vec<redis::Cmd>>,
    bridge: Recipient<LinkLost>,
) {
    while let Some(mut commands) = queue.recv().await {
        while commands.len() < MAX_PIPELINE {
            match queue.try_recv() {
                Ok(more) => commands.extend(more),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.send_all(commands).await {
            bridge.do_send(LinkLost(e.to_string()));
            return;
        }
    }
}

/// Applies subscription changes in the order they happened; a run of
/// waiting changes in the same direction goes as one command.
pub(super) async fn subscribe_in_order(
    mut sink: Subscriber,
    mut changes: mpsc::UnboundedReceiver<Subscription>,
    bridge: Recipient<LinkLost>,
) {
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match changes.recv().await {
                Some(next) => next,
                None => return,
            },
        };
        let (channel, subscribe) = match first {
            Subscription::Change(channel, subscribe) => (channel, subscribe),
            Subscription::Barrier(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let mut channels = vec![channel];
        while channels.len() < MAX_SUBSCRIBE {
            match changes.try_recv() {
                Ok(Subscription::Change(next, same)) if same == subscribe => channels.push(next),
                Ok(other) => {
                    carried = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        if let Err(e) = sink.set(&channels, subscribe).await {
            bridge.do_send(LinkLost(e.to_string()));
            return;
        }
    }
}

/// A Redis operation failed: the link is gone.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct LinkLost(pub(super) String);
