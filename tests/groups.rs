//! Group conversations (PROTOCOL.md B6) on one instance: the requests, the
//! `conversation` pushes, messages, history, read marks, typing and
//! presence in groups, every error, the old client's view of a group, the
//! REST endpoints, and concurrent changes.

use crate::common;

use actix_web::http::Method;
use chat_server::chat::messages::{ReadsStored, StoredRead};
use common::{Backend, TestApp};
use entity::{chat_member, message};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{json, Value};

fn member(id: i64, username: &str, role: &str, online: bool) -> Value {
    let mut name = username.to_string();
    name[..1].make_ascii_uppercase();
    json!({"user_id": id, "username": username, "name": format!("{name} Doe"),
           "role": role, "online": online})
}

/// A group with its members, as `get_contact` and the group requests'
/// answers carry it (without `unread`).
fn group(pk: &Value, name: &str, online: bool, members: Vec<Value>) -> Value {
    json!({"pk": pk, "name": name, "online": online, "user_id": null,
           "username": null, "last_message": null, "kind": "group", "members": members,
           "seq": 0})
}

/// The `conversation` push telling every member of `change` to the
/// conversation `item` (an answer): the member count instead of the list,
/// no `unread` (it is per member), no `invited` (it is the caller's).
fn pushed(item: &Value, change: Value) -> Value {
    let mut push = item.clone();
    let fields = push.as_object_mut().expect("an item is an object");
    // What only the caller's own item carries (C7, C17, C19).
    for own in ["unread", "invited", "muted", "read_up_to", "changes"] {
        fields.remove(own);
    }
    let count = item["members"].as_array().map_or(0, Vec::len);
    fields.insert("members".into(), json!(count));
    fields.insert("change".into(), change);
    json!({"type": "conversation", "data": push})
}

fn error(code: &str, message: &str) -> Value {
    json!({"status": "error", "code": code, "message": message})
}

/// The answer to a group request and the `conversation` push the caller
/// gets too, in either order (the push waits for the group's channel,
/// which the answer does not).
/// The answer's `changes` (C20) are left out: `a_groups_changes_are_kept_and_told`
/// checks them.
async fn answer_and_push(client: &mut common::WsClient) -> (Value, Value) {
    let (mut answer, push) = client.answer_and_push().await;
    if let Some(data) = answer["data"].as_object_mut() {
        data.remove("changes");
    }
    (answer, push)
}

async fn lifecycle(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice, alice_token) = app.user("alice").await;
    let (bob, bob_token) = app.user("bob").await;
    let (carol, carol_token) = app.user("carol").await;
    let (dave, dave_token) = app.user("dave").await;
    let mut a = app.authorized(&alice_token).await;
    let mut b = app.authorized(&bob_token).await;
    let mut c = app.authorized(&carol_token).await;
    let mut d = app.authorized(&dave_token).await;
    // Carol has written to alice, and dave to carol: added by them, they
    // join at once; bob has not, so alice can only invite him (C9).
    common::have_written(&app.db, &[carol], alice).await;
    common::have_written(&app.db, &[dave], carol).await;

    // Create: duplicates and the creator in `members` are ignored; the
    // title is trimmed.
    a.send(json!({"type": "create_group",
                  "data": {"title": "  Trip  ", "members": [bob, carol, bob, alice]}}))
        .await;
    let (created, push) = answer_and_push(&mut a).await;
    assert_eq!(push["type"], "conversation", "{}", backend.name());
    let pk = push["data"]["pk"].clone();
    let item = group(
        &pk,
        "Trip",
        true,
        vec![
            member(alice, "alice", "owner", true),
            member(carol, "carol", "member", true),
        ],
    );
    let created_push = pushed(&item, json!({"type": "created"}));
    assert_eq!(push, created_push);
    let mut answer = item.clone();
    answer["unread"] = json!(0);
    answer["invited"] = json!([bob]);
    assert_eq!(
        created,
        json!({"type": "create_group_response", "data": answer})
    );
    assert_eq!(c.recv().await, created_push);

    // Bob is invited, not added: he is not in the group until he accepts.
    let invitation = b.recv().await;
    assert_eq!(
        invitation,
        json!({"type": "invitation", "data": {
            "pk": pk, "name": "Trip", "members": 2,
            "invited_by": {"user_id": alice, "username": "alice", "name": "Alice Doe"},
            "time": invitation["data"]["time"]}})
    );
    assert_eq!(
        b.ask(json!({"type": "get_invitations", "data": {}})).await,
        json!([invitation["data"]])
    );
    assert_eq!(
        b.ask(json!({"type": "get_messages", "data": {"id": pk}}))
            .await,
        error("not_found", "conversation not found")
    );
    let members = vec![
        member(alice, "alice", "owner", true),
        member(carol, "carol", "member", true),
        member(bob, "bob", "member", true),
    ];
    let item = group(&pk, "Trip", true, members);
    let mut answer = item.clone();
    answer["unread"] = json!(0);
    b.send(json!({"type": "accept_invitation", "data": {"id": pk}}))
        .await;
    let (accepted, push) = answer_and_push(&mut b).await;
    assert_eq!(
        accepted,
        json!({"type": "accept_invitation_response", "data": answer})
    );
    let joined = pushed(
        &item,
        json!({"type": "members_added", "user_ids": [bob], "by": bob}),
    );
    assert_eq!(push, joined);
    for client in [&mut a, &mut c] {
        assert_eq!(client.recv_type("conversation").await, joined);
    }
    assert_eq!(
        b.ask(json!({"type": "get_invitations", "data": {}})).await,
        json!([])
    );
    assert_eq!(
        b.ask(json!({"type": "accept_invitation", "data": {"id": pk}}))
            .await,
        error("not_found", "conversation not found")
    );
    d.nothing_before_pong().await;

    // The old client sees the group as one more contact (`pk`, `name` =
    // title, `online`) and chats in it with `message {to: pk}`.
    assert_eq!(
        b.request(json!({"type": "get_contacts", "data": {}})).await,
        json!({"type": "get_contacts_response", "data": [{
            "pk": pk, "name": "Trip", "online": true, "user_id": null, "username": null,
            "last_message": null, "unread": 0, "kind": "group", "members": 3, "seq": 0}]})
    );
    b.send(json!({"type": "message", "data": {"to": pk, "content": "hi all"}}))
        .await;
    let ack = b.recv().await;
    let own = b.recv().await;
    assert_eq!(ack["type"], "message_response");
    let (id, time) = (ack["data"]["id"].clone(), ack["data"]["time"].clone());
    assert_eq!(
        own,
        json!({"type": "message", "data": {"pk": pk, "seq": 1, "data": {
            "direction": "send", "content": "hi all", "time": time, "id": id, "sender": bob}}})
    );
    let received = json!({"type": "message", "data": {"pk": pk, "seq": 1, "data": {
        "direction": "received", "content": "hi all", "time": time, "id": id, "sender": bob}}});
    assert_eq!(a.recv().await, received);
    assert_eq!(c.recv().await, received);
    d.nothing_before_pong().await;

    // History and unread counts are per member.
    let page = c
        .ask(json!({"type": "get_messages", "data": {"id": pk}}))
        .await;
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["messages"][0]["direction"], "received");
    let unread = |contacts: &Value| {
        let list = contacts.as_array().expect("a contact list");
        let item = list.iter().find(|c| c["pk"] == pk).expect("the group");
        item["unread"].clone()
    };
    assert_eq!(
        unread(&c.ask(json!({"type": "get_contacts", "data": {}})).await),
        1
    );
    assert_eq!(
        unread(&b.ask(json!({"type": "get_contacts", "data": {}})).await),
        0
    );
    let read = a
        .ask(json!({"type": "read", "data": {"id": pk, "up_to": id}}))
        .await;
    assert_eq!(read, json!({"status": "success", "pk": pk, "up_to": id}));
    let read_event = json!({"type": "read", "data": {"pk": pk, "user_id": alice, "up_to": id}});
    assert_eq!(b.recv().await, read_event);
    assert_eq!(c.recv().await, read_event);
    assert_eq!(
        unread(&a.ask(json!({"type": "get_contacts", "data": {}})).await),
        0
    );
    assert_eq!(
        unread(&c.ask(json!({"type": "get_contacts", "data": {}})).await),
        1
    );

    // Typing reaches the others, not the typist.
    c.send(json!({"type": "typing", "data": {"id": pk}})).await;
    let typing = json!({"type": "typing", "data": {"pk": pk, "user_id": carol}});
    assert_eq!(a.recv().await, typing);
    assert_eq!(b.recv().await, typing);
    c.nothing_before_pong().await;

    // Any member renames.
    let renamed = b
        .ask_change(json!({"type": "rename_group", "data": {"id": pk, "title": "Trip 2026"}}))
        .await;
    assert_eq!(renamed["name"], "Trip 2026");
    // Every member is told the new title, never the member list.
    let renamed_push = pushed(&renamed, json!({"type": "renamed", "by": bob}));
    assert_eq!(renamed_push["data"]["members"], 3);
    for client in [&mut a, &mut c] {
        assert_eq!(client.recv_type("conversation").await, renamed_push);
    }

    // Any member adds; the new member sees the whole history, unread.
    let added = c
        .ask(json!({"type": "add_members", "data": {"id": pk, "members": [dave, bob]}}))
        .await;
    assert_eq!(added["members"].as_array().map(Vec::len), Some(4));
    assert_eq!(added["members"][3], member(dave, "dave", "member", true));
    assert_eq!(added["invited"], json!([]), "dave has written to carol");
    // Who joined, by id (bob was in already); the list is `get_contact`'s.
    let added_push = pushed(
        &added,
        json!({"type": "members_added", "user_ids": [dave], "by": carol}),
    );
    for client in [&mut a, &mut b] {
        assert_eq!(client.recv_type("conversation").await, added_push);
    }
    assert_eq!(d.recv().await, added_push);
    let history = d
        .ask(json!({"type": "get_messages", "data": {"id": pk}}))
        .await;
    assert_eq!(history["messages"][0]["content"], "hi all");
    assert_eq!(
        unread(&d.ask(json!({"type": "get_contacts", "data": {}})).await),
        1
    );
    let full = d
        .ask(json!({"type": "get_contact", "data": {"id": pk}}))
        .await;
    assert_eq!(full["members"][0], member(alice, "alice", "owner", true));
    assert_eq!(full["unread"], 1);

    // Only the owner removes others.
    assert_eq!(
        b.ask(json!({"type": "remove_member", "data": {"id": pk, "user_id": dave}}))
            .await,
        error("invalid", "only the group's owner can remove other members")
    );
    let after = a
        .ask(json!({"type": "remove_member", "data": {"id": pk, "user_id": dave}}))
        .await;
    assert_eq!(after["members"].as_array().map(Vec::len), Some(3));
    let removed_change =
        json!({"type": "member_removed", "user_id": dave, "owner_id": alice, "by": alice});
    let mut removed = pushed(&after, removed_change.clone());
    removed["data"]["removed"] = json!(true);
    assert_eq!(d.recv().await, removed);
    for (request, kind) in [
        (
            json!({"type": "message", "data": {"to": pk, "content": "still here?"}}),
            "message_response",
        ),
        (
            json!({"type": "get_messages", "data": {"id": pk}}),
            "get_messages_response",
        ),
        (
            json!({"type": "get_contact", "data": {"id": pk}}),
            "get_contact_response",
        ),
    ] {
        assert_eq!(
            d.request(request).await,
            json!({"type": kind, "data": error("not_found", "conversation not found")})
        );
    }
    assert_eq!(
        b.recv_type("conversation").await,
        pushed(&after, removed_change)
    );
    c.send(json!({"type": "message", "data": {"to": pk, "content": "without dave"}}))
        .await;
    c.recv_type("message_response").await;
    b.recv_type("message").await;
    d.nothing_before_pong().await;

    // The owner leaves: the longest-standing member (carol) owns the group.
    let left = a
        .ask(json!({"type": "remove_member", "data": {"id": pk, "user_id": alice}}))
        .await;
    assert_eq!(left["removed"], true);
    assert_eq!(
        left["members"],
        json!([
            member(carol, "carol", "owner", true),
            member(bob, "bob", "member", true)
        ])
    );
    let mut still_in = left.clone();
    still_in.as_object_mut().map(|o| o.remove("removed"));
    assert_eq!(
        b.recv_type("conversation").await,
        pushed(
            &still_in,
            json!({"type": "member_removed", "user_id": alice, "owner_id": carol, "by": alice})
        )
    );
    assert_eq!(
        a.ask(json!({"type": "typing", "data": {"id": pk}})).await,
        error("not_found", "conversation not found")
    );
    // Carol, now the owner, may remove bob.
    let alone = c
        .ask(json!({"type": "remove_member", "data": {"id": pk, "user_id": bob}}))
        .await;
    assert_eq!(
        alone["members"],
        json!([member(carol, "carol", "owner", true)])
    );
    // The last member leaves: the group and its history stay.
    c.ask(json!({"type": "remove_member", "data": {"id": pk, "user_id": carol}}))
        .await;
    let uuid = uuid::Uuid::parse_str(pk.as_str().unwrap()).unwrap();
    assert!(entity::chat::Entity::find_by_id(uuid)
        .one(&app.db)
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        entity::message::Entity::find()
            .filter(entity::message::Column::ChatId.eq(uuid))
            .count(&app.db)
            .await
            .unwrap(),
        2
    );
}

backend_tests!(a_group_from_creation_to_its_last_member_leaving => lifecycle);

async fn errors(backend: &Backend) {
    let app = TestApp::spawn_with(backend, &[("MAX_GROUP_MEMBERS", "3")]).await;
    let (alice, alice_token) = app.user("alice").await;
    let (bob, _) = app.user("bob").await;
    let (carol, _) = app.user("carol").await;
    let (dave, _) = app.user("dave").await;
    let (erin, erin_token) = app.user("erin").await;
    entity::user::Entity::update_many()
        .col_expr(
            entity::user::Column::IsActive,
            sea_orm::sea_query::Expr::value(false),
        )
        .filter(entity::user::Column::Id.eq(erin))
        .exec(&app.db)
        .await
        .unwrap();
    let mut a = app.authorized(&alice_token).await;

    // Before authorization.
    let mut anonymous = app.ws("/chat").await;
    anonymous.recv().await;
    assert_eq!(
        anonymous
            .ask(json!({"type": "create_group", "data": {"title": "x"}}))
            .await["code"],
        "unauthorized"
    );

    let cases = [
        (
            json!({"title": "   "}),
            error("invalid", "title must not be empty"),
        ),
        (
            json!({"title": "x".repeat(101)}),
            error("invalid", "title is longer than 100 characters"),
        ),
        (
            json!({"title": "a\u{0007}b"}),
            error("invalid", "title must not contain control characters"),
        ),
        (
            json!({"members": [bob]}),
            error("invalid", "missing field `title`"),
        ),
        (
            json!({"title": "t", "members": [bob, "carol"]}),
            error("invalid", "invalid type: string \"carol\", expected i64"),
        ),
        (
            json!({"title": "t", "members": [bob, 999999]}),
            error("invalid", "no active user with id 999999"),
        ),
        (
            json!({"title": "t", "members": [erin]}),
            error("invalid", &format!("no active user with id {erin}")),
        ),
        (
            json!({"title": "t", "members": [bob, carol, dave]}),
            error("invalid", "a group has at most 3 members"),
        ),
    ];
    for (data, expected) in cases {
        assert_eq!(
            a.ask(json!({"type": "create_group", "data": data})).await,
            expected,
            "{} {data}",
            backend.name()
        );
    }
    assert_eq!(
        entity::chat::Entity::find().count(&app.db).await.unwrap(),
        0,
        "nothing was created"
    );

    // Erin (inactive) cannot even authorize; the group fills up to 3.
    drop(erin_token);
    common::have_written(&app.db, &[bob, carol, dave], alice).await;
    let group = a
        .ask(json!({"type": "create_group", "data": {"title": "t", "members": [bob, carol]}}))
        .await;
    let pk = group["pk"].clone();
    assert_eq!(
        a.ask(json!({"type": "add_members", "data": {"id": pk, "members": [dave]}}))
            .await,
        error("invalid", "a group has at most 3 members")
    );
    // More people than a group holds are refused before anyone is looked
    // up (here, before the unknown id is).
    assert_eq!(
        a.ask(json!({"type": "add_members", "data": {"id": pk, "members": [bob, carol, dave, 999998]}}))
            .await,
        error("invalid", "a group has at most 3 members")
    );
    // Adding people already in it changes nothing and is no error.
    let same = a
        .ask(json!({"type": "add_members", "data": {"id": pk, "members": [bob, alice]}}))
        .await;
    assert_eq!(same["members"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        a.ask(json!({"type": "remove_member", "data": {"id": pk, "user_id": dave}}))
            .await,
        error(
            "invalid",
            &format!("user {dave} is not a member of this group")
        )
    );
    assert_eq!(
        a.ask(json!({"type": "add_members", "data": {"id": pk}}))
            .await,
        error("invalid", "missing field `members`")
    );
    assert_eq!(
        a.ask(json!({"type": "remove_member", "data": {"id": pk, "user_id": "bob"}}))
            .await["code"],
        "invalid"
    );

    // Unknown, malformed, and someone else's conversations look the same.
    let unknown = uuid::Uuid::new_v4().to_string();
    let (_, _, direct) = {
        let (f, _) = app.user("frank").await;
        let (chat, _) = chat_server::accounts::direct_chat(&app.db, bob, f)
            .await
            .unwrap();
        (bob, f, chat.id.to_string())
    };
    for id in [json!(unknown), json!("not-a-uuid"), json!(direct)] {
        for request in [
            json!({"type": "rename_group", "data": {"id": id, "title": "x"}}),
            json!({"type": "add_members", "data": {"id": id, "members": [bob]}}),
            json!({"type": "remove_member", "data": {"id": id, "user_id": bob}}),
        ] {
            assert_eq!(
                a.ask(request.clone()).await,
                error("not_found", "conversation not found"),
                "{request}"
            );
        }
    }
    // A direct conversation of one's own has no members to change.
    let (_, _, mine) = {
        let (chat, _) = chat_server::accounts::direct_chat(&app.db, alice, bob)
            .await
            .unwrap();
        (alice, bob, chat.id.to_string())
    };
    let direct_error = error(
        "invalid",
        "a direct conversation has no members to change or title to set",
    );
    for request in [
        json!({"type": "rename_group", "data": {"id": mine, "title": "x"}}),
        json!({"type": "add_members", "data": {"id": mine, "members": [carol]}}),
        json!({"type": "remove_member", "data": {"id": mine, "user_id": bob}}),
    ] {
        assert_eq!(a.ask(request).await, direct_error);
    }
}

backend_tests!(every_group_error_is_answered => errors);

/// A change in a 1,000-member group pushes a few hundred bytes to each
/// member, never the member list (~94 KB here): renaming in a loop is no
/// amplifier.
#[actix_rt::test]
async fn a_change_in_a_big_group_pushes_no_member_list() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    let (alice, alice_token) = app.user("alice").await;
    let (bob, bob_token) = app.user("bob").await;
    let mut members = common::insert_users(&app.db, "member", 998).await;
    members.push(bob);
    common::have_written(&app.db, &members, alice).await;
    let mut a = app.authorized(&alice_token).await;
    let mut b = app.authorized(&bob_token).await;
    let created = a
        .ask(json!({"type": "create_group", "data": {"title": "Everyone", "members": members}}))
        .await;
    assert_eq!(created["members"].as_array().map(Vec::len), Some(1000));
    let pk = created["pk"].clone();
    assert_eq!(b.recv_type("conversation").await["data"]["members"], 1000);
    a.ask(json!({"type": "rename_group", "data": {"id": pk, "title": "All"}}))
        .await;
    let push = b.recv_type("conversation").await;
    assert_eq!(
        push["data"]["change"],
        json!({"type": "renamed", "by": alice})
    );
    let bytes = serde_json::to_vec(&push).unwrap().len();
    assert!(bytes < 400, "a rename push of {bytes} bytes: {push}");
}

/// A group as large as the settings allow is made whole, although its rows
/// are more than one statement's values can carry (SQLite: 32,766; six a
/// member, five an invitation): the inserts go in parts.
#[actix_rt::test]
async fn a_group_larger_than_one_statement_carries_is_made_whole() {
    const JOINING: usize = 5_500;
    const INVITED: usize = 6_600;
    let app = TestApp::spawn_with(&Backend::Sqlite, &[("MAX_GROUP_MEMBERS", "7000")]).await;
    let (alice, alice_token) = app.user("alice").await;
    let joining = common::insert_users(&app.db, "joining", JOINING).await;
    common::have_written(&app.db, &joining, alice).await;
    let invited = common::insert_users(&app.db, "invited", INVITED).await;
    let mut a = app.authorized(&alice_token).await;
    // Those who have written to alice join (C9)...
    let created = a
        .ask(json!({"type": "create_group", "data": {"title": "Everyone", "members": joining}}))
        .await;
    assert_eq!(
        created["members"].as_array().map(Vec::len),
        Some(JOINING + 1),
        "{}",
        created["message"]
    );
    // ...and everyone else is invited.
    let added = a
        .ask(json!({"type": "add_members", "data": {"id": created["pk"], "members": invited}}))
        .await;
    assert_eq!(added["invited"], json!(invited), "{}", added["message"]);
    assert_eq!(
        entity::invitation::Entity::find()
            .count(&app.db)
            .await
            .unwrap(),
        INVITED as u64
    );
}

/// Alice's group with bob, carol and dave (who have written to her): the
/// server, her session, the three others' sessions (each past the
/// group's `conversation` push), the pk.
async fn alice_and_three_typists() -> (TestApp, common::WsClient, Vec<common::WsClient>, Value) {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    let (alice, alice_token) = app.user("alice").await;
    let mut typists = Vec::new();
    let mut ids = Vec::new();
    for name in ["bob", "carol", "dave"] {
        let (id, token) = app.user(name).await;
        ids.push(id);
        typists.push(app.authorized(&token).await);
    }
    common::have_written(&app.db, &ids, alice).await;
    let mut a = app.authorized(&alice_token).await;
    // Her own push read too: the callers want every frame after it.
    let group = a
        .ask_change(json!({"type": "create_group", "data": {"title": "g", "members": ids}}))
        .await;
    for typist in &mut typists {
        typist.recv_type("conversation").await;
    }
    (app, a, typists, group["pk"].clone())
}

/// The frames `reader` gets up to the `message` "done" (which they end
/// with), whose sender sent it after everything being tested.
async fn frames_until_done(reader: &mut common::WsClient) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = reader.recv().await;
        let done = frame["type"] == "message" && frame["data"]["data"]["content"] == "done";
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

/// Whose `kind` pushes (`typing`, `read`) `observer` got, in order, up to
/// the message "done" that member3 (who sends nothing else) sends to `pk`
/// now: every such push sent before it stands before it.
pub(crate) async fn who_was_shown(
    app: &TestApp,
    observer: &mut common::WsClient,
    pk: &Value,
    kind: &str,
) -> Vec<Value> {
    let mut three = app.authorized(&app.login("member3").await).await;
    three
        .send(json!({"type": "message", "data": {"to": pk, "content": "done"}}))
        .await;
    frames_until_done(observer)
        .await
        .into_iter()
        .filter(|frame| frame["type"] == kind)
        .map(|frame| frame["data"]["user_id"].clone())
        .collect()
}

/// However many members type, a member gets at most two typing notices a
/// second per conversation.
#[actix_rt::test]
async fn typing_in_a_group_is_coalesced() {
    let (_app, mut a, mut typists, pk) = alice_and_three_typists().await;
    // 30 notices from three people, sent as fast as the sockets take them.
    for _ in 0..10 {
        for typist in &mut typists {
            typist
                .send(json!({"type": "typing", "data": {"id": pk}}))
                .await;
        }
    }
    typists[0]
        .send(json!({"type": "message", "data": {"to": pk, "content": "done"}}))
        .await;
    let frames = frames_until_done(&mut a).await;
    let relayed = frames.len() - 1;
    for frame in &frames[..relayed] {
        assert_eq!(frame["type"], "typing", "{frame}");
    }
    // 2 at once, then 2 a second: sending 30 small frames would have to
    // take over 4 s for more than 10 to pass.
    assert!(
        (1..=10).contains(&relayed),
        "{relayed} typing notices relayed"
    );
}

/// One member typing without pause is relayed once a second, so the
/// conversation's two relays a second are not all theirs: another
/// member's notice right after is shown.
#[actix_rt::test]
async fn one_typist_cannot_take_the_conversations_turn() {
    let (_app, mut a, mut typists, pk) = alice_and_three_typists().await;
    let typing = json!({"type": "typing", "data": {"id": pk}});
    for _ in 0..5 {
        typists[0].send(typing.clone()).await;
    }
    // Bob's five are handled before his pong, and carol's after it.
    assert_eq!(typists[0].frames_before_pong().await, Vec::<Value>::new());
    typists[1].send(typing).await;
    typists[1]
        .send(json!({"type": "message", "data": {"to": pk, "content": "done"}}))
        .await;
    let frames = frames_until_done(&mut a).await;
    let shown: Vec<&Value> = frames[..frames.len() - 1]
        .iter()
        .map(|frame| {
            assert_eq!(frame["type"], "typing", "{frame}");
            &frame["data"]["user_id"]
        })
        .collect();
    // Bob's first, then carol's (bob's second would need a second to pass
    // between two of his frames, and would come before hers).
    assert!(shown.len() >= 2, "{frames:?}");
    assert_ne!(
        shown[0],
        shown[shown.len() - 1],
        "carol's was dropped: {frames:?}"
    );
}

/// Group changes have their own budget per user, counted over all the
/// user's sockets and REST alike; leaving is never refused.
#[actix_rt::test]
async fn group_changes_have_a_budget_per_user_over_every_socket() {
    let app = TestApp::spawn_with(&Backend::Sqlite, &[("GROUP_CHANGES_PER_MINUTE", "3")]).await;
    let (_, token) = app.user("alice").await;
    let (bob, _) = app.user("bob").await;
    let mut first = app.authorized(&token).await;
    let mut second = app.authorized(&token).await;
    let group = first
        .ask(json!({"type": "create_group", "data": {"title": "g", "members": [bob]}}))
        .await;
    let pk = group["pk"].clone();
    for (client, title) in [(&mut second, "one"), (&mut first, "two")] {
        let renamed = client
            .ask(json!({"type": "rename_group", "data": {"id": pk, "title": title}}))
            .await;
        assert_eq!(renamed["name"], title);
    }
    // The fourth change, from either socket or REST, is over the budget.
    let refused = second
        .ask(json!({"type": "rename_group", "data": {"id": pk, "title": "three"}}))
        .await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("too many group changes; try again in "),
        "{message}"
    );
    let path = format!("/api/groups/{}/", pk.as_str().unwrap());
    let (status, body) = app
        .rest(Method::PATCH, &path, &token, Some(json!({"title": "rest"})))
        .await;
    assert_eq!(status, 429, "{body}");
    let refused = first
        .ask(json!({"type": "create_group", "data": {"title": "another"}}))
        .await;
    assert_eq!(refused["code"], "rate_limited");
    // Nothing changed meanwhile, and alice can still leave.
    let left = first
        .ask(json!({"type": "remove_member", "data": {"id": pk, "user_id": group["members"][0]["user_id"]}}))
        .await;
    assert_eq!(
        (left["removed"].clone(), left["name"].clone()),
        (json!(true), json!("two"))
    );
}

/// A group takes so many changes a minute from all its members together;
/// its owner can still remove members and anyone can still leave.
#[actix_rt::test]
async fn a_group_has_a_change_budget_of_its_own() {
    let app = TestApp::spawn_with(
        &Backend::Sqlite,
        &[("GROUP_CHANGES_PER_MINUTE_PER_GROUP", "2")],
    )
    .await;
    let (alice, alice_token) = app.user("alice").await;
    let (bob, bob_token) = app.user("bob").await;
    let (carol, carol_token) = app.user("carol").await;
    let (dave, _) = app.user("dave").await;
    common::have_written(&app.db, &[bob, carol], alice).await;
    common::have_written(&app.db, &[dave], carol).await;
    let mut a = app.authorized(&alice_token).await;
    let mut b = app.authorized(&bob_token).await;
    let mut c = app.authorized(&carol_token).await;
    let group = a
        .ask(json!({"type": "create_group", "data": {"title": "g", "members": [bob, carol]}}))
        .await;
    let pk = group["pk"].clone();
    b.ask(json!({"type": "rename_group", "data": {"id": pk, "title": "by bob"}}))
        .await;
    c.ask(json!({"type": "add_members", "data": {"id": pk, "members": [dave]}}))
        .await;
    for (client, request) in [
        (
            &mut a,
            json!({"type": "rename_group", "data": {"id": pk, "title": "by alice"}}),
        ),
        (
            &mut b,
            json!({"type": "add_members", "data": {"id": pk, "members": [dave]}}),
        ),
    ] {
        assert_eq!(client.ask(request).await["code"], "rate_limited");
    }
    // Another group is not affected.
    let other = b
        .ask(json!({"type": "create_group", "data": {"title": "other", "members": [carol]}}))
        .await;
    let renamed = b
        .ask(json!({"type": "rename_group", "data": {"id": other["pk"], "title": "fine"}}))
        .await;
    assert_eq!(renamed["name"], "fine");
    // The owner removes, a member leaves: neither is refused.
    let after = a
        .ask(json!({"type": "remove_member", "data": {"id": pk, "user_id": dave}}))
        .await;
    assert_eq!(
        after["members"].as_array().map(Vec::len),
        Some(3),
        "{after}"
    );
    let left = c
        .ask(json!({"type": "remove_member", "data": {"id": pk, "user_id": carol}}))
        .await;
    assert_eq!(left["removed"], true, "{left}");
    assert_eq!(
        a.ask(json!({"type": "get_contact", "data": {"id": pk}}))
            .await["members"]
            .as_array()
            .map(|m| m.iter().map(|m| m["user_id"].clone()).collect::<Vec<_>>()),
        Some(vec![json!(alice), json!(bob)])
    );
}

/// Group requests count against the session's rate limit like any other.
#[actix_rt::test]
async fn group_requests_are_rate_limited() {
    let app = TestApp::spawn_with(
        &Backend::Sqlite,
        &[("RATE_LIMIT_PER_SECOND", "1"), ("RATE_LIMIT_BURST", "2")],
    )
    .await;
    let (_, token) = app.user("alice").await;
    let mut a = app.authorized(&token).await;
    let mut codes = Vec::new();
    for i in 0..4 {
        let answer = a
            .ask(json!({"type": "create_group", "data": {"title": format!("g{i}")}}))
            .await;
        codes.push(answer["code"].as_str().unwrap_or("ok").to_string());
    }
    assert_eq!(
        codes,
        ["ok", "rate_limited", "rate_limited", "rate_limited"]
    );
}

async fn presence_in_groups(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice, alice_token) = app.user("alice").await;
    let (bob, bob_token) = app.user("bob").await;
    // 99 more members: a group of 101, above the presence limit of 100.
    let crowd = common::insert_users(&app.db, "crowd", 99).await;
    common::have_written(&app.db, &crowd, alice).await;
    let mut a = app.authorized(&alice_token).await;
    let small = a
        .ask(json!({"type": "create_group", "data": {"title": "small", "members": [bob]}}))
        .await;
    let mut everyone = crowd.clone();
    everyone.push(bob);
    let large = a
        .ask(json!({"type": "create_group", "data": {"title": "large", "members": everyone}}))
        .await;
    // Bob, invited to both (he never wrote to alice), accepts.
    for group in [&small, &large] {
        let accept = format!("/api/invitations/{}/accept/", group["pk"].as_str().unwrap());
        assert_eq!(
            app.rest(Method::POST, &accept, &bob_token, None).await.0,
            200
        );
    }
    let large = a
        .ask(json!({"type": "get_contact", "data": {"id": large["pk"]}}))
        .await;
    assert_eq!(large["members"].as_array().map(Vec::len), Some(101));
    let mut b = app.authorized(&bob_token).await;
    assert_eq!(
        a.recv_type("presence").await,
        json!({"type": "presence", "data": {"pk": small["pk"], "user_id": bob, "online": true}}),
        "{}",
        backend.name()
    );
    a.nothing_before_pong().await;
    // The large group tells it on demand.
    let seen = a
        .ask(json!({"type": "get_contact", "data": {"id": large["pk"]}}))
        .await;
    assert_eq!(seen["online"], true);
    let bob_there = seen["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user_id"] == bob)
        .cloned();
    assert_eq!(bob_there.map(|m| m["online"].clone()), Some(json!(true)));
    // Bob's view of the large group: alice is online.
    let from_bob = b.ask(json!({"type": "get_contacts", "data": {}})).await;
    let large_for_bob = from_bob
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["pk"] == large["pk"])
        .cloned()
        .unwrap();
    assert_eq!(large_for_bob["online"], true);
    assert_eq!(large_for_bob["members"], 101);
    assert!(seen["members"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["user_id"] == alice && m["role"] == "owner"));
}

backend_tests!(presence_is_pushed_in_groups_of_at_most_100 => presence_in_groups);

/// The next `read` or `message` frame of `client` (skipping the rest).
async fn next_read_or_message(client: &mut common::WsClient) -> Value {
    loop {
        let frame = client.recv().await;
        if frame["type"] == "read" || frame["type"] == "message" {
            return frame;
        }
    }
}

/// Read marks (C7): pushed to the other members in a group of at most 100,
/// only to the reader's other sessions in a larger one; a mark that does
/// not move pushes nothing. The batch writer stores each.
async fn read_marks_in_groups(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice, alice_token) = app.user("alice").await;
    let (bob, bob_token) = app.user("bob").await;
    let mut crowd = common::insert_users(&app.db, "crowd", 99).await;
    crowd.push(bob);
    // They have all written to alice: she adds them at once (C9).
    common::have_written(&app.db, &crowd, alice).await;
    let mut a = app.authorized(&alice_token).await;
    let small = a
        .ask_change(json!({"type": "create_group", "data": {"title": "small", "members": [bob]}}))
        .await["pk"]
        .clone();
    let large = a
        .ask_change(json!({"type": "create_group", "data": {"title": "large", "members": crowd}}))
        .await["pk"]
        .clone();
    let mut b = app.authorized(&bob_token).await;
    let mut b2 = app.authorized(&bob_token).await;
    let mut last = Vec::new();
    for pk in [&small, &large] {
        let sent = a
            .ask(json!({"type": "message", "data": {"to": pk, "content": "read me"}}))
            .await;
        last.push(sent["id"].clone());
    }
    let read =
        |pk: &Value, up_to: &Value| json!({"type": "read", "data": {"id": pk, "up_to": up_to}});
    let pushed = |pk: &Value, up_to: &Value| json!({"type": "read", "data": {"pk": pk, "user_id": bob, "up_to": up_to}});

    // The small group: alice and bob's other session hear it.
    assert_eq!(b.ask(read(&small, &last[0])).await["status"], "success");
    assert_eq!(a.recv_type("read").await, pushed(&small, &last[0]));
    assert_eq!(b2.recv_type("read").await, pushed(&small, &last[0]));
    // The same mark again: answered, pushed to nobody (the next of the two
    // kinds alice sees is her next message, which went out after it).
    assert_eq!(b.ask(read(&small, &last[0])).await["status"], "success");
    a.ask(json!({"type": "message", "data": {"to": small, "content": "after"}}))
        .await;
    assert_eq!(next_read_or_message(&mut a).await["type"], "message");
    assert_eq!(next_read_or_message(&mut b2).await["type"], "message");

    // The large group: bob's other session hears it; alice does not.
    assert_eq!(b.ask(read(&large, &last[1])).await["status"], "success");
    assert_eq!(b2.recv_type("read").await, pushed(&large, &last[1]));
    a.nothing_before_pong().await;
    // Alice learns it on demand (C19).
    let seen = a
        .ask(json!({"type": "get_contact", "data": {"id": large}}))
        .await;
    assert_eq!(seen["read_up_to"], last[1], "{}", backend.name());
    // Both marks are stored.
    let marks: Vec<Option<i64>> = chat_member::Entity::find()
        .filter(chat_member::Column::UserId.eq(bob))
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.last_read_message_id.is_some())
        .map(|m| m.last_read_message_id)
        .collect();
    let mut expected: Vec<Option<i64>> = last.iter().map(Value::as_i64).collect();
    let mut marks = marks;
    marks.sort();
    expected.sort();
    assert_eq!(marks, expected);
}

backend_tests!(read_marks_reach_everyone_only_in_groups_of_at_most_100 => read_marks_in_groups);

/// Several readers' marks at once (stored together or in turn, as they
/// come): each reaches every member's sessions once, the reader's other
/// session too, and never the session that asked it.
async fn read_marks_together(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let ([(alice, _), (bob, bob_token), (carol, carol_token)], mut a, pk) = app.trio().await;
    let mut b1 = app.authorized(&bob_token).await;
    let mut b2 = app.authorized(&bob_token).await;
    let mut c = app.authorized(&carol_token).await;
    let id = a
        .ask(json!({"type": "message", "data": {"to": pk, "content": "read me"}}))
        .await["id"]
        .clone();
    for ws in [&mut a, &mut b1, &mut c] {
        ws.send(json!({"type": "read", "data": {"id": pk, "up_to": id}}))
            .await;
    }
    let heard = [
        (&mut a, vec![bob, carol], true),
        (&mut b1, vec![alice, carol], true),
        (&mut b2, vec![alice, bob, carol], false),
        (&mut c, vec![alice, bob], true),
    ];
    for (ws, readers, marked) in heard {
        ws.expect_reads(&pk, &id, &readers, marked).await;
    }
    // Every push has been seen: nothing more stands before the pong (an
    // asker's own mark would have reached it with its other session's).
    for ws in [&mut a, &mut b1, &mut b2, &mut c] {
        ws.nothing_before_pong().await;
    }
}

backend_tests!(read_marks_reach_each_session_once => read_marks_together);

/// Many read marks at once, from many sessions: each answered once it is
/// stored, in batches (`read_marks.rs`), the furthest of each reader kept.
async fn concurrent_read_marks(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice, alice_token) = app.user("alice").await;
    let mut readers = Vec::new();
    let mut tokens = Vec::new();
    for i in 0..10 {
        let (id, token) = app.user(&format!("reader{i}")).await;
        readers.push(id);
        tokens.push(token);
    }
    common::have_written(&app.db, &readers, alice).await;
    let mut a = app.authorized(&alice_token).await;
    let pk = a
        .ask_change(json!({"type": "create_group", "data": {"title": "many", "members": readers}}))
        .await["pk"]
        .clone();
    let mut ids = Vec::new();
    for i in 0..3 {
        let sent = a
            .ask(json!({"type": "message", "data": {"to": pk, "content": format!("m{i}")}}))
            .await;
        ids.push(sent["id"].as_i64().unwrap());
    }
    let mut sessions = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let mut ws = app.authorized(token).await;
        // Each reader sends three marks without waiting, the furthest in
        // the middle: the store keeps it.
        for up_to in [ids[0], ids[2 - i % 2], ids[1]] {
            ws.send(json!({"type": "read", "data": {"id": pk, "up_to": up_to}}))
                .await;
        }
        sessions.push(ws);
    }
    for ws in &mut sessions {
        for _ in 0..3 {
            assert_eq!(
                ws.recv_type("read_response").await["data"]["status"],
                "success"
            );
        }
    }
    let stored: Vec<(i64, Option<i64>)> = chat_member::Entity::find()
        .filter(chat_member::Column::UserId.is_in(readers.clone()))
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.chat_id.to_string() == pk.as_str().unwrap())
        .map(|m| (m.user_id, m.last_read_message_id))
        .collect();
    let mut stored = stored;
    stored.sort();
    let expected: Vec<(i64, Option<i64>)> = readers
        .iter()
        .enumerate()
        .map(|(i, &r)| (r, Some(if i % 2 == 0 { ids[2] } else { ids[1] })))
        .collect();
    assert_eq!(stored, expected, "{}", backend.name());
}

backend_tests!(concurrent_read_marks_are_all_stored => concurrent_read_marks);

/// What the read-mark writer hands the ChatServer, collected in a test.
struct StoredReads(tokio::sync::mpsc::UnboundedSender<Vec<(i64, i64, u64, bool)>>);

impl actix::Actor for StoredReads {
    type Context = actix::Context<Self>;
}

impl actix::Handler<ReadsStored> for StoredReads {
    type Result = ();

    fn handle(&mut self, msg: ReadsStored, _: &mut Self::Context) {
        assert!(msg.broadcast, "the writer's marks are for every instance");
        let session = |r: &StoredRead| r.session.expect("the writer's marks name their session");
        let mut reads: Vec<(i64, i64, u64, bool)> = msg
            .reads
            .iter()
            .map(|r| (r.user.0, r.up_to, session(r), r.shared))
            .collect();
        reads.sort();
        let _ = self.0.send(reads);
    }
}

/// One batch of marks (all queued before the writer runs): each reader's
/// furthest is written and handed on to be pushed, with the session that
/// asked it; a mark behind the stored one, or of someone not a member,
/// moves nothing and is pushed to nobody. Every mark is answered. Whether
/// a mark goes to everyone is the asking request's. The conversation holds
/// messages 1 to 10: a mark past them is stored as 10.
async fn read_mark_batches(backend: &Backend) {
    use actix::Actor;
    use chat_server::chat::protocol::{ChatId, UserId};
    use chat_server::chat::read_marks::{Asked, ReadMarks};
    let app = TestApp::spawn(backend).await;
    let (alice, bob, pk) = app.pair("alice", "bob").await;
    let chat = ChatId(pk.parse().unwrap());
    let now = chrono::Utc::now();
    message::Entity::insert_many((1..=10).map(|id| message::ActiveModel {
        id: Set(id),
        chat_id: Set(chat.0),
        sender_id: Set(Some(alice)),
        content: Set(format!("m{id}")),
        created_at: Set(now),
        seq: Set(id),
        ..Default::default()
    }))
    .exec(&app.db)
    .await
    .unwrap();
    let (pushed, mut to_push) = tokio::sync::mpsc::unbounded_channel();
    let server = StoredReads(pushed).start().recipient();
    let (marks, _task) = ReadMarks::start(app.db.clone(), server);
    let stranger = alice + bob + 1000;
    let batch = [
        (alice, 5),
        (alice, 9),
        (alice, 7),
        (bob, 3),
        (bob, 3),
        (stranger, 4),
    ];
    // Marks queued at once (one batch), each asked by a session numbered
    // from `first` (all shared but session 1's): every one is answered.
    let asked = |session: u64| Asked {
        session,
        shared: session != 1,
    };
    // Each answered with whether it was the one pushed.
    let mark_all = |first: u64, requests: Vec<(i64, i64)>| {
        let requests = (first..).zip(requests);
        let answers = requests.map(|(s, (u, r))| marks.mark(chat, UserId(u), r, asked(s)));
        let answers = futures_util::future::join_all(answers);
        async move {
            let answers = answers.await;
            let pushed: Result<Vec<bool>, _> = answers.into_iter().collect();
            pushed.expect("every mark answered")
        }
    };
    // The session of each request is its place in the batch: Alice's 9 and
    // Bob's first 3 are pushed, nothing else (a mark behind a further one,
    // a repeat, a stranger's).
    assert_eq!(
        mark_all(0, batch.to_vec()).await,
        [false, true, false, true, false, false],
        "{}",
        backend.name()
    );
    let mut expected = vec![(alice, 9, 1, false), (bob, 3, 3, true)];
    expected.sort();
    assert_eq!(
        to_push.recv().await.unwrap(),
        expected,
        "{}",
        backend.name()
    );

    assert_eq!(
        mark_all(10, vec![(alice, 8), (bob, 4)]).await,
        [false, true]
    );
    assert_eq!(
        to_push.recv().await.unwrap(),
        [(bob, 4, 11, true)],
        "never backward"
    );
    // A batch in which nothing moved is handed on as nothing at all.
    assert!(!marks.mark(chat, UserId(alice), 2, asked(12)).await.unwrap());
    let mut stored: Vec<(i64, Option<i64>)> = chat_member::Entity::find()
        .filter(chat_member::Column::ChatId.eq(chat.0))
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.user_id, m.last_read_message_id))
        .collect();
    stored.sort();
    let mut expected = vec![(alice, Some(9)), (bob, Some(4))];
    expected.sort();
    assert_eq!(stored, expected);
    assert!(marks.mark(chat, UserId(bob), 6, asked(13)).await.unwrap());
    assert_eq!(
        to_push.recv().await.unwrap(),
        [(bob, 6, 13, true)],
        "the next that moved comes next: nothing came of the one that did not"
    );
    marks.mark(chat, UserId(bob), 60, asked(14)).await.unwrap();
    assert_eq!(
        to_push.recv().await.unwrap(),
        [(bob, 10, 14, true)],
        "as far as the last message"
    );
}

backend_tests!(read_marks_are_written_in_batches => read_mark_batches);

async fn rest(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice, alice_token) = app.user("alice").await;
    let (bob, bob_token) = app.user("bob").await;
    let (carol, carol_token) = app.user("carol").await;
    let mut b = app.authorized(&bob_token).await;

    let (status, created) = app
        .rest(
            Method::POST,
            "/api/groups/",
            &alice_token,
            Some(json!({"title": "Book club", "members": [bob]})),
        )
        .await;
    assert_eq!(status, 201, "{} {created}", backend.name());
    let pk = created["pk"].as_str().unwrap().to_string();
    assert_eq!(created["name"], "Book club");
    assert_eq!(created["unread"], 0);
    assert_eq!(created["invited"], json!([bob]));
    // The WebSocket hears about REST changes: bob's invitation, which he
    // accepts over REST.
    let push = b.recv().await;
    assert_eq!(push["type"], "invitation");
    assert_eq!(push["data"]["pk"], pk.as_str());
    let (status, invitations) = app
        .rest(Method::GET, "/api/invitations/", &bob_token, None)
        .await;
    assert_eq!((status, invitations), (200, json!([push["data"]])));
    let accept = format!("/api/invitations/{pk}/accept/");
    let (status, joined) = app.rest(Method::POST, &accept, &bob_token, None).await;
    assert_eq!(
        (status, joined["members"].as_array().map(Vec::len)),
        (200, Some(2))
    );
    assert_eq!(b.recv().await["data"]["change"]["type"], "members_added");
    assert_eq!(
        app.rest(Method::POST, &accept, &bob_token, None).await,
        (404, json!({"detail": "Not found."}))
    );

    let path = format!("/api/groups/{pk}/");
    let (status, group) = app.rest(Method::GET, &path, &bob_token, None).await;
    assert_eq!(
        (status, group["members"].as_array().map(Vec::len)),
        (200, Some(2))
    );
    assert_eq!(
        app.rest(Method::GET, &path, &carol_token, None).await,
        (404, json!({"detail": "Not found."}))
    );
    let (status, renamed) = app
        .rest(
            Method::PATCH,
            &path,
            &bob_token,
            Some(json!({"title": "Books"})),
        )
        .await;
    assert_eq!((status, renamed["name"].clone()), (200, json!("Books")));
    assert_eq!(
        app.rest(
            Method::PATCH,
            &path,
            &bob_token,
            Some(json!({"title": " "}))
        )
        .await,
        (400, json!({"title": ["title must not be empty"]}))
    );
    assert_eq!(
        app.rest(Method::PATCH, &path, &bob_token, Some(json!({})))
            .await,
        (400, json!({"title": ["This field is required."]}))
    );
    let members = format!("/api/groups/{pk}/members/");
    common::have_written(&app.db, &[carol], bob).await;
    let (status, added) = app
        .rest(
            Method::POST,
            &members,
            &bob_token,
            Some(json!({"members": [carol]})),
        )
        .await;
    assert_eq!(
        (status, added["members"].as_array().map(Vec::len)),
        (200, Some(3))
    );
    assert_eq!(
        app.rest(
            Method::POST,
            &members,
            &bob_token,
            Some(json!({"members": [424242]}))
        )
        .await,
        (400, json!({"members": ["no active user with id 424242"]}))
    );
    assert_eq!(
        app.rest(
            Method::DELETE,
            &format!("/api/groups/{pk}/members/{alice}/"),
            &carol_token,
            None
        )
        .await,
        (
            403,
            json!({"detail": "only the group's owner can remove other members"})
        )
    );
    let (status, left) = app
        .rest(
            Method::DELETE,
            &format!("/api/groups/{pk}/members/{carol}/"),
            &carol_token,
            None,
        )
        .await;
    assert_eq!((status, left["removed"].clone()), (200, json!(true)));
    let (status, list) = app
        .rest(Method::GET, "/api/groups/", &alice_token, None)
        .await;
    assert_eq!((status, list[0]["members"].clone()), (200, json!(2)));
    let (_, contacts) = app
        .rest(Method::GET, "/api/contacts/", &alice_token, None)
        .await;
    assert_eq!(contacts[0]["kind"], "group");
    assert_eq!(app.rest(Method::GET, "/api/groups/", "", None).await.0, 401);
    // A direct conversation is not a group here.
    let (direct, _) = chat_server::accounts::direct_chat(&app.db, alice, bob)
        .await
        .unwrap();
    assert_eq!(
        app.rest(
            Method::GET,
            &format!("/api/groups/{}/", direct.id),
            &alice_token,
            None
        )
        .await
        .0,
        404
    );
}

backend_tests!(groups_over_rest => rest);

/// Concurrent adds and removes on one group: the limit holds, and the
/// member list everyone sees is what the database holds.
async fn concurrent(backend: &Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[("MAX_GROUP_MEMBERS", "10"), ("RATE_LIMIT_BURST", "1000")],
    )
    .await;
    let (owner, owner_token) = app.user("owner").await;
    let first = common::insert_users(&app.db, "first", 6).await;
    let second = common::insert_users(&app.db, "second", 12).await;
    common::have_written(&app.db, &[first.clone(), second.clone()].concat(), owner).await;
    let (status, group) = app
        .rest(
            Method::POST,
            "/api/groups/",
            &owner_token,
            Some(json!({"title": "busy", "members": first})),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let pk = group["pk"].as_str().unwrap().to_string();
    let add_path = format!("/api/groups/{pk}/members/");
    let adds = second.iter().map(|user| {
        app.rest(
            Method::POST,
            &add_path,
            &owner_token,
            Some(json!({"members": [user]})),
        )
    });
    let remove_paths: Vec<String> = first
        .iter()
        .take(3)
        .map(|user| format!("/api/groups/{pk}/members/{user}/"))
        .collect();
    let removes = remove_paths
        .iter()
        .map(|path| app.rest(Method::DELETE, path, &owner_token, None));
    let (added, removed) = futures_util::future::join(
        futures_util::future::join_all(adds),
        futures_util::future::join_all(removes),
    )
    .await;
    assert!(removed.iter().all(|(s, _)| *s == 200), "{removed:?}");
    let ok = added.iter().filter(|(s, _)| *s == 200).count();
    assert!(
        added
            .iter()
            .all(|(s, b)| *s == 200 || b == &json!({"members": ["a group has at most 10 members"]})),
        "{added:?}"
    );
    let uuid = uuid::Uuid::parse_str(&pk).unwrap();
    let rows = chat_member::Entity::find()
        .filter(chat_member::Column::ChatId.eq(uuid))
        .count(&app.db)
        .await
        .unwrap();
    assert!(rows <= 10, "{} rows: the limit held", backend.name());
    assert_eq!(rows as usize, 1 + 6 - 3 + ok, "every success is a row");
    let (_, seen) = app
        .rest(
            Method::GET,
            &format!("/api/groups/{pk}/"),
            &owner_token,
            None,
        )
        .await;
    assert_eq!(
        seen["members"].as_array().map(Vec::len),
        Some(rows as usize)
    );
    let owners = chat_member::Entity::find()
        .filter(chat_member::Column::ChatId.eq(uuid))
        .filter(chat_member::Column::Role.eq(chat_member::Role::Owner))
        .count(&app.db)
        .await
        .unwrap();
    assert_eq!(owners, 1);
}

backend_tests!(concurrent_adds_and_removes_stay_consistent => concurrent);

/// A direct conversation created by the `contact add` command while both
/// people are connected works at once, both ways.
#[actix_rt::test]
async fn a_contact_added_outside_the_server_works_live() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    let (alice, alice_token) = app.user("alice").await;
    let (bob, bob_token) = app.user("bob").await;
    let mut a = app.authorized(&alice_token).await;
    let mut b = app.authorized(&bob_token).await;
    let (chat, _) = chat_server::accounts::direct_chat(&app.db, alice, bob)
        .await
        .unwrap();
    let pk = chat.id.to_string();
    a.send(json!({"type": "message", "data": {"to": pk, "content": "new here"}}))
        .await;
    a.recv_type("message_response").await;
    assert_eq!(
        b.recv_type("message").await["data"]["data"]["content"],
        "new here"
    );
    b.send(json!({"type": "message", "data": {"to": pk, "content": "welcome"}}))
        .await;
    assert_eq!(
        a.recv_type("message").await["data"]["data"]["content"],
        "new here"
    );
    assert_eq!(
        a.recv_type("message").await["data"]["data"]["content"],
        "welcome"
    );
}

/// A group's changes are kept and told to whoever opens it (C20): who
/// created, added, renamed, removed and left, with the people named.
async fn history_of_changes(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice, alice_token) = app.user("alice").await;
    let (bob, _) = app.user("bob").await;
    let (carol, carol_token) = app.user("carol").await;
    common::have_written(&app.db, &[bob, carol], alice).await;
    let mut a = app.authorized(&alice_token).await;
    let created = a
        .ask(json!({"type": "create_group", "data": {"title": "Trip", "members": [bob]}}))
        .await;
    let pk = created["pk"].clone();
    a.ask(json!({"type": "add_members", "data": {"id": pk, "members": [carol]}}))
        .await;
    let mut c = app.authorized(&carol_token).await;
    c.ask(json!({"type": "rename_group", "data": {"id": pk, "title": "Trip 2027"}}))
        .await;
    a.ask(json!({"type": "remove_member", "data": {"id": pk, "user_id": bob}}))
        .await;
    c.ask(json!({"type": "remove_member", "data": {"id": pk, "user_id": carol}}))
        .await;

    let contact = a
        .ask(json!({"type": "get_contact", "data": {"id": pk}}))
        .await;
    let person = |id: i64, username: &str| json!({"user_id": id, "username": username, "name": format!("{} Doe", common::capitalize(username))});
    let changes = contact["changes"].as_array().expect("changes").clone();
    let without_time: Vec<Value> = changes
        .iter()
        .map(|c| {
            let mut c = c.clone();
            let time = c.as_object_mut().unwrap().remove("time").unwrap();
            assert!(
                time.as_str().is_some_and(|t| t.ends_with("+00:00")),
                "{time}"
            );
            c
        })
        .collect();
    assert_eq!(
        without_time,
        [
            json!({"type": "created", "by": person(alice, "alice"), "users": [], "title": "Trip"}),
            json!({"type": "members_added", "by": person(alice, "alice"), "users": [person(carol, "carol")], "title": null}),
            json!({"type": "renamed", "by": person(carol, "carol"), "users": [], "title": "Trip 2027"}),
            json!({"type": "member_removed", "by": person(alice, "alice"), "users": [person(bob, "bob")], "title": null}),
            json!({"type": "member_removed", "by": person(carol, "carol"), "users": [person(carol, "carol")], "title": null}),
        ],
        "{}",
        backend.name()
    );
    // A direct conversation has none.
    let (_, _, direct) = app.pair("dora", "erin").await;
    let mut d = app.authorized(&app.login("dora").await).await;
    let contact = d
        .ask(json!({"type": "get_contact", "data": {"id": direct}}))
        .await;
    assert!(contact.get("changes").is_none(), "{contact}");
}

backend_tests!(a_groups_changes_are_kept_and_told => history_of_changes);
