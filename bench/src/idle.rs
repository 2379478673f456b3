//! `idle`: many authorized idle sessions; the server's RSS per session and
//! its slope, its idle CPU, then the latency of messages between two of them.

use std::time::{Duration, Instant};

use actix_http::ws;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::measure::{cpu_time, rss_kib, tcp_socket_kib, MachineTime};
use crate::net::Clients;
use crate::{add_contact, ms, open_session, raise_fd_limit, register, setup, ws_url, BenchError};

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
    /// The share of the machine's time its hypervisor took while idle CPU was
    /// sampled, in per cent: a CPU figure measured while the host took much
    /// is not comparable with one measured while it took none.
    pub host_steal_percent: Option<f64>,
    /// RSS once `large` sessions sent a 60 KiB frame each, and its growth per
    /// such session (≈ 0 when their buffers were released).
    pub rss_after_large_kib: Option<u64>,
    pub large_kib_per_session: Option<f64>,
    pub messages: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
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

    // Idle CPU: heartbeats and timers only; and what the host took meanwhile.
    let (idle_cpu_percent, host_steal_percent) = match opts.server_pid {
        Some(pid) if opts.cpu_seconds > 0 => {
            eprintln!("sampling idle CPU for {} s…", opts.cpu_seconds);
            let (before, machine_before) = (cpu_time(pid), MachineTime::now());
            let window = Instant::now();
            tokio::time::sleep(Duration::from_secs(opts.cpu_seconds)).await;
            let (after, machine_after) = (cpu_time(pid), MachineTime::now());
            let cpu = before.zip(after).map(|(b, a)| {
                100.0 * a.saturating_sub(b).as_secs_f64() / window.elapsed().as_secs_f64()
            });
            (
                cpu,
                MachineTime::stolen_percent(machine_before, machine_after),
            )
        }
        _ => (None, None),
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
        host_steal_percent,
        rss_after_large_kib: rss_after_large,
        large_kib_per_session: large_per,
        messages: opts.messages,
        p50_ms: ms(&h, 0.5),
        p99_ms: ms(&h, 0.99),
        max_ms: h.max() as f64 / 1000.0,
    })
}
