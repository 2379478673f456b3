//! Replies, edits, deletions and reactions (PROTOCOL.md B8): each change is
//! an event of the conversation's log with its own `seq` (B7), pushed live
//! to every member's sessions and replayed by `sync`; the rules (who may,
//! until when, how many) are answered with the B3 codes; a deletion leaves
//! nothing of the text in the database.

use crate::common;

use std::collections::HashSet;

use common::{Backend, ReleaseOnDrop, TestApp, WsClient};
use entity::{message, message_event, reaction};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{json, Value};

async fn send(ws: &mut WsClient, pk: &str, content: &str, reply_to: Option<i64>) -> Value {
    let mut data = json!({"to": pk, "content": content});
    if let Some(id) = reply_to {
        data["reply_to"] = json!(id);
    }
    ws.ask(json!({"type": "message", "data": data})).await
}

async fn edit(ws: &mut WsClient, id: i64, content: &str) -> Value {
    ws.ask(json!({"type": "edit_message", "data": {"id": id, "content": content}}))
        .await
}

async fn delete(ws: &mut WsClient, id: i64) -> Value {
    ws.ask(json!({"type": "delete_message", "data": {"id": id}}))
        .await
}

async fn react(ws: &mut WsClient, id: i64, emoji: &str, on: bool) -> Value {
    ws.ask(json!({"type": "react", "data": {"id": id, "emoji": emoji, "on": on}}))
        .await
}

fn error(code: &str, message: &str) -> Value {
    json!({"status": "error", "code": code, "message": message})
}

/// The next frame that is an event of a conversation's log.
async fn next_event(ws: &mut WsClient) -> Value {
    const EVENTS: [&str; 4] = ["message", "message_edited", "message_deleted", "reaction"];
    loop {
        let frame = ws.recv().await;
        if EVENTS.iter().any(|t| frame["type"] == *t) {
            return frame;
        }
    }
}

async fn history(ws: &mut WsClient, pk: &str) -> Vec<Value> {
    let page = ws
        .ask(json!({"type": "get_messages", "data": {"id": pk}}))
        .await;
    page["messages"].as_array().expect("messages").clone()
}

async fn b8_in_a_direct_conversation(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice_id, bob_id, pk) = app.pair("alice", "bob").await;
    let (_, _, elsewhere) = app.pair("carol", "dave").await;
    let mut alice = app.authorized(&app.login("alice").await).await;
    let mut bob = app.authorized(&app.login("bob").await).await;
    let mut carol = app.authorized(&app.login("carol").await).await;
    let mut live = Vec::new(); // every event bob's session got, in order

    let hello = send(&mut alice, &pk, "hello", None).await;
    let hello_id = hello["id"].as_i64().unwrap();
    live.push(next_event(&mut bob).await);
    assert_eq!(next_event(&mut alice).await["data"]["seq"], 1);

    // A reply carries the message it answers and a quote of it.
    let reply = send(&mut bob, &pk, "hi!", Some(hello_id)).await;
    assert_eq!(reply["status"], "success", "{}", backend.name());
    let pushed = next_event(&mut alice).await; // alice: the reply
    assert_eq!(pushed["data"]["seq"], 2);
    assert_eq!(pushed["data"]["data"]["reply_to"], hello_id);
    assert_eq!(
        pushed["data"]["data"]["quote"],
        json!({"sender": alice_id, "content": "hello"})
    );
    live.push(next_event(&mut bob).await);
    assert_eq!(live[1]["data"]["data"]["direction"], "send");
    // A message without a reply keeps the old frame's keys, byte for byte.
    let keys: HashSet<&str> = live[0]["data"]["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        HashSet::from(["direction", "content", "time", "id", "sender"])
    );
    // A reply to nothing, or to another conversation's message: invalid.
    let other = send(&mut carol, &elsewhere, "not yours", None).await;
    for id in [other["id"].as_i64().unwrap(), 999_999] {
        assert_eq!(
            send(&mut bob, &pk, "?", Some(id)).await,
            error("invalid", "reply_to is not a message of this conversation")
        );
    }

    // Only the sender edits; anyone else is told it does not exist.
    assert_eq!(
        edit(&mut bob, hello_id, "hacked").await,
        error("not_found", "message not found")
    );
    assert_eq!(
        edit(&mut carol, hello_id, "hacked").await,
        error("not_found", "message not found")
    );
    assert_eq!(
        edit(&mut alice, hello_id, "  ").await,
        error("invalid", "content must not be empty")
    );
    let edited = edit(&mut alice, hello_id, "hello there").await;
    let edited_at = edited["edited_at"].clone();
    assert!(edited_at.is_string(), "{edited}");
    assert_eq!(
        edited,
        json!({"status": "success", "pk": pk, "seq": 3, "id": hello_id,
               "content": "hello there", "edited_at": edited_at})
    );
    let push = json!({"type": "message_edited", "data": {"pk": pk, "seq": 3, "id": hello_id,
                      "content": "hello there", "edited_at": edited_at}});
    live.push(next_event(&mut bob).await);
    assert_eq!(live[2], push);
    assert_eq!(
        next_event(&mut alice).await,
        push,
        "the editor's sessions too"
    );
    // The same text again changes nothing and pushes nothing.
    assert_eq!(
        edit(&mut alice, hello_id, "hello there").await,
        json!({"status": "success", "pk": pk, "seq": null, "id": hello_id,
               "content": "hello there", "edited_at": edited_at})
    );

    // Reactions: one per (user, message, emoji), the emoji in one form.
    for bad in ["a", "👍👍", "", " 👍"] {
        assert_eq!(
            react(&mut bob, hello_id, bad, true).await,
            error("invalid", "emoji must be exactly one emoji"),
            "{bad:?}"
        );
    }
    let thumbs = react(&mut bob, hello_id, "👍", true).await;
    assert_eq!(
        thumbs,
        json!({"status": "success", "pk": pk, "seq": 4, "id": hello_id,
               "user_id": bob_id, "emoji": "👍", "on": true})
    );
    let reaction = json!({"type": "reaction", "data": {"pk": pk, "seq": 4, "id": hello_id,
                          "user_id": bob_id, "emoji": "👍", "on": true}});
    assert_eq!(next_event(&mut alice).await, reaction);
    live.push(next_event(&mut bob).await);
    assert_eq!(live[3], reaction);
    assert_eq!(
        react(&mut bob, hello_id, "👍", true).await["seq"],
        Value::Null,
        "set again: nothing changes"
    );
    let heart = react(&mut alice, hello_id, "❤", true).await;
    assert_eq!(heart["emoji"], "❤️", "stored fully qualified");
    assert_eq!(heart["seq"], 5);
    live.push(next_event(&mut bob).await);
    assert_eq!(
        react(&mut alice, hello_id, "❤️", false).await["seq"],
        6,
        "either form names the same reaction"
    );
    live.push(next_event(&mut bob).await);
    assert_eq!(
        react(&mut alice, hello_id, "❤️", false).await["seq"],
        Value::Null
    );

    // History shows the state, as each viewer sees it.
    let items = history(&mut bob, &pk).await;
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["content"], "hello there");
    assert_eq!(items[0]["edited_at"], edited_at);
    assert_eq!(items[0]["deleted"], false);
    assert_eq!(items[0]["reply_to"], Value::Null);
    assert_eq!(
        items[0]["reactions"],
        json!([{"emoji": "👍", "count": 1, "mine": true}])
    );
    assert_eq!(items[1]["reply_to"], hello_id);
    assert_eq!(
        items[1]["quote"],
        json!({"sender": alice_id, "content": "hello there"})
    );
    assert_eq!(items[1]["reactions"], json!([]));
    let items = history(&mut alice, &pk).await;
    assert_eq!(
        items[0]["reactions"],
        json!([{"emoji": "👍", "count": 1, "mine": false}])
    );

    // The last message follows an edit, and skips a deleted message.
    let typo = send(&mut alice, &pk, "tpyo", None).await;
    let typo_id = typo["id"].as_i64().unwrap();
    live.push(next_event(&mut bob).await);
    // The barrier for the requests that changed nothing: had one pushed
    // something, it would stand before this message (one writer, one order).
    assert_eq!(live[6]["data"]["seq"], 7);
    assert_eq!(live[6]["data"]["data"]["id"], typo_id);
    let fixed = edit(&mut alice, typo_id, "typo").await;
    live.push(next_event(&mut bob).await);
    let contacts = bob.ask(json!({"type": "get_contacts", "data": {}})).await;
    assert_eq!(contacts[0]["last_message"]["content"], "typo");
    assert_eq!(contacts[0]["seq"], fixed["seq"]);
    // Only the sender (or a group's owner) deletes.
    assert_eq!(
        delete(&mut bob, typo_id).await,
        error("not_found", "message not found")
    );
    let deleted = delete(&mut alice, typo_id).await;
    assert_eq!(
        deleted,
        json!({"status": "success", "pk": pk, "seq": 9, "id": typo_id})
    );
    live.push(next_event(&mut bob).await);
    assert_eq!(
        live.last().unwrap(),
        &json!({"type": "message_deleted", "data": {"pk": pk, "seq": 9, "id": typo_id}})
    );
    assert_eq!(
        delete(&mut alice, typo_id).await,
        deleted,
        "asked again: the same answer"
    );
    let contacts = bob.ask(json!({"type": "get_contacts", "data": {}})).await;
    assert_eq!(contacts[0]["last_message"]["content"], "hi!");
    let contact = bob
        .ask(json!({"type": "get_contact", "data": {"id": pk}}))
        .await;
    assert_eq!(
        contact["last_message"], contacts[0]["last_message"],
        "one conversation shows the last message its list item shows"
    );

    // Deleting the first message: its reactions and every copy of its
    // text go; a deleted message can be neither edited nor reacted to.
    let gone = delete(&mut alice, hello_id).await;
    assert_eq!(gone["seq"], 10);
    live.push(next_event(&mut bob).await);
    assert_eq!(
        edit(&mut alice, hello_id, "back").await,
        error("invalid", "the message was deleted")
    );
    assert_eq!(
        react(&mut bob, hello_id, "👍", true).await,
        error("invalid", "the message was deleted")
    );
    let row = message::Entity::find_by_id(hello_id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.content.as_str(), row.original_content, row.deleted),
        ("", None, true)
    );
    let events = message_event::Entity::find()
        .filter(message_event::Column::MessageId.is_in([hello_id, typo_id]))
        .all(&app.db)
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .all(|e| e.content.as_deref().unwrap_or("").is_empty()),
        "{events:?}"
    );
    let left = reaction::Entity::find()
        .filter(reaction::Column::MessageId.eq(hello_id))
        .all(&app.db)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    let items = history(&mut bob, &pk).await;
    assert_eq!(
        (
            &items[0]["content"],
            &items[0]["deleted"],
            &items[0]["reactions"]
        ),
        (&json!(""), &json!(true), &json!([]))
    );
    assert_eq!(
        items[1]["quote"],
        json!({"sender": alice_id, "content": ""}),
        "a quote of a deleted message shows nothing of it"
    );

    // `sync` replays every event as it went live, less the deleted text.
    let page = bob
        .ask(json!({"type": "sync", "data": {"id": pk, "after_seq": 0}}))
        .await;
    let deleted_ids = [hello_id, typo_id];
    let expected: Vec<Value> = live
        .iter()
        .cloned()
        .map(|mut frame| {
            let data = &mut frame["data"];
            let id = data["id"].as_i64().or(data["data"]["id"].as_i64());
            let gone = id.is_some_and(|id| deleted_ids.contains(&id));
            match frame["type"].as_str() {
                Some("message") if gone => frame["data"]["data"]["content"] = json!(""),
                Some("message_edited") if gone => frame["data"]["content"] = json!(""),
                _ => {}
            }
            if frame["data"]["data"]["reply_to"]
                .as_i64()
                .is_some_and(|id| deleted_ids.contains(&id))
            {
                frame["data"]["data"]["quote"]["content"] = json!("");
            }
            frame
        })
        .collect();
    assert_eq!(
        page,
        json!({"pk": pk, "events": expected, "seq": 10, "has_more": false}),
        "{}",
        backend.name()
    );
    let seqs: Vec<i64> = live
        .iter()
        .map(|f| f["data"]["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>(), "one order, no gaps");
    // Paged, messages and changes merged: every page says whether more follow.
    let mut paged = Vec::new();
    loop {
        let data = json!({"id": pk, "after_seq": paged.len(), "limit": 3});
        let page = bob.ask(json!({"type": "sync", "data": data})).await;
        paged.extend(page["events"].as_array().unwrap().iter().cloned());
        if page["has_more"] == false {
            break;
        }
    }
    assert_eq!(paged, expected);
}
backend_tests!(b8_direct => b8_in_a_direct_conversation);

async fn b8_in_a_group(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice_id, alice_token) = app.user("alice").await;
    let (bob_id, bob_token) = app.user("bob").await;
    let (carol_id, carol_token) = app.user("carol").await;
    let (_, dave_token) = app.user("dave").await;
    common::have_written(&app.db, &[bob_id, carol_id], alice_id).await;
    let mut alice = app.authorized(&alice_token).await;
    let mut bob = app.authorized(&bob_token).await;
    let mut carol = app.authorized(&carol_token).await;
    let mut dave = app.authorized(&dave_token).await;
    let group = alice
        .ask(json!({"type": "create_group", "data": {"title": "g", "members": [bob_id, carol_id]}}))
        .await;
    let pk = group["pk"].as_str().unwrap().to_string();
    let mine = send(&mut alice, &pk, "from the owner", None).await["id"]
        .as_i64()
        .unwrap();
    let bobs = send(&mut bob, &pk, "from bob", None).await["id"]
        .as_i64()
        .unwrap();

    // Someone outside the group: as if the messages did not exist.
    for answer in [
        edit(&mut dave, mine, "x").await,
        delete(&mut dave, mine).await,
        react(&mut dave, mine, "👍", true).await,
    ] {
        assert_eq!(answer, error("not_found", "message not found"));
    }
    // A member deletes only their own; the owner deletes anyone's.
    assert_eq!(
        delete(&mut carol, bobs).await,
        error("not_found", "message not found")
    );
    assert_eq!(
        delete(&mut bob, mine).await,
        error("not_found", "message not found")
    );
    let removed = delete(&mut alice, bobs).await;
    assert_eq!(removed["status"], "success");
    let pushed = carol.recv_type("message_deleted").await;
    assert_eq!(pushed["data"]["id"], bobs);
    assert_eq!(pushed["data"]["seq"], removed["seq"]);
    // ...but edits nobody's but their own.
    assert_eq!(
        edit(&mut alice, bobs, "x").await,
        error("not_found", "message not found")
    );
    // The group as a change shows it: its last message is the newest one
    // not deleted.
    let renamed = alice
        .ask(json!({"type": "rename_group", "data": {"id": pk, "title": "h"}}))
        .await;
    assert_eq!(renamed["last_message"]["id"], mine);
    let pushed = carol.recv_type("conversation").await;
    assert_eq!(pushed["data"]["last_message"]["id"], mine);

    // At most 20 different emoji on a message; more of one is fine.
    const EMOJI: [&str; 21] = [
        "😀", "😂", "😍", "😎", "😢", "😡", "👍", "👎", "👏", "🙏", "🔥", "🎉", "💯", "🤔", "👀",
        "🚀", "✅", "❌", "🍕", "☕", "🌈",
    ];
    for emoji in &EMOJI[..20] {
        assert_eq!(
            react(&mut carol, mine, emoji, true).await["status"],
            "success"
        );
    }
    assert_eq!(
        react(&mut bob, mine, EMOJI[20], true).await,
        error("invalid", "a message has at most 20 different reactions")
    );
    assert_eq!(react(&mut bob, mine, "👍", true).await["status"], "success");
    let items = history(&mut bob, &pk).await;
    let reactions = items[0]["reactions"].as_array().unwrap();
    assert_eq!(reactions.len(), 20);
    assert_eq!(
        reactions[6],
        json!({"emoji": "👍", "count": 2, "mine": true})
    );
}
backend_tests!(b8_group => b8_in_a_group);

async fn edits_have_a_window(backend: &Backend) {
    let app = TestApp::spawn_with(backend, &[("EDIT_WINDOW_SECONDS", "60")]).await;
    let (_, _, pk) = app.pair("alice", "bob").await;
    let mut alice = app.authorized(&app.login("alice").await).await;
    let old = send(&mut alice, &pk, "old", None).await["id"]
        .as_i64()
        .unwrap();
    let recent = send(&mut alice, &pk, "recent", None).await["id"]
        .as_i64()
        .unwrap();
    // Sent two minutes ago, as far as the database knows.
    message::Entity::update_many()
        .col_expr(
            message::Column::CreatedAt,
            sea_orm::sea_query::Expr::value(chrono::Utc::now() - chrono::Duration::minutes(2)),
        )
        .filter(message::Column::Id.eq(old))
        .exec(&app.db)
        .await
        .unwrap();
    assert_eq!(
        edit(&mut alice, old, "new").await,
        error(
            "invalid",
            "a message can be edited for 60 s after it was sent"
        )
    );
    assert_eq!(edit(&mut alice, recent, "new").await["status"], "success");
    // Deleting has no window.
    assert_eq!(delete(&mut alice, old).await["status"], "success");
}
backend_tests!(edit_window => edits_have_a_window);

/// Two instances: a change made on one reaches the other's sessions in the
/// conversation's order, interleaved with messages sent on the other.
#[actix_rt::test]
#[ignore = "needs TEST_POSTGRES_URL and TEST_REDIS_URL; run with --include-ignored"]
async fn changes_reach_every_instance_in_one_order() {
    let backend = Backend::postgres();
    let redis = common::require_redis_url();
    let db = common::TestDatabase::create(&backend).await;
    let apps = common::instances(&backend, &redis, &db, 2).await;
    let (_, _, pk) = apps[0].pair("alice", "bob").await;
    let mut alice = apps[0].authorized(&apps[0].login("alice").await).await;
    let mut bob = apps[1].authorized(&apps[1].login("bob").await).await;
    let first = send(&mut alice, &pk, "first", None).await["id"]
        .as_i64()
        .unwrap();
    // Bob reacts (instance 2) while alice sends and edits (instance 1).
    for i in 0..20 {
        alice
            .send(json!({"type": "message", "data": {"to": pk, "content": format!("m{i}")}}))
            .await;
        bob.send(json!({"type": "react", "data": {"id": first, "emoji": "👍", "on": i % 2 == 0}}))
            .await;
        alice
            .send(
                json!({"type": "edit_message", "data": {"id": first, "content": format!("e{i}")}}),
            )
            .await;
    }
    // 1 + 20 messages, 20 reaction changes, 20 edits: seq 1..=61 on both.
    for ws in [&mut alice, &mut bob] {
        let mut seqs = Vec::new();
        while seqs.len() < 61 {
            seqs.push(next_event(ws).await["data"]["seq"].as_i64().unwrap());
        }
        assert_eq!(seqs, (1..=61).collect::<Vec<_>>());
    }
    let items = history(&mut bob, &pk).await;
    assert_eq!(items[0]["content"], "e19");
    assert_eq!(items[0]["reactions"], json!([]));
}

/// A change locks its conversation's row only to number its event. A batch
/// of changes held after deciding (its message's row locked, the
/// conversation's not yet) does not hold back a new message of the same
/// conversation: that commits and is delivered, and the change's event then
/// takes the `seq` after it. PostgreSQL and MySQL, where changes have a
/// writer lane of their own (SQLite has one writer at a time).
async fn a_change_numbers_its_event_last(backend: &Backend) {
    use chat_server::chat::writer::commit_gate::{self, Point};
    let app = TestApp::spawn(backend).await;
    let (_, bob_id, pk, mut alice, mut bob) = app.pair_online("alice", "bob").await;
    let first = send(&mut alice, &pk, "first", None).await["id"]
        .as_i64()
        .unwrap();
    assert_eq!(next_event(&mut bob).await["data"]["seq"], 1);
    assert_eq!(next_event(&mut alice).await["data"]["seq"], 1);

    let gate = commit_gate::hold_at(Point::Numbering, pk.parse().unwrap());
    let _release = ReleaseOnDrop(gate.clone());
    bob.send(json!({"type": "react", "data": {"id": first, "emoji": "👍", "on": true}}))
        .await;
    gate.reached().await;
    let second = send(&mut alice, &pk, "second", None).await;
    assert_eq!(second["status"], "success", "{}", backend.name());
    let pushed = next_event(&mut bob).await;
    assert_eq!(
        (
            &pushed["type"],
            &pushed["data"]["seq"],
            &pushed["data"]["data"]["content"]
        ),
        (&json!("message"), &json!(2), &json!("second")),
        "{}: the message committed while the change was held",
        backend.name()
    );

    gate.release();
    let reaction = json!({"pk": pk, "seq": 3, "id": first, "user_id": bob_id,
                          "emoji": "👍", "on": true});
    let mut answered = bob.recv_type("react_response").await["data"].clone();
    assert_eq!(
        answered.as_object_mut().unwrap().remove("status"),
        Some(json!("success"))
    );
    assert_eq!(answered, reaction);
    let echoes = [next_event(&mut alice).await, next_event(&mut alice).await];
    assert_eq!(echoes[0]["data"]["seq"], 2);
    assert_eq!(echoes[1], json!({"type": "reaction", "data": reaction}));
}

backend_tests!(@server change_numbers_last => a_change_numbers_its_event_last);

/// REST mirrors the requests: the same rules, answers and pushes.
async fn rest_mirrors_the_requests(backend: &Backend) {
    use actix_web::http::Method;
    let app = TestApp::spawn(backend).await;
    let (_, bob_id, pk) = app.pair("alice", "bob").await;
    let (alice_token, bob_token) = (app.login("alice").await, app.login("bob").await);
    let mut alice = app.authorized(&alice_token).await;
    let id = send(&mut alice, &pk, "hello", None).await["id"]
        .as_i64()
        .unwrap();
    let message = format!("/api/messages/{id}/");
    let reactions = format!("/api/messages/{id}/reactions/");

    let (status, body) = app
        .rest(
            Method::PATCH,
            &message,
            &bob_token,
            Some(json!({"content": "x"})),
        )
        .await;
    assert_eq!((status, body), (404, json!({"detail": "Not found."})));
    let (status, body) = app
        .rest(
            Method::PATCH,
            &message,
            &alice_token,
            Some(json!({"content": " "})),
        )
        .await;
    assert_eq!(
        (status, body),
        (400, json!({"content": ["content must not be empty"]}))
    );
    let (status, edited) = app
        .rest(
            Method::PATCH,
            &message,
            &alice_token,
            Some(json!({"content": "hi"})),
        )
        .await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(
        edited,
        json!({"pk": pk, "seq": 2, "id": id, "content": "hi", "edited_at": edited["edited_at"]})
    );
    assert_eq!(
        next_event(&mut alice).await["type"],
        "message",
        "alice's own message first"
    );
    assert_eq!(
        next_event(&mut alice).await,
        json!({"type": "message_edited", "data": edited})
    );

    let (status, body) = app
        .rest(
            Method::POST,
            &reactions,
            &bob_token,
            Some(json!({"emoji": "no"})),
        )
        .await;
    assert_eq!(
        (status, body),
        (400, json!({"emoji": ["emoji must be exactly one emoji"]}))
    );
    let (status, set) = app
        .rest(
            Method::POST,
            &reactions,
            &bob_token,
            Some(json!({"emoji": "🎉"})),
        )
        .await;
    assert_eq!(
        (status, set),
        (
            200,
            json!({"pk": pk, "seq": 3, "id": id, "user_id": bob_id, "emoji": "🎉", "on": true})
        )
    );
    let (status, taken) = app
        .rest(
            Method::DELETE,
            &format!("{reactions}?emoji=%F0%9F%8E%89"),
            &bob_token,
            None,
        )
        .await;
    assert_eq!(
        (status, &taken["seq"], &taken["on"]),
        (200, &json!(4), &json!(false))
    );
    assert_eq!(next_event(&mut alice).await["data"]["seq"], 3);
    assert_eq!(next_event(&mut alice).await["data"]["seq"], 4);

    let (status, _) = app.rest(Method::DELETE, &message, &bob_token, None).await;
    assert_eq!(status, 404);
    let (status, deleted) = app.rest(Method::DELETE, &message, &alice_token, None).await;
    assert_eq!(
        (status, deleted),
        (200, json!({"pk": pk, "seq": 5, "id": id}))
    );
    assert_eq!(
        next_event(&mut alice).await,
        json!({"type": "message_deleted", "data": {"pk": pk, "seq": 5, "id": id}})
    );
    let (status, _) = app
        .rest(Method::GET, "/api/messages/1/", &alice_token, None)
        .await;
    assert_eq!(status, 405);
}
backend_tests!(rest => rest_mirrors_the_requests);

#[actix_rt::test]
async fn the_api_docs_describe_the_message_changes() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    let mut res = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    let spec: Value = res.json().limit(1 << 22).await.unwrap();
    let paths = &spec["paths"];
    for (path, methods) in [
        ("/api/messages/{id}/", ["patch", "delete"]),
        ("/api/messages/{id}/reactions/", ["post", "delete"]),
    ] {
        for method in methods {
            assert!(
                paths[path][method].is_object(),
                "{path} {method}: {}",
                paths[path]
            );
        }
    }
}

/// A small deterministic generator (xorshift64*): a failing run repeats
/// with its printed seed (`MESSAGE_CHANGES_SEED`).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

/// A message as a client that applies every event ends up with it.
#[derive(Debug, Default, PartialEq)]
struct Shown {
    content: String,
    deleted: bool,
    edited_at: Option<String>,
    reply_to: Option<i64>,
    reactions: std::collections::BTreeMap<String, HashSet<i64>>,
}

/// Applies one event of a `sync` page (or a live push) to `state`.
fn apply(state: &mut std::collections::BTreeMap<i64, Shown>, event: &Value) {
    let data = &event["data"];
    let id = |v: &Value| v["id"].as_i64().expect("an id");
    match event["type"].as_str() {
        Some("message") => {
            let body = &data["data"];
            state.insert(
                id(body),
                Shown {
                    content: body["content"].as_str().unwrap().into(),
                    reply_to: body["reply_to"].as_i64(),
                    ..Shown::default()
                },
            );
        }
        Some("message_edited") => {
            let shown = state
                .get_mut(&id(data))
                .expect("an edit of a known message");
            shown.content = data["content"].as_str().unwrap().into();
            shown.edited_at = data["edited_at"].as_str().map(Into::into);
        }
        Some("message_deleted") => {
            let shown = state
                .get_mut(&id(data))
                .expect("a deletion of a known message");
            shown.deleted = true;
            shown.content.clear();
            shown.reactions.clear();
        }
        Some("reaction") => {
            let shown = state
                .get_mut(&id(data))
                .expect("a reaction to a known message");
            let users = shown
                .reactions
                .entry(data["emoji"].as_str().unwrap().into())
                .or_default();
            let user = data["user_id"].as_i64().unwrap();
            if data["on"] == true {
                assert!(users.insert(user), "set twice: {event}");
            } else {
                assert!(users.remove(&user), "taken back unset: {event}");
            }
            shown.reactions.retain(|_, users| !users.is_empty());
        }
        other => panic!("not an event: {other:?}"),
    }
}

/// Thousands of random messages, replies, edits, deletions and reactions
/// from three people on two instances while a fourth is away; then the
/// fourth catches up with `sync` alone, and what they end with is exactly
/// the server's history, message by message and reaction by reaction.
async fn random_changes_converge(apps: Vec<TestApp>, ops_per_user: usize) {
    let seed = common::seed("MESSAGE_CHANGES_SEED");
    let a = &apps[0];
    let mut ids = Vec::new();
    for name in ["u0", "u1", "u2", "away"] {
        ids.push(a.create_user(name, "User", name).await);
    }
    common::have_written(&a.db, &ids[1..], ids[0]).await;
    let mut owner = a.authorized(&a.login("u0").await).await;
    let group = owner
        .ask(json!({"type": "create_group", "data": {"title": "r", "members": ids[1..]}}))
        .await;
    let pk = group["pk"].as_str().unwrap().to_string();
    drop(owner);

    let known = std::rc::Rc::new(std::cell::RefCell::new(Vec::<(i64, usize)>::new()));
    let mut people = Vec::new();
    for u in 0..3 {
        let app = &apps[u % apps.len()];
        let ws = app.authorized(&a.login(&format!("u{u}")).await).await;
        people.push((u, ws, Rng(seed.wrapping_add(u as u64 * 7919) | 1)));
    }
    let runs = people.into_iter().map(|(u, mut ws, mut rng)| {
        let (known, pk) = (known.clone(), pk.clone());
        async move {
            const EMOJI: [&str; 4] = ["👍", "❤️", "😂", "🎉"];
            // Several requests in flight, as a client sends them: batches
            // of the writers hold several at once, and the run is quick.
            const IN_FLIGHT: usize = 8;
            let (mut i, mut in_flight) = (0, 0);
            while i < ops_per_user || in_flight > 0 {
                if i == ops_per_user || in_flight == IN_FLIGHT {
                    let frame = ws.recv().await;
                    let kind = frame["type"].as_str().unwrap_or_default();
                    if !kind.ends_with("_response") {
                        continue; // a push
                    }
                    in_flight -= 1;
                    let answer = &frame["data"];
                    if kind == "message_response" && answer["status"] == "success" {
                        known.borrow_mut().push((answer["id"].as_i64().unwrap(), u));
                    }
                    let refused = answer["code"].as_str();
                    assert!(
                        matches!(refused, None | Some("invalid") | Some("not_found")),
                        "{frame}"
                    );
                    continue;
                }
                let pick = |rng: &mut Rng, own: bool| {
                    let known = known.borrow();
                    let candidates: Vec<i64> = known
                        .iter()
                        .filter(|(_, by)| !own || *by == u)
                        .map(|(id, _)| *id)
                        .collect();
                    (!candidates.is_empty()).then(|| candidates[rng.below(candidates.len())])
                };
                let request = match (rng.below(10), pick(&mut rng, false), pick(&mut rng, true)) {
                    (0..=3, any, _) | (_, any @ None, _) => {
                        let mut data = json!({"to": pk, "content": format!("u{u} m{i}")});
                        if rng.below(3) == 0 {
                            data["reply_to"] = json!(any);
                        }
                        json!({"type": "message", "data": data})
                    }
                    (4, _, Some(own)) => {
                        json!({"type": "edit_message", "data": {"id": own, "content": format!("u{u} e{i}")}})
                    }
                    (5, Some(any), own) => {
                        // The owner (u0) deletes anyone's; the others their own.
                        let id = if u == 0 { any } else { own.unwrap_or(any) };
                        json!({"type": "delete_message", "data": {"id": id}})
                    }
                    (_, Some(any), _) => {
                        let emoji = EMOJI[rng.below(EMOJI.len())];
                        let on = rng.below(3) != 0;
                        json!({"type": "react", "data": {"id": any, "emoji": emoji, "on": on}})
                    }
                };
                ws.send(request).await;
                (i, in_flight) = (i + 1, in_flight + 1);
            }
        }
    });
    futures_util::future::join_all(runs).await;

    // The one who was away catches up on the other instance, from nothing.
    let b = &apps[apps.len() - 1];
    let mut away = b.authorized(&b.login("away").await).await;
    let mut state = std::collections::BTreeMap::new();
    let mut after = 0;
    loop {
        let page = away
            .ask(json!({"type": "sync", "data": {"id": pk, "after_seq": after, "limit": 200}}))
            .await;
        for event in page["events"].as_array().unwrap() {
            let seq = event["data"]["seq"].as_i64().unwrap();
            assert_eq!(seq, after + 1, "no gap, no repeat");
            after = seq;
            apply(&mut state, event);
        }
        if page["has_more"] == false {
            assert_eq!(page["seq"], after);
            break;
        }
    }
    // The server's history, every page.
    let mut history = std::collections::BTreeMap::new();
    let mut before: Option<i64> = None;
    loop {
        let mut query = json!({"id": pk, "limit": 200});
        if let Some(id) = before {
            query["before"] = json!(id);
        }
        let page = away
            .ask(json!({"type": "get_messages", "data": query}))
            .await;
        let items = page["messages"].as_array().unwrap();
        for item in items {
            let reactions = item["reactions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["emoji"].as_str().unwrap().to_string(),
                        r["count"].as_u64().unwrap(),
                    )
                })
                .collect::<std::collections::BTreeMap<_, _>>();
            history.insert(item["id"].as_i64().unwrap(), (item.clone(), reactions));
        }
        before = items.first().and_then(|m| m["id"].as_i64());
        if page["has_more"] == false {
            break;
        }
    }
    assert_eq!(state.len(), history.len(), "the same messages");
    let total = known.borrow().len();
    assert!(total > ops_per_user, "{total} messages");
    for (id, shown) in &state {
        let (item, reactions) = &history[id];
        let counted: std::collections::BTreeMap<String, u64> = shown
            .reactions
            .iter()
            .map(|(emoji, users)| (emoji.clone(), users.len() as u64))
            .collect();
        assert_eq!(
            (
                shown.content.as_str(),
                shown.deleted,
                shown.edited_at.as_deref(),
                shown.reply_to,
                &counted
            ),
            (
                item["content"].as_str().unwrap(),
                item["deleted"].as_bool().unwrap(),
                item["edited_at"].as_str(),
                item["reply_to"].as_i64(),
                reactions
            ),
            "message {id} (seed {seed})"
        );
    }
}

#[actix_rt::test]
async fn random_changes_converge_on_one_instance() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    random_changes_converge(vec![app], 400).await;
}

#[actix_rt::test]
#[ignore = "needs TEST_POSTGRES_URL and TEST_REDIS_URL; run with --include-ignored"]
async fn random_changes_converge_on_two_instances() {
    let backend = Backend::postgres();
    let redis = common::require_redis_url();
    let db = common::TestDatabase::create(&backend).await;
    let apps = common::instances(&backend, &redis, &db, 2).await;
    random_changes_converge(apps, 700).await;
}

#[actix_rt::test]
#[ignore = "needs TEST_MYSQL_URL and TEST_REDIS_URL; run with --include-ignored"]
async fn random_changes_converge_on_two_instances_mysql() {
    let backend = Backend::mysql();
    let redis = common::require_redis_url();
    let db = common::TestDatabase::create(&backend).await;
    let apps = common::instances(&backend, &redis, &db, 2).await;
    random_changes_converge(apps, 700).await;
}
