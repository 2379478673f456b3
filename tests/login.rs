//! `POST /api/login/` exactly as the web client uses it (PROTOCOL.md A1),
//! with every error body, CORS, brute-force limits and the Host check.

use crate::common;

use std::time::Duration;

use common::{Backend, TestApp, PASSWORD};
use serde_json::{json, Value};

async fn body(
    res: &mut awc::ClientResponse<
        impl futures_util::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>>
            + Unpin,
    >,
) -> Value {
    res.json().limit(1 << 20).await.expect("JSON body")
}

async fn form_and_json_login(backend: &Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice, _, _) = app.pair("alice", "bob").await;
    let expected_data = json!({
        "id": alice, "username": "alice", "email": "alice@example.com",
        "first_name": "Alice", "last_name": "Smith",
        "is_active": true, "is_staff": false, "is_superuser": false, "permissions": {}
    });
    // The web client: a form post to /api/login/? from its own origin.
    let mut res = app
        .http
        .post(app.url("/api/login/?"))
        .insert_header(("Origin", "http://localhost:3000"))
        .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
        .send_body(format!(
            "username=alice&password={}",
            PASSWORD.replace(' ', "+")
        ))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(
        res.headers().get("access-control-allow-origin").unwrap(),
        "http://localhost:3000"
    );
    let form = body(&mut res).await;
    assert!(form["token"].as_str().is_some_and(|t| t.len() > 20));
    assert_eq!(form["data"], expected_data, "{}", backend.name());

    for path in ["/api/login/", "/api/login"] {
        let mut res = app
            .http
            .post(app.url(path))
            .send_json(&json!({"username": "alice", "password": PASSWORD}))
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200, "{path}");
        assert_eq!(body(&mut res).await["data"], expected_data);
    }
    let user = chat_server::accounts::find_by_username(&app.db, "alice")
        .await
        .unwrap()
        .unwrap();
    assert!(user.last_login.is_some());
}

backend_tests!(login_accepts_forms_and_json => form_and_json_login);

#[actix_rt::test]
async fn login_errors_have_the_old_bodies() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    app.pair("alice", "bob").await;
    chat_server::accounts::set_active(&app.db, "bob", false)
        .await
        .unwrap();
    let not_found = json!({"non_field_errors": ["User not found"]});
    for (username, password) in [
        ("alice", "wrong password"),
        ("nobody", PASSWORD),
        ("bob", PASSWORD),
    ] {
        let mut res = app
            .http
            .post(app.url("/api/login/?"))
            .insert_header(("Origin", "http://elsewhere.test"))
            .send_form(&[("username", username), ("password", password)])
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 400, "{username}");
        assert_eq!(
            res.headers().get("access-control-allow-origin").unwrap(),
            "http://elsewhere.test",
            "errors carry CORS headers"
        );
        assert_eq!(body(&mut res).await, not_found, "{username}");
    }
    let cases = [
        (
            json!({}),
            json!({"username": ["This field is required."], "password": ["This field is required."]}),
        ),
        (
            json!({"username": "alice"}),
            json!({"password": ["This field is required."]}),
        ),
        (
            json!({"username": " ", "password": "x"}),
            json!({"username": ["This field may not be blank."]}),
        ),
    ];
    for (request, expected) in cases {
        let mut res = app
            .http
            .post(app.url("/api/login/"))
            .send_json(&request)
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 400);
        assert_eq!(body(&mut res).await, expected, "{request}");
    }
    let mut res = app
        .http
        .post(app.url("/api/login/"))
        .insert_header(("Content-Type", "text/plain"))
        .send_body("username=alice")
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 415);
    assert_eq!(
        body(&mut res).await,
        json!({"detail": "Unsupported media type \"text/plain\" in request."})
    );
    let mut res = app
        .http
        .post(app.url("/api/login/"))
        .insert_header(("Content-Type", "application/json"))
        .send_body("{\"username\": ")
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    assert!(body(&mut res).await["detail"]
        .as_str()
        .unwrap()
        .starts_with("JSON parse error"));
    let mut res = app
        .http
        .post(app.url("/api/login/"))
        .insert_header(("Content-Type", "application/json"))
        .send_body(vec![b' '; 100_000])
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 413);
    assert_eq!(
        body(&mut res).await,
        json!({"detail": "Request body too large."})
    );
}

#[actix_rt::test]
async fn repeated_failures_are_throttled() {
    let app = TestApp::spawn_with(&Backend::Sqlite, &[("LOGIN_MAX_ATTEMPTS", "3")]).await;
    app.pair("alice", "bob").await;
    for _ in 0..3 {
        let res = app
            .http
            .post(app.url("/api/login/"))
            .send_form(&[("username", "alice"), ("password", "nope")])
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 400);
    }
    // Even the right password waits now.
    let mut res = app
        .http
        .post(app.url("/api/login/"))
        .send_form(&[("username", "alice"), ("password", PASSWORD)])
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 429);
    let retry: u64 = res
        .headers()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=300).contains(&retry));
    assert!(body(&mut res).await["detail"]
        .as_str()
        .unwrap()
        .starts_with("Request was throttled"));
    // Another user is not affected.
    let res = app
        .http
        .post(app.url("/api/login/"))
        .send_form(&[("username", "bob"), ("password", PASSWORD)])
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
}

/// The headers every answer carries, those the server makes before any
/// handler (a wrong Host, a CORS preflight) included.
fn assert_security_headers(headers: &actix_web::http::header::HeaderMap) {
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
    ] {
        assert_eq!(
            headers.get(name).and_then(|v| v.to_str().ok()),
            Some(value),
            "{name}"
        );
    }
    assert!(headers.contains_key("content-security-policy"));
}

#[actix_rt::test]
async fn cors_preflight_is_answered() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    let res = app
        .http
        .request(actix_web::http::Method::OPTIONS, app.url("/api/login/"))
        .insert_header(("Origin", "http://localhost:3000"))
        .insert_header(("Access-Control-Request-Method", "POST"))
        .insert_header((
            "Access-Control-Request-Headers",
            "content-type, authorization",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let h = res.headers();
    assert_eq!(
        h.get("access-control-allow-origin").unwrap(),
        "http://localhost:3000"
    );
    assert_security_headers(h);
    assert!(h
        .get("access-control-allow-methods")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("POST"));

    let restricted = TestApp::spawn_with(
        &Backend::Sqlite,
        &[("CORS_ALLOWED_ORIGINS", "https://chat.example.com")],
    )
    .await;
    let res = restricted
        .http
        .request(
            actix_web::http::Method::OPTIONS,
            restricted.url("/api/login/"),
        )
        .insert_header(("Origin", "https://evil.example.net"))
        .insert_header(("Access-Control-Request-Method", "POST"))
        .send()
        .await
        .unwrap();
    assert!(!res.headers().contains_key("access-control-allow-origin"));
}

#[actix_rt::test]
async fn allowed_hosts_rejects_other_host_headers() {
    let app = TestApp::spawn_with(
        &Backend::Sqlite,
        &[("ALLOWED_HOSTS", "chat.example.com .example.org")],
    )
    .await;
    let get = |host: &'static str| {
        app.http
            .get(app.url("/api/me/"))
            .insert_header(("Host", host))
            .send()
    };
    let mut res = get("evil.test").await.unwrap();
    assert_eq!(res.status().as_u16(), 400);
    assert_security_headers(res.headers());
    assert_eq!(
        body(&mut res).await,
        json!({"detail": "Invalid HTTP_HOST header: 'evil.test'. You may need to add it to ALLOWED_HOSTS."})
    );
    assert_eq!(
        get("chat.example.com").await.unwrap().status().as_u16(),
        401
    );
    assert_eq!(
        get("api.example.org:8000").await.unwrap().status().as_u16(),
        401
    );
    // Load-balancer probes by IP are exempt.
    let res = app
        .http
        .get(app.url("/healthz"))
        .insert_header(("Host", "10.0.0.7"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
}

#[actix_rt::test]
async fn tokens_expire() {
    let app = TestApp::spawn_with(&Backend::Sqlite, &[("TOKEN_TTL_SECONDS", "1")]).await;
    app.pair("alice", "bob").await;
    let token = app.login("alice").await;
    let res = app
        .http
        .get(app.url("/api/me/"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut res = app
        .http
        .get(app.url("/api/me/"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    assert_eq!(body(&mut res).await, json!({"detail": "Invalid token."}));
    let mut ws = app.ws("/chat").await;
    ws.recv().await;
    let answer = ws
        .request(json!({"type": "authorization", "data": {"token": token}}))
        .await;
    assert_eq!(answer["data"]["message"], "Invalid token provided");
}
