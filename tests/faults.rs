//! The database failing under a running server: PostgreSQL crashing and
//! coming back in the middle of a stream of messages, and SQLite's disk
//! filling up. In both, every acknowledged message is kept exactly once,
//! what could not be stored is answered with an error (never acknowledged),
//! and service resumes by itself once the database is back.

use crate::common;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use common::postgres_server::PostgresServer;
use common::{Backend, Event, TestApp, WsClient};
use entity::message;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{json, Value};

/// How long an answer may take while the database is away: the writer
/// waits up to the pool's 5 s acquire timeout for a connection, and a
/// failed batch is retried one message at a time; the rest is margin.
const ANSWER_WHILE_DOWN: Duration = Duration::from_secs(40);

/// Bytes of text per message beyond its client_id, so a few megabytes of
/// disk fill up within a few hundred messages.
const PAD: usize = 2000;

/// A client streaming messages: what it sent and has no answer for yet,
/// and the answers so far. Every message here is valid, so the writer
/// answers them in the order they were sent (an error answer names no
/// `client_id`, B3; a success answer's is checked against the order).
#[derive(Default)]
struct Stream {
    waiting: VecDeque<String>,
    /// client_id → message id.
    acked: HashMap<String, i64>,
    /// client_id → error code.
    refused: BTreeMap<String, String>,
}

impl Stream {
    /// Sends a message for each `client_id` (its text: the `client_id`
    /// and `padding` bytes), without waiting for answers.
    async fn send(
        &mut self,
        ws: &mut WsClient,
        pk: &str,
        ids: impl IntoIterator<Item = String>,
        padding: usize,
    ) {
        for id in ids {
            let content = format!("{id}{}", " .".repeat(padding / 2));
            ws.send(
                json!({"type": "message", "data": {"to": pk, "content": content, "client_id": id}}),
            )
            .await;
            self.waiting.push_back(id);
        }
    }

    /// Reads the answers to the first `count` messages still waiting.
    async fn answers(&mut self, ws: &mut WsClient, count: usize) {
        for seen in 0..count {
            let data = loop {
                match ws.next_event(ANSWER_WHILE_DOWN).await {
                    Event::Json(frame) if frame["type"] == "message_response" => {
                        break frame["data"].clone()
                    }
                    Event::Json(_) => continue,
                    other => panic!("expected answers, got {other:?} after {seen} of {count}"),
                }
            };
            let id = self
                .waiting
                .pop_front()
                .expect("an answer to a message sent");
            if data["status"] == "success" {
                assert_eq!(data["client_id"], id.as_str(), "answers in order");
                self.acked.insert(id, data["id"].as_i64().expect("an id"));
            } else {
                let code = data["code"].as_str().expect("an error code").to_string();
                self.refused.insert(id, code);
            }
        }
    }
}

impl Stream {
    /// Every resend was acknowledged, and the history is exactly what was:
    /// `count` messages, each once, under the id its acknowledgement named.
    async fn all_stored(&self, app: &TestApp, pk: &str, count: usize) {
        assert!(
            self.refused.is_empty(),
            "resends refused: {:?}",
            self.refused
        );
        let stored = message::Entity::find()
            .filter(message::Column::ChatId.eq(uuid::Uuid::parse_str(pk).unwrap()))
            .all(&app.db)
            .await
            .expect("the history");
        let history: HashMap<String, i64> = stored
            .iter()
            .map(|m| (m.client_id.clone().expect("sent with a client_id"), m.id))
            .collect();
        assert_eq!(stored.len(), history.len(), "a message stored twice");
        assert_eq!(history, self.acked);
        assert_eq!(history.len(), count);
    }
}

fn ids(prefix: &str, range: std::ops::Range<usize>) -> impl Iterator<Item = String> + '_ {
    range.map(move |n| format!("{prefix}{n}"))
}

async fn readyz(app: &TestApp) -> (u16, Value) {
    match app.http.get(app.url("/readyz")).send().await {
        Ok(mut res) => (
            res.status().as_u16(),
            res.json().await.unwrap_or(Value::Null),
        ),
        Err(_) => (0, Value::Null),
    }
}

#[actix_rt::test]
#[ignore = "needs PostgreSQL's server programs (initdb, pg_ctl); run with --include-ignored"]
async fn a_postgres_crash_mid_stream_loses_no_acknowledged_message() {
    let pg = PostgresServer::start();
    let backend = Backend::Postgres(pg.url());
    let app = TestApp::spawn_on(&backend, &pg.url(), &[("RATE_LIMIT_BURST", "100000")]).await;
    let (_, _, pk) = app.pair("alice", "bob").await;
    let mut alice = app.authorized(&app.login("alice").await).await;
    let mut stream = Stream::default();

    // A stream of messages, and the database crashes in its middle.
    stream.send(&mut alice, &pk, ids("m", 0..100), PAD).await;
    stream.answers(&mut alice, 1).await;
    pg.crash();
    stream.send(&mut alice, &pk, ids("m", 100..200), PAD).await;
    stream.answers(&mut alice, 199).await;
    assert!(
        !stream.acked.is_empty(),
        "messages before the crash were acknowledged"
    );
    assert!(
        !stream.refused.is_empty(),
        "messages after the crash could not be stored"
    );
    assert!(
        stream.refused.values().all(|code| code == "internal"),
        "refused as internal errors: {:?}",
        stream.refused
    );

    // Meanwhile /readyz says the database is down.
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["database"], "down", "{body}");

    // The database comes back: the server serves again by itself (the
    // stated bound is 5 s; the assert allows 10 s on a loaded machine).
    pg.up();
    let back = Instant::now();
    common::wait_until(|| async { readyz(&app).await.0 == 200 }).await;
    stream.send(&mut alice, &pk, ids("after", 0..1), PAD).await;
    stream.answers(&mut alice, 1).await;
    assert!(
        stream.acked.contains_key("after0"),
        "served again: {:?}",
        stream.refused
    );
    let took = back.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "served again after {took:?}"
    );

    // What was refused is resent (the same client_ids) and stored once.
    let resend = std::mem::take(&mut stream.refused);
    stream
        .send(&mut alice, &pk, resend.keys().cloned(), PAD)
        .await;
    stream.answers(&mut alice, resend.len()).await;
    stream.all_stored(&app, &pk, 201).await;
}

/// A small tmpfs, unmounted when dropped (mounting needs root).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(mounted.success(), "mount a tmpfs (this test needs root)");
        SmallDisk { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fills what is left with a file of its own; returns the file.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let ballast = self.path().join("ballast");
        let mut file = std::fs::File::create(&ballast).expect("the ballast file");
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        // The last partial chunk: down to single bytes.
        while file.write_all(&[0]).is_ok() {}
        ballast
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[actix_rt::test]
#[ignore = "needs root: it mounts a small tmpfs; run with --include-ignored"]
async fn a_full_disk_refuses_messages_and_loses_none() {
    let disk = SmallDisk::mount("4m");
    let url = format!(
        "sqlite://{}?mode=rwc",
        disk.path().join("chat.db").display()
    );
    let app = TestApp::spawn_on(&Backend::Sqlite, &url, &[("RATE_LIMIT_BURST", "100000")]).await;
    let (_, _, pk) = app.pair("alice", "bob").await;
    let mut alice = app.authorized(&app.login("alice").await).await;
    let mut stream = Stream::default();

    stream.send(&mut alice, &pk, ids("m", 0..20), PAD).await;
    stream.answers(&mut alice, 20).await;
    assert_eq!(stream.acked.len(), 20, "stored while there is room");

    // The disk fills up: what cannot be stored is refused, never acknowledged.
    let ballast = disk.fill();
    stream.send(&mut alice, &pk, ids("full", 0..50), PAD).await;
    stream.answers(&mut alice, 50).await;
    assert!(!stream.refused.is_empty(), "a full disk refuses messages");
    assert!(
        stream.refused.values().all(|code| code == "internal"),
        "refused as internal errors: {:?}",
        stream.refused.values().collect::<Vec<_>>()
    );
    // Reading still works meanwhile.
    let page = alice
        .ask(json!({"type": "get_messages", "data": {"id": pk}}))
        .await;
    assert!(
        !page["messages"].as_array().expect("messages").is_empty(),
        "{page}"
    );

    // Space returns: the refused messages are resent and stored, once each.
    std::fs::remove_file(ballast).expect("the ballast goes");
    let resend = std::mem::take(&mut stream.refused);
    stream
        .send(&mut alice, &pk, resend.keys().cloned(), PAD)
        .await;
    stream.answers(&mut alice, resend.len()).await;
    stream.all_stored(&app, &pk, 70).await;
}

/// A pooled connection whose future is dropped after its runtime is gone
/// (an instance torn down mid-query) is closed and its slot given back:
/// upstream sqlx panics in the destructor, and a second such drop during
/// that unwinding aborts the process (vendor/README.md).
/// The writers have connections of their own: with every connection of the
/// requests' pool taken (a burst of reads, as when every client asks its
/// contact list after a restart), a message is still committed and
/// acknowledged at once, and a read mark stored. Sharing the pool, the
/// writer waited out the acquire timeout and answered an error.
async fn writers_own_connections(backend: &Backend) {
    use sea_orm::TransactionTrait;
    let app = TestApp::spawn(backend).await;
    let (_, _, pk, mut a, mut b) = app.pair_online("alice", "bob").await;
    // The test servers' DB_POOL_SIZE (common::settings).
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(app.db.begin().await.expect("a pooled connection"));
    }
    let sent = json!({"type": "message", "data": {"to": pk, "content": "through"}});
    a.send(sent).await;
    let ack = a.recv_type("message_response").await;
    assert_eq!(ack["data"]["status"], "success", "{ack}");
    let id = ack["data"]["id"].as_i64().expect("the message's id");
    let pushed = b.recv_type("message").await;
    assert_eq!(pushed["data"]["data"]["id"], id, "{pushed}");
    b.mark_read(&pk, id).await;
    drop(held);
    let stored = message::Entity::find_by_id(id).one(&app.db).await.unwrap();
    assert_eq!(stored.map(|m| m.content).as_deref(), Some("through"));
}

backend_tests!(writers_commit_while_every_pooled_connection_is_taken => writers_own_connections);

/// Two transactions lock two rows in opposite orders: the database rolls
/// one back to break the deadlock, and `db::is_deadlock` knows that error
/// for what it is, so the writers run such a row's transaction again
/// (`OneByOne` in chat/writer/commit.rs) instead of answering `internal`.
/// On MySQL two instances' writers can deadlock (a foreign-key check of a
/// reply waits for the message a change has locked); SQLite has one writer.
async fn a_deadlock_is_known(backend: &Backend) {
    use futures_util::future::{select, Either};
    use sea_orm::{ConnectionTrait, TransactionTrait};
    if matches!(backend, Backend::Sqlite) {
        return;
    }
    let app = TestApp::spawn(backend).await;
    for sql in [
        "CREATE TABLE deadlock_probe (id INT PRIMARY KEY, v INT NOT NULL)",
        "INSERT INTO deadlock_probe (id, v) VALUES (1, 0), (2, 0)",
    ] {
        app.db.execute_unprepared(sql).await.unwrap();
    }
    let update = |id: i32| format!("UPDATE deadlock_probe SET v = v + 1 WHERE id = {id}");
    let (a, b) = (app.db.begin().await.unwrap(), app.db.begin().await.unwrap());
    a.execute_unprepared(&update(1)).await.unwrap();
    b.execute_unprepared(&update(2)).await.unwrap();
    let (a_then_2, b_then_1) = (update(2), update(1));
    let crossed = select(
        Box::pin(a.execute_unprepared(&a_then_2)),
        Box::pin(b.execute_unprepared(&b_then_1)),
    );
    // The first answer is the victim's error, or the survivor's success
    // with the victim's error on its way.
    let error = match crossed.await {
        Either::Left((Err(e), _)) | Either::Right((Err(e), _)) => e,
        Either::Left((Ok(_), rest)) => rest.await.unwrap_err(),
        Either::Right((Ok(_), rest)) => rest.await.unwrap_err(),
    };
    assert!(chat_server::db::is_deadlock(&error), "{error:?}");
    assert!(!chat_server::db::is_deadlock(&sea_orm::DbErr::Custom(
        "not a deadlock".into()
    )));
    // Both roll back as they are dropped (PostgreSQL holds the victim's
    // locks until then).
    drop((a, b));
}

backend_tests!(a_deadlock_is_known_for_what_it_is => a_deadlock_is_known);

#[test]
fn a_pooled_connection_dropped_without_a_runtime_is_let_go() {
    use sea_orm::sqlx::sqlite::SqlitePoolOptions;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (pool, connections) = runtime.block_on(async {
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect("sqlite::memory:")
            .await
            .expect("an in-memory pool");
        let first = pool.acquire().await.expect("a connection");
        let second = pool.acquire().await.expect("a second connection");
        (pool, vec![first, second])
    });
    assert_eq!(pool.size(), 2);
    drop(runtime);
    drop(connections);
    assert_eq!(pool.size(), 0, "both slots given back");
}

/// A write that waits out SQLite's busy timeout behind a lock another
/// writer holds is answered 503 with `Retry-After` over REST, and
/// `rate_limited` over the WebSocket, not `internal`: the server is busy,
/// not broken, and the same request goes through once the lock is free.
/// (A burst of 999 members accepting one group's invitation at once met
/// this as 500s: BENCHMARKS.md, "Accepting invitations".)
#[actix_rt::test]
async fn a_database_too_busy_to_write_asks_the_client_to_retry() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    let (_, token) = app.user("alice").await;
    let mut ws = app.authorized(&token).await;
    let create = || {
        app.http
            .post(app.url("/api/groups/"))
            .bearer_auth(&token)
            .send_json(&json!({"title": "Busy"}))
    };
    let holder = app.hold_sqlite_write_lock().await;
    let over_ws = ws.request(json!({"type": "create_group", "data": {"title": "Busy too"}}));
    let (res, answer) = futures_util::join!(create(), over_ws);
    let mut res = res.expect("a response");
    let body: Value = res.json().await.expect("a JSON body");
    assert_eq!(res.status().as_u16(), 503, "{body}");
    let retry_after = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap());
    assert_eq!(retry_after, Some("1"));
    let detail = body["detail"].as_str().expect("a detail");
    assert!(
        detail.starts_with("The server is busy; try again in a moment (error id "),
        "{detail}"
    );
    assert_eq!(answer["type"], "create_group_response", "{answer}");
    assert_eq!(answer["data"]["status"], "error", "{answer}");
    assert_eq!(answer["data"]["code"], "rate_limited", "{answer}");
    let message = answer["data"]["message"].as_str().expect("a message");
    assert!(
        message.starts_with("the server is busy; try again in a moment (error id "),
        "{message}"
    );
    holder.rollback().await.expect("the lock let go");
    let res = create().await.expect("a response");
    assert_eq!(res.status().as_u16(), 201);
}

#[test]
fn busy_is_told_apart_from_failure() {
    use sea_orm::{ConnAcquireErr, DbErr};
    // A pool that timed out may be a database that is down: a failure.
    assert!(!chat_server::db::is_busy(&DbErr::ConnectionAcquire(
        ConnAcquireErr::Timeout
    )));
    assert!(!chat_server::db::is_busy(&DbErr::Custom(
        "disk full".into()
    )));
}
