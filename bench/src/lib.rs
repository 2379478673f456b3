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
mod batches;
mod changes;
mod churn;
mod files;
mod group;
mod idle;
mod load;
mod measure;
mod mix;
mod net;
mod search;
mod startup;
mod summary;

pub use attack::{attack, AttackOptions, AttackReport, Pattern};
pub use churn::{churn, ChurnOptions, ChurnReport};
pub use files::{files, FilesOptions, FilesReport};
pub use group::{group, GroupOptions, GroupReport};
pub use idle::{idle, IdleOptions, IdleReport, LARGE_FRAME_BYTES};
pub use load::{load, LoadOptions, LoadReport};
use load::{send_paced, senders_finished, Pacing, DRAIN};
pub use mix::{fill_population, mix, MixOptions, MixReport};
pub use search::{fill, search, Dialect, Model, SearchOptions, SearchReport};
pub use startup::{startup, StartupReport};
pub use summary::{print, Report};

use measure::{
    cpu_time, processes_cpu, processes_cpu_since, rss_kib, servers_cpu_time, tcp_socket_kib,
    MachineTime,
};

use actix_http::ws;
use awc::BoxedSocket;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::json;

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

/// A quantile of a histogram of µs, in ms.
fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}
