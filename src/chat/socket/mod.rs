//! The WebSocket transport under a `WsSession`: incoming frames decoded from
//! the request payload (`incoming.rs`), outgoing frames through a bounded
//! queue (`Outbox`).
//!
//! Why not `actix_web_actors::ws::WebsocketContext`: its write buffer is
//! unbounded (a client that stops reading grows it without limit) and its
//! context stops polling timers while the client is not reading (actix-web
//! issue 2441), so heartbeats of a stuck client never fire. Here the session
//! is a plain actix actor, its heartbeat runs in its worker's timer task
//! (`timers.rs`) whatever the client does, and every frame to a client goes
//! through a queue of `OUTBOX_CAPACITY` with an explicit overflow policy: a
//! full queue closes the connection (1008) instead of growing memory.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_http::ws::{CloseCode, CloseReason, OpCode, Parser};
use actix_web::web::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use futures_util::Stream;
use prometheus_client::metrics::histogram::Histogram;

mod incoming;

pub use incoming::{frames, Incoming, TransportError};

/// What can be queued towards a client.
#[derive(Debug)]
enum Outgoing {
    /// A text frame holding one JSON document.
    Text(Bytes),
    Ping,
    Pong(Bytes),
    /// A close frame after everything queued before it; ends the stream.
    Close(CloseReason),
}

struct Shared {
    /// The frames waiting for the client. A `VecDeque` that starts empty and
    /// is given back once drained after a burst: an idle connection holds no
    /// queue at all (a channel's first block of slots was 1.8 KiB each).
    queue: Mutex<Queue>,
    /// Most frames queued; past it the client is a slow consumer.
    capacity: usize,
    /// Live `Outbox` handles: at zero the body ends (the session is gone).
    senders: AtomicUsize,
    /// Set by the first close, or when the body is gone: nothing more is
    /// queued after it.
    closing: AtomicBool,
    /// A close that must overtake the queue (the queue is full).
    urgent: Mutex<Option<CloseReason>>,
    /// Wakes the body: a frame queued, an urgent close, the last sender gone.
    waker: AtomicWaker,
    /// When the client was last heard from, in milliseconds since `epoch()`.
    heard: AtomicU64,
    /// Since when the queue's oldest frame has waited for the connection
    /// to write it, in microseconds since `epoch()`; 0 while it is empty.
    /// Read and written under the queue's lock.
    waiting_since: AtomicU64,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Outgoing>,
    /// The body is gone (the connection ended): nothing is queued any more.
    receiver_gone: bool,
}

/// A drained queue keeps at most this much room; more is given back.
const KEEP_QUEUE_ROOM: usize = 8;

impl Shared {
    fn heard(&self) {
        self.heard.store(millis_since_epoch(), Ordering::Relaxed);
    }
}

/// See [`Outbox::hearing`].
struct Hearing(Arc<Shared>);

impl Hearing {
    fn heard(&self) {
        self.0.heard();
    }
}

/// The origin of the `heard` times (an `Instant` does not fit in an atomic).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn millis_since_epoch() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Never 0, which `waiting_since` keeps for an empty queue.
fn micros_since_epoch() -> u64 {
    u64::try_from(epoch().elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The sending side of one connection: cheap to clone, safe to use from any
/// thread (the ChatServer and the store pipeline push into it directly).
pub struct Outbox {
    shared: Arc<Shared>,
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Outbox {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.waker.wake();
        }
    }
}

/// Why a frame was not queued.
enum Refused {
    Full,
    Closed,
}

/// Whether a frame was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    Yes,
    /// The queue was full: the connection is being closed as a slow consumer.
    Overflow,
    /// The connection is gone or closing.
    Closed,
}

impl Outbox {
    /// Queues a text frame. A full queue closes the connection (policy violation).
    pub fn send_text(&self, json: Bytes) -> Queued {
        self.push(std::iter::once(Outgoing::Text(json)))
    }

    /// Queues several text frames with one wake-up of the connection, so
    /// they go out together: all of them, or, when they do not fit, none,
    /// and the connection is closed as by `send_text`.
    pub fn send_texts(&self, frames: &[&Bytes]) -> Queued {
        self.push(frames.iter().map(|&frame| Outgoing::Text(frame.clone())))
    }

    /// How many frames the queue holds when the client reads nothing.
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Queues a heartbeat ping.
    pub fn send_ping(&self) -> Queued {
        self.push(std::iter::once(Outgoing::Ping))
    }

    /// Queues the answer to a client's ping.
    pub fn send_pong(&self, payload: Bytes) -> Queued {
        self.push(std::iter::once(Outgoing::Pong(payload)))
    }

    fn push(&self, items: impl ExactSizeIterator<Item = Outgoing>) -> Queued {
        // (A gone receiver is found under the queue's lock.)
        if self.shared.closing.load(Ordering::Acquire) {
            return Queued::Closed;
        }
        match self.enqueue(items) {
            Ok(()) => Queued::Yes,
            Err(Refused::Full) => {
                self.close_now(CloseCode::Policy, "slow consumer: outgoing queue full");
                Queued::Overflow
            }
            Err(Refused::Closed) => Queued::Closed,
        }
    }

    fn enqueue(&self, items: impl ExactSizeIterator<Item = Outgoing>) -> Result<(), Refused> {
        {
            let Ok(mut queue) = self.shared.queue.lock() else {
                return Err(Refused::Closed);
            };
            if queue.receiver_gone {
                return Err(Refused::Closed);
            }
            if queue.frames.len() + items.len() > self.shared.capacity {
                return Err(Refused::Full);
            }
            if queue.frames.is_empty() {
                let now = micros_since_epoch();
                self.shared.waiting_since.store(now, Ordering::Relaxed);
            }
            queue.frames.extend(items);
        }
        self.shared.waker.wake();
        Ok(())
    }

    /// Sends a close frame after the frames already queued, then ends the
    /// connection. Only the first close counts.
    pub fn close(&self, code: CloseCode, description: &str) {
        if self.shared.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        let reason = close_reason(code, description);
        if let Err(Refused::Full) = self.enqueue(std::iter::once(Outgoing::Close(reason))) {
            self.urgent_close(close_reason(code, description));
        }
    }

    /// Sends a close frame ahead of anything still queued (the client is not
    /// reading, so the queue would never drain).
    fn close_now(&self, code: CloseCode, description: &str) {
        self.shared.closing.store(true, Ordering::Release);
        self.urgent_close(close_reason(code, description));
    }

    fn urgent_close(&self, reason: CloseReason) {
        if let Ok(mut urgent) = self.shared.urgent.lock() {
            if urgent.is_none() {
                *urgent = Some(reason);
                self.shared.waker.wake();
            }
        }
    }

    /// Whether a close has been requested or the connection has ended.
    pub fn is_closing(&self) -> bool {
        self.shared.closing.load(Ordering::Acquire)
    }

    /// Records that something arrived from the client (the heartbeat's
    /// measure of silence).
    pub fn heard(&self) {
        self.shared.heard();
    }

    /// A handle that records only that, and is no sender: holding it does
    /// not keep the connection's body open.
    fn hearing(&self) -> Hearing {
        Hearing(self.shared.clone())
    }

    /// How long ago the client was last heard from.
    pub fn silent_for(&self) -> Duration {
        let heard = self.shared.heard.load(Ordering::Relaxed);
        Duration::from_millis(millis_since_epoch().saturating_sub(heard))
    }
}

fn close_reason(code: CloseCode, description: &str) -> CloseReason {
    CloseReason {
        code,
        description: (!description.is_empty()).then(|| description.to_string()),
    }
}

/// A ping with no payload, as `encode` writes it: FIN and the ping opcode,
/// then a length of 0 (RFC 6455, 5.2 and 5.5.2).
const PING_FRAME: &[u8] = &[0x89, 0x00];

/// Largest chunk of queued frames written to the socket in one go.
const WRITE_CHUNK_BYTES: usize = 64 * 1024;

/// A new outbox of `capacity` frames, and the byte stream that becomes the
/// HTTP response body of the upgraded connection. How long frames wait in
/// it for their write is observed into `waits` (`chat_outbox_wait_seconds`),
/// when given.
pub fn outbox(capacity: usize, waits: Option<Histogram>) -> (Outbox, Body) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue::default()),
        capacity: capacity.max(1),
        senders: AtomicUsize::new(1),
        closing: AtomicBool::new(false),
        urgent: Mutex::new(None),
        waker: AtomicWaker::new(),
        heard: AtomicU64::new(millis_since_epoch()),
        waiting_since: AtomicU64::new(0),
    });
    let body = Body {
        shared: shared.clone(),
        done: false,
        waits,
    };
    (Outbox { shared }, body)
}

/// The frames queued in an `Outbox`, encoded, as the response body of the
/// upgraded connection. Ends after the close frame.
pub struct Body {
    shared: Arc<Shared>,
    done: bool,
    waits: Option<Histogram>,
}

impl Drop for Body {
    fn drop(&mut self) {
        // Seen without the lock (the heartbeat asks every period); a push
        // that read `closing` before this finds `receiver_gone` under it.
        self.shared.closing.store(true, Ordering::Release);
        if let Ok(mut queue) = self.shared.queue.lock() {
            queue.receiver_gone = true;
            queue.frames = VecDeque::new();
        }
    }
}

impl Body {
    /// The frames taken from `queue` are being written: how long the
    /// oldest of them waited, into `waits`; what is left waits from now.
    fn written(&self, queue: &Queue) {
        let now = micros_since_epoch();
        let left = if queue.frames.is_empty() { 0 } else { now };
        let since = self.shared.waiting_since.swap(left, Ordering::Relaxed);
        if let (Some(waits), true) = (&self.waits, since > 0) {
            waits.observe(now.saturating_sub(since) as f64 / 1e6);
        }
    }

    /// A close that must overtake the queue, if one was asked for.
    fn take_urgent(&self) -> Option<CloseReason> {
        // Every urgent close sets `closing` first: no lock while open.
        if !self.shared.closing.load(Ordering::Acquire) {
            return None;
        }
        self.shared.urgent.lock().ok().and_then(|mut u| u.take())
    }
}

impl Stream for Body {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        this.shared.waker.register(cx.waker());
        let mut buf = BytesMut::new();
        if let Some(reason) = this.take_urgent() {
            Parser::write_close(&mut buf, Some(reason), false);
            this.done = true;
            return Poll::Ready(Some(Ok(buf.freeze())));
        }
        let Ok(mut queue) = this.shared.queue.lock() else {
            this.done = true;
            return Poll::Ready(None);
        };
        if queue.frames.is_empty() {
            if this.shared.senders.load(Ordering::Acquire) > 0 {
                return Poll::Pending;
            }
            // Every sender is gone: the session ended without a close.
            queue
                .frames
                .push_back(Outgoing::Close(CloseCode::Away.into()));
        }
        // The heartbeat's ping alone, as an idle connection's writes nearly
        // all are, needs no buffer of its own.
        if queue.frames.len() == 1 && matches!(queue.frames.front(), Some(Outgoing::Ping)) {
            queue.frames.clear();
            this.written(&queue);
            return Poll::Ready(Some(Ok(Bytes::from_static(PING_FRAME))));
        }
        // Coalesce whatever is queued into one write, in a buffer sized for
        // it at once (grown frame by frame it was reallocated several times).
        buf.reserve(chunk_len(&queue.frames));
        while let Some(item) = queue.frames.pop_front() {
            if encode(&mut buf, item) {
                this.done = true;
                break;
            }
            if buf.len() >= WRITE_CHUNK_BYTES {
                break;
            }
        }
        this.written(&queue);
        if queue.frames.is_empty() && queue.frames.capacity() > KEEP_QUEUE_ROOM {
            queue.frames = VecDeque::new();
        }
        Poll::Ready(Some(Ok(buf.freeze())))
    }
}

/// The bytes of the frames at the front of `frames` that one write takes
/// (up to `WRITE_CHUNK_BYTES` and the frame that crosses it), headers
/// included.
fn chunk_len(frames: &VecDeque<Outgoing>) -> usize {
    let mut total = 0;
    for item in frames {
        // A server's frame header is 2 bytes, plus 2 or 8 for the length.
        total += match item {
            Outgoing::Text(json) => json.len() + 10,
            Outgoing::Ping => 2,
            Outgoing::Pong(payload) => payload.len() + 2,
            // Code and a reason of at most 123 bytes (RFC 6455, 5.5).
            Outgoing::Close(_) => 2 + 125,
        };
        if total >= WRITE_CHUNK_BYTES {
            break;
        }
    }
    total
}

/// Appends one frame; true when it was the close that ends the stream.
fn encode(buf: &mut BytesMut, item: Outgoing) -> bool {
    match item {
        Outgoing::Text(json) => Parser::write_message(buf, json, OpCode::Text, true, false),
        Outgoing::Ping => Parser::write_message(buf, b"", OpCode::Ping, true, false),
        Outgoing::Pong(p) => Parser::write_message(buf, p, OpCode::Pong, true, false),
        Outgoing::Close(reason) => {
            Parser::write_close(buf, Some(reason), false);
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{FutureExt, StreamExt};

    #[test]
    fn frames_queued_together_go_out_in_one_write_or_not_at_all() {
        let (outbox, mut body) = outbox(3, None);
        let a = Bytes::from_static(br#"{"a":1}"#);
        let b = Bytes::from_static(br#"{"b":2}"#);
        assert_eq!(outbox.send_texts(&[&a, &b]), Queued::Yes);
        let written = body.next().now_or_never().flatten().map(Result::unwrap);
        let mut expected = BytesMut::new();
        encode(&mut expected, Outgoing::Text(a.clone()));
        encode(&mut expected, Outgoing::Text(b.clone()));
        assert_eq!(written, Some(expected.freeze()));
        // Two queued of three: two more do not fit, and neither is queued.
        assert_eq!(outbox.send_texts(&[&a, &b]), Queued::Yes);
        assert_eq!(outbox.send_texts(&[&a, &b]), Queued::Overflow);
        assert_eq!(outbox.shared.queue.lock().unwrap().frames.len(), 2);
    }

    #[test]
    fn a_ping_alone_is_the_frame_encode_writes() {
        let (outbox, mut body) = outbox(3, None);
        assert_eq!(outbox.send_ping(), Queued::Yes);
        let written = body.next().now_or_never().flatten().map(Result::unwrap);
        let mut expected = BytesMut::new();
        encode(&mut expected, Outgoing::Ping);
        assert_eq!(written.as_deref(), Some(&expected[..]));
        assert_eq!(written.as_deref(), Some(PING_FRAME));
        // Behind a text, the ping goes in the same write.
        let a = Bytes::from_static(br#"{"a":1}"#);
        assert_eq!(outbox.send_texts(&[&a]), Queued::Yes);
        assert_eq!(outbox.send_ping(), Queued::Yes);
        let written = body.next().now_or_never().flatten().map(Result::unwrap);
        let mut both = BytesMut::new();
        encode(&mut both, Outgoing::Text(a));
        encode(&mut both, Outgoing::Ping);
        assert_eq!(written.as_deref(), Some(&both[..]));
    }

    #[test]
    fn a_write_observes_how_long_its_oldest_frame_waited() {
        use crate::metrics::{Metrics, ServerCounts};
        let metrics = Metrics::default();
        let (outbox, mut body) = outbox(8, Some(metrics.outbox_waits()));
        let observed = || {
            let text = metrics.render(ServerCounts::default());
            let value = |name: &str| {
                let line = text.lines().find(|l| l.starts_with(name));
                line.and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            };
            (
                value("chat_outbox_wait_seconds_count").unwrap_or(-1.0),
                value("chat_outbox_wait_seconds_sum").unwrap_or(-1.0),
            )
        };
        // An empty queue's poll writes nothing and observes nothing.
        assert!(body.next().now_or_never().is_none());
        assert_eq!(observed(), (0.0, 0.0));
        let a = Bytes::from_static(br#"{"a":1}"#);
        let queued = Instant::now();
        assert_eq!(outbox.send_texts(&[&a]), Queued::Yes);
        // Queued behind the first: the same write, one observation.
        assert_eq!(outbox.send_ping(), Queued::Yes);
        assert!(body.next().now_or_never().flatten().is_some());
        let at_most = queued.elapsed().as_secs_f64();
        let (count, sum) = observed();
        assert_eq!(count, 1.0);
        assert!(
            sum <= at_most + 1e-6,
            "{sum} s observed, {at_most} s at most"
        );
        // The queue was emptied: the next frame waits from its own push.
        let queued = Instant::now();
        assert_eq!(outbox.send_ping(), Queued::Yes);
        assert!(body.next().now_or_never().flatten().is_some());
        let (count, second) = observed();
        assert_eq!(count, 2.0);
        let at_most = queued.elapsed().as_secs_f64();
        assert!(
            second - sum <= at_most + 1e-6,
            "{} s observed",
            second - sum
        );
    }

    #[test]
    fn a_chunk_is_sized_for_its_frames_at_once() {
        let text = |n: usize| Outgoing::Text(Bytes::from(vec![b'x'; n]));
        let reason = close_reason(CloseCode::Policy, &"r".repeat(120));
        let frames: VecDeque<Outgoing> = VecDeque::from([
            text(10),
            text(200),
            Outgoing::Ping,
            Outgoing::Pong(Bytes::from_static(b"pong")),
            text(70_000),
            Outgoing::Close(reason),
        ]);
        let room = chunk_len(&frames);
        // What `poll_next` writes: up to and with the frame that crosses
        // the chunk's size (the text of 70,000 bytes here).
        let mut buf = BytesMut::new();
        for item in frames {
            let crossed = buf.len() >= WRITE_CHUNK_BYTES;
            if crossed || encode(&mut buf, item) {
                break;
            }
        }
        assert!(buf.len() > WRITE_CHUNK_BYTES);
        assert!(room >= buf.len(), "{room} < {}", buf.len());
        assert!(
            room < buf.len() + 64,
            "{room} reserves far more than {}",
            buf.len()
        );

        let reason = close_reason(CloseCode::Policy, &"r".repeat(123));
        let mut buf = BytesMut::new();
        encode(&mut buf, Outgoing::Close(reason.clone()));
        assert!(chunk_len(&VecDeque::from([Outgoing::Close(reason)])) >= buf.len());
    }
}
