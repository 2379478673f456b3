//! A private PostgreSQL server (its own data directory and free port), for
//! tests that stop and restart the database under a running chat server;
//! the shared one at `TEST_POSTGRES_URL` serves every other test.
//!
//! It needs PostgreSQL's server programs (`initdb`, `pg_ctl`: on the `PATH`
//! or under /usr/lib/postgresql/*/bin). PostgreSQL refuses to run as root,
//! so as root they run as the `postgres` user (`runuser`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct PostgresServer {
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl PostgresServer {
    /// Creates a cluster (`initdb`, trust authentication) and starts it.
    pub fn start() -> Self {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("a temp dir");
        let data = dir.path().join("data");
        if as_root() {
            let chown = Command::new("chown")
                .arg("postgres:")
                .arg(dir.path())
                .status()
                .expect("chown runs");
            assert!(chown.success(), "chown postgres {}", dir.path().display());
        }
        let server = PostgresServer {
            port: super::free_port(),
            bin,
            data,
            _dir: dir,
        };
        server.run(
            "initdb",
            &[
                "-D",
                path(&server.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        server.up();
        server
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server and waits until it accepts queries.
    pub fn up(&self) {
        let socket_dir = self.data.parent().expect("the data dir's parent");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            socket_dir.display()
        );
        let log = self.data.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                path(&self.data),
                "-l",
                path(&log),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server at once, as a crash would: every backend killed, no
    /// checkpoint (the next start replays the write-ahead log).
    pub fn crash(&self) {
        self.run(
            "pg_ctl",
            &["-D", path(&self.data), "-m", "immediate", "-w", "stop"],
        );
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let program = self.bin.join(program);
        let mut command = if as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        let output = command
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{} runs: {e}", program.display()));
        assert!(
            output.status.success(),
            "{} {args:?}: {}{}",
            program.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // The attachments directory of the test servers on this database
        // (`attachments_dir`): a TestDatabase removes its own; this server
        // is a database of its own.
        if let Some(files) = super::attachments_dir(&self.url()) {
            let _ = std::fs::remove_dir_all(files);
        }
        let program = self.bin.join("pg_ctl");
        let args = ["-D", path(&self.data), "-m", "immediate", "stop"];
        let _ = if as_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&program)
                .args(args)
                .output()
        } else {
            Command::new(&program).args(args).output()
        };
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Where `initdb` and `pg_ctl` are: beside an `initdb` on the `PATH`, else
/// the newest /usr/lib/postgresql/<version>/bin (Debian keeps them there).
fn bin_dir() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("initdb"))
            .find(|initdb| initdb.is_file())
            .and_then(|initdb| std::fs::canonicalize(initdb).ok())
            .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
    });
    on_path
        .or_else(|| {
            let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
                .ok()?
                .filter_map(|entry| {
                    let entry = entry.ok()?;
                    let version = entry.file_name().to_str()?.parse().ok()?;
                    Some((version, entry.path().join("bin")))
                })
                .collect();
            versions.sort();
            versions.pop().map(|(_, bin)| bin)
        })
        .expect("PostgreSQL's server programs (initdb, pg_ctl) are installed")
}
