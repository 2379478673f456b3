//! The test harness itself, where it has failed before.

use sea_orm::{ConnectionTrait, Database, TransactionTrait};

use crate::common::{Backend, TestDatabase};

/// A test's servers run on the test's own thread, and dropping its
/// `TestDatabase` blocks that thread: a server caught inside a transaction
/// at that moment held its locks for ever, and the `DROP` waited for them
/// for ever (a stress run's 300-second hang). The drop ends the database's
/// sessions first: here a transaction that holds a lock on the thread that
/// drops, which can never end on its own.
async fn a_database_is_dropped_while_this_thread_holds_a_lock_in_it(backend: &Backend) {
    let db = TestDatabase::create(backend).await;
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
