//! The server group: where it listens, what it trusts (hosts, proxies,
//! origins), its timers, and how it logs.

use secrecy::SecretString;
use serde::{Deserialize, Deserializer};

use super::{non_empty_secret, parse_flag, ConfigError};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
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
        }
    }
}

fn debug_flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    parse_flag("DEBUG", &String::deserialize(d)?)
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

impl ServerSettings {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let invalid = |what: &str| Err(ConfigError::Invalid(what.to_string()));
        if self.body_read_timeout_seconds == 0 {
            return invalid("BODY_READ_TIMEOUT_SECONDS must be at least 1");
        }
        if self.authorization_timeout_seconds == 0 || self.heartbeat_seconds == 0 {
            return invalid(
                "AUTHORIZATION_TIMEOUT_SECONDS and HEARTBEAT_SECONDS must be at least 1",
            );
        }
        if self.heartbeat_seconds > 3600 || self.authorization_timeout_seconds > 3600 {
            return invalid(
                "AUTHORIZATION_TIMEOUT_SECONDS and HEARTBEAT_SECONDS must be at most 3600",
            );
        }
        if self.client_timeout_seconds <= self.heartbeat_seconds
            || self.client_timeout_seconds > 24 * 3600
        {
            return invalid(
                "CLIENT_TIMEOUT_SECONDS must be longer than HEARTBEAT_SECONDS (a client answers \
                 pings) and at most 86400",
            );
        }
        if !(16..=128).contains(&self.ipv6_limit_prefix) {
            return invalid("IPV6_LIMIT_PREFIX must be between 16 and 128");
        }
        if let Err(e) = crate::client_address::TrustedProxies::parse(&self.trusted_proxies) {
            return Err(ConfigError::Invalid(format!("TRUSTED_PROXIES: {e}")));
        }
        Ok(())
    }

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
