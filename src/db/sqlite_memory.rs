//! SQLite's own allocations through mimalloc, without its memory statistics.
//!
//! The SQLite built into the server (libsqlite3-sys, bundled) allocates
//! with the C library's `malloc` and, by default, counts every allocation
//! under one process-wide mutex (`SQLITE_CONFIG_MEMSTATUS`). A profile of
//! the message writer at full speed had a quarter of SQLite's thread in
//! glibc's `malloc` and `free` and in that mutex's lock and unlock
//! (BENCHMARKS.md "SQLite's allocations, and the client_id index"). Both
//! are process-wide settings that SQLite accepts only before it
//! initialises, that is before the first connection opens: `use_mimalloc`
//! is called first thing in `main`.
//!
//! Nothing reads the statistics: `sqlite3_memory_used` and
//! `sqlite3_soft_heap_limit64` are not used by the server or by sqlx.

use std::ffi::{c_int, c_void};

use libsqlite3_sys as ffi;

unsafe extern "C" fn malloc(size: c_int) -> *mut c_void {
    // SAFETY: SQLite asks for a positive size and needs 8-byte alignment;
    // mimalloc's blocks are aligned to 16.
    unsafe { libmimalloc_sys::mi_malloc(size.max(0) as usize) }
}

unsafe extern "C" fn free(block: *mut c_void) {
    // SAFETY: `block` came from `malloc` or `realloc` above (SQLite frees
    // only what it allocated through these methods).
    unsafe { libmimalloc_sys::mi_free(block) }
}

unsafe extern "C" fn realloc(block: *mut c_void, size: c_int) -> *mut c_void {
    // SAFETY: as `free`; SQLite never passes a null block here.
    unsafe { libmimalloc_sys::mi_realloc(block, size.max(0) as usize) }
}

unsafe extern "C" fn size(block: *mut c_void) -> c_int {
    // SAFETY: as `free`. SQLite's allocations are under its 2 GiB limit.
    let usable = unsafe { libmimalloc_sys::mi_usable_size(block) };
    c_int::try_from(usable).unwrap_or(c_int::MAX)
}

unsafe extern "C" fn roundup(size: c_int) -> c_int {
    // mimalloc's size classes: asking for the rounded size costs nothing more.
    // SAFETY: a pure function of its argument.
    let good = unsafe { libmimalloc_sys::mi_good_size(size.max(0) as usize) };
    c_int::try_from(good).unwrap_or(size)
}

unsafe extern "C" fn init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn shutdown(_: *mut c_void) {}

/// What `use_mimalloc` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// SQLite allocates through mimalloc and keeps no statistics.
    Configured,
    /// SQLite had initialised already (a connection was open) and refused,
    /// with this result code: it keeps the C library's allocator.
    TooLate(c_int),
}

/// Makes SQLite allocate through mimalloc and stop counting its
/// allocations. Must run before any SQLite connection opens (first in
/// `main`, before any other thread starts): later, SQLite refuses the
/// change and keeps its defaults, which is only slower.
pub fn use_mimalloc() -> Outcome {
    let methods = ffi::sqlite3_mem_methods {
        xMalloc: Some(malloc),
        xFree: Some(free),
        xRealloc: Some(realloc),
        xSize: Some(size),
        xRoundup: Some(roundup),
        xInit: Some(init),
        xShutdown: Some(shutdown),
        pAppData: std::ptr::null_mut(),
    };
    // SAFETY: `sqlite3_config` is not thread-safe and is only valid before
    // `sqlite3_initialize`: the caller runs this before any connection
    // opens and before other threads exist. SQLite copies `methods`.
    let code = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_MALLOC, &methods) };
    if code != ffi::SQLITE_OK {
        return Outcome::TooLate(code);
    }
    // SAFETY: as above; takes one int.
    let code = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_MEMSTATUS, 0 as c_int) };
    if code != ffi::SQLITE_OK {
        return Outcome::TooLate(code);
    }
    Outcome::Configured
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in the child process `sqlite_allocates_through_mimalloc` starts.
    const CHILD: &str = "CHAT_SQLITE_MEMORY_CHILD";

    /// SQLite's allocations come from mimalloc's heap once configured, and
    /// a second call is refused once SQLite runs. It needs a process in
    /// which SQLite has not run yet: under `cargo test` the other tests of
    /// this binary share one, so the check runs in a child process of its
    /// own (this binary again, with only `configured_before_first_use`).
    #[test]
    fn sqlite_allocates_through_mimalloc() {
        let exe = std::env::current_exe().expect("a test knows its own binary");
        let out = std::process::Command::new(exe)
            .args(["db::sqlite_memory::tests::configured_before_first_use"])
            .args(["--exact", "--include-ignored", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .expect("the test binary starts again");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("1 passed"), "{stdout}");
    }

    #[test]
    #[ignore = "runs in the process `sqlite_allocates_through_mimalloc` starts"]
    fn configured_before_first_use() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        assert_eq!(use_mimalloc(), Outcome::Configured);
        // SAFETY: plain SQLite API calls on a private in-memory database.
        unsafe {
            let mut db = std::ptr::null_mut();
            let name = c"file:memtest?mode=memory";
            let flags = ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_URI;
            let opened = ffi::sqlite3_open_v2(name.as_ptr(), &mut db, flags, std::ptr::null());
            assert_eq!(opened, ffi::SQLITE_OK);
            let sql = c"CREATE TABLE t(x); INSERT INTO t VALUES (randomblob(5000));";
            let none = std::ptr::null_mut();
            let done = ffi::sqlite3_exec(db, sql.as_ptr(), None, none, none.cast());
            assert_eq!(done, ffi::SQLITE_OK);
            let block = ffi::sqlite3_malloc(1000);
            assert!(libmimalloc_sys::mi_is_in_heap_region(
                block as *const c_void
            ));
            assert!(ffi::sqlite3_msize(block) >= 1000);
            ffi::sqlite3_free(block);
            // Statistics off: nothing counted.
            assert_eq!(ffi::sqlite3_memory_used(), 0);
            assert_eq!(ffi::sqlite3_close(db), ffi::SQLITE_OK);
        }
        assert!(matches!(use_mimalloc(), Outcome::TooLate(_)));
    }
}
