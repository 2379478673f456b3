//! The attacks of an outside review, each replayed against a real server:
//! revocation holes, throttling races, lock-outs, account rules, leaks of
//! internal errors, message de-duplication across conversations, expired
//! tokens, and the smaller hardening items.

use crate::common;

use std::time::{Duration, Instant};

use actix_web::http::Method;
use chat_server::accounts;
use common::{Backend, TestApp, TestDatabase, PASSWORD};
use futures_util::future::join_all;
use sea_orm::{ConnectionTrait, EntityTrait, PaginatorTrait};
use serde_json::{json, Value};

/// `(status, JSON body)` of a POST with an optional bearer token and extra headers.
async fn post(
    app: &TestApp,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> (u16, Value) {
    let mut req = app.http.post(app.url(path));
    if !token.is_empty() {
        req = req.insert_header(("Authorization", format!("Bearer {token}")));
    }
    for header in headers {
        req = req.insert_header(*header);
    }
    let mut res = req.send_json(&body).await.expect("request");
    let status = res.status().as_u16();
    let body = res.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn login_status(app: &TestApp, username: &str, password: &str, from: Option<&str>) -> u16 {
    let headers: Vec<(&str, &str)> = from.map(|a| ("X-Forwarded-For", a)).into_iter().collect();
    let body = json!({"username": username, "password": password});
    post(app, "/api/login/", "", &headers, body).await.0
}

/// An `internal` error as clients see it: a generic text with an error id.
fn assert_generic_internal(frame: &Value, kind: &str) {
    assert_eq!(frame["type"], kind, "{frame}");
    assert_eq!(frame["data"]["status"], "error", "{frame}");
    assert_eq!(frame["data"]["code"], "internal", "{frame}");
    let message = frame["data"]["message"].as_str().unwrap();
    let id = message
        .strip_prefix("internal error, try again (error id ")
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not the generic text: {message}"));
    assert!(
        id.len() == 12 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{message}"
    );
}

async fn failed_reauthorization_keeps_the_session_revocable(backend: &Backend) {
    let app = TestApp::spawn_with(backend, &[("MAX_SESSIONS_PER_USER", "2")]).await;
    let (_, _, pk) = app.pair("alice", "bob").await;
    let (alice, bob) = (app.login("alice").await, app.login("bob").await);
    let mut socket = app.authorized(&alice).await;
    let _bob1 = app.authorized(&bob).await;
    let _bob2 = app.authorized(&bob).await;

    socket
        .send(json!({"type": "authorization", "data": {"token": bob}}))
        .await;
    assert_eq!(
        socket.recv_type("authorization_response").await,
        json!({"type": "authorization_response", "data": {"status": "error", "code": "rate_limited", "message": "too many open sessions for this user"}})
    );
    // Still alice, still registered as alice: 3 sessions in all.
    let contacts = socket
        .request(json!({"type": "get_contacts", "data": {}}))
        .await;
    assert_eq!(contacts["data"][0]["pk"], pk.as_str());
    assert_eq!(contacts["data"][0]["name"], "Bob Jones");
    assert_eq!(app.stats().await.sessions, 3);

    // So a password change of alice's still reaches it.
    let (status, _) = post(
        &app,
        "/api/password/",
        &alice,
        &[],
        json!({"old_password": PASSWORD, "new_password": "a brand new password"}),
    )
    .await;
    assert_eq!(status, 200);
    socket.expect_closed_with(1008, "token revoked").await;
}

backend_tests!(a_refused_reauthorization_leaves_the_session_revocable => failed_reauthorization_keeps_the_session_revocable);

#[actix_rt::test]
async fn reauthorizing_as_another_user_moves_the_session_and_forgets_memberships() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    let (_, _, pk) = app.pair("alice", "bob").await;
    app.create_user("carol", "Carol", "King").await;
    let (alice, carol) = (app.login("alice").await, app.login("carol").await);
    let mut socket = app.authorized(&alice).await;
    // alice's membership is now cached in the session.
    let typing = json!({"type": "typing", "data": {"id": pk}});
    socket.send(typing.clone()).await;
    let reply = socket
        .request(json!({"type": "authorization", "data": {"token": carol}}))
        .await;
    assert_eq!(reply["data"], json!({"status": "success"}));
    let stats = app.stats().await;
    assert_eq!((stats.users, stats.sessions), (1, 1), "only carol is here");
    let reply = socket
        .request(json!({"type": "message", "data": {"to": pk, "content": "as carol"}}))
        .await;
    assert_eq!(reply["data"]["code"], "not_found", "{reply}");
    // The same user again: still one session.
    let reply = socket
        .request(json!({"type": "authorization", "data": {"token": carol}}))
        .await;
    assert_eq!(reply["data"], json!({"status": "success"}));
    assert_eq!(app.stats().await.sessions, 1);
}

async fn old_token_sessions_close_after_a_cli_password_change(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    app.pair("alice", "bob").await;
    let mut old = app.authorized(&app.login("alice").await).await;
    // As `chat-server user set-password` does: the database only.
    accounts::set_password_of(&app.db, "alice", PASSWORD.into())
        .await
        .unwrap();
    let mut new = app.authorized(&app.login("alice").await).await;
    let started = Instant::now();
    old.expect_closed_with(1008, "token revoked").await;
    // The sweep runs every 5 s; allow for a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(9), "{backend:?}");
    let pong = new.request(json!({"type": "ping", "data": {}})).await;
    assert_eq!(
        pong,
        json!({"type": "pong", "data": {}}),
        "the new session lives"
    );
}

backend_tests!(a_session_on_an_old_token_closes_though_the_user_logged_in_again => old_token_sessions_close_after_a_cli_password_change);

/// The `jti` a token carries (its payload is base64url JSON).
fn token_id(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    let claims: Value = serde_json::from_slice(&json).expect("JSON claims");
    claims["jti"].as_str().expect("a jti").to_string()
}

/// Every 5 s the sweep reads only the revocations stamped in the last
/// minute; its full round (here every second) checks every online session,
/// and so finds what the stamps hide: rows written before they existed, or
/// by a host whose clock is far behind (stamped 0 here, both kinds).
async fn stale_stamps_are_found_by_the_full_round(backend: &Backend) {
    use entity::{revoked_token, user};
    use sea_orm::sea_query::Expr;
    use sea_orm::{ActiveModelTrait, ColumnTrait, ExprTrait, QueryFilter, Set};
    let app = TestApp::spawn_with(backend, &[("REVOCATION_FULL_SWEEP_SECONDS", "1")]).await;
    let (alice_id, bob_id, _) = app.pair("alice", "bob").await;
    app.pair("carol", "dave").await;
    let (alice_token, bob_token) = (app.login("alice").await, app.login("bob").await);
    let mut alice = app.authorized(&alice_token).await;
    let mut bob = app.authorized(&bob_token).await;
    let mut carol = app.authorized(&app.login("carol").await).await;
    user::Entity::update_many()
        .col_expr(
            user::Column::TokenVersion,
            Expr::col(user::Column::TokenVersion).add(1),
        )
        .filter(user::Column::Id.eq(alice_id))
        .exec(&app.db)
        .await
        .unwrap();
    revoked_token::ActiveModel {
        id: Set(token_id(&bob_token)),
        user_id: Set(bob_id),
        expires_at: Set(i64::MAX),
        revoked_at: Set(0),
    }
    .insert(&app.db)
    .await
    .unwrap();
    for ws in [&mut alice, &mut bob] {
        let started = Instant::now();
        ws.expect_closed_with(1008, "token revoked").await;
        // A full round within 1 s, then the 5 s tick; 4 s for a loaded machine.
        assert!(started.elapsed() < Duration::from_secs(10), "{backend:?}");
    }
    let pong = carol.request(json!({"type": "ping", "data": {}})).await;
    assert_eq!(pong, json!({"type": "pong", "data": {}}), "carol stays");
}

backend_tests!(revocations_with_stale_stamps_are_found_by_the_full_round => stale_stamps_are_found_by_the_full_round);

#[actix_rt::test]
async fn concurrent_guesses_cannot_pass_the_login_limit() {
    let app = TestApp::spawn_with(&Backend::Sqlite, &[("LOGIN_MAX_ATTEMPTS", "10")]).await;
    app.pair("alice", "bob").await;
    let app = &app;
    let guesses = (0..80)
        .map(|i| async move { login_status(app, "alice", &format!("guess {i}"), None).await });
    let statuses = join_all(guesses).await;
    let processed = statuses.iter().filter(|s| **s == 400).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(processed + refused, 80, "{statuses:?}");
    assert!(
        (1..=10).contains(&processed),
        "{processed} guesses were hashed"
    );

    // An address one failure short of its ceiling (2 × 10 = 20) gets one more.
    let app = TestApp::spawn_with(&Backend::Sqlite, &[("LOGIN_MAX_ATTEMPTS", "2")]).await;
    for i in 0..19 {
        assert_eq!(
            login_status(&app, &format!("user{i}"), "x", None).await,
            400
        );
    }
    let app = &app;
    let guesses =
        (0..40).map(|i| async move { login_status(app, &format!("other{i}"), "x", None).await });
    let statuses = join_all(guesses).await;
    let processed = statuses.iter().filter(|s| **s == 400).count();
    assert_eq!(processed, 1, "{statuses:?}");
}

#[actix_rt::test]
async fn someone_elses_guesses_do_not_lock_the_real_user_out() {
    let app = TestApp::spawn_with(
        &Backend::Sqlite,
        &[
            ("LOGIN_MAX_ATTEMPTS", "5"),
            ("TRUSTED_PROXIES", "127.0.0.1"),
        ],
    )
    .await;
    app.pair("alice", "bob").await;
    let attacker = Some("203.0.113.9");
    let mut refused = 0;
    for i in 0..15 {
        if login_status(&app, "alice", &format!("guess {i}"), attacker).await == 429 {
            refused += 1;
        }
    }
    assert!(refused >= 10, "only {refused} of 15 guesses were refused");
    assert_eq!(login_status(&app, "alice", PASSWORD, attacker).await, 429);
    assert_eq!(
        login_status(&app, "alice", PASSWORD, Some("198.51.100.7")).await,
        200,
        "the real user, from a clean address"
    );

    // Without TRUSTED_PROXIES the header is the client's to forge: ignored.
    let app = TestApp::spawn_with(&Backend::Sqlite, &[("LOGIN_MAX_ATTEMPTS", "3")]).await;
    app.pair("alice", "bob").await;
    for _ in 0..3 {
        login_status(&app, "alice", "wrong", Some("203.0.113.9")).await;
    }
    assert_eq!(
        login_status(&app, "alice", PASSWORD, Some("198.51.100.7")).await,
        429
    );
}

#[actix_rt::test]
async fn old_password_guesses_are_throttled() {
    let app = TestApp::spawn_with(&Backend::Sqlite, &[("LOGIN_MAX_ATTEMPTS", "3")]).await;
    app.pair("alice", "bob").await;
    let token = app.login("alice").await;
    for i in 0..3 {
        let body =
            json!({"old_password": format!("guess {i}"), "new_password": "a brand new password"});
        let (status, body) = post(&app, "/api/password/", &token, &[], body).await;
        assert_eq!(
            (status, body),
            (400, json!({"old_password": ["Wrong password."]}))
        );
    }
    let body = json!({"old_password": PASSWORD, "new_password": "a brand new password"});
    let (status, body) = post(&app, "/api/password/", &token, &[], body).await;
    assert_eq!(status, 429, "{body}");
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .starts_with("Request was throttled"));
}

/// A server behind a proxy (127.0.0.1) that allows `burst` registrations
/// per client address, then one a minute.
async fn registrations_allowed(burst: &str) -> TestApp {
    TestApp::spawn_with(
        &Backend::Sqlite,
        &[
            ("REGISTRATION_BURST", burst),
            ("REGISTRATION_PER_MINUTE", "1"),
            ("TRUSTED_PROXIES", "127.0.0.1"),
        ],
    )
    .await
}

/// Registers `name` from the client address `from` (as the proxy says).
async fn register_from(app: &TestApp, name: &str, from: &str) -> (u16, Value) {
    let body = json!({"username": name, "password": "a fine password"});
    post(
        app,
        "/api/register/",
        "",
        &[("X-Forwarded-For", from)],
        body,
    )
    .await
}

#[actix_rt::test]
async fn registration_is_limited_per_client_address() {
    let app = registrations_allowed("3").await;
    let register = |name: &'static str, from: &'static str| register_from(&app, name, from);
    for name in ["ann", "ben", "cat"] {
        assert_eq!(register(name, "192.0.2.1").await.0, 201, "{name}");
    }
    let (status, body) = register("dan", "192.0.2.1").await;
    assert_eq!(status, 429, "{body}");
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .starts_with("Request was throttled"));
    assert_eq!(register("dan", "192.0.2.2").await.0, 201, "another address");
    let users = entity::user::Entity::find().count(&app.db).await.unwrap();
    assert_eq!(users, 4);
}

/// A sign-up the server was too busy to attempt (here SQLite's write lock
/// held past its busy timeout; a full hashing queue is answered the same)
/// is a 503 that leaves the address's allowance as it was: the retry
/// `Retry-After` asks for goes through instead of meeting a 429.
#[actix_rt::test]
async fn a_sign_up_refused_as_busy_does_not_spend_the_allowance() {
    let app = registrations_allowed("1").await;
    let holder = app.hold_sqlite_write_lock().await;
    let (status, body) = register_from(&app, "ann", "192.0.2.1").await;
    assert_eq!(status, 503, "{body}");
    holder.rollback().await.expect("the lock let go");
    let (status, body) = register_from(&app, "ann", "192.0.2.1").await;
    assert_eq!(status, 201, "the allowance is still there: {body}");
    let (status, body) = register_from(&app, "ben", "192.0.2.1").await;
    assert_eq!(
        status, 429,
        "and spent by the sign-up that went through: {body}"
    );
}

#[actix_rt::test]
async fn an_ipv6_client_is_counted_by_its_64_not_each_address() {
    let app = registrations_allowed("2").await;
    let app = &app;
    let register = |name: &'static str, from: &'static str| async move {
        register_from(app, name, from).await.0
    };
    // One client rotating through its /64 shares one allowance.
    assert_eq!(register("ann", "2001:db8:1:2::1").await, 201);
    assert_eq!(register("ben", "2001:db8:1:2:aaaa::2").await, 201);
    assert_eq!(register("cat", "2001:db8:1:2:ffff:ffff:ffff:3").await, 429);
    // Another /64 is another client.
    assert_eq!(register("cat", "2001:db8:1:3::1").await, 201);
}

async fn account_rules(backend: &Backend) {
    let app = TestApp::spawn_with(backend, &[("REGISTRATION_BURST", "100")]).await;
    let register = |username: &str, password: &str| {
        let body = json!({"username": username, "password": password});
        let app = &app;
        async move { post(app, "/api/register/", "", &[], body).await }
    };
    assert_eq!(register("bob", "a fine password").await.0, 201);
    let similar =
        json!({"username": ["A user with a confusingly similar username already exists."]});
    for lookalike in ["Bob", "BOB", "b\u{043e}b"] {
        assert_eq!(
            register(lookalike, "a fine password").await,
            (400, similar.clone()),
            "{lookalike} on {}",
            backend.name()
        );
    }
    // NFKC makes a fullwidth ｂｏｂ the very name bob.
    for same in ["bob", "\u{ff42}\u{ff4f}\u{ff42}"] {
        assert_eq!(
            register(same, "a fine password").await,
            (
                400,
                json!({"username": ["A user with that username already exists."]})
            )
        );
    }
    for (username, password, expected) in [
        ("carol", "password", "This password is too common."),
        ("carol", "12345678", "This password is too common."),
        ("carol", "iloveyou", "This password is too common."),
        (
            "carolinee",
            "carolinee",
            "The password is too similar to the username.",
        ),
    ] {
        assert_eq!(
            register(username, password).await,
            (400, json!({"password": [expected]})),
            "{password}"
        );
    }
    // A fullwidth name is stored in its NFKC form; any case logs in.
    let (status, body) = register("\u{ff43}\u{ff41}\u{ff52}\u{ff4c}", "a fine password").await;
    assert_eq!(
        (status, body["data"]["username"].clone()),
        (201, json!("carl"))
    );
    let (status, body) = post(
        &app,
        "/api/login/",
        "",
        &[],
        json!({"username": "Carl", "password": "a fine password"}),
    )
    .await;
    assert_eq!(
        (status, body["data"]["username"].clone()),
        (200, json!("carl"))
    );
}

backend_tests!(weak_passwords_and_lookalike_usernames_are_refused => account_rules);

async fn accounts_from_before_the_rules(backend: &Backend) {
    use migration::MigratorTrait;
    let database = TestDatabase::create(backend).await;
    let db = sea_orm::Database::connect(database.url.as_str())
        .await
        .unwrap();
    migration::Migrator::up(&db, Some(1)).await.unwrap();
    let hash = common::cheap_hash().to_string();
    for name in ["bob", "b\u{043e}b"] {
        let insert = sea_orm::sea_query::Query::insert()
            .into_table(entity::user::Entity)
            .columns([
                entity::user::Column::Username,
                entity::user::Column::Email,
                entity::user::Column::FirstName,
                entity::user::Column::LastName,
                entity::user::Column::PasswordHash,
                entity::user::Column::IsActive,
                entity::user::Column::IsStaff,
                entity::user::Column::IsSuperuser,
                entity::user::Column::TokenVersion,
                entity::user::Column::CreatedAt,
            ])
            .values_panic([
                name.into(),
                "".into(),
                name.into(),
                "Old".into(),
                hash.clone().into(),
                true.into(),
                false.into(),
                false.into(),
                0.into(),
                chrono::Utc::now().into(),
            ])
            .to_owned();
        db.execute(&insert).await.unwrap();
    }
    db.close().await.unwrap();
    // The server migrates on start: both old accounts keep working.
    let app = TestApp::spawn_on(backend, &database.url, &[]).await;
    for name in ["bob", "b\u{043e}b"] {
        let (status, body) = post(
            &app,
            "/api/login/",
            "",
            &[],
            json!({"username": name, "password": PASSWORD}),
        )
        .await;
        assert_eq!(
            (status, body["data"]["username"].clone()),
            (200, json!(name))
        );
    }
    let body = json!({"username": "BOB", "password": "a fine password"});
    assert_eq!(post(&app, "/api/register/", "", &[], body).await.0, 400);
}

backend_tests!(accounts_that_collide_under_the_new_rules_keep_working => accounts_from_before_the_rules);

async fn database_errors_stay_in_the_log(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, pk) = app.pair("alice", "bob").await;
    let mut socket = app.authorized(&app.login("alice").await).await;
    // Membership is cached; then the table the next requests need is gone.
    let page = socket
        .request(json!({"type": "get_messages", "data": {"id": pk}}))
        .await;
    assert_eq!(page["data"]["messages"], json!([]));
    let drop = match backend {
        Backend::Postgres(_) => "DROP TABLE messages CASCADE",
        // Its children go with it (MySQL refuses to drop a referenced table).
        Backend::MySql(_) => {
            "DROP TABLE reactions, message_events, push_outbox, attachments, messages"
        }
        _ => "DROP TABLE messages",
    };
    app.db.execute_unprepared(drop).await.unwrap();
    let reply = socket
        .request(json!({"type": "message", "data": {"to": pk, "content": "hi"}}))
        .await;
    assert_generic_internal(&reply, "message_response");
    let reply = socket
        .request(json!({"type": "get_messages", "data": {"id": pk}}))
        .await;
    assert_generic_internal(&reply, "get_messages_response");
    let reply = socket
        .request(json!({"type": "get_contacts", "data": {}}))
        .await;
    assert_generic_internal(&reply, "get_contacts_response");
    // Without the memberships, every request that reads them fails alike.
    let drop = match backend {
        Backend::Postgres(_) => "DROP TABLE chat_members CASCADE",
        _ => "DROP TABLE chat_members",
    };
    app.db.execute_unprepared(drop).await.unwrap();
    let reply = socket
        .request(json!({"type": "read", "data": {"id": pk, "up_to": 1}}))
        .await;
    assert_generic_internal(&reply, "read_response");
    let reply = socket
        .request(json!({"type": "get_contact", "data": {"id": pk}}))
        .await;
    assert_generic_internal(&reply, "get_contact_response");
    for (request, kind) in [
        (
            json!({"type": "create_group", "data": {"title": "g"}}),
            "create_group_response",
        ),
        (
            json!({"type": "rename_group", "data": {"id": pk, "title": "g"}}),
            "rename_group_response",
        ),
        (
            json!({"type": "add_members", "data": {"id": pk, "members": [1]}}),
            "add_members_response",
        ),
        (
            json!({"type": "remove_member", "data": {"id": pk, "user_id": 1}}),
            "remove_member_response",
        ),
    ] {
        let reply = socket.request(request).await;
        assert_generic_internal(&reply, kind);
    }
    let mut another = app.ws("/chat").await;
    another.recv().await;
    let reply = another
        .request(json!({"type": "authorization", "data": {"token": app.login("alice").await}}))
        .await;
    assert_generic_internal(&reply, "authorization_response");
}

backend_tests!(database_errors_reach_clients_only_as_an_error_id => database_errors_stay_in_the_log);

async fn client_ids_per_conversation(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice_id, _, with_bob) = app.pair("alice", "bob").await;
    let mallory_id = app.create_user("mallory", "Mal", "Lory").await;
    let (chat, _) = accounts::direct_chat(&app.db, alice_id, mallory_id)
        .await
        .unwrap();
    let with_mallory = chat.id.to_string();
    let mut alice = app.authorized(&app.login("alice").await).await;
    let mut mallory = app.authorized(&app.login("mallory").await).await;

    let send = |to: &str| json!({"type": "message", "data": {"to": to, "content": format!("to {to}"), "client_id": "same-id"}});
    alice.send(send(&with_bob)).await;
    let first = alice.recv_type("message_response").await;
    alice.send(send(&with_mallory)).await;
    let second = alice.recv_type("message_response").await;
    assert_eq!(second["data"]["status"], "success", "{second}");
    assert_eq!(second["data"]["pk"], with_mallory.as_str());
    assert_ne!(second["data"]["id"], first["data"]["id"]);
    let pushed = mallory.recv_type("message").await;
    assert_eq!(
        pushed["data"]["data"]["content"],
        format!("to {with_mallory}")
    );
    // A real resend is still answered with the original.
    alice.send(send(&with_bob)).await;
    let again = alice.recv_type("message_response").await;
    assert_eq!(again["data"]["id"], first["data"]["id"]);
    let rows = entity::message::Entity::find().all(&app.db).await.unwrap();
    assert_eq!(rows.len(), 2, "{}", backend.name());
}

backend_tests!(a_client_id_is_deduplicated_per_conversation => client_ids_per_conversation);

#[actix_rt::test]
async fn a_session_closes_when_its_token_expires() {
    let app = TestApp::spawn_with(&Backend::Sqlite, &[("TOKEN_TTL_SECONDS", "2")]).await;
    app.pair("alice", "bob").await;
    let mut socket = app.authorized(&app.login("alice").await).await;
    let authorized = Instant::now();
    socket.expect_closed_with(1008, "token expired").await;
    // exp is in whole seconds: between 1 and 2 s after authorization.
    let after = authorized.elapsed();
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(6),
        "{after:?}"
    );
}

#[actix_rt::test]
async fn metrics_can_require_a_token() {
    let app = TestApp::spawn_with(&Backend::Sqlite, &[("METRICS_TOKEN", "scrape-me")]).await;
    let res = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let res = app
        .http
        .get(app.url("/metrics"))
        .insert_header(("Authorization", "Bearer wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let mut res = app
        .http
        .get(app.url("/metrics"))
        .insert_header(("Authorization", "Bearer scrape-me"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let text = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
    assert!(text.contains("chat_server_sessions "), "{text}");
}

#[cfg(unix)]
#[actix_rt::test]
async fn the_sqlite_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let app = TestApp::spawn_on(&Backend::Sqlite, &url, &[]).await;
    app.pair("alice", "bob").await;
    // The search index holds the messages' words.
    for suffix in ["", "-wal", "-shm", "-search", "-search-wal", "-search-shm"] {
        let file = dir.path().join(format!("chat.db{suffix}"));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
}

#[actix_rt::test]
async fn pages_carry_security_headers_and_no_inline_script() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    for page in ["/swagger/", "/redoc/", "/api/users/"] {
        let mut res = app.http.get(app.url(page)).send().await.unwrap();
        let header = |name: &str| {
            res.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        let csp = header("content-security-policy");
        assert!(csp.contains("frame-ancestors 'none'"), "{page}: {csp}");
        assert!(csp.contains("script-src 'self';"), "{page}: {csp}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{page}");
        let body = String::from_utf8_lossy(&res.body().await.unwrap()).into_owned();
        assert!(!body.contains("<script>"), "{page} has an inline script");
    }
}

#[actix_rt::test]
async fn unauthenticated_sockets_are_capped_per_address() {
    let app = TestApp::spawn_with(
        &Backend::Sqlite,
        &[("MAX_UNAUTHENTICATED_PER_ADDRESS", "3")],
    )
    .await;
    app.pair("alice", "bob").await;
    let mut waiting = Vec::new();
    for _ in 0..3 {
        waiting.push(app.ws("/chat").await);
    }
    upgrade_is_refused_with_429(&app).await;
    // One authorizes: its place is free again.
    let token = app.login("alice").await;
    let first = &mut waiting[0];
    first.recv().await;
    let reply = first
        .request(json!({"type": "authorization", "data": {"token": token}}))
        .await;
    assert_eq!(reply["data"]["status"], "success");
    let _fourth = app.ws("/chat").await;
}

/// The next WebSocket upgrade from this address is answered 429.
async fn upgrade_is_refused_with_429(app: &TestApp) {
    let refused = app
        .http
        .ws(format!("ws://127.0.0.1:{}/chat", app.port))
        .connect()
        .await;
    match refused {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            assert_eq!(status.as_u16(), 429)
        }
        other => panic!("expected a 429, got {:?}", other.map(|_| ())),
    }
}

/// Authorized sockets live for hours: one address may hold only
/// MAX_SOCKETS_PER_ADDRESS of them, so it cannot take every descriptor.
#[actix_rt::test]
async fn sockets_are_capped_per_address() {
    let app = TestApp::spawn_with(&Backend::Sqlite, &[("MAX_SOCKETS_PER_ADDRESS", "3")]).await;
    app.pair("alice", "bob").await;
    let token = app.login("alice").await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(app.authorized(&token).await);
    }
    upgrade_is_refused_with_429(&app).await;
    // One closes: its place is free again.
    drop(open.pop());
    common::wait_until(|| async { app.stats().await.sessions == 2 }).await;
    let _again = app.authorized(&token).await;
}

#[actix_rt::test]
async fn tokens_in_urls_and_headers_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .current_dir(dir.path())
        .env_clear()
        .envs([("PORT", port.to_string()), ("RUST_LOG", "debug".into())])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let client = awc::Client::default();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !client
        .get(url("/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secret = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXRva2VuLXZhbHVl.c2lnbmF0dXJl";
    let socket = client
        .ws(format!("ws://127.0.0.1:{port}/chat?token={secret}"))
        .connect()
        .await;
    drop(socket);
    let socket = client
        .ws(format!("ws://127.0.0.1:{port}/chat?%74oken={secret}"))
        .connect()
        .await;
    drop(socket);
    let res = client
        .get(url("/api/me/"))
        .insert_header(("Authorization", format!("Bearer {secret}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    // The upgrades' lines are written as they are answered, the sessions'
    // as the sockets close, in either order: once all four are in the log,
    // the server is stopped and the whole log read.
    let log = dir.path().join("server.log");
    let session = |id: u32| format!("ws_session{{session={id} client_ip=127.0.0.1}}");
    common::wait_until(|| async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let closed = |id| {
            text.lines()
                .any(|l| l.contains(&session(id)) && l.contains("close time.busy"))
        };
        text.contains("/chat?token=") && text.contains("/chat?%74oken=") && closed(1) && closed(2)
    })
    .await;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("/chat?token=[redacted]"), "{text}");
    assert!(text.contains("/chat?%74oken=[redacted]"), "{text}");
    assert!(!text.contains("c2VjcmV0LXRva2VuLXZhbHVl"), "{text}");
    // Each request's line carries its outcome: the upgrade's, and the
    // refusal's with its error.
    let line = |target: &str| {
        text.lines()
            .find(|l| l.contains(target) && l.contains("close time.busy"))
            .unwrap_or_else(|| panic!("no line for {target}: {text}"))
            .to_owned()
    };
    assert!(
        line("/chat?token=").contains("http.status_code=101"),
        "{text}"
    );
    // The upgrade's line is written as it is answered, the session's (a
    // span of its own, with the client's address) as the socket closes.
    let position = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle}: {text}"))
    };
    assert!(
        position(&line("/chat?token=")) < position(&line(&session(1))),
        "{text}"
    );
    let refused = line("http.target=/api/me/");
    assert!(refused.contains("http.status_code=401"), "{refused}");
    assert!(
        refused.contains("exception.message=unauthorized: Invalid token."),
        "{refused}"
    );
}

/// A password change over REST (with the version its token carries) and one
/// by the command line (or a deactivation) at the same moment: the later
/// never overwrites the earlier unseen, and every token from before the
/// last change is revoked.
async fn password_change_races(backend: &Backend) {
    use chat_server::accounts::{self, AccountError};
    let app = TestApp::spawn(backend).await;
    let id = app.create_user("alice", "Alice", "Smith").await;
    let read = || async {
        entity::user::Entity::find_by_id(id)
            .one(&app.db)
            .await
            .unwrap()
            .unwrap()
    };
    // A request authenticated at the current version; the administrator
    // changes the password before it writes.
    let stale = read().await;
    let admin = accounts::set_password_of(&app.db, "alice", "an admin's passphrase".into())
        .await
        .unwrap();
    assert_eq!(admin.token_version, stale.token_version + 1);
    let late = accounts::set_password(&app.db, stale, "the attacker's passphrase".into()).await;
    assert!(
        matches!(late, Err(AccountError::ChangedMeanwhile)),
        "{}: {late:?}",
        backend.name()
    );
    let now = read().await;
    assert_eq!(now.token_version, admin.token_version, "nothing written");
    assert!(
        accounts::verify_password("an admin's passphrase".into(), Some(now.password_hash))
            .await
            .expect("checked"),
        "the administrator's password stands"
    );
    // The other order: the request writes first, then the administrator;
    // the request's new token is revoked by the administrator's change.
    let by_request = accounts::set_password(&app.db, read().await, "a request's passphrase".into())
        .await
        .unwrap();
    assert_eq!(by_request.token_version, admin.token_version + 1);
    let admin = accounts::set_password_of(&app.db, "alice", "the admin again, later".into())
        .await
        .unwrap();
    assert_eq!(admin.token_version, by_request.token_version + 1);
    // A deactivation meanwhile refuses the late request too.
    let stale = read().await;
    let off = accounts::set_active(&app.db, "alice", false).await.unwrap();
    assert_eq!(off.token_version, stale.token_version + 1);
    let late = accounts::set_password(&app.db, stale, "one more passphrase".into()).await;
    assert!(
        matches!(late, Err(AccountError::ChangedMeanwhile)),
        "{late:?}"
    );
}

backend_tests!(a_password_change_never_overwrites_one_made_meanwhile => password_change_races);

/// A client that announces a body and never sends it gets 408 after
/// `BODY_READ_TIMEOUT_SECONDS` and its connection is closed: it cannot hold
/// connections (and file descriptors) forever.
#[actix_rt::test]
async fn a_body_that_never_comes_is_answered_408_and_the_connection_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_with(&Backend::Sqlite, &[("BODY_READ_TIMEOUT_SECONDS", "1")]).await;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    stream
        .write_all(
            b"POST /api/login/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\
              Content-Type: application/json\r\nContent-Length: 16000\r\n\r\n{\"user",
        )
        .await
        .unwrap();
    // The bound waited for is the tests' TIMEOUT (10 s), for a 1 s timeout.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(common::TIMEOUT, stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was closed");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("Request body not received in time."),
        "{text}"
    );
    // The server goes on serving everyone else.
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

/// `aIice` (capital i) registered beside `alice` before usernames' keys
/// took `i` as `l`: the migration keeps both accounts working (the later
/// gets its id appended to its key), and no third look-alike registers.
async fn look_alike_accounts_are_rekeyed(backend: &Backend) {
    use migration::{Alias, MigratorTrait, Query};
    let database = TestDatabase::create(backend).await;
    let db = sea_orm::Database::connect(database.url.as_str())
        .await
        .expect("the test database");
    let before = common::migrations_before("m20261130_000002_username_keys");
    migration::Migrator::up(&db, Some(before)).await.unwrap();
    let hash = common::cheap_hash().to_string();
    // The keys the earlier keying gave them: they did not collide.
    for (username, old_key) in [("alice", "alice"), ("aIice", "aiice"), ("bob", "bob")] {
        let insert = Query::insert()
            .into_table(Alias::new("users"))
            .columns(
                [
                    "username",
                    "username_key",
                    "email",
                    "first_name",
                    "last_name",
                    "password_hash",
                    "is_active",
                    "is_staff",
                    "is_superuser",
                    "token_version",
                    "created_at",
                ]
                .map(Alias::new),
            )
            .values_panic([
                username.into(),
                old_key.into(),
                "".into(),
                "".into(),
                "".into(),
                hash.clone().into(),
                true.into(),
                false.into(),
                false.into(),
                0i32.into(),
                chrono::Utc::now().into(),
            ])
            .to_owned();
        db.execute(&insert).await.unwrap();
    }
    migration::Migrator::up(&db, None).await.unwrap();
    let mut keys: Vec<(String, String)> = entity::user::Entity::find()
        .all(&db)
        .await
        .unwrap()
        .into_iter()
        .map(|u| (u.username, u.username_key))
        .collect();
    keys.sort();
    let later = entity::user::Entity::find()
        .all(&db)
        .await
        .unwrap()
        .into_iter()
        .find(|u| u.username == "aIice")
        .unwrap()
        .id;
    assert_eq!(
        keys,
        [
            ("aIice".to_string(), format!("allce#{later}")),
            ("alice".to_string(), "allce".to_string()),
            ("bob".to_string(), "bob".to_string()),
        ],
        "{}",
        backend.name()
    );
    drop(db);
    let app = TestApp::spawn_on(backend, &database.url, &[("REGISTRATION_BURST", "100")]).await;
    // Both still log in by their exact names.
    for name in ["alice", "aIice"] {
        let token = app.login(name).await;
        let (status, me) = app
            .rest(actix_web::http::Method::GET, "/api/me/", &token, None)
            .await;
        assert_eq!((status, me["username"].as_str()), (200, Some(name)));
    }
    let (status, body) = post(
        &app,
        "/api/register/",
        "",
        &[],
        json!({"username": "AIice", "password": "a fine password"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body,
        json!({"username": ["A user with a confusingly similar username already exists."]})
    );
}

backend_tests!(look_alike_usernames_registered_earlier_are_rekeyed_and_kept => look_alike_accounts_are_rekeyed);

/// Signing out everywhere revokes every token of the person (the one used
/// too) and closes their sessions on every instance; other people's stay.
async fn sign_out_everywhere(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, _) = app.pair("alice", "bob").await;
    let (phone, laptop) = (app.login("alice").await, app.login("alice").await);
    let bob = app.login("bob").await;
    let mut on_phone = app.authorized(&phone).await;
    let mut on_laptop = app.authorized(&laptop).await;
    let mut bobs = app.authorized(&bob).await;
    let (status, body) = app
        .rest(Method::POST, "/api/logout/everywhere/", &laptop, None)
        .await;
    assert_eq!((status, body), (204, Value::Null));
    on_phone.expect_closed_with(1008, "token revoked").await;
    on_laptop.expect_closed_with(1008, "token revoked").await;
    for token in [&phone, &laptop] {
        let (status, _) = app.rest(Method::GET, "/api/me/", token, None).await;
        assert_eq!(status, 401);
    }
    let (status, _) = app.rest(Method::GET, "/api/me/", &bob, None).await;
    assert_eq!(status, 200);
    // Bob's session is still open (a ping is answered; presence may come first).
    bobs.send(json!({"type": "ping", "data": {}})).await;
    bobs.recv_type("pong").await;
    // A new login works as before.
    let fresh = app.login("alice").await;
    assert_eq!(app.rest(Method::GET, "/api/me/", &fresh, None).await.0, 200);
    // Without a token: 401, and nothing revoked.
    let (status, _) = app
        .rest(Method::POST, "/api/logout/everywhere/", "", None)
        .await;
    assert_eq!(status, 401);
    assert_eq!(app.rest(Method::GET, "/api/me/", &fresh, None).await.0, 200);
}

backend_tests!(signing_out_everywhere_closes_every_session_and_refuses_old_tokens => sign_out_everywhere);

/// Signing out revokes the one token the request carries: its sessions
/// close, here and (on a server database) on an instance that shares only
/// the database (the revocation sweep finds it there; two servers never
/// share an SQLite file without Redis), and it is refused from then on; the
/// person's other tokens and sessions stay.
async fn sign_out_one_device(backend: &Backend) {
    let database = TestDatabase::create(backend).await;
    let app = TestApp::spawn_on(backend, &database.url, &[]).await;
    let other = match backend {
        Backend::Sqlite => None,
        _ => Some(TestApp::spawn_on(backend, &database.url, &[]).await),
    };
    app.pair("alice", "bob").await;
    let (phone, laptop) = (app.login("alice").await, app.login("alice").await);
    let mut on_phone = app.authorized(&phone).await;
    let mut phone_elsewhere = match &other {
        Some(other) => Some(other.authorized(&phone).await),
        None => None,
    };
    let mut on_laptop = app.authorized(&laptop).await;
    let (status, body) = app.rest(Method::POST, "/api/logout/", &phone, None).await;
    assert_eq!((status, body), (204, Value::Null));
    on_phone.expect_closed_with(1008, "token revoked").await;
    if let Some(socket) = phone_elsewhere.as_mut() {
        socket.expect_closed_with(1008, "token revoked").await;
    }
    for server in std::iter::once(&app).chain(other.as_ref()) {
        let (status, _) = server.rest(Method::GET, "/api/me/", &phone, None).await;
        assert_eq!(status, 401, "the signed-out token is refused");
        let (status, _) = server.rest(Method::GET, "/api/me/", &laptop, None).await;
        assert_eq!(status, 200, "the laptop's token is not");
    }
    let mut again = app.ws("/chat").await;
    again.recv().await;
    let answer = again
        .request(json!({"type": "authorization", "data": {"token": phone}}))
        .await;
    assert_eq!(answer["data"]["message"], "Invalid token provided");
    let pong = on_laptop.request(json!({"type": "ping", "data": {}})).await;
    assert_eq!(
        pong,
        json!({"type": "pong", "data": {}}),
        "the laptop stays"
    );
    // Signing out again: the token is no longer valid.
    let (status, _) = app.rest(Method::POST, "/api/logout/", &phone, None).await;
    assert_eq!(status, 401);
    let revoked = entity::revoked_token::Entity::find()
        .all(&app.db)
        .await
        .unwrap();
    assert_eq!(revoked.len(), 1, "one row for the one token");
    // The row goes once the token would have expired, not before.
    let expires_at = revoked[0].expires_at;
    assert_eq!(
        accounts::sweep_revoked_tokens(&app.db, expires_at - 1)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        accounts::sweep_revoked_tokens(&app.db, expires_at)
            .await
            .unwrap(),
        1
    );
}

backend_tests!(signing_out_closes_and_refuses_that_token_only => sign_out_one_device);

/// REST requests are counted per user before the token's database checks:
/// a flood from one token meets 429 (with Retry-After) after the burst,
/// and nobody else does.
#[actix_rt::test]
async fn a_rest_flood_from_one_token_is_cut_before_the_database() {
    let app = TestApp::spawn_with(
        &Backend::Sqlite,
        &[("RATE_LIMIT_BURST", "5"), ("RATE_LIMIT_PER_SECOND", "1")],
    )
    .await;
    app.pair("alice", "bob").await;
    let (alice, bob) = (app.login("alice").await, app.login("bob").await);
    let app = &app;
    let started = Instant::now();
    let requests = (0..30).map(|_| {
        let alice = alice.clone();
        async move { app.rest(Method::GET, "/api/me/", &alice, None).await.0 }
    });
    let statuses = join_all(requests).await;
    let refused = statuses.iter().filter(|s| **s == 429).count();
    let served = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(refused + served, 30, "{statuses:?}");
    // 5 at once, then one a second: at most 5 + the seconds it took.
    let allowed = 5 + started.elapsed().as_secs() as usize + 1;
    assert!(served <= allowed, "{served} served, {allowed} allowed");
    assert!(refused > 0 || allowed >= 30, "{statuses:?}");
    let (status, _) = app.rest(Method::GET, "/api/me/", &bob, None).await;
    assert_eq!(status, 200, "another user is not limited");
}
