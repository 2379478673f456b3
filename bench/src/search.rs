//! Search at scale (PROTOCOL.md B10; BENCHMARKS.md "Search").
//!
//! `search-fill` prints SQL that fills a migrated database with a model of
//! a busy service: users, direct conversations and long-tailed groups (each
//! user in at most 50 conversations), and messages of 3 to 12 words drawn
//! from a Zipf-distributed vocabulary, spread over the conversations by a
//! Zipf law too (a few very busy conversations, many quiet ones). Every
//! user's password is the one of the account `seed`, which the caller
//! creates first. `search` rebuilds the same model from the same seed (so
//! it knows who is in what without asking), then times searches of one and
//! of two words, drawn from the same vocabulary, while writers send
//! messages at a set rate.

use std::cell::RefCell;
use std::collections::HashSet;
use std::io::Write;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_http::ws;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::{open_session, setup, ws_url, BenchError, Frame, BENCH_PASSWORD};

/// The shape of the filled database.
#[derive(Debug, Clone)]
pub struct Model {
    pub users: usize,
    pub conversations: usize,
    pub messages: usize,
    pub seed: u64,
}

/// Per-user cap on conversations.
const MAX_CONVERSATIONS_PER_USER: usize = 50;
/// Distinct words in the vocabulary.
const VOCABULARY: usize = 30_000;
/// The first bench user's id (ids are given, so the two commands agree).
pub(crate) const FIRST_USER_ID: i64 = 100_001;

/// A small deterministic generator (splitmix64): the same seed, the same model.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// A random version 4 UUID, as bytes.
    pub(crate) fn uuid(&mut self) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.next().to_be_bytes());
        id[8..].copy_from_slice(&self.next().to_be_bytes());
        id[6] = (id[6] & 0x0f) | 0x40;
        id[8] = (id[8] & 0x3f) | 0x80;
        id
    }
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Draws indexes 0..n with weight 1/(i+1)^s.
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        Zipf(
            (0..n)
                .map(|i| {
                    total += 1.0 / ((i + 1) as f64).powf(s);
                    total
                })
                .collect(),
        )
    }
    fn draw(&self, rng: &mut Rng) -> usize {
        let x = rng.unit() * self.0.last().copied().unwrap_or(0.0);
        self.0.partition_point(|&c| c < x).min(self.0.len() - 1)
    }
}

/// A conversation of the model.
struct Conversation {
    id: [u8; 16],
    /// Indexes into the users (0-based); a group's first is its owner.
    members: Vec<usize>,
    group: bool,
    messages: i64,
}

struct World {
    words: Vec<String>,
    word_law: Zipf,
    conversations: Vec<Conversation>,
    /// Each user's conversations (indexes).
    of_user: Vec<Vec<usize>>,
}

fn vocabulary(rng: &mut Rng) -> Vec<String> {
    const ONSETS: [&str; 16] = [
        "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "ch", "st",
    ];
    const VOWELS: [&str; 6] = ["a", "e", "i", "o", "u", "ai"];
    let mut seen = HashSet::new();
    let mut words = Vec::with_capacity(VOCABULARY);
    while words.len() < VOCABULARY {
        let syllables = 1 + rng.below(3);
        let word: String = (0..syllables)
            .map(|_| format!("{}{}", ONSETS[rng.below(16)], VOWELS[rng.below(6)]))
            .collect();
        if seen.insert(word.clone()) {
            words.push(word);
        }
    }
    words
}

fn world(model: &Model) -> World {
    let mut rng = Rng(model.seed);
    let words = vocabulary(&mut rng);
    let mut count = vec![0usize; model.users];
    let mut conversations = Vec::with_capacity(model.conversations);
    let mut pairs = HashSet::new();
    let directs = model.conversations * 4 / 5;
    let mut attempts = 0usize;
    while conversations.len() < model.conversations && attempts < model.conversations * 100 {
        attempts += 1;
        let group = conversations.len() >= directs;
        let size = if group {
            // Pareto-tailed: mostly 3 to 10, a few up to 200.
            let tail = 2.0 * ((1.0 - rng.unit()).powf(-1.0 / 1.2) - 1.0);
            (3 + tail as usize).min(200)
        } else {
            2
        };
        let mut members: Vec<usize> = Vec::with_capacity(size);
        for _ in 0..size * 4 {
            if members.len() == size {
                break;
            }
            let u = rng.below(model.users);
            if count[u] < MAX_CONVERSATIONS_PER_USER && !members.contains(&u) {
                members.push(u);
            }
        }
        if members.len() < size.clamp(2, 3) {
            continue;
        }
        if !group {
            let key = (members[0].min(members[1]), members[0].max(members[1]));
            if !pairs.insert(key) {
                continue;
            }
        }
        for &u in &members {
            count[u] += 1;
        }
        let id = rng.uuid();
        conversations.push(Conversation {
            id,
            members,
            group,
            messages: 0,
        });
    }
    let mut of_user = vec![Vec::new(); model.users];
    for (i, c) in conversations.iter().enumerate() {
        for &u in &c.members {
            of_user[u].push(i);
        }
    }
    World {
        words,
        word_law: Zipf::new(VOCABULARY, 1.0),
        conversations,
        of_user,
    }
}

pub(crate) fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn uuid_text(id: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*id).to_string()
}

/// A message's text: 3 to 12 words of the vocabulary.
fn sentence(world: &World, rng: &mut Rng) -> String {
    let n = 3 + rng.below(10);
    (0..n)
        .map(|_| world.words[world.word_law.draw(rng)].as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Which SQL the fill prints.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Dialect {
    Sqlite,
    Postgres,
    /// MySQL and MariaDB.
    Mysql,
}

/// Every row's time, as each dialect writes it.
pub(crate) fn at(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Mysql => "'2026-11-01 00:00:00'",
        _ => "'2026-11-01T00:00:00+00:00'",
    }
}
const ROWS_PER_INSERT: usize = 500;

/// Prints `head` (an `INSERT … VALUES`) with the rows of `values`, in
/// statements of at most [`ROWS_PER_INSERT`] rows.
pub(crate) fn rows(
    out: &mut dyn Write,
    head: &str,
    values: &mut dyn Iterator<Item = String>,
) -> std::io::Result<()> {
    let mut batch = Vec::with_capacity(ROWS_PER_INSERT);
    for v in values {
        batch.push(v);
        if batch.len() == ROWS_PER_INSERT {
            writeln!(out, "{head} {};", batch.join(","))?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        writeln!(out, "{head} {};", batch.join(","))?;
    }
    Ok(())
}

/// Prints the SQL that fills a freshly migrated database holding one
/// account, `seed`.
pub fn fill(model: &Model, dialect: Dialect, out: &mut impl Write) -> std::io::Result<()> {
    let mut world = world(model);
    let mut rng = Rng(model.seed ^ 0x5EED);
    let chat_law = Zipf::new(world.conversations.len(), 0.9);
    // Busy and quiet conversations, direct and groups, in no order.
    let mut order: Vec<usize> = (0..world.conversations.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let placed: Vec<usize> = (0..model.messages)
        .map(|_| order[chat_law.draw(&mut rng)])
        .collect();
    for &c in &placed {
        world.conversations[c].messages += 1;
    }
    let uuid = |id: &[u8; 16]| match dialect {
        Dialect::Sqlite | Dialect::Mysql => format!("X'{}'", hex(id)),
        Dialect::Postgres => format!("'{}'", uuid_text(id)),
    };
    let time = at(dialect);
    if let Dialect::Mysql = dialect {
        // Loaded without its FULLTEXT index (kept up row by row, it makes
        // the load several times slower); `chat-server migrate` then
        // builds it, once, as for an existing database.
        writeln!(
            out,
            "ALTER TABLE messages DROP INDEX ft_messages_content; \
             DELETE FROM seaql_migrations WHERE version = 'm20261203_000001_search';"
        )?;
    }
    writeln!(out, "BEGIN;")?;
    for u in 0..model.users {
        let id = FIRST_USER_ID + u as i64;
        writeln!(
            out,
            "INSERT INTO users (id, username, username_key, email, first_name, last_name, \
             password_hash, is_active, is_staff, is_superuser, token_version, created_at) \
             SELECT {id}, 'b{id}', 'b{id}', '', 'Bench', '{id}', password_hash, true, false, \
             false, 0, created_at FROM users WHERE username = 'seed';"
        )?;
    }
    rows(
        &mut *out,
        "INSERT INTO chats (id, kind, title, direct_key, created_at, seq) VALUES",
        &mut world.conversations.iter().enumerate().map(|(i, c)| {
            let (title, key) = if c.group {
                (format!("'group {i}'"), "NULL".to_string())
            } else {
                let (a, b) = (
                    c.members[0].min(c.members[1]),
                    c.members[0].max(c.members[1]),
                );
                let (a, b) = (FIRST_USER_ID + a as i64, FIRST_USER_ID + b as i64);
                ("NULL".to_string(), format!("'{a}:{b}'"))
            };
            let kind = if c.group { "group" } else { "direct" };
            format!(
                "({}, '{kind}', {title}, {key}, {time}, {})",
                uuid(&c.id),
                c.messages
            )
        }),
    )?;
    rows(
        &mut *out,
        "INSERT INTO chat_members (chat_id, user_id, joined_at, role) VALUES",
        &mut world.conversations.iter().flat_map(|c| {
            c.members.iter().enumerate().map(|(i, &u)| {
                let role = if c.group && i == 0 { "owner" } else { "member" };
                format!(
                    "({}, {}, {time}, '{role}')",
                    uuid(&c.id),
                    FIRST_USER_ID + u as i64
                )
            })
        }),
    )?;
    let mut seqs = vec![0i64; world.conversations.len()];
    let world = &world;
    let rng = RefCell::new(rng);
    rows(
        &mut *out,
        "INSERT INTO messages (id, chat_id, sender_id, content, created_at, seq) VALUES",
        &mut placed.iter().enumerate().map(|(i, &c)| {
            let mut rng = rng.borrow_mut();
            let conversation = &world.conversations[c];
            let sender = conversation.members[rng.below(conversation.members.len())];
            seqs[c] += 1;
            format!(
                "({}, {}, {}, '{}', {time}, {})",
                i + 1,
                uuid(&conversation.id),
                FIRST_USER_ID + sender as i64,
                sentence(world, &mut rng),
                seqs[c]
            )
        }),
    )?;
    if let Dialect::Postgres = dialect {
        for table in ["users", "messages"] {
            writeln!(
                out,
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}));"
            )?;
        }
    }
    writeln!(out, "COMMIT;")?;
    if let Dialect::Postgres = dialect {
        // As a database that has been running is: vacuumed (hint bits
        // set, the visibility map built) and analyzed.
        writeln!(out, "VACUUM ANALYZE;")?;
    }
    Ok(())
}

/// Options of `chat-bench search`.
#[derive(Debug, Clone)]
pub struct SearchOptions {
    pub url: String,
    pub model: Model,
    /// Sessions that search, one per user.
    pub searchers: usize,
    /// Searches of each kind (one word, two words).
    pub queries: usize,
    /// Searches per second, in total.
    pub search_rate: u64,
    /// Sessions that write, one per user.
    pub writers: usize,
    /// Messages per second written meanwhile, in total (0: none).
    pub write_rate: u64,
}

/// What `chat-bench search` measured.
#[derive(Debug, serde::Serialize)]
pub struct SearchReport {
    pub one_word_ms: [f64; 3],
    pub two_words_ms: [f64; 3],
    pub one_word_hits: f64,
    pub two_words_hits: f64,
    pub errors: u64,
    pub written: u64,
    pub write_seconds: f64,
    /// The five slowest searches: (ms, searcher's username, query, hits).
    pub slowest: Vec<(f64, String, String, u64)>,
}

pub(crate) async fn login(
    client: &awc::Client,
    base: &str,
    username: &str,
) -> Result<String, BenchError> {
    let mut res = client
        .post(format!("{base}/api/login/"))
        .send_json(&json!({"username": username, "password": BENCH_PASSWORD}))
        .await
        .map_err(|e| setup("login", e))?;
    let value: serde_json::Value = res.json().await.map_err(|e| setup("login body", e))?;
    value["token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| setup(&format!("login of {username}"), value))
}

/// Users with at least one conversation, spread over the model.
fn pick_users(world: &World, n: usize, offset: usize) -> Vec<usize> {
    let users = world.of_user.len();
    (0..users)
        .map(|i| (i * 7919 + offset) % users)
        .filter(|&u| !world.of_user[u].is_empty())
        .take(n)
        .collect()
}

/// Times searches while writers write; see the module's comment.
pub async fn search(opts: SearchOptions) -> Result<SearchReport, BenchError> {
    let world = Rc::new(world(&opts.model));
    let client = crate::net::client(None, Duration::from_secs(60));
    let ws_base = ws_url(&opts.url);
    let stop = Rc::new(RefCell::new(false));
    let written = Rc::new(RefCell::new(0u64));
    let mut writers = Vec::new();
    let started = Instant::now();
    if opts.write_rate > 0 {
        let interval = Duration::from_secs_f64(opts.writers as f64 / opts.write_rate as f64);
        for (i, u) in pick_users(&world, opts.writers, 1).into_iter().enumerate() {
            let token = login(
                &client,
                &opts.url,
                &format!("b{}", FIRST_USER_ID + u as i64),
            )
            .await?;
            let socket = open_session(&client, &ws_base, &token).await?;
            let chat = uuid_text(&world.conversations[world.of_user[u][0]].id);
            let (world, stop, written) = (world.clone(), stop.clone(), written.clone());
            let offset = interval.mul_f64(i as f64 / opts.writers as f64);
            writers.push(actix_rt::spawn(async move {
                let (mut sink, mut stream) = socket.split();
                actix_rt::spawn(async move {
                    while let Some(Ok(frame)) = stream.next().await {
                        if let ws::Frame::Text(bytes) = frame {
                            if bytes.starts_with(b"{\"type\":\"message_response\"") {
                                *written.borrow_mut() += 1;
                            }
                        }
                    }
                });
                let mut rng = Rng(i as u64 + 17);
                let mut next = Instant::now() + offset;
                while !*stop.borrow() {
                    next += interval;
                    tokio::time::sleep_until(next.into()).await;
                    let text = sentence(&world, &mut rng);
                    let frame = json!({"type": "message", "data": {"to": chat, "content": text}});
                    if sink
                        .send(ws::Message::Text(frame.to_string().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }));
        }
    }
    let searchers = pick_users(&world, opts.searchers, 2);
    let mut sockets = Vec::new();
    let mut slowest: Vec<(f64, String, String, u64)> = Vec::new();
    for &u in &searchers {
        let token = login(
            &client,
            &opts.url,
            &format!("b{}", FIRST_USER_ID + u as i64),
        )
        .await?;
        sockets.push(open_session(&client, &ws_base, &token).await?);
    }
    let hist = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let (mut one, mut two) = (hist(), hist());
    let (mut hits_one, mut hits_two, mut errors) = (0u64, 0u64, 0u64);
    let interval = Duration::from_secs_f64(1.0 / opts.search_rate.max(1) as f64);
    let mut rng = Rng(opts.model.seed ^ 0xC0FFEE);
    let mut next = Instant::now();
    let write_start = started.elapsed();
    let written_before = *written.borrow();
    for q in 0..opts.queries * 2 {
        next += interval;
        tokio::time::sleep_until(next.into()).await;
        let words = 1 + q % 2;
        let query = (0..words)
            .map(|_| world.words[world.word_law.draw(&mut rng)].as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let who = q % searchers.len().max(1);
        let socket = &mut sockets[who];
        let asked = Instant::now();
        let frame = json!({"type": "search", "data": {"query": query}});
        socket
            .send(ws::Message::Text(frame.to_string().into()))
            .await
            .map_err(|e| setup("search send", e))?;
        let hits = loop {
            match socket.next().await {
                Some(Ok(ws::Frame::Text(bytes))) => {
                    let Ok(frame) = serde_json::from_slice::<Frame>(&bytes) else {
                        continue;
                    };
                    if frame.kind != "search_response" {
                        continue;
                    }
                    let data: serde_json::Value = frame
                        .data
                        .and_then(|d| serde_json::from_str(d.get()).ok())
                        .unwrap_or_default();
                    match data["results"].as_array() {
                        Some(results) => break results.len() as u64,
                        None => {
                            errors += 1;
                            break 0;
                        }
                    }
                }
                Some(Ok(_)) => continue,
                other => return Err(setup("search answer", format!("{other:?}"))),
            }
        };
        let micros = asked.elapsed().as_micros().max(1) as u64;
        let username = format!("b{}", FIRST_USER_ID + searchers[who] as i64);
        slowest.push((micros as f64 / 1000.0, username, query, hits));
        slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
        slowest.truncate(5);
        if words == 1 {
            one.record(micros).ok();
            hits_one += hits;
        } else {
            two.record(micros).ok();
            hits_two += hits;
        }
    }
    *stop.borrow_mut() = true;
    let write_seconds = (started.elapsed() - write_start).as_secs_f64();
    let written = *written.borrow() - written_before;
    let quantiles =
        |h: &Histogram<u64>| [0.5, 0.99, 1.0].map(|q| h.value_at_quantile(q) as f64 / 1000.0);
    Ok(SearchReport {
        one_word_ms: quantiles(&one),
        two_words_ms: quantiles(&two),
        one_word_hits: hits_one as f64 / opts.queries.max(1) as f64,
        two_words_hits: hits_two as f64 / opts.queries.max(1) as f64,
        errors,
        written,
        write_seconds,
        slowest,
    })
}
