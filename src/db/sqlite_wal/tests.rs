//! The VFS against SQLite itself: what reaches the file, when, and what
//! another connection reads.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use super::*;

/// A connection run on the test's own thread, through SQLite's C API,
/// so that `/proc/thread-self/io` counts its writes.
struct Db(*mut ffi::sqlite3);

impl Db {
    /// Opens `path` through this module's VFS, or the default one.
    fn open(path: &Path, ours: bool) -> Db {
        let name = CString::new(path.to_str().expect("a temporary path is UTF-8"))
            .expect("no NUL in a path");
        let vfs = if ours {
            CString::new(registered().expect("the VFS registers")).expect("a plain name")
        } else {
            CString::new("unix").expect("a plain name")
        };
        let flags = ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_CREATE;
        let mut db = std::ptr::null_mut();
        // SAFETY: plain SQLite API calls with NUL-terminated strings.
        let code = unsafe { ffi::sqlite3_open_v2(name.as_ptr(), &mut db, flags, vfs.as_ptr()) };
        assert_eq!(code, ffi::SQLITE_OK);
        Db(db)
    }

    /// Runs `sql` (one or more statements), which must succeed.
    fn run(&self, sql: &str) {
        let sql = CString::new(sql).expect("no NUL in SQL");
        let none = std::ptr::null_mut();
        // SAFETY: an open connection and a NUL-terminated string.
        let code = unsafe { ffi::sqlite3_exec(self.0, sql.as_ptr(), None, none, none.cast()) };
        assert_eq!(code, ffi::SQLITE_OK, "{sql:?}: {}", self.error());
    }

    /// The first column of `sql`'s first row, as text.
    fn text(&self, sql: &str) -> String {
        let sql = CString::new(sql).expect("no NUL in SQL");
        let mut statement = std::ptr::null_mut();
        // SAFETY: an open connection; the statement is finalised here.
        unsafe {
            let code = ffi::sqlite3_prepare_v2(
                self.0,
                sql.as_ptr(),
                -1,
                &mut statement,
                std::ptr::null_mut(),
            );
            assert_eq!(code, ffi::SQLITE_OK, "{}", self.error());
            assert_eq!(
                ffi::sqlite3_step(statement),
                ffi::SQLITE_ROW,
                "{}",
                self.error()
            );
            let text = ffi::sqlite3_column_text(statement, 0);
            let text = if text.is_null() {
                String::new()
            } else {
                CStr::from_ptr(text.cast()).to_string_lossy().into_owned()
            };
            ffi::sqlite3_finalize(statement);
            text
        }
    }

    fn error(&self) -> String {
        // SAFETY: an open connection's message, copied at once.
        unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(self.0)) }
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // SAFETY: every statement is finalised; closed once.
        unsafe { ffi::sqlite3_close(self.0) };
    }
}

/// The write system calls this thread has made.
fn writes_by_this_thread() -> u64 {
    let io = std::fs::read_to_string("/proc/thread-self/io").expect("Linux counts a thread's I/O");
    io.lines()
        .find_map(|line| line.strip_prefix("syscw: "))
        .and_then(|n| n.parse().ok())
        .expect("/proc/thread-self/io has syscw")
}

/// A hundred rows of 3,000 random bytes: a page each, and the table's
/// pages above them.
const HUNDRED_PAGES: &str = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n \
    WHERE i < 100) INSERT INTO t(body) SELECT randomblob(3000) FROM n";

const ROWS: &str = "SELECT count(*) || ':' || group_concat(hex(body), '') FROM \
    (SELECT body FROM t ORDER BY id)";

/// Asserts that two readings of [`ROWS`] are the same, saying where
/// they differ rather than printing both (hundreds of kilobytes).
fn same_rows(read: &str, expected: &str) {
    let differ = read.bytes().zip(expected.bytes()).position(|(a, b)| a != b);
    assert!(
        read == expected,
        "{} characters read, {} expected, the first difference at {differ:?}",
        read.len(),
        expected.len(),
    );
}

/// A database in `dir` in WAL mode with `synchronous = FULL`, as the
/// server's, and table `t` in it, opened through this module's VFS.
fn table_in(dir: &Path) -> (PathBuf, Db) {
    let path = dir.join("chat.db");
    let db = Db::open(&path, true);
    db.run("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL");
    db.run("CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB)");
    (path, db)
}

#[test]
fn a_commit_is_written_in_one_call_and_read_back_by_any_connection() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (path, ours) = table_in(dir.path());

    let before = writes_by_this_thread();
    ours.run(HUNDRED_PAGES);
    let writes = writes_by_this_thread() - before;
    // Some 102 frames of 4,120 bytes: four calls of 128 KiB or less,
    // where the default VFS makes 204.
    assert!(writes <= 5, "{writes} writes for one commit");

    let written = ours.text(ROWS);
    assert!(written.starts_with("100:"), "{}", &written[..10]);
    let other = Db::open(&path, false);
    same_rows(&other.text(ROWS), &written);
    assert_eq!(other.text("PRAGMA integrity_check"), "ok");
}

/// A transaction that spilled pages to the WAL and was rolled back:
/// what it spilled is written before its write lock is released, so
/// it cannot land later on the frames another connection committed
/// where it had written.
#[test]
fn a_rolled_back_spill_is_written_before_another_connection_commits() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (path, first) = table_in(dir.path());
    // Every page in the database's file, none in the WAL: the
    // rollback reads nothing back from the WAL (which would write what
    // is gathered).
    first.run("PRAGMA wal_checkpoint(TRUNCATE)");
    // Five pages of cache: the hundred pages spill to the WAL.
    first.run("PRAGMA cache_size = 5");
    first.run("BEGIN");
    first.run(HUNDRED_PAGES);
    first.run("ROLLBACK");

    let second = Db::open(&path, true);
    second.run(HUNDRED_PAGES);
    let committed = second.text(ROWS);
    // The first connection reads the WAL again (a read of its own)
    // and commits a row after the second's.
    same_rows(&first.text(ROWS), &committed);
    first.run("INSERT INTO t(body) VALUES (x'0102')");

    let fresh = Db::open(&path, false);
    assert_eq!(fresh.text("PRAGMA integrity_check"), "ok");
    same_rows(
        &fresh.text(ROWS),
        &(committed.replacen("100:", "101:", 1) + "0102"),
    );
}

/// Set in the child process `a_commit_survives_the_process` starts.
const CHILD: &str = "CHAT_SQLITE_WAL_CHILD";

/// With an exclusive lock and `synchronous = NORMAL` no sync, lock or
/// barrier follows a commit: its frames are in the file because the
/// commit frame wrote them. The commit is made by a child process that
/// then aborts (this binary again, with only `commit_then_abort`).
#[test]
fn a_commit_survives_the_process() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("abort.db");
    let exe = std::env::current_exe().expect("a test knows its own binary");
    let out = std::process::Command::new(exe)
        .args(["db::sqlite_wal::tests::commit_then_abort"])
        .args(["--exact", "--include-ignored", "--test-threads=1"])
        .env(CHILD, &path)
        .output()
        .expect("the test binary starts again");
    assert!(!out.status.success(), "the child aborts after its commit");
    let after = Db::open(&path, false);
    assert_eq!(
        after.text("SELECT group_concat(body) FROM t"),
        "kept,kept too"
    );
}

#[test]
#[ignore = "runs in the process `a_commit_survives_the_process` starts"]
fn commit_then_abort() {
    let Some(path) = std::env::var_os(CHILD) else {
        return;
    };
    let db = Db::open(Path::new(&path), true);
    db.run("PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = WAL");
    db.run("PRAGMA synchronous = NORMAL");
    db.run("CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT)");
    db.run("INSERT INTO t(body) VALUES ('kept')");
    db.run("INSERT INTO t(body) VALUES ('kept too')");
    std::process::abort();
}
