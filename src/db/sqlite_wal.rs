//! A SQLite VFS that writes a transaction's WAL frames in one call.
//!
//! SQLite writes each frame of its write-ahead log with two `pwrite`s, the
//! frame's 24-byte header and then its page (`walWriteOneFrame`), so a
//! commit that changes n pages makes 2n system calls before its `fsync`
//! (BENCHMARKS.md, "A forty-sixth machine"). This VFS is the platform's
//! default one (`unix`) with one difference: the frames a transaction
//! appends to its WAL are gathered in memory and written in one call (one
//! per [`GATHER_AT_MOST`] bytes, 128 KiB). Every other file (the database,
//! its journals, temporary files) and every other write goes straight
//! through.
//!
//! What is gathered is written, in the order SQLite wrote it:
//! - as soon as a commit frame is complete, that is before SQLite makes
//!   the commit visible to other connections (the wal-index header) and
//!   before its `fsync` (`synchronous = FULL`), so a commit is in the file
//!   when SQLite returns from it whatever the settings. A frame commits
//!   when its header's second field (the database's size after the
//!   commit) is not zero: the WAL's file format (sqlite.org/fileformat2.html,
//!   "WAL Frame Format"), not SQLite's code;
//! - before anything else reaches the WAL (a read, a sync, a truncation,
//!   its size, a file control, a write that is not an append: frames
//!   overwritten in place, checksums rewritten), and before the database's
//!   file takes or releases a wal-index lock or passes a memory barrier.
//!   The latter covers a transaction that ends without a commit frame: a
//!   rollback after SQLite spilled pages to the WAL releases the write
//!   lock, and what it spilled is written first, as SQLite itself wrote
//!   it, before another connection may append where it did.
//!
//! A write that fails, whenever it is made, fails the call that made it,
//! which fails the transaction as the write itself would have.
//!
//! [`registered`] adds the VFS once per process under [`NAME`]; the
//! server's SQLite connections ask for it (`db::connect_with`, the search
//! index's). Each open WAL keeps its buffer's capacity, at most
//! [`GATHER_AT_MOST`]: one per connection that writes.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

use libsqlite3_sys as ffi;

/// The name connections ask for.
pub const NAME: &str = "chat-wal";
const C_NAME: &CStr = c"chat-wal";

/// The most that is gathered: the most the default VFS writes in one
/// call (os_unix.c's `seekAndWrite` takes 17 bits of a length: 128 KiB
/// less a byte). A transaction of hundreds of pages (a full-speed batch
/// of 500 messages writes some 130 frames) takes a call per 31 frames of
/// 4 KiB pages instead of two a frame.
pub const GATHER_AT_MOST: usize = 0x1ffff;

/// A WAL frame's header, written before each page.
const FRAME_HEADER: usize = 24;

/// The wal-index lock a writer holds for its whole transaction (slot 0 of
/// the wal-index's locks, `WAL_WRITE_LOCK`).
const WRITE_LOCK: c_int = 0;

/// The VFS as registered: the default VFS's fields and methods, with this
/// module's `xOpen`, name and file size, and the default VFS beside them.
#[repr(C)]
struct Vfs {
    base: ffi::sqlite3_vfs,
    real: *mut ffi::sqlite3_vfs,
}

/// An open file: what SQLite sees (`base`, whose methods are `methods`) and
/// the default VFS's file (`real`, in the same allocation, after this).
#[repr(C)]
struct File {
    base: ffi::sqlite3_file,
    methods: ffi::sqlite3_io_methods,
    real: *mut ffi::sqlite3_file,
    /// For a WAL, its gathered frames; `None` for every other file.
    log: Option<Log>,
    /// For a main database, its WAL's file while that is open.
    wal: *mut File,
}

/// A WAL's frames not written yet.
struct Log {
    /// The database's file (a `File` of this VFS), or null.
    database: *mut File,
    /// The gathered bytes, which go at offset `at`.
    gathered: Vec<u8>,
    at: i64,
    /// Where the writes of the current transaction end: a write there is
    /// an append; one before it overwrites.
    end: i64,
    /// A commit frame's header is gathered: its page, the next write, ends
    /// the transaction's frames.
    commit_next: bool,
}

/// SQLite refused the VFS (it has no default VFS, or no memory).
#[derive(Debug, thiserror::Error)]
#[error("cannot register SQLite's VFS {NAME}: result code {0}")]
pub struct RegisterError(c_int);

/// The VFS's name, for SQLite's `vfs` option, once it is registered (the
/// first call registers it; later ones return the first one's result).
pub fn registered() -> Result<&'static str, RegisterError> {
    static REGISTERED: OnceLock<Result<(), c_int>> = OnceLock::new();
    let result = *REGISTERED.get_or_init(register);
    result.map(|()| NAME).map_err(RegisterError)
}

fn register() -> Result<(), c_int> {
    // SAFETY: `sqlite3_vfs_find` with a null name returns the default
    // VFS (initialising SQLite if need be), which lives as long as the
    // process, as does the leaked copy registered below. Every method
    // copied from it ignores which VFS it is called on, or reads only
    // the copied fields (`unix`'s, in os_unix.c); `xOpen`, which reads
    // its `pAppData`, is called with the default VFS itself.
    unsafe {
        let real = ffi::sqlite3_vfs_find(std::ptr::null());
        if real.is_null() {
            return Err(ffi::SQLITE_ERROR);
        }
        let ours = c_int::try_from(std::mem::size_of::<File>())
            .expect("a file's bookkeeping is a few hundred bytes");
        let mut base = *real;
        base.szOsFile = ours + (*real).szOsFile;
        base.zName = C_NAME.as_ptr();
        base.pNext = std::ptr::null_mut();
        base.xOpen = Some(open);
        let vfs = Box::leak(Box::new(Vfs { base, real }));
        match ffi::sqlite3_vfs_register(&mut vfs.base, 0) {
            ffi::SQLITE_OK => Ok(()),
            code => Err(code),
        }
    }
}

unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite passes this module's VFS and `szOsFile` bytes at
    // `file`, 8-byte aligned, which hold a `File` and then the default
    // VFS's file (`szOsFile` is their sum; `File`'s size is a multiple of
    // its alignment, 8). The default VFS opens its file there. A WAL's
    // name is one `sqlite3_database_file_object` takes (SQLite's pager
    // opens the WAL, after its database's file).
    unsafe {
        let real_vfs = (*vfs.cast::<Vfs>()).real;
        let real = file
            .cast::<u8>()
            .add(std::mem::size_of::<File>())
            .cast::<ffi::sqlite3_file>();
        let xopen = (*real_vfs).xOpen.expect("a VFS opens files");
        let code = xopen(real_vfs, name, real, flags, out_flags);
        (*file).pMethods = std::ptr::null();
        if (*real).pMethods.is_null() {
            return code; // nothing open: SQLite calls no `xClose`
        }
        let log = (flags & ffi::SQLITE_OPEN_WAL != 0 && !name.is_null()).then(|| Log {
            database: ours_or_null(ffi::sqlite3_database_file_object(name)),
            gathered: Vec::new(),
            at: 0,
            end: 0,
            commit_next: false,
        });
        let this = file.cast::<File>();
        this.write(File {
            base: ffi::sqlite3_file {
                pMethods: std::ptr::null(),
            },
            methods: forwarding(&*(*real).pMethods),
            real,
            log,
            wal: std::ptr::null_mut(),
        });
        (*this).base.pMethods = &(*this).methods;
        if let Some(database) = (*this).log.as_ref().map(|log| log.database) {
            if !database.is_null() {
                (*database).wal = this;
            }
        }
        code
    }
}

/// `file` as this module's `File`, or null when another VFS opened it.
///
/// # Safety
/// `file` is null or an open SQLite file.
unsafe fn ours_or_null(file: *mut ffi::sqlite3_file) -> *mut File {
    if file.is_null() {
        return std::ptr::null_mut();
    }
    let candidate = file.cast::<File>();
    // SAFETY: an open file starts with its methods' address; ours point
    // into the file itself, which no other VFS's can (the address is
    // computed, not read).
    let ours = unsafe { std::ptr::eq((*file).pMethods, &raw const (*candidate).methods) };
    if ours {
        candidate
    } else {
        std::ptr::null_mut()
    }
}

/// This module's methods for a file whose default methods are `real`: the
/// same version, and a method wherever `real` has one.
fn forwarding(real: &ffi::sqlite3_io_methods) -> ffi::sqlite3_io_methods {
    macro_rules! ours {
        ($field:ident, $function:ident) => {
            real.$field.and(Some($function as _))
        };
    }
    ffi::sqlite3_io_methods {
        iVersion: real.iVersion,
        xClose: ours!(xClose, close),
        xRead: ours!(xRead, read),
        xWrite: ours!(xWrite, write),
        xTruncate: ours!(xTruncate, truncate),
        xSync: ours!(xSync, sync),
        xFileSize: ours!(xFileSize, file_size),
        xLock: ours!(xLock, lock),
        xUnlock: ours!(xUnlock, unlock),
        xCheckReservedLock: ours!(xCheckReservedLock, check_reserved_lock),
        xFileControl: ours!(xFileControl, file_control),
        xSectorSize: ours!(xSectorSize, sector_size),
        xDeviceCharacteristics: ours!(xDeviceCharacteristics, device_characteristics),
        xShmMap: ours!(xShmMap, shm_map),
        xShmLock: ours!(xShmLock, shm_lock),
        xShmBarrier: ours!(xShmBarrier, shm_barrier),
        xShmUnmap: ours!(xShmUnmap, shm_unmap),
        xFetch: ours!(xFetch, fetch),
        xUnfetch: ours!(xUnfetch, unfetch),
    }
}

/// The `File` behind a file SQLite passes to one of this module's methods.
///
/// # Safety
/// `file` was initialised by `open` and SQLite has not closed it.
unsafe fn ours<'a>(file: *mut ffi::sqlite3_file) -> &'a mut File {
    // SAFETY: the caller's promise. SQLite calls one method of one
    // connection's files at a time, so no other reference is live.
    unsafe { &mut *file.cast::<File>() }
}

/// Calls the default VFS's method `$name` on the file's own file.
macro_rules! real {
    ($file:expr, $name:ident $(, $arg:expr)*) => {{
        let real = $file.real;
        // SAFETY: `real` is the default VFS's open file, and this module's
        // table has the method only where the default one's has it.
        unsafe {
            let method = (*(*real).pMethods)
                .$name
                .expect("forwarded only where the default file has the method");
            method(real $(, $arg)*)
        }
    }};
}

impl File {
    /// Writes this WAL's gathered frames, in one call; nothing is left
    /// gathered after, even when the write fails (the caller reports it).
    fn write_gathered(&mut self) -> c_int {
        let real = self.real;
        let Some(log) = self.log.as_mut() else {
            return ffi::SQLITE_OK;
        };
        log.commit_next = false;
        if log.gathered.is_empty() {
            return ffi::SQLITE_OK;
        }
        let code = match c_int::try_from(log.gathered.len()) {
            Ok(amount) => {
                let data = log.gathered.as_ptr().cast::<c_void>();
                // SAFETY: as `real!`; `data` holds `amount` bytes.
                unsafe {
                    let write = (*(*real).pMethods).xWrite.expect("a file is written");
                    write(real, data, amount, log.at)
                }
            }
            Err(_) => ffi::SQLITE_IOERR_WRITE, // never: bounded by GATHER_AT_MOST
        };
        log.gathered.clear();
        code
    }

    /// For a database's file: writes its WAL's gathered frames.
    fn write_wal(&mut self) -> c_int {
        if self.wal.is_null() {
            return ffi::SQLITE_OK;
        }
        // SAFETY: `wal` is set by the WAL's `open` and cleared by its
        // `close`; both files belong to one connection, whose files SQLite
        // uses one call at a time.
        unsafe { (*self.wal).write_gathered() }
    }
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: SQLite passes a file `open` initialised.
    let file = unsafe { ours(file) };
    let Some(log) = file.log.as_mut() else {
        return real!(file, xWrite, data, amount, offset);
    };
    let length = usize::try_from(amount).unwrap_or(0);
    if offset == 0 {
        log.end = 0; // the WAL's header: a new log starts
    }
    let appends = offset >= log.end;
    let follows = offset == log.at + log.gathered.len() as i64;
    let ends_commit = log.commit_next;
    let fits = log.gathered.len() + length <= GATHER_AT_MOST;
    if !log.gathered.is_empty() && (!follows || !appends || !fits) {
        let code = file.write_gathered();
        if code != ffi::SQLITE_OK {
            return code;
        }
    }
    let log = file.log.as_mut().expect("a WAL's file keeps its log");
    log.end = log.end.max(offset + i64::from(amount));
    if !appends {
        return real!(file, xWrite, data, amount, offset);
    }
    if log.gathered.is_empty() {
        log.at = offset;
    }
    // SAFETY: SQLite passes `amount` readable bytes at `data`.
    let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), length) };
    log.gathered.extend_from_slice(bytes);
    if ends_commit {
        return file.write_gathered();
    }
    log.commit_next = length == FRAME_HEADER && bytes[4..8] != [0; 4];
    ffi::SQLITE_OK
}

/// A method of a WAL's file that writes what is gathered first.
macro_rules! after_writing {
    ($function:ident, $name:ident $(, $arg:ident: $type:ty)*) => {
        unsafe extern "C" fn $function(file: *mut ffi::sqlite3_file $(, $arg: $type)*) -> c_int {
            // SAFETY: SQLite passes a file `open` initialised.
            let file = unsafe { ours(file) };
            let code = file.write_gathered();
            if code != ffi::SQLITE_OK {
                return code;
            }
            real!(file, $name $(, $arg)*)
        }
    };
}

/// A method that only calls the default file's.
macro_rules! straight {
    ($function:ident, $name:ident -> $out:ty $(, $arg:ident: $type:ty)*) => {
        unsafe extern "C" fn $function(file: *mut ffi::sqlite3_file $(, $arg: $type)*) -> $out {
            // SAFETY: SQLite passes a file `open` initialised.
            let file = unsafe { ours(file) };
            real!(file, $name $(, $arg)*)
        }
    };
}

after_writing!(read, xRead, data: *mut c_void, amount: c_int, offset: i64);
after_writing!(sync, xSync, flags: c_int);
after_writing!(file_size, xFileSize, size: *mut i64);
after_writing!(file_control, xFileControl, op: c_int, arg: *mut c_void);
after_writing!(fetch, xFetch, offset: i64, amount: c_int, page: *mut *mut c_void);
straight!(lock, xLock -> c_int, level: c_int);
straight!(unlock, xUnlock -> c_int, level: c_int);
straight!(check_reserved_lock, xCheckReservedLock -> c_int, out: *mut c_int);
straight!(sector_size, xSectorSize -> c_int);
straight!(device_characteristics, xDeviceCharacteristics -> c_int);
straight!(shm_unmap, xShmUnmap -> c_int, delete: c_int);
straight!(unfetch, xUnfetch -> c_int, offset: i64, page: *mut c_void);
straight!(
    shm_map,
    xShmMap -> c_int,
    region: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void
);

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    // SAFETY: SQLite passes a file `open` initialised.
    let file = unsafe { ours(file) };
    let code = file.write_gathered();
    if code != ffi::SQLITE_OK {
        return code;
    }
    if let Some(log) = file.log.as_mut() {
        log.end = log.end.min(size);
    }
    real!(file, xTruncate, size)
}

/// A database's wal-index lock taken or released: its WAL's frames are
/// written first, and a writer's lock starts or ends a transaction.
unsafe extern "C" fn shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: SQLite passes a file `open` initialised.
    let file = unsafe { ours(file) };
    let code = file.write_wal();
    if code != ffi::SQLITE_OK {
        return code;
    }
    if offset == WRITE_LOCK && !file.wal.is_null() {
        // SAFETY: as `write_wal`.
        if let Some(log) = unsafe { (*file.wal).log.as_mut() } {
            log.end = 0;
        }
    }
    real!(file, xShmLock, offset, n, flags)
}

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    // SAFETY: SQLite passes a file `open` initialised.
    let file = unsafe { ours(file) };
    // A barrier returns nothing. Nothing is gathered at a commit's barrier
    // (its frames went with its commit frame, and a failure there failed
    // the commit before it); a failure here can only lose frames that no
    // commit names, so it is logged.
    if file.write_wal() != ffi::SQLITE_OK {
        tracing::warn!("writing a SQLite WAL's uncommitted frames failed");
    }
    real!(file, xShmBarrier)
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite passes a file `open` initialised, closes it once and
    // never uses it again: its `log` is dropped here.
    let file = unsafe { ours(file) };
    let written = file.write_gathered();
    if let Some(database) = file.log.as_ref().map(|log| log.database) {
        if !database.is_null() {
            // SAFETY: a WAL is closed before its database's file.
            unsafe { (*database).wal = std::ptr::null_mut() };
        }
    }
    let closed = real!(file, xClose);
    // SAFETY: as above; `log` was written by `open` and is not used after.
    unsafe { std::ptr::drop_in_place(&mut file.log) };
    if written != ffi::SQLITE_OK {
        written
    } else {
        closed
    }
}

#[cfg(test)]
mod tests;
