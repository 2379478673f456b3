//! `chat-server`: parse the command line, load the settings, run.

use clap::Parser;

use chat_server::cli::{self, Cli};
use chat_server::config::Settings;

/// Large allocations (argon2's 19 MiB work area) always come from `mmap`
/// and go back to the system when freed. glibc otherwise raises its mmap
/// threshold after the first such free and keeps later ones in its arenas:
/// after a burst of logins the process stayed gigabytes larger.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_large_allocations_to_the_system() {
    const MMAP_THRESHOLD_BYTES: libc::c_int = 1024 * 1024;
    // SAFETY: mallopt only changes allocator tuning; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_allocations_to_the_system() {}

fn main() {
    return_large_allocations_to_the_system();
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
