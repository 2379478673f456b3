//! An actor-based real-time chat server: REST login, one WebSocket per
//! client, messages stored first and then pushed to every session of every
//! member. `Application` builds the whole server from `Settings`; the binary
//! and the tests start it the same way.

pub mod accounts;
pub mod api;
pub mod attachments;
pub mod auth;
pub mod bus;
pub mod chat;
pub mod cli;
pub mod client_address;
pub mod config;
pub mod db;
pub mod error;
pub mod metrics;
pub mod push;
pub mod rate_limit;
pub mod state;
pub mod telemetry;

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr, AsyncContext};
use actix_cors::Cors;
use actix_web::dev::{Server, ServerHandle};
use actix_web::http::StatusCode;
use actix_web::middleware::{from_fn, DefaultHeaders, ErrorHandlers};
use actix_web::{web, HttpServer};
use paperclip::actix::OpenApiExt;
use sea_orm::DatabaseConnection;

use crate::auth::TokenKeys;
use crate::bus::redis::{BridgeParts, Deregister, RedisBridge, ServerLink};
use crate::bus::target::RedisTarget;
use crate::bus::Bus;
use crate::chat::log::HoleFiller;
use crate::chat::membership::Membership;
use crate::chat::messages::CloseAll;
use crate::chat::presence::Presence;
use crate::chat::read_marks::ReadMarks;
use crate::chat::search_index::{self, SearchIndex};
use crate::chat::server::ChatServer;
use crate::chat::writer::MessageWriter;
use crate::config::{ConfigError, SecretSource, Settings};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::state::{AppState, Shared};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Database(#[from] db::DbSetupError),
    #[error(transparent)]
    SearchIndex(#[from] search_index::OpenError),
    #[error("cannot listen on {address}: {source}{}", listen_hint(.source))]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid REDIS_URL: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Attachments(#[from] attachments::OpenError),
}

/// What to do about a port that cannot be bound.
fn listen_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another chat-server, or another program, holds it: stop that one, or choose \
             another port with PORT=…)"
        }
        std::io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges: PORT=8000)",
        _ => "",
    }
}

/// A built server, listening but not yet serving until `run_until_stopped`.
pub struct Application {
    server: Server,
    port: u16,
    db: DatabaseConnection,
    chat_server: Addr<ChatServer>,
    bridge: Option<Addr<RedisBridge>>,
    writer_task: tokio::task::JoinHandle<()>,
    read_marks_task: tokio::task::JoinHandle<()>,
    /// The Web Push sender (`push::dispatch`), and what tells it to stop.
    push_task: Option<tokio::task::JoinHandle<()>>,
    stop_push: tokio::sync::watch::Sender<bool>,
    shutdown_timeout: Duration,
    /// How long to stay up, not ready, after the shutdown signal.
    drain: Duration,
    draining: Arc<AtomicBool>,
    /// SQLite without Redis: this process alone serves the file.
    _sqlite_lock: Option<std::fs::File>,
}

impl Application {
    /// Connects and migrates the database, starts the actors and binds the listener.
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        let (secret, secret_source) = settings.secret_key_with_source()?;
        log_secret_source(&secret_source);
        let redis = RedisTarget::from_settings(&settings.redis)?;
        // A port in use is said before any database work. Only a probe: the
        // listener itself is bound once everything is ready, so a proxy's
        // connection is refused (and tried elsewhere) rather than left
        // waiting on a server that is still migrating.
        let address = settings.server.listen_address();
        drop(TcpListener::bind(&address).map_err(|source| StartError::Listen { address, source })?);
        let sqlite_lock = match (settings.database.engine(), &redis) {
            (crate::config::DbEngine::Sqlite, None) => Some(db::lock_sqlite(&settings)?),
            _ => None,
        };
        // What the configuration can still refuse comes before any actor
        // starts: an error after that would leave actors behind.
        let push = web_push(&settings)?;
        let attachments = Arc::new(attachments::Attachments::open(&settings)?);
        tracing::info!(store = %attachments.location, "attachments");
        let db = open_database(&settings).await?;
        match &redis {
            Some(target) => tracing::info!(
                redis = %target.location(),
                prefix = %settings.redis.redis_prefix,
                "sharing events and presence with other instances through Redis"
            ),
            None => tracing::info!("no Redis: a single instance"),
        }

        let metrics = Metrics::default();
        let presence = Arc::new(Presence::default());
        let membership = Arc::new(Membership::default());
        let actors = start_actors(
            &settings,
            &db,
            redis.clone(),
            &presence,
            &membership,
            &metrics,
        );
        let writers_db = db::connect_writers(&settings).await?;
        let request_writes = db::connect_request_writes(&settings, &db).await?;
        let search_index = match settings.database.engine() {
            config::DbEngine::Sqlite => {
                let index = SearchIndex::open(&settings.database.sqlite_path()).await?;
                actix_web::rt::spawn(index.clone().run());
                Some(index)
            }
            _ => None,
        };
        let (writer, writer_task) = MessageWriter::with_edit_window(
            writers_db.clone(),
            actors.chat_server.clone().recipient(),
            metrics.clone(),
            settings.limits.message_queue_capacity,
            settings.limits.edit_window(),
            search_index.as_ref().map(|index| index.committed()),
        );
        let (read_marks, read_marks_task) =
            ReadMarks::start(writers_db, actors.chat_server.clone().recipient());
        actix_web::rt::spawn(chat::revocation::run(
            db.clone(),
            actors.chat_server.clone(),
            settings.auth.revocation_full_sweep(),
        ));
        let (stop_push, push_stopped) = tokio::sync::watch::channel(false);
        let push_task = push.clone().map(|push| {
            actix_web::rt::spawn(push::dispatch::run(
                db.clone(),
                push,
                presence.clone(),
                push_stopped,
            ))
        });
        actix_web::rt::spawn(attachments::sweep::run(
            db.clone(),
            attachments.clone(),
            stop_push.subscribe(),
        ));
        let draining = Arc::new(AtomicBool::new(false));
        let state = AppState::new(
            &settings,
            TokenKeys::new(&secret, settings.auth.token_ttl()),
            Shared {
                db: db.clone(),
                request_writes,
                server: actors.chat_server.clone(),
                presence,
                membership,
                bus: actors.bus,
                writer,
                read_marks,
                metrics,
                draining: draining.clone(),
                redis,
                push,
                attachments,
                search_index,
            },
        );
        let (server, port) = http_server(&settings, web::Data::new(state))?;
        Ok(Application {
            server,
            port,
            db,
            chat_server: actors.chat_server,
            bridge: actors.bridge,
            writer_task,
            read_marks_task,
            push_task,
            stop_push,
            shutdown_timeout: Duration::from_secs(settings.server.shutdown_timeout_seconds),
            drain: Duration::from_secs(settings.server.drain_seconds),
            draining,
            _sqlite_lock: sqlite_lock,
        })
    }

    /// The port actually bound (useful with `PORT=0`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The database pool (tests inspect rows through it).
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The ChatServer actor (tests read its map sizes).
    pub fn chat_server(&self) -> Addr<ChatServer> {
        self.chat_server.clone()
    }

    /// A handle that stops the HTTP server.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until `shutdown` resolves (a signal in the binary), then shuts
    /// down gracefully: `/readyz` answers 503 and new sockets are refused
    /// while the rest is still served for `DRAIN_SECONDS` (a load balancer
    /// stops sending new clients), then close frames (1001) to every
    /// session, stop accepting, finish in-flight requests, and commit every
    /// accepted message.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        let handle = self.server.handle();
        let server = actix_web::rt::spawn(self.server);
        shutdown.await;
        self.draining.store(true, Ordering::Release);
        if !self.drain.is_zero() {
            tracing::info!(
                seconds = self.drain.as_secs(),
                "draining: not ready, still serving"
            );
            tokio::time::sleep(self.drain).await;
        }
        tracing::info!("shutting down");
        // The push sender finishes the pushes under way and gives its lease
        // up first, while the database connections are sure to be alive
        // (stopping the HTTP workers can take pooled connections with
        // them); what is stored after this is decided by the next holder.
        let _ = self.stop_push.send(true);
        if let Some(task) = self.push_task {
            if tokio::time::timeout(self.shutdown_timeout, task)
                .await
                .is_err()
            {
                tracing::error!("web push sender did not finish in time");
            }
        }
        if let Ok(closed) = self.chat_server.send(CloseAll).await {
            tracing::info!(sessions = closed, "closed sessions");
        }
        handle.stop(true).await;
        let _ = server.await;
        if let Some(bridge) = &self.bridge {
            let _ = tokio::time::timeout(self.shutdown_timeout, bridge.send(Deregister)).await;
        }
        // Every session and worker is gone, and with them the writer's
        // senders: the writer drains its queue and ends.
        if tokio::time::timeout(self.shutdown_timeout, self.writer_task)
            .await
            .is_err()
        {
            tracing::error!("message writer did not finish in time");
        }
        if tokio::time::timeout(self.shutdown_timeout, self.read_marks_task)
            .await
            .is_err()
        {
            tracing::error!("read-mark writer did not finish in time");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Web Push, when there is a VAPID key (B11).
fn web_push(settings: &Settings) -> Result<Option<Arc<push::WebPush>>, StartError> {
    let Some((key, source)) = settings.vapid_key_with_source()? else {
        tracing::info!(
            "Web Push off: set VAPID_PRIVATE_KEY (the same on every instance) to turn it on"
        );
        return Ok(None);
    };
    let push = push::WebPush::new(settings, &key)
        .map_err(|e| crate::config::ConfigError::Invalid(format!("VAPID_PRIVATE_KEY: {e}")))?;
    match source {
        SecretSource::Generated(path) => tracing::info!(
            path = %path.display(),
            "VAPID key generated and kept in this file; keep it, or browsers must subscribe again"
        ),
        SecretSource::File(path) => {
            tracing::info!(path = %path.display(), "VAPID key read from its file")
        }
        SecretSource::Environment => tracing::info!("VAPID key from VAPID_PRIVATE_KEY"),
    }
    Ok(Some(Arc::new(push)))
}

/// Says where the token signing key came from.
fn log_secret_source(source: &SecretSource) {
    match source {
        SecretSource::Environment => tracing::info!("token key from SECRET_KEY"),
        SecretSource::File(path) => {
            tracing::info!(path = %path.display(), "token key read from its file")
        }
        SecretSource::Generated(path) => tracing::info!(
            path = %path.display(),
            "token key generated and kept in this file (mode 0600); keep it to keep logins valid"
        ),
    }
}

/// Connects to the database and applies the migrations it lacks.
async fn open_database(settings: &Settings) -> Result<DatabaseConnection, StartError> {
    let db = db::connect(settings).await?;
    let applied = db::migrate(&db, &settings.database.url()).await?;
    tracing::info!(
        database = %settings.database.location(),
        migrations_applied = applied,
        "database ready"
    );
    Ok(db)
}

/// The ChatServer and, with Redis, the bridge, and the bus between them.
struct Actors {
    chat_server: Addr<ChatServer>,
    bridge: Option<Addr<RedisBridge>>,
    bus: Bus,
}

/// Starts the ChatServer and the Redis bridge together: the server's
/// address exists before it starts, so each gets the other's recipients at
/// once and neither names the other's actor type.
fn start_actors(
    settings: &Settings,
    db: &DatabaseConnection,
    redis: Option<RedisTarget>,
    presence: &Arc<Presence>,
    membership: &Arc<Membership>,
    metrics: &Metrics,
) -> Actors {
    let mut bridge = None;
    let mut bus = Bus::Local;
    let chat_server = ChatServer::create(|ctx| {
        if let Some(target) = redis {
            let server = ServerLink {
                deliver: ctx.address().recipient(),
                revoke: ctx.address().recipient(),
                to_user: ctx.address().recipient(),
                reads: ctx.address().recipient(),
                blocked: ctx.address().recipient(),
                presence: ctx.address().recipient(),
                membership: ctx.address().recipient(),
                replace_chats: ctx.address().recipient(),
                local_users: ctx.address().recipient(),
            };
            let parts = BridgeParts {
                prefix: settings.redis.redis_prefix.clone(),
                presence: presence.clone(),
                membership: membership.clone(),
                db: db.clone(),
                metrics: metrics.clone(),
            };
            let started = RedisBridge::new(target, parts, server).start();
            bus = Bus::Redis {
                publish: started.clone().recipient(),
                barrier: started.clone().recipient(),
            };
            bridge = Some(started);
        }
        ChatServer::new(
            presence.clone(),
            membership.clone(),
            bus.clone(),
            HoleFiller::start(db.clone(), ctx.address().recipient()),
            settings.limits.max_sessions_per_user,
            metrics.clone(),
        )
    });
    Actors {
        chat_server,
        bridge,
        bus,
    }
}

/// The HTTP server on `settings`' address: REST, `/chat`, the docs and
/// the web client, with the middleware every answer goes through. Returns
/// it running (actix serves once awaited) and the port it bound.
fn http_server(
    settings: &Settings,
    state: web::Data<AppState>,
) -> Result<(Server, u16), StartError> {
    let address = settings.server.listen_address();
    let listen_error = |source| StartError::Listen {
        address: address.clone(),
        source,
    };
    let listener = TcpListener::bind(&address).map_err(listen_error)?;
    let port = listener.local_addr().map_err(listen_error)?.port();
    let cors_origins = settings.server.cors_origins();
    let mut server = HttpServer::new(move || {
        let mut spec = serde_json::Value::Null;
        actix_web::App::new()
            .app_data(state.clone())
            .app_data(json_config())
            .app_data(query_config())
            .app_data(path_config())
            .app_data(web::PayloadConfig::new(api::body::MAX_BODY_BYTES))
            .wrap(ErrorHandlers::new().handler(StatusCode::METHOD_NOT_ALLOWED, api::json_405))
            .wrap(from_fn(api::refuse_nul_in_query))
            .wrap(from_fn(api::count_refusals))
            .wrap(from_fn(api::check_host))
            .wrap(cors(cors_origins.as_deref()))
            // Outside the Host check and CORS, so what they answer on
            // their own (a wrong Host's 400, a preflight) carries the
            // headers too.
            .wrap(security_headers())
            .wrap(from_fn(telemetry::request_spans))
            .wrap_api_with_spec(api::spec())
            .configure(api::routes)
            .with_raw_json_spec(|app, generated| {
                spec = generated;
                app
            })
            .build()
            .configure(spec_routes(spec))
            .route("/chat", web::get().to(chat::connect))
            .route("/chat/", web::get().to(chat::connect))
            .route("/metrics", web::get().to(api::health::metrics))
            .configure(api::docs::routes)
            .configure(api::client::routes)
            .default_service(web::to(api::not_found))
    })
    .listen(listener)
    .map_err(listen_error)?
    .disable_signals()
    .shutdown_timeout(settings.server.shutdown_timeout_seconds)
    // A client must send its request headers within this time (slowloris).
    .client_request_timeout(Duration::from_secs(5))
    // Each frame goes out when it is written: with Nagle's algorithm a
    // frame written while the client had not yet acknowledged the previous
    // one waited for that ACK, which a client that answers what it receives
    // (read marks) delays by up to 40 ms (BENCHMARKS.md "TCP_NODELAY on the
    // clients' connections").
    .tcp_nodelay(true)
    .max_connections(100_000)
    .backlog(4096);
    if settings.server.workers > 0 {
        server = server.workers(settings.server.workers);
    }
    tracing::info!(%address, port, "listening (stop with Ctrl-C or SIGTERM)");
    Ok((server.run(), port))
}

/// `GET /swagger.json` (Swagger 2.0) and `GET /openapi.json` (OpenAPI 3.0,
/// which the docs pages read): the generated spec with what paperclip
/// cannot express added.
fn spec_routes(mut swagger2: serde_json::Value) -> impl FnOnce(&mut web::ServiceConfig) {
    api::refine_spec(&mut swagger2);
    let openapi3 =
        api::openapi3(&swagger2).expect("paperclip reads back the spec it generated itself");
    move |config| {
        config
            .route("/swagger.json", web::get().to(json_document(&swagger2)))
            .route("/openapi.json", web::get().to(json_document(&openapi3)));
    }
}

fn json_document(
    document: &serde_json::Value,
) -> impl Fn() -> std::future::Ready<actix_web::HttpResponse> + Clone {
    let body = web::Bytes::from(serde_json::to_vec(document).expect("a JSON value serializes"));
    move || {
        std::future::ready(
            actix_web::HttpResponse::Ok()
                .content_type("application/json")
                .body(body.clone()),
        )
    }
}

/// Headers on every response: no MIME sniffing, no framing, no referrer,
/// and a Content-Security-Policy that allows scripts from this origin only
/// (no inline script). Inline styles stay allowed: Swagger UI and ReDoc set them.
fn security_headers() -> DefaultHeaders {
    DefaultHeaders::new()
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("X-Frame-Options", "DENY"))
        .add(("Referrer-Policy", "no-referrer"))
        .add((
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; font-src 'self' data:; connect-src 'self'; \
             worker-src 'self' blob:; object-src 'none'; base-uri 'none'; \
             form-action 'self'; frame-ancestors 'none'",
        ))
}

fn cors(origins: Option<&[String]>) -> Cors {
    let cors = Cors::default()
        .allow_any_method()
        .allow_any_header()
        .expose_any_header()
        .max_age(3600);
    match origins {
        None => cors.allow_any_origin(),
        Some(list) => list.iter().fold(cors, |c, o| c.allowed_origin(o)),
    }
}

fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(api::body::MAX_BODY_BYTES)
        .error_handler(|e, _| ApiError::BadRequest(format!("JSON parse error - {e}")).into())
}

fn query_config() -> web::QueryConfig {
    web::QueryConfig::default()
        .error_handler(|e, _| ApiError::BadRequest(format!("invalid query string: {e}")).into())
}

fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|_, _| ApiError::NotFound.into())
}
