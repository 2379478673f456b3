//! The web client's files as the server serves them: every one present,
//! with its type and the headers that keep the page safe (docs/WEBCLIENT.md;
//! the browser tests themselves are in e2e/).

use crate::common;

use common::{Backend, TestApp};

#[actix_rt::test]
async fn the_client_and_its_files_are_served_safely() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    let mut page = app.http.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let header = |name: &str| {
        page.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert_eq!(header("x-content-type-options"), "nosniff");
    let csp = header("content-security-policy");
    assert!(csp.contains("script-src 'self';"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let body = String::from_utf8(page.body().await.unwrap().to_vec()).unwrap();
    assert!(body.contains(r#"<script type="module" src="/app/main.js"></script>"#));
    assert!(!body.contains("<script>"), "no inline script");
    for (path, kind) in [
        ("/app/main.js", "text/javascript"),
        ("/app/chat.js", "text/javascript"),
        ("/app/api.js", "text/javascript"),
        ("/app/style.css", "text/css"),
        ("/app/vendor/preact.module.js", "text/javascript"),
        ("/app/vendor/hooks.module.js", "text/javascript"),
        ("/app/vendor/htm.module.js", "text/javascript"),
    ] {
        let res = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200, "{path}");
        let content_type = res.headers().get("content-type").unwrap().to_str().unwrap();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
    }
    let missing = app.http.get(app.url("/app/nope.js")).send().await.unwrap();
    assert_eq!(missing.status().as_u16(), 404);
}
