//! The database group: which engine, where (`DATABASE_URL` or the old
//! `DB_*` set), and the connection pool.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

use super::{non_empty, secret, ConfigError};

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

impl DatabaseSettings {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let invalid = |what: &str| Err(ConfigError::Invalid(what.to_string()));
        if self.database_url.is_none()
            && self.db_engine != DbEngine::Sqlite
            && self.db_name.is_none()
        {
            return invalid(
                "DB_NAME must be set with DB_ENGINE=psql or mysql: the database to create the chat \
                 tables in (DB_NAME=postgres to really use the server's own database)",
            );
        }
        if self.db_pool_size == 0 {
            return invalid("DB_POOL_SIZE must be at least 1");
        }
        if self.engine() == DbEngine::Sqlite {
            // Only the file is ever created: a mistyped path is named, not
            // made (directories and all, at the filesystem's root even).
            let path = self.sqlite_path();
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                if !dir.is_dir() {
                    return Err(ConfigError::Invalid(format!(
                        "the SQLite database {} is in a directory that does not exist ({}): \
                         create it, or correct DB_NAME / DATABASE_URL",
                        path.display(),
                        dir.display()
                    )));
                }
            }
        }
        if let Some(url) = &self.database_url {
            if !["sqlite:", "postgres:", "postgresql:", "mysql:", "mariadb:"]
                .iter()
                .any(|p| url.starts_with(p))
            {
                return invalid("DATABASE_URL must start with sqlite:, postgres: or mysql:");
            }
        }
        Ok(())
    }

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
