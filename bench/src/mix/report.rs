//! What `chat-bench mix` measured and how it is reported: the servers'
//! RSS at each step, the CPU time and Redis's counters over the run, and
//! every session's log checked for loss.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;

use super::population::BUCKETS;
use super::session::{lock, Shared, State};
use super::{MixOptions, Sent};
use crate::group::redis_info;
use crate::{
    cpu_time, processes_cpu, processes_cpu_since, rss_kib, servers_cpu_time, BenchError,
    MachineTime,
};

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
    /// Opening every session, each asking `get_contacts` as a client does
    /// (a storm, as when an instance's clients come back after a restart):
    /// from the first handshake to the last answer, each session's wait
    /// for its contacts, and the servers' and the database's CPU per
    /// session opened.
    pub open_seconds: f64,
    pub contacts_at_open_p50_ms: Option<f64>,
    pub contacts_at_open_p99_ms: Option<f64>,
    pub open_server_cpu_us_per_session: Option<f64>,
    pub open_database_cpu_us_per_session: Option<f64>,
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
    /// The share of the machine's time its hypervisor took while the messages
    /// were sent, in per cent: a CPU figure measured while the host took much
    /// is not comparable with one measured while it took none.
    pub host_steal_percent: Option<f64>,
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

pub(super) fn rss(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| rss_kib(pid)).sum()
}

/// The servers' RSS at each step, and the kernel's socket memory.
pub(super) struct Memory {
    pub(super) rss_before: Option<u64>,
    pub(super) rss_half: Option<u64>,
    pub(super) rss_sessions: Option<u64>,
    pub(super) rss_end: Option<u64>,
    pub(super) tcp_before: Option<u64>,
    pub(super) tcp_after: Option<u64>,
}

/// CPU time and Redis's counters, read when sending starts.
pub(super) struct Usage {
    servers: Option<Duration>,
    own: Option<Duration>,
    database: Option<std::collections::HashMap<u32, Duration>>,
    redis: Option<(u64, f64)>,
    machine: Option<MachineTime>,
}

/// A part of the run (opening the sessions, sending): how long it took
/// and what it used.
pub(super) struct Phase {
    pub(super) seconds: f64,
    pub(super) used: Used,
}

/// What the run used, from `Usage::start` to `Usage::end`.
pub(super) struct Used {
    servers: Option<Duration>,
    own: Option<Duration>,
    database: Option<Duration>,
    /// Redis's commands and CPU seconds over the run.
    redis: Option<(u64, f64)>,
    /// The share of the machine's time its hypervisor took, in per cent.
    stolen_percent: Option<f64>,
}

impl Usage {
    pub(super) fn start(opts: &MixOptions) -> Result<Usage, BenchError> {
        Ok(Usage {
            servers: servers_cpu_time(&opts.server_pids),
            own: cpu_time(std::process::id()),
            database: opts.database_process.as_deref().and_then(processes_cpu),
            redis: opts.redis.as_deref().map(redis_figures).transpose()?,
            machine: MachineTime::now(),
        })
    }

    pub(super) fn end(self, opts: &MixOptions) -> Result<Used, BenchError> {
        let since = |end: Option<Duration>, start: Option<Duration>| {
            end.zip(start).map(|(end, start)| end.saturating_sub(start))
        };
        let redis = match (opts.redis.as_deref(), self.redis) {
            (Some(url), Some((commands, cpu))) => {
                let (end_commands, end_cpu) = redis_figures(url)?;
                Some((end_commands.saturating_sub(commands), end_cpu - cpu))
            }
            _ => None,
        };
        Ok(Used {
            servers: since(servers_cpu_time(&opts.server_pids), self.servers),
            own: since(cpu_time(std::process::id()), self.own),
            database: processes_cpu_since(opts.database_process.as_deref(), self.database),
            redis,
            stolen_percent: MachineTime::stolen_percent(self.machine, MachineTime::now()),
        })
    }
}

/// The report: the tallies, every session's log checked against the
/// highest `seq` seen of each conversation, and the usage per delivery
/// and per message.
pub(super) fn build(
    opts: &MixOptions,
    shared: &Shared,
    states: &[Arc<Mutex<State>>],
    sent: &Sent,
    opening: &Phase,
    running: &Phase,
    memory: &Memory,
) -> MixReport {
    let (used, seconds) = (&running.used, running.seconds);
    let population = &shared.population;
    let total = states.len();
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
    let mut all = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
    for h in &tally.latency {
        all.add(h).expect("same bounds");
    }
    let cpu = used.servers;
    let per = |total: u64| {
        cpu.filter(|_| total > 0)
            .map(|cpu| cpu.as_secs_f64() * 1e6 / total as f64)
    };
    let quantile = |h: &Histogram<u64>, q: f64| {
        (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
    };
    let per_session = |cpu: Option<Duration>| {
        cpu.filter(|_| total > 0)
            .map(|cpu| cpu.as_secs_f64() * 1e6 / total as f64)
    };
    let kib_per = |a: Option<u64>, b: Option<u64>, n: usize| {
        a.zip(b)
            .filter(|_| n > 0)
            .map(|(a, b)| (b as f64 - a as f64) / n as f64)
    };
    let (rss_before, rss_half, rss_sessions) =
        (memory.rss_before, memory.rss_half, memory.rss_sessions);
    let per_message = tally.acked.max(1) as f64;
    MixReport {
        users: opts.users,
        sessions: total,
        direct_conversations: population.conversations.iter().filter(|c| !c.group).count(),
        groups: population.conversations.iter().filter(|c| c.group).count(),
        instances: opts.urls.len(),
        seconds,
        sent: *sent.messages.borrow(),
        acked: tally.acked,
        errors: tally.errors,
        error_samples: tally.error_samples.clone(),
        typing_sent: sent.typing,
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
        catch_up_p50_ms: quantile(&tally.catch_up, 0.5),
        catch_up_p99_ms: quantile(&tally.catch_up, 0.99),
        open_seconds: opening.seconds,
        contacts_at_open_p50_ms: quantile(&tally.contacts_at_open, 0.5),
        contacts_at_open_p99_ms: quantile(&tally.contacts_at_open, 0.99),
        open_server_cpu_us_per_session: per_session(opening.used.servers),
        open_database_cpu_us_per_session: per_session(opening.used.database),
        server_cpu_us_per_delivery: per(tally.deliveries),
        server_cpu_us_per_message: per(tally.acked),
        server_cpu_percent: cpu.map(|c| c.as_secs_f64() * 100.0 / seconds.max(1e-9)),
        generator_cpu_percent: used
            .own
            .map(|c| c.as_secs_f64() * 100.0 / seconds.max(1e-9)),
        rss_before_sessions_kib: rss_before,
        rss_half_kib: rss_half,
        rss_sessions_kib: rss_sessions,
        rss_end_kib: memory.rss_end,
        kib_per_session: kib_per(rss_before, rss_sessions, total),
        slope_kib_per_session: kib_per(rss_half, rss_sessions, total - total / 2),
        tcp_socket_kib_before: memory.tcp_before,
        tcp_socket_kib_after: memory.tcp_after,
        redis_commands_per_message: used
            .redis
            .map(|(commands, _)| commands as f64 / per_message),
        redis_cpu_us_per_message: used.redis.map(|(_, cpu)| cpu * 1e6 / per_message),
        database_cpu_us_per_message: used.database.map(|c| c.as_secs_f64() * 1e6 / per_message),
        database_cpu_percent: used
            .database
            .map(|c| c.as_secs_f64() * 100.0 / seconds.max(1e-9)),
        host_steal_percent: used.stolen_percent,
    }
}
