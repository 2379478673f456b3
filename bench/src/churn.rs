//! `chat-bench churn`: pairs of users through one address (a load balancer)
//! while the instances behind it are restarted. Every client reconnects
//! when its socket closes; a sender resends every unacknowledged message
//! with its `client_id`. At the end the history of every conversation is
//! read back over REST and checked against the acknowledgements: lost
//! (acknowledged but not stored), duplicated (stored twice), and the
//! longest time any client was without a connection, with throughput per
//! second to see the restarts.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_http::ws;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;

use super::{
    add_contact, open_session, raise_fd_limit, register, setup, ws_url, BenchError, Clients,
};

/// Options of `bench churn`.
#[derive(Debug, Clone)]
pub struct ChurnOptions {
    pub url: String,
    pub pairs: usize,
    pub duration: Duration,
    /// Messages per second in total.
    pub rate: u64,
    pub sources: usize,
}

/// The outcome of a churn run.
#[derive(Debug, serde::Serialize)]
pub struct ChurnReport {
    pub connections: usize,
    /// Distinct messages sent (resends not counted).
    pub sent: u64,
    pub acked: u64,
    /// Acknowledged, but not in the history afterwards.
    pub lost: u64,
    /// Stored more than once (one client_id, several rows).
    pub duplicated: u64,
    /// Sent, never acknowledged by the end (still being resent).
    pub unacked: u64,
    pub reconnects: u64,
    /// The longest time one client was without an authorized connection.
    pub max_outage_ms: f64,
    pub seconds: f64,
    pub acked_per_sec: f64,
    /// The slowest whole second of the run (acknowledgements in it).
    pub min_acked_in_a_second: u64,
    /// Acknowledgements in each second of the run.
    pub per_second: Vec<u64>,
}

#[derive(Default)]
struct Tally {
    sent: u64,
    reconnects: u64,
    max_outage: Duration,
    /// client_id → message id, per pair.
    acked: Vec<HashMap<String, i64>>,
    unacked: u64,
    per_second: Vec<u64>,
}

/// Opens an authorized session, retrying until it succeeds or `until`;
/// records how long the client was without one.
async fn reconnect(
    client: &awc::Client,
    ws_base: &str,
    token: &str,
    tally: &Rc<RefCell<Tally>>,
    since: Option<Instant>,
    until: Instant,
) -> Option<super::Socket> {
    loop {
        if let Ok(socket) = open_session(client, ws_base, token).await {
            if let Some(since) = since {
                let mut t = tally.borrow_mut();
                t.reconnects += 1;
                t.max_outage = t.max_outage.max(since.elapsed());
            }
            return Some(socket);
        }
        if Instant::now() > until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn message(pk: &str, client_id: &str, content: &str) -> ws::Message {
    let text =
        json!({"type": "message", "data": {"to": pk, "content": content, "client_id": client_id}})
            .to_string();
    ws::Message::Text(text.into())
}

/// One sender: sends at its pace, resends what is unacknowledged after
/// every reconnect, and after the run keeps at it until everything is
/// acknowledged (bounded).
#[allow(clippy::too_many_arguments)]
async fn sender(
    pair: usize,
    client: awc::Client,
    ws_base: String,
    token: String,
    pk: String,
    interval: Duration,
    origin: Instant,
    stop_at: Instant,
    tally: Rc<RefCell<Tally>>,
) {
    let give_up = stop_at + Duration::from_secs(30);
    let mut unacked: BTreeMap<u64, String> = BTreeMap::new();
    let mut seq = 0u64;
    let mut next = Instant::now() + interval.mul_f64(pair as f64 / 97.0 % 1.0);
    let mut lost_at = None;
    while Instant::now() < give_up && (Instant::now() < stop_at || !unacked.is_empty()) {
        let Some(socket) = reconnect(&client, &ws_base, &token, &tally, lost_at, give_up).await
        else {
            break;
        };
        let (mut sink, mut stream) = socket.split();
        let mut broken = false;
        for (n, content) in &unacked {
            if sink
                .send(message(&pk, &format!("p{pair}-{n}"), content))
                .await
                .is_err()
            {
                broken = true;
                break;
            }
        }
        // Unanswered or refused (busy) messages are sent again every 2 s:
        // the server stores a client_id once, so a resend is always safe.
        let mut resend = tokio::time::interval(Duration::from_secs(2));
        resend.tick().await;
        while !broken && Instant::now() < give_up {
            let sending = Instant::now() < stop_at;
            let tick = tokio::time::sleep_until(next.into());
            tokio::select! {
                _ = resend.tick() => {
                    for (n, content) in &unacked {
                        if sink.send(message(&pk, &format!("p{pair}-{n}"), content)).await.is_err() {
                            broken = true;
                            break;
                        }
                    }
                }
                _ = tick, if sending => {
                    next += interval;
                    let content = format!("m{seq}");
                    let sent = sink.send(message(&pk, &format!("p{pair}-{seq}"), &content)).await;
                    unacked.insert(seq, content);
                    seq += 1;
                    tally.borrow_mut().sent += 1;
                    if sent.is_err() {
                        break;
                    }
                }
                frame = stream.next() => {
                    let Some(Ok(frame)) = frame else { break };
                    match frame {
                        ws::Frame::Text(bytes) => {
                            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else { continue };
                            if value["type"] != "message_response" || value["data"]["status"] != "success" {
                                continue;
                            }
                            let (Some(cid), Some(id)) = (value["data"]["client_id"].as_str(), value["data"]["id"].as_i64()) else { continue };
                            let Some(n) = cid.rsplit('-').next().and_then(|n| n.parse::<u64>().ok()) else { continue };
                            if unacked.remove(&n).is_some() {
                                let mut t = tally.borrow_mut();
                                t.acked[pair].insert(cid.to_string(), id);
                                let second = origin.elapsed().as_secs() as usize;
                                if t.per_second.len() <= second {
                                    t.per_second.resize(second + 1, 0);
                                }
                                t.per_second[second] += 1;
                            }
                            if !sending && unacked.is_empty() {
                                break;
                            }
                        }
                        ws::Frame::Ping(p) => {
                            let _ = sink.send(ws::Message::Pong(p)).await;
                        }
                        ws::Frame::Close(_) => break,
                        _ => {}
                    }
                }
            }
        }
        lost_at = Some(Instant::now());
        if Instant::now() >= stop_at && unacked.is_empty() {
            break;
        }
    }
    tally.borrow_mut().unacked += unacked.len() as u64;
}

/// One receiver: stays connected (reconnecting), answering pings; its
/// messages are checked from the history at the end.
async fn receiver(
    client: awc::Client,
    ws_base: String,
    token: String,
    stop_at: Instant,
    tally: Rc<RefCell<Tally>>,
) {
    let mut lost_at = None;
    while Instant::now() < stop_at {
        let Some(socket) = reconnect(&client, &ws_base, &token, &tally, lost_at, stop_at).await
        else {
            break;
        };
        let (mut sink, mut stream) = socket.split();
        while let Ok(Some(Ok(frame))) = tokio::time::timeout(
            stop_at.saturating_duration_since(Instant::now()),
            stream.next(),
        )
        .await
        {
            match frame {
                ws::Frame::Ping(p) => {
                    let _ = sink.send(ws::Message::Pong(p)).await;
                }
                ws::Frame::Close(_) => break,
                _ => {}
            }
        }
        lost_at = Some(Instant::now());
    }
}

/// Every (client_id → ids) stored in a conversation, read over REST.
async fn stored(
    client: &awc::Client,
    base: &str,
    token: &str,
    pk: &str,
) -> Result<HashMap<String, Vec<i64>>, BenchError> {
    let mut rows: HashMap<String, Vec<i64>> = HashMap::new();
    let mut after = 0i64;
    loop {
        let mut res = client
            .get(format!(
                "{base}/api/contacts/{pk}/messages/?after={after}&limit=200"
            ))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| setup("history", e))?;
        let page: serde_json::Value = res
            .json()
            .limit(1 << 24)
            .await
            .map_err(|e| setup("history body", e))?;
        let messages = page["messages"].as_array().cloned().unwrap_or_default();
        for m in &messages {
            if let (Some(cid), Some(id)) = (m["client_id"].as_str(), m["id"].as_i64()) {
                rows.entry(cid.to_string()).or_default().push(id);
                after = after.max(id);
            }
        }
        if page["has_more"] != true || messages.is_empty() {
            return Ok(rows);
        }
    }
}

/// Runs `bench churn`.
pub async fn churn(opts: ChurnOptions) -> Result<ChurnReport, BenchError> {
    raise_fd_limit();
    let clients = Clients::new(opts.sources);
    let base = opts.url.trim_end_matches('/').to_string();
    let ws_base = ws_url(&base);
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let mut pairs = Vec::new();
    for i in 0..opts.pairs {
        let a = register(clients.get(i), &base, &format!("c{run}p{i}a")).await?;
        let b = register(clients.get(i), &base, &format!("c{run}p{i}b")).await?;
        let pk = add_contact(clients.get(i), &base, &a.token, &b.username).await?;
        pairs.push((a, b, pk));
    }
    let tally = Rc::new(RefCell::new(Tally {
        acked: vec![HashMap::new(); opts.pairs],
        ..Tally::default()
    }));
    let origin = Instant::now();
    let stop_at = origin + opts.duration;
    let interval = Duration::from_secs_f64(opts.pairs as f64 / opts.rate.max(1) as f64);
    let mut tasks = Vec::new();
    for (i, (a, b, pk)) in pairs.iter().enumerate() {
        tasks.push(actix_rt::spawn(sender(
            i,
            clients.get(2 * i).clone(),
            ws_base.clone(),
            a.token.clone(),
            pk.clone(),
            interval,
            origin,
            stop_at,
            tally.clone(),
        )));
        tasks.push(actix_rt::spawn(receiver(
            clients.get(2 * i + 1).clone(),
            ws_base.clone(),
            b.token.clone(),
            stop_at,
            tally.clone(),
        )));
    }
    eprintln!(
        "{} clients running for {:?}…",
        2 * opts.pairs,
        opts.duration
    );
    for task in tasks {
        let _ = task.await;
    }
    let seconds = origin
        .elapsed()
        .as_secs_f64()
        .min(opts.duration.as_secs_f64());
    let (mut lost, mut duplicated) = (0, 0);
    for (i, (a, _, pk)) in pairs.iter().enumerate() {
        let rows = stored(clients.get(i), &base, &a.token, pk).await?;
        duplicated += rows.values().filter(|ids| ids.len() > 1).count() as u64;
        let t = tally.borrow();
        lost += t.acked[i]
            .iter()
            .filter(|(cid, id)| rows.get(*cid).is_none_or(|ids| !ids.contains(id)))
            .count() as u64;
    }
    let t = tally.borrow();
    let acked: u64 = t.acked.iter().map(|m| m.len() as u64).sum();
    let whole = (opts.duration.as_secs() as usize).max(1);
    let mut per_second = t.per_second.clone();
    per_second.resize(per_second.len().max(whole), 0);
    Ok(ChurnReport {
        connections: 2 * opts.pairs,
        sent: t.sent,
        acked,
        lost,
        duplicated,
        unacked: t.unacked,
        reconnects: t.reconnects,
        max_outage_ms: t.max_outage.as_secs_f64() * 1000.0,
        seconds,
        acked_per_sec: acked as f64 / seconds,
        min_acked_in_a_second: per_second[..whole].iter().copied().min().unwrap_or(0),
        per_second,
    })
}
