//! The Web Push group (PROTOCOL.md B11): the VAPID key that identifies this
//! server to the browsers' push services, and which push services it sends to.

use secrecy::SecretString;
use serde::{Deserialize, Deserializer};

use super::{non_empty_secret, parse_flag, ConfigError};

/// The push services of the browsers people use: Chrome and Edge (FCM),
/// Firefox, Windows, Safari. A subscription naming any other host is refused.
pub const DEFAULT_PUSH_HOSTS: &str =
    "fcm.googleapis.com,*.push.services.mozilla.com,*.notify.windows.com,*.push.apple.com";

/// Web Push: on when there is a VAPID key (`VAPID_PRIVATE_KEY`, or with
/// SQLite one generated on first start and kept next to the database).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct PushSettings {
    /// The VAPID private key: a P-256 scalar, 32 bytes in base64url (the
    /// format `web-push generate-vapid-keys` prints). Every instance needs
    /// the same one: browsers subscribe to its public key.
    #[serde(deserialize_with = "non_empty_secret")]
    pub vapid_private_key: Option<SecretString>,
    /// Who runs this server, for the push services (`mailto:` or `https:`).
    pub vapid_subject: String,
    /// Whether a push carries the start of the message (`PUSH_PREVIEW=0`:
    /// only who wrote in which conversation).
    #[serde(deserialize_with = "preview_flag")]
    pub push_preview: bool,
    /// Hosts a subscription's endpoint may name, comma-separated; `*.`
    /// matches any subdomain. The server POSTs to these hosts only.
    pub push_endpoint_hosts: String,
    /// Allow `http:` endpoints (a test's push service on loopback); off in
    /// production, where every push service speaks HTTPS.
    #[serde(deserialize_with = "allow_http_flag")]
    pub push_allow_http: bool,
}

fn preview_flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    parse_flag("PUSH_PREVIEW", &String::deserialize(d)?)
}

fn allow_http_flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    parse_flag("PUSH_ALLOW_HTTP", &String::deserialize(d)?)
}

impl Default for PushSettings {
    fn default() -> Self {
        PushSettings {
            vapid_private_key: None,
            vapid_subject: "mailto:admin@localhost".into(),
            push_preview: true,
            push_endpoint_hosts: DEFAULT_PUSH_HOSTS.into(),
            push_allow_http: false,
        }
    }
}

impl PushSettings {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if !(self.vapid_subject.starts_with("mailto:") || self.vapid_subject.starts_with("https:"))
        {
            return Err(ConfigError::Invalid(
                "VAPID_SUBJECT must be a mailto: or https: URL naming who runs this server".into(),
            ));
        }
        if self.hosts().next().is_none() {
            return Err(ConfigError::Invalid(
                "PUSH_ENDPOINT_HOSTS must name at least one push service host".into(),
            ));
        }
        Ok(())
    }

    /// The allowed endpoint hosts, lower-case.
    pub fn hosts(&self) -> impl Iterator<Item = String> + '_ {
        self.push_endpoint_hosts
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
    }
}
