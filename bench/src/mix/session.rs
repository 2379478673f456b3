//! One session of `chat-bench mix`, behaving as a client does: it sends
//! what the scheduler hands it, answers pings, marks a share of what it
//! receives read, checks every conversation's `seq` (PROTOCOL.md B7: each
//! event once, in order, no gaps), and after a reconnect catches up with
//! `get_contacts` and `sync` as B7 tells a client to.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix_http::ws;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;

use super::population::{Population, BUCKETS};
use crate::search::Rng;
use crate::{open_session, Frame, Socket};

/// What the scheduler asks a session to do.
pub(crate) enum Out {
    /// Send this text frame.
    Text(String),
    /// Send this `message` frame; until it is answered it is sent again
    /// after a reconnect, with the same `client_id` (PROTOCOL.md C5).
    Message { client_id: String, text: String },
    /// Drop the connection and come back, as a phone changing networks.
    Reconnect,
}

/// What every session shares, on every thread of the generator: the
/// population, the clock, the tallies.
pub(crate) struct Shared {
    pub origin: Instant,
    pub population: Population,
    /// Conversation id (as the server writes it) → index.
    pub index: HashMap<String, u32>,
    /// The share of received messages a user's first session marks read.
    pub reads: f64,
    pub tally: Mutex<Tally>,
    /// The highest `seq` seen of each conversation, by any session.
    pub last_seq: Mutex<Vec<i64>>,
}

/// Takes `mutex`, also after a panic on another thread (the counts are
/// still what they were: every update is a single step).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts over every session. Taken after a session's `State`, never
/// before it.
pub(crate) struct Tally {
    /// Send → receive, in microseconds, per bucket (live `received` pushes).
    pub latency: Vec<Histogram<u64>>,
    /// Live `message` pushes, to every session (the sender's own included).
    pub deliveries: u64,
    pub acked: u64,
    pub errors: u64,
    /// The first few error answers, as received.
    pub error_samples: Vec<String>,
    pub reads_sent: u64,
    /// A live event seen twice, outside a catch-up.
    pub duplicates: u64,
    /// A live event whose `seq` skipped some: the client `sync`s.
    pub jumps: u64,
    pub reconnects: u64,
    /// Connections the server closed (or that failed) on their own.
    pub dropped: u64,
    /// From closing the connection to the last `sync` answered, in µs.
    pub catch_up: Histogram<u64>,
    /// Sessions opened and having had their `get_contacts` answered.
    pub ready: usize,
    /// From a new session's first `get_contacts` to its answer, in µs.
    pub contacts_at_open: Histogram<u64>,
}

impl Tally {
    pub fn new() -> Self {
        let histogram =
            || Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
        Tally {
            latency: BUCKETS.iter().map(|_| histogram()).collect(),
            deliveries: 0,
            acked: 0,
            errors: 0,
            error_samples: Vec::new(),
            reads_sent: 0,
            duplicates: 0,
            jumps: 0,
            reconnects: 0,
            dropped: 0,
            catch_up: histogram(),
            ready: 0,
            contacts_at_open: histogram(),
        }
    }
}

/// Where a session is in one conversation's log.
#[derive(Default)]
pub(crate) struct Cursor {
    /// Every `seq` up to this one has been seen.
    pub upto: i64,
    /// Seen beyond a gap (waiting for the gap to fill).
    ahead: BTreeSet<i64>,
    /// Filled by `sync` at least once: a live push may then repeat an event.
    synced: bool,
}

/// A session's own state; the runner reads the cursors after the run.
pub(crate) struct State {
    pub user: u32,
    /// The user's first session marks messages read; the second does not.
    marks_read: bool,
    pub cursors: HashMap<u32, Cursor>,
    /// `sync` requests not answered yet.
    pub syncing: usize,
    /// Since when the session has been reconnecting (until caught up).
    pub reconnecting: Option<Instant>,
    /// Messages sent and not answered yet, by `client_id`.
    pub unanswered: HashMap<String, String>,
    /// When the session's first `get_contacts` went (until answered).
    asked_contacts: Option<Instant>,
    rng: Rng,
}

impl State {
    pub fn new(user: u32, marks_read: bool, seed: u64) -> Self {
        State {
            user,
            marks_read,
            cursors: HashMap::new(),
            syncing: 0,
            reconnecting: None,
            unanswered: HashMap::new(),
            asked_contacts: None,
            rng: Rng(seed),
        }
    }
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    pk: Cow<'a, str>,
    #[serde(default)]
    seq: Option<i64>,
    #[serde(default, borrow)]
    data: Option<Inner<'a>>,
}

#[derive(Deserialize)]
struct Inner<'a> {
    #[serde(default)]
    id: i64,
    #[serde(default)]
    direction: &'a str,
    #[serde(default, borrow)]
    content: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Status<'a> {
    #[serde(default)]
    status: Option<&'a str>,
    #[serde(default, borrow)]
    client_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ContactSeq<'a> {
    #[serde(borrow)]
    pk: Cow<'a, str>,
    #[serde(default)]
    seq: i64,
}

#[derive(Deserialize)]
struct SyncPage<'a> {
    #[serde(borrow)]
    pk: Cow<'a, str>,
    #[serde(borrow)]
    events: Vec<&'a serde_json::value::RawValue>,
    #[serde(default)]
    has_more: bool,
}

fn sync_request(pk: &str, after: i64) -> String {
    json!({"type": "sync", "data": {"id": pk, "after_seq": after, "limit": 200}}).to_string()
}

/// Handles one text frame; returns the frames to send in answer.
fn handle(bytes: &[u8], state: &mut State, shared: &Shared, live: bool) -> Vec<String> {
    let mut replies = Vec::new();
    let Ok(frame) = serde_json::from_slice::<Frame>(bytes) else {
        return replies;
    };
    let data = frame.data.map_or("null", |d| d.get());
    match frame.kind {
        "message" => {
            if let Ok(event) = serde_json::from_str::<Event>(data) {
                message(event, state, shared, live, &mut replies);
            }
        }
        "message_response" => {
            let status = serde_json::from_str::<Status>(data).ok();
            if let Some(client_id) = status.as_ref().and_then(|s| s.client_id.as_ref()) {
                state.unanswered.remove(client_id.as_ref());
            }
            let ok = status.is_some_and(|s| s.status == Some("success"));
            let mut tally = lock(&shared.tally);
            if ok {
                tally.acked += 1;
            } else {
                tally.errors += 1;
                if tally.error_samples.len() < 5 {
                    tally.error_samples.push(data.to_string());
                }
            }
        }
        "get_contacts_response" => {
            let contacts: Vec<ContactSeq> = serde_json::from_str(data).unwrap_or_default();
            if state.reconnecting.is_none() {
                let mut tally = lock(&shared.tally);
                tally.ready += 1;
                if let Some(asked) = state.asked_contacts.take() {
                    let waited = asked.elapsed().as_micros() as u64;
                    tally.contacts_at_open.saturating_record(waited);
                }
            }
            for contact in contacts {
                let Some(&c) = shared.index.get(contact.pk.as_ref()) else {
                    continue;
                };
                let cursor = state.cursors.entry(c).or_default();
                if contact.seq > cursor.upto {
                    cursor.synced = true;
                    state.syncing += 1;
                    replies.push(sync_request(&contact.pk, cursor.upto));
                }
            }
            caught_up(state, shared);
        }
        "sync_response" => {
            if let Ok(page) = serde_json::from_str::<SyncPage>(data) {
                for event in &page.events {
                    replies.extend(handle(event.get().as_bytes(), state, shared, false));
                }
                let upto = shared
                    .index
                    .get(page.pk.as_ref())
                    .and_then(|c| state.cursors.get(c))
                    .map_or(0, |cursor| cursor.upto);
                if page.has_more {
                    replies.push(sync_request(&page.pk, upto));
                } else {
                    state.syncing = state.syncing.saturating_sub(1);
                    caught_up(state, shared);
                }
            } else {
                state.syncing = state.syncing.saturating_sub(1);
                let mut tally = lock(&shared.tally);
                tally.errors += 1;
                if tally.error_samples.len() < 5 {
                    tally.error_samples.push(data.to_string());
                }
            }
        }
        _ => {}
    }
    replies
}

/// A `message` event, live or from `sync`.
fn message(
    event: Event,
    state: &mut State,
    shared: &Shared,
    live: bool,
    replies: &mut Vec<String>,
) {
    let Some(&c) = shared.index.get(event.pk.as_ref()) else {
        return;
    };
    let (Some(seq), Some(inner)) = (event.seq, event.data) else {
        return;
    };
    {
        let mut last = lock(&shared.last_seq);
        last[c as usize] = last[c as usize].max(seq);
    }
    let cursor = state.cursors.entry(c).or_default();
    let mut tally = lock(&shared.tally);
    if live {
        tally.deliveries += 1;
    }
    if seq <= cursor.upto || cursor.ahead.contains(&seq) {
        if live && !cursor.synced {
            tally.duplicates += 1;
        }
        return;
    }
    if seq == cursor.upto + 1 {
        cursor.upto = seq;
        while cursor.ahead.remove(&(cursor.upto + 1)) {
            cursor.upto += 1;
        }
    } else {
        if live && state.reconnecting.is_none() && state.syncing == 0 {
            // A gap in live delivery: a client asks for what it missed.
            tally.jumps += 1;
            cursor.synced = true;
            state.syncing += 1;
            replies.push(sync_request(&event.pk, cursor.upto));
        }
        cursor.ahead.insert(seq);
    }
    if !live || inner.direction != "received" {
        return;
    }
    if let Some(sent) = inner
        .content
        .strip_prefix("mix ")
        .and_then(|t| t.parse::<u64>().ok())
    {
        let now = shared.origin.elapsed().as_micros() as u64;
        let bucket = shared.population.conversations[c as usize].bucket();
        let _ = tally.latency[bucket].record(now.saturating_sub(sent).max(1));
    }
    if state.marks_read && state.rng.unit() < shared.reads {
        tally.reads_sent += 1;
        replies
            .push(json!({"type": "read", "data": {"id": event.pk, "up_to": inner.id}}).to_string());
    }
}

/// After a reconnect: once every `sync` is answered, the catch-up's time.
fn caught_up(state: &mut State, shared: &Shared) {
    if state.syncing > 0 {
        return;
    }
    if let Some(since) = state.reconnecting.take() {
        let micros = since.elapsed().as_micros().max(1) as u64;
        let _ = lock(&shared.tally).catch_up.record(micros);
    }
}

/// Where and as whom a session connects.
pub(crate) struct Connection {
    pub client: awc::Client,
    pub ws_base: String,
    pub token: Arc<str>,
}

/// Opens the session again, retrying for up to a minute; asks
/// `get_contacts`, whose answer starts the catch-up.
async fn reopen(connection: &Connection, shared: &Shared) -> Option<Socket> {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut socket) =
            open_session(&connection.client, &connection.ws_base, &connection.token).await
        {
            let ask = json!({"type": "get_contacts", "data": {}}).to_string();
            if socket.send(ws::Message::Text(ask.into())).await.is_ok() {
                return Some(socket);
            }
        }
        if Instant::now() > until {
            lock(&shared.tally).dropped += 1;
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a session until the runner drops its sender.
pub(crate) async fn run(
    mut socket: Socket,
    connection: Connection,
    state: Arc<Mutex<State>>,
    shared: Arc<Shared>,
    mut commands: UnboundedReceiver<Out>,
) {
    let ask = json!({"type": "get_contacts", "data": {}}).to_string();
    lock(&state).asked_contacts = Some(Instant::now());
    if socket.send(ws::Message::Text(ask.into())).await.is_err() {
        lock(&shared.tally).dropped += 1;
        return;
    }
    loop {
        let mut replies = Vec::new();
        let mut reconnect = false;
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(Out::Text(text)) => replies.push(text),
                Some(Out::Message { client_id, text }) => {
                    lock(&state).unanswered.insert(client_id, text.clone());
                    replies.push(text);
                }
                Some(Out::Reconnect) => {
                    let _ = socket.close().await;
                    lock(&shared.tally).reconnects += 1;
                    reconnect = true;
                }
            },
            frame = socket.next() => match frame {
                Some(Ok(ws::Frame::Text(bytes))) => {
                    replies = handle(&bytes, &mut lock(&state), &shared, true);
                }
                Some(Ok(ws::Frame::Ping(payload))) => {
                    let _ = socket.send(ws::Message::Pong(payload)).await;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    lock(&shared.tally).dropped += 1;
                    reconnect = true;
                }
            },
        }
        if reconnect {
            {
                let mut state = lock(&state);
                state.reconnecting = Some(Instant::now());
                // Syncs in flight died with the connection; the answer to
                // the new get_contacts asks again from the cursors.
                state.syncing = 0;
            }
            match reopen(&connection, &shared).await {
                Some(again) => socket = again,
                None => return,
            }
            // Messages whose answer was lost with the connection, again.
            replies = lock(&state).unanswered.values().cloned().collect();
        }
        for text in replies {
            if socket.send(ws::Message::Text(text.into())).await.is_err() {
                break;
            }
        }
    }
}
