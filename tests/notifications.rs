//! Notifications: a conversation's mute (PROTOCOL.md C17), kept on the
//! server so every device of the user, on any instance, respects it.

use crate::common;

use common::{authorized_at, require_redis_url, Backend, TestApp, TestDatabase};
use entity::chat_member;
use sea_orm::EntityTrait;
use serde_json::{json, Value};

fn mute(pk: &str, muted: bool) -> Value {
    json!({"type": "mute", "data": {"id": pk, "muted": muted}})
}

async fn stored_mute(app: &TestApp, pk: &str, user: i64) -> bool {
    chat_member::Entity::find_by_id((pk.parse().unwrap(), user))
        .one(&app.db)
        .await
        .unwrap()
        .expect("membership")
        .muted
}

/// Muting answers the caller, tells every session of the user on both
/// instances, shows in the contact list and `get_contact`, and is stored;
/// muting again changes nothing and pushes nothing; a stranger's mute of
/// the conversation is `not_found`.
async fn muting(backend: &Backend) {
    let redis = require_redis_url();
    let db = TestDatabase::create(backend).await;
    let apps = common::instances(backend, &redis, &db, 2).await;
    let (a, b) = (&apps[0], &apps[1]);
    let (alice, bob, pk) = a.pair("alice", "bob").await;
    let (_, carol_token) = a.user("carol").await;
    let bob_token = b.login("bob").await;
    let mut bobs = authorized_at(&b.http, b.port, &bob_token).await;
    let token = a.login("alice").await;
    let mut here = authorized_at(&a.http, a.port, &token).await;
    let mut there = authorized_at(&b.http, b.port, &token).await;

    let answer = here.ask(mute(&pk, true)).await;
    assert_eq!(
        answer,
        json!({"status": "success", "pk": pk, "muted": true}),
        "{}",
        backend.name()
    );
    let pushed = json!({"type": "muted", "data": {"pk": pk, "muted": true}});
    assert_eq!(here.recv().await, pushed);
    assert_eq!(there.recv().await, pushed);
    assert!(stored_mute(a, &pk, alice).await);
    assert!(!stored_mute(a, &pk, bob).await, "bob's mute is his own");

    let contacts = there.ask(json!({"type": "get_contacts", "data": {}})).await;
    assert_eq!(contacts[0]["pk"], pk.as_str());
    assert_eq!(contacts[0]["muted"], true, "{contacts}");
    let contact = there
        .ask(json!({"type": "get_contact", "data": {"id": pk}}))
        .await;
    assert_eq!(contact["muted"], true, "{contact}");
    let contacts = bobs.ask(json!({"type": "get_contacts", "data": {}})).await;
    assert!(
        contacts[0].get("muted").is_none(),
        "absent when not muted: {contacts}"
    );

    // Again: the same answer, no push (the pong comes first).
    assert_eq!(here.ask(mute(&pk, true)).await["muted"], true);
    here.nothing_before_pong().await;
    there.nothing_before_pong().await;

    let answer = there.ask(mute(&pk, false)).await;
    assert_eq!(
        answer,
        json!({"status": "success", "pk": pk, "muted": false})
    );
    let pushed = json!({"type": "muted", "data": {"pk": pk, "muted": false}});
    assert_eq!(there.recv().await, pushed);
    assert_eq!(here.recv().await, pushed);
    assert!(!stored_mute(a, &pk, alice).await);

    let mut carol = authorized_at(&a.http, a.port, &carol_token).await;
    let not_found =
        json!({"status": "error", "code": "not_found", "message": "conversation not found"});
    assert_eq!(carol.ask(mute(&pk, true)).await, not_found);
    assert_eq!(carol.ask(mute("not-a-uuid", true)).await, not_found);
    assert_eq!(
        carol.ask(json!({"type": "mute", "data": {"id": pk}})).await["code"],
        "invalid"
    );
}

backend_tests!(a_mute_is_stored_and_told_to_every_session => muting);
