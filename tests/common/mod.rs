//! Test support: start the real server (from `lib.rs`, as the binary does)
//! on a free port against a fresh database of each configured backend, and
//! talk to it over real HTTP and a real WebSocket.
//!
//! Backends: SQLite (a temp dir; a server's database starts as a copy of
//! one migrated once per test binary), PostgreSQL (`TEST_POSTGRES_URL`, a fresh
//! schema per app) and MySQL/MariaDB (`TEST_MYSQL_URL`, a fresh database per
//! app), each dropped with the app. `backend_tests!` makes one test per
//! backend, so a failure names its backend; the server-database tests are
//! `#[ignore]`d, so a bare `cargo test` reports them as ignored, and
//! `cargo test -- --include-ignored` (what CI runs) fails them when their
//! service is not configured.

#![allow(dead_code)]

pub mod postgres_server;
pub mod redis_cluster;

use std::sync::OnceLock;
use std::time::Duration;

use actix_http::ws;
use awc::BoxedSocket;
use chat_server::accounts::{self, NewUser};
use chat_server::chat::messages::{ServerStats, Stats};
use chat_server::config::Settings;
use chat_server::Application;
use futures_util::{SinkExt, StreamExt};
use sea_orm::{ConnectionTrait, Database, DatabaseBackend, DatabaseConnection, Statement};
use serde_json::{json, Value};

/// How long a test waits for any one frame or response.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `recv_type` skips other frames while waiting for its kind.
pub const RECV_TYPE_TIMEOUT: Duration = Duration::from_secs(30);
pub const PASSWORD: &str = "correct horse battery";
/// PASSWORD as argon2id at the smallest cost (8 KiB, one pass), hashed once
/// per test process: the stored hash of every account `create_user` makes.
/// The server verifies a hash with the parameters it carries, so a login of
/// such an account costs microseconds instead of argon2's 20-40 ms at the
/// production cost, which was 7 % of the test run's CPU (docs/CI.md).
/// Sign-ups and password changes through the API, and the logins of unknown
/// usernames, still hash at the production cost, and the library's unit test
/// checks that cost.
pub fn cheap_hash() -> &'static str {
    use argon2::password_hash::{PasswordHasher, SaltString};
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let params = argon2::Params::new(8, 1, 1, None).expect("the smallest valid cost");
        let hasher =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = SaltString::encode_b64(b"test salt, 16 b").expect("16 bytes are a valid salt");
        hasher
            .hash_password(PASSWORD.as_bytes(), &salt)
            .expect("hashing with valid parameters cannot fail")
            .to_string()
    })
}

/// The token key of test servers (at least 32 bytes, as the server requires).
pub const TEST_SECRET: &str = "test-secret-test-secret-test-secret";

/// A database the server can run on.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    Postgres(String),
    MySql(String),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres(_) => "postgres",
            Backend::MySql(_) => "mysql",
        }
    }
}

/// A variable a test cannot run without: a test that was asked to run
/// (`--include-ignored`) fails when it is missing, it never passes unrun.
pub fn required_env(name: &str, what: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!("{name} is not set: this test needs {what}"),
    }
}

impl Backend {
    /// PostgreSQL at `TEST_POSTGRES_URL`.
    pub fn postgres() -> Self {
        Backend::Postgres(required_env("TEST_POSTGRES_URL", "PostgreSQL"))
    }

    /// MySQL or MariaDB at `TEST_MYSQL_URL`.
    pub fn mysql() -> Self {
        Backend::MySql(required_env("TEST_MYSQL_URL", "MySQL or MariaDB"))
    }
}

/// One test per backend: `NAME::sqlite`, `NAME::postgres`, `NAME::mysql`,
/// each running `FUNCTION(&backend)`. The server databases' are ignored
/// unless asked for (`cargo test -- --include-ignored`).
#[macro_export]
macro_rules! backend_tests {
    ($name:ident => $function:ident) => {
        mod $name {
            #[actix_rt::test]
            async fn sqlite() {
                super::$function(&$crate::common::Backend::Sqlite).await
            }
            $crate::server_backend_tests!(@each $function);
        }
    };
    // The server databases only (for several instances on one database).
    (@server $name:ident => $function:ident) => {
        mod $name {
            $crate::server_backend_tests!(@each $function);
        }
    };
}

/// The PostgreSQL and MySQL tests of `backend_tests!`.
#[macro_export]
macro_rules! server_backend_tests {
    (@each $function:ident) => {
        #[actix_rt::test]
        #[ignore = "needs TEST_POSTGRES_URL; run with --include-ignored"]
        async fn postgres() {
            super::$function(&$crate::common::Backend::postgres()).await
        }
        #[actix_rt::test]
        #[ignore = "needs TEST_MYSQL_URL; run with --include-ignored"]
        async fn mysql() {
            super::$function(&$crate::common::Backend::mysql()).await
        }
    };
}

fn unique_name() -> String {
    format!("t{}_{}", std::process::id(), uuid::Uuid::new_v4().simple())
}

/// The file of a SQLite test database, in its temporary directory.
const SQLITE_FILE: &str = "chat.db";

/// A fresh database of `backend`, dropped with this value.
pub struct TestDatabase {
    pub url: String,
    cleanup: Option<Cleanup>,
    /// SQLite's: the temporary directory holding `SQLITE_FILE`.
    dir: Option<tempfile::TempDir>,
}

/// How a server database is dropped: first the connections still using it
/// (`ends_sessions`), then `drop` itself. A test's servers run on the test's
/// own thread, which the drop blocks: a server caught inside a transaction
/// would hold its locks for ever, and the `DROP` would wait for them for
/// ever, so their sessions are ended first.
struct Cleanup {
    base: String,
    ends_sessions: String,
    /// A bound on how long the drop waits for a lock, then the drop.
    drop: [String; 2],
}

/// The search migration's extensions, in `public` once for every test's
/// schema. Left to the migration, the first test would create them in its
/// own schema (the first of its search path), and dropping that schema at
/// its end would take them away from every test still running. Two test
/// processes may race to create one: the loser finds it there.
async fn search_extensions(admin: &DatabaseConnection) {
    for extension in ["unaccent", "btree_gin"] {
        let create = format!("CREATE EXTENSION IF NOT EXISTS {extension} SCHEMA public");
        if let Err(e) = admin.execute_unprepared(&create).await {
            let there = admin
                .query_one_raw(Statement::from_string(
                    DatabaseBackend::Postgres,
                    format!("SELECT 1 AS one FROM pg_extension WHERE extname = '{extension}'"),
                ))
                .await
                .expect("read pg_extension");
            assert!(there.is_some(), "CREATE EXTENSION {extension}: {e}");
        }
    }
}

impl TestDatabase {
    /// A database with the schema as the migrations leave it, and no rows:
    /// what a server makes of an empty one at its first start, for less.
    /// On SQLite a copy of a template migrated once (`sqlite_template`);
    /// elsewhere an empty one, which the first server migrates.
    pub async fn migrated(backend: &Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let database = Self::create(backend).await;
                let dir = database
                    .dir
                    .as_ref()
                    .expect("a SQLite database has its directory");
                copy_private(&sqlite_template().await, &dir.path().join(SQLITE_FILE));
                database
            }
            _ => Self::create(backend).await,
        }
    }

    /// An empty database, for tests of the migrations themselves.
    pub async fn create(backend: &Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join(SQLITE_FILE).display()
                );
                TestDatabase {
                    url,
                    cleanup: None,
                    dir: Some(dir),
                }
            }
            Backend::Postgres(base) => {
                let schema = unique_name();
                let admin = Database::connect(base.as_str()).await.unwrap_or_else(|e| {
                    panic!(
                        "cannot connect to TEST_POSTGRES_URL={base}: {e} \
                         (is PostgreSQL running, and does the database exist? createdb -U postgres test)"
                    )
                });
                search_extensions(&admin).await;
                admin
                    .execute_unprepared(&format!("CREATE SCHEMA {schema}"))
                    .await
                    .expect("create schema");
                admin.close().await.ok();
                let sep = if base.contains('?') { '&' } else { '?' };
                // The schema's name as the connections' application name too:
                // how the cleanup finds them.
                let url = format!(
                    "{base}{sep}options=-c%20search_path%3D{schema}&application_name={schema}"
                );
                TestDatabase {
                    url,
                    cleanup: Some(Cleanup {
                        base: base.clone(),
                        ends_sessions: format!(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                             WHERE application_name = '{schema}' AND pid <> pg_backend_pid()"
                        ),
                        drop: [
                            "SET lock_timeout = '20s'".into(),
                            format!("DROP SCHEMA {schema} CASCADE"),
                        ],
                    }),
                    dir: None,
                }
            }
            Backend::MySql(base) => {
                let name = unique_name();
                let admin = Database::connect(base.as_str()).await.unwrap_or_else(|e| {
                    panic!(
                        "cannot connect to TEST_MYSQL_URL={base}: {e} \
                         (is MariaDB running, and does the database exist? CREATE DATABASE test)"
                    )
                });
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create database");
                admin.close().await.ok();
                let root = base.rsplit_once('/').map(|(r, _)| r).unwrap_or(base);
                let url = format!("{root}/{name}");
                TestDatabase {
                    url,
                    cleanup: Some(Cleanup {
                        base: base.clone(),
                        ends_sessions: format!(
                            "SELECT id FROM information_schema.processlist \
                             WHERE db = '{name}' AND id <> CONNECTION_ID()"
                        ),
                        drop: [
                            "SET SESSION lock_wait_timeout = 20".into(),
                            format!("DROP DATABASE {name}"),
                        ],
                    }),
                    dir: None,
                }
            }
        }
    }
}

/// A migrated SQLite database, made once per test binary (`binary_key`)
/// and copied for each test: a test that starts a server on SQLite took
/// 231 ms of CPU instead of 306 (docs/CI.md, "The twenty-third machine"). Concurrent
/// tests may each make one: each is complete before it is renamed into
/// place, and the last rename wins.
async fn sqlite_template() -> std::path::PathBuf {
    let template =
        std::env::temp_dir().join(format!("chat-test-template-{:016x}.db", binary_key()));
    if template.exists() {
        return template;
    }
    remove_old_templates();
    let scratch = TestDatabase::create(&Backend::Sqlite).await;
    let db = chat_server::db::connect(&settings(&scratch.url, &[]))
        .await
        .expect("open the template");
    chat_server::db::migrate(&db, &scratch.url)
        .await
        .expect("migrate the template");
    // One file, whatever the WAL holds: what every test copies.
    let made = std::env::temp_dir().join(format!("{}.db", unique_name()));
    db.execute_unprepared(&format!("VACUUM INTO '{}'", made.display()))
        .await
        .expect("write the template");
    db.close().await.ok();
    std::fs::rename(&made, &template).expect("put the template in place");
    template
}

/// Other builds' templates, once a day old.
fn remove_old_templates() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 24 * 3600));
        if old
            && entry
                .file_name()
                .to_string_lossy()
                .starts_with("chat-test-template-")
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// What names a template after the test binary that made it: its path,
/// size and time, so a rebuilt binary (whose migrations may differ) makes
/// its own.
fn binary_key() -> u64 {
    use std::hash::{Hash, Hasher};
    let exe = std::env::current_exe().expect("the test binary's path");
    let meta = std::fs::metadata(&exe).expect("the test binary's metadata");
    let mut hash = std::collections::hash_map::DefaultHasher::new();
    (&exe, meta.len(), meta.modified().ok()).hash(&mut hash);
    hash.finish()
}

/// Copies `from` to `to`, readable by its owner only, as the server makes
/// a new database file (it warns about any other mode).
fn copy_private(from: &std::path::Path, to: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy(from, to).expect("copy the template");
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some(files) = attachments_dir(&self.url) {
            let _ = std::fs::remove_dir_all(files);
        }
        if let Some(cleanup) = self.cleanup.take() {
            // Drop runs inside the test's runtime: do the async cleanup on a thread of its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(cleanup.run());
            })
            .join();
        }
    }
}

impl Cleanup {
    async fn run(self) {
        // One connection, so the `SET` before the drop applies to it.
        let options = sea_orm::ConnectOptions::new(self.base.as_str())
            .max_connections(1)
            .to_owned();
        let Ok(admin) = Database::connect(options).await else {
            return;
        };
        match admin.get_database_backend() {
            sea_orm::DatabaseBackend::MySql => {
                // MariaDB ends a session by `KILL <id>`, one statement each.
                let ids = admin
                    .query_all_raw(Statement::from_string(
                        sea_orm::DatabaseBackend::MySql,
                        self.ends_sessions.clone(),
                    ))
                    .await
                    .unwrap_or_default();
                for row in ids {
                    if let Ok(id) = row.try_get_by_index::<i64>(0) {
                        let _ = admin.execute_unprepared(&format!("KILL {id}")).await;
                    }
                }
            }
            _ => {
                let _ = admin.execute_unprepared(&self.ends_sessions).await;
            }
        }
        for statement in &self.drop {
            if let Err(e) = admin.execute_unprepared(statement).await {
                eprintln!("test database left behind ({statement}): {e}");
            }
        }
        let _ = admin.close().await;
    }
}

/// Where a test server on a server database keeps attachments: a
/// directory of the database's own (SQLite keeps them beside its file, in
/// the test's temporary directory), removed with the database. Instances
/// on one database share it.
pub fn attachments_dir(url: &str) -> Option<std::path::PathBuf> {
    use std::hash::{Hash, Hasher};
    if url.starts_with("sqlite:") {
        return None;
    }
    let mut hash = std::collections::hash_map::DefaultHasher::new();
    url.hash(&mut hash);
    Some(std::env::temp_dir().join(format!("chat-test-files-{:016x}", hash.finish())))
}

/// Settings for a test server on `url`: a free port, one worker, a fixed secret.
pub fn settings(url: &str, extra: &[(&str, &str)]) -> Settings {
    let files = attachments_dir(url).map(|d| d.display().to_string());
    let mut vars: Vec<(String, String)> = vec![
        ("ATTACHMENTS_SHARED".into(), "1".into()),
        ("DATABASE_URL".into(), url.into()),
        ("HOST".into(), "127.0.0.1".into()),
        ("PORT".into(), "0".into()),
        ("SECRET_KEY".into(), TEST_SECRET.into()),
        ("WORKERS".into(), "2".into()),
        ("DB_POOL_SIZE".into(), "8".into()),
    ];
    if let Some(files) = files {
        vars.push(("ATTACHMENTS_DIR".into(), files));
    }
    for (k, v) in extra {
        vars.retain(|(name, _)| name != k);
        vars.push((k.to_string(), v.to_string()));
    }
    Settings::from_vars(vars).expect("test settings are valid")
}

/// A running server.
pub struct TestApp {
    pub port: u16,
    pub backend: Backend,
    pub db: DatabaseConnection,
    pub http: awc::Client,
    pub chat_server: actix::Addr<chat_server::chat::server::ChatServer>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    running: Option<tokio::task::JoinHandle<()>>,
    database: Option<TestDatabase>,
    redis_keys: Option<RedisKeys>,
}

impl TestApp {
    /// The database's URL (a SQLite one names its file).
    pub fn database_url(&self) -> Option<&str> {
        self.database.as_ref().map(|d| d.url.as_str())
    }

    /// Starts a server on a fresh database of `backend`.
    pub async fn spawn(backend: &Backend) -> TestApp {
        Self::spawn_with(backend, &[]).await
    }

    /// Starts a server with extra settings (`("RATE_LIMIT_BURST", "5")`, …).
    /// On a server database with `TEST_REDIS_URL` set, the app also runs
    /// its Redis bridge (as a deployment of several instances would), so
    /// every suite exercises it; SQLite stays on the in-process bus.
    pub async fn spawn_with(backend: &Backend, extra: &[(&str, &str)]) -> TestApp {
        let database = TestDatabase::migrated(backend).await;
        let prefix = redis_prefix();
        let redis = redis_url().filter(|_| !matches!(backend, Backend::Sqlite));
        let mut extra = extra.to_vec();
        if let Some(url) = &redis {
            extra.push(("REDIS_URL", url.as_str()));
            extra.push(("REDIS_PREFIX", prefix.as_str()));
        }
        let mut app = Self::spawn_on(backend, &database.url, &extra).await;
        if let Some(url) = redis {
            app.wait_redis(true).await;
            app.drop_redis_keys(&url, &prefix);
        }
        app.database = Some(database);
        app
    }

    /// Starts a server on an existing database (a second instance, a restart).
    pub async fn spawn_on(backend: &Backend, url: &str, extra: &[(&str, &str)]) -> TestApp {
        // On the heap, not in the test's future on the test thread's stack.
        let application = Box::pin(Application::build(settings(url, extra)))
            .await
            .expect("server starts");
        let port = application.port();
        let db = application.db().clone();
        let chat_server = application.chat_server();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = actix_web::rt::spawn(async move {
            let _ = application
                .run_until(async {
                    let _ = stopped.await;
                })
                .await;
        });
        let http = http_client();
        TestApp {
            port,
            backend: backend.clone(),
            db,
            http,
            chat_server,
            stop: Some(stop),
            running: Some(running),
            database: None,
            redis_keys: None,
        }
    }

    /// Deletes the Redis keys under `prefix` when this app is dropped.
    pub fn drop_redis_keys(&mut self, url: &str, prefix: &str) {
        self.redis_keys = Some(RedisKeys::new(url, prefix));
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Gracefully stops the server and waits until it has.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(running) = self.running.take() {
            let _ = tokio::time::timeout(TIMEOUT, running).await;
        }
    }

    /// The ChatServer's map sizes.
    pub async fn stats(&self) -> ServerStats {
        self.chat_server
            .send(Stats)
            .await
            .expect("chat server alive")
    }

    /// Creates an account directly, with the password PASSWORD.
    pub async fn create_user(&self, username: &str, first: &str, last: &str) -> i64 {
        let hash = cheap_hash();
        let user = accounts::insert_user(
            &self.db,
            NewUser {
                username: username.into(),
                email: format!("{username}@example.com"),
                first_name: first.into(),
                last_name: last.into(),
                ..Default::default()
            },
            hash.to_string(),
        )
        .await
        .expect("create user");
        user.id
    }

    /// An account and its token: (id, token).
    pub async fn user(&self, username: &str) -> (i64, String) {
        let id = self
            .create_user(username, &capitalize(username), "Doe")
            .await;
        (id, self.login(username).await)
    }

    /// A REST call with a bearer token and an optional JSON body: (status, body).
    pub async fn rest(
        &self,
        method: actix_web::http::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let request = self.http.request(method, self.url(path)).bearer_auth(token);
        let sent = match body {
            Some(body) => request.send_json(&body).await,
            None => request.send().await,
        };
        let mut res = sent.expect("REST request");
        let status = res.status().as_u16();
        let body = res.json().limit(1 << 22).await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Takes SQLite's write lock in a transaction of the test's own, as
    /// another writer would: the server's writes wait for it, past the
    /// busy timeout, until it is rolled back.
    pub async fn hold_sqlite_write_lock(&self) -> sea_orm::DatabaseTransaction {
        use sea_orm::{SqliteTransactionMode, TransactionOptions, TransactionTrait};
        self.db
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await
            .expect("the write lock")
    }

    /// Logs in over REST (form encoding, as the web client does) and returns the token.
    pub async fn login(&self, username: &str) -> String {
        let mut res = self
            .http
            .post(self.url("/api/login/?"))
            .send_form(&[("username", username), ("password", PASSWORD)])
            .await
            .expect("login request");
        assert_eq!(res.status().as_u16(), 200, "login of {username}");
        let body: Value = res.json().await.expect("login body");
        body["token"].as_str().expect("token").to_string()
    }

    /// Two users with a direct conversation: (alice id, bob id, conversation id).
    pub async fn pair(&self, a: &str, b: &str) -> (i64, i64, String) {
        let ida = self.create_user(a, &capitalize(a), "Smith").await;
        let idb = self.create_user(b, &capitalize(b), "Jones").await;
        let (chat, _) = accounts::direct_chat(&self.db, ida, idb)
            .await
            .expect("direct chat");
        (ida, idb, chat.id.to_string())
    }

    /// `pair`, with both people connected and the first having seen the
    /// second come online: their ids, the conversation, their sockets.
    pub async fn pair_online(&self, a: &str, b: &str) -> (i64, i64, String, WsClient, WsClient) {
        let (ida, idb, pk) = self.pair(a, b).await;
        let mut wa = self.authorized(&self.login(a).await).await;
        let wb = self.authorized(&self.login(b).await).await;
        wa.recv_type("presence").await;
        (ida, idb, pk, wa, wb)
    }

    /// Alice, bob and carol in a group alice made: their ids and tokens,
    /// alice's socket (the one that made it), and the group's id.
    pub async fn trio(&self) -> ([(i64, String); 3], WsClient, Value) {
        let people = [
            self.user("alice").await,
            self.user("bob").await,
            self.user("carol").await,
        ];
        let [alice, bob, carol] = people.each_ref().map(|(id, _)| *id);
        have_written(&self.db, &[bob, carol], alice).await;
        let mut ws = self.authorized(&people[0].1).await;
        let group =
            json!({"type": "create_group", "data": {"title": "three", "members": [bob, carol]}});
        let pk = ws.ask_change(group).await["pk"].clone();
        (people, ws, pk)
    }

    /// A WebSocket to `/chat`, before anything is read.
    pub async fn ws(&self, path: &str) -> WsClient {
        ws_at(&self.http, self.port, path).await
    }

    /// A WebSocket that has read the `info` frame and authorized with `token`.
    pub async fn authorized(&self, token: &str) -> WsClient {
        authorized_at(&self.http, self.port, token).await
    }
}

/// A WebSocket to `path` on `port` (a server, or a proxy in front of some).
pub async fn ws_at(http: &awc::Client, port: u16, path: &str) -> WsClient {
    let url = format!("ws://127.0.0.1:{port}{path}");
    let (_, framed) = tokio::time::timeout(TIMEOUT, http.ws(url).max_frame_size(1 << 20).connect())
        .await
        .expect("ws connect timed out")
        .expect("ws connect");
    WsClient { framed }
}

/// `n` instances on one database and one Redis, as a deployment of several
/// runs them; the first deletes the Redis keys under their prefix when dropped.
pub async fn instances(
    backend: &Backend,
    redis: &str,
    db: &TestDatabase,
    n: usize,
) -> Vec<TestApp> {
    instances_with(backend, redis, db, n, &[]).await
}

/// `instances`, each with the settings `extra` besides.
pub async fn instances_with(
    backend: &Backend,
    redis: &str,
    db: &TestDatabase,
    n: usize,
    extra: &[(&str, &str)],
) -> Vec<TestApp> {
    let prefix = redis_prefix();
    let mut settings = vec![("REDIS_URL", redis), ("REDIS_PREFIX", prefix.as_str())];
    settings.extend_from_slice(extra);
    let mut apps = Vec::with_capacity(n);
    for _ in 0..n {
        apps.push(TestApp::spawn_on(backend, &db.url, &settings).await);
    }
    for app in &apps {
        app.wait_redis(true).await;
    }
    apps[0].drop_redis_keys(redis, &prefix);
    apps
}

/// A WebSocket on `port` that has read the `info` frame and authorized with `token`.
pub async fn authorized_at(http: &awc::Client, port: u16, token: &str) -> WsClient {
    let mut ws = ws_at(http, port, "/chat").await;
    assert_eq!(
        ws.recv().await,
        json!({"type": "info", "data": "Waiting user token..."})
    );
    ws.send(json!({"type": "authorization", "data": {"token": token}}))
        .await;
    assert_eq!(
        ws.recv().await,
        json!({"type": "authorization_response", "data": {"status": "success"}})
    );
    ws
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// What came out of the socket when a test expected a frame.
#[derive(Debug)]
pub enum Event {
    Json(Value),
    Close(Option<ws::CloseReason>),
    /// Nothing within the wait.
    Silence,
    /// The connection ended without a close frame.
    Ended,
}

/// A real WebSocket client.
pub struct WsClient {
    framed: actix_codec::Framed<BoxedSocket, ws::Codec>,
}

impl WsClient {
    pub async fn send(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_message(ws::Message::Text(text.to_string().into()))
            .await;
    }

    /// Sends one frame; fails if the server has not taken it within
    /// `TIMEOUT` (a server that stopped reading fills the socket's buffers).
    pub async fn send_message(&mut self, message: ws::Message) {
        tokio::time::timeout(TIMEOUT, self.framed.send(message))
            .await
            .expect("the server takes the frame within TIMEOUT")
            .expect("send frame");
    }

    /// The next event within `wait`, answering pings and skipping pongs.
    pub async fn next_event(&mut self, wait: Duration) -> Event {
        self.next_event_with(wait, true).await
    }

    /// The next event within `wait`, leaving the server's pings unanswered
    /// (a client that reads but is otherwise dead).
    pub async fn next_event_unanswered(&mut self, wait: Duration) -> Event {
        self.next_event_with(wait, false).await
    }

    async fn next_event_with(&mut self, wait: Duration, answer_pings: bool) -> Event {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.framed.next()).await {
                Err(_) => return Event::Silence,
                Ok(None) => return Event::Ended,
                Ok(Some(Err(_))) => return Event::Ended,
                Ok(Some(Ok(frame))) => frame,
            };
            match frame {
                ws::Frame::Text(bytes) => {
                    return Event::Json(
                        serde_json::from_slice(&bytes).expect("server sends JSON text frames"),
                    )
                }
                ws::Frame::Ping(p) if answer_pings => {
                    let _ = self.framed.send(ws::Message::Pong(p)).await;
                }
                ws::Frame::Ping(_) => {}
                ws::Frame::Pong(_) => {}
                ws::Frame::Close(reason) => return Event::Close(reason),
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Answers the server's next `n` pings (B5), failing on any other frame.
    pub async fn answer_pings(&mut self, n: usize) {
        for _ in 0..n {
            match tokio::time::timeout(TIMEOUT, self.framed.next()).await {
                Ok(Some(Ok(ws::Frame::Ping(p)))) => {
                    self.framed
                        .send(ws::Message::Pong(p))
                        .await
                        .expect("send pong");
                }
                other => panic!("expected a ping, got {other:?}"),
            }
        }
    }

    /// The next JSON frame (fails on anything else).
    pub async fn recv(&mut self) -> Value {
        match self.next_event(TIMEOUT).await {
            Event::Json(v) => v,
            other => panic!("expected a JSON frame, got {other:?}"),
        }
    }

    /// The next frame of `kind`, skipping others (presence, typing, …);
    /// fails if none comes within `RECV_TYPE_TIMEOUT`, however many others
    /// keep coming (a stream of messages must not hide a missing answer).
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        let deadline = tokio::time::Instant::now() + RECV_TYPE_TIMEOUT;
        let mut skipped = 0usize;
        loop {
            let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = match self.next_event(wait).await {
                Event::Json(v) => v,
                other => panic!("expected a {kind} frame (after {skipped} others), got {other:?}"),
            };
            if frame["type"] == kind {
                return frame;
            }
            skipped += 1;
        }
    }

    /// A barrier for "nothing was pushed here": sends a ping and asserts the
    /// very next frame is its pong. Valid once the event that must not reach
    /// this socket has been seen reaching another socket of the same
    /// instance: the ChatServer pushes one event to every session of a room
    /// in one step, so a wrong frame would already stand before the pong.
    pub async fn nothing_before_pong(&mut self) {
        assert_eq!(
            self.request(json!({"type": "ping", "data": {}})).await,
            json!({"type": "pong", "data": {}})
        );
    }

    /// Reads this session's next frames until it has heard the `read`
    /// pushes (B4) of `readers` in conversation `pk` at `up_to`, each once,
    /// and its own `read_response` when it `marked` too (skipping other
    /// frames: a push and the answer to the session's own mark go separate
    /// ways, so either may come first).
    pub async fn expect_reads(&mut self, pk: &Value, up_to: &Value, readers: &[i64], marked: bool) {
        let mut reads = Vec::new();
        let mut answered = !marked;
        while reads.len() < readers.len() || !answered {
            let frame = self.recv().await;
            match frame["type"].as_str() {
                Some("read") => reads.push(frame),
                Some("read_response") => {
                    assert!(!answered, "answered twice: {frame}");
                    assert_eq!(frame["data"]["status"], "success", "{frame}");
                    answered = true;
                }
                _ => {}
            }
        }
        reads.sort_by_key(|frame| frame["data"]["user_id"].as_i64());
        let mut readers = readers.to_vec();
        readers.sort();
        let expected: Vec<Value> = readers
            .iter()
            .map(
                |user| json!({"type": "read", "data": {"pk": pk, "user_id": user, "up_to": up_to}}),
            )
            .collect();
        assert_eq!(reads, expected);
    }

    /// A barrier that tolerates news still on its way from another
    /// instance (presence, which may cross Redis late): sends a ping and
    /// returns every JSON frame that came before its pong.
    pub async fn frames_before_pong(&mut self) -> Vec<Value> {
        self.send(json!({"type": "ping", "data": {}})).await;
        let mut frames = Vec::new();
        loop {
            let frame = self.recv().await;
            if frame == json!({"type": "pong", "data": {}}) {
                return frames;
            }
            frames.push(frame);
        }
    }

    /// The close frame the server sends next (skipping JSON frames).
    pub async fn expect_close(&mut self) -> Option<ws::CloseReason> {
        loop {
            match self.next_event(TIMEOUT).await {
                Event::Json(_) => continue,
                Event::Close(reason) => return reason,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// Asserts the server closes next with `code` and `reason` (skipping JSON frames).
    pub async fn expect_closed_with(&mut self, code: u16, reason: &str) {
        let close = self.expect_close().await.expect("a close reason");
        assert_eq!(
            (u16::from(close.code), close.description.as_deref()),
            (code, Some(reason))
        );
    }

    /// Splits off the reading half into a task that discards everything but
    /// the server's pings, which it answers, for a client that only sends (a
    /// flood) but must neither become a slow consumer nor look dead (B5).
    pub fn draining(self) -> WsSender {
        let (sink, mut stream) = self.framed.split();
        let sink = std::rc::Rc::new(tokio::sync::Mutex::new(sink));
        let answering = sink.clone();
        actix_web::rt::spawn(async move {
            while let Some(frame) = stream.next().await {
                if let Ok(ws::Frame::Ping(p)) = frame {
                    let _ = answering.lock().await.send(ws::Message::Pong(p)).await;
                }
            }
        });
        WsSender { sink }
    }

    /// Sends a request and returns the next frame.
    pub async fn request(&mut self, value: Value) -> Value {
        self.send(value).await;
        self.recv().await
    }

    /// Marks conversation `pk` read up to `up_to`; the next frame must be
    /// its `read_response`.
    pub async fn mark_read(&mut self, pk: &str, up_to: i64) {
        let answer = self
            .request(json!({"type": "read", "data": {"id": pk, "up_to": up_to}}))
            .await;
        assert_eq!(
            answer,
            json!({"type": "read_response", "data": {"status": "success", "pk": pk, "up_to": up_to}})
        );
    }

    /// Sends a group change (`create_group`, `add_members`, …) and returns
    /// the `data` of its answer once the caller's own `conversation` push
    /// has come too: it comes before or after the answer (C7; after, when
    /// the caller's instance had to subscribe to the conversation first),
    /// so only both together leave nothing of the change still to come.
    pub async fn ask_change(&mut self, value: Value) -> Value {
        let kind = format!("{}_response", value["type"].as_str().expect("a type"));
        self.send(value).await;
        let (mut answer, mut pushed) = (None, false);
        while answer.is_none() || !pushed {
            let frame = self.recv().await;
            if frame["type"] == kind {
                answer = Some(frame["data"].clone());
            } else if frame["type"] == "conversation" {
                pushed = true;
            }
        }
        answer.expect("the loop ends with the answer")
    }

    /// Sends a request of type `X` and returns the `data` of its
    /// `X_response`, skipping pushes that come first.
    pub async fn ask(&mut self, value: Value) -> Value {
        let kind = format!("{}_response", value["type"].as_str().expect("a type"));
        self.send(value).await;
        self.recv_type(&kind).await["data"].clone()
    }
}

/// The sending half of a client whose incoming frames are drained.
pub struct WsSender {
    sink: std::rc::Rc<tokio::sync::Mutex<WsSink>>,
}

type WsSink =
    futures_util::stream::SplitSink<actix_codec::Framed<BoxedSocket, ws::Codec>, ws::Message>;

impl WsSender {
    /// Sends one text frame; fails if the server has not taken it within
    /// `TIMEOUT`.
    pub async fn send(&mut self, value: Value) {
        let frame = ws::Message::Text(value.to_string().into());
        tokio::time::timeout(TIMEOUT, async { self.sink.lock().await.send(frame).await })
            .await
            .expect("the server takes the frame within TIMEOUT")
            .expect("send text");
    }
}

/// A client socket that speaks raw WebSocket frames, for frames no
/// well-behaved client library will send.
pub struct RawSocket {
    stream: tokio::net::TcpStream,
    buffer: actix_web::web::BytesMut,
}

impl RawSocket {
    pub async fn connect(port: u16) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let request = format!(
            "GET /chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buffer = actix_web::web::BytesMut::new();
        while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
            assert!(
                stream.read_buf(&mut buffer).await.unwrap() > 0,
                "no handshake"
            );
        }
        assert!(buffer.starts_with(b"HTTP/1.1 101"), "{buffer:?}");
        let end = buffer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let _ = buffer.split_to(end);
        RawSocket { stream, buffer }
    }

    pub async fn send_frame(&mut self, payload: &[u8], opcode: actix_http::ws::OpCode) {
        use tokio::io::AsyncWriteExt;
        let mut raw = actix_web::web::BytesMut::new();
        actix_http::ws::Parser::write_message(&mut raw, payload, opcode, true, true);
        self.stream.write_all(&raw).await.unwrap();
    }

    /// Sends bytes as they are (a frame no library would build).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The payload of the next frame with `opcode`, skipping every other frame.
    async fn next_frame(&mut self, opcode: actix_http::ws::OpCode) -> actix_web::web::BytesMut {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some((_, found, payload)) =
                actix_http::ws::Parser::parse(&mut self.buffer, false, 1 << 20).unwrap()
            {
                if found == opcode {
                    return payload.unwrap_or_default();
                }
                continue;
            }
            let read = tokio::time::timeout(TIMEOUT, self.stream.read_buf(&mut self.buffer))
                .await
                .expect("a frame in time")
                .unwrap();
            assert!(read > 0, "connection closed before a {opcode:?} frame");
        }
    }

    /// The code of the server's close frame, skipping every other frame.
    pub async fn close_code(&mut self) -> u16 {
        let payload = self.next_frame(actix_http::ws::OpCode::Close).await;
        u16::from_be_bytes([payload[0], payload[1]])
    }

    /// The next text frame from the server, as JSON.
    pub async fn recv(&mut self) -> Value {
        let payload = self.next_frame(actix_http::ws::OpCode::Text).await;
        serde_json::from_slice(&payload).unwrap()
    }
}

/// A barrier for "nothing else arrives" at `receiver`: `sender` sends
/// `text` to conversation `pk` once its earlier requests were answered, and
/// `receiver`'s very next frame must be that message. Whatever the server
/// handed on before it (a duplicate push, say) would stand first; a wait of
/// fixed length proves nothing on a loaded machine.
pub async fn next_is_message(sender: &mut WsClient, receiver: &mut WsClient, pk: &str, text: &str) {
    sender
        .send(json!({"type": "message", "data": {"to": pk, "content": text}}))
        .await;
    assert_eq!(
        sender.recv_type("message_response").await["data"]["status"],
        "success"
    );
    let frame = receiver.recv().await;
    assert_eq!(
        (
            frame["type"].as_str(),
            frame["data"]["data"]["content"].as_str()
        ),
        (Some("message"), Some(text)),
        "{frame}"
    );
}

/// A barrier across instances for "nothing else was pushed": `sender`
/// sends `text` to `pk`, and its next frames must be the acknowledgement
/// and its own copy, and each of `others`' next frame that message. A
/// conversation's events reach every session in one order (B7), through the
/// bus too, so a stray frame pushed before would stand in front of it.
pub async fn only_barrier_follows(
    sender: &mut WsClient,
    others: Vec<&mut WsClient>,
    pk: &str,
    text: &str,
) {
    sender
        .send(json!({"type": "message", "data": {"to": pk, "content": text}}))
        .await;
    assert_eq!(sender.recv().await["type"], "message_response");
    for client in std::iter::once(sender).chain(others) {
        let frame = client.recv().await;
        assert_eq!(
            (
                frame["type"].as_str(),
                frame["data"]["data"]["content"].as_str()
            ),
            (Some("message"), Some(text)),
            "{frame}"
        );
    }
}

/// Sends `n` messages ("burst 0", "burst 1", …) to conversation `pk` from
/// `sender` and asserts `receiver` gets them in that order; reads the
/// sender's acks and echoes too.
pub async fn burst_arrives_in_order(
    sender: &mut WsClient,
    receiver: &mut WsClient,
    pk: &str,
    n: usize,
) {
    for i in 0..n {
        sender
            .send(json!({"type": "message", "data": {"to": pk, "content": format!("burst {i}")}}))
            .await;
    }
    let mut contents = Vec::new();
    while contents.len() < n {
        let frame = receiver.recv_type("message").await;
        let content = frame["data"]["data"]["content"].as_str().expect("content");
        contents.push(content.to_string());
    }
    let expected: Vec<String> = (0..n).map(|i| format!("burst {i}")).collect();
    assert_eq!(contents, expected, "order across instances");
    for _ in 0..2 * n {
        sender.recv().await; // the burst's acks and echoes
    }
}

/// The tests' HTTP client. It reuses an idle connection for at most a
/// second. The server closes a connection idle for 5 s (actix-web's
/// keep-alive), and its HTTP/1 dispatcher looks at that timer before it
/// reads: a request that reaches a busy worker as the 5 s run out is
/// dropped unread, and the client sees `Connect(Disconnected)`. awc's
/// default (15 s) left that open to any test that pauses about 5 s between
/// two requests, as waiting for a 5 s revocation sweep does; CI met it once.
pub fn http_client() -> awc::Client {
    awc::Client::builder()
        .connector(awc::Connector::new().conn_keep_alive(Duration::from_secs(1)))
        .timeout(TIMEOUT)
        .finish()
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Opens a writer's gate (`commit_gate`) however the test ends, so a failed
/// assertion cannot leave a writer waiting (and the instance unable to
/// shut down).
pub struct ReleaseOnDrop(pub chat_server::chat::writer::commit_gate::Gate);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// The shared Redis of the environment (`TEST_REDIS_URL`), if any.
pub fn redis_url() -> Option<String> {
    std::env::var("TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// The shared Redis, for a test that cannot run without it.
pub fn require_redis_url() -> String {
    required_env("TEST_REDIS_URL", "Redis")
}

/// A key prefix of its own, so concurrent tests sharing one Redis never meet.
pub fn redis_prefix() -> String {
    format!("test{}", uuid::Uuid::new_v4().simple())
}

impl TestApp {
    /// The text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        let mut res = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics");
        String::from_utf8_lossy(&res.body().await.expect("metrics body")).into_owned()
    }

    /// The value of one metric of `/metrics`; fails when it is missing.
    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("metric {name} missing from /metrics"))
            .trim()
            .parse()
            .expect("a metric value is a number")
    }

    /// Polls `/metrics` until the Redis bridge reports `up`.
    pub async fn wait_redis(&self, up: bool) {
        let wanted = format!("chat_redis_up {}\n", u8::from(up));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if self.metrics_text().await.contains(&wanted) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis bridge never became {up}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The keys one test's servers wrote to a shared Redis, deleted on drop.
pub struct RedisKeys {
    url: String,
    prefix: String,
}

impl RedisKeys {
    pub fn new(url: &str, prefix: &str) -> Self {
        RedisKeys {
            url: url.to_string(),
            prefix: prefix.to_string(),
        }
    }
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let (url, pattern) = (self.url.clone(), format!("{}:*", self.prefix));
        // Drop runs inside the test's runtime: a plain connection on a thread.
        let _ = std::thread::spawn(move || {
            let Ok(mut conn) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection())
            else {
                return;
            };
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query(&mut conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
            }
        })
        .join();
    }
}

/// A private `redis-server` on a free port, for tests that stop and restart Redis.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts one; a test that needs it fails when `redis-server` cannot run.
    pub fn start() -> Self {
        let mut server = RedisServer {
            port: free_port(),
            child: None,
        };
        assert!(
            server.restart(),
            "redis-server did not start (is it installed?)"
        );
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// (Re)starts the server on its port and waits until it accepts connections.
    pub fn restart(&mut self) -> bool {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let Ok(child) = child else {
            return false;
        };
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How long `wait_until` waits: generous, for a loaded 2-core machine.
pub const CONDITION_DEADLINE: Duration = Duration::from_secs(20);

/// Polls `condition` until it holds; fails after `CONDITION_DEADLINE`.
pub async fn wait_until<F, Fut>(condition: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + CONDITION_DEADLINE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {CONDITION_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` active accounts named `{prefix}{i}`, inserted a thousand to a
/// statement (a statement's values are limited; no password hashing: they
/// never log in); returns their ids in order.
pub async fn insert_users(db: &DatabaseConnection, prefix: &str, n: usize) -> Vec<i64> {
    const PART: usize = 1_000;
    let mut ids = Vec::with_capacity(n);
    for start in (0..n).step_by(PART) {
        let names: Vec<String> = (start..n.min(start + PART))
            .map(|i| format!("{prefix}{i}"))
            .collect();
        ids.extend(insert_named_users(db, names).await);
    }
    ids
}

async fn insert_named_users(db: &DatabaseConnection, names: Vec<String>) -> Vec<i64> {
    use entity::user;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};
    let rows = names.iter().map(|name| user::ActiveModel {
        username: Set(name.clone()),
        username_key: Set(user::username_key(name)),
        email: Set(String::new()),
        first_name: Set(name.clone()),
        last_name: Set("Doe".into()),
        password_hash: Set("!".into()),
        is_active: Set(true),
        is_staff: Set(false),
        is_superuser: Set(false),
        token_version: Set(0),
        created_at: Set(chrono::Utc::now()),
        last_login: Set(None),
        ..Default::default()
    });
    user::Entity::insert_many(rows)
        .exec(db)
        .await
        .expect("insert users");
    user::Entity::find()
        .select_only()
        .column(user::Column::Id)
        .filter(user::Column::Username.is_in(names))
        .order_by_asc(user::Column::Id)
        .into_tuple::<i64>()
        .all(db)
        .await
        .expect("read users back")
}

/// How many migrations come before the one named `name`: what
/// `Migrator::up(db, Some(n))` applies to stand a database just before it.
/// A database migrated up to (not including) the migration `name`, and one
/// account in it, "old0": (the database, a connection to it, its user id).
pub async fn database_before(
    backend: &Backend,
    name: &str,
) -> (TestDatabase, sea_orm::DatabaseConnection, i64) {
    use migration::MigratorTrait;
    let database = TestDatabase::create(backend).await;
    let db = sea_orm::Database::connect(database.url.as_str())
        .await
        .expect("the test database");
    migration::Migrator::up(&db, Some(migrations_before(name)))
        .await
        .expect("the migrations before");
    // Inserted with the columns every schema has (not `create_user`,
    // which reads back today's).
    let user = insert_users(&db, "old", 1).await[0];
    (database, db, user)
}

pub fn migrations_before(name: &str) -> u32 {
    use migration::MigratorTrait;
    migration::Migrator::migrations()
        .iter()
        .position(|m| m.name() == name)
        .unwrap_or_else(|| panic!("no migration named {name}")) as u32
}

/// Makes each of `writers` have written to `to` in their direct
/// conversation (one stored message each, written straight to the
/// database): what lets `to` add them to groups without an invitation
/// (PROTOCOL.md C9). Conversations they do not have yet are made, in a few
/// statements however many writers there are.
pub async fn have_written(db: &DatabaseConnection, writers: &[i64], to: i64) {
    use entity::{chat, chat_member, message};
    // A statement's values are limited (SQLite: 32,766): many writers go
    // in parts.
    const PART: usize = 1_000;
    if writers.len() > PART {
        for part in writers.chunks(PART) {
            Box::pin(have_written(db, part, to)).await;
        }
        return;
    }
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, Set};
    let now = chrono::Utc::now();
    let keys: Vec<String> = writers.iter().map(|w| chat::direct_key(*w, to)).collect();
    let existing = chat::Entity::find()
        .filter(chat::Column::DirectKey.is_in(keys))
        .all(db)
        .await
        .expect("read direct conversations");
    let mut chats = Vec::new();
    for writer in writers {
        let key = chat::direct_key(*writer, to);
        match existing
            .iter()
            .find(|c| c.direct_key.as_deref() == Some(&key))
        {
            Some(found) => {
                chat::Entity::update(chat::ActiveModel {
                    id: Set(found.id),
                    seq: Set(found.seq + 1),
                    ..Default::default()
                })
                .exec(db)
                .await
                .expect("bump the conversation's seq");
                chats.push((*writer, found.id, found.seq + 1));
            }
            None => chats.push((*writer, uuid::Uuid::new_v4(), 1)),
        }
    }
    let new: Vec<&(i64, uuid::Uuid, i64)> = chats.iter().filter(|(_, _, seq)| *seq == 1).collect();
    if !new.is_empty() {
        chat::Entity::insert_many(new.iter().map(|(w, id, _)| chat::ActiveModel {
            id: Set(*id),
            kind: Set(chat::ChatKind::Direct),
            title: Set(None),
            direct_key: Set(Some(chat::direct_key(*w, to))),
            created_at: Set(now),
            seq: Set(1),
        }))
        .exec(db)
        .await
        .expect("direct conversations");
        let members = new.iter().flat_map(|(w, id, _)| {
            [*w, to].map(|user| chat_member::ActiveModel {
                chat_id: Set(*id),
                user_id: Set(user),
                joined_at: Set(now),
                last_read_message_id: Set(None),
                role: Set(chat_member::Role::Member),
                muted: Set(false),
            })
        });
        chat_member::Entity::insert_many(members)
            .exec(db)
            .await
            .expect("their members");
    }
    message::Entity::insert_many(chats.iter().map(|(w, id, seq)| message::ActiveModel {
        chat_id: Set(*id),
        sender_id: Set(Some(*w)),
        content: Set("hello".into()),
        client_id: Set(None),
        created_at: Set(now),
        seq: Set(*seq),
        ..Default::default()
    }))
    .exec(db)
    .await
    .expect("a message from each writer");
}

/// A randomized test's seed: `var` when set (to repeat a run), else from
/// the clock; printed, so a failing run can be repeated. Never zero.
pub fn seed(var: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        | 1;
    println!("seed {seed} ({var} repeats its choices)");
    seed
}
