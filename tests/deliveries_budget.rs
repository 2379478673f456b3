//! The deliveries budget (PROTOCOL.md C12): what one user's requests may
//! make the server push to others. Messages, REST changes, typing, read
//! receipts, member lists and contact lists all draw on one budget per
//! user, so flooding a big group runs out long before flooding a friend.

use crate::common;
use crate::groups::who_was_shown;

use actix_web::http::Method;
use common::{Backend, TestApp};
use entity::chat_member;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{json, Value};

/// The id of the registered user `username`.
async fn user_id(app: &TestApp, username: &str) -> i64 {
    entity::user::Entity::find()
        .filter(entity::user::Column::Username.eq(username))
        .one(&app.db)
        .await
        .ok()
        .flatten()
        .map(|u| u.id)
        .expect("registered")
}

/// A server whose fan-out budget is 10 a second (bursts of 20), and
/// Alice's group "crowd" of 21: her and twenty people (`member0`…) who
/// have written to her. The server, Alice's token, her session, the pk.
async fn crowd_on_a_small_budget() -> (TestApp, String, common::WsClient, Value) {
    group_on_a_small_budget(20).await
}

/// As `crowd_on_a_small_budget`, with `others` people besides Alice.
async fn group_on_a_small_budget(others: usize) -> (TestApp, String, common::WsClient, Value) {
    let app = TestApp::spawn_with(&Backend::Sqlite, &[("FANOUT_PER_SECOND", "10")]).await;
    let (alice, alice_token) = app.user("alice").await;
    let mut ids = Vec::new();
    for i in 0..others {
        ids.push(app.user(&format!("member{i}")).await.0);
    }
    common::have_written(&app.db, &ids, alice).await;
    let mut a = app.authorized(&alice_token).await;
    let group = a
        .ask(json!({"type": "create_group", "data": {"title": "crowd", "members": ids}}))
        .await;
    (app, alice_token, a, group["pk"].clone())
}

/// A message costs its sender one delivery per other member, against a
/// budget per user (FANOUT_PER_SECOND, bursts of twice as many): flooding a
/// big group runs out long before flooding a friend would.
#[actix_rt::test]
async fn messages_are_budgeted_by_their_deliveries() {
    let (app, _, mut a, pk) = crowd_on_a_small_budget().await;
    let mut b = app.authorized(&app.login("member0").await).await;
    // 20 deliveries each, a burst of 20: sent back to back, the first is
    // taken and the second refused (the budget refills 10 a second, so it
    // would need 2 s between them).
    for content in ["one", "two"] {
        a.send(json!({"type": "message", "data": {"to": pk, "content": content}}))
            .await;
    }
    // The refusal is immediate; the acknowledgement waits for the commit:
    // they come in either order.
    let mut answers = vec![
        a.recv_type("message_response").await["data"].clone(),
        a.recv_type("message_response").await["data"].clone(),
    ];
    answers.sort_by_key(|answer| answer["status"] == "success");
    let [refused, taken] = [&answers[0], &answers[1]];
    assert_eq!(taken["status"], "success", "{answers:?}");
    assert_eq!(refused["code"], "rate_limited", "{answers:?}");
    let text = refused["message"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("too many deliveries; try again in "),
        "{text}"
    );
    // Bob's budget is his own.
    let answer = b
        .ask(json!({"type": "message", "data": {"to": pk, "content": "hi"}}))
        .await;
    assert_eq!(answer["status"], "success", "{answer}");
}

/// Edits and reactions over REST draw on the same budget as a session's
/// messages: in a group of 21, each costs 20 deliveries.
#[actix_rt::test]
async fn rest_changes_are_budgeted_by_their_deliveries() {
    let (app, alice_token, _, pk) = crowd_on_a_small_budget().await;
    // Bob's message, on Bob's budget.
    let mut b = app.authorized(&app.login("member0").await).await;
    let sent = b
        .ask(json!({"type": "message", "data": {"to": pk, "content": "react to me"}}))
        .await;
    let reactions = format!("/api/messages/{}/reactions/", sent["id"]);
    // A burst of 20: the first reaction takes it, the second is refused.
    for (emoji, expected) in [("👍", 200), ("🎉", 429)] {
        let body = Some(json!({ "emoji": emoji }));
        let (status, answer) = app.rest(Method::POST, &reactions, &alice_token, body).await;
        assert_eq!(status, expected, "{emoji}: {answer}");
    }
}

/// A relayed typing notice costs its typist what a message costs (one
/// unit per other member): typing into big groups in turn reaches no more
/// people than messages could. Past the budget a notice is dropped, and the
/// conversation's relay it would have taken is left to another member.
#[actix_rt::test]
async fn typing_is_budgeted_like_messages() {
    let (app, _, mut a, pk) = crowd_on_a_small_budget().await;
    let mut observer = app.authorized(&app.login("member0").await).await;
    let mut one = app.authorized(&app.login("member1").await).await;
    let mut two = app.authorized(&app.login("member2").await).await;
    let typing = json!({"type": "typing", "data": {"id": pk}});
    // Member1's notice takes their burst of 20: their message right after
    // is refused.
    one.send(typing.clone()).await;
    let refused = one
        .ask(json!({"type": "message", "data": {"to": pk, "content": "after typing"}}))
        .await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    // Alice's message takes hers: her notice right after is dropped, and
    // the conversation's second relay of the second is left to member2.
    a.send(json!({"type": "message", "data": {"to": pk, "content": "spent"}}))
        .await;
    a.send(typing.clone()).await;
    assert_eq!(
        a.recv_type("message_response").await["data"]["status"],
        "success"
    );
    a.frames_before_pong().await;
    two.send(typing).await;
    two.frames_before_pong().await;
    let typists = who_was_shown(&app, &mut observer, &pk, "typing").await;
    let (one, two) = (
        user_id(&app, "member1").await,
        user_id(&app, "member2").await,
    );
    assert_eq!(typists, vec![json!(one), json!(two)]);
}

/// A read mark pushed to the others costs its reader what a message to
/// them costs: marking read a little further each time cannot make the
/// server push without end. Past the budget the mark is stored all the
/// same and reaches only the reader's own other sessions.
#[actix_rt::test]
async fn read_receipts_are_budgeted_like_messages() {
    let (app, alice_token, mut a, pk) = crowd_on_a_small_budget().await;
    let mut alice_elsewhere = app.authorized(&alice_token).await;
    let mut observer = app.authorized(&app.login("member0").await).await;
    let mut one = app.authorized(&app.login("member1").await).await;
    let mut two = app.authorized(&app.login("member2").await).await;
    let first = two
        .ask(json!({"type": "message", "data": {"to": pk, "content": "read me"}}))
        .await;
    let up_to = first["id"].clone();
    let read = json!({"type": "read", "data": {"id": pk, "up_to": up_to}});
    // Her typing notice takes her burst of 20 (a message would have moved
    // her mark past "read me"); her mark right after is stored, and told
    // only to her other session.
    a.send(json!({"type": "typing", "data": {"id": pk}})).await;
    assert_eq!(a.ask(read.clone()).await["status"], "success");
    let alice = user_id(&app, "alice").await;
    let own = json!({"type": "read", "data": {"pk": pk, "user_id": alice, "up_to": up_to}});
    assert_eq!(alice_elsewhere.recv_type("read").await, own);
    let chat = uuid::Uuid::parse_str(pk.as_str().unwrap()).unwrap();
    let stored = chat_member::Entity::find()
        .filter(chat_member::Column::ChatId.eq(chat))
        .filter(chat_member::Column::UserId.eq(alice))
        .one(&app.db)
        .await
        .unwrap()
        .and_then(|member| member.last_read_message_id);
    assert_eq!(json!(stored), up_to);
    // Member1's budget covers theirs: everyone is told.
    assert_eq!(one.ask(read).await["status"], "success");
    let readers = who_was_shown(&app, &mut observer, &pk, "read").await;
    assert_eq!(readers, vec![json!(user_id(&app, "member1").await)]);
}

/// A mark that moves nothing reaches nobody, and costs nothing: its share
/// of the budget, taken before it is stored, is given back.
#[actix_rt::test]
async fn read_marks_that_move_nothing_cost_nothing() {
    // A budget of 10 a second (bursts of 20), and a group of 11: a
    // message, or a mark pushed to the others, costs 10.
    let (app, _, mut a, pk) = group_on_a_small_budget(10).await;
    let first = a
        .ask(json!({"type": "message", "data": {"to": pk, "content": "read me"}}))
        .await;
    let read = json!({"type": "read", "data": {"id": pk, "up_to": first["id"]}});
    let mut one = app.authorized(&app.login("member1").await).await;
    // Marked once (pushed: 10 of 20), then again and again (nothing moves).
    for _ in 0..3 {
        assert_eq!(one.ask(read.clone()).await["status"], "success");
    }
    // Had the repeats been charged, nothing would be left for this within
    // the second (the budget refills 10 a second).
    let answer = one
        .ask(json!({"type": "message", "data": {"to": pk, "content": "and a reply"}}))
        .await;
    assert_eq!(answer["status"], "success", "{answer}");
}

/// A group's member list costs its reader what a message to the group
/// costs its sender (one unit per other member), taken before the list is
/// read: asking for a big group's members at the request rate cannot keep
/// the database busy for everyone else. The count-only contact item stays
/// free, and another member's budget is their own.
#[actix_rt::test]
async fn member_lists_are_budgeted_like_messages() {
    let (app, alice_token, mut a, pk) = crowd_on_a_small_budget().await;
    let ask = json!({"type": "get_contact", "data": {"id": pk}});
    // A burst of 20: the first list (20 other members) takes it whole.
    let first = a.ask(ask.clone()).await;
    assert_eq!(
        first["members"].as_array().map(Vec::len),
        Some(21),
        "{first}"
    );
    let refused = a.ask(ask.clone()).await;
    assert_eq!(refused["status"], "error", "{refused}");
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    let text = refused["message"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("too many member lists; try again in "),
        "{text}"
    );
    // The same budget over REST; the contact item, which only counts the
    // members, is not charged.
    let pk_text = pk.as_str().unwrap_or_default();
    for (path, expected) in [("groups", 429), ("contacts", 200)] {
        let path = format!("/api/{path}/{pk_text}/");
        let (status, body) = app.rest(Method::GET, &path, &alice_token, None).await;
        assert_eq!(status, expected, "{path}: {body}");
        if status == 200 {
            assert_eq!(body["members"], 21, "{body}");
        }
    }
    // Someone outside the group is told not_found each time, and pays
    // nothing for it (charged first, the second would be rate_limited).
    let (_, zed_token) = app.user("zed").await;
    let mut z = app.authorized(&zed_token).await;
    for _ in 0..2 {
        let answer = z.ask(ask.clone()).await;
        assert_eq!(answer["code"], "not_found", "{answer}");
        let path = format!("/api/groups/{pk_text}/");
        let (status, body) = app.rest(Method::GET, &path, &zed_token, None).await;
        assert_eq!(status, 404, "{body}");
    }
    // Bob's budget is his own: the same list is his to read.
    let mut b = app.authorized(&app.login("member0").await).await;
    let listed = b.ask(ask).await;
    assert_eq!(
        listed["members"].as_array().map(Vec::len),
        Some(21),
        "{listed}"
    );
}

/// A contact list costs one unit of the fan-out budget per conversation in
/// it, taken before it is read: someone in thousands of conversations
/// cannot have the server list them in a loop. Alice is in 21, over the
/// burst of 20, so one list takes all of it.
#[actix_rt::test]
async fn contact_lists_are_budgeted_by_their_length() {
    let (app, alice_token, mut a, _) = crowd_on_a_small_budget().await;
    let ask = json!({"type": "get_contacts", "data": {}});
    let first = a.ask(ask.clone()).await;
    assert_eq!(first.as_array().map(Vec::len), Some(21), "{first}");
    let refused = a.ask(ask.clone()).await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    let text = refused["message"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("too many contact lists; try again in "),
        "{text}"
    );
    let (status, body) = app
        .rest(Method::GET, "/api/contacts/", &alice_token, None)
        .await;
    assert_eq!(status, 429, "{body}");
    // Bob is in two (Alice's and the group): he lists his again and again.
    let bob_token = app.login("member0").await;
    let mut b = app.authorized(&bob_token).await;
    for _ in 0..5 {
        let list = b.ask(ask.clone()).await;
        assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    }
    let (status, body) = app
        .rest(Method::GET, "/api/groups/", &bob_token, None)
        .await;
    assert_eq!(status, 200, "{body}");
    // Without a session here, the count comes from the database.
    let alice = chat_server::chat::protocol::UserId(user_id(&app, "alice").await);
    let counted = chat_server::chat::store::conversation_count(&app.db, alice).await;
    assert_eq!(counted.ok(), Some(21));
}
