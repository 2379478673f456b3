//! Notifications: a conversation's mute (PROTOCOL.md C17), kept on the
//! server so every device of the user, on any instance, respects it; and
//! Web Push (B11) to a push service of the test's own on loopback, whose
//! payloads the test decrypts as a browser would.

use std::time::Duration;

use crate::common;

use actix_web::http::Method;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::{authorized_at, require_redis_url, Backend, TestApp, TestDatabase};
use entity::{chat_member, push_dispatch, push_outbox, push_subscription};
use sea_orm::{ActiveModelTrait, EntityTrait, IntoActiveModel, PaginatorTrait, Set};
use serde_json::{json, Value};
use tokio::sync::mpsc;

fn mute(pk: &str, muted: bool) -> Value {
    json!({"type": "mute", "data": {"id": pk, "muted": muted}})
}

async fn stored_mute(app: &TestApp, pk: &str, user: i64) -> bool {
    chat_member::Entity::find_by_id((pk.parse().unwrap(), user))
        .one(&app.db)
        .await
        .unwrap()
        .expect("membership")
        .muted
}

/// Muting answers the caller, tells every session of the user on both
/// instances, shows in the contact list and `get_contact`, and is stored;
/// muting again changes nothing and pushes nothing; a stranger's mute of
/// the conversation is `not_found`.
async fn muting(backend: &Backend) {
    let redis = require_redis_url();
    let db = TestDatabase::migrated(backend).await;
    let apps = common::instances(backend, &redis, &db, 2).await;
    let (a, b) = (&apps[0], &apps[1]);
    let (alice, bob, pk) = a.pair("alice", "bob").await;
    let (_, carol_token) = a.user("carol").await;
    let bob_token = b.login("bob").await;
    let mut bobs = authorized_at(&b.http, b.port, &bob_token).await;
    let token = a.login("alice").await;
    let mut here = authorized_at(&a.http, a.port, &token).await;
    let mut there = authorized_at(&b.http, b.port, &token).await;

    let answer = here.ask(mute(&pk, true)).await;
    assert_eq!(
        answer,
        json!({"status": "success", "pk": pk, "muted": true}),
        "{}",
        backend.name()
    );
    let pushed = json!({"type": "muted", "data": {"pk": pk, "muted": true}});
    assert_eq!(here.recv().await, pushed);
    assert_eq!(there.recv().await, pushed);
    assert!(stored_mute(a, &pk, alice).await);
    assert!(!stored_mute(a, &pk, bob).await, "bob's mute is his own");

    let contacts = there.ask(json!({"type": "get_contacts", "data": {}})).await;
    assert_eq!(contacts[0]["pk"], pk.as_str());
    assert_eq!(contacts[0]["muted"], true, "{contacts}");
    let contact = there
        .ask(json!({"type": "get_contact", "data": {"id": pk}}))
        .await;
    assert_eq!(contact["muted"], true, "{contact}");
    let contacts = bobs.ask(json!({"type": "get_contacts", "data": {}})).await;
    assert!(
        contacts[0].get("muted").is_none(),
        "absent when not muted: {contacts}"
    );

    // Again: the same answer, no push (the pong comes first).
    assert_eq!(here.ask(mute(&pk, true)).await["muted"], true);
    here.nothing_before_pong().await;
    there.nothing_before_pong().await;

    let answer = there.ask(mute(&pk, false)).await;
    assert_eq!(
        answer,
        json!({"status": "success", "pk": pk, "muted": false})
    );
    let pushed = json!({"type": "muted", "data": {"pk": pk, "muted": false}});
    assert_eq!(there.recv().await, pushed);
    assert_eq!(here.recv().await, pushed);
    assert!(!stored_mute(a, &pk, alice).await);

    let mut carol = authorized_at(&a.http, a.port, &carol_token).await;
    let not_found =
        json!({"status": "error", "code": "not_found", "message": "conversation not found"});
    assert_eq!(carol.ask(mute(&pk, true)).await, not_found);
    assert_eq!(carol.ask(mute("not-a-uuid", true)).await, not_found);
    assert_eq!(
        carol.ask(json!({"type": "mute", "data": {"id": pk}})).await["code"],
        "invalid"
    );
}

backend_tests!(a_mute_is_stored_and_told_to_every_session => muting);

// --- Web Push ---------------------------------------------------------------

/// The server's VAPID key in these tests, and the browser's keys.
const VAPID: [u8; 32] = [0x42; 32];
const BROWSER_SECRET: [u8; 32] = [0x11; 32];
const BROWSER_AUTH: [u8; 16] = [0x22; 16];

fn push_settings() -> [(&'static str, String); 3] {
    [
        ("VAPID_PRIVATE_KEY", URL_SAFE_NO_PAD.encode(VAPID)),
        ("PUSH_ENDPOINT_HOSTS", "127.0.0.1".into()),
        ("PUSH_ALLOW_HTTP", "1".into()),
    ]
}

async fn spawn_pushing(backend: &Backend, url: Option<&str>) -> TestApp {
    let settings = push_settings();
    let extra: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    match url {
        Some(url) => TestApp::spawn_on(backend, url, &extra).await,
        None => TestApp::spawn_with(backend, &extra).await,
    }
}

/// One POST the push service received.
#[derive(Debug)]
struct Received {
    path: String,
    headers: std::collections::HashMap<String, String>,
    body: Vec<u8>,
}

impl Received {
    /// The payload, decrypted with the browser's keys (RFC 8291).
    fn payload(&self) -> Value {
        let secret = p256::SecretKey::from_slice(&BROWSER_SECRET).unwrap();
        let auth = web_push_native::Auth::from(BROWSER_AUTH);
        let plain = web_push_native::decrypt(self.body.clone(), &secret, &auth).expect("decrypts");
        serde_json::from_slice(&plain).expect("JSON")
    }
}

/// A push service on loopback: records each POST and answers `status`.
struct PushService {
    port: u16,
    received: mpsc::UnboundedReceiver<Received>,
    status: std::sync::Arc<std::sync::atomic::AtomicU16>,
    server: actix_web::dev::ServerHandle,
}

impl PushService {
    async fn start() -> PushService {
        use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
        let (tx, received) = mpsc::unbounded_channel();
        let status = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(201));
        let answer = status.clone();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::new(move || {
            let tx = tx.clone();
            let answer = answer.clone();
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let headers = req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect();
                let _ = tx.send(Received {
                    path: req.path().to_string(),
                    headers,
                    body: body.to_vec(),
                });
                let code = answer.load(std::sync::atomic::Ordering::SeqCst);
                async move {
                    HttpResponse::build(actix_web::http::StatusCode::from_u16(code).unwrap())
                        .finish()
                }
            }))
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        PushService {
            port,
            received,
            status,
            server: handle,
        }
    }

    fn endpoint(&self, device: &str) -> String {
        format!("http://127.0.0.1:{}/push/{device}", self.port)
    }

    fn answer(&self, status: u16) {
        self.status
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(20), self.received.recv())
            .await
            .expect("a push within 20 s")
            .expect("push service running")
    }

    /// Fails if a push arrived that the test did not take.
    fn none_left(&mut self) {
        if let Ok(extra) = self.received.try_recv() {
            panic!("an unexpected push: {extra:?}");
        }
    }
}

impl Drop for PushService {
    fn drop(&mut self) {
        let server = self.server.clone();
        actix_web::rt::spawn(async move { server.stop(false).await });
    }
}

fn subscription(endpoint: &str) -> Value {
    let public = p256::SecretKey::from_slice(&BROWSER_SECRET)
        .unwrap()
        .public_key();
    let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&public, false);
    json!({
        "endpoint": endpoint,
        "expirationTime": null,
        "keys": {"p256dh": URL_SAFE_NO_PAD.encode(point.as_bytes()), "auth": URL_SAFE_NO_PAD.encode(BROWSER_AUTH)},
    })
}

/// The id up to which the sender has decided what to push.
async fn decided_up_to(app: &TestApp) -> i64 {
    push_dispatch::Entity::find_by_id("web_push")
        .one(&app.db)
        .await
        .unwrap()
        .expect("the dispatch row")
        .decided_up_to
}

/// Waits until the sender has decided every message up to `id` and sent
/// everything it queued: after that, no push for them can still come.
async fn settled(app: &TestApp, id: i64) {
    for _ in 0..400 {
        let mark = decided_up_to(app).await;
        let queued = push_outbox::Entity::find().count(&app.db).await.unwrap();
        if mark >= id && queued == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("pushes up to message {id} not settled within 20 s");
}

/// The direct conversation of `a` and `b`, made now.
async fn direct(app: &TestApp, a: i64, b: i64) -> String {
    let (chat, _) = chat_server::accounts::direct_chat(&app.db, a, b)
        .await
        .unwrap();
    chat.id.to_string()
}

async fn send(ws: &mut common::WsClient, pk: &str, text: &str) -> i64 {
    let answer = ws
        .ask(json!({"type": "message", "data": {"to": pk, "content": text}}))
        .await;
    answer["id"].as_i64().unwrap_or_else(|| panic!("{answer}"))
}

/// A member with no session gets one encrypted, signed push per
/// conversation per 30 s; one online, or who muted the conversation, gets
/// none; a subscription the push service says is gone is deleted.
async fn web_push(backend: &Backend) {
    let mut service = PushService::start().await;
    let app = spawn_pushing(backend, None).await;
    let (_, key) = app.rest(Method::GET, "/api/push/key/", "", None).await;
    let vapid = chat_server::push::Vapid::new(&VAPID, "mailto:admin@localhost").unwrap();
    assert_eq!(
        key,
        json!({"public_key": vapid.public_key()}),
        "{}",
        backend.name()
    );

    let (alice, bob, pk) = app.pair("alice", "bob").await;
    let bob_token = app.login("bob").await;
    let subscribe = |body: Value| {
        app.rest(
            Method::POST,
            "/api/push/subscriptions/",
            &bob_token,
            Some(body),
        )
    };
    let (status, body) = subscribe(subscription("https://push.example.com/x")).await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"endpoint": ["This server does not send to that push service."]})
        )
    );
    let mut bad_keys = subscription(&service.endpoint("bob"));
    bad_keys["keys"]["auth"] = json!("c2hvcnQ");
    let (status, body) = subscribe(bad_keys).await;
    assert_eq!(
        (status, body),
        (400, json!({"keys": ["auth is not 16 bytes in base64url."]}))
    );
    let (status, body) = subscribe(subscription(&service.endpoint("bob"))).await;
    assert_eq!(
        (status, body),
        (201, json!({"endpoint": service.endpoint("bob")}))
    );

    // Bob has no session: a push, encrypted for his browser, signed.
    let mut a = app.authorized(&app.login("alice").await).await;
    let first = send(&mut a, &pk, "hello bob").await;
    let push = service.next().await;
    assert_eq!(push.path, "/push/bob");
    assert_eq!(
        push.payload(),
        json!({"pk": pk, "title": "Alice Smith", "sender": "Alice Smith", "preview": "hello bob"})
    );
    let header = |name: &str| push.headers.get(name).cloned().unwrap_or_default();
    assert_eq!(header("content-encoding"), "aes128gcm");
    assert_eq!(header("topic"), pk.replace('-', ""));
    assert_eq!(header("ttl"), "86400");
    assert!(
        header("authorization").starts_with("vapid t=")
            && header("authorization").ends_with(&format!(", k={}", vapid.public_key())),
        "{push:?}"
    );
    // Within 30 s, nothing more for that conversation.
    let again = send(&mut a, &pk, "still there?").await;
    assert!(again > first);
    settled(&app, again).await;
    service.none_left();

    // A muted conversation: nothing.
    let (carol, carol_token) = app.user("carol").await;
    let with_carol = direct(&app, carol, bob).await;
    let mut membership = chat_member::Entity::find_by_id((with_carol.parse().unwrap(), bob))
        .one(&app.db)
        .await
        .unwrap()
        .unwrap()
        .into_active_model();
    membership.muted = Set(true);
    membership.update(&app.db).await.unwrap();
    let mut c = app.authorized(&carol_token).await;
    let muted = send(&mut c, &with_carol, "psst").await;
    settled(&app, muted).await;
    service.none_left();

    // Bob online: nothing.
    let (dave, dave_token) = app.user("dave").await;
    let with_dave = direct(&app, dave, bob).await;
    let _bob_here = app.authorized(&bob_token).await;
    let mut d = app.authorized(&dave_token).await;
    let online = send(&mut d, &with_dave, "you're here").await;
    settled(&app, online).await;
    service.none_left();

    // Frank's browser is gone (410): his subscription goes.
    let (frank, frank_token) = app.user("frank").await;
    let with_frank = direct(&app, alice, frank).await;
    let (status, _) = app
        .rest(
            Method::POST,
            "/api/push/subscriptions/",
            &frank_token,
            Some(subscription(&service.endpoint("frank"))),
        )
        .await;
    assert_eq!(status, 201);
    service.answer(410);
    let gone = send(&mut a, &with_frank, "hi frank").await;
    assert_eq!(service.next().await.path, "/push/frank");
    settled(&app, gone).await;
    let left: Vec<i64> = push_subscription::Entity::find()
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.user_id)
        .collect();
    assert_eq!(left, [bob]);

    // Unsubscribing: only the caller's own.
    let unsubscribe = json!({"endpoint": service.endpoint("bob")});
    let (status, _) = app
        .rest(
            Method::DELETE,
            "/api/push/subscriptions/",
            &frank_token,
            Some(unsubscribe.clone()),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        push_subscription::Entity::find()
            .count(&app.db)
            .await
            .unwrap(),
        1
    );
    let (status, _) = app
        .rest(
            Method::DELETE,
            "/api/push/subscriptions/",
            &bob_token,
            Some(unsubscribe),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        push_subscription::Entity::find()
            .count(&app.db)
            .await
            .unwrap(),
        0
    );
}

backend_tests!(web_push_to_members_with_no_session => web_push);

/// A push the push service could not take is kept through a restart and
/// sent once by the next server.
async fn outbox_survives_a_restart(backend: &Backend) {
    let mut service = PushService::start().await;
    let db = TestDatabase::migrated(backend).await;
    let mut first = spawn_pushing(backend, Some(&db.url)).await;
    let (_, _, pk) = first.pair("alice", "bob").await;
    let bob_token = first.login("bob").await;
    let (status, _) = first
        .rest(
            Method::POST,
            "/api/push/subscriptions/",
            &bob_token,
            Some(subscription(&service.endpoint("bob"))),
        )
        .await;
    assert_eq!(status, 201);
    service.answer(503);
    let mut a = first.authorized(&first.login("alice").await).await;
    send(&mut a, &pk, "before the restart").await;
    assert_eq!(service.next().await.path, "/push/bob", "{}", backend.name());
    drop(a);
    first.shutdown().await;
    // Read through a connection of the test's own: the stopped server's
    // pool went with its runtime.
    let check = sea_orm::Database::connect(&db.url).await.unwrap();
    let kept = push_outbox::Entity::find().all(&check).await.unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].attempts >= 1, "{kept:?}");

    // The first server's tries are all in: it is stopped.
    while service.received.try_recv().is_ok() {}
    service.answer(201);
    let second = spawn_pushing(backend, Some(&db.url)).await;
    let delivered = service.next().await;
    assert_eq!(delivered.payload()["preview"], "before the restart");
    settled(&second, 0).await;
    service.none_left();
}

backend_tests!(the_push_outbox_survives_a_restart => outbox_survives_a_restart);

/// Two instances each run the sender; the lease lets one send: a message
/// is pushed once, whichever instance stored it.
#[actix_rt::test]
#[ignore = "needs TEST_POSTGRES_URL and TEST_REDIS_URL; run with --include-ignored"]
async fn two_instances_push_each_message_once() {
    let backend = Backend::postgres();
    let db = TestDatabase::create(&backend).await;
    let redis = require_redis_url();
    let prefix = common::redis_prefix();
    let settings = push_settings();
    let mut extra: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    extra.extend([
        ("REDIS_URL", redis.as_str()),
        ("REDIS_PREFIX", prefix.as_str()),
    ]);
    let mut service = PushService::start().await;
    let mut apps = Vec::new();
    for _ in 0..2 {
        apps.push(TestApp::spawn_on(&backend, &db.url, &extra).await);
    }
    for app in &apps {
        app.wait_redis(true).await;
    }
    apps[0].drop_redis_keys(&redis, &prefix);
    let (a, b) = (&apps[0], &apps[1]);
    let (_, bob, pk) = a.pair("alice", "bob").await;
    let (carol, _) = a.user("carol").await;
    let (status, _) = b
        .rest(
            Method::POST,
            "/api/push/subscriptions/",
            &b.login("bob").await,
            Some(subscription(&service.endpoint("bob"))),
        )
        .await;
    assert_eq!(status, 201);
    // One message through each instance, each in its own conversation.
    let other = direct(a, carol, bob).await;
    let mut on_a = authorized_at(&a.http, a.port, &a.login("alice").await).await;
    let mut on_b = authorized_at(&b.http, b.port, &b.login("carol").await).await;
    send(&mut on_a, &pk, "via a").await;
    let last = send(&mut on_b, &other, "via b").await;
    let mut previews = vec![service.next().await.payload()["preview"].clone()];
    previews.push(service.next().await.payload()["preview"].clone());
    previews.sort_by_key(|p| p.to_string());
    assert_eq!(previews, [json!("via a"), json!("via b")]);
    settled(a, last).await;
    service.none_left();
}

/// A message to a group whose offline members have more devices than one
/// statement's values can carry (SQLite: 32,766, four a queued push) is
/// queued whole: every device gets its push, and the sender moves on. Such
/// a round once failed whole, and was retried for ever: nobody got a push
/// again.
#[actix_rt::test]
async fn a_push_to_more_devices_than_one_statement_carries_is_queued_whole() {
    use entity::{chat, push_throttle};
    const MEMBERS: usize = 820;
    const DEVICES: usize = chat_server::push::subscriptions::MAX_PER_USER;
    let service = PushService::start().await;
    let app = spawn_pushing(&Backend::Sqlite, None).await;
    let (alice, alice_token) = app.user("alice").await;
    let mut members = Vec::with_capacity(MEMBERS);
    for i in 0..MEMBERS {
        members.push(app.create_user(&format!("m{i}"), "M", "Doe").await);
    }
    let group = uuid::Uuid::new_v4();
    let now = chrono::Utc::now();
    chat::ActiveModel {
        id: Set(group),
        kind: Set(chat::ChatKind::Group),
        title: Set(Some("everyone".into())),
        direct_key: Set(None),
        created_at: Set(now),
        seq: Set(0),
    }
    .insert(&app.db)
    .await
    .unwrap();
    let keys = subscription("");
    let member = |user: i64, role| chat_member::ActiveModel {
        chat_id: Set(group),
        user_id: Set(user),
        joined_at: Set(now),
        last_read_message_id: Set(None),
        role: Set(role),
        muted: Set(false),
    };
    member(alice, chat_member::Role::Owner)
        .insert(&app.db)
        .await
        .unwrap();
    for some in members.chunks(500) {
        chat_member::Entity::insert_many(
            some.iter().map(|m| member(*m, chat_member::Role::Member)),
        )
        .exec_without_returning(&app.db)
        .await
        .unwrap();
        push_subscription::Entity::insert_many(some.iter().flat_map(|m| {
            let keys = &keys;
            let endpoint = service.endpoint(&m.to_string());
            (0..DEVICES).map(move |d| push_subscription::ActiveModel {
                user_id: Set(*m),
                endpoint: Set(format!("{endpoint}/{d}")),
                p256dh: Set(keys["keys"]["p256dh"].as_str().unwrap().into()),
                auth: Set(keys["keys"]["auth"].as_str().unwrap().into()),
                created_at: Set(now),
                ..Default::default()
            })
        }))
        .exec_without_returning(&app.db)
        .await
        .unwrap();
    }

    let mut a = app.authorized(&alice_token).await;
    let id = send(&mut a, &group.to_string(), "to everyone").await;
    let mut decided = false;
    for _ in 0..400 {
        if decided_up_to(&app).await >= id {
            decided = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(decided, "message {id} not decided within 20 s");
    // Every device was queued, in the round that decided the message.
    assert_eq!(
        push_throttle::Entity::find().count(&app.db).await.unwrap(),
        (MEMBERS * DEVICES) as u64
    );
    let mut service = service;
    let first = service.next().await;
    assert_eq!(first.payload()["preview"], "to everyone");
}
