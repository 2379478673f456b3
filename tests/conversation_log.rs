//! The conversation log (PROTOCOL.md B7): every message has a `seq` in its
//! conversation, 1, 2, 3… in commit order; live pushes carry it and come in
//! its order; `sync` replays the events exactly as they went live; and a
//! client that catches up (`sync`, or the old `get_messages` `after`) after
//! any reconnect, on any instance, misses nothing and sees nothing twice.

use crate::common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chat_server::chat::writer::commit_gate;
use common::{
    authorized_at, require_redis_url, Backend, Event, ReleaseOnDrop, TestApp, TestDatabase,
    WsClient,
};
use entity::message;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde_json::{json, Value};

async fn send(ws: &mut WsClient, pk: &str, content: &str) -> Value {
    ws.send(json!({"type": "message", "data": {"to": pk, "content": content}}))
        .await;
    ws.recv_type("message_response").await["data"].clone()
}

async fn sync(ws: &mut WsClient, pk: &str, after_seq: i64, limit: Option<u64>) -> Value {
    let mut data = json!({"id": pk, "after_seq": after_seq});
    if let Some(limit) = limit {
        data["limit"] = json!(limit);
    }
    ws.ask(json!({"type": "sync", "data": data})).await
}

async fn sync_replays_live_frames(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, pk, mut alice, mut bob) = app.pair_online("alice", "bob").await;
    let mut live_alice = Vec::new();
    let mut live_bob = Vec::new();
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        let ack = send(&mut alice, &pk, text).await;
        assert_eq!(ack["status"], "success");
        let pushed = bob.recv_type("message").await;
        assert_eq!(pushed["data"]["seq"], json!(i + 1), "{}", backend.name());
        assert_eq!(pushed["data"]["data"]["id"], ack["id"]);
        live_bob.push(pushed);
        live_alice.push(alice.recv_type("message").await);
    }

    // Every event after 0, exactly as each of them received it live.
    let page = sync(&mut bob, &pk, 0, None).await;
    assert_eq!(
        page,
        json!({"pk": pk, "events": live_bob, "seq": 3, "has_more": false}),
        "{}",
        backend.name()
    );
    let page = sync(&mut alice, &pk, 0, None).await;
    assert_eq!(page["events"], json!(live_alice));

    // Paged, oldest first.
    let first = sync(&mut bob, &pk, 0, Some(2)).await;
    assert_eq!(first["events"], json!(live_bob[..2]));
    assert_eq!(
        (first["seq"].clone(), first["has_more"].clone()),
        (json!(3), json!(true))
    );
    let rest = sync(&mut bob, &pk, 2, Some(2)).await;
    assert_eq!(rest["events"], json!(live_bob[2..]));
    assert_eq!(rest["has_more"], false);
    let none = sync(&mut bob, &pk, 3, None).await;
    assert_eq!(
        none,
        json!({"pk": pk, "events": [], "seq": 3, "has_more": false})
    );

    // Contact items carry the conversation's latest seq.
    let contacts = bob.ask(json!({"type": "get_contacts", "data": {}})).await;
    assert_eq!(contacts[0]["seq"], 3);
    let contact = bob
        .ask(json!({"type": "get_contact", "data": {"id": pk}}))
        .await;
    assert_eq!(contact["seq"], 3);

    // Bad requests, and a conversation that is not theirs.
    let invalid = |message: &str| json!({"type": "sync_response", "data": {"status": "error", "code": "invalid", "message": message}});
    for (data, answer) in [
        (
            json!({"id": pk, "after_seq": -1}),
            invalid("after_seq must be 0 or more"),
        ),
        (
            json!({"id": pk, "after_seq": 0, "limit": 0}),
            invalid("limit must be between 1 and 200"),
        ),
        (json!({"id": pk}), invalid("missing field `after_seq`")),
        (
            json!({"id": uuid::Uuid::new_v4(), "after_seq": 0}),
            json!({"type": "sync_response", "data": {"status": "error", "code": "not_found", "message": "conversation not found"}}),
        ),
    ] {
        bob.send(json!({"type": "sync", "data": data})).await;
        assert_eq!(bob.recv_type("sync_response").await, answer);
    }
    let (_, _, other) = app.pair("carol", "dave").await;
    bob.send(json!({"type": "sync", "data": {"id": other, "after_seq": 0}}))
        .await;
    assert_eq!(
        bob.recv_type("sync_response").await["data"]["code"],
        "not_found"
    );
}

backend_tests!(sync_answers_the_events_exactly_as_they_went_live => sync_replays_live_frames);

/// The contents of a `get_messages` answer's messages, in its order.
fn contents(answer: &Value) -> Vec<String> {
    answer["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect()
}

async fn get_messages_after_reads_in_seq_order(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, pk) = app.pair("alice", "bob").await;
    let mut alice = app.authorized(&app.login("alice").await).await;
    let mut ids = Vec::new();
    for text in ["a", "b", "c", "d"] {
        ids.push(send(&mut alice, &pk, text).await["id"].as_i64().unwrap());
    }
    let page = |data: Value| json!({"type": "get_messages", "data": data});
    let after = alice.ask(page(json!({"id": pk, "after": ids[1]}))).await;
    assert_eq!(contents(&after), ["c", "d"], "{}", backend.name());
    // 0 (nothing seen yet) reads from the start; an id of another
    // conversation or a made-up one never skips a later message.
    let all = alice.ask(page(json!({"id": pk, "after": 0}))).await;
    assert_eq!(contents(&all), ["a", "b", "c", "d"]);
    let between = alice
        .ask(page(json!({"id": pk, "after": ids[3] + 1000})))
        .await;
    assert_eq!(contents(&between), Vec::<String>::new());
    let before = alice.ask(page(json!({"id": pk, "before": ids[2]}))).await;
    assert_eq!(contents(&before), ["a", "b"]);
}

backend_tests!(get_messages_after_an_id_reads_in_the_conversations_order => get_messages_after_reads_in_seq_order);

/// A message's id is never one a removed message had, and a batch of
/// several messages takes increasing ids in the order they were sent (on
/// SQLite the writer numbers them itself: `writer::commit::insert_rows`).
async fn ids_after_removed_messages(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, pk) = app.pair("alice", "bob").await;
    let mut alice = app.authorized(&app.login("alice").await).await;
    let mut ids = Vec::new();
    for text in ["a", "b", "c"] {
        ids.push(send(&mut alice, &pk, text).await["id"].as_i64().unwrap());
    }
    let removed = message::Entity::delete_many()
        .filter(message::Column::Id.gte(ids[1]))
        .exec(&app.db)
        .await
        .unwrap();
    assert_eq!(removed.rows_affected, 2);

    // "d"'s batch is held at its commit while "e", "f" and "g" queue
    // behind it, so those three are stored by one batch.
    let gate = ReleaseOnDrop(commit_gate::hold(pk.parse().unwrap()));
    let gate = &gate.0;
    let message = |text: &str| json!({"type": "message", "data": {"to": pk, "content": text}});
    alice.send(message("d")).await;
    gate.reached().await;
    for text in ["e", "f", "g"] {
        alice.send(message(text)).await;
    }
    // Answered once the session has handed "e" to "g" to the writer (the
    // echoes of "a" to "c" may come first; no answer can, until the release).
    alice.send(json!({"type": "ping", "data": {}})).await;
    alice.recv_type("pong").await;
    gate.release();
    let mut acked = Vec::new();
    for _ in 0..4 {
        let ack = alice.recv_type("message_response").await;
        acked.push(ack["data"]["id"].as_i64().unwrap());
    }
    assert!(
        acked[0] > ids[2],
        "{}: {acked:?} after {ids:?}",
        backend.name()
    );
    assert!(
        acked.windows(2).all(|w| w[0] < w[1]),
        "{}: {acked:?}",
        backend.name()
    );
    let page = alice
        .ask(json!({"type": "get_messages", "data": {"id": pk, "after": 0}}))
        .await;
    let ids_stored: Vec<i64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert_eq!(contents(&page), ["a", "d", "e", "f", "g"]);
    let mut expected = vec![ids[0]];
    expected.extend(&acked);
    assert_eq!(ids_stored, expected, "{}", backend.name());
}

backend_tests!(new_messages_never_take_a_removed_messages_id => ids_after_removed_messages);

/// One batch's numbers (`store::take_seqs`): each conversation's events
/// take its next numbers in the order the batch names them, its counter
/// moves past them, and a conversation that does not exist fails the batch.
async fn a_batch_takes_each_conversations_next_numbers(backend: &Backend) {
    use chat_server::chat::store::take_seqs;
    use entity::chat;
    use sea_orm::TransactionTrait;

    let app = TestApp::spawn(backend).await;
    let (alice_id, _, first) = app.pair("alice", "bob").await;
    let carol = app.create_user("carol", "Carol", "Brown").await;
    let (second, _) = chat_server::accounts::direct_chat(&app.db, alice_id, carol)
        .await
        .unwrap();
    let mut alice = app.authorized(&app.login("alice").await).await;
    send(&mut alice, &first, "one").await;
    let (first, second): (uuid::Uuid, uuid::Uuid) = (first.parse().unwrap(), second.id);
    let seq_of = |id: uuid::Uuid| {
        let db = app.db.clone();
        async move {
            chat::Entity::find_by_id(id)
                .one(&db)
                .await
                .unwrap()
                .unwrap()
                .seq
        }
    };
    assert_eq!((seq_of(first).await, seq_of(second).await), (1, 0));

    let txn = app.db.begin().await.unwrap();
    let seqs = take_seqs(&txn, &[first, second, first, first])
        .await
        .unwrap();
    txn.commit().await.unwrap();
    assert_eq!(seqs, [2, 1, 3, 4], "{}", backend.name());
    assert_eq!((seq_of(first).await, seq_of(second).await), (4, 1));

    let txn = app.db.begin().await.unwrap();
    let missing = take_seqs(&txn, &[second, uuid::Uuid::new_v4()]).await;
    txn.rollback().await.unwrap();
    assert!(missing.is_err(), "{}: {missing:?}", backend.name());
    assert_eq!(seq_of(second).await, 1, "{}", backend.name());
}

backend_tests!(a_batch_takes_each_conversations_next_numbers => a_batch_takes_each_conversations_next_numbers);

/// An id that is not one of the conversation's messages (here, each of
/// another conversation's, sent between its own, with reactions taking
/// `seq`s between them too) places a page and a read mark exactly where it
/// falls: the conversation's messages are found by `seq`, a page's id
/// placed by a search over it (`chat/store/position.rs`), a read mark by a
/// walk down to the newest message up to it (`chat/store/contacts.rs`).
async fn ids_between_place_pages_and_read_marks(backend: &Backend) {
    const N: usize = 13;
    let app = TestApp::spawn(backend).await;
    let (_, _, pk) = app.pair("alice", "bob").await;
    let (_, _, other) = app.pair("carol", "dave").await;
    let mut alice = app.authorized(&app.login("alice").await).await;
    let mut carol = app.authorized(&app.login("carol").await).await;
    let mut between = Vec::new();
    for i in 0..N {
        let id = send(&mut alice, &pk, &format!("m{i}")).await["id"]
            .as_i64()
            .unwrap();
        if i % 3 == 0 {
            let reacted = json!({"type": "react", "data": {"id": id, "emoji": "👍", "on": true}});
            assert_eq!(alice.ask(reacted).await["status"], "success");
        }
        let id = send(&mut carol, &other, &format!("o{i}")).await["id"]
            .as_i64()
            .unwrap();
        between.push(id);
    }
    let names =
        |range: std::ops::Range<usize>| -> Vec<String> { range.map(|i| format!("m{i}")).collect() };
    let page = |data: Value| json!({"type": "get_messages", "data": data});
    for (i, &o) in between.iter().enumerate() {
        let after = alice.ask(page(json!({"id": pk, "after": o}))).await;
        assert_eq!(
            contents(&after),
            names(i + 1..N),
            "after o{i}, {}",
            backend.name()
        );
        let before = alice.ask(page(json!({"id": pk, "before": o}))).await;
        assert_eq!(contents(&before), names(0..i + 1), "before o{i}");
    }
    let mut bob = app.authorized(&app.login("bob").await).await;
    let unread = |contacts: &Value| contacts[0]["unread"].clone();
    let contacts = bob.ask(json!({"type": "get_contacts", "data": {}})).await;
    assert_eq!(unread(&contacts), N);
    let beyond = between[N - 1] + 1000;
    for (i, &o) in between.iter().chain([&beyond]).enumerate() {
        let read = bob
            .ask(json!({"type": "read", "data": {"id": pk, "up_to": o}}))
            .await;
        assert_eq!(read, json!({"status": "success", "pk": pk, "up_to": o}));
        let contacts = bob.ask(json!({"type": "get_contacts", "data": {}})).await;
        assert_eq!(
            unread(&contacts),
            N.saturating_sub(i + 1),
            "read to o{i}, {}",
            backend.name()
        );
    }
}

backend_tests!(an_id_between_a_conversations_messages_places_pages_and_read_marks => ids_between_place_pages_and_read_marks);

/// SQLite keeps one index of `messages` keyed by conversation (each costs a
/// commit a page per conversation in it), migration m20261208_000001; the
/// other databases keep `(chat_id, id)` for search.
async fn one_conversation_index(backend: &Backend) {
    use sea_orm::{ConnectionTrait, Statement};
    let app = TestApp::spawn(backend).await;
    let sql = match backend {
        Backend::Sqlite => {
            "SELECT il.name AS name FROM pragma_index_list('messages') il \
             WHERE (SELECT ii.name FROM pragma_index_info(il.name) ii WHERE ii.seqno = 0) = 'chat_id' \
             ORDER BY il.name"
        }
        // From the catalog alone: `pg_indexes` computes every index's
        // definition, which opens it, and the planner may do that for other
        // schemas' indexes too, while other tests drop them ("could not
        // open relation with OID").
        Backend::Postgres(_) => {
            "SELECT i.relname::text AS name FROM pg_index x \
             JOIN pg_class i ON i.oid = x.indexrelid \
             JOIN pg_class t ON t.oid = x.indrelid \
             JOIN pg_namespace n ON n.oid = t.relnamespace \
             WHERE n.nspname = current_schema() AND t.relname = 'messages' AND x.indpred IS NULL \
             AND (SELECT array_agg(a.attname::text ORDER BY k.ord) \
                  FROM unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                  JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum) \
                 = ARRAY['chat_id', 'id'] \
             ORDER BY 1"
        }
        Backend::MySql(_) => {
            "SELECT DISTINCT index_name AS name FROM information_schema.statistics \
             WHERE table_schema = DATABASE() AND table_name = 'messages' \
             AND index_name = 'idx_messages_chat_id_id'"
        }
    };
    let names: Vec<String> = app
        .db
        .query_all_raw(Statement::from_string(app.db.get_database_backend(), sql))
        .await
        .unwrap()
        .iter()
        .map(|row| row.try_get::<String>("", "name").unwrap())
        .collect();
    let expected = match backend {
        Backend::Sqlite => ["uq_messages_chat_seq"],
        _ => ["idx_messages_chat_id_id"],
    };
    assert_eq!(names, expected, "{}", backend.name());
}

backend_tests!(sqlite_keeps_one_index_keyed_by_conversation => one_conversation_index);

/// On PostgreSQL the writers' connections plan each statement once, by
/// index (`plan_cache_mode = force_generic_plan`, `enable_seqscan = off`,
/// src/db.rs): PostgreSQL's own choice plans a batch of one message afresh
/// on every execution. The requests' pool keeps PostgreSQL's choices, both
/// leave JIT compilation off, and both keep the URL's own options (here
/// the test's schema).
#[actix_rt::test]
#[ignore = "needs TEST_POSTGRES_URL; run with --include-ignored"]
async fn postgres_writers_plan_each_statement_once() {
    use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
    async fn show(db: &DatabaseConnection, setting: &str) -> String {
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                format!("SELECT current_setting('{setting}') AS value"),
            ))
            .await
            .unwrap()
            .expect("a setting has a value");
        row.try_get("", "value").unwrap()
    }
    let database = TestDatabase::create(&Backend::postgres()).await;
    let settings = common::settings(&database.url, &[]);
    let writers = chat_server::db::connect_writers(&settings).await.unwrap();
    let requests = chat_server::db::connect(&settings).await.unwrap();
    assert_eq!(
        show(&writers, "plan_cache_mode").await,
        "force_generic_plan"
    );
    assert_eq!(show(&requests, "plan_cache_mode").await, "auto");
    assert_eq!(show(&writers, "enable_seqscan").await, "off");
    assert_eq!(show(&requests, "enable_seqscan").await, "on");
    // Neither compiles statements (a key's few rows never repay it).
    assert_eq!(show(&writers, "jit").await, "off");
    assert_eq!(show(&requests, "jit").await, "off");
    let schema = show(&requests, "search_path").await;
    assert!(database.url.contains(&schema), "{schema}");
    assert_eq!(show(&writers, "search_path").await, schema);
    writers.close().await.unwrap();
    requests.close().await.unwrap();
}

/// On SQLite the writers (messages, changes, read marks) share one
/// connection: SQLite drops a connection's page cache whenever another
/// connection wrote since its last transaction, so writers that took turns
/// over several connections began every batch with an empty cache (src/db.rs,
/// `SQLITE_WRITER_CONNECTIONS`). A temporary table lives in the connection
/// that made it: requests made at the same time all find it only if they
/// all went through that one connection.
#[actix_rt::test]
async fn sqlite_writers_share_one_connection() {
    use sea_orm::{ConnectionTrait, Statement};
    let database = TestDatabase::create(&Backend::Sqlite).await;
    let settings = common::settings(&database.url, &[]);
    let writers = chat_server::db::connect_writers(&settings).await.unwrap();
    writers
        .execute_unprepared("CREATE TEMP TABLE probe (x INTEGER)")
        .await
        .unwrap();
    let count = || async {
        writers
            .query_one_raw(Statement::from_string(
                writers.get_database_backend(),
                "SELECT count(*) AS n FROM temp.probe",
            ))
            .await
            .map(|row| {
                row.expect("count gives a row")
                    .try_get::<i64>("", "n")
                    .unwrap()
            })
    };
    let counts = futures_util::future::join_all((0..8).map(|_| count())).await;
    for counted in counts {
        assert_eq!(counted.expect("every request on the one connection"), 0);
    }
    writers.close().await.unwrap();
}

/// One instance's commit is held after it took its `seq`; another instance
/// stores a later message of the same conversation meanwhile. A client that
/// reconnects in between sees neither yet, and afterwards both, in order,
/// live and through both ways of catching up.
async fn slow_commit_on_one_instance(backend: &Backend) {
    let redis = require_redis_url();
    let db = TestDatabase::migrated(backend).await;
    let apps = common::instances(backend, &redis, &db, 2).await;
    let (a, b) = (&apps[0], &apps[1]);
    let (_, _, pk) = a.pair("alice", "bob").await;
    let alice_token = a.login("alice").await;
    let bob_token = b.login("bob").await;
    let mut alice_on_a = authorized_at(&a.http, a.port, &alice_token).await;
    let mut bob_on_b = authorized_at(&b.http, b.port, &bob_token).await;
    let first = send(&mut alice_on_a, &pk, "first").await;
    assert_eq!(bob_on_b.recv_type("message").await["data"]["seq"], 1);

    let gate = ReleaseOnDrop(commit_gate::hold(pk.parse().unwrap()));
    let gate = &gate.0;
    alice_on_a
        .send(json!({"type": "message", "data": {"to": pk, "content": "slow"}}))
        .await;
    gate.reached().await;
    bob_on_b
        .send(json!({"type": "message", "data": {"to": pk, "content": "fast"}}))
        .await;
    // Bob's own request comes after his message: once it is answered, his
    // instance has handed the message to its writer.
    assert_eq!(
        bob_on_b.request(json!({"type": "ping", "data": {}})).await,
        json!({"type": "pong", "data": {}})
    );

    // A client reconnecting now sees the conversation as committed: one message.
    let mut reader = authorized_at(&b.http, b.port, &bob_token).await;
    let contacts = reader
        .ask(json!({"type": "get_contacts", "data": {}}))
        .await;
    assert_eq!(contacts[0]["seq"], 1, "{}", backend.name());
    assert_eq!(sync(&mut reader, &pk, 1, None).await["events"], json!([]));

    gate.release();
    let live: Vec<(Value, Value)> = {
        let mut live = Vec::new();
        for _ in 0..2 {
            let frame = reader.recv_type("message").await;
            live.push((
                frame["data"]["seq"].clone(),
                frame["data"]["data"]["content"].clone(),
            ));
        }
        live
    };
    assert_eq!(
        live,
        [(json!(2), json!("slow")), (json!(3), json!("fast"))],
        "{}: live in seq order",
        backend.name()
    );
    let synced = sync(&mut reader, &pk, 1, None).await;
    let contents: Vec<&Value> = synced["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["data"]["data"]["content"])
        .collect();
    assert_eq!(contents, [&json!("slow"), &json!("fast")]);
    let page = reader
        .ask(json!({"type": "get_messages", "data": {"id": pk, "after": first["id"]}}))
        .await;
    let contents: Vec<&Value> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["content"])
        .collect();
    assert_eq!(contents, [&json!("slow"), &json!("fast")]);
}

#[actix_rt::test]
#[ignore = "needs TEST_POSTGRES_URL and TEST_REDIS_URL; run with --include-ignored"]
async fn a_slow_commit_on_one_instance_skips_nothing_postgres() {
    slow_commit_on_one_instance(&Backend::postgres()).await;
}

#[actix_rt::test]
#[ignore = "needs TEST_MYSQL_URL and TEST_REDIS_URL; run with --include-ignored"]
async fn a_slow_commit_on_one_instance_skips_nothing_mysql() {
    slow_commit_on_one_instance(&Backend::mysql()).await;
}

/// A small deterministic generator (the test needs no crate for it): the
/// seed is printed, and `CONVERSATION_LOG_SEED` makes the same choices of
/// instances and pauses again.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// How a reader catches up after a reconnect.
#[derive(Clone, Copy, Debug)]
enum CatchUp {
    /// `sync` after the last `seq` it applied (B7).
    Sync,
    /// The old clients' way: `get_messages` `after` the last id it has.
    AfterId,
}

/// One reader's view of the conversation: message ids in the order it
/// applied them.
#[derive(Default)]
struct View {
    ids: Vec<i64>,
    seen: HashSet<i64>,
    last_seq: i64,
}

impl View {
    /// Applies a message event; `false` when it is ahead of a hole.
    fn apply(&mut self, seq: i64, id: i64) -> bool {
        if seq <= self.last_seq {
            return true;
        }
        if seq > self.last_seq + 1 {
            return false;
        }
        self.last_seq = seq;
        assert!(self.seen.insert(id), "message {id} applied twice");
        self.ids.push(id);
        true
    }

    /// Applies a history item (by id: `get_messages` has no `seq`).
    fn apply_item(&mut self, id: i64) {
        if self.seen.insert(id) {
            self.ids.push(id);
        }
    }
}

fn event_of(frame: &Value) -> (i64, i64) {
    (
        frame["data"]["seq"].as_i64().expect("a seq"),
        frame["data"]["data"]["id"].as_i64().expect("an id"),
    )
}

/// One connection of a reader, from authorization to `until`: catches up,
/// then applies what arrives live. Asserts what the server promises every
/// session: live events in `seq` order, none twice.
async fn read_for(
    app: &TestApp,
    token: &str,
    pk: &str,
    how: CatchUp,
    view: &mut View,
    until: Instant,
) {
    let mut live_last = 0;
    let mut held = Vec::new();
    let live = |frame: &Value, live_last: &mut i64| {
        let (seq, id) = event_of(frame);
        assert!(seq > *live_last, "live seq {seq} after {live_last}");
        *live_last = seq;
        (seq, id)
    };
    // Live events may come before the authorization's answer: the session
    // is registered for them first.
    let mut ws = common::ws_at(&app.http, app.port, "/chat").await;
    ws.send(json!({"type": "authorization", "data": {"token": token}}))
        .await;
    loop {
        let frame = ws.recv().await;
        match frame["type"].as_str() {
            Some("message") => held.push(live(&frame, &mut live_last)),
            Some("authorization_response") => {
                assert_eq!(frame["data"]["status"], "success");
                break;
            }
            _ => {}
        }
    }
    // Catch up; live events that arrive meanwhile wait until it is done.
    loop {
        match how {
            CatchUp::Sync => {
                ws.send(json!({"type": "sync", "data": {"id": pk, "after_seq": view.last_seq, "limit": 200}}))
                    .await
            }
            CatchUp::AfterId => {
                let after = view.ids.last().copied().unwrap_or(0);
                ws.send(json!({"type": "get_messages", "data": {"id": pk, "after": after, "limit": 200}}))
                    .await
            }
        }
        let answer = loop {
            let frame = ws.recv().await;
            match frame["type"].as_str() {
                Some("message") => held.push(live(&frame, &mut live_last)),
                Some("sync_response" | "get_messages_response") => break frame["data"].clone(),
                _ => {}
            }
        };
        match how {
            CatchUp::Sync => {
                for event in answer["events"].as_array().expect("events") {
                    let (seq, id) = event_of(event);
                    assert!(view.apply(seq, id), "sync left a hole before {seq}");
                }
            }
            CatchUp::AfterId => {
                for item in answer["messages"].as_array().expect("messages") {
                    view.apply_item(item["id"].as_i64().expect("an id"));
                }
            }
        }
        if answer["has_more"] == false {
            break;
        }
    }
    let mut pending: std::collections::VecDeque<(i64, i64)> = held.into();
    loop {
        let (seq, id) = match pending.pop_front() {
            Some(event) => event,
            None => {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return;
                }
                match ws.next_event(left).await {
                    Event::Json(frame) if frame["type"] == "message" => {
                        live(&frame, &mut live_last)
                    }
                    Event::Json(_) => continue,
                    Event::Silence => return,
                    other => panic!("reader's connection: {other:?}"),
                }
            }
        };
        match how {
            CatchUp::AfterId => view.apply_item(id),
            CatchUp::Sync => {
                if !view.apply(seq, id) {
                    // Ahead of what this reader has: catch up again.
                    let answer = sync(&mut ws, pk, view.last_seq, Some(200)).await;
                    for event in answer["events"].as_array().expect("events") {
                        let (seq, id) = event_of(event);
                        assert!(view.apply(seq, id), "sync left a hole before {seq}");
                    }
                }
            }
        }
    }
}

/// Several senders on every instance, readers that drop their connection
/// at random moments and reconnect to a random instance: at the end every
/// reader's view is the database's history exactly, in `seq` order.
async fn random_senders_and_readers(apps: Vec<TestApp>, run: Duration) {
    let backend = apps[0].backend.clone();
    let apps = std::rc::Rc::new(apps);
    let seed = common::seed("CONVERSATION_LOG_SEED");
    let a = &apps[0];
    let mut members = Vec::new();
    for i in 0..6 {
        members.push(
            a.create_user(&format!("u{i}"), "User", &format!("{i}"))
                .await,
        );
    }
    common::have_written(&a.db, &members[1..], members[0]).await;
    let mut owner = authorized_at(&a.http, a.port, &a.login("u0").await).await;
    let created = owner
        .ask(json!({"type": "create_group", "data": {"title": "log", "members": members[1..]}}))
        .await;
    let pk = created["pk"].as_str().expect("a group").to_string();
    drop(owner);

    let deadline = Instant::now() + run;
    let mut tasks = Vec::new();
    // Senders u0–u2: one session on each instance, sending in turns.
    // (All connected before any sends: `authorized_at` wants the
    // authorization's answer as the next frame.)
    let mut senders = Vec::new();
    for s in 0..3u64 {
        let token = a.login(&format!("u{s}")).await;
        let mut sessions = Vec::new();
        for app in apps.iter() {
            sessions.push(authorized_at(&app.http, app.port, &token).await.draining());
        }
        senders.push((s, sessions));
    }
    for (s, mut sessions) in senders {
        let pk = pk.clone();
        tasks.push(actix_web::rt::spawn(async move {
            let mut rng = Rng(seed.wrapping_add(s));
            let mut n = 0;
            // Until the deadline, and at least `MIN_SENT` messages however
            // slow the machine (the history must hold more than 100).
            while Instant::now() < deadline || n < MIN_SENT {
                let at = rng.below(sessions.len() as u64) as usize;
                let text = format!("u{s} m{n}");
                sessions[at]
                    .send(json!({"type": "message", "data": {"to": pk, "content": text}}))
                    .await;
                n += 1;
                actix_web::rt::time::sleep(Duration::from_millis(2 + rng.below(8))).await;
            }
            n
        }));
    }
    // Readers u3–u5, each catching up its own way.
    let mut readers = Vec::new();
    for (r, how) in [
        (3, CatchUp::Sync),
        (4, CatchUp::Sync),
        (5, CatchUp::AfterId),
    ] {
        let (apps, pk) = (apps.clone(), pk.clone());
        let token = a.login(&format!("u{r}")).await;
        readers.push(actix_web::rt::spawn(async move {
            let mut rng = Rng(seed.wrapping_add(r));
            let mut view = View::default();
            let mut reconnects = 0;
            // Until the senders stop, and at least `MIN_RECONNECTS` times
            // however slow the machine (a loaded one reconnects less often).
            while Instant::now() < deadline || reconnects < MIN_RECONNECTS {
                let app = &apps[rng.below(apps.len() as u64) as usize];
                // Past the deadline: connect, catch up, leave.
                let now = Instant::now();
                let until =
                    (now + Duration::from_millis(50 + rng.below(1500))).min(deadline.max(now));
                read_for(app, &token, &pk, how, &mut view, until).await;
                reconnects += 1;
            }
            // The senders have stopped: one last catch-up, after everything
            // they sent is stored (the history no longer grows).
            (how, view, reconnects, token)
        }));
    }
    let mut sent = 0;
    for task in tasks {
        sent += task.await.expect("a sender");
    }
    let chat: uuid::Uuid = pk.parse().unwrap();
    let stored = || async {
        message::Entity::find()
            .filter(message::Column::ChatId.eq(chat))
            .order_by_asc(message::Column::Seq)
            .all(&a.db)
            .await
            .unwrap()
    };
    // Every message the senders sent is stored (none is refused: the
    // senders stay within their rate limit): wait until all are.
    common::wait_until(|| async { stored().await.len() == sent }).await;
    let history = stored().await;
    let seqs: Vec<i64> = history.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=history.len() as i64).collect::<Vec<_>>(),
        "{}: seq is 1, 2, 3… with no gap",
        backend.name()
    );
    let expected: Vec<i64> = history.iter().map(|m| m.id).collect();
    assert!(expected.len() > 100, "only {} messages", expected.len());
    for reader in readers {
        let (how, mut view, reconnects, token) = reader.await.expect("a reader");
        let app = &apps[0];
        read_for(app, &token, &pk, how, &mut view, Instant::now()).await;
        assert_eq!(
            view.ids.len(),
            expected.len(),
            "{}: {how:?} reader ({reconnects} reconnects) has every message once",
            backend.name()
        );
        assert_eq!(view.ids, expected, "{how:?}: in the conversation's order");
    }
}

/// Fewest catch-ups after a reconnect each reader makes in a run.
const MIN_RECONNECTS: usize = 4;
/// The fewest messages each of the three senders sends.
const MIN_SENT: usize = 40;

/// How long the randomized run lasts: `CONVERSATION_LOG_SECONDS`, 30 by
/// default (set it longer for a soak; CI keeps the default).
fn run_time() -> Duration {
    let seconds = std::env::var("CONVERSATION_LOG_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(seconds)
}

#[actix_rt::test]
#[ignore = "needs TEST_POSTGRES_URL and TEST_REDIS_URL; run with --include-ignored"]
async fn random_senders_and_reconnecting_readers_converge_on_three_instances() {
    let backend = Backend::postgres();
    let db = TestDatabase::create(&backend).await;
    let apps = common::instances(&backend, &require_redis_url(), &db, 3).await;
    random_senders_and_readers(apps, run_time()).await;
}

#[actix_rt::test]
#[ignore = "needs TEST_MYSQL_URL and TEST_REDIS_URL; run with --include-ignored"]
async fn random_senders_and_reconnecting_readers_converge_on_two_instances_mysql() {
    let backend = Backend::mysql();
    let db = TestDatabase::create(&backend).await;
    let apps = common::instances(&backend, &require_redis_url(), &db, 2).await;
    random_senders_and_readers(apps, run_time() / 4).await;
}

#[actix_rt::test]
#[ignore = "needs redis-server, redis-cli and TEST_POSTGRES_URL; run with --include-ignored"]
async fn random_senders_and_reconnecting_readers_converge_over_a_redis_cluster() {
    // Sharded pub/sub: the conversation's channel lives on one shard, and
    // its events still arrive in one order.
    let cluster = common::redis_cluster::RedisCluster::start();
    let db = TestDatabase::create(&Backend::postgres()).await;
    let (a, b) = common::redis_cluster::instances_on(&cluster, &db, &common::redis_prefix()).await;
    random_senders_and_readers(vec![a, b], run_time() / 4).await;
}

#[actix_rt::test]
async fn random_senders_and_reconnecting_readers_converge_on_one_instance() {
    // One instance, no Redis: the same story through the in-process bus.
    let app = TestApp::spawn(&Backend::Sqlite).await;
    random_senders_and_readers(vec![app], run_time() / 6).await;
}

/// A database from before the conversation log: its messages are numbered
/// per conversation in id order by the migration, and each conversation's
/// `seq` is its last.
async fn existing_messages_are_numbered(backend: &Backend) {
    use migration::{Alias, MigratorTrait, Query};
    use sea_orm::ConnectionTrait;
    let (_database, db, sender) =
        common::database_before(backend, "m20261130_000001_conversation_seq").await;
    let (first, second, empty) = (
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
    );
    let now = chrono::Utc::now();
    for chat in [first, second, empty] {
        let insert = Query::insert()
            .into_table(Alias::new("chats"))
            .columns(["id", "kind", "title", "created_at"].map(Alias::new))
            .values_panic([chat.into(), "group".into(), "old".into(), now.into()])
            .to_owned();
        db.execute(&insert).await.unwrap();
    }
    // Interleaved: the first conversation gets messages 1, 3, 4; the second 2, 5.
    for (i, chat) in [first, second, first, first, second]
        .into_iter()
        .enumerate()
    {
        let insert = Query::insert()
            .into_table(Alias::new("messages"))
            .columns(["chat_id", "sender_id", "content", "created_at"].map(Alias::new))
            .values_panic([
                chat.into(),
                sender.into(),
                format!("m{i}").into(),
                now.into(),
            ])
            .to_owned();
        db.execute(&insert).await.unwrap();
    }
    migration::Migrator::up(&db, None).await.unwrap();

    let rows = message::Entity::find()
        .order_by_asc(message::Column::Id)
        .all(&db)
        .await
        .unwrap();
    let numbered: Vec<(uuid::Uuid, String, i64)> = rows
        .into_iter()
        .map(|m| (m.chat_id, m.content, m.seq))
        .collect();
    assert_eq!(
        numbered,
        [
            (first, "m0".to_string(), 1),
            (second, "m1".to_string(), 1),
            (first, "m2".to_string(), 2),
            (first, "m3".to_string(), 3),
            (second, "m4".to_string(), 2),
        ],
        "{}",
        backend.name()
    );
    for (chat, seq) in [(first, 3), (second, 2), (empty, 0)] {
        let row = entity::chat::Entity::find_by_id(chat)
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.seq, seq, "{}", backend.name());
    }
}

backend_tests!(the_migration_numbers_existing_messages_per_conversation => existing_messages_are_numbered);
