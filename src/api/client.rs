//! The web client (`static/app/`, docs/WEBCLIENT.md): `/` and its files, embedded
//! in the binary so that one command gives a working chat with nothing else
//! installed and no request leaves for another host. Plain ES modules, no
//! build step; the pages get the strict Content-Security-Policy every
//! response carries (`lib.rs`).

use actix_web::http::header;
use actix_web::{web, HttpResponse};

/// Every file of the client: (path under `/app/`, content type, bytes).
const FILES: &[(&str, &str, &[u8])] = &[
    ("main.js", JS, include_bytes!("../../static/app/main.js")),
    ("chat.js", JS, include_bytes!("../../static/app/chat.js")),
    ("api.js", JS, include_bytes!("../../static/app/api.js")),
    ("files.js", JS, include_bytes!("../../static/app/files.js")),
    ("memo.js", JS, include_bytes!("../../static/app/memo.js")),
    ("icons.js", JS, include_bytes!("../../static/app/icons.js")),
    (
        "search.js",
        JS,
        include_bytes!("../../static/app/search.js"),
    ),
    (
        "notify.js",
        JS,
        include_bytes!("../../static/app/notify.js"),
    ),
    (
        "unread.svg",
        "image/svg+xml",
        include_bytes!("../../static/app/unread.svg"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../static/app/style.css"),
    ),
    (
        "vendor/preact.module.js",
        JS,
        include_bytes!("../../static/app/vendor/preact.module.js"),
    ),
    (
        "vendor/hooks.module.js",
        JS,
        include_bytes!("../../static/app/vendor/hooks.module.js"),
    ),
    (
        "vendor/htm.module.js",
        JS,
        include_bytes!("../../static/app/vendor/htm.module.js"),
    ),
];

const JS: &str = "text/javascript; charset=utf-8";
const INDEX: &[u8] = include_bytes!("../../static/app/index.html");
/// The service worker: served at the root, so its scope is the whole site.
const SERVICE_WORKER: &[u8] = include_bytes!("../../static/app/sw.js");

/// Files change with every release and are small: browsers revalidate
/// each time (the ETag-less 200 costs less than a stale client).
fn file(bytes: &'static [u8], content_type: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(bytes)
}

/// Mounts `/` and `/app/…`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/",
        web::get().to(|| async { file(INDEX, "text/html; charset=utf-8") }),
    );
    cfg.route(
        "/sw.js",
        web::get().to(|| async { file(SERVICE_WORKER, JS) }),
    );
    for (path, content_type, bytes) in FILES {
        cfg.route(
            &format!("/app/{path}"),
            web::get().to(move || async move { file(bytes, content_type) }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every module the client imports is served: a file added to
    /// `static/app/` and imported but not listed here would be a 404.
    #[test]
    fn every_import_is_served() {
        for (_, _, bytes) in FILES {
            let text = std::str::from_utf8(bytes).expect("client files are UTF-8");
            for import in text
                .split("from")
                .skip(1)
                .filter_map(|rest| rest.trim_start().strip_prefix('"'))
                .filter_map(|rest| rest.split('"').next())
                .filter(|path| path.starts_with("./"))
            {
                let name = import.trim_start_matches("./");
                let served = FILES
                    .iter()
                    .any(|(path, _, _)| *path == name || path.ends_with(&format!("/{name}")));
                assert!(served, "{import} is imported but not served");
            }
        }
    }
}
