//! The ChatServer alone: event order per room, and pushes held while a
//! session registers.

use super::*;

fn event(seq: i64) -> ConversationFrames {
    ConversationFrames {
        chat: ChatId(uuid::Uuid::nil()),
        seq: Some(seq),
        user: None,
        own: None,
        others: Bytes::from(seq.to_string()),
    }
}

fn seqs(due: Vec<ConversationFrames>) -> Vec<i64> {
    due.into_iter().filter_map(|f| f.seq).collect()
}

/// A push that reaches a session between its `Connect` and `Release`
/// (while it waits for the bus) is sent after the session's
/// `authorization_response`, never before it.
#[actix_rt::test]
async fn pushes_wait_until_the_authorization_answer_is_queued() {
    use futures_util::{FutureExt, StreamExt};
    let db = sea_orm::Database::connect("sqlite::memory:")
        .await
        .expect("in-memory SQLite");
    let server = ChatServer::create(|ctx| {
        ChatServer::new(
            Arc::new(Presence::default()),
            Arc::new(Membership::default()),
            Bus::Local,
            HoleFiller::start(db, ctx.address().recipient()),
            10,
            Metrics::default(),
        )
    });
    struct Ignore;
    impl Actor for Ignore {
        type Context = Context<Self>;
    }
    impl Handler<Kick> for Ignore {
        type Result = ();
        fn handle(&mut self, _: Kick, _: &mut Context<Self>) {}
    }
    let (outbox, mut body) = crate::chat::socket::outbox(16, None);
    let (user, session) = (UserId(7), 1);
    let connect = Connect {
        session,
        user,
        outbox: outbox.clone(),
        kick: Ignore.start().recipient(),
        chats: Vec::new(),
        since: 0,
        token_version: 0,
        token: None,
        blocked_peers: Vec::new(),
        previous: None,
    };
    assert_eq!(server.send(connect).await.expect("server runs"), Ok(()));
    let push = DeliverToUser {
        user,
        frame: Bytes::from_static(b"\"a push\""),
        skip: None,
        broadcast: false,
    };
    server.send(push).await.expect("server runs");
    assert!(body.next().now_or_never().is_none(), "held, not sent");
    outbox.send_text(Bytes::from_static(b"\"the answer\""));
    server
        .send(Release { session, user })
        .await
        .expect("server runs");
    let sent = body.next().await.expect("frames").expect("infallible");
    let text = String::from_utf8_lossy(&sent);
    let (answer, push) = (text.find("the answer"), text.find("a push"));
    assert!(answer.is_some() && answer < push, "{text:?}");
}

#[test]
fn events_go_out_in_seq_order_each_once() {
    let mut order = Order::starting_at(Some(4));
    assert_eq!(seqs(order.accept(event(5), 5)), [5]);
    assert_eq!(
        seqs(order.accept(event(5), 5)),
        Vec::<i64>::new(),
        "a duplicate"
    );
    assert_eq!(
        seqs(order.accept(event(8), 8)),
        Vec::<i64>::new(),
        "behind a hole"
    );
    assert_eq!(seqs(order.accept(event(7), 7)), Vec::<i64>::new());
    assert_eq!(order.hole(), Some((5, 7)));
    assert_eq!(
        seqs(order.accept(event(6), 6)),
        [6, 7, 8],
        "the hole filled"
    );
    assert_eq!(order.hole(), None);
    assert_eq!(order.last, Some(8));
}

#[test]
fn a_hole_given_up_lets_what_is_held_go_out() {
    let mut order = Order::starting_at(Some(1));
    order.accept(event(4), 4);
    order.accept(event(5), 5);
    order.accept(event(7), 7);
    assert_eq!(seqs(order.skip_hole()), [4, 5], "up to the next hole");
    assert_eq!(order.hole(), Some((5, 7)));
    assert_eq!(
        seqs(order.accept(event(3), 3)),
        Vec::<i64>::new(),
        "too late now"
    );
}

#[test]
fn a_room_holds_a_bounded_number_of_events() {
    let mut order = Order::starting_at(Some(1));
    for seq in 3..3 + HELD_LIMIT as i64 {
        assert!(order.accept(event(seq), seq).is_empty());
    }
    let next = 3 + HELD_LIMIT as i64;
    let due = seqs(order.accept(event(next), next));
    assert_eq!(due.len(), HELD_LIMIT + 1, "the hole given up");
    assert_eq!(order.held.len(), 0);
    assert_eq!(order.last, Some(next));
}

fn change(chat: u128, added: &[i64], removed: &[i64]) -> Arc<MembershipChange> {
    Arc::new(MembershipChange {
        chat: ChatId(uuid::Uuid::from_u128(chat)),
        added: added.iter().copied().map(UserId).collect(),
        removed: removed.iter().copied().map(UserId).collect(),
        presence: true,
        push: None,
        removed_push: None,
    })
}

fn chats(ids: &[u128]) -> HashSet<ChatId> {
    ids.iter()
        .map(|id| ChatId(uuid::Uuid::from_u128(*id)))
        .collect()
}

#[test]
fn a_registration_replays_the_changes_after_its_snapshot_or_is_stale() {
    // Changes 5–7 are remembered: user 1 joined 10, left 11; 12 is another's.
    let recent: VecDeque<_> = [
        (5, change(10, &[1], &[])),
        (6, change(11, &[], &[1])),
        (7, change(12, &[2], &[])),
    ]
    .into();
    let me = UserId(1);
    let snapshot = || chats(&[11, 20]);
    assert_eq!(
        replay(&recent, 7, me, snapshot(), 7),
        Some(snapshot()),
        "current"
    );
    assert_eq!(
        replay(&recent, 7, me, snapshot(), 4),
        Some(chats(&[10, 20])),
        "5, 6, 7 replayed"
    );
    assert_eq!(
        replay(&recent, 7, me, chats(&[10, 11, 20]), 5),
        Some(chats(&[10, 20])),
        "6, 7"
    );
    assert_eq!(
        replay(&recent, 7, me, snapshot(), 3),
        None,
        "change 4 is forgotten: stale"
    );
    assert_eq!(
        replay(&VecDeque::new(), 0, me, snapshot(), 0),
        Some(snapshot()),
        "no changes yet"
    );
}

#[test]
fn a_room_that_knows_no_seq_starts_at_its_first_event() {
    let mut order = Order::default();
    assert_eq!(seqs(order.accept(event(12), 12)), [12]);
    assert_eq!(seqs(order.accept(event(13), 13)), [13]);
    assert_eq!(seqs(order.accept(event(11), 11)), Vec::<i64>::new());
}
