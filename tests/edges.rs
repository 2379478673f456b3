//! Behaviours at the edges that no other suite pins: storage under pressure
//! and failure, read marks, contact order, throttle windows, field and
//! paging bounds, close codes, and unparseable floods.

use crate::common;

use std::time::Duration;

use chat_server::chat::protocol::{ChatId, UserId};
use chat_server::chat::writer::{MessageWriter, NewMessage, StoreError, Stored};
use chat_server::metrics::Metrics;
use common::{wait_until, Backend, TestApp};
use entity::{chat_member, message};
use sea_orm::{ConnectionTrait, EntityTrait, PaginatorTrait, TransactionTrait};
use serde_json::{json, Value};

#[actix_rt::test]
async fn a_full_writer_queue_answers_server_busy_and_loses_nothing_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("chat.db").display());
    let app = TestApp::spawn_on(
        &Backend::Sqlite,
        &url,
        &[
            ("MESSAGE_QUEUE_CAPACITY", "2"),
            ("RATE_LIMIT_BURST", "1000"),
        ],
    )
    .await;
    let (_, _, pk) = app.pair("alice", "bob").await;
    let mut alice = app.authorized(&app.login("alice").await).await;
    // Another connection holds SQLite's write lock: the writer waits on it.
    let blocker = sea_orm::Database::connect(url.as_str()).await.unwrap();
    let lock = blocker.begin().await.unwrap();
    lock.execute_unprepared("CREATE TABLE write_lock (x INTEGER)")
        .await
        .unwrap();
    // More than one batch (512) and the queue (2) can hold: some must be refused.
    const SENT: usize = 520;
    for i in 0..SENT {
        alice
            .send(json!({"type": "message", "data": {"to": pk, "content": format!("m{i}")}}))
            .await;
    }
    let busy = json!({"type": "message_response", "data": {"status": "error", "code": "rate_limited", "message": "server busy; message not stored, resend it"}});
    let (mut refused, mut acked) = (0, 0);
    let mut lock = Some(lock);
    // Refusals come at once; acknowledgements only after the lock is gone.
    while refused + acked < SENT {
        let reply = alice.recv_type("message_response").await;
        if reply == busy {
            refused += 1;
            if let Some(lock) = lock.take() {
                lock.rollback().await.unwrap();
            }
        } else {
            assert_eq!(reply["data"]["status"], "success", "{reply}");
            assert!(lock.is_none(), "acknowledged while the database was locked");
            acked += 1;
        }
    }
    assert!(refused >= SENT - 512 - 2, "{refused} refused");
    let stored = message::Entity::find().count(&app.db).await.unwrap();
    assert_eq!(stored as usize, acked, "every accepted message is stored");
}

async fn failed_batches_retry_one_by_one(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice, _, pk) = app.pair("alice", "bob").await;
    let chat = ChatId(pk.parse().unwrap());
    let metrics = Metrics::default();
    let (writer, _task) = MessageWriter::with_capacity(
        app.db.clone(),
        app.chat_server.clone().recipient(),
        metrics.clone(),
        16,
    );
    let new = |chat: ChatId, content: &str| NewMessage {
        chat,
        sender: UserId(alice),
        content: content.into(),
        client_id: None,
        reply_to: None,
        attachments: Vec::new(),
    };
    // One batch (submitted before the writer runs): the middle message
    // names no conversation, which has no row to lock and no `seq` to
    // take, so the batch insert fails whole.
    let pending = [
        writer.store(new(chat, "first")).unwrap(),
        writer
            .store(new(ChatId(uuid::Uuid::new_v4()), "orphan"))
            .unwrap(),
        writer.store(new(chat, "last")).unwrap(),
    ];
    let mut results = Vec::new();
    for p in pending {
        results.push(p.await.expect("an answer for every message"));
    }
    assert!(matches!(&results[0], Ok(Stored::New(m)) if m.message.content == "first"));
    assert!(
        matches!(&results[1], Err(StoreError::Database(_))),
        "{:?}",
        results[1]
    );
    assert!(matches!(&results[2], Ok(Stored::New(m)) if m.message.content == "last"));
    assert_eq!(
        message::Entity::find().count(&app.db).await.unwrap(),
        2,
        "{}",
        backend.name()
    );
    // Through the retry, not three batches that happened to be separate.
    let text = metrics.render(Default::default());
    assert!(
        text.contains("chat_store_batch_retries_total 1\n"),
        "{text}"
    );
}

backend_tests!(a_failed_batch_is_retried_one_message_at_a_time => failed_batches_retry_one_by_one);

/// A conversation's row deleted (by an operator: the server never deletes
/// one) takes its messages with it, and nothing of another's: by the
/// messages' foreign key on SQLite and MySQL, by a trigger on PostgreSQL,
/// where the writer's lock on the row does the key's check (migration
/// m20261212_000001).
async fn deleted_conversation_takes_its_messages(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice, _, gone) = app.pair("alice", "bob").await;
    let mut others = Vec::new();
    for (name, first) in [("carol", "Carol"), ("dave", "Dave")] {
        let other = app.create_user(name, first, "Brown").await;
        let (chat, _) = chat_server::accounts::direct_chat(&app.db, alice, other)
            .await
            .unwrap();
        others.push(chat.id.to_string());
    }
    let [kept, last] = <[String; 2]>::try_from(others).unwrap();
    let mut ws = app.authorized(&app.login("alice").await).await;
    let send =
        |pk: &str, text: &str| json!({"type": "message", "data": {"to": pk, "content": text}});
    for (pk, text) in [(&gone, "one"), (&kept, "two"), (&gone, "three")] {
        ws.send(send(pk, text)).await;
        let ack = ws.recv_type("message_response").await;
        assert_eq!(ack["data"]["status"], "success", "{ack}");
    }
    let delete = |pk: &str| {
        let (db, id) = (app.db.clone(), pk.parse::<uuid::Uuid>().unwrap());
        async move {
            let deleted = entity::chat::Entity::delete_by_id(id).exec(&db).await;
            deleted.unwrap().rows_affected
        }
    };
    assert_eq!(delete(&gone).await, 1);
    let left: Vec<(String, String)> = message::Entity::find()
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.chat_id.to_string(), m.content))
        .collect();
    assert_eq!(
        left,
        [(kept.clone(), "two".to_string())],
        "{}",
        backend.name()
    );

    // Undone, the key is back and does the same; done again over it (a
    // downgrade, then an upgrade), the trigger again.
    use migration::MigratorTrait;
    let undo = common::migrations_from("m20261212_000001_postgres_messages_conversation_check");
    migration::Migrator::down(&app.db, Some(undo))
        .await
        .unwrap();
    assert_eq!(delete(&kept).await, 1);
    assert_eq!(message::Entity::find().count(&app.db).await.unwrap(), 0);
    migration::Migrator::up(&app.db, None).await.unwrap();
    ws.send(send(&last, "four")).await;
    let ack = ws.recv_type("message_response").await;
    assert_eq!(ack["data"]["status"], "success", "{ack}");
    assert_eq!(delete(&last).await, 1);
    let left = message::Entity::find().count(&app.db).await.unwrap();
    assert_eq!(left, 0, "{}", backend.name());
}

backend_tests!(a_deleted_conversation_takes_its_messages => deleted_conversation_takes_its_messages);

async fn resends_and_new_messages_in_one_batch(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice, _, pk) = app.pair("alice", "bob").await;
    let (_, _, other) = app.pair("carol", "dave").await;
    let (chat, other) = (ChatId(pk.parse().unwrap()), ChatId(other.parse().unwrap()));
    let metrics = Metrics::default();
    let (writer, _task) = MessageWriter::with_capacity(
        app.db.clone(),
        app.chat_server.clone().recipient(),
        metrics.clone(),
        16,
    );
    let fallbacks = || {
        let text = metrics.render(Default::default());
        let line = text
            .lines()
            .find(|l| l.starts_with("chat_store_plain_fallbacks_total "))
            .map(str::to_owned);
        line.unwrap_or_else(|| panic!("{text}"))
    };
    let new = |chat: ChatId, content: &str, client_id: Option<&str>| NewMessage {
        chat,
        sender: UserId(alice),
        content: content.into(),
        client_id: client_id.map(Into::into),
        reply_to: None,
        attachments: Vec::new(),
    };
    let first = writer
        .store(new(chat, "first", Some("c-1")))
        .unwrap()
        .await
        .unwrap();
    let Ok(Stored::New(first)) = first else {
        panic!("{first:?}")
    };
    // A batch of plain messages is stored in one trip on SQLite.
    assert_eq!(fallbacks(), "chat_store_plain_fallbacks_total 0");
    // One batch (submitted before the writer runs again): a resend of the
    // first, new messages with and without a client_id, and one for a
    // second conversation between them.
    let pending = [
        writer.store(new(chat, "second", None)).unwrap(),
        writer.store(new(chat, "first", Some("c-1"))).unwrap(),
        writer.store(new(other, "elsewhere", Some("c-1"))).unwrap(),
        writer.store(new(chat, "third", Some("c-3"))).unwrap(),
    ];
    let mut got = Vec::new();
    for p in pending {
        got.push(match p.await.expect("an answer") {
            Ok(Stored::New(p)) => ("new", p.message.content, p.message.seq),
            Ok(Stored::Duplicate(m)) => ("resend", m.content, m.seq),
            other => panic!("{other:?}"),
        });
    }
    assert_eq!(
        got,
        [
            ("new", "second".to_string(), 2),
            ("resend", "first".to_string(), first.message.seq),
            ("new", "elsewhere".to_string(), 1),
            ("new", "third".to_string(), 3),
        ],
        "{}",
        backend.name()
    );
    // On SQLite the resend met the client_id's unique index in the one
    // trip, which stored nothing (no seq was taken: 2 and 3 above), and
    // the general path stored the batch; the connection goes on.
    let expected = match backend.name() {
        "sqlite" => "chat_store_plain_fallbacks_total 1",
        _ => "chat_store_plain_fallbacks_total 0",
    };
    assert_eq!(fallbacks(), expected);
    let fourth = writer.store(new(chat, "fourth", Some("c-4"))).unwrap();
    match fourth.await.expect("an answer") {
        Ok(Stored::New(p)) => {
            assert_eq!((p.message.content.as_str(), p.message.seq), ("fourth", 4))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fallbacks(), expected);
    assert_eq!(message::Entity::find().count(&app.db).await.unwrap(), 5);
}

backend_tests!(resends_and_new_messages_share_a_batch => resends_and_new_messages_in_one_batch);

async fn two_writers_one_client_id(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice, _, pk) = app.pair("alice", "bob").await;
    let chat = ChatId(pk.parse().unwrap());
    // Two instances' writers on one database, the same resend sent to both.
    let (first, _a) = MessageWriter::with_capacity(
        app.db.clone(),
        app.chat_server.clone().recipient(),
        Metrics::default(),
        16,
    );
    let (second, _b) = MessageWriter::with_capacity(
        app.db.clone(),
        app.chat_server.clone().recipient(),
        Metrics::default(),
        16,
    );
    for round in 0..20 {
        let new = || NewMessage {
            chat,
            sender: UserId(alice),
            content: format!("round {round}"),
            client_id: Some(format!("resend-{round}")),
            reply_to: None,
            attachments: Vec::new(),
        };
        let (x, y) = (first.store(new()).unwrap(), second.store(new()).unwrap());
        let (x, y) = futures_util::join!(x, y);
        let id = |r: Result<Stored, StoreError>| match r {
            Ok(stored) => stored.message().expect("a message").id,
            Err(e) => panic!("round {round}: {e}"),
        };
        assert_eq!(id(x.unwrap()), id(y.unwrap()), "round {round}");
    }
    assert_eq!(
        message::Entity::find().count(&app.db).await.unwrap(),
        20,
        "{}",
        backend.name()
    );
}

backend_tests!(a_resend_stored_by_two_instances_at_once_is_one_message => two_writers_one_client_id);

/// `user`'s read mark in conversation `pk`, as stored.
async fn stored_mark(app: &TestApp, pk: &str, user: i64) -> Option<i64> {
    let chat = pk.parse::<uuid::Uuid>().expect("a conversation's id");
    chat_member::Entity::find_by_id((chat, user))
        .one(&app.db)
        .await
        .expect("the membership is read")
        .expect("a member")
        .last_read_message_id
}

#[actix_rt::test]
async fn read_marks_are_checked_and_never_move_backwards() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    let (_, bob, pk) = app.pair("alice", "bob").await;
    let mut alice = app.authorized(&app.login("alice").await).await;
    let mut bob_ws = app.authorized(&app.login("bob").await).await;
    let mut ids = Vec::new();
    for text in ["one", "two"] {
        alice
            .send(json!({"type": "message", "data": {"to": pk, "content": text}}))
            .await;
        ids.push(alice.recv_type("message_response").await["data"]["id"].clone());
    }
    bob_ws
        .send(json!({"type": "read", "data": {"id": pk, "up_to": -1}}))
        .await;
    assert_eq!(
        bob_ws.recv_type("read_response").await,
        json!({"type": "read_response", "data": {"status": "error", "code": "invalid", "message": "up_to must be a message id"}})
    );
    bob_ws
        .send(json!({"type": "read", "data": {"id": pk, "up_to": ids[1]}}))
        .await;
    bob_ws.recv_type("read_response").await;
    bob_ws
        .send(json!({"type": "read", "data": {"id": pk, "up_to": ids[0]}}))
        .await;
    assert_eq!(
        bob_ws.recv_type("read_response").await["data"]["status"],
        "success"
    );
    let mark = stored_mark(&app, &pk, bob).await;
    assert_eq!(
        mark.map(Value::from),
        Some(ids[1].clone()),
        "not moved back"
    );
    bob_ws
        .send(json!({"type": "get_contacts", "data": {}}))
        .await;
    let contacts = bob_ws.recv_type("get_contacts_response").await;
    assert_eq!(contacts["data"][0]["unread"], 0);
}

#[actix_rt::test]
async fn contacts_are_listed_newest_activity_first() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    let (alice, _, with_bob) = app.pair("alice", "bob").await;
    let mut others = Vec::new();
    for name in ["carol", "dave"] {
        let id = app.create_user(name, &common::capitalize(name), "X").await;
        let (chat, _) = chat_server::accounts::direct_chat(&app.db, alice, id)
            .await
            .unwrap();
        others.push(chat.id.to_string());
    }
    let (with_carol, with_dave) = (&others[0], &others[1]);
    let mut ws = app.authorized(&app.login("alice").await).await;
    for to in [with_carol, &with_bob] {
        ws.send(json!({"type": "message", "data": {"to": to, "content": "hi"}}))
            .await;
        ws.recv_type("message_response").await;
    }
    ws.send(json!({"type": "get_contacts", "data": {}})).await;
    let contacts = ws.recv_type("get_contacts_response").await;
    let order: Vec<&str> = contacts["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["pk"].as_str().unwrap())
        .collect();
    // The last message first; a conversation with none comes last.
    assert_eq!(order, [with_bob.as_str(), with_carol, with_dave]);
}

#[actix_rt::test]
async fn a_login_lock_ends_with_its_window() {
    let app = TestApp::spawn_with(
        &Backend::Sqlite,
        &[("LOGIN_MAX_ATTEMPTS", "2"), ("LOGIN_WINDOW_SECONDS", "2")],
    )
    .await;
    app.pair("alice", "bob").await;
    let login = |password: &'static str| {
        let app = &app;
        async move {
            app.http
                .post(app.url("/api/login/"))
                .send_form(&[("username", "alice"), ("password", password)])
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(login("wrong").await, 400);
    assert_eq!(login("wrong").await, 400);
    assert_eq!(login(common::PASSWORD).await, 429);
    wait_until(|| async { login(common::PASSWORD).await == 200 }).await;
}

#[actix_rt::test]
async fn registration_fields_and_user_pages_have_bounds() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    let register = |body: Value| {
        let app = &app;
        async move {
            let mut res = app
                .http
                .post(app.url("/api/register/"))
                .send_json(&body)
                .await
                .unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    let long = "x".repeat(151);
    let names =
        json!({"non_field_errors": ["email must be at most 254 characters, names at most 150"]});
    for body in [
        json!({"username": "erin", "password": "a fine password", "first_name": long}),
        json!({"username": "erin", "password": "a fine password", "last_name": long}),
        json!({"username": "erin", "password": "a fine password", "email": format!("{}@x.io", "e".repeat(250))}),
    ] {
        assert_eq!(register(body).await, (400, names.clone()));
    }
    assert_eq!(
        register(json!({"username": long, "password": "a fine password"})).await,
        (
            400,
            json!({"username": ["Ensure this field has between 1 and 150 characters."]})
        )
    );
    let (status, body) = register(json!({"username": "erin", "password": "a fine password"})).await;
    assert_eq!(status, 201);
    let token = body["token"].as_str().unwrap().to_string();
    let bounds = json!({"detail": "page must be between 1 and 100, page_size between 1 and 100"});
    for query in ["page=0", "page=101", "page_size=0", "page_size=101"] {
        let mut res = app
            .http
            .get(app.url(&format!("/api/users/?{query}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 400, "{query}");
        assert_eq!(res.json::<Value>().await.unwrap(), bounds, "{query}");
    }
    let mut res = app
        .http
        .get(app.url("/api/users/?page=1&page_size=100"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["count"], 1);
}

#[actix_rt::test]
async fn a_client_close_is_answered_and_a_protocol_error_closes_with_1002() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    app.pair("alice", "bob").await;
    let mut ws = app.authorized(&app.login("alice").await).await;
    ws.send_message(actix_http::ws::Message::Close(Some(
        actix_http::ws::CloseCode::Normal.into(),
    )))
    .await;
    let reason = ws.expect_close().await.expect("a close frame");
    assert_eq!(reason.code, actix_http::ws::CloseCode::Normal);
    wait_until(|| async { app.stats().await.sessions == 0 }).await;

    // A frame with a reserved opcode breaks the protocol.
    let mut raw = common::RawSocket::connect(app.port).await;
    // FIN + opcode 0x3 (reserved), masked, empty payload.
    raw.send_raw(&[0x83, 0x80, 1, 2, 3, 4]).await;
    assert_eq!(raw.close_code().await, 1002);
}

#[actix_rt::test]
async fn frames_that_are_no_request_over_the_rate_limit_get_no_answer() {
    use actix_http::ws::{Item, Message};
    let app = TestApp::spawn_with(
        &Backend::Sqlite,
        &[
            ("RATE_LIMIT_BURST", "3"),
            ("RATE_LIMIT_PER_SECOND", "1"),
            ("MAX_FRAME_BYTES", "2048"),
        ],
    )
    .await;
    let mut ws = app.ws("/chat").await;
    ws.recv().await; // info
                     // Three of each kind: not JSON, binary, not UTF-8, over the size limit
                     // (below the 4 × that closes the socket).
    for _ in 0..3 {
        ws.send_text("not json").await;
        ws.send_message(Message::Binary(vec![1u8, 2, 3].into()))
            .await;
        ws.send_message(Message::Continuation(Item::FirstText(vec![0xffu8].into())))
            .await;
        ws.send_message(Message::Continuation(Item::Last(vec![0x7du8].into())))
            .await;
        ws.send_text(&"x".repeat(3000)).await;
    }
    // Ping until a token is back (1 a second); pings refused meanwhile are
    // answered `ping_response` rate_limited, the other frames not at all.
    let mut answers = Vec::new();
    'pinging: loop {
        ws.send(json!({"type": "ping", "data": {}})).await;
        while let common::Event::Json(frame) = ws.next_event(Duration::from_millis(1100)).await {
            match frame["type"].as_str() {
                Some("pong") => break 'pinging,
                Some("ping_response") => assert_eq!(frame["data"]["code"], "rate_limited"),
                _ => answers.push(frame),
            }
        }
    }
    // The burst (3) is answered; a stall of over a second between the
    // frames could refill one token more, never all.
    assert!(
        (3..=4).contains(&answers.len()),
        "only the burst is answered: {answers:?}"
    );
    assert!(
        answers.iter().all(|a| a["type"] == "bad_request"),
        "{answers:?}"
    );
    // The burst went to the first three frames, in order.
    let said = |i: usize| answers[i]["data"]["message"].as_str().unwrap_or_default();
    assert!(
        said(0).starts_with("frame is not valid JSON"),
        "{answers:?}"
    );
    assert_eq!(
        said(1),
        "binary frames are not supported; send JSON in text frames"
    );
    assert_eq!(said(2), "frame is not valid UTF-8");
}

async fn batch_ids_match_their_rows(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice, bob, pk) = app.pair("alice", "bob").await;
    let chat = ChatId(pk.parse().unwrap());
    // Two instances' writers committing batches into one table at once: each
    // answer's id must be the row that holds that very message.
    let writers = [
        MessageWriter::with_capacity(
            app.db.clone(),
            app.chat_server.clone().recipient(),
            Metrics::default(),
            1024,
        ),
        MessageWriter::with_capacity(
            app.db.clone(),
            app.chat_server.clone().recipient(),
            Metrics::default(),
            1024,
        ),
    ];
    let mut pending = Vec::new();
    for round in 0..10 {
        for (w, (writer, _)) in writers.iter().enumerate() {
            for i in 0..30 {
                let sender = if w == 0 { alice } else { bob };
                let content = format!("w{w} r{round} m{i}");
                let new = NewMessage {
                    chat,
                    sender: UserId(sender),
                    content: content.clone(),
                    client_id: Some(format!("c-{w}-{round}-{i}")),
                    reply_to: None,
                    attachments: Vec::new(),
                };
                pending.push((content, writer.store(new).unwrap()));
            }
        }
        tokio::task::yield_now().await;
    }
    let mut ids = std::collections::HashSet::new();
    let mut seqs = Vec::new();
    for (content, answer) in pending {
        let stored = match answer.await.unwrap() {
            Ok(Stored::New(posted)) => posted.message,
            other => panic!("{content}: {other:?}"),
        };
        assert_eq!(stored.content, content);
        let row = message::Entity::find_by_id(stored.id)
            .one(&app.db)
            .await
            .unwrap()
            .expect("the acknowledged id exists");
        assert_eq!(
            row.content,
            content,
            "{}: id {} holds another message",
            backend.name(),
            stored.id
        );
        assert_eq!(
            row.seq,
            stored.seq,
            "{}: the answer's seq is the row's",
            backend.name()
        );
        assert!(ids.insert(stored.id));
        seqs.push(stored.seq);
    }
    assert_eq!(ids.len(), 600);
    // One conversation, two writers: its events are numbered 1..=600, no
    // gap and no number twice, and the conversation's seq is the last.
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=600).collect::<Vec<i64>>(), "{}", backend.name());
    let conversation = entity::chat::Entity::find_by_id(chat.0)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conversation.seq, 600);
}

backend_tests!(concurrent_batches_answer_each_message_with_its_own_row => batch_ids_match_their_rows);

/// The server's end of every connection it accepted has `TCP_NODELAY`:
/// with Nagle's algorithm, a frame written while the client had not yet
/// acknowledged the previous one waited for that ACK, which a client that
/// had just sent something (a read mark) delays by up to 40 ms
/// (BENCHMARKS.md "TCP_NODELAY on the clients' connections"). The server
/// runs in this process, so its sockets are this process's descriptors.
#[cfg(target_os = "linux")]
#[actix_rt::test]
async fn every_accepted_connection_sends_without_delay() {
    use std::mem::ManuallyDrop;
    use std::net::TcpStream;
    use std::os::fd::FromRawFd;

    let app = TestApp::spawn(&Backend::Sqlite).await;
    app.pair("alice", "bob").await;
    let token = app.login("alice").await;
    let mut ws = app.authorized(&token).await;
    assert_eq!(
        ws.request(json!({"type": "ping", "data": {}})).await,
        json!({"type": "pong", "data": {}})
    );
    let mut accepted = 0;
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let entry = entry.unwrap();
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: ManuallyDrop never closes the descriptor, and only
        // getsockname, getpeername and getsockopt are called on it. One that
        // another thread closes meanwhile (a REST connection ending) makes
        // them fail, and it is skipped.
        let socket = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
        let ours =
            socket.local_addr().is_ok_and(|a| a.port() == app.port) && socket.peer_addr().is_ok();
        if let (true, Ok(nodelay)) = (ours, socket.nodelay()) {
            accepted += 1;
            assert!(nodelay, "fd {fd} delays small writes");
        }
    }
    // The WebSocket at least, which is still open.
    assert!(accepted >= 1);
    drop(ws);
}

/// A read mark goes no further than the conversation's newest message: one
/// past it is stored, and pushed, as that message, so what comes later
/// arrives unread and nobody is told it was read before it was sent; in a
/// conversation without messages a mark moves nothing.
async fn marks_past_the_end(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, bob, pk) = app.pair("alice", "bob").await;
    let mut a = app.authorized(&app.login("alice").await).await;
    let bob_token = app.login("bob").await;
    let mut b = app.authorized(&bob_token).await;
    let mut b2 = app.authorized(&bob_token).await;
    let read = |up_to: i64| json!({"type": "read", "data": {"id": pk, "up_to": up_to}});
    let answer = b.ask(read(1)).await;
    assert_eq!(answer, json!({"status": "success", "pk": pk, "up_to": 1}));
    for ws in [&mut a, &mut b2] {
        let frames = ws.frames_before_pong().await;
        assert!(frames.iter().all(|f| f["type"] != "read"), "{frames:?}");
    }
    let first = a
        .ask(json!({"type": "message", "data": {"to": pk, "content": "one"}}))
        .await["id"]
        .as_i64()
        .unwrap();
    b2.recv_type("message").await;
    let beyond = first + 1_000_000;
    let answer = b.ask(read(beyond)).await;
    assert_eq!(
        answer,
        json!({"status": "success", "pk": pk, "up_to": beyond}),
        "{}",
        backend.name()
    );
    let pushed = json!({"type": "read", "data": {"pk": pk, "user_id": bob, "up_to": first}});
    assert_eq!(a.recv_type("read").await, pushed, "{}", backend.name());
    assert_eq!(b2.recv_type("read").await, pushed, "{}", backend.name());
    let mark = stored_mark(&app, &pk, bob).await;
    assert_eq!(mark, Some(first), "{}", backend.name());
    a.ask(json!({"type": "message", "data": {"to": pk, "content": "two"}}))
        .await;
    let contacts = b.ask(json!({"type": "get_contacts", "data": {}})).await;
    assert_eq!(contacts[0]["unread"], 1, "{}", backend.name());
}

backend_tests!(a_read_mark_goes_no_further_than_the_newest_message => marks_past_the_end);
