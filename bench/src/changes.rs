//! The changes of `load`'s realistic mix (PROTOCOL.md B8): beside the messages, each
//! pair's receiver reacts to messages it got and each sender edits messages
//! it sent, at fixed total rates, each from a session of its own (a second
//! device of the same person), so the messages' latency is measured with
//! the changes flowing through the same writer and rooms. After the run,
//! the newest page of history (with its reactions) is timed.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_http::ws;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::json;

use crate::{setup, BenchError, Frame, Socket};

/// Message ids waiting for a change: the newest at the back, at most
/// `KEEP` (older ones are dropped: a change goes to a recent message).
#[derive(Clone, Default)]
pub(crate) struct Ids(Rc<RefCell<VecDeque<i64>>>);

const KEEP: usize = 64;

impl Ids {
    pub(crate) fn push(&self, id: i64) {
        let mut ids = self.0.borrow_mut();
        ids.push_back(id);
        if ids.len() > KEEP {
            ids.pop_front();
        }
    }

    fn take(&self) -> Option<i64> {
        self.0.borrow_mut().pop_back()
    }
}

/// What a change loop sends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `react` 👍 on a message the receiver got (each once: always a change).
    React,
    /// `edit_message` of a message the sender sent.
    Edit,
}

impl Kind {
    fn answer(self) -> &'static str {
        match self {
            Kind::React => "react_response",
            Kind::Edit => "edit_message_response",
        }
    }
}

/// Changes sent and answered, over every loop of one kind.
#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct Counts {
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
}

#[derive(Deserialize)]
struct Status<'a> {
    #[serde(default, borrow)]
    status: Option<&'a str>,
}

/// One loop: every `interval` (from `start`), a change of the newest id
/// waiting in `ids`, on `socket`, until `stop_at`; answers are counted.
/// The socket's other frames (every push of the conversation) are read and
/// dropped, so it is never a slow consumer.
pub(crate) async fn changes(
    socket: Socket,
    kind: Kind,
    ids: Ids,
    interval: Duration,
    start: Instant,
    stop_at: Instant,
    counts: Rc<RefCell<Counts>>,
) {
    let (mut sink, mut incoming) = socket.split();
    let answers = counts.clone();
    let reader = actix_rt::spawn(async move {
        while let Some(Ok(frame)) = incoming.next().await {
            let ws::Frame::Text(bytes) = frame else {
                continue;
            };
            let Ok(frame) = serde_json::from_slice::<Frame>(&bytes) else {
                continue;
            };
            if frame.kind != kind.answer() {
                continue;
            }
            let ok = frame
                .data
                .and_then(|d| serde_json::from_str::<Status>(d.get()).ok())
                .is_some_and(|s| s.status == Some("success"));
            let mut counts = answers.borrow_mut();
            if ok {
                counts.ok += 1;
            } else {
                counts.errors += 1;
            }
        }
    });
    let mut next = start;
    let mut n = 0u64;
    while Instant::now() < stop_at {
        next += interval;
        tokio::time::sleep_until(next.into()).await;
        let Some(id) = ids.take() else {
            continue;
        };
        let request = match kind {
            Kind::React => json!({"type": "react", "data": {"id": id, "emoji": "👍", "on": true}}),
            Kind::Edit => {
                json!({"type": "edit_message", "data": {"id": id, "content": format!("edited {n}")}})
            }
        };
        n += 1;
        if sink
            .send(ws::Message::Text(request.to_string().into()))
            .await
            .is_err()
        {
            break;
        }
        counts.borrow_mut().sent += 1;
    }
    // Answers still on their way: the run's drain waits for them.
    std::future::pending::<()>().await;
    drop((sink, reader));
}

/// Pages asked before the timed ones: more than the server's pooled
/// connections (`DB_POOL_SIZE`, 16 by default), so that each connection's
/// first use of the page's statement (a parse, and on PostgreSQL the
/// catalog caches of a new backend: ~2 ms) happens here, once per
/// connection's life, and the run's own sockets have closed.
const HISTORY_WARM_UP: usize = 64;

/// The newest page of `pk`'s history (`limit` 50), asked `pages` times in
/// a row on `socket` after `HISTORY_WARM_UP` untimed ones: each answer's
/// time, in a histogram of microseconds.
pub(crate) async fn time_history(
    mut socket: Socket,
    pk: &str,
    pages: usize,
) -> Result<Histogram<u64>, BenchError> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let request = json!({"type": "get_messages", "data": {"id": pk, "limit": 50}}).to_string();
    for page in 0..HISTORY_WARM_UP + pages {
        let asked = Instant::now();
        socket
            .send(ws::Message::Text(request.clone().into()))
            .await
            .map_err(|e| setup("history request", e))?;
        loop {
            match socket.next().await {
                Some(Ok(ws::Frame::Text(bytes))) => {
                    let frame: Frame =
                        serde_json::from_slice(&bytes).map_err(|e| setup("history", e))?;
                    if frame.kind == "get_messages_response" {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                other => return Err(setup("history answer", format!("{other:?}"))),
            }
        }
        if page < HISTORY_WARM_UP {
            continue;
        }
        let micros = asked.elapsed().as_micros().max(1) as u64;
        let _ = histogram.record(micros.min(60_000_000));
    }
    Ok(histogram)
}
