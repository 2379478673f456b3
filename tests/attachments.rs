//! Attachments (PROTOCOL.md B9): uploads streamed to the store within the
//! size limit and the quota, what a file is decided by its bytes, messages
//! that carry files (and the old client's view of them), reading back to
//! the right people only, byte ranges, thumbnails and decompression bombs,
//! and files removed with their message or when never sent.

use crate::common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::{Backend, TestApp, WsClient};
use entity::attachment;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{json, Value};

/// A PNG of `width` × `height` red pixels.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let picture = image::RgbImage::from_pixel(width, height, image::Rgb([200, 30, 30]));
    let mut out = std::io::Cursor::new(Vec::new());
    picture
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encode a PNG");
    out.into_inner()
}

/// CRC-32 (ISO-HDLC), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A small PNG whose header claims `width` × `height`: a decompression
/// bomb's shape (a real one's data would inflate to that many pixels).
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = png(1, 1);
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// Uploads `body` as `name`: (status, answer).
pub async fn upload(
    app: &TestApp,
    token: &str,
    name: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let query = serde_urlencoded::to_string([("name", name)]).expect("query");
    let mut res = app
        .http
        .post(app.url(&format!("/api/attachments/?{query}")))
        .bearer_auth(token)
        .insert_header(("Content-Type", content_type))
        .send_body(body)
        .await
        .expect("upload");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// An upload that must succeed: its answer.
async fn uploaded(app: &TestApp, token: &str, name: &str, body: Vec<u8>) -> Value {
    let (status, answer) = upload(app, token, name, "application/octet-stream", body).await;
    assert_eq!(status, 201, "{answer}");
    answer
}

/// GETs `path` with `headers`: (status, headers, body).
async fn get(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, actix_web::http::header::HeaderMap, Bytes) {
    let mut request = app.http.get(app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for header in headers {
        request = request.insert_header(*header);
    }
    let mut res = request.send().await.expect("GET");
    let body = res.body().limit(64 << 20).await.expect("body");
    (res.status().as_u16(), res.headers().clone(), body)
}

fn header<'a>(headers: &'a actix_web::http::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn send_files(ws: &mut WsClient, pk: &str, content: &str, files: &[&Value]) -> Value {
    let ids: Vec<&Value> = files.iter().map(|f| &f["id"]).collect();
    ws.ask(json!({"type": "message", "data": {"to": pk, "content": content, "attachments": ids}}))
        .await
}

fn invalid(message: &str) -> Value {
    json!({"status": "error", "code": "invalid", "message": message})
}

async fn rows(app: &TestApp) -> Vec<attachment::Model> {
    attachment::Entity::find()
        .all(&app.db)
        .await
        .expect("read attachments")
}

/// Files in a store directory.
fn stored_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("files")).map_or(0, |d| d.count())
}

async fn files_in_messages(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice_id, _, pk) = app.pair("alice", "bob").await;
    app.create_user("carol", "Carol", "Doe").await;
    let alice_token = app.login("alice").await;
    let (bob_token, carol_token) = (app.login("bob").await, app.login("carol").await);
    let mut alice = app.authorized(&alice_token).await;
    let mut bob = app.authorized(&bob_token).await;

    // The bytes say what a file is, whatever the client claimed.
    let picture = png(640, 480);
    let (status, photo) = upload(
        &app,
        &alice_token,
        "../holiday.png",
        "text/plain",
        picture.clone(),
    )
    .await;
    assert_eq!(status, 201, "{photo}");
    let id = photo["id"].as_str().unwrap().to_string();
    assert_eq!(
        photo,
        json!({"id": id, "name": "holiday.png", "size": picture.len(), "content_type": "image/png",
               "width": 640, "height": 480})
    );
    let notes = uploaded(&app, &alice_token, "notes.txt", b"plain words".to_vec()).await;

    // Sent without text: the old web client, which shows only `content`,
    // sees the files' names; every client gets them in `attachments`.
    let ack = send_files(&mut alice, &pk, "", &[&photo, &notes]).await;
    assert_eq!(ack["status"], "success", "{ack}");
    let pushed = bob.recv_type("message").await;
    let message_id = ack["id"].as_i64().unwrap();
    assert_eq!(
        pushed,
        json!({"type": "message", "data": {"pk": pk, "seq": 1, "data": {
            "direction": "received", "content": "holiday.png, notes.txt", "time": ack["time"],
            "id": message_id, "sender": alice_id,
            "attachments": [photo, {"id": notes["id"], "name": "notes.txt", "size": 11,
                                    "content_type": "application/octet-stream"}]}}})
    );
    // The old client's list shows the names as the last message.
    let contacts = bob.ask(json!({"type": "get_contacts", "data": {}})).await;
    assert_eq!(
        contacts[0]["last_message"]["content"],
        "holiday.png, notes.txt"
    );
    // History and `sync` carry them too.
    let page = bob
        .ask(json!({"type": "get_messages", "data": {"id": pk}}))
        .await;
    assert_eq!(
        page["messages"][0]["attachments"],
        pushed["data"]["data"]["attachments"]
    );
    let sync = bob
        .ask(json!({"type": "sync", "data": {"id": pk, "after_seq": 0}}))
        .await;
    assert_eq!(sync["events"][0], pushed);

    // A member reads the file; an image inline, never sniffed, never run.
    let file = format!("/api/attachments/{id}/");
    let (status, headers, body) = get(&app, &file, Some(&bob_token), &[]).await;
    assert_eq!((status, body.as_ref()), (200, picture.as_slice()));
    assert_eq!(header(&headers, "content-type"), "image/png");
    assert_eq!(
        header(&headers, "content-disposition"),
        "inline; filename=\"holiday.png\"; filename*=UTF-8''holiday.png"
    );
    assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
    assert!(header(&headers, "content-security-policy").ends_with("sandbox"));
    assert_eq!(
        header(&headers, "cache-control"),
        "private, max-age=31536000, immutable"
    );
    let etag = header(&headers, "etag").to_string();
    let (status, _, _) = get(&app, &file, Some(&bob_token), &[("If-None-Match", &etag)]).await;
    assert_eq!(status, 304);
    // The token in the query, for an <img src>.
    let with_token = format!("{file}?token={bob_token}");
    assert_eq!(get(&app, &with_token, None, &[]).await.0, 200);
    assert_eq!(get(&app, &file, None, &[]).await.0, 401);
    // Anyone else: as if it did not exist.
    assert_eq!(get(&app, &file, Some(&carol_token), &[]).await.0, 404);
    let thumb = format!("{file}thumbnail/");
    assert_eq!(get(&app, &thumb, Some(&carol_token), &[]).await.0, 404);
    let unknown = format!("/api/attachments/{}/", uuid::Uuid::new_v4());
    assert_eq!(get(&app, &unknown, Some(&bob_token), &[]).await.0, 404);
    assert_eq!(
        get(&app, "/api/attachments/nope/", Some(&bob_token), &[])
            .await
            .0,
        404
    );

    // Byte ranges: a part, the end, past the end.
    let size = picture.len();
    let (status, headers, body) =
        get(&app, &file, Some(&bob_token), &[("Range", "bytes=10-19")]).await;
    assert_eq!((status, body.as_ref()), (206, &picture[10..20]));
    assert_eq!(
        header(&headers, "content-range"),
        format!("bytes 10-19/{size}")
    );
    let (status, _, body) = get(&app, &file, Some(&bob_token), &[("Range", "bytes=-5")]).await;
    assert_eq!((status, body.as_ref()), (206, &picture[size - 5..]));
    let past = format!("bytes={size}-");
    let (status, headers, _) = get(&app, &file, Some(&bob_token), &[("Range", &past)]).await;
    assert_eq!(
        (status, header(&headers, "content-range")),
        (416, format!("bytes */{size}").as_str())
    );
    // Several ranges: the whole file (RFC 9110 allows it).
    let (status, _, body) = get(&app, &file, Some(&bob_token), &[("Range", "bytes=0-1,5-6")]).await;
    assert_eq!((status, body.len()), (200, size));

    // The thumbnail: at most 320 px, made once.
    let (status, headers, body) = get(&app, &thumb, Some(&bob_token), &[]).await;
    assert_eq!(
        (status, header(&headers, "content-type")),
        (200, "image/png")
    );
    let small = image::load_from_memory(&body).expect("a thumbnail");
    assert_eq!((small.width(), small.height()), (320, 240));
    assert_eq!(get(&app, &thumb, Some(&alice_token), &[]).await.2, body);
    // Not an image: no thumbnail; a download, not a page.
    let notes_file = format!("/api/attachments/{}/", notes["id"].as_str().unwrap());
    let (status, headers, _) = get(&app, &notes_file, Some(&bob_token), &[]).await;
    assert_eq!(status, 200);
    assert!(header(&headers, "content-disposition").starts_with("attachment;"));
    assert_eq!(
        get(
            &app,
            &format!("{notes_file}thumbnail/"),
            Some(&bob_token),
            &[]
        )
        .await
        .0,
        404
    );
}

async fn sending_rules(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, pk) = app.pair("alice", "bob").await;
    let (alice_token, bob_token) = (app.login("alice").await, app.login("bob").await);
    let mut alice = app.authorized(&alice_token).await;
    let mut bob = app.authorized(&bob_token).await;
    let mine = uploaded(&app, &alice_token, "a.txt", b"aaa".to_vec()).await;
    let bobs = uploaded(&app, &bob_token, "b.txt", b"bbb".to_vec()).await;

    // Someone else's upload is not one's to send.
    let id = bobs["id"].as_str().unwrap();
    assert_eq!(
        send_files(&mut alice, &pk, "look", &[&bobs]).await,
        invalid(&format!("attachment {id} is not an upload of yours"))
    );
    let bad = alice
        .ask(
            json!({"type": "message", "data": {"to": pk, "content": "x", "attachments": ["nope"]}}),
        )
        .await;
    assert_eq!(bad, invalid("attachment \"nope\" is not an id"));
    let twice = send_files(&mut alice, &pk, "x", &[&mine, &mine]).await;
    let mine_id = mine["id"].as_str().unwrap();
    assert_eq!(
        twice,
        invalid(&format!("attachment {mine_id} is named twice"))
    );
    let eleven: Vec<String> = (0..11).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let many = alice
        .ask(json!({"type": "message", "data": {"to": pk, "content": "x", "attachments": eleven}}))
        .await;
    assert_eq!(many, invalid("a message carries at most 10 attachments"));
    // No text and no files is still nothing.
    let empty = alice
        .ask(json!({"type": "message", "data": {"to": pk, "content": " ", "attachments": []}}))
        .await;
    assert_eq!(empty, invalid("content must not be empty"));

    // Sent once; a resend with the same client_id is the same message; a
    // new message cannot send it again.
    let first = alice
        .ask(
            json!({"type": "message", "data": {"to": pk, "content": "here", "client_id": "c1",
                    "attachments": [mine["id"]]}}),
        )
        .await;
    assert_eq!(first["status"], "success", "{first}");
    let pushed = bob.recv_type("message").await;
    assert_eq!(pushed["data"]["data"]["content"], "here");
    assert_eq!(pushed["data"]["data"]["attachments"], json!([mine]));
    let again = alice
        .ask(
            json!({"type": "message", "data": {"to": pk, "content": "here", "client_id": "c1",
                    "attachments": [mine["id"]]}}),
        )
        .await;
    assert_eq!(again["id"], first["id"]);
    assert_eq!(
        send_files(&mut alice, &pk, "again", &[&mine]).await,
        invalid(&format!("attachment {mine_id} was sent already"))
    );
    // Two sessions sending one file at once: one message takes it, the
    // other is refused (by the session's check, or in the writer's
    // transaction when both passed it), and nothing is stored twice.
    let mut second = app.authorized(&alice_token).await;
    let shared = uploaded(&app, &alice_token, "s.txt", b"s".to_vec()).await;
    let frame = json!({"type": "message", "data": {"to": pk, "content": "", "attachments": [shared["id"]]}});
    alice.send(frame.clone()).await;
    second.send(frame).await;
    let answers = [
        alice.recv_type("message_response").await["data"].clone(),
        second.recv_type("message_response").await["data"].clone(),
    ];
    let ok = answers.iter().filter(|a| a["status"] == "success").count();
    assert_eq!(ok, 1, "{answers:?}");
    assert!(
        answers.iter().any(|a| a["code"] == "invalid"),
        "{answers:?}"
    );
    let delivered = bob.recv_type("message").await;
    assert_eq!(delivered["data"]["data"]["attachments"], json!([shared]));
    // Text beside files keeps its bounds.
    let long = "x".repeat(4001);
    let other = uploaded(&app, &alice_token, "c.txt", b"c".to_vec()).await;
    assert_eq!(
        send_files(&mut alice, &pk, &long, &[&other]).await,
        invalid("content is longer than 4000 characters")
    );
    bob.nothing_before_pong().await;
}

async fn limits_and_quota(backend: &Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            ("MAX_ATTACHMENT_BYTES", "1000"),
            ("ATTACHMENT_QUOTA_FILES", "3"),
            ("ATTACHMENT_QUOTA_BYTES", "2500"),
        ],
    )
    .await;
    let (_, _, pk) = app.pair("alice", "bob").await;
    let token = app.login("alice").await;
    let mut alice = app.authorized(&token).await;

    // Too large by its Content-Length: refused before anything is stored.
    let (status, answer) = upload(
        &app,
        &token,
        "big.bin",
        "application/octet-stream",
        vec![7; 1001],
    )
    .await;
    assert_eq!(
        (status, answer),
        (413, json!({"detail": "Request body too large."}))
    );
    // Too large while streaming (no Content-Length): refused, nothing kept.
    let chunks = futures_util::stream::iter(
        (0..4).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![1u8; 400]))),
    );
    let res = app
        .http
        .post(app.url("/api/attachments/?name=stream.bin"))
        .bearer_auth(&token)
        .send_stream(chunks)
        .await
        .expect("streamed upload");
    assert_eq!(res.status().as_u16(), 413);
    let (status, _) = upload(&app, &token, "empty.txt", "text/plain", Vec::new()).await;
    assert_eq!(status, 400);
    assert!(
        rows(&app).await.is_empty(),
        "nothing of refused uploads is kept"
    );

    // The quota of uploads not sent: files, then bytes.
    let a = uploaded(&app, &token, "a", vec![1; 1000]).await;
    uploaded(&app, &token, "b", vec![2; 1000]).await;
    let (status, answer) = upload(&app, &token, "c", "text/plain", vec![3; 600]).await;
    assert_eq!(status, 429, "{answer}");
    assert!(
        answer["detail"].as_str().unwrap().contains("2500 bytes"),
        "{answer}"
    );
    uploaded(&app, &token, "c", vec![3; 400]).await;
    let (status, answer) = upload(&app, &token, "d", "text/plain", vec![4; 10]).await;
    assert_eq!(status, 429);
    assert!(
        answer["detail"].as_str().unwrap().contains("3 files"),
        "{answer}"
    );
    // Sending one frees its place.
    assert_eq!(
        send_files(&mut alice, &pk, "", &[&a]).await["status"],
        "success"
    );
    uploaded(&app, &token, "d", vec![4; 10]).await;
}

async fn deletion_and_sweep(backend: &Backend) {
    let store = tempfile::tempdir().expect("temp dir");
    let dir = store.path().display().to_string();
    let app = TestApp::spawn_with(
        backend,
        &[("ATTACHMENTS_DIR", &dir), ("ATTACHMENT_SWEEP_SECONDS", "1")],
    )
    .await;
    let (_, _, pk) = app.pair("alice", "bob").await;
    let (token, bob_token) = (app.login("alice").await, app.login("bob").await);
    let mut alice = app.authorized(&token).await;
    let photo = uploaded(&app, &token, "p.png", png(400, 300)).await;
    let kept = uploaded(&app, &token, "kept.txt", b"kept".to_vec()).await;
    let file = format!("/api/attachments/{}/", photo["id"].as_str().unwrap());
    let ack = send_files(&mut alice, &pk, "look", &[&photo]).await;
    assert_eq!(
        get(&app, &format!("{file}thumbnail/"), Some(&bob_token), &[])
            .await
            .0,
        200
    );
    assert_eq!(stored_files(store.path()), 2);

    // Deleting the message removes its files: unreadable at once, for the
    // uploader too, and gone from the store with the next sweep.
    let deleted = alice
        .ask(json!({"type": "delete_message", "data": {"id": ack["id"]}}))
        .await;
    assert_eq!(deleted["status"], "success", "{deleted}");
    assert_eq!(get(&app, &file, Some(&token), &[]).await.0, 404);
    assert_eq!(get(&app, &file, Some(&bob_token), &[]).await.0, 404);
    let page = alice
        .ask(json!({"type": "get_messages", "data": {"id": pk}}))
        .await;
    assert_eq!(page["messages"][0]["deleted"], true);
    assert_eq!(page["messages"][0]["attachments"], json!([]));
    // The sweep deletes the objects first, then the row.
    let thumbnails = store.path().join("thumbnails");
    common::wait_until(|| async {
        rows(&app).await.len() == 1
            && stored_files(store.path()) == 1
            && !thumbnails.read_dir().is_ok_and(|mut d| d.next().is_some())
    })
    .await;

    // An upload never sent goes after ATTACHMENT_UNSENT_SECONDS (a day).
    let kept_id = uuid::Uuid::parse_str(kept["id"].as_str().unwrap()).unwrap();
    attachment::Entity::update_many()
        .col_expr(
            attachment::Column::CreatedAt,
            Expr::value(chrono::Utc::now() - chrono::Duration::hours(25)),
        )
        .filter(attachment::Column::Id.eq(kept_id))
        .exec(&app.db)
        .await
        .expect("age the upload");
    common::wait_until(|| async { rows(&app).await.is_empty() }).await;
    assert_eq!(stored_files(store.path()), 0);
    let kept_file = format!("/api/attachments/{kept_id}/");
    assert_eq!(get(&app, &kept_file, Some(&token), &[]).await.0, 404);
}

async fn bombs_and_lies(backend: &Backend) {
    let app = TestApp::spawn_with(backend, &[("MAX_PREVIEW_PIXELS", "1000000")]).await;
    let (_, token) = app.user("alice").await;
    // A header claiming 50,000 × 50,000 pixels: a file, with no size and
    // no thumbnail; nothing is decoded.
    let bomb = uploaded(&app, &token, "bomb.png", png_claiming(50_000, 50_000)).await;
    assert_eq!(bomb["content_type"], "image/png");
    assert_eq!((bomb.get("width"), bomb.get("height")), (None, None));
    let thumb = format!(
        "/api/attachments/{}/thumbnail/",
        bomb["id"].as_str().unwrap()
    );
    assert_eq!(get(&app, &thumb, Some(&token), &[]).await.0, 404);
    // Within the bound by its header, but not the image it claims: no thumbnail.
    let liar = uploaded(&app, &token, "liar.png", png_claiming(900, 900)).await;
    assert_eq!(
        (liar["width"].as_i64(), liar["height"].as_i64()),
        (Some(900), Some(900))
    );
    let thumb = format!(
        "/api/attachments/{}/thumbnail/",
        liar["id"].as_str().unwrap()
    );
    assert_eq!(get(&app, &thumb, Some(&token), &[]).await.0, 404);
    // Past MAX_PREVIEW_PIXELS: a file without a preview.
    let large = uploaded(&app, &token, "large.png", png(1001, 1000)).await;
    assert_eq!(large.get("width"), None);

    // What claims to be an image but is not is no image: never inline.
    let (_, page) = upload(
        &app,
        &token,
        "x.png",
        "image/png",
        b"<html><script>alert(1)</script>".to_vec(),
    )
    .await;
    assert_eq!(page["content_type"], "text/html");
    let (_, blob) = upload(&app, &token, "y.png", "image/png", b"no magic".to_vec()).await;
    assert_eq!(blob["content_type"], "application/octet-stream");
    let file = format!("/api/attachments/{}/", page["id"].as_str().unwrap());
    let (_, headers, _) = get(&app, &file, Some(&token), &[]).await;
    assert_eq!(header(&headers, "content-type"), "text/html");
    assert!(header(&headers, "content-disposition").starts_with("attachment;"));
    assert!(header(&headers, "content-security-policy").ends_with("sandbox"));
    // An SVG keeps its type but is only downloaded, and sandboxed.
    let svg = b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>".to_vec();
    let (_, drawing) = upload(&app, &token, "d.svg", "image/svg+xml", svg).await;
    let file = format!("/api/attachments/{}/", drawing["id"].as_str().unwrap());
    let (_, headers, _) = get(&app, &file, Some(&token), &[]).await;
    assert!(header(&headers, "content-disposition").starts_with("attachment;"));
    assert!(header(&headers, "content-security-policy").contains("sandbox"));
}

/// Two instances on one database and one shared directory: a file
/// uploaded to one is sent from it and read through the other, and both
/// sweep at once when its message is deleted.
async fn two_instances(backend: &Backend) {
    let redis = common::require_redis_url();
    let db = common::TestDatabase::migrated(backend).await;
    let store = tempfile::tempdir().expect("temp dir");
    let dir = store.path().display().to_string();
    let prefix = common::redis_prefix();
    let extra = [
        ("REDIS_URL", redis.as_str()),
        ("REDIS_PREFIX", prefix.as_str()),
        ("ATTACHMENTS_DIR", dir.as_str()),
        ("ATTACHMENT_SWEEP_SECONDS", "1"),
    ];
    let mut apps = Vec::new();
    for _ in 0..2 {
        apps.push(TestApp::spawn_on(backend, &db.url, &extra).await);
    }
    for app in &apps {
        app.wait_redis(true).await;
    }
    apps[0].drop_redis_keys(&redis, &prefix);
    let (a, b) = (&apps[0], &apps[1]);
    let (_, _, pk) = a.pair("alice", "bob").await;
    let (token, bob_token) = (a.login("alice").await, b.login("bob").await);
    let mut alice = a.authorized(&token).await;
    let mut bob = b.authorized(&bob_token).await;
    let picture = png(300, 200);
    let photo = uploaded(a, &token, "p.png", picture.clone()).await;
    let ack = send_files(&mut alice, &pk, "", &[&photo]).await;
    let pushed = bob.recv_type("message").await;
    assert_eq!(pushed["data"]["data"]["attachments"], json!([photo]));
    let file = format!("/api/attachments/{}/", photo["id"].as_str().unwrap());
    let (status, _, body) = get(b, &file, Some(&bob_token), &[]).await;
    assert_eq!((status, body.as_ref()), (200, picture.as_slice()));
    assert_eq!(
        get(b, &format!("{file}thumbnail/"), Some(&bob_token), &[])
            .await
            .0,
        200
    );
    let deleted = alice
        .ask(json!({"type": "delete_message", "data": {"id": ack["id"]}}))
        .await;
    assert_eq!(deleted["status"], "success");
    assert_eq!(get(b, &file, Some(&bob_token), &[]).await.0, 404);
    common::wait_until(|| async { rows(a).await.is_empty() && stored_files(store.path()) == 0 })
        .await;
}

backend_tests!(@server two_instances_share_the_files => two_instances);
backend_tests!(files_are_sent_read_and_previewed => files_in_messages);
backend_tests!(what_may_be_sent => sending_rules);
backend_tests!(size_limits_and_the_quota => limits_and_quota);
backend_tests!(deleted_and_unsent_files_are_removed => deletion_and_sweep);
backend_tests!(images_that_cannot_be_previewed => bombs_and_lies);

/// With several instances (Redis), a local directory each would see alone
/// is refused at start-up unless it is declared shared.
#[actix_rt::test]
async fn several_instances_need_one_store() {
    let db = common::TestDatabase::migrated(&Backend::Sqlite).await;
    let extra = [
        ("REDIS_URL", "redis://127.0.0.1:1/"),
        ("ATTACHMENTS_SHARED", "0"),
        ("ATTACHMENTS_DIR", "/tmp/not-shared"),
    ];
    let refused = chat_server::Application::build(common::settings(&db.url, &extra)).await;
    let error = refused.err().expect("refused").to_string();
    assert!(error.contains("ATTACHMENTS_SHARED=1"), "{error}");
}

/// The S3 path, against a real S3-compatible server on loopback (s3rver,
/// from npm: `cd e2e && npm ci`).
#[actix_rt::test]
#[ignore = "needs s3rver (cd e2e && npm ci)"]
async fn files_in_an_s3_bucket() {
    let s3 = S3rver::start();
    // object_store reads the standard AWS variables; each test runs in a
    // process of its own under nextest.
    std::env::set_var("AWS_ACCESS_KEY_ID", "S3RVER");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "S3RVER");
    let endpoint = s3.url();
    let app = TestApp::spawn_with(
        &Backend::Sqlite,
        &[
            ("S3_BUCKET", "chat"),
            ("S3_ENDPOINT", &endpoint),
            ("S3_REGION", "us-east-1"),
            ("ATTACHMENT_SWEEP_SECONDS", "1"),
        ],
    )
    .await;
    let (_, _, pk) = app.pair("alice", "bob").await;
    let (token, bob_token) = (app.login("alice").await, app.login("bob").await);
    let mut alice = app.authorized(&token).await;
    // Larger than one 5 MiB part: a real multipart upload.
    let mut big = png(64, 64);
    big.extend(std::iter::repeat_n(0x5a, 6 * 1024 * 1024));
    let photo = uploaded(&app, &token, "big.png", big.clone()).await;
    assert_eq!(photo["size"], big.len());
    let ack = send_files(&mut alice, &pk, "", &[&photo]).await;
    let file = format!("/api/attachments/{}/", photo["id"].as_str().unwrap());
    let (status, _, body) = get(&app, &file, Some(&bob_token), &[]).await;
    assert_eq!((status, body.len()), (200, big.len()));
    assert!(body == big.as_slice());
    let (status, _, body) = get(
        &app,
        &file,
        Some(&bob_token),
        &[("Range", "bytes=5242870-5242889")],
    )
    .await;
    assert_eq!((status, body.as_ref()), (206, &big[5_242_870..5_242_890]));
    let (status, _, body) = get(&app, &format!("{file}thumbnail/"), Some(&bob_token), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        image::load_from_memory(&body).expect("thumbnail").width(),
        64
    );
    assert_eq!(s3.objects().await, 2);
    alice
        .ask(json!({"type": "delete_message", "data": {"id": ack["id"]}}))
        .await;
    common::wait_until(|| async { s3.objects().await == 0 }).await;
}

/// A private s3rver on a free port, with one bucket, `chat`.
struct S3rver {
    child: std::process::Child,
    port: u16,
    /// Where it keeps the bucket: removed with it.
    _dir: tempfile::TempDir,
}

impl S3rver {
    fn start() -> Self {
        let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("e2e/node_modules/.bin/s3rver");
        assert!(bin.exists(), "s3rver is not installed: cd e2e && npm ci");
        let dir = tempfile::tempdir().expect("temp dir");
        let port = common::free_port();
        let child = std::process::Command::new(bin)
            .args([
                "-d",
                &dir.path().display().to_string(),
                "-a",
                "127.0.0.1",
                "-p",
            ])
            .arg(port.to_string())
            .args(["--silent", "--configure-bucket", "chat"])
            .spawn()
            .expect("start s3rver");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed().as_secs() < 30, "s3rver did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        S3rver {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Objects in the bucket, listed through the S3 API.
    async fn objects(&self) -> usize {
        use futures_util::StreamExt;
        use object_store::ObjectStore;
        let bucket = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(self.url())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_bucket_name("chat")
            .with_access_key_id("S3RVER")
            .with_secret_access_key("S3RVER")
            .build()
            .expect("an S3 client");
        bucket.list(None).count().await
    }
}

impl Drop for S3rver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Uploads go to the same REST limit as everything else, and to their own
/// allowance per minute.
#[actix_rt::test]
async fn uploads_per_minute_are_bounded() {
    let app =
        TestApp::spawn_with(&Backend::Sqlite, &[("ATTACHMENT_UPLOADS_PER_MINUTE", "2")]).await;
    let (_, token) = app.user("alice").await;
    for _ in 0..2 {
        uploaded(&app, &token, "a", vec![1]).await;
    }
    let (status, _) = upload(&app, &token, "a", "text/plain", vec![1]).await;
    assert_eq!(status, 429);
}
