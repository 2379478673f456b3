//! The databases a test server runs on: one per backend, fresh for each
//! test and dropped with it.

use sea_orm::{ConnectionTrait, Database, DatabaseBackend, DatabaseConnection, Statement};

use super::*;

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

/// A fresh database of `backend`, dropped with this value, or one of the
/// pool of migrated server databases (reused.rs), given back.
pub struct TestDatabase {
    pub url: String,
    cleanup: Option<Cleanup>,
    /// SQLite's: the temporary directory holding `SQLITE_FILE`.
    dir: Option<tempfile::TempDir>,
    /// A pooled server database's hold.
    held: Option<Held>,
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
pub(super) async fn search_extensions(admin: &DatabaseConnection) {
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
    /// elsewhere an entry of the pool of migrated databases (reused.rs).
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
            _ => {
                let held = Pool::of(backend).take().await;
                TestDatabase {
                    url: held.url.clone(),
                    cleanup: None,
                    dir: None,
                    held: Some(held),
                }
            }
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
                    held: None,
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
                TestDatabase {
                    url: postgres_url(base, &schema),
                    cleanup: Some(Cleanup {
                        base: base.clone(),
                        ends_sessions: postgres_sessions(&schema),
                        drop: [
                            "SET lock_timeout = '20s'".into(),
                            format!("DROP SCHEMA {schema} CASCADE"),
                        ],
                    }),
                    dir: None,
                    held: None,
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
                TestDatabase {
                    url: mysql_url(base, &name),
                    cleanup: Some(Cleanup {
                        base: base.clone(),
                        ends_sessions: mysql_sessions(&name),
                        drop: [
                            "SET SESSION lock_wait_timeout = 20".into(),
                            format!("DROP DATABASE {name}"),
                        ],
                    }),
                    dir: None,
                    held: None,
                }
            }
        }
    }
}

/// The URL of PostgreSQL's `schema` at `base`: its search path, and the
/// schema's name as the connections' application name too, which is how
/// `postgres_sessions` finds them.
pub(super) fn postgres_url(base: &str, schema: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}&application_name={schema}")
}

/// The URL of MariaDB's database `name` on the server of `base`.
pub(super) fn mysql_url(base: &str, name: &str) -> String {
    let root = base.rsplit_once('/').map(|(r, _)| r).unwrap_or(base);
    format!("{root}/{name}")
}

/// What ends the sessions on PostgreSQL's `schema` (`end_sessions`).
pub(super) fn postgres_sessions(schema: &str) -> String {
    format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = '{schema}' AND pid <> pg_backend_pid()"
    )
}

/// The ids of the sessions on MariaDB's database `name` (`end_sessions`).
pub(super) fn mysql_sessions(name: &str) -> String {
    format!(
        "SELECT id FROM information_schema.processlist \
         WHERE db = '{name}' AND id <> CONNECTION_ID()"
    )
}

/// Ends the sessions `query` finds: on PostgreSQL the query ends them
/// itself; MariaDB ends a session by `KILL <id>`, one statement each.
pub(super) async fn end_sessions(admin: &DatabaseConnection, query: &str) {
    if admin.get_database_backend() != DatabaseBackend::MySql {
        let _ = admin.execute_unprepared(query).await;
        return;
    }
    let ids = admin
        .query_all_raw(Statement::from_string(
            DatabaseBackend::MySql,
            query.to_string(),
        ))
        .await
        .unwrap_or_default();
    for row in ids {
        if let Ok(id) = row.try_get_by_index::<i64>(0) {
            let _ = admin.execute_unprepared(&format!("KILL {id}")).await;
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
pub(super) fn binary_key() -> u64 {
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
        end_sessions(&admin, &self.ends_sessions).await;
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
