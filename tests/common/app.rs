//! A test server: the real application on a free port, and several
//! instances of it sharing a database and Redis.

use std::time::Duration;

use chat_server::accounts::{self, NewUser};
use chat_server::chat::messages::{ServerStats, Stats};
use chat_server::config::Settings;
use chat_server::Application;
use sea_orm::DatabaseConnection;
use serde_json::{json, Value};

use super::*;

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
        capture_logs();
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
