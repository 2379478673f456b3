//! Blocking (PROTOCOL.md C10): no direct messages or typing either way, no
//! presence in the direct conversation, no groups or invitations from the
//! blocked person; over the WebSocket and REST.

use crate::common;

use actix_web::http::Method;
use chat_server::chat::protocol::UserId;
use chat_server::chat::store;
use common::{Backend, TestApp};
use entity::invitation;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{json, Value};

fn error(code: &str, message: &str) -> Value {
    json!({"status": "error", "code": code, "message": message})
}

const BLOCKED: &str = "messages between you and this person are blocked";

async fn blocking(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice, bob, pk) = app.pair("alice", "bob").await;
    let (alice_token, bob_token) = (app.login("alice").await, app.login("bob").await);
    let (carol, carol_token) = app.user("carol").await;
    let (with_carol, _) = chat_server::accounts::direct_chat(&app.db, bob, carol)
        .await
        .unwrap();
    let mut a = app.authorized(&alice_token).await;
    let mut b = app.authorized(&bob_token).await;
    assert_eq!(a.recv_type("presence").await["data"]["online"], true);
    common::next_is_message(&mut b, &mut a, &pk, "before").await;

    // Bob blocks alice: neither can write or type in their conversation.
    assert_eq!(
        b.ask(json!({"type": "block_user", "data": {"user_id": alice}}))
            .await,
        json!({"status": "success", "user_id": alice}),
        "{}",
        backend.name()
    );
    for client in [&mut a, &mut b] {
        for request in [
            json!({"type": "message", "data": {"to": pk, "content": "hello?"}}),
            json!({"type": "typing", "data": {"id": pk}}),
        ] {
            assert_eq!(client.ask(request).await, error("invalid", BLOCKED));
        }
    }
    // What the ChatServer routes by (a session registering, the bus
    // catching up): their direct conversation blocked, carol's not, for
    // either way of reading it.
    let (chats, peers) = store::chats_of(&app.db, UserId(bob)).await.unwrap();
    assert_eq!(peers, vec![UserId(alice)]);
    let routed = store::chats_of_users(&app.db, &[UserId(bob)])
        .await
        .unwrap();
    for entries in [&chats, &routed[&UserId(bob)]] {
        let mut flags: Vec<(String, bool, bool)> = entries
            .iter()
            .map(|e| (e.chat.0.to_string(), e.blocked, e.presence))
            .collect();
        flags.sort();
        let mut expected = vec![
            (pk.clone(), true, false),
            (with_carol.id.to_string(), false, true),
        ];
        expected.sort();
        assert_eq!(flags, expected, "{}", backend.name());
    }
    // History stays readable; bob is no longer shown online to alice.
    let page = a
        .ask(json!({"type": "get_messages", "data": {"id": pk}}))
        .await;
    assert_eq!(page["messages"][0]["content"], "before");
    let contacts = a.ask(json!({"type": "get_contacts", "data": {}})).await;
    assert_eq!(contacts[0]["online"], false, "{contacts}");
    let contact = a
        .ask(json!({"type": "get_contact", "data": {"id": pk}}))
        .await;
    assert_eq!(contact["online"], false, "{contact}");
    // Bob goes and comes back: carol, his contact, hears it; alice does not
    // (the ChatServer tells all of bob's conversations in one step, so
    // alice's frame would stand before her pong).
    let mut c = app.authorized(&carol_token).await;
    let presence = |online: bool| json!({"type": "presence", "data": {"pk": with_carol.id, "user_id": bob, "online": online}});
    drop(b);
    assert_eq!(c.recv().await, presence(false));
    a.nothing_before_pong().await;
    let mut b = app.authorized(&bob_token).await;
    assert_eq!(c.recv().await, presence(true));
    a.nothing_before_pong().await;

    // Alice cannot put bob in a group, though he wrote to her: not added,
    // not invited (she is not told).
    let group = a
        .ask_change(json!({"type": "create_group", "data": {"title": "g", "members": [bob]}}))
        .await;
    assert_eq!(group["invited"], json!([bob]));
    assert_eq!(group["members"].as_array().map(Vec::len), Some(1));
    let invitations = invitation::Entity::find()
        .filter(invitation::Column::UserId.eq(bob))
        .count(&app.db)
        .await
        .unwrap();
    assert_eq!(invitations, 0);

    // The list, the errors, and a block both ways.
    assert_eq!(
        b.ask(json!({"type": "get_blocked", "data": {}})).await,
        json!([{"user_id": alice, "username": "alice", "name": "Alice Smith"}])
    );
    assert_eq!(
        b.ask(json!({"type": "block_user", "data": {"user_id": bob}}))
            .await,
        error("invalid", "you cannot block yourself")
    );
    assert_eq!(
        b.ask(json!({"type": "block_user", "data": {"user_id": 999999}}))
            .await,
        error("invalid", "no active user with id 999999")
    );
    let (status, _) = app
        .rest(
            Method::POST,
            "/api/blocks/",
            &alice_token,
            Some(json!({"user_id": bob})),
        )
        .await;
    assert_eq!(status, 200);
    // Bob lifts his block; alice's still holds.
    assert_eq!(
        b.ask(json!({"type": "unblock_user", "data": {"user_id": alice}}))
            .await,
        json!({"status": "success", "user_id": alice})
    );
    assert_eq!(
        b.ask(json!({"type": "message", "data": {"to": pk, "content": "and now?"}}))
            .await,
        error("invalid", BLOCKED)
    );
    // Alice lifts hers over REST: they write again.
    assert_eq!(
        app.rest(Method::GET, "/api/blocks/", &alice_token, None)
            .await,
        (
            200,
            json!([{"user_id": bob, "username": "bob", "name": "Bob Jones"}])
        )
    );
    assert_eq!(
        app.rest(
            Method::DELETE,
            &format!("/api/blocks/{bob}/"),
            &alice_token,
            None
        )
        .await,
        (200, json!({"status": "success", "user_id": bob}))
    );
    common::next_is_message(&mut b, &mut a, &pk, "friends again").await;
    assert_eq!(
        b.ask(json!({"type": "get_blocked", "data": {}})).await,
        json!([])
    );
}

backend_tests!(a_block_stops_messages_presence_and_groups => blocking);

/// Two people with a block never see each other's presence, in a group
/// they share either; the group's other members do. Lifted, it comes back.
async fn presence_in_shared_groups(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice, alice_token) = app.user("alice").await;
    let (bob, bob_token) = app.user("bob").await;
    let (carol, carol_token) = app.user("carol").await;
    common::have_written(&app.db, &[alice, bob], carol).await;
    let mut c = app.authorized(&carol_token).await;
    let created = c
        .ask(json!({"type": "create_group", "data": {"title": "trio", "members": [alice, bob]}}))
        .await;
    let pk = created["pk"].as_str().expect("a group").to_string();
    let presence = |user: i64, online: bool| json!({"type": "presence", "data": {"pk": pk, "user_id": user, "online": online}});
    // Carol hears each person in the group and in their direct conversation.
    async fn in_group(ws: &mut common::WsClient, pk: &str) -> Value {
        loop {
            let frame = ws.recv_type("presence").await;
            if frame["data"]["pk"] == pk {
                return frame;
            }
        }
    }
    let mut b = app.authorized(&bob_token).await;
    assert_eq!(in_group(&mut c, &pk).await, presence(bob, true));
    assert_eq!(
        b.ask(json!({"type": "block_user", "data": {"user_id": alice}}))
            .await,
        json!({"status": "success", "user_id": alice})
    );
    // Alice comes: carol hears it in the group, bob does not.
    let mut a = app.authorized(&alice_token).await;
    assert_eq!(in_group(&mut c, &pk).await, presence(alice, true));
    b.nothing_before_pong().await;
    // Nor do the snapshots show it, either way; carol's do.
    let online_in = |group: &Value, user: i64| {
        let members = group["members"].as_array().expect("members");
        let member = members.iter().find(|m| m["user_id"] == user);
        member.expect("a member")["online"].clone()
    };
    let group = json!({"type": "get_contact", "data": {"id": pk}});
    assert_eq!(online_in(&b.ask(group.clone()).await, alice), false);
    assert_eq!(online_in(&a.ask(group.clone()).await, bob), false);
    assert_eq!(online_in(&c.ask(group.clone()).await, alice), true);
    let (status, seen) = app
        .rest(Method::GET, &format!("/api/groups/{pk}/"), &bob_token, None)
        .await;
    assert_eq!((status, online_in(&seen, alice)), (200, json!(false)));
    // A group's `online` counts only whom the viewer may see: alice alone
    // with bob (carol gone) is offline to him.
    drop(c);
    assert_eq!(in_group(&mut b, &pk).await, presence(carol, false));
    let contacts = b.ask(json!({"type": "get_contacts", "data": {}})).await;
    let trio = contacts
        .as_array()
        .expect("contacts")
        .iter()
        .find(|x| x["pk"] == pk);
    assert_eq!(trio.expect("the group")["online"], false, "{contacts}");
    // Lifted: bob hears alice again.
    assert_eq!(
        b.ask(json!({"type": "unblock_user", "data": {"user_id": alice}}))
            .await,
        json!({"status": "success", "user_id": alice})
    );
    drop(a);
    assert_eq!(in_group(&mut b, &pk).await, presence(alice, false));
    let _a = app.authorized(&alice_token).await;
    assert_eq!(in_group(&mut b, &pk).await, presence(alice, true));
}

backend_tests!(a_block_hides_presence_in_shared_groups_too => presence_in_shared_groups);

/// Blocks and unblocks share one allowance per user over every socket (and
/// REST), at the WebSocket's request rate: opening more sockets gains
/// nothing. Three sockets, each with room for three requests after
/// authorizing (burst 4), send nine; the user's allowance is 4 plus one a
/// second, so at least one is refused unless the nine take over five
/// seconds (they take milliseconds).
#[actix_rt::test]
async fn blocks_over_every_socket_share_one_allowance() {
    let app = TestApp::spawn_with(
        &Backend::Sqlite,
        &[("RATE_LIMIT_BURST", "4"), ("RATE_LIMIT_PER_SECOND", "1")],
    )
    .await;
    let (_, token) = app.user("alice").await;
    let mut targets = Vec::new();
    for i in 0..9 {
        targets.push(app.create_user(&format!("target{i}"), "T", "X").await);
    }
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(app.authorized(&token).await);
    }
    let mut answers = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        let ws = &mut sockets[i % 3];
        answers.push(
            ws.ask(json!({"type": "block_user", "data": {"user_id": target}}))
                .await,
        );
    }
    let refused: Vec<&Value> = answers.iter().filter(|a| a["status"] == "error").collect();
    assert!(!refused.is_empty(), "{answers:?}");
    assert_eq!(refused[0]["code"], "rate_limited", "{answers:?}");
    assert!(
        refused[0]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("too many changes; try again in ")),
        "{answers:?}"
    );
    assert!(
        answers[..4].iter().all(|a| a["status"] == "success"),
        "{answers:?}"
    );
}
