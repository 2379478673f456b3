//! Redis for tests: the shared one with a key prefix per test, and a
//! private `redis-server` for tests that stop and restart it.

use std::time::Duration;

use super::*;

/// The shared Redis of the environment (`TEST_REDIS_URL`), if any.
pub fn redis_url() -> Option<String> {
    std::env::var("TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// The shared Redis, for a test that cannot run without it.
pub fn require_redis_url() -> String {
    required_env("TEST_REDIS_URL", "Redis")
}

/// A key prefix of its own, so concurrent tests sharing one Redis never meet.
pub fn redis_prefix() -> String {
    format!("test{}", uuid::Uuid::new_v4().simple())
}

/// The keys one test's servers wrote to a shared Redis, deleted on drop.
pub struct RedisKeys {
    url: String,
    prefix: String,
}

impl RedisKeys {
    pub fn new(url: &str, prefix: &str) -> Self {
        RedisKeys {
            url: url.to_string(),
            prefix: prefix.to_string(),
        }
    }
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let (url, pattern) = (self.url.clone(), format!("{}:*", self.prefix));
        // Drop runs inside the test's runtime: a plain connection on a thread.
        let _ = std::thread::spawn(move || {
            let Ok(mut conn) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection())
            else {
                return;
            };
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query(&mut conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
            }
        })
        .join();
    }
}

/// A private `redis-server` on a free port, for tests that stop and restart Redis.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts one; a test that needs it fails when `redis-server` cannot run.
    pub fn start() -> Self {
        let mut server = RedisServer {
            port: free_port(),
            child: None,
        };
        assert!(
            server.restart(),
            "redis-server did not start (is it installed?)"
        );
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// (Re)starts the server on its port and waits until it accepts connections.
    pub fn restart(&mut self) -> bool {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let Ok(child) = child else {
            return false;
        };
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
