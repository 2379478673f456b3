//! `Settings`: every knob of the server, read from the environment and `.env`.
//!
//! Names follow the old Django backend's `.env` (`DB_ENGINE=psql`, `DB_NAME`,
//! `REDIS_HOST`, `SECRET_KEY`, …) so an existing deployment file keeps working.
//! Every variable has a default that runs on one machine with nothing else
//! installed: SQLite in the working directory, no Redis.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

mod attachments;
mod auth;
mod database;
mod limits;
mod push;
mod redis;
mod server;

pub use attachments::{AttachmentSettings, AttachmentStore};
use auth::load_or_create_secret;
pub use auth::{AuthSettings, SecretSource, MIN_SECRET_KEY_BYTES};
pub use database::{DatabaseSettings, DbEngine};
pub use limits::LimitSettings;
pub use push::{PushSettings, DEFAULT_PUSH_HOSTS};
pub use redis::RedisSettings;
pub use server::{LogFormat, ServerSettings};

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
    pub push: PushSettings,
    pub attachments: AttachmentSettings,
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

fn registration_flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    parse_flag("REGISTRATION_OPEN", &String::deserialize(d)?)
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
            push: read_group(&known)?,
            attachments: read_group(&known)?,
        };
        settings.check()?;
        Ok(settings)
    }

    /// Each group's checks (its own file holds them, beside its defaults).
    fn check(&self) -> Result<(), ConfigError> {
        self.database.check()?;
        self.limits.check()?;
        self.redis.check()?;
        self.server.check()?;
        self.push.check()?;
        self.attachments.check()?;
        self.auth.check()
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
        let (key, source) = self.secret_beside_database("secret")?;
        Ok((key, source))
    }

    /// A secret kept in `<database file>.<extension>`, made on first use
    /// (SQLite only): the token key, the VAPID key.
    fn secret_beside_database(
        &self,
        extension: &str,
    ) -> Result<(String, SecretSource), ConfigError> {
        let db = self.database.sqlite_path();
        let name = db.file_name().map(|n| n.to_string_lossy().into_owned());
        let path = db.with_file_name(format!(
            "{}.{extension}",
            name.unwrap_or_else(|| "chat".into())
        ));
        let (key, created) = load_or_create_secret(&path)?;
        let source = if created {
            SecretSource::Generated(path)
        } else {
            SecretSource::File(path)
        };
        Ok((key, source))
    }

    /// The VAPID private key (32 bytes): `VAPID_PRIVATE_KEY`, or (SQLite
    /// only) one generated on first start and kept next to the database, as
    /// the token key is. `None`: Web Push is off (PostgreSQL or MySQL
    /// without `VAPID_PRIVATE_KEY`: instances must share one key, so none is
    /// made up).
    pub fn vapid_key_with_source(&self) -> Result<Option<(Vec<u8>, SecretSource)>, ConfigError> {
        use base64::Engine as _;
        if let Some(key) = &self.push.vapid_private_key {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(key.expose_secret().trim().trim_end_matches('='))
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| {
                    ConfigError::Invalid(
                        "VAPID_PRIVATE_KEY must be 32 bytes in base64url (as \
                         `web-push generate-vapid-keys` prints it)"
                            .into(),
                    )
                })?;
            return Ok(Some((bytes, SecretSource::Environment)));
        }
        if self.database.engine() != DbEngine::Sqlite {
            return Ok(None);
        }
        let (hex, source) = self.secret_beside_database("vapid")?;
        let bytes =
            (0..hex.len().min(64))
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| {
                    ConfigError::Invalid(format!(
                    "the VAPID key in {} is not 64 hex digits; delete the file to make a new one \
                     (browsers then subscribe again)",
                    source.path().map(|p| p.display().to_string()).unwrap_or_default()
                ))
                })?;
        Ok(Some((bytes, source)))
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
            fields::<PushSettings>(),
            fields::<AttachmentSettings>(),
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
        std::fs::create_dir(dir.path().join("data")).unwrap();
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

    /// .env.example says it lists every variable the server reads.
    #[test]
    fn env_example_names_every_variable() {
        let example = include_str!("../../.env.example");
        let named: Vec<&str> = (example.lines())
            .filter_map(|line| line.trim_start_matches("# ").split_once('='))
            .map(|(name, _)| name)
            .collect();
        let missing: Vec<String> = (known_variables().iter())
            .map(|name| name.to_ascii_uppercase())
            .filter(|name| !named.contains(&name.as_str()))
            .collect();
        assert!(missing.is_empty(), "not in .env.example: {missing:?}");
        let set = (example.lines().filter(|line| !line.starts_with('#')))
            .filter_map(|line| line.split_once('='))
            .map(|(name, value)| (name.to_string(), value.to_string()));
        Settings::from_vars(set).expect("its values are valid");
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
