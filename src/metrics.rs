//! What `GET /metrics` reports, through the Prometheus project's own client
//! (`prometheus-client`): counters, gauges, labelled families and
//! histograms, encoded in the OpenMetrics text format. Updating one is an
//! atomic add (a family adds a read-locked lookup of its label set), cheap
//! enough for every frame.
//!
//! The names of the first version are kept (docs/METRICS.md): what was a
//! plain counter of frames in is now labelled by request type, and errors,
//! batch sizes and the send-to-delivery time are new.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the store-latency histogram buckets.
const STORE_BUCKETS: [f64; 10] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0];

/// The label set of a family with one label whose values are fixed names.
type Label = [(&'static str, &'static str); 1];

/// The latency histograms' buckets: 0.25 ms … 2 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00025, 2.0, 14))
}

/// The `type` of a text frame that is not a request this server knows.
pub const UNPARSED: &str = "unparsed";

struct Inner {
    registry: Registry,
    connections: Gauge,
    sessions: Gauge,
    frames_in: Family<Label, Counter>,
    frames_out: Counter,
    bad_frames: Counter,
    errors: Family<Label, Counter>,
    messages_stored: Counter,
    changes_stored: Counter,
    store_seconds: Histogram,
    store_batch_size: Histogram,
    store_batch_retries: Counter,
    store_plain_fallbacks: Counter,
    send_to_delivery: Histogram,
    outbox_waits: Histogram,
    request_seconds: Family<Label, Histogram, fn() -> Histogram>,
    outbox_overflows: Counter,
    holes_filled: Counter,
    rate_limited: Counter,
    redis_up: Gauge,
    redis_reconnects: Counter,
    server_users: Gauge,
    server_sessions: Gauge,
    roster_ids: Gauge,
}

impl Default for Inner {
    /// Registers every metric. (Long on purpose: one registration per
    /// metric, with its help text, in the order `/metrics` lists them.)
    fn default() -> Self {
        let mut inner = Inner {
            registry: Registry::default(),
            connections: Gauge::default(),
            sessions: Gauge::default(),
            frames_in: Family::default(),
            frames_out: Counter::default(),
            bad_frames: Counter::default(),
            errors: Family::default(),
            messages_stored: Counter::default(),
            changes_stored: Counter::default(),
            store_seconds: Histogram::new(STORE_BUCKETS),
            // 1, 2, 4, … 1024 messages.
            store_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            store_batch_retries: Counter::default(),
            store_plain_fallbacks: Counter::default(),
            send_to_delivery: latency_histogram(),
            outbox_waits: latency_histogram(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            outbox_overflows: Counter::default(),
            holes_filled: Counter::default(),
            rate_limited: Counter::default(),
            redis_up: Gauge::default(),
            redis_reconnects: Counter::default(),
            server_users: Gauge::default(),
            server_sessions: Gauge::default(),
            roster_ids: Gauge::default(),
        };
        // prometheus-client ends each help text with a period itself.
        let r = &mut inner.registry;
        r.register(
            "chat_connections",
            "Open WebSocket connections",
            inner.connections.clone(),
        );
        r.register(
            "chat_sessions_authorized",
            "Authorized WebSocket sessions",
            inner.sessions.clone(),
        );
        r.register(
            "chat_frames_in",
            "Text frames received from clients, by request type (`unparsed`: not a request)",
            inner.frames_in.clone(),
        );
        r.register(
            "chat_frames_out",
            "Frames queued to clients",
            inner.frames_out.clone(),
        );
        r.register(
            "chat_bad_frames",
            "Frames answered with an error frame",
            inner.bad_frames.clone(),
        );
        r.register(
            "chat_errors",
            "Error replies to requests, by B3 code",
            inner.errors.clone(),
        );
        r.register(
            "chat_messages_stored",
            "Messages committed",
            inner.messages_stored.clone(),
        );
        r.register(
            "chat_message_changes_stored",
            "Edits, deletions and reaction changes committed (B8), or found already so",
            inner.changes_stored.clone(),
        );
        r.register(
            "chat_store_batch_seconds",
            "Time to commit one batch of messages",
            inner.store_seconds.clone(),
        );
        r.register(
            "chat_store_batch_size",
            "Writes (messages, edits, deletions, reactions) per committed batch",
            inner.store_batch_size.clone(),
        );
        r.register(
            "chat_store_batch_retries",
            "Batches whose insert failed and were retried one message at a time",
            inner.store_batch_retries.clone(),
        );
        r.register(
            "chat_store_plain_fallbacks",
            "SQLite batches of plain messages that the one-trip path did not store \
             (a resend among them, say), stored by the general path",
            inner.store_plain_fallbacks.clone(),
        );
        r.register(
            "chat_send_to_delivery_seconds",
            "From a message frame's arrival to its push handed to the recipients' \
             sessions here and to the bus, after its commit",
            inner.send_to_delivery.clone(),
        );
        r.register(
            "chat_outbox_wait_seconds",
            "From a frame queued for a connection to its write, when the queue was \
             empty before it: how long the connection's worker took to get to it",
            inner.outbox_waits.clone(),
        );
        r.register(
            "chat_request_seconds",
            "From a request's handling to its answer, for the requests the database \
             answers (`get_contacts`, `get_messages`, `sync`, `search`, …), by request type",
            inner.request_seconds.clone(),
        );
        r.register(
            "chat_outbox_overflows",
            "Connections closed because the client did not read",
            inner.outbox_overflows.clone(),
        );
        r.register(
            "chat_holes_filled",
            "Holes in a conversation's live events loaded from the database \
             because the bus did not bring them in time (B7)",
            inner.holes_filled.clone(),
        );
        r.register(
            "chat_rate_limited",
            "Requests refused by the per-session rate limit",
            inner.rate_limited.clone(),
        );
        r.register(
            "chat_redis_up",
            "1 when the Redis bridge is connected",
            inner.redis_up.clone(),
        );
        r.register(
            "chat_redis_reconnects",
            "Redis bridge reconnections",
            inner.redis_reconnects.clone(),
        );
        r.register(
            "chat_server_users",
            "Users with a session registered in the ChatServer",
            inner.server_users.clone(),
        );
        r.register(
            "chat_server_sessions",
            "Sessions registered in the ChatServer",
            inner.server_sessions.clone(),
        );
        r.register(
            "chat_contact_roster_ids",
            "Group member ids kept between contact lists",
            inner.roster_ids.clone(),
        );
        inner
    }
}

/// The metrics of one server instance.
#[derive(Clone, Default)]
pub struct Metrics(Arc<Inner>);

/// What the ChatServer counts, and the contact lists' kept rosters, read
/// at each scrape.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerCounts {
    pub users: usize,
    pub sessions: usize,
    /// Group member ids kept (`store::Rosters`).
    pub roster_ids: usize,
}

impl Metrics {
    pub fn connection_opened(&self) {
        self.0.connections.inc();
    }
    pub fn connection_closed(&self) {
        self.0.connections.dec();
    }
    pub fn session_authorized(&self) {
        self.0.sessions.inc();
    }
    pub fn session_ended(&self) {
        self.0.sessions.dec();
    }
    /// A text frame of request type `kind` (its wire name, or `UNPARSED`).
    pub fn frame_in(&self, kind: &'static str) {
        self.0.frames_in.get_or_create(&[("type", kind)]).inc();
    }
    pub fn frames_out(&self, n: u64) {
        self.0.frames_out.inc_by(n);
    }
    /// A frame answered with an error frame: a request's error reply has a
    /// B3 `code`; an unparsable frame has none.
    pub fn bad_frame(&self, code: Option<&'static str>) {
        self.0.bad_frames.inc();
        if let Some(code) = code {
            self.0.errors.get_or_create(&[("code", code)]).inc();
        }
    }
    pub fn outbox_overflow(&self) {
        self.0.outbox_overflows.inc();
    }
    /// A room's event stream had a hole the bus did not fill in time (B7).
    pub fn hole_filled(&self) {
        self.0.holes_filled.inc();
    }
    pub fn rate_limited(&self) {
        self.0.rate_limited.inc();
    }
    pub fn redis_state(&self, up: bool) {
        self.0.redis_up.set(i64::from(up));
    }
    pub fn redis_reconnect(&self) {
        self.0.redis_reconnects.inc();
    }

    /// One committed batch of `count` jobs, of which `messages` new
    /// messages and `changes` changes to messages (B8) were committed (the
    /// rest: resends and refusals), that took `elapsed`.
    pub fn record_store_batch(
        &self,
        count: usize,
        messages: usize,
        changes: usize,
        elapsed: Duration,
    ) {
        self.0.messages_stored.inc_by(messages as u64);
        self.0.changes_stored.inc_by(changes as u64);
        self.0.store_seconds.observe(elapsed.as_secs_f64());
        self.0.store_batch_size.observe(count as f64);
    }

    /// A batch insert failed and its messages were stored one at a time.
    pub fn batch_retried(&self) {
        self.0.store_batch_retries.inc();
    }

    /// A batch of plain messages left the one-trip path for the general one.
    pub fn plain_fell_back(&self) {
        self.0.store_plain_fallbacks.inc();
    }

    /// Where a connection's outbox observes how long its frames wait for
    /// their write (`socket::outbox`).
    pub fn outbox_waits(&self) -> Histogram {
        self.0.outbox_waits.clone()
    }

    /// A stored message handed on for delivery, `elapsed` after its frame arrived.
    pub fn message_delivered(&self, elapsed: Duration) {
        self.0.send_to_delivery.observe(elapsed.as_secs_f64());
    }

    /// A request of type `kind` (its wire name) answered from the
    /// database, `elapsed` after its handling began.
    pub fn request_answered(&self, kind: &'static str, elapsed: Duration) {
        self.0
            .request_seconds
            .get_or_create(&[("type", kind)])
            .observe(elapsed.as_secs_f64());
    }

    /// The OpenMetrics text of every metric, with the ChatServer's `counts`.
    pub fn render(&self, counts: ServerCounts) -> String {
        let i = &self.0;
        i.server_users.set(counts.users as i64);
        i.server_sessions.set(counts.sessions as i64);
        i.roster_ids.set(counts.roster_ids as i64);
        let mut out = String::new();
        encode(&mut out, &i.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_histograms() {
        let m = Metrics::default();
        m.connection_opened();
        m.frame_in("message");
        m.frame_in("message");
        m.frame_in(UNPARSED);
        m.bad_frame(Some("not_found"));
        m.bad_frame(None);
        m.record_store_batch(4, 3, 1, Duration::from_millis(3));
        m.message_delivered(Duration::from_millis(1));
        m.outbox_waits().observe(0.0003);
        m.request_answered("sync", Duration::from_micros(700));
        m.redis_state(true);
        let text = m.render(ServerCounts {
            users: 2,
            sessions: 5,
            roster_ids: 7,
        });
        for line in [
            "# TYPE chat_connections gauge",
            "chat_connections 1",
            "chat_frames_in_total{type=\"message\"} 2",
            "chat_frames_in_total{type=\"unparsed\"} 1",
            "chat_bad_frames_total 2",
            "chat_errors_total{code=\"not_found\"} 1",
            "chat_messages_stored_total 3",
            "chat_message_changes_stored_total 1",
            "chat_store_batch_seconds_count 1",
            "chat_store_batch_seconds_bucket{le=\"0.005\"} 1",
            "chat_store_batch_seconds_bucket{le=\"0.002\"} 0",
            "chat_store_batch_size_bucket{le=\"4.0\"} 1",
            "chat_send_to_delivery_seconds_count 1",
            "chat_outbox_wait_seconds_count 1",
            "chat_outbox_wait_seconds_bucket{le=\"0.0005\"} 1",
            "chat_outbox_wait_seconds_bucket{le=\"0.00025\"} 0",
            "chat_request_seconds_count{type=\"sync\"} 1",
            "chat_request_seconds_bucket{le=\"0.001\",type=\"sync\"} 1",
            "chat_request_seconds_bucket{le=\"0.0005\",type=\"sync\"} 0",
            "chat_redis_up 1",
            "chat_server_users 2",
            "chat_server_sessions 5",
            "chat_contact_roster_ids 7",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
        }
        // The client ends each help text with a period of its own.
        assert!(text
            .lines()
            .any(|l| l == "# HELP chat_connections Open WebSocket connections."));
        let helps = text.lines().filter(|l| l.starts_with("# HELP "));
        assert!(helps.clone().count() >= 20, "{text}");
        for help in helps {
            assert!(help.ends_with('.') && !help.ends_with(".."), "{help:?}");
        }
    }
}
