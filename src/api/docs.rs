//! Swagger UI at `/swagger/` and ReDoc at `/redoc/`, both reading the
//! OpenAPI 3.0 spec at `/openapi.json` (`/swagger.json` has the same API as
//! Swagger 2.0). Their assets are shipped in `static/` and served from
//! here: the server needs no CDN.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

const SWAGGER_BUNDLE: &[u8] = include_bytes!("../../static/swagger-ui-bundle.js");
const SWAGGER_CSS: &[u8] = include_bytes!("../../static/swagger-ui.css");
const REDOC_BUNDLE: &[u8] = include_bytes!("../../static/redoc.standalone.js");
const FAVICON: &[u8] = include_bytes!("../../static/favicon.svg");

const SWAGGER_PAGE: &str = r##"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<link rel="icon" href="/favicon.svg" type="image/svg+xml">
<title>Chat server API - Swagger UI</title>
<link rel="stylesheet" href="/swagger/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-spec-url="/openapi.json"></div>
<script src="/swagger/swagger-ui-bundle.js"></script>
<script src="/swagger/init.js"></script>
</body>
</html>
"##;

/// Starts Swagger UI; a file of its own, as the Content-Security-Policy allows no inline script.
const SWAGGER_INIT: &[u8] = b"const root = document.getElementById(\"swagger-ui\");\n\
window.ui = SwaggerUIBundle({ url: root.dataset.specUrl, dom_id: \"#swagger-ui\" });\n";

const REDOC_PAGE: &str = r##"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<link rel="icon" href="/favicon.svg" type="image/svg+xml">
<title>Chat server API - ReDoc</title>
</head>
<body>
<redoc spec-url="/openapi.json"></redoc>
<script src="/redoc/redoc.standalone.js"></script>
</body>
</html>
"##;

fn page(html: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(html)
}

fn asset(bytes: &'static [u8], content_type: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "public, max-age=86400"))
        .body(bytes)
}

fn redirect(to: &'static str) -> HttpResponse {
    HttpResponse::MovedPermanently()
        .insert_header((header::LOCATION, to))
        .finish()
}

/// Mounts the documentation pages and their assets.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/swagger",
        web::get().to(|| async { redirect("/swagger/") }),
    )
    .route("/swagger/", web::get().to(|| async { page(SWAGGER_PAGE) }))
    .route(
        "/swagger/swagger-ui-bundle.js",
        web::get().to(|| async { asset(SWAGGER_BUNDLE, "application/javascript") }),
    )
    .route(
        "/swagger/init.js",
        web::get().to(|| async { asset(SWAGGER_INIT, "application/javascript") }),
    )
    .route(
        "/swagger/swagger-ui.css",
        web::get().to(|| async { asset(SWAGGER_CSS, "text/css") }),
    )
    .route("/redoc", web::get().to(|| async { redirect("/redoc/") }))
    .route("/redoc/", web::get().to(|| async { page(REDOC_PAGE) }))
    .route(
        "/redoc/redoc.standalone.js",
        web::get().to(|| async { asset(REDOC_BUNDLE, "application/javascript") }),
    );
    // Browsers ask for /favicon.ico whatever the page says: the SVG serves both.
    for path in ["/favicon.svg", "/favicon.ico"] {
        cfg.route(
            path,
            web::get().to(|| async { asset(FAVICON, "image/svg+xml") }),
        );
    }
}
