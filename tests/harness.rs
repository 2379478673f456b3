//! The test harness itself, where it has failed before.

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement, TransactionTrait};

use crate::common::{insert_users, Backend, Pool, TestDatabase};

/// A test's servers run on the test's own thread, and dropping its
/// `TestDatabase` blocks that thread: a server caught inside a transaction
/// at that moment held its locks for ever, and the `DROP` waited for them
/// for ever (a stress run's 300-second hang). The drop ends the database's
/// sessions first: here a transaction that holds a lock on the thread that
/// drops, which can never end on its own.
async fn a_database_is_dropped_while_this_thread_holds_a_lock_in_it(backend: &Backend) {
    dropped_while_a_lock_is_held(TestDatabase::create(backend).await).await;
}

/// The same of a pooled database given back: the next test to take it
/// would wait for the lock to empty it.
async fn a_pooled_database_is_given_back_while_this_thread_holds_a_lock_in_it(backend: &Backend) {
    dropped_while_a_lock_is_held(TestDatabase::migrated(backend).await).await;
}

async fn dropped_while_a_lock_is_held(db: TestDatabase) {
    let conn = Database::connect(db.url.as_str())
        .await
        .expect("connect to the test database");
    conn.execute_unprepared("CREATE TABLE held (x INTEGER)")
        .await
        .expect("create a table");
    let txn = conn.begin().await.expect("begin");
    txn.execute_unprepared("INSERT INTO held (x) VALUES (1)")
        .await
        .expect("insert inside the transaction");
    drop(db);
    // Reached only if the drop returned; the transaction's session is gone.
    assert!(txn.commit().await.is_err(), "the session was ended");
}

backend_tests!(@server a_database_is_dropped_while_a_lock_is_held => a_database_is_dropped_while_this_thread_holds_a_lock_in_it);
backend_tests!(@server a_pooled_database_is_given_back_while_a_lock_is_held => a_pooled_database_is_given_back_while_this_thread_holds_a_lock_in_it);

/// The pool of migrated server databases (common/reused.rs), on a pool of
/// this test's own (a prefix no other test uses): an entry comes back
/// empty but for the rows the migrations write, its identities restarted,
/// and not made again; one whose schema a test changed is made again; two
/// held at once are two; a pool of other migrations drops the free entries
/// of this one (and its template) when it grows, never a held one.
async fn a_pooled_database_comes_back_empty_unless_its_schema_changed(backend: &Backend) {
    // What a failed run of this test left behind goes first.
    Pool::named(backend, "tq", "").drop_free_entries().await;
    let prefix = format!("tq_{}", std::process::id());
    let pool = Pool::named(backend, &prefix, "a");
    let take = || pool.take();

    let first = take().await;
    assert!(first.made, "the pool starts empty");
    let db = connect(&first.url).await;
    let ids = insert_users(&db, "pooled", 2).await;
    let dispatch = "SELECT COUNT(*) AS n FROM push_dispatch";
    assert_eq!(count(&db, dispatch).await, 1, "the migrations' row");
    db.execute_unprepared("DELETE FROM push_dispatch")
        .await
        .unwrap();
    let second = take().await;
    assert_ne!(second.url, first.url, "two held at once are two");
    let (first_url, second_url) = (first.url.clone(), second.url.clone());
    db.close().await.unwrap();
    drop((first, second));

    let again = take().await;
    assert_eq!(
        (again.url.as_str(), again.made),
        (first_url.as_str(), false)
    );
    let db = connect(&again.url).await;
    assert_eq!(count(&db, "SELECT COUNT(*) AS n FROM users").await, 0);
    assert_eq!(count(&db, dispatch).await, 1, "the migrations' row is back");
    assert_eq!(
        insert_users(&db, "pooled", 2).await,
        ids,
        "identities restarted"
    );

    // Its schema changed: made again, without the change.
    db.execute_unprepared("CREATE TABLE extra (x INTEGER)")
        .await
        .unwrap();
    db.close().await.unwrap();
    drop(again);
    let again = take().await;
    assert_eq!((again.url.as_str(), again.made), (first_url.as_str(), true));
    let db = connect(&again.url).await;
    assert!(db.execute_unprepared("SELECT x FROM extra").await.is_err());
    assert_eq!(count(&db, "SELECT COUNT(*) AS n FROM users").await, 0);

    // Another key's first entry: this pool's free entry goes, its held one stays.
    let other = Pool::named(backend, &prefix, "b").take().await;
    assert!(other.made);
    let admin = connect(&base_url(backend)).await;
    let name = |key: &str, n: u32| format!("{prefix}_{key}_{n}");
    assert_eq!(
        entries(&admin, &prefix).await,
        [name("a", 0), name("b", 0), format!("{prefix}_b_template")],
        "{second_url} dropped"
    );
    assert_eq!(count(&db, "SELECT COUNT(*) AS n FROM users").await, 0);

    db.close().await.unwrap();
    drop((again, other));
    pool.drop_free_entries().await;
    assert!(entries(&admin, &prefix).await.is_empty());
}

backend_tests!(@server a_pooled_database_comes_back_empty_unless_its_schema_changed => a_pooled_database_comes_back_empty_unless_its_schema_changed);

async fn connect(url: &str) -> DatabaseConnection {
    Database::connect(url)
        .await
        .expect("connect to the test database")
}

fn base_url(backend: &Backend) -> String {
    match backend {
        Backend::Postgres(base) | Backend::MySql(base) => base.clone(),
        Backend::Sqlite => unreachable!("server databases only"),
    }
}

async fn count(db: &DatabaseConnection, sql: &str) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .expect("count")
        .expect("a row");
    row.try_get::<i64>("", "n").expect("n")
}

/// The schemas (PostgreSQL) or databases (MariaDB) named `<prefix>_…`.
async fn entries(admin: &DatabaseConnection, prefix: &str) -> Vec<String> {
    let sql = match admin.get_database_backend() {
        sea_orm::DatabaseBackend::Postgres => format!(
            "SELECT nspname AS name FROM pg_namespace WHERE nspname LIKE '{prefix}\\_%' ORDER BY 1"
        ),
        _ => format!(
            "SELECT SCHEMA_NAME AS name FROM information_schema.SCHEMATA \
             WHERE SCHEMA_NAME LIKE '{prefix}\\_%' ORDER BY 1"
        ),
    };
    let rows = admin
        .query_all_raw(Statement::from_string(admin.get_database_backend(), sql))
        .await
        .expect("the entries");
    rows.iter()
        .map(|r| r.try_get::<String>("", "name").expect("name"))
        .collect()
}
