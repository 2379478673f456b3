//! The connection pool, as PostgreSQL sees it: what the server sends on
//! its connections, read off the wire by a proxy between the two.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sea_orm::ConnectionTrait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{self, Backend, TestDatabase};

/// The type bytes of the messages the server sent PostgreSQL on each
/// connection, after its start-up message, in order.
type Sent = Arc<Mutex<Vec<Vec<u8>>>>;

/// A TCP proxy to `upstream` that notes the type of every message clients
/// send through it (PostgreSQL's protocol: a start-up message of a length
/// and a body, then a type byte, a length and a body each). Its address.
async fn recording_proxy(upstream: String, sent: Sent) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (client, _) = listener.accept().await.unwrap();
            let server = TcpStream::connect(&upstream).await.unwrap();
            let connection = {
                let mut sent = sent.lock().unwrap();
                sent.push(Vec::new());
                sent.len() - 1
            };
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_server, mut to_server) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
            });
            let sent = sent.clone();
            tokio::spawn(async move {
                let (mut pending, mut started) = (Vec::new(), false);
                let mut chunk = [0u8; 8192];
                while let Ok(n @ 1..) = from_client.read(&mut chunk).await {
                    pending.extend_from_slice(&chunk[..n]);
                    loop {
                        let skip = usize::from(started);
                        let Some(length) = pending.get(skip..skip + 4) else {
                            break;
                        };
                        let length = u32::from_be_bytes(length.try_into().unwrap()) as usize;
                        if pending.len() < skip + length {
                            break;
                        }
                        if started {
                            sent.lock().unwrap()[connection].push(pending[0]);
                        }
                        pending.drain(..skip + length);
                        started = true;
                    }
                    if to_server.write_all(&chunk[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// A PostgreSQL URL's parts: what comes before its host, its `host:port`,
/// and what follows (database and parameters).
fn url_parts(url: &str) -> (&str, String, &str) {
    let start = url.find("://").expect("a URL") + 3;
    let start = start + url[start..].rfind('@').map_or(0, |at| at + 1);
    let end = start + url[start..].find(['/', '?']).unwrap_or(url.len() - start);
    let authority = &url[start..end];
    let address = match authority.contains(':') {
        true => authority.to_string(),
        false => format!("{authority}:5432"),
    };
    (&url[..start], address, &url[end..])
}

/// `url` through a proxy on `port` of this host, without TLS (so the proxy
/// can read it).
fn through_proxy(url: &str, port: u16) -> String {
    let (before, _, after) = url_parts(url);
    let sep = if after.contains('?') { '&' } else { '?' };
    format!("{before}127.0.0.1:{port}{after}{sep}sslmode=disable")
}

/// What the one connection that sent anything sent (the server's probe of
/// the address, before its pool connects, sends nothing).
fn the_connections_record(sent: &Sent) -> Vec<u8> {
    let sent = sent.lock().unwrap();
    let talking: Vec<&Vec<u8>> = sent.iter().filter(|s| !s.is_empty()).collect();
    assert!(talking.len() <= 1, "{} connections", talking.len());
    talking.first().map_or_else(Vec::new, |s| s.to_vec())
}

/// Waits until the connection's record ends with `tail`.
async fn until_ends_with(sent: &Sent, tail: &[u8]) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = the_connections_record(sent);
        if seen.ends_with(tail) {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connection sent {:?}, not ending with {:?}",
            String::from_utf8_lossy(&seen),
            String::from_utf8_lossy(tail)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A connection in use is handed out again without a ping (sqlx pings every
/// connection it hands out unless told otherwise); one idle for longer than
/// `db::PING_IF_IDLE_FOR` is pinged first. None is pinged as it is given
/// back: upstream sqlx pings each one then, a round trip after every
/// statement and every batch of the writers' that nothing waits for
/// (vendor/README.md). What PostgreSQL receives, per statement (`Q`, a
/// simple query): the statement alone; after an idle while, a ping (`S`, a
/// Sync) and the statement.
#[actix_rt::test]
#[ignore = "needs TEST_POSTGRES_URL; run with --include-ignored"]
async fn a_connection_is_pinged_only_before_use_after_an_idle_while() {
    let (database, sent, pool, before) = pool_through_proxy().await;
    for _ in 0..10 {
        pool.execute_unprepared("SELECT 1").await.unwrap();
    }
    let busy = until_ends_with(&sent, b"Q").await;
    assert_eq!(
        String::from_utf8_lossy(&busy[before..]),
        "Q".repeat(10),
        "each statement alone: no ping before it, none as it is given back"
    );
    tokio::time::sleep(chat_server::db::PING_IF_IDLE_FOR + Duration::from_millis(200)).await;
    pool.execute_unprepared("SELECT 1").await.unwrap();
    let idle = until_ends_with(&sent, b"SQ").await;
    assert_eq!(String::from_utf8_lossy(&idle[busy.len()..]), "SQ");
    pool.close().await.unwrap();
    drop(database);
}

/// A transaction dropped unfinished (an error's early return, a cancelled
/// request) is rolled back as its connection is given back, without the
/// ping upstream adds: the queued ROLLBACK is sent and its answer read, so
/// the next statement on that connection runs outside it and sees nothing
/// of it.
#[actix_rt::test]
#[ignore = "needs TEST_POSTGRES_URL; run with --include-ignored"]
async fn a_dropped_transaction_is_rolled_back_as_its_connection_is_given_back() {
    use sea_orm::TransactionTrait;
    let (database, sent, pool, before) = pool_through_proxy().await;
    let transaction = pool.begin().await.unwrap();
    transaction
        .execute_unprepared("CREATE TABLE never_committed (id int)")
        .await
        .unwrap();
    drop(transaction);
    let left = pool
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT to_regclass('never_committed') IS NULL AS gone, \
             pg_current_xact_id_if_assigned() IS NULL AS outside",
        ))
        .await
        .unwrap()
        .expect("a row");
    assert!(left.try_get::<bool>("", "gone").unwrap(), "rolled back");
    assert!(left.try_get::<bool>("", "outside").unwrap());
    let seen = the_connections_record(&sent);
    assert_eq!(
        String::from_utf8_lossy(&seen[before..]),
        "QQQPDSBECS",
        "BEGIN, CREATE, ROLLBACK (simple queries), then the SELECT prepared \
         (parse, describe, sync) and run (bind, execute, close, sync); no ping"
    );
    pool.close().await.unwrap();
    drop(database);
}

/// A pool of one connection to a fresh PostgreSQL database, through a proxy
/// that records what it sends; the connection opened by a first statement,
/// and how much of the record that took (what a test reads comes after).
async fn pool_through_proxy() -> (TestDatabase, Sent, sea_orm::DatabaseConnection, usize) {
    let database = TestDatabase::create(&Backend::postgres()).await;
    let sent = Sent::default();
    let port = recording_proxy(url_parts(&database.url).1, sent.clone()).await;
    let url = through_proxy(&database.url, port);
    let settings = common::settings(&url, &[("DB_POOL_SIZE", "1")]);
    let pool = chat_server::db::connect(&settings).await.unwrap();
    pool.execute_unprepared("SELECT 1").await.unwrap();
    let opened = until_ends_with(&sent, b"Q").await.len();
    (database, sent, pool, opened)
}
