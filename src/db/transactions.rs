//! Where the server's transactions begin: every one in [`begin`] or
//! [`begin_write`], which a caller dropped halfway cannot leave half begun,
//! but the group-commit writer's ([`begin_write_uncancelled`]). clippy.toml
//! forbids sea-orm's own `begin` and `transaction` elsewhere.

use sea_orm::{
    DatabaseBackend, DatabaseConnection, DatabaseTransaction, DbErr, SqliteTransactionMode,
    TransactionOptions, TransactionTrait,
};

/// Begins a transaction that a caller dropped halfway (a request
/// cancelled, a session ended mid-query) cannot leave half begun. sqlx
/// counts a transaction only once its `BEGIN` is answered, so a caller
/// dropped while the `BEGIN` was on its way left the server in a
/// transaction that nothing would end, and the connection went back to the
/// pool that way: the next statements on it ran inside it, uncommitted
/// (tests/pool.rs). Here the `BEGIN` runs to its answer in a task of its
/// own, and a transaction that nobody waits for any more is dropped there,
/// which rolls it back. On SQLite the drivers already end such a
/// transaction (below), so it begins without the task's hop.
pub async fn begin(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    begin_whole(db, TransactionOptions::default()).await
}

/// Begins a transaction that will write. On SQLite it takes the write lock
/// at once (`BEGIN IMMEDIATE`): a deferred transaction that reads first and
/// then writes fails with `database is locked` at once, without waiting,
/// whenever anything else committed in between (its snapshot is stale),
/// which the busy timeout cannot help. The other databases ignore the mode.
/// Safe to drop halfway, as `begin` is.
pub async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    begin_whole(db, write_options()).await
}

/// `begin_write` for the group-commit writer alone, whose tasks no client
/// can cancel (they end with the server): the `BEGIN` goes out from the
/// caller's own task at once, without `begin`'s hop through a task of its
/// own, which on the main thread could wait behind whatever else is ready
/// there, on the path of every batch with `client_id`s or changes. A
/// caller dropped halfway would leave the connection half begun, as
/// `begin` says.
#[allow(clippy::disallowed_methods)]
pub async fn begin_write_uncancelled(
    db: &DatabaseConnection,
) -> Result<DatabaseTransaction, DbErr> {
    db.begin_with_options(write_options()).await
}

fn write_options() -> TransactionOptions {
    TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..Default::default()
    }
}

/// Begins a transaction that a caller dropped halfway cannot leave half
/// begun. On PostgreSQL and MySQL the `BEGIN` runs to its answer in a task
/// of its own. A SQLite connection is a thread that runs its commands in
/// order, and a transaction dropped before its `BEGIN` was answered is
/// rolled back there twice over: sqlx-sqlite rolls back a `BEGIN` whose
/// caller is gone, and sea-orm queues a `ROLLBACK` behind it as it drops
/// the transaction (tests/pool.rs, `…_sqlite`, fails only with both taken
/// out). So on SQLite the `BEGIN` goes out from the caller's own task,
/// without the hop, which cost a history page 8–10 % of its median time
/// (BENCHMARKS.md "A fiftieth machine").
#[allow(clippy::disallowed_methods)]
async fn begin_whole(
    db: &DatabaseConnection,
    options: TransactionOptions,
) -> Result<DatabaseTransaction, DbErr> {
    if db.get_database_backend() == DatabaseBackend::Sqlite {
        return db.begin_with_options(options).await;
    }
    let db = db.clone();
    tokio::spawn(async move { db.begin_with_options(options).await })
        .await
        .map_err(|e| DbErr::Custom(format!("beginning a transaction: {e}")))?
}
