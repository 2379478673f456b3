//! `chat-bench group`: one group conversation of N connected members, spread
//! over one or more instances; some of them send, everyone else receives.
//! Measures the time from a message's send to its delivery to the **last**
//! member, deliveries per second, loss, and (given Redis) the Redis commands
//! each message cost.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_http::ws;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::Semaphore;

use super::{
    ms, open_session, raise_fd_limit, register, send_paced, senders_finished, setup, ws_url,
    Account, BenchError, Clients, Frame, Pacing, Push, Socket, DRAIN,
};

/// Options of `bench group`.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// Instances; member i connects to `urls[i % len]`.
    pub urls: Vec<String>,
    pub members: usize,
    /// How many of the members send (the first ones).
    pub senders: usize,
    pub duration: Duration,
    /// Messages per second in total; 0 = as fast as the window allows.
    pub rate: u64,
    pub window: usize,
    pub sources: usize,
    /// A Redis to read `INFO commandstats` from, before and after.
    pub redis: Option<String>,
}

/// The outcome of a group run.
#[derive(Debug, serde::Serialize)]
pub struct GroupReport {
    pub members: usize,
    pub instances: usize,
    pub sent: u64,
    pub acked: u64,
    /// Messages every member received.
    pub complete: u64,
    /// Deliveries missing from acknowledged messages.
    pub lost: u64,
    pub dup: u64,
    pub deliveries: u64,
    pub seconds: f64,
    pub msgs_per_sec: f64,
    pub deliveries_per_sec: f64,
    /// Send to the last member's delivery.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub redis_commands_per_msg: Option<f64>,
    pub redis_publishes_per_msg: Option<f64>,
    /// After the messages, members leave one after the other (each a
    /// change of the group under its lock): how many, and the time each
    /// REST call took.
    pub leaves: usize,
    pub leave_p50_ms: f64,
    pub leave_max_ms: f64,
}

/// How many members leave after the messages, at most.
const LEAVES: usize = 20;

/// The last `LEAVES` members (never the owner) leave the group one after
/// the other; returns each leave's time in milliseconds, sorted.
async fn leave_one_by_one(
    client: &awc::Client,
    base: &str,
    pk: &str,
    accounts: &[Account],
) -> Result<Vec<f64>, BenchError> {
    let mut times = Vec::new();
    for account in accounts.iter().skip(1).rev().take(LEAVES) {
        let start = Instant::now();
        let res = client
            .delete(format!("{base}/api/groups/{pk}/members/{}/", account.id))
            .bearer_auth(&account.token)
            .send()
            .await
            .map_err(|e| setup("leave the group", e))?;
        if !res.status().is_success() {
            return Err(setup("leave the group", res.status()));
        }
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// One message on its way to every member.
#[derive(Default)]
struct Fanout {
    received: usize,
    slowest_ns: u128,
}

#[derive(Default)]
struct Tally {
    acked: u64,
    errors: u64,
    deliveries: u64,
    dup: u64,
    /// (sender, seq) → progress; receivers seen, per message, in `seen`.
    fanout: HashMap<(usize, u64), Fanout>,
    seen: HashMap<(usize, usize, u64), ()>,
}

/// The text of Redis's `INFO section` (a plain TCP exchange: the bench
/// needs no Redis client for one command).
pub(crate) fn redis_info(url: &str, section: &str) -> Result<String, BenchError> {
    let address = url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .rsplit('@')
        .next()
        .unwrap_or("127.0.0.1:6379")
        .to_string();
    let mut stream =
        std::net::TcpStream::connect(&address).map_err(|e| setup("redis connect", e))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| setup("redis", e))?;
    stream
        .write_all(format!("INFO {section}\r\n").as_bytes())
        .map_err(|e| setup("redis INFO", e))?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 16384];
    // A bulk string: `$len\r\n` then the text; read until all of it is here.
    loop {
        let n = stream.read(&mut buf).map_err(|e| setup("redis read", e))?;
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        if let Some((head, body)) = text.split_once("\r\n") {
            let len: usize = head.trim_start_matches('$').parse().unwrap_or(0);
            if n == 0 || body.len() >= len {
                break;
            }
        }
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// (all commands, PUBLISHes) Redis has executed, from `INFO commandstats`.
pub(crate) fn redis_calls(url: &str) -> Result<(u64, u64), BenchError> {
    let text = redis_info(url, "commandstats")?;
    let (mut all, mut publishes) = (0, 0);
    for line in text.lines().filter(|l| l.starts_with("cmdstat_")) {
        let Some((name, stats)) = line.split_once(':') else {
            continue;
        };
        let calls: u64 = stats
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if name == "cmdstat_info" {
            continue;
        }
        all += calls;
        if name == "cmdstat_publish" || name == "cmdstat_spublish" {
            publishes += calls;
        }
    }
    Ok((all, publishes))
}

pub(crate) async fn create_group(
    client: &awc::Client,
    base: &str,
    owner: &Account,
    members: &[i64],
) -> Result<String, BenchError> {
    let mut res = client
        .post(format!("{base}/api/groups/"))
        .bearer_auth(&owner.token)
        .send_json(&json!({"title": "bench", "members": members}))
        .await
        .map_err(|e| setup("create group", e))?;
    let value: serde_json::Value = res
        .json()
        .limit(1 << 24)
        .await
        .map_err(|e| setup("group body", e))?;
    value["pk"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| setup("create group (is MAX_GROUP_MEMBERS large enough?)", value))
}

/// Times a member asks to accept while the server answers 503.
const ACCEPT_ATTEMPTS: usize = 10;

/// Every member accepts the invitation to the group (they never wrote to
/// its creator, so they were invited, not added: PROTOCOL.md C9).
pub(crate) async fn accept_all(
    clients: &Clients,
    url: impl Fn(usize) -> String,
    accounts: &[Account],
    pk: &str,
) -> Result<(), BenchError> {
    let limit = Arc::new(Semaphore::new(16));
    let accepts = accounts.iter().enumerate().map(|(i, account)| {
        let (client, limit) = (clients.get(i).clone(), limit.clone());
        let path = format!("{}/api/invitations/{pk}/accept/", url(i));
        async move {
            let _permit = limit.acquire().await.map_err(|e| setup("setup", e))?;
            // A 503 is the server asking for a moment (its database busy with
            // the other accepts): a client waits `Retry-After` and asks again.
            for _ in 0..ACCEPT_ATTEMPTS {
                let res = client
                    .post(path.as_str())
                    .bearer_auth(&account.token)
                    .send()
                    .await
                    .map_err(|e| setup("accept invitation", e))?;
                if res.status().is_success() {
                    return Ok(());
                }
                if res.status() != actix_http::StatusCode::SERVICE_UNAVAILABLE {
                    return Err(setup("accept invitation", res.status()));
                }
                let wait = res
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(1);
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            Err(setup("accept invitation", "still busy after every retry"))
        }
    });
    futures_util::future::try_join_all(accepts).await?;
    Ok(())
}

/// Registers the members (16 at a time), the first creates the group and
/// invites the others, and they accept: the accounts and the group's id.
async fn set_up(
    clients: &Clients,
    url: impl Fn(usize) -> String,
    members: usize,
) -> Result<(Vec<Account>, String), BenchError> {
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    eprintln!("registering {members} members…");
    let limit = Arc::new(Semaphore::new(16));
    let registrations = (0..members).map(|i| {
        let (client, base, limit, name) = (
            clients.get(i).clone(),
            url(i),
            limit.clone(),
            format!("g{run}m{i}"),
        );
        async move {
            let _permit = limit.acquire().await.map_err(|e| setup("setup", e))?;
            register(&client, &base, &name).await
        }
    });
    let accounts = futures_util::future::try_join_all(registrations).await?;
    let ids: Vec<i64> = accounts.iter().map(|a| a.id).collect();
    let pk = create_group(clients.get(0), &url(0), &accounts[0], &ids[1..]).await?;
    eprintln!("{} members accept the invitation…", members - 1);
    accept_all(clients, url, &accounts[1..], &pk).await?;
    Ok((accounts, pk))
}

/// Runs `bench group`.
pub async fn group(opts: GroupOptions) -> Result<GroupReport, BenchError> {
    raise_fd_limit();
    let members = opts.members.max(2);
    let senders = opts.senders.clamp(1, members);
    let clients = Clients::new(opts.sources);
    let url = |i: usize| {
        opts.urls[i % opts.urls.len()]
            .trim_end_matches('/')
            .to_string()
    };
    let (accounts, pk) = set_up(&clients, url, members).await?;

    eprintln!("opening {members} sessions…");
    let mut sockets = Vec::with_capacity(members);
    for (i, account) in accounts.iter().enumerate() {
        sockets.push(open_session(clients.get(i), &ws_url(&url(i)), &account.token).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let redis_before = opts.redis.as_deref().map(redis_calls).transpose()?;
    eprintln!(
        "{members} members connected; sending for {:?}…",
        opts.duration
    );

    let origin = Instant::now();
    let tally = Rc::new(RefCell::new(Tally::default()));
    let sent_total = Rc::new(RefCell::new(0u64));
    let sending = Rc::new(Cell::new(senders.min(sockets.len())));
    let stop_at = origin + opts.duration;
    let interval =
        (opts.rate > 0).then(|| Duration::from_secs_f64(senders as f64 / opts.rate as f64));
    let mut tasks = Vec::new();
    for (i, socket) in sockets.into_iter().enumerate() {
        let (sink, incoming) = socket.split();
        let window = Rc::new(Semaphore::new(opts.window.max(1)));
        tasks.push(actix_rt::spawn(receive(
            i,
            incoming,
            window.clone(),
            tally.clone(),
            origin,
        )));
        if i >= senders {
            // A receiver: keep its sending half alive for the run.
            tasks.push(actix_rt::spawn(async move {
                std::future::pending::<()>().await;
                drop(sink);
            }));
            continue;
        }
        let (pk, sent) = (pk.clone(), sent_total.clone());
        let offset = interval.map_or(Duration::ZERO, |iv| iv.mul_f64(i as f64 / senders as f64));
        let pacing = Pacing {
            interval,
            offset,
            stop_at,
            origin,
            window: opts.window,
            words: 0,
            client_ids: false,
            sending: sending.clone(),
        };
        tasks.push(actix_rt::spawn(send_paced(
            sink,
            window,
            pk,
            Some(i),
            pacing,
            sent,
        )));
    }
    tokio::time::sleep_until(stop_at.into()).await;
    senders_finished(&sending, stop_at + DRAIN).await;
    let send_phase = origin.elapsed();
    let receivers = members - 1;
    let drain_deadline = Instant::now() + DRAIN;
    loop {
        let done = {
            let t = tally.borrow();
            let answered = t.acked + t.errors >= *sent_total.borrow();
            answered && t.deliveries >= t.acked * receivers as u64
        };
        if done || Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for task in &tasks {
        task.abort();
    }
    let redis_after = opts.redis.as_deref().map(redis_calls).transpose()?;
    let leaves = leave_one_by_one(clients.get(0), &url(0), &pk, &accounts).await?;
    let sent = *sent_total.borrow();
    let seconds = send_phase.as_secs_f64();
    let redis = redis_before.zip(redis_after);
    let tally = tally.borrow();
    Ok(report(&opts, &tally, sent, seconds, redis, &leaves))
}

/// Counts what one member's session receives: answers to its messages
/// (each frees a slot of its window) and the group's messages, with the
/// time since each was sent.
async fn receive(
    member: usize,
    mut incoming: futures_util::stream::SplitStream<Socket>,
    window: Rc<Semaphore>,
    tally: Rc<RefCell<Tally>>,
    origin: Instant,
) {
    while let Some(Ok(frame)) = incoming.next().await {
        let ws::Frame::Text(bytes) = frame else {
            continue;
        };
        let Ok(frame) = serde_json::from_slice::<Frame>(&bytes) else {
            continue;
        };
        match frame.kind {
            "message_response" => {
                let ok = frame.data.is_some_and(|d| d.get().contains("\"success\""));
                let mut t = tally.borrow_mut();
                if ok {
                    t.acked += 1;
                } else {
                    t.errors += 1;
                }
                window.add_permits(1);
            }
            "message" => {
                let Some(push) = frame
                    .data
                    .and_then(|d| serde_json::from_str::<Push>(d.get()).ok())
                else {
                    continue;
                };
                if push.data.direction != "received" {
                    continue;
                }
                let mut parts = push.data.content.split(' ');
                let (Some(Ok(sender)), Some(Ok(seq)), Some(Ok(sent_ns))) = (
                    parts.next().map(str::parse::<usize>),
                    parts.next().map(str::parse::<u64>),
                    parts.next().map(str::parse::<u128>),
                ) else {
                    continue;
                };
                let now = origin.elapsed().as_nanos();
                let mut t = tally.borrow_mut();
                if t.seen.insert((member, sender, seq), ()).is_some() {
                    t.dup += 1;
                    continue;
                }
                t.deliveries += 1;
                let progress = t.fanout.entry((sender, seq)).or_default();
                progress.received += 1;
                progress.slowest_ns = progress.slowest_ns.max(now.saturating_sub(sent_ns));
            }
            _ => {}
        }
    }
}

/// The report of a run: each message's slowest delivery, among those that
/// reached every member, and Redis's commands per message (`redis`: its
/// calls and publishes before and after).
fn report(
    opts: &GroupOptions,
    t: &Tally,
    sent: u64,
    seconds: f64,
    redis: Option<((u64, u64), (u64, u64))>,
    leaves: &[f64],
) -> GroupReport {
    let members = opts.members.max(2);
    let receivers = members - 1;
    let mut h = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
    let mut complete = 0;
    for progress in t.fanout.values() {
        if progress.received >= receivers {
            complete += 1;
            let micros = (progress.slowest_ns / 1000).max(1) as u64;
            let _ = h.record(micros.min(120_000_000));
        }
    }
    let per_msg = |delta: u64| {
        if t.acked == 0 {
            0.0
        } else {
            delta as f64 / t.acked as f64
        }
    };
    let redis = redis.map(|((a0, p0), (a1, p1))| {
        // The INFO of the "after" read is not counted; the heartbeats are.
        (
            per_msg(a1.saturating_sub(a0)),
            per_msg(p1.saturating_sub(p0)),
        )
    });
    GroupReport {
        members,
        instances: opts.urls.len(),
        sent,
        acked: t.acked,
        complete,
        lost: (t.acked * receivers as u64).saturating_sub(t.deliveries),
        dup: t.dup,
        deliveries: t.deliveries,
        seconds,
        msgs_per_sec: t.acked as f64 / seconds,
        deliveries_per_sec: t.deliveries as f64 / seconds,
        p50_ms: ms(&h, 0.5),
        p99_ms: ms(&h, 0.99),
        max_ms: h.max() as f64 / 1000.0,
        redis_commands_per_msg: redis.map(|r| r.0),
        redis_publishes_per_msg: redis.map(|r| r.1),
        leaves: leaves.len(),
        leave_p50_ms: leaves.get(leaves.len() / 2).copied().unwrap_or(0.0),
        leave_max_ms: leaves.last().copied().unwrap_or(0.0),
    }
}
