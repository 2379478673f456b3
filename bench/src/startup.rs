//! `startup`: time from process start to `/readyz` 200 on SQLite.

use std::time::{Duration, Instant};

use crate::{net, setup, BenchError};

/// The outcome of `bench startup`.
#[derive(Debug, serde::Serialize)]
pub struct StartupReport {
    pub runs: usize,
    pub min_ms: f64,
    pub median_ms: f64,
    pub max_ms: f64,
}

/// Starts `server` (the `chat-server` binary) `runs` times on a fresh SQLite
/// file and times each start to `/readyz` 200.
pub async fn startup(server: &std::path::Path, runs: usize) -> Result<StartupReport, BenchError> {
    let exe = server.to_path_buf();
    let client = net::client(None, Duration::from_secs(5));
    let mut times = Vec::new();
    for _ in 0..runs.max(1) {
        let dir = tempfile_dir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| setup("free port", e))?
            .port();
        let started = Instant::now();
        let mut child = std::process::Command::new(&exe)
            .current_dir(&dir)
            .env("PORT", port.to_string())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| setup("spawn", e))?;
        let url = format!("http://127.0.0.1:{port}/readyz");
        loop {
            if let Ok(res) = client.get(&url).send().await {
                if res.status().is_success() {
                    break;
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                return Err(setup("startup", "no /readyz 200 within 30 s"));
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
    }
    times.sort_by(f64::total_cmp);
    Ok(StartupReport {
        runs: times.len(),
        min_ms: times[0],
        median_ms: times[times.len() / 2],
        max_ms: times[times.len() - 1],
    })
}

fn tempfile_dir() -> Result<std::path::PathBuf, BenchError> {
    let dir = std::env::temp_dir().join(format!("chat-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).map_err(|e| setup("temp dir", e))?;
    Ok(dir)
}
