//! The web client's whole flow (PROTOCOL.md A2), frame by frame, on every backend.

use crate::common;

use common::{Backend, TestApp};
use serde_json::{json, Value};

fn is_time(v: &Value) -> bool {
    let s = v.as_str().unwrap_or("");
    // 2026-11-24T10:15:30.123456+00:00
    s.len() == 32
        && s.ends_with("+00:00")
        && s.as_bytes()[19] == b'.'
        && chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

async fn seed_flow(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice, bob, pk) = app.pair("alice", "bob").await;
    let alice_token = app.login("alice").await;
    let bob_token = app.login("bob").await;

    let mut a1 = app.authorized(&alice_token).await;
    let contacts = a1
        .request(json!({"type": "get_contacts", "data": {}}))
        .await;
    assert_eq!(
        contacts,
        json!({"type": "get_contacts_response", "data": [{
            "pk": pk, "name": "Bob Jones", "online": false,
            "user_id": bob, "username": "bob", "last_message": null, "unread": 0,
            "kind": "direct", "members": 2, "seq": 0
        }]}),
        "{}",
        backend.name()
    );

    let mut b1 = app.authorized(&bob_token).await;
    // Alice is told Bob came online.
    assert_eq!(
        a1.recv().await,
        json!({"type": "presence", "data": {"pk": pk, "user_id": bob, "online": true}})
    );
    let mut a2 = app.authorized(&alice_token).await;

    let contact = a2
        .request(json!({"type": "get_contact", "data": {"id": pk}}))
        .await;
    assert_eq!(contact["type"], "get_contact_response");
    assert_eq!(contact["data"]["pk"], json!(pk));
    assert_eq!(contact["data"]["name"], "Bob Jones");
    assert_eq!(contact["data"]["online"], true);

    a1.send(json!({"type": "message", "data": {"to": pk, "content": "hello bob"}}))
        .await;
    let ack = a1.recv().await;
    assert_eq!(ack["type"], "message_response");
    assert_eq!(ack["data"]["status"], "success");
    let id = ack["data"]["id"].as_i64().expect("id");
    assert_eq!(ack["data"]["pk"], json!(pk));
    assert!(is_time(&ack["data"]["time"]), "{ack}");
    let time = ack["data"]["time"].clone();

    let pushed = |direction: &str| {
        json!({"type": "message", "data": {"pk": pk, "seq": 1, "data": {
            "direction": direction, "content": "hello bob", "time": time,
            "id": id, "sender": alice
        }}})
    };
    assert_eq!(a1.recv().await, pushed("send"));
    assert_eq!(a2.recv().await, pushed("send"));
    assert_eq!(b1.recv().await, pushed("received"));

    // Bob's contact list now shows the message, unread.
    let contacts = b1
        .request(json!({"type": "get_contacts", "data": {}}))
        .await;
    assert_eq!(contacts["data"][0]["name"], "Alice Smith");
    assert_eq!(contacts["data"][0]["online"], true);
    assert_eq!(contacts["data"][0]["unread"], 1);
    assert_eq!(
        contacts["data"][0]["last_message"],
        json!({"id": id, "sender": alice, "content": "hello bob", "time": time})
    );
}

backend_tests!(seed_flow_reaches_every_session_of_both_members => seed_flow);

/// A burst sent without waiting commits in batches of several messages;
/// the sender's acknowledgement of each is still followed at once by that
/// message's own copy, before the next acknowledgement (the ChatServer
/// queues the two in one turn: DESIGN.md, "How a message travels"). When
/// the writer queued the acknowledgements itself, a batch's came first,
/// all of them, and the copies after.
async fn ack_then_own_copy(backend: &Backend) {
    const N: usize = 40;
    let app = TestApp::spawn(backend).await;
    let (_, _, pk) = app.pair("alice", "bob").await;
    let mut a = app.authorized(&app.login("alice").await).await;
    for i in 0..N {
        a.send(json!({"type": "message", "data": {"to": pk, "content": format!("burst {i}")}}))
            .await;
    }
    for i in 0..N {
        let ack = a.recv().await;
        assert_eq!(ack["type"], "message_response", "{ack}");
        let copy = a.recv().await;
        assert_eq!(copy["type"], "message", "after the ack of {i}: {copy}");
        assert_eq!(copy["data"]["data"]["id"], ack["data"]["id"], "{copy}");
        assert_eq!(copy["data"]["data"]["direction"], "send");
        assert_eq!(copy["data"]["data"]["content"], format!("burst {i}"));
    }
}

backend_tests!(each_acknowledgement_is_followed_by_its_own_copy => ack_then_own_copy);

async fn token_in_url(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    app.pair("carol", "dave").await;
    let token = app.login("carol").await;
    let mut ws = app.ws(&format!("/chat?token={token}")).await;
    assert_eq!(
        ws.recv().await,
        json!({"type": "info", "data": "Waiting user token..."})
    );
    assert_eq!(
        ws.recv().await,
        json!({"type": "authorization_response", "data": {"status": "success"}})
    );
    let contacts = ws
        .request(json!({"type": "get_contacts", "data": {}}))
        .await;
    assert_eq!(contacts["data"][0]["name"], "Dave Jones");
}

backend_tests!(token_in_the_url_authorizes_at_once => token_in_url);

#[actix_rt::test]
async fn only_the_literal_token_parameter_authorizes() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    app.pair("carol", "dave").await;
    let token = app.login("carol").await;
    // `%74oken` decodes to `token`, but it is not the parameter's name: the
    // socket is not authorized (and the log, which redacts by the decoded
    // name, never holds what authorized a socket in clear).
    let mut ws = app.ws(&format!("/chat?%74oken={token}")).await;
    assert_eq!(
        ws.recv().await,
        json!({"type": "info", "data": "Waiting user token..."})
    );
    // Barrier: an authorization would have been answered before this.
    assert_eq!(
        ws.request(json!({"type": "ping", "data": {}})).await,
        json!({"type": "pong", "data": {}})
    );
    assert_eq!(
        ws.request(json!({"type": "get_contacts", "data": {}}))
            .await["data"]["code"],
        "unauthorized"
    );
    // A value with escapes still works under the literal name.
    let escaped = token.replace('.', "%2E");
    let mut ws = app.ws(&format!("/chat?x=1&token={escaped}")).await;
    ws.recv().await;
    assert_eq!(
        ws.recv().await,
        json!({"type": "authorization_response", "data": {"status": "success"}})
    );
}

/// A recipient that stops reading while megabytes are sent to it gets every
/// frame whole and in order once it reads again: more than the kernel's
/// socket buffers hold on loopback (Linux's defaults: at most 4 MiB out,
/// 128 KiB in while the reader reads nothing), so the server's writes are
/// cut short and what the socket did not take waits in the connection's
/// write buffer, ahead of what comes after.
#[actix_rt::test]
async fn a_recipient_that_pauses_gets_every_frame_whole_and_in_order() {
    const MESSAGES: usize = 200;
    let app = TestApp::spawn_with(
        &Backend::Sqlite,
        &[
            ("MAX_MESSAGE_CHARS", "50000"),
            ("OUTBOX_CAPACITY", "4096"),
            ("RATE_LIMIT_BURST", "100000"),
            ("RATE_LIMIT_PER_SECOND", "100000"),
        ],
    )
    .await;
    let (_, _, pk) = app.pair("alice", "bob").await;
    let mut alice = app.authorized(&app.login("alice").await).await;
    // Bob reads nothing until all are sent: 10 MB, each message its number,
    // then filler that differs between neighbours, so a frame cut, repeated
    // or swapped shows.
    let mut bob = app.authorized(&app.login("bob").await).await;
    let content = |i: usize| {
        let fill = char::from(b'a' + (i % 26) as u8);
        format!("{i:05}{}", fill.to_string().repeat(49_995))
    };
    for i in 0..MESSAGES {
        alice
            .send(json!({"type": "message", "data": {"to": pk, "content": content(i)}}))
            .await;
        // Her answer and her own copy, read as they come: her queue never fills.
        let answer = alice.recv_type("message_response").await;
        assert_eq!(answer["data"]["status"], "success", "{answer}");
        alice.recv_type("message").await;
    }
    for i in 0..MESSAGES {
        let frame = bob.recv_type("message").await;
        let got = frame["data"]["data"]["content"]
            .as_str()
            .unwrap_or_default();
        assert!(got == content(i), "message {i}: {:?}…", got.get(..10));
    }
    assert_eq!(app.metric("chat_outbox_overflows_total").await, 0.0);
}
