//! The binary as a user runs it: the `user` and `contact` commands, bad
//! configuration, and `serve` from start to a graceful SIGTERM.

use crate::common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, TestDatabase};

const BIN: &str = env!("CARGO_BIN_EXE_chat-server");

fn run(dir: &Path, env: &[(&str, &str)], args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_clear()
        .envs(env.iter().copied())
        .args(args);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn chat-server");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("wait")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Standard error without the line an account command starts with (the
/// database it opened).
fn refusal(o: &Output) -> String {
    let text = stderr(o);
    match text.split_once('\n') {
        Some((first, rest)) if first.starts_with("database: ") => rest.to_string(),
        _ => text,
    }
}

async fn user_and_contact_commands(backend: &Backend) {
    let db = TestDatabase::create(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<(&str, &str)> = match backend {
        Backend::Sqlite => vec![],
        _ => vec![("DATABASE_URL", db.url.as_str())],
    };
    let name = backend.name();
    let out = run(
        dir.path(),
        &env,
        &[
            "user",
            "create",
            "alice",
            "--first-name",
            "Alice",
            "--last-name",
            "Smith",
            "--password-stdin",
        ],
        Some("a fine password\n"),
    );
    assert!(out.status.success(), "{name}: {}", stderr(&out));
    assert_eq!(stdout(&out), "created user alice (id 1)\n");
    let out = run(
        dir.path(),
        &env,
        &["user", "create", "bob", "--password-stdin"],
        Some("another fine one\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(
        dir.path(),
        &env,
        &["user", "create", "alice", "--password-stdin"],
        Some("a fine password\n"),
    );
    assert_eq!(out.status.code(), Some(2));
    // The database it opened, then the one line of the refusal.
    let said = stderr(&out);
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 2, "{said}");
    assert!(lines[0].starts_with("database: "), "{said}");
    assert_eq!(
        lines[1],
        "chat-server: A user with that username already exists."
    );
    let out = run(
        dir.path(),
        &env,
        &["user", "create", "carol", "--password-stdin"],
        Some("short\n"),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("too short"));

    let out = run(dir.path(), &env, &["contact", "add", "alice", "bob"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).ends_with(" between alice and bob created\n"),
        "{}",
        stdout(&out)
    );
    let out = run(dir.path(), &env, &["contact", "add", "bob", "alice"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).ends_with(" between bob and alice already exists\n"));
    let out = run(
        dir.path(),
        &env,
        &["contact", "add", "alice", "nobody"],
        None,
    );
    assert_eq!(
        (out.status.code(), refusal(&out)),
        (Some(2), "chat-server: no such user: nobody\n".to_string())
    );

    let out = run(
        dir.path(),
        &env,
        &["user", "set-password", "alice", "--password-stdin"],
        Some("a brand new password\n"),
    );
    assert!(out.status.success());
    let out = run(dir.path(), &env, &["user", "deactivate", "bob"], None);
    assert!(out.status.success());
    let out = run(dir.path(), &env, &["user", "list"], None);
    let listing = stdout(&out);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 3, "{listing}");
    assert!(
        lines[1].contains("alice") && lines[1].contains("Alice Smith") && lines[1].contains("true")
    );
    assert!(lines[2].contains("bob") && lines[2].contains("false"));
    let out = run(dir.path(), &env, &["user", "activate", "bob"], None);
    assert!(out.status.success());

    let url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("chat.db").display()),
        _ => db.url.clone(),
    };
    let conn = sea_orm::Database::connect(url.as_str()).await.unwrap();
    let alice = chat_server::accounts::find_by_username(&conn, "alice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        alice.token_version, 1,
        "set-password revoked earlier tokens"
    );
    let bob = chat_server::accounts::find_by_username(&conn, "bob")
        .await
        .unwrap()
        .unwrap();
    assert!(bob.is_active);
    assert_eq!(bob.token_version, 1, "deactivation revoked earlier tokens");
    conn.close().await.ok();

    let out = run(dir.path(), &env, &["migrate"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "migrations applied\n");
}

backend_tests!(user_and_contact_commands_work_on_every_backend => user_and_contact_commands);

#[test]
fn bad_configuration_is_one_line_and_exit_code_two() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (("PORT", "abc"), "chat-server: invalid configuration: PORT must be a number from 0 to 65535 (0: any free port), not 'abc'\n"),
        (("DB_ENGINE", "oracle"), "chat-server: invalid configuration: DB_ENGINE='oracle' is not a database engine (use sqlite, psql or mysql)\n"),
        (("DEBUG", "maybe"), "chat-server: invalid configuration: DEBUG='maybe' is not a flag (use 1/0, true/false, yes/no, on/off)\n"),
    ];
    for ((name, value), expected) in cases {
        let out = run(dir.path(), &[(name, value)], &["serve"], None);
        assert_eq!(out.status.code(), Some(2), "{name}");
        assert_eq!(stderr(&out), expected);
    }
    // A .env file is read, and the environment wins over it.
    std::fs::write(dir.path().join(".env"), "PORT=notaport\n").unwrap();
    let out = run(dir.path(), &[], &["migrate"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("PORT must be a number"));
    let out = run(dir.path(), &[("PORT", "8123")], &["migrate"], None);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[actix_rt::test]
async fn serve_on_defaults_then_stop_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port().to_string();
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .env_clear()
        .env("PORT", &port)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = common::http_client();
    let started = Instant::now();
    let ready = loop {
        if let Ok(res) = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
        {
            break res.status().as_u16();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "server did not start"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(ready, 200);
    assert!(dir.path().join("chat.db").exists());
    let secret = dir.path().join("chat.db.secret");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&secret).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // A second server on the same SQLite file without Redis would store
    // messages the first never delivers live: refused, saying why.
    let other_port = common::free_port().to_string();
    let second = run(dir.path(), &[("PORT", &other_port)], &["serve"], None);
    assert_eq!(second.status.code(), Some(2), "{}", stderr(&second));
    for words in ["another chat-server is serving", "chat.db", "Redis"] {
        assert!(stderr(&second).contains(words), "{}", stderr(&second));
    }
    // The account commands say which database they opened.
    let listed = run(dir.path(), &[], &["user", "list"], None);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(
        stderr(&listed).contains("database: sqlite chat.db"),
        "{}",
        stderr(&listed)
    );

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(12),
            "no exit within the shutdown bound"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success());
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(log.contains("stopped"), "{log}");
    // The start-up log says where everything is.
    for line in [
        "token key generated and kept in this file",
        "chat.db.secret",
        "database ready",
        "sqlite chat.db",
        "migrations_applied",
        "no Redis: a single instance",
        "listening",
    ] {
        assert!(log.contains(line), "{line} missing from {log}");
    }
}

/// A mistake: its environment, arguments, standard input, and the words the
/// error must contain.
type Mistake<'a> = (
    Vec<(&'a str, &'a str)>,
    Vec<&'a str>,
    Option<&'a str>,
    &'a str,
);

#[test]
fn one_exit_code_rule_and_clear_words_for_common_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let secret = [("SECRET_KEY", "0123456789abcdef0123456789abcdef")];
    // Wrong input: 2, each with a sentence that says what to do.
    let cases: Vec<Mistake> = vec![
        (
            vec![],
            vec!["user", "create", "zed"],
            None,
            "--password-stdin",
        ),
        (
            vec![],
            vec!["user", "create", "zed", "--password-stdin"],
            Some("password\n"),
            "This password is too common.",
        ),
        (
            vec![("REDIS_URL", "notaurl")],
            vec!["serve"],
            None,
            "invalid REDIS_URL",
        ),
        (
            vec![("DB_ENGINE", "psql")],
            vec!["migrate"],
            None,
            "DB_NAME must be set",
        ),
        (
            vec![("DB_ENGINE", "mysql")],
            vec!["migrate"],
            None,
            "DB_NAME must be set",
        ),
        (
            vec![("DATABASE_URL", "postgres://postgres@127.0.0.1:1/chat")],
            vec!["serve"],
            None,
            "SECRET_KEY must be set when the database is PostgreSQL or MySQL",
        ),
        (
            vec![],
            vec!["--port", "9000"],
            None,
            "`PORT=9000 chat-server`",
        ),
        (
            vec![("DB_NAME", "/no-such-directory-here/chat.db")],
            vec!["user", "list"],
            None,
            "is in a directory that does not exist (/no-such-directory-here)",
        ),
    ];
    for (env, args, stdin, expected) in cases {
        let out = run(dir.path(), &env, &args, stdin);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // A taken name is refused before any password is asked for.
    let out = run(
        dir.path(),
        &[],
        &["user", "create", "zed", "--password-stdin"],
        Some("a fine password\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(dir.path(), &[], &["user", "create", "Zed"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("similar username already exists"),
        "{}",
        stderr(&out)
    );

    // A database server that is not there: 1, at once, naming where and why.
    let port = common::free_port().to_string();
    let url = format!("postgres://postgres@127.0.0.1:{port}/chat");
    let started = Instant::now();
    let mut env = secret.to_vec();
    env.push(("DATABASE_URL", &url));
    let out = run(dir.path(), &env, &["migrate"], None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!("chat-server: cannot reach the PostgreSQL server at 127.0.0.1:{port}: Connection refused (os error 111)\n")
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    let out = run(dir.path(), &[], &["--help"], None);
    assert!(stdout(&out).contains("Configuration comes from environment variables"));
}

async fn a_missing_database_is_named_plainly(backend: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let base = match backend {
        Backend::Postgres(url) | Backend::MySql(url) => url.clone(),
        Backend::Sqlite => unreachable!("server databases only"),
    };
    let root = base.rsplit_once('/').map(|(r, _)| r).unwrap();
    let url = format!("{root}/no_such_database_here");
    let out = run(
        dir.path(),
        &[("DATABASE_URL", url.as_str())],
        &["migrate"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let error = stderr(&out);
    assert!(error.contains("no_such_database_here"), "{error}");
    assert!(!error.contains(" at line "), "no source location: {error}");
    assert!(!error.contains(".rs:") && !error.contains(".c:"), "{error}");
}

backend_tests!(@server a_missing_database_is_reported_in_the_servers_words => a_missing_database_is_named_plainly);

/// An account command in a directory with no database (the wrong one, most
/// likely) names the path it looked for and creates nothing; only `user
/// create` may make the first database.
#[test]
fn account_commands_never_create_an_empty_database() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["user", "list"],
        vec!["user", "deactivate", "alice"],
        vec!["contact", "add", "alice", "bob"],
    ] {
        let out = run(dir.path(), &[], &args, None);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let expected = format!(
            "no SQLite database at {}",
            dir.path().join("chat.db").display()
        );
        assert!(
            stderr(&out).contains(&expected),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(
            !dir.path().join("chat.db").exists(),
            "{args:?} created a database"
        );
    }
    let created = run(
        dir.path(),
        &[],
        &["user", "create", "alice", "--password-stdin"],
        Some("a fine long password\n"),
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let listed = run(dir.path(), &[], &["user", "list"], None);
    assert!(stdout(&listed).contains("alice"), "{}", stdout(&listed));
}

/// A port in use is said with what to do, before the database is opened
/// or created.
#[test]
fn a_port_in_use_is_named_before_any_database_work() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = run(dir.path(), &[("PORT", &port)], &["serve"], None);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    for words in [
        &format!("cannot listen on 127.0.0.1:{port}"),
        "another chat-server, or another program, holds it",
        "PORT=",
    ] {
        assert!(stderr(&out).contains(words), "{}", stderr(&out));
    }
    assert!(!dir.path().join("chat.db").exists(), "no database made");
}
