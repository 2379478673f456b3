//! A contact list keeps groups' rosters between lists (`store::Rosters`):
//! each group's member count and `online` in it must still follow every
//! membership change, made on any instance.

use crate::common;

use common::{authorized_at, require_redis_url, Backend, TestApp, TestDatabase, WsClient};
use serde_json::{json, Value};

/// The group `pk` as `client`'s contact list shows it: (members, online).
async fn listed(client: &mut WsClient, pk: &Value) -> (Value, Value) {
    let contacts = client
        .ask(json!({"type": "get_contacts", "data": {}}))
        .await;
    let item = contacts
        .as_array()
        .and_then(|items| items.iter().find(|c| &c["pk"] == pk))
        .unwrap_or_else(|| panic!("{pk} not in {contacts}"));
    (item["members"].clone(), item["online"].clone())
}

/// Alice's group with Bob, who is offline; Carol, online, joins and
/// leaves; Dave accepts an invitation. Alice's list, asked twice at each
/// step (the second from the kept roster), follows each change.
async fn every_change_shows(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice, alice_token) = app.user("alice").await;
    let (bob, _) = app.user("bob").await;
    let (carol, carol_token) = app.user("carol").await;
    let (dave, dave_token) = app.user("dave").await;
    common::have_written(&app.db, &[bob, carol], alice).await;
    let mut alice_ws = app.authorized(&alice_token).await;
    let mut carol_ws = app.authorized(&carol_token).await;
    let mut dave_ws = app.authorized(&dave_token).await;
    let group = json!({"type": "create_group", "data": {"title": "g", "members": [bob]}});
    let pk = alice_ws.ask_change(group).await["pk"].clone();
    for _ in 0..2 {
        assert_eq!(listed(&mut alice_ws, &pk).await, (json!(2), json!(false)));
    }

    let add = json!({"type": "add_members", "data": {"id": pk, "members": [carol]}});
    alice_ws.ask_change(add).await;
    for _ in 0..2 {
        assert_eq!(
            listed(&mut alice_ws, &pk).await,
            (json!(3), json!(true)),
            "carol is in, and online"
        );
    }

    let leave = json!({"type": "remove_member", "data": {"id": pk, "user_id": carol}});
    carol_ws.ask_change(leave).await;
    alice_ws.recv_type("conversation").await;
    for _ in 0..2 {
        assert_eq!(
            listed(&mut alice_ws, &pk).await,
            (json!(2), json!(false)),
            "carol, still online, is no longer in"
        );
    }

    // Dave has not written to Alice: he is invited, and joins by accepting.
    let invite = json!({"type": "add_members", "data": {"id": pk, "members": [dave]}});
    alice_ws.ask(invite).await;
    dave_ws.recv_type("invitation").await;
    let accept = json!({"type": "accept_invitation", "data": {"id": pk}});
    dave_ws.ask_change(accept).await;
    alice_ws.recv_type("conversation").await;
    for _ in 0..2 {
        assert_eq!(listed(&mut alice_ws, &pk).await, (json!(3), json!(true)));
    }
    let (status, contact) = app
        .rest(
            actix_web::http::Method::GET,
            &format!("/api/contacts/{}/", pk.as_str().unwrap()),
            &alice_token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{contact}");
    assert_eq!(
        (&contact["members"], &contact["online"]),
        (&json!(3), &json!(true))
    );
    // One roster kept, at the group's latest version.
    let mut res = app.http.get(app.url("/metrics")).send().await.unwrap();
    let metrics = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
    assert!(
        metrics.lines().any(|l| l == "chat_contact_roster_ids 3"),
        "{metrics}"
    );
}

backend_tests!(a_kept_roster_follows_every_membership_change => every_change_shows);

/// Alice's instance keeps the group's roster; a change made through the
/// other instance shows in her next list there.
async fn a_change_elsewhere_shows(backend: &Backend) {
    let db = TestDatabase::migrated(backend).await;
    let apps = common::instances(backend, &require_redis_url(), &db, 2).await;
    let (a, b) = (&apps[0], &apps[1]);
    let (alice, alice_token) = a.user("alice").await;
    let (bob, bob_token) = a.user("bob").await;
    let (carol, carol_token) = a.user("carol").await;
    common::have_written(&a.db, &[bob, carol], alice).await;
    common::have_written(&a.db, &[carol], bob).await;
    let mut alice_on_a = authorized_at(&a.http, a.port, &alice_token).await;
    let mut bob_on_b = authorized_at(&b.http, b.port, &bob_token).await;
    let group = json!({"type": "create_group", "data": {"title": "g", "members": [bob]}});
    let pk = alice_on_a.ask_change(group).await["pk"].clone();
    bob_on_b.recv_type("conversation").await;
    assert_eq!(listed(&mut alice_on_a, &pk).await, (json!(2), json!(true)));

    let _carol_on_b = authorized_at(&b.http, b.port, &carol_token).await;
    let add = json!({"type": "add_members", "data": {"id": pk, "members": [carol]}});
    bob_on_b.ask_change(add).await;
    alice_on_a.recv_type("conversation").await;
    assert_eq!(listed(&mut alice_on_a, &pk).await, (json!(3), json!(true)));

    let remove = json!({"type": "remove_member", "data": {"id": pk, "user_id": bob}});
    bob_on_b.ask_change(remove).await;
    alice_on_a.recv_type("conversation").await;
    drop(bob_on_b);
    assert_eq!(
        listed(&mut alice_on_a, &pk).await.0,
        json!(2),
        "bob left through his instance"
    );
}

backend_tests!(@server a_roster_kept_on_one_instance_follows_a_change_on_another => a_change_elsewhere_shows);
