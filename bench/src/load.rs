//! `load`: N pairs; each pair's first user sends to the second, at a fixed
//! total rate or as fast as a window of W unacknowledged messages allows.
//! Receivers measure send→receive latency and count lost, duplicated and
//! out-of-order messages; `--reactions`/`--edits` add the realistic mix
//! (`changes.rs`), `--history-pages` times the newest page of history after.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_http::ws;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::batches::Batches;
use crate::measure::{
    per_delivery, processes_cpu, processes_cpu_since, servers_cpu_time, MachineTime,
};
use crate::net::Clients;
use crate::{
    add_contact, changes, message_push, ms, open_session, raise_fd_limit, register, setup, ws_url,
    BenchError, Frame, Socket,
};

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
    /// The share of the machine's time its hypervisor took over the same
    /// window, in per cent: a CPU figure measured while the host took much
    /// is not comparable with one measured while it took none.
    pub host_steal_percent: Option<f64>,
    /// Writes (messages, edits, reactions) a committed batch held over the
    /// run, from the servers' `/metrics` (`None`: not readable). The CPU
    /// figures depend on it: a batch of hundreds costs a message far less
    /// than a batch of one.
    pub writes_per_batch: Option<f64>,
}

#[derive(Deserialize)]
struct AckId {
    #[serde(default)]
    id: Option<i64>,
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

    let batches_before = Batches::read(clients.get(0), &opts.urls).await;
    let cpu_before = servers_cpu_time(&opts.server_pids);
    let database_before = opts.database_process.as_deref().and_then(processes_cpu);
    let machine_before = MachineTime::now();
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
    let host_steal_percent = MachineTime::stolen_percent(machine_before, MachineTime::now());
    let batches_after = Batches::read(clients.get(0), &opts.urls).await;
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
        host_steal_percent,
        writes_per_batch: Batches::per_batch(batches_before, batches_after),
    })
}

/// When a sender sends: the run's clock, its stop, and its rate.
pub(crate) struct Pacing {
    /// Between two of this sender's messages; `None`: as fast as the window allows.
    pub(crate) interval: Option<Duration>,
    /// Where in the interval this sender starts, so senders spread evenly.
    pub(crate) offset: Duration,
    pub(crate) stop_at: Instant,
    pub(crate) origin: Instant,
    pub(crate) window: usize,
    /// Words of text appended to each message.
    pub(crate) words: usize,
    /// Whether each message carries a `client_id`, as the web client's do.
    pub(crate) client_ids: bool,
    /// How many senders are still sending; each takes itself off when done.
    pub(crate) sending: Rc<Cell<usize>>,
}

/// The longest a run waits for its senders to finish, and then for the
/// answers and deliveries of what they sent.
pub(crate) const DRAIN: Duration = Duration::from_secs(15);

/// Waits until every sender has sent what was due before the end (one
/// short of CPU may still be catching up then), at most until `deadline`.
pub(crate) async fn senders_finished(sending: &Cell<usize>, deadline: Instant) {
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

pub(crate) fn words(seq: u64, n: usize) -> String {
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
pub(crate) async fn send_paced(
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
