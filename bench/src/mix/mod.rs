//! `chat-bench mix`: a service's day in small (BENCHMARKS.md "A realistic
//! mix"). A population of users (`population.rs`: 70 % with one session,
//! 30 % with two; ~10 direct conversations and ~3 long-tailed groups
//! each), loaded by `mix-fill`, all connected (each session asks
//! `get_contacts`, as a client does). Then, for the run:
//! - messages as a Poisson process of the given total rate, each from a
//!   user drawn at random to one of that user's conversations (so a user
//!   in a big group posts there as often as in a direct one); ~30 % are
//!   preceded by `typing` and sent 1–3 s later;
//! - ~50 % of the messages a user receives are marked `read` (by the
//!   user's first session);
//! - 1 % of the sessions a minute drop their connection and come back,
//!   catching up with `get_contacts` and `sync` (`session.rs`).
//!
//! The sessions run on `--threads` threads of their own (two by default),
//! so that a 1,000-member group's deliveries, read and answered on one
//! thread, do not hold up every other session's.
//!
//! It reports deliveries per second, send→deliver latency per group-size
//! bucket, every conversation's log checked for loss, duplicates and gaps,
//! the servers' CPU per delivered and per sent message, their RSS per
//! session (with the kernel's socket memory beside it), and Redis's CPU and
//! commands per message.

mod population;
mod session;

pub use population::fill_population;

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_rt::Arbiter;

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::sync::Semaphore;

use crate::group::redis_info;
use crate::search::{login, uuid_text, Rng};
use crate::{
    cpu_time, open_session, processes_cpu, processes_cpu_since, raise_fd_limit, rss_kib,
    servers_cpu_time, setup, tcp_socket_kib, ws_url, BenchError, Clients,
};
use population::{Population, BUCKETS};
use session::{lock, Connection, Out, Shared, State, Tally};

/// Options of `chat-bench mix`.
#[derive(Debug, Clone)]
pub struct MixOptions {
    /// The instances; a user's sessions go to `urls[(user + k) % n]`, so a
    /// user with two sessions has them on two instances when there are two.
    pub urls: Vec<String>,
    /// The population (the same as `mix-fill`'s).
    pub users: usize,
    pub seed: u64,
    pub duration: Duration,
    /// Messages per second, in total (a Poisson process).
    pub rate: f64,
    /// The share of messages preceded by `typing`.
    pub typing: f64,
    /// The share of received messages marked read.
    pub reads: f64,
    /// The share of sessions that reconnect each minute.
    pub reconnects_per_minute: f64,
    pub sources: usize,
    /// The generator's threads; the sessions are spread over them, so that
    /// reading a big group's deliveries does not queue every other
    /// session's behind them on one thread.
    pub threads: usize,
    pub server_pids: Vec<u32>,
    pub redis: Option<String>,
    /// The database server's process name on this machine (`postgres`,
    /// `mariadbd`), for its CPU time per message (`None`: not measured).
    pub database_process: Option<String>,
}

/// One latency bucket of the report.
#[derive(Debug, serde::Serialize)]
pub struct BucketReport {
    pub bucket: &'static str,
    pub deliveries: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// What `chat-bench mix` measured.
#[derive(Debug, serde::Serialize)]
pub struct MixReport {
    pub users: usize,
    pub sessions: usize,
    pub direct_conversations: usize,
    pub groups: usize,
    pub instances: usize,
    pub seconds: f64,
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub typing_sent: u64,
    pub reads_sent: u64,
    pub deliveries: u64,
    pub deliveries_per_sec: f64,
    pub messages_per_sec: f64,
    pub latency: Vec<BucketReport>,
    pub all: BucketReport,
    /// Events some session never got, live or by `sync`.
    pub lost: u64,
    pub duplicates: u64,
    pub jumps: u64,
    pub reconnects: u64,
    pub dropped: u64,
    /// Messages never answered (each still waiting at the end), with a
    /// few of their frames.
    pub unanswered: u64,
    pub unanswered_samples: Vec<String>,
    pub catch_up_p50_ms: Option<f64>,
    pub catch_up_p99_ms: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    pub server_cpu_us_per_message: Option<f64>,
    /// The servers' CPU over the run, in percent of one core.
    pub server_cpu_percent: Option<f64>,
    /// This generator's own CPU over the run, in percent of one core (near
    /// 100 per thread: the generator is what bounds the run).
    pub generator_cpu_percent: Option<f64>,
    /// The servers' RSS after the logins, with half the sessions open, with
    /// all open, and at the end.
    pub rss_before_sessions_kib: Option<u64>,
    pub rss_half_kib: Option<u64>,
    pub rss_sessions_kib: Option<u64>,
    pub rss_end_kib: Option<u64>,
    pub kib_per_session: Option<f64>,
    pub slope_kib_per_session: Option<f64>,
    /// The kernel's TCP memory before the sessions and with all open (both
    /// ends of every connection are on this machine).
    pub tcp_socket_kib_before: Option<u64>,
    pub tcp_socket_kib_after: Option<u64>,
    pub redis_commands_per_message: Option<f64>,
    pub redis_cpu_us_per_message: Option<f64>,
    /// The database server's processes' CPU over the run, per message
    /// answered and in percent of one core (`--database-process`).
    pub database_cpu_us_per_message: Option<f64>,
    pub database_cpu_percent: Option<f64>,
}

fn bucket(name: &'static str, h: &Histogram<u64>) -> BucketReport {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    BucketReport {
        bucket: name,
        deliveries: h.len(),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: h.max() as f64 / 1000.0,
    }
}

/// (commands executed, CPU seconds used) of the Redis at `url`.
fn redis_figures(url: &str) -> Result<(u64, f64), BenchError> {
    let commands = crate::group::redis_calls(url)?.0;
    let cpu = redis_info(url, "cpu")?
        .lines()
        .filter_map(|l| {
            l.strip_prefix("used_cpu_sys:")
                .or_else(|| l.strip_prefix("used_cpu_user:"))
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum();
    Ok((commands, cpu))
}

fn rss(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| rss_kib(pid)).sum()
}

/// An exponential wait of mean 1/`rate` seconds.
fn exponential(rng: &mut Rng, rate: f64) -> Duration {
    Duration::from_secs_f64(-(1.0 - rng.unit()).ln() / rate)
}

/// Runs `chat-bench mix` on a database `mix-fill` loaded with the same
/// `users` and `seed`.
pub async fn mix(opts: MixOptions) -> Result<MixReport, BenchError> {
    raise_fd_limit();
    if opts.urls.is_empty() || opts.users < 3 {
        return Err(setup("mix", "needs a --url and at least 3 users"));
    }
    let population = Population::new(opts.users, opts.seed);
    let clients = Clients::new(opts.sources);
    let url = |i: usize| {
        opts.urls[i % opts.urls.len()]
            .trim_end_matches('/')
            .to_string()
    };
    eprintln!("logging in {} users…", opts.users);
    let tokens: Vec<Arc<str>> = futures_util::stream::iter(0..opts.users)
        .map(|u| {
            let (client, base) = (clients.get(u).clone(), url(u));
            async move {
                login(&client, &base, &Population::username(u as u32))
                    .await
                    .map(Arc::from)
            }
        })
        .buffered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;

    let rss_before = rss(&opts.server_pids);
    let tcp_before = tcp_socket_kib();
    let origin = Instant::now();
    let shared = Arc::new(Shared {
        origin,
        index: population
            .conversations
            .iter()
            .enumerate()
            .map(|(i, c)| (uuid_text(&c.id), i as u32))
            .collect(),
        last_seq: Mutex::new(vec![0; population.conversations.len()]),
        population,
        reads: opts.reads,
        tally: Mutex::new(Tally::new()),
    });
    // (user, k): every session, the users' first sessions first.
    let mut places: Vec<(u32, u8)> = (0..opts.users as u32).map(|u| (u, 0)).collect();
    places.extend(
        (0..opts.users as u32)
            .filter(|&u| shared.population.sessions[u as usize] == 2)
            .map(|u| (u, 1)),
    );
    let total = places.len();
    eprintln!("opening {total} sessions…");
    let shards: Vec<Arbiter> = (0..opts.threads.max(1)).map(|_| Arbiter::new()).collect();
    // As many handshakes at once as the server is asked, over every thread.
    let handshakes = Arc::new(Semaphore::new(32));
    let mut senders: Vec<Vec<UnboundedSender<Out>>> = vec![Vec::new(); opts.users];
    let mut states = Vec::with_capacity(total);
    let mut rss_half = None;
    for (half, chunk) in [&places[..total / 2], &places[total / 2..]]
        .into_iter()
        .enumerate()
    {
        let (opened_tx, mut opened) = unbounded_channel();
        for (i, &(u, k)) in chunk.iter().enumerate() {
            let state = Arc::new(Mutex::new(State::new(
                u,
                k == 0,
                opts.seed ^ (u64::from(u) << 1 | u64::from(k)),
            )));
            let (tx, rx) = unbounded_channel();
            senders[u as usize].push(tx);
            states.push(state.clone());
            let start = Start {
                source: i + half,
                sources: opts.sources,
                ws_base: ws_url(&url(u as usize + k as usize)),
                token: tokens[u as usize].clone(),
                handshakes: handshakes.clone(),
                opened: opened_tx.clone(),
            };
            let shared = shared.clone();
            shards[states.len() % shards.len()].spawn_fn(move || start.run(state, shared, rx));
        }
        drop(opened_tx);
        for _ in chunk {
            opened
                .recv()
                .await
                .ok_or_else(|| setup("mix", "a generator thread stopped"))??;
        }
        // Every session of this half has had its get_contacts answered.
        let opened_so_far = states.len();
        wait_for(Duration::from_secs(120), || {
            lock(&shared.tally).ready >= opened_so_far
        })
        .await;
        if half == 0 {
            rss_half = rss(&opts.server_pids);
        }
    }
    let rss_sessions = rss(&opts.server_pids);
    let tcp_after = tcp_socket_kib();

    eprintln!(
        "{total} sessions ready; {:.0} messages/s for {:?}…",
        opts.rate, opts.duration
    );
    let cpu_start = servers_cpu_time(&opts.server_pids);
    let own_start = cpu_time(std::process::id());
    let database_start = opts.database_process.as_deref().and_then(processes_cpu);
    let redis_start = opts.redis.as_deref().map(redis_figures).transpose()?;
    let run_start = Instant::now();
    let stop_at = run_start + opts.duration;
    let sent = Rc::new(RefCell::new(0u64));
    let mut typing_sent = 0u64;
    let pending = Rc::new(RefCell::new(0usize));
    let reconnect_rate = total as f64 * opts.reconnects_per_minute / 60.0;
    let event_rate = opts.rate + reconnect_rate;
    let mut rng = Rng(opts.seed ^ 0x00C0_FFEE);
    let mut next = run_start;
    let mut client_id = 0u64;
    let population = &shared.population;
    loop {
        next += exponential(&mut rng, event_rate.max(1e-9));
        if next >= stop_at {
            break;
        }
        tokio::time::sleep_until(next.into()).await;
        if rng.unit() * event_rate >= opts.rate {
            let (u, k) = places[rng.below(total)];
            let _ = senders[u as usize][k as usize].send(Out::Reconnect);
            continue;
        }
        let u = rng.below(opts.users);
        let chats = &population.of_user[u];
        if chats.is_empty() {
            continue;
        }
        let c = chats[rng.below(chats.len())];
        let pk = uuid_text(&population.conversations[c as usize].id);
        let to = senders[u][0].clone();
        client_id += 1;
        let message = {
            let (pk, shared, sent) = (pk.clone(), shared.clone(), sent.clone());
            let client_id = format!("mix-{client_id}");
            move || {
                let stamp = shared.origin.elapsed().as_micros();
                let data =
                    json!({"to": pk, "content": format!("mix {stamp}"), "client_id": client_id});
                *sent.borrow_mut() += 1;
                let text = json!({"type": "message", "data": data}).to_string();
                Out::Message { client_id, text }
            }
        };
        if rng.unit() < opts.typing {
            typing_sent += 1;
            let typing = json!({"type": "typing", "data": {"id": pk}}).to_string();
            let _ = to.send(Out::Text(typing));
            let delay = Duration::from_secs_f64(1.0 + 2.0 * rng.unit());
            *pending.borrow_mut() += 1;
            let pending = pending.clone();
            actix_rt::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = to.send(message());
                *pending.borrow_mut() -= 1;
            });
        } else {
            let _ = to.send(message());
        }
    }
    eprintln!("sending stopped; draining…");
    // Typed messages still to go, then every answer and delivery: quiet
    // for a second, nobody catching up, every message answered.
    wait_for(Duration::from_secs(10), || *pending.borrow() == 0).await;
    let mut last = (0u64, Instant::now());
    wait_for(Duration::from_secs(60), || {
        let (now, answered) = {
            let tally = lock(&shared.tally);
            let answers = tally.acked + tally.errors;
            (tally.deliveries + answers, answers >= *sent.borrow())
        };
        if now != last.0 {
            last = (now, Instant::now());
        }
        let settled = states.iter().all(|s| {
            let s = lock(s);
            s.syncing == 0 && s.reconnecting.is_none()
        });
        answered && settled && last.1.elapsed() > Duration::from_secs(1)
    })
    .await;
    let seconds = (last.1 - run_start).as_secs_f64();
    let cpu = servers_cpu_time(&opts.server_pids)
        .zip(cpu_start)
        .map(|(end, start)| end.saturating_sub(start));
    let redis = match (opts.redis.as_deref(), redis_start) {
        (Some(url), Some(start)) => Some((redis_figures(url)?, start)),
        _ => None,
    };
    let rss_end = rss(&opts.server_pids);
    let database = processes_cpu_since(opts.database_process.as_deref(), database_start);
    let own = cpu_time(std::process::id())
        .zip(own_start)
        .map(|(end, start)| end.saturating_sub(start));
    // The sessions end with their threads; only this thread reads the
    // states from here on.
    drop(senders);
    for shard in shards {
        shard.stop();
        let _ = shard.join();
    }

    let last_seq = lock(&shared.last_seq);
    let lost: u64 = states
        .iter()
        .map(|s| {
            let s = lock(s);
            population.of_user[s.user as usize]
                .iter()
                .map(|&c| {
                    let upto = s.cursors.get(&c).map_or(0, |cursor| cursor.upto);
                    (last_seq[c as usize] - upto).max(0) as u64
                })
                .sum::<u64>()
        })
        .sum();
    let tally = lock(&shared.tally);
    let sent = *sent.borrow();
    let mut all = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
    for h in &tally.latency {
        all.add(h).expect("same bounds");
    }
    let per = |total: u64| {
        cpu.filter(|_| total > 0)
            .map(|cpu| cpu.as_secs_f64() * 1e6 / total as f64)
    };
    let catch_up = (!tally.catch_up.is_empty()).then_some(&tally.catch_up);
    let kib_per = |a: Option<u64>, b: Option<u64>, n: usize| {
        a.zip(b)
            .filter(|_| n > 0)
            .map(|(a, b)| (b as f64 - a as f64) / n as f64)
    };
    Ok(MixReport {
        users: opts.users,
        sessions: total,
        direct_conversations: population.conversations.iter().filter(|c| !c.group).count(),
        groups: population.conversations.iter().filter(|c| c.group).count(),
        instances: opts.urls.len(),
        seconds,
        sent,
        acked: tally.acked,
        errors: tally.errors,
        error_samples: tally.error_samples.clone(),
        typing_sent,
        reads_sent: tally.reads_sent,
        deliveries: tally.deliveries,
        deliveries_per_sec: tally.deliveries as f64 / seconds.max(1e-9),
        messages_per_sec: tally.acked as f64 / seconds.max(1e-9),
        latency: BUCKETS
            .iter()
            .zip(&tally.latency)
            .map(|(name, h)| bucket(name, h))
            .collect(),
        all: bucket("all", &all),
        lost,
        duplicates: tally.duplicates,
        jumps: tally.jumps,
        reconnects: tally.reconnects,
        dropped: tally.dropped,
        unanswered: states.iter().map(|s| lock(s).unanswered.len() as u64).sum(),
        unanswered_samples: states
            .iter()
            .flat_map(|s| lock(s).unanswered.values().cloned().collect::<Vec<_>>())
            .take(3)
            .collect(),
        catch_up_p50_ms: catch_up.map(|h| h.value_at_quantile(0.5) as f64 / 1000.0),
        catch_up_p99_ms: catch_up.map(|h| h.value_at_quantile(0.99) as f64 / 1000.0),
        server_cpu_us_per_delivery: per(tally.deliveries),
        server_cpu_us_per_message: per(tally.acked),
        server_cpu_percent: cpu.map(|c| c.as_secs_f64() * 100.0 / seconds.max(1e-9)),
        generator_cpu_percent: own.map(|c| c.as_secs_f64() * 100.0 / seconds.max(1e-9)),
        rss_before_sessions_kib: rss_before,
        rss_half_kib: rss_half,
        rss_sessions_kib: rss_sessions,
        rss_end_kib: rss_end,
        kib_per_session: kib_per(rss_before, rss_sessions, total),
        slope_kib_per_session: kib_per(rss_half, rss_sessions, total - total / 2),
        tcp_socket_kib_before: tcp_before,
        tcp_socket_kib_after: tcp_after,
        redis_commands_per_message: redis.map(|((end, _), (start, _))| {
            end.saturating_sub(start) as f64 / tally.acked.max(1) as f64
        }),
        redis_cpu_us_per_message: redis
            .map(|((_, end), (_, start))| (end - start) * 1e6 / tally.acked.max(1) as f64),
        database_cpu_us_per_message: database
            .map(|c| c.as_secs_f64() * 1e6 / tally.acked.max(1) as f64),
        database_cpu_percent: database.map(|c| c.as_secs_f64() * 100.0 / seconds.max(1e-9)),
    })
}

thread_local! {
    /// A generator thread's HTTP clients (an `awc::Client` stays on the
    /// thread that made it).
    static CLIENTS: OnceCell<Clients> = const { OnceCell::new() };
}

/// What a generator thread needs to open one session and run it.
struct Start {
    /// Which loopback source address (`Clients`).
    source: usize,
    sources: usize,
    ws_base: String,
    token: Arc<str>,
    handshakes: Arc<Semaphore>,
    /// Told once the session is open, or why it could not be.
    opened: UnboundedSender<Result<(), BenchError>>,
}

impl Start {
    /// On a generator thread: opens the session (within the handshakes
    /// allowed at once), then runs it there.
    fn run(
        self,
        state: Arc<Mutex<State>>,
        shared: Arc<Shared>,
        commands: tokio::sync::mpsc::UnboundedReceiver<Out>,
    ) {
        actix_rt::spawn(async move {
            let client = CLIENTS.with(|clients| {
                clients
                    .get_or_init(|| Clients::new(self.sources))
                    .get(self.source)
                    .clone()
            });
            let connection = Connection {
                client,
                ws_base: self.ws_base,
                token: self.token,
            };
            let socket = {
                let Ok(_permit) = self.handshakes.acquire().await else {
                    return;
                };
                open_session(&connection.client, &connection.ws_base, &connection.token).await
            };
            match socket {
                Ok(socket) => {
                    let _ = self.opened.send(Ok(()));
                    session::run(socket, connection, state, shared, commands).await;
                }
                Err(e) => {
                    let _ = self.opened.send(Err(e));
                }
            }
        });
    }
}

/// Polls `done` every 50 ms until it holds or `limit` has passed.
async fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !done() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
