//! Migrated PostgreSQL schemas and MariaDB (or MySQL) databases, reused
//! from test to test. A fresh one costs its migration and its drop, about a
//! tenth of a CPU-second of the database server's and the test's, and some
//! 190 tests of a run start a server on one; an entry of this pool is
//! emptied instead, for a few milliseconds (docs/CI.md, "A forty-seventh
//! machine").
//!
//! - **Named** `tp_<key>_<n>`: the key is a hash of the migrations' sources
//!   and `Cargo.lock` (sea-orm writes the DDL), so the test binaries of one
//!   build share the pool and a changed migration makes a pool of its own.
//!   When the pool grows, the free entries of other keys are dropped.
//! - **Taken** by a lock that a connection of a thread of its own holds for
//!   the test's life (`pg_try_advisory_lock`, `GET_LOCK`): the first entry
//!   free is taken, or made. When the test is over, the sessions still on
//!   its entry are ended; under nextest, which runs each test in a process
//!   of its own, the lock is kept until that process exits, so that nothing
//!   its servers still do meanwhile (a worker thread finishing a request)
//!   lands in the next test's entry. A test process that dies gives its
//!   entries back as its connections close.
//! - **Compared** with the pool's template, `tp_<key>_template`: migrated
//!   once, never handed out. An entry that lacks a migration of this build
//!   (its maker died mid-way) or whose schema differs from the template's
//!   (a test dropped a table or made one) is dropped and made again. A
//!   schema is compared as a hash of its relations and their columns,
//!   indexes, constraints, triggers and functions.
//! - **Emptied** when taken (its last holder may have died mid-test): the
//!   sessions still on it ended, its rows deleted with the foreign keys'
//!   checks off, the identities restarted, and the rows the migrations
//!   write (`push_dispatch`'s) copied back from the template. `DELETE`, not
//!   `TRUNCATE`: PostgreSQL's costs its server 72 ms of CPU against 3.5, and
//!   MariaDB's makes a table's full-text index again under the emptying
//!   session's settings, not the migration's (which keeps stopwords out).
//!
//! Between runs the pool's entries stay in the databases `TEST_POSTGRES_URL`
//! and `TEST_MYSQL_URL` name: a template and as many entries as tests ran
//! at once.

use std::hash::{Hash, Hasher};

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, Statement};
use tokio::sync::oneshot;

use super::*;

/// How many entries a test tries: more than tests run at once.
const MOST_ENTRIES: u32 = 64;

/// An entry a test holds: given back when this is dropped.
pub struct Held {
    pub url: String,
    /// Whether it was made for this test, rather than emptied.
    pub made: bool,
    release: Option<oneshot::Sender<()>>,
    /// Told when the sessions on the entry are ended.
    ended: std::sync::mpsc::Receiver<()>,
    /// The holder thread: joined here, unless it keeps the lock until the
    /// process exits.
    holder: Option<std::thread::JoinHandle<()>>,
}

/// What every entry is compared with and emptied to.
struct Template {
    name: String,
    /// Its tables but the migrations' own.
    tables: Vec<String>,
    /// PostgreSQL's: the sequences of its identities.
    sequences: Vec<String>,
    /// The tables the migrations write rows in.
    seeded: Vec<String>,
}

/// The pool of one server database.
#[derive(Clone)]
pub struct Pool {
    backend: Backend,
    /// `tp` for the tests' pool; a pool's entries are `<prefix>_<key>_<n>`.
    prefix: String,
    key: String,
    /// Whether an entry stays locked until the test's process exits.
    until_exit: bool,
}

impl Pool {
    /// The pool of `backend`'s server database, for this build's migrations.
    pub fn of(backend: &Backend) -> Pool {
        let one_test = std::env::var("NEXTEST_EXECUTION_MODE").as_deref() == Ok("process-per-test");
        Pool {
            until_exit: one_test,
            ..Pool::named(backend, "tp", &migrations_key())
        }
    }

    /// A pool of its own (the pool's tests): entries `<prefix>_<key>_<n>`.
    pub fn named(backend: &Backend, prefix: &str, key: &str) -> Pool {
        assert!(
            !matches!(backend, Backend::Sqlite),
            "SQLite copies a template"
        );
        Pool {
            backend: backend.clone(),
            prefix: prefix.into(),
            key: key.into(),
            until_exit: false,
        }
    }

    /// A free entry, emptied, or a new one made.
    pub async fn take(&self) -> Held {
        let (answer, answered) = oneshot::channel();
        let (release, released) = oneshot::channel();
        let (told, ended) = std::sync::mpsc::channel();
        let pool = self.clone();
        // The lock's connection lives on a runtime of its own: the test's
        // thread is blocked while the entry is given back (`Drop`).
        let holder = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the pool's lock")
                .block_on(pool.hold(answer, released, told))
        });
        let Ok((url, made)) = answered.await else {
            let _ = holder.join();
            panic!("taking a pooled test database failed (its panic is above)");
        };
        Held {
            url,
            made,
            release: Some(release),
            ended,
            holder: (!self.until_exit).then_some(holder),
        }
    }

    /// Drops every entry of this pool's prefix that is free.
    pub async fn drop_free_entries(&self) {
        let admin = one_connection(self.base()).await;
        self.drop_free(&admin, &self.like(), None).await;
        let _ = admin.close().await;
    }

    /// The holder thread: takes an entry, answers with its URL, keeps its
    /// lock until released, then ends the sessions left on it, and gives
    /// the lock back (or keeps it until the process exits).
    async fn hold(
        self,
        answer: oneshot::Sender<(String, bool)>,
        released: oneshot::Receiver<()>,
        told: std::sync::mpsc::Sender<()>,
    ) {
        let admin = one_connection(self.base()).await;
        let (name, made) = self.take_entry(&admin).await;
        let url = self.url(&name);
        if answer.send((url, made)).is_ok() {
            let _ = released.await;
        }
        end_sessions(&admin, &self.sessions(&name)).await;
        let _ = told.send(());
        if self.until_exit {
            std::future::pending::<()>().await;
        }
        let _ = admin.close().await;
    }

    async fn take_entry(&self, admin: &DatabaseConnection) -> (String, bool) {
        let template = self.template(admin).await;
        for n in 0..MOST_ENTRIES {
            let name = format!("{}_{}_{n}", self.prefix, self.key);
            if !self.lock(admin, &name).await {
                continue;
            }
            if let Some(attachments) = attachments_dir(&self.url(&name)) {
                let _ = std::fs::remove_dir_all(attachments);
            }
            if self.exists(admin, &name).await {
                if self.complete(admin, &name).await
                    && self.same_schema(admin, &name, &template.name).await
                {
                    self.empty(admin, &name, &template).await;
                    return (name, false);
                }
                self.drop_entry(admin, &name).await;
            }
            self.make(admin, &name).await;
            let own = format!("{}\\_{}\\_%", self.prefix, self.key);
            self.drop_free(admin, &self.like(), Some(&own)).await;
            return (name, true);
        }
        panic!("all {MOST_ENTRIES} entries of the test database pool are taken");
    }

    /// The pool's template, made first if it is not there or not complete
    /// (its maker died), by one test while the others wait.
    async fn template(&self, admin: &DatabaseConnection) -> Template {
        let name = format!("{}_{}_template", self.prefix, self.key);
        if !self.complete(admin, &name).await {
            self.lock_waiting(admin, &name).await;
            if !self.complete(admin, &name).await {
                if self.exists(admin, &name).await {
                    self.drop_entry(admin, &name).await;
                }
                self.make(admin, &name).await;
            }
            self.unlock(admin, &name).await;
        }
        let (tables, sequences) = self.relations(admin, &name).await;
        let seeded = self.seeded(admin, &name, &tables).await;
        Template {
            name,
            tables,
            sequences,
            seeded,
        }
    }

    fn base(&self) -> &str {
        match &self.backend {
            Backend::Postgres(base) | Backend::MySql(base) => base,
            Backend::Sqlite => unreachable!("Pool::named refuses SQLite"),
        }
    }

    /// `LIKE` every entry of this pool's prefix.
    fn like(&self) -> String {
        format!("{}\\_%", self.prefix)
    }

    fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    fn url(&self, name: &str) -> String {
        match &self.backend {
            Backend::Postgres(base) => postgres_url(base, name),
            _ => mysql_url(self.base(), name),
        }
    }

    /// The query whose rows are the sessions on `name` (`end_sessions`).
    fn sessions(&self, name: &str) -> String {
        if self.is_postgres() {
            postgres_sessions(name)
        } else {
            mysql_sessions(name)
        }
    }

    /// Takes `name`'s lock, if it is free.
    async fn lock(&self, admin: &DatabaseConnection, name: &str) -> bool {
        let sql = if self.is_postgres() {
            format!(
                "SELECT pg_try_advisory_lock({}) = true AS taken",
                lock_id(name)
            )
        } else {
            format!("SELECT GET_LOCK('{name}', 0) = 1 AS taken")
        };
        let row = query_one(admin, &sql).await.expect("a lock's answer");
        row.and_then(|r| r.try_get::<bool>("", "taken").ok())
            .unwrap_or(false)
    }

    async fn unlock(&self, admin: &DatabaseConnection, name: &str) {
        let sql = if self.is_postgres() {
            format!("SELECT pg_advisory_unlock({})", lock_id(name))
        } else {
            format!("SELECT RELEASE_LOCK('{name}')")
        };
        admin.execute_unprepared(&sql).await.expect("unlock");
    }

    /// Whether there is a schema (database) `name`.
    async fn exists(&self, admin: &DatabaseConnection, name: &str) -> bool {
        let sql = if self.is_postgres() {
            format!("SELECT 1 AS one FROM pg_namespace WHERE nspname = '{name}'")
        } else {
            format!("SELECT 1 AS one FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{name}'")
        };
        query_one(admin, &sql).await.expect("an entry").is_some()
    }

    /// Whether `name` has every migration this build knows.
    async fn complete(&self, admin: &DatabaseConnection, name: &str) -> bool {
        use migration::MigratorTrait;
        let sql = format!("SELECT COUNT(*) AS n FROM {name}.seaql_migrations");
        let applied = query_one(admin, &sql)
            .await
            .ok()
            .flatten()
            .and_then(|row| row.try_get::<i64>("", "n").ok());
        applied == Some(migration::Migrator::migrations().len() as i64)
    }

    /// Waits for `name`'s lock (while another test makes the template).
    async fn lock_waiting(&self, admin: &DatabaseConnection, name: &str) {
        let sql = if self.is_postgres() {
            format!("SELECT pg_advisory_lock({})", lock_id(name))
        } else {
            format!("SELECT GET_LOCK('{name}', 300)")
        };
        admin
            .execute_unprepared(&sql)
            .await
            .expect("the template's lock");
    }

    /// `name`'s tables but the migrations' own, and its sequences.
    async fn relations(
        &self,
        admin: &DatabaseConnection,
        name: &str,
    ) -> (Vec<String>, Vec<String>) {
        if !self.is_postgres() {
            let sql = format!(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{name}' \
                 AND TABLE_TYPE = 'BASE TABLE' AND TABLE_NAME <> 'seaql_migrations' ORDER BY 1"
            );
            return (strings(admin, &sql).await, Vec::new());
        }
        let sql = format!(
            "SELECT relkind::text || ' ' || relname FROM pg_class \
             WHERE relnamespace = '{name}'::regnamespace AND relkind IN ('r', 'S') \
             AND relname <> 'seaql_migrations' ORDER BY relname"
        );
        let (mut tables, mut sequences) = (Vec::new(), Vec::new());
        for relation in strings(admin, &sql).await {
            match relation.split_once(' ') {
                Some(("r", table)) => tables.push(table.to_string()),
                Some((_, sequence)) => sequences.push(sequence.to_string()),
                None => unreachable!("the query joins kind and name with a space"),
            }
        }
        (tables, sequences)
    }

    /// Those of `tables` that hold rows in `name` (the template): the rows
    /// the migrations write.
    async fn seeded(
        &self,
        admin: &DatabaseConnection,
        name: &str,
        tables: &[String],
    ) -> Vec<String> {
        let dual = if self.is_postgres() { "" } else { " FROM DUAL" };
        let sql = tables
            .iter()
            .map(|t| format!("SELECT '{t}' AS t{dual} WHERE EXISTS (SELECT 1 FROM {name}.{t})"))
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        strings(admin, &sql).await
    }

    /// Whether schemas `a` and `b` are alike: their fingerprints.
    async fn same_schema(&self, admin: &DatabaseConnection, a: &str, b: &str) -> bool {
        let fingerprints = if self.is_postgres() {
            strings(admin, &postgres_fingerprints(a, b)).await
        } else {
            let mut both = strings(admin, &mysql_fingerprint(a)).await;
            both.extend(strings(admin, &mysql_fingerprint(b)).await);
            both
        };
        fingerprints.len() == 2 && fingerprints[0] == fingerprints[1]
    }

    /// Empties `name`'s tables and restarts their identities, then copies
    /// the template's rows back; its sessions are ended first (a transaction
    /// left open would hold the emptying up).
    async fn empty(&self, admin: &DatabaseConnection, name: &str, template: &Template) {
        end_sessions(admin, &self.sessions(name)).await;
        let mut sql = Vec::new();
        if self.is_postgres() {
            sql.push("SET lock_timeout = '20s'".to_string());
            // Without the foreign keys' triggers (and the schema's own), so
            // in any order: a superuser's setting. Else `TRUNCATE`.
            let replica = "SET session_replication_role = replica";
            if admin.execute_unprepared(replica).await.is_ok() {
                sql.extend(
                    template
                        .tables
                        .iter()
                        .map(|t| format!("DELETE FROM {name}.{t}")),
                );
                let restart: Vec<_> = (template.sequences.iter())
                    .map(|q| format!("setval('{name}.{q}', 1, false)"))
                    .collect();
                if !restart.is_empty() {
                    sql.push(format!("SELECT {}", restart.join(", ")));
                }
            } else {
                let tables: Vec<_> = (template.tables.iter())
                    .map(|t| format!("{name}.{t}"))
                    .collect();
                sql.push(format!("TRUNCATE {} RESTART IDENTITY", tables.join(", ")));
            }
        } else {
            sql.push("SET SESSION lock_wait_timeout = 20".into());
            sql.push("SET FOREIGN_KEY_CHECKS = 0".into());
            sql.extend(
                template
                    .tables
                    .iter()
                    .map(|t| format!("DELETE FROM {name}.{t}")),
            );
            // Identities restarted where they moved: `ALTER TABLE` costs
            // the server about 1.2 ms of CPU a table.
            let moved = format!(
                "SELECT TABLE_NAME FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = '{name}' AND AUTO_INCREMENT > 1"
            );
            for t in strings(admin, &moved).await {
                sql.push(format!("ALTER TABLE {name}.{t} AUTO_INCREMENT = 1"));
            }
        }
        for t in &template.seeded {
            sql.push(format!(
                "INSERT INTO {name}.{t} SELECT * FROM {}.{t}",
                template.name
            ));
        }
        sql.push(if self.is_postgres() {
            "SET session_replication_role = DEFAULT".into()
        } else {
            "SET FOREIGN_KEY_CHECKS = 1".into()
        });
        for sql in sql {
            admin
                .execute_unprepared(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    /// Makes `name` and migrates it.
    async fn make(&self, admin: &DatabaseConnection, name: &str) {
        if self.is_postgres() {
            search_extensions(admin).await;
            admin
                .execute_unprepared(&format!("CREATE SCHEMA {name}"))
                .await
                .expect("create schema");
        } else {
            admin
                .execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create database");
        }
        let url = self.url(name);
        let db = chat_server::db::connect(&settings(&url, &[]))
            .await
            .expect("connect to a new pooled database");
        chat_server::db::migrate(&db, &url)
            .await
            .expect("migrate a new pooled database");
        let _ = db.close().await;
    }

    async fn drop_entry(&self, admin: &DatabaseConnection, name: &str) {
        end_sessions(admin, &self.sessions(name)).await;
        let sql = if self.is_postgres() {
            format!("DROP SCHEMA {name} CASCADE")
        } else {
            format!("DROP DATABASE {name}")
        };
        admin.execute_unprepared(&sql).await.expect("drop an entry");
    }

    /// Drops the free entries whose name is `LIKE` the pattern, and not
    /// `LIKE` the exception.
    async fn drop_free(&self, admin: &DatabaseConnection, like: &str, except: Option<&str>) {
        let (column, table) = if self.is_postgres() {
            ("nspname", "pg_namespace")
        } else {
            ("SCHEMA_NAME", "information_schema.SCHEMATA")
        };
        let mut sql = format!("SELECT {column} AS name FROM {table} WHERE {column} LIKE '{like}'");
        if let Some(except) = except {
            sql += &format!(" AND {column} NOT LIKE '{except}'");
        }
        let rows = admin
            .query_all_raw(Statement::from_string(admin.get_database_backend(), sql))
            .await
            .expect("the pool's entries");
        for name in rows
            .iter()
            .filter_map(|r| r.try_get::<String>("", "name").ok())
        {
            if self.lock(admin, &name).await {
                self.drop_entry(admin, &name).await;
                self.unlock(admin, &name).await;
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.release.take());
        let _ = self.ended.recv();
        if let Some(holder) = self.holder.take() {
            let _ = holder.join();
        }
    }
}

/// One connection to `base`, kept open as long as the value lives: the
/// session whose locks take the pool's entries.
async fn one_connection(base: &str) -> DatabaseConnection {
    let mut options = ConnectOptions::new(base);
    options
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .sqlx_logging(false);
    Database::connect(options)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {base}: {e}"))
}

async fn query_one(
    db: &DatabaseConnection,
    sql: &str,
) -> Result<Option<sea_orm::QueryResult>, sea_orm::DbErr> {
    db.query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
}

/// The first column of every row `sql` returns, as text.
async fn strings(db: &DatabaseConnection, sql: &str) -> Vec<String> {
    if sql.is_empty() {
        return Vec::new();
    }
    db.query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|row| row.try_get_by_index::<String>(0).expect("text"))
        .collect()
}

/// The advisory lock's number for an entry's name.
fn lock_id(name: &str) -> i64 {
    let mut hash = std::collections::hash_map::DefaultHasher::new();
    ("chat-server test pool", name).hash(&mut hash);
    hash.finish() as i64
}

/// A hash of the migrations' sources and of `Cargo.lock` (sea-orm writes
/// the DDL): what an entry's schema follows. Where the sources are not
/// beside the test binary, its own `binary_key`.
fn migrations_key() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let Ok(entries) = std::fs::read_dir(root.join("migration/src")) else {
        return format!("{:012x}", binary_key() >> 16);
    };
    let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    files.push(root.join("Cargo.lock"));
    let mut hash = std::collections::hash_map::DefaultHasher::new();
    for file in files {
        (file.file_name(), std::fs::read(&file).unwrap_or_default()).hash(&mut hash);
    }
    format!("{:012x}", hash.finish() >> 16)
}

/// PostgreSQL: the fingerprints of schemas `a` and `b`, each a hash of its
/// relations with their columns, its constraints, triggers (not the
/// foreign keys' own, named by number) and functions (their bodies name
/// the schema: left out). One scan of `pg_class` for both.
fn postgres_fingerprints(a: &str, b: &str) -> String {
    format!(
        "WITH rels AS (SELECT oid, relnamespace AS ns, relname, relkind FROM pg_class \
           WHERE relnamespace IN ('{a}'::regnamespace, '{b}'::regnamespace)) \
         SELECT md5(concat_ws('|', \
           (SELECT string_agg(r.relname || ' ' || r.relkind::text || ' ' || \
               (SELECT coalesce(string_agg(c.attname || ' ' || format_type(c.atttypid, c.atttypmod) \
                   || ' ' || c.attnotnull::text, ',' ORDER BY c.attnum), '') \
                FROM pg_attribute c WHERE c.attrelid = r.oid AND c.attnum > 0 AND NOT c.attisdropped), \
             ';' ORDER BY r.relname) FROM rels r WHERE r.ns = n.oid), \
           (SELECT string_agg(k.conname || ' ' || k.contype::text, ',' ORDER BY k.conname) \
            FROM pg_constraint k JOIN rels r ON r.oid = k.conrelid WHERE r.ns = n.oid), \
           (SELECT string_agg(t.tgname, ',' ORDER BY t.tgname) FROM pg_trigger t \
            JOIN rels r ON r.oid = t.tgrelid WHERE r.ns = n.oid AND NOT t.tgisinternal), \
           (SELECT string_agg(p.proname || ' ' || md5(replace(p.prosrc, n.nspname, '')), ',' \
             ORDER BY p.proname) FROM pg_proc p WHERE p.pronamespace = n.oid) \
         )) FROM pg_namespace n WHERE n.nspname IN ('{a}', '{b}')"
    )
}

/// MariaDB: the fingerprint of a database, a hash of its columns, indexes,
/// constraints and triggers.
fn mysql_fingerprint(database: &str) -> String {
    format!(
        "SELECT MD5(CONCAT_WS('|', \
           (SELECT GROUP_CONCAT(CONCAT_WS(' ', TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE) \
             ORDER BY TABLE_NAME, ORDINAL_POSITION SEPARATOR ',') \
            FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = '{database}'), \
           (SELECT GROUP_CONCAT(CONCAT_WS(' ', TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME) \
             ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX SEPARATOR ',') \
            FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = '{database}'), \
           (SELECT GROUP_CONCAT(CONCAT_WS(' ', TABLE_NAME, CONSTRAINT_NAME, CONSTRAINT_TYPE) \
             ORDER BY TABLE_NAME, CONSTRAINT_NAME SEPARATOR ',') \
            FROM information_schema.TABLE_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = '{database}'), \
           (SELECT GROUP_CONCAT(TRIGGER_NAME ORDER BY TRIGGER_NAME SEPARATOR ',') \
            FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = '{database}') \
         )) AS fingerprint"
    )
}
