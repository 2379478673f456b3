//! Two instances on a real Redis Cluster (three masters, one replica each,
//! started here on loopback ports): messages, presence, groups and
//! revocation cross as on one Redis; when the master owning a
//! conversation's channel dies, its replica takes over, delivery resumes
//! within `FAILOVER_BOUND`, and the history holds every acknowledged message
//! exactly once; and the same when the channel's slot moves to another
//! master (Redis drops the sharded subscriptions with SUNSUBSCRIBE).
//!
//! They need `redis-server` and `redis-cli` (7+, for sharded pub/sub) and a
//! PostgreSQL database (`TEST_POSTGRES_URL`) the two instances share, so
//! they are ignored by a bare `cargo test`; CI runs them.

use crate::common;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::redis_cluster::{instances_on, RedisCluster};
use common::{redis_prefix, Backend, Event, TestDatabase, WsClient};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde_json::json;

/// Longest time from a master's death to the first live delivery on its
/// slots: the cluster's failover (node timeout, then the replica's
/// election) plus the bridge's reconnection backoff.
const FAILOVER_BOUND: Duration = Duration::from_secs(15);

#[actix_rt::test]
#[ignore = "needs redis-server, redis-cli and TEST_POSTGRES_URL; run with --include-ignored"]
async fn messages_presence_groups_and_revocation_cross_a_cluster() {
    let cluster = RedisCluster::start();
    let db = TestDatabase::create(&Backend::postgres()).await;
    let (a, b) = instances_on(&cluster, &db, &redis_prefix()).await;
    let (alice, bob, pk) = a.pair("alice", "bob").await;
    let alice_token = a.login("alice").await;
    let bob_token = b.login("bob").await;

    // Presence crosses.
    let mut alice_a = a.authorized(&alice_token).await;
    let mut bob_b = b.authorized(&bob_token).await;
    assert_eq!(
        alice_a.recv().await,
        json!({"type": "presence", "data": {"pk": pk, "user_id": bob, "online": true}})
    );
    let contacts = alice_a
        .request(json!({"type": "get_contacts", "data": {}}))
        .await;
    assert_eq!(contacts["data"][0]["online"], true);

    // A message crosses, exactly once, to every session of both users.
    let mut alice_b = b.authorized(&alice_token).await;
    alice_a
        .send(
            json!({"type": "message", "data": {"to": pk, "content": "sharded", "client_id": "c1"}}),
        )
        .await;
    let ack = alice_a.recv_type("message_response").await;
    let pushed = |direction: &str| {
        json!({"type": "message", "data": {"pk": pk, "seq": 1, "data": {
        "direction": direction, "content": "sharded", "time": ack["data"]["time"],
        "id": ack["data"]["id"], "sender": alice, "client_id": "c1"}}})
    };
    assert_eq!(alice_a.recv().await, pushed("send"));
    assert_eq!(bob_b.recv().await, pushed("received"));
    assert_eq!(alice_b.recv().await, pushed("send"));

    // A burst keeps its order across instances.
    common::burst_arrives_in_order(&mut alice_a, &mut bob_b, &pk, 50).await;
    for _ in 0..50 {
        alice_b.recv_type("message").await;
    }
    common::only_barrier_follows(&mut alice_a, vec![&mut bob_b, &mut alice_b], &pk, "barrier")
        .await;

    // A group made on A reaches its members on B; a removal made on A stops
    // the removed member on B at once.
    let (carol, carol_token) = a.user("carol").await;
    common::have_written(&a.db, &[bob, carol], alice).await;
    let mut carol_b = b.authorized(&carol_token).await;
    let group = alice_a
        .ask_change(
            json!({"type": "create_group", "data": {"title": "Shards", "members": [bob, carol]}}),
        )
        .await;
    let group_pk = group["pk"].clone();
    for client in [&mut bob_b, &mut carol_b] {
        assert_eq!(
            client.recv_type("conversation").await["data"]["name"],
            "Shards"
        );
    }
    // Once: the change came on two channels (the conversation's before the
    // message below), and is applied once (the control channel's copy is
    // the unit test `each_change_is_applied_once`).
    common::only_barrier_follows(
        &mut alice_a,
        vec![&mut bob_b, &mut carol_b],
        group_pk.as_str().expect("a pk"),
        "barrier",
    )
    .await;
    alice_a
        .ask(json!({"type": "remove_member", "data": {"id": group_pk, "user_id": carol}}))
        .await;
    assert_eq!(
        carol_b.recv_type("conversation").await["data"]["removed"],
        true
    );
    alice_a
        .send(json!({"type": "message", "data": {"to": group_pk, "content": "after carol"}}))
        .await;
    assert_eq!(
        bob_b.recv_type("message").await["data"]["data"]["content"],
        "after carol"
    );
    // Bob's session on B got it: carol's, on B too, would have in the same step.
    carol_b.nothing_before_pong().await;

    // Offline crosses, to both conversations alice shares with bob.
    drop(bob_b);
    let mut offline = Vec::new();
    for _ in 0..2 {
        let presence = alice_a.recv_type("presence").await;
        assert_eq!(presence["data"]["online"], false, "{presence}");
        assert_eq!(presence["data"]["user_id"], bob, "{presence}");
        offline.push(presence["data"]["pk"].as_str().expect("a pk").to_string());
    }
    offline.sort();
    let mut shared = vec![pk.clone(), group_pk.as_str().expect("a pk").to_string()];
    shared.sort();
    assert_eq!(offline, shared);

    // A password change on A closes alice's session on B promptly.
    let changed = Instant::now();
    let (status, _) = a
        .rest(
            actix_web::http::Method::POST,
            "/api/password/",
            &alice_token,
            Some(json!({"old_password": common::PASSWORD, "new_password": "a changed password"})),
        )
        .await;
    assert_eq!(status, 200);
    alice_b.expect_closed_with(1008, "token revoked").await;
    assert!(
        changed.elapsed() < Duration::from_secs(4),
        "{:?}",
        changed.elapsed()
    );
}

/// Bob's side during the failover: every message frame, with when it came.
type Received = Rc<RefCell<Vec<(String, Instant)>>>;

fn read_messages(mut ws: WsClient, received: Received) {
    actix_web::rt::spawn(async move {
        loop {
            match ws.next_event(Duration::from_secs(60)).await {
                Event::Json(frame) if frame["type"] == "message" => {
                    let content = frame["data"]["data"]["content"]
                        .as_str()
                        .unwrap_or("")
                        .to_string();
                    received.borrow_mut().push((content, Instant::now()));
                }
                Event::Json(_) => {}
                _ => return,
            }
        }
    });
}

#[actix_rt::test]
#[ignore = "needs redis-server, redis-cli and TEST_POSTGRES_URL; run with --include-ignored"]
async fn a_master_failover_loses_nothing() {
    let cluster = RedisCluster::start();
    live_traffic_through(cluster, "the master died", |cluster, channel| {
        let victim = cluster.master_of(channel);
        cluster.kill(victim);
    })
    .await;
}

/// A conversation's slot moved to another master under live traffic: Redis
/// then drops the instances' sharded subscriptions to its channel with an
/// unsolicited SUNSUBSCRIBE, and each subscribes again on the new owner.
#[actix_rt::test]
#[ignore = "needs redis-server, redis-cli and TEST_POSTGRES_URL; run with --include-ignored"]
async fn a_slot_migration_loses_nothing() {
    let cluster = RedisCluster::start();
    live_traffic_through(cluster, "the slot moved", |cluster, channel| {
        let to = cluster.migrate_slot(channel);
        assert_eq!(cluster.master_of(channel), to);
    })
    .await;
}

/// Alice sends to Bob on another instance, one message at a time, and
/// `fault` strikes the conversation channel's node a second in: live
/// delivery must resume within `FAILOVER_BOUND`, the history hold every
/// acknowledged message exactly once, and Bob catch up on what the fault
/// cost him live.
async fn live_traffic_through(
    mut cluster: RedisCluster,
    what: &str,
    fault: impl FnOnce(&mut RedisCluster, &str),
) {
    let mut fault = Some(fault);
    let db = TestDatabase::create(&Backend::postgres()).await;
    let prefix = redis_prefix();
    let (a, b) = instances_on(&cluster, &db, &prefix).await;
    let (_, _, pk) = a.pair("alice", "bob").await;
    let alice_token = a.login("alice").await;
    let bob_token = b.login("bob").await;
    let mut alice = a.authorized(&alice_token).await;
    let bob = b.authorized(&bob_token).await;
    let received: Received = Rc::default();
    read_messages(bob, received.clone());

    // The conversation's channel.
    let channel = format!("{prefix}:conv:{}", pk.replace('-', ""));

    let mut acked: HashMap<String, i64> = HashMap::new();
    let mut sent_at: HashMap<String, Instant> = HashMap::new();
    let mut struck: Option<Instant> = None;
    let mut resumed: Option<Duration> = None;
    let started = Instant::now();
    for n in 0.. {
        let content = format!("m{n}");
        alice
            .send(json!({"type": "message", "data": {"to": pk, "content": content, "client_id": content}}))
            .await;
        sent_at.insert(content.clone(), Instant::now());
        let ack = alice.recv_type("message_response").await;
        assert_eq!(ack["data"]["client_id"], content.as_str(), "{ack}");
        let id = ack["data"]["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("acknowledged: {ack}"));
        acked.insert(content, id);

        if struck.is_none() && started.elapsed() > Duration::from_secs(1) {
            assert!(!received.borrow().is_empty(), "live delivery before {what}");
            if let Some(fault) = fault.take() {
                fault(&mut cluster, &channel);
            }
            struck = Some(Instant::now());
        }
        if let Some(at) = struck {
            // Resumed: a message sent after the fault arrived live.
            let first_after = received
                .borrow()
                .iter()
                .find(|(content, _)| sent_at[content] > at)
                .map(|(_, when)| *when - at);
            if let Some(after) = first_after {
                resumed.get_or_insert(after);
            }
            if resumed.is_some_and(|r| at.elapsed() > r + Duration::from_secs(1))
                || at.elapsed() > FAILOVER_BOUND + Duration::from_secs(5)
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let Some(resumed) = resumed else {
        let port = cluster.live_ports()[0];
        panic!(
            "live delivery never resumed after {what}; the cluster says:\n{}",
            RedisCluster::text(port, redis::cmd("CLUSTER").arg("NODES"))
        );
    };
    eprintln!(
        "{} messages, delivery resumed {resumed:?} after {what}",
        acked.len()
    );
    assert!(resumed < FAILOVER_BOUND, "resumed after {resumed:?}");
    let survivors: Vec<u16> = cluster.live_ports();
    cluster.wait_healthy(&survivors);

    // Every acknowledged message is stored exactly once, with its id.
    let stored = entity::message::Entity::find()
        .filter(entity::message::Column::ChatId.eq(uuid::Uuid::parse_str(&pk).unwrap()))
        .order_by_asc(entity::message::Column::Id)
        .all(&a.db)
        .await
        .expect("the history");
    let history: HashMap<String, i64> = stored.iter().map(|m| (m.content.clone(), m.id)).collect();
    assert_eq!(stored.len(), history.len(), "a message stored twice");
    assert_eq!(
        history, acked,
        "the history is exactly what was acknowledged"
    );

    // Live, bob got each message at most once, in order; what the fault
    // cost him live he gets by catching up after the last one he saw.
    let live: Vec<String> = received.borrow().iter().map(|(c, _)| c.clone()).collect();
    let unique: HashSet<&String> = live.iter().collect();
    assert_eq!(unique.len(), live.len(), "a message delivered twice");
    let ids: Vec<i64> = live.iter().map(|c| acked[c]).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "live order: {live:?}");
    let mut bob_again = b.authorized(&bob_token).await;
    let before_fault = *ids.first().expect("bob got messages live");
    let mut seen: HashSet<String> = HashSet::from([live[0].clone()]);
    let mut after = before_fault;
    loop {
        let page = bob_again
            .ask(json!({"type": "get_messages", "data": {"id": pk, "after": after}}))
            .await;
        for message in page["messages"].as_array().expect("messages") {
            seen.insert(message["content"].as_str().expect("content").to_string());
            after = after.max(message["id"].as_i64().expect("an id"));
        }
        if page["has_more"] != true {
            break;
        }
    }
    let missing: Vec<&String> = acked
        .iter()
        .filter(|(_, id)| **id >= before_fault)
        .map(|(c, _)| c)
        .filter(|c| !seen.contains(*c))
        .collect();
    assert!(missing.is_empty(), "not caught up: {missing:?}");
}
