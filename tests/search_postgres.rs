//! PostgreSQL's search index, written behind the writer
//! (`src/chat/search_index/postgres.rs`): what it holds after the
//! indexer's steps, edits and deletions followed, and a message whose
//! commit is still under way below a committed one not skipped.

use crate::common;
use crate::search::{self, id, ids};
use common::{Backend, TestApp, WsClient};
use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, Statement, TransactionTrait};
use serde_json::json;
use std::time::{Duration, Instant};

async fn send(ws: &mut WsClient, pk: &str, content: &str) -> i64 {
    id(&search::send(ws, pk, content).await)
}

async fn found(ws: &mut WsClient, query: &str) -> Vec<i64> {
    ids(&search::search(ws, json!({"query": query})).await)
}

/// The one `i64` column `n` of the one row of `sql`.
async fn number(db: &DatabaseConnection, sql: &str) -> i64 {
    db.query_one_raw(Statement::from_string(DatabaseBackend::Postgres, sql))
        .await
        .unwrap()
        .expect("a row")
        .try_get("", "n")
        .unwrap()
}

/// The index's progress (message id, event id).
async fn progress(db: &DatabaseConnection) -> (i64, i64) {
    (
        number(db, "SELECT message_id AS n FROM search_progress").await,
        number(db, "SELECT event_id AS n FROM search_progress").await,
    )
}

/// Waits (up to 30 s) for `ready` to say yes of the progress.
async fn progress_until(db: &DatabaseConnection, ready: impl Fn((i64, i64)) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = progress(db).await;
        if ready(now) {
            return;
        }
        assert!(Instant::now() < deadline, "the index is still at {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The words the index holds for message `id` (empty: no row).
async fn indexed_words(db: &DatabaseConnection, id: i64) -> String {
    db.query_one_raw(Statement::from_string(
        DatabaseBackend::Postgres,
        format!(
            "SELECT coalesce((SELECT search::text FROM message_search WHERE message_id = {id}), '') AS w"
        ),
    ))
    .await
    .unwrap()
    .expect("a row")
    .try_get("", "w")
    .unwrap()
}

/// Written behind the writer, unasked; an edit and a deletion taken out
/// of the index by the next steps, and searched right after the change
/// (before those steps: the index's old words left out, the new text
/// matched beside it).
#[actix_rt::test]
#[ignore = "needs TEST_POSTGRES_URL; run with --include-ignored"]
async fn the_index_follows_messages_edits_and_deletions() {
    let app = TestApp::spawn(&Backend::postgres()).await;
    let (_, _, pk) = app.pair("alice", "bob").await;
    let mut alice = app.authorized(&app.login("alice").await).await;
    let pie = send(&mut alice, &pk, "apple pie").await;
    let tart = send(&mut alice, &pk, "apple tart").await;
    progress_until(&app.db, |(message, _)| message >= tart).await;
    assert_eq!(indexed_words(&app.db, pie).await, "'apple' 'pie'");
    assert_eq!(indexed_words(&app.db, tart).await, "'apple' 'tart'");

    for change in [
        json!({"type": "edit_message", "data": {"id": pie, "content": "banana bread"}}),
        json!({"type": "delete_message", "data": {"id": tart}}),
    ] {
        let answer = alice.ask(change).await;
        assert_eq!(answer["status"], "success", "{answer}");
    }
    assert_eq!(found(&mut alice, "apple").await, Vec::<i64>::new());
    assert_eq!(found(&mut alice, "banana").await, vec![pie]);

    let events = number(&app.db, "SELECT max(id) AS n FROM message_events").await;
    progress_until(&app.db, |(_, event)| event >= events).await;
    assert_eq!(indexed_words(&app.db, pie).await, "'banana' 'bread'");
    assert_eq!(indexed_words(&app.db, tart).await, "");
    assert_eq!(found(&mut alice, "apple").await, Vec::<i64>::new());
    assert_eq!(found(&mut alice, "bread").await, vec![pie]);
}

/// A message whose transaction took its id before a later message's and
/// is still open when that one commits (as another instance's batch can
/// be): the indexer waits for it instead of passing its id, and indexes
/// it once committed. (In another conversation: the writer locks the
/// conversation of each message it stores.)
#[actix_rt::test]
#[ignore = "needs TEST_POSTGRES_URL; run with --include-ignored"]
async fn a_commit_under_way_below_a_committed_message_is_not_skipped() {
    let app = TestApp::spawn(&Backend::postgres()).await;
    let (_, _, pk) = app.pair("alice", "bob").await;
    let (carol_id, _, other) = app.pair("carol", "dave").await;
    let mut alice = app.authorized(&app.login("alice").await).await;
    let mut carol = app.authorized(&app.login("carol").await).await;
    let first = send(&mut alice, &pk, "first").await;
    progress_until(&app.db, |(message, _)| message >= first).await;

    let held = app.db.begin().await.unwrap();
    let held_id: i64 = held
        .query_one_raw(Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            "INSERT INTO messages (chat_id, sender_id, content, created_at, seq) \
             VALUES ($1::uuid, $2, 'held back', now(), 1000000) RETURNING id AS n",
            [other.clone().into(), carol_id.into()],
        ))
        .await
        .unwrap()
        .expect("the id")
        .try_get("", "n")
        .unwrap();
    let after = send(&mut alice, &pk, "after").await;
    assert!(after > held_id);
    let acknowledged = app
        .db
        .query_one_raw(Statement::from_string(
            DatabaseBackend::Postgres,
            "SELECT clock_timestamp()::text AS t",
        ))
        .await
        .unwrap()
        .expect("a row")
        .try_get::<String>("", "t")
        .unwrap();

    // The server's indexer, woken by that commit, waits for the open
    // transaction: seen asking whether it ended (`pg_stat_activity` keeps
    // each connection's last statement and when it started; the server's
    // connections carry this test's application name; this query's own
    // earlier runs are left out). A step that began
    // before that commit found nothing new, so had nothing to wait for.
    let waiting = format!(
        "SELECT count(*) AS n FROM pg_stat_activity \
         WHERE application_name = current_setting('application_name') \
         AND query LIKE '%pg_snapshot_xip%' AND query_start > '{acknowledged}'::timestamptz \
         AND query NOT LIKE '%pg_stat_activity%'"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while number(&app.db, &waiting).await == 0 {
        assert!(Instant::now() < deadline, "the indexer never waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (message, _) = progress(&app.db).await;
    assert!(message < held_id, "passed {held_id}: at {message}");

    held.commit().await.unwrap();
    progress_until(&app.db, |(message, _)| message >= after).await;
    assert_eq!(indexed_words(&app.db, held_id).await, "'back' 'held'");
    assert_eq!(indexed_words(&app.db, after).await, "'after'");
    assert_eq!(found(&mut carol, "held").await, vec![held_id]);
    assert_eq!(found(&mut alice, "held").await, Vec::<i64>::new());
}

/// Searches match what the index does not hold yet: the messages after
/// its progress, found as soon as acknowledged even with the indexer far
/// behind (here, the index emptied and its progress put back to the
/// start, then the indexer kept out by a lock on the progress row).
#[actix_rt::test]
#[ignore = "needs TEST_POSTGRES_URL; run with --include-ignored"]
async fn a_search_matches_what_the_index_does_not_hold_yet() {
    let app = TestApp::spawn(&Backend::postgres()).await;
    let (_, _, pk) = app.pair("alice", "bob").await;
    let mut alice = app.authorized(&app.login("alice").await).await;
    let old = send(&mut alice, &pk, "walnut old").await;
    progress_until(&app.db, |(message, _)| message >= old).await;
    let hold = loop {
        app.db
            .execute_unprepared(
                "BEGIN; DELETE FROM message_search; \
                 UPDATE search_progress SET message_id = 0, event_id = 0; COMMIT",
            )
            .await
            .unwrap();
        let hold = app.db.begin().await.unwrap();
        hold.execute_unprepared("SELECT 1 FROM search_progress FOR UPDATE")
            .await
            .unwrap();
        // The indexer may have stepped between the two: then again.
        if progress(&app.db).await == (0, 0) {
            break hold;
        }
        hold.rollback().await.unwrap();
    };
    let new = send(&mut alice, &pk, "walnut new").await;
    assert_eq!(found(&mut alice, "walnut").await, vec![new, old]);
    assert_eq!(found(&mut alice, "walnu").await, vec![new, old]);
    assert_eq!(found(&mut alice, "old walnut").await, vec![old]);
    assert_eq!(progress(&app.db).await, (0, 0), "the indexer kept out");
    assert_eq!(
        number(&app.db, "SELECT count(*) AS n FROM message_search").await,
        0
    );

    hold.commit().await.unwrap();
    progress_until(&app.db, |(message, _)| message >= new).await;
    assert_eq!(indexed_words(&app.db, old).await, "'old' 'walnut'");
    assert_eq!(found(&mut alice, "walnut").await, vec![new, old]);
}
