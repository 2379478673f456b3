//! What each command prints: a summary, one figure a line, for a person,
//! then the whole report as one JSON line, which the scripts read.

use crate::{
    AttackReport, ChurnReport, FilesReport, GroupReport, IdleReport, LoadReport, MixReport,
    SearchReport, StartupReport,
};

/// A run's result: printed as a summary, then as one JSON line.
pub trait Report: serde::Serialize {
    /// The summary's lines: a figure's name and its values.
    fn summary(&self) -> Vec<(String, String)>;
}

/// Prints `report`'s summary, then its JSON line.
pub fn print(report: &impl Report) {
    for (name, value) in report.summary() {
        println!("{name:>16}: {value}");
    }
    println!(
        "{}",
        serde_json::to_string(report).expect("reports are plain numbers")
    );
}

fn lines<const N: usize>(lines: [(&str, String); N]) -> Vec<(String, String)> {
    lines.into_iter().map(|(n, v)| (n.to_string(), v)).collect()
}

/// The "host steal" line: how much of the machine's time its hypervisor
/// took while the CPU figures were measured.
fn host_steal(percent: Option<f64>) -> (&'static str, String) {
    let text = match percent {
        None => "not measured".into(),
        Some(p) if p >= 1.0 => format!(
            "{p:.1} % of the machine's time: the CPU figures are not comparable with a quiet host's"
        ),
        Some(p) => format!("{p:.1} % of the machine's time"),
    };
    ("host steal", text)
}

impl Report for LoadReport {
    fn summary(&self) -> Vec<(String, String)> {
        let r = self;
        lines([
            ("connections", r.connections.to_string()),
            ("sent / acked", format!("{} / {}", r.sent, r.acked)),
            (
                "delivered",
                format!(
                    "{} ({:.0} msg/s over {:.1} s)",
                    r.delivered, r.msgs_per_sec, r.seconds
                ),
            ),
            (
                "lost / dup / ooo",
                format!("{} / {} / {}", r.lost, r.dup, r.reordered),
            ),
            ("errors", r.errors.to_string()),
            (
                "latency",
                format!(
                    "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
                    r.p50_ms, r.p99_ms, r.p999_ms, r.max_ms
                ),
            ),
            (
                "changes",
                format!(
                    "reactions {} / {} ok, edits {} / {} ok, {} errors",
                    r.reactions_sent, r.reactions_ok, r.edits_sent, r.edits_ok, r.change_errors
                ),
            ),
            (
                "history page",
                match (r.history_p50_ms, r.history_p99_ms) {
                    (Some(p50), Some(p99)) => format!("p50 {p50:.2} ms, p99 {p99:.2} ms"),
                    _ => "not timed".into(),
                },
            ),
            (
                "server CPU",
                r.server_cpu_us_per_delivery.map_or_else(
                    || "not measured (no --server-pid)".into(),
                    |us| format!("{us:.2} µs per delivered message"),
                ),
            ),
            (
                "database CPU",
                r.database_cpu_us_per_delivery.map_or_else(
                    || "not measured (no --database-process)".into(),
                    |us| format!("{us:.2} µs per delivered message"),
                ),
            ),
            (
                "batches",
                r.writes_per_batch.map_or_else(
                    || "not measured (/metrics not readable)".into(),
                    |n| format!("{n:.1} writes a committed batch"),
                ),
            ),
            host_steal(r.host_steal_percent),
        ])
    }
}

impl Report for GroupReport {
    fn summary(&self) -> Vec<(String, String)> {
        let r = self;
        let redis = match (r.redis_commands_per_msg, r.redis_publishes_per_msg) {
            (Some(all), Some(publishes)) => {
                format!("{all:.2} commands ({publishes:.2} PUBLISH) per message")
            }
            _ => "not measured (no --redis)".into(),
        };
        lines([
            (
                "members",
                format!("{} on {} instance(s)", r.members, r.instances),
            ),
            ("sent / acked", format!("{} / {}", r.sent, r.acked)),
            (
                "deliveries",
                format!(
                    "{} ({:.0}/s; {:.1} msg/s over {:.1} s)",
                    r.deliveries, r.deliveries_per_sec, r.msgs_per_sec, r.seconds
                ),
            ),
            (
                "lost / dup",
                format!(
                    "{} / {} ({} messages reached everyone)",
                    r.lost, r.dup, r.complete
                ),
            ),
            (
                "to last member",
                format!(
                    "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                    r.p50_ms, r.p99_ms, r.max_ms
                ),
            ),
            ("redis", redis),
            (
                "leaving",
                format!(
                    "{} members one by one: p50 {:.2} ms, max {:.2} ms",
                    r.leaves, r.leave_p50_ms, r.leave_max_ms
                ),
            ),
        ])
    }
}

impl Report for ChurnReport {
    fn summary(&self) -> Vec<(String, String)> {
        let r = self;
        lines([
            ("connections", r.connections.to_string()),
            (
                "sent / acked",
                format!(
                    "{} / {} ({} unacknowledged at the end)",
                    r.sent, r.acked, r.unacked
                ),
            ),
            (
                "lost / duplicated",
                format!("{} / {}", r.lost, r.duplicated),
            ),
            ("reconnects", r.reconnects.to_string()),
            ("longest outage", format!("{:.0} ms", r.max_outage_ms)),
            (
                "throughput",
                format!(
                    "{:.0} acked/s; slowest second {}; per second {:?}",
                    r.acked_per_sec, r.min_acked_in_a_second, r.per_second
                ),
            ),
        ])
    }
}

impl Report for IdleReport {
    fn summary(&self) -> Vec<(String, String)> {
        let r = self;
        let kib =
            |v: Option<u64>| v.map_or("n/a (no --server-pid)".to_string(), |k| format!("{k} KiB"));

        lines([
            ("sessions", r.sessions.to_string()),
            (
                "server RSS",
                format!("{} → {}", kib(r.rss_before_kib), kib(r.rss_after_kib)),
            ),
            (
                "per session",
                r.kib_per_session
                    .map_or("n/a".into(), |k| format!("{k:.2} KiB")),
            ),
            (
                "kernel TCP mem",
                match (r.tcp_socket_kib_before, r.tcp_socket_kib_after) {
                    (Some(b), Some(a)) => {
                        format!("{b} → {a} KiB (both ends of every connection are on this machine)")
                    }
                    _ => "n/a".into(),
                },
            ),
            (
                "slope",
                match (r.rss_half_kib, r.slope_kib_per_session) {
                    (Some(half), Some(slope)) => format!(
                        "{slope:.2} KiB per session from half the sessions ({half} KiB) to all"
                    ),
                    _ => "n/a".into(),
                },
            ),
            (
                "idle CPU",
                r.idle_cpu_percent
                    .map_or("not sampled".into(), |c| format!("{c:.2} % of one core")),
            ),
            host_steal(r.host_steal_percent),
            (
                "after 60 KiB frames",
                match (r.rss_after_large_kib, r.large_kib_per_session) {
                    (Some(rss), Some(per)) => {
                        format!("RSS {rss} KiB, {per:+.2} KiB per sending session")
                    }
                    _ => "not measured".into(),
                },
            ),
            (
                "latency",
                format!(
                    "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} messages",
                    r.p50_ms, r.p99_ms, r.max_ms, r.messages
                ),
            ),
        ])
    }
}

impl Report for SearchReport {
    fn summary(&self) -> Vec<(String, String)> {
        let r = self;
        let ms = |q: [f64; 3]| format!("p50 {:.2} / p99 {:.2} / max {:.2} ms", q[0], q[1], q[2]);

        lines([
            ("one word", ms(r.one_word_ms)),
            ("two words", ms(r.two_words_ms)),
            (
                "hits per page",
                format!("{:.1} / {:.1}", r.one_word_hits, r.two_words_hits),
            ),
            ("errors", r.errors.to_string()),
            (
                "written",
                format!("{:.0} msg/s", r.written as f64 / r.write_seconds.max(0.001)),
            ),
        ])
    }
}

impl Report for FilesReport {
    fn summary(&self) -> Vec<(String, String)> {
        let r = self;
        let rss = match (r.rss_before_kib, r.rss_peak_kib, r.rss_growth_kib) {
            (Some(before), Some(peak), Some(growth)) => format!(
                "{:.1} MiB before, {:.1} MiB at the peak: +{:.1} MiB",
                before as f64 / 1024.0,
                peak as f64 / 1024.0,
                growth as f64 / 1024.0
            ),
            _ => "not sampled (no --pid)".into(),
        };
        lines([
            (
                "upload",
                format!("{} MiB at {:.0} MiB/s", r.size_mib, r.upload_mib_per_s),
            ),
            (
                "download",
                format!("{} MiB at {:.0} MiB/s", r.size_mib, r.download_mib_per_s),
            ),
            (
                "at once",
                format!(
                    "{} × {} MiB in {:.2} s ({:.0} MiB/s)",
                    r.concurrent, r.each_mib, r.concurrent_seconds, r.concurrent_mib_per_s
                ),
            ),
            ("server RSS", rss),
        ])
    }
}

impl Report for StartupReport {
    fn summary(&self) -> Vec<(String, String)> {
        let r = self;
        lines([(
            "to /readyz 200",
            format!(
                "min {:.1} ms, median {:.1} ms, max {:.1} ms over {} runs",
                r.min_ms, r.median_ms, r.max_ms, r.runs
            ),
        )])
    }
}

impl Report for MixReport {
    fn summary(&self) -> Vec<(String, String)> {
        let r = self;
        let opt = |v: Option<f64>, unit: &str| {
            v.map_or("not measured".into(), |v| format!("{v:.2} {unit}"))
        };
        let kib = |v: Option<u64>| v.map_or("?".into(), |v| format!("{v}"));
        let steal = host_steal(r.host_steal_percent);
        let mut lines = vec![
            (
                "population".to_string(),
                format!(
                    "{} users, {} sessions, {} direct conversations, {} groups, {} instance(s)",
                    r.users, r.sessions, r.direct_conversations, r.groups, r.instances
                ),
            ),
            (
                "sent / acked".into(),
                format!(
                    "{} / {} ({:.1} msg/s), {} errors {:?}",
                    r.sent, r.acked, r.messages_per_sec, r.errors, r.error_samples
                ),
            ),
            (
                "deliveries".into(),
                format!(
                    "{} ({:.0}/s over {:.1} s)",
                    r.deliveries, r.deliveries_per_sec, r.seconds
                ),
            ),
            (
                "typing / reads".into(),
                format!("{} / {}", r.typing_sent, r.reads_sent),
            ),
            (
                "lost / dup / gaps".into(),
                format!("{} / {} / {}", r.lost, r.duplicates, r.jumps),
            ),
            (
                "reconnects".into(),
                format!(
                    "{} asked, {} dropped; caught up p50 {} / p99 {}",
                    r.reconnects,
                    r.dropped,
                    opt(r.catch_up_p50_ms, "ms"),
                    opt(r.catch_up_p99_ms, "ms")
                ),
            ),
            (
                "opening".into(),
                format!(
                    "{} sessions in {:.1} s; get_contacts answered p50 {} / p99 {}; \
                     per session: servers {}, database {}",
                    r.sessions,
                    r.open_seconds,
                    opt(r.contacts_at_open_p50_ms, "ms"),
                    opt(r.contacts_at_open_p99_ms, "ms"),
                    opt(r.open_server_cpu_us_per_session, "µs"),
                    opt(r.open_database_cpu_us_per_session, "µs")
                ),
            ),
        ];
        for b in r.latency.iter().chain(std::iter::once(&r.all)) {
            lines.push((
                b.bucket.to_string(),
                format!(
                    "{} deliveries: p50 {:.2} / p99 {:.2} / p99.9 {:.2} / max {:.2} ms",
                    b.deliveries, b.p50_ms, b.p99_ms, b.p999_ms, b.max_ms
                ),
            ));
        }
        lines.extend([
            (
                "server CPU".into(),
                format!(
                    "{} per delivery, {} per message, {} of one core (the generator: {})",
                    opt(r.server_cpu_us_per_delivery, "µs"),
                    opt(r.server_cpu_us_per_message, "µs"),
                    opt(r.server_cpu_percent, "%"),
                    opt(r.generator_cpu_percent, "%")
                ),
            ),
            (
                "server RSS".into(),
                format!(
                    "{} KiB after logins, {} with half the sessions, {} with all, {} at the end",
                    kib(r.rss_before_sessions_kib),
                    kib(r.rss_half_kib),
                    kib(r.rss_sessions_kib),
                    kib(r.rss_end_kib)
                ),
            ),
            (
                "per session".into(),
                format!(
                    "{} (slope {})",
                    opt(r.kib_per_session, "KiB"),
                    opt(r.slope_kib_per_session, "KiB")
                ),
            ),
            (
                "kernel TCP mem".into(),
                format!(
                    "{} → {} KiB",
                    kib(r.tcp_socket_kib_before),
                    kib(r.tcp_socket_kib_after)
                ),
            ),
            (
                "redis".into(),
                format!(
                    "{} commands, {} CPU per message",
                    opt(r.redis_commands_per_message, ""),
                    opt(r.redis_cpu_us_per_message, "µs")
                ),
            ),
            (
                "database CPU".into(),
                format!(
                    "{} per message, {} of one core",
                    opt(r.database_cpu_us_per_message, "µs"),
                    opt(r.database_cpu_percent, "%")
                ),
            ),
            (steal.0.into(), steal.1),
        ]);
        lines
    }
}

impl Report for AttackReport {
    fn summary(&self) -> Vec<(String, String)> {
        self.phases
            .iter()
            .map(|p| {
                let name = p.pattern.map_or("quiet".into(), |p| format!("{p:?}").to_lowercase());
                let line = format!(
                    "bystander p50 {:.2} ms, p99 {:.2} ms ({:.2}x quiet), max {:.2} ms, lost {}/{}; attacker {} requests, {} refused; a member pushed {} notices",
                    p.p50_ms, p.p99_ms, p.p99_ratio, p.max_ms, p.bystander_lost,
                    p.bystander_messages, p.attacker_requests, p.attacker_refused, p.member_notices
                );
                (name, line)
            })
            .collect()
    }
}
