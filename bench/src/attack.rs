//! `chat-bench attack`: what one abusive account costs everyone else. A
//! bystander (bob) writes to carol 50 times a second the whole run; carol
//! is also a member of the attacker's group of N connected members. The
//! send→delivery latency of bob's messages is measured with nobody
//! attacking, then while the attacker (mallory) repeats one pattern as
//! fast as the server lets her (issue #26):
//!
//! - `rename`: renames her group in a loop over REST (4 at a time);
//! - `fanout`: messages into the group as fast as she can send;
//! - `typing`: typing notices into the group as fast as she can send;
//! - `reconnect`: opens and closes sessions in a loop (4 at a time), each
//!   one a presence change for her group.
//! - `roster`: asks for her group with its member list (`get_contact`) as
//!   fast as she can send: each answer is every member's profile.
//! - `read`: read marks for her group, each a little further than the
//!   last (`up_to` 1, 2, 3, …), as fast as she can send: in a group of at
//!   most 100 each one that moves is pushed to every member (B4); a mark
//!   goes no further than the group's newest message.
//! - `history`: pages of her group's history (`get_messages`, 50 a page)
//!   as fast as she can send; `--history N` first writes N messages into
//!   her first group, so that the pages are full.
//!
//! With `--groups G` she owns G groups of the same members, and the
//! flooding patterns (`fanout`, `typing`, `roster`, `read`, `history`)
//! take them in turn: what a limit per conversation lets through, times G. With
//! `--sockets S` she floods from S sockets at once, sharing the rate:
//! what a limit per session lets through, times S.
//!
//! Each pattern is followed by a pause, so the next starts from quiet. The
//! attacker runs on a thread of its own: on one thread with the probes and
//! the members' readers, its flood would starve them, and the server would
//! see readers that stopped reading.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_http::ws;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::Semaphore;

use super::group::{accept_all, create_group};
use super::{
    add_contact, message_push, ms, open_session, raise_fd_limit, register, setup, ws_url,
    BenchError, Clients,
};

/// One attack pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    Rename,
    Fanout,
    Typing,
    Reconnect,
    Roster,
    Read,
    History,
}

impl Pattern {
    /// Whether the pattern floods sockets (the others make REST requests
    /// or open sockets).
    fn floods(self) -> bool {
        matches!(
            self,
            Pattern::Fanout | Pattern::Typing | Pattern::Roster | Pattern::Read | Pattern::History
        )
    }
}

/// Options of `bench attack`.
#[derive(Debug, Clone)]
pub struct AttackOptions {
    pub url: String,
    /// Members of the attacker's group, all connected (carol among them).
    pub members: usize,
    /// Groups of those members the attacker owns (at least 1).
    pub groups: usize,
    /// Sockets the flooding patterns send from (at least 1).
    pub sockets: usize,
    /// Messages written into her first group before the phases.
    pub history: usize,
    /// How long each phase lasts.
    pub phase: Duration,
    /// The attacker's requests (or frames) per second, in total: one
    /// client's worth, not what saturates this machine's other core.
    pub rate: u64,
    pub patterns: Vec<Pattern>,
}

/// The bystander's latency over one phase.
#[derive(Debug, serde::Serialize)]
pub struct Phase {
    /// `None` for the quiet phase.
    pub pattern: Option<Pattern>,
    /// The attacker's requests, and how many the server refused
    /// (`rate_limited`/429) or ignored.
    pub attacker_requests: u64,
    pub attacker_refused: u64,
    pub bystander_messages: u64,
    pub bystander_lost: u64,
    /// Typing notices and read marks carol (in all the attacker's groups)
    /// was pushed during the phase.
    pub member_notices: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// p99 over the quiet phase's p99.
    pub p99_ratio: f64,
}

/// The outcome of `bench attack`.
#[derive(Debug, serde::Serialize)]
pub struct AttackReport {
    pub members: usize,
    pub groups: usize,
    pub sockets: usize,
    pub phases: Vec<Phase>,
}

/// What the bystander's receiver saw: delivery latency by send time.
#[derive(Default)]
struct Probe {
    /// (sent, µs from send to delivery).
    delivered: Vec<(Duration, u64)>,
    /// Send times of every message bob sent.
    sent: Vec<Duration>,
    /// When carol got each `typing` or `read` push.
    notices: Vec<Duration>,
}

/// The attacker's tally in the current phase.
#[derive(Debug, Default)]
struct Tally {
    requests: u64,
    refused: u64,
}

/// What the attacker's thread works with.
struct Run {
    base: String,
    clients: Clients,
    token: String,
    /// Her groups; the first is the one renamed.
    pks: Vec<String>,
    /// Between two requests of one worker.
    every: Duration,
    /// The last `up_to` marked read (pattern `read`), over every socket.
    marks: std::cell::Cell<u64>,
    tally: Rc<RefCell<Tally>>,
}

impl Run {
    fn pace(&self, interval: Duration) -> tokio::time::Interval {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    }
}

/// Runs `bench attack`.
pub async fn attack(opts: AttackOptions) -> Result<AttackReport, BenchError> {
    raise_fd_limit();
    let members = opts.members.max(3);
    let clients = Clients::new(8);
    let base = opts.url.trim_end_matches('/').to_string();
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    eprintln!("registering mallory, bob and {} members…", members - 1);
    let mallory = register(clients.get(0), &base, &format!("a{tag}mallory")).await?;
    let bob = register(clients.get(1), &base, &format!("a{tag}bob")).await?;
    let limit = Arc::new(Semaphore::new(16));
    let registrations = (0..members - 1).map(|i| {
        let (client, base, limit) = (clients.get(i).clone(), base.clone(), limit.clone());
        let name = format!("a{tag}m{i}");
        async move {
            let _permit = limit.acquire().await.map_err(|e| setup("setup", e))?;
            register(&client, &base, &name).await
        }
    });
    // The first of them is carol, the bystander's correspondent.
    let others = futures_util::future::try_join_all(registrations).await?;
    let ids: Vec<i64> = others.iter().map(|a| a.id).collect();
    let mut pks = Vec::new();
    for _ in 0..opts.groups.max(1) {
        let pk = create_group(clients.get(0), &base, &mallory, &ids).await?;
        accept_all(&clients, |_| base.clone(), &others, &pk).await?;
        pks.push(pk);
    }
    if opts.history > 0 {
        eprintln!("writing {} messages of history…", opts.history);
        let socket = open_session(clients.get(0), &ws_url(&base), &mallory.token).await?;
        write_history(socket, &pks[0], opts.history).await?;
    }
    let direct = add_contact(clients.get(1), &base, &bob.token, &others[0].username).await?;

    eprintln!("opening {} sessions…", members + 1);
    let ws_base = ws_url(&base);
    let probe = Rc::new(RefCell::new(Probe::default()));
    let origin = Instant::now();
    let carol = open_session(clients.get(0), &ws_base, &others[0].token).await?;
    actix_rt::spawn(receive_probe(carol, probe.clone(), origin));
    for (i, member) in others.iter().enumerate().skip(1) {
        let socket = open_session(clients.get(i), &ws_base, &member.token).await?;
        actix_rt::spawn(drain(socket));
    }
    let bob_socket = open_session(clients.get(1), &ws_base, &bob.token).await?;
    actix_rt::spawn(send_probe(bob_socket, direct, probe.clone(), origin));

    drop(clients);
    let mut phases = Vec::new();
    let mut quiet_p99 = 0.0;
    for pattern in std::iter::once(None).chain(opts.patterns.iter().copied().map(Some)) {
        eprintln!(
            "phase: {}",
            pattern.map_or("quiet".into(), |p| format!("{p:?}"))
        );
        let start = origin.elapsed();
        let stop_at = Instant::now() + opts.phase;
        let attack = pattern.map(|p| {
            let (base, token, pks) = (base.clone(), mallory.token.clone(), pks.clone());
            let (rate, sockets) = (opts.rate.max(1), opts.sockets.max(1));
            std::thread::spawn(move || {
                let attack = attack_thread(base, token, pks, p, rate, sockets, stop_at);
                actix_rt::System::new().block_on(attack)
            })
        });
        tokio::time::sleep_until(stop_at.into()).await;
        let tally = match attack {
            Some(thread) => thread
                .join()
                .map_err(|_| setup("attacker", "its thread panicked"))?,
            None => Tally::default(),
        };
        let end = origin.elapsed();
        // Let the last probes of the phase arrive, and the server calm down.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut phase = measure(&probe.borrow(), start, end, pattern, &tally)?;
        if pattern.is_none() {
            quiet_p99 = phase.p99_ms.max(0.001);
        }
        phase.p99_ratio = phase.p99_ms / quiet_p99;
        phases.push(phase);
    }
    Ok(AttackReport {
        members,
        groups: pks.len(),
        sockets: opts.sockets.max(1),
        phases,
    })
}

fn measure(
    probe: &Probe,
    start: Duration,
    end: Duration,
    pattern: Option<Pattern>,
    tally: &Tally,
) -> Result<Phase, BenchError> {
    let within = |t: &Duration| *t >= start && *t < end;
    let mut hist = Histogram::<u64>::new(3).map_err(|e| setup("histogram", e))?;
    let mut delivered = 0;
    for (_, micros) in probe.delivered.iter().filter(|(t, _)| within(t)) {
        let _ = hist.record((*micros).max(1));
        delivered += 1;
    }
    let sent = probe.sent.iter().filter(|t| within(t)).count() as u64;
    let notices = probe.notices.iter().filter(|t| within(t)).count() as u64;
    Ok(Phase {
        pattern,
        attacker_requests: tally.requests,
        attacker_refused: tally.refused,
        bystander_messages: sent,
        bystander_lost: sent.saturating_sub(delivered),
        member_notices: notices,
        p50_ms: ms(&hist, 0.5),
        p99_ms: ms(&hist, 0.99),
        max_ms: hist.max() as f64 / 1000.0,
        p99_ratio: 1.0,
    })
}

/// Bob: a message to carol every 20 ms, its send time in its content.
async fn send_probe(socket: super::Socket, pk: String, probe: Rc<RefCell<Probe>>, origin: Instant) {
    let (mut sink, mut incoming) = socket.split();
    actix_rt::spawn(async move { while incoming.next().await.is_some() {} });
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        let sent = origin.elapsed();
        let content = format!("probe {}", sent.as_nanos());
        let text = json!({"type": "message", "data": {"to": pk, "content": content}});
        if sink
            .send(ws::Message::Text(text.to_string().into()))
            .await
            .is_err()
        {
            return;
        }
        probe.borrow_mut().sent.push(sent);
    }
}

/// Carol: times bob's probes and counts the notices she is pushed;
/// everything else she gets is read and dropped.
async fn receive_probe(socket: super::Socket, probe: Rc<RefCell<Probe>>, origin: Instant) {
    let (mut sink, mut incoming) = socket.split();
    while let Some(Ok(frame)) = incoming.next().await {
        let bytes = match frame {
            ws::Frame::Text(bytes) => bytes,
            ws::Frame::Ping(payload) => {
                // Unanswered pings end a session after CLIENT_TIMEOUT_SECONDS.
                let _ = sink.send(ws::Message::Pong(payload)).await;
                continue;
            }
            _ => continue,
        };
        if frame_is(&bytes, "typing") || frame_is(&bytes, "read") {
            probe.borrow_mut().notices.push(origin.elapsed());
            continue;
        }
        let Some(push) = message_push(&bytes) else {
            continue;
        };
        let Some(Ok(sent)) = push
            .data
            .content
            .strip_prefix("probe ")
            .map(str::parse::<u64>)
        else {
            continue;
        };
        let sent = Duration::from_nanos(sent);
        let micros = origin.elapsed().saturating_sub(sent).as_micros() as u64;
        probe.borrow_mut().delivered.push((sent, micros));
    }
}

/// Sends `count` messages into `pk`, as fast as they are acknowledged (a
/// refusal, past the fan-out budget, is sent again a moment later).
async fn write_history(socket: super::Socket, pk: &str, count: usize) -> Result<(), BenchError> {
    let (mut sink, mut incoming) = socket.split();
    let mut acked = 0;
    while acked < count {
        let batch = (count - acked).min(100);
        for n in 0..batch {
            let content = format!("history {} of {count}", acked + n);
            let frame = json!({"type": "message", "data": {"to": pk, "content": content}});
            sink.send(ws::Message::Text(frame.to_string().into()))
                .await
                .map_err(|e| setup("history", e))?;
        }
        let (mut answered, mut refused) = (0, false);
        while answered < batch {
            match incoming.next().await {
                Some(Ok(ws::Frame::Text(bytes))) if frame_is(&bytes, "message_response") => {
                    answered += 1;
                    if bytes.windows(9).any(|w| w == b"\"success\"") {
                        acked += 1;
                    } else {
                        refused = true;
                    }
                }
                Some(Ok(_)) => {}
                other => return Err(setup("history", format!("{other:?}"))),
            }
        }
        if refused {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Whether a JSON frame is of type `kind` (the server writes no space
/// after the colon; a space is allowed).
fn frame_is(bytes: &[u8], kind: &str) -> bool {
    bytes.starts_with(format!(r#"{{"type": "{kind}""#).as_bytes())
        || bytes.starts_with(format!(r#"{{"type":"{kind}""#).as_bytes())
}

/// A member: reads everything, answers pings.
async fn drain(socket: super::Socket) {
    let (mut sink, mut incoming) = socket.split();
    while let Some(Ok(frame)) = incoming.next().await {
        if let ws::Frame::Ping(payload) = frame {
            let _ = sink.send(ws::Message::Pong(payload)).await;
        }
    }
}

/// The attacker's thread: workers repeat `pattern` until `stop_at`, one
/// per socket when it floods sockets, else four.
async fn attack_thread(
    base: String,
    token: String,
    pks: Vec<String>,
    pattern: Pattern,
    rate: u64,
    sockets: usize,
    stop_at: Instant,
) -> Tally {
    let workers = if pattern.floods() { sockets } else { 4 };
    let run = Rc::new(Run {
        base,
        clients: Clients::new(workers),
        token,
        pks,
        // The workers share the rate.
        every: Duration::from_secs_f64(workers as f64 / rate as f64),
        marks: std::cell::Cell::new(0),
        tally: Rc::new(RefCell::new(Tally::default())),
    });
    let workers = (0..workers).map(|worker| attacker(run.clone(), pattern, worker, stop_at));
    let _ = tokio::time::timeout_at(stop_at.into(), futures_util::future::join_all(workers)).await;
    run.tally.take()
}

/// One of mallory's workers, repeating `pattern` until `stop_at`.
async fn attacker(run: Rc<Run>, pattern: Pattern, worker: usize, stop_at: Instant) {
    let client = run.clients.get(worker).clone();
    match pattern {
        Pattern::Rename => {
            let mut n = 0u64;
            let mut tick = run.pace(run.every);
            while Instant::now() < stop_at {
                tick.tick().await;
                n += 1;
                let res = client
                    .patch(format!("{}/api/groups/{}/", run.base, run.pks[0]))
                    .bearer_auth(&run.token)
                    .send_json(&json!({"title": format!("renamed {worker} {n}")}))
                    .await;
                count(&run, res.map(|r| r.status().is_success()).unwrap_or(false));
            }
        }
        Pattern::Reconnect => {
            let ws_base = ws_url(&run.base);
            let mut tick = run.pace(run.every);
            while Instant::now() < stop_at {
                tick.tick().await;
                let opened = open_session(&client, &ws_base, &run.token).await;
                count(&run, opened.is_ok());
                if let Ok(mut socket) = opened {
                    let _ = socket.close().await;
                }
            }
        }
        // The patterns that flood sockets (`Pattern::floods`).
        _ => flood(&run, pattern, &client, stop_at).await,
    }
}

fn count(run: &Run, accepted: bool) {
    let mut tally = run.tally.borrow_mut();
    tally.requests += 1;
    if !accepted {
        tally.refused += 1;
    }
}

/// Messages, typing notices, roster requests, read marks or history pages
/// for her groups in turn, as fast as
/// the socket takes them; refusals counted (typing has no answer: every
/// notice counts as sent).
async fn flood(run: &Rc<Run>, pattern: Pattern, client: &awc::Client, stop_at: Instant) {
    // The server may close a socket that floods it: open another.
    while Instant::now() < stop_at {
        let Ok(socket) = open_session(client, &ws_url(&run.base), &run.token).await else {
            count(run, false);
            continue;
        };
        flood_socket(run, pattern, socket, stop_at).await;
    }
}

async fn flood_socket(run: &Rc<Run>, pattern: Pattern, socket: super::Socket, stop_at: Instant) {
    let (mut sink, mut incoming) = socket.split();
    let reader_run = run.clone();
    actix_rt::spawn(async move {
        while let Some(Ok(ws::Frame::Text(bytes))) = incoming.next().await {
            let answer = |kind: &str| frame_is(&bytes, kind);
            let refused = if answer("message_response") {
                !bytes.windows(9).any(|w| w == b"\"success\"")
            } else if answer("get_contact_response")
                || answer("read_response")
                || answer("get_messages_response")
            {
                bytes.windows(7).any(|w| w == b"\"error\"")
            } else {
                false
            };
            if refused {
                reader_run.tally.borrow_mut().refused += 1;
            }
        }
    });
    let mut n = 0u64;
    let mut tick = run.pace(run.every);
    while Instant::now() < stop_at {
        tick.tick().await;
        n += 1;
        let pk = &run.pks[n as usize % run.pks.len()];
        let frame = match pattern {
            Pattern::Typing => json!({"type": "typing", "data": {"id": pk}}),
            Pattern::Roster => json!({"type": "get_contact", "data": {"id": pk}}),
            Pattern::History => json!({"type": "get_messages", "data": {"id": pk, "limit": 50}}),
            Pattern::Read => {
                let up_to = run.marks.get() + 1;
                run.marks.set(up_to);
                json!({"type": "read", "data": {"id": pk, "up_to": up_to}})
            }
            _ => json!({"type": "message", "data": {"to": pk, "content": format!("flood {n}")}}),
        };
        if sink
            .send(ws::Message::Text(frame.to_string().into()))
            .await
            .is_err()
        {
            return;
        }
        run.tally.borrow_mut().requests += 1;
    }
}
