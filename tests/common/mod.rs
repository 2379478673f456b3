//! Test support: start the real server (from `lib.rs`, as the binary does)
//! on a free port against an empty database of each configured backend,
//! and talk to it over real HTTP and a real WebSocket.
//!
//! Backends: SQLite (a temp dir; a server's database starts as a copy of
//! one migrated once per test binary), PostgreSQL (`TEST_POSTGRES_URL`, a
//! schema per app) and MySQL/MariaDB (`TEST_MYSQL_URL`, a database per
//! app), each migrated, from a pool the tests share, emptied for the app
//! and given back with it (the migrations' own tests make fresh ones).
//! `backend_tests!` makes one test per
//! backend, so a failure names its backend; the server-database tests are
//! `#[ignore]`d, so a bare `cargo test` reports them as ignored, and
//! `cargo test -- --include-ignored` (what CI runs) fails them when their
//! service is not configured.
//!
//! `database.rs` makes the databases, `reused.rs` keeps the pool,
//! `app.rs` the servers on them,
//! `client.rs` the WebSocket clients that talk to them, `redis_server.rs`
//! the Redis they share, `fixtures.rs` rows written straight to a database;
//! what every test reaches for (the HTTP client, free ports, waiting for a
//! condition) is here.

#![allow(dead_code)]

// First: its `backend_tests!` is used by every test file.
#[macro_use]
mod database;
mod app;
mod client;
mod fixtures;
pub mod postgres_server;
pub mod redis_cluster;
mod redis_server;
mod reused;

pub use app::*;
pub use client::*;
pub use database::*;
pub use fixtures::*;
pub use redis_server::*;
pub use reused::{Held, Pool};

use std::sync::{Once, OnceLock};
use std::time::Duration;

/// The servers' warnings and errors (`RUST_LOG`, by default `warn`) into
/// the test's captured output, once per test process: a failing test
/// shows what its servers logged, an internal error's detail under the id
/// its client was answered with; a passing test shows nothing.
pub fn capture_logs() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        // Another subscriber already installed (none is today) keeps its place.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// How long a test waits for any one frame or response.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `recv_type` skips other frames while waiting for its kind.
pub const RECV_TYPE_TIMEOUT: Duration = Duration::from_secs(30);
pub const PASSWORD: &str = "correct horse battery";
/// PASSWORD as argon2id at the smallest cost (8 KiB, one pass), hashed once
/// per test process: the stored hash of every account `create_user` makes.
/// The server verifies a hash with the parameters it carries, so a login of
/// such an account costs microseconds instead of argon2's 20-40 ms at the
/// production cost, which was 7 % of the test run's CPU (docs/CI.md).
/// Sign-ups and password changes through the API, and the logins of unknown
/// usernames, still hash at the production cost, and the library's unit test
/// checks that cost.
pub fn cheap_hash() -> &'static str {
    use argon2::password_hash::{PasswordHasher, SaltString};
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let params = argon2::Params::new(8, 1, 1, None).expect("the smallest valid cost");
        let hasher =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = SaltString::encode_b64(b"test salt, 16 b").expect("16 bytes are a valid salt");
        hasher
            .hash_password(PASSWORD.as_bytes(), &salt)
            .expect("hashing with valid parameters cannot fail")
            .to_string()
    })
}

/// The token key of test servers (at least 32 bytes, as the server requires).
pub const TEST_SECRET: &str = "test-secret-test-secret-test-secret";

/// The tests' HTTP client. It reuses an idle connection for at most a
/// second. The server closes a connection idle for 5 s (actix-web's
/// keep-alive), and its HTTP/1 dispatcher looks at that timer before it
/// reads: a request that reaches a busy worker as the 5 s run out is
/// dropped unread, and the client sees `Connect(Disconnected)`. awc's
/// default (15 s) left that open to any test that pauses about 5 s between
/// two requests, as waiting for a 5 s revocation sweep does; CI met it once.
pub fn http_client() -> awc::Client {
    awc::Client::builder()
        .connector(awc::Connector::new().conn_keep_alive(Duration::from_secs(1)))
        .timeout(TIMEOUT)
        .finish()
}

/// A TCP port nobody listens on right now, for a server a test starts
/// (nginx, redis-server, the chat server as a process). Below the kernel's
/// ephemeral range (Linux: 32768 and up): a port the kernel picks (port 0)
/// is one it also gives outgoing connections, and another test's (to
/// PostgreSQL, Redis...) took one between this call and nginx's bind in a
/// CI run. Drawn at random, so tests running at once seldom try the same.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    let draw = RandomState::new();
    let mut attempt = 0u32;
    loop {
        let port = 20_000 + (draw.hash_one(attempt) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
        attempt += 1;
        assert!(attempt < 1_000, "no free port below 32000 in 1,000 draws");
    }
}

/// Opens a writer's gate (`commit_gate`) however the test ends, so a failed
/// assertion cannot leave a writer waiting (and the instance unable to
/// shut down).
pub struct ReleaseOnDrop(pub chat_server::chat::writer::commit_gate::Gate);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// How long `wait_until` waits: generous, for a loaded 2-core machine.
pub const CONDITION_DEADLINE: Duration = Duration::from_secs(20);

/// Polls `condition` until it holds; fails after `CONDITION_DEADLINE`.
pub async fn wait_until<F, Fut>(condition: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + CONDITION_DEADLINE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {CONDITION_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A randomized test's seed: `var` when set (to repeat a run), else from
/// the clock; printed, so a failing run can be repeated. Never zero.
pub fn seed(var: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        | 1;
    println!("seed {seed} ({var} repeats its choices)");
    seed
}
