//! The tests' WebSocket clients: a well-behaved one that speaks the
//! protocol's frames, a raw one for frames no client library sends, and
//! the barriers that prove nothing else arrived.

use std::time::Duration;

use actix_http::ws;
use awc::BoxedSocket;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use super::*;

/// A WebSocket to `path` on `port` (a server, or a proxy in front of some).
pub async fn ws_at(http: &awc::Client, port: u16, path: &str) -> WsClient {
    let url = format!("ws://127.0.0.1:{port}{path}");
    let (_, framed) = tokio::time::timeout(TIMEOUT, http.ws(url).max_frame_size(1 << 20).connect())
        .await
        .expect("ws connect timed out")
        .expect("ws connect");
    WsClient { framed }
}

/// A WebSocket on `port` that has read the `info` frame and authorized with `token`.
pub async fn authorized_at(http: &awc::Client, port: u16, token: &str) -> WsClient {
    let mut ws = ws_at(http, port, "/chat").await;
    assert_eq!(
        ws.recv().await,
        json!({"type": "info", "data": "Waiting user token..."})
    );
    ws.send(json!({"type": "authorization", "data": {"token": token}}))
        .await;
    assert_eq!(
        ws.recv().await,
        json!({"type": "authorization_response", "data": {"status": "success"}})
    );
    ws
}

/// What came out of the socket when a test expected a frame.
#[derive(Debug)]
pub enum Event {
    Json(Value),
    Close(Option<ws::CloseReason>),
    /// Nothing within the wait.
    Silence,
    /// The connection ended without a close frame.
    Ended,
}

/// A real WebSocket client.
pub struct WsClient {
    framed: actix_codec::Framed<BoxedSocket, ws::Codec>,
}

impl WsClient {
    pub async fn send(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_message(ws::Message::Text(text.to_string().into()))
            .await;
    }

    /// Sends one frame; fails if the server has not taken it within
    /// `TIMEOUT` (a server that stopped reading fills the socket's buffers).
    pub async fn send_message(&mut self, message: ws::Message) {
        tokio::time::timeout(TIMEOUT, self.framed.send(message))
            .await
            .expect("the server takes the frame within TIMEOUT")
            .expect("send frame");
    }

    /// The next event within `wait`, answering pings and skipping pongs.
    pub async fn next_event(&mut self, wait: Duration) -> Event {
        self.next_event_with(wait, true).await
    }

    /// The next event within `wait`, leaving the server's pings unanswered
    /// (a client that reads but is otherwise dead).
    pub async fn next_event_unanswered(&mut self, wait: Duration) -> Event {
        self.next_event_with(wait, false).await
    }

    async fn next_event_with(&mut self, wait: Duration, answer_pings: bool) -> Event {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.framed.next()).await {
                Err(_) => return Event::Silence,
                Ok(None) => return Event::Ended,
                Ok(Some(Err(_))) => return Event::Ended,
                Ok(Some(Ok(frame))) => frame,
            };
            match frame {
                ws::Frame::Text(bytes) => {
                    return Event::Json(
                        serde_json::from_slice(&bytes).expect("server sends JSON text frames"),
                    )
                }
                ws::Frame::Ping(p) if answer_pings => {
                    let _ = self.framed.send(ws::Message::Pong(p)).await;
                }
                ws::Frame::Ping(_) => {}
                ws::Frame::Pong(_) => {}
                ws::Frame::Close(reason) => return Event::Close(reason),
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Answers the server's next `n` pings (B5), failing on any other frame.
    pub async fn answer_pings(&mut self, n: usize) {
        for _ in 0..n {
            match tokio::time::timeout(TIMEOUT, self.framed.next()).await {
                Ok(Some(Ok(ws::Frame::Ping(p)))) => {
                    self.framed
                        .send(ws::Message::Pong(p))
                        .await
                        .expect("send pong");
                }
                other => panic!("expected a ping, got {other:?}"),
            }
        }
    }

    /// The next JSON frame (fails on anything else).
    pub async fn recv(&mut self) -> Value {
        match self.next_event(TIMEOUT).await {
            Event::Json(v) => v,
            other => panic!("expected a JSON frame, got {other:?}"),
        }
    }

    /// The next frame of `kind`, skipping others (presence, typing, …);
    /// fails if none comes within `RECV_TYPE_TIMEOUT`, however many others
    /// keep coming (a stream of messages must not hide a missing answer).
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        let deadline = tokio::time::Instant::now() + RECV_TYPE_TIMEOUT;
        let mut skipped = 0usize;
        loop {
            let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = match self.next_event(wait).await {
                Event::Json(v) => v,
                other => panic!("expected a {kind} frame (after {skipped} others), got {other:?}"),
            };
            if frame["type"] == kind {
                return frame;
            }
            skipped += 1;
        }
    }

    /// A barrier for "nothing was pushed here": sends a ping and asserts the
    /// very next frame is its pong. Valid once the event that must not reach
    /// this socket has been seen reaching another socket of the same
    /// instance: the ChatServer pushes one event to every session of a room
    /// in one step, so a wrong frame would already stand before the pong.
    pub async fn nothing_before_pong(&mut self) {
        assert_eq!(
            self.request(json!({"type": "ping", "data": {}})).await,
            json!({"type": "pong", "data": {}})
        );
    }

    /// Reads this session's next frames until it has heard the `read`
    /// pushes (B4) of `readers` in conversation `pk` at `up_to`, each once,
    /// and its own `read_response` when it `marked` too (skipping other
    /// frames: a push and the answer to the session's own mark go separate
    /// ways, so either may come first).
    pub async fn expect_reads(&mut self, pk: &Value, up_to: &Value, readers: &[i64], marked: bool) {
        let mut reads = Vec::new();
        let mut answered = !marked;
        while reads.len() < readers.len() || !answered {
            let frame = self.recv().await;
            match frame["type"].as_str() {
                Some("read") => reads.push(frame),
                Some("read_response") => {
                    assert!(!answered, "answered twice: {frame}");
                    assert_eq!(frame["data"]["status"], "success", "{frame}");
                    answered = true;
                }
                _ => {}
            }
        }
        reads.sort_by_key(|frame| frame["data"]["user_id"].as_i64());
        let mut readers = readers.to_vec();
        readers.sort();
        let expected: Vec<Value> = readers
            .iter()
            .map(
                |user| json!({"type": "read", "data": {"pk": pk, "user_id": user, "up_to": up_to}}),
            )
            .collect();
        assert_eq!(reads, expected);
    }

    /// A barrier that tolerates news still on its way from another
    /// instance (presence, which may cross Redis late): sends a ping and
    /// returns every JSON frame that came before its pong.
    pub async fn frames_before_pong(&mut self) -> Vec<Value> {
        self.send(json!({"type": "ping", "data": {}})).await;
        let mut frames = Vec::new();
        loop {
            let frame = self.recv().await;
            if frame == json!({"type": "pong", "data": {}}) {
                return frames;
            }
            frames.push(frame);
        }
    }

    /// The close frame the server sends next (skipping JSON frames).
    pub async fn expect_close(&mut self) -> Option<ws::CloseReason> {
        loop {
            match self.next_event(TIMEOUT).await {
                Event::Json(_) => continue,
                Event::Close(reason) => return reason,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// Asserts the server closes next with `code` and `reason` (skipping JSON frames).
    pub async fn expect_closed_with(&mut self, code: u16, reason: &str) {
        let close = self.expect_close().await.expect("a close reason");
        assert_eq!(
            (u16::from(close.code), close.description.as_deref()),
            (code, Some(reason))
        );
    }

    /// Splits off the reading half into a task that discards everything but
    /// the server's pings, which it answers, for a client that only sends (a
    /// flood) but must neither become a slow consumer nor look dead (B5).
    pub fn draining(self) -> WsSender {
        let (sink, mut stream) = self.framed.split();
        let sink = std::rc::Rc::new(tokio::sync::Mutex::new(sink));
        let answering = sink.clone();
        actix_web::rt::spawn(async move {
            while let Some(frame) = stream.next().await {
                if let Ok(ws::Frame::Ping(p)) = frame {
                    let _ = answering.lock().await.send(ws::Message::Pong(p)).await;
                }
            }
        });
        WsSender { sink }
    }

    /// Sends a request and returns the next frame.
    pub async fn request(&mut self, value: Value) -> Value {
        self.send(value).await;
        self.recv().await
    }

    /// Marks conversation `pk` read up to `up_to`; the next frame must be
    /// its `read_response`.
    pub async fn mark_read(&mut self, pk: &str, up_to: i64) {
        let answer = self
            .request(json!({"type": "read", "data": {"id": pk, "up_to": up_to}}))
            .await;
        assert_eq!(
            answer,
            json!({"type": "read_response", "data": {"status": "success", "pk": pk, "up_to": up_to}})
        );
    }

    /// Sends a group change (`create_group`, `add_members`, …) and returns
    /// the `data` of its answer once the caller's own `conversation` push
    /// has come too: it comes before or after the answer (C7; after, when
    /// the caller's instance had to subscribe to the conversation first),
    /// so only both together leave nothing of the change still to come.
    pub async fn ask_change(&mut self, value: Value) -> Value {
        let kind = format!("{}_response", value["type"].as_str().expect("a type"));
        self.send(value).await;
        let (mut answer, mut pushed) = (None, false);
        while answer.is_none() || !pushed {
            let frame = self.recv().await;
            if frame["type"] == kind {
                // A refused change pushes nothing: its error is the answer.
                if frame["data"]["status"] == "error" {
                    return frame["data"].clone();
                }
                answer = Some(frame["data"].clone());
            } else if frame["type"] == "conversation" {
                pushed = true;
            }
        }
        answer.expect("the loop ends with the answer")
    }

    /// Sends a request of type `X` and returns the `data` of its
    /// `X_response`, skipping pushes that come first.
    pub async fn ask(&mut self, value: Value) -> Value {
        let kind = format!("{}_response", value["type"].as_str().expect("a type"));
        self.send(value).await;
        self.recv_type(&kind).await["data"].clone()
    }

    /// The answer to the request just sent and the one frame it also
    /// pushes to this session, in either order.
    pub async fn answer_and_push(&mut self) -> (Value, Value) {
        let (first, second) = (self.recv().await, self.recv().await);
        if first["type"]
            .as_str()
            .is_some_and(|kind| kind.ends_with("_response"))
        {
            (first, second)
        } else {
            (second, first)
        }
    }
}

/// The sending half of a client whose incoming frames are drained.
pub struct WsSender {
    sink: std::rc::Rc<tokio::sync::Mutex<WsSink>>,
}

type WsSink =
    futures_util::stream::SplitSink<actix_codec::Framed<BoxedSocket, ws::Codec>, ws::Message>;

impl WsSender {
    /// Sends one text frame; fails if the server has not taken it within
    /// `TIMEOUT`.
    pub async fn send(&mut self, value: Value) {
        let frame = ws::Message::Text(value.to_string().into());
        tokio::time::timeout(TIMEOUT, async { self.sink.lock().await.send(frame).await })
            .await
            .expect("the server takes the frame within TIMEOUT")
            .expect("send text");
    }
}

/// A client socket that speaks raw WebSocket frames, for frames no
/// well-behaved client library will send.
pub struct RawSocket {
    stream: tokio::net::TcpStream,
    buffer: actix_web::web::BytesMut,
}

impl RawSocket {
    pub async fn connect(port: u16) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let request = format!(
            "GET /chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buffer = actix_web::web::BytesMut::new();
        while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
            assert!(
                stream.read_buf(&mut buffer).await.unwrap() > 0,
                "no handshake"
            );
        }
        assert!(buffer.starts_with(b"HTTP/1.1 101"), "{buffer:?}");
        let end = buffer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let _ = buffer.split_to(end);
        RawSocket { stream, buffer }
    }

    pub async fn send_frame(&mut self, payload: &[u8], opcode: actix_http::ws::OpCode) {
        use tokio::io::AsyncWriteExt;
        let mut raw = actix_web::web::BytesMut::new();
        actix_http::ws::Parser::write_message(&mut raw, payload, opcode, true, true);
        self.stream.write_all(&raw).await.unwrap();
    }

    /// Sends bytes as they are (a frame no library would build).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The payload of the next frame with `opcode`, skipping every other frame.
    async fn next_frame(&mut self, opcode: actix_http::ws::OpCode) -> actix_web::web::BytesMut {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some((_, found, payload)) =
                actix_http::ws::Parser::parse(&mut self.buffer, false, 1 << 20).unwrap()
            {
                if found == opcode {
                    return payload.unwrap_or_default();
                }
                continue;
            }
            let read = tokio::time::timeout(TIMEOUT, self.stream.read_buf(&mut self.buffer))
                .await
                .expect("a frame in time")
                .unwrap();
            assert!(read > 0, "connection closed before a {opcode:?} frame");
        }
    }

    /// The code of the server's close frame, skipping every other frame.
    pub async fn close_code(&mut self) -> u16 {
        let payload = self.next_frame(actix_http::ws::OpCode::Close).await;
        u16::from_be_bytes([payload[0], payload[1]])
    }

    /// The next text frame from the server, as JSON.
    pub async fn recv(&mut self) -> Value {
        let payload = self.next_frame(actix_http::ws::OpCode::Text).await;
        serde_json::from_slice(&payload).unwrap()
    }
}

/// A barrier for "nothing else arrives" at `receiver`: `sender` sends
/// `text` to conversation `pk` once its earlier requests were answered, and
/// `receiver`'s very next frame must be that message. Whatever the server
/// handed on before it (a duplicate push, say) would stand first; a wait of
/// fixed length proves nothing on a loaded machine.
pub async fn next_is_message(sender: &mut WsClient, receiver: &mut WsClient, pk: &str, text: &str) {
    sender
        .send(json!({"type": "message", "data": {"to": pk, "content": text}}))
        .await;
    assert_eq!(
        sender.recv_type("message_response").await["data"]["status"],
        "success"
    );
    let frame = receiver.recv().await;
    assert_eq!(
        (
            frame["type"].as_str(),
            frame["data"]["data"]["content"].as_str()
        ),
        (Some("message"), Some(text)),
        "{frame}"
    );
}

/// A barrier across instances for "nothing else was pushed": `sender`
/// sends `text` to `pk`, and its next frames must be the acknowledgement
/// and its own copy, and each of `others`' next frame that message. A
/// conversation's events reach every session in one order (B7), through the
/// bus too, so a stray frame pushed before would stand in front of it.
pub async fn only_barrier_follows(
    sender: &mut WsClient,
    others: Vec<&mut WsClient>,
    pk: &str,
    text: &str,
) {
    sender
        .send(json!({"type": "message", "data": {"to": pk, "content": text}}))
        .await;
    assert_eq!(sender.recv().await["type"], "message_response");
    for client in std::iter::once(sender).chain(others) {
        let frame = client.recv().await;
        assert_eq!(
            (
                frame["type"].as_str(),
                frame["data"]["data"]["content"].as_str()
            ),
            (Some("message"), Some(text)),
            "{frame}"
        );
    }
}

/// Sends `n` messages ("burst 0", "burst 1", …) to conversation `pk` from
/// `sender` and asserts `receiver` gets them in that order; reads the
/// sender's acks and echoes too.
pub async fn burst_arrives_in_order(
    sender: &mut WsClient,
    receiver: &mut WsClient,
    pk: &str,
    n: usize,
) {
    for i in 0..n {
        sender
            .send(json!({"type": "message", "data": {"to": pk, "content": format!("burst {i}")}}))
            .await;
    }
    let mut contents = Vec::new();
    while contents.len() < n {
        let frame = receiver.recv_type("message").await;
        let content = frame["data"]["data"]["content"].as_str().expect("content");
        contents.push(content.to_string());
    }
    let expected: Vec<String> = (0..n).map(|i| format!("burst {i}")).collect();
    assert_eq!(contents, expected, "order across instances");
    for _ in 0..2 * n {
        sender.recv().await; // the burst's acks and echoes
    }
}
