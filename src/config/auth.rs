//! The auth group: the token signing key (from `SECRET_KEY`, or a file
//! generated next to a SQLite database), token lifetime, registration.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{non_empty_secret, registration_flag, ConfigError};

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

impl SecretSource {
    /// The file it was read from or written to.
    pub fn path(&self) -> Option<&Path> {
        match self {
            SecretSource::Environment => None,
            SecretSource::File(path) | SecretSource::Generated(path) => Some(path),
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
    /// How often the revocation sweep checks every online session's token
    /// against the database, not only the revocations of the last minute.
    pub revocation_full_sweep_seconds: u64,
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
            revocation_full_sweep_seconds: 300,
        }
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

impl AuthSettings {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.token_ttl_seconds == 0 {
            return Err(ConfigError::Invalid(
                "TOKEN_TTL_SECONDS must be at least 1".into(),
            ));
        }
        if !(1..=86_400).contains(&self.revocation_full_sweep_seconds) {
            return Err(ConfigError::Invalid(
                "REVOCATION_FULL_SWEEP_SECONDS must be between 1 and 86400".into(),
            ));
        }
        if let Some(key) = &self.secret_key {
            let key = key.expose_secret();
            if is_placeholder_key(key) {
                return Err(ConfigError::Invalid(
                    "SECRET_KEY is a placeholder from an example file: anyone who reads it \
                     can sign tokens; generate one with `openssl rand -hex 32`"
                        .into(),
                ));
            }
            if key.len() < MIN_SECRET_KEY_BYTES {
                return Err(ConfigError::Invalid(format!(
                    "SECRET_KEY must be at least {MIN_SECRET_KEY_BYTES} bytes (it is {}); \
                     generate one with `openssl rand -hex 32`",
                    key.len()
                )));
            }
        }
        Ok(())
    }

    /// The token lifetime.
    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl_seconds)
    }

    /// How often the revocation sweep checks every online session in full.
    pub fn revocation_full_sweep(&self) -> Duration {
        Duration::from_secs(self.revocation_full_sweep_seconds)
    }
}

pub(super) fn load_or_create_secret(path: &Path) -> Result<(String, bool), ConfigError> {
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
