//! The Redis group: one Redis (`REDIS_URL` or the old `REDIS_HOST`) or a
//! Redis Cluster, and the key prefix.

use serde::Deserialize;

use super::{non_empty, ConfigError};

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

impl RedisSettings {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.redis_prefix.is_empty()
            || self
                .redis_prefix
                .contains(|c: char| c.is_whitespace() || c == '{' || c == '}')
        {
            return Err(ConfigError::Invalid(
                "REDIS_PREFIX must be a non-empty word without braces".into(),
            ));
        }
        if self.redis_cluster_urls.is_some() && self.url().is_some() {
            return Err(ConfigError::Invalid(
                "set REDIS_CLUSTER_URLS or REDIS_URL/REDIS_HOST, not both".into(),
            ));
        }
        for node in self.cluster_nodes() {
            if ::redis::IntoConnectionInfo::into_connection_info(node).is_err() {
                return Err(ConfigError::Invalid(format!(
                    "REDIS_CLUSTER_URLS: {node:?} is not a Redis URL (redis://host:port)"
                )));
            }
        }
        Ok(())
    }

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
