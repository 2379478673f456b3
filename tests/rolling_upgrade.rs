//! A rolling upgrade across the Redis envelope's versions (bus/envelope.rs,
//! "Versions"): an instance of this release beside one of the releases
//! before the version field. The older instance is played by a plain Redis
//! client that registers the way those releases did (liveness value `1`)
//! and speaks their format byte for byte.

use futures_util::StreamExt;
use redis::AsyncCommands;
use serde_json::{json, Value};

use crate::common::{self, require_redis_url, Backend, TestApp, TestDatabase};

/// What the instance published next on `channel`'s subscription.
async fn next_payload(
    messages: &mut (impl futures_util::Stream<Item = redis::Msg> + Unpin),
) -> Vec<u8> {
    tokio::time::timeout(common::TIMEOUT, messages.next())
        .await
        .expect("a publication within TIMEOUT")
        .expect("the subscription is open")
        .get_payload_bytes()
        .to_vec()
}

#[actix_rt::test]
#[ignore = "needs TEST_POSTGRES_URL and TEST_REDIS_URL; run with --include-ignored"]
async fn an_older_instance_and_this_one_read_each_other() {
    let url = require_redis_url();
    let client = redis::Client::open(url.as_str()).expect("a Redis URL");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis");
    let prefix = common::redis_prefix();
    let old_alive = format!("{prefix}:instance:old:alive");
    // The old instance is alive before this one starts.
    let _: () = redis
        .sadd(format!("{prefix}:instances"), "old")
        .await
        .expect("register the old instance");
    let _: () = redis
        .set_ex(&old_alive, 1, 60)
        .await
        .expect("the old instance's liveness");

    let backend = Backend::postgres();
    let db = TestDatabase::create(&backend).await;
    let extra = [
        ("REDIS_URL", url.as_str()),
        ("REDIS_PREFIX", prefix.as_str()),
    ];
    let mut app = TestApp::spawn_on(&backend, &db.url, &extra).await;
    app.wait_redis(true).await;
    app.drop_redis_keys(&url, &prefix);
    let (_, bob, pk) = app.pair("alice", "bob").await;
    let mut alice = app.authorized(&app.login("alice").await).await;
    let mut bob_ws = app.authorized(&app.login("bob").await).await;
    alice.recv_type("presence").await;

    // It states the newest version it reads where the old one stated 1.
    let alive: Vec<String> = redis
        .keys(format!("{prefix}:instance:*:alive"))
        .await
        .expect("the liveness keys");
    let mine: Vec<&String> = alive.iter().filter(|k| **k != old_alive).collect();
    assert_eq!(mine.len(), 1, "{alive:?}");
    let stated: String = redis.get(mine[0]).await.expect("its liveness value");
    assert_eq!(stated, "3");

    let mut subscriber = client.get_async_pubsub().await.expect("a subscriber");
    let channel = format!("{prefix}:conv:{}", pk.replace('-', ""));
    subscriber
        .subscribe(&channel)
        .await
        .expect("subscribe to the conversation");
    let mut published = subscriber.into_on_message();

    // This instance writes what the old one reads: version 1, no version field.
    let send =
        |n: usize| json!({"type": "message", "data": {"to": pk, "content": format!("m{n}")}});
    alice.send(send(0)).await;
    let payload = next_payload(&mut published).await;
    assert!(
        payload.starts_with(b"S "),
        "a version-1 envelope: {}",
        String::from_utf8_lossy(&payload)
    );
    let first = bob_ws.recv_type("message").await["data"]["data"]["id"].clone();
    // A read mark, which version 3 sends as `M`, goes as the old
    // instance's frame.
    bob_ws
        .send(json!({"type": "read", "data": {"id": pk, "up_to": first}}))
        .await;
    let payload = String::from_utf8(next_payload(&mut published).await).expect("UTF-8");
    let fields: Vec<&str> = payload.splitn(6, ' ').collect();
    let [kind, _origin, chat, user, own_len, frames] = fields[..] else {
        panic!("a C envelope: {payload}");
    };
    let (own, others) = frames.split_at(own_len.parse().expect("the length of its own frame"));
    let read = json!({"type": "read", "data": {"pk": pk, "user_id": bob, "up_to": first}});
    assert_eq!(
        (kind, chat, user),
        ("C", pk.replace('-', "").as_str(), bob.to_string().as_str())
    );
    for frame in [own, others] {
        assert_eq!(serde_json::from_str::<Value>(frame).expect("JSON"), read);
    }

    // What the old instance writes reaches this one's sessions: version 1,
    // and versions 2 and 3 from instances of later releases; a newer version
    // is ignored (the version-1 frame after it comes next).
    let typing = |n: i64| json!({"type": "typing", "data": {"pk": pk, "user_id": bob, "n": n}});
    let chat = pk.replace('-', "");
    for envelope in [
        format!("C old {chat} - - {}", typing(1)),
        format!("2 C old {chat} - - {}", typing(2)),
        format!("3 C old {chat} - - {}", typing(3)),
        format!("4 C old {chat} - - {}", typing(4)),
        format!("C old {chat} - - {}", typing(5)),
    ] {
        let _: () = redis
            .publish(&channel, &envelope)
            .await
            .expect("publish as the old instance");
        // The test's own subscription hears it too.
        assert_eq!(next_payload(&mut published).await, envelope.as_bytes());
    }
    for n in [1, 2, 3, 5] {
        assert_eq!(alice.recv_type("typing").await, typing(n));
    }

    // The old instance is gone: within a heartbeat or two (5 s each) this
    // one writes version 3. Messages are the probe, a bounded number.
    let _: () = redis.del(&old_alive).await.expect("the old instance stops");
    let mut upgraded = None;
    for n in 1..=60 {
        alice.send(send(n)).await;
        let payload = next_payload(&mut published).await;
        if payload.starts_with(b"3 S ") {
            upgraded = Some(n);
            break;
        }
        assert!(
            payload.starts_with(b"S "),
            "{}",
            String::from_utf8_lossy(&payload)
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let upgraded = upgraded.expect("version 3 within 60 probes (15 s)");
    // Bob has every message up to that one.
    let last = loop {
        let message: Value = bob_ws.recv_type("message").await;
        assert_eq!(message["data"]["pk"], pk);
        if message["data"]["data"]["content"] == format!("m{upgraded}") {
            break message["data"]["data"]["id"].clone();
        }
    };
    // Now a read mark goes as the reader and how far.
    bob_ws
        .send(json!({"type": "read", "data": {"id": pk, "up_to": last}}))
        .await;
    let payload = String::from_utf8(next_payload(&mut published).await).expect("UTF-8");
    assert!(
        payload.starts_with("3 M ") && payload.ends_with(&format!(" {chat} {bob}:{last}")),
        "{payload}"
    );
}
