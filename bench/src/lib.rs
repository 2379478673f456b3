//! The load generator, `chat-bench`: real users over REST, one
//! WebSocket each, messages timed end to end. Bounded in count and time; it
//! stops by itself and prints a summary and one JSON line.
//!
//! - `load`: N pairs; each pair's first user sends to the second, at a fixed
//!   total rate or as fast as a window of W unacknowledged messages allows.
//!   Receivers measure send→receive latency and count lost, duplicated and
//!   out-of-order messages. With `--reactions`/`--edits` the receivers react
//!   to and the senders edit messages at those total rates (the realistic
//!   mix, `changes.rs`); `--history-pages` times the newest page of history after.
//! - `idle`: many authorized idle sessions; server RSS per connection, then
//!   the latency of messages between two of them.
//! - `group`: one group of many connected members; send to the last
//!   member's delivery, deliveries per second, Redis commands per message.
//! - `churn`: pairs through one address while instances restart behind it;
//!   reconnects, resends with `client_id`, and checks the history for loss
//!   and duplicates.
//! - `mix`: a population of users (one or two sessions each, direct
//!   conversations and long-tailed groups) loaded by `mix-fill`, sending
//!   as a Poisson process with typing, read marks and reconnects; latency
//!   per group size, loss, CPU and memory per user, Redis per message.
//! - `startup`: time from process start to `/readyz` 200 on SQLite.
//! - `attack`: a bystander's latency while one account abuses a group
//!   (renames, fan-out, typing, reconnects), against its quiet value.

mod attack;
mod changes;
mod churn;
mod files;
mod group;
mod mix;
mod net;
mod search;

pub use attack::{attack, AttackOptions, AttackReport, Pattern};
pub use churn::{churn, ChurnOptions, ChurnReport};
pub use files::{files, FilesOptions, FilesReport};
pub use group::{group, GroupOptions, GroupReport};
pub use mix::{fill_population, mix, MixOptions, MixReport};
pub use search::{fill, search, Dialect, Model, SearchOptions, SearchReport};

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_http::ws;
use awc::BoxedSocket;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;

use net::Clients;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Setup(String),
}

fn setup(what: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(format!("{what}: {e}"))
}

/// Raises this process's open-file limit to its hard limit (each socket is a file).
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    limit.rlim_cur
}

pub(crate) type Socket = actix_codec::Framed<BoxedSocket, ws::Codec>;

struct Account {
    id: i64,
    username: String,
    token: String,
}

pub(crate) const BENCH_PASSWORD: &str = "bench password 123";

async fn register(client: &awc::Client, base: &str, username: &str) -> Result<Account, BenchError> {
    let body = json!({"username": username, "password": BENCH_PASSWORD, "first_name": "Bench", "last_name": username});
    let mut res = client
        .post(format!("{base}/api/register/"))
        .send_json(&body)
        .await
        .map_err(|e| setup("register", e))?;
    let value: serde_json::Value = res.json().await.map_err(|e| setup("register body", e))?;
    let token = value["token"]
        .as_str()
        .ok_or_else(|| setup("register (is REGISTRATION_OPEN=1?)", value.to_string()))?;
    let id = value["data"]["id"]
        .as_i64()
        .ok_or_else(|| setup("register: no user id", value.to_string()))?;
    Ok(Account {
        id,
        username: username.into(),
        token: token.into(),
    })
}

async fn add_contact(
    client: &awc::Client,
    base: &str,
    token: &str,
    other: &str,
) -> Result<String, BenchError> {
    let mut res = client
        .post(format!("{base}/api/contacts/"))
        .bearer_auth(token)
        .send_json(&json!({"username": other}))
        .await
        .map_err(|e| setup("add contact", e))?;
    let value: serde_json::Value = res.json().await.map_err(|e| setup("contact body", e))?;
    value["pk"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| setup("add contact", value.to_string()))
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default, borrow)]
    data: Option<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct Push<'a> {
    #[serde(borrow)]
    data: PushBody<'a>,
}

#[derive(Deserialize)]
struct PushBody<'a> {
    #[serde(default)]
    id: i64,
    direction: &'a str,
    #[serde(borrow)]
    content: std::borrow::Cow<'a, str>,
}

/// The push of a `message` frame, if `bytes` is one.
fn message_push(bytes: &[u8]) -> Option<Push<'_>> {
    let frame = serde_json::from_slice::<Frame>(bytes).ok()?;
    if frame.kind != "message" {
        return None;
    }
    serde_json::from_str::<Push>(frame.data?.get()).ok()
}

/// Opens an authorized WebSocket (token in the URL) and reads its two greeting frames.
async fn open_session(
    client: &awc::Client,
    ws_base: &str,
    token: &str,
) -> Result<Socket, BenchError> {
    let (_, mut socket) = client
        .ws(format!("{ws_base}/chat?token={token}"))
        .max_frame_size(1 << 20)
        .connect()
        .await
        .map_err(|e| setup("websocket connect", e))?;
    for expected in ["info", "authorization_response"] {
        match socket.next().await {
            Some(Ok(ws::Frame::Text(bytes))) => {
                let frame: Frame =
                    serde_json::from_slice(&bytes).map_err(|e| setup("greeting", e))?;
                if frame.kind != expected {
                    return Err(setup(
                        "greeting",
                        format!("expected {expected}, got {}", frame.kind),
                    ));
                }
                if expected == "authorization_response"
                    && !bytes.windows(9).any(|w| w == b"\"success\"")
                {
                    return Err(setup("authorization", String::from_utf8_lossy(&bytes)));
                }
            }
            other => return Err(setup("greeting", format!("{other:?}"))),
        }
    }
    Ok(socket)
}

fn ws_url(http: &str) -> String {
    http.replacen("http://", "ws://", 1)
        .replacen("https://", "wss://", 1)
}

/// Options of `bench load`.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub urls: Vec<String>,
    pub pairs: usize,
    pub duration: Duration,
    /// Messages per second in total; 0 means as fast as the window allows.
    pub rate: u64,
    pub window: usize,
    pub sources: usize,
    /// Reactions per second in total, from the receivers (0: none).
    pub reactions: u64,
    /// Edits per second in total, from the senders (0: none).
    pub edits: u64,
    /// Times the newest history page is asked for after the run (0: not timed).
    pub history_pages: usize,
    /// Words of text after each message's numbers (0: the numbers alone),
    /// so the search index has real text to take in.
    pub words: usize,
    /// The servers' process ids, to read their CPU time from /proc (empty: not measured).
    pub server_pids: Vec<u32>,
    /// Whether each message carries a `client_id`, as the web client's do.
    pub client_ids: bool,
    /// The database server's process name on this machine (`postgres`,
    /// `mariadbd`), for its CPU time per message (`None`: not measured).
    pub database_process: Option<String>,
}

#[derive(Default)]
struct PairStats {
    acked: u64,
    errors: u64,
    delivered: u64,
    dup: u64,
    reordered: u64,
    seen: Vec<bool>,
    highest: Option<u64>,
}

/// The outcome of a load run.
#[derive(Debug, serde::Serialize)]
pub struct LoadReport {
    pub connections: usize,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub lost: u64,
    pub dup: u64,
    pub reordered: u64,
    pub errors: u64,
    pub seconds: f64,
    pub msgs_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub reactions_sent: u64,
    pub reactions_ok: u64,
    pub edits_sent: u64,
    pub edits_ok: u64,
    /// Change requests answered with an error.
    pub change_errors: u64,
    /// The newest page of history (50 messages, with reactions), when timed.
    pub history_p50_ms: Option<f64>,
    pub history_p99_ms: Option<f64>,
    /// The servers' CPU time (user + system, all `--server-pid`s) from the
    /// first message to the last delivery, per delivered message, in µs.
    pub server_cpu_us_per_delivery: Option<f64>,
    /// The same for the database server's processes (`--database-process`).
    pub database_cpu_us_per_delivery: Option<f64>,
}

#[derive(Deserialize)]
struct AckId {
    #[serde(default)]
    id: Option<i64>,
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Runs `bench load`.
pub async fn load(opts: LoadOptions) -> Result<LoadReport, BenchError> {
    raise_fd_limit();
    let clients = Clients::new(opts.sources);
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let url = |i: usize| {
        opts.urls[i % opts.urls.len()]
            .trim_end_matches('/')
            .to_string()
    };

    eprintln!("setting up {} pairs…", opts.pairs);
    let limit = Arc::new(Semaphore::new(16));
    let mut setups = Vec::new();
    for i in 0..opts.pairs {
        let (client, base, limit, run) =
            (clients.get(i).clone(), url(i), limit.clone(), run.clone());
        setups.push(async move {
            let _permit = limit.acquire().await.map_err(|e| setup("setup", e))?;
            let a = register(&client, &base, &format!("b{run}p{i}a")).await?;
            let b = register(&client, &base, &format!("b{run}p{i}b")).await?;
            let pk = add_contact(&client, &base, &a.token, &b.username).await?;
            Ok::<_, BenchError>((a, b, pk))
        });
    }
    let accounts = futures_util::future::try_join_all(setups).await?;

    let mut sockets = Vec::new();
    let mut changers = Vec::new();
    for (i, (a, b, pk)) in accounts.iter().enumerate() {
        let sender = open_session(clients.get(2 * i), &ws_url(&url(i)), &a.token).await?;
        let receiver = open_session(clients.get(2 * i + 1), &ws_url(&url(i + 1)), &b.token).await?;
        sockets.push((sender, receiver, pk.clone()));
        // The mix: a second session of each person for their changes.
        let (edits, reactions) = (changes::Ids::default(), changes::Ids::default());
        let editor = match opts.edits {
            0 => None,
            _ => Some(open_session(clients.get(2 * i), &ws_url(&url(i)), &a.token).await?),
        };
        let reactor = match opts.reactions {
            0 => None,
            _ => Some(open_session(clients.get(2 * i + 1), &ws_url(&url(i + 1)), &b.token).await?),
        };
        changers.push((edits, editor, reactions, reactor));
    }
    // Let presence frames settle before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!(
        "{} connections open; sending for {:?}…",
        2 * sockets.len(),
        opts.duration
    );

    let cpu_before = servers_cpu_time(&opts.server_pids);
    let database_before = opts.database_process.as_deref().and_then(processes_cpu);
    let origin = Instant::now();
    let histogram = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("valid bounds"),
    ));
    let stats: Rc<RefCell<HashMap<usize, PairStats>>> = Rc::new(RefCell::new(HashMap::new()));
    let sent_total = Rc::new(RefCell::new(0u64));
    let sending = Rc::new(Cell::new(sockets.len()));
    let stop_at = origin + opts.duration;
    let per_sender_interval =
        (opts.rate > 0).then(|| Duration::from_secs_f64(opts.pairs as f64 / opts.rate as f64));
    let mut tasks = Vec::new();
    let edit_counts = Rc::new(RefCell::new(changes::Counts::default()));
    let reaction_counts = Rc::new(RefCell::new(changes::Counts::default()));
    let interval_of = |rate: u64| Duration::from_secs_f64(opts.pairs as f64 / rate.max(1) as f64);
    let mut changes = Vec::new();
    for (i, (edit_ids, editor, react_ids, reactor)) in changers.into_iter().enumerate() {
        let start = origin + Duration::from_secs_f64(i as f64 / opts.pairs as f64);
        for (socket, kind, ids, rate, counts) in [
            (
                editor,
                changes::Kind::Edit,
                edit_ids.clone(),
                opts.edits,
                &edit_counts,
            ),
            (
                reactor,
                changes::Kind::React,
                react_ids.clone(),
                opts.reactions,
                &reaction_counts,
            ),
        ] {
            if let Some(socket) = socket {
                let interval = interval_of(rate);
                let run =
                    changes::changes(socket, kind, ids, interval, start, stop_at, counts.clone());
                tasks.push(actix_rt::spawn(run));
            }
        }
        changes.push((edit_ids, react_ids));
    }
    for (i, (sender, receiver, pk)) in sockets.into_iter().enumerate() {
        let (edit_ids, react_ids) = changes[i].clone();
        stats.borrow_mut().insert(i, PairStats::default());
        let (sink, mut acks) = sender.split();
        let window = Rc::new(Semaphore::new(opts.window.max(1)));
        // Acks free window slots.
        let (w, st) = (window.clone(), stats.clone());
        tasks.push(actix_rt::spawn(async move {
            while let Some(Ok(frame)) = acks.next().await {
                let ws::Frame::Text(bytes) = frame else {
                    continue;
                };
                let Ok(frame) = serde_json::from_slice::<Frame>(&bytes) else {
                    continue;
                };
                if frame.kind == "message_response" {
                    let ok = frame.data.is_some_and(|d| d.get().contains("\"success\""));
                    if let Some(id) = frame
                        .data
                        .filter(|_| ok)
                        .and_then(|d| serde_json::from_str::<AckId>(d.get()).ok())
                        .and_then(|a| a.id)
                    {
                        edit_ids.push(id);
                    }
                    let mut st = st.borrow_mut();
                    let pair = st.get_mut(&i).expect("pair registered");
                    if ok {
                        pair.acked += 1
                    } else {
                        pair.errors += 1
                    }
                    w.add_permits(1);
                }
            }
        }));
        // Receiver: latency, loss, duplicates, order.
        let (h, st) = (histogram.clone(), stats.clone());
        let (_rsink, mut incoming) = receiver.split();
        tasks.push(actix_rt::spawn(async move {
            let _keep = _rsink;
            while let Some(Ok(frame)) = incoming.next().await {
                let ws::Frame::Text(bytes) = frame else {
                    continue;
                };
                let Some(push) = message_push(&bytes) else {
                    continue;
                };
                if push.data.direction != "received" {
                    continue;
                }
                let mut parts = push.data.content.split(' ');
                let (Some(Ok(seq)), Some(Ok(sent_ns))) = (
                    parts.next().map(str::parse::<u64>),
                    parts.next().map(str::parse::<u128>),
                ) else {
                    continue;
                };
                let now_ns = origin.elapsed().as_nanos();
                let micros = (now_ns.saturating_sub(sent_ns) / 1000).max(1) as u64;
                let _ = h.borrow_mut().record(micros.min(120_000_000));
                react_ids.push(push.data.id);
                let mut st = st.borrow_mut();
                let pair = st.get_mut(&i).expect("pair registered");
                let idx = seq as usize;
                if pair.seen.len() <= idx {
                    pair.seen.resize(idx + 1, false);
                }
                if pair.seen[idx] {
                    pair.dup += 1;
                    continue;
                }
                pair.seen[idx] = true;
                pair.delivered += 1;
                if pair.highest.is_some_and(|h| seq < h) {
                    pair.reordered += 1;
                }
                pair.highest = Some(pair.highest.map_or(seq, |h| h.max(seq)));
            }
        }));
        // Sender.
        let sent = sent_total.clone();
        // Spread senders evenly over one interval, so a fixed total rate
        // arrives as a steady stream, not as bursts of every sender at once.
        let offset = per_sender_interval.map_or(Duration::ZERO, |iv| {
            iv.mul_f64(i as f64 / opts.pairs as f64)
        });
        let pacing = Pacing {
            interval: per_sender_interval,
            offset,
            stop_at,
            origin,
            window: opts.window,
            words: opts.words,
            client_ids: opts.client_ids,
            sending: sending.clone(),
        };
        tasks.push(actix_rt::spawn(send_paced(
            sink, window, pk, None, pacing, sent,
        )));
    }
    tokio::time::sleep_until(stop_at.into()).await;
    senders_finished(&sending, stop_at + DRAIN).await;
    let send_phase = origin.elapsed();
    // Wait for deliveries to catch up with acknowledgements (bounded).
    let drain_deadline = Instant::now() + DRAIN;
    loop {
        let (answered, acked, delivered) =
            stats.borrow().values().fold((0, 0, 0), |(n, a, d), p| {
                (n + p.acked + p.errors, a + p.acked, d + p.delivered)
            });
        let changed = |c: &Rc<RefCell<changes::Counts>>| {
            let c = c.borrow();
            c.ok + c.errors >= c.sent
        };
        let all_answered =
            answered >= *sent_total.borrow() && changed(&edit_counts) && changed(&reaction_counts);
        if (all_answered && delivered >= acked) || Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu_used = servers_cpu_time(&opts.server_pids)
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    let database_used = processes_cpu_since(opts.database_process.as_deref(), database_before);
    for task in &tasks {
        task.abort();
    }
    let history = match (opts.history_pages, accounts.first()) {
        (0, _) | (_, None) => None,
        (pages, Some((_, b, pk))) => {
            let socket = open_session(clients.get(1), &ws_url(&url(1)), &b.token).await?;
            Some(changes::time_history(socket, pk, pages).await?)
        }
    };
    let (edits, reactions) = (*edit_counts.borrow(), *reaction_counts.borrow());
    let stats = stats.borrow();
    let sum = |f: fn(&PairStats) -> u64| stats.values().map(f).sum::<u64>();
    let (acked, delivered) = (sum(|p| p.acked), sum(|p| p.delivered));
    let h = histogram.borrow();
    let seconds = send_phase.as_secs_f64();
    let sent = *sent_total.borrow();
    Ok(LoadReport {
        connections: 2 * opts.pairs,
        sent,
        acked,
        delivered,
        lost: acked.saturating_sub(delivered),
        dup: sum(|p| p.dup),
        reordered: sum(|p| p.reordered),
        errors: sum(|p| p.errors),
        seconds,
        msgs_per_sec: delivered as f64 / seconds,
        p50_ms: ms(&h, 0.5),
        p99_ms: ms(&h, 0.99),
        p999_ms: ms(&h, 0.999),
        max_ms: h.max() as f64 / 1000.0,
        reactions_sent: reactions.sent,
        reactions_ok: reactions.ok,
        edits_sent: edits.sent,
        edits_ok: edits.ok,
        change_errors: reactions.errors + edits.errors,
        history_p50_ms: history.as_ref().map(|h| ms(h, 0.5)),
        history_p99_ms: history.as_ref().map(|h| ms(h, 0.99)),
        server_cpu_us_per_delivery: per_delivery(cpu_used, delivered),
        database_cpu_us_per_delivery: per_delivery(database_used, delivered),
    })
}

/// CPU time per delivered message, in µs (`None`: not measured, or nothing delivered).
fn per_delivery(cpu: Option<Duration>, delivered: u64) -> Option<f64> {
    cpu.filter(|_| delivered > 0)
        .map(|cpu| cpu.as_secs_f64() * 1e6 / delivered as f64)
}

/// The CPU time of all these processes together (`None` if there are none,
/// or one cannot be read).
fn servers_cpu_time(pids: &[u32]) -> Option<Duration> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| cpu_time(pid)).sum()
}

/// When a sender sends: the run's clock, its stop, and its rate.
struct Pacing {
    /// Between two of this sender's messages; `None`: as fast as the window allows.
    interval: Option<Duration>,
    /// Where in the interval this sender starts, so senders spread evenly.
    offset: Duration,
    stop_at: Instant,
    origin: Instant,
    window: usize,
    /// Words of text appended to each message.
    words: usize,
    /// Whether each message carries a `client_id`, as the web client's do.
    client_ids: bool,
    /// How many senders are still sending; each takes itself off when done.
    sending: Rc<Cell<usize>>,
}

/// The longest a run waits for its senders to finish, and then for the
/// answers and deliveries of what they sent.
const DRAIN: Duration = Duration::from_secs(15);

/// Waits until every sender has sent what was due before the end (one
/// short of CPU may still be catching up then), at most until `deadline`.
async fn senders_finished(sending: &Cell<usize>, deadline: Instant) {
    while sending.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What `--words` appends: words of everyday English, a different mix in
/// each message.
const TEXT: [&str; 32] = [
    "meeting", "tomorrow", "coffee", "project", "review", "lunch", "thanks", "great", "please",
    "check", "update", "later", "today", "morning", "document", "call", "weekend", "plan", "idea",
    "question", "answer", "photo", "music", "travel", "office", "team", "budget", "deadline",
    "dinner", "ticket", "train", "weather",
];

fn words(seq: u64, n: usize) -> String {
    (0..n)
        .map(|i| TEXT[(seq as usize * 7 + i * 13 + i * i) % TEXT.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

type Sink = futures_util::stream::SplitSink<Socket, ws::Message>;

/// A sender: messages `"[tag ]seq sent_ns"` to `pk` until the run stops,
/// each taking a window slot (freed by its acknowledgement); then waits,
/// bounded, for the window to drain, and holds the connection open until
/// the run aborts it.
async fn send_paced(
    mut sink: Sink,
    window: Rc<Semaphore>,
    pk: String,
    tag: Option<usize>,
    pacing: Pacing,
    sent: Rc<RefCell<u64>>,
) {
    let mut seq = 0u64;
    // At a fixed rate the schedule is the run's, from its origin, not this
    // task's: every message due before the end is sent, a late one at once,
    // so a generator short of CPU sends late rather than fewer (the count
    // is the rate's, which tests/bench.rs checks on a loaded machine).
    let mut next = pacing.origin + pacing.offset;
    loop {
        match pacing.interval {
            Some(interval) => {
                next += interval;
                if next >= pacing.stop_at {
                    break;
                }
                tokio::time::sleep_until(next.into()).await;
            }
            None if Instant::now() >= pacing.stop_at => break,
            None => {}
        }
        let Ok(permit) = window.acquire().await else {
            break;
        };
        permit.forget();
        let now = pacing.origin.elapsed().as_nanos();
        let mut content = match tag {
            Some(tag) => format!("{tag} {seq} {now}"),
            None => format!("{seq} {now}"),
        };
        if pacing.words > 0 {
            content.push(' ');
            content.push_str(&words(seq, pacing.words));
        }
        let mut data = json!({"to": pk, "content": content});
        if pacing.client_ids {
            data["client_id"] = json!(format!("bench-{seq}"));
        }
        let text = json!({"type": "message", "data": data}).to_string();
        if sink.send(ws::Message::Text(text.into())).await.is_err() {
            break;
        }
        seq += 1;
        *sent.borrow_mut() += 1;
    }
    pacing.sending.set(pacing.sending.get() - 1);
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        window.acquire_many(pacing.window.max(1) as u32),
    )
    .await;
    std::future::pending::<()>().await;
    drop(sink);
}

/// Options of `bench idle`.
#[derive(Debug, Clone)]
pub struct IdleOptions {
    pub url: String,
    pub users: usize,
    pub sessions: usize,
    pub server_pid: Option<u32>,
    pub sources: usize,
    pub messages: usize,
    /// Seconds over which the idle server's CPU time is sampled (0: not sampled).
    pub cpu_seconds: u64,
    /// Sessions that each send one 60 KiB frame once all are idle; the RSS
    /// is read again after, to see whether their buffers were given back.
    pub large: usize,
    /// Each idle user gets a direct conversation (users in pairs).
    pub paired: bool,
    /// Each session asks `get_contacts` once authorized.
    pub contacts: bool,
}

/// Size of the frame `large` sessions send.
pub const LARGE_FRAME_BYTES: usize = 60 * 1024;

/// The outcome of an idle run.
#[derive(Debug, serde::Serialize)]
pub struct IdleReport {
    pub sessions: usize,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub kib_per_session: Option<f64>,
    /// RSS with half the sessions open, and the growth per session from
    /// there to all of them: the per-session cost without what is bounded
    /// (caches, pools) and filled by the first sessions.
    pub rss_half_kib: Option<u64>,
    pub slope_kib_per_session: Option<f64>,
    /// The kernel's TCP socket memory before the sessions and with all of
    /// them open (both ends are on this machine: the client's too).
    pub tcp_socket_kib_before: Option<u64>,
    pub tcp_socket_kib_after: Option<u64>,
    /// The server's CPU time while every session was idle, in % of one core.
    pub idle_cpu_percent: Option<f64>,
    /// RSS once `large` sessions sent a 60 KiB frame each, and its growth per
    /// such session (≈ 0 when their buffers were released).
    pub rss_after_large_kib: Option<u64>,
    pub large_kib_per_session: Option<f64>,
    pub messages: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// CPU time (user + system) the process has used so far.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf reads a constant of the running system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// The CPU time (user + system) each process named `name` (`/proc/*/comm`)
/// has used so far: a database server's processes, e.g. `postgres` (its
/// backends, WAL writer, checkpointer). `None` when there is none.
fn processes_cpu(name: &str) -> Option<HashMap<u32, Duration>> {
    let found: HashMap<u32, Duration> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            // A process may end between the listing and its reading: skipped.
            (comm.trim_end() == name).then(|| cpu_time(pid).map(|cpu| (pid, cpu)))?
        })
        .collect();
    (!found.is_empty()).then_some(found)
}

/// What the processes of `end` (`processes_cpu`) used since `start`: each
/// one's time since its reading in `start`, or since it began if it was
/// not there. A process that ended in between is not counted at all,
/// rather than taking its whole time off the others'.
fn cpu_since(start: &HashMap<u32, Duration>, end: &HashMap<u32, Duration>) -> Duration {
    end.iter()
        .map(|(pid, &cpu)| cpu.saturating_sub(start.get(pid).copied().unwrap_or_default()))
        .sum()
}

/// What the processes named `name` used since `start` (both read with
/// `processes_cpu`); `None` when either was not read.
fn processes_cpu_since(
    name: Option<&str>,
    start: Option<HashMap<u32, Duration>>,
) -> Option<Duration> {
    name.and_then(processes_cpu)
        .zip(start)
        .map(|(end, start)| cpu_since(&start, &end))
}

/// The kernel's memory for TCP sockets, all of them (`/proc/net/sockstat`,
/// `TCP: … mem N`, in pages): what RSS does not count.
fn tcp_socket_kib() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mem")?;
    let pages: u64 = words.next()?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the running system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page).ok().map(|p| pages * p / 1024)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `bench idle`.
pub async fn idle(opts: IdleOptions) -> Result<IdleReport, BenchError> {
    let limit = raise_fd_limit();
    if opts.sessions as u64 + 100 > limit {
        return Err(setup(
            "fd limit",
            format!(
                "{} sessions need more than this process's {limit} open files",
                opts.sessions
            ),
        ));
    }
    let clients = Clients::new(opts.sources);
    let base = opts.url.trim_end_matches('/').to_string();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let users = opts.users.max(2);
    let mut accounts = Vec::new();
    for i in 0..users {
        accounts.push(register(clients.get(i), &base, &format!("i{run}u{i}")).await?);
    }
    let pk = add_contact(
        clients.get(0),
        &base,
        &accounts[0].token,
        &accounts[1].username,
    )
    .await?;
    let idle_from = if users > 2 { 2 } else { 0 };
    if opts.paired {
        eprintln!("pairing {} users…", users - idle_from);
        for pair in accounts[idle_from..].chunks(2) {
            if let [a, b] = pair {
                add_contact(clients.get(0), &base, &a.token, &b.username).await?;
            }
        }
    }
    let rss_before = opts.server_pid.and_then(rss_kib);
    let sockets_before = tcp_socket_kib();
    let mut rss_half = None;
    eprintln!("opening {} sessions…", opts.sessions);
    let ws_base = ws_url(&base);
    let mut held = Vec::with_capacity(opts.sessions);
    let (go_large, large_signal) = tokio::sync::watch::channel(false);
    let large_text = {
        let content = "x".repeat(LARGE_FRAME_BYTES - 64);
        json!({"type": "message", "data": {"to": pk, "content": content}}).to_string()
    };
    for i in 0..opts.sessions {
        // Idle sessions belong to the users not timed below, when there are any.
        let idle_users = &accounts[idle_from..];
        // A user's sessions open one after another, so half the sessions
        // are half the users with all of theirs.
        let per_user = opts.sessions.div_ceil(idle_users.len());
        let account = &idle_users[(i / per_user) % idle_users.len()].token;
        let mut socket = open_session(clients.get(i), &ws_base, account).await?;
        if opts.contacts {
            let ask = json!({"type": "get_contacts", "data": {}}).to_string();
            socket
                .send(ws::Message::Text(ask.into()))
                .await
                .map_err(|e| setup("get_contacts", e))?;
            loop {
                match tokio::time::timeout(Duration::from_secs(10), socket.next()).await {
                    Ok(Some(Ok(ws::Frame::Text(bytes))))
                        if bytes.starts_with(b"{\"type\":\"get_contacts_response\"") =>
                    {
                        break
                    }
                    Ok(Some(Ok(_))) => continue,
                    other => return Err(setup("get_contacts", format!("{other:?}"))),
                }
            }
        }
        // Answer pings so the server keeps the session, and read whatever
        // comes; the first `large` send one large frame when told.
        let mut large = (i < opts.large).then(|| (large_signal.clone(), large_text.clone()));
        held.push(actix_rt::spawn(async move {
            loop {
                let signal = async {
                    match large.as_mut() {
                        Some((signal, _)) => signal.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    frame = socket.next() => match frame {
                        Some(Ok(ws::Frame::Ping(p))) => {
                            let _ = socket.send(ws::Message::Pong(p)).await;
                        }
                        Some(Ok(_)) => {}
                        _ => return,
                    },
                    true = signal => {
                        if let Some((_, text)) = large.take() {
                            let _ = socket.send(ws::Message::Text(text.into())).await;
                        }
                    }
                }
            }
        }));
        if i % 1000 == 999 {
            eprintln!("  {} open", i + 1);
        }
        if i + 1 == opts.sessions / 2 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            rss_half = opts.server_pid.and_then(rss_kib);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = opts.server_pid.and_then(rss_kib);
    let sockets_after = tcp_socket_kib();

    // Idle CPU: heartbeats and timers only.
    let idle_cpu_percent = match opts.server_pid {
        Some(pid) if opts.cpu_seconds > 0 => {
            eprintln!("sampling idle CPU for {} s…", opts.cpu_seconds);
            let before = cpu_time(pid);
            let window = Instant::now();
            tokio::time::sleep(Duration::from_secs(opts.cpu_seconds)).await;
            let after = cpu_time(pid);
            match (before, after) {
                (Some(b), Some(a)) => {
                    Some(100.0 * a.saturating_sub(b).as_secs_f64() / window.elapsed().as_secs_f64())
                }
                _ => None,
            }
        }
        _ => None,
    };

    // Large frames: each of the first `large` sessions sends one, which the
    // server reads whole (and refuses: the content is too long).
    let (rss_after_large, large_per) = if opts.large > 0 {
        eprintln!(
            "{} sessions send one {LARGE_FRAME_BYTES}-byte frame each…",
            opts.large
        );
        let _ = go_large.send(true);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss = opts.server_pid.and_then(rss_kib);
        let per = match (rss_after, rss) {
            (Some(idle), Some(now)) => Some((now as f64 - idle as f64) / opts.large as f64),
            _ => None,
        };
        (rss, per)
    } else {
        (None, None)
    };

    // A message between two of them, timed.
    let mut sender = open_session(clients.get(0), &ws_base, &accounts[0].token).await?;
    let mut receiver = open_session(clients.get(1), &ws_base, &accounts[1].token).await?;
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    for n in 0..opts.messages {
        let started = Instant::now();
        let text = json!({"type": "message", "data": {"to": pk, "content": format!("idle {n}")}})
            .to_string();
        sender
            .send(ws::Message::Text(text.into()))
            .await
            .map_err(|e| setup("send", e))?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), receiver.next()).await {
                Ok(Some(Ok(ws::Frame::Text(bytes))))
                    if bytes.windows(10).any(|w| w == b"\"received\"") =>
                {
                    break
                }
                Ok(Some(Ok(_))) => continue,
                other => return Err(setup("idle message", format!("{other:?}"))),
            }
        }
        let _ = h.record(started.elapsed().as_micros().max(1) as u64);
        // Drain the sender's ack and echo without timing them.
        while let Ok(Some(Ok(_))) =
            tokio::time::timeout(Duration::from_millis(1), sender.next()).await
        {}
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let per = match (rss_before, rss_after) {
        (Some(b), Some(a)) if opts.sessions > 0 => {
            Some(a.saturating_sub(b) as f64 / opts.sessions as f64)
        }
        _ => None,
    };
    for session in held {
        session.abort();
    }
    let slope = match (rss_half, rss_after) {
        (Some(h), Some(a)) if opts.sessions >= 2 => {
            Some((a as f64 - h as f64) / (opts.sessions - opts.sessions / 2) as f64)
        }
        _ => None,
    };
    Ok(IdleReport {
        rss_half_kib: rss_half,
        slope_kib_per_session: slope,
        tcp_socket_kib_before: sockets_before,
        tcp_socket_kib_after: sockets_after,
        sessions: opts.sessions,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        kib_per_session: per,
        idle_cpu_percent,
        rss_after_large_kib: rss_after_large,
        large_kib_per_session: large_per,
        messages: opts.messages,
        p50_ms: ms(&h, 0.5),
        p99_ms: ms(&h, 0.99),
        max_ms: h.max() as f64 / 1000.0,
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_since_counts_each_process_from_its_own_first_reading() {
        let s = Duration::from_secs;
        // 1 ran on, 2 ended, 3 began.
        let start = HashMap::from([(1, s(5)), (2, s(3))]);
        let end = HashMap::from([(1, s(6)), (3, s(2))]);
        assert_eq!(cpu_since(&start, &end), s(3));
        assert_eq!(cpu_since(&end, &end), Duration::ZERO);
    }

    #[test]
    fn processes_are_found_by_name() {
        let name = std::fs::read_to_string("/proc/self/comm").expect("Linux names every process");
        let found = processes_cpu(name.trim_end()).expect("this process has that name");
        assert!(found.contains_key(&std::process::id()), "{found:?}");
        assert_eq!(processes_cpu("no process is called this"), None);
    }
}
