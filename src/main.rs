//! `chat-server`: parse the command line, load the settings, run.

use clap::Parser;

use chat_server::cli::{self, Cli};
use chat_server::config::Settings;
use chat_server::db::sqlite_memory::{self, Outcome};

/// mimalloc, not glibc's malloc: a frame is built on one thread (the
/// ChatServer's, the writer's) and freed on another (the session's worker),
/// and each such free took a glibc arena's lock; mimalloc frees into the
/// owning thread's page without one (BENCHMARKS.md "The allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h`; libmimalloc-sys names
/// only some options): how long freed memory stays committed before it is
/// given back to the system.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the system 10 ms after it is freed, not
/// mimalloc 3's 1 s: argon2's 19 MiB work areas, one per core while users
/// log in, would otherwise stay resident until the allocator next looks (the
/// idle server 20 MB larger after a burst of logins). `MIMALLOC_PURGE_DELAY`
/// in the environment still decides, as mimalloc documents.
fn return_freed_memory_promptly() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: sets one integer option; called first in `main`, before any
    // other thread exists (mimalloc's options are not synchronised).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10) };
}

fn main() {
    return_freed_memory_promptly();
    // Before any thread or SQLite connection exists (its doc says why).
    if let Outcome::TooLate(code) = sqlite_memory::use_mimalloc() {
        eprintln!("chat-server: SQLite kept its own allocator (sqlite3_config: {code})");
    }
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let unknown = e.kind() == clap::error::ErrorKind::UnknownArgument;
        let _ = e.print();
        if unknown {
            eprintln!(
                "\nchat-server takes its configuration from environment variables, not \
                 options: for example `PORT=9000 chat-server` (.env.example lists them all)."
            );
        }
        std::process::exit(e.exit_code());
    });
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("chat-server: {e}");
            std::process::exit(2);
        }
    };
    let outcome = actix_web::rt::System::new().block_on(cli::run(cli, settings));
    if let Err(e) = outcome {
        eprintln!("chat-server: {e}");
        std::process::exit(e.exit_code());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // mimalloc 3's default for `purge_delay` is 1000 ms, and no other
        // option's is: this index names it.
        // SAFETY: reads and sets one integer option; no other test does.
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) },
            1000
        );
        return_freed_memory_promptly();
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) },
            10
        );
    }
}
