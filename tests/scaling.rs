//! Two instances on one database and one Redis behave like one server:
//! messages and presence cross, a crashed instance's users go offline, a
//! member removed mid-stream gets nothing after her removal, and Redis
//! going away loses nothing acknowledged.
//!
//! These need a server database (`TEST_POSTGRES_URL` / `TEST_MYSQL_URL`) and
//! Redis (`TEST_REDIS_URL`, and `redis-server` for the restart test), so
//! they are ignored by a bare `cargo test`; CI runs them with
//! `--include-ignored`, and then a missing service fails them.

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{redis_prefix, require_redis_url, Backend, RedisServer, TestApp, TestDatabase};
use serde_json::json;

async fn pair_of_instances(
    backend: &Backend,
    redis: &str,
    db: &TestDatabase,
) -> (TestApp, TestApp) {
    pair_of_instances_with(backend, redis, db, &[]).await
}

/// `pair_of_instances`, each with the settings `extra` besides.
async fn pair_of_instances_with(
    backend: &Backend,
    redis: &str,
    db: &TestDatabase,
    extra: &[(&str, &str)],
) -> (TestApp, TestApp) {
    let mut apps = common::instances_with(backend, redis, db, 2, extra).await;
    let b = apps.pop().expect("two instances");
    let a = apps.pop().expect("two instances");
    (a, b)
}

/// Alice's group with bob and carol, made on instance `a`: their ids, the
/// sessions alice on A, bob on A, bob on B and carol on B, the pk, and the
/// id of a message alice sent, which has reached B's sessions (B has the
/// conversation's room).
struct TrioAcross {
    ids: [i64; 3],
    alice_on_a: common::WsClient,
    bob_on_a: common::WsClient,
    bob_on_b: common::WsClient,
    carol_on_b: common::WsClient,
    pk: serde_json::Value,
    id: serde_json::Value,
}

async fn trio_across(a: &TestApp, b: &TestApp) -> TrioAcross {
    let ([(alice, _), (bob, bob_token), (carol, carol_token)], mut alice_on_a, pk) = a.trio().await;
    let bob_on_a = a.authorized(&bob_token).await;
    let mut bob_on_b = b.authorized(&bob_token).await;
    let mut carol_on_b = b.authorized(&carol_token).await;
    let id = alice_on_a
        .ask(json!({"type": "message", "data": {"to": pk, "content": "read me"}}))
        .await["id"]
        .clone();
    for ws in [&mut bob_on_b, &mut carol_on_b] {
        assert_eq!(ws.recv_type("message").await["data"]["data"]["id"], id);
    }
    TrioAcross {
        ids: [alice, bob, carol],
        alice_on_a,
        bob_on_a,
        bob_on_b,
        carol_on_b,
        pk,
        id,
    }
}

async fn messages_and_presence_cross(backend: &Backend) {
    let redis = &require_redis_url();
    let db = TestDatabase::create(backend).await;
    let (a, b) = pair_of_instances(backend, redis, &db).await;
    let (alice, bob, pk) = a.pair("alice", "bob").await;
    let alice_token = a.login("alice").await;
    let bob_token = b.login("bob").await;

    let mut alice_on_a = a.authorized(&alice_token).await;
    let mut bob_on_b = b.authorized(&bob_token).await;
    assert_eq!(
        alice_on_a.recv().await,
        json!({"type": "presence", "data": {"pk": pk, "user_id": bob, "online": true}}),
        "{}: presence crosses",
        backend.name()
    );
    let contacts = alice_on_a
        .request(json!({"type": "get_contacts", "data": {}}))
        .await;
    assert_eq!(
        contacts["data"][0]["online"], true,
        "online is known across instances"
    );

    let mut alice_on_b = b.authorized(&alice_token).await;
    alice_on_a
        .send(
            json!({"type": "message", "data": {"to": pk, "content": "across", "client_id": "x1"}}),
        )
        .await;
    let ack = alice_on_a.recv_type("message_response").await;
    let pushed = |direction: &str| {
        json!({"type": "message", "data": {"pk": pk, "seq": 1, "data": {
        "direction": direction, "content": "across", "time": ack["data"]["time"],
        "id": ack["data"]["id"], "sender": alice, "client_id": "x1"}}})
    };
    assert_eq!(alice_on_a.recv().await, pushed("send"));
    assert_eq!(bob_on_b.recv().await, pushed("received"));
    assert_eq!(alice_on_b.recv().await, pushed("send"));
    // And back, from B to A.
    bob_on_b
        .send(json!({"type": "message", "data": {"to": pk, "content": "back"}}))
        .await;
    assert_eq!(bob_on_b.recv().await["type"], "message_response");
    assert_eq!(bob_on_b.recv().await["data"]["data"]["direction"], "send");
    assert_eq!(
        alice_on_a.recv_type("message").await["data"]["data"]["direction"],
        "received"
    );
    assert_eq!(
        alice_on_b.recv_type("message").await["data"]["data"]["content"],
        "back"
    );
    // Nobody got anything twice.
    common::only_barrier_follows(
        &mut alice_on_a,
        vec![&mut bob_on_b, &mut alice_on_b],
        &pk,
        "barrier",
    )
    .await;

    // A burst from A arrives on B in the order it was sent.
    common::burst_arrives_in_order(&mut alice_on_a, &mut bob_on_b, &pk, 100).await;

    drop(bob_on_b);
    assert_eq!(
        alice_on_a.recv().await,
        json!({"type": "presence", "data": {"pk": pk, "user_id": bob, "online": false}})
    );
    let contacts = alice_on_a
        .request(json!({"type": "get_contacts", "data": {}}))
        .await;
    assert_eq!(contacts["data"][0]["online"], false);
}

backend_tests!(@server messages_and_presence_cross_instances => messages_and_presence_cross);

async fn crashed_instance_goes_offline(backend: &Backend) {
    let redis = &require_redis_url();
    let db = TestDatabase::create(backend).await;
    let prefix = redis_prefix();
    let _keys = common::RedisKeys::new(redis, &prefix);
    let a = TestApp::spawn_on(
        backend,
        &db.url,
        &[("REDIS_URL", redis), ("REDIS_PREFIX", prefix.as_str())],
    )
    .await;
    let (_, bob, pk) = a.pair("alice", "bob").await;
    // Instance B is a real process, so it can be killed with SIGKILL.
    let port = common::free_port();
    let files = common::attachments_dir(&db.url)
        .expect("a server database")
        .display()
        .to_string();
    let mut b = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .env_clear()
        .envs([
            ("DATABASE_URL", db.url.as_str()),
            ("REDIS_URL", redis),
            ("REDIS_PREFIX", prefix.as_str()),
            ("SECRET_KEY", common::TEST_SECRET),
            ("PORT", &port.to_string()),
            ("ATTACHMENTS_DIR", &files),
            ("ATTACHMENTS_SHARED", "1"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut alice = a.authorized(&a.login("alice").await).await;
    let token = a.login("bob").await;
    // Bob connects once B's Redis bridge is up: a session registered
    // before it is announced only by B's resync, up to a heartbeat later.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = a
            .http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send();
        if let Ok(mut res) = metrics.await {
            let text = res.body().await.unwrap_or_default();
            if String::from_utf8_lossy(&text).contains("chat_redis_up 1\n") {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "instance B's bridge did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("ws://127.0.0.1:{port}/chat?token={token}");
    let (_, bob_ws) = a.http.ws(url).connect().await.expect("instance B is ready");
    assert_eq!(
        alice.recv().await,
        json!({"type": "presence", "data": {"pk": pk, "user_id": bob, "online": true}})
    );
    b.kill().unwrap();
    b.wait().unwrap();
    let killed = Instant::now();
    match alice.next_event(Duration::from_secs(30)).await {
        common::Event::Json(frame) => {
            assert_eq!(
                frame,
                json!({"type": "presence", "data": {"pk": pk, "user_id": bob, "online": false}})
            );
        }
        other => panic!(
            "{}: expected bob offline within 30 s, got {other:?}",
            backend.name()
        ),
    }
    let took = killed.elapsed();
    // The stated bound is 20 s (15 s liveness TTL + one 5 s heartbeat), plus
    // 5 s for a loaded machine.
    assert!(
        took <= Duration::from_secs(25),
        "stated bound is 20 s, took {took:?}"
    );
    let contacts = alice
        .request(json!({"type": "get_contacts", "data": {}}))
        .await;
    assert_eq!(contacts["data"][0]["online"], false);
    drop(bob_ws);
}

backend_tests!(@server a_killed_instance_leaves_no_one_online => crashed_instance_goes_offline);

async fn redis_restart_loses_nothing(backend: &Backend) {
    let mut redis = RedisServer::start();
    let db = TestDatabase::create(backend).await;
    let (a, b) = pair_of_instances(backend, &redis.url(), &db).await;
    let (_, _, pk) = a.pair("alice", "bob").await;
    let mut alice = a.authorized(&a.login("alice").await).await;
    let mut bob = b.authorized(&b.login("bob").await).await;
    alice.recv_type("presence").await;

    let send = |text: &str| json!({"type": "message", "data": {"to": pk, "content": text}});
    alice.send(send("before")).await;
    let mut acked = vec![alice.recv_type("message_response").await["data"]["id"]
        .as_i64()
        .unwrap()];
    assert_eq!(
        bob.recv_type("message").await["data"]["data"]["content"],
        "before"
    );

    redis.stop();
    a.wait_redis(false).await;
    let ready = a.http.get(a.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503, "readiness reports Redis down");
    for text in ["during 1", "during 2", "during 3"] {
        alice.send(send(text)).await;
        let ack = alice.recv_type("message_response").await;
        assert_eq!(
            ack["data"]["status"], "success",
            "storing goes on without Redis"
        );
        acked.push(ack["data"]["id"].as_i64().unwrap());
    }

    assert!(redis.restart());
    a.wait_redis(true).await;
    b.wait_redis(true).await;
    // Subscriptions are back: live delivery resumes, and what Bob's
    // instance never heard comes first, in order (B7: the hole before the
    // first message it hears again is filled from the database).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sent = vec!["during 1", "during 2", "during 3"];
    let mut live = loop {
        alice.send(send("after")).await;
        sent.push("after");
        acked.push(
            alice.recv_type("message_response").await["data"]["id"]
                .as_i64()
                .unwrap(),
        );
        match bob.next_event(Duration::from_secs(1)).await {
            common::Event::Json(frame) if frame["type"] == "message" => {
                break vec![frame["data"]["data"]["content"].clone()];
            }
            _ => assert!(Instant::now() < deadline, "live delivery did not resume"),
        }
    };
    while live.len() < sent.len() {
        live.push(bob.recv_type("message").await["data"]["data"]["content"].clone());
    }
    assert_eq!(live, sent, "{}: live, in order, each once", backend.name());
    // Bob catches up from history: every acknowledged message is there, once.
    bob.send(json!({"type": "get_messages", "data": {"id": pk, "after": 0, "limit": 200}}))
        .await;
    let history = bob.recv_type("get_messages_response").await;
    let ids: Vec<i64> = history["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, acked, "{}", backend.name());
}

backend_tests!(@server redis_going_away_loses_no_acknowledged_message => redis_restart_loses_nothing);

async fn instances_starting_together(backend: &Backend) {
    let db = TestDatabase::create(backend).await;
    // On the heap: three startups' futures inline in this one, which the
    // test thread's 2 MiB stack holds, left too little for their polls.
    let start = || {
        Box::pin(chat_server::Application::build(common::settings(
            &db.url,
            &[],
        )))
    };
    let (a, b, c) = futures_util::join!(start(), start(), start());
    let apps: Vec<_> = [a, b, c]
        .into_iter()
        .map(|app| app.expect("every instance starts on the same fresh database"))
        .collect();
    // Each migration was applied exactly once, and the schema is whole.
    use migration::MigratorTrait;
    let applied = migration::Migrator::get_applied_migrations(apps[0].db())
        .await
        .unwrap();
    let names: Vec<String> = applied.iter().map(|m| m.name().to_string()).collect();
    let expected: Vec<String> = migration::Migrator::migrations()
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    assert_eq!(names, expected, "{}", backend.name());
    use sea_orm::{EntityTrait, PaginatorTrait};
    assert_eq!(
        entity::user::Entity::find()
            .count(apps[1].db())
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        entity::message::Entity::find()
            .count(apps[2].db())
            .await
            .unwrap(),
        0
    );
}

backend_tests!(@server instances_starting_at_once_migrate_one_at_a_time => instances_starting_together);

async fn graceful_stop_tells_the_other_instance(backend: &Backend) {
    let redis = &require_redis_url();
    let db = TestDatabase::create(backend).await;
    let (a, mut b) = pair_of_instances(backend, redis, &db).await;
    let (_, bob, pk) = a.pair("alice", "bob").await;
    let mut alice = a.authorized(&a.login("alice").await).await;
    let mut bob_on_b = b.authorized(&b.login("bob").await).await;
    assert_eq!(alice.recv().await["data"]["online"], true);
    let stopped = Instant::now();
    b.shutdown().await;
    let reason = bob_on_b.expect_close().await.expect("close reason");
    assert_eq!(reason.code, actix_http::ws::CloseCode::Away);
    assert_eq!(
        alice.recv().await,
        json!({"type": "presence", "data": {"pk": pk, "user_id": bob, "online": false}})
    );
    // Told by the stopping instance itself, not by the 15 s liveness expiry.
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopped.elapsed()
    );
    let contacts = alice
        .request(json!({"type": "get_contacts", "data": {}}))
        .await;
    assert_eq!(contacts["data"][0]["online"], false, "{}", backend.name());
}

backend_tests!(@server a_gracefully_stopped_instance_tells_the_others_at_once => graceful_stop_tells_the_other_instance);

async fn presence_after_a_redis_outage(backend: &Backend) {
    let mut redis = RedisServer::start();
    let db = TestDatabase::create(backend).await;
    let (a, b) = pair_of_instances(backend, &redis.url(), &db).await;
    let (alice, bob, with_bob) = a.pair("alice", "bob").await;
    let carol = a.create_user("carol", "Carol", "King").await;
    let (chat, _) = chat_server::accounts::direct_chat(&a.db, alice, carol)
        .await
        .unwrap();
    let with_carol = chat.id.to_string();
    let mut alice_on_a = a.authorized(&a.login("alice").await).await;
    let bob_on_b = b.authorized(&b.login("bob").await).await;
    assert_eq!(
        alice_on_a.recv_type("presence").await["data"],
        json!({"pk": with_bob, "user_id": bob, "online": true})
    );

    // While Redis is away, bob leaves and carol arrives, both on instance B.
    redis.stop();
    a.wait_redis(false).await;
    b.wait_redis(false).await;
    drop(bob_on_b);
    // Gone, and his departure announced on B (after its grace).
    common::wait_until(|| async {
        let stats = b.stats().await;
        stats.sessions == 0 && stats.leaving == 0
    })
    .await;
    let _carol_on_b = b.authorized(&b.login("carol").await).await;

    assert!(redis.restart());
    a.wait_redis(true).await;
    b.wait_redis(true).await;
    let mut seen = vec![
        alice_on_a.recv_type("presence").await["data"].clone(),
        alice_on_a.recv_type("presence").await["data"].clone(),
    ];
    seen.sort_by_key(|p| p["user_id"].as_i64());
    assert_eq!(
        seen,
        vec![
            json!({"pk": with_bob, "user_id": bob, "online": false}),
            json!({"pk": with_carol, "user_id": carol, "online": true}),
        ],
        "{}",
        backend.name()
    );
    let contacts = alice_on_a
        .ask(json!({"type": "get_contacts", "data": {}}))
        .await;
    let online = |pk: &str| {
        contacts
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["pk"] == pk)
            .unwrap()["online"]
            .clone()
    };
    assert_eq!(
        (online(&with_bob), online(&with_carol)),
        (json!(false), json!(true))
    );
}

backend_tests!(@server presence_is_right_again_after_a_redis_outage => presence_after_a_redis_outage);

async fn a_later_instance_sees_who_is_online(backend: &Backend) {
    let redis = require_redis_url();
    let db = TestDatabase::create(backend).await;
    let prefix = redis_prefix();
    let extra = [
        ("REDIS_URL", redis.as_str()),
        ("REDIS_PREFIX", prefix.as_str()),
    ];
    let mut a = TestApp::spawn_on(backend, &db.url, &extra).await;
    a.wait_redis(true).await;
    a.drop_redis_keys(&redis, &prefix);
    let (_, _, pk) = a.pair("alice", "bob").await;
    let _bob_on_a = a.authorized(&a.login("bob").await).await;
    // B starts after bob is online on A.
    let b = TestApp::spawn_on(backend, &db.url, &extra).await;
    b.wait_redis(true).await;
    let mut alice_on_b = b.authorized(&b.login("alice").await).await;
    let contacts = alice_on_b
        .request(json!({"type": "get_contacts", "data": {}}))
        .await;
    assert_eq!(contacts["data"][0]["pk"], pk.as_str());
    assert_eq!(contacts["data"][0]["online"], true, "{}", backend.name());
}

backend_tests!(@server an_instance_started_later_knows_who_is_online => a_later_instance_sees_who_is_online);

async fn two_instances_one_user(backend: &Backend) {
    let redis = &require_redis_url();
    let db = TestDatabase::create(backend).await;
    let (a, mut b) = pair_of_instances(backend, redis, &db).await;
    let (_, bob, pk) = a.pair("alice", "bob").await;
    let mut alice = a.authorized(&a.login("alice").await).await;
    let bob_token = a.login("bob").await;
    let mut bob_on_a = a.authorized(&bob_token).await;
    let _bob_on_b = b.authorized(&bob_token).await;
    alice.recv_type("presence").await;
    b.shutdown().await;
    // Had bob been reported offline, that presence frame would come before
    // the typing frame. One saying online may come too: B's news of bob's
    // session there, which under load can arrive after A's own; it
    // changes nothing and is skipped (the stress script met it once).
    bob_on_a
        .send(json!({"type": "typing", "data": {"id": pk}}))
        .await;
    let mut frame = alice.recv().await;
    while frame["type"] == "presence" {
        assert_eq!(frame["data"]["online"], true, "{}: {frame}", backend.name());
        frame = alice.recv().await;
    }
    assert_eq!(
        frame,
        json!({"type": "typing", "data": {"pk": pk, "user_id": bob}}),
        "{}",
        backend.name()
    );
    let contacts = alice
        .request(json!({"type": "get_contacts", "data": {}}))
        .await;
    assert_eq!(contacts["data"][0]["online"], true);
}

backend_tests!(@server a_user_on_two_instances_stays_online_when_one_stops => two_instances_one_user);

/// Read marks in a group of at most 100 members reach every member's
/// sessions on the other instance too (a conversation's marks of one batch
/// in one bus event), the reader's own session there included, and never
/// the session that asked.
async fn read_marks_cross(backend: &Backend) {
    let redis = &require_redis_url();
    let db = TestDatabase::create(backend).await;
    let (a, b) = pair_of_instances(backend, redis, &db).await;
    let TrioAcross {
        ids: [alice, bob, _],
        mut alice_on_a,
        mut bob_on_a,
        mut bob_on_b,
        mut carol_on_b,
        pk,
        id,
    } = trio_across(&a, &b).await;
    for ws in [&mut alice_on_a, &mut bob_on_a] {
        ws.send(json!({"type": "read", "data": {"id": pk, "up_to": id}}))
            .await;
    }
    let heard = [
        (&mut alice_on_a, vec![bob], true),
        (&mut bob_on_a, vec![alice], true),
        (&mut bob_on_b, vec![alice, bob], false),
        (&mut carol_on_b, vec![alice, bob], false),
    ];
    for (ws, readers, marked) in heard {
        ws.expect_reads(&pk, &id, &readers, marked).await;
    }
    // Every push has been seen: no other `read` stands before the pong (an
    // asker's own mark would have come with the pushes of its instance).
    for ws in [
        &mut alice_on_a,
        &mut bob_on_a,
        &mut bob_on_b,
        &mut carol_on_b,
    ] {
        let late = ws.frames_before_pong().await;
        assert!(late.iter().all(|f| f["type"] != "read"), "{late:?}");
    }
}

backend_tests!(@server read_marks_in_a_group_reach_every_member_on_the_other_instance => read_marks_cross);

/// A read mark in a group over 100 members reaches the reader's other
/// sessions only (C7), on the other instance too.
async fn large_group_read_marks_cross(backend: &Backend) {
    let redis = &require_redis_url();
    let db = TestDatabase::create(backend).await;
    let (a, b) = pair_of_instances(backend, redis, &db).await;
    let (alice, alice_token) = a.user("alice").await;
    let (bob, bob_token) = a.user("bob").await;
    let mut crowd = common::insert_users(&a.db, "crowd", 99).await;
    crowd.push(bob);
    common::have_written(&a.db, &crowd, alice).await;
    let mut alice_on_a = a.authorized(&alice_token).await;
    let large = alice_on_a
        .ask_change(json!({"type": "create_group", "data": {"title": "large", "members": crowd}}))
        .await["pk"]
        .clone();
    let sent = alice_on_a
        .ask(json!({"type": "message", "data": {"to": large, "content": "read me"}}))
        .await;
    // Bob on B first: A hears of it (alice sees him come online in their
    // direct conversation), then on A.
    let mut bob_on_b = b.authorized(&bob_token).await;
    alice_on_a.recv_type("presence").await;
    let mut bob_on_a = a.authorized(&bob_token).await;
    let answer = bob_on_a
        .ask(json!({"type": "read", "data": {"id": large, "up_to": sent["id"]}}))
        .await;
    assert_eq!(answer["status"], "success", "{}", backend.name());
    assert_eq!(
        bob_on_b.recv_type("read").await,
        json!({"type": "read", "data": {"pk": large, "user_id": bob, "up_to": sent["id"]}}),
        "{}",
        backend.name()
    );
    alice_on_a.nothing_before_pong().await;
}

backend_tests!(@server a_read_mark_in_a_large_group_reaches_the_readers_other_instance => large_group_read_marks_cross);

/// A read mark past its reader's fan-out budget (C12) reaches the reader's
/// other sessions only, on the other instance too: it crosses on the
/// control channel, where nobody else's session takes it.
async fn unshared_read_marks_cross(backend: &Backend) {
    let redis = &require_redis_url();
    let db = TestDatabase::create(backend).await;
    // A group of three costs 2 deliveries: the burst.
    let budget = [("FANOUT_PER_SECOND", "1")];
    let (a, b) = pair_of_instances_with(backend, redis, &db, &budget).await;
    let TrioAcross {
        ids: [_, bob, _],
        mut alice_on_a,
        mut bob_on_a,
        mut bob_on_b,
        mut carol_on_b,
        pk,
        id,
    } = trio_across(&a, &b).await;
    // His typing notice takes his budget; his mark is stored all the same.
    bob_on_a
        .send(json!({"type": "typing", "data": {"id": pk}}))
        .await;
    let answer = bob_on_a
        .ask(json!({"type": "read", "data": {"id": pk, "up_to": id}}))
        .await;
    assert_eq!(answer["status"], "success", "{}", backend.name());
    let own = json!({"type": "read", "data": {"pk": pk, "user_id": bob, "up_to": id}});
    assert_eq!(bob_on_b.recv_type("read").await, own, "{}", backend.name());
    // Both instances pushed it (A before publishing it): nobody else has it.
    for ws in [&mut alice_on_a, &mut carol_on_b] {
        ws.recv_type("typing").await;
        ws.nothing_before_pong().await;
    }
}

backend_tests!(@server a_read_mark_past_the_budget_reaches_only_the_readers_other_instance => unshared_read_marks_cross);

async fn revocation_crosses_instances(backend: &Backend) {
    let redis = &require_redis_url();
    let db = TestDatabase::create(backend).await;
    let (a, b) = pair_of_instances(backend, redis, &db).await;
    a.pair("alice", "bob").await;
    let token = a.login("alice").await;
    let mut alice_on_b = b.authorized(&token).await;
    let changed = Instant::now();
    let mut res = a
        .http
        .post(a.url("/api/password/"))
        .bearer_auth(&token)
        .send_json(&json!({"old_password": common::PASSWORD, "new_password": "a changed password"}))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200, "{:?}", res.body().await);
    alice_on_b.expect_closed_with(1008, "token revoked").await;
    // Promptly (through the bus; the sweep alone may take 5 s).
    assert!(
        changed.elapsed() < Duration::from_secs(4),
        "{:?}",
        changed.elapsed()
    );
}

backend_tests!(@server a_password_change_on_one_instance_closes_sessions_on_the_other => revocation_crosses_instances);

/// A sign-out on one instance closes the sessions on that token on the
/// other; the person's other device there stays.
async fn sign_out_crosses_instances(backend: &Backend) {
    let redis = &require_redis_url();
    let db = TestDatabase::create(backend).await;
    let (a, b) = pair_of_instances(backend, redis, &db).await;
    a.pair("alice", "bob").await;
    let (phone, laptop) = (a.login("alice").await, a.login("alice").await);
    let mut phone_on_b = b.authorized(&phone).await;
    let mut laptop_on_b = b.authorized(&laptop).await;
    let res = a
        .http
        .post(a.url("/api/logout/"))
        .bearer_auth(&phone)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    phone_on_b.expect_closed_with(1008, "token revoked").await;
    let pong = laptop_on_b
        .request(json!({"type": "ping", "data": {}}))
        .await;
    assert_eq!(pong, json!({"type": "pong", "data": {}}));
}

backend_tests!(@server signing_out_on_one_instance_closes_that_token_on_the_other => sign_out_crosses_instances);

/// A block made through one instance hides presence on the other, in a
/// group the two share: carol there hears alice come, bob does not.
async fn block_hides_presence_across(backend: &Backend) {
    let redis = &require_redis_url();
    let db = TestDatabase::create(backend).await;
    let (a, b) = pair_of_instances(backend, redis, &db).await;
    let (alice, alice_token) = a.user("alice").await;
    let (bob, bob_token) = a.user("bob").await;
    let (carol, carol_token) = a.user("carol").await;
    common::have_written(&a.db, &[alice, bob], carol).await;
    let mut carol_on_b = b.authorized(&carol_token).await;
    let created = carol_on_b
        .ask(json!({"type": "create_group", "data": {"title": "trio", "members": [alice, bob]}}))
        .await;
    let pk = created["pk"].as_str().expect("a group").to_string();
    let mut bob_on_b = b.authorized(&bob_token).await;
    let res = a
        .http
        .post(a.url("/api/blocks/"))
        .bearer_auth(&bob_token)
        .send_json(&json!({"user_id": alice}))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let _alice_on_a = a.authorized(&alice_token).await;
    loop {
        let frame = carol_on_b.recv_type("presence").await;
        if frame["data"] == json!({"pk": pk, "user_id": alice, "online": true}) {
            break;
        }
    }
    // Bob's frame would have been queued in the same step as carol's.
    bob_on_b.nothing_before_pong().await;
}

backend_tests!(@server a_block_on_one_instance_hides_presence_on_the_other => block_hides_presence_across);

/// Groups across instances: pushes, messages and typing cross; a member
/// removed on one instance stops hearing the group on the other at once and
/// gets `not_found` there; a member added on an instance where the group had
/// no one yet hears everything from then on.
async fn groups_across(backend: &Backend) {
    let redis = &require_redis_url();
    let db = TestDatabase::create(backend).await;
    let (a, b) = pair_of_instances(backend, redis, &db).await;
    let (alice_id, alice_token) = a.user("alice").await;
    let (bob, bob_token) = a.user("bob").await;
    let (carol, carol_token) = a.user("carol").await;
    let (dave, dave_token) = a.user("dave").await;
    let (frank, frank_token) = a.user("frank").await;
    let (erin, erin_token) = a.user("erin").await;
    common::have_written(&a.db, &[bob, carol, dave], alice_id).await;
    common::have_written(&a.db, &[frank], bob).await;
    let mut alice = a.authorized(&alice_token).await;
    let mut bob_b = b.authorized(&bob_token).await;
    let mut carol_b = b.authorized(&carol_token).await;
    let mut dave_b = b.authorized(&dave_token).await;
    let mut frank_a = a.authorized(&frank_token).await;

    let group = alice
        .ask(json!({"type": "create_group", "data": {"title": "Across", "members": [bob, carol]}}))
        .await;
    let pk = group["pk"].clone();
    for client in [&mut bob_b, &mut carol_b] {
        let push = client.recv_type("conversation").await;
        assert_eq!(push["data"]["name"], "Across", "{}", backend.name());
    }
    alice
        .send(json!({"type": "message", "data": {"to": pk, "content": "one"}}))
        .await;
    for client in [&mut bob_b, &mut carol_b] {
        let message = client.recv_type("message").await;
        assert_eq!(message["data"]["data"]["content"], "one");
        assert_eq!(message["data"]["data"]["direction"], "received");
    }
    carol_b
        .send(json!({"type": "typing", "data": {"id": pk}}))
        .await;
    assert_eq!(
        alice.recv_type("typing").await,
        json!({"type": "typing", "data": {"pk": pk, "user_id": carol}})
    );

    // Removed on A: carol, on B, is out at once.
    alice
        .ask(json!({"type": "remove_member", "data": {"id": pk, "user_id": carol}}))
        .await;
    let removed = carol_b.recv_type("conversation").await;
    assert_eq!(removed["data"]["removed"], true);
    assert_eq!(
        carol_b
            .ask(json!({"type": "message", "data": {"to": pk, "content": "hello?"}}))
            .await["code"],
        "not_found"
    );
    alice
        .send(json!({"type": "message", "data": {"to": pk, "content": "two"}}))
        .await;
    assert_eq!(
        bob_b.recv_type("message").await["data"]["data"]["content"],
        "two"
    );
    // Bob's session on B got it: carol's, on B too, would have in the same step.
    carol_b.nothing_before_pong().await;

    // Added on A: dave, on B (where the group has bob), hears the rest.
    alice
        .ask(json!({"type": "add_members", "data": {"id": pk, "members": [dave]}}))
        .await;
    dave_b.recv_type("conversation").await;
    alice
        .send(json!({"type": "message", "data": {"to": pk, "content": "three"}}))
        .await;
    assert_eq!(
        dave_b.recv_type("message").await["data"]["data"]["content"],
        "three"
    );

    // A group made on B with frank, alone on A: A subscribes before frank
    // hears of it, so a message right after reaches him.
    bob_b
        .send(json!({"type": "create_group", "data": {"title": "Second", "members": [frank]}}))
        .await;
    let second = frank_a.recv_type("conversation").await["data"]["pk"].clone();
    bob_b
        .send(json!({"type": "message", "data": {"to": second, "content": "fast"}}))
        .await;
    assert_eq!(
        frank_a.recv_type("message").await["data"]["data"]["content"],
        "fast"
    );

    // An invitation made on A reaches erin on B (she never wrote to
    // alice); she accepts there, and alice on A hears that she joined.
    let mut erin_b = b.authorized(&erin_token).await;
    let answer = alice
        .ask(json!({"type": "add_members", "data": {"id": pk, "members": [erin]}}))
        .await;
    assert_eq!(answer["invited"], json!([erin]));
    let invitation = erin_b.recv_type("invitation").await;
    assert_eq!(invitation["data"]["pk"], pk);
    assert_eq!(invitation["data"]["invited_by"]["user_id"], alice_id);
    let joined = erin_b
        .ask(json!({"type": "accept_invitation", "data": {"id": pk}}))
        .await;
    assert_eq!(joined["pk"], pk);
    assert_eq!(
        alice.recv_type("conversation").await["data"]["change"],
        json!({"type": "members_added", "user_ids": [erin], "by": erin})
    );

    // A block made on B reaches A through the bus, as fast as any change.
    let contacts = alice.ask(json!({"type": "get_contacts", "data": {}})).await;
    let direct = contacts
        .as_array()
        .and_then(|c| c.iter().find(|c| c["user_id"] == bob))
        .map(|c| c["pk"].clone())
        .expect("alice's direct conversation with bob");
    bob_b
        .ask(json!({"type": "block_user", "data": {"user_id": alice_id}}))
        .await;
    // Probing with one client_id stores at most one message meanwhile.
    let probe = json!({"type": "message",
                       "data": {"to": direct, "content": "hi bob", "client_id": "probe"}});
    let mut answer = alice.ask(probe.clone()).await;
    for _ in 0..100 {
        if answer["status"] == "error" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        answer = alice.ask(probe.clone()).await;
    }
    assert_eq!(
        answer["message"],
        "messages between you and this person are blocked"
    );
}

backend_tests!(@server groups_cross_instances => groups_across);

/// A member removed while Redis was away: the other instance missed the
/// change, and reloads memberships once Redis is back, so the removed
/// member is out there too.
async fn removal_during_an_outage(backend: &Backend) {
    let mut redis = RedisServer::start();
    let db = TestDatabase::create(backend).await;
    let (a, b) = pair_of_instances(backend, &redis.url(), &db).await;
    let (alice_id, alice_token) = a.user("alice").await;
    let (bob, bob_token) = a.user("bob").await;
    let (carol, carol_token) = a.user("carol").await;
    common::have_written(&a.db, &[bob, carol], alice_id).await;
    let mut alice = a.authorized(&alice_token).await;
    let mut bob_b = b.authorized(&bob_token).await;
    let mut carol_b = b.authorized(&carol_token).await;
    let group = alice
        .ask(json!({"type": "create_group", "data": {"title": "g", "members": [bob, carol]}}))
        .await;
    let pk = group["pk"].clone();
    carol_b.recv_type("conversation").await;
    let page = carol_b
        .ask(json!({"type": "get_messages", "data": {"id": pk, "limit": 1}}))
        .await;
    assert_eq!(page["has_more"], false, "carol is in: {page}");

    redis.stop();
    a.wait_redis(false).await;
    b.wait_redis(false).await;
    alice
        .ask(json!({"type": "remove_member", "data": {"id": pk, "user_id": carol}}))
        .await;
    // B cannot hear of the removal while Redis is down, so it authorizes
    // from the database: carol is refused there at once, bob still served.
    let not_found = json!({"status": "error", "code": "not_found",
                           "message": "conversation not found"});
    for request in [
        json!({"type": "message", "data": {"to": pk, "content": "still in?"}}),
        json!({"type": "get_messages", "data": {"id": pk, "limit": 1}}),
        json!({"type": "typing", "data": {"id": pk}}),
    ] {
        assert_eq!(carol_b.ask(request).await, not_found, "{}", backend.name());
    }
    let page = bob_b
        .ask(json!({"type": "get_messages", "data": {"id": pk, "limit": 1}}))
        .await;
    assert_eq!(page["has_more"], false, "bob is in: {page}");
    assert!(redis.restart());
    a.wait_redis(true).await;
    b.wait_redis(true).await;
    // Carol's session on B, which saw the group, is refused it soon after.
    let mut refused = false;
    for _ in 0..100 {
        let answer = carol_b
            .ask(json!({"type": "get_messages", "data": {"id": pk, "limit": 1}}))
            .await;
        if answer["code"] == "not_found" {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "{}: carol still in the group on B", backend.name());
    alice
        .send(json!({"type": "message", "data": {"to": pk, "content": "after"}}))
        .await;
    assert_eq!(
        bob_b.recv_type("message").await["data"]["data"]["content"],
        "after",
        "{}",
        backend.name()
    );
    // Carol's session hears nothing more of the group: bob's, on B too, got
    // the message, so hers would have it before her pong (other pushes,
    // such as the reload's presence, may come first).
    carol_b.send(json!({"type": "ping", "data": {}})).await;
    loop {
        let frame = carol_b.recv().await;
        if frame["type"] == "pong" {
            break;
        }
        assert_ne!(frame["type"], "message", "{frame}");
    }
}

backend_tests!(@server a_removal_during_a_redis_outage_reaches_every_instance => removal_during_an_outage);

/// The frames `ws` gets until the `conversation` push of `pk` whose
/// `change` is `carol`'s removal; returns how many messages came before.
/// Fails, rather than reading the stream forever, when the push has not
/// come within 1,000 frames (20 s of the stream).
async fn messages_until_removal(ws: &mut common::WsClient, pk: &str, carol: i64) -> usize {
    let mut messages = 0;
    for _ in 0..1_000 {
        let frame = ws.recv().await;
        match frame["type"].as_str() {
            Some("message") => messages += 1,
            Some("conversation")
                if frame["data"]["pk"] == pk
                    && frame["data"]["change"]["type"] == "member_removed"
                    && frame["data"]["change"]["user_id"] == carol =>
            {
                return messages;
            }
            _ => {}
        }
    }
    panic!("no removal push for {carol} after {messages} messages");
}

/// A member removed on one instance while another member streams messages
/// into the group through both: on each instance, the removed member's
/// session gets no message after the push that tells her she was removed
/// (the ChatServer drops her from the room in the same step), and from
/// then on the group is `not_found` to her.
#[actix_rt::test]
#[ignore = "needs TEST_POSTGRES_URL and TEST_REDIS_URL; run with --include-ignored"]
async fn a_member_removed_mid_stream_gets_no_message_after_her_removal() {
    let redis = require_redis_url();
    let backend = Backend::postgres();
    let db = TestDatabase::create(&backend).await;
    let (a, b) = pair_of_instances(&backend, &redis, &db).await;
    let mut users = Vec::new();
    for name in ["owner", "sender", "carol", "dave"] {
        users.push(a.create_user(name, "User", name).await);
    }
    let carol = users[2];
    common::have_written(&a.db, &users[1..], users[0]).await;
    let mut owner = common::authorized_at(&a.http, a.port, &a.login("owner").await).await;
    let created = owner
        .ask(json!({"type": "create_group", "data": {"title": "race", "members": users[1..]}}))
        .await;
    let pk = created["pk"].as_str().expect("a group").to_string();

    // Carol and Dave (the witness) on both instances; the sender streams
    // through both, alternately, until told to stop.
    let (carol_token, dave_token) = (a.login("carol").await, a.login("dave").await);
    let mut carol_on = Vec::new();
    let mut dave_on = Vec::new();
    for app in [&a, &b] {
        carol_on.push(common::authorized_at(&app.http, app.port, &carol_token).await);
        dave_on.push(common::authorized_at(&app.http, app.port, &dave_token).await);
    }
    let sender_token = a.login("sender").await;
    let mut senders = Vec::new();
    for app in [&a, &b] {
        senders.push(
            common::authorized_at(&app.http, app.port, &sender_token)
                .await
                .draining(),
        );
    }
    let streaming = std::rc::Rc::new(std::cell::Cell::new(true));
    let stream = {
        let (pk, streaming) = (pk.clone(), streaming.clone());
        actix_web::rt::spawn(async move {
            let mut n = 0usize;
            while streaming.get() {
                senders[n % 2]
                    .send(
                        json!({"type": "message", "data": {"to": pk, "content": format!("m{n}")}}),
                    )
                    .await;
                n += 1;
                // 50 a second: no reader here falls 1,024 frames behind
                // (OUTBOX_CAPACITY) while the test reads the others.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // The stream flows to both instances before the removal.
    for dave in dave_on.iter_mut() {
        for _ in 0..20 {
            dave.recv_type("message").await;
        }
    }

    let removed = owner
        .ask(json!({"type": "remove_member", "data": {"id": pk, "user_id": carol}}))
        .await;
    assert_eq!(
        removed["members"].as_array().map(Vec::len),
        Some(3),
        "{removed}"
    );
    for (carol_here, dave_here) in carol_on.iter_mut().zip(dave_on.iter_mut()) {
        let before = messages_until_removal(carol_here, &pk, carol).await;
        assert!(
            before >= 20,
            "carol got the stream until her removal: {before}"
        );
        // Dave, on the same instance, gets the removal and then messages of
        // the stream: the ChatServer handled those after it, and had carol
        // out of the room by then.
        messages_until_removal(dave_here, &pk, carol).await;
        for _ in 0..10 {
            dave_here.recv_type("message").await;
        }
        carol_here.nothing_before_pong().await;
    }
    streaming.set(false);
    tokio::time::timeout(common::TIMEOUT, stream)
        .await
        .expect("the stream stops within TIMEOUT")
        .expect("the stream");
    drop(owner);
    let page = carol_on[1]
        .request(json!({"type": "get_messages", "data": {"id": pk}}))
        .await;
    assert_eq!(page["data"]["code"], "not_found", "{page}");
}
