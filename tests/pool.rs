//! The connection pool, as the database sees it: what the server sends on
//! its connections, read off the wire by a proxy between the two.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseBackend, Statement};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use crate::common::{self, Backend, TestDatabase};

/// The type bytes of the messages the server sent PostgreSQL on each
/// connection, after its start-up message, in order.
type Sent = Arc<Mutex<Vec<Vec<u8>>>>;

/// A TCP proxy to PostgreSQL at `upstream` that notes the type of every
/// message clients send through it (`Protocol::Postgres`). Its port.
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
                    let types = Protocol::Postgres.commands(&mut pending, &mut started);
                    sent.lock().unwrap()[connection].extend(types);
                    if to_server.write_all(&chunk[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// A database URL's parts: what comes before its host, its `host:port`
/// (with `default_port` when it names none), and what follows (database
/// and parameters).
fn url_parts(url: &str, default_port: u16) -> (&str, String, &str) {
    let start = url.find("://").expect("a URL") + 3;
    let start = start + url[start..].rfind('@').map_or(0, |at| at + 1);
    let end = start + url[start..].find(['/', '?']).unwrap_or(url.len() - start);
    let authority = &url[start..end];
    let address = match authority.contains(':') {
        true => authority.to_string(),
        false => format!("{authority}:{default_port}"),
    };
    (&url[..start], address, &url[end..])
}

/// `url` through a proxy on `port` of this host, without TLS (so the proxy
/// can read it).
fn through_proxy(url: &str, port: u16) -> String {
    let (before, _, after) = url_parts(url, 5432);
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
    let port = recording_proxy(url_parts(&database.url, 5432).1, sent.clone()).await;
    let url = through_proxy(&database.url, port);
    let settings = common::settings(&url, &[("DB_POOL_SIZE", "1")]);
    let pool = chat_server::db::connect(&settings).await.unwrap();
    pool.execute_unprepared("SELECT 1").await.unwrap();
    let opened = until_ends_with(&sent, b"Q").await.len();
    (database, sent, pool, opened)
}

/// MySQL's commands, as a command's first packet starts.
const COM_PING: u8 = 0x0e;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_CLOSE: u8 = 0x19;

/// The wire protocol an `AnswerCutter` reads.
#[derive(Clone, Copy)]
enum Protocol {
    MySql,
    Postgres,
}

impl Protocol {
    /// The commands of the whole messages at the front of `pending`, which
    /// are taken from it; `started` once the first message went by.
    fn commands(self, pending: &mut Vec<u8>, started: &mut bool) -> Vec<u8> {
        let mut commands = Vec::new();
        loop {
            let (command, length) = match (self, &pending[..]) {
                // A packet: a length of 3 bytes, little-endian, a sequence
                // number, then the payload; a command's first packet is
                // number 0 and starts with its code.
                (Protocol::MySql, [a, b, c, sequence, payload @ ..]) => {
                    let length = u32::from_le_bytes([*a, *b, *c, 0]) as usize;
                    let command = payload.first().filter(|_| *sequence == 0);
                    (command.copied(), 4 + length)
                }
                // A type byte and a big-endian length that counts itself,
                // but the start-up message, which has no type byte.
                (Protocol::Postgres, [first, rest @ ..]) => {
                    let skip = usize::from(*started);
                    let (command, length) = match (*started, rest) {
                        (true, [a, b, c, d, ..]) => (Some(*first), [*a, *b, *c, *d]),
                        (false, [a, b, c, ..]) => (None, [*first, *a, *b, *c]),
                        _ => break,
                    };
                    (command, skip + u32::from_be_bytes(length) as usize)
                }
                _ => break,
            };
            if pending.len() < length {
                break;
            }
            commands.extend(command);
            pending.drain(..length);
            *started = true;
        }
        commands
    }
}

/// A TCP proxy to a database that notes the command of every message a
/// client sends through it, and that can be told to cut the answer to the
/// next command of a kind short: to let so many of its bytes through, then
/// hold back the rest, and everything after it, until released.
struct AnswerCutter {
    port: u16,
    commands: Arc<Mutex<Vec<u8>>>,
    /// The command whose answer to cut, and where.
    armed: Arc<Mutex<Option<(u8, usize)>>>,
    /// How many more bytes the server may send; `None`: no limit.
    gate: watch::Sender<Option<usize>>,
    /// Notified as the armed command goes through to the server.
    cut: Arc<Notify>,
    /// The port of the client whose answer is cut.
    client: Arc<Mutex<Option<u16>>>,
}

impl AnswerCutter {
    async fn start(upstream: String, protocol: Protocol) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cutter = AnswerCutter {
            port: listener.local_addr().unwrap().port(),
            commands: Arc::default(),
            armed: Arc::default(),
            gate: watch::Sender::new(None),
            cut: Arc::default(),
            client: Arc::default(),
        };
        let (commands, armed, gate, cut, cut_client) = (
            cutter.commands.clone(),
            cutter.armed.clone(),
            cutter.gate.clone(),
            cutter.cut.clone(),
            cutter.client.clone(),
        );
        tokio::spawn(async move {
            loop {
                let (client, peer) = listener.accept().await.unwrap();
                let server = TcpStream::connect(&upstream).await.unwrap();
                let (from_client, to_client) = client.into_split();
                let (from_server, to_server) = server.into_split();
                tokio::spawn(pass_answers(from_server, to_client, gate.clone()));
                let (commands, armed, gate, cut, cut_client) = (
                    commands.clone(),
                    armed.clone(),
                    gate.clone(),
                    cut.clone(),
                    cut_client.clone(),
                );
                tokio::spawn(async move {
                    let mut from_client = from_client;
                    let mut to_server = to_server;
                    let (mut pending, mut started) = (Vec::new(), false);
                    let mut chunk = [0u8; 8192];
                    while let Ok(n @ 1..) = from_client.read(&mut chunk).await {
                        pending.extend_from_slice(&chunk[..n]);
                        for command in protocol.commands(&mut pending, &mut started) {
                            commands.lock().unwrap().push(command);
                            let mut armed = armed.lock().unwrap();
                            if let Some((_, let_through)) =
                                armed.take_if(|(armed, _)| *armed == command)
                            {
                                // Cut before the server can answer.
                                gate.send_replace(Some(let_through));
                                *cut_client.lock().unwrap() = Some(peer.port());
                                cut.notify_one();
                            }
                        }
                        if to_server.write_all(&chunk[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        cutter
    }

    /// Cuts the answer to the next `command` after `let_through` bytes.
    /// What `commands_since` reads from then on starts at the mark given.
    fn arm(&self, command: u8, let_through: usize) -> usize {
        *self.armed.lock().unwrap() = Some((command, let_through));
        self.commands.lock().unwrap().len()
    }

    /// Waits until the armed command has gone through, and its client has
    /// read all of the answer let through: the proxy has written it, and
    /// the client's socket has nothing left unread (the kernel's count,
    /// `/proc/net/tcp`; a task reads a socket and takes what it wants of
    /// what it read in one go).
    async fn until_cut_and_read(&self) {
        self.cut.notified().await;
        let client = self.client.lock().unwrap().expect("a client cut");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let written = *self.gate.borrow() == Some(0);
            if written && unread_bytes(client, self.port) == Some(0) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the client did not read the answer's first bytes"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn release(&self) {
        self.gate.send_replace(None);
    }

    /// The commands sent since `mark`, pings aside (the pool pings a
    /// connection idle for `db::PING_IF_IDLE_FOR` before handing it out).
    fn commands_since(&self, mark: usize) -> Vec<u8> {
        let commands = self.commands.lock().unwrap();
        commands[mark..]
            .iter()
            .copied()
            .filter(|&command| command != COM_PING)
            .collect()
    }
}

/// The bytes received and not yet read on this host's IPv4 TCP socket from
/// port `local` to port `remote`, as `/proc/net/tcp` counts them.
fn unread_bytes(local: u16, remote: u16) -> Option<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |address: &str| u16::from_str_radix(address.rsplit(':').next()?, 16).ok();
    table.lines().skip(1).find_map(|line| {
        // sl, local address, remote address, state, tx_queue:rx_queue, …
        let fields: Vec<&str> = line.split_whitespace().collect();
        if port(fields.get(1)?)? != local || port(fields.get(2)?)? != remote {
            return None;
        }
        usize::from_str_radix(fields.get(4)?.split(':').nth(1)?, 16).ok()
    })
}

/// Copies the server's bytes to the client as far as `gate` lets them.
async fn pass_answers(
    mut from_server: tokio::net::tcp::OwnedReadHalf,
    mut to_client: tokio::net::tcp::OwnedWriteHalf,
    gate: watch::Sender<Option<usize>>,
) {
    let mut open = gate.subscribe();
    let mut chunk = [0u8; 8192];
    while let Ok(n @ 1..) = from_server.read(&mut chunk).await {
        let mut rest = &chunk[..n];
        while !rest.is_empty() {
            let allowed = match open.wait_for(|allowed| *allowed != Some(0)).await {
                Ok(allowed) => *allowed,
                Err(_) => return,
            };
            let take = allowed.map_or(rest.len(), |bytes| bytes.min(rest.len()));
            if to_client.write_all(&rest[..take]).await.is_err() {
                return;
            }
            gate.send_modify(|allowed| {
                if let Some(bytes) = allowed {
                    *bytes -= take;
                }
            });
            rest = &rest[take..];
        }
    }
}

/// A pool of one connection to a fresh database of `backend` (PostgreSQL
/// or MySQL), through an `AnswerCutter`; the connection opened by a first
/// statement.
async fn pool_through_cutter(
    backend: Backend,
) -> (TestDatabase, AnswerCutter, sea_orm::DatabaseConnection) {
    let database = TestDatabase::create(&backend).await;
    let (protocol, port) = match backend {
        Backend::MySql(_) => (Protocol::MySql, 3306),
        _ => (Protocol::Postgres, 5432),
    };
    let (before, address, after) = url_parts(&database.url, port);
    let proxy = AnswerCutter::start(address, protocol).await;
    let url = match protocol {
        Protocol::Postgres => through_proxy(&database.url, proxy.port),
        Protocol::MySql => {
            let sep = if after.contains('?') { '&' } else { '?' };
            format!(
                "{before}127.0.0.1:{}{after}{sep}ssl-mode=disabled",
                proxy.port
            )
        }
    };
    let settings = common::settings(&url, &[("DB_POOL_SIZE", "1")]);
    let pool = chat_server::db::connect(&settings).await.unwrap();
    pool.execute_unprepared("SELECT 1").await.unwrap();
    (database, proxy, pool)
}

/// What is dropped in `a_dropped_query_leaves_its_connection_in_step`.
#[derive(Debug, Clone, Copy)]
enum Dropped {
    /// A query whose statement is not prepared yet, while it is prepared.
    Preparation,
    /// A prepared statement's run, after its answer's first header.
    HalfReadPacket,
    /// A ping before its OK.
    Ping,
}

/// A query dropped before its answer was read (a request cancelled, a
/// session ended mid-query) leaves its connection in step: as the
/// connection is given back, what is still owed is read, and the next
/// statement on the connection gets its own answer. sqlx-mysql 0.9.0 owed
/// such a connection only the answer to an execution, not to the
/// preparation before it (the next statement read the preparation's column
/// definitions as its own answer: "expected 0x00 (ROW) but found 0x03"),
/// nor to a ping, and it lost a packet's header when dropped after reading
/// it (vendor/README.md). A statement prepared for a dropped query is
/// closed: nothing else would close it while the connection lives.
#[actix_rt::test]
#[ignore = "needs TEST_MYSQL_URL; run with --include-ignored"]
async fn a_dropped_query_leaves_its_connection_in_step() {
    let (database, proxy, pool) = pool_through_cutter(Backend::mysql()).await;
    let statement = |sql: &str, values: Vec<sea_orm::Value>| {
        Statement::from_sql_and_values(DatabaseBackend::MySql, sql, values)
    };
    pool.query_one_raw(statement("SELECT ? AS e", vec![0.into()]))
        .await
        .unwrap();

    let cases = [
        (
            Dropped::Preparation,
            vec![
                COM_STMT_PREPARE,
                COM_STMT_CLOSE,
                COM_STMT_PREPARE,
                COM_STMT_EXECUTE,
            ],
        ),
        (
            Dropped::HalfReadPacket,
            vec![COM_STMT_EXECUTE, COM_STMT_EXECUTE],
        ),
        (Dropped::Ping, vec![COM_STMT_EXECUTE]),
    ];
    for (value, (dropped, commands)) in (1..).zip(cases) {
        let (command, let_through) = match dropped {
            Dropped::Preparation => (COM_STMT_PREPARE, 0),
            // The answer's first packet (its column count) is 4 bytes of
            // header and 1 of payload.
            Dropped::HalfReadPacket => (COM_STMT_EXECUTE, 4),
            Dropped::Ping => (COM_PING, 0),
        };
        let mark = proxy.arm(command, let_through);
        let task = tokio::spawn({
            let pool = pool.clone();
            let query = match dropped {
                Dropped::Preparation => {
                    statement("SELECT ? AS a, ? AS b", vec![1.into(), 2.into()])
                }
                _ => statement("SELECT ? AS e", vec![2.into()]),
            };
            async move {
                match dropped {
                    Dropped::Ping => pool.ping().await,
                    _ => pool.query_one_raw(query).await.map(drop),
                }
            }
        });
        proxy.until_cut_and_read().await;
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        proxy.release();

        let row = pool
            .query_one_raw(statement("SELECT ? AS c", vec![value.into()]))
            .await
            .unwrap_or_else(|e| panic!("{dropped:?}: the next statement's own answer: {e}"))
            .expect("a row");
        assert_eq!(row.try_get::<i64>("", "c").unwrap(), value, "{dropped:?}");
        assert_eq!(proxy.commands_since(mark), commands, "{dropped:?}");
    }
    pool.close().await.unwrap();
    drop(database);
}

/// A transaction whose caller is dropped while its `BEGIN` is on its way
/// (a cancelled request, a session ended mid-query) is rolled back: its
/// connection goes back to the pool outside any transaction, so the next
/// statements on it commit as they run. sqlx counts a transaction only
/// once its `BEGIN` is answered, so upstream gave such a connection back
/// inside a transaction the server had begun and nobody would end
/// (`db::begin`).
async fn a_transaction_dropped_while_it_begins_is_rolled_back(backend: Backend) {
    let (database, proxy, pool) = pool_through_cutter(backend).await;
    let backend = pool.get_database_backend();
    // Whether the connection runs its statements outside any transaction:
    // MySQL says so; PostgreSQL refuses a savepoint there.
    let outside = || async {
        match backend {
            DatabaseBackend::MySql => {
                let statement = "SELECT @@in_transaction = 0 AS outside";
                let row = pool
                    .query_one_raw(Statement::from_string(backend, statement))
                    .await
                    .unwrap()
                    .expect("a row");
                row.try_get::<bool>("", "outside").unwrap()
            }
            _ => pool.execute_unprepared("SAVEPOINT probe").await.is_err(),
        }
    };
    assert!(outside().await, "{backend:?}: the check tells");
    // The `BEGIN` is a text query (MySQL's `COM_QUERY`, PostgreSQL's `Q`).
    let query = match backend {
        DatabaseBackend::MySql => 0x03,
        _ => b'Q',
    };

    proxy.arm(query, 0);
    let task = tokio::spawn({
        let pool = pool.clone();
        async move { chat_server::db::begin(&pool).await.map(drop) }
    });
    proxy.until_cut_and_read().await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    proxy.release();

    assert!(
        outside().await,
        "{backend:?}: the next statement runs outside any transaction"
    );
    pool.close().await.unwrap();
    drop(database);
}

#[actix_rt::test]
#[ignore = "needs TEST_POSTGRES_URL; run with --include-ignored"]
async fn a_transaction_dropped_while_it_begins_is_rolled_back_postgres() {
    a_transaction_dropped_while_it_begins_is_rolled_back(Backend::postgres()).await;
}

#[actix_rt::test]
#[ignore = "needs TEST_MYSQL_URL; run with --include-ignored"]
async fn a_transaction_dropped_while_it_begins_is_rolled_back_mysql() {
    a_transaction_dropped_while_it_begins_is_rolled_back(Backend::mysql()).await;
}

/// Whether one of this process's threads is SQLite's (sqlx names them
/// `sqlx-sqlite-worker-N`, cut to 15 bytes) asleep in a `nanosleep`:
/// SQLite's busy handler, between two tries for a lock another connection
/// holds.
fn a_sqlite_thread_waits_for_a_lock() -> bool {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return false;
    };
    tasks.flatten().any(|task| {
        let read = |file: &str| std::fs::read_to_string(task.path().join(file)).unwrap_or_default();
        read("comm").starts_with("sqlx-sqlite-wor") && read("wchan").contains("nanosleep")
    })
}

/// The same on SQLite, whose connections are threads rather than sockets
/// a proxy could cut: the `BEGIN IMMEDIATE` of `db::begin_write` is held
/// up by another connection's write lock instead, and its caller dropped
/// while SQLite's busy handler waits. The connection's next write is
/// committed as it runs: another connection sees it. A connection's thread
/// runs its commands in order, and both sqlx-sqlite (a `BEGIN` whose caller
/// is gone) and sea-orm (a transaction dropped before its `BEGIN` was
/// answered queues a `ROLLBACK` behind it) roll such a transaction back
/// (`db::begin` sends SQLite's `BEGIN` from the caller's own task); the
/// test fails with both of those taken out of the drivers.
#[actix_rt::test]
async fn a_transaction_dropped_while_it_begins_is_rolled_back_sqlite() {
    let database = TestDatabase::create(&Backend::Sqlite).await;
    let settings = common::settings(&database.url, &[("DB_POOL_SIZE", "1")]);
    let pool = chat_server::db::connect(&settings).await.unwrap();
    let other = chat_server::db::connect(&settings).await.unwrap();
    pool.execute_unprepared("CREATE TABLE t (x INTEGER)")
        .await
        .unwrap();
    let rows = || async {
        let statement =
            Statement::from_string(DatabaseBackend::Sqlite, "SELECT count(*) AS n FROM t");
        let row = other
            .query_one_raw(statement)
            .await
            .unwrap()
            .expect("a row");
        row.try_get::<i64>("", "n").unwrap()
    };
    assert!(!a_sqlite_thread_waits_for_a_lock(), "the check tells");

    let lock = chat_server::db::begin_write(&other).await.unwrap();
    let task = tokio::spawn({
        let pool = pool.clone();
        async move { chat_server::db::begin_write(&pool).await.map(drop) }
    });
    let waited = std::time::Instant::now();
    while !a_sqlite_thread_waits_for_a_lock() {
        assert!(
            waited.elapsed() < Duration::from_secs(4),
            "the BEGIN IMMEDIATE waits for the lock"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    lock.rollback().await.unwrap();

    pool.execute_unprepared("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    assert_eq!(rows().await, 1, "the write was committed as it ran");
    pool.close().await.unwrap();
    other.close().await.unwrap();
    drop(database);
}
