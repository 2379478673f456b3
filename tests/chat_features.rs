//! PROTOCOL.md part B over a real WebSocket: idempotent resends, history,
//! read marks, typing, presence, revocation, liveness, slow consumers.

use crate::common;

use std::time::{Duration, Instant};

use actix_http::ws::CloseCode;
use chat_server::chat::writer::commit_gate;
use common::{wait_until, Backend, TestApp};
use entity::message;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{json, Value};

async fn stored_count(app: &TestApp, client_id: &str) -> u64 {
    message::Entity::find()
        .filter(message::Column::ClientId.eq(client_id))
        .count(&app.db)
        .await
        .unwrap()
}

async fn idempotent_resend(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice, _, pk, mut a, mut b) = app.pair_online("alice", "bob").await;

    let send =
        json!({"type": "message", "data": {"to": pk, "content": "once", "client_id": "c-1"}});
    a.send(send.clone()).await;
    let first = a.recv_type("message_response").await;
    a.send(send).await;
    let second = a.recv_type("message_response").await;
    assert_eq!(
        first,
        second,
        "{}: the resend is answered with the original",
        backend.name()
    );
    assert_eq!(first["data"]["client_id"], "c-1");
    let pushed = b.recv().await;
    assert_eq!(pushed["data"]["data"]["client_id"], "c-1");
    assert_eq!(pushed["data"]["data"]["sender"], alice);
    // No second push for the resend: the next message Bob gets is a later one.
    common::next_is_message(&mut a, &mut b, &pk, "after the resend").await;
    assert_eq!(stored_count(&app, "c-1").await, 1);

    // The same client_id sent from two tabs at once is stored once.
    let mut a2 = app.authorized(&app.login("alice").await).await;
    let race =
        json!({"type": "message", "data": {"to": pk, "content": "race", "client_id": "c-2"}});
    a.send(race.clone()).await;
    a2.send(race).await;
    let one = a.recv_type("message_response").await;
    let two = a2.recv_type("message_response").await;
    assert_eq!(one["data"]["id"], two["data"]["id"]);
    assert_eq!(stored_count(&app, "c-2").await, 1);
    assert_eq!(b.recv().await["data"]["data"]["content"], "race");
    // Both answers are in: a push for the second would already be queued
    // before this one.
    common::next_is_message(&mut a, &mut b, &pk, "after the race").await;
    // The metric counts what was committed: four messages, not the resends.
    assert_eq!(app.metric("chat_messages_stored_total").await, 4.0);
}

backend_tests!(resending_a_client_id_stores_nothing_new => idempotent_resend);

/// The resend lookup's index holds only messages with a `client_id`
/// (migration m20261207_000001) on SQLite and PostgreSQL, and the lookups
/// (`IN` lists, and `=` in PostgreSQL's one-statement batch) still use it.
async fn client_id_index(backend: &Backend) {
    use sea_orm::{ConnectionTrait, Statement, TransactionTrait};
    const INDEX: &str = "uq_messages_sender_chat_client_id";
    /// The one text column of each row `sql` answers.
    async fn texts(db: &impl ConnectionTrait, sql: &str, column: &str) -> Vec<String> {
        let statement = Statement::from_string(db.get_database_backend(), sql);
        db.query_all_raw(statement)
            .await
            .unwrap()
            .iter()
            .map(|row| row.try_get::<String>("", column).unwrap())
            .collect()
    }
    let app = TestApp::spawn(backend).await;
    let (definition, plan) = match backend {
        Backend::Sqlite => {
            let sql = format!("SELECT sql FROM sqlite_master WHERE name = '{INDEX}'");
            let plan = "EXPLAIN QUERY PLAN SELECT * FROM messages WHERE sender_id IN (1, 2) \
                        AND chat_id IN (x'00', x'01') AND client_id IN ('a', 'b')";
            (
                texts(&app.db, &sql, "sql").await,
                texts(&app.db, plan, "detail").await,
            )
        }
        Backend::Postgres(_) => {
            let sql = format!("SELECT pg_get_indexdef('{INDEX}'::regclass) AS d");
            // Planned as for a large table: an index the query could use is used.
            let txn = app.db.begin().await.unwrap();
            txn.execute_unprepared("SET LOCAL enable_seqscan = off")
                .await
                .unwrap();
            let plan = "EXPLAIN SELECT b.client FROM (VALUES (1::int8, \
                        '00000000-0000-0000-0000-000000000000'::uuid, 'a'::text)) \
                        AS b(sender, chat, client) WHERE NOT EXISTS (SELECT 1 FROM messages m \
                        WHERE m.sender_id = b.sender AND m.chat_id = b.chat \
                        AND m.client_id = b.client)";
            let answers = (
                texts(&txn, &sql, "d").await,
                texts(&txn, plan, "QUERY PLAN").await,
            );
            txn.rollback().await.unwrap();
            answers
        }
        // No partial indexes: the whole index, as before.
        Backend::MySql(_) => return,
    };
    assert!(
        definition[0].ends_with("WHERE client_id IS NOT NULL")
            || definition[0].ends_with("WHERE (client_id IS NOT NULL)"),
        "{definition:?}"
    );
    assert!(plan.iter().any(|step| step.contains(INDEX)), "{plan:?}");
}

backend_tests!(the_client_id_index_is_partial_and_used => client_id_index);

async fn send_all(ws: &mut common::WsClient, pk: &str, texts: &[&str]) -> Vec<Value> {
    let mut acks = Vec::new();
    for text in texts {
        ws.send(json!({"type": "message", "data": {"to": pk, "content": text}}))
            .await;
        acks.push(ws.recv_type("message_response").await);
    }
    acks
}

async fn history_paging(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice, bob, pk) = app.pair("alice", "bob").await;
    let mut a = app.authorized(&app.login("alice").await).await;
    let acks = send_all(&mut a, &pk, &["m1", "m2", "m3", "m4", "m5"]).await;
    let ids: Vec<i64> = acks
        .iter()
        .map(|a| a["data"]["id"].as_i64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");

    let mut b = app.authorized(&app.login("bob").await).await;
    let page = |data: Value| json!({"type": "get_messages", "data": data});
    let newest = b.request(page(json!({"id": pk, "limit": 2}))).await;
    assert_eq!(newest["type"], "get_messages_response");
    assert_eq!(newest["data"]["pk"], json!(pk));
    assert_eq!(newest["data"]["has_more"], true);
    assert_eq!(newest["data"]["seq"], 5, "the latest seq the page shows");
    let item = |i: usize, text: &str| {
        json!({"id": ids[i], "sender": alice, "direction": "received", "content": text,
               "time": acks[i]["data"]["time"], "client_id": null, "reply_to": null,
               "quote": null, "edited_at": null, "deleted": false, "reactions": [],
               "attachments": []})
    };
    assert_eq!(
        newest["data"]["messages"],
        json!([item(3, "m4"), item(4, "m5")]),
        "{}",
        backend.name()
    );
    let older = b
        .request(page(json!({"id": pk, "limit": 2, "before": ids[3]})))
        .await;
    assert_eq!(
        older["data"]["messages"],
        json!([item(1, "m2"), item(2, "m3")])
    );
    let oldest = b
        .request(page(json!({"id": pk, "limit": 2, "before": ids[1]})))
        .await;
    assert_eq!(oldest["data"]["messages"], json!([item(0, "m1")]));
    assert_eq!(oldest["data"]["has_more"], false);
    // Catching up after a reconnect.
    let caught_up = b.request(page(json!({"id": pk, "after": ids[1]}))).await;
    assert_eq!(
        caught_up["data"]["messages"],
        json!([item(2, "m3"), item(3, "m4"), item(4, "m5")])
    );
    assert_eq!(caught_up["data"]["has_more"], false);
    // The sender sees its own messages as sent.
    a.send(page(json!({"id": pk, "limit": 1}))).await;
    let mine = a.recv_type("get_messages_response").await;
    assert_eq!(mine["data"]["messages"][0]["direction"], "send");
    let _ = bob;
}

backend_tests!(history_pages_backward_and_catches_up_forward => history_paging);

async fn read_typing_presence(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice, bob, pk) = app.pair("alice", "bob").await;
    let mut a = app.authorized(&app.login("alice").await).await;
    let mut b = app.authorized(&app.login("bob").await).await;
    assert_eq!(
        a.recv().await,
        json!({"type": "presence", "data": {"pk": pk, "user_id": bob, "online": true}})
    );

    let acks = send_all(&mut a, &pk, &["one", "two"]).await;
    let last = acks[1]["data"]["id"].as_i64().unwrap();
    b.recv_type("message").await;
    b.recv_type("message").await;
    let contacts = b.request(json!({"type": "get_contacts", "data": {}})).await;
    assert_eq!(contacts["data"][0]["unread"], 2);

    b.mark_read(&pk, last).await;
    assert_eq!(
        a.recv_type("read").await,
        json!({"type": "read", "data": {"pk": pk, "user_id": bob, "up_to": last}})
    );
    let contacts = b.request(json!({"type": "get_contacts", "data": {}})).await;
    assert_eq!(contacts["data"][0]["unread"], 0, "{}", backend.name());
    // Alice, reloaded, learns how far bob has read from get_contact (C19);
    // bob sees no mark of his own reading.
    let contact = a
        .ask(json!({"type": "get_contact", "data": {"id": pk}}))
        .await;
    assert_eq!(contact["read_up_to"], last, "{contact}");
    let contact = b
        .ask(json!({"type": "get_contact", "data": {"id": pk}}))
        .await;
    assert!(contact.get("read_up_to").is_none(), "{contact}");

    let typing = json!({"type": "typing", "data": {"id": pk}});
    let typing_event = json!({"type": "typing", "data": {"pk": pk, "user_id": bob}});
    let ping = json!({"type": "ping", "data": {}});
    let pong = json!({"type": "pong", "data": {}});
    b.send(typing.clone()).await;
    assert_eq!(a.recv().await, typing_event);
    // Not echoed to the typist: the next frame bob gets is the pong.
    assert_eq!(b.request(ping.clone()).await, pong);

    // A second tab is not news: had it been, a presence frame would come
    // before bob's next message.
    let mut b2 = app.authorized(&app.login("bob").await).await;
    assert_eq!(b2.request(ping.clone()).await, pong);
    common::next_is_message(&mut b, &mut a, &pk, "second tab").await;
    // Closing one of two tabs is not news either.
    drop(b2);
    wait_until(|| async { app.stats().await.sessions == 2 }).await;
    common::next_is_message(&mut b, &mut a, &pk, "one tab closed").await;
    // Closing the last one is.
    drop(b);
    assert_eq!(
        a.recv().await,
        json!({"type": "presence", "data": {"pk": pk, "user_id": bob, "online": false}})
    );
    let contacts = a.request(json!({"type": "get_contacts", "data": {}})).await;
    assert_eq!(contacts["data"][0]["online"], false);
    let _ = alice;
}

backend_tests!(read_marks_typing_and_presence_reach_the_other_member => read_typing_presence);

/// B4's `read` promises no answer to wait for, so a client may ask
/// `get_contacts` or `get_contact` right after it; read marks are stored in
/// batches, and those requests must still see the mark: the session runs
/// them only once its own marks are stored (so after `read_response`).
async fn read_then_ask(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, pk, mut a, mut b) = app.pair_online("alice", "bob").await;
    let ack = send_all(&mut a, &pk, &["unread"]).await;
    let last = ack[0]["data"]["id"].as_i64().unwrap();
    b.recv_type("message").await;

    // The mark's batch is held before it is written.
    let gate = commit_gate::hold(pk.parse().unwrap());
    b.send(json!({"type": "read", "data": {"id": pk, "up_to": last}}))
        .await;
    gate.reached().await;
    b.send(json!({"type": "get_contacts", "data": {}})).await;
    b.send(json!({"type": "get_contact", "data": {"id": pk}}))
        .await;
    // Barrier: the session still answers, but not those two yet.
    let pong = b.request(json!({"type": "ping", "data": {}})).await;
    assert_eq!(pong, json!({"type": "pong", "data": {}}));
    gate.release();
    assert_eq!(
        b.recv().await,
        json!({"type": "read_response", "data": {"status": "success", "pk": pk, "up_to": last}})
    );
    // The two answers, in either order (requests run side by side).
    let (first, second) = (b.recv().await, b.recv().await);
    let (contacts, contact) = if first["type"] == "get_contacts_response" {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(contacts["type"], "get_contacts_response", "{contacts}");
    assert_eq!(contacts["data"][0]["unread"], 0, "{contacts}");
    assert_eq!(contact["type"], "get_contact_response", "{contact}");
    assert_eq!(contact["data"]["unread"], 0, "{contact}");
}

backend_tests!(a_request_right_after_read_sees_the_mark => read_then_ask);

/// An unread count looks back at most `UNREAD_WINDOW` events from the
/// conversation's newest (PROTOCOL.md C22): no more than that however far
/// behind the reader is, and exact within it.
async fn unread_window(backend: &Backend) {
    use chat_server::chat::store::UNREAD_WINDOW;
    use entity::chat;
    use sea_orm::Set;
    let app = TestApp::spawn(backend).await;
    let (_, bob, pk) = app.pair("alice", "bob").await;
    let id = uuid::Uuid::parse_str(&pk).unwrap();
    let total = UNREAD_WINDOW + 50;
    let now = chrono::Utc::now();
    // SQLite takes at most 32,766 values a statement.
    for seqs in (1..=total).collect::<Vec<_>>().chunks(1_000) {
        message::Entity::insert_many(seqs.iter().map(|seq| message::ActiveModel {
            chat_id: Set(id),
            sender_id: Set(Some(bob)),
            content: Set(format!("m{seq}")),
            created_at: Set(now),
            seq: Set(*seq),
            ..Default::default()
        }))
        .exec(&app.db)
        .await
        .unwrap();
    }
    chat::Entity::update(chat::ActiveModel {
        id: Set(id),
        seq: Set(total),
        ..Default::default()
    })
    .exec(&app.db)
    .await
    .unwrap();
    let mut alice = app.authorized(&app.login("alice").await).await;
    let unread = |contacts: Value| contacts[0]["unread"].clone();
    let ask = json!({"type": "get_contacts", "data": {}});
    assert_eq!(unread(alice.ask(ask.clone()).await), json!(UNREAD_WINDOW));
    let tenth_last = message::Entity::find()
        .filter(message::Column::ChatId.eq(id))
        .filter(message::Column::Seq.eq(total - 10))
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    alice.mark_read(&pk, tenth_last.id).await;
    assert_eq!(unread(alice.ask(ask).await), json!(10));
}

backend_tests!(an_unread_count_looks_back_a_bounded_window => unread_window);

/// A client reconnecting in a loop costs its contacts nothing: a return
/// within the grace (3 s) is no news, and the departure that lasts is
/// announced once.
#[actix_rt::test]
async fn a_reconnect_storm_is_not_news() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    let (_, bob, pk) = app.pair("alice", "bob").await;
    let mut a = app.authorized(&app.login("alice").await).await;
    let bob_token = app.login("bob").await;
    let mut b = app.authorized(&bob_token).await;
    let online = json!({"type": "presence", "data": {"pk": pk, "user_id": bob, "online": true}});
    assert_eq!(a.recv().await, online);
    // Each cycle waits until the server has seen the socket go (bob then
    // has no session at all); each gap lasts a few milliseconds, far
    // below the grace.
    for _ in 0..10 {
        drop(b);
        wait_until(|| async { app.stats().await.sessions == 1 }).await;
        b = app.authorized(&bob_token).await;
    }
    a.nothing_before_pong().await;
    // Gone for good: announced once, after the grace.
    drop(b);
    assert_eq!(
        a.recv().await,
        json!({"type": "presence", "data": {"pk": pk, "user_id": bob, "online": false}})
    );
    a.nothing_before_pong().await;
}

#[actix_rt::test]
async fn a_password_change_closes_the_users_sessions() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    let (_, _, pk) = app.pair("alice", "bob").await;
    let token = app.login("alice").await;
    let mut a = app.authorized(&token).await;
    let mut b = app.authorized(&app.login("bob").await).await;
    let mut res = app
        .http
        .post(app.url("/api/password/"))
        .bearer_auth(&token)
        .send_json(&json!({"old_password": common::PASSWORD, "new_password": "another good one"}))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let body: Value = res.json().await.unwrap();
    assert!(body["token"].as_str().is_some());
    let reason = a.expect_close().await.expect("close reason");
    assert_eq!(
        (reason.code, reason.description.as_deref()),
        (CloseCode::Policy, Some("token revoked"))
    );
    // The old token is dead; Bob is unaffected.
    let mut again = app.ws("/chat").await;
    again.recv().await;
    let answer = again
        .request(json!({"type": "authorization", "data": {"token": token}}))
        .await;
    assert_eq!(answer["data"]["message"], "Invalid token provided");
    assert_eq!(b.recv_type("presence").await["data"]["online"], false);
    let contact = b
        .request(json!({"type": "get_contact", "data": {"id": pk}}))
        .await;
    assert_eq!(contact["type"], "get_contact_response");
}

async fn revoked_elsewhere(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    app.pair("alice", "bob").await;
    let mut a = app.authorized(&app.login("alice").await).await;
    let mut b = app.authorized(&app.login("bob").await).await;
    // As `chat-server user deactivate` / `set-password` do: straight in the database.
    chat_server::accounts::set_active(&app.db, "alice", false)
        .await
        .unwrap();
    chat_server::accounts::set_password_of(&app.db, "bob", "a changed password".into())
        .await
        .unwrap();
    for ws in [&mut a, &mut b] {
        let started = Instant::now();
        let reason = ws.expect_close().await.expect("close reason");
        assert_eq!(
            (reason.code, reason.description.as_deref()),
            (CloseCode::Policy, Some("token revoked"))
        );
        // The bound is the 5 s sweep interval, plus 4 s for a loaded machine.
        assert!(
            started.elapsed() <= Duration::from_secs(9),
            "{}: {:?}",
            backend.name(),
            started.elapsed()
        );
    }
}

backend_tests!(revocations_made_by_another_process_close_sessions_within_the_sweep => revoked_elsewhere);

/// B5 with its timers shortened (the defaults, 10 s and 30 s, are the same
/// code with other numbers): pings every second, dropped after 3 s.
const QUICK_HEARTBEAT: [(&str, &str); 2] =
    [("HEARTBEAT_SECONDS", "1"), ("CLIENT_TIMEOUT_SECONDS", "3")];

#[actix_rt::test]
async fn a_silent_client_is_dropped_after_the_client_timeout() {
    let app = TestApp::spawn_with(&Backend::Sqlite, &QUICK_HEARTBEAT).await;
    app.pair("alice", "bob").await;
    let token = app.login("alice").await;
    // Before the authorization frame, the last the server hears from us:
    // its silence is counted from then or later.
    let last_heard = Instant::now();
    let mut ws = app.authorized(&token).await;
    // Read, but answer no ping: the server hears nothing after the authorization.
    let dropped_after = loop {
        match ws.next_event_unanswered(Duration::from_secs(60)).await {
            common::Event::Close(reason) => {
                assert_eq!(reason.map(|r| r.code), Some(CloseCode::Away));
                break last_heard.elapsed();
            }
            common::Event::Json(_) => continue,
            other => panic!("expected the server to close, got {other:?}"),
        }
    };
    // Never before the timeout; how late depends on the machine's load,
    // and the 60 s wait bounds it.
    assert!(
        dropped_after >= Duration::from_secs(3),
        "dropped after {dropped_after:?}"
    );
    wait_until(|| async { app.stats().await.sessions == 0 }).await;
}

#[actix_rt::test]
async fn ping_frames_keep_a_quiet_client_alive() {
    let app = TestApp::spawn_with(&Backend::Sqlite, &QUICK_HEARTBEAT).await;
    app.pair("alice", "bob").await;
    let mut ws = app.authorized(&app.login("alice").await).await;
    // Five pings answered, a second apart: past the 3 s after which a
    // silent client is dropped, with nothing but pongs from this one.
    ws.answer_pings(5).await;
    assert_eq!(
        ws.request(json!({"type": "ping", "data": {}})).await,
        json!({"type": "pong", "data": {}})
    );
}

#[actix_rt::test]
async fn a_client_that_stops_reading_is_dropped_without_slowing_others() {
    let app = TestApp::spawn_with(
        &Backend::Sqlite,
        &[
            ("OUTBOX_CAPACITY", "64"),
            ("RATE_LIMIT_BURST", "100000"),
            ("RATE_LIMIT_PER_SECOND", "100000"),
        ],
    )
    .await;
    let (_, _, pk) = app.pair("alice", "bob").await;
    let (_, _, pk2) = app.pair("carol", "dave").await;
    let mut a = app.authorized(&app.login("alice").await).await;
    let mut stuck = app.authorized(&app.login("bob").await).await; // never reads from here on
    let mut c = app.authorized(&app.login("carol").await).await;
    let mut d = app.authorized(&app.login("dave").await).await;
    c.recv_type("presence").await;

    // Alice floods Bob with large messages; Bob's socket buffers fill, then
    // his queue. Her session owes her two frames per message, an answer and
    // an echo, and her queue (64 frames, as Bob's) must never be the one
    // that overflows, however slowly this test's thread gets to read: she
    // reads until at most 48 are owed. (Both frames count: the answer comes
    // from the writer, the echo through the ChatServer's mailbox, which may
    // lag behind by any number of messages on a loaded machine, so counting
    // answers alone bounds nothing.)
    let text = "z".repeat(3900);
    let mut owed = 0;
    for i in 0..6000 {
        if i == 600 {
            // Bob's buffers are filling and the ChatServer keeps pushing
            // to him: Carol and Dave are not held up meanwhile (it takes
            // milliseconds; 3 s is the margin for a loaded machine).
            let started = Instant::now();
            c.send(json!({"type": "message", "data": {"to": pk2, "content": "still fast?"}}))
                .await;
            assert_eq!(
                d.recv_type("message").await["data"]["data"]["content"],
                "still fast?"
            );
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{:?}",
                started.elapsed()
            );
        }
        // Bob's buffers hold a few thousand of these (the kernel's grow to
        // megabytes on loopback): the flood stops once his queue overflowed.
        if i > 600 && i % 200 == 0 && app.metric("chat_outbox_overflows_total").await > 0.0 {
            break;
        }
        while owed >= 48 {
            let frame = a.recv().await;
            if frame["type"] == "message_response" || frame["type"] == "message" {
                owed -= 1;
            }
        }
        a.send(json!({"type": "message", "data": {"to": pk, "content": text}}))
            .await;
        owed += 2;
    }

    // Bob was disconnected as a slow consumer (1008) rather than buffered without end.
    wait_until(|| async { app.metric("chat_outbox_overflows_total").await > 0.0 }).await;
    let reason = stuck.expect_close().await.expect("close reason");
    assert_eq!(reason.code, CloseCode::Policy);
}

/// The next frame of a raw client socket, which must be a JSON text frame.
async fn next_text(
    framed: &mut actix_codec::Framed<awc::BoxedSocket, actix_http::ws::Codec>,
) -> Value {
    use futures_util::StreamExt;
    match framed.next().await {
        Some(Ok(actix_http::ws::Frame::Text(bytes))) => serde_json::from_slice(&bytes).unwrap(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

async fn churn(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    app.pair("alice", "bob").await;
    let token = app.login("alice").await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (port, token) = (app.port, token.clone());
        tasks.push(actix_rt::spawn(async move {
            let client = awc::Client::default();
            let mut authorized = 0;
            for _ in 0..100 {
                let url = format!("ws://127.0.0.1:{port}/chat?token={token}");
                let (_, mut framed) = client.ws(url).connect().await.expect("connect");
                assert_eq!(next_text(&mut framed).await["type"], "info");
                let auth = next_text(&mut framed).await;
                assert_eq!(
                    auth,
                    json!({"type": "authorization_response", "data": {"status": "success"}})
                );
                authorized += 1;
            }
            authorized
        }));
    }
    let mut authorized = 0;
    for task in tasks {
        authorized += task.await.unwrap();
    }
    assert_eq!(authorized, 1000, "every cycle authorized");
    // Every one of those sessions registered and unregistered: nothing is left.
    wait_until(|| async {
        let stats = app.stats().await;
        stats.sessions == 0 && stats.users == 0
    })
    .await;
    assert_eq!(app.metric("chat_sessions_authorized").await, 0.0);
}

#[actix_rt::test]
async fn a_thousand_connect_disconnect_cycles_leave_the_maps_empty() {
    churn(&Backend::Sqlite).await;
}
