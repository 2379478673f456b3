//! `Settings`: every knob of the server, read from the environment and `.env`.
//!
//! Names follow the old Django backend's `.env` (`DB_ENGINE=psql`, `DB_NAME`,
//! `REDIS_HOST`, `SECRET_KEY`, …) so an existing deployment file keeps working.
//! Every variable has a default that runs on one machine with nothing else
//! installed: SQLite in the working directory, no Redis.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

/// Why the configuration could not be used; printed as one line at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A variable holds a value that cannot be used.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// `.env` exists but cannot be read.
    #[error("cannot read .env: {0}")]
    DotEnv(#[from] dotenvy::Error),
    /// The generated `SECRET_KEY` file cannot be read or written.
    #[error("secret key file {path}: {source}")]
    SecretFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the token signing key came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// `SECRET_KEY`.
    Environment,
    /// The key file next to the SQLite database.
    File(PathBuf),
    /// Generated now, and written to this file.
    Generated(PathBuf),
}

/// Which relational database to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbEngine {
    Sqlite,
    Postgres,
    MySql,
}

impl std::fmt::Display for DbEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DbEngine::Sqlite => "SQLite",
            DbEngine::Postgres => "PostgreSQL",
            DbEngine::MySql => "MySQL",
        })
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The whole configuration of one server instance, in groups. Each group
/// reads the same environment (a variable belongs to exactly one group);
/// its `Default` holds the defaults.
#[derive(Clone, Debug)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub auth: AuthSettings,
    pub limits: LimitSettings,
}

/// Where and how the HTTP server runs.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// Space-separated Host header allow-list; `*` allows any.
    pub allowed_hosts: String,
    /// Space-separated CORS origins; `*` allows any.
    pub cors_allowed_origins: String,
    /// Proxies whose `X-Forwarded-For` names the client (addresses or CIDR
    /// ranges); from anyone else the header is ignored.
    pub trusted_proxies: String,
    /// How many leading bits of an IPv6 client address the per-address
    /// limits count as one client (64: one subscriber's allocation, which
    /// a client can rotate through freely).
    pub ipv6_limit_prefix: u8,
    #[serde(deserialize_with = "debug_flag")]
    pub debug: bool,
    #[serde(deserialize_with = "log_format")]
    pub log_format: LogFormat,
    /// After SIGTERM, how long to keep serving while `/readyz` answers 503
    /// (so a load balancer stops sending new clients) before sessions are
    /// closed with 1001 and the listener stops; 0 behind no load balancer.
    pub drain_seconds: u64,
    /// How long a graceful shutdown may take before the process exits anyway.
    pub shutdown_timeout_seconds: u64,
    /// How long a new WebSocket has to authorize before it is closed (A2.2).
    pub authorization_timeout_seconds: u64,
    /// How often the server pings each WebSocket (B5).
    pub heartbeat_seconds: u64,
    /// Silence after which a WebSocket is dropped with 1001 (B5); checked at
    /// each ping, so a client is dropped within one heartbeat after it.
    pub client_timeout_seconds: u64,
    /// How long a request body may take to arrive once its head has: a
    /// client that announces a body and never sends it is answered 408 and
    /// its connection closed, instead of holding it forever.
    pub body_read_timeout_seconds: u64,
    /// When set, `/metrics` requires `Authorization: Bearer <METRICS_TOKEN>`.
    #[serde(deserialize_with = "non_empty_secret")]
    pub metrics_token: Option<SecretString>,
    /// The old backend's static-file bucket; accepted and ignored.
    #[serde(deserialize_with = "non_empty")]
    pub gs_bucket_name: Option<String>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            host: "127.0.0.1".into(),
            port: 8000,
            workers: 0,
            allowed_hosts: "*".into(),
            cors_allowed_origins: "*".into(),
            trusted_proxies: String::new(),
            ipv6_limit_prefix: 64,
            debug: false,
            log_format: LogFormat::Pretty,
            drain_seconds: 0,
            shutdown_timeout_seconds: 10,
            body_read_timeout_seconds: 10,
            authorization_timeout_seconds: 5,
            heartbeat_seconds: 10,
            client_timeout_seconds: 30,
            metrics_token: None,
            gs_bucket_name: None,
        }
    }
}

/// Which database, where.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct DatabaseSettings {
    /// Full sea-orm URL; wins over the `DB_*` set.
    #[serde(deserialize_with = "non_empty")]
    pub database_url: Option<String>,
    #[serde(deserialize_with = "engine")]
    pub db_engine: DbEngine,
    #[serde(deserialize_with = "non_empty")]
    pub db_name: Option<String>,
    pub db_host: String,
    pub db_port: Option<u16>,
    /// Defaults per engine: `postgres` for PostgreSQL, `root` for MySQL.
    #[serde(deserialize_with = "non_empty")]
    pub db_user: Option<String>,
    #[serde(deserialize_with = "secret")]
    pub db_password: SecretString,
    /// Largest number of pooled database connections.
    pub db_pool_size: u32,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            database_url: None,
            db_engine: DbEngine::Sqlite,
            db_name: None,
            db_host: "127.0.0.1".into(),
            db_port: None,
            db_user: None,
            db_password: SecretString::from("development"),
            db_pool_size: 16,
        }
    }
}

/// The Redis (or Redis Cluster) that instances share; none for one instance.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct RedisSettings {
    #[serde(deserialize_with = "non_empty")]
    pub redis_url: Option<String>,
    #[serde(deserialize_with = "non_empty")]
    pub redis_host: Option<String>,
    pub redis_port: u16,
    /// Space-separated node URLs of a Redis Cluster (sharded pub/sub);
    /// instead of `REDIS_URL`/`REDIS_HOST`.
    #[serde(deserialize_with = "non_empty")]
    pub redis_cluster_urls: Option<String>,
    /// Prefix of every Redis key and channel, so deployments can share a Redis.
    pub redis_prefix: String,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            redis_url: None,
            redis_host: None,
            redis_port: 6379,
            redis_cluster_urls: None,
            redis_prefix: "chat".into(),
        }
    }
}

/// Accounts and tokens: who may sign up and log in, how often, for how long.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct AuthSettings {
    /// Signs tokens; generated once and kept next to the SQLite file when unset.
    #[serde(deserialize_with = "non_empty_secret")]
    pub secret_key: Option<SecretString>,
    pub token_ttl_seconds: u64,
    #[serde(deserialize_with = "registration_flag")]
    pub registration_open: bool,
    /// Failed logins allowed per username, and per client address, in a window.
    pub login_max_attempts: u32,
    /// The login attempt window, in seconds.
    pub login_window_seconds: u64,
    /// Registrations one client address may make at once (token bucket size).
    pub registration_burst: u32,
    /// Registrations per minute one client address may make, sustained.
    pub registration_per_minute: u32,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            secret_key: None,
            token_ttl_seconds: 604_800,
            registration_open: true,
            login_max_attempts: 10,
            login_window_seconds: 300,
            registration_burst: 10,
            registration_per_minute: 10,
        }
    }
}

/// How much any one client, session or queue may take.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct LimitSettings {
    /// Largest WebSocket message (continuations aggregated), in bytes.
    pub max_frame_bytes: usize,
    /// Longest message content, in characters after trimming.
    pub max_message_chars: usize,
    /// Requests a session may make per second, sustained (token bucket rate).
    pub rate_limit_per_second: u32,
    /// Requests a session may make in one burst (token bucket size).
    pub rate_limit_burst: u32,
    /// Most members of a group conversation (B6).
    pub max_group_members: usize,
    /// Group changes (create, add, remove others, rename) one user may make
    /// per minute, in bursts of as many: each pushes a frame to every member.
    pub group_changes_per_minute: u32,
    /// Changes one group may take per minute (adding and renaming), from
    /// all its members together.
    pub group_changes_per_minute_per_group: u32,
    /// Deliveries one user's messages may cause per second and instance (a
    /// message to a group of N costs N - 1; bursts of twice as many).
    pub fanout_per_second: u32,
    /// Most groups one user may be in, created or joined (C9).
    pub max_groups_per_user: usize,
    /// Most pending invitations one user may hold; more are not recorded.
    pub max_pending_invitations: usize,
    /// Most live WebSocket sessions one user may hold on one instance.
    pub max_sessions_per_user: usize,
    /// Frames queued for a client that is not reading before it is dropped.
    pub outbox_capacity: usize,
    /// Messages waiting for the group-commit writer before senders are told
    /// the server is busy (and resend).
    pub message_queue_capacity: usize,
    /// WebSockets one client address may hold open before authorizing.
    pub max_unauthenticated_per_address: usize,
    /// WebSockets one client address may hold open in all.
    pub max_sockets_per_address: usize,
    /// How long after sending it a message may still be edited (B8), in seconds.
    pub edit_window_seconds: u64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_frame_bytes: 64 * 1024,
            max_message_chars: 4_000,
            rate_limit_per_second: 200,
            rate_limit_burst: 400,
            max_group_members: 1_000,
            group_changes_per_minute: 30,
            group_changes_per_minute_per_group: 12,
            fanout_per_second: 20_000,
            max_groups_per_user: 500,
            max_pending_invitations: 100,
            max_sessions_per_user: 32,
            outbox_capacity: 1_024,
            message_queue_capacity: 16 * 1024,
            max_unauthenticated_per_address: 100,
            max_sockets_per_address: 1_000,
            edit_window_seconds: 2 * 24 * 3600,
        }
    }
}

/// Longest edit window accepted: beyond it the duration would not fit.
const MAX_EDIT_WINDOW_SECONDS: u64 = 100 * 365 * 24 * 3600;

impl LimitSettings {
    /// `EDIT_WINDOW_SECONDS` as a duration.
    pub fn edit_window(&self) -> chrono::Duration {
        chrono::Duration::seconds(self.edit_window_seconds.min(MAX_EDIT_WINDOW_SECONDS) as i64)
    }
}

/// Shortest `SECRET_KEY` accepted: HS256 wants a key as long as its hash.
pub const MIN_SECRET_KEY_BYTES: usize = 32;

/// Whether a `SECRET_KEY` is one of the placeholders example files carry
/// ("change-me-…" and the like), or one character repeated: a deployment
/// that forgot to replace it would sign tokens with a published key.
fn is_placeholder_key(key: &str) -> bool {
    let folded: String = key
        .to_lowercase()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let placeholder = [
        "changeme",
        "replaceme",
        "yoursecret",
        "secretkeyhere",
        "example",
    ]
    .iter()
    .any(|word| folded.contains(word));
    let mut distinct: Vec<char> = key.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    placeholder || distinct.len() <= 2
}

fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = Option::<String>::deserialize(d)?;
    Ok(value.filter(|v| !v.trim().is_empty()))
}

/// A secret: kept in a type whose `Debug` never prints it.
fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    String::deserialize(d).map(SecretString::from)
}

fn non_empty_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    Ok(non_empty(d)?.map(SecretString::from))
}

fn parse_flag<E: serde::de::Error>(variable: &str, raw: &str) -> Result<bool, E> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "" | "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(E::custom(format!(
            "{variable}='{raw}' is not a flag (use 1/0, true/false, yes/no, on/off)"
        ))),
    }
}

fn debug_flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    parse_flag("DEBUG", &String::deserialize(d)?)
}

fn registration_flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    parse_flag("REGISTRATION_OPEN", &String::deserialize(d)?)
}

fn engine<'de, D: Deserializer<'de>>(d: D) -> Result<DbEngine, D::Error> {
    let raw = String::deserialize(d)?;
    match raw.trim().to_ascii_lowercase().as_str() {
        "" | "sqlite" | "sqlite3" => Ok(DbEngine::Sqlite),
        "psql" | "postgres" | "postgresql" => Ok(DbEngine::Postgres),
        "mysql" | "mariadb" => Ok(DbEngine::MySql),
        _ => Err(serde::de::Error::custom(format!(
            "DB_ENGINE='{raw}' is not a database engine (use sqlite, psql or mysql)"
        ))),
    }
}

fn log_format<'de, D: Deserializer<'de>>(d: D) -> Result<LogFormat, D::Error> {
    let raw = String::deserialize(d)?;
    match raw.trim().to_ascii_lowercase().as_str() {
        "" | "pretty" | "text" => Ok(LogFormat::Pretty),
        "json" => Ok(LogFormat::Json),
        _ => Err(serde::de::Error::custom(format!(
            "LOG_FORMAT='{raw}' is not a log format (use pretty or json)"
        ))),
    }
}

/// One group read from the variables (envy names the variable in number
/// errors, "… provided by PORT", and our own parsers name theirs).
fn read_group<T: serde::de::DeserializeOwned>(vars: &[(String, String)]) -> Result<T, ConfigError> {
    envy::from_iter(vars.iter().cloned()).map_err(|e| ConfigError::Invalid(explain(&e.to_string())))
}

impl Settings {
    /// Reads `.env` (when present; real environment variables win) and then
    /// the environment.
    pub fn load() -> Result<Self, ConfigError> {
        match dotenvy::dotenv() {
            Ok(_) => {}
            Err(e) if e.not_found() => {}
            Err(e) => return Err(e.into()),
        }
        Self::from_vars(std::env::vars())
    }

    /// Builds settings from explicit `(NAME, value)` pairs: the testable core of `load`.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let known: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(k, _)| is_known_variable(k))
            .collect();
        let settings = Settings {
            server: read_group(&known)?,
            database: read_group(&known)?,
            redis: read_group(&known)?,
            auth: read_group(&known)?,
            limits: read_group(&known)?,
        };
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |what: &str| Err(ConfigError::Invalid(what.to_string()));
        let (database, redis, limits) = (&self.database, &self.redis, &self.limits);
        if database.database_url.is_none()
            && database.db_engine != DbEngine::Sqlite
            && database.db_name.is_none()
        {
            return invalid(
                "DB_NAME must be set with DB_ENGINE=psql or mysql: the database to create the chat \
                 tables in (DB_NAME=postgres to really use the server's own database)",
            );
        }
        if limits.max_frame_bytes < 1024 {
            return invalid("MAX_FRAME_BYTES must be at least 1024");
        }
        if limits.max_message_chars == 0 {
            return invalid("MAX_MESSAGE_CHARS must be at least 1");
        }
        if limits.rate_limit_per_second == 0 || limits.rate_limit_burst == 0 {
            return invalid("RATE_LIMIT_PER_SECOND and RATE_LIMIT_BURST must be at least 1");
        }
        if limits.outbox_capacity < 8 {
            return invalid("OUTBOX_CAPACITY must be at least 8");
        }
        if limits.max_group_members < 2 {
            return invalid("MAX_GROUP_MEMBERS must be at least 2");
        }
        if limits.max_sessions_per_user == 0 {
            return invalid("MAX_SESSIONS_PER_USER must be at least 1");
        }
        if redis.redis_prefix.is_empty()
            || redis
                .redis_prefix
                .contains(|c: char| c.is_whitespace() || c == '{' || c == '}')
        {
            return invalid("REDIS_PREFIX must be a non-empty word without braces");
        }
        if redis.redis_cluster_urls.is_some() && redis.url().is_some() {
            return invalid("set REDIS_CLUSTER_URLS or REDIS_URL/REDIS_HOST, not both");
        }
        for node in redis.cluster_nodes() {
            if redis::IntoConnectionInfo::into_connection_info(node).is_err() {
                return Err(ConfigError::Invalid(format!(
                    "REDIS_CLUSTER_URLS: {node:?} is not a Redis URL (redis://host:port)"
                )));
            }
        }
        if database.db_pool_size == 0 {
            return invalid("DB_POOL_SIZE must be at least 1");
        }
        if self.server.body_read_timeout_seconds == 0 {
            return invalid("BODY_READ_TIMEOUT_SECONDS must be at least 1");
        }
        let server = &self.server;
        if server.authorization_timeout_seconds == 0 || server.heartbeat_seconds == 0 {
            return invalid(
                "AUTHORIZATION_TIMEOUT_SECONDS and HEARTBEAT_SECONDS must be at least 1",
            );
        }
        if server.heartbeat_seconds > 3600 || server.authorization_timeout_seconds > 3600 {
            return invalid(
                "AUTHORIZATION_TIMEOUT_SECONDS and HEARTBEAT_SECONDS must be at most 3600",
            );
        }
        if server.client_timeout_seconds <= server.heartbeat_seconds
            || server.client_timeout_seconds > 24 * 3600
        {
            return invalid(
                "CLIENT_TIMEOUT_SECONDS must be longer than HEARTBEAT_SECONDS (a client answers \
                 pings) and at most 86400",
            );
        }
        if self.auth.token_ttl_seconds == 0 {
            return invalid("TOKEN_TTL_SECONDS must be at least 1");
        }
        if let Some(key) = &self.auth.secret_key {
            let key = key.expose_secret();
            if is_placeholder_key(key) {
                return invalid(
                    "SECRET_KEY is a placeholder from an example file: anyone who reads it \
                     can sign tokens; generate one with `openssl rand -hex 32`",
                );
            }
            if key.len() < MIN_SECRET_KEY_BYTES {
                return Err(ConfigError::Invalid(format!(
                    "SECRET_KEY must be at least {MIN_SECRET_KEY_BYTES} bytes (it is {}); \
                     generate one with `openssl rand -hex 32`",
                    key.len()
                )));
            }
        }
        if !(16..=128).contains(&self.server.ipv6_limit_prefix) {
            return invalid("IPV6_LIMIT_PREFIX must be between 16 and 128");
        }
        if let Err(e) = crate::client_address::TrustedProxies::parse(&self.server.trusted_proxies) {
            return Err(ConfigError::Invalid(format!("TRUSTED_PROXIES: {e}")));
        }
        if limits.message_queue_capacity == 0 {
            return invalid("MESSAGE_QUEUE_CAPACITY must be at least 1");
        }
        if limits.max_unauthenticated_per_address == 0 {
            return invalid("MAX_UNAUTHENTICATED_PER_ADDRESS must be at least 1");
        }
        if limits.fanout_per_second == 0 {
            return invalid("FANOUT_PER_SECOND must be at least 1");
        }
        if limits.edit_window_seconds > MAX_EDIT_WINDOW_SECONDS {
            return invalid("EDIT_WINDOW_SECONDS must be at most 3153600000 (100 years)");
        }
        if limits.max_sockets_per_address == 0 {
            return invalid("MAX_SOCKETS_PER_ADDRESS must be at least 1");
        }
        if let Some(url) = &database.database_url {
            if !["sqlite:", "postgres:", "postgresql:", "mysql:", "mariadb:"]
                .iter()
                .any(|p| url.starts_with(p))
            {
                return invalid("DATABASE_URL must start with sqlite:, postgres: or mysql:");
            }
        }
        Ok(())
    }

    /// `SECRET_KEY`, or (SQLite only) the one generated on first start and
    /// kept in a file next to the database.
    pub fn resolve_secret_key(&self) -> Result<String, ConfigError> {
        Ok(self.secret_key_with_source()?.0)
    }

    /// `resolve_secret_key`, and where the key came from (for the start-up log).
    pub fn secret_key_with_source(&self) -> Result<(String, SecretSource), ConfigError> {
        if let Some(key) = &self.auth.secret_key {
            return Ok((key.expose_secret().to_string(), SecretSource::Environment));
        }
        if self.database.engine() != DbEngine::Sqlite {
            return Err(ConfigError::Invalid(
                "SECRET_KEY must be set when the database is PostgreSQL or MySQL: every \
                 instance must sign tokens with the same key (generate one with \
                 `openssl rand -hex 32`)"
                    .into(),
            ));
        }
        let db = self.database.sqlite_path();
        let name = db.file_name().map(|n| n.to_string_lossy().into_owned());
        let path = db.with_file_name(format!("{}.secret", name.unwrap_or_else(|| "chat".into())));
        let (key, created) = load_or_create_secret(&path)?;
        let source = if created {
            SecretSource::Generated(path)
        } else {
            SecretSource::File(path)
        };
        Ok((key, source))
    }
}

impl DatabaseSettings {
    /// The engine actually in use (`DATABASE_URL`'s scheme wins over `DB_ENGINE`).
    pub fn engine(&self) -> DbEngine {
        match &self.database_url {
            Some(url) if url.starts_with("sqlite:") => DbEngine::Sqlite,
            Some(url) if url.starts_with("mysql:") || url.starts_with("mariadb:") => {
                DbEngine::MySql
            }
            Some(_) => DbEngine::Postgres,
            None => self.db_engine,
        }
    }

    /// The sea-orm connection URL.
    pub fn url(&self) -> String {
        if let Some(url) = &self.database_url {
            return url.replacen("mariadb:", "mysql:", 1);
        }
        match self.db_engine {
            DbEngine::Sqlite => format!("sqlite://{}?mode=rwc", self.sqlite_path().display()),
            DbEngine::Postgres => self.server_url("postgres", 5432, "postgres"),
            DbEngine::MySql => self.server_url("mysql", 3306, "root"),
        }
    }

    /// A server database's URL from the `DB_*` set (`check` made sure
    /// `DB_NAME` is there).
    fn server_url(&self, scheme: &str, port: u16, default_user: &str) -> String {
        format!(
            "{scheme}://{}:{}@{}:{}/{}",
            percent_encode(self.db_user.as_deref().unwrap_or(default_user)),
            percent_encode(self.db_password.expose_secret()),
            self.db_host,
            self.db_port.unwrap_or(port),
            percent_encode(self.db_name.as_deref().unwrap_or_default()),
        )
    }

    /// Where the database is, for a log line: the SQLite file, or the
    /// server's engine, host, port and database (never the password).
    pub fn location(&self) -> String {
        let url = self.url();
        match self.engine() {
            DbEngine::Sqlite => format!("sqlite {}", self.sqlite_path().display()),
            engine => {
                let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
                let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
                let rest = rest.split('?').next().unwrap_or(rest);
                let name = if engine == DbEngine::Postgres {
                    "postgresql"
                } else {
                    "mysql"
                };
                format!("{name} {rest}")
            }
        }
    }

    /// The SQLite file (only meaningful when the engine is SQLite).
    pub fn sqlite_path(&self) -> PathBuf {
        if let Some(url) = &self.database_url {
            let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
            return PathBuf::from(rest.split('?').next().unwrap_or(rest));
        }
        PathBuf::from(self.db_name.as_deref().unwrap_or("chat.db"))
    }
}

impl RedisSettings {
    /// The Redis URL, from `REDIS_URL` or the old `REDIS_HOST`/`REDIS_PORT`.
    pub fn url(&self) -> Option<String> {
        self.redis_url.clone().or_else(|| {
            self.redis_host
                .as_ref()
                .map(|host| format!("redis://{host}:{}/", self.redis_port))
        })
    }

    /// The Redis Cluster's node URLs, from `REDIS_CLUSTER_URLS` (none when unset).
    pub fn cluster_nodes(&self) -> Vec<&str> {
        self.redis_cluster_urls
            .as_deref()
            .map(|urls| urls.split_whitespace().collect())
            .unwrap_or_default()
    }
}

impl AuthSettings {
    /// The token lifetime.
    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl_seconds)
    }
}

impl ServerSettings {
    /// The address to listen on.
    pub fn listen_address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The allowed Host headers, or `None` when any host is allowed.
    pub fn allowed_hosts(&self) -> Option<Vec<String>> {
        list_or_any(&self.allowed_hosts)
    }

    /// The proxies whose `X-Forwarded-For` is believed (validated by `check`).
    pub fn trusted_proxies(&self) -> crate::client_address::TrustedProxies {
        crate::client_address::TrustedProxies::parse(&self.trusted_proxies)
            .unwrap_or_default()
            .with_ipv6_limit_prefix(self.ipv6_limit_prefix)
    }

    /// The allowed CORS origins, or `None` when any origin is allowed.
    pub fn cors_origins(&self) -> Option<Vec<String>> {
        list_or_any(&self.cors_allowed_origins)
    }
}

fn list_or_any(raw: &str) -> Option<Vec<String>> {
    let items: Vec<String> = raw
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if items.is_empty() || items.iter().any(|s| s == "*") {
        None
    } else {
        Some(items)
    }
}

fn load_or_create_secret(path: &Path) -> Result<(String, bool), ConfigError> {
    let io = |source| ConfigError::SecretFile {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(key) if !key.trim().is_empty() => {
            warn_if_readable_by_others(path);
            let key = key.trim().to_string();
            if key.len() < MIN_SECRET_KEY_BYTES {
                return Err(ConfigError::Invalid(format!(
                    "the secret key in {} is shorter than {MIN_SECRET_KEY_BYTES} bytes; \
                     delete the file to generate a new one (this logs everyone out)",
                    path.display()
                )));
            }
            return Ok((key, false));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            use std::io::Write;
            file.write_all(key.as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
            Ok((key, true))
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read_to_string(path)
            .map(|k| (k.trim().to_string(), false))
            .map_err(io),
        Err(e) => Err(io(e)),
    }
}

/// envy's number errors in words: "invalid digit found in string while
/// parsing value 'abc' provided by PORT" becomes "PORT must be a number from
/// 0 to 65535 (0: any free port), not 'abc'". Other messages pass unchanged.
fn explain(envy_error: &str) -> String {
    let Some((head, variable)) = envy_error.rsplit_once(" provided by ") else {
        return envy_error.to_string();
    };
    let value = head
        .split_once("value '")
        .and_then(|(_, rest)| rest.rsplit_once('\''))
        .map_or("", |(value, _)| value);
    let expected = match variable {
        "PORT" => "a number from 0 to 65535 (0: any free port)",
        "DB_PORT" | "REDIS_PORT" => "a number from 1 to 65535",
        _ => "a whole number, 0 or more",
    };
    format!("{variable} must be {expected}, not '{value}'")
}

/// Warns when a file holding a secret can be read by other users.
fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{:o}", mode & 0o777),
                    "the secret key file is readable by other users; run chmod 600 on it"
                );
            }
        }
    }
}

fn percent_encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Whether the server reads the environment variable `name` (any case).
pub fn is_known_variable(name: &str) -> bool {
    known_variables().contains(&name.to_ascii_lowercase().as_str())
}

/// The environment variables this server reads, derived from the settings
/// groups themselves: envy sees only these, so an unrelated variable can never fail
/// start-up, and a new field needs no list kept by hand.
fn known_variables() -> &'static [&'static str] {
    static FIELDS: std::sync::OnceLock<&'static [&'static str]> = std::sync::OnceLock::new();
    FIELDS.get_or_init(|| {
        fn fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
            let mut names = FieldNames(None);
            let _ = T::deserialize(&mut names);
            names
                .0
                .expect("serde's derive hands a struct's field names to deserialize_struct")
        }
        let all: Vec<&'static str> = [
            fields::<ServerSettings>(),
            fields::<DatabaseSettings>(),
            fields::<RedisSettings>(),
            fields::<AuthSettings>(),
            fields::<LimitSettings>(),
        ]
        .concat();
        Vec::leak(all)
    })
}

/// A deserializer that only records the field names serde's derive passes
/// to `deserialize_struct`, then stops.
struct FieldNames(Option<&'static [&'static str]>);

impl<'de> Deserializer<'de> for &mut FieldNames {
    type Error = serde::de::value::Error;

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0 = Some(fields);
        Err(serde::de::Error::custom("only the field names were wanted"))
    }

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("only the field names were wanted"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
        enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_run_on_sqlite_alone() {
        let s = Settings::from_vars(vars(&[])).unwrap();
        assert_eq!(s.database.engine(), DbEngine::Sqlite);
        assert_eq!(s.database.url(), "sqlite://chat.db?mode=rwc");
        assert_eq!(s.server.listen_address(), "127.0.0.1:8000");
        assert_eq!(s.redis.url(), None);
        assert_eq!(s.server.allowed_hosts(), None);
        assert_eq!(s.server.cors_origins(), None);
        assert_eq!(s.auth.token_ttl_seconds, 604_800);
        assert!(s.auth.registration_open && !s.server.debug);
        assert_eq!(s.server.log_format, LogFormat::Pretty);
        // A2.2's authorization timeout, B5's ping interval and silence limit.
        let server = &s.server;
        assert_eq!(
            (
                server.authorization_timeout_seconds,
                server.heartbeat_seconds,
                server.client_timeout_seconds
            ),
            (5, 10, 30)
        );
        for (name, value) in [
            ("HEARTBEAT_SECONDS", "0"),
            ("AUTHORIZATION_TIMEOUT_SECONDS", "0"),
            ("CLIENT_TIMEOUT_SECONDS", "10"),
        ] {
            assert!(
                Settings::from_vars(vars(&[(name, value)])).is_err(),
                "{name}={value}"
            );
        }
    }

    #[test]
    fn the_old_backends_names_work() {
        let s = Settings::from_vars(vars(&[
            ("DB_ENGINE", "psql"),
            ("DB_NAME", "chat"),
            ("DB_HOST", "db.internal"),
            ("DB_USER", "chat"),
            ("DB_PASSWORD", "p@ss word"),
            ("REDIS_HOST", "cache.internal"),
            ("SECRET_KEY", "s3cret-s3cret-s3cret-s3cret-s3cret"),
            ("ALLOWED_HOSTS", "chat.example.com api.example.com"),
            ("DEBUG", "True"),
            ("UNRELATED", "whatever"),
        ]))
        .unwrap();
        assert_eq!(
            s.database.url(),
            "postgres://chat:p%40ss%20word@db.internal:5432/chat"
        );
        assert_eq!(
            s.redis.url().as_deref(),
            Some("redis://cache.internal:6379/")
        );
        assert_eq!(
            s.resolve_secret_key().unwrap(),
            "s3cret-s3cret-s3cret-s3cret-s3cret"
        );
        assert_eq!(
            s.server.allowed_hosts().unwrap(),
            ["chat.example.com", "api.example.com"]
        );
        assert!(s.server.debug);
        let mysql = Settings::from_vars(vars(&[
            ("DB_ENGINE", "mysql"),
            ("DB_PORT", "3307"),
            ("DB_NAME", "chat"),
        ]))
        .unwrap();
        assert_eq!(
            mysql.database.url(),
            "mysql://root:development@127.0.0.1:3307/chat",
            "MySQL's default user is root"
        );
        assert_eq!(mysql.database.location(), "mysql 127.0.0.1:3307/chat");
        let error = Settings::from_vars(vars(&[("DB_ENGINE", "psql")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("DB_NAME must be set"), "{error}");
        let explicit =
            Settings::from_vars(vars(&[("DB_ENGINE", "psql"), ("DB_NAME", "postgres")])).unwrap();
        assert_eq!(
            explicit.database.url(),
            "postgres://postgres:development@127.0.0.1:5432/postgres"
        );
        let error = explicit.resolve_secret_key().unwrap_err().to_string();
        assert!(error.contains("SECRET_KEY must be set"), "{error}");
        let url = Settings::from_vars(vars(&[
            ("DB_ENGINE", "mysql"),
            ("DATABASE_URL", "postgres://x@h/d"),
        ]))
        .unwrap();
        assert_eq!(url.database.engine(), DbEngine::Postgres);
    }

    #[test]
    fn placeholder_secret_keys_are_refused() {
        for key in [
            "change-me-to-a-long-random-string-of-32-bytes-or-more",
            "CHANGEME_CHANGEME_CHANGEME_CHANGEME",
            "your-secret-key-of-at-least-32-bytes-here",
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        ] {
            let error = Settings::from_vars(vars(&[("SECRET_KEY", key)]))
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(error.contains("placeholder"), "{key}: {error}");
        }
        let fine = "3f1c9a0d5b7e2f4a6c8e0b1d3f5a7c9e1b3d5f7a9c0e2b4d";
        assert!(Settings::from_vars(vars(&[("SECRET_KEY", fine)])).is_ok());
    }

    #[test]
    fn each_variable_belongs_to_one_group() {
        let names = known_variables();
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for name in [
            "port",
            "database_url",
            "redis_cluster_urls",
            "secret_key",
            "max_frame_bytes",
        ] {
            assert!(is_known_variable(name), "{name}");
        }
        assert!(
            !is_known_variable("server"),
            "a group's name is no variable"
        );
    }

    #[test]
    fn redis_cluster_urls() {
        let s = Settings::from_vars(vars(&[(
            "REDIS_CLUSTER_URLS",
            " redis://10.0.0.1:6379  redis://10.0.0.2:7000 ",
        )]))
        .unwrap();
        assert_eq!(
            s.redis.cluster_nodes(),
            ["redis://10.0.0.1:6379", "redis://10.0.0.2:7000"]
        );
        assert_eq!(s.redis.url(), None);
        for (extra, expected) in [
            (("REDIS_URL", "redis://h/"), "not both"),
            (("REDIS_HOST", "h"), "not both"),
            (
                ("REDIS_CLUSTER_URLS", "redis://a:1 nonsense"),
                "\"nonsense\" is not a Redis URL",
            ),
            (("REDIS_PREFIX", "a{b}"), "without braces"),
        ] {
            let mut pairs = vec![("REDIS_CLUSTER_URLS", "redis://a:1")];
            pairs.retain(|(name, _)| *name != extra.0);
            pairs.push(extra);
            let error = Settings::from_vars(vars(&pairs)).unwrap_err().to_string();
            assert!(error.contains(expected), "{extra:?}: {error}");
        }
    }

    #[test]
    fn empty_values_mean_unset() {
        let s = Settings::from_vars(vars(&[
            ("REDIS_HOST", ""),
            ("SECRET_KEY", " "),
            ("DB_ENGINE", ""),
        ]))
        .unwrap();
        assert_eq!(s.redis.url(), None);
        assert!(s.auth.secret_key.is_none());
        assert_eq!(s.database.engine(), DbEngine::Sqlite);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases = [
            (("PORT", "abc"), "PORT"),
            (("DB_ENGINE", "oracle"), "DB_ENGINE"),
            (("LOG_FORMAT", "xml"), "LOG_FORMAT"),
            (("REGISTRATION_OPEN", "perhaps"), "REGISTRATION_OPEN"),
            (("MAX_FRAME_BYTES", "10"), "MAX_FRAME_BYTES"),
            (("DATABASE_URL", "oracle://x"), "DATABASE_URL"),
            (
                ("SECRET_KEY", "short"),
                "SECRET_KEY must be at least 32 bytes",
            ),
            (("TRUSTED_PROXIES", "10.0.0.0/8 proxy"), "TRUSTED_PROXIES"),
        ];
        assert_eq!(
            Settings::from_vars(vars(&[("PORT", "abc")]))
                .unwrap_err()
                .to_string(),
            "invalid configuration: PORT must be a number from 0 to 65535 (0: any free port), not 'abc'"
        );
        assert_eq!(
            Settings::from_vars(vars(&[("OUTBOX_CAPACITY", "-3")]))
                .unwrap_err()
                .to_string(),
            "invalid configuration: OUTBOX_CAPACITY must be a whole number, 0 or more, not '-3'"
        );
        for ((name, value), expected) in cases {
            let error = Settings::from_vars(vars(&[(name, value)]))
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{name}: {error}");
        }
    }

    #[test]
    fn the_generated_secret_is_kept_next_to_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("data/chat.db");
        let s = Settings::from_vars(vars(&[("DB_NAME", db.to_str().unwrap())])).unwrap();
        let key = s.resolve_secret_key().unwrap();
        assert_eq!(key.len(), 64);
        assert_eq!(s.resolve_secret_key().unwrap(), key, "kept across restarts");
        assert!(dir.path().join("data/chat.db.secret").exists());
    }

    #[test]
    fn every_field_is_a_known_variable() {
        let known = known_variables();
        for name in [
            "port",
            "secret_key",
            "trusted_proxies",
            "message_queue_capacity",
        ] {
            assert!(known.contains(&name), "{name}");
        }
        assert!(!known.contains(&"path"));
    }

    #[test]
    fn secrets_never_print() {
        let s = Settings::from_vars(vars(&[
            ("SECRET_KEY", "very-secret-key-very-secret-key-1"),
            ("DB_PASSWORD", "hunter2-password"),
            ("METRICS_TOKEN", "scrape-token"),
        ]))
        .unwrap();
        let printed = format!("{s:?}");
        for secret in ["very-secret-key", "hunter2-password", "scrape-token"] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }

    #[test]
    fn a_short_secret_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("chat.db");
        std::fs::write(dir.path().join("chat.db.secret"), "abc").unwrap();
        let s = Settings::from_vars(vars(&[("DB_NAME", db.to_str().unwrap())])).unwrap();
        let error = s.resolve_secret_key().unwrap_err().to_string();
        assert!(error.contains("shorter than 32 bytes"), "{error}");
    }
}
