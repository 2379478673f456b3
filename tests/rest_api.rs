//! The REST API beyond login: accounts, users, contacts, history, the
//! OpenAPI docs, health and readiness.

use crate::common;

use common::{Backend, TestApp, PASSWORD};
use entity::chat;
use sea_orm::{EntityTrait, PaginatorTrait};
use serde_json::{json, Value};

async fn json_of<S>(mut res: awc::ClientResponse<S>) -> (u16, Value)
where
    S: futures_util::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>> + Unpin,
{
    let status = res.status().as_u16();
    let body = res.json().limit(1 << 20).await.unwrap_or(Value::Null);
    (status, body)
}

async fn get(app: &TestApp, path: &str, token: &str) -> (u16, Value) {
    json_of(
        app.http
            .get(app.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn post(app: &TestApp, path: &str, token: &str, body: Value) -> (u16, Value) {
    json_of(
        app.http
            .post(app.url(path))
            .bearer_auth(token)
            .send_json(&body)
            .await
            .unwrap(),
    )
    .await
}

#[actix_rt::test]
async fn register_me_and_password() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    let (status, body) = post(&app, "/api/register/", "", json!({"username": "erin", "password": "long enough pw", "first_name": "Erin", "last_name": "Ray"})).await;
    assert_eq!(status, 201);
    let token = body["token"].as_str().unwrap().to_string();
    assert_eq!(body["data"]["username"], "erin");
    assert!(body["data"].get("password_hash").is_none());

    let (status, body) = post(
        &app,
        "/api/register/",
        "",
        json!({"username": "erin", "password": "long enough pw"}),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"username": ["A user with that username already exists."]})
        )
    );
    let (status, body) = post(
        &app,
        "/api/register/",
        "",
        json!({"username": "frank", "password": "short"}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body["password"][0].as_str().unwrap().contains("at least 8"));
    let (status, body) = post(
        &app,
        "/api/register/",
        "",
        json!({"username": "bad name!", "password": "long enough pw"}),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"username": ["Enter a valid username. This value may contain only letters, numbers, and @/./+/-/_ characters."]})
        )
    );

    let (status, me) = get(&app, "/api/me/", &token).await;
    assert_eq!((status, me["first_name"].clone()), (200, json!("Erin")));
    let (status, body) = get(&app, "/api/me/", "").await;
    assert_eq!(
        (status, body),
        (
            401,
            json!({"detail": "Authentication credentials were not provided."})
        )
    );
    let tampered = format!("{}x", &token[..token.len() - 1]);
    assert_eq!(
        get(&app, "/api/me/", &tampered).await,
        (401, json!({"detail": "Invalid token."}))
    );

    let (status, body) = post(
        &app,
        "/api/password/",
        &token,
        json!({"old_password": "wrong", "new_password": "another long one"}),
    )
    .await;
    assert_eq!(
        (status, body),
        (400, json!({"old_password": ["Wrong password."]}))
    );
    let (status, body) = post(
        &app,
        "/api/password/",
        &token,
        json!({"old_password": "long enough pw", "new_password": "another long one"}),
    )
    .await;
    assert_eq!(status, 200);
    let fresh = body["token"].as_str().unwrap().to_string();
    assert_eq!(
        get(&app, "/api/me/", &token).await.0,
        401,
        "the old token is revoked"
    );
    assert_eq!(get(&app, "/api/me/", &fresh).await.0, 200);

    let closed = TestApp::spawn_with(&Backend::Sqlite, &[("REGISTRATION_OPEN", "0")]).await;
    let (status, body) = post(
        &closed,
        "/api/register/",
        "",
        json!({"username": "gina", "password": "long enough pw"}),
    )
    .await;
    assert_eq!(
        (status, body),
        (403, json!({"detail": "Registration is closed."}))
    );
}

async fn contacts_and_history(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.create_user("alice", "Alice", "Smith").await;
    let bob = app.create_user("bob", "Bob", "Jones").await;
    app.create_user("mallory", "Mal", "Lory").await;
    let token = app.login("alice").await;

    let (status, users) = get(&app, "/api/users/?search=b", &token).await;
    assert_eq!(status, 200);
    assert_eq!(
        users,
        json!({"count": 1, "page": 1, "page_size": 20, "results": [
        {"id": bob, "username": "bob", "first_name": "Bob", "last_name": "Jones"}]})
    );
    assert_eq!(get(&app, "/api/users/?page=0", &token).await.0, 400);
    // A prefix is taken literally: `_` and `%` are characters, not patterns.
    let underscored = app.create_user("b_b", "Bee", "Bee").await;
    let (status, users) = get(&app, "/api/users/?search=b_", &token).await;
    assert_eq!(status, 200);
    assert_eq!(users["count"], 1, "{users}");
    assert_eq!(users["results"][0]["id"], underscored, "{users}");
    let (_, users) = get(&app, "/api/users/?search=%25", &token).await;
    assert_eq!(users["count"], 0, "{users}");

    // Ten concurrent requests create one conversation.
    let requests =
        (0..10).map(|_| post(&app, "/api/contacts/", &token, json!({"username": "bob"})));
    let answers = futures_util::future::join_all(requests).await;
    let pk = answers[0].1["pk"].clone();
    for (status, contact) in &answers {
        assert_eq!(*status, 200, "{contact}");
        assert_eq!(contact["pk"], pk);
    }
    assert_eq!(
        chat::Entity::find().count(&app.db).await.unwrap(),
        1,
        "{}",
        backend.name()
    );
    assert_eq!(
        answers[0].1,
        json!({"pk": pk, "name": "Bob Jones", "online": false, "user_id": bob,
        "username": "bob", "last_message": null, "unread": 0,
        "kind": "direct", "members": 2, "seq": 0})
    );
    let (status, body) = post(&app, "/api/contacts/", &token, json!({"username": "alice"})).await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"username": ["You cannot add yourself as a contact."]})
        )
    );
    let (status, body) = post(
        &app,
        "/api/contacts/",
        &token,
        json!({"username": "nobody"}),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"username": ["No active user with that username."]})
        )
    );

    let (status, list) = get(&app, "/api/contacts/", &token).await;
    assert_eq!((status, list.as_array().map(Vec::len)), (200, Some(1)));
    let pk = pk.as_str().unwrap();
    assert_eq!(
        get(&app, &format!("/api/contacts/{pk}/"), &token).await.1["name"],
        "Bob Jones"
    );

    let mut ws = app.authorized(&token).await;
    for text in ["one", "two", "three"] {
        ws.send(json!({"type": "message", "data": {"to": pk, "content": text}}))
            .await;
        ws.recv_type("message_response").await;
    }
    let (status, page) = get(
        &app,
        &format!("/api/contacts/{pk}/messages/?limit=2"),
        &token,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(page["has_more"], true);
    let texts: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["two", "three"]);
    assert_eq!(page["messages"][0]["sender"], alice);
    assert_eq!(page["messages"][0]["direction"], "send");
    assert_eq!(
        get(
            &app,
            &format!("/api/contacts/{pk}/messages/?limit=500"),
            &token
        )
        .await
        .0,
        400
    );

    // Mallory sees none of it, and cannot tell it exists.
    let intruder = app.login("mallory").await;
    let missing = uuid::Uuid::new_v4();
    for path in [
        format!("/api/contacts/{pk}/"),
        format!("/api/contacts/{pk}/messages/"),
        format!("/api/contacts/{missing}/"),
        "/api/contacts/nope/".into(),
    ] {
        assert_eq!(
            get(&app, &path, &intruder).await,
            (404, json!({"detail": "Not found."})),
            "{path}"
        );
    }
}

backend_tests!(contacts_are_created_once_and_private => contacts_and_history);

#[actix_rt::test]
async fn openapi_spec_and_doc_pages_are_served_locally() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    let (status, spec) =
        json_of(app.http.get(app.url("/swagger.json")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(spec["swagger"], "2.0");
    let paths = spec["paths"].as_object().unwrap();
    for path in [
        "/api/login/",
        "/api/login",
        "/api/register/",
        "/api/me/",
        "/api/password/",
        "/api/users/",
        "/api/contacts/",
        "/api/contacts/{id}/",
        "/api/contacts/{id}/messages/",
        "/healthz",
        "/readyz",
    ] {
        assert!(paths.contains_key(path), "{path} missing from the spec");
    }
    assert!(spec["paths"]["/api/login/"]["post"]["responses"]["400"].is_object());
    assert!(spec["securityDefinitions"].is_object());

    // The same API as OpenAPI 3.0, which the pages read.
    let (status, v3) = json_of(app.http.get(app.url("/openapi.json")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert!(
        v3["openapi"].as_str().unwrap().starts_with("3.0."),
        "{}",
        v3["openapi"]
    );
    let methods = |paths: &serde_json::Value| -> Vec<(String, Vec<String>)> {
        let paths = paths.as_object().unwrap();
        paths
            .iter()
            .map(|(path, ops)| {
                (
                    path.clone(),
                    ops.as_object().unwrap().keys().cloned().collect(),
                )
            })
            .collect()
    };
    assert_eq!(
        methods(&v3["paths"]),
        methods(&spec["paths"]),
        "the same operations"
    );
    let names = |schemas: &serde_json::Value| -> Vec<String> {
        schemas.as_object().unwrap().keys().cloned().collect()
    };
    assert_eq!(
        names(&v3["components"]["schemas"]),
        names(&spec["definitions"])
    );
    let schemas = &v3["components"]["schemas"];
    assert_eq!(
        schemas["Contact"]["properties"]["last_message"]["nullable"],
        true
    );
    assert_eq!(
        schemas["RegisterRequest"]["required"],
        spec["definitions"]["RegisterRequest"]["required"]
    );
    assert_eq!(
        schemas["RegisterRequest"]["properties"]["password"]["minLength"],
        8
    );
    assert_eq!(
        v3["paths"]["/api/register/"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["$ref"],
        "#/components/schemas/RegisterRequest"
    );
    let id = &v3["paths"]["/api/contacts/{id}/"]["get"]["parameters"][0];
    assert_eq!(
        (&id["name"], &id["schema"]["format"]),
        (&json!("id"), &json!("uuid"))
    );
    assert!(v3["components"]["securitySchemes"]["apiKey"].is_object());
    for (page, assets) in [
        (
            "/swagger/",
            vec!["/swagger/swagger-ui-bundle.js", "/swagger/swagger-ui.css"],
        ),
        ("/redoc/", vec!["/redoc/redoc.standalone.js"]),
    ] {
        let mut res = app.http.get(app.url(page)).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200);
        assert!(res
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let html = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
        assert!(html.contains("/openapi.json"));
        for asset in assets {
            assert!(html.contains(asset), "{page} links {asset}");
            let mut res = app.http.get(app.url(asset)).send().await.unwrap();
            assert_eq!(res.status().as_u16(), 200, "{asset}");
            assert!(res.body().limit(4 << 20).await.unwrap().len() > 100_000);
        }
    }
    let no_redirects = awc::Client::builder().disable_redirects().finish();
    let res = no_redirects.get(app.url("/swagger")).send().await.unwrap();
    assert_eq!(
        (
            res.status().as_u16(),
            res.headers().get("location").unwrap().to_str().unwrap()
        ),
        (301, "/swagger/")
    );
}

#[actix_rt::test]
async fn unknown_paths_and_methods_get_json_errors() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    assert_eq!(
        json_of(app.http.get(app.url("/nope")).send().await.unwrap()).await,
        (404, json!({"detail": "Not found."}))
    );
    for (path, allow) in [
        ("/api/login/", "POST"),
        ("/api/me/", "GET"),
        ("/api/contacts/", "GET, POST"),
    ] {
        let res = app.http.delete(app.url(path)).send().await.unwrap();
        assert_eq!(
            res.headers().get("allow").map(|v| v.to_str().unwrap()),
            Some(allow),
            "{path}"
        );
        assert_eq!(
            json_of(res).await,
            (405, json!({"detail": "Method not allowed."})),
            "{path}"
        );
    }
}

#[actix_rt::test]
async fn health_and_readiness() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    assert_eq!(
        json_of(app.http.get(app.url("/healthz")).send().await.unwrap()).await,
        (200, json!({"status": "ok"}))
    );
    assert_eq!(
        json_of(app.http.get(app.url("/readyz")).send().await.unwrap()).await,
        (
            200,
            json!({"status": "ok", "database": "up", "redis": "disabled"})
        )
    );
    let mut res = app.http.get(app.url("/metrics")).send().await.unwrap();
    let text = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
    assert!(text.contains("# TYPE chat_connections gauge"));
    // Every metric is in docs/METRICS.md's table, under the name a scraper
    // sees (a counter's with `_total`). (A labelled family shows once it
    // has counted something: 19 of the 22 here.)
    let documented =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/METRICS.md"))
            .expect("docs/METRICS.md");
    let undocumented: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|family| {
            let (name, kind) = family.split_once(' ')?;
            let scraped = if kind == "counter" {
                format!("`{name}_total")
            } else {
                format!("`{name}")
            };
            let listed = [format!("{scraped}`"), format!("{scraped}{{")]
                .iter()
                .any(|form| documented.contains(form));
            (!listed).then_some(name)
        })
        .collect();
    assert!(
        text.matches("# TYPE ").count() >= 19 && undocumented.is_empty(),
        "not in docs/METRICS.md: {undocumented:?}"
    );
    // The database goes away.
    app.db.close_by_ref().await.unwrap();
    assert_eq!(
        json_of(app.http.get(app.url("/readyz")).send().await.unwrap()).await,
        (
            503,
            json!({"status": "unavailable", "database": "down", "redis": "disabled"})
        )
    );
    assert_eq!(
        json_of(app.http.get(app.url("/healthz")).send().await.unwrap())
            .await
            .0,
        200
    );
    let _ = PASSWORD;
}

#[actix_rt::test]
async fn the_favicon_is_served_locally() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    for path in ["/favicon.ico", "/favicon.svg"] {
        let mut res = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200, "{path}");
        assert_eq!(res.headers().get("content-type").unwrap(), "image/svg+xml");
        assert!(res.body().await.unwrap().starts_with(b"<svg"));
    }
}

#[actix_rt::test]
async fn metrics_count_requests_by_type_and_errors_by_code() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    let (_, _, pk) = app.pair("alice", "bob").await;
    let token = app.login("alice").await;
    let mut ws = app.authorized(&token).await;
    ws.send(json!({"type": "message", "data": {"to": pk, "content": "counted"}}))
        .await;
    ws.recv_type("message_response").await;
    // The sender's own copy comes through the ChatServer, after the answer:
    // taken here, so it cannot stand where the bad_request is expected.
    ws.recv_type("message").await;
    // Answered by the database: timed. Someone else's (or no) conversation
    // is answered from the membership record: counted as an error only.
    let found = ws
        .ask(json!({"type": "get_contact", "data": {"id": pk}}))
        .await;
    assert_eq!(found["pk"], pk, "{found}");
    let missing = ws
        .ask(json!({"type": "get_contact", "data": {"id": "6f1c1a4e-8b0b-4c55-9d2a-0d9d3b2f4e11"}}))
        .await;
    assert_eq!(missing["code"], "not_found");
    ws.send_text("not json").await;
    assert_eq!(ws.recv().await["type"], "bad_request");
    let text = app.metrics_text().await;
    for line in [
        "chat_frames_in_total{type=\"authorization\"} 1",
        "chat_frames_in_total{type=\"message\"} 1",
        "chat_frames_in_total{type=\"get_contact\"} 2",
        "chat_frames_in_total{type=\"unparsed\"} 1",
        "chat_bad_frames_total 2",
        "chat_errors_total{code=\"not_found\"} 1",
        "chat_messages_stored_total 1",
        "chat_store_batch_size_count 1",
        "chat_send_to_delivery_seconds_count 1",
        "chat_request_seconds_count{type=\"get_contact\"} 1",
        "chat_server_sessions 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
    }
}

/// Adding contacts counts against the caller's allowance of conversation
/// changes, like group changes: a burst is refused with 429.
#[actix_rt::test]
async fn adding_contacts_is_rate_limited() {
    let app = TestApp::spawn_with(
        &Backend::Sqlite,
        &[("RATE_LIMIT_PER_SECOND", "1"), ("RATE_LIMIT_BURST", "1")],
    )
    .await;
    let (_, token) = app.user("alice").await;
    let names: Vec<String> = (0..6).map(|i| format!("friend{i}")).collect();
    for name in &names {
        app.create_user(name, "Friend", "Doe").await;
    }
    // Six at once: one from the burst, and one a second refills; the test
    // only needs them to be sent within five seconds of each other.
    let answers = futures_util::future::join_all(
        names
            .iter()
            .map(|name| post(&app, "/api/contacts/", &token, json!({"username": name}))),
    )
    .await;
    let refused: Vec<&(u16, Value)> = answers.iter().filter(|(s, _)| *s == 429).collect();
    assert!(!refused.is_empty(), "{answers:?}");
    assert!(
        refused[0].1["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("Request was throttled")),
        "{answers:?}"
    );
    assert!(
        answers.iter().all(|(s, _)| *s == 200 || *s == 429),
        "{answers:?}"
    );
    // Every refusal is counted for the operator.
    let counted = app.metric("chat_rate_limited_total").await;
    assert_eq!(counted, refused.len() as f64, "{answers:?}");
}
