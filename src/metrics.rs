//! Counters for `GET /metrics` (Prometheus text format). Updating one is an
//! atomic add, cheap enough for every frame.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Upper bounds (seconds) of the store-latency histogram buckets.
const STORE_BUCKETS: [f64; 10] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0];

#[derive(Default)]
struct Inner {
    connections: AtomicU64,
    sessions: AtomicU64,
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    bad_frames: AtomicU64,
    messages_stored: AtomicU64,
    store_batches: AtomicU64,
    store_bucket_counts: [AtomicU64; STORE_BUCKETS.len()],
    store_seconds_micros: AtomicU64,
    outbox_overflows: AtomicU64,
    rate_limited: AtomicU64,
    redis_up: AtomicU64,
    redis_reconnects: AtomicU64,
}

/// Shared counters of one server instance.
#[derive(Clone, Default)]
pub struct Metrics(Arc<Inner>);

impl Metrics {
    pub fn connection_opened(&self) {
        self.0.connections.fetch_add(1, Relaxed);
    }
    pub fn connection_closed(&self) {
        self.0.connections.fetch_sub(1, Relaxed);
    }
    pub fn session_authorized(&self) {
        self.0.sessions.fetch_add(1, Relaxed);
    }
    pub fn session_ended(&self) {
        self.0.sessions.fetch_sub(1, Relaxed);
    }
    pub fn frame_in(&self) {
        self.0.frames_in.fetch_add(1, Relaxed);
    }
    pub fn frames_out(&self, n: u64) {
        self.0.frames_out.fetch_add(n, Relaxed);
    }
    pub fn bad_frame(&self) {
        self.0.bad_frames.fetch_add(1, Relaxed);
    }
    pub fn outbox_overflow(&self) {
        self.0.outbox_overflows.fetch_add(1, Relaxed);
    }
    pub fn rate_limited(&self) {
        self.0.rate_limited.fetch_add(1, Relaxed);
    }
    pub fn redis_state(&self, up: bool) {
        self.0.redis_up.store(up as u64, Relaxed);
    }
    pub fn redis_reconnect(&self) {
        self.0.redis_reconnects.fetch_add(1, Relaxed);
    }

    /// One committed batch of `count` messages that took `elapsed`.
    pub fn record_store_batch(&self, count: usize, elapsed: Duration) {
        let i = &self.0;
        i.messages_stored.fetch_add(count as u64, Relaxed);
        i.store_batches.fetch_add(1, Relaxed);
        i.store_seconds_micros
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
        let secs = elapsed.as_secs_f64();
        if let Some(b) = STORE_BUCKETS.iter().position(|&le| secs <= le) {
            i.store_bucket_counts[b].fetch_add(1, Relaxed);
        }
    }

    /// The Prometheus exposition text; `extra` adds gauges known elsewhere.
    pub fn render(&self, extra: &[(&str, &str, f64)]) -> String {
        let i = &self.0;
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "chat_connections",
            "gauge",
            "Open WebSocket connections.",
            i.connections.load(Relaxed) as f64,
        );
        metric(
            "chat_sessions_authorized",
            "gauge",
            "Authorized WebSocket sessions.",
            i.sessions.load(Relaxed) as f64,
        );
        metric(
            "chat_frames_in_total",
            "counter",
            "Frames received from clients.",
            i.frames_in.load(Relaxed) as f64,
        );
        metric(
            "chat_frames_out_total",
            "counter",
            "Frames queued to clients.",
            i.frames_out.load(Relaxed) as f64,
        );
        metric(
            "chat_bad_frames_total",
            "counter",
            "Frames answered with an error frame.",
            i.bad_frames.load(Relaxed) as f64,
        );
        metric(
            "chat_messages_stored_total",
            "counter",
            "Messages committed.",
            i.messages_stored.load(Relaxed) as f64,
        );
        metric(
            "chat_outbox_overflows_total",
            "counter",
            "Connections closed because the client did not read.",
            i.outbox_overflows.load(Relaxed) as f64,
        );
        metric(
            "chat_rate_limited_total",
            "counter",
            "Requests refused by the per-session rate limit.",
            i.rate_limited.load(Relaxed) as f64,
        );
        metric(
            "chat_redis_up",
            "gauge",
            "1 when the Redis bridge is connected.",
            i.redis_up.load(Relaxed) as f64,
        );
        metric(
            "chat_redis_reconnects_total",
            "counter",
            "Redis bridge reconnections.",
            i.redis_reconnects.load(Relaxed) as f64,
        );
        for (name, help, value) in extra {
            metric(name, "gauge", help, *value);
        }
        let _ = writeln!(out, "# HELP chat_store_batch_seconds Time to commit one batch of messages.\n# TYPE chat_store_batch_seconds histogram");
        let mut cumulative = 0;
        for (b, le) in STORE_BUCKETS.iter().enumerate() {
            cumulative += i.store_bucket_counts[b].load(Relaxed);
            let _ = writeln!(
                out,
                "chat_store_batch_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let batches = i.store_batches.load(Relaxed);
        let _ = writeln!(
            out,
            "chat_store_batch_seconds_bucket{{le=\"+Inf\"}} {batches}"
        );
        let _ = writeln!(
            out,
            "chat_store_batch_seconds_sum {}",
            i.store_seconds_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "chat_store_batch_seconds_count {batches}");
        out
    }
}
