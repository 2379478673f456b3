//! Search (PROTOCOL.md B10) on each database's own full-text index: every
//! word must match, the last as a prefix, case and accents ignored; only
//! conversations the caller is a member of now; edits and deletions
//! followed at once; the WebSocket and REST answers alike.

use crate::common;
use chat_server::accounts;
use chat_server::chat::search_index::{SearchIndex, MAX_TAIL};
use chat_server::chat::writer::commit_gate::{self, Point};
use std::sync::Arc;

use actix_web::http::Method;
use common::{Backend, TestApp, WsClient};
use serde_json::{json, Value};

async fn send(ws: &mut WsClient, pk: &str, content: &str) -> Value {
    let ack = ws
        .ask(json!({"type": "message", "data": {"to": pk, "content": content}}))
        .await;
    assert_eq!(ack["status"], "success", "{ack}");
    ack
}

async fn search(ws: &mut WsClient, data: Value) -> Value {
    ws.ask(json!({"type": "search", "data": data})).await
}

/// The ids of a page's results, in order.
fn ids(page: &Value) -> Vec<i64> {
    page["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {page}"))
        .iter()
        .map(|r| r["id"].as_i64().expect("an id"))
        .collect()
}

/// A server whose search allowance these tests, which search a lot, do
/// not meet (searches_have_an_allowance_per_user tests it).
async fn spawn(backend: &Backend) -> TestApp {
    TestApp::spawn_with(backend, &[("SEARCHES_PER_MINUTE", "60000")]).await
}

fn id(ack: &Value) -> i64 {
    ack["id"]
        .as_i64()
        .expect("an acknowledged message has an id")
}

async fn matching_rules(backend: &Backend) {
    let app = spawn(backend).await;
    let (alice_id, _, pk) = app.pair("alice", "bob").await;
    let (_, _, elsewhere) = app.pair("carol", "dave").await;
    let mut alice = app.authorized(&app.login("alice").await).await;
    let bob_token = app.login("bob").await;
    let mut bob = app.authorized(&bob_token).await;
    let mut carol = app.authorized(&app.login("carol").await).await;

    let cafe = send(&mut alice, &pk, "Un café au lait, s'il vous plaît").await;
    let uber = send(&mut alice, &pk, "Über alles gut").await;
    let fox = send(&mut alice, &pk, "the quick brown fox").await;
    let quickly = send(&mut alice, &pk, "Quickly now!").await;
    let park = send(&mut alice, &pk, "go to the park: https://example.org/map").await;
    send(&mut carol, &elsewhere, "café crème for carol").await;

    // The exact answer: the message, its conversation, found as soon as
    // it was acknowledged.
    let found = search(&mut bob, json!({"query": "cafe"})).await;
    assert_eq!(
        found,
        json!({"results": [{
            "pk": pk, "id": id(&cafe), "sender": alice_id,
            "content": "Un café au lait, s'il vous plaît", "time": cafe["time"],
        }], "has_more": false}),
        "{}",
        backend.name()
    );
    // Case and accents ignored both ways; the last word is a prefix, the
    // others whole words; every word must match.
    for (query, expected) in [
        ("UBER", vec![id(&uber)]),
        ("CAFÉ LAIT", vec![id(&cafe)]),
        ("quick", vec![id(&quickly), id(&fox)]),
        ("quick bro", vec![id(&fox)]),
        ("quick now", vec![]),
        ("brown quick fox", vec![id(&fox)]),
        ("the park", vec![id(&park)]),
        ("to park", vec![id(&park)]),
        ("example", vec![id(&park)]),
        ("crème", vec![]),
    ] {
        let page = search(&mut bob, json!({"query": query})).await;
        assert_eq!(ids(&page), expected, "{query:?} on {}", backend.name());
    }
    // Nothing of someone else's conversation.
    let page = search(&mut carol, json!({"query": "caf"})).await;
    assert_eq!(page["results"].as_array().unwrap().len(), 1);
    assert_eq!(page["results"][0]["pk"], elsewhere);

    // One conversation: one's own, or not found.
    let page = search(&mut bob, json!({"query": "quick", "id": pk})).await;
    assert_eq!(ids(&page), vec![id(&quickly), id(&fox)]);
    let not_found =
        json!({"status": "error", "code": "not_found", "message": "conversation not found"});
    assert_eq!(
        search(&mut bob, json!({"query": "cafe", "id": elsewhere})).await,
        not_found
    );
    assert_eq!(
        search(&mut bob, json!({"query": "cafe", "id": "nope"})).await,
        not_found
    );

    // Pages, newest first.
    let first = search(&mut bob, json!({"query": "quick", "limit": 1})).await;
    assert_eq!(
        (ids(&first), &first["has_more"]),
        (vec![id(&quickly)], &json!(true))
    );
    let next = search(
        &mut bob,
        json!({"query": "quick", "limit": 1, "before": id(&quickly)}),
    )
    .await;
    assert_eq!(
        (ids(&next), &next["has_more"]),
        (vec![id(&fox)], &json!(false))
    );

    // A query of nothing to search for, and other bad requests.
    for (data, message) in [
        (
            json!({"query": " ?!… -- "}),
            "query has no words to search for",
        ),
        (
            json!({"query": "x", "limit": 51}),
            "limit must be between 1 and 50",
        ),
        (
            json!({"query": "x".repeat(201)}),
            "query is longer than 200 characters",
        ),
    ] {
        assert_eq!(
            search(&mut bob, data).await,
            json!({"status": "error", "code": "invalid", "message": message})
        );
    }

    // REST answers the same.
    let ws_page = search(&mut bob, json!({"query": "quick"})).await;
    let (status, rest_page) = app
        .rest(Method::GET, "/api/search/?q=quick", &bob_token, None)
        .await;
    assert_eq!((status, rest_page), (200, ws_page));
    let (status, body) = app
        .rest(Method::GET, "/api/search/?q=%3F%3F", &bob_token, None)
        .await;
    assert_eq!(
        (status, body),
        (400, json!({"q": ["query has no words to search for"]}))
    );
    // A bad page is keyed by the parameter at fault.
    for (query, field, message) in [
        ("limit=51", "limit", "limit must be between 1 and 50"),
        ("before=0", "before", "before must be a message id"),
    ] {
        let path = format!("/api/search/?q=quick&{query}");
        let (status, body) = app.rest(Method::GET, &path, &bob_token, None).await;
        assert_eq!((status, body), (400, json!({ field: [message] })));
    }
    let path = format!("/api/search/?q=cafe&id={elsewhere}");
    assert_eq!(app.rest(Method::GET, &path, &bob_token, None).await.0, 404);
    assert_eq!(
        app.rest(Method::GET, "/api/search/?q=cafe", "bad", None)
            .await
            .0,
        401
    );

    // An edited message is found by its new text only; a deleted one never.
    let edited = alice
        .ask(json!({"type": "edit_message", "data": {"id": id(&cafe), "content": "green tea"}}))
        .await;
    assert_eq!(edited["status"], "success", "{edited}");
    assert_eq!(
        ids(&search(&mut bob, json!({"query": "cafe"})).await),
        Vec::<i64>::new()
    );
    let page = search(&mut bob, json!({"query": "tea"})).await;
    assert_eq!(ids(&page), vec![id(&cafe)]);
    assert_eq!(page["results"][0]["content"], "green tea");
    let deleted = alice
        .ask(json!({"type": "delete_message", "data": {"id": id(&uber)}}))
        .await;
    assert_eq!(deleted["status"], "success", "{deleted}");
    assert_eq!(
        ids(&search(&mut bob, json!({"query": "uber"})).await),
        Vec::<i64>::new()
    );
    assert_eq!(
        ids(&search(&mut bob, json!({"query": "alles gut"})).await),
        Vec::<i64>::new()
    );

    // Edited and deleted before any search saw them (SQLite indexes them,
    // new, in the same step as their changes): by their text as it is now.
    let kiwi = send(&mut alice, &pk, "kiwi one").await;
    let gone = send(&mut alice, &pk, "kiwi two").await;
    for change in [
        json!({"type": "edit_message", "data": {"id": id(&kiwi), "content": "mango"}}),
        json!({"type": "delete_message", "data": {"id": id(&gone)}}),
    ] {
        assert_eq!(alice.ask(change).await["status"], "success");
    }
    assert_eq!(
        ids(&search(&mut bob, json!({"query": "kiwi"})).await),
        Vec::<i64>::new()
    );
    assert_eq!(
        ids(&search(&mut bob, json!({"query": "mango"})).await),
        vec![id(&kiwi)]
    );
}

backend_tests!(matching => matching_rules);

/// Chinese and Japanese, written without spaces between words: a message
/// is found by any run of its characters, as the run stands in it (not by
/// the same characters in another order), and by the Latin words beside
/// them; on SQLite both from what the index does not hold yet and from
/// the index.
async fn unspaced_text(backend: &Backend) {
    let app = spawn(backend).await;
    let (_, _, pk) = app.pair("alice", "bob").await;
    let mut alice = app.authorized(&app.login("alice").await).await;
    let mut bob = app.authorized(&app.login("bob").await).await;
    let japanese = id(&send(&mut alice, &pk, "日本語のテキストを検索する").await);
    let chinese = id(&send(&mut alice, &pk, "中文搜索测试").await);
    let phone = id(&send(&mut alice, &pk, "iPhone発売日は2026年").await);
    let test = id(&send(&mut alice, &pk, "テスト").await);
    let edited = alice
        .ask(
            json!({"type": "edit_message", "data": {"id": chinese, "content": "中文搜索测试完成"}}),
        )
        .await;
    assert_eq!(edited["status"], "success", "{edited}");
    let cases = [
        ("テキスト", vec![japanese]),
        ("検索", vec![japanese]),
        ("の", vec![japanese]),
        ("日本 テキスト", vec![japanese]),
        ("搜索", vec![chinese]),
        ("完成", vec![chinese]),
        ("発売", vec![phone]),
        ("iphone", vec![phone]),
        ("iph", vec![phone]),
        ("2026年", vec![phone]),
        ("日", vec![phone, japanese]),
        ("テスト", vec![test]),
        ("本日", vec![]),
        ("テキスト 中文", vec![]),
    ];
    let mut check = async |when: &str| {
        for (query, expected) in &cases {
            let page = search(&mut bob, json!({"query": query})).await;
            assert_eq!(
                &ids(&page),
                expected,
                "{query:?} on {} ({when})",
                backend.name()
            );
        }
    };
    check("as acknowledged").await;
    if let Some(index) = search_index(app.database_url().unwrap_or_default()).await {
        index.catch_up().await.expect("the index caught up");
        check("from the index").await;
    }
}

backend_tests!(unspaced => unspaced_text);

/// SQLite: the indexer writes a stored message's words into its file
/// without a search asking it to, woken by the writer's commit.
#[actix_rt::test]
async fn sqlite_indexes_behind_the_writer_unasked() {
    let app = spawn(&Backend::Sqlite).await;
    let (_, _, pk) = app.pair("alice", "bob").await;
    let mut alice = app.authorized(&app.login("alice").await).await;
    let sent = id(&send(&mut alice, &pk, "written behind").await);
    let url = app.database_url().expect("a SQLite file");
    let (file, _) = url.split_once('?').unwrap_or((url, ""));
    let index = sea_orm::Database::connect(format!("{file}-search?mode=ro"))
        .await
        .expect("the index file");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let indexed = number(&index, "SELECT message_id AS n FROM search_progress").await;
        if indexed >= sent {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "message {sent} not indexed within 30 s (up to {indexed})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// SQLite: the indexer writes on a thread at idle priority (Linux's
/// `SCHED_IDLE`), and no other thread of the server runs at it; and a
/// wake-up that finds more than that thread's step may take
/// (`BACKGROUND_CHUNK`) indexes the rest too, at the server's priority.
#[cfg(target_os = "linux")]
#[actix_rt::test]
async fn sqlite_indexer_writes_at_idle_priority() {
    use chat_server::chat::search_index::{BACKGROUND_CHUNK, BACKGROUND_THREAD};
    let app = spawn(&Backend::Sqlite).await;
    let (_, _, pk) = app.pair("alice", "bob").await;
    let mut alice = app.authorized(&app.login("alice").await).await;
    let url = app.database_url().expect("a SQLite file");
    let (file, _) = url.split_once('?').unwrap_or((url, ""));
    let index = sea_orm::Database::connect(format!("{file}-search?mode=ro"))
        .await
        .expect("the index file");
    let indexed = |id: i64| {
        let index = index.clone();
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                let upto = number(&index, "SELECT message_id AS n FROM search_progress").await;
                if upto >= id {
                    return upto;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "message {id} not indexed within 30 s (up to {upto})"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    let first = id(&send(&mut alice, &pk, "first").await);
    indexed(first).await;

    // Stored without waking the server's indexer; another on the same
    // file (as a second instance's) finds more than its step at idle
    // priority takes, and indexes them all.
    let db = sea_orm::Database::connect(url).await.expect("the messages");
    fillers(&db, "first", BACKGROUND_CHUNK + 1).await;
    let last = number(&db, "SELECT max(id) AS n FROM messages").await;
    let second = search_index(url).await.expect("a SQLite file");
    second.index_committed().await.unwrap();
    let progress = "SELECT message_id AS n FROM search_progress";
    assert_eq!(number(second.db(), progress).await, last);

    // Each thread's name and scheduling policy.
    let mut threads = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap();
        let tid: i32 = task.file_name().to_str().unwrap().parse().unwrap();
        let Ok(name) = std::fs::read_to_string(task.path().join("comm")) else {
            continue; // the thread ended meanwhile
        };
        // SAFETY: a plain query of a thread of this process by its id.
        let policy = unsafe { libc::sched_getscheduler(tid) };
        if policy >= 0 {
            threads.push((name.trim().to_string(), policy));
        }
    }
    // Every indexer's thread is at idle priority, and no other thread is:
    // at least the server's indexer's and the second's (under `cargo
    // test`, other tests in this process run servers of their own).
    let indexers = threads.iter().filter(|(name, _)| name == BACKGROUND_THREAD);
    assert!(indexers.clone().count() >= 2, "{threads:?}");
    assert!(
        indexers
            .clone()
            .all(|(_, policy)| *policy == libc::SCHED_IDLE),
        "{threads:?}"
    );
    assert!(
        threads
            .iter()
            .all(|(name, policy)| name == BACKGROUND_THREAD || *policy != libc::SCHED_IDLE),
        "{threads:?}"
    );
    assert!(
        threads
            .iter()
            .any(|(name, policy)| name.starts_with("sqlx-sqlite") && *policy == libc::SCHED_OTHER),
        "{threads:?}"
    );
}

/// A user's searches have an allowance (`SEARCHES_PER_MINUTE`, in bursts
/// of a third of that) over every socket and REST together: searching in
/// a loop cannot keep the database busy for everyone else. A query that is
/// not one (no words) costs nothing, and another user's allowance is their
/// own.
#[actix_rt::test]
async fn searches_have_an_allowance_per_user() {
    // Bursts of one, then one every 20 s.
    let app = TestApp::spawn_with(&Backend::Sqlite, &[("SEARCHES_PER_MINUTE", "3")]).await;
    let (_, alice_token) = app.user("alice").await;
    let (_, bob_token) = app.user("bob").await;
    let mut alice = app.authorized(&alice_token).await;
    let mut elsewhere = app.authorized(&alice_token).await;
    let lunch = json!({"query": "lunch"});
    let none = json!({"results": [], "has_more": false});
    let invalid = search(&mut alice, json!({"query": "?!"})).await;
    assert_eq!(invalid["code"], "invalid", "{invalid}");
    assert_eq!(search(&mut alice, lunch.clone()).await, none);
    let refused = search(&mut elsewhere, lunch.clone()).await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    let text = refused["message"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("too many searches; try again in "),
        "{text}"
    );
    let path = "/api/search/?q=lunch";
    assert_eq!(app.rest(Method::GET, path, &alice_token, None).await.0, 429);
    let mut bob = app.authorized(&bob_token).await;
    assert_eq!(search(&mut bob, lunch).await, none);
    assert_eq!(app.rest(Method::GET, path, &bob_token, None).await.0, 429);
    // Looking people up counts too: each listing counts the users.
    let people = "/api/users/?search=al";
    assert_eq!(app.rest(Method::GET, people, &bob_token, None).await.0, 429);
    let (_, carol_token) = app.user("carol").await;
    assert_eq!(
        app.rest(Method::GET, people, &carol_token, None).await.0,
        200
    );
    assert_eq!(app.rest(Method::GET, path, &carol_token, None).await.0, 429);
}

/// Sends a search in `pk` and waits until it is held as it starts.
async fn held(ws: &mut WsClient, pk: &str) -> commit_gate::Gate {
    let gate = commit_gate::hold_at(Point::Search, pk.parse().unwrap());
    ws.send(json!({"type": "search", "data": {"query": "lunch", "id": pk}}))
        .await;
    gate.reached().await;
    gate
}

/// A user's searches run one at a time, in the order sent, each waiting
/// (holding no connection) for the one before: up to five in line; past
/// that a search is refused at once, over the socket and REST (messages
/// or people), without touching the allowance. (`SEARCHES_AT_ONCE`, the
/// bound over all users, is the same wait: chat::search_slots' tests.)
async fn searches_in_line(backend: &Backend) {
    let app = TestApp::spawn_with(
        backend,
        // An allowance of six at once, then one every 3.3 s.
        &[("SEARCHES_PER_MINUTE", "18"), ("SEARCHES_AT_ONCE", "2")],
    )
    .await;
    let (_, _, ours) = app.pair("alice", "bob").await;
    let alice_token = app.login("alice").await;
    let mut alice = app.authorized(&alice_token).await;
    let mut elsewhere = app.authorized(&alice_token).await;
    let lunch = id(&send(&mut alice, &ours, "lunch at noon").await);
    let none = json!({"results": [], "has_more": false});
    let busy = json!({"status": "error", "code": "rate_limited",
        "message": "too many searches at once; try again in 1 s"});

    // Her first search runs (held as it starts); four more on the same
    // socket wait behind it; a sixth is refused, wherever it comes from.
    let first = held(&mut alice, &ours).await;
    let nothing = json!({"type": "search", "data": {"query": "nothing"}});
    for _ in 0..4 {
        alice.send(nothing.clone()).await;
    }
    // Barrier: the socket's requests are taken in order, so after the pong
    // all four are in line.
    alice.send(json!({"type": "ping", "data": {}})).await;
    alice.recv_type("pong").await;
    assert_eq!(
        search(&mut elsewhere, json!({"query": "lunch"})).await,
        busy
    );
    for path in ["/api/search/?q=lunch", "/api/users/?search=b"] {
        let (status, body) = app.rest(Method::GET, path, &alice_token, None).await;
        assert_eq!(status, 429, "{path}: {body}");
    }

    // Released, the first answers first, then the four in turn.
    first.release();
    let answer = alice.recv_type("search_response").await;
    assert_eq!(ids(&answer["data"]), vec![lunch], "{answer}");
    for _ in 0..4 {
        assert_eq!(alice.recv_type("search_response").await["data"], none);
    }
    // The line is empty again, and the refusals cost nothing: five of the
    // allowance's six were spent, so one more runs.
    let found = search(&mut elsewhere, json!({"query": "lunch"})).await;
    assert_eq!(ids(&found), vec![lunch], "{found}");
}

backend_tests!(in_line => searches_in_line);

/// Removed from a group: its messages, old and new, are not found any more.
async fn only_conversations_one_is_in_now(backend: &Backend) {
    let app = spawn(backend).await;
    let (alice_id, alice_token) = app.user("alice").await;
    let (bob_id, bob_token) = app.user("bob").await;
    common::have_written(&app.db, &[bob_id], alice_id).await;
    let mut alice = app.authorized(&alice_token).await;
    let mut bob = app.authorized(&bob_token).await;
    let group = alice
        .ask_change(
            json!({"type": "create_group", "data": {"title": "plans", "members": [bob_id]}}),
        )
        .await;
    let pk = group["pk"].as_str().expect("a group pk").to_string();
    let plans = send(&mut alice, &pk, "secret plans").await;
    let page = search(&mut bob, json!({"query": "secret"})).await;
    assert_eq!(ids(&page), vec![id(&plans)], "{}", backend.name());
    assert_eq!(page["results"][0]["pk"], pk);

    let removed = alice
        .ask_change(json!({"type": "remove_member", "data": {"id": pk, "user_id": bob_id}}))
        .await;
    assert!(removed["pk"].is_string(), "{removed}");
    send(&mut alice, &pk, "more secret plans").await;
    assert_eq!(
        search(&mut bob, json!({"query": "secret"})).await,
        json!({"results": [], "has_more": false})
    );
    assert_eq!(
        search(&mut bob, json!({"query": "secret", "id": pk})).await,
        json!({"status": "error", "code": "not_found", "message": "conversation not found"})
    );
    let (status, body) = app
        .rest(Method::GET, "/api/search/?q=secret", &bob_token, None)
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"results": [], "has_more": false}))
    );
    // Alice, still in it, finds both.
    assert_eq!(
        ids(&search(&mut alice, json!({"query": "secret plans"})).await).len(),
        2
    );
}

backend_tests!(scope => only_conversations_one_is_in_now);

/// Messages stored before search existed are found once the migration has
/// run, and so are those written while it was undone; and on SQLite, re-running it with its triggers dropped (a bulk load
/// without the index, as `chat-bench search-fill` does) rebuilds the index.
async fn the_migration_indexes_existing_messages(backend: &Backend) {
    use chat_server::chat::protocol::UserId;
    use chat_server::chat::search::{self, Search};
    use migration::{Alias, MigratorTrait, Query};
    use sea_orm::ConnectionTrait;
    let (database, db, user) = common::database_before(backend, "m20261203_000001_search").await;
    let (chat, now) = (uuid::Uuid::new_v4(), chrono::Utc::now());
    let insert = |table: &str, columns: &[&str], values: Vec<sea_orm::Value>| {
        Query::insert()
            .into_table(Alias::new(table))
            .columns(columns.iter().map(|c| Alias::new(*c)))
            .values_panic(values.into_iter().map(Into::into))
            .to_owned()
    };
    let message = |user: i64, content: &str, seq: i64| {
        insert(
            "messages",
            &["chat_id", "sender_id", "content", "created_at", "seq"],
            vec![
                chat.into(),
                user.into(),
                content.into(),
                now.into(),
                seq.into(),
            ],
        )
    };
    // A conversation of `user`'s with two messages.
    let rows = |user: i64| {
        [
            insert(
                "chats",
                &["id", "kind", "title", "created_at", "seq"],
                vec![
                    chat.into(),
                    "group".into(),
                    "old".into(),
                    now.into(),
                    2i64.into(),
                ],
            ),
            insert(
                "chat_members",
                &["chat_id", "user_id", "joined_at", "role"],
                vec![chat.into(), user.into(), now.into(), "owner".into()],
            ),
            message(user, "Ein Café, bitte", 1),
            message(user, "nothing here: 日本語のテキスト", 2),
        ]
    };
    for statement in &rows(user) {
        db.execute(statement).await.unwrap();
    }
    migration::Migrator::up(&db, None).await.unwrap();
    let index = search_index(&database.url).await;
    let find = |db: &sea_orm::DatabaseConnection, index: Option<Arc<SearchIndex>>, user, query| {
        let search = Search::new(query, None, None, None).unwrap();
        let db = db.clone();
        async move {
            let page = search::run(&db, index.as_deref(), UserId(user), &search)
                .await
                .unwrap()
                .unwrap();
            page.results
                .into_iter()
                .map(|r| r.content)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        find(&db, index.clone(), user, "cafe bitte").await,
        ["Ein Café, bitte"],
        "{}",
        backend.name()
    );
    // Unspaced text written before `m20261213_000001_search_unspaced`.
    assert_eq!(
        find(&db, index, user, "テキスト").await,
        ["nothing here: 日本語のテキスト"],
        "{}",
        backend.name()
    );

    // Indexed while empty, the index dropped, rows written, and the
    // migration run again (the benchmark's bulk load): found. (MariaDB,
    // building the index in place, found none.)
    let (second, empty, owner) = common::database_before(backend, "m20261203_000001_search").await;
    migration::Migrator::up(&empty, Some(1)).await.unwrap();
    migration::Migrator::down(&empty, Some(1)).await.unwrap();
    for statement in &rows(owner) {
        empty.execute(statement).await.unwrap();
    }
    migration::Migrator::up(&empty, None).await.unwrap();
    let index = search_index(&second.url).await;
    assert_eq!(
        find(&empty, index.clone(), owner, "cafe").await,
        ["Ein Café, bitte"],
        "{}",
        backend.name()
    );

    if let Backend::Postgres(_) = backend {
        // GIN's pending list kept small (m20261206_000001_search_pending_list).
        let options = empty
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DatabaseBackend::Postgres,
                // By `regclass`: the index of this test's schema (the
                // search path), not a namesake of a test beside it.
                "SELECT array_to_string(reloptions, ',') AS options FROM pg_class \
                 WHERE oid = 'idx_messages_chat_search'::regclass",
            ))
            .await
            .unwrap()
            .expect("the search index")
            .try_get::<String>("", "options")
            .unwrap();
        assert_eq!(options, "gin_pending_list_limit=64");
    }

    if let (Backend::Sqlite, Some(index)) = (backend, index) {
        // No index is left in the messages' file (m20261211_000001_sqlite_search_file).
        let left = number(
            &empty,
            "SELECT count(*) AS n FROM sqlite_master WHERE name LIKE '%search%'",
        )
        .await;
        assert_eq!(left, 0);
        // Segments merged sixteen at a time, a level at once only at 64.
        let merges = |index: Arc<SearchIndex>| async move {
            index
                .db()
                .query_all_raw(sea_orm::Statement::from_string(
                    sea_orm::DatabaseBackend::Sqlite,
                    "SELECT k, v FROM message_search_config \
                     WHERE k IN ('automerge', 'crisismerge') ORDER BY k",
                ))
                .await
                .unwrap()
                .iter()
                .map(|row| {
                    let key: String = row.try_get("", "k").unwrap();
                    let value: i64 = row.try_get("", "v").unwrap();
                    (key, value)
                })
                .collect::<Vec<_>>()
        };
        let expected = [
            ("automerge".to_string(), 16),
            ("crisismerge".to_string(), 64),
        ];
        assert_eq!(merges(index.clone()).await, expected);

        // An index file of another layout is built again from the messages.
        index
            .db()
            .execute_unprepared(
                "INSERT INTO message_search(message_search) VALUES ('delete-all'); \
                 PRAGMA user_version = 99",
            )
            .await
            .unwrap();
        let again = search_index(&second.url).await;
        assert_eq!(
            find(&empty, again.clone(), owner, "nothing").await,
            ["nothing here: 日本語のテキスト"]
        );
        assert_eq!(merges(again.clone().unwrap()).await, expected);

        // Searched from the index alone (caught up: nothing in the tail),
        // then with an edit the index has not taken yet (its old words
        // left out, its new ones found in the tail), then caught up again.
        let index = again.unwrap();
        index.catch_up().await.unwrap();
        let behind = |index: Arc<SearchIndex>| async move {
            number(
                index.db(),
                "SELECT (SELECT message_id FROM search_progress) - \
                 (SELECT max(id) FROM store.messages) AS n",
            )
            .await
        };
        assert_eq!(behind(index.clone()).await, 0);
        let search = |query| find(&empty, Some(index.clone()), owner, query);
        assert_eq!(search("cafe").await, ["Ein Café, bitte"]);
        empty
            .execute_unprepared(
                "INSERT INTO message_events (chat_id, seq, message_id, kind, created_at) \
                 SELECT chat_id, 3, id, 'edited', created_at FROM messages \
                 WHERE content = 'Ein Café, bitte'; \
                 UPDATE messages SET content = 'Ein Tee' WHERE content = 'Ein Café, bitte'",
            )
            .await
            .unwrap();
        assert_eq!(search("cafe").await, Vec::<String>::new());
        assert_eq!(search("tee").await, ["Ein Tee"]);
        index.catch_up().await.unwrap();
        assert_eq!(search("cafe").await, Vec::<String>::new());
        assert_eq!(search("tee").await, ["Ein Tee"]);
        assert_eq!(search("nothing").await, ["nothing here: 日本語のテキスト"]);

        // More not indexed than a search matches in memory (MAX_TAIL): the
        // search indexes them first.
        fillers(&empty, "Ein Tee", MAX_TAIL + 1).await;
        assert!(behind(index.clone()).await < -MAX_TAIL);
        let newest = search("filler").await;
        assert_eq!(newest.len(), 20);
        assert_eq!(newest[0], format!("filler {}", MAX_TAIL + 1));
        assert_eq!(behind(index.clone()).await, 0);

        // Undone, the index is back in the messages' file, built from them.
        let undo = common::migrations_from("m20261211_000001_sqlite_search_file");
        migration::Migrator::down(&empty, Some(undo)).await.unwrap();
        let found = empty
            .query_all_raw(sea_orm::Statement::from_string(
                sea_orm::DatabaseBackend::Sqlite,
                "SELECT rowid FROM message_search WHERE message_search MATCH 'tee'",
            ))
            .await
            .unwrap();
        assert_eq!(found.len(), 1);
    }
}

/// Stores `count` messages `filler 1`, `filler 2`, … straight into the
/// SQLite database (no writer, so no indexer woken), in the conversation
/// and from the sender of the message whose text is `beside`.
async fn fillers(db: &sea_orm::DatabaseConnection, beside: &str, count: i64) {
    use sea_orm::ConnectionTrait;
    db.execute_unprepared(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count}) \
         INSERT INTO messages (chat_id, sender_id, content, created_at, seq) \
         SELECT m.chat_id, m.sender_id, 'filler ' || n.i, m.created_at, 100 + n.i \
         FROM n, (SELECT * FROM messages WHERE content = '{beside}') m"
    ))
    .await
    .unwrap();
}

/// `n` of the one row `sql` (SQLite) reads.
async fn number(db: &sea_orm::DatabaseConnection, sql: &str) -> i64 {
    use sea_orm::ConnectionTrait;
    db.query_one_raw(sea_orm::Statement::from_string(
        sea_orm::DatabaseBackend::Sqlite,
        sql,
    ))
    .await
    .unwrap()
    .expect("a row")
    .try_get("", "n")
    .unwrap()
}

/// SQLite's search index for the test database at `url` (None on the
/// other databases), opened as the server opens it.
async fn search_index(url: &str) -> Option<Arc<SearchIndex>> {
    let path = url.strip_prefix("sqlite://")?;
    let path = path.split('?').next().unwrap_or(path);
    Some(
        SearchIndex::open(std::path::Path::new(path))
            .await
            .expect("the search index"),
    )
}

backend_tests!(existing_messages => the_migration_indexes_existing_messages);

/// Sends `count` messages from `ws` to `pk`, in batches so as not to wait
/// for each acknowledgement; their ids in order.
async fn send_many(ws: &mut WsClient, pk: &str, count: usize, text: &str) -> Vec<i64> {
    let mut ids = Vec::with_capacity(count);
    for start in (0..count).step_by(100) {
        let end = (start + 100).min(count);
        for i in start..end {
            ws.send(
                json!({"type": "message", "data": {"to": pk, "content": format!("{text} {i}")}}),
            )
            .await;
        }
        for _ in start..end {
            ids.push(id(&ws.recv_type("message_response").await["data"]));
        }
    }
    ids
}

/// A conversation larger than PostgreSQL searches together with the
/// others (its own branch, planned with its size) beside a small one: an
/// old match is found, and pages run newest first across both.
async fn deep_history(backend: &Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            ("RATE_LIMIT_PER_SECOND", "100000"),
            ("RATE_LIMIT_BURST", "100000"),
            ("FANOUT_PER_SECOND", "100000"),
            ("SEARCHES_PER_MINUTE", "60000"),
        ],
    )
    .await;
    let (_, bob_id, pk) = app.pair("alice", "bob").await;
    let carol_id = app.create_user("carol", "Carol", "Doe").await;
    let (small, _) = accounts::direct_chat(&app.db, carol_id, bob_id)
        .await
        .expect("a direct conversation");
    let small = small.id.to_string();
    let mut alice = app.authorized(&app.login("alice").await).await;
    let mut bob = app.authorized(&app.login("bob").await).await;
    let mut carol = app.authorized(&app.login("carol").await).await;
    let needle = id(&send(&mut alice, &pk, "a needle in the haystack").await);
    // 1,010 in the large conversation; carol's two among them, in the
    // small one.
    let mut hay = send_many(&mut alice, &pk, 300, "hay bale").await;
    hay.push(id(&send(&mut carol, &small, "hay from carol").await));
    hay.extend(send_many(&mut alice, &pk, 600, "hay bale").await);
    hay.push(id(&send(&mut carol, &small, "hay from carol").await));
    hay.extend(send_many(&mut alice, &pk, 110, "hay bale").await);
    assert_eq!(
        ids(&search(&mut bob, json!({"query": "needle"})).await),
        vec![needle],
        "{}",
        backend.name()
    );
    assert_eq!(
        ids(&search(&mut bob, json!({"query": "haystack", "id": pk})).await),
        vec![needle]
    );
    assert_eq!(
        ids(&search(&mut bob, json!({"query": "hay from", "id": small})).await),
        vec![hay[901], hay[300]]
    );
    let newest: Vec<i64> = hay.iter().rev().copied().collect();
    let page = search(&mut bob, json!({"query": "hay", "limit": 50})).await;
    assert_eq!(
        (ids(&page), &page["has_more"]),
        (newest[..50].to_vec(), &json!(true))
    );
    // Pages across carol's messages, from both branches.
    let page = search(
        &mut bob,
        json!({"query": "ha", "before": newest[79], "limit": 50}),
    )
    .await;
    assert_eq!(ids(&page), newest[80..130].to_vec());
    let page = search(
        &mut bob,
        json!({"query": "hay", "before": newest[679], "limit": 50}),
    )
    .await;
    assert_eq!(ids(&page), newest[680..730].to_vec());
    // The oldest of them, and the needle's own "haystack" after them.
    let page = search(
        &mut bob,
        json!({"query": "hay", "before": newest[980], "limit": 50}),
    )
    .await;
    let mut expected = newest[981..].to_vec();
    expected.push(needle);
    assert_eq!((ids(&page), &page["has_more"]), (expected, &json!(false)));
}

backend_tests!(deep => deep_history);
