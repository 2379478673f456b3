//! The load generator against a real server: a short, bounded run whose
//! counts (not speed) are checked.

use crate::common;

use std::time::Duration;

use chat_bench::{self as bench, LoadOptions};
use common::{Backend, TestApp};

#[actix_rt::test]
async fn a_short_load_run_delivers_everything_once() {
    let app = TestApp::spawn_with(
        &Backend::Sqlite,
        &[
            ("RATE_LIMIT_PER_SECOND", "100000"),
            ("RATE_LIMIT_BURST", "100000"),
        ],
    )
    .await;
    let report = bench::load(LoadOptions {
        urls: vec![app.url("")],
        pairs: 3,
        duration: Duration::from_secs(1),
        rate: 0,
        window: 4,
        sources: 2,
        reactions: 0,
        edits: 0,
        history_pages: 0,
        words: 0,
        // The server runs in this process: its CPU time is this process's.
        server_pids: vec![std::process::id()],
        client_ids: true,
        // SQLite runs in this process too: reading it by this process's name
        // checks the path a database server's processes take.
        database_process: Some(own_process_name()),
    })
    .await
    .expect("load run");
    assert_eq!(report.connections, 6);
    assert!(
        report.server_cpu_us_per_delivery.is_some_and(|us| us > 0.0),
        "CPU per delivery: {:?}",
        report.server_cpu_us_per_delivery
    );
    assert!(
        report
            .database_cpu_us_per_delivery
            .is_some_and(|us| us > 0.0),
        "database CPU per delivery: {:?}",
        report.database_cpu_us_per_delivery
    );
    assert!(report.sent > 0);
    assert_eq!(report.acked, report.sent, "every message acknowledged");
    assert_eq!(
        report.delivered, report.acked,
        "every acknowledged message delivered"
    );
    assert_eq!(
        (report.lost, report.dup, report.reordered, report.errors),
        (0, 0, 0, 0)
    );
    assert!(
        report.p50_ms > 0.0 && report.p50_ms <= report.p99_ms && report.p99_ms <= report.max_ms
    );

    let mut res = app.http.get(app.url("/metrics")).send().await.unwrap();
    let metrics = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
    let stored = metrics
        .lines()
        .find_map(|l| l.strip_prefix("chat_messages_stored_total "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap();
    assert_eq!(stored as u64, report.acked);
    assert!(
        report
            .writes_per_batch
            .is_some_and(|n| n >= 1.0 && n <= report.acked as f64),
        "writes a batch: {:?}",
        report.writes_per_batch
    );
}

/// One pair sending for a second with one message in flight, nothing else
/// measured: each test overrides what it is about.
fn one_pair(app: &TestApp) -> LoadOptions {
    LoadOptions {
        urls: vec![app.url("")],
        pairs: 1,
        duration: Duration::from_secs(1),
        rate: 0,
        window: 1,
        sources: 1,
        reactions: 0,
        edits: 0,
        history_pages: 0,
        words: 0,
        server_pids: Vec::new(),
        client_ids: false,
        database_process: None,
    }
}

#[actix_rt::test]
async fn writes_a_batch_come_from_the_servers_metrics() {
    // One message in flight at a time: each is a batch of its own.
    let open = TestApp::spawn(&Backend::Sqlite).await;
    let report = bench::load(one_pair(&open)).await.expect("load run");
    assert!(report.acked > 1, "{report:?}");
    assert_eq!(report.writes_per_batch, Some(1.0));
    // Behind a token the generator does not have: not measured.
    let closed =
        TestApp::spawn_with(&Backend::Sqlite, &[("METRICS_TOKEN", "a-token-of-ours")]).await;
    let report = bench::load(one_pair(&closed)).await.expect("load run");
    assert!(report.acked > 0, "{report:?}");
    assert_eq!(report.writes_per_batch, None);
}

#[actix_rt::test]
async fn a_fixed_rate_run_sends_about_that_rate() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    let report = bench::load(LoadOptions {
        pairs: 2,
        rate: 100,
        // Wide enough that slow acknowledgements on a loaded machine (up
        // to 1.28 s) do not hold the senders back: this tests the pacing.
        window: 64,
        ..one_pair(&app)
    })
    .await
    .expect("load run");
    // 100 msg/s for one second from the run's start: each of the two
    // senders every 20 ms, the second 10 ms after the first, so 49 each are
    // due before the end. Every one due is sent, however late a generator
    // short of CPU gets to it (a bound on what arrived in time failed
    // under CI's load: 47 of at least 50), and none more: the count is the
    // schedule's on any machine.
    assert_eq!(report.sent, 98);
    assert_eq!((report.lost, report.dup, report.errors), (0, 0, 0));
}

#[actix_rt::test]
async fn a_mixed_run_reacts_edits_and_times_history() {
    let app = generator_target().await;
    let report = bench::load(LoadOptions {
        urls: vec![app.url("")],
        pairs: 2,
        duration: Duration::from_secs(2),
        rate: 100,
        window: 8,
        sources: 1,
        reactions: 40,
        edits: 10,
        history_pages: 5,
        words: 3,
        server_pids: Vec::new(),
        client_ids: false,
        database_process: None,
    })
    .await
    .expect("load run");
    assert_eq!((report.lost, report.dup, report.errors), (0, 0, 0));
    assert!(
        report.reactions_sent > 0 && report.edits_sent > 0,
        "{report:?}"
    );
    assert_eq!(
        (report.reactions_ok, report.edits_ok, report.change_errors),
        (report.reactions_sent, report.edits_sent, 0),
        "every change answered, none refused"
    );
    assert!(report.history_p50_ms.is_some_and(|p50| p50 > 0.0));
    let changes = app.metric("chat_message_changes_stored_total").await;
    assert_eq!(changes as u64, report.reactions_sent + report.edits_sent);
}

/// `mix` on a population `mix-fill` loaded: every message acknowledged,
/// every conversation's log complete on every session (reconnects caught
/// up with sync), the figures present.
#[actix_rt::test]
async fn a_short_mix_run_keeps_every_log_complete() {
    use sea_orm::{ConnectionTrait, EntityTrait, PaginatorTrait};
    let app = TestApp::spawn(&Backend::Sqlite).await;
    let (users, seed) = (40, 7);
    let mut sql = Vec::new();
    bench::fill_population(users, seed, bench::Dialect::Sqlite, &mut sql).expect("the SQL");
    app.db
        .execute_unprepared(&String::from_utf8(sql).expect("UTF-8"))
        .await
        .expect("the population loads");
    let report = bench::mix(bench::MixOptions {
        urls: vec![app.url("")],
        users,
        seed,
        duration: Duration::from_secs(2),
        rate: 20.0,
        typing: 0.3,
        reads: 0.5,
        // Every session about once in the run.
        reconnects_per_minute: 30.0,
        sources: 2,
        // Sessions on two threads of their own, their tallies shared.
        threads: 2,
        // The server runs in this process.
        server_pids: vec![std::process::id()],
        redis: None,
        // SQLite runs in the server: name this process, to check that a
        // database's processes are found by name and their time read (other
        // test processes of this name may start and end meanwhile: each
        // counts from its own first reading, none takes time off another).
        database_process: Some(own_process_name()),
    })
    .await
    .expect("mix run");
    assert!(report.sent > 0, "{report:?}");
    assert_eq!(
        (report.acked, report.errors),
        (report.sent, 0),
        "{:?}",
        report.error_samples
    );
    assert_eq!(
        (report.lost, report.duplicates, report.jumps, report.dropped),
        (0, 0, 0, 0)
    );
    assert!(report.deliveries > report.acked, "{report:?}");
    assert!(report.reconnects > 0 && report.catch_up_p99_ms.is_some());
    assert!(
        report.typing_sent > 0 && report.reads_sent > 0,
        "{report:?}"
    );
    assert!((users..=2 * users).contains(&report.sessions), "{report:?}");
    assert!(report.server_cpu_us_per_delivery.is_some_and(|us| us > 0.0));
    assert!(report
        .database_cpu_us_per_message
        .is_some_and(|us| us > 0.0));
    assert!(report.kib_per_session.is_some());
    let stored = app.metric("chat_messages_stored_total").await;
    assert_eq!(stored as u64, report.acked);
    // Resends after a reconnect (same client_id) stored nothing new.
    let rows = entity::message::Entity::find()
        .count(&app.db)
        .await
        .unwrap();
    assert_eq!(rows, report.acked);
}

/// This process's name as `/proc/*/comm` gives it.
fn own_process_name() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .expect("Linux names every process")
        .trim_end()
        .to_string()
}

/// A server the generator may push hard: no request or registration limit in the way.
async fn generator_target() -> TestApp {
    TestApp::spawn_with(
        &Backend::Sqlite,
        &[
            ("RATE_LIMIT_PER_SECOND", "100000"),
            ("RATE_LIMIT_BURST", "100000"),
            ("REGISTRATION_BURST", "100"),
        ],
    )
    .await
}

#[actix_rt::test]
async fn a_short_group_run_reaches_every_member_once() {
    let app = generator_target().await;
    let report = bench::group(bench::GroupOptions {
        urls: vec![app.url("")],
        members: 6,
        senders: 2,
        duration: Duration::from_secs(1),
        rate: 0,
        window: 4,
        sources: 1,
        redis: None,
    })
    .await
    .expect("group run");
    assert!(report.acked > 0);
    assert_eq!(report.acked, report.sent, "every message acknowledged");
    assert_eq!(
        report.complete, report.acked,
        "every message reached everyone"
    );
    assert_eq!(report.deliveries, report.acked * 5);
    assert_eq!((report.lost, report.dup), (0, 0));
    assert!(report.p50_ms > 0.0 && report.p50_ms <= report.p99_ms);
}

#[actix_rt::test]
async fn a_short_churn_run_finds_everything_stored_once() {
    let app = generator_target().await;
    let report = bench::churn(bench::ChurnOptions {
        url: app.url(""),
        pairs: 2,
        duration: Duration::from_secs(2),
        rate: 50,
        sources: 1,
    })
    .await
    .expect("churn run");
    assert!(report.acked > 50, "{report:?}");
    assert_eq!(report.acked, report.sent, "every message acknowledged");
    assert_eq!(
        (
            report.lost,
            report.duplicated,
            report.unacked,
            report.reconnects
        ),
        (0, 0, 0, 0)
    );
}

#[actix_rt::test]
async fn an_idle_run_reports_memory_cpu_and_large_frames() {
    let app = TestApp::spawn_with(&Backend::Sqlite, &[("MAX_SESSIONS_PER_USER", "100")]).await;
    // The server runs in this process: its RSS and CPU are ours.
    let report = bench::idle(bench::IdleOptions {
        url: app.url(""),
        users: 4,
        sessions: 20,
        server_pid: Some(std::process::id()),
        sources: 1,
        messages: 5,
        cpu_seconds: 1,
        large: 4,
        paired: true,
        contacts: true,
    })
    .await
    .expect("idle run");
    assert_eq!((report.sessions, report.messages), (20, 5));
    assert!(report.kib_per_session.is_some());
    assert!(report.rss_half_kib.is_some() && report.slope_kib_per_session.is_some());
    assert!(report.idle_cpu_percent.is_some_and(|c| c >= 0.0));
    assert!(report.rss_after_large_kib.is_some() && report.large_kib_per_session.is_some());
    assert!(report.p50_ms > 0.0 && report.p50_ms <= report.max_ms);
}

#[actix_rt::test]
async fn a_files_run_reports_throughput_and_memory() {
    let app = TestApp::spawn_with(&Backend::Sqlite, &[("REGISTRATION_BURST", "100")]).await;
    let report = bench::files(bench::FilesOptions {
        url: app.url(""),
        size_mib: 2,
        concurrent: 3,
        each_mib: 1,
        pid: Some(std::process::id()),
    })
    .await
    .expect("files run");
    assert_eq!(
        (report.size_mib, report.concurrent, report.each_mib),
        (2, 3, 1)
    );
    assert!(report.upload_mib_per_s > 0.0 && report.download_mib_per_s > 0.0);
    assert!(report.rss_growth_kib.is_some());
}
