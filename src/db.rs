//! Database connection: connect with the configured engine, tune SQLite for
//! concurrent use (WAL, busy timeout, foreign keys), and run the migrations.

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseBackend, DatabaseConnection, DbErr,
};

use crate::config::{DbEngine, Settings};

pub mod sqlite_memory;
pub mod sqlite_wal;
mod transactions;

pub use transactions::{begin, begin_write, begin_write_uncancelled};

/// How long a SQLite writer waits for a lock before giving up: long enough to
/// ride out another process's commit, short enough to surface a stuck one.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for a pooled connection before a request fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a pooled connection may have been idle and still be handed out
/// without a ping first. sqlx pings every connection it hands out by
/// default: a round trip to the database (to SQLite's thread and back)
/// before every statement outside a transaction and every transaction, each
/// batch of the writers' included (BENCHMARKS.md, "A thirteenth machine:
/// no ping before a busy connection is used"). A connection in use within
/// this while has just answered; one idle longer (the server was quiet, and
/// the database may have restarted meanwhile) is pinged, and replaced if it
/// does not answer. Nor is one pinged as it is given back, where upstream
/// sqlx pings each (vendor/README.md): one broken since its last answer
/// fails the one statement that next uses it, which closes it.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Why the database could not be reached or prepared.
#[derive(Debug, thiserror::Error)]
pub enum DbSetupError {
    #[error("cannot connect to the {engine} database: {}", describe(.source))]
    Connect {
        engine: DbEngine,
        #[source]
        source: DbErr,
    },
    #[error("cannot reach the {engine} server at {address}: {source}")]
    Unreachable {
        engine: DbEngine,
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the SQLite file {path}: {source}")]
    SqliteDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    SqliteVfs(#[from] sqlite_wal::RegisterError),
    #[error("database migration failed: {}", describe(.0))]
    Migrate(#[source] DbErr),
    #[error(
        "another chat-server is serving the SQLite database {path} without Redis (it holds \
         {path}.lock): a second one would share the file but not deliver its messages live. \
         Stop the other one, or give this one another DB_NAME; to run several instances, \
         use PostgreSQL or MySQL and Redis (README \"Scaling out\")"
    )]
    SqliteInUse { path: String },
    #[error("cannot open the lock file {path}.lock: {source}")]
    SqliteLock {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no SQLite database at {path}: the server creates it on its first start. Run this \
         command where the server runs (its .env, or the same DB_NAME), or start the server \
         once"
    )]
    SqliteMissing { path: String },
}

/// Holds the SQLite database for this process alone (`serve` without
/// Redis): a second server on the same file, which would store messages
/// but never deliver the first one's live, is refused at start-up. An
/// advisory lock on `<file>.lock`, never on the database file itself (SQLite
/// loses its own POSIX locks when any other handle to its file closes).
/// Released when the returned file is dropped, or the process ends.
pub fn lock_sqlite(settings: &Settings) -> Result<std::fs::File, DbSetupError> {
    let path = settings.database.sqlite_path();
    let shown = path.display().to_string();
    let lock_path = format!("{shown}.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| DbSetupError::SqliteLock {
            path: shown.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(DbSetupError::SqliteInUse { path: shown }),
        Err(std::fs::TryLockError::Error(source)) => Err(DbSetupError::SqliteLock {
            path: shown,
            source,
        }),
    }
}

/// `connect`, for commands that work on existing accounts: an SQLite file
/// that does not exist is an error (most likely the wrong directory), not a
/// new empty database.
pub async fn connect_existing(settings: &Settings) -> Result<DatabaseConnection, DbSetupError> {
    if settings.database.engine() == DbEngine::Sqlite {
        let path = settings.database.sqlite_path();
        if !path.exists() {
            let path = std::path::absolute(&path).unwrap_or(path);
            return Err(DbSetupError::SqliteMissing {
                path: path.display().to_string(),
            });
        }
    }
    connect(settings).await
}

/// Connections the writers hold of their own (`connect_writers`) on
/// PostgreSQL and MySQL: one each for the messages' lane, the changes' lane
/// and the read marks, which each use one at a time.
pub const WRITER_CONNECTIONS: u32 = 3;

/// On SQLite the writers share one connection. SQLite writes one
/// transaction at a time whatever the pool, and a connection drops its
/// whole page cache when another connection wrote since its last
/// transaction: with three, the pool handed them out in turn, so every
/// batch began by emptying its connection's cache and read its pages back
/// (BENCHMARKS.md, "A twelfth machine"). With one, a writer that waits
/// waits in the pool's queue, not in SQLite's busy handler's sleeps.
pub const SQLITE_WRITER_CONNECTIONS: u32 = 1;

/// Opens the connection pool described by `settings` (`DB_POOL_SIZE`
/// connections), which requests read through.
pub async fn connect(settings: &Settings) -> Result<DatabaseConnection, DbSetupError> {
    connect_sized(settings, settings.database.db_pool_size).await
}

/// Opens the writers' own pool, the same database with `WRITER_CONNECTIONS`
/// connections (`SQLITE_WRITER_CONNECTIONS` on SQLite). Apart from the
/// requests' pool, a burst of reads (every client asking its contact list
/// after a restart) cannot make a commit wait for a connection. And the
/// writers run on the main thread, so their connections are opened there
/// and outlive the HTTP workers, whose runtimes take the connections they
/// opened with them when they stop (the writers drain their queues after
/// that, at shutdown).
pub async fn connect_writers(settings: &Settings) -> Result<DatabaseConnection, DbSetupError> {
    let size = match settings.database.engine() {
        DbEngine::Sqlite => SQLITE_WRITER_CONNECTIONS,
        _ => WRITER_CONNECTIONS,
    };
    connect_with(settings, size, Plans::Generic).await
}

/// The pool the group changes' write transactions take their connection
/// from. On SQLite one connection, so that those writers wait in the
/// pool's queue, first come first served, and not in SQLite's busy
/// handler, where a waiter can lose every round and fail when the busy
/// timeout runs out (BENCHMARKS.md, "Accepting invitations"). Elsewhere the
/// requests' pool itself: those databases lock rows, not the whole file.
pub async fn connect_request_writes(
    settings: &Settings,
    requests: &DatabaseConnection,
) -> Result<DatabaseConnection, DbSetupError> {
    match settings.database.engine() {
        DbEngine::Sqlite => connect_sized(settings, 1).await,
        _ => Ok(requests.clone()),
    }
}

async fn connect_sized(settings: &Settings, size: u32) -> Result<DatabaseConnection, DbSetupError> {
    connect_with(settings, size, Plans::ChosenByServer).await
}

/// How PostgreSQL plans a connection's prepared statements.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Plans {
    /// PostgreSQL's default: a plan for the parameters of each of the first
    /// five executions, then the generic plan if it is no dearer.
    ChosenByServer,
    /// One plan per statement, made once (`plan_cache_mode =
    /// force_generic_plan`), which reads by index (`enable_seqscan = off`).
    /// The writers' statements find rows by key, which a generic plan does
    /// as well as a custom one, but PostgreSQL's own choice kept planning
    /// the message batch's statement afresh when batches are small (a
    /// generic plan assumes ten rows per array, so a batch of one looks
    /// cheaper planned for its values): 0.25–0.4 ms of planning for 0.17–0.4
    /// ms of execution, each batch (BENCHMARKS.md, "Planned once"). A plan
    /// kept is made with the statistics of its time: made while `messages`
    /// was nearly empty (a new database), it would hash the whole table to
    /// check a batch's `client_id`s, on every batch until autovacuum's next
    /// `ANALYZE`. A sequential scan is never what a keyed write wants, and
    /// the setting only makes it the last resort where an index serves.
    Generic,
}

async fn connect_with(
    settings: &Settings,
    size: u32,
    plans: Plans,
) -> Result<DatabaseConnection, DbSetupError> {
    let engine = settings.database.engine();
    if engine == DbEngine::Sqlite {
        let path = settings.database.sqlite_path();
        create_private(&path).map_err(|source| DbSetupError::SqliteDir {
            path: path.display().to_string(),
            source,
        })?;
    }
    let mut options = ConnectOptions::new(settings.database.url());
    options
        .max_connections(size)
        .min_connections(1)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire_if_idle_for(PING_IF_IDLE_FOR)
        .sqlx_logging(false);
    if engine == DbEngine::Sqlite {
        let vfs = sqlite_wal::registered()?;
        options.map_sqlx_sqlite_opts(move |opts| {
            // FULL: a commit is on disk before the writer acknowledges it (group
            // commit amortises the fsync), so an acknowledged message survives power loss.
            opts.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true)
                .create_if_missing(true)
                // Temporary tables, indices and statement journals in memory:
                // a batch's statements otherwise open, write and delete a
                // statement journal file each time.
                .pragma("temp_store", "memory")
                // Each commit's WAL frames in one write (src/db/sqlite_wal.rs).
                .vfs(vfs)
        });
        options.map_sqlx_sqlite_before_acquire(|conn, _| Box::pin(outside_transaction(conn)));
    }
    if engine == DbEngine::Postgres {
        options.map_sqlx_postgres_opts(move |opts| {
            // No JIT compilation: every statement of ours reads a few rows
            // by key, but on a large table PostgreSQL's estimates can pass
            // `jit_above_cost`, and it compiles the statement afresh at
            // every execution: a contact list in a 3-million-message group
            // took 11 ms with it and 2.2 ms without (BENCHMARKS.md "Unread
            // counts within the last 10,000 events").
            let opts = opts.options([("jit", "off")]);
            match plans {
                Plans::Generic => opts.options([
                    ("plan_cache_mode", "force_generic_plan"),
                    ("enable_seqscan", "off"),
                ]),
                Plans::ChosenByServer => opts,
            }
        });
    }
    if engine != DbEngine::Sqlite {
        probe(engine, &settings.database.url()).await?;
    }
    Database::connect(options)
        .await
        .map_err(|source| DbSetupError::Connect { engine, source })
}

/// Whether a pooled SQLite connection is outside any transaction by sqlx's
/// count, as one must be when it is handed out; one that is not is closed
/// (the pool opens a fresh one). A write failing with `SQLITE_FULL` (a full
/// disk) can end its transaction inside SQLite, after which sqlx's ROLLBACK
/// fails and its count stays at one: the next "BEGIN" on that connection
/// becomes a SAVEPOINT, and the connection holds a transaction it never
/// ends, so every other writer waits for the lock for good (tests/faults.rs,
/// "a full disk"). Reading the count is an atomic load, no round trip to the
/// connection's thread, so every acquire can afford it; a connection taken
/// again before a dropped transaction's queued rollback has run is closed
/// too, which costs only a reconnect, on an error path.
async fn outside_transaction(
    conn: &mut sea_orm::sqlx::sqlite::SqliteConnection,
) -> Result<bool, sea_orm::sqlx::Error> {
    use sea_orm::sqlx::Connection;
    let clean = !conn.is_in_transaction();
    if !clean {
        tracing::warn!("a pooled SQLite connection was left in a transaction; closed");
    }
    Ok(clean)
}

/// How long the reachability probe of a database server may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Fails fast, naming host, port and cause, when the database server does
/// not accept TCP connections: the pool would only say it timed out.
async fn probe(engine: DbEngine, url: &str) -> Result<(), DbSetupError> {
    let default_port = if engine == DbEngine::MySql {
        3306
    } else {
        5432
    };
    let Some(address) = server_address(url, default_port) else {
        return Ok(()); // a socket path or an unusual URL: let the driver say
    };
    let unreachable = |source| DbSetupError::Unreachable {
        engine,
        address: address.clone(),
        source,
    };
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(&address)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(unreachable(e)),
        Err(_) => Err(unreachable(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {PROBE_TIMEOUT:?}"),
        ))),
    }
}

/// `host:port` of a server database URL (`scheme://user:pass@host:port/db?…`).
fn server_address(url: &str, default_port: u16) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let authority = rest.split(['/', '?']).next()?;
    if authority.is_empty() {
        return None;
    }
    let has_port = match authority.rfind(']') {
        Some(end) => authority[end..].contains(':'),
        None => authority.contains(':'),
    };
    Some(if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    })
}

/// A database error as a person needs it: the server's own message for an
/// error the server returned (sqlx's rendering adds source file and line).
pub fn describe(error: &DbErr) -> String {
    use sea_orm::sqlx;
    let runtime = match error {
        DbErr::Conn(e) | DbErr::Exec(e) | DbErr::Query(e) => e,
        other => return other.to_string(),
    };
    match runtime {
        sea_orm::RuntimeErr::SqlxError(e) => match e.as_ref() {
            sqlx::Error::Database(d) => d.message().to_string(),
            other => other.to_string(),
        },
        other => other.to_string(),
    }
}

/// Whether `error` made the database roll the whole transaction back to
/// break a deadlock (or a serialization conflict), so running it again is
/// safe and likely to succeed: SQLSTATE 40001 (MySQL's error 1213, and
/// PostgreSQL's serialization failure) or 40P01 (PostgreSQL's deadlock).
/// Two instances' writers can deadlock on MySQL, which has no lock mode
/// that lets a foreign-key check pass a row locked for an update.
pub fn is_deadlock(error: &DbErr) -> bool {
    use sea_orm::sqlx;
    let (DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
    | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e))) = error
    else {
        return false;
    };
    match e.as_ref() {
        sqlx::Error::Database(d) => matches!(d.code().as_deref(), Some("40001" | "40P01")),
        _ => false,
    }
}

/// Whether `error` says the database is too busy to take the request now,
/// rather than that something is wrong: SQLite's write lock still held by
/// another writer when the busy timeout ran out (`SQLITE_BUSY`,
/// `SQLITE_LOCKED` and their extended codes). Trying again shortly can
/// succeed. (A pool that timed out is not counted: a database that is down
/// times out the same way, and that is a failure.)
pub fn is_busy(error: &DbErr) -> bool {
    use sea_orm::sqlx;
    const SQLITE_BUSY: i32 = 5;
    const SQLITE_LOCKED: i32 = 6;
    let (DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
    | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e))
    | DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e))) = error
    else {
        return false;
    };
    match e.as_ref() {
        sqlx::Error::Database(d) if d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() => {
            // SQLite's extended result codes keep the primary one in the low byte.
            d.code()
                .and_then(|code| code.parse::<i32>().ok())
                .is_some_and(|code| matches!(code & 0xff, SQLITE_BUSY | SQLITE_LOCKED))
        }
        _ => false,
    }
}

/// Most rows one multi-row INSERT carries. A statement's bound values are
/// limited (SQLite 32,766; PostgreSQL and MySQL 65,535), and a statement
/// with more fails whole: rows many enough to pass that (a push to every
/// device of a large group's members) go in several statements of this
/// many, in the same transaction.
pub const ROWS_PER_INSERT: usize = 1_000;

/// Most values one `IN (…)` list carries, for the same reason: a longer
/// list is looked up in several statements.
pub const IDS_PER_LIST: usize = 10_000;

/// A request that waited its turn to write past its queue's timeout: the
/// database is busy, as with `is_busy`, but the wait was ours (SQLite's
/// group changes queue for a connection of their own).
#[derive(Debug, thiserror::Error)]
#[error("{0} queued past the pool's timeout")]
pub struct Busy(pub &'static str);

/// Whether `error` or one of its sources says the database is too busy to
/// take the request now (`is_busy`, or `Busy`): the client is asked to try
/// again, and no failure is logged.
pub fn busy_in(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        let db = e.downcast_ref::<DbErr>().or_else(|| {
            e.downcast_ref::<std::sync::Arc<DbErr>>()
                .map(|a| a.as_ref())
        });
        if db.is_some_and(is_busy) || e.is::<Busy>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// Creates the SQLite file readable by its owner only (it holds password
/// hashes; the search index's, the messages' words); SQLite gives its
/// `-wal` and `-shm` files the same mode. An
/// existing file with looser permissions is left as it is, with a warning.
pub fn create_private(path: &std::path::Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(path)?.permissions().mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        mode = format!("{:o}", mode & 0o777),
                        "the database file is readable by other users; run chmod 600 on it"
                    );
                }
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Key of the database-wide lock that serializes migrations across instances.
const MIGRATION_LOCK_KEY: i64 = 0x0063_6861_746d_6967; // "chatmig"
/// How long an instance waits for another one's migrations (MySQL's GET_LOCK needs a bound).
const MIGRATION_LOCK_SECONDS: u32 = 120;

/// Brings the schema up to date; safe on every start and from several
/// instances starting at once: on PostgreSQL and MySQL a database lock, held
/// on a connection of its own, lets one instance migrate while the others
/// wait (concurrent `CREATE TABLE IF NOT EXISTS` is not safe there).
///
/// Returns how many migrations this call applied.
pub async fn migrate(db: &DatabaseConnection, url: &str) -> Result<usize, DbSetupError> {
    let backend = db.get_database_backend();
    if backend == DatabaseBackend::Sqlite {
        return apply_pending(db).await;
    }
    let mut options = ConnectOptions::new(url.to_string());
    options
        .max_connections(1)
        .min_connections(1)
        .sqlx_logging(false);
    let lock = Database::connect(options)
        .await
        .map_err(DbSetupError::Migrate)?;
    let (take, release) = match backend {
        DatabaseBackend::Postgres => (
            format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"),
            format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"),
        ),
        _ => (
            format!("SELECT GET_LOCK('chat_server_migrations', {MIGRATION_LOCK_SECONDS})"),
            "SELECT RELEASE_LOCK('chat_server_migrations')".to_string(),
        ),
    };
    lock.execute_unprepared(&take)
        .await
        .map_err(DbSetupError::Migrate)?;
    let outcome = apply_pending(db).await;
    let _ = lock.execute_unprepared(&release).await;
    let _ = lock.close().await;
    outcome
}

async fn apply_pending(db: &DatabaseConnection) -> Result<usize, DbSetupError> {
    let pending = Migrator::get_pending_migrations(db)
        .await
        .map_err(DbSetupError::Migrate)?
        .len();
    Migrator::up(db, None)
        .await
        .map_err(DbSetupError::Migrate)?;
    Ok(pending)
}

/// Whether the database answers a trivial query.
pub async fn ping(db: &DatabaseConnection) -> Result<(), DbErr> {
    db.execute_unprepared("SELECT 1").await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::server_address;

    #[test]
    fn server_addresses() {
        assert_eq!(
            server_address("postgres://u:p@db.internal/chat", 5432).as_deref(),
            Some("db.internal:5432")
        );
        assert_eq!(
            server_address("mysql://root@127.0.0.1:3307/chat?x=1", 3306).as_deref(),
            Some("127.0.0.1:3307")
        );
        assert_eq!(
            server_address("postgres://u:p@[::1]:6543/chat", 5432).as_deref(),
            Some("[::1]:6543")
        );
        assert_eq!(server_address("postgres:///chat", 5432), None);
    }
}
