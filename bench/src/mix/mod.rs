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
//! commands per message (`report.rs`).
//!
//! A run: log every user in, open the sessions in two halves (the RSS
//! read between them gives the slope per session), send for the
//! duration, drain until every message is answered and every session has
//! caught up, then build the report.

mod population;
mod report;
mod session;

pub use population::fill_population;
pub use report::MixReport;
use report::{rss, Memory, Phase, Usage};

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_rt::Arbiter;

use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::sync::Semaphore;

use crate::search::{login, uuid_text, Rng};
use crate::{open_session, raise_fd_limit, setup, tcp_socket_kib, ws_url, BenchError, Clients};
use population::Population;
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
    let tokens = log_in(&opts).await?;
    let rss_before = rss(&opts.server_pids);
    let tcp_before = tcp_socket_kib();
    let shared = Arc::new(Shared {
        origin: Instant::now(),
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
    let opening = Usage::start(&opts)?;
    let open_start = Instant::now();
    let sessions = Sessions::open(&opts, &shared, &tokens).await?;
    let opening = Phase {
        seconds: open_start.elapsed().as_secs_f64(),
        used: opening.end(&opts)?,
    };
    let memory = Memory {
        rss_before,
        rss_half: sessions.rss_half,
        rss_sessions: rss(&opts.server_pids),
        rss_end: None,
        tcp_before,
        tcp_after: tcp_socket_kib(),
    };
    eprintln!(
        "{} sessions ready; {:.0} messages/s for {:?}…",
        sessions.places.len(),
        opts.rate,
        opts.duration
    );
    let usage = Usage::start(&opts)?;
    let run_start = Instant::now();
    let sent = send(&opts, &shared, &sessions, run_start).await;
    eprintln!("sending stopped; draining…");
    let last_event = drain(&shared, &sessions.states, &sent).await;
    let running = Phase {
        seconds: (last_event - run_start).as_secs_f64(),
        used: usage.end(&opts)?,
    };
    let memory = Memory {
        rss_end: rss(&opts.server_pids),
        ..memory
    };
    let states = sessions.stop();
    Ok(report::build(
        &opts, &shared, &states, &sent, &opening, &running, &memory,
    ))
}

/// The base URL of the instance that user (or session) `i` uses.
fn base_url(opts: &MixOptions, i: usize) -> String {
    opts.urls[i % opts.urls.len()]
        .trim_end_matches('/')
        .to_string()
}

/// Logs every user in over REST, 32 at a time; their tokens.
async fn log_in(opts: &MixOptions) -> Result<Vec<Arc<str>>, BenchError> {
    eprintln!("logging in {} users…", opts.users);
    let clients = Clients::new(opts.sources);
    futures_util::stream::iter(0..opts.users)
        .map(|u| {
            let (client, base) = (clients.get(u).clone(), base_url(opts, u));
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
        .collect()
}

/// Every session, open and running on the generator's threads.
struct Sessions {
    /// (user, k): every session, the users' first sessions first.
    places: Vec<(u32, u8)>,
    /// Each user's sessions' command channels.
    senders: Vec<Vec<UnboundedSender<Out>>>,
    states: Vec<Arc<Mutex<State>>>,
    shards: Vec<Arbiter>,
    /// The servers' RSS once half the sessions were open.
    rss_half: Option<u64>,
}

impl Sessions {
    /// Opens the sessions in two halves, each half once every one of its
    /// sessions has had its `get_contacts` answered, reading the servers'
    /// RSS between the halves (the slope per session).
    async fn open(
        opts: &MixOptions,
        shared: &Arc<Shared>,
        tokens: &[Arc<str>],
    ) -> Result<Sessions, BenchError> {
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
                    ws_base: ws_url(&base_url(opts, u as usize + k as usize)),
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
        Ok(Sessions {
            places,
            senders,
            states,
            shards,
            rss_half,
        })
    }

    /// Ends every session with its thread; their states, which only this
    /// thread reads from here on.
    fn stop(self) -> Vec<Arc<Mutex<State>>> {
        drop(self.senders);
        for shard in self.shards {
            shard.stop();
            let _ = shard.join();
        }
        self.states
    }
}

/// What was sent over the run.
struct Sent {
    messages: Rc<RefCell<u64>>,
    typing: u64,
    /// Typed messages not sent yet (each goes 1–3 s after its `typing`).
    pending: Rc<RefCell<usize>>,
}

/// Sends for the run's duration: messages as a Poisson process of
/// `opts.rate`, a share of them after `typing`, and reconnects at their
/// own rate, all drawn from one seeded generator.
async fn send(
    opts: &MixOptions,
    shared: &Arc<Shared>,
    sessions: &Sessions,
    run_start: Instant,
) -> Sent {
    let (places, senders) = (&sessions.places, &sessions.senders);
    let total = places.len();
    let stop_at = run_start + opts.duration;
    let mut sent = Sent {
        messages: Rc::new(RefCell::new(0u64)),
        typing: 0,
        pending: Rc::new(RefCell::new(0usize)),
    };
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
            let (pk, shared, count) = (pk.clone(), shared.clone(), sent.messages.clone());
            let client_id = format!("mix-{client_id}");
            move || {
                let stamp = shared.origin.elapsed().as_micros();
                let data =
                    json!({"to": pk, "content": format!("mix {stamp}"), "client_id": client_id});
                *count.borrow_mut() += 1;
                let text = json!({"type": "message", "data": data}).to_string();
                Out::Message { client_id, text }
            }
        };
        if rng.unit() < opts.typing {
            sent.typing += 1;
            let typing = json!({"type": "typing", "data": {"id": pk}}).to_string();
            let _ = to.send(Out::Text(typing));
            let delay = Duration::from_secs_f64(1.0 + 2.0 * rng.unit());
            *sent.pending.borrow_mut() += 1;
            let pending = sent.pending.clone();
            actix_rt::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = to.send(message());
                *pending.borrow_mut() -= 1;
            });
        } else {
            let _ = to.send(message());
        }
    }
    sent
}

/// Waits for the typed messages still to go, then for every answer and
/// delivery: quiet for a second, nobody catching up, every message
/// answered. When the last answer or delivery came.
async fn drain(shared: &Shared, states: &[Arc<Mutex<State>>], sent: &Sent) -> Instant {
    wait_for(Duration::from_secs(10), || *sent.pending.borrow() == 0).await;
    let mut last = (0u64, Instant::now());
    wait_for(Duration::from_secs(60), || {
        let (now, answered) = {
            let tally = lock(&shared.tally);
            let answers = tally.acked + tally.errors;
            (
                tally.deliveries + answers,
                answers >= *sent.messages.borrow(),
            )
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
    last.1
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
